"""Storage, read side: the SQL both dialects need for the dashboard, where they differ — time
buckets, millisecond differences, percentiles, JSON, collation — and the `runs` CTE every
section starts from (one row per filtered execution, its status and duration derived as
docs/analytics.md defines them)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from turnstream.store.schema import sqlite_time

GRANULARITIES = ("hour", "day", "week", "month")

# Failure categories: the first whose pattern occurs in the lower-cased message wins. Patterns
# hold no LIKE wildcards ("_", "%") so the SQL and a plain substring test agree.
FAILURE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("timeout", ("timeout", "timed out", "deadline")),
    ("rate_limit", ("rate limit", "too many requests", "429", "quota")),
    ("auth", ("unauthori", "forbidden", "permission", "401", "403", "auth")),
    ("context_length", ("context length", "context window", "token limit", "max tokens")),
    ("network", ("connection", "network", "unreachable", "dns")),
    ("not_found", ("not found", "404")),
    ("validation", ("invalid", "validation", "schema")),
    ("tool_error", ("tool",)),
)

# Actions, from tool names: the first kind whose pattern occurs in the lower-cased name wins.
ACTION_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("clicks", ("click",)),
    ("keystrokes", ("keystroke", "key", "type")),
    ("scrolls", ("scroll",)),
    ("screenshots", ("screenshot",)),
)

# Kubiya's AEM tiers by model weight, highest first.
AEM_TIERS: tuple[tuple[str, float], ...] = (("premium", 1.5), ("mid", 0.8), ("basic", 0.0))


def _any_like(column: str, patterns: tuple[str, ...]) -> str:
    return " OR ".join(f"LOWER({column}) LIKE '%{p}%'" for p in patterns)


def failure_category(column: str) -> str:
    whens = " ".join(f"WHEN {_any_like(column, ps)} THEN '{c}'" for c, ps in FAILURE_CATEGORIES)
    return f"CASE WHEN {column} IS NULL OR {column} = '' THEN 'unknown' {whens} ELSE 'other' END"


def action_kind(column: str) -> str:
    whens = " ".join(f"WHEN {_any_like(column, ps)} THEN '{k}'" for k, ps in ACTION_KINDS)
    return f"CASE {whens} ELSE 'other' END"


def aem_tier(column: str) -> str:
    whens = " ".join(f"WHEN {column} >= {w} THEN '{t}'" for t, w in AEM_TIERS[:-1])
    return f"CASE {whens} ELSE '{AEM_TIERS[-1][0]}' END"


@dataclass(frozen=True, slots=True)
class Filters:
    """Validated filters: a half-open UTC range [start, end) on started_at, and optional
    equality on workflow, trigger word and (derived) status word."""

    start: dt.datetime | None
    end: dt.datetime | None
    workflow_name: str = ""
    triggered_by: str = ""
    status: str = ""


class Sql:
    """The dialect's fragments. `name` is "sqlite" or "postgresql"."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pg = name == "postgresql"
        # Byte order on both sides, so ties and lists sort as Python sorts str.
        self.collate = ' COLLATE "C"' if self.pg else ""

    def time(self, value: dt.datetime) -> Any:
        # SQLite stores UTC text (schema.sqlite_time); compare with the same text.
        return value if self.pg else sqlite_time(value)

    def ms_between(self, start: str, end: str) -> str:
        if self.pg:
            return f"CAST(ROUND(EXTRACT(EPOCH FROM ({end} - {start})) * 1000) AS BIGINT)"
        return f"CAST(ROUND((JULIANDAY({end}) - JULIANDAY({start})) * 86400000.0) AS INTEGER)"

    def bucket(self, column: str, granularity: str) -> str:
        """The UTC start of the bucket holding `column`, as RFC 3339 text. Weeks start on
        Monday (ISO), months on the 1st."""
        if granularity not in GRANULARITIES:
            raise ValueError(granularity)
        if self.pg:
            return (
                f"TO_CHAR(DATE_TRUNC('{granularity}', {column} AT TIME ZONE 'UTC'), "
                """'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""
            )
        if granularity == "hour":
            return f"STRFTIME('%Y-%m-%dT%H:00:00Z', {column})"
        if granularity == "day":
            return f"STRFTIME('%Y-%m-%dT00:00:00Z', {column})"
        if granularity == "month":
            return f"STRFTIME('%Y-%m-01T00:00:00Z', {column})"
        # %w is 0 on Sunday: step back (w + 6) % 7 days to Monday.
        back = f"'-' || ((CAST(STRFTIME('%w', {column}) AS INTEGER) + 6) % 7) || ' days'"
        return f"STRFTIME('%Y-%m-%dT00:00:00Z', {column}, {back})"

    def bucket_key(self, column: str, granularity: str) -> str:
        """A cheap grouping key for the bucket (PostgreSQL: the truncated timestamp, made
        text by `label` once there are few rows); SQLite's key is already the label."""
        if self.pg:
            return f"DATE_TRUNC('{granularity}', {column} AT TIME ZONE 'UTC')"
        return self.bucket(column, granularity)

    def label(self, key: str) -> str:
        if self.pg:
            return f"""TO_CHAR({key}, 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""
        return key

    def json_first_reason(self, column: str) -> str:
        if self.pg:
            return f"({column} -> 0 ->> 'reason')"
        return f"JSON_EXTRACT({column}, '$[0].reason')"

    def percentiles(self, source: str, groups: list[str], value: str, ps: dict[str, float]) -> str:
        """SELECT groups..., one column per named percentile of `value` over `source`, linearly
        interpolated between the two nearest ranks as percentile_cont does. SQLite has no
        percentile_cont: ranks come from window functions, and the same formula picks them."""
        keys = ", ".join(groups)
        lead = f"{keys}, " if groups else ""
        tail = f" GROUP BY {keys}" if groups else ""
        if self.pg:
            cols = ", ".join(
                f"PERCENTILE_CONT({p}) WITHIN GROUP (ORDER BY {value}) AS {n}"
                for n, p in ps.items()
            )
            return f"SELECT {lead}{cols} FROM {source} WHERE {value} IS NOT NULL{tail}"
        part = f"PARTITION BY {keys} " if groups else ""
        ranked = (
            f"SELECT {lead}{value} AS v, ROW_NUMBER() OVER ({part}ORDER BY {value}) - 1 AS i, "
            f"COUNT(*) OVER ({part.strip()}) AS n FROM {source} WHERE {value} IS NOT NULL"
        )
        picks = []
        for name, p in ps.items():
            pos = f"({p} * (n - 1))"
            lo = f"MAX(CASE WHEN i = CAST({pos} AS INTEGER) THEN v END)"
            hi = f"MAX(CASE WHEN i = CAST({pos} AS INTEGER) + 1 THEN v END)"
            frac = f"MAX({pos} - CAST({pos} AS INTEGER))"
            picks.append(f"({lo} + (COALESCE({hi}, {lo}) - {lo}) * {frac}) AS {name}")
        return f"SELECT {lead}{', '.join(picks)} FROM ({ranked}) ranked{tail}"

    def runs(
        self, f: Filters, *, where: tuple[str, ...] = (), task_where: str = ""
    ) -> tuple[str, dict[str, Any]]:
        """`WITH runs AS (...)`: the executions the filters select, with their derived status,
        error message and duration. Every dashboard query starts with it; `where` adds
        conditions on `e` whose parameters the caller binds."""
        where = ("e.tenant_id = :tenant", *where)
        params: dict[str, Any] = {}
        if f.start is not None:
            where += ("e.started_at >= :start",)
            params["start"] = self.time(f.start)
        if f.end is not None:
            where += ("e.started_at < :end",)
            params["end"] = self.time(f.end)
        if f.workflow_name:
            where += ("e.workflow_name = :workflow_name",)
            params["workflow_name"] = f.workflow_name
        if f.triggered_by:
            where += ("e.triggered_by = :triggered_by",)
            params["triggered_by"] = f.triggered_by
        # Failed tasks are few: aggregated once per execution and joined, rather than looked
        # up per execution (a correlated subquery walks ix_tasks_status for every row).
        failed = f"""
            SELECT execution_id, MIN(error_message{self.collate}) AS message
            FROM tasks WHERE tenant_id = :tenant AND status = 'failed'{task_where}
            GROUP BY execution_id"""
        inner = f"""
            SELECT e.execution_id, e.workflow_name, e.triggered_by, e.source, e.started_at,
                CASE WHEN e.status IS NOT NULL THEN e.status
                     WHEN ft.execution_id IS NOT NULL THEN 'failed'
                     WHEN e.completed_at IS NOT NULL THEN 'completed'
                     ELSE 'running' END AS status,
                CASE WHEN e.error_message IS NOT NULL AND e.error_message <> ''
                     THEN e.error_message ELSE ft.message END AS error_message,
                COALESCE(e.duration_ms, {self.ms_between("e.started_at", "e.completed_at")})
                    AS duration_ms
            FROM executions e LEFT JOIN failed_tasks ft ON ft.execution_id = e.execution_id
            WHERE {" AND ".join(where)}"""
        outer = "SELECT * FROM base"
        if f.status:
            outer += " WHERE status = :status"
            params["status"] = f.status
        return f"WITH failed_tasks AS ({failed}), base AS ({inner}), runs AS ({outer})", params


def num(value: Any) -> float:
    """A SQL number as float (PostgreSQL's AVG answers Decimal); NULL is 0."""
    if value is None:
        return 0.0
    return float(value) if isinstance(value, Decimal | int | float) else float(str(value))


def iso(value: Any) -> str:
    """A stored time as RFC 3339 UTC text; SQLite answers its stored text, PostgreSQL a
    datetime."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return str(value.astimezone(dt.UTC).isoformat()).replace("+00:00", "Z")


def rate(part: Any, whole: Any) -> float:
    return 100.0 * num(part) / num(whole) if num(whole) else 0.0
