"""`make bench`: start turnstream on PostgreSQL and on SQLite, drive it with the Append load
generator, and print committed-and-acked records/s, ack latency, and the ratio to the same
database's raw ceiling, measured in the same run.

    python -m bench.run [--dialect postgresql|sqlite|both] [--streams 8] [--records 20000]
    python -m bench.run --auth [--auth-rounds 3]   # the same load with API keys off and on
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.ceiling import ceiling
from bench.load import Result, drive

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(url: str, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    proc, target, _ = start_server_with_http(url, workers)
    return proc, target


def start_server_with_http(url: str, workers: int = 1) -> tuple[subprocess.Popen[bytes], str, str]:
    """The server as a subprocess: (process, gRPC target, HTTP base URL), once healthy."""
    port, http_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "turnstream.cli",
            "serve",
            "--grpc-addr",
            target,
            "--http-addr",
            f"127.0.0.1:{http_port}",
            "--database-url",
            url,
            "--log-level",
            "WARNING",
            "--workers",
            str(workers),
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, target, f"http://127.0.0.1:{http_port}"
        except grpc.RpcError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy within 30 s")


@contextlib.contextmanager
def scratch_database(dialect: str, name: str) -> Iterator[str]:
    """A URL of an empty database for one benchmark run: a file in a temporary directory, or a
    database on a throwaway PostgreSQL server (tests/pgserver.py); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"turnstream-{name}-") as tmp:
        if dialect != "postgresql":
            yield f"sqlite:///{tmp}/{name}.db"
            return
        sys.path.insert(0, str(ROOT))
        from tests.pgserver import PgServer

        pg = PgServer()
        pg.start()
        try:
            yield pg.create_database(name)
        finally:
            pg.stop()
            pg.cleanup()


def line(name: str, r: Result) -> str:
    return (
        f"| {name} | {r.records:,} | {r.seconds:.2f} | {r.rate():,.0f} | "
        f"{r.pct(50):.1f} | {r.pct(99):.1f} |"
    )


def bench_dialect(name: str, url: str, ceiling_url: str, args: argparse.Namespace) -> list[str]:
    print(f"\n== {name}: raw ceiling ...", flush=True)
    raw = ceiling(ceiling_url, args.ceiling_records)
    print(f"   {raw:,.0f} rows/s", flush=True)
    # SQLite serialises writers on its file lock: more processes only add contention.
    workers = args.workers if name == "postgresql" else 1
    proc, target = start_server(url, workers)
    out = [
        f"\n### {name}\n",
        f"Server: `turnstream serve --workers {workers}`\n",
        f"Raw ceiling (writer SQL on prebuilt rows, 5,000 per transaction): "
        f"**{raw:,.0f} rows/s**\n",
        "| scenario | records | s | records/s | p50 ack ms | p99 ack ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    try:
        print(
            f"== {name}: {args.streams} streams x {args.records} records, batches of {args.batch}",
            flush=True,
        )
        big = asyncio.run(
            drive(target, args.streams, args.records, args.batch, args.window, prefix=f"{name}-b")
        )
        out.append(line(f"{args.streams} streams, batch {args.batch}", big))
        print(f"   {big.rate():,.0f} rec/s ({big.rate() / raw:.0%} of ceiling)", flush=True)
        print(f"== {name}: one record per message, {args.single_streams} streams", flush=True)
        single = asyncio.run(
            drive(
                target,
                args.single_streams,
                args.single_records,
                1,
                window=args.single_window,
                prefix=f"{name}-s",
            )
        )
        out.append(line(f"{args.single_streams} streams, 1 record/message", single))
        print(f"   {single.rate():,.0f} rec/s", flush=True)
        half = big.rate() / 2
        print(f"== {name}: latency at half the maximum rate ({half:,.0f} rec/s)", flush=True)
        paced = asyncio.run(
            drive(
                target, args.streams, args.records // 2, args.batch, rate=half, prefix=f"{name}-h"
            )
        )
        out.append(line(f"paced at {half:,.0f} rec/s (half max)", paced))
        out.append(
            f"\nEnd to end / raw ceiling: **{big.rate() / raw:.0%}** (target >= 50%); "
            f"one record per message: **{single.rate():,.0f} rec/s** (target >= 15,000); "
            f"p99 at half rate: **{paced.pct(99):.1f} ms** (target <= 100 ms)."
        )
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dialect", choices=["postgresql", "sqlite", "both"], default="both")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--records", type=int, default=20_000, help="records per stream")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--workers", type=int, default=2, help="server processes (serve --workers)")
    p.add_argument("--window", type=int, default=4, help="un-acked batches per stream")
    p.add_argument("--single-streams", type=int, default=32)
    p.add_argument("--single-records", type=int, default=2_000)
    p.add_argument("--single-window", type=int, default=16)
    p.add_argument("--ceiling-records", type=int, default=100_000)
    p.add_argument(
        "--auth",
        action="store_true",
        help="instead: the same load on a server without keys and on one with a key the load "
        "generator sends (bench/auth.py), alternately, medians",
    )
    p.add_argument("--auth-rounds", type=int, default=3)
    p.add_argument("--unary-calls", type=int, default=100, help="Write calls per caller (--auth)")
    args = p.parse_args()
    report = [
        f"## Run of {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        f"\n`python -m bench.run {' '.join(sys.argv[1:])}`".rstrip() + "\n",
    ]
    if args.auth:
        from bench.auth import compare

        for dialect in ("postgresql", "sqlite"):
            if args.dialect in (dialect, "both"):
                report += compare(dialect, args)
        print("\n".join(report))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="turnstream-bench-"))
    try:
        if args.dialect in ("postgresql", "both"):
            sys.path.insert(0, str(ROOT))
            from tests.pgserver import PgServer

            pg = PgServer()
            pg.start()
            try:
                report += bench_dialect(
                    "postgresql", pg.create_database("bench"), pg.create_database("ceiling"), args
                )
            finally:
                pg.stop()
                pg.cleanup()
        if args.dialect in ("sqlite", "both"):
            report += bench_dialect(
                "sqlite", f"sqlite:///{tmp}/bench.db", f"sqlite:///{tmp}/ceiling.db", args
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
