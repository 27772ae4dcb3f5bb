"""Hypothesis strategies for hostile turnstream.v1 records: every kind, every field, driven by
the message descriptors (a field added to the contract is generated without touching this file).

A record is drawn "clean" (every field within what validation allows, but at its edges: extreme
ints, subnormal and huge-but-finite floats, astral / combining / RTL / zero-width text, deep and
wide Structs, the first and last valid instants) or "hostile" (any field may also be NaN,
±Infinity, negative, NUL, too long, an undefined enum, a Timestamp outside years 1-9999 or with
nanos outside [0, 1e9), a Struct Value with no kind, a required field missing). Clean records
are what makes "a validated record always stores" test anything; hostile ones, "never raises".

`Hazards` switches on the inputs the issue (#6) names as still breaking the core, so the tests
can run every other invariant today and the full set once the fixes land.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2, text_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from turnstream.core import validate
from turnstream.v1 import ingest_pb2, records_pb2

# The pipeline's clock in every property test: examples must not depend on the day they run.
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
EARLIEST = int(validate.EARLIEST_TIME.timestamp())
# The last whole second validation accepts (any nanos added to it stay within the skew).
LATEST = int((NOW + validate.CLOCK_SKEW).timestamp()) - 1

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
MAX_FLOAT = 1.7976931348623157e308
# Below this bound no sum or product the core derives (4 costs, runtime x weight x weight x 0.15)
# can leave float range; above it is the "huge floats" hazard.
SAFE_FLOAT = 1e100

# Year 1 starts at -62135596800 s; year 10000 at 253402300800 s (what RFC 3339 can spell).
YEAR_1 = -62_135_596_800
YEAR_10000 = 253_402_300_800


@dataclass(frozen=True)
class Hazards:
    """Inputs that broke the core (issue 6), each a switch: a gap not fixed yet stays off in
    the tests that must pass and on in an xfail(strict) one."""

    # NaN / ±Infinity as Struct numbers (metrics, tool_input, metadata, user_properties).
    nonfinite_structs: bool = False
    # Finite floats above SAFE_FLOAT in scalar fields: derived costs / AEM may overflow to inf.
    huge_floats: bool = False
    # Structs built in memory (a JSON door) nested 250-400 levels: past the wire parser's limit
    # and deep enough for the recursive JSON printer to hit Python's recursion limit.
    deep_structs: bool = False
    # Turn.price_version longer than its varchar(64) column: validation does not bound it.
    long_price_version: bool = False


NONE = Hazards()
# The hazards issue 6 names, which the core now handles.
ISSUE_6 = Hazards(nonfinite_structs=True, huge_floats=True, deep_structs=True)

# -- text ----------------------------------------------------------------------------------------

# Text the wire can carry: any code point but surrogates (protobuf refuses them).
_CHARS = st.characters(exclude_categories=("Cs",))
# Printable-ish unicode without C0 controls and DEL: what validation accepts in ids.
_ID_CHARS = st.characters(exclude_categories=("Cs", "Cc"))

ODD_TEXT = (
    "e\u0301\u0302\u0303",  # combining marks stacked on one letter
    "\u202eevil\u202c",  # RTL override
    "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",  # Hebrew and Arabic
    "a\u200bb\u200c\u200d\ufeff",  # zero-width space / (non-)joiner / BOM
    "\U0001d518\U0001d52b\U0001d526",  # astral letters
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a ZWJ emoji sequence
    "\U0010ffff\uffff\ufffe",  # the last code point and noncharacters
    "\u0085\u2028\u2029",  # NEL and the Unicode line/paragraph separators
    "\u00a0\u3000",  # Unicode spaces only: "blank" to str.strip()
    "Ω≈ç√∫",
)
CONTROL_TEXT = ("\x00", "a\x00b", "\x1b[31mred\x1b[0m", "\x7f", "line\r\nbreak", "\t", "\x01\x1f")


@functools.cache
def texts(max_size: int = 24) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD_TEXT), st.text(_CHARS, max_size=max_size))


@functools.cache
def valid_ids() -> st.SearchStrategy[str]:
    """Ids validation accepts: 1-256 characters (astral ones count once), no C0 control."""
    return st.one_of(
        st.sampled_from(["exec-a", "exec-b", "\U0001d518" * 256, "x" * 256, "e\u0301" * 128]),
        st.sampled_from([t for t in ODD_TEXT if t.strip()]),
        st.text(_ID_CHARS, min_size=1, max_size=40),
    )


@functools.cache
def hostile_strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(CONTROL_TEXT),
        st.sampled_from(
            ["", "   ", "x" * 257, "x" * 300, "\U0001d518" * 257, "a\x00" * 150, "y" * 10_001]
        ),
        st.text(_CHARS, max_size=40),
    )


MODELS = (
    "claude-sonnet-4-5",
    "claude-opus-4",
    "claude-haiku-4-5",
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-5",
    "o3",
    "unknown-model-\U0001d518",
    "anthropic/claude-sonnet-4-5-20250929",
)

# -- numbers -------------------------------------------------------------------------------------


@functools.cache
def ints(lo: int, hi: int, *, valid: bool) -> st.SearchStrategy[int]:
    low = max(lo, 0) if valid else lo
    edges = sorted({low, low + 1, 0, 1, hi - 1, hi} | ({-1, lo + 1} if not valid else set()))
    return st.one_of(st.sampled_from([e for e in edges if low <= e <= hi]), st.integers(low, hi))


FINITE_EDGES = (0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 0.1, 1.0, 12345.678, 1e100)
HUGE_EDGES = (1e300, 1e308, MAX_FLOAT)
NONFINITE = (math.nan, math.inf, -math.inf)


@functools.cache
def floats(*, valid: bool, hazards: Hazards) -> st.SearchStrategy[float]:
    top = MAX_FLOAT if hazards.huge_floats else SAFE_FLOAT
    edges = FINITE_EDGES + (HUGE_EDGES if hazards.huge_floats else ())
    out = st.one_of(st.sampled_from(edges), st.floats(0.0, top))
    if valid:
        return out
    return st.one_of(
        out,
        st.sampled_from((*NONFINITE, -1.0, -5e-324, -MAX_FLOAT)),
        st.floats(-top, top),
    )


# -- timestamps ----------------------------------------------------------------------------------


@functools.cache
def timestamps(*, valid: bool) -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    nanos = st.one_of(st.sampled_from([0, 999_999_999]), st.integers(0, 999_999_999))
    seconds = st.one_of(st.sampled_from([EARLIEST, LATEST]), st.integers(EARLIEST, LATEST))
    if not valid:
        seconds = st.one_of(
            seconds,
            st.sampled_from(
                [YEAR_1 - 1, YEAR_1, 0, -1, YEAR_10000 - 1, YEAR_10000, INT64[0], INT64[1]]
            ),
            st.integers(*INT64),
        )
        nanos = st.one_of(
            nanos, st.sampled_from([-1, 1_000_000_000, INT32[0], INT32[1]]), st.integers(*INT32)
        )
    return st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=nanos)


# -- Structs -------------------------------------------------------------------------------------
# A Struct is drawn as a small tree, then built: ("null",), ("num", x), ("str", s), ("bool", b),
# ("unset",) for a Value with no kind, ("list", [...]), ("struct", [(key, node), ...]).

Node = tuple[Any, ...]


@functools.cache
def _leaves(*, hazards: Hazards) -> st.SearchStrategy[Node]:
    numbers = st.one_of(
        st.sampled_from(FINITE_EDGES + HUGE_EDGES + (-1.0, -MAX_FLOAT)),
        st.floats(allow_nan=False, allow_infinity=False),
    )
    if hazards.nonfinite_structs:
        numbers = st.one_of(numbers, st.sampled_from(NONFINITE))
    leaves = [
        st.just(("null",)),
        numbers.map(lambda x: ("num", x)),
        st.one_of(texts(), st.sampled_from(CONTROL_TEXT)).map(lambda s: ("str", s)),
        st.booleans().map(lambda b: ("bool", b)),
        st.just(("unset",)),  # JSON prints it as null: not an error in itself
    ]
    return st.one_of(*leaves)


@functools.cache
def _keys() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["", "a", "\x00", "k\x00ey", *ODD_TEXT]), texts(12))


@functools.cache
def struct_trees(*, hazards: Hazards) -> st.SearchStrategy[Node]:
    leaf = _leaves(hazards=hazards)
    tree = st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.lists(kids, max_size=4).map(lambda xs: ("list", xs)),
            st.lists(st.tuples(_keys(), kids), max_size=4).map(lambda kv: ("struct", kv)),
        ),
        max_leaves=12,
    )
    # Deep: a chain of 1-40 nested Structs (the wire parser stops at 32 inside a Write); wide:
    # up to 300 keys on one level.
    levels = st.integers(1, 40)
    if hazards.deep_structs:
        levels = st.one_of(levels, st.integers(250, 400))
    deep = st.tuples(levels, leaf).map(lambda d: _chain(*d))
    wide = st.tuples(st.integers(50, 300), leaf).map(
        lambda w: ("struct", [(f"k{i}", w[1]) for i in range(w[0])])
    )
    top = st.lists(st.tuples(_keys(), tree), max_size=6).map(lambda kv: ("struct", kv))
    return st.one_of(top, deep, wide)


def _chain(depth: int, leaf: Node) -> Node:
    """("chain", depth, leaf): Struct{"d": Struct{"d": ... Struct{"v": leaf}}}, `depth` Structs
    in all; built without recursion, so hundreds of levels do not hit the test's own stack."""
    if depth <= 1:
        return ("struct", [("v", leaf)])
    return ("struct", [("d", ("chain", depth - 1, leaf))])


