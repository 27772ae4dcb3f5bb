"""Door translation: JSON in the Kubiya analytics format <-> turnstream.v1 messages, driven by the
message descriptors; used by `turnstream send` and the REST gateway (no I/O, no validation).

How Kubiya JSON differs from the proto3 JSON mapping, and what this module accepts:
- `null` means absent; keys with a null value are skipped.
- Enums are lower-case words: task/execution status "pending", "in_progress" (= RUNNING),
  "running", "completed", "failed", "cancelled" (also "canceled"; executions also "queued" =
  PENDING); triggered_by "manual", "endpoint", "scheduled". Case is ignored and the proto names
  ("TASK_STATUS_RUNNING") are accepted too; numbers are not.
- Times are strings only: RFC 3339 with "Z" or an offset, or ISO 8601 without a zone (what
  Python's `datetime.isoformat()` writes for a naive datetime), which is taken as UTC. Epoch
  numbers are refused because Kubiya types these fields as strings and a bare number is
  ambiguous (HoneyHive sends milliseconds, most Unix tools seconds).
- Float fields take JSON ints; int fields take floats with an integral value (12.0), never bools,
  and must fit the proto type (int32/int64). 64-bit ints are JSON numbers, not strings.
- Unknown keys are ignored, as Kubiya (FastAPI) does, and reported through `unknown` so the
  caller can warn.

Only type and shape errors are reported here (FastAPI-style `ParseError`s); required fields,
negative numbers and time order are the core's rules. A record with errors still yields a
message holding every field that did parse, and every element of a JSON list yields one message
(empty when the element is not an object), so indices in the request equal indices in the JSON.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from turnstream.formats.values import integral
from turnstream.v1 import ingest_pb2, records_pb2

M = TypeVar("M", bound=Message)

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ParseError:
    """One type or shape error, as FastAPI reports it: loc=("turns", 2, "started_at")."""

    loc: Loc
    msg: str
    type: str

    def __str__(self) -> str:
        return f"{format_loc(self.loc) or '(body)'}: {self.msg}"


def format_loc(loc: Loc) -> str:
    """("turns", 2, "started_at") -> "turns[2].started_at", the server's field-path style."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# --- JSON -> messages -------------------------------------------------------------------------


def turn_from_json(
    obj: Any, *, unknown: list[Loc] | None = None
) -> tuple[records_pb2.Turn, list[ParseError]]:
    """A Turn from a Kubiya TurnMetricsCreate object; unknown keys are appended to `unknown`."""
    return _from_json(records_pb2.Turn(), obj, unknown)


def tool_call_from_json(
    obj: Any, *, unknown: list[Loc] | None = None
) -> tuple[records_pb2.ToolCall, list[ParseError]]:
    """A ToolCall from a Kubiya ToolCallCreate object."""
    return _from_json(records_pb2.ToolCall(), obj, unknown)


def task_from_json(
    obj: Any, *, unknown: list[Loc] | None = None
) -> tuple[records_pb2.Task, list[ParseError]]:
    """A Task from a Kubiya TaskCreate object."""
    return _from_json(records_pb2.Task(), obj, unknown)


def execution_from_json(
    obj: Any, *, unknown: list[Loc] | None = None
) -> tuple[records_pb2.Execution, list[ParseError]]:
    """An Execution from an object with the Execution field names."""
    return _from_json(records_pb2.Execution(), obj, unknown)


def batch_from_json(
    obj: Any, *, unknown: list[Loc] | None = None
) -> tuple[ingest_pb2.WriteRequest, list[ParseError]]:
    """A WriteRequest from a Kubiya batch: {"execution_id", "turns", "tool_calls", "tasks"} and
    our optional "execution". Error locs start at the batch: ("turns", 2, "started_at")."""
    return _from_json(ingest_pb2.WriteRequest(), obj, unknown)


class _Invalid(ValueError):
    """A value of the wrong type or shape; becomes a ParseError at the field's loc."""

    def __init__(self, type_: str, msg: str) -> None:
        super().__init__(msg)
        self.type, self.msg = type_, msg

    def at(self, loc: Loc) -> ParseError:
        return ParseError(loc, self.msg, self.type)


@dataclass(slots=True)
class _Context:
    errors: list[ParseError]
    unknown: list[Loc] | None


