"""Two tenants on one server and database (both dialects): whatever ids a tenant sends, through
whichever door, it writes only its own rows and reads only its own rows — native JSON, Kubiya,
HoneyHive, Granite's batch, Kubiya's reports, gRPC Write / Append / GetStream / Get* / List*."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import grpc
import httpx
import pytest

from tests.dbutil import rows
from tests.integration.test_auth_doors import bearer, make_key
from tests.integration.test_http_honeyhive import model_event
from tests.integration.test_http_kubiya import BATCH
from tests.serving import running_server
from tests.unit.test_formats_honeyhive import SESSION
from turnstream.client import Client, StreamWriter
from turnstream.v1 import analytics_pb2 as pb
from turnstream.v1 import analytics_pb2_grpc

KUBIYA = "/api/v1/analytics"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
SINCE = {"start_date": "2024-01-01T00:00:00Z"}  # HoneyHive's seed session is from 2024
EXECUTION = BATCH["execution_id"]
TASK = BATCH["tasks"][0]["task_id"]


async def write_everything_as(c: httpx.AsyncClient, target: str, key: str) -> None:
    """Tenant A's records through every door, on ids tenant B will also send."""
    h = bearer(key)
    native = {
        "execution": {
            "executionId": "exec-native",
            "workflowName": "a-native",
            "startedAt": NOW.isoformat(),
        },
        "turns": [{"executionId": "exec-native", "turnNumber": 1, "model": "gpt-4o"}],
    }
    r = await c.post("/v1/records:write", json=native, headers=h)
    assert r.status_code == 200, r.text
    r = await c.post(f"{KUBIYA}/batch", json=BATCH, headers=bearer(key, "UserKey"))
    assert r.status_code == 201, r.text
    r = await c.post("/session/start", json={"session": {"session_id": SESSION}}, headers=h)
    assert r.status_code == 200, r.text
    r = await c.post("/events", json={"event": model_event("m-1")}, headers=h)
    assert r.status_code == 200, r.text
    async with Client(target, api_key=key) as client:
        await client.write(
            {"execution_id": "exec-grpc", "workflow_name": "a-grpc", "started_at": NOW}
        )
    async with StreamWriter(target, "shared-stream", api_key=key) as w:
        for n in (1, 2, 3):
            await w.turn(execution_id="exec-stream", turn_number=n, model="gpt-4o", started_at=NOW)
        await w.flush()


