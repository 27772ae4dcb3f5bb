"""Door: the gRPC IngestService. Translation only: the core's IngestCalls validate, enrich and
store (the same calls the native JSON routes make); this module maps their answers and
Failures to gRPC. Append and GetStream are handed to the streaming door."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import grpc

from turnstream.core.service import IngestCalls
from turnstream.doors.grpc_answer import answer
from turnstream.doors.grpc_guard import Malformed
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc


class Streaming(Protocol):
    """The streaming door (doors/grpc_stream.py): serves an Append call."""

    async def append(self, context: grpc.aio.ServicerContext[Any, Any], tenant: str) -> None: ...


TenantOf = Callable[[grpc.aio.ServicerContext[Any, Any]], str]


def default_tenant(_context: grpc.aio.ServicerContext[Any, Any]) -> str:
    # Until auth lands every record belongs to tenant "default".
    return "default"


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Write and Create* here; Append and GetStream are handed to the streaming door."""

    def __init__(
        self,
        calls: IngestCalls,
        streaming: Streaming,
        tenant_of: TenantOf = default_tenant,
    ):
        self.calls = calls
        self.streaming = streaming
        self.tenant_of = tenant_of

    async def malformed(
        self, method: str, bad: Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """A request whose bytes do not parse: kept whole as a dead letter (nothing is lost,
        not even bad input), then answered INVALID_ARGUMENT."""
        door = "grpc." + method.rsplit("/", 1)[-1]
        await answer(
            context,
            self.calls.malformed(
                self.tenant_of(context), door, bad.data, bad.message_name, bad.problem
            ),
        )

    async def Write(
        self, request: ingest_pb2.WriteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.WriteResponse:
        # The request was admitted (doors/grpc_guard.py) before it was parsed: bounded memory.
        return await answer(
            context, self.calls.write(request, self.tenant_of(context), "grpc.Write")
        )

    async def _create(
        self, kind: str, record: Any, context: grpc.aio.ServicerContext[Any, Any], door: str
    ) -> Any:
        return await answer(context, self.calls.create(kind, record, self.tenant_of(context), door))

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
        await self.streaming.append(context, self.tenant_of(context))

    async def GetStream(
        self, request: ingest_pb2.GetStreamRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.GetStreamResponse:
        return await answer(context, self.calls.get_stream(request, self.tenant_of(context)))
