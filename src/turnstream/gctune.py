"""Garbage collection for a long-running server, tuned once it is up.

With one record per message, every message allocates a few hundred container objects
(the request, its record, an Item, row dicts, futures, the ack) that die young. With Python's
defaults (a young collection every 700 allocations, older ones every 10 of those) the server
spent ~33 µs of CPU per message collecting (bench/onerec.py's `gc` column, gc.callbacks timed
with thread_time; docs/perf/onerec.md): the older generations kept re-walking everything the
process had imported and built at start (protobuf descriptors, SQLAlchemy, grpc, the app).
`gc.freeze()` moves those objects out of the collector's sight for good (they live as long as
the process), and a larger young generation collects the short-lived ones in fewer, equally
cheap passes: ~1 µs per message. Cycles still get collected; only later, in bigger passes."""

from __future__ import annotations

import gc

# Allocations (net) between two young collections; Python's default is 700.
YOUNG = 10_000


def settle() -> None:
    """Call once the server has started: collect what start-up left behind, freeze the rest,
    and collect the young generation every YOUNG allocations."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
