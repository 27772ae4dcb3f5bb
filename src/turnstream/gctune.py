"""The garbage collector, tuned once the server has started.

CPython runs a collection of its youngest generation every 700 net allocations of container
objects, and every tenth of those walks the next generation too. Preparing one batch of 500
records allocates tens of thousands of them (protobuf wrappers, row dicts and tuples), nearly
all freed at once by reference counting: collections ran hundreds of times per batch for little
garbage, and the older generations they walked held everything start-up made (modules,
SQLAlchemy metadata, grpc, the price table), which lives as long as the process.

After start-up, `tune` freezes what exists (a permanent generation no collection walks) and
collects the youngest generation every YOUNG allocations instead. Only garbage in reference
cycles waits longer; it is still collected. In process (`python -m bench.pipeline`), the
pipeline's CPU per record fell by about 14% with it (docs/benchmarks.md)."""

from __future__ import annotations

import gc

YOUNG = 50_000


def tune() -> None:
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
