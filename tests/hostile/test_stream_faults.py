"""Append under hostile input and server faults, against a real server and database (both
dialects): bytes that do not parse inside a stream, calls that never open, rows the database
refuses, a batch the server fails on every time — and what the SDK does about each: a stream
never wedges, and nothing is lost, not even bad input.

Faults are injected at our own seams only (the door's pipeline and writer, wrapped by tiny
fakes); gRPC, the network and the database are real."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests.dbutil import rows
from tests.integration.test_append import (
    Call,
    batch,
    details,
    failure,
    next_ack,
    open_request,
    open_stream,
    reason,
    serving,
    stored_turns,
    turn,
    turns,
)
from turnstream.client import StreamError, StreamWriter
from turnstream.core import deadletter
from turnstream.core.batch import BatchOutcome, FailedRow, StreamAdvance, Submission, WriteBatch
from turnstream.core.pipeline import Pipeline
from turnstream.server import Server
from turnstream.store.writer import Writer
from turnstream.v1 import ingest_pb2, records_pb2

APPEND = "/turnstream.v1.IngestService/Append"
T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)


# -- fakes at our own seams ----------------------------------------------------------------------


class PoisonedPipeline:
    """The real pipeline, except that preparing a batch holding `offset` raises (a pipeline bug
    on one record): the server fails that batch on every attempt."""

    def __init__(self, real: Pipeline, offset: int) -> None:
        self.real, self.offset, self.calls = real, offset, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def prepare_append(self, records: Any, tenant_id: str, door: str, stream: StreamAdvance) -> Any:
        if stream.from_offset <= self.offset < stream.to_offset:
            self.calls += 1
            raise RuntimeError(f"injected: the pipeline cannot prepare offset {self.offset}")
        return self.real.prepare_append(records, tenant_id, door, stream)


class RefusingWriter:
    """The real writer, as it treats rows the database refuses after validation (the writer's
    contract in core.batch): the turns numbered in `refused` are dead-lettered instead of stored,
    the rest of the batch commits, the stream's offset advances, and the outcome lists them."""

    def __init__(self, real: Writer, refused: set[int]) -> None:
        self.real, self.refused = real, refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def enqueue(self, batch: WriteBatch) -> Submission:
        # The door hands batches over with enqueue (and join); this fake's submissions are
        # taken from the start, so nothing joins them: every message is one submit, as before.
        future = asyncio.ensure_future(self.submit(batch))
        return Submission(batch, future, batch.size(), taken=True)

    async def submit(self, batch: WriteBatch) -> BatchOutcome:
        bad = [i for i, r in enumerate(batch.rows["turn"]) if r["turn_number"] in self.refused]
        if not bad:
            return await self.real.submit(batch)
        why = "the database refused this turn"
        kept = WriteBatch(
            batch.tenant_id,
            rows={k: list(v) for k, v in batch.rows.items()},
            derived_executions=batch.derived_executions,
            rejected=[
                *batch.rejected,
                *(deadletter.storage_failure(batch, "turn", i, why, T0) for i in bad),
            ],
            stream=batch.stream,
            door=batch.door,
        )
        kept.rows["turn"] = [r for i, r in enumerate(batch.rows["turn"]) if i not in bad]
        outcome = await self.real.submit(kept)
        outcome.failed = [FailedRow("turn", i, why) for i in bad]  # positions in `batch`
        return outcome


def door(server: Server) -> Any:
    assert server._streaming is not None
    return server._streaming


# -- raw bytes on the wire -----------------------------------------------------------------------


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand (for bytes no message would build)."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def too_deep() -> bytes:
    """An AppendRequest whose tool call holds a Struct nested 40 dicts deep: it encodes, but
    every protobuf parser refuses it (depth limit 100)."""
    call = records_pb2.ToolCall(execution_id="exec-s", tool_name="t")
    nested: dict[str, Any] = {}
    inner = nested
    for _ in range(40):
        inner["k"] = {}
        inner = inner["k"]
    call.tool_input.update(nested)
    record = field(2, call.SerializeToString())  # Record.tool_call
    return field(2, field(1, b"\x08\x02") + field(2, record))  # AppendRequest.batch{offset 2,...}


MALFORMED = {
    "garbage": b"\xff\xff\xff\xff\xff",
    "truncated": batch(2, turns(2, 3)).SerializeToString()[:-7],
    "too_deep": too_deep(),
}


