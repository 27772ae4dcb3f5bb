"""Door translation: HoneyHive events <-> turnstream.v1 records, losslessly (no I/O).

A HoneyHive event is one JSON object whose `event_type` says what it is: `model` -> Turn,
`tool` -> ToolCall, `chain` -> Task, `session` -> Execution. Identity and time go to columns
(event_id -> turn_id / tool_use_id / task_id, session_id -> execution_id, parent_id, start_time
/ end_time in epoch milliseconds -> started_at / completed_at, duration -> duration_ms, error ->
error_message); everything else is kept whole in the record's Structs, *keyed by its HoneyHive
name*, so that `record_to_event` gives the event back and a path inside a Struct is the
HoneyHive path (`metadata.config.temperature` is the event's `config.temperature`):

| kind      | Struct           | HoneyHive fields                                                 |
|-----------|------------------|------------------------------------------------------------------|
| Turn      | inputs           | inputs, messages, template, template_inputs, tools, tool_choice, |
|           |                  | response_format (what the model was given: 1 MiB budget)         |
| Turn      | outputs          | outputs, response                                                |
| Turn      | metrics          | metrics (the object itself)                                      |
| ToolCall  | tool_input       | inputs (the object itself); outputs -> tool_output text          |
| Task      | (result text)    | outputs -> result text; inputs go to metadata                    |
| Execution | user_properties  | user_properties (the object itself)                              |
| all       | metadata         | every other field, known or not (config, feedback, usage, ...)   |

Some columns are *copies* for querying, the original staying in a Struct: model (`model`, else
`config.model`, else `model_name`), model_provider (`provider`, else `config.provider`), the
token counts (from `usage`, else `metadata`, in their usual spellings), total_cost (`cost`, else
`metadata.cost`), workflow_name (`session_name`, else `event_name`) and source. A value that
cannot go where it belongs (a wrong type, a fractional duration) is kept in metadata under its
own name, so a rejected record's dead letter still holds it. Tool and chain outputs become text
(JSON text unless they are a string, marked in metadata["_turnstream"], a name reserved here).

Limits of the mapping: `null` means absent; Struct numbers are doubles (integers beyond 2**53
lose precision, 2.0 comes back as 2); a turn's `turn_number`, which the core requires, is a
stable 31-bit number hashed from the event id (the key is turn_id = event_id, so the number is
only there to satisfy the rule and never changes on a retry or an update).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc.error_details_pb2 import BadRequest

from turnstream.formats.values import integral
from turnstream.v1 import records_pb2

FieldViolation = BadRequest.FieldViolation

KIND_OF_TYPE = {"model": "turn", "tool": "tool_call", "chain": "task", "session": "execution"}
TYPE_OF_KIND = {kind: event_type for event_type, kind in KIND_OF_TYPE.items()}
# HoneyHive's server fills these when a client leaves them out; our records need a name.
DEFAULT_EVENT_NAME = "unknown"
RESERVED = "_turnstream"
# Kept in sync with core.enrich.TOOL_OUTPUT_LIMIT: a longer tool output is truncated in its
# column, so the whole value is kept in metadata as well.
TOOL_OUTPUT_LIMIT = 10_000
# Fixed namespace of the ids derived from content (uuid5): the same event gets the same id.
ID_NAMESPACE = uuid.UUID("6f1d3c0e-5a2b-4e8f-9c47-1b0d2e3f4a5b")

TURN_INPUTS: tuple[str, ...] = (
    *("inputs", "messages", "template", "template_inputs", "tools", "tool_choice"),
    "response_format",
)
TURN_OUTPUTS = ("outputs", "response")
# Fields held by columns, exactly; every other field lives in a Struct.
_IDENTITY: tuple[str, ...] = (
    *("event_type", "event_id", "session_id", "parent_id", "start_time", "end_time"),
    *("duration", "error"),
)

# HoneyHive's types for its known fields (its OpenAPI LegacyEvent / ModelEvent schemas).
_STRINGS = frozenset(
    (
        *("project", "project_id", "source", "event_name", "event_type", "event_id"),
        *("session_id", "parent_id", "model_name", "model_version", "model", "provider"),
        "session_name",
    )
)
_NUMBERS = frozenset(("start_time", "end_time", "duration"))
_OBJECTS = frozenset(
    (
        *("config", "inputs", "metadata", "feedback", "metrics", "user_properties", "usage"),
        "hyperparameters",
    )
)

# Token counts: (turn field, spellings looked up in `usage`, then in `metadata`).
_TOKENS = (
    ("input_tokens", ("prompt_tokens", "input_tokens")),
    ("output_tokens", ("completion_tokens", "output_tokens")),
    ("total_tokens", ("total_tokens",)),
    ("cache_read_tokens", ("cache_read_input_tokens", "cache_read_tokens", "cached_tokens")),
    ("cache_creation_tokens", ("cache_creation_input_tokens", "cache_creation_tokens")),
)
_INT64_MAX = 2**63 - 1
_NS_PER_MS = 1_000_000
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799  # the Timestamp range

Record = records_pb2.Turn | records_pb2.ToolCall | records_pb2.Task | records_pb2.Execution


def derived_id(role: str, data: Any) -> str:
    """A uuid5 of `data`'s canonical JSON: an event sent without ids gets the same ids on a
    retry, so it is never stored twice (HoneyHive would draw random ones)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(uuid.uuid5(ID_NAMESPACE, f"{role}\x1f{text}"))


