"""HoneyHive's ingestion API on the HTTP listener, against a real server and database (both
dialects): HoneyHive's bodies and answers (200), nothing stored twice, PUT merges, every field of
an event read back from storage, nothing lost — and the real `honeyhive` package pointed at it."""

from __future__ import annotations

import asyncio
import copy
import gzip
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dbutil import rows, snapshot
from tests.serving import ingest_stub, running_server
from tests.unit.test_formats_honeyhive import FULL_MODEL_EVENT, SESSION
from turnstream.formats import honeyhive
from turnstream.server import Server
from turnstream.store import schema
from turnstream.store.queries import record_of
from turnstream.v1 import ingest_pb2

START = 1712025501605  # 2024-04-02T02:38:21.605Z, in Unix epoch milliseconds


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url) as s:
        yield s


def client(server: Server) -> httpx.AsyncClient:
    # HoneyHive's clients send their key as a Bearer token; it is accepted and ignored.
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.http_port}",
        headers={"Authorization": "Bearer hh_test_key"},
    )


def stored_event(database_url: str, table: str, kind: str, **where: Any) -> dict[str, Any]:
    """rows -> record -> event: what a HoneyHive client would read back."""
    (row,) = rows(database_url, table, **where)
    return honeyhive.record_to_event(record_of(kind, row))


def model_event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "project": "Simple RAG Project",
        "event_type": "model",
        "event_name": "Model Completion",
        "event_id": event_id,
        "session_id": SESSION,
        "model": "gpt-4o",
        "provider": "openai",
        "inputs": {"question": "What is in the context?"},
        "outputs": {"role": "assistant", "content": "Hello world"},
        "usage": {"prompt_tokens": 35, "completion_tokens": 23, "total_tokens": 58},
        "start_time": START,
        "end_time": START + 824,
        **fields,
    }


async def test_the_seed_model_batch_is_stored_and_answered_as_honeyhive_does(
    server: Server, database_url: str
) -> None:
    second = {k: v for k, v in model_event("7f22137a-6911-4ed3-bc36-110f1dde6b67").items()}
    del second["session_id"]  # single_session: it joins the batch's session
    body = {
        "model_events": [FULL_MODEL_EVENT, second],
        "single_session": True,
        "session_properties": {
            "session_name": "RAG pipeline",
            "start_time": START - 5,
            "user_properties": {"user": "google-oauth2|111840237613341303366"},
            "metadata": {"release": "2024.04"},
        },
    }
    async with client(server) as c:
        first = await c.post("/events/model/batch", json=body)
        before = snapshot(database_url)
        again = await c.post("/events/model/batch", json=copy.deepcopy(body))
    assert first.status_code == 200
    assert first.json() == {
        "event_ids": [FULL_MODEL_EVENT["event_id"], second["event_id"]],
        "success": True,
        "session_id": SESSION,
    }
    assert (again.status_code, again.json()) == (200, first.json())
    assert snapshot(database_url) == before  # a retry changes nothing
    turns = rows(database_url, "turns")
    assert {t["execution_id"] for t in turns} == {SESSION} and len(turns) == 2
    (execution,) = rows(database_url, "executions")
    assert (execution["execution_id"], execution["workflow_name"]) == (SESSION, "RAG pipeline")
    assert execution["user_properties"] == body["session_properties"]["user_properties"]


async def test_every_field_of_a_full_event_is_read_back_from_storage(
    server: Server, database_url: str
) -> None:
    async with client(server) as c:
        response = await c.post("/events", json={"event": FULL_MODEL_EVENT})
    assert response.json() == {"event_id": FULL_MODEL_EVENT["event_id"], "success": True}
    event = stored_event(database_url, "turns", "turn", turn_id=FULL_MODEL_EVENT["event_id"])
    assert event == FULL_MODEL_EVENT
    (turn,) = rows(database_url, "turns")
    # The columns a dashboard reads, filled from the event (and priced tokens kept as sent).
    assert (turn["model"], turn["model_provider"]) == ("gpt-4o-2024-08-06", "openai")
    assert (turn["input_tokens"], turn["cache_read_tokens"], turn["output_tokens"]) == (
        35,
        1000,
        23,
    )
    assert turn["total_cost"] == pytest.approx(0.00008)


