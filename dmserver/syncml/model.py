"""SyncML DM message model shared by the server, the simulator and the codecs.

A :class:`Message` is one SyncML message: a :class:`SyncHdr`, the commands of
the SyncBody in order, and the Final flag. Every command is a :class:`Command`
whose ``name`` is the element name (Alert, Status, Results, Get, Replace, Add,
Delete, Copy, Exec, Atomic, Sequence); fields that a command type does not use
stay ``None``. One class for all commands keeps the codecs table-driven.

Binary Item data is ``bytes``; text data is ``str``. The codecs decide how
bytes travel (OPAQUE in WBXML, base64 text in XML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

# Commands that carry a Status reply from the receiver.
COMMANDS_WITHOUT_STATUS = frozenset({"Status", "Results"})
CONTAINER_COMMANDS = frozenset({"Atomic", "Sequence"})


@dataclass
class Meta:
    """MetInf values used in SyncML DM (syncml:metinf namespace)."""

    format: str | None = None
    type: str | None = None
    size: int | None = None
    next_nonce: str | None = None  # base64 text as it appears on the wire
    max_msg_size: int | None = None
    max_obj_size: int | None = None
    mark: str | None = None
    version: str | None = None
    emi: str | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in self.__dict__.values())


@dataclass
class Cred:
    """Credentials: Meta Type is the scheme (syncml:auth-md5, ...), Data the value."""

    type: str
    data: str
    format: str | None = "b64"


@dataclass
class Chal:
    """Authentication challenge carried by a Status."""

    type: str
    format: str | None = "b64"
    next_nonce: str | None = None  # base64 text


@dataclass
class Item:
    target: str | None = None
    source: str | None = None
    meta: Meta | None = None
    data: str | bytes | None = None
    more_data: bool = False
    target_name: str | None = None
    source_name: str | None = None


@dataclass
class Command:
    """One SyncBody command. ``name`` is the element name from the DTD."""

    name: str
    cmd_id: str
    items: list[Item] = field(default_factory=list)
    meta: Meta | None = None
    no_resp: bool = False
    cred: Cred | None = None
    # Alert code, or Status code.
    data: str | None = None
    correlator: str | None = None
    # Status and Results only.
    msg_ref: str | None = None
    cmd_ref: str | None = None
    cmd: str | None = None
    target_refs: list[str] = field(default_factory=list)
    source_refs: list[str] = field(default_factory=list)
    chal: Chal | None = None
    # Atomic and Sequence only.
    commands: list[Command] = field(default_factory=list)

    def walk(self) -> Iterator[Command]:
        """Yield this command and, for Atomic and Sequence, every nested one."""
        yield self
        for child in self.commands:
            yield from child.walk()


@dataclass
class SyncHdr:
    ver_dtd: str = "1.2"
    ver_proto: str = "DM/1.2"
    session_id: str = "1"
    msg_id: str = "1"
    target: str = ""
    source: str = ""
    target_name: str | None = None
    source_name: str | None = None
    resp_uri: str | None = None
    no_resp: bool = False
    cred: Cred | None = None
    meta: Meta | None = None


@dataclass
class Message:
    header: SyncHdr
    commands: list[Command] = field(default_factory=list)
    final: bool = True

    @property
    def dm_version(self) -> str:
        """Protocol version from VerDTD/VerProto: "1.2" or "1.1.2"."""
        if self.header.ver_dtd.strip() == "1.1" or self.header.ver_proto.strip() == "DM/1.1":
            return "1.1.2"
        return "1.2"

    def walk(self) -> Iterator[Command]:
        for command in self.commands:
            yield from command.walk()


# ---------------------------------------------------------------------------
# JSON form of commands, for commands queued in stored session state.


def _data_to_json(data: str | bytes | None):
    if isinstance(data, bytes):
        import base64

        return {"b64": base64.b64encode(data).decode("ascii")}
    return data


def _data_from_json(value):
    if isinstance(value, dict):
        import base64

        return base64.b64decode(value["b64"])
    return value


def command_to_json(command: Command) -> dict:
    from dataclasses import asdict

    data = asdict(command)
    data["items"] = [
        {**asdict(item), "data": _data_to_json(item.data)} for item in command.items
    ]
    data["commands"] = [command_to_json(child) for child in command.commands]
    return data


def command_from_json(data: dict) -> Command:
    data = dict(data)
    items = []
    for raw in data.pop("items", []):
        raw = dict(raw)
        meta = raw.pop("meta", None)
        raw["data"] = _data_from_json(raw.get("data"))
        items.append(Item(meta=Meta(**meta) if meta else None, **raw))
    meta = data.pop("meta", None)
    cred = data.pop("cred", None)
    chal = data.pop("chal", None)
    children = [command_from_json(child) for child in data.pop("commands", [])]
    return Command(
        items=items,
        meta=Meta(**meta) if meta else None,
        cred=Cred(**cred) if cred else None,
        chal=Chal(**chal) if chal else None,
        commands=children,
        **data,
    )
