"""Push scheduling: rate limit, retries with back-off, attempt records.

``PushDispatcher`` sends the notification pushes of FOTA jobs through one
gateway:

- A token bucket limits the SMS rate: each push costs as many tokens as it
  has SMS segments, tokens refill at ``rate_per_second`` up to ``burst``.
- After each attempt the dispatcher waits for the phone to call in. If
  ``session_started(job_id)`` does not arrive within the window, it pushes
  again; the n-th window lasts ``retry_window * backoff ** (n - 1)``
  seconds.
- A failed gateway request does not count towards ``max_pushes``, because
  the phone was not reached. The same attempt is retried after
  ``gateway_retry_delay * backoff ** (n - 1)`` seconds (at most
  ``MAX_GATEWAY_RETRY_DELAY``) for the n-th failure in a row. After
  ``max_gateway_retries`` retries in a row fail, the job is reported as
  ``gateway-exhausted`` and dropped, so its owner can schedule it again
  once the gateway works.
- After ``max_pushes`` attempts and a last empty window the job is given
  up.
- A gateway outage is logged once when the first request fails and once
  when a push goes through again, not per job.
- Every attempt and the final give-up are reported through
  ``on_push(job_id, attempt, outcome, error)``.

The dispatcher uses no global reactor. Time comes from the injected
``IReactorTime`` (``twisted.internet.task.Clock`` in tests). The PDU is
built by ``pdu_factory(attempt)`` just before each send, so each attempt
can carry a fresh nonce or session id.

Example::

    dispatcher = PushDispatcher(
        gateway, reactor, rate_per_second=5, retry_window=300, backoff=2,
        max_pushes=3, on_push=record_attempt,
    )
    dispatcher.schedule("job-17", "+15550100", make_package0_push)
    ...
    dispatcher.session_started("job-17")
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from dmserver.push import sms
from dmserver.push.gateways import PushReceipt, SmsGateway

logger = logging.getLogger(__name__)

# Tolerance for floating-point drift when a refill timer fires.
_TOKEN_EPSILON = 1e-9
MAX_REFERENCE = 0xFF
# Seconds before the first retry of a push the gateway failed.
DEFAULT_GATEWAY_RETRY_DELAY = 30.0
# Retries in a row after gateway failures before a job is given up as
# gateway-exhausted: with the defaults, about 2 hours of back-off.
DEFAULT_MAX_GATEWAY_RETRIES = 8
MAX_GATEWAY_RETRY_DELAY = 3600.0


class PushOutcome(enum.StrEnum):
    """Result of one push attempt, as passed to ``on_push``."""

    SENT = "sent"
    GATEWAY_ERROR = "gateway-error"
    # pdu_factory raised, for example because the device profile cannot take
    # the trigger: the job is dropped without further attempts.
    BUILD_ERROR = "build-error"
    # max_pushes attempts went unanswered; ``attempt`` is the last one.
    EXHAUSTED = "exhausted"
    # The gateway failed max_gateway_retries + 1 times in a row; ``attempt``
    # is the attempt that could not be sent. The job may be scheduled again.
    GATEWAY_EXHAUSTED = "gateway-exhausted"


OnPush = Callable[[str, int, PushOutcome, "str | None"], None]
PduFactory = Callable[[int], bytes]


@dataclass
class _Job:
    job_id: str
    msisdn: str
    pdu_factory: PduFactory
    attempts: int = 0  # pushes the gateway accepted
    gateway_failures: int = 0  # failed gateway requests in a row
    pdu: bytes | None = None
    timer: IDelayedCall | None = None
    active: bool = True


class PushDispatcher:
    """Rate-limited push sender with retries; see the module docstring."""

    def __init__(
        self,
        gateway: SmsGateway,
        clock: IReactorTime,
        rate_per_second: float,
        retry_window: float,
        backoff: float,
        max_pushes: int,
        on_push: OnPush,
        *,
        burst: float = 1.0,
        gateway_retry_delay: float = DEFAULT_GATEWAY_RETRY_DELAY,
        max_gateway_retries: int = DEFAULT_MAX_GATEWAY_RETRIES,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be positive, got {rate_per_second}")
        if retry_window <= 0:
            raise ValueError(f"retry_window must be positive, got {retry_window}")
        if backoff < 1:
            raise ValueError(f"backoff must be at least 1, got {backoff}")
        if max_pushes < 1:
            raise ValueError(f"max_pushes must be at least 1, got {max_pushes}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1 token, got {burst}")
        if gateway_retry_delay <= 0:
            raise ValueError(f"gateway_retry_delay must be positive, got {gateway_retry_delay}")
        if max_gateway_retries < 0:
            raise ValueError(f"max_gateway_retries must be at least 0, got {max_gateway_retries}")

        self.gateway = gateway
        self._clock = clock
        self._rate = float(rate_per_second)
        self._retry_window = float(retry_window)
        self._backoff = float(backoff)
        self._max_pushes = max_pushes
        self._on_push = on_push
        self._burst = float(burst)
        self._gateway_retry_delay = float(gateway_retry_delay)
        self._max_gateway_retries = max_gateway_retries
        # Failed gateway requests since the last push that went through;
        # nonzero means an outage is in progress.
        self._outage_failures = 0

        self._tokens = self._burst
        self._refilled_at = clock.seconds()
        self._jobs: dict[str, _Job] = {}
        self._queue: collections.deque[_Job] = collections.deque()
        self._pump_timer: IDelayedCall | None = None
        self._references = itertools.cycle(range(MAX_REFERENCE + 1))

    # -- public interface -----------------------------------------------------

    def schedule(self, job_id: str, msisdn: str, pdu_factory: PduFactory) -> None:
        """Queue the first push of ``job_id``.

        Raises:
            ValueError: the job already has pushes pending.
        """
        if job_id in self._jobs:
            raise ValueError(
                f"job {job_id} already has pushes pending; call session_started "
                f"or cancel first"
            )
        job = _Job(job_id=job_id, msisdn=msisdn, pdu_factory=pdu_factory)
        self._jobs[job_id] = job
        logger.debug("push scheduled for job %s to %s", job_id, msisdn)
        self._enqueue(job)

    def session_started(self, job_id: str) -> bool:
        """Stop pushing for ``job_id`` because its device called in.

        Returns True when the job had pushes pending. An attempt already
        handed to the gateway still reports its outcome.
        """
        return self._stop(job_id, "device called in")

    def cancel(self, job_id: str) -> bool:
        """Stop pushing for ``job_id`` without a session (job cancelled)."""
        return self._stop(job_id, "cancelled")

    @property
    def gateway_failing(self) -> bool:
        """True from a failed gateway request until a push goes through."""
        return self._outage_failures > 0

    @property
    def pending_jobs(self) -> frozenset[str]:
        """Ids of jobs that still have pushes queued or a window running."""
        return frozenset(self._jobs)

    # -- internals ---------------------------------------------------------------

    def _stop(self, job_id: str, reason: str) -> bool:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        job.active = False
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        job.timer = None
        logger.debug("pushes stopped for job %s: %s", job_id, reason)
        return True

    def _enqueue(self, job: _Job) -> None:
        self._queue.append(job)
        self._pump()

    def _refill(self) -> None:
        now = self._clock.seconds()
        elapsed = max(0.0, now - self._refilled_at)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._refilled_at = now

    def _pump(self) -> None:
        if self._pump_timer is not None and self._pump_timer.active():
            return
        self._pump_timer = None
        while self._queue:
            job = self._queue[0]
            if not job.active:
                self._queue.popleft()
                continue
            if job.pdu is None and not self._build(job):
                self._queue.popleft()
                continue

            # A push bigger than the bucket waits for a full bucket and
            # leaves it in debt, so long pushes still keep the average rate.
            cost = sms.count_segments(job.pdu)
            needed = min(float(cost), self._burst)
            self._refill()
            if self._tokens + _TOKEN_EPSILON < needed:
                delay = (needed - self._tokens) / self._rate
                logger.debug("rate limit: next push in %.3f s", delay)
                self._pump_timer = self._clock.callLater(delay, self._pump_timer_fired)
                return
            self._tokens -= cost
            self._queue.popleft()
            self._send(job)

    def _pump_timer_fired(self) -> None:
        self._pump_timer = None
        self._pump()

    def _build(self, job: _Job) -> bool:
        attempt = job.attempts + 1
        try:
            job.pdu = job.pdu_factory(attempt)
        except Exception as exc:
            logger.error(
                "cannot build push %d for job %s: %s", attempt, job.job_id, exc
            )
            self._jobs.pop(job.job_id, None)
            job.active = False
            self._report(job.job_id, attempt, PushOutcome.BUILD_ERROR, str(exc))
            return False
        return True

    def _send(self, job: _Job) -> None:
        job.attempts += 1
        attempt = job.attempts
        pdu, job.pdu = job.pdu, None
        reference = next(self._references)
        try:
            sending = self.gateway.send_push(job.msisdn, pdu, reference=reference)
        except Exception as exc:
            self._failed(Failure(exc), job, attempt)
            return
        sending.addCallbacks(
            self._sent,
            self._failed,
            callbackArgs=(job, attempt),
            errbackArgs=(job, attempt),
        )

    def _sent(self, receipt: PushReceipt, job: _Job, attempt: int) -> None:
        if self._outage_failures:
            logger.warning(
                "push gateway %s works again after %d failed requests",
                self.gateway.name,
                self._outage_failures,
            )
            self._outage_failures = 0
        job.gateway_failures = 0
        logger.info(
            "push %d for job %s sent to %s (%d SMS)",
            attempt,
            job.job_id,
            job.msisdn,
            receipt.segments,
        )
        self._report(job.job_id, attempt, PushOutcome.SENT, None)
        self._start_window(job, attempt)

    def _failed(self, failure: Failure, job: _Job, attempt: int) -> None:
        error = failure.getErrorMessage()
        if self._outage_failures == 0:
            logger.warning(
                "push gateway %s failed (%s); pushes are retried with back-off "
                "until it works again",
                self.gateway.name,
                error,
            )
        self._outage_failures += 1

        logger.debug(
            "push %d for job %s to %s failed: %s", attempt, job.job_id, job.msisdn, error
        )
        # The phone was not reached, so the attempt does not count.
        job.attempts -= 1
        job.gateway_failures += 1
        self._report(job.job_id, attempt, PushOutcome.GATEWAY_ERROR, error)
        if not job.active:
            return

        if job.gateway_failures > self._max_gateway_retries:
            self._jobs.pop(job.job_id, None)
            job.active = False
            self._report(
                job.job_id,
                attempt,
                PushOutcome.GATEWAY_EXHAUSTED,
                f"gateway failed {job.gateway_failures} times in a row: {error}",
            )
            return
        delay = min(
            MAX_GATEWAY_RETRY_DELAY,
            self._gateway_retry_delay * self._backoff ** (job.gateway_failures - 1),
        )
        job.timer = self._clock.callLater(delay, self._gateway_retry_due, job)

    def _gateway_retry_due(self, job: _Job) -> None:
        job.timer = None
        if job.active:
            self._enqueue(job)

    def _start_window(self, job: _Job, attempt: int) -> None:
        if not job.active:
            return
        window = self._retry_window * self._backoff ** (attempt - 1)
        job.timer = self._clock.callLater(window, self._window_expired, job)

    def _window_expired(self, job: _Job) -> None:
        job.timer = None
        if not job.active:
            return
        if job.attempts >= self._max_pushes:
            self._jobs.pop(job.job_id, None)
            job.active = False
            logger.warning(
                "job %s: no session after %d pushes, giving up",
                job.job_id,
                job.attempts,
            )
            self._report(
                job.job_id,
                job.attempts,
                PushOutcome.EXHAUSTED,
                f"no session after {job.attempts} pushes",
            )
            return
        logger.debug("job %s: no session within the window, pushing again", job.job_id)
        self._enqueue(job)

    def _report(
        self, job_id: str, attempt: int, outcome: PushOutcome, error: str | None
    ) -> None:
        try:
            self._on_push(job_id, attempt, outcome, error)
        except Exception:
            logger.exception(
                "on_push callback failed for job %s attempt %d (%s)",
                job_id,
                attempt,
                outcome.value,
            )
