"""Storage: database engines for both dialects, with the settings each needs, and migrations."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from turnstream.store.dialects import Dialect
from turnstream.store.postgres import PostgresDialect
from turnstream.store.sqlite import SqliteDialect

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> sa.URL:
    """Accept the URLs people type: postgres://, postgresql:// -> the psycopg 3 driver."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use sqlite:///path.db or postgresql+psycopg://user@host/db"
        )
    return parsed


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, *, busy_ms: int) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (queries) never block the writer and the writer never blocks readers.
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: an acked commit survives power loss, not only a process crash; ack means committed.
    cur.execute("PRAGMA synchronous=FULL")
    # Another process (a migration, `turnstream send` against a file) may hold the lock briefly;
    # longer than the database timeout and the file counts as unavailable.
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")
    cur.close()


def postgres_connect_args(db_timeout: float) -> dict[str, Any]:
    """libpq settings that turn a dead server or a network partition into an error within about
    `db_timeout`, instead of a connection that waits forever. (A server that is alive but stuck,
    e.g. SIGSTOPped, keeps ACKing TCP: only the writer's own deadline catches that.)"""
    seconds = max(1, math.ceil(db_timeout))
    return {
        # libpq counts whole seconds and raises anything below 2 to 2.
        "connect_timeout": max(2, seconds),
        # An idle connection whose peer vanished is found after idle + interval x count.
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(1, math.ceil(db_timeout / 3)),
        "keepalives_count": 3,
        # Data sent and never acknowledged for this long (a partition mid-statement) drops the
        # connection at once rather than after the kernel's ~15 minutes of retransmissions.
        "tcp_user_timeout": max(1, round(db_timeout * 1000)),
    }


def create_engine(url: str | sa.URL, *, db_timeout: float = 5.0) -> sa.Engine:
    """An engine for `url` whose connections give up within about `db_timeout` seconds on a
    locked SQLite file or an unreachable PostgreSQL. Statement timeouts are set per session by
    the writer (dialects.PostgresDialect.prepare), not here, so migrations may run long."""
    parsed = normalise_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})
        pragmas = functools.partial(_sqlite_pragmas, busy_ms=max(1, round(db_timeout * 1000)))
        sa.event.listen(engine, "connect", pragmas)
        return engine
    return sa.create_engine(
        parsed, pool_pre_ping=True, connect_args=postgres_connect_args(db_timeout), pool_size=5
    )


def alembic_config(engine: sa.Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    command.upgrade(alembic_config(engine), "head")


def dialect_for(url: sa.URL, timeout: float | None = None) -> Dialect:
    """The dialect of `url`; `timeout` bounds every statement and lock wait of the sessions it
    prepares (SQLite's bound is the engine's busy_timeout)."""
    if url.get_backend_name() == "sqlite":
        return SqliteDialect()
    if url.get_backend_name() == "postgresql":
        return PostgresDialect(timeout)
    raise ValueError(
        f"unsupported database {url.get_backend_name()!r}: use sqlite:/// or postgresql+psycopg://"
    )
