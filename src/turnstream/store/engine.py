"""Storage: database engines for both dialects, with the settings each needs, and migrations."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (queries) never block the writer and the writer never blocks readers.
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: an acked commit survives power loss, not only a process crash; ack means committed.
    cur.execute("PRAGMA synchronous=FULL")
    # Another process (a migration, `turnstream send` against a file) may hold the lock briefly.
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def create_engine(url: str | sa.URL) -> sa.Engine:
    parsed = normalise_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A dead server must fail fast so the client hears UNAVAILABLE, not a hung call.
    return sa.create_engine(
        parsed, pool_pre_ping=True, connect_args={"connect_timeout": 3}, pool_size=5
    )


def alembic_config(engine: sa.Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    command.upgrade(alembic_config(engine), "head")
