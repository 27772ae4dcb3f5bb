"""Entrypoint: composes the doors, the core and the writer into one process, with health,
reflection and an HTTP listener; shuts down by draining, never by cancelling queued work, and
within one deadline whatever the database does.

Health: gRPC `grpc.health.v1` ("" and the IngestService) and HTTP `/readyz` follow the writer:
NOT_SERVING / 503 while the database is unreachable or not answering, SERVING / 200 again by
themselves when it answers (the writer probes it), and NOT_SERVING / 503 for good once a drain
began. `/healthz` only says the process is alive (200 as long as it answers at all): a liveness
probe must not restart a process because its database is down, nor cut a drain short."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from turnstream import gctune
from turnstream.config import Settings, split_addr
from turnstream.core.analytics import AnalyticsCalls
from turnstream.core.auth import INGEST, Authenticator, anonymous_allowed
from turnstream.core.pipeline import Pipeline
from turnstream.core.pricing import PriceTable
from turnstream.core.service import IngestCalls
from turnstream.doors import http_analytics, http_honeyhive, http_kubiya, http_native, openapi
from turnstream.doors.admission import Admission
from turnstream.doors.balance import ENV as WORKER_SLOT
from turnstream.doors.balance import Balance, Shares
from turnstream.doors.grpc_analytics import AnalyticsServicer
from turnstream.doors.grpc_auth import authorizer
from turnstream.doors.grpc_guard import add_guarded
from turnstream.doors.grpc_ingest import IngestServicer
from turnstream.doors.grpc_stream import STOP_TIMEOUT, StreamDoor
from turnstream.doors.http import HttpContext, build_app
from turnstream.listener import HttpServer
from turnstream.listener import server as http_server
from turnstream.metrics import procs
from turnstream.metrics.grpc_server import MetricsInterceptor
from turnstream.metrics.http import HttpMetrics
from turnstream.metrics.http import endpoint as metrics_endpoint
from turnstream.metrics.registry import Metrics
from turnstream.store.analytics_reads import AnalyticsReads
from turnstream.store.engine import create_engine, migrate
from turnstream.store.keys import KeyStore
from turnstream.store.queries import Reads
from turnstream.store.writer import Writer
from turnstream.tls import grpc_credentials, http_tls
from turnstream.v1 import analytics_pb2, analytics_pb2_grpc, ingest_pb2, ingest_pb2_grpc

log = logging.getLogger(__name__)

RouteSet = Callable[[HttpContext], list[BaseRoute]]

SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
ANALYTICS = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name

# Keepalive and connection age that suit meshes: pings keep NAT/LB state alive, a max age lets
# a load balancer rebalance long-lived clients (streams resume on any replica).
GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def openapi_document() -> openapi.Document:
    """The HTTP listener's OpenAPI: each format's operations, schemas in its own spelling."""
    native, kubiya = openapi.Schemas("proto3"), openapi.Schemas("kubiya")
    paths = {
        **http_native.openapi(native),
        **http_native.openapi(native, http_analytics.SERVICE, ("400", "404", "500", "503")),
        **http_kubiya.openapi(kubiya),
        **http_honeyhive.openapi(),
    }
    return openapi.Document(paths, {**native.components, **kubiya.components})


class Server:
    """One turnstream process. `start()` binds both listeners; `stop()` drains."""

    def __init__(self, settings: Settings, spread: Balance | None = None) -> None:
        self.settings = settings
        # With --workers: this process's slot in the shared stream counts (doors/balance.py).
        self.spread = spread
        self.engine: sa.Engine | None = None
        self.writer: Writer | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.health = health.aio.HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self.http_app: Starlette | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._streaming: StreamDoor | None = None
        self._serving = False
        self._health_updates: set[asyncio.Task[None]] = set()
        self.metrics: Metrics | None = None
        self._sampling: asyncio.Task[None] | None = None
        self.authenticator: Authenticator | None = None

    async def _authenticator(self, engine: sa.Engine) -> Authenticator:
        """The one key checker of every door (docs/auth.md); refuses to start on an address
        others can reach while no key exists."""
        s = self.settings
        for addr in (s.grpc_addr, s.http_addr):
            split_addr(addr)  # a malformed address is named as such, before anything else
        keys = KeyStore(engine)
        exist = await asyncio.to_thread(keys.any_active_now)
        listeners = {"gRPC": s.grpc_addr, "HTTP": s.http_addr}
        anonymous = anonymous_allowed(s.auth, listeners, exist)
        if anonymous and not exist:
            log.warning(
                "no API key exists: calls without a key are taken as tenant 'default' (loopback "
                "only); `turnstream keys create` turns this off"
            )
        return Authenticator(keys, anonymous=anonymous, ttl=s.auth_cache_ttl)

    async def start(self) -> None:
        s = self.settings
        prices = PriceTable.load(s.prices_file)
        self.engine = create_engine(s.database_url, db_timeout=s.db_timeout)
        if s.auto_migrate:
            await asyncio.to_thread(migrate, self.engine)
        self.authenticator = auth = await self._authenticator(self.engine)
        self.writer = Writer(
            self.engine,
            max_flush_rows=s.max_flush_rows,
            max_pending_rows=s.max_pending_rows,
            timeout=s.db_timeout,
        )
        self.writer.on_health(self._store_health)
        await self.writer.start()
        pipeline = Pipeline(prices)
        self._streaming = StreamDoor(pipeline, self.writer, s)
        interceptors = []
        if s.metrics:
            self.metrics = self._observe(pipeline, self.writer, self._streaming)
            interceptors.append(MetricsInterceptor(self.metrics))
        calls = IngestCalls(
            pipeline, self.writer, s.max_request_records, self.writer.committed_offset
        )
        authorize = authorizer(auth)
        servicer = IngestServicer(
            calls, self._streaming, authorize, auth.recheck, spread=self.spread
        )

        # Without --workers a second server on the same port must fail, not silently share it.
        reuse = [("grpc.so_reuseport", 1 if s.reuse_port else 0)]
        sizes = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
        ]
        self._grpc = grpc.aio.server(
            options=GRPC_OPTIONS + sizes + reuse, interceptors=interceptors
        )
        add_guarded(
            ingest_pb2_grpc.add_IngestServiceServicer_to_server,
            servicer,
            self._grpc,
            servicer.malformed,
            Admission(s.max_inflight_bytes),
            gate=lambda context: authorize(context, INGEST),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        # The read side: its own connections (Reads), never the writer's.
        reads = Reads(self.engine)
        analytics = AnalyticsCalls(AnalyticsReads(reads))
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(analytics, authorize), self._grpc
        )
        if s.reflection:
            reflection.enable_server_reflection(
                [
                    SERVICE,
                    ANALYTICS,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                self._grpc,
            )
        host, port = split_addr(s.grpc_addr)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        credentials = grpc_credentials(s)
        if credentials is None:
            self.grpc_port = self._grpc.add_insecure_port(address)
        else:
            self.grpc_port = self._grpc.add_secure_port(address, credentials)
        if self.grpc_port == 0:
            raise OSError(f"cannot listen on {s.grpc_addr} (gRPC): address in use or not local")
        await self._grpc.start()
        if self.spread is not None:  # it takes streams from now on: the others count on it
            self.spread.serving()
        http = HttpContext(
            pipeline,
            self.writer,
            max_body_bytes=s.http_max_body_bytes,
            max_request_records=s.max_request_records,
            authenticate=auth.authenticate,
            find_task=reads.find_task,
        )
        # Each wire format's JSON routes, composed on the HTTP listener, and their OpenAPI.
        honeyhive: RouteSet = functools.partial(http_honeyhive.routes, lookup=reads)
        formats: list[RouteSet] = [
            http_native.routes_for(calls),
            http_kubiya.routes,
            honeyhive,
            http_analytics.routes_for(analytics),
        ]
        extra = [
            Route("/healthz", self._healthz),
            Route("/readyz", self._readyz),
            *openapi.routes(openapi_document()),
        ]
        if self.metrics is not None:
            extra.append(Route("/metrics", metrics_endpoint(self.metrics)))
        app = build_app(http, formats, extra)
        if self.metrics is not None:
            app.add_middleware(HttpMetrics, metrics=self.metrics)
        await self._start_http(app)
        self._serving = True
        await self._publish_health(self.writer.healthy, self.writer.health_reason)
        log.info(
            "turnstream serving gRPC on %s:%d, HTTP on %s:%d, database %s",
            host,
            self.grpc_port,
            split_addr(s.http_addr)[0],
            self.http_port,
            self.engine.url.render_as_string(hide_password=True),
        )

    def _observe(self, pipeline: Pipeline, writer: Writer, streaming: StreamDoor) -> Metrics:
        """The metrics of this process: the writer tells each flush; gauges and the pipeline's
        totals are read when a scrape comes (and every second when other processes' scrapes
        read this one's files)."""
        metrics = Metrics(str(self.settings.metrics_dir) if self.settings.metrics_dir else None)
        writer.on_flush = metrics.on_flush
        unpriced, turned = [0], [0]
        spread = self.spread

        def sample() -> None:
            metrics.pending_rows.set(writer.stats.pending_rows)
            metrics.open_streams.set(streaming.open_streams)
            metrics.process_open_streams.set(streaming.open_streams)
            if spread is not None and spread.turned_away > turned[0]:
                metrics.rebalanced.inc(spread.turned_away - turned[0])
                turned[0] = spread.turned_away
            metrics.database_up.set(1 if writer.healthy else 0)
            if pipeline.unpriced_total > unpriced[0]:
                metrics.unpriced.inc(pipeline.unpriced_total - unpriced[0])
                unpriced[0] = pipeline.unpriced_total

        metrics.sampler(sample)
        if metrics.multiprocess_dir is not None:
            self._sampling = asyncio.create_task(_every(1.0, metrics.sample), name="metrics")
        return metrics

    async def _start_http(self, app: Starlette) -> None:
        self.http_app = app
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
        self._http = http_server(
            app,
            max_connections=self.settings.http_max_connections,
            timeout=self.settings.http_timeout,
            tls=http_tls(self.settings),
        )
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        # start() returns once both listeners accept connections.
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises why it failed
                raise OSError(f"the HTTP listener on {self.settings.http_addr} did not start")
            await asyncio.sleep(0.01)

    async def _healthz(self, _request: Request) -> JSONResponse:
        """Liveness: 200 while the process answers at all, draining included (a liveness probe
        that failed during a drain would have the process killed before it finished)."""
        return JSONResponse({"status": "serving" if self._serving else "draining"})

    async def _readyz(self, _request: Request) -> JSONResponse:
        """Readiness: 200 only while serving with a database that answers; else 503 and why."""
        if not self._serving:
            return JSONResponse({"status": "draining"}, status_code=503)
        if self.writer is not None and not self.writer.healthy:
            reason = self.writer.health_reason
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    def _store_health(self, healthy: bool, reason: str) -> None:
        """The writer's listener: its view of the database, published as gRPC health."""
        task = asyncio.create_task(self._publish_health(healthy, reason))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _publish_health(self, healthy: bool, reason: str) -> None:
        # Only while serving: a shutdown's NOT_SERVING is final (and the health servicer
        # ignores updates after enter_graceful_shutdown anyway).
        if not self._serving:
            return
        status = health_pb2.HealthCheckResponse.SERVING
        if not healthy:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
            log.warning("reporting NOT_SERVING: %s", reason)
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let streams answer what they read, let unary calls finish,
        commit everything queued, then close — all within one deadline, `grace` seconds from
        now, whatever the database does. Work not committed by then is answered UNAVAILABLE
        (or cut off), never acked: nothing acked is lost."""
        grace = self.settings.shutdown_grace if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace

        def left() -> float:
            return max(0.0, deadline - loop.time())

        self._serving = False
        if self.spread is not None:
            self.spread.stopping()
        await self.health.enter_graceful_shutdown()
        if self._sampling is not None:
            self._sampling.cancel()
        if self._streaming is not None:
            try:
                # drain() takes up to STOP_TIMEOUT past its grace to end late calls.
                drain = self._streaming.drain(max(0.0, left() - STOP_TIMEOUT))
                await asyncio.wait_for(drain, left())
            except TimeoutError:
                log.warning("the streams did not drain before the shutdown deadline")
            except Exception:  # shutdown goes on: the writer must still commit what is queued
                log.exception("draining the streams failed")
        # Both listeners stop taking calls; calls in flight may finish until the deadline.
        await asyncio.gather(self._stop_grpc(left()), self._stop_http(left()))
        if self.writer is not None:
            await self.writer.close(left())
        if self.engine is not None:
            await _bounded(self.engine.dispose, min(left(), 0.5))
        if self.spread is not None:
            self.spread.close()

    async def _stop_grpc(self, grace: float) -> None:
        if self._grpc is None:
            return
        try:
            # grpc cancels the calls still running at the end of its grace; allow it a moment
            # to do so, but never wait past the deadline by more than that.
            await asyncio.wait_for(self._grpc.stop(grace), grace + 0.25)
        except TimeoutError:
            log.warning("gRPC did not stop within %.1fs", grace)

    async def _stop_http(self, grace: float) -> None:
        if self._http is None or self._http_task is None:
            return
        self._http.stop(grace)
        done, _ = await asyncio.wait({self._http_task}, timeout=grace + 0.2)
        if not done:
            self._http.force_exit = True  # drop connections still open
            done, _ = await asyncio.wait({self._http_task}, timeout=0.2)
        if not done:
            self._http_task.cancel()

    async def wait(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain within settings.shutdown_grace. With
    settings.workers > 1, this process also starts and stops the other workers."""
    problems = settings.validate()
    if problems:
        raise ValueError("invalid settings: " + "; ".join(problems))
    # The first process of a --workers group creates the shared stream counts; its workers
    # are given their slots (doors/balance.py).
    shares: Path | None = None
    spread = Balance.from_env()
    if settings.workers > 1:
        settings = dataclasses.replace(settings, reuse_port=True)
        shares = Shares.create(settings.workers)
        spread = Balance(Shares(shares, 0))
    try:
        await _serve(settings, spread, shares)
    finally:
        if shares is not None:
            shares.unlink(missing_ok=True)


async def _serve(settings: Settings, spread: Balance | None, shares: Path | None) -> None:
    server = Server(settings, spread)
    await server.start()
    gctune.tune()
    workers = _spawn_workers(settings, shares) if shares is not None else []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.1fs", settings.shutdown_grace)
    # Workers get the same grace from the same moment, so they end by the same deadline.
    deadline = loop.time() + settings.shutdown_grace
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    await server.stop()
    for worker in workers:
        try:
            await asyncio.to_thread(worker.wait, max(0.0, deadline - loop.time()) + 0.5)
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in time; killing it", worker.pid)
            worker.kill()
        procs.worker_exited(settings, worker.pid)
    # A database call stuck in the driver (a frozen server) is left on its daemon thread: it
    # cannot hold the process, and what it was doing was never acked.
    log.info("stopped")


async def _every(seconds: float, fn: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            fn()
        except Exception:
            log.exception("sampling the metrics failed")


async def _bounded(fn: Callable[[], None], within: float) -> None:
    """fn() on a daemon thread, waited for at most `within` seconds (closing connections to a
    frozen database must not hold a shutdown; the thread cannot hold the process's exit)."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def run() -> None:
        try:
            fn()
        except Exception:
            log.debug("%s failed during shutdown", fn, exc_info=True)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may be gone by now
                loop.call_soon_threadsafe(done.set)

    threading.Thread(target=run, name="turnstream-shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(done.wait(), within)
    except TimeoutError:
        log.warning("%s did not finish within %.1fs; leaving it", fn, within)


def _spawn_workers(settings: Settings, shares: Path) -> list[subprocess.Popen[bytes]]:
    """settings.workers - 1 more processes on the same ports. They get these settings through
    the environment (flags would make them spawn workers of their own), and each its slot in
    `shares` (this process has slot 0); this process already migrated the database."""
    single = dataclasses.replace(settings, workers=1, auto_migrate=False, reuse_port=True)
    env = {**os.environ, **single.to_env()}
    command = [sys.executable, "-m", "turnstream.cli", "serve"]
    workers = [
        subprocess.Popen(command, env={**env, WORKER_SLOT: f"{i}:{shares}"})
        for i in range(1, settings.workers)
    ]
    log.info("started %d more workers: %s", len(workers), [w.pid for w in workers])
    return workers
