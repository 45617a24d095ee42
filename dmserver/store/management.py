"""Table of operator management requests: DM commands queued for a device.

A request is a list of commands (JSON form of :class:`dmserver.syncml.model.Command`)
sent in the device's next session; each Status and Results that comes back
is appended to ``results``, so every node's outcome is kept.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class MgmtRequest(Base):
    __tablename__ = "mgmt_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))  # queued | sent | done
    commands: Mapped[list] = mapped_column(JSON)
    results: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
