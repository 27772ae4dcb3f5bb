"""Test support: read what a database holds, through SQLAlchemy, to compare states."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from turnstream.store import schema

TABLES = ("executions", "turns", "tool_calls", "tasks", "rejected_records", "streams")


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: two equal snapshots mean nothing changed."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for name in TABLES:
                table = schema.metadata.tables[name]
                rows = conn.execute(sa.select(table)).all()
                out[name] = sorted((tuple(r) for r in rows), key=repr)
            return out
    finally:
        engine.dispose()


def rows(url: str, table: str, **where: Any) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        t = schema.metadata.tables[table]
        query = sa.select(t)
        for k, v in where.items():
            query = query.where(t.c[k] == v)
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
    finally:
        engine.dispose()
