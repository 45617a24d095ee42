"""Helpers shared by the demos: start a dmserver process and wait for it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT = 30


def start_server(
    command: list[str], log_path: Path, prefix: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start ``dmserver ... serve`` and return the process and its listening URL.

    Raises SystemExit naming the log file when no "listening on" line arrives
    within SERVER_START_TIMEOUT seconds.
    """
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=ROOT, env=env)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        if "listening on" in line:
            return process, line.split("listening on ", 1)[1].split()[0]
        if not line and process.poll() is not None:
            break
    process.kill()
    raise SystemExit(f"{prefix}: failed: the server did not start; see {log_path}")
