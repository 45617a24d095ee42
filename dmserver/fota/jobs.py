"""FOTA job lifecycle: creation, state changes with history, and results.

A job is durable: it is queued while the device is offline, delivered in a
DM session, followed through the download, and closed by the Generic Alert
that reports the FUMO result code, possibly days later and after a reboot.

States, in order:

    queued -> delivered -> accepted -> downloading -> downloaded
           -> installed -> succeeded | failed

``delivered`` means the Replace of PkgURL and the Exec were sent; ``accepted``
that the device returned 202 for the Exec; ``downloading`` and
``downloaded`` follow the descriptor and package requests; ``installed`` is
an install notify of 900. Any state before a final one can go to ``failed``
or ``cancelled``. The functions here run inside a database transaction.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from ..store.models import Device, Job, JobEvent

log = Logger(namespace="dmserver.jobs")

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# States in which a job waits for the device to report a result.
AWAITING_RESULT = ("delivered", "accepted", "downloading", "downloaded", "installed")
# States in which a Generic Alert or install notify may still change the job.
OPEN_STATES = ("queued",) + AWAITING_RESULT
TOKEN_BYTES = 12
# Detail key of a "delivered" event whose package went out in a Service
# Loading push: that job is completed by its install notify alone.
SESSIONLESS_KEY = "sessionless"


class JobError(ValueError):
    pass


def create_job(session: Session, device: Device, target_version: str, now: datetime) -> Job:
    """Queue a FOTA job; reject a second open job for the same device."""
    existing = session.scalars(
        select(Job).where(Job.device_pk == device.id, Job.state.in_(OPEN_STATES))
    ).first()
    if existing is not None:
        raise JobError(
            f"device {device.device_id} already has open job {existing.id} "
            f"(state {existing.state}, target {existing.target_version}); "
            f"cancel it first with: dmserver job cancel {existing.id}"
        )
    job = Job(
        device_pk=device.id,
        target_version=target_version,
        state="queued",
        token=secrets.token_urlsafe(TOKEN_BYTES),
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    record_event(session, job, "queued", now, target_version=target_version)
    log.info(
        "job {job_id} queued: device {device_id} to version {version}",
        job_id=job.id,
        device_id=device.device_id,
        version=target_version,
    )
    return job


def record_event(session: Session, job: Job, kind: str, now: datetime, **detail) -> None:
    session.add(JobEvent(job_id=job.id, at=now, kind=kind, detail=detail))


def set_state(session: Session, job: Job, state: str, now: datetime, **detail) -> None:
    """Move ``job`` to ``state`` and record the change; final states are kept."""
    if job.state in FINAL_STATES:
        log.info(
            "job {job_id} is already {state}; ignoring change to {new}",
            job_id=job.id,
            state=job.state,
            new=state,
        )
        return
    previous = job.state
    job.state = state
    job.updated_at = now
    if state in FINAL_STATES:
        job.finished_at = now
    record_event(session, job, state, now, previous=previous, **detail)
    # Campaign progress counters and webhooks follow the change in this
    # transaction.
    from ..campaign import progress

    progress.job_state_changed(session, job, previous, state, now, detail)
    log.info(
        "job {job_id} {previous} -> {state} {detail}",
        job_id=job.id,
        previous=previous,
        state=state,
        detail=detail or "",
    )


def advance(session: Session, job: Job, state: str, now: datetime, **detail) -> None:
    """Move forward along the normal path only (a late request must not undo progress)."""
    order = ("queued",) + AWAITING_RESULT
    if job.state in order and state in order and order.index(state) <= order.index(job.state):
        return
    set_state(session, job, state, now, **detail)


def close_with_result(session: Session, job: Job, result_code: int, now: datetime, source: str) -> None:
    """Close the job with a FUMO result code from a Generic Alert."""
    from ..mo.fumo import JobOutcome, interpret_result_code

    meaning = interpret_result_code(result_code)
    if job.state in FINAL_STATES:
        # An install notify may have failed the job already; the FUMO result
        # is the more precise account of the same failure, so keep it.
        if job.state == "failed" and meaning.outcome is not JobOutcome.SUCCEEDED:
            job.result_code = result_code
            job.result_text = meaning.name
            record_event(session, job, "result", now, result_code=result_code, source=source)
        else:
            log.warn(
                "job {job_id} is {state}; FUMO result {code} from {source} ignored",
                job_id=job.id,
                state=job.state,
                code=result_code,
                source=source,
            )
        return
    job.result_code = result_code
    job.result_text = meaning.name
    state = "succeeded" if meaning.outcome is JobOutcome.SUCCEEDED else "failed"
    if meaning.outcome is JobOutcome.CANCELLED:
        state = "cancelled"
    set_state(session, job, state, now, result_code=result_code, meaning=meaning.name, source=source)


def delivered_sessionless(session: Session, job: Job) -> bool:
    """Tell whether the job's last delivery was a session-less push."""
    event = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.kind == "delivered")
        .order_by(JobEvent.id.desc())
    ).first()
    return event is not None and bool((event.detail or {}).get(SESSIONLESS_KEY))


def find_job_for_alert(
    session: Session, device: Device, correlator: str | None, source: str | None
) -> Job | None:
    """Find the job a Generic Alert reports on.

    A Correlator must name one of the device's jobs. Without one (devices
    lose it across the reboot of an update), the alert's Source must lie
    below the FUMO node the job was delivered to; with no Source either, only
    a device with exactly one job awaiting a result can be matched.
    """
    if correlator:
        return session.scalars(
            select(Job).where(Job.device_pk == device.id, Job.token == correlator)
        ).first()
    candidates = session.scalars(
        select(Job)
        .where(Job.device_pk == device.id, Job.state.in_(AWAITING_RESULT))
        .order_by(Job.id.desc())
    ).all()
    if source:
        for job in candidates:
            if job.fumo_node and (source == job.fumo_node or source.startswith(job.fumo_node + "/")):
                return job
        return None
    return candidates[0] if len(candidates) == 1 else None
