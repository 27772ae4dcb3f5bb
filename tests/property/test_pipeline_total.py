"""Pipeline.prepare_write is total: whatever a Write holds, it never raises, and every record
becomes exactly one of a row or a rejection + dead letter, each fit for strict JSON and for its
columns (issue 6, "total dead letters"). Pure: no database, so many examples."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st

from tests.property import strategies as s
from tests.property.checks import check_row, check_total, strict_json
from turnstream.core.batch import StreamAdvance
from turnstream.core.pipeline import Pipeline, Prepared, join
from turnstream.core.pricing import PriceTable
from turnstream.v1 import ingest_pb2, records_pb2

# derandomize: CI sees the same examples every run. Generating a Write costs ~30 ms (most of it
# Hypothesis drawing ~700 values); 100 Writes hold ~1,000 records.
PURE = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A known gap (xfail) fails at its first example: shrinking it would only cost minutes.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)

# The property runs on ordinary-hostile records, with issue 6's hazards (Struct NaN/Infinity,
# floats whose derived sums overflow, Structs hundreds of levels deep), and with a gap that is
# not fixed yet (xfail: remove the mark when it is).
HAZARDS = [
    pytest.param(s.NONE, id="baseline"),
    pytest.param(s.ISSUE_6, id="issue-6-hazards"),
    pytest.param(
        dataclasses.replace(s.NONE, long_price_version=True),
        id="long-price-version",
    ),
]


def phases(hazards: s.Hazards) -> tuple[Phase, ...]:
    return NO_SHRINK if hazards.long_price_version else tuple(Phase)


def pipeline() -> Pipeline:
    return Pipeline(PriceTable.load(None), clock=lambda: s.NOW)


@contextlib.contextmanager
def server_stack() -> Iterator[None]:
    """Python's default recursion limit, as the server runs with: Hypothesis raises the limit
    while a test runs, which would hide a recursion that fails in production."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def prepare_write(request: ingest_pb2.WriteRequest, tenant_id: str = "default") -> Prepared:
    with server_stack():
        return pipeline().prepare_write(request, tenant_id, "grpc.Write")


@pytest.mark.parametrize("hazards", HAZARDS)
def test_every_record_becomes_a_row_or_a_dead_letter(hazards: s.Hazards) -> None:
    @settings(PURE, phases=phases(hazards))
    @given(drawn=s.shown(s.write_requests(hazards)))
    def prepare(drawn: s.Shown) -> None:
        request = drawn.message
        check_total(request, prepare_write(request, "tenant-\U0001d518"))

    prepare()


@settings(PURE, max_examples=300)
@given(s.shown(st.sampled_from(s.RECORD_CLASSES).flatmap(s.records)))
def test_each_kind_alone_is_accepted_or_rejected(drawn: s.Shown) -> None:
    """One record per Write, of every kind (the execution slot included): the same totality,
    with nothing else in the request to mask a record that vanished."""
    record = drawn.message
    request = ingest_pb2.WriteRequest()
    kind = type(record).DESCRIPTOR.name
    target = (
        request.execution
        if kind == "Execution"
        else {"Turn": request.turns, "ToolCall": request.tool_calls, "Task": request.tasks}[
            kind
        ].add()
    )
    target.CopyFrom(record)
    prepared = prepare_write(request)
    check_total(request, prepared)
    assert len(prepared.accepted) + len(prepared.rejections) == 1


@settings(PURE, max_examples=50)
@given(s.shown(s.write_requests()))
def test_a_retried_write_prepares_the_same_rows_and_dead_letters(drawn: s.Shown) -> None:
    """A retry is the same bytes parsed again: it must prepare the same rows, the same answers
    and the same dead-letter ids (so an exact retry of an invalid record is kept once)."""
    data = drawn.message.SerializeToString()
    try:
        first, again = (ingest_pb2.WriteRequest.FromString(data) for _ in range(2))
    except DecodeError:
        reject()  # nested deeper than the wire carries: there is no retry of it
    one, two = prepare_write(first), prepare_write(again)
    assert one.batch.rows == two.batch.rows
    assert [r["rejected_id"] for r in one.batch.rejected] == [
        r["rejected_id"] for r in two.batch.rejected
    ]
    assert list(one.rejections) == list(two.rejections)


_ONEOF = {"Turn": "turn", "ToolCall": "tool_call", "Task": "task", "Execution": "execution"}


