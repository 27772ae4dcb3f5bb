"""Bench: realistic records, as a Kubiya worker sends them — every field of a turn (~30, with
its own costs and AEM, a small `metrics` Struct), and every few turns a tool call with a
`tool_input` Struct and an output of realistic size. The server-side targets hold for these."""

from __future__ import annotations

import datetime as dt

from turnstream.v1 import records_pb2

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
# One tool call per this many turns (in a one-record-per-message stream too).
TOOL_CALL_EVERY = 4
_OUTPUT = (
    "============================= test session starts ==============================\n"
    "collected 42 items\n\ntests/test_orders.py ..........F.........\n"
) * 12  # ~1.7 KB of test runner output


def make_turn(execution: str, n: int) -> records_pb2.Turn:
    """A turn with every field a Kubiya worker fills (costs and AEM priced by the worker)."""
    inp, out = 1200 + n % 97, 300 + n % 31
    t = records_pb2.Turn(
        execution_id=execution,
        turn_number=n,
        turn_id=f"{execution}-t{n}",
        model="claude-sonnet-4-5",
        model_provider="anthropic",
        duration_ms=850,
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=4000,
        cache_creation_tokens=120,
        total_tokens=inp + out,
        input_cost=inp * 3e-6,
        output_cost=out * 15e-6,
        cache_read_cost=4000 * 0.3e-6,
        cache_creation_cost=120 * 3.75e-6,
        total_cost=inp * 3e-6 + out * 15e-6 + 4000 * 0.3e-6 + 120 * 3.75e-6,
        finish_reason="tool_use",
        response_preview="I'll run the failing test and read the traceback before changing "
        "anything in the order service.",
        tools_called_count=2,
        tools_called_names=["read_file", "run_tests"],
        runtime_minutes=850 / 60_000,
        model_weight=1.0,
        tool_calls_weight=1.0,
        aem_value=850 / 60_000,
        aem_cost=850 / 60_000 * 0.15,
        parent_id=f"{execution}-t{n - 1}" if n > 1 else "",
        response_preview_size=102,
        price_version="2026-10",
    )
    t.started_at.FromDatetime(T0 + dt.timedelta(seconds=n))
    t.completed_at.FromDatetime(T0 + dt.timedelta(seconds=n, milliseconds=850))
    t.metrics.update(
        {
            "latency_first_token_ms": 410 + n % 50,
            "retries": 0,
            "stop_sequence": None,
            "cached": True,
        }
    )
    return t


def make_tool_call(execution: str, n: int) -> records_pb2.ToolCall:
    """A tool call with a small input Struct and ~1.7 KB of output."""
    c = records_pb2.ToolCall(
        execution_id=execution,
        turn_id=f"{execution}-t{n}",
        tool_name="run_tests",
        tool_use_id=f"toolu_{execution}_{n}",
        duration_ms=1_200,
        tool_output=_OUTPUT,
        success=True,
    )
    c.started_at.FromDatetime(T0 + dt.timedelta(seconds=n, milliseconds=900))
    c.completed_at.FromDatetime(T0 + dt.timedelta(seconds=n + 2, milliseconds=100))
    c.tool_input.update(
        {"path": "tests/test_orders.py", "args": ["-x", "-q"], "timeout_s": 120, "env": {"CI": "1"}}
    )
    return c


def make_records(execution: str, start: int, count: int) -> list[tuple[str, object]]:
    """`count` records from position `start`: turns, and a tool call every TOOL_CALL_EVERY."""
    out: list[tuple[str, object]] = []
    for i in range(start, start + count):
        if i % TOOL_CALL_EVERY == TOOL_CALL_EVERY - 1:
            out.append(("tool_call", make_tool_call(execution, i)))
        else:
            out.append(("turn", make_turn(execution, i)))
    return out
