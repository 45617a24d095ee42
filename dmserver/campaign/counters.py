"""Progress buckets of campaign members and the per-wave counters.

Every member of a campaign is in exactly one bucket:

- ``pending``: not yet given a job (its wave is not open, or it waits for
  a dispatch slot);
- ``queued``: a job was created and waits for the device's next session;
- ``notified``: a push notification was sent for the queued job;
- ``delivered``: the PkgURL and Exec were sent (job ``delivered`` or
  ``accepted``);
- ``downloading``: the device fetched the descriptor or package (job
  ``downloading``, ``downloaded`` or ``installed``);
- ``succeeded``, ``cancelled``;
- ``failed:<code>``: failed with a FUMO result code or SyncML status
  (``failed:none`` when the job failed without a code);
- ``deferred:<reason>``: held back by a policy check, retried later;
- ``expired``: the job stayed queued or notified longer than the
  campaign's in-flight timeout and was cancelled with the reason "no
  response". Expired members count as failures in the totals (so the
  error threshold, resume and retry treat them like failed members) and
  are also reported on their own as ``expired``.

The table ``campaign_counters`` stores, per campaign and wave, how many
members each bucket has. A member's move from one bucket to another is one
atomic decrement and one increment in the same transaction as the job
change that caused it, so progress is read from a few counter rows rather
than by scanning jobs.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..store.models import CampaignCounter, Job

logger = logging.getLogger(__name__)

PENDING = "pending"
QUEUED = "queued"
NOTIFIED = "notified"
DELIVERED = "delivered"
DOWNLOADING = "downloading"
SUCCEEDED = "succeeded"
CANCELLED = "cancelled"
EXPIRED = "expired"
FAILED_PREFIX = "failed:"
DEFERRED_PREFIX = "deferred:"

# Buckets of members that have a job the device has not finished.
IN_FLIGHT = (QUEUED, NOTIFIED, DELIVERED, DOWNLOADING)
# Buckets of members whose job was delivered but has no result yet.
UNDELIVERED = (QUEUED, NOTIFIED)

_BUCKET_OF_JOB_STATE = {
    "queued": QUEUED,
    "delivered": DELIVERED,
    "accepted": DELIVERED,
    "downloading": DOWNLOADING,
    "downloaded": DOWNLOADING,
    "installed": DOWNLOADING,
    "succeeded": SUCCEEDED,
    "cancelled": CANCELLED,
}


def failed_bucket(code: int | None) -> str:
    return f"{FAILED_PREFIX}{code if code is not None else 'none'}"


def deferred_bucket(reason: str) -> str:
    return f"{DEFERRED_PREFIX}{reason}"


def bucket_for_job(job: Job, state: str) -> str:
    """Return the bucket of a member whose job just entered ``state``."""
    if state == "failed":
        return failed_bucket(job.result_code)
    return _BUCKET_OF_JOB_STATE.get(state, state)


def is_final(bucket: str) -> bool:
    return bucket in (SUCCEEDED, CANCELLED, EXPIRED) or bucket.startswith(FAILED_PREFIX)


def is_retryable(bucket: str) -> bool:
    """Tell whether ``retry`` gives a member in ``bucket`` a new job."""
    return bucket == EXPIRED or bucket.startswith(FAILED_PREFIX)


def _upsert(session: Session, campaign_id: int, wave: int, name: str, delta: int) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"campaign counters need SQLite or PostgreSQL, not {dialect}")
    statement = insert(CampaignCounter).values(
        campaign_id=campaign_id, wave=wave, name=name, value=delta
    )
    statement = statement.on_conflict_do_update(
        index_elements=["campaign_id", "wave", "name"],
        set_={"value": CampaignCounter.value + delta},
    )
    session.execute(statement)


def add(session: Session, campaign_id: int, changes: dict[tuple[int, str], int]) -> None:
    """Apply counter changes {(wave, bucket): delta}.

    Rows are updated in sorted order, so two transactions that touch the
    same rows lock them in the same order and cannot deadlock each other.
    """
    for (wave, name), delta in sorted(changes.items()):
        if delta:
            _upsert(session, campaign_id, wave, name, delta)


def move(session: Session, campaign_id: int, wave: int, old: str | None, new: str) -> None:
    """Count one member out of bucket ``old`` (None: a new member) and into ``new``."""
    changes: dict[tuple[int, str], int] = defaultdict(int)
    if old is not None:
        changes[(wave, old)] -= 1
    changes[(wave, new)] += 1
    add(session, campaign_id, changes)


def read(session: Session, campaign_id: int) -> dict[int, dict[str, int]]:
    """Return {wave: {bucket: count}} with zero counts left out."""
    rows = session.execute(
        select(CampaignCounter.wave, CampaignCounter.name, CampaignCounter.value).where(
            CampaignCounter.campaign_id == campaign_id
        )
    ).all()
    result: dict[int, dict[str, int]] = defaultdict(dict)
    for wave, name, value in rows:
        if value:
            result[wave][name] = int(value)
    return dict(result)


def read_wave(session: Session, campaign_id: int, wave: int) -> dict[str, int]:
    rows = session.execute(
        select(CampaignCounter.name, CampaignCounter.value).where(
            CampaignCounter.campaign_id == campaign_id, CampaignCounter.wave == wave
        )
    ).all()
    return {name: int(value) for name, value in rows if value}


def summarize(buckets: dict[str, int]) -> dict[str, int]:
    """Return totals of one wave: members, succeeded, failed (expired
    included), expired, cancelled, finished, in_flight, pending and
    deferred."""
    expired = buckets.get(EXPIRED, 0)
    failed = sum(v for k, v in buckets.items() if k.startswith(FAILED_PREFIX)) + expired
    deferred = sum(v for k, v in buckets.items() if k.startswith(DEFERRED_PREFIX))
    succeeded = buckets.get(SUCCEEDED, 0)
    cancelled = buckets.get(CANCELLED, 0)
    return {
        "members": sum(buckets.values()),
        "succeeded": succeeded,
        "failed": failed,
        "expired": expired,
        "cancelled": cancelled,
        "finished": succeeded + failed + cancelled,
        "in_flight": sum(buckets.get(name, 0) for name in IN_FLIGHT),
        "pending": buckets.get(PENDING, 0),
        "deferred": deferred,
    }
