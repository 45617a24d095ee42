"""Shared fixtures: a real dmserver process on 127.0.0.1 with a fresh data
directory, the signing key, and the libexpat firmware pair from fixtures/."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FIRMWARE = FIXTURES / "firmware"
OLD_IMAGE = FIRMWARE / "libexpat-2.5.0-1+deb12u2.so"
NEW_IMAGE = FIRMWARE / "libexpat-2.5.0-1+deb12u5.so"
# SHA-256 sums published with the firmware corpus (fixtures/firmware/PROVENANCE.md).
OLD_SHA256 = "a9a60cb5308ca1054427e2973b021ea63c2c801c71d8c0dc9d33218fee1d976a"
NEW_SHA256 = "b342d94f6a71df596f19b1b0d4d3af9b883f0333027de6c3fc0dbc9ff8c45057"
MODEL = "FP-100"
OLD_VERSION = "2.5.0-1+deb12u2"
NEW_VERSION = "2.5.0-1+deb12u5"
SERVER_START_TIMEOUT = 30


def dmserver_cli(data_dir: Path, *args: str, db: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dmserver.cli", "--data-dir", str(data_dir)]
    if db:
        command += ["--db", db]
    result = subprocess.run(command + list(args), capture_output=True, text=True, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"dmserver {' '.join(args)} failed: {result.stderr}")
    return result


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    db: str | None = None

    @property
    def dm_url(self) -> str:
        return f"{self.url}/dm"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return dmserver_cli(self.data_dir, *args, db=self.db, check=check)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, db: str | None = None, extra: tuple[str, ...] = ()) -> RunningServer:
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    command = [sys.executable, "-m", "dmserver.cli", "--data-dir", str(data_dir)]
    if db:
        command += ["--db", db]
    command += ["serve", "--host", "127.0.0.1", "--port", "0", *extra]
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if b"listening on" in line or not line:
                break
        if process.poll() is not None:
            break
    if b"listening on" not in line:
        process.kill()
        raise AssertionError(f"server did not start: {log_path.read_text(errors='replace')}")
    url = line.decode().split("listening on ", 1)[1].split()[0]
    return RunningServer(url=url, data_dir=data_dir, process=process, log_path=log_path, db=db)


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def catalogue_dir(tmp_path_factory) -> Path:
    """A data directory with keys and both firmware versions, built once and
    copied by each test (building deltas is the slow part)."""
    data_dir = tmp_path_factory.mktemp("catalogue") / "data"
    dmserver_cli(data_dir, "keys", "init")
    dmserver_cli(data_dir, "firmware", "add", "--model", MODEL, "--version", OLD_VERSION, str(OLD_IMAGE))
    dmserver_cli(data_dir, "firmware", "add", "--model", MODEL, "--version", NEW_VERSION, str(NEW_IMAGE))
    return data_dir


@pytest.fixture
def server(catalogue_dir, tmp_path) -> RunningServer:
    data_dir = tmp_path / "data"
    shutil.copytree(catalogue_dir, data_dir)
    running = start_server(data_dir)
    yield running
    stop_server(running)


def pytest_configure(config):
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
