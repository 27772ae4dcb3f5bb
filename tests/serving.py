"""Test support: a real turnstream Server (real grpc.aio, real database) on free ports, in the
test's own event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from turnstream.config import Settings
from turnstream.server import Server
from turnstream.v1 import ingest_pb2_grpc


@contextlib.asynccontextmanager
async def running_server(database_url: str, **overrides: Any) -> AsyncIterator[Server]:
    # Free ports unless the test pins one (a restart on the same address, say).
    options = {"grpc_addr": "127.0.0.1:0", "http_addr": "127.0.0.1:0", **overrides}
    settings = Settings.from_env(env={}, database_url=database_url, **options)
    server = Server(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=5.0)


@contextlib.asynccontextmanager
async def ingest_stub(server: Server) -> AsyncIterator[ingest_pb2_grpc.IngestServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)
