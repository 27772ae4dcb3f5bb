"""Bench: a load generator speaking the Append protocol directly (no SDK), so that what is
measured is the server. Requests are built before the clock starts."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field

import grpc

from turnstream.v1 import ingest_pb2, ingest_pb2_grpc, records_pb2

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def make_turn(stream: str, n: int) -> records_pb2.Turn:
    t = records_pb2.Turn(
        execution_id=stream,
        turn_number=n,
        model="claude-sonnet-4-5",
        model_provider="anthropic",
        input_tokens=1200 + n % 100,
        output_tokens=300 + n % 50,
        cache_read_tokens=4000,
        finish_reason="tool_use",
        tools_called_count=1,
        tools_called_names=["read_file"],
    )
    t.started_at.FromDatetime(T0 + dt.timedelta(seconds=n))
    t.completed_at.FromDatetime(T0 + dt.timedelta(seconds=n, milliseconds=800))
    return t


def build_requests(stream: str, records: int, batch: int) -> list[ingest_pb2.AppendRequest]:
    out = []
    for offset in range(0, records, batch):
        n = min(batch, records - offset)
        req = ingest_pb2.AppendRequest()
        req.batch.offset = offset
        for i in range(n):
            req.batch.records.add().turn.CopyFrom(make_turn(stream, offset + i))
        out.append(req)
    return out


@dataclass
class Result:
    records: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


async def run_stream(
    stub: ingest_pb2_grpc.IngestServiceStub,
    stream_id: str,
    requests: list[ingest_pb2.AppendRequest],
    window: int,
    interval: float | None,
    result: Result,
    phase: float = 0.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    """Send every batch, keeping at most `window` un-acked; with `interval`, pace the sends
    (open loop) to measure latency at a fixed rate."""
    call = stub.Append(metadata=metadata)
    await call.write(ingest_pb2.AppendRequest(open=ingest_pb2.OpenStream(stream_id=stream_id)))
    opened = await call.read()
    assert opened.WhichOneof("kind") == "opened", opened
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
) -> Result:
    """N concurrent streams; with `rate` (records/s in all) the load is paced. `metadata`:
    sent with every call (an API key: `authorization: Bearer ...`)."""
    all_requests = [
        build_requests(f"{prefix}-{s}", records_per_stream, batch) for s in range(streams)
    ]
    interval = None if rate is None else batch * streams / rate
    result = Result()
    # One channel (one connection) per stream, as separate workers would have: with
    # `serve --workers N` the kernel spreads connections, not streams, over the processes.
    local = [("grpc.use_local_subchannel_pool", 1)]  # else channels share one connection
    channels = [grpc.aio.insecure_channel(target, options=local) for _ in range(streams)]
    try:
        start = time.perf_counter()
        await asyncio.gather(
            *(
                # Paced streams are spread over the interval (phase), not sent in lockstep:
                # an open-loop load arrives evenly, not in one burst of every stream at once.
                run_stream(
                    ingest_pb2_grpc.IngestServiceStub(channels[s]),
                    f"{prefix}-{s}",
                    reqs,
                    window,
                    interval,
                    result,
                    s / streams,
                    metadata,
                )
                for s, reqs in enumerate(all_requests)
            )
        )
        result.seconds = time.perf_counter() - start
    finally:
        for channel in channels:
            await channel.close()
    return result
