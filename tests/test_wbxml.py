"""Tests for the WBXML codec in dmserver.syncml.wbxml.

Expected values come from three places. The values of the real messages
under fixtures/messages/aosp-dm12 were read from their hex dumps and from
Debian's wbxml2xml. Token values come from the tables of the SyncML
Representation Protocol 1.1 and 1.2 and of MetInf 1.1 and 1.2. Header and
global token layouts come from the WBXML 1.3 specification (WAP-192).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from dmserver.syncml.names import (
    METINF_NS,
    OPAQUE_ATTR,
    PUBLIC_ID_SYNCML_11,
    PUBLIC_ID_SYNCML_12,
    PUBLIC_ID_TEXT_SYNCML_11,
    PUBLIC_ID_TEXT_SYNCML_12,
    SYNCML_NS_11,
    SYNCML_NS_12,
)
from dmserver.syncml.wbxml import (
    UnknownPublicIdentifier,
    WbxmlDocument,
    WbxmlError,
    WbxmlLimits,
    decode,
    encode,
    looks_like_wbxml,
    to_pretty_xml,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "messages" / "aosp-dm12"
MESSAGES = ["testreplace", "testadd", "testget", "testdelete"]

# SyncML 1.1 code page 0 and MetInf 1.1 code page 1 tokens, from the SyncML
# Representation Protocol 1.1 and the SyncML Meta-Information 1.1 tables.
SYNCML_11_TOKENS = {
    "Add": 0x05, "Alert": 0x06, "Archive": 0x07, "Atomic": 0x08, "Chal": 0x09,
    "Cmd": 0x0A, "CmdID": 0x0B, "CmdRef": 0x0C, "Copy": 0x0D, "Cred": 0x0E,
    "Data": 0x0F, "Delete": 0x10, "Exec": 0x11, "Final": 0x12, "Get": 0x13,
    "Item": 0x14, "Lang": 0x15, "LocName": 0x16, "LocURI": 0x17, "Map": 0x18,
    "MapItem": 0x19, "Meta": 0x1A, "MsgID": 0x1B, "MsgRef": 0x1C,
    "NoResp": 0x1D, "NoResults": 0x1E, "Put": 0x1F, "Replace": 0x20,
    "RespURI": 0x21, "Results": 0x22, "Search": 0x23, "Sequence": 0x24,
    "SessionID": 0x25, "SftDel": 0x26, "Source": 0x27, "SourceRef": 0x28,
    "Status": 0x29, "Sync": 0x2A, "SyncBody": 0x2B, "SyncHdr": 0x2C,
    "SyncML": 0x2D, "Target": 0x2E, "TargetRef": 0x2F, "VerDTD": 0x31,
    "VerProto": 0x32, "NumberOfChanges": 0x33, "MoreData": 0x34,
}  # fmt: skip
METINF_11_TOKENS = {
    "Anchor": 0x05, "EMI": 0x06, "Format": 0x07, "FreeID": 0x08,
    "FreeMem": 0x09, "Last": 0x0A, "Mark": 0x0B, "MaxMsgSize": 0x0C,
    "Mem": 0x0D, "MetInf": 0x0E, "Next": 0x0F, "NextNonce": 0x10,
    "SharedMem": 0x11, "Size": 0x12, "Type": 0x13, "Version": 0x14,
    "MaxObjSize": 0x15,
}  # fmt: skip
# Tokens that SyncML 1.2 and MetInf 1.2 add.
SYNCML_12_ADDED = {
    "Field": 0x35, "Filter": 0x36, "Record": 0x37, "FilterType": 0x38,
    "SourceParent": 0x39, "TargetParent": 0x3A, "Move": 0x3B,
    "Correlator": 0x3C,
}  # fmt: skip
METINF_12_ADDED = {"FieldLevel": 0x16}

SYNCML_12_TOKENS = {**SYNCML_11_TOKENS, **SYNCML_12_ADDED}
METINF_12_TOKENS = {**METINF_11_TOKENS, **METINF_12_ADDED}

# Header of a UTF-8 WBXML 1.2 document with public identifier 0x1201
# (mb_u_int32 A4 01) and an empty string table.
HEADER_12 = b"\x02\xa4\x01\x6a\x00"

_INVALID_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def mb(value: int) -> bytes:
    """Write ``value`` as a WBXML mb_u_int32 (7 bits per byte, big-endian)."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def document(
    body: bytes,
    *,
    version: int = 0x02,
    public_id: bytes = b"\xa4\x01",
    charset: bytes = b"\x6a",
    table: bytes = b"",
) -> bytes:
    return bytes([version]) + public_id + charset + mb(len(table)) + table + body


def inline(text: bytes) -> bytes:
    return b"\x03" + text + b"\x00"


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.wbxml").read_bytes()


def local(element: etree._Element) -> str:
    return etree.QName(element).localname


def namespace(element: etree._Element) -> str | None:
    return etree.QName(element).namespace


def children(element: etree._Element, name: str) -> list[etree._Element]:
    return [child for child in element if local(child) == name]


def child(element: etree._Element, path: str) -> etree._Element:
    """Follow a slash-separated path of local names, one match per step."""
    for name in path.split("/"):
        matches = children(element, name)
        assert len(matches) == 1, f"expected one {name} under {local(element)}"
        element = matches[0]
    return element


def text(element: etree._Element, path: str) -> str:
    return child(element, path).text or ""