def build_value(node: Node, value: struct_pb2.Value) -> None:
    kind = node[0]
    if kind == "unset":
        return  # the map entry exists with a Value whose kind oneof is not set
    if kind == "null":
        value.null_value = struct_pb2.NULL_VALUE
    elif kind == "num":
        value.number_value = node[1]
    elif kind == "str":
        value.string_value = node[1]
    elif kind == "bool":
        value.bool_value = node[1]
    elif kind == "chain":
        struct = value.struct_value
        for _ in range(node[1] - 1):
            struct = struct.fields["d"].struct_value
        build_value(node[2], struct.fields["v"])
    elif kind == "list":
        value.list_value.SetInParent()
        for child in node[1]:
            build_value(child, value.list_value.values.add())
    else:
        build_struct(node, value.struct_value)


def build_struct(node: Node, struct: struct_pb2.Struct) -> None:
    for key, child in node[1]:
        build_value(child, struct.fields[key])


# -- records -------------------------------------------------------------------------------------

_NUMBER_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: INT32,
    FieldDescriptor.CPPTYPE_INT64: INT64,
    FieldDescriptor.CPPTYPE_UINT32: UINT32,
    FieldDescriptor.CPPTYPE_UINT64: UINT64,
}


@functools.cache
def field_values(field: FieldDescriptor, valid: bool, hazards: Hazards) -> st.SearchStrategy[Any]:
    """The values one field of a record is drawn from (built once: strategies are costly to
    build and validate, cheap to draw from)."""
    name = field.name
    if field.is_repeated:  # tools_called_names
        names = st.one_of(st.sampled_from(["read_file", "bash", ""]), texts(16))
        if not valid:
            names = st.one_of(names, hostile_strings())
        return st.lists(names, max_size=5)
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return timestamps(valid=valid)
        return struct_trees(hazards=hazards)
    if field.enum_type is not None:
        defined = st.sampled_from([v.number for v in field.enum_type.values])
        return defined if valid else st.one_of(defined, ints(*INT32, valid=False))
    cpp = field.cpp_type
    if cpp in _NUMBER_RANGES:
        return ints(*_NUMBER_RANGES[cpp], valid=valid)
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return floats(valid=valid, hazards=hazards)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    # strings
    if name == "execution_id":
        good = st.one_of(st.sampled_from(["exec-a", "exec-b"]), valid_ids())
    elif name in validate.ID_FIELDS:
        good = valid_ids()
    elif name == "model":
        good = st.one_of(st.sampled_from(MODELS), valid_ids())
    elif name in validate.STRING_LIMITS:
        good = texts()
    elif name == "price_version":
        good = texts()  # the long_price_version hazard is set in records()
    else:
        # Free text: response_preview and tool_output are truncated by enrich, not rejected.
        good = st.one_of(texts(), st.sampled_from(["p" * 501, "o" * 10_001]))
    if any(name in fields for fields in validate.REQUIRED.values()):
        good = good.filter(str.strip)  # a blank required string is "missing": hostile only
    return good if valid else st.one_of(good, hostile_strings())


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    if field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.message_type is not None:
        target = getattr(message, field.name)
        if isinstance(value, tuple):  # a Struct tree
            target.SetInParent()
            build_struct(value, target)
        else:
            target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


