"""Core: turns validated, enriched turnstream.v1 records into database rows (no I/O).

Rows are plain dicts keyed by column name; None means "absent" and keeps the stored value when
the writer merges. This is the one place where messages become rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from turnstream.core import deadletter, fastpath
from turnstream.v1 import records_pb2

Row = dict[str, Any]

_clean = deadletter.clean_text
# Generated per record type by core/fastpath.py (compiled when it can be): see there.
enum_word = fastpath.enum_word
timestamp_value = fastpath.timestamp_value
RowOf = fastpath.RowOf
make_row = fastpath.make_row


_TURN = make_row(records_pb2.Turn.DESCRIPTOR)
_TOOL_CALL = make_row(records_pb2.ToolCall.DESCRIPTOR)
_TASK = make_row(records_pb2.Task.DESCRIPTOR)
_EXECUTION = make_row(records_pb2.Execution.DESCRIPTOR)


_digest = deadletter.digest


def turn_key(turn: records_pb2.Turn) -> str:
    """The turn's identity inside its execution: turn_id, else its number."""
    return turn.turn_id or f"#{turn.turn_number}"


def tool_call_key(call: records_pb2.ToolCall) -> str:
    """tool_use_id, else a digest of what identifies an unnamed call."""
    if call.tool_use_id:
        return call.tool_use_id
    return "~" + _digest(call.turn_id, call.tool_name, call.started_at.ToJsonString())


def task_key(task: records_pb2.Task) -> str:
    """task_id, else its number, else a digest of its description."""
    if task.task_id:
        return task.task_id
    if task.HasField("task_number"):
        return f"#{task.task_number}"
    return "~" + _digest(task.task_description)


Structs = dict[str, Any] | None


def turn_row(tenant_id: str, turn: records_pb2.Turn, structs: Structs = None) -> Row:
    row = _TURN(turn, tenant_id, structs)
    row["record_key"] = _clean(turn_key(turn))
    return row


def tool_call_row(tenant_id: str, call: records_pb2.ToolCall, structs: Structs = None) -> Row:
    row = _TOOL_CALL(call, tenant_id, structs)
    row["record_key"] = _clean(tool_call_key(call))
    return row


def task_row(tenant_id: str, task: records_pb2.Task, structs: Structs = None) -> Row:
    row = _TASK(task, tenant_id, structs)
    row["record_key"] = _clean(task_key(task))
    return row


def execution_row(tenant_id: str, execution: records_pb2.Execution, structs: Structs = None) -> Row:
    return _EXECUTION(execution, tenant_id, structs)


def widen_span(spans: dict[str, list[dt.datetime | None]], row: Row) -> None:
    """Track first start and last completion per execution, for derived execution rows."""
    span = spans.setdefault(row["execution_id"], [None, None])
    started, completed = row.get("started_at"), row.get("completed_at")
    if started is not None and (span[0] is None or started < span[0]):
        span[0] = started
    if completed is not None and (span[1] is None or completed > span[1]):
        span[1] = completed


def span_rows(tenant_id: str, spans: dict[str, list[dt.datetime | None]]) -> list[Row]:
    """The derived execution rows of `spans` (widen_span's), one per execution."""
    return [
        {"tenant_id": tenant_id, "execution_id": e, "started_at": s, "completed_at": c}
        for e, (s, c) in spans.items()
    ]
