"""The ``dmserver`` command: run the server and manage devices, firmware and jobs.

Examples::

    dmserver keys init
    dmserver device add IMEI:490154203237518 --client-password c --server-password s
    dmserver firmware add --model MOD --version 1.0 image-1.0.bin
    dmserver job fota IMEI:490154203237518 --version 2.0
    dmserver serve --port 8700
    dmserver decode trace.wbxml
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from . import app
from .syncml.codes import AUTH_BASIC, AUTH_MAC, AUTH_MD5

AUTH_SCHEMES = {"md5": AUTH_MD5, "basic": AUTH_BASIC, "hmac": AUTH_MAC}
DELIVERY_MODES = ("download", "inband")


class CliError(Exception):
    """An error shown to the operator as one line, exit status 2."""


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _config(args) -> app.ServerConfig:
    data_dir = Path(args.data_dir) if args.data_dir else app.default_data_dir()
    return app.ServerConfig(
        data_dir=data_dir,
        db_url=args.db or app.default_db_url(data_dir),
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", app.DEFAULT_PORT),
        base_url=getattr(args, "base_url", None),
        server_id=getattr(args, "server_id", "dmserver"),
    )


# ---------------------------------------------------------------------------
# serve


def cmd_serve(args) -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s [%(name)s] %(message)s")
    config = _config(args)
    db = app.open_database(config)
    db.start_threadpool(reactor)
    settings = config.settings()
    site = app.build_site(db, config, settings)
    port = reactor.listenTCP(config.port, site, interface=config.host)
    actual = port.getHost().port
    if not config.base_url:
        settings.base_url = f"http://{config.host}:{actual}"
    print(
        f"dmserver: listening on http://{config.host}:{actual} "
        f"(public URL {settings.base_url}, database {_redact(config.db_url)})",
        flush=True,
    )
    reactor.run()
    return 0


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


# ---------------------------------------------------------------------------
# keys, device, firmware, job


def cmd_keys_init(args) -> int:
    from .fota import signing

    config = _config(args)
    try:
        key, cert = signing.init_keys(config.data_dir / "keys", overwrite=args.force)
    except FileExistsError as error:
        raise CliError(f"{error}; pass --force to replace the signing key") from None
    print(f"dmserver: signing key {key}\ndmserver: certificate {cert} (provision it on devices)")
    return 0


def _db(args):
    return app.open_database(_config(args))


def _add_device(session, row: dict, now: datetime):
    from .store.models import Device

    device_id = (row.get("device_id") or "").strip()
    if not device_id:
        raise CliError("device id is empty; give it as IMEI:<15 digits> or another LocURI")
    for field in ("client_password", "server_password"):
        if not row.get(field):
            raise CliError(f"{field.replace('_', '-')} is missing for {device_id}")
    scheme = AUTH_SCHEMES.get((row.get("auth") or "md5").strip().lower())
    if scheme is None:
        raise CliError(f"auth {row.get('auth')!r} for {device_id} is not one of {', '.join(AUTH_SCHEMES)}")
    delivery = (row.get("delivery") or "download").strip().lower()
    if delivery not in DELIVERY_MODES:
        raise CliError(f"delivery {delivery!r} for {device_id} is not one of {', '.join(DELIVERY_MODES)}")
    if session.scalars(select(Device).where(Device.device_id == device_id)).first():
        raise CliError(f"device {device_id} is already provisioned")
    session.add(
        Device(
            device_id=device_id,
            client_username=(row.get("client_username") or device_id).strip(),
            client_password=row["client_password"],
            server_password=row["server_password"],
            auth_scheme=scheme,
            model=row.get("model") or None,
            msisdn=row.get("msisdn") or None,
            fumo_root=row.get("fumo_root") or "./FUMO",
            delivery=delivery,
            profile={},
            dev_info={},
            created_at=now,
        )
    )


def cmd_device_add(args) -> int:
    db = _db(args)
    row = {
        "device_id": args.device_id,
        "client_password": args.client_password,
        "server_password": args.server_password,
        "client_username": args.client_username,
        "auth": args.auth,
        "model": args.model,
        "msisdn": args.msisdn,
        "fumo_root": args.fumo_root,
        "delivery": args.delivery,
    }
    db.call(lambda s: _add_device(s, row, _now()))
    print(f"dmserver: device {args.device_id} provisioned")
    return 0


def cmd_device_import(args) -> int:
    path = Path(args.csv)
    if not path.is_file():
        raise CliError(f"CSV file {path} not found")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"device_id", "client_password", "server_password"} - set(reader.fieldnames or [])
        if missing:
            raise CliError(
                f"{path} lacks the column(s) {', '.join(sorted(missing))}; the header row must "
                "name device_id,client_password,server_password[,client_username,auth,model,msisdn,fumo_root,delivery]"
            )
        rows = list(reader)
    db = _db(args)

    def import_all(session):
        now = _now()
        for number, row in enumerate(rows, start=2):
            try:
                _add_device(session, row, now)
            except CliError as error:
                raise CliError(f"{path}:{number}: {error}; nothing was imported") from None

    db.call(import_all)
    print(f"dmserver: {len(rows)} devices provisioned from {path}")
    return 0


def cmd_device_list(args) -> int:
    from .store.models import Device

    db = _db(args)
    devices = db.call(lambda s: s.scalars(select(Device).order_by(Device.id)).all())
    for d in devices:
        print(f"{d.device_id}\tmodel={d.model or '-'}\tfirmware={d.firmware_version or '-'}\tlast seen={d.last_seen_at or 'never'}")
    return 0


def cmd_firmware_add(args) -> int:
    from .fota import catalogue

    db = _db(args)
    config = _config(args)
    try:
        db.call(
            lambda s: catalogue.add_firmware(
                s,
                config.data_dir,
                args.model,
                args.version,
                Path(args.file),
                progress=lambda line: print(f"dmserver: {line}", flush=True),
            )
        )
    except catalogue.CatalogueError as error:
        raise CliError(str(error)) from None
    return 0


def cmd_firmware_list(args) -> int:
    from .store.models import Firmware, Package

    db = _db(args)

    def listing(s):
        return s.scalars(select(Firmware).order_by(Firmware.model, Firmware.id)).all(), s.scalars(
            select(Package).order_by(Package.id)
        ).all()

    firmware, pkgs = db.call(listing)
    for f in firmware:
        print(f"{f.model}\t{f.version}\t{f.size} bytes\tsha256 {f.sha256}")
        for p in pkgs:
            if p.model == f.model and p.target_version == f.version:
                print(f"  package {p.payload_type} from {p.source_version or 'any'}: {p.size} bytes")
    return 0


def cmd_job_fota(args) -> int:
    from .fota import jobs
    from .store.models import Device, Package

    db = _db(args)

    def create(session):
        device = session.scalars(select(Device).where(Device.device_id == args.device_id)).first()
        if device is None:
            raise CliError(f"device {args.device_id} is not provisioned; add it with: dmserver device add")
        if not session.scalars(select(Package).where(Package.target_version == args.version)).first():
            raise CliError(
                f"no package builds version {args.version!r}; add the image with: dmserver firmware add"
            )
        try:
            return jobs.create_job(session, device, args.version, _now()).id
        except jobs.JobError as error:
            raise CliError(str(error)) from None

    job_id = db.call(create)
    print(f"dmserver: job {job_id} queued: {args.device_id} -> {args.version}")
    return 0


def _job_line(job) -> str:
    result = f"result {job.result_code} {job.result_text}" if job.result_code or job.result_text else ""
    return (
        f"{job.id}\t{job.device.device_id}\t{job.source_version or '?'} -> {job.target_version}"
        f"\t{job.state}\t{result}"
    ).rstrip()


def cmd_job_list(args) -> int:
    from sqlalchemy.orm import selectinload

    from .store.models import Job

    db = _db(args)
    rows = db.call(lambda s: [_job_line(j) for j in s.scalars(select(Job).options(selectinload(Job.device)).order_by(Job.id)).all()])
    for line in rows:
        print(line)
    return 0


def cmd_job_show(args) -> int:
    from .store.models import Job, JobEvent

    db = _db(args)

    def show(s):
        job = s.get(Job, args.job_id)
        if job is None:
            raise CliError(f"job {args.job_id} not found; list jobs with: dmserver job list")
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)).all()
        return [_job_line(job)] + [f"  {e.at:%Y-%m-%d %H:%M:%S} {e.kind} {e.detail or ''}" for e in events]

    for line in db.call(show):
        print(line)
    return 0


def cmd_job_cancel(args) -> int:
    from .fota import jobs
    from .store.models import Job

    db = _db(args)

    def cancel(s):
        job = s.get(Job, args.job_id)
        if job is None:
            raise CliError(f"job {args.job_id} not found")
        if job.state in jobs.FINAL_STATES:
            raise CliError(f"job {job.id} is already {job.state}")
        jobs.set_state(s, job, "cancelled", _now(), by="operator")

    db.call(cancel)
    print(f"dmserver: job {args.job_id} cancelled")
    return 0


def cmd_decode(args) -> int:
    from .syncml import wbxml

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"file {path} not found")
    data = path.read_bytes()
    try:
        print(wbxml.to_pretty_xml(data), end="")
    except ValueError as error:
        raise CliError(f"{path} is not a SyncML DM message: {error}") from None
    return 0


def cmd_db_upgrade(args) -> int:
    _db(args)
    print("dmserver: database schema is at the latest revision")
    return 0


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmserver", description="OMA-DM FOTA server")
    parser.add_argument("--data-dir", help=f"data directory (default ${app.DATA_DIR_ENV} or ./data)")
    parser.add_argument("--db", help=f"SQLAlchemy database URL (default ${app.DB_URL_ENV} or SQLite in the data directory)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the DM server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=app.DEFAULT_PORT, help="TCP port; 0 picks a free one")
    serve.add_argument("--base-url", help="public URL of this server for RespURI and download URLs")
    serve.add_argument("--server-id", default="dmserver", help="server id in the devices' DM accounts")
    serve.set_defaults(func=cmd_serve)

    keys = commands.add_parser("keys", help="package signing key").add_subparsers(dest="keys_command", required=True)
    init = keys.add_parser("init", help="create the ECDSA P-256 signing key and certificate")
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.set_defaults(func=cmd_keys_init)

    device = commands.add_parser("device", help="provision devices").add_subparsers(dest="device_command", required=True)
    add = device.add_parser("add", help="provision one device")
    add.add_argument("device_id", help="device LocURI, e.g. IMEI:490154203237518")
    add.add_argument("--client-password", required=True, help="password the device authenticates with")
    add.add_argument("--server-password", required=True, help="password the server authenticates with")
    add.add_argument("--client-username", help="client user name (default: the device id)")
    add.add_argument("--auth", default="md5", choices=sorted(AUTH_SCHEMES), help="required auth scheme")
    add.add_argument("--model", help="device model (also learned from ./DevInfo/Mod)")
    add.add_argument("--msisdn", help="phone number for push notifications")
    add.add_argument("--fumo-root", default="./FUMO", help="interior node holding the FUMO object")
    add.add_argument(
        "--delivery",
        default="download",
        choices=DELIVERY_MODES,
        help="download: DownloadAndUpdate with a descriptor URL; inband: Update/PkgData in the session",
    )
    add.set_defaults(func=cmd_device_add)
    imp = device.add_parser("import", help="provision devices from a CSV file")
    imp.add_argument("csv", help="CSV with header device_id,client_password,server_password,...")
    imp.set_defaults(func=cmd_device_import)
    device.add_parser("list", help="list devices").set_defaults(func=cmd_device_list)

    firmware = commands.add_parser("firmware", help="firmware catalogue").add_subparsers(dest="firmware_command", required=True)
    fadd = firmware.add_parser("add", help="store an image and build its signed packages")
    fadd.add_argument("--model", required=True)
    fadd.add_argument("--version", required=True)
    fadd.add_argument("file", help="firmware image file")
    fadd.set_defaults(func=cmd_firmware_add)
    firmware.add_parser("list", help="list images and packages").set_defaults(func=cmd_firmware_list)

    job = commands.add_parser("job", help="FOTA jobs").add_subparsers(dest="job_command", required=True)
    fota = job.add_parser("fota", help="queue a firmware update for a device")
    fota.add_argument("device_id")
    fota.add_argument("--version", required=True, help="target firmware version")
    fota.set_defaults(func=cmd_job_fota)
    job.add_parser("list", help="list jobs").set_defaults(func=cmd_job_list)
    show = job.add_parser("show", help="show a job and its history")
    show.add_argument("job_id", type=int)
    show.set_defaults(func=cmd_job_show)
    cancel = job.add_parser("cancel", help="cancel an open job")
    cancel.add_argument("job_id", type=int)
    cancel.set_defaults(func=cmd_job_cancel)

    decode = commands.add_parser("decode", help="print a SyncML DM message (XML or WBXML) as XML")
    decode.add_argument("file")
    decode.set_defaults(func=cmd_decode)

    db = commands.add_parser("db", help="database").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply schema migrations").set_defaults(func=cmd_db_upgrade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as error:
        print(f"dmserver: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
