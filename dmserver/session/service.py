"""Serve one SyncML DM HTTP request against the database.

:func:`process_request` runs in the database thread pool, inside one
transaction: it decodes the body, finds or creates the stored session,
responds to a retransmitted message with the stored reply, loads the device and
its job, runs the sans-IO engine and stores every effect together with the
new session state and the reply. A failure anywhere rolls the transaction
back, so nothing already stored is lost.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from ..campaign.lifecycle import defer_job
from ..campaign.packages import packages_for_job
from ..campaign.policy import policy_for_job
from ..fota import jobs
from ..store.management import MgmtRequest
from ..store.models import Device, DmSession, Job, Package, TreeValue
from ..syncml import auth
from ..syncml.codes import AUTH_MAC, StatusCode
from ..syncml.codec import (
    CodecError,
    DecodedMessage,
    Encoding,
    decode_message,
    encode_message,
    encoding_for_media_type,
    reply_media_type,
    media_type_base,
    sniff_encoding,
)
from ..syncml.model import Command, Message, SyncHdr, command_from_json
from . import engine

log = Logger(namespace="dmserver.session")

# A message without a session token that repeats the bytes of a message
# processed this recently is treated as a retransmission.
REPLAY_WINDOW = timedelta(minutes=15)
HMAC_HEADER = "x-syncml-hmac"
SESSION_TOKEN_BYTES = 16
SERVER_INITIATED_ALERT = "1200"


@dataclass
class ServerSettings:
    server_id: str = "dmserver"
    base_url: str = "http://127.0.0.1:8700"
    max_body: int = 1_048_576
    data_dir: Path = Path("data")
    # Called in the request's transaction with (db, device, SessionID, now)
    # when a device authenticates in a session it opened with Alert 1200.
    # The push service sets it to correlate the session with its pushes.
    on_server_initiated_session: Callable[[Session, Device, str, datetime], None] | None = None


@dataclass
class HttpReply:
    body: bytes
    content_type: str
    http_status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def process_request(
    db: Session,
    body: bytes,
    content_type: str | None,
    hmac_header: str | None,
    token: str | None,
    settings: ServerSettings,
    now: datetime,
) -> HttpReply:
    """Process one POST /dm body and return the reply; see the module docstring."""
    # Step 1: decode. A body that cannot be read gets a SyncHdr Status.
    try:
        decoded = decode_message(body, content_type)
    except CodecError as error:
        log.warn(
            "rejected SyncML body ({size} bytes, {ctype}): {error}",
            size=len(body),
            ctype=media_type_base(content_type),
            error=str(error),
        )
        return _error_reply(body, content_type, error.status, settings)
    message = decoded.message
    header = message.header
    body_sha = hashlib.sha256(body).hexdigest()

    # Step 2: reject protocol versions this server does not speak.
    version_status = _unsupported_version(header)
    if version_status is not None:
        log.warn(
            "rejected message from {device}: VerDTD {dtd!r}, VerProto {proto!r}",
            device=header.source,
            dtd=header.ver_dtd,
            proto=header.ver_proto,
        )
        return _header_only_reply(decoded, version_status, settings)

    # Step 3: find the stored session, or replay the stored reply to a
    # retransmission. A stored reply only goes back to the session's device.
    stored = _find_session(db, token, header, body_sha, now)
    if stored is not None and stored.device_id != header.source:
        log.warn(
            "session token of {owner} used by {device}; starting a new session",
            owner=stored.device_id,
            device=header.source,
        )
        stored = None
    if stored is not None and stored.last_msg_id == header.msg_id and stored.last_reply:
        if stored.last_request_sha256 != body_sha:
            log.info(
                "session {sid} MsgID {msg_id} sent again with different bytes; "
                "answering with the stored reply",
                sid=header.session_id,
                msg_id=header.msg_id,
            )
        log.info(
            "retransmission of MsgID {msg_id} in session {sid} of {device}: stored reply sent",
            msg_id=header.msg_id,
            sid=header.session_id,
            device=header.source,
        )
        return HttpReply(
            body=stored.last_reply,
            content_type=stored.last_reply_type,
            headers=dict((stored.state or {}).get("reply_headers", {})),
        )
    if stored is not None and stored.ended:
        stored = None
    if stored is not None and not _msg_id_advances(stored.last_msg_id, header.msg_id):
        log.warn(
            "session {sid} of {device}: MsgID {msg_id} does not follow {last}; not executed",
            sid=header.session_id,
            device=header.source,
            msg_id=header.msg_id,
            last=stored.last_msg_id,
        )
        return _header_only_reply(decoded, StatusCode.BAD_REQUEST, settings)

    # Step 4: load the device. Messages from unknown devices are answered
    # without storing anything, so they cannot fill the session table.
    device = db.scalars(select(Device).where(Device.device_id == header.source)).first()
    if device is None:
        log.warn("rejected session {sid}: unknown device {device}", sid=header.session_id, device=header.source)
    if stored is None:
        stored = DmSession(
            token=secrets.token_urlsafe(SESSION_TOKEN_BYTES),
            device_id=header.source,
            session_id=header.session_id,
            state={},
            created_at=now,
            updated_at=now,
        )
        if device is not None:
            _prune_sessions(db, header.source, now)
            db.add(stored)
            log.info("session {sid} started by {device}", sid=header.session_id, device=header.source)
    saved = {k: v for k, v in (stored.state or {}).items() if k != "reply_headers"}
    state = engine.SessionState.from_json(saved) if saved else None
    job_model = _job_for_session(db, device, state)
    ctx = engine.Context(
        device=_account(device),
        server_id=settings.server_id,
        base_url=settings.base_url,
        session_token=stored.token,
        new_nonce=auth.new_nonce(),
        job=_job_offer(db, job_model) if job_model is not None else None,
        hmac=auth.parse_hmac_header(hmac_header) if hmac_header else None,
        body=body,
        encode=lambda reply: encode_message(reply, decoded.encoding),
        read_object=lambda source, offset, length: _read_object(db, settings, source, offset, length),
        server_max_msg_size=settings.max_body,
        management=_management_requests(db, device, state),
        policy=policy_for_job(db, job_model) if job_model is not None else None,
    )

    # Step 5: run the engine and store what it decided.
    was_authenticated = state is not None and state.authenticated
    outcome = engine.handle(message, state, ctx)
    if device is not None and outcome.state.authenticated and not was_authenticated:
        _on_authenticated(db, device, message, settings, now)
    if device is not None:
        _apply_effects(db, device, outcome.effects, now)
    reply_bytes = encode_message(outcome.reply, decoded.encoding)
    headers = {}
    if device is not None and outcome.state.client_auth_scheme == AUTH_MAC:
        # Mutual auth-MAC: the server's MAC over the exact reply bytes.
        nonce = device.server_nonce if device.server_nonce is not None else auth.FACTORY_NONCES[0]
        mac = auth.hmac_mac(settings.server_id, device.server_password, nonce, reply_bytes)
        headers[HMAC_HEADER] = auth.format_hmac_header(settings.server_id, mac)
    stored.state = {**outcome.state.to_json(), "reply_headers": headers}
    stored.last_msg_id = header.msg_id
    stored.last_request_sha256 = body_sha
    stored.last_reply = reply_bytes
    stored.last_reply_type = decoded.media_type
    stored.ended = outcome.ended
    stored.updated_at = now
    _log_message(header, outcome)
    return HttpReply(body=reply_bytes, content_type=decoded.media_type, headers=headers)


def _on_authenticated(
    db: Session, device: Device, message: Message, settings: ServerSettings, now: datetime
) -> None:
    """Hand a server-initiated session (Alert 1200) to the push correlation hook."""
    hook = settings.on_server_initiated_session
    server_initiated = any(
        command.name == "Alert" and (command.data or "").strip() == SERVER_INITIATED_ALERT
        for command in message.commands
    )
    if hook is None or not server_initiated:
        return
    try:
        hook(db, device, message.header.session_id, now)
    except Exception:  # noqa: BLE001 - correlation must not fail the session
        log.failure(
            "correlating session {sid} of {device} with its pushes failed",
            sid=message.header.session_id,
            device=device.device_id,
        )


SUPPORTED_VERSIONS = {("1.2", "DM/1.2"), ("1.1", "DM/1.1")}
# Sessions idle this long are deleted when their device starts a new one.
SESSION_RETENTION = timedelta(days=1)


def _unsupported_version(header: SyncHdr) -> int | None:
    dtd, proto = header.ver_dtd.strip(), header.ver_proto.strip()
    if dtd not in ("1.1", "1.2"):
        return StatusCode.DTD_VERSION_NOT_SUPPORTED
    if (dtd, proto) not in SUPPORTED_VERSIONS:
        return StatusCode.PROTOCOL_VERSION_NOT_SUPPORTED
    return None


def _msg_id_advances(last: str | None, current: str) -> bool:
    """MsgIDs are positive integers that grow within a session."""
    if not current.isdigit() or int(current) == 0:
        return False
    if last is None or not last.isdigit():
        return True
    return int(current) > int(last)


def _prune_sessions(db: Session, device_id: str, now: datetime) -> None:
    stale = (DmSession.device_id == device_id, DmSession.updated_at < now - SESSION_RETENTION)
    # Read first: a DELETE takes SQLite's single write lock even when it
    # matches nothing, and most sessions find nothing to prune.
    if db.scalars(select(DmSession.id).where(*stale).limit(1)).first() is None:
        return
    db.execute(delete(DmSession).where(*stale))


def _header_only_reply(decoded: DecodedMessage, status: int, settings: ServerSettings) -> HttpReply:
    """Answer with only a SyncHdr Status, executing nothing and storing nothing."""
    header = decoded.message.header
    reply = Message(
        header=SyncHdr(
            ver_dtd=header.ver_dtd if header.ver_dtd in ("1.1", "1.2") else "1.2",
            ver_proto=header.ver_proto if header.ver_proto in ("DM/1.1", "DM/1.2") else "DM/1.2",
            session_id=header.session_id,
            msg_id="1",
            target=header.source,
            source=header.target or settings.base_url + "/dm",
        ),
        commands=[
            Command(
                name="Status",
                cmd_id="1",
                msg_ref=header.msg_id,
                cmd_ref="0",
                cmd="SyncHdr",
                data=str(int(status)),
            )
        ],
        final=True,
    )
    return HttpReply(body=encode_message(reply, decoded.encoding), content_type=decoded.media_type)


def _find_session(db: Session, token, header: SyncHdr, body_sha: str, now: datetime) -> DmSession | None:
    if token:
        query = select(DmSession).where(DmSession.token == token)
        if db.bind.dialect.name == "postgresql":
            query = query.with_for_update()
        found = db.scalars(query).first()
        if found is not None:
            return found
        log.info("unknown session token from {device}; starting a new session", device=header.source)
        return None
    # No token: only a byte-identical retransmission of a recent message
    # belongs to an existing session (clients reuse SessionIDs).
    return db.scalars(
        select(DmSession)
        .where(
            DmSession.device_id == header.source,
            DmSession.session_id == header.session_id,
            DmSession.last_request_sha256 == body_sha,
            DmSession.updated_at >= now - REPLAY_WINDOW,
        )
        .order_by(DmSession.id.desc())
    ).first()


def _read_object(db: Session, settings: ServerSettings, source: str, offset: int, length: int) -> bytes:
    """Read part of a stored object for in-band delivery ("package:<id>")."""
    kind, _, ident = source.partition(":")
    if kind != "package":
        raise ValueError(f"unknown object source {source!r}")
    package = db.get(Package, int(ident))
    with open(settings.data_dir / package.path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def _account(device: Device | None) -> engine.DeviceAccount | None:
    if device is None:
        return None
    return engine.DeviceAccount(
        device_id=device.device_id,
        client_username=device.client_username,
        client_password=device.client_password,
        server_password=device.server_password,
        auth_scheme=device.auth_scheme,
        client_nonce=device.client_nonce,
        server_nonce=device.server_nonce,
        fumo_root=device.fumo_root,
        model=device.model,
        delivery=device.delivery or "download",
        nonce_form=device.nonce_form,
    )


def _management_requests(
    db: Session, device: Device | None, state: engine.SessionState | None
) -> list[engine.ManagementRequest]:
    """Queued operator requests, offered only before the session's own planning starts."""
    if device is None or (state is not None and state.phase not in ("start",)):
        return []
    rows = db.scalars(
        select(MgmtRequest)
        .where(MgmtRequest.device_pk == device.id, MgmtRequest.state == "queued")
        .order_by(MgmtRequest.id)
    ).all()
    return [
        engine.ManagementRequest(row.id, [command_from_json(c) for c in row.commands])
        for row in rows
    ]


