"""Two server processes on one PostgreSQL database.

A proxy on 127.0.0.1 sends each HTTP request to the other process in turn,
and both servers name the proxy as their base URL, so RespURI, descriptor,
package and install notify requests alternate between the processes. The
session state and the campaign counters live in the database, so:

- one DM session whose messages are served by both processes alternately
  delivers the job, and the phone updates;
- a campaign whose job events arrive at both processes (and whose
  dispatch rounds run in both) opens its waves and completes with counters
  equal to a scan of the membership table.
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dmserver.sim.phone import Phone
from dmserver.sim.session import RunOptions, run_until_idle

from .conftest import (
    MODEL,
    NEW_SHA256,
    NEW_VERSION,
    OLD_IMAGE,
    OLD_VERSION,
    copy_catalogue_rows,
    start_server,
    stop_server,
)

CLIENT_PASSWORD = "client-secret"
SERVER_PASSWORD = "server-secret"
# Upper bound for the scheduler to queue jobs; only stops a hung test.
DISPATCH_TIMEOUT = 60
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class AlternatingProxy:
    """Forward each request to the next upstream in turn; record which.

    DM messages and download requests take turns separately, so two
    consecutive DM messages always reach different processes.
    """

    def __init__(self):
        self.upstreams: list[int] = []
        self.routed: list[tuple[str, int]] = []  # (path, upstream port)
        self._cycles: dict[str, itertools.cycle] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    kind = "dm" if self.path.startswith("/dm") else "other"
                    port = next(proxy._cycles[kind])
                    proxy.routed.append((self.path, port))
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in HOP_HEADERS | {"server", "date"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                connection.close()

            do_GET = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set_upstreams(self, ports: list[int]) -> None:
        self.upstreams = ports
        self._cycles = {"dm": itertools.cycle(ports), "other": itertools.cycle(ports)}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def two_servers(catalogue_dir, tmp_path, postgres_schema_url, monkeypatch):
    monkeypatch.setenv("DMSERVER_CAMPAIGN_TICK", "0.3")
    copy_catalogue_rows(f"sqlite:///{catalogue_dir / 'dmserver.db'}", postgres_schema_url)
    proxy = AlternatingProxy()
    servers = []
    for name in ("a", "b"):
        data_dir = tmp_path / name / "data"
        shutil.copytree(catalogue_dir, data_dir)
        servers.append(start_server(data_dir, db=postgres_schema_url, extra=("--base-url", proxy.url)))
    proxy.set_upstreams([urlsplit(s.url).port for s in servers])
    yield servers, proxy
    for running in servers:
        stop_server(running)
    proxy.close()


def make_phone(state_dir: Path, device_id: str, cert: Path) -> Phone:
    return Phone.create(
        state_dir,
        device_id=device_id,
        model=MODEL,
        manufacturer="Example",
        firmware_version=OLD_VERSION,
        firmware=OLD_IMAGE,
        cert=cert,
        client_password=CLIENT_PASSWORD,
        server_password=SERVER_PASSWORD,
    )


def add_device(server, device_id: str) -> None:
    server.cli(
        "device", "add", device_id,
        "--client-password", CLIENT_PASSWORD,
        "--server-password", SERVER_PASSWORD,
        "--model", MODEL,
    )


def test_one_session_served_by_both_processes(two_servers, tmp_path):
    (first, second), proxy = two_servers
    device_id = "IMEI:490154203237518"
    add_device(first, device_id)
    first.cli("job", "fota", device_id, "--version", NEW_VERSION)
    phone = make_phone(tmp_path / "phone", device_id, first.data_dir / "keys" / "signing-cert.pem")
    report = run_until_idle(phone, f"{proxy.url}/dm", RunOptions())
    assert report.reported_codes == [200]
    assert report.firmware_sha256 == NEW_SHA256
    dm_ports = [port for path, port in proxy.routed if path.startswith("/dm")]
    # The first session has several messages; consecutive ones went to
    # different processes.
    assert len(dm_ports) >= 3
    assert all(a != b for a, b in zip(dm_ports, dm_ports[1:]))
    assert set(dm_ports) == set(proxy.upstreams)
    assert first.sql("SELECT state, result_code FROM jobs") == [("succeeded", 200)]


def wait_for_jobs(server, count: int) -> list[tuple[int, str]]:
    """Wait until ``count`` campaign jobs are queued; return (job id, device id)."""
    deadline = time.monotonic() + DISPATCH_TIMEOUT
    while time.monotonic() < deadline:
        rows = server.sql(
            "SELECT jobs.id, devices.device_id FROM jobs JOIN devices ON devices.id = jobs.device_pk "
            "WHERE jobs.state = 'queued' AND jobs.campaign_id IS NOT NULL ORDER BY jobs.id"
        )
        if len(rows) >= count:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"only {len(rows)} of {count} campaign jobs were queued")


def test_campaign_events_at_both_processes(two_servers, tmp_path):
    (first, second), proxy = two_servers
    cert = first.data_dir / "keys" / "signing-cert.pem"
    device_ids = [f"IMEI:49015420323{7600 + n}" for n in range(6)]
    rows = [f"{d},{CLIENT_PASSWORD},{SERVER_PASSWORD},{MODEL}" for d in device_ids]
    devices_csv = tmp_path / "devices.csv"
    devices_csv.write_text("device_id,client_password,server_password,model\n" + "\n".join(rows) + "\n")
    first.cli("device", "import", str(devices_csv))
    phones = {
        device_id: make_phone(tmp_path / device_id.replace(":", "_"), device_id, cert)
        for device_id in device_ids
    }
    first.cli(
        "campaign", "create", "--name", "two processes", "--target-version", NEW_VERSION,
        "--model", MODEL, "--waves", "50%,100%", "--success-threshold", "1.0",
    )
    second.cli("campaign", "start", "1", "--workers", "1")

    for wave_size in (3, 3):
        queued = wait_for_jobs(first, wave_size)
        assert len(queued) == wave_size
        for _, device_id in queued:
            report = run_until_idle(phones[device_id], f"{proxy.url}/dm", RunOptions())
            assert report.reported_codes == [200]

    assert first.sql("SELECT state FROM campaigns") == [("completed",)]
    counters = first.sql(
        "SELECT wave, name, value FROM campaign_counters WHERE value <> 0 ORDER BY wave, name"
    )
    scanned = first.sql(
        "SELECT wave, status, COUNT(*) FROM campaign_devices GROUP BY wave, status ORDER BY wave, status"
    )
    assert counters == scanned
    assert counters == [(1, "succeeded", 3), (2, "succeeded", 3)]
    notify_ports = {port for path, port in proxy.routed if path.startswith("/dl/notify")}
    dm_ports = {port for path, port in proxy.routed if path.startswith("/dm")}
    assert dm_ports == set(proxy.upstreams)
    assert notify_ports <= set(proxy.upstreams)
    for running in (first, second):
        assert "Traceback" not in running.log()
