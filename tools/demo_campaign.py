#!/usr/bin/env python3
"""Run a staged rollout to 1,000 simulated phones: `make demo-campaign`.

Steps:

1. A temporary data directory with a signing key and four firmware builds
   of one model: the two libexpat builds from fixtures/firmware
   (2.5.0-1+deb12u2 and +deb12u5) and two builds derived here from
   +deb12u5 by rewriting a 4 KiB build-stamp region (+fp1 and +fp2). The
   derived builds stand in for carrier builds; they are not real firmware.
   The target +fp2 is stored first, so the campaign itself has to build the
   three deltas (from +deb12u2, +deb12u5 and +fp1) in its process pool.
2. dmserver on 127.0.0.1 (SQLite in the data directory, or ``--db`` /
   ``$DB``: a PostgreSQL URL, in which the demo uses a throwaway schema).
3. 1,000 phones (dmserver.sim.fleet) on the three older builds, imported
   through POST /api/v1/devices.
4. A campaign to +fp2 with waves 1%, 10%, 100% and an error threshold of
   3%. In wave 2, 5% of the devices are made to report 402 (Corrupted
   Firmware Update Package); the campaign halts by itself.
5. The failures are cleared, the failed devices retried, the campaign
   resumed, and it completes.

The last line is
``demo-campaign: halted in wave 2 at <x>% failures; resumed; <n>/<n> updated``
where the second <n> counts the campaign's devices and the first counts
phones whose image now has the SHA-256 of the target build. The exit
status is 0 only when they are equal and the campaign halted in wave 2.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dmserver.sim.fleet import (  # noqa: E402
    ApiClient,
    FailurePlan,
    Fleet,
    FleetRunner,
    FleetSpec,
    FirmwareShare,
    summary_lines,
)

FIRMWARE = ROOT / "fixtures" / "firmware"
U2 = ("2.5.0-1+deb12u2", FIRMWARE / "libexpat-2.5.0-1+deb12u2.so")
U5 = ("2.5.0-1+deb12u5", FIRMWARE / "libexpat-2.5.0-1+deb12u5.so")
FP1 = "2.5.0-1+deb12u5+fp1"
FP2 = "2.5.0-1+deb12u5+fp2"
MODEL = "FP-100"
MANUFACTURER = "Example Handsets"
DEVICES = 1000
WAVES = ["1%", "10%", "100%"]
ERROR_THRESHOLD = 0.03
FAILING_WAVE = 2
FAILING_SHARE = 0.05
FAILURE_CODE = 402
# Offset and size of the region rewritten in the derived builds.
STAMP_OFFSET = 65536
STAMP_SIZE = 4096
SERVER_START_TIMEOUT = 60
PREPARE_TIMEOUT = 300
PHASE_TIMEOUT = 1200
PROGRESS_SECONDS = 5.0


def step(text: str) -> None:
    print(f"demo-campaign: {text}", flush=True)


def derived_build(base: bytes, name: str) -> bytes:
    """Return ``base`` with a deterministic build stamp written over a region."""
    stamp = hashlib.sha256(name.encode()).digest()
    region = (f"BUILD {name} ".encode() + stamp * (STAMP_SIZE // len(stamp)))[:STAMP_SIZE]
    return base[:STAMP_OFFSET] + region + base[STAMP_OFFSET + STAMP_SIZE:]


def sqlalchemy_url(url: str) -> str:
    """Accept postgresql:// as well as SQLAlchemy's postgresql+psycopg://."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def create_schema(url: str) -> tuple[str, str]:
    """Create a throwaway schema; return the URL that uses it and its name."""
    from sqlalchemy import create_engine, text

    name = f"demo_{uuid.uuid4().hex[:10]}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    engine.dispose()
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{name}", name


