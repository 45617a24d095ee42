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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import app
from .syncml.codes import AUTH_BASIC, AUTH_MAC, AUTH_MD5

AUTH_SCHEMES = {"md5": AUTH_MD5, "basic": AUTH_BASIC, "hmac": AUTH_MAC}
DELIVERY_MODES = ("download", "inband")
CSV_REQUIRED = ("device_id", "client_password", "server_password")
CSV_OPTIONAL = (
    "client_username", "auth", "model", "msisdn", "fumo_root", "delivery",
    "firmware_version", "group", "carrier_tag", "timezone",
)


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
        push=_push_config(args) if hasattr(args, "push_gateway") else None,
    )


def _push_config(args):
    from .push.service import PushConfig, parse_gateway_spec

    try:
        return PushConfig(
            gateway=parse_gateway_spec(args.push_gateway),
            username=args.push_username,
            password=args.push_password,
            rate=args.push_rate,
            retry_window=args.push_retry_window,
            backoff=args.push_backoff,
            max_pushes=args.push_max,
            scan_interval=args.push_scan_interval,
            notify_window=args.push_notify_window,
        )
    except ValueError as error:
        raise CliError(str(error)) from None


def _parse_profile(pairs: list[str], text: str | None) -> dict:
    """Build a device profile from --profile-json and KEY=VALUE pairs."""
    import json

    from .push.service import ProfileError, parse_device_profile

    profile: dict = {}
    if text:
        try:
            profile = json.loads(text)
        except ValueError as error:
            raise CliError(f"--profile-json is not valid JSON: {error}") from None
        if not isinstance(profile, dict):
            raise CliError("--profile-json must be a JSON object")
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise CliError(f"--profile {pair!r} is invalid; use KEY=VALUE")
        try:
            # Numbers and true/false become JSON values; other text stays text.
            profile[key.strip()] = json.loads(value)
        except ValueError:
            profile[key.strip()] = value
    try:
        parse_device_profile(profile)
    except ProfileError as error:
        raise CliError(str(error)) from None
    return profile


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
    try:
        push = app.build_push_service(db, config, settings, reactor)
    except ValueError as error:
        raise CliError(str(error)) from None
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
    if push is not None:
        push.startService()
        reactor.addSystemEventTrigger("before", "shutdown", push.stopService)
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
    timezone = (row.get("timezone") or "").strip() or None
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ValueError, KeyError, ZoneInfoNotFoundError):
            raise CliError(f"time zone {timezone!r} for {device_id} is not an IANA name such as Europe/Berlin") from None
    msisdn = (row.get("msisdn") or "").strip() or None
    if msisdn is not None:
        from .push.gateways import validate_msisdn

        try:
            validate_msisdn(msisdn)
        except ValueError as error:
            raise CliError(f"msisdn for {device_id}: {error}") from None
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
            msisdn=msisdn,
            fumo_root=row.get("fumo_root") or "./FUMO",
            delivery=delivery,
            firmware_version=row.get("firmware_version") or None,
            profile=row.get("profile") or {},
            group=row.get("group") or None,
            carrier_tag=row.get("carrier_tag") or None,
            timezone=timezone,
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
        "firmware_version": args.firmware_version,
        "group": args.group,
        "carrier_tag": args.carrier_tag,
        "timezone": args.timezone,
        "profile": _parse_profile(args.profile, args.profile_json),
    }
    db.call(lambda s: _add_device(s, row, _now()))
    print(f"dmserver: device {args.device_id} provisioned")
    return 0


def cmd_device_import(args) -> int:
    path = Path(args.csv)
    if not path.is_file():
        raise CliError(f"CSV file {path} not found")
    try:
        # utf-8-sig also reads the byte order mark that spreadsheets write.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            rows = list(reader)
    except UnicodeDecodeError as error:
        raise CliError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    missing = set(CSV_REQUIRED) - columns
    unknown = columns - set(CSV_REQUIRED) - set(CSV_OPTIONAL)
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"lacks the column(s) {', '.join(sorted(missing))}")
        if unknown:
            problems.append(f"has unknown column(s) {', '.join(sorted(unknown))}")
        raise CliError(
            f"{path} {' and '.join(problems)}; the header row must name "
            f"{','.join(CSV_REQUIRED)} and optionally {','.join(CSV_OPTIONAL)}"
        )
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


