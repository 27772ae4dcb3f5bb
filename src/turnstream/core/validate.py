"""Core, step 1 of validate -> enrich -> rows: every rule a record must satisfy (no I/O).

Each function returns *every* violation of its record at once (a worker fixes its payload in one
round trip, and the dead-letter row shows everything wrong), never raises, never stops early.
The rules are tables keyed by field name plus checks driven by the message descriptor, so the four
record kinds share one walk and a field added to the contract is covered by the generic checks
(numbers, timestamps, Structs, enums) without touching this module.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
from collections.abc import Callable, Container, Iterable
from typing import Any, TypeAlias

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc.error_details_pb2 import BadRequest

from turnstream.v1 import records_pb2

# google.rpc ships no typing marker, so mypy sees Any here; the alias still documents intent.
FieldViolation: TypeAlias = BadRequest.FieldViolation

# Limits, in characters (str length) unless named bytes. Ids and names are keys and group-by
# columns: 256 is far beyond any real id or model name and keeps indexes small. Free text is
# bounded so one record cannot bloat a transaction; response_preview and tool_output are not
# limited here because enrich truncates them, as Kubiya does, instead of rejecting the record.
MAX_ID_LENGTH = 256
MAX_NAME_LENGTH = 256
MAX_ERROR_MESSAGE_LENGTH = 10_000
MAX_TEXT_LENGTH = 100_000
MAX_TOOL_NAMES = 1_000
MAX_TOOL_NAME_LENGTH = 256
MAX_STRUCT_BYTES = 64 * 1024
# A turn's inputs and outputs hold whole conversations (HoneyHive's chat history): larger.
MAX_PAYLOAD_BYTES = 1024 * 1024
STRUCT_LIMITS = {"inputs": MAX_PAYLOAD_BYTES, "outputs": MAX_PAYLOAD_BYTES}
# Levels of nesting inside a Struct (the Struct itself is level 1). JSON printers and parsers on
# every side have recursion limits (protobuf's own parser stops at 100 message levels, about 50
# Struct levels); 32 is deeper than any real metrics or tool input.
MAX_STRUCT_DEPTH = 32
# A Struct with many problems reports the first few: enough to fix it, not a megabyte of answer.
MAX_STRUCT_VIOLATIONS = 10

# Timestamps before this are a unit mistake (seconds sent as milliseconds / 1000, or zero).
EARLIEST_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
# Workers' clocks drift; a day of skew is tolerated, anything later is a wrong clock or unit.
CLOCK_SKEW = dt.timedelta(days=1)

ID_FIELDS = ("execution_id", "turn_id", "tool_use_id", "task_id", "parent_id")
NAME_FIELDS = (
    "model",
    "model_provider",
    "tool_name",
    "finish_reason",
    "task_type",
    "error_type",
    "workflow_name",
    "source",
)
STRING_LIMITS: dict[str, int] = {
    **dict.fromkeys(ID_FIELDS, MAX_ID_LENGTH),
    **dict.fromkeys(NAME_FIELDS, MAX_NAME_LENGTH),
    # Stored as varchar(64): a worker's own price table version.
    "price_version": 64,
    "error_message": MAX_ERROR_MESSAGE_LENGTH,
    "task_description": MAX_TEXT_LENGTH,
    "result": MAX_TEXT_LENGTH,
}

# Required fields per record kind (Kubiya's required fields). Fields with presence (optional
# scalars, messages) must be set; strings must hold more than whitespace.
REQUIRED: dict[str, tuple[str, ...]] = {
    "Turn": ("execution_id", "turn_number", "model", "started_at"),
    "ToolCall": ("execution_id", "tool_name", "started_at"),
    "Task": ("execution_id", "task_description"),
    "Execution": ("execution_id",),
}

# DEL is a control character too; ids end up in logs, URLs and keys where none belongs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUMBER_TYPES = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
        FieldDescriptor.CPPTYPE_DOUBLE,
        FieldDescriptor.CPPTYPE_FLOAT,
    }
)
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_STRUCT = "google.protobuf.Struct"
_MAX_NANOS = 999_999_999
_EARLIEST_SECONDS = EARLIEST_TIME.timestamp()


def validate_turn(turn: records_pb2.Turn, path: str, now: dt.datetime) -> list[FieldViolation]:
    """Violations of one Turn; `path` prefixes every field, e.g. "turns[3]"."""
    return _validate(turn, path, now)


def validate_tool_call(
    call: records_pb2.ToolCall, path: str, now: dt.datetime
) -> list[FieldViolation]:
    """Violations of one ToolCall; `path` prefixes every field, e.g. "tool_calls[0]"."""
    return _validate(call, path, now)


def validate_task(task: records_pb2.Task, path: str, now: dt.datetime) -> list[FieldViolation]:
    """Violations of one Task; `path` prefixes every field, e.g. "tasks[0]"."""
    return _validate(task, path, now)


def validate_execution(
    execution: records_pb2.Execution, path: str, now: dt.datetime
) -> list[FieldViolation]:
    """Violations of one Execution; `path` prefixes every field, e.g. "execution"."""
    return _validate(execution, path, now)


class _Report:
    """Collects violations with the record's path prefix."""

    def __init__(self, path: str) -> None:
        self.prefix = f"{path}." if path else ""
        self.violations: list[FieldViolation] = []

    def add(self, field: str, reason: str, description: str) -> None:
        self.violations.append(
            FieldViolation(field=self.prefix + field, reason=reason, description=description)
        )


