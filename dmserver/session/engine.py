"""The sans-IO SyncML DM session engine of the server.

:func:`handle` takes one decoded client message, the stored session state and
a :class:`Context` holding everything loaded from the database (device
account, the FOTA job to deliver, a fresh nonce, the current time). It returns
the reply message, the new state and a list of effects for the caller to
store. No reactor, database, clock or random source is used here, so every
path is testable with plain values.

Server side of a FOTA session (OMA DM 1.2 with FUMO 1.0):

- Package 1 from the client: Alert 1201 (or 1200), Replace of ./DevInfo,
  Cred. The server checks the Cred and responds to the SyncHdr with 212 and a
  Chal carrying the next nonce, or 401/407 with a Chal (one re-challenge).
- With a queued job, package 2 Gets ./DevDetail/FwV and the FUMO root to
  learn the source version and the FUMO node name.
- Package 4 Replaces <node>/DownloadAndUpdate/PkgURL with the job's download
  descriptor URL and Execs <node>/DownloadAndUpdate with a Correlator.
- The device responds 202, downloads and installs outside the session and
  reports a Generic Alert (1226) later, which closes the job.
- A server message with Final and no command needing a reply ends the
  session.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..syncml import auth
from ..syncml.codes import AUTH_BASIC, AUTH_MAC, AUTH_MD5, AlertCode, StatusCode
from ..syncml.model import Chal, Command, Cred, Item, Message, Meta, SyncHdr
from ..campaign import policy as policy_rules
from .paging import Fitter, LargeObject, Planned

logger = logging.getLogger(__name__)

FWV_PATH = "./DevDetail/FwV"
DEVINFO_PREFIX = "./DevInfo/"
# The alert types of FUMO 1.0 Generic Alerts; some clients prefix them with
# "Reversed-Domain-Name:".
FUMO_ALERT_PREFIX = "org.openmobilealliance.dm.firmwareupdate."
REVERSED_DOMAIN_PREFIX = "Reversed-Domain-Name:"
# Statuses the server sends per client command it does not act on.
CLIENT_COMMANDS_NOT_SUPPORTED = frozenset({"Get", "Exec", "Delete", "Copy", "Atomic", "Sequence"})
# Number of failed authentications after which the session ends (the first
# failure is re-challenged once).
MAX_AUTH_FAILURES = 2
# Purposes of server commands whose failure fails the job being delivered.
JOB_PURPOSES = frozenset({"replace-pkgurl", "replace-pkgdata", "exec-update"})


# ---------------------------------------------------------------------------
# Inputs


@dataclass
class DeviceAccount:
    device_id: str
    client_username: str
    client_password: str
    server_password: str
    auth_scheme: str = AUTH_MD5
    client_nonce: bytes | None = None
    server_nonce: bytes | None = None
    fumo_root: str = "./FUMO"
    model: str | None = None
    delivery: str = "download"  # or "inband": Update/PkgData in the session
    nonce_form: str | None = None  # "decoded" or "base64-text", once seen


@dataclass
class PackageOffer:
    package_id: int
    model: str
    source_version: str | None  # None for a full image
    payload_type: str
    size: int


@dataclass
class JobOffer:
    job_id: int
    token: str
    target_version: str
    packages: list[PackageOffer] = field(default_factory=list)


@dataclass
class ManagementRequest:
    request_id: int
    commands: list[Command]


@dataclass
class Context:
    device: DeviceAccount | None
    server_id: str
    base_url: str
    session_token: str
    new_nonce: bytes
    job: JobOffer | None = None
    hmac: auth.HmacHeader | None = None
    body: bytes = b""
    # Encoder of the request's encoding, used to measure reply sizes against
    # the client's MaxMsgSize; None sends every reply whole.
    encode: Callable[[Message], bytes] | None = None
    # Reads length bytes at offset of a stored object such as "package:12".
    read_object: Callable[[str, int, int], bytes] | None = None
    server_max_msg_size: int = 1_048_576
    server_max_obj_size: int = 4_194_304
    # Operator management requests to send in this session.
    management: list[ManagementRequest] = field(default_factory=list)
    # Campaign device policy (battery, storage, bearer) checked before Exec.
    policy: Any = None


@dataclass
class SessionState:
    """Everything the engine remembers between messages of one session."""

    device_id: str = ""
    session_id: str = ""
    server_msg_id: int = 0
    authenticated: bool = False
    auth_failures: int = 0
    server_auth_failures: int = 0
    server_accepted: bool = False
    phase: str = "start"
    # CmdID of each server command sent in the last message -> its purpose.
    pending: dict[str, str] = field(default_factory=dict)
    job_id: int | None = None
    fw_version: str | None = None
    model: str | None = None
    fumo_children: list[str] | None = None
    fumo_node: str | None = None
    nonces: list[str] = field(default_factory=list)  # base64 of issued nonces
    ended: bool = False
    client_max_msg_size: int | None = None
    client_max_obj_size: int | None = None
    # Server commands that did not fit in earlier messages (Planned.to_json).
    outbox: list[dict] = field(default_factory=list)
    # A large object being sent (LargeObject.to_json) or received.
    large_out: dict | None = None
    large_in: dict | None = None
    client_auth_scheme: str | None = None
    mgmt_ids: list[int] = field(default_factory=list)
    # Policy node path -> [status, value] read before the Exec.
    policy_values: dict[str, list] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SessionState:
        return cls(**(data or {}))


# ---------------------------------------------------------------------------
# Effects: what the caller stores after a message


@dataclass
class ClientNonceIssued:
    nonce: bytes


@dataclass
class ServerNonceReceived:
    nonce: bytes


@dataclass
class DeviceInfoReceived:
    values: dict[str, str]


@dataclass
class TreeValuesReceived:
    values: dict[str, tuple[int, str | None]]  # path -> (status, value)


@dataclass
class NonceFormDetected:
    form: str  # "decoded" or "base64-text"


@dataclass
class AuthenticationFailed:
    reason: str


@dataclass
class JobDelivered:
    job_id: int
    package_id: int
    source_version: str | None
    fumo_node: str
    correlator: str


@dataclass
class JobStatusReceived:
    """The device's Status for the job's Replace or Exec."""

    job_id: int
    command: str
    status: int


@dataclass
class JobFailed:
    job_id: int
    reason: str


@dataclass
class JobDeferred:
    """A device policy check failed: try the job again later, do not fail it."""

    job_id: int
    reason: str
    detail: str


@dataclass
class JobAlreadyAtTarget:
    job_id: int
    version: str


@dataclass
class GenericAlertReceived:
    correlator: str | None
    source: str | None
    alert_type: str | None
    data: str | None


@dataclass
class ManagementSent:
    request_id: int


@dataclass
class ManagementResult:
    """One Status or Results of a management request, as the client sent it."""

    request_id: int
    kind: str  # "Status" or "Results"
    cmd: str | None
    code: int | None
    target: str | None
    items: list[dict]


@dataclass
class ManagementCompleted:
    request_id: int


@dataclass
class Outcome:
    reply: Message
    state: SessionState
    effects: list[Any]

    @property
    def ended(self) -> bool:
        return self.state.ended


# ---------------------------------------------------------------------------
# The engine


def number_commands(commands: list[Command], start: int) -> int:
    """Give CmdIDs in document order, nested Atomic and Sequence commands
    included (CmdIDs are unique within a message); return the next one."""
    for command in commands:
        command.cmd_id = str(start)
        start = number_commands(command.commands, start + 1)
    return start


class _Reply:
    """Collects reply commands with CmdIDs numbered from 1 in this message."""

    def __init__(self):
        self.commands: list[Command] = []
        self.next_id = 1

    def add(self, command: Command) -> Command:
        self.next_id = number_commands([command], self.next_id)
        self.commands.append(command)
        return command

    def status(self, msg_id: str, command: Command, code: int, **extra) -> Command:
        status = Command(
            name="Status",
            cmd_id="",
            msg_ref=msg_id,
            cmd_ref=command.cmd_id,
            cmd=command.name,
            data=str(int(code)),
            # One Status for several Items carries no TargetRef or SourceRef
            # (SyncML Representation Protocol, Status element).
            target_refs=[item.target for item in command.items if item.target][:1] if len(command.items) == 1 else [],
            source_refs=[item.source for item in command.items if item.source][:1] if len(command.items) == 1 else [],
            **extra,
        )
        return self.add(status)


def handle(message: Message, state: SessionState | None, ctx: Context) -> Outcome:
    """Process one client message; return the reply, new state and effects."""
    header = message.header
    state = state or SessionState(device_id=header.source, session_id=header.session_id)
    effects: list[Any] = []
    reply = _Reply()
    state.server_msg_id += 1
    sent_pending, state.pending = state.pending, {}
    _note_client_limits(message, state)

    # Step 1: authenticate the client (or re-check a Cred it sends again).
    hdr_code, chal = _authenticate(message, state, ctx, effects)
    reply.add(
        Command(
            name="Status",
            cmd_id="",
            msg_ref=header.msg_id,
            cmd_ref="0",
            cmd="SyncHdr",
            target_refs=[header.target] if header.target else [],
            source_refs=[header.source],
            chal=chal,
            data=str(hdr_code),
        )
    )
    if hdr_code not in (StatusCode.OK, StatusCode.AUTHENTICATION_ACCEPTED):
        # No command of an unauthenticated message is executed.
        if state.auth_failures >= MAX_AUTH_FAILURES or ctx.device is None:
            state.ended = True
        # After a re-challenge the client sends its package again.
        return _finish(message, state, ctx, reply, effects, keep_open=not state.ended)

    # Step 2: respond to every client command in order.
    abort = False
    for command in message.commands:
        abort = _process_client_command(message, command, state, ctx, reply, effects, sent_pending) or abort
    if abort or state.ended:
        state.ended = True
        return _finish(message, state, ctx, reply, effects)

    # Step 3: a client package spread over several messages: ask for the rest.
    if not message.final:
        reply.add(Command(name="Alert", cmd_id="", data=str(AlertCode.NEXT_MESSAGE)))
        return _finish(message, state, ctx, reply, effects, more_from_client=True)

    # Step 4: continue a large object or queued commands, else plan new ones.
    large = LargeObject.from_json(state.large_out) if state.large_out else None
    if large is not None and large.awaiting_ack:
        # The client has not acknowledged the last chunk: do not send more.
        return _finish(message, state, ctx, reply, effects, large=large, hold=True)
    if large is not None or state.outbox:
        planned = [Planned.from_json(entry) for entry in state.outbox]
    else:
        planned = _plan_server_commands(state, ctx, effects)
    return _finish(message, state, ctx, reply, effects, planned=planned, large=large)


def _note_client_limits(message: Message, state: SessionState) -> None:
    meta = message.header.meta
    if meta is None:
        return
    if meta.max_msg_size:
        state.client_max_msg_size = meta.max_msg_size
    if meta.max_obj_size:
        state.client_max_obj_size = meta.max_obj_size


def _reply_header(message: Message, state: SessionState, ctx: Context, ended: bool) -> SyncHdr:
    header = message.header
    server_cred = None
    uses_mac = state.client_auth_scheme == AUTH_MAC or (
        ctx.device is not None and ctx.device.auth_scheme == AUTH_MAC
    )
    # The server's Cred goes in every message until the client accepts it,
    # the last message of a session included: clients check it there too.
    if ctx.device is not None and not state.server_accepted and not uses_mac:
        nonce = ctx.device.server_nonce if ctx.device.server_nonce is not None else auth.FACTORY_NONCES[0]
        server_cred = Cred(
            type=AUTH_MD5,
            format="b64",
            data=auth.md5_digest(ctx.server_id, ctx.device.server_password, nonce),
        )
    meta = None
    if state.server_msg_id == 1:
        meta = Meta(max_msg_size=ctx.server_max_msg_size, max_obj_size=ctx.server_max_obj_size)
    return SyncHdr(
        ver_dtd=header.ver_dtd,
        ver_proto=header.ver_proto,
        session_id=header.session_id,
        msg_id=str(state.server_msg_id),
        target=header.source,
        source=header.target or ctx.base_url,
        resp_uri=None if ended else f"{ctx.base_url}/dm?s={ctx.session_token}",
        cred=server_cred,
        meta=meta,
    )


def _finish(
    message: Message,
    state: SessionState,
    ctx: Context,
    reply: _Reply,
    effects: list,
    *,
    planned: list[Planned] | None = None,
    large: LargeObject | None = None,
    more_from_client: bool = False,
    hold: bool = False,
    keep_open: bool = False,
) -> Outcome:
    """Fit the planned commands under the client's MaxMsgSize and build the reply."""
    header = _reply_header(message, state, ctx, ended=False)

    def measure(commands: list[Command]) -> int:
        number_commands(commands, 1)
        return len(ctx.encode(Message(header=header, commands=commands, final=True)))

    complete = True
    if not state.ended and not hold and (planned or large is not None):
        fitter = Fitter(
            measure=measure,
            limit=state.client_max_msg_size if ctx.encode is not None else None,
            max_obj_size=state.client_max_obj_size,
            read_object=ctx.read_object,
        )
        result = fitter.fit(reply.commands, planned or [], large)
        for command, purpose in result.placed:
            reply.add(command)
            if purpose:
                for part in command.walk():
                    state.pending[part.cmd_id] = purpose
        for dropped, reason in result.dropped:
            _command_not_sent(dropped, reason, state, effects)
        state.outbox = [entry.to_json() for entry in result.outbox]
        state.large_out = result.large.to_json() if result.large else None
        complete = result.complete
    elif hold:
        complete = False

    needs_reply = any(command.name != "Status" for command in reply.commands)
    final = complete and not more_from_client
    if final and not needs_reply and not state.large_in and not keep_open:
        state.ended = True
    if state.ended:
        header = _reply_header(message, state, ctx, ended=True)
        final = True
    return Outcome(
        reply=Message(header=header, commands=reply.commands, final=final),
        state=state,
        effects=effects,
    )


