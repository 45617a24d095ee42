"""Benchmark complete SyncML DM sessions against a real dmserver process.

The benchmark starts ``dmserver serve`` on 127.0.0.1 with a fresh data
directory: SQLite in WAL mode, or with ``--db`` a throwaway schema in
PostgreSQL. It stores the libexpat firmware pair from fixtures/firmware and
provisions phones with ``dmserver device import``. Then client threads run
phases of concurrent sessions, each in XML and in WBXML:

- ``no job``: package 1 (Alert 1201, Replace ./DevInfo, auth-md5 Cred) and
  the server's reply with Status 212 and Final. Phones are reused, so
  each session starts from the nonce the server issued in the previous one.
- ``FOTA to Exec``: every phone has a queued job; the session runs until
  the phone has answered the Replace of PkgURL and the Exec of
  DownloadAndUpdate with 202. Each job serves one session.

The client side is ``dmserver.sim.session.ClientSession``, the simulator's
DM client engine, with a phone that keeps its state in memory instead of
writing it to disk after each message. Each phase stops after a number of
sessions or seconds, whichever comes first. Reported: sessions and
messages per second, session and message latency percentiles, server CPU
time per session and the server's peak RSS.

Example::

    .venv/bin/python -m tools.bench.sessions --concurrency 8 --seconds 20
"""

from __future__ import annotations

import argparse
import csv
import queue
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dmserver.sim.fleet import fleet_device_id
from dmserver.sim.phone import Phone
from dmserver.sim.session import (
    HttpResponse,
    HttpTransport,
    SessionConfig,
    SessionError,
    run_session,
)
from dmserver.syncml.codec import Encoding

from . import (
    KIB,
    ROOT,
    BenchError,
    DmServer,
    cpu_seconds,
    dmserver_cli,
    percentile,
    print_machine,
    proc_status_kib,
    reset_peak_rss,
    start_dmserver,
)

FIRMWARE = ROOT / "fixtures" / "firmware"
OLD_VERSION = "2.5.0-1+deb12u2"
NEW_VERSION = "2.5.0-1+deb12u5"
OLD_IMAGE = FIRMWARE / f"libexpat-{OLD_VERSION}.so"
NEW_IMAGE = FIRMWARE / f"libexpat-{NEW_VERSION}.so"
MODEL = "FP-100"
MANUFACTURER = "Example Handsets"
# IMEIs of the benchmark's phones start here, with one block per phase.
ID_BASE = 35_100_000_000_000
ID_BLOCK = 1_000_000
POSTGRES_EXAMPLE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

DEFAULT_CONCURRENCY = 8
DEFAULT_DEVICES = 64
DEFAULT_SESSIONS = 2000
DEFAULT_JOB_SESSIONS = 400
DEFAULT_SECONDS = 30.0
# Sessions per encoding run before the measured phases and not counted:
# they load the server's code paths and caches.
WARMUP_SESSIONS = 16
# At most this many distinct error messages are printed per phase.
MAX_ERRORS_SHOWN = 3


class MemoryPhone(Phone):
    """A simulated phone whose state stays in memory between messages.

    ``Phone.save`` writes and fsyncs phone.json after each message, which
    would make the client's disk the bottleneck of the benchmark.
    """

    def save(self) -> None:
        pass


class TimingTransport(HttpTransport):
    """HttpTransport that records the round-trip time of every POST."""

    def __init__(self, latencies: list[float]):
        super().__init__()
        self.latencies = latencies

    def post(self, url, body, headers) -> HttpResponse:
        started = time.perf_counter()
        response = super().post(url, body, headers)
        self.latencies.append(time.perf_counter() - started)
        return response


@dataclass
class Phase:
    """One measured run of sessions and what came of it."""

    backend: str
    encoding: Encoding
    kind: str
    concurrency: int
    sessions: int = 0
    errors: list[str] = field(default_factory=list)
    messages: int = 0
    seconds: float = 0.0
    session_latencies: list[float] = field(default_factory=list)
    message_latencies: list[float] = field(default_factory=list)
    server_cpu_seconds: float | None = None
    client_cpu_seconds: float = 0.0
    server_peak_rss_kib: int | None = None
    peak_is_whole_life: bool = False


# ---------------------------------------------------------------------------
# Setting up the server


