"""`make bench`: start turnstream on PostgreSQL and on SQLite, drive it with the Append load
generator (and unary Writes), and print committed-and-acked records/s, ack latency, the server's
CPU per record (from /proc), and each target of issue 11 beside its figure and its ceiling from
the same run: the database's raw ceiling, and a bare grpc.aio echo for one record per message.

    python -m bench.run [--dialect postgresql|sqlite|both] [--streams 8] [--records 20000]
    python -m bench.run --auth [--auth-rounds 3]   # the same load with API keys off and on
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import records
from bench.ceiling import ceiling
from bench.load import Result, drive, drive_unary

ROOT = Path(__file__).resolve().parent.parent
# Batches sent one at a time, alone, for the floor of ack latency (the latency targets' ceiling).
FLOOR_BATCHES = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(url: str, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    proc, target, _ = start_server_with_http(url, workers)
    return proc, target


def start_server_with_http(
    url: str,
    workers: int = 1,
    *,
    command: tuple[str, ...] = ("turnstream.cli", "serve"),
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str, str]:
    """The server as a subprocess: (process, gRPC target, HTTP base URL), once healthy.
    `command`: the module to run with its leading arguments (a bench's instrumented serve)."""
    port, http_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            *command,
            "--grpc-addr",
            target,
            "--http-addr",
            f"127.0.0.1:{http_port}",
            "--database-url",
            url,
            "--log-level",
            "WARNING",
            "--workers",
            str(workers),
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, target, f"http://127.0.0.1:{http_port}"
        except grpc.RpcError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy within 30 s")


@contextlib.contextmanager
def scratch_database(dialect: str, name: str) -> Iterator[str]:
    """A URL of an empty database for one benchmark run: a file in a temporary directory, or a
    database on a throwaway PostgreSQL server (tests/pgserver.py); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"turnstream-{name}-") as tmp:
        if dialect != "postgresql":
            yield f"sqlite:///{tmp}/{name}.db"
            return
        sys.path.insert(0, str(ROOT))
        from tests.pgserver import PgServer

        pg = PgServer()
        pg.start()
        try:
            yield pg.create_database(name)
        finally:
            pg.stop()
            pg.cleanup()


def line(name: str, r: Result, cpu: float | None = None) -> str:
    per = f"{cpu:.0f}" if cpu is not None else "—"
    return (
        f"| {name} | {r.records:,} | {r.seconds:.2f} | {r.rate():,.0f} | "
        f"{r.pct(50):.1f} | {r.pct(99):.1f} | {per} |"
    )


def _children(pid: int) -> list[int]:
    sys.path.insert(0, str(ROOT))
    from tests.pgserver import _children as children

    return children(pid)


def server_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    """The server and its --workers processes (children of the first)."""
    return [proc.pid, *_children(proc.pid)]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes so far, from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _sockets(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets on local `port` in `state` (01 established, 0A listening)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == state:
                    inodes.add(cols[9])
    return inodes


def _held(pids: list[int], inodes: set[str]) -> dict[int, int]:
    """How many of these sockets each process holds (its fds, from /proc)."""
    held = {}
    for pid in pids:
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    n += link.startswith("socket:[") and link[8:-1] in inodes
        held[pid] = n
    return held


def connections(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections to `port` held by each process (how SO_REUSEPORT and the
    rebalancing spread the clients over the workers)."""
    return _held(pids, _sockets(port, "01"))


def listening(pids: list[int], port: int) -> int:
    """How many of `pids` hold a socket listening on `port` (a worker serves once it does)."""
    return sum(1 for n in _held(pids, _sockets(port, "0A")).values() if n)


def wait_listening(proc: subprocess.Popen[bytes], workers: int, port: int) -> list[int]:
    """The server's pids once all `workers` processes listen on `port`. A fixed sleep after the
    first answers health is not enough on a busy machine: a worker still starting leaves every
    connection to the others (8/0), whatever the balancing does."""
    deadline = time.monotonic() + 60
    pids = server_pids(proc)
    while len(pids) < workers or listening(pids, port) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {workers} server processes did not all listen within 60 s")
        time.sleep(0.2)
        pids = server_pids(proc)
    time.sleep(0.2)  # a worker publishes its slot just after it listens
    return pids


async def measured(
    work: Coroutine[Any, Any, Result], pids: list[int], port: int | None = None, expect: int = 0
) -> tuple[Result, float, dict[int, int]]:
    """Run a load; the server's CPU seconds meanwhile, and (with `port`) its connection split:
    the last sample, taken every 0.1 s while the load runs, in which exactly `expect`
    connections were open (while streams open, a stream turned away to another process still
    holds its old connection for a moment: the first samples are not the split it runs at)."""
    before = cpu_seconds(pids)
    task = asyncio.ensure_future(work)
    split: dict[int, int] = {}
    while port is not None and not task.done():
        await asyncio.sleep(0.1)
        sample = connections(pids, port)
        if sum(sample.values()) == expect:
            split = sample
    result = await task
    return result, cpu_seconds(pids) - before, split


def start_echo() -> tuple[subprocess.Popen[bytes], str]:
    target = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", "--addr", target], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    return proc, target


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def bench_dialect(name: str, url: str, ceiling_url: str, args: argparse.Namespace) -> list[str]:
    print(f"\n== {name}: raw ceilings ...", flush=True)
    raw = ceiling(ceiling_url, args.ceiling_records)
    raw_turns = ceiling(ceiling_url, args.ceiling_records, mixed=False)
    print(f"   {raw:,.0f} rows/s (turns + tool calls), {raw_turns:,.0f} (turns)", flush=True)
    workers = args.workers if name == "postgresql" else args.sqlite_workers
    proc, target = start_server(url, workers)
    port = int(target.rsplit(":", 1)[1])
    # Every worker must listen before the load starts, or the first ones take every connection.
    pids = wait_listening(proc, workers, port)
    out = [
        f"\n### {name}\n",
        f"Server: `turnstream serve --workers {workers}`. Records: realistic (bench/records.py:"
        f" every field a Kubiya worker sends, a metrics Struct; one tool call with tool_input and "
        f"1.7 KB of output per {records.TOOL_CALL_EVERY} records).\n",
        f"Raw ceilings (writer SQL on prebuilt rows, 5,000 per transaction): **{raw:,.0f} rows/s**"
        f" turns + tool calls, **{raw_turns:,.0f} rows/s** turns only\n",
        "| scenario | records | s | records/s | p50 ack ms | p99 ack ms | server CPU µs/record |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    try:
        print(
            f"== {name}: {args.streams} streams x {args.records} records, batches of {args.batch}",
            flush=True,
        )
        big, cpu, split = asyncio.run(
            measured(
                drive(
                    target, args.streams, args.records, args.batch, args.window, prefix=f"{name}-b"
                ),
                pids,
                port,
                args.streams,
            )
        )
        big_cpu = cpu / big.records * 1e6
        out.append(line(f"{args.streams} streams, batch {args.batch}", big, big_cpu))
        print(
            f"   {big.rate():,.0f} rec/s ({big.rate() / raw:.0%} of ceiling), "
            f"server CPU {big_cpu:.1f} µs/record, connections per process {list(split.values())}",
            flush=True,
        )
        print(f"== {name}: unary Write of {args.write_size} turns, {args.streams} clients")
        unary, cpu, _ = asyncio.run(
            measured(
                drive_unary(
                    target, args.streams, args.write_requests, args.write_size, f"{name}-w"
                ),
                pids,
            )
        )
        unary_cpu = cpu / unary.records * 1e6
        out.append(
            line(f"{args.streams} clients, unary Write of {args.write_size}", unary, unary_cpu)
        )
        print(f"   {unary.rate():,.0f} rec/s ({unary.rate() / raw_turns:.0%} of ceiling)")
        print(f"== {name}: bare grpc.aio echo, one record per message", flush=True)
        echo_proc, echo_target = start_echo()
        try:
            echo, cpu, _ = asyncio.run(
                measured(
                    drive(
                        echo_target,
                        args.single_streams,
                        args.single_records,
                        1,
                        window=args.single_window,
                        prefix=f"{name}-e",
                    ),
                    [echo_proc.pid],
                )
            )
        finally:
            echo_proc.terminate()
            echo_proc.wait(30)
        # What gRPC alone costs per message on this machine today: the floor under the server's.
        echo_cpu = cpu / echo.records * 1e6
        out.append(
            line(f"bare grpc.aio echo, {args.single_streams} streams, 1/message", echo, echo_cpu)
        )
        print(f"   {echo.rate():,.0f} msg/s, echo CPU {echo_cpu:.0f} µs/message", flush=True)
        print(f"== {name}: one record per message, {args.single_streams} streams", flush=True)
        single, cpu, _ = asyncio.run(
            measured(
                drive(
                    target,
                    args.single_streams,
                    args.single_records,
                    1,
                    window=args.single_window,
                    prefix=f"{name}-s",
                ),
                pids,
            )
        )
        single_cpu = cpu / single.records * 1e6
        out.append(line(f"{args.single_streams} streams, 1 record/message", single, single_cpu))
        print(f"   {single.rate():,.0f} rec/s, server CPU {single_cpu:.0f} µs/message", flush=True)
        half = big.rate() / 2
        print(f"== {name}: latency at half the maximum rate ({half:,.0f} rec/s)", flush=True)
        paced, cpu, _ = asyncio.run(
            measured(
                drive(
                    target,
                    args.streams,
                    args.records // 2,
                    args.batch,
                    rate=half,
                    prefix=f"{name}-h",
                ),
                pids,
            )
        )
        out.append(line(f"paced at {half:,.0f} rec/s (half max)", paced, cpu / paced.records * 1e6))
        # The floor of ack latency: one batch at a time on an otherwise idle server, so the
        # ack waits for nobody else's work: its own preparation, its own flush and commit.
        print(f"== {name}: one batch of {args.batch} at a time, alone (latency floor)", flush=True)
        alone, cpu, _ = asyncio.run(
            measured(
                drive(
                    target,
                    1,
                    args.batch * FLOOR_BATCHES,
                    args.batch,
                    window=1,
                    rate=args.batch * 4,
                    prefix=f"{name}-a",
                ),
                pids,
            )
        )
        out.append(
            line(f"1 stream, one batch of {args.batch} at a time", alone, cpu / alone.records * 1e6)
        )
        floor = f"alone: p50 {alone.pct(50):.1f}, p99 {alone.pct(99):.1f} ms"
        spread = ", ".join(f"{n}" for n in split.values()) or "not sampled"
        # SQLite runs inside the server process: its CPU counts as the server's.
        in_process = " (incl. SQLite's own work)" if name == "sqlite" else ""
        out += [
            "",
            "| target | figure | ceiling (same run) | |",
            "|---|---:|---:|---|",
            f"| server CPU per record, batches of {args.batch}: ≤ 20 µs{in_process} | "
            f"{big_cpu:.1f} µs | — | "
            f"{verdict(big_cpu <= 20)} |",
            f"| batches of {args.batch}: ≥ 60% of the raw ceiling | {big.rate():,.0f} rec/s = "
            f"**{big.rate() / raw:.0%}** | {raw:,.0f} rows/s | "
            f"{verdict(big.rate() >= 0.6 * raw)} |",
            f"| unary Write of {args.write_size} turns: ≥ 60% of the raw ceiling | "
            f"{unary.rate():,.0f} rec/s = **{unary.rate() / raw_turns:.0%}** | "
            f"{raw_turns:,.0f} rows/s | {verdict(unary.rate() >= 0.6 * raw_turns)} |",
            f"| one record per message: ≥ 50% of a bare grpc.aio echo | {single.rate():,.0f} rec/s"
            f" = **{single.rate() / echo.rate():.0%}** | {echo.rate():,.0f} msg/s | "
            f"{verdict(single.rate() >= 0.5 * echo.rate())} |",
            f"| server CPU per message, one record per message: ≤ 80 µs | {single_cpu:.0f} µs "
            f"| echo alone: {echo_cpu:.0f} µs | {verdict(single_cpu <= 80)} |",
            f"| p99 ack at half the max rate: ≤ 100 ms | {paced.pct(99):.1f} ms | {floor} | "
            f"{verdict(paced.pct(99) <= 100)} |",
            f"| p50 ack at half the max rate: ≤ 20 ms | {paced.pct(50):.1f} ms | {floor} | "
            f"{verdict(paced.pct(50) <= 20)} |",
            f"| `--workers {workers}`: connections per process ({args.streams} streams) | "
            f"{spread} | — | |",
        ]
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dialect", choices=["postgresql", "sqlite", "both"], default="both")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--records", type=int, default=20_000, help="records per stream")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--workers", type=int, default=2, help="server processes (serve --workers)")
    p.add_argument(
        "--sqlite-workers",
        type=int,
        default=1,
        help="server processes on SQLite (they share the one file's write lock)",
    )
    p.add_argument("--window", type=int, default=4, help="un-acked batches per stream")
    p.add_argument("--single-streams", type=int, default=32)
    p.add_argument("--single-records", type=int, default=2_000)
    p.add_argument("--single-window", type=int, default=16)
    p.add_argument("--ceiling-records", type=int, default=100_000)
    p.add_argument("--write-size", type=int, default=1_000, help="turns per unary Write")
    p.add_argument("--write-requests", type=int, default=10, help="unary Writes per client")
    p.add_argument(
        "--auth",
        action="store_true",
        help="instead: the same load on a server without keys and on one with a key the load "
        "generator sends (bench/auth.py), alternately, medians",
    )
    p.add_argument("--auth-rounds", type=int, default=3)
    p.add_argument("--unary-calls", type=int, default=100, help="Write calls per caller (--auth)")
    args = p.parse_args()
    report = [
        f"## Run of {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        f"\n`python -m bench.run {' '.join(sys.argv[1:])}`".rstrip() + "\n",
    ]
    if args.auth:
        from bench.auth import compare

        for dialect in ("postgresql", "sqlite"):
            if args.dialect in (dialect, "both"):
                report += compare(dialect, args)
        print("\n".join(report))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="turnstream-bench-"))
    try:
        if args.dialect in ("postgresql", "both"):
            sys.path.insert(0, str(ROOT))
            from tests.pgserver import PgServer

            pg = PgServer()
            pg.start()
            try:
                report += bench_dialect(
                    "postgresql", pg.create_database("bench"), pg.create_database("ceiling"), args
                )
            finally:
                pg.stop()
                pg.cleanup()
        if args.dialect in ("sqlite", "both"):
            report += bench_dialect(
                "sqlite", f"sqlite:///{tmp}/bench.db", f"sqlite:///{tmp}/ceiling.db", args
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
