"""`serve --workers 2` spreads Append streams evenly (doors/balance.py): SDK writers that all
start on one shared connection (grpc shares one TCP connection among a process's channels to
the same target) end within one stream of even, each record stored once; a client that does
not declare it can reconnect is never turned away, however lopsided its streams land."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import struct
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.dbutil import rows
from tests.integration.test_append import batch, next_ack, open_stream, turns
from tests.integration.test_cli import free_port, wait_healthy
from tests.ops.test_metrics import Samples, scrape, value, workers
from tests.pgserver import _children
from turnstream.client.stream import StreamWriter
from turnstream.doors import balance
from turnstream.v1 import ingest_pb2_grpc

STREAMS = 8
RECORDS = 40
START = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)


def per_process(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["pid"]: v
        for (name, labels), v in samples.items()
        if name == "turnstream_process_open_streams"
    }


async def both_serving(http_port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until both processes published their gauges (the second starts after the first) and
    both take part in the balancing: each writes its pid into its slot of the shared counts
    (doors/balance.py) only once it serves, which is after its metrics appear. Streams opened
    before that would be taken by the first process unchecked, as designed for start-up."""
    for _ in range(100):
        if len(per_process(await scrape(http_port))) == 2 and balancing(proc) == 2:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the second process never published its metrics and its slot")


def balancing(proc: subprocess.Popen[bytes]) -> int:
    """How many slots of the shared counts file carry a serving pid (the file is named in the
    worker's environment, balance.ENV = "INDEX:PATH")."""
    for pid in _children(proc.pid):
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            for entry in environ:
                name, _, value = entry.decode(errors="replace").partition("=")
                if name == balance.ENV:
                    data = Path(value.partition(":")[2]).read_bytes()
                    slots = struct.iter_unpack("<ii", data)
                    return sum(1 for serving_pid, _ in slots if serving_pid > 0)
    return 0


async def settled_split(http_port: int) -> dict[str, float]:
    """Each process's open streams once both processes published all STREAMS of them (each
    writes its own metrics file about every second; counts only grow while streams open)."""
    split: dict[str, float] = {}
    for _ in range(100):
        split = per_process(await scrape(http_port))
        if len(split) == 2 and sum(split.values()) == STREAMS:
            return split
        await asyncio.sleep(0.2)
    raise AssertionError(f"the processes never showed {STREAMS} streams: {split}")


def two_workers(url: str, tmp_path: Path) -> tuple[list[str], dict[str, str], int, int]:
    grpc_port, http_port = free_port(), free_port()
    args = [
        "--grpc-addr", f"127.0.0.1:{grpc_port}",
        "--http-addr", f"127.0.0.1:{http_port}",
        "--database-url", url,
        "--workers", "2",
    ]  # fmt: skip
    env = {**os.environ, "TURNSTREAM_METRICS_DIR": str(tmp_path / "metrics")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return args, env, grpc_port, http_port


async def test_sdk_streams_end_within_one_of_even(database_url: str, tmp_path: Path) -> None:
    args, env, grpc_port, http_port = two_workers(database_url, tmp_path)
    with workers(args, tmp_path / "serve.log", env) as proc:
        await asyncio.to_thread(wait_healthy, http_port, proc)
        await both_serving(http_port, proc)
        target = f"127.0.0.1:{grpc_port}"
        writers = [
            StreamWriter(target, f"s{i}", execution_id=f"e{i}", linger=0.01) for i in range(STREAMS)
        ]
        await asyncio.gather(*(w.start() for w in writers))
        split = await settled_split(http_port)
        for w in writers:
            for n in range(RECORDS):
                await w.turn(turn_number=n + 1, model="gpt-4o", started_at=START)
            await w.flush()
            assert (w.committed_offset, w.rejected) == (RECORDS, 0), w.rejections[:1]
        rebalanced = value(await scrape(http_port), "turnstream_streams_rebalanced_total")
        for w in writers:
            await w.close()
    counts = sorted(split.values())
    assert counts[1] - counts[0] <= 1, split
    # They all started on one shared connection, so on one process: some had to move.
    moved = sum(w.rebalances for w in writers)
    assert moved >= STREAMS // 2 - 1, moved
    assert rebalanced == moved
    for i in range(STREAMS):
        stored = rows(database_url, "turns", execution_id=f"e{i}")
        assert sorted(r["turn_number"] for r in stored) == list(range(1, RECORDS + 1))
        stream = rows(database_url, "streams", stream_id=f"s{i}")
        assert [s["committed_offset"] for s in stream] == [RECORDS]


@pytest.mark.postgresql
async def test_a_client_without_the_header_is_never_turned_away(
    postgresql_url: str, tmp_path: Path
) -> None:
    args, env, grpc_port, http_port = two_workers(postgresql_url, tmp_path)
    with workers(args, tmp_path / "serve.log", env) as proc:
        await asyncio.to_thread(wait_healthy, http_port, proc)
        await both_serving(http_port, proc)
        # One channel: every stream on one connection, so on one process (8 / 0).
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            calls = [(await open_stream(stub, f"plain{i}"))[0] for i in range(STREAMS)]
            split = await settled_split(http_port)
            for i, call in enumerate(calls):
                await call.write(batch(0, turns(0, 3, f"plain-e{i}")))
                assert (await next_ack(call)).record_count == 3
            m = await scrape(http_port)
            for call in calls:
                await call.done_writing()
                assert await call.read() == grpc.aio.EOF
    assert sorted(split.values()) == [0, STREAMS]
    assert value(m, "turnstream_streams_rebalanced_total") == 0
