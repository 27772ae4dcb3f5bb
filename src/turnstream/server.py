"""Entrypoint: composes the doors, the core and the writer into one process, with health,
reflection and an HTTP listener; shuts down by draining, never by cancelling queued work."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys

import grpc
import sqlalchemy as sa
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from turnstream.config import Settings, split_addr
from turnstream.core.pipeline import Pipeline
from turnstream.core.pricing import PriceTable
from turnstream.doors.grpc_guard import add_guarded
from turnstream.doors.grpc_ingest import IngestServicer
from turnstream.doors.grpc_stream import StreamDoor
from turnstream.store.engine import create_engine, migrate
from turnstream.store.writer import Writer
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name

# Keepalive and connection age that suit meshes: pings keep NAT/LB state alive, a max age lets
# a load balancer rebalance long-lived clients (streams resume on any replica).
GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class Server:
    """One turnstream process. `start()` binds both listeners; `stop()` drains."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: sa.Engine | None = None
        self.writer: Writer | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.health = health.aio.HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._streaming: StreamDoor | None = None
        self._serving = False

    async def start(self) -> None:
        s = self.settings
        prices = PriceTable.load(s.prices_file)
        self.engine = create_engine(s.database_url, db_timeout=s.db_timeout)
        if s.auto_migrate:
            await asyncio.to_thread(migrate, self.engine)
        self.writer = Writer(
            self.engine,
            max_flush_rows=s.max_flush_rows,
            max_pending_rows=s.max_pending_rows,
            timeout=s.db_timeout,
        )
        await self.writer.start()
        pipeline = Pipeline(prices)
        self._streaming = StreamDoor(pipeline, self.writer, s)
        servicer = IngestServicer(pipeline, self.writer, self._streaming)

        # Without --workers a second server on the same port must fail, not silently share it.
        reuse = [("grpc.so_reuseport", 1 if s.reuse_port else 0)]
        sizes = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
        ]
        self._grpc = grpc.aio.server(options=GRPC_OPTIONS + sizes + reuse)
        add_guarded(
            ingest_pb2_grpc.add_IngestServiceServicer_to_server,
            servicer,
            self._grpc,
            servicer.malformed,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            [
                SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._grpc,
        )
        host, port = split_addr(s.grpc_addr)
        self.grpc_port = self._grpc.add_insecure_port(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        )
        if self.grpc_port == 0:
            raise OSError(f"cannot listen on {s.grpc_addr} (gRPC): address in use or not local")
        await self._grpc.start()
        await self._start_http()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        log.info(
            "turnstream serving gRPC on %s:%d, HTTP on %s:%d, database %s",
            host,
            self.grpc_port,
            split_addr(s.http_addr)[0],
            self.http_port,
            self.engine.url.render_as_string(hide_password=True),
        )

    async def _start_http(self) -> None:
        host, port = split_addr(self.settings.http_addr)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.settings.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen on {self.settings.http_addr} (HTTP): {exc.strerror}"
            ) from exc
        self.http_port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/healthz", self._healthz)])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._http = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))

    async def _healthz(self, _request: Request) -> JSONResponse:
        if self._serving:
            return JSONResponse({"status": "serving"})
        return JSONResponse({"status": "draining"}, status_code=503)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let streams answer what they read, let unary calls finish,
        commit everything queued, then close. Nothing acked is lost; nothing read is dropped."""
        grace = self.settings.shutdown_grace if grace is None else grace
        self._serving = False
        await self.health.enter_graceful_shutdown()
        if self._streaming is not None:
            try:
                await self._streaming.drain(grace)
            except Exception:  # shutdown goes on: the writer must still commit what is queued
                log.exception("draining the streams failed")
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self.writer is not None:
            await self.writer.close(grace)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, 5)
        if self.engine is not None:
            self.engine.dispose()

    async def wait(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain within settings.shutdown_grace. With
    settings.workers > 1, this process also starts and stops the other workers."""
    if settings.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {settings.workers}")
    if settings.workers > 1:
        for addr in (settings.grpc_addr, settings.http_addr):
            if split_addr(addr)[1] == 0:
                raise ValueError(f"--workers needs fixed ports; {addr} asks for a free one")
        settings = dataclasses.replace(settings, reuse_port=True)
    server = Server(settings)
    await server.start()
    workers = _spawn_workers(settings) if settings.workers > 1 else []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.1fs", settings.shutdown_grace)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    await server.stop()
    for worker in workers:
        try:
            await asyncio.to_thread(worker.wait, settings.shutdown_grace + 5)
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in time; killing it", worker.pid)
            worker.kill()
    log.info("stopped")


def _spawn_workers(settings: Settings) -> list[subprocess.Popen[bytes]]:
    """settings.workers - 1 more processes on the same ports. They get these settings through
    the environment (flags would make them spawn workers of their own); this process already
    migrated the database."""
    single = dataclasses.replace(settings, workers=1, auto_migrate=False, reuse_port=True)
    env = {**os.environ, **single.to_env()}
    command = [sys.executable, "-m", "turnstream.cli", "serve"]
    workers = [subprocess.Popen(command, env=env) for _ in range(settings.workers - 1)]
    log.info("started %d more workers: %s", len(workers), [w.pid for w in workers])
    return workers
