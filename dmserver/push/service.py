"""The push service: wakes phones up for queued FOTA jobs.

``PushService`` is a Twisted service that runs beside the web site. On start
and then every ``scan_interval`` seconds it reads the open jobs of devices
that have an MSISDN (in the database thread pool) and hands the ones that
need a push to a ``PushDispatcher``. Two paths exist:

- Package 0: a DM notification (``pkg0``) in a WSP push, digest made with
  the device's server password and the server nonce the device issued last
  (the profile's resync nonce when none is known), a fresh 16-bit session
  id per attempt. The phone opens a session with Alert 1200 and that
  SessionID; ``correlate_session`` matches it against the pushes sent and
  the dispatcher stops.
- Session-less: for devices whose profile has ``"sessionless": true`` the
  service picks the package from the stored firmware version and model,
  marks the job delivered and pushes a Service Loading document with the
  job's download descriptor URL. The phone downloads, installs and sends
  an install notify; a 900 completes the job (``fota/downloads.py``). When
  the phone never fetches the descriptor after ``max_pushes`` pushes, or
  sends no install notify within ``notify_window`` seconds of fetching it,
  the job returns to ``queued`` and the Package 0 path takes over.

Every attempt is a ``push`` JobEvent; the session that follows is a
``session-started`` event and a fall-back is a ``push-fallback`` event. The
in-memory dispatcher state is rebuilt from these events on start.

Device profile keys (JSON in ``devices.profile``; other keys are ignored):

    pkg0_version          11 or 12 (default 12)
    resync_nonce          "zero-bytes" (default), "base64-text", "hex-text"
    max_server_id_length  1..255, or absent for no limit
    sessionless           true: push Service Loading, report by install notify
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..fota import jobs
from ..store.models import Device, Job, JobEvent, Package
from . import pkg0, sl, wsp
from .dispatcher import PushDispatcher, PushOutcome
from .gateways import (
    FileGateway,
    KannelPapGateway,
    KannelSendsmsGateway,
    SmsGateway,
    validate_msisdn,
)

log = Logger(namespace="dmserver.push.service")

GATEWAY_KINDS = ("none", "file", "kannel-sendsms", "kannel-pap")
USERNAME_ENV = "DMSERVER_PUSH_USERNAME"
PASSWORD_ENV = "DMSERVER_PUSH_PASSWORD"

DEFAULT_RATE = 1.0  # SMS per second
DEFAULT_RETRY_WINDOW = 300.0  # seconds
DEFAULT_BACKOFF = 2.0
DEFAULT_MAX_PUSHES = 3
DEFAULT_SCAN_INTERVAL = 10.0  # seconds
# Time a phone has from fetching the descriptor to its install notify.
# NOTE: an estimate for feature phones: a 1 MB package over GPRS takes a few
# minutes, the install and reboot a few more.
DEFAULT_NOTIFY_WINDOW = 1800.0  # seconds

EVENT_PUSH = "push"
EVENT_SESSION_STARTED = "session-started"
EVENT_FALLBACK = "push-fallback"
MODE_PACKAGE0 = "package0"
MODE_SESSIONLESS = "sessionless"
PHASE_PUSHING = "pushing"
PHASE_AWAIT_NOTIFY = "await-notify"
OUTCOME_EXHAUSTED = PushOutcome.EXHAUSTED.value
OUTCOME_BUILD_ERROR = PushOutcome.BUILD_ERROR.value
ALERT_SERVER_INITIATED = "1200"

# Job states of a session-less job: before the descriptor fetch, after it.
SESSIONLESS_PUSH_STATES = ("delivered",)
SESSIONLESS_WAIT_STATES = ("downloading", "downloaded")
SCANNED_STATES = ("queued",) + SESSIONLESS_PUSH_STATES + SESSIONLESS_WAIT_STATES

RESYNC_NONCES = {
    "zero-bytes": pkg0.ResyncNonce.ZERO_BYTES,
    "base64-text": pkg0.ResyncNonce.BASE64_TEXT,
    "hex-text": pkg0.ResyncNonce.HEX_TEXT,
}
PKG0_VERSIONS = (pkg0.NOTIFICATION_VERSION_11, pkg0.NOTIFICATION_VERSION_12)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# ---------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class GatewaySpec:
    """A parsed ``--push-gateway`` value: kind and its directory or URL."""

    kind: str
    target: str = ""


def parse_gateway_spec(text: str) -> GatewaySpec:
    """Parse ``none``, ``file:DIR``, ``kannel-sendsms:URL`` or ``kannel-pap:URL``.

    Raises:
        ValueError: an unknown kind, or a missing directory or URL.
    """
    text = text.strip()
    if text == "none":
        return GatewaySpec("none")
    kind, separator, target = text.partition(":")
    if kind not in GATEWAY_KINDS or kind == "none" or not separator or not target:
        raise ValueError(
            f"push gateway {text!r} is invalid; use none, file:DIR, "
            f"kannel-sendsms:URL or kannel-pap:URL"
        )
    if kind.startswith("kannel-") and not target.startswith(("http://", "https://")):
        raise ValueError(f"push gateway {text!r} needs an http:// or https:// URL")
    return GatewaySpec(kind, target)


@dataclass
class PushConfig:
    """Settings of the push service (``dmserver serve --push-*``).

    Times are in seconds, ``rate`` in SMS per second.
    """

    gateway: GatewaySpec = field(default_factory=lambda: GatewaySpec("none"))
    username: str | None = None
    password: str | None = None
    rate: float = DEFAULT_RATE
    retry_window: float = DEFAULT_RETRY_WINDOW
    backoff: float = DEFAULT_BACKOFF
    max_pushes: int = DEFAULT_MAX_PUSHES
    scan_interval: float = DEFAULT_SCAN_INTERVAL
    notify_window: float = DEFAULT_NOTIFY_WINDOW

    def __post_init__(self) -> None:
        for name in ("rate", "retry_window", "scan_interval", "notify_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"push {name} must be positive, got {getattr(self, name)}")
        if self.backoff < 1:
            raise ValueError(f"push backoff must be at least 1, got {self.backoff}")
        if self.max_pushes < 1:
            raise ValueError(f"push max must be at least 1, got {self.max_pushes}")

    @property
    def enabled(self) -> bool:
        return self.gateway.kind != "none"

    def credentials(self) -> tuple[str | None, str | None]:
        """Return (username, password): options first, then the environment."""
        username = self.username or os.environ.get(USERNAME_ENV) or None
        password = self.password or os.environ.get(PASSWORD_ENV) or None
        return username, password


def build_gateway(config: PushConfig, reactor: Any = None) -> SmsGateway | None:
    """Create the gateway ``config`` names, or None for ``none``.

    Raises:
        ValueError: a Kannel sendsms gateway without credentials.
    """
    spec = config.gateway
    username, password = config.credentials()
    if spec.kind == "none":
        return None
    if spec.kind == "file":
        return FileGateway(spec.target)
    if spec.kind == "kannel-sendsms":
        if not username or password is None:
            raise ValueError(
                f"the kannel-sendsms gateway needs a sendsms user: pass "
                f"--push-username and --push-password or set {USERNAME_ENV} "
                f"and {PASSWORD_ENV}"
            )
        return KannelSendsmsGateway(spec.target, username, password, reactor=reactor)
    return KannelPapGateway(
        spec.target, username=username, password=password, reactor=reactor
    )


# ---------------------------------------------------------------------------
# Device profiles


class ProfileError(ValueError):
    """A device profile value is invalid."""


@dataclass(frozen=True)
class DeviceProfile:
    """What the push service reads from ``devices.profile``."""

    notification: pkg0.NotificationProfile = pkg0.NotificationProfile()
    sessionless: bool = False


def parse_device_profile(data: dict[str, Any] | None) -> DeviceProfile:
    """Read the push keys of a device profile; other keys are ignored.

    Raises:
        ProfileError: a push key has a value outside its allowed set.
    """
    data = data or {}
    version = data.get("pkg0_version", pkg0.NOTIFICATION_VERSION_12)
    if isinstance(version, bool) or version not in PKG0_VERSIONS:
        raise ProfileError(
            f"profile pkg0_version {version!r} is invalid; use 11 or 12"
        )
    resync_name = data.get("resync_nonce", "zero-bytes")
    if resync_name not in RESYNC_NONCES:
        raise ProfileError(
            f"profile resync_nonce {resync_name!r} is invalid; use one of "
            f"{', '.join(RESYNC_NONCES)}"
        )
    limit = data.get("max_server_id_length")
    if limit is not None and (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not 1 <= limit <= pkg0.MAX_SERVER_ID_LENGTH
    ):
        raise ProfileError(
            f"profile max_server_id_length {limit!r} is invalid; use 1 to "
            f"{pkg0.MAX_SERVER_ID_LENGTH}"
        )
    sessionless = data.get("sessionless", False)
    if not isinstance(sessionless, bool):
        raise ProfileError(
            f"profile sessionless {sessionless!r} is invalid; use true or false"
        )
    return DeviceProfile(
        notification=pkg0.NotificationProfile(
            version=version,
            resync_nonce=RESYNC_NONCES[resync_name],
            max_server_id_length=limit,
        ),
        sessionless=sessionless,
    )


def resync_nonce_name(profile: pkg0.NotificationProfile) -> str:
    for name, value in RESYNC_NONCES.items():
        if value is profile.resync_nonce:
            return name
    return profile.resync_nonce.name


# ---------------------------------------------------------------------------
# Push history, read from job events


@dataclass
class PushHistory:
    """What the events of one job say about its pushes.

    Counts and flags cover the current mode only: a fall-back starts the
    Package 0 history afresh.
    """

    fallback: bool = False
    attempts: int = 0
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
            if outcome in (PushOutcome.SENT.value, PushOutcome.GATEWAY_ERROR.value):
                history.attempts = max(history.attempts, int(detail.get("attempt", 0)))
            elif outcome == OUTCOME_EXHAUSTED:
                history.finished = history.exhausted = True
            elif outcome == OUTCOME_BUILD_ERROR:
                history.finished = True
    return history


# ---------------------------------------------------------------------------
# Database work (runs in the database thread pool)


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
    exhausted: bool = False  # the last window ended without an answer


def collect_push_work(db: Session, server_id: str, now: datetime) -> list[PushTarget]:
    """Return the jobs that need pushes, preparing or failing jobs on the way.

    A queued job of a session-less device gets its package and goes to
    ``delivered`` here. A job whose device profile is invalid or rules out
    the trigger fails here with the reason.
    """
    rows = db.execute(
        select(Job, Device)
        .join(Device, Job.device_pk == Device.id)
        .where(Job.state.in_(SCANNED_STATES), Device.msisdn.is_not(None))
        .order_by(Job.id)
    ).all()
    targets = []
    for job, device in rows:
        if not (device.msisdn or "").strip():
            continue
        try:
            validate_msisdn(device.msisdn.strip())
        except ValueError as error:
            log.warn("job {job_id}: not pushed: {error}", job_id=job.id, error=str(error))
            continue
        target = _target_for(db, job, device, server_id, now)
        if target is not None:
            targets.append(target)
    return targets


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

    if profile.sessionless and not read_history(events, MODE_SESSIONLESS).fallback:
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


def fail_job(db: Session, job_id: int, reason: str, now: datetime) -> None:
    job = db.get(Job, job_id)
    if job is not None and job.state not in jobs.FINAL_STATES:
        _fail(db, job, reason, now)


def correlate_session(
    db: Session, device: Device, session_id: str, now: datetime
) -> int | None:
    """Match a server-initiated session with the pushes of the device's job.

    Records a ``session-started`` event with the form in which the
    SessionID echoes a notified session id (``hex``, ``decimal``,
    ``byte-swapped``, or None when none matches) and returns the job id, or
    None when the device's open job has no Package 0 push.
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
            "job {job_id}: {device} answered push {attempt} with SessionID {sid} "
            "({form} form of {notified})",
            job_id=job.id,
            device=device.device_id,
            attempt=matched.get("attempt"),
            sid=session_id,
            form=form,
            notified=matched["session_id"],
        )
    return job.id


