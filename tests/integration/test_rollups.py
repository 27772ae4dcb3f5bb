"""The dashboard's per-execution rollups (store/rollup.py) stay exactly what the base rows say:
after a replay of the same request, after records revised with other values (another hour,
model, tokens, success), and after the migration's backfill of rows stored before them — on
SQLite and PostgreSQL, compared with a plain-Python recomputation (tests/dbutil.py). The
chaos test (a stream resumed after kill -9) and the poison test (the guarded path) check the
same after their runs."""

from __future__ import annotations

import asyncio
import datetime as dt

import sqlalchemy as sa
from alembic import command

from tests.dbutil import assert_rollups_exact, rows
from tests.serving import ingest_stub, running_server
from turnstream.core.pipeline import Item, Pipeline
from turnstream.core.pricing import PriceTable
from turnstream.store.engine import alembic_config, create_engine, migrate
from turnstream.store.writer import Writer
from turnstream.v1 import ingest_pb2, records_pb2

T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)


def turn(n: int, execution_id: str = "exec-1", **fields: object) -> records_pb2.Turn:
    t = records_pb2.Turn(
        execution_id=execution_id, turn_number=n, model="claude-sonnet-4-5", input_tokens=100 * n
    )
    t.started_at.FromDatetime(T0 + dt.timedelta(minutes=7 * n))
    for k, v in fields.items():
        if isinstance(v, dt.datetime):
            getattr(t, k).FromDatetime(v)
        else:
            setattr(t, k, v)
    return t


def call(n: int, execution_id: str = "exec-1", success: bool = True) -> records_pb2.ToolCall:
    c = records_pb2.ToolCall(
        execution_id=execution_id, tool_name="click" if n % 2 else "grep", tool_use_id=f"tu-{n}"
    )
    c.started_at.FromDatetime(T0 + dt.timedelta(minutes=7 * n))
    c.success = success
    return c


def request() -> ingest_pb2.WriteRequest:
    # Turns over two hours and two executions, tool calls of two tools.
    return ingest_pb2.WriteRequest(
        turns=[turn(n) for n in range(1, 13)] + [turn(1, "exec-2", model="gpt-4o")],
        tool_calls=[call(n) for n in range(1, 6)] + [call(9, "exec-2", success=False)],
    )


def rollup_turns(url: str) -> int:
    return sum(r["turns"] for r in rows(url, "turn_rollups"))


