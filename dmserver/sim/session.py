"""The phone's side of SyncML DM sessions, and the loop that runs them.

:class:`ClientSession` is the DM client engine. It does no I/O: ``start``
returns the first message (package 1) as bytes to POST, and ``receive``
takes each server reply and returns the next message, or None when the
session is over. A session runs like this (OMA DM Protocol 1.2):

- Package 1: SyncHdr with a new SessionID, Source LocURI = device id, Meta
  MaxMsgSize/MaxObjSize and the client credentials; Alert 1201 (1200 for a
  session a server notification asked for); Replace of the ./DevInfo
  leaves; a Generic Alert (1226) for every FUMO result not yet delivered.
- Each server reply: its SyncHdr Status shows whether the phone is
  authenticated (200/212). At 401 or 407 with a Chal the phone resends
  package 1 once, with a credential made from the NextNonce. The phone
  checks the server's credential against the nonce it issued and returns
  212 (with a Chal carrying the next server nonce) or 401/407. It aborts
  after a second failure.
- The phone sends a Status (MsgRef, CmdRef, Cmd, TargetRef) for every
  server command and Results for a Get, and queues an accepted FUMO Exec.
- The session ends when a server message has Final and no command that
  needs a reply. A message without Final is answered with Alert 1222 (next
  message); chunked items (MoreData) are answered with 213 until complete.

:func:`run_session` drives one session over HTTP, and :func:`run_until_idle`
alternates sessions and FUMO work until nothing is left to do.

Example::

    phone = Phone.load(Path("state"))
    report = run_until_idle(phone, "http://127.0.0.1:8080/dm", RunOptions())
    report.reported_codes       # [200] after one successful update
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import logging
import secrets
from dataclasses import dataclass, field
from typing import Mapping, Protocol

from ..syncml import auth
from ..syncml.codec import CodecError, Encoding, decode_message, encode_message
from ..syncml.codes import (
    AUTH_BASIC,
    AUTH_MAC,
    AUTH_MD5,
    AlertCode,
    StatusCode,
    is_success,
)
from ..syncml.model import Chal, Command, Cred, Item, Message, Meta, SyncHdr
from ..syncml.names import MEDIA_TYPE_DM_WBXML, MEDIA_TYPE_DM_XML
from .download import HttpError, UpdateOptions, open_http, perform_fumo_job
from .phone import BINARY_FORMATS, FORMAT_NODE, FumoReport, Node, Phone

logger = logging.getLogger(__name__)

# Feature phones advertise about 9,000 bytes as MaxMsgSize.
DEFAULT_MAX_MSG_SIZE = 9000
# Largest object (one Item, possibly sent in chunks) the phone accepts; room
# for an inline Update/PkgData of the fixture images.
DEFAULT_MAX_OBJ_SIZE = 1024 * 1024
# A session that has not ended after this many messages is treated as a
# server that loops.
MAX_MESSAGES_PER_SESSION = 50
# The phone aborts the session at the second server credential it rejects.
MAX_SERVER_AUTH_FAILURES = 2
DEFAULT_MAX_SESSIONS = 10
HTTP_TIMEOUT_SECONDS = 60.0
# Largest HTTP reply read from the DM server; larger ones are an error even
# before the MaxMsgSize check.
MAX_REPLY_SIZE = 4 * 1024 * 1024

HMAC_HEADER = "x-syncml-hmac"
SYNCHDR_CMD_REF = "0"
AUTH_TYPE_BY_SCHEME = {"md5": AUTH_MD5, "basic": AUTH_BASIC, "hmac": AUTH_MAC}
SCHEME_BY_AUTH_TYPE = {
    auth_type.lower(): scheme for scheme, auth_type in AUTH_TYPE_BY_SCHEME.items()
}
PROTOCOL_BY_DM_VERSION = {"1.2": ("1.2", "DM/1.2"), "1.1.2": ("1.1", "DM/1.1")}
# User interaction alerts the phone accepts. The simulated user confirms
# and picks the first choice.
USER_INTERACTION_ALERTS = {
    AlertCode.DISPLAY,
    AlertCode.CONFIRM_OR_REJECT,
    AlertCode.TEXT_INPUT,
    AlertCode.SINGLE_CHOICE,
    AlertCode.MULTIPLE_CHOICE,
}


class SessionError(Exception):
    """The session failed: the server is unreachable or broke the protocol."""


class AuthenticationError(SessionError):
    """The server rejected the phone's credentials, or the phone the server's."""


@dataclass
class SessionConfig:
    """Protocol settings for one session.

    ``auth`` ("md5", "basic" or "hmac") and ``dm_version`` ("1.2" or
    "1.1.2") default to the phone's AAuthPref and DmV when None. Sizes are
    in bytes. ``session_id`` and ``alert_code`` 1200 are for a session that
    a server notification requested; otherwise a new SessionID is drawn.
    """

    encoding: Encoding = Encoding.XML
    auth: str | None = None
    dm_version: str | None = None
    max_msg_size: int = DEFAULT_MAX_MSG_SIZE
    max_obj_size: int = DEFAULT_MAX_OBJ_SIZE
    require_server_auth: bool = True
    alert_code: int = AlertCode.CLIENT_INITIATED_MGMT
    session_id: str | None = None


@dataclass
class OutgoingMessage:
    """One message to POST: the body, where to and with which headers."""

    url: str
    body: bytes
    headers: dict[str, str]
    message: Message
    # False for the last message of an aborted session: its reply is ignored.
    expects_reply: bool = True


@dataclass
class SessionResult:
    session_id: str
    messages_sent: int = 0
    client_authenticated: bool = False
    server_authenticated: bool = False
    delivered_reports: list[FumoReport] = field(default_factory=list)
    accepted_exec: str | None = None  # the FUMO node URI of an accepted Exec
    aborted_by_server: bool = False


@dataclass
class _Queued:
    """A command waiting to be sent, and what its Status from the server means."""

    command: Command
    report: FumoReport | None = None


@dataclass
class _LargeObject:
    """A chunked item (MoreData) being received."""

    command: str
    target: str
    size: int
    format: str | None
    type: str | None
    text: bool
    parts: list[bytes] = field(default_factory=list)

    @property
    def received(self) -> int:
        return sum(len(part) for part in self.parts)


def new_session_id() -> str:
    """Return a SessionID: a random 16-bit number in hexadecimal."""
    return f"{secrets.randbelow(0xFFFF) + 1:X}"


class ClientSession:
    """The DM client engine for one session of ``phone`` with a server."""

    def __init__(
        self, phone: Phone, server_url: str, config: SessionConfig | None = None
    ):
        self.phone = phone
        self.config = config or SessionConfig()
        self.server_url = server_url
        self.url = server_url
        self.session_id = self.config.session_id or new_session_id()
        self.dm_version = self.config.dm_version or phone.dm_version
        if self.dm_version not in PROTOCOL_BY_DM_VERSION:
            raise ValueError(
                f"DM version must be 1.2 or 1.1.2, got {self.dm_version!r}"
            )
        self.scheme = self.config.auth or phone.auth_scheme
        if self.scheme not in AUTH_TYPE_BY_SCHEME:
            raise ValueError(
                f"authentication must be one of {sorted(AUTH_TYPE_BY_SCHEME)}, "
                f"got {self.scheme!r}"
            )
        self.result = SessionResult(session_id=self.session_id)
        self.finished = False
        self.error: SessionError | None = None

        self._msg_id = 0
        self._server_max_msg_size: int | None = None
        self._client_auth_retries = 0
        self._server_auth_failures = 0
        self._queue: list[_Queued] = []
        self._sent: dict[tuple[str, str], _Queued] = {}
        self._large_object: _LargeObject | None = None
        self._issued_server_nonce: bytes | None = None

    # -- public interface ------------------------------------------------------

    def start(self) -> OutgoingMessage:
        """Return package 1."""
        logger.info(
            "session %s: starting with %s as %s (auth %s, %s, DM %s)",
            self.session_id,
            self.server_url,
            self.phone.device_id,
            self.scheme,
            self.config.encoding.value,
            self.dm_version,
        )
        self._queue = self._package1()
        return self._compose(header_status=None, request_next=False)

    def receive(
        self,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> OutgoingMessage | None:
        """Process one server message; return the reply, or None at the end.

        Raises:
            SessionError: the reply is invalid or too large, or breaks the
                protocol. AuthenticationError: the server rejected the
                phone's credentials twice.
        """
        if self.finished:
            raise SessionError("the session has already ended")
        if self._msg_id >= MAX_MESSAGES_PER_SESSION:
            raise SessionError(
                f"session {self.session_id} has not ended after "
                f"{MAX_MESSAGES_PER_SESSION} messages"
            )
        http_headers = {name.lower(): value for name, value in (headers or {}).items()}

        # Step 1: decode and check the header.
        message = self._decode(body, content_type)
        self._read_header(message)

        # Step 2: the server's credentials. Nothing from a server that fails
        # them is used, not even its statuses and nonces.
        accepted, code, chal = self._authenticate_server(message, http_headers, body)
        header_status = self._header_status(message, code, chal)
        self.phone.save()
        statuses_only = all(command.name == "Status" for command in message.commands)
        if not accepted and code == StatusCode.MISSING_CREDENTIALS and statuses_only:
            # Such a message requests nothing of the phone, so it is read,
            # because its statuses may end the session or challenge the phone.
            # The 407 requests credentials in the server's next message.
            logger.info(
                "session %s: server sent no credentials in a message of statuses "
                "only; reading its statuses",
                self.session_id,
            )
        elif not accepted:
            return self._reject_server(header_status, code)

        # Step 3: the server's statuses for the phone's commands.
        resend = self._read_statuses(message)

        # Step 4: the server's commands.
        if any(
            _is_alert(command, AlertCode.SESSION_ABORT) for command in message.commands
        ):
            logger.info(
                "session %s: the server aborted the session (Alert 1223)",
                self.session_id,
            )
            self.result.aborted_by_server = True
            return self._end()
        replies = [_Queued(reply) for reply in self._execute_all(message)]
        self.phone.save()
        if resend:
            self._queue = self._package1() + replies + self._queue
        else:
            self._queue = replies + self._queue

        # Step 5: end the session, or send the reply.
        needs_reply = any(
            command.name not in ("Status", "Results") for command in message.commands
        )
        if message.final and not needs_reply and not self._queue:
            return self._end()
        return self._compose(header_status, request_next=not message.final)

    # -- package 1 -------------------------------------------------------------

    def _package1(self) -> list[_Queued]:
        alert = Command(name="Alert", cmd_id="", data=str(int(self.config.alert_code)))
        devinfo = Command(
            name="Replace",
            cmd_id="",
            items=[
                Item(
                    source=f"./DevInfo/{name}",
                    meta=Meta(format="chr"),
                    data=self.phone.tree.value(f"./DevInfo/{name}") or "",
                )
                for name in self.phone.tree.children("./DevInfo")
            ],
        )
        commands = [_Queued(alert), _Queued(devinfo)]
        for report in self.phone.pending_reports:
            commands.append(_Queued(self._generic_alert(report), report=report))
        return commands

    def _generic_alert(self, report: FumoReport) -> Command:
        # NOTE: the SyncML 1.1 DTD has no Correlator element (and WBXML 1.1
        # no token for it), so a DM 1.1.2 Generic Alert goes without one.
        correlator = report.correlator if self.dm_version == "1.2" else None
        return Command(
            name="Alert",
            cmd_id="",
            data=str(int(AlertCode.GENERIC_ALERT)),
            correlator=correlator,
            items=[
                Item(
                    source=report.source_uri,
                    meta=Meta(type=report.alert_type, format="int"),
                    data=str(report.result_code),
                )
            ],
        )

    # -- composing messages ------------------------------------------------------

    def _header(self, msg_id: str) -> SyncHdr:
        ver_dtd, ver_proto = PROTOCOL_BY_DM_VERSION[self.dm_version]
        return SyncHdr(
            ver_dtd=ver_dtd,
            ver_proto=ver_proto,
            session_id=self.session_id,
            msg_id=msg_id,
            target=self.server_url,
            source=self.phone.device_id,
            # LocName carries the user name for auth-md5.
            source_name=self.phone.client_username if self.scheme == "md5" else None,
            cred=self._credential(),
            meta=Meta(
                max_msg_size=self.config.max_msg_size,
                max_obj_size=self.config.max_obj_size,
            ),
        )

    def _credential(self) -> Cred | None:
        if self.scheme == "hmac" or self.result.client_authenticated:
            return None
        username = self.phone.client_username
        password = self.phone.client_password
        if self.scheme == "basic":
            return Cred(
                type=AUTH_BASIC,
                format="b64",
                data=auth.basic_credential(username, password),
            )
        digest = auth.md5_digest(username, password, self.phone.client_nonce)
        return Cred(type=AUTH_MD5, format="b64", data=digest)

    def _compose(
        self,
        header_status: Command | None,
        request_next: bool,
        extra: list[Command] | None = None,
        send_queue: bool = True,
    ) -> OutgoingMessage:
        """Build the next message from the queue, within the server's MaxMsgSize."""
        self._msg_id += 1
        msg_id = str(self._msg_id)
        if header_status is not None and header_status.chal is not None:
            self.phone.server_nonce = self._issued_server_nonce
            self.phone.save()
        self._issued_server_nonce = None
        header = self._header(msg_id)
        head = [header_status] if header_status is not None else []
        tail = list(extra or [])
        if request_next:
            tail.append(
                Command(name="Alert", cmd_id="", data=str(int(AlertCode.NEXT_MESSAGE)))
            )

        chosen: list[_Queued] = []
        limit = self._server_max_msg_size
        while send_queue and self._queue:
            candidate = chosen + [self._queue[0]]
            # NOTE: one command larger than the server's MaxMsgSize is still
            # sent whole; outgoing items are never split into chunks.
            if limit is not None and chosen:
                final = len(self._queue) == 1
                trial = _numbered(
                    header, head + [q.command for q in candidate] + tail, final
                )
                if len(self._encode(trial)) > limit:
                    break
            chosen.append(self._queue.pop(0))

        final = not self._queue or not send_queue
        message = _numbered(header, head + [q.command for q in chosen] + tail, final)
        for number, queued in enumerate(chosen, len(head) + 1):
            if queued.command.name not in ("Status", "Results"):
                self._sent[(msg_id, str(number))] = queued
        numbered = message.commands
        body = self._encode(message)

        headers = {"Content-Type": self._media_type(), "Accept": self._media_type()}
        if self.scheme == "hmac":
            mac = auth.hmac_mac(
                self.phone.client_username,
                self.phone.client_password,
                self.phone.client_nonce,
                body,
            )
            headers[HMAC_HEADER] = auth.format_hmac_header(
                self.phone.client_username, mac
            )
        self.result.messages_sent += 1
        logger.info(
            "session %s: sending message %s (%d bytes%s): %s",
            self.session_id,
            msg_id,
            len(body),
            "" if final else ", more to follow",
            _summary(numbered),
        )
        return OutgoingMessage(
            url=self.url, body=body, headers=headers, message=message
        )

    def _encode(self, message: Message) -> bytes:
        return encode_message(message, self.config.encoding)

    def _media_type(self) -> str:
        if self.config.encoding is Encoding.WBXML:
            return MEDIA_TYPE_DM_WBXML
        return MEDIA_TYPE_DM_XML

    def _end(self) -> None:
        self.finished = True
        if self._large_object is not None:
            logger.info(
                "session %s: dropping the incomplete chunked item for %s",
                self.session_id,
                self._large_object.target,
            )
        job = self.phone.pending_job
        self.result.accepted_exec = job.source_uri if job else None
        self.phone.save()
        logger.info(
            "session %s: ended; messages sent: %d",
            self.session_id,
            self.result.messages_sent,
        )
        return None

    # -- reading server messages ---------------------------------------------------

    def _decode(self, body: bytes, content_type: str) -> Message:
        if len(body) > self.config.max_msg_size:
            raise SessionError(
                f"server message of {len(body)} bytes exceeds the MaxMsgSize of "
                f"{self.config.max_msg_size} bytes the phone advertised"
            )
        try:
            return decode_message(body, content_type).message
        except CodecError as error:
            raise SessionError(
                f"server reply is not a valid SyncML message: {error}"
            ) from None

    def _read_header(self, message: Message) -> None:
        header = message.header
        if header.session_id != self.session_id:
            raise SessionError(
                f"server reply has SessionID {header.session_id!r}, the session is "
                f"{self.session_id!r}"
            )
        if header.target and header.target != self.phone.device_id:
            logger.debug(
                "server message Target LocURI is %s, the device id is %s",
                header.target,
                self.phone.device_id,
            )
        if header.resp_uri and header.resp_uri != self.url:
            logger.debug(
                "session %s: server set RespURI %s", self.session_id, header.resp_uri
            )
            self.url = header.resp_uri
        if header.meta is not None and header.meta.max_msg_size:
            self._server_max_msg_size = header.meta.max_msg_size

    def _read_statuses(self, message: Message) -> bool:
        """Apply the server's statuses; return True to resend package 1."""
        header_statuses = [
            command
            for command in message.commands
            if command.name == "Status" and command.cmd_ref == SYNCHDR_CMD_REF
        ]
        if not header_statuses:
            raise SessionError(
                f"server message {message.header.msg_id} has no Status for the SyncHdr"
            )
        resend = self._on_header_status(header_statuses[0])
        for command in message.commands:
            if command.name != "Status" or command.cmd_ref == SYNCHDR_CMD_REF:
                continue
            key = (command.msg_ref or str(self._msg_id), command.cmd_ref or "")
            queued = self._sent.pop(key, None)
            code = _status_code(command)
            if queued is not None and queued.report is not None:
                self._on_report_status(queued.report, code)
            elif code >= 300:
                logger.info(
                    "session %s: server returned %d for %s (CmdRef %s)",
                    self.session_id,
                    code,
                    command.cmd,
                    command.cmd_ref,
                )
        return resend

    def _on_report_status(self, report: FumoReport, code: int) -> None:
        if is_success(code):
            if report in self.phone.pending_reports:
                self.phone.pending_reports.remove(report)
            self.result.delivered_reports.append(report)
            logger.info(
                "session %s: server accepted the Generic Alert for %s (result %d)",
                self.session_id,
                report.source_uri,
                report.result_code,
            )
        else:
            logger.info(
                "session %s: server returned %d for the Generic Alert, so the "
                "result stays pending",
                self.session_id,
                code,
            )

    def _on_header_status(self, status: Command) -> bool:
        code = _status_code(status)
        if status.chal is not None and status.chal.next_nonce:
            self.phone.client_nonce = auth.decode_nonce(status.chal.next_nonce)
            logger.debug(
                "session %s: server issued a new client nonce", self.session_id
            )
        if code in (StatusCode.OK, StatusCode.AUTHENTICATION_ACCEPTED):
            if not self.result.client_authenticated:
                logger.info(
                    "session %s: server accepted the phone's credentials (%d)",
                    self.session_id,
                    code,
                )
            self.result.client_authenticated = True
            return False
        if code not in (StatusCode.INVALID_CREDENTIALS, StatusCode.MISSING_CREDENTIALS):
            raise SessionError(
                f"server returned status {code} for the SyncHdr; expected 200, 212, "
                "401 or 407"
            )
        if status.chal is None:
            raise AuthenticationError(
                f"server rejected the phone's credentials with {code} and sent no "
                "Chal; check the client username and password"
            )
        if self.result.client_authenticated or self._client_auth_retries >= 1:
            raise AuthenticationError(
                f"server rejected the phone's credentials with {code} again after "
                "a new nonce; check the client username and password"
            )
        scheme = SCHEME_BY_AUTH_TYPE.get((status.chal.type or "").strip().lower())
        if scheme is not None and scheme != self.scheme:
            logger.info(
                "session %s: server asks for %s authentication", self.session_id, scheme
            )
            self.scheme = scheme
        self._client_auth_retries += 1
        logger.info(
            "session %s: server challenged the credentials (%d); resending package 1",
            self.session_id,
            code,
        )
        return True

    # -- authenticating the server ---------------------------------------------------

    def _authenticate_server(
        self, message: Message, headers: Mapping[str, str], body: bytes
    ) -> tuple[bool, int, Chal | None]:
        """Check the server's credential; return (accepted, status, Chal)."""
        if not self.config.require_server_auth:
            self.result.server_authenticated = True
            return True, StatusCode.OK, None
        verdict, auth_type = self._check_server_credential(message, headers, body)
        if verdict is None:
            if self.result.server_authenticated:
                return True, StatusCode.OK, None
            logger.info("session %s: server sent no credentials", self.session_id)
            return False, StatusCode.MISSING_CREDENTIALS, self._server_chal(auth_type)
        if not verdict:
            logger.info("session %s: server credentials are invalid", self.session_id)
            return False, StatusCode.INVALID_CREDENTIALS, self._server_chal(auth_type)
        first = not self.result.server_authenticated
        self.result.server_authenticated = True
        if first:
            logger.info("session %s: server authenticated", self.session_id)
        # A new server nonce once per session, for the next session.
        return (
            True,
            StatusCode.AUTHENTICATION_ACCEPTED,
            (self._server_chal(auth_type) if first else None),
        )

    def _check_server_credential(
        self, message: Message, headers: Mapping[str, str], body: bytes
    ) -> tuple[bool | None, str]:
        server_id = self.phone.server_id
        password = self.phone.server_password
        nonce = self.phone.server_nonce
        hmac_value = headers.get(HMAC_HEADER)
        if hmac_value:
            parsed = auth.parse_hmac_header(hmac_value)
            if parsed is None or parsed.username != server_id:
                return False, AUTH_MAC
            expected = auth.hmac_mac(server_id, password, nonce, body)
            return auth.digests_equal(expected, parsed.mac), AUTH_MAC
        cred = message.header.cred
        if cred is None:
            return None, AUTH_MD5
        auth_type = (cred.type or "").strip()
        if auth_type.lower() == AUTH_MD5:
            expected = auth.md5_digest(server_id, password, nonce)
            return auth.digests_equal(expected, cred.data), AUTH_MD5
        if auth_type.lower() == AUTH_BASIC:
            parsed_basic = auth.parse_basic_credential(cred.data)
            return parsed_basic == (server_id, password), AUTH_BASIC
        return False, AUTH_MD5

    def _server_chal(self, auth_type: str) -> Chal:
        # The phone switches to the new nonce only when the Chal is sent
        # (see _compose): a session that ends here keeps the old one.
        self._issued_server_nonce = auth.new_nonce()
        next_nonce = auth.encode_nonce(self._issued_server_nonce)
        return Chal(type=auth_type, format="b64", next_nonce=next_nonce)

    def _header_status(self, message: Message, code: int, chal: Chal | None) -> Command:
        return Command(
            name="Status",
            cmd_id="",
            msg_ref=message.header.msg_id,
            cmd_ref=SYNCHDR_CMD_REF,
            cmd="SyncHdr",
            target_refs=[message.header.target] if message.header.target else [],
            source_refs=[message.header.source],
            data=str(int(code)),
            chal=chal,
        )

    def _reject_server(self, header_status: Command, code: int) -> OutgoingMessage:
        """Reply to a rejected server message: challenge once, then abort."""
        self._server_auth_failures += 1
        if self._server_auth_failures < MAX_SERVER_AUTH_FAILURES:
            # The server's commands are not executed; it must resend them.
            return self._compose(header_status, request_next=False, send_queue=False)
        abort = Command(name="Alert", cmd_id="", data=str(int(AlertCode.SESSION_ABORT)))
        outgoing = self._compose(
            dataclasses.replace(header_status, chal=None),
            request_next=False,
            extra=[abort],
            send_queue=False,
        )
        outgoing.expects_reply = False
        self.finished = True
        self.error = AuthenticationError(
            f"server credentials rejected twice (status {code}); check the server "
            "id and server password the phone holds"
        )
        logger.info("session %s: aborting: %s", self.session_id, self.error)
        return outgoing

    # -- executing server commands -----------------------------------------------------

    def _execute_all(self, message: Message) -> list[Command]:
        replies: list[Command] = []
        for command in message.commands:
            if command.name in ("Status", "Results"):
                continue
            replies.extend(self._execute(message.header.msg_id, command))
        return replies

    def _execute(self, msg_ref: str, command: Command) -> list[Command]:
        handlers = {
            "Get": self._get,
            "Replace": self._replace,
            "Add": self._add,
            "Delete": self._delete,
            "Exec": self._exec,
            "Alert": self._alert,
            "Atomic": self._atomic,
            "Sequence": self._sequence,
        }
        handler = handlers.get(command.name)
        if handler is None:
            logger.info(
                "session %s: %s is not supported (406)", self.session_id, command.name
            )
            replies = [
                _status(msg_ref, command, StatusCode.OPTIONAL_FEATURE_NOT_SUPPORTED)
            ]
        else:
            replies = handler(msg_ref, command)
        if command.no_resp:
            replies = [reply for reply in replies if reply.name != "Status"]
        return replies

    def _get(self, msg_ref: str, command: Command) -> list[Command]:
        statuses = []
        result_items = []
        for item in command.items:
            uri = item.target or ""
            code, node, children = self.phone.get(uri)
            self._log_command(command, uri, code)
            statuses.append(_status(msg_ref, command, code, uri))
            if node is not None:
                result_items.append(_result_item(uri, node, children))
        replies = statuses
        if result_items:
            replies.append(
                Command(
                    name="Results",
                    cmd_id="",
                    msg_ref=msg_ref,
                    cmd_ref=command.cmd_id,
                    items=result_items,
                )
            )
        return replies

    def _replace(self, msg_ref: str, command: Command) -> list[Command]:
        return self._write(msg_ref, command, add=False)

    def _add(self, msg_ref: str, command: Command) -> list[Command]:
        return self._write(msg_ref, command, add=True)

    def _write(self, msg_ref: str, command: Command, add: bool) -> list[Command]:
        statuses = []
        for item in command.items:
            uri = item.target or ""
            data, format, type, code = self._item_data(command, item)
            if code is None and add:
                code = self.phone.add(uri, data, format, type)
            elif code is None:
                code = self.phone.replace(uri, data, format)
            self._log_command(command, uri, code)
            statuses.append(_status(msg_ref, command, code, uri))
        return statuses

    def _delete(self, msg_ref: str, command: Command) -> list[Command]:
        statuses = []
        for item in command.items:
            uri = item.target or ""
            code = self.phone.delete(uri)
            self._log_command(command, uri, code)
            statuses.append(_status(msg_ref, command, code, uri))
        return statuses

    def _exec(self, msg_ref: str, command: Command) -> list[Command]:
        statuses = []
        for item in command.items:
            uri = item.target or ""
            code = self.phone.execute(uri, command.correlator)
            logger.info(
                "session %s: Exec %s (Correlator %s) -> %d",
                self.session_id,
                uri,
                command.correlator or "none",
                code,
            )
            statuses.append(_status(msg_ref, command, code, uri))
        return statuses

    def _alert(self, msg_ref: str, command: Command) -> list[Command]:
        try:
            code = AlertCode(int((command.data or "").strip()))
        except ValueError:
            code = None
        if code is AlertCode.NEXT_MESSAGE:
            return [_status(msg_ref, command, StatusCode.OK)]
        if code not in USER_INTERACTION_ALERTS:
            logger.info(
                "session %s: Alert %s is not supported (406)",
                self.session_id,
                command.data,
            )
            return [
                _status(msg_ref, command, StatusCode.OPTIONAL_FEATURE_NOT_SUPPORTED)
            ]
        texts = [item.data for item in command.items if isinstance(item.data, str)]
        logger.info(
            "session %s: user interaction Alert %d: %s",
            self.session_id,
            code,
            " | ".join(texts) or "(no text)",
        )
        status = _status(msg_ref, command, StatusCode.OK)
        if code in (AlertCode.SINGLE_CHOICE, AlertCode.MULTIPLE_CHOICE):
            status.items = [Item(data="1")]
        elif code is AlertCode.TEXT_INPUT:
            status.items = [Item(data="")]
        return [status]

    def _atomic(self, msg_ref: str, command: Command) -> list[Command]:
        # NOTE: a PkgData file written inside a failed Atomic stays on disk;
        # only the tree and the queued FUMO operation are rolled back.
        snapshot = self.phone.tree.snapshot()
        job = self.phone.pending_job
        replies = []
        for child in command.commands:
            replies.extend(self._execute(msg_ref, child))
        failed = [
            reply
            for reply in replies
            if reply.name == "Status" and not is_success(_status_code(reply))
        ]
        if not failed:
            return [_status(msg_ref, command, StatusCode.OK)] + replies
        self.phone.tree.restore(snapshot)
        self.phone.pending_job = job
        rolled_back = []
        for reply in replies:
            if reply.name != "Status":
                continue
            if is_success(_status_code(reply)):
                reply = dataclasses.replace(
                    reply, data=str(int(StatusCode.ATOMIC_ROLLBACK_OK))
                )
            rolled_back.append(reply)
        logger.info("session %s: Atomic failed; rolled back", self.session_id)
        return [_status(msg_ref, command, StatusCode.ATOMIC_FAILED)] + rolled_back

    def _sequence(self, msg_ref: str, command: Command) -> list[Command]:
        replies = [_status(msg_ref, command, StatusCode.OK)]
        for child in command.commands:
            replies.extend(self._execute(msg_ref, child))
        return replies

    def _log_command(self, command: Command, uri: str, code: int) -> None:
        logger.info("session %s: %s %s -> %d", self.session_id, command.name, uri, code)

    # -- chunked items ------------------------------------------------------------

    def _item_data(
        self, command: Command, item: Item
    ) -> tuple[str | bytes | None, str | None, str | None, int | None]:
        """Return (data, format, type, status) for a Replace or Add item.

        A status other than None is the reply to the item, which is then not
        executed: 213 for a chunk of a large object, 413, 424 or 412 for a
        rejected one.
        """
        meta = item.meta or Meta()
        command_meta = command.meta or Meta()
        format = (meta.format or command_meta.format or "").lower() or None
        type = meta.type or command_meta.type
        large = self._large_object
        if large is not None and (
            large.target != item.target or large.command != command.name
        ):
            self._abandon_large_object()
            large = None

        if large is None and not item.more_data:
            size = len(_as_bytes(item.data))
            if size > self.config.max_obj_size:
                return None, format, type, StatusCode.REQUEST_ENTITY_TOO_LARGE
            return item.data, format, type, None

        if large is None:
            declared = meta.size if meta.size is not None else command_meta.size
            if declared is None:
                # The first chunk must carry Meta Size (DM 1.2 large objects).
                return None, format, type, StatusCode.INCOMPLETE_COMMAND
            if declared > self.config.max_obj_size:
                return None, format, type, StatusCode.REQUEST_ENTITY_TOO_LARGE
            large = self._large_object = _LargeObject(
                command=command.name,
                target=item.target or "",
                size=declared,
                format=format,
                type=type,
                text=not isinstance(item.data, bytes),
            )
        large.parts.append(_as_bytes(item.data))
        if large.received > self.config.max_obj_size:
            self._large_object = None
            return None, format, type, StatusCode.REQUEST_ENTITY_TOO_LARGE
        if item.more_data:
            return None, format, type, StatusCode.CHUNKED_ITEM_ACCEPTED

        self._large_object = None
        data = b"".join(large.parts)
        # Meta Size counts the object's bytes; a b64 value may be counted
        # either decoded or in its base64 form, so both are accepted.
        sizes = {len(data), len(base64.b64encode(data))}
        if large.size not in sizes:
            logger.info(
                "session %s: chunked item for %s has %d bytes, Meta Size was %d",
                self.session_id,
                large.target,
                len(data),
                large.size,
            )
            return None, large.format, large.type, StatusCode.SIZE_MISMATCH
        if large.text:
            try:
                return data.decode("utf-8"), large.format, large.type, None
            except UnicodeDecodeError:
                return None, large.format, large.type, StatusCode.BAD_REQUEST
        return data, large.format, large.type, None

    def _abandon_large_object(self) -> None:
        large = self._large_object
        self._large_object = None
        if large is None:
            return
        logger.info(
            "session %s: chunked item for %s ended early; sending Alert 1225",
            self.session_id,
            large.target,
        )
        alert = Command(
            name="Alert",
            cmd_id="",
            data=str(int(AlertCode.NO_END_OF_DATA)),
            items=[Item(source=large.target)],
        )
        self._queue.append(_Queued(alert))