def turn_number(event_id: str) -> int:
    """The turn_number of a HoneyHive turn: 1..2**31-1 from the event id, stable forever."""
    digest = hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1) + 1


def fill_ids(event: Mapping[str, Any], session_id: str | None = None) -> dict[str, Any]:
    """The event with event_id and session_id set as HoneyHive's server sets them: a session's
    ids are one; a missing event_id is derived from the content, a missing session_id is
    `session_id` (the batch's session) or derived too. Wrong types are left for `to_record`."""
    out = {k: v for k, v in event.items() if v is not None}
    if out.get("event_type") == "session":
        out.setdefault("session_id", out.get("event_id") or session_id)
    if "session_id" not in out or out["session_id"] is None:
        out["session_id"] = session_id or derived_id("session", out)
    if out.get("event_type") == "session":
        out.setdefault("event_id", out["session_id"])
    out.setdefault("event_id", derived_id("event", out))
    return out


# --- event -> record --------------------------------------------------------------------------


class _Builder:
    """Collects one record's violations and the values that stay in its Structs."""

    def __init__(self, path: str) -> None:
        self.prefix = f"{path}." if path else ""
        self.violations: list[Any] = []
        self.metadata: dict[str, Any] = {}

    def bad(self, name: str, description: str, reason: str = "INVALID_TYPE") -> None:
        field = self.prefix + name if name else self.prefix.rstrip(".")
        self.violations.append(FieldViolation(field=field, description=description, reason=reason))


def _typed(event: Mapping[str, Any], b: _Builder) -> dict[str, Any]:
    """The event's fields with HoneyHive's types; a value of the wrong type is reported and
    kept in metadata (it stays in the dead letter)."""
    ok: dict[str, Any] = {}
    for name, value in event.items():
        problem = _type_problem(name, value)
        if problem:
            b.bad(name, f"{name} {problem}")
            b.metadata[name] = value
        else:
            ok[name] = value
    return ok


def _type_problem(name: str, value: Any) -> str | None:
    if name == RESERVED:
        return f"is a name reserved by turnstream; rename the field {RESERVED!r}"
    if name in _STRINGS and not isinstance(value, str):
        return "should be a string"
    if name == "error" and not isinstance(value, str):
        return "should be a string or null"
    if name in _NUMBERS and (isinstance(value, bool) or not isinstance(value, int | float)):
        return "should be a number (Unix epoch milliseconds for times)"
    if name in _NUMBERS and isinstance(value, float) and not math.isfinite(value):
        return "should be a finite number"
    if name in _OBJECTS and not isinstance(value, dict):
        return "should be an object"
    if name == "children_ids" and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        return "should be a list of strings"
    if name == "messages" and not isinstance(value, list):
        return "should be a list"
    return None


def to_record(
    event: Mapping[str, Any], path: str, default_type: str | None = None
) -> tuple[str | None, Record | None, list[Any]]:
    """(kind, record, violations) of one event whose ids were filled (`fill_ids`). Violations
    name HoneyHive paths (`model_events[2].start_time`); kind is None when the event_type is
    missing or unknown, as no record can be made."""
    b = _Builder(path)
    if not isinstance(event, Mapping):
        b.bad("", "the event should be an object")
        return None, None, b.violations
    event_type = event.get("event_type", default_type)
    kind = KIND_OF_TYPE.get(event_type) if isinstance(event_type, str) else None
    if kind is None:
        b.bad("event_type", "event_type should be one of model, tool, chain, session", "REQUIRED")
        return None, None, b.violations
    fields = _typed({k: v for k, v in event.items() if v is not None}, b)
    record = _BUILD[kind](fields, b)
    _common(record, fields, b)
    if b.metadata:
        _put(record.metadata, b.metadata, b, "")
    return kind, record, b.violations


