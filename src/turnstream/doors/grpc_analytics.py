"""Door: gRPC AnalyticsService. Thin: each RPC is the shared AnalyticsCalls with the caller's
tenant (a key with the `read` scope), a Failure sent as the call's google.rpc.Status."""

from __future__ import annotations

from typing import Any

import grpc

from turnstream.core.auth import READ
from turnstream.doors.analytics_calls import AnalyticsCalls
from turnstream.doors.grpc_answer import answer
from turnstream.doors.grpc_auth import Authorize
from turnstream.v1 import analytics_pb2 as pb
from turnstream.v1 import analytics_pb2_grpc


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, calls: AnalyticsCalls, authorize: Authorize) -> None:
        self.calls = calls
        self.authorize = authorize

    async def tenant_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        return (await self.authorize(context, READ)).tenant

    async def GetDashboard(
        self, request: pb.GetDashboardRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetDashboardResponse:
        return await answer(
            context, self.calls.get_dashboard(request, await self.tenant_of(context))
        )

    async def GetExecution(
        self, request: pb.GetExecutionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetExecutionResponse:
        return await answer(
            context, self.calls.get_execution(request, await self.tenant_of(context))
        )

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListExecutionsResponse:
        return await answer(
            context, self.calls.list_executions(request, await self.tenant_of(context))
        )