# ---------------------------------------------------------------------------
# Helpers


def _numbered(header: SyncHdr, commands: list[Command], final: bool) -> Message:
    """Return a message of ``commands`` with CmdIDs 1, 2, 3 ..."""
    numbered = [
        dataclasses.replace(command, cmd_id=str(number))
        for number, command in enumerate(commands, 1)
    ]
    return Message(header=header, commands=numbered, final=final)


def _status(
    msg_ref: str, command: Command, code: int, target: str | None = None
) -> Command:
    return Command(
        name="Status",
        cmd_id="",
        msg_ref=msg_ref,
        cmd_ref=command.cmd_id,
        cmd=command.name,
        target_refs=[target] if target else [],
        data=str(int(code)),
    )


def _status_code(command: Command) -> int:
    try:
        return int((command.data or "").strip())
    except ValueError:
        return 0


def _is_alert(command: Command, code: AlertCode) -> bool:
    return command.name == "Alert" and (command.data or "").strip() == str(int(code))


def _as_bytes(data: str | bytes | None) -> bytes:
    if data is None:
        return b""
    return data if isinstance(data, bytes) else data.encode("utf-8")


def _result_item(uri: str, node: Node, children: list[str]) -> Item:
    """Return the Results Item for a Get of ``uri``.

    An interior node lists its children's names separated by "/" with
    Format node; a leaf returns its value with its Format and Type.
    """
    if node.format == FORMAT_NODE:
        meta = Meta(format=FORMAT_NODE, type=node.type)
        return Item(source=uri, meta=meta, data="/".join(children))
    meta = Meta(format=node.format, type=node.type)
    if node.format in BINARY_FORMATS:
        return Item(source=uri, meta=meta, data=base64.b64decode(node.value or ""))
    return Item(source=uri, meta=meta, data=node.value or "")


