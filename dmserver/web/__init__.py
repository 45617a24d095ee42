"""Twisted web resources: /dm (SyncML), /dl (downloads, install notify), /api."""
