"""The northbound JSON API of a real server process, on SQLite and PostgreSQL.

The OpenAPI document is checked against the OpenAPI 3.1 specification
(openapi-spec-validator), against the routes the server implements, and
against real responses: every documented operation is called and each
answer must have a documented status and validate against its schema.
"""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import quote, urlsplit

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from dmserver.web import api
from dmserver.web.openapi import build_document

from .conftest import MODEL, NEW_VERSION, OLD_VERSION

# Seconds to wait for a campaign's preparation (deltas of the libexpat pair
# take well under a second; the bound only stops a hung test).
PREPARE_TIMEOUT = 60


class Client:
    def __init__(self, base_url: str, key: str | None):
        self.base = urlsplit(base_url)
        self.key = key

    def request(self, method: str, path: str, body=None, key: str | None = "default", raw: bytes | None = None,
                content_type: str = "application/json"):
        connection = http.client.HTTPConnection(self.base.hostname, self.base.port, timeout=30)
        headers = {}
        key = self.key if key == "default" else key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        connection.request(method, "/api/v1" + path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        response.json = json.loads(payload) if payload else None
        return response


def api_key(server) -> str:
    """Create a key in the server's database directly (faster than the CLI,
    which test_missing_wrong_and_revoked_keys_rejected runs)."""
    from datetime import datetime

    from dmserver.store.db import Database

    db = Database(server.db_url)
    try:
        return db.call(lambda s: api.create_api_key(s, "tests", datetime(2026, 1, 1))[1])
    finally:
        db.dispose()


@pytest.fixture
def client(server) -> Client:
    return Client(server.url, api_key(server))


def device_items(count: int, start: int = 0, **extra) -> list[dict]:
    return [
        {
            "device_id": f"IMEI:{490154203237000 + start + n}",
            "client_password": "c-secret",
            "server_password": "s-secret",
            "model": MODEL,
            "firmware_version": OLD_VERSION,
            **extra,
        }
        for n in range(count)
    ]


def validator(document: dict, schema: dict) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": document["components"]})


def check_response(document: dict, path: str, method: str, response) -> None:
    operation = document["paths"][path][method.lower()]
    status = str(response.status)
    assert status in operation["responses"], f"{method} {path} answered undocumented {status}: {response.json}"
    content = operation["responses"][status].get("content")
    if content is None:
        assert response.json is None
        return
    schema = content["application/json"]["schema"]
    errors = sorted(validator(document, schema).iter_errors(response.json), key=str)
    assert not errors, f"{method} {path} {status}: {errors[0].message} at {list(errors[0].absolute_path)}"


def wait_prepared(client: Client, campaign_id: int) -> dict:
    """Wait until the campaign has left the preparing state; return it."""
    deadline = time.monotonic() + PREPARE_TIMEOUT
    while time.monotonic() < deadline:
        campaign = client.request("GET", f"/campaigns/{campaign_id}").json
        if campaign["state"] != "preparing":
            return campaign
        time.sleep(0.2)
    raise AssertionError(f"campaign {campaign_id} stayed {campaign['state']}")


# ---------------------------------------------------------------------------


def test_openapi_document_is_valid_openapi_31():
    document = build_document()
    validate_openapi(document)
    assert document["openapi"] == "3.1.0"


def test_openapi_lists_exactly_implemented_routes():
    document = build_document()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    implemented = {(route.method, route.template) for route in api.ROUTES}
    assert documented == implemented


def test_openapi_served_without_key(server):
    response = Client(server.url, None).request("GET", "/openapi.json")
    assert response.status == 200
    assert response.json == build_document()


def test_every_documented_operation_answers(server, client):
    document = client.request("GET", "/openapi.json").json
    assert client.request("POST", "/devices", {"devices": device_items(3)}).status == 201
    server.cli("job", "fota", "IMEI:490154203237000", "--version", NEW_VERSION)
    campaign = client.request(
        "POST", "/campaigns",
        {"name": "doc check", "target_version": NEW_VERSION, "selection": {"models": [MODEL]}},
    ).json
    hook = client.request("POST", "/webhooks", {"url": "http://127.0.0.1:9/hook"}).json
    values = {
        "device_id": quote("IMEI:490154203237001", safe=":"),
        "campaign_id": str(campaign["id"]),
        "job_id": "1",
        "webhook_id": str(hook["id"]),
    }
    bodies = {
        "import_devices": {"devices": device_items(1, start=50)},
        "create_campaign": {"name": "second", "target_version": NEW_VERSION, "selection": {"models": [MODEL]}},
        "retry_campaign": {"wave": 1},
        "create_webhook": {"url": "http://127.0.0.1:9/other", "events": ["job.finished"]},
    }
    order = {"get": 0, "post": 1, "delete": 2}
    operations = sorted(
        ((path, method, item) for path, methods in document["paths"].items() for method, item in methods.items()),
        key=lambda entry: (order[entry[1]], entry[0]),
    )
    called = 0
    for path, method, operation in operations:
        concrete = path
        for name, value in values.items():
            concrete = concrete.replace("{" + name + "}", value)
        if operation["operationId"] == "start_campaign":
            response = client.request(method.upper(), concrete)
            check_response(document, path, method, response)
            wait_prepared(client, campaign["id"])
            called += 1
            continue
        response = client.request(method.upper(), concrete, bodies.get(operation["operationId"]))
        check_response(document, path, method, response)
        assert response.status < 500
        called += 1
    assert called == len(api.ROUTES)
    # Every POST reads its body, so the body errors must be documented for
    # each of them: invalid JSON, a media type other than JSON, too large.
    probes = [
        (b"{not json", "application/json", 400),
        (b"{}", "text/plain", 415),
        (b" " * (api.MAX_BODY_BYTES + 1), "application/json", 413),
    ]
    for path, method, operation in operations:
        if method != "post":
            continue
        concrete = path
        for name, value in values.items():
            concrete = concrete.replace("{" + name + "}", value)
        for raw, content_type, status in probes:
            response = client.request("POST", concrete, raw=raw, content_type=content_type)
            assert response.status == status, (path, content_type, response.json)
            check_response(document, path, method, response)


def test_missing_wrong_and_revoked_keys_rejected(server):
    output = server.cli("apikey", "create", "operator").stdout
    client = Client(server.url, output.strip().splitlines()[-1])
    missing = client.request("GET", "/devices", key=None)
    assert missing.status == 401
    assert missing.getheader("WWW-Authenticate") == 'Bearer realm="dmserver"'
    assert missing.json["error"]["code"] == "unauthorized"
    wrong = client.request("GET", "/devices", key=client.key[:-4] + "AAAA")
    assert wrong.status == 401
    assert client.request("GET", "/devices").status == 200
    key_id = client.key.split("_")[1]
    server.cli("apikey", "revoke", key_id)
    assert client.request("GET", "/devices").status == 401
    stored = server.sql("SELECT secret_sha256 FROM api_keys WHERE key_id = :k", k=key_id)
    secret = client.key.split("_", 2)[2]
    assert secret not in stored[0][0]


VALIDATION_CASES = [
    ("/devices", {"devices": [device_items(1)[0], {"device_id": "IMEI:1", "server_password": "s"}]},
     "devices[1].client_password"),
    ("/devices", {"devices": device_items(1, timezone="Nowhere/City")}, "devices[0].timezone"),
    ("/devices", {"devices": device_items(1, auth="plain")}, "devices[0].auth"),
    ("/devices", {"devices": device_items(1) * 2}, "devices[1].device_id"),
    ("/devices", {"devices": []}, "devices"),
    ("/campaigns", {"name": "x", "target_version": "2", "selection": {"models": ["M"]}, "waves": ["10%", "5%"]},
     "waves[1]"),
    ("/campaigns", {"name": "x", "target_version": "2", "selection": {"models": ["M"]},
                    "limits": {"window": {"start": "02:00", "end": "2am"}}}, "limits.window.end"),
    ("/campaigns", {"target_version": "2", "selection": {"models": ["M"]}}, "name"),
    ("/webhooks", {"url": "ftp://127.0.0.1/x"}, "url"),
    ("/webhooks", {"url": "http://127.0.0.1/x", "events": ["job.started"]}, "events[0]"),
]


def test_validation_errors_name_field(client):
    # One server handles every case, and each failure message names its case.
    for path, body, field in VALIDATION_CASES:
        response = client.request("POST", path, body)
        assert response.status == 422, (path, field, response.json)
        assert response.json["error"]["field"] == field, (path, response.json)
        assert response.json["error"]["message"].startswith(field + ":"), (path, response.json)


def test_malformed_requests(client):
    assert client.request("POST", "/devices", raw=b"{not json").status == 400
    assert client.request("POST", "/devices", raw=b"{}", content_type="text/plain").status == 415
    assert client.request("GET", "/devices?limit=0").json["error"]["field"] == "limit"
    assert client.request("GET", "/jobs?state=lost").json["error"]["field"] == "state"
    assert client.request("GET", "/nothing").status == 404
    wrong_method = client.request("DELETE", "/devices")
    assert wrong_method.status == 405
    assert wrong_method.getheader("Allow") == "GET, POST"
    assert client.request("GET", "/campaigns/abc").status == 404


def test_import_lookup_and_pagination(client):
    created = client.request("POST", "/devices", {"devices": device_items(5, group="pilot", timezone="Europe/Berlin")})
    assert created.status == 201
    assert created.json["created"] == 5
    again = client.request("POST", "/devices", {"devices": device_items(1, start=100) + device_items(1, start=2)})
    assert again.status == 409
    assert again.json["error"]["field"] == "devices[1].device_id"
    # All or nothing: the new device of the rejected request was not stored.
    assert client.request("GET", f"/devices/{quote('IMEI:490154203237100')}").status == 404
    device = client.request("GET", "/devices/IMEI:490154203237003").json
    assert device["firmware_version"] == OLD_VERSION
    assert device["group"] == "pilot"
    assert device["timezone"] == "Europe/Berlin"
    seen = []
    after = 0
    pages = 0
    while True:
        page = client.request("GET", f"/devices?limit=2&after={after}").json
        seen += [item["device_id"] for item in page["items"]]
        pages += 1
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert pages == 3
    assert seen == [item["device_id"] for item in device_items(5)]
    filtered = client.request("GET", "/devices?group=pilot&model=" + MODEL).json
    assert len(filtered["items"]) == 5


def test_device_history_shows_job_events(server, client):
    client.request("POST", "/devices", {"devices": device_items(1)})
    server.cli("job", "fota", "IMEI:490154203237000", "--version", NEW_VERSION)
    history = client.request("GET", "/devices/IMEI:490154203237000/history").json
    assert [job["state"] for job in history["jobs"]] == ["queued"]
    assert [event["kind"] for event in history["jobs"][0]["events"]] == ["queued"]
    jobs = client.request("GET", "/jobs?device_id=IMEI:490154203237000").json["items"]
    assert jobs[0]["id"] == history["jobs"][0]["id"]
    events = client.request(f"GET", f"/events?job_id={jobs[0]['id']}").json["items"]
    assert [event["kind"] for event in events] == ["queued"]


def test_campaign_commands_over_api(client):
    client.request("POST", "/devices", {"devices": device_items(20)})
    campaign = client.request(
        "POST", "/campaigns",
        {"name": "api rollout", "target_version": NEW_VERSION, "selection": {"models": [MODEL]},
         "waves": ["10%", "100%"], "limits": {"max_concurrent": 5}},
    )
    assert campaign.status == 201
    campaign_id = campaign.json["id"]
    assert campaign.json["state"] == "draft"
    assert client.request("POST", f"/campaigns/{campaign_id}/resume").status == 409
    started = client.request("POST", f"/campaigns/{campaign_id}/start")
    assert started.status == 202
    assert started.json["state"] == "preparing"
    assert client.request("POST", f"/campaigns/{campaign_id}/start").status == 409
    running = wait_prepared(client, campaign_id)
    assert running["state"] == "running"
    progress = client.request("GET", f"/campaigns/{campaign_id}/progress").json
    assert [wave["size"] for wave in progress["waves"]] == [2, 18]
    assert progress["totals"]["members"] == 20
    paused = client.request("POST", f"/campaigns/{campaign_id}/pause")
    assert paused.json["state"] == "paused"
    resumed = client.request("POST", f"/campaigns/{campaign_id}/resume")
    assert resumed.json["state"] == "running"
    kinds = [e["kind"] for e in client.request("GET", f"/campaigns/{campaign_id}/events").json["items"]]
    assert kinds[:4] == ["created", "preparing", "running", "wave_opened"]
    assert kinds[-2:] == ["paused", "running"]
    stopped = client.request("POST", f"/campaigns/{campaign_id}/stop")
    assert stopped.json["state"] == "stopped"
    listed = client.request("GET", "/campaigns?state=stopped").json["items"]
    assert [c["id"] for c in listed] == [campaign_id]
