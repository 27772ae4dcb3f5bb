"""Hostile storage, at the writer's seam: rows the database refuses after validation (poison) are
found, dead-lettered and answered while everything around them commits, on both dialects, with
no reconnect. Batches are built by the real pipeline from valid records, then one row is
poisoned by hand with a value the database refuses (what validation may one day miss)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.dbutil import assert_rollups_exact, rows
from turnstream.core.batch import StreamAdvance, WriteBatch
from turnstream.core.deadletter import STORAGE_REJECTED
from turnstream.core.pipeline import Item, Pipeline
from turnstream.core.pricing import PriceTable
from turnstream.store.engine import create_engine, migrate
from turnstream.store.writer import Writer
from turnstream.v1 import records_pb2

T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)
PIPELINE = Pipeline(PriceTable.load(), clock=lambda: T0 + dt.timedelta(hours=1))
# Both dialects refuse an integer beyond 64 bits: SQLite cannot bind it, PostgreSQL's bigint
# is out of range. It passes no validation because no wire value can carry it; a derived value
# (a sum of two int64 token counts) can.
TOO_BIG = 2**64


def turn(n: int, execution_id: str = "exec-p") -> records_pb2.Turn:
    t = records_pb2.Turn(execution_id=execution_id, turn_number=n, model="claude-sonnet-4-5")
    t.started_at.FromDatetime(T0 + dt.timedelta(seconds=n))
    return t


def tool_call(n: int, execution_id: str = "exec-p") -> records_pb2.ToolCall:
    c = records_pb2.ToolCall(execution_id=execution_id, tool_name="grep", tool_use_id=f"tu-{n}")
    c.started_at.FromDatetime(T0 + dt.timedelta(seconds=n))
    return c


def prepare(
    records: list[Any], *, door: str = "test", stream: StreamAdvance | None = None
) -> WriteBatch:
    kinds = {records_pb2.Turn: ("turn", "turns"), records_pb2.ToolCall: ("tool_call", "calls")}
    items = []
    for i, record in enumerate(records):
        kind, name = kinds[type(record)]
        offset = stream.from_offset + i if stream is not None else None
        items.append(Item(kind, record, f"{name}[{i}]", i, offset))
    prepared = PIPELINE.prepare("default", door, items, stream=stream)
    assert not prepared.rejections
    return prepared.batch


class Counted:
    """A real Writer on a real database, and how many connections its engine opened."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.engine = create_engine(url)
        migrate(self.engine)
        self.connects = 0
        sa.event.listen(self.engine, "connect", self._count)
        self.writer = Writer(self.engine, **options)

    def _count(self, *_: Any) -> None:
        self.connects += 1


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Counted]:
    counted = Counted(database_url)
    await counted.writer.start()
    try:
        yield counted
    finally:
        await counted.writer.close(grace=5)
        counted.engine.dispose()


async def submit_together(writer: Writer, *batches: WriteBatch) -> list[Any]:
    """Submit without yielding in between, so that the batches form one group commit."""
    return await asyncio.gather(*(writer.submit(b) for b in batches))


def assert_one_sentence(description: str) -> None:
    assert description.startswith("the database refused this record")
    for word in ("Error", "Exception", "psycopg", "sqlite3", "Traceback"):
        assert word not in description