def shape(element: etree._Element) -> tuple:
    """Local names, content and structure of a tree, without namespaces."""
    if element.get(OPAQUE_ATTR) is not None:
        content: object = ("opaque", base64.b64decode(element.text or ""))
    else:
        content = element.text or ""
    return (local(element), content, [shape(item) for item in element])


# -- real messages ---------------------------------------------------------


def test_testreplace_header_fields():
    doc = decode(load("testreplace"))

    assert doc.version == 0x02
    assert doc.public_id == PUBLIC_ID_TEXT_SYNCML_12
    assert doc.charset == 106
    assert local(doc.root) == "SyncML"
    assert namespace(doc.root) == SYNCML_NS_12


def test_testreplace_synchdr():
    header = child(decode(load("testreplace")).root, "SyncHdr")

    assert text(header, "VerDTD") == "1.2"
    assert text(header, "VerProto") == "DM/1.2"
    assert text(header, "SessionID") == "24673"
    assert text(header, "MsgID") == "1"
    assert text(header, "Target/LocURI") == "http://10.72.41.182:80/Manage"
    assert text(header, "Target/LocName") == "Scts"
    assert text(header, "Source/LocURI") == "000000011234564"
    assert text(header, "Source/LocName") == "SampleServer"
    assert text(header, "Meta/MaxMsgSize") == "3500"
    assert namespace(child(header, "Meta/MaxMsgSize")) == METINF_NS
    assert namespace(child(header, "Meta")) == SYNCML_NS_12


def test_testreplace_basic_cred():
    cred = child(decode(load("testreplace")).root, "SyncHdr/Cred")

    assert text(cred, "Meta/Format") == "b64"
    assert text(cred, "Meta/Type") == "syncml:auth-basic"
    assert namespace(child(cred, "Meta/Type")) == METINF_NS
    assert text(cred, "Data") == "U2FtcGxlU2VydmVyOlNhbXBsZVNlcnZlcg=="
    assert base64.b64decode(text(cred, "Data")) == b"SampleServer:SampleServer"


def test_testreplace_body_commands():
    body = child(decode(load("testreplace")).root, "SyncBody")

    assert [local(command) for command in body] == ["Alert", "Replace", "Final"]
    assert text(body, "Alert/CmdID") == "1"
    assert text(body, "Alert/Data") == "1201"
    assert text(body, "Replace/CmdID") == "2"


def test_testreplace_devinfo_items():
    replace = child(decode(load("testreplace")).root, "SyncBody/Replace")
    items = [
        (text(item, "Source/LocURI"), text(item, "Data"))
        for item in children(replace, "Item")
    ]

    assert items == [
        ("./DevInfo/DevId", "000000011234564"),
        ("./DevInfo/DmV", "1.2"),
        ("./DevInfo/Lang", "en"),
        ("./DevInfo/Man", "Motorola, Copyright 2005"),
        ("./DevInfo/Mod", "A780"),
        ("./DevInfo/Bearer/GSM", ""),
        ("./DevInfo/Sort", "Latin"),
        ("./DevInfo/Loc", "US"),
        ("./DevInfo/LangAuto", "false"),
    ]


@pytest.mark.parametrize(
    ("name", "session_id", "resp_uri"),
    [
        ("testadd", "30483", "http://10.72.34.217/Scts?4ELIAA=="),
        ("testget", "22100", "http://10.72.34.217/Scts?0JTIAA=="),
        ("testdelete", "12463", "http://10.72.34.217/Scts?ALvHAA=="),
    ],
)
def test_server_message_header(name, session_id, resp_uri):
    doc = decode(load(name))
    header = child(doc.root, "SyncHdr")

    # The literal names SyncML 1.1, but VerDTD is 1.2 and decides the namespace.
    assert doc.public_id == PUBLIC_ID_TEXT_SYNCML_11
    assert namespace(doc.root) == SYNCML_NS_12
    assert text(header, "VerDTD") == "1.2"
    assert text(header, "VerProto") == "DM/1.2"
    assert text(header, "SessionID") == session_id
    assert text(header, "MsgID") == "1"
    assert text(header, "Target/LocURI") == "000000011234564"
    assert text(header, "Source/LocURI") == "http://10.72.34.217:80/Manage"
    assert text(header, "RespURI") == resp_uri
    assert text(header, "Cred/Meta/Format") == "b64"
    assert text(header, "Cred/Meta/Type") == "syncml:auth-basic"
    assert base64.b64decode(text(header, "Cred/Data")) == b"Scts:SampleClient"
    assert text(header, "Meta/MaxMsgSize") == "3500"


@pytest.mark.parametrize("name", ["testadd", "testget", "testdelete"])
def test_server_message_statuses(name):
    body = child(decode(load(name)).root, "SyncBody")
    fields = ("CmdID", "MsgRef", "CmdRef", "Cmd", "Data")
    statuses = [
        tuple(text(status, field) for field in fields)
        for status in children(body, "Status")
    ]

    assert statuses == [
        ("1", "1", "0", "SyncHdr", "212"),
        ("2", "1", "1", "Alert", "200"),
        ("3", "1", "2", "Replace", "200"),
    ]
    first = children(body, "Status")[0]
    assert text(first, "TargetRef") == "http://10.72.34.217:80/Manage"
    assert text(first, "SourceRef") == "000000011234564"