def _device_password(device_id: str, kind: str) -> str:
    return f"{kind}-{device_id[-8:]}"


def create_phones(root: Path, first_index: int, count: int, cert: bytes) -> list[Phone]:
    image = OLD_IMAGE.read_bytes()
    phones = []
    for index in range(first_index, first_index + count):
        device_id = fleet_device_id(index, ID_BASE)
        phones.append(
            MemoryPhone.create(
                root / device_id.replace(":", "_"),
                device_id=device_id,
                model=MODEL,
                manufacturer=MANUFACTURER,
                firmware_version=OLD_VERSION,
                firmware=image,
                cert=cert,
                client_password=_device_password(device_id, "c"),
                server_password=_device_password(device_id, "s"),
            )
        )
    return phones


def import_devices(
    data_dir: Path, db: str | None, phones: list[Phone], path: Path
) -> None:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["device_id", "client_password", "server_password", "model"])
        for phone in phones:
            writer.writerow(
                [phone.device_id, phone.client_password, phone.server_password, MODEL]
            )
    dmserver_cli(data_dir, "device", "import", str(path), db=db)


def queue_jobs(db_url: str, device_ids: list[str]) -> None:
    """Queue one FOTA job to NEW_VERSION for each device, in one transaction.

    This calls ``dmserver.fota.jobs.create_job``, as ``dmserver job fota``
    does, without starting one process per device.
    """
    from sqlalchemy import select

    from dmserver.fota import jobs
    from dmserver.store.db import Database
    from dmserver.store.models import Device

    database = Database(db_url)
    now = datetime.now(timezone.utc).replace(tzinfo=None)

    def create_all(session) -> None:
        devices = session.scalars(
            select(Device).where(Device.device_id.in_(device_ids))
        )
        for device in devices:
            jobs.create_job(session, device, NEW_VERSION, now)

    try:
        database.call(create_all)
    finally:
        database.dispose()


