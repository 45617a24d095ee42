"""Operator management requests through the real server and dmsim."""

import json
import subprocess
import sys

from .conftest import OLD_IMAGE, ROOT

DEVICE = "IMEI:359881030314356"


def run_sim(server, state_dir):
    return subprocess.run(
        [
            sys.executable, "-m", "dmserver.sim.cli", "run",
            "--server", server.dm_url,
            "--device", DEVICE,
            "--client-password", "c",
            "--server-password", "s",
            "--model", "FP-100",
            "--manufacturer", "Example",
            "--firmware-version", "1.0",
            "--firmware", str(OLD_IMAGE),
            "--state-dir", str(state_dir),
            "--cert", str(server.data_dir / "keys" / "signing-cert.pem"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def results(server, request_id):
    """Read a request back through the operator's command, as JSON lines."""
    lines = server.cli("mgmt", "show", str(request_id)).stdout.splitlines()
    state = lines[0].split(": ", 1)[1]
    return state, [json.loads(line) for line in lines[1:]]


def test_management_request_round_trip(server, tmp_path):
    server.cli("device", "add", DEVICE, "--client-password", "c", "--server-password", "s")
    server.cli("mgmt", "queue", DEVICE, "--get", "./DevInfo/Mod", "--get", "./FUMO", "--exec", "./Vendor/Missing")
    server.cli("mgmt", "queue", DEVICE, "--atomic", "--replace", "./Nope/A=1", "--delete", "./Nope/B")
    result = run_sim(server, tmp_path / "phone")
    assert result.returncode == 0, result.stdout + result.stderr

    state, entries = results(server, 1)
    assert state == "done"
    statuses = [(e["cmd"], e["target"], e["code"]) for e in entries if e["kind"] == "Status"]
    assert statuses == [("Get", "./DevInfo/Mod", 200), ("Get", "./FUMO", 200), ("Exec", "./Vendor/Missing", 404)]
    values = [e["items"][0] for e in entries if e["kind"] == "Results"]
    assert values[0]["data"] == "FP-100"
    assert values[1]["format"] == "node"
    assert values[1]["children"] == ["x"]

    state, entries = results(server, 2)
    assert state == "done"
    atomic = entries[0]
    assert (atomic["cmd"], atomic["code"], atomic["meaning"]) == ("Atomic", 507, "atomic_failed")
    assert [e["target"] for e in entries[1:]] == ["./Nope/A", "./Nope/B"]

    recorded = dict(server.sql("SELECT path, status FROM tree_values"))
    assert recorded["./Vendor/Missing"] == 404


def test_mgmt_queue_rejects_bad_input(server):
    server.cli("device", "add", DEVICE, "--client-password", "c", "--server-password", "s")
    bad = server.cli("mgmt", "queue", DEVICE, "--replace", "no-equals-sign", check=False)
    assert bad.returncode == 2
    assert "expected PATH=VALUE" in bad.stderr
    unknown = server.cli("mgmt", "queue", "IMEI:000", "--get", "./x", check=False)
    assert "not provisioned" in unknown.stderr
    alert = server.cli("mgmt", "queue", DEVICE, "--alert", "1300:hi", check=False)
    assert "1100-1104" in alert.stderr
