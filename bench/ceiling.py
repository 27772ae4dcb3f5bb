"""Bench: the raw ceiling of a database on the rows the server would write — the writer's own
dialect SQL (binary COPY into staging + INSERT … ON CONFLICT on PostgreSQL; multi-row upsert on
SQLite) on rows built before the clock starts, with no gRPC and no pipeline in the way."""

from __future__ import annotations

import datetime as dt
import time

from bench.records import make_records, make_turn
from turnstream.core.pipeline import Item, Pipeline
from turnstream.core.pricing import PriceTable
from turnstream.store import schema
from turnstream.store.engine import create_engine, dialect_for, migrate


def ceiling(url: str, records: int, per_transaction: int = 5_000, *, mixed: bool = True) -> float:
    """Rows/s committed by the bare upsert path, in transactions of `per_transaction` rows:
    the realistic mix of turns and tool calls the Append load sends (`mixed`), or turns only
    (what the unary Write load sends)."""
    engine = create_engine(url)
    migrate(engine)
    pipeline = Pipeline(PriceTable.load())
    tag = "m" if mixed else "t"
    items = []
    for start in range(0, records, 1000):
        execution = f"ceiling-{tag}-{start // 1000}"
        if mixed:
            made = make_records(execution, start, min(1000, records - start))
        else:
            made = [
                ("turn", make_turn(execution, i + 1)) for i in range(min(1000, records - start))
            ]
        items += [Item(kind, message, "r", i) for i, (kind, message) in enumerate(made)]
    dialect = dialect_for(engine.url)
    chunks = []
    for i in range(0, len(items), per_transaction):
        batch = pipeline.prepare("default", "bench", items[i : i + per_transaction]).batch
        chunks.append(batch.rows)
    raw = engine.raw_connection()
    conn = raw.driver_connection
    dialect.prepare(conn)
    now = dt.datetime.now(dt.UTC)
    start = time.perf_counter()
    for rows in chunks:
        dialect.begin(conn)
        for kind in ("turn", "tool_call"):
            if rows[kind]:
                dialect.upsert(conn, schema.RECORD_TABLES[kind], rows[kind], now)
        conn.commit() if dialect.name == "postgresql" else conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    raw.close()
    engine.dispose()
    return records / seconds
