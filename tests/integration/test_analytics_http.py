"""The read side over HTTP: AnalyticsService at its google.api.http routes, Granite's batch in
Granite's exact shape, Kubiya's reports; bad filters are 400 naming the field (both dialects)."""

from __future__ import annotations

import datetime as dt

from tests.integration.test_http_kubiya import client
from tests.serving import ingest_stub, running_server
from turnstream.demo import Spec, generate

END = dt.datetime.now(dt.UTC).replace(microsecond=0)
SPEC = Spec(executions=40, start=END - dt.timedelta(days=10), end=END, seed=5)

GRANITE = {
    "summary": {"total_executions", "completed", "total_failures", "success_rate",
                "avg_duration_ms", "active_today", "total_tokens"},
    "executions_over_time": {"data", "granularity"},
    "success_rate": {"data", "granularity"},
    "failure_breakdown": {"data", "total_failures"},
    "trigger_distribution": {"data"},
    "top_automations": {"data", "sort_by"},
    "duration_distribution": {"stats", "histogram"},
    "recent_failures": {"data", "total", "limit", "offset"},
    "actions_per_workflow": {"data"},
    "workflow_complexity": {"data"},
    "endpoint_usage": {"data"},
}  # fmt: skip


async def test_granite_kubiya_and_native_routes(database_url: str) -> None:
    async with running_server(database_url) as server:
        async with ingest_stub(server) as ingest:
            for req in generate(SPEC):
                await ingest.Write(req)
        async with client(server) as c:
            body = {"start_date": SPEC.start.isoformat(), "end_date": END.isoformat(),
                    "granularity": "week"}  # fmt: skip
            r = await c.post("/api/analytics/batch", json=body)
            assert r.status_code == 200, r.text
            g = r.json()
            assert set(g) == {*GRANITE, "workflows"}
            for section, keys in GRANITE.items():
                assert set(g[section]) == keys, section
            assert g["summary"]["total_executions"] == 40
            assert set(g["executions_over_time"]["data"][0]) == {
                "time", "total", "completed", "failed", "running", "pending"}  # fmt: skip
            assert g["executions_over_time"]["granularity"] == "week"
            assert set(g["duration_distribution"]["stats"]) == {
                "total", "avg_ms", "min_ms", "max_ms",
                "p50_ms", "p75_ms", "p90_ms", "p95_ms", "p99_ms"}  # fmt: skip

            r = await c.post("/api/analytics/batch", json={"status": "exploded"})
            assert r.status_code == 400
            assert "status" in r.json()["error"]["message"]
            r = await c.post("/api/analytics/batch", json={"start_date": "yesterday"})
            assert r.status_code == 400 and "start_date" in r.json()["error"]["message"]

            for body, field in (
                ({"topAutomationsSortBy": "loudness"}, "top_automations_sort_by"),
                ({"recentFailuresLimit": 1000}, "recent_failures_limit"),
                ({"recentFailuresOffset": -1}, "recent_failures_offset"),
                ({"granularity": 9}, "granularity"),
                ({"filter": {"status": 42}}, "filter.status"),
            ):
                bad = await c.post("/v1/dashboard:get", json=body)
                assert bad.status_code == 400, (body, bad.text)
                violation = bad.json()["error"]["details"][1]["fieldViolations"][0]
                assert violation["field"] == field
            native = await c.post("/v1/dashboard:get", json={"granularity": "GRANULARITY_DAY"})
            assert native.status_code == 200, native.text
            assert native.json()["summary"]["totalExecutions"] == "40"
            page = await c.get("/v1/executions", params={"page_size": "5"})
            assert page.status_code == 200, page.text
            first = page.json()["executions"][0]["execution"]["executionId"]
            assert page.json()["nextPageToken"]
            one = await c.get(f"/v1/executions/{first}")
            assert one.status_code == 200
            bad = await c.get("/v1/executions", params={"page_token": "zzz"})
            assert bad.status_code == 400 and "page_token" in bad.text
            missing = await c.get("/v1/executions/nope")
            assert missing.status_code == 404

            details = await c.get(f"/api/v1/analytics/executions/{first}/details")
            assert details.status_code == 200
            assert set(details.json()) == {
                "execution_id", "execution", "turns", "tool_calls", "tasks", "summary"}  # fmt: skip
            summary = await c.get("/api/v1/analytics/summary", params={"days": "30"})
            assert summary.status_code == 200 and summary.json()["total_executions"] == 40
            costs = await c.get(
                "/api/v1/analytics/costs", params={"days": "30", "group_by": "week"}
            )
            assert costs.status_code == 200 and costs.json()["breakdown"]
            total = sum(p["total_cost"] for p in costs.json()["breakdown"])
            assert abs(total - costs.json()["total_cost"]) < 1e-9
            aem = await c.get("/api/v1/analytics/aem/summary")
            assert set(aem.json()["by_tier"]) == {"premium", "mid", "basic"}
            trends = await c.get("/api/v1/analytics/aem/trends", params={"group_by": "month"})
            assert trends.status_code == 200
            aem_total = sum(p["aem_value"] for p in trends.json()["trends"])
            assert abs(aem_total - aem.json()["total_aem"]) < 1e-6
            bad_days = await c.get("/api/v1/analytics/summary", params={"days": "many"})
            assert bad_days.status_code == 400 and "days" in bad_days.text