def _validate(message: Message, path: str, now: dt.datetime) -> list[FieldViolation]:
    descriptor = message.DESCRIPTOR
    report = _Report(path)
    missing = _check_required(message, _required(descriptor), report)  # type: ignore[arg-type]
    latest = _as_utc(now) + CLOCK_SKEW
    # ListFields() yields only the fields that are set, in one C call: a typical record sets a
    # third of its fields, and this walk is on the hot path of every ingested record.
    for field, value in message.ListFields():
        name = field.name
        if name in missing:
            continue  # "is required" says it all; "  \t" is not also a control-character error
        kind = _kind(field)
        if kind == "repeated":
            _check_repeated(message, name, report)
        elif kind == "number":
            _check_number(name, value, report)
        elif kind == "string":
            _check_string(name, value, report)
        elif kind == "enum":
            enum = field.enum_type
            assert enum is not None  # _kind() says "enum" only when there is one
            _check_enum(name, enum.name, enum.values_by_number, value, report)
        elif kind == "time":
            _check_time(name, value, latest, report)
        elif kind == "struct":
            _check_struct(name, value, report)
    _check_order(message, report)
    return report.violations


_KINDS: dict[str, str | None] = {}
_REQUIRED: dict[str, tuple[tuple[str, bool], ...]] = {}


def _kind(field: FieldDescriptor) -> str | None:
    """Which generic check a field gets, computed once per field."""
    kind = _KINDS.get(field.full_name, "")
    if kind != "":
        return kind
    if field.is_repeated:
        kind = "repeated"
    elif field.cpp_type in _NUMBER_TYPES:
        kind = "number"
    elif field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        kind = "string"
    elif field.cpp_type == FieldDescriptor.CPPTYPE_ENUM and field.enum_type is not None:
        kind = "enum"
    elif field.message_type is not None and field.message_type.full_name == _TIMESTAMP:
        kind = "time"
    elif field.message_type is not None and field.message_type.full_name == _STRUCT:
        kind = "struct"
    else:
        kind = None
    _KINDS[field.full_name] = kind
    return kind


def _required(descriptor: Descriptor) -> tuple[tuple[str, bool], ...]:
    plan = _REQUIRED.get(descriptor.full_name)
    if plan is None:
        fields = descriptor.fields_by_name
        plan = tuple((name, fields[name].has_presence) for name in REQUIRED[descriptor.name])
        _REQUIRED[descriptor.full_name] = plan
    return plan


