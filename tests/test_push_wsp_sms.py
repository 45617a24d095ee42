"""WSP Push PDUs and WDP over SMS segmentation.

Expected octets are written out from WAP-230-WSP (Push PDU, uintvar,
short-integer, well-known codes) and 3GPP TS 23.040 (UDH elements).
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmserver.push import sms, wsp

# Captured from Kannel 1.4.5's PPG (wapbox) as the fake SMSC received it,
# after a PAP push of a 40-octet Package 0 with X-Wap-Application-Id
# x-wap-application:syncml.dm. The PPG wrote the content type as text and
# added Content-Length (0x8D 0xA8 = 40) and Encoding-Version (0xC3 0x93).
KANNEL_PPG_PUSH = bytes.fromhex(
    "00062a6170706c69636174696f6e2f766e642e73796e636d6c2e6e6f74696669636174"
    "696f6e00af878da8c393aa1661373202df9aa171e391780533bb03180000001a2b1064"
    "6d7365727665722e6578616d706c65"
)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (0x7F, "7f"),
        (0x80, "8100"),
        (0x3FFF, "ff7f"),
        (0x4000, "818000"),
        (0xFFFFFFFF, "8fffffff7f"),
    ],
)
def test_uintvar_encoding(value, encoded):
    assert wsp.encode_uintvar(value).hex() == encoded
    assert wsp.decode_uintvar(bytes.fromhex(encoded), 0) == (value, len(encoded) // 2)


def test_uintvar_rejects_overlong():
    with pytest.raises(wsp.WspDecodeError):
        wsp.decode_uintvar(b"\x80" * 6, 0)


def test_dm_notification_push_golden_bytes():
    body = b"\x11" * 30

    pdu = wsp.build_dm_notification_push(body, transaction_id=0x05)

    # TID, Push, HeadersLen 3, content type 0x44|0x80, X-Wap-Application-Id
    # 0x2F|0x80, syncml.dm 0x07|0x80, then the body.
    assert pdu == bytes([0x05, 0x06, 0x03, 0xC4, 0xAF, 0x87]) + body


def test_push_pdu_without_application_id():
    pdu = wsp.build_push_pdu(
        b"x", content_type=wsp.CONTENT_TYPE_WAP_SLC, application_id=None
    )

    assert pdu == bytes([0x01, 0x06, 0x01, 0xB0]) + b"x"


def test_push_pdu_for_browser_si():
    pdu = wsp.build_push_pdu(
        b"x",
        content_type=wsp.CONTENT_TYPE_WAP_SIC,
        application_id=wsp.APPLICATION_ID_WML_UA,
    )

    assert pdu == bytes([0x01, 0x06, 0x03, 0xAE, 0xAF, 0x82]) + b"x"


def test_parse_push_pdu_short_form():
    pdu = bytes([0x05, 0x06, 0x03, 0xC4, 0xAF, 0x87]) + b"body"

    parsed = wsp.parse_push_pdu(pdu)

    assert parsed.transaction_id == 5
    assert parsed.pdu_type == wsp.PDU_TYPE_PUSH
    assert parsed.content_type == "application/vnd.syncml.notification"
    assert parsed.content_type_code == 0x44
    assert parsed.application_id == "x-wap-application:syncml.dm"
    assert parsed.application_id_code == 0x07
    assert parsed.body == b"body"


def test_parse_push_pdu_from_kannel_ppg():
    parsed = wsp.parse_push_pdu(KANNEL_PPG_PUSH)

    assert parsed.transaction_id == 0
    assert parsed.content_type == "application/vnd.syncml.notification"
    assert parsed.content_type_code == 0x44
    assert parsed.application_id_code == wsp.APPLICATION_ID_SYNCML_DM
    assert ("Content-Length", b"\xa8") in parsed.headers
    assert ("Encoding-Version", b"\x93") in parsed.headers
    assert len(parsed.body) == 40
    assert parsed.body[16:24] == bytes.fromhex("03180000001a2b10")


def test_parse_push_pdu_text_application_id():
    headers = b"\xae" + b"X-Wap-Application-Id\x00x-wap-application:wml.ua\x00"
    pdu = bytes([0x01, 0x06, len(headers)]) + headers + b"doc"

    parsed = wsp.parse_push_pdu(pdu)

    assert parsed.application_id == "x-wap-application:wml.ua"
    assert parsed.application_id_code == wsp.APPLICATION_ID_WML_UA
    assert parsed.body == b"doc"


def test_parse_push_pdu_general_form_content_type():
    # Value-length 3, media 0xB0, then a parameter 0x81 0xEA (charset utf-8).
    headers = bytes([0x03, 0xB0, 0x81, 0xEA])
    pdu = bytes([0x01, 0x06, len(headers)]) + headers + b"doc"

    parsed = wsp.parse_push_pdu(pdu)

    assert parsed.content_type == "application/vnd.wap.slc"
    assert parsed.body == b"doc"


@pytest.mark.parametrize(
    "pdu",
    [
        b"\x01",
        bytes([0x01, 0x40, 0x01, 0xC4]),
        bytes([0x01, 0x06, 0x09, 0xC4]),
        bytes([0x01, 0x06, 0x02, 0xC4, 0xAF]),
    ],
    ids=["short", "not-push", "headers-overrun", "header-value-missing"],
)
def test_parse_push_pdu_rejects_malformed(pdu):
    with pytest.raises(wsp.WspDecodeError):
        wsp.parse_push_pdu(pdu)


def test_single_segment_udh():
    pdu = bytes(range(133))

    segments = sms.split_into_segments(pdu, reference=9)

    assert len(segments) == 1
    # UDHL 6, IEI 05 length 04, destination 0x0B84 (2948), source 0x23F0 (9200)
    assert segments[0].udh == bytes.fromhex("0605040b8423f0")
    assert segments[0].data == pdu
    assert len(segments[0].udh) + len(segments[0].data) == 140


def test_concatenated_segments_udh():
    pdu = bytes(i % 251 for i in range(134))

    segments = sms.split_into_segments(pdu, reference=0x7E)

    assert [segment.udh.hex() for segment in segments] == [
        "0b05040b8423f000037e0201",
        "0b05040b8423f000037e0202",
    ]
    assert [len(segment.data) for segment in segments] == [128, 6]
    assert segments[0].data + segments[1].data == pdu


def test_segments_fill_140_octets():
    segments = sms.split_into_segments(b"\xaa" * 1000, reference=1)

    assert len(segments) == 8
    for segment in segments[:-1]:
        assert len(segment.udh) + len(segment.data) == sms.MAX_USER_DATA_OCTETS


def test_split_rejects_too_many_segments():
    with pytest.raises(sms.SmsError, match="at most 255"):
        sms.split_into_segments(b"\x00" * (128 * 255 + 1), reference=1)


@pytest.mark.parametrize("reference", [-1, 256])
def test_split_rejects_bad_reference(reference):
    with pytest.raises(ValueError, match="reference"):
        sms.split_into_segments(b"x", reference=reference)


def test_parse_user_data_header_any_element_order():
    header = sms.parse_user_data_header(bytes.fromhex("0b0003420302" + "05040b8423f0"))

    assert header == sms.UserDataHeader(
        destination_port=2948, source_port=9200, reference=0x42, total=3, sequence=2
    )


def test_parse_user_data_header_16bit_reference_and_unknown_element():
    header = sms.parse_user_data_header(bytes.fromhex("09" + "2401aa" + "080412340201"))

    assert header.reference == 0x1234
    assert header.total == 2
    assert header.sequence == 1
    assert header.destination_port is None


@pytest.mark.parametrize(
    "udh",
    ["", "07050400", "0405040b84", "0305090b84"],
    ids=lambda value: value or "empty",
)
def test_parse_user_data_header_rejects_malformed(udh):
    with pytest.raises(sms.SmsError):
        sms.parse_user_data_header(bytes.fromhex(udh))


def test_reassemble_out_of_order():
    pdu = bytes(range(256)) * 2
    segments = sms.split_into_segments(pdu, reference=3)

    assert sms.reassemble(list(reversed(segments))) == pdu


def test_reassemble_single_segment():
    segment = sms.SmsSegment(udh=bytes.fromhex("0605040b8423f0"), data=b"pdu")

    assert sms.reassemble([segment]) == b"pdu"


def test_reassemble_missing_segment():
    segments = sms.split_into_segments(b"\x00" * 300, reference=3)

    with pytest.raises(sms.SmsError, match="missing"):
        sms.reassemble(segments[:2])


def test_reassemble_duplicate_segment():
    segments = sms.split_into_segments(b"\x00" * 300, reference=3)

    with pytest.raises(sms.SmsError, match="twice"):
        sms.reassemble(segments + segments[:1])


def test_reassemble_mixed_references():
    first = sms.split_into_segments(b"\x00" * 300, reference=3)
    second = sms.split_into_segments(b"\x00" * 300, reference=4)

    with pytest.raises(sms.SmsError, match="references"):
        sms.reassemble(first[:2] + second[2:])


def test_count_segments():
    assert sms.count_segments(b"\x00" * 133) == 1
    assert sms.count_segments(b"\x00" * 134) == 2
    assert sms.count_segments(b"\x00" * 256) == 2
    assert sms.count_segments(b"\x00" * 257) == 3


@given(pdu=st.binary(min_size=1, max_size=3000), reference=st.integers(0, 255))
def test_split_reassemble_roundtrip(pdu, reference):
    segments = sms.split_into_segments(pdu, reference)

    assert sms.reassemble(segments) == pdu
    for segment in segments:
        assert len(segment.udh) + len(segment.data) <= sms.MAX_USER_DATA_OCTETS
        header = sms.parse_user_data_header(segment.udh)
        assert header.destination_port == 2948
        assert header.source_port == 9200
