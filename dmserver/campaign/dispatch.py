"""Dispatch: turn pending campaign members into FOTA jobs within the limits.

One call of :func:`dispatch_campaign` runs in one transaction with the
campaign row locked. It

1. adds newly matching devices to the last wave (at most every
   ``SCAN_INTERVAL_SECONDS``),
2. returns deferred members whose retry time has come to ``pending``,
3. applies the wave rules (:func:`lifecycle.evaluate`),
4. creates jobs for pending members of the open waves, in wave and rank
   order, limited by ``max_concurrent`` (members with a job not yet
   finished), by ``pushes_per_second`` (a token bucket whose state is in
   the campaign row, so several server processes share one rate) and by
   the delivery window in each device's local time.

It returns the jobs created so that the caller can send push
notifications after the transaction commits.
"""

from __future__ import annotations

import logging
import math
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ..fota import jobs
from ..store.models import Campaign, CampaignDevice, CampaignWave, Device
from . import counters, lifecycle
from .spec import Window, limits_from_json

logger = logging.getLogger(__name__)

# Jobs created for one campaign in one call, whatever the limits allow.
MAX_BATCH = 500
SCAN_INTERVAL_SECONDS = 30.0
# A member whose device has another open job is offered again after this.
BUSY_RETRY_SECONDS = 300
BUSY_REASON = "busy"
# The push token bucket contains at most this many seconds of tokens.
RATE_BURST_SECONDS = 1.0


@dataclass(frozen=True)
class Dispatched:
    """A job created by the dispatcher, for the push notification."""

    campaign_id: int
    job_id: int
    device_id: str
    msisdn: str | None


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def in_window(window: Window, local: time) -> bool:
    """Return True when the local time ``local`` is inside ``window``."""
    start, end = _clock(window.start), _clock(window.end)
    if start < end:
        return start <= local < end
    return local >= start or local < end


def local_time(now_utc: datetime, zone_name: str) -> time:
    """Return the wall-clock time in ``zone_name`` at the naive UTC ``now_utc``."""
    aware = now_utc.replace(tzinfo=timezone.utc)
    return aware.astimezone(zoneinfo.ZoneInfo(zone_name)).time()


def _zone_or_default(name: str | None, default: str) -> str:
    if not name:
        return default
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        logger.warning("unknown device time zone %r; using %s", name, default)
        return default
    return name


def running_campaign_ids(session: Session) -> list[int]:
    return list(
        session.scalars(
            select(Campaign.id).where(Campaign.state == lifecycle.RUNNING).order_by(Campaign.id)
        ).all()
    )


def _release_deferred(session: Session, campaign: Campaign, now: datetime) -> int:
    members = session.scalars(
        select(CampaignDevice).where(
            CampaignDevice.campaign_id == campaign.id,
            CampaignDevice.status.like(counters.DEFERRED_PREFIX + "%"),
            CampaignDevice.not_before <= now,
        )
    ).all()
    changes: dict[tuple[int, str], int] = defaultdict(int)
    for member in members:
        changes[(member.wave, member.status)] -= 1
        changes[(member.wave, counters.PENDING)] += 1
        member.status = counters.PENDING
        member.not_before = None
        member.updated_at = now
    counters.add(session, campaign.id, changes)
    return len(members)


def _budget(session: Session, campaign: Campaign, now: datetime) -> int:
    limits = limits_from_json(campaign.limits)
    budget = MAX_BATCH
    if limits.max_concurrent is not None:
        counts = counters.read(session, campaign.id)
        in_flight = sum(counters.summarize(b)["in_flight"] for b in counts.values())
        budget = min(budget, max(0, limits.max_concurrent - in_flight))
    if limits.pushes_per_second is not None:
        rate = limits.pushes_per_second
        # The burst is capped at one batch so that a huge rate times the
        # elapsed seconds (which may reach inf) never reaches int().
        burst = min(float(MAX_BATCH), max(1.0, rate * RATE_BURST_SECONDS))
        last = campaign.last_dispatch_at or now
        elapsed = max(0.0, (now - last).total_seconds())
        credit = (campaign.dispatch_credit or 0.0) + rate * elapsed
        campaign.dispatch_credit = min(burst, credit) if math.isfinite(credit) else burst
        budget = min(budget, int(campaign.dispatch_credit))
    campaign.last_dispatch_at = now
    return budget


