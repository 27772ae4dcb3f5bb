"""Door: the HTTP/JSON app on the HTTP listener (Starlette). What every JSON route shares lives
here — reading a body within its limits (size, content type, gzip), parsing JSON with the
position of an error, answering failures from the one error table — and `build_app` composes
the routes of each wire format (native JSON, Kubiya, HoneyHive) from their own modules. Like the
gRPC door, a route only translates: the records go through core.ingest like every other door's.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.rpc import code_pb2, status_pb2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from turnstream import errors, logctx
from turnstream.core import ingest
from turnstream.core.auth import INGEST, Principal
from turnstream.core.pipeline import FieldViolation, Pipeline
from turnstream.core.ports import Failure, StoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


async def no_tasks(_tenant: str, _task_id: str) -> tuple[str, str] | None:
    return None


# Where `guarded` leaves the authenticated caller in the ASGI scope of a request.
PRINCIPAL = "turnstream.principal"

# (Authorization value, scope needed) -> the caller, or a Failure (core.auth.Authenticator).
Authenticate = Callable[[str | None, str], Awaitable[Principal]]


async def no_authenticator(_authorization: str | None, _scope: str) -> Principal:
    # Fail closed: an app composed without an authenticator serves nobody.
    raise Failure(errors.unauthenticated("no authenticator is configured", "API_KEY_INVALID"))


def principal_of(request: Request) -> Principal:
    """The caller `guarded` authenticated for this request."""
    principal = request.scope.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise RuntimeError(f"{request.url.path} is not a guarded route: no caller known")
    return principal


def tenant_of(request: Request) -> str:
    return principal_of(request).tenant


@dataclass(frozen=True, slots=True)
class HttpContext:
    """What the JSON routes need from the composition root."""

    pipeline: Pipeline
    sink: ingest.Sink
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_request_records: int = 100_000
    authenticate: Authenticate = no_authenticator
    # (tenant, task_id) -> (execution_id, task_description) of a stored task, for updates
    # that name a task by its id alone (Kubiya's PATCH /tasks/{task_id}).
    find_task: Callable[[str, str], Awaitable[tuple[str, str] | None]] = no_tasks

    @staticmethod
    def tenant_of(request: Request) -> str:
        """The tenant every write and read of this request is bound to (its key's)."""
        return tenant_of(request)


class HttpFailure(Exception):
    """A failure a route answers with: the google.rpc.Status (from errors.py) and, when the
    body is worth keeping as a dead letter, the bytes and what parsed of them."""

    def __init__(
        self, status: status_pb2.Status, *, body: bytes | None = None, parsed: Any = None
    ) -> None:
        super().__init__(status.message)
        self.status = status
        self.body = body
        self.parsed = parsed


def aip193(status: status_pb2.Status) -> Response:
    """The native error answer: AIP-193 JSON, HTTP status and Retry-After from the table."""
    http, body, headers = errors.http_error(status)
    return JSONResponse(body, status_code=http, headers=headers)


def unsupported_media_type(got: str) -> status_pb2.Status:
    return errors.status(
        code_pb2.INVALID_ARGUMENT,
        f"the body must be JSON (Content-Type: application/json), got {got!r}",
        "UNSUPPORTED_MEDIA_TYPE",
    )


async def read_body(request: Request, ctx: HttpContext) -> bytes:
    """The request body, decompressed, within max_body_bytes, or an HttpFailure (413, 415)."""
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HttpFailure(unsupported_media_type(content_type))
    limit = ctx.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HttpFailure(errors.too_large("body", limit, int(declared), "bytes"))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpFailure(errors.too_large("body", limit, size, "bytes or more"))
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _inflate(body, encoding, limit)
    if encoding not in ("", "identity"):
        raise HttpFailure(
            errors.status(
                code_pb2.INVALID_ARGUMENT,
                f"Content-Encoding {encoding!r} is not supported; use gzip or none",
                "UNSUPPORTED_MEDIA_TYPE",
            )
        )
    return body


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    # Decompress at most limit + 1 bytes: a small gzip bomb must not become gigabytes.
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HttpFailure(
            errors.invalid_request("body", f"the {encoding} body does not decompress: {exc}"),
            body=body,
        ) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise HttpFailure(errors.too_large("body", limit, len(out), "bytes decompressed or more"))
    return out


def parse_json(body: bytes) -> Any:
    """JSON, or an HttpFailure naming where it broke (line, column and byte offset)."""
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        problem = f"the body is not UTF-8: invalid byte at offset {exc.start}"
    except json.JSONDecodeError as exc:
        problem = f"{exc.msg} at line {exc.lineno} column {exc.colno} (byte {exc.pos})"
    except RecursionError:
        problem = "nested too deeply"
    raise HttpFailure(errors.malformed("JSON body", problem), body=body)


async def keep(ctx: HttpContext, request: Request, door: str, failure: HttpFailure) -> None:
    """Keep the body of a failed request as a dead letter (when there is one to keep)."""
    if failure.body is None:
        return
    st = failure.status
    violations = [FieldViolation(field="", description=st.message, reason=errors.reason_of(st))]
    parsed = failure.parsed if isinstance(failure.parsed, dict) else None
    await ingest.keep_unparsed(
        ctx.sink,
        ctx.pipeline,
        ctx.tenant_of(request),
        door,
        failure.body,
        violations,
        parsed=parsed,
    )


Handler = Callable[[Request], Awaitable[Response]]


def guarded(
    ctx: HttpContext,
    door: str,
    handler: Handler,
    answer: Callable[[HttpFailure], Response],
    scope: str = INGEST,
) -> Handler:
    """Run a route's handler for an authenticated caller holding `scope` (401/403 otherwise,
    before anything is read or kept); every failure is answered through `answer` (the format's
    error shape), its body kept as a dead letter first, and unexpected errors get an incident
    id. The store being down is a 503 with Retry-After, whatever the format. This is the one
    door of every JSON route: a route that is not guarded has no tenant to read or write."""

    async def endpoint(request: Request) -> Response:
        try:
            principal = await ctx.authenticate(request.headers.get("authorization"), scope)
        except Failure as failure:
            return answer(HttpFailure(failure.status))
        request.scope[PRINCIPAL] = principal
        logctx.bind(tenant=principal.tenant)
        try:
            return await handler(request)
        except HttpFailure as failure:
            try:
                await keep(ctx, request, door, failure)
            except StoreUnavailable as exc:
                return aip193(errors.unavailable(str(exc), exc.retry_after))
            return answer(failure)
        except StoreUnavailable as exc:
            return aip193(errors.unavailable(str(exc), exc.retry_after))
        except Exception:
            return aip193(errors.unexpected(log, f"{request.method} {request.url.path}"))

    return endpoint


def native_answer(failure: HttpFailure) -> Response:
    return aip193(failure.status)


def build_app(
    ctx: HttpContext,
    route_sets: Sequence[Callable[[HttpContext], list[BaseRoute]]],
    extra: Sequence[BaseRoute] = (),
) -> Starlette:
    """One Starlette app: the health routes of the composition root plus each format's."""
    routes: list[BaseRoute] = [*extra]
    for make in route_sets:
        routes += make(ctx)
    return Starlette(routes=routes, middleware=[Middleware(RequestIds)])


class RequestIds:
    """Binds a request id for the log lines of each request: the caller's X-Request-ID (a
    proxy's, say) or a new one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
            given_id = given.decode("latin-1") if given else None
            logctx.bind(request_id=given_id or logctx.new_request_id())
        await self.app(scope, receive, send)
