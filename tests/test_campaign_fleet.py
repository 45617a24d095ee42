"""A campaign run end to end by the fleet simulator against a real server,
on SQLite and PostgreSQL: a wave halts on injected 402 results, the failed
devices are retried, and after the resume every phone runs the target image
(checked by its SHA-256 from fixtures/firmware/PROVENANCE.md)."""

from __future__ import annotations

import pytest

from dmserver.sim.fleet import (
    ApiClient,
    FailurePlan,
    Fleet,
    FleetRunner,
    FleetSpec,
    FirmwareShare,
    fleet_device_id,
    luhn_digit,
)

from .conftest import MODEL, NEW_SHA256, NEW_VERSION, OLD_IMAGE, OLD_VERSION
from .test_api_server import api_key

PHASE_SECONDS = 120


def test_luhn_digit_of_known_imei():
    # 490154203237518 is a valid IMEI whose check digit is 8.
    assert luhn_digit("49015420323751") == "8"
    assert fleet_device_id(0, 49015420323751) == "IMEI:490154203237518"


def test_failure_plan_shares_are_stable():
    plan = FailurePlan({402: 0.25}, salt="s")
    ids = [fleet_device_id(n) for n in range(400)]
    chosen = [d for d in ids if plan.code_for(d) == 402]
    assert chosen == [d for d in ids if FailurePlan({402: 0.25}, salt="s").code_for(d) == 402]
    # A hash-based quarter of 400 phones: within a wide band around 100.
    assert 60 <= len(chosen) <= 140
    with pytest.raises(ValueError):
        FailurePlan({499: 0.1})


def test_fleet_campaign_halts_and_completes(server, tmp_path):
    api = ApiClient(server.url, api_key(server))
    spec = FleetSpec(
        count=12, model=MODEL, manufacturer="Example",
        firmware=[FirmwareShare(OLD_VERSION, OLD_IMAGE)],
        cert=server.data_dir / "keys" / "signing-cert.pem", state_root=tmp_path / "phones",
    )
    fleet = Fleet(spec)
    fleet.create()
    assert api.import_devices(fleet.provisioning_rows()) == 12
    campaign = api.request("POST", "/campaigns", {
        "name": "fleet", "target_version": NEW_VERSION, "selection": {"models": [MODEL]},
        "waves": ["25%", "100%"], "error_threshold": 0.1, "min_sample": 3,
    })
    campaign_id = campaign["id"]
    api.request("POST", f"/campaigns/{campaign_id}/start")
    plan = FailurePlan()
    plan.set_devices([item.device_id for item in fleet.phones], 402)
    runner = FleetRunner(fleet.phones, server.url + "/dm", workers=4, failures=plan)

    def state() -> str:
        return api.request("GET", f"/campaigns/{campaign_id}")["state"]

    try:
        assert runner.serve(api, campaign_id=campaign_id, until=lambda: state() == "halted",
                            max_seconds=PHASE_SECONDS)
        runner.wait_idle()
        progress = api.request("GET", f"/campaigns/{campaign_id}/progress")
        first = progress["waves"][0]
        # Wave 1 is 25% of 12 = 3 devices. The first 402 halts the campaign,
        # and jobs not yet delivered then are withdrawn (back to pending).
        failed = first["buckets"].get("failed:402", 0)
        assert failed >= 1
        assert failed + first["buckets"].get("pending", 0) == 3
        assert progress["halt_reason"].startswith("wave 1: ")
        assert progress["waves"][1]["state"] == "pending"
        assert runner.stats.reported == {402: failed}
        plan.clear()
        assert api.request("POST", f"/campaigns/{campaign_id}/retry")["retried"] == failed
        api.request("POST", f"/campaigns/{campaign_id}/resume")
        assert runner.serve(api, campaign_id=campaign_id, until=lambda: state() == "completed",
                            max_seconds=PHASE_SECONDS)
        runner.wait_idle()
    finally:
        runner.close()
    progress = api.request("GET", f"/campaigns/{campaign_id}/progress")
    assert progress["buckets"] == {"succeeded": 12}
    assert [item.phone.image_sha256() for item in fleet.phones] == [NEW_SHA256] * 12
    assert [item.phone.firmware_version for item in fleet.phones] == [NEW_VERSION] * 12
