"""Logs: what a log line should say about the request it was written for — request id, stream
id, tenant — kept in context variables, so a door binds them once and every line logged while
serving that request (in its task, and in tasks it starts) carries them. cli.py's JSON
formatter reads them; nothing here ever holds a key or a payload."""

from __future__ import annotations

import contextvars
import itertools
import os

FIELDS = ("request_id", "stream_id", "tenant")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "turnstream_request_id", default=None
)
_stream_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "turnstream_stream_id", default=None
)
_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "turnstream_tenant", default=None
)
_VARS = {"request_id": _request_id, "stream_id": _stream_id, "tenant": _tenant}

# Request ids: unique per process and cheap (no uuid per call): pid, then a counter.
_PREFIX = f"{os.getpid():x}-"
_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_PREFIX}{next(_counter):x}"


def bind(
    *, request_id: str | None = None, stream_id: str | None = None, tenant: str | None = None
) -> None:
    """Set what is given for the current context (a task's own copy: a request's task, or a
    task started from it). Values are ids, never secrets: callers pass no keys here."""
    if request_id is not None:
        _request_id.set(request_id[:128])
    if stream_id is not None:
        _stream_id.set(stream_id[:256])
    if tenant is not None:
        _tenant.set(tenant[:256])


def current() -> dict[str, str]:
    """The ids bound in this context (only those set)."""
    out = {}
    for name, var in _VARS.items():
        value = var.get()
        if value is not None:
            out[name] = value
    return out
