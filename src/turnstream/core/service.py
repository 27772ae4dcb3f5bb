"""Core: the IngestService calls, transport-neutral. The gRPC door and the native JSON routes
both call these and only encode what comes back: a response message, or a `Failure` carrying
the google.rpc.Status to answer with (built from the one error table in turnstream.errors)."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

from google.rpc import status_pb2

from turnstream import errors
from turnstream.core import ingest
from turnstream.core.pipeline import (
    FieldViolation,
    Item,
    Pipeline,
    answer_failures,
    count_write_items,
    iter_write_items,
)
from turnstream.core.ports import Failure, StoreUnavailable
from turnstream.v1 import ingest_pb2

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_RECORDS = 100_000
MAX_STREAM_ID = 256

# (tenant, stream_id) -> the stream's committed offset, None when it was never opened.
StreamOffset = Callable[[str, str], Awaitable[int | None]]


async def _no_streams(_tenant: str, _stream_id: str) -> int | None:
    return None


def stream_id_problem(stream_id: str, field: str) -> status_pb2.Status | None:
    """None when valid, else the INVALID_ARGUMENT status naming `field`."""
    if not stream_id:
        return errors.invalid_request(field, "stream_id is required", "REQUIRED")
    if len(stream_id) > MAX_STREAM_ID:
        return errors.invalid_request(
            field,
            f"stream_id has {len(stream_id)} characters, more than {MAX_STREAM_ID}",
            "TOO_LONG",
        )
    if any(unicodedata.category(c) == "Cc" for c in stream_id):
        return errors.invalid_request(
            field, "stream_id must not contain control characters", "INVALID_CHARACTERS"
        )
    return None


@asynccontextmanager
async def failures(what: str) -> AsyncIterator[None]:
    """Domain errors and surprises as Failures: the store down is UNAVAILABLE + RetryInfo, an
    unexpected error is INTERNAL naming the incident id the log carries."""
    try:
        yield
    except Failure:
        raise
    except StoreUnavailable as exc:
        raise Failure(errors.unavailable(str(exc), exc.retry_after)) from None
    except Exception:
        raise Failure(errors.unexpected(log, what)) from None


class IngestCalls:
    """Write, Create* and the answer to a malformed request, for every door."""

    def __init__(
        self,
        pipeline: Pipeline,
        sink: ingest.Sink,
        max_request_records: int = DEFAULT_MAX_REQUEST_RECORDS,
        stream_offset: StreamOffset = _no_streams,
    ) -> None:
        self.pipeline = pipeline
        self.sink = sink
        self.max_request_records = max_request_records
        self.stream_offset = stream_offset

    async def get_stream(
        self, request: ingest_pb2.GetStreamRequest, tenant_id: str
    ) -> ingest_pb2.GetStreamResponse:
        """A stream's committed offset (0 for a stream never opened)."""
        problem = stream_id_problem(request.stream_id, "stream_id")
        if problem is not None:
            raise Failure(problem)
        async with failures("GetStream"):
            offset = await self.stream_offset(tenant_id, request.stream_id)
        return ingest_pb2.GetStreamResponse(
            stream_id=request.stream_id, committed_offset=offset or 0
        )

    async def write(
        self, request: ingest_pb2.WriteRequest, tenant_id: str, door: str
    ) -> ingest_pb2.WriteResponse:
        """Partial success: valid records stored, each invalid one answered and dead-lettered."""
        count = count_write_items(request)
        if count > self.max_request_records:
            raise Failure(errors.too_large("records", self.max_request_records, count, "records"))
        async with failures(f"{door} with {count} records"):
            prepared, outcome = await ingest.write(
                self.sink, self.pipeline, tenant_id, door, iter_write_items(request), count
            )
        return ingest.write_response(prepared, outcome)

    async def create(self, kind: str, record: Any, tenant_id: str, door: str) -> Any:
        """One record; answers it enriched, or fails INVALID_ARGUMENT after its dead letter is
        committed (nothing is lost)."""
        async with failures(f"{door}"):
            prepared = self.pipeline.prepare(tenant_id, door, [Item(kind, record, kind, 0)])
            answer_failures(prepared, await self.sink.submit(prepared.batch))
        if prepared.rejections:
            raise Failure(errors.invalid_record(kind, prepared.rejections[0].violations))
        return record

    async def malformed(
        self, tenant_id: str, door: str, data: bytes, message_name: str, problem: str
    ) -> NoReturn:
        """Bytes that are not the request message: kept whole, then INVALID_ARGUMENT."""
        violation = FieldViolation(field="", description=problem, reason="MALFORMED_REQUEST")
        async with failures(f"{door} (keeping a malformed request)"):
            await ingest.keep_unparsed(self.sink, self.pipeline, tenant_id, door, data, [violation])
        raise Failure(errors.malformed(message_name, problem))
