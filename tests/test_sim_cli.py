"""Tests of the ``dmsim`` command line: options, output lines, exit status.

The DM server is the scripted one of test_sim_download behind a loopback
http.server, so these tests run the CLI's real HTTP transport.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dmserver.sim.cli import main
from tests.test_sim_download import (  # noqa: F401 (fixtures)
    DEVICE_ID,
    NEW_SHA256,
    NEW_VERSION,
    OLD_IMAGE,
    OLD_SHA256,
    OLD_VERSION,
    ScriptedDmServer,
    download_server,
    signed,
)


@pytest.fixture
def cert_file(tmp_path, signed):  # noqa: F811
    path = tmp_path / "cert.pem"
    path.write_bytes(signed.cert_pem)
    return path


def serve_dm(scripted: ScriptedDmServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reply = scripted.post(
                self.path, body, {"Content-Type": self.headers["Content-Type"]}
            )
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.headers["content-type"])
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return httpd, thread, f"http://127.0.0.1:{httpd.server_address[1]}/dm"


@pytest.fixture
def dm_server(download_server):  # noqa: F811
    scripted = ScriptedDmServer(f"{download_server.url}/dd")
    httpd, thread, url = serve_dm(scripted)
    scripted.url = url
    yield scripted
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def phone_options(state_dir, cert_file, server_url):
    return [
        "run",
        "--state-dir",
        str(state_dir),
        "--server",
        server_url,
        "--device",
        DEVICE_ID,
        "--client-password",
        "client-secret",
        "--server-password",
        "server-secret",
        "--model",
        "FP-100",
        "--manufacturer",
        "Acme",
        "--firmware-version",
        OLD_VERSION,
        "--firmware",
        str(OLD_IMAGE),
        "--cert",
        str(cert_file),
    ]


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_run_without_phone_options_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "run",
                "--state-dir",
                str(tmp_path / "new"),
                "--server",
                "http://127.0.0.1:1/dm",
            ]
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--device" in error
    assert "--firmware" in error


def test_run_unreachable_server_exits_1(tmp_path, cert_file, capsys):
    url = f"http://127.0.0.1:{unused_port()}/dm"
    code = main(phone_options(tmp_path / "phone", cert_file, url))
    assert code == 1
    assert "dmsim: error: cannot reach the DM server" in capsys.readouterr().err


def test_run_updates_and_prints_idle_line(
    tmp_path, cert_file, dm_server, download_server, capsys  # noqa: F811
):
    code = main(
        phone_options(tmp_path / "phone", cert_file, dm_server.url)
        + ["--drop-after", "9000"]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("dmsim: ") for line in lines)
    assert "dmsim: FUMO results reported: 200" in lines
    assert lines[-1] == f"dmsim: idle; firmware {NEW_VERSION} sha256 {NEW_SHA256}"
    assert download_server.package_requests[1]["range"] == "bytes=9000-"


def test_run_bad_signature_reports_404(tmp_path, cert_file, dm_server, capsys):
    code = main(
        phone_options(tmp_path / "phone", cert_file, dm_server.url)
        + ["--bad-signature"]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert "dmsim: FUMO results reported: 404" in lines
    assert lines[-1] == f"dmsim: idle; firmware {OLD_VERSION} sha256 {OLD_SHA256}"
    assert dm_server.generic_alerts[0].items[0].data == "404"


def test_second_run_uses_stored_state(tmp_path, cert_file, dm_server, capsys):
    state_dir = tmp_path / "phone"
    assert main(phone_options(state_dir, cert_file, dm_server.url)) == 0
    capsys.readouterr()
    # No phone options: the stored phone is loaded; the server has no job.
    assert main(["run", "--state-dir", str(state_dir), "--server", dm_server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"dmsim: idle; firmware {NEW_VERSION} sha256 {NEW_SHA256}"


def test_show_prints_tree_without_secrets(tmp_path, cert_file, dm_server, capsys):
    state_dir = tmp_path / "phone"
    main(phone_options(state_dir, cert_file, dm_server.url))
    capsys.readouterr()
    assert main(["show", "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr().out
    assert f"./DevInfo/DevId = {DEVICE_ID} (chr)" in out
    assert f"./DevDetail/FwV = {NEW_VERSION} (chr)" in out
    assert "./DMAcc/dmserver/AAuthSecret = (secret)" in out
    assert "client-secret" not in out
    assert "server-secret" not in out
