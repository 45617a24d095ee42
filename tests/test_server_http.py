"""The real server on 127.0.0.1: DM sessions by hand, bad input, downloads.

Each test starts ``dmserver serve`` in its own data directory (see
conftest.py) and talks HTTP to it. Digests are computed with the formula
of the OMA DM Security specification written out in this file.
"""

import base64
import hashlib
import http.client
from urllib.parse import urlsplit

import pytest

from dmserver.syncml.codec import Encoding, decode_message, encode_message
from dmserver.syncml.model import Command, Cred, Item, Message, Meta, SyncHdr

from .conftest import MODEL, NEW_VERSION, OLD_VERSION

DEVICE = "IMEI:351756051523999"
CLIENT_PASSWORD = "c-secret"
SERVER_PASSWORD = "s-secret"
XML = "application/vnd.syncml.dm+xml"


def spec_md5(username: str, password: str, nonce: bytes) -> str:
    inner = base64.b64encode(hashlib.md5(f"{username}:{password}".encode()).digest())
    return base64.b64encode(hashlib.md5(inner + b":" + nonce).digest()).decode()


def post(url: str, body: bytes, content_type: str = XML) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    connection.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def get(url: str, headers: dict | None = None) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", parts.path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def provision(server, *, job: bool = False) -> None:
    server.cli("device", "add", DEVICE, "--client-password", CLIENT_PASSWORD, "--server-password", SERVER_PASSWORD)
    if job:
        server.cli("job", "fota", DEVICE, "--version", NEW_VERSION)


def package1(server, nonce: bytes = b"null", password: str = CLIENT_PASSWORD, session_id: str = "1F") -> bytes:
    message = Message(
        header=SyncHdr(
            session_id=session_id,
            msg_id="1",
            target=server.dm_url,
            source=DEVICE,
            cred=Cred(type="syncml:auth-md5", data=spec_md5(DEVICE, password, nonce)),
            meta=Meta(max_msg_size=9000),
        ),
        commands=[
            Command("Alert", "1", data="1201"),
            Command("Replace", "2", items=[Item(source="./DevInfo/Mod", data=MODEL), Item(source="./DevInfo/DevId", data=DEVICE)]),
        ],
    )
    return encode_message(message, Encoding.XML)


def decode(response) -> Message:
    return decode_message(response.body, response.getheader("Content-Type")).message


def header_status(response) -> str:
    return decode(response).commands[0].data


def jobs_table(server) -> list[tuple]:
    return server.sql("SELECT id, state, target_version FROM jobs ORDER BY id")


def test_reply_has_exact_content_length_and_request_media_type(server):
    provision(server)
    response = post(server.dm_url, package1(server), "application/vnd.syncml+xml")
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") is None
    assert int(response.getheader("Content-Length")) == len(response.body)
    assert response.getheader("Content-Type") == "application/vnd.syncml+xml"
    assert header_status(response) == "212"


def test_unknown_device_rejected_and_logged(server):
    response = post(server.dm_url, package1(server))
    assert response.status == 200
    assert header_status(response) == "401"
    assert "unknown device" in server.log()


def test_wrong_digest_gets_401_with_chal(server):
    provision(server)
    response = post(server.dm_url, package1(server, password="wrong"))
    status = decode(response).commands[0]
    assert response.status == 200
    assert status.data == "401"
    assert status.chal is not None and status.chal.next_nonce


def test_next_nonce_is_stored_and_required(server):
    provision(server)
    first = decode(post(server.dm_url, package1(server)))
    nonce = base64.b64decode(first.commands[0].chal.next_nonce)
    # The factory nonce no longer works once a nonce was issued.
    assert header_status(post(server.dm_url, package1(server, session_id="20"))) == "401"
    assert header_status(post(server.dm_url, package1(server, nonce=nonce, session_id="21"))) != "212"
    # That failure issued a new nonce in its Chal; the stored one is now that.


