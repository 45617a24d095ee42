"""``/api/v1``: the northbound JSON API.

Operators and back-office systems use it to import devices, read firmware,
run campaigns, follow jobs and events, and register webhooks. Every route
except the OpenAPI document needs an API key (``dmserver apikey create``)
sent as ``Authorization: Bearer dmk_<key id>_<secret>``. Keys are stored as
the SHA-256 of their secret part.

Conventions:

- Lists are paginated by id: ``?limit=`` (1 to ``MAX_PAGE_SIZE``, default
  ``DEFAULT_PAGE_SIZE``) and ``?after=<id>``; a response carries ``items``
  and ``next_after`` (null on the last page).
- Errors are ``{"error": {"code", "message", "field"}}``; ``field`` names the
  offending body field or query parameter, as in ``devices[3].model``.
- Every database call runs in the database thread pool (``Database.run``);
  starting a campaign builds its deltas in a worker thread and returns
  202 at once.

The routes are listed in ``ROUTES``; ``dmserver.web.openapi`` describes the
same routes, and a test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.web import resource, server

from .. import webhooks
from ..campaign import lifecycle
from ..campaign import packages as campaign_packages
from ..campaign.spec import MAX_DB_INTEGER, ValidationError, check_timezone, parse_spec
from ..push.gateways import validate_msisdn
from ..store.db import Database
from ..store.models import (
    ApiKey,
    Campaign,
    CampaignEvent,
    Device,
    Firmware,
    Job,
    JobEvent,
    Package,
    WebhookEndpoint,
)
from ..syncml.codes import AUTH_BASIC, AUTH_MAC, AUTH_MD5
from .dm import utcnow

log = Logger(namespace="dmserver.web.api")

API_PREFIX = "/api/v1"
JSON_TYPE = "application/json"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_IMPORT_DEVICES = 10_000
# Maximum length of a digit string parsed as an id or integer parameter.
# Python's int() raises ValueError above 4300 digits, and MAX_DB_INTEGER
# has 10 digits.
MAX_INTEGER_DIGITS = 20
MIN_WEBHOOK_SECRET_LENGTH = 16
AUTH_SCHEMES = {"md5": AUTH_MD5, "basic": AUTH_BASIC, "hmac": AUTH_MAC}
AUTH_NAMES = {scheme: name for name, scheme in AUTH_SCHEMES.items()}
DELIVERY_MODES = ("download", "inband")
JOB_STATES = (
    "queued", "delivered", "accepted", "downloading", "downloaded", "installed",
    "succeeded", "failed", "cancelled",
)

# ---------------------------------------------------------------------------
# API keys

KEY_PREFIX = "dmk"
KEY_ID_BYTES = 6
KEY_SECRET_BYTES = 32
# last_used_at is written at most this often per key.
KEY_LAST_USED_RESOLUTION = timedelta(minutes=1)


def _secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_api_key(session: Session, name: str, now: datetime) -> tuple[ApiKey, str]:
    """Store a new API key; return its row and the full key, shown only once.

    SHA-256 without a slow hash is enough for the stored form because the
    secret is 32 random bytes, not a password a person chose.
    """
    if not name or not name.strip():
        raise ValueError("API key name is empty; name the key after its user, e.g. billing")
    key_id = secrets.token_hex(KEY_ID_BYTES)
    secret = secrets.token_urlsafe(KEY_SECRET_BYTES)
    row = ApiKey(name=name.strip(), key_id=key_id, secret_sha256=_secret_digest(secret), created_at=now)
    session.add(row)
    session.flush()
    return row, f"{KEY_PREFIX}_{key_id}_{secret}"


def verify_api_key(session: Session, presented: str, now: datetime) -> ApiKey | None:
    """Return the active key matching ``presented``, or None."""
    parts = presented.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    _, key_id, secret = parts
    row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_sha256, _secret_digest(secret)):
        return None
    if row.last_used_at is None or now - row.last_used_at >= KEY_LAST_USED_RESOLUTION:
        row.last_used_at = now
    return row


def revoke_api_key(session: Session, key_id: str, now: datetime) -> bool:
    row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now
    return True


# ---------------------------------------------------------------------------
# Errors and input checks


class ApiError(Exception):
    """An error sent as JSON with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", f"{field}: {message}", field)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def conflict(message: str, field: str | None = None) -> ApiError:
    return ApiError(409, "conflict", message, field)


