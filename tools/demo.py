#!/usr/bin/env python3
"""Run a complete FOTA on the embedded default: `make demo`.

Starts dmserver on 127.0.0.1 with SQLite in a temporary data directory,
provisions a simulated feature phone, stores the two libexpat builds from
fixtures/firmware as two firmware versions of one model, queues a FOTA job
and runs dmsim from the older image. Arguments after the options go to
dmsim unchanged (for example ``--encoding wbxml --max-msg-size 3500``).

The last line is
``demo: IMEI:<id> updated <from> -> <to>, image sha256 <hex>``
and the exit status is 0 only when the image on the simulated phone has the
SHA-256 of the target build.
"""

from __future__ import annotations

import argparse
import hashlib
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
CLIENT_PASSWORD = "demo-client-secret"
SERVER_PASSWORD = "demo-server-secret"


def step(text: str) -> None:
    print(f"demo: {text}", flush=True)


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    for line in (result.stdout + result.stderr).splitlines():
        print(f"  {line}", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: failed: {' '.join(command[2:])} exited with {result.returncode}")
    return result.stdout


def _option(args: list[str], name: str) -> str | None:
    """Return the value of ``name`` in dmsim's arguments (``--x v`` or ``--x=v``)."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument(
        "--delivery",
        choices=("download", "inband"),
        default="download",
        help="download: DownloadAndUpdate with a descriptor; inband: the package in the session",
    )
    args, sim_args = parser.parse_known_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dmserver-demo-"))
    data_dir = work / "data"
    dmserver = [sys.executable, "-m", "dmserver.cli", "--data-dir", str(data_dir)]
    server = None
    ok = False
    try:
        step(f"data directory {data_dir} (SQLite)")
        step("creating the package signing key")
        run(dmserver + ["keys", "init"])
        auth = _option(sim_args, "--auth") or "md5"
        delivery = args.delivery
        step(f"provisioning {DEVICE} (auth {auth}, delivery {delivery})")
        run(
            dmserver
            + ["device", "add", DEVICE, "--client-password", CLIENT_PASSWORD]
            + ["--server-password", SERVER_PASSWORD, "--model", MODEL]
            + ["--auth", auth, "--delivery", delivery]
        )
        for version, image in (OLD, NEW):
            step(f"storing {image.name} as {MODEL} {version}")
            run(dmserver + ["firmware", "add", "--model", MODEL, "--version", version, str(image)])
        step(f"queueing a FOTA job {DEVICE} -> {NEW[0]}")
        run(dmserver + ["job", "fota", DEVICE, "--version", NEW[0]])

        server, url = start_server(
            dmserver + ["serve", "--host", "127.0.0.1", "--port", "0"], work / "server.log", "demo"
        )
        step(f"server listening on {url}; log in {work / 'server.log'}")

        state_dir = work / "phone"
        step(f"running dmsim from {OLD[0]}" + (f" with {' '.join(sim_args)}" if sim_args else ""))
        sim = subprocess.run(
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
                *sim_args,
            ],
            cwd=ROOT,
        )
        if sim.returncode != 0:
            raise SystemExit(f"demo: failed: dmsim exited with {sim.returncode}")

        step("job history:")
        run(dmserver + ["job", "show", "1"])
        expected = hashlib.sha256(NEW[1].read_bytes()).hexdigest()
        images = sorted(state_dir.glob("*.img")) or sorted(state_dir.glob("firmware*"))
        if not images:
            raise SystemExit(f"demo: failed: no firmware image found in {state_dir}")
        actual = hashlib.sha256(images[0].read_bytes()).hexdigest()
        if actual != expected:
            raise SystemExit(
                f"demo: failed: image sha256 {actual} on the phone, expected {expected} of {NEW[0]}"
            )
        ok = True
        print(f"demo: {DEVICE} updated {OLD[0]} -> {NEW[0]}, image sha256 {actual}", flush=True)
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            print(f"demo: kept {work} for inspection", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