def _job_for_session(db: Session, device: Device | None, state: engine.SessionState | None) -> Job | None:
    if device is None:
        return None
    if state is not None and state.job_id is not None:
        job = db.get(Job, state.job_id)
        return job if job is not None and job.state == "queued" else None
    return db.scalars(
        select(Job).where(Job.device_pk == device.id, Job.state == "queued").order_by(Job.id)
    ).first()


def _job_offer(db: Session, job: Job) -> engine.JobOffer:
    # A campaign offers its planned packages: the delta of each source
    # version unless it is too large a share of the full image, and the full one.
    packages = packages_for_job(db, job)
    if packages is None:
        packages = db.scalars(select(Package).where(Package.target_version == job.target_version)).all()
    return engine.JobOffer(
        job_id=job.id,
        token=job.token,
        target_version=job.target_version,
        packages=[
            engine.PackageOffer(
                package_id=p.id,
                model=p.model,
                source_version=p.source_version,
                payload_type=p.payload_type,
                size=p.size,
            )
            for p in packages
        ],
    )


def _apply_effects(db: Session, device: Device, effects: list, now: datetime) -> None:
    for effect in effects:
        if isinstance(effect, engine.ClientNonceIssued):
            device.client_nonce = effect.nonce
        elif isinstance(effect, engine.ServerNonceReceived):
            device.server_nonce = effect.nonce
        elif isinstance(effect, engine.NonceFormDetected):
            log.info(
                "device {device} computes digests over the {form} nonce; remembered",
                device=device.device_id,
                form=effect.form,
            )
            device.nonce_form = effect.form
        elif isinstance(effect, engine.DeviceInfoReceived):
            device.dev_info = {**(device.dev_info or {}), **effect.values}
            device.model = effect.values.get("Mod", device.model)
            device.manufacturer = effect.values.get("Man", device.manufacturer)
        elif isinstance(effect, engine.TreeValuesReceived):
            _store_tree_values(db, device, effect.values, now)
        elif isinstance(effect, (engine.ManagementSent, engine.ManagementResult, engine.ManagementCompleted)):
            _apply_management_effect(db, device, effect, now)
        elif isinstance(effect, engine.AuthenticationFailed):
            log.warn(
                "authentication of {device} failed: {reason}",
                device=device.device_id,
                reason=effect.reason,
            )
        else:
            _apply_job_effect(db, device, effect, now)


