"""SDK: Client, the asyncio client of the unary IngestService methods (Write, Create*, GetStream).
Every call is retried on UNAVAILABLE and the like with jittered backoff: the server merges
records by key, so a retried write never stores anything twice."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import grpc

from turnstream.client.backoff import Backoff
from turnstream.client.channel import channel_for
from turnstream.client.convert import build
from turnstream.client.credentials import with_api_key
from turnstream.client.errors import RPCError
from turnstream.client.stream import StreamWriter
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc, records_pb2

RecordInput = Any  # a message of the kind, a mapping of its fields, or None


def write_request(
    execution: RecordInput,
    turns: Iterable[RecordInput],
    tool_calls: Iterable[RecordInput],
    tasks: Iterable[RecordInput],
    execution_id: str,
) -> ingest_pb2.WriteRequest:
    request = ingest_pb2.WriteRequest(
        execution_id=execution_id,
        turns=[build(records_pb2.Turn, t) for t in turns],
        tool_calls=[build(records_pb2.ToolCall, c) for c in tool_calls],
        tasks=[build(records_pb2.Task, t) for t in tasks],
    )
    if execution is not None:
        request.execution.CopyFrom(build(records_pb2.Execution, execution))
    return request


class Client:
    """Unary calls to a turnstream server; use as `async with Client(target) as client:`.

    >>> async with Client("127.0.0.1:50051") as client:
    ...     response = await client.write(
    ...         turns=[{"execution_id": "e1", "turn_number": 1, "model": "claude-sonnet-4-5",
    ...                 "started_at": datetime.now(UTC)}],
    ...     )
    ...     response.counts.total.created, list(response.rejections)

    Failures raise RPCError (code, message, raw google.rpc.Status with BadRequest details);
    retryable ones are retried for up to `max_retry_time` seconds (None: forever), each
    attempt with a deadline of `timeout` seconds.
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
        self.target = target
        self._channel_options = channel_options
        self._metadata = with_api_key(metadata, api_key)
        self._credentials = credentials
        self._timeout = timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._max_retry_time = max_retry_time
        self._rng = rng or random.Random()
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self.retries = 0
        """Attempts retried after a retryable failure, over the client's life."""

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def write(
        self,
        execution: RecordInput = None,
        turns: Iterable[RecordInput] = (),
        tool_calls: Iterable[RecordInput] = (),
        tasks: Iterable[RecordInput] = (),
        *,
        execution_id: str = "",
    ) -> ingest_pb2.WriteResponse:
        """Store records with partial success: invalid ones come back in `rejections` (by
        index, with field violations) and are kept server-side as dead letters."""
        request = write_request(execution, turns, tool_calls, tasks, execution_id)
        response: ingest_pb2.WriteResponse = await self._call("Write", request)
        return response

    async def create_turn(self, turn: RecordInput = None, /, **fields: Any) -> records_pb2.Turn:
        """Store one turn; answer it enriched (costs, AEM). INVALID_ARGUMENT raises RPCError."""
        request = ingest_pb2.CreateTurnRequest(turn=build(records_pb2.Turn, turn, **fields))
        response: ingest_pb2.CreateTurnResponse = await self._call("CreateTurn", request)
        return response.turn

    async def create_tool_call(
        self, tool_call: RecordInput = None, /, **fields: Any
    ) -> records_pb2.ToolCall:
        """Store one tool call; answer it enriched."""
        request = ingest_pb2.CreateToolCallRequest(
            tool_call=build(records_pb2.ToolCall, tool_call, **fields)
        )
        response: ingest_pb2.CreateToolCallResponse = await self._call("CreateToolCall", request)
        return response.tool_call

    async def create_task(self, task: RecordInput = None, /, **fields: Any) -> records_pb2.Task:
        """Store one task; answer it enriched."""
        request = ingest_pb2.CreateTaskRequest(task=build(records_pb2.Task, task, **fields))
        response: ingest_pb2.CreateTaskResponse = await self._call("CreateTask", request)
        return response.task

    async def get_stream(self, stream_id: str) -> int:
        """A stream's committed offset (0 for a stream never written)."""
        request = ingest_pb2.GetStreamRequest(stream_id=stream_id)
        response: ingest_pb2.GetStreamResponse = await self._call("GetStream", request)
        return response.committed_offset

    def stream(self, stream_id: str, **options: Any) -> StreamWriter:
        """A StreamWriter to the same server, with this client's channel settings."""
        options.setdefault("channel_options", self._channel_options)
        options.setdefault("metadata", self._metadata)
        options.setdefault("credentials", self._credentials)
        return StreamWriter(self.target, stream_id, **options)

    async def _call(self, method: str, request: Any) -> Any:
        if self._stub is None:
            self._channel = channel_for(self.target, self._channel_options, self._credentials)
            self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
        call: Callable[..., Awaitable[Any]] = getattr(self._stub, method)
        backoff = Backoff(self._initial_backoff, self._max_backoff, self._rng)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                return await call(request, metadata=self._metadata, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                error = RPCError.from_aio(exc)
                delay = retry_delay(error, backoff, loop.time() - started, self._max_retry_time)
                if delay is None:
                    raise error from exc
            self.retries += 1
            await asyncio.sleep(delay)


def retry_delay(
    error: RPCError, backoff: Backoff, elapsed: float, max_retry_time: float | None
) -> float | None:
    """How long to wait before retrying after `error`, or None to give up."""
    if not error.retryable:
        return None
    delay = backoff.next(error.retry_delay)
    if max_retry_time is not None and elapsed + delay > max_retry_time:
        return None
    return delay
