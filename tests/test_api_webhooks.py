"""Webhooks: HMAC-SHA256 signatures, the outbox, retries with back-off, and
a real server posting to a receiver on 127.0.0.1.

Signatures are recomputed here with the standard library's hmac module
over the exact received bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from twisted.internet import defer, task
from twisted.web.http_headers import Headers

from dmserver import webhooks
from dmserver.store.db import Database
from dmserver.store.models import WebhookDelivery, WebhookEndpoint

from .conftest import MODEL, NEW_VERSION
from .test_api_server import Client, api_key

T0 = datetime(2026, 3, 2, 12, 0, 0)
# Upper bound for a delivery to arrive; only stops a hung test.
DELIVERY_TIMEOUT = 60


def expected_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_signature_matches_independent_hmac():
    body = b'{"event":"job.finished"}'
    assert webhooks.sign("k3y", body) == expected_signature("k3y", body)
    assert webhooks.verify("k3y", body, expected_signature("k3y", body))
    assert not webhooks.verify("k3y", body + b" ", expected_signature("k3y", body))


def test_retry_delay_doubles_up_to_cap():
    delays = [webhooks.retry_delay(n) for n in range(1, 6)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0]
    assert webhooks.retry_delay(30) == webhooks.RETRY_MAX_SECONDS


# ---------------------------------------------------------------------------
# The sender in-process: a synchronous database stand-in, a fake agent and
# a fake clock, so back-off is checked without waiting.


class SyncDatabase:
    """Runs database work at once and returns fired Deferreds."""

    def __init__(self, db: Database):
        self.db = db

    def run(self, fn):
        return defer.maybeDeferred(self.db.call, fn)


class FakeResponse:
    def __init__(self, code: int):
        self.code = code
        self.phrase = b"test"
        self.length = 0

    def deliverBody(self, protocol):
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.makeConnection(None)
        protocol.connectionLost(Failure(ResponseDone()))


class FakeAgent:
    def __init__(self, codes: list[int]):
        self.codes = codes
        self.requests: list[tuple[bytes, Headers, bytes]] = []

    def request(self, method, uri, headers, producer):
        body = producer._inputFile.read()
        self.requests.append((uri, headers, body))
        return defer.succeed(FakeResponse(self.codes.pop(0)))


@pytest.fixture
def outbox(db_url):
    db = Database(db_url)
    db.upgrade()
    yield db
    db.dispose()


def test_sender_retries_with_backoff_then_delivers(outbox):
    def setup(session):
        session.add(WebhookEndpoint(url="http://127.0.0.1:9/hook", secret="s3cret", events=[],
                                    active=True, created_at=T0))
        session.flush()
        webhooks.enqueue(session, "job.finished", {"job_id": 7}, T0)

    outbox.call(setup)
    now = [T0]
    agent = FakeAgent([503, 500, 204])
    sender = webhooks.WebhookSender(SyncDatabase(outbox), task.Clock(), agent=agent, clock=lambda: now[0])
    sender.tick()
    assert len(agent.requests) == 1
    # Not due again until the first back-off has passed.
    now[0] = T0 + timedelta(seconds=4)
    sender.tick()
    assert len(agent.requests) == 1
    now[0] = T0 + timedelta(seconds=5)
    sender.tick()
    assert len(agent.requests) == 2
    now[0] += timedelta(seconds=10)
    sender.tick()
    assert len(agent.requests) == 3
    row = outbox.call(lambda s: s.scalars(select(WebhookDelivery)).one())
    assert row.state == "delivered"
    assert row.attempts == 3
    uri, headers, body = agent.requests[-1]
    assert uri == b"http://127.0.0.1:9/hook"
    assert headers.getRawHeaders(b"X-Dmserver-Signature") == [expected_signature("s3cret", body).encode()]
    assert headers.getRawHeaders(b"X-Dmserver-Event") == [b"job.finished"]
    assert json.loads(body)["data"] == {"job_id": 7}


def test_sender_gives_up_after_max_attempts(outbox):
    def setup(session):
        session.add(WebhookEndpoint(url="http://127.0.0.1:9/hook", secret="s", events=["campaign.state_changed"],
                                    active=True, created_at=T0))
        session.flush()
        # Not subscribed: no row.
        assert webhooks.enqueue(session, "job.finished", {}, T0) == 0
        assert webhooks.enqueue(session, "campaign.state_changed", {}, T0) == 1

    outbox.call(setup)
    now = [T0]
    agent = FakeAgent([500] * webhooks.MAX_ATTEMPTS)
    sender = webhooks.WebhookSender(SyncDatabase(outbox), task.Clock(), agent=agent, clock=lambda: now[0])
    for _ in range(webhooks.MAX_ATTEMPTS + 2):
        sender.tick()
        now[0] += timedelta(seconds=webhooks.RETRY_MAX_SECONDS)
    row = outbox.call(lambda s: s.scalars(select(WebhookDelivery)).one())
    assert len(agent.requests) == webhooks.MAX_ATTEMPTS
    assert row.state == "failed"
    assert row.last_error == "HTTP 500"


def test_claim_is_exclusive(outbox):
    def setup(session):
        session.add(WebhookEndpoint(url="http://127.0.0.1:9/h", secret="s", events=[], active=True, created_at=T0))
        session.flush()
        webhooks.enqueue(session, "job.finished", {}, T0)

    outbox.call(setup)
    first = outbox.call(lambda s: webhooks.claim_due(s, T0))
    second = outbox.call(lambda s: webhooks.claim_due(s, T0))
    assert len(first) == 1
    assert second == []


# ---------------------------------------------------------------------------
# The real server and a receiver on 127.0.0.1


class Receiver:
    """Records webhook requests; answers 503 to the first ``failures``."""

    def __init__(self, failures: int = 0):
        self.requests: list[tuple[dict, bytes]] = []
        self.failures = failures
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 503 if receiver.failures > 0 else 204
                receiver.failures -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.requests) >= count, f"received {len(self.requests)} of {count} webhook requests"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    running = Receiver(failures=1)
    yield running
    running.close()


def test_server_delivers_signed_job_event_after_retry(server, receiver):
    client = Client(server.url, api_key(server))
    created = client.request("POST", "/webhooks", {"url": receiver.url, "events": ["job.finished"]})
    assert created.status == 201
    secret = created.json["secret"]
    client.request("POST", "/devices", {"devices": [
        {"device_id": "IMEI:490154203237518", "client_password": "c", "server_password": "s", "model": MODEL}
    ]})
    server.cli("job", "fota", "IMEI:490154203237518", "--version", NEW_VERSION)
    server.cli("job", "cancel", "1")
    # The first attempt gets 503; the retry after the back-off succeeds.
    receiver.wait_for(2)
    first, second = receiver.requests[:2]
    assert first[1] == second[1]
    headers, body = second
    assert headers["x-dmserver-signature"] == expected_signature(secret, body)
    assert headers["x-dmserver-event"] == "job.finished"
    event = json.loads(body)
    assert event["event"] == "job.finished"
    assert event["data"]["job_id"] == 1
    assert event["data"]["state"] == "cancelled"
    assert event["data"]["device_id"] == "IMEI:490154203237518"
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while time.monotonic() < deadline:
        rows = server.sql("SELECT state, attempts FROM webhook_deliveries")
        if rows == [("delivered", 2)]:
            break
        time.sleep(0.1)
    assert rows == [("delivered", 2)]


def test_server_campaign_state_webhook(server, receiver):
    receiver.failures = 0
    client = Client(server.url, api_key(server))
    client.request("POST", "/webhooks", {"url": receiver.url, "events": ["campaign.state_changed"]})
    campaign = client.request("POST", "/campaigns", {
        "name": "hooked", "target_version": NEW_VERSION, "selection": {"models": [MODEL]},
    }).json
    client.request("POST", f"/campaigns/{campaign['id']}/cancel")
    receiver.wait_for(2)
    # Requests are sent concurrently, so they are put in outbox order by
    # their delivery id.
    ordered = sorted(receiver.requests, key=lambda r: int(r[0]["x-dmserver-delivery"]))
    kinds = [json.loads(body)["data"]["kind"] for _, body in ordered]
    assert kinds == ["created", "cancelled"]
    states = [json.loads(body)["data"]["state"] for _, body in ordered]
    assert states == ["draft", "cancelled"]


# ---------------------------------------------------------------------------
# Broken receivers next to a working one


class RawReceiver:
    """A TCP server on 127.0.0.1 that reads each request and then sends
    ``reply`` (possibly nothing) and keeps the connection open."""

    def __init__(self, reply: bytes):
        import socket

        self.reply = reply
        self.connections: list = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            connection.recv(65536)
            if self.reply:
                connection.sendall(self.reply)
            self.connections.append(connection)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while len(self.connections) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.connections) >= count, f"received {len(self.connections)} of {count} connections"

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


def test_broken_receivers_do_not_block_others(server):
    failing = Receiver(failures=10**6)
    silent = RawReceiver(b"")
    stalling = RawReceiver(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    good = Receiver()
    try:
        client = Client(server.url, api_key(server))
        for receiver in (failing, silent, stalling, good):
            created = client.request(
                "POST", "/webhooks", {"url": receiver.url, "events": ["campaign.state_changed"]}
            )
            assert created.status == 201
        spec = {"name": "first", "target_version": NEW_VERSION, "selection": {"models": [MODEL]}}
        client.request("POST", "/campaigns", spec)
        good.wait_for(1)
        failing.wait_for(1)
        silent.wait_for(1)
        stalling.wait_for(1)
        # Both broken requests are now running: one without a response and
        # one with half a body. A later event still reaches the good receiver.
        client.request("POST", "/campaigns", {**spec, "name": "second"})
        good.wait_for(2)
        campaign_ids = sorted(json.loads(body)["data"]["campaign_id"] for _, body in good.requests)
        assert len(campaign_ids) == 2
        assert campaign_ids[0] != campaign_ids[1]
    finally:
        for receiver in (failing, silent, stalling, good):
            receiver.close()
