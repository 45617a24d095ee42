"""PushService against a real SQLite store, a FileGateway and a Clock.

Database work runs synchronously here (``SyncDatabase``) and time comes from
``twisted.internet.task.Clock``, so every retry window is stepped exactly.
Expected Package 0 octets are recomputed from the notification spec with
hashlib; Package 1 comes from the dmsim session engine and goes through
the server's real request handler.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from twisted.internet import defer
from twisted.internet.task import Clock

from dmserver.fota import downloads
from dmserver.push import sl, wsp
from dmserver.push.gateways import FileGateway, GatewayError, read_pushes
from dmserver.push.service import GatewaySpec, PushConfig, PushService
from dmserver.session.service import ServerSettings, process_request
from dmserver.store.db import Database
from dmserver.store.models import Device, Job, JobEvent, Package
from tests.conftest import MODEL, NEW_VERSION, OLD_IMAGE, OLD_VERSION, dmserver_cli

DEVICE = "IMEI:490154203237518"
MSISDN = "+15550100"
SERVER_ID = "dmserver"
SERVER_PASSWORD = "server-secret"
CLIENT_PASSWORD = "client-secret"
BASE_URL = "http://127.0.0.1:8700"
SESSION_IDS = [0x1A2B, 0x0C0D, 0x3E4F, 0x5A6B]
WINDOW = 10.0
SCAN = 2.0
NOTIFY_WINDOW = 50.0


class SyncDatabase:
    """A Database whose ``run`` works in the calling thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def run(self, work):
        return defer.maybeDeferred(self.db.call, work)

    def call(self, work):
        return self.db.call(work)


class ThreadlessClock(Clock):
    def callFromThread(self, function, *args, **kwargs):
        function(*args, **kwargs)


