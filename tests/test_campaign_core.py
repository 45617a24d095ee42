"""Campaign lifecycle, wave rules, counters and dispatch limits, in the
database (SQLite and PostgreSQL) without a server.

Job outcomes are driven through the real job functions (set_state,
close_with_result), so the counters move by the same hook the server uses.
Expected counts are recomputed independently by scanning the membership
and job tables.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from dmserver.campaign import counters, dispatch, lifecycle
from dmserver.campaign.spec import ValidationError, parse_spec
from dmserver.fota import jobs
from dmserver.store.db import Database
from dmserver.store.models import (
    Campaign,
    CampaignDevice,
    CampaignEvent,
    Device,
    Job,
    Package,
    WebhookDelivery,
    WebhookEndpoint,
)

MODEL = "FP-100"
OLD = "1.0"
TARGET = "2.0"
T0 = datetime(2026, 3, 2, 12, 0, 0)


@pytest.fixture
def db(db_url):
    database = Database(db_url)
    database.upgrade()
    database.call(lambda s: _packages(s))
    yield database
    database.dispose()


def _packages(session) -> None:
    for payload_type, source, size in (("full", None, 1000), ("delta", OLD, 100)):
        session.add(
            Package(
                model=MODEL,
                source_version=source,
                target_version=TARGET,
                payload_type=payload_type,
                path=f"packages/{payload_type}.pkg",
                size=size,
                sha256="0" * 64,
                created_at=T0,
            )
        )


def add_devices(db, count, *, start=0, **attributes) -> list[str]:
    ids = [f"IMEI:{35000000000000 + start + n:015d}" for n in range(count)]

    def insert(session):
        for device_id in ids:
            values = {"model": MODEL, "firmware_version": OLD, **attributes}
            session.add(
                Device(
                    device_id=device_id,
                    client_username=device_id,
                    client_password="c",
                    server_password="s",
                    dev_info={},
                    created_at=T0,
                    **values,
                )
            )

    db.call(insert)
    return ids


def make_campaign(db, **overrides) -> int:
    body = {
        "name": "test rollout",
        "target_version": TARGET,
        "selection": {"models": [MODEL]},
        "waves": ["10%", "50%", "100%"],
        "success_threshold": 0.9,
        "error_threshold": 0.1,
        "min_sample": 5,
        **overrides,
    }
    spec = parse_spec(body)
    campaign_id = db.call(lambda s: lifecycle.create(s, spec, T0).id)
    db.call(lambda s: lifecycle.begin_start(s, campaign_id, T0))
    db.call(lambda s: lifecycle.finish_start(s, campaign_id, {}, T0))
    return campaign_id


def run_dispatch(db, campaign_id, now=T0) -> list[dispatch.Dispatched]:
    return db.call(lambda s: dispatch.dispatch_campaign(s, campaign_id, now))


def finish_jobs(db, job_ids, code: int, now=T0) -> None:
    """Take each job through delivery to a FUMO result, one transaction each
    (as separate DM sessions would)."""
    for job_id in job_ids:
        db.call(lambda s: jobs.set_state(s, s.get(Job, job_id), "delivered", now))
        db.call(lambda s: jobs.advance(s, s.get(Job, job_id), "downloading", now))
        db.call(lambda s: jobs.close_with_result(s, s.get(Job, job_id), code, now, source="./FUMO/x"))


def scanned_buckets(db, campaign_id) -> dict[int, dict[str, int]]:
    """Bucket counts recomputed from the membership rows."""
    rows = db.call(
        lambda s: s.execute(
            select(CampaignDevice.wave, CampaignDevice.status).where(
                CampaignDevice.campaign_id == campaign_id
            )
        ).all()
    )
    result: dict[int, Counter] = {}
    for wave, status in rows:
        result.setdefault(wave, Counter())[status] += 1
    return {wave: dict(c) for wave, c in result.items()}


def campaign_row(db, campaign_id) -> Campaign:
    return db.call(lambda s: s.get(Campaign, campaign_id))


def wave_states(db, campaign_id) -> list[str]:
    return db.call(lambda s: [w.state for w in lifecycle.waves_of(s, campaign_id)])


# ---------------------------------------------------------------------------
# Definitions


@pytest.mark.parametrize(
    "change, field",
    [
        ({"waves": ["10%", "5%", "100%"]}, "waves[1]"),
        ({"waves": ["1%", "50%"]}, "waves[1]"),
        ({"waves": ["0%", "100%"]}, "waves[0]"),
        ({"waves": ["ten", "100%"]}, "waves[0]"),
        ({"selection": {}}, "selection"),
        ({"selection": {"models": "FP-100"}}, "selection.models"),
        ({"selection": {"colour": ["red"]}}, "selection.colour"),
        ({"error_threshold": 1.5}, "error_threshold"),
        ({"limits": {"window": {"start": "25:00", "end": "03:00"}}}, "limits.window.start"),
        ({"limits": {"default_timezone": "Mars/Olympus"}}, "limits.default_timezone"),
        ({"limits": {"max_concurrent": 0}}, "limits.max_concurrent"),
        ({"policy": {"min_battery": 101}}, "policy.min_battery"),
        ({"policy": {"models": {"FP-100": {"battery": "DevDetail/Bat"}}}}, "policy.models.FP-100.battery"),
        ({"name": ""}, "name"),
    ],
)
def test_spec_errors_name_field(change, field):
    body = {"name": "x", "target_version": TARGET, "selection": {"models": [MODEL]}, **change}
    with pytest.raises(ValidationError) as raised:
        parse_spec(body)
    assert raised.value.field == field


def test_spec_accepts_counts_and_percentages():
    spec = parse_spec(
        {"name": "x", "target_version": TARGET, "selection": {"models": [MODEL]},
         "waves": [5, "50", "100%"]}
    )
    assert [w.cumulative(1000) for w in spec.waves] == [5, 50, 1000]


# ---------------------------------------------------------------------------
# Waves and counters


def test_waves_split_by_cumulative_share(db):
    add_devices(db, 200)
    campaign_id = make_campaign(db, waves=["1%", "10%", "100%"])
    sizes = db.call(lambda s: [w.size for w in lifecycle.waves_of(s, campaign_id)])
    # ceil(200 * 1%) = 2, ceil(200 * 10%) = 20 cumulative.
    assert sizes == [2, 18, 180]
    assert scanned_buckets(db, campaign_id) == {1: {"pending": 2}, 2: {"pending": 18}, 3: {"pending": 180}}
    assert db.call(lambda s: counters.read(s, campaign_id)) == scanned_buckets(db, campaign_id)


def test_devices_at_target_or_other_model_excluded(db):
    add_devices(db, 5)
    add_devices(db, 3, start=100, firmware_version=TARGET)
    add_devices(db, 2, start=200, model="OTHER")
    campaign_id = make_campaign(db)
    assert db.call(lambda s: lifecycle.member_count(s, campaign_id)) == 5


def test_counters_follow_job_events(db):
    add_devices(db, 20)
    campaign_id = make_campaign(db)
    created = run_dispatch(db, campaign_id)
    # Wave 1 is 10% of 20 devices.
    assert len(created) == 2
    assert db.call(lambda s: counters.read(s, campaign_id))[1] == {"queued": 2}
    first, second = created
    db.call(lambda s: jobs.set_state(s, s.get(Job, first.job_id), "delivered", T0))
    db.call(lambda s: jobs.set_state(s, s.get(Job, first.job_id), "accepted", T0))
    assert db.call(lambda s: counters.read(s, campaign_id))[1] == {"queued": 1, "delivered": 1}
    db.call(lambda s: jobs.advance(s, s.get(Job, second.job_id), "downloading", T0))
    db.call(lambda s: jobs.advance(s, s.get(Job, second.job_id), "downloaded", T0))
    assert db.call(lambda s: counters.read(s, campaign_id))[1] == {"delivered": 1, "downloading": 1}
    assert db.call(lambda s: counters.read(s, campaign_id)) == scanned_buckets(db, campaign_id)


def test_success_threshold_opens_next_wave(db):
    add_devices(db, 20)
    campaign_id = make_campaign(db)
    created = run_dispatch(db, campaign_id)
    finish_jobs(db, [d.job_id for d in created], 200)
    assert wave_states(db, campaign_id) == ["passed", "open", "pending"]
    created = run_dispatch(db, campaign_id)
    # Wave 2 reaches 50% of 20 devices: 8 more.
    assert len(created) == 8
    finish_jobs(db, [d.job_id for d in created], 200)
    created = run_dispatch(db, campaign_id)
    assert len(created) == 10
    finish_jobs(db, [d.job_id for d in created], 200)
    assert campaign_row(db, campaign_id).state == "completed"
    assert db.call(lambda s: lifecycle.progress(s, campaign_id))["totals"]["succeeded"] == 20
    assert db.call(lambda s: counters.read(s, campaign_id)) == scanned_buckets(db, campaign_id)


def test_error_threshold_halts_with_reason(db):
    add_devices(db, 100)
    campaign_id = make_campaign(db, waves=["10%", "100%"], error_threshold=0.03, min_sample=50)
    wave1 = run_dispatch(db, campaign_id)
    finish_jobs(db, [d.job_id for d in wave1], 200)
    wave2 = run_dispatch(db, campaign_id)
    assert len(wave2) == 90
    # 3% of 90 is 2.7: the third failure makes a rate below 3% impossible,
    # so the campaign halts then, before the minimum sample of 50.
    finish_jobs(db, [d.job_id for d in wave2[:10]], 200)
    finish_jobs(db, [d.job_id for d in wave2[10:12]], 402)
    assert campaign_row(db, campaign_id).state == "running"
    finish_jobs(db, [d.job_id for d in wave2[12:13]], 402)
    campaign = campaign_row(db, campaign_id)
    assert campaign.state == "halted"
    assert campaign.halt_reason == (
        "wave 2: 3 of 13 finished devices failed (23.1%), above the error threshold of 3.0%"
    )
    buckets = db.call(lambda s: counters.read(s, campaign_id))[2]
    assert buckets["failed:402"] == 3
    # Undelivered jobs were cancelled and their members wait again.
    assert buckets["pending"] == 77
    assert "queued" not in buckets
    states = db.call(lambda s: Counter(s.get(Job, d.job_id).state for d in wave2[13:]))
    assert states == {"cancelled": 77}
    assert run_dispatch(db, campaign_id) == []
    assert db.call(lambda s: counters.read(s, campaign_id)) == scanned_buckets(db, campaign_id)


def test_min_sample_rate_halts(db):
    add_devices(db, 100)
    campaign_id = make_campaign(db, waves=["100%"], error_threshold=0.2, min_sample=10)
    created = run_dispatch(db, campaign_id)
    finish_jobs(db, [d.job_id for d in created[:7]], 200)
    finish_jobs(db, [d.job_id for d in created[7:9]], 410)
    # 2 of 9 is above 20% but the sample of 10 is not reached yet.
    assert campaign_row(db, campaign_id).state == "running"
    finish_jobs(db, [d.job_id for d in created[9:10]], 200)
    assert campaign_row(db, campaign_id).state == "running"  # 2 of 10 is not above 20%
    finish_jobs(db, [d.job_id for d in created[10:11]], 410)
    assert campaign_row(db, campaign_id).state == "halted"
    assert "3 of 11 finished devices failed (27.3%)" in campaign_row(db, campaign_id).halt_reason


def test_retry_failed_then_resume_completes(db):
    add_devices(db, 40)
    campaign_id = make_campaign(db, waves=["50%", "100%"], error_threshold=0.05, min_sample=5)
    created = run_dispatch(db, campaign_id)
    finish_jobs(db, [d.job_id for d in created[:17]], 200)
    finish_jobs(db, [d.job_id for d in created[17:18]], 402)
    assert campaign_row(db, campaign_id).state == "halted"
    failed_job = created[17].job_id
    retried = db.call(lambda s: lifecycle.retry_failed(s, campaign_id, T0))
    assert retried == 1
    db.call(lambda s: lifecycle.resume(s, campaign_id, T0))
    again = run_dispatch(db, campaign_id)
    # The failed member and the two released ones get new jobs.
    assert len(again) == 3
    assert failed_job not in {d.job_id for d in again}
    finish_jobs(db, [d.job_id for d in again], 200)
    assert wave_states(db, campaign_id) == ["passed", "open"]
    rest = run_dispatch(db, campaign_id)
    finish_jobs(db, [d.job_id for d in rest], 200)
    progress = db.call(lambda s: lifecycle.progress(s, campaign_id))
    assert progress["state"] == "completed"
    assert progress["totals"]["succeeded"] == 40
    attempts = db.call(lambda s: sorted(m.attempts for m in s.scalars(select(CampaignDevice)).all()))
    assert attempts == [0] * 39 + [1]


def test_resume_without_retry_acknowledges_failures(db):
    add_devices(db, 40)
    campaign_id = make_campaign(db, waves=["100%"], error_threshold=0.1, min_sample=5)
    created = run_dispatch(db, campaign_id)
    finish_jobs(db, [d.job_id for d in created[:5]], 402)
    assert campaign_row(db, campaign_id).state == "halted"
    db.call(lambda s: lifecycle.resume(s, campaign_id, T0))
    again = run_dispatch(db, campaign_id)
    finish_jobs(db, [d.job_id for d in again[:10]], 200)
    # Only outcomes after the resume count: 0 of 10 failed.
    assert campaign_row(db, campaign_id).state == "running"


def test_wave_below_success_threshold_halts(db):
    add_devices(db, 10)
    campaign_id = make_campaign(db, waves=["100%"], success_threshold=0.9, error_threshold=1.0)
    created = run_dispatch(db, campaign_id)
    finish_jobs(db, [d.job_id for d in created[:8]], 200)
    finish_jobs(db, [d.job_id for d in created[8:]], 401)
    campaign = campaign_row(db, campaign_id)
    assert campaign.state == "halted"
    assert campaign.halt_reason == (
        "wave 1 finished with 8 of 10 devices updated, below the success threshold of 90.0%"
    )


def test_approval_gates_next_wave(db):
    add_devices(db, 10)
    campaign_id = make_campaign(db, waves=["20%", "100%"], require_approval=True)
    finish_jobs(db, [d.job_id for d in run_dispatch(db, campaign_id)], 200)
    assert wave_states(db, campaign_id) == ["passed", "awaiting-approval"]
    assert run_dispatch(db, campaign_id) == []
    db.call(lambda s: lifecycle.approve(s, campaign_id, T0))
    assert len(run_dispatch(db, campaign_id)) == 8
    with pytest.raises(lifecycle.CampaignError):
        db.call(lambda s: lifecycle.approve(s, campaign_id, T0))


def test_late_device_joins_last_wave(db):
    add_devices(db, 10)
    campaign_id = make_campaign(db)
    run_dispatch(db, campaign_id)
    add_devices(db, 1, start=500)
    later = T0 + timedelta(seconds=dispatch.SCAN_INTERVAL_SECONDS)
    run_dispatch(db, campaign_id, later)
    assert db.call(lambda s: lifecycle.member_count(s, campaign_id)) == 11
    assert scanned_buckets(db, campaign_id)[3] == {"pending": 6}
    assert db.call(lambda s: [w.size for w in lifecycle.waves_of(s, campaign_id)]) == [1, 4, 6]


def test_pause_releases_undelivered_only(db):
    add_devices(db, 10)
    campaign_id = make_campaign(db, waves=["100%"])
    created = run_dispatch(db, campaign_id)
    delivered = created[0].job_id
    db.call(lambda s: jobs.set_state(s, s.get(Job, delivered), "delivered", T0))
    db.call(lambda s: lifecycle.pause(s, campaign_id, T0))
    buckets = db.call(lambda s: counters.read(s, campaign_id))[1]
    assert buckets == {"delivered": 1, "pending": 9}
    assert db.call(lambda s: s.get(Job, delivered).state) == "delivered"
    assert run_dispatch(db, campaign_id) == []
    db.call(lambda s: lifecycle.resume(s, campaign_id, T0))
    assert len(run_dispatch(db, campaign_id)) == 9


def test_emergency_stop_cancels_delivered_jobs(db):
    add_devices(db, 4)
    campaign_id = make_campaign(db, waves=["100%"])
    created = run_dispatch(db, campaign_id)
    db.call(lambda s: jobs.set_state(s, s.get(Job, created[0].job_id), "delivered", T0))
    db.call(lambda s: lifecycle.emergency_stop(s, campaign_id, T0))
    states = db.call(lambda s: sorted(s.get(Job, d.job_id).state for d in created))
    assert states == ["cancelled"] * 4
    assert campaign_row(db, campaign_id).state == "stopped"
    assert db.call(lambda s: counters.read(s, campaign_id))[1] == {"cancelled": 1, "pending": 3}
    with pytest.raises(lifecycle.CampaignError):
        db.call(lambda s: lifecycle.resume(s, campaign_id, T0))


def test_max_concurrent_limits_dispatch(db):
    add_devices(db, 10)
    campaign_id = make_campaign(db, waves=["100%"], limits={"max_concurrent": 3})
    created = run_dispatch(db, campaign_id)
    assert len(created) == 3
    assert run_dispatch(db, campaign_id) == []
    finish_jobs(db, [created[0].job_id], 200)
    assert len(run_dispatch(db, campaign_id)) == 1


def test_push_rate_limits_dispatch(db):
    add_devices(db, 20)
    campaign_id = make_campaign(db, waves=["100%"], limits={"pushes_per_second": 2})
    # The bucket starts empty at the start time and refills at 2 per second.
    assert run_dispatch(db, campaign_id, T0) == []
    assert len(run_dispatch(db, campaign_id, T0 + timedelta(seconds=1))) == 2
    assert len(run_dispatch(db, campaign_id, T0 + timedelta(seconds=1.5))) == 1
    # The burst is one second of tokens however long the pause was.
    assert len(run_dispatch(db, campaign_id, T0 + timedelta(seconds=60))) == 2


def test_window_uses_device_local_time(db):
    # At 12:00 UTC it is 21:00 in Tokyo (UTC+9) and 07:00 in New York (UTC-5 in March 2).
    tokyo = add_devices(db, 2, timezone="Asia/Tokyo")
    add_devices(db, 2, start=100, timezone="America/New_York")
    add_devices(db, 1, start=200)
    campaign_id = make_campaign(
        db, waves=["100%"], limits={"window": {"start": "20:00", "end": "06:00"}}
    )
    created = run_dispatch(db, campaign_id, T0)
    assert sorted(d.device_id for d in created) == sorted(tokyo)
    # 22:00 UTC is 17:00 in New York and 22:00 UTC (the default zone).
    later = run_dispatch(db, campaign_id, T0 + timedelta(hours=10))
    assert len(later) == 1


def test_busy_device_deferred_then_offered_again(db):
    [device_id] = add_devices(db, 1)
    manual = db.call(
        lambda s: jobs.create_job(
            s, s.scalars(select(Device).where(Device.device_id == device_id)).one(), TARGET, T0
        ).id
    )
    campaign_id = make_campaign(db, waves=["100%"])
    assert run_dispatch(db, campaign_id) == []
    assert db.call(lambda s: counters.read(s, campaign_id))[1] == {"deferred:busy": 1}
    db.call(lambda s: jobs.set_state(s, s.get(Job, manual), "cancelled", T0))
    later = T0 + timedelta(seconds=dispatch.BUSY_RETRY_SECONDS)
    assert len(run_dispatch(db, campaign_id, later)) == 1


def test_policy_deferral_retries_later(db):
    add_devices(db, 1)
    campaign_id = make_campaign(db, waves=["100%"])
    [created] = run_dispatch(db, campaign_id)
    db.call(lambda s: lifecycle.defer_job(s, s.get(Job, created.job_id), "battery", 600, T0))
    assert db.call(lambda s: counters.read(s, campaign_id))[1] == {"deferred:battery": 1}
    assert db.call(lambda s: s.get(Job, created.job_id).state) == "cancelled"
    assert run_dispatch(db, campaign_id, T0 + timedelta(seconds=599)) == []
    [again] = run_dispatch(db, campaign_id, T0 + timedelta(seconds=600))
    assert again.job_id != created.job_id


def test_webhook_outbox_gets_job_and_campaign_events(db):
    db.call(lambda s: s.add(WebhookEndpoint(url="http://127.0.0.1:9/hook", secret="k", events=[],
                                            active=True, created_at=T0)))
    add_devices(db, 2)
    campaign_id = make_campaign(db, waves=["100%"])
    finish_jobs(db, [d.job_id for d in run_dispatch(db, campaign_id)], 200)
    events = db.call(lambda s: [d.event for d in s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))])
    assert events.count("job.finished") == 2
    assert events.count("campaign.wave_opened") == 1
    kinds = db.call(lambda s: [e.kind for e in s.scalars(select(CampaignEvent).order_by(CampaignEvent.id))])
    assert kinds == ["created", "preparing", "running", "wave_opened", "wave_passed", "completed"]


def test_stale_job_change_keeps_final_state(db):
    add_devices(db, 1)
    campaign_id = make_campaign(db, waves=["100%"], error_threshold=1.0)
    [created] = run_dispatch(db, campaign_id)
    db.call(lambda s: jobs.set_state(s, s.get(Job, created.job_id), "downloading", T0))
    # Transaction A loads the job, then B finishes it and commits first (as an
    # install notify racing the end of the package download does).
    with db.sessionmaker() as stale:
        with stale.begin():
            job = stale.get(Job, created.job_id)
            assert job.state == "downloading"
            db.call(lambda s: jobs.close_with_result(s, s.get(Job, created.job_id), 402, T0, source="x"))
            jobs.advance(stale, job, "downloaded", T0)
    stored = db.call(lambda s: (s.get(Job, created.job_id).state, s.get(Job, created.job_id).result_code))
    assert stored == ("failed", 402)
    assert db.call(lambda s: counters.read(s, campaign_id))[1] == {"failed:402": 1}


def test_resume_acknowledges_failures_for_success(db):
    add_devices(db, 20)
    campaign_id = make_campaign(
        db, waves=["50%", "100%"], success_threshold=0.95, error_threshold=0.2, min_sample=5
    )
    created = run_dispatch(db, campaign_id)
    assert len(created) == 10
    finish_jobs(db, [d.job_id for d in created[:9]], 200)
    finish_jobs(db, [d.job_id for d in created[9:]], 402)
    assert campaign_row(db, campaign_id).state == "halted"

    db.call(lambda s: lifecycle.resume(s, campaign_id, T0))
    # 9 of the 9 devices that are not acknowledged failures succeeded.
    assert campaign_row(db, campaign_id).state == "running"
    assert wave_states(db, campaign_id) == ["passed", "open"]
    progress = db.call(lambda s: lifecycle.progress(s, campaign_id))
    assert progress["waves"][0]["buckets"]["failed:402"] == 1
    events = db.call(
        lambda s: [
            (e.kind, e.detail)
            for e in s.scalars(select(CampaignEvent).order_by(CampaignEvent.id)).all()
        ]
    )
    assert ("failures_acknowledged", {"waves": {"1": 1}}) in events

    # The failing device can still be retried; when it fails again, the
    # campaign halts and a second resume acknowledges it once more.
    assert db.call(lambda s: lifecycle.retry_failed(s, campaign_id, T0, wave=1)) == 1
    again = run_dispatch(db, campaign_id)
    retried = [d for d in again if d.device_id == created[9].device_id]
    assert len(retried) == 1
    finish_jobs(db, [retried[0].job_id], 402)
    assert campaign_row(db, campaign_id).state == "halted"
    db.call(lambda s: lifecycle.resume(s, campaign_id, T0))
    rest = run_dispatch(db, campaign_id)
    finish_jobs(db, [d.job_id for d in again + rest if d.job_id != retried[0].job_id], 200)
    progress = db.call(lambda s: lifecycle.progress(s, campaign_id))
    assert progress["state"] == "completed"
    assert progress["totals"]["succeeded"] == 19
    assert progress["totals"]["failed"] == 1


def test_count_after_percentage_rejected(db):
    # Rejected when the spec is parsed, so the API returns 422 and the CLI prints an error line.
    with pytest.raises(ValidationError) as raised:
        parse_spec({"name": "mixed", "target_version": TARGET,
                    "selection": {"models": [MODEL]}, "waves": ["50%", "10", "100%"]})
    assert raised.value.field == "waves[1]"
    counts_first = parse_spec({"name": "canary", "target_version": TARGET,
                               "selection": {"models": [MODEL]}, "waves": ["10", "50%", "100%"]})
    assert db.call(lambda s: lifecycle.create(s, counts_first, T0).state) == "draft"


def test_empty_selection_completes(db):
    add_devices(db, 3)
    campaign_id = make_campaign(db, selection={"device_ids": ["IMEI:000000000000000"]})
    campaign = campaign_row(db, campaign_id)
    assert campaign.state == "completed"
    events = db.call(
        lambda s: [e.detail for e in s.scalars(
            select(CampaignEvent).where(CampaignEvent.kind == "completed")).all()]
    )
    assert events[0]["reason"] == "no device matches the selection"


def test_retry_of_missing_wave_rejected(db):
    add_devices(db, 10)
    campaign_id = make_campaign(db)
    with pytest.raises(lifecycle.CampaignError, match="has no wave 9"):
        db.call(lambda s: lifecycle.retry_failed(s, campaign_id, T0, wave=9))


def test_policy_deferral_sets_result_text(db):
    add_devices(db, 1)
    campaign_id = make_campaign(db, waves=["100%"])
    [created] = run_dispatch(db, campaign_id)
    detail = "battery 30% is below the minimum of 50%"
    db.call(lambda s: lifecycle.defer_job(
        s, s.get(Job, created.job_id), "battery", 600, T0, detail=detail))
    assert db.call(lambda s: s.get(Job, created.job_id).result_text) == detail


def test_unanswered_jobs_expire_and_free_slots(db):
    add_devices(db, 5)
    campaign_id = make_campaign(
        db, waves=["100%"], limits={"max_concurrent": 2}, error_threshold=1.0
    )
    first = run_dispatch(db, campaign_id)
    assert len(first) == 2
    assert run_dispatch(db, campaign_id, T0 + timedelta(seconds=10)) == []
    timeout = timedelta(seconds=lifecycle.IN_FLIGHT_TIMEOUT_SECONDS)
    before = T0 + timeout - timedelta(seconds=1)
    assert db.call(lambda s: lifecycle.expire_stale_jobs(s, campaign_id, before)) == 0
    expired = db.call(lambda s: lifecycle.expire_stale_jobs(s, campaign_id, T0 + timeout))
    assert expired == 2
    for created in first:
        job = db.call(lambda s: s.get(Job, created.job_id))
        assert job.state == "cancelled"
        assert job.result_text == "no response"
    counts = db.call(lambda s: counters.read(s, campaign_id))
    assert counts == {1: {"expired": 2, "pending": 3}}
    assert scanned_buckets(db, campaign_id) == counts
    totals = db.call(lambda s: lifecycle.progress(s, campaign_id))["totals"]
    assert totals["expired"] == 2
    assert totals["failed"] == 2
    # The two slots are free again.
    again = run_dispatch(db, campaign_id, T0 + timeout + timedelta(seconds=1))
    assert len(again) == 2
    # retry gives expired members a new job.
    assert db.call(lambda s: lifecycle.retry_failed(s, campaign_id, T0 + timeout)) == 2
    assert db.call(lambda s: counters.read(s, campaign_id))[1]["pending"] == 3


def test_pause_withdraws_unfetched_sessionless_job(db):
    add_devices(db, 2)
    campaign_id = make_campaign(db, waves=["100%"])
    created = run_dispatch(db, campaign_id)
    sessionless, session_bound = created[0].job_id, created[1].job_id
    db.call(lambda s: jobs.set_state(
        s, s.get(Job, sessionless), "delivered", T0, **{jobs.SESSIONLESS_KEY: True}))
    db.call(lambda s: jobs.set_state(s, s.get(Job, session_bound), "delivered", T0))
    db.call(lambda s: lifecycle.pause(s, campaign_id, T0))
    assert db.call(lambda s: s.get(Job, sessionless).state) == "cancelled"
    assert db.call(lambda s: s.get(Job, session_bound).state) == "delivered"
    counts = db.call(lambda s: counters.read(s, campaign_id))
    assert counts == {1: {"pending": 1, "delivered": 1}}
    assert scanned_buckets(db, campaign_id) == counts
