"""Storage, read side: the dashboard's staging. The filtered executions (`runs`) and the
aggregates of their turns and tool calls are computed once per GetDashboard into temporary
tables of the read connection — from the writer's per-execution rollups (store/rollup.py), so
neither the million turns nor the tool calls' wide rows are read — and every section
aggregates those further in SQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from turnstream.store.analytics_sql import Filters, Sql, action_kind, aem_tier

TABLES = ("dash_runs", "dash_turns_raw", "dash_turns", "dash_calls_raw", "dash_calls")


def _create(conn: sa.Connection, sql: Sql, name: str, columns: str) -> None:
    conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    # PostgreSQL drops it with the read's transaction; SQLite keeps temp tables per
    # connection, so `drop` removes them before the connection returns to the pool.
    tail = " ON COMMIT DROP" if sql.pg else ""
    conn.execute(sa.text(f"CREATE TEMPORARY TABLE {name} ({columns}){tail}"))


def stage(
    conn: sa.Connection, sql: Sql, params: dict[str, Any], filters: Filters, granularity: str
) -> None:
    ts = "TIMESTAMPTZ" if sql.pg else "TEXT"
    real = "DOUBLE PRECISION" if sql.pg else "REAL"
    cte, runs_params = sql.runs(filters)
    _create(
        conn,
        sql,
        "dash_runs",
        f"execution_id TEXT, workflow_name TEXT, triggered_by TEXT, source TEXT, "
        f"started_at {ts}, status TEXT, error_message TEXT, duration_ms BIGINT",
    )
    conn.execute(
        sa.text(
            f"""INSERT INTO dash_runs {cte} SELECT execution_id, workflow_name, triggered_by,
                source, started_at, status, error_message, duration_ms FROM runs"""
        ),
        {**params, **runs_params},
    )
    if sql.pg:
        # Autovacuum never sees temporary tables: without statistics the planner guesses a
        # few hundred runs and sorts 10^5 joined rows to group them (3-4x slower than hashing).
        # A small sample is enough for a row count and the join key's distinct values.
        conn.execute(sa.text("SET LOCAL default_statistics_target = 10"))
        conn.execute(sa.text("ANALYZE dash_runs (execution_id)"))
    else:  # without it SQLite may scan the staged table for every turn it joins
        conn.execute(sa.text("CREATE INDEX dash_runs_id ON dash_runs (execution_id)"))
    cols = (
        "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens",
        "total_tokens", "total_cost", "aem_value", "aem_cost", "runtime_minutes",
    )  # fmt: skip
    kinds = ("BIGINT",) * 5 + (real,) * 4
    sums = ", ".join(f"{c} {k}" for c, k in zip(cols, kinds, strict=True))
    key = "TIMESTAMP" if sql.pg else "TEXT"
    # One pass over the turns' per-execution rollups (store/rollup.py: per execution, UTC hour,
    # model, provider and weight; every bucket is a union of hours, so the sums are exact),
    # grouping on raw values (no per-row formatting, COALESCE or CASE), then a second pass over
    # the few thousand groups that labels buckets, names tiers and fills defaults.
    _create(
        conn, sql, "dash_turns_raw", f"wf TEXT, b {key}, m TEXT, p TEXT, w {real}, n BIGINT, {sums}"
    )
    conn.execute(
        sa.text(
            f"""INSERT INTO dash_turns_raw
            SELECT r.workflow_name, {sql.bucket_key("t.hour", granularity)}, t.model,
                t.model_provider, t.model_weight, SUM(t.turns),
                {", ".join(f"SUM(t.{c})" for c in cols)}
            FROM dash_runs r JOIN turn_rollups t
                ON t.tenant_id = :tenant AND t.execution_id = r.execution_id
            GROUP BY r.workflow_name, 2, t.model, t.model_provider, t.model_weight"""
        ),
        params,
    )
    _create(
        conn, sql, "dash_turns", f"wf TEXT, b TEXT, m TEXT, p TEXT, tier TEXT, n BIGINT, {sums}"
    )
    conn.execute(
        sa.text(
            f"""INSERT INTO dash_turns
            SELECT COALESCE(wf, 'unknown'), {sql.label("b")}, m, COALESCE(p, ''),
                {aem_tier("w")}, n, {", ".join(f"COALESCE({c}, 0)" for c in cols)}
            FROM dash_turns_raw"""
        )
    )
    _create(conn, sql, "dash_calls_raw", "wf TEXT, tool TEXT, n BIGINT, ok BIGINT")
    conn.execute(
        sa.text(
            """INSERT INTO dash_calls_raw
            SELECT r.workflow_name, tc.tool_name, SUM(tc.calls), SUM(tc.successes)
            FROM dash_runs r JOIN tool_rollups tc
                ON tc.tenant_id = :tenant AND tc.execution_id = r.execution_id
            GROUP BY r.workflow_name, tc.tool_name"""
        ),
        params,
    )
    _create(conn, sql, "dash_calls", "wf TEXT, tool TEXT, k TEXT, n BIGINT, ok BIGINT")
    conn.execute(
        sa.text(
            f"""INSERT INTO dash_calls SELECT COALESCE(wf, 'unknown'), tool,
                {action_kind("tool")}, n, ok FROM dash_calls_raw"""
        )
    )


def drop(conn: sa.Connection) -> None:
    for name in TABLES:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
