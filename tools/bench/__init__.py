"""Benchmarks of dmserver: delta builds, DM sessions and package downloads.

Run each module from the repository root, for example
``.venv/bin/python -m tools.bench.deltas``. This package contains what
the three benchmarks share: a description of the machine, starting and stopping
a real ``dmserver serve`` process, measuring a child process's peak memory,
and percentiles. docs/benchmarks.md records the commands and the results.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The firmware corpus sits beside the repository, not inside it: the
# images are several megabytes each.
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "firmware"
SERVER_START_TIMEOUT_SECONDS = 30
SERVER_STOP_TIMEOUT_SECONDS = 10
# Packages whose versions decide the results; printed with every run.
MEASURED_PACKAGES = ("bsdiff4", "twisted", "sqlalchemy", "lxml", "psycopg")
KIB = 1024
MIB = 1024 * 1024


class BenchError(Exception):
    """A benchmark cannot run: missing input, tool or server."""


# ---------------------------------------------------------------------------
# The machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total_mib() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // KIB
    except OSError:
        pass
    return None


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_lines() -> list[str]:
    """Describe the machine, software and current load, one fact a line."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    versions = ", ".join(
        f"{name} {_package_version(name)}" for name in MEASURED_PACKAGES
    )
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"cpu: {os.cpu_count()} x {_cpu_model()}",
        f"memory: {_memory_total_mib()} MiB",
        f"load average (1, 5, 15 min) at start: {load}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"packages: {versions}",
    ]


def print_machine() -> None:
    for line in machine_lines():
        print(f"- {line}")
    print()


# ---------------------------------------------------------------------------
# Child processes and memory


@dataclass
class ChildRun:
    """Outcome of one child process: exit status, output, time and memory."""

    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float
    max_rss_kib: int


def run_measured(command: list[str], cwd: Path | None = None) -> ChildRun:
    """Run ``command`` to completion; return its wall time and peak RSS.

    The child is reaped with ``os.wait4``, whose resource usage belongs to
    that child alone (``ru_maxrss`` is in KiB on Linux), so earlier children
    do not raise the figure as they would with ``RUSAGE_CHILDREN``.
    Output goes to temporary files, so a pipe never fills and blocks it.
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        # Popen must not wait for a child that wait4 has already reaped.
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            returncode=process.returncode,
            stdout=out.read(),
            stderr=err.read(),
            seconds=seconds,
            max_rss_kib=usage.ru_maxrss,
        )


def proc_status_kib(pid: int, field: str) -> int | None:
    """Read a memory field (VmRSS, VmHWM) of a running process in KiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset the VmHWM of ``pid`` to its current RSS (Linux 4.0 and later).

    Returns False when the kernel or the permissions do not allow it; the
    peak then covers the process's whole life.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a running process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of /proc/PID/stat (utime, stime) are in clock ticks;
    # after the ")" of the command name they are at indexes 11 and 12.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile of ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------
# A dmserver process


def dmserver_command(data_dir: Path, db: str | None) -> list[str]:
    command = [sys.executable, "-m", "dmserver.cli", "--data-dir", str(data_dir)]
    if db:
        command += ["--db", db]
    return command


def dmserver_cli(data_dir: Path, *args: str, db: str | None = None) -> str:
    """Run one ``dmserver`` command; return its output or raise BenchError."""
    command = dmserver_command(data_dir, db) + list(args)
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise BenchError(
            f"dmserver {' '.join(args)} exited with {result.returncode}: "
            f"{result.stderr.strip()}"
        )
    return result.stdout


@dataclass
class DmServer:
    """A running ``dmserver serve`` process on 127.0.0.1."""

    process: subprocess.Popen
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=SERVER_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_dmserver(data_dir: Path, log_path: Path, db: str | None = None) -> DmServer:
    """Start ``dmserver serve --port 0`` and wait for its "listening on" line.

    Raises:
        BenchError: the server exited or did not print the line within
            SERVER_START_TIMEOUT_SECONDS.
    """
    command = dmserver_command(data_dir, db) + [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
    log.close()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
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
        process.wait()
        raise BenchError(f"dmserver did not start; its log is {log_path}")
    url = line.decode().split("listening on ", 1)[1].split()[0]
    return DmServer(process=process, url=url, log_path=log_path)
