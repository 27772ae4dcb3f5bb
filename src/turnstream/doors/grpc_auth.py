"""Door: who calls a gRPC method. Every IngestService and AnalyticsService RPC asks `principal`
first, with the scope it needs; the key comes from the `authorization` metadata (`Bearer <key>`
or `UserKey <key>`), checked by the one core Authenticator the HTTP doors use too."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from turnstream import logctx
from turnstream.core.auth import Authenticator, Principal, require
from turnstream.core.ports import Failure
from turnstream.doors.grpc_answer import abort

# (context, scope) -> the caller's Principal; the call is aborted with the failure otherwise.
Authorize = Callable[[grpc.aio.ServicerContext[Any, Any], str], Awaitable[Principal]]


def authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


# The caller of the call being served, once known: a unary call's key is checked by the guard's
# gate before admission, and the servicer's own check then only asks for the scope. Each call is
# its own task, so the value never reaches another call.
_known: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "turnstream_principal", default=None
)


def authorizer(authenticator: Authenticator) -> Authorize:
    async def principal(context: grpc.aio.ServicerContext[Any, Any], scope: str) -> Principal:
        try:
            known = _known.get()
            if known is not None:
                return require(known, scope)
            principal = await authenticator.authenticate(authorization(context), scope)
        except Failure as failure:
            await abort(context, failure.status)
        _known.set(principal)
        logctx.bind(tenant=principal.tenant)  # every line logged for this call names it
        return principal

    return principal
