"""SyncML DM message model, codecs (XML, WBXML), codes and authentication digests."""