async def test_a_replayed_request_is_counted_once(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        await stub.Write(request())
        assert_rollups_exact(database_url)
        before = sorted(map(repr, rows(database_url, "turn_rollups")))
        again = await stub.Write(request())
        assert again.counts.total.created == again.counts.total.updated == 0
    assert_rollups_exact(database_url)
    assert sorted(map(repr, rows(database_url, "turn_rollups"))) == before
    assert rollup_turns(database_url) == 13
    assert len({r["hour"] for r in rows(database_url, "turn_rollups")}) == 2


async def test_a_revised_record_moves_its_contribution(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        await stub.Write(request())
        # Turn 1 moves to another hour and model with more tokens; a tool call now failed;
        # a new turn joins exec-2.
        revised = turn(
            1,
            model="claude-haiku-4-5",
            input_tokens=5000,
            output_tokens=7,
            started_at=T0 + dt.timedelta(hours=5),
        )
        answer = await stub.Write(
            ingest_pb2.WriteRequest(
                turns=[revised, turn(2, "exec-2")], tool_calls=[call(1, success=False)]
            )
        )
        assert answer.counts.turns.updated == 1 and answer.counts.turns.created == 1
        assert answer.counts.tool_calls.updated == 1
    assert_rollups_exact(database_url)
    assert rollup_turns(database_url) == 14
    exec1 = rows(database_url, "turn_rollups", execution_id="exec-1")
    (haiku,) = [r for r in exec1 if r["model"] == "claude-haiku-4-5"]
    assert (haiku["turns"], haiku["input_tokens"], haiku["output_tokens"]) == (1, 5000, 7)
    assert haiku["hour"] == T0.replace(minute=0) + dt.timedelta(hours=5)
    sonnet = [r for r in exec1 if r["model"] == "claude-sonnet-4-5"]
    assert sum(r["input_tokens"] for r in sonnet) == sum(100 * n for n in range(2, 13))
    (clicks,) = rows(database_url, "tool_rollups", execution_id="exec-1", tool_name="click")
    assert (clicks["calls"], clicks["successes"]) == (3, 2)


async def test_the_migration_backfills_rows_stored_before_it(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        await stub.Write(request())
    engine = sa.create_engine(database_url)
    try:
        config = alembic_config(engine)
        command.downgrade(config, "-1")  # to before 0004_rollups
        assert "turn_rollups" not in sa.inspect(engine).get_table_names()
        migrate(engine)
    finally:
        engine.dispose()
    assert_rollups_exact(database_url)
    assert rollup_turns(database_url) == 13


async def test_two_writers_storing_the_same_records_at_once_count_them_once(
    database_url: str,
) -> None:
    """Two writers (as two replicas would) store the same keys concurrently, revised each
    round: each must read the other's committed contribution, never a stale one."""
    pipeline = Pipeline(PriceTable.load(), clock=lambda: T0 + dt.timedelta(days=1))
    engines = [create_engine(database_url) for _ in range(2)]
    migrate(engines[0])
    writers = [Writer(e) for e in engines]
    for w in writers:
        await w.start()
    try:
        for round_ in range(12):
            records = [turn(n, f"exec-{n % 3}", output_tokens=round_ + 1) for n in range(1, 40)]
            records += [call(n, f"exec-{n % 3}", success=bool(round_ % 2)) for n in range(1, 9)]
            batches = []
            for _ in writers:
                items = [
                    Item("turn" if isinstance(r, records_pb2.Turn) else "tool_call", r, "", i)
                    for i, r in enumerate(records)
                ]
                prepared = pipeline.prepare("default", "test", items)
                assert not prepared.rejections
                batches.append(prepared.batch)
            await asyncio.gather(*(w.submit(b) for w, b in zip(writers, batches, strict=True)))
        assert_rollups_exact(database_url)
        assert rollup_turns(database_url) == 39
    finally:
        for w in writers:
            await w.close(grace=5)
        for e in engines:
            e.dispose()


def test_new_keys_read_nothing_of_the_base_table_whatever_the_plan(postgresql_url: str) -> None:
    """PostgreSQL moves the rollups inside the upsert, reading the old values of the rows it
    updated. Rows it inserted have none: a flush of new keys must not read the base table at
    all, even under the worst plan a never-analysed table can get (sequential scans only). A
    plan cached at a small table size used to read the whole tenant on every flush."""
    import psycopg

    from turnstream.store.postgres import PostgresDialect
    from turnstream.store.schema import RECORD_TABLES

    engine = create_engine(postgresql_url)
    migrate(engine)
    engine.dispose()
    later = T0 + dt.timedelta(days=30)  # turn(n) starts 7n minutes after T0
    pipeline = Pipeline(PriceTable.load(), clock=lambda: later)

    def turn_rows(first: int, count: int, **fields: object) -> list[dict[str, object]]:
        items = [
            Item("turn", turn(n, **fields), "turns", i)
            for i, n in enumerate(range(first, first + count))
        ]
        prepared = pipeline.prepare("default", "test", items)
        assert not prepared.rejections
        return prepared.batch.rows["turn"]

    dialect = PostgresDialect()
    table = RECORD_TABLES["turn"]
    url = sa.make_url(postgresql_url).set(drivername="postgresql")
    now = later
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        dialect.prepare(conn)
        dialect.upsert(conn, table, turn_rows(1, 1000), now)
        conn.commit()

        def base_rows_read(rows: list[dict[str, object]]) -> int:
            conn.execute("SET LOCAL enable_indexscan = off")
            conn.execute("SET LOCAL enable_bitmapscan = off")
            dialect.upsert(conn, table, rows, now)
            (read,) = conn.execute(
                "SELECT seq_tup_read FROM pg_stat_xact_user_tables WHERE relname = 'turns'"
            ).fetchone()
            conn.commit()
            return int(read)

        assert base_rows_read(turn_rows(1001, 500)) == 0
        # A revision does read its old row (the worst plan makes that a scan here).
        assert base_rows_read(turn_rows(1, 100, input_tokens=7)) > 0
    assert_rollups_exact(postgresql_url)
