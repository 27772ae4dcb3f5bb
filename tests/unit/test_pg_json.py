"""store/postgres.py's JSON encoder (json.dumps with its C encoder built once) writes exactly
what json.dumps writes, and refuses what it refuses, on any JSON-like value."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnstream.store.postgres import dumps_json

_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and Infinity too: written as json.dumps writes them (PostgreSQL refuses)
    st.text(),
)
VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, derandomize=True, database=None)
@given(value=VALUES)
def test_same_text_as_json_dumps(value: Any) -> None:
    assert dumps_json(value) == json.dumps(value)


@pytest.mark.parametrize("value", [{"x": object()}, [b"bytes"], {(1, 2): 3}])
def test_same_refusals_as_json_dumps(value: Any) -> None:
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        dumps_json(value)


def test_nan_is_written_as_json_dumps_writes_it() -> None:
    assert dumps_json({"n": math.nan}) == '{"n": NaN}'
