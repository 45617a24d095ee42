"""Service Loading and Service Indication documents in WBXML.

SL 1.0 (WAP-168-ServiceLoad, WBXML public id 0x06) makes the browser
fetch a URL. SI 1.0 (WAP-167-ServiceInd, public id 0x05) shows the user a
text with a link. Both are pushed to the browser in WSP with content types
0xB0 (application/vnd.wap.slc) and 0xAE (application/vnd.wap.sic).

Token tables from those specifications (code page 0):

SL  tag      0x05 sl
    attr     0x05 action="execute-low"  0x06 action="execute-high"
             0x07 action="cache"        0x08 href
             0x09 href="http://"        0x0A href="http://www."
             0x0B href="https://"       0x0C href="https://www."
SI  tags     0x05 si  0x06 indication  0x07 info  0x08 item
    attr     0x05..0x09 action="signal-none|low|medium|high" and "delete"
             0x0A created  0x0B href  0x0C href="http://"
             0x0D href="http://www."  0x0E href="https://"
             0x0F href="https://www."  0x10 si-expires  0x11 si-id
             0x12 class
Both: attribute values 0x85 ".com/", 0x86 ".edu/", 0x87 ".net/",
0x88 ".org/". SI dates (created, si-expires) are OPAQUE: the digits of
YYYYMMDDhhmmss packed two per octet, trailing zero octets dropped.

The encoder uses the longest href prefix token. Kannel 1.4.5's compiler
never uses the "www." prefix tokens, so its octets differ for such URLs;
both forms decode to the same document.

The parsers decode only what these documents use; the simulator follows
the URL they carry.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from dmserver.push import wsp

logger = logging.getLogger(__name__)

WBXML_VERSION_12 = 0x02
PUBLIC_ID_SI_10 = 0x05
PUBLIC_ID_SL_10 = 0x06
CHARSET_UTF8 = 0x6A

# Global WBXML tokens (WAP-192-WBXML, section 5.8.4).
SWITCH_PAGE = 0x00
END = 0x01
ENTITY = 0x02
STR_I = 0x03
LITERAL = 0x04
STR_T = 0x83
OPAQUE = 0xC3
TAG_HAS_ATTRIBUTES = 0x80
TAG_HAS_CONTENT = 0x40

MAX_DOCUMENT_OCTETS = 64 * 1024
MAX_DEPTH = 8

URL_VALUE_TOKENS = {0x85: ".com/", 0x86: ".edu/", 0x87: ".net/", 0x88: ".org/"}

SL_TAGS = {0x05: "sl"}
SL_ATTRIBUTE_STARTS = {
    0x05: ("action", "execute-low"),
    0x06: ("action", "execute-high"),
    0x07: ("action", "cache"),
    0x08: ("href", ""),
    0x09: ("href", "http://"),
    0x0A: ("href", "http://www."),
    0x0B: ("href", "https://"),
    0x0C: ("href", "https://www."),
}

SI_TAGS = {0x05: "si", 0x06: "indication", 0x07: "info", 0x08: "item"}
SI_ATTRIBUTE_STARTS = {
    0x05: ("action", "signal-none"),
    0x06: ("action", "signal-low"),
    0x07: ("action", "signal-medium"),
    0x08: ("action", "signal-high"),
    0x09: ("action", "delete"),
    0x0A: ("created", ""),
    0x0B: ("href", ""),
    0x0C: ("href", "http://"),
    0x0D: ("href", "http://www."),
    0x0E: ("href", "https://"),
    0x0F: ("href", "https://www."),
    0x10: ("si-expires", ""),
    0x11: ("si-id", ""),
    0x12: ("class", ""),
}

SL_ACTIONS = ("execute-low", "execute-high", "cache")
SI_ACTIONS = ("signal-none", "signal-low", "signal-medium", "signal-high", "delete")
_DATE_ATTRIBUTES = ("created", "si-expires")


class WbxmlDecodeError(ValueError):
    """The octets are not a well-formed SL or SI document."""


@dataclass(frozen=True)
class ServiceLoading:
    href: str
    action: str = "execute-low"


@dataclass(frozen=True)
class ServiceIndication:
    href: str | None
    text: str
    si_id: str | None = None
    action: str = "signal-medium"
    created: str | None = None
    si_expires: str | None = None


@dataclass
class _Element:
    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    children: list[_Element] = field(default_factory=list)
    text: str = ""


# -- encoding ---------------------------------------------------------------


def _header(public_id: int) -> bytes:
    # Version, public id, charset, empty string table: all single octets.
    return bytes([WBXML_VERSION_12, public_id, CHARSET_UTF8, 0x00])


def _inline_string(text: str) -> bytes:
    octets = text.encode("utf-8")
    if b"\x00" in octets:
        raise ValueError(f"text {text!r} contains a NUL character")
    return bytes([STR_I]) + octets + b"\x00"


def _encode_url_value(rest: str) -> bytes:
    """Encode the part of an href after its prefix token."""
    output = bytearray()
    pending = ""
    index = 0
    while index < len(rest):
        for token, fragment in URL_VALUE_TOKENS.items():
            if rest.startswith(fragment, index):
                if pending:
                    output += _inline_string(pending)
                    pending = ""
                output.append(token)
                index += len(fragment)
                break
        else:
            pending += rest[index]
            index += 1
    if pending:
        output += _inline_string(pending)
    return bytes(output)


def _encode_href(url: str, starts: dict[int, tuple[str, str]]) -> bytes:
    candidates = [
        (token, prefix)
        for token, (name, prefix) in starts.items()
        if name == "href" and url.startswith(prefix)
    ]
    token, prefix = max(candidates, key=lambda candidate: len(candidate[1]))
    return bytes([token]) + _encode_url_value(url[len(prefix) :])


def _token_for(starts: dict[int, tuple[str, str]], name: str, value: str) -> int:
    for token, pair in starts.items():
        if pair == (name, value):
            return token
    raise ValueError(f"no token for {name}={value!r}")


def build_sl(url: str, action: str = "execute-high") -> bytes:
    """Encode ``<sl href=url action=action/>`` as SL 1.0 WBXML.

    Raises:
        ValueError: the action is not one SL defines, or the URL contains NUL.
    """
    if action not in SL_ACTIONS:
        raise ValueError(f"SL action {action!r} is not one of {', '.join(SL_ACTIONS)}")
    body = bytes([0x05 | TAG_HAS_ATTRIBUTES])
    body += _encode_href(url, SL_ATTRIBUTE_STARTS)
    body += bytes([_token_for(SL_ATTRIBUTE_STARTS, "action", action), END])
    return _header(PUBLIC_ID_SL_10) + body


def encode_si_date(value: dt.datetime) -> bytes:
    """Encode a UTC datetime the way SI 1.0 section 8.2.2 packs dates."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    digits = value.strftime("%Y%m%d%H%M%S")
    octets = bytes(int(digits[i : i + 2], 16) for i in range(0, len(digits), 2))
    return octets.rstrip(b"\x00")


