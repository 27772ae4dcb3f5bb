"""Core: the fast path of validate -> rows, generated once per record type from its descriptor
(no I/O). Every record goes through it; what a client is told never depends on it.

`check(message, latest)` answers one question, "does this record break no rule?", in straight-
line code (an attribute read per field, one `min`/`sum` over the numbers, one regex over the ids)
instead of the descriptor walk of validate.py, and converts the record's Structs to JSON values
on the way (rows.py takes them from there). It is conservative: whenever a record might break a
rule it answers None, and the caller runs validate.py's generic walk, which reports every
violation at once. `row(message, tenant_id, structs)` builds the record's row from an attribute
read per field. tests/property/test_fastpath.py holds both to the generic code.

The code is generated (as attrs and cattrs do) so that adding a field to the contract needs no
change here: a field kind the generator does not know sends every record of its type the
generic way, which is slower, never wrong. The same source runs one of two ways:
- compiled: `make gen` writes it out as core/fastgen.py, which setup.py compiles with mypyc
  (with core/fastrt.py's helpers: Struct -> JSON from the wire bytes) when a C compiler is
  present; it is used when it is the compiled module of exactly today's source;
- pure Python: exec'd here at import, with the helpers below. Always there, and forced with
  TURNSTREAM_PURE_PYTHON=1.
`PATH` says which one this process runs (the server logs it at start).

    python -m turnstream.core.fastpath > src/turnstream/core/fastgen.py   (what `make gen` does)
"""

from __future__ import annotations
import __future__

import datetime as dt
import hashlib
import importlib.machinery
import keyword
import logging
import math
import os
import sys
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from turnstream.core import deadletter, validate
from turnstream.v1 import records_pb2

log = logging.getLogger(__name__)

Check = Callable[[Any, float], "dict[str, Any] | None"]
Row = dict[str, Any]
RowOf = Callable[[Any, str, "dict[str, Any] | None"], Row]

PURE_ENV = "TURNSTREAM_PURE_PYTHON"
# The record types the module is generated for, in this order.
RECORDS: tuple[Descriptor, ...] = (
    records_pb2.Turn.DESCRIPTOR,
    records_pb2.ToolCall.DESCRIPTOR,
    records_pb2.Task.DESCRIPTOR,
    records_pb2.Execution.DESCRIPTOR,
)

_TIMESTAMP = "google.protobuf.Timestamp"
_STRUCT = "google.protobuf.Struct"
_NUMBERS = validate._NUMBER_TYPES
_PY_TYPES = {
    FieldDescriptor.CPPTYPE_INT32: "int",
    FieldDescriptor.CPPTYPE_INT64: "int",
    FieldDescriptor.CPPTYPE_UINT32: "int",
    FieldDescriptor.CPPTYPE_UINT64: "int",
    FieldDescriptor.CPPTYPE_DOUBLE: "float",
    FieldDescriptor.CPPTYPE_FLOAT: "float",
    FieldDescriptor.CPPTYPE_BOOL: "bool",
    FieldDescriptor.CPPTYPE_STRING: "str",
}


class _Unclean(Exception):
    """A Struct holds something validate.py reports: leave the fast path."""


def _json_struct(struct: Any, depth: int) -> dict[str, Any]:
    if depth > validate.MAX_STRUCT_DEPTH:
        raise _Unclean
    out: dict[str, Any] = {}
    fields = struct.fields
    # Keys then lookups: the map's items() is the slow generic Mapping mixin. Strings and
    # numbers, nearly every value, are handled here without a call.
    for key in fields:
        value = fields[key]
        which = value.WhichOneof("kind")
        if which == "number_value":
            item = value.number_value
            if item - item != 0.0:  # NaN or +-Infinity
                raise _Unclean
        elif which == "string_value":
            item = value.string_value
            if "\x00" in item:
                item = deadletter.clean_text(item)
        else:
            item = _json_value(value, depth)
        out[key if "\x00" not in key else deadletter.clean_text(key)] = item
    return out


