"""Door: bytes that do not parse as the request a method takes (garbage, truncated, a wrong wire
type, a Struct nested past the parser's limit) are the caller's error. grpc answers a failed
deserializer with a bare UNKNOWN/INTERNAL; here every method's deserializer is wrapped so that it
returns a `Malformed` marker instead, and the servicer answers INVALID_ARGUMENT naming the problem.

The wrapping happens once, when the handlers are registered: no per-call interceptor cost.
Unary methods never see the marker (the guard answers for them); a streaming method reads it from
`context.read()` and decides itself (Append ends the call with INVALID_ARGUMENT).

Unary requests are also *admitted* here, before they are parsed: their bytes wait in the
process-wide `Admission` budget, and only admitted requests are parsed and prepared, so ten
16 MiB Writes at once hold their wire bytes, not ten parsed messages and their rows.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from turnstream import logctx
from turnstream.doors.admission import Admission


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request message that did not parse: its bytes and the parser's sentence."""

    data: bytes
    problem: str
    message_name: str


_PREFIX = re.compile(r"^Error parsing message( with type '[^']*')?:?\s*")

# (method's full name, the marker, context) -> awaitable that ends the call (it must abort)
OnMalformed = Callable[[str, Malformed, Any], Awaitable[None]]
# Runs before a unary request is admitted or parsed (the API key check); aborts to refuse.
Gate = Callable[[Any], Awaitable[object]]


def parse_problem(exc: BaseException) -> str:
    """The parser's own sentence, without Python class names."""
    text = _PREFIX.sub("", str(exc).strip())  # the caller's message names the type already
    return text.rstrip(".") or "the bytes are not a valid protobuf encoding"


def _safe(deserializer: Callable[[bytes], Any], name: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            message = deserializer(data)
        except Exception as exc:  # DecodeError, RecursionError from nesting, anything else
            return Malformed(data, parse_problem(exc), name)
        problem = _mistyped(message)
        return message if problem is None else Malformed(data, problem, name)

    return deserialize


def _mistyped(message: Message, depth: int = 2) -> str | None:
    """A field the message declares but that arrived with another wire type (turns sent as a
    varint). protobuf keeps such bytes as unknown fields and the record would vanish without a
    word; a declared number among the unknown fields is the caller's encoding error. Checked on
    the request and the records in it (two levels: the cost stays a C call per record)."""
    declared = message.DESCRIPTOR.fields_by_number
    unknowns = UnknownFieldSet(message)
    for i in range(len(unknowns)):
        unknown = unknowns[i]
        field = declared.get(unknown.field_number)
        if field is not None:
            return (
                f"field {field.name} (number {field.number}) of {message.DESCRIPTOR.full_name} "
                f"arrived with wire type {unknown.wire_type}, which is not its type"
            )
    if depth <= 1:
        return None
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        for child in value if field.is_repeated else (value,):
            problem = _mistyped(child, depth - 1)
            if problem is not None:
                return problem
    return None


def _message_name(deserializer: Any) -> str:
    # Generated stubs pass `Message.FromString`; its class names the message.
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request message"))


def _guard_unary(
    method: str,
    behavior: Any,
    parse: Callable[[bytes], Any],
    on_malformed: OnMalformed,
    admission: Admission,
    gate: Gate | None,
) -> Any:
    async def guarded(data: bytes, context: Any) -> Any:
        logctx.bind(request_id=request_id(context))
        if gate is not None:
            await gate(context)  # an unknown caller's bytes never take admission budget
        async with admission.admit(len(data)):
            request = parse(data)
            del data  # the parsed message is all that is needed from here on
            if isinstance(request, Malformed):
                await on_malformed(method, request, context)
                raise AssertionError("on_malformed must abort the call")
            return await behavior(request, context)

    return guarded


def request_id(context: Any) -> str:
    """The caller's x-request-id (a proxy's, say), or a new one: for log lines."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            return value
    return logctx.new_request_id()


def _bytes(data: bytes) -> bytes:
    return data


def guard(
    method: str,
    handler: Any,
    on_malformed: OnMalformed,
    admission: Admission,
    gate: Gate | None = None,
) -> Any:
    """The same RpcMethodHandler with a deserializer that cannot raise; unary requests are
    parsed only once admitted (and get a request id for their log lines). `gate`, when given,
    runs first on every unary call (the caller's key) and aborts the call to refuse it."""
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler
    if handler.stream_stream is not None and inspect.iscoroutinefunction(handler.stream_stream):
        handler = handler._replace(stream_stream=_with_request_id(handler.stream_stream))
    safe = _safe(deserializer, _message_name(deserializer))
    if handler.unary_unary is not None:
        behavior = _guard_unary(method, handler.unary_unary, safe, on_malformed, admission, gate)
        return handler._replace(request_deserializer=_bytes, unary_unary=behavior)
    if handler.unary_stream is not None:
        behavior = _guard_unary(method, handler.unary_stream, safe, on_malformed, admission, gate)
        return handler._replace(request_deserializer=_bytes, unary_stream=behavior)
    return handler._replace(request_deserializer=safe)


def _with_request_id(behavior: Any) -> Any:
    async def identified(requests: Any, context: Any) -> Any:
        logctx.bind(request_id=request_id(context))
        return await behavior(requests, context)

    return identified


class _Capture:
    """Stands in for a server while a generated add_*_to_server registers its handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass  # the same handlers arrive in add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service = service
        self.handlers = handlers


def add_guarded(
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    server: grpc.aio.Server,
    on_malformed: OnMalformed,
    admission: Admission,
    gate: Gate | None = None,
) -> None:
    """`add_FooServicer_to_server(servicer, server)`, with every method guarded."""
    capture = _Capture()
    add_to_server(servicer, capture)
    if not capture.service:
        raise RuntimeError(f"{add_to_server.__name__} registered no service")
    handlers = {
        method: guard(f"/{capture.service}/{method}", handler, on_malformed, admission, gate)
        for method, handler in capture.handlers.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(capture.service, handlers),)
    )
    server.add_registered_method_handlers(capture.service, handlers)
