"""Door: native JSON. Every unary IngestService (and, through `route`, AnalyticsService) RPC is
reachable over HTTP at the route its `google.api.http` annotation declares — the same rules
Envoy's gRPC-JSON transcoder serves from the descriptor set — with bodies in the proto3 JSON
mapping (either field spelling in, lowerCamelCase out, as the transcoder does) and errors in
AIP-193 JSON. The routes call the core's IngestCalls, exactly as the gRPC door does.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from turnstream import errors
from turnstream.core.auth import INGEST
from turnstream.core.ports import Failure
from turnstream.core.service import IngestCalls
from turnstream.doors.http import (
    HttpContext,
    HttpFailure,
    guarded,
    native_answer,
    parse_json,
    read_body,
)
from turnstream.v1 import ingest_pb2

SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"]
_VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Rule:
    """One google.api.http rule: verb, path template, body field ("*", a field, or "")."""

    method: MethodDescriptor
    verb: str
    path: str
    body: str


def rules(service: ServiceDescriptor = SERVICE) -> list[Rule]:
    """The HTTP rules the contract declares, one per annotated method."""
    out = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb not in _VERBS:
            raise ValueError(f"{method.full_name}: unsupported HTTP rule {verb!r}")
        out.append(Rule(method, verb.upper(), getattr(rule, verb), rule.body))
    return out


# What each RPC does, given its parsed request and the caller's tenant.
Call = Callable[[IngestCalls, Any, str], Awaitable[Message]]


async def _create(calls: IngestCalls, kind: str, record: Any, tenant: str, name: str) -> Any:
    return await calls.create(kind, record, tenant, f"http.{name}")


async def _create_turn(calls: IngestCalls, r: Any, tenant: str) -> Message:
    turn = await _create(calls, "turn", r.turn, tenant, "CreateTurn")
    return ingest_pb2.CreateTurnResponse(turn=turn)


async def _create_tool_call(calls: IngestCalls, r: Any, tenant: str) -> Message:
    call = await _create(calls, "tool_call", r.tool_call, tenant, "CreateToolCall")
    return ingest_pb2.CreateToolCallResponse(tool_call=call)


async def _create_task(calls: IngestCalls, r: Any, tenant: str) -> Message:
    task = await _create(calls, "task", r.task, tenant, "CreateTask")
    return ingest_pb2.CreateTaskResponse(task=task)


async def _write(calls: IngestCalls, r: Any, tenant: str) -> Message:
    return await calls.write(r, tenant, "http.Write")


async def _get_stream(calls: IngestCalls, r: Any, tenant: str) -> Message:
    return await calls.get_stream(r, tenant)


CALLS: dict[str, Call] = {
    "Write": _write,
    "CreateTurn": _create_turn,
    "CreateToolCall": _create_tool_call,
    "CreateTask": _create_task,
    "GetStream": _get_stream,
}


def starlette_path(template: str) -> str:
    """ "/v1/streams/{stream_id}" is already Starlette's syntax; anything richer (nested fields,
    wildcards) is refused so a rule can never be served differently than Envoy serves it."""
    if (
        not template.startswith("/")
        or "*" in template
        or "." in "".join(_VARIABLE.findall(template))
    ):
        raise ValueError(f"HTTP rule path {template!r} is not supported by the native door")
    return template


# One RPC given its parsed request and the caller's tenant.
Invoke = Callable[[Any, str], Awaitable[Message]]


def _query(params: Any) -> dict[str, Any]:
    """?filter.workflow_name=x&page_size=2 as {"filter": {"workflow_name": "x"}, "page_size":
    "2"}: the transcoder's mapping of non-body fields to query parameters."""
    out: dict[str, Any] = {}
    for key, value in params.multi_items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def route(
    ctx: HttpContext,
    rule: Rule,
    make: Callable[[], Message],
    call: Invoke,
    prefix: str = "native_",
    scope: str = INGEST,
) -> Route:
    """The Starlette route of one rule: the request from body, query and path, then `call`,
    for a caller holding `scope`."""
    name = rule.method.name

    async def handle(request: Request) -> Response:
        message = make()
        if not rule.body and request.query_params:
            try:
                json_format.ParseDict(_query(request.query_params), message)
            except (json_format.ParseError, ValueError, TypeError) as exc:
                problem = str(exc).split("\n", 1)[0].rstrip(".")
                raise HttpFailure(errors.malformed(message.DESCRIPTOR.full_name, problem)) from None
        if rule.body:
            body = await read_body(request, ctx)
            obj = parse_json(body)
            target = message if rule.body == "*" else getattr(message, rule.body)
            try:
                json_format.ParseDict(obj, target)
            except (json_format.ParseError, ValueError, TypeError) as exc:
                # The parser's first line names the field; the rest lists every field name.
                problem = str(exc).split("\n", 1)[0].rstrip(".")
                raise HttpFailure(
                    errors.malformed(message.DESCRIPTOR.full_name, problem),
                    body=body,
                    parsed=obj,
                ) from None
        for field, value in request.path_params.items():
            setattr(message, field, value)
        try:
            answer = await call(message, ctx.tenant_of(request))
        except Failure as failure:
            raise HttpFailure(failure.status) from None
        return JSONResponse(json_format.MessageToDict(answer))

    return Route(
        starlette_path(rule.path),
        guarded(ctx, f"http.{name}", handle, native_answer, scope),
        methods=[rule.verb],
        name=f"{prefix}{name}",
    )


def routes_for(calls: IngestCalls) -> Callable[[HttpContext], list[BaseRoute]]:
    """The route set of the native door (for doors.http.build_app)."""

    def routes(ctx: HttpContext) -> list[BaseRoute]:
        out: list[BaseRoute] = []
        for rule in rules():
            make = getattr(ingest_pb2, rule.method.input_type.name)
            call = CALLS[rule.method.name]
            out.append(route(ctx, rule, make, functools.partial(call, calls)))
        return out

    return routes


def openapi(
    schemas: Any,
    service: ServiceDescriptor = SERVICE,
    statuses: tuple[str, ...] = ("400", "413", "415", "500", "503"),
) -> dict[str, dict[str, Any]]:
    """The native routes' OpenAPI operations (doors/openapi.py assembles them)."""
    from turnstream.doors.openapi import AIP193, error_responses, json_body

    paths: dict[str, dict[str, Any]] = {}
    for rule in rules(service):
        method = rule.method
        op: dict[str, Any] = {
            "operationId": method.name,
            "summary": f"{method.containing_service.name}.{method.name} as JSON",
            "tags": ["native"],
            "responses": {
                "200": json_body(schemas.ref(method.output_type)),
                **error_responses(AIP193, statuses),
            },
        }
        if rule.body:
            target = method.input_type
            if rule.body != "*":
                field_type = target.fields_by_name[rule.body].message_type
                assert field_type is not None, "a body field is a message"
                target = field_type
            op["requestBody"] = {"required": True, **json_body(schemas.ref(target))}
        params = _VARIABLE.findall(rule.path)
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        paths.setdefault(rule.path, {})[rule.verb.lower()] = op
    return paths
