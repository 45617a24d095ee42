"""Package 0: the OMA DM General Notification Initiated Session Alert.

The server sends Package 0 to wake a device up. The device verifies the
digest with its server credentials and opens a DM session that carries the
notified session id. This module builds and parses the binary message and
matches the SessionID a client sends back against the notified one. It does
no I/O: gateways in ``dmserver.push.gateways`` carry the bytes.

Layout (OMA-TS-DM_Notification-V1_2, section 6.2.1, big endian)::

    digest            128 bits  MD5, see below
    trigger-hdr:
      version          10 bits  notification version times ten (12 = 1.2)
      ui-mode           2 bits  0 not specified, 1 background,
                                2 informative, 3 user interaction
      initiator         1 bit   0 client (user), 1 server
      future-use       27 bits  reserved, zero
      sessionid        16 bits
      length-identifier 8 bits  length of server-identifier in octets
      server-identifier         length-identifier octets
    trigger-body                optional vendor specific octets

The digest (section 6.2.2.2) is
``H(B64(H(server-identifier:password)):nonce:B64(H(trigger)))`` with H the
MD5 function, ``trigger`` the trigger-hdr plus trigger-body, and the
credentials those the device uses to authenticate the server.

Example::

    profile = NotificationProfile()
    package0 = build_notification(
        server_id="dmserver", password="secret", nonce=b"\\x01\\x02",
        session_id=0x1A2B, profile=profile,
    )
    notification = parse_notification(package0)
    assert verify_digest(notification, "dmserver", "secret", b"\\x01\\x02")
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DIGEST_LENGTH = 16
TRIGGER_HEADER_FIXED_LENGTH = 8
MAX_SERVER_ID_LENGTH = 255
MAX_SESSION_ID = 0xFFFF
MAX_VERSION = 0x3FF
# Longest SessionID text compared with a notified session id. A 16-bit id
# needs at most 5 decimal digits; the rest allows leading zeros. Longer
# text cannot match, and parsing it as decimal would exceed Python's
# 4,300-digit int conversion limit.
MAX_SESSION_ID_TEXT_LENGTH = 64

# Version 1.2 of the notification format is written as 12 (section 6.2.2.6
# counts the version as DEC(version) / 10).
NOTIFICATION_VERSION_12 = 12
# Deployed clients such as Intel's libdmclient accept only 11 (the value the
# 1.2 candidate specification text gives) and reject 12.
NOTIFICATION_VERSION_11 = 11


class UIMode(enum.IntEnum):
    """Server recommendation for user interaction (section 6.2.2.7)."""

    NOT_SPECIFIED = 0
    BACKGROUND = 1
    INFORMATIVE = 2
    USER_INTERACTION = 3


class Initiator(enum.IntEnum):
    """Originator of the management session (section 6.2.2.8)."""

    CLIENT = 0
    SERVER = 1


class ResyncNonce(enum.Enum):
    """Nonce forms clients fall back to when they lost the server nonce.

    The value is the exact nonce octets fed into the digest.
    """

    ZERO_BYTES = b"\x00\x00\x00\x00"
    BASE64_TEXT = b"AAAAAA=="
    # libdmclient retries a failed digest with this text as the nonce.
    HEX_TEXT = b"0x00000000"


@dataclass(frozen=True)
class NotificationProfile:
    """Package 0 settings that a family of clients accepts.

    Attributes:
        version: value of the 10-bit version field.
        resync_nonce: nonce used when the device's current server nonce is
            unknown to the server.
        max_server_id_length: maximum server-identifier length in octets
            that the client accepts, or None for the format limit of 255.
            Some clients are reported to enforce 23.
    """

    version: int = NOTIFICATION_VERSION_12
    resync_nonce: ResyncNonce = ResyncNonce.ZERO_BYTES
    max_server_id_length: int | None = None


class NotificationError(ValueError):
    """Base class for Package 0 errors."""


class UnsupportedTriggerError(NotificationError):
    """The client profile rules out the requested trigger."""


class NotificationParseError(NotificationError):
    """The octets are not a well-formed Package 0."""


@dataclass(frozen=True)
class Notification:
    """A parsed Package 0.

    ``trigger`` keeps the exact trigger octets (header and body) because the
    digest covers them as received.
    """

    digest: bytes
    version: int
    ui_mode: UIMode
    initiator: Initiator
    future_use: int
    session_id: int
    server_id: str
    vendor_specific: bytes
    trigger: bytes


def _md5_b64(data: bytes) -> bytes:
    return base64.b64encode(hashlib.md5(data).digest())


def compute_digest(
    server_id: str, password: str, nonce: bytes, trigger: bytes
) -> bytes:
    """Return the 16-octet Package 0 digest of ``trigger`` (section 6.2.2.2)."""
    credentials = _md5_b64(f"{server_id}:{password}".encode())
    message = credentials + b":" + nonce + b":" + _md5_b64(trigger)
    return hashlib.md5(message).digest()


def build_trigger(
    *,
    server_id: str,
    session_id: int,
    version: int = NOTIFICATION_VERSION_12,
    ui_mode: UIMode = UIMode.BACKGROUND,
    initiator: Initiator = Initiator.SERVER,
    vendor_specific: bytes = b"",
) -> bytes:
    """Encode trigger-hdr and trigger-body.

    Raises:
        ValueError: a field does not fit its width.
    """
    server_id_octets = server_id.encode("utf-8")
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"notification version {version} does not fit in 10 bits")
    if not 0 <= session_id <= MAX_SESSION_ID:
        raise ValueError(f"session id {session_id} is outside 0..0xFFFF")
    if len(server_id_octets) > MAX_SERVER_ID_LENGTH:
        raise UnsupportedTriggerError(
            f"server id is {len(server_id_octets)} octets long; the "
            f"length-identifier field holds at most {MAX_SERVER_ID_LENGTH}"
        )

    # version(10) ui-mode(2) initiator(1) future-use(27) sessionid(16)
    # length-identifier(8): 64 bits in total.
    header = version << 54
    header |= int(ui_mode) << 52
    header |= int(initiator) << 51
    header |= session_id << 8
    header |= len(server_id_octets)
    return (
        header.to_bytes(TRIGGER_HEADER_FIXED_LENGTH, "big")
        + server_id_octets
        + vendor_specific
    )


def build_notification(
    *,
    server_id: str,
    password: str,
    nonce: bytes | None,
    session_id: int,
    profile: NotificationProfile = NotificationProfile(),
    ui_mode: UIMode = UIMode.BACKGROUND,
    initiator: Initiator = Initiator.SERVER,
    vendor_specific: bytes = b"",
) -> bytes:
    """Build a complete Package 0: digest followed by the trigger.

    Args:
        server_id: the server identifier the device has in its DM account.
        password: the server password of that account (server credentials).
        nonce: the device's current server nonce as raw octets, or None
            when it is unknown; then ``profile.resync_nonce`` is used.
        session_id: the SessionID the device must use, 0..0xFFFF.
        profile: limits and forms the target client accepts.

    Raises:
        UnsupportedTriggerError: the client cannot take this trigger, for
            example because the server id is longer than it accepts.
        ValueError: a field does not fit its width.
    """
    server_id_length = len(server_id.encode("utf-8"))
    limit = profile.max_server_id_length
    if limit is not None and server_id_length > limit:
        raise UnsupportedTriggerError(
            f"server id {server_id!r} is {server_id_length} octets long but the "
            f"client profile accepts at most {limit}; configure a shorter "
            f"server id for these devices"
        )

    trigger = build_trigger(
        server_id=server_id,
        session_id=session_id,
        version=profile.version,
        ui_mode=ui_mode,
        initiator=initiator,
        vendor_specific=vendor_specific,
    )
    if nonce is None:
        logger.debug(
            "server nonce unknown: using resync nonce %s", profile.resync_nonce.name
        )
        nonce = profile.resync_nonce.value
    return compute_digest(server_id, password, nonce, trigger) + trigger


def parse_notification(data: bytes) -> Notification:
    """Decode a Package 0.

    The reserved future-use bits are returned, not checked, so that the
    caller decides how strict to be.

    Raises:
        NotificationParseError: the data is shorter than its length fields, or
            the server identifier is not UTF-8.
    """
    minimum = DIGEST_LENGTH + TRIGGER_HEADER_FIXED_LENGTH
    if len(data) < minimum:
        raise NotificationParseError(
            f"Package 0 is {len(data)} octets long; at least {minimum} are required"
        )
    digest = data[:DIGEST_LENGTH]
    trigger = data[DIGEST_LENGTH:]
    header = int.from_bytes(trigger[:TRIGGER_HEADER_FIXED_LENGTH], "big")

    server_id_length = header & 0xFF
    server_id_end = TRIGGER_HEADER_FIXED_LENGTH + server_id_length
    if len(trigger) < server_id_end:
        raise NotificationParseError(
            f"length-identifier is {server_id_length} but only "
            f"{len(trigger) - TRIGGER_HEADER_FIXED_LENGTH} octets follow the header"
        )
    try:
        server_id = trigger[TRIGGER_HEADER_FIXED_LENGTH:server_id_end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotificationParseError(f"server-identifier is not UTF-8: {exc}") from exc

    return Notification(
        digest=digest,
        version=header >> 54,
        ui_mode=UIMode((header >> 52) & 0x3),
        initiator=Initiator((header >> 51) & 0x1),
        future_use=(header >> 24) & 0x7FFFFFF,
        session_id=(header >> 8) & 0xFFFF,
        server_id=server_id,
        vendor_specific=trigger[server_id_end:],
        trigger=trigger,
    )


def verify_digest(
    notification: Notification, server_id: str, password: str, nonce: bytes
) -> bool:
    """Check the digest of a parsed Package 0 against the given credentials."""
    expected = compute_digest(server_id, password, nonce, notification.trigger)
    return hmac.compare_digest(expected, notification.digest)


def format_session_id(session_id: int) -> str:
    """Return the SessionID text a conforming client sends for ``session_id``.

    Section 6.2.2.10: upper-case hexadecimal digits without leading zeros.
    """
    return f"{session_id:X}"


def match_session_id(notified: int, received: str) -> str | None:
    """Tell in which form a client echoed the notified session id.

    Returns:
        "hex" for hexadecimal of either case, which is the specified form
        (leading zeros are tolerated). "decimal" for decimal digits.
        "byte-swapped" when the two octets of the session id arrive swapped,
        in hexadecimal or decimal, because libdmclient applies ntohs to a
        value already in host order. None when nothing
        matches or the text is longer than MAX_SESSION_ID_TEXT_LENGTH. Hexadecimal is tried first, so a value that reads the same
        in both forms reports "hex".
    """
    text = received.strip()
    if not text or len(text) > MAX_SESSION_ID_TEXT_LENGTH:
        return None

    hex_value = _parse_int(text, 16)
    if hex_value == notified:
        return "hex"
    decimal_value = _parse_int(text, 10)
    if decimal_value == notified:
        return "decimal"

    swapped = ((notified & 0xFF) << 8) | (notified >> 8)
    if swapped != notified and swapped in (hex_value, decimal_value):
        return "byte-swapped"
    return None


def _parse_int(text: str, base: int) -> int | None:
    allowed = "0123456789abcdefABCDEF" if base == 16 else "0123456789"
    if not all(character in allowed for character in text):
        return None
    return int(text, base)
