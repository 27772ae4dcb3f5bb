"""Storage: the PostgreSQL dialect — one `INSERT … SELECT … FROM json_to_recordset(%s) ON
CONFLICT DO UPDATE … RETURNING` per table, the rows sent as one JSON parameter (the merge SQL is
shared with SQLite in dialects.py). Poison isolation goes through binary COPY into a temporary
table instead, because a row COPY refuses is named (RowRefused)."""

from __future__ import annotations

import datetime as dt
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from psycopg.types.json import Json

from turnstream.core.batch import StreamAdvance
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
from turnstream.store.rollup import ROLLED, Rollups

_PG_TYPES: dict[type[Any], str] = {
    sa.String: "text",
    sa.Text: "text",
    sa.BigInteger: "int8",
    sa.Integer: "int4",
    sa.Double: "float8",
    sa.Boolean: "bool",
}


_COPY_LINE = re.compile(r"^COPY \S+, line (\d+)")


# Base table -> the record kind whose rollup its upserts move.
_ROLLED = {table: kind for kind, table in ROLLED.items()}


def _pg_type(column: sa.Column[Any]) -> str:
    t = column.type
    if isinstance(t, schema.UTCDateTime):
        return "timestamptz"
    if isinstance(t, sa.JSON):
        return "jsonb"
    for cls, name in _PG_TYPES.items():
        if type(t) is cls:
            return name
    raise TypeError(f"no COPY type for {column}")


