"""Namespaces and element markers shared by the XML and WBXML codecs.

Both codecs meet at an lxml element tree. SyncML elements (WBXML code page 0)
sit in the ``SYNCML:SYNCML1.2`` or ``SYNCML:SYNCML1.1`` namespace and MetInf
elements (code page 1) in ``syncml:metinf``. Readers of the tree compare local
names only, because real clients omit or misspell these namespaces.
"""

SYNCML_NS_12 = "SYNCML:SYNCML1.2"
SYNCML_NS_11 = "SYNCML:SYNCML1.1"
METINF_NS = "syncml:metinf"

# An element carrying this attribute holds binary content as base64 text.
# The WBXML encoder writes its decoded bytes as OPAQUE and the decoder sets it
# on every OPAQUE content it reads; the XML serializer drops the attribute and
# keeps the base64 text.
OPAQUE_ATTR = "{urn:dmserver:wbxml}opaque"

# WBXML public identifiers (WAP WBXML registry).
PUBLIC_ID_SYNCML_11 = 0x0FD3
PUBLIC_ID_SYNCML_12 = 0x1201
PUBLIC_ID_METINF_12 = 0x1202
PUBLIC_ID_TEXT_SYNCML_11 = "-//SYNCML//DTD SyncML 1.1//EN"
PUBLIC_ID_TEXT_SYNCML_12 = "-//SYNCML//DTD SyncML 1.2//EN"

MEDIA_TYPE_DM_XML = "application/vnd.syncml.dm+xml"
MEDIA_TYPE_DM_WBXML = "application/vnd.syncml.dm+wbxml"
MEDIA_TYPE_SYNCML_XML = "application/vnd.syncml+xml"
MEDIA_TYPE_SYNCML_WBXML = "application/vnd.syncml+wbxml"
