"""The phone's WAP push receiver: SMS in, a DM session or a download out.

A feature phone learns that its DM server wants it through WAP Push over
SMS. This module plays that part of the phone:

- ``PushInbox`` polls an SMS source for the phone's MSISDN: the log of
  Kannel's fake SMSC (``fakesmsc:LOGFILE``) or a ``FileGateway`` directory
  (``file:DIR``). It keeps only SMS to WAP push port 2948, reassembles
  concatenated SMS and returns whole WSP PDUs. What it has read is stored
  in ``push-inbox.json`` in the state directory, so a restarted phone does
  not act on a push twice.
- ``read_push`` decodes one PDU. A Package 0 (application/vnd.syncml.
  notification) is accepted only for the phone's server id and only when
  its digest verifies with the phone's server password and server nonce,
  or else with the resync nonce (OMA DM Notification 1.2 nonce
  resynchronisation). Any other Package 0 is ignored, as a phone does. A
  Service Loading document yields its URL.
- ``run_after_push`` waits for the first push the phone accepts. After a
  Package 0 it runs sessions until idle, the first with Alert 1200 and
  the notified SessionID. After a Service Loading push it downloads the
  descriptor at the URL, installs, and reports through install notify
  only: no DM session, no Generic Alert.

The SessionID echo form is selectable because deployed clients differ:
``hex`` (upper-case hexadecimal, section 6.2.2.10 of the notification
spec), ``decimal``, or ``byte-swapped`` (libdmclient's ntohs of a value
already in host order).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..mo import fumo
from ..push import pkg0, sl, sms, wsp
from ..push.gateways import read_pushes
from ..push.kannel_lab import read_fakesmsc_messages
from ..syncml.codes import AlertCode
from .download import perform_fumo_job
from .phone import FumoJob, Phone
from .session import RunOptions, RunReport, SessionError, run_until_idle

logger = logging.getLogger(__name__)

INBOX_FILE = "push-inbox.json"
DEFAULT_PUSH_TIMEOUT = 300.0  # seconds
POLL_INTERVAL_SECONDS = 0.2
SESSION_ID_FORMS = ("hex", "decimal", "byte-swapped")
RESYNC_NONCES = {
    "zero-bytes": pkg0.ResyncNonce.ZERO_BYTES.value,
    "base64-text": pkg0.ResyncNonce.BASE64_TEXT.value,
    "hex-text": pkg0.ResyncNonce.HEX_TEXT.value,
    "none": None,
}
CONTENT_TYPE_NOTIFICATION = "application/vnd.syncml.notification"
CONTENT_TYPE_SLC = "application/vnd.wap.slc"


class PushTimeoutError(SessionError):
    """No push the phone accepts arrived in time."""


# ---------------------------------------------------------------------------
# Receiving


@dataclass(frozen=True)
class PushSource:
    """A push source: the fake SMSC's log file or a file gateway directory."""

    kind: str
    path: Path


def parse_push_source(text: str) -> PushSource:
    """Parse ``fakesmsc:LOGFILE`` or ``file:DIR``.

    Raises:
        ValueError: another form.
    """
    kind, separator, path = text.partition(":")
    if kind not in ("fakesmsc", "file") or not separator or not path:
        raise ValueError(f"push source {text!r} is invalid; use fakesmsc:LOGFILE or file:DIR")
    return PushSource(kind, Path(path))


class PushInbox:
    """New WSP PDUs for one MSISDN from a push source, oldest first."""

    def __init__(self, source: PushSource, msisdn: str, state_dir: Path | None = None):
        self.source = source
        self.msisdn = msisdn
        self._state_path = state_dir / INBOX_FILE if state_dir is not None else None
        self._lines_read = 0  # fakesmsc: messages of the log already read
        self._files_read: set[str] = set()  # file gateway: push files already read
        self._pending: dict[tuple[int, int], dict[int, sms.SmsSegment]] = {}
        self._load()

    def poll(self) -> list[bytes]:
        """Return the PDUs completed since the last poll."""
        if self.source.kind == "file":
            pdus = self._poll_files()
        else:
            pdus = self._poll_fakesmsc()
        self._save()
        return pdus

    def _poll_files(self) -> list[bytes]:
        pdus = []
        for stored in read_pushes(self.source.path, self.msisdn):
            if stored.path.name in self._files_read:
                continue
            self._files_read.add(stored.path.name)
            try:
                pdus.append(stored.wsp_pdu)
            except sms.SmsError as error:
                logger.info("push file %s is unusable: %s", stored.path.name, error)
        return pdus

    def _poll_fakesmsc(self) -> list[bytes]:
        messages = read_fakesmsc_messages(self.source.path)
        fresh, self._lines_read = messages[self._lines_read :], len(messages)
        pdus = []
        for message in fresh:
            if message.receiver != self.msisdn or not message.udh:
                continue
            pdu = self._add_segment(message.segment)
            if pdu is not None:
                pdus.append(pdu)
        return pdus

    def _add_segment(self, segment: sms.SmsSegment) -> bytes | None:
        try:
            header = sms.parse_user_data_header(segment.udh)
        except sms.SmsError as error:
            logger.info("SMS with a malformed user data header ignored: %s", error)
            return None
        if header.destination_port != sms.WDP_PORT_WAP_PUSH:
            return None
        if header.total is None:
            return segment.data
        key = (header.reference, header.total)
        parts = self._pending.setdefault(key, {})
        parts[header.sequence] = segment
        if len(parts) < header.total:
            return None
        del self._pending[key]
        try:
            return sms.reassemble(parts.values())
        except sms.SmsError as error:
            logger.info("concatenated SMS %d dropped: %s", header.reference, error)
            return None

    def _load(self) -> None:
        if self._state_path is None or not self._state_path.exists():
            return
        state = json.loads(self._state_path.read_text("utf-8"))
        if state.get("source") != f"{self.source.kind}:{self.source.path}":
            return
        self._lines_read = state.get("lines_read", 0)
        self._files_read = set(state.get("files_read", []))

    def _save(self) -> None:
        # Segments of an incomplete concatenated message are not stored: a
        # restarted phone drops them, as a rebooted handset does.
        if self._state_path is None:
            return
        state = {
            "source": f"{self.source.kind}:{self.source.path}",
            "lines_read": self._lines_read,
            "files_read": sorted(self._files_read),
        }
        self._state_path.write_text(json.dumps(state, indent=1), encoding="utf-8")