def _summary(commands: list[Command]) -> str:
    parts = []
    for command in commands:
        if command.name == "Alert":
            parts.append(f"Alert {command.data}")
        elif command.name == "Status":
            parts.append(f"Status {command.data} for {command.cmd}")
        else:
            parts.append(command.name)
    return ", ".join(parts) or "no commands"


# ---------------------------------------------------------------------------
# HTTP transport and the session loop


@dataclass
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Transport(Protocol):
    """Anything that POSTs a message and returns the HTTP response."""

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> HttpResponse: ...


class HttpTransport:
    """POSTs SyncML messages with http.client."""

    def __init__(self, timeout: float = HTTP_TIMEOUT_SECONDS):
        self.timeout = timeout

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST ``body``; raise SessionError when the server cannot be reached."""
        try:
            connection, response = open_http("POST", url, headers, body, self.timeout)
        except (ValueError, HttpError) as error:
            raise SessionError(f"cannot reach the DM server: {error}") from None
        try:
            data = response.read(MAX_REPLY_SIZE + 1)
        except (OSError, http.client.HTTPException) as error:
            raise SessionError(
                f"reading the reply from {url} failed: {error}"
            ) from None
        finally:
            connection.close()
        if len(data) > MAX_REPLY_SIZE:
            raise SessionError(
                f"reply from {url} is larger than {MAX_REPLY_SIZE} bytes"
            )
        return HttpResponse(
            status=response.status,
            reason=response.reason,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=data,
        )


def run_session(
    phone: Phone,
    server_url: str,
    config: SessionConfig | None = None,
    transport: Transport | None = None,
) -> SessionResult:
    """Run one DM session over HTTP and return what it achieved.

    Raises:
        SessionError: the server is unreachable, returned an HTTP error or
            broke the protocol. AuthenticationError: credentials were
            rejected.
    """
    transport = transport or HttpTransport()
    session = ClientSession(phone, server_url, config)
    outgoing: OutgoingMessage | None = session.start()
    while outgoing is not None:
        response = transport.post(outgoing.url, outgoing.body, outgoing.headers)
        if not outgoing.expects_reply:
            break
        if response.status != 200:
            raise SessionError(
                f"DM server returned HTTP {response.status} {response.reason} "
                f"to message {outgoing.message.header.msg_id} at {outgoing.url}"
            )
        outgoing = session.receive(
            response.body, response.headers.get("content-type", ""), response.headers
        )
    phone.save()
    if session.error is not None:
        raise session.error
    return session.result


@dataclass
class RunOptions:
    """Settings for :func:`run_until_idle`: protocol, FUMO work, session bound."""

    session: SessionConfig = field(default_factory=SessionConfig)
    update: UpdateOptions = field(default_factory=UpdateOptions)
    max_sessions: int = DEFAULT_MAX_SESSIONS


@dataclass
class RunReport:
    """Summary of a :func:`run_until_idle` run."""

    sessions: int
    reported_codes: list[int]
    firmware_version: str
    firmware_sha256: str
    results: list[SessionResult] = field(default_factory=list)


class NotIdleError(SessionError):
    """The phone still had work after the maximum number of sessions."""


def run_until_idle(
    phone: Phone,
    server_url: str,
    options: RunOptions | None = None,
    transport: Transport | None = None,
) -> RunReport:
    """Run sessions and FUMO work until the phone has nothing left to do.

    The first session always runs. A FUMO operation accepted in a session
    is carried out after it, and its result goes out in the next session's
    Generic Alert. Work left from an earlier run (a queued operation, an
    undelivered result, a partial download) is picked up first.

    Raises:
        SessionError: a session failed (see :func:`run_session`).
        NotIdleError: still not idle after ``options.max_sessions`` sessions.
    """
    options = options or RunOptions()
    report = RunReport(
        sessions=0, reported_codes=[], firmware_version="", firmware_sha256=""
    )
    config = options.session
    while True:
        if phone.pending_job is not None:
            perform_fumo_job(phone, phone.pending_job, options.update)
            continue
        if report.sessions > 0 and not phone.pending_reports:
            break
        if report.sessions >= options.max_sessions:
            raise NotIdleError(
                f"phone is not idle after {options.max_sessions} sessions: "
                f"{len(phone.pending_reports)} FUMO results not accepted by the server"
            )
        result = run_session(phone, server_url, config, transport)
        report.sessions += 1
        report.results.append(result)
        report.reported_codes.extend(r.result_code for r in result.delivered_reports)
        # Later sessions are the phone's own (1201) with a new SessionID.
        config = dataclasses.replace(
            config, alert_code=AlertCode.CLIENT_INITIATED_MGMT, session_id=None
        )
    report.firmware_version = phone.firmware_version
    report.firmware_sha256 = phone.image_sha256()
    logger.debug("no work left after %d sessions", report.sessions)
    return report
