"""Webhooks: signed JSON events for job results and campaign state changes.

Events are written to the ``webhook_deliveries`` outbox in the same
transaction as the change they report, one row per subscribed endpoint, so
an event is never lost and never sent for a change that was rolled back.
:class:`WebhookSender` runs in the server: a Twisted ``LoopingCall`` claims
due rows through the database pool, POSTs each body with a non-blocking
HTTP client and records the outcome. DM sessions never wait for it.

Each request carries::

    Content-Type: application/json
    X-Dmserver-Event: job.finished
    X-Dmserver-Delivery: 42
    X-Dmserver-Signature: sha256=<hex HMAC-SHA256 of the body with the endpoint secret>

Requests are sent concurrently and retried independently, so they may
arrive out of order. ``X-Dmserver-Delivery`` is the outbox row id, which
grows in the order the events were stored. Any 2xx response delivers the
event. Anything else, or a request not finished (connect, response headers
and response body) within ``REQUEST_TIMEOUT_SECONDS``, is retried after ``RETRY_BASE_SECONDS *
2**(attempts - 1)`` seconds (capped at ``RETRY_MAX_SECONDS``) until
``MAX_ATTEMPTS`` attempts, when the row is marked failed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from twisted.logger import Logger

from .store.models import Job, WebhookDelivery, WebhookEndpoint

log = Logger(namespace="dmserver.webhooks")

SIGNATURE_HEADER = "X-Dmserver-Signature"
EVENT_HEADER = "X-Dmserver-Event"
DELIVERY_HEADER = "X-Dmserver-Delivery"
EVENT_JOB_FINISHED = "job.finished"
EVENT_CAMPAIGN_STATE = "campaign.state_changed"
EVENT_CAMPAIGN_WAVE = "campaign.wave_opened"
EVENTS = (EVENT_JOB_FINISHED, EVENT_CAMPAIGN_STATE, EVENT_CAMPAIGN_WAVE)
MAX_ATTEMPTS = 8
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 3600.0
# Bound on one whole request: connect, response headers and response body.
REQUEST_TIMEOUT_SECONDS = 10.0
# A claimed row is not claimed again by another process for this long. It
# must exceed REQUEST_TIMEOUT_SECONDS plus the time to store the outcome, or
# a second process could resend a request that is still running.
CLAIM_SECONDS = 60.0
BATCH_SIZE = 20
# Requests one sender process runs at once; claiming pauses at this many.
MAX_IN_FLIGHT = 100
SECRET_BYTES = 24
MAX_ERROR_LENGTH = 500


def sign(secret: str, body: bytes) -> str:
    """Return the signature header value for ``body``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, body: bytes, header: str) -> bool:
    """Check a signature header value as a receiver would."""
    return hmac.compare_digest(sign(secret, body), header.strip())


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def check_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL; raise ValueError otherwise."""
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be an absolute http or https URL with a host, got {url!r}")
    return url


def retry_delay(attempts: int) -> float:
    """Return seconds to wait after the ``attempts``-th failed attempt."""
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat() + "Z"


def enqueue(session: Session, event: str, data: dict[str, Any], now: datetime) -> int:
    """Add ``event`` to the outbox of every active endpoint subscribed to it;
    return the number of rows added."""
    endpoints = session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.active.is_(True))
    ).all()
    added = 0
    for endpoint in endpoints:
        if endpoint.events and event not in endpoint.events:
            continue
        body = json.dumps(
            {"event": event, "created_at": _iso(now), "data": data},
            separators=(",", ":"),
            sort_keys=True,
        )
        session.add(
            WebhookDelivery(
                endpoint_id=endpoint.id,
                event=event,
                body=body,
                state="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        added += 1
    return added


def job_finished(session: Session, job: Job, now: datetime) -> None:
    """Queue the ``job.finished`` event of a job that reached a final state."""
    enqueue(
        session,
        EVENT_JOB_FINISHED,
        {
            "job_id": job.id,
            "device_id": job.device.device_id,
            "campaign_id": job.campaign_id,
            "state": job.state,
            "target_version": job.target_version,
            "source_version": job.source_version,
            "result_code": job.result_code,
            "result_text": job.result_text,
            "finished_at": _iso(job.finished_at),
        },
        now,
    )


# ---------------------------------------------------------------------------
# Outbox access, run in the database pool


def claim_due(
    session: Session,
    now: datetime,
    limit: int = BATCH_SIZE,
    exclude: frozenset[int] = frozenset(),
) -> list[dict[str, Any]]:
    """Claim up to ``limit`` due deliveries of active endpoints for this
    process, leaving out the row ids in ``exclude`` (requests still running).

    A row is claimed by moving its next_attempt_at forward with a
    conditional UPDATE, so two server processes never send the same attempt.
    """
    statement = (
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.state == "pending",
            WebhookDelivery.next_attempt_at <= now,
            # Deleting an endpoint deactivates it. Its pending rows stay
            # pending and are never sent.
            WebhookEndpoint.active.is_(True),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    if exclude:
        statement = statement.where(WebhookDelivery.id.not_in(sorted(exclude)))
    rows = session.execute(statement).all()
    claimed = []
    lease = now + timedelta(seconds=CLAIM_SECONDS)
    for delivery, endpoint in rows:
        result = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery.id,
                WebhookDelivery.state == "pending",
                WebhookDelivery.next_attempt_at == delivery.next_attempt_at,
            )
            .values(next_attempt_at=lease)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            continue
        claimed.append(
            {
                "id": delivery.id,
                "event": delivery.event,
                "body": delivery.body,
                "url": endpoint.url,
                "secret": endpoint.secret,
                "attempts": delivery.attempts,
            }
        )
    return claimed


def record_attempt(
    session: Session, delivery_id: int, ok: bool, error: str | None, now: datetime
) -> str:
    """Store the outcome of one attempt; return the row's new state."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        return "missing"
    delivery.attempts += 1
    if ok:
        delivery.state = "delivered"
        delivery.delivered_at = now
        delivery.last_error = None
        return delivery.state
    delivery.last_error = (error or "unknown error")[:MAX_ERROR_LENGTH]
    if delivery.attempts >= MAX_ATTEMPTS:
        delivery.state = "failed"
    else:
        delivery.next_attempt_at = now + timedelta(seconds=retry_delay(delivery.attempts))
    return delivery.state


