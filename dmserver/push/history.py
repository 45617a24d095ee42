"""Database side of pushes: which jobs need one, and what happened to them.

The history of a job's pushes is kept in its ``job_events`` rows, so no
table of its own is needed and a restarted server rebuilds its state:

- ``push``: one attempt, with ``attempt``, ``outcome`` (``sent``,
  ``gateway-error``, ``gateway-exhausted``, ``build-error``,
  ``exhausted``), ``error``, ``mode``
  (``package0`` or ``sessionless``), ``gateway``, and for Package 0 the
  notified ``session_id`` (upper-case hexadecimal), ``pkg0_version`` and
  the ``nonce`` used (``server-nonce`` or ``resync:<form>``).
- ``session-started``: the device opened a session with Alert 1200, with
  the received ``session_id``, the ``notified_session_id`` it matched and
  the ``form`` of the match.
- ``push-fallback``: a session-less delivery was given up for Package 0.
- ``push-msisdn-invalid``: the device's MSISDN is invalid, with the
  ``msisdn`` and the ``error``; recorded once per MSISDN value.
- ``delivered`` with ``sessionless: true``: the package went out in a
  Service Loading push (``fota.jobs.SESSIONLESS_KEY``).

Every function here runs inside a database transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from ..campaign.lifecycle import RUNNING, mark_notified
from ..campaign.packages import packages_for_job
from ..campaign.policy import policy_for_job
from ..fota import jobs
from ..store.models import Campaign, Device, Job, JobEvent, Package
from . import pkg0
from .dispatcher import PushOutcome
from .gateways import validate_msisdn
from .profile import DeviceProfile, ProfileError, parse_device_profile

log = Logger(namespace="dmserver.push.history")

EVENT_PUSH = "push"
EVENT_SESSION_STARTED = "session-started"
EVENT_FALLBACK = "push-fallback"
# The device's stored MSISDN cannot be pushed to; detail ``msisdn`` and
# ``error``. The job is not pushed while the device keeps that MSISDN.
EVENT_MSISDN_INVALID = "push-msisdn-invalid"
MODE_PACKAGE0 = "package0"
MODE_SESSIONLESS = "sessionless"
PHASE_PUSHING = "pushing"
PHASE_AWAIT_NOTIFY = "await-notify"
OUTCOME_EXHAUSTED = PushOutcome.EXHAUSTED.value
OUTCOME_BUILD_ERROR = PushOutcome.BUILD_ERROR.value

# Job states of a session-less job: before the descriptor fetch, after it.
SESSIONLESS_PUSH_STATES = ("delivered",)
SESSIONLESS_WAIT_STATES = ("downloading", "downloaded")
SCANNED_STATES = ("queued",) + SESSIONLESS_PUSH_STATES + SESSIONLESS_WAIT_STATES


@dataclass
class PushHistory:
    """Summary of the push events of one job.

    Counts and flags cover the current mode only: a fall-back starts the
    Package 0 history afresh.
    """

    fallback: bool = False
    attempts: int = 0  # pushes the gateway accepted
    finished: bool = False  # exhausted, build error or session started
    exhausted: bool = False
    sessionless_delivery: bool = False


def read_history(events: list[JobEvent], mode: str) -> PushHistory:
    """Summarise the push events of ``mode`` after the last fall-back."""
    history = PushHistory()
    for event in events:
        detail = event.detail or {}
        if event.kind == EVENT_FALLBACK:
            history = PushHistory(fallback=True)
        elif event.kind == "delivered":
            history.sessionless_delivery = bool(detail.get(jobs.SESSIONLESS_KEY))
        elif event.kind == EVENT_SESSION_STARTED and mode == MODE_PACKAGE0:
            history.finished = True
        elif event.kind == EVENT_PUSH and detail.get("mode", MODE_PACKAGE0) == mode:
            outcome = detail.get("outcome")
            if outcome == PushOutcome.SENT.value:
                # Failed gateway requests do not count: the phone was not
                # reached. Older records numbered them as attempts too, so
                # the sent pushes are counted rather than numbers taken.
                history.attempts += 1
            elif outcome == OUTCOME_EXHAUSTED and history.attempts > 0:
                # An exhaustion without any push sent came from gateway
                # errors alone (older records); the job is pushed again.
                history.finished = history.exhausted = True
            elif outcome == OUTCOME_BUILD_ERROR:
                history.finished = True
    return history


@dataclass
class PushTarget:
    """One job that needs pushes, with what building them requires."""

    job_id: int
    device_id: str
    msisdn: str
    mode: str
    phase: str
    token: str
    server_password: str
    server_nonce: bytes | None
    profile: DeviceProfile
    attempts: int = 0  # pushes already made in this mode
    exhausted: bool = False  # the last window ended without a response


def collect_push_work(db: Session, server_id: str, now: datetime) -> list[PushTarget]:
    """Return the jobs that need pushes, preparing or failing jobs on the way.

    A queued job of a session-less device gets its package and goes to
    ``delivered`` here. A job whose device profile is invalid or rules out
    the trigger fails here with the reason.
    """
    # NOTE: every scan reads the events of every open job of a device with
    # an MSISDN, one query per job. That is fine for thousands of jobs; a
    # much larger fleet needs a cheaper marker of jobs that are done pushing.
    rows = db.execute(
        select(Job, Device)
        .join(Device, Job.device_pk == Device.id)
        .where(Job.state.in_(SCANNED_STATES), Device.msisdn.is_not(None))
        .order_by(Job.id)
    ).all()
    targets = []
    campaign_states: dict[int, str | None] = {}
    for job, device in rows:
        if not (device.msisdn or "").strip():
            continue
        if job.campaign_id is not None:
            if job.campaign_id not in campaign_states:
                campaign = db.get(Campaign, job.campaign_id)
                campaign_states[job.campaign_id] = campaign.state if campaign else None
            if campaign_states[job.campaign_id] != RUNNING:
                # A paused, halted or finished campaign sends no pushes; the
                # service drops the job's pending pushes.
                continue
        try:
            validate_msisdn(device.msisdn.strip())
        except ValueError as error:
            _msisdn_invalid(db, job, device, str(error), now)
            continue
        target = _target_for(db, job, device, server_id, now)
        if target is not None:
            targets.append(target)
    return targets


def _msisdn_invalid(db: Session, job: Job, device: Device, error: str, now: datetime) -> None:
    """Record and log an invalid MSISDN once per job and MSISDN value."""
    recorded = db.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.kind == EVENT_MSISDN_INVALID)
        .order_by(JobEvent.id.desc())
    ).first()
    if recorded is not None and (recorded.detail or {}).get("msisdn") == device.msisdn:
        return
    jobs.record_event(db, job, EVENT_MSISDN_INVALID, now, msisdn=device.msisdn, error=error)
    log.warn(
        "job {job_id}: not pushed until the MSISDN of {device} changes: {error}",
        job_id=job.id,
        device=device.device_id,
        error=error,
    )


def _job_events(db: Session, job: Job) -> list[JobEvent]:
    return list(
        db.scalars(
            select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
        ).all()
    )


def _target_for(
    db: Session, job: Job, device: Device, server_id: str, now: datetime
) -> PushTarget | None:
    try:
        profile = parse_device_profile(device.profile)
    except ProfileError as error:
        if job.state == "queued":
            _fail(db, job, f"device profile is invalid: {error}", now)
        return None

    def target(mode: str, phase: str, attempts: int) -> PushTarget:
        return PushTarget(
            job_id=job.id,
            device_id=device.device_id,
            msisdn=device.msisdn.strip(),
            mode=mode,
            phase=phase,
            token=job.token,
            server_password=device.server_password,
            server_nonce=device.server_nonce,
            profile=profile,
            attempts=attempts,
        )

    events = _job_events(db, job)
    if job.state != "queued":
        # A session-less delivery in progress; a DM delivery needs no push.
        history = read_history(events, MODE_SESSIONLESS)
        if not history.sessionless_delivery:
            return None
        if job.state in SESSIONLESS_WAIT_STATES:
            return target(MODE_SESSIONLESS, PHASE_AWAIT_NOTIFY, history.attempts)
        if history.exhausted:
            # The pushes ran out before a restart and the fall-back was not
            # stored yet, so the service falls back now.
            exhausted = target(MODE_SESSIONLESS, PHASE_PUSHING, history.attempts)
            exhausted.exhausted = True
            return exhausted
        return target(MODE_SESSIONLESS, PHASE_PUSHING, history.attempts)

    # A campaign policy is checked with Gets in a DM session, which a
    # session-less delivery never has, so such jobs go through Package 0.
    if (
        profile.sessionless
        and not read_history(events, MODE_SESSIONLESS).fallback
        and policy_for_job(db, job) is None
    ):
        reason = _prepare_sessionless(db, job, device, now)
        if reason is None:
            return target(MODE_SESSIONLESS, PHASE_PUSHING, 0)
        fall_back(db, job, reason, now)
        events = _job_events(db, job)

    try:
        pkg0.build_notification(
            server_id=server_id,
            password=device.server_password,
            nonce=device.server_nonce,
            session_id=1,
            profile=profile.notification,
        )
    except pkg0.NotificationError as error:
        _fail(db, job, f"device profile rejects the Package 0 trigger: {error}", now)
        return None
    history = read_history(events, MODE_PACKAGE0)
    if history.finished:
        return None
    return target(MODE_PACKAGE0, PHASE_PUSHING, history.attempts)


def _prepare_sessionless(
    db: Session, job: Job, device: Device, now: datetime
) -> str | None:
    """Choose the package and mark the job delivered; return why not, or None."""
    from ..session.engine import PackageOffer, choose_package

    if not device.model:
        return "device model unknown; a DM session reads it"
    if device.firmware_version and device.firmware_version == job.target_version:
        return f"device reports {device.firmware_version} already; a DM session checks"
    packages = packages_for_job(db, job)
    if packages is None:
        packages = db.scalars(
            select(Package).where(Package.target_version == job.target_version)
        ).all()
    offers = [
        PackageOffer(
            package_id=package.id,
            model=package.model,
            source_version=package.source_version,
            payload_type=package.payload_type,
            size=package.size,
        )
        for package in packages
    ]
    chosen = choose_package(offers, device.model, device.firmware_version or "")
    if chosen is None:
        return (
            f"no package for model {device.model!r} from "
            f"{device.firmware_version or 'an unknown version'} to {job.target_version}"
        )
    job.package_id = chosen.package_id
    job.source_version = chosen.source_version
    jobs.set_state(
        db,
        job,
        "delivered",
        now,
        package_id=chosen.package_id,
        source_version=chosen.source_version,
        payload_type=chosen.payload_type,
        **{jobs.SESSIONLESS_KEY: True},
        via="service-loading",
    )
    return None


def _fail(db: Session, job: Job, reason: str, now: datetime) -> None:
    job.result_text = reason[:256]
    jobs.set_state(db, job, "failed", now, reason=reason)
    log.warn("job {job_id} failed: {reason}", job_id=job.id, reason=reason)


def fall_back(db: Session, job: Job, reason: str, now: datetime) -> None:
    """Return a session-less job to ``queued`` for a Package 0 and a DM session."""
    if job.state != "queued":
        jobs.set_state(db, job, "queued", now, reason=reason, fallback=MODE_PACKAGE0)
    jobs.record_event(db, job, EVENT_FALLBACK, now, reason=reason)
    log.info(
        "job {job_id}: session-less delivery given up ({reason}); Package 0 next",
        job_id=job.id,
        reason=reason,
    )


def fall_back_job(db: Session, job_id: int, reason: str, now: datetime) -> bool:
    """Fall back if the job still waits for a session-less result; tell if it did."""
    job = db.get(Job, job_id)
    if job is None or job.state not in SESSIONLESS_PUSH_STATES + SESSIONLESS_WAIT_STATES:
        return False
    if not jobs.delivered_sessionless(db, job):
        return False
    fall_back(db, job, reason, now)
    return True


def record_push(db: Session, job_id: int, detail: dict[str, Any], now: datetime) -> None:
    job = db.get(Job, job_id)
    if job is not None:
        jobs.record_event(db, job, EVENT_PUSH, now, **detail)
        if detail.get("outcome") == "sent":
            # Campaign progress: the member moves from queued to notified.
            mark_notified(db, job_id, now)


def fail_job(db: Session, job_id: int, reason: str, now: datetime) -> None:
    job = db.get(Job, job_id)
    if job is not None and job.state not in jobs.FINAL_STATES:
        _fail(db, job, reason, now)


def correlate_session(
    db: Session, device: Device, session_id: str, now: datetime
) -> int | None:
    """Match a server-initiated session with the pushes of the device's job.

    Records a ``session-started`` event with the form in which the
    SessionID echoes a notified session id: ``hex``, ``decimal``,
    ``byte-swapped``, or None when none matches. Returns the job id, or None
    when the device's open job has no Package 0 push.
    """
    job = db.scalars(
        select(Job)
        .where(Job.device_pk == device.id, Job.state.in_(jobs.OPEN_STATES))
        .order_by(Job.id.desc())
    ).first()
    if job is None:
        return None
    pushes = db.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.kind == EVENT_PUSH)
        .order_by(JobEvent.id.desc())
    ).all()
    notified = [
        event.detail
        for event in pushes
        if (event.detail or {}).get("session_id")
        and event.detail.get("outcome") == PushOutcome.SENT.value
    ]
    if not notified:
        return None

    form, matched = None, notified[0]
    for detail in notified:
        form = pkg0.match_session_id(int(detail["session_id"], 16), session_id)
        if form is not None:
            matched = detail
            break
    jobs.record_event(
        db,
        job,
        EVENT_SESSION_STARTED,
        now,
        session_id=session_id,
        notified_session_id=matched["session_id"],
        attempt=matched.get("attempt"),
        form=form,
    )
    if form is None:
        log.warn(
            "job {job_id}: {device} opened session {sid} with Alert 1200, which "
            "matches no notified session id (last {notified})",
            job_id=job.id,
            device=device.device_id,
            sid=session_id,
            notified=matched["session_id"],
        )
    else:
        log.info(
            "job {job_id}: {device} responded to push {attempt} with SessionID {sid} "
            "({form} form of {notified})",
            job_id=job.id,
            device=device.device_id,
            attempt=matched.get("attempt"),
            sid=session_id,
            form=form,
            notified=matched["session_id"],
        )
    return job.id