def _from_json(message: M, obj: Any, unknown: list[Loc] | None) -> tuple[M, list[ParseError]]:
    ctx = _Context([], unknown)
    _parse_message(message, obj, (), ctx)
    return message, ctx.errors


def _not_object() -> _Invalid:
    return _Invalid(
        "model_attributes_type",
        "Input should be a valid dictionary or object to extract attributes from",
    )


def _parse_message(message: Message, obj: Any, loc: Loc, ctx: _Context) -> None:
    if not isinstance(obj, dict):
        ctx.errors.append(_not_object().at(loc))
        return
    fields = _fields_by_name(message.DESCRIPTOR)
    for key, value in obj.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            if ctx.unknown is not None:
                ctx.unknown.append((*loc, key))
            continue
        if value is None:
            continue
        try:
            _parse_field(message, field, value, (*loc, key), ctx)
        except _Invalid as exc:
            ctx.errors.append(exc.at((*loc, key)))


def _parse_field(
    message: Message, field: FieldDescriptor, value: Any, loc: Loc, ctx: _Context
) -> None:
    kind = _kind(field)
    if field.is_repeated:
        if not isinstance(value, list):
            raise _Invalid("list_type", "Input should be a valid list")
        container = getattr(message, field.name)
        for i, item in enumerate(value):
            if kind == "message":
                # Always add, even for a bad element, so request indices equal JSON indices.
                _parse_message(container.add(), item, (*loc, i), ctx)
                continue
            try:
                container.append(_SCALARS[kind](field, item))
            except _Invalid as exc:
                ctx.errors.append(exc.at((*loc, i)))
        return
    if kind == "timestamp":
        getattr(message, field.name).CopyFrom(parse_time(value))
    elif kind == "struct":
        _set_struct(getattr(message, field.name), value)
    elif kind == "message":
        if not isinstance(value, dict):
            raise _not_object()
        target = getattr(message, field.name)
        target.SetInParent()  # {} still means "sent"
        _parse_message(target, value, loc, ctx)
    else:
        setattr(message, field.name, _SCALARS[kind](field, value))


