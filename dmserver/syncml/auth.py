"""SyncML DM authentication digests (OMA DM Security 1.2).

- syncml:auth-basic: B64(username ":" password).
- syncml:auth-md5: B64(MD5(B64(MD5(username ":" password)) ":" nonce)), where
  the nonce is the raw bytes the peer issued (the base64 NextNonce decoded).
- syncml:auth-MAC: the HTTP header ``x-syncml-hmac`` with
  mac = B64(MD5(B64(MD5(username ":" password)) ":" nonce ":" B64(MD5(body)))),
  over the exact body bytes. Despite its name it is not RFC 2104 HMAC.

The published check vector for auth-md5: user "Bruce2", password "OhBehave",
nonce "Nonce" gives "Zz6EivR3yeaaENcRN6lpAQ==".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

# Nonces that deployed clients use before any nonce was exchanged: the text
# "null" and four zero bytes.
FACTORY_NONCES: tuple[bytes, ...] = (b"null", b"\x00\x00\x00\x00")
NONCE_BYTES = 16


def _b64md5(data: bytes) -> bytes:
    return base64.b64encode(hashlib.md5(data).digest())


def md5_digest(username: str, password: str, nonce: bytes) -> str:
    """Return the syncml:auth-md5 credential value (base64 text)."""
    secret = _b64md5(f"{username}:{password}".encode("utf-8"))
    return _b64md5(secret + b":" + nonce).decode("ascii")


def basic_credential(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode("utf-8")).decode("ascii")


def parse_basic_credential(value: str) -> tuple[str, str] | None:
    """Return (username, password) from a basic credential, or None if invalid."""
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    if ":" not in text:
        return None
    username, _, password = text.partition(":")
    return username, password


def basic_credential_matches(value: str, username: str, password: str) -> bool:
    """Compare a basic credential with the expected pair.

    The decoded text is compared whole, because user names such as
    "IMEI:490154203237518" contain the colon that separates the two parts.
    """
    try:
        text = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(text, f"{username}:{password}".encode("utf-8"))


def hmac_mac(username: str, password: str, nonce: bytes, body: bytes) -> str:
    """Return the mac value of the x-syncml-hmac header for ``body``."""
    secret = _b64md5(f"{username}:{password}".encode("utf-8"))
    return _b64md5(secret + b":" + nonce + b":" + _b64md5(body)).decode("ascii")


@dataclass(frozen=True)
class HmacHeader:
    username: str
    mac: str
    algorithm: str = "MD5"


_HMAC_PARAM = re.compile(r'\s*([A-Za-z-]+)\s*=\s*("([^"]*)"|[^,\s]*)\s*(,|$)')


def parse_hmac_header(value: str) -> HmacHeader | None:
    """Parse ``x-syncml-hmac`` leniently; return None when it is unusable.

    Accepts any parameter order, spaces around "=" and ",", quoted or bare
    username, and defaults the algorithm to MD5 as the DM Security spec does.
    """
    params: dict[str, str] = {}
    position = 0
    value = value.strip()
    while position < len(value):
        match = _HMAC_PARAM.match(value, position)
        if not match or match.end() == position:
            return None
        key = match.group(1).lower()
        params[key] = match.group(3) if match.group(3) is not None else match.group(2)
        position = match.end()
    if "username" not in params or "mac" not in params:
        return None
    algorithm = params.get("algorithm", "MD5") or "MD5"
    return HmacHeader(username=params["username"], mac=params["mac"], algorithm=algorithm)


def format_hmac_header(username: str, mac: str) -> str:
    return f'algorithm=MD5, username="{username}", mac={mac}'


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def encode_nonce(nonce: bytes) -> str:
    return base64.b64encode(nonce).decode("ascii")


def decode_nonce(text: str) -> bytes:
    """Decode a NextNonce value; a value that is not base64 is used as raw text."""
    try:
        return base64.b64decode(text.strip(), validate=True)
    except ValueError:
        return text.strip().encode("utf-8")


def digests_equal(expected: str, received: str) -> bool:
    return hmac.compare_digest(expected.encode("ascii"), received.strip().encode("ascii", "replace"))
