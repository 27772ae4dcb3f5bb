"""Bench: a load generator speaking the Append protocol (and unary Write) directly (no SDK), so
that what is measured is the server. Requests are built before the clock starts, from realistic
records (bench/records.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench import records as realistic
from turnstream.client.channel import REBALANCE_HEADER
from turnstream.client.errors import RPCError
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc, records_pb2

# A channel of its own per stream: grpc otherwise shares one TCP connection among the channels
# of a process with the same target and options, and `serve --workers N` spreads connections.
LOCAL = [("grpc.use_local_subchannel_pool", 1)]
# Past this many turn-aways (REBALANCE) an open is an error: the server takes it after 12.
MAX_TURNS = 16


def make_turn(stream: str, n: int) -> records_pb2.Turn:
    """A realistic turn (kept under this name for bench/ceiling.py and older callers)."""
    return realistic.make_turn(stream, n)


def build_requests(stream: str, records: int, batch: int) -> list[ingest_pb2.AppendRequest]:
    out = []
    for offset in range(0, records, batch):
        n = min(batch, records - offset)
        req = ingest_pb2.AppendRequest()
        req.batch.offset = offset
        for kind, message in realistic.make_records(stream, offset, n):
            getattr(req.batch.records.add(), kind).CopyFrom(message)
        out.append(req)
    return out


def build_writes(prefix: str, requests: int, per_request: int) -> list[ingest_pb2.WriteRequest]:
    """Unary Writes of `per_request` realistic turns, one execution each."""
    out = []
    for r in range(requests):
        execution = f"{prefix}-{r}"
        req = ingest_pb2.WriteRequest(execution_id=execution)
        for i in range(per_request):
            req.turns.add().CopyFrom(realistic.make_turn(execution, i + 1))
        out.append(req)
    return out


async def drive_unary(
    target: str, clients: int, requests_per_client: int, per_request: int, prefix: str
) -> Result:
    """`clients` connections, each sending its Writes one after the other."""
    work = [build_writes(f"{prefix}-{c}", requests_per_client, per_request) for c in range(clients)]
    result = Result()
    channels = [grpc.aio.insecure_channel(target, options=LOCAL) for _ in range(clients)]

    async def client(channel: grpc.aio.Channel, requests: list[ingest_pb2.WriteRequest]) -> None:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for request in requests:
            sent = time.perf_counter()
            answer = await stub.Write(request, timeout=120)
            result.latencies.append(time.perf_counter() - sent)
            created = answer.counts.turns.created
            if created != per_request:
                raise RuntimeError(f"Write stored {created} of {per_request} turns: {answer}")
            result.records += created

    try:
        start = time.perf_counter()
        await asyncio.gather(*(client(ch, w) for ch, w in zip(channels, work, strict=True)))
        result.seconds = time.perf_counter() - start
    finally:
        for channel in channels:
            await channel.close()
    return result


@dataclass
class Result:
    records: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    rebalances: int = 0  # opens turned away by a --workers process, reopened elsewhere

    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


class Connection:
    """One stream's own connection to the server; `redraw()` replaces it with a new one (a new
    source port, which SO_REUSEPORT hashes to a process again)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(target, options=LOCAL)
        self._retired: list[asyncio.Task[None]] = []

    def stub(self) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(self.channel)

    def redraw(self) -> None:
        """A new connection at once; the old one closes meanwhile."""
        old, self.channel = self.channel, grpc.aio.insecure_channel(self.target, options=LOCAL)
        self._retired.append(asyncio.create_task(old.close()))

    async def close(self) -> None:
        await asyncio.gather(self.channel.close(), *self._retired)


