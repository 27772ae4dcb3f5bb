"""Door: the read side over HTTP. AnalyticsService at its google.api.http routes (native JSON,
through doors/http_native.route), Granite's `POST /api/analytics/batch` in Granite's response
shape, and Kubiya's report routes in Kubiya's shapes — all answered from AnalyticsCalls, so a
figure is the same on every transport. Errors are AIP-193 JSON from the one error table."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from turnstream import errors
from turnstream.core.auth import READ
from turnstream.core.ports import Failure
from turnstream.doors import http_native
from turnstream.doors.analytics_calls import AnalyticsCalls
from turnstream.doors.http import (
    HttpContext,
    HttpFailure,
    guarded,
    native_answer,
    parse_json,
    read_body,
)
from turnstream.v1 import analytics_pb2 as pb
from turnstream.v1 import records_pb2

SERVICE = pb.DESCRIPTOR.services_by_name["AnalyticsService"]
KUBIYA = "/api/v1/analytics"


def _dict(message: Any) -> dict[str, Any]:
    """A message as the plain JSON object Granite and Kubiya answer: snake_case names, every
    field, numbers as numbers (proto3 JSON would spell int64 as strings)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.name in ("Timestamp", "Struct"):
            out[field.name] = (
                json_format.MessageToDict(value) if message.HasField(field.name) else None
            )
        elif field.message_type is not None:
            if field.is_repeated:
                out[field.name] = [_dict(v) for v in value]
            else:
                out[field.name] = _dict(value)
        elif field.is_repeated:
            out[field.name] = list(value)
        elif field.enum_type is not None:
            out[field.name] = field.enum_type.values_by_number[value].name
        else:
            out[field.name] = value
    return out


def _bad(field: str, description: str) -> HttpFailure:
    return HttpFailure(errors.invalid_request(field, f"{field}: {description}"))


