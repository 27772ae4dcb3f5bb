"""store/sqlite.py's conversions of the values it binds, built for speed, write exactly the text
the plain ones write (the stored text is what a replay is compared with): JSON as json.dumps
with sorted keys and no spaces, times as schema.sqlite_time."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_pg_json import VALUES
from turnstream.store.schema import sqlite_time
from turnstream.store.sqlite import _json_text, _time_text


@settings(max_examples=500, derandomize=True, database=None)
@given(value=VALUES)
def test_json_text_is_json_dumps_sorted_and_compact(value: Any) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert _json_text(value) == expected


@pytest.mark.parametrize("value", [{"x": object()}, [b"bytes"]])
def test_json_text_refuses_what_json_dumps_refuses(value: Any) -> None:
    with pytest.raises(TypeError):
        _json_text(value)


# UTC itself (the fast path), another zone, and a UTC that is not dt.UTC (the fallback).
ZONES = st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=-5)), dt.timezone(dt.timedelta(0), "Z")]
)


@settings(max_examples=500, derandomize=True, database=None)
@given(value=st.datetimes(timezones=ZONES))
def test_time_text_is_sqlite_time(value: dt.datetime) -> None:
    assert _time_text(value) == sqlite_time(value)


def test_time_text_of_early_years_is_sqlite_time() -> None:
    for year in (1, 999, 1000):
        value = dt.datetime(year, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
        assert _time_text(value) == sqlite_time(value)