def _json_dumps() -> Callable[[Any], str]:
    """json.dumps(value), with its C encoder built once instead of on every call (that was half
    of json.dumps' cost, and COPY dumps every JSON column of every row): the same text and the
    same TypeError for what JSON cannot hold. Not kept: the circular-reference check (rows are
    built from protobuf messages, never cyclic)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return json.dumps

    def default(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    encode = make(
        None, default, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    return lambda value: "".join(encode(value, 0))


dumps_json = _json_dumps()


def _values(
    rows: Sequence[Row], cols: list[str], tail: tuple[Any, ...]
) -> Iterator[tuple[Any, ...]]:
    """Each row's values in column order, then `tail`: one itemgetter call per row (rows from
    core/rows.py hold every column); a row missing a column (None = keep) is read by name."""
    getter = operator.itemgetter(*cols)
    for row in rows:
        try:
            yield getter(row) + tail
        except KeyError:
            yield tuple(row.get(c) for c in cols) + tail


def rows_json(rows: Sequence[Row]) -> Any:
    """Rows as one JSON array of objects, for `_from_json`'s parameter: orjson's, in one C
    call (json.dumps took 11 µs per realistic row, most of it calling back to Python for every
    time; orjson 1.2 µs). Times are RFC 3339 text, which PostgreSQL reads back exactly; a row's
    JSON columns nest as they are. Not the text SQLite stores (sqlite.py keeps json's text,
    which replays are compared with): in jsonb, and in float8 columns, only the value counts.
    What orjson cannot write (an integer beyond 64 bits) raises TypeError, a refusal the
    guarded path then pins on its row."""
    return Json(orjson.dumps(rows if isinstance(rows, list) else list(rows)), _as_is)


def _as_is(data: Any) -> Any:
    return data


def _from_json(table: sa.Table, cols: list[str]) -> str:
    """`SELECT <cols>, 1, now, now` from rows sent as one JSON parameter (after two
    parameters for the bookkeeping times).

    A multi-row `VALUES` has a text that changes with its row count and one placeholder per
    value: psycopg parses the text in Python for every execution (about 75% of the writer's CPU
    for a flush of 32 one-record batches) and PostgreSQL plans it every time. This text is
    fixed: psycopg and the server prepare it once per connection, and the rows cost one C call
    to encode. A key a row does not carry is NULL (keep the stored value), as in COPY."""
    typed = ", ".join(f"{c} {_pg_type(table.c[c])}" for c in cols)
    return (
        f"SELECT {', '.join(cols)}, 1, %s::timestamptz, %s::timestamptz"
        f" FROM json_to_recordset(%s::json) AS x({typed})"
    )


_ADVANCE = (
    "UPDATE streams SET committed_offset = v.to_offset, updated_at = %s"
    " FROM json_to_recordset(%s::json) AS v(tenant_id text, stream_id text, epoch bigint,"
    " from_offset bigint, to_offset bigint)"
    " WHERE streams.tenant_id = v.tenant_id AND streams.stream_id = v.stream_id"
    " AND streams.epoch = v.epoch AND streams.committed_offset = v.from_offset"
    " RETURNING streams.tenant_id, streams.stream_id"
)


class PostgresDialect(SqlDialect):
    name = "postgresql"
    # COPY names the refused row: the driver fails on the row it encodes, the server's error
    # context says "COPY isolate_x, line N". Each statement costs the server about a
    # millisecond whatever its size, so one failed COPY per poison row beats bisecting.
    pinpoints = True
    p = "%s"
    distinct = "IS DISTINCT FROM"
    value_casts = ("::text", "::text", "::bigint", "::bigint", "::bigint")

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self._rollups = Rollups(self.name)
        self._sql: dict[tuple[str, object], str] = {}

    def prepare(self, conn: Any) -> None:
        with conn.cursor() as cur:
            if self.timeout is not None:
                # A hung or overloaded server must answer with an error, not hold the writer:
                # no statement or lock wait longer than the timeout. A session left idle inside
                # a transaction (its writer thread abandoned as hung) is ended by the server
                # after twice that, releasing its locks; twice, so that a live writer whose
                # thread waits a moment for the GIL is never cut off.
                ms = max(1, round(self.timeout * 1000))
                cur.execute(f"SET statement_timeout = {ms}")
                cur.execute(f"SET lock_timeout = {ms}")
                cur.execute(f"SET idle_in_transaction_session_timeout = {2 * ms}")
            # The staging tables of poison isolation's COPY live as long as the connection;
            # ON COMMIT DELETE ROWS empties them at every commit. Created in a committed
            # transaction of their own so that a rolled-back flush cannot take them away.
            for table in schema.RECORD_TABLES.values():
                cur.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS isolate_{table.name} "
                    f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
        conn.commit()

    def begin(self, conn: Any) -> None:
        pass  # psycopg opens a transaction at the first statement

    def commit(self, conn: Any) -> None:
        conn.commit()

    def renew_savepoint(self, conn: Any, name: str) -> None:
        # Without parameters psycopg sends the simple query protocol: two statements, one
        # round trip (a guarded flush does this once per segment).
        conn.execute(f"RELEASE SAVEPOINT {name}; SAVEPOINT {name}")

    def ping(self, conn: Any) -> None:
        super().ping(conn)
        conn.rollback()  # psycopg opened a transaction for the SELECT; end it

    def _copy(
        self,
        conn: Any,
        table: sa.Table,
        cols: list[str],
        rows: Iterable[Sequence[Any]],
    ) -> None:
        """Binary COPY into isolate_*; a row refused raises RowRefused(its index)."""
        import psycopg
        from psycopg.types.json import Jsonb

        types = [_pg_type(table.c[c]) for c in cols]
        json_at = [i for i, t in enumerate(types) if t == "jsonb"]
        try:
            with (
                conn.cursor() as cur,
                cur.copy(
                    f"COPY isolate_{table.name} ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(types)
                for n, row in enumerate(rows):
                    if json_at:
                        row = list(row)
                        for i in json_at:
                            if row[i] is not None:
                                row[i] = Jsonb(row[i], dumps_json)
                    try:
                        copy.write_row(row)
                    except (OverflowError, ValueError, TypeError, psycopg.DataError) as exc:
                        raise RowRefused(n, exc) from exc
        except psycopg.Error as exc:
            line = _COPY_LINE.search(exc.diag.context or "")
            if line is None:
                raise
            raise RowRefused(int(line.group(1)) - 1, exc) from exc

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
        """One statement from the rows as one JSON parameter (see _from_json).

        `again`: an upsert of poison isolation, one of several of this table in the
        transaction. It goes through COPY instead, because COPY names a refused row
        (RowRefused): it stages its rows in isolate_* and takes them out as it reads them, so
        the next one starts from an empty stage. `refused` is not used: a refused row fails
        the COPY (which cannot go on past it), so it is always RowRefused."""
        cols = key_columns(table) + data_columns(table) + list(BOOKKEEPING)
        nkeys = len(key_columns(table))
        with conn.cursor() as cur:
            if again:
                self._copy(conn, table, cols, _values(rows, cols[:-3], (1, now, now)))
                cur.execute(self._isolated(table, cols))
            else:
                cur.execute(self._json_upsert(table, cols), (now, now, rows_json(rows)))
            returned = cur.fetchall()
        return {tuple(r[:nkeys]): r[nkeys] for r in returned}

    def upsert_derived(self, conn: Any, rows: Sequence[Row], now: dt.datetime) -> None:
        with conn.cursor() as cur:
            cur.execute(self._derived_sql(), (now, now, rows_json(rows)))

    def upsert_rolled(
        self,
        conn: Any,
        rows: dict[str, tuple[sa.Table, list[Row]]],
        derived: list[Row],
        now: dt.datetime,
    ) -> dict[str, dict[Key, int]]:
        """Turns, tool calls (each with its rollup moved) and the derived executions in one
        statement: a flush of one-record batches makes one round trip for the three, not
        three. Their CTEs touch disjoint tables; the executions' explicit records, upserted
        before, are of another statement."""
        if not rows:
            if derived:
                self.upsert_derived(conn, derived, now)
            return {}
        shape = (tuple(rows), bool(derived))
        sql = self._sql.get(("rolled", shape))
        if sql is None:
            sql = self._rolled_together(rows, bool(derived))
            self._sql[("rolled", shape)] = sql
        params: list[Any] = []
        for _, kind_rows in rows.values():
            params += (now, now, rows_json(kind_rows))
        if derived:
            params += (now, now, rows_json(derived))
        out: dict[str, dict[Key, int]] = {kind: {} for kind in rows}
        with conn.cursor() as cur:
            cur.execute(sql, params)
            for kind, *key, revision in cur.fetchall():
                out[kind][tuple(key)] = revision
        return out

    def _rolled_together(self, rows: dict[str, tuple[sa.Table, list[Row]]], derived: bool) -> str:
        parts, answers = [], []
        for kind, (table, _) in rows.items():
            cols = key_columns(table) + data_columns(table) + list(BOOKKEEPING)
            insert = f"INSERT INTO {table.name} ({', '.join(cols)}) " + _from_json(table, cols[:-3])
            upsert = insert + self._upsert_tail(table) + self._rollups.returning(kind)
            name = f"{kind}_"
            parts.append(self._rollups.moving(kind, upsert, name))
            keys = ", ".join(key_columns(table))
            answers.append(f"SELECT '{kind}', {keys}, revision FROM {name}up")
        if derived:
            parts.append(f"derived AS ({self._derived_sql()})")
        return "WITH " + ",\n".join(parts) + "\n" + " UNION ALL ".join(answers)

    def _derived_sql(self) -> str:
        cols = ["tenant_id", "execution_id", "started_at", "completed_at"]
        return (
            f"INSERT INTO executions ({', '.join(cols)}, {', '.join(BOOKKEEPING)}) "
            + _from_json(schema.executions, cols)
            + self._derived_tail()
        )

    def advance_many(
        self, conn: Any, advances: Sequence[tuple[str, StreamAdvance]], now: dt.datetime
    ) -> set[tuple[str, str]]:
        """SqlDialect.advance_many, the streams sent as one JSON parameter: a fixed text,
        prepared once (see _from_json)."""
        moves = [
            {
                "tenant_id": tenant_id,
                "stream_id": adv.stream_id,
                "epoch": adv.epoch,
                "from_offset": adv.from_offset,
                "to_offset": adv.to_offset,
            }
            for tenant_id, adv in advances
        ]
        with conn.cursor() as cur:
            cur.execute(_ADVANCE, (now, rows_json(moves)))
            return {(str(t), str(s)) for t, s in cur.fetchall()}

    def _json_upsert(self, table: sa.Table, cols: list[str]) -> str:
        """The upsert of rows sent as one JSON parameter (see _from_json); parameters: now,
        now, rows_json(rows)."""
        key = (table.name, "json")
        sql = self._sql.get(key)
        if sql is None:
            names = ", ".join(cols)
            insert = f"INSERT INTO {table.name} ({names}) " + _from_json(table, cols[:-3])
            kind = _ROLLED.get(table.name)
            if kind is not None:
                sql = self._rolled(kind, table, insert)
            else:
                sql = insert + self._upsert_tail(table)
            self._sql[key] = sql
        return sql

    def _isolated(self, table: sa.Table, cols: list[str]) -> str:
        """The upsert of the rows COPY staged in isolate_*, taking them out."""
        key = (table.name, "isolated")
        sql = self._sql.get(key)
        if sql is None:
            names = ", ".join(cols)
            ctes = f"staged AS (DELETE FROM isolate_{table.name} RETURNING {names}), "
            insert = f"INSERT INTO {table.name} ({names}) SELECT {names} FROM staged"
            kind = _ROLLED.get(table.name)
            if kind is not None:
                sql = self._rolled(kind, table, insert, ctes)
            else:
                sql = f"WITH {ctes.rstrip(', ')} " + insert + self._upsert_tail(table)
            self._sql[key] = sql
        return sql

    def _rolled(self, kind: str, table: sa.Table, insert: str, ctes: str = "") -> str:
        """`insert` + the upsert tail, in one statement that also moves the dashboard's
        rollups by what it changed (store/rollup.py, moved_by)."""
        upsert = insert + self._upsert_tail(table) + self._rollups.returning(kind)
        return self._rollups.moved_by(kind, upsert, ctes)

    def _value(self, value: Any) -> Any:
        from psycopg.types.json import Jsonb

        return Jsonb(value, dumps_json) if isinstance(value, dict | list) else value