def window_condition(session: Session, campaign: Campaign, waves: list[int], now: datetime):
    """Return an SQL condition on Device for the delivery window: None when
    the campaign has no window, False when no pending device is inside it."""
    limits = limits_from_json(campaign.limits)
    if limits.window is None:
        return None
    default = limits.default_timezone
    zones = session.scalars(
        select(Device.timezone).distinct()
        .join(CampaignDevice, CampaignDevice.device_pk == Device.id)
        .where(
            CampaignDevice.campaign_id == campaign.id,
            CampaignDevice.status == counters.PENDING,
            CampaignDevice.wave.in_(waves),
        )
    ).all()
    allowed = []
    allow_unset = False
    for name in zones:
        zone = _zone_or_default(name, default)
        if not in_window(limits.window, local_time(now, zone)):
            continue
        if name is None:
            allow_unset = True
        else:
            allowed.append(name)
    conditions = [Device.timezone.in_(allowed)] if allowed else []
    if allow_unset:
        conditions.append(Device.timezone.is_(None))
    return or_(*conditions) if conditions else False


def dispatch_campaign(session: Session, campaign_id: int, now: datetime) -> list[Dispatched]:
    """Run one dispatch round for a campaign (module docstring)."""
    campaign = lifecycle.lock(session, campaign_id)
    if campaign.state != lifecycle.RUNNING:
        return []
    last_scan = campaign.last_scan_at
    if last_scan is None or (now - last_scan).total_seconds() >= SCAN_INTERVAL_SECONDS:
        lifecycle.join_new_devices(session, campaign, now)
    _release_deferred(session, campaign, now)
    lifecycle.evaluate(session, campaign, now)
    if campaign.state != lifecycle.RUNNING:
        return []

    open_waves = list(
        session.scalars(
            select(CampaignWave.number).where(
                CampaignWave.campaign_id == campaign.id,
                CampaignWave.state.in_(lifecycle.DISPATCHABLE_WAVES),
            )
        ).all()
    )
    if not open_waves:
        return []
    budget = _budget(session, campaign, now)
    if budget <= 0:
        return []
    window = window_condition(session, campaign, open_waves, now)
    if window is False:
        return []
    query = (
        select(CampaignDevice, Device)
        .join(Device, Device.id == CampaignDevice.device_pk)
        .where(
            CampaignDevice.campaign_id == campaign.id,
            CampaignDevice.status == counters.PENDING,
            CampaignDevice.wave.in_(open_waves),
        )
        .order_by(CampaignDevice.wave, CampaignDevice.rank)
        .limit(budget)
    )
    if window is not None:
        query = query.where(window)
    rows = session.execute(query).all()
    created = _create_jobs(session, campaign, rows, now)
    if limits_from_json(campaign.limits).pushes_per_second is not None:
        campaign.dispatch_credit = max(0.0, campaign.dispatch_credit - len(rows))
    if created:
        logger.info("campaign %d: %d jobs queued", campaign.id, len(created))
    return created


def _create_jobs(session: Session, campaign: Campaign, rows, now: datetime) -> list[Dispatched]:
    created: list[Dispatched] = []
    changes: dict[tuple[int, str], int] = defaultdict(int)
    for member, device in rows:
        changes[(member.wave, counters.PENDING)] -= 1
        try:
            job = jobs.create_job(session, device, campaign.target_version, now)
        except jobs.JobError as error:
            bucket = counters.deferred_bucket(BUSY_REASON)
            logger.info("campaign %d: %s; offered again later", campaign.id, error)
            changes[(member.wave, bucket)] += 1
            member.status = bucket
            member.not_before = now + timedelta(seconds=BUSY_RETRY_SECONDS)
            member.updated_at = now
            continue
        job.campaign_id = campaign.id
        changes[(member.wave, counters.QUEUED)] += 1
        member.status = counters.QUEUED
        member.job_id = job.id
        member.updated_at = now
        created.append(Dispatched(campaign.id, job.id, device.device_id, device.msisdn))
    counters.add(session, campaign.id, changes)
    return created
