"""WBXML codec for SyncML DM messages.

This module owns the conversion between WBXML bytes (WAP Binary XML 1.0 to
1.3) and the lxml element tree that the XML codec also produces, the SyncML
and MetInf token tables, the decoder's resource limits, and
:func:`to_pretty_xml` for showing any message as indented XML.

Token tables: code page 0 is SyncML and code page 1 is MetInf. SyncML 1.2
(OMA-TS-SyncML_RepPro-V1_2) adds the page 0 tokens Field 0x35, Filter 0x36,
Record 0x37, FilterType 0x38, SourceParent 0x39, TargetParent 0x3A, Move
0x3B and Correlator 0x3C, and MetInf 1.2 adds FieldLevel 0x16, to the SyncML
1.1 tables. The values match libwbxml's src/wbxml_tables.c and the SyncML
Reference Toolkit's xlttags.c, and tests/test_wbxml_libwbxml.py checks them
against Debian's libwbxml 0.11.8 tools.

Tree conventions (see :mod:`dmserver.syncml.names`):

- code page 0 elements are in ``SYNCML:SYNCML1.1`` when the decoded
  ``SyncHdr/VerDTD`` is 1.1, otherwise in ``SYNCML:SYNCML1.2``. Callers take
  the protocol version from VerDTD and VerProto, never from the public
  identifier, because real clients send a 1.1 identifier with VerDTD 1.2;
- code page 1 elements are in ``syncml:metinf``;
- OPAQUE content becomes base64 text on an element that carries
  ``OPAQUE_ATTR="base64"``.

Strings that are not valid XML text (invalid bytes for the charset, or
characters such as C0 controls that XML 1.0 forbids) make the decoder raise
:class:`WbxmlError`. They are not kept as base64, so a caller never reads
base64 where it expects text. Binary payloads must travel as OPAQUE.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import sys
from dataclasses import dataclass

from lxml import etree

from dmserver.syncml.names import (
    METINF_NS,
    OPAQUE_ATTR,
    PUBLIC_ID_METINF_12,
    PUBLIC_ID_SYNCML_11,
    PUBLIC_ID_SYNCML_12,
    PUBLIC_ID_TEXT_SYNCML_11,
    SYNCML_NS_11,
    SYNCML_NS_12,
)

logger = logging.getLogger(__name__)

__all__ = [
    "UnknownPublicIdentifier",
    "WbxmlDocument",
    "WbxmlError",
    "WbxmlLimits",
    "decode",
    "encode",
    "looks_like_wbxml",
    "to_pretty_xml",
]

# Global tokens (WAP-192-WBXML, section 7.1).
SWITCH_PAGE = 0x00
END = 0x01
ENTITY = 0x02
STR_I = 0x03
LITERAL = 0x04
EXT_I_0 = 0x40
EXT_I_1 = 0x41
EXT_I_2 = 0x42
PI = 0x43
LITERAL_C = 0x44
EXT_T_0 = 0x80
EXT_T_1 = 0x81
EXT_T_2 = 0x82
STR_T = 0x83
LITERAL_A = 0x84
EXT_0 = 0xC0
EXT_1 = 0xC1
EXT_2 = 0xC2
OPAQUE = 0xC3
LITERAL_AC = 0xC4

# Bits of a tag token: bit 6 marks an element with content, bit 7 an
# attribute list, and the low six bits are the tag identity.
TAG_CONTENT = 0x40
TAG_ATTRIBUTES = 0x80
TAG_ID_MASK = 0x3F

_EXTENSION_TOKENS = frozenset(
    {EXT_I_0, EXT_I_1, EXT_I_2, EXT_T_0, EXT_T_1, EXT_T_2, EXT_0, EXT_1, EXT_2}
)

CODE_PAGE_SYNCML = 0
CODE_PAGE_METINF = 1

WBXML_VERSION_MIN = 0x00  # WBXML 1.0
WBXML_VERSION_MAX = 0x03  # WBXML 1.3
# WBXML 1.0 headers have no charset field, so the charset is implied.
WBXML_VERSION_1_0 = 0x00

# IANA MIBenum values of the charsets the codec reads and writes.
CHARSET_UNKNOWN = 0  # "unknown" in WBXML, decoded as UTF-8
CHARSET_US_ASCII = 3
CHARSET_ISO_8859_1 = 4
CHARSET_UTF_8 = 106
_CODECS = {
    CHARSET_US_ASCII: "ascii",
    CHARSET_ISO_8859_1: "latin-1",
    CHARSET_UTF_8: "utf-8",
}

MB_U_INT32_MAX_BYTES = 5
MB_U_INT32_MAX = 0xFFFF_FFFF

_KNOWN_PUBLIC_IDS = {
    PUBLIC_ID_SYNCML_11: "SyncML 1.1",
    PUBLIC_ID_SYNCML_12: "SyncML 1.2",
    PUBLIC_ID_METINF_12: "MetInf 1.2",
}

# SyncML 1.1 code page 0 (SyncML Representation Protocol 1.1). Token 0x30 is
# reserved.
_SYNCML_11_TAGS = {
    0x05: "Add",
    0x06: "Alert",
    0x07: "Archive",
    0x08: "Atomic",
    0x09: "Chal",
    0x0A: "Cmd",
    0x0B: "CmdID",
    0x0C: "CmdRef",
    0x0D: "Copy",
    0x0E: "Cred",
    0x0F: "Data",
    0x10: "Delete",
    0x11: "Exec",
    0x12: "Final",
    0x13: "Get",
    0x14: "Item",
    0x15: "Lang",
    0x16: "LocName",
    0x17: "LocURI",
    0x18: "Map",
    0x19: "MapItem",
    0x1A: "Meta",
    0x1B: "MsgID",
    0x1C: "MsgRef",
    0x1D: "NoResp",
    0x1E: "NoResults",
    0x1F: "Put",
    0x20: "Replace",
    0x21: "RespURI",
    0x22: "Results",
    0x23: "Search",
    0x24: "Sequence",
    0x25: "SessionID",
    0x26: "SftDel",
    0x27: "Source",
    0x28: "SourceRef",
    0x29: "Status",
    0x2A: "Sync",
    0x2B: "SyncBody",
    0x2C: "SyncHdr",
    0x2D: "SyncML",
    0x2E: "Target",
    0x2F: "TargetRef",
    0x31: "VerDTD",
    0x32: "VerProto",
    0x33: "NumberOfChanges",
    0x34: "MoreData",
}

# SyncML 1.2 code page 0 (OMA-TS-SyncML_RepPro-V1_2): the 1.1 tokens plus
# these.
_SYNCML_12_TAGS = {
    **_SYNCML_11_TAGS,
    0x35: "Field",
    0x36: "Filter",
    0x37: "Record",
    0x38: "FilterType",
    0x39: "SourceParent",
    0x3A: "TargetParent",
    0x3B: "Move",
    0x3C: "Correlator",
}

# MetInf 1.1 code page 1 (SyncML Meta-Information 1.1).
_METINF_11_TAGS = {
    0x05: "Anchor",
    0x06: "EMI",
    0x07: "Format",
    0x08: "FreeID",
    0x09: "FreeMem",
    0x0A: "Last",
    0x0B: "Mark",
    0x0C: "MaxMsgSize",
    0x0D: "Mem",
    0x0E: "MetInf",
    0x0F: "Next",
    0x10: "NextNonce",
    0x11: "SharedMem",
    0x12: "Size",
    0x13: "Type",
    0x14: "Version",
    0x15: "MaxObjSize",
}

# MetInf 1.2 code page 1 (OMA-TS-SyncML_MetaInfo-V1_2): 1.1 plus FieldLevel.
_METINF_12_TAGS = {**_METINF_11_TAGS, 0x16: "FieldLevel"}

# The decoder always reads with the 1.2 tables. They are a superset of 1.1,
# and clients label 1.2 messages with the 1.1 public identifier.
_DECODE_PAGES = {
    CODE_PAGE_SYNCML: _SYNCML_12_TAGS,
    CODE_PAGE_METINF: _METINF_12_TAGS,
}


def _encode_table(pages: dict[int, dict[int, str]]) -> dict[str, tuple[int, int]]:
    table: dict[str, tuple[int, int]] = {}
    for page, tags in pages.items():
        for token, name in tags.items():
            table[name] = (page, token)
    return table


_ENCODE_11 = _encode_table(
    {CODE_PAGE_SYNCML: _SYNCML_11_TAGS, CODE_PAGE_METINF: _METINF_11_TAGS}
)
_ENCODE_12 = _encode_table(_DECODE_PAGES)

_PAGE_NAMES = {CODE_PAGE_SYNCML: "SyncML", CODE_PAGE_METINF: "MetInf"}

# Characters outside the XML 1.0 Char production.
_INVALID_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class WbxmlLimits:
    """Resource limits that :func:`decode` enforces on untrusted input."""

    max_body: int = 1_048_576  # bytes of input
    max_depth: int = 32  # nesting depth of elements, the root is depth 1
    max_string: int = 262_144  # bytes in one string, and text in one element
    max_opaque: int = 1_048_576  # bytes in one OPAQUE, and in one element
    max_string_table: int = 65_536  # bytes of the string table
    max_elements: int = 20_000
    # Bytes of all string and OPAQUE content after STR_T references are
    # resolved. Repeated STR_T tokens can expand a small body a lot.
    max_content: int = 4_194_304


class WbxmlError(ValueError):
    """Malformed, unsupported or oversized WBXML."""

    status = 400  # SyncML status the server returns for the message


class UnknownPublicIdentifier(WbxmlError):
    """A WBXML public identifier that does not name a SyncML document type."""

    status = 415


@dataclass
class WbxmlDocument:
    """A decoded WBXML document: header fields and the element tree."""

    version: int  # WBXML version byte, 0x00..0x03 for 1.0..1.3
    public_id: int | str  # token number, or the literal from the string table
    charset: int  # IANA MIBenum, 106 is UTF-8
    root: etree._Element


class _Node:
    """An element read from WBXML, before its namespace is known."""

    __slots__ = (
        "name", "page", "offset", "items", "children", "text", "tail", "opaque"
    )

    def __init__(self, name: str, page: int, offset: int) -> None:
        self.name = name
        self.page = page
        self.offset = offset
        # Content in document order: _Node children, ("text", bytes) for
        # STR_I and STR_T, ("char", str) for ENTITY, ("opaque", bytes).
        self.items: list[object] = []
        self.children: list[_Node] = []
        self.text: str | None = None
        self.tail: str | None = None
        self.opaque: bytes | None = None


class _Decoder:
    def __init__(self, data: bytes, limits: WbxmlLimits) -> None:
        self.data = data
        self.limits = limits
        self.pos = 0
        self.codec = "utf-8"
        self.string_table = b""
        self.content_total = 0
        self.element_count = 0

    # -- primitives -------------------------------------------------------

    def fail(self, message: str, offset: int | None = None) -> WbxmlError:
        where = self.pos if offset is None else offset
        return WbxmlError(f"invalid WBXML at offset {where}: {message}")

    def read_byte(self, field: str) -> int:
        if self.pos >= len(self.data):
            raise self.fail(f"truncated input, expected {field}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def read_mb_u_int32(self, field: str) -> int:
        start = self.pos
        value = 0
        for _ in range(MB_U_INT32_MAX_BYTES):
            if self.pos >= len(self.data):
                raise self.fail(f"truncated mb_u_int32 for {field}", start)
            octet = self.data[self.pos]
            self.pos += 1
            value = (value << 7) | (octet & 0x7F)
            if not octet & 0x80:
                if value > MB_U_INT32_MAX:
                    raise self.fail(f"mb_u_int32 for {field} overflows 32 bits", start)
                return value
        raise self.fail(
            f"mb_u_int32 for {field} is longer than {MB_U_INT32_MAX_BYTES} bytes",
            start,
        )

    def read_bytes(self, length: int, field: str) -> bytes:
        end = self.pos + length
        if end > len(self.data):
            raise self.fail(
                f"truncated input, {field} needs {length} bytes but only "
                f"{len(self.data) - self.pos} remain"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def read_inline_string(self) -> bytes:
        start = self.pos
        limit = self.limits.max_string
        end = self.data.find(b"\x00", start, start + limit + 1)
        if end < 0:
            if len(self.data) - start > limit:
                raise self.fail(
                    f"STR_I string is longer than the limit of {limit} bytes", start
                )
            raise self.fail("truncated input, STR_I string has no terminating NUL")
        self.pos = end + 1
        return self.data[start:end]

    def table_string(self, offset: int, field: str) -> bytes:
        """Return the string at ``offset`` in the string table.

        The string ends at a NUL or at the end of the table, because some
        clients (the Android OMA-DM client among them) omit the final NUL.
        """
        table = self.string_table
        if offset >= len(table):
            raise self.fail(
                f"string table offset {offset} for {field} is out of range, "
                f"the table has {len(table)} bytes"
            )
        end = table.find(b"\x00", offset)
        if end < 0:
            end = len(table)
        if end - offset > self.limits.max_string:
            raise self.fail(
                f"string table entry for {field} is longer than the limit of "
                f"{self.limits.max_string} bytes"
            )
        return table[offset:end]

    def count_content(self, length: int) -> None:
        self.content_total += length
        if self.content_total > self.limits.max_content:
            raise self.fail(
                f"decoded content exceeds the limit of {self.limits.max_content} bytes"
            )

    def to_text(self, raw: bytes, field: str, offset: int) -> str:
        try:
            text = raw.decode(self.codec)
        except UnicodeDecodeError as exc:
            raise self.fail(
                f"{field} is not valid {self.codec}: {exc.reason} at byte {exc.start}",
                offset,
            ) from None
        bad = _INVALID_XML_CHAR.search(text)
        if bad:
            raise self.fail(
                f"{field} contains U+{ord(bad.group()):04X}, "
                "which XML text cannot hold",
                offset,
            )
        return text

    # -- header -----------------------------------------------------------

    def read_header(self) -> tuple[int, int | str, int]:
        version = self.read_byte("the WBXML version")
        if not WBXML_VERSION_MIN <= version <= WBXML_VERSION_MAX:
            raise self.fail(
                f"unsupported WBXML version byte 0x{version:02X}, "
                "expected 0x00 to 0x03 (WBXML 1.0 to 1.3)",
                0,
            )

        public_id = self.read_mb_u_int32("the public identifier")
        literal_index = None
        if public_id == 0:
            literal_index = self.read_mb_u_int32("the public identifier index")
        elif public_id not in _KNOWN_PUBLIC_IDS:
            raise UnknownPublicIdentifier(
                f"unknown WBXML public identifier 0x{public_id:04X}: SyncML DM "
                "uses 0x1201 (SyncML 1.2), 0x0FD3 (SyncML 1.1) or a literal "
                "naming SyncML"
            )

        if version == WBXML_VERSION_1_0:
            charset = CHARSET_UTF_8
        else:
            charset = self.read_mb_u_int32("the charset")
        self.codec = self.codec_for(charset)

        table_length = self.read_mb_u_int32("the string table length")
        if table_length > self.limits.max_string_table:
            raise self.fail(
                f"string table length {table_length} exceeds the limit of "
                f"{self.limits.max_string_table} bytes"
            )
        self.string_table = self.read_bytes(table_length, "the string table")

        if literal_index is not None:
            public_id = self.read_public_id_literal(literal_index)
        return version, public_id, charset

    def codec_for(self, charset: int) -> str:
        if charset == CHARSET_UNKNOWN:
            logger.debug("WBXML charset 0 (unknown) is decoded as UTF-8")
            return _CODECS[CHARSET_UTF_8]
        if charset not in _CODECS:
            raise self.fail(
                f"unsupported charset MIBenum {charset}, expected 106 (UTF-8), "
                "4 (ISO-8859-1), 3 (US-ASCII) or 0 (unknown, read as UTF-8)"
            )
        return _CODECS[charset]

    def read_public_id_literal(self, index: int) -> str:
        raw = self.table_string(index, "the public identifier")
        literal = self.to_text(raw, "the public identifier", self.pos)
        if "syncml" not in literal.lower():
            raise UnknownPublicIdentifier(
                f"unknown WBXML public identifier {literal!r}: SyncML DM uses "
                f"{PUBLIC_ID_TEXT_SYNCML_11!r} or its 1.2 form"
            )
        return literal

    # -- body -------------------------------------------------------------

    def read_body(self) -> _Node:
        page = CODE_PAGE_SYNCML
        stack: list[_Node] = []
        root: _Node | None = None
        while root is None or stack:
            offset = self.pos
            if offset >= len(self.data):
                if root is None:
                    raise self.fail("truncated input, the body has no root element")
                raise self.fail(
                    f"truncated input, element {stack[-1].name} is not closed"
                )
            token = self.data[offset]
            self.pos += 1
            if token == SWITCH_PAGE:
                page = self.read_byte("a code page number")
                if page not in _DECODE_PAGES:
                    raise self.fail(
                        f"SWITCH_PAGE to unsupported code page {page}, SyncML "
                        "DM uses only code pages 0 (SyncML) and 1 (MetInf)",
                        offset,
                    )
            elif token == END:
                if not stack:
                    raise self.fail("END token outside any element", offset)
                self.finish(stack.pop())
            elif token in (STR_I, STR_T, ENTITY, OPAQUE):
                if not stack:
                    raise self.fail("content outside the root element", offset)
                stack[-1].items.append(self.read_content(token, offset))
            elif token == PI:
                raise self.fail(
                    "processing instructions (PI) are not supported", offset
                )
            elif token in _EXTENSION_TOKENS:
                raise self.fail(
                    f"extension token 0x{token:02X} is not used by SyncML", offset
                )
            else:
                node, has_content = self.read_tag(token, page, offset, len(stack) + 1)
                if stack:
                    stack[-1].items.append(node)
                else:
                    root = node
                if has_content:
                    stack.append(node)
                else:
                    self.finish(node)
        if self.pos != len(self.data):
            raise self.fail(
                f"{len(self.data) - self.pos} bytes of unexpected data after the "
                "root element"
            )
        return root

    def read_tag(
        self, token: int, page: int, offset: int, depth: int
    ) -> tuple[_Node, bool]:
        if depth > self.limits.max_depth:
            raise self.fail(
                f"element nesting depth exceeds the limit of {self.limits.max_depth}",
                offset,
            )
        self.element_count += 1
        if self.element_count > self.limits.max_elements:
            raise self.fail(
                f"element count exceeds the limit of {self.limits.max_elements}",
                offset,
            )
        tag_id = token & TAG_ID_MASK
        if tag_id == LITERAL:
            index = self.read_mb_u_int32("a LITERAL tag name")
            raw = self.table_string(index, "a LITERAL tag name")
            name = self.to_text(raw, "a LITERAL tag name", offset)
            try:
                etree.QName(None, name)
            except ValueError:
                raise self.fail(
                    f"LITERAL tag name {name!r} is not an XML name", offset
                ) from None
        else:
            name = _DECODE_PAGES[page].get(tag_id)
            if name is None:
                raise self.fail(
                    f"unknown tag token 0x{tag_id:02X} in code page {page} "
                    f"({_PAGE_NAMES[page]})",
                    offset,
                )
        if token & TAG_ATTRIBUTES:
            raise self.fail(
                f"element {name} has an attribute list, but SyncML defines no "
                "attributes",
                offset,
            )
        return _Node(name, page, offset), bool(token & TAG_CONTENT)

    def read_content(self, token: int, offset: int) -> tuple[str, object]:
        if token == STR_I:
            raw = self.read_inline_string()
            self.count_content(len(raw))
            return ("text", raw)
        if token == STR_T:
            index = self.read_mb_u_int32("a STR_T reference")
            raw = self.table_string(index, "a STR_T reference")
            self.count_content(len(raw))
            return ("text", raw)
        if token == ENTITY:
            code = self.read_mb_u_int32("an ENTITY character")
            if code > sys.maxunicode or _INVALID_XML_CHAR.match(chr(code)):
                raise self.fail(
                    f"ENTITY 0x{code:X} is not a character XML text can hold", offset
                )
            char = chr(code)
            self.count_content(1)
            return ("char", char)
        length = self.read_mb_u_int32("an OPAQUE length")
        if length > self.limits.max_opaque:
            raise self.fail(
                f"OPAQUE length {length} exceeds the limit of "
                f"{self.limits.max_opaque} bytes",
                offset,
            )
        payload = self.read_bytes(length, "OPAQUE data")
        self.count_content(length)
        return ("opaque", payload)

    def finish(self, node: _Node) -> None:
        """Turn the content items of a closed element into text and children."""
        has_opaque = any(
            isinstance(item, tuple) and item[0] == "opaque" for item in node.items
        )
        if has_opaque:
            self.finish_opaque(node)
            return
        pending: list[tuple[str, object]] = []
        previous: _Node | None = None
        for item in node.items:
            if isinstance(item, _Node):
                self.assign_text(node, previous, pending)
                pending = []
                node.children.append(item)
                previous = item
            else:
                pending.append(item)
        self.assign_text(node, previous, pending)
        node.items = []

    def finish_opaque(self, node: _Node) -> None:
        if any(isinstance(item, _Node) for item in node.items):
            raise self.fail(
                f"element {node.name} mixes OPAQUE data with child elements",
                node.offset,
            )
        # Strings next to OPAQUE in one element join it as their bytes.
        parts = []
        for kind, value in node.items:
            if kind == "char":
                try:
                    value = value.encode(self.codec)
                except UnicodeEncodeError:
                    raise self.fail(
                        f"ENTITY in element {node.name} cannot join OPAQUE data "
                        f"in charset {self.codec}",
                        node.offset,
                    ) from None
            parts.append(value)
        payload = b"".join(parts)
        if len(payload) > self.limits.max_opaque:
            raise self.fail(
                f"OPAQUE data in element {node.name} exceeds the limit of "
                f"{self.limits.max_opaque} bytes",
                node.offset,
            )
        node.opaque = payload
        node.items = []

    def assign_text(
        self, node: _Node, previous: _Node | None, pieces: list[tuple[str, object]]
    ) -> None:
        if not pieces:
            return
        text_parts: list[str] = []
        raw_run: list[bytes] = []
        size = 0
        for kind, value in pieces:
            if kind == "text":
                raw_run.append(value)
                size += len(value)
                continue
            if raw_run:
                text_parts.append(self.run_to_text(node, raw_run))
                raw_run = []
            text_parts.append(value)
            size += 1
        if raw_run:
            text_parts.append(self.run_to_text(node, raw_run))
        if size > self.limits.max_string:
            raise self.fail(
                f"text in element {node.name} exceeds the limit of "
                f"{self.limits.max_string} bytes",
                node.offset,
            )
        text = "".join(text_parts)
        if previous is None:
            node.text = text
        else:
            previous.tail = text

    def run_to_text(self, node: _Node, run: list[bytes]) -> str:
        # Adjacent string tokens are joined before decoding, so a multi-byte
        # UTF-8 sequence split across two tokens still decodes.
        return self.to_text(b"".join(run), f"text in element {node.name}", node.offset)


def _syncml_namespace(root: _Node, public_id: int | str) -> str:
    """Choose the code page 0 namespace from SyncHdr/VerDTD.

    The public identifier decides only when VerDTD is missing or is neither
    1.1 nor 1.2.
    """
    for header in root.children:
        if header.name != "SyncHdr":
            continue
        for field in header.children:
            if field.name == "VerDTD" and field.text is not None:
                version = field.text.strip()
                if version == "1.1":
                    return SYNCML_NS_11
                if version == "1.2":
                    return SYNCML_NS_12
        break
    if public_id in (PUBLIC_ID_SYNCML_11, PUBLIC_ID_TEXT_SYNCML_11):
        return SYNCML_NS_11
    return SYNCML_NS_12


def _build_tree(root: _Node, syncml_ns: str) -> etree._Element:
    namespaces = {CODE_PAGE_SYNCML: syncml_ns, CODE_PAGE_METINF: METINF_NS}

    def make(node: _Node, parent: etree._Element | None) -> etree._Element:
        namespace = namespaces[node.page]
        tag = f"{{{namespace}}}{node.name}"
        # lxml reuses a declaration already in scope, so passing nsmap on
        # every element declares a namespace only where it changes.
        nsmap = {None: namespace}
        if parent is None:
            element = etree.Element(tag, nsmap=nsmap)
        else:
            element = etree.SubElement(parent, tag, nsmap=nsmap)
        if node.opaque is not None:
            element.set(OPAQUE_ATTR, "base64")
            element.text = base64.b64encode(node.opaque).decode("ascii")
        else:
            element.text = node.text
        element.tail = node.tail
        return element

    top = make(root, None)
    stack = [(top, iter(root.children))]
    while stack:
        parent, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            continue
        stack.append((make(child, parent), iter(child.children)))
    return top


def decode(data: bytes, limits: WbxmlLimits = WbxmlLimits()) -> WbxmlDocument:
    """Decode a WBXML SyncML DM message into an lxml element tree.

    Raises WbxmlError (status 400) for malformed or oversized input and
    UnknownPublicIdentifier (status 415) for a document type that is not
    SyncML.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode() needs bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > limits.max_body:
        raise WbxmlError(
            f"WBXML body of {len(data)} bytes exceeds the limit of "
            f"{limits.max_body} bytes"
        )
    decoder = _Decoder(data, limits)
    version, public_id, charset = decoder.read_header()
    root = decoder.read_body()
    tree = _build_tree(root, _syncml_namespace(root, public_id))
    return WbxmlDocument(
        version=version, public_id=public_id, charset=charset, root=tree
    )