def _command_not_sent(planned: Planned, reason: str, state: SessionState, effects: list) -> None:
    logger.warning("server command %s not sent: %s", planned.command.name, reason)
    if planned.purpose and planned.purpose.startswith("mgmt:"):
        items = planned.command.items
        effects.append(
            ManagementResult(
                request_id=int(planned.purpose.split(":", 1)[1]),
                kind="NotSent",
                cmd=planned.command.name,
                code=StatusCode.REQUEST_ENTITY_TOO_LARGE,
                target=items[0].target if items else None,
                items=[{"reason": reason}],
            )
        )
    if planned.purpose in JOB_PURPOSES and state.job_id is not None:
        effects.append(JobFailed(state.job_id, reason))
        state.outbox = []
        state.phase = "failed"


# ---------------------------------------------------------------------------
# Step 1: authentication


def _authenticate(message: Message, state: SessionState, ctx: Context, effects) -> tuple[int, Chal | None]:
    device = ctx.device
    if device is None:
        effects.append(AuthenticationFailed(f"unknown device {message.header.source!r}"))
        state.auth_failures = MAX_AUTH_FAILURES
        return StatusCode.INVALID_CREDENTIALS, None

    cred = message.header.cred
    if state.authenticated and cred is None and device.auth_scheme != AUTH_MAC:
        return StatusCode.OK, None
    # auth-MAC protects every message: each one carries and must verify a MAC.

    verdict = _check_credentials(message, state, ctx, effects)
    if verdict is True and state.authenticated:
        # Credentials repeated in a later message of an authenticated
        # session: the nonce in use stays valid.
        return StatusCode.OK, None
    if verdict is True:
        state.authenticated = True
        state.auth_failures = 0
        return StatusCode.AUTHENTICATION_ACCEPTED, _issue_chal(state, ctx, effects)

    state.authenticated = False
    state.auth_failures += 1
    missing = verdict is None
    effects.append(
        AuthenticationFailed("credentials missing" if missing else "credentials invalid")
    )
    code = StatusCode.MISSING_CREDENTIALS if missing else StatusCode.INVALID_CREDENTIALS
    if state.auth_failures >= MAX_AUTH_FAILURES:
        return code, None
    return code, _issue_chal(state, ctx, effects)


