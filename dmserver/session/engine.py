"""The sans-IO SyncML DM session engine of the server.

:func:`handle` takes one decoded client message, the stored session state and
a :class:`Context` holding everything loaded from the database (device
account, the FOTA job to deliver, a fresh nonce, the current time). It returns
the reply message, the new state and a list of effects for the caller to
store. No reactor, database, clock or random source is used here, so every
path is testable with plain values.

Server side of a FOTA session (OMA DM 1.2 with FUMO 1.0):

- Package 1 from the client: Alert 1201 (or 1200), Replace of ./DevInfo,
  Cred. The server checks the Cred and answers the SyncHdr with 212 and a
  Chal carrying the next nonce, or 401/407 with a Chal (one re-challenge).
- With a queued job, package 2 Gets ./DevDetail/FwV and the FUMO root to
  learn the source version and the FUMO node name.
- Package 4 Replaces <node>/DownloadAndUpdate/PkgURL with the job's download
  descriptor URL and Execs <node>/DownloadAndUpdate with a Correlator.
- The device answers 202, downloads and installs outside the session and
  reports a Generic Alert (1226) later, which closes the job.
- A server message with Final and no command needing a reply ends the
  session.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from ..syncml import auth
from ..syncml.codes import AUTH_BASIC, AUTH_MAC, AUTH_MD5, AlertCode, StatusCode
from ..syncml.model import Chal, Command, Cred, Item, Message, Meta, SyncHdr

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
class Context:
    device: DeviceAccount | None
    server_id: str
    base_url: str
    session_token: str
    new_nonce: bytes
    job: JobOffer | None = None
    hmac: auth.HmacHeader | None = None
    body: bytes = b""


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
class Outcome:
    reply: Message
    state: SessionState
    effects: list[Any]

    @property
    def ended(self) -> bool:
        return self.state.ended


# ---------------------------------------------------------------------------
# The engine


class _Reply:
    """Collects reply commands with CmdIDs numbered from 1 in this message."""

    def __init__(self):
        self.commands: list[Command] = []

    def add(self, command: Command) -> Command:
        command.cmd_id = str(len(self.commands) + 1)
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
            target_refs=[item.target for item in command.items if item.target][:1],
            source_refs=[item.source for item in command.items if item.source][:1],
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

    # Step 1: authenticate the client (or re-check a Cred it sends again).
    hdr_code, chal = _authenticate(message, state, ctx, effects)
    hdr_status = reply.add(
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
        return _finish(message, state, ctx, reply, effects, final=True)
    del hdr_status

    # Step 2: answer every client command in order.
    abort = False
    for command in message.commands:
        abort = _process_client_command(message, command, state, ctx, reply, effects, sent_pending) or abort
    if abort or state.ended:
        state.ended = True
        return _finish(message, state, ctx, reply, effects, final=True)

    # Step 3: a client package spread over several messages: ask for the rest.
    if not message.final:
        reply.add(Command(name="Alert", cmd_id="", data=str(AlertCode.NEXT_MESSAGE)))
        state.pending = {}
        return _finish(message, state, ctx, reply, effects, final=False)

    # Step 4: the server's own commands for this package.
    _plan_server_commands(state, ctx, reply, effects)
    needs_reply = any(command.name != "Status" for command in reply.commands)
    if not needs_reply:
        state.ended = True
    return _finish(message, state, ctx, reply, effects, final=True)


def _finish(message, state, ctx, reply, effects, *, final: bool) -> Outcome:
    header = message.header
    server_cred = None
    if ctx.device is not None and not state.server_accepted and not state.ended:
        nonce = ctx.device.server_nonce if ctx.device.server_nonce is not None else auth.FACTORY_NONCES[0]
        server_cred = Cred(
            type=AUTH_MD5,
            format="b64",
            data=auth.md5_digest(ctx.server_id, ctx.device.server_password, nonce),
        )
    reply_header = SyncHdr(
        ver_dtd=header.ver_dtd,
        ver_proto=header.ver_proto,
        session_id=header.session_id,
        msg_id=str(state.server_msg_id),
        target=header.source,
        source=header.target or ctx.base_url,
        resp_uri=None if state.ended else f"{ctx.base_url}/dm?s={ctx.session_token}",
        cred=server_cred,
    )
    return Outcome(
        reply=Message(header=reply_header, commands=reply.commands, final=final),
        state=state,
        effects=effects,
    )


# ---------------------------------------------------------------------------
# Step 1: authentication


def _authenticate(message: Message, state: SessionState, ctx: Context, effects) -> tuple[int, Chal | None]:
    device = ctx.device
    if device is None:
        effects.append(AuthenticationFailed(f"unknown device {message.header.source!r}"))
        state.auth_failures = MAX_AUTH_FAILURES
        return StatusCode.INVALID_CREDENTIALS, None

    cred = message.header.cred
    if state.authenticated and cred is None and ctx.hmac is None:
        return StatusCode.OK, None

    verdict = _check_credentials(message, state, ctx)
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


def _nonce_candidates(state: SessionState, ctx: Context) -> list[bytes]:
    """Nonces a client may have used: those issued in this session, the stored
    one, and the factory conventions when none was ever issued."""
    candidates = [auth.decode_nonce(text) for text in reversed(state.nonces)]
    stored = ctx.device.client_nonce
    if stored is not None:
        candidates.append(stored)
    else:
        candidates.extend(auth.FACTORY_NONCES)
    return list(dict.fromkeys(candidates))


def _check_credentials(message: Message, state: SessionState, ctx: Context) -> bool | None:
    """Return True when valid, False when invalid, None when missing."""
    device = ctx.device
    scheme = device.auth_scheme
    cred = message.header.cred
    if scheme == AUTH_MAC:
        if ctx.hmac is None:
            return None
        if ctx.hmac.username != device.client_username or ctx.hmac.algorithm.upper() != "MD5":
            return False
        return any(
            auth.digests_equal(
                auth.hmac_mac(device.client_username, device.client_password, nonce, ctx.body),
                ctx.hmac.mac,
            )
            for nonce in _nonce_candidates(state, ctx)
        )
    if cred is None:
        return None
    if cred.type.strip() != scheme:
        return False
    if scheme == AUTH_BASIC:
        parsed = auth.parse_basic_credential(cred.data)
        return parsed == (device.client_username, device.client_password)
    return any(
        auth.digests_equal(
            auth.md5_digest(device.client_username, device.client_password, nonce), cred.data
        )
        for nonce in _nonce_candidates(state, ctx)
    )


# ---------------------------------------------------------------------------
# Step 2: client commands


def _process_client_command(message, command, state, ctx, reply, effects, sent_pending) -> bool:
    """Answer one client command; return True when the client aborts the session."""
    msg_id = message.header.msg_id
    name = command.name
    if name == "Status":
        _on_status(command, state, ctx, effects, sent_pending)
        return False
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
    logger.info("client sent %s, which a server does not execute; answered 406", name)
    return False


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
            effects.append(ServerNonceReceived(auth.decode_nonce(command.chal.next_nonce)))
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
    if purpose in ("replace-pkgurl", "exec-update") and state.job_id is not None:
        effects.append(JobStatusReceived(state.job_id, purpose, code))
        if code not in (StatusCode.OK, StatusCode.ACCEPTED_FOR_PROCESSING):
            state.phase = "failed"
    elif purpose.startswith("get:") and code != StatusCode.OK:
        path = purpose[4:]
        effects.append(TreeValuesReceived({path: (code, None)}))
        if path == FWV_PATH:
            state.fw_version = None
        else:
            state.fumo_children = []


def _on_results(command: Command, state: SessionState, effects, sent_pending) -> None:
    values: dict[str, tuple[int, str | None]] = {}
    for item in command.items:
        path = item.source or item.target
        if not path:
            continue
        value = item.data.decode("utf-8", "replace") if isinstance(item.data, bytes) else item.data
        values[path] = (200, value)
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


def _plan_server_commands(state: SessionState, ctx: Context, reply: _Reply, effects) -> None:
    job = ctx.job
    if state.phase == "start":
        if job is None:
            state.phase = "done"
            return
        state.job_id = job.job_id
        fumo_root = ctx.device.fumo_root
        get_fwv = reply.add(Command(name="Get", cmd_id="", items=[Item(target=FWV_PATH)]))
        get_fumo = reply.add(Command(name="Get", cmd_id="", items=[Item(target=fumo_root)]))
        state.pending = {get_fwv.cmd_id: f"get:{FWV_PATH}", get_fumo.cmd_id: f"get-fumo:{fumo_root}"}
        state.phase = "discover"
        return

    if state.phase == "discover" and job is not None and job.job_id == state.job_id:
        _deliver_job(state, ctx, reply, effects)
        return

    state.phase = "done"


def _deliver_job(state: SessionState, ctx: Context, reply: _Reply, effects) -> None:
    job = ctx.job
    state.phase = "done"
    if not state.fw_version:
        effects.append(JobFailed(job.job_id, "device did not report ./DevDetail/FwV"))
        return
    if state.fw_version == job.target_version:
        effects.append(JobAlreadyAtTarget(job.job_id, state.fw_version))
        return
    if not state.fumo_children:
        effects.append(
            JobFailed(job.job_id, f"device has no FUMO node below {ctx.device.fumo_root}")
        )
        return
    package = choose_package(job.packages, state.model or ctx.device.model, state.fw_version)
    if package is None:
        effects.append(
            JobFailed(
                job.job_id,
                f"no package for model {state.model or ctx.device.model!r} "
                f"to version {job.target_version!r}",
            )
        )
        return
    node = f"{ctx.device.fumo_root.rstrip('/')}/{state.fumo_children[0]}"
    state.fumo_node = node
    descriptor_url = f"{ctx.base_url}/dl/dd/{job.token}"
    replace = reply.add(
        Command(
            name="Replace",
            cmd_id="",
            items=[
                Item(
                    target=f"{node}/DownloadAndUpdate/PkgURL",
                    meta=Meta(format="chr", type="text/plain"),
                    data=descriptor_url,
                )
            ],
        )
    )
    execute = reply.add(
        Command(
            name="Exec",
            cmd_id="",
            correlator=job.token,
            items=[Item(target=f"{node}/DownloadAndUpdate")],
        )
    )
    state.pending = {replace.cmd_id: "replace-pkgurl", execute.cmd_id: "exec-update"}
    state.phase = "delivered"
    effects.append(
        JobDelivered(
            job_id=job.job_id,
            package_id=package.package_id,
            source_version=package.source_version,
            fumo_node=node,
            correlator=job.token,
        )
    )


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
