"""Storage, read side: the AnalyticsStore port (core/ports.py) over the dashboard
and execution queries, on the read engine (store/queries.Reads), never the writer."""

from __future__ import annotations

from typing import Any

from turnstream.core.ports import Keyset
from turnstream.store.analytics import Dashboard
from turnstream.store.analytics_executions import Executions
from turnstream.store.analytics_sql import Filters
from turnstream.store.queries import Reads
from turnstream.v1 import analytics_pb2 as pb


class AnalyticsReads:
    def __init__(self, reads: Reads) -> None:
        self._dashboard = Dashboard(reads)
        self._executions = Executions(reads)

    async def dashboard(self, tenant_id: str, **query: Any) -> pb.GetDashboardResponse:
        """query: the filters (as Filters' fields), granularity, sort_by, limit, offset, now."""
        options = {k: query.pop(k) for k in ("granularity", "sort_by", "limit", "offset", "now")}
        return await self._dashboard.get(tenant_id, Filters(**query), **options)

    async def execution(self, tenant_id: str, execution_id: str) -> pb.GetExecutionResponse | None:
        return await self._executions.get(tenant_id, execution_id)

    async def executions(
        self, tenant_id: str, page_size: int, after: Keyset | None, **filters: Any
    ) -> tuple[pb.ListExecutionsResponse, Keyset | None]:
        return await self._executions.list(tenant_id, Filters(**filters), page_size, after)
