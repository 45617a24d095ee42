"""Tests for dmserver.mo.fumo: constants and result code interpretation.

The expected names and outcomes are the FUMO 1.0 result code table
(OMA-TS-DM-FUMO-V1_0), written out here independently of the module.
"""

from __future__ import annotations

import pytest

from dmserver.fota.descriptor import INSTALL_STATUS
from dmserver.mo.fumo import (
    ALERT_TYPE_DOWNLOAD,
    ALERT_TYPE_DOWNLOAD_AND_UPDATE,
    ALERT_TYPE_UPDATE,
    FUMO_MO_TYPE,
    FumoState,
    JobOutcome,
    ResultMeaning,
    install_status_to_fumo,
    interpret_result_code,
)

SUCCEEDED = JobOutcome.SUCCEEDED
FAILED = JobOutcome.FAILED
CANCELLED = JobOutcome.CANCELLED

# code: (outcome, name)
SINGLE_CODES = {
    200: (SUCCEEDED, "Successful"),
    400: (FAILED, "Management Client Error"),
    401: (CANCELLED, "User Cancelled"),
    402: (FAILED, "Corrupted Firmware Update Package"),
    403: (FAILED, "Firmware Update Package - Device Mismatch"),
    404: (FAILED, "Failed Firmware Update Package Validation"),
    405: (FAILED, "Firmware Update Package Not Acceptable"),
    406: (FAILED, "Alternate Download Authentication Failure"),
    407: (FAILED, "Alternate Download Request Time-Out"),
    408: (FAILED, "Not Implemented"),
    409: (FAILED, "Undefined Error"),
    410: (FAILED, "Firmware Update Failed"),
    411: (FAILED, "Malformed or Bad URL"),
    412: (FAILED, "Alternate Download Server Unavailable"),
    500: (FAILED, "Alternate Download Server Error"),
    501: (FAILED, "Download Fails due to Device is Out of Memory"),
    502: (FAILED, "Firmware Update Fails due to Device Out of Memory"),
    503: (FAILED, "Download Fails due to Network Issues"),
}

# (first, last, outcome, name) for the vendor-specified ranges.
RANGES = [
    (250, 299, SUCCEEDED, "Successful - Vendor Specified"),
    (450, 499, FAILED, "Client Error - Vendor Specified"),
    (550, 599, FAILED, "Alternate Download Server Error - Vendor Specified"),
]

RANGE_CASES = [
    (code, outcome, name)
    for first, last, outcome, name in RANGES
    for code in range(first, last + 1)
]

UNASSIGNED = [
    code
    for code in range(0, 1000)
    if code not in SINGLE_CODES
    and not any(first <= code <= last for first, last, _, _ in RANGES)
]


def test_mo_type_and_alert_types():
    assert FUMO_MO_TYPE == "urn:oma:mo:oma-fumo:1.0"
    assert ALERT_TYPE_DOWNLOAD == "org.openmobilealliance.dm.firmwareupdate.download"
    assert ALERT_TYPE_UPDATE == "org.openmobilealliance.dm.firmwareupdate.update"
    assert (
        ALERT_TYPE_DOWNLOAD_AND_UPDATE
        == "org.openmobilealliance.dm.firmwareupdate.downloadandupdate"
    )


def test_state_values():
    assert {state.name: int(state) for state in FumoState} == {
        "IDLE": 10,
        "DOWNLOAD_FAILED": 20,
        "DOWNLOAD_PROGRESSING": 30,
        "DOWNLOAD_COMPLETE": 40,
        "READY_TO_UPDATE": 50,
        "UPDATE_PROGRESSING": 60,
        "UPDATE_FAILED_HAVE_DATA": 70,
        "UPDATE_FAILED_NO_DATA": 80,
        "UPDATE_SUCCESSFUL_HAVE_DATA": 90,
        "UPDATE_SUCCESSFUL_NO_DATA": 100,
    }


@pytest.mark.parametrize("code, expected", sorted(SINGLE_CODES.items()))
def test_single_codes(code, expected):
    outcome, name = expected

    meaning = interpret_result_code(code)

    assert isinstance(meaning, ResultMeaning)
    assert meaning.code == code
    assert meaning.outcome is outcome
    assert meaning.name == name
    assert meaning.description


@pytest.mark.parametrize("code, outcome, name", RANGE_CASES)
def test_vendor_ranges(code, outcome, name):
    meaning = interpret_result_code(code)

    assert meaning.code == code
    assert meaning.outcome is outcome
    assert meaning.name == name


@pytest.mark.parametrize(
    "code", [-1, 0, 100, 201, 249, 300, 413, 449, 504, 549, 600, 900, 1200, 10_000]
)
def test_unknown_codes_fail_without_exception(code):
    meaning = interpret_result_code(code)

    assert meaning.code == code
    assert meaning.outcome is FAILED
    assert meaning.name == "Unknown Result Code"
    assert meaning.retryable is False


def test_every_unassigned_code_is_unknown():
    names = {interpret_result_code(code).name for code in UNASSIGNED}
    assert names == {"Unknown Result Code"}


@pytest.mark.parametrize(
    "code, retryable",
    [
        (200, False),
        (401, False),  # the user declined, so do not ask again at once
        (402, True),  # a fresh download may arrive intact
        (403, False),  # another package is needed
        (404, False),  # the signature or key must change
        (407, True),
        (410, False),
        (412, True),
        (503, True),
        (260, False),
        (470, False),
        (570, True),
    ],
)
def test_retryable(code, retryable):
    assert interpret_result_code(code).retryable is retryable


def test_job_outcome_values():
    assert JobOutcome.SUCCEEDED == "succeeded"
    assert JobOutcome.FAILED == "failed"
    assert JobOutcome.CANCELLED == "cancelled"


@pytest.mark.parametrize(
    "status, fumo",
    [
        (900, 200),
        (901, 501),
        (902, 401),
        (903, 503),
        (905, 402),
        (906, 500),
        (951, 408),
        (952, 400),
        (953, 405),
        (954, 500),
        (904, 409),  # not defined by DL 1.0
        (999, 409),
    ],
)
def test_install_status_to_fumo(status, fumo):
    assert install_status_to_fumo(status) == fumo


def test_install_status_mapping_covers_dl_table():
    for status in INSTALL_STATUS:
        fumo = install_status_to_fumo(status)
        assert interpret_result_code(fumo).name != "Unknown Result Code"
    assert interpret_result_code(install_status_to_fumo(900)).outcome is SUCCEEDED
    assert interpret_result_code(install_status_to_fumo(902)).outcome is CANCELLED


@pytest.mark.parametrize("status", [200, 899, 1000, -900])
def test_install_status_to_fumo_rejects_non_9xx(status):
    with pytest.raises(ValueError, match=str(status)):
        install_status_to_fumo(status)
