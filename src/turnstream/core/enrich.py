"""Core, step 2 of validate -> enrich -> rows: derive what the worker left out (no I/O).

Every function mutates a *validated* record in place and only fills fields that are absent: a
value the worker sent is never overwritten, so a worker that computes its own costs or AEM (as
Kubiya's do) keeps them. Derived values follow Kubiya's definitions (shared/seeds/README.md).
"""

from __future__ import annotations

import datetime as dt
from typing import TypeAlias

from google.protobuf.message import Message

from turnstream.core.pricing import PriceTable
from turnstream.v1 import records_pb2

AEM_USD_PER_MINUTE = 0.15
TOOL_OUTPUT_LIMIT = 10_000
TOOL_OUTPUT_MARKER = "... [truncated]"
RESPONSE_PREVIEW_LIMIT = 500
# tool_calls_weight = max(1, tools_called_count / TOOLS_PER_WEIGHT): heavy tool use counts more.
TOOLS_PER_WEIGHT = 50

# Kubiya's model weights, matched as substrings of the lower-cased name in this order: the more
# specific names first, since "gpt-4o-mini" contains "gpt-4o", which contains "gpt-4".
MODEL_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("gpt-4o-mini", 0.7),
    ("gpt-4o", 1.3),
    ("gpt-4", 2.0),
    ("opus", 2.0),
    ("sonnet", 1.0),
    ("haiku", 0.5),
)
DEFAULT_MODEL_WEIGHT = 1.0

# (tokens field, cost field, Price attribute) for the four priced token kinds.
_COSTS = (
    ("input_tokens", "input_cost", "input"),
    ("output_tokens", "output_cost", "output"),
    ("cache_read_tokens", "cache_read_cost", "cache_read"),
    ("cache_creation_tokens", "cache_creation_cost", "cache_creation"),
)
_COST_FIELDS = (*(cost for _, cost, _ in _COSTS), "total_cost")
_NANOS_PER_MS = 1_000_000
_MS_PER_MINUTE = 60_000
_INT64_MAX = 2**63 - 1

_Timed: TypeAlias = (
    records_pb2.Turn | records_pb2.ToolCall | records_pb2.Task | records_pb2.Execution
)


def enrich_turn(turn: records_pb2.Turn, prices: PriceTable) -> bool:
    """Derive duration, total tokens, costs, AEM and the preview size of one turn. Returns False
    when costs are missing because the model is not in the price table (the caller counts it)."""
    _derive_duration(turn)
    # Totals only from a message that carries both parts: a turn reported at its start (input
    # only) and again at completion is merged field by field, and a partial total would
    # overwrite the complete one.
    if (
        not turn.HasField("total_tokens")
        and turn.HasField("input_tokens")
        and turn.HasField("output_tokens")
    ):
        total = turn.input_tokens + turn.output_tokens
        if total <= _INT64_MAX:  # two absurd counts would overflow the field and fail the request
            turn.total_tokens = total
    priced = _derive_costs(turn, prices)
    _derive_aem(turn)
    if len(turn.response_preview) > RESPONSE_PREVIEW_LIMIT:
        if not turn.HasField("response_preview_size"):
            turn.response_preview_size = len(turn.response_preview)
        turn.response_preview = turn.response_preview[:RESPONSE_PREVIEW_LIMIT]
    return priced


def enrich_tool_call(call: records_pb2.ToolCall) -> None:
    """Derive duration and the original output size; truncate the output as Kubiya does."""
    _derive_duration(call)
    if not call.HasField("tool_output"):
        return
    output = call.tool_output
    if not call.HasField("tool_output_size"):
        call.tool_output_size = len(output)
    if len(output) > TOOL_OUTPUT_LIMIT:
        call.tool_output = output[:TOOL_OUTPUT_LIMIT] + TOOL_OUTPUT_MARKER


