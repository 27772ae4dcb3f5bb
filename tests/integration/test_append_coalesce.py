"""One record per message, coalesced: while the writer is busy with a flush, a stream's next
messages join its submission still waiting (Writer.join) instead of each becoming one of their
own, and every message is still answered on its own, in order, after the commit that held it,
with its own rejections. Real server, real gRPC, real database (both dialects); the database is
held busy from another connection (write_lock) so that messages pile up deterministically, and
poison is injected at our own seam (the door's pipeline)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from tests.dbutil import rows
from tests.integration.test_append import (
    APPENDED,
    batch,
    eventually,
    failure,
    next_ack,
    open_stream,
    reason,
    serving,
    stored_turns,
    turn,
    turns,
    write_lock,
)
from turnstream.core.batch import StreamAdvance
from turnstream.core.pipeline import Pipeline
from turnstream.server import Server
from turnstream.store.writer import Writer

TOO_BIG = 2**64  # a value validation lets through and every database refuses to store


class PoisonedRows:
    """The real pipeline, except that the row of every turn numbered in `poisoned` carries a
    value the database refuses (what validation may one day miss): the writer dead-letters it."""

    def __init__(self, real: Pipeline, poisoned: set[int]) -> None:
        self.real, self.poisoned = real, poisoned

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def prepare_append(self, records: Any, tenant_id: str, door: str, stream: StreamAdvance) -> Any:
        prepared, empty = self.real.prepare_append(records, tenant_id, door, stream)
        for row in prepared.batch.rows["turn"]:
            if row["turn_number"] in self.poisoned:
                row["total_tokens"] = TOO_BIG
        return prepared, empty


def writer_of(server: Server) -> Writer:
    assert server.writer is not None
    return server.writer


def door(server: Server) -> Any:
    assert server._streaming is not None
    return server._streaming


async def read_while_held(writer: Writer, messages: int) -> None:
    """Wait until the server read all `messages` and handed them to the writer."""
    await eventually(lambda: writer.stats.submissions + writer.stats.joined >= messages)


async def test_one_record_messages_of_many_streams_share_few_submissions(
    database_url: str,
) -> None:
    streams, per_stream = 4, 12
    async with serving(database_url, max_inflight_batches=16) as (server, stub):
        writer = writer_of(server)
        calls = [(await open_stream(stub, f"s{n}"))[0] for n in range(streams)]
        before = writer.stats.submissions
        with write_lock(database_url):  # the first flush waits: the rest pile up behind it
            for i in range(per_stream):
                for n, call in enumerate(calls):
                    await call.write(batch(i, [turn(i + 1, f"exec-{n}")]))
            await read_while_held(writer, before + streams * per_stream)
            submissions = writer.stats.submissions - before
            # At most two per stream: one taken by the flush that waits, one joined by the rest.
            assert submissions <= 2 * streams
            assert writer.stats.joined >= streams * per_stream - 2 * streams
        for n, call in enumerate(calls):
            acks = [await next_ack(call) for _ in range(per_stream)]
            assert [(a.offset, a.record_count, a.outcome) for a in acks] == [
                (i, 1, APPENDED) for i in range(per_stream)
            ]
            assert [a.committed_offset for a in acks] == list(range(1, per_stream + 1))
            assert not any(a.rejections for a in acks)
            assert stored_turns(database_url, f"exec-{n}") == list(range(1, per_stream + 1))
        # Nothing joined a submission after the writer took it: the flushes held every batch.
        assert writer.stats.batches == writer.stats.submissions
        assert writer.stats.pending_rows == 0


async def test_rejected_records_in_a_coalesced_group_are_answered_by_their_own_message(
    database_url: str,
) -> None:
    async with serving(database_url) as (server, stub):
        writer = writer_of(server)
        door(server).pipeline = PoisonedRows(door(server).pipeline, poisoned={5})
        call, _ = await open_stream(stub, "s")
        no_start = turn(3)
        no_start.turn.ClearField("started_at")  # invalid: caught by validation
        records = [turn(1), turn(2), no_start, turn(4), turn(5), turn(6)]
        before = writer.stats.submissions
        with write_lock(database_url):
            for offset, record in enumerate(records):
                await call.write(batch(offset, [record]))
            await read_while_held(writer, before + len(records))
            assert writer.stats.submissions - before <= 2  # messages 2..6 joined one submission
        acks = [await next_ack(call) for _ in records]
        assert [a.committed_offset for a in acks] == [1, 2, 3, 4, 5, 6]
        assert [a.outcome for a in acks] == [APPENDED] * 6
        # Each rejection is its own message's, at index 0 of that message, and only there.
        answered = {
            a.offset: [(r.index, r.violations[0].reason) for r in a.rejections] for a in acks
        }
        assert answered == {
            0: [],
            1: [],
            2: [(0, "REQUIRED")],
            3: [],
            4: [(0, "STORAGE_REJECTED")],
            5: [],
        }
        assert acks[4].rejections[0].violations[0].field == "records[0].turn"
        await call.write(batch(6, [turn(7)]))  # the stream goes on past them
        assert (await next_ack(call)).committed_offset == 7
    assert stored_turns(database_url) == [1, 2, 4, 6, 7]
    dead = rows(database_url, "rejected_records", stream_id="s")
    assert sorted(d["stream_offset"] for d in dead) == [2, 4]


async def test_a_fenced_coalesced_group_is_not_acked_and_resumes_exactly_once(
    database_url: str,
) -> None:
    async with serving(database_url) as (server, stub):
        writer = writer_of(server)
        call, _ = await open_stream(stub, "s")
        before = writer.stats.submissions
        with write_lock(database_url):
            await call.write(batch(0, turns(0, 1)))  # taken by the flush that waits
            await read_while_held(writer, before + 1)
            await asyncio.sleep(0.05)
            # Another replica opens the stream (its epoch bump queues behind that flush) ...
            reopened = asyncio.ensure_future(writer.open_stream("default", "s"))
            await asyncio.sleep(0.05)
            # ... and then four more one-record messages, which join one submission.
            for offset in range(1, 5):
                await call.write(batch(offset, turns(offset, 1)))
            await read_while_held(writer, before + 5)
            assert writer.stats.submissions - before == 2
        assert (await reopened).epoch == 2
        assert (await next_ack(call)).committed_offset == 1
        error = await failure(call)  # the whole group failed its epoch check: nothing acked
        assert error.code() == grpc.StatusCode.ABORTED and reason(error) == "STREAM_FENCED"
        assert stored_turns(database_url) == [1]

        call, opened = await open_stream(stub, "s")
        assert opened.committed_offset == 1
        for offset in range(1, 5):
            await call.write(batch(offset, turns(offset, 1)))
        acks = [await next_ack(call) for _ in range(4)]
        assert [a.committed_offset for a in acks] == [2, 3, 4, 5]
        assert stored_turns(database_url) == [1, 2, 3, 4, 5]
        assert all(r["revision"] == 1 for r in rows(database_url, "turns"))