def _issue_chal(state: SessionState, ctx: Context, effects) -> Chal:
    effects.append(ClientNonceIssued(ctx.new_nonce))
    encoded = auth.encode_nonce(ctx.new_nonce)
    state.nonces = (state.nonces + [encoded])[-2:]
    return Chal(type=ctx.device.auth_scheme, format="b64", next_nonce=encoded)


def _nonce_candidates(state: SessionState, ctx: Context) -> list[tuple[bytes, str]]:
    """Nonces a client may have used, each with its form.

    The digest takes the decoded NextNonce bytes; some clients hash the
    base64 text instead ("base64-text"). Nonces issued in this session come
    first, then the stored one, then the factory nonces when none was ever
    issued to the device.
    """
    issued = [auth.decode_nonce(text) for text in reversed(state.nonces)]
    stored = ctx.device.client_nonce
    if stored is not None:
        issued.append(stored)
    candidates: list[tuple[bytes, str]] = []
    for nonce in dict.fromkeys(issued):
        candidates.append((nonce, "decoded"))
        candidates.append((auth.encode_nonce(nonce).encode("ascii"), "base64-text"))
    if stored is None:
        candidates.extend((nonce, "factory") for nonce in auth.FACTORY_NONCES)
    preferred = ctx.device.nonce_form
    if preferred:
        candidates.sort(key=lambda pair: pair[1] != preferred)
    return candidates