async def test_a_poison_row_is_dead_lettered_and_everything_else_in_the_group_commits(
    store: Counted,
) -> None:
    writer = store.writer
    state = await writer.open_stream("default", "s-poison")
    connects = store.connects
    poisoned = prepare(
        [turn(1), turn(2), turn(3)], stream=StreamAdvance("s-poison", state.epoch, 0, 3)
    )
    poisoned.rows["turn"][1]["total_tokens"] = TOO_BIG
    neighbour = prepare([turn(10, "exec-n"), turn(11, "exec-n")])
    calls = prepare([tool_call(1, "exec-c")])
    flushes = writer.stats.flushes

    first, second, third = await submit_together(writer, poisoned, neighbour, calls)

    assert writer.stats.flushes == flushes + 1, "the three batches were one group commit"
    assert first.counts["turn"].created == 2
    (failure,) = first.failed
    assert (failure.kind, failure.position) == ("turn", 1)
    assert_one_sentence(failure.description)
    assert second.counts["turn"].created == 2 and not second.failed
    assert third.counts["tool_call"].created == 1 and not third.failed

    stored = sorted((r["execution_id"], r["turn_number"]) for r in rows(store.url, "turns"))
    assert stored == [("exec-n", 10), ("exec-n", 11), ("exec-p", 1), ("exec-p", 3)]
    assert len(rows(store.url, "tool_calls")) == 1
    (letter,) = rows(store.url, "rejected_records")
    assert (letter["kind"], letter["door"], letter["execution_id"]) == ("turn", "test", "exec-p")
    assert (letter["stream_id"], letter["stream_offset"]) == ("s-poison", 1)
    assert letter["payload"]["turn_number"] == 2
    (violation,) = letter["violations"]
    assert violation == {
        "field": "turns[1]",
        "description": failure.description,
        "reason": STORAGE_REJECTED,
    }
    (stream,) = rows(store.url, "streams")
    assert stream["committed_offset"] == 3, "the stream moved past the poison record"
    assert store.connects == connects, "no reconnect"
    assert writer.healthy
    # The derived execution spans only the records that were stored.
    (execution,) = rows(store.url, "executions", execution_id="exec-p")
    assert execution["started_at"] == T0 + dt.timedelta(seconds=1)
    # The guarded path rebuilt the rollups from what it stored, not from what was sent.
    assert_rollups_exact(store.url)


async def test_the_next_batch_of_a_stream_after_a_poison_row_is_stored(store: Counted) -> None:
    """The stream does not wedge: its offset moved past the poison, so the next batch (the
    resume after the answer) starts there and commits."""
    writer = store.writer
    state = await writer.open_stream("default", "s-next")
    bad = prepare([turn(1), turn(2)], stream=StreamAdvance("s-next", state.epoch, 0, 2))
    bad.rows["turn"][0]["input_tokens"] = TOO_BIG
    outcome = await writer.submit(bad)
    assert [f.position for f in outcome.failed] == [0]
    following = prepare([turn(3)], stream=StreamAdvance("s-next", state.epoch, 2, 3))
    assert (await writer.submit(following)).counts["turn"].created == 1
    assert (await writer.stream_state("default", "s-next")).committed_offset == 3  # type: ignore[union-attr]


async def test_many_rows_with_poison_in_several_batches_keep_exact_counts(store: Counted) -> None:
    """Hundreds of rows (PostgreSQL's COPY path), several poison rows in different batches, a
    key sent twice in one group (merged) whose second copy is the poison."""
    writer = store.writer
    first = prepare([turn(n) for n in range(1, 201)])
    first.rows["turn"][17]["total_tokens"] = TOO_BIG
    first.rows["turn"][150]["output_tokens"] = TOO_BIG
    second = prepare([turn(n, "exec-q") for n in range(1, 101)] + [turn(5)])
    second.rows["turn"][100]["cache_read_tokens"] = TOO_BIG  # turn 5 of exec-p, again, poisoned
    second.rows["turn"][42]["input_tokens"] = TOO_BIG

    a, b = await submit_together(writer, first, second)

    assert [f.position for f in a.failed] == [17, 150]
    assert (a.counts["turn"].created, a.counts["turn"].updated) == (198, 0)
    assert [f.position for f in b.failed] == [42, 100]
    assert b.counts["turn"].created == 99
    assert b.counts["turn"].updated + b.counts["turn"].unchanged == 0
    assert len(rows(store.url, "turns")) == 198 + 99
    assert len(rows(store.url, "rejected_records")) == 4
    (kept,) = rows(store.url, "turns", execution_id="exec-p", turn_number=5)
    assert kept["cache_read_tokens"] is None, "the first, valid copy of turn 5 was stored"


async def test_a_dead_letter_the_database_refuses_is_kept_as_raw_bytes(store: Counted) -> None:
    writer = store.writer
    batch = prepare([turn(1)])
    batch.rows["turn"][0]["total_tokens"] = TOO_BIG
    # A dead letter of an invalid record with a value no column takes: it must not fail the
    # batch either.
    batch.rejected.append(
        {
            "tenant_id": "default",
            "rejected_id": "r-huge-offset",
            "door": "test",
            "kind": "turn",
            "execution_id": "exec-p",
            "stream_id": None,
            "stream_offset": TOO_BIG,
            "payload": {"turn_number": 9},
            "violations": [{"field": "turns[9]", "description": "bad", "reason": "INVALID"}],
            "received_at": T0,
        }
    )
    outcome = await writer.submit(batch)
    assert [f.position for f in outcome.failed] == [0]
    letters = {r["rejected_id"]: r for r in rows(store.url, "rejected_records")}
    assert len(letters) == 2
    minimal = letters["r-huge-offset"]
    assert minimal["stream_offset"] is None
    assert "_raw_base64" in minimal["payload"]