def _query_int(
    query: dict[str, list[str]], name: str, default: int | None, low: int, high: int = MAX_DB_INTEGER
) -> int | None:
    values = query.get(name)
    if not values:
        return default
    text = values[0]
    if not re.fullmatch(r"\d+", text):
        raise ApiError(400, "invalid_parameter", f"{name}: must be a non-negative integer, got {text!r}", name)
    if len(text) > MAX_INTEGER_DIGITS or not low <= int(text) <= high:
        raise ApiError(
            400, "invalid_parameter", f"{name}: must be at least {low} and at most {high}, got {text[:40]}", name
        )
    return int(text)


def _query_text(query: dict[str, list[str]], name: str, choices: tuple[str, ...] | None = None) -> str | None:
    values = query.get(name)
    if not values or values[0] == "":
        return None
    if choices is not None and values[0] not in choices:
        raise ApiError(
            400, "invalid_parameter", f"{name}: must be one of {', '.join(choices)}, got {values[0]!r}", name
        )
    return values[0]


def _page(query: dict[str, list[str]]) -> tuple[int, int]:
    limit = _query_int(query, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    after = _query_int(query, "after", 0, 0)
    return limit, after


def _paginate(session: Session, statement, id_column, limit: int, after: int, render: Callable) -> dict:
    rows = session.scalars(statement.where(id_column > after).order_by(id_column).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [render(row) for row in rows],
        "next_after": rows[-1].id if more and rows else None,
    }


def _object(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise invalid(field, "must be a JSON object")
    return value


def _optional_text(item: dict, key: str, field: str, max_length: int) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, "must be a non-empty string or null")
    if len(value) > max_length:
        raise invalid(field, f"must be at most {max_length} characters")
    return value.strip()


def _required_text(item: dict, key: str, field: str, max_length: int) -> str:
    if item.get(key) is None:
        raise invalid(field, "is required")
    return _optional_text(item, key, field, max_length)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def parse_json_body(raw: bytes) -> Any:
    """Decode a request body as strict JSON: NaN, Infinity and numbers that
    overflow a float are rejected, as RFC 8259 has no such values."""
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {error}") from None


# ---------------------------------------------------------------------------
# JSON forms of the stored rows


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat() + "Z"


def device_json(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "device_id": device.device_id,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "firmware_version": device.firmware_version,
        "group": device.group,
        "carrier_tag": device.carrier_tag,
        "timezone": device.timezone,
        "msisdn": device.msisdn,
        "auth": AUTH_NAMES.get(device.auth_scheme, device.auth_scheme),
        "delivery": device.delivery,
        "created_at": iso(device.created_at),
        "last_seen_at": iso(device.last_seen_at),
    }


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "device_id": job.device.device_id,
        "campaign_id": job.campaign_id,
        "state": job.state,
        "target_version": job.target_version,
        "source_version": job.source_version,
        "package_id": job.package_id,
        "result_code": job.result_code,
        "result_text": job.result_text,
        "install_status": job.install_status,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "finished_at": iso(job.finished_at),
    }


def event_json(event: JobEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "job_id": event.job_id,
        "at": iso(event.at),
        "kind": event.kind,
        "detail": _json_safe(event.detail or {}),
    }


def campaign_json(campaign: Campaign) -> dict[str, Any]:
    return {
        "id": campaign.id,
        "name": campaign.name,
        "target_version": campaign.target_version,
        "state": campaign.state,
        "selection": campaign.selection,
        "waves": campaign.waves,
        "success_threshold": campaign.success_threshold,
        "error_threshold": campaign.error_threshold,
        "min_sample": campaign.min_sample,
        "require_approval": campaign.require_approval,
        "limits": campaign.limits,
        "policy": campaign.policy,
        "max_delta_share": campaign.max_delta_share,
        "current_wave": campaign.current_wave,
        "halt_reason": campaign.halt_reason,
        "preparation": campaign.preparation or {},
        "created_at": iso(campaign.created_at),
        "updated_at": iso(campaign.updated_at),
        "started_at": iso(campaign.started_at),
        "finished_at": iso(campaign.finished_at),
    }