def test_testadd_adds_interior_node():
    body = child(decode(load("testadd")).root, "SyncBody")

    assert [local(command) for command in body][-2:] == ["Add", "Final"]
    assert text(body, "Add/CmdID") == "4"
    assert text(body, "Add/Item/Target/LocURI") == "./TestLeafNode"
    assert text(body, "Add/Item/Meta/Format") == "node"
    assert namespace(child(body, "Add/Item/Meta/Format")) == METINF_NS
    assert text(body, "Add/Item/Data") == ""


def test_testget_gets_devdetail_leaf():
    body = child(decode(load("testget")).root, "SyncBody")

    assert [local(command) for command in body][-2:] == ["Get", "Final"]
    assert text(body, "Get/CmdID") == "4"
    assert text(body, "Get/Item/Target/LocURI") == "./DevDetail/URI/MaxDepth"


def test_testdelete_deletes_two_nodes():
    body = child(decode(load("testdelete")).root, "SyncBody")
    deletes = children(body, "Delete")

    assert [local(command) for command in body][-3:] == ["Delete", "Delete", "Final"]
    assert [text(delete, "CmdID") for delete in deletes] == ["4", "5"]
    assert [text(delete, "Item/Target/LocURI") for delete in deletes] == [
        "./TestLeafNode",
        "./TestLeaf",
    ]


@pytest.mark.parametrize("name", MESSAGES)
def test_real_message_reencodes_to_same_tree(name):
    original = decode(load(name))
    again = decode(encode(original.root, public_id=original.public_id))

    assert shape(again.root) == shape(original.root)
    assert again.public_id == original.public_id


@pytest.mark.parametrize("name", MESSAGES)
def test_real_message_strict_prefix_is_truncated(name):
    data = load(name)
    for length in range(len(data)):
        with pytest.raises(WbxmlError):
            decode(data[:length])


# -- header ----------------------------------------------------------------


def test_public_id_token_syncml_12():
    doc = decode(document(b"\x2d"))

    assert doc.public_id == PUBLIC_ID_SYNCML_12
    assert namespace(doc.root) == SYNCML_NS_12


def test_public_id_token_syncml_11_without_verdtd():
    doc = decode(document(b"\x2d", public_id=b"\x9f\x53"))

    assert doc.public_id == PUBLIC_ID_SYNCML_11
    assert namespace(doc.root) == SYNCML_NS_11


def test_public_id_token_metinf_12():
    doc = decode(document(b"\x00\x01\x0c", public_id=b"\xa4\x02"))

    assert doc.public_id == 0x1202
    assert local(doc.root) == "MaxMsgSize"
    assert namespace(doc.root) == METINF_NS


def test_verdtd_11_overrides_public_id_12():
    body = b"\x6d\x6c\x71" + inline(b"1.1") + b"\x01\x01\x01"
    doc = decode(document(body))

    assert namespace(doc.root) == SYNCML_NS_11
    assert namespace(child(doc.root, "SyncHdr/VerDTD")) == SYNCML_NS_11


def test_public_id_literal_with_nul():
    table = PUBLIC_ID_TEXT_SYNCML_12.encode() + b"\x00"
    doc = decode(document(b"\x2d", public_id=b"\x00\x00", table=table))

    assert doc.public_id == PUBLIC_ID_TEXT_SYNCML_12


def test_public_id_literal_at_nonzero_index():
    table = b"abc\x00" + PUBLIC_ID_TEXT_SYNCML_11.encode() + b"\x00"
    doc = decode(document(b"\x2d", public_id=b"\x00\x04", table=table))

    assert doc.public_id == PUBLIC_ID_TEXT_SYNCML_11
    assert namespace(doc.root) == SYNCML_NS_11


@pytest.mark.parametrize("token", [b"\x01", b"\x05", b"\x9f\x51", b"\xa4\x03"])
def test_unknown_public_id_token(token):
    with pytest.raises(UnknownPublicIdentifier) as caught:
        decode(document(b"\x2d", public_id=token))

    assert caught.value.status == 415
    assert "public identifier" in str(caught.value)


def test_unknown_public_id_literal():
    table = b"-//WAPFORUM//DTD SI 1.0//EN\x00"

    with pytest.raises(UnknownPublicIdentifier) as caught:
        decode(document(b"\x2d", public_id=b"\x00\x00", table=table))

    assert "SI 1.0" in str(caught.value)


def test_unknown_public_id_is_wbxml_error():
    assert issubclass(UnknownPublicIdentifier, WbxmlError)
    assert issubclass(WbxmlError, ValueError)
    assert WbxmlError.status == 400


@pytest.mark.parametrize("version", [0x01, 0x02, 0x03])
def test_wbxml_versions_accepted(version):
    assert decode(document(b"\x2d", version=version)).version == version


def test_wbxml_10_header_has_no_charset():
    doc = decode(b"\x00\xa4\x01\x00\x6d" + inline(b"x") + b"\x01")

    assert doc.version == 0x00
    assert doc.charset == 106
    assert doc.root.text == "x"


def test_wbxml_version_04_rejected():
    with pytest.raises(WbxmlError, match="version"):
        decode(document(b"\x2d", version=0x04))


def test_unknown_charset_zero_read_as_utf8():
    doc = decode(document(b"\x4f" + inline(b"\xc3\xa9") + b"\x01", charset=b"\x00"))

    assert doc.charset == 0
    assert doc.root.text == "\u00e9"