# -- encoder ---------------------------------------------------------------


def _mb_u_int32(value: int) -> bytes:
    if not 0 <= value <= MB_U_INT32_MAX:
        raise WbxmlError(f"value {value} does not fit in an mb_u_int32")
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


class _Encoder:
    def __init__(self, table: dict[str, tuple[int, int]], codec: str, label: str):
        self.table = table
        self.codec = codec
        self.label = label
        self.out = bytearray()
        self.page = CODE_PAGE_SYNCML

    def write_text(self, text: str | None) -> None:
        if not text:
            return
        try:
            encoded = text.encode(self.codec)
        except UnicodeEncodeError:
            self.write_text_with_entities(text)
            return
        self.out.append(STR_I)
        self.out += encoded
        self.out.append(0)

    def write_text_with_entities(self, text: str) -> None:
        # Characters the charset cannot encode are written as ENTITY tokens.
        run: list[str] = []
        for char in text:
            try:
                char.encode(self.codec)
            except UnicodeEncodeError:
                self.write_text("".join(run))
                run = []
                self.out.append(ENTITY)
                self.out += _mb_u_int32(ord(char))
            else:
                run.append(char)
        self.write_text("".join(run))

    def start(self, element: etree._Element) -> bool:
        """Write the tag token and text of ``element``, tell if it has content."""
        name = etree.QName(element).localname
        entry = self.table.get(name)
        if entry is None:
            raise WbxmlError(f"element {name} has no token in the {self.label} tables")
        for attribute in element.attrib:
            if attribute != OPAQUE_ATTR:
                raise WbxmlError(
                    f"attribute {attribute} on element {name} cannot be encoded, "
                    "SyncML defines no attributes"
                )
        page, token = entry
        if page != self.page:
            self.out += bytes((SWITCH_PAGE, page))
            self.page = page
        if element.get(OPAQUE_ATTR) is not None:
            self.write_opaque(element, name, token)
            return True
        has_content = bool(element.text) or len(element) > 0
        self.out.append(token | TAG_CONTENT if has_content else token)
        if has_content:
            self.write_text(element.text)
        return has_content

    def write_opaque(self, element: etree._Element, name: str, token: int) -> None:
        if len(element):
            raise WbxmlError(f"element {name} is marked OPAQUE but has children")
        try:
            payload = base64.b64decode(element.text or "", validate=True)
        except binascii.Error as exc:
            raise WbxmlError(
                f"element {name} is marked OPAQUE but its text is not base64: {exc}"
            ) from None
        self.out.append(token | TAG_CONTENT)
        self.out.append(OPAQUE)
        self.out += _mb_u_int32(len(payload))
        self.out += payload


