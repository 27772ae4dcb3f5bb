"""Core: turns validated, enriched turnstream.v1 records into database rows (no I/O).

Rows are plain dicts keyed by column name; None means "absent" and keeps the stored value when
the writer merges. This is the one place where messages become rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from turnstream.core import deadletter
from turnstream.v1 import records_pb2

Row = dict[str, Any]

_STATUS_PREFIX = {"TaskStatus": "TASK_STATUS_", "ExecutionStatus": "EXECUTION_STATUS_"}


_clean = deadletter.clean_text
_clean_json = deadletter.clean_json


def enum_word(field: FieldDescriptor, number: int) -> str | None:
    """TASK_STATUS_RUNNING -> "running"; 0 (unspecified) -> None."""
    if number == 0:
        return None
    enum = field.enum_type
    assert enum is not None
    value = enum.values_by_number.get(number)
    if value is None:
        return None
    prefix = "".join("_" + c if c.isupper() else c for c in enum.name).lstrip("_").upper() + "_"
    return value.name.removeprefix(prefix).lower()


Convert = Callable[[Any], Any]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _timestamp(ts: Any) -> dt.datetime:
    # Timestamp.ToDatetime costs several times this; it is called for every time of every row.
    return _EPOCH + dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def _converter(field: FieldDescriptor) -> Convert:
    """How a set field's value becomes a column value."""
    if field.is_repeated:
        return lambda v: [_clean(s) for s in v]
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return _timestamp
        return lambda v: _clean_json(json_format.MessageToDict(v))  # google.protobuf.Struct
    if field.enum_type is not None:
        words = {value.number: enum_word(field, value.number) for value in field.enum_type.values}
        return lambda v: words.get(v)
    if field.type == FieldDescriptor.TYPE_STRING:
        return _clean
    return lambda v: v


class _Plan:
    """Per message type: every column None, then a converter per field that is set."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.template: Row = {f.name: None for f in descriptor.fields}
        self.convert: dict[str, Convert] = {f.name: _converter(f) for f in descriptor.fields}


_TURN = _Plan(records_pb2.Turn.DESCRIPTOR)
_TOOL_CALL = _Plan(records_pb2.ToolCall.DESCRIPTOR)
_TASK = _Plan(records_pb2.Task.DESCRIPTOR)
_EXECUTION = _Plan(records_pb2.Execution.DESCRIPTOR)


def _row(plan: _Plan, msg: Message, tenant_id: str) -> Row:
    # ListFields() yields only what is set (implicit-presence strings only when non-empty, enums
    # only when not UNSPECIFIED), so absent fields stay None: "keep the stored value".
    row: Row = {"tenant_id": tenant_id, **plan.template}
    convert = plan.convert
    for field, value in msg.ListFields():
        row[field.name] = convert[field.name](value)
    return row


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


def turn_row(tenant_id: str, turn: records_pb2.Turn) -> Row:
    row = _row(_TURN, turn, tenant_id)
    row["record_key"] = _clean(turn_key(turn))
    return row


def tool_call_row(tenant_id: str, call: records_pb2.ToolCall) -> Row:
    row = _row(_TOOL_CALL, call, tenant_id)
    row["record_key"] = _clean(tool_call_key(call))
    return row


def task_row(tenant_id: str, task: records_pb2.Task) -> Row:
    row = _row(_TASK, task, tenant_id)
    row["record_key"] = _clean(task_key(task))
    return row


def execution_row(tenant_id: str, execution: records_pb2.Execution) -> Row:
    return _row(_EXECUTION, execution, tenant_id)
