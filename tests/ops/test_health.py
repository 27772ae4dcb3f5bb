"""Health as a platform probes it: gRPC `grpc.health.v1` and HTTP /readyz turn NOT_SERVING / 503
as soon as a drain begins (SIGTERM) and while the database does not answer, and SERVING again by
themselves when it does; /healthz stays 200 through both (liveness must not kill a draining or
a waiting process). Reflection is on unless turned off."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.hostile.test_server_faults import (
    NOT_SERVING,
    SERVING,
    frozen,
    health,
    http_get,
    own_pg,  # noqa: F401 (a fixture)
    wait_health,
)
from tests.integration.test_append import batch, next_ack, open_stream, turns
from tests.integration.test_write import turn
from tests.ops.test_metrics import scrape, value
from tests.pgserver import PgServer
from tests.serving import ingest_stub, running_server
from turnstream.config import Settings
from turnstream.server import SERVICE, Server
from turnstream.v1 import ingest_pb2


async def probes(server: Server) -> tuple[tuple[int, Any], tuple[int, Any]]:
    healthz = await asyncio.to_thread(http_get, server.http_port, "/healthz")
    readyz = await asyncio.to_thread(http_get, server.http_port, "/readyz")
    return healthz, readyz


async def test_a_drain_turns_health_not_serving_at_once_and_liveness_stays_200(
    tmp_path: Path,
) -> None:
    """A batch waits on SQLite's write lock (held by another process) when SIGTERM's drain
    begins: for as long as the drain lasts, both health names say NOT_SERVING and /readyz 503
    "draining", while /healthz answers 200."""
    path = tmp_path / "x.db"
    settings = Settings.from_env(
        env={},
        database_url=f"sqlite:///{path}",
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        db_timeout=5.0,
    )
    server = Server(settings)
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with ingest_stub(server) as stub:
            assert await health(server) == SERVING
            call, _ = await open_stream(stub, "drained")
            await call.write(batch(0, turns(0, 1)))
            await next_ack(call)
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                await call.write(batch(1, turns(1, 1)))  # waits for the lock
                await asyncio.sleep(0.2)
                stopping = asyncio.create_task(server.stop(grace=8.0))
                await wait_health(server, NOT_SERVING, within=2.0)
                (live, live_body), (ready, ready_body) = await probes(server)
                assert (live, live_body) == (200, {"status": "draining"})
                assert (ready, ready_body) == (503, {"status": "draining"})
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            # The batch read before the drain is committed and acked, then `drain`.
            assert (await next_ack(call)).committed_offset == 2
            assert (await call.read()).WhichOneof("kind") == "drain"
        await asyncio.wait_for(stopping, 10)
    finally:
        if stopping is None:
            await server.stop(grace=2.0)


@pytest.mark.postgresql
async def test_a_database_outage_turns_readiness_off_and_back_on_by_itself(
    own_pg: PgServer,  # noqa: F811
) -> None:
    url = own_pg.create_database("ts")
    async with running_server(url, db_timeout=1.0) as server, ingest_stub(server) as stub:
        await stub.Write(ingest_pb2.WriteRequest(turns=[turn(1)]))
        assert value(await scrape(server.http_port), "turnstream_database_up") == 1
        with frozen(own_pg):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Write(ingest_pb2.WriteRequest(turns=[turn(2)]), timeout=10)
            await wait_health(server, NOT_SERVING, within=2.0)
            (live, _), (ready, body) = await probes(server)
            assert live == 200 and ready == 503 and body["status"] == "unavailable"
            assert value(await scrape(server.http_port), "turnstream_database_up") == 0
        # Nobody calls: the writer's probe alone finds the database back.
        await wait_health(server, SERVING, within=5.0)
        (live, _), (ready, _) = await probes(server)
        assert live == 200 and ready == 200
        assert value(await scrape(server.http_port), "turnstream_database_up") == 1
        assert await health(server, SERVICE) == SERVING


async def list_services(server: Server) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for response in stub.ServerReflectionInfo(one(), timeout=5):
            return [s.name for s in response.list_services_response.service]
    return []


async def test_reflection_is_on_by_default_and_can_be_turned_off(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        assert SERVICE in await list_services(server)
    async with running_server(sqlite_url, reflection=False) as server:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await list_services(server)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
