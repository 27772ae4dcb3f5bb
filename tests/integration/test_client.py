"""The Python SDK (turnstream.client) against a real server and a real database (both dialects):
streaming exactly once, flush and close, rejections, resume across a server restart, fencing, the
blocking facade from a plain thread, and unary calls with retries."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from tests.dbutil import rows
from tests.pgserver import PgServer, free_port
from tests.serving import running_server
from turnstream.client import (
    Client,
    Rejection,
    RPCError,
    StreamError,
    StreamWriter,
    SyncClient,
    SyncStreamWriter,
)
from turnstream.config import Settings
from turnstream.server import Server
from turnstream.v1 import records_pb2

T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)
MODEL = "claude-sonnet-4-5"


def turn_fields(n: int, execution_id: str) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "turn_number": n,
        "model": MODEL,
        "started_at": T0 + dt.timedelta(seconds=n),
        "input_tokens": 100 + n,
        "output_tokens": 10,
    }


def stored_turns(url: str, execution_id: str) -> list[int]:
    return sorted(r["turn_number"] for r in rows(url, "turns", execution_id=execution_id))


def committed_in_db(url: str, stream_id: str) -> int:
    (row,) = rows(url, "streams", stream_id=stream_id)
    return int(row["committed_offset"])


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (a counter of the SDK) until it holds."""
    async with asyncio.timeout(30):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def start_server(port: int, database_url: str) -> Server:
    """A real server on a fixed gRPC port (tests.serving picks free ports; a restart needs the
    same one)."""
    settings = Settings.from_env(
        env={}, grpc_addr=f"127.0.0.1:{port}", http_addr="127.0.0.1:0", database_url=database_url
    )
    server = Server(settings)
    await server.start()
    return server


@contextlib.asynccontextmanager
async def server_on(port: int, database_url: str) -> AsyncIterator[Server]:
    server = await start_server(port, database_url)
    try:
        yield server
    finally:
        await server.stop(grace=5.0)


# -- streaming ---------------------------------------------------------------------------------


async def test_thousand_turns_are_stored_once_and_committed(database_url: str) -> None:
    async with running_server(database_url) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        async with StreamWriter(
            target, "exec-1k", max_batch_records=100, max_buffer_records=300
        ) as writer:
            offsets = []
            for n in range(1000):
                offsets.append(await writer.turn(**turn_fields(n, "exec-1k")))
                assert writer.pending <= 300  # the buffer bound holds: callers wait for room
            await writer.flush()
            assert offsets == list(range(1000))
            assert (writer.committed_offset, writer.acked, writer.rejected) == (1000, 1000, 0)
            # Acked means committed: the rows are there before the writer closes.
            assert stored_turns(database_url, "exec-1k") == list(range(1000))
        assert writer.reconnects == 0 and writer.resends == 0
        async with Client(target) as client:
            assert await client.get_stream("exec-1k") == 1000
            assert await client.get_stream("never-written") == 0
    assert committed_in_db(database_url, "exec-1k") == 1000


async def test_a_reopened_stream_continues_at_its_committed_offset(database_url: str) -> None:
    async with running_server(database_url) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        async with StreamWriter(target, "exec-cont", execution_id="exec-cont") as writer:
            assert (
                await writer.task(task_number=0, task_description="plan", status="completed") == 0
            )
        async with (
            Client(target) as client,
            client.stream("exec-cont", execution_id="exec-cont") as writer,
        ):
            assert await writer.task(task_number=1, task_description="act", status="failed") == 1
    assert {r["task_number"] for r in rows(database_url, "tasks")} == {0, 1}
    assert committed_in_db(database_url, "exec-cont") == 2


async def test_close_flushes_without_waiting_for_linger(database_url: str) -> None:
    async with running_server(database_url) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        loop = asyncio.get_running_loop()
        async with StreamWriter(target, "exec-close", linger=60.0) as writer:
            for n in range(50):
                await writer.turn(**turn_fields(n, "exec-close"))
            await writer.tool_call(
                execution_id="exec-close",
                tool_name="read_file",
                tool_use_id="toolu_1",
                started_at=T0,
                tool_input={"path": "app.py"},
                success=True,
            )
            await writer.execution(
                execution_id="exec-close", workflow_name="fixer", status="completed"
            )
            started = loop.time()
        assert loop.time() - started < 5.0
        assert writer.committed_offset == 52
    assert stored_turns(database_url, "exec-close") == list(range(50))
    (call,) = rows(database_url, "tool_calls", execution_id="exec-close")
    assert call["tool_input"] == {"path": "app.py"}
    (execution,) = rows(database_url, "executions", execution_id="exec-close")
    assert (execution["workflow_name"], execution["status"]) == ("fixer", "completed")