def test_unsupported_charset_rejected():
    with pytest.raises(WbxmlError, match="charset MIBenum 17"):
        decode(document(b"\x2d", charset=b"\x11"))


# -- body tokens -----------------------------------------------------------


def test_code_page_persists_across_end():
    # Meta, SWITCH_PAGE 1, Format "b64", END Format, END Meta, then tag 0x47
    # with page 1 still active: Format, not Archive (page 0 token 0x07).
    body = (
        b"\x6d\x5a\x00\x01\x47" + inline(b"b64") + b"\x01\x01"
        b"\x47" + inline(b"x") + b"\x01\x01"
    )
    root = decode(document(body)).root

    assert [local(item) for item in root] == ["Meta", "Format"]
    assert namespace(root[1]) == METINF_NS
    assert root[1].text == "x"


def test_switch_page_before_root():
    doc = decode(document(b"\x00\x01\x00\x00\x2d"))

    assert local(doc.root) == "SyncML"


def test_str_t_reads_string_table():
    table = b"abc\x00def\x00"
    body = b"\x6d\x4f\x83\x04\x01\x4f\x83\x01\x01\x01"
    root = decode(document(body, table=table)).root

    assert [item.text for item in root] == ["def", "bc"]


def test_str_t_unterminated_table_entry():
    root = decode(document(b"\x4f\x83\x00\x01", table=b"tail")).root

    assert root.text == "tail"


def test_entity_emits_character():
    # ENTITY U+2713 is mb_u_int32 CE 13.
    body = b"\x4f" + inline(b"A") + b"\x02\xce\x13" + inline(b"B") + b"\x01"

    assert decode(document(body)).root.text == "A\u2713B"


def test_string_split_across_tokens_decodes():
    # U+00E9 is C3 A9 in UTF-8, and the two bytes arrive in separate STR_I.
    body = b"\x4f" + inline(b"caf\xc3") + inline(b"\xa9") + b"\x01"

    assert decode(document(body)).root.text == "caf\u00e9"


def test_opaque_decodes_to_base64():
    body = b"\x6d\x4f\xc3\x03\x00\xff\x10\x01\x01"
    data_element = decode(document(body)).root[0]

    assert data_element.get(OPAQUE_ATTR) == "base64"
    assert data_element.text == "AP8Q"
    assert base64.b64decode(data_element.text) == b"\x00\xff\x10"


def test_empty_opaque_keeps_marker():
    data_element = decode(document(b"\x4f\xc3\x00\x01")).root

    assert data_element.get(OPAQUE_ATTR) == "base64"
    assert (data_element.text or "") == ""


def test_opaque_joined_with_string():
    body = b"\x4f\xc3\x01\x00" + inline(b"ab") + b"\x01"
    data_element = decode(document(body)).root

    assert base64.b64decode(data_element.text) == b"\x00ab"


def test_opaque_with_child_element_rejected():
    body = b"\x6d\xc3\x01\x00\x12\x01"

    with pytest.raises(WbxmlError, match="mixes OPAQUE"):
        decode(document(body))


def test_literal_tag_names_from_string_table():
    table = b"X-Vendor\x00Flag\x00"
    body = b"\x6d\x44\x00" + inline(b"v") + b"\x01\x04\x09\x01"
    root = decode(document(body, table=table)).root

    assert [local(item) for item in root] == ["X-Vendor", "Flag"]
    assert root[0].text == "v"
    assert namespace(root[0]) == SYNCML_NS_12


def test_literal_tag_name_must_be_xml_name():
    with pytest.raises(WbxmlError, match="not an XML name"):
        decode(document(b"\x04\x00", table=b"1 bad\x00"))


def test_mixed_content_keeps_tail():
    body = b"\x6d" + inline(b"a") + b"\x12" + inline(b"b") + b"\x01"
    root = decode(document(body)).root

    assert root.text == "a"
    assert root[0].tail == "b"


def test_latin1_charset():
    data = document(b"\x4f" + inline(b"caf\xe9") + b"\x01", charset=b"\x04")
    root = decode(data).root

    assert root.text == "caf\u00e9"


def test_us_ascii_rejects_high_byte():
    with pytest.raises(WbxmlError, match="not valid ascii"):
        decode(document(b"\x4f" + inline(b"caf\xe9") + b"\x01", charset=b"\x03"))


def test_invalid_utf8_rejected():
    with pytest.raises(WbxmlError, match="not valid utf-8"):
        decode(document(b"\x4f" + inline(b"\xff\xfe") + b"\x01"))


@pytest.mark.parametrize("control", [b"\x01", b"\x08", b"\x1b", b"\x7f\x0b"])
def test_control_character_rejected(control):
    with pytest.raises(WbxmlError, match="XML text cannot hold"):
        decode(document(b"\x4f" + inline(b"a" + control) + b"\x01"))


@pytest.mark.parametrize("entity", [b"\x01", b"\x00", b"\x83\xff\x7f", b"\xc4\x80\x00"])
def test_invalid_entity_rejected(entity):
    with pytest.raises(WbxmlError, match="ENTITY"):
        decode(document(b"\x4f\x02" + entity + b"\x01"))


@pytest.mark.parametrize(
    "body",
    [b"\xcf\x01\x01", b"\x8f\x01", b"\x84\x00\x01"],
    ids=["tag-with-attributes", "tag-with-attributes-no-content", "LITERAL_A"],
)
def test_attributes_rejected(body):
    with pytest.raises(WbxmlError, match="attribute"):
        decode(document(body, table=b"X\x00"))


