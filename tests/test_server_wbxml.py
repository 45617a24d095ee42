"""The real server answering real WBXML messages, checked with libwbxml.

The request is testreplace.wbxml, a package 1 captured from the Android
Open Source Project's OMA-DM client (fixtures/messages/PROVENANCE.md):
device 000000011234564, auth-basic SampleServer:SampleServer, MaxMsgSize
3500. Replies are decoded by Debian's wbxml2xml, an implementation
independent of ours.
"""

import subprocess
import sys

import pytest
from lxml import etree

from .conftest import MODEL, NEW_VERSION, ROOT
from .test_server_http import post
from .test_wbxml_libwbxml import FIXTURES, MESSAGES, libwbxml_decode, local, require_tool, shape

WBXML = "application/vnd.syncml.dm+wbxml"
AOSP_DEVICE = "000000011234564"


def provision_aosp_device(server, job: bool) -> None:
    server.cli(
        "device", "add", AOSP_DEVICE,
        "--client-username", "SampleServer",
        "--client-password", "SampleServer",
        "--server-password", "unused",
        "--auth", "basic",
        "--model", MODEL,
    )
    if job:
        server.cli("job", "fota", AOSP_DEVICE, "--version", NEW_VERSION)


def child_text(element, *path):
    for name in path:
        element = next(child for child in element if isinstance(child.tag, str) and local(child) == name)
    return (element.text or "").strip()


@pytest.mark.parametrize("job", [False, True])
def test_real_package1_answered_in_wbxml(server, tmp_path, job):
    provision_aosp_device(server, job)
    request = (FIXTURES / "testreplace.wbxml").read_bytes()
    response = post(server.dm_url, request, WBXML)
    assert response.status == 200
    assert response.getheader("Content-Type") == WBXML
    assert len(response.body) <= 3500
    reply = libwbxml_decode(response.body, tmp_path)
    header = next(c for c in reply if local(c) == "SyncHdr")
    body = next(c for c in reply if local(c) == "SyncBody")
    assert child_text(header, "SessionID") == "24673"
    assert child_text(header, "Target", "LocURI") == AOSP_DEVICE
    commands = [c for c in body if isinstance(c.tag, str)]
    first = commands[0]
    assert local(first) == "Status"
    assert child_text(first, "CmdRef") == "0"
    assert child_text(first, "Data") == "212"
    statuses = [c for c in commands if local(c) == "Status"]
    # SyncHdr, Alert 1201 and the Replace of ./DevInfo.
    assert [child_text(s, "Cmd") for s in statuses] == ["SyncHdr", "Alert", "Replace"]
    gets = [child_text(c, "Item", "Target", "LocURI") for c in commands if local(c) == "Get"]
    assert gets == (["./DevDetail/FwV", "./FUMO"] if job else [])


def test_content_type_body_mismatch_decided_by_first_byte(server, tmp_path):
    provision_aosp_device(server, job=False)
    request = (FIXTURES / "testreplace.wbxml").read_bytes()
    response = post(server.dm_url, request, "application/vnd.syncml.dm+xml")
    assert response.status == 200
    reply = libwbxml_decode(response.body, tmp_path)
    assert local(reply) == "SyncML"
    assert "disagrees with the body" in server.log()


@pytest.mark.parametrize("name", MESSAGES)
def test_decode_command_agrees_with_wbxml2xml(name, tmp_path):
    data = (FIXTURES / f"{name}.wbxml").read_bytes()
    printed = subprocess.run(
        [sys.executable, "-m", "dmserver.cli", "decode", str(FIXTURES / f"{name}.wbxml")],
        capture_output=True,
        check=True,
        cwd=ROOT,
    ).stdout
    ours = etree.fromstring(printed, etree.XMLParser(remove_comments=True, resolve_entities=False, no_network=True))
    reference = libwbxml_decode(data, tmp_path)
    assert shape(ours) == shape(reference)


def test_unknown_public_identifier_is_415(server):
    require_tool("wbxml2xml")
    # WBXML 1.3, public id 0x05 (SI 1.0), UTF-8, empty string table, <si/>.
    response = post(server.dm_url, b"\x03\x05\x6a\x00\x05", WBXML)
    assert response.status == 200
    from dmserver.syncml.codec import decode_message

    assert decode_message(response.body, response.getheader("Content-Type")).message.commands[0].data == "415"