def _check_required(
    message: Message, plan: Iterable[tuple[str, bool]], report: _Report
) -> set[str]:
    missing: set[str] = set()
    for name, has_presence in plan:
        if has_presence:
            absent = not message.HasField(name)
        else:
            absent = not str(getattr(message, name)).strip()
        if absent:
            missing.add(name)
            report.add(name, "REQUIRED", f"{name} is required")
    return missing


def _check_number(name: str, value: float, report: _Report) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        report.add(name, "NOT_FINITE", f"{name} must be a finite number, got {value}")
    elif value < 0:
        report.add(name, "NEGATIVE", f"{name} must be >= 0, got {value}")


def _check_string(name: str, value: str, report: _Report) -> None:
    limit = STRING_LIMITS.get(name)
    if limit is not None and len(value) > limit:
        report.add(
            name,
            "TOO_LONG",
            f"{name} must be at most {limit:,} characters, got {len(value):,}",
        )
    if name in ID_FIELDS:
        bad = _CONTROL.search(value)
        if bad is not None:
            report.add(
                name,
                "CONTROL_CHARACTER",
                f"{name} must not contain control characters, found {bad.group()!r} "
                f"at position {bad.start()}",
            )


def _check_repeated(message: Message, name: str, report: _Report) -> None:
    # The only repeated field of the records is tools_called_names; anything else added later
    # is only bounded by the request size.
    if name != "tools_called_names":
        return
    entries = getattr(message, name)
    if len(entries) > MAX_TOOL_NAMES:
        report.add(
            name,
            "TOO_MANY",
            f"{name} must have at most {MAX_TOOL_NAMES:,} entries, got {len(entries):,}",
        )
    for i, entry in enumerate(entries):
        if len(entry) > MAX_TOOL_NAME_LENGTH:
            report.add(
                f"{name}[{i}]",
                "TOO_LONG",
                f"{name}[{i}] must be at most {MAX_TOOL_NAME_LENGTH:,} characters, "
                f"got {len(entry):,}",
            )


def _check_enum(
    name: str, enum_name: str, defined: Container[int], value: int, report: _Report
) -> None:
    # proto3 enums are open: an unknown number from a newer or buggy client parses fine and
    # would be stored as a meaningless integer.
    if value not in defined:
        report.add(name, "UNKNOWN_ENUM_VALUE", f"{name} {value} is not a defined {enum_name} value")


def _check_time(name: str, ts: Timestamp, latest: dt.datetime, report: _Report) -> None:
    if not 0 <= ts.nanos <= _MAX_NANOS:
        report.add(
            name, "INVALID_TIMESTAMP", f"{name}.nanos must be in [0, 999999999], got {ts.nanos}"
        )
        return
    seconds = ts.seconds + ts.nanos / 1e9
    if seconds < _EARLIEST_SECONDS or seconds > latest.timestamp():
        report.add(
            name,
            "OUT_OF_RANGE",
            f"{name} ({_show(ts)}) must be between {_iso(EARLIEST_TIME)} and "
            f"{_iso(latest)} (now + {CLOCK_SKEW.days} day of clock skew)",
        )


def _check_struct(name: str, value: Message, report: _Report) -> None:
    size, limit = value.ByteSize(), STRUCT_LIMITS.get(name, MAX_STRUCT_BYTES)
    if size > limit:
        report.add(
            name, "TOO_LARGE", f"{name} must be at most {limit:,} bytes serialized, got {size:,}"
        )
        return
    problems: list[tuple[str, str, str]] = []
    _walk_struct(value, name, 1, problems)
    for path, reason, description in problems[:MAX_STRUCT_VIOLATIONS]:
        report.add(path, reason, description)
    if len(problems) > MAX_STRUCT_VIOLATIONS:
        more = len(problems) - MAX_STRUCT_VIOLATIONS
        report.add(name, "TOO_MANY_PROBLEMS", f"{name} has {more} more problems not listed")