@pytest.mark.parametrize(
    "token", [0x40, 0x41, 0x42, 0x80, 0x81, 0x82, 0xC0, 0xC1, 0xC2]
)
def test_extension_tokens_rejected(token):
    with pytest.raises(WbxmlError, match="extension token"):
        decode(document(bytes([0x6D, token, 0x00, 0x01])))


def test_processing_instruction_rejected():
    with pytest.raises(WbxmlError, match="processing instructions"):
        decode(document(b"\x43\x05\x01\x2d"))


@pytest.mark.parametrize(
    ("page", "token"), [(0, 0x30), (0, 0x3D), (1, 0x17), (1, 0x3F)]
)
def test_unknown_tag_token_rejected(page, token):
    body = bytes([0x00, page, token])

    with pytest.raises(WbxmlError, match=f"unknown tag token 0x{token:02X}"):
        decode(document(body))


def test_unknown_code_page_rejected():
    with pytest.raises(WbxmlError, match="code page 2"):
        decode(document(b"\x6d\x00\x02\x05\x01"))


def test_trailing_data_rejected():
    with pytest.raises(WbxmlError, match="after the root element"):
        decode(document(b"\x2d\x00"))


def test_second_root_element_rejected():
    with pytest.raises(WbxmlError, match="1 bytes of unexpected data after the root"):
        decode(document(b"\x6d\x01\x2d"))


def test_end_outside_element_rejected():
    with pytest.raises(WbxmlError, match="END token"):
        decode(document(b"\x01"))


def test_content_before_root_rejected():
    with pytest.raises(WbxmlError, match="outside the root"):
        decode(document(inline(b"x") + b"\x2d"))


def test_empty_body_rejected():
    with pytest.raises(WbxmlError, match="no root element"):
        decode(document(b""))


# -- limits ----------------------------------------------------------------


def nested(depth: int) -> bytes:
    """SyncML root with Item elements nested down to ``depth`` in total."""
    return b"\x6d" + b"\x54" * (depth - 1) + b"\x01" * depth


def test_depth_at_limit_accepted():
    root = decode(document(nested(32))).root

    assert len(list(root.iter())) == 32


def test_deep_nesting_rejected():
    with pytest.raises(WbxmlError, match="nesting depth exceeds the limit of 32"):
        decode(document(nested(33)))


def test_deep_empty_element_counts_toward_depth():
    body = b"\x6d" + b"\x54" * 31 + b"\x12" + b"\x01" * 32

    with pytest.raises(WbxmlError, match="nesting depth"):
        decode(document(body))


def test_huge_declared_string_table_rejected():
    data = b"\x02\xa4\x01\x6a" + mb(2_000_000_000) + b"\x2d"

    with pytest.raises(WbxmlError, match="string table length 2000000000 exceeds"):
        decode(data)


def test_string_table_longer_than_input_rejected():
    data = b"\x02\xa4\x01\x6a" + mb(100) + b"abc"

    with pytest.raises(WbxmlError, match="truncated input, the string table"):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [b"\x02\xa4", b"\x02\xa4\x01\x6a\x81", b"\x02\xa4\x01\xea"],
    ids=["public-id", "string-table-length", "charset"],
)
def test_truncated_mb_u_int32_rejected(data):
    with pytest.raises(WbxmlError, match="truncated mb_u_int32"):
        decode(data)


def test_mb_u_int32_longer_than_five_bytes_rejected():
    with pytest.raises(WbxmlError, match="longer than 5 bytes"):
        decode(b"\x02\x80\x80\x80\x80\x80\x01\x6a\x00\x2d")


def test_mb_u_int32_overflow_rejected():
    # 90 80 80 80 00 is 2**32, one more than an mb_u_int32 can hold.
    with pytest.raises(WbxmlError, match="overflows 32 bits"):
        decode(b"\x02\xa4\x01\x6a\x90\x80\x80\x80\x00")


def test_mb_u_int32_maximum_accepted_as_value():
    # 8F FF FF FF 7F is 2**32 - 1: a valid number, but too long a table.
    with pytest.raises(WbxmlError, match="string table length 4294967295 exceeds"):
        decode(b"\x02\xa4\x01\x6a\x8f\xff\xff\xff\x7f")


def test_str_t_offset_out_of_range_rejected():
    expected = "offset 16 for a STR_T reference is out of range"

    with pytest.raises(WbxmlError, match=expected):
        decode(document(b"\x4f\x83\x10\x01", table=b"abc\x00"))


def test_literal_offset_out_of_range_rejected():
    with pytest.raises(WbxmlError, match="offset 4 for a LITERAL tag name"):
        decode(document(b"\x04\x04", table=b"abc\x00"))


def test_public_id_index_out_of_range_rejected():
    with pytest.raises(WbxmlError, match="offset 9 for the public identifier"):
        decode(document(b"\x2d", public_id=b"\x00\x09", table=b"SyncML\x00"))


def test_public_id_index_with_empty_table_rejected():
    with pytest.raises(WbxmlError, match="out of range, the table has 0 bytes"):
        decode(document(b"\x2d", public_id=b"\x00\x00"))


def test_oversized_body_rejected():
    data = document(b"\x4f" + inline(b"x" * 100) + b"\x01")

    expected = f"body of {len(data)} bytes exceeds the limit of 64"

    with pytest.raises(WbxmlError, match=expected):
        decode(data, WbxmlLimits(max_body=64))


