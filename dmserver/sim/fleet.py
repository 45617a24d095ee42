"""Fleet mode: many simulated phones against one server, concurrently.

``python -m dmserver.sim.fleet`` creates N phones (one state directory
each, under ``--state-root``) spread over the firmware images given with
``--firmware VERSION=IMAGE[:WEIGHT]``, provisions them through the
northbound API, and then stands in for the push gateway: it polls
``GET /api/v1/jobs?state=queued`` and runs every phone that has a queued
job (a DM session, the download and install, and the session that reports
the FUMO result), several phones at a time in threads. It stops when no
job was queued or running for ``--idle-seconds``, or after
``--max-seconds``, and prints a summary::

    fleet: 100 phones, 100 runs, 212 sessions in 41.3 s
    fleet: reported 200 x95, 402 x5; 0 errors
    fleet: firmware 2.0 x95, 1.0 x5

Failures are injected per phone with ``--fail CODE:SHARE`` (for example
``--fail 402:0.05``): the phone is chosen by a hash of its device id, so
the same phones fail in every run. The codes the simulator can produce
are ``INJECTABLE_CODES``.

The Python API (:class:`Fleet`, :class:`FleetRunner`) is what
``tools/demo_campaign.py`` uses.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode, urlsplit

from .download import UpdateOptions
from .phone import Phone
from .session import RunOptions, SessionError, run_until_idle

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 16
DEFAULT_POLL_SECONDS = 0.5
DEFAULT_IDLE_SECONDS = 10.0
DEFAULT_MAX_SECONDS = 3600.0
# A phone whose run raised an error (server busy, connection reset) is run
# again after this many seconds; its saved state resumes the work.
ERROR_RETRY_SECONDS = 2.0
API_PAGE_SIZE = 500
API_TIMEOUT_SECONDS = 60.0
IMPORT_CHUNK = 1000
# FUMO result codes the simulator can be made to report, and how.
INJECTABLE_CODES = {
    402: "corrupt_download",  # a flipped payload byte: Corrupted Firmware Update Package
    403: "modify_firmware",  # a flipped image byte: Device Mismatch
    404: "bad_signature",  # a flipped signature byte: Failed Package Validation
    501: "no_storage",  # no free storage: Download Fails, Device Out of Memory
}


def luhn_digit(digits: str) -> str:
    """Return the Luhn check digit for ``digits`` (the last digit of an IMEI)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def fleet_device_id(index: int, base: int = 35_000_000_000_000) -> str:
    """Return the IMEI LocURI of the ``index``-th phone of a fleet."""
    body = f"{base + index:014d}"
    return f"IMEI:{body}{luhn_digit(body)}"


