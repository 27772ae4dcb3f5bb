"""Bench: CPU per record of the core pipeline, in process, by stage (validate, enrich, rows,
and the whole `Pipeline.prepare_append` of a batch), on realistic records (bench/records.py).
CPU time (`time.process_time`), so that it holds on a machine shared with other work.

    python -m bench.pipeline [--records 20000] [--batch 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.records import make_records
from turnstream import gctune
from turnstream.core import enrich, pipeline, rows, validate
from turnstream.core.batch import StreamAdvance
from turnstream.core.pricing import PriceTable
from turnstream.v1 import ingest_pb2

_VALIDATE: dict[str, Callable[..., Any]] = {
    "turn": validate.validate_turn,
    "tool_call": validate.validate_tool_call,
}
# Absent before the fast path (a run against an older checkout for a before/after table).
_CHECK: dict[str, Any] = {
    k: getattr(pipeline.KINDS[k], "check", None) for k in ("turn", "tool_call")
}
_ROW: dict[str, Callable[..., Any]] = {"turn": rows.turn_row, "tool_call": rows.tool_call_row}


def batches(records: int, batch: int) -> list[ingest_pb2.AppendBatch]:
    out = []
    for offset in range(0, records, batch):
        b = ingest_pb2.AppendBatch(offset=offset)
        for kind, message in make_records(f"pipe-{offset // 5000}", offset, batch):
            getattr(b.records.add(), kind).CopyFrom(message)
        out.append(b)
    return out


def fresh(wire: list[bytes]) -> list[ingest_pb2.AppendBatch]:
    # Enrichment mutates records: every round starts from freshly parsed ones, as the server does.
    return [ingest_pb2.AppendBatch.FromString(w) for w in wire]


def measure(records: int, batch: int) -> dict[str, float]:
    wire = [b.SerializeToString() for b in batches(records, batch)]
    prices = PriceTable.load()
    now = dt.datetime.now(dt.UTC)
    n = sum(len(ingest_pb2.AppendBatch.FromString(w).records) for w in wire)
    out: dict[str, float] = {}

    def each(parsed: list[ingest_pb2.AppendBatch]) -> list[tuple[str, Any]]:
        return [
            (r.WhichOneof("kind"), getattr(r, r.WhichOneof("kind")))
            for b in parsed
            for r in b.records
        ]

    t = time.process_time()
    parsed = fresh(wire)
    out["parse"] = time.process_time() - t
    items = each(parsed)
    t = time.process_time()
    for kind, m in items:
        _VALIDATE[kind](m, "records[0]", now)
    out["validate: generic walk (invalid records only)"] = time.process_time() - t
    latest = (now + validate.CLOCK_SKEW).timestamp()
    fast = _CHECK["turn"] is not None
    structs: list[Any] = [None] * len(items)
    if fast:
        t = time.process_time()
        structs = [_CHECK[kind](m, latest) for kind, m in items]
        out["validate: fast check + Struct -> JSON"] = time.process_time() - t
        assert all(s is not None for s in structs)
    t = time.process_time()
    for kind, m in items:
        if kind == "turn":
            enrich.enrich_turn(m, prices)
            if fast:
                validate.derived_finite(m)
            else:
                validate.check_derived(m, "records[0]")
        else:
            enrich.enrich_tool_call(m)
    out["enrich + derived check"] = time.process_time() - t
    t = time.process_time()
    for (kind, m), js in zip(items, structs, strict=True):
        if fast:
            _ROW[kind]("default", m, js)
        else:
            _ROW[kind]("default", m)
    out["rows"] = time.process_time() - t
    p = pipeline.Pipeline(prices)
    parsed = fresh(wire)
    t = time.process_time()
    for b in parsed:
        stream = StreamAdvance("s", 1, b.offset, b.offset + len(b.records))
        prepared, empty = p.prepare_append(b.records, "default", "append", stream)
        assert not prepared.rejections and not empty, prepared.rejections[:1]
    out["prepare_append (all)"] = time.process_time() - t
    return {k: v / n * 1e6 for k, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5, help="best of N rounds")
    args = p.parse_args()
    gctune.tune()  # as `turnstream serve` runs
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for k, v in measure(args.records, args.batch).items():
            best[k] = min(best.get(k, v), v)
    print(
        f"CPU µs per record ({args.records:,} realistic records, batches of {args.batch}, "
        f"best of {args.rounds}):"
    )
    print("| stage | µs/record |\n|---|---:|")
    for k, v in best.items():
        print(f"| {k} | {v:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
