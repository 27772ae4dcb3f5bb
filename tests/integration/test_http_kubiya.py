"""Kubiya's analytics API on the HTTP listener, against a real server and database (both
dialects): Kubiya's bodies and status codes, FastAPI's 422, nothing stored twice, nothing lost."""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dbutil import rows, snapshot
from tests.serving import ingest_stub, running_server
from turnstream.formats import kubiya
from turnstream.server import Server

BATCH = json.loads((Path(__file__).parents[2] / "examples" / "kubiya_batch.json").read_text())
API = "/api/v1/analytics"


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url, http_max_body_bytes=64 * 1024) as s:
        yield s


def client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}")


def without_volatile(table: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    # created_at / updated_at are when each copy was written; everything else must be equal.
    return [tuple(v for v in row if not hasattr(v, "tzinfo") or v is None) for row in table]


async def test_the_seed_batch_is_stored_and_answered_as_kubiya_does(
    server: Server, database_url: str
) -> None:
    async with client(server) as c:
        first = await c.post(f"{API}/batch", json=BATCH, headers={"Authorization": "UserKey k"})
        before = snapshot(database_url)
        again = await c.post(f"{API}/batch", json=BATCH, headers={"Authorization": "Bearer k"})
    assert first.status_code == 201
    assert first.json() == {
        "success": True,
        "execution_id": "exec-demo-0001",
        "turns_created": 3,
        "tool_calls_created": 2,
        "tasks_created": 2,
        "errors": [],
    }
    assert (again.status_code, again.json()) == (201, first.json())
    assert snapshot(database_url) == before  # a retry changes nothing
    assert len(rows(database_url, "turns")) == 3


async def test_the_kubiya_door_and_grpc_write_store_the_same_rows(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Row equality does not depend on the dialect; both copies on SQLite compare exactly.
    database_url, via_grpc = sqlite_url, f"sqlite:///{tmp_path}/grpc.db"
    async with running_server(database_url) as s, client(s) as c:
        assert (await c.post(f"{API}/batch", json=BATCH)).status_code == 201
    request, problems = kubiya.batch_from_json(copy.deepcopy(BATCH))
    assert problems == []
    async with running_server(via_grpc) as s, ingest_stub(s) as stub:
        await stub.Write(request)
    http_rows, grpc_rows = snapshot(database_url), snapshot(via_grpc)
    for table in ("executions", "turns", "tool_calls", "tasks"):
        assert without_volatile(http_rows[table]) == without_volatile(grpc_rows[table]), table


async def test_an_invalid_batch_is_422_in_fastapi_shape_stores_nothing_and_is_kept(
    server: Server, database_url: str
) -> None:
    bad = copy.deepcopy(BATCH)
    del bad["turns"][0]["model"]
    bad["turns"][1]["input_tokens"] = "many"
    bad["tool_calls"][0]["duration_ms"] = -5
    async with client(server) as c:
        answer = await c.post(f"{API}/batch", json=bad)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert {(tuple(d["loc"]), d["type"]) for d in detail} == {
        (("body", "turns", 0, "model"), "missing"),
        (("body", "turns", 1, "input_tokens"), "int_type"),
        (("body", "tool_calls", 0, "duration_ms"), "greater_than_equal"),
    }
    assert all(isinstance(d["msg"], str) and d["msg"] for d in detail)
    for table in ("turns", "tool_calls", "tasks", "executions"):
        assert rows(database_url, table) == []
    [kept] = rows(database_url, "rejected_records")
    assert kept["door"] == "kubiya.batch" and kept["payload"] == bad
    assert len(kept["violations"]) == 3


async def test_malformed_json_is_422_json_invalid_and_the_bytes_are_kept(
    server: Server, database_url: str
) -> None:
    async with client(server) as c:
        answer = await c.post(
            f"{API}/batch", content=b'{"turns": [', headers={"content-type": "application/json"}
        )
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["type"] == "json_invalid" and "line 1 column 12" in problem["msg"]
    [kept] = rows(database_url, "rejected_records")
    assert kept["payload"]["_raw_base64"] == "eyJ0dXJucyI6IFs="


async def test_single_record_routes_answer_201_with_their_id(
    server: Server, database_url: str
) -> None:
    async with client(server) as c:
        turn = await c.post(f"{API}/turns", json=BATCH["turns"][0])
        call = await c.post(f"{API}/tool-calls", json=BATCH["tool_calls"][0])
        task = await c.post(f"{API}/tasks", json={**BATCH["tasks"][1], "status": "in_progress"})
        missing = await c.post(f"{API}/turns", json={"execution_id": "e", "turn_number": 1})
    assert (turn.status_code, turn.json()) == (
        201,
        {"success": True, "turn_id": BATCH["turns"][0]["turn_id"]},
    )
    assert call.json() == {"success": True, "tool_call_id": BATCH["tool_calls"][0]["tool_use_id"]}
    assert task.json() == {"success": True, "task_id": BATCH["tasks"][1]["task_id"]}
    assert missing.status_code == 422
    assert {tuple(d["loc"]) for d in missing.json()["detail"]} == {
        ("body", "model"),
        ("body", "started_at"),
    }
    [stored] = rows(database_url, "tasks")
    assert stored["status"] == "running"


async def test_patch_task_merges_by_task_id_alone(server: Server, database_url: str) -> None:
    task = {**BATCH["tasks"][1], "status": "in_progress"}
    async with client(server) as c:
        await c.post(f"{API}/tasks", json=task)
        done = await c.patch(
            f"{API}/tasks/{task['task_id']}",
            json={"status": "completed", "result": "fixed", "completed_at": "2026-11-01T10:00:00Z"},
        )
        unknown = await c.patch(f"{API}/tasks/nope", json={"status": "completed"})
    assert (done.status_code, done.json()) == (200, {"success": True, "task_id": task["task_id"]})
    assert unknown.status_code == 404
    [stored] = rows(database_url, "tasks")
    assert (stored["status"], stored["result"]) == ("completed", "fixed")
    assert stored["task_description"] == task["task_description"]


async def test_body_limits_content_type_and_gzip(server: Server, database_url: str) -> None:
    async with client(server) as c:
        zipped = await c.post(
            f"{API}/batch",
            content=gzip.compress(json.dumps(BATCH).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        text = await c.post(f"{API}/batch", content=b"{}", headers={"content-type": "text/plain"})
        big = await c.post(f"{API}/batch", json={"turns": [], "pad": "x" * 70_000})
        bomb = await c.post(
            f"{API}/batch",
            content=gzip.compress(b" " * 10_000_000),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert zipped.status_code == 201
    assert text.status_code == 415
    assert big.status_code == 413 and "65,536" in big.json()["detail"]
    assert bomb.status_code == 413
    assert len(rows(database_url, "turns")) == 3
