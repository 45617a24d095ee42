"""Input checks of the northbound API, the campaign definition and the
campaign CLI, and the bounds on webhook requests.

Out-of-range ids use 2**31 - 1, the largest value of a PostgreSQL integer
column (PostgreSQL manual, "Numeric Types"). NaN and Infinity are not JSON
numbers (RFC 8259, section 6), although Python's json module accepts them.
"""

from __future__ import annotations

import http.client
import json
from datetime import datetime, timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import select
from twisted.internet import defer, task

from dmserver import webhooks
from dmserver.campaign import dispatch
from dmserver.campaign.spec import ValidationError, parse_spec
from dmserver.store.models import Campaign, WebhookDelivery, WebhookEndpoint
from dmserver.web import api

from .conftest import MODEL, NEW_VERSION
from .test_api_server import client, device_items  # noqa: F401
from .test_api_webhooks import T0, FakeAgent, SyncDatabase, outbox  # noqa: F401

PG_INTEGER_MAX = 2**31 - 1
SECRET = "0123456789abcdef"


def spec_body(**extra) -> dict:
    return {"name": "x", "target_version": "2", "selection": {"models": ["M"]}, **extra}


# ---------------------------------------------------------------------------
# Non-finite numbers


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"success_threshold": float("nan")}, "success_threshold"),
        ({"error_threshold": float("inf")}, "error_threshold"),
        ({"max_delta_share": float("-inf")}, "max_delta_share"),
        ({"limits": {"pushes_per_second": float("inf")}}, "limits.pushes_per_second"),
        ({"limits": {"pushes_per_second": float("nan")}}, "limits.pushes_per_second"),
        ({"limits": {"pushes_per_second": 10**400}}, "limits.pushes_per_second"),
        ({"policy": {"storage_factor": float("nan")}}, "policy.storage_factor"),
        ({"limits": {"max_concurrent": PG_INTEGER_MAX + 1}}, "limits.max_concurrent"),
        ({"min_sample": 10**400}, "min_sample"),
    ],
)
def test_spec_rejects_non_finite_and_huge(extra, field):
    with pytest.raises(ValidationError) as raised:
        parse_spec(spec_body(**extra))
    assert raised.value.field == field


def test_budget_survives_huge_rate():
    campaign = Campaign(
        limits={"pushes_per_second": 1e308},
        dispatch_credit=0.0,
        last_dispatch_at=T0,
    )
    # 1e308 pushes per second times a day overflows a float to inf.
    budget = dispatch._budget(None, campaign, T0 + timedelta(days=1))
    assert budget == dispatch.MAX_BATCH
    assert campaign.dispatch_credit == float(dispatch.MAX_BATCH)


@pytest.mark.parametrize("text", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e400}'])
def test_body_parser_rejects_non_finite(text):
    with pytest.raises(api.ApiError) as raised:
        api.parse_json_body(text)
    assert raised.value.status == 400
    assert raised.value.code == "invalid_json"


def test_body_parser_deep_nesting_is_400():
    with pytest.raises(api.ApiError) as raised:
        api.parse_json_body(b"[" * 100_000 + b"]" * 100_000)
    assert raised.value.status == 400


def test_campaign_cli_rejects_nan(server):
    result = server.cli(
        "campaign", "create", "--name", "n", "--target-version", NEW_VERSION, "--model", MODEL,
        "--success-threshold", "nan", check=False,
    )
    assert result.returncode != 0
    assert "--success-threshold" in result.stderr
    assert "finite" in result.stderr
    result = server.cli("campaign", "show", str(PG_INTEGER_MAX + 1), check=False)
    assert result.returncode != 0
    assert str(PG_INTEGER_MAX) in result.stderr
    assert server.sql("SELECT count(*) FROM campaigns") == [(0,)]


# ---------------------------------------------------------------------------
# The API over HTTP