def drop_schema(url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    engine.dispose()


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def prepare_catalogue(data_dir: Path, db_url: str, images: dict[str, Path]) -> None:
    from dmserver.fota import catalogue, signing
    from dmserver.store.db import Database

    signing.init_keys(data_dir / "keys")
    db = Database(db_url)
    db.upgrade()
    # The target first: the catalogue builds deltas only towards the build
    # being added, so the campaign must build the deltas it needs.
    for version in (FP2, U2[0], U5[0], FP1):
        db.call(lambda s, v=version: catalogue.add_firmware(s, data_dir, MODEL, v, images[v], now=datetime.now(timezone.utc)))
    api_key = db.call(lambda s: _create_key(s))
    db.dispose()
    return api_key


def _create_key(session) -> str:
    from dmserver.web.api import create_api_key

    return create_api_key(session, "demo-campaign", now())[1]


def start_server(data_dir: Path, db_url: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "DMSERVER_CAMPAIGN_TICK": "0.5", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dmserver.cli", "--data-dir", str(data_dir), "--db", db_url,
               "serve", "--host", "127.0.0.1", "--port", "0"]
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=ROOT, env=env)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    line = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if b"listening on" in line or not line:
            break
    if b"listening on" not in line:
        process.kill()
        raise SystemExit(f"demo-campaign: server did not start; see {log_path}")
    return process, line.decode().split("listening on ", 1)[1].split()[0]


def progress_line(progress: dict) -> str:
    parts = []
    for wave in progress["waves"]:
        totals = wave["totals"]
        parts.append(
            f"wave {wave['number']} {wave['state']} {totals['succeeded']}/{totals['members']} ok"
            f" {totals['failed']} failed {totals['in_flight']} in flight"
        )
    return f"{progress['state']}: " + "; ".join(parts)


def wave_members(db_url: str, campaign_id: int, wave: int) -> list[str]:
    """Device ids of one wave, in rank order (read from the database)."""
    from sqlalchemy import select

    from dmserver.store.db import Database
    from dmserver.store.models import CampaignDevice, Device

    db = Database(db_url)
    try:
        return db.call(
            lambda s: list(
                s.scalars(
                    select(Device.device_id)
                    .join(CampaignDevice, CampaignDevice.device_pk == Device.id)
                    .where(CampaignDevice.campaign_id == campaign_id, CampaignDevice.wave == wave)
                    .order_by(CampaignDevice.rank)
                ).all()
            )
        )
    finally:
        db.dispose()


class Watch:
    """Polls campaign progress and prints it every few seconds."""

    def __init__(self, api: ApiClient, campaign_id: int):
        self.api = api
        self.campaign_id = campaign_id
        self.last_print = 0.0
        self.progress = None

    def state_in(self, states: set[str]) -> bool:
        self.progress = self.api.request("GET", f"/campaigns/{self.campaign_id}/progress")
        if time.monotonic() - self.last_print >= PROGRESS_SECONDS:
            step(progress_line(self.progress))
            self.last_print = time.monotonic()
        return self.progress["state"] in states


