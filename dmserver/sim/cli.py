"""``dmsim``: run a simulated feature phone against a DM server.

``dmsim run`` creates the phone in ``--state-dir`` on its first use (from
the phone options, copying the firmware image and certificate in) and loads
it on later uses. It runs a session and all follow-up FUMO work until the
phone is idle, printing one ``dmsim:`` line per step, and ends with::

    dmsim: idle; firmware <version> sha256 <hex>

With ``--push-source`` and ``--msisdn`` the phone first waits for a WAP
push and acts on it: a Package 0 starts a session with Alert 1200, a
Service Loading push an update reported by install notify (see push.py).

``dmsim show`` prints the phone's DM tree and pending work.

Exit status: 0 when idle, 1 when a session failed (unreachable server,
rejected credentials, protocol error) or the state is unusable, 2 for
invalid options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..syncml.codec import Encoding
from ..syncml.codes import AlertCode
from . import phone as phone_module
from . import push as push_module
from .download import DEFAULT_MIN_BATTERY, UpdateOptions
from .phone import Phone, PhoneStateError
from .session import (
    DEFAULT_MAX_MSG_SIZE,
    DEFAULT_MAX_OBJ_SIZE,
    DEFAULT_MAX_SESSIONS,
    RunOptions,
    SessionConfig,
    SessionError,
    run_until_idle,
)

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Options needed only when the state directory contains no phone yet.
CREATION_OPTIONS = (
    ("device", "--device"),
    ("client_password", "--client-password"),
    ("server_password", "--server-password"),
    ("model", "--model"),
    ("manufacturer", "--manufacturer"),
    ("firmware_version", "--firmware-version"),
    ("firmware", "--firmware"),
    ("cert", "--cert"),
)
SECRET_LEAVES = ("AAuthSecret", "SAuthSecret", "ClientNonce", "ServerNonce")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 0 to 100, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmsim",
        description="A feature phone that runs OMA-DM 1.2 sessions and FUMO updates.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="run sessions and firmware updates until the phone is idle"
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="directory holding the phone's state (created on first run)",
    )
    run.add_argument(
        "--server",
        help="DM server URL, e.g. http://127.0.0.1:8080/dm "
        "(default: the URL stored on the phone)",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="also print debug lines"
    )

    phone = run.add_argument_group("phone (used when the state directory is new)")
    phone.add_argument("--device", help="device id, e.g. IMEI:490154203237518")
    phone.add_argument(
        "--client-username", help="client user name (default: device id)"
    )
    phone.add_argument(
        "--client-password", help="password the phone authenticates with"
    )
    phone.add_argument(
        "--server-id",
        default=phone_module.DEFAULT_SERVER_ID,
        help="server id the server authenticates with (default: %(default)s)",
    )
    phone.add_argument(
        "--server-password", help="password the server authenticates with"
    )
    phone.add_argument("--model", help="model name (./DevInfo/Mod)")
    phone.add_argument("--manufacturer", help="manufacturer (./DevInfo/Man)")
    phone.add_argument(
        "--firmware-version", help="installed firmware version (./DevDetail/FwV)"
    )
    phone.add_argument("--firmware", type=Path, help="firmware image file to copy in")
    phone.add_argument(
        "--cert",
        type=Path,
        help="PEM certificate of the firmware signing key to provision",
    )
    phone.add_argument(
        "--fumo-node",
        default=phone_module.DEFAULT_FUMO_NODE,
        help="URI of the FUMO node (default: %(default)s)",
    )

    conditions = run.add_argument_group("device conditions and injected faults")
    conditions.add_argument(
        "--battery",
        type=_percent,
        help="battery charge in percent (stored on the phone)",
    )
    conditions.add_argument(
        "--min-battery",
        type=_percent,
        default=DEFAULT_MIN_BATTERY,
        help="minimum charge in percent to start an update; below it "
        "the phone reports FUMO 450 (default: %(default)s)",
    )
    conditions.add_argument(
        "--free-storage",
        type=_non_negative,
        help="free storage in bytes (stored on the phone); a package "
        "larger than this is reported as FUMO 501",
    )
    conditions.add_argument(
        "--corrupt-download",
        action="store_true",
        help="flip a payload byte of the downloaded package (FUMO 402)",
    )
    conditions.add_argument(
        "--modify-firmware",
        action="store_true",
        help="flip a byte of the firmware image before patching (FUMO 403)",
    )
    conditions.add_argument(
        "--bad-signature",
        action="store_true",
        help="flip a signature byte of the downloaded package (FUMO 404)",
    )
    conditions.add_argument(
        "--drop-after",
        type=_positive,
        metavar="BYTES",
        help="close the download connection once after BYTES bytes "
        "and resume with an HTTP Range request",
    )

    protocol = run.add_argument_group("protocol")
    protocol.add_argument(
        "--encoding",
        choices=[e.value for e in Encoding],
        default="xml",
        help="message encoding (default: %(default)s)",
    )
    protocol.add_argument(
        "--max-msg-size",
        type=_positive,
        default=DEFAULT_MAX_MSG_SIZE,
        help="MaxMsgSize in bytes the phone advertises (default: %(default)s)",
    )
    protocol.add_argument(
        "--max-obj-size",
        type=_positive,
        default=DEFAULT_MAX_OBJ_SIZE,
        help="MaxObjSize in bytes the phone advertises (default: %(default)s)",
    )
    protocol.add_argument(
        "--auth",
        choices=["md5", "basic", "hmac"],
        help="client authentication (default: md5 on a new phone, then "
        "the phone's AAuthPref)",
    )
    protocol.add_argument(
        "--dm-version",
        choices=["1.2", "1.1.2"],
        help="protocol version (default: 1.2 on a new phone, then the " "phone's DmV)",
    )
    protocol.add_argument(
        "--no-server-auth",
        action="store_true",
        help="accept a server that sends no credentials",
    )
    protocol.add_argument(
        "--max-sessions",
        type=_positive,
        default=DEFAULT_MAX_SESSIONS,
        help="sessions to run at most before giving up (default: %(default)s)",
    )
    protocol.add_argument(
        "--server-initiated",
        metavar="SESSIONID",
        help="start with Alert 1200 and this SessionID, as after a "
        "server notification",
    )
    push_module.add_push_arguments(run)

    commands.add_parser(
        "fleet",
        help="run many simulated phones at once (dmsim fleet --help)",
        add_help=False,
    )
    show = commands.add_parser(
        "show", help="print the phone's DM tree and pending work"
    )
    show.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="directory holding the phone's state",
    )
    return parser


def _configure_logging(verbose: bool) -> None:
    sim_logger = logging.getLogger("dmserver.sim")
    for handler in list(sim_logger.handlers):
        if getattr(handler, "dmsim_console", False):
            sim_logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("dmsim: %(message)s"))
    handler.dmsim_console = True
    sim_logger.addHandler(handler)
    sim_logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    sim_logger.propagate = False


def _open_phone(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Phone:
    if Phone.exists(args.state_dir):
        phone = Phone.load(args.state_dir)
        logger.info(
            "loaded phone %s from %s (firmware %s)",
            phone.device_id,
            args.state_dir,
            phone.firmware_version,
        )
        if (
            args.cert is not None
            and args.cert.read_bytes() != phone.cert_path.read_bytes()
        ):
            logger.warning(
                "--cert %s differs from the certificate provisioned in %s; the "
                "provisioned one is used",
                args.cert,
                args.state_dir,
            )
        return phone
    missing = [flag for name, flag in CREATION_OPTIONS if getattr(args, name) is None]
    if missing:
        parser.error(
            f"{args.state_dir} contains no phone yet; creating one needs "
            f"{', '.join(missing)}"
        )
    return Phone.create(
        args.state_dir,
        device_id=args.device,
        model=args.model,
        manufacturer=args.manufacturer,
        firmware_version=args.firmware_version,
        firmware=args.firmware,
        cert=args.cert,
        client_password=args.client_password,
        server_password=args.server_password,
        client_username=args.client_username,
        server_id=args.server_id,
        server_url=args.server or "",
        auth_scheme=args.auth or "md5",
        dm_version=args.dm_version or "1.2",
        battery=(
            args.battery if args.battery is not None else phone_module.DEFAULT_BATTERY
        ),
        free_storage=(
            args.free_storage
            if args.free_storage is not None
            else phone_module.DEFAULT_FREE_STORAGE
        ),
        fumo_node=args.fumo_node,
    )


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    phone = _open_phone(args, parser)
    if args.battery is not None:
        phone.battery = args.battery
    if args.free_storage is not None:
        phone.free_storage = args.free_storage
    phone.save()
    server_url = args.server or phone.tree.value(f"./DMAcc/{phone.account}/Addr")
    if not server_url:
        parser.error("--server is required: the phone stores no server URL")

    session = SessionConfig(
        encoding=Encoding(args.encoding),
        auth=args.auth,
        dm_version=args.dm_version,
        max_msg_size=args.max_msg_size,
        max_obj_size=args.max_obj_size,
        require_server_auth=not args.no_server_auth,
    )
    if args.server_initiated:
        session.alert_code = AlertCode.SERVER_INITIATED_MGMT
        session.session_id = args.server_initiated
    update = UpdateOptions(
        min_battery=args.min_battery,
        corrupt_download=args.corrupt_download,
        modify_firmware=args.modify_firmware,
        bad_signature=args.bad_signature,
        drop_after=args.drop_after,
    )
    options = RunOptions(session=session, update=update, max_sessions=args.max_sessions)
    try:
        push = push_module.push_options(args)
    except ValueError as error:
        parser.error(str(error))
    if push is not None:
        report = push_module.run_after_push(phone, server_url, options, push).run
    else:
        report = run_until_idle(phone, server_url, options)
    if report.reported_codes:
        codes = ", ".join(str(code) for code in report.reported_codes)
        print(f"dmsim: FUMO results reported: {codes}")
    print(
        f"dmsim: idle; firmware {report.firmware_version} "
        f"sha256 {report.firmware_sha256}"
    )
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    phone = Phone.load(args.state_dir)
    for path, node in phone.tree.nodes.items():
        if node.is_interior:
            print(f"{path}/")
            continue
        name = path.rsplit("/", 1)[-1]
        value = "(secret)" if name in SECRET_LEAVES else node.value
        if value is None:
            value = "(no value)"
        print(f"{path} = {value} ({node.format})")
    job = phone.pending_job
    print(f"pending operation: {job.source_uri if job else 'none'}")
    for report in phone.pending_reports:
        print(
            f"pending result: {report.result_code} for {report.source_uri} "
            f"(Correlator {report.correlator or 'none'})"
        )
    if phone.download is not None and phone.partial_path.exists():
        size = phone.partial_path.stat().st_size
        print(f"partial download: {size} bytes of {phone.download.url}")
    print(
        f"firmware image: {phone.image_sha256()} "
        f"({phone.image_path.stat().st_size} bytes)"
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dmsim`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "fleet":
        # The fleet mode has its own options; see dmserver.sim.fleet.
        from .fleet import main as fleet_main

        return fleet_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            return _show(args)
        _configure_logging(args.verbose)
        return _run(args, parser)
    except (SessionError, PhoneStateError, OSError) as error:
        print(f"dmsim: error: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
