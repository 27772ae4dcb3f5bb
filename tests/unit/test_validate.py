"""validate: exact field paths, reasons and sentences; every violation of a record at once."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable

import pytest
from google.protobuf.message import Message

from turnstream.core import validate
from turnstream.core.validate import (
    validate_execution,
    validate_task,
    validate_tool_call,
    validate_turn,
)
from turnstream.v1 import records_pb2

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)


def good_turn() -> records_pb2.Turn:
    t = records_pb2.Turn(execution_id="exec-1", turn_number=1, model="claude-sonnet-4-5")
    t.started_at.FromDatetime(T0)
    return t


def good_call() -> records_pb2.ToolCall:
    c = records_pb2.ToolCall(execution_id="exec-1", tool_name="bash")
    c.started_at.FromDatetime(T0)
    return c


def good_task() -> records_pb2.Task:
    return records_pb2.Task(execution_id="exec-1", task_description="write the tests")


def good_execution() -> records_pb2.Execution:
    return records_pb2.Execution(execution_id="exec-1")


def check(message: Message, path: str = "r") -> list[tuple[str, str]]:
    """(field, reason) of every violation, for any record kind."""
    kinds = {
        "Turn": validate_turn,
        "ToolCall": validate_tool_call,
        "Task": validate_task,
        "Execution": validate_execution,
    }
    violations = kinds[message.DESCRIPTOR.name](message, path, NOW)  # type: ignore[operator]
    assert all(v.description and v.reason for v in violations)
    return [(v.field, v.reason) for v in violations]


@pytest.mark.parametrize("factory", [good_turn, good_call, good_task, good_execution])
def test_a_minimal_valid_record_has_no_violation(factory: Callable[[], Message]) -> None:
    assert check(factory()) == []


def test_every_missing_required_field_of_a_turn_is_reported() -> None:
    violations = validate_turn(records_pb2.Turn(), "turns[3]", NOW)
    assert [(v.field, v.reason, v.description) for v in violations] == [
        ("turns[3].execution_id", "REQUIRED", "execution_id is required"),
        ("turns[3].turn_number", "REQUIRED", "turn_number is required"),
        ("turns[3].model", "REQUIRED", "model is required"),
        ("turns[3].started_at", "REQUIRED", "started_at is required"),
    ]


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        (records_pb2.ToolCall(), ["execution_id", "tool_name", "started_at"]),
        (records_pb2.Task(), ["execution_id", "task_description"]),
        (records_pb2.Execution(), ["execution_id"]),
    ],
)
def test_required_fields_of_the_other_kinds(message: Message, fields: list[str]) -> None:
    assert check(message, "x") == [(f"x.{f}", "REQUIRED") for f in fields]


def test_turn_number_zero_is_present_and_whitespace_is_missing() -> None:
    t = good_turn()
    t.turn_number = 0
    t.execution_id = "  \t"
    assert check(t) == [("r.execution_id", "REQUIRED")]


def test_an_empty_path_gives_bare_field_names() -> None:
    assert [v.field for v in validate_execution(records_pb2.Execution(), "", NOW)] == [
        "execution_id"
    ]


def test_negative_number_names_the_value() -> None:
    t = good_turn()
    t.input_tokens = -5
    (v,) = validate_turn(t, "turns[0]", NOW)
    assert (v.field, v.reason) == ("turns[0].input_tokens", "NEGATIVE")
    assert v.description == "input_tokens must be >= 0, got -5"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_costs_and_weights_are_rejected_once(value: float) -> None:
    t = good_turn()
    t.total_cost = value
    t.model_weight = value
    assert check(t) == [("r.total_cost", "NOT_FINITE"), ("r.model_weight", "NOT_FINITE")]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (good_turn(), "turn_number"),
        (good_turn(), "cache_creation_tokens"),
        (good_turn(), "tools_called_count"),
        (good_turn(), "aem_cost"),
        (good_call(), "duration_ms"),
        (good_call(), "tool_output_size"),
        (good_task(), "task_number"),
        (good_execution(), "duration_ms"),
    ],
)
def test_every_numeric_field_must_be_non_negative(message: Message, field: str) -> None:
    setattr(message, field, -1)
    assert check(message) == [(f"r.{field}", "NEGATIVE")]


def test_zero_is_a_valid_number() -> None:
    t = good_turn()
    t.input_tokens = t.output_tokens = 0
    t.total_cost = 0.0
    assert check(t) == []


def test_completed_before_started_names_both_times() -> None:
    t = good_turn()
    t.completed_at.FromDatetime(T0 - dt.timedelta(seconds=1))
    (v,) = validate_turn(t, "turns[0]", NOW)
    assert (v.field, v.reason) == ("turns[0].completed_at", "TIME_ORDER")
    assert v.description == (
        "completed_at (2026-11-01T09:29:59Z) is before started_at (2026-11-01T09:30:00Z)"
    )


def test_completed_equal_to_started_is_valid_and_nanos_count() -> None:
    c = good_call()
    c.completed_at.CopyFrom(c.started_at)
    assert check(c) == []
    c.started_at.nanos = 1
    assert check(c) == [("r.completed_at", "TIME_ORDER")]


@pytest.mark.parametrize(
    ("moment", "ok"),
    [
        (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), True),
        (dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC), False),
        (NOW + dt.timedelta(days=1), True),
        (NOW + dt.timedelta(days=1, seconds=1), False),
        (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), False),
    ],
)
def test_timestamps_must_lie_between_2000_and_tomorrow(moment: dt.datetime, ok: bool) -> None:
    task = good_task()
    task.started_at.FromDatetime(moment)
    assert check(task) == ([] if ok else [("r.started_at", "OUT_OF_RANGE")])


def test_a_timestamp_beyond_year_9999_is_reported_not_raised() -> None:
    e = good_execution()
    e.completed_at.seconds = 10**12
    (v,) = validate_execution(e, "execution", NOW)
    assert v.reason == "OUT_OF_RANGE" and str(10**12) in v.description


@pytest.mark.parametrize("nanos", [-1, 1_000_000_000])
def test_invalid_nanos_are_reported_and_skip_the_order_check(nanos: int) -> None:
    c = good_call()
    c.completed_at.FromDatetime(T0 - dt.timedelta(hours=1))
    c.completed_at.nanos = nanos
    assert check(c) == [("r.completed_at", "INVALID_TIMESTAMP")]


def test_naive_now_is_taken_as_utc() -> None:
    t = good_turn()
    t.started_at.FromDatetime(NOW + dt.timedelta(hours=23))
    naive = NOW.replace(tzinfo=None)
    assert validate_turn(t, "t", naive) == []


@pytest.mark.parametrize(
    ("factory", "field", "limit"),
    [
        (good_turn, "execution_id", 256),
        (good_turn, "turn_id", 256),
        (good_turn, "parent_id", 256),
        (good_turn, "model", 256),
        (good_turn, "model_provider", 256),
        (good_turn, "finish_reason", 256),
        (good_turn, "error_message", 10_000),
        (good_call, "tool_name", 256),
        (good_call, "tool_use_id", 256),
        (good_call, "error_type", 256),
        (good_task, "task_id", 256),
        (good_task, "task_type", 256),
        (good_task, "task_description", 100_000),
        (good_task, "result", 100_000),
        (good_execution, "workflow_name", 256),
        (good_execution, "source", 256),
        (good_execution, "error_message", 10_000),
    ],
)
def test_length_limits_at_the_boundary(
    factory: Callable[[], Message], field: str, limit: int
) -> None:
    record = factory()
    setattr(record, field, "a" * limit)
    assert check(record) == []
    setattr(record, field, "a" * (limit + 1))
    assert check(record) == [(f"r.{field}", "TOO_LONG")]


def test_limits_are_the_documented_constants() -> None:
    assert validate.MAX_ID_LENGTH == validate.MAX_NAME_LENGTH == 256
    assert validate.MAX_STRUCT_BYTES == 65_536
    assert validate.STRING_LIMITS["error_message"] == 10_000
    assert "response_preview" not in validate.STRING_LIMITS


def test_too_long_sentence_names_limit_and_length() -> None:
    t = good_turn()
    t.error_message = "e" * 10_001
    (v,) = validate_turn(t, "t", NOW)
    assert v.description == "error_message must be at most 10,000 characters, got 10,001"


def test_preview_and_tool_output_are_not_limited_here() -> None:
    t = good_turn()
    t.response_preview = "p" * 200_000
    c = good_call()
    c.tool_output = "o" * 200_000
    assert check(t) == [] and check(c) == []


def test_tools_called_names_count_and_entry_length() -> None:
    t = good_turn()
    t.tools_called_names.extend(["bash"] * 1_000)
    assert check(t) == []
    t.tools_called_names.append("x")
    t.tools_called_names[2] = "n" * 257
    assert check(t) == [
        ("r.tools_called_names", "TOO_MANY"),
        ("r.tools_called_names[2]", "TOO_LONG"),
    ]


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (good_turn, "metrics"),
        (good_call, "tool_input"),
        (good_call, "metadata"),
        (good_task, "metadata"),
        (good_execution, "metadata"),
        (good_execution, "user_properties"),
    ],
)
def test_struct_fields_are_limited_to_64_kib(factory: Callable[[], Message], field: str) -> None:
    record = factory()
    struct = getattr(record, field)
    struct.update({"blob": "x" * 60_000})
    assert check(record) == []
    struct.update({"more": "x" * 6_000})
    assert struct.ByteSize() > 65_536
    assert check(record) == [(f"r.{field}", "TOO_LARGE")]


def test_unknown_enum_numbers_from_the_wire_are_rejected() -> None:
    wire = records_pb2.Task(execution_id="e", task_description="d", status=17).SerializeToString()
    task = records_pb2.Task.FromString(wire)
    (v,) = validate_task(task, "tasks[0]", NOW)
    assert (v.field, v.reason) == ("tasks[0].status", "UNKNOWN_ENUM_VALUE")
    assert v.description == "status 17 is not a defined TaskStatus value"
    e = good_execution()
    e.triggered_by = 9  # type: ignore[assignment]
    e.status = records_pb2.EXECUTION_STATUS_CANCELLED
    assert check(e) == [("r.triggered_by", "UNKNOWN_ENUM_VALUE")]


@pytest.mark.parametrize("bad", ["\x00", "\n", "\t", "\x1f", "\x7f"])
def test_ids_must_not_hold_control_characters(bad: str) -> None:
    c = good_call()
    c.tool_use_id = f"toolu_{bad}01"
    (v,) = validate_tool_call(c, "c", NOW)
    assert (v.field, v.reason) == ("c.tool_use_id", "CONTROL_CHARACTER")
    assert "position 6" in v.description


def test_control_characters_are_allowed_in_free_text() -> None:
    c = good_call()
    c.error_message = "line 1\nline 2\ttab"
    assert check(c) == []


def test_every_violation_of_a_record_is_reported_at_once() -> None:
    t = records_pb2.Turn(
        execution_id="exec\x00" + "x" * 300,
        model="m" * 257,
        input_tokens=-1,
        output_tokens=-2,
        input_cost=math.nan,
    )
    t.completed_at.FromDatetime(dt.datetime(1990, 1, 1, tzinfo=dt.UTC))
    t.metrics.update({"blob": "x" * 70_000})
    assert sorted(check(t, "turns[7]")) == sorted(
        [
            ("turns[7].turn_number", "REQUIRED"),
            ("turns[7].started_at", "REQUIRED"),
            ("turns[7].execution_id", "TOO_LONG"),
            ("turns[7].execution_id", "CONTROL_CHARACTER"),
            ("turns[7].model", "TOO_LONG"),
            ("turns[7].completed_at", "OUT_OF_RANGE"),
            ("turns[7].input_tokens", "NEGATIVE"),
            ("turns[7].output_tokens", "NEGATIVE"),
            ("turns[7].input_cost", "NOT_FINITE"),
            ("turns[7].metrics", "TOO_LARGE"),
        ]
    )


def _nest(depth: int) -> records_pb2.Turn:
    """A turn whose metrics nest `depth` Struct levels (metrics itself is level 1)."""
    t = good_turn()
    inner = t.metrics
    for _ in range(depth - 1):
        inner = inner.fields["k"].struct_value
    inner.fields["leaf"].number_value = 1
    return t


def test_struct_nesting_is_limited_with_the_deepest_path() -> None:
    assert check(_nest(validate.MAX_STRUCT_DEPTH)) == []
    problems = check(_nest(validate.MAX_STRUCT_DEPTH + 1))
    assert problems == [("r.metrics" + ".k" * validate.MAX_STRUCT_DEPTH, "TOO_DEEP")]


def test_lists_count_as_a_level_of_nesting() -> None:
    t = good_turn()
    value = t.metrics.fields["a"]
    for _ in range(validate.MAX_STRUCT_DEPTH):
        value = value.list_value.values.add()
    value.number_value = 1
    assert [reason for _, reason in check(t)] == ["TOO_DEEP"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_inside_a_struct_name_their_path(value: float) -> None:
    call = good_call()
    call.tool_input.update({"args": {"scores": [1.0, value]}, "weird key": value})
    assert sorted(check(call, "tool_calls[2]")) == [
        ("tool_calls[2].tool_input.args.scores[1]", "NOT_FINITE"),
        ("tool_calls[2].tool_input['weird key']", "NOT_FINITE"),
    ]


def test_a_value_with_no_kind_is_reported_not_stored_as_null() -> None:
    t = good_turn()
    t.metrics.fields["latency"].SetInParent()  # what protobufjs sends for {number_value: 1}
    t.metrics.fields["ok"].null_value = 0  # an explicit null is fine
    [(field, reason)] = check(t)
    assert (field, reason) == ("r.metrics.latency", "VALUE_EMPTY")


def test_a_struct_with_many_problems_lists_the_first_ten_and_counts_the_rest() -> None:
    t = good_turn()
    for i in range(15):
        t.metrics.fields[f"k{i}"].number_value = math.nan
    problems = check(t)
    assert len(problems) == validate.MAX_STRUCT_VIOLATIONS + 1
    assert problems[-1] == ("r.metrics", "TOO_MANY_PROBLEMS")


def test_derived_values_that_overflow_are_violations() -> None:
    t = good_turn()
    t.input_cost, t.output_cost, t.total_cost = 1e308, 1e308, math.inf
    assert validate.check_derived(t, "turns[0]")[0].field == "turns[0].total_cost"
    t.total_cost = 1.0
    assert validate.check_derived(t, "turns[0]") == []
