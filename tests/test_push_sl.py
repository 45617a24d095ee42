"""Service Loading and Service Indication WBXML.

Expected octets come from Kannel 1.4.5's own SL and SI compilers
(``test_sl`` and ``test_si`` in kannel-extras) run on Kannel's sample
documents, and our output is decoded by libwbxml's ``wbxml2xml``. Both are
independent implementations of WAP-168 and WAP-167.
"""

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from dmserver.push import sl, wsp
from tests.kannel_harness import skip_or_fail

KANNEL_TEST_DIRECTORY = Path("/usr/lib/kannel/test")

# test_sl on /usr/lib/kannel/test/sl.txt:
#   <sl href="http://wap.iobox.fi" action="execute-high"/>
KANNEL_SL = bytes.fromhex("02066a00850903") + b"wap.iobox.fi" + bytes.fromhex("000601")

# test_si on /usr/lib/kannel/test/si.txt: indication href="http://www.gni.ch"
# si-id="1@gni.ch" action="signal-high" created="1999-06-25T15:23:15Z"
# si-expires="2005-06-30T00:00:00Z", text "You have 4 new emails".
KANNEL_SI = (
    bytes.fromhex("02056a0045c60d03")
    + b"gni.ch\x00"
    + b"\x11\x03"
    + b"1@gni.ch\x00"
    + bytes.fromhex("08" + "0ac3071999062515231510" + "c30420050630" + "01")
    + b"\x03You have 4 new emails\x00"
    + bytes.fromhex("0101")
)


def test_build_sl_matches_kannel_compiler():
    assert sl.build_sl("http://wap.iobox.fi", "execute-high") == KANNEL_SL


def test_build_si_matches_kannel_compiler():
    document = sl.build_si(
        "http://www.gni.ch",
        "You have 4 new emails",
        "1@gni.ch",
        action="signal-high",
        created=dt.datetime(1999, 6, 25, 15, 23, 15, tzinfo=dt.UTC),
        si_expires=dt.datetime(2005, 6, 30, tzinfo=dt.UTC),
    )

    assert document == KANNEL_SI


def test_parse_sl_kannel_output():
    parsed = sl.parse_sl(KANNEL_SL)

    assert parsed == sl.ServiceLoading(
        href="http://wap.iobox.fi", action="execute-high"
    )


def test_parse_si_kannel_output():
    parsed = sl.parse_si(KANNEL_SI)

    assert parsed.href == "http://www.gni.ch"
    assert parsed.si_id == "1@gni.ch"
    assert parsed.action == "signal-high"
    assert parsed.text == "You have 4 new emails"
    assert parsed.created == "1999-06-25T15:23:15Z"
    assert parsed.si_expires == "2005-06-30T00:00:00Z"


@pytest.mark.parametrize(
    ("url", "prefix_token"),
    [
        ("http://dm.example/fw", 0x09),
        ("http://www.example.com/fw", 0x0A),
        ("https://dm.example/fw", 0x0B),
        ("https://www.example.org/", 0x0C),
        ("ftp://dm.example/fw", 0x08),
    ],
)
def test_build_sl_href_prefix_token(url, prefix_token):
    document = sl.build_sl(url)

    assert document[4] == 0x85  # sl with attributes, no content
    assert document[5] == prefix_token
    assert sl.parse_sl(document).href == url


def test_build_sl_tokenizes_dot_com_slash():
    document = sl.build_sl("http://www.example.com/fw", "cache")

    # "example" inline, 0x85 ".com/", "fw" inline, action cache 0x07, END.
    assert document[4:] == (b"\x85\x0a\x03example\x00\x85\x03fw\x00\x07\x01")


def test_build_sl_rejects_unknown_action():
    with pytest.raises(ValueError, match="execute-high"):
        sl.build_sl("http://example.net/", "run")


def test_build_si_without_text_or_id():
    document = sl.build_si("https://dm.example/", "", None)

    assert document == bytes.fromhex("02056a004586 0e03".replace(" ", "")) + (
        b"dm.example/\x00\x07\x01\x01"
    )
    parsed = sl.parse_si(document)
    assert parsed.href == "https://dm.example/"
    assert parsed.text == ""
    assert parsed.action == "signal-medium"


def test_sl_push_pdu():
    pdu = sl.build_sl_push("http://dm.example/x")

    parsed = wsp.parse_push_pdu(pdu)

    assert pdu[:4] == bytes([0x01, 0x06, 0x01, 0xB0])
    assert parsed.application_id is None
    assert sl.parse_sl(parsed.body).href == "http://dm.example/x"


def test_si_push_pdu_for_browser():
    pdu = sl.build_si_push(
        "http://dm.example/x", "Update", "1", application_id=wsp.APPLICATION_ID_WML_UA
    )

    assert pdu[:6] == bytes([0x01, 0x06, 0x03, 0xAE, 0xAF, 0x82])
    assert sl.parse_si(wsp.parse_push_pdu(pdu).body).text == "Update"


