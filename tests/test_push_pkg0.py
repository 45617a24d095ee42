"""Package 0 builder, parser, digest and session id matching.

Expected octets are assembled by hand from OMA-TS-DM_Notification-V1_2
section 6.2 (bit layout and digest formula), not by calling the builder.
"""

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmserver.push import pkg0

SERVER_ID = "dmserver.example"
PASSWORD = "server-secret"
NONCE = bytes.fromhex("1c2b3a49")
SESSION_ID = 0x1A2B


def expected_digest(
    server_id: str, password: str, nonce: bytes, trigger: bytes
) -> bytes:
    # Digest = H(B64(H(server-identifier:password)):nonce:B64(H(trigger)))
    step1 = hashlib.md5(f"{server_id}:{password}".encode()).digest()
    step2 = base64.b64encode(step1)
    step3 = base64.b64encode(hashlib.md5(trigger).digest())
    return hashlib.md5(step2 + b":" + nonce + b":" + step3).digest()


# version 12 = 0000001100, ui-mode background = 01, initiator server = 1,
# future-use 27 zero bits:
#   0000 0011 | 0001 1000 | 0000 0000 | 0000 0000 | 0000 0000
# then sessionid 0x1A2B and length-identifier 16.
TRIGGER_V12 = bytes.fromhex("0318000000" + "1a2b" + "10") + SERVER_ID.encode()


def test_build_notification_golden_bytes():
    package0 = pkg0.build_notification(
        server_id=SERVER_ID, password=PASSWORD, nonce=NONCE, session_id=SESSION_ID
    )

    assert package0[16:] == TRIGGER_V12
    assert package0[:16] == expected_digest(SERVER_ID, PASSWORD, NONCE, TRIGGER_V12)
    assert len(package0) == 16 + 8 + 16


def test_build_notification_version_11_header():
    # version 11 = 0000001011, ui-mode informative = 10, initiator client = 0:
    #   0000 0010 | 1110 0000 | 0 ... -> 02 E0 00 00 00
    profile = pkg0.NotificationProfile(version=11)
    package0 = pkg0.build_notification(
        server_id="srv",
        password=PASSWORD,
        nonce=NONCE,
        session_id=0x0001,
        profile=profile,
        ui_mode=pkg0.UIMode.INFORMATIVE,
        initiator=pkg0.Initiator.CLIENT,
    )

    assert package0[16:] == bytes.fromhex("02e0000000000103") + b"srv"


def test_build_notification_user_interaction_and_vendor_data():
    # version 12, ui-mode 11, initiator 1: 0000 0011 | 0011 1000 -> 03 38
    package0 = pkg0.build_notification(
        server_id="s",
        password="p",
        nonce=b"",
        session_id=0xFFFF,
        ui_mode=pkg0.UIMode.USER_INTERACTION,
        vendor_specific=b"\xde\xad",
    )
    trigger = bytes.fromhex("0338000000ffff01") + b"s" + b"\xde\xad"

    assert package0[16:] == trigger
    assert package0[:16] == expected_digest("s", "p", b"", trigger)


@pytest.mark.parametrize(
    ("form", "nonce"),
    [
        (pkg0.ResyncNonce.ZERO_BYTES, b"\x00\x00\x00\x00"),
        (pkg0.ResyncNonce.BASE64_TEXT, b"AAAAAA=="),
        (pkg0.ResyncNonce.HEX_TEXT, b"0x00000000"),
    ],
)
def test_build_notification_unknown_nonce_uses_resync_form(form, nonce):
    profile = pkg0.NotificationProfile(resync_nonce=form)
    package0 = pkg0.build_notification(
        server_id=SERVER_ID,
        password=PASSWORD,
        nonce=None,
        session_id=SESSION_ID,
        profile=profile,
    )

    assert package0[:16] == expected_digest(SERVER_ID, PASSWORD, nonce, TRIGGER_V12)


def test_resync_base64_text_encodes_four_zero_bytes():
    assert base64.b64decode(pkg0.ResyncNonce.BASE64_TEXT.value) == b"\x00" * 4


def test_build_notification_server_id_over_profile_limit():
    profile = pkg0.NotificationProfile(max_server_id_length=23)

    with pytest.raises(pkg0.UnsupportedTriggerError, match="at most 23"):
        pkg0.build_notification(
            server_id="x" * 24,
            password=PASSWORD,
            nonce=NONCE,
            session_id=1,
            profile=profile,
        )


def test_build_notification_server_id_at_profile_limit():
    profile = pkg0.NotificationProfile(max_server_id_length=23)
    package0 = pkg0.build_notification(
        server_id="x" * 23,
        password=PASSWORD,
        nonce=NONCE,
        session_id=1,
        profile=profile,
    )

    assert package0[16 + 7] == 23


def test_build_notification_server_id_over_format_limit():
    with pytest.raises(pkg0.UnsupportedTriggerError):
        pkg0.build_notification(
            server_id="x" * 256, password=PASSWORD, nonce=NONCE, session_id=1
        )


def test_unsupported_trigger_error_is_value_error():
    assert issubclass(pkg0.UnsupportedTriggerError, ValueError)


@pytest.mark.parametrize("session_id", [-1, 0x10000])
def test_build_notification_session_id_out_of_range(session_id):
    with pytest.raises(ValueError, match="session id"):
        pkg0.build_notification(
            server_id=SERVER_ID, password=PASSWORD, nonce=NONCE, session_id=session_id
        )


