"""Bench: the writer's cost per record, in process — batches prepared by the pipeline first
(not timed), then stored through `Writer.submit` (a group commit each flush), on realistic
records (bench/records.py). Prints CPU µs per record of this process (on SQLite that includes
the database's work; PostgreSQL's own CPU is in its server process), the part of it spent on
the writer's lane thread (per record and per flush, from /proc: clock ticks, so read it over
thousands of records), the batches a flush held, and wall µs per record.

    python -m bench.writer [--dialect postgresql|sqlite|both] [--records 20000] [--batch 500]
        [--per-execution 50] [--rounds 3] [--streams 0]

Without --streams the batches are stored one after another (one batch per flush). With
`--streams N` they come from N streams at once, each stream's batches in order with one in
flight (as a door submits a stream's messages), each advancing its stream's offset in the
same transaction: `--batch 1 --streams 32` is the one-record-per-message load, where a flush
holds up to N batches of one record.

Each round stores new records (new keys), then the same again (a replay: nothing changes; with
streams, under reopened streams, as a client resends after a reconnect).
Run it from an older checkout with `PYTHONPATH=<old>/src` for a before/after table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import threading
import time
from typing import Any

from bench.records import make_records
from bench.run import scratch_database
from turnstream.core.batch import StreamAdvance
from turnstream.core.pipeline import Item, Pipeline
from turnstream.core.pricing import PriceTable
from turnstream.store.engine import create_engine, migrate
from turnstream.store.writer import Writer

TENANT = "default"


def prepare(
    pipeline: Pipeline,
    tag: str,
    records: int,
    batch: int,
    per: int,
    stream: tuple[str, int, int] | None = None,
) -> list[Any]:
    """Batches of `records` records; `stream` = (stream_id, epoch, first offset): each batch
    advances the stream past its records."""
    out = []
    for start in range(0, records, batch):
        made: list[tuple[str, object]] = []
        for at in range(start, min(start + batch, records), per):
            made += make_records(
                f"{tag}-{at // per}", at, min(per, start + batch - at, records - at)
            )
        adv = None
        if stream is not None:
            sid, epoch, first = stream
            adv = StreamAdvance(sid, epoch, first + start, first + start + len(made))
        offset = adv.from_offset if adv else 0
        items = [
            Item(kind, message, "", i, offset + i if adv else None)
            for i, (kind, message) in enumerate(made)
        ]
        prepared = pipeline.prepare(TENANT, "bench", items, stream=adv)
        assert not prepared.rejections, prepared.rejections[:1]
        out.append(prepared.batch)
    return out


def lane_cpu() -> float:
    """CPU seconds of the writer's lane threads (from /proc: the part of the process CPU spent
    on the lane, in the driver and the flush; the rest is the event loop's)."""
    total = 0.0
    for t in threading.enumerate():
        if t.name.startswith("turnstream-writer-") and t.native_id is not None:
            try:
                with open(f"/proc/self/task/{t.native_id}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def store(writer: Writer, lanes: list[list[Any]]) -> tuple[float, float, float, int]:
    """Each lane's batches in order, the lanes at once; (CPU s, lane CPU s, wall s, flushes)."""

    async def one(batches: list[Any]) -> None:
        for b in batches:
            outcome = await writer.submit(b)
            assert not outcome.failed, outcome.failed[:1]

    flushes = writer.stats.flushes
    cpu, lane, wall = time.process_time(), lane_cpu(), time.perf_counter()
    await asyncio.gather(*(one(bs) for bs in lanes))
    return (
        time.process_time() - cpu,
        lane_cpu() - lane,
        time.perf_counter() - wall,
        writer.stats.flushes - flushes,
    )


async def streams_batches(
    writer: Writer, pipeline: Pipeline, tag: str, args: argparse.Namespace
) -> list[list[Any]]:
    """One list of batches per stream, the streams (re)opened now."""
    per_stream = args.records // args.streams
    out = []
    for s in range(args.streams):
        sid = f"bench-{s}"
        state = await writer.open_stream(TENANT, sid)
        where = (sid, state.epoch, state.committed_offset)
        out.append(
            prepare(pipeline, f"{tag}-s{s}", per_stream, args.batch, args.per_execution, where)
        )
    return out


async def bench(url: str, args: argparse.Namespace) -> list[str]:
    engine = create_engine(url)
    migrate(engine)
    writer = Writer(engine)
    await writer.start()
    pipeline = Pipeline(PriceTable.load(), clock=lambda: dt.datetime.now(dt.UTC))
    out = []
    try:
        for r in range(args.rounds):
            for name in ("new", "replay"):
                if args.streams:
                    lanes = await streams_batches(writer, pipeline, f"r{r}", args)
                else:
                    lanes = [
                        prepare(pipeline, f"r{r}", args.records, args.batch, args.per_execution)
                    ]
                n = sum(len(b.rows[k]) for bs in lanes for b in bs for k in b.rows)
                batches = sum(len(bs) for bs in lanes)
                cpu, lane, wall, flushes = await store(writer, lanes)
                out.append(
                    f"| {r} | {name} | {cpu / n * 1e6:.1f} | {lane / n * 1e6:.1f}"
                    f" | {lane / flushes * 1e6:.0f} | {batches / flushes:.1f}"
                    f" | {wall / n * 1e6:.1f} |"
                )
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
    parser.add_argument(
        "--streams", type=int, default=0, help="submit from this many streams at once"
    )
    args = parser.parse_args()
    for dialect in ("postgresql", "sqlite"):
        if args.dialect in (dialect, "both"):
            with scratch_database(dialect, "writer") as url:
                lines = asyncio.run(bench(url, args))
            how = f", {args.streams} streams" if args.streams else ""
            print(f"### {dialect}: batches of {args.batch}{how}")
            print(
                "| round | records | CPU µs/record | lane CPU µs/record | lane CPU µs/flush"
                " | batches/flush | wall µs/record |\n|---|---|---:|---:|---:|---:|---:|"
            )
            print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
