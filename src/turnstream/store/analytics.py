"""Storage, read side: GetDashboard. Each section is one SQL statement over the `runs` CTE
(store/analytics_sql.py), run on the read engine's own connection in a worker thread; Python
only turns the aggregated rows into the answer (ratios of two sums, RFC 3339 text)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from turnstream.store import analytics_llm, analytics_stage
from turnstream.store.analytics_llm import Latency
from turnstream.store.analytics_sql import (
    Filters,
    Sql,
    failure_category,
    iso,
    num,
    rate,
)
from turnstream.store.queries import Reads
from turnstream.v1 import analytics_pb2 as pb

SORTS = {
    "executions": "n DESC, w",
    "failures": "f DESC, w",
    "success_rate": "CAST(c AS DOUBLE PRECISION) / n DESC, w",
    "avg_duration": "a DESC NULLS LAST, w",
}
PERCENTILES = {"p50": 0.5, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99}
HISTOGRAM_BUCKETS = 20
TOP_AUTOMATIONS = 10


class Dashboard:
    """Runs every section for one tenant and one set of filters."""

    def __init__(self, reads: Reads) -> None:
        self.reads = reads
        self.sql = Sql(reads.engine.dialect.name)

    async def get(
        self,
        tenant_id: str,
        filters: Filters,
        granularity: str,
        sort_by: str,
        limit: int,
        offset: int,
        now: dt.datetime,
    ) -> pb.GetDashboardResponse:
        def run() -> pb.GetDashboardResponse:
            with self.reads.engine.connect() as conn, ThreadPoolExecutor(1) as side:
                q = Queries(conn, self.sql, tenant_id, filters)
                # One snapshot for every section on PostgreSQL, so the figures agree.
                if self.sql.pg:
                    _begin(conn)
                    # The per-tool latencies are the one section that must read every tool
                    # call in range (exact percentiles cannot be rolled up): a second read
                    # connection computes them while this one does the rest, in the same
                    # snapshot (exported and imported), so the answer is still consistent.
                    snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
                    latency = side.submit(self._latency, q.params, filters, snapshot)
                    q.tool_latency = latency.result
                analytics_stage.stage(conn, self.sql, q.params, filters, granularity)
                try:
                    return q.all(granularity, sort_by, limit, offset, now)
                finally:
                    analytics_stage.drop(conn)

        return await self.reads._read(run)

    def _latency(self, params: dict[str, Any], filters: Filters, snapshot: str) -> Latency:
        with self.reads.engine.connect() as conn:
            _begin(conn, snapshot)
            cte, _ = self.sql.runs(filters)
            return analytics_llm.latency(conn, self.sql, cte, params)


def _begin(conn: sa.Connection, snapshot: str = "") -> None:
    """PostgreSQL: a repeatable-read transaction (in `snapshot`, exported by another one)."""
    conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    if snapshot:
        # Not a bind parameter: SET takes a literal; the id comes from pg_export_snapshot().
        conn.execute(sa.text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
    # The per-tool percentiles sort every tool call in range: in memory, not in an external
    # merge on disk (the default 4 MB spilled at 300,000 calls).
    conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))


class Queries:
    def __init__(self, conn: sa.Connection, sql: Sql, tenant_id: str, filters: Filters) -> None:
        self.conn, self.sql, self.filters = conn, sql, filters
        _, params = sql.runs(filters)
        self.params = {"tenant": tenant_id, **params}
        # Staged once per call by analytics_stage: the filtered executions.
        self.cte = "WITH runs AS (SELECT * FROM dash_runs)"
        # Set when another connection computes the tools' percentiles (PostgreSQL).
        self.tool_latency: Callable[[], Latency] | None = None

    def rows(self, body: str, **extra: Any) -> list[Any]:
        statement = sa.text(f"{self.cte} {body}")
        return list(self.conn.execute(statement, {**self.params, **extra}).all())

    def all(
        self, granularity: str, sort_by: str, limit: int, offset: int, now: dt.datetime
    ) -> pb.GetDashboardResponse:
        out = pb.GetDashboardResponse(
            granularity=pb.Granularity.Value(f"GRANULARITY_{granularity.upper()}"),
            top_automations_sort_by=sort_by,
            recent_failures_limit=limit,
            recent_failures_offset=offset,
        )
        sections: list[Callable[[pb.GetDashboardResponse], None]] = [
            lambda o: self.summary(o, now),
            lambda o: self.over_time(o, granularity),
            self.failures,
            self.triggers,
            lambda o: self.automations(o, sort_by),
            self.durations,
            lambda o: self.recent_failures(o, limit, offset),
            self.actions,
            self.complexity,
            self.endpoints,
            self.workflows,
            lambda o: analytics_llm.models(self, o, granularity),
            lambda o: analytics_llm.cache_and_aem(self, o),
            lambda o: analytics_llm.tools(self, o),
            lambda o: analytics_llm.rejected(self, o),
        ]
        for section in sections:
            section(out)
        return out

    def summary(self, out: pb.GetDashboardResponse, now: dt.datetime) -> None:
        today = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        (n, c, f, a, t), *_ = self.rows(
            """SELECT COUNT(*), SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END),
                SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), AVG(duration_ms),
                SUM(CASE WHEN started_at >= :today THEN 1 ELSE 0 END) FROM runs""",
            today=self.sql.time(today),
        )
        (tokens,), *_ = self.rows("SELECT SUM(total_tokens) FROM dash_turns")
        s = out.summary
        s.total_executions, s.completed, s.total_failures = n, int(num(c)), int(num(f))
        s.success_rate, s.avg_duration_ms = rate(c, n), num(a)
        s.active_today, s.total_tokens = int(num(t)), int(num(tokens))
        out.total_failures = s.total_failures
        out.recent_failures_total = s.total_failures

    def over_time(self, out: pb.GetDashboardResponse, granularity: str) -> None:
        states = ("completed", "failed", "running", "pending")
        sums = ", ".join(
            f"SUM(CASE WHEN status = '{s}' THEN 1 ELSE 0 END) AS {s[0]}" for s in states
        )
        # Grouped on the cheap key, labelled once per bucket (not formatted per execution).
        key = self.sql.bucket_key("started_at", granularity)
        body = f"""SELECT {self.sql.label("k")}, n, c, f, r, p FROM (
                SELECT {key} AS k, COUNT(*) AS n, {sums} FROM runs GROUP BY k) g ORDER BY k"""
        for time, n, c, f, r, p in self.rows(body):
            out.executions_over_time.add(
                time=time,
                total=n,
                completed=int(c),
                failed=int(f),
                running=int(r),
                pending=int(p),
                success_rate=rate(c, n),
            )

    def failures(self, out: pb.GetDashboardResponse) -> None:
        collate = self.sql.collate
        body = f"""
            , f AS (SELECT {failure_category("error_message")} AS category, error_message
                    FROM runs WHERE status = 'failed'),
            c AS (SELECT category, COUNT(*) AS n FROM f GROUP BY category),
            s AS (SELECT category, error_message, ROW_NUMBER() OVER (
                    PARTITION BY category ORDER BY error_message{collate}) AS k
                  FROM (SELECT DISTINCT category, error_message FROM f
                        WHERE error_message IS NOT NULL AND error_message <> '') d)
            SELECT c.category, c.n, s.error_message FROM c
            LEFT JOIN s ON s.category = c.category AND s.k <= 3
            ORDER BY c.n DESC, c.category{collate}, s.error_message{collate}"""
        current = None
        for category, n, message in self.rows(body):
            if current is None or current.category != category:
                current = out.failure_breakdown.add(category=category, count=n)
            if message is not None:
                current.sample_messages.append(message)

    def triggers(self, out: pb.GetDashboardResponse) -> None:
        for word, n in self.rows(
            f"""SELECT COALESCE(triggered_by, 'unknown'){self.sql.collate} AS w, COUNT(*) AS n
                FROM runs GROUP BY w ORDER BY n DESC, w"""
        ):
            out.trigger_distribution.add(trigger_type=word, count=n)

    def automations(self, out: pb.GetDashboardResponse, sort_by: str) -> None:
        order = SORTS[sort_by]
        if not self.sql.pg:
            order = order.replace("DOUBLE PRECISION", "REAL")
        body = f"""SELECT COALESCE(workflow_name, 'unknown'){self.sql.collate} AS w, COUNT(*) AS n,
                SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS c,
                SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS f,
                AVG(duration_ms) AS a, MAX(started_at) AS last
            FROM runs GROUP BY w ORDER BY {order} LIMIT {TOP_AUTOMATIONS}"""
        for w, n, c, f, a, last in self.rows(body):
            out.top_automations.add(
                workflow_name=w,
                executions=n,
                completed=int(c),
                failures=int(f),
                success_rate=rate(c, n),
                avg_duration_ms=num(a),
                last_execution=iso(last),
            )

    def durations(self, out: pb.GetDashboardResponse) -> None:
        (n, a, lo, hi), *_ = self.rows(
            "SELECT COUNT(duration_ms), AVG(duration_ms), MIN(duration_ms), MAX(duration_ms)"
            " FROM runs"
        )
        ps = self.sql.percentiles("runs", [], "duration_ms", PERCENTILES)
        (p50, p75, p90, p95, p99), *_ = self.rows(ps)
        s = out.duration_stats
        s.total, s.avg_ms, s.min_ms, s.max_ms = n, num(a), num(lo), num(hi)
        s.p50_ms, s.p75_ms, s.p90_ms, s.p95_ms, s.p99_ms = map(num, (p50, p75, p90, p95, p99))
        body = f"""
            , d AS (SELECT duration_ms AS v FROM runs WHERE duration_ms IS NOT NULL),
            b AS (SELECT MIN(v) AS lo, (MAX(v) - MIN(v)) / {HISTOGRAM_BUCKETS} + 1 AS w FROM d)
            SELECT (d.v - b.lo) / b.w AS k, b.lo, b.w, COUNT(*) FROM d, b
            GROUP BY k, b.lo, b.w ORDER BY k"""
        for k, start, width, count in self.rows(body):
            first = int(start) + int(k) * int(width)
            out.duration_histogram.add(
                bucket_start_ms=first, bucket_end_ms=first + int(width), count=count
            )

    def recent_failures(self, out: pb.GetDashboardResponse, limit: int, offset: int) -> None:
        c = self.sql.collate
        body = f"""SELECT execution_id, workflow_name, {failure_category("error_message")},
                triggered_by, started_at, error_message, duration_ms
            FROM runs WHERE status = 'failed'
            ORDER BY started_at DESC, execution_id{c} DESC LIMIT :limit OFFSET :offset"""
        for eid, w, cat, trig, started, message, ms in self.rows(body, limit=limit, offset=offset):
            out.recent_failures.add(
                execution_id=eid,
                run_id=eid,
                workflow_name=w or "unknown",
                error_category=cat,
                triggered_by=trig or "unknown",
                started_at=iso(started),
                error_message=message or "",
                duration_ms=int(num(ms)),
            )

    def tool_join(self) -> str:
        return "JOIN tool_calls tc ON tc.tenant_id = :tenant AND tc.execution_id = r.execution_id"

    def turn_join(self) -> str:
        return "JOIN turns t ON t.tenant_id = :tenant AND t.execution_id = r.execution_id"

    def actions(self, out: pb.GetDashboardResponse) -> None:
        kinds = ("clicks", "keystrokes", "scrolls", "screenshots")
        sums = ", ".join(f"SUM(CASE WHEN k = '{k}' THEN n ELSE 0 END)" for k in kinds)
        body = f"""SELECT wf{self.sql.collate} AS w, {sums}, SUM(n) AS total FROM dash_calls
            GROUP BY w ORDER BY total DESC, w"""
        for w, clicks, keys, scrolls, shots, n in self.rows(body):
            out.actions_per_workflow.add(
                workflow_name=w,
                clicks=int(clicks),
                keystrokes=int(keys),
                scrolls=int(scrolls),
                screenshots=int(shots),
                total_steps=int(n),
            )

    def complexity(self, out: pb.GetDashboardResponse) -> None:
        body = """
            , w AS (SELECT COALESCE(workflow_name, 'unknown') AS wf, COUNT(*) AS n,
                    SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS c,
                    AVG(duration_ms) AS a FROM runs GROUP BY wf),
            s AS (SELECT wf, SUM(n) AS steps, COUNT(DISTINCT tool) AS params
                    FROM dash_calls GROUP BY wf),
            i AS (SELECT wf, SUM(n) AS it FROM dash_turns GROUP BY wf)
            SELECT w.wf, w.n, w.c, w.a, COALESCE(s.steps, 0), COALESCE(s.params, 0),
                COALESCE(i.it, 0)
            FROM w LEFT JOIN s ON s.wf = w.wf LEFT JOIN i ON i.wf = w.wf"""
        rows = []
        for wf, n, c, a, steps, params, it in self.rows(body):
            steps, it = int(steps), int(it)
            score = round((steps + it) / n + params, 2)
            rows.append((-score, wf, n, c, a, steps, params, it))
        # A handful of aggregated rows, ordered by a score computed from them.
        for neg, wf, n, c, a, steps, params, it in sorted(rows):
            out.workflow_complexity.add(
                workflow_name=wf,
                complexity_score=-neg,
                total_steps=steps,
                total_iterations=it,
                parameters_count=params,
                success_rate=rate(c, n),
                avg_duration_ms=num(a),
            )

    def endpoints(self, out: pb.GetDashboardResponse) -> None:
        source = (
            "(SELECT COALESCE(source, 'unknown') AS slug, duration_ms FROM runs"
            " WHERE triggered_by = 'endpoint') e"
        )
        p95 = self.sql.percentiles(source, ["slug"], "duration_ms", {"p95": 0.95})
        body = f"""
            , u AS (SELECT COALESCE(source, 'unknown') AS slug, COUNT(*) AS n,
                    SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS c,
                    AVG(duration_ms) AS a FROM runs WHERE triggered_by = 'endpoint'
                    GROUP BY slug)
            SELECT u.slug, u.n, u.c, u.a FROM u ORDER BY u.n DESC, u.slug{self.sql.collate}"""
        # Two statements: joined to the counts, SQLite re-ran the ranking per endpoint.
        latency = dict(self.rows(p95))
        for slug, n, c, a in self.rows(body):
            p = latency.get(slug)
            out.endpoint_usage.add(
                endpoint_slug=slug,
                http_method="POST",
                invocations=n,
                success_count=int(c),
                success_rate=rate(c, n),
                avg_response_time_ms=num(a),
                p95_response_time_ms=num(p),
            )

    def workflows(self, out: pb.GetDashboardResponse) -> None:
        statement = sa.text(
            f"""SELECT DISTINCT workflow_name{self.sql.collate} AS w FROM executions
                WHERE tenant_id = :tenant AND workflow_name IS NOT NULL ORDER BY w"""
        )
        out.workflows.extend(w for (w,) in self.conn.execute(statement, self.params))