@st.composite
def records(draw: Any, cls: type[Message], hazards: Hazards = NONE) -> Message:
    """One record of `cls`, clean two times in three. A clean record has its required fields and
    its times in order; a hostile one misses each required field 3 times in 10. Every other field
    is set half the time."""
    descriptor: Descriptor = cls.DESCRIPTOR
    required = set(validate.REQUIRED[descriptor.name])
    valid = draw(st.sampled_from([True, True, False]))
    message = cls()
    for field in descriptor.fields:
        chance = (10 if valid else 7) if field.name in required else 5
        if draw(st.integers(0, 9)) >= chance:
            continue
        _set(message, field, draw(field_values(field, valid, hazards)))
    if "turn_number" in descriptor.fields_by_name and draw(st.booleans()):
        message.turn_number = draw(st.integers(0, 3))  # type: ignore[attr-defined]
    if hazards.long_price_version and "price_version" in descriptor.fields_by_name:
        # Every turn carries it, priced by the worker so that enrich keeps it (a turn the
        # server prices gets the table's version): the gap shows in every run, not by chance.
        message.price_version = "v" * 65  # type: ignore[attr-defined]
        message.input_cost = 0.5  # type: ignore[attr-defined]
    if valid and message.HasField("started_at") and message.HasField("completed_at"):
        started, completed = message.started_at, message.completed_at  # type: ignore[attr-defined]
        if (completed.seconds, completed.nanos) < (started.seconds, started.nanos):
            swap = timestamp_pb2.Timestamp()
            swap.CopyFrom(started)
            started.CopyFrom(completed)
            completed.CopyFrom(swap)
    return message