def test_non_finite_json_over_http(client):
    for raw in (b'{"name": NaN}', b'{"success_threshold": Infinity}', b'{"x": 1e999}'):
        response = client.request("POST", "/campaigns", raw=raw)
        assert response.status == 400, raw
        assert response.json["error"]["code"] == "invalid_json"
    body = json.dumps(spec_body(success_threshold=10**400)).encode()
    response = client.request("POST", "/campaigns", raw=body)
    assert response.status == 422
    assert response.json["error"]["field"] == "success_threshold"


def test_ids_beyond_integer_range(client):
    too_big = str(PG_INTEGER_MAX + 1)
    for path in (f"/campaigns/{too_big}", f"/campaigns/{too_big}/progress", f"/jobs/{too_big}",
                 f"/campaigns/{'9' * 5000}"):
        response = client.request("GET", path)
        assert response.status == 404, path
    assert client.request("DELETE", f"/webhooks/{too_big}").status == 404
    assert client.request("POST", f"/campaigns/{too_big}/pause").status == 404
    assert client.request("GET", f"/campaigns/{PG_INTEGER_MAX}").status == 404
    for path, name in (
        (f"/devices?after={too_big}", "after"),
        (f"/jobs?campaign_id={too_big}", "campaign_id"),
        (f"/events?job_id={too_big}", "job_id"),
        (f"/events?job_id={'9' * 5000}", "job_id"),
    ):
        response = client.request("GET", path)
        assert response.status == 400, path
        assert response.json["error"]["field"] == name
    assert client.request("GET", f"/devices?after={PG_INTEGER_MAX}").status == 200


def test_request_body_media_types(client):
    body = json.dumps({"devices": device_items(1)}).encode()
    connection = http.client.HTTPConnection(client.base.hostname, client.base.port, timeout=30)
    connection.request("POST", "/api/v1/devices", body=body, headers={"Authorization": f"Bearer {client.key}"})
    missing = connection.getresponse()
    error = json.loads(missing.read())
    connection.close()
    assert missing.status == 415
    assert error["error"]["code"] == "unsupported_media_type"
    upper = client.request("POST", "/devices", raw=body, content_type="APPLICATION/JSON; charset=utf-8")
    assert upper.status == 201
    deep = client.request("POST", "/campaigns", raw=b"[" * 200_000 + b"]" * 200_000)
    assert deep.status == 400
    assert deep.json["error"]["code"] == "invalid_json"
    large = client.request("POST", "/devices", raw=b" " * (api.MAX_BODY_BYTES + 1))
    assert large.status == 413
    assert large.getheader("Content-Type") == "application/json"
    assert large.json["error"]["code"] == "too_large"


def test_device_ids_with_slash_and_percent(client):
    ids = ["IMEI:490154203237000/a", "name%41b", "a b/%2F"]
    items = [{**device_items(1)[0], "device_id": device_id} for device_id in ids]
    assert client.request("POST", "/devices", {"devices": items}).status == 201
    for device_id in ids:
        response = client.request("GET", "/devices/" + quote(device_id, safe=":"))
        assert response.status == 200, device_id
        assert response.json["device_id"] == device_id
        history = client.request("GET", "/devices/" + quote(device_id, safe=":") + "/history")
        assert history.status == 200, device_id
    # "%41" decoded twice would become "A".
    assert client.request("GET", "/devices/" + quote("nameAb")).status == 404


def test_device_msisdn_checked(server, client):
    bad = client.request("POST", "/devices", {"devices": device_items(1, msisdn="+49 170 1234")})
    assert bad.status == 422
    assert bad.json["error"]["field"] == "devices[0].msisdn"
    assert "+49 170 1234" in bad.json["error"]["message"]
    assert client.request("POST", "/devices", {"devices": device_items(1, msisdn="+491701234567")}).status == 201
    result = server.cli(
        "device", "add", "IMEI:490154203237999", "--client-password", "c", "--server-password", "s",
        "--msisdn", "12;rm", check=False,
    )
    assert result.returncode != 0
    assert "msisdn" in result.stderr
    assert "12;rm" in result.stderr
    csv_path = server.data_dir.parent / "devices.csv"
    csv_path.write_text(
        "device_id,client_password,server_password,msisdn\nIMEI:490154203237998,c,s,abc\n", encoding="utf-8"
    )
    result = server.cli("device", "import", str(csv_path), check=False)
    assert result.returncode != 0
    assert "'abc'" in result.stderr
    assert server.sql("SELECT count(*) FROM devices") == [(1,)]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"url": "http://127.0.0.1:9/h", "secret": "short"}, "secret"),
        ({"url": "http://127.0.0.1:9/h", "events": {}}, "events"),
        ({"url": "http://127.0.0.1:9/h", "events": []}, "events"),
        ({"url": "http://127.0.0.1:9/h", "events": [1]}, "events[0]"),
        ({"url": "http:///path"}, "url"),
        ({"url": "http://127.0.0.1:99999/h"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
    ],
)
def test_webhook_registration_checks(client, body, field):
    response = client.request("POST", "/webhooks", body)
    assert response.status == 422, response.json
    assert response.json["error"]["field"] == field


