"""The push service: wakes phones up for queued FOTA jobs.

``PushService`` is a Twisted service that runs beside the web site. On start
and then every ``scan_interval`` seconds it reads the open jobs of devices
that have an MSISDN (in the database thread pool) and hands the ones that
need a push to a ``PushDispatcher``. Two paths exist:

- Package 0: a DM notification (``pkg0``) in a WSP push with a fresh
  16-bit session id per attempt. Its digest uses the device's server
  password and the server nonce the device issued last, or the profile's
  resync nonce when none is known. The phone opens a session with Alert
  1200 and that SessionID. ``correlate_session`` matches it against the
  pushes sent, and the dispatcher stops.
- Session-less: for devices whose profile has ``"sessionless": true`` the
  service picks the package from the stored firmware version and model,
  marks the job delivered and pushes a Service Loading document with the
  job's download descriptor URL. The phone downloads, installs and sends
  an install notify; a 900 completes the job (``fota/downloads.py``). When
  the phone never fetches the descriptor after ``max_pushes`` pushes, or
  sends no install notify within ``notify_window`` seconds of fetching it,
  the job returns to ``queued`` and the Package 0 path takes over.

Every attempt and its outcome are job events (``push/history.py``), and
the in-memory dispatcher state is rebuilt from them on start. Device
profile keys are listed in ``push/profile.py``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..store.models import Device
from . import pkg0, sl, wsp
from .dispatcher import PushDispatcher, PushOutcome
from .gateways import FileGateway, KannelPapGateway, KannelSendsmsGateway, SmsGateway
from .history import (
    MODE_SESSIONLESS,
    OUTCOME_EXHAUSTED,
    PHASE_AWAIT_NOTIFY,
    PHASE_PUSHING,
    PushTarget,
    collect_push_work,
    correlate_session,
    fail_job,
    fall_back_job,
    record_push,
)
from .profile import DeviceProfile, ProfileError, parse_device_profile, resync_nonce_name

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
# NOTE: an estimate for feature phones. A 1 MB package over GPRS takes a few
# minutes, and the install and reboot a few more.
DEFAULT_NOTIFY_WINDOW = 1800.0  # seconds


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
# The service


class _BudgetSpent(Exception):
    """Raised by the PDU factory when the job already had its maximum pushes."""


@dataclass
class _ActivePush:
    target: PushTarget
    phase: str
    finished: bool = False
    # Given up by the dispatcher after gateway failures; scheduled again
    # when a push goes through or as the probe of a later scan.
    parked: bool = False
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
        """Read open jobs and schedule, update or drop their pushes.

        A failed database read is logged, and the next scan tries again.
        """
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
        self._probe_gateway()
        targets_by_job = {target.job_id: target for target in targets}
        for job_id, entry in list(self._active.items()):
            target = targets_by_job.get(job_id)
            if target is None:
                self._drop(entry)
            elif entry.finished and target.mode != entry.target.mode:
                self._drop(entry)
            else:
                self._update(entry, target)
                targets_by_job.pop(job_id)
        for target in targets_by_job.values():
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

    def _parked(self) -> list[_ActivePush]:
        return [entry for entry in self._active.values() if entry.parked]

    def _probe_gateway(self) -> None:
        """Schedule one parked job again when nothing else tests the gateway."""
        parked = self._parked()
        if parked and not self.dispatcher.pending_jobs:
            self._unpark(parked[0])

    def _unpark_all(self) -> None:
        for entry in self._parked():
            self._unpark(entry)

    def _unpark(self, entry: _ActivePush) -> None:
        entry.parked = False
        entry.finished = False
        self.dispatcher.schedule(
            entry.key, entry.target.msisdn, lambda attempt: self._build_pdu(entry, attempt)
        )

    def _park(self, entry: _ActivePush, attempt: int, error: str | None) -> None:
        if not self._parked():
            log.warn(
                "push gateway {gateway} keeps failing ({error}); jobs wait until a "
                "push goes through",
                gateway=self.dispatcher.gateway.name,
                error=error,
            )
        # The pushes this dispatcher run sent before the outage count.
        entry.target.attempts += attempt - 1
        entry.built.clear()
        entry.parked = True
        entry.finished = True

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
        if outcome is PushOutcome.GATEWAY_EXHAUSTED:
            self._record(
                job_id,
                {
                    "attempt": total,
                    "outcome": outcome.value,
                    "error": error,
                    "mode": entry.target.mode,
                    "gateway": self.dispatcher.gateway.name,
                },
            )
            self._park(entry, attempt, error)
            return
        if outcome is PushOutcome.SENT and self._parked():
            # The gateway works again. The parked jobs are scheduled from a
            # fresh reactor turn, not inside the dispatcher's callback.
            self._reactor.callLater(0, self._unpark_all)
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
    "ProfileError",
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
