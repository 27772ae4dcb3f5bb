"""The generated fast path (core/fastpath.py, rows.make_row) agrees with the generic code on
every record Hypothesis draws, clean and hostile: the check passes a record only when the
generic walk finds nothing in it, converts its Structs exactly as json_format + clean_json do,
and the generated row equals the row built from ListFields(). The pipeline's path is the
compiled one when it is built (`make test` runs this file once more with
TURNSTREAM_PURE_PYTHON=1); core/fastgen.py and core/fastrt.py, compiled or not, are held to the
pure-Python code here as well. Pure: many examples."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.property import strategies as s
from turnstream.core import deadletter, fastgen, fastpath, fastrt, rows, validate
from turnstream.core.pipeline import KINDS

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_KIND = {"Turn": "turn", "ToolCall": "tool_call", "Task": "task", "Execution": "execution"}


def reference_row(message: Message, tenant_id: str) -> rows.Row:
    """The row as rows.py built it before the fast path: every column None, then each field
    ListFields() lists, converted."""
    row: rows.Row = {"tenant_id": tenant_id, **{f.name: None for f in message.DESCRIPTOR.fields}}
    for field, value in message.ListFields():
        if field.is_repeated:
            row[field.name] = [deadletter.clean_text(v) for v in value]
        elif field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                row[field.name] = rows.timestamp_value(value)
            else:
                row[field.name] = deadletter.clean_json(json_format.MessageToDict(value))
        elif field.enum_type is not None:
            row[field.name] = rows.enum_word(field, value)
        elif isinstance(value, str):
            row[field.name] = deadletter.clean_text(value)
        else:
            row[field.name] = value
    return row


def _same(a: Any, b: Any) -> bool:
    """Equal, with -0.0 and 0.0 told apart and NaN equal to itself."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


HAZARDS = [pytest.param(s.NONE, id="baseline"), pytest.param(s.ISSUE_6, id="issue-6-hazards")]


@pytest.mark.parametrize("hazards", HAZARDS)
@pytest.mark.parametrize("cls", s.RECORD_CLASSES, ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_check_passes_only_what_the_generic_walk_passes(
    cls: type[Message], hazards: s.Hazards, data: st.DataObject
) -> None:
    message = data.draw(s.shown(s.records(cls, hazards))).message
    kind = KINDS[_KIND[cls.__name__]]
    assert kind.check is not None
    latest = (s.NOW + validate.CLOCK_SKEW).timestamp()
    structs = kind.check(message, latest)
    violations = kind.validate(message, "r", s.NOW)
    if structs is None:
        # Going the generic way is always allowed; for a valid record only when its numbers
        # overflow in the fast path's one sum (they are finite one by one).
        assert violations or not math.isfinite(
            sum(
                v
                for f, v in message.ListFields()
                if isinstance(v, int | float) and not f.is_repeated
            )
        )
        return
    assert violations == []
    expected = reference_row(message, "t")
    for name, value in structs.items():
        assert _same(value, expected[name]), name
    assert _same(kind.row("t", message, structs), {**expected, **_keys(message)})
    assert _same(kind.row("t", message, None), {**expected, **_keys(message)})


def _keys(message: Message) -> dict[str, Any]:
    name = message.DESCRIPTOR.name
    if name == "Execution":
        return {}
    key = {"Turn": rows.turn_key, "ToolCall": rows.tool_call_key, "Task": rows.task_key}[name]
    return {"record_key": deadletter.clean_text(key(message))}  # type: ignore[operator]


def test_struct_json_refuses_what_validate_reports() -> None:
    from google.protobuf import struct_pb2

    for bad in (float("nan"), float("inf"), -float("inf")):
        st_ = struct_pb2.Struct()
        st_.fields["x"].number_value = bad
        assert fastpath.struct_json(st_) is None
    empty = struct_pb2.Struct()
    empty.fields["x"].SetInParent()  # a Value with no kind
    assert fastpath.struct_json(empty) is None
    deep = struct_pb2.Struct()
    node = deep
    for _ in range(validate.MAX_STRUCT_DEPTH):
        node = node.fields["d"].struct_value
    assert fastpath.struct_json(deep) is None
    ok = struct_pb2.Struct()
    ok.update({"a\x00": "b\x00", "n": 1.5, "l": [1, None, True, {"k": "v"}]})
    assert fastpath.struct_json(ok) == deadletter.clean_json(json_format.MessageToDict(ok))


@pytest.mark.parametrize("hazards", HAZARDS)
@pytest.mark.parametrize("cls", s.RECORD_CLASSES, ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_generated_module_agrees_with_the_pure_code(
    cls: type[Message], hazards: s.Hazards, data: st.DataObject
) -> None:
    """core/fastgen.py (compiled when built, with fastrt's Struct decoder) answers exactly as
    the code fastpath.py execs, field for field and type for type."""
    message = data.draw(s.shown(s.records(cls, hazards))).message
    name = cls.__name__
    pure = fastpath._exec(cls.DESCRIPTOR)
    latest = (s.NOW + validate.CLOCK_SKEW).timestamp()
    want = pure[f"check_{name}"](message, latest)
    got = getattr(fastgen, f"check_{name}")(message, latest)
    # The wire decoder may send more records the generic way (an unknown field in a Struct, a
    # key that collides once cleaned), never fewer.
    assert got is None or _same(got, want)
    if want is None:
        return  # rows are built of valid records only
    for structs in (want, None):
        assert _same(
            getattr(fastgen, f"row_{name}")(message, "t", structs),
            pure[f"row_{name}"](message, "t", structs),
        )


@SETTINGS
@given(tree=s.struct_trees(hazards=s.ISSUE_6), limit=st.sampled_from([1 << 20, 64, 0]))
def test_wire_struct_decoder_agrees_with_the_upb_walk(tree: s.Node, limit: int) -> None:
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    s.build_struct(tree, struct)
    try:
        want = fastpath._json_struct_within(struct, limit)
    except fastpath._Unclean:
        want = "unclean"
    try:
        got = fastrt.json_struct(struct, limit)
    except fastrt.Unclean:
        got = "unclean"
    if got == "unclean" and want != "unclean":
        # Only where the decoder cannot be sure the walk's answer is the same one: two keys
        # equal once NUL is cleaned (which one wins depends on the map's order).
        keys = [deadletter.clean_text(k) for k in struct.fields]
        assert len(set(keys)) < len(keys) or _nested_collision(struct)
        return
    assert _same(got, want)


def _nested_collision(struct: Any) -> bool:
    keys = [deadletter.clean_text(k) for k in struct.fields]
    if len(set(keys)) < len(keys):
        return True
    return any(_value_collision(v) for v in struct.fields.values())


def _value_collision(value: Any) -> bool:
    which = value.WhichOneof("kind")
    if which == "struct_value":
        return _nested_collision(value.struct_value)
    if which == "list_value":
        return any(_value_collision(v) for v in value.list_value.values)
    return False