def test_element_count_limit():
    body = b"\x6d" + b"\x12" * 5 + b"\x01"

    with pytest.raises(WbxmlError, match="element count exceeds the limit of 5"):
        decode(document(body), WbxmlLimits(max_elements=5))


def test_inline_string_length_limit():
    body = b"\x4f" + inline(b"x" * 20) + b"\x01"

    with pytest.raises(WbxmlError, match="STR_I string is longer than the limit of 10"):
        decode(document(body), WbxmlLimits(max_string=10))


def test_unterminated_inline_string_rejected():
    with pytest.raises(WbxmlError, match="no terminating NUL"):
        decode(document(b"\x4f\x03abc"))


def test_element_text_length_limit():
    body = b"\x4f" + inline(b"x" * 8) * 3 + b"\x01"

    expected = "text in element Data exceeds the limit of 10"

    with pytest.raises(WbxmlError, match=expected):
        decode(document(body), WbxmlLimits(max_string=10))


def test_string_table_entry_length_limit():
    with pytest.raises(WbxmlError, match="longer than the limit of 10"):
        decode(
            document(b"\x4f\x83\x00\x01", table=b"y" * 20),
            WbxmlLimits(max_string=10),
        )


def test_opaque_length_limit():
    body = b"\x4f\xc3" + mb(100) + b"\x00" * 100 + b"\x01"

    with pytest.raises(WbxmlError, match="OPAQUE length 100 exceeds the limit of 10"):
        decode(document(body), WbxmlLimits(max_opaque=10))


def test_truncated_opaque_rejected():
    with pytest.raises(WbxmlError, match="OPAQUE data needs 100 bytes"):
        decode(document(b"\x4f\xc3" + mb(100) + b"\x00" * 10))


def test_element_opaque_total_limit():
    body = b"\x4f" + (b"\xc3\x08" + b"\x00" * 8) * 2 + b"\x01"

    with pytest.raises(WbxmlError, match="OPAQUE data in element Data exceeds"):
        decode(document(body), WbxmlLimits(max_opaque=10))


def test_str_t_expansion_limited():
    # Each 3-byte STR_T adds 1000 bytes until the total content limit stops it.
    table = b"z" * 1000 + b"\x00"
    body = b"\x6d" + b"\x4f\x83\x00\x01" * 20 + b"\x01"

    with pytest.raises(WbxmlError, match="decoded content exceeds the limit of 5000"):
        decode(document(body, table=table), WbxmlLimits(max_content=5000))


# -- encoder ---------------------------------------------------------------


def syncml(ns: str = SYNCML_NS_12) -> etree._Element:
    return etree.Element(f"{{{ns}}}SyncML", nsmap={None: ns})


def add(parent: etree._Element, name: str, value: str | None = None) -> etree._Element:
    ns = METINF_NS if name in METINF_12_TOKENS else SYNCML_NS_12
    element = etree.SubElement(parent, f"{{{ns}}}{name}", nsmap={None: ns})
    element.text = value
    return element


def with_child(name: str, ns: str = SYNCML_NS_12) -> etree._Element:
    root = syncml(ns)
    add(root, name)
    return root


def test_encode_minimal_message_bytes():
    root = syncml()
    header = add(root, "SyncHdr")
    add(header, "VerDTD", "1.2")
    add(header, "VerProto", "DM/1.2")
    add(add(root, "SyncBody"), "Final")

    assert encode(root) == (
        HEADER_12
        + b"\x6d\x6c\x71\x031.2\x00\x01\x72\x03DM/1.2\x00\x01\x01"
        + b"\x6b\x12\x01\x01"
    )


def test_encode_switches_code_pages():
    root = syncml()
    add(add(root, "Meta"), "MaxMsgSize", "3500")
    add(add(root, "SyncBody"), "Final")

    assert encode(root) == (
        HEADER_12 + b"\x6d\x5a\x00\x01\x4c\x033500\x00\x01\x01\x00\x00\x6b\x12\x01\x01"
    )


@pytest.mark.parametrize(("name", "token"), sorted(SYNCML_12_TOKENS.items()))
def test_encode_syncml_12_token(name, token):
    assert encode(with_child(name)) == HEADER_12 + bytes([0x6D, token, 0x01])


@pytest.mark.parametrize(("name", "token"), sorted(METINF_12_TOKENS.items()))
def test_encode_metinf_12_token(name, token):
    expected = bytes([0x6D, 0x00, 0x01, token, 0x01])

    assert encode(with_child(name)) == HEADER_12 + expected


@pytest.mark.parametrize(
    ("name", "token"), sorted({**SYNCML_11_TOKENS, **METINF_11_TOKENS}.items())
)
def test_encode_syncml_11_token(name, token):
    data = encode(with_child(name, SYNCML_NS_11), public_id=PUBLIC_ID_SYNCML_11)

    assert data[:5] == b"\x02\x9f\x53\x6a\x00"
    assert data[-2:] == bytes([token, 0x01])


@pytest.mark.parametrize("name", sorted({**SYNCML_12_ADDED, **METINF_12_ADDED}))
@pytest.mark.parametrize("public_id", [PUBLIC_ID_SYNCML_11, PUBLIC_ID_TEXT_SYNCML_11])
def test_encode_12_only_element_rejected_for_11(name, public_id):
    expected = f"element {name} has no token in the SyncML 1.1"

    with pytest.raises(WbxmlError, match=expected):
        encode(with_child(name), public_id=public_id)


