"""Tests for dmserver.fota.descriptor: OMA DL 1.0 descriptors and install notify."""

from __future__ import annotations

import pytest
from lxml import etree

from dmserver.fota.descriptor import (
    DD_MEDIA_TYPE,
    DD_NAMESPACE,
    INSTALL_STATUS,
    MAX_DESCRIPTOR_SIZE,
    MAX_INSTALL_NOTIFY_SIZE,
    DescriptorError,
    DownloadDescriptor,
    InstallNotifyError,
    build_descriptor,
    build_install_notify,
    parse_descriptor,
    parse_install_notify,
)

NS = "{http://www.openmobilealliance.org/xmlns/dd}"

FULL = DownloadDescriptor(
    object_uri="http://127.0.0.1:8080/dl/pkg/abc",
    size=32_539,
    type="application/octet-stream",
    name="ACME-100 2.5.0-1+deb12u5",
    install_notify_uri="http://127.0.0.1:8080/dl/notify/abc",
    vendor="dmserver",
    description='delta update of ACME-100 <u2> & "u5"',
    next_url="http://127.0.0.1:8080/next",
    info_url="http://127.0.0.1:8080/info",
    icon_uri="http://127.0.0.1:8080/icon.png",
    install_param="severity=2;wifi=0",
    additional_types=("application/vnd.oma.drm.message",),
)

# Attribute values of the DD1 case in the OMA DL 1.0 interoperability test
# code (OMA-IOP-BRO-2006-0044): every attribute, relative URIs and all.
IOP_DD1 = b"""<?xml version="1.0" encoding="UTF-8"?>
<media xmlns="http://www.openmobilealliance.org/xmlns/dd">
  <type>image/png</type>
  <size>1000</size>
  <objectURI>AFile.png</objectURI>
  <installNotifyURI>200ok.asp</installNotifyURI>
  <nextURL>www.openmobilealliance.org</nextURL>
  <DDVersion>1.0</DDVersion>
  <name>AFile</name>
  <description>A short text describing the Object</description>
  <vendor>Obigo</vendor>
  <infoURL>www.openmobilealliance.org</infoURL>
  <iconURI>www.openmobilealliance.org</iconURI>
  <installParam>aVeryLongString</installParam>
</media>
"""


def test_media_type_and_namespace():
    assert DD_MEDIA_TYPE == "application/vnd.oma.dd+xml"
    assert DD_NAMESPACE == "http://www.openmobilealliance.org/xmlns/dd"


def test_descriptor_round_trip():
    assert parse_descriptor(build_descriptor(FULL)) == FULL


def test_descriptor_round_trip_minimal():
    dd = DownloadDescriptor("http://127.0.0.1/p", 0, "application/octet-stream")

    parsed = parse_descriptor(build_descriptor(dd))

    assert parsed == dd
    assert parsed.dd_version == "1.0"


def test_built_descriptor_structure():
    data = build_descriptor(FULL)
    root = etree.fromstring(data)

    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert root.tag == NS + "media"
    assert [child.text for child in root.findall(NS + "type")] == [
        "application/octet-stream",
        "application/vnd.oma.drm.message",
    ]
    assert root.findtext(NS + "objectURI") == FULL.object_uri
    assert root.findtext(NS + "size") == "32539"
    assert root.findtext(NS + "DDVersion") == "1.0"
    assert root.findtext(NS + "installNotifyURI") == FULL.install_notify_uri
    assert root.findtext(NS + "iconURI") == FULL.icon_uri
    assert root.findtext(NS + "description") == FULL.description
    assert b"&lt;u2&gt; &amp;" in data


def test_parse_iop_descriptor():
    dd = parse_descriptor(IOP_DD1)

    assert dd == DownloadDescriptor(
        object_uri="AFile.png",
        size=1000,
        type="image/png",
        name="AFile",
        dd_version="1.0",
        install_notify_uri="200ok.asp",
        vendor="Obigo",
        description="A short text describing the Object",
        next_url="www.openmobilealliance.org",
        info_url="www.openmobilealliance.org",
        icon_uri="www.openmobilealliance.org",
        install_param="aVeryLongString",
    )


def test_parse_ignores_unknown_elements():
    # The DD2 case of the same test code adds attributes unknown to a DL 1.0
    # agent, which ignores them instead of rejecting the descriptor.
    data = IOP_DD1.replace(
        b"</media>",
        b"<license>x</license><foo:bar xmlns:foo='urn:x'>y</foo:bar>"
        b"<!-- comment --><?pi data?></media>",
    )

    assert parse_descriptor(data) == parse_descriptor(IOP_DD1)


