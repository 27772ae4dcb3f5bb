"""Bench: what one poisoner costs everyone else.

A poisoner sends ~8 requests/s of 10 turns, one of which the database refuses (an integer
beyond 64 bits: validation lets no such value in from the wire, so it is put there by hand, as a
validation gap would). Two scenarios, each in alternating rounds without and with the poisoner
so that drift cancels out (ABBA order). Both report good records/s and, because throughput on
a shared machine follows the CPU share the bench happens to get, the CPU-seconds spent per good
record by the server (or writer) process and PostgreSQL: throughput on a dedicated machine is
inversely proportional to it.

- `writer` (worst case): submitters keep batches of 500 valid turns flowing through a real
  Writer on a real database; no gRPC and no pipeline CPU dilute what isolating poison costs.
- `server` (what clients see): a real `turnstream serve` process, 8 Append streams sending
  batches of 500 (bench.load), the poisoner calling Write. The server process runs with a fault
  hook (`python -m bench.poison serve ...`) that turns records with model "poison-model" into
  rows the database refuses; nothing else differs from `turnstream serve`.

    python -m bench.poison [--scenario writer|server|both] [--dialect postgresql|sqlite|both]
                           [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench.load import drive, make_turn
from bench.run import free_port
from turnstream.core.batch import WriteBatch
from turnstream.core.pipeline import Item, Pipeline
from turnstream.core.pricing import PriceTable
from turnstream.store.engine import create_engine, migrate
from turnstream.store.writer import Writer
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = Pipeline(PriceTable.load(), clock=lambda: dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
POISON_MODEL = "poison-model"
TOO_BIG = 2**64


# -- scenario `writer` ---------------------------------------------------------------------------


class Batches:
    """Fresh batches of distinct keys, cloned from one batch the pipeline built (cheap)."""

    runs = itertools.count()

    def __init__(self, size: int, door: str = "bench") -> None:
        items = [Item("turn", make_turn("tmpl", n), f"records[{n}]", n) for n in range(size)]
        self.template = PIPELINE.prepare("default", door, items).batch
        self.door = door
        self.prefix = f"r{time.time_ns()}-{next(self.runs)}"
        self.ids = itertools.count()

    def next(self, poison: bool = False) -> WriteBatch:
        execution_id = f"{self.prefix}-{next(self.ids)}"
        batch = WriteBatch("default", door=self.door, sources=self.template.sources)
        batch.rows["turn"] = [
            {**row, "execution_id": execution_id} for row in self.template.rows["turn"]
        ]
        if poison:
            batch.rows["turn"][3]["total_tokens"] = TOO_BIG
        return batch


@dataclasses.dataclass
class Round:
    rate: float  # good records/s
    cpu_us: float  # CPU µs per good record (the process writing + the database server)


class Cpu:
    """CPU seconds used so far by some processes (utime + stime from /proc)."""

    tick = os.sysconf("SC_CLK_TCK")

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids

    def seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / self.tick


def database_pids(pg: Any) -> Callable[[], list[int]]:
    """The PostgreSQL server's processes (postmaster, backends, background workers)."""
    if pg is None:
        return list
    from tests.pgserver import _children

    return lambda: [pg.postmaster_pid(), *_children(pg.postmaster_pid())]


async def writer_round(url: str, poisoner: bool, args: argparse.Namespace, pg: Any) -> Round:
    engine = create_engine(url)
    writer = Writer(engine)
    await writer.start()
    # The writer tells batches apart by origin (tenant, door, stream): by default the poisoner
    # is a client of its own; --same-origin makes it indistinguishable from everyone else.
    good, bad = Batches(args.batch), Batches(10, "bench" if args.same_origin else "poisoner")
    committed = 0
    stop = time.monotonic() + args.seconds

    async def submitter() -> None:
        nonlocal committed
        while time.monotonic() < stop:
            outcome = await writer.submit(good.next())
            assert not outcome.failed
            committed += outcome.counts["turn"].created

    async def poison_one() -> None:
        outcome = await writer.submit(bad.next(poison=True))
        assert len(outcome.failed) == 1

    async def poison() -> None:
        # Open loop: a bad request every 1/rate seconds, however long the answers take.
        sent = []
        while time.monotonic() < stop:
            sent.append(asyncio.create_task(poison_one()))
            await asyncio.sleep(1 / args.poison_rate)
        await asyncio.gather(*sent)

    cpu = Cpu(lambda: [os.getpid(), *database_pids(pg)()])
    cpu0 = cpu.seconds()
    started = time.monotonic()
    tasks = [submitter() for _ in range(args.streams * args.window)]
    if poisoner:
        tasks.append(poison())
    await asyncio.gather(*tasks)
    result = Round(
        committed / (time.monotonic() - started), (cpu.seconds() - cpu0) / committed * 1e6
    )
    refused = writer.stats.refused_rows
    await writer.close()
    engine.dispose()
    report(poisoner, result, refused)
    return result


# -- scenario `server` ---------------------------------------------------------------------------


def serve_with_fault(argv: list[str]) -> int:
    """`turnstream serve`, except that turns whose model is POISON_MODEL become rows no
    database takes (as if validation missed a value the database refuses)."""
    from turnstream import cli
    from turnstream.core import pipeline

    kind = pipeline.KINDS["turn"]

    def turn_row(tenant_id: str, message: Any, structs: Any = None) -> Any:
        row = kind.row(tenant_id, message, structs)
        if message.model == POISON_MODEL:
            row["total_tokens"] = TOO_BIG
        return row

    pipeline.KINDS["turn"] = dataclasses.replace(kind, row=turn_row)
    return cli.main(["serve", *argv])


