"""Gateway adapters against HTTP servers on 127.0.0.1 and a temp directory.

The sendsms and PPG stand-ins record the real HTTP requests our gateways
make; the real Kannel is exercised in test_push_kannel.py.
"""

import email.parser
import email.policy
import json
import os
import shutil
import tempfile
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource, server

from dmserver.push import gateways, pkg0, sms, wsp

MSISDN = "+15550001"


def sample_push(vendor: bytes = b"") -> bytes:
    package0 = pkg0.build_notification(
        server_id="dmserver",
        password="pw",
        nonce=b"\x01\x02\x03\x04",
        session_id=0x0101,
        vendor_specific=vendor,
    )
    return wsp.build_dm_notification_push(package0)


class RecordingResource(resource.Resource):
    isLeaf = True

    def __init__(self, responses: list[tuple[int, bytes]]) -> None:
        super().__init__()
        self.responses = responses
        self.requests: list[dict] = []

    def _record(self, request) -> bytes:
        self.requests.append(
            {
                "method": request.method,
                "uri": request.uri,
                "headers": {
                    key.decode().lower(): values[0].decode()
                    for key, values in request.requestHeaders.getAllRawHeaders()
                },
                "body": request.content.read(),
            }
        )
        code, body = self.responses[min(len(self.requests), len(self.responses)) - 1]
        request.setResponseCode(code)
        return body

    render_GET = _record
    render_POST = _record


def raw_query(uri: bytes) -> dict[str, bytes]:
    """Decode a query string keeping binary values as octets."""
    query = urlsplit(uri).query
    values = {}
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        values[key.decode()] = unquote_to_bytes(value.replace(b"+", b" "))
    return values