def test_parse_accepts_missing_namespace_and_whitespace():
    data = (
        b"<media>\n <type> image/png </type>\r\n <objectURI>\n http://h/o\n"
        b" </objectURI>\n <size> 12 </size>\n</media>"
    )

    dd = parse_descriptor(data)

    assert (dd.type, dd.object_uri, dd.size) == ("image/png", "http://h/o", 12)


@pytest.mark.parametrize("missing", ["type", "objectURI", "size"])
def test_parse_names_missing_element(missing):
    elements = {
        "type": b"<type>image/png</type>",
        "objectURI": b"<objectURI>AFile.png</objectURI>",
        "size": b"<size>1000</size>",
    }
    body = b"".join(v for k, v in elements.items() if k != missing)
    data = b'<media xmlns="' + DD_NAMESPACE.encode() + b'">' + body + b"</media>"

    with pytest.raises(DescriptorError, match=f"no {missing} element") as excinfo:
        parse_descriptor(data)
    assert excinfo.value.install_status == 906


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not well-formed"),
        (b"<media><type>a</type>", "not well-formed"),
        (b"<other><type>a</type></other>", "root must be media"),
        (b"<x:media xmlns:x='urn:other'/>", "root must be media"),
        (b"<media><type>a</type><objectURI/><size>1</size></media>", "objectURI"),
        (b"<media><type/><objectURI>u</objectURI><size>1</size></media>", "empty type"),
        (
            b"<media><type>a</type><objectURI>u</objectURI><size>-1</size></media>",
            "size",
        ),
        (
            b"<media><type>a</type><objectURI>u</objectURI><size>1,000</size></media>",
            "size",
        ),
        (
            b"<media><type>a</type><objectURI>u</objectURI><size>1e3</size></media>",
            "size",
        ),
        (
            b"<media><type>a</type><objectURI>u</objectURI><size>99999999999999999999"
            b"</size></media>",
            "exceeds",
        ),
        (
            b"<media><type>a</type><objectURI>u</objectURI><objectURI>v</objectURI>"
            b"<size>1</size></media>",
            "more than one objectURI",
        ),
        (b"<media>" + b"<a>" * 20 + b"</a>" * 20 + b"</media>", "deeper"),
    ],
    ids=[
        "empty",
        "unclosed",
        "wrong root",
        "wrong namespace",
        "empty objectURI",
        "empty type",
        "negative size",
        "size with comma",
        "size in exponent form",
        "huge size",
        "duplicate objectURI",
        "deep nesting",
    ],
)
def test_parse_rejects_malformed(data, message):
    with pytest.raises(DescriptorError, match=message):
        parse_descriptor(data)


def test_parse_rejects_unsupported_dd_version():
    data = IOP_DD1.replace(b"<DDVersion>1.0</DDVersion>", b"<DDVersion>2.0</DDVersion>")

    with pytest.raises(DescriptorError, match="DDVersion") as excinfo:
        parse_descriptor(data)
    assert excinfo.value.install_status == 951


def test_parse_accepts_minor_dd_version():
    data = IOP_DD1.replace(b"<DDVersion>1.0</DDVersion>", b"<DDVersion>1.1</DDVersion>")

    assert parse_descriptor(data).dd_version == "1.1"


def test_parse_rejects_internal_entity():
    data = (
        b'<?xml version="1.0"?>\n'
        b'<!DOCTYPE media [<!ENTITY big "' + b"A" * 1000 + b'">]>\n'
        b"<media><type>a</type><objectURI>&big;</objectURI><size>1</size></media>"
    )
    with pytest.raises(DescriptorError, match="DTD"):
        parse_descriptor(data)


def test_parse_rejects_entity_expansion_bomb():
    entities = b'<!ENTITY a0 "lol">' + b"".join(
        b'<!ENTITY a%d "&a%d;&a%d;&a%d;&a%d;">' % (i, i - 1, i - 1, i - 1, i - 1)
        for i in range(1, 10)
    )
    data = (
        b"<!DOCTYPE media [" + entities + b"]>"
        b"<media><type>&a9;</type><objectURI>u</objectURI><size>1</size></media>"
    )
    # libxml2 itself may stop it (amplification limit) before the DTD check.
    with pytest.raises(DescriptorError, match="DTD|amplification"):
        parse_descriptor(data)