def _put(struct: struct_pb2.Struct, values: Mapping[str, Any], b: _Builder, name: str) -> None:
    """Struct.update, except that a number no double can hold is a violation, not a crash;
    the other keys are kept."""
    struct.SetInParent()  # {} was sent: it comes back as {}
    for key, value in values.items():
        try:
            struct.update({key: value})
        except (OverflowError, TypeError, ValueError):
            field = f"{name}.{key}" if name else key
            if not any(v.field == b.prefix + field for v in b.violations):
                b.bad(field, f"{field} holds a number too large for a JSON number (a double)")


def _common(record: Record, f: dict[str, Any], b: _Builder) -> None:
    record.execution_id = f.get("session_id", "")
    for name, column in (("start_time", "started_at"), ("end_time", "completed_at")):
        if name in f:
            ts = _ms_to_timestamp(f[name])
            if ts is None:
                b.bad(name, f"{name} is out of range (Unix epoch milliseconds)", "OUT_OF_RANGE")
                b.metadata[name] = f[name]
            else:
                getattr(record, column).CopyFrom(ts)
                if ts.nanos % 1000:
                    b.metadata[name] = f[name]  # storage keeps microseconds: keep it exact
    if "duration" in f:
        duration = f["duration"]
        if abs(duration) > _INT64_MAX:
            b.bad("duration", "duration is out of range (milliseconds)", "OUT_OF_RANGE")
        else:
            record.duration_ms = round(duration)
        if record.duration_ms != duration:
            b.metadata["duration"] = duration  # the column keeps whole milliseconds only
    if "error" in f:
        record.error_message = f["error"]
        if not f["error"]:
            b.metadata["error"] = ""  # an empty column reads as absent
    if isinstance(record, records_pb2.Execution):
        if "parent_id" in f:
            b.metadata["parent_id"] = f["parent_id"]  # sessions have no parent column
    else:
        record.parent_id = f.get("parent_id", f.get("session_id", ""))
    for name, value in f.items():
        if name not in _IDENTITY and name not in _PLACED[type(record).__name__]:
            b.metadata[name] = value


def _turn(f: dict[str, Any], b: _Builder) -> records_pb2.Turn:
    turn = records_pb2.Turn(turn_id=f.get("event_id", ""))
    turn.turn_number = turn_number(turn.turn_id)
    config = f.get("config", {})
    model = f.get("model") or _str(config.get("model")) or f.get("model_name")
    if model:
        turn.model = model
    provider = f.get("provider") or _str(config.get("provider"))
    if provider:
        turn.model_provider = provider
    _tokens(turn, f)
    cost = f.get("cost", f.get("metadata", {}).get("cost"))
    if _is_number(cost) and cost >= 0:
        turn.total_cost = cost
    inputs = {k: f[k] for k in TURN_INPUTS if k in f}
    if inputs:
        _put(turn.inputs, inputs, b, "inputs")
    outputs = {k: f[k] for k in TURN_OUTPUTS if k in f}
    if outputs:
        _put(turn.outputs, outputs, b, "outputs")
    if "metrics" in f:
        _put(turn.metrics, f["metrics"], b, "metrics")
    return turn


def _tokens(turn: records_pb2.Turn, f: dict[str, Any]) -> None:
    sources = [s for s in (f.get("usage"), f.get("metadata")) if isinstance(s, dict)]
    for source in sources:  # usage first; metadata only when usage has none
        counts = {}
        for field, spellings in _TOKENS:
            value = next((source[s] for s in spellings if _is_count(source.get(s))), None)
            if value is not None:
                counts[field] = int(value)
        details = source.get("prompt_tokens_details")
        cached: Any = details.get("cached_tokens") if isinstance(details, dict) else None
        if "prompt_tokens" in source and _is_count(cached) and "input_tokens" in counts:
            # OpenAI counts cached tokens inside prompt_tokens; ours exclude cache reads.
            counts["cache_read_tokens"] = int(cached)
            counts["input_tokens"] = max(0, counts["input_tokens"] - int(cached))
        if counts:
            for field, value in counts.items():
                setattr(turn, field, value)
            return


