"""Every GetDashboard section computed in plain Python from the generated WriteRequests, as
docs/analytics.md defines it: what the SQL of store/analytics*.py must equal."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from typing import Any

from turnstream.store.analytics_sql import ACTION_KINDS, AEM_TIERS, FAILURE_CATEGORIES
from turnstream.v1 import analytics_pb2 as pb
from turnstream.v1 import ingest_pb2, records_pb2

PS = {"p50": 0.5, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def _t(ts: Any) -> dt.datetime:
    return ts.ToDatetime(dt.UTC)


def runs(requests: list[ingest_pb2.WriteRequest]) -> list[dict[str, Any]]:
    """One dict per stored execution, status / message / duration derived."""
    out = []
    for req in requests:
        records = [*req.turns, *req.tool_calls, *req.tasks]
        valid = [
            r for r in records if r.HasField("started_at") and (not hasattr(r, "model") or r.model)
        ]
        starts = [_t(r.started_at) for r in valid]
        ends = [_t(r.completed_at) for r in valid if r.HasField("completed_at")]
        e = req.execution
        started = _t(e.started_at) if e.HasField("started_at") else min(starts)
        completed = (
            _t(e.completed_at) if e.HasField("completed_at") else (max(ends) if ends else None)
        )
        failed_tasks = [t for t in req.tasks if t.status == records_pb2.TASK_STATUS_FAILED]
        if e.status:
            status = (
                records_pb2.ExecutionStatus.Name(e.status).removeprefix("EXECUTION_STATUS_").lower()
            )
        elif failed_tasks:
            status = "failed"
        else:
            status = "completed" if completed else "running"
        message = e.error_message or min((t.error_message for t in failed_tasks), default=None)
        if e.HasField("duration_ms"):
            duration = e.duration_ms
        else:
            duration = (
                round((completed - started) / dt.timedelta(milliseconds=1)) if completed else None
            )
        trig = records_pb2.TriggerType.Name(e.triggered_by).removeprefix("TRIGGER_TYPE_").lower()
        out.append(
            {
                "id": req.execution_id,
                "workflow": e.workflow_name or None,
                "trigger": None if e.triggered_by == 0 else trig,
                "source": e.source or None,
                "status": status,
                "message": message or None,
                "duration": duration,
                "started": started,
                "turns": [t for t in req.turns if t.model],
                "calls": list(req.tool_calls),
            }
        )
    return out


def bucket(t: dt.datetime, g: str) -> str:
    if g == "hour":
        t = t.replace(minute=0, second=0, microsecond=0)
    else:
        t = t.replace(hour=0, minute=0, second=0, microsecond=0)
        if g == "week":
            t -= dt.timedelta(days=t.weekday())
        elif g == "month":
            t = t.replace(day=1)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def category(message: str | None) -> str:
    if not message:
        return "unknown"
    low = message.lower()
    for name, patterns in FAILURE_CATEGORIES:
        if any(p in low for p in patterns):
            return name
    return "other"


def action(tool: str) -> str:
    low = tool.lower()
    for name, patterns in ACTION_KINDS:
        if any(p in low for p in patterns):
            return name
    return "other"


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return 0.0
    pos = p * (len(values) - 1)
    lo = math.floor(pos)
    hi = values[lo + 1] if lo + 1 < len(values) else values[lo]
    return values[lo] + (hi - values[lo]) * (pos - lo)


def rate(a: float, b: float) -> float:
    return 100.0 * a / b if b else 0.0


def iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def dashboard(
    requests: list[ingest_pb2.WriteRequest],
    *,
    start: dt.datetime,
    end: dt.datetime,
    granularity: str,
    workflow: str = "",
    trigger: str = "",
    status: str = "",
    now: dt.datetime,
) -> dict[str, Any]:
    everything = runs(requests)
    rs = [
        r
        for r in everything
        if start <= r["started"] < end
        and (not workflow or r["workflow"] == workflow)
        and (not trigger or r["trigger"] == trigger)
        and (not status or r["status"] == status)
    ]
    wf = lambda r: r["workflow"] or "unknown"  # noqa: E731
    n = len(rs)
    done = sum(r["status"] == "completed" for r in rs)
    failed = [r for r in rs if r["status"] == "failed"]
    durations = [r["duration"] for r in rs if r["duration"] is not None]
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    out: dict[str, Any] = {
        "summary": dict(
            total_executions=n,
            completed=done,
            total_failures=len(failed),
            success_rate=rate(done, n),
            avg_duration_ms=sum(durations) / len(durations) if durations else 0.0,
            active_today=sum(r["started"] >= today for r in rs),
            total_tokens=sum(t.total_tokens for r in rs for t in r["turns"]),
        )
    }
    by_bucket: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        by_bucket[bucket(r["started"], granularity)].append(r)
    out["executions_over_time"] = [
        dict(
            time=b,
            total=len(v),
            **{
                s: sum(r["status"] == s for r in v)
                for s in ("completed", "failed", "running", "pending")
            },
            success_rate=rate(sum(r["status"] == "completed" for r in v), len(v)),
        )
        for b, v in sorted(by_bucket.items())
    ]
    cats: dict[str, list[str | None]] = defaultdict(list)
    for r in failed:
        cats[category(r["message"])].append(r["message"])
    out["failure_breakdown"] = [
        dict(category=c, count=len(m), sample_messages=sorted({x for x in m if x})[:3])
        for c, m in sorted(cats.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    trig = Counter(r["trigger"] or "unknown" for r in rs)
    out["trigger_distribution"] = [
        dict(trigger_type=k, count=v)
        for k, v in sorted(trig.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        groups[wf(r)].append(r)

    def avg(v: list[dict[str, Any]]) -> float:
        d = [r["duration"] for r in v if r["duration"] is not None]
        return sum(d) / len(d) if d else 0.0

    autos = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:10]
    out["top_automations"] = [
        dict(
            workflow_name=w,
            executions=len(v),
            completed=sum(r["status"] == "completed" for r in v),
            failures=sum(r["status"] == "failed" for r in v),
            success_rate=rate(sum(r["status"] == "completed" for r in v), len(v)),
            avg_duration_ms=avg(v),
            last_execution=iso(max(r["started"] for r in v)),
        )
        for w, v in autos
    ]
    out["duration_stats"] = dict(
        total=len(durations),
        avg_ms=sum(durations) / len(durations) if durations else 0.0,
        min_ms=float(min(durations, default=0)),
        max_ms=float(max(durations, default=0)),
        **{f"{k}_ms": percentile(durations, p) for k, p in PS.items()},
    )
    hist: list[dict[str, int]] = []
    if durations:
        lo, width = min(durations), (max(durations) - min(durations)) // 20 + 1
        counts = Counter((d - lo) // width for d in durations)
        hist = [
            dict(bucket_start_ms=lo + k * width, bucket_end_ms=lo + (k + 1) * width, count=c)
            for k, c in sorted(counts.items())
        ]
    out["duration_histogram"] = hist
    recent = sorted(failed, key=lambda r: (r["started"], r["id"]), reverse=True)[:10]
    out["recent_failures"] = [
        dict(
            execution_id=r["id"],
            run_id=r["id"],
            workflow_name=wf(r),
            error_category=category(r["message"]),
            triggered_by=r["trigger"] or "unknown",
            started_at=iso(r["started"]),
            error_message=r["message"] or "",
            duration_ms=r["duration"] or 0,
        )
        for r in recent
    ]
    actions = []
    for w, v in groups.items():
        calls = [c for r in v for c in r["calls"]]
        if calls:
            kinds = Counter(action(c.tool_name) for c in calls)
            actions.append(
                dict(
                    workflow_name=w,
                    clicks=kinds["clicks"],
                    keystrokes=kinds["keystrokes"],
                    scrolls=kinds["scrolls"],
                    screenshots=kinds["screenshots"],
                    total_steps=len(calls),
                )
            )
    out["actions_per_workflow"] = sorted(
        actions, key=lambda a: (-a["total_steps"], a["workflow_name"])
    )
    complexity = []
    for w, v in groups.items():
        calls = [c for r in v for c in r["calls"]]
        turns = [t for r in v for t in r["turns"]]
        params = len({c.tool_name for c in calls})
        score = round((len(calls) + len(turns)) / len(v) + params, 2)
        complexity.append(
            dict(
                workflow_name=w,
                complexity_score=score,
                total_steps=len(calls),
                total_iterations=len(turns),
                parameters_count=params,
                success_rate=rate(sum(r["status"] == "completed" for r in v), len(v)),
                avg_duration_ms=avg(v),
            )
        )
    out["workflow_complexity"] = sorted(
        complexity, key=lambda c: (-c["complexity_score"], c["workflow_name"])
    )
    endpoints: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        if r["trigger"] == "endpoint":
            endpoints[r["source"] or "unknown"].append(r)
    out["endpoint_usage"] = [
        dict(
            endpoint_slug=s,
            http_method="POST",
            invocations=len(v),
            success_count=sum(r["status"] == "completed" for r in v),
            success_rate=rate(sum(r["status"] == "completed" for r in v), len(v)),
            avg_response_time_ms=avg(v),
            p95_response_time_ms=percentile(
                [r["duration"] for r in v if r["duration"] is not None], 0.95
            ),
        )
        for s, v in sorted(endpoints.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    out["workflows"] = sorted({r["workflow"] for r in everything if r["workflow"]})
    turns = [t for r in rs for t in r["turns"]]
    fields = (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_creation_tokens",
        "total_tokens",
    )

    def usage(time: str, ts: list[Any]) -> dict[str, Any]:
        return dict(
            time=time,
            model=ts[0].model,
            model_provider=ts[0].model_provider,
            turns=len(ts),
            **{f: sum(getattr(t, f) for t in ts) for f in fields},
            total_cost=sum(t.total_cost for t in ts),
            aem_value=sum(t.aem_value for t in ts),
            aem_cost=sum(t.aem_cost for t in ts),
        )

    over: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    total: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for t in turns:
        over[(bucket(_t(t.started_at), granularity), t.model, t.model_provider)].append(t)
        total[(t.model, t.model_provider)].append(t)
    out["models_over_time"] = [usage(k[0], v) for k, v in sorted(over.items())]
    out["models"] = [
        usage("", v) for k, v in sorted(total.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    i, cr = sum(t.input_tokens for t in turns), sum(t.cache_read_tokens for t in turns)
    out["cache"] = dict(
        input_tokens=i,
        cache_read_tokens=cr,
        cache_creation_tokens=sum(t.cache_creation_tokens for t in turns),
        cache_read_share=cr / (i + cr) if i + cr else 0.0,
    )

    def tier(w: float) -> str:
        return next(name for name, floor in AEM_TIERS if w >= floor)

    tiers = []
    for name, _ in AEM_TIERS:
        ts = [t for t in turns if tier(t.model_weight) == name]
        tiers.append(
            dict(
                tier=name,
                turns=len(ts),
                aem_value=sum(t.aem_value for t in ts),
                aem_cost=sum(t.aem_cost for t in ts),
                runtime_minutes=sum(t.runtime_minutes for t in ts),
            )
        )
    out["aem"] = dict(
        turns=len(turns),
        aem_value=sum(t.aem_value for t in turns),
        aem_cost=sum(t.aem_cost for t in turns),
        runtime_minutes=sum(t.runtime_minutes for t in turns),
        tiers=tiers,
    )
    tools: dict[str, list[Any]] = defaultdict(list)
    for r in rs:
        for c in r["calls"]:
            tools[c.tool_name].append(c)
    out["tools"] = [
        dict(
            tool_name=k,
            calls=len(v),
            successes=sum(c.success for c in v),
            success_rate=rate(sum(c.success for c in v), len(v)),
            p50_duration_ms=percentile([c.duration_ms for c in v], 0.5),
            p95_duration_ms=percentile([c.duration_ms for c in v], 0.95),
        )
        for k, v in sorted(tools.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    return out


SECTIONS = (
    "summary", "executions_over_time", "failure_breakdown", "trigger_distribution",
    "top_automations", "duration_stats", "duration_histogram", "recent_failures",
    "actions_per_workflow", "workflow_complexity", "endpoint_usage", "workflows",
    "models_over_time", "models", "cache", "aem", "tools",
)  # fmt: skip


def as_dict(answer: pb.GetDashboardResponse) -> dict[str, Any]:
    from google.protobuf import json_format

    d = json_format.MessageToDict(
        answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return {k: d[k] for k in SECTIONS}