def test_parse_rejects_external_entity(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    data = (
        b'<!DOCTYPE media [<!ENTITY xxe SYSTEM "file://'
        + str(secret).encode()
        + b'">]><media><type>a</type><objectURI>&xxe;</objectURI>'
        b"<size>1</size></media>"
    )

    with pytest.raises(DescriptorError) as excinfo:
        parse_descriptor(data)
    assert "do not read" not in str(excinfo.value)


def test_parse_rejects_external_dtd():
    # 127.0.0.1 port 9 (discard): nothing may be fetched in any case.
    data = (
        b'<!DOCTYPE media SYSTEM "http://127.0.0.1:9/dd.dtd">'
        b"<media><type>a</type><objectURI>u</objectURI><size>1</size></media>"
    )
    with pytest.raises(DescriptorError, match="DTD"):
        parse_descriptor(data)


def test_parse_rejects_oversize():
    padding = b"<!--" + b"x" * MAX_DESCRIPTOR_SIZE + b"-->"
    data = IOP_DD1.replace(b"</media>", padding + b"</media>")

    with pytest.raises(DescriptorError, match="limit"):
        parse_descriptor(data)


def test_descriptor_rejects_invalid_fields():
    with pytest.raises(DescriptorError, match="objectURI"):
        DownloadDescriptor("", 1, "a")
    with pytest.raises(DescriptorError, match="size"):
        DownloadDescriptor("u", -1, "a")
    with pytest.raises(DescriptorError, match="size"):
        DownloadDescriptor("u", True, "a")


# Install notify


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"900 Success", (900, "Success")),
        (b"900 Success\r\n", (900, "Success")),
        (b"900 Success\n", (900, "Success")),
        (b"900", (900, "Success")),
        (b"900\r\n", (900, "Success")),
        (b"900 Done and dusted", (900, "Done and dusted")),
        (b"  \r\n\t900 Success  \r\n", (900, "Success")),
        (b"900\tSuccess", (900, "Success")),
        (
            b"902 User Cancelled\r\nContent-Type: text/plain\r\nX-Foo: 1\r\n",
            (902, "User Cancelled"),
        ),
        (b"954 Loader Error \n\r", (954, "Loader Error")),
        (b"906", (906, "Invalid descriptor")),
        (b"951 Invalid DDVersion", (951, "Invalid DDVersion")),
        (b"907", (907, "")),
        (b"999 Vendor specific", (999, "Vendor specific")),
        (b"901 M\xe9moire insuffisante", (901, "M\xe9moire insuffisante")),
    ],
)
def test_parse_install_notify_good(body, expected):
    assert parse_install_notify(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   \r\n  ",
        b"200 OK",
        b"800 Success",
        b"9000 Success",
        b"90 Success",
        b"900Success",
        b"Success 900",
        b"Status: 900 Success",
        b"abc",
        b"\xff\xfe9\x000\x000\x00",
        b"900 Success".rjust(MAX_INSTALL_NOTIFY_SIZE + 1),
    ],
    ids=[
        "empty",
        "blank",
        "http status",
        "8xx",
        "four digits",
        "two digits",
        "no separator",
        "code last",
        "header first",
        "text",
        "utf-16",
        "oversize",
    ],
)
def test_parse_install_notify_bad(body):
    with pytest.raises(InstallNotifyError):
        parse_install_notify(body)


@pytest.mark.parametrize("code", sorted(INSTALL_STATUS))
def test_install_notify_round_trip(code):
    body = build_install_notify(code)

    assert body == f"{code} {INSTALL_STATUS[code]}\r\n".encode()
    assert parse_install_notify(body) == (code, INSTALL_STATUS[code])


def test_build_install_notify_rejects_unknown_code():
    with pytest.raises(ValueError, match="904"):
        build_install_notify(904)


def test_install_status_table():
    # OMA DL 1.0 status codes and messages.
    assert INSTALL_STATUS == {
        900: "Success",
        901: "Insufficient memory",
        902: "User Cancelled",
        903: "Loss of Service",
        905: "Attribute mismatch",
        906: "Invalid descriptor",
        951: "Invalid DDVersion",
        952: "Device Aborted",
        953: "Non-Acceptable Content",
        954: "Loader Error",
    }
