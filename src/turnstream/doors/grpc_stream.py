"""Door: the gRPC `Append` stream and `GetStream` (docs/streaming.md). It keeps the registry of
live calls, so a newer open fences an older one and a shutdown drains them all; each call itself
is a `Session` (stream_session.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from turnstream.config import Settings
from turnstream.core.pipeline import Pipeline
from turnstream.core.ports import StreamStore
from turnstream.doors.grpc_answer import abort
from turnstream.doors.stream_rules import shutting_down
from turnstream.doors.stream_session import Session
from turnstream.v1 import ingest_pb2

log = logging.getLogger(__name__)

# After the grace period, calls still answering are ended; this bounds how long that takes.
STOP_TIMEOUT = 1.0
# How often an open call re-checks its caller's key (a dict lookup while the authenticator's
# cache holds it): a revoked key ends the stream within this plus the cache's TTL.
RECHECK_INTERVAL = 1.0

Recheck = Callable[[], Awaitable[status_pb2.Status | None]]


class StreamDoor:
    """`append` and `get_stream` serve the RPCs; `drain` ends every call for a shutdown."""

    def __init__(self, pipeline: Pipeline, writer: StreamStore, settings: Settings) -> None:
        self.pipeline = pipeline
        self.writer = writer
        self.settings = settings
        self.draining = False
        interval = duration_pb2.Duration()
        interval.FromNanoseconds(round(settings.heartbeat_interval * 1e9))
        self.limits = ingest_pb2.StreamLimits(
            max_batch_records=settings.max_batch_records,
            max_batch_bytes=settings.max_batch_bytes,
            max_inflight_batches=settings.max_inflight_batches,
            heartbeat_interval=interval,
        )
        self._calls: dict[Session, asyncio.Future[None]] = {}
        self._streams: dict[tuple[str, str], Session] = {}

    @property
    def open_streams(self) -> int:
        """Streams with a live call (for metrics)."""
        return len(self._streams)

    async def append(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        tenant: str,
        recheck: Recheck | None = None,
    ) -> None:
        """Serve one Append call until the client closes it, an error, a fence, a drain, or
        `recheck` answering a status (the caller's key was revoked)."""
        if self.draining:
            await abort(context, shutting_down())
        session = Session(self, context, tenant)
        finished = asyncio.get_running_loop().create_future()
        self._calls[session] = finished
        watch = None
        if recheck is not None:
            watch = asyncio.create_task(_watch(session, recheck), name="append-recheck")
        try:
            await session.run()
        finally:
            if watch is not None:
                watch.cancel()
            del self._calls[session]
            finished.set_result(None)

    async def drain(self, grace: float) -> None:
        """For a shutdown: refuse new opens; let every call stop reading, answer what it read
        (committed) and end with `drain` + OK. Calls still busy after `grace` seconds end with
        UNAVAILABLE (nothing unanswered was acked; the client resumes)."""
        self.draining = True
        if not self._calls:
            return
        log.info("draining %d Append calls (grace %.1fs)", len(self._calls), grace)
        for session in list(self._calls):
            session.drain()
        _, late = await asyncio.wait(list(self._calls.values()), timeout=grace)
        if not late:
            return
        log.warning("%d Append calls still answering after %.1fs; ending them", len(late), grace)
        for session, finished in list(self._calls.items()):
            if finished in late:
                session.stop(shutting_down())
        await asyncio.wait(late, timeout=STOP_TIMEOUT)

    # -- for sessions -------------------------------------------------------------------------

    def claim(self, session: Session) -> bool:
        """Register `session` as its stream's live call, fencing an older one. False when a
        newer call (higher epoch) already holds the stream: `session` is the one fenced."""
        key = (session.tenant, session.stream_id)
        held = self._streams.get(key)
        if held is not None and held is not session:
            if held.epoch > session.epoch:
                return False
            log.info("stream %r reopened (epoch %d): fencing the older call", key[1], session.epoch)
            held.fence()
        self._streams[key] = session
        return True

    def release(self, session: Session) -> None:
        key = (session.tenant, session.stream_id)
        if self._streams.get(key) is session:
            del self._streams[key]


async def _watch(session: Session, recheck: Recheck) -> None:
    """End `session` with recheck's status once it answers one."""
    while True:
        await asyncio.sleep(RECHECK_INTERVAL)
        try:
            problem = await recheck()
        except Exception:  # a failing check must not end a healthy stream; the next one may
            log.exception("re-checking the key of stream %r failed", session.stream_id)
            continue
        if problem is not None:
            log.info("stream %r: %s; ending it", session.stream_id, problem.message)
            session.stop(problem)
            return