def encode(
    root: etree._Element | etree._ElementTree,
    *,
    public_id: int | str = PUBLIC_ID_SYNCML_12,
    version: int = 0x02,
    charset: int = CHARSET_UTF_8,
) -> bytes:
    """Encode an element tree as a WBXML SyncML DM message.

    Elements are matched to tokens by local name, namespaces are ignored.
    The SyncML 1.1 tables are used when ``public_id`` is the SyncML 1.1
    token or text, and the 1.2 tables otherwise, so encoding a 1.2-only
    element such as Correlator under a 1.1 identifier raises WbxmlError. Text
    is written as STR_I, with ENTITY for characters the charset cannot
    encode, and elements carrying OPAQUE_ATTR are written as OPAQUE.
    """
    if isinstance(root, etree._ElementTree):
        root = root.getroot()
    if not WBXML_VERSION_MIN <= version <= WBXML_VERSION_MAX:
        raise WbxmlError(f"unsupported WBXML version byte 0x{version:02X}")
    if charset not in _CODECS:
        raise WbxmlError(
            f"unsupported charset MIBenum {charset}, expected 106, 4 or 3"
        )
    if version == WBXML_VERSION_1_0 and charset != CHARSET_UTF_8:
        raise WbxmlError("WBXML 1.0 has no charset field, so it needs UTF-8")
    codec = _CODECS[charset]
    if public_id in (PUBLIC_ID_SYNCML_11, PUBLIC_ID_TEXT_SYNCML_11):
        table, label = _ENCODE_11, "SyncML 1.1"
    else:
        table, label = _ENCODE_12, "SyncML 1.2"

    header = bytearray((version,))
    string_table = b""
    if isinstance(public_id, str):
        header += _mb_u_int32(0) + _mb_u_int32(0)
        try:
            string_table = public_id.encode(codec) + b"\x00"
        except UnicodeEncodeError:
            raise WbxmlError(
                f"public identifier {public_id!r} cannot be encoded in {codec}"
            ) from None
    else:
        if public_id <= 0:
            raise WbxmlError(f"invalid public identifier token {public_id}")
        header += _mb_u_int32(public_id)
    if version != WBXML_VERSION_1_0:
        header += _mb_u_int32(charset)
    header += _mb_u_int32(len(string_table)) + string_table

    encoder = _Encoder(table, codec, label)
    _write_element_tree(encoder, root)
    return bytes(header + encoder.out)


