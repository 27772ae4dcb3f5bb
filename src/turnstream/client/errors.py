"""SDK: the errors and rejections a caller sees. A failed call keeps its raw google.rpc.Status
(like Temporal's RPCError), so ErrorInfo, BadRequest and RetryInfo details stay readable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from turnstream.v1 import ingest_pb2, records_pb2

FieldViolation = error_details_pb2.BadRequest.FieldViolation

_DETAILS_KEY = "grpc-status-details-bin"
_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)

# Codes after which a call is retried: the server is away or its database is. Writes are
# idempotent (merge by key, offsets on streams), so a retry can never store anything twice.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        # The server cancelled the call (our own cancellations surface as CancelledError).
        grpc.StatusCode.CANCELLED,
    }
)


class RPCError(Exception):
    """A call failed with `code`. `raw_status` is the google.rpc.Status the server sent (None when
    it sent only a code and message); `details` unpacks its known detail messages.

    >>> try:
    ...     await client.create_turn(model="claude-sonnet-4-5")
    ... except RPCError as e:
    ...     e.code, [v.field for v in e.field_violations]
    (<StatusCode.INVALID_ARGUMENT: ...>, ['turn.execution_id', ...])
    """

    def __init__(
        self, code: grpc.StatusCode, message: str, raw_status: status_pb2.Status | None = None
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.raw_status = raw_status

    @property
    def details(self) -> list[Message]:
        """The status details this SDK knows (ErrorInfo, BadRequest, RetryInfo, ...)."""
        out: list[Message] = []
        if self.raw_status is None:
            return out
        for packed in self.raw_status.details:
            for cls in _DETAIL_TYPES:
                if packed.Is(cls.DESCRIPTOR):
                    detail = cls()
                    packed.Unpack(detail)
                    out.append(detail)
                    break
        return out

    @property
    def reason(self) -> str:
        """ErrorInfo.reason, e.g. "INVALID_RECORD"; empty when the server sent none."""
        for d in self.details:
            if isinstance(d, error_details_pb2.ErrorInfo):
                return str(d.reason)
        return ""

    @property
    def field_violations(self) -> list[Any]:
        """Every BadRequest.FieldViolation of the status."""
        return [
            v
            for d in self.details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]

    @property
    def retry_delay(self) -> float | None:
        """RetryInfo.retry_delay in seconds, when the server asked for one."""
        return retry_delay(self.raw_status)

    @property
    def retryable(self) -> bool:
        """Worth sending again. RESOURCE_EXHAUSTED only with a RetryInfo (a quota that refills):
        without one it is a limit the request itself exceeds (a message or batch too large),
        which the same request can only exceed again."""
        if self.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return self.retry_delay is not None
        return self.code in RETRYABLE

    @classmethod
    def from_aio(cls, exc: grpc.aio.AioRpcError) -> RPCError:
        return cls(exc.code(), exc.details() or "", raw_status(exc.trailing_metadata()))


class StreamError(RPCError):
    """A StreamWriter cannot go on: fenced by a newer writer of the same stream (ABORTED), a
    request the server refused (INVALID_ARGUMENT, RESOURCE_EXHAUSTED), no stream for longer than
    max_reconnect_time, or a batch failing without progress for longer than max_stall_time.
    Raised by the next call, `flush()` or `close()`; un-acked records stay in `unacked`, and
    `stuck_offsets` names the offsets of the oldest un-acked batch when there was one."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        raw_status: status_pb2.Status | None = None,
        *,
        unacked: Sequence[ingest_pb2.Record] = (),
        stuck_offsets: range | None = None,
    ) -> None:
        super().__init__(code, message, raw_status)
        self.unacked = list(unacked)
        self.stuck_offsets = stuck_offsets

    @classmethod
    def wrap(
        cls, error: RPCError, context: str = "", *, stuck_offsets: range | None = None
    ) -> StreamError:
        message = f"{context}: {error.message}" if context else error.message
        return cls(error.code, message, error.raw_status, stuck_offsets=stuck_offsets)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record the server refused, by its stream offset. It consumed its offset and is kept
    server-side as a dead letter (table rejected_records, with stream_id and stream_offset)."""

    offset: int
    kind: str
    violations: tuple[Any, ...]
    record: ingest_pb2.Record | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        what = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        return f"{self.kind} at offset {self.offset} rejected: {what}"


KIND_NAMES = {
    records_pb2.RECORD_KIND_TURN: "turn",
    records_pb2.RECORD_KIND_TOOL_CALL: "tool_call",
    records_pb2.RECORD_KIND_TASK: "task",
    records_pb2.RECORD_KIND_EXECUTION: "execution",
}


def raw_status(trailing_metadata: Any) -> status_pb2.Status | None:
    """The google.rpc.Status carried in `grpc-status-details-bin`, if any."""
    for key, value in trailing_metadata or ():
        if key == _DETAILS_KEY:
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer must not hide the real error
                return None
    return None


def retry_delay(status: status_pb2.Status | None) -> float | None:
    if status is None:
        return None
    for packed in status.details:
        if packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            packed.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None