def _apply_management_effect(db: Session, device: Device, effect, now: datetime) -> None:
    request = db.get(MgmtRequest, effect.request_id)
    if request is None:
        return
    request.updated_at = now
    if isinstance(effect, engine.ManagementSent):
        request.state = "sent"
        log.info("management request {id} sent to {device}", id=request.id, device=device.device_id)
    elif isinstance(effect, engine.ManagementCompleted):
        request.state = "done"
        log.info("management request {id} of {device} done", id=request.id, device=device.device_id)
    else:
        entry = {
            "kind": effect.kind,
            "cmd": effect.cmd,
            "code": effect.code,
            "meaning": _status_meaning(effect.code),
            "target": effect.target,
            "items": effect.items,
        }
        request.results = [*(request.results or []), entry]
        if effect.kind == "Status" and effect.target and effect.code is not None:
            _store_tree_values(db, device, {effect.target: (effect.code, None)}, now, keep_value=True)


def _status_meaning(code: int | None) -> str | None:
    """Name of a SyncML status code, e.g. 216 atomic_rollback_ok, 507 atomic_failed."""
    if code is None:
        return None
    try:
        return StatusCode(code).name.lower()
    except ValueError:
        return "success" if 200 <= code < 300 else "error"


def _store_tree_values(db: Session, device: Device, values, now: datetime, keep_value: bool = False) -> None:
    for path, (status, value) in values.items():
        row = db.scalars(
            select(TreeValue).where(TreeValue.device_pk == device.id, TreeValue.path == path)
        ).first()
        if row is None:
            row = TreeValue(device_pk=device.id, path=path)
            db.add(row)
        if not keep_value:
            row.value = value
        row.status = status
        row.updated_at = now
        if path == engine.FWV_PATH and status == 200 and value:
            device.firmware_version = value.strip()