async def test_sessions_and_events_of_every_type(server: Server, database_url: str) -> None:
    session = {
        "project": "Simple RAG Project",
        "session_name": "Playground Session",
        "source": "playground",
        "session_id": SESSION,
        "inputs": {"question": "What is in the context?"},
        "user_properties": {"user": "google-oauth2|111840237613341303366"},
        "metadata": {"release": "2024.04"},
        "start_time": START,
    }
    events = [
        {
            "event_type": "chain",
            "event_id": "c-1",
            "session_id": SESSION,
            "event_name": "retrieve",
            "inputs": {"q": "?"},
            "outputs": {"docs": ["a", "b"]},
            "start_time": START + 1,
            "end_time": START + 40,
        },
        {
            "event_type": "tool",
            "event_id": "t-1",
            "session_id": SESSION,
            "parent_id": "c-1",
            "event_name": "vector_search",
            "inputs": {"query": "context"},
            "outputs": {"hits": 2},
            "start_time": START + 2,
            "end_time": START + 30,
        },
        model_event("m-1"),
    ]
    async with client(server) as c:
        started = await c.post("/session/start", json={"session": session})
        answers = [await c.post("/events", json={"event": e}) for e in events]
        model = await c.post("/events/model", json={"model_event": model_event("m-2")})
        anonymous = await c.post("/session/start", json={"session": {"session_name": "anon"}})
        before = snapshot(database_url)
        await c.post("/session/start", json={"session": session})
        for e in events:
            await c.post("/events", json={"event": e})
    assert snapshot(database_url) == before  # retries change nothing
    assert started.status_code == 200
    got = started.json()
    # What HoneyHive's client requires of this answer (else its tracer invents a session).
    assert {k: got[k] for k in ("session_id", "event_id", "org_id", "workspace_id")} == {
        "session_id": SESSION,
        "event_id": SESSION,
        "org_id": "default",
        "workspace_id": "default",
    }
    assert got["project_id"] == "Simple RAG Project"
    assert (got["event_type"], got["event_name"], got["start_time"]) == (
        "session",
        "Playground Session",
        START,
    )
    assert [a.json() for a in answers] == [
        {"event_id": e["event_id"], "success": True} for e in events
    ]
    assert model.json() == {"event_id": "m-2", "success": True}
    assert uuid.UUID(anonymous.json()["session_id"]).version == 4
    assert len(rows(database_url, "executions")) == 2
    assert rows(database_url, "tasks")[0]["task_description"] == "retrieve"
    assert rows(database_url, "tool_calls")[0]["tool_name"] == "vector_search"
    assert len(rows(database_url, "turns")) == 2
    for table, kind, key, e in (
        ("tasks", "task", "task_id", events[0]),
        ("tool_calls", "tool_call", "tool_use_id", events[1]),
    ):
        # HoneyHive's server fills these too: parent_id is the session, duration the span.
        filled = {"parent_id": SESSION, "duration": e["end_time"] - e["start_time"], **e}
        assert stored_event(database_url, table, kind, **{key: e["event_id"]}) == filled


async def test_put_events_merges_and_a_retry_changes_nothing(
    server: Server, database_url: str
) -> None:
    event = model_event(
        "m-1",
        metadata={"env": "prod", "cost": 0.00008},
        feedback={"rating": 3, "note": "slow"},
        end_time=START + 500,
    )
    update = {
        "event_id": "m-1",
        "metadata": {"reviewed": True},
        "feedback": {"rating": 5},
        "metrics": {"num_words": 2},
        "outputs": {"role": "assistant", "content": "Hello again"},
        "end_time": START + 900,
    }
    async with client(server) as c:
        await c.post("/session/start", json={"session": {"session_id": SESSION}})
        await c.post("/events", json={"event": event})
        put = await c.put("/events", json=update)
        before = snapshot(database_url)
        again = await c.put("/events", json=update)
        enrich = await c.put(
            "/events",
            json={"event_id": SESSION, "metadata": {"run": 1}, "user_properties": {"u": "1"}},
        )
        missing = await c.put("/events", json={"event_id": "never-sent", "metadata": {}})
    assert (put.status_code, put.json()) == (200, {"success": True})
    assert (again.status_code, again.json()) == (200, {"success": True})
    after = snapshot(database_url)
    assert after["turns"] == before["turns"]  # the same PUT again changes nothing
    stored = stored_event(database_url, "turns", "turn", turn_id="m-1")
    assert stored["metadata"] == {"env": "prod", "cost": 0.00008, "reviewed": True}
    assert stored["feedback"] == {"rating": 5, "note": "slow"}
    assert stored["metrics"] == {"num_words": 2}
    assert stored["outputs"] == update["outputs"]
    assert (stored["end_time"], stored["duration"]) == (START + 900, 900)  # duration derived
    assert stored["inputs"] == event["inputs"] and stored["usage"] == event["usage"]
    (turn,) = rows(database_url, "turns")
    assert (turn["duration_ms"], turn["input_tokens"]) == (900, 35)
    # The tracer's enrich_session: PUT /events with the session's id.
    assert enrich.json() == {"success": True}
    session = stored_event(database_url, "executions", "execution", execution_id=SESSION)
    assert (session["metadata"], session["user_properties"]) == ({"run": 1}, {"u": "1"})
    # An update of an event that is not stored: 404, kept to be replayed.
    assert missing.status_code == 404
    assert missing.json()["errorCode"] == "NOT_FOUND"
    (dead,) = rows(database_url, "rejected_records")
    assert (dead["door"], dead["payload"]) == (
        "honeyhive",
        {"event_id": "never-sent", "metadata": {}},
    )