@pytest.mark.parametrize(
    ("name", "token"), sorted({**SYNCML_12_TOKENS, **METINF_12_TOKENS}.items())
)
def test_decode_token_table(name, token):
    page = 1 if name in METINF_12_TOKENS else 0
    root = decode(document(bytes([0x00, page, token]))).root

    assert local(root) == name
    assert namespace(root) == (METINF_NS if page else SYNCML_NS_12)


def test_encode_literal_public_id():
    data = encode(syncml(), public_id=PUBLIC_ID_TEXT_SYNCML_12)

    # 0x1E is the table length: 29 characters and the NUL.
    table = PUBLIC_ID_TEXT_SYNCML_12.encode() + b"\x00"

    assert data == b"\x02\x00\x00\x6a\x1e" + table + b"\x2d"


def test_encode_wbxml_10_omits_charset():
    assert encode(syncml(), version=0x00) == b"\x00\xa4\x01\x00\x2d"


def test_encode_wbxml_10_needs_utf8():
    with pytest.raises(WbxmlError, match="WBXML 1.0"):
        encode(syncml(), version=0x00, charset=4)


def test_encode_opaque():
    root = syncml()
    data_element = add(root, "Data", "AP8Q")
    data_element.set(OPAQUE_ATTR, "base64")

    assert encode(root) == HEADER_12 + b"\x6d\x4f\xc3\x03\x00\xff\x10\x01\x01"


def test_encode_empty_opaque():
    root = syncml()
    add(root, "Data").set(OPAQUE_ATTR, "base64")

    assert encode(root) == HEADER_12 + b"\x6d\x4f\xc3\x00\x01\x01"


def test_encode_latin1_uses_entity_for_unmapped_characters():
    root = syncml()
    add(root, "Data", "\u00e9\u20acb")
    data = encode(root, charset=4)

    # U+20AC is mb_u_int32 C1 2C.
    assert data == (
        b"\x02\xa4\x01\x04\x00\x6d\x4f\x03\xe9\x00\x02\xc1\x2c\x03b\x00\x01\x01"
    )
    assert decode(data).root[0].text == "\u00e9\u20acb"


def test_encode_utf8_text():
    root = syncml()
    add(root, "Data", "\u00e9\u2713")

    assert encode(root) == HEADER_12 + b"\x6d\x4f\x03\xc3\xa9\xe2\x9c\x93\x00\x01\x01"


def test_encode_ignores_namespaces():
    root = etree.Element("SyncML")
    etree.SubElement(root, "{urn:other}MaxMsgSize").text = "1"

    assert encode(root) == HEADER_12 + b"\x6d\x00\x01\x4c\x031\x00\x01\x01"


def test_encode_keeps_tail_and_skips_comments():
    root = syncml()
    root.text = "a"
    root.append(etree.Comment("note"))
    root[-1].tail = "b"
    add(root, "Final").tail = "c"

    assert encode(root) == HEADER_12 + b"\x6d\x03a\x00\x03b\x00\x12\x03c\x00\x01"


def test_encode_unknown_element_rejected():
    root = syncml()
    etree.SubElement(root, "Foo")

    with pytest.raises(WbxmlError, match="element Foo has no token"):
        encode(root)


def test_encode_attribute_rejected():
    root = syncml()
    root.set("lang", "en")

    with pytest.raises(WbxmlError, match="attribute lang"):
        encode(root)


def test_encode_invalid_base64_rejected():
    root = syncml()
    add(root, "Data", "not base64!").set(OPAQUE_ATTR, "base64")

    with pytest.raises(WbxmlError, match="not base64"):
        encode(root)


def test_encode_opaque_with_children_rejected():
    root = syncml()
    data_element = add(root, "Data")
    data_element.set(OPAQUE_ATTR, "base64")
    add(data_element, "Final")

    with pytest.raises(WbxmlError, match="has children"):
        encode(root)


@pytest.mark.parametrize("charset", [0, 17, 1000])
def test_encode_unsupported_charset_rejected(charset):
    with pytest.raises(WbxmlError, match="charset"):
        encode(syncml(), charset=charset)


def test_encode_accepts_element_tree():
    assert encode(etree.ElementTree(syncml())) == HEADER_12 + b"\x2d"


# -- properties ------------------------------------------------------------

ALL_NAMES = sorted({**SYNCML_12_TOKENS, **METINF_12_TOKENS})

xml_text = st.text(
    alphabet=st.characters(
        min_codepoint=0x09, max_codepoint=0x10FFFF, exclude_categories=("Cs",)
    ).filter(lambda char: not _INVALID_XML_CHAR.match(char)),
    max_size=24,
)
leaf = st.tuples(
    st.sampled_from(ALL_NAMES),
    st.one_of(
        st.tuples(st.just("text"), xml_text),
        st.tuples(st.just("opaque"), st.binary(max_size=40)),
    ),
)
tree_spec = st.recursive(
    leaf,
    lambda inner: st.tuples(st.sampled_from(ALL_NAMES), st.lists(inner, max_size=5)),
    max_leaves=30,
)


