"""Database engine, schema migrations and the thread pool for database work.

Every database call made by the server runs in :class:`Database`'s thread pool
(``Database.run``), never on the reactor thread. Command-line tools call the
same functions directly.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")
# SQLite waits this long for a lock held by another connection before failing.
SQLITE_BUSY_TIMEOUT_SECONDS = 30
DB_THREADS = 8


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=DB_THREADS)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class Database:
    """An engine plus a session factory; ``run`` moves work off the reactor."""

    def __init__(self, url: str):
        self.url = url
        self.engine = create_db_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self._threadpool = None

    def upgrade(self) -> None:
        """Bring the schema to the latest Alembic revision."""
        with self.engine.begin() as connection:
            config = alembic_config(self.url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessionmaker() as session:
            with session.begin():
                yield session

    def call(self, fn: Callable[[Session], T]) -> T:
        with self.transaction() as session:
            return fn(session)

    def start_threadpool(self, reactor) -> None:
        from twisted.python.threadpool import ThreadPool

        # SQLite admits one writer at a time: more threads only queue on its
        # lock and lengthen the latency tail (docs/benchmarks.md).
        threads = 1 if self.url.startswith("sqlite") else DB_THREADS
        self._threadpool = ThreadPool(minthreads=1, maxthreads=threads, name="db")
        self._threadpool.start()
        reactor.addSystemEventTrigger("during", "shutdown", self._threadpool.stop)
        self._reactor = reactor

    def run(self, fn: Callable[[Session], T]):
        """Run ``fn(session)`` in one transaction on the pool; return a Deferred."""
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self._reactor, self._threadpool, self.call, fn)

    def run_plain(self, fn: Callable[..., T], *args):
        """Run ``fn(*args)`` on the database pool without opening a transaction."""
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    def dispose(self) -> None:
        self.engine.dispose()