async def test_invalid_input_is_answered_in_honeyhive_shape_and_kept(
    server: Server, database_url: str
) -> None:
    async with client(server) as c:
        bad = await c.post("/events", json={"event": model_event("m-1", start_time="yesterday")})
        partial = await c.post(
            "/events/model/batch",
            json={"model_events": [model_event("m-2"), model_event("m-3", model=None)]},
        )
        untyped = await c.post("/events/batch", json={"events": [{"event_id": "x"}]})
        malformed = await c.post(
            "/events", content=b'{"event": ', headers={"Content-Type": "application/json"}
        )
        not_object = await c.post("/events/batch", json=[1, 2])
        wrong_type = await c.post("/events", content=b"x", headers={"Content-Type": "text/plain"})
        zipped = await c.post(
            "/events",
            content=gzip.compress(json.dumps({"event": model_event("m-4")}).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert bad.status_code == 400
    body = bad.json()
    assert (body["success"], body["errorCode"]) == (False, "INVALID_RECORD")
    assert "event.start_time: start_time should be a number" in body["errors"][0]
    assert "event.start_time: start_time is required" in body["errors"]
    # HoneyHive answers a partly created batch 500; here 400 (the caller's fault; see the door).
    assert partial.status_code == 400
    assert partial.json() == {
        "event_ids": ["m-2"],
        "success": False,
        "session_id": SESSION,
        "errors": ["model_events[1].model: model is required"],
    }
    # The invalid m-1 and m-3 are not stored; m-2 (and the gzipped m-4 below) are.
    assert sorted(t["turn_id"] for t in rows(database_url, "turns")) == ["m-2", "m-4"]
    assert untyped.status_code == 400
    assert untyped.json()["errors"][0].startswith("events[0].event_type: event_type should be")
    for response, code in ((malformed, "MALFORMED_REQUEST"), (not_object, "INVALID_REQUEST")):
        assert response.status_code == 400
        assert (response.json()["success"], response.json()["errorCode"]) == (False, code)
    assert (wrong_type.status_code, wrong_type.json()["errorCode"]) == (
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    assert zipped.json() == {"event_id": "m-4", "success": True}  # gzip bodies are accepted
    dead = rows(database_url, "rejected_records")
    assert sorted(d["kind"] for d in dead) == ["event", "request", "request", "turn", "turn"]
    assert all(d["door"] == "honeyhive" for d in dead)


async def test_the_honeyhive_door_and_grpc_write_store_the_same_rows(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Row equality does not depend on the dialect; both copies on SQLite compare exactly.
    via_grpc = f"sqlite:///{tmp_path}/grpc.db"
    async with running_server(sqlite_url) as s, client(s) as c:
        assert (await c.post("/events", json={"event": FULL_MODEL_EVENT})).status_code == 200
    _, turn, _ = honeyhive.to_record(FULL_MODEL_EVENT, "turns[0]")
    async with running_server(via_grpc) as s, ingest_stub(s) as stub:
        await stub.Write(ingest_pb2.WriteRequest(turns=[turn]))
    http_rows, grpc_rows = snapshot(sqlite_url), snapshot(via_grpc)
    for table in ("executions", "turns"):
        assert without_write_times(table, http_rows) == without_write_times(table, grpc_rows)


def without_write_times(table: str, snap: dict[str, list[tuple[Any, ...]]]) -> list[list[Any]]:
    # created_at / updated_at say when each copy was written; every other column must be equal.
    names = [c.name for c in schema.metadata.tables[table].columns]
    keep = [i for i, n in enumerate(names) if n not in ("created_at", "updated_at")]
    return [[row[i] for i in keep] for row in snap[table]]


# --- the real client --------------------------------------------------------------------------

# What a HoneyHive user writes, with only the base URL changed: the SDK's client (sessions.start,
# events.create / update / create_batch, the generated model-batch call), its error, and the
# tracer (HoneyHiveTracer.init starts a session; enrich_session is a PUT /events).
USER_SCRIPT = r"""
import json, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)
from honeyhive import HoneyHive, HoneyHiveTracer
from honeyhive.models import (
    PostEventBatchRequest, PostEventRequest, StartSessionRequest, UpdateEventRequest,
)
from honeyhive._generated.api_config import HTTPException
from honeyhive._generated.models import PostModelEventBatchRequest
from honeyhive._generated.services.Events_service import createModelEventBatchLegacy

url, start = sys.argv[1], int(sys.argv[2])
hh = HoneyHive(api_key="hh_test_key", server_url=url)
out = {}
session = hh.sessions.start(StartSessionRequest(session={
    "project": "demo", "session_name": "sdk-session", "source": "ci", "start_time": start,
    "user_properties": {"user": "u-1"},
}))
out["session"] = session.model_dump()
sid = session.session_id
created = hh.events.create(PostEventRequest(event={
    "project": "demo", "event_type": "model", "event_name": "answer", "session_id": sid,
    "config": {"model": "gpt-4o", "provider": "openai", "temperature": 0.2},
    "inputs": {"question": "hi"}, "outputs": {"content": "hello"},
    "metadata": {"prompt_tokens": 12, "completion_tokens": 3},
    "start_time": start + 10, "end_time": start + 510,
}))
out["created"] = created.model_dump()
hh.events.update(UpdateEventRequest(
    event_id=created.event_id, metadata={"reviewed": True}, feedback={"rating": 5}
))
batch = hh.events.create_batch(PostEventBatchRequest(events=[{
    "project": "demo", "event_type": "tool", "event_name": "search", "session_id": sid,
    "inputs": {"q": "x"}, "outputs": {"hits": 1}, "start_time": start + 20,
    "end_time": start + 40,
}]))
out["batch"] = batch.model_dump()
models = createModelEventBatchLegacy(hh.api_config, data=PostModelEventBatchRequest(
    model_events=[{
        "model": "claude-sonnet-4-5", "provider": "anthropic", "inputs": {"q": "y"},
        "start_time": start + 50, "end_time": start + 90,
        "usage": {"input_tokens": 5, "output_tokens": 2},
    }],
    single_session=True,
))
out["model_batch"] = models.model_dump()
try:
    hh.events.create(PostEventRequest(event={
        "project": "demo", "event_type": "model", "inputs": {}, "start_time": start
    }))
except HTTPException as exc:
    out["error"] = [exc.status_code, exc.server_message, exc.error_code]
tracer = HoneyHiveTracer.init(
    api_key="hh_test_key", server_url=url, session_name="traced", source="ci"
)
tracer.enrich_session(metadata={"run": 7}, user_properties={"user": "u-2"})
out["tracer_session"] = tracer.session_id
print(json.dumps(out))
"""


async def test_the_real_honeyhive_package_works_against_the_server(
    sqlite_url: str, tmp_path: Path
) -> None:
    if importlib.util.find_spec("honeyhive") is None:
        pytest.fail("the honeyhive package is missing: `make venv` installs the dev extras")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        # Its spans go over OTLP/HTTP JSON to /opentelemetry/v1/traces (the OTLP door's job,
        # not these routes); a failed export is only logged by the SDK.
        "HH_OTLP_ENABLED": "false",
    }
    async with running_server(sqlite_url) as s:
        url = f"http://127.0.0.1:{s.http_port}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            USER_SCRIPT,
            url,
            str(START),
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    got = json.loads(out.decode().strip().splitlines()[-1])
    sid = got["session"]["session_id"]
    assert got["session"]["org_id"] == "default" and got["session"]["project_id"] == "demo"
    assert got["created"]["success"] is True
    assert got["batch"]["success"] is True and len(got["batch"]["event_ids"]) == 1
    assert got["model_batch"]["success"] is True
    assert got["error"][0] == 400 and got["error"][2] == "INVALID_RECORD"
    assert "model is required" in got["error"][1]
    # Everything the SDK sent is stored where its ids say.
    session = stored_event(sqlite_url, "executions", "execution", execution_id=sid)
    assert (session["session_name"], session["user_properties"]) == ("sdk-session", {"user": "u-1"})
    model = stored_event(sqlite_url, "turns", "turn", turn_id=got["created"]["event_id"])
    assert (model["metadata"], model["feedback"]) == (
        {"prompt_tokens": 12, "completion_tokens": 3, "reviewed": True},
        {"rating": 5},
    )
    (turn,) = rows(sqlite_url, "turns", turn_id=got["created"]["event_id"])
    assert (turn["model"], turn["input_tokens"], turn["execution_id"]) == ("gpt-4o", 12, sid)
    (tool,) = rows(sqlite_url, "tool_calls", tool_use_id=got["batch"]["event_ids"][0])
    assert tool["execution_id"] == sid
    (claude,) = rows(sqlite_url, "turns", turn_id=got["model_batch"]["event_ids"][0])
    assert claude["execution_id"] == got["model_batch"]["session_id"]
    # The tracer's session is the server's (not a fallback it invented), enriched by its PUT.
    traced = stored_event(sqlite_url, "executions", "execution", execution_id=got["tracer_session"])
    assert (traced["session_name"], traced["metadata"]) == ("traced", {"run": 7})
    assert traced["user_properties"] == {"user": "u-2"}