def run(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="dmserver-demo-campaign-"))
    data_dir = work / "data"
    data_dir.mkdir()
    schema = None
    base_url = sqlalchemy_url(args.db) if args.db else None
    if base_url and base_url.startswith("postgresql"):
        db_url, schema = create_schema(base_url)
        step(f"database: PostgreSQL, schema {schema}")
    else:
        db_url = base_url or f"sqlite:///{data_dir / 'dmserver.db'}"
        step(f"database: {db_url.split(':', 1)[0]}")
    server = None
    runner = None
    started = time.monotonic()
    try:
        images = {U2[0]: U2[1], U5[0]: U5[1]}
        for version in (FP1, FP2):
            path = work / f"{version}.img"
            path.write_bytes(derived_build(U5[1].read_bytes(), version))
            images[version] = path
        step(f"firmware {', '.join(images)} of {MODEL}")
        api_key = prepare_catalogue(data_dir, db_url, images)
        server, url = start_server(data_dir, db_url, work / "server.log")
        step(f"server on {url}; log {work / 'server.log'}")
        api = ApiClient(url, api_key)

        spec = FleetSpec(
            count=args.devices, model=MODEL, manufacturer=MANUFACTURER,
            firmware=[FirmwareShare(U2[0], images[U2[0]], 4), FirmwareShare(U5[0], images[U5[0]], 4),
                      FirmwareShare(FP1, images[FP1], 2)],
            cert=data_dir / "keys" / "signing-cert.pem", state_root=work / "phones",
        )
        fleet = Fleet(spec)
        fleet.create(progress=step)
        step(f"{api.import_devices(fleet.provisioning_rows())} devices imported through the API")

        campaign = api.request("POST", "/campaigns", {
            "name": "FP-100 +fp2 rollout", "target_version": FP2, "selection": {"models": [MODEL]},
            "waves": WAVES, "error_threshold": ERROR_THRESHOLD, "success_threshold": 0.95, "min_sample": 10,
            "limits": {"max_concurrent": args.max_concurrent},
        })
        campaign_id = campaign["id"]
        api.request("POST", f"/campaigns/{campaign_id}/start")
        deadline = time.monotonic() + PREPARE_TIMEOUT
        while True:
            current = api.request("GET", f"/campaigns/{campaign_id}")
            if current["state"] != "preparing":
                break
            if time.monotonic() > deadline:
                raise SystemExit("demo-campaign: campaign preparation timed out")
            time.sleep(0.5)
        if current["state"] != "running":
            raise SystemExit(f"demo-campaign: campaign did not start: {current['preparation']}")
        step(f"campaign {campaign_id} running; deltas built: {current['preparation']}")
        deltas = [p for f in api.request("GET", "/firmware", query={"model": MODEL})["items"]
                  if f["version"] == FP2 for p in f["packages"]]
        step("packages to " + FP2 + ": " + ", ".join(
            f"{p['payload_type']} from {p['source_version'] or 'any'} {p['size']} bytes" for p in deltas))

        second = wave_members(db_url, campaign_id, FAILING_WAVE)
        failing = second[:: max(1, len(second) // math.ceil(len(second) * FAILING_SHARE))]
        failing = failing[: math.ceil(len(second) * FAILING_SHARE)]
        plan = FailurePlan()
        plan.set_devices(failing, FAILURE_CODE)
        step(f"wave {FAILING_WAVE} has {len(second)} devices; {len(failing)} will report {FAILURE_CODE}")

        runner = FleetRunner(fleet.phones, url + "/dm", workers=args.workers, failures=plan)
        watch = Watch(api, campaign_id)
        if not runner.serve(api, campaign_id=campaign_id, until=lambda: watch.state_in({"halted", "completed"}),
                            max_seconds=PHASE_TIMEOUT):
            raise SystemExit("demo-campaign: the campaign neither halted nor completed in time")
        step(progress_line(watch.progress))
        if watch.progress["state"] != "halted":
            raise SystemExit("demo-campaign: the campaign completed without halting")
        halted = [e for e in api.pages(f"/campaigns/{campaign_id}/events") if e["kind"] == "halted"][-1]
        halt_wave = halted["detail"]["wave"]
        halt_rate = halted["detail"]["failure_rate"] * 100
        step(f"halted by itself: {halted['detail']['reason']}")

        runner.wait_idle()
        plan.clear()
        retried = api.request("POST", f"/campaigns/{campaign_id}/retry")["retried"]
        api.request("POST", f"/campaigns/{campaign_id}/resume")
        step(f"failures cleared; {retried} failed devices retried; campaign resumed")
        if not runner.serve(api, campaign_id=campaign_id, until=lambda: watch.state_in({"completed", "halted"}),
                            max_seconds=PHASE_TIMEOUT):
            raise SystemExit("demo-campaign: the campaign did not complete in time")
        runner.wait_idle()
        step(progress_line(watch.progress))
        for line in summary_lines(fleet, runner.stats, time.monotonic() - started):
            step(line)
        members = watch.progress["totals"]["members"]
        target_sha = hashlib.sha256(images[FP2].read_bytes()).hexdigest()
        updated = sum(1 for item in fleet.phones if item.phone.image_sha256() == target_sha)
        step(f"{time.monotonic() - started:.0f} s in all")
        print(
            f"demo-campaign: halted in wave {halt_wave} at {halt_rate:.1f}% failures; resumed; "
            f"{updated}/{members} updated",
            flush=True,
        )
        ok = watch.progress["state"] == "completed" and halt_wave == FAILING_WAVE and updated == members
        return 0 if ok else 1
    finally:
        if runner is not None:
            runner.close()
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        if schema is not None:
            drop_schema(base_url, schema)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("DB") or None,
                        help="database URL (default $DB, else SQLite in the temporary data directory)")
    parser.add_argument("--devices", type=int, default=DEVICES, help=f"phones (default {DEVICES})")
    parser.add_argument("--workers", type=int, default=16, help="phones run at once (default 16)")
    parser.add_argument("--max-concurrent", type=int, default=300,
                        help="campaign limit on devices with an unfinished job (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
