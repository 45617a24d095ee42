"""Database side of the per-job download URLs.

Each job has a random token; its URLs are

- ``/dl/dd/<token>``: the OMA DL 1.0 download descriptor of the job's package,
- ``/dl/pkg/<token>``: the signed package itself (HTTP Range, ETag),
- ``/dl/notify/<token>``: the installNotifyURI where the device POSTs its
  9xx status line.

The functions run in a database transaction and return plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from ..store.models import Job, Package
from . import jobs
from .descriptor import DownloadDescriptor, build_descriptor, parse_install_notify

log = Logger(namespace="dmserver.downloads")

PACKAGE_MEDIA_TYPE = "application/octet-stream"
# FUMO result code 200 (Successful), recorded for a session-less job whose
# install notify reports 900.
FUMO_SUCCESSFUL = 200
# Jobs whose package may still be downloaded.
DOWNLOADABLE_STATES = ("delivered", "accepted", "downloading", "downloaded", "installed")


class DownloadNotFound(LookupError):
    pass


class InstallNotifyConflict(ValueError):
    """An install notify for a job that is already closed (HTTP 409)."""


@dataclass
class PackageFile:
    path: Path
    size: int
    etag: str
    job_id: int


def _job_by_token(db: Session, token: str) -> Job:
    job = db.scalars(select(Job).where(Job.token == token)).first()
    if job is None or job.package_id is None:
        raise DownloadNotFound(f"no download for token {token[:16]!r}")
    return job


def descriptor_for(db: Session, token: str, base_url: str, now: datetime, record: bool = True) -> bytes:
    job = _job_by_token(db, token)
    if job.state not in DOWNLOADABLE_STATES:
        raise DownloadNotFound(f"job {job.id} is {job.state}; its download is closed")
    package: Package = job.package
    descriptor = DownloadDescriptor(
        object_uri=f"{base_url}/dl/pkg/{token}",
        size=package.size,
        type=PACKAGE_MEDIA_TYPE,
        name=f"{package.model} {package.target_version}",
        install_notify_uri=f"{base_url}/dl/notify/{token}",
        vendor="dmserver",
        description=(
            f"{package.payload_type} update of {package.model} "
            f"{package.source_version or 'any'} -> {package.target_version}"
        ),
    )
    if record:
        jobs.advance(db, job, "downloading", now, fetched="descriptor")
    return build_descriptor(descriptor)


def package_for(db: Session, token: str, data_dir: Path) -> PackageFile:
    job = _job_by_token(db, token)
    if job.state not in DOWNLOADABLE_STATES:
        raise DownloadNotFound(f"job {job.id} is {job.state}; its download is closed")
    package: Package = job.package
    return PackageFile(
        path=data_dir / package.path,
        size=package.size,
        etag=f'"{package.sha256}"',
        job_id=job.id,
    )


def _locked_job(db: Session, job_id: int) -> Job | None:
    """Load a job holding its write lock, so that a download record and an
    install notify arriving together cannot overwrite each other's state."""
    from ..campaign.lifecycle import write_lock

    write_lock(db, Job, job_id)
    return db.scalars(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    ).first()


def package_sent(db: Session, job_id: int, start: int, end: int, size: int, now: datetime) -> None:
    """Record that bytes start..end (inclusive) of the package were delivered."""
    job = _locked_job(db, job_id)
    if job is None:
        return
    if end >= size - 1:
        jobs.advance(db, job, "downloaded", now, last_range=f"{start}-{end}")
    else:
        jobs.advance(db, job, "downloading", now)


def install_notify(db: Session, token: str, body: bytes, now: datetime) -> tuple[int, str]:
    """Record an install notify; raise InstallNotifyError for a bad body."""
    from ..mo.fumo import install_status_to_fumo

    job = db.scalars(select(Job).where(Job.token == token)).first()
    if job is None:
        raise DownloadNotFound(f"no job for install notify token {token[:16]!r}")
    code, text = parse_install_notify(body)
    job = _locked_job(db, job.id)
    if job.state in jobs.FINAL_STATES:
        # A closed job keeps its result: a late or forged notify changes nothing.
        log.warn(
            "install notify {code} for job {job_id}, which is already {state}; ignored",
            code=code,
            job_id=job.id,
            state=job.state,
        )
        raise InstallNotifyConflict(f"job {job.id} is already {job.state}")
    if job.state == "queued":
        # The session-less delivery was given up and the job waits for a DM
        # session, which reads the installed version itself. The late
        # notify is kept as an event but moves the job nowhere.
        jobs.record_event(db, job, "install-notify-late", now, install_status=code, text=text)
        log.warn(
            "install notify {code} for job {job_id}, which is queued again; recorded only",
            code=code,
            job_id=job.id,
        )
        return code, text
    job.install_status = code
    if code == 900:
        jobs.advance(db, job, "installed", now, install_status=code)
        if jobs.delivered_sessionless(db, job):
            # The phone was reached by a Service Loading push and sends no
            # Generic Alert: its install notify is the final report.
            jobs.close_with_result(
                db, job, FUMO_SUCCESSFUL, now, source="install notify (session-less)"
            )
    else:
        fumo_code = install_status_to_fumo(code)
        job.result_code = fumo_code
        job.result_text = f"install notify {code} {text}".strip()
        jobs.set_state(db, job, "failed", now, install_status=code, result_code=fumo_code)
    log.info("install notify {code} for job {job_id}", code=code, job_id=job.id)
    return code, text