def _write_element_tree(encoder: _Encoder, root: etree._Element) -> None:
    """Write ``root`` and its descendants in document order without recursion."""
    if not isinstance(root.tag, str):
        raise WbxmlError("the root of a WBXML document must be an element")
    # Each stack entry is an open element with content and its child iterator.
    stack: list[tuple[etree._Element, object]] = []
    if encoder.start(root):
        stack.append((root, _content_children(root)))
    while stack:
        element, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            encoder.out.append(END)
            if stack:
                encoder.write_text(element.tail)
            continue
        if not isinstance(child.tag, str):
            # Comments and processing instructions are dropped, but their
            # tail text is content of the parent.
            encoder.write_text(child.tail)
            continue
        if encoder.start(child):
            stack.append((child, _content_children(child)))
        else:
            encoder.write_text(child.tail)


def _content_children(element: etree._Element):
    if element.get(OPAQUE_ATTR) is not None:
        return iter(())
    return iter(element)


# -- helpers for callers -----------------------------------------------------

_XML_FIRST_BYTES = frozenset(b"< \t\r\n\xef\xfe\xff")


def looks_like_wbxml(data: bytes) -> bool:
    """Tell WBXML from XML by the first bytes.

    XML starts with ``<``, a byte order mark or whitespace (UTF-16 XML
    without a BOM starts with 00 3C), and WBXML with a version byte from
    0x00 to 0x03.
    """
    if not data:
        return False
    first = data[0]
    if first in _XML_FIRST_BYTES:
        return False
    if data[:2] == b"\x00<":
        return False
    return WBXML_VERSION_MIN <= first <= WBXML_VERSION_MAX