async def raw_call(server: Server) -> AsyncIterator[Call]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        append = channel.stream_stream(
            APPEND,
            request_serializer=None,  # bytes go out exactly as given
            response_deserializer=ingest_pb2.AppendResponse.FromString,
        )
        yield append()


# -- malformed messages --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MALFORMED))
async def test_malformed_message_mid_stream_is_kept_and_ends_invalid_argument(
    database_url: str, kind: str
) -> None:
    bad = MALFORMED[kind]
    async with serving(database_url) as (server, stub):
        async for call in raw_call(server):
            await call.write(open_request("s").SerializeToString())
            assert (await call.read()).WhichOneof("kind") == "opened"
            await call.write(batch(0, turns(0, 2)).SerializeToString())
            await call.write(bad)
            # The batch read before the bad message is still answered, in order.
            assert (await next_ack(call)).committed_offset == 2
            error = await failure(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # never INTERNAL, never retried
        assert reason(error) == "MALFORMED_REQUEST"
        assert "not a valid turnstream.v1.AppendRequest" in (error.details() or "")
        assert "Error" not in (error.details() or "")  # no Python class names
        # Kept before the call ended: its exact bytes, where it came from.
        (dead,) = rows(database_url, "rejected_records")
        where = (dead["door"], dead["kind"], dead["stream_id"])
        assert where == ("grpc.Append", "append_request", "s")
        assert base64.b64decode(dead["payload"]["_raw_base64"]) == bad
        assert dead["violations"][0]["reason"] == "MALFORMED_REQUEST"
        # The stream itself is intact: a client resumes at the committed offset.
        call, opened = await open_stream(stub, "s")
        assert opened.committed_offset == 2
        await call.write(batch(2, turns(2, 1)))
        assert (await next_ack(call)).committed_offset == 3
    assert stored_turns(database_url) == [1, 2, 3]


async def test_malformed_first_message_is_kept_without_a_stream(database_url: str) -> None:
    async with serving(database_url) as (server, _):
        async for call in raw_call(server):
            await call.write(MALFORMED["garbage"])
            error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(error) == "MALFORMED_REQUEST"
    (dead,) = rows(database_url, "rejected_records")
    assert (dead["kind"], dead["stream_id"]) == ("append_request", None)


# -- calls that never open -----------------------------------------------------------------------


async def test_calls_that_never_open_are_ended_after_open_timeout(database_url: str) -> None:
    async with serving(database_url, open_timeout=0.5) as (_, stub):
        started = time.monotonic()
        idle = [stub.Append() for _ in range(100)]
        codes = await asyncio.wait_for(asyncio.gather(*(c.code() for c in idle)), 10)
        elapsed = time.monotonic() - started
        assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
        assert 0.4 <= elapsed < 5.0
        error = await failure(idle[0])
        assert reason(error) == "OPEN_TIMEOUT" and "send open first" in (error.details() or "")
        assert "RetryInfo" not in details(error)

        # The limit is on the open only: an opened stream may idle past it.
        call, _ = await open_stream(stub, "s")
        await asyncio.sleep(0.8)
        await call.write(batch(0, turns(0, 1)))
        assert (await next_ack(call)).committed_offset == 1


# -- rows refused after validation ---------------------------------------------------------------


async def test_rows_the_database_refused_are_answered_in_the_ack(database_url: str) -> None:
    async with serving(database_url) as (server, stub):
        door(server).writer = RefusingWriter(door(server).writer, refused={2, 5})
        call, _ = await open_stream(stub, "s")
        no_start = turn(3)
        no_start.turn.ClearField("started_at")  # invalid: caught by validation
        records = [turn(1), turn(2), no_start, ingest_pb2.Record(), turn(5), turn(6)]
        await call.write(batch(0, records))
        ack = await next_ack(call)
        assert (ack.outcome, ack.committed_offset) == (ingest_pb2.APPEND_OUTCOME_APPENDED, 6)
        # Validation and storage rejections together, in the order of the batch's records.
        assert [r.index for r in ack.rejections] == [1, 2, 3, 4]
        reasons = [r.violations[0].reason for r in ack.rejections]
        assert reasons == ["STORAGE_REJECTED", "REQUIRED", "REQUIRED", "STORAGE_REJECTED"]
        refused = ack.rejections[0]
        assert refused.kind == records_pb2.RECORD_KIND_TURN
        assert refused.violations[0].field == "records[1].turn"
        assert refused.violations[0].description == "the database refused this turn"
        await call.write(batch(6, [turn(7)]))  # the stream goes on past them
        assert (await next_ack(call)).committed_offset == 7
    assert stored_turns(database_url) == [1, 6, 7]
    dead = rows(database_url, "rejected_records", stream_id="s")
    assert sorted(d["stream_offset"] for d in dead) == [1, 2, 4]


# -- a batch that fails every time ---------------------------------------------------------------


async def test_a_batch_the_server_cannot_prepare_ends_the_call_after_earlier_acks(
    database_url: str,
) -> None:
    async with serving(database_url) as (server, stub):
        poisoned = PoisonedPipeline(door(server).pipeline, offset=4)
        door(server).pipeline = poisoned
        call, _ = await open_stream(stub, "s")
        await call.write(batch(0, turns(0, 3)))
        await call.write(batch(3, turns(3, 3)))  # holds offset 4
        assert (await next_ack(call)).committed_offset == 3  # what came before is answered
        for attempt in range(2):  # and the same answer on every resume
            error = await failure(call)
            assert error.code() == grpc.StatusCode.INTERNAL
            incident = details(error)["ErrorInfo"].metadata["incident"]
            assert incident and incident in (error.details() or "")
            if attempt == 0:
                call, opened = await open_stream(stub, "s")
                assert opened.committed_offset == 3
                await call.write(batch(3, turns(3, 3)))
        assert poisoned.calls == 2
    assert stored_turns(database_url) == [1, 2, 3]


async def test_the_sdk_fails_a_stalled_stream_naming_the_stuck_batch(database_url: str) -> None:
    async with serving(database_url) as (server, _):
        door(server).pipeline = PoisonedPipeline(door(server).pipeline, offset=20)
        writer = StreamWriter(
            f"127.0.0.1:{server.grpc_port}",
            "s",
            max_batch_records=10,
            max_reconnect_time=8,  # every reopen succeeds: this clock alone never ran out
            max_stall_time=1.0,
        )
        await writer.start()
        for n in range(35):
            await writer.turn(turn(n + 1).turn)
        started = time.monotonic()
        with pytest.raises(StreamError) as info:
            await writer.flush()
        # The server asks for 5 s between retries (RetryInfo); one retry shows the failure
        # repeats, and the stall is past max_stall_time by then.
        assert time.monotonic() - started < 15
        error = info.value
        assert error.code == grpc.StatusCode.INTERNAL and error.reason == "INTERNAL"
        assert error.stuck_offsets == range(20, 30)
        assert "offsets 20..29" in error.message and "no progress" in error.message
        assert [r.turn.turn_number for r in error.unacked] == list(range(21, 36))
        assert writer.committed_offset == 20 and writer.reconnects >= 1
        await writer.close()  # the error was raised to the caller already
    assert stored_turns(database_url) == list(range(1, 21))


async def test_the_sdk_fails_at_once_on_a_message_over_the_servers_limit(
    database_url: str,
) -> None:
    # The batch is within max_batch_bytes but over the gRPC message limit: gRPC itself answers
    # RESOURCE_EXHAUSTED, and sending the same batch again can only fail the same way.
    async with serving(database_url, max_message_bytes=4096) as (server, _):
        writer = StreamWriter(f"127.0.0.1:{server.grpc_port}", "s", max_stall_time=None)
        await writer.start()
        big = turn(1).turn
        big.response_preview = "x" * 6000
        await writer.turn(big)
        started = time.monotonic()
        with pytest.raises(StreamError) as info:
            await writer.flush()
        assert time.monotonic() - started < 3
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.stuck_offsets == range(0, 1)
        assert writer.reconnects == 0
        await writer.close()
    assert stored_turns(database_url) == []


async def test_the_sdk_refuses_a_record_no_parser_can_read_before_buffering_it(
    database_url: str,
) -> None:
    nested: dict[str, Any] = {}
    inner = nested
    for _ in range(40):
        inner["k"] = {}
        inner = inner["k"]
    async with (
        serving(database_url) as (server, _),
        StreamWriter(f"127.0.0.1:{server.grpc_port}", "s", execution_id="exec-s") as writer,
    ):
        await writer.turn(turn(1).turn)
        with pytest.raises(ValueError, match="nested too deeply for protobuf parsers"):
            await writer.tool_call(tool_name="t", started_at=T0, tool_input=nested)
        await writer.turn(turn(2).turn)  # the stream goes on
        await writer.flush()
        assert writer.committed_offset == 2 and writer.next_offset == 2
    assert stored_turns(database_url) == [1, 2]
