"""Cross-check the WBXML codec against libwbxml, an independent implementation.

The tests run Debian's ``wbxml2xml`` and ``xml2wbxml`` (package
libwbxml2-utils). They skip when the tools are missing, unless
DMSERVER_REQUIRE_SYSTEM_TOOLS=1 is set, in which case they fail.

xml2wbxml picks its token table from the root namespace, so no DOCTYPE is
needed: ``SYNCML:SYNCML1.2`` (or no namespace at all) gives public
identifier 0x1201 and ``SYNCML:SYNCML1.1`` gives 0x0FD3. It writes the text
of Data elements as OPAQUE and, unless ``-n`` is given, moves repeated
strings into a string table, so decoding its output exercises the OPAQUE and
STR_T paths of our decoder.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from dmserver.syncml.names import (
    METINF_NS,
    OPAQUE_ATTR,
    PUBLIC_ID_SYNCML_11,
    PUBLIC_ID_SYNCML_12,
    SYNCML_NS_11,
    SYNCML_NS_12,
)
from dmserver.syncml.wbxml import decode, encode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "messages" / "aosp-dm12"
MESSAGES = ["testreplace", "testadd", "testget", "testdelete"]
# Guard against a hung tool process. It is not a performance assertion.
TOOL_TIMEOUT_SECONDS = 60


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found: install the Debian package libwbxml2-utils"
    if os.environ.get("DMSERVER_REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def run_tool(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, timeout=TOOL_TIMEOUT_SECONDS, check=False
    )


def libwbxml_decode(data: bytes, work: Path) -> etree._Element:
    """Convert WBXML to XML with wbxml2xml and parse the result."""
    tool = require_tool("wbxml2xml")
    source = work / "in.wbxml"
    target = work / "out.xml"
    source.write_bytes(data)
    result = run_tool([tool, "-m", "0", "-o", str(target), str(source)])
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(target.read_bytes(), parser)


def libwbxml_encode(
    xml: bytes, work: Path, *, string_table: bool = True
) -> subprocess.CompletedProcess:
    """Run xml2wbxml on ``xml``, writing the WBXML to out.wbxml in ``work``."""
    tool = require_tool("xml2wbxml")
    source = work / "in.xml"
    target = work / "out.wbxml"
    source.write_bytes(xml)
    target.unlink(missing_ok=True)
    args = [tool] + ([] if string_table else ["-n"]) + ["-o", str(target), str(source)]
    return run_tool(args)


def libwbxml_encode_bytes(
    xml: bytes, work: Path, *, string_table: bool = True
) -> bytes:
    result = libwbxml_encode(xml, work, string_table=string_table)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return (work / "out.wbxml").read_bytes()


def local(element: etree._Element) -> str:
    return etree.QName(element).localname


def shape(element: etree._Element) -> tuple:
    """Return local names, stripped text and structure, OPAQUE as UTF-8 text.

    Namespaces and whitespace are ignored, and None text equals empty text.
    """
    if element.get(OPAQUE_ATTR) is not None:
        content = base64.b64decode(element.text or "").decode("utf-8")
    else:
        content = element.text or ""
    children = [shape(item) for item in element if isinstance(item.tag, str)]
    return (local(element), content.strip(), children)


def has_opaque(root: etree._Element) -> bool:
    return any(item.get(OPAQUE_ATTR) is not None for item in root.iter())


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.wbxml").read_bytes()


def public_id_token(data: bytes) -> int:
    """Read the public identifier mb_u_int32 that follows the version byte."""
    value = 0
    for octet in data[1:6]:
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            return value
    raise AssertionError("public identifier is longer than 5 bytes")


def sample_message(ns: str, *, with_12_tokens: bool) -> etree._Element:
    """Build a DM message with MetInf content and non-ASCII text."""
    root = etree.Element(f"{{{ns}}}SyncML", nsmap={None: ns})

    def add(parent, name, value=None, namespace=ns):
        element = etree.SubElement(
            parent, f"{{{namespace}}}{name}", nsmap={None: namespace}
        )
        element.text = value
        return element

    header = add(root, "SyncHdr")
    add(header, "VerDTD", "1.2" if ns == SYNCML_NS_12 else "1.1")
    add(header, "VerProto", "DM/1.2" if ns == SYNCML_NS_12 else "DM/1.1")
    add(header, "SessionID", "1F")
    add(header, "MsgID", "2")
    add(add(header, "Target"), "LocURI", "IMEI:490154203237518")
    add(add(header, "Source"), "LocURI", "https://dm.example.test/dm")
    meta = add(header, "Meta")
    add(meta, "MaxMsgSize", "8192", METINF_NS)
    add(meta, "MaxObjSize", "524288", METINF_NS)
    body = add(root, "SyncBody")
    alert = add(body, "Alert")
    add(alert, "CmdID", "1")
    if with_12_tokens:
        add(alert, "Correlator", "fumo-7")
    add(alert, "Data", "1226")
    item = add(alert, "Item")
    add(add(item, "Source"), "LocURI", "./FUMO/Update")
    item_meta = add(item, "Meta")
    add(item_meta, "Format", "chr", METINF_NS)
    alert_type = "org.openmobilealliance.dm.firmwareupdate.devicerequest"
    add(item_meta, "Type", alert_type, METINF_NS)
    if with_12_tokens:
        add(item_meta, "FieldLevel", None, METINF_NS)
    add(item, "Data", "Gerät ✓ 端末")
    chal = add(header, "Chal")
    add(add(chal, "Meta"), "NextNonce", "bm9uY2U=", METINF_NS)
    add(body, "Final")
    return root


# -- libwbxml reads what we read ---------------------------------------------


@pytest.mark.parametrize("name", MESSAGES)
def test_decode_matches_wbxml2xml(name, tmp_path):
    data = load(name)
    ours = decode(data).root
    theirs = libwbxml_decode(data, tmp_path)

    assert shape(ours) == shape(theirs)


# -- libwbxml reads what we write ---------------------------------------------


@pytest.mark.parametrize("name", MESSAGES)
@pytest.mark.parametrize(
    ("public_id", "expected_ns"),
    [(PUBLIC_ID_SYNCML_12, SYNCML_NS_12), (PUBLIC_ID_SYNCML_11, SYNCML_NS_11)],
)
def test_wbxml2xml_reads_our_encoding(name, public_id, expected_ns, tmp_path):
    tree = decode(load(name)).root
    theirs = libwbxml_decode(encode(tree, public_id=public_id), tmp_path)

    assert shape(theirs) == shape(tree)
    assert etree.QName(theirs).namespace == expected_ns


# With US-ASCII every non-ASCII character is written as an ENTITY token.
# ISO-8859-1 is not cross-checked: Debian's wbxml2xml 0.11.8 is built
# without iconv and rejects it.
@pytest.mark.parametrize("charset", [106, 3], ids=["utf-8", "us-ascii"])
def test_wbxml2xml_reads_12_tokens_and_non_ascii(charset, tmp_path):
    tree = sample_message(SYNCML_NS_12, with_12_tokens=True)
    theirs = libwbxml_decode(encode(tree, charset=charset), tmp_path)

    assert shape(theirs) == shape(tree)
    correlator = theirs.find(".//{SYNCML:SYNCML1.2}Correlator")
    assert correlator is not None
    assert correlator.text == "fumo-7"
    assert theirs.find(f".//{{{METINF_NS}}}FieldLevel") is not None


def test_wbxml2xml_reads_our_syncml_11(tmp_path):
    tree = sample_message(SYNCML_NS_11, with_12_tokens=False)
    theirs = libwbxml_decode(encode(tree, public_id=PUBLIC_ID_SYNCML_11), tmp_path)

    assert shape(theirs) == shape(tree)
    assert etree.QName(theirs).namespace == SYNCML_NS_11


# -- we read what libwbxml writes ---------------------------------------------


@pytest.mark.parametrize("name", MESSAGES)
@pytest.mark.parametrize("string_table", [True, False], ids=["strtbl", "no-strtbl"])
def test_decode_reads_xml2wbxml_output(name, string_table, tmp_path):
    reference = decode(load(name)).root
    xml = etree.tostring(libwbxml_decode(load(name), tmp_path))
    data = libwbxml_encode_bytes(xml, tmp_path, string_table=string_table)
    doc = decode(data)

    assert shape(doc.root) == shape(reference)
    # VerDTD 1.2 decides the namespace even where the identifier names 1.1.
    assert etree.QName(doc.root).namespace == SYNCML_NS_12
    assert doc.public_id == public_id_token(data)


def test_decode_reads_xml2wbxml_opaque_and_string_table(tmp_path):
    xml = etree.tostring(libwbxml_decode(load("testreplace"), tmp_path))
    data = libwbxml_encode_bytes(xml, tmp_path)
    root = decode(data).root

    # Header: version, public identifier A4 01, charset 6A, table length.
    assert data[1:4] == b"\xa4\x01\x6a"
    assert data[4] > 0
    assert has_opaque(root)


@pytest.mark.parametrize("string_table", [True, False], ids=["strtbl", "no-strtbl"])
def test_decode_reads_xml2wbxml_12_tokens(string_table, tmp_path):
    tree = sample_message(SYNCML_NS_12, with_12_tokens=True)
    xml = etree.tostring(tree)
    data = libwbxml_encode_bytes(xml, tmp_path, string_table=string_table)
    doc = decode(data)

    assert doc.public_id == PUBLIC_ID_SYNCML_12
    assert shape(doc.root) == shape(tree)
    assert etree.QName(doc.root).namespace == SYNCML_NS_12


def test_decode_reads_xml2wbxml_syncml_11(tmp_path):
    tree = sample_message(SYNCML_NS_11, with_12_tokens=False)
    data = libwbxml_encode_bytes(etree.tostring(tree), tmp_path)
    doc = decode(data)

    assert doc.public_id == PUBLIC_ID_SYNCML_11
    assert shape(doc.root) == shape(tree)
    assert etree.QName(doc.root).namespace == SYNCML_NS_11


# -- both agree that Correlator is a SyncML 1.2 token -------------------------


def correlator_in_11() -> etree._Element:
    root = etree.Element(f"{{{SYNCML_NS_11}}}SyncML", nsmap={None: SYNCML_NS_11})
    body = etree.SubElement(root, f"{{{SYNCML_NS_11}}}SyncBody")
    alert = etree.SubElement(body, f"{{{SYNCML_NS_11}}}Alert")
    etree.SubElement(alert, f"{{{SYNCML_NS_11}}}Correlator").text = "c1"
    return root


def test_xml2wbxml_has_no_11_token_for_correlator(tmp_path):
    result = libwbxml_encode(
        etree.tostring(correlator_in_11()), tmp_path, string_table=False
    )

    assert result.returncode != 0
    assert b"Literal" in result.stdout + result.stderr


def test_xml2wbxml_writes_11_correlator_as_literal(tmp_path):
    data = libwbxml_encode_bytes(etree.tostring(correlator_in_11()), tmp_path)
    root = decode(data).root
    correlator = root.find(".//{SYNCML:SYNCML1.1}Correlator")

    assert public_id_token(data) == PUBLIC_ID_SYNCML_11
    assert b"Correlator\x00" in data
    assert correlator is not None
    assert correlator.text == "c1"
