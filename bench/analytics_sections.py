"""Where one GetDashboard spends its time: every statement on the read engine timed and
labelled (stage, turn pass, tool-call pass, tool percentiles, the other sections), median of
several calls, on a database that already holds the data (e.g. one `make bench-analytics`
loaded with --database-url). The per-section table of docs/benchmarks.md comes from this.

    python -m bench.analytics_sections --database-url postgresql+psycopg://… [--calls 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import time
from typing import Any

import sqlalchemy as sa

from turnstream.store.analytics_reads import AnalyticsReads
from turnstream.store.engine import create_engine
from turnstream.store.queries import Reads

# (a fragment of the statement, its label); the first match wins.
LABELS = (
    ("INSERT INTO dash_runs", "stage runs"),
    ("ANALYZE dash_runs", "analyze runs"),
    ("INSERT INTO dash_turns_raw", "turn pass"),
    ("INSERT INTO dash_calls_raw", "tool-call pass"),
    ("JOIN tool_calls tc", "tool percentiles"),
)
ORDER = [label for _, label in LABELS] + ["other sections", "TOTAL (wall)"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--calls", type=int, default=3, help="timed calls after a warm-up [3]")
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    engine = create_engine(args.database_url)
    spent: list[tuple[str, float]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def before(conn: Any, *_: Any) -> None:
        conn.info["t0"] = time.perf_counter()

    @sa.event.listens_for(engine, "after_cursor_execute")
    def after(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        label = next((lab for key, lab in LABELS if key in statement), "other sections")
        spent.append((label, (time.perf_counter() - conn.info["t0"]) * 1000))

    with engine.connect() as conn:
        tenant = conn.execute(sa.text("SELECT tenant_id FROM executions LIMIT 1")).scalar_one()
    end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    reads = AnalyticsReads(Reads(engine))
    calls = []
    for _ in range(args.calls + 1):
        spent.clear()
        t0 = time.perf_counter()
        asyncio.run(
            reads.dashboard(
                tenant,
                start=end - dt.timedelta(days=args.days),
                end=end,
                granularity="day",
                sort_by="executions",
                limit=10,
                offset=0,
                now=end,
            )
        )
        by: dict[str, float] = {"TOTAL (wall)": (time.perf_counter() - t0) * 1000}
        for label, ms in spent:
            by[label] = by.get(label, 0.0) + ms
        calls.append(by)
    engine.dispose()
    # The tool percentiles run on a second connection on PostgreSQL, overlapping the rest.
    for label in ORDER:
        print(f"{label:18s} {statistics.median(c.get(label, 0.0) for c in calls[1:]):8.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
