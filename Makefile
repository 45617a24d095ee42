# `make demo` and `make test` each build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test system-deps clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,postgresql]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Debian packages that the cross-check and gateway tests run against.
# Needs root; the tests that need a missing tool skip with its name.
system-deps:
	tools/install-system-deps

clean:
	rm -rf $(VENV) build *.egg-info