# ---------------------------------------------------------------------------
# The sender


def utcnow() -> datetime:
    from datetime import timezone

    return datetime.now(timezone.utc).replace(tzinfo=None)


class WebhookSender:
    """Sends due outbox rows every ``interval`` seconds while started.

    A slow or dead receiver delays only its own deliveries: each round
    claims due rows and starts their requests without waiting for them, so
    the next round runs on time. Each request is bounded end to end by
    ``REQUEST_TIMEOUT_SECONDS``, and DM sessions never wait for any.
    """

    def __init__(self, db, reactor, interval: float = 1.0, agent=None, clock=None):
        from twisted.internet.task import LoopingCall
        from twisted.web.client import Agent

        self.db = db
        self.reactor = reactor
        self.interval = interval
        # Returns the naive UTC time that due rows and back-off are measured in.
        self.clock = clock or utcnow
        self.agent = agent or Agent(reactor, connectTimeout=REQUEST_TIMEOUT_SECONDS)
        self.loop = LoopingCall(self.tick)
        self.loop.clock = reactor
        # Ids of deliveries whose request or outcome write is still running.
        self.in_flight: set[int] = set()

    def start(self) -> None:
        log.info("webhook sender started, every {interval} s", interval=self.interval)
        self.loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def tick(self):
        """Claim due deliveries and start their requests.

        The returned Deferred fires once the requests are started, not when
        they finish, because LoopingCall skips rounds until it fires.
        """
        room = min(BATCH_SIZE, MAX_IN_FLIGHT - len(self.in_flight))
        if room <= 0:
            return None
        exclude = frozenset(self.in_flight)
        d = self.db.run(lambda session: claim_due(session, self.clock(), room, exclude))
        d.addCallback(self._start_all)
        d.addErrback(lambda failure: log.failure("webhook round failed", failure))
        return d

    def _start_all(self, claimed: list[dict[str, Any]]) -> None:
        for item in claimed:
            if item["id"] in self.in_flight:
                continue
            self.in_flight.add(item["id"])
            d = self._send(item)
            d.addErrback(
                lambda failure, item=item: log.failure(
                    "webhook {delivery} outcome not stored", failure, delivery=item["id"]
                )
            )
            d.addBoth(self._finished, item["id"])

    def _finished(self, result, delivery_id: int):
        self.in_flight.discard(delivery_id)
        return result

    def _send(self, item: dict[str, Any]):
        from io import BytesIO

        from twisted.internet import defer
        from twisted.web.client import FileBodyProducer, readBody
        from twisted.web.http_headers import Headers

        body = item["body"].encode("utf-8")
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"User-Agent": [b"dmserver-webhooks"],
                EVENT_HEADER.encode(): [item["event"].encode()],
                DELIVERY_HEADER.encode(): [str(item["id"]).encode()],
                SIGNATURE_HEADER.encode(): [sign(item["secret"], body).encode()],
            }
        )
        d = defer.maybeDeferred(
            self.agent.request, b"POST", item["url"].encode("utf-8"), headers, FileBodyProducer(BytesIO(body))
        )

        def answered(response):
            finished = readBody(response)
            finished.addCallback(lambda _: response.code)
            return finished

        d.addCallback(answered)
        # The timeout is added after the response callback, so it covers the body as well:
        # cancelling d cancels the readBody Deferred it waits on, and that
        # aborts the connection.
        d.addTimeout(REQUEST_TIMEOUT_SECONDS, self.reactor)

        def outcome(code):
            if 200 <= code < 300:
                return True, None
            return False, f"HTTP {code}"

        def failed(failure):
            return False, f"{failure.type.__name__}: {failure.getErrorMessage()}"

        d.addCallback(outcome)
        d.addErrback(failed)
        d.addCallback(self._record, item)
        return d

    def _record(self, result: tuple[bool, str | None], item: dict[str, Any]):
        ok, error = result
        d = self.db.run(lambda session: record_attempt(session, item["id"], ok, error, self.clock()))

        def logged(state):
            if ok:
                log.info("webhook {delivery} ({event}) delivered to {url}",
                         delivery=item["id"], event=item["event"], url=item["url"])
            else:
                log.warn(
                    "webhook {delivery} ({event}) to {url} failed on attempt {attempt}: {error}; now {state}",
                    delivery=item["id"], event=item["event"], url=item["url"],
                    attempt=item["attempts"] + 1, error=error, state=state,
                )
            return state

        d.addCallback(logged)
        return d