def _tool_call(f: dict[str, Any], b: _Builder) -> records_pb2.ToolCall:
    call = records_pb2.ToolCall(tool_use_id=f.get("event_id", ""))
    call.tool_name = f.get("event_name", DEFAULT_EVENT_NAME)
    if "inputs" in f:
        _put(call.tool_input, f["inputs"], b, "inputs")
    if "outputs" in f:
        call.tool_output = _text(f["outputs"], b)
        if len(call.tool_output) > TOOL_OUTPUT_LIMIT:
            b.metadata["outputs"] = f["outputs"]  # the column is truncated by the core
    if f.get("error"):
        call.success = False
    elif "end_time" in f or "outputs" in f:
        call.success = True
    return call


def _task(f: dict[str, Any], b: _Builder) -> records_pb2.Task:
    task = records_pb2.Task(task_id=f.get("event_id", ""), task_type="chain")
    task.task_description = f.get("event_name", DEFAULT_EVENT_NAME)
    if "outputs" in f:
        task.result = _text(f["outputs"], b)
    return task


def _execution(f: dict[str, Any], b: _Builder) -> records_pb2.Execution:
    execution = records_pb2.Execution()
    if f.get("event_id", f.get("session_id")) != f.get("session_id"):
        b.metadata["event_id"] = f["event_id"]  # a session's event id is its session id
    name = f.get("session_name") or f.get("event_name")
    if name:
        execution.workflow_name = name
    if f.get("source"):
        execution.source = f["source"]
    if "user_properties" in f:
        _put(execution.user_properties, f["user_properties"], b, "user_properties")
    if "end_time" in f:
        failed = bool(f.get("error"))
        execution.status = (
            records_pb2.EXECUTION_STATUS_FAILED
            if failed
            else records_pb2.EXECUTION_STATUS_COMPLETED
        )
    elif "start_time" in f:
        execution.status = records_pb2.EXECUTION_STATUS_RUNNING
    return execution


_BUILD: dict[str, Callable[[dict[str, Any], _Builder], Any]] = {
    "turn": _turn,
    "tool_call": _tool_call,
    "task": _task,
    "execution": _execution,
}
# Fields a kind keeps outside metadata (besides the identity columns).
_PLACED = {
    "Turn": frozenset((*TURN_INPUTS, *TURN_OUTPUTS, "metrics")),
    "ToolCall": frozenset(("inputs", "outputs", "event_name")),
    "Task": frozenset(("outputs", "event_name")),
    "Execution": frozenset(("user_properties",)),
}


def _text(value: Any, b: _Builder) -> str:
    if isinstance(value, str):
        return value
    b.metadata[RESERVED] = {"outputs": "json"}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < 1e300  # finite, and an int that a double holds


def _is_count(value: Any) -> bool:
    return _is_number(value) and 0 <= value <= _INT64_MAX and float(value).is_integer()


def _ms_to_timestamp(ms: float) -> timestamp_pb2.Timestamp | None:
    # Decimal holds the float's exact value: 1712025501605.123 comes back as the same float.
    ns = int((Decimal(ms) * _NS_PER_MS).to_integral_value(ROUND_HALF_EVEN))
    seconds, nanos = divmod(ns, 1_000_000_000)
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        return None
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _timestamp_to_ms(ts: timestamp_pb2.Timestamp) -> int | float:
    ns = ts.seconds * 1_000_000_000 + ts.nanos
    return ns // _NS_PER_MS if ns % _NS_PER_MS == 0 else float(Decimal(ns) / _NS_PER_MS)


# --- record -> event --------------------------------------------------------------------------


