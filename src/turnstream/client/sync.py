"""SDK: blocking facades for workers that are not async. SyncStreamWriter runs a StreamWriter on
an event loop in a background thread; SyncClient makes unary calls on a blocking channel."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from turnstream.client.backoff import Backoff
from turnstream.client.channel import channel_options as merged_channel_options
from turnstream.client.convert import build
from turnstream.client.credentials import with_api_key
from turnstream.client.errors import Rejection, RPCError, StreamError, raw_status
from turnstream.client.stream import StreamWriter
from turnstream.client.unary import RecordInput, retry_delay, write_request
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc, records_pb2

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever on a daemon thread; `run` blocks on one coroutine."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "a blocking SyncStreamWriter call from its own loop (e.g. inside on_rejection)"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncStreamWriter:
    """StreamWriter for threads: the same options and methods, blocking.

    >>> with SyncStreamWriter("127.0.0.1:50051", "exec-42", execution_id="exec-42") as w:
    ...     w.turn(turn_number=1, model="claude-sonnet-4-5", started_at=datetime.now(UTC))
    ...     w.flush()

    `on_rejection` runs on the writer's background thread and must not call the writer.
    """

    def __init__(self, target: str, stream_id: str, **options: Any) -> None:
        self._thread = _LoopThread(f"turnstream-stream-{stream_id}")
        try:
            self._writer = self._thread.run(_new_writer(target, stream_id, options))
        except BaseException:
            self._thread.stop()
            raise

    def __enter__(self) -> SyncStreamWriter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._thread.run(self._writer.__aexit__(exc_type, exc, tb))
        finally:
            self._thread.stop()

    def start(self) -> None:
        """Open the stream (retrying like any reconnect); `with` calls it."""
        try:
            self._thread.run(self._writer.start())
        except BaseException:
            self._thread.stop()
            raise

    def turn(self, turn: RecordInput = None, /, **fields: Any) -> int:
        """Append a Turn; return its offset (waits while the buffer is full)."""
        return self._thread.run(self._writer.append("turn", turn, **fields))

    def tool_call(self, tool_call: RecordInput = None, /, **fields: Any) -> int:
        """Append a ToolCall; return its offset."""
        return self._thread.run(self._writer.append("tool_call", tool_call, **fields))

    def task(self, task: RecordInput = None, /, **fields: Any) -> int:
        """Append a Task; return its offset."""
        return self._thread.run(self._writer.append("task", task, **fields))

    def execution(self, execution: RecordInput = None, /, **fields: Any) -> int:
        """Append an Execution; return its offset."""
        return self._thread.run(self._writer.append("execution", execution, **fields))

    def flush(self) -> None:
        """Return when every record appended so far is acked."""
        self._thread.run(self._writer.flush())

    def close(self, *, flush: bool = True) -> None:
        """Flush (unless flush=False), end the stream, stop the background thread."""
        try:
            self._thread.run(self._writer.close(flush=flush))
        finally:
            self._thread.stop()

    @property
    def stream_id(self) -> str:
        return self._writer.stream_id

    @property
    def acked(self) -> int:
        return self._writer.acked

    @property
    def rejected(self) -> int:
        return self._writer.rejected

    @property
    def resends(self) -> int:
        return self._writer.resends

    @property
    def reconnects(self) -> int:
        return self._writer.reconnects

    @property
    def committed_offset(self) -> int:
        return self._writer.committed_offset

    @property
    def next_offset(self) -> int:
        return self._writer.next_offset

    @property
    def rejections(self) -> list[Rejection]:
        return list(self._writer.rejections)

    @property
    def error(self) -> StreamError | None:
        return self._writer.error


async def _new_writer(target: str, stream_id: str, options: dict[str, Any]) -> StreamWriter:
    # Built on the loop thread, so every asyncio object it makes belongs to that loop.
    return StreamWriter(target, stream_id, **options)


class SyncClient:
    """Client with blocking calls, for code without an event loop.

    >>> with SyncClient("127.0.0.1:50051") as client:
    ...     client.write(turns=[turn]).counts.total.created
    """

    def __init__(
        self,
        target: str,
        *,
        channel_options: Sequence[tuple[str, Any]] | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = 30.0,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_retry_time: float | None = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        options = merged_channel_options(channel_options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
        self.target = target
        self._metadata = with_api_key(metadata, api_key)
        self._timeout = timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._max_retry_time = max_retry_time
        self._rng = rng or random.Random()
        self.retries = 0

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def write(
        self,
        execution: RecordInput = None,
        turns: Iterable[RecordInput] = (),
        tool_calls: Iterable[RecordInput] = (),
        tasks: Iterable[RecordInput] = (),
        *,
        execution_id: str = "",
    ) -> ingest_pb2.WriteResponse:
        """Store records with partial success (see Client.write)."""
        request = write_request(execution, turns, tool_calls, tasks, execution_id)
        response: ingest_pb2.WriteResponse = self._call("Write", request)
        return response

    def create_turn(self, turn: RecordInput = None, /, **fields: Any) -> records_pb2.Turn:
        """Store one turn; answer it enriched."""
        request = ingest_pb2.CreateTurnRequest(turn=build(records_pb2.Turn, turn, **fields))
        response: ingest_pb2.CreateTurnResponse = self._call("CreateTurn", request)
        return response.turn

    def create_tool_call(
        self, tool_call: RecordInput = None, /, **fields: Any
    ) -> records_pb2.ToolCall:
        """Store one tool call; answer it enriched."""
        request = ingest_pb2.CreateToolCallRequest(
            tool_call=build(records_pb2.ToolCall, tool_call, **fields)
        )
        response: ingest_pb2.CreateToolCallResponse = self._call("CreateToolCall", request)
        return response.tool_call

    def create_task(self, task: RecordInput = None, /, **fields: Any) -> records_pb2.Task:
        """Store one task; answer it enriched."""
        request = ingest_pb2.CreateTaskRequest(task=build(records_pb2.Task, task, **fields))
        response: ingest_pb2.CreateTaskResponse = self._call("CreateTask", request)
        return response.task

    def get_stream(self, stream_id: str) -> int:
        """A stream's committed offset (0 for a stream never written)."""
        request = ingest_pb2.GetStreamRequest(stream_id=stream_id)
        response: ingest_pb2.GetStreamResponse = self._call("GetStream", request)
        return response.committed_offset

    def _call(self, method: str, request: Any) -> Any:
        call = getattr(self._stub, method)
        backoff = Backoff(self._initial_backoff, self._max_backoff, self._rng)
        started = time.monotonic()
        while True:
            try:
                return call(request, metadata=self._metadata, timeout=self._timeout)
            except grpc.RpcError as exc:
                status = raw_status(exc.trailing_metadata())
                error = RPCError(exc.code(), exc.details() or "", status)
                elapsed = time.monotonic() - started
                delay = retry_delay(error, backoff, elapsed, self._max_retry_time)
                if delay is None:
                    raise error from exc
            self.retries += 1
            time.sleep(delay)
