"""Server assembly: configuration, the web site and the Twisted service.

Both ``dmserver serve`` and ``twistd -n dmserver`` build the server here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from twisted.application import internet, service
from twisted.web import resource, server

from .push.service import PushConfig, PushService, build_gateway
from .session.service import ServerSettings
from .store.db import Database
from .web.api import ApiResource
from .web.dl import MAX_NOTIFY_BODY, DownloadResource
from .web.dm import DmResource
from .web.limits import LimitedRequest

DEFAULT_PORT = 8700
DATA_DIR_ENV = "DMSERVER_DATA_DIR"
DB_URL_ENV = "DMSERVER_DB"
# Seconds between campaign dispatch rounds and between webhook sends; 0
# turns the loop off in this process.
CAMPAIGN_TICK_ENV = "DMSERVER_CAMPAIGN_TICK"
WEBHOOK_TICK_ENV = "DMSERVER_WEBHOOK_TICK"
DEFAULT_CAMPAIGN_TICK = 2.0
DEFAULT_WEBHOOK_TICK = 1.0


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def default_db_url(data_dir: Path) -> str:
    return os.environ.get(DB_URL_ENV) or f"sqlite:///{data_dir.resolve() / 'dmserver.db'}"


@dataclass
class ServerConfig:
    data_dir: Path
    db_url: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    base_url: str | None = None  # public URL of this server, used in RespURI and downloads
    server_id: str = "dmserver"
    max_body: int = 1_048_576
    push: PushConfig | None = None  # None or gateway "none": no pushes

    def settings(self, port: int | None = None) -> ServerSettings:
        base = self.base_url or f"http://{self.host}:{port or self.port}"
        return ServerSettings(
            server_id=self.server_id,
            base_url=base.rstrip("/"),
            max_body=self.max_body,
            data_dir=self.data_dir,
        )


def open_database(config: ServerConfig) -> Database:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.db_url)
    db.upgrade()
    return db


class _Root(resource.Resource):
    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"dmserver: POST SyncML DM to /dm; downloads under /dl/\n"


def build_site(db: Database, config: ServerConfig, settings: ServerSettings) -> server.Site:
    root = _Root()
    root.putChild(b"dm", DmResource(db, settings))
    root.putChild(b"dl", DownloadResource(db, settings, config.data_dir))
    api = resource.Resource()
    api.putChild(b"v1", ApiResource(db, config.data_dir))
    root.putChild(b"api", api)
    root.putChild(b"", _Root())
    site = server.Site(root)
    site.displayTracebacks = False
    site.requestFactory = LimitedRequest
    site.body_limits = {b"/dm": settings.max_body, b"/dl/": MAX_NOTIFY_BODY + 1}
    schedule_background_loops(db)
    return site


def _tick(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${name} must be a number of seconds, got {text!r}") from None
    if value < 0:
        raise ValueError(f"${name} must be 0 or more seconds, got {text!r}")
    return value


def schedule_background_loops(db: Database, reactor=None) -> None:
    """Start the campaign scheduler and the webhook sender once the reactor
    runs, and stop them at shutdown."""
    from .campaign.scheduler import CampaignScheduler
    from .webhooks import WebhookSender

    if reactor is None:
        from twisted.internet import reactor
    loops = []
    campaign_tick = _tick(CAMPAIGN_TICK_ENV, DEFAULT_CAMPAIGN_TICK)
    if campaign_tick > 0:
        loops.append(CampaignScheduler(db, reactor, campaign_tick))
    webhook_tick = _tick(WEBHOOK_TICK_ENV, DEFAULT_WEBHOOK_TICK)
    if webhook_tick > 0:
        loops.append(WebhookSender(db, reactor, webhook_tick))
    for loop in loops:
        reactor.callWhenRunning(loop.start)
        reactor.addSystemEventTrigger("before", "shutdown", loop.stop)


def build_push_service(
    db: Database, config: ServerConfig, settings: ServerSettings, reactor
) -> PushService | None:
    """Return the push service that ``config.push`` configures, or None.

    Raises:
        ValueError: the gateway lacks the credentials it needs.
    """
    if config.push is None or not config.push.enabled:
        return None
    gateway = build_gateway(config.push, reactor)
    return PushService(db, settings, config.push, gateway, reactor)


class _ListeningService(internet.TCPServer):
    """TCPServer that learns its real port, so that with port 0 and no
    --base-url the RespURI and download URLs name the port it listens on."""

    def __init__(self, config: ServerConfig, settings: ServerSettings, site):
        super().__init__(config.port, site, interface=config.host)
        self._config = config
        self._settings = settings

    def startService(self):
        super().startService()
        if not self._config.base_url:
            port = self._port.getHost().port
            self._settings.base_url = f"http://{self._config.host}:{port}"


def make_service(config: ServerConfig, reactor=None) -> service.Service:
    """Build the TCP service for twistd, with the push service when one is configured."""
    if reactor is None:
        from twisted.internet import reactor
    db = open_database(config)
    db.start_threadpool(reactor)
    settings = config.settings()
    site = build_site(db, config, settings)
    web = _ListeningService(config, settings, site)
    push = build_push_service(db, config, settings, reactor)
    if push is None:
        return web
    parent = service.MultiService()
    web.setServiceParent(parent)
    push.setServiceParent(parent)
    return parent
