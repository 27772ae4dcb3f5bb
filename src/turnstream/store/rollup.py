"""Storage: the per-execution rollups the dashboard reads instead of a million turns and the
tool calls' wide rows (docs/analytics.md, "Rollups").

`turn_rollups`: one row per execution x UTC hour x model x provider x model weight, with the
turn count and the sums of every turn figure the dashboard shows. `tool_rollups`: one row per
execution x tool, with the calls and the successes. Their grain keeps the dashboard exact: every
time bucket is a union of UTC hours, and every filter is on the execution, joined at read time.

They are kept exact by recomputing, not by adding deltas: in the flush's own transaction, after
the upserts, every execution the flush sent turns or tool calls for has its rollup rows deleted
and rebuilt from the base rows (a range of the base tables' primary key). A replayed record, a
record revised with other values, a row the database refused, a batch fenced by a newer stream:
whatever the base rows now are, the rollup is theirs, and it commits or rolls back with them, so
an ack still means queryable and consistent.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from turnstream.core.batch import WriteBatch

# The turn figures summed per rollup row (turn_rollups has one column of each name).
TURN_SUMS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens",
    "total_tokens", "total_cost", "aem_value", "aem_cost", "runtime_minutes",
)  # fmt: skip
TURN_KEYS = ("model", "model_provider", "model_weight")


def touched(batches: Sequence[WriteBatch]) -> dict[str, list[str]]:
    """tenant -> the executions the batches sent turns or tool calls for, sorted."""
    out: defaultdict[str, set[str]] = defaultdict(set)
    for batch in batches:
        for kind in ("turn", "tool_call"):
            out[batch.tenant_id].update(row["execution_id"] for row in batch.rows[kind])
    return {tenant: sorted(ids) for tenant, ids in out.items() if ids}


def _hour(dialect: str) -> str:
    if dialect == "postgresql":
        return "DATE_TRUNC('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    # schema.sqlite_time's text, cut at the hour: still text that sorts and parses as a time.
    return "STRFTIME('%Y-%m-%d %H:00:00.000000', started_at)"


def _ids(dialect: str, p: str) -> str:
    # One parameter for any number of executions: PostgreSQL binds a text[]; SQLite reads a
    # JSON array (no limit on host parameters to reach).
    return f"= ANY({p})" if dialect == "postgresql" else f"IN (SELECT value FROM json_each({p}))"


def rebuilds(dialect: str, where: str) -> list[tuple[str, str]]:
    """(rollup table, INSERT … SELECT that builds its rows) for the base rows `where` selects."""
    keys = ", ".join(TURN_KEYS)
    sums = ", ".join(f"SUM({c})" for c in TURN_SUMS)
    success = "SUM(CASE WHEN success THEN 1 ELSE 0 END)"
    return [
        (
            "turn_rollups",
            f"""INSERT INTO turn_rollups (tenant_id, execution_id, hour, {keys}, turns,
                {", ".join(TURN_SUMS)})
            SELECT tenant_id, execution_id, {_hour(dialect)} AS h, {keys}, COUNT(*), {sums}
            FROM turns WHERE {where}
            GROUP BY tenant_id, execution_id, h, {keys}""",
        ),
        (
            "tool_rollups",
            f"""INSERT INTO tool_rollups (tenant_id, execution_id, tool_name, calls, successes)
            SELECT tenant_id, execution_id, tool_name, COUNT(*), {success}
            FROM tool_calls WHERE {where}
            GROUP BY tenant_id, execution_id, tool_name""",
        ),
    ]


def statements(dialect: str, p: str) -> list[str]:
    """The statements that rebuild both rollups of a tenant's executions; each takes the
    parameters (tenant, ids)."""
    where = f"tenant_id = {p} AND execution_id {_ids(dialect, p)}"
    out = []
    for table, insert in rebuilds(dialect, where):
        out += [f"DELETE FROM {table} WHERE {where}", insert]
    return out


def refresh(conn: Any, dialect: str, batches: Sequence[WriteBatch]) -> None:
    """Rebuild the rollups of every execution `batches` touched, on the flush's connection and
    inside its transaction (a DB-API connection: psycopg or sqlite3)."""
    found = touched(batches)
    if not found:
        return
    sql = statements(dialect, "%s" if dialect == "postgresql" else "?")
    cur = conn.cursor()
    try:
        for tenant, ids in found.items():
            bound = ids if dialect == "postgresql" else json.dumps(ids)
            for statement in sql:
                cur.execute(statement, (tenant, bound))
    finally:
        cur.close()