def build_si(
    url: str,
    text: str,
    si_id: str | None,
    *,
    action: str = "signal-medium",
    created: dt.datetime | None = None,
    si_expires: dt.datetime | None = None,
) -> bytes:
    """Encode an SI 1.0 document with one indication.

    Raises:
        ValueError: the action is not one SI defines, or a string has NUL.
    """
    if action not in SI_ACTIONS:
        raise ValueError(f"SI action {action!r} is not one of {', '.join(SI_ACTIONS)}")
    attributes = _encode_href(url, SI_ATTRIBUTE_STARTS)
    if si_id is not None:
        attributes += bytes([0x11]) + _inline_string(si_id)
    attributes += bytes([_token_for(SI_ATTRIBUTE_STARTS, "action", action)])
    for token, moment in ((0x0A, created), (0x10, si_expires)):
        if moment is not None:
            date = encode_si_date(moment)
            attributes += bytes([token, OPAQUE]) + wsp.encode_uintvar(len(date)) + date

    indication_token = 0x06 | TAG_HAS_ATTRIBUTES
    content = b""
    if text:
        indication_token |= TAG_HAS_CONTENT
        content = _inline_string(text) + bytes([END])
    body = bytes([0x05 | TAG_HAS_CONTENT, indication_token])
    body += attributes + bytes([END]) + content + bytes([END])
    return _header(PUBLIC_ID_SI_10) + body