@pytest.mark.parametrize(
    "document",
    [
        b"",
        bytes.fromhex("02056a0085"),
        bytes.fromhex("02066a0085090377"),
        bytes.fromhex("02066a008501"),
        bytes.fromhex("02066a00c50901"),
    ],
    ids=["empty", "wrong-public-id", "unterminated", "no-href", "unknown-token"],
)
def test_parse_sl_rejects_malformed(document):
    with pytest.raises(sl.WbxmlDecodeError):
        sl.parse_sl(document)


# -- cross-checks against the installed tools ----------------------------------


def _kannel_compile(tool: str, source: str, tmp_path: Path) -> bytes:
    binary = KANNEL_TEST_DIRECTORY / tool
    if not binary.exists():
        skip_or_fail(f"{binary} not found; install kannel-extras")
    path = tmp_path / "source.xml"
    path.write_text(source)
    completed = subprocess.run(
        [str(binary), str(path)], capture_output=True, text=True, timeout=30
    )
    # The compiler dumps its output as "data: 02 06 6a ..." debug lines.
    lines = completed.stderr.split("binary was", 1)[-1].splitlines()
    octets = []
    for line in lines:
        match = re.search(r"data: ((?:[0-9a-f]{2} )+)", line)
        if match:
            octets.append(match.group(1).replace(" ", ""))
    assert octets, completed.stderr
    return bytes.fromhex("".join(octets))


SL_URLS = [
    "http://dm.example.com/fw/42?x=1",
    "https://www.carrier.net/dl",
    "http://www.example.org/",
]


def _sl_source(url: str) -> str:
    return (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE sl PUBLIC "-//WAPFORUM//DTD SL 1.0//EN" '
        '"http://www.wapforum.org/DTD/sl.dtd">\n'
        f'<sl href="{url}" action="execute-low"></sl>\n'
    )


def test_build_sl_matches_live_kannel(tmp_path):
    url = SL_URLS[0]

    expected = _kannel_compile("test_sl", _sl_source(url), tmp_path)

    assert sl.build_sl(url, "execute-low") == expected


@pytest.mark.parametrize("url", SL_URLS)
def test_parse_sl_live_kannel_output(url, tmp_path):
    # Kannel 1.4.5 never uses the "http://www." prefix tokens. It also ends a
    # URL that stops on ".org/" with an empty inline string. Its octets then
    # differ from ours, but both must decode to the same document.
    compiled = _kannel_compile("test_sl", _sl_source(url), tmp_path)

    assert sl.parse_sl(compiled) == sl.ServiceLoading(href=url, action="execute-low")


def test_build_si_matches_live_kannel(tmp_path):
    source = (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE si PUBLIC "-//WAPFORUM//DTD SI 1.0//EN" '
        '"http://www.wapforum.org/DTD/si.dtd">\n'
        '<si><indication href="https://dm.example.com/fota" si-id="job-7" '
        'action="signal-low">New firmware</indication></si>\n'
    )

    expected = _kannel_compile("test_si", source, tmp_path)

    document = sl.build_si(
        "https://dm.example.com/fota", "New firmware", "job-7", action="signal-low"
    )
    assert document == expected


def _wbxml2xml(document: bytes, tmp_path: Path) -> etree._Element:
    tool = shutil.which("wbxml2xml")
    if tool is None:
        skip_or_fail("wbxml2xml not found; install libwbxml2-utils")
    source = tmp_path / "in.wbxml"
    target = tmp_path / "out.xml"
    source.write_bytes(document)
    subprocess.run(
        [tool, "-o", str(target), str(source)], check=True, capture_output=True
    )
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(target.read_bytes(), parser)


@pytest.mark.parametrize("url", SL_URLS)
def test_build_sl_decodes_with_libwbxml(url, tmp_path):
    root = _wbxml2xml(sl.build_sl(url, "cache"), tmp_path)

    assert root.tag == "sl"
    assert root.get("href") == url
    assert root.get("action") == "cache"


def test_build_si_decodes_with_libwbxml(tmp_path):
    document = sl.build_si(
        "http://www.example.com/fw",
        "Firmware 2.1 ready",
        "job-9",
        action="signal-high",
        created=dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=dt.UTC),
    )

    root = _wbxml2xml(document, tmp_path)

    indication = root.find("indication")
    assert indication is not None
    assert indication.get("href") == "http://www.example.com/fw"
    assert indication.get("si-id") == "job-9"
    assert indication.get("action") == "signal-high"
    assert indication.get("created") == "2024-03-01T12:00:00Z"
    assert indication.text.strip() == "Firmware 2.1 ready"