def _json_value(value: Any, depth: int) -> Any:
    """What json_format.MessageToDict + deadletter.clean_json make of a Value the generic
    walk accepts; _Unclean for one it would report (NaN, Infinity, no kind, too deep)."""
    which = value.WhichOneof("kind")
    if which == "string_value":
        text: str = value.string_value
        return text if "\x00" not in text else deadletter.clean_text(text)
    if which == "number_value":
        number: float = value.number_value
        if number - number != 0.0:  # NaN or +-Infinity
            raise _Unclean
        return number
    if which == "bool_value":
        return value.bool_value
    if which == "null_value":
        return None
    if which == "struct_value":
        return _json_struct(value.struct_value, depth + 1)
    if which == "list_value":
        if depth + 1 > validate.MAX_STRUCT_DEPTH:
            raise _Unclean
        return [_json_value(item, depth + 1) for item in value.list_value.values]
    raise _Unclean  # a Value with no kind set


def _json_struct_within(struct: Any, limit: int) -> dict[str, Any] | None:
    """The generated check's Struct -> JSON: None when larger than `limit` bytes serialized
    (validate.py reports it), _Unclean when validate.py would report something in it."""
    if struct.ByteSize() > limit:
        return None
    return _json_struct(struct, 1)


def struct_json(struct: Any) -> dict[str, Any] | None:
    """A Struct as a JSON object, or None when validate.py would report something in it."""
    try:
        return _json_struct(struct, 1)
    except _Unclean:
        return None


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp_value(ts: Any) -> dt.datetime:
    # Timestamp.ToDatetime costs several times this; it is called for every time of every row.
    # (Positional timedelta arguments: keywords cost a third more.)
    return _EPOCH + dt.timedelta(0, ts.seconds, ts.nanos // 1000)


def slow_json(message: Any) -> Any:
    return deadletter.clean_json(json_format.MessageToDict(message))


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


def _plain(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _is(field: FieldDescriptor, full_name: str) -> bool:
    return field.message_type is not None and field.message_type.full_name == full_name


def _read(tables: list[str], name: str, fields: list[str]) -> str:
    """An expression reading several fields as a tuple: one attrgetter (C) for two or more."""
    if len(fields) == 1:
        return f"(m.{fields[0]},)"
    tables.append(f"{name} = attrgetter({', '.join(map(repr, fields))})")
    return f"{name}(m)"


def _check_source(descriptor: Descriptor, tables: list[str]) -> list[str]:
    """The body of check(m, latest) for one record type; [] when it must always go generic.
    Module-level tables it needs are appended to `tables`. Each string and time is read once,
    into a typed local (mypyc then compares it natively)."""
    fields = list(descriptor.fields)
    if not all(_plain(f.name) for f in fields):
        return []
    by_name = {f.name: f for f in fields}
    kind = descriptor.name
    required = validate.REQUIRED.get(kind, ())
    body = ["out: dict[str, Any] = {}"]
    read: set[str] = set()
    for f in fields:
        if (
            not f.is_repeated
            and f.cpp_type == FieldDescriptor.CPPTYPE_STRING
            and (f.name in validate.STRING_LIMITS or f.name in required)
        ):
            body.append(f"s_{f.name}: str = m.{f.name}")
            read.add(f.name)
    for name in required:
        field = by_name[name]
        if field.has_presence:
            body.append(f"if not m.HasField({name!r}): return None")
        elif name in read:
            body.append(f"if not s_{name}.strip(): return None")
        else:
            body.append(f"if not str(m.{name}).strip(): return None")
    numbers: list[str] = []
    ids: list[str] = []
    times: list[str] = []
    limited: dict[int, list[str]] = {}
    for f in fields:
        name = f.name
        if f.is_repeated:
            if name == "tools_called_names":
                body += [
                    f"r = m.{name}",
                    f"if len(r) > {validate.MAX_TOOL_NAMES} or "
                    f"(r and max(map(len, r)) > {validate.MAX_TOOL_NAME_LENGTH}): return None",
                ]
        elif f.cpp_type in _NUMBERS:
            numbers.append(name)
        elif f.cpp_type == FieldDescriptor.CPPTYPE_STRING:
            limit = validate.STRING_LIMITS.get(name)
            if limit is not None:
                limited.setdefault(limit, []).append(name)
            if name in validate.ID_FIELDS:
                ids.append(name)
        elif f.cpp_type == FieldDescriptor.CPPTYPE_ENUM and f.enum_type is not None:
            defined = sorted(f.enum_type.values_by_number)
            if 0 not in defined:
                return []  # an unset enum would be checked as 0 here but skipped there
            tables.append(f"defined_{kind}_{name} = frozenset({defined!r})")
            body.append(f"if m.{name} not in defined_{kind}_{name}: return None")
        elif _is(f, _TIMESTAMP):
            times.append(name)
            body += [
                f"if m.HasField({name!r}):",
                f"    t_{name} = m.{name}",
                f"    sec_{name}: int = t_{name}.seconds",
                f"    ns_{name}: int = t_{name}.nanos",
                f"    if not 0 <= ns_{name} <= {validate._MAX_NANOS}: return None",
                f"    at_{name}: float = sec_{name} + ns_{name} / 1e9",
                f"    if at_{name} < earliest or at_{name} > latest: return None",
                "else:",
                f"    t_{name} = None",
                f"    sec_{name} = ns_{name} = 0",
            ]
        elif _is(f, _STRUCT):
            limit = validate.STRUCT_LIMITS.get(name, validate.MAX_STRUCT_BYTES)
            body += [
                f"if m.HasField({name!r}):",
                f"    j = json_struct(m.{name}, {limit})",
                "    if j is None: return None",
                f"    out[{name!r}] = j",
            ]
        # Bools and other messages: the generic walk checks nothing either.
    for limit, names in limited.items():
        longer = " or ".join(f"len(s_{name}) > {limit}" for name in names)
        body.append(f"if {longer}: return None")
    if numbers:
        # Negative values fail min(); NaN or Infinity make the sum not finite. A sum that
        # overflows only sends a valid record the generic way.
        got = _read(tables, f"numbers_{kind}", numbers)
        body += [f"n = {got}", "if min(n) < 0 or not isfinite(sum(n)): return None"]
    if ids:
        body.append(f"if control({' + '.join(f's_{name}' for name in ids)}): return None")
    if "started_at" in times and "completed_at" in times:
        body += [
            "if t_started_at is not None and t_completed_at is not None and (",
            "    sec_completed_at < sec_started_at",
            "    or (sec_completed_at == sec_started_at and ns_completed_at < ns_started_at)",
            "): return None",
        ]
    body.append("return out")
    return body


def _row_source(descriptor: Descriptor, tables: list[str]) -> list[str]:
    """The body of row(m, tenant_id, structs), field by field in descriptor order: an attribute
    read per field (presence asked only when a value is zero, False or empty) instead of
    `ListFields()`, whose (descriptor, value) tuples cost more than the fields they list.
    Absent fields are None, exactly what ListFields() would leave out: "keep the stored value".
    `structs`: the Struct fields the check already converted."""
    kind = descriptor.name
    body, items = [], ["'tenant_id': tenant_id"]
    for f in descriptor.fields:
        name, var = f.name, f"v_{f.name}"
        if f.is_repeated:
            body += [f"{var} = m.{name}", f"{var} = [clean(s) for s in {var}] if {var} else None"]
        elif _is(f, _TIMESTAMP):
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
            words = {v.number: enum_word(f, v.number) for v in f.enum_type.values}
            tables.append(f"words_{kind}_{name} = {words!r}")
            body.append(f"{var} = words_{kind}_{name}.get(m.{name})")
        else:
            # Typed, so that mypyc tests and compares the value natively.
            body.append(f"{var}: {_PY_TYPES[f.cpp_type]} | None = m.{name}")
            if f.has_presence:
                # Zero, False and "" are ambiguous: only then ask whether the field is set.
                body.append(f"if not {var} and not m.HasField({name!r}): {var} = None")
            else:
                body.append(f"if not {var}: {var} = None")
            if f.type == FieldDescriptor.TYPE_STRING:
                sent = f"{var} and " if f.has_presence else ""  # "" may be set, and is clean
                body.append(f"elif {sent}'\\x00' in {var}: {var} = clean({var})")
        items.append(f"{name!r}: {var}")
    body.append("return {" + ", ".join(items) + "}")
    return body


def _indent(lines: list[str], by: str) -> str:
    return "".join(f"{by}{line}\n" for line in lines)


def source(descriptor: Descriptor) -> str:
    """The generated code of one record type: its tables, check_<Type> (absent when every
    record of the type goes the generic way) and row_<Type>."""
    kind = descriptor.name
    if not all(_plain(f.name) for f in descriptor.fields):
        raise ValueError(f"{descriptor.full_name}: a field name is not a Python identifier")
    tables: list[str] = []
    check = _check_source(descriptor, tables)
    row = _row_source(descriptor, tables)
    out = "".join(f"{t}\n" for t in tables)
    if check:
        out += (
            f"\n\ndef check_{kind}(m: Any, latest: float) -> dict[str, Any] | None:\n"
            f"    try:\n{_indent(check, '        ')}"
            "    except Unclean:\n        return None\n"
        )
    out += (
        f"\n\ndef row_{kind}(m: Any, tenant_id: str, structs: dict[str, Any] | None) "
        f"-> dict[str, Any]:\n{_indent(row, '    ')}"
    )
    return out


def _all_sources() -> str:
    return "".join(source(d) for d in RECORDS)


def _digest(code: str) -> str:
    """The generated code and fastrt.py's source: a compiled module built from either before
    it changed is stale."""
    helpers = Path(__file__).with_name("fastrt.py")
    text = code + (helpers.read_text() if helpers.exists() else "(no fastrt.py)")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_HEADER = '''\
"""Generated by `python -m turnstream.core.fastpath` (`make gen`) from the record descriptors:
do not edit. core/fastpath.py's generated fast path as a module, for mypyc to compile (setup.py);
fastpath.py uses it only when compiled and when DIGEST matches the code it generates itself
(and core/fastrt.py's source)."""

# ruff: noqa
from __future__ import annotations

from math import isfinite
from operator import attrgetter
from typing import Any

from turnstream.core.fastrt import EARLIEST as earliest
from turnstream.core.fastrt import Unclean, clean, control, json_struct, slow_json, ts

DIGEST = {digest!r}
'''


def emit() -> str:
    """core/fastgen.py: the generated code of every record type as one module."""
    code = _all_sources()
    return _HEADER.format(digest=_digest(code)) + code


def _pure_env() -> dict[str, Any]:
    return {
        "Any": Any,
        "attrgetter": attrgetter,
        "isfinite": math.isfinite,
        "control": validate._CONTROL.search,
        "earliest": validate._EARLIEST_SECONDS,
        "json_struct": _json_struct_within,
        "Unclean": _Unclean,
        "clean": deadletter.clean_text,
        "ts": timestamp_value,
        "slow_json": slow_json,
    }


def _exec(descriptor: Descriptor) -> dict[str, Any]:
    env = _pure_env()
    code = compile(
        source(descriptor),
        f"<turnstream.core.fastpath {descriptor.name}>",
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    exec(code, env)
    return env


def _compiled() -> tuple[ModuleType | None, str]:
    """The compiled core/fastgen.py when it is usable, and the path in words."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"pure Python ({PURE_ENV} is set)"
    try:
        from turnstream.core import fastgen, fastrt
    except ImportError as e:  # a partial or broken build: never worse than pure Python
        return None, f"pure Python (the compiled fast path does not import: {e})"
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    if not all(str(getattr(m, "__file__", "")).endswith(suffixes) for m in (fastgen, fastrt)):
        return None, "pure Python (not compiled: no C compiler at install, or `make compile`)"
    if _digest(_all_sources()) != fastgen.DIGEST:
        log.warning("core/fastgen's compiled module is stale: run `make gen compile`")
        return None, "pure Python (the compiled fast path is stale: `make gen compile`)"
    return fastgen, f"compiled (mypyc: {Path(str(fastgen.__file__)).name})"


_NATIVE, PATH = _compiled()
COMPILED = _NATIVE is not None
_GENERATED = frozenset(d.full_name for d in RECORDS)


def make_check(descriptor: Descriptor) -> Check | None:
    """The fast check of one record type, or None if its fields need the generic walk."""
    name = f"check_{descriptor.name}"
    if _NATIVE is not None and descriptor.full_name in _GENERATED:
        return getattr(_NATIVE, name, None)
    return _exec(descriptor).get(name)


def make_row(descriptor: Descriptor) -> RowOf:
    """The row builder of one message type (tenant_id first, then every field)."""
    name = f"row_{descriptor.name}"
    if _NATIVE is not None and descriptor.full_name in _GENERATED:
        return getattr(_NATIVE, name)  # type: ignore[no-any-return]
    return _exec(descriptor)[name]  # type: ignore[no-any-return]


if __name__ == "__main__":
    sys.stdout.write(emit())