def record_to_event(record: Message) -> dict[str, Any]:
    """The HoneyHive event a record holds (the inverse of `to_record`)."""
    kind = {
        "Turn": "turn",
        "ToolCall": "tool_call",
        "Task": "task",
        "Execution": "execution",
    }[record.DESCRIPTOR.name]
    r: Any = record
    event: dict[str, Any] = {"event_type": TYPE_OF_KIND[kind]}
    event["event_id"] = {
        "turn": r.turn_id if kind == "turn" else "",
        "tool_call": r.tool_use_id if kind == "tool_call" else "",
        "task": r.task_id if kind == "task" else "",
        "execution": r.execution_id,
    }[kind]
    event["session_id"] = r.execution_id
    if kind != "execution" and r.parent_id:
        event["parent_id"] = r.parent_id
    for column, name in (("started_at", "start_time"), ("completed_at", "end_time")):
        if r.HasField(column):
            event[name] = _timestamp_to_ms(getattr(r, column))
    if r.HasField("duration_ms"):
        event["duration"] = r.duration_ms
    if r.error_message:
        event["error"] = r.error_message
    metadata = _struct(r.metadata) if r.HasField("metadata") else {}
    marks = metadata.pop(RESERVED, {})
    if kind == "turn":
        for struct in ("inputs", "outputs"):
            if r.HasField(struct):
                event.update(_struct(getattr(r, struct)))
        if r.HasField("metrics"):
            event["metrics"] = _struct(r.metrics)
    elif kind == "tool_call":
        event["event_name"] = r.tool_name
        if r.HasField("tool_input"):
            event["inputs"] = _struct(r.tool_input)
        if r.HasField("tool_output") and "outputs" not in metadata:  # else: cut, kept whole
            event["outputs"] = _untext(r.tool_output, marks)
    elif kind == "task":
        event["event_name"] = r.task_description
        if r.result:
            event["outputs"] = _untext(r.result, marks)
    elif r.HasField("user_properties"):
        event["user_properties"] = _struct(r.user_properties)
    event.update(metadata)  # last: the exact values a column could not hold win
    return event


def _untext(text: str, marks: Any) -> Any:
    if not (isinstance(marks, dict) and marks.get("outputs") == "json"):
        return text
    try:
        return json.loads(text)
    except ValueError:  # changed since through another door: the text is what there is
        return text


def _struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return integral(json_format.MessageToDict(struct))  # type: ignore[no-any-return]


HONEYHIVE_NAMES = {
    "started_at": "start_time",
    "completed_at": "end_time",
    "duration_ms": "duration",
    "execution_id": "session_id",
    **dict.fromkeys(("turn_id", "tool_use_id", "task_id", "turn_number"), "event_id"),
    **dict.fromkeys(("tool_name", "task_description"), "event_name"),
    "workflow_name": "session_name",
    "model_provider": "provider",
    "error_message": "error",
    "total_cost": "cost",
    "tool_input": "inputs",
    **dict.fromkeys(("tool_output", "result"), "outputs"),
    **dict.fromkeys((f for f, _ in _TOKENS), "usage"),
}
_WORDS = re.compile(r"\b(" + "|".join(HONEYHIVE_NAMES) + r")\b")
_WRAPPERS = ("inputs.", "outputs.", "metadata.")


def in_honeyhive_terms(field: str, description: str, path: str) -> tuple[str, str]:
    """A core violation of the record made at `path`, as its HoneyHive field and sentence:
    ("model_events[2].started_at", "started_at is required") -> ("model_events[2].start_time",
    "start_time is required")."""
    prefix = f"{path}." if path else ""
    if not field.startswith(prefix):
        return field, description
    rest = field[len(prefix) :]
    for wrapper in _WRAPPERS:
        if rest.startswith(wrapper):
            rest = rest[len(wrapper) :]
            break
    else:
        head, dot, tail = rest.partition(".")
        rest = HONEYHIVE_NAMES.get(head, head) + dot + tail
    described = _WORDS.sub(lambda m: HONEYHIVE_NAMES[m.group(1)], description)
    return prefix + rest, described


# --- PUT /events ------------------------------------------------------------------------------

# HoneyHive merges these objects into the stored ones (shallow: top-level keys); every other
# field of an update replaces the stored value (outputs, duration, end_time, ...).
MERGED = ("metadata", "feedback", "metrics", "config", "user_properties")
_KEY = ("event_id", "session_id", "event_type")


def apply_update(event: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """The stored event after a PUT /events body; idempotent, so a retried PUT changes nothing.
    An empty children_ids is ignored, as HoneyHive does, and so are the fields that make the
    key (event_id, session_id, event_type): an update never moves an event. A new end_time
    without a duration drops the stored one, which the core then derives from the two times."""
    out = dict(event)
    if update.get("end_time") is not None and update.get("duration") is None:
        out.pop("duration", None)
    for name, value in update.items():
        if name in _KEY or value is None or (name == "children_ids" and value == []):
            continue
        stored = out.get(name)
        if name in MERGED and isinstance(value, dict) and isinstance(stored, dict):
            out[name] = {**stored, **value}
        else:
            out[name] = value
    return out
