"""Storage: the SQLite dialect — multi-row `INSERT … VALUES … ON CONFLICT DO UPDATE …
RETURNING`, chunked under the parameter limit (the merge SQL is shared with PostgreSQL in
dialects.py), BEGIN IMMEDIATE transactions, and a row sqlite3 cannot bind found and named."""

from __future__ import annotations

import datetime as dt
import json
import operator
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from turnstream.core.rows import Row
from turnstream.store import schema
from turnstream.store.dialects import (
    BOOKKEEPING,
    Key,
    SqlDialect,
    data_columns,
    key_columns,
)
from turnstream.store.faults import RowRefused


def _json_text_encoder() -> Callable[[Any], str]:
    """json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False), with its C
    encoder built once instead of on every call (as postgres.dumps_json): the same text — the
    stored text is what a replay is compared with — and the same TypeError."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator

        def dumps(value: Any) -> str:
            return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

        return dumps

    def default(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    encode = make(None, default, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    return lambda value: "".join(encode(value, 0))


_json_text = _json_text_encoder()


def _time_text(value: dt.datetime) -> str:
    """schema.sqlite_time, without strftime for the times rows carry (aware, in UTC, after
    year 999, where isoformat writes the same text): a third of its cost."""
    if value.tzinfo is dt.UTC and value.year >= 1000:
        return value.isoformat(" ", "microseconds")[:26]
    return schema.sqlite_time(value)


def _converters(table: sa.Table, cols: list[str]) -> tuple[list[int], list[int]]:
    """The positions in `cols` of the time columns and of the JSON columns: the only values
    sqlite3 cannot take as they are."""
    times = [i for i, c in enumerate(cols) if isinstance(table.c[c].type, schema.UTCDateTime)]
    jsons = [i for i, c in enumerate(cols) if isinstance(table.c[c].type, sa.JSON)]
    return times, jsons


# What sqlite3 raises when it cannot bind a value (before the statement runs).
_UNBINDABLE = (
    OverflowError,
    ValueError,
    TypeError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
)


class SqliteDialect(SqlDialect):
    name = "sqlite"
    # SQLite checks no lengths or types: what it refuses is nearly always a value sqlite3 cannot
    # bind (an integer beyond 64 bits, a type it has no adapter for), which does not say which
    # row it was. Binding each row alone, without a table, finds it in microseconds (RowRefused);
    # anything else is found by bisection. Its statements cost the server's own CPU.
    pinpoints = True
    p = "?"
    distinct = "IS NOT"

    def __init__(self) -> None:
        self._converters: dict[str, tuple[list[int], list[int]]] = {}

    def prepare(self, conn: Any) -> None:
        # Autocommit at the driver level: the writer issues BEGIN IMMEDIATE itself, so the write
        # lock is taken up front and a concurrent writer waits (busy_timeout) instead of failing
        # half-way through a transaction.
        conn.isolation_level = None

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def ping(self, conn: Any) -> None:
        # The file answering reads proves little (WAL serves them under a held write lock):
        # can the writer take the write lock within busy_timeout?
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")

    def time(self, value: dt.datetime) -> Any:
        return schema.sqlite_time(value)

    def _value(self, value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return _time_text(value)
        if isinstance(value, dict | list):
            return _json_text(value)
        return value

    def upsert(
        self,
        conn: Any,
        table: sa.Table,
        rows: Sequence[Row],
        now: dt.datetime,
        *,
        again: bool = False,
        refused: list[tuple[int, BaseException]] | None = None,
    ) -> dict[Key, int]:
        """`refused` (isolating): rows sqlite3 cannot bind are left out and reported there as
        (index, why) instead of failing the statement. `again` alone: such a row fails it
        with RowRefused naming it."""
        cols = key_columns(table) + data_columns(table) + list(BOOKKEEPING)
        values = self._bindable(table, cols, rows, now)
        nkeys = len(key_columns(table))
        tail = self._upsert_tail(table)
        if refused is not None:
            returned = self._insert_bindable(conn, table.name, cols, values, tail, refused)
        else:
            try:
                returned = self._insert_many(conn, table.name, cols, values, tail, converted=True)
            except _UNBINDABLE as exc:
                index = self._unbindable(values) if again else None
                if index is None:
                    raise
                raise RowRefused(index, exc) from exc
        return {tuple(r[:nkeys]): r[nkeys] for r in returned}

    def _bindable(
        self, table: sa.Table, cols: list[str], rows: Sequence[Row], now: dt.datetime
    ) -> list[list[Any]]:
        """Each row's parameters in column order, times and JSON converted (by column, not by
        testing every value), then the bookkeeping columns."""
        converters = self._converters.get(table.name)
        if converters is None:
            converters = self._converters[table.name] = _converters(table, cols[:-3])
        times, jsons = converters
        stamp = _time_text(now)
        tail = [1, stamp, stamp]
        getter = operator.itemgetter(*cols[:-3])
        out = []
        for row in rows:
            try:
                v = list(getter(row))
            except KeyError:  # a row without every column (None = keep)
                v = [row.get(c) for c in cols[:-3]]
            # What _value converts, and nothing else (a text in a JSON column stays as it is).
            for i in times:
                x = v[i]
                if isinstance(x, dt.datetime):
                    v[i] = _time_text(x)
            for i in jsons:
                x = v[i]
                if isinstance(x, dict | list):
                    v[i] = _json_text(x)
            v += tail
            out.append(v)
        return out

    def _insert_bindable(
        self,
        conn: Any,
        table: str,
        cols: list[str],
        values: list[list[Any]],
        tail: str,
        refused: list[tuple[int, BaseException]],
    ) -> list[Any]:
        """_insert_many without the rows sqlite3 cannot bind. Binding fails before a chunk's
        statement runs, so nothing of that chunk was written: it goes again without the row
        (its parameters converted once), and the chunks before it stand."""
        per = max(1, self.max_params // len(cols))
        one = "(" + ", ".join([self.p] * len(cols)) + ")"
        out: list[Any] = []
        for start in range(0, len(values), per):
            positions = list(range(start, min(start + per, len(values))))
            rows = [[self._value(v) for v in values[i]] for i in positions]
            while rows:
                sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES " + ", ".join(
                    [one] * len(rows)
                )
                try:
                    cur = conn.cursor()
                    cur.execute(sql + tail, [v for row in rows for v in row])
                    out += cur.fetchall()
                    break
                except _UNBINDABLE as exc:
                    bad = _first_unbindable(rows)
                    if bad is None:
                        raise
                    refused.append((positions[bad], exc))
                    del rows[bad], positions[bad]
        return out

    def _unbindable(self, values: list[list[Any]]) -> int | None:
        return _first_unbindable([[self._value(v) for v in row] for row in values])


def _first_unbindable(rows: list[list[Any]]) -> int | None:
    """The first row (of parameters ready to bind) that sqlite3 cannot bind, or None. It binds
    in order and stops at the first value it cannot take, so a binary search over the rows,
    each half bound in one scratch VALUES statement (no table, no I/O), finds it in about
    log2(n) binds; the row found is checked alone."""
    scratch = sqlite3.connect(":memory:")

    def binds(part: list[list[Any]]) -> bool:
        one = "(" + ", ".join("?" * len(part[0])) + ")"
        try:
            scratch.execute("VALUES " + ", ".join([one] * len(part)), [v for r in part for v in r])
        except (*_UNBINDABLE, sqlite3.Error):
            return False
        return True

    try:
        lo, hi = 0, len(rows)  # the first bad row is in [lo, hi) if there is one
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if binds(rows[lo:mid]):
                lo = mid
            else:
                hi = mid
        return lo if rows and not binds(rows[lo : lo + 1]) else None
    finally:
        scratch.close()
