"""Decode and encode whole SyncML DM messages, XML or WBXML.

The HTTP layer calls :func:`decode_message` with the body and Content-Type
and replies with :func:`encode_message` in the encoding the request used.
When the Content-Type and the body disagree, the first byte decides: WBXML
starts with a version byte below 0x04, XML with ``<``, a BOM or whitespace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from .model import Message
from .names import (
    MEDIA_TYPE_DM_WBXML,
    MEDIA_TYPE_DM_XML,
    MEDIA_TYPE_SYNCML_WBXML,
    MEDIA_TYPE_SYNCML_XML,
    PUBLIC_ID_SYNCML_11,
    PUBLIC_ID_SYNCML_12,
)
from .tree import MessageFormatError, message_from_tree, message_to_tree
from .xmlcodec import XmlCodecError, parse_xml, serialize_xml

logger = logging.getLogger(__name__)


class Encoding(str, Enum):
    XML = "xml"
    WBXML = "wbxml"


XML_MEDIA_TYPES = {MEDIA_TYPE_DM_XML, MEDIA_TYPE_SYNCML_XML}
WBXML_MEDIA_TYPES = {MEDIA_TYPE_DM_WBXML, MEDIA_TYPE_SYNCML_WBXML}


class CodecError(ValueError):
    """A body that cannot be decoded; ``status`` is the SyncML status to send."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class DecodedMessage:
    message: Message
    encoding: Encoding
    media_type: str  # the media type to reply with


def media_type_base(content_type: str | None) -> str:
    """Return the media type without parameters, lower-cased."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def encoding_for_media_type(content_type: str | None) -> Encoding | None:
    base = media_type_base(content_type)
    if base in XML_MEDIA_TYPES:
        return Encoding.XML
    if base in WBXML_MEDIA_TYPES:
        return Encoding.WBXML
    return None


def sniff_encoding(body: bytes) -> Encoding:
    stripped = body.lstrip(b" \t\r\n")
    if stripped.startswith(b"<") or body.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        # UTF-8 and UTF-16 byte order marks start XML too.
        return Encoding.XML
    return Encoding.WBXML


def reply_media_type(request_media_type: str, encoding: Encoding) -> str:
    """Reply in the request's media type family, adjusted to the real encoding."""
    syncml_family = request_media_type in (MEDIA_TYPE_SYNCML_XML, MEDIA_TYPE_SYNCML_WBXML)
    if encoding is Encoding.XML:
        return MEDIA_TYPE_SYNCML_XML if syncml_family else MEDIA_TYPE_DM_XML
    return MEDIA_TYPE_SYNCML_WBXML if syncml_family else MEDIA_TYPE_DM_WBXML


def decode_tree(body: bytes, encoding: Encoding):
    if encoding is Encoding.XML:
        try:
            return parse_xml(body)
        except XmlCodecError as error:
            raise CodecError(str(error), error.status) from None
    from . import wbxml

    try:
        return wbxml.decode(body).root
    except wbxml.WbxmlError as error:
        raise CodecError(f"invalid WBXML: {error}", error.status) from None


def decode_message(body: bytes, content_type: str | None) -> DecodedMessage:
    """Decode a request body; raise CodecError with the SyncML status to send."""
    declared = encoding_for_media_type(content_type)
    if declared is None:
        raise CodecError(
            f"unsupported media type {media_type_base(content_type)!r}; "
            f"send {MEDIA_TYPE_DM_XML} or {MEDIA_TYPE_DM_WBXML}",
            415,
        )
    if not body:
        raise CodecError("empty body")
    actual = sniff_encoding(body)
    if actual is not declared:
        logger.warning(
            "Content-Type %s disagrees with the body, which starts like %s; decoding as %s",
            media_type_base(content_type),
            actual.value,
            actual.value,
        )
    root = decode_tree(body, actual)
    try:
        message = message_from_tree(root)
    except MessageFormatError as error:
        raise CodecError(str(error), error.status) from None
    return DecodedMessage(
        message=message,
        encoding=actual,
        media_type=reply_media_type(media_type_base(content_type), actual),
    )


def encode_message(message: Message, encoding: Encoding) -> bytes:
    root = message_to_tree(message)
    if encoding is Encoding.XML:
        return serialize_xml(root)
    from . import wbxml

    public_id = PUBLIC_ID_SYNCML_11 if message.dm_version == "1.1.2" else PUBLIC_ID_SYNCML_12
    return wbxml.encode(root, public_id=public_id)
