"""The packages a campaign sends: deltas built before it starts, and the plan.

Before a campaign runs, every (model, source version) among its devices
needs a package to the target version. :func:`prepare` finds the pairs
without a delta package, builds their bsdiff4 deltas in a process pool
(:func:`dmserver.fota.delta.build_deltas`), signs them, and fixes the
campaign's package plan: the delta when it exists and is at most
``max_delta_share`` of the full package, otherwise the full package.

:func:`packages_for_job` returns the planned packages of a campaign job, for
the session service to offer instead of every package of the target
version.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..fota import catalogue
from ..fota import delta as deltas
from ..fota import package as packages
from ..store.db import Database
from ..store.models import Campaign, Device, Firmware, Job, Package
from . import lifecycle

logger = logging.getLogger(__name__)

FULL = "full"


@dataclass(frozen=True)
class DeltaNeed:
    """A (model, source version) pair of the campaign and how to serve it."""

    model: str
    source_version: str
    source_path: Path | None  # None: no stored image, so no delta can be built
    target_path: Path | None
    has_delta: bool


def source_pairs(session: Session, campaign: Campaign) -> list[tuple[str, str]]:
    """Distinct (model, firmware version) of the devices the campaign selects."""
    models = lifecycle.models_with_target(session, campaign.target_version)
    if not models:
        return []
    rows = session.execute(
        select(Device.model, Device.firmware_version).distinct()
        .where(
            lifecycle.selection_clause(campaign.selection, campaign.target_version, models),
            Device.firmware_version.is_not(None),
        )
    ).all()
    return sorted((model, version) for model, version in rows)


def find_needs(session: Session, campaign: Campaign, data_dir: Path) -> list[DeltaNeed]:
    needs = []
    for model, source in source_pairs(session, campaign):
        existing = session.scalars(
            select(Package.id).where(
                Package.model == model,
                Package.source_version == source,
                Package.target_version == campaign.target_version,
                Package.payload_type == "delta",
            )
        ).first()
        images = {
            firmware.version: data_dir / firmware.path
            for firmware in session.scalars(
                select(Firmware).where(
                    Firmware.model == model,
                    Firmware.version.in_([source, campaign.target_version]),
                )
            ).all()
        }
        needs.append(
            DeltaNeed(
                model=model,
                source_version=source,
                source_path=images.get(source),
                target_path=images.get(campaign.target_version),
                has_delta=existing is not None,
            )
        )
    return needs


def _delta_output(data_dir: Path, need: DeltaNeed, target_version: str) -> Path:
    name = f"{catalogue.safe_name(need.source_version)}__{catalogue.safe_name(target_version)}.bsdiff4"
    return data_dir / "deltas" / catalogue.safe_name(need.model) / name


def build_missing(
    data_dir: Path,
    target_version: str,
    needs: list[DeltaNeed],
    *,
    max_workers: int | None = None,
    progress: Callable[[int, int, str], None] = lambda done, total, line: None,
) -> list[tuple[DeltaNeed, deltas.DeltaResult]]:
    """Build the deltas of every need that has both images and no delta."""
    buildable = [
        need for need in needs
        if not need.has_delta and need.source_path is not None and need.target_path is not None
    ]
    if not buildable:
        return []
    tasks = [
        deltas.DeltaJob(
            source_path=need.source_path,
            target_path=need.target_path,
            output_path=_delta_output(data_dir, need, target_version),
        )
        for need in buildable
    ]
    for task in tasks:
        task.output_path.parent.mkdir(parents=True, exist_ok=True)
    by_output = {task.output_path: need for task, need in zip(tasks, buildable)}

    def report(done: int, total: int, result: deltas.DeltaResult) -> None:
        need = by_output[result.job.output_path]
        progress(
            done,
            total,
            f"delta {done}/{total}: {need.model} {need.source_version} -> {target_version}, "
            f"{result.delta_size} bytes ({result.seconds:.1f} s)",
        )

    results = deltas.build_deltas(tasks, max_workers=max_workers, progress=report)
    return [(by_output[result.job.output_path], result) for result in results]


def store_delta_packages(
    session: Session,
    data_dir: Path,
    target_version: str,
    built: list[tuple[DeltaNeed, deltas.DeltaResult]],
    now: datetime,
) -> int:
    """Sign each built delta into a package and record it; return the count."""
    if not built:
        return 0
    key = catalogue.load_signing_key(data_dir)
    created = now.replace(tzinfo=timezone.utc)
    count = 0
    for need, result in built:
        duplicate = session.scalars(
            select(Package.id).where(
                Package.model == need.model,
                Package.source_version == need.source_version,
                Package.target_version == target_version,
                Package.payload_type == "delta",
            )
        ).first()
        if duplicate is not None:
            continue  # another process signed it meanwhile
        source_image = need.source_path.read_bytes()
        target_image = need.target_path.read_bytes()
        payload = result.job.output_path.read_bytes()
        manifest = packages.Manifest.for_delta(
            need.model, need.source_version, source_image, target_version, target_image,
            payload, created=created,
        )
        blob = packages.build_package(manifest, payload, key)
        name = f"{catalogue.safe_name(need.source_version)}__{catalogue.safe_name(target_version)}.pkg"
        path = data_dir / "packages" / catalogue.safe_name(need.model) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        session.add(
            Package(
                model=need.model,
                source_version=need.source_version,
                target_version=target_version,
                payload_type="delta",
                path=str(path.relative_to(data_dir)),
                size=len(blob),
                sha256=hashlib.sha256(blob).hexdigest(),
                created_at=now,
            )
        )
        count += 1
    session.flush()
    return count


def build_plan(session: Session, campaign: Campaign) -> dict[str, dict[str, int]]:
    """Return {model: {source version or "full": package id}}."""
    plan: dict[str, dict[str, int]] = {}
    rows = session.scalars(
        select(Package).where(Package.target_version == campaign.target_version)
    ).all()
    full = {p.model: p for p in rows if p.payload_type == "full"}
    for model, package in full.items():
        plan.setdefault(model, {})[FULL] = package.id
    for package in rows:
        if package.payload_type != "delta" or package.model not in full:
            continue
        limit = campaign.max_delta_share * full[package.model].size
        if package.size <= limit:
            plan[package.model][package.source_version] = package.id
        else:
            logger.info(
                "campaign %d: delta %s %s -> %s is %d bytes, above %.0f%% of the full "
                "package (%d bytes); the full package is sent instead",
                campaign.id, package.model, package.source_version, campaign.target_version,
                package.size, campaign.max_delta_share * 100, full[package.model].size,
            )
    return plan


def packages_for_job(session: Session, job: Job) -> list[Package] | None:
    """Return the packages a campaign job may be offered: the planned delta of
    each source version and the full package. None for a job outside any
    campaign (offer every package of the target version)."""
    if job.campaign_id is None:
        return None
    campaign = session.get(Campaign, job.campaign_id)
    if campaign is None or not campaign.package_plan:
        return None
    ids = [pid for per_model in campaign.package_plan.values() for pid in per_model.values()]
    return list(session.scalars(select(Package).where(Package.id.in_(ids))).all())


def prepare(
    db: Database,
    data_dir: Path,
    campaign_id: int,
    *,
    now: Callable[[], datetime],
    max_workers: int | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Campaign:
    """Start a draft campaign: move it to ``preparing``, then run
    :func:`run_preparation`.

    Runs several transactions and blocks while deltas are built, so call it
    from a worker thread or the command line, never on the reactor thread.
    """
    db.call(lambda s: lifecycle.begin_start(s, campaign_id, now()))
    return run_preparation(
        db, data_dir, campaign_id, now=now, max_workers=max_workers, progress=progress
    )


def run_preparation(
    db: Database,
    data_dir: Path,
    campaign_id: int,
    *,
    now: Callable[[], datetime],
    max_workers: int | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Campaign:
    """Build the missing deltas of a ``preparing`` campaign, fix its package
    plan, make the matching devices members and open wave 1.

    On failure the campaign goes back to ``draft`` with the reason in its
    ``preparation`` field, and the error is raised again.
    """
    try:
        campaign = db.call(lambda s: lifecycle.get(s, campaign_id))
        needs = db.call(lambda s: find_needs(s, lifecycle.get(s, campaign_id), data_dir))
        missing = [n for n in needs if not n.has_delta]
        for need in missing:
            if need.source_path is None or need.target_path is None:
                progress(
                    f"no stored image of {need.model} {need.source_version}; "
                    "its devices get the full package"
                )
        buildable = sum(1 for n in missing if n.source_path and n.target_path)
        db.call(lambda s: _set_preparation(s, campaign_id, buildable, 0))

        def step(done: int, total: int, line: str) -> None:
            progress(line)
            db.call(lambda s: _set_preparation(s, campaign_id, total, done))

        built = build_missing(
            data_dir, campaign.target_version, needs, max_workers=max_workers, progress=step
        )
        db.call(lambda s: store_delta_packages(s, data_dir, campaign.target_version, built, now()))

        def finish(session: Session) -> Campaign:
            current = lifecycle.get(session, campaign_id)
            plan = build_plan(session, current)
            return lifecycle.finish_start(session, campaign_id, plan, now())

        campaign = db.call(finish)
    except Exception as error:
        reason = f"preparation failed: {error}"
        logger.exception("campaign %d: %s", campaign_id, reason)
        db.call(lambda s: lifecycle.abort_start(s, campaign_id, reason, now()))
        raise
    progress(f"campaign {campaign_id} running")
    return campaign


def _set_preparation(session: Session, campaign_id: int, total: int, done: int) -> None:
    campaign = lifecycle.get(session, campaign_id)
    campaign.preparation = {"deltas_total": total, "deltas_done": done}
