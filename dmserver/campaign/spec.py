"""Campaign definitions: parsing and validation of what an operator submits.

A definition is a JSON object (the body of ``POST /api/v1/campaigns`` or
the options of ``dmserver campaign create``)::

    {
      "name": "FP-100 security update",
      "target_version": "2.5.0-1+deb12u5",
      "selection": {"models": ["FP-100"], "firmware_versions": ["2.5.0-1+deb12u2"]},
      "waves": ["1%", "10%", "100%"],
      "success_threshold": 0.95,
      "error_threshold": 0.03,
      "limits": {"max_concurrent": 50, "pushes_per_second": 5,
                 "window": {"start": "02:00", "end": "05:00"}},
      "policy": {"min_battery": 30, "wifi_only": false}
    }

Waves are cumulative: each entry is the share ("10%") or number ("50") of
the selected devices that have been offered the update once that wave is
open, so the last wave must be "100%". Every error names the field it is
about, with dots and list indexes ("limits.window.start", "waves[2]").
"""

from __future__ import annotations

import logging
import math
import re
import zoneinfo
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

SELECTION_KEYS = (
    "manufacturers",
    "models",
    "firmware_versions",
    "groups",
    "carrier_tags",
    "device_ids",
)
MAX_NAME_LENGTH = 128
MAX_VERSION_LENGTH = 128
MAX_WAVES = 20
MAX_SELECTION_VALUES = 100_000
DEFAULT_WAVES = ("100%",)
DEFAULT_SUCCESS_THRESHOLD = 0.95
DEFAULT_ERROR_THRESHOLD = 0.05
# Finished devices a wave needs before its failure rate can halt it (or all
# of the wave when it is smaller).
DEFAULT_MIN_SAMPLE = 10
# A delta is sent only when it is at most this share of the full package.
DEFAULT_MAX_DELTA_SHARE = 0.8
DEFAULT_TIMEZONE = "UTC"
MAX_SEVERITY = 255
# Largest value of a PostgreSQL integer column: the bound for ids and for
# every integer that is stored.
MAX_DB_INTEGER = 2**31 - 1
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_COUNT = re.compile(r"^\s*(\d+)\s*$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class ValidationError(ValueError):
    """An invalid campaign definition; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Wave:
    """One cumulative wave: a percentage of the selection or a device count."""

    text: str
    percent: float | None = None
    count: int | None = None

    def cumulative(self, total: int) -> int:
        """Return how many of ``total`` devices are offered the update once
        this wave is open."""
        if self.percent is not None:
            return min(total, math.ceil(total * self.percent / 100 - 1e-9))
        return min(total, self.count or 0)


@dataclass
class Window:
    """Delivery window in the device's local time; ``end`` before ``start``
    means the window spans midnight."""

    start: str
    end: str


@dataclass
class Limits:
    max_concurrent: int | None = None
    pushes_per_second: float | None = None
    window: Window | None = None
    default_timezone: str = DEFAULT_TIMEZONE


@dataclass
class ModelNodes:
    """Management tree nodes a model reports its battery, storage and bearer in."""

    battery: str | None = None
    free_storage: str | None = None
    bearer: str | None = None
    severity: str | None = None
    wifi_only: str | None = None


@dataclass
class Policy:
    min_battery: int | None = None
    # Free storage must be at least this multiple of the package size.
    storage_factor: float | None = None
    wifi_only: bool = False
    severity: int | None = None
    # Seconds before a deferred device is offered the job again.
    retry_after: int = 3600
    models: dict[str, ModelNodes] = field(default_factory=dict)


@dataclass
class CampaignSpec:
    name: str
    target_version: str
    selection: dict[str, list[str]]
    waves: list[Wave]
    success_threshold: float = DEFAULT_SUCCESS_THRESHOLD
    error_threshold: float = DEFAULT_ERROR_THRESHOLD
    min_sample: int = DEFAULT_MIN_SAMPLE
    require_approval: bool = False
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)
    max_delta_share: float = DEFAULT_MAX_DELTA_SHARE

    def limits_json(self) -> dict[str, Any]:
        return asdict(self.limits)

    def policy_json(self) -> dict[str, Any]:
        return asdict(self.policy)


# ---------------------------------------------------------------------------
# Field checks


def _object(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise ValidationError(name, f"must be an object, got {type(value).__name__}")
    return value


def _unknown(data: dict, known: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in known:
            raise ValidationError(
                f"{prefix}{key}", f"unknown field; expected one of {', '.join(known)}"
            )


def _text(value: Any, name: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(name, "must be a non-empty string")
    if len(value) > max_length:
        raise ValidationError(name, f"must be at most {max_length} characters")
    return value.strip()


def _number(value: Any, name: str, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(name, f"must be a number, got {value!r}")
    # JSON decoders and argparse accept NaN and Infinity, and a Python int
    # can be too large for a float.
    try:
        finite = math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite:
        raise ValidationError(name, f"must be a finite number, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = f" and at most {high}" if high is not None else ""
        raise ValidationError(name, f"must be at least {low}{upper}, got {value}")
    return float(value)


def _integer(value: Any, name: str, low: int, high: int = MAX_DB_INTEGER) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, f"must be an integer, got {value!r}")
    if value < low or value > high:
        upper = f" and at most {high}"
        raise ValidationError(name, f"must be at least {low}{upper}, got {value}")
    return value


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(name, f"must be true or false, got {value!r}")
    return value


def parse_wave(value: Any, name: str) -> Wave:
    """Parse "10%" or a positive device count (number or digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValidationError(name, f"a device count must be at least 1, got {value}")
        return Wave(text=str(value), count=value)
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match:
            percent = float(match.group(1))
            if not 0 < percent <= 100:
                raise ValidationError(name, f"percentage must be above 0 and at most 100, got {value}")
            return Wave(text=f"{match.group(1)}%", percent=percent)
        match = _COUNT.match(value)
        if match and int(match.group(1)) >= 1:
            return Wave(text=match.group(1), count=int(match.group(1)))
    raise ValidationError(name, f'must be a percentage such as "10%" or a device count, got {value!r}')


def parse_waves(value: Any) -> list[Wave]:
    if not isinstance(value, list) or not value:
        raise ValidationError("waves", 'must be a non-empty list such as ["1%", "10%", "100%"]')
    if len(value) > MAX_WAVES:
        raise ValidationError("waves", f"at most {MAX_WAVES} waves are allowed")
    waves = [parse_wave(item, f"waves[{index}]") for index, item in enumerate(value)]
    for index in range(1, len(waves)):
        before, after = waves[index - 1], waves[index]
        if before.percent is not None and after.percent is None:
            # A percentage grows with the fleet and a count does not.
            raise ValidationError(
                f"waves[{index}]",
                f"waves are cumulative and must grow: the device count {after.text} "
                f"follows the percentage {before.text}; put device counts first",
            )
        same_kind = (before.percent is None) == (after.percent is None)
        if same_kind and (after.percent or after.count) <= (before.percent or before.count):
            raise ValidationError(
                f"waves[{index}]",
                f"waves are cumulative and must grow: {after.text} follows {before.text}",
            )
    if waves[-1].percent != 100:
        raise ValidationError(
            f"waves[{len(waves) - 1}]", 'the last wave must be "100%" so that every device is reached'
        )
    return waves


def parse_selection(value: Any) -> dict[str, list[str]]:
    data = _object(value, "selection")
    _unknown(data, SELECTION_KEYS, "selection.")
    selection: dict[str, list[str]] = {}
    for key in SELECTION_KEYS:
        if key not in data or data[key] is None:
            continue
        items = data[key]
        if not isinstance(items, list):
            raise ValidationError(f"selection.{key}", "must be a list of strings")
        if len(items) > MAX_SELECTION_VALUES:
            raise ValidationError(f"selection.{key}", f"at most {MAX_SELECTION_VALUES} values")
        selection[key] = [
            _text(item, f"selection.{key}[{index}]", MAX_VERSION_LENGTH)
            for index, item in enumerate(items)
        ]
        if not selection[key]:
            raise ValidationError(f"selection.{key}", "must not be empty; leave it out to match any")
    if not selection:
        raise ValidationError(
            "selection", f"must contain at least one of {', '.join(SELECTION_KEYS)}"
        )
    return selection


def parse_clock(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _CLOCK.match(value):
        raise ValidationError(name, f'must be a 24-hour time "HH:MM", got {value!r}')
    return value


def check_timezone(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(name, "must be an IANA time zone name such as Europe/Berlin")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(name, f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin") from None
    return value


def parse_limits(value: Any) -> Limits:
    data = _object(value, "limits")
    _unknown(data, ("max_concurrent", "pushes_per_second", "window", "default_timezone"), "limits.")
    limits = Limits()
    if data.get("max_concurrent") is not None:
        limits.max_concurrent = _integer(data["max_concurrent"], "limits.max_concurrent", 1)
    if data.get("pushes_per_second") is not None:
        rate = _number(data["pushes_per_second"], "limits.pushes_per_second", 0)
        if rate <= 0:
            raise ValidationError("limits.pushes_per_second", "must be above 0")
        limits.pushes_per_second = rate
    if data.get("window") is not None:
        window = _object(data["window"], "limits.window")
        _unknown(window, ("start", "end"), "limits.window.")
        start = parse_clock(window.get("start"), "limits.window.start")
        end = parse_clock(window.get("end"), "limits.window.end")
        if start == end:
            raise ValidationError("limits.window.end", "must differ from start")
        limits.window = Window(start, end)
    if data.get("default_timezone") is not None:
        limits.default_timezone = check_timezone(data["default_timezone"], "limits.default_timezone")
    return limits


def parse_policy(value: Any) -> Policy:
    data = _object(value, "policy")
    known = ("min_battery", "storage_factor", "wifi_only", "severity", "retry_after", "models")
    _unknown(data, known, "policy.")
    policy = Policy()
    if data.get("min_battery") is not None:
        policy.min_battery = _integer(data["min_battery"], "policy.min_battery", 0, 100)
    if data.get("storage_factor") is not None:
        policy.storage_factor = _number(data["storage_factor"], "policy.storage_factor", 1.0, 100.0)
    if data.get("wifi_only") is not None:
        policy.wifi_only = _boolean(data["wifi_only"], "policy.wifi_only")
    if data.get("severity") is not None:
        policy.severity = _integer(data["severity"], "policy.severity", 0, MAX_SEVERITY)
    if data.get("retry_after") is not None:
        policy.retry_after = _integer(data["retry_after"], "policy.retry_after", 1)
    models = data.get("models") or {}
    models = _object(models, "policy.models")
    node_keys = ("battery", "free_storage", "bearer", "severity", "wifi_only")
    for model, nodes in models.items():
        prefix = f"policy.models.{model}"
        nodes = _object(nodes, prefix)
        _unknown(nodes, node_keys, prefix + ".")
        parsed = {}
        for key in node_keys:
            if nodes.get(key) is not None:
                path = _text(nodes[key], f"{prefix}.{key}", 512)
                if not path.startswith("./"):
                    raise ValidationError(f"{prefix}.{key}", f"must be an absolute node URI starting with ./, got {path!r}")
                parsed[key] = path
        policy.models[model] = ModelNodes(**parsed)
    return policy


TOP_LEVEL_KEYS = (
    "name",
    "target_version",
    "selection",
    "waves",
    "success_threshold",
    "error_threshold",
    "min_sample",
    "require_approval",
    "limits",
    "policy",
    "max_delta_share",
)


def parse_spec(value: Any) -> CampaignSpec:
    """Validate a campaign definition; raise ValidationError naming the field."""
    data = _object(value, "body")
    _unknown(data, TOP_LEVEL_KEYS, "")
    if "name" not in data:
        raise ValidationError("name", "is required")
    if "target_version" not in data:
        raise ValidationError("target_version", "is required")
    if "selection" not in data:
        raise ValidationError("selection", "is required")
    spec = CampaignSpec(
        name=_text(data["name"], "name", MAX_NAME_LENGTH),
        target_version=_text(data["target_version"], "target_version", MAX_VERSION_LENGTH),
        selection=parse_selection(data["selection"]),
        waves=parse_waves(data["waves"]) if data.get("waves") is not None else [
            parse_wave(text, "waves") for text in DEFAULT_WAVES
        ],
    )
    if data.get("success_threshold") is not None:
        spec.success_threshold = _number(data["success_threshold"], "success_threshold", 0.0, 1.0)
    if data.get("error_threshold") is not None:
        spec.error_threshold = _number(data["error_threshold"], "error_threshold", 0.0, 1.0)
    if data.get("min_sample") is not None:
        spec.min_sample = _integer(data["min_sample"], "min_sample", 1)
    if data.get("require_approval") is not None:
        spec.require_approval = _boolean(data["require_approval"], "require_approval")
    if data.get("limits") is not None:
        spec.limits = parse_limits(data["limits"])
    if data.get("policy") is not None:
        spec.policy = parse_policy(data["policy"])
    if data.get("max_delta_share") is not None:
        share = _number(data["max_delta_share"], "max_delta_share", 0.0, 1.0)
        if share <= 0:
            raise ValidationError("max_delta_share", "must be above 0")
        spec.max_delta_share = share
    return spec


def limits_from_json(data: dict[str, Any] | None) -> Limits:
    data = dict(data or {})
    window = data.pop("window", None)
    limits = Limits(**data)
    limits.window = Window(**window) if window else None
    return limits


def policy_from_json(data: dict[str, Any] | None) -> Policy:
    data = dict(data or {})
    models = {name: ModelNodes(**nodes) for name, nodes in (data.pop("models", None) or {}).items()}
    return Policy(models=models, **data)
