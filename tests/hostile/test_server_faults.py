"""Hostile conditions around a real server: a PostgreSQL that hangs (SIGSTOP: every process of
a server of our own, never the shared one), an SQLite file deleted under a running server, and
SIGTERM while the database hangs. Each must end in a bounded time with the outcome the issue
asks for: UNAVAILABLE + RetryInfo, health NOT_SERVING then SERVING by itself, nothing acked that
is not stored, an exit within --shutdown-grace + 1 s."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tests.dbutil import rows
from tests.integration.test_write import turn
from tests.pgserver import PgServer, _children
from tests.server_process import ServerProcess
from tests.serving import ingest_stub, running_server
from turnstream.server import SERVICE, Server
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    pg = PgServer()
    pg.start()
    try:
        yield pg
    finally:
        pg.cleanup()


@contextlib.contextmanager
def frozen(pg: PgServer) -> Iterator[None]:
    """SIGSTOP the postmaster and every backend: the server hangs, the kernel still ACKs TCP,
    as with a hung host or a stalled disk. Always SIGCONT on the way out."""
    postmaster = pg.postmaster_pid()
    assert postmaster is not None
    pids = [postmaster, *_children(postmaster)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    (packed,) = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    info = error_details_pb2.RetryInfo()
    packed.Unpack(info)
    return float(info.retry_delay.ToMilliseconds()) / 1000


async def health(server: Server, name: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=2
        )
        return int(response.status)


async def wait_health(server: Server, want: int, within: float) -> float:
    """Seconds until both health names report `want`; fails after `within` seconds."""
    started = time.monotonic()
    while True:
        if all([await health(server, n) == want for n in ("", SERVICE)]):
            return time.monotonic() - started
        if time.monotonic() - started > within:
            pytest.fail(f"health did not become {want} within {within} s")
        await asyncio.sleep(0.1)


def http_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def readyz(server: Server) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(http_get, server.http_port, "/readyz")


@pytest.mark.postgresql
async def test_a_frozen_postgresql_is_unavailable_and_not_serving_until_it_answers(
    own_pg: PgServer,
) -> None:
    url = own_pg.create_database("ts")
    async with running_server(url, db_timeout=2.0) as server, ingest_stub(server) as stub:
        assert (await stub.Write(ingest_pb2.WriteRequest(turns=[turn(1)]))).counts.total.created
        assert await readyz(server) == (200, {"status": "ready"})
        with frozen(own_pg):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Write(ingest_pb2.WriteRequest(turns=[turn(2)]), timeout=20)
            assert time.monotonic() - started <= 2.0 + 1.0
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "did not answer within 2 s" in (info.value.details() or "")
            assert retry_delay(info.value) > 0
            await wait_health(server, NOT_SERVING, within=1.0)
            status, body = await readyz(server)
            assert status == 503 and "not answering" in body["reason"]
            # While it hangs, callers hear UNAVAILABLE at once instead of waiting again.
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await stub.Write(ingest_pb2.WriteRequest(turns=[turn(3)]), timeout=20)
            assert again.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 0.5
            await asyncio.sleep(3)  # the probe keeps failing while frozen
            assert await health(server) == NOT_SERVING
        await wait_health(server, SERVING, within=5.0)
        assert await readyz(server) == (200, {"status": "ready"})
        resumed = await stub.Write(ingest_pb2.WriteRequest(turns=[turn(2), turn(3)]), timeout=10)
        assert resumed.counts.total.created == 2
    assert sorted(r["turn_number"] for r in rows(url, "turns")) == [1, 2, 3]


async def test_a_deleted_sqlite_file_is_detected_before_any_ack(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    url = f"sqlite:///{path}"
    async with running_server(url) as server, ingest_stub(server) as stub:
        assert (await stub.Write(ingest_pb2.WriteRequest(turns=[turn(1)]))).counts.total.created
        path.unlink()
        for n in (2, 3):  # and it stays so: a restart is the way out
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Write(ingest_pb2.WriteRequest(turns=[turn(n)]), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert info.value.details() == (
                f"the SQLite database file {path} was deleted or replaced while turnstream was "
                "running; nothing of this request was stored; restart turnstream"
            )
        await wait_health(server, NOT_SERVING, within=1.0)
        status, body = await readyz(server)
        assert status == 503 and "was deleted or replaced" in body["reason"]


async def test_a_replaced_sqlite_file_is_detected_too(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    url = f"sqlite:///{path}"
    async with running_server(url) as server, ingest_stub(server) as stub:
        assert (await stub.Write(ingest_pb2.WriteRequest(turns=[turn(1)]))).counts.total.created
        replacement = tmp_path / "other.db"
        replacement.write_bytes(path.read_bytes())
        replacement.replace(path)  # what a restore from backup or a careless `cp` does
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Write(ingest_pb2.WriteRequest(turns=[turn(2)]), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "was deleted or replaced" in (info.value.details() or "")


async def test_a_locked_sqlite_file_is_unavailable_within_the_timeout(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock longer than db_timeout (busy_timeout derives
    from it): UNAVAILABLE in time, NOT_SERVING until the lock is released, then writes again."""
    path = tmp_path / "x.db"
    url = f"sqlite:///{path}"
    async with running_server(url, db_timeout=1.0) as server, ingest_stub(server) as stub:
        assert (await stub.Write(ingest_pb2.WriteRequest(turns=[turn(1)]))).counts.total.created
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Write(ingest_pb2.WriteRequest(turns=[turn(2)]), timeout=10)
            assert time.monotonic() - started <= 1.0 + 1.0
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            await wait_health(server, NOT_SERVING, within=1.0)
            await asyncio.sleep(2.5)  # probes keep failing while the lock is held
            assert await health(server) == NOT_SERVING
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_health(server, SERVING, within=3.0)
        again = await stub.Write(ingest_pb2.WriteRequest(turns=[turn(2)]), timeout=10)
        assert again.counts.total.created == 1


