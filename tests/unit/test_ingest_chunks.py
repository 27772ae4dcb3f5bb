"""core/ingest.py stores a large request a chunk at a time and prepares the next chunk while
the writer stores the previous one (at most AHEAD chunks wait for their commit). Driven with
the real pipeline and a sink faked at our own seam (core.ingest.Sink), which commits when the
test says so."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from turnstream.core import ingest
from turnstream.core.batch import BatchOutcome, WriteBatch
from turnstream.core.pipeline import Pipeline, Prepared, count_write_items, iter_write_items
from turnstream.core.ports import StoreUnavailable
from turnstream.core.pricing import PriceTable
from turnstream.v1 import ingest_pb2

T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)
CHUNKS = 5


def request() -> ingest_pb2.WriteRequest:
    req = ingest_pb2.WriteRequest(execution_id="exec-1")
    for n in range(ingest.CHUNK_RECORDS * CHUNKS):
        t = req.turns.add(turn_number=n + 1, model="claude-sonnet-4-5", input_tokens=10)
        t.started_at.FromDatetime(T0)
    return req


class GatedSink:
    """Commits a submitted batch only when the test releases it; notes what it saw."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.gates: list[asyncio.Event] = []
        self.answered = 0
        self.most_waiting = 0
        self.fail_at = fail_at

    async def submit(self, batch: WriteBatch) -> BatchOutcome:
        index = len(self.gates)
        gate = asyncio.Event()
        self.gates.append(gate)
        self.most_waiting = max(self.most_waiting, len(self.gates) - self.answered)
        await gate.wait()
        self.answered += 1
        if index == self.fail_at:
            raise StoreUnavailable("injected: the database is down", 1.0)
        outcome = BatchOutcome()
        outcome.counts["turn"].created = len(batch.rows["turn"])
        return outcome


def start_write(
    sink: GatedSink, req: ingest_pb2.WriteRequest
) -> asyncio.Task[tuple[Prepared, BatchOutcome]]:
    pipeline = Pipeline(PriceTable.load(), clock=lambda: T0)
    return asyncio.create_task(
        ingest.write(
            sink, pipeline, "default", "test", iter_write_items(req), count_write_items(req)
        )
    )


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_next_chunk_is_submitted_while_the_previous_one_is_stored() -> None:
    sink = GatedSink()
    req = request()
    write = start_write(sink, req)
    await settle()
    # Nothing committed yet, and still the pipeline went on to the next chunks: up to AHEAD
    # waiting for their commit, plus the one prepared and submitted behind them.
    assert len(sink.gates) == ingest.AHEAD + 1
    while not write.done():
        sink.gates[sink.answered].set()
        await settle()
    prepared, outcome = write.result()
    assert len(sink.gates) == CHUNKS
    assert sink.most_waiting == ingest.AHEAD + 1
    assert outcome.counts["turn"].created == ingest.CHUNK_RECORDS * CHUNKS
    assert len(prepared.accepted) == count_write_items(req)


async def test_a_chunk_that_fails_fails_the_call_after_every_submitted_one_is_answered() -> None:
    sink = GatedSink(fail_at=1)
    req = request()
    write = start_write(sink, req)
    while not write.done():
        await settle()
        if sink.answered < len(sink.gates):
            sink.gates[sink.answered].set()
    with pytest.raises(StoreUnavailable):
        write.result()
    # The chunks already submitted behind the failed one were awaited, not left dangling, and
    # no chunk was submitted after the failure was seen.
    assert sink.answered == len(sink.gates) == ingest.AHEAD + 2