def _check_credentials(message: Message, state: SessionState, ctx: Context, effects) -> bool | None:
    """Return True when valid, False when invalid, None when missing."""
    device = ctx.device
    scheme = device.auth_scheme
    cred = message.header.cred
    if scheme == AUTH_MAC:
        if ctx.hmac is None:
            return None
        state.client_auth_scheme = AUTH_MAC
        if ctx.hmac.username != device.client_username or ctx.hmac.algorithm.upper() != "MD5":
            return False

        def digest(nonce: bytes) -> str:
            return auth.hmac_mac(device.client_username, device.client_password, nonce, ctx.body)

        received = ctx.hmac.mac
    else:
        if cred is None:
            return None
        state.client_auth_scheme = cred.type.strip()
        if cred.type.strip() != scheme:
            return False
        if scheme == AUTH_BASIC:
            return auth.basic_credential_matches(cred.data, device.client_username, device.client_password)

        def digest(nonce: bytes) -> str:
            return auth.md5_digest(device.client_username, device.client_password, nonce)

        received = cred.data
    for nonce, form in _nonce_candidates(state, ctx):
        if auth.digests_equal(digest(nonce), received):
            if form != "factory" and form != device.nonce_form:
                logger.info("device %s computes its digest over the %s nonce", device.device_id, form)
                effects.append(NonceFormDetected(form))
            elif form == "factory":
                logger.info("device %s used a factory nonce", device.device_id)
            return True
    return False