@st.composite
def append_batches(draw: st.DrawFn, hazards: s.Hazards) -> tuple[str, s.Shown]:
    """A stream batch: a hostile stream id, a large first offset, records of any kind or none."""
    stream_id = draw(st.one_of(s.valid_ids(), st.sampled_from(["s" * 300, "st\x00ream"])))
    batch = ingest_pb2.AppendBatch(offset=draw(st.sampled_from([0, 1, 2**53, 2**62])))
    kinds = st.one_of(
        st.sampled_from(s.RECORD_CLASSES).flatmap(lambda cls: s.records(cls, hazards)), st.none()
    )
    for record in draw(st.lists(kinds, max_size=8)):
        wrapper = batch.records.add()  # add(): extend would copy through the wire parser
        if record is not None:
            getattr(wrapper, _ONEOF[record.DESCRIPTOR.name]).CopyFrom(record)
    return stream_id, s.Shown(batch)


@pytest.mark.parametrize("hazards", HAZARDS)
def test_a_stream_batch_is_total_and_its_dead_letters_carry_their_offsets(
    hazards: s.Hazards,
) -> None:
    """prepare_append, the stream door's core: each record is a row, a rejection (with a dead
    letter at its stream offset) or an empty-record rejection, and the stream advances over all
    of them (a stream must never wedge on a record it cannot store)."""

    @settings(PURE, max_examples=80, phases=phases(hazards))
    @given(append_batches(hazards))
    def prepare(drawn: tuple[str, s.Shown]) -> None:
        check_append(*drawn)

    prepare()


def check_append(stream_id: str, shown: s.Shown) -> None:
    batch: ingest_pb2.AppendBatch = shown.message
    offset, records = batch.offset, list(batch.records)
    advance = StreamAdvance(stream_id, 1, offset, offset + len(records))
    with server_stack():
        prepared, empty = pipeline().prepare_append(records, "default", "grpc.Append", advance)
    accepted = [i.index for i in prepared.accepted]
    rejected = [r.index for r in prepared.rejections]
    blank = [r.index for r in empty]
    assert sorted(accepted + rejected + blank) == list(range(len(records)))
    assert blank == [i for i, r in enumerate(records) if r.WhichOneof("kind") is None]
    assert prepared.batch.stream == advance
    for item in prepared.accepted:
        assert item.offset == offset + item.index
    for r in empty:
        assert [v.field for v in r.violations] == [f"records[{r.index}]"]
    for rejection, letter in zip(prepared.rejections, prepared.batch.rejected, strict=True):
        kind = records[rejection.index].WhichOneof("kind")
        assert rejection.violations
        for v in rejection.violations:
            assert v.field.startswith(f"records[{rejection.index}].{kind}."), v.field
        assert letter["stream_offset"] == offset + rejection.index
        assert letter["stream_id"] == stream_id.replace("\x00", "\ufffd")[:256]
        strict_json(letter)
    for kind, rows in prepared.batch.rows.items():
        for row in rows:
            check_row(kind, row)


# -- the gaps, one example each: what the property finds, as a reader would write it -------------

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def _turn(request: ingest_pb2.WriteRequest, n: int, **fields: object) -> records_pb2.Turn:
    turn = request.turns.add(execution_id="exec-1", turn_number=n, model="claude-sonnet-4-5")
    turn.started_at.FromDatetime(T0)
    for name, value in fields.items():
        setattr(turn, name, value)
    return turn


def named(violations: Iterable[Any], fields: set[str]) -> bool:
    """A violation names one of `fields`, or a path inside it ("turns[1].metrics.score")."""
    return any(
        v.field == f or v.field.startswith((f + ".", f + "[")) for v in violations for f in fields
    )


@pytest.mark.parametrize(
    ("bad", "metrics", "fields"),
    [
        pytest.param({}, math.nan, {"turns[1].metrics"}, id="metrics-nan"),
        pytest.param({}, math.inf, {"turns[1].metrics"}, id="metrics-inf"),
        pytest.param({}, -math.inf, {"turns[1].metrics"}, id="metrics-minus-inf"),
        pytest.param(
            {"input_cost": 1e308, "output_cost": 1e308},
            None,
            {"turns[1].input_cost", "turns[1].output_cost", "turns[1].total_cost"},
            id="costs-sum-overflows",
        ),
        pytest.param(
            {"runtime_minutes": 1e308, "model_weight": 2.0},
            None,
            {"turns[1].runtime_minutes", "turns[1].model_weight", "turns[1].aem_value"},
            id="aem-overflows",
        ),
        pytest.param(
            {"price_version": "v" * 65},
            None,
            {"turns[1].price_version"},
            id="price-version-longer-than-its-column",
        ),
        pytest.param(
            {"input_tokens": 2**63 - 1, "output_tokens": 2**63 - 1},
            None,
            set(),  # total_tokens would overflow int64: left absent, the record stored
            id="token-total-overflow-is-left-absent",
        ),
        pytest.param(
            {"runtime_minutes": 1e308},  # x 1.0 x 1.0 stays finite, and so does x 0.15
            None,
            set(),
            id="aem-at-the-edge-is-stored",
        ),
    ],
)
def test_a_record_whose_values_cannot_be_stored_is_rejected_at_its_path(
    bad: dict[str, object], metrics: object, fields: set[str]
) -> None:
    request = ingest_pb2.WriteRequest()
    _turn(request, 1)
    turn = _turn(request, 2, **bad)
    if metrics is not None:
        turn.metrics.update({"ok": 1, "bad": metrics})
    _turn(request, 3)
    prepared = prepare_write(request)
    check_total(request, prepared)
    if not fields:
        assert not prepared.rejections
        return
    (rejection,) = prepared.rejections
    assert rejection.index == 1
    assert named(rejection.violations, fields), list(rejection.violations)
    assert [(i.kind, i.index) for i in prepared.accepted] == [("turn", 0), ("turn", 2)]


