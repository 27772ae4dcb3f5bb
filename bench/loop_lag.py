"""How long the server's event loop is held under batched Append load: the server runs in this
process with a probe task (sleep 1 ms, note how late it wakes); the load generator runs in a
subprocess (bench/load.py), batches of 500, paced.

    python -m bench.loop_lag [--rate 4000] [--streams 8] [--records 5000]

SQLite only: the in-process server on a throwaway PostgreSQL answered UNAVAILABLE (not looked
into; the server subprocess of bench.run is the way to measure PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from bench.run import scratch_database
from tests.serving import running_server

PROBE = 0.001


async def measure(url: str, args: argparse.Namespace) -> str:
    async with running_server(url) as server:
        lags: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            loop = asyncio.get_running_loop()
            while not done.is_set():
                t = loop.time()
                await asyncio.sleep(PROBE)
                lags.append(loop.time() - t - PROBE)

        task = asyncio.create_task(probe())
        code = (
            "import asyncio; from bench.load import drive; "
            f"r = asyncio.run(drive('127.0.0.1:{server.grpc_port}', {args.streams}, "
            f"{args.records}, 500, rate={args.rate}, prefix='lag')); "
            "print(f'{r.rate():,.0f} rec/s, ack p50 {r.pct(50):.1f} p99 {r.pct(99):.1f} ms')"
        )
        started = time.process_time()
        load = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await load.communicate()
        cpu = time.process_time() - started
        done.set()
        await task
    lags.sort()
    n = len(lags)
    return (
        f"{out.decode().strip()}; loop late p50 {lags[n // 2] * 1e3:.2f} "
        f"p99 {lags[int(n * 0.99)] * 1e3:.1f} p99.9 {lags[int(n * 0.999)] * 1e3:.1f} "
        f"max {lags[-1] * 1e3:.1f} ms; server process CPU {cpu:.1f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=4000.0, help="records/s in all")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--records", type=int, default=5000, help="records per stream")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    with scratch_database("sqlite", "lag") as url:
        print(asyncio.run(measure(url, args)))


if __name__ == "__main__":
    main()
