"""Run push scenarios against a real Kannel inside a network namespace.

The pytest process stays in the host namespace. ``run_scenarios`` starts
``unshare --net --pid --fork --kill-child`` running this module. Inside,
``main`` brings up loopback, starts a ``KannelLab`` (bearerbox, smsbox,
wapbox and fakesmsc), sends pushes through our gateways under a Twisted
reactor, and writes what the fake SMSC received to a JSON file. The PID
namespace makes the kernel kill every Kannel process when the scenario
process exits or is killed.

Scenario inputs are fixed constants here so tests can recompute the
expected octets independently.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SCENARIO_TIMEOUT_SECONDS = 90
REQUIRE_ENV = "DMSERVER_REQUIRE_SYSTEM_TOOLS"

MSISDN = "+15550001"
SERVER_ID = "dmserver.example"
SERVER_PASSWORD = "server-secret"
NONCE = bytes.fromhex("1c2b3a49")
SESSION_ID = 0x1A2B
LONG_SESSION_ID = 0x0042
# Vendor data long enough that the push needs three concatenated SMS.
LONG_VENDOR_DATA = bytes(range(256))
REFERENCE_SHORT = 0x21
REFERENCE_LONG = 0x7E


def system_tools_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when system tools are required."""
    if system_tools_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


def namespace_problem() -> str | None:
    """Return why the Kannel tests cannot run here, or None."""
    from dmserver.push.kannel_lab import KannelLabError, find_kannel_tools

    try:
        find_kannel_tools()
    except KannelLabError as exc:
        return str(exc)
    try:
        probe = subprocess.run(
            [
                "unshare",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "ip",
                "link",
                "set",
                "lo",
                "up",
            ],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare: {exc}"
    if probe.returncode != 0:
        message = probe.stderr.decode("utf-8", "replace").strip()
        return f"'unshare --net --pid' is not permitted here: {message}"
    return None


def run_scenarios(workdir: Path) -> dict:
    """Run ``main`` in a fresh network and PID namespace; return its JSON."""
    output = workdir / "result.json"
    command = [
        "unshare",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        sys.executable,
        "-m",
        "tests.kannel_harness",
        "--workdir",
        str(workdir / "lab"),
        "--output",
        str(output),
    ]
    completed = subprocess.run(
        command,
        cwd=REPOSITORY,
        capture_output=True,
        timeout=SCENARIO_TIMEOUT_SECONDS,
    )
    if completed.returncode != 0 or not output.exists():
        raise AssertionError(
            f"Kannel scenarios failed with status {completed.returncode}:\n"
            f"{completed.stdout.decode(errors='replace')}\n"
            f"{completed.stderr.decode(errors='replace')}"
        )
    return json.loads(output.read_text())


# -- inside the namespace -------------------------------------------------------


def build_short_push() -> bytes:
    from dmserver.push import pkg0, wsp

    package0 = pkg0.build_notification(
        server_id=SERVER_ID,
        password=SERVER_PASSWORD,
        nonce=NONCE,
        session_id=SESSION_ID,
    )
    return wsp.build_dm_notification_push(package0)


def build_long_push() -> bytes:
    from dmserver.push import pkg0, wsp

    package0 = pkg0.build_notification(
        server_id=SERVER_ID,
        password=SERVER_PASSWORD,
        nonce=NONCE,
        session_id=LONG_SESSION_ID,
        vendor_specific=LONG_VENDOR_DATA,
    )
    return wsp.build_dm_notification_push(package0)


def _messages_as_json(messages) -> list[dict]:
    return [
        {
            "sender": message.sender,
            "receiver": message.receiver,
            "udh": message.udh.hex(),
            "data": message.data.hex(),
        }
        for message in messages
    ]


async def _run_gateway(gateway, pdu: bytes, reference: int) -> dict:
    from dmserver.push.gateways import GatewayError

    try:
        receipt = await gateway.send_push(MSISDN, pdu, reference=reference)
    except GatewayError as exc:
        return {"error": str(exc)}
    return {"segments": receipt.segments, "responses": receipt.responses}


def _scenarios(lab) -> list[tuple[str, object, bytes, int, int]]:
    from dmserver.push.gateways import KannelPapGateway, KannelSendsmsGateway
    from dmserver.push.kannel_lab import SENDSMS_PASSWORD, SENDSMS_USERNAME

    sendsms = KannelSendsmsGateway(
        lab.sendsms_url, SENDSMS_USERNAME, SENDSMS_PASSWORD, timeout=10
    )
    wrong_password = KannelSendsmsGateway(
        lab.sendsms_url, SENDSMS_USERNAME, "not-the-password", timeout=10
    )
    pap = KannelPapGateway(
        lab.ppg_url, username=SENDSMS_USERNAME, password=SENDSMS_PASSWORD, timeout=10
    )
    short_push = build_short_push()
    long_push = build_long_push()
    # (name, gateway, pdu, reference, SMS expected at the fake SMSC)
    return [
        ("sendsms_short", sendsms, short_push, REFERENCE_SHORT, 1),
        ("sendsms_long", sendsms, long_push, REFERENCE_LONG, 3),
        ("sendsms_wrong_password", wrong_password, short_push, REFERENCE_SHORT, 0),
        ("pap_short", pap, short_push, REFERENCE_SHORT, 1),
    ]


async def _run_all(lab) -> dict:
    from twisted.internet import reactor, threads

    results: dict[str, dict] = {}
    seen = 0
    for name, gateway, pdu, reference, expected in _scenarios(lab):
        outcome = await _run_gateway(gateway, pdu, reference)
        # Waiting happens in a thread so the reactor keeps running.
        messages = await threads.deferToThreadPool(
            reactor,
            reactor.getThreadPool(),
            lab.wait_for_messages,
            seen + expected,
            10.0,
        )
        outcome["pdu"] = pdu.hex()
        outcome["messages"] = _messages_as_json(messages[seen:])
        seen = len(messages)
        results[name] = outcome
    return results


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import defer, task

    from dmserver.push.kannel_lab import KannelLab, bring_up_loopback

    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--output", required=True)
    options = parser.parse_args(argv)

    bring_up_loopback()
    lab = KannelLab(options.workdir)
    lab.start()
    try:
        results: dict = {}

        async def scenario_run(reactor) -> None:
            results.update(await _run_all(lab))

        try:
            task.react(lambda reactor: defer.ensureDeferred(scenario_run(reactor)))
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise
        results["access_log"] = (
            lab.access_log.read_text(errors="replace")
            if lab.access_log.exists()
            else ""
        )
        Path(options.output).write_text(json.dumps(results, indent=1))
    finally:
        lab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