# ---------------------------------------------------------------------------
# The service


class _BudgetSpent(Exception):
    """Raised by the PDU factory when the job already had its maximum pushes."""


@dataclass
class _ActivePush:
    target: PushTarget
    phase: str
    finished: bool = False
    budget_spent: bool = False
    notify_timer: IDelayedCall | None = None
    # attempt number (dispatcher's count) -> detail of the PDU built for it
    built: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return str(self.target.job_id)


def random_session_id() -> int:
    """Return a session id for Package 0: 1..0xFFFF."""
    return secrets.randbelow(pkg0.MAX_SESSION_ID) + 1


class PushService(service.Service):
    """Schedules pushes for open jobs; see the module docstring."""

    name = "push"

    def __init__(
        self,
        db: Any,
        settings: Any,
        config: PushConfig,
        gateway: SmsGateway,
        reactor: Any = None,
        *,
        session_ids: Callable[[], int] = random_session_id,
        clock_now: Callable[[], datetime] = utcnow,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._db = db
        self._settings = settings
        self.config = config
        self._reactor = reactor
        self._session_ids = session_ids
        self._now = clock_now
        self.dispatcher = PushDispatcher(
            gateway,
            reactor,
            rate_per_second=config.rate,
            retry_window=config.retry_window,
            backoff=config.backoff,
            max_pushes=config.max_pushes,
            on_push=self._on_push,
        )
        self._active: dict[int, _ActivePush] = {}
        # Scans and event records take turns, so a scan never reads the
        # database between an outcome and its record.
        self._lock = defer.DeferredLock()
        self._loop: LoopingCall | None = None

    # -- service lifecycle --------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._settings.on_server_initiated_session = self.on_server_initiated_session
        self._loop = LoopingCall(self.scan)
        self._loop.clock = self._reactor
        running = self._loop.start(self.config.scan_interval, now=True)
        running.addErrback(lambda failure: log.failure("push scan loop stopped", failure))
        log.info(
            "push service started: gateway {gateway}, {rate} SMS/s, window {window} s, "
            "backoff {backoff}, at most {max} pushes per job",
            gateway=self.dispatcher.gateway.name,
            rate=self.config.rate,
            window=self.config.retry_window,
            backoff=self.config.backoff,
            max=self.config.max_pushes,
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._settings.on_server_initiated_session == self.on_server_initiated_session:
            self._settings.on_server_initiated_session = None
        for entry in list(self._active.values()):
            self._drop(entry)
        log.info("push service stopped")

    # -- scanning ------------------------------------------------------------------

    def scan(self) -> defer.Deferred:
        """Read open jobs and schedule, update or drop pushes; never fails."""
        return self._lock.run(lambda: defer.ensureDeferred(self._scan()))

    async def _scan(self) -> None:
        now = self._now()
        server_id = self._settings.server_id
        try:
            targets = await self._db.run(
                lambda session: collect_push_work(session, server_id, now)
            )
        except Exception:
            log.failure("push scan failed; retrying at the next scan")
            return
        self._apply(targets)

    def _apply(self, targets: list[PushTarget]) -> None:
        wanted = {target.job_id: target for target in targets}
        for job_id, entry in list(self._active.items()):
            target = wanted.get(job_id)
            if target is None:
                self._drop(entry)
            elif entry.finished and target.mode != entry.target.mode:
                self._drop(entry)
            else:
                self._update(entry, target)
                wanted.pop(job_id)
        for target in wanted.values():
            self._start(target)

    def _update(self, entry: _ActivePush, target: PushTarget) -> None:
        # The nonce may have changed since the job was scheduled.
        entry.target.server_nonce = target.server_nonce
        entry.target.server_password = target.server_password
        if target.phase == PHASE_AWAIT_NOTIFY and entry.phase == PHASE_PUSHING:
            # The phone fetched the descriptor: stop pushing, wait for its report.
            self.dispatcher.session_started(entry.key)
            self._await_notify(entry)

    def _start(self, target: PushTarget) -> None:
        entry = _ActivePush(target=target, phase=target.phase)
        self._active[target.job_id] = entry
        if target.phase == PHASE_AWAIT_NOTIFY:
            # NOTE: after a restart the window starts again from now, so the
            # time the phone already had before the restart is not counted.
            self._await_notify(entry)
            return
        if target.exhausted or target.attempts >= self.config.max_pushes:
            # NOTE: the last window was running when the server stopped; the
            # dispatcher state does not survive a restart, so it ends now.
            entry.finished = True
            self._exhausted(entry, target.attempts)
            return
        if target.attempts:
            # NOTE: the back-off timing is not stored. A job resumed after a
            # restart is pushed again at once and its windows start afresh.
            log.info(
                "job {job_id}: resuming pushes after {n} earlier attempts",
                job_id=target.job_id,
                n=target.attempts,
            )
        self.dispatcher.schedule(
            entry.key, target.msisdn, lambda attempt: self._build_pdu(entry, attempt)
        )

    def _drop(self, entry: _ActivePush) -> None:
        self.dispatcher.cancel(entry.key)
        if entry.notify_timer is not None and entry.notify_timer.active():
            entry.notify_timer.cancel()
        self._active.pop(entry.target.job_id, None)

    def _await_notify(self, entry: _ActivePush) -> None:
        entry.phase = PHASE_AWAIT_NOTIFY
        entry.notify_timer = self._reactor.callLater(
            self.config.notify_window, self._notify_window_expired, entry
        )

    def _notify_window_expired(self, entry: _ActivePush) -> None:
        entry.notify_timer = None
        if self._active.get(entry.target.job_id) is not entry or entry.finished:
            return
        entry.finished = True
        self._fall_back(
            entry,
            f"no install notify within {self.config.notify_window:g} s of the "
            f"descriptor download",
        )

    # -- building PDUs ------------------------------------------------------------

    def _build_pdu(self, entry: _ActivePush, attempt: int) -> bytes:
        target = entry.target
        total = target.attempts + attempt
        if total > self.config.max_pushes:
            entry.budget_spent = True
            raise _BudgetSpent(f"job {target.job_id} had {total - 1} pushes already")
        if target.mode == MODE_SESSIONLESS:
            url = f"{self._settings.base_url}/dl/dd/{target.token}"
            entry.built[attempt] = {"form": "service-loading", "url": url}
            return sl.build_sl_push(url)

        session_id = self._session_ids()
        notification = target.profile.notification
        package0 = pkg0.build_notification(
            server_id=self._settings.server_id,
            password=target.server_password,
            nonce=target.server_nonce,
            session_id=session_id,
            profile=notification,
        )
        entry.built[attempt] = {
            "form": "package0",
            "session_id": pkg0.format_session_id(session_id),
            "pkg0_version": notification.version,
            "nonce": (
                "server-nonce"
                if target.server_nonce is not None
                else f"resync:{resync_nonce_name(notification)}"
            ),
        }
        return wsp.build_dm_notification_push(package0)

    # -- outcomes -------------------------------------------------------------------

    def _on_push(
        self, key: str, attempt: int, outcome: PushOutcome, error: str | None
    ) -> None:
        job_id = int(key)
        entry = self._active.get(job_id)
        if entry is None:
            self._record(job_id, {"attempt": attempt, "outcome": outcome.value, "error": error})
            return
        total = entry.target.attempts + attempt
        if outcome is PushOutcome.BUILD_ERROR and entry.budget_spent:
            outcome, total = PushOutcome.EXHAUSTED, total - 1
        if outcome is PushOutcome.EXHAUSTED:
            entry.finished = True
            self._exhausted(entry, total)
            return
        detail = {
            "attempt": total,
            "outcome": outcome.value,
            "error": error,
            "mode": entry.target.mode,
            "gateway": self.dispatcher.gateway.name,
            **entry.built.pop(attempt, {}),
        }
        self._record(job_id, detail)
        if outcome is PushOutcome.BUILD_ERROR:
            entry.finished = True
            self._run_db(
                lambda session: fail_job(
                    session, job_id, f"cannot build the push: {error}", self._now()
                )
            )

    def _exhausted(self, entry: _ActivePush, attempts: int) -> None:
        mode = entry.target.mode
        self._record(
            entry.target.job_id,
            {
                "attempt": attempts,
                "outcome": OUTCOME_EXHAUSTED,
                "error": f"no answer after {attempts} pushes",
                "mode": mode,
                "gateway": self.dispatcher.gateway.name,
            },
        )
        if mode == MODE_SESSIONLESS:
            self._fall_back(
                entry, f"descriptor not fetched after {attempts} Service Loading pushes"
            )
        else:
            log.warn(
                "job {job_id}: {device} did not call in after {n} pushes; the job "
                "stays queued until the device calls in",
                job_id=entry.target.job_id,
                device=entry.target.device_id,
                n=attempts,
            )

    def _fall_back(self, entry: _ActivePush, reason: str) -> None:
        job_id = entry.target.job_id
        now = self._now()
        running = self._run_db(lambda session: fall_back_job(session, job_id, reason, now))
        # The next scan finds the job queued again and pushes Package 0.
        running.addCallback(lambda changed: self.scan() if changed else None)

    def _record(self, job_id: int, detail: dict[str, Any]) -> None:
        now = self._now()
        self._run_db(lambda session: record_push(session, job_id, detail, now))

    def _run_db(self, work: Callable[[Session], Any]) -> defer.Deferred:
        running = self._lock.run(lambda: self._db.run(work))
        running.addErrback(self._db_failed)
        return running

    def _db_failed(self, failure: Any) -> None:
        log.failure("storing a push record failed", failure)
        return None

    # -- the session hook (database thread) ---------------------------------------

    def on_server_initiated_session(
        self, db: Session, device: Device, session_id: str, now: datetime
    ) -> None:
        """Correlate a session opened with Alert 1200; stop that job's pushes."""
        job_id = correlate_session(db, device, session_id, now)
        if job_id is None:
            return
        call_from_thread = getattr(self._reactor, "callFromThread", None)
        if call_from_thread is None:
            self._session_started(job_id)
        else:
            call_from_thread(self._session_started, job_id)

    def _session_started(self, job_id: int) -> None:
        self.dispatcher.session_started(str(job_id))
        entry = self._active.get(job_id)
        if entry is not None:
            entry.finished = True


__all__ = [
    "DeviceProfile",
    "GatewaySpec",
    "PushConfig",
    "PushService",
    "PushTarget",
    "build_gateway",
    "collect_push_work",
    "correlate_session",
    "parse_device_profile",
    "parse_gateway_spec",
]
