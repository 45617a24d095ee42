"""dmserver: an OMA-DM 1.2 device management server for firmware over the air.

Packages, each owning one concern:

- ``syncml``: SyncML DM message model, XML and WBXML codecs, status and alert
  codes, authentication digests. No I/O.
- ``session``: the sans-IO session engine: takes a decoded message and stored
  session state, returns the reply and the new state.
- ``mo``: management tree paths and the FUMO, DevInfo and DevDetail objects.
- ``fota``: firmware catalogue, bsdiff4 deltas, signed packages, OMA DL
  download descriptors.
- ``push``: Package 0 notifications, WAP Push encoding, SMS gateway adapters.
- ``store``: SQLAlchemy models and the database access used by the server.
- ``web``: Twisted resources for ``/dm``, ``/dl`` and ``/api``.
- ``sim``: the feature phone simulator ``dmsim``.
"""

__version__ = "0.1.0"
