"""``make demo-push``: the push demo through a real Kannel in a namespace.

Each run starts Kannel with its fake SMSC in a fresh network and PID
namespace, queues a job for an offline simulated phone and checks that the
push reached the phone and the phone updated. Without Kannel or permission
for ``unshare`` the tests skip (fail with DMSERVER_REQUIRE_SYSTEM_TOOLS=1).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests import kannel_harness as harness
from tests.conftest import ROOT

DEMO_TIMEOUT_SECONDS = 300
LAST_LINE = re.compile(
    r"^demo-push: IMEI:490154203237518 updated 2\.5\.0-1\+deb12u2 -> "
    r"2\.5\.0-1\+deb12u5 via (\d+) push\(es\)$"
)


@pytest.fixture(scope="module")
def lab_available():
    problem = harness.namespace_problem()
    if problem is not None:
        harness.skip_or_fail(f"the push demo needs Kannel and unshare: {problem}")


@pytest.mark.parametrize("mode", ["package0", "sessionless"])
def test_demo_push_updates_phone(lab_available, mode):
    extra = ["--sessionless"] if mode == "sessionless" else []

    completed = subprocess.run(
        [sys.executable, "tools/demo_push.py", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
    )

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    lines = completed.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match is not None, lines[-1]
    # The count matches the sent pushes in the job history the demo prints.
    assert int(match.group(1)) == output.count("'outcome': 'sent'")
    assert int(match.group(1)) >= 1
    if mode == "sessionless":
        assert "Service Loading push" in output
        assert "session-started" not in output
    else:
        assert "Package 0 accepted" in output
        assert "'form': 'hex'" in output
