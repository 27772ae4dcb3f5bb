"""`python -m bench.run --auth`: what API keys cost. Two servers of the same dialect, on two
databases: one with no key (loopback, anonymous), one with a key that the load generator sends
on every call. Each scenario runs on one then the other, `--auth-rounds` times alternately (the
CPU is shared: alternating spreads the noise over both), and the medians are compared.

Append checks the key at open and re-checks it from the cache once a second, so its cost is per
stream; a unary Write checks it on every call (a cache hit: a dict lookup and one SHA-256), so
the unary scenario is where a per-request cost would show."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

import grpc

from bench.load import drive, make_turn
from bench.run import ROOT, start_server
from turnstream.core.auth import Authenticator
from turnstream.store.engine import create_engine, migrate
from turnstream.store.keys import KeyStore
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc


@contextlib.contextmanager
def two_databases(dialect: str) -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="turnstream-auth-") as tmp:
        if dialect != "postgresql":
            yield f"sqlite:///{tmp}/off.db", f"sqlite:///{tmp}/on.db"
            return
        sys.path.insert(0, str(ROOT))
        from tests.pgserver import PgServer

        pg = PgServer()
        pg.start()
        try:
            yield pg.create_database("auth_off"), pg.create_database("auth_on")
        finally:
            pg.stop()
            pg.cleanup()


def new_key(url: str) -> str:
    engine = create_engine(url)
    try:
        migrate(engine)
        made, _ = KeyStore(engine).create("bench", "ingest,read", name="bench.run --auth")
    finally:
        engine.dispose()
    return made.key


async def unary(
    target: str,
    workers: int,
    calls: int,
    turns: int,
    prefix: str,
    metadata: tuple[tuple[str, str], ...],
) -> float:
    """Records/s of `workers` concurrent loops of `calls` Write calls of `turns` turns each."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)

        async def loop(w: int) -> None:
            for c in range(calls):
                ex = f"{prefix}-{w}-{c}"
                request = ingest_pb2.WriteRequest(
                    turns=[make_turn(ex, n + 1) for n in range(turns)]
                )
                await stub.Write(request, metadata=metadata, timeout=60)

        start = time.perf_counter()
        await asyncio.gather(*(loop(w) for w in range(workers)))
        return workers * calls * turns / (time.perf_counter() - start)


def compare(dialect: str, args: argparse.Namespace) -> list[str]:
    workers = args.workers if dialect == "postgresql" else 1
    rates: dict[str, dict[str, list[float]]] = {}
    with two_databases(dialect) as (off_url, on_url):
        key = new_key(on_url)
        on_url_key = (on_url, key)
        servers = {"off": start_server(off_url, workers), "on": start_server(on_url, workers)}
        metadata = {"off": (), "on": (("authorization", f"Bearer {key}"),)}
        try:
            for r in range(args.auth_rounds):
                # ABBA: neither mode always runs first (warm caches, a neighbour's burst).
                for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    target, md = servers[mode][1], metadata[mode]
                    p = f"{mode}{r}"
                    big = asyncio.run(
                        drive(
                            target,
                            args.streams,
                            args.records,
                            args.batch,
                            args.window,
                            prefix=f"{p}-b",
                            metadata=md,
                        )
                    )
                    single = asyncio.run(
                        drive(
                            target,
                            args.single_streams,
                            args.single_records,
                            1,
                            window=args.single_window,
                            prefix=f"{p}-s",
                            metadata=md,
                        )
                    )
                    calls = asyncio.run(unary(target, 16, args.unary_calls, 10, f"{p}-u", md))
                    got = {
                        f"Append, {args.streams} streams, batch {args.batch}": big.rate(),
                        f"Append, {args.single_streams} streams, 1 record/message": single.rate(),
                        "Write (unary), 16 callers, 10 turns/call": calls,
                    }
                    for scenario, rate in got.items():
                        rates.setdefault(scenario, {"off": [], "on": []})[mode].append(rate)
                    print(
                        f"   round {r + 1} auth {mode}: "
                        + ", ".join(f"{v:,.0f}" for v in got.values()),
                        flush=True,
                    )
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
        per_call = asyncio.run(check_cost(*on_url_key))
    out = [
        f"\n### auth off vs on, {dialect} (`--workers {workers}`, medians of "
        f"{args.auth_rounds} alternating rounds, records/s)\n",
        "| scenario | auth off | auth on | change |",
        "|---|---:|---:|---:|",
    ]
    for scenario, by in rates.items():
        off, on = statistics.median(by["off"]), statistics.median(by["on"])
        out.append(f"| {scenario} | {off:,.0f} | {on:,.0f} | {on / off - 1:+.1%} |")
    out.append(
        f"\nOne key check in process (cache hit: parse, dict lookup, SHA-256, compare): "
        f"**{per_call * 1e6:.1f} µs** per call."
    )
    return out


async def check_cost(url: str, key: str, calls: int = 100_000) -> float:
    """Seconds per Authenticator.authenticate() once the key is cached (what every unary call
    and every HTTP request pays)."""
    engine = create_engine(url)
    try:
        auth = Authenticator(KeyStore(engine), ttl=3600)
        header = f"Bearer {key}"
        await auth.authenticate(header, "ingest")
        start = time.perf_counter()
        for _ in range(calls):
            await auth.authenticate(header, "ingest")
        return (time.perf_counter() - start) / calls
    finally:
        engine.dispose()