def _time(body: dict[str, Any], field: str) -> dt.datetime | None:
    value = body.get(field)
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise _bad(field, f"{value!r} is not an RFC 3339 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _enum(body: dict[str, Any], field: str, enum: Any, prefix: str) -> int:
    value = body.get(field)
    if value in (None, ""):
        return 0
    word = "pending" if value == "queued" else str(value)
    name = f"{prefix}{word.upper()}"
    if not isinstance(value, str) or name not in enum.keys():  # noqa: SIM118 (an EnumTypeWrapper)
        words = [k.removeprefix(prefix).lower() for k in enum.keys()][1:]  # noqa: SIM118
        raise _bad(field, f"{value!r} is not one of {', '.join(words)}")
    return int(enum.Value(name))


def granite_request(body: Any) -> pb.GetDashboardRequest:
    """Granite's AnalyticsFilters as a GetDashboardRequest; a bad field is a 400 naming it."""
    if not isinstance(body, dict):
        raise _bad("body", "expected a JSON object")
    req = pb.GetDashboardRequest()
    for field in ("start_date", "end_date"):
        value = _time(body, field)
        if value is not None:
            getattr(req.filter, field).FromDatetime(value)
    wf = body.get("workflow_name")
    if wf is not None and not isinstance(wf, str):
        raise _bad("workflow_name", "expected a string")
    req.filter.workflow_name = wf or ""
    req.filter.triggered_by = _enum(body, "triggered_by", records_pb2.TriggerType, "TRIGGER_TYPE_")  # type: ignore[assignment]
    req.filter.status = _enum(body, "status", records_pb2.ExecutionStatus, "EXECUTION_STATUS_")  # type: ignore[assignment]
    req.granularity = _enum(body, "granularity", pb.Granularity, "GRANULARITY_")  # type: ignore[assignment]
    return req


def granite_answer(d: pb.GetDashboardResponse) -> dict[str, Any]:
    """Exactly the sections and fields of Granite's batch response."""
    granularity = pb.Granularity.Name(d.granularity).removeprefix("GRANULARITY_").lower()
    over = [_dict(p) for p in d.executions_over_time]
    return {
        "summary": _dict(d.summary),
        "executions_over_time": {
            "data": [
                {k: p[k] for k in ("time", "total", "completed", "failed", "running", "pending")}
                for p in over
            ],
            "granularity": granularity,
        },
        "success_rate": {
            "data": [
                {k: p[k] for k in ("time", "total", "completed", "success_rate")} for p in over
            ],
            "granularity": granularity,
        },
        "failure_breakdown": {
            "data": [_dict(f) for f in d.failure_breakdown],
            "total_failures": d.total_failures,
        },
        "trigger_distribution": {"data": [_dict(t) for t in d.trigger_distribution]},
        "top_automations": {
            "data": [_dict(a) for a in d.top_automations],
            "sort_by": d.top_automations_sort_by,
        },
        "duration_distribution": {
            "stats": _dict(d.duration_stats),
            "histogram": [_dict(h) for h in d.duration_histogram],
        },
        "recent_failures": {
            "data": [_dict(f) for f in d.recent_failures],
            "total": d.recent_failures_total,
            "limit": d.recent_failures_limit,
            "offset": d.recent_failures_offset,
        },
        "actions_per_workflow": {"data": [_dict(a) for a in d.actions_per_workflow]},
        "workflow_complexity": {"data": [_dict(w) for w in d.workflow_complexity]},
        "endpoint_usage": {"data": [_dict(e) for e in d.endpoint_usage]},
        "workflows": list(d.workflows),
    }


def _group_by(request: Request) -> tuple[str, Any]:
    """Kubiya's `group_by` query parameter (day, week, month) and its bucket granularity."""
    group_by = request.query_params.get("group_by", "day")
    if group_by not in ("day", "week", "month"):
        raise _bad("group_by", "must be one of day, week, month")
    return group_by, pb.Granularity.Value(f"GRANULARITY_{group_by.upper()}")


def _days(request: Request) -> int:
    raw = request.query_params.get("days", "30")
    try:
        days = int(raw)
    except ValueError:
        raise _bad("days", f"{raw!r} is not a whole number") from None
    if not 1 <= days <= 3650:
        raise _bad("days", "must be between 1 and 3650")
    return days


def _last_days(days: int, granularity: int = 0) -> pb.GetDashboardRequest:
    req = pb.GetDashboardRequest(granularity=granularity)  # type: ignore[arg-type]
    end = dt.datetime.now(dt.UTC)
    req.filter.end_date.FromDatetime(end)
    req.filter.start_date.FromDatetime(end - dt.timedelta(days=days))
    return req


# The dashboard page (src/turnstream/web/): served from the package, nothing from a CDN.
WEB_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def _asset_route(name: str, media: str) -> Callable[[Request], Awaitable[Response]]:
    body = resources.files("turnstream.web").joinpath(name).read_bytes()

    async def serve(_request: Request) -> Response:
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    return serve


def routes_for(calls: AnalyticsCalls) -> Callable[[HttpContext], list[BaseRoute]]:
    """The read side's route set (for doors.http.build_app)."""
    invoke: dict[str, http_native.Invoke] = {
        "GetDashboard": calls.get_dashboard,
        "GetExecution": calls.get_execution,
        "ListExecutions": calls.list_executions,
    }

    async def run(call: Any, request: Any, tenant: str) -> Any:
        try:
            return await call(request, tenant)
        except Failure as failure:
            raise HttpFailure(failure.status) from None

    async def granite(ctx: HttpContext, request: Request) -> Response:
        try:
            body = parse_json(await read_body(request, ctx))
        except HttpFailure as failure:  # a read: nothing to keep as a dead letter
            raise HttpFailure(failure.status) from None
        answer = await run(calls.get_dashboard, granite_request(body), ctx.tenant_of(request))
        return JSONResponse(granite_answer(answer))

    async def details(ctx: HttpContext, request: Request) -> Response:
        req = pb.GetExecutionRequest(execution_id=request.path_params["execution_id"])
        found = await run(calls.get_execution, req, ctx.tenant_of(request))
        out = _dict(found)
        summary = out.pop("totals")
        return JSONResponse({"execution_id": req.execution_id, **out, "summary": summary})

    async def summary(ctx: HttpContext, request: Request) -> Response:
        days = _days(request)
        d = await run(calls.get_dashboard, _last_days(days), ctx.tenant_of(request))
        models = [_dict(m) for m in d.models]
        return JSONResponse(
            {
                "period_days": days,
                "total_executions": d.summary.total_executions,
                "total_turns": sum(m.turns for m in d.models),
                "total_tokens": sum(m.total_tokens for m in d.models),
                "total_cost": sum(m.total_cost for m in d.models),
                "total_tool_calls": sum(t.calls for t in d.tools),
                "success_rate": d.summary.success_rate,
                "cache_read_share": d.cache.cache_read_share,
                "models": models,
            }
        )

    async def costs(ctx: HttpContext, request: Request) -> Response:
        days = _days(request)
        group_by, granularity = _group_by(request)
        d = await run(calls.get_dashboard, _last_days(days, granularity), ctx.tenant_of(request))
        periods: dict[str, dict[str, Any]] = {}
        for m in d.models_over_time:
            p = periods.setdefault(
                m.time,
                {
                    "period": m.time,
                    "total_cost": 0.0,
                    "total_tokens": 0,
                    "turns": 0,
                    "by_model": {},
                },
            )
            p["total_cost"] += m.total_cost
            p["total_tokens"] += m.total_tokens
            p["turns"] += m.turns
            p["by_model"][m.model] = p["by_model"].get(m.model, 0.0) + m.total_cost
        return JSONResponse(
            {
                "period_days": days,
                "group_by": group_by,
                "total_cost": sum(m.total_cost for m in d.models),
                "breakdown": list(periods.values()),
            }
        )

    async def aem_summary(ctx: HttpContext, request: Request) -> Response:
        days = _days(request)
        d = await run(calls.get_dashboard, _last_days(days), ctx.tenant_of(request))
        return JSONResponse(
            {
                "period_days": days,
                "total_aem": d.aem.aem_value,
                "total_aem_cost": d.aem.aem_cost,
                "total_runtime_minutes": d.aem.runtime_minutes,
                "total_turns": d.aem.turns,
                "by_tier": {
                    t.tier: {k: v for k, v in _dict(t).items() if k != "tier"} for t in d.aem.tiers
                },
            }
        )

    async def aem_trends(ctx: HttpContext, request: Request) -> Response:
        days = _days(request)
        group_by, granularity = _group_by(request)
        d = await run(calls.get_dashboard, _last_days(days, granularity), ctx.tenant_of(request))
        periods: dict[str, dict[str, Any]] = {}
        for m in d.models_over_time:
            p = periods.setdefault(
                m.time, {"period": m.time, "aem_value": 0.0, "aem_cost": 0.0, "turns": 0}
            )
            p["aem_value"] += m.aem_value
            p["aem_cost"] += m.aem_cost
            p["turns"] += m.turns
        return JSONResponse(
            {"period_days": days, "group_by": group_by, "trends": list(periods.values())}
        )

    def routes(ctx: HttpContext) -> list[BaseRoute]:
        out: list[BaseRoute] = []
        for rule in http_native.rules(SERVICE):
            make = getattr(pb, rule.method.input_type.name)
            call = invoke[rule.method.name]
            out.append(http_native.route(ctx, rule, make, call, prefix="analytics_", scope=READ))
        own = (
            ("/api/analytics/batch", "POST", granite, "granite_batch"),
            (f"{KUBIYA}/executions/{{execution_id}}/details", "GET", details, "kubiya_details"),
            (f"{KUBIYA}/summary", "GET", summary, "kubiya_summary"),
            (f"{KUBIYA}/costs", "GET", costs, "kubiya_costs"),
            (f"{KUBIYA}/aem/summary", "GET", aem_summary, "kubiya_aem_summary"),
            (f"{KUBIYA}/aem/trends", "GET", aem_trends, "kubiya_aem_trends"),
        )
        for asset, media in WEB_ASSETS.items():
            out.append(Route(f"/web/{asset}", _asset_route(asset, media), methods=["GET"]))
        out.append(Route("/", _asset_route("dashboard.html", "text/html"), methods=["GET"]))
        for path, verb, handler, name in own:
            bound = functools.partial(handler, ctx)
            out.append(
                Route(
                    path,
                    guarded(ctx, f"http.{name}", bound, native_answer, READ),
                    methods=[verb],
                    name=name,
                )
            )
        return out

    return routes