def _walk_struct(struct: Any, path: str, depth: int, out: list[tuple[str, str, str]]) -> None:
    """Struct values JSON and the databases cannot hold: NaN and Infinity (strict JSON and
    jsonb have no spelling for them), a Value with no kind set (a client that built it wrong,
    e.g. protobufjs given snake_case `number_value`: storing null would lose data silently),
    and nesting beyond MAX_STRUCT_DEPTH."""
    if depth > MAX_STRUCT_DEPTH:
        out.append((path, "TOO_DEEP", f"{path} is nested more than {MAX_STRUCT_DEPTH} levels deep"))
        return
    # In key order: upb's map order differs between a message and its copy, and the first
    # MAX_STRUCT_VIOLATIONS problems reported must not depend on which one is validated.
    fields = struct.fields
    for key in sorted(fields):
        _walk_value(
            fields[key],
            f"{path}.{key}" if _PLAIN_KEY.match(key) else f"{path}[{key!r}]",
            depth,
            out,
        )


def _walk_value(value: Any, path: str, depth: int, out: list[tuple[str, str, str]]) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            out.append(
                (path, "NOT_FINITE", f"{path} must be a finite number, got {value.number_value}")
            )
    elif kind == "struct_value":
        _walk_struct(value.struct_value, path, depth + 1, out)
    elif kind == "list_value":
        if depth + 1 > MAX_STRUCT_DEPTH:
            out.append(
                (path, "TOO_DEEP", f"{path} is nested more than {MAX_STRUCT_DEPTH} levels deep")
            )
            return
        for i, item in enumerate(value.list_value.values):
            _walk_value(item, f"{path}[{i}]", depth + 1, out)
    elif kind is None:
        out.append(
            (
                path,
                "VALUE_EMPTY",
                f"{path} is a google.protobuf.Value with no kind set; set one of null_value, "
                "number_value, string_value, bool_value, struct_value, list_value "
                "(protobufjs: see docs/clients.md)",
            )
        )


def check_derived(message: Message, path: str) -> list[FieldViolation]:
    """After enrichment: a value derived from valid inputs that is not finite (costs of 1e308
    each summing to inf, runtime x weight beyond float range) cannot be stored or summed."""
    report = _Report(path)
    for field, value in message.ListFields():
        if isinstance(value, float) and not math.isfinite(value):
            report.add(
                field.name,
                "DERIVED_NOT_FINITE",
                f"{field.name} derived from this record's values is {value}: the numbers it is "
                "computed from are too large",
            )
    return report.violations


_FLOATS: dict[str, Callable[[Any], Any]] = {}


def derived_finite(message: Message) -> bool:
    """True when check_derived would find nothing: one read of every float field and one sum
    (a sum that overflows only sends a valid record on to check_derived)."""
    descriptor = message.DESCRIPTOR
    floats = _FLOATS.get(descriptor.full_name)
    if floats is None:
        names = [
            f.name
            for f in descriptor.fields
            if not f.is_repeated
            and f.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)
        ]
        # attrgetter of two or more names returns a tuple; the sum of none is 0.
        floats = operator.attrgetter(*names, *names) if names else lambda m: (0.0,)
        _FLOATS[descriptor.full_name] = floats
    return math.isfinite(sum(floats(message)))


def _check_order(message: Message, report: _Report) -> None:
    if "started_at" not in message.DESCRIPTOR.fields_by_name:
        return
    if not (message.HasField("started_at") and message.HasField("completed_at")):
        return
    started, completed = (getattr(message, name) for name in ("started_at", "completed_at"))
    if not (0 <= started.nanos <= _MAX_NANOS and 0 <= completed.nanos <= _MAX_NANOS):
        return  # already reported; the order of an invalid time means nothing
    if (completed.seconds, completed.nanos) < (started.seconds, started.nanos):
        report.add(
            "completed_at",
            "TIME_ORDER",
            f"completed_at ({_show(completed)}) is before started_at ({_show(started)})",
        )


def _as_utc(now: dt.datetime) -> dt.datetime:
    # A naive clock is taken as UTC rather than local time, as everything stored is UTC.
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now.astimezone(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _show(ts: Timestamp) -> str:
    try:
        return ts.ToJsonString()
    except ValueError:  # beyond year 9999: RFC 3339 cannot spell it
        return f"{ts.seconds} seconds since the epoch"
