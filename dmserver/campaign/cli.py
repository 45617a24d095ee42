"""``dmserver campaign ...`` and ``dmserver apikey ...`` subcommands.

``dmserver.cli.build_parser`` calls :func:`add_parsers`; the commands share
its ``--data-dir`` and ``--db`` options. Examples::

    dmserver campaign create --name "FP-100 fix" --target-version 2.0 \\
        --model FP-100 --waves 1%,10%,100% --error-threshold 0.03
    dmserver campaign start 1
    dmserver campaign show 1
    dmserver campaign retry 1 --wave 2
    dmserver campaign resume 1
    dmserver apikey create billing
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select

from . import lifecycle
from .spec import MAX_DB_INTEGER, ValidationError, parse_spec

COMMANDS = {
    "pause": lifecycle.pause,
    "resume": lifecycle.resume,
    "cancel": lifecycle.cancel,
    "stop": lifecycle.emergency_stop,
    "approve": lifecycle.approve,
}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _cli():
    from .. import cli

    return cli


def finite_float(text: str) -> float:
    """Parse a finite float option value (argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def bounded_int(text: str) -> int:
    """Parse a non-negative integer that fits a database integer column."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if not 0 <= value <= MAX_DB_INTEGER:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_DB_INTEGER}, got {text}")
    return value


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def spec_from_args(args) -> dict[str, Any]:
    """Build a campaign definition from the create options (or --spec FILE)."""
    if args.spec:
        path = Path(args.spec)
        if not path.is_file():
            raise _cli().CliError(f"campaign definition {path} not found")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise _cli().CliError(f"{path} is not valid JSON: {error}") from None
    if not args.name or not args.target_version:
        raise _cli().CliError("--name and --target-version are required unless --spec gives a JSON file")
    selection = {
        "models": _split(args.model),
        "manufacturers": _split(args.manufacturer),
        "firmware_versions": _split(args.firmware_version),
        "groups": _split(args.group),
        "carrier_tags": _split(args.carrier_tag),
        "device_ids": _split(args.device),
    }
    body: dict[str, Any] = {
        "name": args.name,
        "target_version": args.target_version,
        "selection": {k: v for k, v in selection.items() if v},
        "waves": _split([args.waves]),
        "success_threshold": args.success_threshold,
        "error_threshold": args.error_threshold,
        "min_sample": args.min_sample,
        "require_approval": args.require_approval or None,
        "max_delta_share": args.max_delta_share,
    }
    limits: dict[str, Any] = {
        "max_concurrent": args.max_concurrent,
        "pushes_per_second": args.pushes_per_second,
        "default_timezone": args.default_timezone,
    }
    if args.window:
        start, _, end = args.window.partition("-")
        limits["window"] = {"start": start, "end": end}
    body["limits"] = {k: v for k, v in limits.items() if v is not None}
    policy = {
        "min_battery": args.min_battery,
        "storage_factor": args.storage_factor,
        "wifi_only": args.wifi_only or None,
        "severity": args.severity,
    }
    body["policy"] = {k: v for k, v in policy.items() if v is not None}
    return {k: v for k, v in body.items() if v is not None}


def cmd_campaign_create(args) -> int:
    cli = _cli()
    try:
        spec = parse_spec(spec_from_args(args))
    except ValidationError as error:
        raise cli.CliError(f"invalid campaign: {error}") from None
    db = cli._db(args)
    campaign_id = db.call(lambda s: lifecycle.create(s, spec, _now()).id)
    print(f"dmserver: campaign {campaign_id} created (draft); start it with: dmserver campaign start {campaign_id}")
    return 0


def cmd_campaign_start(args) -> int:
    from . import packages

    cli = _cli()
    config = cli._config(args)
    db = cli._db(args)
    try:
        campaign = packages.prepare(
            db,
            config.data_dir,
            args.campaign_id,
            now=_now,
            max_workers=args.workers,
            progress=lambda line: print(f"dmserver: {line}", flush=True),
        )
    except (lifecycle.CampaignError, lifecycle.CampaignNotFound) as error:
        raise cli.CliError(str(error)) from None
    members = db.call(lambda s: lifecycle.member_count(s, campaign.id))
    print(f"dmserver: campaign {campaign.id} is {campaign.state} with {members} devices")
    return 0


def cmd_campaign_command(args) -> int:
    cli = _cli()
    db = cli._db(args)
    try:
        state = db.call(lambda s: COMMANDS[args.campaign_command](s, args.campaign_id, _now()).state)
    except (lifecycle.CampaignError, lifecycle.CampaignNotFound) as error:
        raise cli.CliError(str(error)) from None
    print(f"dmserver: campaign {args.campaign_id} is {state}")
    return 0


def cmd_campaign_retry(args) -> int:
    cli = _cli()
    db = cli._db(args)
    try:
        count = db.call(lambda s: lifecycle.retry_failed(s, args.campaign_id, _now(), args.wave))
    except (lifecycle.CampaignError, lifecycle.CampaignNotFound) as error:
        raise cli.CliError(str(error)) from None
    print(f"dmserver: {count} failed devices of campaign {args.campaign_id} will be retried")
    return 0


def cmd_campaign_dispatch(args) -> int:
    from . import dispatch

    cli = _cli()
    db = cli._db(args)
    try:
        created = db.call(lambda s: dispatch.dispatch_campaign(s, args.campaign_id, _now()))
    except lifecycle.CampaignNotFound as error:
        raise cli.CliError(str(error)) from None
    print(f"dmserver: campaign {args.campaign_id}: {len(created)} jobs queued")
    return 0


def cmd_campaign_list(args) -> int:
    from ..store.models import Campaign

    db = _cli()._db(args)
    rows = db.call(lambda s: s.scalars(select(Campaign).order_by(Campaign.id)).all())
    for c in rows:
        print(f"{c.id}\t{c.state}\t{c.target_version}\twave {c.current_wave}/{len(c.waves)}\t{c.name}")
    return 0


def format_progress(progress: dict[str, Any]) -> list[str]:
    lines = [f"campaign {progress['campaign_id']}: {progress['state']}, wave {progress['current_wave']}"]
    if progress.get("halt_reason"):
        lines.append(f"  halted: {progress['halt_reason']}")
    for wave in progress["waves"]:
        buckets = " ".join(f"{name}={count}" for name, count in wave["buckets"].items())
        lines.append(
            f"  wave {wave['number']} ({wave['spec']}, {wave['size']} devices, {wave['state']}): "
            f"{buckets or 'empty'}; failure rate {wave['failure_rate']:.1%}"
        )
    return lines


def cmd_campaign_show(args) -> int:
    cli = _cli()
    db = cli._db(args)
    try:
        progress = db.call(lambda s: lifecycle.progress(s, args.campaign_id))
    except lifecycle.CampaignNotFound as error:
        raise cli.CliError(str(error)) from None
    if args.json:
        from ..web.api import _json_safe

        print(json.dumps(_json_safe(progress), indent=2))
    else:
        for line in format_progress(progress):
            print(line)
    return 0


def cmd_apikey_create(args) -> int:
    from ..web.api import create_api_key

    cli = _cli()
    db = cli._db(args)
    try:
        key_id, key = db.call(lambda s: _create_key(s, args.name, create_api_key))
    except ValueError as error:
        raise cli.CliError(str(error)) from None
    print(f"dmserver: API key {key_id} created for {args.name}; it is shown only once:")
    print(key)
    return 0


def _create_key(session, name: str, create):
    row, key = create(session, name, _now())
    return row.key_id, key


def cmd_apikey_list(args) -> int:
    from ..store.models import ApiKey

    db = _cli()._db(args)
    rows = db.call(lambda s: s.scalars(select(ApiKey).order_by(ApiKey.id)).all())
    for row in rows:
        state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
        print(f"{row.key_id}\t{row.name}\t{state}\tlast used {row.last_used_at or 'never'}")
    return 0


def cmd_apikey_revoke(args) -> int:
    from ..web.api import revoke_api_key

    cli = _cli()
    db = cli._db(args)
    if not db.call(lambda s: revoke_api_key(s, args.key_id, _now())):
        raise cli.CliError(f"no active API key {args.key_id}; list keys with: dmserver apikey list")
    print(f"dmserver: API key {args.key_id} revoked")
    return 0


def add_parsers(commands) -> None:
    """Add the ``campaign`` and ``apikey`` subcommands to ``commands``."""
    campaign = commands.add_parser("campaign", help="staged rollout campaigns").add_subparsers(
        dest="campaign_command", required=True
    )
    create = campaign.add_parser("create", help="create a draft campaign")
    create.add_argument("--spec", help="JSON file with the whole definition (as POST /api/v1/campaigns)")
    create.add_argument("--name")
    create.add_argument("--target-version")
    create.add_argument("--model", action="append", help="select devices of this model (repeatable, or comma-separated)")
    create.add_argument("--manufacturer", action="append")
    create.add_argument("--firmware-version", action="append", help="select devices on this version")
    create.add_argument("--group", action="append")
    create.add_argument("--carrier-tag", action="append")
    create.add_argument("--device", action="append", help="select this device id")
    create.add_argument("--waves", default="100%", help="cumulative waves, e.g. 1%%,10%%,100%% (default 100%%)")
    create.add_argument("--success-threshold", type=finite_float, help="share of a wave that must succeed before the next opens (default 0.95)")
    create.add_argument("--error-threshold", type=finite_float, help="failure rate that halts the campaign (default 0.05)")
    create.add_argument("--min-sample", type=bounded_int, help="finished devices before the failure rate counts (default 10)")
    create.add_argument("--require-approval", action="store_true", help="each wave after the first waits for: campaign approve")
    create.add_argument("--max-concurrent", type=bounded_int, help="devices with an unfinished job at once")
    create.add_argument("--pushes-per-second", type=finite_float, help="jobs dispatched per second")
    create.add_argument("--window", help="delivery window in device local time, HH:MM-HH:MM")
    create.add_argument("--default-timezone", help="time zone of devices without one (default UTC)")
    create.add_argument("--min-battery", type=bounded_int, help="minimum battery percent before the Exec")
    create.add_argument("--storage-factor", type=finite_float, help="free storage needed as a multiple of the package size")
    create.add_argument("--wifi-only", action="store_true", help="download only over Wi-Fi")
    create.add_argument("--severity", type=bounded_int, help="value for a carrier FUMO Severity node")
    create.add_argument("--max-delta-share", type=finite_float, help="send the full image when a delta exceeds this share of it (default 0.8)")
    create.set_defaults(func=cmd_campaign_create)

    start = campaign.add_parser("start", help="build missing deltas, then open wave 1")
    start.add_argument("campaign_id", type=bounded_int)
    start.add_argument("--workers", type=bounded_int, help="delta worker processes (default: CPU count)")
    start.set_defaults(func=cmd_campaign_start)
    for name, text in (
        ("pause", "pause; jobs not yet delivered are withdrawn"),
        ("resume", "resume a paused or halted campaign"),
        ("cancel", "cancel; delivered jobs run to their result"),
        ("stop", "emergency stop: cancel every open job"),
        ("approve", "open the wave waiting for approval"),
    ):
        command = campaign.add_parser(name, help=text)
        command.add_argument("campaign_id", type=bounded_int)
        command.set_defaults(func=cmd_campaign_command)
    retry = campaign.add_parser("retry", help="give failed devices a new job")
    retry.add_argument("campaign_id", type=bounded_int)
    retry.add_argument("--wave", type=bounded_int, help="only this wave")
    retry.set_defaults(func=cmd_campaign_retry)
    dispatch = campaign.add_parser("dispatch", help="run one dispatch round now (the server does it every few seconds)")
    dispatch.add_argument("campaign_id", type=bounded_int)
    dispatch.set_defaults(func=cmd_campaign_dispatch)
    campaign.add_parser("list", help="list campaigns").set_defaults(func=cmd_campaign_list)
    show = campaign.add_parser("show", help="show progress per wave and bucket")
    show.add_argument("campaign_id", type=bounded_int)
    show.add_argument("--json", action="store_true", help="print the progress as JSON")
    show.set_defaults(func=cmd_campaign_show)

    apikey = commands.add_parser("apikey", help="northbound API keys").add_subparsers(
        dest="apikey_command", required=True
    )
    create_key = apikey.add_parser("create", help="create a key; it is printed once")
    create_key.add_argument("name", help="who uses the key")
    create_key.set_defaults(func=cmd_apikey_create)
    apikey.add_parser("list", help="list keys").set_defaults(func=cmd_apikey_list)
    revoke = apikey.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_apikey_revoke)


__all__ = ["add_parsers"]