def build_sl_push(
    url: str,
    action: str = "execute-high",
    *,
    application_id: int | None = None,
    transaction_id: int = 0x01,
) -> bytes:
    """Wrap an SL document in a WSP Push PDU (content type 0xB0)."""
    return wsp.build_push_pdu(
        build_sl(url, action),
        content_type=wsp.CONTENT_TYPE_WAP_SLC,
        application_id=application_id,
        transaction_id=transaction_id,
    )


def build_si_push(
    url: str,
    text: str,
    si_id: str | None,
    *,
    application_id: int | None = None,
    transaction_id: int = 0x01,
    action: str = "signal-medium",
) -> bytes:
    """Wrap an SI document in a WSP Push PDU (content type 0xAE)."""
    return wsp.build_push_pdu(
        build_si(url, text, si_id, action=action),
        content_type=wsp.CONTENT_TYPE_WAP_SIC,
        application_id=application_id,
        transaction_id=transaction_id,
    )


# -- decoding ---------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0
        self.strings = b""

    def octet(self) -> int:
        if self.offset >= len(self.data):
            raise WbxmlDecodeError(f"document ends early at offset {self.offset}")
        value = self.data[self.offset]
        self.offset += 1
        return value

    def uintvar(self) -> int:
        try:
            value, self.offset = wsp.decode_uintvar(self.data, self.offset)
        except wsp.WspDecodeError as exc:
            raise WbxmlDecodeError(str(exc)) from exc
        return value

    def inline_string(self) -> str:
        end = self.data.find(b"\x00", self.offset)
        if end == -1:
            raise WbxmlDecodeError(f"inline string at offset {self.offset} has no NUL")
        text = self.data[self.offset : end].decode("utf-8")
        self.offset = end + 1
        return text

    def table_string(self) -> str:
        index = self.uintvar()
        end = self.strings.find(b"\x00", index)
        if index >= len(self.strings) or end == -1:
            raise WbxmlDecodeError(f"string table reference {index} is invalid")
        return self.strings[index:end].decode("utf-8")

    def opaque(self) -> bytes:
        length = self.uintvar()
        value = self.data[self.offset : self.offset + length]
        if len(value) != length:
            raise WbxmlDecodeError("OPAQUE data runs past the end of the document")
        self.offset += length
        return value


def _decode_si_date(value: bytes) -> str:
    digits = value.hex().ljust(14, "0")
    return (
        f"{digits[0:4]}-{digits[4:6]}-{digits[6:8]}"
        f"T{digits[8:10]}:{digits[10:12]}:{digits[12:14]}Z"
    )


def _read_attributes(
    reader: _Reader, starts: dict[int, tuple[str, str]]
) -> dict[str, str]:
    attributes: dict[str, str] = {}
    name: str | None = None
    while True:
        token = reader.octet()
        if token == END:
            return attributes
        if token == SWITCH_PAGE:
            reader.octet()
        elif token < 0x80 and token in starts:
            name, prefix = starts[token]
            attributes[name] = prefix
        elif name is None:
            raise WbxmlDecodeError(
                f"attribute value token 0x{token:02X} before any name"
            )
        elif token == STR_I:
            attributes[name] += reader.inline_string()
        elif token == STR_T:
            attributes[name] += reader.table_string()
        elif token == OPAQUE:
            raw = reader.opaque()
            if name in _DATE_ATTRIBUTES:
                attributes[name] += _decode_si_date(raw)
            else:
                attributes[name] += raw.decode("utf-8")
        elif token in URL_VALUE_TOKENS:
            attributes[name] += URL_VALUE_TOKENS[token]
        else:
            raise WbxmlDecodeError(f"unknown attribute token 0x{token:02X}")