# ---------------------------------------------------------------------------
# Step 2: client commands


def _process_client_command(message, command, state, ctx, reply, effects, sent_pending) -> bool:
    """Respond to one client command; return True when the client aborts the session."""
    msg_id = message.header.msg_id
    name = command.name
    if name == "Status":
        _on_status(command, state, ctx, effects, sent_pending)
        return False
    if name in ("Replace", "Add", "Results"):
        command = _reassemble(command, state, ctx, reply, msg_id)
        if command is None:
            return False
    elif state.large_in is not None:
        _interrupt_large_in(state, reply)
    if name == "Results":
        _on_results(command, state, effects, sent_pending)
        return False
    if name == "Alert":
        code = _on_alert(command, effects)
        if not command.no_resp:
            reply.status(msg_id, command, code)
        return command.data == str(AlertCode.SESSION_ABORT)
    if name in ("Replace", "Add"):
        values = {
            item.source or item.target: item.data
            for item in command.items
            if (item.source or item.target) and isinstance(item.data, str)
        }
        devinfo = {
            path[len(DEVINFO_PREFIX):]: value
            for path, value in values.items()
            if path.startswith(DEVINFO_PREFIX)
        }
        if devinfo:
            effects.append(DeviceInfoReceived(devinfo))
            if devinfo.get("Mod"):
                state.model = devinfo["Mod"]
        other = {path: (200, value) for path, value in values.items() if not path.startswith(DEVINFO_PREFIX)}
        if other:
            effects.append(TreeValuesReceived(other))
        if not command.no_resp:
            reply.status(msg_id, command, StatusCode.OK)
        return False
    if not command.no_resp:
        reply.status(msg_id, command, StatusCode.OPTIONAL_FEATURE_NOT_SUPPORTED)
    logger.info("client sent %s, which a server does not execute; responded 406", name)
    return False


def _interrupt_large_in(state: SessionState, reply: _Reply) -> None:
    """Another command arrived before the last chunk: Alert 1225, drop the object."""
    key = state.large_in["key"]
    logger.info("large object %s interrupted by another command; sent Alert 1225", key)
    reply.add(
        Command(name="Alert", cmd_id="", data=str(AlertCode.NO_END_OF_DATA), items=[Item(target=key)])
    )
    state.large_in = None