@st.composite
def write_requests(draw: Any, hazards: Hazards = NONE) -> ingest_pb2.WriteRequest:
    """A Write mixing every kind: an optional execution, up to 6 turns, 4 tool calls, 4 tasks;
    the request-level execution_id (which fills records that leave theirs empty) often set."""
    req = ingest_pb2.WriteRequest()
    if draw(st.booleans()):
        req.execution_id = draw(st.one_of(st.sampled_from(["exec-a", "exec-b"]), valid_ids()))
    if draw(st.booleans()):
        req.execution.CopyFrom(draw(records(records_pb2.Execution, hazards)))
    # add().CopyFrom(), not extend(): extend copies through the wire parser, which refuses
    # Structs nested past its depth limit that a record built in memory can hold.
    for name, cls, most in (
        ("turns", records_pb2.Turn, 6),
        ("tool_calls", records_pb2.ToolCall, 4),
        ("tasks", records_pb2.Task, 4),
    ):
        for record in draw(st.lists(records(cls, hazards), max_size=most)):
            getattr(req, name).add().CopyFrom(record)
    return req


class Shown:
    """A drawn message with a short repr: Hypothesis prints the falsifying example, and the text
    format of a hostile record runs to megabytes (10,000-character strings, 300-key Structs)."""

    def __init__(self, message: Message) -> None:
        self.message = message

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis' pretty printer would print the message itself

    def __repr__(self) -> str:
        try:
            text = text_format.MessageToString(self.message, as_one_line=True)
        except Exception:  # RecursionError, or DecodeError: the printer copies through the parser
            return f"<{self.message.DESCRIPTOR.name} of {self.message.ByteSize()} bytes, too deep>"
        text = _LONG_STRING.sub(lambda m: f'{m.group(1)}..." ({len(m.group(0))} chars)', text)
        return f"{self.message.DESCRIPTOR.name}({text[:8000]})"


_LONG_STRING = re.compile(r'("(?:[^"\\]|\\.){40})(?:[^"\\]|\\.)+"')


def shown(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Shown]:
    return strategy.map(Shown)


RECORD_CLASSES = (records_pb2.Turn, records_pb2.ToolCall, records_pb2.Task, records_pb2.Execution)
