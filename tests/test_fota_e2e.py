"""End to end: the real server and dmsim over loopback, success and every
injected failure, checked on the stored job and the phone's image.

A recording proxy sits between phone and server (the server's --base-url
points at it, so RespURIs and download URLs go through it too) and keeps
every reply, so the tests can check each message's size on the wire.
Expected image hashes are the published SHA-256 sums of the corpus builds.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import (
    MODEL,
    NEW_SHA256,
    NEW_VERSION,
    OLD_IMAGE,
    OLD_SHA256,
    OLD_VERSION,
    ROOT,
    copy_catalogue_rows,
    start_server,
    stop_server,
)

DEVICE = "IMEI:356938035643809"
CLIENT_PASSWORD = "phone-secret"
SERVER_PASSWORD = "server-secret"
SIM_TIMEOUT = 300


class RecordingProxy:
    """Forward HTTP to the server on loopback and keep every DM reply."""

    def __init__(self):
        self.replies: list[tuple[str, bytes]] = []
        self.upstream: tuple[str, int] | None = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                if self.path.startswith("/dm"):
                    proxy.replies.append((response.getheader("Content-Type"), data))
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "server", "date"):
                        self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_POST = do_HEAD = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fota(catalogue_dir, tmp_path, db_backend, request):
    """A server behind a recording proxy, on each database backend."""
    data_dir = tmp_path / "data"
    shutil.copytree(catalogue_dir, data_dir)
    db = None
    if db_backend == "postgresql":
        db = request.getfixturevalue("postgres_schema_url")
        copy_catalogue_rows(f"sqlite:///{data_dir / 'dmserver.db'}", db)
    proxy = RecordingProxy()
    server = start_server(data_dir, db=db, extra=("--base-url", proxy.url))
    proxy.upstream = ("127.0.0.1", urlsplit(server.url).port)
    yield server, proxy
    stop_server(server)
    proxy.close()


def provision(server, auth="md5", delivery="download"):
    server.cli(
        "device", "add", DEVICE,
        "--client-password", CLIENT_PASSWORD,
        "--server-password", SERVER_PASSWORD,
        "--model", MODEL,
        "--auth", auth,
        "--delivery", delivery,
    )
    server.cli("job", "fota", DEVICE, "--version", NEW_VERSION)


def run_sim(server, proxy, state_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "dmserver.sim.cli", "run",
        "--server", f"{proxy.url}/dm",
        "--device", DEVICE,
        "--client-password", CLIENT_PASSWORD,
        "--server-password", SERVER_PASSWORD,
        "--model", MODEL,
        "--manufacturer", "Example",
        "--firmware-version", OLD_VERSION,
        "--firmware", str(OLD_IMAGE),
        "--state-dir", str(state_dir),
        "--cert", str(server.data_dir / "keys" / "signing-cert.pem"),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=SIM_TIMEOUT)


def job_row(server) -> tuple:
    return server.sql("SELECT state, result_code, source_version FROM jobs")[0]


def phone_image_sha256(state_dir: Path) -> str:
    images = sorted(state_dir.glob("*.img")) or sorted(state_dir.glob("firmware*"))
    assert images, f"no image in {state_dir}"
    return hashlib.sha256(images[0].read_bytes()).hexdigest()


def test_fota_succeeds_with_delta(fota, tmp_path):
    server, proxy = fota
    provision(server)
    result = run_sim(server, proxy, tmp_path / "phone")
    assert result.returncode == 0, result.stdout + result.stderr
    state, code, source = job_row(server)
    assert state == "succeeded"
    assert code == 200
    assert source == OLD_VERSION
    assert phone_image_sha256(tmp_path / "phone") == NEW_SHA256


@pytest.mark.parametrize(
    "options, expected_code",
    [
        (["--battery", "10", "--min-battery", "30"], 450),
        (["--free-storage", "1000"], 501),
        (["--corrupt-download"], 402),
        (["--modify-firmware"], 403),
        (["--bad-signature"], 404),
    ],
)
def test_injected_failure_reported(fota, tmp_path, options, expected_code):
    server, proxy = fota
    provision(server)
    run_sim(server, proxy, tmp_path / "phone", *options)
    state, code, _ = job_row(server)
    assert state == "failed"
    assert code == expected_code
    if expected_code != 403:
        # The phone keeps its old image; 403 is injected by modifying it.
        assert phone_image_sha256(tmp_path / "phone") == OLD_SHA256


def test_dropped_download_resumes(fota, tmp_path):
    server, proxy = fota
    provision(server)
    result = run_sim(server, proxy, tmp_path / "phone", "--drop-after", "10000")
    assert result.returncode == 0, result.stdout + result.stderr
    assert job_row(server)[:2] == ("succeeded", 200)
    assert phone_image_sha256(tmp_path / "phone") == NEW_SHA256
    assert "Range" in result.stdout or "resum" in result.stdout.lower()


@pytest.mark.parametrize(
    "auth, delivery, options",
    [
        ("hmac", "download", ["--encoding", "wbxml", "--max-msg-size", "3500", "--auth", "hmac"]),
        ("md5", "download", ["--dm-version", "1.1.2", "--max-msg-size", "3500"]),
        ("basic", "download", ["--encoding", "wbxml", "--max-msg-size", "3500", "--auth", "basic"]),
        ("md5", "inband", ["--encoding", "wbxml", "--max-msg-size", "3500"]),
        ("hmac", "inband", ["--max-msg-size", "3500", "--auth", "hmac"]),
    ],
)
def test_small_messages_and_protocol_variants(fota, tmp_path, auth, delivery, options):
    server, proxy = fota
    provision(server, auth=auth, delivery=delivery)
    result = run_sim(server, proxy, tmp_path / "phone", *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert job_row(server)[:2] == ("succeeded", 200)
    assert phone_image_sha256(tmp_path / "phone") == NEW_SHA256
    assert proxy.replies
    if delivery == "inband":
        # The package travelled in the session, in several chunks.
        assert len(proxy.replies) > 10
    for content_type, body in proxy.replies:
        assert len(body) <= 3500
        if "--encoding" in options:
            assert content_type == "application/vnd.syncml.dm+wbxml"
