"""The pre-Exec device policy: which nodes are read and what each verdict is."""

from __future__ import annotations

import pytest

from dmserver.campaign.policy import (
    DEFAULT_NODES,
    NodeWrite,
    evaluate,
    nodes_to_read,
)
from dmserver.campaign.spec import ModelNodes, Policy, parse_policy

PACKAGE = 31_061
VENDOR = ModelNodes(
    battery="./Vendor/Power/Level",
    free_storage="./Vendor/Flash/Free",
    bearer="./Vendor/Net/Bearer",
    severity="./FUMO/x/Ext/Severity",
    wifi_only="./FUMO/x/Ext/WiFiOnly",
)


def ok(value: str) -> tuple[int, str]:
    return 200, value


def test_nodes_read_only_for_configured_checks():
    assert nodes_to_read(Policy(), "FP-100") == []
    assert nodes_to_read(Policy(min_battery=30), "FP-100") == [DEFAULT_NODES.battery]
    policy = Policy(min_battery=30, storage_factor=2.0, wifi_only=True, severity=3, models={"V-1": VENDOR})
    assert nodes_to_read(policy, "V-1") == [
        VENDOR.battery, VENDOR.free_storage, VENDOR.wifi_only, VENDOR.bearer, VENDOR.severity,
    ]
    # A model without an entry falls back to the DevDetail extension leaves.
    assert nodes_to_read(policy, "OTHER") == [DEFAULT_NODES.battery, DEFAULT_NODES.free_storage, DEFAULT_NODES.bearer]


@pytest.mark.parametrize(
    "battery, allowed",
    [("29", False), ("30", True), ("100", True)],
)
def test_battery_threshold(battery, allowed):
    verdict = evaluate(Policy(min_battery=30), "FP-100", {DEFAULT_NODES.battery: ok(battery)}, PACKAGE)
    assert verdict.allowed is allowed
    assert verdict.reason == (None if allowed else "battery")


def test_storage_needs_factor_times_package():
    policy = Policy(storage_factor=2.0)
    needed = 2 * PACKAGE
    short = evaluate(policy, "FP-100", {DEFAULT_NODES.free_storage: ok(str(needed - 1))}, PACKAGE)
    assert short.allowed is False
    assert short.reason == "storage"
    assert short.detail == f"{needed - 1} bytes free, {needed} needed for a {PACKAGE}-byte package"
    enough = evaluate(policy, "FP-100", {DEFAULT_NODES.free_storage: ok(str(needed))}, PACKAGE)
    assert enough.allowed is True


def test_unreadable_node_does_not_block():
    values = {DEFAULT_NODES.battery: (404, None), DEFAULT_NODES.free_storage: ok("plenty")}
    verdict = evaluate(Policy(min_battery=50, storage_factor=1.0), "FP-100", values, PACKAGE)
    assert verdict.allowed is True
    assert verdict.unknown == ["battery", "storage"]


@pytest.mark.parametrize(
    "bearer, allowed",
    [(ok("WLAN"), True), (ok("wifi"), True), (ok("GPRS"), False), ((404, None), True)],
)
def test_wifi_only_checks_bearer(bearer, allowed):
    verdict = evaluate(Policy(wifi_only=True), "FP-100", {DEFAULT_NODES.bearer: bearer}, PACKAGE)
    assert verdict.allowed is allowed
    assert verdict.reason == (None if allowed else "bearer")


def test_wifi_only_missing_bearer_is_unknown():
    verdict = evaluate(Policy(wifi_only=True), "FP-100", {}, PACKAGE)
    assert verdict.allowed is True
    assert verdict.unknown == ["bearer"]


def test_carrier_nodes_written_when_present():
    policy = Policy(wifi_only=True, severity=2, models={"V-1": VENDOR})
    values = {VENDOR.wifi_only: ok("false"), VENDOR.severity: ok("1"), VENDOR.bearer: ok("GPRS")}
    verdict = evaluate(policy, "V-1", values, PACKAGE)
    # The device enforces Wi-Fi once the node is set, so GPRS does not defer.
    assert verdict.allowed is True
    assert verdict.writes == [
        NodeWrite(VENDOR.wifi_only, "true", "bool"),
        NodeWrite(VENDOR.severity, "2", "int"),
    ]


def test_carrier_nodes_skipped_when_absent():
    policy = Policy(severity=2, models={"V-1": VENDOR})
    verdict = evaluate(policy, "V-1", {VENDOR.severity: (404, None)}, PACKAGE)
    assert verdict.allowed is True
    assert verdict.writes == []


def test_policy_spec_round_trip():
    policy = parse_policy({"min_battery": 40, "wifi_only": True, "models": {"V-1": {"battery": "./Vendor/Power/Level"}}})
    assert policy.models["V-1"].battery == "./Vendor/Power/Level"
    assert nodes_to_read(policy, "V-1") == ["./Vendor/Power/Level"]
