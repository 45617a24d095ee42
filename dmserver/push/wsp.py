"""Connectionless WSP Push PDUs (WAP-230-WSP, section 8.2.4.1).

A Push PDU carries a pushed entity to the phone::

    TID             1 octet   transaction id
    Type            1 octet   0x06 (Push)
    HeadersLen      uintvar   length of ContentType plus Headers
    ContentType               well-known short integer or text
    Headers                   here only X-Wap-Application-Id
    Data                      the entity body (for example Package 0)

This module builds the PDUs the server sends and parses pushes the way a
phone would, including the richer header sets that Kannel's PPG writes
(text content types, User-Agent, Content-Length, Push-Flag). It does no I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

PDU_TYPE_PUSH = 0x06
PDU_TYPE_CONFIRMED_PUSH = 0x07

# Well-known content types (WSP assigned numbers, extended by the OMNA
# registry). The PDU carries them as short integers: code | 0x80.
CONTENT_TYPE_WAP_SIC = 0x2E  # application/vnd.wap.sic -> 0xAE
CONTENT_TYPE_WAP_SLC = 0x30  # application/vnd.wap.slc -> 0xB0
CONTENT_TYPE_SYNCML_DM_WBXML = 0x42
CONTENT_TYPE_SYNCML_DM_XML = 0x43
CONTENT_TYPE_SYNCML_NOTIFICATION = 0x44  # -> 0xC4

CONTENT_TYPE_NAMES: dict[int, str] = {
    0x00: "*/*",
    0x2D: "text/vnd.wap.si",
    CONTENT_TYPE_WAP_SIC: "application/vnd.wap.sic",
    0x2F: "text/vnd.wap.sl",
    CONTENT_TYPE_WAP_SLC: "application/vnd.wap.slc",
    CONTENT_TYPE_SYNCML_DM_WBXML: "application/vnd.syncml.dm+wbxml",
    CONTENT_TYPE_SYNCML_DM_XML: "application/vnd.syncml.dm+xml",
    CONTENT_TYPE_SYNCML_NOTIFICATION: "application/vnd.syncml.notification",
}

# Header field codes (WSP assigned numbers).
HEADER_ACCEPT = 0x00
HEADER_CONTENT_LENGTH = 0x0D
HEADER_USER_AGENT = 0x29
HEADER_X_WAP_APPLICATION_ID = 0x2F  # -> 0xAF
HEADER_PUSH_FLAG = 0x34
HEADER_ENCODING_VERSION = 0x43

HEADER_NAMES: dict[int, str] = {
    HEADER_ACCEPT: "Accept",
    HEADER_CONTENT_LENGTH: "Content-Length",
    HEADER_USER_AGENT: "User-Agent",
    HEADER_X_WAP_APPLICATION_ID: "X-Wap-Application-Id",
    HEADER_PUSH_FLAG: "Push-Flag",
    HEADER_ENCODING_VERSION: "Encoding-Version",
}

# Push application ids (OMNA registry, "x-wap-application:" prefix).
APPLICATION_ID_ANY = 0x00
APPLICATION_ID_WML_UA = 0x02  # the browser: target of SI and SL
APPLICATION_ID_SYNCML_DM = 0x07  # -> 0x87

APPLICATION_ID_NAMES: dict[int, str] = {
    APPLICATION_ID_ANY: "x-wap-application:*",
    0x01: "x-wap-application:push.sia",
    APPLICATION_ID_WML_UA: "x-wap-application:wml.ua",
    0x03: "x-wap-application:wta.ua",
    0x04: "x-wap-application:mms.ua",
    0x05: "x-wap-application:push.syncml",
    0x06: "x-wap-application:loc.ua",
    APPLICATION_ID_SYNCML_DM: "x-wap-application:syncml.dm",
}

MAX_SHORT_INTEGER = 0x7F
MAX_UINTVAR_OCTETS = 5


class WspDecodeError(ValueError):
    """The octets are not a well-formed WSP Push PDU."""


@dataclass(frozen=True)
class PushPdu:
    """A decoded Push PDU.

    ``content_type`` is the media type name, ``content_type_code`` the
    well-known code when the PDU used one. ``application_id`` is the
    X-Wap-Application-Id as a name when the code is known or the PDU used
    text, else as ``x-wap-application:<code>``. ``headers`` lists every
    header as (name, raw value octets).
    """

    transaction_id: int
    pdu_type: int
    content_type: str
    content_type_code: int | None
    application_id: str | None
    application_id_code: int | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytes = b""


def encode_uintvar(value: int) -> bytes:
    """Encode a WSP uintvar: 7 bits per octet, high bit set on all but the last."""
    if value < 0:
        raise ValueError(f"uintvar cannot encode negative value {value}")
    octets = [value & 0x7F]
    value >>= 7
    while value:
        octets.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(octets))


def decode_uintvar(data: bytes, offset: int) -> tuple[int, int]:
    """Decode a uintvar at ``offset``; return (value, offset after it)."""
    value = 0
    for index in range(MAX_UINTVAR_OCTETS):
        position = offset + index
        if position >= len(data):
            raise WspDecodeError(f"uintvar at offset {offset} is truncated")
        octet = data[position]
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            return value, position + 1
    raise WspDecodeError(
        f"uintvar at offset {offset} is longer than {MAX_UINTVAR_OCTETS} octets"
    )


def encode_short_integer(value: int) -> bytes:
    if not 0 <= value <= MAX_SHORT_INTEGER:
        raise ValueError(f"short integer {value} is outside 0..127")
    return bytes([0x80 | value])


def build_push_pdu(
    body: bytes,
    *,
    content_type: int,
    application_id: int | None,
    transaction_id: int = 0x01,
) -> bytes:
    """Build a connectionless Push PDU with only the content type and app id.

    Args:
        body: the entity, for example a Package 0 or an SL document.
        content_type: well-known content type code (see CONTENT_TYPE_*).
        application_id: well-known push application id, or None to omit the
            X-Wap-Application-Id header (the phone then delivers to the
            browser).
        transaction_id: TID octet, 0..255.
    """
    if not 0 <= transaction_id <= 0xFF:
        raise ValueError(f"transaction id {transaction_id} is outside 0..255")
    headers = encode_short_integer(content_type)
    if application_id is not None:
        headers += encode_short_integer(HEADER_X_WAP_APPLICATION_ID)
        headers += encode_short_integer(application_id)
    return (
        bytes([transaction_id, PDU_TYPE_PUSH])
        + encode_uintvar(len(headers))
        + headers
        + body
    )


def build_dm_notification_push(package0: bytes, *, transaction_id: int = 0x01) -> bytes:
    """Wrap a Package 0 for the DM client: content type 0xC4, app id 0xAF 0x87."""
    return build_push_pdu(
        package0,
        content_type=CONTENT_TYPE_SYNCML_NOTIFICATION,
        application_id=APPLICATION_ID_SYNCML_DM,
        transaction_id=transaction_id,
    )


def parse_push_pdu(data: bytes) -> PushPdu:
    """Decode a connectionless Push or ConfirmedPush PDU.

    Raises:
        WspDecodeError: the PDU type is not a push or a field is truncated.
    """
    if len(data) < 3:
        raise WspDecodeError(
            f"push PDU is {len(data)} octets long; at least 3 are required"
        )
    transaction_id, pdu_type = data[0], data[1]
    if pdu_type not in (PDU_TYPE_PUSH, PDU_TYPE_CONFIRMED_PUSH):
        raise WspDecodeError(
            f"PDU type 0x{pdu_type:02X} is not Push (0x06) or ConfirmedPush (0x07)"
        )
    headers_length, offset = decode_uintvar(data, 2)
    headers_end = offset + headers_length
    if headers_end > len(data):
        raise WspDecodeError(
            f"HeadersLen is {headers_length} but only "
            f"{len(data) - offset} octets follow"
        )

    content_type, content_type_code, offset = _decode_content_type(
        data, offset, headers_end
    )
    headers: list[tuple[str, bytes]] = []
    application_id: str | None = None
    application_id_code: int | None = None
    while offset < headers_end:
        name, name_code, value, offset = _decode_header(data, offset, headers_end)
        headers.append((name, value))
        if (
            name_code == HEADER_X_WAP_APPLICATION_ID
            or name.lower() == "x-wap-application-id"
        ):
            application_id, application_id_code = _decode_application_id(value)

    return PushPdu(
        transaction_id=transaction_id,
        pdu_type=pdu_type,
        content_type=content_type,
        content_type_code=content_type_code,
        application_id=application_id,
        application_id_code=application_id_code,
        headers=headers,
        body=data[headers_end:],
    )


def _decode_text(data: bytes, offset: int, end: int) -> tuple[str, int]:
    terminator = data.find(b"\x00", offset, end)
    if terminator == -1:
        raise WspDecodeError(f"text string at offset {offset} has no terminating NUL")
    raw = data[offset:terminator]
    # A Quote (0x7F) or Text-quote (0x22) octet may precede the text.
    if raw[:1] in (b"\x7f", b'"'):
        raw = raw[1:]
    return raw.decode("latin-1"), terminator + 1


def _decode_value_length(data: bytes, offset: int, end: int) -> tuple[int, int]:
    octet = data[offset]
    if octet < 0x1F:
        return octet, offset + 1
    if octet == 0x1F:
        return decode_uintvar(data, offset + 1)
    raise WspDecodeError(
        f"octet 0x{octet:02X} at offset {offset} is not a value length"
    )


def _decode_content_type(
    data: bytes, offset: int, end: int
) -> tuple[str, int | None, int]:
    if offset >= end:
        raise WspDecodeError("push PDU has no content type")
    octet = data[offset]
    if octet >= 0x80:
        code = octet & 0x7F
        return CONTENT_TYPE_NAMES.get(code, f"0x{code:02X}"), code, offset + 1
    if octet >= 0x20:
        name, offset = _decode_text(data, offset, end)
        return name, _code_for_name(name), offset

    # Content-general-form: Value-length Media-type [parameters].
    length, value_start = _decode_value_length(data, offset, end)
    value_end = value_start + length
    if value_end > end:
        raise WspDecodeError(f"content type at offset {offset} is truncated")
    media = data[value_start]
    if media >= 0x80:
        code = media & 0x7F
        return CONTENT_TYPE_NAMES.get(code, f"0x{code:02X}"), code, value_end
    if media < 0x20:
        # Long-integer well-known media: a length octet then the value.
        code = int.from_bytes(data[value_start + 1 : value_start + 1 + media], "big")
        return CONTENT_TYPE_NAMES.get(code, f"0x{code:02X}"), code, value_end
    name, _ = _decode_text(data, value_start, value_end)
    return name, _code_for_name(name), value_end


def _code_for_name(name: str) -> int | None:
    for code, known in CONTENT_TYPE_NAMES.items():
        if known == name.lower():
            return code
    return None


def _decode_header(
    data: bytes, offset: int, end: int
) -> tuple[str, int | None, bytes, int]:
    octet = data[offset]
    if octet >= 0x80:
        code = octet & 0x7F
        name = HEADER_NAMES.get(code, f"0x{code:02X}")
        value, offset = _read_field_value(data, offset + 1, end)
        return name, code, value, offset
    # Application-header: Token-text then Application-specific-value.
    name, offset = _decode_text(data, offset, end)
    text_end = data.find(b"\x00", offset, end)
    if text_end == -1:
        raise WspDecodeError(f"header {name!r} has no terminated value")
    return name, None, data[offset:text_end], text_end + 1


def _read_field_value(data: bytes, offset: int, end: int) -> tuple[bytes, int]:
    if offset >= end:
        raise WspDecodeError(f"header value at offset {offset} is missing")
    octet = data[offset]
    if octet >= 0x80:
        return data[offset : offset + 1], offset + 1
    if octet <= 0x1F:
        length, value_start = _decode_value_length(data, offset, end)
        value_end = value_start + length
        if value_end > end:
            raise WspDecodeError(f"header value at offset {offset} is truncated")
        return data[offset:value_end], value_end
    terminator = data.find(b"\x00", offset, end)
    if terminator == -1:
        raise WspDecodeError(
            f"text header value at offset {offset} has no terminating NUL"
        )
    return data[offset : terminator + 1], terminator + 1


def _decode_application_id(value: bytes) -> tuple[str, int | None]:
    if not value:
        raise WspDecodeError("X-Wap-Application-Id has an empty value")
    first = value[0]
    if first >= 0x80:
        code = first & 0x7F
    elif first <= 0x1E:
        # Long-integer form: a length octet, then the integer.
        code = int.from_bytes(value[1 : 1 + first], "big")
    else:
        name = value.rstrip(b"\x00").decode("latin-1")
        return name, _application_code_for_name(name)
    return APPLICATION_ID_NAMES.get(code, f"x-wap-application:{code}"), code


def _application_code_for_name(name: str) -> int | None:
    for code, known in APPLICATION_ID_NAMES.items():
        if known == name.lower():
            return code
    return None
