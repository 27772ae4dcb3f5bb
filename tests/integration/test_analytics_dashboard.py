"""GetDashboard equals every section computed in plain Python from the same generated records,
on SQLite and PostgreSQL, over a real gRPC server, for several filters and granularities —
empty and single-record ranges included. GetExecution and ListExecutions too."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from tests.integration import analytics_reference as ref
from tests.serving import ingest_stub, running_server
from turnstream.demo import Spec, generate
from turnstream.v1 import analytics_pb2 as pb
from turnstream.v1 import analytics_pb2_grpc, records_pb2

END = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
SPEC = Spec(executions=240, start=END - dt.timedelta(days=45), end=END, seed=11)


def close(actual: Any, expected: Any, path: str = "") -> None:
    if isinstance(expected, dict):
        assert set(actual) == set(expected), path
        for k in expected:
            close(actual[k], expected[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            close(a, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-6), path
    else:
        assert actual == expected, path


def normal(message_dict: dict[str, Any]) -> dict[str, Any]:
    """The expected sections through the proto and back, so int64 are spelled as the answer
    spells them."""
    message = json_format.ParseDict(message_dict, pb.GetDashboardResponse())
    return ref.as_dict(message)


CASES = [
    # (name, start, end, granularity, filters)
    ("all-days", SPEC.start, END, "day", {}),
    ("all-weeks", SPEC.start, END, "week", {}),
    ("month", SPEC.start, END, "month", {}),
    ("hours-of-a-week", END - dt.timedelta(days=7), END, "hour", {}),
    ("workflow", SPEC.start, END, "day", {"workflow_name": "review-pr"}),
    ("endpoint-failed", SPEC.start, END, "week", {"triggered_by": "endpoint", "status": "failed"}),
    ("empty", END + dt.timedelta(days=1), END + dt.timedelta(days=2), "day", {}),
]


def request(
    start: dt.datetime, end: dt.datetime, g: str, f: dict[str, str]
) -> pb.GetDashboardRequest:
    req = pb.GetDashboardRequest(granularity=pb.Granularity.Value(f"GRANULARITY_{g.upper()}"))
    req.filter.start_date.FromDatetime(start)
    req.filter.end_date.FromDatetime(end)
    req.filter.workflow_name = f.get("workflow_name", "")
    if "triggered_by" in f:
        req.filter.triggered_by = records_pb2.TriggerType.Value(
            f"TRIGGER_TYPE_{f['triggered_by'].upper()}"
        )
    if "status" in f:
        req.filter.status = records_pb2.ExecutionStatus.Value(
            f"EXECUTION_STATUS_{f['status'].upper()}"
        )
    return req


async def test_dashboard_equals_python(database_url: str) -> None:
    requests = list(generate(SPEC))
    async with running_server(database_url) as server:
        async with ingest_stub(server) as ingest:
            for req in requests:
                await ingest.Write(req)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            runs = ref.runs(requests)
            one = sorted(runs, key=lambda r: r["started"])[len(runs) // 2]["started"]
            single = ("single", one, one + dt.timedelta(microseconds=1), "hour", {})
            for name, start, end, g, f in [*CASES, single]:
                answer = await stub.GetDashboard(request(start, end, g, f))
                expected = ref.dashboard(
                    requests,
                    start=start,
                    end=end,
                    granularity=g,
                    workflow=f.get("workflow_name", ""),
                    trigger=f.get("triggered_by", ""),
                    status=f.get("status", ""),
                    now=dt.datetime.now(dt.UTC),
                )
                got = ref.as_dict(answer)
                want = normal(expected)
                for section in ref.SECTIONS:
                    close(got[section], want[section], f"{name}:{section}")
                if name == "single":
                    assert answer.summary.total_executions == 1
                if name == "empty":
                    assert answer.summary.total_executions == 0


async def test_execution_and_list(database_url: str) -> None:
    requests = list(generate(Spec(executions=30, start=SPEC.start, end=END, seed=3)))
    async with running_server(database_url) as server:
        async with ingest_stub(server) as ingest:
            for req in requests:
                await ingest.Write(req)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            runs = {r["id"]: r for r in ref.runs(requests)}
            seen: list[str] = []
            token = ""
            while True:
                page = await stub.ListExecutions(
                    pb.ListExecutionsRequest(page_size=7, page_token=token)
                )
                seen += [e.execution.execution_id for e in page.executions]
                token = page.next_page_token
                if not token:
                    break
            newest_first = sorted(
                runs.values(), key=lambda r: (r["started"], r["id"]), reverse=True
            )
            assert seen == [r["id"] for r in newest_first]
            # Filtered pages: the same executions the reference selects, in the same order.
            f = pb.ExecutionFilter(
                workflow_name="review-pr", status=records_pb2.EXECUTION_STATUS_COMPLETED
            )
            picked: list[str] = []
            while True:
                page = await stub.ListExecutions(
                    pb.ListExecutionsRequest(filter=f, page_size=2, page_token=token)
                )
                picked += [e.execution.execution_id for e in page.executions]
                token = page.next_page_token
                if not token:
                    break
            want = [
                r["id"]
                for r in newest_first
                if r["workflow"] == "review-pr" and r["status"] == "completed"
            ]
            assert picked == want and want
            first = await stub.ListExecutions(pb.ListExecutionsRequest(filter=f, page_size=1))
            other = pb.ListExecutionsRequest(page_size=1, page_token=first.next_page_token)
            with pytest.raises(grpc.aio.AioRpcError) as mixed:
                await stub.ListExecutions(other)  # a token of other filters
            assert mixed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            req = next(r for r in requests if len(r.turns) > 2 and r.tool_calls)
            got = await stub.GetExecution(pb.GetExecutionRequest(execution_id=req.execution_id))
            valid = [t for t in req.turns if t.model]
            assert [t.turn_number for t in got.turns] == sorted(t.turn_number for t in valid)
            assert len(got.tool_calls) == len(req.tool_calls)
            assert got.totals.total_tokens == sum(t.total_tokens for t in valid)
            want = runs[req.execution_id]["status"]
            assert records_pb2.ExecutionStatus.Name(got.execution.status).endswith(want.upper())
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetExecution(pb.GetExecutionRequest(execution_id="nope"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.ListExecutions(pb.ListExecutionsRequest(page_token="garbage"))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "page_token" in (bad.value.details() or "")
            wrong = request(END, SPEC.start, "day", {})
            with pytest.raises(grpc.aio.AioRpcError) as backwards:
                await stub.GetDashboard(wrong)
            assert backwards.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "start_date" in (backwards.value.details() or "")
