"""Bench: the writer's cost per record, in process — batches prepared by the pipeline first
(not timed), then stored one after another through `Writer.submit` (a group commit each),
on realistic records (bench/records.py). Prints CPU µs per record of this process (on SQLite
that includes the database's work; PostgreSQL's own CPU is in its server process) and wall µs.

    python -m bench.writer [--dialect postgresql|sqlite|both] [--records 20000] [--batch 500]
        [--per-execution 50] [--rounds 3]

Each round stores new records (new keys), then the same again (a replay: nothing changes).
Run it from an older checkout with `PYTHONPATH=<old>/src` for a before/after table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from typing import Any

from bench.records import make_records
from bench.run import scratch_database
from turnstream.core.pipeline import Item, Pipeline
from turnstream.core.pricing import PriceTable
from turnstream.store.engine import create_engine, migrate
from turnstream.store.writer import Writer


def prepare(pipeline: Pipeline, tag: str, records: int, batch: int, per: int) -> list[Any]:
    out = []
    for start in range(0, records, batch):
        made: list[tuple[str, object]] = []
        for at in range(start, start + batch, per):
            made += make_records(f"{tag}-{at // per}", at, min(per, start + batch - at))
        items = [Item(kind, message, "", i) for i, (kind, message) in enumerate(made)]
        prepared = pipeline.prepare("default", "bench", items)
        assert not prepared.rejections, prepared.rejections[:1]
        out.append(prepared.batch)
    return out


async def store(writer: Writer, batches: list[Any]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for b in batches:
        await writer.submit(b)
    return time.process_time() - cpu, time.perf_counter() - wall


async def bench(url: str, args: argparse.Namespace) -> list[str]:
    engine = create_engine(url)
    migrate(engine)
    writer = Writer(engine)
    await writer.start()
    pipeline = Pipeline(PriceTable.load(), clock=lambda: dt.datetime.now(dt.UTC))
    out = []
    try:
        for r in range(args.rounds):
            batches = prepare(pipeline, f"r{r}", args.records, args.batch, args.per_execution)
            # A replay must be prepared afresh: the writer may keep what it was given.
            again = prepare(pipeline, f"r{r}", args.records, args.batch, args.per_execution)
            for name, bs in (("new", batches), ("replay", again)):
                cpu, wall = await store(writer, bs)
                n = args.records
                out.append(f"| {r} | {name} | {cpu / n * 1e6:.1f} | {wall / n * 1e6:.1f} |")
    finally:
        await writer.close(grace=30)
        engine.dispose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dialect", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--per-execution", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for dialect in ("postgresql", "sqlite"):
        if args.dialect in (dialect, "both"):
            with scratch_database(dialect, "writer") as url:
                lines = asyncio.run(bench(url, args))
            print(f"### {dialect}: µs per record (process CPU, wall), batches of {args.batch}")
            print("| round | records | CPU | wall |\n|---|---|---:|---:|")
            print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
