"""Errors as clients see them: every failure a door reports is built here once, as a
google.rpc.Status with one ErrorInfo (reason, domain) plus BadRequest or RetryInfo details.
The gRPC doors send it with abort_with_status; the REST gateway maps the same Status to HTTP."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "turnstream.dev"

# google.rpc ships no type stubs: violations are typed Any at our boundaries.
FieldViolation = error_details_pb2.BadRequest.FieldViolation


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
