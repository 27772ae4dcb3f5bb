"""More than one machine: three `turnstream serve` processes on one PostgreSQL (migrated once by
`turnstream migrate`, as the Kubernetes Job does), and SDK StreamWriters whose connections move
between them while replicas are SIGKILLed, drained (SIGTERM) and restarted. Replicas keep no
state of their own — offsets and fencing live in the `streams` table — so wherever a stream
resumes, everything acked is stored exactly once and every stream ends at the offset it sent.

Two ways of moving: most writers talk to a small TCP proxy of their own (a load balancer in
miniature) that the test points at another replica, cutting the client side at once and the
server side a moment later, so the old replica may still commit while the new one opens the
stream (the fencing race); two writers use a gRPC multi-address target with round_robin, the way
a client balances over a headless Service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_chaos import Database, check_acked_is_committed, small_turn
from tests.pgserver import free_port
from tests.server_process import ServerProcess
from turnstream.client import Client, StreamWriter

REPLICAS = 3
PROXIED = 6
BALANCED = 2
RECORDS = 3_000
# Each writer sends at about this rate, so that the run lasts ~20 s and every action lands
# while all writers are mid-stream (unpaced, they finish before the first replica restarts).
RATE = 150
CHUNK = 25
ACTIONS = 12
# TURNSTREAM_REPLICAS_SEED=<int> replays (or explores) another schedule of moves and kills.
SEED = int(os.environ.get("TURNSTREAM_REPLICAS_SEED", "20261201"))


def log(started: float, message: str) -> None:
    print(f"[replicas {time.monotonic() - started:6.1f}s] {message}", flush=True)


class MovableProxy:
    """A TCP proxy on a free local port whose upstream (a replica's gRPC port) can be changed:
    `move()` cuts every open connection — the client side at once, the server side after
    `linger` seconds, so bytes already forwarded still reach the old replica — and new
    connections go to the new upstream."""

    def __init__(self, upstream: int, rng: random.Random) -> None:
        self.upstream = upstream
        self.port = 0
        self.connections: dict[int, int] = {}  # upstream port -> connections made to it
        self._rng = rng
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = self.upstream
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:  # the replica is down: the client sees a reset and retries
            writer.transport.abort()
            return
        self.connections[upstream] = self.connections.get(upstream, 0) + 1
        pair = (writer, up_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._open.discard(pair)
            writer.transport.abort()
            up_writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    def move(self, upstream: int, linger: float) -> None:
        self.upstream = upstream
        for client, server in list(self._open):
            client.transport.abort()
            task = asyncio.create_task(self._close_later(server, linger))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _close_later(server: asyncio.StreamWriter, linger: float) -> None:
        await asyncio.sleep(linger)
        server.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client, server in list(self._open):
            client.transport.abort()
            server.transport.abort()
        for task in list(self._tasks):
            task.cancel()


def migrate(database_url: str) -> None:
    """`turnstream migrate`, once, before any replica starts (they run with --no-migrate)."""
    subprocess.run(
        [sys.executable, "-m", "turnstream.cli", "migrate", "--database-url", database_url],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.timeout(300)
async def test_three_replicas_writers_moved_and_replicas_killed_exactly_once(
    postgresql_url: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    await asyncio.to_thread(migrate, postgresql_url)
    replicas = [
        ServerProcess(
            postgresql_url,
            log_path=tmp_path / f"replica-{i}.log",
            grpc_port=free_port(),
            extra_args=("--no-migrate", "--shutdown-grace", "3"),
        )
        for i in range(REPLICAS)
    ]
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
    log(started, f"{REPLICAS} replicas up: {[r.grpc_port for r in replicas]}")

    proxies = [MovableProxy(replicas[i % REPLICAS].grpc_port, rng) for i in range(PROXIED)]
    for proxy in proxies:
        await proxy.start()
    balanced = "ipv4:" + ",".join(r.target for r in replicas)
    round_robin = [("grpc.lb_policy_name", "round_robin")]
    ids = [f"replicas-{i}" for i in range(PROXIED + BALANCED)]
    writers = [
        StreamWriter(f"127.0.0.1:{proxy.port}", stream_id, max_batch_records=100)
        for proxy, stream_id in zip(proxies, ids, strict=False)
    ] + [
        StreamWriter(balanced, stream_id, channel_options=round_robin, max_batch_records=100)
        for stream_id in ids[PROXIED:]
    ]
    db = Database(postgresql_url)
    total = len(ids) * RECORDS
    counts = {"move": 0, "kill": 0, "term": 0}

    async def produce(writer: StreamWriter, execution_id: str) -> None:
        await writer.start()
        for n in range(RECORDS):
            assert await writer.turn(small_turn(execution_id, n)) == n
            if n % CHUNK == CHUNK - 1:
                await asyncio.sleep(CHUNK / RATE)
        await writer.flush()

    def live_other_than(index: int) -> int:
        choices = [i for i, r in enumerate(replicas) if i != index and r.running]
        return rng.choice(choices)

    async def chaos(producers: list[asyncio.Task[None]]) -> None:
        for _ in range(ACTIONS):
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            if all(p.done() for p in producers):
                return
            action = rng.choice(["move", "move", "kill", "term"])
            counts[action] += 1
            if action == "move":
                proxy = rng.choice(proxies)
                current = next(i for i, r in enumerate(replicas) if r.grpc_port == proxy.upstream)
                to = live_other_than(current)
                proxy.move(replicas[to].grpc_port, linger=rng.uniform(0.0, 0.2))
                log(started, f"move a writer {current} -> {to}")
                continue
            victim = rng.randrange(REPLICAS)
            seen = [w.committed_offset for w in writers]
            if action == "kill":
                await asyncio.to_thread(replicas[victim].kill)
            else:
                await asyncio.to_thread(replicas[victim].terminate, 10.0)
            log(started, f"{action} replica {victim} at {sum(seen):,}/{total:,} acked")
            await check_acked_is_committed(db, ids, seen, started)
            # The load balancer notices: connections to the victim go to the others.
            for proxy in proxies:
                if proxy.upstream == replicas[victim].grpc_port:
                    proxy.move(replicas[live_other_than(victim)].grpc_port, linger=0.0)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await asyncio.to_thread(replicas[victim].start)
            log(started, f"  replica {victim} restarted")

    try:
        producers = [asyncio.create_task(produce(w, i)) for w, i in zip(writers, ids, strict=True)]
        await chaos(producers)
        await asyncio.gather(*producers)
        for writer in writers:
            await writer.close()
        log(started, f"all {total:,} records acked; actions {counts}")

        for writer in writers:
            assert writer.committed_offset == RECORDS, writer.stream_id
            assert (writer.acked, writer.rejected) == (RECORDS, 0), writer.stream_id
        # Every replica answers for every stream: the offsets are the database's.
        for replica in replicas:
            async with Client(replica.target) as client:
                for execution_id in ids:
                    assert await client.get_stream(execution_id) == RECORDS
        for execution_id in ids:
            stored = await asyncio.to_thread(db.turns, execution_id)
            sent = [(n, "claude-haiku-4-5", n % 997, 7) for n in range(RECORDS)]
            assert stored == sent, execution_id  # each record once, as sent
        assert await asyncio.to_thread(db.scalar, "SELECT count(*) FROM turns") == total
        assert await asyncio.to_thread(db.scalar, "SELECT count(*) FROM rejected_records") == 0
        # The connections did move: the proxied writers reached more than one replica.
        reached_replicas = {port for p in proxies for port in p.connections}
        assert len(reached_replicas) == REPLICAS
        assert sum(len(p.connections) > 1 for p in proxies) >= 1
        assert counts["kill"] + counts["term"] >= 1
        log(
            started,
            f"exactly once: {total:,} rows; reconnects {sum(w.reconnects for w in writers)}, "
            f"resends {sum(w.resends for w in writers):,}",
        )
    finally:
        for writer in writers:
            await writer.close(flush=False)
        for proxy in proxies:
            await proxy.close()
        await asyncio.gather(*(asyncio.to_thread(r.terminate, 10.0) for r in replicas))
        db.engine.dispose()
