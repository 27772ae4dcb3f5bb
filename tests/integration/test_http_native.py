"""Native JSON: every google.api.http rule of the contract is served, bodies in the proto3 JSON
mapping, errors in AIP-193; the same records end as the same rows as through gRPC Write."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format

from tests.dbutil import rows, snapshot
from tests.integration.test_http_kubiya import client, without_volatile
from tests.integration.test_write import full_batch
from tests.serving import ingest_stub, running_server
from turnstream.doors import http_native


async def test_every_annotated_rule_has_a_route_and_every_route_a_rule(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        app = server.http_app
    served = {
        (method, route.path)
        for route in app.routes
        if route.name.startswith("native_")
        for method in route.methods - {"HEAD"}
    }
    declared = {(rule.verb, rule.path) for rule in http_native.rules()}
    assert served == declared
    assert {rule.method.name for rule in http_native.rules()} == set(http_native.CALLS)
    # Every unary RPC has a rule; the bidirectional Append has none.
    unary = {m.name for m in http_native.SERVICE.methods if not m.client_streaming}
    assert {rule.method.name for rule in http_native.rules()} == unary


async def test_native_json_and_grpc_write_store_the_same_rows(
    sqlite_url: str, tmp_path: Path
) -> None:
    via_grpc = f"sqlite:///{tmp_path}/grpc.db"
    body = json_format.MessageToDict(full_batch())  # lowerCamelCase, as the transcoder sends
    async with running_server(sqlite_url) as s, client(s) as c:
        answer = await c.post("/v1/records:write", json=body)
    async with running_server(via_grpc) as s, ingest_stub(s) as stub:
        expected = await stub.Write(full_batch())
    assert answer.status_code == 200
    assert answer.json() == json_format.MessageToDict(expected)
    a, b = snapshot(sqlite_url), snapshot(via_grpc)
    for table in ("executions", "turns", "tool_calls", "tasks"):
        assert without_volatile(a[table]) == without_volatile(b[table]), table


async def test_create_get_and_errors_in_aip193(database_url: str) -> None:
    turn = {
        "execution_id": "e1",  # proto field names are accepted as well as camelCase
        "turnNumber": 1,
        "model": "claude-sonnet-4-5",
        "startedAt": "2026-11-01T09:00:00Z",
        "inputTokens": "1000",
        "output_tokens": 500,
    }
    async with running_server(database_url) as s, client(s) as c:
        created = await c.post("/v1/turns", json=turn)
        invalid = await c.post("/v1/turns", json={"executionId": "e1"})
        unknown = await c.post("/v1/toolCalls", json={"bogus": 1})
        broken = await c.post(
            "/v1/tasks", content=b"{", headers={"content-type": "application/json"}
        )
        stream = await c.get("/v1/streams/s-1")
    assert created.status_code == 200
    assert created.json()["turn"]["totalTokens"] == "1500"  # int64 as a string, per proto3 JSON
    assert invalid.status_code == 400
    error = invalid.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    violations = error["details"][1]["fieldViolations"]
    assert {v["field"] for v in violations} == {"turn.turn_number", "turn.model", "turn.started_at"}
    assert unknown.status_code == 400 and "bogus" in unknown.json()["error"]["message"]
    assert broken.status_code == 400 and "line 1 column 2" in broken.json()["error"]["message"]
    assert (stream.status_code, stream.json()) == (200, {"streamId": "s-1"})
    assert len(rows(database_url, "turns")) == 1
    kept = {r["door"] for r in rows(database_url, "rejected_records")}
    assert kept == {"http.CreateTurn", "http.CreateToolCall", "http.CreateTask"}


async def test_openapi_and_its_docs_page_are_served_locally(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as s, client(s) as c:
        spec = (await c.get("/openapi.json")).json()
        page = await c.get("/docs")
        script = await c.get("/docs/docs.js")
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/records:write", "/api/v1/analytics/batch"} <= set(spec["paths"])
    assert page.status_code == 200 and '<script src="/docs/docs.js">' in page.text
    assert "http" not in page.text.split("<script")[1].split(">")[0].replace("/docs", "")
    assert script.status_code == 200 and "openapi.json" in script.text
