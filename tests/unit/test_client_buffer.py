"""The SDK's pure parts, without a server: offsets, the un-acked buffer and its batches, what
acks, gaps and resumes do to it, keyword arguments -> records, backoff, and error details."""

from __future__ import annotations

import datetime as dt
import random

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from turnstream.client.backoff import Backoff
from turnstream.client.convert import build, to_record
from turnstream.client.errors import RPCError, raw_status
from turnstream.client.outbox import BATCH_OVERHEAD, Limits, Outbox, ProtocolError, wire_size
from turnstream.v1 import ingest_pb2, records_pb2

T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)
FieldViolation = error_details_pb2.BadRequest.FieldViolation


def record(n: int, preview: str = "") -> ingest_pb2.Record:
    turn = records_pb2.Turn(
        execution_id="e1", turn_number=n, model="claude-sonnet-4-5", response_preview=preview
    )
    turn.started_at.FromDatetime(T0)
    return ingest_pb2.Record(turn=turn)


def filled(count: int, committed: int = 0) -> Outbox:
    box = Outbox(committed)
    for i in range(count):
        box.append(record(committed + i))
    return box


def ack(
    offset: int,
    count: int,
    outcome: int = ingest_pb2.APPEND_OUTCOME_APPENDED,
    committed: int | None = None,
    rejections: list[ingest_pb2.RecordRejection] | None = None,
) -> ingest_pb2.BatchAck:
    return ingest_pb2.BatchAck(
        offset=offset,
        record_count=count,
        outcome=outcome,  # type: ignore[arg-type]
        committed_offset=offset + count if committed is None else committed,
        rejections=rejections or [],
    )


def numbers(records: list[ingest_pb2.Record]) -> list[int]:
    return [r.turn.turn_number for r in records]


# -- offsets and batches ---------------------------------------------------------------------


def test_each_record_takes_the_next_offset_from_the_committed_offset() -> None:
    box = Outbox(committed_offset=7)
    assert [box.append(record(i)) for i in range(3)] == [7, 8, 9]
    assert (box.base, box.next_offset, len(box), box.unsent) == (7, 10, 3, 3)


def test_batches_are_cut_by_count_and_registered_in_flight() -> None:
    box = filled(10)
    batches = [box.next_batch(4, 1 << 20) for _ in range(4)]
    assert [(b.offset, len(b.records)) for b in batches if b] == [(0, 4), (4, 4), (8, 2)]
    assert batches[3] is None
    assert [b.offset for b in box.inflight] == [0, 4, 8]
    assert box.unsent == 0 and len(box) == 10  # sent is not acked


def test_batches_are_cut_by_bytes_and_stay_within_the_limit() -> None:
    rng = random.Random(7)
    box = Outbox()
    for i in range(300):
        box.append(record(i, "x" * rng.randrange(0, 3000)))
    limit = 20_000
    sent = []
    while (batch := box.next_batch(1000, limit)) is not None:
        assert batch.request().ByteSize() <= limit
        sent.extend(numbers(batch.records))
    assert sent == list(range(300))


def test_batch_bytes_are_counted_exactly() -> None:
    box = filled(5)
    batch = box.next_batch(5, 1 << 20)
    assert batch is not None
    counted = BATCH_OVERHEAD + sum(wire_size(r) for r in batch.records)
    assert batch.request().ByteSize() <= counted <= batch.request().ByteSize() + BATCH_OVERHEAD


def test_a_record_larger_than_the_byte_limit_goes_alone() -> None:
    box = Outbox()
    box.append(record(0))
    box.append(record(1, "y" * 5000))
    box.append(record(2))
    sizes = []
    while (batch := box.next_batch(10, 1000)) is not None:
        sizes.append(numbers(batch.records))
    assert sizes == [[0], [1], [2]]