def campaign_event_json(event: CampaignEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "campaign_id": event.campaign_id,
        "at": iso(event.at),
        "kind": event.kind,
        "detail": _json_safe(event.detail or {}),
    }


def webhook_json(endpoint: WebhookEndpoint, secret: bool = False) -> dict[str, Any]:
    body = {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events or [],
        "active": endpoint.active,
        "created_at": iso(endpoint.created_at),
    }
    if secret:
        body["secret"] = endpoint.secret
    return body


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# Database work of each route: plain functions of (session, ...) that
# return (HTTP status, JSON body) or raise ApiError.


def list_devices(session: Session, query: dict, now: datetime):
    limit, after = _page(query)
    statement = select(Device)
    filters = {
        "model": Device.model,
        "firmware_version": Device.firmware_version,
        "group": Device.group,
        "carrier_tag": Device.carrier_tag,
        "manufacturer": Device.manufacturer,
    }
    for name, column in filters.items():
        value = _query_text(query, name)
        if value is not None:
            statement = statement.where(column == value)
    return 200, _paginate(session, statement, Device.id, limit, after, device_json)


def _find_device(session: Session, device_id: str) -> Device:
    device = session.scalars(select(Device).where(Device.device_id == device_id)).first()
    if device is None:
        raise not_found(f"device {device_id} not found")
    return device


def get_device(session: Session, device_id: str):
    return 200, device_json(_find_device(session, device_id))


def device_history(session: Session, device_id: str):
    device = _find_device(session, device_id)
    device_jobs = session.scalars(
        select(Job).where(Job.device_pk == device.id).options(selectinload(Job.device)).order_by(Job.id)
    ).all()
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id.in_([j.id for j in device_jobs])).order_by(JobEvent.id)
    ).all() if device_jobs else []
    by_job: dict[int, list] = {}
    for event in events:
        by_job.setdefault(event.job_id, []).append(event_json(event))
    return 200, {
        "device": device_json(device),
        "jobs": [{**job_json(job), "events": by_job.get(job.id, [])} for job in device_jobs],
    }


DEVICE_IMPORT_KEYS = (
    "device_id", "client_password", "server_password", "client_username", "auth",
    "manufacturer", "model", "firmware_version", "msisdn", "fumo_root", "delivery",
    "group", "carrier_tag", "timezone",
)


def _device_from_item(item: Any, index: int, now: datetime) -> Device:
    prefix = f"devices[{index}]"
    item = _object(item, prefix)
    for key in item:
        if key not in DEVICE_IMPORT_KEYS:
            raise invalid(f"{prefix}.{key}", f"unknown field; expected one of {', '.join(DEVICE_IMPORT_KEYS)}")
    device_id = _required_text(item, "device_id", f"{prefix}.device_id", 128)
    client_password = _required_text(item, "client_password", f"{prefix}.client_password", 256)
    server_password = _required_text(item, "server_password", f"{prefix}.server_password", 256)
    auth = _optional_text(item, "auth", f"{prefix}.auth", 16) or "md5"
    if auth not in AUTH_SCHEMES:
        raise invalid(f"{prefix}.auth", f"must be one of {', '.join(AUTH_SCHEMES)}, got {auth!r}")
    delivery = _optional_text(item, "delivery", f"{prefix}.delivery", 16) or "download"
    if delivery not in DELIVERY_MODES:
        raise invalid(f"{prefix}.delivery", f"must be one of {', '.join(DELIVERY_MODES)}, got {delivery!r}")
    msisdn = _optional_text(item, "msisdn", f"{prefix}.msisdn", 32)
    if msisdn is not None:
        try:
            validate_msisdn(msisdn)
        except ValueError as error:
            raise invalid(f"{prefix}.msisdn", str(error)) from None
    timezone = _optional_text(item, "timezone", f"{prefix}.timezone", 64)
    if timezone is not None:
        try:
            check_timezone(timezone, f"{prefix}.timezone")
        except ValidationError as error:
            raise invalid(error.field, error.message) from None
    return Device(
        device_id=device_id,
        client_username=_optional_text(item, "client_username", f"{prefix}.client_username", 128) or device_id,
        client_password=client_password,
        server_password=server_password,
        auth_scheme=AUTH_SCHEMES[auth],
        manufacturer=_optional_text(item, "manufacturer", f"{prefix}.manufacturer", 128),
        model=_optional_text(item, "model", f"{prefix}.model", 128),
        firmware_version=_optional_text(item, "firmware_version", f"{prefix}.firmware_version", 128),
        msisdn=msisdn,
        fumo_root=_optional_text(item, "fumo_root", f"{prefix}.fumo_root", 256) or "./FUMO",
        delivery=delivery,
        group=_optional_text(item, "group", f"{prefix}.group", 64),
        carrier_tag=_optional_text(item, "carrier_tag", f"{prefix}.carrier_tag", 64),
        timezone=timezone,
        profile={},
        dev_info={},
        created_at=now,
    )


