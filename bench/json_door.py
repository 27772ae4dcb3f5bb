"""`make bench-json`: the JSON door beside gRPC Write, same server, same run. Each scenario sends
batches of 100 turns from 8 concurrent clients (requests built before the clock starts, unique
records so every one is a real insert) and prints committed records/s and the JSON/gRPC ratio.

    python -m bench.json_door [--dialect sqlite|postgresql] [--requests 100] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time

import grpc
import httpx

from bench.run import scratch_database, start_server_with_http
from turnstream.formats import kubiya
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc, records_pb2

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PER_REQUEST = 100


def _turn(execution: str, n: int) -> records_pb2.Turn:
    """A realistic Kubiya turn: every field a worker sends, and a small metrics Struct."""
    t = records_pb2.Turn(
        execution_id=execution,
        turn_number=n,
        turn_id=f"{execution}-t{n}",
        model="claude-sonnet-4-5",
        model_provider="anthropic",
        input_tokens=1200 + n % 97,
        output_tokens=300 + n % 31,
        cache_read_tokens=4000,
        cache_creation_tokens=120,
        finish_reason="tool_use",
        response_preview="I'll run the failing test and read the traceback first.",
        tools_called_count=2,
        tools_called_names=["read_file", "run_tests"],
    )
    t.started_at.FromDatetime(T0 + dt.timedelta(seconds=n))
    t.completed_at.FromDatetime(T0 + dt.timedelta(seconds=n, milliseconds=850))
    t.metrics.update({"latency_first_token_ms": 410 + n % 50, "retries": 0})
    return t


def _requests(prefix: str, clients: int, per_client: int) -> list[list[ingest_pb2.WriteRequest]]:
    return [
        [
            ingest_pb2.WriteRequest(
                execution_id=f"{prefix}-{c}-{r}",
                turns=[_turn(f"{prefix}-{c}-{r}", i + 1) for i in range(PER_REQUEST)],
            )
            for r in range(per_client)
        ]
        for c in range(clients)
    ]


async def grpc_rate(target: str, work: list[list[ingest_pb2.WriteRequest]]) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)

        async def client(requests: list[ingest_pb2.WriteRequest]) -> None:
            for request in requests:
                answer = await stub.Write(request)
                assert answer.counts.turns.created == PER_REQUEST

        started = time.perf_counter()
        await asyncio.gather(*(client(r) for r in work))
        seconds = time.perf_counter() - started
    return sum(len(r) for r in work) * PER_REQUEST / seconds


async def json_rate(http: str, work: list[list[ingest_pb2.WriteRequest]]) -> float:
    bodies = [[json.dumps(kubiya.batch_to_json(r)).encode() for r in requests] for requests in work]
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=http, timeout=60) as c:

        async def client(payloads: list[bytes]) -> None:
            for body in payloads:
                answer = await c.post("/api/v1/analytics/batch", content=body, headers=headers)
                assert answer.status_code == 201, answer.text
                assert answer.json()["turns_created"] == PER_REQUEST

        started = time.perf_counter()
        await asyncio.gather(*(client(b) for b in bodies))
        seconds = time.perf_counter() - started
    return sum(len(b) for b in bodies) * PER_REQUEST / seconds


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dialect", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--requests", type=int, default=100, help="requests per client")
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args()
    with scratch_database(args.dialect, "json") as url:
        proc, target, http = start_server_with_http(url)
        try:
            print(f"== {args.dialect}: gRPC Write, batches of {PER_REQUEST}", flush=True)
            g = asyncio.run(grpc_rate(target, _requests("g", args.clients, args.requests)))
            print(f"   {g:,.0f} records/s", flush=True)
            print(f"== {args.dialect}: Kubiya JSON batch, batches of {PER_REQUEST}", flush=True)
            j = asyncio.run(json_rate(http, _requests("j", args.clients, args.requests)))
            print(f"   {j:,.0f} records/s", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    print(
        f"\n| {args.dialect} | gRPC Write | Kubiya JSON | JSON / gRPC |\n|---|---:|---:|---:|\n"
        f"| {args.clients} clients x {args.requests} requests x {PER_REQUEST} turns | "
        f"{g:,.0f} rec/s | {j:,.0f} rec/s | **{j / g:.0%}** (target >= 50%) |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
