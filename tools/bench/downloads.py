"""Benchmark package downloads from dmserver against nginx serving the same file.

The benchmark starts ``dmserver serve`` on 127.0.0.1 with a fresh data
directory and stores the libcrypto 3.0.20 image from the firmware corpus as
the only version of a model. The job's package is therefore the signed full
image, about 4.7 MB. A simulated phone runs one DM session up to the Exec,
and the package URL comes from that session's PkgURL and download
descriptor, as a phone would find it. nginx (Debian package) serves the
same package file on another loopback port from a generated configuration.
It runs in the foreground with its pid file and logs in the temporary
directory, and is stopped at the end.

Client processes (not threads, so the clients are not limited to one core
by the GIL) send keep-alive requests for a bounded time and count, in three
scenarios:

- ``full``: GET of the whole package (200);
- ``resume``: ``Range: bytes=N-`` from a random offset, as a handset
  resumes a broken download (206);
- ``64 KiB ranges``: ``Range: bytes=A-B`` of 64 KiB at random offsets,
  which measures the cost per request (206).

The first response of each client is compared byte for byte with the
package file; every response's status and Content-Length are checked.

Example::

    .venv/bin/python -m tools.bench.downloads --clients 4 --seconds 10
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dmserver.fota.descriptor import parse_descriptor
from dmserver.sim.session import SessionConfig, run_session

from . import (
    DEFAULT_CORPUS,
    KIB,
    MIB,
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
from .sessions import MemoryPhone

IMAGE_FILE = "libcrypto-3.0.20.so"
MODEL = "FP-300"
VERSION = "3.0.20"
# The phone reports a version the catalogue has no delta from, so the
# server sends the full image.
PHONE_VERSION = "3.0.17"
DEVICE_ID = "IMEI:490154203237518"
CLIENT_PASSWORD = "bench-client-secret"
SERVER_PASSWORD = "bench-server-secret"

SCENARIOS = ("full", "resume", "64 KiB ranges")
SMALL_RANGE_SIZE = 64 * KIB
READ_BUFFER_SIZE = 1 * MIB
HTTP_TIMEOUT_SECONDS = 60.0
DEFAULT_CLIENTS = 4
DEFAULT_SECONDS = 10.0
DEFAULT_MAX_REQUESTS = 5000
DEFAULT_NGINX_WORKERS = 1
# A client stops after this many failed requests instead of retrying
# until its deadline.
MAX_CLIENT_ERRORS = 10
NGINX_START_TIMEOUT_SECONDS = 10
NGINX_STOP_TIMEOUT_SECONDS = 10
# Bytes per MB in the results: decimal, as network throughput is usually given.
MB = 1_000_000


@dataclass
class ClientResult:
    """Counts, latencies and errors of one client process in one scenario."""

    requests: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """Combined results of all clients for one server and scenario."""

    server: str
    scenario: str
    clients: int
    seconds: float
    requests: int
    bytes: int
    latencies: list[float]
    errors: list[str]
    server_cpu_seconds: float | None
    server_peak_rss_kib: int | None


# ---------------------------------------------------------------------------
# The client process


def _range_for(scenario: str, size: int, rng: random.Random) -> tuple[int, int] | None:
    """Return the inclusive byte range to request, or None for the whole file."""
    if scenario == "full":
        return None
    if scenario == "resume":
        start = rng.randrange(size)
        return start, size - 1
    start = rng.randrange(size - SMALL_RANGE_SIZE)
    return start, start + SMALL_RANGE_SIZE - 1


def client_worker(
    url: str,
    scenario: str,
    package_path: str,
    deadline: float,
    max_requests: int,
    seed: int,
) -> ClientResult:
    """Send requests over one keep-alive connection until a bound is hit.

    ``deadline`` is a ``time.time()`` value, shared by all clients.
    """
    expected = Path(package_path).read_bytes()
    size = len(expected)
    rng = random.Random(seed)
    result = ClientResult()
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=HTTP_TIMEOUT_SECONDS
    )
    buffer = bytearray(READ_BUFFER_SIZE)
    view = memoryview(buffer)
    verify = True
    while (
        result.requests < max_requests
        and len(result.errors) < MAX_CLIENT_ERRORS
        and time.time() < deadline
    ):
        byte_range = _range_for(scenario, size, rng)
        headers = {}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        start, end = byte_range or (0, size - 1)
        started = time.perf_counter()
        try:
            connection.request("GET", parts.path, headers=headers)
            response = connection.getresponse()
            received = bytearray() if verify else None
            total = 0
            while True:
                count = response.readinto(view)
                if not count:
                    break
                total += count
                if received is not None:
                    received += view[:count]
        except (OSError, http.client.HTTPException) as error:
            result.errors.append(f"{type(error).__name__}: {error}")
            connection.close()
            continue
        elapsed = time.perf_counter() - started
        expected_status = 200 if byte_range is None else 206
        if response.status != expected_status or total != end - start + 1:
            result.errors.append(
                f"HTTP {response.status} with {total} bytes "
                f"for {headers or 'no Range'}; "
                f"expected {expected_status} with {end - start + 1}"
            )
            continue
        if received is not None:
            if bytes(received) != expected[start : end + 1]:
                result.errors.append(
                    f"body of bytes {start}-{end} differs from the file"
                )
            verify = False
        result.requests += 1
        result.bytes += total
        result.latencies.append(elapsed)
    connection.close()
    return result


def _client_entry(arguments) -> ClientResult:
    return client_worker(*arguments)


def process_tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` and its direct children (nginx's workers)."""
    total = cpu_seconds(pid)
    if total is None:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Field 4 of /proc/PID/stat, the parent pid, is index 1 after ")".
        if int(fields[1]) == pid:
            total += cpu_seconds(int(entry)) or 0.0
    return total