class FileGatewayTests(unittest.TestCase):
    def mktemp(self) -> str:
        # trial's mktemp makes a path relative to the working directory,
        # which under pytest is the repository.
        directory = tempfile.mkdtemp(prefix="dmserver-push-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "pushes")

    def test_writes_segments_and_reads_them_back(self):
        directory = self.mktemp()
        gateway = gateways.FileGateway(directory, clock=lambda: 1700000000.5)
        pdu = sample_push(vendor=bytes(200))

        receipt = self.successResultOf(gateway.send_push(MSISDN, pdu, reference=0x33))

        self.assertEqual(receipt.segments, 2)
        self.assertEqual(receipt.gateway, "file")
        pushes = gateways.read_pushes(directory, MSISDN)
        self.assertEqual(len(pushes), 1)
        self.assertEqual(pushes[0].wsp_pdu, pdu)
        self.assertEqual(pushes[0].reference, 0x33)
        self.assertEqual(pushes[0].dcs, sms.DCS_8BIT)
        record = json.loads(pushes[0].path.read_text())
        self.assertEqual(record["msisdn"], MSISDN)
        self.assertEqual(record["timestamp"], 1700000000.5)
        self.assertEqual(record["segments"][0]["udh"], "0b05040b8423f00003330201")

    def test_read_pushes_filters_by_msisdn_in_order(self):
        directory = self.mktemp()
        times = iter([3.0, 1.0, 2.0])
        gateway = gateways.FileGateway(directory, clock=lambda: next(times))

        self.successResultOf(gateway.send_push(MSISDN, b"\x01first", reference=1))
        self.successResultOf(gateway.send_push("+15550002", b"\x01other", reference=2))
        self.successResultOf(gateway.send_push(MSISDN, b"\x01second", reference=3))

        pushes = gateways.read_pushes(directory, MSISDN)
        self.assertEqual(
            [push.wsp_pdu for push in pushes], [b"\x01second", b"\x01first"]
        )

    def test_read_pushes_missing_directory(self):
        self.assertEqual(gateways.read_pushes(self.mktemp(), MSISDN), [])

    def test_rejects_invalid_msisdn(self):
        gateway = gateways.FileGateway(self.mktemp())

        failure = self.failureResultOf(
            gateway.send_push("+1555&x=1", b"\x01", reference=1), gateways.GatewayError
        )

        self.assertIn("invalid", failure.getErrorMessage())


class HttpGatewayTestCase(unittest.TestCase):
    def serve(
        self, responses: list[tuple[int, bytes]]
    ) -> tuple[RecordingResource, int]:
        recorder = RecordingResource(responses)
        port = reactor.listenTCP(0, server.Site(recorder), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return recorder, port.getHost().port


class KannelSendsmsGatewayTests(HttpGatewayTestCase):
    @defer.inlineCallbacks
    def test_one_request_per_segment(self):
        recorder, port = self.serve([(202, b"0: Accepted for delivery")])
        gateway = gateways.KannelSendsmsGateway(
            f"http://127.0.0.1:{port}/cgi-bin/sendsms", "user", "pass&word", smsc="FAKE"
        )
        pdu = sample_push(vendor=bytes(range(200)))

        receipt = yield gateway.send_push(MSISDN, pdu, reference=0x44)

        self.assertEqual(receipt.segments, 2)
        self.assertEqual(receipt.responses, ["0: Accepted for delivery"] * 2)
        self.assertEqual(len(recorder.requests), 2)
        segments = sms.split_into_segments(pdu, 0x44)
        for request, segment in zip(recorder.requests, segments, strict=True):
            query = raw_query(request["uri"])
            self.assertEqual(request["method"], b"GET")
            self.assertEqual(query["username"], b"user")
            self.assertEqual(query["password"], b"pass&word")
            self.assertEqual(query["to"], MSISDN.encode())
            self.assertEqual(query["coding"], b"1")
            self.assertEqual(query["smsc"], b"FAKE")
            self.assertEqual(query["udh"], segment.udh)
            self.assertEqual(query["text"], segment.data)
            self.assertNotIn("mclass", query)
            self.assertNotIn("from", query)

    @defer.inlineCallbacks
    def test_class_1_and_sender(self):
        recorder, port = self.serve([(200, b"Sent.")])
        gateway = gateways.KannelSendsmsGateway(
            f"http://127.0.0.1:{port}/cgi-bin/sendsms",
            "user",
            "pw",
            sender="9200",
            message_class_1=True,
        )

        yield gateway.send_push(MSISDN, sample_push(), reference=1)

        query = raw_query(recorder.requests[0]["uri"])
        self.assertEqual(query["mclass"], b"1")
        self.assertEqual(query["from"], b"9200")

    @defer.inlineCallbacks
    def test_rejection_stops_at_failing_segment(self):
        recorder, port = self.serve(
            [
                (202, b"0: Accepted for delivery"),
                (403, b"Authorization failed for sendsms"),
            ]
        )
        gateway = gateways.KannelSendsmsGateway(
            f"http://127.0.0.1:{port}/cgi-bin/sendsms", "user", "pw"
        )
        pdu = sample_push(vendor=bytes(400))

        with self.assertRaises(gateways.GatewayError) as caught:
            yield gateway.send_push(MSISDN, pdu, reference=1)

        self.assertIn("segment 2/4", str(caught.exception))
        self.assertIn("403", str(caught.exception))
        self.assertNotIn("pw", str(caught.exception).replace("/", " ").split())
        self.assertEqual(len(recorder.requests), 2)

    @defer.inlineCallbacks
    def test_connection_refused(self):
        gateway = gateways.KannelSendsmsGateway(
            "http://127.0.0.1:1/cgi-bin/sendsms", "user", "pw", timeout=5
        )

        with self.assertRaises(gateways.GatewayError) as caught:
            yield gateway.send_push(MSISDN, sample_push(), reference=1)

        self.assertIn("127.0.0.1:1", str(caught.exception))


PAP_ACCEPTED = (
    b'<?xml version="1.0"?><!DOCTYPE pap PUBLIC "-//WAPFORUM//DTD PAP 1.0//EN" '
    b'"http://www.wapforum.org/DTD/pap_1.0.dtd"><pap><push-response push-id="x" '
    b'sender-name="vm; WAP/1.3 (Kannel/1.4.5)" reply-time="2026-12-04T15:50:49Z" '
    b'sender-address="/wappush"><response-result code ="1001" desc="The request '
    b'has been accepted for processing"></response-result></push-response></pap>'
)
PAP_BAD_MESSAGE = (
    b'<?xml version="1.0"?><pap><badmessage-response code="2000" '
    b'desc="Bad request" bad-message-fragment="x"/></pap>'
)


class KannelPapGatewayTests(HttpGatewayTestCase):
    @defer.inlineCallbacks
    def test_posts_multipart_related(self):
        recorder, port = self.serve([(202, PAP_ACCEPTED)])
        gateway = gateways.KannelPapGateway(
            f"http://127.0.0.1:{port}/wappush", username="u", password="p"
        )
        pdu = sample_push()

        receipt = yield gateway.send_push(MSISDN, pdu, reference=5)

        self.assertEqual(receipt.responses[0].split()[0], "1001")
        request = recorder.requests[0]
        self.assertEqual(request["method"], b"POST")
        self.assertEqual(raw_query(request["uri"])["username"], b"u")
        content_type = request["headers"]["content-type"]
        self.assertTrue(content_type.startswith("multipart/related; boundary="))
        self.assertIn('type="application/xml"', content_type)

        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request["body"]
        )
        control, content = list(message.iter_parts())
        self.assertEqual(control.get_content_type(), "application/xml")
        control_xml = control.get_payload(decode=True).decode()
        self.assertIn('address-value="WAPPUSH=+15550001/TYPE=PLMN@ppg"', control_xml)
        self.assertIn('bearer="SMS"', control_xml)
        self.assertEqual(
            content.get_content_type(), "application/vnd.syncml.notification"
        )
        self.assertEqual(content["X-Wap-Application-Id"], "x-wap-application:syncml.dm")
        self.assertEqual(content.get_payload(decode=True), wsp.parse_push_pdu(pdu).body)

    @defer.inlineCallbacks
    def test_bad_message_response(self):
        _, port = self.serve([(400, PAP_BAD_MESSAGE)])
        gateway = gateways.KannelPapGateway(f"http://127.0.0.1:{port}/wappush")

        with self.assertRaises(gateways.GatewayError) as caught:
            yield gateway.send_push(MSISDN, sample_push(), reference=5)

        self.assertIn("2000", str(caught.exception))


def test_parse_pap_response_result():
    assert gateways.parse_pap_response(PAP_ACCEPTED) == (
        "1001",
        "The request has been accepted for processing",
    )


def test_parse_pap_response_not_xml():
    code, description = gateways.parse_pap_response(b"<html>oops")

    assert code is None
    assert "oops" in description


def test_parse_pap_response_ignores_entities():
    document = (
        b'<?xml version="1.0"?><!DOCTYPE pap [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<pap><response-result code="1000" desc="&x;"/></pap>'
    )

    code, description = gateways.parse_pap_response(document)

    assert "root:" not in (description or "")
