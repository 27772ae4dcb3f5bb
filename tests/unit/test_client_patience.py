"""When a StreamWriter stops trying (turnstream.client.patience), driven with a fake clock: no
stream for max_reconnect_time, no progress for max_stall_time while opened streams keep failing,
and the failures that are fatal at once. Also the offsets a stalled writer names."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from turnstream.client.errors import RPCError, StreamError
from turnstream.client.outbox import Outbox
from turnstream.client.patience import Ending, Patience
from turnstream.v1 import ingest_pb2, records_pb2

Code = grpc.StatusCode


def status(
    code: Code, reason: str = "", retry_after: float | None = None
) -> status_pb2.Status | None:
    details = []
    if reason:
        details.append(error_details_pb2.ErrorInfo(reason=reason, domain="turnstream.dev"))
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(retry_after * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        any_ = any_pb2.Any()
        any_.Pack(detail)
        packed.append(any_)
    return status_pb2.Status(code=code.value[0], message="m", details=packed)


def error(code: Code, reason: str = "", retry_after: float | None = None) -> RPCError:
    return RPCError(code, f"{code.name} from the server", status(code, reason, retry_after))


INTERNAL = error(Code.INTERNAL, "INTERNAL", retry_after=5.0)
STUCK = range(10, 20)


def failed_open(err: RPCError = INTERNAL) -> Ending:
    return Ending(opened=True, error=err)


# -- no progress -----------------------------------------------------------------------------


def test_the_same_batch_failing_on_every_reopen_is_fatal_after_max_stall_time() -> None:
    patience = Patience(max_reconnect_time=8.0, max_stall_time=60.0)
    # Every reopen succeeds, so the no-stream clock never runs: what once blocked flush() forever.
    for now in range(0, 61, 5):
        assert patience.ended(failed_open(), float(now), STUCK) is None
    fatal = patience.ended(failed_open(), 65.0, STUCK)
    assert isinstance(fatal, StreamError)
    assert fatal.code == Code.INTERNAL and fatal.raw_status == INTERNAL.raw_status
    assert fatal.stuck_offsets == STUCK
    assert "offsets 10..19" in fatal.message and "14 attempts" in fatal.message
    assert "no progress for 65.0 s" in fatal.message and "INTERNAL from the server" in fatal.message


def test_progress_restarts_the_stall_clock() -> None:
    patience = Patience(max_reconnect_time=None, max_stall_time=60.0)
    assert patience.ended(failed_open(), 0.0, STUCK) is None
    assert patience.ended(failed_open(), 50.0, STUCK) is None
    patience.progressed()  # an ack moved the committed offset
    assert patience.ended(failed_open(), 100.0, range(20, 30)) is None
    assert patience.ended(failed_open(), 150.0, range(20, 30)) is None
    assert patience.ended(failed_open(), 161.0, range(20, 30)) is not None


def test_an_idle_writer_is_never_stalled() -> None:
    patience = Patience(max_reconnect_time=None, max_stall_time=1.0)
    for now in range(100):  # failures with nothing un-acked: no batch is stuck
        assert patience.ended(failed_open(), float(now), None) is None
    # and an idle stretch does not count once records are pending again
    assert patience.ended(failed_open(), 100.0, STUCK) is None
    assert patience.ended(failed_open(), 100.5, STUCK) is None


def test_a_drain_is_not_a_failure_and_a_clean_end_is() -> None:
    patience = Patience(max_reconnect_time=None, max_stall_time=10.0)
    assert patience.ended(failed_open(), 0.0, STUCK) is None
    drained = Ending(opened=True, drained=True, reason="the server drained the stream")
    for now in (5.0, 20.0, 40.0):
        assert patience.ended(drained, now, STUCK) is None
    ended = Ending(opened=True, reason="the server ended it")
    fatal = patience.ended(ended, 41.0, STUCK)
    assert fatal is not None and fatal.code == Code.UNAVAILABLE
    assert "the server ended it" in fatal.message


def test_outages_between_failures_count_towards_the_stall() -> None:
    # A poison batch that crashes the server: each reopen after the restart fails on it again.
    # The attempts that find no server in between must not reset the clock.
    patience = Patience(max_reconnect_time=None, max_stall_time=30.0)
    broken = Ending(opened=True, error=error(Code.UNAVAILABLE))
    nobody = Ending(opened=False, error=error(Code.UNAVAILABLE))
    now = 0.0
    while now <= 30.0:
        assert patience.ended(broken, now, STUCK) is None
        assert patience.ended(nobody, now + 1.0, STUCK) is None
        now += 5.0
    fatal = patience.ended(broken, now, STUCK)
    assert fatal is not None and fatal.code == Code.UNAVAILABLE


def test_max_stall_time_none_retries_forever() -> None:
    patience = Patience(max_reconnect_time=None, max_stall_time=None)
    for now in range(0, 10_000, 7):
        assert patience.ended(failed_open(), float(now), STUCK) is None


# -- no stream -------------------------------------------------------------------------------


def test_no_stream_for_max_reconnect_time_is_fatal_counted_from_the_last_open_stream() -> None:
    patience = Patience(max_reconnect_time=8.0, max_stall_time=60.0)
    down = Ending(opened=False, error=error(Code.UNAVAILABLE))
    assert patience.ended(failed_open(), 0.0, None) is None  # an outage starts here
    assert patience.ended(down, 1.0, None) is None
    assert patience.ended(down, 8.0, None) is None
    fatal = patience.ended(down, 8.5, None)
    assert fatal is not None and fatal.code == Code.UNAVAILABLE
    assert fatal.message.startswith("gave up reconnecting after 8 s: UNAVAILABLE")
    # before any stream: counted from the first failed attempt
    first = Patience(max_reconnect_time=0.5, max_stall_time=None)
    assert first.ended(down, 100.0, None) is None
    assert first.ended(down, 100.6, None) is not None


# -- fatal at once ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "err",
    [
        error(Code.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
        error(Code.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE"),
        RPCError(Code.RESOURCE_EXHAUSTED, "Received message larger than max (9000 vs. 4096)"),
        error(Code.ABORTED, "STREAM_FENCED"),
        error(Code.PERMISSION_DENIED),
        error(Code.UNIMPLEMENTED),
    ],
    ids=lambda e: f"{e.code.name}-{e.reason}",
)
def test_failures_the_same_request_can_only_repeat_are_fatal_at_once(err: RPCError) -> None:
    patience = Patience(max_reconnect_time=None, max_stall_time=None)
    fatal = patience.ended(Ending(opened=True, error=err), 0.0, STUCK)
    assert fatal is not None and fatal.code == err.code and fatal.stuck_offsets == STUCK
    assert fatal.raw_status == err.raw_status


def test_retryable_failures_are_retried() -> None:
    patience = Patience(max_reconnect_time=None, max_stall_time=None)
    for err in (
        error(Code.UNAVAILABLE, "STORE_UNAVAILABLE", retry_after=1.0),
        error(Code.INTERNAL, "INTERNAL", retry_after=5.0),
        error(Code.DEADLINE_EXCEEDED, "OPEN_TIMEOUT"),
        error(Code.ABORTED, "STREAM_CONFLICT"),
        error(Code.RESOURCE_EXHAUSTED, "OVERLOADED", retry_after=2.0),  # a quota that refills
    ):
        assert patience.ended(Ending(opened=True, error=err), 0.0, STUCK) is None, err
    assert not RPCError(Code.RESOURCE_EXHAUSTED, "too large").retryable
    assert error(Code.RESOURCE_EXHAUSTED, retry_after=1.0).retryable


# -- the stuck batch -------------------------------------------------------------------------


def record(n: int) -> ingest_pb2.Record:
    return ingest_pb2.Record(turn=records_pb2.Turn(execution_id="e", turn_number=n))


def test_the_oldest_batch_is_the_one_in_flight_at_the_committed_offset() -> None:
    box = Outbox(committed_offset=100)
    assert box.oldest_batch(500) is None
    for n in range(30):
        box.append(record(n))
    assert box.oldest_batch(8) == range(100, 108)  # not sent yet: as it would be cut
    first = box.next_batch(12, 1 << 20)
    box.next_batch(12, 1 << 20)
    assert first is not None
    assert box.oldest_batch(8) == range(100, 112)  # as sent
    box.on_ack(
        ingest_pb2.BatchAck(
            offset=100,
            record_count=12,
            outcome=ingest_pb2.APPEND_OUTCOME_APPENDED,
            committed_offset=112,
        )
    )
    assert box.oldest_batch(8) == range(112, 124)
    box.resume(112)  # a reconnect forgets what was in flight
    assert box.oldest_batch(50) == range(112, 130)