def import_devices(session: Session, body: Any, now: datetime):
    """Provision devices in bulk; all or nothing."""
    body = _object(body, "body")
    items = body.get("devices")
    if not isinstance(items, list) or not items:
        raise invalid("devices", "must be a non-empty list of device objects")
    if len(items) > MAX_IMPORT_DEVICES:
        raise invalid("devices", f"at most {MAX_IMPORT_DEVICES} devices per request, got {len(items)}")
    devices = [_device_from_item(item, index, now) for index, item in enumerate(items)]
    seen: dict[str, int] = {}
    for index, device in enumerate(devices):
        if device.device_id in seen:
            raise invalid(f"devices[{index}].device_id", f"{device.device_id} repeats devices[{seen[device.device_id]}]")
        seen[device.device_id] = index
    existing = set()
    ids = list(seen)
    for start in range(0, len(ids), 1000):
        existing.update(
            session.scalars(select(Device.device_id).where(Device.device_id.in_(ids[start:start + 1000]))).all()
        )
    if existing:
        first = min(seen[device_id] for device_id in existing)
        raise conflict(
            f"devices[{first}].device_id: device {devices[first].device_id} is already provisioned "
            f"({len(existing)} of the devices exist); nothing was imported",
            f"devices[{first}].device_id",
        )
    session.add_all(devices)
    session.flush()
    return 201, {"created": len(devices), "items": [device_json(d) for d in devices]}


def list_firmware(session: Session, query: dict):
    limit, after = _page(query)
    statement = select(Firmware)
    model = _query_text(query, "model")
    if model is not None:
        statement = statement.where(Firmware.model == model)
    page = _paginate(session, statement, Firmware.id, limit, after, lambda f: f)
    firmware = page["items"]
    packages = session.scalars(
        select(Package).where(Package.target_version.in_([f.version for f in firmware])).order_by(Package.id)
    ).all() if firmware else []
    page["items"] = [
        {
            "id": f.id,
            "model": f.model,
            "version": f.version,
            "size": f.size,
            "sha256": f.sha256,
            "created_at": iso(f.created_at),
            "packages": [
                {
                    "id": p.id,
                    "source_version": p.source_version,
                    "payload_type": p.payload_type,
                    "size": p.size,
                    "sha256": p.sha256,
                }
                for p in packages
                if p.model == f.model and p.target_version == f.version
            ],
        }
        for f in firmware
    ]
    return 200, page


def create_campaign(session: Session, body: Any, now: datetime):
    try:
        spec = parse_spec(body)
    except ValidationError as error:
        raise invalid(error.field, error.message) from None
    campaign = lifecycle.create(session, spec, now)
    return 201, campaign_json(campaign)


def list_campaigns(session: Session, query: dict):
    limit, after = _page(query)
    statement = select(Campaign)
    state = _query_text(query, "state", lifecycle.STATES)
    if state is not None:
        statement = statement.where(Campaign.state == state)
    return 200, _paginate(session, statement, Campaign.id, limit, after, campaign_json)


