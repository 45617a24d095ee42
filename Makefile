# `make demo` and `make test` each build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-push demo-campaign test system-deps clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,postgresql]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py $(DEMO_ARGS)

# A staged rollout to 1,000 simulated phones; DB=postgresql://... runs it on
# PostgreSQL in a throwaway schema instead of SQLite.
demo-campaign: $(STAMP)
	$(PY) tools/demo_campaign.py $(if $(DB),--db $(DB)) $(DEMO_ARGS)

# Package 0 over WAP Push through a real Kannel with its fake SMSC, all in a
# private network namespace; SESSIONLESS=1 pushes Service Loading instead.
demo-push: $(STAMP)
	work=$$(mktemp -d); \
	unshare --net --pid --fork --kill-child $(PY) -m dmserver.push.kannel_lab \
	    --workdir "$$work" -- $(PY) tools/demo_push.py $(if $(SESSIONLESS),--sessionless); \
	status=$$?; rm -rf "$$work"; exit $$status

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Debian packages that the cross-check and gateway tests run against.
# Needs root; the tests that need a missing tool skip with its name.
system-deps:
	tools/install-system-deps

clean:
	rm -rf $(VENV) build *.egg-info
