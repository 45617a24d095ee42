"""SQLAlchemy table definitions.

The schema itself is created and upgraded by the Alembic migrations in
``dmserver/store/migrations``; these classes must match the latest revision
(a test compares them).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Device(Base):
    """A provisioned handset and its DM account (the DMAcc of the device)."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), unique=True)  # e.g. IMEI:...
    client_username: Mapped[str] = mapped_column(String(128))
    client_password: Mapped[str] = mapped_column(String(256))
    server_password: Mapped[str] = mapped_column(String(256))
    auth_scheme: Mapped[str] = mapped_column(String(32), default="syncml:auth-md5")
    # Nonce the server issued to the client (client authenticates with it).
    client_nonce: Mapped[bytes | None] = mapped_column(LargeBinary(64), nullable=True)
    # Nonce the client issued to the server (server authenticates with it).
    server_nonce: Mapped[bytes | None] = mapped_column(LargeBinary(64), nullable=True)
    manufacturer: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    firmware_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    fumo_root: Mapped[str] = mapped_column(String(256), default="./FUMO")
    msisdn: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # "download": DownloadAndUpdate with a descriptor URL; "inband": the
    # package goes in the session through Update/PkgData (no download agent).
    delivery: Mapped[str] = mapped_column(String(16), default="download")
    # How the client applies the server's NextNonce to its digest: "decoded"
    # (the spec) or "base64-text" (some clients hash the base64 text).
    nonce_form: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Device profile: quirks and capabilities such as Package 0 settings.
    profile: Mapped[dict] = mapped_column(JSON, default=dict)
    dev_info: Mapped[dict] = mapped_column(JSON, default=dict)
    # Campaign targeting: the operator's device group and carrier tag, and the
    # IANA time zone name used for campaign delivery windows.
    group: Mapped[str | None] = mapped_column("device_group", String(64), nullable=True)
    carrier_tag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    jobs: Mapped[list[Job]] = relationship(back_populates="device")


class Firmware(Base):
    """A stored firmware image: one version of one model."""

    __tablename__ = "firmware"
    __table_args__ = (UniqueConstraint("model", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(1024))  # relative to the data directory
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Package(Base):
    """A signed update package: a delta from one source version, or a full image."""

    __tablename__ = "packages"
    __table_args__ = (UniqueConstraint("model", "source_version", "target_version", "payload_type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    source_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    target_version: Mapped[str] = mapped_column(String(128))
    payload_type: Mapped[str] = mapped_column(String(16))  # "delta" | "full"
    path: Mapped[str] = mapped_column(String(1024))  # relative to the data directory
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # of the package file: the ETag
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Job(Base):
    """A durable FOTA job for one device; spans sessions until a result arrives."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_device_state", "device_pk", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    target_version: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(32))
    # Random token in the job's download URLs and the Exec Correlator.
    token: Mapped[str] = mapped_column(String(64), unique=True)
    package_id: Mapped[int | None] = mapped_column(ForeignKey("packages.id"), nullable=True)
    source_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    fumo_node: Mapped[str | None] = mapped_column(String(256), nullable=True)
    result_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_text: Mapped[str | None] = mapped_column(String(256), nullable=True)
    install_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The campaign that created this job, if any.
    campaign_id: Mapped[int | None] = mapped_column(
        ForeignKey("campaigns.id"), nullable=True, index=True
    )

    device: Mapped[Device] = relationship(back_populates="jobs")
    package: Mapped[Package | None] = relationship()


class JobEvent(Base):
    """One step in a job's history (delivered, downloaded, result, ...)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class DmSession(Base):
    """Stored state of one DM session, so any server process can serve its next message."""

    __tablename__ = "dm_sessions"
    __table_args__ = (Index("ix_dm_sessions_device_sid", "device_id", "session_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[dict] = mapped_column(JSON, default=dict)
    last_msg_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_reply: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    last_reply_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ended: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class TreeValue(Base):
    """Last known value of a management tree node read from a device."""

    __tablename__ = "tree_values"
    __table_args__ = (UniqueConstraint("device_pk", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    path: Mapped[str] = mapped_column(String(512))
    value: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


# ---------------------------------------------------------------------------
# Campaigns, API keys and webhooks (revision 0002)


class Campaign(Base):
    """A staged rollout of one firmware version to a selection of devices.

    ``selection`` holds the targeting filters, ``waves`` the cumulative wave
    specs ("1%", "10%", "100%" or device counts), ``limits`` the dispatch
    limits and ``policy`` the device checks made before the Exec; their
    formats are defined in :mod:`dmserver.campaign.spec`.
    """

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    target_version: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True)
    selection: Mapped[dict] = mapped_column(JSON, default=dict)
    waves: Mapped[list] = mapped_column(JSON, default=list)
    success_threshold: Mapped[float] = mapped_column(Float)
    error_threshold: Mapped[float] = mapped_column(Float)
    min_sample: Mapped[int] = mapped_column(Integer)
    require_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    limits: Mapped[dict] = mapped_column(JSON, default=dict)
    policy: Mapped[dict] = mapped_column(JSON, default=dict)
    # Delta packages are used only up to this share of the full package size.
    max_delta_share: Mapped[float] = mapped_column(Float)
    # (model, source version) -> package id, fixed when the campaign starts.
    package_plan: Mapped[dict] = mapped_column(JSON, default=dict)
    preparation: Mapped[dict] = mapped_column(JSON, default=dict)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    halt_reason: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # Dispatch rate limit state shared by all server processes.
    dispatch_credit: Mapped[float] = mapped_column(Float, default=0.0)
    last_dispatch_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_scan_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class CampaignWave(Base):
    """One wave of a campaign and its state."""

    __tablename__ = "campaign_waves"
    __table_args__ = (UniqueConstraint("campaign_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    number: Mapped[int] = mapped_column(Integer)  # 1-based
    spec: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(24))
    # Failures and finished devices acknowledged by a resume: the error
    # threshold applies to outcomes after them.
    baseline_failed: Mapped[int] = mapped_column(Integer, default=0)
    baseline_finished: Mapped[int] = mapped_column(Integer, default=0)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class CampaignDevice(Base):
    """A device's membership in a campaign: its wave, job and progress bucket."""

    __tablename__ = "campaign_devices"
    __table_args__ = (
        UniqueConstraint("campaign_id", "device_pk"),
        Index("ix_campaign_devices_dispatch", "campaign_id", "status", "wave", "rank"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    wave: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(48))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class CampaignCounter(Base):
    """Number of a campaign wave's devices in one progress bucket."""

    __tablename__ = "campaign_counters"
    __table_args__ = (UniqueConstraint("campaign_id", "wave", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    wave: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(48))
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class CampaignEvent(Base):
    """One change of a campaign's state (started, wave opened, halted, ...)."""

    __tablename__ = "campaign_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class ApiKey(Base):
    """A northbound API key; only the SHA-256 of its secret part is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class WebhookEndpoint(Base):
    """A receiver of webhook events, with the secret its bodies are signed with."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(1024))
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list] = mapped_column(JSON, default=list)  # empty: every event
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class WebhookDelivery(Base):
    """One webhook event for one endpoint in the durable outbox."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id"))
    event: Mapped[str] = mapped_column(String(48))
    body: Mapped[str] = mapped_column(Text)  # the exact JSON bytes that are signed
    state: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