@pytest.mark.postgresql
async def test_postgresql_refuses_a_value_too_long_and_says_so(postgresql_url: str) -> None:
    counted = Counted(postgresql_url)
    await counted.writer.start()
    try:
        batch = prepare([turn(1), turn(2)])
        batch.rows["turn"][1]["model"] = "m" * 300
        outcome = await counted.writer.submit(batch)
        (failure,) = outcome.failed
        assert failure.description == (
            "the database refused this record: value too long for type character varying(256)"
        )
        assert outcome.counts["turn"].created == 1
    finally:
        await counted.writer.close(grace=5)
        counted.engine.dispose()


@pytest.mark.postgresql
async def test_a_batch_whose_dead_letters_cannot_be_stored_is_still_answered(
    postgresql_url: str,
) -> None:
    """A tenant id no column takes fails every row and every dead letter, minimal ones too: the
    caller still gets its answer (every row failed), and the writer stays up."""
    counted = Counted(postgresql_url)
    await counted.writer.start()
    try:
        batch = prepare([turn(1), turn(2)])
        for row in batch.rows["turn"]:
            row["tenant_id"] = "t" * 300
        batch.tenant_id = "t" * 300
        outcome = await counted.writer.submit(batch)
        assert sorted(f.position for f in outcome.failed) == [0, 1]
        assert rows(postgresql_url, "rejected_records") == []
        assert (await counted.writer.submit(prepare([turn(3)]))).counts["turn"].created == 1
        assert counted.writer.healthy
    finally:
        await counted.writer.close(grace=5)
        counted.engine.dispose()


async def test_a_poisoner_is_remembered_and_a_new_one_among_the_trusted_is_found(
    store: Counted,
) -> None:
    """After a poison row, the origin (tenant, door, stream) that sent it is suspect: its next
    batches are isolated beside the others' single statement. A new poisoner hiding among
    the trusted batches is still found (the group is written again, everyone suspect)."""
    writer = store.writer
    connects = store.connects
    first = prepare([turn(1, "exec-x")], door="poisoner")
    first.rows["turn"][0]["total_tokens"] = TOO_BIG
    assert [f.position for f in (await writer.submit(first)).failed] == [0]

    again = prepare([turn(2, "exec-x"), turn(3, "exec-x")], door="poisoner")
    again.rows["turn"][1]["total_tokens"] = TOO_BIG
    good = prepare([turn(n, "exec-g") for n in range(1, 101)], door="good")
    a, g = await submit_together(writer, again, good)
    assert [f.position for f in a.failed] == [1] and a.counts["turn"].created == 1
    assert g.counts["turn"].created == 100 and not g.failed

    hidden = prepare([turn(1, "exec-h"), turn(2, "exec-h")], door="other")
    hidden.rows["turn"][0]["input_tokens"] = TOO_BIG
    known = prepare([turn(4, "exec-x")], door="poisoner")
    h, k = await submit_together(writer, hidden, known)
    assert [f.position for f in h.failed] == [0] and h.counts["turn"].created == 1
    assert k.counts["turn"].created == 1 and not k.failed

    assert len(rows(store.url, "rejected_records")) == 3
    assert len(rows(store.url, "turns")) == 1 + 100 + 1 + 1
    assert store.connects == connects


async def test_a_batch_bigger_than_one_statement_is_written_in_several(store: Counted) -> None:
    """12,000 rows (a big Write is admitted alone) go in statements of at most 5,000, each well
    within db_timeout; counts stay exact, and a poison row beyond the first statement is found."""
    writer = store.writer
    clean = prepare([turn(n, "exec-big") for n in range(1, 12_001)])
    assert (await writer.submit(clean)).counts["turn"].created == 12_000
    poisoned = prepare([turn(n, "exec-big2") for n in range(1, 12_001)] + [turn(5, "exec-big")])
    poisoned.rows["turn"][7_000]["total_tokens"] = TOO_BIG
    outcome = await writer.submit(poisoned)
    assert [f.position for f in outcome.failed] == [7_000]
    assert outcome.counts["turn"].created == 11_999
    assert outcome.counts["turn"].unchanged == 1
    assert len(rows(store.url, "turns")) == 12_000 + 11_999