def test_limits_take_the_smaller_batch_size_and_default_what_the_server_left_out() -> None:
    announced = ingest_pb2.StreamLimits(max_batch_records=1000, max_inflight_batches=4)
    announced.heartbeat_interval.FromSeconds(12)
    limits = Limits.announced(announced, max_batch_records=500)
    assert limits == Limits(500, Limits().max_batch_bytes, 4, 12.0)
    empty = Limits.announced(ingest_pb2.StreamLimits(), max_batch_records=50)
    assert empty == Limits(max_batch_records=50)


# -- acks ------------------------------------------------------------------------------------


def test_an_ack_drops_the_committed_records_and_reports_rejections_by_offset() -> None:
    box = filled(10, committed=100)
    box.next_batch(4, 1 << 20)
    box.next_batch(4, 1 << 20)
    bad = ingest_pb2.RecordRejection(
        kind=records_pb2.RECORD_KIND_TURN,
        index=2,
        violations=[FieldViolation(field="records[2].turn.model", description="required")],
    )
    first = box.on_ack(ack(100, 4, rejections=[bad]))
    assert first.committed == 4 and first.resend_from is None
    (rejection,) = first.rejections
    assert (rejection.offset, rejection.kind) == (102, "turn")
    assert rejection.violations[0].field == "records[2].turn.model"
    assert rejection.record is not None and rejection.record.turn.turn_number == 102
    assert (box.base, len(box)) == (104, 6)
    second = box.on_ack(ack(104, 4, ingest_pb2.APPEND_OUTCOME_ALREADY_STORED))
    assert second.committed == 4 and not second.rejections
    assert numbers(box.records()) == [108, 109]


def test_an_ack_for_another_offset_or_with_nothing_in_flight_is_a_protocol_error() -> None:
    box = filled(4)
    with pytest.raises(ProtocolError):
        box.on_ack(ack(0, 4))
    box.next_batch(4, 1 << 20)
    with pytest.raises(ProtocolError):
        box.on_ack(ack(2, 2))


def test_an_ack_past_everything_written_means_another_writer() -> None:
    box = filled(4)
    box.next_batch(4, 1 << 20)
    with pytest.raises(ProtocolError) as info:
        box.on_ack(ack(0, 4, committed=9))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION


# -- resume and gaps -------------------------------------------------------------------------


def test_resume_drops_what_the_server_committed_and_resends_the_rest_unchanged() -> None:
    box = filled(10)
    for _ in range(3):
        box.next_batch(3, 1 << 20)
    box.on_ack(ack(0, 3))
    # The connection drops with [3, 9) in flight; the server had committed up to 6.
    assert box.resume(6) == 3
    assert (box.base, box.send_offset, len(box.inflight)) == (6, 6, 0)
    batch = box.next_batch(10, 1 << 20)
    assert batch is not None and batch.offset == 6
    assert numbers(batch.records) == [6, 7, 8, 9]
    assert box.resends == 3  # 6, 7, 8 were sent before; 9 is new


def test_resume_below_what_was_acked_is_data_loss() -> None:
    box = filled(5)
    box.next_batch(5, 1 << 20)
    box.on_ack(ack(0, 5))
    with pytest.raises(ProtocolError) as info:
        box.resume(3)
    assert info.value.code == grpc.StatusCode.DATA_LOSS


def test_a_gap_resends_from_the_committed_offset_once_even_with_later_batches_in_flight() -> None:
    box = filled(12)
    box.send_offset = 4  # as if records 0..3 never reached the server
    box.next_batch(4, 1 << 20)
    box.next_batch(4, 1 << 20)
    first = box.on_ack(ack(4, 4, ingest_pb2.APPEND_OUTCOME_GAP, committed=0))
    assert (first.resend_from, box.send_offset) == (0, 0)
    resent = box.next_batch(20, 1 << 20)
    assert resent is not None and numbers(resent.records) == list(range(12))
    # The batch sent before the resend is answered as a gap too; it changes nothing.
    stale = box.on_ack(ack(8, 4, ingest_pb2.APPEND_OUTCOME_GAP, committed=0))
    assert stale.resend_from is None and box.send_offset == 12
    assert box.on_ack(ack(0, 12)).committed == 12
    assert (box.base, len(box), len(box.inflight)) == (12, 0, 0)


