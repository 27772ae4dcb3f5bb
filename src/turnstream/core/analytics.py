"""Core, read side: the AnalyticsService calls, transport-neutral (as core/service.py is for
IngestService). The gRPC door and the HTTP routes call these and only encode what comes back.
A request is checked here once — a bad filter is INVALID_ARGUMENT naming the field, never a
crash — and handed to the read store through the AnalyticsStore port (core/ports.py; server.py
passes store/analytics_reads.AnalyticsReads)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any

from google.rpc import code_pb2

from turnstream import errors
from turnstream.core.ports import AnalyticsStore, Failure, Keyset
from turnstream.core.service import failures
from turnstream.v1 import analytics_pb2 as pb
from turnstream.v1 import records_pb2

DEFAULT_DAYS = 30
SORTS = ("executions", "failures", "success_rate", "avg_duration")
MAX_FAILURES_PAGE = 100
MAX_PAGE = 1000
DEFAULT_PAGE = 50
# Bound on a range's width: an hourly series over years would answer millions of buckets.
MAX_RANGE = dt.timedelta(days=3660)


def invalid(field: str, description: str) -> Failure:
    return Failure(errors.invalid_request(field, f"{field}: {description}"))


def _word(value: int, enum: Any, prefix: str) -> str:
    return "" if value == 0 else str(enum.Name(value)).removeprefix(prefix).lower()


def filters(f: pb.ExecutionFilter, now: dt.datetime, *, default_range: bool) -> dict[str, Any]:
    """The filter as plain values; with default_range, the last 30 days up to now."""
    start = f.start_date.ToDatetime(dt.UTC) if f.HasField("start_date") else None
    end = f.end_date.ToDatetime(dt.UTC) if f.HasField("end_date") else None
    if default_range:
        end = end or now
        start = start or end - dt.timedelta(days=DEFAULT_DAYS)
    if start is not None and end is not None:
        if start > end:
            raise invalid("filter.start_date", "start_date must not be after end_date")
        if end - start > MAX_RANGE:
            raise invalid("filter.end_date", "the range must not exceed 3660 days")
    if f.triggered_by not in records_pb2.TriggerType.values():
        raise invalid("filter.triggered_by", f"unknown trigger {f.triggered_by}")
    if f.status not in records_pb2.ExecutionStatus.values():
        raise invalid("filter.status", f"unknown status {f.status}")
    return {
        "start": start,
        "end": end,
        "workflow_name": f.workflow_name,
        "triggered_by": _word(f.triggered_by, records_pb2.TriggerType, "TRIGGER_TYPE_"),
        "status": _word(f.status, records_pb2.ExecutionStatus, "EXECUTION_STATUS_"),
    }


def _key(values: dict[str, Any]) -> str:
    return hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:16]


def encode_token(values: dict[str, Any], keyset: Keyset) -> str:
    raw = json.dumps({"f": _key(values), "t": keyset[0].isoformat(), "id": keyset[1]})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(values: dict[str, Any], token: str) -> Keyset:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        started, eid, key = dt.datetime.fromisoformat(raw["t"]), str(raw["id"]), raw["f"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise invalid("page_token", "not a page token this service issued") from None
    if key != _key(values):
        raise invalid("page_token", "the token was issued for other filters") from None
    return started, eid


class AnalyticsCalls:
    def __init__(
        self, store: AnalyticsStore, clock: Callable[[], dt.datetime] | None = None
    ) -> None:
        self.store = store
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    async def get_dashboard(
        self, request: pb.GetDashboardRequest, tenant_id: str
    ) -> pb.GetDashboardResponse:
        now = self.clock()
        values = filters(request.filter, now, default_range=True)
        if request.granularity not in pb.Granularity.values():
            raise invalid("granularity", f"unknown granularity {request.granularity}")
        granularity = _word(request.granularity, pb.Granularity, "GRANULARITY_") or "day"
        sort_by = request.top_automations_sort_by or "executions"
        if sort_by not in SORTS:
            raise invalid("top_automations_sort_by", f"must be one of {', '.join(SORTS)}")
        limit = request.recent_failures_limit or 10
        if not 0 < limit <= MAX_FAILURES_PAGE:
            raise invalid("recent_failures_limit", f"must be between 1 and {MAX_FAILURES_PAGE}")
        if request.recent_failures_offset < 0:
            raise invalid("recent_failures_offset", "must not be negative")
        async with failures("analytics.GetDashboard"):
            return await self.store.dashboard(
                tenant_id,
                **values,
                granularity=granularity,
                sort_by=sort_by,
                limit=limit,
                offset=request.recent_failures_offset,
                now=now,
            )

    async def get_execution(
        self, request: pb.GetExecutionRequest, tenant_id: str
    ) -> pb.GetExecutionResponse:
        if not request.execution_id:
            raise invalid("execution_id", "execution_id is required")
        async with failures("analytics.GetExecution"):
            found = await self.store.execution(tenant_id, request.execution_id)
        if found is None:
            raise Failure(
                errors.status(
                    code_pb2.NOT_FOUND,
                    f"execution {request.execution_id!r} is not stored",
                    "NOT_FOUND",
                )
            )
        return found

    async def list_executions(
        self, request: pb.ListExecutionsRequest, tenant_id: str
    ) -> pb.ListExecutionsResponse:
        values = filters(request.filter, self.clock(), default_range=False)
        if request.page_size < 0:
            raise invalid("page_size", "must not be negative")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        after = decode_token(values, request.page_token) if request.page_token else None
        async with failures("analytics.ListExecutions"):
            page, last = await self.store.executions(tenant_id, size, after, **values)
        if last is not None:
            page.next_page_token = encode_token(values, last)
        return page
