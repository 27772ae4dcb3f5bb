"""Storage, read side: the LLM sections of GetDashboard — tokens and cost by model and
provider (over time and in all), prompt cache reads, AEM and Kubiya's tiers, per-tool latency,
dead letters — each one SQL statement over the `runs` CTE (store/analytics_sql.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from turnstream.store.analytics_sql import AEM_TIERS, Sql, num, rate
from turnstream.v1 import analytics_pb2 as pb

if TYPE_CHECKING:
    from turnstream.store.analytics import Queries


def models(q: Queries, out: pb.GetDashboardResponse, granularity: str) -> None:
    """Per model and provider, per bucket and in all, from the staged turn aggregates (whose
    buckets were cut at this granularity)."""
    del granularity  # dash_turns.b is already bucketed
    c = q.sql.collate
    cols = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")
    sums = ", ".join(f"SUM({x})" for x in (*cols, "total_tokens"))
    keys = f"m{c} AS mm, p{c} AS pp"
    money = "SUM(total_cost), SUM(aem_value), SUM(aem_cost)"
    over = f"""SELECT b, {keys}, SUM(n), {sums}, {money} FROM dash_turns
        GROUP BY b, mm, pp ORDER BY b, mm, pp"""
    total = f"""SELECT '' AS b, {keys}, SUM(n) AS turns, {sums}, {money} FROM dash_turns
        GROUP BY mm, pp ORDER BY turns DESC, mm, pp"""
    for target, body in ((out.models_over_time, over), (out.models, total)):
        for b, m, p, n, i, o, cr, cc, tt, cost, aem, aem_cost in q.rows(body):
            target.add(
                time=b,
                model=m,
                model_provider=p,
                turns=int(n),
                input_tokens=int(i),
                output_tokens=int(o),
                cache_read_tokens=int(cr),
                cache_creation_tokens=int(cc),
                total_tokens=int(tt),
                total_cost=num(cost),
                aem_value=num(aem),
                aem_cost=num(aem_cost),
            )


def cache_and_aem(q: Queries, out: pb.GetDashboardResponse) -> None:
    body = """SELECT tier, SUM(n), SUM(input_tokens), SUM(cache_read_tokens),
            SUM(cache_creation_tokens), SUM(aem_value), SUM(aem_cost), SUM(runtime_minutes)
        FROM dash_turns GROUP BY tier"""
    by_tier = {row[0]: row[1:] for row in q.rows(body)}
    cache, aem = out.cache, out.aem
    for tier, _weight in AEM_TIERS:
        n, i, cr, cc, value, cost, minutes = by_tier.get(tier, (0, 0, 0, 0, 0, 0, 0))
        n = int(n)
        cache.input_tokens += int(i)
        cache.cache_read_tokens += int(cr)
        cache.cache_creation_tokens += int(cc)
        aem.tiers.add(
            tier=tier,
            turns=n,
            aem_value=num(value),
            aem_cost=num(cost),
            runtime_minutes=num(minutes),
        )
        aem.turns += n
        aem.aem_value += num(value)
        aem.aem_cost += num(cost)
        aem.runtime_minutes += num(minutes)
    read_base = cache.input_tokens + cache.cache_read_tokens
    cache.cache_read_share = cache.cache_read_tokens / read_base if read_base else 0.0


Latency = dict[str, tuple[Any, Any]]


def latency(conn: sa.Connection, sql: Sql, cte: str, params: dict[str, Any]) -> Latency:
    """tool -> (p50, p95) of the durations of the tool calls of `runs` (defined by `cte`):
    from the base table, since exact percentiles cannot be summed from rollups."""
    source = """(SELECT tc.tool_name AS tool, tc.duration_ms FROM runs r JOIN tool_calls tc
        ON tc.tenant_id = :tenant AND tc.execution_id = r.execution_id) x"""
    ps = sql.percentiles(source, ["tool"], "duration_ms", {"p50": 0.5, "p95": 0.95})
    rows = conn.execute(sa.text(f"{cte} {ps}"), params)
    return {tool: (p50, p95) for tool, p50, p95 in rows}


def tools(q: Queries, out: pb.GetDashboardResponse) -> None:
    # Two statements: joined to the counts, SQLite re-ran the ranking per tool.
    if q.tool_latency is not None:
        latency_of = q.tool_latency()  # computed meanwhile on another connection
    else:
        latency_of = latency(q.conn, q.sql, q.cte, q.params)
    body = f"""SELECT tool{q.sql.collate} AS t, SUM(n) AS calls, SUM(ok) FROM dash_calls
        GROUP BY t ORDER BY calls DESC, t"""
    for tool, calls, ok in q.rows(body):
        p50, p95 = latency_of.get(tool, (None, None))
        out.tools.add(
            tool_name=tool,
            calls=int(calls),
            successes=int(ok),
            success_rate=rate(ok, calls),
            p50_duration_ms=num(p50),
            p95_duration_ms=num(p95),
        )


def rejected(q: Queries, out: pb.GetDashboardResponse) -> None:
    where, params = ["tenant_id = :tenant"], dict(q.params)
    if q.filters.start is not None:
        where.append("received_at >= :start")
    if q.filters.end is not None:
        where.append("received_at < :end")
    reason = q.sql.json_first_reason("violations")
    c = q.sql.collate
    statement = sa.text(
        f"""SELECT door{c} AS d, kind{c} AS k, COALESCE({reason}, ''){c} AS r, COUNT(*) AS n
            FROM rejected_records WHERE {" AND ".join(where)}
            GROUP BY d, k, r ORDER BY n DESC, d, k, r"""
    )
    params = {k: v for k, v in params.items() if k in ("tenant", "start", "end")}
    for door, kind, why, n in q.conn.execute(statement, params):
        out.rejected.add(door=door, kind=kind, reason=why, count=n)
