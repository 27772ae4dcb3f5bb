"""Storage: the SQL the writer runs, per dialect, over a raw DBAPI connection.

Both dialects merge the same way, in SQL, so that concurrent replicas never lose an update:
a field present in the new row overwrites, an absent (NULL) one keeps the stored value, a status
only moves forward, and a row that would not change is not touched (its `revision` stays, and
RETURNING leaves it out: that is how "unchanged" is told from "updated").

SQLite (sqlite.py): multi-row `INSERT … VALUES … ON CONFLICT DO UPDATE … RETURNING`, chunked
under its parameter limit. PostgreSQL (postgres.py): binary COPY into a temporary staging
table, then one `INSERT … SELECT … ON CONFLICT DO UPDATE … RETURNING` per table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import sqlalchemy as sa

from turnstream.core.batch import StreamAdvance
from turnstream.core.rows import Row
from turnstream.store import schema

Key = tuple[Any, ...]
BOOKKEEPING = ("revision", "created_at", "updated_at")
STATUS_COLUMNS = {"status"}


def key_columns(table: sa.Table) -> list[str]:
    return [c.name for c in table.primary_key.columns]


def data_columns(table: sa.Table) -> list[str]:
    keys = set(key_columns(table))
    return [c.name for c in table.columns if c.name not in keys and c.name not in BOOKKEEPING]


def _rank(expr: str) -> str:
    return f"(CASE {expr} WHEN 'pending' THEN 1 WHEN 'running' THEN 2 ELSE 3 END)"


def _forward_status(new: str, old: str) -> str:
    # Terminal states (rank 3) are final; otherwise the status may only move forward.
    return (
        f"CASE WHEN {new} IS NULL THEN {old} WHEN {old} IS NULL THEN {new} "
        f"WHEN {_rank(old)} >= 3 THEN {old} "
        f"WHEN {_rank(new)} >= {_rank(old)} THEN {new} ELSE {old} END"
    )


def merge_rows(table: sa.Table, old: Row, new: Row) -> Row:
    """The Python twin of the SQL merge, for rows with the same key inside one flush (a single
    INSERT … ON CONFLICT may not touch a row twice)."""
    merged = dict(old)
    for name in data_columns(table):
        value = new.get(name)
        if value is None:
            continue
        if name in STATUS_COLUMNS and old.get(name) is not None:
            rank = {"pending": 1, "running": 2}
            old_rank, new_rank = rank.get(old[name], 3), rank.get(value, 3)
            if old_rank >= 3 or new_rank < old_rank:
                continue
        merged[name] = value
    return merged


class Dialect(Protocol):
    name: str
    # True when a refused upsert(again=True) raises faults.RowRefused naming the row.
    pinpoints: bool

    def prepare(self, conn: Any) -> None: ...
    def begin(self, conn: Any) -> None: ...
    def commit(self, conn: Any) -> None: ...
    def ping(self, conn: Any) -> None: ...
    def renew_savepoint(self, conn: Any, name: str) -> None: ...
    def upsert(
        self,
        conn: Any,
        table: sa.Table,
        rows: Sequence[Row],
        now: dt.datetime,
        *,
        again: bool = False,
        refused: list[tuple[int, BaseException]] | None = None,
    ) -> dict[Key, int]: ...
    def upsert_derived(self, conn: Any, rows: Sequence[Row], now: dt.datetime) -> None: ...
    def upsert_rolled(
        self,
        conn: Any,
        rows: dict[str, tuple[sa.Table, list[Row]]],
        derived: list[Row],
        now: dt.datetime,
    ) -> dict[str, dict[Key, int]]: ...
    def insert_rejected(self, conn: Any, rows: Sequence[Row]) -> None: ...

    def advance(self, conn: Any, tenant_id: str, adv: StreamAdvance, now: dt.datetime) -> bool: ...
    def advance_many(
        self, conn: Any, advances: Sequence[tuple[str, StreamAdvance]], now: dt.datetime
    ) -> set[tuple[str, str]]: ...
    def open_stream(
        self, conn: Any, tenant_id: str, stream_id: str, now: dt.datetime
    ) -> tuple[int, int]: ...
    def stream_state(self, conn: Any, tenant_id: str, stream_id: str) -> tuple[int, int] | None: ...


class SqlDialect:
    """SQL text shared by both dialects; `p` is the DBAPI placeholder."""

    name = ""
    p = "?"
    distinct = "IS NOT"
    max_params = 30_000  # under SQLite's 32,766 and PostgreSQL's 65,535 parameters

    def _value(self, value: Any) -> Any:
        return value

    def renew_savepoint(self, conn: Any, name: str) -> None:
        """Keep what was done since SAVEPOINT `name` and set it again here."""
        conn.execute(f"RELEASE SAVEPOINT {name}")
        conn.execute(f"SAVEPOINT {name}")

    def ping(self, conn: Any) -> None:
        """A round trip that proves the database answers (the health probe)."""
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()

    def _insert_many(
        self,
        conn: Any,
        table: str,
        cols: list[str],
        rows: Iterable[Sequence[Any]],
        tail: str,
        *,
        converted: bool = False,
    ) -> list[Any]:
        """Multi-row INSERT … VALUES, chunked under the parameter limit. `converted`: the
        values are ready to bind (no `_value` each)."""
        rows = list(rows)
        per = max(1, self.max_params // len(cols))
        one = "(" + ", ".join([self.p] * len(cols)) + ")"
        out: list[Any] = []
        returning = "RETURNING" in tail
        for i in range(0, len(rows), per):
            chunk = rows[i : i + per]
            sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES " + ", ".join([one] * len(chunk))
            if converted:
                params = [v for r in chunk for v in r]
            else:
                params = [self._value(v) for r in chunk for v in r]
            cur = conn.cursor()
            cur.execute(sql + tail, params)
            if returning:
                out += cur.fetchall()
        return out

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
        raise NotImplementedError  # each dialect's own

    def upsert_rolled(
        self,
        conn: Any,
        rows: dict[str, tuple[sa.Table, list[Row]]],
        derived: list[Row],
        now: dt.datetime,
    ) -> dict[str, dict[Key, int]]:
        """The upserts of the rolled kinds (kind -> its table and rows, each within what one
        statement takes), then the derived executions; kind -> revisions. Here one statement
        each; a dialect may send them as one."""
        out = {
            kind: self.upsert(conn, table, kind_rows, now)
            for kind, (table, kind_rows) in rows.items()
        }
        if derived:
            self.upsert_derived(conn, derived, now)
        return out

    def upsert_derived(self, conn: Any, rows: Sequence[Row], now: dt.datetime) -> None:
        cols = ["tenant_id", "execution_id", "started_at", "completed_at", *BOOKKEEPING]
        values = (
            [r["tenant_id"], r["execution_id"], r["started_at"], r["completed_at"], 1, now, now]
            for r in rows
        )
        self._insert_many(conn, "executions", cols, values, self._derived_tail())

    def insert_rejected(self, conn: Any, rows: Sequence[Row]) -> None:
        cols = [c.name for c in schema.rejected_records.columns]
        values = ([r.get(c) for c in cols] for r in rows)
        self._insert_many(conn, "rejected_records", cols, values, " ON CONFLICT DO NOTHING")

    def _set_and_where(self, table: sa.Table) -> tuple[str, str]:
        t = table.name
        sets, changed = [], []
        for c in data_columns(table):
            if c in STATUS_COLUMNS:
                merged = _forward_status(f"excluded.{c}", f"{t}.{c}")
                sets.append(f"{c} = {merged}")
                changed.append(f"({merged}) {self.distinct} {t}.{c}")
            else:
                sets.append(f"{c} = COALESCE(excluded.{c}, {t}.{c})")
                changed.append(
                    f"(excluded.{c} IS NOT NULL AND excluded.{c} {self.distinct} {t}.{c})"
                )
        sets += [f"revision = {t}.revision + 1", "updated_at = excluded.updated_at"]
        return ", ".join(sets), " OR ".join(changed)

    def _upsert_tail(self, table: sa.Table) -> str:
        sets, where = self._set_and_where(table)
        keys = key_columns(table)
        return (
            f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets} WHERE {where}"
            f" RETURNING {', '.join(keys)}, revision"
        )

    def _derived_tail(self) -> str:
        t = "executions"
        first = f"(excluded.started_at < {t}.started_at OR {t}.started_at IS NULL)"
        last = f"(excluded.completed_at > {t}.completed_at OR {t}.completed_at IS NULL)"
        return (
            " ON CONFLICT (tenant_id, execution_id) DO UPDATE SET"
            f" started_at = CASE WHEN {first} AND excluded.started_at IS NOT NULL"
            f" THEN excluded.started_at ELSE {t}.started_at END,"
            f" completed_at = CASE WHEN {last} AND excluded.completed_at IS NOT NULL"
            f" THEN excluded.completed_at ELSE {t}.completed_at END,"
            f" revision = {t}.revision + 1, updated_at = excluded.updated_at"
            f" WHERE ({first} AND excluded.started_at IS NOT NULL)"
            f" OR ({last} AND excluded.completed_at IS NOT NULL)"
        )

    value_casts = ("", "", "", "", "")

    def advance_many(
        self, conn: Any, advances: Sequence[tuple[str, StreamAdvance]], now: dt.datetime
    ) -> set[tuple[str, str]]:
        """Compare-and-set many streams in one statement (one round trip per flush, not one per
        stream); returns the (tenant, stream) pairs that moved. Each stream appears at most
        once: a source row per target row keeps UPDATE … FROM deterministic."""
        p = self.p
        one = "(" + ", ".join(f"{p}{cast}" for cast in self.value_casts) + ")"
        params: list[Any] = [self.time(now)]
        for tenant_id, adv in advances:
            params += [tenant_id, adv.stream_id, adv.epoch, adv.from_offset, adv.to_offset]
        cur = conn.cursor()
        cur.execute(
            f"UPDATE streams SET committed_offset = v.to_offset, updated_at = {p}"
            # VALUES columns are column1..5 on both dialects (SQLite has no alias list).
            " FROM (SELECT column1 AS tenant_id, column2 AS stream_id, column3 AS epoch,"
            " column4 AS from_offset, column5 AS to_offset"
            f" FROM (VALUES {', '.join([one] * len(advances))}) AS x) AS v"
            " WHERE streams.tenant_id = v.tenant_id AND streams.stream_id = v.stream_id"
            " AND streams.epoch = v.epoch AND streams.committed_offset = v.from_offset"
            " RETURNING streams.tenant_id, streams.stream_id",
            params,
        )
        return {(str(t), str(s)) for t, s in cur.fetchall()}

    def advance(self, conn: Any, tenant_id: str, adv: StreamAdvance, now: dt.datetime) -> bool:
        p = self.p
        cur = conn.cursor()
        cur.execute(
            f"UPDATE streams SET committed_offset = {p}, updated_at = {p} WHERE tenant_id = {p}"
            f" AND stream_id = {p} AND epoch = {p} AND committed_offset = {p}",
            (adv.to_offset, self.time(now), tenant_id, adv.stream_id, adv.epoch, adv.from_offset),
        )
        return bool(cur.rowcount == 1)

    def open_stream(
        self, conn: Any, tenant_id: str, stream_id: str, now: dt.datetime
    ) -> tuple[int, int]:
        p = self.p
        cur = conn.cursor()
        cur.execute(
            "INSERT INTO streams (tenant_id, stream_id, committed_offset, epoch, created_at,"
            f" updated_at) VALUES ({p}, {p}, 0, 1, {p}, {p}) ON CONFLICT (tenant_id, stream_id)"
            " DO UPDATE SET epoch = streams.epoch + 1, updated_at = excluded.updated_at"
            " RETURNING epoch, committed_offset",
            (tenant_id, stream_id, self.time(now), self.time(now)),
        )
        epoch, offset = cur.fetchone()
        return int(epoch), int(offset)

    def stream_state(self, conn: Any, tenant_id: str, stream_id: str) -> tuple[int, int] | None:
        p = self.p
        cur = conn.cursor()
        cur.execute(
            "SELECT epoch, committed_offset FROM streams"
            f" WHERE tenant_id = {p} AND stream_id = {p}",
            (tenant_id, stream_id),
        )
        row = cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def time(self, value: dt.datetime) -> Any:
        return value
