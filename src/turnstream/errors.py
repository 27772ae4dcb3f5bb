"""Errors as clients see them: every failure a door reports is built here once, as a
google.rpc.Status with one ErrorInfo (reason, domain) plus BadRequest or RetryInfo details.
`FAILURES` is the one table of what each failure is on each transport: the gRPC doors send the
Status with abort_with_status, the HTTP doors send `http_error(status)` (AIP-193 JSON, the
table's HTTP status, Retry-After from RetryInfo). No door maps a failure by itself."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, duration_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "turnstream.dev"

# google.rpc ships no type stubs: violations are typed Any at our boundaries.
FieldViolation = error_details_pb2.BadRequest.FieldViolation


@dataclass(frozen=True, slots=True)
class Failure:
    """One kind of failure: its gRPC code and its HTTP status."""

    grpc_code: int
    http_status: int


FAILURES: dict[str, Failure] = {
    # The caller's request: fix it, do not retry it as it is.
    "INVALID_RECORD": Failure(code_pb2.INVALID_ARGUMENT, 400),
    "INVALID_REQUEST": Failure(code_pb2.INVALID_ARGUMENT, 400),
    "MALFORMED_REQUEST": Failure(code_pb2.INVALID_ARGUMENT, 400),
    "OPEN_REQUIRED": Failure(code_pb2.INVALID_ARGUMENT, 400),
    "UNSUPPORTED_MEDIA_TYPE": Failure(code_pb2.INVALID_ARGUMENT, 415),
    "REQUEST_TOO_LARGE": Failure(code_pb2.RESOURCE_EXHAUSTED, 413),
    "NOT_FOUND": Failure(code_pb2.NOT_FOUND, 404),
    "UNAUTHENTICATED": Failure(code_pb2.UNAUTHENTICATED, 401),
    "PERMISSION_DENIED": Failure(code_pb2.PERMISSION_DENIED, 403),
    # Who is calling (core/auth.py, docs/auth.md): present a valid key, or one with the scope.
    "API_KEY_MISSING": Failure(code_pb2.UNAUTHENTICATED, 401),
    "API_KEY_MALFORMED": Failure(code_pb2.UNAUTHENTICATED, 401),
    "API_KEY_INVALID": Failure(code_pb2.UNAUTHENTICATED, 401),
    "API_KEY_REVOKED": Failure(code_pb2.UNAUTHENTICATED, 401),
    "API_KEY_EXPIRED": Failure(code_pb2.UNAUTHENTICATED, 401),
    "SCOPE_MISSING": Failure(code_pb2.PERMISSION_DENIED, 403),
    # A stream's state moved under the caller: reopen and resume.
    "STREAM_FENCED": Failure(code_pb2.ABORTED, 409),
    "STREAM_CONFLICT": Failure(code_pb2.ABORTED, 409),
    # The server cannot take it now: retry after RetryInfo / Retry-After.
    "STORE_UNAVAILABLE": Failure(code_pb2.UNAVAILABLE, 503),
    "SHUTTING_DOWN": Failure(code_pb2.UNAVAILABLE, 503),
    # A --workers process holds more streams than another: reopen on a new connection at once.
    "REBALANCE": Failure(code_pb2.UNAVAILABLE, 503),
    "INTERNAL": Failure(code_pb2.INTERNAL, 500),
}

# For a reason not in the table (a door's own INVALID_ARGUMENT sub-reasons): by gRPC code, as
# google.rpc.Code documents the HTTP mapping.
_HTTP_BY_CODE = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
    code_pb2.UNAUTHENTICATED: 401,
}


def reason_of(st: status_pb2.Status) -> str:
    info = error_details_pb2.ErrorInfo()
    for detail in st.details:
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def retry_after_of(st: status_pb2.Status) -> float | None:
    retry = error_details_pb2.RetryInfo()
    for detail in st.details:
        if detail.Unpack(retry):
            return float(retry.retry_delay.ToMilliseconds() / 1000)
    return None


def retry_after_seconds(st: status_pb2.Status) -> int | None:
    """RetryInfo's delay in the whole seconds of http_error's `Retry-After` (rounded up, at
    least 1), or None without RetryInfo. The gRPC door sends it as `retry-after` metadata:
    proxies (Envoy's rate_limited_retry_back_off) read that header, never RetryInfo."""
    delay = retry_after_of(st)
    return None if delay is None else max(1, round(delay + 0.499))


def http_status_of(st: status_pb2.Status) -> int:
    failure = FAILURES.get(reason_of(st))
    if failure is not None and failure.grpc_code == st.code:
        return failure.http_status
    return _HTTP_BY_CODE.get(st.code, 500)


def http_error(st: status_pb2.Status) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(HTTP status, AIP-193 body, headers) of a failure: `{"error": {code, message, status,
    details}}` with the details in the proto3 JSON mapping (`@type` URLs), and Retry-After in
    whole seconds when the Status carries RetryInfo."""
    http = http_status_of(st)
    body = {
        "error": {
            "code": http,
            "message": st.message,
            "status": code_pb2.Code.Name(st.code),
            "details": [json_format.MessageToDict(d) for d in st.details],
        }
    }
    headers = {}
    if st.code == code_pb2.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="turnstream"'  # RFC 6750
    delay = retry_after_of(st)
    if delay is not None:
        headers["Retry-After"] = str(max(1, round(delay + 0.499)))
    return http, body, headers


def _pack(*details: object) -> list[any_pb2.Any]:
    out = []
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        out.append(packed)
    return out


def status(
    code: int,
    message: str,
    reason: str,
    *,
    metadata: Mapping[str, str] | None = None,
    violations: Iterable[Any] = (),
    retry_after: float | None = None,
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    details: list[object] = [info]
    violations = list(violations)
    if violations:
        details.append(error_details_pb2.BadRequest(field_violations=violations))
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(retry_after * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return status_pb2.Status(code=code, message=message, details=_pack(*details))


def invalid_record(kind: str, violations: Iterable[Any]) -> status_pb2.Status:
    violations = list(violations)
    first = violations[0].description if violations else "invalid"
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return status(
        code_pb2.INVALID_ARGUMENT,
        f"the {kind.replace('_', ' ')} is invalid: {first}{more}; it was kept as a dead letter",
        "INVALID_RECORD",
        metadata={"kind": kind},
        violations=violations,
    )


def invalid_request(
    field: str, description: str, reason: str = "INVALID_REQUEST"
) -> status_pb2.Status:
    return status(
        code_pb2.INVALID_ARGUMENT,
        description,
        reason,
        violations=[FieldViolation(field=field, description=description, reason=reason)],
    )


def unavailable(message: str, retry_after: float) -> status_pb2.Status:
    return status(code_pb2.UNAVAILABLE, message, "STORE_UNAVAILABLE", retry_after=retry_after)


def rebalance(attempt: int, most: int) -> status_pb2.Status:
    """An Append open turned away by one of `serve --workers N`'s processes (doors/balance.py)
    to even the streams out: retry at once, on a new connection (a new source port)."""
    return status(
        code_pb2.UNAVAILABLE,
        "this server process holds more streams than another of its --workers: reopen the "
        f"stream on a new connection (turned away {attempt + 1} of at most {most} times)",
        "REBALANCE",
        metadata={"attempt": str(attempt + 1)},
        retry_after=0.0,
    )


def malformed(what: str, problem: str) -> status_pb2.Status:
    """Bytes that do not parse as the message the method takes: the caller's error, never
    retried. `problem` is the parser's sentence (no exception class names)."""
    return status(
        code_pb2.INVALID_ARGUMENT,
        f"the request is not a valid {what}: {problem}",
        "MALFORMED_REQUEST",
        metadata={"message": what},
        violations=[FieldViolation(field="", description=problem, reason="MALFORMED_REQUEST")],
    )


def too_large(field: str, limit: int, got: int, unit: str) -> status_pb2.Status:
    """A request over a documented limit (RESOURCE_EXHAUSTED, not retried as it is)."""
    description = f"{field} has {got:,} {unit}, more than the limit of {limit:,}; split it"
    return status(
        code_pb2.RESOURCE_EXHAUSTED,
        description,
        "REQUEST_TOO_LARGE",
        metadata={"field": field, "limit": str(limit)},
        violations=[FieldViolation(field=field, description=description, reason="TOO_LARGE")],
    )


def unauthenticated(message: str, reason: str, key_id: str = "") -> status_pb2.Status:
    """The caller is not known: no key, or one that is malformed, unknown, revoked or expired.
    The message never holds the secret; at most the key's public id."""
    metadata = {"key_id": key_id} if key_id else None
    return status(code_pb2.UNAUTHENTICATED, message, reason, metadata=metadata)


def scope_missing(key_id: str, needed: str, held: Iterable[str]) -> status_pb2.Status:
    """The key is valid but lacks the scope the call needs (PERMISSION_DENIED, 403)."""
    have = ", ".join(sorted(held)) or "none"
    return status(
        code_pb2.PERMISSION_DENIED,
        f"API key {key_id} has scopes [{have}]; this call needs the {needed!r} scope. "
        f"Create a key with it: turnstream keys create --tenant TENANT --scopes {needed}",
        "SCOPE_MISSING",
        metadata={"key_id": key_id, "scope": needed},
    )


def internal(incident: str) -> status_pb2.Status:
    """An unexpected server error: the caller gets the incident id the log carries."""
    return status(
        code_pb2.INTERNAL,
        f"unexpected server error (incident {incident}); it is logged under that id. "
        "Retry; if it repeats, report the id",
        "INTERNAL",
        metadata={"incident": incident},
        retry_after=5.0,
    )


def unexpected(log: logging.Logger, what: str) -> status_pb2.Status:
    """Log the exception being handled under a new incident id; the status to answer with.
    Call from an `except` block."""
    incident = uuid.uuid4().hex[:12]
    log.exception("%s failed (incident %s)", what, incident)
    return internal(incident)