async def test_two_tenants_never_see_or_touch_each_others_rows(database_url: str) -> None:
    a, _ = make_key(database_url, "acme")
    b, _ = make_key(database_url, "globex")
    async with running_server(database_url, auth_cache_ttl=0.3) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as c:
            await write_everything_as(c, target, a)
            a_rows = {t: len(rows(database_url, t)) for t in ("executions", "turns", "tasks")}

            # B sends A's ids: its own rows, never a change to A's.
            async with Client(target, api_key=b) as client:
                await client.write(
                    {"execution_id": "exec-grpc", "workflow_name": "b-grpc", "started_at": NOW}
                )
                assert await client.get_stream("shared-stream") == 0
            async with Client(target, api_key=a) as client:
                assert await client.get_stream("shared-stream") == 3
            async with StreamWriter(target, "shared-stream", api_key=b) as w:
                await w.turn(execution_id="exec-b", turn_number=1, model="gpt-4o", started_at=NOW)
                await w.flush()
                assert w.committed_offset == 1  # a separate stream, from 0
            hb = bearer(b)
            patch = {"status": "failed", "error_message": "not yours"}
            r = await c.patch(f"{KUBIYA}/tasks/{TASK}", json=patch, headers=hb)
            assert r.status_code == 404, r.text
            r = await c.put("/events", json={"event_id": "m-1", "metadata": {"x": 1}}, headers=hb)
            assert r.status_code == 404, r.text
            changed = copy.deepcopy(BATCH)
            changed["tasks"][0]["status"] = "failed"
            r = await c.post(f"{KUBIYA}/batch", json=changed, headers=bearer(b, "UserKey"))
            assert r.status_code == 201, r.text

            # B reads: only what B wrote, through every read door.
            for execution_id in ("exec-native", SESSION, "exec-stream"):
                r = await c.get(f"/v1/executions/{execution_id}", headers=hb)
                assert r.status_code == 404, (execution_id, r.text)
                r = await c.get(f"{KUBIYA}/executions/{execution_id}/details", headers=hb)
                assert r.status_code == 404, (execution_id, r.text)
            r = await c.get("/v1/executions/exec-grpc", headers=hb)
            assert r.json()["execution"]["workflowName"] == "b-grpc"
            r = await c.get("/v1/executions", headers=hb)
            listed = {e["execution"]["executionId"] for e in r.json()["executions"]}
            assert listed == {"exec-grpc", "exec-b", EXECUTION}
            r = await c.post("/api/analytics/batch", json=SINCE, headers=hb)
            assert r.json()["summary"]["total_executions"] == 3
            r = await c.get(f"{KUBIYA}/summary?days=1000", headers=hb)
            assert r.json()["total_executions"] == 3
            assert r.json()["total_turns"] == len(BATCH["turns"]) + 1

            r = await c.get(f"{KUBIYA}/executions/{EXECUTION}/details", headers=bearer(a))
            statuses = {t["task_id"]: t["status"] for t in r.json()["tasks"]}
            # B's PATCH and B's batch of the same ids changed nothing of A's.
            assert (
                statuses[TASK]
                == "TASK_STATUS_COMPLETED"
                == "TASK_STATUS_" + BATCH["tasks"][0]["status"].upper()
            )

        async with grpc.aio.insecure_channel(target) as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            md_a = (("authorization", f"Bearer {a}"),)
            md_b = (("authorization", f"Bearer {b}"),)
            for execution_id in ("exec-native", SESSION, "exec-stream"):
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await stub.GetExecution(pb.GetExecutionRequest(execution_id=execution_id),
                                            metadata=md_b)  # fmt: skip
                assert exc.value.code() == grpc.StatusCode.NOT_FOUND
            got = await stub.GetExecution(
                pb.GetExecutionRequest(execution_id="exec-grpc"), metadata=md_a
            )
            assert got.execution.workflow_name == "a-grpc"
            listed_a = await stub.ListExecutions(pb.ListExecutionsRequest(), metadata=md_a)
            assert {e.execution.execution_id for e in listed_a.executions} == {
                "exec-native", EXECUTION, SESSION, "exec-grpc", "exec-stream"}  # fmt: skip
            listed_b = await stub.ListExecutions(pb.ListExecutionsRequest(), metadata=md_b)
            assert {e.execution.execution_id for e in listed_b.executions} == {
                "exec-grpc", "exec-b", EXECUTION}  # fmt: skip
            since = pb.GetDashboardRequest()
            since.filter.start_date.FromJsonString(SINCE["start_date"])
            dash_a = await stub.GetDashboard(since, metadata=md_a)
            dash_b = await stub.GetDashboard(since, metadata=md_b)
            assert dash_a.summary.total_executions == 5
            assert dash_b.summary.total_executions == 3

    # In the database: A's rows as A left them, B's beside them, nothing as `default`.
    by_tenant: dict[str, Any] = {}
    for row in rows(database_url, "executions"):
        by_tenant.setdefault(row["tenant_id"], set()).add(row["execution_id"])
    assert set(by_tenant) == {"acme", "globex"}
    assert len(rows(database_url, "executions", tenant_id="acme")) == a_rows["executions"]
    assert len(rows(database_url, "turns", tenant_id="acme")) == a_rows["turns"]
    streams = {(r["tenant_id"], r["stream_id"]): r["committed_offset"]
               for r in rows(database_url, "streams")}  # fmt: skip
    assert streams == {("acme", "shared-stream"): 3, ("globex", "shared-stream"): 1}
