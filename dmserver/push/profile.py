"""Device profiles: what a phone accepts in a push.

The profile is the JSON column ``devices.profile``. The push keys are
below; other keys belong to other parts of the server and are ignored:

    pkg0_version          11 or 12 (default 12)
    resync_nonce          "zero-bytes" (default), "base64-text", "hex-text"
    max_server_id_length  1..255, or absent for no limit
    sessionless           true: push Service Loading, report by install notify
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import pkg0

RESYNC_NONCES = {
    "zero-bytes": pkg0.ResyncNonce.ZERO_BYTES,
    "base64-text": pkg0.ResyncNonce.BASE64_TEXT,
    "hex-text": pkg0.ResyncNonce.HEX_TEXT,
}
PKG0_VERSIONS = (pkg0.NOTIFICATION_VERSION_11, pkg0.NOTIFICATION_VERSION_12)


class ProfileError(ValueError):
    """A device profile value is invalid."""


@dataclass(frozen=True)
class DeviceProfile:
    """Push settings of one device, read from ``devices.profile``."""

    notification: pkg0.NotificationProfile = pkg0.NotificationProfile()
    sessionless: bool = False


def parse_device_profile(data: dict[str, Any] | None) -> DeviceProfile:
    """Read the push keys of a device profile; other keys are ignored.

    Raises:
        ProfileError: a push key has a value outside its allowed set.
    """
    data = data or {}
    version = data.get("pkg0_version", pkg0.NOTIFICATION_VERSION_12)
    if isinstance(version, bool) or version not in PKG0_VERSIONS:
        raise ProfileError(
            f"profile pkg0_version {version!r} is invalid; use 11 or 12"
        )
    resync_name = data.get("resync_nonce", "zero-bytes")
    if resync_name not in RESYNC_NONCES:
        raise ProfileError(
            f"profile resync_nonce {resync_name!r} is invalid; use one of "
            f"{', '.join(RESYNC_NONCES)}"
        )
    limit = data.get("max_server_id_length")
    if limit is not None and (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not 1 <= limit <= pkg0.MAX_SERVER_ID_LENGTH
    ):
        raise ProfileError(
            f"profile max_server_id_length {limit!r} is invalid; use 1 to "
            f"{pkg0.MAX_SERVER_ID_LENGTH}"
        )
    sessionless = data.get("sessionless", False)
    if not isinstance(sessionless, bool):
        raise ProfileError(
            f"profile sessionless {sessionless!r} is invalid; use true or false"
        )
    return DeviceProfile(
        notification=pkg0.NotificationProfile(
            version=version,
            resync_nonce=RESYNC_NONCES[resync_name],
            max_server_id_length=limit,
        ),
        sessionless=sessionless,
    )


def resync_nonce_name(profile: pkg0.NotificationProfile) -> str:
    for name, value in RESYNC_NONCES.items():
        if value is profile.resync_nonce:
            return name
    return profile.resync_nonce.name