class _Ordered(argparse.Action):
    """Collect (option, value) pairs in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((option_string.lstrip("-"), values))
        setattr(namespace, self.dest, items)


def _mgmt_command(kind: str, value: str):
    from .syncml.codes import AlertCode
    from .syncml.model import Command, Item, Meta

    def split(pair: str, what: str) -> tuple[str, str]:
        if "=" not in pair:
            raise CliError(f"--{kind} {pair!r}: expected {what}")
        left, right = pair.split("=", 1)
        return left, right

    if kind == "get":
        return Command("Get", "", items=[Item(target=value)])
    if kind in ("replace", "add"):
        path, data = split(value, "PATH=VALUE")
        return Command(kind.capitalize(), "", items=[Item(target=path, meta=Meta(format="chr"), data=data)])
    if kind == "add-node":
        return Command("Add", "", items=[Item(target=value, meta=Meta(format="node"))])
    if kind == "delete":
        return Command("Delete", "", items=[Item(target=value)])
    if kind == "exec":
        return Command("Exec", "", items=[Item(target=value)])
    if kind == "copy":
        target, source = split(value, "TARGET=SOURCE")
        return Command("Copy", "", items=[Item(target=target, source=source)])
    if kind == "alert":
        code, _, text = value.partition(":")
        if not code.isdigit() or not (AlertCode.DISPLAY <= int(code) <= AlertCode.MULTIPLE_CHOICE):
            raise CliError(f"--alert {value!r}: the code must be 1100-1104, e.g. 1101:Install the update now?")
        parts = text.split("|")
        items = [Item(data="MINDT=10&MAXDT=60"), Item(data=parts[0])] + [Item(data=p) for p in parts[1:]]
        return Command("Alert", "", data=code, items=items)
    raise CliError(f"unknown management command {kind}")


def cmd_mgmt_queue(args) -> int:
    import json

    from .store.management import MgmtRequest
    from .store.models import Device
    from .syncml.model import Command, command_from_json, command_to_json

    commands = [_mgmt_command(kind, value) for kind, value in (args.commands or [])]
    if args.json:
        try:
            loaded = json.loads(Path(args.json).read_text())
            commands += [command_from_json(entry) for entry in loaded]
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise CliError(f"cannot read commands from {args.json}: {error}") from None
    if not commands:
        raise CliError("no command given; use --get, --replace, --add, --delete, --exec, --copy, --alert or --json")
    if args.atomic or args.sequence:
        commands = [Command("Atomic" if args.atomic else "Sequence", "", commands=commands)]
    db = _db(args)

    def queue(session):
        device = session.scalars(select(Device).where(Device.device_id == args.device_id)).first()
        if device is None:
            raise CliError(f"device {args.device_id} is not provisioned")
        now = _now()
        request = MgmtRequest(
            device_pk=device.id,
            state="queued",
            commands=[command_to_json(c) for c in commands],
            results=[],
            created_at=now,
            updated_at=now,
        )
        session.add(request)
        session.flush()
        return request.id

    request_id = db.call(queue)
    print(f"dmserver: management request {request_id} queued for {args.device_id}")
    return 0


def cmd_mgmt_show(args) -> int:
    import json

    from .store.management import MgmtRequest

    db = _db(args)

    def show(session):
        request = session.get(MgmtRequest, args.request_id)
        if request is None:
            raise CliError(f"management request {args.request_id} not found")
        return request.state, request.results

    state, results = db.call(show)
    print(f"request {args.request_id}: {state}")
    for entry in results:
        print(json.dumps(entry, sort_keys=True))
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


def _add_push_options(serve: argparse.ArgumentParser) -> None:
    from .push import service as push

    group = serve.add_argument_group("push notifications")
    group.add_argument(
        "--push-gateway",
        default="none",
        metavar="none|file:DIR|kannel-sendsms:URL|kannel-pap:URL",
        help="where pushes for queued jobs go (default: none, devices must call in)",
    )
    group.add_argument("--push-username", help=f"gateway user (default ${push.USERNAME_ENV})")
    group.add_argument("--push-password", help=f"gateway password (default ${push.PASSWORD_ENV}, which keeps it out of ps)")
    group.add_argument("--push-rate", type=float, default=push.DEFAULT_RATE, help="SMS per second (default: %(default)s)")
    group.add_argument(
        "--push-retry-window",
        type=float,
        default=push.DEFAULT_RETRY_WINDOW,
        help="seconds a phone has to open a session after the first push before the next one (default: %(default)s)",
    )
    group.add_argument(
        "--push-backoff", type=float, default=push.DEFAULT_BACKOFF, help="factor applied to each later window (default: %(default)s)"
    )
    group.add_argument("--push-max", type=int, default=push.DEFAULT_MAX_PUSHES, help="pushes per job at most (default: %(default)s)")
    group.add_argument(
        "--push-scan-interval",
        type=float,
        default=push.DEFAULT_SCAN_INTERVAL,
        help="seconds between scans for jobs to push (default: %(default)s)",
    )
    group.add_argument(
        "--push-notify-window",
        type=float,
        default=push.DEFAULT_NOTIFY_WINDOW,
        help="seconds a session-less phone has from the descriptor download to its install notify "
        "before Package 0 takes over (default: %(default)s)",
    )


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
    _add_push_options(serve)
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
    add.add_argument("--group", help="operator device group, for campaign targeting")
    add.add_argument("--carrier-tag", help="carrier tag, for campaign targeting")
    add.add_argument("--timezone", help="IANA time zone of the device, for delivery windows")
    add.add_argument(
        "--delivery",
        default="download",
        choices=DELIVERY_MODES,
        help="download: DownloadAndUpdate with a descriptor URL; inband: Update/PkgData in the session",
    )
    add.add_argument("--firmware-version", help="installed firmware version, if known (also learned from ./DevDetail/FwV)")
    add.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="device profile entry, repeatable: pkg0_version=11|12, resync_nonce=zero-bytes|base64-text|hex-text, "
        "max_server_id_length=N, sessionless=true",
    )
    add.add_argument("--profile-json", help="device profile as a JSON object; --profile entries override its keys")
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

    mgmt = commands.add_parser("mgmt", help="queue DM commands for a device").add_subparsers(dest="mgmt_command", required=True)
    queue = mgmt.add_parser("queue", help="queue commands for the device's next session, in the order given")
    queue.add_argument("device_id")
    for option, meta, text in (
        ("--get", "PATH", "Get a node (PATH may end in ?list=Struct or ?list=StructData)"),
        ("--replace", "PATH=VALUE", "Replace a leaf"),
        ("--add", "PATH=VALUE", "Add a leaf"),
        ("--add-node", "PATH", "Add an interior node"),
        ("--delete", "PATH", "Delete a node"),
        ("--exec", "PATH", "Exec a node"),
        ("--copy", "TARGET=SOURCE", "Copy a node"),
        ("--alert", "CODE:TEXT[|CHOICE...]", "user interaction alert 1100-1104"),
    ):
        queue.add_argument(option, dest="commands", action=_Ordered, metavar=meta, help=text)
    queue.add_argument("--json", help="file with a JSON list of commands (dmserver.syncml.model.command_to_json form)")
    wrap = queue.add_mutually_exclusive_group()
    wrap.add_argument("--atomic", action="store_true", help="send the commands inside one Atomic")
    wrap.add_argument("--sequence", action="store_true", help="send the commands inside one Sequence")
    queue.set_defaults(func=cmd_mgmt_queue)
    mshow = mgmt.add_parser("show", help="show a request's Statuses and Results")
    mshow.add_argument("request_id", type=int)
    mshow.set_defaults(func=cmd_mgmt_show)

    decode = commands.add_parser("decode", help="print a SyncML DM message (XML or WBXML) as XML")
    decode.add_argument("file")
    decode.set_defaults(func=cmd_decode)

    db = commands.add_parser("db", help="database").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply schema migrations").set_defaults(func=cmd_db_upgrade)

    from .campaign.cli import add_parsers as add_campaign_parsers

    add_campaign_parsers(commands)
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
