"""IngestService.Append and GetStream against a real server, real gRPC stubs and a real database
(both dialects): offsets, exactly-once replays, gaps, rejections, fencing, resume, heartbeats,
limits, backpressure, database outages and drain."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.engine import make_url

from tests.dbutil import rows, snapshot
from tests.serving import ingest_stub, running_server
from turnstream.server import Server
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc, records_pb2

T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)
APPENDED = ingest_pb2.APPEND_OUTCOME_APPENDED
ALREADY_STORED = ingest_pb2.APPEND_OUTCOME_ALREADY_STORED
GAP = ingest_pb2.APPEND_OUTCOME_GAP

Call = Any  # grpc.aio.StreamStreamCall[AppendRequest, AppendResponse]


# -- building requests ---------------------------------------------------------------------------


def turn(n: int, execution_id: str = "exec-s") -> ingest_pb2.Record:
    t = records_pb2.Turn(
        execution_id=execution_id, turn_number=n, turn_id=f"{execution_id}-t{n}", model="gpt-4o"
    )
    t.started_at.FromDatetime(T0 + dt.timedelta(seconds=n))
    return ingest_pb2.Record(turn=t)


def turns(first: int, count: int, execution_id: str = "exec-s") -> list[ingest_pb2.Record]:
    """Turns numbered from first + 1, so turn k sits at stream offset k - 1."""
    return [turn(first + i + 1, execution_id) for i in range(count)]


def batch(offset: int, records: list[ingest_pb2.Record]) -> ingest_pb2.AppendRequest:
    return ingest_pb2.AppendRequest(batch=ingest_pb2.AppendBatch(offset=offset, records=records))


def open_request(stream_id: str) -> ingest_pb2.AppendRequest:
    return ingest_pb2.AppendRequest(open=ingest_pb2.OpenStream(stream_id=stream_id))


# -- talking to the server -----------------------------------------------------------------------


async def open_stream(
    stub: ingest_pb2_grpc.IngestServiceStub, stream_id: str
) -> tuple[Call, ingest_pb2.StreamOpened]:
    call = stub.Append()
    await call.write(open_request(stream_id))
    first = await call.read()
    assert first.WhichOneof("kind") == "opened", first
    return call, first.opened


async def next_ack(call: Call) -> ingest_pb2.BatchAck:
    response = await call.read()
    assert response.WhichOneof("kind") == "ack", response
    return response.ack


async def failure(call: Call) -> grpc.aio.AioRpcError:
    """Read until the call fails; return the error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while True:
            response = await call.read()
            assert response is not grpc.aio.EOF, "the call ended with OK"
    return info.value


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    status = rpc_status.from_call(error)
    assert status is not None, error
    out: dict[str, Any] = {}
    for detail in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                out[cls.DESCRIPTOR.name] = message
    return out


def violation_fields(error: grpc.aio.AioRpcError) -> list[str]:
    return [v.field for v in details(error)["BadRequest"].field_violations]


def reason(error: grpc.aio.AioRpcError) -> str:
    return str(details(error)["ErrorInfo"].reason)


def stored_turns(url: str, execution_id: str = "exec-s") -> list[int]:
    return sorted(r["turn_number"] for r in rows(url, "turns", execution_id=execution_id))


async def eventually(predicate: Any) -> None:
    """Poll a condition the server reaches on its own (3 s at most); polling, because the
    server offers no event for it and the test must not add hooks to it."""
    async with asyncio.timeout(3.0):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@contextlib.contextmanager
