"""The listener that :func:`dmserver.fota.jobs.set_state` calls on every job
state change: campaign counters for campaign jobs and the ``job.finished``
webhook for every job that reaches a final state.

It also keeps a finished job finished. Two requests about one job can run
at once (the package download completing and the install notify that
follows it), each with the job loaded before the other committed. The
listener locks the job row, reads its stored state, and when another
transaction finished the job meanwhile it restores that final state, so
the stale change is not written over it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import webhooks
from ..fota.jobs import FINAL_STATES
from ..store.models import Job

logger = logging.getLogger(__name__)


def job_state_changed(
    session: Session, job: Job, previous: str, state: str, now: datetime, detail: dict
) -> None:
    """Apply a job's change of state to its campaign and the webhook outbox."""
    from . import lifecycle

    with session.no_autoflush:
        # Campaign row first, then the job row: the order every campaign
        # command uses, so the two locks cannot deadlock.
        if job.campaign_id is not None:
            lifecycle.lock(session, job.campaign_id)
        lifecycle.write_lock(session, Job, job.id)
        stored = session.execute(
            select(Job.state, Job.finished_at).where(Job.id == job.id)
        ).first()
        if stored is not None and stored.state != previous and stored.state in FINAL_STATES:
            logger.warning(
                "job %d was %s when loaded but is %s in the database; "
                "its change to %s is dropped",
                job.id, previous, stored.state, state,
            )
            job.state = stored.state
            job.finished_at = stored.finished_at
            return
        if job.campaign_id is not None:
            lifecycle.on_job_state(session, job, previous, state, now, detail)
        if state in FINAL_STATES:
            webhooks.job_finished(session, job, now)
