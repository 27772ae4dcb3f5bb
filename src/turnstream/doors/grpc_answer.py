"""Door: how a gRPC call ends with a failure: the google.rpc.Status (from the one error table
in turnstream.errors) sent with its rich details, readable with grpc_status.rpc_status."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, NoReturn, TypeVar

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from turnstream.core.ports import Failure

T = TypeVar("T")


async def abort(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> NoReturn:
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # abort_with_status always raises


async def answer(context: grpc.aio.ServicerContext[Any, Any], call: Awaitable[T]) -> T:
    """The call's result, or its Failure sent as the call's status."""
    try:
        return await call
    except Failure as failure:
        await abort(context, failure.status)