async def test_rejections_reach_the_callback_with_their_offsets(database_url: str) -> None:
    seen: list[Rejection] = []
    async with (
        running_server(database_url) as server,
        StreamWriter(
            f"127.0.0.1:{server.grpc_port}", "exec-rej", on_rejection=seen.append
        ) as writer,
    ):
        for n in range(20):
            fields = turn_fields(n, "exec-rej")
            if n in (3, 17):
                del fields["model"]  # invalid: model is required
            await writer.turn(**fields)
        await writer.flush()
        assert (writer.acked, writer.rejected) == (20, 2)
    assert [(r.offset, r.kind) for r in seen] == [(3, "turn"), (17, "turn")]
    assert writer.rejections == seen
    assert all(any(v.field.endswith("model") for v in r.violations) for r in seen)
    assert seen[0].record is not None and seen[0].record.turn.turn_number == 3
    assert stored_turns(database_url, "exec-rej") == [n for n in range(20) if n not in (3, 17)]
    dead = rows(database_url, "rejected_records", stream_id="exec-rej")
    assert sorted(r["stream_offset"] for r in dead) == [3, 17]
    assert committed_in_db(database_url, "exec-rej") == 20


async def test_server_restart_mid_stream_resumes_exactly_once(database_url: str) -> None:
    port = free_port()
    total = 4000
    first = await start_server(port, database_url)
    writer = StreamWriter(f"127.0.0.1:{port}", "exec-restart", max_batch_records=50)
    await writer.start()

    async def produce() -> None:
        for n in range(total):
            assert await writer.turn(**turn_fields(n, "exec-restart")) == n
            if n % 50 == 0:
                await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    try:
        await until(lambda: writer.acked >= 1000)
        # Graceful stop: the server drains (answers what it read, sends drain) while the writer
        # keeps writing; then nothing listens on the port for a moment.
        await first.stop(grace=5.0)
        assert writer.acked < total
        await asyncio.sleep(0.3)
        async with server_on(port, database_url):
            await producer
            await writer.close()
    finally:
        producer.cancel()
        await writer.close(flush=False)
    assert writer.reconnects >= 1
    assert (writer.committed_offset, writer.acked, writer.rejected) == (total, total, 0)
    assert stored_turns(database_url, "exec-restart") == list(range(total))
    assert committed_in_db(database_url, "exec-restart") == total


@pytest.mark.postgresql
async def test_writer_rides_out_a_database_outage() -> None:
    total = 3000
    with PgServer() as pg:  # a server of its own, to crash
        url = pg.create_database("outage")
        async with running_server(url) as server:
            writer = StreamWriter(f"127.0.0.1:{server.grpc_port}", "exec-db", max_batch_records=50)
            await writer.start()

            async def produce() -> None:
                for n in range(total):
                    await writer.turn(**turn_fields(n, "exec-db"))
                    if n % 50 == 0:
                        await asyncio.sleep(0)

            producer = asyncio.create_task(produce())
            try:
                await until(lambda: writer.acked >= 500)
                await asyncio.to_thread(pg.kill)  # the database crashes mid-stream
                await asyncio.sleep(1.0)
                assert writer.acked < total
                await asyncio.to_thread(pg.start)
                await producer
                await writer.close()
            finally:
                producer.cancel()
                await writer.close(flush=False)
        assert writer.reconnects >= 1
        assert (writer.committed_offset, writer.acked) == (total, total)
        assert stored_turns(url, "exec-db") == list(range(total))


async def test_an_idle_stream_stays_open_with_heartbeats(database_url: str) -> None:
    async with running_server(database_url, heartbeat_interval=0.1) as server:
        async with StreamWriter(f"127.0.0.1:{server.grpc_port}", "exec-idle") as writer:
            assert writer.limits.heartbeat_interval == pytest.approx(0.1)
            await writer.turn(**turn_fields(0, "exec-idle"))
            await writer.flush()
            await asyncio.sleep(1.0)  # both sides heartbeat every 0.1 s meanwhile
            await writer.turn(**turn_fields(1, "exec-idle"))
            await writer.flush()
        assert (writer.reconnects, writer.committed_offset) == (0, 2)
    assert stored_turns(database_url, "exec-idle") == [0, 1]


