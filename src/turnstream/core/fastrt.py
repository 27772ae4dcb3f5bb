"""Core: the helpers of the compiled fast path (core/fastgen.py calls them; no I/O).

Compiled with mypyc beside fastgen.py when a C compiler is present (setup.py); the pure-Python
fast path (core/fastpath.py's generated code) does not use this module. The one real difference
is the Struct -> JSON conversion: upb makes a Python object for every map entry and Value the
walk touches, so here the Struct is serialized by upb (C, one call) and its wire bytes decoded
into the same JSON value as fastpath._json_struct gives: the same keys, floats, strings (NUL
cleaned), nesting limit. Anything unexpected in the bytes (an unknown field, a Value with no
kind, NaN, a key that collides once cleaned) raises Unclean: the record goes the generic way,
which is slower, never wrong. tests/property/test_fastpath.py holds the two to each other.
"""

from __future__ import annotations

import datetime as dt
import re
import struct as _struct
from typing import Any

from google.protobuf import json_format

from turnstream.core import deadletter

# The same values as validate.py's (MAX_STRUCT_DEPTH, _CONTROL, _EARLIEST_SECONDS), repeated
# here so that this module imports no more than it must; tests/unit/test_fastgen.py compares.
MAX_STRUCT_DEPTH = 32
EARLIEST = 946684800.0  # 2000-01-01T00:00:00Z
control = re.compile(r"[\x00-\x1f\x7f]").search

_double = _struct.Struct("<d").unpack_from
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_timedelta = dt.timedelta


class Unclean(Exception):
    """A Struct holds something validate.py reports (or this decoder does not expect)."""


def clean(text: str) -> str:
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def ts(stamp: Any) -> dt.datetime:
    """rows.timestamp_value."""
    return _EPOCH + _timedelta(0, stamp.seconds, stamp.nanos // 1000)


def slow_json(message: Any) -> Any:
    return deadletter.clean_json(json_format.MessageToDict(message))


def json_struct(struct: Any, limit: int) -> dict[str, Any] | None:
    """fastpath._json_struct_within, from the Struct's wire bytes (their length is ByteSize())."""
    try:
        data: bytes = struct.SerializeToString()
        if len(data) > limit:
            return None
        return _struct_at(data, 0, len(data), 1)
    except Unclean:
        raise
    except Exception as e:  # too deep for upb, truncated, not UTF-8: never guess
        raise Unclean from e


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise Unclean


def _text(data: bytes, i: int, end: int) -> str:
    text = data[i:end].decode("utf-8")
    return text if "\x00" not in text else clean(text)


def _struct_at(data: bytes, i: int, end: int, depth: int) -> dict[str, Any]:
    # Struct: repeated (field 1) map entries {key = 1: string, value = 2: Value}.
    if depth > MAX_STRUCT_DEPTH:
        raise Unclean
    out: dict[str, Any] = {}
    while i < end:
        if data[i] != 0x0A:
            raise Unclean
        size, i = _varint(data, i + 1)
        stop = i + size
        key = ""
        value: Any = None
        seen = False
        while i < stop:
            tag = data[i]
            size, i = _varint(data, i + 1)
            if tag == 0x0A:
                key = _text(data, i, i + size)
            elif tag == 0x12:
                value = _value_at(data, i, i + size, depth)
                seen = True
            else:
                raise Unclean
            i += size
        if not seen or i != stop or key in out:
            raise Unclean  # no value (no kind); or two keys the same once NUL is cleaned
        out[key] = value
    return out


def _value_at(data: bytes, i: int, end: int, depth: int) -> Any:
    # Value: oneof kind {null_value = 1 (varint), number_value = 2 (fixed64),
    # string_value = 3, bool_value = 4 (varint), struct_value = 5, list_value = 6}.
    if i >= end:
        raise Unclean  # a Value with no kind set
    tag = data[i]
    i += 1
    if tag == 0x11:
        if end - i != 8:
            raise Unclean
        number: float = _double(data, i)[0]
        if number - number != 0.0:  # NaN or +-Infinity
            raise Unclean
        return number
    if tag == 0x08 or tag == 0x20:
        flag, i = _varint(data, i)
        if i != end:
            raise Unclean
        return None if tag == 0x08 else flag != 0
    size, i = _varint(data, i)
    if i + size != end:
        raise Unclean
    if tag == 0x1A:
        return _text(data, i, end)
    if tag == 0x2A:
        return _struct_at(data, i, end, depth + 1)
    if tag == 0x32:
        if depth + 1 > MAX_STRUCT_DEPTH:
            raise Unclean
        items: list[Any] = []
        while i < end:
            if data[i] != 0x0A:
                raise Unclean
            size, i = _varint(data, i + 1)
            items.append(_value_at(data, i, i + size, depth + 1))
            i += size
        return items
    raise Unclean
