"""Core: the fast path of validate -> rows, generated once per record type from its descriptor
(no I/O). Every record goes through it; what a client is told never depends on it.

`check(message, latest)` answers one question, "does this record break no rule?", in straight-
line code (an attribute read per field, one `min`/`sum` over the numbers, one regex over the ids)
instead of the descriptor walk of validate.py, and converts the record's Structs to JSON values
on the way (rows.py takes them from there). It is conservative: whenever a record might break a
rule it answers None, and the caller runs validate.py's generic walk, which reports every
violation at once. tests/unit/test_fastpath.py holds it to the generic walk.

The code is generated (as attrs and cattrs do) so that adding a field to the contract needs no
change here: a field kind the generator does not know sends every record of its type the
generic way, which is slower, never wrong.
"""

from __future__ import annotations

import keyword
import math
import operator
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from turnstream.core import deadletter, validate

Check = Callable[[Any, float], "dict[str, Any] | None"]

_TIMESTAMP = "google.protobuf.Timestamp"
_STRUCT = "google.protobuf.Struct"
_NUMBERS = validate._NUMBER_TYPES


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


def struct_json(struct: Any) -> dict[str, Any] | None:
    """A Struct as a JSON object, or None when validate.py would report something in it."""
    try:
        return _json_struct(struct, 1)
    except _Unclean:
        return None


def _plain(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _is(field: FieldDescriptor, full_name: str) -> bool:
    return field.message_type is not None and field.message_type.full_name == full_name


def _getter(env: dict[str, Any], name: str, fields: list[str]) -> str:
    """One C call that reads several fields (attrgetter of one name returns no tuple)."""
    env[name] = (
        operator.attrgetter(*fields) if len(fields) > 1 else lambda m: (getattr(m, fields[0]),)
    )
    return f"{name}(m)"


def _check_source(descriptor: Descriptor, env: dict[str, Any]) -> list[str]:
    """The body of check(m, latest) for one record type; [] when it must always go generic."""
    fields = list(descriptor.fields)
    if not all(_plain(f.name) for f in fields):
        return []
    by_name = {f.name: f for f in fields}
    body = ["out = {}"]
    for name in validate.REQUIRED.get(descriptor.name, ()):
        field = by_name[name]
        if field.has_presence:
            body.append(f"if not m.HasField({name!r}): return None")
        elif field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
            body.append(f"if not m.{name}.strip(): return None")
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
            defined = frozenset(f.enum_type.values_by_number)
            if 0 not in defined:
                return []  # an unset enum would be checked as 0 here but skipped there
            env[f"defined_{name}"] = defined
            body.append(f"if m.{name} not in defined_{name}: return None")
        elif _is(f, _TIMESTAMP):
            times.append(name)
            body += [
                f"if m.HasField({name!r}):",
                f"    t_{name} = m.{name}",
                f"    n = t_{name}.nanos",
                f"    if not 0 <= n <= {validate._MAX_NANOS}: return None",
                f"    s = t_{name}.seconds + n / 1e9",
                "    if s < earliest or s > latest: return None",
                "else:",
                f"    t_{name} = None",
            ]
        elif _is(f, _STRUCT):
            limit = validate.STRUCT_LIMITS.get(name, validate.MAX_STRUCT_BYTES)
            body += [
                f"if m.HasField({name!r}):",
                f"    v = m.{name}",
                f"    if v.ByteSize() > {limit}: return None",
                f"    out[{name!r}] = json_struct(v, 1)",
            ]
        # Bools and other messages: the generic walk checks nothing either.
    for limit, names in limited.items():
        read = _getter(env, f"strings_{limit}", names)
        body.append(f"if max(map(len, {read})) > {limit}: return None")
    if numbers:
        # Negative values fail min(); NaN or Infinity make the sum not finite. A sum that
        # overflows only sends a valid record the generic way.
        read = _getter(env, "numbers", numbers)
        body += [f"n = {read}", "if min(n) < 0 or not isfinite(sum(n)): return None"]
    if ids:
        body.append(f"if control(''.join({_getter(env, 'ids', ids)})): return None")
    if "started_at" in times and "completed_at" in times:
        body += [
            "if t_started_at is not None and t_completed_at is not None:",
            "    a, b = t_started_at, t_completed_at",
            "    if (b.seconds, b.nanos) < (a.seconds, a.nanos): return None",
        ]
    body.append("return out")
    return body


def _compile(name: str, args: str, body: list[str], env: dict[str, Any]) -> Any:
    source = f"def {name}({args}):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, f"<turnstream.core.fastpath {name}>", "exec"), env)
    return env[name]


def _env() -> dict[str, Any]:
    return {
        "isfinite": math.isfinite,
        "control": validate._CONTROL.search,
        "earliest": validate._EARLIEST_SECONDS,
        "json_struct": _json_struct,
    }


def make_check(descriptor: Descriptor) -> Check | None:
    """The fast check of one record type, or None if its fields need the generic walk."""
    env = _env()
    body = _check_source(descriptor, env)
    if not body:
        return None
    inner = _compile("check_inner", "m, latest", body, env)

    def check(message: Any, latest: float) -> dict[str, Any] | None:
        try:
            return inner(message, latest)  # type: ignore[no-any-return]
        except _Unclean:
            return None

    return check
