"""Door: the rules of an Append call that need no call state (docs/streaming.md): where a batch
stands against the stream's offset, its limits, the statuses that end a call, and the dead letter
of a message that does not parse. stream_session.py sequences them; these only decide and build."""

from __future__ import annotations

import datetime as dt

from google.rpc import code_pb2, status_pb2

from turnstream import errors
from turnstream.config import Settings
from turnstream.core import deadletter
from turnstream.core.batch import WriteBatch
from turnstream.core.pipeline import FieldViolation
from turnstream.doors.grpc_guard import Malformed
from turnstream.v1 import ingest_pb2

DOOR = "grpc.Append"
APPENDED = ingest_pb2.APPEND_OUTCOME_APPENDED
ALREADY_STORED = ingest_pb2.APPEND_OUTCOME_ALREADY_STORED
GAP = ingest_pb2.APPEND_OUTCOME_GAP


def placement(
    offset: int, count: int, next_offset: int
) -> ingest_pb2.AppendOutcome.ValueType | None:
    """What becomes of `count` records at `offset` when the stream expects `next_offset`: the
    outcome to answer, or None when the batch straddles it (the call ends)."""
    if offset == next_offset:
        return APPENDED
    if offset + count <= next_offset:
        # Committed, or covered by a batch in flight: answered in order, so after it committed.
        return ALREADY_STORED
    if offset > next_offset:
        return GAP
    return None


def check_batch(batch: ingest_pb2.AppendBatch, settings: Settings) -> status_pb2.Status | None:
    """None when the batch is within the limits announced in `opened`, else why not."""
    count = len(batch.records)
    if count == 0:
        return errors.invalid_request(
            "batch.records", "a batch must carry at least one record", "EMPTY_BATCH"
        )
    if count > settings.max_batch_records:
        return errors.invalid_request(
            "batch.records",
            f"the batch has {count} records, more than max_batch_records "
            f"({settings.max_batch_records})",
            "BATCH_TOO_LARGE",
        )
    # The encoded size of AppendRequest.batch's payload: what a client in any language can
    # measure by encoding the AppendBatch message (docs/streaming.md says how).
    size = batch.ByteSize()
    if size > settings.max_batch_bytes:
        return errors.invalid_request(
            "batch",
            f"the batch is {size} bytes, more than max_batch_bytes ({settings.max_batch_bytes})",
            "BATCH_TOO_LARGE",
        )
    if batch.offset < 0:
        return errors.invalid_request(
            "batch.offset", "offsets start at 0; a batch offset cannot be negative", "INVALID"
        )
    return None


def straddles(offset: int, count: int, next_offset: int) -> status_pb2.Status:
    return errors.invalid_request(
        "batch.offset",
        f"the batch at offset {offset} with {count} records straddles the stream's offset "
        f"{next_offset}: send batches that start at offset {next_offset}",
        "OFFSET_STRADDLES",
    )


def unexpected_message(kind: str | None) -> status_pb2.Status:
    """A message other than a batch or a heartbeat after the open."""
    if kind == "open":
        return errors.invalid_request(
            "open", "the stream is already open; open only comes first", "ALREADY_OPEN"
        )
    return errors.invalid_request("kind", "set one of open, batch, heartbeat", "REQUIRED")


def open_required() -> status_pb2.Status:
    return errors.invalid_request(
        "open", "the first message of an Append call must be open", "OPEN_REQUIRED"
    )


def open_timeout(seconds: float) -> status_pb2.Status:
    """An Append call that sent no `open` in time. DEADLINE_EXCEEDED rather than
    INVALID_ARGUMENT: nothing the client sent was wrong, a deadline of ours ran out, and a
    client whose open was held up (a stalled network) may simply try again, as the SDK does. No
    RetryInfo: a client that never opens gains nothing from being told when to retry."""
    return errors.status(
        code_pb2.DEADLINE_EXCEEDED,
        f"no open arrived within {seconds:g} s of the call starting; send open first",
        "OPEN_TIMEOUT",
        metadata={"open_timeout_seconds": f"{seconds:g}"},
    )


def shutting_down() -> status_pb2.Status:
    """UNAVAILABLE for a call the server cannot take or finish because it is going away."""
    return errors.status(
        code_pb2.UNAVAILABLE,
        "the server is shutting down; reconnect and resume",
        "SHUTTING_DOWN",
        retry_after=1.0,
    )


def fenced(stream_id: str) -> status_pb2.Status:
    return errors.status(
        code_pb2.ABORTED,
        f"stream {stream_id!r} was opened by a newer connection",
        "STREAM_FENCED",
        metadata={"stream_id": stream_id},
    )


def conflict(stream_id: str, committed_offset: int) -> status_pb2.Status:
    """The stream moved under this call's own epoch (should not happen): resume from where the
    database says it is."""
    return errors.status(
        code_pb2.ABORTED,
        f"stream {stream_id!r} is at committed offset {committed_offset}; "
        "reopen it and resume from there",
        "STREAM_CONFLICT",
        metadata={"stream_id": stream_id, "committed_offset": str(committed_offset)},
    )


def malformed_dead_letter(
    bad: Malformed, tenant: str, stream_id: str, received_at: dt.datetime
) -> WriteBatch:
    """A batch holding only the dead letter of a message that did not parse: its exact bytes,
    the parser's sentence, and the stream it came on (none before the open)."""
    violation = FieldViolation(field="", description=bad.problem, reason="MALFORMED_REQUEST")
    batch = WriteBatch(tenant, door=DOOR)
    batch.rejected.append(
        deadletter.unparsed(
            tenant_id=tenant,
            door=DOOR,
            kind="append_request",
            body=bad.data,
            violations=[violation],
            received_at=received_at,
            stream_id=stream_id or None,
        )
    )
    return batch


def by_index(rejections: list[ingest_pb2.RecordRejection]) -> list[ingest_pb2.RecordRejection]:
    """An ack's rejections in the order of the batch's records."""
    return sorted(rejections, key=lambda r: r.index)
