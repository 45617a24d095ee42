"""Device policy checked before the FUMO Exec: battery, storage, bearer.

The module is pure. The session engine calls :func:`nodes_to_read` for the
management tree nodes to Get in the discovery package (next to
./DevDetail/FwV). After the results arrive, it calls :func:`evaluate` with
the values and the size of the chosen package. The verdict either
allows the update, with extra Replace commands for carrier FUMO extension
nodes (Severity, Wi-Fi only) to send before the Exec, or defers it with a
reason: ``battery``, ``storage`` or ``bearer``. A deferred campaign job is
offered again after ``Policy.retry_after`` seconds
(:func:`dmserver.campaign.lifecycle.defer_job`); it is not failed.

Where a model reports each value is configured per model in the campaign
policy (``policy.models``). A model without its own entry uses
``DEFAULT_NODES``, the DevDetail extension leaves that dmsim exposes. A
check whose node is absent or unreadable (a Get status other than 200, or
a value that is not a number) does not block the update, and the verdict's
``unknown`` lists it.

Carrier extension nodes are written only when the model's entry names them
and the device returned 200 for the Get of that node, so a device without
them is not sent a Replace that it would reject.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from ..store.models import Campaign, Job
from .spec import ModelNodes, Policy, policy_from_json

logger = logging.getLogger(__name__)

DEFAULT_NODES = ModelNodes(
    battery="./DevDetail/Ext/Battery",
    free_storage="./DevDetail/Ext/FreeMem",
    bearer="./DevDetail/Ext/Bearer",
)
# Bearer values (compared in lower case) that mean Wi-Fi.
WIFI_BEARERS = frozenset({"wifi", "wi-fi", "wlan", "802.11"})
REASON_BATTERY = "battery"
REASON_STORAGE = "storage"
REASON_BEARER = "bearer"
STATUS_OK = 200


@dataclass(frozen=True)
class NodeWrite:
    """A Replace the engine sends before the Exec."""

    path: str
    value: str
    format: str  # "int" | "bool" | "chr"


@dataclass
class Verdict:
    allowed: bool
    reason: str | None = None
    detail: str = ""
    writes: list[NodeWrite] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def nodes_for(policy: Policy, model: str | None) -> ModelNodes:
    """Return the node paths configured for ``model``, or the defaults."""
    if model is not None and model in policy.models:
        return policy.models[model]
    return DEFAULT_NODES


def nodes_to_read(policy: Policy, model: str | None) -> list[str]:
    """Return the node paths to Get before deciding, without duplicates."""
    nodes = nodes_for(policy, model)
    paths: list[str] = []
    if policy.min_battery is not None and nodes.battery:
        paths.append(nodes.battery)
    if policy.storage_factor is not None and nodes.free_storage:
        paths.append(nodes.free_storage)
    if policy.wifi_only:
        paths += [p for p in (nodes.wifi_only, nodes.bearer) if p]
    if policy.severity is not None and nodes.severity:
        paths.append(nodes.severity)
    return list(dict.fromkeys(paths))


def _number(values: dict[str, tuple[int, str | None]], path: str | None) -> float | None:
    if not path or path not in values:
        return None
    status, value = values[path]
    if status != STATUS_OK or value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _present(values: dict[str, tuple[int, str | None]], path: str | None) -> bool:
    return bool(path) and path in values and values[path][0] == STATUS_OK


def evaluate(
    policy: Policy,
    model: str | None,
    values: dict[str, tuple[int, str | None]],
    package_size: int,
) -> Verdict:
    """Decide whether the device may get the Exec now.

    ``values`` maps each path of :func:`nodes_to_read` to the (status,
    value) of its Get; ``package_size`` is the size in bytes of the package
    chosen for the device.
    """
    nodes = nodes_for(policy, model)
    verdict = Verdict(allowed=True)

    if policy.min_battery is not None:
        battery = _number(values, nodes.battery)
        if battery is None:
            verdict.unknown.append(REASON_BATTERY)
        elif battery < policy.min_battery:
            return Verdict(
                allowed=False,
                reason=REASON_BATTERY,
                detail=f"battery {battery:g}% is below the minimum of {policy.min_battery}%",
            )

    if policy.storage_factor is not None:
        free = _number(values, nodes.free_storage)
        needed = math.ceil(package_size * policy.storage_factor)
        if free is None:
            verdict.unknown.append(REASON_STORAGE)
        elif free < needed:
            return Verdict(
                allowed=False,
                reason=REASON_STORAGE,
                detail=f"{free:.0f} bytes free, {needed} needed for a {package_size}-byte package",
            )

    if policy.wifi_only:
        if _present(values, nodes.wifi_only):
            # The device enforces Wi-Fi itself once the node is set.
            verdict.writes.append(NodeWrite(nodes.wifi_only, "true", "bool"))
        else:
            bearer = values.get(nodes.bearer or "", (0, None))
            text = (bearer[1] or "").strip().lower() if bearer[0] == STATUS_OK else ""
            if not text:
                # Like every other check, a bearer node that is missing,
                # unreadable or empty does not block the update.
                verdict.unknown.append(REASON_BEARER)
            elif text not in WIFI_BEARERS:
                return Verdict(
                    allowed=False,
                    reason=REASON_BEARER,
                    detail=f"the campaign requires Wi-Fi and the bearer is {text}",
                )

    if policy.severity is not None and _present(values, nodes.severity):
        verdict.writes.append(NodeWrite(nodes.severity, str(policy.severity), "int"))
    return verdict


def policy_for_job(session: Session, job: Job) -> Policy | None:
    """Return the policy of a campaign job, or None for other jobs and
    campaigns without any check configured."""
    if job.campaign_id is None:
        return None
    campaign = session.get(Campaign, job.campaign_id)
    if campaign is None or not campaign.policy:
        return None
    policy = policy_from_json(campaign.policy)
    checks = (policy.min_battery, policy.storage_factor, policy.severity)
    if all(check is None for check in checks) and not policy.wifi_only:
        return None
    return policy
