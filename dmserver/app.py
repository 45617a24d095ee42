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
from .web.dl import DownloadResource
from .web.dm import DmResource

DEFAULT_PORT = 8700
DATA_DIR_ENV = "DMSERVER_DATA_DIR"
DB_URL_ENV = "DMSERVER_DB"


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
    site = server.Site(root)
    site.displayTracebacks = False
    return site


def build_push_service(
    db: Database, config: ServerConfig, settings: ServerSettings, reactor
) -> PushService | None:
    """Return the push service ``config.push`` asks for, or None.

    Raises:
        ValueError: the gateway lacks the credentials it needs.
    """
    if config.push is None or not config.push.enabled:
        return None
    gateway = build_gateway(config.push, reactor)
    return PushService(db, settings, config.push, gateway, reactor)


def make_service(config: ServerConfig, reactor=None) -> service.Service:
    """The TCP service for twistd, with the push service when one is configured."""
    if reactor is None:
        from twisted.internet import reactor
    db = open_database(config)
    db.start_threadpool(reactor)
    settings = config.settings()
    site = build_site(db, config, settings)
    web = internet.TCPServer(config.port, site, interface=config.host)
    push = build_push_service(db, config, settings, reactor)
    if push is None:
        return web
    parent = service.MultiService()
    web.setServiceParent(parent)
    push.setServiceParent(parent)
    return parent
