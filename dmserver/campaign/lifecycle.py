"""Campaign lifecycle: states, operator commands, wave rules and the halt.

Campaign states::

    draft -> preparing -> running <-> paused
                          running  -> halted -> running (resume)
                          running  -> completed
    any state before completed -> cancelled | stopped

Wave states: ``pending`` -> ``open`` -> ``passed``, with
``awaiting-approval`` between pending and open when the campaign needs an
operator's approval for each wave after the first.

Rules, applied by :func:`evaluate` whenever a member's job reaches a final
state and on every scheduler tick:

- Error threshold: in any open or passed wave, let ``failed`` and
  ``finished`` count the outcomes since the last resume. The campaign halts
  when ``failed / finished`` exceeds the error threshold once ``finished``
  reaches the minimum sample (or the whole wave when it is smaller), or as
  soon as ``failed`` alone exceeds the threshold share of the wave, since
  the wave can then no longer end below it. The reason is recorded.
- Success threshold: the running wave passes when ``succeeded`` divided by
  the members that are not acknowledged failures reaches the success
  threshold, and the next wave opens (or waits for approval). A wave whose members all finished below the success threshold
  halts the campaign.
- The campaign completes when the last wave is open and every member has
  finished.

Halting or pausing cancels the jobs not yet delivered to a device and puts
their members back in ``pending``; jobs already delivered run to their
result. An emergency stop cancels every open job of the campaign, which also
closes its downloads.

Every function here runs inside a database transaction. Functions that
change a campaign lock its row first (``SELECT ... FOR UPDATE`` on
PostgreSQL), so events of one campaign that arrive at different server
processes are applied one after the other.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from .. import webhooks
from ..fota import jobs
from ..store.models import (
    Campaign,
    CampaignDevice,
    CampaignEvent,
    CampaignWave,
    Device,
    Job,
    Package,
)
from . import counters
from .spec import CampaignSpec, ValidationError, Wave, parse_wave

logger = logging.getLogger(__name__)

DRAFT = "draft"
PREPARING = "preparing"
RUNNING = "running"
PAUSED = "paused"
HALTED = "halted"
COMPLETED = "completed"
CANCELLED = "cancelled"
STOPPED = "stopped"
STATES = (DRAFT, PREPARING, RUNNING, PAUSED, HALTED, COMPLETED, CANCELLED, STOPPED)
TERMINAL_STATES = frozenset({COMPLETED, CANCELLED, STOPPED})

WAVE_PENDING = "pending"
WAVE_AWAITING_APPROVAL = "awaiting-approval"
WAVE_OPEN = "open"
WAVE_PASSED = "passed"
# Waves whose pending members may be given jobs.
DISPATCHABLE_WAVES = (WAVE_OPEN, WAVE_PASSED)

# Rows inserted per statement when members are added in bulk.
INSERT_CHUNK = 1000
# A campaign job still queued or notified this long after it was created is
# cancelled ("no response") and its member counted as expired, so phones
# that never call in do not hold max_concurrent slots or keep a wave open.
# NOTE: one value for every campaign; the campaign definition has no field
# for it yet.
IN_FLIGHT_TIMEOUT_SECONDS = 3 * 24 * 3600
NO_RESPONSE = "no response"


class CampaignError(ValueError):
    """A command that the campaign's current state does not allow."""


class CampaignNotFound(LookupError):
    pass


# ---------------------------------------------------------------------------
# Creation and lookup


def check_wave_growth(waves: list[Wave]) -> None:
    """Reject a device count that follows a percentage.

    A percentage grows with the fleet and a count does not, so a count after
    a percentage makes a smaller cumulative wave once the fleet is large
    enough (``["50%", "10", "100%"]``). Counts first and percentages after
    them are accepted.

    Raises:
        ValidationError: naming the offending ``waves[i]``.
    """
    for index in range(1, len(waves)):
        before, after = waves[index - 1], waves[index]
        if before.percent is not None and after.percent is None:
            raise ValidationError(
                f"waves[{index}]",
                f"waves are cumulative and must grow: the device count {after.text} "
                f"follows the percentage {before.text}; put device counts first",
            )