def start_faulty_server(url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.poison",
            "serve",
            "--grpc-addr",
            target,
            "--http-addr",
            f"127.0.0.1:{free_port()}",
            "--database-url",
            url,
            "--log-level",
            "ERROR",
        ],
        cwd=ROOT,
    )
    return proc, target


def poison_request(n: int) -> ingest_pb2.WriteRequest:
    request = ingest_pb2.WriteRequest()
    for i in range(10):
        turn = make_turn(f"poisoner-{n}", i)
        if i == 3:
            turn.model = POISON_MODEL
        request.turns.append(turn)
    return request


async def server_round(target: str, poisoner: bool, args: argparse.Namespace, cpu: Cpu) -> Round:
    stop = asyncio.Event()
    refused = 0
    numbers = itertools.count(time.time_ns())

    async def poison() -> None:
        nonlocal refused
        async with grpc.aio.insecure_channel(target) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)

            async def one() -> None:
                nonlocal refused
                response = await stub.Write(poison_request(next(numbers)))
                refused += len(response.rejections)

            sent = []
            while not stop.is_set():
                sent.append(asyncio.create_task(one()))
                await asyncio.sleep(1 / args.poison_rate)
            await asyncio.gather(*sent)

    task = asyncio.create_task(poison()) if poisoner else None
    records = int(args.server_rate * args.seconds / args.streams)
    prefix = f"b{time.time_ns()}"
    cpu0 = cpu.seconds()
    result = await drive(target, args.streams, records, args.batch, args.window, prefix=prefix)
    used = cpu.seconds() - cpu0
    stop.set()
    if task is not None:
        await task
    out = Round(result.rate(), used / result.records * 1e6)
    report(poisoner, out, refused)
    return out


# -- both ----------------------------------------------------------------------------------------


def report(poisoner: bool, result: Round, refused: int) -> None:
    print(
        f"   {'with' if poisoner else 'without'} poisoner: {result.rate:,.0f} good records/s,"
        f" {result.cpu_us:.1f} CPU µs per good record ({refused} poison records refused)",
        flush=True,
    )


def compare(name: str, one_round: Any, args: argparse.Namespace) -> str:
    print(f"== {name}", flush=True)
    clean: list[Round] = []
    poisoned: list[Round] = []
    # ABBA: each round adds rows, and a database slows as it grows (SQLite markedly), so the
    # order alternates, or the drift would count against whichever always ran second.
    for n in range(args.rounds):
        for poisoner in (False, True) if n % 2 == 0 else (True, False):
            (poisoned if poisoner else clean).append(one_round(poisoner))
    a = statistics.mean(r.rate for r in clean)
    b = statistics.mean(r.rate for r in poisoned)
    ca = statistics.mean(r.cpu_us for r in clean)
    cb = statistics.mean(r.cpu_us for r in poisoned)
    return (
        f"| {name} | {a:,.0f} | {b:,.0f} | {(b - a) / a:+.1%} | {ca:.1f} | {cb:.1f} |"
        f" {ca / cb - 1:+.1%} |"
    )


def bench(dialect: str, url: str, args: argparse.Namespace, pg: Any = None) -> list[str]:
    migrate(create_engine(url))
    out = []
    if args.scenario in ("writer", "both"):
        out.append(
            compare(
                f"{dialect}, writer",
                lambda poisoner: asyncio.run(writer_round(url, poisoner, args, pg)),
                args,
            )
        )
    if args.scenario in ("server", "both"):
        proc, target = start_faulty_server(url)
        cpu = Cpu(lambda: [proc.pid, *database_pids(pg)()])
        try:
            _wait_healthy(target)
            out.append(
                compare(
                    f"{dialect}, server",
                    lambda poisoner: asyncio.run(server_round(target, poisoner, args, cpu)),
                    args,
                )
            )
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def _wait_healthy(target: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.2)
    raise RuntimeError("the server did not become healthy within 30 s")


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        return serve_with_fault(sys.argv[2:])
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenario", choices=["writer", "server", "both"], default="both")
    p.add_argument("--dialect", choices=["postgresql", "sqlite", "both"], default="both")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each round")
    p.add_argument("--rounds", type=int, default=2, help="rounds without and with, alternating")
    p.add_argument("--streams", type=int, default=8, help="writers (submitters or streams)")
    p.add_argument("--window", type=int, default=4, help="batches in flight per writer")
    p.add_argument("--batch", type=int, default=500, help="records per good batch")
    p.add_argument("--poison-rate", type=float, default=8.0, help="poison requests per second")
    p.add_argument(
        "--same-origin",
        action="store_true",
        help="writer scenario: the poisoner's batches share the others' tenant and door",
    )
    p.add_argument(
        "--server-rate", type=float, default=15_000, help="expected records/s (sizes a round)"
    )
    args = p.parse_args()
    lines = [
        "| scenario | good rec/s | with poisoner | change | CPU µs/rec | with poisoner |"
        " implied throughput change |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    tmp = Path(tempfile.mkdtemp(prefix="turnstream-poison-"))
    try:
        if args.dialect in ("postgresql", "both"):
            sys.path.insert(0, str(ROOT))
            from tests.pgserver import PgServer

            with PgServer() as pg:
                lines += bench("postgresql", pg.create_database("poison"), args, pg)
        if args.dialect in ("sqlite", "both"):
            lines += bench("sqlite", f"sqlite:///{tmp}/poison.db", args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