# ---------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class NotificationPush:
    """A Package 0 the phone accepted."""

    session_id: int
    nonce_used: str  # "server-nonce" or "resync"
    ui_mode: pkg0.UIMode


@dataclass(frozen=True)
class ServiceLoadingPush:
    """A Service Loading document: the URL to fetch."""

    url: str


def read_push(
    phone: Phone, pdu: bytes, resync_nonce: bytes | None
) -> NotificationPush | ServiceLoadingPush | None:
    """Decode a WSP push; return what to act on, or None to ignore it."""
    try:
        pushed = wsp.parse_push_pdu(pdu)
    except wsp.WspDecodeError as error:
        logger.info("push ignored: not a WSP push PDU: %s", error)
        return None
    if pushed.content_type == CONTENT_TYPE_NOTIFICATION:
        return _read_notification(phone, pushed.body, resync_nonce)
    if pushed.content_type == CONTENT_TYPE_SLC:
        try:
            loading = sl.parse_sl(pushed.body)
        except sl.WbxmlDecodeError as error:
            logger.info("Service Loading push ignored: %s", error)
            return None
        logger.info("Service Loading push: %s (action %s)", loading.href, loading.action)
        return ServiceLoadingPush(loading.href)
    logger.info("push of type %s ignored: the phone has no handler", pushed.content_type)
    return None


def _read_notification(
    phone: Phone, body: bytes, resync_nonce: bytes | None
) -> NotificationPush | None:
    try:
        notification = pkg0.parse_notification(body)
    except pkg0.NotificationParseError as error:
        logger.info("Package 0 ignored: %s", error)
        return None
    if notification.server_id != phone.server_id:
        logger.info(
            "Package 0 for server %r ignored: the phone's account is for %r",
            notification.server_id,
            phone.server_id,
        )
        return None
    server_id, password = phone.server_id, phone.server_password
    if pkg0.verify_digest(notification, server_id, password, phone.server_nonce):
        nonce_used = "server-nonce"
    elif resync_nonce is not None and pkg0.verify_digest(
        notification, server_id, password, resync_nonce
    ):
        nonce_used = "resync"
    else:
        logger.info(
            "Package 0 with session id %X ignored: the digest does not verify "
            "with the server password and nonce",
            notification.session_id,
        )
        return None
    logger.info(
        "Package 0 accepted: session id %X, version %d, digest verified with the %s",
        notification.session_id,
        notification.version,
        "stored server nonce" if nonce_used == "server-nonce" else "resync nonce",
    )
    return NotificationPush(notification.session_id, nonce_used, notification.ui_mode)


def session_id_text(session_id: int, form: str) -> str:
    """Return the SessionID the phone sends for a notified ``session_id``."""
    if form == "hex":
        return pkg0.format_session_id(session_id)
    if form == "decimal":
        return str(session_id)
    if form == "byte-swapped":
        return f"{((session_id & 0xFF) << 8) | (session_id >> 8):X}"
    raise ValueError(f"session id form {form!r} is not one of {', '.join(SESSION_ID_FORMS)}")


# ---------------------------------------------------------------------------
# Acting on a push


@dataclass
class PushOptions:
    """Settings for receiving pushes and acting on them. Times are in seconds."""

    source: PushSource
    msisdn: str
    timeout: float = DEFAULT_PUSH_TIMEOUT
    session_id_form: str = "hex"
    resync_nonce: bytes | None = RESYNC_NONCES["zero-bytes"]
    poll_interval: float = POLL_INTERVAL_SECONDS


@dataclass
class PushRunReport:
    """Result of ``run_after_push``."""

    run: RunReport
    kind: str  # "package0" or "service-loading"
    ignored: int = 0
    session_id: str | None = None