def _campaign(session: Session, campaign_id: int) -> Campaign:
    try:
        return lifecycle.get(session, campaign_id)
    except lifecycle.CampaignNotFound as error:
        raise not_found(str(error)) from None


def get_campaign(session: Session, campaign_id: int):
    return 200, campaign_json(_campaign(session, campaign_id))


def campaign_progress(session: Session, campaign_id: int):
    _campaign(session, campaign_id)
    return 200, _json_safe(lifecycle.progress(session, campaign_id))


def campaign_events(session: Session, campaign_id: int, query: dict):
    _campaign(session, campaign_id)
    limit, after = _page(query)
    statement = select(CampaignEvent).where(CampaignEvent.campaign_id == campaign_id)
    return 200, _paginate(session, statement, CampaignEvent.id, limit, after, campaign_event_json)


COMMANDS: dict[str, Callable] = {
    "pause": lifecycle.pause,
    "resume": lifecycle.resume,
    "cancel": lifecycle.cancel,
    "stop": lifecycle.emergency_stop,
    "approve": lifecycle.approve,
}


def campaign_command(session: Session, campaign_id: int, command: str, now: datetime):
    _campaign(session, campaign_id)
    try:
        campaign = COMMANDS[command](session, campaign_id, now)
    except lifecycle.CampaignError as error:
        raise conflict(str(error)) from None
    return 200, campaign_json(campaign)


def retry_campaign(session: Session, campaign_id: int, body: Any, now: datetime):
    _campaign(session, campaign_id)
    wave = None
    if body is not None:
        body = _object(body, "body")
        for key in body:
            if key != "wave":
                raise invalid(key, "unknown field; expected wave")
        wave = body.get("wave")
        if wave is not None and (
            isinstance(wave, bool) or not isinstance(wave, int) or not 1 <= wave <= MAX_DB_INTEGER
        ):
            raise invalid("wave", f"must be a wave number from 1 to {MAX_DB_INTEGER}, got {wave!r}")
    try:
        retried = lifecycle.retry_failed(session, campaign_id, now, wave)
    except lifecycle.CampaignError as error:
        raise conflict(str(error)) from None
    return 200, {"campaign_id": campaign_id, "retried": retried}


def begin_campaign_start(session: Session, campaign_id: int, now: datetime):
    _campaign(session, campaign_id)
    try:
        campaign = lifecycle.begin_start(session, campaign_id, now)
    except lifecycle.CampaignError as error:
        raise conflict(str(error)) from None
    return 202, campaign_json(campaign)


def list_jobs(session: Session, query: dict):
    limit, after = _page(query)
    statement = select(Job).options(selectinload(Job.device))
    state = _query_text(query, "state", JOB_STATES)
    if state is not None:
        statement = statement.where(Job.state == state)
    campaign_id = _query_int(query, "campaign_id", None, 1)
    if campaign_id is not None:
        statement = statement.where(Job.campaign_id == campaign_id)
    device_id = _query_text(query, "device_id")
    if device_id is not None:
        statement = statement.join(Device, Device.id == Job.device_pk).where(Device.device_id == device_id)
    return 200, _paginate(session, statement, Job.id, limit, after, job_json)


def get_job(session: Session, job_id: int):
    job = session.get(Job, job_id)
    if job is None:
        raise not_found(f"job {job_id} not found")
    return 200, job_json(job)


def list_events(session: Session, query: dict):
    limit, after = _page(query)
    statement = select(JobEvent)
    job_id = _query_int(query, "job_id", None, 1)
    if job_id is not None:
        statement = statement.where(JobEvent.job_id == job_id)
    kind = _query_text(query, "kind")
    if kind is not None:
        statement = statement.where(JobEvent.kind == kind)
    return 200, _paginate(session, statement, JobEvent.id, limit, after, event_json)


def list_webhooks(session: Session, query: dict):
    limit, after = _page(query)
    return 200, _paginate(session, select(WebhookEndpoint), WebhookEndpoint.id, limit, after, webhook_json)


