"""Firmware catalogue, bsdiff4 deltas, signed packages and OMA DL descriptors."""
