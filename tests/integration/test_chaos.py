"""Fault injection: the server is a real subprocess, SIGKILLed at random moments while 8 SDK
StreamWriters send 20,000 turns each, and restarted on the same port, 10 times, on SQLite and on
PostgreSQL. After every kill, everything a writer saw acked is in the database (ack means
committed); at the end each stream holds exactly what it sent, once, at committed offset 20,000."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.dbutil import assert_rollups_exact
from tests.server_process import ServerProcess
from turnstream.client import Client, StreamWriter
from turnstream.v1 import records_pb2

pytestmark = pytest.mark.slow

STREAMS = 8
RECORDS = 20_000
CYCLES = 10
# TURNSTREAM_CHAOS_SEED=<int> replays (or explores) another schedule of kills.
SEED = int(os.environ.get("TURNSTREAM_CHAOS_SEED", "20261101"))
T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)


def small_turn(execution_id: str, n: int) -> records_pb2.Turn:
    turn = records_pb2.Turn(
        execution_id=execution_id,
        turn_number=n,
        model="claude-haiku-4-5",
        input_tokens=n % 997,
        output_tokens=7,
    )
    turn.started_at.FromSeconds(int(T0.timestamp()) + n)
    return turn


def log(started: float, message: str) -> None:
    print(f"[chaos {time.monotonic() - started:6.1f}s] {message}", flush=True)


class Database:
    """What the database holds, read directly (not through the server being killed)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)

    def durable_prefix(self, execution_id: str, below: int) -> tuple[int, int]:
        """(turns stored with turn_number < below, the stream's committed offset)."""
        with self.engine.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT count(*) FROM turns WHERE execution_id = :e AND turn_number < :n"),
                {"e": execution_id, "n": below},
            ).scalar_one()
            committed = conn.execute(
                sa.text("SELECT committed_offset FROM streams WHERE stream_id = :s"),
                {"s": execution_id},
            ).scalar_one_or_none()
        return int(stored), int(committed or 0)

    def turns(self, execution_id: str) -> list[tuple[int, str, int, int]]:
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.text(
                    "SELECT turn_number, model, input_tokens, output_tokens FROM turns "
                    "WHERE execution_id = :e ORDER BY turn_number"
                ),
                {"e": execution_id},
            )
            return [(int(a), str(b), int(c), int(d)) for a, b, c, d in result]

    def scalar(self, query: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(query)).scalar_one())


async def check_acked_is_committed(
    db: Database, ids: Sequence[str], acked: Sequence[int], started: float
) -> None:
    for execution_id, seen in zip(ids, acked, strict=True):
        stored, committed = await asyncio.to_thread(db.durable_prefix, execution_id, seen)
        assert stored == seen, f"{execution_id}: {seen} acked, only {stored} stored"
        assert committed >= seen, f"{execution_id}: {seen} acked, committed {committed}"
    log(started, f"  every acked record is stored ({sum(acked):,} acked)")


@pytest.mark.timeout(900)
async def test_sigkill_at_random_moments_loses_nothing_and_stores_nothing_twice(
    database_url: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    dialect = database_url.split(":", 1)[0]
    server = ServerProcess(database_url, log_path=tmp_path / "server.log")
    await asyncio.to_thread(server.start)
    log(started, f"{dialect}, seed {SEED}: server up on {server.target} (log {server.log_path})")

    ids = [f"chaos-{i}" for i in range(STREAMS)]
    writers = [StreamWriter(server.target, stream_id) for stream_id in ids]
    db = Database(database_url)
    total = STREAMS * RECORDS
    # Kill points as shares of all records acked, so every kill lands mid-stream.
    kill_at = sorted(rng.uniform(0.03, 0.95) * total for _ in range(CYCLES))

    async def produce(writer: StreamWriter, execution_id: str) -> None:
        await writer.start()
        for n in range(RECORDS):
            assert await writer.turn(small_turn(execution_id, n)) == n
        await writer.flush()

    async def reached(threshold: float) -> None:
        while True:
            if sum(w.acked for w in writers) >= threshold:
                return
            await asyncio.sleep(0.005)

    async def chaos() -> None:
        for cycle, threshold in enumerate(kill_at, 1):
            await reached(threshold)
            await asyncio.sleep(rng.uniform(0.0, 0.2))  # a random protocol moment
            seen = [w.committed_offset for w in writers]
            server.kill()
            log(started, f"cycle {cycle}/{CYCLES}: SIGKILL at {sum(seen):,}/{total:,} acked")
            await check_acked_is_committed(db, ids, seen, started)
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await asyncio.to_thread(server.start)
            log(started, f"  restarted (start #{server.starts})")

    try:
        producers = [asyncio.create_task(produce(w, i)) for w, i in zip(writers, ids, strict=True)]
        await chaos()
        await asyncio.gather(*producers)
        for writer in writers:
            await writer.close()
        log(started, f"all {total:,} records acked")

        for writer in writers:
            assert writer.committed_offset == RECORDS, writer.stream_id
            assert (writer.acked, writer.rejected) == (RECORDS, 0), writer.stream_id
        async with Client(server.target) as client:
            for execution_id in ids:
                assert await client.get_stream(execution_id) == RECORDS
        for execution_id in ids:
            stored = await asyncio.to_thread(db.turns, execution_id)
            sent = [
                (n, "claude-haiku-4-5", n % 997, 7) for n in range(RECORDS)
            ]  # one row per record, each record exactly as sent
            assert len(stored) == RECORDS, f"{execution_id}: {len(stored)} rows"
            assert stored == sent, execution_id
        assert await asyncio.to_thread(db.scalar, "SELECT count(*) FROM turns") == total
        assert await asyncio.to_thread(db.scalar, "SELECT count(*) FROM rejected_records") == 0
        assert (
            await asyncio.to_thread(
                db.scalar, f"SELECT count(*) FROM streams WHERE committed_offset = {RECORDS}"
            )
            == STREAMS
        )
        # The dashboard's rollups, rebuilt in every flush that stored a resent batch, agree.
        await asyncio.to_thread(assert_rollups_exact, database_url)
        log(
            started,
            f"{dialect}: exactly once: {total:,} rows; reconnects "
            f"{sum(w.reconnects for w in writers)}, resends {sum(w.resends for w in writers):,}",
        )
    finally:
        for writer in writers:
            await writer.close(flush=False)
        await asyncio.to_thread(server.terminate, 10.0)
        db.engine.dispose()