def test_issued_nonce_accepted_in_next_session(server):
    provision(server)
    first = decode(post(server.dm_url, package1(server)))
    nonce = base64.b64decode(first.commands[0].chal.next_nonce)
    assert header_status(post(server.dm_url, package1(server, nonce=nonce, session_id="22"))) == "212"


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"<SyncML><SyncHdr>", "400"),
        (b'<!DOCTYPE SyncML [<!ENTITY lol "lol">]><SyncML>&lol;</SyncML>', "400"),
        (b"<SyncML>&external;</SyncML>", "400"),
        (b"\x02\x00\x00\x6a\x00", "400"),
    ],
)
def test_bad_body_gets_syncml_status_and_server_keeps_serving(server, body, expected):
    provision(server, job=True)
    before = jobs_table(server)
    response = post(server.dm_url, body)
    assert response.status == 200
    assert header_status(response) == expected
    assert jobs_table(server) == before
    # Still serving: a valid session works afterwards.
    assert header_status(post(server.dm_url, package1(server))) == "212"


def test_unsupported_media_type_is_http_415(server):
    response = post(server.dm_url, b"<SyncML/>", "text/xml")
    assert response.status == 415
    assert b"application/vnd.syncml.dm+xml" in response.body


def test_oversized_body_is_413(server):
    import socket

    parts = urlsplit(server.url)
    body = b"<" + b"a" * (1_048_576 + 10)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = b"POST /dm HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.syncml.dm+xml\r\n"
        sock.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode())
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before the body is through
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    provision(server)
    assert header_status(post(server.dm_url, package1(server))) == "212"


def test_retransmitted_message_gets_identical_reply_once(server):
    provision(server, job=True)
    body = package1(server)
    first = post(server.dm_url, body)
    second = post(server.dm_url, body)
    assert second.body == first.body
    # The retransmission issued no second nonce: the stored one is the one sent.
    nonce = base64.b64decode(decode(first).commands[0].chal.next_nonce)
    stored = bytes(server.sql("SELECT client_nonce FROM devices")[0][0])
    sessions = server.sql("SELECT count(*) FROM dm_sessions")[0][0]
    assert stored == nonce
    assert sessions == 1


def run_delivery_session(server) -> str:
    """Drive a session up to the Exec by hand; return the descriptor URL."""
    reply = decode(post(server.dm_url, package1(server)))
    gets = [c for c in reply.commands if c.name == "Get"]
    answers = Message(
        header=SyncHdr(session_id="1F", msg_id="2", target=server.dm_url, source=DEVICE),
        commands=[
            Command("Status", "1", msg_ref="1", cmd_ref="0", cmd="SyncHdr", data="212"),
            Command("Results", "2", msg_ref="1", cmd_ref=gets[0].cmd_id, items=[Item(source="./DevDetail/FwV", data=OLD_VERSION)]),
            Command("Results", "3", msg_ref="1", cmd_ref=gets[1].cmd_id, items=[Item(source="./FUMO", data="fw")]),
        ],
    )
    reply = decode(post(reply.header.resp_uri, encode_message(answers, Encoding.XML)))
    replace = next(c for c in reply.commands if c.name == "Replace")
    return replace.items[0].data


def test_descriptor_and_ranged_package_download(server):
    provision(server, job=True)
    descriptor_url = run_delivery_session(server)
    descriptor = get(descriptor_url)
    assert descriptor.status == 200
    assert descriptor.getheader("Content-Type") == "application/vnd.oma.dd+xml"
    from dmserver.fota.descriptor import parse_descriptor

    dd = parse_descriptor(descriptor.body)
    whole = get(dd.object_uri)
    assert whole.status == 200
    assert len(whole.body) == dd.size
    etag = whole.getheader("ETag")
    assert etag == f'"{hashlib.sha256(whole.body).hexdigest()}"'

    part = get(dd.object_uri, {"Range": "bytes=1000-"})
    assert part.status == 206
    assert part.getheader("Content-Range") == f"bytes 1000-{dd.size - 1}/{dd.size}"
    assert part.body == whole.body[1000:]

    suffix = get(dd.object_uri, {"Range": "bytes=-10"})
    assert suffix.body == whole.body[-10:]

    beyond = get(dd.object_uri, {"Range": f"bytes={dd.size}-"})
    assert beyond.status == 416
    assert beyond.getheader("Content-Range") == f"bytes */{dd.size}"

    stale = get(dd.object_uri, {"Range": "bytes=1000-", "If-Range": '"other"'})
    assert stale.status == 200
    assert stale.body == whole.body