def test_a_gap_below_what_was_acked_is_data_loss() -> None:
    box = filled(6)
    box.next_batch(3, 1 << 20)
    box.next_batch(3, 1 << 20)
    box.on_ack(ack(0, 3))
    with pytest.raises(ProtocolError) as info:
        box.on_ack(ack(3, 3, ingest_pb2.APPEND_OUTCOME_GAP, committed=1))
    assert info.value.code == grpc.StatusCode.DATA_LOSS


def test_the_buffer_compacts_without_losing_records() -> None:
    box = Outbox()
    for i in range(5000):
        box.append(record(i))
        if i % 100 == 99:
            batch = box.next_batch(100, 1 << 20)
            assert batch is not None
            box.on_ack(ack(batch.offset, len(batch.records)))
    assert (box.base, len(box)) == (5000, 0)
    box.append(record(5000))
    assert numbers(box.records()) == [5000]


# -- keyword arguments -> records --------------------------------------------------------------


def test_keyword_arguments_fill_timestamps_structs_enums_and_lists() -> None:
    task = build(
        records_pb2.Task,
        execution_id="e1",
        task_number=1,
        task_description="plan",
        status="in_progress",
        started_at=T0,
        completed_at="2026-11-01T09:31:00Z",
        metadata={"attempt": 2, "tags": ["a", "b"], "nested": {"ok": True}},
        error_message=None,
    )
    assert task.status == records_pb2.TASK_STATUS_RUNNING
    assert task.started_at.ToDatetime(dt.UTC) == T0
    assert task.completed_at.ToDatetime(dt.UTC) == T0 + dt.timedelta(minutes=1)
    assert dict(task.metadata) == {"attempt": 2.0, "tags": ["a", "b"], "nested": {"ok": True}}
    assert not task.HasField("duration_ms")
    turn = build(records_pb2.Turn, {"tools_called_names": ["read", "run"], "started_at": 1.5})
    assert list(turn.tools_called_names) == ["read", "run"]
    assert turn.started_at.ToNanoseconds() == 1_500_000_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("completed", records_pb2.EXECUTION_STATUS_COMPLETED),
        ("COMPLETED", records_pb2.EXECUTION_STATUS_COMPLETED),
        ("EXECUTION_STATUS_FAILED", records_pb2.EXECUTION_STATUS_FAILED),
        ("in_progress", records_pb2.EXECUTION_STATUS_RUNNING),
        ("canceled", records_pb2.EXECUTION_STATUS_CANCELLED),
        (records_pb2.EXECUTION_STATUS_PENDING, records_pb2.EXECUTION_STATUS_PENDING),
    ],
)
def test_enum_fields_take_names_in_any_usual_spelling(value: object, expected: int) -> None:
    assert build(records_pb2.Execution, status=value).status == expected


def test_naive_datetimes_are_utc_as_in_protobuf() -> None:
    turn = build(records_pb2.Turn, started_at=dt.datetime(2026, 11, 1, 9, 30))
    assert turn.started_at.ToDatetime(dt.UTC) == T0


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(TypeError, match="Turn has no field 'modle'"):
        build(records_pb2.Turn, modle="x")
    with pytest.raises(ValueError, match=r"Task\.status: 'done' is not a TaskStatus; use one of"):
        build(records_pb2.Task, status="done")
    with pytest.raises(TypeError, match=r"Turn\.started_at: expected a datetime"):
        build(records_pb2.Turn, started_at=object())
    with pytest.raises(TypeError, match=r"Turn\.tools_called_names: expected a list"):
        build(records_pb2.Turn, tools_called_names="read")
    with pytest.raises(TypeError, match=r"Turn\.metrics: expected a dict"):
        build(records_pb2.Turn, metrics=[1])