def _reassemble(command: Command, state: SessionState, ctx: Context, reply: _Reply, msg_id: str) -> Command | None:
    """Collect chunks of a large object; return the whole command when complete.

    The Status of each Replace or Add chunk is 213, of the last one 200, or
    424 when the total differs from the Meta Size of the first chunk. An
    object above the server's MaxObjSize gets 413.
    """
    item = command.items[0] if len(command.items) == 1 else None
    key = (item.source or item.target) if item else None
    pending = state.large_in
    if pending is not None and (item is None or key != pending["key"] or command.name != pending["name"]):
        _interrupt_large_in(state, reply)
        pending = None
    if item is None or (pending is None and not item.more_data):
        return command

    chunk = item.data.encode("utf-8") if isinstance(item.data, str) else (item.data or b"")
    answers = command.name != "Results" and not command.no_resp
    if pending is None:
        declared = item.meta.size if item.meta else None
        if declared is None:
            if answers:
                reply.status(msg_id, command, StatusCode.INCOMPLETE_COMMAND)
            return None
        if declared > ctx.server_max_obj_size:
            if answers:
                reply.status(msg_id, command, StatusCode.REQUEST_ENTITY_TOO_LARGE)
            return None
        pending = state.large_in = {
            "key": key,
            "name": command.name,
            "size": declared,
            "data": "",
            "text": isinstance(item.data, str),
            "meta": asdict(item.meta) if item.meta else None,
        }
    collected = base64.b64decode(pending["data"]) + chunk
    if len(collected) > pending["size"] or len(collected) > ctx.server_max_obj_size:
        state.large_in = None
        code = StatusCode.SIZE_MISMATCH if len(collected) > pending["size"] else StatusCode.REQUEST_ENTITY_TOO_LARGE
        logger.info("large object %s: %d bytes so far, Meta Size %d; responded %d", key, len(collected), pending["size"], code)
        if answers:
            reply.status(msg_id, command, code)
        return None
    if item.more_data:
        pending["data"] = base64.b64encode(collected).decode("ascii")
        if answers:
            reply.status(msg_id, command, StatusCode.CHUNKED_ITEM_ACCEPTED)
        return None

    state.large_in = None
    if len(collected) != pending["size"]:
        logger.info("large object %s: %d bytes received, Meta Size %d", key, len(collected), pending["size"])
        if answers:
            reply.status(msg_id, command, StatusCode.SIZE_MISMATCH)
        return None
    whole = Item(
        target=item.target,
        source=item.source,
        meta=Meta(**pending["meta"]) if pending["meta"] else item.meta,
        data=collected.decode("utf-8", "replace") if pending["text"] else collected,
    )
    return Command(
        name=command.name,
        cmd_id=command.cmd_id,
        msg_ref=command.msg_ref,
        cmd_ref=command.cmd_ref,
        meta=command.meta,
        no_resp=command.no_resp,
        items=[whole],
    )


def _on_alert(command: Command, effects) -> int:
    code = (command.data or "").strip()
    if code in (str(AlertCode.CLIENT_INITIATED_MGMT), str(AlertCode.SERVER_INITIATED_MGMT)):
        return StatusCode.OK
    if code in (str(AlertCode.NEXT_MESSAGE), str(AlertCode.SESSION_ABORT)):
        return StatusCode.OK
    if code == str(AlertCode.GENERIC_ALERT):
        for item in command.items:
            alert_type = item.meta.type if item.meta else None
            if alert_type and alert_type.startswith(REVERSED_DOMAIN_PREFIX):
                alert_type = alert_type[len(REVERSED_DOMAIN_PREFIX):].strip()
            data = item.data.decode("utf-8", "replace") if isinstance(item.data, bytes) else item.data
            effects.append(
                GenericAlertReceived(
                    correlator=command.correlator,
                    source=item.source,
                    alert_type=alert_type,
                    data=data,
                )
            )
        return StatusCode.OK
    return StatusCode.OPTIONAL_FEATURE_NOT_SUPPORTED


def _on_status(command: Command, state: SessionState, ctx: Context, effects, sent_pending) -> None:
    try:
        code = int((command.data or "").strip())
    except ValueError:
        code = 0
    if command.cmd_ref == "0":
        # The client's verdict on the server's credentials.
        if command.chal is not None and command.chal.next_nonce:
            nonce = auth.decode_nonce(command.chal.next_nonce)
            effects.append(ServerNonceReceived(nonce))
            if ctx.device is not None:
                # The Cred of the reply being built must use the new nonce.
                ctx.device.server_nonce = nonce
        if code in (StatusCode.OK, StatusCode.AUTHENTICATION_ACCEPTED):
            state.server_accepted = True
        elif code in (StatusCode.INVALID_CREDENTIALS, StatusCode.MISSING_CREDENTIALS):
            state.server_accepted = False
            state.server_auth_failures += 1
            if state.server_auth_failures >= MAX_AUTH_FAILURES:
                logger.warning("device %s rejected the server credentials twice", state.device_id)
                state.ended = True
        return
    purpose = sent_pending.get(command.cmd_ref or "")
    if purpose is None:
        return
    if purpose.startswith("mgmt:"):
        effects.append(
            ManagementResult(
                request_id=int(purpose.split(":", 1)[1]),
                kind="Status",
                cmd=command.cmd,
                code=code,
                target=(command.target_refs or [None])[0],
                items=[_item_json(item) for item in command.items],
            )
        )
    elif purpose == "chunk":
        _on_chunk_status(code, state, effects)
    elif purpose in JOB_PURPOSES and state.job_id is not None:
        effects.append(JobStatusReceived(state.job_id, purpose, code))
        if code not in (StatusCode.OK, StatusCode.ACCEPTED_FOR_PROCESSING):
            state.phase = "failed"
            state.outbox = []
    elif purpose.startswith("get-policy:"):
        path = purpose.split(":", 1)[1]
        if code != StatusCode.OK:
            state.policy_values[path] = [code, None]
    elif purpose.startswith(("get:", "get-fumo:")) and code != StatusCode.OK:
        path = purpose.split(":", 1)[1]
        effects.append(TreeValuesReceived({path: (code, None)}))
        if path == FWV_PATH:
            state.fw_version = None
        else:
            state.fumo_children = []


