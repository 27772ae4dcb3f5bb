"""Storage: the per-execution rollups the dashboard reads instead of a million turns and the
tool calls' wide rows (docs/analytics.md, "Rollups").

`turn_rollups`: one row per execution x UTC hour x model x provider x model weight, with the
turn count and the sums of every turn figure the dashboard shows. `tool_rollups`: one row per
execution x tool, with the calls and the successes. Their grain keeps the dashboard exact: every
time bucket is a union of UTC hours, and every filter is on the execution, joined at read time.

They are kept exact by deltas taken from the base rows themselves, in the flush's transaction:
the contribution of every record key the flush changes, after minus before, is added to the
rollups. On PostgreSQL each upsert of turns or tool calls does it in its own statement
(`moved_by`: the old rows from the statement's snapshot, the new ones from RETURNING); on
SQLite, whose statements cannot modify in a CTE, the flushed keys' contribution is read
(grouped, in SQL) before the upserts and again after them (`around`). A replayed record
changes nothing (no difference), a record revised with other values moves its contribution
(subtract old, add new, even to another hour or model), a row the database refused or a batch
fenced by a newer stream contributes nothing; and all of it commits or rolls back with the
records, so an ack still means queryable and counted. The cost is proportional to the rows a
flush sends, not to the size of their executions. On PostgreSQL, writers touching the same
execution are serialised by a transaction-scoped advisory lock (see `_lock`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from turnstream.core.batch import WriteBatch

T = TypeVar("T")

# The turn figures summed per rollup row (turn_rollups has one column of each name).
TURN_SUMS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens",
    "total_tokens", "total_cost", "aem_value", "aem_cost", "runtime_minutes",
)  # fmt: skip
TURN_KEYS = ("hour", "model", "model_provider", "model_weight")
TOOL_KEYS = ("tool_name",)
# Key columns are NOT NULL (they form the primary key). model, started_at and tool_name are
# required by validation; a provider or weight not sent is stored as '' or -1 — what the
# dashboard makes of NULL anyway ('' provider; any weight below 0.8 is the basic tier).
NO_PROVIDER, NO_WEIGHT = "", -1.0

# The record kinds with a rollup, and their base tables.
ROLLED = {"turn": "turns", "tool_call": "tool_calls"}

Group = tuple[Any, ...]  # (execution_id, *key values)
Sums = dict[Group, list[float]]


def _hour(dialect: str) -> str:
    if dialect == "postgresql":
        return (
            "COALESCE(DATE_TRUNC('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', "
            "TIMESTAMPTZ '1970-01-01 00:00:00+00')"
        )
    # schema.sqlite_time's text, cut at the hour: still text that sorts and parses as a time.
    return (
        "COALESCE(STRFTIME('%Y-%m-%d %H:00:00.000000', started_at), '1970-01-01 00:00:00.000000')"
    )


def _selects(dialect: str) -> dict[str, tuple[str, str, str]]:
    """kind -> (rollup table, base table, the SELECT list: key expressions then values)."""
    turn_values = ", ".join(f"SUM(COALESCE({c}, 0))" for c in TURN_SUMS)
    return {
        "turn": (
            "turn_rollups",
            "turns",
            f"""{_hour(dialect)}, COALESCE(model, ''), COALESCE(model_provider, '{NO_PROVIDER}'),
                COALESCE(model_weight, {NO_WEIGHT}), COUNT(*), {turn_values}""",
        ),
        "tool_call": (
            "tool_rollups",
            "tool_calls",
            "COALESCE(tool_name, ''), COUNT(*), SUM(CASE WHEN success THEN 1 ELSE 0 END)",
        ),
    }


def _columns(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if kind == "turn":
        return TURN_KEYS, ("turns", *TURN_SUMS)
    return TOOL_KEYS, ("calls", "successes")


def rebuilds(dialect: str, where: str) -> list[str]:
    """INSERT … SELECT statements that build both rollups from the base rows `where` selects
    (the migration's backfill)."""
    out = []
    for kind, (rollup, base, select) in _selects(dialect).items():
        keys, values = _columns(kind)
        groups = ", ".join(str(i) for i in range(1, len(keys) + 3))
        out.append(
            f"""INSERT INTO {rollup} (tenant_id, execution_id, {", ".join(keys + values)})
            SELECT tenant_id, execution_id, {select} FROM {base} WHERE {where}
            GROUP BY {groups}"""
        )
    return out


class Rollups:
    """The rollup statements of one dialect, run on the writer's DB-API connection."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.p = "%s" if self.pg else "?"
        self.selects = _selects(dialect)

    def around(self, conn: Any, batches: Sequence[WriteBatch], write: Callable[[Any], T]) -> T:
        """write(conn), and the rollups moved by what it changed, in the same transaction."""
        if self.pg:
            # The dialect's upserts move the rollups in their own statements (moved_by).
            names = {
                f"{batch.tenant_id}/{row['execution_id']}"
                for batch in batches
                for kind in ROLLED
                for row in batch.rows[kind]
            }
            if names:
                self._lock(conn, names)
            return write(conn)
        keys = _keys(batches)
        if not keys:
            return write(conn)
        before = {kind: self._sums(conn, kind, by_tenant) for kind, by_tenant in keys.items()}
        result = write(conn)
        for kind, by_tenant in keys.items():
            after = self._sums(conn, kind, by_tenant)
            for tenant in by_tenant:
                self._add(conn, kind, tenant, _minus(after[tenant], before[kind][tenant]))
        return result

    def _lock(self, conn: Any, names: set[str]) -> None:
        """PostgreSQL: serialise writers (replicas) touching the same executions until commit,
        so that the snapshot of every later statement holds their latest rows: the upsert
        reads a key's old contribution from its snapshot, and a concurrent transaction storing
        the same key would otherwise be counted by both. Row locks cannot replace it: a key not
        stored yet has no row to lock, and two writers inserting it at once would each count it
        (the concurrent-writers test does exactly that). Taken first in the transaction and in
        one global order (the hash), so two writers cannot deadlock on them. SQLite needs none:
        BEGIN IMMEDIATE already admits one writer at a time."""
        with conn.cursor() as cur:
            cur.execute(
                """SELECT pg_advisory_xact_lock(h) FROM (
                    SELECT DISTINCT hashtextextended(n, 0) AS h FROM unnest(%s::text[]) n
                    ORDER BY h) s""",
                (sorted(names),),
            )

    def _sums(self, conn: Any, kind: str, by_tenant: dict[str, list[tuple[str, str]]]) -> Any:
        """tenant -> group -> summed values of the given (execution_id, record_key) rows."""
        _, base, select = self.selects[kind]
        keys, _ = _columns(kind)
        # The keys as the outer relation of a join, so every row is found through the base
        # table's primary key (as `(…) IN (subquery)`, PostgreSQL hashed it and scanned the
        # whole table: the flush cost grew with the table).
        if self.pg:
            pairs = f"unnest({self.p}::text[], {self.p}::text[]) AS k (e, r)"
            on = "b.execution_id = k.e AND b.record_key = k.r"
        else:
            pairs = f"json_each({self.p}) AS k"
            on = (
                "b.execution_id = json_extract(k.value, '$[0]') "
                "AND b.record_key = json_extract(k.value, '$[1]')"
            )
        groups = ", ".join(str(i) for i in range(1, len(keys) + 2))
        statement = f"""SELECT b.execution_id, {select} FROM {pairs}
            JOIN {base} b ON b.tenant_id = {self.p} AND {on}
            GROUP BY {groups}"""
        out: dict[str, Sums] = {}
        cur = conn.cursor()
        try:
            for tenant, pairs_of in by_tenant.items():
                if self.pg:
                    params: tuple[Any, ...] = (
                        [e for e, _ in pairs_of],
                        [k for _, k in pairs_of],
                        tenant,
                    )
                else:
                    params = (json.dumps(pairs_of), tenant)
                cur.execute(statement, params)
                width = len(keys) + 1
                out[tenant] = {tuple(r[:width]): list(r[width:]) for r in cur.fetchall()}
        finally:
            cur.close()
        return out

    def upsert_sql(self, kind: str, source: str | None = None) -> str:
        """Adds delta rows to a rollup (its target is the primary key, tenant first): one row
        of parameters, or the rows `source` (a SELECT of the rollup's columns in order)."""
        rollup, _, _ = self.selects[kind]
        keys, values = _columns(kind)
        pk = ("tenant_id", "execution_id", *keys)
        cols = (*pk, *values)
        if source is None:
            source = f"VALUES ({', '.join([self.p] * len(cols))})"
        sets = ", ".join(f"{v} = {rollup}.{v} + excluded.{v}" for v in values)
        return f"""INSERT INTO {rollup} ({", ".join(cols)}) {source}
            ON CONFLICT ({", ".join(pk)}) DO UPDATE SET {sets}"""

    def returning(self, kind: str) -> str:
        """What moved_by's `upsert` must add to its RETURNING: the new rows' rolled columns."""
        return ", " + ", ".join(_raw(kind))

    def moved_by(self, kind: str, upsert: str, ctes: str = "") -> str:
        """PostgreSQL: one statement that runs `upsert` and moves the rollup by what it
        changed (`moving`); it answers `<key>, revision`."""
        statement = f"""WITH {ctes}{self.moving(kind, upsert)}
            SELECT tenant_id, execution_id, record_key, revision FROM up"""
        return statement

    def moving(self, kind: str, upsert: str, name: str = "") -> str:
        """PostgreSQL: the CTEs of a statement that runs `upsert` and moves the rollup by what
        it changed. `upsert` is an `INSERT … ON CONFLICT … RETURNING <key>, revision` into the
        base table, followed by `returning(kind)`; `{name}up` holds its answer. `name`
        prefixes every CTE, so that the upserts of both rolled kinds can share one statement
        (they touch disjoint tables).

        The base table read in `old` is the statement's snapshot: the rows as they were before
        the upsert (every part of a statement sees one snapshot, whatever order they run in),
        made current by the advisory lock taken in an earlier statement (`lock`). `up` gives
        the new rows of the keys the upsert changed (RETURNING leaves out unchanged ones), so
        the delta is new minus old over exactly those keys: what `around`'s reads before and
        after computed, in the upsert's own statement. A group brought to zero rows is deleted
        (`gone`, against the rollup's snapshot) instead of upserted: the two touch disjoint
        rollup rows, as one statement must.

        `old` reads only the rows the upsert *updated* (`revision > 1`; an inserted row has
        no old values), each by its key in a LATERAL subquery (OFFSET 0 keeps it from being
        flattened into a join, so the condition on `up` comes first). New keys, the common
        case, read nothing. That matters beyond the lookups saved: the statement is prepared
        once per connection, often while the tables are small and never analysed, and the plan
        made then — a hash join over a sequential scan, or `ix_*_started` probed by
        `tenant_id` alone — stays cached until the first ANALYZE, reading the whole, growing
        tenant for every row of every flush (measured on a fresh database: a Write of 1,000
        turns went from 0.25 s to over 2 s within ten Writes). Now only revisions pay that,
        and only until autovacuum's first ANALYZE replans the statement."""
        rollup, base, _ = self.selects[kind]
        keys, values = _columns(kind)
        pk = ("tenant_id", "execution_id", *keys)
        raw = _raw(kind)
        if kind == "turn":
            groups = (
                f"{_hour('postgresql')} AS hour, COALESCE(model, '') AS model, "
                f"COALESCE(model_provider, '{NO_PROVIDER}') AS model_provider, "
                f"COALESCE(model_weight, {NO_WEIGHT}) AS model_weight"
            )
            sums = ", ".join(f"SUM(sign * COALESCE({c}, 0)) AS {c}" for c in TURN_SUMS)
        else:
            groups = "COALESCE(tool_name, '') AS tool_name"
            sums = "SUM(CASE WHEN success THEN sign ELSE 0 END) AS successes"
        count = values[0]
        plain = ", ".join(raw)
        qualified = ", ".join(f"b.{c}" for c in raw)
        nonzero = " OR ".join(f"{v} <> 0" for v in values)
        same = " AND ".join(f"r.{c} = g.{c}" for c in pk)
        by = ", ".join(str(i) for i in range(1, len(pk) + 1))
        n = name
        source = f"SELECT * FROM {n}g g WHERE NOT EXISTS (SELECT 1 FROM {n}gone r WHERE {same})"
        return f"""{n}up AS ({upsert}),
            {n}old AS (SELECT u.tenant_id, u.execution_id, {qualified}
                FROM {n}up u CROSS JOIN LATERAL (SELECT {qualified} FROM {base} b
                    WHERE b.tenant_id = u.tenant_id AND b.execution_id = u.execution_id
                    AND b.record_key = u.record_key OFFSET 0) b
                WHERE u.revision > 1),
            {n}s AS (SELECT 1 AS sign, tenant_id, execution_id, {plain} FROM {n}up
                UNION ALL SELECT -1, tenant_id, execution_id, {plain} FROM {n}old),
            {n}g AS (SELECT * FROM (SELECT tenant_id, execution_id, {groups},
                SUM(sign) AS {count}, {sums} FROM {n}s GROUP BY {by}) d WHERE {nonzero}),
            {n}gone AS (DELETE FROM {rollup} r USING {n}g g
                WHERE {same} AND r.{count} + g.{count} = 0
                RETURNING {", ".join(f"r.{c}" for c in pk)}),
            {n}moved AS ({self.upsert_sql(kind, source)})"""

    def _add(self, conn: Any, kind: str, tenant: str, delta: Sums) -> None:
        if not delta:
            return
        rollup, _, _ = self.selects[kind]
        keys, values = _columns(kind)
        pk = ("tenant_id", "execution_id", *keys)
        upsert = self.upsert_sql(kind)
        cur = conn.cursor()
        try:
            cur.executemany(upsert, [(tenant, *g, *v) for g, v in delta.items()])
            # A group a revision emptied (its records moved to another hour, model or tool).
            emptied = [(tenant, *g) for g, v in delta.items() if v[0] < 0]
            if emptied:
                where = " AND ".join(f"{c} = {self.p}" for c in pk)
                cur.executemany(f"DELETE FROM {rollup} WHERE {where} AND {values[0]} = 0", emptied)
        finally:
            cur.close()


def _raw(kind: str) -> tuple[str, ...]:
    """The base table's columns a rollup row is computed from."""
    if kind == "turn":
        return ("started_at", "model", "model_provider", "model_weight", *TURN_SUMS)
    return ("tool_name", "success")


def _keys(batches: Sequence[WriteBatch]) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """kind -> tenant -> the (execution_id, record_key) of every row the batches send."""
    out: dict[str, defaultdict[str, set[tuple[str, str]]]] = {}
    for batch in batches:
        for kind in ("turn", "tool_call"):
            for row in batch.rows[kind]:
                by_tenant = out.setdefault(kind, defaultdict(set))
                by_tenant[batch.tenant_id].add((row["execution_id"], row["record_key"]))
    return {kind: {t: sorted(keys) for t, keys in v.items()} for kind, v in out.items()}


def _minus(after: Sums, before: Sums) -> Sums:
    delta: Sums = {}
    for group in after.keys() | before.keys():
        new, old = after.get(group), before.get(group)
        if new is None:
            assert old is not None
            values = [-(v or 0) for v in old]
        elif old is None:
            values = [v or 0 for v in new]
        else:
            values = [(a or 0) - (b or 0) for a, b in zip(new, old, strict=True)]
        if any(values):
            delta[group] = values
    return delta
