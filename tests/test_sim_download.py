"""Tests of the simulator's FUMO work: download, resume, verify, update, report.

A small HTTP server on 127.0.0.1 (http.server in a thread) serves a
hand-written OMA DL download descriptor, a real signed delta package built
with dmserver.fota from the libexpat firmware fixtures, and records install
notify POSTs. It can drop the connection once mid-body, ignore Range, or
return 416, to exercise each resume path. Expected image digests are the
SHA-256 sums published in fixtures/firmware/PROVENANCE.md.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dmserver.fota.delta import make_delta
from dmserver.fota.package import Manifest, build_package
from dmserver.fota.signing import init_keys, load_private_key
from dmserver.sim import download as download_module
from dmserver.sim.download import (
    FumoFailure,
    UpdateOptions,
    download_object,
    perform_fumo_job,
)
from dmserver.sim.phone import FumoJob, Phone
from dmserver.sim.session import HttpResponse, RunOptions, run_until_idle
from dmserver.syncml.auth import md5_digest
from dmserver.syncml.codec import Encoding, decode_message, encode_message
from dmserver.syncml.model import Chal, Command, Cred, Item, Message, Meta, SyncHdr

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "fixtures" / "firmware"
OLD_IMAGE = FIRMWARE / "libexpat-2.5.0-1+deb12u2.so"
NEW_IMAGE = FIRMWARE / "libexpat-2.5.0-1+deb12u5.so"
# From fixtures/firmware/PROVENANCE.md.
OLD_SHA256 = "a9a60cb5308ca1054427e2973b021ea63c2c801c71d8c0dc9d33218fee1d976a"
NEW_SHA256 = "b342d94f6a71df596f19b1b0d4d3af9b883f0333027de6c3fc0dbc9ff8c45057"
OLD_VERSION = "2.5.0-1+deb12u2"
NEW_VERSION = "2.5.0-1+deb12u5"
MODEL = "FP-100"
DEVICE_ID = "IMEI:490154203237518"
FUMO = "./FUMO/x"
ETAG = '"package-1"'
DD_MEDIA_TYPE = "application/vnd.oma.dd+xml"


# ---------------------------------------------------------------------------
# Package fixtures


@dataclass(frozen=True)
class Signed:
    package: bytes
    cert_pem: bytes
    other_cert_pem: bytes


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> Signed:
    keys = tmp_path_factory.mktemp("keys")
    key_path, cert_path = init_keys(keys / "server")
    _, other_cert = init_keys(keys / "other")
    old, new = OLD_IMAGE.read_bytes(), NEW_IMAGE.read_bytes()
    delta = make_delta(old, new)
    manifest = Manifest.for_delta(MODEL, OLD_VERSION, old, NEW_VERSION, new, delta)
    package = build_package(manifest, delta, load_private_key(key_path))
    return Signed(package, cert_path.read_bytes(), other_cert.read_bytes())


# ---------------------------------------------------------------------------
# The download server


@dataclass
class DownloadServer:
    package: bytes
    drop_once_after: int | None = None
    ignore_range: bool = False
    answer_416_once: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)
    notifications: list[bytes] = field(default_factory=list)
    url: str = ""

    def descriptor(self) -> bytes:
        # OMA DL 1.0 download descriptor, written by hand.
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<media xmlns="http://www.openmobilealliance.org/xmlns/dd">'
            "<type>application/octet-stream</type>"
            f"<objectURI>{self.url}/pkg</objectURI>"
            f"<size>{len(self.package)}</size>"
            "<name>FP-100 firmware</name>"
            f"<installNotifyURI>{self.url}/notify</installNotifyURI>"
            "<DDVersion>1.0</DDVersion>"
            "</media>"
        ).encode()

    @property
    def package_requests(self) -> list[dict[str, str]]:
        return [r for r in self.requests if r["path"] == "/pkg"]


def make_handler(state: DownloadServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            headers = {name.lower(): value for name, value in self.headers.items()}
            state.requests.append({"path": self.path, **headers})
            if self.path == "/dd":
                self._send(200, state.descriptor(), DD_MEDIA_TYPE)
            elif self.path == "/pkg":
                self._send_package(headers)
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            state.requests.append({"path": self.path})
            if self.path == "/notify":
                state.notifications.append(body)
                self._send(200, b"", "text/plain")
            else:
                self._send(404, b"", "text/plain")

        def _send(self, code, body, media_type, extra=None):
            self.send_response(code)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _send_package(self, headers):
            data = state.package
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", headers.get("range", ""))
            if_range = headers.get("if-range")
            if state.answer_416_once and match:
                state.answer_416_once = False
                self._send(
                    416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"}
                )
                return
            if match and not state.ignore_range and (if_range in (None, ETAG)):
                start = int(match.group(1))

            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", ETAG)
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header(
                    "Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"
                )
            self.end_headers()

            if state.drop_once_after is not None and start < state.drop_once_after:
                cut = state.drop_once_after - start
                state.drop_once_after = None
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def download_server(signed):
    state = DownloadServer(package=signed.package)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def phone(tmp_path, signed) -> Phone:
    return Phone.create(
        tmp_path / "phone",
        device_id=DEVICE_ID,
        model=MODEL,
        manufacturer="Acme",
        firmware_version=OLD_VERSION,
        firmware=OLD_IMAGE,
        cert=signed.cert_pem,
        client_password="client-secret",
        server_password="server-secret",
    )


def queue_job(
    phone: Phone, server: DownloadServer, operation="DownloadAndUpdate"
) -> FumoJob:
    job = FumoJob(FUMO, operation, "job-1", f"{server.url}/dd")
    phone.pending_job = job
    phone.save()
    return job


def run_job(phone: Phone, server: DownloadServer, **options):
    job = queue_job(phone, server)
    return perform_fumo_job(phone, job, UpdateOptions(**options))


def fumo_state(phone: Phone) -> int:
    return int(Phone.load(phone.state_dir).tree.value(f"{FUMO}/State"))


# ---------------------------------------------------------------------------
# Resumable download


def test_download_resumes_after_server_drop(phone, download_server, signed):
    download_server.drop_once_after = 10_000
    data = download_object(
        phone, f"{download_server.url}/pkg", len(signed.package), UpdateOptions()
    )
    assert data == signed.package
    requests = download_server.package_requests
    assert len(requests) == 2
    assert "range" not in requests[0]
    assert requests[1]["range"] == "bytes=10000-"
    assert requests[1]["if-range"] == ETAG


def test_drop_after_option_resumes_with_range(phone, download_server, signed):
    data = download_object(
        phone,
        f"{download_server.url}/pkg",
        len(signed.package),
        UpdateOptions(drop_after=5000),
    )
    assert data == signed.package
    requests = download_server.package_requests
    assert len(requests) == 2
    assert requests[1]["range"] == "bytes=5000-"


def test_download_restarts_when_range_ignored(phone, download_server, signed):
    download_server.drop_once_after = 7000
    download_server.ignore_range = True
    data = download_object(
        phone, f"{download_server.url}/pkg", len(signed.package), UpdateOptions()
    )
    assert data == signed.package
    assert download_server.package_requests[1]["range"] == "bytes=7000-"


def test_download_restarts_after_416(phone, download_server, signed):
    download_server.drop_once_after = 3000
    download_server.answer_416_once = True
    data = download_object(
        phone, f"{download_server.url}/pkg", len(signed.package), UpdateOptions()
    )
    assert data == signed.package
    requests = download_server.package_requests
    assert len(requests) == 3
    assert requests[1]["range"] == "bytes=3000-"
    assert "range" not in requests[2]


def test_partial_download_survives_restart(phone, download_server, signed, monkeypatch):
    url = f"{download_server.url}/pkg"
    download_server.drop_once_after = 12_345
    # One attempt only, as if the simulator were killed after the drop.
    monkeypatch.setattr(download_module, "MAX_DOWNLOAD_ATTEMPTS", 1)
    with pytest.raises(FumoFailure) as failure:
        download_object(phone, url, len(signed.package), UpdateOptions())
    assert failure.value.result_code == 503
    monkeypatch.undo()

    reloaded = Phone.load(phone.state_dir)
    assert reloaded.partial_path.stat().st_size == 12_345
    assert reloaded.download.etag == ETAG
    data = download_object(reloaded, url, len(signed.package), UpdateOptions())
    assert data == signed.package
    assert download_server.package_requests[-1]["range"] == "bytes=12345-"


# ---------------------------------------------------------------------------
# Full FUMO operation and each injected failure


def test_download_and_update_success(phone, download_server):
    report = run_job(phone, download_server)
    assert report.result_code == 200
    assert report.source_uri == f"{FUMO}/DownloadAndUpdate"
    assert report.correlator == "job-1"
    assert (
        report.alert_type
        == "org.openmobilealliance.dm.firmwareupdate.downloadandupdate"
    )
    reloaded = Phone.load(phone.state_dir)
    assert reloaded.image_sha256() == NEW_SHA256
    assert hashlib.sha256(reloaded.read_image()).hexdigest() == NEW_SHA256
    assert reloaded.firmware_version == NEW_VERSION
    assert fumo_state(phone) == 100
    assert reloaded.pending_job is None
    assert reloaded.pending_reports == [report]
    assert download_server.notifications == [b"900 Success\r\n"]


def test_drop_after_still_succeeds(phone, download_server):
    report = run_job(phone, download_server, drop_after=20_000)
    assert report.result_code == 200
    assert Phone.load(phone.state_dir).image_sha256() == NEW_SHA256
    assert download_server.package_requests[1]["range"] == "bytes=20000-"


def test_corrupt_download_reports_402(phone, download_server):
    report = run_job(phone, download_server, corrupt_download=True)
    assert report.result_code == 402
    assert Phone.load(phone.state_dir).image_sha256() == OLD_SHA256
    assert fumo_state(phone) == 20
    assert download_server.notifications[0].startswith(b"905 ")


def test_modified_firmware_reports_403(phone, download_server):
    report = run_job(phone, download_server, modify_firmware=True)
    assert report.result_code == 403
    reloaded = Phone.load(phone.state_dir)
    assert reloaded.firmware_version == OLD_VERSION
    assert reloaded.image_sha256() not in (OLD_SHA256, NEW_SHA256)
    assert fumo_state(phone) == 80
    assert download_server.notifications[0].startswith(b"953 ")


def test_bad_signature_reports_404(phone, download_server):
    report = run_job(phone, download_server, bad_signature=True)
    assert report.result_code == 404
    assert Phone.load(phone.state_dir).image_sha256() == OLD_SHA256
    assert download_server.notifications[0].startswith(b"905 ")


def test_package_signed_by_other_key_reports_404(tmp_path, signed, download_server):
    phone = Phone.create(
        tmp_path / "other",
        device_id=DEVICE_ID,
        model=MODEL,
        manufacturer="Acme",
        firmware_version=OLD_VERSION,
        firmware=OLD_IMAGE,
        cert=signed.other_cert_pem,
        client_password="c",
        server_password="s",
    )
    assert run_job(phone, download_server).result_code == 404


def test_low_battery_reports_450_without_download(phone, download_server):
    phone.battery = 10
    phone.save()
    report = run_job(phone, download_server, min_battery=30)
    assert report.result_code == 450
    assert download_server.package_requests == []
    assert Phone.load(phone.state_dir).image_sha256() == OLD_SHA256
    assert download_server.notifications[0].startswith(b"952 ")


def test_insufficient_storage_reports_501(phone, download_server, signed):
    phone.free_storage = len(signed.package) - 1
    phone.save()
    report = run_job(phone, download_server)
    assert report.result_code == 501
    assert download_server.package_requests == []
    assert download_server.notifications == [b"901 Insufficient memory\r\n"]


def test_wrong_model_reports_403(tmp_path, signed, download_server):
    phone = Phone.create(
        tmp_path / "model",
        device_id=DEVICE_ID,
        model="FP-200",
        manufacturer="Acme",
        firmware_version=OLD_VERSION,
        firmware=OLD_IMAGE,
        cert=signed.cert_pem,
        client_password="c",
        server_password="s",
    )
    assert run_job(phone, download_server).result_code == 403


def test_missing_descriptor_reports_411(phone, download_server):
    job = FumoJob(FUMO, "DownloadAndUpdate", "job-1", f"{download_server.url}/missing")
    phone.pending_job = job
    assert perform_fumo_job(phone, job, UpdateOptions()).result_code == 411


def test_download_then_update(phone, download_server):
    report = run_job_operation(phone, download_server, "Download")
    assert report.result_code == 200
    assert report.alert_type == "org.openmobilealliance.dm.firmwareupdate.download"
    assert fumo_state(phone) == 40
    assert Phone.load(phone.state_dir).image_sha256() == OLD_SHA256

    assert phone.execute(f"{FUMO}/Update", "job-2") == 202
    report = perform_fumo_job(phone, phone.pending_job, UpdateOptions())
    assert report.result_code == 200
    assert report.source_uri == f"{FUMO}/Update"
    assert Phone.load(phone.state_dir).image_sha256() == NEW_SHA256


def run_job_operation(phone, server, operation):
    job = queue_job(phone, server, operation)
    return perform_fumo_job(phone, job, UpdateOptions())


# ---------------------------------------------------------------------------
# run_until_idle against a scripted DM server


class ScriptedDmServer:
    """A DM server that delivers one DownloadAndUpdate and records reports.

    It replies through the transport interface of run_until_idle, so no DM
    HTTP server is needed; the download still goes over real HTTP. It sends
    its md5 credential in the first message of each session, made with the
    server nonce the phone issued in its last Chal.
    """

    SERVER_URL = "http://127.0.0.1/dm"

    def __init__(self, pkg_url: str):
        self.pkg_url = pkg_url
        self.server_nonce = b"null"
        self.delivered = False
        self.generic_alerts: list[Command] = []
        self.msg_id = 0

    def post(self, url, body, headers) -> HttpResponse:
        message = decode_message(body, headers["Content-Type"]).message
        msg_ref = message.header.msg_id
        first = msg_ref == "1"
        self.msg_id += 1

        # The SyncHdr Status, then a Status for each Alert and Replace.
        reply = [
            Command(
                name="Status",
                cmd_id="",
                msg_ref=msg_ref,
                cmd_ref="0",
                cmd="SyncHdr",
                data="212" if first else "200",
                chal=(
                    Chal(
                        type="syncml:auth-md5",
                        next_nonce=base64.b64encode(b"client-nonce").decode(),
                    )
                    if first
                    else None
                ),
            )
        ]
        for command in message.commands:
            if command.name == "Status" and command.cmd_ref == "0" and command.chal:
                self.server_nonce = base64.b64decode(command.chal.next_nonce)
            if command.name in ("Alert", "Replace"):
                reply.append(
                    Command(
                        name="Status",
                        cmd_id="",
                        msg_ref=msg_ref,
                        cmd_ref=command.cmd_id,
                        cmd=command.name,
                        data="200",
                    )
                )
            if command.name == "Alert" and command.data == "1226":
                self.generic_alerts.append(command)

        # One DownloadAndUpdate, in the first session only.
        if first and not self.delivered:
            self.delivered = True
            reply.append(
                Command(
                    name="Replace",
                    cmd_id="",
                    items=[
                        Item(
                            target=f"{FUMO}/DownloadAndUpdate/PkgURL",
                            data=self.pkg_url,
                            meta=Meta(format="chr"),
                        )
                    ],
                )
            )
            reply.append(
                Command(
                    name="Exec",
                    cmd_id="",
                    correlator="job-9",
                    items=[Item(target=f"{FUMO}/DownloadAndUpdate")],
                )
            )

        cred = None
        if first:
            digest = md5_digest("dmserver", "server-secret", self.server_nonce)
            cred = Cred(type="syncml:auth-md5", data=digest)
        header = SyncHdr(
            session_id=message.header.session_id,
            msg_id=str(self.msg_id),
            target=message.header.source,
            source=self.SERVER_URL,
            cred=cred,
        )
        commands = [
            dataclasses.replace(command, cmd_id=str(number))
            for number, command in enumerate(reply, 1)
        ]
        body = encode_message(Message(header=header, commands=commands), Encoding.XML)
        return HttpResponse(
            200, "OK", {"content-type": "application/vnd.syncml.dm+xml"}, body
        )


def test_run_until_idle_updates_and_reports(phone, download_server):
    dm = ScriptedDmServer(f"{download_server.url}/dd")
    report = run_until_idle(phone, dm.SERVER_URL, RunOptions(), transport=dm)
    assert report.sessions == 2
    assert report.reported_codes == [200]
    assert report.firmware_version == NEW_VERSION
    assert report.firmware_sha256 == NEW_SHA256
    assert len(dm.generic_alerts) == 1
    alert = dm.generic_alerts[0]
    assert alert.correlator == "job-9"
    assert alert.items[0].source == f"{FUMO}/DownloadAndUpdate"
    assert alert.items[0].data == "200"
    reloaded = Phone.load(phone.state_dir)
    assert reloaded.pending_job is None
    assert reloaded.pending_reports == []