def _on_chunk_status(code: int, state: SessionState, effects) -> None:
    """213 lets the next chunk go; anything else abandons the large object."""
    if state.large_out is None:
        return
    if code == StatusCode.CHUNKED_ITEM_ACCEPTED:
        state.large_out["awaiting_ack"] = False
        return
    purpose = state.large_out["planned"].get("purpose")
    logger.info("client responded to a chunk with %s; large object abandoned", code)
    state.large_out = None
    state.outbox = []
    if purpose in JOB_PURPOSES and state.job_id is not None:
        effects.append(JobStatusReceived(state.job_id, purpose, code))
        state.phase = "failed"


def _item_json(item: Item) -> dict:
    data = item.data
    if isinstance(data, bytes):
        data = {"b64": base64.b64encode(data).decode("ascii")}
    entry = {"source": item.source, "target": item.target, "data": data}
    if item.meta is not None and item.meta.format:
        entry["format"] = item.meta.format
    if item.meta is not None and item.meta.type:
        entry["type"] = item.meta.type
    if item.meta is not None and (item.meta.format or "").lower() == "node" and isinstance(item.data, str):
        # Child names of an interior node, percent-decoded.
        entry["children"] = [_percent_decode(name) for name in item.data.split("/") if name]
    return entry


def _on_results(command: Command, state: SessionState, effects, sent_pending) -> None:
    purpose = sent_pending.get(command.cmd_ref or "", "")
    if purpose.startswith("mgmt:"):
        effects.append(
            ManagementResult(
                request_id=int(purpose.split(":", 1)[1]),
                kind="Results",
                cmd="Get",
                code=None,
                target=None,
                items=[_item_json(item) for item in command.items],
            )
        )
    values: dict[str, tuple[int, str | None]] = {}
    for item in command.items:
        path = item.source or item.target
        if not path:
            continue
        value = item.data.decode("utf-8", "replace") if isinstance(item.data, bytes) else item.data
        values[path] = (200, value)
        if sent_pending and f"get-policy:{path}" in sent_pending.values():
            state.policy_values[path] = [200, value]
        if path == FWV_PATH:
            state.fw_version = (value or "").strip()
        elif state.fumo_children is None and ctx_path_is_fumo_root(path, sent_pending):
            state.fumo_children = [
                _percent_decode(name) for name in (value or "").split("/") if name
            ]
    if values:
        effects.append(TreeValuesReceived(values))


def ctx_path_is_fumo_root(path: str, sent_pending: dict[str, str]) -> bool:
    return f"get-fumo:{path}" in sent_pending.values()


def _percent_decode(name: str) -> str:
    from urllib.parse import unquote

    return unquote(name)


# ---------------------------------------------------------------------------
# Step 4: what the server sends next


def _plan_server_commands(state: SessionState, ctx: Context, effects) -> list[Planned]:
    job = ctx.job
    if state.phase == "mgmt":
        for request_id in state.mgmt_ids:
            effects.append(ManagementCompleted(request_id))
        state.mgmt_ids = []
        state.phase = "start"
        ctx.management = []
    if state.phase == "start" and ctx.management:
        planned = []
        for request in ctx.management:
            effects.append(ManagementSent(request.request_id))
            state.mgmt_ids.append(request.request_id)
            for command in request.commands:
                planned.append(Planned(command, f"mgmt:{request.request_id}"))
        state.phase = "mgmt"
        return planned
    if state.phase == "start":
        if job is None:
            state.phase = "done"
            return []
        state.job_id = job.job_id
        fumo_root = ctx.device.fumo_root
        state.phase = "discover"
        planned = [
            Planned(Command(name="Get", cmd_id="", items=[Item(target=FWV_PATH)]), f"get:{FWV_PATH}"),
            Planned(Command(name="Get", cmd_id="", items=[Item(target=fumo_root)]), f"get-fumo:{fumo_root}"),
        ]
        if ctx.policy is not None:
            model = state.model or ctx.device.model
            for path in policy_rules.nodes_to_read(ctx.policy, model):
                get = Command(name="Get", cmd_id="", items=[Item(target=path)])
                planned.append(Planned(get, f"get-policy:{path}"))
        return planned

    if state.phase == "discover" and job is not None and job.job_id == state.job_id:
        return _deliver_job(state, ctx, effects)

    state.phase = "done"
    return []