def count_jobs(db_url: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from dmserver.store.db import Database
    from dmserver.store.models import Job

    database = Database(db_url)
    try:
        rows = database.call(
            lambda s: s.execute(
                select(Job.state, func.count()).group_by(Job.state)
            ).all()
        )
    finally:
        database.dispose()
    return {state: count for state, count in rows}


class PostgresSchema:
    """A schema created for one run in a PostgreSQL database, then dropped."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import OperationalError

        self.name = f"bench_{uuid.uuid4().hex[:12]}"
        base = make_url(url)
        self.admin = create_engine(base, isolation_level="AUTOCOMMIT")
        try:
            with self.admin.connect() as connection:
                connection.execute(text(f'CREATE SCHEMA "{self.name}"'))
        except OperationalError as error:
            self.admin.dispose()
            raise BenchError(
                f"PostgreSQL at {base.render_as_string(hide_password=True)} "
                f"is unavailable: {error.orig}"
            ) from None
        self.url = base.update_query_dict(
            {"options": f"-csearch_path={self.name}"}
        ).render_as_string(hide_password=False)

    def drop(self) -> None:
        from sqlalchemy import text

        with self.admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{self.name}" CASCADE'))
        self.admin.dispose()


# ---------------------------------------------------------------------------
# Running sessions


def _session_ok(result, kind: str) -> str | None:
    """Return why a finished session does not count, or None."""
    if not (result.client_authenticated and result.server_authenticated):
        return "session ended without mutual authentication"
    if kind == "FOTA to Exec" and result.accepted_exec is None:
        return "session ended without an accepted Exec"
    return None


def run_phase(
    phase: Phase,
    phones: list[Phone],
    dm_url: str,
    server: DmServer,
    reuse_phones: bool,
    max_sessions: int,
    max_seconds: float,
) -> Phase:
    """Run sessions from ``phase.concurrency`` threads until a bound is hit.

    With ``reuse_phones`` a phone goes back to the pool after its session;
    otherwise each phone runs once and the phase ends when none is left.
    """
    idle: queue.SimpleQueue[Phone] = queue.SimpleQueue()
    for phone in phones:
        idle.put(phone)
    config = SessionConfig(encoding=phase.encoding)
    lock = threading.Lock()
    claimed = 0
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        nonlocal claimed
        latencies: list[float] = []
        transport = TimingTransport(latencies)
        while time.monotonic() < deadline:
            with lock:
                if claimed >= max_sessions:
                    break
                claimed += 1
            try:
                phone = idle.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            try:
                result = run_session(phone, dm_url, config, transport)
                problem = _session_ok(result, phase.kind)
            except SessionError as error:
                result, problem = None, f"{type(error).__name__}: {error}"
            elapsed = time.perf_counter() - started
            with lock:
                if problem is None:
                    phase.sessions += 1
                    phase.session_latencies.append(elapsed)
                    phase.messages += result.messages_sent
                else:
                    phase.errors.append(problem)
            if reuse_phones:
                idle.put(phone)
        with lock:
            phase.message_latencies.extend(latencies)

    peak_reset = reset_peak_rss(server.pid)
    server_cpu_before = cpu_seconds(server.pid)
    client_cpu_before = _own_cpu_seconds()
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(phase.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - started
    server_cpu_after = cpu_seconds(server.pid)
    if server_cpu_before is not None and server_cpu_after is not None:
        phase.server_cpu_seconds = server_cpu_after - server_cpu_before
    phase.client_cpu_seconds = _own_cpu_seconds() - client_cpu_before
    phase.server_peak_rss_kib = proc_status_kib(server.pid, "VmHWM")
    phase.peak_is_whole_life = not peak_reset
    return phase


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------
# Output


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def print_tables(phases: list[Phase]) -> None:
    print(
        "| backend | encoding | session | clients | sessions | errors | seconds "
        "| sessions/s | messages/s | messages/session | server CPU ms/session "
        "| client CPU ms/session | server peak RSS MiB |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in phases:
        per_session = max(p.sessions, 1)
        server_cpu = (
            "-"
            if p.server_cpu_seconds is None
            else f"{1000 * p.server_cpu_seconds / per_session:.1f}"
        )
        peak = (
            "-"
            if p.server_peak_rss_kib is None
            else f"{p.server_peak_rss_kib / KIB:.0f}"
        )
        if p.peak_is_whole_life and peak != "-":
            peak += " (process lifetime)"
        print(
            f"| {p.backend} | {p.encoding.value} | {p.kind} | {p.concurrency} "
            f"| {p.sessions} | {len(p.errors)} | {p.seconds:.1f} "
            f"| {p.sessions / p.seconds:.1f} | {p.messages / p.seconds:.1f} "
            f"| {p.messages / per_session:.2f} | {server_cpu} "
            f"| {1000 * p.client_cpu_seconds / per_session:.1f} | {peak} |"
        )
    print(
        "\n| backend | encoding | session | session p50 ms | p95 | p99 "
        "| message p50 ms | p95 | p99 |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for p in phases:
        s, m = p.session_latencies, p.message_latencies
        print(
            f"| {p.backend} | {p.encoding.value} | {p.kind} "
            f"| {_ms(percentile(s, 0.50))} | {_ms(percentile(s, 0.95))} "
            f"| {_ms(percentile(s, 0.99))} | {_ms(percentile(m, 0.50))} "
            f"| {_ms(percentile(m, 0.95))} | {_ms(percentile(m, 0.99))} |"
        )
    for p in phases:
        shown = sorted(set(p.errors))[:MAX_ERRORS_SHOWN]
        for error in shown:
            print(f"\nerror in {p.encoding.value} {p.kind}: {error}")


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure concurrent DM sessions against a real dmserver."
    )
    parser.add_argument(
        "--db",
        help="PostgreSQL URL; the run creates a schema there and drops it after "
        f"(for example {POSTGRES_EXAMPLE_URL}). Default: SQLite in a temporary "
        "data directory",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="client threads, each running one session at a time "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=DEFAULT_DEVICES,
        help="phones reused by the no-job phases; at least --concurrency "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=DEFAULT_SESSIONS,
        help="maximum sessions per no-job phase (default: %(default)s)",
    )
    parser.add_argument(
        "--job-sessions",
        type=int,
        default=DEFAULT_JOB_SESSIONS,
        help="phones with a queued job, so the maximum sessions, per FOTA phase "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help="maximum seconds per phase (default: %(default)s)",
    )
    parser.add_argument(
        "--encodings",
        default="xml,wbxml",
        help="comma-separated message encodings (default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory and server log",
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.devices < args.concurrency:
        parser.error(
            "--concurrency must be at least 1 and --devices at least --concurrency"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        encodings = [Encoding(name.strip()) for name in args.encodings.split(",")]
    except ValueError:
        print(
            f"sessions: --encodings takes xml and wbxml, got {args.encodings!r}",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="dmserver-bench-sessions-"))
    schema = None
    try:
        schema = PostgresSchema(args.db) if args.db else None
        db = schema.url if schema else None
        phases = run_benchmark(args, encodings, work, db)
    except BenchError as error:
        print(f"sessions: error: {error}; files in {work}", file=sys.stderr)
        return 1
    finally:
        if schema is not None:
            schema.drop()
    print_tables(phases)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\nkept {work}")
    return 1 if any(p.errors for p in phases) else 0


def run_benchmark(
    args: argparse.Namespace, encodings: list[Encoding], work: Path, db: str | None
) -> list[Phase]:
    data_dir = work / "data"
    db_url = db or f"sqlite:///{data_dir / 'dmserver.db'}"
    backend = "PostgreSQL" if db else "SQLite"

    # Step 1: the catalogue, the phones and their accounts on the server.
    dmserver_cli(data_dir, "keys", "init", db=db)
    for version, image in ((OLD_VERSION, OLD_IMAGE), (NEW_VERSION, NEW_IMAGE)):
        dmserver_cli(
            data_dir,
            "firmware",
            "add",
            "--model",
            MODEL,
            "--version",
            version,
            str(image),
            db=db,
        )
    cert = (data_dir / "keys" / "signing-cert.pem").read_bytes()
    print(f"sessions: creating phones in {work}", file=sys.stderr)
    pools: dict[tuple[Encoding, str], list[Phone]] = {}
    block = 0
    for encoding in encodings:
        for kind, count in (
            ("no job", args.devices),
            ("FOTA to Exec", args.job_sessions),
        ):
            pools[(encoding, kind)] = create_phones(
                work / "phones", block * ID_BLOCK, count, cert
            )
            block += 1
    all_phones = [phone for pool in pools.values() for phone in pool]
    import_devices(data_dir, db, all_phones, work / "devices.csv")
    for (encoding, kind), pool in pools.items():
        if kind == "FOTA to Exec":
            queue_jobs(db_url, [phone.device_id for phone in pool])

    # Step 2: the server, warmed up with a few sessions per encoding.
    print_machine()
    server = start_dmserver(data_dir, work / "server.log", db=db)
    phases: list[Phase] = []
    try:
        dm_url = f"{server.url}/dm"
        for encoding in encodings:
            warmup = Phase(backend, encoding, "no job", args.concurrency)
            run_phase(
                warmup,
                pools[(encoding, "no job")],
                dm_url,
                server,
                True,
                WARMUP_SESSIONS,
                args.seconds,
            )
            if warmup.errors:
                raise BenchError(f"warm-up sessions failed: {warmup.errors[0]}")

        # Step 3: the measured phases.
        for encoding in encodings:
            for kind, reuse, bound in (
                ("no job", True, args.sessions),
                ("FOTA to Exec", False, args.job_sessions),
            ):
                phase = Phase(backend, encoding, kind, args.concurrency)
                print(f"sessions: running {encoding.value} {kind}", file=sys.stderr)
                phases.append(
                    run_phase(
                        phase,
                        pools[(encoding, kind)],
                        dm_url,
                        server,
                        reuse,
                        bound,
                        args.seconds,
                    )
                )
        lifetime_peak = proc_status_kib(server.pid, "VmHWM")
    finally:
        server.stop()

    # Step 4: the server's view must match the clients' count of Execs.
    accepted = count_jobs(db_url).get("accepted", 0)
    exec_sessions = sum(p.sessions for p in phases if p.kind == "FOTA to Exec")
    print(
        f"- jobs in state accepted: {accepted}; FOTA sessions that ended with an "
        f"accepted Exec: {exec_sessions}"
    )
    if lifetime_peak is not None:
        print(f"- server peak RSS over its whole life: {lifetime_peak / KIB:.0f} MiB")
    print()
    if accepted != exec_sessions:
        raise BenchError(
            f"the server has {accepted} accepted jobs, the clients counted "
            f"{exec_sessions} accepted Execs"
        )
    return phases


if __name__ == "__main__":
    sys.exit(main())