def write_lock(url: str) -> Iterator[None]:
    """Hold the database's write lock (SQLite) or the streams table (PostgreSQL) from another
    connection: the writer's next transaction waits until the block ends."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(parsed.database), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with psycopg.connect(parsed.set(drivername="postgresql").render_as_string(False)) as conn:
        conn.execute("LOCK TABLE streams IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


@contextlib.asynccontextmanager
async def serving(url: str, **settings: Any) -> AsyncIterator[tuple[Server, Any]]:
    async with running_server(url, **settings) as server, ingest_stub(server) as stub:
        yield server, stub


# -- the protocol --------------------------------------------------------------------------------


async def test_open_answers_committed_offset_and_limits(database_url: str) -> None:
    async with serving(
        database_url, max_batch_records=50, max_batch_bytes=65_536, max_inflight_batches=3
    ) as (_, stub):
        call, opened = await open_stream(stub, "s-new")
        assert opened.committed_offset == 0
        limits = opened.limits
        assert (limits.max_batch_records, limits.max_batch_bytes) == (50, 65_536)
        assert limits.max_inflight_batches == 3
        assert limits.heartbeat_interval.ToTimedelta() == dt.timedelta(seconds=30)
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

        unknown = await stub.GetStream(ingest_pb2.GetStreamRequest(stream_id="never-opened"))
        assert unknown.committed_offset == 0 and unknown.stream_id == "never-opened"


async def test_batches_are_acked_in_order_once_committed(database_url: str) -> None:
    async with serving(database_url) as (_, stub):
        call, _ = await open_stream(stub, "s")
        for i in range(3):  # pipelined: all three are in flight before the first ack
            await call.write(batch(4 * i, turns(4 * i, 4)))
        for i in range(3):
            ack = await next_ack(call)
            assert (ack.offset, ack.record_count, ack.outcome) == (4 * i, 4, APPENDED)
            assert ack.committed_offset == 4 * (i + 1) and not ack.rejections
            # Ack means committed: the batch is readable by another connection at once.
            assert set(range(1, 4 * (i + 1) + 1)) <= set(stored_turns(database_url))
        assert stored_turns(database_url) == list(range(1, 13))
        (stream,) = rows(database_url, "streams", stream_id="s")
        assert stream["committed_offset"] == 12
        got = await stub.GetStream(ingest_pb2.GetStreamRequest(stream_id="s"))
        assert got.committed_offset == 12
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF


async def test_replayed_batches_are_already_stored_and_change_no_table(database_url: str) -> None:
    async with serving(database_url) as (_, stub):
        call, _ = await open_stream(stub, "s")
        sent = [batch(0, turns(0, 3)), batch(3, turns(3, 3)), batch(6, turns(6, 2))]
        for request in sent:
            await call.write(request)
        # A resend of a batch still in flight is judged against it, answered after it committed.
        await call.write(sent[2])
        answers = [await next_ack(call) for _ in range(4)]
        assert [a.outcome for a in answers] == [APPENDED] * 3 + [ALREADY_STORED]
        assert [a.committed_offset for a in answers] == [3, 6, 8, 8]

        before = snapshot(database_url)
        replays = [*sent, batch(1, turns(1, 2))]  # every batch again, and a sub-range
        for request in replays:  # on the same call
            await call.write(request)
        for request in replays:
            ack = await next_ack(call)
            assert ack.outcome == ALREADY_STORED and ack.committed_offset == 8
            assert ack.offset == request.batch.offset
        assert snapshot(database_url) == before
        call.cancel()

        call, opened = await open_stream(stub, "s")  # a resume replays everything too
        assert opened.committed_offset == 8
        before = snapshot(database_url)  # (the open itself bumped the stream's epoch)
        for request in sent:
            await call.write(request)
        assert [(await next_ack(call)).outcome for _ in sent] == [ALREADY_STORED] * 3
        assert snapshot(database_url) == before
        assert stored_turns(database_url) == list(range(1, 9))


async def test_gap_is_answered_with_the_offset_to_resend_from(database_url: str) -> None:
    async with serving(database_url) as (_, stub):
        call, _ = await open_stream(stub, "s")
        await call.write(batch(0, turns(0, 2)))
        await call.write(batch(5, turns(5, 2)))  # offsets 2..4 never sent
        assert (await next_ack(call)).committed_offset == 2
        gap = await next_ack(call)
        assert (gap.outcome, gap.offset, gap.committed_offset) == (GAP, 5, 2)
        assert stored_turns(database_url) == [1, 2]  # nothing of the gap batch written
        await call.write(batch(2, turns(2, 5)))  # resend from there
        ack = await next_ack(call)
        assert (ack.outcome, ack.committed_offset) == (APPENDED, 7)
        assert stored_turns(database_url) == list(range(1, 8))


async def test_batch_straddling_the_offset_is_invalid_argument(database_url: str) -> None:
    async with serving(database_url) as (_, stub):
        call, _ = await open_stream(stub, "s")
        await call.write(batch(0, turns(0, 3)))
        await call.write(batch(2, turns(2, 3)))  # offset 2 is stored, 3 and 4 are not
        assert (await next_ack(call)).committed_offset == 3  # answers before the error come first
        error = await failure(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violation_fields(error) == ["batch.offset"]
        assert reason(error) == "OFFSET_STRADDLES" and "offset 3" in (error.details() or "")
        assert stored_turns(database_url) == [1, 2, 3]


async def test_invalid_records_are_acked_with_rejections_and_kept(database_url: str) -> None:
    async with serving(database_url) as (_, stub):
        call, _ = await open_stream(stub, "s")
        no_start = turn(2)
        no_start.turn.ClearField("started_at")
        records = [turn(1), no_start, ingest_pb2.Record(), turn(4)]
        await call.write(batch(0, records))
        ack = await next_ack(call)
        assert (ack.outcome, ack.committed_offset) == (APPENDED, 4)  # every record consumed one
        assert [r.index for r in ack.rejections] == [1, 2]
        assert [v.field for v in ack.rejections[0].violations] == ["records[1].turn.started_at"]
        assert ack.rejections[0].kind == records_pb2.RECORD_KIND_TURN
        assert [v.field for v in ack.rejections[1].violations] == ["records[2]"]
        assert stored_turns(database_url) == [1, 4]
        (dead,) = rows(database_url, "rejected_records")
        assert (dead["stream_id"], dead["stream_offset"]) == ("s", 1)
        assert dead["door"] == "grpc.Append" and dead["payload"]["turn_number"] == 2
        assert dead["violations"][0]["field"] == "records[1].turn.started_at"

        await call.write(batch(4, [turn(5)]))  # the stream goes on after the rejected offsets
        assert (await next_ack(call)).committed_offset == 5


async def test_a_long_batch_prepared_in_parts_is_answered_as_one(database_url: str) -> None:
    """More than STEP records are prepared a part at a time (stream_session.py): the ack, its
    rejections' indexes and field paths, and the dead letters' offsets are those of the batch."""
    async with serving(database_url) as (_, stub):
        call, _ = await open_stream(stub, "s")
        records = turns(0, 130)  # turn k at index k - 1
        records[76].turn.ClearField("started_at")  # in the second part
        records[121] = ingest_pb2.Record()  # in the third
        await call.write(batch(0, records))
        ack = await next_ack(call)
        assert (ack.outcome, ack.record_count, ack.committed_offset) == (APPENDED, 130, 130)
        assert [r.index for r in ack.rejections] == [76, 121]
        assert [v.field for v in ack.rejections[0].violations] == ["records[76].turn.started_at"]
        assert [v.field for v in ack.rejections[1].violations] == ["records[121]"]
        (dead,) = rows(database_url, "rejected_records")
        assert (dead["stream_offset"], dead["violations"][0]["field"]) == (
            76,
            "records[76].turn.started_at",
        )
        assert stored_turns(database_url) == [n for n in range(1, 131) if n not in (77, 122)]


async def test_second_open_fences_the_older_call(database_url: str) -> None:
    async with serving(database_url) as (_, stub):
        old, _ = await open_stream(stub, "s")
        await old.write(batch(0, turns(0, 2)))
        assert (await next_ack(old)).committed_offset == 2
        new, opened = await open_stream(stub, "s")
        assert opened.committed_offset == 2
        error = await failure(old)
        assert error.code() == grpc.StatusCode.ABORTED
        assert reason(error) == "STREAM_FENCED" and "newer connection" in (error.details() or "")
        await new.write(batch(2, turns(2, 1)))
        assert (await next_ack(new)).committed_offset == 3


async def test_open_by_another_replica_fences_through_the_epoch(database_url: str) -> None:
    async with serving(database_url) as (server, stub):
        call, _ = await open_stream(stub, "s")
        await call.write(batch(0, turns(0, 1)))
        assert (await next_ack(call)).committed_offset == 1
        # Another replica opening the stream bumps its epoch in the database.
        assert server.writer is not None
        await server.writer.open_stream("default", "s")
        await call.write(batch(1, turns(1, 1)))
        error = await failure(call)
        assert error.code() == grpc.StatusCode.ABORTED and reason(error) == "STREAM_FENCED"
        assert stored_turns(database_url) == [1]


async def test_resume_after_disconnect_stores_every_record_once(database_url: str) -> None:
    async with serving(database_url) as (_, stub):
        call, _ = await open_stream(stub, "s")
        for i in range(2):
            await call.write(batch(5 * i, turns(5 * i, 5)))
        acked = [await next_ack(call) for _ in range(2)]
        for i in range(2, 6):  # sent, never read back: some may commit, none was acked
            await call.write(batch(5 * i, turns(5 * i, 5)))
        call.cancel()

        call, opened = await open_stream(stub, "s")
        resume = opened.committed_offset
        assert acked[-1].committed_offset == 10 <= resume <= 30 and resume % 5 == 0
        got = await stub.GetStream(ingest_pb2.GetStreamRequest(stream_id="s"))
        assert got.committed_offset == resume
        for offset in range(resume, 40, 5):
            await call.write(batch(offset, turns(offset, 5)))
        for offset in range(resume, 40, 5):
            assert (await next_ack(call)).offset == offset
        assert stored_turns(database_url) == list(range(1, 41))  # each exactly once
        assert all(r["revision"] == 1 for r in rows(database_url, "turns"))


async def test_heartbeats_flow_when_idle(database_url: str) -> None:
    async with serving(database_url, heartbeat_interval=0.2) as (_, stub):
        call, opened = await open_stream(stub, "s")
        assert opened.limits.heartbeat_interval.ToMilliseconds() == 200
        started = time.monotonic()
        for _ in range(2):
            response = await call.read()
            assert response.WhichOneof("kind") == "heartbeat"
        assert 0.35 <= time.monotonic() - started < 1.0
        # Client heartbeats are accepted and answered by nothing; a slow commit is no silence.
        await call.write(ingest_pb2.AppendRequest(heartbeat=ingest_pb2.Heartbeat()))
        with write_lock(database_url):
            await call.write(batch(0, turns(0, 1)))
            assert (await call.read()).WhichOneof("kind") == "heartbeat"
        response = await call.read()
        while response.WhichOneof("kind") == "heartbeat":
            response = await call.read()
        assert response.ack.committed_offset == 1


async def test_limits_and_malformed_requests_are_invalid_argument(database_url: str) -> None:
    async with serving(database_url, max_batch_records=5, max_batch_bytes=2_000) as (_, stub):

        async def rejected(*requests: ingest_pb2.AppendRequest) -> grpc.aio.AioRpcError:
            call = stub.Append()
            for request in requests:
                await call.write(request)
            error = await failure(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            return error

        opening = open_request("s")
        error = await rejected(opening, batch(0, turns(0, 6)))
        assert violation_fields(error) == ["batch.records"] and reason(error) == "BATCH_TOO_LARGE"
        assert "max_batch_records (5)" in (error.details() or "")
        big = turn(1)
        big.turn.response_preview = "x" * 2_500
        error = await rejected(opening, batch(0, [big]))
        assert violation_fields(error) == ["batch"] and "max_batch_bytes" in (error.details() or "")
        error = await rejected(opening, batch(0, []))
        assert violation_fields(error) == ["batch.records"] and reason(error) == "EMPTY_BATCH"
        for bad in ("", "tab\there", "x" * 257):
            assert violation_fields(await rejected(open_request(bad))) == ["open.stream_id"]
        assert violation_fields(await rejected(batch(0, turns(0, 1)))) == ["open"]
        assert violation_fields(await rejected(opening, opening)) == ["open"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetStream(ingest_pb2.GetStreamRequest(stream_id=""))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violation_fields(info.value) == ["stream_id"]
        assert rows(database_url, "turns") == []


# -- load, outages and shutdown ------------------------------------------------------------------


async def test_a_full_window_stops_reading(database_url: str) -> None:
    async with serving(database_url, max_inflight_batches=2) as (server, stub):
        writer = server.writer
        assert writer is not None
        call, _ = await open_stream(stub, "s")
        with write_lock(database_url):  # the first batch cannot commit
            for i in range(8):
                await call.write(batch(3 * i, turns(3 * i, 3)))
            await eventually(lambda: writer.stats.pending_rows == 6)
            await asyncio.sleep(0.2)
            # Only the window's two batches were read: the rest wait in HTTP/2 buffers.
            assert writer.stats.pending_rows == 6
        acks = [await next_ack(call) for _ in range(8)]
        assert [a.committed_offset for a in acks] == [3 * (i + 1) for i in range(8)]
        assert stored_turns(database_url) == list(range(1, 25))


async def test_batches_wait_for_room_in_a_full_writer_in_arrival_order(database_url: str) -> None:
    # Admission is FIFO: a small later batch of a stream never overtakes a larger earlier one
    # that waits for room (it would fail its offset check and abort the stream).
    async with serving(database_url, max_pending_rows=4) as (server, stub):
        writer = server.writer
        assert writer is not None
        other, _ = await open_stream(stub, "other")
        call, _ = await open_stream(stub, "s")
        with write_lock(database_url):
            await other.write(batch(0, turns(0, 2, "exec-o")))
            await eventually(lambda: writer.stats.pending_rows == 2)
            await call.write(batch(0, turns(0, 3)))  # 2 + 3 > 4: waits for room
            await call.write(batch(3, turns(3, 1)))  # would fit, but waits behind it
            await asyncio.sleep(0.2)
            assert writer.stats.pending_rows == 2
        acks = [await next_ack(call) for _ in range(2)]
        assert [(a.outcome, a.committed_offset) for a in acks] == [(APPENDED, 3), (APPENDED, 4)]
        assert (await next_ack(other)).committed_offset == 2
        assert stored_turns(database_url) == [1, 2, 3, 4]


async def test_database_down_is_unavailable_and_the_stream_resumes(postgresql_url: str) -> None:
    url = postgresql_url
    async with serving(url) as (_, stub):
        call, _ = await open_stream(stub, "s")
        await call.write(batch(0, turns(0, 2)))
        assert (await next_ack(call)).committed_offset == 2
        # The server's connections die (a PostgreSQL restart or failover looks like this).
        with psycopg.connect(
            make_url(url).set(drivername="postgresql").render_as_string(False)
        ) as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        started = time.monotonic()
        await call.write(batch(2, turns(2, 2)))
        error = await failure(call)
        assert time.monotonic() - started < 1.0
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert details(error)["RetryInfo"].retry_delay.ToMilliseconds() > 0
        # Nothing was acked from memory; the client resumes where the database is.
        call, opened = await open_stream(stub, "s")
        assert opened.committed_offset == 2
        await call.write(batch(2, turns(2, 2)))
        assert (await next_ack(call)).committed_offset == 4
        assert stored_turns(url) == [1, 2, 3, 4]


async def test_drain_answers_every_batch_read_then_ends_ok(database_url: str) -> None:
    async with serving(database_url) as (server, stub):
        writer = server.writer
        assert writer is not None
        call, _ = await open_stream(stub, "s")
        with write_lock(database_url):  # hold the batches in flight while the server stops
            for i in range(4):
                await call.write(batch(2 * i, turns(2 * i, 2)))
            await eventually(lambda: writer.stats.pending_rows == 8)
            stopping = asyncio.create_task(server.stop())
            door = server._streaming
            await eventually(lambda: door.draining)
            late = stub.Append()  # a new open while draining is turned away
            await late.write(open_request("s2"))
            error = await failure(late)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert reason(error) == "SHUTTING_DOWN"
        acks = [await next_ack(call) for _ in range(4)]
        assert [a.committed_offset for a in acks] == [2, 4, 6, 8]
        response = await call.read()
        assert response.WhichOneof("kind") == "drain" and response.drain.reason
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        await stopping
    assert stored_turns(database_url) == list(range(1, 9))
    (stream,) = rows(database_url, "streams", stream_id="s")
    assert stream["committed_offset"] == 8


async def test_calls_still_answering_after_the_grace_end_unavailable(database_url: str) -> None:
    async with serving(database_url) as (server, stub):
        writer = server.writer
        assert writer is not None
        call, _ = await open_stream(stub, "s")
        with write_lock(database_url):  # the batch cannot commit within the grace
            await call.write(batch(0, turns(0, 2)))
            await eventually(lambda: writer.stats.pending_rows == 2)
            stopping = asyncio.create_task(server.stop(grace=0.3))
            error = await failure(call)  # never acked from memory
            assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "SHUTTING_DOWN"
            assert details(error)["RetryInfo"].retry_delay.ToMilliseconds() > 0
        await stopping
    # The writer still committed what it had queued: a resume answers it as already stored.
    assert rows(database_url, "streams", stream_id="s")[0]["committed_offset"] in (0, 2)


async def test_drain_with_no_open_stream(database_url: str) -> None:
    async with serving(database_url) as (server, _):
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 1.0
