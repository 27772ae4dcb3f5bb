"""Door: the gRPC IngestService unary methods (Write, Create*). Translation only: the pipeline
validates and enriches, the writer stores; this module maps results and errors to gRPC."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from turnstream import errors
from turnstream.core import deadletter
from turnstream.core.batch import BatchOutcome, KindCounts, WriteBatch
from turnstream.core.pipeline import (
    KINDS,
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

# A large Write is prepared and stored this many records at a time: the event loop is never held
# for more than a few milliseconds (other callers' latency), rows exist for one chunk at a time
# (memory), and each chunk commits in its own transaction, interleaved with other callers'. A
# Write was never atomic (partial success), and a retry after a failure half-way merges.
CHUNK_RECORDS = 500
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


def _counts(k: KindCounts, rejected: int) -> ingest_pb2.RecordCounts:
    return ingest_pb2.RecordCounts(
        created=k.created, updated=k.updated, unchanged=k.unchanged, rejected=rejected
    )


def write_response(prepared: Prepared, outcome: BatchOutcome) -> ingest_pb2.WriteResponse:
    rejected = {kind: 0 for kind in KINDS}
    enum_to_kind = {k.enum: name for name, k in KINDS.items()}
    for r in prepared.rejections:
        rejected[enum_to_kind[r.kind]] += 1
    per = {kind: _counts(outcome.counts[kind], rejected[kind]) for kind in KINDS}
    total = ingest_pb2.RecordCounts(
        created=sum(c.created for c in per.values()),
        updated=sum(c.updated for c in per.values()),
        unchanged=sum(c.unchanged for c in per.values()),
        rejected=sum(c.rejected for c in per.values()),
    )
    ids = {item.message.execution_id for item in prepared.accepted}
    return ingest_pb2.WriteResponse(
        counts=ingest_pb2.WriteCounts(
            total=total,
            turns=per["turn"],
            tool_calls=per["tool_call"],
            tasks=per["task"],
            executions=per["execution"],
            unpriced_turns=prepared.unpriced,
        ),
        rejections=sorted(prepared.rejections, key=lambda r: (r.kind, r.index)),
        execution_id=ids.pop() if len(ids) == 1 else "",
    )


def _add(total: BatchOutcome, part: BatchOutcome) -> None:
    for kind, counts in part.counts.items():
        into = total.counts[kind]
        into.created += counts.created
        into.updated += counts.updated
        into.unchanged += counts.unchanged


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
        tenant = self.tenant_of(context)
        door = "grpc." + method.rsplit("/", 1)[-1]
        violation = FieldViolation(field="", description=bad.problem, reason="MALFORMED_REQUEST")
        batch = WriteBatch(tenant, door=door)
        batch.rejected.append(
            deadletter.unparsed(
                tenant_id=tenant,
                door=door,
                kind="request",
                body=bad.data,
                violations=[violation],
                received_at=self.pipeline.clock(),
            )
        )
        await store(self.writer, Prepared(batch), context)
        await abort(context, errors.malformed(bad.message_name, bad.problem))

    async def Write(
        self, request: ingest_pb2.WriteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.WriteResponse:
        count = count_write_items(request)
        if count > self.max_request_records:
            await abort(
                context, errors.too_large("records", self.max_request_records, count, "records")
            )
        tenant = self.tenant_of(context)
        # The request was admitted (doors/grpc_guard.py) before it was parsed: bounded memory.
        total, outcome = Prepared(WriteBatch(tenant)), BatchOutcome()
        items = iter_write_items(request)
        for _ in range(0, max(count, 1), CHUNK_RECORDS):
            chunk = list(itertools.islice(items, CHUNK_RECORDS))
            prepared = self.pipeline.prepare(tenant, "grpc.Write", chunk)
            part = await store(self.writer, prepared, context)
            answer_failures(prepared, part)
            _add(outcome, part)
            total.rejections += prepared.rejections
            total.accepted += prepared.accepted
            total.unpriced += prepared.unpriced
        return write_response(total, outcome)

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
