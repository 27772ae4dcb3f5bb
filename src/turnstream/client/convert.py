"""SDK: what a caller passes (a message, or keyword arguments with datetimes, dicts and status
strings) becomes a turnstream.v1 record here, once, before it is buffered or sent."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, TypeVar

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from turnstream.v1 import ingest_pb2, records_pb2

M = TypeVar("M", bound=Message)

RecordMessage = records_pb2.Turn | records_pb2.ToolCall | records_pb2.Task | records_pb2.Execution

KIND_OF: dict[type[Message], str] = {
    records_pb2.Turn: "turn",
    records_pb2.ToolCall: "tool_call",
    records_pb2.Task: "task",
    records_pb2.Execution: "execution",
}

# Spellings other APIs use for our enum values (Kubiya says "in_progress" for running).
_ALIASES = {"IN_PROGRESS": "RUNNING", "CANCELED": "CANCELLED", "SUCCEEDED": "COMPLETED"}


def build(cls: type[M], value: M | Mapping[str, Any] | None = None, /, **fields: Any) -> M:
    """A `cls` message from a message, a mapping, keyword arguments, or a message plus keyword
    overrides. Datetimes (naive ones are taken as UTC, as protobuf does), RFC 3339 strings and
    epoch seconds fill Timestamps; dicts fill Structs; names such as "completed" or
    "TASK_STATUS_COMPLETED" fill enums; None leaves a field unset.

    >>> build(records_pb2.Task, execution_id="e1", task_description="plan", status="in_progress")
    """
    if isinstance(value, cls):
        if not fields:
            return value
        message = cls()
        message.CopyFrom(value)
    elif value is None:
        message = cls()
    elif isinstance(value, Mapping):
        message = cls()
        fields = {**value, **fields}
    else:
        raise TypeError(
            f"expected a {cls.DESCRIPTOR.name} or a mapping, got {type(value).__name__}"
        )
    _fill(message, fields)
    return message


def to_record(kind: str, value: Any, fields: Mapping[str, Any], execution_id: str = "") -> Any:
    """An AppendRequest Record holding one record of `kind`; `execution_id` fills an empty one."""
    cls = RECORD_CLASSES[kind]
    message = build(cls, value, **fields)
    try:
        record = ingest_pb2.Record(**{kind: message})
        # Refused here rather than by the server, which could only answer the whole message
        # INVALID_ARGUMENT and end the stream: every record buffered with it would fail too.
        # Encoding never fails, parsing does past the parsers' depth limit, and the server
        # parses the record two levels down in an AppendRequest.
        envelope = ingest_pb2.AppendRequest(batch=ingest_pb2.AppendBatch(records=[record]))
        ingest_pb2.AppendRequest.FromString(envelope.SerializeToString())
    except DecodeError:
        raise ValueError(
            f"the {kind} is nested too deeply for protobuf parsers (100 levels, about 32 levels "
            "of dicts in a Struct field): flatten it"
        ) from None
    if execution_id:
        inner = getattr(record, kind)
        if not inner.execution_id:
            inner.execution_id = execution_id
    return record


RECORD_CLASSES: dict[str, type[Message]] = {kind: cls for cls, kind in KIND_OF.items()}


def _fill(message: Message, fields: Mapping[str, Any]) -> None:
    descriptor = message.DESCRIPTOR
    for name, value in fields.items():
        if value is None:
            continue
        field = descriptor.fields_by_name.get(name)
        if field is None:
            raise TypeError(f"{descriptor.name} has no field {name!r}")
        try:
            if field.is_repeated:
                if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                    raise TypeError(f"expected a list, got {type(value).__name__}")
                container = getattr(message, name)
                del container[:]
                for item in value:
                    if field.type == FieldDescriptor.TYPE_MESSAGE:
                        _set_message(container.add(), item)
                    else:
                        container.append(_scalar(field, item))
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                _set_message(getattr(message, name), value)
            else:
                setattr(message, name, _scalar(field, value))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{descriptor.name}.{name}: {exc}") from None


def _set_message(target: Message, value: Any) -> None:
    if isinstance(value, Message):
        target.CopyFrom(value)
    elif isinstance(target, timestamp_pb2.Timestamp):
        _set_timestamp(target, value)
    elif isinstance(target, struct_pb2.Struct):
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a dict, got {type(value).__name__}")
        target.Clear()
        target.update(value)
    elif isinstance(value, Mapping):
        _fill(target, value)
    else:
        raise TypeError(f"expected a {target.DESCRIPTOR.name} or a dict")


def _set_timestamp(target: timestamp_pb2.Timestamp, value: Any) -> None:
    if isinstance(value, dt.datetime):
        target.FromDatetime(value)
    elif isinstance(value, str):
        target.FromJsonString(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        target.FromNanoseconds(round(value * 1e9))
    else:
        raise TypeError(
            f"expected a datetime, an RFC 3339 string or epoch seconds, got {type(value).__name__}"
        )


def _scalar(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_value(field.enum_type, value)
    return value


def enum_value(enum: EnumDescriptor, value: Any) -> int:
    """An enum number from a number or a name: "completed", "COMPLETED", "TASK_STATUS_COMPLETED",
    and "in_progress" (Kubiya) for RUNNING."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise TypeError(f"expected a {enum.name} name or number, got {type(value).__name__}")
    names = _enum_names(enum)
    key = value.strip().upper().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key in names:
        return names[key]
    choices = ", ".join(sorted(k.lower() for k in _short(enum)))
    raise ValueError(f"{value!r} is not a {enum.name}; use one of {choices}")


@cache
def _enum_names(enum: EnumDescriptor) -> dict[str, int]:
    prefix = _prefix(enum)
    out: dict[str, int] = {}
    for v in enum.values:
        out[v.name] = v.number
        if v.name.startswith(prefix):
            out[v.name[len(prefix) :]] = v.number
    return out


@cache
def _short(enum: EnumDescriptor) -> frozenset[str]:
    prefix = _prefix(enum)
    return frozenset(
        v.name[len(prefix) :]
        for v in enum.values
        if v.name.startswith(prefix) and not v.name.endswith("_UNSPECIFIED")
    )


def _prefix(enum: EnumDescriptor) -> str:
    """TASK_STATUS_ for TaskStatus (Buf style: values are prefixed with the enum's name)."""
    out = []
    for i, ch in enumerate(enum.name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.upper())
    return "".join(out) + "_"
