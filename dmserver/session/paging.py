"""Fit server commands into messages no larger than the client's MaxMsgSize.

OMA DM 1.2 lets a package span several messages: a message without Final
means more follows, and the client responds to it (with its Statuses,
or with Alert 1222 when it has nothing else to send). An Item too large for
the room left, or for MaxObjSize, travels as a large object: chunks in
successive messages, each a new command with MoreData except the last, Meta
Size (the total in decoded bytes) on the first chunk only; the client answers
213 per chunk and 200 (or 424 on a size mismatch) for the last.

Sizes are measured by encoding the real message, so they count the bytes on
the wire in XML or WBXML.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from ..syncml.model import Command, Item, Meta, command_from_json, command_to_json

# A chunk is only worth sending when this many data bytes fit; otherwise the
# command waits for the next message.
MIN_CHUNK_BYTES = 64


@dataclass
class Planned:
    """A server command waiting for a message, with what its Status means."""

    command: Command
    purpose: str | None = None
    # Item data read through Context.read_object instead of kept inline,
    # e.g. "package:12" for in-band delivery of a stored package.
    source: str | None = None
    size: int | None = None

    def to_json(self) -> dict:
        return {
            "command": command_to_json(self.command),
            "purpose": self.purpose,
            "source": self.source,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, data: dict) -> Planned:
        return cls(
            command=command_from_json(data["command"]),
            purpose=data.get("purpose"),
            source=data.get("source"),
            size=data.get("size"),
        )


@dataclass
class LargeObject:
    """Progress of a large object being sent in chunks."""

    planned: Planned
    offset: int = 0
    total: int = 0
    awaiting_ack: bool = False

    def to_json(self) -> dict:
        return {
            "planned": self.planned.to_json(),
            "offset": self.offset,
            "total": self.total,
            "awaiting_ack": self.awaiting_ack,
        }

    @classmethod
    def from_json(cls, data: dict) -> LargeObject:
        return cls(
            planned=Planned.from_json(data["planned"]),
            offset=data["offset"],
            total=data["total"],
            awaiting_ack=data.get("awaiting_ack", False),
        )


@dataclass
class FitResult:
    placed: list[tuple[Command, str | None]] = field(default_factory=list)
    outbox: list[Planned] = field(default_factory=list)
    large: LargeObject | None = None
    dropped: list[tuple[Planned, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.outbox and self.large is None


def _inline_bytes(planned: Planned) -> bytes | None:
    data = planned.command.items[0].data if planned.command.items else None
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    return None


def object_size(planned: Planned) -> int:
    if planned.source is not None:
        return planned.size or 0
    data = _inline_bytes(planned)
    return len(data) if data is not None else 0


def _chunk_command(planned: Planned, data: bytes, first: bool, last: bool, total: int) -> Command:
    template = planned.command
    item = template.items[0]
    meta = replace(item.meta) if item.meta else Meta()
    meta.size = total if first else None
    original = item.data
    value: str | bytes = data
    if isinstance(original, str):
        # Text objects are cut on byte boundaries that are valid UTF-8.
        value = data.decode("utf-8")
    chunk_item = Item(
        target=item.target,
        source=item.source,
        meta=None if meta.is_empty() else meta,
        data=value,
        more_data=not last,
    )
    return Command(
        name=template.name,
        cmd_id="",
        meta=template.meta,
        no_resp=template.no_resp,
        items=[chunk_item],
    )


def _utf8_boundary(data: bytes, end: int) -> int:
    """Move ``end`` back so data[:end] does not split a UTF-8 sequence."""
    while 0 < end < len(data) and (data[end] & 0xC0) == 0x80:
        end -= 1
    return end


class Fitter:
    """Place planned commands into one message under ``limit`` encoded bytes."""

    def __init__(
        self,
        measure: Callable[[list[Command]], int],
        limit: int | None,
        max_obj_size: int | None,
        read_object: Callable[[str, int, int], bytes] | None,
    ):
        self.measure = measure
        self.limit = limit
        self.max_obj_size = max_obj_size
        self.read_object = read_object

    def _fits(self, commands: list[Command]) -> bool:
        return self.limit is None or self.measure(commands) <= self.limit

    def _read(self, planned: Planned, offset: int, length: int, text: bool) -> bytes:
        if planned.source is not None:
            return self.read_object(planned.source, offset, length)
        data = _inline_bytes(planned)
        return data[offset : offset + length]

    def fit(
        self,
        fixed: list[Command],
        queue: list[Planned],
        large: LargeObject | None = None,
    ) -> FitResult:
        """Fill a message that already contains ``fixed`` (Statuses and such).

        NOTE: ``fixed`` is always sent whole. With a MaxMsgSize below about
        1,300 bytes in XML, the Statuses and a Chal alone can exceed it;
        splitting Statuses over messages is not implemented.
        """
        result = FitResult()
        current = list(fixed)
        pending = list(queue)

        if large is not None:
            chunk = self._next_chunk(current, large)
            if chunk is None:
                result.large = large
                result.outbox = pending
                return result
            current.append(chunk[0])
            result.placed.append(chunk)
            if large.offset < large.total:
                result.large = large
                result.outbox = pending
                return result

        while pending:
            planned = pending.pop(0)
            size = object_size(planned)
            if self.max_obj_size is not None and size > self.max_obj_size:
                result.dropped.append(
                    (planned, f"object of {size} bytes is above the client's MaxObjSize {self.max_obj_size}")
                )
                continue
            whole = None if planned.source is not None else planned.command
            if whole is not None and self._fits(current + [whole]):
                current.append(whole)
                result.placed.append((whole, planned.purpose))
                continue
            if planned.command.name in ("Replace", "Add") and len(planned.command.items) == 1 and size:
                large = LargeObject(planned=planned, offset=0, total=size)
                chunk = self._next_chunk(current, large)
                if chunk is not None:
                    current.append(chunk[0])
                    result.placed.append(chunk)
                if chunk is None or large.offset < large.total:
                    result.large = large
                    result.outbox = pending
                    return result
                continue
            if fixed and not self._fits([fixed[0], planned.command]):
                # Not even a message holding only the SyncHdr Status has room:
                # waiting would stall the session, so the command is dropped.
                result.dropped.append(
                    (planned, f"{planned.command.name} does not fit the client's MaxMsgSize {self.limit}")
                )
                continue
            result.outbox = [planned] + pending
            return result
        return result

    def _next_chunk(self, current: list[Command], large: LargeObject) -> tuple[Command, str | None] | None:
        """Put as many bytes of ``large`` as fit; None when not even MIN_CHUNK_BYTES do."""
        first = large.offset == 0
        remaining = large.total - large.offset
        text = isinstance(large.planned.command.items[0].data, str)

        def build(length: int) -> tuple[bytes, Command]:
            data = self._read(large.planned, large.offset, length, text)
            if text:
                data = data[: _utf8_boundary(data, len(data))]
            last = large.offset + len(data) >= large.total
            return data, _chunk_command(large.planned, data, first, last, large.total)

        if self.limit is None:
            best = remaining
        else:
            # Binary search for the largest chunk that fits.
            low, high, best = 1, remaining, 0
            while low <= high:
                middle = (low + high) // 2
                data, candidate = build(middle)
                if data and self._fits(current + [candidate]):
                    best = middle
                    low = middle + 1
                else:
                    high = middle - 1
        if best == 0 or (best < MIN_CHUNK_BYTES and best < remaining):
            return None
        data, command = build(best)
        large.offset += len(data)
        large.awaiting_ack = True
        last = large.offset >= large.total
        return command, (large.planned.purpose if last else "chunk")
