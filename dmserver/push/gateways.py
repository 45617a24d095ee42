"""SMS gateway adapters that deliver WSP Push PDUs to phones.

Every gateway implements ``SmsGateway``: ``send_push`` takes the MSISDN,
the complete WSP Push PDU and an 8-bit concatenation reference, and returns
a Deferred that fires with a ``PushReceipt`` or fails with ``GatewayError``.

- ``FileGateway`` writes each push as a JSON file, for development and for
  the simulator, which reads them back with ``read_pushes``.
- ``KannelSendsmsGateway`` posts each SMS segment to Kannel's smsbox
  ``sendsms`` interface with our own UDH (ports and concatenation), so the
  octets that reach the SMSC are exactly those ``dmserver.push.sms`` built.
  Kannel could add the port UDH and split long messages itself, but then
  the concatenation reference and segment boundaries would be Kannel's and
  could not be checked end to end.
- ``KannelPapGateway`` submits the pushed entity to Kannel's Push Proxy
  Gateway (wapbox) with the Push Access Protocol. The PPG then writes its
  own WSP headers and segments the SMS.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode
from xml.sax.saxutils import quoteattr

from lxml import etree
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from dmserver.push import sms, wsp

logger = logging.getLogger(__name__)

DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
MAX_RESPONSE_OCTETS = 64 * 1024
# Kannel's sendsms returns HTTP 202 for "0: Accepted for delivery" and
# "3: Queued for later delivery". Older releases return 200.
KANNEL_ACCEPTED_STATUSES = (200, 202)
# PAP result codes 1000 (OK) and 1001 (accepted for processing). Kannel
# 1.4.5 returns HTTP 202 and code 1001 for an accepted push.
PAP_SUCCESS_CODES = ("1000", "1001")
PAP_ACCEPTED_STATUSES = (200, 202)
KANNEL_CODING_8BIT = "1"

_MSISDN_PATTERN = re.compile(r"^\+?[0-9]{3,20}$")


class GatewayError(Exception):
    """The gateway rejected the push or could not be reached."""


@dataclass(frozen=True)
class PushReceipt:
    """What a gateway reports after accepting a push.

    ``responses`` contains the gateway's response text per request (one per SMS for
    sendsms, one per push for PAP and the file gateway).
    """

    gateway: str
    msisdn: str
    reference: int
    segments: int
    responses: list[str] = field(default_factory=list)
    sent_at: float = 0.0


class SmsGateway(Protocol):
    """Anything that can deliver a WSP Push PDU to an MSISDN."""

    name: str

    def send_push(
        self, msisdn: str, wsp_pdu: bytes, *, reference: int
    ) -> Deferred[PushReceipt]: ...


def validate_msisdn(msisdn: str) -> str:
    """Return ``msisdn`` if it is digits with an optional leading "+".

    Raises:
        ValueError: anything else, because gateways put it in URLs and XML.
    """
    if not _MSISDN_PATTERN.match(msisdn):
        raise ValueError(
            f"MSISDN {msisdn!r} is invalid: expected 3 to 20 digits with an "
            f"optional leading '+'"
        )
    return msisdn


# -- file gateway -------------------------------------------------------------


@dataclass(frozen=True)
class StoredPush:
    """A push as ``FileGateway`` wrote it."""

    msisdn: str
    timestamp: float
    reference: int
    dcs: int
    segments: list[sms.SmsSegment]
    path: Path

    @property
    def wsp_pdu(self) -> bytes:
        """The WSP Push PDU reassembled from the segments."""
        return sms.reassemble(self.segments)


class FileGateway:
    """Write each push as one JSON file in ``directory``.

    The file holds the MSISDN, a UNIX timestamp, the reference, the data
    coding scheme and the segments with hex ``udh`` and ``data``. Files are
    written to a temporary name and renamed, so readers never see half a
    push.
    """

    name = "file"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        dcs: int = sms.DCS_8BIT,
    ) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self._dcs = dcs
        self._counter = itertools.count(1)

    def send_push(
        self, msisdn: str, wsp_pdu: bytes, *, reference: int
    ) -> Deferred[PushReceipt]:
        try:
            receipt = self._write(validate_msisdn(msisdn), wsp_pdu, reference)
        except (OSError, ValueError) as exc:
            logger.error("file gateway failed to store push for %s: %s", msisdn, exc)
            return defer.fail(GatewayError(f"cannot store push for {msisdn}: {exc}"))
        return defer.succeed(receipt)

    def _write(self, msisdn: str, wsp_pdu: bytes, reference: int) -> PushReceipt:
        segments = sms.split_into_segments(wsp_pdu, reference)
        timestamp = self._clock()
        record = {
            "msisdn": msisdn,
            "timestamp": timestamp,
            "reference": reference,
            "dcs": self._dcs,
            "segments": [
                {"udh": segment.udh.hex(), "data": segment.data.hex()}
                for segment in segments
            ],
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = (
            f"{int(timestamp * 1_000_000):020d}-{msisdn.lstrip('+')}"
            f"-{reference:03d}-{next(self._counter):06d}"
        )
        temporary = self.directory / f".{stem}.tmp"
        temporary.write_text(json.dumps(record, indent=1), encoding="utf-8")
        final = self.directory / f"{stem}.json"
        temporary.replace(final)
        logger.info(
            "push stored for %s: %d SMS, reference %d, %s",
            msisdn,
            len(segments),
            reference,
            final.name,
        )
        return PushReceipt(
            gateway=self.name,
            msisdn=msisdn,
            reference=reference,
            segments=len(segments),
            responses=[final.name],
            sent_at=timestamp,
        )


def read_pushes(directory: str | os.PathLike[str], msisdn: str) -> list[StoredPush]:
    """Return the pushes ``FileGateway`` stored for ``msisdn``, oldest first.

    A missing directory means no pushes yet.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    pushes = []
    for path in sorted(root.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["msisdn"] != msisdn:
            continue
        segments = [
            sms.SmsSegment(
                udh=bytes.fromhex(item["udh"]), data=bytes.fromhex(item["data"])
            )
            for item in record["segments"]
        ]
        pushes.append(
            StoredPush(
                msisdn=record["msisdn"],
                timestamp=record["timestamp"],
                reference=record["reference"],
                dcs=record["dcs"],
                segments=segments,
                path=path,
            )
        )
    pushes.sort(key=lambda push: (push.timestamp, push.path.name))
    return pushes


# -- Kannel ---------------------------------------------------------------------


def _default_agent(reactor: IReactorTime | None) -> tuple[IAgent, IReactorTime]:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor  # type: ignore[assignment]
    return Agent(reactor, connectTimeout=DEFAULT_HTTP_TIMEOUT_SECONDS), reactor


class _BodyCollector(protocol.Protocol):
    """Collect a response body, keeping at most MAX_RESPONSE_OCTETS."""

    def __init__(self, finished: Deferred[bytes]) -> None:
        self._finished = finished
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        room = MAX_RESPONSE_OCTETS - self._size
        if room > 0:
            self._chunks.append(data[:room])
            self._size += min(room, len(data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)


async def _fetch(
    agent: IAgent,
    method: bytes,
    url: str,
    headers: Headers,
    body: bytes | None,
    timeout: float,
    reactor: IReactorTime,
) -> tuple[int, bytes]:
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    request = agent.request(method, url.encode("ascii"), headers, producer)
    request.addTimeout(timeout, reactor)
    response = await request
    reading: Deferred[bytes] = Deferred()
    response.deliverBody(_BodyCollector(reading))
    reading.addTimeout(timeout, reactor)
    content = await reading
    return response.code, content


class KannelSendsmsGateway:
    """Send each SMS segment through Kannel's smsbox sendsms HTTP interface.

    Each segment is one GET request with ``udh`` (our UDH, UDHL included),
    ``text`` (the segment's octets), ``coding=1`` (8-bit data) and
    ``mclass=1`` when class 1 was requested. Segments go out one after the
    other; the first rejected one fails the push, and segments already
    accepted stay sent.

    Args:
        url: the sendsms URL, for example
            ``http://127.0.0.1:13013/cgi-bin/sendsms``.
        username, password: a Kannel ``sendsms-user``.
        smsc: route through this smsc-id, or None for Kannel's routing.
        sender: the ``from`` address, or None for the smsbox global-sender.
        message_class_1: send with DCS 0xF5 (class 1) instead of 0x04.
    """

    name = "kannel-sendsms"

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        smsc: str | None = None,
        *,
        sender: str | None = None,
        message_class_1: bool = False,
        agent: IAgent | None = None,
        reactor: IReactorTime | None = None,
        timeout: float = DEFAULT_HTTP_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        self._username = username
        self._password = password
        self._smsc = smsc
        self._sender = sender
        self._message_class_1 = message_class_1
        default_agent, self._reactor = _default_agent(reactor)
        self._agent = agent if agent is not None else default_agent
        self._timeout = timeout

    def segment_url(self, msisdn: str, segment: sms.SmsSegment) -> str:
        """Return the sendsms URL for one segment (it contains the password)."""
        parameters: list[tuple[str, str | bytes]] = [
            ("username", self._username),
            ("password", self._password),
            ("to", msisdn),
            ("udh", segment.udh),
            ("text", segment.data),
            ("coding", KANNEL_CODING_8BIT),
        ]
        if self._sender is not None:
            parameters.append(("from", self._sender))
        if self._smsc is not None:
            parameters.append(("smsc", self._smsc))
        if self._message_class_1:
            parameters.append(("mclass", "1"))
        separator = "&" if "?" in self.url else "?"
        return self.url + separator + urlencode(parameters, quote_via=quote)

    def send_push(
        self, msisdn: str, wsp_pdu: bytes, *, reference: int
    ) -> Deferred[PushReceipt]:
        return Deferred.fromCoroutine(self._send(msisdn, wsp_pdu, reference))

    async def _send(self, msisdn: str, wsp_pdu: bytes, reference: int) -> PushReceipt:
        validate_msisdn(msisdn)
        segments = sms.split_into_segments(wsp_pdu, reference)
        responses = []
        for sequence, segment in enumerate(segments, start=1):
            try:
                code, body = await _fetch(
                    self._agent,
                    b"GET",
                    self.segment_url(msisdn, segment),
                    Headers(),
                    None,
                    self._timeout,
                    self._reactor,
                )
            except Exception as exc:
                logger.error(
                    "sendsms request for %s segment %d/%d failed: %r",
                    msisdn,
                    sequence,
                    len(segments),
                    exc,
                )
                raise GatewayError(
                    f"Kannel sendsms at {self.url} failed for {msisdn} "
                    f"segment {sequence}/{len(segments)}: {exc!r}"
                ) from exc
            answer = body.decode("utf-8", "replace").strip()
            if code not in KANNEL_ACCEPTED_STATUSES:
                logger.error(
                    "sendsms rejected %s segment %d/%d: HTTP %d %s",
                    msisdn,
                    sequence,
                    len(segments),
                    code,
                    answer,
                )
                raise GatewayError(
                    f"Kannel sendsms rejected {msisdn} segment "
                    f"{sequence}/{len(segments)}: HTTP {code} {answer!r}"
                )
            responses.append(answer)
        logger.info(
            "push sent to %s through Kannel sendsms: %d SMS, reference %d",
            msisdn,
            len(segments),
            reference,
        )
        return PushReceipt(
            gateway=self.name,
            msisdn=msisdn,
            reference=reference,
            segments=len(segments),
            responses=responses,
            sent_at=self._reactor.seconds(),
        )


class KannelPapGateway:
    """Submit pushes to Kannel's Push Proxy Gateway through PAP.

    The WSP Push PDU handed to ``send_push`` is decoded, and its entity body,
    content type and X-Wap-Application-Id become the PAP content entity. The
    PPG builds its own WSP PDU and SMS segments, so ``reference`` is not
    used.

    NOTE: Kannel 1.4.5 encodes application/vnd.syncml.notification as a text
    content type (it lacks the 0x44 code) and forwards some request headers
    into the WSP headers. Clients that require the 0xC4 short form need
    ``KannelSendsmsGateway``.

    Args:
        ppg_url: the PPG URL, for example ``http://127.0.0.1:8080/wappush``.
        username, password: a Kannel ``wap-push-user``, sent as the
            ``username`` and ``password`` query parameters Kannel reads;
            None when the PPG trusts the push initiator.
        ppg_specifier: the part after "@" in the PAP address.
    """

    name = "kannel-pap"

    def __init__(
        self,
        ppg_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ppg_specifier: str = "ppg",
        network: str = "GSM",
        bearer: str = "SMS",
        agent: IAgent | None = None,
        reactor: IReactorTime | None = None,
        timeout: float = DEFAULT_HTTP_TIMEOUT_SECONDS,
    ) -> None:
        self.ppg_url = ppg_url
        self._username = username
        self._password = password
        self._ppg_specifier = ppg_specifier
        self._network = network
        self._bearer = bearer
        default_agent, self._reactor = _default_agent(reactor)
        self._agent = agent if agent is not None else default_agent
        self._timeout = timeout

    def build_request(
        self, msisdn: str, wsp_pdu: bytes, push_id: str
    ) -> tuple[str, bytes]:
        """Return (Content-Type header value, multipart/related body)."""
        validate_msisdn(msisdn)
        pushed = wsp.parse_push_pdu(wsp_pdu)
        address = f"WAPPUSH={msisdn}/TYPE=PLMN@{self._ppg_specifier}"
        control = (
            '<?xml version="1.0"?>\r\n'
            '<!DOCTYPE pap PUBLIC "-//WAPFORUM//DTD PAP 1.0//EN" '
            '"http://www.wapforum.org/DTD/pap_1.0.dtd">\r\n'
            "<pap>\r\n"
            f"<push-message push-id={quoteattr(push_id)}>\r\n"
            f"<address address-value={quoteattr(address)}/>\r\n"
            f'<quality-of-service delivery-method="unconfirmed" '
            f'network={quoteattr(self._network)} network-required="true" '
            f'bearer={quoteattr(self._bearer)} bearer-required="true"/>\r\n'
            "</push-message>\r\n"
            "</pap>\r\n"
        ).encode()

        content_headers = f"Content-Type: {pushed.content_type}\r\n"
        if pushed.application_id is not None:
            content_headers += f"X-Wap-Application-Id: {pushed.application_id}\r\n"
        boundary = uuid.uuid4().hex
        body = b"".join(
            [
                f"--{boundary}\r\n".encode(),
                b"Content-Type: application/xml\r\n\r\n",
                control,
                f"\r\n--{boundary}\r\n".encode(),
                content_headers.encode("ascii"),
                b"\r\n",
                pushed.body,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        content_type = f'multipart/related; boundary={boundary}; type="application/xml"'
        return content_type, body

    def _request_url(self) -> str:
        if self._username is None:
            return self.ppg_url
        separator = "&" if "?" in self.ppg_url else "?"
        credentials = urlencode(
            [("username", self._username), ("password", self._password or "")]
        )
        return self.ppg_url + separator + credentials

    def send_push(
        self, msisdn: str, wsp_pdu: bytes, *, reference: int
    ) -> Deferred[PushReceipt]:
        return Deferred.fromCoroutine(self._send(msisdn, wsp_pdu, reference))

    async def _send(self, msisdn: str, wsp_pdu: bytes, reference: int) -> PushReceipt:
        push_id = f"{uuid.uuid4().hex}@dmserver"
        content_type, body = self.build_request(msisdn, wsp_pdu, push_id)
        headers = Headers({b"Content-Type": [content_type.encode("ascii")]})
        try:
            code, answer = await _fetch(
                self._agent,
                b"POST",
                self._request_url(),
                headers,
                body,
                self._timeout,
                self._reactor,
            )
        except Exception as exc:
            logger.error("PAP request for %s failed: %r", msisdn, exc)
            raise GatewayError(
                f"Kannel PPG at {self.ppg_url} failed for {msisdn}: {exc!r}"
            ) from exc

        result_code, description = parse_pap_response(answer)
        if code not in PAP_ACCEPTED_STATUSES or result_code not in PAP_SUCCESS_CODES:
            logger.error(
                "PPG rejected push %s for %s: HTTP %d, PAP code %s %s",
                push_id,
                msisdn,
                code,
                result_code,
                description,
            )
            raise GatewayError(
                f"Kannel PPG rejected push for {msisdn}: HTTP {code}, PAP code "
                f"{result_code} {description!r}"
            )
        logger.info("push %s accepted by the PPG for %s", push_id, msisdn)
        return PushReceipt(
            gateway=self.name,
            msisdn=msisdn,
            reference=reference,
            segments=sms.count_segments(wsp_pdu),
            responses=[f"{result_code} {description}"],
            sent_at=self._reactor.seconds(),
        )


def parse_pap_response(document: bytes) -> tuple[str | None, str]:
    """Return (code, desc) of the first response-result or badmessage-response.

    Returns (None, text) when the document is not PAP XML.
    """
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        root = etree.fromstring(document, parser)
    except etree.XMLSyntaxError:
        return None, document[:200].decode("utf-8", "replace")
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        local = etree.QName(element).localname
        if local in ("response-result", "badmessage-response"):
            return element.get("code"), element.get("desc", "")
    return None, "no response-result element"