def _apply_job_effect(db: Session, device: Device, effect, now: datetime) -> None:
    if isinstance(effect, engine.GenericAlertReceived):
        _on_generic_alert(db, device, effect, now)
        return
    job = db.get(Job, effect.job_id)
    if job is None:
        return
    if isinstance(effect, engine.JobDelivered):
        job.package_id = effect.package_id
        # The version the device reported, also when the full image is sent.
        job.source_version = effect.source_version
        job.fumo_node = effect.fumo_node
        jobs.set_state(
            db,
            job,
            "delivered",
            now,
            package_id=effect.package_id,
            source_version=effect.source_version,
            fumo_node=effect.fumo_node,
        )
    elif isinstance(effect, engine.JobStatusReceived):
        if effect.status in (200, 202):
            if effect.command == "exec-update":
                jobs.advance(db, job, "accepted", now, status=effect.status)
            return
        job.result_code = effect.status
        job.result_text = f"device answered {effect.command} with SyncML status {effect.status}"
        jobs.set_state(db, job, "failed", now, command=effect.command, status=effect.status)
    elif isinstance(effect, engine.JobFailed):
        job.result_text = effect.reason
        jobs.set_state(db, job, "failed", now, reason=effect.reason)
    elif isinstance(effect, engine.JobDeferred):
        policy = policy_for_job(db, job)
        log.info(
            "job {job_id} deferred by device policy ({reason}): {detail}",
            job_id=job.id,
            reason=effect.reason,
            detail=effect.detail,
        )
        retry_after = policy.retry_after if policy is not None else 3600
        defer_job(db, job, effect.reason, retry_after, now, detail=effect.detail)
    elif isinstance(effect, engine.JobAlreadyAtTarget):
        job.result_text = f"device already runs {effect.version}"
        jobs.set_state(db, job, "succeeded", now, reason="already at target version")


