"""FUMO (Firmware Update Management Object) constants and result codes.

This module owns the names and numbers of FUMO 1.0
(urn:oma:mo:oma-fumo:1.0): the Generic Alert types a device reports with,
the State node values, and what each result code in a Generic Alert's Data
means for a firmware job. It also maps OMA DL 1.0 install status codes to
the closest FUMO result code. It contains no session or storage logic.

Result code names follow the result code table of the FUMO 1.0 technical
specification (OMA-TS-DM-FUMO-V1_0), as reproduced in the Sierra Wireless
SLQS SDK header qaGobiApiTableSwiOMADMUpdateCompleteStatus.h.

Example::

    meaning = interpret_result_code(402)
    meaning.outcome      # JobOutcome.FAILED
    meaning.name         # "Corrupted Firmware Update Package"
    meaning.retryable    # True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum, IntEnum

logger = logging.getLogger(__name__)

FUMO_MO_TYPE = "urn:oma:mo:oma-fumo:1.0"

# Generic Alert (1226) types; the Exec target that started the operation
# decides which one the device reports.
ALERT_TYPE_DOWNLOAD = "org.openmobilealliance.dm.firmwareupdate.download"
ALERT_TYPE_UPDATE = "org.openmobilealliance.dm.firmwareupdate.update"
ALERT_TYPE_DOWNLOAD_AND_UPDATE = (
    "org.openmobilealliance.dm.firmwareupdate.downloadandupdate"
)
ALERT_TYPES = (ALERT_TYPE_DOWNLOAD, ALERT_TYPE_UPDATE, ALERT_TYPE_DOWNLOAD_AND_UPDATE)

# Node paths relative to the FUMO root the device chose (often ./FUMO or
# ./FwUpdate).
NODE_PKG_NAME = "PkgName"
NODE_PKG_VERSION = "PkgVersion"
NODE_DOWNLOAD = "Download"
NODE_DOWNLOAD_PKG_URL = "Download/PkgURL"
NODE_UPDATE = "Update"
NODE_UPDATE_PKG_DATA = "Update/PkgData"
NODE_DOWNLOAD_AND_UPDATE = "DownloadAndUpdate"
NODE_DOWNLOAD_AND_UPDATE_PKG_URL = "DownloadAndUpdate/PkgURL"
NODE_STATE = "State"
NODE_EXT = "Ext"


class FumoState(IntEnum):
    """Values of the FUMO State node."""

    IDLE = 10
    DOWNLOAD_FAILED = 20
    DOWNLOAD_PROGRESSING = 30
    DOWNLOAD_COMPLETE = 40
    READY_TO_UPDATE = 50
    UPDATE_PROGRESSING = 60
    UPDATE_FAILED_HAVE_DATA = 70
    UPDATE_FAILED_NO_DATA = 80
    UPDATE_SUCCESSFUL_HAVE_DATA = 90
    UPDATE_SUCCESSFUL_NO_DATA = 100


class JobOutcome(str, Enum):
    """Outcome of a firmware job, as decided by a reported result code."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the user declined or cancelled on the device


@dataclass(frozen=True)
class ResultMeaning:
    """The interpretation of one FUMO result code.

    ``retryable`` is true when sending the same package to the same device
    again, unchanged, may succeed because the cause was transient (network,
    server or user). It is false when something must change first.
    """

    code: int
    outcome: JobOutcome
    name: str
    description: str
    retryable: bool


_SUCCEEDED = JobOutcome.SUCCEEDED
_FAILED = JobOutcome.FAILED

