"""Bench: CPU µs per record of the generated fast path (check, row) as pure Python (the code
core/fastpath.py execs) and as core/fastgen.py (compiled by mypyc when built), interleaved in one
process, minimum over many short rounds: on a shared machine this tells the two apart when
`make bench-pipeline` cannot.

    python -m bench.fastpath [--rounds 60] [--records 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from typing import Any

from bench.records import make_records
from turnstream.core import fastgen, fastpath, validate
from turnstream.v1 import records_pb2

_CLASSES: dict[str, Any] = {"turn": records_pb2.Turn, "tool_call": records_pb2.ToolCall}
_SHARE = {"turn": 0.75, "tool_call": 0.25}  # bench/records.py: one tool call per 4 records


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--records", type=int, default=300, help="of each kind, per round")
    args = p.parse_args()
    latest = (dt.datetime.now(dt.UTC) + validate.CLOCK_SKEW).timestamp()
    made = make_records("fastpath", 0, args.records * 4)
    best: dict[tuple[str, str, str], float] = {}
    plans = []
    for kind, cls in _CLASSES.items():
        name = cls.DESCRIPTOR.name
        items = [cls.FromString(m.SerializeToString()) for k, m in made if k == kind]
        items = items[: args.records]
        pure = fastpath._exec(cls.DESCRIPTOR)
        ways = {
            "pure": (pure[f"check_{name}"], pure[f"row_{name}"]),
            "module": (getattr(fastgen, f"check_{name}"), getattr(fastgen, f"row_{name}")),
        }
        plans.append((kind, items, ways["pure"][0](items[0], latest), ways))
    for _ in range(args.rounds):
        for kind, items, structs, ways in plans:
            for way, (check, row) in ways.items():
                t = time.process_time()
                for m in items:
                    check(m, latest)
                a = time.process_time() - t
                t = time.process_time()
                for m in items:
                    row(m, "t", structs)
                b = time.process_time() - t
                for stage, took in (("check", a), ("row", b)):
                    key, per = (kind, way, stage), took / len(items) * 1e6
                    best[key] = min(best.get(key, per), per)
    module = "compiled" if str(fastgen.__file__).endswith(".so") else "not compiled"
    print(f"CPU µs per record, best of {args.rounds} rounds; core/fastgen.py is {module}:")
    print("| record | stage | pure Python | core/fastgen.py |\n|---|---|---:|---:|")
    for kind in _CLASSES:
        for stage in ("check", "row"):
            pure, mod = best[(kind, "pure", stage)], best[(kind, "module", stage)]
            print(f"| {kind} | {stage} | {pure:.2f} | {mod:.2f} |")
    mix = {
        way: sum(best[(k, way, s)] * _SHARE[k] for k in _CLASSES for s in ("check", "row"))
        for way in ("pure", "module")
    }
    print(f"| 3 turns : 1 tool call | check + row | {mix['pure']:.2f} | {mix['module']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