def _on_generic_alert(db: Session, device: Device, alert: engine.GenericAlertReceived, now: datetime) -> None:
    alert_type = alert.alert_type or ""
    if not alert_type.startswith(engine.FUMO_ALERT_PREFIX):
        log.info(
            "Generic Alert of type {type} from {device} is not a FUMO report; recorded only",
            type=alert_type,
            device=device.device_id,
        )
        return
    try:
        code = int((alert.data or "").strip())
    except ValueError:
        log.warn(
            "Generic Alert from {device} has a non-numeric result {data!r}; ignored",
            device=device.device_id,
            data=(alert.data or "")[:40],
        )
        return
    job = jobs.find_job_for_alert(db, device, alert.correlator, alert.source)
    if job is None:
        log.warn(
            "FUMO result {code} from {device} matches no open job (Correlator {corr})",
            code=code,
            device=device.device_id,
            corr=alert.correlator,
        )
        return
    jobs.close_with_result(db, job, code, now, source=alert.source or "")


def _log_message(header: SyncHdr, outcome: engine.Outcome) -> None:
    sent = [c.name for c in outcome.reply.commands if c.name != "Status"]
    hdr_status = outcome.reply.commands[0].data if outcome.reply.commands else "?"
    log.info(
        "session {sid} of {device}: reply to MsgID {msg_id} has SyncHdr status {status}, "
        "commands sent {sent}{end}",
        sid=header.session_id,
        device=header.source,
        msg_id=header.msg_id,
        status=hdr_status,
        sent=",".join(sent) or "none",
        end=" ; session ended" if outcome.ended else "",
    )


def _error_reply(body: bytes, content_type: str | None, status: int, settings: ServerSettings) -> HttpReply:
    """Build a reply with only a SyncHdr Status for a body that did not decode."""
    declared = encoding_for_media_type(content_type)
    if declared is None:
        return HttpReply(
            body=(
                f"unsupported media type {media_type_base(content_type)!r}; send "
                "application/vnd.syncml.dm+xml or application/vnd.syncml.dm+wbxml\n"
            ).encode(),
            content_type="text/plain; charset=utf-8",
            http_status=415,
        )
    encoding = sniff_encoding(body) if body else declared
    message = Message(
        header=SyncHdr(session_id="0", msg_id="1", target="", source=settings.base_url + "/dm"),
        commands=[
            Command(
                name="Status",
                cmd_id="1",
                msg_ref="0",
                cmd_ref="0",
                cmd="SyncHdr",
                data=str(status),
            )
        ],
        final=True,
    )
    try:
        reply = encode_message(message, encoding)
    except Exception:  # noqa: BLE001 - fall back to XML when WBXML is unavailable
        encoding = Encoding.XML
        reply = encode_message(message, encoding)
    return HttpReply(body=reply, content_type=reply_media_type(media_type_base(content_type), encoding))


__all__ = ["DecodedMessage", "HttpReply", "ServerSettings", "process_request"]