def run_cell(
    pool,
    server_name: str,
    server_pid: int,
    url: str,
    scenario: str,
    package_path: Path,
    clients: int,
    seconds: float,
    max_requests: int,
    measure_rss: bool,
) -> Cell:
    per_client = max(1, max_requests // clients)
    deadline = time.time() + seconds
    peak_reset = measure_rss and reset_peak_rss(server_pid)
    cpu_before = process_tree_cpu_seconds(server_pid)
    started = time.perf_counter()
    work = [
        (url, scenario, str(package_path), deadline, per_client, seed)
        for seed in range(clients)
    ]
    results = pool.map(_client_entry, work)
    wall = time.perf_counter() - started
    cpu_after = process_tree_cpu_seconds(server_pid)
    return Cell(
        server=server_name,
        scenario=scenario,
        clients=clients,
        seconds=wall,
        requests=sum(r.requests for r in results),
        bytes=sum(r.bytes for r in results),
        latencies=[value for r in results for value in r.latencies],
        errors=[error for r in results for error in r.errors],
        server_cpu_seconds=(
            cpu_after - cpu_before
            if cpu_before is not None and cpu_after is not None
            else None
        ),
        server_peak_rss_kib=(
            proc_status_kib(server_pid, "VmHWM") if peak_reset else None
        ),
    )


# ---------------------------------------------------------------------------
# dmserver with one job whose package is the full image


def prepare_dmserver(corpus: Path, work: Path) -> tuple[DmServer, str, Path]:
    """Start dmserver with a delivered job; return it, the package URL and file.

    Raises:
        BenchError: the image is missing, a command failed, or the session
            did not deliver the job.
    """
    image = corpus / IMAGE_FILE
    if not image.is_file():
        raise BenchError(
            f"{IMAGE_FILE} not found in {corpus}; pass --corpus DIR naming the "
            "firmware corpus directory"
        )
    data_dir = work / "data"
    dmserver_cli(data_dir, "keys", "init")
    dmserver_cli(
        data_dir, "firmware", "add", "--model", MODEL, "--version", VERSION, str(image)
    )
    dmserver_cli(
        data_dir,
        "device",
        "add",
        DEVICE_ID,
        "--client-password",
        CLIENT_PASSWORD,
        "--server-password",
        SERVER_PASSWORD,
        "--model",
        MODEL,
    )
    dmserver_cli(data_dir, "job", "fota", DEVICE_ID, "--version", VERSION)
    server = start_dmserver(data_dir, work / "dmserver.log")
    try:
        phone = MemoryPhone.create(
            work / "phone",
            device_id=DEVICE_ID,
            model=MODEL,
            manufacturer="Example Handsets",
            firmware_version=PHONE_VERSION,
            firmware=b"\0" * 16,
            cert=data_dir / "keys" / "signing-cert.pem",
            client_password=CLIENT_PASSWORD,
            server_password=SERVER_PASSWORD,
        )
        result = run_session(phone, f"{server.url}/dm", SessionConfig())
        if result.accepted_exec is None:
            raise BenchError("the DM session ended without delivering the FOTA job")
        descriptor_url = urlsplit(
            phone.tree.value(f"{phone.fumo_node}/DownloadAndUpdate/PkgURL")
        )
        connection = http.client.HTTPConnection(
            descriptor_url.hostname, descriptor_url.port
        )
        connection.request("GET", descriptor_url.path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        if response.status != 200:
            raise BenchError(
                f"GET {descriptor_url.geturl()} returned HTTP {response.status}"
            )
        descriptor = parse_descriptor(body)
    except BaseException:
        server.stop()
        raise
    packages = sorted((data_dir / "packages").rglob("full__*.pkg"))
    if len(packages) != 1 or packages[0].stat().st_size != descriptor.size:
        server.stop()
        raise BenchError(
            f"expected one full package of {descriptor.size} bytes, found {packages}"
        )
    return server, descriptor.object_uri, packages[0]


# ---------------------------------------------------------------------------
# nginx


@dataclass
class Nginx:
    process: subprocess.Popen
    url: str
    version: str

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGQUIT is nginx's graceful shutdown: workers finish and exit.
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=NGINX_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# tcp_nopush stays off. With it on, nginx 1.22.1 sent each 64 KiB range
# response on a keep-alive connection about 40 ms late on the 2-core test
# machine (53 requests/s instead of about 15,000).
# NOTE: the 40 ms looks like TCP_CORK meeting delayed ACKs; not verified.
NGINX_CONFIG = """\
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush off;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def start_nginx(package: Path, work: Path, workers: int) -> Nginx:
    """Serve ``package`` as /<name> from nginx on a free loopback port.

    Raises:
        BenchError: nginx is not installed or did not start.
    """
    binary = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if os.path.exists(path)), None
    )
    if binary is None:
        raise BenchError(
            "nginx not found; install the Debian package with: apt-get install nginx"
        )
    version = subprocess.run(
        [binary, "-v"], capture_output=True, text=True
    ).stderr.strip()
    prefix = work / "nginx"
    root = prefix / "root"
    root.mkdir(parents=True)
    os.link(package, root / package.name)
    # nginx started as root runs its workers as "nobody", which must be able
    # to reach the file through the temporary directories.
    for directory in (work, prefix, root):
        directory.chmod(0o755)
    (root / package.name).chmod(0o644)
    port = _free_port()
    config = prefix / "nginx.conf"
    config.write_text(
        NGINX_CONFIG.format(workers=workers, prefix=prefix, port=port, root=root)
    )
    log = open(prefix / "stderr.log", "wb")
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
        stdout=log,
        stderr=log,
    )
    log.close()
    deadline = time.monotonic() + NGINX_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Nginx(process, f"http://127.0.0.1:{port}/{package.name}", version)
        except OSError:
            time.sleep(0.1)
    if process.poll() is None:
        process.kill()
        process.wait()
    raise BenchError(f"nginx did not start; see {prefix / 'error.log'}")


# ---------------------------------------------------------------------------
# Output


def print_table(cells: list[Cell]) -> None:
    print(
        "| server | scenario | clients | requests | errors | seconds | MB/s "
        "| requests/s | latency p50 ms | p95 | p99 | server CPU s "
        "| server peak RSS MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        cpu = "-" if c.server_cpu_seconds is None else f"{c.server_cpu_seconds:.1f}"
        rss = (
            "-"
            if c.server_peak_rss_kib is None
            else f"{c.server_peak_rss_kib / KIB:.0f}"
        )
        print(
            f"| {c.server} | {c.scenario} | {c.clients} | {c.requests} "
            f"| {len(c.errors)} | {c.seconds:.1f} | {c.bytes / MB / c.seconds:.1f} "
            f"| {c.requests / c.seconds:.1f} "
            f"| {1000 * percentile(c.latencies, 0.5):.1f} "
            f"| {1000 * percentile(c.latencies, 0.95):.1f} "
            f"| {1000 * percentile(c.latencies, 0.99):.1f} | {cpu} | {rss} |"
        )
    for c in cells:
        for error in sorted(set(c.errors))[:3]:
            print(f"\nerror from {c.server} {c.scenario}: {error}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure GET /dl/pkg/<token> of dmserver against nginx."
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help=f"directory with the firmware corpus, for {IMAGE_FILE} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=DEFAULT_CLIENTS,
        help="concurrent client processes (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help="maximum seconds per server and scenario (default: %(default)s)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=DEFAULT_MAX_REQUESTS,
        help="maximum requests per server and scenario (default: %(default)s)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios from {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--nginx-workers",
        type=int,
        default=DEFAULT_NGINX_WORKERS,
        help="nginx worker processes; dmserver serves from one process "
        "(default: %(default)s)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="measure dmserver only")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.max_requests < 1 or args.nginx_workers < 1:
        parser.error("--clients, --max-requests and --nginx-workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        print(
            f"downloads: unknown scenario(s) {unknown}; choose from {SCENARIOS}",
            file=sys.stderr,
        )
        return 2
    corpus = args.corpus.resolve()
    if not corpus.is_dir():
        print(
            f"downloads: error: firmware corpus directory {corpus} not found; "
            "pass --corpus DIR naming the directory with the corpus images",
            file=sys.stderr,
        )
        return 1
    work = Path(tempfile.mkdtemp(prefix="dmserver-bench-downloads-"))
    dmserver = nginx = None
    cells: list[Cell] = []
    try:
        dmserver, package_url, package = prepare_dmserver(corpus, work)
        servers = [("dmserver", dmserver.pid, package_url, True)]
        if not args.no_nginx:
            nginx = start_nginx(package, work, args.nginx_workers)
            servers.append(("nginx", nginx.process.pid, nginx.url, False))
        print_machine()
        print(
            f"- package: {package.stat().st_size:,} bytes, sha256 "
            f"{hashlib.sha256(package.read_bytes()).hexdigest()}"
        )
        if nginx is not None:
            print(
                f"- {nginx.version}, {args.nginx_workers} worker process(es), "
                "sendfile on"
            )
        print()
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.clients) as pool:
            for scenario in scenarios:
                for name, pid, url, own in servers:
                    print(f"downloads: {name} {scenario}", file=sys.stderr)
                    cells.append(
                        run_cell(
                            pool,
                            name,
                            pid,
                            url,
                            scenario,
                            package,
                            args.clients,
                            args.seconds,
                            args.max_requests,
                            own,
                        )
                    )
    except BenchError as error:
        print(f"downloads: error: {error}; files in {work}", file=sys.stderr)
        return 1
    finally:
        if nginx is not None:
            nginx.stop()
        if dmserver is not None:
            dmserver.stop()
    print_table(cells)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if any(c.errors for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
