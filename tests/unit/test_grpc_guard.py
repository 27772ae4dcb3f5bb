"""The guard's order on unary calls: the gate (the caller's key) first, then admission, then
parsing, so an unknown caller's bytes take no admission budget and are never parsed."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from turnstream.doors.admission import Admission
from turnstream.doors.grpc_guard import guard
from turnstream.v1 import ingest_pb2


class Refused(Exception):
    pass


async def test_the_gate_runs_before_admission_and_parsing() -> None:
    parsed: list[bytes] = []
    admission = Admission(1_000)
    gate_open = asyncio.Event()
    seen_in_use: list[int] = []

    def parse(data: bytes) -> ingest_pb2.GetStreamRequest:
        parsed.append(data)
        return ingest_pb2.GetStreamRequest.FromString(data)

    async def behavior(request: ingest_pb2.GetStreamRequest, _context: Any) -> str:
        seen_in_use.append(admission.in_use)
        return request.stream_id

    async def gate(context: Any) -> None:
        await gate_open.wait()
        if context == "stranger":
            raise Refused  # stands in for context.abort(UNAUTHENTICATED)

    async def on_malformed(*_args: Any) -> None:
        raise AssertionError("not malformed")

    handler = grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=parse)
    guarded = guard("/s/M", handler, on_malformed, admission, gate=gate).unary_unary

    class Context:
        def __init__(self, name: str) -> None:
            self.name = name

        def invocation_metadata(self) -> tuple[()]:
            return ()

        def __eq__(self, other: object) -> bool:
            return other == self.name

    theirs = ingest_pb2.GetStreamRequest(stream_id="x" * 600).SerializeToString()
    ours = ingest_pb2.GetStreamRequest(stream_id="y" * 600).SerializeToString()
    stranger = asyncio.ensure_future(guarded(theirs, Context("stranger")))
    friend = asyncio.ensure_future(guarded(ours, Context("friend")))
    await asyncio.sleep(0.01)
    # Both wait at the gate: nothing admitted, nothing parsed.
    assert (admission.in_use, parsed) == (0, [])
    gate_open.set()
    with pytest.raises(Refused):
        await stranger
    assert await friend == "y" * 600
    assert parsed == [ours]  # the stranger's bytes were never parsed
    assert seen_in_use == [len(ours)] and admission.in_use == 0
