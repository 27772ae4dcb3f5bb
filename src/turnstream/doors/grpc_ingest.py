"""Door: the gRPC IngestService. Translation only: the core's IngestCalls validate, enrich and
store (the same calls the native JSON routes make); this module maps their answers and
Failures to gRPC. Append and GetStream are handed to the streaming door."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.rpc import status_pb2

from turnstream.core.auth import INGEST
from turnstream.core.service import IngestCalls
from turnstream.doors import balance
from turnstream.doors.grpc_answer import abort, answer
from turnstream.doors.grpc_auth import Authorize
from turnstream.doors.grpc_guard import Malformed
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc

# How long an Append turned away (REBALANCE) waits for its open message before the answer.
OPEN_WAIT = 1.0


class Streaming(Protocol):
    """The streaming door (doors/grpc_stream.py): serves an Append call."""

    async def append(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        tenant: str,
        recheck: Callable[[], Awaitable[status_pb2.Status | None]] | None = None,
    ) -> None: ...


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Write and Create* here; Append and GetStream are handed to the streaming door. Every
    RPC needs the `ingest` scope (GetStream too: it is how a writer resumes) and is bound to the
    key's tenant."""

    def __init__(
        self,
        calls: IngestCalls,
        streaming: Streaming,
        authorize: Authorize,
        recheck: Callable[[Any], Awaitable[status_pb2.Status | None]] | None = None,
        spread: balance.Balance | None = None,
    ):
        self.calls = calls
        self.spread = spread
        self.streaming = streaming
        self.authorize = authorize
        self.recheck = recheck

    async def tenant_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        return (await self.authorize(context, INGEST)).tenant

    async def malformed(
        self, method: str, bad: Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """A request whose bytes do not parse: kept whole as a dead letter (nothing is lost,
        not even bad input), then answered INVALID_ARGUMENT."""
        door = "grpc." + method.rsplit("/", 1)[-1]
        tenant = await self.tenant_of(context)  # an unknown caller leaves no dead letter
        await answer(
            context, self.calls.malformed(tenant, door, bad.data, bad.message_name, bad.problem)
        )

    async def Write(
        self, request: ingest_pb2.WriteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.WriteResponse:
        # The request was admitted (doors/grpc_guard.py) before it was parsed: bounded memory.
        tenant = await self.tenant_of(context)
        return await answer(context, self.calls.write(request, tenant, "grpc.Write"))

    async def _create(
        self, kind: str, record: Any, context: grpc.aio.ServicerContext[Any, Any], door: str
    ) -> Any:
        tenant = await self.tenant_of(context)
        return await answer(context, self.calls.create(kind, record, tenant, door))

    async def CreateTurn(
        self, request: ingest_pb2.CreateTurnRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.CreateTurnResponse:
        turn = await self._create("turn", request.turn, context, "grpc.CreateTurn")
        return ingest_pb2.CreateTurnResponse(turn=turn)

    async def CreateToolCall(
        self,
        request: ingest_pb2.CreateToolCallRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ingest_pb2.CreateToolCallResponse:
        call = await self._create("tool_call", request.tool_call, context, "grpc.CreateToolCall")
        return ingest_pb2.CreateToolCallResponse(tool_call=call)

    async def CreateTask(
        self, request: ingest_pb2.CreateTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.CreateTaskResponse:
        task = await self._create("task", request.task, context, "grpc.CreateTask")
        return ingest_pb2.CreateTaskResponse(task=task)

    async def Append(  # type: ignore[override]
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        # Coroutine style (context.read / context.write): reading and answering run as separate
        # tasks in the streaming door, which an async generator could not do.
        # Checked at open; while the call lasts the key is re-checked (through the cache), and a
        # key revoked or expired meanwhile ends the stream UNAUTHENTICATED within seconds.
        principal = await self.authorize(context, INGEST)
        recheck = None
        if self.recheck is not None:
            recheck = functools.partial(self.recheck, principal)
        if self.spread is None:
            await self.streaming.append(context, principal.tenant, recheck)
            return
        # `serve --workers N`: an open may be turned away to even the streams out (balance.py).
        refused = self.spread.admit(balance.attempt_of(context.invocation_metadata()))
        if refused is not None:
            # Read the open first: a status sent while the client is still writing it reaches
            # grpc's Python client as INTERNAL ("Internal error from Core"), not as REBALANCE.
            # A client that sends nothing is not waited for long.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(context.read(), OPEN_WAIT)
            await abort(context, refused)
        try:
            await self.streaming.append(context, principal.tenant, recheck)
        finally:
            self.spread.leave()

    async def GetStream(
        self, request: ingest_pb2.GetStreamRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.GetStreamResponse:
        tenant = await self.tenant_of(context)
        return await answer(context, self.calls.get_stream(request, tenant))
