"""enrich: derived fields only where absent, exact costs and AEM, truncation boundaries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from turnstream.core.enrich import (
    AEM_USD_PER_MINUTE,
    RESPONSE_PREVIEW_LIMIT,
    TOOL_OUTPUT_LIMIT,
    enrich_execution,
    enrich_task,
    enrich_tool_call,
    enrich_turn,
    model_weight,
)
from turnstream.core.pricing import PriceTable
from turnstream.v1 import records_pb2

T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)
PRICES = PriceTable.load()
COSTS = ("input_cost", "output_cost", "cache_read_cost", "cache_creation_cost", "total_cost")


def turn(model: str = "claude-sonnet-4-5", **fields: object) -> records_pb2.Turn:
    t = records_pb2.Turn(execution_id="e", turn_number=1, model=model, **fields)  # type: ignore[arg-type]
    t.started_at.FromDatetime(T0)
    return t


# Any: the four record kinds share started_at, completed_at and duration_ms but no base class.
def timed(message: Any, seconds: float) -> Any:
    message.started_at.FromDatetime(T0)
    message.completed_at.FromDatetime(T0 + dt.timedelta(seconds=seconds))
    return message


ENRICHERS: list[tuple[Callable[[], Any], Callable[[Any], object]]] = [
    (records_pb2.Turn, lambda m: enrich_turn(m, PRICES)),
    (records_pb2.ToolCall, enrich_tool_call),
    (records_pb2.Task, enrich_task),
    (records_pb2.Execution, enrich_execution),
]


@pytest.mark.parametrize(("factory", "enrich"), ENRICHERS)
def test_duration_is_derived_for_every_kind(
    factory: Callable[[], Any], enrich: Callable[[Any], object]
) -> None:
    record = timed(factory(), 4.2)
    enrich(record)
    assert record.duration_ms == 4_200


@pytest.mark.parametrize(("factory", "enrich"), ENRICHERS)
def test_a_sent_duration_and_an_open_record_are_left_alone(
    factory: Callable[[], Any], enrich: Callable[[Any], object]
) -> None:
    sent = timed(factory(), 4.2)
    sent.duration_ms = 7
    enrich(sent)
    assert sent.duration_ms == 7
    running = factory()
    running.started_at.FromDatetime(T0)
    enrich(running)
    assert not running.HasField("duration_ms")


def test_duration_counts_nanos_and_floors_to_milliseconds() -> None:
    call = records_pb2.ToolCall()
    call.started_at.FromDatetime(T0)
    call.completed_at.FromDatetime(T0)
    call.started_at.nanos = 999_000_000
    call.completed_at.seconds += 2
    call.completed_at.nanos = 500_500  # 1.0015005 s later
    enrich_tool_call(call)
    assert call.duration_ms == 1_001


def test_total_tokens_is_input_plus_output_when_absent() -> None:
    t = turn(input_tokens=1_000, output_tokens=500, cache_read_tokens=9_999)
    enrich_turn(t, PRICES)
    assert t.total_tokens == 1_500
    # A partial message (a turn reported at its start) gets no total: merged with the later
    # complete message, a partial total would overwrite the right one.
    only_input = turn(input_tokens=42)
    enrich_turn(only_input, PRICES)
    assert not only_input.HasField("total_tokens")
    assert only_input.HasField("input_cost") and not only_input.HasField("total_cost")
    none = turn()
    enrich_turn(none, PRICES)
    assert not none.HasField("total_tokens")
    sent = turn(input_tokens=1, output_tokens=1, total_tokens=10)
    enrich_turn(sent, PRICES)
    assert sent.total_tokens == 10


def test_costs_are_priced_from_the_table_for_every_token_kind() -> None:
    t = turn(
        "anthropic/claude-sonnet-4-5-20250929",
        input_tokens=1_000,
        output_tokens=500,
        cache_read_tokens=2_000,
        cache_creation_tokens=1_500,
    )
    assert enrich_turn(t, PRICES) is True
    assert t.input_cost == pytest.approx(0.003)  # 1,000 x $3 / 1M
    assert t.output_cost == pytest.approx(0.0075)  # 500 x $15 / 1M
    assert t.cache_read_cost == pytest.approx(0.0006)  # 2,000 x $0.30 / 1M
    assert t.cache_creation_cost == pytest.approx(0.005625)  # 1,500 x $3.75 / 1M
    assert t.total_cost == pytest.approx(0.016725)
    assert t.price_version == "2026-11-01"


def test_only_the_token_kinds_sent_are_priced() -> None:
    t = turn("gpt-4o-mini", input_tokens=2_000_000)
    assert enrich_turn(t, PRICES) is True
    assert t.input_cost == pytest.approx(0.30)
    assert not t.HasField("total_cost")  # no output tokens yet: the total waits for them
    assert not any(t.HasField(f) for f in ("output_cost", "cache_read_cost", "cache_creation_cost"))


def test_zero_tokens_cost_zero() -> None:
    t = turn(input_tokens=0, output_tokens=0)
    enrich_turn(t, PRICES)
    assert t.HasField("total_cost") and t.total_cost == 0.0


def test_the_price_in_force_at_started_at_is_used() -> None:
    t = turn("o3", input_tokens=1_000_000)
    t.started_at.FromDatetime(dt.datetime(2025, 5, 1, tzinfo=dt.UTC))
    enrich_turn(t, PRICES)
    assert t.input_cost == pytest.approx(10.0)  # before the June 2025 price cut to $2


def test_sent_costs_are_kept_and_only_the_total_completed() -> None:
    t = turn(input_tokens=1_000_000, output_tokens=1_000_000, input_cost=1.25, output_cost=0.5)
    assert enrich_turn(t, PRICES) is True
    assert (t.input_cost, t.output_cost) == (1.25, 0.5)
    assert t.total_cost == pytest.approx(1.75)
    assert not t.HasField("cache_read_cost") and t.price_version == ""


def test_a_sent_total_alone_is_kept_and_nothing_is_priced() -> None:
    t = turn(input_tokens=1_000_000, total_cost=0.01)
    enrich_turn(t, PRICES)
    assert t.total_cost == 0.01
    assert not t.HasField("input_cost") and t.price_version == ""


def test_an_unknown_model_leaves_costs_absent_and_reports_it() -> None:
    t = turn("llama-3.1-70b", input_tokens=1_000, output_tokens=10)
    assert enrich_turn(t, PRICES) is False
    assert not any(t.HasField(f) for f in COSTS)
    assert t.price_version == "" and t.total_tokens == 1_010


def test_unknown_model_with_its_own_costs_or_nothing_to_price_is_not_unpriced() -> None:
    assert enrich_turn(turn("llama-3.1-70b", input_tokens=5, input_cost=0.1), PRICES) is True
    assert enrich_turn(turn("llama-3.1-70b"), PRICES) is True  # no tokens yet


def test_aem_follows_kubiya() -> None:
    t = turn("claude-opus-4-1", tools_called_count=100)
    timed(t, 90)
    enrich_turn(t, PRICES)
    assert t.duration_ms == 90_000
    assert t.runtime_minutes == pytest.approx(1.5)
    assert t.model_weight == 2.0
    assert t.tool_calls_weight == pytest.approx(2.0)  # max(1, 100 / 50)
    assert t.aem_value == pytest.approx(6.0)  # 1.5 x 2.0 x 2.0
    assert t.aem_cost == pytest.approx(6.0 * AEM_USD_PER_MINUTE)


@pytest.mark.parametrize(("count", "weight"), [(None, 1.0), (0, 1.0), (50, 1.0), (75, 1.5)])
def test_tool_calls_weight(count: int | None, weight: float) -> None:
    t = turn() if count is None else turn(tools_called_count=count)
    enrich_turn(t, PRICES)
    assert t.tool_calls_weight == pytest.approx(weight)


@pytest.mark.parametrize(
    ("model", "weight"),
    [
        ("claude-opus-4-1-20250805", 2.0),
        ("gpt-4", 2.0),
        ("gpt-4-turbo", 2.0),
        ("gpt-4.1", 2.0),
        ("gpt-4o", 1.3),
        ("openai/GPT-4o-2024-08-06", 1.3),
        ("gpt-4o-mini", 0.7),
        ("claude-sonnet-4-5", 1.0),
        ("claude-haiku-4-5", 0.5),
        ("claude-3-5-haiku-20241022", 0.5),
        ("gpt-5", 1.0),
        ("gemini-2.5-pro", 1.0),
        ("", 1.0),
    ],
)
def test_model_weights(model: str, weight: float) -> None:
    assert model_weight(model) == weight


def test_sent_aem_fields_are_kept_and_the_rest_derived_from_them() -> None:
    t = turn("claude-haiku-4-5", duration_ms=60_000, runtime_minutes=2.0, aem_value=3.0)
    enrich_turn(t, PRICES)
    assert t.runtime_minutes == 2.0 and t.aem_value == 3.0
    assert t.model_weight == 0.5
    assert t.aem_cost == pytest.approx(0.45)
    kept = turn(duration_ms=60_000, model_weight=4.0, aem_cost=9.0)
    enrich_turn(kept, PRICES)
    assert kept.aem_value == pytest.approx(4.0) and kept.aem_cost == 9.0


def test_without_a_duration_there_is_no_aem() -> None:
    t = turn()
    enrich_turn(t, PRICES)
    assert not any(t.HasField(f) for f in ("runtime_minutes", "aem_value", "aem_cost"))
    assert t.model_weight == 1.0 and t.tool_calls_weight == 1.0


def test_response_preview_at_the_limit_is_untouched() -> None:
    t = turn(response_preview="p" * RESPONSE_PREVIEW_LIMIT)
    enrich_turn(t, PRICES)
    assert len(t.response_preview) == 500 and not t.HasField("response_preview_size")


def test_response_preview_over_the_limit_is_cut_and_its_size_kept() -> None:
    t = turn(response_preview="é" * 501)
    enrich_turn(t, PRICES)
    assert t.response_preview == "é" * 500  # characters, not bytes
    assert t.response_preview_size == 501
    sent = turn(response_preview="p" * 900, response_preview_size=5_000)
    enrich_turn(sent, PRICES)
    assert len(sent.response_preview) == 500 and sent.response_preview_size == 5_000


def test_tool_output_at_the_limit_is_untouched_and_measured() -> None:
    call = records_pb2.ToolCall(tool_output="o" * TOOL_OUTPUT_LIMIT)
    enrich_tool_call(call)
    assert call.tool_output == "o" * 10_000 and call.tool_output_size == 10_000


def test_tool_output_over_the_limit_is_truncated_like_kubiya() -> None:
    call = records_pb2.ToolCall(tool_output="x" * 10_000 + "y")
    enrich_tool_call(call)
    assert call.tool_output == "x" * 10_000 + "... [truncated]"
    assert call.tool_output_size == 10_001
    sent = records_pb2.ToolCall(tool_output="z" * 20_000, tool_output_size=123_456)
    enrich_tool_call(sent)
    assert sent.tool_output_size == 123_456 and len(sent.tool_output) == 10_015


def test_tool_output_size_needs_an_output() -> None:
    absent = records_pb2.ToolCall()
    enrich_tool_call(absent)
    assert not absent.HasField("tool_output_size")
    empty = records_pb2.ToolCall(tool_output="")
    enrich_tool_call(empty)
    assert empty.HasField("tool_output_size") and empty.tool_output_size == 0


@pytest.mark.parametrize(
    ("completed", "error", "status"),
    [
        (True, "", records_pb2.TASK_STATUS_COMPLETED),
        (True, "boom", records_pb2.TASK_STATUS_FAILED),
        (False, "boom", records_pb2.TASK_STATUS_UNSPECIFIED),
    ],
)
def test_an_ended_task_without_status_gets_one(completed: bool, error: str, status: int) -> None:
    task = records_pb2.Task(execution_id="e", task_description="d", error_message=error)
    if completed:
        task.completed_at.FromDatetime(dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    enrich_task(task)
    assert task.status == status


def test_a_sent_task_status_is_never_overridden() -> None:
    task = records_pb2.Task(
        execution_id="e", task_description="d", status=records_pb2.TASK_STATUS_RUNNING
    )
    task.completed_at.FromDatetime(dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    enrich_task(task)
    assert task.status == records_pb2.TASK_STATUS_RUNNING
