"""Door: HoneyHive's ingestion API on the HTTP app, so a worker using HoneyHive's SDK or API
switches by changing only its base URL. Its routes, bodies and answers are HoneyHive's
(honeyhive 1.7.0's `_generated` client and HoneyHive's OpenAPI): every success is 200, as its
client treats any other status as a failure. Each route only translates (formats.honeyhive) and
hands the records to core.ingest like every other door: answered after commit, keyed by event
ids so a retry is never stored twice, invalid records answered and dead-lettered.

| route                      | body                                           | answer (200)      |
|----------------------------|------------------------------------------------|-------------------|
| POST /session/start        | {session: {...}}                               | the session event |
|                            |                                                | + org_id, ...     |
| POST /events               | {event: {...}}                                 | {event_id,        |
| POST /events/model         | {model_event: {...}}                           |  success}         |
| PUT /events                | {event_id, metadata, feedback, metrics, ...}   | {success}         |
| POST /events/batch         | {events: [...], single_session,                | {event_ids,       |
| POST /events/model/batch   |  session_properties} / {model_events: [...]}   |  success,         |
|                            |                                                |  session_id}      |

Failures: a request HoneyHive would refuse answers 400 (413, 415 for the body itself) with
`{success: false, message, errorCode, errors}` (its client reads `message` and `errorCode`); a
batch with invalid events stores the valid ones and answers `{event_ids, errors, success:
false}` — HoneyHive documents that body with a 500; here it is a 400: the fault is the caller's,
and a mesh retries 5xx (the same partial batch again, for nothing). Its client treats both as a
failure. The store down is 503 + Retry-After.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from turnstream import errors
from turnstream.core import ingest
from turnstream.core.pipeline import Item
from turnstream.doors.http import HttpContext, HttpFailure, guarded, parse_json, read_body
from turnstream.formats import honeyhive

DOOR = "honeyhive"


class EventLookup(Protocol):
    """The read side PUT /events needs: HoneyHive names the event to update by its id only."""

    async def find_event(self, tenant_id: str, event_id: str) -> Message | None:
        """The stored record (Execution, Turn, ToolCall or Task) whose HoneyHive event id is
        `event_id`, or None."""
        ...


def routes(ctx: HttpContext, lookup: EventLookup | None = None) -> list[BaseRoute]:
    """HoneyHive's routes. Without `lookup`, PUT /events answers that updates are unavailable."""
    door = _Door(ctx, lookup)

    def route(path: str, method: str, handler: Callable[[Request], Awaitable[Response]]) -> Route:
        return Route(path, guarded(ctx, DOOR, handler, answer), methods=[method])

    return [
        route("/session/start", "POST", door.start_session),
        route("/events", "POST", door.create_event),
        route("/events", "PUT", door.update_event),
        route("/events/model", "POST", door.create_model_event),
        route("/events/batch", "POST", door.create_batch),
        route("/events/model/batch", "POST", door.create_model_batch),
    ]


def answer(failure: HttpFailure) -> Response:
    """A failure in HoneyHive's shape; status and Retry-After from the one error table."""
    st = failure.status
    http, _, headers = errors.http_error(st)
    bad, found = error_details_pb2.BadRequest(), []
    for detail in st.details:
        if detail.Unpack(bad):
            found = [f"{v.field}: {v.description}".lstrip(": ") for v in bad.field_violations]
    return _error(http, st.message, errors.reason_of(st), found, headers)


def _error(
    http: int, message: str, code: str, found: list[str], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"success": False, "message": message, "errorCode": code, "errors": found}
    return JSONResponse(body, status_code=http, headers=headers)


@dataclass(slots=True)
class _Event:
    """One event of a request: where it stood and what it became."""

    index: int
    path: str
    event: Any
    kind: str | None = None
    event_id: str = ""
    violations: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Outcome:
    stored: list[_Event]
    errors: list[str]
    accepted: dict[int, Message]


