"""Convert between the message model and the lxml element tree of a message.

The element tree is where the XML and WBXML codecs meet (see ``names``).
Reading is lenient in the ways real handsets need: namespaces are ignored and
only local names compared, whitespace around values is trimmed, Format is
compared case-insensitively. Writing follows the element order of the SyncML
DTD, which strict clients check.
"""

from __future__ import annotations

import base64
import binascii

from lxml import etree

from .model import Chal, Command, Cred, Item, Message, Meta, SyncHdr
from .names import METINF_NS, OPAQUE_ATTR, SYNCML_NS_11, SYNCML_NS_12

KNOWN_COMMANDS = frozenset(
    {
        "Add",
        "Alert",
        "Atomic",
        "Copy",
        "Delete",
        "Exec",
        "Get",
        "Replace",
        "Results",
        "Sequence",
        "Status",
    }
)


class MessageFormatError(ValueError):
    """The tree is not a SyncML message this server can read (status 400)."""

    status = 400


# ---------------------------------------------------------------------------
# Reading


def _local(element) -> str:
    if not isinstance(element.tag, str):
        return ""
    return etree.QName(element).localname


def _children(element, name: str) -> list:
    return [child for child in element if _local(child) == name]


def _child(element, name: str):
    for child in element:
        if _local(child) == name:
            return child
    return None


def _text(element, name: str) -> str | None:
    child = _child(element, name) if element is not None else None
    if child is None:
        return None
    return (child.text or "").strip()