@pytest.mark.parametrize("body", [b"900 Success", b"900 anything at all\r\nX-Extra: 1\r\n", b"  900\n"])
def test_install_notify_success_forms(server, body):
    provision(server, job=True)
    descriptor_url = run_delivery_session(server)
    notify_url = descriptor_url.replace("/dl/dd/", "/dl/notify/")
    response = post(notify_url, body, "text/plain")
    assert response.status == 200
    assert jobs_table(server)[0][1] == "installed"


def test_install_notify_garbage_rejected_job_untouched(server):
    provision(server, job=True)
    descriptor_url = run_delivery_session(server)
    notify_url = descriptor_url.replace("/dl/dd/", "/dl/notify/")
    before = jobs_table(server)
    response = post(notify_url, b"hello", "text/plain")
    assert response.status == 400
    assert jobs_table(server) == before


def test_unknown_download_token_is_404(server):
    assert get(f"{server.url}/dl/dd/unknown").status == 404
    assert get(f"{server.url}/dl/pkg/unknown").status == 404


def test_announced_huge_body_refused_before_upload(server):
    import socket

    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            b"POST /dm HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.syncml.dm+xml\r\n"
            b"Content-Length: 10000000000\r\n\r\n" + b"<" * 1000
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"10000000000" in answer
    assert header_status(post(server.dm_url, package1(server))) == "401"  # still serving


def test_chunked_body_cut_off_at_limit(server):
    import socket

    parts = urlsplit(server.url)
    chunk = b"a" * 65536
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            b"POST /dm HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.syncml.dm+xml\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(40):  # 2.5 MiB, above the 1 MiB limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while data := sock.recv(4096):
                answer += data
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 413")


def test_root_page_served(server):
    response = get(server.url + "/")
    assert response.status == 200
    assert b"/dm" in response.body


def test_download_conditional_headers_and_huge_range(server):
    provision(server, job=True)
    descriptor_url = run_delivery_session(server)
    from dmserver.fota.descriptor import parse_descriptor

    dd = parse_descriptor(get(descriptor_url).body)
    etag = get(dd.object_uri).getheader("ETag")
    assert get(dd.object_uri, {"If-None-Match": etag}).status == 304
    assert get(dd.object_uri, {"If-Match": '"other"'}).status == 412
    assert get(dd.object_uri, {"If-Match": etag}).status == 200
    huge = get(dd.object_uri, {"Range": "bytes=" + "1" * 5000 + "-"})
    assert huge.status == 416
    assert "Traceback" not in server.log()