class _Door:
    def __init__(self, ctx: HttpContext, lookup: EventLookup | None) -> None:
        self.ctx = ctx
        self.lookup = lookup

    # -- routes -----------------------------------------------------------------------------

    async def start_session(self, request: Request) -> Response:
        body, obj = await self._read(request)
        session = _member(obj, "session", body)
        # HoneyHive draws a session id when none is sent, and so do we; a client that wants a
        # retried start to be the same session sends its own id (its tracer does).
        sid = session.get("session_id")
        # HoneyHive's defaults: the session event is named after the session.
        name = session.get("event_name") or session.get("session_name") or "unknown"
        session = {**session, "event_type": "session", "event_name": name}
        if sid is None and session.get("event_id") is None:
            session["session_id"] = str(uuid.uuid4())
        event = _Event(0, "session", honeyhive.fill_ids(session))
        outcome = await self._write(request, [event])
        if outcome.errors:
            return _error(400, _rejected(outcome.errors), "INVALID_RECORD", outcome.errors)
        started = honeyhive.record_to_event(outcome.accepted[0])
        tenant = self.ctx.tenant_of(request)
        project = session.get("project_id") or session.get("project") or tenant
        ids = {"org_id": tenant, "workspace_id": tenant, "project_id": str(project)}
        return JSONResponse({**started, **ids})

    async def create_event(self, request: Request) -> Response:
        return await self._create_one(request, "event", None)

    async def create_model_event(self, request: Request) -> Response:
        return await self._create_one(request, "model_event", "model")

    async def _create_one(self, request: Request, key: str, default_type: str | None) -> Response:
        body, obj = await self._read(request)
        event = _Event(0, key, honeyhive.fill_ids(_member(obj, key, body)))
        outcome = await self._write(request, [event], default_type)
        if outcome.errors:
            return _error(400, _rejected(outcome.errors), "INVALID_RECORD", outcome.errors)
        return JSONResponse({"event_id": event.event_id, "success": True})

    async def create_batch(self, request: Request) -> Response:
        return await self._create_many(request, "events", None)

    async def create_model_batch(self, request: Request) -> Response:
        return await self._create_many(request, "model_events", "model")

    async def _create_many(self, request: Request, key: str, default_type: str | None) -> Response:
        body, obj = await self._read(request)
        raw = obj.get(key)
        if not isinstance(raw, list):
            problem = f"{key} is required: a list of events"
            raise HttpFailure(errors.invalid_request(key, problem), body=body, parsed=obj)
        if len(raw) > self.ctx.max_request_records:
            raise HttpFailure(
                errors.too_large(key, self.ctx.max_request_records, len(raw), "events")
            )
        props = {**_object(obj, "session", body), **_object(obj, "session_properties", body)}
        single = obj.get("single_session") is True or obj.get("is_single_session") is True
        # One session for the whole batch when asked: the one named by session_properties or
        # by the events, else one derived from the body (the same on a retry). Otherwise an
        # event without a session_id gets its own, as HoneyHive's server does.
        sid = props.get("session_id")
        if not isinstance(sid, str) or not sid:
            sid = None
        if sid is None and single:
            named = {e["session_id"] for e in raw if _has_str(e, "session_id")}
            sid = named.pop() if len(named) == 1 else honeyhive.derived_id("batch-session", obj)
        events = [
            _Event(i, f"{key}[{i}]", honeyhive.fill_ids(e, sid) if isinstance(e, dict) else e)
            for i, e in enumerate(raw)
        ]
        # session_properties describe the batch's session(s): each becomes an execution.
        sessions = sorted(
            {e.event["session_id"] for e in events if _has_str(e.event, "session_id")}
        )
        if props:
            for n, session_id in enumerate(sessions):
                session = {**props, "event_type": "session", "session_id": session_id}
                events.append(_Event(len(raw) + n, "session_properties", session))
        outcome = await self._write(request, events, default_type)
        reply: dict[str, Any] = {
            "event_ids": [e.event_id for e in outcome.stored if e.index < len(raw)],
            "success": not outcome.errors,
        }
        if len(sessions) == 1:
            reply["session_id"] = sessions[0]
        if outcome.errors:
            reply["errors"] = outcome.errors
            return JSONResponse(reply, status_code=400)  # partly stored: see the module doc
        return JSONResponse(reply)

    async def update_event(self, request: Request) -> Response:
        body, obj = await self._read(request)
        event_id = obj.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            problem = "event_id is required: the id of the event to update"
            raise HttpFailure(errors.invalid_request("event_id", problem), body=body, parsed=obj)
        if self.lookup is None:
            st = errors.status(
                code_pb2.UNIMPLEMENTED,
                "PUT /events is not available on this server (no event lookup configured)",
                "NOT_IMPLEMENTED",
            )
            raise HttpFailure(st, body=body, parsed=obj)
        stored = await self.lookup.find_event(self.ctx.tenant_of(request), event_id)
        if stored is None:
            # Kept as a dead letter: an update that overtook its event can be replayed.
            problem = f"no event {event_id!r} is stored; the update was kept as a dead letter"
            st = errors.status(code_pb2.NOT_FOUND, problem, "NOT_FOUND")
            raise HttpFailure(st, body=body, parsed=obj)
        # The merge happens here, on the whole event: the upsert replaces a Struct whole, and
        # HoneyHive merges metadata, feedback, metrics, config and user_properties key by key.
        # Two concurrent PUTs of one event can lose one's keys (last write wins).
        event = honeyhive.apply_update(honeyhive.record_to_event(stored), obj)
        outcome = await self._write(request, [_Event(0, "event", event)])
        if outcome.errors:
            return _error(400, _rejected(outcome.errors), "INVALID_RECORD", outcome.errors)
        return JSONResponse({"success": True})

    # -- shared -----------------------------------------------------------------------------

    async def _read(self, request: Request) -> tuple[bytes, dict[str, Any]]:
        body = await read_body(request, self.ctx)
        obj = parse_json(body)
        if not isinstance(obj, dict):
            problem = "the body should be a JSON object"
            raise HttpFailure(errors.invalid_request("", problem), body=body)
        return body, obj

    async def _write(
        self, request: Request, events: list[_Event], default_type: str | None = None
    ) -> _Outcome:
        """Store the events through the core, after committing; events no record can be made
        of (no event_type) are kept as dead letters. Returns what was stored and the errors
        in HoneyHive's terms."""
        tenant = self.ctx.tenant_of(request)
        items = []
        for e in events:
            e.kind, record, e.violations = honeyhive.to_record(e.event, e.path, default_type)
            if isinstance(e.event, dict):
                e.event_id = str(e.event.get("event_id", ""))
            if e.kind is None or record is None:
                await ingest.keep_unparsed(
                    self.ctx.sink,
                    self.ctx.pipeline,
                    tenant,
                    DOOR,
                    _json_bytes(e.event),
                    e.violations,
                    kind="event",
                    parsed=e.event if isinstance(e.event, dict) else None,
                )
                continue
            items.append(Item(e.kind, record, e.path, e.index, found=e.violations or None))
        prepared, _ = await ingest.write(
            self.ctx.sink, self.ctx.pipeline, tenant, DOOR, iter(items), len(items)
        )
        rejected = {r.index: r.violations for r in prepared.rejections}
        accepted = {item.index: item.message for item in prepared.accepted}
        found: list[str] = []
        stored = []
        for e in events:
            violations = rejected.get(e.index, []) if e.kind else e.violations
            for v in violations:
                name, sentence = honeyhive.in_honeyhive_terms(v.field, v.description, e.path)
                found.append(f"{name}: {sentence}")
            if e.index in accepted:
                stored.append(e)
        return _Outcome(stored, found, accepted)


