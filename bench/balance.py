"""How `serve --workers N` splits the load generator's streams over its processes, run after
run, with the rebalancing header (the streams may be turned away and reopen on a new
connection: doors/balance.py) and without it (SO_REUSEPORT's hash alone, as before), in
alternate runs on one server. Prints each run's split (established connections per process,
from /proc: one connection per stream), its rate and the server's CPU per record, then the
distribution of the splits per mode.

    python -m bench.balance [--dialect postgresql|sqlite] [--runs 20] [--records 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time
from typing import Any

from bench.load import Result, drive
from bench.run import (
    connections,
    cpu_seconds,
    scratch_database,
    start_server,
    wait_listening,
)


async def one_run(
    target: str, pids: list[int], args: argparse.Namespace, rebalance: bool, prefix: str
) -> tuple[Result, float, list[int]]:
    """The run's result, the server's CPU seconds, and the split: the last sample of the
    connections per process that held every stream (turned-away connections close at once)."""
    port = int(target.rsplit(":", 1)[1])
    before = cpu_seconds(pids)
    task = asyncio.ensure_future(
        drive(
            target,
            args.streams,
            args.records,
            args.batch,
            args.window,
            prefix=prefix,
            rebalance=rebalance,
        )
    )
    split: list[int] = []
    while not task.done():
        await asyncio.sleep(0.05)
        sample = list(connections(pids, port).values())
        if sum(sample) == args.streams:
            split = sample
    result = await task
    return result, cpu_seconds(pids) - before, split


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dialect", choices=["postgresql", "sqlite"], default="postgresql")
    p.add_argument("--runs", type=int, default=20, help="runs per mode (alternating)")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--records", type=int, default=2_000, help="records per stream")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    modes = {"hash only": False, "rebalance": True}
    runs: dict[str, list[tuple[Result, float, list[int]]]] = {m: [] for m in modes}
    with scratch_database(args.dialect, "balance") as url:
        proc, target = start_server(url, args.workers)
        try:
            port = int(target.rsplit(":", 1)[1])
            pids = wait_listening(proc, args.workers, port)
            print("| run | mode | split | turned away | records/s | server CPU µs/record |")
            print("|---:|---|---|---:|---:|---:|")
            for r in range(args.runs):
                for mode, rebalance in modes.items():
                    # The last run's calls may still be ending on the server: counted there,
                    # they would skew this run's split (balance acts at open).
                    while sum(connections(pids, port).values()):
                        time.sleep(0.1)
                    time.sleep(0.5)
                    prefix = f"r{r}-{'b' if rebalance else 'h'}"
                    result, cpu, split = asyncio.run(one_run(target, pids, args, rebalance, prefix))
                    runs[mode].append((result, cpu, split))
                    print(
                        f"| {r + 1} | {mode} | {'/'.join(map(str, split)) or '?'} | "
                        f"{result.rebalances} | {result.rate():,.0f} | "
                        f"{cpu / result.records * 1e6:.0f} |",
                        flush=True,
                    )
        finally:
            proc.terminate()
            proc.wait(30)
    print()
    print(
        "| mode | runs | splits (count) | spread max-min: mean | turned away per run | "
        "records/s median |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for mode, done in runs.items():
        print(summary(mode, done))
    return 0


def summary(mode: str, done: list[tuple[Result, float, list[int]]]) -> str:
    splits = collections.Counter("/".join(map(str, sorted(s, reverse=True))) for _, _, s in done)
    spreads = [max(s) - min(s) for _, _, s in done if s]
    shown = ", ".join(f"{k} ({v})" for k, v in splits.most_common())
    turned: Any = statistics.mean(r.rebalances for r, _, _ in done)
    rate = statistics.median(r.rate() for r, _, _ in done)
    return (
        f"| {mode} | {len(done)} | {shown} | {statistics.mean(spreads):.2f} | {turned:.1f} | "
        f"{rate:,.0f} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
