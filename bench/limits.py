"""`make bench-limits`: what large requests cost everyone else, on a real server process.

1. Latency of small Writes (one turn each, one at a time) before and while one Write of
   100,000 turns is in flight: p50 / p99 / max, and how long the big Write took.
2. Memory: ten Writes of ~16 MiB sent at once; the server's peak RSS (VmHWM) and RSS after.

    python -m bench.limits [--dialect sqlite|postgresql] [--big 100000] [--parallel 10]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import grpc

from bench.run import scratch_database, start_server
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc, records_pb2

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _turn(execution: str, n: int, preview: int = 0) -> records_pb2.Turn:
    t = records_pb2.Turn(
        execution_id=execution,
        turn_number=n,
        model="claude-sonnet-4-5",
        model_provider="anthropic",
        input_tokens=1200,
        output_tokens=300,
        finish_reason="end_turn",
        response_preview="x" * preview,
    )
    t.started_at.FromDatetime(T0 + dt.timedelta(seconds=n))
    t.completed_at.FromDatetime(T0 + dt.timedelta(seconds=n, milliseconds=900))
    return t


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def _small_writes(
    stub: ingest_pb2_grpc.IngestServiceStub, stop: asyncio.Event
) -> list[float]:
    latencies, n = [], 0
    while not stop.is_set():
        n += 1
        started = time.perf_counter()
        await stub.Write(ingest_pb2.WriteRequest(turns=[_turn("small", n)]))
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.01)
    return latencies


def _pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) > 1 else values[0]


async def latency_under_a_big_write(target: str, big: int) -> list[str]:
    request = ingest_pb2.WriteRequest(turns=[_turn("big", i + 1) for i in range(big)])
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        stop = asyncio.Event()
        idle = asyncio.create_task(_small_writes(stub, stop))
        await asyncio.sleep(2)
        stop.set()
        before = await idle
        stop = asyncio.Event()
        during = asyncio.create_task(_small_writes(stub, stop))
        started = time.perf_counter()
        answer = await stub.Write(request, timeout=600)
        took = time.perf_counter() - started
        stop.set()
        loaded = await during
    assert answer.counts.turns.created + answer.counts.turns.unchanged == big
    return [
        f"| small Writes, idle server | {len(before)} | {_pct(before, 50):.1f} | "
        f"{_pct(before, 99):.1f} | {max(before):.1f} |",
        f"| small Writes during one Write of {big:,} turns ({took:.1f} s) | {len(loaded)} | "
        f"{_pct(loaded, 50):.1f} | {_pct(loaded, 99):.1f} | {max(loaded):.1f} |",
    ]


async def memory_under_parallel_writes(target: str, pid: int, parallel: int) -> list[str]:
    # Just under 16 MiB each (the default max_message_bytes): 55,000 turns, 200-char previews.
    requests = [
        ingest_pb2.WriteRequest(turns=[_turn(f"mem-{k}", i + 1, 200) for i in range(55_000)])
        for k in range(parallel)
    ]
    size = requests[0].ByteSize()
    rss_before = _kib(pid, "VmRSS")
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        started = time.perf_counter()
        await asyncio.gather(*(stub.Write(r, timeout=600) for r in requests))
        took = time.perf_counter() - started
    return [
        f"\n{parallel} Writes of {size / 2**20:.1f} MiB at once: done in {took:.1f} s; server RSS "
        f"{rss_before / 1024:.0f} MB before, peak {_kib(pid, 'VmHWM') / 1024:.0f} MB, "
        f"{_kib(pid, 'VmRSS') / 1024:.0f} MB after."
    ]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dialect", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--big", type=int, default=100_000, help="turns in the big Write")
    p.add_argument("--parallel", type=int, default=10, help="~16 MiB Writes sent at once")
    args = p.parse_args()
    with scratch_database(args.dialect, "limits") as url:
        proc, target = start_server(url)
        try:
            # Memory first, on a fresh process, so the figures are not the other scenario's.
            print(f"== {args.dialect}: {args.parallel} large Writes at once", flush=True)
            memory = asyncio.run(memory_under_parallel_writes(target, proc.pid, args.parallel))
            print(f"== {args.dialect}: small Writes before and during a big one", flush=True)
            out = [
                f"\n### Large requests ({args.dialect}) — `python -m bench.limits "
                f"{' '.join(sys.argv[1:])}`\n",
                "| scenario | writes | p50 ms | p99 ms | max ms |",
                "|---|---:|---:|---:|---:|",
                *asyncio.run(latency_under_a_big_write(target, args.big)),
                *memory,
            ]
        finally:
            proc.terminate()
            proc.wait(60)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
