"""WDP over GSM SMS: user data headers, segmentation and reassembly.

A WSP push travels in 8-bit SMS whose user data header (3GPP TS 23.040,
section 9.2.3.24) carries 16-bit application port addressing (IEI 0x05,
destination 2948 for connectionless WAP push, source 9200 for the WAP
gateway's connectionless WSP port). A PDU longer than one SMS is split into
concatenated SMS (IEI 0x00: 8-bit reference, total, sequence), each segment
carrying the port element too.

Each SMS carries at most 140 octets of user data, UDH included. One segment then has
a 7-octet UDH (UDHL 0x06, ``05 04 0B 84 23 F0``) and 133 octets of PDU;
concatenated segments have a 12-octet UDH and 128 octets of PDU each.

``SmsSegment.udh`` includes the UDHL octet, the form Kannel's ``udh=``
parameter takes. The data coding scheme is not part of the user data. The
gateways send DCS 0x04 (8-bit data, no message class) by default, because
Kannel's wapbox also sends WAP push as 8-bit data without a message class.
They send 0xF5 (8-bit data, class 1) on request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MAX_USER_DATA_OCTETS = 140
MAX_CONCATENATED_SEGMENTS = 255

WDP_PORT_WAP_PUSH = 2948
WDP_PORT_WSP_CONNECTIONLESS = 9200

IEI_CONCATENATED_8BIT = 0x00
IEI_APPLICATION_PORT_8BIT = 0x04
IEI_APPLICATION_PORT_16BIT = 0x05
IEI_CONCATENATED_16BIT = 0x08

# TP-DCS values (3GPP TS 23.038, section 4). 0x04: general data coding,
# uncompressed, no message class, 8-bit data. 0xF5: data coding/message
# class group, 8-bit data, class 1 (ME-specific).
DCS_8BIT = 0x04
DCS_8BIT_CLASS1 = 0xF5

_PORT_ELEMENT_LENGTH = 2 + 4
_CONCAT_ELEMENT_LENGTH = 2 + 3


class SmsError(ValueError):
    """Invalid user data header or an inconsistent set of segments."""


@dataclass(frozen=True)
class SmsSegment:
    """One SMS: user data header (with its UDHL octet) and user data."""

    udh: bytes
    data: bytes


@dataclass(frozen=True)
class UserDataHeader:
    """The information elements of a UDH this module understands."""

    destination_port: int | None = None
    source_port: int | None = None
    reference: int | None = None
    total: int | None = None
    sequence: int | None = None


def _port_element(destination_port: int, source_port: int) -> bytes:
    return (
        bytes([IEI_APPLICATION_PORT_16BIT, 4])
        + destination_port.to_bytes(2, "big")
        + source_port.to_bytes(2, "big")
    )


def split_into_segments(
    wsp_pdu: bytes,
    reference: int,
    *,
    destination_port: int = WDP_PORT_WAP_PUSH,
    source_port: int = WDP_PORT_WSP_CONNECTIONLESS,
) -> list[SmsSegment]:
    """Split a WSP PDU into SMS segments with port and concatenation headers.

    Args:
        wsp_pdu: the complete WSP Push PDU.
        reference: concatenated SMS reference, 0..255. The sender must not
            reuse it for another message to the same phone while segments
            of this one may still be in flight.

    Raises:
        SmsError: the PDU needs more than 255 segments or is empty.
        ValueError: the reference is outside 0..255.
    """
    if not 0 <= reference <= 0xFF:
        raise ValueError(f"concatenation reference {reference} is outside 0..255")
    if not wsp_pdu:
        raise SmsError("cannot send an empty WSP PDU")

    port_element = _port_element(destination_port, source_port)
    single_capacity = MAX_USER_DATA_OCTETS - 1 - len(port_element)
    if len(wsp_pdu) <= single_capacity:
        udh = bytes([len(port_element)]) + port_element
        return [SmsSegment(udh=udh, data=wsp_pdu)]

    segment_capacity = single_capacity - _CONCAT_ELEMENT_LENGTH
    chunks = [
        wsp_pdu[start : start + segment_capacity]
        for start in range(0, len(wsp_pdu), segment_capacity)
    ]
    if len(chunks) > MAX_CONCATENATED_SEGMENTS:
        raise SmsError(
            f"WSP PDU of {len(wsp_pdu)} octets needs {len(chunks)} SMS; "
            f"at most {MAX_CONCATENATED_SEGMENTS} can be concatenated"
        )

    segments = []
    for sequence, chunk in enumerate(chunks, start=1):
        concat_element = bytes(
            [IEI_CONCATENATED_8BIT, 3, reference, len(chunks), sequence]
        )
        elements = port_element + concat_element
        segments.append(SmsSegment(udh=bytes([len(elements)]) + elements, data=chunk))
    logger.debug(
        "split WSP PDU of %d octets into %d SMS, reference %d",
        len(wsp_pdu),
        len(segments),
        reference,
    )
    return segments


def count_segments(wsp_pdu: bytes) -> int:
    """Return how many SMS ``split_into_segments`` makes of ``wsp_pdu``."""
    return len(split_into_segments(wsp_pdu, 0))


def parse_user_data_header(udh: bytes) -> UserDataHeader:
    """Decode the port and concatenation elements of a UDH (UDHL included).

    Unknown information elements are skipped.

    Raises:
        SmsError: the UDHL or an element length runs past the header.
    """
    if not udh:
        raise SmsError("user data header is empty")
    if udh[0] != len(udh) - 1:
        raise SmsError(f"UDHL is {udh[0]} but {len(udh) - 1} octets follow it")

    fields: dict[str, int] = {}
    offset = 1
    while offset < len(udh):
        if offset + 2 > len(udh):
            raise SmsError(f"information element at offset {offset} is truncated")
        identifier, length = udh[offset], udh[offset + 1]
        value = udh[offset + 2 : offset + 2 + length]
        if len(value) != length:
            raise SmsError(
                f"information element 0x{identifier:02X} has length {length} "
                f"but {len(value)} remain"
            )
        _read_element(identifier, value, fields)
        offset += 2 + length
    return UserDataHeader(**fields)


def _read_element(identifier: int, value: bytes, fields: dict[str, int]) -> None:
    if identifier == IEI_APPLICATION_PORT_16BIT and len(value) == 4:
        fields["destination_port"] = int.from_bytes(value[0:2], "big")
        fields["source_port"] = int.from_bytes(value[2:4], "big")
    elif identifier == IEI_APPLICATION_PORT_8BIT and len(value) == 2:
        fields["destination_port"] = value[0]
        fields["source_port"] = value[1]
    elif identifier == IEI_CONCATENATED_8BIT and len(value) == 3:
        fields["reference"], fields["total"], fields["sequence"] = value
    elif identifier == IEI_CONCATENATED_16BIT and len(value) == 4:
        fields["reference"] = int.from_bytes(value[0:2], "big")
        fields["total"], fields["sequence"] = value[2], value[3]


def reassemble(segments: Iterable[SmsSegment]) -> bytes:
    """Join the segments of one message back into the WSP PDU.

    Segments may arrive in any order. A single segment without a
    concatenation element is returned as is.

    Raises:
        SmsError: segments are missing, duplicated, belong to different
            references or totals, or a header is malformed.
    """
    parsed = [(parse_user_data_header(segment.udh), segment) for segment in segments]
    if not parsed:
        raise SmsError("no segments to reassemble")

    unconcatenated = [header for header, _ in parsed if header.total is None]
    if unconcatenated:
        if len(parsed) != 1:
            raise SmsError(
                f"{len(unconcatenated)} of {len(parsed)} segments lack a "
                f"concatenation element"
            )
        return parsed[0][1].data

    references = {header.reference for header, _ in parsed}
    totals = {header.total for header, _ in parsed}
    if len(references) != 1 or len(totals) != 1:
        raise SmsError(
            f"segments mix references {sorted(references)} or totals {sorted(totals)}"
        )
    total = totals.pop()
    by_sequence: dict[int, bytes] = {}
    for header, segment in parsed:
        if header.sequence in by_sequence:
            raise SmsError(f"segment {header.sequence} of {total} arrived twice")
        by_sequence[header.sequence] = segment.data
    expected = set(range(1, total + 1))
    if set(by_sequence) != expected:
        missing = sorted(expected - set(by_sequence))
        extra = sorted(set(by_sequence) - expected)
        raise SmsError(f"segments missing {missing} or out of range {extra} of {total}")
    return b"".join(by_sequence[sequence] for sequence in sorted(by_sequence))