def _safe_xml_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=True,
    )


def to_pretty_xml(data: bytes) -> str:
    """Render a SyncML DM message, XML or WBXML, as indented XML text.

    WBXML input is decoded with the default limits and preceded by a comment
    giving its header fields. OPAQUE content is shown as base64 in an element
    with the ``wbxml:opaque`` attribute. XML input is parsed without loading
    DTDs, resolving entities or touching the network. Raises WbxmlError for
    invalid WBXML and ValueError for invalid XML.
    """
    if looks_like_wbxml(data):
        document = decode(data)
        root = document.root
        etree.cleanup_namespaces(
            root, top_nsmap={"wbxml": etree.QName(OPAQUE_ATTR).namespace}
        )
        major = (document.version >> 4) + 1
        minor = document.version & 0x0F
        public_id = document.public_id
        if isinstance(public_id, int):
            label = _KNOWN_PUBLIC_IDS.get(public_id, "unknown")
            public_id_text = f"0x{public_id:04X} ({label})"
        else:
            public_id_text = ascii(public_id).replace("--", "- -")
        header = (
            f"<!-- WBXML {major}.{minor}, public identifier {public_id_text}, "
            f"charset {document.charset} -->\n"
        )
        return header + etree.tostring(root, pretty_print=True, encoding="unicode")
    try:
        root = etree.fromstring(data, _safe_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"invalid XML message: {exc}") from None
    return etree.tostring(root, pretty_print=True, encoding="unicode")