def enrich_task(task: records_pb2.Task) -> None:
    """Derive the duration of one task, and its status when the worker left it unspecified
    but the task plainly ended: `completed_at` set means completed, or failed when it carries
    an error_message. (Otherwise UNSPECIFIED stays absent: keep what is stored.)"""
    _derive_duration(task)
    if task.status == records_pb2.TASK_STATUS_UNSPECIFIED and task.HasField("completed_at"):
        task.status = (
            records_pb2.TASK_STATUS_FAILED
            if task.error_message
            else records_pb2.TASK_STATUS_COMPLETED
        )


def enrich_execution(execution: records_pb2.Execution) -> None:
    """Derive the duration of one execution."""
    _derive_duration(execution)


def model_weight(model: str) -> float:
    """Kubiya's AEM weight of a model name (unknown models weigh 1.0)."""
    name = model.lower()
    return next((w for part, w in MODEL_WEIGHTS if part in name), DEFAULT_MODEL_WEIGHT)


def _derive_duration(record: _Timed) -> None:
    if record.HasField("duration_ms"):
        return
    if not (record.HasField("started_at") and record.HasField("completed_at")):
        return
    started, completed = record.started_at, record.completed_at
    nanos = (completed.seconds - started.seconds) * 1_000_000_000 + (
        completed.nanos - started.nanos
    )
    if nanos >= 0:  # validation rejects the reverse; never store a negative duration
        record.duration_ms = nanos // _NANOS_PER_MS


def _derive_costs(turn: records_pb2.Turn, prices: PriceTable) -> bool:
    sent = [name for name in _COST_FIELDS if _has(turn, name)]
    if sent:
        # The worker priced the turn itself: keep its numbers, only complete the total.
        if not turn.HasField("total_cost") and _complete(turn, "input_cost", "output_cost"):
            turn.total_cost = sum(getattr(turn, name) for name in sent)
        return True
    counted = [(tokens, cost, rate) for tokens, cost, rate in _COSTS if _has(turn, tokens)]
    if not counted:
        return True  # nothing to price yet (e.g. a turn reported at its start)
    price = prices.lookup(turn.model, _price_time(turn))
    if price is None:
        return False
    total = 0.0
    for tokens, cost, rate in counted:
        value = getattr(turn, tokens) / 1e6 * getattr(price, rate)
        setattr(turn, cost, value)
        total += value
    if _complete(turn, "input_tokens", "output_tokens"):
        turn.total_cost = total
    turn.price_version = price.version
    return True


def _complete(turn: records_pb2.Turn, *names: str) -> bool:
    return all(turn.HasField(name) for name in names)  # type: ignore[arg-type]


def _has(message: Message, name: str) -> bool:
    # Message.HasField takes any name; the generated stubs only literal ones, not table entries.
    return message.HasField(name)


def _price_time(turn: records_pb2.Turn) -> dt.datetime:
    # started_at is required for a valid turn; the fallbacks keep this total for other callers.
    if turn.HasField("started_at"):
        return turn.started_at.ToDatetime(dt.UTC)
    if turn.HasField("completed_at"):
        return turn.completed_at.ToDatetime(dt.UTC)
    return dt.datetime.max.replace(tzinfo=dt.UTC)  # the latest price


def _derive_aem(turn: records_pb2.Turn) -> None:
    if not turn.HasField("runtime_minutes") and turn.HasField("duration_ms"):
        turn.runtime_minutes = turn.duration_ms / _MS_PER_MINUTE
    if not turn.HasField("model_weight"):
        turn.model_weight = model_weight(turn.model)
    if not turn.HasField("tool_calls_weight"):
        count = turn.tools_called_count if turn.HasField("tools_called_count") else 0
        turn.tool_calls_weight = max(1.0, count / TOOLS_PER_WEIGHT)
    if not turn.HasField("aem_value") and turn.HasField("runtime_minutes"):
        turn.aem_value = turn.runtime_minutes * turn.model_weight * turn.tool_calls_weight
    if not turn.HasField("aem_cost") and turn.HasField("aem_value"):
        turn.aem_cost = turn.aem_value * AEM_USD_PER_MINUTE