def create_webhook(session: Session, body: Any, now: datetime):
    body = _object(body, "body")
    for key in body:
        if key not in ("url", "events", "secret"):
            raise invalid(key, "unknown field; expected url, events, secret")
    url = _required_text(body, "url", "url", 1024)
    try:
        webhooks.check_url(url)
    except ValueError as error:
        raise invalid("url", str(error)) from None
    # An endpoint stored with no events receives every event, so only a
    # missing or null "events" means that. An empty list is a mistake.
    events = body.get("events")
    if events is None:
        events = []
    elif not isinstance(events, list) or not events:
        raise invalid("events", f"must be a non-empty list of event names, or omitted for all events, got {events!r}")
    for index, name in enumerate(events):
        if not isinstance(name, str) or name not in webhooks.EVENTS:
            raise invalid(f"events[{index}]", f"must be one of {', '.join(webhooks.EVENTS)}, got {name!r}")
    secret = _optional_text(body, "secret", "secret", 128)
    if secret is None:
        secret = webhooks.new_secret()
    elif len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
        raise invalid(
            "secret", f"must be at least {MIN_WEBHOOK_SECRET_LENGTH} characters, or omitted to have one generated"
        )
    endpoint = WebhookEndpoint(url=url, secret=secret, events=events, active=True, created_at=now)
    session.add(endpoint)
    session.flush()
    return 201, webhook_json(endpoint, secret=True)


def delete_webhook(session: Session, webhook_id: int):
    endpoint = session.get(WebhookEndpoint, webhook_id)
    if endpoint is None or not endpoint.active:
        raise not_found(f"webhook {webhook_id} not found")
    # Deliveries keep a reference to the endpoint, so the row stays, inactive.
    endpoint.active = False
    return 204, None


# ---------------------------------------------------------------------------
# Routing


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # under /api/v1, e.g. /devices/{device_id}
    handler: str  # ApiResource method name
    auth: bool = True

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """Return the path parameters if the decoded ``segments`` fit the
        template, else None. A parameter is one whole segment, so it may
        contain "/" when the client sent it as %2F."""
        parts = self.template.strip("/").split("/")
        if len(parts) != len(segments):
            return None
        params = {}
        for part, segment in zip(parts, segments):
            if part.startswith("{") and part.endswith("}"):
                params[part[1:-1]] = segment
            elif part != segment:
                return None
        return params


ROUTES = (
    Route("GET", "/openapi.json", "openapi", auth=False),
    Route("GET", "/devices", "list_devices"),
    Route("POST", "/devices", "import_devices"),
    Route("GET", "/devices/{device_id}", "get_device"),
    Route("GET", "/devices/{device_id}/history", "device_history"),
    Route("GET", "/firmware", "list_firmware"),
    Route("GET", "/campaigns", "list_campaigns"),
    Route("POST", "/campaigns", "create_campaign"),
    Route("GET", "/campaigns/{campaign_id}", "get_campaign"),
    Route("GET", "/campaigns/{campaign_id}/progress", "campaign_progress"),
    Route("GET", "/campaigns/{campaign_id}/events", "campaign_events"),
    Route("POST", "/campaigns/{campaign_id}/start", "start_campaign"),
    Route("POST", "/campaigns/{campaign_id}/pause", "pause_campaign"),
    Route("POST", "/campaigns/{campaign_id}/resume", "resume_campaign"),
    Route("POST", "/campaigns/{campaign_id}/cancel", "cancel_campaign"),
    Route("POST", "/campaigns/{campaign_id}/stop", "stop_campaign"),
    Route("POST", "/campaigns/{campaign_id}/approve", "approve_campaign"),
    Route("POST", "/campaigns/{campaign_id}/retry", "retry_campaign"),
    Route("GET", "/jobs", "list_jobs"),
    Route("GET", "/jobs/{job_id}", "get_job"),
    Route("GET", "/events", "list_events"),
    Route("GET", "/webhooks", "list_webhooks"),
    Route("POST", "/webhooks", "create_webhook"),
    Route("DELETE", "/webhooks/{webhook_id}", "delete_webhook"),
)