# code: (outcome, name from the FUMO table, description, retryable)
_RESULT_CODES: dict[int, tuple[JobOutcome, str, str, bool]] = {
    200: (_SUCCEEDED, "Successful", "The request succeeded.", False),
    400: (
        _FAILED,
        "Management Client Error",
        "Client error caused by user or device behaviour, with no more specific code.",
        True,
    ),
    401: (
        JobOutcome.CANCELLED,
        "User Cancelled",
        "The user chose not to accept the operation when prompted. Not "
        "retried automatically, so the user is not asked again at once.",
        False,
    ),
    402: (
        _FAILED,
        "Corrupted Firmware Update Package",
        "The package did not store correctly, detected for example by a "
        "checksum mismatch. A new download may succeed.",
        True,
    ),
    403: (
        _FAILED,
        "Firmware Update Package - Device Mismatch",
        "The package does not fit the device's current characteristics "
        "(model or installed version). A different package is needed.",
        False,
    ),
    404: (
        _FAILED,
        "Failed Firmware Update Package Validation",
        "The device could not validate the package's digital signature. "
        "The signing key or the package must be fixed.",
        False,
    ),
    405: (
        _FAILED,
        "Firmware Update Package Not Acceptable",
        "The device does not accept the package.",
        False,
    ),
    406: (
        _FAILED,
        "Alternate Download Authentication Failure",
        "The download server required authentication and it failed. The "
        "download credentials must be fixed.",
        False,
    ),
    407: (
        _FAILED,
        "Alternate Download Request Time-Out",
        "The download request timed out.",
        True,
    ),
    408: (
        _FAILED,
        "Not Implemented",
        "The device does not support the requested operation.",
        False,
    ),
    409: (
        _FAILED,
        "Undefined Error",
        "A failure that no other code describes.",
        True,
    ),
    410: (
        _FAILED,
        "Firmware Update Failed",
        "The update agent on the device failed to install the package.",
        False,
    ),
    411: (
        _FAILED,
        "Malformed or Bad URL",
        "The URL given for the download is invalid. The PkgURL must be fixed.",
        False,
    ),
    412: (
        _FAILED,
        "Alternate Download Server Unavailable",
        "The download server is unavailable or did not respond.",
        True,
    ),
    500: (
        _FAILED,
        "Alternate Download Server Error",
        "The download server returned an error that no other code describes.",
        True,
    ),
    501: (
        _FAILED,
        "Download Fails due to Device is Out of Memory",
        "The device had no room to store the package. Retryable because the "
        "user can free storage.",
        True,
    ),
    502: (
        _FAILED,
        "Firmware Update Fails due to Device Out of Memory",
        "The device lacked the memory to install the update. The update "
        "workspace is fixed by the device, so a smaller package is needed.",
        False,
    ),
    503: (
        _FAILED,
        "Download Fails due to Network Issues",
        "The download failed on network or transport errors.",
        True,
    ),
}

VENDOR_SUCCESS_CODES = range(250, 300)
VENDOR_CLIENT_ERROR_CODES = range(450, 500)
VENDOR_SERVER_ERROR_CODES = range(550, 600)


def interpret_result_code(code: int) -> ResultMeaning:
    """Return what a FUMO result code from a Generic Alert means.

    Every integer has a meaning: codes outside the FUMO table come back
    as "Unknown Result Code" with a FAILED outcome, not as an exception,
    because a device's report must be recorded whatever it contains.
    """
    if code in _RESULT_CODES:
        outcome, name, description, retryable = _RESULT_CODES[code]
        return ResultMeaning(code, outcome, name, description, retryable)
    if code in VENDOR_SUCCESS_CODES:
        return ResultMeaning(
            code,
            JobOutcome.SUCCEEDED,
            "Successful - Vendor Specified",
            "The operation succeeded; the vendor defines the detail.",
            False,
        )
    if code in VENDOR_CLIENT_ERROR_CODES:
        return ResultMeaning(
            code,
            JobOutcome.FAILED,
            "Client Error - Vendor Specified",
            "A client error that the vendor defines. Not retried "
            "automatically because its cause is unknown to the server.",
            False,
        )
    if code in VENDOR_SERVER_ERROR_CODES:
        return ResultMeaning(
            code,
            JobOutcome.FAILED,
            "Alternate Download Server Error - Vendor Specified",
            "A download server error that the vendor defines.",
            True,
        )
    logger.debug("FUMO result code %d is not in the FUMO 1.0 table", code)
    return ResultMeaning(
        code,
        JobOutcome.FAILED,
        "Unknown Result Code",
        f"{code} is not a FUMO 1.0 result code.",
        False,
    )


# Closest FUMO result code for each OMA DL 1.0 install status, for a
# download agent that reports through installNotifyURI and the server that
# must close the FUMO job.
_INSTALL_STATUS_TO_FUMO = {
    # Success: the object was downloaded and handed over.
    900: 200,
    # Insufficient memory to store the object: the download-side
    # out-of-memory code, not 502, which is about installing.
    901: 501,
    # User Cancelled maps to the same user decision in FUMO.
    902: 401,
    # Loss of Service is the network dropping during the download.
    903: 503,
    # Attribute mismatch: the object received differs from the descriptor
    # (size or type), i.e. it did not arrive intact.
    905: 402,
    # Invalid descriptor: the download server served a descriptor the
    # agent cannot use, a server-side fault.
    906: 500,
    # Invalid DDVersion: the agent does not implement that descriptor
    # version.
    951: 408,
    # Device Aborted: the device stopped for its own reasons, the generic
    # client error.
    952: 400,
    # Non-Acceptable Content: the agent rejects the object itself.
    953: 405,
    # Loader Error: fetching objectURI failed at the HTTP level (the
    # server returned an error for it).
    954: 500,
}


def install_status_to_fumo(code: int) -> int:
    """Map an OMA DL 1.0 install status (9xx) to the closest FUMO result code.

    A 9xx code that DL 1.0 does not define maps to 409 (Undefined Error).

    Raises:
        ValueError: ``code`` is not in 900-999.
    """
    if not 900 <= code <= 999:
        raise ValueError(f"{code} is not an OMA DL install status (900-999)")
    return _INSTALL_STATUS_TO_FUMO.get(code, 409)