@cache
def _fields_by_name(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    return {field.name: field for field in descriptor.fields}


@cache
def _kind(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        name = field.message_type.full_name
        return {"google.protobuf.Timestamp": "timestamp", "google.protobuf.Struct": "struct"}.get(
            name, "message"
        )
    if field.type not in _SCALAR_KINDS:  # bytes, groups: none in turnstream.v1 records
        raise TypeError(f"{field.full_name}: field type {field.type} has no Kubiya JSON form")
    return _SCALAR_KINDS[field.type]


_F = FieldDescriptor
_INT_RANGES = {
    **dict.fromkeys((_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((_F.TYPE_UINT32, _F.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((_F.TYPE_UINT64, _F.TYPE_FIXED64), (0, 2**64 - 1)),
}
_SCALAR_KINDS = {
    **dict.fromkeys(_INT_RANGES, "int"),
    **dict.fromkeys((_F.TYPE_DOUBLE, _F.TYPE_FLOAT), "float"),
    _F.TYPE_BOOL: "bool",
    _F.TYPE_STRING: "string",
    _F.TYPE_ENUM: "enum",
}


def _to_int(field: FieldDescriptor, value: Any) -> int:
    # bool is an int subclass in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("int_type", "Input should be a valid integer")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid("finite_number", "Input should be a finite number")
        if not value.is_integer():
            raise _Invalid(
                "int_from_float",
                "Input should be a valid integer, got a number with a fractional part",
            )
    number = int(value)
    low, high = _INT_RANGES[field.type]
    if number < low:
        raise _Invalid("greater_than_equal", f"Input should be greater than or equal to {low}")
    if number > high:
        raise _Invalid("less_than_equal", f"Input should be less than or equal to {high}")
    return number


def _to_float(field: FieldDescriptor, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("float_type", "Input should be a valid number")
    try:
        out = float(value)
    except OverflowError:  # an int beyond the double range
        out = math.inf
    if not math.isfinite(out):
        # Python's json reads NaN/Infinity, but they are not JSON and cannot be written back.
        raise _Invalid("finite_number", "Input should be a finite number")
    return out


def _to_bool(field: FieldDescriptor, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("bool_type", "Input should be a valid boolean")
    return value


def _to_str(field: FieldDescriptor, value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("string_type", "Input should be a valid string")
    return value


def _to_enum(field: FieldDescriptor, value: Any) -> int:
    names = _enum_in(field.enum_type)
    if isinstance(value, str):
        number = names.get(value.strip().lower())
        if number is not None:
            return number
    words = [f"'{w}'" for w in _enum_out(field.enum_type).values()]
    expected = ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]
    raise _Invalid("enum", f"Input should be {expected}")


_SCALARS: dict[str, Callable[[FieldDescriptor, Any], Any]] = {
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "string": _to_str,
    "enum": _to_enum,
}


# Deeper JSON than the core accepts (validate.MAX_STRUCT_DEPTH) is refused here: such a record
# could not even be encoded into a request the server's parser accepts.
MAX_JSON_DEPTH = 32


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value (1 for an object of scalars), counted up to `limit` + 1."""
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def _set_struct(target: struct_pb2.Struct, value: Any) -> None:
    if not isinstance(value, dict):
        raise _Invalid("dict_type", "Input should be a valid dictionary")
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise _Invalid("too_deep", f"Input should be nested at most {MAX_JSON_DEPTH} levels deep")
    target.SetInParent()  # {} still means "sent"
    try:
        target.update(value)
    except (TypeError, ValueError) as exc:  # only for non-JSON Python values
        raise _Invalid("dict_type", f"Input should be a JSON object: {exc}") from None


# Kubiya's words for our enum values: (accepted aliases, output word overrides) by enum name.
_STATUS_ALIASES = {"in_progress": "running", "canceled": "cancelled"}
_ENUM_ALIASES: dict[str, dict[str, str]] = {
    "turnstream.v1.TaskStatus": _STATUS_ALIASES,
    "turnstream.v1.ExecutionStatus": {**_STATUS_ALIASES, "queued": "pending"},
}
# Kubiya's task API says "in_progress"; its executions (and Granite's runs) say "running".
_ENUM_OUT: dict[str, dict[str, str]] = {"turnstream.v1.TaskStatus": {"running": "in_progress"}}


def _prefix(enum: EnumDescriptor) -> str:
    """TASK_STATUS_ for TaskStatus (Buf style: values are prefixed with the enum's name)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


@cache
def _enum_out(enum: EnumDescriptor) -> dict[int, str]:
    prefix, overrides = _prefix(enum), _ENUM_OUT.get(enum.full_name, {})
    out = {}
    for v in enum.values:
        if v.number == 0:
            continue  # *_UNSPECIFIED is "absent", never written or read as a word
        word = v.name.removeprefix(prefix).lower()
        out[v.number] = overrides.get(word, word)
    return out


@cache
def _enum_in(enum: EnumDescriptor) -> dict[str, int]:
    names = {word: number for number, word in _enum_out(enum).items()}
    for v in enum.values:
        if v.number:
            names[v.name.removeprefix(_prefix(enum)).lower()] = v.number
            names[v.name.lower()] = v.number
    for alias, word in _ENUM_ALIASES.get(enum.full_name, {}).items():
        names[alias] = names[word]
    return names


_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?"
)
_MIN_SECONDS = -62135596800  # 0001-01-01T00:00:00Z, the Timestamp range
_MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z


def parse_time(value: Any) -> timestamp_pb2.Timestamp:
    """A Timestamp from an RFC 3339 string, or a zone-less ISO 8601 one taken as UTC. Keeps
    nanoseconds. Raises ValueError with a FastAPI-style message."""
    if not isinstance(value, str):
        raise _Invalid(
            "datetime_type",
            "Input should be a valid datetime string (RFC 3339 or ISO 8601); "
            "epoch numbers are not accepted",
        )
    m = _TIME.fullmatch(value)
    if m is None:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise _Invalid(
            "datetime_parsing",
            f"Input should be a valid datetime such as 2026-01-31T09:30:00Z, got {shown!r}",
        )
    try:
        year, month, day, hour, minute = (int(m[i]) for i in range(1, 6))
        wall = dt.datetime(year, month, day, hour, minute, int(m[6] or 0))
    except ValueError as exc:
        raise _Invalid("datetime_parsing", f"Input should be a valid datetime, {exc}") from None
    offset = 0
    if m[9]:
        hours, minutes = int(m[10]), int(m[11] or 0)
        if hours > 23 or minutes > 59:
            raise _Invalid("datetime_parsing", "Input should be a valid datetime, bad UTC offset")
        offset = (hours * 60 + minutes) * 60 * (-1 if m[9] == "-" else 1)
    seconds = calendar.timegm(wall.timetuple()) - offset
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise _Invalid("datetime_parsing", "Input should be a valid datetime, out of range")
    # Digits past nanoseconds are dropped, as the Timestamp cannot hold them.
    nanos = int((m[7] or "")[:9].ljust(9, "0"))
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# --- messages -> JSON -------------------------------------------------------------------------


def turn_to_json(turn: records_pb2.Turn) -> dict[str, Any]:
    """Kubiya-shaped JSON: RFC 3339 "Z" times, lower-case enums, absent fields omitted."""
    return message_to_json(turn)


def tool_call_to_json(tool_call: records_pb2.ToolCall) -> dict[str, Any]:
    """Kubiya-shaped JSON of a tool call."""
    return message_to_json(tool_call)


def task_to_json(task: records_pb2.Task) -> dict[str, Any]:
    """Kubiya-shaped JSON of a task (RUNNING is written "in_progress", as Kubiya does)."""
    return message_to_json(task)


def execution_to_json(execution: records_pb2.Execution) -> dict[str, Any]:
    """Kubiya-shaped JSON of an execution."""
    return message_to_json(execution)


def batch_to_json(request: ingest_pb2.WriteRequest) -> dict[str, Any]:
    """Kubiya batch JSON of a WriteRequest (the inverse of batch_from_json)."""
    return message_to_json(request)


def message_to_json(message: Message) -> dict[str, Any]:
    """Any turnstream.v1 message as Kubiya-shaped JSON, walking its descriptor."""
    out: dict[str, Any] = {}
    for field in _fields_by_name(message.DESCRIPTOR).values():
        value = getattr(message, field.name)
        if field.is_repeated:
            if len(value):
                out[field.name] = [_value_to_json(field, v) for v in value]
        elif field.has_presence:
            if message.HasField(field.name):
                out[field.name] = _value_to_json(field, value)
        elif value != field.default_value:  # proto3 plain scalars: the default is "absent"
            out[field.name] = _value_to_json(field, value)
    return out


def _value_to_json(field: FieldDescriptor, value: Any) -> Any:
    kind = _kind(field)
    if kind == "timestamp":
        return value.ToJsonString()
    if kind == "struct":
        return integral(json_format.MessageToDict(value))
    if kind == "message":
        return message_to_json(value)
    if kind == "enum":
        # An open enum may hold a number this build does not know; keep it rather than lose it.
        return _enum_out(field.enum_type).get(value, value)
    return value


_PATH_PART = re.compile(r"\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]|\[\"((?:[^\"\\]|\\.)*)\"\]|([^.\[\]]+)")
# Our violation reasons as pydantic error types, where pydantic has one.
_TYPES = {"REQUIRED": "missing", "TOO_LONG": "string_too_long", "NEGATIVE": "greater_than_equal"}


def loc_of(path: str) -> list[str | int]:
    """ "turns[0].metrics['a b']" -> ["turns", 0, "metrics", "a b"]: FastAPI's loc, from the
    core's field path."""
    out: list[str | int] = []
    for index, single, double, name in _PATH_PART.findall(path):
        if index:
            out.append(int(index))
        else:
            out.append(single or double or name)
    return out


def validation_error(violations: Any, parse_errors: Sequence[ParseError] = ()) -> dict[str, Any]:
    """FastAPI's 422 body, `{"detail": [{"loc": ["body", ...], "msg", "type"}]}`: type and
    shape errors found while parsing, then the core's violations (REQUIRED -> "missing")."""
    detail = [{"loc": ["body", *e.loc], "msg": e.msg, "type": e.type} for e in parse_errors]
    for v in violations:
        reason = str(v.reason)
        detail.append(
            {
                "loc": ["body", *loc_of(str(v.field))],
                "msg": "Field required" if reason == "REQUIRED" else str(v.description),
                "type": _TYPES.get(reason, reason.lower()),
            }
        )
    return {"detail": detail}
