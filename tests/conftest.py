"""Shared fixtures: a real dmserver process on 127.0.0.1 with a fresh data
directory, the signing key, and the libexpat firmware pair from fixtures/."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FIRMWARE = FIXTURES / "firmware"
OLD_IMAGE = FIRMWARE / "libexpat-2.5.0-1+deb12u2.so"
NEW_IMAGE = FIRMWARE / "libexpat-2.5.0-1+deb12u5.so"
# SHA-256 sums published with the firmware corpus (fixtures/firmware/PROVENANCE.md).
OLD_SHA256 = "a9a60cb5308ca1054427e2973b021ea63c2c801c71d8c0dc9d33218fee1d976a"
NEW_SHA256 = "b342d94f6a71df596f19b1b0d4d3af9b883f0333027de6c3fc0dbc9ff8c45057"
MODEL = "FP-100"
OLD_VERSION = "2.5.0-1+deb12u2"
NEW_VERSION = "2.5.0-1+deb12u5"
SERVER_START_TIMEOUT = 30


def dmserver_cli(data_dir: Path, *args: str, db: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dmserver.cli", "--data-dir", str(data_dir)]
    if db:
        command += ["--db", db]
    result = subprocess.run(command + list(args), capture_output=True, text=True, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"dmserver {' '.join(args)} failed: {result.stderr}")
    return result


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    db: str | None = None

    @property
    def dm_url(self) -> str:
        return f"{self.url}/dm"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return dmserver_cli(self.data_dir, *args, db=self.db, check=check)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.data_dir / 'dmserver.db'}"

    def sql(self, query: str, **params) -> list[tuple]:
        """Run one SQL statement on the server's database; return its rows."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db_url)
        try:
            with engine.begin() as connection:
                result = connection.execute(text(query), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()


def start_server(data_dir: Path, db: str | None = None, extra: tuple[str, ...] = ()) -> RunningServer:
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    command = [sys.executable, "-m", "dmserver.cli", "--data-dir", str(data_dir)]
    if db:
        command += ["--db", db]
    command += ["serve", "--host", "127.0.0.1", "--port", "0", *extra]
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if b"listening on" in line or not line:
                break
        if process.poll() is not None:
            break
    if b"listening on" not in line:
        process.kill()
        raise AssertionError(f"server did not start: {log_path.read_text(errors='replace')}")
    url = line.decode().split("listening on ", 1)[1].split()[0]
    return RunningServer(url=url, data_dir=data_dir, process=process, log_path=log_path, db=db)


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def catalogue_dir(tmp_path_factory) -> Path:
    """A data directory with keys and both firmware versions, built once and
    copied by each test (building deltas is the slow part)."""
    data_dir = tmp_path_factory.mktemp("catalogue") / "data"
    dmserver_cli(data_dir, "keys", "init")
    dmserver_cli(data_dir, "firmware", "add", "--model", MODEL, "--version", OLD_VERSION, str(OLD_IMAGE))
    dmserver_cli(data_dir, "firmware", "add", "--model", MODEL, "--version", NEW_VERSION, str(NEW_IMAGE))
    return data_dir


@pytest.fixture
def server(catalogue_dir, tmp_path, db_backend, request) -> RunningServer:
    """A running server on a copy of the catalogue, on each database backend."""
    data_dir = tmp_path / "data"
    shutil.copytree(catalogue_dir, data_dir)
    db = None
    if db_backend == "postgresql":
        db = request.getfixturevalue("postgres_schema_url")
        copy_catalogue_rows(f"sqlite:///{data_dir / 'dmserver.db'}", db)
    running = start_server(data_dir, db=db)
    yield running
    stop_server(running)


# ---------------------------------------------------------------------------
# Database backends: every test that uses ``db_backend``, ``db_url`` or
# ``server`` runs once on SQLite and once on PostgreSQL.

BACKENDS_ENV = "DMSERVER_TEST_BACKENDS"
DEFAULT_BACKENDS = "sqlite,postgresql"
POSTGRES_URL_ENV = "DMSERVER_TEST_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Set to 1 (as CI does) to fail instead of skipping when PostgreSQL is down.
REQUIRE_POSTGRES_ENV = "DMSERVER_REQUIRE_POSTGRES"
# Modules whose server tests read the server's SQLite file directly and so
# run on SQLite only; tests query through RunningServer.sql instead.
SQLITE_FILE_MODULES: frozenset[str] = frozenset()


def pytest_addoption(parser):
    parser.addoption(
        "--db-backends",
        default=os.environ.get(BACKENDS_ENV, DEFAULT_BACKENDS),
        help="comma-separated database backends to run database tests on "
        f"(sqlite, postgresql; default ${BACKENDS_ENV} or {DEFAULT_BACKENDS})",
    )


def pytest_generate_tests(metafunc):
    if "db_backend" not in metafunc.fixturenames:
        return
    backends = [b.strip() for b in metafunc.config.getoption("--db-backends").split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgresql"}
    if unknown:
        raise pytest.UsageError(f"unknown database backend(s) {sorted(unknown)}; use sqlite, postgresql")
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in SQLITE_FILE_MODULES:
        backends = [b for b in backends if b == "sqlite"]
    metafunc.parametrize("db_backend", backends)


def _base_postgres_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


@pytest.fixture(scope="session")
def postgres_database() -> str:
    """URL of a PostgreSQL database created for this test session and dropped
    after it."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    base = make_url(_base_postgres_url())
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"dmserver_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        admin.dispose()
        message = f"PostgreSQL at {base.render_as_string(hide_password=True)} is unavailable: {error.orig}"
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield base.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_schema_url(postgres_database) -> str:
    """URL of a fresh schema in the session's PostgreSQL database, dropped
    after the test; the schema is first on the connection's search_path."""
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{postgres_database}?options=-csearch_path%3D{schema}"
    with engine.connect() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def db_url(db_backend, tmp_path, request) -> str:
    """An empty database on the test's backend (schema not yet migrated)."""
    if db_backend == "postgresql":
        return request.getfixturevalue("postgres_schema_url")
    return f"sqlite:///{tmp_path / 'test.db'}"


def copy_catalogue_rows(source_url: str, target_url: str) -> None:
    """Migrate ``target_url`` and copy the firmware and package rows of the
    catalogue database into it (the files stay in the data directory)."""
    from sqlalchemy import create_engine, insert, select

    from dmserver.store.db import Database
    from dmserver.store.models import Firmware, Package

    target = Database(target_url)
    target.upgrade()
    source = create_engine(source_url)
    try:
        with source.connect() as reading, target.engine.begin() as writing:
            for table in (Firmware.__table__, Package.__table__):
                rows = [dict(row) for row in reading.execute(select(table)).mappings()]
                if rows:
                    writing.execute(insert(table), rows)
            if target.engine.dialect.name == "postgresql":
                # Explicit ids leave the sequences behind; move them past the rows.
                for table in (Firmware.__table__, Package.__table__):
                    writing.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"
                    )
    finally:
        source.dispose()
        target.dispose()


def pytest_configure(config):
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