def test_head_of_descriptor_records_nothing(server):
    provision(server, job=True)
    descriptor_url = run_delivery_session(server)
    parts = urlsplit(descriptor_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("HEAD", parts.path)
    assert connection.getresponse().status == 200
    connection.close()
    assert jobs_table(server)[0][1] == "delivered"


def test_late_install_notify_keeps_closed_job(server):
    provision(server, job=True)
    descriptor_url = run_delivery_session(server)
    notify_url = descriptor_url.replace("/dl/dd/", "/dl/notify/")
    server.cli("job", "cancel", "1")
    response = post(notify_url, b"952 Device Aborted", "text/plain")
    assert response.status == 409
    assert server.sql("SELECT state, result_code, install_status FROM jobs") == [("cancelled", None, None)]


def generic_alert_session(server, correlator, source, code, session_id="30"):
    from dmserver.syncml.model import Meta as M

    message = Message(
        header=SyncHdr(
            session_id=session_id,
            msg_id="1",
            target=server.dm_url,
            source=DEVICE,
            cred=None,
        ),
        commands=[
            Command("Alert", "1", data="1201"),
            Command(
                "Alert",
                "2",
                data="1226",
                correlator=correlator,
                items=[Item(source=source, meta=M(type="org.openmobilealliance.dm.firmwareupdate.downloadandupdate", format="int"), data=str(code))],
            ),
        ],
    )
    nonce = bytes(server.sql("SELECT client_nonce FROM devices")[0][0])
    message.header.cred = Cred(type="syncml:auth-md5", data=spec_md5(DEVICE, CLIENT_PASSWORD, nonce))
    reply = decode(post(server.dm_url, encode_message(message, Encoding.XML)))
    assert reply.commands[0].data == "212"


def test_generic_alert_with_unknown_correlator_leaves_job_open(server):
    provision(server, job=True)
    run_delivery_session(server)
    generic_alert_session(server, "no-such-job", "./FUMO/fw/DownloadAndUpdate", 402)
    assert jobs_table(server)[0][1] == "delivered"


def test_generic_alert_without_correlator_matched_by_fumo_node(server):
    provision(server, job=True)
    run_delivery_session(server)
    generic_alert_session(server, None, "./FUMO/other/DownloadAndUpdate", 402)
    assert jobs_table(server)[0][1] == "delivered"
    generic_alert_session(server, None, "./FUMO/fw/DownloadAndUpdate", 402, session_id="31")
    assert server.sql("SELECT state, result_code FROM jobs") == [("failed", 402)]


def second_message(server, resp_uri: str, source: str, msg_id: str, model: str = "EVIL"):
    message = Message(
        header=SyncHdr(session_id="1F", msg_id=msg_id, target=server.dm_url, source=source),
        commands=[Command("Replace", "1", items=[Item(source="./DevInfo/Mod", data=model)])],
        final=False,  # keeps the session open
    )
    return post(resp_uri, encode_message(message, Encoding.XML))


def test_session_token_of_another_device_gets_no_stored_reply(server):
    provision(server, job=True)
    first = post(server.dm_url, package1(server))
    resp_uri = decode(first).header.resp_uri
    stolen = post(resp_uri, package1(server).replace(DEVICE.encode(), b"IMEI:999999999999999"))
    assert stolen.body != first.body
    assert header_status(stolen) == "401"


def test_msgid_going_backwards_not_executed(server):
    provision(server, job=True)
    resp_uri = decode(post(server.dm_url, package1(server))).header.resp_uri
    assert header_status(second_message(server, resp_uri, DEVICE, "3", "MODEL-3")) == "200"
    backwards = second_message(server, resp_uri, DEVICE, "2", "MODEL-2")
    assert header_status(backwards) == "400"
    assert header_status(second_message(server, resp_uri, DEVICE, "abc", "MODEL-X")) == "400"
    assert server.sql("SELECT model FROM devices") == [("MODEL-3",)]


def test_unsupported_protocol_version_is_505(server):
    provision(server)
    body = package1(server).replace(b"<VerDTD>1.2</VerDTD>", b"<VerDTD>9.9</VerDTD>")
    assert header_status(post(server.dm_url, body)) == "505"
    body = package1(server).replace(b"<VerProto>DM/1.2</VerProto>", b"<VerProto>DM/9</VerProto>")
    assert header_status(post(server.dm_url, body)) == "513"


def test_unknown_devices_leave_no_sessions(server):
    for number in range(5):
        body = package1(server).replace(DEVICE.encode(), f"IMEI:00000000000000{number}".encode())
        assert header_status(post(server.dm_url, body)) == "401"
    assert server.sql("SELECT count(*) FROM dm_sessions") == [(0,)]


def test_utf16_xml_body_decoded(server):
    provision(server)
    text = package1(server).decode("utf-8")
    body = ('<?xml version="1.0" encoding="UTF-16"?>' + text).encode("utf-16")
    assert header_status(post(server.dm_url, body)) == "212"