@dataclass
class Call:
    """One API request, decoded."""

    params: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    now: datetime

    def int_param(self, name: str) -> int:
        """Return the path parameter ``name`` as an id; 404 unless it can be one."""
        text = self.params[name]
        if (
            not re.fullmatch(r"\d+", text)
            or len(text) > MAX_INTEGER_DIGITS
            or not 1 <= int(text) <= MAX_DB_INTEGER
        ):
            raise ApiError(
                404, "not_found", f"{name} must be an integer from 1 to {MAX_DB_INTEGER}, got {text[:40]!r}", name
            )
        return int(text)


class ApiResource(resource.Resource):
    """The ``/api/v1`` tree: routes each request to a handler method."""

    isLeaf = True

    def __init__(self, db: Database, data_dir: Path, openapi_document: Callable[[], dict] | None = None):
        super().__init__()
        self.db = db
        self.data_dir = data_dir
        if openapi_document is None:
            from .openapi import build_document

            openapi_document = build_document
        self._openapi_document = openapi_document

    # -- dispatching -------------------------------------------------------

    def render(self, request):
        segments = self._path_segments(request)
        path = "/" + "/".join(segments)
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"
        allowed = []
        for route in ROUTES:
            params = route.match(segments)
            if params is None:
                continue
            allowed.append(route.method)
            if route.method == method:
                d = defer.maybeDeferred(self._serve, request, route, params)
                d.addErrback(self._failed, request)
                return server.NOT_DONE_YET
        if allowed:
            request.setHeader(b"Allow", ", ".join(sorted(set(allowed))).encode())
            error = ApiError(405, "method_not_allowed", f"{method} is not allowed on {API_PREFIX}{path}; use {', '.join(sorted(set(allowed)))}")
        else:
            error = ApiError(404, "not_found", f"no API route {API_PREFIX}{path}; see {API_PREFIX}/openapi.json")
        return self._error_bytes(request, error)

    @staticmethod
    def _path_segments(request) -> list[str]:
        """Return the path below this resource, split on "/" and
        percent-decoded once per segment. ``request.postpath`` is decoded
        already but loses the difference between "/" and "%2F", so the raw
        path is split here instead."""
        raw = request.path.split(b"/")
        below = raw[1 + len(request.prepath):]
        return [unquote(segment.decode("latin-1")) for segment in below if segment]

    @defer.inlineCallbacks
    def _serve(self, request, route: Route, params: dict[str, str]):
        now = utcnow()
        if route.auth:
            yield self._authenticate(request, now)
        body = self._read_body(request)
        query = {k.decode("latin-1"): [v.decode("utf-8", "replace") for v in vs] for k, vs in request.args.items()}
        call = Call(params=params, query=query, body=body, now=now)
        status, payload = yield defer.maybeDeferred(getattr(self, route.handler), call)
        self._write_json(request, status, payload)

    def _authenticate(self, request, now: datetime):
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "missing API key; send Authorization: Bearer <key> (create one with: dmserver apikey create NAME)")

        def check(session):
            return verify_api_key(session, token, now) is not None

        d = self.db.run(check)

        def decided(ok):
            if not ok:
                raise ApiError(401, "unauthorized", "invalid or revoked API key")

        d.addCallback(decided)
        return d

    def _read_body(self, request) -> Any:
        if request.method not in (b"POST", b"PUT", b"PATCH"):
            return None
        raw = request.content.read(MAX_BODY_BYTES + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"request body above {MAX_BODY_BYTES} bytes; split the import")
        if not raw.strip():
            return None
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1").split(";")[0].strip()
        if content_type.lower() != JSON_TYPE:
            raise ApiError(
                415, "unsupported_media_type",
                f"send the body as {JSON_TYPE}, not {content_type or 'without a Content-Type'}",
            )
        return parse_json_body(raw)

    def _write_json(self, request, status: int, payload: Any) -> None:
        if request.finished or request._disconnected:
            return
        request.setResponseCode(status)
        if status == 204:
            request.finish()
            return
        body = json.dumps(payload, separators=(",", ":")).encode()
        request.setHeader(b"Content-Type", JSON_TYPE.encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.setHeader(b"Cache-Control", b"no-store")
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _error_bytes(self, request, error: ApiError) -> bytes:
        body = json.dumps(error.body()).encode()
        request.setResponseCode(error.status)
        request.setHeader(b"Content-Type", JSON_TYPE.encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body

    def _failed(self, failure, request) -> None:
        if failure.check(ApiError):
            error = failure.value
            if error.status == 401:
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="dmserver"')
        else:
            log.failure("API request {method} {path} failed", failure,
                        method=request.method, path=request.path)
            error = ApiError(500, "internal", "internal error; the server log has the details")
        if request.finished or request._disconnected:
            return
        self._write_json(request, error.status, error.body())

    # -- handlers ----------------------------------------------------------

    def openapi(self, call: Call):
        return 200, self._openapi_document()

    def list_devices(self, call: Call):
        return self.db.run(lambda s: list_devices(s, call.query, call.now))

    def import_devices(self, call: Call):
        return self.db.run(lambda s: import_devices(s, call.body, call.now))

    def get_device(self, call: Call):
        return self.db.run(lambda s: get_device(s, call.params["device_id"]))

    def device_history(self, call: Call):
        return self.db.run(lambda s: device_history(s, call.params["device_id"]))

    def list_firmware(self, call: Call):
        return self.db.run(lambda s: list_firmware(s, call.query))

    def list_campaigns(self, call: Call):
        return self.db.run(lambda s: list_campaigns(s, call.query))

    def create_campaign(self, call: Call):
        return self.db.run(lambda s: create_campaign(s, call.body, call.now))

    def get_campaign(self, call: Call):
        campaign_id = call.int_param("campaign_id")
        return self.db.run(lambda s: get_campaign(s, campaign_id))

    def campaign_progress(self, call: Call):
        campaign_id = call.int_param("campaign_id")
        return self.db.run(lambda s: campaign_progress(s, campaign_id))

    def campaign_events(self, call: Call):
        campaign_id = call.int_param("campaign_id")
        return self.db.run(lambda s: campaign_events(s, campaign_id, call.query))

    @defer.inlineCallbacks
    def start_campaign(self, call: Call):
        campaign_id = call.int_param("campaign_id")
        result = yield self.db.run(lambda s: begin_campaign_start(s, campaign_id, call.now))
        # Deltas are built in a worker thread and worker processes. The
        # campaign is "preparing" until it runs. After a failure it is
        # "draft" again, with the error in its preparation field.
        d = threads.deferToThread(
            campaign_packages.run_preparation, self.db, self.data_dir, campaign_id, now=utcnow
        )
        d.addErrback(
            lambda failure: log.failure(
                "preparation of campaign {campaign_id} failed", failure, campaign_id=campaign_id
            )
        )
        return result

    def _command(self, call: Call, command: str):
        campaign_id = call.int_param("campaign_id")
        return self.db.run(lambda s: campaign_command(s, campaign_id, command, call.now))

    def pause_campaign(self, call: Call):
        return self._command(call, "pause")

    def resume_campaign(self, call: Call):
        return self._command(call, "resume")

    def cancel_campaign(self, call: Call):
        return self._command(call, "cancel")

    def stop_campaign(self, call: Call):
        return self._command(call, "stop")

    def approve_campaign(self, call: Call):
        return self._command(call, "approve")

    def retry_campaign(self, call: Call):
        campaign_id = call.int_param("campaign_id")
        return self.db.run(lambda s: retry_campaign(s, campaign_id, call.body, call.now))

    def list_jobs(self, call: Call):
        return self.db.run(lambda s: list_jobs(s, call.query))

    def get_job(self, call: Call):
        job_id = call.int_param("job_id")
        return self.db.run(lambda s: get_job(s, job_id))

    def list_events(self, call: Call):
        return self.db.run(lambda s: list_events(s, call.query))

    def list_webhooks(self, call: Call):
        return self.db.run(lambda s: list_webhooks(s, call.query))

    def create_webhook(self, call: Call):
        return self.db.run(lambda s: create_webhook(s, call.body, call.now))

    def delete_webhook(self, call: Call):
        webhook_id = call.int_param("webhook_id")
        return self.db.run(lambda s: delete_webhook(s, webhook_id))

