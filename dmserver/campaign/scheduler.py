"""The campaign scheduler of a server process: a Twisted ``LoopingCall`` that
expires jobs without a response (:func:`lifecycle.expire_stale_jobs`) and
runs :func:`dmserver.campaign.dispatch.dispatch_campaign` for every running
campaign, each in its own transaction in the database thread pool.

Several server processes may run it against one database: each round locks
the campaign row, so rounds of different processes take turns.
"""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..store.db import Database
from . import dispatch, lifecycle

log = Logger(namespace="dmserver.campaign.scheduler")

DEFAULT_INTERVAL_SECONDS = 2.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class CampaignScheduler:
    """Runs dispatch rounds every ``interval`` seconds while started."""

    def __init__(
        self,
        db: Database,
        reactor,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        in_flight_timeout: float = lifecycle.IN_FLIGHT_TIMEOUT_SECONDS,
    ):
        self.db = db
        self.in_flight_timeout = in_flight_timeout
        self.reactor = reactor
        self.interval = interval
        self.loop = LoopingCall(self.tick)
        self.loop.clock = reactor
        self.rounds = 0

    def start(self) -> None:
        log.info("campaign scheduler started, every {interval} s", interval=self.interval)
        self.loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    @defer.inlineCallbacks
    def tick(self):
        """Dispatch every running campaign once; errors are logged, not raised,
        so the loop keeps running."""
        self.rounds += 1
        try:
            campaign_ids = yield self.db.run(dispatch.running_campaign_ids)
        except Exception:  # noqa: BLE001 - keep the loop alive; the failure is logged
            log.failure("listing running campaigns failed")
            return
        for campaign_id in campaign_ids:
            try:
                yield self.db.run(
                    lambda session, cid=campaign_id: lifecycle.expire_stale_jobs(
                        session, cid, utcnow(), self.in_flight_timeout
                    )
                )
            except Exception:  # noqa: BLE001 - one campaign's failure must not stop the others
                log.failure("expiring jobs of campaign {campaign_id} failed", campaign_id=campaign_id)
            try:
                created = yield self.db.run(
                    lambda session, cid=campaign_id: dispatch.dispatch_campaign(session, cid, utcnow())
                )
            except Exception:  # noqa: BLE001 - one campaign's failure must not stop the others
                log.failure("dispatch of campaign {campaign_id} failed", campaign_id=campaign_id)
                continue
            if created:
                log.info(
                    "campaign {campaign_id}: {count} jobs queued",
                    campaign_id=campaign_id,
                    count=len(created),
                )
