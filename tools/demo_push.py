#!/usr/bin/env python3
"""Wake an offline phone with a WAP push through Kannel and update it.

``make demo-push`` runs this inside a private network namespace with a
real Kannel and its fake SMSC (``python -m dmserver.push.kannel_lab``).
Run directly, the script starts that namespace itself, so
``python tools/demo_push.py`` does the same.

Steps: provision a phone with an MSISDN, store the two libexpat builds from
fixtures/firmware as two firmware versions, queue a FOTA job, start the
server with the kannel-sendsms gateway, and start dmsim waiting for SMS on
the fake SMSC's log. The server pushes Package 0, or with
``--sessionless`` a Service Loading document for a phone whose profile has
``sessionless``. Kannel hands the SMS to the fake SMSC, and the phone
verifies the push and updates.

The last line is
``demo-push: IMEI:<id> updated <from> -> <to> via <n> push(es)``
and the exit status is 0 only when the job succeeded and the image on the
phone has the SHA-256 of the target build.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from demo_support import start_server

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "fixtures" / "firmware"
OLD = ("2.5.0-1+deb12u2", FIRMWARE / "libexpat-2.5.0-1+deb12u2.so")
NEW = ("2.5.0-1+deb12u5", FIRMWARE / "libexpat-2.5.0-1+deb12u5.so")
MODEL = "FP-100"
MANUFACTURER = "Example Handsets"
DEVICE = "IMEI:490154203237518"
MSISDN = "+15550100"
CLIENT_PASSWORD = "demo-client-secret"
SERVER_PASSWORD = "demo-server-secret"
# Seconds the phone waits for an acceptable push.
PHONE_PUSH_TIMEOUT = 120
LAB_ENV = "DMSERVER_KANNEL_SENDSMS_URL"


def step(text: str) -> None:
    print(f"demo-push: {text}", flush=True)


def run(command: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    for line in (result.stdout + result.stderr).splitlines():
        print(f"  {line}", flush=True)
    if result.returncode != 0:
        raise SystemExit(
            f"demo-push: failed: {' '.join(command[2:6])} ... exited with {result.returncode}"
        )
    return result.stdout


def relaunch_in_lab(argv: list[str]) -> int:
    """Run this script again inside a new network namespace with Kannel."""
    workdir = Path(tempfile.mkdtemp(prefix="dmserver-kannel-"))
    command = [
        "unshare",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        sys.executable,
        "-m",
        "dmserver.push.kannel_lab",
        "--workdir",
        str(workdir),
        "--",
        sys.executable,
        str(Path(__file__).resolve()),
        *argv,
    ]
    step(f"starting Kannel with a fake SMSC in a new network namespace ({workdir})")
    status = subprocess.run(command, cwd=ROOT).returncode
    if status == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"demo-push: Kannel logs kept in {workdir}", file=sys.stderr)
    return status


def count_pushes(db_url: str) -> int:
    """Return how many pushes the server sent for job 1, from its job events."""
    from sqlalchemy import select

    from dmserver.store.db import Database
    from dmserver.store.models import JobEvent

    db = Database(db_url)
    try:
        events = db.call(
            lambda session: session.scalars(
                select(JobEvent).where(JobEvent.job_id == 1, JobEvent.kind == "push")
            ).all()
        )
        return sum(1 for event in events if (event.detail or {}).get("outcome") == "sent")
    finally:
        db.dispose()


def job_state(db_url: str) -> str:
    from dmserver.store.db import Database
    from dmserver.store.models import Job

    db = Database(db_url)
    try:
        return db.call(lambda session: session.get(Job, 1).state)
    finally:
        db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sessionless",
        action="store_true",
        help="give the phone the sessionless profile: Service Loading push, install notify only",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)

    if LAB_ENV not in os.environ:
        return relaunch_in_lab(sys.argv[1:] if argv is None else argv)

    work = Path(tempfile.mkdtemp(prefix="dmserver-demo-push-"))
    data_dir = work / "data"
    db_url = f"sqlite:///{data_dir / 'dmserver.db'}"
    dmserver = [sys.executable, "-m", "dmserver.cli", "--data-dir", str(data_dir)]
    server = None
    ok = False
    try:
        step(f"data directory {data_dir} (SQLite)")
        run(dmserver + ["keys", "init"])
        profile = ["--profile", "sessionless=true", "--firmware-version", OLD[0]] if args.sessionless else []
        step(f"provisioning {DEVICE} with MSISDN {MSISDN}" + (" (sessionless profile)" if args.sessionless else ""))
        run(
            dmserver
            + [
                "device", "add", DEVICE,
                "--client-password", CLIENT_PASSWORD,
                "--server-password", SERVER_PASSWORD,
                "--model", MODEL,
                "--msisdn", MSISDN,
                *profile,
            ]
        )
        for version, image in (OLD, NEW):
            step(f"storing {image.name} as {MODEL} {version}")
            run(dmserver + ["firmware", "add", "--model", MODEL, "--version", version, str(image)])
        step(f"queueing a FOTA job {DEVICE} -> {NEW[0]} while the phone is offline")
        run(dmserver + ["job", "fota", DEVICE, "--version", NEW[0]])

        sendsms_url = os.environ["DMSERVER_KANNEL_SENDSMS_URL"]
        server_env = {
            **os.environ,
            "DMSERVER_PUSH_USERNAME": os.environ["DMSERVER_KANNEL_USERNAME"],
            "DMSERVER_PUSH_PASSWORD": os.environ["DMSERVER_KANNEL_PASSWORD"],
        }
        server, url = start_server(
            dmserver
            + [
                "serve", "--host", "127.0.0.1", "--port", "0",
                "--push-gateway", f"kannel-sendsms:{sendsms_url}",
                "--push-rate", "1",
                "--push-retry-window", "30",
                "--push-max", "3",
                "--push-scan-interval", "1",
            ],
            work / "server.log",
            "demo-push",
            server_env,
        )
        step(f"server listening on {url}, pushing through Kannel sendsms at {sendsms_url}")

        state_dir = work / "phone"
        fakesmsc_log = os.environ["DMSERVER_FAKESMSC_LOG"]
        step(f"phone waiting for SMS to {MSISDN} on the fake SMSC ({fakesmsc_log})")
        phone = subprocess.run(
            [
                sys.executable, "-m", "dmserver.sim.cli", "run",
                "--server", f"{url}/dm",
                "--device", DEVICE,
                "--client-password", CLIENT_PASSWORD,
                "--server-password", SERVER_PASSWORD,
                "--model", MODEL,
                "--manufacturer", MANUFACTURER,
                "--firmware-version", OLD[0],
                "--firmware", str(OLD[1]),
                "--state-dir", str(state_dir),
                "--cert", str(data_dir / "keys" / "signing-cert.pem"),
                "--push-source", f"fakesmsc:{fakesmsc_log}",
                "--msisdn", MSISDN,
                "--push-timeout", str(PHONE_PUSH_TIMEOUT),
            ],
            cwd=ROOT,
        )
        if phone.returncode != 0:
            raise SystemExit(f"demo-push: failed: dmsim exited with {phone.returncode}; server log {work / 'server.log'}")

        step("job history:")
        run(dmserver + ["job", "show", "1"])
        state = job_state(db_url)
        if state != "succeeded":
            raise SystemExit(f"demo-push: failed: job 1 is {state}, expected succeeded")
        expected = hashlib.sha256(NEW[1].read_bytes()).hexdigest()
        actual = hashlib.sha256((state_dir / "firmware.bin").read_bytes()).hexdigest()
        if actual != expected:
            raise SystemExit(
                f"demo-push: failed: image sha256 {actual} on the phone, expected {expected} of {NEW[0]}"
            )
        pushes = count_pushes(db_url)
        ok = True
        print(f"demo-push: {DEVICE} updated {OLD[0]} -> {NEW[0]} via {pushes} push(es)", flush=True)
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            print(f"demo-push: kept {work} for inspection", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
