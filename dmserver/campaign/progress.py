"""The listener that :func:`dmserver.fota.jobs.set_state` calls on every job
state change: campaign counters for campaign jobs and the ``job.finished``
webhook for every job that reaches a final state."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from .. import webhooks
from ..fota.jobs import FINAL_STATES
from ..store.models import Job

logger = logging.getLogger(__name__)


def job_state_changed(
    session: Session, job: Job, previous: str, state: str, now: datetime, detail: dict
) -> None:
    """Apply a job's change of state to its campaign and the webhook outbox."""
    if job.campaign_id is not None:
        from . import lifecycle

        lifecycle.on_job_state(session, job, previous, state, now, detail)
    if state in FINAL_STATES:
        with session.no_autoflush:
            webhooks.job_finished(session, job, now)