def _int(value: str | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise MessageFormatError(f"{what} is not an integer: {value[:40]!r}") from None


def _read_meta(element) -> Meta | None:
    if element is None:
        return None
    # Some clients wrap the values in a MetInf element.
    metinf = _child(element, "MetInf")
    source = metinf if metinf is not None else element
    meta = Meta(
        format=_text(source, "Format"),
        type=_text(source, "Type"),
        size=_int(_text(source, "Size"), "Meta Size"),
        next_nonce=_text(source, "NextNonce"),
        max_msg_size=_int(_text(source, "MaxMsgSize"), "MaxMsgSize"),
        max_obj_size=_int(_text(source, "MaxObjSize"), "MaxObjSize"),
        mark=_text(source, "Mark"),
        version=_text(source, "Version"),
        emi=_text(source, "EMI"),
    )
    return None if meta.is_empty() else meta


def _read_cred(element) -> Cred | None:
    if element is None:
        return None
    meta = _read_meta(_child(element, "Meta")) or Meta()
    return Cred(
        type=(meta.type or "syncml:auth-basic"),
        format=meta.format,
        data=_text(element, "Data") or "",
    )


def _read_chal(element) -> Chal | None:
    if element is None:
        return None
    meta = _read_meta(_child(element, "Meta")) or Meta()
    return Chal(type=meta.type or "", format=meta.format, next_nonce=meta.next_nonce)


def _read_loc(element, name: str) -> tuple[str | None, str | None]:
    holder = _child(element, name)
    if holder is None:
        return None, None
    return _text(holder, "LocURI"), _text(holder, "LocName")


def _read_data(element, meta: Meta | None) -> str | bytes | None:
    data = _child(element, "Data")
    if data is None:
        return None
    if data.get(OPAQUE_ATTR) is not None:
        try:
            return base64.b64decode(data.text or "", validate=True)
        except binascii.Error as error:
            raise MessageFormatError(f"opaque Data is not base64: {error}") from None
    if len(data):
        # Structured data such as DevInf: keep the markup as text.
        return "".join(etree.tostring(child, encoding="unicode") for child in data)
    text = data.text or ""
    fmt = (meta.format or "").lower() if meta else ""
    if fmt in ("bin", "b64"):
        # Binary values travel as base64 text in XML. Text that is not valid
        # base64 is kept as its UTF-8 bytes rather than rejected.
        try:
            return base64.b64decode(text.strip(), validate=True)
        except binascii.Error:
            return text.strip().encode("utf-8")
    return text.strip()


def _read_item(element) -> Item:
    meta = _read_meta(_child(element, "Meta"))
    target, target_name = _read_loc(element, "Target")
    source, source_name = _read_loc(element, "Source")
    return Item(
        target=target,
        source=source,
        target_name=target_name,
        source_name=source_name,
        meta=meta,
        data=_read_data(element, meta),
        more_data=_child(element, "MoreData") is not None,
    )


def _read_command(element) -> Command:
    name = _local(element)
    cmd_id = _text(element, "CmdID")
    if cmd_id is None:
        raise MessageFormatError(f"{name} has no CmdID")
    command = Command(
        name=name,
        cmd_id=cmd_id,
        meta=_read_meta(_child(element, "Meta")),
        no_resp=_child(element, "NoResp") is not None,
        cred=_read_cred(_child(element, "Cred")),
        correlator=_text(element, "Correlator"),
        items=[_read_item(item) for item in _children(element, "Item")],
    )
    if name in ("Alert", "Status"):
        command.data = _text(element, "Data")
    if name in ("Status", "Results"):
        command.msg_ref = _text(element, "MsgRef")
        command.cmd_ref = _text(element, "CmdRef")
        command.cmd = _text(element, "Cmd")
        command.target_refs = [(e.text or "").strip() for e in _children(element, "TargetRef")]
        command.source_refs = [(e.text or "").strip() for e in _children(element, "SourceRef")]
        command.chal = _read_chal(_child(element, "Chal"))
    if name in ("Atomic", "Sequence"):
        command.commands = [
            _read_command(child) for child in element if _local(child) in KNOWN_COMMANDS
        ]
    return command


def message_from_tree(root) -> Message:
    """Build a :class:`Message` from a decoded tree; raise MessageFormatError."""
    if _local(root) != "SyncML":
        raise MessageFormatError(f"root element is {_local(root)!r}, expected SyncML")
    header_el = _child(root, "SyncHdr")
    body_el = _child(root, "SyncBody")
    if header_el is None or body_el is None:
        raise MessageFormatError("SyncML message without SyncHdr or SyncBody")
    for required in ("VerDTD", "VerProto", "SessionID", "MsgID"):
        if _text(header_el, required) is None:
            raise MessageFormatError(f"SyncHdr has no {required}")
    target, target_name = _read_loc(header_el, "Target")
    source, source_name = _read_loc(header_el, "Source")
    if not source:
        raise MessageFormatError("SyncHdr has no Source LocURI")
    header = SyncHdr(
        ver_dtd=_text(header_el, "VerDTD"),
        ver_proto=_text(header_el, "VerProto"),
        session_id=_text(header_el, "SessionID"),
        msg_id=_text(header_el, "MsgID"),
        target=target or "",
        target_name=target_name,
        source=source,
        source_name=source_name,
        resp_uri=_text(header_el, "RespURI"),
        no_resp=_child(header_el, "NoResp") is not None,
        cred=_read_cred(_child(header_el, "Cred")),
        meta=_read_meta(_child(header_el, "Meta")),
    )
    commands = []
    unknown = []
    for element in body_el:
        name = _local(element)
        if name in KNOWN_COMMANDS:
            commands.append(_read_command(element))
        elif name and name != "Final":
            unknown.append(name)
    if unknown:
        raise MessageFormatError(f"unsupported commands in SyncBody: {', '.join(unknown)}")
    final = _child(body_el, "Final") is not None
    return Message(header=header, commands=commands, final=final)


# ---------------------------------------------------------------------------
# Writing


class _Builder:
    def __init__(self, namespace: str):
        self.ns = namespace

    def el(self, parent, name: str, text: str | None = None):
        tag = f"{{{self.ns}}}{name}"
        element = etree.SubElement(parent, tag) if parent is not None else etree.Element(
            tag, nsmap={None: self.ns}
        )
        if text is not None:
            element.text = text
        return element

    def metinf(self, parent, name: str, text: str):
        element = etree.SubElement(parent, f"{{{METINF_NS}}}{name}", nsmap={None: METINF_NS})
        element.text = text
        return element

    def meta(self, parent, meta: Meta | None) -> None:
        if meta is None or meta.is_empty():
            return
        holder = self.el(parent, "Meta")
        # Order of the MetInf DTD.
        for name, value in (
            ("Format", meta.format),
            ("Type", meta.type),
            ("Mark", meta.mark),
            ("Size", meta.size),
            ("NextNonce", meta.next_nonce),
            ("Version", meta.version),
            ("MaxMsgSize", meta.max_msg_size),
            ("MaxObjSize", meta.max_obj_size),
            ("EMI", meta.emi),
        ):
            if value is not None:
                self.metinf(holder, name, str(value))

    def loc(self, parent, name: str, uri: str | None, loc_name: str | None = None) -> None:
        if uri is None:
            return
        holder = self.el(parent, name)
        self.el(holder, "LocURI", uri)
        if loc_name is not None:
            self.el(holder, "LocName", loc_name)

    def cred(self, parent, cred: Cred | None) -> None:
        if cred is None:
            return
        holder = self.el(parent, "Cred")
        self.meta(holder, Meta(format=cred.format, type=cred.type))
        self.el(holder, "Data", cred.data)

    def item(self, parent, item: Item) -> None:
        holder = self.el(parent, "Item")
        self.loc(holder, "Target", item.target, item.target_name)
        self.loc(holder, "Source", item.source, item.source_name)
        meta = item.meta
        if isinstance(item.data, bytes) and (meta is None or meta.format is None):
            meta = Meta(**{**(meta.__dict__ if meta else {}), "format": "bin"})
        self.meta(holder, meta)
        if isinstance(item.data, bytes):
            data = self.el(holder, "Data", base64.b64encode(item.data).decode("ascii"))
            data.set(OPAQUE_ATTR, "base64")
        elif item.data is not None:
            self.el(holder, "Data", item.data)
        if item.more_data:
            self.el(holder, "MoreData")

    def command(self, parent, command: Command) -> None:
        holder = self.el(parent, command.name)
        self.el(holder, "CmdID", command.cmd_id)
        if command.name in ("Status", "Results"):
            if command.msg_ref is not None:
                self.el(holder, "MsgRef", command.msg_ref)
            self.el(holder, "CmdRef", command.cmd_ref)
            if command.name == "Status":
                self.el(holder, "Cmd", command.cmd)
            else:
                self.meta(holder, command.meta)
            for ref in command.target_refs:
                self.el(holder, "TargetRef", ref)
            for ref in command.source_refs:
                self.el(holder, "SourceRef", ref)
            if command.name == "Status":
                if command.chal is not None:
                    chal = self.el(holder, "Chal")
                    self.meta(
                        chal,
                        Meta(
                            format=command.chal.format,
                            type=command.chal.type,
                            next_nonce=command.chal.next_nonce,
                        ),
                    )
                self.el(holder, "Data", command.data)
            for item in command.items:
                self.item(holder, item)
            return
        if command.no_resp:
            self.el(holder, "NoResp")
        self.cred(holder, command.cred)
        if command.name == "Alert":
            if command.data is not None:
                self.el(holder, "Data", command.data)
            if command.correlator is not None:
                self.el(holder, "Correlator", command.correlator)
        else:
            self.meta(holder, command.meta)
            if command.name == "Exec" and command.correlator is not None:
                self.el(holder, "Correlator", command.correlator)
        for child in command.commands:
            self.command(holder, child)
        for item in command.items:
            self.item(holder, item)


def message_to_tree(message: Message):
    """Build the element tree of ``message`` in DTD order."""
    header = message.header
    namespace = SYNCML_NS_11 if message.dm_version == "1.1.2" else SYNCML_NS_12
    build = _Builder(namespace)
    root = build.el(None, "SyncML")
    hdr = build.el(root, "SyncHdr")
    build.el(hdr, "VerDTD", header.ver_dtd)
    build.el(hdr, "VerProto", header.ver_proto)
    build.el(hdr, "SessionID", header.session_id)
    build.el(hdr, "MsgID", header.msg_id)
    build.loc(hdr, "Target", header.target, header.target_name)
    build.loc(hdr, "Source", header.source, header.source_name)
    if header.resp_uri is not None:
        build.el(hdr, "RespURI", header.resp_uri)
    if header.no_resp:
        build.el(hdr, "NoResp")
    build.cred(hdr, header.cred)
    build.meta(hdr, header.meta)
    body = build.el(root, "SyncBody")
    for command in message.commands:
        build.command(body, command)
    if message.final:
        build.el(body, "Final")
    return root
