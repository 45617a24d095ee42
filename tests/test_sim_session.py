"""Tests of the simulator's DM client engine against scripted server messages.

The server messages are hand-written SyncML DM 1.2 XML in the shape of the
OMA DM Protocol 1.2 examples. The phone's replies are read back with lxml
and XPath on local names, not with the project's decoder, and credential
values are computed here with hashlib or taken from the published auth-md5
check vector of OMA DM Security 1.2.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from lxml import etree

from dmserver.fota.signing import init_keys
from dmserver.sim.phone import FumoReport, Phone
from dmserver.sim.session import (
    AuthenticationError,
    ClientSession,
    SessionConfig,
    SessionError,
)
from dmserver.syncml.codec import Encoding, decode_message

DEVICE_ID = "IMEI:490154203237518"
SERVER_URL = "http://127.0.0.1:8080/dm"
SERVER_ID = "dmserver"
SERVER_PASSWORD = "server-secret"
CLIENT_PASSWORD = "client-secret"
SESSION_ID = "4D2"
XML_TYPE = "application/vnd.syncml.dm+xml"
FUMO = "./FUMO/x"
DOWNLOAD_AND_UPDATE_TYPE = "org.openmobilealliance.dm.firmwareupdate.downloadandupdate"

# OMA DM Security 1.2 publishes this auth-md5 check vector: user "Bruce2",
# password "OhBehave", nonce "Nonce".
VECTOR_USER = "Bruce2"
VECTOR_PASSWORD = "OhBehave"
VECTOR_NONCE = b"Nonce"
VECTOR_DIGEST = "Zz6EivR3yeaaENcRN6lpAQ=="


def md5_b64(data: bytes) -> bytes:
    return base64.b64encode(hashlib.md5(data).digest())


def expected_md5(user: str, password: str, nonce: bytes) -> str:
    return md5_b64(md5_b64(f"{user}:{password}".encode()) + b":" + nonce).decode()


@pytest.fixture(scope="module")
def cert_pem(tmp_path_factory) -> bytes:
    _, cert_path = init_keys(tmp_path_factory.mktemp("keys"))
    return cert_path.read_bytes()


@pytest.fixture
def phone(tmp_path, cert_pem) -> Phone:
    return Phone.create(
        tmp_path / "phone",
        device_id=DEVICE_ID,
        model="FP-100",
        manufacturer="Acme",
        firmware_version="1.0",
        firmware=b"firmware image 1.0",
        cert=cert_pem,
        client_password=CLIENT_PASSWORD,
        server_password=SERVER_PASSWORD,
        server_id=SERVER_ID,
    )


# ---------------------------------------------------------------------------
# Helpers: server messages and reading the phone's replies


def server_message(
    msg_id: int,
    body: str,
    *,
    cred: str | None = "default",
    final: bool = True,
    session_id: str = SESSION_ID,
    resp_uri: str | None = None,
    server_nonce: bytes = b"null",
    max_msg_size: int | None = None,
) -> bytes:
    if cred == "default":
        cred = expected_md5(SERVER_ID, SERVER_PASSWORD, server_nonce)
    cred_xml = ""
    if cred is not None:
        cred_xml = (
            "<Cred><Meta><Format xmlns='syncml:metinf'>b64</Format>"
            "<Type xmlns='syncml:metinf'>syncml:auth-md5</Type></Meta>"
            f"<Data>{cred}</Data></Cred>"
        )
    resp = f"<RespURI>{resp_uri}</RespURI>" if resp_uri else ""
    meta = ""
    if max_msg_size is not None:
        meta = (
            f"<Meta><MaxMsgSize xmlns='syncml:metinf'>{max_msg_size}"
            "</MaxMsgSize></Meta>"
        )
    return (
        "<SyncML xmlns='SYNCML:SYNCML1.2'><SyncHdr>"
        "<VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>"
        f"<SessionID>{session_id}</SessionID><MsgID>{msg_id}</MsgID>"
        f"<Target><LocURI>{DEVICE_ID}</LocURI></Target>"
        f"<Source><LocURI>{SERVER_URL}</LocURI></Source>"
        f"{resp}{cred_xml}{meta}</SyncHdr>"
        f"<SyncBody>{body}{'<Final/>' if final else ''}</SyncBody></SyncML>"
    ).encode()


def header_status(
    cmd_id: int,
    msg_ref: int,
    code: int,
    next_nonce: bytes | None = None,
    chal_type: str = "syncml:auth-md5",
) -> str:
    chal = ""
    if next_nonce is not None:
        chal = (
            "<Chal><Meta><Type xmlns='syncml:metinf'>" + chal_type + "</Type>"
            "<Format xmlns='syncml:metinf'>b64</Format>"
            f"<NextNonce xmlns='syncml:metinf'>{base64.b64encode(next_nonce).decode()}"
            "</NextNonce></Meta></Chal>"
        )
    return (
        f"<Status><CmdID>{cmd_id}</CmdID><MsgRef>{msg_ref}</MsgRef><CmdRef>0</CmdRef>"
        f"<Cmd>SyncHdr</Cmd><TargetRef>{SERVER_URL}</TargetRef>"
        f"<SourceRef>{DEVICE_ID}</SourceRef>{chal}<Data>{code}</Data></Status>"
    )


def get_command(cmd_id: int, uri: str) -> str:
    return (
        f"<Get><CmdID>{cmd_id}</CmdID>"
        f"<Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>"
    )


def status(cmd_id: int, msg_ref: int, cmd_ref: int, cmd: str, code: int) -> str:
    return (
        f"<Status><CmdID>{cmd_id}</CmdID><MsgRef>{msg_ref}</MsgRef>"
        f"<CmdRef>{cmd_ref}</CmdRef><Cmd>{cmd}</Cmd><Data>{code}</Data></Status>"
    )


def xpath(element, path: str):
    steps = "/".join(f"*[local-name()='{name}']" for name in path.split("/"))
    return element.xpath(steps)


def text(element, path: str) -> str | None:
    found = xpath(element, path)
    return found[0].text if found else None


def parse(body: bytes):
    return etree.fromstring(body)


def body_commands(root) -> list:
    return [
        el for el in xpath(root, "SyncBody")[0] if etree.QName(el).localname != "Final"
    ]


def is_final(root) -> bool:
    return bool(xpath(root, "SyncBody/Final"))


def find_status(root, cmd_ref: str):
    for element in body_commands(root):
        if (
            etree.QName(element).localname == "Status"
            and text(element, "CmdRef") == cmd_ref
        ):
            return element
    raise AssertionError(f"no Status with CmdRef {cmd_ref}")


def statuses(root) -> list:
    return [e for e in body_commands(root) if etree.QName(e).localname == "Status"]


def start(phone: Phone, **config) -> tuple[ClientSession, object]:
    session = ClientSession(
        phone, SERVER_URL, SessionConfig(session_id=SESSION_ID, **config)
    )
    return session, session.start()


def authenticate(session: ClientSession) -> object:
    """Send 212 and statuses for package 1, without Final; return the reply."""
    return session.receive(
        server_message(
            1,
            header_status(1, 1, 212)
            + status(2, 1, 1, "Alert", 200)
            + status(3, 1, 2, "Replace", 200),
            final=False,
        ),
        XML_TYPE,
    )


# ---------------------------------------------------------------------------
# Package 1


def test_package1_header_fields(phone):
    _, outgoing = start(phone)
    root = parse(outgoing.body)
    assert text(root, "SyncHdr/VerDTD") == "1.2"
    assert text(root, "SyncHdr/VerProto") == "DM/1.2"
    assert text(root, "SyncHdr/SessionID") == SESSION_ID
    assert text(root, "SyncHdr/MsgID") == "1"
    assert text(root, "SyncHdr/Target/LocURI") == SERVER_URL
    assert text(root, "SyncHdr/Source/LocURI") == DEVICE_ID
    assert text(root, "SyncHdr/Meta/MaxMsgSize") == "9000"
    assert text(root, "SyncHdr/Meta/MaxObjSize") == "1048576"
    assert outgoing.headers["Content-Type"] == XML_TYPE
    assert outgoing.url == SERVER_URL


def test_package1_md5_cred_with_factory_nonce(phone):
    _, outgoing = start(phone)
    root = parse(outgoing.body)
    assert text(root, "SyncHdr/Cred/Meta/Type") == "syncml:auth-md5"
    assert text(root, "SyncHdr/Cred/Meta/Format") == "b64"
    # Before any nonce exchange the phone uses the text "null".
    assert text(root, "SyncHdr/Cred/Data") == expected_md5(
        DEVICE_ID, CLIENT_PASSWORD, b"null"
    )


def test_package1_md5_cred_matches_published_vector(tmp_path, cert_pem):
    phone = Phone.create(
        tmp_path / "vector",
        device_id=DEVICE_ID,
        model="FP-100",
        manufacturer="Acme",
        firmware_version="1.0",
        firmware=b"image",
        cert=cert_pem,
        client_username=VECTOR_USER,
        client_password=VECTOR_PASSWORD,
        server_password=SERVER_PASSWORD,
    )
    phone.client_nonce = VECTOR_NONCE
    _, outgoing = start(phone)
    root = parse(outgoing.body)
    assert text(root, "SyncHdr/Cred/Data") == VECTOR_DIGEST
    assert text(root, "SyncHdr/Source/LocName") == VECTOR_USER


def test_package1_alert_and_devinfo(phone):
    _, outgoing = start(phone)
    root = parse(outgoing.body)
    commands = body_commands(root)
    assert [etree.QName(c).localname for c in commands] == ["Alert", "Replace"]
    assert text(commands[0], "CmdID") == "1"
    assert text(commands[0], "Data") == "1201"
    assert text(commands[1], "CmdID") == "2"
    items = {
        text(item, "Source/LocURI"): text(item, "Data")
        for item in xpath(commands[1], "Item")
    }
    assert items == {
        "./DevInfo/DevId": DEVICE_ID,
        "./DevInfo/Man": "Acme",
        "./DevInfo/Mod": "FP-100",
        "./DevInfo/DmV": "1.2",
        "./DevInfo/Lang": "en-US",
    }
    assert is_final(root)


def test_package1_server_initiated_alert(phone):
    _, outgoing = start(phone, alert_code=1200)
    root = parse(outgoing.body)
    assert text(body_commands(root)[0], "Data") == "1200"


def test_new_session_id_is_16_bit_hex(phone):
    session = ClientSession(phone, SERVER_URL)
    value = int(session.session_id, 16)
    assert 0 < value <= 0xFFFF


def test_package1_generic_alert_for_pending_result(phone):
    phone.pending_reports.append(
        FumoReport(f"{FUMO}/DownloadAndUpdate", DOWNLOAD_AND_UPDATE_TYPE, "job-7", 402)
    )
    _, outgoing = start(phone)
    root = parse(outgoing.body)
    alert = body_commands(root)[2]
    assert etree.QName(alert).localname == "Alert"
    assert text(alert, "Data") == "1226"
    assert text(alert, "Correlator") == "job-7"
    assert text(alert, "Item/Source/LocURI") == f"{FUMO}/DownloadAndUpdate"
    assert text(alert, "Item/Meta/Type") == DOWNLOAD_AND_UPDATE_TYPE
    assert text(alert, "Item/Meta/Format") == "int"
    assert text(alert, "Item/Data") == "402"


def test_generic_alert_status_200_clears_report(phone):
    report = FumoReport(
        f"{FUMO}/DownloadAndUpdate", DOWNLOAD_AND_UPDATE_TYPE, "job-7", 200
    )
    phone.pending_reports.append(report)
    session, _ = start(phone)
    reply = session.receive(
        server_message(
            1,
            header_status(1, 1, 212)
            + status(2, 1, 1, "Alert", 200)
            + status(3, 1, 2, "Replace", 200)
            + status(4, 1, 3, "Alert", 200),
        ),
        XML_TYPE,
    )
    assert reply is None
    assert session.result.delivered_reports == [report]
    assert Phone.load(phone.state_dir).pending_reports == []


def test_generic_alert_error_status_keeps_report(phone):
    report = FumoReport(
        f"{FUMO}/DownloadAndUpdate", DOWNLOAD_AND_UPDATE_TYPE, "job-7", 200
    )
    phone.pending_reports.append(report)
    session, _ = start(phone)
    session.receive(
        server_message(1, header_status(1, 1, 212) + status(2, 1, 3, "Alert", 500)),
        XML_TYPE,
    )
    assert session.result.delivered_reports == []
    assert Phone.load(phone.state_dir).pending_reports == [report]


# ---------------------------------------------------------------------------
# Statuses and Results for server commands


MANAGEMENT_BODY = (
    header_status(1, 1, 212, next_nonce=b"client-nonce-2")
    + status(2, 1, 1, "Alert", 200)
    + status(3, 1, 2, "Replace", 200)
    + get_command(4, "./DevDetail/FwV")
    + get_command(5, FUMO)
    + get_command(6, "./DevInfo")
    + get_command(7, "./Vendor/Nothing")
    + "<Replace><CmdID>8</CmdID><Item><Target><LocURI>./DevInfo/Mod</LocURI></Target>"
    "<Data>X-1</Data></Item></Replace>"
    + f"<Replace><CmdID>9</CmdID><Item><Target><LocURI>{FUMO}/DownloadAndUpdate/PkgURL"
    "</LocURI></Target><Meta><Format xmlns='syncml:metinf'>chr</Format></Meta>"
    "<Data>http://127.0.0.1:8080/dl/dd/abc</Data></Item></Replace>"
    + "<Exec><CmdID>10</CmdID><Correlator>abc</Correlator><Item><Target><LocURI>"
    f"{FUMO}/DownloadAndUpdate</LocURI></Target></Item></Exec>"
    + "<Exec><CmdID>11</CmdID><Item><Target><LocURI>./DevDetail/FwV</LocURI></Target>"
    "</Item></Exec>"
)


@pytest.fixture
def management_reply(phone):
    session, _ = start(phone)
    outgoing = session.receive(server_message(1, MANAGEMENT_BODY), XML_TYPE)
    return session, parse(outgoing.body)


def test_reply_header_and_cmd_ids(management_reply):
    _, root = management_reply
    assert text(root, "SyncHdr/MsgID") == "2"
    assert text(root, "SyncHdr/SessionID") == SESSION_ID
    # After 212 the phone sends no credentials.
    assert xpath(root, "SyncHdr/Cred") == []
    commands = body_commands(root)
    assert [text(c, "CmdID") for c in commands] == [
        str(n) for n in range(1, len(commands) + 1)
    ]
    assert is_final(root)


def test_reply_starts_with_synchdr_status(management_reply):
    _, root = management_reply
    first = body_commands(root)[0]
    assert etree.QName(first).localname == "Status"
    assert text(first, "CmdRef") == "0"
    assert text(first, "MsgRef") == "1"
    assert text(first, "Cmd") == "SyncHdr"
    assert text(first, "TargetRef") == DEVICE_ID
    assert text(first, "SourceRef") == SERVER_URL
    assert text(first, "Data") == "212"
    # The phone issues the server nonce for the next session in a Chal.
    assert text(first, "Chal/Meta/Type") == "syncml:auth-md5"
    assert text(first, "Chal/Meta/Format") == "b64"
    assert text(first, "Chal/Meta/NextNonce")


def test_reply_status_per_command(management_reply):
    _, root = management_reply
    expected = {
        "4": ("Get", "200", "./DevDetail/FwV"),
        "5": ("Get", "200", FUMO),
        "6": ("Get", "200", "./DevInfo"),
        "7": ("Get", "404", "./Vendor/Nothing"),
        "8": ("Replace", "405", "./DevInfo/Mod"),
        "9": ("Replace", "200", f"{FUMO}/DownloadAndUpdate/PkgURL"),
        "10": ("Exec", "202", f"{FUMO}/DownloadAndUpdate"),
        "11": ("Exec", "405", "./DevDetail/FwV"),
    }
    for cmd_ref, (cmd, code, target) in expected.items():
        element = find_status(root, cmd_ref)
        assert text(element, "MsgRef") == "1", cmd_ref
        assert text(element, "Cmd") == cmd, cmd_ref
        assert text(element, "Data") == code, cmd_ref
        assert text(element, "TargetRef") == target, cmd_ref
    # The phone sends no Status for a Status.
    assert {text(s, "CmdRef") for s in statuses(root)} == {"0", *expected}


def test_results_for_leaf_get(management_reply):
    _, root = management_reply
    results = [e for e in body_commands(root) if etree.QName(e).localname == "Results"]
    by_ref = {text(r, "CmdRef"): r for r in results}
    assert set(by_ref) == {"4", "5", "6"}
    fwv = by_ref["4"]
    assert text(fwv, "MsgRef") == "1"
    assert text(fwv, "Item/Source/LocURI") == "./DevDetail/FwV"
    assert text(fwv, "Item/Meta/Format") == "chr"
    assert text(fwv, "Item/Data") == "1.0"


def test_get_interior_node_lists_children(management_reply):
    _, root = management_reply
    results = {
        text(r, "CmdRef"): r
        for r in body_commands(root)
        if etree.QName(r).localname == "Results"
    }
    fumo_node = results["5"]
    assert text(fumo_node, "Item/Meta/Format") == "node"
    # The children of a FUMO 1.0 node.
    assert sorted(text(fumo_node, "Item/Data").split("/")) == sorted(
        [
            "PkgName",
            "PkgVersion",
            "Download",
            "Update",
            "DownloadAndUpdate",
            "State",
            "Ext",
        ]
    )
    devinfo = results["6"]
    assert text(devinfo, "Item/Meta/Format") == "node"
    # The children of the DevInfo management object.
    assert sorted(text(devinfo, "Item/Data").split("/")) == sorted(
        ["DevId", "Man", "Mod", "DmV", "Lang"]
    )


def test_exec_download_and_update_queues_job(management_reply):
    session, _ = management_reply
    job = Phone.load(session.phone.state_dir).pending_job
    assert job is not None
    assert job.operation == "DownloadAndUpdate"
    assert job.fumo_node == FUMO
    assert job.correlator == "abc"
    assert job.pkg_url == "http://127.0.0.1:8080/dl/dd/abc"


def test_chal_next_nonce_becomes_client_nonce(management_reply):
    session, _ = management_reply
    assert Phone.load(session.phone.state_dir).client_nonce == b"client-nonce-2"


def test_server_nonce_rotated_after_acceptance(management_reply):
    session, root = management_reply
    issued = text(find_status(root, "0"), "Chal/Meta/NextNonce")
    stored = Phone.load(session.phone.state_dir).server_nonce
    assert base64.b64decode(issued) == stored
    assert stored != b"null"


def test_session_ends_on_final_with_statuses_only(management_reply):
    session, _ = management_reply
    end = server_message(
        2, header_status(1, 2, 200) + status(2, 2, 2, "Status", 200), cred=None
    )
    assert session.receive(end, XML_TYPE) is None
    assert session.finished
    assert session.result.accepted_exec == f"{FUMO}/DownloadAndUpdate"


def test_reply_goes_to_resp_uri(phone):
    session, _ = start(phone)
    resp_uri = "http://127.0.0.1:8080/dm?s=token-1"
    outgoing = session.receive(
        server_message(
            1,
            header_status(1, 1, 212)
            + "<Get><CmdID>2</CmdID><Item><Target><LocURI>./DevInfo/Lang"
            "</LocURI></Target></Item></Get>",
            resp_uri=resp_uri,
        ),
        XML_TYPE,
    )
    assert outgoing.url == resp_uri
    # The Target LocURI stays the server URL.
    assert text(parse(outgoing.body), "SyncHdr/Target/LocURI") == SERVER_URL


def test_replace_add_delete_codes(phone):
    session, _ = start(phone)
    body = (
        header_status(1, 1, 212)
        + f"<Replace><CmdID>2</CmdID><Item><Target><LocURI>{FUMO}/PkgName</LocURI>"
        "</Target><Data>fw-1.1</Data></Item></Replace>"
        + f"<Add><CmdID>3</CmdID><Item><Target><LocURI>{FUMO}/Ext/Severity</LocURI>"
        "</Target><Meta><Format xmlns='syncml:metinf'>int</Format></Meta>"
        "<Data>2</Data></Item></Add>"
        + f"<Add><CmdID>4</CmdID><Item><Target><LocURI>{FUMO}/Ext/Severity</LocURI>"
        "</Target><Data>3</Data></Item></Add>"
        + "<Add><CmdID>5</CmdID><Item><Target><LocURI>./DevInfo/Extra</LocURI>"
        "</Target><Data>1</Data></Item></Add>"
        + f"<Delete><CmdID>6</CmdID><Item><Target><LocURI>{FUMO}/Ext/Severity</LocURI>"
        "</Target></Item></Delete>"
        + "<Delete><CmdID>7</CmdID><Item><Target><LocURI>./DevInfo/DevId</LocURI>"
        "</Target></Item></Delete>"
        + "<Delete><CmdID>8</CmdID><Item><Target><LocURI>./Missing</LocURI>"
        "</Target></Item></Delete>"
    )

    root = parse(session.receive(server_message(1, body), XML_TYPE).body)

    codes = {text(s, "CmdRef"): text(s, "Data") for s in statuses(root)}
    assert codes["2"] == "200"
    assert codes["3"] == "200"
    assert codes["4"] == "418"  # already exists
    assert codes["5"] == "405"  # DevInfo does not allow Add
    assert codes["6"] == "200"
    assert codes["7"] == "405"  # permanent node
    assert codes["8"] == "404"
    assert phone.tree.value(f"{FUMO}/PkgName") == "fw-1.1"
    assert phone.tree.get(f"{FUMO}/Ext/Severity") is None


def test_user_interaction_alerts_answered(phone):
    session, _ = start(phone)
    body = (
        header_status(1, 1, 212) + "<Alert><CmdID>2</CmdID><Data>1100</Data>"
        "<Item><Data>Update ready</Data></Item></Alert>"
        + "<Alert><CmdID>3</CmdID><Data>1103</Data>"
        "<Item><Data>Install now?</Data></Item>"
        "<Item><Data>Yes</Data></Item><Item><Data>No</Data></Item></Alert>"
        + "<Alert><CmdID>4</CmdID><Data>1299</Data></Alert>"
    )
    root = parse(session.receive(server_message(1, body), XML_TYPE).body)
    assert text(find_status(root, "2"), "Data") == "200"
    choice = find_status(root, "3")
    assert text(choice, "Data") == "200"
    assert text(choice, "Item/Data") == "1"
    assert text(find_status(root, "4"), "Data") == "406"


def test_atomic_rolls_back_on_failure(phone):
    session, _ = start(phone)
    body = (
        header_status(1, 1, 212)
        + "<Atomic><CmdID>2</CmdID>"
        + f"<Replace><CmdID>3</CmdID><Item><Target><LocURI>{FUMO}/PkgName</LocURI>"
        "</Target><Data>changed</Data></Item></Replace>"
        + "<Replace><CmdID>4</CmdID><Item><Target><LocURI>./Missing</LocURI>"
        "</Target><Data>x</Data></Item></Replace>" + "</Atomic>"
    )
    root = parse(session.receive(server_message(1, body), XML_TYPE).body)
    assert text(find_status(root, "2"), "Data") == "507"
    assert text(find_status(root, "3"), "Data") == "216"
    assert text(find_status(root, "4"), "Data") == "404"
    assert phone.tree.value(f"{FUMO}/PkgName") == ""


def test_no_resp_command_gets_no_status(phone):
    session, _ = start(phone)
    body = (
        header_status(1, 1, 212)
        + f"<Replace><CmdID>2</CmdID><NoResp/><Item><Target><LocURI>{FUMO}/PkgName"
        "</LocURI></Target><Data>quiet</Data></Item></Replace>"
        + "<Get><CmdID>3</CmdID><Item><Target><LocURI>./DevInfo/Lang</LocURI></Target>"
        "</Item></Get>"
    )
    root = parse(session.receive(server_message(1, body), XML_TYPE).body)
    assert {text(s, "CmdRef") for s in statuses(root)} == {"0", "3"}
    assert phone.tree.value(f"{FUMO}/PkgName") == "quiet"


# ---------------------------------------------------------------------------
# Authentication


def test_client_challenge_resends_package1_with_new_nonce(phone):
    session, _ = start(phone)
    challenge = server_message(
        1,
        header_status(1, 1, 401, next_nonce=b"fresh-nonce")
        + status(2, 1, 1, "Alert", 401)
        + status(3, 1, 2, "Replace", 401),
    )
    outgoing = session.receive(challenge, XML_TYPE)
    root = parse(outgoing.body)
    assert text(root, "SyncHdr/MsgID") == "2"
    assert text(root, "SyncHdr/Cred/Data") == expected_md5(
        DEVICE_ID, CLIENT_PASSWORD, b"fresh-nonce"
    )
    names = [etree.QName(c).localname for c in body_commands(root)]
    assert names == ["Status", "Alert", "Replace"]
    assert text(body_commands(root)[1], "Data") == "1201"


def test_client_challenge_twice_fails(phone):
    session, _ = start(phone)
    session.receive(
        server_message(1, header_status(1, 1, 401, next_nonce=b"n1")), XML_TYPE
    )
    with pytest.raises(AuthenticationError):
        session.receive(
            server_message(2, header_status(1, 2, 401, next_nonce=b"n2"), cred=None),
            XML_TYPE,
        )


def test_server_with_wrong_credentials_is_challenged(phone):
    session, _ = start(phone)
    wrong = expected_md5(SERVER_ID, "wrong-password", b"null")
    body = header_status(1, 1, 212) + (
        "<Get><CmdID>2</CmdID><Item><Target><LocURI>./DevDetail/FwV</LocURI></Target>"
        "</Item></Get>"
    )
    outgoing = session.receive(server_message(1, body, cred=wrong), XML_TYPE)
    root = parse(outgoing.body)
    commands = body_commands(root)
    # Only the SyncHdr Status: the Get is not executed.
    assert len(commands) == 1
    assert text(commands[0], "Data") == "401"
    nonce = base64.b64decode(text(commands[0], "Chal/Meta/NextNonce"))
    assert Phone.load(phone.state_dir).server_nonce == nonce

    # The server replies to the challenge with a credential on the new nonce.
    good = expected_md5(SERVER_ID, SERVER_PASSWORD, nonce)
    root = parse(session.receive(server_message(2, body, cred=good), XML_TYPE).body)
    assert text(find_status(root, "0"), "Data") == "212"
    assert text(find_status(root, "2"), "Data") == "200"


def test_server_rejected_twice_aborts(phone):
    session, _ = start(phone)
    wrong = expected_md5(SERVER_ID, "wrong-password", b"null")
    session.receive(server_message(1, header_status(1, 1, 212), cred=wrong), XML_TYPE)
    outgoing = session.receive(
        server_message(2, header_status(1, 2, 200), cred=wrong), XML_TYPE
    )
    assert outgoing.expects_reply is False
    root = parse(outgoing.body)
    commands = body_commands(root)
    assert text(commands[0], "Data") == "401"
    assert etree.QName(commands[1]).localname == "Alert"
    assert text(commands[1], "Data") == "1223"
    assert isinstance(session.error, AuthenticationError)


def test_server_without_credentials_gets_407(phone):
    session, _ = start(phone)
    body = header_status(1, 1, 212) + (
        "<Get><CmdID>2</CmdID><Item><Target><LocURI>./DevDetail/FwV</LocURI></Target>"
        "</Item></Get>"
    )
    outgoing = session.receive(server_message(1, body, cred=None), XML_TYPE)
    root = parse(outgoing.body)
    assert text(find_status(root, "0"), "Data") == "407"
    assert text(find_status(root, "0"), "Chal/Meta/NextNonce")
    assert [etree.QName(c).localname for c in body_commands(root)] == ["Status"]


def test_statuses_only_without_credentials_read(phone):
    report = FumoReport(
        f"{FUMO}/DownloadAndUpdate", DOWNLOAD_AND_UPDATE_TYPE, "job-7", 200
    )
    phone.pending_reports.append(report)
    session, _ = start(phone)
    reply = session.receive(
        server_message(
            1, header_status(1, 1, 212) + status(2, 1, 3, "Alert", 200), cred=None
        ),
        XML_TYPE,
    )
    assert reply is None
    assert session.result.delivered_reports == [report]
    # No Chal went out, so the server nonce stays.
    assert Phone.load(phone.state_dir).server_nonce == b"null"


def test_hmac_header_instead_of_cred(phone):
    phone.client_nonce = b"mac-nonce"
    _, outgoing = start(phone, auth="hmac")
    root = parse(outgoing.body)
    assert xpath(root, "SyncHdr/Cred") == []
    digest = md5_b64(outgoing.body)
    secret = md5_b64(f"{DEVICE_ID}:{CLIENT_PASSWORD}".encode())
    mac = md5_b64(secret + b":mac-nonce:" + digest).decode()
    assert outgoing.headers["x-syncml-hmac"] == (
        f'algorithm=MD5, username="{DEVICE_ID}", mac={mac}'
    )


def test_basic_cred(phone):
    _, outgoing = start(phone, auth="basic")
    root = parse(outgoing.body)
    assert text(root, "SyncHdr/Cred/Meta/Type") == "syncml:auth-basic"
    assert base64.b64decode(text(root, "SyncHdr/Cred/Data")) == (
        f"{DEVICE_ID}:{CLIENT_PASSWORD}".encode()
    )


# ---------------------------------------------------------------------------
# Protocol variants and limits


def test_dm_112_header_and_no_correlator(phone):
    phone.pending_reports.append(
        FumoReport(f"{FUMO}/DownloadAndUpdate", DOWNLOAD_AND_UPDATE_TYPE, "job-7", 200)
    )
    _, outgoing = start(phone, dm_version="1.1.2")
    root = parse(outgoing.body)
    assert etree.QName(root).namespace == "SYNCML:SYNCML1.1"
    assert text(root, "SyncHdr/VerDTD") == "1.1"
    assert text(root, "SyncHdr/VerProto") == "DM/1.1"
    alert = body_commands(root)[2]
    assert text(alert, "Data") == "1226"
    assert xpath(alert, "Correlator") == []


def test_wbxml_encoding(phone):
    _, outgoing = start(phone, encoding=Encoding.WBXML)
    assert outgoing.headers["Content-Type"] == "application/vnd.syncml.dm+wbxml"
    # A WBXML document starts with its version byte (0x01 to 0x03); XML
    # would start with "<".
    assert outgoing.body[0] in (0x01, 0x02, 0x03)
    decoded = decode_message(outgoing.body, "application/vnd.syncml.dm+wbxml")
    assert decoded.message.header.source == DEVICE_ID


def test_server_message_without_final_gets_alert_1222(phone):
    session, _ = start(phone)
    body = header_status(1, 1, 212) + (
        "<Get><CmdID>2</CmdID><Item><Target><LocURI>./DevInfo/Lang</LocURI></Target>"
        "</Item></Get>"
    )
    root = parse(session.receive(server_message(1, body, final=False), XML_TYPE).body)
    last = body_commands(root)[-1]
    assert etree.QName(last).localname == "Alert"
    assert text(last, "Data") == "1222"


def test_statuses_only_without_final_requests_next(phone):
    session, _ = start(phone)
    outgoing = authenticate(session)
    assert outgoing is not None
    root = parse(outgoing.body)
    names = [etree.QName(c).localname for c in body_commands(root)]
    assert names == ["Status", "Alert"]
    assert text(body_commands(root)[1], "Data") == "1222"


def test_large_object_chunks(phone):
    session, _ = start(phone)
    url = "http://127.0.0.1:8080/dl/dd/a-rather-long-descriptor-token"
    first, second = url[:20], url[20:]
    chunk1 = header_status(1, 1, 212) + (
        "<Replace><CmdID>2</CmdID><Item><Target>"
        f"<LocURI>{FUMO}/DownloadAndUpdate/PkgURL</LocURI></Target>"
        f"<Meta><Size xmlns='syncml:metinf'>{len(url)}</Size></Meta>"
        f"<Data>{first}</Data><MoreData/></Item></Replace>"
    )
    root = parse(session.receive(server_message(1, chunk1, final=False), XML_TYPE).body)
    assert text(find_status(root, "2"), "Data") == "213"
    chunk2 = header_status(1, 2, 200) + (
        "<Replace><CmdID>2</CmdID><Item><Target>"
        f"<LocURI>{FUMO}/DownloadAndUpdate/PkgURL</LocURI></Target>"
        f"<Data>{second}</Data></Item></Replace>"
    )
    root = parse(session.receive(server_message(2, chunk2, cred=None), XML_TYPE).body)
    assert text(find_status(root, "2"), "Data") == "200"
    assert phone.tree.value(f"{FUMO}/DownloadAndUpdate/PkgURL") == url


def test_large_object_size_mismatch(phone):
    session, _ = start(phone)
    chunk1 = header_status(1, 1, 212) + (
        "<Replace><CmdID>2</CmdID><Item>"
        f"<Target><LocURI>{FUMO}/PkgName</LocURI></Target>"
        "<Meta><Size xmlns='syncml:metinf'>100</Size></Meta>"
        "<Data>abc</Data><MoreData/></Item></Replace>"
    )
    session.receive(server_message(1, chunk1, final=False), XML_TYPE)
    chunk2 = header_status(1, 2, 200) + (
        "<Replace><CmdID>2</CmdID><Item>"
        f"<Target><LocURI>{FUMO}/PkgName</LocURI></Target>"
        "<Data>def</Data></Item></Replace>"
    )
    root = parse(session.receive(server_message(2, chunk2, cred=None), XML_TYPE).body)
    assert text(find_status(root, "2"), "Data") == "424"
    assert phone.tree.value(f"{FUMO}/PkgName") == ""


def test_item_above_max_obj_size_rejected(phone):
    session, _ = start(phone, max_obj_size=10)
    body = header_status(1, 1, 212) + (
        "<Replace><CmdID>2</CmdID><Item>"
        f"<Target><LocURI>{FUMO}/PkgName</LocURI></Target>"
        "<Data>eleven char</Data></Item></Replace>"
    )
    root = parse(session.receive(server_message(1, body), XML_TYPE).body)
    assert text(find_status(root, "2"), "Data") == "413"


def test_server_message_above_max_msg_size_rejected(phone):
    session, _ = start(phone, max_msg_size=300)
    with pytest.raises(SessionError, match="MaxMsgSize"):
        session.receive(server_message(1, header_status(1, 1, 212)), XML_TYPE)


def test_reply_split_to_server_max_msg_size(phone):
    session, _ = start(phone)
    gets = "".join(
        f"<Get><CmdID>{n}</CmdID><Item><Target><LocURI>./DevInfo/Lang</LocURI></Target>"
        "</Item></Get>"
        for n in range(2, 22)
    )
    limit = 2500
    outgoing = session.receive(
        server_message(1, header_status(1, 1, 212) + gets, max_msg_size=limit), XML_TYPE
    )
    root = parse(outgoing.body)
    assert len(outgoing.body) <= limit
    assert not is_final(root)
    answered = {text(s, "CmdRef") for s in statuses(root)}

    # The server requests the rest with Alert 1222.
    more = header_status(1, 2, 200) + "<Alert><CmdID>2</CmdID><Data>1222</Data></Alert>"
    while not is_final(root):
        outgoing = session.receive(
            server_message(
                int(text(root, "SyncHdr/MsgID")),
                more,
                cred=None,
                final=False,
                max_msg_size=limit,
            ),
            XML_TYPE,
        )
        root = parse(outgoing.body)
        assert len(outgoing.body) <= limit
        answered |= {
            text(s, "CmdRef") for s in statuses(root) if text(s, "MsgRef") == "1"
        }
    assert {str(n) for n in range(2, 22)} <= answered


def test_session_id_mismatch_rejected(phone):
    session, _ = start(phone)
    with pytest.raises(SessionError, match="SessionID"):
        session.receive(
            server_message(1, header_status(1, 1, 212), session_id="99"), XML_TYPE
        )


def test_missing_synchdr_status_rejected(phone):
    session, _ = start(phone)
    with pytest.raises(SessionError, match="no Status for the SyncHdr"):
        session.receive(server_message(1, status(1, 1, 1, "Alert", 200)), XML_TYPE)


def test_server_abort_alert_ends_session(phone):
    session, _ = start(phone)
    reply = session.receive(
        server_message(
            1,
            header_status(1, 1, 212)
            + "<Alert><CmdID>2</CmdID><Data>1223</Data></Alert>",
        ),
        XML_TYPE,
    )
    assert reply is None
    assert session.result.aborted_by_server
