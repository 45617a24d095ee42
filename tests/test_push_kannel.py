"""Pushes through a real Kannel 1.4 to its fake SMSC, in a network namespace.

One namespace run (tests/kannel_harness.py) sends all scenarios; the tests
check the octets the fake SMSC received. Expected Package 0 octets are
recomputed here from the notification spec with hashlib.
"""

import base64
import hashlib
import re
from pathlib import Path

import pytest

from dmserver.push import sms, wsp
from tests import kannel_harness as harness


@pytest.fixture(scope="module")
def kannel_run(tmp_path_factory):
    problem = harness.namespace_problem()
    if problem is not None:
        harness.skip_or_fail(f"Kannel tests need Kannel and unshare: {problem}")
    workdir = tmp_path_factory.mktemp("kannel")
    results = harness.run_scenarios(workdir)
    return workdir, results


def expected_package0(session_id: int, vendor: bytes) -> bytes:
    server_id = harness.SERVER_ID.encode()
    # version 12, ui-mode background, initiator server: 03 18 00 00 00
    trigger = (
        bytes.fromhex("0318000000")
        + session_id.to_bytes(2, "big")
        + bytes([len(server_id)])
        + server_id
        + vendor
    )
    credentials = base64.b64encode(
        hashlib.md5(f"{harness.SERVER_ID}:{harness.SERVER_PASSWORD}".encode()).digest()
    )
    trigger_hash = base64.b64encode(hashlib.md5(trigger).digest())
    digest = hashlib.md5(credentials + b":" + harness.NONCE + b":" + trigger_hash)
    return digest.digest() + trigger


def received(results, scenario):
    return [
        sms.SmsSegment(
            udh=bytes.fromhex(message["udh"]), data=bytes.fromhex(message["data"])
        )
        for message in results[scenario]["messages"]
    ]


def test_sendsms_single_segment(kannel_run):
    _, results = kannel_run

    segments = received(results, "sendsms_short")

    assert results["sendsms_short"]["responses"] == ["0: Accepted for delivery"]
    assert len(segments) == 1
    assert results["sendsms_short"]["messages"][0]["receiver"] == harness.MSISDN
    assert segments[0].udh == bytes.fromhex("0605040b8423f0")
    # TID 01, Push 06, HeadersLen 03, 0xC4, X-Wap-Application-Id 0xAF 0x87
    assert segments[0].data[:6] == bytes.fromhex("010603c4af87")
    assert segments[0].data[6:] == expected_package0(harness.SESSION_ID, b"")


def test_sendsms_concatenated(kannel_run):
    _, results = kannel_run

    segments = received(results, "sendsms_long")

    assert [segment.udh.hex() for segment in segments] == [
        "0b05040b8423f000037e0301",
        "0b05040b8423f000037e0302",
        "0b05040b8423f000037e0303",
    ]
    assert [len(segment.data) for segment in segments[:2]] == [128, 128]
    pdu = sms.reassemble(segments)
    assert pdu[:6] == bytes.fromhex("010603c4af87")
    assert pdu[6:] == expected_package0(
        harness.LONG_SESSION_ID, harness.LONG_VENDOR_DATA
    )


def test_sendsms_uses_8bit_coding(kannel_run):
    _, results = kannel_run

    # Kannel's access log flags are mclass:coding:mwi:compress:dlr-mask.
    sendsms_lines = [
        line for line in results["access_log"].splitlines() if "[SVC:dmserver]" in line
    ]

    assert len(sendsms_lines) == 4
    for line in sendsms_lines:
        assert re.search(r"\[flags:-1:1:", line), line


def test_sendsms_wrong_password_rejected(kannel_run):
    _, results = kannel_run

    outcome = results["sendsms_wrong_password"]

    assert "HTTP 403" in outcome["error"]
    assert outcome["messages"] == []


def test_pap_push_reaches_smsc(kannel_run):
    _, results = kannel_run

    segments = received(results, "pap_short")

    # The PPG returns PAP code 1001, and Kannel sends one SMS.
    assert results["pap_short"]["responses"][0].startswith("1001")
    assert len(segments) == 1
    assert segments[0].udh == bytes.fromhex("0605040b8423f0")
    pushed = wsp.parse_push_pdu(segments[0].data)
    assert pushed.content_type == "application/vnd.syncml.notification"
    assert pushed.application_id_code == wsp.APPLICATION_ID_SYNCML_DM
    assert pushed.body == expected_package0(harness.SESSION_ID, b"")


def test_kannel_processes_are_gone(kannel_run):
    workdir, _ = kannel_run
    lab_config = str(workdir / "lab" / "kannel.conf")

    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().split(b"\x00")
        except OSError:
            continue
        if lab_config.encode() in arguments:
            leftovers.append(cmdline.parent.name)

    assert leftovers == []


LAB_CLIENT = """
import json, os, sys, time, urllib.request
from dmserver.push.kannel_lab import read_fakesmsc_messages

url = (
    os.environ["DMSERVER_KANNEL_SENDSMS_URL"]
    + "?username=" + os.environ["DMSERVER_KANNEL_USERNAME"]
    + "&password=" + os.environ["DMSERVER_KANNEL_PASSWORD"]
    + "&to=%2B15550009&coding=1&udh=%06%05%04%0B%84%23%F0&text=%01%06%20%2B"
)
answer = urllib.request.urlopen(url, timeout=10).read().decode()
deadline = time.monotonic() + 10
messages = []
while not messages and time.monotonic() < deadline:
    messages = read_fakesmsc_messages(os.environ["DMSERVER_FAKESMSC_LOG"])
    time.sleep(0.1)
with open(sys.argv[1], "w") as output:
    json.dump({"answer": answer, "data": [m.data.hex() for m in messages]}, output)
sys.exit(7)
"""


def test_lab_command_line_runs_command(kannel_run, tmp_path):
    import json
    import subprocess
    import sys

    output = tmp_path / "client.json"
    completed = subprocess.run(
        [
            "unshare",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            sys.executable,
            "-m",
            "dmserver.push.kannel_lab",
            "--workdir",
            str(tmp_path / "lab"),
            "--no-wapbox",
            "--",
            sys.executable,
            "-c",
            LAB_CLIENT,
            str(output),
        ],
        cwd=harness.REPOSITORY,
        capture_output=True,
        timeout=harness.SCENARIO_TIMEOUT_SECONDS,
    )

    assert completed.returncode == 7, completed.stderr.decode(errors="replace")
    result = json.loads(output.read_text())
    assert result["answer"] == "0: Accepted for delivery"
    # Space and "+" survive Kannel's URL encoding in the fakesmsc log.
    assert result["data"] == ["0106202b"]
