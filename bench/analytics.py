"""Benchmark of the read side: load executions with their turns and tool calls through the
normal ingest path (IngestCalls and the writer: binary COPY on PostgreSQL), then time
GetDashboard over 30 days and GetExecution through a real gRPC server.

Targets (issue 8): with 100,000 executions, 1,000,000 turns and 300,000 tool calls in
PostgreSQL, GetDashboard over 30 days <= 1 s and GetExecution <= 20 ms; SQLite is reported.

    python -m bench.analytics [--executions 100000] [--dialect postgresql|sqlite|both]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import sys
import time

import grpc
import sqlalchemy as sa

from bench.run import scratch_database
from turnstream.config import Settings
from turnstream.demo import Spec, fill
from turnstream.server import Server
from turnstream.store.engine import create_engine, migrate
from turnstream.v1 import analytics_pb2 as pb
from turnstream.v1 import analytics_pb2_grpc


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    migrate(engine)
    with engine.connect() as conn:
        out = {
            t: int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one())
            for t in ("executions", "turns", "tool_calls")
        }
    engine.dispose()
    return out


async def timed(runs: int, call: object) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await call()  # type: ignore[operator]
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def measure(url: str, spec: Spec, args: argparse.Namespace) -> list[str]:
    settings = Settings.from_env(
        env={}, database_url=url, grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0"
    )
    server = Server(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            req = pb.GetDashboardRequest(granularity=pb.GRANULARITY_DAY)
            req.filter.end_date.FromDatetime(spec.end)
            req.filter.start_date.FromDatetime(spec.end - dt.timedelta(days=30))
            answer = await stub.GetDashboard(req)  # warm the caches once
            dash = await timed(args.repeat, lambda: stub.GetDashboard(req))
            rng = random.Random(1)
            ids = [f"exec-{spec.seed}-{rng.randrange(spec.executions):07d}" for _ in range(200)]
            it = iter(ids)

            async def one() -> None:
                await stub.GetExecution(pb.GetExecutionRequest(execution_id=next(it)))

            await one()
            ex = await timed(len(ids) - 1, one)
    finally:
        await server.stop(grace=5)
    p95 = statistics.quantiles(ex, n=20)[-1]
    return [
        f"| GetDashboard, 30 days ({answer.summary.total_executions:,} executions) | "
        f"median {statistics.median(dash):.0f} ms, max {max(dash):.0f} ms | <= 1000 ms |",
        f"| GetExecution ({len(ex)} random ids) | median {statistics.median(ex):.1f} ms, "
        f"p95 {p95:.1f} ms | <= 20 ms |",
    ]


async def bench(dialect: str, url: str, args: argparse.Namespace) -> list[str]:
    end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    spec = Spec(
        args.executions,
        end - dt.timedelta(days=args.days),
        end,
        seed=9,
        invalid_every=0,
        max_turns=19,  # 10 turns per execution on average
        call_chance=0.2,  # 0.3 tool calls per turn on average
    )
    t0 = time.perf_counter()
    done = [0]
    print(f"  {dialect}: loading {spec.executions:,} executions", file=sys.stderr)

    def progress(n: int) -> None:
        done[0] += n
        if done[0] % 10_000 < n:
            print(f"  {dialect}: {done[0]:,} executions loaded", file=sys.stderr)

    loaded = counts(url)["executions"] >= spec.executions if args.database_url else False
    if not loaded:  # a --database-url already holding the data is measured as it is
        await fill(url, spec, progress)
    load = time.perf_counter() - t0
    c = counts(url)
    lines = [
        f"\n### {dialect}\n",
        f"Loaded {c['executions']:,} executions, {c['turns']:,} turns, "
        f"{c['tool_calls']:,} tool calls over {args.days} days through IngestCalls and the "
        f"writer in {load:.0f} s.\n",
        "| call | measured | target |",
        "|---|---|---|",
    ]
    return lines + await measure(url, spec, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30, help="history spread [30]")
    parser.add_argument("--repeat", type=int, default=5, help="GetDashboard calls timed [5]")
    parser.add_argument("--dialect", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument(
        "--database-url", help="measure this database (loaded first unless it holds the data)"
    )
    args = parser.parse_args()
    if args.database_url:
        dialect = "postgresql" if args.database_url.startswith("postgresql") else "sqlite"
        print("\n".join(asyncio.run(bench(dialect, args.database_url, args))))
        return 0
    report = [f"## Read side, {time.strftime('%Y-%m-%d %H:%M')}"]
    for dialect in ("postgresql", "sqlite"):
        if args.dialect in (dialect, "both"):
            with scratch_database(dialect, "bench") as url:
                report += asyncio.run(bench(dialect, url, args))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