def _deliver_job(state: SessionState, ctx: Context, effects) -> list[Planned]:
    """Plan the FUMO commands of the job, or record why it cannot be delivered."""
    job = ctx.job
    state.phase = "done"
    if not state.fw_version:
        effects.append(JobFailed(job.job_id, "device did not report ./DevDetail/FwV"))
        return []
    if state.fw_version == job.target_version:
        effects.append(JobAlreadyAtTarget(job.job_id, state.fw_version))
        return []
    if not state.fumo_children:
        effects.append(
            JobFailed(job.job_id, f"device has no FUMO node below {ctx.device.fumo_root}")
        )
        return []
    model = state.model or ctx.device.model
    package = choose_package(job.packages, model, state.fw_version)
    if package is None:
        effects.append(
            JobFailed(job.job_id, f"no package for model {model!r} to version {job.target_version!r}")
        )
        return []
    writes: list[Planned] = []
    if ctx.policy is not None:
        values = {path: (entry[0], entry[1]) for path, entry in state.policy_values.items()}
        verdict = policy_rules.evaluate(ctx.policy, model, values, package.size)
        if not verdict.allowed:
            effects.append(JobDeferred(job.job_id, verdict.reason, verdict.detail))
            return []
        for write in verdict.writes:
            replace = Command(
                name="Replace",
                cmd_id="",
                items=[Item(target=write.path, meta=Meta(format=write.format), data=write.value)],
            )
            writes.append(Planned(replace, "policy-write"))
    node = f"{ctx.device.fumo_root.rstrip('/')}/{state.fumo_children[0]}"
    state.fumo_node = node
    if ctx.device.delivery == "inband":
        planned = _inband_commands(node, package, job, state)
        if planned is None:
            effects.append(
                JobFailed(
                    job.job_id,
                    f"package of {package.size} bytes is above the device's MaxObjSize "
                    f"{state.client_max_obj_size}",
                )
            )
            return []
    else:
        planned = _download_commands(node, job, ctx)
    planned = writes + planned
    state.phase = "delivered"
    effects.append(
        JobDelivered(
            job_id=job.job_id,
            package_id=package.package_id,
            source_version=state.fw_version,
            fumo_node=node,
            correlator=job.token,
        )
    )
    return planned


def _download_commands(node: str, job: JobOffer, ctx: Context) -> list[Planned]:
    """DownloadAndUpdate: the device fetches the package through the descriptor."""
    replace = Command(
        name="Replace",
        cmd_id="",
        items=[
            Item(
                target=f"{node}/DownloadAndUpdate/PkgURL",
                meta=Meta(format="chr", type="text/plain"),
                data=f"{ctx.base_url}/dl/dd/{job.token}",
            )
        ],
    )
    execute = Command(
        name="Exec",
        cmd_id="",
        correlator=job.token,
        items=[Item(target=f"{node}/DownloadAndUpdate")],
    )
    return [Planned(replace, "replace-pkgurl"), Planned(execute, "exec-update")]


def _inband_commands(node: str, package: PackageOffer, job: JobOffer, state: SessionState) -> list[Planned] | None:
    """Update: the package travels in the session as Update/PkgData, in chunks."""
    if state.client_max_obj_size is not None and package.size > state.client_max_obj_size:
        return None
    replace = Command(
        name="Replace",
        cmd_id="",
        items=[
            Item(
                target=f"{node}/Update/PkgData",
                meta=Meta(format="bin", type="application/octet-stream"),
                data=b"",
            )
        ],
    )
    execute = Command(
        name="Exec",
        cmd_id="",
        correlator=job.token,
        items=[Item(target=f"{node}/Update")],
    )
    return [
        Planned(replace, "replace-pkgdata", source=f"package:{package.package_id}", size=package.size),
        Planned(execute, "exec-update"),
    ]


def choose_package(packages: list[PackageOffer], model: str | None, source_version: str) -> PackageOffer | None:
    """Pick the delta from ``source_version``; fall back to the full image."""
    candidates = [p for p in packages if model is None or p.model == model]
    for package in candidates:
        if package.payload_type == "delta" and package.source_version == source_version:
            return package
    for package in candidates:
        if package.payload_type == "full":
            return package
    return None