@pytest.fixture
def data_dir(catalogue_dir, tmp_path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(catalogue_dir, target)
    return target


@pytest.fixture
def database(data_dir) -> SyncDatabase:
    db = Database(f"sqlite:///{data_dir / 'dmserver.db'}")
    db.upgrade()
    yield SyncDatabase(db)
    db.dispose()


def add_device(data_dir: Path, *extra: str) -> None:
    dmserver_cli(
        data_dir,
        "device",
        "add",
        DEVICE,
        "--client-password",
        CLIENT_PASSWORD,
        "--server-password",
        SERVER_PASSWORD,
        "--model",
        MODEL,
        "--msisdn",
        MSISDN,
        *extra,
    )
    dmserver_cli(data_dir, "job", "fota", DEVICE, "--version", NEW_VERSION)


class Harness:
    def __init__(self, database: SyncDatabase, tmp_path: Path, server_id: str = SERVER_ID, **config):
        self.database = database
        self.clock = ThreadlessClock()
        self.push_dir = tmp_path / "pushes"
        self.settings = ServerSettings(server_id=server_id, base_url=BASE_URL)
        options = dict(
            gateway=GatewaySpec("file", str(self.push_dir)),
            rate=100.0,
            retry_window=WINDOW,
            backoff=2.0,
            max_pushes=3,
            scan_interval=SCAN,
            notify_window=NOTIFY_WINDOW,
        )
        options.update(config)
        self.config = PushConfig(**options)
        self.session_ids = list(SESSION_IDS)
        self.service = self._new_service()

    def _new_service(self) -> PushService:
        return PushService(
            self.database,
            self.settings,
            self.config,
            FileGateway(self.push_dir, clock=self.clock.seconds),
            self.clock,
            session_ids=lambda: self.session_ids.pop(0),
        )

    def restart(self) -> None:
        self.service.stopService()
        self.service = self._new_service()
        self.service.startService()

    def pushes(self) -> list[wsp.PushPdu]:
        return [wsp.parse_push_pdu(stored.wsp_pdu) for stored in read_pushes(self.push_dir, MSISDN)]

    def events(self, kind: str | None = None) -> list[dict]:
        def read(session):
            query = select(JobEvent).order_by(JobEvent.id)
            rows = session.scalars(query).all()
            return [
                {"kind": row.kind, **(row.detail or {})}
                for row in rows
                if kind is None or row.kind == kind
            ]

        return self.database.call(read)

    def job(self) -> dict:
        def read(session):
            job = session.scalars(select(Job)).one()
            package = session.get(Package, job.package_id) if job.package_id else None
            return {
                "state": job.state,
                "token": job.token,
                "result_code": job.result_code,
                "result_text": job.result_text,
                "package_source": package.source_version if package else None,
                "package_type": package.payload_type if package else None,
            }

        return self.database.call(read)


def expected_package0(session_id: int, nonce: bytes, version: int = 12, password: str = SERVER_PASSWORD) -> bytes:
    """Package 0 per OMA-TS-DM_Notification-V1_2 section 6.2, computed here."""
    server_id = SERVER_ID.encode()
    # version(10) ui-mode(2)=1 initiator(1)=1 future-use(27)=0 session id(16) length(8)
    header = (version << 54) | (1 << 52) | (1 << 51) | (session_id << 8) | len(server_id)
    trigger = header.to_bytes(8, "big") + server_id
    credentials = base64.b64encode(hashlib.md5(f"{SERVER_ID}:{password}".encode()).digest())
    trigger_hash = base64.b64encode(hashlib.md5(trigger).digest())
    return hashlib.md5(credentials + b":" + nonce + b":" + trigger_hash).digest() + trigger


def set_device(database: SyncDatabase, **values) -> None:
    def update(session):
        device = session.scalars(select(Device)).one()
        for name, value in values.items():
            setattr(device, name, value)

    database.call(update)


# -- Package 0 ---------------------------------------------------------------


def test_queued_job_gets_package0(database, data_dir, tmp_path):
    add_device(data_dir)
    harness = Harness(database, tmp_path)

    harness.service.startService()

    pushes = harness.pushes()
    assert len(pushes) == 1
    assert pushes[0].content_type_code == wsp.CONTENT_TYPE_SYNCML_NOTIFICATION
    assert pushes[0].application_id_code == wsp.APPLICATION_ID_SYNCML_DM
    # The server has no stored nonce yet: four zero octets, the default resync nonce.
    assert pushes[0].body == expected_package0(0x1A2B, b"\x00\x00\x00\x00")
    events = harness.events("push")
    assert len(events) == 1
    assert events[0]["attempt"] == 1
    assert events[0]["outcome"] == "sent"
    assert events[0]["session_id"] == "1A2B"
    assert events[0]["nonce"] == "resync:zero-bytes"
    assert events[0]["mode"] == "package0"
    assert harness.job()["state"] == "queued"


def test_stored_server_nonce_signs_package0(database, data_dir, tmp_path):
    add_device(data_dir)
    set_device(database, server_nonce=bytes.fromhex("0a1b2c3d"))
    harness = Harness(database, tmp_path)

    harness.service.startService()

    assert harness.pushes()[0].body == expected_package0(0x1A2B, bytes.fromhex("0a1b2c3d"))
    assert harness.events("push")[0]["nonce"] == "server-nonce"


def test_profile_version_and_resync_form(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "pkg0_version=11", "--profile", "resync_nonce=hex-text")
    harness = Harness(database, tmp_path)

    harness.service.startService()

    assert harness.pushes()[0].body == expected_package0(0x1A2B, b"0x00000000", version=11)
    assert harness.events("push")[0]["nonce"] == "resync:hex-text"


def test_retries_until_max_then_exhausted(database, data_dir, tmp_path):
    add_device(data_dir)
    harness = Harness(database, tmp_path)
    harness.service.startService()

    harness.clock.advance(WINDOW)  # first window over: push 2
    pushes_after_first_window = len(harness.pushes())
    harness.clock.advance(WINDOW * 2)  # second window (backoff 2): push 3
    pushes_after_second_window = len(harness.pushes())
    harness.clock.advance(WINDOW * 4)  # last window: give up
    harness.clock.advance(WINDOW * 20)  # later scans push nothing more

    assert pushes_after_first_window == 2
    assert pushes_after_second_window == 3
    bodies = [push.body for push in harness.pushes()]
    assert bodies == [
        expected_package0(session_id, b"\x00\x00\x00\x00") for session_id in SESSION_IDS[:3]
    ]
    events = harness.events("push")
    assert [(event["attempt"], event["outcome"]) for event in events] == [
        (1, "sent"),
        (2, "sent"),
        (3, "sent"),
        (3, "exhausted"),
    ]
    assert [event.get("session_id") for event in events[:3]] == ["1A2B", "C0D", "3E4F"]
    # The device may still call in by itself.
    assert harness.job()["state"] == "queued"


def test_restart_resumes_attempt_count(database, data_dir, tmp_path):
    add_device(data_dir)
    harness = Harness(database, tmp_path)
    harness.service.startService()
    harness.clock.advance(WINDOW)

    harness.restart()
    harness.clock.advance(WINDOW * 100)

    events = harness.events("push")
    assert [(event["attempt"], event["outcome"]) for event in events] == [
        (1, "sent"),
        (2, "sent"),
        (3, "sent"),
        (3, "exhausted"),
    ]
    assert len(harness.pushes()) == 3


def test_profile_rejects_long_server_id(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "max_server_id_length=8")
    harness = Harness(database, tmp_path, server_id="dmserver.example.com")

    harness.service.startService()

    job = harness.job()
    assert harness.pushes() == []
    assert job["state"] == "failed"
    assert "rejects the Package 0 trigger" in job["result_text"]
    assert "at most 8" in job["result_text"]


def test_invalid_stored_profile_fails_job(database, data_dir, tmp_path):
    add_device(data_dir)
    set_device(database, profile={"pkg0_version": 13})
    harness = Harness(database, tmp_path)

    harness.service.startService()

    assert harness.pushes() == []
    assert harness.job()["state"] == "failed"
    assert "pkg0_version 13 is invalid" in harness.job()["result_text"]


def test_cli_rejects_invalid_profile(data_dir):
    result = dmserver_cli(
        data_dir,
        "device",
        "add",
        DEVICE,
        "--client-password",
        CLIENT_PASSWORD,
        "--server-password",
        SERVER_PASSWORD,
        "--profile",
        "resync_nonce=ones",
        check=False,
    )

    assert result.returncode == 2
    assert "resync_nonce 'ones' is invalid" in result.stderr


def test_device_without_msisdn_is_not_pushed(database, data_dir, tmp_path):
    add_device(data_dir)
    set_device(database, msisdn=None)
    harness = Harness(database, tmp_path)

    harness.service.startService()
    harness.clock.advance(WINDOW)

    assert harness.pushes() == []
    assert harness.events("push") == []


# -- correlation of the session that follows ------------------------------------


def package1(tmp_path: Path, session_id: str) -> bytes:
    """Package 1 of a server-initiated session, built by the dmsim client engine."""
    from dmserver.sim.phone import Phone
    from dmserver.sim.session import ClientSession, SessionConfig
    from dmserver.syncml.codes import AlertCode

    phone = Phone.create(
        tmp_path / "phone",
        device_id=DEVICE,
        model=MODEL,
        manufacturer="Example Handsets",
        firmware_version=OLD_VERSION,
        firmware=OLD_IMAGE,
        cert=b"not used here",
        client_password=CLIENT_PASSWORD,
        server_password=SERVER_PASSWORD,
        server_id=SERVER_ID,
    )
    config = SessionConfig(alert_code=AlertCode.SERVER_INITIATED_MGMT, session_id=session_id)
    return ClientSession(phone, f"{BASE_URL}/dm", config).start().body


def send_package1(harness: Harness, body: bytes) -> None:
    harness.database.call(
        lambda session: process_request(
            session,
            body,
            "application/vnd.syncml.dm+xml",
            None,
            None,
            harness.settings,
            datetime(2026, 1, 1),
        )
    )


@pytest.mark.parametrize(
    ("session_id", "form"),
    [
        ("1A2B", "hex"),
        ("1a2b", "hex"),
        ("6699", "decimal"),  # 0x1A2B
        ("2B1A", "byte-swapped"),
        ("11034", "byte-swapped"),  # 0x2B1A in decimal
        ("7777", None),
    ],
)
def test_session_id_correlation(database, data_dir, tmp_path, session_id, form):
    add_device(data_dir)
    harness = Harness(database, tmp_path)
    harness.service.startService()

    send_package1(harness, package1(tmp_path, session_id))
    harness.clock.advance(WINDOW * 100)

    started = harness.events("session-started")
    assert len(started) == 1
    assert started[0]["session_id"] == session_id
    assert started[0]["notified_session_id"] == "1A2B"
    assert started[0]["form"] == form
    # The device called in: no second push, no give-up.
    assert len(harness.pushes()) == 1
    assert [event["outcome"] for event in harness.events("push")] == ["sent"]


def test_correlation_finds_earlier_push(database, data_dir, tmp_path):
    add_device(data_dir)
    harness = Harness(database, tmp_path)
    harness.service.startService()
    harness.clock.advance(WINDOW)  # second push, session id 0x0C0D

    send_package1(harness, package1(tmp_path, "1A2B"))

    started = harness.events("session-started")[0]
    assert started["form"] == "hex"
    assert started["attempt"] == 1


def test_client_initiated_session_is_not_correlated(database, data_dir, tmp_path):
    from dmserver.sim.phone import Phone
    from dmserver.sim.session import ClientSession

    add_device(data_dir)
    harness = Harness(database, tmp_path)
    harness.service.startService()
    phone = Phone.create(
        tmp_path / "phone",
        device_id=DEVICE,
        model=MODEL,
        manufacturer="Example Handsets",
        firmware_version=OLD_VERSION,
        firmware=OLD_IMAGE,
        cert=b"not used here",
        client_password=CLIENT_PASSWORD,
        server_password=SERVER_PASSWORD,
    )

    send_package1(harness, ClientSession(phone, f"{BASE_URL}/dm").start().body)

    assert harness.events("session-started") == []


# -- session-less delivery ------------------------------------------------------


def test_sessionless_pushes_service_loading(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true", "--firmware-version", OLD_VERSION)
    harness = Harness(database, tmp_path)

    harness.service.startService()

    job = harness.job()
    pushes = harness.pushes()
    assert job["state"] == "delivered"
    assert job["package_type"] == "delta"
    assert job["package_source"] == OLD_VERSION
    assert len(pushes) == 1
    assert pushes[0].content_type == "application/vnd.wap.slc"
    assert pushes[0].application_id is None
    assert sl.parse_sl(pushes[0].body).href == f"{BASE_URL}/dl/dd/{job['token']}"
    delivered = harness.events("delivered")[0]
    assert delivered["sessionless"] is True
    assert harness.events("push")[0]["form"] == "service-loading"


def test_sessionless_unknown_version_gets_full_image(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true")
    harness = Harness(database, tmp_path)

    harness.service.startService()

    assert harness.job()["state"] == "delivered"
    assert harness.job()["package_type"] == "full"


def test_sessionless_completed_by_install_notify(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true", "--firmware-version", OLD_VERSION)
    harness = Harness(database, tmp_path)
    harness.service.startService()
    token = harness.job()["token"]

    harness.database.call(lambda s: downloads.descriptor_for(s, token, BASE_URL, datetime(2026, 1, 1)))
    harness.database.call(lambda s: downloads.install_notify(s, token, b"900 Success\r\n", datetime(2026, 1, 1)))
    harness.clock.advance(WINDOW * 100)

    job = harness.job()
    assert job["state"] == "succeeded"
    assert job["result_code"] == 200
    assert [event["kind"] for event in harness.events() if event["kind"] in ("installed", "succeeded")] == [
        "installed",
        "succeeded",
    ]
    # The service stopped: one Service Loading push, no fall-back.
    assert len(harness.pushes()) == 1
    assert harness.events("push-fallback") == []


def test_sessionless_failed_notify_fails_job(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true", "--firmware-version", OLD_VERSION)
    harness = Harness(database, tmp_path)
    harness.service.startService()
    token = harness.job()["token"]

    harness.database.call(
        lambda s: downloads.install_notify(s, token, b"902 Loss of Service\r\n", datetime(2026, 1, 1))
    )
    harness.clock.advance(WINDOW * 100)

    assert harness.job()["state"] == "failed"
    assert len(harness.pushes()) == 1


def test_sessionless_falls_back_without_descriptor_fetch(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true", "--firmware-version", OLD_VERSION)
    harness = Harness(database, tmp_path, max_pushes=2)
    harness.service.startService()

    harness.clock.advance(WINDOW)  # second Service Loading push
    harness.clock.advance(WINDOW * 2)  # no fetch: fall back, Package 0 at once

    pushes = harness.pushes()
    assert [push.content_type for push in pushes] == [
        "application/vnd.wap.slc",
        "application/vnd.wap.slc",
        "application/vnd.syncml.notification",
    ]
    assert pushes[2].body == expected_package0(0x1A2B, b"\x00\x00\x00\x00")
    assert harness.job()["state"] == "queued"
    fallback = harness.events("push-fallback")
    assert len(fallback) == 1
    assert "not fetched after 2 Service Loading pushes" in fallback[0]["reason"]
    outcomes = [(event["mode"], event["attempt"], event["outcome"]) for event in harness.events("push")]
    assert outcomes == [
        ("sessionless", 1, "sent"),
        ("sessionless", 2, "sent"),
        ("sessionless", 2, "exhausted"),
        ("package0", 1, "sent"),
    ]


def test_sessionless_falls_back_without_notify(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true", "--firmware-version", OLD_VERSION)
    harness = Harness(database, tmp_path)
    harness.service.startService()
    token = harness.job()["token"]

    harness.database.call(lambda s: downloads.descriptor_for(s, token, BASE_URL, datetime(2026, 1, 1)))
    harness.clock.advance(SCAN)  # the scan sees the fetch and stops pushing
    pushes_while_waiting = len(harness.pushes())
    harness.clock.advance(NOTIFY_WINDOW)

    assert pushes_while_waiting == 1
    assert [push.content_type for push in harness.pushes()] == [
        "application/vnd.wap.slc",
        "application/vnd.syncml.notification",
    ]
    assert harness.job()["state"] == "queued"
    assert "no install notify within 50 s" in harness.events("push-fallback")[0]["reason"]


def test_sessionless_without_model_uses_package0(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true")
    set_device(database, model=None)
    harness = Harness(database, tmp_path)

    harness.service.startService()

    assert [push.content_type for push in harness.pushes()] == ["application/vnd.syncml.notification"]
    assert "model unknown" in harness.events("push-fallback")[0]["reason"]
    assert harness.job()["state"] == "queued"


def test_invalid_msisdn_recorded_once(database, data_dir, tmp_path):
    add_device(data_dir)
    set_device(database, msisdn="+1555-0100")
    harness = Harness(database, tmp_path)
    harness.service.startService()
    harness.clock.advance(SCAN)
    harness.clock.advance(SCAN)

    events = harness.events("push-msisdn-invalid")
    assert len(events) == 1
    assert events[0]["msisdn"] == "+1555-0100"
    assert harness.events("push") == []

    set_device(database, msisdn=MSISDN)
    harness.clock.advance(SCAN)
    assert len(harness.pushes()) == 1
    assert len(harness.events("push-msisdn-invalid")) == 1


class SwitchableGateway:
    """Wraps a gateway; while ``down`` every push fails with GatewayError."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.down = True
        self.requests = 0

    def send_push(self, msisdn, wsp_pdu, *, reference):
        self.requests += 1
        if self.down:
            return defer.fail(GatewayError("HTTP 503 from gateway"))
        return self.inner.send_push(msisdn, wsp_pdu, reference=reference)


def test_gateway_outage_keeps_push_budget(database, data_dir, tmp_path):
    add_device(data_dir)
    harness = Harness(database, tmp_path)
    gateway = SwitchableGateway(harness.service.dispatcher.gateway)
    harness.service.dispatcher.gateway = gateway
    harness.session_ids = list(range(1, 200))
    harness.service.startService()
    # The default back-off gives up on the job after about 7,400 s.
    for _ in range(200):
        harness.clock.advance(60.0)

    outcomes = [event["outcome"] for event in harness.events("push")]
    assert "gateway-exhausted" in outcomes
    assert "exhausted" not in outcomes
    assert harness.pushes() == []

    gateway.down = False
    for _ in range(100):
        harness.clock.advance(60.0)
    sent = [event["attempt"] for event in harness.events("push") if event["outcome"] == "sent"]
    # All three pushes of the budget reach the phone after the outage.
    assert sent == [1, 2, 3]
    assert harness.events("push")[-1]["outcome"] == "exhausted"


def test_gateway_exhausted_job_pushed_after_restart(database, data_dir, tmp_path):
    add_device(data_dir)
    harness = Harness(database, tmp_path)
    gateway = SwitchableGateway(harness.service.dispatcher.gateway)
    harness.service.dispatcher.gateway = gateway
    harness.session_ids = list(range(1, 200))
    harness.service.startService()
    # The default back-off gives up on the job after about 7,400 s.
    for _ in range(200):
        harness.clock.advance(60.0)
    assert "gateway-exhausted" in [event["outcome"] for event in harness.events("push")]

    harness.session_ids = [0x1A2B]
    harness.restart()  # the new service has a working gateway
    sent = [event["attempt"] for event in harness.events("push") if event["outcome"] == "sent"]
    assert sent == [1]
    assert len(harness.pushes()) == 1


def attach_campaign(database: SyncDatabase, state: str = "running", policy=None, full_only=False) -> int:
    """Create a campaign in ``state`` and make the queued job one of its jobs."""
    from dmserver.campaign import lifecycle
    from dmserver.campaign.spec import parse_spec
    from dmserver.store.models import Campaign

    body = {"name": "push", "target_version": NEW_VERSION, "selection": {"models": [MODEL]}}
    if policy is not None:
        body["policy"] = policy
    spec = parse_spec(body)

    def create(session):
        campaign = lifecycle.create(session, spec, datetime(2026, 1, 1))
        campaign.state = state
        if full_only:
            full = session.scalars(
                select(Package).where(
                    Package.model == MODEL,
                    Package.target_version == NEW_VERSION,
                    Package.payload_type == "full",
                )
            ).one()
            campaign.package_plan = {MODEL: {"full": full.id}}
        session.scalars(select(Job)).one().campaign_id = campaign.id
        return campaign.id

    return database.call(create)


def set_campaign_state(database: SyncDatabase, campaign_id: int, state: str) -> None:
    from dmserver.store.models import Campaign

    def update(session):
        session.get(Campaign, campaign_id).state = state

    database.call(update)


def test_sessionless_campaign_job_uses_plan(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true", "--firmware-version", OLD_VERSION)
    attach_campaign(database, full_only=True)
    harness = Harness(database, tmp_path)

    harness.service.startService()

    # Without the plan the delta from OLD_VERSION would be chosen.
    assert harness.job()["state"] == "delivered"
    assert harness.job()["package_type"] == "full"


def test_campaign_policy_uses_package0(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true", "--firmware-version", OLD_VERSION)
    attach_campaign(database, policy={"min_battery": 50})
    harness = Harness(database, tmp_path)

    harness.service.startService()

    assert harness.job()["state"] == "queued"
    pushes = harness.pushes()
    assert len(pushes) == 1
    assert pushes[0].content_type_code == wsp.CONTENT_TYPE_SYNCML_NOTIFICATION


def test_halted_campaign_job_not_pushed(database, data_dir, tmp_path):
    add_device(data_dir)
    campaign_id = attach_campaign(database, state="halted")
    harness = Harness(database, tmp_path)
    harness.service.startService()
    assert harness.pushes() == []

    set_campaign_state(database, campaign_id, "running")
    harness.clock.advance(SCAN)
    assert len(harness.pushes()) == 1
    set_campaign_state(database, campaign_id, "paused")
    harness.clock.advance(SCAN)
    harness.clock.advance(WINDOW * 10)
    # The pending retries were withdrawn.
    assert len(harness.pushes()) == 1


def test_late_notify_after_fallback_recorded_only(database, data_dir, tmp_path):
    add_device(data_dir, "--profile", "sessionless=true", "--firmware-version", OLD_VERSION)
    harness = Harness(database, tmp_path)
    harness.service.startService()
    token = harness.job()["token"]
    harness.database.call(lambda s: downloads.descriptor_for(s, token, BASE_URL, datetime(2026, 1, 1)))
    harness.clock.advance(SCAN)
    harness.clock.advance(NOTIFY_WINDOW)  # fall back to Package 0
    assert harness.job()["state"] == "queued"

    harness.database.call(
        lambda s: downloads.install_notify(s, token, b"900 Success", datetime(2026, 1, 1))
    )

    assert harness.job()["state"] == "queued"
    late = harness.events("install-notify-late")
    assert len(late) == 1
    assert late[0]["install_status"] == 900
    assert harness.events("installed") == []
    assert harness.events("succeeded") == []
