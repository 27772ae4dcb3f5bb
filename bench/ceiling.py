"""Bench: the raw ceiling of a database on the rows the server would write — the writer's own
dialect SQL (binary COPY into staging + INSERT … ON CONFLICT on PostgreSQL; multi-row upsert on
SQLite) on rows built before the clock starts, with no gRPC and no pipeline in the way."""

from __future__ import annotations

import datetime as dt
import time

from bench.load import make_turn
from turnstream.core.pipeline import Item, Pipeline
from turnstream.core.pricing import PriceTable
from turnstream.store import schema
from turnstream.store.engine import create_engine, dialect_for, migrate


def ceiling(url: str, records: int, per_transaction: int = 5_000) -> float:
    """Rows/s committed by the bare upsert path, in transactions of `per_transaction` rows."""
    engine = create_engine(url)
    migrate(engine)
    pipeline = Pipeline(PriceTable.load())
    items = [Item("turn", make_turn(f"ceiling-{i // 1000}", i), "t", i) for i in range(records)]
    rows = pipeline.prepare("default", "bench", items).batch.rows["turn"]
    dialect = dialect_for(engine.url)
    raw = engine.raw_connection()
    conn = raw.driver_connection
    dialect.prepare(conn)
    now = dt.datetime.now(dt.UTC)
    start = time.perf_counter()
    for i in range(0, len(rows), per_transaction):
        dialect.begin(conn)
        dialect.upsert(conn, schema.turns, rows[i : i + per_transaction], now)
        conn.commit() if dialect.name == "postgresql" else conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    raw.close()
    engine.dispose()
    return records / seconds