def wait_for_push(
    phone: Phone,
    options: PushOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[NotificationPush | ServiceLoadingPush, int]:
    """Poll until a push the phone accepts arrives; return it and the ignored count.

    Raises:
        PushTimeoutError: none arrived within ``options.timeout`` seconds.
    """
    inbox = PushInbox(options.source, options.msisdn, phone.state_dir)
    deadline = clock() + options.timeout
    ignored = 0
    logger.info(
        "waiting up to %g s for a push to %s from %s %s",
        options.timeout,
        options.msisdn,
        options.source.kind,
        options.source.path,
    )
    while True:
        for pdu in inbox.poll():
            accepted = read_push(phone, pdu, options.resync_nonce)
            if accepted is not None:
                return accepted, ignored
            ignored += 1
        if clock() >= deadline:
            raise PushTimeoutError(
                f"no push for {options.msisdn} that the phone accepts arrived within "
                f"{options.timeout:g} s ({ignored} ignored)"
            )
        sleep(options.poll_interval)


def run_after_push(
    phone: Phone, server_url: str, run: RunOptions, options: PushOptions
) -> PushRunReport:
    """Wait for a push, then run the session or session-less update it requests.

    Raises:
        PushTimeoutError: no acceptable push arrived in time.
        SessionError: a session failed (see ``run_until_idle``).
    """
    push, ignored = wait_for_push(phone, options)
    if isinstance(push, NotificationPush):
        text = session_id_text(push.session_id, options.session_id_form)
        session = run.session
        session.alert_code = AlertCode.SERVER_INITIATED_MGMT
        session.session_id = text
        logger.info("starting the notified session with SessionID %s", text)
        report = run_until_idle(phone, server_url, run)
        return PushRunReport(run=report, kind="package0", ignored=ignored, session_id=text)
    return PushRunReport(
        run=update_from_service_loading(phone, push.url, run),
        kind="service-loading",
        ignored=ignored,
    )


def update_from_service_loading(phone: Phone, url: str, run: RunOptions) -> RunReport:
    """Download and install from a download descriptor URL; report by install notify.

    The FUMO result stays off the phone's pending Generic Alerts, because a
    phone reached this way reports only through the descriptor's
    installNotifyURI.
    """
    job = FumoJob(
        fumo_node=phone.fumo_node,
        operation=fumo.NODE_DOWNLOAD_AND_UPDATE,
        correlator=None,
        pkg_url=url,
    )
    result = perform_fumo_job(phone, job, run.update)
    if result in phone.pending_reports:
        phone.pending_reports.remove(result)
        phone.save()
    logger.info(
        "FUMO result %d reported by install notify only; no Generic Alert follows",
        result.result_code,
    )
    return RunReport(
        sessions=0,
        reported_codes=[result.result_code],
        firmware_version=phone.firmware_version,
        firmware_sha256=phone.image_sha256(),
    )


# ---------------------------------------------------------------------------
# Command line (``dmsim run --push-source ...``)


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the push options to the ``dmsim run`` parser."""
    group = parser.add_argument_group("push (wait for a WAP push before acting)")
    group.add_argument(
        "--push-source",
        metavar="fakesmsc:LOGFILE|file:DIR",
        help="wait for a push to --msisdn from Kannel's fake SMSC log or a file "
        "gateway directory, then act on it",
    )
    group.add_argument("--msisdn", help="the phone's number, as the server sends to it")
    group.add_argument(
        "--push-timeout",
        type=float,
        default=DEFAULT_PUSH_TIMEOUT,
        help="seconds to wait for an acceptable push (default: %(default)s)",
    )
    group.add_argument(
        "--session-id-form",
        choices=SESSION_ID_FORMS,
        default="hex",
        help="how the phone echoes the notified session id (default: %(default)s)",
    )
    group.add_argument(
        "--resync-nonce",
        choices=sorted(RESYNC_NONCES),
        default="zero-bytes",
        help="nonce tried when the stored server nonce does not verify a Package 0 "
        "(default: %(default)s)",
    )


def push_options(args: argparse.Namespace) -> PushOptions | None:
    """Return the push options of parsed ``dmsim run`` arguments, or None.

    Raises:
        ValueError: --push-source without --msisdn, or an invalid source.
    """
    if not getattr(args, "push_source", None):
        return None
    if not args.msisdn:
        raise ValueError("--push-source needs --msisdn, the number pushes are sent to")
    return PushOptions(
        source=parse_push_source(args.push_source),
        msisdn=args.msisdn,
        timeout=args.push_timeout,
        session_id_form=args.session_id_form,
        resync_nonce=RESYNC_NONCES[args.resync_nonce],
    )


__all__ = [
    "NotificationPush",
    "PushInbox",
    "PushOptions",
    "PushRunReport",
    "PushSource",
    "PushTimeoutError",
    "ServiceLoadingPush",
    "add_push_arguments",
    "parse_push_source",
    "push_options",
    "read_push",
    "run_after_push",
    "session_id_text",
    "update_from_service_loading",
    "wait_for_push",
]
