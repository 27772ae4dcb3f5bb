"""Storage: the SQLite dialect — multi-row `INSERT … VALUES … ON CONFLICT DO UPDATE …
RETURNING`, chunked under the parameter limit (the merge SQL is shared with PostgreSQL in
dialects.py), BEGIN IMMEDIATE transactions, and a row sqlite3 cannot bind found and named."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Sequence
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


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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
            return schema.sqlite_time(value)
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
        values = [[r.get(c) for c in cols[:-3]] + [1, now, now] for r in rows]
        nkeys = len(key_columns(table))
        tail = self._upsert_tail(table)
        if refused is not None:
            returned = self._insert_bindable(conn, table.name, cols, values, tail, refused)
        else:
            try:
                returned = self._insert_many(conn, table.name, cols, values, tail)
            except _UNBINDABLE as exc:
                index = self._unbindable(values) if again else None
                if index is None:
                    raise
                raise RowRefused(index, exc) from exc
        return {tuple(r[:nkeys]): r[nkeys] for r in returned}

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