def _read_element(
    reader: _Reader,
    token: int,
    tags: dict[int, str],
    starts: dict[int, tuple[str, str]],
    depth: int,
) -> _Element:
    if depth > MAX_DEPTH:
        raise WbxmlDecodeError(f"elements nest deeper than {MAX_DEPTH}")
    identity = token & 0x3F
    if identity not in tags:
        raise WbxmlDecodeError(f"unknown tag token 0x{token:02X}")
    element = _Element(tags[identity])
    if token & TAG_HAS_ATTRIBUTES:
        element.attributes = _read_attributes(reader, starts)
    if not token & TAG_HAS_CONTENT:
        return element

    while True:
        child = reader.octet()
        if child == END:
            return element
        if child == SWITCH_PAGE:
            reader.octet()
        elif child == STR_I:
            element.text += reader.inline_string()
        elif child == STR_T:
            element.text += reader.table_string()
        elif child == ENTITY:
            element.text += chr(reader.uintvar())
        elif child == OPAQUE:
            element.text += reader.opaque().decode("utf-8")
        else:
            element.children.append(
                _read_element(reader, child, tags, starts, depth + 1)
            )


def _parse_document(
    data: bytes,
    public_id: int,
    tags: dict[int, str],
    starts: dict[int, tuple[str, str]],
) -> _Element:
    if len(data) > MAX_DOCUMENT_OCTETS:
        raise WbxmlDecodeError(
            f"document is {len(data)} octets; "
            f"at most {MAX_DOCUMENT_OCTETS} are accepted"
        )
    reader = _Reader(data)
    reader.octet()  # WBXML version: any 1.x is read the same way here.
    found_public_id = reader.uintvar()
    if found_public_id != public_id:
        raise WbxmlDecodeError(
            f"public id is 0x{found_public_id:02X}, expected 0x{public_id:02X}"
        )
    charset = reader.uintvar()
    if charset not in (CHARSET_UTF8, 0x04, 0x03):
        raise WbxmlDecodeError(f"charset MIBenum {charset} is not supported")
    table_length = reader.uintvar()
    reader.strings = data[reader.offset : reader.offset + table_length]
    reader.offset += table_length
    return _read_element(reader, reader.octet(), tags, starts, 0)


def parse_sl(data: bytes) -> ServiceLoading:
    """Decode an SL 1.0 WBXML document.

    Raises:
        WbxmlDecodeError: malformed document or no href.
    """
    root = _parse_document(data, PUBLIC_ID_SL_10, SL_TAGS, SL_ATTRIBUTE_STARTS)
    if root.name != "sl" or "href" not in root.attributes:
        raise WbxmlDecodeError("SL document has no sl element with an href")
    return ServiceLoading(
        href=root.attributes["href"],
        action=root.attributes.get("action", "execute-low"),
    )


def parse_si(data: bytes) -> ServiceIndication:
    """Decode an SI 1.0 WBXML document (its first indication).

    Raises:
        WbxmlDecodeError: malformed document or no indication element.
    """
    root = _parse_document(data, PUBLIC_ID_SI_10, SI_TAGS, SI_ATTRIBUTE_STARTS)
    indications = [child for child in root.children if child.name == "indication"]
    if root.name != "si" or not indications:
        raise WbxmlDecodeError("SI document has no indication element")
    indication = indications[0]
    attributes = indication.attributes
    return ServiceIndication(
        href=attributes.get("href"),
        text=indication.text.strip(),
        si_id=attributes.get("si-id"),
        action=attributes.get("action", "signal-medium"),
        created=attributes.get("created"),
        si_expires=attributes.get("si-expires"),
    )
