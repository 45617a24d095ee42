"""The OpenAPI 3.1 document of ``/api/v1``, served at ``/api/v1/openapi.json``.

It describes every route of ``dmserver.web.api.ROUTES`` with its
parameters, request body and response schemas. Tests check that both list
the same routes and that real responses validate against these schemas, so
a change to one side without the other fails.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__, webhooks
from ..campaign import lifecycle
from ..campaign.spec import MAX_DB_INTEGER, SELECTION_KEYS

OPENAPI_VERSION = "3.1.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema_type: str, **extra) -> dict[str, Any]:
    return {"type": [schema_type, "null"], **extra}


TIMESTAMP = {"type": "string", "format": "date-time"}
NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
NULLABLE_STRING = _nullable("string")


def _object(properties: dict[str, Any], required: list[str] | None = None, additional: bool = False) -> dict:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": additional,
    }
    schema["required"] = list(properties) if required is None else required
    return schema


def _page_of(item: str) -> dict[str, Any]:
    return _object(
        {
            "items": {"type": "array", "items": _ref(item)},
            "next_after": {"type": ["integer", "null"], "description": "Pass as ?after= for the next page; null on the last page."},
        }
    )


JOB_STATE = {
    "type": "string",
    "enum": ["queued", "delivered", "accepted", "downloading", "downloaded", "installed",
             "succeeded", "failed", "cancelled"],
}

SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {"type": "string", "description": "Machine-readable error code such as invalid or not_found."},
                    "message": {"type": "string"},
                    "field": {"type": ["string", "null"], "description": "The body field or query parameter at fault, e.g. devices[3].model."},
                }
            )
        }
    ),
    "Device": _object(
        {
            "id": {"type": "integer"},
            "device_id": {"type": "string", "description": "LocURI of the device, e.g. IMEI:490154203237518."},
            "manufacturer": NULLABLE_STRING,
            "model": NULLABLE_STRING,
            "firmware_version": NULLABLE_STRING,
            "group": NULLABLE_STRING,
            "carrier_tag": NULLABLE_STRING,
            "timezone": _nullable("string", description="IANA time zone for delivery windows."),
            "msisdn": NULLABLE_STRING,
            "auth": {"type": "string", "enum": ["md5", "basic", "hmac"]},
            "delivery": {"type": "string", "enum": ["download", "inband"]},
            "created_at": TIMESTAMP,
            "last_seen_at": NULLABLE_TIMESTAMP,
        }
    ),
    "DeviceImportItem": _object(
        {
            "device_id": {"type": "string", "minLength": 1, "maxLength": 128},
            "client_password": {"type": "string", "minLength": 1},
            "server_password": {"type": "string", "minLength": 1},
            "client_username": NULLABLE_STRING,
            "auth": {"type": ["string", "null"], "enum": ["md5", "basic", "hmac", None]},
            "manufacturer": NULLABLE_STRING,
            "model": NULLABLE_STRING,
            "firmware_version": NULLABLE_STRING,
            "msisdn": {"type": ["string", "null"], "pattern": "^\\+?[0-9]{3,20}$",
                       "description": "Phone number for push: 3 to 20 digits with an optional leading +."},
            "fumo_root": NULLABLE_STRING,
            "delivery": {"type": ["string", "null"], "enum": ["download", "inband", None]},
            "group": NULLABLE_STRING,
            "carrier_tag": NULLABLE_STRING,
            "timezone": NULLABLE_STRING,
        },
        required=["device_id", "client_password", "server_password"],
    ),
    "DeviceImport": _object(
        {"devices": {"type": "array", "minItems": 1, "maxItems": 10000, "items": _ref("DeviceImportItem")}}
    ),
    "DeviceImportResult": _object(
        {"created": {"type": "integer"}, "items": {"type": "array", "items": _ref("Device")}}
    ),
    "Job": _object(
        {
            "id": {"type": "integer"},
            "device_id": {"type": "string"},
            "campaign_id": {"type": ["integer", "null"]},
            "state": JOB_STATE,
            "target_version": {"type": "string"},
            "source_version": NULLABLE_STRING,
            "package_id": {"type": ["integer", "null"]},
            "result_code": {"type": ["integer", "null"], "description": "FUMO result code, or the SyncML status of a rejected command."},
            "result_text": NULLABLE_STRING,
            "install_status": {"type": ["integer", "null"], "description": "OMA DL install notify status (9xx)."},
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
            "finished_at": NULLABLE_TIMESTAMP,
        }
    ),
    "JobEvent": _object(
        {
            "id": {"type": "integer"},
            "job_id": {"type": "integer"},
            "at": TIMESTAMP,
            "kind": {"type": "string"},
            "detail": {"type": "object"},
        }
    ),
    "DeviceHistory": _object(
        {
            "device": _ref("Device"),
            "jobs": {"type": "array", "items": _ref("JobWithEvents")},
        }
    ),
    "Package": _object(
        {
            "id": {"type": "integer"},
            "source_version": NULLABLE_STRING,
            "payload_type": {"type": "string", "enum": ["delta", "full"]},
            "size": {"type": "integer"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        }
    ),
    "Firmware": _object(
        {
            "id": {"type": "integer"},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "size": {"type": "integer"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "created_at": TIMESTAMP,
            "packages": {"type": "array", "items": _ref("Package")},
        }
    ),
    "Selection": {
        "type": "object",
        "description": "Filters, all of which a device must match; each list matches any of its values.",
        "properties": {key: {"type": "array", "items": {"type": "string"}, "minItems": 1} for key in SELECTION_KEYS},
        "additionalProperties": False,
        "minProperties": 1,
    },
    "Limits": {
        "type": "object",
        "properties": {
            "max_concurrent": {"type": ["integer", "null"], "minimum": 1, "description": "Devices with a job not yet finished."},
            "pushes_per_second": {"type": ["number", "null"], "exclusiveMinimum": 0},
            "window": {
                "type": ["object", "null"],
                "description": "Delivery window in the device's local time; end before start spans midnight.",
                "properties": {
                    "start": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
                    "end": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
                },
                "required": ["start", "end"],
                "additionalProperties": False,
            },
            "default_timezone": {"type": "string", "description": "Zone of devices without one."},
        },
        "additionalProperties": False,
    },
    "ModelNodes": {
        "type": "object",
        "description": "Management tree nodes in which a model reports the values the policy checks.",
        "properties": {
            key: {"type": ["string", "null"], "pattern": "^\\./"}
            for key in ("battery", "free_storage", "bearer", "severity", "wifi_only")
        },
        "additionalProperties": False,
    },
    "Policy": {
        "type": "object",
        "properties": {
            "min_battery": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
            "storage_factor": {"type": ["number", "null"], "minimum": 1, "description": "Free storage must be this multiple of the package size."},
            "wifi_only": {"type": "boolean"},
            "severity": {"type": ["integer", "null"], "minimum": 0, "maximum": 255},
            "retry_after": {"type": "integer", "minimum": 1, "description": "Seconds before a deferred device is offered the job again."},
            "models": {"type": "object", "additionalProperties": _ref("ModelNodes")},
        },
        "additionalProperties": False,
    },
    "WaveSpec": {
        "oneOf": [
            {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*%\\s*$"},
            {"type": "string", "pattern": "^\\s*[0-9]+\\s*$"},
            {"type": "integer", "minimum": 1},
        ],
        "description": "Cumulative share (\"10%\") or number of the selected devices offered the update once the wave opens.",
    },
    "CampaignCreate": _object(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 128},
            "target_version": {"type": "string", "minLength": 1, "maxLength": 128},
            "selection": _ref("Selection"),
            "waves": {"type": "array", "minItems": 1, "maxItems": 20, "items": _ref("WaveSpec"),
                      "description": "The last wave must be \"100%\". Default [\"100%\"]."},
            "success_threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "error_threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "min_sample": {"type": "integer", "minimum": 1},
            "require_approval": {"type": "boolean"},
            "limits": _ref("Limits"),
            "policy": _ref("Policy"),
            "max_delta_share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        },
        required=["name", "target_version", "selection"],
    ),
    "Campaign": _object(
        {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "target_version": {"type": "string"},
            "state": {"type": "string", "enum": list(lifecycle.STATES)},
            "selection": _ref("Selection"),
            "waves": {"type": "array", "items": {"type": "string"}},
            "success_threshold": {"type": "number"},
            "error_threshold": {"type": "number"},
            "min_sample": {"type": "integer"},
            "require_approval": {"type": "boolean"},
            "limits": _ref("Limits"),
            "policy": _ref("Policy"),
            "max_delta_share": {"type": "number"},
            "current_wave": {"type": "integer", "description": "0 before the campaign runs."},
            "halt_reason": NULLABLE_STRING,
            "preparation": {"type": "object", "description": "deltas_total and deltas_done while preparing; error after a failed preparation."},
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
            "started_at": NULLABLE_TIMESTAMP,
            "finished_at": NULLABLE_TIMESTAMP,
        }
    ),
    "Buckets": {
        "type": "object",
        "description": "Members per progress bucket: pending, queued, notified, delivered, downloading, succeeded, cancelled, failed:<code>, deferred:<reason>.",
        "additionalProperties": {"type": "integer", "minimum": 0},
    },
    "Totals": _object(
        {
            **{name: {"type": "integer"} for name in
               ("members", "succeeded", "failed", "cancelled", "finished", "in_flight", "pending", "deferred")},
            "expired": {"type": "integer", "description": "Failed members whose job expired unanswered."},
        },
        required=["members", "succeeded", "failed", "cancelled", "finished", "in_flight", "pending", "deferred"],
    ),
    "WaveProgress": _object(
        {
            "number": {"type": "integer"},
            "spec": {"type": "string"},
            "state": {"type": "string", "enum": [lifecycle.WAVE_PENDING, lifecycle.WAVE_AWAITING_APPROVAL,
                                                 lifecycle.WAVE_OPEN, lifecycle.WAVE_PASSED]},
            "size": {"type": "integer"},
            "buckets": _ref("Buckets"),
            "totals": _ref("Totals"),
            "failure_rate": {"type": "number", "description": "Failed / finished since the last resume."},
            "opened_at": NULLABLE_TIMESTAMP,
            "passed_at": NULLABLE_TIMESTAMP,
        }
    ),
    "CampaignProgress": _object(
        {
            "campaign_id": {"type": "integer"},
            "state": {"type": "string", "enum": list(lifecycle.STATES)},
            "current_wave": {"type": "integer"},
            "halt_reason": NULLABLE_STRING,
            "preparation": {"type": "object"},
            "waves": {"type": "array", "items": _ref("WaveProgress")},
            "buckets": _ref("Buckets"),
            "totals": _ref("Totals"),
        }
    ),
    "CampaignEvent": _object(
        {
            "id": {"type": "integer"},
            "campaign_id": {"type": "integer"},
            "at": TIMESTAMP,
            "kind": {"type": "string"},
            "detail": {"type": "object"},
        }
    ),
    "RetryRequest": _object({"wave": {"type": ["integer", "null"], "minimum": 1}}, required=[]),
    "RetryResult": _object({"campaign_id": {"type": "integer"}, "retried": {"type": "integer"}}),
    "Webhook": _object(
        {
            "id": {"type": "integer"},
            "url": {"type": "string"},
            "events": {"type": "array", "items": {"type": "string", "enum": list(webhooks.EVENTS)}},
            "active": {"type": "boolean"},
            "created_at": TIMESTAMP,
        }
    ),
    "WebhookCreate": _object(
        {
            "url": {"type": "string", "format": "uri"},
            "events": {"type": ["array", "null"], "minItems": 1,
                       "items": {"type": "string", "enum": list(webhooks.EVENTS)},
                       "description": "Events to receive. All events when absent or null."},
            "secret": {"type": "string", "minLength": 16, "maxLength": 128,
                       "description": "HMAC-SHA256 key of at least 16 characters. Generated when absent."},
        },
        required=["url"],
    ),
}
# A created webhook is a Webhook plus its secret, returned only on creation.
SCHEMAS["WebhookCreated"] = copy.deepcopy(SCHEMAS["Webhook"])
SCHEMAS["WebhookCreated"]["properties"]["secret"] = {"type": "string"}
SCHEMAS["WebhookCreated"]["required"].append("secret")
SCHEMAS["JobWithEvents"] = copy.deepcopy(SCHEMAS["Job"])
SCHEMAS["JobWithEvents"]["properties"]["events"] = {"type": "array", "items": _ref("JobEvent")}
SCHEMAS["JobWithEvents"]["required"].append("events")
for _name in ("Device", "Job", "JobEvent", "Campaign", "CampaignEvent", "Webhook", "Firmware"):
    SCHEMAS[f"{_name}Page"] = _page_of(_name)

ERROR_RESPONSE = {"description": "Error", "content": {"application/json": {"schema": _ref("Error")}}}


def _json_response(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(ok_status: str, ok_description: str, schema: dict | None, *errors: str) -> dict:
    responses: dict[str, Any] = {}
    if schema is None:
        responses[ok_status] = {"description": ok_description}
    else:
        responses[ok_status] = _json_response(ok_description, schema)
    for status in errors:
        responses[status] = ERROR_RESPONSE
    return responses


PAGE_PARAMETERS = [
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
    {"name": "after", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_DB_INTEGER},
     "description": "Return items with an id above this."},
]


def _query(name: str, schema: dict, description: str = "") -> dict:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _path(name: str, schema: dict) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema}


DEVICE_ID = _path("device_id", {"type": "string"})
CAMPAIGN_ID = _path("campaign_id", {"type": "integer", "minimum": 1, "maximum": MAX_DB_INTEGER})
JOB_ID = _path("job_id", {"type": "integer", "minimum": 1, "maximum": MAX_DB_INTEGER})
WEBHOOK_ID = _path("webhook_id", {"type": "integer", "minimum": 1, "maximum": MAX_DB_INTEGER})
STRING = {"type": "string"}


def _operation(operation_id: str, summary: str, responses: dict, parameters: list | None = None,
               body: str | None = None, body_required: bool = True, public: bool = False) -> dict:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if public:
        operation["security"] = []
    return operation


def _command(name: str, summary: str) -> dict:
    return {
        "post": _operation(
            f"{name}_campaign", summary,
            _responses("200", "The campaign after the command", _ref("Campaign"),
                       "400", "401", "404", "409", "413", "415"),
            [CAMPAIGN_ID],
        )
    }


def build_paths() -> dict[str, Any]:
    return {
        "/openapi.json": {
            "get": _operation("openapi", "This document",
                              _responses("200", "OpenAPI 3.1 document", {"type": "object"}), public=True)
        },
        "/devices": {
            "get": _operation(
                "list_devices", "List devices",
                _responses("200", "A page of devices", _ref("DevicePage"), "400", "401"),
                PAGE_PARAMETERS + [_query(name, STRING) for name in
                                   ("model", "firmware_version", "group", "carrier_tag", "manufacturer")],
            ),
            "post": _operation(
                "import_devices", "Provision devices in bulk with their DM credentials (all or nothing)",
                _responses("201", "The devices created", _ref("DeviceImportResult"), "400", "401", "409", "413", "415", "422"),
                body="DeviceImport",
            ),
        },
        "/devices/{device_id}": {
            "get": _operation("get_device", "Look up a device and its current firmware version",
                              _responses("200", "The device", _ref("Device"), "401", "404"), [DEVICE_ID])
        },
        "/devices/{device_id}/history": {
            "get": _operation("device_history", "A device's jobs and their events",
                              _responses("200", "The history", _ref("DeviceHistory"), "401", "404"), [DEVICE_ID])
        },
        "/firmware": {
            "get": _operation("list_firmware", "List firmware images and their packages",
                              _responses("200", "A page of firmware", _ref("FirmwarePage"), "400", "401"),
                              PAGE_PARAMETERS + [_query("model", STRING)])
        },
        "/campaigns": {
            "get": _operation(
                "list_campaigns", "List campaigns",
                _responses("200", "A page of campaigns", _ref("CampaignPage"), "400", "401"),
                PAGE_PARAMETERS + [_query("state", {"type": "string", "enum": list(lifecycle.STATES)})],
            ),
            "post": _operation(
                "create_campaign", "Create a campaign in state draft",
                _responses("201", "The campaign", _ref("Campaign"), "400", "401", "413", "415", "422"),
                body="CampaignCreate",
            ),
        },
        "/campaigns/{campaign_id}": {
            "get": _operation("get_campaign", "Read a campaign",
                              _responses("200", "The campaign", _ref("Campaign"), "401", "404"), [CAMPAIGN_ID])
        },
        "/campaigns/{campaign_id}/progress": {
            "get": _operation("campaign_progress", "Members per wave and progress bucket",
                              _responses("200", "Progress", _ref("CampaignProgress"), "401", "404"), [CAMPAIGN_ID])
        },
        "/campaigns/{campaign_id}/events": {
            "get": _operation("campaign_events", "State changes of a campaign",
                              _responses("200", "A page of events", _ref("CampaignEventPage"), "400", "401", "404"),
                              [CAMPAIGN_ID] + PAGE_PARAMETERS)
        },
        "/campaigns/{campaign_id}/start": {
            "post": _operation(
                "start_campaign",
                "Start a draft campaign: build its missing deltas, then open wave 1 (the campaign is preparing until then)",
                _responses("202", "Preparation started", _ref("Campaign"), "400", "401", "404", "409", "413", "415"),
                [CAMPAIGN_ID],
            )
        },
        "/campaigns/{campaign_id}/pause": _command("pause", "Pause; jobs not yet delivered are withdrawn"),
        "/campaigns/{campaign_id}/resume": _command(
            "resume", "Resume a paused or halted campaign; failures so far are acknowledged"),
        "/campaigns/{campaign_id}/cancel": _command(
            "cancel", "Cancel; delivered jobs run to their result"),
        "/campaigns/{campaign_id}/stop": _command(
            "stop", "Emergency stop: cancel every open job and close its downloads"),
        "/campaigns/{campaign_id}/approve": _command("approve", "Open the wave waiting for approval"),
        "/campaigns/{campaign_id}/retry": {
            "post": _operation(
                "retry_campaign", "Give the failed devices (of one wave, or all) a new job",
                _responses("200", "How many devices will be retried", _ref("RetryResult"),
                           "400", "401", "404", "409", "413", "415", "422"),
                [CAMPAIGN_ID], body="RetryRequest", body_required=False,
            )
        },
        "/jobs": {
            "get": _operation(
                "list_jobs", "List jobs",
                _responses("200", "A page of jobs", _ref("JobPage"), "400", "401"),
                PAGE_PARAMETERS + [
                    _query("state", JOB_STATE),
                    _query("campaign_id", {"type": "integer", "minimum": 1, "maximum": MAX_DB_INTEGER}),
                    _query("device_id", STRING),
                ],
            )
        },
        "/jobs/{job_id}": {
            "get": _operation("get_job", "Read a job", _responses("200", "The job", _ref("Job"), "401", "404"), [JOB_ID])
        },
        "/events": {
            "get": _operation(
                "list_events", "Job events in the order they were stored",
                _responses("200", "A page of events", _ref("JobEventPage"), "400", "401"),
                PAGE_PARAMETERS + [_query("job_id", {"type": "integer", "minimum": 1, "maximum": MAX_DB_INTEGER}), _query("kind", STRING)],
            )
        },
        "/webhooks": {
            "get": _operation("list_webhooks", "List webhook endpoints",
                              _responses("200", "A page of webhooks", _ref("WebhookPage"), "400", "401"),
                              PAGE_PARAMETERS),
            "post": _operation(
                "create_webhook", "Register a webhook endpoint",
                _responses("201", "The endpoint with its signing secret", _ref("WebhookCreated"),
                           "400", "401", "413", "415", "422"),
                body="WebhookCreate",
            ),
        },
        "/webhooks/{webhook_id}": {
            "delete": _operation("delete_webhook", "Deactivate a webhook endpoint",
                                 _responses("204", "Deactivated", None, "401", "404"), [WEBHOOK_ID])
        },
    }


def build_document() -> dict[str, Any]:
    """Return the OpenAPI document (a fresh copy each call)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "dmserver northbound API",
            "version": __version__,
            "description": (
                "Devices, firmware, staged rollout campaigns, jobs, events and webhooks of an "
                "OMA-DM FUMO server. Webhook requests carry X-Dmserver-Signature: "
                "sha256=<hex HMAC-SHA256 of the body with the endpoint secret>."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"apiKey": []}],
        "paths": build_paths(),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "dmk_<key id>_<secret>, created with: dmserver apikey create NAME",
                }
            },
        },
    }
