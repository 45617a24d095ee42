"""OMA Download OTA 1.0 download descriptors and install notify reports.

This module owns the two OMA DL 1.0 formats dmserver exchanges with a
device's download agent:

- the download descriptor (media type ``application/vnd.oma.dd+xml``), an
  XML ``media`` element in the ``http://www.openmobilealliance.org/xmlns/dd``
  namespace that tells the agent what to fetch (``objectURI``), its
  ``type`` and ``size``, and where to report the outcome
  (``installNotifyURI``);
- the install notify report, a body the agent POSTs to
  ``installNotifyURI`` whose first line is a status code and message such
  as ``900 Success``.

Both arrive from the network, so parsing enforces size limits first and
the XML parser loads no DTD, expands no entity and fetches nothing.
It does not touch HTTP or storage.

Example::

    dd = DownloadDescriptor("http://dl.example/p/42", 31976,
                            "application/octet-stream", "ACME-100 1.1")
    assert parse_descriptor(build_descriptor(dd)) == dd
    assert parse_install_notify(b"900 Success\\r\\n") == (900, "Success")
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from lxml import etree

logger = logging.getLogger(__name__)

DD_NAMESPACE = "http://www.openmobilealliance.org/xmlns/dd"
DD_MEDIA_TYPE = "application/vnd.oma.dd+xml"
DD_VERSION = "1.0"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# A descriptor names one object with a dozen short elements; real ones are
# under 2 KB. 64 KiB leaves room for a long description or installParam.
MAX_DESCRIPTOR_SIZE = 64 * 1024
MAX_DESCRIPTOR_DEPTH = 8
# The report is one status line; agents sometimes add header-like lines.
MAX_INSTALL_NOTIFY_SIZE = 1024
# Largest object size accepted in a descriptor (the size element is in
# bytes); larger values are treated as malformed.
MAX_OBJECT_SIZE = 2**63 - 1

# OMA DL 1.0 install status codes and their status messages, as the
# download agent reports them to installNotifyURI.
INSTALL_STATUS = {
    900: "Success",
    901: "Insufficient memory",
    902: "User Cancelled",
    903: "Loss of Service",
    905: "Attribute mismatch",
    906: "Invalid descriptor",
    951: "Invalid DDVersion",
    952: "Device Aborted",
    953: "Non-Acceptable Content",
    954: "Loader Error",
}
INSTALL_STATUS_SUCCESS = 900
INSTALL_STATUS_INVALID_DESCRIPTOR = 906
INSTALL_STATUS_INVALID_DDVERSION = 951

# Descriptor elements that occur at most once, in the order
# build_descriptor writes them, mapped to DownloadDescriptor fields.
_SINGLE_ELEMENTS = {
    "objectURI": "object_uri",
    "size": "size",
    "name": "name",
    "DDVersion": "dd_version",
    "vendor": "vendor",
    "description": "description",
    "installNotifyURI": "install_notify_uri",
    "nextURL": "next_url",
    "infoURL": "info_url",
    "iconURI": "icon_uri",
    "installParam": "install_param",
}
_REQUIRED_ELEMENTS = ("type", "objectURI", "size")

_INSTALL_NOTIFY_LINE = re.compile(r"(9[0-9]{2})(?:[ \t]+(.*))?")


class DescriptorError(ValueError):
    """A download descriptor is malformed, unsafe or unsupported.

    ``install_status`` is the OMA DL status a download agent reports for
    it: 906 (Invalid descriptor) or 951 (Invalid DDVersion).
    """

    def __init__(self, message: str, install_status: int = 906) -> None:
        super().__init__(message)
        self.install_status = install_status


class InstallNotifyError(ValueError):
    """An install notify body is not a valid OMA DL status report."""


@dataclass(frozen=True)
class DownloadDescriptor:
    """The attributes of one OMA DL 1.0 media object.

    ``size`` is in bytes. ``type`` is the object's media type;
    ``additional_types`` lists further ``type`` elements, which DL 1.0
    allows for objects wrapped in another format (a DRM message, say).
    """

    object_uri: str
    size: int
    type: str
    name: str | None = None
    dd_version: str = DD_VERSION
    install_notify_uri: str | None = None
    vendor: str | None = None
    description: str | None = None
    next_url: str | None = None
    info_url: str | None = None
    icon_uri: str | None = None
    install_param: str | None = None
    additional_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.object_uri:
            raise DescriptorError("objectURI must not be empty")
        if not self.type:
            raise DescriptorError("type must not be empty")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise DescriptorError(f"size must be an integer, got {self.size!r}")
        if not 0 <= self.size <= MAX_OBJECT_SIZE:
            raise DescriptorError(f"size must be between 0 and {MAX_OBJECT_SIZE}")


def _dd(tag: str) -> str:
    return f"{{{DD_NAMESPACE}}}{tag}"


def build_descriptor(dd: DownloadDescriptor) -> bytes:
    """Serialize ``dd`` as a UTF-8 download descriptor document.

    Raises:
        ValueError: a text value contains characters XML cannot carry
            (control characters other than tab, CR and LF).
    """
    root = etree.Element(_dd("media"), nsmap={None: DD_NAMESPACE})
    for media_type in (dd.type, *dd.additional_types):
        etree.SubElement(root, _dd("type")).text = media_type
    for element, field in _SINGLE_ELEMENTS.items():
        value = getattr(dd, field)
        if value is None:
            continue
        etree.SubElement(root, _dd(element)).text = str(value)
    # lxml would write the declaration with single quotes. The usual
    # double-quoted form is written by hand, on the guess that simple
    # string-matching parsers in old handsets expect it.
    body = etree.tostring(root, encoding="UTF-8", pretty_print=True)
    return XML_DECLARATION + body


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _parse_document(data: bytes) -> etree._Element:
    if len(data) > MAX_DESCRIPTOR_SIZE:
        raise DescriptorError(
            f"descriptor is {len(data)} bytes, the limit is {MAX_DESCRIPTOR_SIZE}"
        )
    try:
        root = etree.fromstring(data, parser=_safe_parser())
    except etree.XMLSyntaxError as exc:
        raise DescriptorError(f"descriptor is not well-formed XML: {exc}") from exc

    # A descriptor never needs a DOCTYPE, and a DOCTYPE is how entity
    # expansion and external fetches get in, so any DTD is rejected. The
    # parser has left declared entities unexpanded up to this point.
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise DescriptorError(
            "descriptor contains a DTD (DOCTYPE), which is not allowed"
        )
    for node in root.iter():
        if isinstance(node, etree._Entity):
            raise DescriptorError(
                f"descriptor contains the entity reference {node.text}, which "
                "is not allowed"
            )
    return root


def _check_depth(root: etree._Element) -> None:
    depth = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > MAX_DESCRIPTOR_DEPTH:
            raise DescriptorError(
                f"descriptor nests elements deeper than {MAX_DESCRIPTOR_DEPTH}"
            )


def _element_text(element: etree._Element) -> str:
    # Text of the element itself; children (unknown markup) are ignored.
    return (element.text or "").strip()


def _parse_size(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise DescriptorError(
            f"size must be a non-negative decimal integer (bytes), got {text!r}"
        )
    value = int(text)
    if value > MAX_OBJECT_SIZE:
        raise DescriptorError(f"size {value} exceeds {MAX_OBJECT_SIZE}")
    return value


def _check_dd_version(version: str) -> None:
    # Any 1.x DDVersion is read as compatible with 1.0. Another major
    # version gets 951 Invalid DDVersion.
    major, _, _ = version.partition(".")
    if major != "1":
        raise DescriptorError(
            f"DDVersion {version!r} is not supported; this parser reads "
            f"version {DD_VERSION}",
            install_status=INSTALL_STATUS_INVALID_DDVERSION,
        )


def parse_descriptor(data: bytes) -> DownloadDescriptor:
    """Parse a download descriptor received from the network.

    The root must be ``media`` in the DD namespace. A root without a
    namespace is accepted too, to be lenient with hand-written descriptors.
    Elements this parser does not know are ignored, as the OMA DL 1.0
    interoperability tests expect of a download agent.

    Raises:
        DescriptorError: oversize, not well-formed, has a DTD or entity,
            wrong root, a required element (type, objectURI, size) missing
            or empty, a single-valued element repeated, an invalid size, or
            a DDVersion with a major version other than 1.
    """
    root = _parse_document(data)
    _check_depth(root)

    root_name = etree.QName(root)
    if root_name.localname != "media" or root_name.namespace not in (
        DD_NAMESPACE,
        None,
    ):
        raise DescriptorError(
            f"descriptor root must be media in the namespace {DD_NAMESPACE}, "
            f"got {root.tag}"
        )
    namespace = root_name.namespace

    types: list[str] = []
    values: dict[str, str] = {}
    for child in root:
        if not isinstance(child.tag, str):
            continue
        child_name = etree.QName(child)
        if child_name.namespace != namespace:
            continue
        element = child_name.localname
        text = _element_text(child)
        if element == "type":
            types.append(text)
        elif element in _SINGLE_ELEMENTS:
            if element in values:
                raise DescriptorError(f"descriptor has more than one {element} element")
            values[element] = text
        else:
            logger.debug("ignoring unknown descriptor element %s", element)

    for element in _REQUIRED_ELEMENTS:
        present = bool(types) if element == "type" else element in values
        if not present:
            raise DescriptorError(f"descriptor has no {element} element")
    for element in ("objectURI", "size"):
        if not values[element]:
            raise DescriptorError(f"descriptor {element} element is empty")
    if not all(types):
        raise DescriptorError("descriptor has an empty type element")

    dd_version = values.get("DDVersion") or DD_VERSION
    _check_dd_version(dd_version)

    fields = {
        _SINGLE_ELEMENTS[element]: text
        for element, text in values.items()
        if element not in ("size", "DDVersion")
    }
    return DownloadDescriptor(
        size=_parse_size(values["size"]),
        type=types[0],
        additional_types=tuple(types[1:]),
        dd_version=dd_version,
        **fields,
    )


def parse_install_notify(body: bytes) -> tuple[int, str]:
    """Parse an install notify body into the status code and message.

    The first non-blank line must be a 9xx status code, optionally followed
    by whitespace and a message: ``900 Success``, ``900 Done`` and ``900``
    are all valid. Leading whitespace, CR LF or LF line ends and any lines
    after the first are accepted and ignored. An unknown code in 900-999 is
    returned as is.

    Returns:
        The code and the message the agent sent, or the OMA DL message for
        a known code when the agent sent none (``""`` for an unknown code).

    Raises:
        InstallNotifyError: the body is empty, larger than
            MAX_INSTALL_NOTIFY_SIZE, or its first line is not a 9xx code.
    """
    if len(body) > MAX_INSTALL_NOTIFY_SIZE:
        raise InstallNotifyError(
            f"install notify body is {len(body)} bytes, the limit is "
            f"{MAX_INSTALL_NOTIFY_SIZE}"
        )
    # Latin-1 maps every byte, so an agent's non-UTF-8 message cannot make
    # the status code unreadable.
    text = body.decode("latin-1").lstrip()
    if not text:
        raise InstallNotifyError("install notify body is empty")

    first_line = text.splitlines()[0].strip()
    match = _INSTALL_NOTIFY_LINE.fullmatch(first_line)
    if match is None:
        raise InstallNotifyError(
            f"install notify status line must start with a 9xx code, got "
            f"{first_line[:80]!r}"
        )
    code = int(match.group(1))
    message = (match.group(2) or "").strip()
    if not message:
        message = INSTALL_STATUS.get(code, "")
    return code, message


def build_install_notify(code: int) -> bytes:
    """Return the install notify body a download agent sends for ``code``.

    Raises:
        ValueError: ``code`` is not an OMA DL 1.0 install status.
    """
    if code not in INSTALL_STATUS:
        raise ValueError(
            f"{code} is not an OMA DL 1.0 install status; expected one of "
            f"{sorted(INSTALL_STATUS)}"
        )
    return f"{code} {INSTALL_STATUS[code]}\r\n".encode("ascii")