def _member(obj: dict[str, Any], key: str, body: bytes) -> dict[str, Any]:
    """The object under `key`; HoneyHive's OpenAPI also lets it be the object's JSON text."""
    value = _object(obj, key, body)
    if not value and key not in obj:
        problem = f"{key} is required: an object"
        raise HttpFailure(errors.invalid_request(key, problem), body=body, parsed=obj)
    return value


def _object(obj: dict[str, Any], key: str, body: bytes) -> dict[str, Any]:
    value = obj.get(key)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # not JSON text: reported as not an object
            value = json.loads(value)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problem = f"{key} should be an object (or its JSON text)"
        raise HttpFailure(errors.invalid_request(key, problem), body=body, parsed=obj)
    return value


def _has_str(event: Any, key: str) -> bool:
    return isinstance(event, dict) and isinstance(event.get(key), str)


def _rejected(found: list[str]) -> str:
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"the event is invalid: {found[0]}{more}; it was kept as a dead letter"


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def openapi(_schemas: Any = None) -> dict[str, dict[str, Any]]:
    """HoneyHive's operations (doors/openapi.py). Events are open objects, as in its API: the
    fields turnstream reads are listed, every other field is kept as it is."""
    from turnstream.doors.openapi import AIP193, error_responses, json_body

    epoch_ms = {"type": "number", "description": "Unix epoch milliseconds"}
    event = {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "session_id": {"type": "string"},
            "parent_id": {"type": "string"},
            "event_type": {"type": "string", "enum": ["session", "chain", "model", "tool"]},
            "event_name": {"type": "string"},
            "model": {"type": "string"},
            "provider": {"type": "string"},
            "start_time": epoch_ms,
            "end_time": epoch_ms,
            "duration": {"type": "number"},
            "inputs": {"type": "object"},
            "outputs": {"type": "object"},
            "config": {"type": "object"},
            "metadata": {"type": "object"},
            "metrics": {"type": "object"},
            "feedback": {"type": "object"},
            "user_properties": {"type": "object"},
            "usage": {"type": "object"},
            "error": {"type": "string"},
        },
    }
    failure = {
        "type": "object",
        "required": ["success"],
        "properties": {
            "success": {"type": "boolean"},
            "message": {"type": "string"},
            "errorCode": {"type": "string"},
            "errors": {"type": "array"},
            "event_ids": {"type": "array", "items": {"type": "string"}},
            "session_id": {"type": "string"},
        },
    }
    errors_ = {
        **error_responses(failure, ("400", "404", "413", "415")),
        **error_responses(AIP193, ("500", "503")),
    }
    ids = {
        "type": "object",
        "required": ["success"],
        "properties": {
            "success": {"type": "boolean"},
            "event_ids": {"type": "array", "items": {"type": "string"}},
            "event_id": {"type": "string"},
            "session_id": {"type": "string"},
            "org_id": {"type": "string"},
            "workspace_id": {"type": "string"},
            "project_id": {"type": "string"},
        },
    }

    def op(
        name: str, body: dict[str, Any], summary: str, answer: dict[str, Any] = ids
    ) -> dict[str, Any]:
        return {
            "operationId": f"honeyhive_{name}",
            "tags": ["honeyhive"],
            "summary": summary,
            "requestBody": {"required": True, **json_body(body)},
            "responses": {"200": json_body(answer), **errors_},
        }

    session_ids = ["session_id", "event_id", "org_id", "workspace_id", "project_id"]
    started = {
        "type": "object",
        "required": session_ids,
        "properties": {k: {"type": "string"} for k in session_ids},
    }

    def wrapped(key: str, inner: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "required": [key], "properties": {key: inner}}

    batch = {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": event},
            "single_session": {"type": "boolean"},
            "session_properties": {"type": "object"},
        },
    }
    model_batch = {
        "type": "object",
        "properties": {
            "model_events": {"type": "array", "items": event},
            "single_session": {"type": "boolean"},
            "session_properties": {"type": "object"},
        },
    }
    return {
        "/session/start": {
            "post": op("start_session", wrapped("session", event), "Start a session", started)
        },
        "/events": {
            "post": op("create_event", wrapped("event", event), "Create one event"),
            "put": op("update_event", event, "Merge into a stored event, by event_id"),
        },
        "/events/model": {
            "post": op("create_model_event", wrapped("model_event", event), "One model event")
        },
        "/events/batch": {"post": op("create_batch", batch, "A batch of events")},
        "/events/model/batch": {
            "post": op("create_model_batch", model_batch, "A batch of model events")
        },
    }
