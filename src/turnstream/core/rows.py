"""Core: turns validated, enriched turnstream.v1 records into database rows (no I/O).

Rows are plain dicts keyed by column name; None means "absent" and keeps the stored value when
the writer merges. This is the one place where messages become rows.
"""

from __future__ import annotations

import datetime as dt
import keyword
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from turnstream.core import deadletter
from turnstream.v1 import records_pb2

Row = dict[str, Any]

_STATUS_PREFIX = {"TaskStatus": "TASK_STATUS_", "ExecutionStatus": "EXECUTION_STATUS_"}
_TIMESTAMP = "google.protobuf.Timestamp"


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


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp_value(ts: Any) -> dt.datetime:
    # Timestamp.ToDatetime costs several times this; it is called for every time of every row.
    return _EPOCH + dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def _slow_json(message: Message) -> Any:
    return _clean_json(json_format.MessageToDict(message))


# A row builder per message type, generated once from its descriptor: an attribute read per
# field (presence asked only when a value is zero, False or empty) instead of `ListFields()`,
# whose (descriptor, value) tuples cost more than the fields they list. Absent fields are None,
# exactly what ListFields() would leave out: "keep the stored value".
RowOf = Callable[[Any, str, "dict[str, Any] | None"], Row]


def _row_source(descriptor: Descriptor, env: dict[str, Any]) -> list[str]:
    """The body of row(m, tenant_id, structs), field by field in descriptor order. `structs`:
    Struct fields already converted (core/fastpath.py does it while validating)."""
    body, items = [], ["'tenant_id': tenant_id"]
    for f in descriptor.fields:
        name, var = f.name, f"v_{f.name}"
        if f.is_repeated:
            body += [f"{var} = m.{name}", f"{var} = [clean(s) for s in {var}] if {var} else None"]
        elif f.message_type is not None and f.message_type.full_name == _TIMESTAMP:
            body.append(f"{var} = ts(m.{name}) if m.HasField({name!r}) else None")
        elif f.message_type is not None:  # google.protobuf.Struct
            body += [
                f"if m.HasField({name!r}):",
                f"    {var} = structs[{name!r}] if structs is not None and {name!r} in structs "
                f"else slow_json(m.{name})",
                "else:",
                f"    {var} = None",
            ]
        elif f.enum_type is not None:
            env[f"words_{name}"] = {v.number: enum_word(f, v.number) for v in f.enum_type.values}
            body.append(f"{var} = words_{name}.get(m.{name})")
        else:
            body.append(f"{var} = m.{name}")
            if f.has_presence:
                # Zero, False and "" are ambiguous: only then ask whether the field is set.
                body.append(f"if not {var} and not m.HasField({name!r}): {var} = None")
            else:
                body.append(f"if not {var}: {var} = None")
            if f.type == FieldDescriptor.TYPE_STRING:
                body.append(f"elif '\\x00' in {var}: {var} = clean({var})")
        items.append(f"{name!r}: {var}")
    body.append("return {" + ", ".join(items) + "}")
    return body


def make_row(descriptor: Descriptor) -> RowOf:
    """The row builder of one message type (tenant_id first, then every field)."""
    if not all(f.name.isidentifier() and not keyword.iskeyword(f.name) for f in descriptor.fields):
        raise ValueError(f"{descriptor.full_name}: a field name is not a Python identifier")
    env: dict[str, Any] = {"clean": _clean, "ts": timestamp_value, "slow_json": _slow_json}
    body = _row_source(descriptor, env)
    source = "def row(m, tenant_id, structs):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, f"<turnstream.core.rows {descriptor.name}>", "exec"), env)
    return env["row"]  # type: ignore[no-any-return]


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