async def open_stream(
    connection: Connection,
    stream_id: str,
    metadata: tuple[tuple[str, str], ...],
    rebalance: bool,
    result: Result,
) -> tuple[Any, ingest_pb2.AppendResponse]:
    """An Append call with its `opened` answer. With `rebalance`, the call declares that it
    reopens on a new connection when a --workers process turns it away, and does (as the SDK)."""
    for turned in range(MAX_TURNS + 1):
        extra = ((REBALANCE_HEADER, str(turned)),) if rebalance else ()
        call = connection.stub().Append(metadata=(*metadata, *extra))
        try:
            await call.write(
                ingest_pb2.AppendRequest(open=ingest_pb2.OpenStream(stream_id=stream_id))
            )
            opened = await call.read()
        except grpc.aio.AioRpcError as exc:
            if not rebalance or RPCError.from_aio(exc).reason != "REBALANCE":
                raise
            result.rebalances += 1
            connection.redraw()
            continue
        assert opened is not grpc.aio.EOF and opened.WhichOneof("kind") == "opened", opened
        return call, opened
    raise RuntimeError(f"{stream_id}: turned away {MAX_TURNS + 1} times")


async def run_stream(
    connection: Connection,
    stream_id: str,
    requests: list[ingest_pb2.AppendRequest],
    window: int,
    interval: float | None,
    result: Result,
    phase: float = 0.0,
    metadata: tuple[tuple[str, str], ...] = (),
    rebalance: bool = True,
) -> None:
    """Send every batch, keeping at most `window` un-acked; with `interval`, pace the sends
    (open loop) to measure latency at a fixed rate."""
    call, opened = await open_stream(connection, stream_id, metadata, rebalance, result)
    window = min(window, opened.opened.limits.max_inflight_batches or window)
    sent_at: list[float] = []
    room = asyncio.Semaphore(window)

    async def receive() -> None:
        for i in range(len(requests)):
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise RuntimeError(f"{stream_id}: stream ended early")
                if resp.WhichOneof("kind") == "ack":
                    break
            ack = resp.ack
            if ack.outcome != ingest_pb2.APPEND_OUTCOME_APPENDED:
                raise RuntimeError(f"{stream_id}: unexpected ack {ack}")
            result.latencies.append(time.perf_counter() - sent_at[i])
            result.records += ack.record_count
            room.release()

    receiver = asyncio.create_task(receive())
    start = time.perf_counter()
    for i, req in enumerate(requests):
        if interval is not None:
            delay = start + (i + phase) * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await room.acquire()
        sent_at.append(time.perf_counter())
        await call.write(req)
    await receiver
    await call.done_writing()


async def drive(
    target: str,
    streams: int,
    records_per_stream: int,
    batch: int,
    window: int = 8,
    rate: float | None = None,
    prefix: str = "bench",
    metadata: tuple[tuple[str, str], ...] = (),
    rebalance: bool = True,
) -> Result:
    """N concurrent streams; with `rate` (records/s in all) the load is paced. `metadata`:
    sent with every call (an API key: `authorization: Bearer ...`). `rebalance`: the streams
    may be turned away by a `serve --workers` process and reopen on a new connection (False:
    the split is SO_REUSEPORT's hash alone, as for a client that does not declare it)."""
    all_requests = [
        build_requests(f"{prefix}-{s}", records_per_stream, batch) for s in range(streams)
    ]
    interval = None if rate is None else batch * streams / rate
    result = Result()
    # One connection per stream, as separate workers would have: with `serve --workers N`
    # the kernel spreads connections, not streams, over the processes.
    connections = [Connection(target) for _ in range(streams)]
    try:
        start = time.perf_counter()
        await asyncio.gather(
            *(
                # Paced streams are spread over the interval (phase), not sent in lockstep:
                # an open-loop load arrives evenly, not in one burst of every stream at once.
                run_stream(
                    connections[s],
                    f"{prefix}-{s}",
                    reqs,
                    window,
                    interval,
                    result,
                    s / streams,
                    metadata,
                    rebalance,
                )
                for s, reqs in enumerate(all_requests)
            )
        )
        result.seconds = time.perf_counter() - start
    finally:
        for connection in connections:
            await connection.close()
    return result
