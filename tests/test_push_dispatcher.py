"""PushDispatcher scheduling on a deterministic twisted Clock."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from dmserver.push.dispatcher import PushDispatcher, PushOutcome
from dmserver.push.gateways import GatewayError, PushReceipt
from dmserver.push.sms import count_segments

SHORT_PDU = b"\x01\x06\x03\xc4\xaf\x87" + b"\x00" * 40
LONG_PDU = b"\x01\x06\x03\xc4\xaf\x87" + b"\x00" * 300  # three SMS


class FakeGateway:
    name = "fake"

    def __init__(self, clock: Clock, *, auto: bool = True) -> None:
        self.clock = clock
        self.auto = auto
        self.sent: list[tuple[float, str, bytes, int]] = []
        self.pending: list[defer.Deferred] = []
        self.fail_next = 0

    def send_push(self, msisdn, wsp_pdu, *, reference):
        self.sent.append((self.clock.seconds(), msisdn, wsp_pdu, reference))
        receipt = PushReceipt(
            gateway=self.name,
            msisdn=msisdn,
            reference=reference,
            segments=count_segments(wsp_pdu),
        )
        if self.fail_next:
            self.fail_next -= 1
            return defer.fail(GatewayError("HTTP 503 from gateway"))
        if self.auto:
            return defer.succeed(receipt)
        pending = defer.Deferred()
        self.pending.append(pending)
        return pending

    def times(self) -> list[float]:
        return [entry[0] for entry in self.sent]


def make(clock, gateway, records, **overrides):
    settings = dict(
        rate_per_second=10.0,
        retry_window=60.0,
        backoff=2.0,
        max_pushes=3,
    )
    settings.update(overrides)
    return PushDispatcher(
        gateway,
        clock,
        on_push=lambda *record: records.append(record),
        **settings,
    )


def test_retries_with_backoff_then_gives_up():
    clock = Clock()
    gateway = FakeGateway(clock)
    records = []
    dispatcher = make(clock, gateway, records)

    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    clock.pump([10.0] * 50)

    # Windows of 60, 120 and 240 seconds follow pushes at 0, 60 and 180.
    assert gateway.times() == [0.0, 60.0, 180.0]
    assert records == [
        ("job-1", 1, PushOutcome.SENT, None),
        ("job-1", 2, PushOutcome.SENT, None),
        ("job-1", 3, PushOutcome.SENT, None),
        ("job-1", 3, PushOutcome.EXHAUSTED, "no session after 3 pushes"),
    ]
    assert clock.seconds() >= 420.0
    assert dispatcher.pending_jobs == frozenset()


def test_exhausted_reported_when_last_window_closes():
    clock = Clock()
    gateway = FakeGateway(clock)
    records = []
    dispatcher = make(clock, gateway, records, max_pushes=1)

    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    clock.advance(59.0)
    assert records[-1][2] is PushOutcome.SENT
    clock.advance(1.0)

    assert records[-1] == (
        "job-1",
        1,
        PushOutcome.EXHAUSTED,
        "no session after 1 pushes",
    )


def test_session_started_stops_retries():
    clock = Clock()
    gateway = FakeGateway(clock)
    records = []
    dispatcher = make(clock, gateway, records)

    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    clock.advance(30.0)
    stopped = dispatcher.session_started("job-1")
    clock.pump([60.0] * 10)

    assert stopped is True
    assert len(gateway.sent) == 1
    assert records == [("job-1", 1, PushOutcome.SENT, None)]
    assert dispatcher.session_started("job-1") is False


def test_session_started_during_send_still_records_attempt():
    clock = Clock()
    gateway = FakeGateway(clock, auto=False)
    records = []
    dispatcher = make(clock, gateway, records)

    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    dispatcher.session_started("job-1")
    gateway.pending[0].callback(
        PushReceipt(gateway="fake", msisdn="+15550001", reference=0, segments=1)
    )
    clock.pump([60.0] * 10)

    assert records == [("job-1", 1, PushOutcome.SENT, None)]
    assert len(gateway.sent) == 1


def test_cancel_stops_retries():
    clock = Clock()
    gateway = FakeGateway(clock)
    records = []
    dispatcher = make(clock, gateway, records)

    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    assert dispatcher.cancel("job-1") is True
    clock.pump([60.0] * 10)

    assert len(gateway.sent) == 1


def test_rate_limit_spaces_pushes():
    clock = Clock()
    gateway = FakeGateway(clock)
    records = []
    dispatcher = make(clock, gateway, records, rate_per_second=2.0)

    for index in range(4):
        dispatcher.schedule(f"job-{index}", "+15550001", lambda attempt: SHORT_PDU)
    clock.pump([0.25] * 8)

    assert gateway.times() == [0.0, 0.5, 1.0, 1.5]


def test_rate_limit_burst():
    clock = Clock()
    gateway = FakeGateway(clock)
    records = []
    dispatcher = make(clock, gateway, records, rate_per_second=1.0, burst=3.0)

    for index in range(5):
        dispatcher.schedule(f"job-{index}", "+15550001", lambda attempt: SHORT_PDU)
    clock.pump([0.5] * 8)

    assert gateway.times() == [0.0, 0.0, 0.0, 1.0, 2.0]


def test_rate_limit_counts_sms_segments():
    clock = Clock()
    gateway = FakeGateway(clock)
    records = []
    dispatcher = make(clock, gateway, records, rate_per_second=1.0)

    dispatcher.schedule("long", "+15550001", lambda attempt: LONG_PDU)
    dispatcher.schedule("short", "+15550002", lambda attempt: SHORT_PDU)
    clock.pump([0.5] * 10)

    # The three-segment push leaves the bucket two tokens in debt.
    assert count_segments(LONG_PDU) == 3
    assert gateway.times() == [0.0, 3.0]


def test_gateway_error_is_recorded_and_retried():
    clock = Clock()
    gateway = FakeGateway(clock)
    gateway.fail_next = 1
    records = []
    dispatcher = make(clock, gateway, records, gateway_retry_delay=30.0)

    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    clock.advance(30.0)

    # The failed request does not count: the retry is attempt 1 again.
    assert records == [
        ("job-1", 1, PushOutcome.GATEWAY_ERROR, "HTTP 503 from gateway"),
        ("job-1", 1, PushOutcome.SENT, None),
    ]
    assert gateway.times() == [0.0, 30.0]


def test_gateway_errors_do_not_use_push_budget():
    clock = Clock()
    gateway = FakeGateway(clock)
    gateway.fail_next = 5
    records = []
    dispatcher = make(
        clock, gateway, records, max_pushes=1, gateway_retry_delay=10.0, max_gateway_retries=8
    )

    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    clock.pump([5.0] * 200)

    # Retries after 10, 20, 40, 80 and 160 s of back-off (backoff 2).
    assert gateway.times() == [0.0, 10.0, 30.0, 70.0, 150.0, 310.0]
    outcomes = [(attempt, outcome) for _job, attempt, outcome, _error in records]
    assert outcomes == [(1, PushOutcome.GATEWAY_ERROR)] * 5 + [
        (1, PushOutcome.SENT),
        (1, PushOutcome.EXHAUSTED),
    ]


def test_gateway_outage_gives_job_up_separately():
    clock = Clock()
    gateway = FakeGateway(clock)
    gateway.fail_next = 100
    records = []
    dispatcher = make(clock, gateway, records, gateway_retry_delay=10.0, max_gateway_retries=2)

    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    clock.pump([5.0] * 20)

    assert gateway.times() == [0.0, 10.0, 30.0]
    assert records[-1] == (
        "job-1",
        1,
        PushOutcome.GATEWAY_EXHAUSTED,
        "gateway failed 3 times in a row: HTTP 503 from gateway",
    )
    assert dispatcher.pending_jobs == frozenset()
    assert dispatcher.gateway_failing is True


def test_build_error_drops_job():
    clock = Clock()
    gateway = FakeGateway(clock)
    records = []
    dispatcher = make(clock, gateway, records)

    def factory(attempt):
        raise ValueError("server id too long for this client")

    dispatcher.schedule("job-1", "+15550001", factory)
    dispatcher.schedule("job-2", "+15550002", lambda attempt: SHORT_PDU)
    clock.pump([60.0] * 10)

    assert records[0] == (
        "job-1",
        1,
        PushOutcome.BUILD_ERROR,
        "server id too long for this client",
    )
    assert [entry[1] for entry in gateway.sent] == ["+15550002"] * 3
    assert "job-1" not in dispatcher.pending_jobs


def test_factory_gets_attempt_numbers_and_references_advance():
    clock = Clock()
    gateway = FakeGateway(clock)
    records = []
    attempts = []
    dispatcher = make(clock, gateway, records)

    def factory(attempt):
        attempts.append(attempt)
        return SHORT_PDU + bytes([attempt])

    dispatcher.schedule("job-1", "+15550001", factory)
    clock.pump([60.0] * 10)

    assert attempts == [1, 2, 3]
    assert [entry[2][-1] for entry in gateway.sent] == [1, 2, 3]
    assert [entry[3] for entry in gateway.sent] == [0, 1, 2]


def test_schedule_twice_raises():
    clock = Clock()
    dispatcher = make(clock, FakeGateway(clock), [])
    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)

    with pytest.raises(ValueError, match="already has pushes pending"):
        dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)


def test_schedule_again_after_session():
    clock = Clock()
    gateway = FakeGateway(clock)
    dispatcher = make(clock, gateway, [])
    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    dispatcher.session_started("job-1")

    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    clock.advance(1.0)

    assert len(gateway.sent) == 2


def test_failing_callback_does_not_stop_dispatch():
    clock = Clock()
    gateway = FakeGateway(clock)

    def broken(*record):
        raise RuntimeError("database down")

    dispatcher = PushDispatcher(
        gateway,
        clock,
        rate_per_second=10,
        retry_window=60,
        backoff=1,
        max_pushes=2,
        on_push=broken,
    )
    dispatcher.schedule("job-1", "+15550001", lambda attempt: SHORT_PDU)
    clock.pump([60.0] * 3)

    assert gateway.times() == [0.0, 60.0]


@pytest.mark.parametrize(
    "overrides",
    [
        {"rate_per_second": 0},
        {"retry_window": 0},
        {"backoff": 0.5},
        {"max_pushes": 0},
        {"burst": 0.5},
        {"gateway_retry_delay": 0},
        {"max_gateway_retries": -1},
    ],
)
def test_invalid_settings(overrides):
    clock = Clock()
    with pytest.raises(ValueError):
        make(clock, FakeGateway(clock), [], **overrides)
