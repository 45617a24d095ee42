"""Firmware catalogue: store images and build their signed packages.

Adding version V of a model stores the image, builds a bsdiff4 delta from
every stored version of that model to V in a process pool (each delta is
verified by applying it), and signs one delta package per source version
plus one full package of V. Files live in the data directory:

    firmware/<model>/<version>.img
    deltas/<model>/<source>__<target>.bsdiff4
    packages/<model>/<source>__<target>.pkg   (full: full__<target>.pkg)
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..store.models import Firmware, Package
from . import delta as deltas
from . import package as packages
from . import signing

KEY_FILE = "keys/signing-key.pem"
CERT_FILE = "keys/signing-cert.pem"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


class CatalogueError(ValueError):
    pass


@dataclass
class AddedPackage:
    source_version: str | None
    payload_type: str
    size: int
    path: Path


def safe_name(text: str) -> str:
    """File-system-safe form of a model or version string."""
    cleaned = _UNSAFE.sub("_", text)
    return cleaned if cleaned not in ("", ".", "..") else "_"


def load_signing_key(data_dir: Path):
    path = data_dir / KEY_FILE
    if not path.exists():
        raise CatalogueError(
            f"no signing key at {path}; create one with: dmserver --data-dir {data_dir} keys init"
        )
    return signing.load_private_key(path)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_firmware(
    db: Session,
    data_dir: Path,
    model: str,
    version: str,
    image_path: Path,
    *,
    now: datetime | None = None,
    max_workers: int | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> list[AddedPackage]:
    """Store ``image_path`` as ``version`` of ``model`` and build its packages."""
    now = now or datetime.now(timezone.utc)
    naive_now = now.replace(tzinfo=None)
    if not image_path.is_file():
        raise CatalogueError(f"firmware image {image_path} does not exist or is not a file")
    key = load_signing_key(data_dir)
    existing = db.scalars(select(Firmware).where(Firmware.model == model)).all()
    if any(f.version == version for f in existing):
        raise CatalogueError(
            f"model {model!r} already has version {version!r}; pick another version string"
        )

    # Step 1: store the image.
    relative = Path("firmware") / safe_name(model) / f"{safe_name(version)}.img"
    target_path = data_dir / relative
    target_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image_path, target_path)
    target_image = target_path.read_bytes()
    firmware = Firmware(
        model=model,
        version=version,
        sha256=hashlib.sha256(target_image).hexdigest(),
        size=len(target_image),
        path=str(relative),
        created_at=naive_now,
    )
    db.add(firmware)
    progress(f"stored {model} {version}: {firmware.size} bytes, sha256 {firmware.sha256}")

    # Step 2: build a delta from every stored version, in worker processes.
    jobs = [
        deltas.DeltaJob(
            source_path=data_dir / source.path,
            target_path=target_path,
            output_path=data_dir
            / "deltas"
            / safe_name(model)
            / f"{safe_name(source.version)}__{safe_name(version)}.bsdiff4",
        )
        for source in existing
    ]
    versions = {job.source_path: source.version for job, source in zip(jobs, existing)}

    def report(done: int, total: int, result: deltas.DeltaResult) -> None:
        progress(
            f"delta {done}/{total}: {versions[result.job.source_path]} -> {version}, "
            f"{result.delta_size} bytes ({result.seconds:.1f} s)"
        )

    results = deltas.build_deltas(jobs, max_workers=max_workers, progress=report) if jobs else []

    # Step 3: sign one package per delta, and a full package.
    added: list[AddedPackage] = []
    package_dir = data_dir / "packages" / safe_name(model)
    package_dir.mkdir(parents=True, exist_ok=True)
    for result in results:
        source_version = versions[result.job.source_path]
        source_image = result.job.source_path.read_bytes()
        payload = result.job.output_path.read_bytes()
        manifest = packages.Manifest.for_delta(
            model, source_version, source_image, version, target_image, payload, created=now
        )
        name = f"{safe_name(source_version)}__{safe_name(version)}.pkg"
        added.append(
            _store_package(db, data_dir, package_dir / name, manifest, payload, key, naive_now)
        )
    manifest = packages.Manifest.for_full(model, version, target_image, created=now)
    added.append(
        _store_package(
            db,
            data_dir,
            package_dir / f"full__{safe_name(version)}.pkg",
            manifest,
            target_image,
            key,
            naive_now,
        )
    )
    for item in added:
        progress(
            f"signed {item.payload_type} package {item.source_version or 'any'} -> {version}: "
            f"{item.size} bytes"
        )
    return added


def _store_package(db, data_dir, path: Path, manifest, payload: bytes, key, now) -> AddedPackage:
    blob = packages.build_package(manifest, payload, key)
    path.write_bytes(blob)
    db.add(
        Package(
            model=manifest.model,
            source_version=manifest.source_version,
            target_version=manifest.target_version,
            payload_type=manifest.payload_type,
            path=str(path.relative_to(data_dir)),
            size=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            created_at=now,
        )
    )
    return AddedPackage(manifest.source_version, manifest.payload_type, len(blob), path)
