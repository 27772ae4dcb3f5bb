"""Bench: one record per message, old against new, alternately (issue 11). Each round runs the
bare grpc.aio echo, then the same one-record-per-message load (bench.load.drive) against the
server of each source tree: its CPU per message from /proc (every process of `serve --workers`),
and from the first process's writer, submissions and flushes per message (a stats file the
server writes every second: `python -m bench.onerec serve --stats FILE ...`).

    git archive main src | tar -x -C /tmp/old
    python -m bench.onerec --old /tmp/old/src [--dialect postgresql|sqlite] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.load import drive
from bench.run import (
    ROOT,
    cpu_seconds,
    scratch_database,
    server_pids,
    start_echo,
    start_server_with_http,
)


def serve_with_stats(argv: list[str]) -> int:
    """`turnstream serve`, writing its writer's stats to --stats every second (this process's
    writer only: a --workers process runs plain `turnstream serve`)."""
    from turnstream import cli
    from turnstream.store import writer as writer_module

    path, argv = argv[1], argv[2:]
    import gc

    # CPU seconds the collector ran (thread_time), per generation: GC's cost per message.
    gc_seconds = [0.0, 0.0, 0.0]
    began = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.thread_time()
        else:
            gc_seconds[info["generation"]] += time.thread_time() - began[0]

    gc.callbacks.append(timed)
    if os.environ.get("BENCH_GC"):
        gc.set_threshold(*map(int, os.environ["BENCH_GC"].split(",")))
    started = writer_module.Writer.start

    async def start(self: Any) -> None:
        await started(self)
        if os.environ.get("BENCH_FREEZE"):
            gc.freeze()

        loop = asyncio.get_running_loop()

        def dump() -> None:
            stats = self.stats
            out = {
                "flushes": stats.flushes,
                "batches": stats.batches,
                "rows": stats.rows,
                "submissions": getattr(stats, "submissions", stats.batches),
                "joined": getattr(stats, "joined", 0),
                "gc_seconds": gc_seconds,
            }
            Path(path + ".tmp").write_text(json.dumps(out))
            os.replace(path + ".tmp", path)
            loop.call_later(1.0, dump)

        dump()

    writer_module.Writer.start = start  # type: ignore[method-assign]
    return cli.main(["serve", *argv])


def start_server(url: str, workers: int, pythonpath: str | None, stats: str) -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = (pythonpath + os.pathsep if pythonpath else "") + str(ROOT)
    proc, target, _ = start_server_with_http(
        url, workers, command=("bench.onerec", "serve", stats), env=env
    )
    time.sleep(1.0)
    return proc, target


def threads(pid: int) -> dict[str, float]:
    """CPU seconds of one process's threads so far: its event loop (the main thread), grpc's
    own threads (event_engine, timers), and the rest (the writer's lane, executors)."""
    out = {"loop": 0.0, "grpc": 0.0, "other": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        key = "loop" if tid == str(pid) else "other" if name == "python" else "grpc"
        out[key] += cpu
    return out


def one(url: str, args: argparse.Namespace, pythonpath: str | None, tag: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = f"{tmp}/stats.json"
        proc, target = start_server(url, args.workers, pythonpath, stats_file)
        try:
            pids = server_pids(proc)
            before, split = cpu_seconds(pids), threads(proc.pid)
            result = asyncio.run(
                drive(
                    target,
                    args.streams,
                    args.records,
                    1,
                    window=args.window,
                    rate=args.rate,
                    prefix=tag,
                )
            )
            cpu = cpu_seconds(pids) - before
            after = threads(proc.pid)
            time.sleep(1.5)
            stats = json.loads(Path(stats_file).read_text())
        finally:
            proc.terminate()
            proc.wait(60)
    messages = stats["submissions"] + stats["joined"]
    per = 1e6 / messages if messages else float("nan")
    return {
        "loop_us": (after["loop"] - split["loop"]) * per,
        "lane_us": (after["other"] - split["other"]) * per,
        "grpc_us": (after["grpc"] - split["grpc"]) * per,
        "gc_us": sum(stats["gc_seconds"]) * per,
        "rate": result.rate(),
        "cpu_us": cpu / result.records * 1e6,
        "p50": result.pct(50),
        "p99": result.pct(99),
        "submissions_per_message": stats["submissions"] / messages if messages else float("nan"),
        "messages_per_flush": messages / stats["flushes"] if stats["flushes"] else float("nan"),
        "first_process_messages": messages,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve_with_stats(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the old tree's src directory (git archive)")
    p.add_argument("--new", default=str(ROOT / "src"), help="the new tree's src directory")
    p.add_argument("--dialect", choices=["postgresql", "sqlite"], default="postgresql")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rate", type=float, default=None, help="messages/s in all (paced)")
    args = p.parse_args()
    if args.dialect == "sqlite":
        args.workers = 1
    got: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    echoes: list[float] = []
    with scratch_database(args.dialect, "onerec") as url:
        for r in range(args.rounds):
            echo_proc, echo_target = start_echo()
            try:
                echo = asyncio.run(
                    drive(echo_target, args.streams, args.records, 1, window=args.window)
                )
            finally:
                echo_proc.terminate()
                echo_proc.wait(30)
            echoes.append(echo.rate())
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for name in order:
                tree = args.old if name == "old" else args.new
                res = one(url, args, tree, f"r{r}-{name}")
                got[name].append(res)
                print(
                    f"round {r} {name}: {res['rate']:,.0f} msg/s ({res['rate'] / echo.rate():.0%}"
                    f" of echo {echo.rate():,.0f}), CPU {res['cpu_us']:.0f} µs/message, p50/p99"
                    f" {res['p50']:.0f}/{res['p99']:.0f} ms, submissions/message"
                    f" {res['submissions_per_message']:.2f}, messages/flush"
                    f" {res['messages_per_flush']:.1f}; first process per message: loop"
                    f" {res['loop_us']:.0f}, lane+other {res['lane_us']:.0f}, grpc"
                    f" {res['grpc_us']:.0f}, gc {res['gc_us']:.0f} µs",
                    flush=True,
                )
    echo_median = statistics.median(echoes)
    print(f"\nmedians over {args.rounds} rounds ({args.dialect}, --workers {args.workers}):")
    for name, runs in got.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(x[key] for x in runs)

        print(
            f"  {name}: {med('rate'):,.0f} msg/s = {med('rate') / echo_median:.0%} of echo"
            f" {echo_median:,.0f}; CPU {med('cpu_us'):.0f} µs/message; p50/p99"
            f" {med('p50'):.0f}/{med('p99'):.0f} ms; submissions/message"
            f" {med('submissions_per_message'):.2f};"
            f" messages/flush {med('messages_per_flush'):.1f};"
            f" first process per message: loop {med('loop_us'):.0f}, lane+other"
            f" {med('lane_us'):.0f}, grpc {med('grpc_us'):.0f}, gc {med('gc_us'):.0f} µs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