def create(session: Session, spec: CampaignSpec, now: datetime) -> Campaign:
    """Store a new campaign in state ``draft``."""
    check_wave_growth(spec.waves)
    campaign = Campaign(
        name=spec.name,
        target_version=spec.target_version,
        state=DRAFT,
        selection=spec.selection,
        waves=[wave.text for wave in spec.waves],
        success_threshold=spec.success_threshold,
        error_threshold=spec.error_threshold,
        min_sample=spec.min_sample,
        require_approval=spec.require_approval,
        limits=spec.limits_json(),
        policy=spec.policy_json(),
        max_delta_share=spec.max_delta_share,
        package_plan={},
        preparation={},
        current_wave=0,
        dispatch_credit=0.0,
        created_at=now,
        updated_at=now,
    )
    session.add(campaign)
    session.flush()
    record(session, campaign, "created", now, target_version=spec.target_version)
    logger.info("campaign %d %r created: target %s", campaign.id, spec.name, spec.target_version)
    return campaign


def get(session: Session, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} not found")
    return campaign


def write_lock(session: Session, table, row_id: int) -> None:
    """Take the write lock of one row before reading it.

    PostgreSQL locks the row. SQLite ignores FOR UPDATE and reads outside a
    transaction until the first write, so a no-op UPDATE is what makes it
    take the database write lock (waiting for other writers) before the
    read that follows.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(table)
            .where(table.id == row_id)
            .values(id=table.id)
            .execution_options(synchronize_session=False)
        )
    else:
        session.execute(select(table.id).where(table.id == row_id).with_for_update())


def lock(session: Session, campaign_id: int) -> Campaign:
    """Load the campaign row for update; later commands of other
    transactions on this campaign wait until this transaction ends."""
    with session.no_autoflush:
        write_lock(session, Campaign, campaign_id)
        campaign = session.scalars(
            select(Campaign)
            .where(Campaign.id == campaign_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).first()
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} not found")
    return campaign


def waves_of(session: Session, campaign_id: int) -> list[CampaignWave]:
    return list(
        session.scalars(
            select(CampaignWave)
            .where(CampaignWave.campaign_id == campaign_id)
            .order_by(CampaignWave.number)
        ).all()
    )


def record(session: Session, campaign: Campaign, kind: str, now: datetime, **detail: Any) -> None:
    """Store a campaign event and queue its webhook."""
    session.add(CampaignEvent(campaign_id=campaign.id, at=now, kind=kind, detail=detail))
    campaign.updated_at = now
    event = webhooks.EVENT_CAMPAIGN_WAVE if kind == "wave_opened" else webhooks.EVENT_CAMPAIGN_STATE
    webhooks.enqueue(
        session,
        event,
        {"campaign_id": campaign.id, "name": campaign.name, "state": campaign.state,
         "kind": kind, **detail},
        now,
    )


def _set_state(session: Session, campaign: Campaign, state: str, now: datetime, **detail) -> None:
    previous = campaign.state
    campaign.state = state
    if state in TERMINAL_STATES:
        campaign.finished_at = now
    record(session, campaign, state, now, previous=previous, **detail)
    logger.info("campaign %d %s -> %s %s", campaign.id, previous, state, detail or "")


# ---------------------------------------------------------------------------
# Targeting


def rank_of(campaign_id: int, device_id: str) -> int:
    """Return a device's stable pseudo-random position in a campaign: waves
    take devices in rank order, so wave 1 is a random sample of the fleet."""
    digest = hashlib.sha256(f"{campaign_id}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def models_with_target(session: Session, target_version: str) -> set[str]:
    """Models that have a full package of ``target_version``."""
    return set(
        session.scalars(
            select(Package.model).where(
                Package.target_version == target_version, Package.payload_type == "full"
            )
        ).all()
    )


def selection_clause(selection: dict[str, list[str]], target_version: str, models: Iterable[str]):
    """SQL condition on Device for the campaign's selection.

    Only devices of a model with a package of the target version, and not
    known to run the target version already, can match.
    """
    conditions = [
        Device.model.in_(sorted(models)),
        or_(Device.firmware_version.is_(None), Device.firmware_version != target_version),
    ]
    columns = {
        "manufacturers": Device.manufacturer,
        "models": Device.model,
        "firmware_versions": Device.firmware_version,
        "groups": Device.group,
        "carrier_tags": Device.carrier_tag,
        "device_ids": Device.device_id,
    }
    for key, column in columns.items():
        values = selection.get(key)
        if values:
            conditions.append(column.in_(values))
    return and_(*conditions)


def matching_devices(session: Session, campaign: Campaign) -> list[tuple[int, str]]:
    """(primary key, device id) of matching devices not yet members."""
    models = models_with_target(session, campaign.target_version)
    if not models:
        return []
    member = exists().where(
        CampaignDevice.campaign_id == campaign.id, CampaignDevice.device_pk == Device.id
    )
    rows = session.execute(
        select(Device.id, Device.device_id)
        .where(selection_clause(campaign.selection, campaign.target_version, models), ~member)
        .order_by(Device.id)
    ).all()
    return [(pk, device_id) for pk, device_id in rows]


def _insert_members(session: Session, campaign: Campaign, rows: list[dict], now: datetime) -> None:
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(CampaignDevice), rows[start:start + INSERT_CHUNK])
    changes: dict[tuple[int, str], int] = defaultdict(int)
    for row in rows:
        changes[(row["wave"], counters.PENDING)] += 1
    counters.add(session, campaign.id, changes)


def assign_waves(session: Session, campaign: Campaign, now: datetime) -> list[int]:
    """Make the matching devices members and split them into the waves by
    rank; return the size of each wave."""
    devices = matching_devices(session, campaign)
    ranked = sorted((rank_of(campaign.id, device_id), pk) for pk, device_id in devices)
    total = len(ranked)
    specs = [parse_wave(text, f"waves[{index}]") for index, text in enumerate(campaign.waves)]
    bounds: list[int] = []
    for spec in specs:
        bounds.append(max(spec.cumulative(total), bounds[-1] if bounds else 0))
    bounds[-1] = total
    sizes = [bounds[0]] + [bounds[i] - bounds[i - 1] for i in range(1, len(bounds))]
    rows = []
    wave = 0
    for index, (rank, pk) in enumerate(ranked):
        while index >= bounds[wave]:
            wave += 1
        rows.append(
            {
                "campaign_id": campaign.id,
                "device_pk": pk,
                "wave": wave + 1,
                "rank": rank,
                "status": counters.PENDING,
                "attempts": 0,
                "updated_at": now,
            }
        )
    for number, (spec, size) in enumerate(zip(specs, sizes), start=1):
        session.add(
            CampaignWave(
                campaign_id=campaign.id,
                number=number,
                spec=spec.text,
                size=size,
                state=WAVE_PENDING,
                baseline_failed=0,
                baseline_finished=0,
            )
        )
    _insert_members(session, campaign, rows, now)
    session.flush()
    return sizes


def join_new_devices(session: Session, campaign: Campaign, now: datetime) -> int:
    """Add devices that match a running campaign since it started (new
    registrations or changed attributes) to its last wave."""
    if campaign.state in TERMINAL_STATES or campaign.state in (DRAFT, PREPARING):
        return 0
    devices = matching_devices(session, campaign)
    campaign.last_scan_at = now
    if not devices:
        return 0
    waves = waves_of(session, campaign.id)
    last = waves[-1]
    rows = [
        {
            "campaign_id": campaign.id,
            "device_pk": pk,
            "wave": last.number,
            "rank": rank_of(campaign.id, device_id),
            "status": counters.PENDING,
            "attempts": 0,
            "updated_at": now,
        }
        for pk, device_id in devices
    ]
    _insert_members(session, campaign, rows, now)
    last.size += len(rows)
    record(session, campaign, "devices_joined", now, count=len(rows), wave=last.number)
    return len(rows)


# ---------------------------------------------------------------------------
# Starting


def begin_start(session: Session, campaign_id: int, now: datetime) -> Campaign:
    """Move a draft campaign to ``preparing``; its deltas are built next."""
    campaign = lock(session, campaign_id)
    if campaign.state != DRAFT:
        raise CampaignError(f"campaign {campaign_id} is {campaign.state}; only a draft campaign can start")
    if not models_with_target(session, campaign.target_version):
        raise CampaignError(
            f"no full package of version {campaign.target_version!r} exists; "
            "add the image with: dmserver firmware add"
        )
    _set_state(session, campaign, PREPARING, now)
    return campaign


def abort_start(session: Session, campaign_id: int, reason: str, now: datetime) -> None:
    """Return a campaign whose preparation failed to ``draft``."""
    campaign = lock(session, campaign_id)
    if campaign.state == PREPARING:
        campaign.preparation = {**(campaign.preparation or {}), "error": reason}
        _set_state(session, campaign, DRAFT, now, reason=reason)


def finish_start(session: Session, campaign_id: int, package_plan: dict, now: datetime) -> Campaign:
    """Make the matching devices members, open wave 1 and start running."""
    campaign = lock(session, campaign_id)
    if campaign.state != PREPARING:
        raise CampaignError(f"campaign {campaign_id} is {campaign.state}, not preparing")
    campaign.package_plan = package_plan
    sizes = assign_waves(session, campaign, now)
    campaign.started_at = now
    campaign.last_scan_at = now
    campaign.last_dispatch_at = now
    _set_state(session, campaign, RUNNING, now, members=sum(sizes), wave_sizes=sizes)
    _open_wave(session, campaign, waves_of(session, campaign.id)[0], now)
    evaluate(session, campaign, now)
    return campaign


def _open_wave(session: Session, campaign: Campaign, wave: CampaignWave, now: datetime) -> None:
    wave.state = WAVE_OPEN
    wave.opened_at = now
    campaign.current_wave = wave.number
    record(session, campaign, "wave_opened", now, wave=wave.number, spec=wave.spec, size=wave.size)


# ---------------------------------------------------------------------------
# Wave rules


def _error_breach(campaign: Campaign, wave: CampaignWave, totals: dict[str, int]) -> str | None:
    failed = totals["failed"] - wave.baseline_failed
    finished = totals["finished"] - wave.baseline_finished
    remaining = totals["members"] - wave.baseline_finished
    if failed <= 0 or finished <= 0:
        return None
    rate = failed / finished
    threshold = campaign.error_threshold
    certain = failed > threshold * remaining
    sampled = finished >= min(campaign.min_sample, remaining) and rate > threshold
    if not (certain or sampled):
        return None
    return (
        f"wave {wave.number}: {failed} of {finished} finished devices failed "
        f"({rate:.1%}), above the error threshold of {threshold:.1%}"
    )


def failure_rate(wave: CampaignWave, totals: dict[str, int]) -> float:
    """Failure rate of a wave since its last resume (0 when nothing finished)."""
    finished = totals["finished"] - wave.baseline_finished
    failed = totals["failed"] - wave.baseline_failed
    return failed / finished if finished > 0 else 0.0


def counted_members(wave: CampaignWave, totals: dict[str, int]) -> int:
    """Members the success threshold counts: all but the failures that a
    resume acknowledged (those stay visible in the failed buckets)."""
    return max(0, totals["members"] - wave.baseline_failed)


def _success_reached(campaign: Campaign, wave: CampaignWave, totals: dict[str, int]) -> bool:
    counted = counted_members(wave, totals)
    if counted == 0:
        return True
    return totals["succeeded"] / counted >= campaign.success_threshold


def evaluate(session: Session, campaign: Campaign, now: datetime) -> None:
    """Apply the wave rules (module docstring) to a locked campaign."""
    if campaign.state != RUNNING:
        return
    waves = waves_of(session, campaign.id)
    if not waves:
        return
    counts = counters.read(session, campaign.id)

    for wave in waves:
        if wave.state not in DISPATCHABLE_WAVES:
            continue
        totals = counters.summarize(counts.get(wave.number, {}))
        reason = _error_breach(campaign, wave, totals)
        if reason is not None:
            halt(
                session,
                campaign,
                reason,
                now,
                wave=wave.number,
                failure_rate=round(failure_rate(wave, totals), 6),
                failed={k: v for k, v in counts.get(wave.number, {}).items()
                        if counters.is_retryable(k)},
            )
            return

    while True:
        current = waves[campaign.current_wave - 1]
        if current.state != WAVE_OPEN:
            break
        totals = counters.summarize(counts.get(current.number, {}))
        if _success_reached(campaign, current, totals):
            current.state = WAVE_PASSED
            current.completed_at = now
            record(session, campaign, "wave_passed", now, wave=current.number,
                   succeeded=totals["succeeded"], members=totals["members"])
            if current.number == len(waves):
                break
            following = waves[current.number]
            if campaign.require_approval:
                following.state = WAVE_AWAITING_APPROVAL
                record(session, campaign, "approval_needed", now, wave=following.number)
                break
            _open_wave(session, campaign, following, now)
            continue
        unfinished = totals["members"] - totals["finished"]
        if unfinished == 0:
            acknowledged = current.baseline_failed
            note = f" ({acknowledged} acknowledged failures not counted)" if acknowledged else ""
            halt(
                session,
                campaign,
                f"wave {current.number} finished with {totals['succeeded']} of "
                f"{counted_members(current, totals)} devices updated{note}, below the "
                f"success threshold of {campaign.success_threshold:.1%}",
                now,
                wave=current.number,
            )
            return
        break

    last = waves[-1]
    if last.state in DISPATCHABLE_WAVES:
        totals = [counters.summarize(buckets) for buckets in counts.values()]
        members = sum(t["members"] for t in totals)
        finished = sum(t["finished"] for t in totals)
        if members == 0:
            _set_state(session, campaign, COMPLETED, now, succeeded=0, members=0,
                       reason="no device matches the selection")
        elif finished == members:
            succeeded = sum(t["succeeded"] for t in totals)
            _set_state(session, campaign, COMPLETED, now, succeeded=succeeded, members=members)


# ---------------------------------------------------------------------------
# Job events


def on_job_state(
    session: Session, job: Job, previous: str, state: str, now: datetime, detail: dict
) -> None:
    """Follow a campaign job's state change: move its member between
    buckets and apply the wave rules when the job finished.

    Called by :func:`dmserver.fota.jobs.set_state` in its transaction. The
    campaign row is locked before anything else is written, with autoflush
    off, so that a pending change to the job row is not flushed (and its
    row lock taken) before the campaign lock; commands that lock the
    campaign and then change jobs take the locks in the same order.
    """
    with session.no_autoflush:
        campaign = lock(session, job.campaign_id)
        member = session.scalars(
            select(CampaignDevice).where(
                CampaignDevice.campaign_id == job.campaign_id, CampaignDevice.job_id == job.id
            )
        ).first()
        if member is None:
            return
        bucket = counters.bucket_for_job(job, state)
        if bucket == member.status:
            return
        counters.move(session, campaign.id, member.wave, member.status, bucket)
        member.status = bucket
        member.updated_at = now
        if counters.is_final(bucket):
            evaluate(session, campaign, now)


def mark_notified(session: Session, job_id: int, now: datetime) -> bool:
    """Record that a push was sent for a queued campaign job."""
    member = session.scalars(select(CampaignDevice).where(CampaignDevice.job_id == job_id)).first()
    if member is None or member.status != counters.QUEUED:
        return False
    lock(session, member.campaign_id)
    counters.move(session, member.campaign_id, member.wave, counters.QUEUED, counters.NOTIFIED)
    member.status = counters.NOTIFIED
    member.updated_at = now
    return True


def defer_job(
    session: Session, job: Job, reason: str, retry_after: int, now: datetime, detail: str = ""
) -> None:
    """Hold back a campaign job that a device policy check failed.

    ``detail`` (the verdict's text, such as "battery 30% is below the
    minimum of 50%") becomes the job's ``result_text``.

    The member moves to ``deferred:<reason>`` until ``retry_after`` seconds
    have passed, and the job is cancelled; the dispatcher creates a new job
    for the member then. A job outside any campaign is left queued, so the
    device is offered it again in its next session.
    """
    job.result_text = (detail or f"deferred by the device policy: {reason}")[:256]
    if job.campaign_id is None:
        jobs.record_event(session, job, "deferred", now, reason=reason, detail=detail)
        return
    campaign = lock(session, job.campaign_id)
    member = session.scalars(
        select(CampaignDevice).where(
            CampaignDevice.campaign_id == campaign.id, CampaignDevice.job_id == job.id
        )
    ).first()
    if member is None:
        return
    bucket = counters.deferred_bucket(reason)
    counters.move(session, campaign.id, member.wave, member.status, bucket)
    member.status = bucket
    member.job_id = None
    member.not_before = now + timedelta(seconds=retry_after)
    member.updated_at = now
    session.flush()
    jobs.set_state(
        session, job, "cancelled", now, by="campaign", deferred=reason, detail=detail
    )


# ---------------------------------------------------------------------------
# Operator commands and the halt


def _sessionless_unfetched(session: Session, campaign: Campaign) -> list[CampaignDevice]:
    """Members whose job went out in a Service Loading push that the phone
    has not followed yet: the job is ``delivered`` but no package left."""
    rows = session.execute(
        select(CampaignDevice, Job)
        .join(Job, Job.id == CampaignDevice.job_id)
        .where(
            CampaignDevice.campaign_id == campaign.id,
            CampaignDevice.status == counters.DELIVERED,
            Job.state == "delivered",
        )
    ).all()
    return [member for member, job in rows if jobs.delivered_sessionless(session, job)]


def _release_undelivered(session: Session, campaign: Campaign, now: datetime, why: str) -> int:
    """Cancel the campaign's jobs not yet delivered; their members go back
    to ``pending``. Return how many were released.

    A job delivered in a Service Loading push whose descriptor the phone has
    not fetched counts as not delivered: cancelling it closes its download
    URL and stops the pushes.
    """
    members = list(
        session.scalars(
            select(CampaignDevice).where(
                CampaignDevice.campaign_id == campaign.id,
                CampaignDevice.status.in_(counters.UNDELIVERED),
            )
        ).all()
    )
    members += _sessionless_unfetched(session, campaign)
    changes: dict[tuple[int, str], int] = defaultdict(int)
    job_ids = []
    for member in members:
        changes[(member.wave, member.status)] -= 1
        changes[(member.wave, counters.PENDING)] += 1
        job_ids.append(member.job_id)
        member.status = counters.PENDING
        member.job_id = None
        member.updated_at = now
    counters.add(session, campaign.id, changes)
    # The members no longer point at these jobs, so cancelling them below
    # does not move any counter again.
    session.flush()
    for job_id in job_ids:
        job = session.get(Job, job_id) if job_id is not None else None
        if job is not None and job.state not in jobs.FINAL_STATES:
            jobs.set_state(session, job, "cancelled", now, by="campaign", reason=why)
    return len(members)


def halt(session: Session, campaign: Campaign, reason: str, now: datetime, **detail) -> None:
    """Halt a running campaign by itself and record why."""
    campaign.halt_reason = reason
    released = _release_undelivered(session, campaign, now, "campaign halted")
    _set_state(session, campaign, HALTED, now, reason=reason, released=released, **detail)
    logger.warning("campaign %d halted: %s", campaign.id, reason)


def pause(session: Session, campaign_id: int, now: datetime) -> Campaign:
    campaign = lock(session, campaign_id)
    if campaign.state != RUNNING:
        raise CampaignError(f"campaign {campaign_id} is {campaign.state}; only a running campaign can pause")
    released = _release_undelivered(session, campaign, now, "campaign paused")
    _set_state(session, campaign, PAUSED, now, released=released)
    return campaign


def resume(session: Session, campaign_id: int, now: datetime) -> Campaign:
    """Resume a paused or halted campaign.

    The failures counted so far are acknowledged: each open wave's error
    threshold applies to outcomes after the resume, and the success
    threshold leaves the acknowledged failures out of the wave's members.
    A ``failures_acknowledged`` event records how many per wave. Failed
    devices are not retried unless :func:`retry_failed` is called.
    """
    campaign = lock(session, campaign_id)
    if campaign.state not in (PAUSED, HALTED):
        raise CampaignError(
            f"campaign {campaign_id} is {campaign.state}; only a paused or halted campaign can resume"
        )
    counts = counters.read(session, campaign.id)
    newly_acknowledged: dict[str, int] = {}
    for wave in waves_of(session, campaign.id):
        totals = counters.summarize(counts.get(wave.number, {}))
        if totals["failed"] > wave.baseline_failed:
            newly_acknowledged[str(wave.number)] = totals["failed"] - wave.baseline_failed
        wave.baseline_failed = totals["failed"]
        wave.baseline_finished = totals["finished"]
    previous_reason = campaign.halt_reason
    campaign.halt_reason = None
    if newly_acknowledged:
        record(session, campaign, "failures_acknowledged", now, waves=newly_acknowledged)
    _set_state(session, campaign, RUNNING, now, acknowledged=previous_reason)
    evaluate(session, campaign, now)
    return campaign


def approve(session: Session, campaign_id: int, now: datetime) -> Campaign:
    """Open the wave that waits for approval."""
    campaign = lock(session, campaign_id)
    waiting = [w for w in waves_of(session, campaign.id) if w.state == WAVE_AWAITING_APPROVAL]
    if campaign.state != RUNNING or not waiting:
        raise CampaignError(f"campaign {campaign_id} has no wave waiting for approval")
    _open_wave(session, campaign, waiting[0], now)
    record(session, campaign, "approved", now, wave=waiting[0].number)
    evaluate(session, campaign, now)
    return campaign


def cancel(session: Session, campaign_id: int, now: datetime) -> Campaign:
    """Stop offering the update; jobs already delivered run to their result."""
    campaign = lock(session, campaign_id)
    if campaign.state in TERMINAL_STATES:
        raise CampaignError(f"campaign {campaign_id} is already {campaign.state}")
    released = _release_undelivered(session, campaign, now, "campaign cancelled")
    _set_state(session, campaign, CANCELLED, now, released=released)
    return campaign


def emergency_stop(session: Session, campaign_id: int, now: datetime) -> Campaign:
    """Cancel every open job of the campaign, delivered or not; the devices'
    downloads are refused from then on."""
    campaign = lock(session, campaign_id)
    if campaign.state in TERMINAL_STATES:
        raise CampaignError(f"campaign {campaign_id} is already {campaign.state}")
    released = _release_undelivered(session, campaign, now, "emergency stop")
    open_jobs = session.scalars(
        select(Job).where(Job.campaign_id == campaign.id, Job.state.in_(jobs.OPEN_STATES))
    ).all()
    _set_state(session, campaign, STOPPED, now, released=released, cancelled=len(open_jobs))
    for job in open_jobs:
        jobs.set_state(session, job, "cancelled", now, by="emergency stop")
    return campaign


def expire_stale_jobs(
    session: Session,
    campaign_id: int,
    now: datetime,
    timeout_seconds: float = IN_FLIGHT_TIMEOUT_SECONDS,
) -> int:
    """Cancel the running campaign's jobs that stayed queued or notified for
    ``timeout_seconds`` since they were created; their members become
    ``expired`` and free their max_concurrent slots. Return how many."""
    campaign = lock(session, campaign_id)
    if campaign.state != RUNNING:
        return 0
    cutoff = now - timedelta(seconds=timeout_seconds)
    rows = session.execute(
        select(CampaignDevice, Job)
        .join(Job, Job.id == CampaignDevice.job_id)
        .where(
            CampaignDevice.campaign_id == campaign.id,
            CampaignDevice.status.in_(counters.UNDELIVERED),
            Job.created_at <= cutoff,
        )
    ).all()
    if not rows:
        return 0

    changes: dict[tuple[int, str], int] = defaultdict(int)
    for member, _job in rows:
        changes[(member.wave, member.status)] -= 1
        changes[(member.wave, counters.EXPIRED)] += 1
        member.status = counters.EXPIRED
        member.job_id = None
        member.updated_at = now
    counters.add(session, campaign.id, changes)
    # The members no longer point at the jobs, so cancelling them does not
    # move a counter again.
    session.flush()
    for _member, job in rows:
        if job.state not in jobs.FINAL_STATES:
            job.result_text = NO_RESPONSE
            jobs.set_state(session, job, "cancelled", now, by="campaign", reason=NO_RESPONSE)

    record(session, campaign, "jobs_expired", now, count=len(rows),
           timeout_seconds=timeout_seconds)
    logger.warning(
        "campaign %d: %d jobs got no response within %g s and expired",
        campaign.id, len(rows), timeout_seconds,
    )
    evaluate(session, campaign, now)
    return len(rows)


def retry_failed(session: Session, campaign_id: int, now: datetime, wave: int | None = None) -> int:
    """Give failed and expired members (of one wave, or all) a new job;
    others are not touched. Return how many members will be retried.

    Raises:
        CampaignError: the campaign's state allows no retry, or it has no
            wave ``wave``.
    """
    campaign = lock(session, campaign_id)
    if campaign.state in (DRAFT, PREPARING, CANCELLED, STOPPED):
        raise CampaignError(f"campaign {campaign_id} is {campaign.state}; failed devices cannot be retried")
    query = select(CampaignDevice).where(
        CampaignDevice.campaign_id == campaign.id,
        or_(
            CampaignDevice.status.like(counters.FAILED_PREFIX + "%"),
            CampaignDevice.status == counters.EXPIRED,
        ),
    )
    if wave is not None:
        numbers = [row.number for row in waves_of(session, campaign.id)]
        if wave not in numbers:
            raise CampaignError(
                f"campaign {campaign_id} has no wave {wave}; its waves are 1 to {len(numbers)}"
            )
        query = query.where(CampaignDevice.wave == wave)
    members = session.scalars(query).all()
    changes: dict[tuple[int, str], int] = defaultdict(int)
    per_wave: dict[int, int] = defaultdict(int)
    for member in members:
        changes[(member.wave, member.status)] -= 1
        changes[(member.wave, counters.PENDING)] += 1
        per_wave[member.wave] += 1
        member.status = counters.PENDING
        member.job_id = None
        member.attempts += 1
        member.not_before = None
        member.updated_at = now
    counters.add(session, campaign.id, changes)
    for row in waves_of(session, campaign.id):
        retried = per_wave.get(row.number, 0)
        row.baseline_failed = max(0, row.baseline_failed - retried)
        row.baseline_finished = max(0, row.baseline_finished - retried)
    record(session, campaign, "retry", now, members=len(members), wave=wave)
    if members and campaign.state == COMPLETED:
        campaign.finished_at = None
        _set_state(session, campaign, RUNNING, now, reason="failed devices retried")
    return len(members)


# ---------------------------------------------------------------------------
# Progress


def progress(session: Session, campaign_id: int) -> dict[str, Any]:
    """Return the campaign's state and its per-wave bucket counts."""
    campaign = get(session, campaign_id)
    counts = counters.read(session, campaign_id)
    waves = []
    for wave in waves_of(session, campaign_id):
        buckets = counts.get(wave.number, {})
        totals = counters.summarize(buckets)
        waves.append(
            {
                "number": wave.number,
                "spec": wave.spec,
                "state": wave.state,
                "size": wave.size,
                "buckets": dict(sorted(buckets.items())),
                "totals": totals,
                "failure_rate": round(failure_rate(wave, totals), 6),
                "opened_at": wave.opened_at,
                "passed_at": wave.completed_at,
            }
        )
    overall: dict[str, int] = defaultdict(int)
    for buckets in counts.values():
        for name, value in buckets.items():
            overall[name] += value
    return {
        "campaign_id": campaign.id,
        "state": campaign.state,
        "current_wave": campaign.current_wave,
        "halt_reason": campaign.halt_reason,
        "preparation": campaign.preparation or {},
        "waves": waves,
        "buckets": dict(sorted(overall.items())),
        "totals": counters.summarize(dict(overall)),
    }


def member_count(session: Session, campaign_id: int) -> int:
    return session.scalar(
        select(func.count()).select_from(CampaignDevice).where(CampaignDevice.campaign_id == campaign_id)
    ) or 0