async def test_a_second_writer_fences_the_first(database_url: str) -> None:
    async with running_server(database_url) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        first = StreamWriter(target, "exec-fence")
        await first.start()
        for n in range(10):
            await first.turn(**turn_fields(n, "exec-fence"))
        await first.flush()
        async with StreamWriter(target, "exec-fence") as second:
            assert second.next_offset == 10  # it continues where the stream is
            with pytest.raises(StreamError) as info:
                await first.turn(**turn_fields(10, "exec-fence"))
                await first.flush()
            error = info.value
            assert error.code == grpc.StatusCode.ABORTED
            assert error.raw_status is not None and error.reason == "STREAM_FENCED"
            with pytest.raises(StreamError):  # every later call raises it too
                await first.turn(**turn_fields(11, "exec-fence"))
            await first.close()  # already raised to the caller: close does not raise again
            for n in range(10, 15):
                await second.turn(**turn_fields(n, "exec-fence"))
        assert second.committed_offset == 15
    assert stored_turns(database_url, "exec-fence") == list(range(15))


async def test_writer_gives_up_after_max_reconnect_time() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    writer = StreamWriter(nobody, "exec-none", max_reconnect_time=0.5)
    with pytest.raises(StreamError) as info:
        await writer.start()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "gave up reconnecting" in info.value.message


async def test_sync_stream_writer_works_from_a_plain_thread(database_url: str) -> None:
    async with running_server(database_url) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        outcome: dict[str, Any] = {}

        def worker() -> None:
            # A thread of its own, no event loop: what a non-async agent worker looks like.
            with SyncStreamWriter(target, "exec-sync", execution_id="exec-sync") as writer:
                offsets = [
                    writer.turn(turn_number=n, model=MODEL, started_at=T0 + dt.timedelta(seconds=n))
                    for n in range(200)
                ]
                writer.task(task_number=1, task_description="plan", status="in_progress")
                writer.flush()
                outcome.update(offsets=offsets, committed=writer.committed_offset)
            outcome["acked"] = writer.acked

        thread = threading.Thread(target=worker)
        thread.start()
        await asyncio.to_thread(thread.join, 60)
        assert not thread.is_alive()
    assert outcome == {"offsets": list(range(200)), "committed": 201, "acked": 201}
    assert stored_turns(database_url, "exec-sync") == list(range(200))
    (task,) = rows(database_url, "tasks", execution_id="exec-sync")
    assert task["status"] == "running"


# -- unary -------------------------------------------------------------------------------------


async def test_client_write_create_and_get_stream(database_url: str) -> None:
    async with (
        running_server(database_url) as server,
        Client(f"127.0.0.1:{server.grpc_port}") as client,
    ):
        response = await client.write(
            execution={"workflow_name": "fixer", "status": "running", "started_at": T0},
            turns=[
                turn_fields(1, "exec-w"),
                records_pb2.Turn(execution_id="exec-w", turn_number=2),  # no model: invalid
            ],
            tool_calls=[
                {"tool_name": "read_file", "tool_use_id": "toolu_9", "started_at": T0},
            ],
            tasks=[{"task_number": 1, "task_description": "plan", "status": "completed"}],
            execution_id="exec-w",
        )
        assert response.counts.total.created == 4
        assert response.counts.total.rejected == 1
        (rejection,) = response.rejections
        assert rejection.kind == records_pb2.RECORD_KIND_TURN and rejection.index == 1

        again = await client.write(turns=[turn_fields(1, "exec-w")])
        assert again.counts.total.unchanged == 1  # a retry stores nothing twice

        stored = await client.create_turn(**turn_fields(5, "exec-w"))
        assert stored.total_tokens == 115  # enriched: input + output
        with pytest.raises(RPCError) as info:
            await client.create_turn(execution_id="exec-w", turn_number=6, started_at=T0)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert any(v.field.endswith("model") for v in info.value.field_violations)
        assert client.retries == 0
    assert stored_turns(database_url, "exec-w") == [1, 5]


async def test_client_retries_until_the_server_is_up(database_url: str) -> None:
    port = free_port()
    async with Client(f"127.0.0.1:{port}", max_retry_time=0.3) as impatient:
        with pytest.raises(RPCError) as info:
            await impatient.get_stream("s")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    async with Client(f"127.0.0.1:{port}", max_retry_time=30) as client:
        write = asyncio.create_task(client.write(turns=[turn_fields(1, "exec-retry")]))
        await asyncio.sleep(0.5)
        assert not write.done()
        async with server_on(port, database_url):
            response = await write
    assert response.counts.total.created == 1
    assert client.retries >= 1
    assert stored_turns(database_url, "exec-retry") == [1]


async def test_sync_client_from_a_thread(database_url: str) -> None:
    async with running_server(database_url) as server:

        def work() -> tuple[int, int]:
            with SyncClient(f"127.0.0.1:{server.grpc_port}") as client:
                response = client.write(turns=[turn_fields(n, "exec-sc") for n in range(3)])
                turn = client.create_turn(**turn_fields(3, "exec-sc"))
                return response.counts.total.created, turn.turn_number

        assert await asyncio.to_thread(work) == (3, 3)
    assert stored_turns(database_url, "exec-sc") == [0, 1, 2, 3]
