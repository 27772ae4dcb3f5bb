"""Door: the gRPC IngestService unary methods (Write, Create*). Translation only: the pipeline
validates and enriches, the writer stores; this module maps results and errors to gRPC."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from turnstream import errors
from turnstream.core import ingest
from turnstream.core.batch import BatchOutcome
from turnstream.core.pipeline import (
    FieldViolation,
    Item,
    Pipeline,
    Prepared,
    answer_failures,
    count_write_items,
    iter_write_items,
)
from turnstream.doors.grpc_guard import Malformed
from turnstream.store.writer import StoreUnavailable, Writer
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc

if TYPE_CHECKING:  # grpc_stream imports abort() from here
    from turnstream.doors.grpc_stream import StreamDoor

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_RECORDS = 100_000

TenantOf = Callable[[grpc.aio.ServicerContext[Any, Any]], str]


def default_tenant(_context: grpc.aio.ServicerContext[Any, Any]) -> str:
    # Until auth lands every record belongs to tenant "default".
    return "default"


async def abort(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> NoReturn:
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # abort_with_status always raises


async def store(
    writer: Writer, prepared: Prepared, context: grpc.aio.ServicerContext[Any, Any]
) -> BatchOutcome:
    """Hand the batch to the writer; database trouble becomes UNAVAILABLE + RetryInfo."""
    try:
        return await writer.submit(prepared.batch)
    except StoreUnavailable as exc:
        await abort(context, errors.unavailable(str(exc), exc.retry_after))
    except Exception:
        await abort(context, errors.unexpected(log, "storing a batch"))


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Write and Create* here; Append and GetStream are handed to the streaming door."""

    def __init__(
        self,
        pipeline: Pipeline,
        writer: Writer,
        streaming: StreamDoor,
        tenant_of: TenantOf = default_tenant,
        *,
        max_request_records: int = DEFAULT_MAX_REQUEST_RECORDS,
    ):
        self.pipeline = pipeline
        self.writer = writer
        self.streaming = streaming
        self.tenant_of = tenant_of
        self.max_request_records = max_request_records

    async def malformed(
        self, method: str, bad: Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """A request whose bytes do not parse: kept whole as a dead letter (nothing is lost,
        not even bad input), then answered INVALID_ARGUMENT."""
        violation = FieldViolation(field="", description=bad.problem, reason="MALFORMED_REQUEST")
        try:
            await ingest.keep_unparsed(
                self.writer,
                self.pipeline,
                self.tenant_of(context),
                "grpc." + method.rsplit("/", 1)[-1],
                bad.data,
                [violation],
            )
        except StoreUnavailable as exc:
            await abort(context, errors.unavailable(str(exc), exc.retry_after))
        await abort(context, errors.malformed(bad.message_name, bad.problem))

    async def Write(
        self, request: ingest_pb2.WriteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.WriteResponse:
        count = count_write_items(request)
        if count > self.max_request_records:
            await abort(
                context, errors.too_large("records", self.max_request_records, count, "records")
            )
        # The request was admitted (doors/grpc_guard.py) before it was parsed: bounded memory.
        try:
            prepared, outcome = await ingest.write(
                self.writer,
                self.pipeline,
                self.tenant_of(context),
                "grpc.Write",
                iter_write_items(request),
                count,
            )
        except StoreUnavailable as exc:
            await abort(context, errors.unavailable(str(exc), exc.retry_after))
        except Exception:
            await abort(context, errors.unexpected(log, "storing a batch"))
        return ingest.write_response(prepared, outcome)

    async def _create(
        self, kind: str, record: Any, context: grpc.aio.ServicerContext[Any, Any], door: str
    ) -> Any:
        prepared = self.pipeline.prepare(
            self.tenant_of(context), door, [Item(kind, record, kind, 0)]
        )
        # The dead letter is stored before the client hears INVALID_ARGUMENT: nothing is lost.
        answer_failures(prepared, await store(self.writer, prepared, context))
        if prepared.rejections:
            await abort(context, errors.invalid_record(kind, prepared.rejections[0].violations))
        return record

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
        return await self.streaming.get_stream(request, context, self.tenant_of(context))
