"""SyncML XML encoding: hardened parsing and DTD-ordered serialization.

Network input is hostile until parsed. The parser loads no DTD, expands no
entity, reaches no network and rejects any internal DTD subset, so entity
expansion attacks are answered with status 400 before any element is read.
An external DOCTYPE line with only a public identifier is accepted because
older clients send one; it is never fetched.
"""

from __future__ import annotations

from lxml import etree

from .names import OPAQUE_ATTR

MAX_XML_DEPTH = 32
MAX_XML_ELEMENTS = 20_000


class XmlCodecError(ValueError):
    """The body is not acceptable SyncML XML (SyncML status 400)."""

    status = 400


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml(data: bytes):
    """Parse ``data`` into an element tree root, enforcing the limits above."""
    if b"<!ENTITY" in data:
        raise XmlCodecError("XML body declares an entity; entities are not accepted")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as error:
        raise XmlCodecError(f"malformed XML: {error}") from None
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is not None and (list(dtd.elements()) or list(dtd.entities())):
        raise XmlCodecError("XML body has an internal DTD subset; DTDs are not accepted")
    count = 0
    for element in root.iter():
        count += 1
        if not isinstance(element.tag, str):
            raise XmlCodecError("XML body contains an entity reference; entities are not accepted")
        if count > MAX_XML_ELEMENTS:
            raise XmlCodecError(f"XML body has more than {MAX_XML_ELEMENTS} elements")
    if _depth(root) > MAX_XML_DEPTH:
        raise XmlCodecError(f"XML body is nested deeper than {MAX_XML_DEPTH} levels")
    return root


def _depth(root) -> int:
    deepest = 0
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in element)
    return deepest


def serialize_xml(root, *, pretty: bool = False) -> bytes:
    """Serialize a message tree as UTF-8 XML with no opaque markers."""
    marked = root.xpath("//*[@*[namespace-uri()='urn:dmserver:wbxml']]")
    if marked:
        root = etree.fromstring(etree.tostring(root))
        for element in root.iter():
            if isinstance(element.tag, str) and OPAQUE_ATTR in element.attrib:
                del element.attrib[OPAQUE_ATTR]
                _mark_format_b64(element)
        etree.cleanup_namespaces(root)
    return etree.tostring(root, encoding="utf-8", xml_declaration=False, pretty_print=pretty)


def _mark_format_b64(data_element) -> None:
    """Relabel Format bin as b64 next to binary Data, since XML carries base64."""
    item = data_element.getparent()
    if item is None:
        return
    for meta in item:
        if isinstance(meta.tag, str) and etree.QName(meta).localname == "Meta":
            for entry in meta.iter():
                if (
                    isinstance(entry.tag, str)
                    and etree.QName(entry).localname == "Format"
                    and (entry.text or "").strip().lower() == "bin"
                ):
                    entry.text = "b64"
