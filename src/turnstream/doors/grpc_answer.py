"""Door: how a gRPC call ends with a failure: the google.rpc.Status (from the one error table
in turnstream.errors) sent with its rich details, readable with grpc_status.rpc_status."""

from __future__ import annotations

import collections
from collections.abc import Awaitable
from typing import Any, NoReturn, TypeVar

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from turnstream import errors
from turnstream.core.ports import Failure

T = TypeVar("T")


class _Status(
    collections.namedtuple("_Status", ("code", "details", "trailing_metadata")),
    grpc.Status,  # type: ignore[misc]
):
    pass


def grpc_status(status: status_pb2.Status) -> grpc.Status:
    """`status` as grpc sends it: code, message, grpc-status-details-bin, and a `retry-after`
    (whole seconds) beside RetryInfo. Proxies cannot read RetryInfo; Envoy's retry policy can
    read `retry-after` from the headers of a trailers-only answer (deploy/envoy/envoy.yaml)."""
    base = rpc_status.to_status(status)
    seconds = errors.retry_after_seconds(status)
    if seconds is None:
        return base
    metadata = (*base.trailing_metadata, ("retry-after", str(seconds)))
    return _Status(base.code, base.details, metadata)


async def abort(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> NoReturn:
    await context.abort_with_status(grpc_status(status))
    raise AssertionError("unreachable")  # abort_with_status always raises


async def answer(context: grpc.aio.ServicerContext[Any, Any], call: Awaitable[T]) -> T:
    """The call's result, or its Failure sent as the call's status."""
    try:
        return await call
    except Failure as failure:
        await abort(context, failure.status)