def test_webhook_accepts_long_secret(client):
    response = client.request("POST", "/webhooks", {"url": "http://127.0.0.1:9/h", "secret": SECRET})
    assert response.status == 201
    assert response.json["secret"] == SECRET
    assert response.json["events"] == []


# ---------------------------------------------------------------------------
# The webhook sender


class StalledResponse:
    """A response whose body never ends, like a receiver that stops mid-body."""

    code = 200
    phrase = b"OK"
    length = 100

    def __init__(self):
        self.aborted = False

    def deliverBody(self, protocol):
        response = self

        class Transport:
            def abortConnection(self):
                response.aborted = True

            def stopProducing(self):
                response.aborted = True

        protocol.makeConnection(Transport())
        protocol.dataReceived(b"partial")


class StallingAgent(FakeAgent):
    def __init__(self):
        super().__init__([])
        self.responses: list[StalledResponse] = []

    def request(self, method, uri, headers, producer):
        self.requests.append((uri, headers, producer._inputFile.read()))
        self.responses.append(StalledResponse())
        return defer.succeed(self.responses[-1])


def add_endpoint(session, url: str = "http://127.0.0.1:9/h", active: bool = True) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(url=url, secret=SECRET, events=[], active=active, created_at=T0)
    session.add(endpoint)
    session.flush()
    return endpoint


def test_sender_times_out_stalled_body(outbox):  # noqa: F811
    outbox.call(lambda s: (add_endpoint(s), webhooks.enqueue(s, "job.finished", {}, T0)))
    reactor = task.Clock()
    agent = StallingAgent()
    now = [T0]
    sender = webhooks.WebhookSender(SyncDatabase(outbox), reactor, agent=agent, clock=lambda: now[0])
    round_done = sender.tick()
    # The round is over although the request is still running.
    assert round_done.called
    assert len(sender.in_flight) == 1
    # Past the claim lease while the request still runs: not sent twice.
    now[0] = T0 + timedelta(seconds=webhooks.CLAIM_SECONDS + 1)
    sender.tick()
    assert len(agent.requests) == 1
    reactor.advance(webhooks.REQUEST_TIMEOUT_SECONDS)
    assert agent.responses[0].aborted
    assert sender.in_flight == set()
    row = outbox.call(lambda s: s.scalars(select(WebhookDelivery)).one())
    assert row.state == "pending"
    assert row.attempts == 1
    assert "Timeout" in row.last_error or "Cancelled" in row.last_error


def test_claim_lease_outlasts_request():
    assert webhooks.CLAIM_SECONDS > webhooks.REQUEST_TIMEOUT_SECONDS


def test_deleted_endpoint_not_claimed(outbox):  # noqa: F811
    def setup(session):
        add_endpoint(session)
        webhooks.enqueue(session, "job.finished", {}, T0)
        session.scalars(select(WebhookEndpoint)).one().active = False

    outbox.call(setup)
    assert outbox.call(lambda s: webhooks.claim_due(s, T0 + timedelta(hours=1))) == []
    rows = outbox.call(lambda s: [(r.state, r.attempts) for r in s.scalars(select(WebhookDelivery))])
    assert rows == [("pending", 0)]