def test_a_message_is_used_as_is_and_overrides_never_change_the_callers_copy() -> None:
    original = build(records_pb2.Turn, execution_id="e1", turn_number=1)
    assert build(records_pb2.Turn, original) is original
    changed = build(records_pb2.Turn, original, turn_number=2)
    assert (original.turn_number, changed.turn_number, changed.execution_id) == (1, 2, "e1")
    with pytest.raises(TypeError, match="expected a Turn or a mapping"):
        build(records_pb2.Turn, records_pb2.Task())


def test_records_get_the_default_execution_id_only_when_they_have_none() -> None:
    given = to_record("tool_call", None, {"execution_id": "mine", "tool_name": "t"}, "default")
    missing = to_record("tool_call", None, {"tool_name": "t"}, "default")
    assert (given.tool_call.execution_id, missing.tool_call.execution_id) == ("mine", "default")
    assert missing.WhichOneof("kind") == "tool_call"


def nested(depth: int) -> dict[str, object]:
    top: dict[str, object] = {}
    inner = top
    for _ in range(depth):
        child: dict[str, object] = {}
        inner["k"] = child
        inner = child
    return top


@pytest.mark.parametrize("depth", [33, 40])
def test_a_record_no_parser_can_read_is_refused_before_it_is_buffered(depth: int) -> None:
    # 33 levels encode and even make a Record, but not an AppendRequest the server can parse;
    # 40 fail already while building the Record. Both are one clear ValueError.
    with pytest.raises(ValueError, match="nested too deeply for protobuf parsers"):
        to_record("tool_call", None, {"tool_name": "t", "tool_input": nested(depth)})
    record = to_record("tool_call", None, {"tool_name": "t", "tool_input": nested(30)})
    request = ingest_pb2.AppendRequest(batch=ingest_pb2.AppendBatch(records=[record]))
    assert ingest_pb2.AppendRequest.FromString(request.SerializeToString()) == request


# -- backoff and errors ------------------------------------------------------------------------


def test_backoff_is_full_jitter_capped_and_honours_retry_info() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(40)]
    ceilings = [min(5.0, 0.1 * 2**i) for i in range(40)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays[-20:]) > 2.5  # it does reach the cap region
    assert backoff.next(retry_after=7.0) == 7.0
    backoff.reset()
    assert backoff.next() <= 0.1


def _status_with_details() -> status_pb2.Status:
    details = []
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(1500)
    for detail in (
        error_details_pb2.ErrorInfo(reason="STORE_UNAVAILABLE", domain="turnstream.dev"),
        error_details_pb2.RetryInfo(retry_delay=delay),
        error_details_pb2.BadRequest(field_violations=[FieldViolation(field="turn.model")]),
    ):
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    return status_pb2.Status(code=14, message="database is down", details=details)


def test_rpc_error_keeps_the_raw_status_and_reads_its_details() -> None:
    trailers = (
        ("other", "x"),
        ("grpc-status-details-bin", _status_with_details().SerializeToString()),
    )
    status = raw_status(trailers)
    error = RPCError(grpc.StatusCode.UNAVAILABLE, "database is down", status)
    assert error.raw_status is not None and error.raw_status.code == 14
    assert error.reason == "STORE_UNAVAILABLE"
    assert error.retry_delay == 1.5
    assert [v.field for v in error.field_violations] == ["turn.model"]
    assert error.retryable
    assert str(error) == "UNAVAILABLE: database is down"
    bare = RPCError(grpc.StatusCode.ABORTED, "fenced")
    assert (bare.details, bare.reason, bare.retry_delay, bare.retryable) == ([], "", None, False)
    assert raw_status((("grpc-status-details-bin", b"\xff\xff"),)) is None