# -- SIGTERM -------------------------------------------------------------------------------------

GRACE = 2.0


def write_in_background(target: str) -> tuple[threading.Thread, list[Any]]:
    """A Write sent now from another thread; its outcome (response or error) lands in the list."""
    outcome: list[Any] = []

    def send() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            try:
                outcome.append(stub.Write(ingest_pb2.WriteRequest(turns=[turn(7)]), timeout=30))
            except grpc.RpcError as error:
                outcome.append(error)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.postgresql
@pytest.mark.parametrize("database", ["answering", "frozen"])
def test_sigterm_exits_within_grace_plus_one_second(
    database: str, own_pg: PgServer, tmp_path: Path
) -> None:
    url = own_pg.create_database("ts")
    # db_timeout above the grace: only the shutdown deadline can end the hung call in time.
    args = ("--shutdown-grace", str(GRACE), "--db-timeout", "5")
    with ServerProcess(url, log_path=tmp_path / "server.log", extra_args=args) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            stub.Write(ingest_pb2.WriteRequest(turns=[turn(1)]), timeout=10)
        freezing = frozen(own_pg) if database == "frozen" else contextlib.nullcontext()
        with freezing:
            thread, outcome = write_in_background(server.target)
            time.sleep(0.5)  # the Write is in the server, waiting on the database (if frozen)
            started = time.monotonic()
            code = server.terminate(timeout=30)
            elapsed = time.monotonic() - started
            thread.join(10)
        assert code == 0, server.log_tail()
        assert elapsed <= GRACE + 1.0, f"exit took {elapsed:.2f} s\n{server.log_tail()}"
    stored = sorted(r["turn_number"] for r in rows(url, "turns"))
    if database == "answering":
        assert isinstance(outcome[0], ingest_pb2.WriteResponse)
        assert stored == [1, 7]
    else:
        # Never acked; whatever the frozen server does with it later, the client retries.
        assert isinstance(outcome[0], grpc.RpcError)
        assert outcome[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