def build(spec, parent: etree._Element | None = None) -> etree._Element:
    name, content = spec
    ns = METINF_NS if name in METINF_12_TOKENS else SYNCML_NS_12
    tag = f"{{{ns}}}{name}"
    if parent is None:
        element = etree.Element(tag, nsmap={None: ns})
    else:
        element = etree.SubElement(parent, tag, nsmap={None: ns})
    if isinstance(content, list):
        for item in content:
            build(item, element)
    elif content[0] == "opaque":
        element.set(OPAQUE_ATTR, "base64")
        element.text = base64.b64encode(content[1]).decode()
    else:
        element.text = content[1]
    return element


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(tree_spec, st.sampled_from([106, 4]))
def test_round_trip_random_trees(spec, charset):
    root = build(spec)
    limits = WbxmlLimits(max_depth=1000)
    doc = decode(encode(root, charset=charset), limits)

    assert shape(doc.root) == shape(root)
    assert doc.charset == charset
    for element in doc.root.iter():
        expected = METINF_NS if local(element) in METINF_12_TOKENS else None
        if expected:
            assert namespace(element) == expected
        else:
            assert namespace(element) in (SYNCML_NS_11, SYNCML_NS_12)


def assert_clean_tree(doc: WbxmlDocument) -> None:
    assert isinstance(doc.root, etree._Element)
    for element in doc.root.iter():
        for value in (element.text, element.tail):
            assert value is None or not _INVALID_XML_CHAR.search(value)
    etree.tostring(doc.root)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_wbxml_error(data):
    try:
        doc = decode(data)
    except WbxmlError:
        return
    assert_clean_tree(doc)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_body_raises_only_wbxml_error(body):
    try:
        doc = decode(HEADER_12 + body)
    except WbxmlError:
        return
    assert_clean_tree(doc)


edit = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 4096), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 4096), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 4096), st.just(0)),
)


@settings(max_examples=500)
@given(
    st.sampled_from(MESSAGES),
    st.lists(edit, min_size=1, max_size=6),
    st.one_of(st.none(), st.integers(0, 4096)),
)
def test_mutated_real_messages_raise_only_wbxml_error(name, edits, cut):
    data = bytearray(load(name))
    for kind, position, value in edits:
        index = position % (len(data) + 1)
        if kind == "insert":
            data.insert(index, value)
        elif index < len(data):
            if kind == "set":
                data[index] = value
            else:
                del data[index]
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    try:
        doc = decode(bytes(data))
    except WbxmlError:
        return
    assert_clean_tree(doc)


# -- helpers for callers -----------------------------------------------------


@pytest.mark.parametrize("name", MESSAGES)
def test_looks_like_wbxml_real_messages(name):
    assert looks_like_wbxml(load(name))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<?xml version='1.0'?><SyncML/>",
        b"<SyncML/>",
        b"\xef\xbb\xbf<SyncML/>",
        b"\xfe\xff\x00<",
        b"\xff\xfe<\x00",
        b"\x00<\x00S",
        b"  <SyncML/>",
        b"\n<SyncML/>",
        b"\x04\xa4\x01",
    ],
)
def test_looks_like_wbxml_rejects_xml(data):
    assert not looks_like_wbxml(data)


@pytest.mark.parametrize("first", [0x00, 0x01, 0x02, 0x03])
def test_looks_like_wbxml_version_bytes(first):
    assert looks_like_wbxml(bytes([first, 0xA4, 0x01]))


def test_pretty_xml_from_wbxml():
    output = to_pretty_xml(load("testreplace"))

    assert output.startswith("<!-- WBXML 1.2, public identifier ")
    assert "charset 106" in output.splitlines()[0]
    # SyncML/SyncBody/Replace/Item/Source/LocURI: five levels of two spaces.
    assert " " * 10 + "<LocURI>./DevInfo/DevId</LocURI>" in output.splitlines()
    parsed = etree.fromstring(output.split("\n", 1)[1].encode())
    assert local(parsed) == "SyncML"


def test_pretty_xml_shows_opaque_marker():
    root = syncml()
    add(root, "Data", "AP8Q").set(OPAQUE_ATTR, "base64")
    output = to_pretty_xml(encode(root))

    assert '<Data wbxml:opaque="base64">AP8Q</Data>' in output
    assert 'xmlns:wbxml="urn:dmserver:wbxml"' in output


def test_pretty_xml_from_xml():
    data = b'<SyncML xmlns="SYNCML:SYNCML1.2"><SyncBody><Final/></SyncBody></SyncML>'
    output = to_pretty_xml(data)

    assert output == (
        '<SyncML xmlns="SYNCML:SYNCML1.2">\n'
        "  <SyncBody>\n"
        "    <Final/>\n"
        "  </SyncBody>\n"
        "</SyncML>\n"
    )


def test_pretty_xml_does_not_resolve_external_entities(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    data = (
        f'<!DOCTYPE SyncML [<!ENTITY leak SYSTEM "{secret.as_uri()}">]>'
        "<SyncML><Data>&leak;</Data></SyncML>"
    ).encode()

    assert "TOP-SECRET-VALUE" not in to_pretty_xml(data)


def test_pretty_xml_invalid_xml_raises_value_error():
    with pytest.raises(ValueError, match="invalid XML"):
        to_pretty_xml(b"<SyncML><unclosed></SyncML>")


def test_pretty_xml_invalid_wbxml_raises_wbxml_error():
    with pytest.raises(WbxmlError):
        to_pretty_xml(HEADER_12 + b"\x6d")
