"""Door: Kubiya's analytics API (POST /api/v1/analytics/batch, /turns, /tool-calls, /tasks,
PATCH /tasks/{task_id}), so a Kubiya worker switches by changing its base URL. Bodies and answers
are Kubiya's (201, `{success, ...}`); an invalid body answers 422 in FastAPI's exact shape,
stores nothing (as Kubiya does) and is kept whole as a dead letter. Unlike Kubiya, a retry never
duplicates rows, and the execution need not exist first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from turnstream import errors
from turnstream.core import ingest
from turnstream.core.pipeline import FieldViolation, Item, write_items
from turnstream.doors.http import HttpContext, HttpFailure, guarded, parse_json, read_body
from turnstream.formats import kubiya
from turnstream.v1 import ingest_pb2

PREFIX = "/api/v1/analytics"
_LISTS = ("turns", "tool_calls", "tasks")


def answer(failure: HttpFailure) -> Response:
    """Kubiya's clients read FastAPI's error shape: `{"detail": ...}` with its status codes.
    Malformed JSON is 422 "json_invalid" as FastAPI answers it."""
    st = failure.status
    http, _, headers = errors.http_error(st)
    if errors.reason_of(st) == "MALFORMED_REQUEST":
        detail = [{"loc": ["body"], "msg": st.message, "type": "json_invalid"}]
        return JSONResponse({"detail": detail}, status_code=422)
    return JSONResponse({"detail": st.message}, status_code=http, headers=headers)


def _violation(error: kubiya.ParseError) -> Any:
    return FieldViolation(
        field=kubiya.format_loc(error.loc), description=error.msg, reason=error.type.upper()
    )


def _attach(items: list[Item], parse_errors: list[kubiya.ParseError], root: str) -> list[Any]:
    """Give each record the parse errors under it (they make it invalid like any violation);
    the errors that belong to no record (the request's own fields) are returned."""
    by_path = {item.path: item for item in items}
    loose = []
    for error in parse_errors:
        loc = error.loc
        path = kubiya.format_loc(loc[:2]) if len(loc) >= 2 and loc[0] in _LISTS else root
        item = by_path.get(path) if path or root == "" else None
        if item is None:
            loose.append(_violation(error))
            continue
        item.found = [*(item.found or []), _violation(error)]
    return loose


async def _store(
    ctx: HttpContext,
    request: Request,
    door: str,
    body: bytes,
    obj: Any,
    items: list[Item],
    loose: list[Any],
) -> ingest_pb2.WriteResponse | JSONResponse:
    """All or nothing: the counts when everything was stored, else the 422 to answer."""
    parsed = obj if isinstance(obj, dict) else None
    tenant = ctx.tenant_of(request)
    if len(items) > ctx.max_request_records:
        raise HttpFailure(
            errors.too_large("records", ctx.max_request_records, len(items), "records")
        )
    if loose:
        # The request's own fields are wrong: still report every record's problems too.
        prepared = ctx.pipeline.prepare(tenant, door, items)
        violations = [*loose, *(v for r in prepared.rejections for v in r.violations)]
        await ingest.keep_unparsed(
            ctx.sink, ctx.pipeline, tenant, door, body, violations, parsed=parsed
        )
        return JSONResponse(kubiya.validation_error(violations), status_code=422)
    prepared, outcome = await ingest.write_all_or_nothing(
        ctx.sink, ctx.pipeline, tenant, door, items, body, parsed
    )
    if outcome is None:
        violations = [v for r in prepared.rejections for v in r.violations]
        return JSONResponse(kubiya.validation_error(violations), status_code=422)
    return ingest.write_response(prepared, outcome)


Parse = Callable[..., tuple[Any, list[kubiya.ParseError]]]


def _single(ctx: HttpContext, kind: str, parse: Parse, id_field: str, answer_key: str) -> Any:
    door = f"kubiya.{kind}"

    async def create(request: Request) -> Response:
        body = await read_body(request, ctx)
        obj = parse_json(body)
        message, parse_errors = parse(obj)
        item = Item(kind, message, "", 0)
        loose = _attach([item], parse_errors, "")
        result = await _store(ctx, request, door, body, obj, [item], loose)
        if isinstance(result, JSONResponse):
            return result
        record_id = getattr(message, id_field) or None
        return JSONResponse({"success": True, answer_key: record_id}, status_code=201)

    return guarded(ctx, door, create, answer)


def _stored(c: ingest_pb2.RecordCounts) -> int:
    # Kubiya counts the rows it inserted; here a retry stores nothing new, so the answer counts
    # the records that are stored now (created, updated or already there): a retried request
    # gets the same answer as the first.
    return int(c.created + c.updated + c.unchanged)


def routes(ctx: HttpContext) -> list[BaseRoute]:
    async def batch(request: Request) -> Response:
        body = await read_body(request, ctx)
        obj = parse_json(body)
        write, parse_errors = kubiya.batch_from_json(obj)
        items = write_items(write)
        loose = _attach(items, parse_errors, "execution")
        result = await _store(ctx, request, "kubiya.batch", body, obj, items, loose)
        if isinstance(result, JSONResponse):
            return result
        counts = result.counts
        return JSONResponse(
            {
                "success": True,
                "execution_id": write.execution_id or result.execution_id or None,
                "turns_created": _stored(counts.turns),
                "tool_calls_created": _stored(counts.tool_calls),
                "tasks_created": _stored(counts.tasks),
                "errors": [],
            },
            status_code=201,
        )

    async def patch_task(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        body = await read_body(request, ctx)
        obj = parse_json(body)
        task, parse_errors = kubiya.task_from_json(obj)
        found = await ctx.find_task(ctx.tenant_of(request), task_id)
        if found is None:
            return JSONResponse({"detail": f"Task {task_id} not found"}, status_code=404)
        # The PATCH body only carries what changed; the key and the required description come
        # from the stored task, and the upsert merges the rest over it.
        task.execution_id, task.task_id = found[0], task_id
        if not task.task_description:
            task.task_description = found[1]
        item = Item("task", task, "", 0)
        loose = _attach([item], parse_errors, "")
        result = await _store(ctx, request, "kubiya.task_update", body, obj, [item], loose)
        if isinstance(result, JSONResponse):
            return result
        return JSONResponse({"success": True, "task_id": task_id})

    patch: Callable[[Request], Awaitable[Response]] = guarded(
        ctx, "kubiya.task_update", patch_task, answer
    )
    return [
        Route(
            f"{PREFIX}/batch",
            guarded(ctx, "kubiya.batch", batch, answer),
            methods=["POST"],
            name="kubiya_batch",
        ),
        Route(
            f"{PREFIX}/turns",
            _single(ctx, "turn", kubiya.turn_from_json, "turn_id", "turn_id"),
            methods=["POST"],
            name="kubiya_turn",
        ),
        Route(
            f"{PREFIX}/tool-calls",
            _single(ctx, "tool_call", kubiya.tool_call_from_json, "tool_use_id", "tool_call_id"),
            methods=["POST"],
            name="kubiya_tool_call",
        ),
        Route(
            f"{PREFIX}/tasks",
            _single(ctx, "task", kubiya.task_from_json, "task_id", "task_id"),
            methods=["POST"],
            name="kubiya_task",
        ),
        Route(f"{PREFIX}/tasks/{{task_id}}", patch, methods=["PATCH"], name="kubiya_task_update"),
    ]


def openapi(schemas: Any) -> dict[str, dict[str, Any]]:
    """Kubiya's operations, with its request fields and answers (doors/openapi.py)."""
    from turnstream.doors.openapi import AIP193, error_responses, json_body
    from turnstream.v1 import records_pb2

    detail = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}
    errors_ = {
        **error_responses(detail, ("413", "415", "422", "404")),
        **error_responses(AIP193, ("500", "503")),
    }
    batch = {
        "type": "object",
        "properties": {
            "execution_id": {"type": "string"},
            "turns": {"type": "array", "items": schemas.ref(records_pb2.Turn.DESCRIPTOR)},
            "tool_calls": {"type": "array", "items": schemas.ref(records_pb2.ToolCall.DESCRIPTOR)},
            "tasks": {"type": "array", "items": schemas.ref(records_pb2.Task.DESCRIPTOR)},
        },
    }
    created = {
        "type": "object",
        "required": ["success", "turns_created", "tool_calls_created", "tasks_created", "errors"],
        "properties": {
            "success": {"type": "boolean"},
            "execution_id": {"type": ["string", "null"]},
            "turns_created": {"type": "integer"},
            "tool_calls_created": {"type": "integer"},
            "tasks_created": {"type": "integer"},
            "errors": {"type": "array"},
        },
    }

    def op(name: str, body: Any, answer_key: str, status: str = "201") -> dict[str, Any]:
        answer_schema = {
            "type": "object",
            "required": ["success"],
            "properties": {"success": {"type": "boolean"}, answer_key: {}},
        }
        return {
            "operationId": name,
            "tags": ["kubiya"],
            "requestBody": {"required": True, **json_body(body)},
            "responses": {status: json_body(answer_schema), **errors_},
        }

    patch = op("kubiya_update_task", schemas.ref(records_pb2.Task.DESCRIPTOR), "task_id", "200")
    patch["parameters"] = [
        {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    return {
        f"{PREFIX}/batch": {
            "post": {
                "operationId": "kubiya_batch",
                "tags": ["kubiya"],
                "summary": "Turns, tool calls and tasks of one execution (Kubiya's batch)",
                "requestBody": {"required": True, **json_body(batch)},
                "responses": {"201": json_body(created), **errors_},
            }
        },
        f"{PREFIX}/turns": {
            "post": op("kubiya_turn", schemas.ref(records_pb2.Turn.DESCRIPTOR), "turn_id")
        },
        f"{PREFIX}/tool-calls": {
            "post": op(
                "kubiya_tool_call", schemas.ref(records_pb2.ToolCall.DESCRIPTOR), "tool_call_id"
            )
        },
        f"{PREFIX}/tasks": {
            "post": op("kubiya_task", schemas.ref(records_pb2.Task.DESCRIPTOR), "task_id")
        },
        f"{PREFIX}/tasks/{{task_id}}": {"patch": patch},
    }