def deepest_struct_in_a_write() -> int:
    """The most nested Structs a Turn's metrics can hold and still parse inside a Write."""
    for depth in range(1, 200):
        request = ingest_pb2.WriteRequest()
        s.build_struct(s._chain(depth, ("num", 1.0)), request.turns.add().metrics)
        try:
            ingest_pb2.WriteRequest.FromString(request.SerializeToString())
        except DecodeError:
            return depth - 1
    raise AssertionError("no depth limit found")


@pytest.mark.parametrize("extra", [1, 250, 400])
def test_a_struct_nested_past_the_wire_limit_is_rejected_at_its_path(extra: int) -> None:
    """A JSON door builds Structs in memory, so nothing stops one deeper than gRPC could carry;
    the core must reject it (its payload could not be re-sent or replayed), not crash or store
    it. (`turnstream send` builds such a record from a JSON file: see tests/hostile.)"""
    depth = deepest_struct_in_a_write() + extra
    request = ingest_pb2.WriteRequest()
    _turn(request, 1)
    turn = _turn(request, 2)
    s.build_struct(s._chain(depth, ("num", 1.0)), turn.metrics)
    prepared = prepare_write(request)
    check_total(request, prepared)
    (rejection,) = prepared.rejections
    assert rejection.index == 1
    assert named(rejection.violations, {"turns[1].metrics"}), list(rejection.violations)
    assert all(v.field.startswith("turns[1].metrics") for v in rejection.violations)


@pytest.mark.parametrize("hazards", HAZARDS[:1])
def test_a_stream_batch_prepared_in_parts_is_the_batch_prepared_whole(hazards: s.Hazards) -> None:
    """The stream door prepares a long batch a part at a time (StreamAdvance.first_index) and
    joins the parts: the same rows, answers, field paths and offsets as preparing it whole."""

    @settings(PURE, max_examples=25, phases=phases(hazards))
    @given(append_batches(hazards), st.integers(1, 7))
    def prepare(drawn: tuple[str, s.Shown], step: int) -> None:
        stream_id, shown = drawn
        batch: ingest_pb2.AppendBatch = shown.message
        offset, count = batch.offset, len(batch.records)
        advance = StreamAdvance(stream_id, 1, offset, offset + count)
        again = []
        for r in batch.records:
            again.append(ingest_pb2.Record())
            again[-1].CopyFrom(r)
        with server_stack():
            whole, blank = pipeline().prepare_append(
                list(batch.records), "default", "grpc.Append", advance
            )
            parts, empty = [], []
            for start in range(0, count, step):
                stop = min(start + step, count)
                part = StreamAdvance(stream_id, 1, offset + start, offset + stop, start)
                got, none = pipeline().prepare_append(
                    again[start:stop], "default", "grpc.Append", part
                )
                parts.append(got)
                empty += none
        if not parts:
            return
        joined = join(parts, advance)
        assert joined.batch.stream == advance
        assert [_answer(r) for r in joined.rejections] == [_answer(r) for r in whole.rejections]
        assert empty == blank
        assert [(i.index, i.offset, i.path) for i in joined.accepted] == [
            (i.index, i.offset, i.path) for i in whole.accepted
        ]
        assert joined.batch.rows == whole.batch.rows
        assert joined.batch.derived_executions == whole.batch.derived_executions
        assert [r["stream_offset"] for r in joined.batch.rejected] == [
            r["stream_offset"] for r in whole.batch.rejected
        ]

    prepare()


def _answer(r: ingest_pb2.RecordRejection) -> tuple[int, int, list[tuple[str, str]]]:
    # A Struct's entries come in map order, which a copy of the record need not keep.
    return r.kind, r.index, sorted((v.field, v.reason) for v in r.violations)