def share_hash(device_id: str, salt: str = "") -> float:
    """Return a stable number in [0, 1) for a device, to pick failing phones."""
    digest = hashlib.sha256(f"{salt}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class FirmwareShare:
    version: str
    image: Path
    weight: float = 1.0


@dataclass
class FleetSpec:
    """Description of the phones of a fleet."""

    count: int
    model: str
    manufacturer: str
    firmware: list[FirmwareShare]
    cert: Path
    state_root: Path
    id_base: int = 35_000_000_000_000
    group: str | None = None
    timezone: str | None = None

    def password(self, device_id: str, kind: str) -> str:
        return f"{kind}-{hashlib.sha256(device_id.encode()).hexdigest()[:12]}"


@dataclass
class FleetPhone:
    device_id: str
    state_dir: Path
    initial_version: str
    phone: Phone


class Fleet:
    """The phones of a fleet, created on disk once and loaded after."""

    def __init__(self, spec: FleetSpec):
        if spec.count < 1:
            raise ValueError(f"a fleet needs at least 1 phone, got {spec.count}")
        if not spec.firmware:
            raise ValueError("a fleet needs at least one firmware image")
        self.spec = spec
        self.phones: list[FleetPhone] = []

    def version_for(self, index: int) -> FirmwareShare:
        """Spread the versions by weight in a fixed, interleaved order."""
        total = sum(item.weight for item in self.spec.firmware)
        position = ((index * 0.6180339887) % 1.0) * total
        for item in self.spec.firmware:
            if position < item.weight:
                return item
            position -= item.weight
        return self.spec.firmware[-1]

    def create(self, progress: Callable[[str], None] = lambda line: None) -> list[FleetPhone]:
        """Create the phones that do not exist yet and load the others."""
        images = {item.version: item.image.read_bytes() for item in self.spec.firmware}
        cert = self.spec.cert.read_bytes()
        self.phones = []
        for index in range(self.spec.count):
            device_id = fleet_device_id(index, self.spec.id_base)
            state_dir = self.spec.state_root / device_id.replace(":", "_")
            share = self.version_for(index)
            if Phone.exists(state_dir):
                phone = Phone.load(state_dir)
            else:
                phone = Phone.create(
                    state_dir,
                    device_id=device_id,
                    model=self.spec.model,
                    manufacturer=self.spec.manufacturer,
                    firmware_version=share.version,
                    firmware=images[share.version],
                    cert=cert,
                    client_password=self.spec.password(device_id, "c"),
                    server_password=self.spec.password(device_id, "s"),
                )
            self.phones.append(FleetPhone(device_id, state_dir, share.version, phone))
            if (index + 1) % 250 == 0:
                progress(f"{index + 1}/{self.spec.count} phones ready")
        return self.phones

    def provisioning_rows(self) -> list[dict]:
        rows = []
        for item in self.phones:
            row = {
                "device_id": item.device_id,
                "client_password": self.spec.password(item.device_id, "c"),
                "server_password": self.spec.password(item.device_id, "s"),
                "model": self.spec.model,
                "manufacturer": self.spec.manufacturer,
                "firmware_version": item.initial_version,
            }
            if self.spec.group:
                row["group"] = self.spec.group
            if self.spec.timezone:
                row["timezone"] = self.spec.timezone
            rows.append(row)
        return rows


class ApiError(RuntimeError):
    pass


class ApiClient:
    """A small client of the server's ``/api/v1`` (standard library only)."""

    def __init__(self, base_url: str, key: str):
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"server URL must be http://host:port, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.key = key

    def request(self, method: str, path: str, body=None, query: dict | None = None):
        url = "/api/v1" + path + (f"?{urlencode(query)}" if query else "")
        connection = http.client.HTTPConnection(self.host, self.port, timeout=API_TIMEOUT_SECONDS)
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, url, body=data, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except OSError as error:
            raise ApiError(f"{method} {url} failed: {error}") from None
        finally:
            connection.close()
        decoded = json.loads(payload) if payload else None
        if response.status >= 400:
            message = (decoded or {}).get("error", {}).get("message", payload[:200])
            raise ApiError(f"{method} {url} returned HTTP {response.status}: {message}")
        return decoded

    def pages(self, path: str, query: dict | None = None):
        after = 0
        while True:
            page = self.request("GET", path, query={**(query or {}), "limit": API_PAGE_SIZE, "after": after})
            yield from page["items"]
            if page["next_after"] is None:
                return
            after = page["next_after"]

    def import_devices(self, rows: list[dict]) -> int:
        created = 0
        for start in range(0, len(rows), IMPORT_CHUNK):
            created += self.request("POST", "/devices", {"devices": rows[start:start + IMPORT_CHUNK]})["created"]
        return created

    def queued_devices(self, campaign_id: int | None = None) -> list[str]:
        query = {"state": "queued"}
        if campaign_id is not None:
            query["campaign_id"] = campaign_id
        return [job["device_id"] for job in self.pages("/jobs", query)]


class FailurePlan:
    """Injected failures: which phones report one, and with which code."""

    def __init__(self, shares: dict[int, float] | None = None, salt: str = "fleet"):
        for code in (shares or {}):
            if code not in INJECTABLE_CODES:
                raise ValueError(f"cannot inject {code}; the simulator can report {sorted(INJECTABLE_CODES)}")
        self.shares = dict(shares or {})
        self.salt = salt
        self.explicit: dict[str, int] = {}
        self._lock = threading.Lock()

    def set_devices(self, device_ids, code: int) -> None:
        if code not in INJECTABLE_CODES:
            raise ValueError(f"cannot inject {code}; the simulator can report {sorted(INJECTABLE_CODES)}")
        with self._lock:
            for device_id in device_ids:
                self.explicit[device_id] = code

    def clear(self) -> None:
        with self._lock:
            self.explicit.clear()
            self.shares.clear()

    def code_for(self, device_id: str) -> int | None:
        with self._lock:
            if device_id in self.explicit:
                return self.explicit[device_id]
            position = share_hash(device_id, self.salt)
            for code, share in sorted(self.shares.items()):
                if position < share:
                    return code
                position -= share
        return None


@dataclass
class FleetStats:
    runs: int = 0
    sessions: int = 0
    errors: int = 0
    reported: Counter = field(default_factory=Counter)
    last_errors: list[str] = field(default_factory=list)


class FleetRunner:
    """Runs phones with queued jobs in a thread pool."""

    def __init__(self, phones: list[FleetPhone], dm_url: str, *, workers: int = DEFAULT_WORKERS,
                 failures: FailurePlan | None = None):
        self.by_id = {item.device_id: item for item in phones}
        self.dm_url = dm_url
        self.failures = failures or FailurePlan()
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phone")
        self.running: dict[str, Future] = {}
        self.retry_at: dict[str, float] = {}
        self.stats = FleetStats()
        self._lock = threading.Lock()

    def _options(self, code: int | None) -> RunOptions:
        update = UpdateOptions()
        if code in (402, 403, 404):
            setattr(update, INJECTABLE_CODES[code], True)
        return RunOptions(update=update)

    def run_phone(self, device_id: str) -> None:
        item = self.by_id[device_id]
        code = self.failures.code_for(device_id)
        phone = item.phone
        saved_storage = None
        if code == 501:
            saved_storage = phone.free_storage
            phone.free_storage = 0
        try:
            report = run_until_idle(phone, self.dm_url, self._options(code))
        except (SessionError, OSError) as error:
            with self._lock:
                self.stats.errors += 1
                self.stats.last_errors = (self.stats.last_errors + [f"{device_id}: {error}"])[-5:]
                self.retry_at[device_id] = time.monotonic() + ERROR_RETRY_SECONDS
            logger.warning("phone %s failed: %s; retried in %.0f s", device_id, error, ERROR_RETRY_SECONDS)
            return
        finally:
            if saved_storage is not None:
                phone.free_storage = saved_storage
                phone.save()
        with self._lock:
            self.stats.runs += 1
            self.stats.sessions += report.sessions
            self.stats.reported.update(report.reported_codes)

    def submit(self, device_ids) -> int:
        """Start each listed phone that is in the fleet and not running; return
        how many were started."""
        started = 0
        with self._lock:
            for device_id in device_ids:
                if device_id not in self.by_id or device_id in self.running:
                    continue
                self.retry_at.pop(device_id, None)
                self.running[device_id] = self.executor.submit(self.run_phone, device_id)
                started += 1
        return started

    def reap(self) -> int:
        """Forget finished runs and restart failed ones that are due; return
        how many phones are still running."""
        now = time.monotonic()
        with self._lock:
            for device_id, future in list(self.running.items()):
                if future.done():
                    del self.running[device_id]
                    error = future.exception()
                    if error is not None:
                        logger.error("phone %s raised %r", device_id, error)
                        self.stats.errors += 1
            due = [d for d, at in self.retry_at.items() if at <= now and d not in self.running]
        if due:
            self.submit(due)
        with self._lock:
            return len(self.running) + len(self.retry_at)

    def serve(self, api: ApiClient, *, campaign_id: int | None = None, until: Callable[[], bool] | None = None,
              poll_seconds: float = DEFAULT_POLL_SECONDS, idle_seconds: float = DEFAULT_IDLE_SECONDS,
              max_seconds: float = DEFAULT_MAX_SECONDS) -> bool:
        """Run phones with queued jobs until ``until()`` is true (return True),
        or nothing was queued or running for ``idle_seconds``, or
        ``max_seconds`` passed (return False)."""
        start = time.monotonic()
        idle_since = time.monotonic()
        while True:
            if until is not None and until():
                return True
            if time.monotonic() - start > max_seconds:
                return False
            queued = api.queued_devices(campaign_id)
            self.submit(queued)
            busy = self.reap()
            if queued or busy:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_seconds:
                return until is None
            time.sleep(poll_seconds)

    def wait_idle(self) -> None:
        while self.reap():
            time.sleep(0.1)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def summary_lines(fleet: Fleet, stats: FleetStats, seconds: float) -> list[str]:
    codes = ", ".join(f"{code} x{count}" for code, count in sorted(stats.reported.items())) or "none"
    versions = Counter(item.phone.firmware_version for item in fleet.phones)
    spread = ", ".join(f"{version} x{count}" for version, count in versions.most_common())
    lines = [
        f"fleet: {len(fleet.phones)} phones, {stats.runs} runs, {stats.sessions} sessions in {seconds:.1f} s",
        f"fleet: reported {codes}; {stats.errors} errors",
        f"fleet: firmware {spread}",
    ]
    lines += [f"fleet: error {text}" for text in stats.last_errors]
    return lines


# ---------------------------------------------------------------------------
# Command line


def _firmware(text: str) -> FirmwareShare:
    version, _, rest = text.partition("=")
    if not version or not rest:
        raise argparse.ArgumentTypeError(f"expected VERSION=IMAGE[:WEIGHT], got {text!r}")
    image, _, weight = rest.rpartition(":") if ":" in rest else (rest, "", "")
    path = Path(image or rest)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"firmware image {path} not found")
    try:
        return FirmwareShare(version, path, float(weight) if weight else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight {weight!r} is not a number") from None


def _failure(text: str) -> tuple[int, float]:
    code, _, share = text.partition(":")
    try:
        value = (int(code), float(share))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CODE:SHARE such as 402:0.05, got {text!r}") from None
    if value[0] not in INJECTABLE_CODES:
        raise argparse.ArgumentTypeError(f"cannot inject {value[0]}; choose from {sorted(INJECTABLE_CODES)}")
    if not 0 <= value[1] <= 1:
        raise argparse.ArgumentTypeError(f"share must be 0 to 1, got {share}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dmserver.sim.fleet",
        description="Run many simulated phones against a dmserver, standing in for the push gateway.",
    )
    parser.add_argument("--devices", type=int, required=True, help="number of phones")
    parser.add_argument("--server", required=True, help="server base URL, e.g. http://127.0.0.1:8700")
    parser.add_argument("--api-key", required=True, help="northbound API key (dmserver apikey create)")
    parser.add_argument("--state-root", required=True, help="directory for the phones' state directories")
    parser.add_argument("--firmware", type=_firmware, action="append", required=True,
                        help="VERSION=IMAGE[:WEIGHT], repeatable; phones are spread by weight")
    parser.add_argument("--cert", required=True, help="certificate of the package signing key")
    parser.add_argument("--model", required=True)
    parser.add_argument("--manufacturer", default="Example")
    parser.add_argument("--group", help="device group sent when provisioning")
    parser.add_argument("--timezone", help="IANA time zone sent when provisioning")
    parser.add_argument("--id-base", type=int, default=35_000_000_000_000, help="first 14 IMEI digits as a number")
    parser.add_argument("--provision", action="store_true", help="import the phones through POST /api/v1/devices first")
    parser.add_argument("--campaign", type=int, help="run only phones with a queued job of this campaign")
    parser.add_argument("--fail", type=_failure, action="append", default=[],
                        help=f"CODE:SHARE of phones that report a failure; codes {sorted(INJECTABLE_CODES)}")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="phones run at once")
    parser.add_argument("--idle-seconds", type=float, default=DEFAULT_IDLE_SECONDS,
                        help="stop after this many seconds with no queued or running job")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="stop after this many seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    spec = FleetSpec(
        count=args.devices, model=args.model, manufacturer=args.manufacturer, firmware=args.firmware,
        cert=Path(args.cert), state_root=Path(args.state_root), id_base=args.id_base,
        group=args.group, timezone=args.timezone,
    )
    fleet = Fleet(spec)
    started = time.monotonic()
    fleet.create(progress=lambda line: print(f"fleet: {line}", flush=True))
    api = ApiClient(args.server, args.api_key)
    try:
        if args.provision:
            print(f"fleet: {api.import_devices(fleet.provisioning_rows())} devices provisioned", flush=True)
        failures = FailurePlan(dict(args.fail))
        runner = FleetRunner(fleet.phones, args.server.rstrip("/") + "/dm", workers=args.workers, failures=failures)
        try:
            runner.serve(api, campaign_id=args.campaign, idle_seconds=args.idle_seconds, max_seconds=args.max_seconds)
            runner.wait_idle()
        finally:
            runner.close()
    except ApiError as error:
        print(f"fleet: error: {error}", file=sys.stderr)
        return 1
    for line in summary_lines(fleet, runner.stats, time.monotonic() - started):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