def test_parse_notification_fields():
    data = (
        expected_digest(SERVER_ID, PASSWORD, NONCE, TRIGGER_V12) + TRIGGER_V12 + b"\x01"
    )

    notification = pkg0.parse_notification(data)

    assert notification.version == 12
    assert notification.ui_mode is pkg0.UIMode.BACKGROUND
    assert notification.initiator is pkg0.Initiator.SERVER
    assert notification.future_use == 0
    assert notification.session_id == SESSION_ID
    assert notification.server_id == SERVER_ID
    assert notification.vendor_specific == b"\x01"
    assert notification.trigger == TRIGGER_V12 + b"\x01"


def test_parse_notification_reports_reserved_bits():
    # Set the lowest future-use bit (bit 24 of the 64-bit header).
    trigger = bytes.fromhex("0318000001") + bytes.fromhex("000103") + b"abc"

    notification = pkg0.parse_notification(b"\x00" * 16 + trigger)

    assert notification.future_use == 1
    assert notification.server_id == "abc"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 23,
        b"\x00" * 16 + bytes.fromhex("0318000000000105"),
        b"\x00" * 16 + bytes.fromhex("0318000000000102") + b"\xff\xfe",
    ],
    ids=["empty", "short-header", "truncated-server-id", "server-id-not-utf8"],
)
def test_parse_notification_rejects_malformed(data):
    with pytest.raises(pkg0.NotificationParseError):
        pkg0.parse_notification(data)


def test_verify_digest_accepts_right_credentials():
    package0 = pkg0.build_notification(
        server_id=SERVER_ID, password=PASSWORD, nonce=NONCE, session_id=SESSION_ID
    )
    notification = pkg0.parse_notification(package0)

    assert pkg0.verify_digest(notification, SERVER_ID, PASSWORD, NONCE)


@pytest.mark.parametrize(
    ("server_id", "password", "nonce"),
    [
        (SERVER_ID, "wrong", NONCE),
        ("other", PASSWORD, NONCE),
        (SERVER_ID, PASSWORD, b"\x00\x00\x00\x00"),
    ],
    ids=["password", "server-id", "nonce"],
)
def test_verify_digest_rejects_wrong_input(server_id, password, nonce):
    package0 = pkg0.build_notification(
        server_id=SERVER_ID, password=PASSWORD, nonce=NONCE, session_id=SESSION_ID
    )
    notification = pkg0.parse_notification(package0)

    assert not pkg0.verify_digest(notification, server_id, password, nonce)


def test_verify_digest_detects_tampered_trigger():
    package0 = bytearray(
        pkg0.build_notification(
            server_id=SERVER_ID, password=PASSWORD, nonce=NONCE, session_id=SESSION_ID
        )
    )
    package0[22] ^= 0x01  # flip a session id bit

    notification = pkg0.parse_notification(bytes(package0))

    assert not pkg0.verify_digest(notification, SERVER_ID, PASSWORD, NONCE)


def test_format_session_id_is_upper_hex_without_leading_zeros():
    assert pkg0.format_session_id(0x00AB) == "AB"
    assert pkg0.format_session_id(0x1A2B) == "1A2B"


@pytest.mark.parametrize(
    ("notified", "received", "expected"),
    [
        (0x1A2B, "1A2B", "hex"),
        (0x1A2B, "1a2b", "hex"),
        (0x00AB, "00AB", "hex"),
        (0x1A2B, "6699", "decimal"),
        (0x1A2B, "2B1A", "byte-swapped"),
        (0x1A2B, "2b1a", "byte-swapped"),
        (0x1A2B, "11034", "byte-swapped"),
        (0x0012, "12", "hex"),
        (0x0010, "16", "decimal"),
        (0x1A2B, "1A2C", None),
        (0x1A2B, "", None),
        (0x1A2B, "0x1A2B", None),
        (0x1111, "4369", "decimal"),
    ],
)
def test_match_session_id(notified, received, expected):
    assert pkg0.match_session_id(notified, received) == expected


def test_match_session_id_long_decimal():
    # Python rejects int() of more than 4,300 decimal digits by default.
    assert pkg0.match_session_id(0x1A2B, "9" * 5000) is None
    assert pkg0.match_session_id(0x1A2B, "0" * 60 + "1A2B") == "hex"


@given(
    server_id=st.text(min_size=1, max_size=40).filter(
        lambda text: len(text.encode()) <= 255
    ),
    password=st.text(max_size=20),
    nonce=st.binary(max_size=16),
    session_id=st.integers(0, 0xFFFF),
    ui_mode=st.sampled_from(pkg0.UIMode),
    initiator=st.sampled_from(pkg0.Initiator),
    version=st.integers(0, 0x3FF),
    vendor=st.binary(max_size=64),
)
def test_build_parse_roundtrip(
    server_id, password, nonce, session_id, ui_mode, initiator, version, vendor
):
    package0 = pkg0.build_notification(
        server_id=server_id,
        password=password,
        nonce=nonce,
        session_id=session_id,
        profile=pkg0.NotificationProfile(version=version),
        ui_mode=ui_mode,
        initiator=initiator,
        vendor_specific=vendor,
    )

    notification = pkg0.parse_notification(package0)

    assert notification.server_id == server_id
    assert notification.session_id == session_id
    assert notification.version == version
    assert notification.ui_mode == ui_mode
    assert notification.initiator == initiator
    assert notification.vendor_specific == vendor
    assert notification.future_use == 0
    assert pkg0.verify_digest(notification, server_id, password, nonce)
