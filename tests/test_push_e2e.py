"""A real dmserver pushes through the file gateway; dmsim receives the pushes.

The server runs as a process with ``--push-gateway file:DIR`` and short
windows; the phone is ``dmsim run --push-source file:DIR``. The job's
history is read from the server's SQLite database.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from dmserver.store.db import Database
from dmserver.store.models import Job, JobEvent
from tests.conftest import (
    MODEL,
    NEW_SHA256,
    NEW_VERSION,
    OLD_IMAGE,
    OLD_VERSION,
    ROOT,
    dmserver_cli,
    start_server,
    stop_server,
)

DEVICE = "IMEI:490154203237518"
MSISDN = "+15550100"
CLIENT_PASSWORD = "client-secret"
SERVER_PASSWORD = "server-secret"
MAX_PUSHES = 3
# Upper bound for the server to send its pushes; the loop ends as soon as
# they are recorded.
EVENT_WAIT_SECONDS = 60
PHONE_TIMEOUT_SECONDS = 120


@pytest.fixture
def push_dir(tmp_path) -> Path:
    return tmp_path / "pushes"


@pytest.fixture
def data_dir(catalogue_dir, tmp_path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(catalogue_dir, target)
    return target


def provision(data_dir: Path, *profile: str) -> None:
    dmserver_cli(
        data_dir,
        "device",
        "add",
        DEVICE,
        "--client-password",
        CLIENT_PASSWORD,
        "--server-password",
        SERVER_PASSWORD,
        "--model",
        MODEL,
        "--msisdn",
        MSISDN,
        *profile,
    )
    dmserver_cli(data_dir, "job", "fota", DEVICE, "--version", NEW_VERSION)


def serve(data_dir: Path, push_dir: Path, window: float):
    return start_server(
        data_dir,
        extra=(
            "--push-gateway",
            f"file:{push_dir}",
            "--push-retry-window",
            str(window),
            "--push-backoff",
            "1",
            "--push-max",
            str(MAX_PUSHES),
            "--push-scan-interval",
            "0.2",
        ),
    )


def run_phone(data_dir: Path, push_dir: Path, state_dir: Path, *extra: str, server_password: str = SERVER_PASSWORD, server_url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dmserver.sim.cli",
            "run",
            "--server",
            server_url,
            "--device",
            DEVICE,
            "--client-password",
            CLIENT_PASSWORD,
            "--server-password",
            server_password,
            "--model",
            MODEL,
            "--manufacturer",
            "Example Handsets",
            "--firmware-version",
            OLD_VERSION,
            "--firmware",
            str(OLD_IMAGE),
            "--state-dir",
            str(state_dir),
            "--cert",
            str(data_dir / "keys" / "signing-cert.pem"),
            "--push-source",
            f"file:{push_dir}",
            "--msisdn",
            MSISDN,
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=PHONE_TIMEOUT_SECONDS + 60,
    )


def job_history(data_dir: Path) -> tuple[str, list[dict]]:
    db = Database(f"sqlite:///{data_dir / 'dmserver.db'}")
    try:
        def read(session):
            job = session.get(Job, 1)
            events = session.scalars(
                select(JobEvent).where(JobEvent.job_id == 1).order_by(JobEvent.id)
            ).all()
            return job.state, [{"kind": event.kind, **(event.detail or {})} for event in events]

        return db.call(read)
    finally:
        db.dispose()


def wait_for_event(data_dir: Path, predicate) -> list[dict]:
    deadline = time.monotonic() + EVENT_WAIT_SECONDS
    while True:
        _, events = job_history(data_dir)
        if any(predicate(event) for event in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def test_phone_with_wrong_password_ignores_pushes(data_dir, push_dir, tmp_path):
    provision(data_dir)
    server = serve(data_dir, push_dir, window=0.5)
    try:
        events = wait_for_event(data_dir, lambda event: event.get("outcome") == "exhausted")
        phone = run_phone(
            data_dir,
            push_dir,
            tmp_path / "phone",
            "--push-timeout",
            "1",
            server_password="not-the-server-password",
            server_url=server.dm_url,
        )
        state, after = job_history(data_dir)
    finally:
        stop_server(server)

    pushes = [(event["attempt"], event["outcome"]) for event in events if event["kind"] == "push"]
    assert pushes == [(1, "sent"), (2, "sent"), (3, "sent"), (3, "exhausted")]
    assert phone.returncode == 1
    assert f"({MAX_PUSHES} ignored)" in phone.stderr
    assert phone.stdout.count("the digest does not verify") == MAX_PUSHES
    assert state == "queued"
    assert not [event for event in after if event["kind"] == "session-started"]


@pytest.mark.parametrize(("form", "expected"), [("hex", "hex"), ("decimal", "decimal"), ("byte-swapped", "byte-swapped")])
def test_pushed_phone_updates_in_session(data_dir, push_dir, tmp_path, form, expected):
    provision(data_dir)
    server = serve(data_dir, push_dir, window=60)
    try:
        phone = run_phone(
            data_dir,
            push_dir,
            tmp_path / "phone",
            "--session-id-form",
            form,
            "--push-timeout",
            str(PHONE_TIMEOUT_SECONDS),
            server_url=server.dm_url,
        )
        state, events = job_history(data_dir)
    finally:
        stop_server(server)

    assert phone.returncode == 0, phone.stdout + phone.stderr
    assert f"sha256 {NEW_SHA256}" in phone.stdout
    assert state == "succeeded"
    started = [event for event in events if event["kind"] == "session-started"]
    assert len(started) == 1
    notified = int(started[0]["notified_session_id"], 16)
    if notified == ((notified & 0xFF) << 8 | notified >> 8):
        pytest.skip(f"session id {notified:04X} reads the same byte-swapped")
    assert started[0]["form"] == expected
    kinds = [event["kind"] for event in events]
    assert kinds.index("session-started") < kinds.index("delivered")


def test_sessionless_phone_updates_without_session(data_dir, push_dir, tmp_path):
    provision(data_dir, "--profile", "sessionless=true", "--firmware-version", OLD_VERSION)
    server = serve(data_dir, push_dir, window=60)
    try:
        phone = run_phone(
            data_dir,
            push_dir,
            tmp_path / "phone",
            "--push-timeout",
            str(PHONE_TIMEOUT_SECONDS),
            server_url=server.dm_url,
        )
        state, events = job_history(data_dir)
        log = server.log()
    finally:
        stop_server(server)

    assert phone.returncode == 0, phone.stdout + phone.stderr
    assert f"sha256 {NEW_SHA256}" in phone.stdout
    assert "Service Loading push" in phone.stdout
    assert state == "succeeded"
    kinds = [event["kind"] for event in events]
    assert kinds == ["queued", "delivered", "push", "downloading", "downloaded", "installed", "succeeded"]
    assert events[-1]["result_code"] == 200
    # No DM session at all: the server logs "session <id> started by <device>".
    assert "started by" not in log
