"""Storage: the one writer of a process. Doors hand it batches and await a future that resolves
only after the transaction holding their rows has committed (group commit).

Batches queue up while a transaction runs; the next transaction takes everything queued (up to
`max_flush_rows`), so throughput grows with load and an idle server commits at once. Database
work runs on the writer's lane (lane.py: one thread, one connection); what one flush does,
poison isolation included, is flush.py. Driver errors are translated in store/, never in a door:
the database unavailable or not answering -> StoreUnavailable (retry later), a stream that moved
under us -> StreamConflict, a record the database refuses -> a FailedRow of its batch's outcome.

A hung database is "down": a call that makes no progress for `timeout` seconds (plus a margin)
is answered StoreUnavailable, its lane is abandoned for a fresh one, and the writer reports
itself unhealthy (health.py) — answering at once, without touching the database — until a
background probe gets an answer again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa

from turnstream.core.batch import KINDS, BatchOutcome, Submission, WriteBatch
from turnstream.store import flush
from turnstream.store.engine import dialect_for
from turnstream.store.faults import StoreGone as StoreGone
from turnstream.store.faults import StoreUnavailable as StoreUnavailable
from turnstream.store.faults import StreamConflict as StreamConflict
from turnstream.store.health import HealthListener, StoreHealth
from turnstream.store.lane import Lane, SqliteFile

log = logging.getLogger(__name__)
T = TypeVar("T")

# (batches, their results, seconds the flush took): told after every group commit, on the event
# loop, before the callers are answered; for metrics. Must be quick and must not raise.
FlushObserver = Callable[[list[WriteBatch], list["BatchOutcome | BaseException"], float], None]

# Seconds beyond `timeout` before the writer gives up on a database call. On a live but slow
# PostgreSQL the server's own statement_timeout (= timeout) fires first and ends the call cleanly;
# the writer's deadline is for a server or network that does not answer at all.
MARGIN = 0.5


@dataclass(slots=True)
class StreamState:
    epoch: int
    committed_offset: int


@dataclass(slots=True)
class _Call:
    fn: Callable[[Any], Any]
    future: asyncio.Future[Any]
    size: int = 0


@dataclass
class WriterStats:
    """Counters for metrics and benchmarks."""

    flushes: int = 0
    batches: int = 0
    rows: int = 0
    failures: int = 0
    submissions: int = 0  # batches handed over by enqueue()/submit(), each its own
    joined: int = 0  # batches join() added to a submission still waiting (no future of theirs)
    refused_rows: int = 0  # rows the database refused, dead-lettered (poison)
    abandoned: int = 0  # calls given up on as hung (their lane replaced)
    last_flush_seconds: float = 0.0
    pending_rows: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


class Writer:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        max_flush_rows: int = 5_000,
        max_pending_rows: int = 50_000,
        retry_after: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.dialect = dialect_for(engine.url, timeout)
        self.max_flush_rows = max_flush_rows
        self.max_pending_rows = max_pending_rows
        self.retry_after = retry_after
        self.stats = WriterStats()
        self.health = StoreHealth(lambda: self._on_lane(Lane.probe), retry_after)
        self._queue: asyncio.Queue[Submission | _Call | None] = asyncio.Queue()
        # Batches waiting for room, in arrival order: admission must be FIFO, or a small later
        # batch of a stream could overtake a large earlier one and fail its offset check.
        self._waiting: collections.deque[Submission] = collections.deque()
        self._sqlite_file = SqliteFile.for_url(engine.url)
        self._lanes = 0
        self._lane: Lane | None = None
        self._current: list[Submission] | list[_Call] = []  # what the running flush or call holds
        self._suspects = flush.Suspects()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.on_flush: FlushObserver | None = None

    # -- public API ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._lane = self._new_lane()
        self._task = asyncio.create_task(self._run(), name="turnstream-writer")

    def on_health(self, listener: HealthListener) -> None:
        """Call listener(healthy, reason) whenever the database goes down or comes back."""
        self.health.listen(listener)

    @property
    def healthy(self) -> bool:
        """False while the database is unreachable or not answering."""
        return self.health.healthy

    @property
    def health_reason(self) -> str:
        return self.health.reason

    async def submit(self, batch: WriteBatch) -> BatchOutcome:
        """Store a batch; returns after its transaction committed. Batches are committed in
        the order submit() was called, also when callers have to wait for room."""
        self._refuse_now()
        return await self.enqueue(batch).future

    def enqueue(self, batch: WriteBatch) -> Submission:
        """submit() without waiting: the batch takes its place in the queue now (FIFO with every
        other submit and enqueue), and the submission's future resolves after the commit (with
        StoreUnavailable at once when the writer refuses work: closing, or the database down)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchOutcome] = loop.create_future()
        submission = Submission(batch, future, max(1, batch.size()))
        try:
            self._refuse_now()
        except StoreUnavailable as exc:
            submission.taken = True
            future.set_exception(exc)
            return submission
        self.stats.submissions += 1
        self._waiting.append(submission)
        self._admit()
        return submission

    def join(self, submission: Submission, batch: WriteBatch) -> bool:
        """Add `batch`, the next batch of the stream `submission` advances (it starts where the
        submission ends), to that submission while it still waits: stored in the same flush,
        answered by the submission's future (`BatchOutcome.part` splits a refused row back).
        False when the writer already took it into a flush, when it is closing, or when the
        submission would outgrow a flush: then enqueue `batch` on its own.

        This is how one-record messages coalesce without waiting for anything: a stream's
        messages join its submission for as long as the running flush keeps it waiting."""
        if submission.taken or self._closing:
            return False
        size = batch.size()
        if submission.size + size > self.max_flush_rows:
            return False
        submission.batch.absorb(batch)
        submission.size += size
        submission.joined += 1
        self.stats.joined += 1
        if submission.admitted:
            self.stats.pending_rows += size
        return True

    async def open_stream(self, tenant_id: str, stream_id: str) -> StreamState:
        """Open (or reopen) a stream: bump its epoch, fencing older connections."""

        def call(conn: Any) -> StreamState:
            epoch, offset = self.dialect.open_stream(conn, tenant_id, stream_id, _now())
            return StreamState(epoch, offset)

        return await self._call(call)

    async def stream_state(self, tenant_id: str, stream_id: str) -> StreamState | None:
        def call(conn: Any) -> StreamState | None:
            state = self.dialect.stream_state(conn, tenant_id, stream_id)
            return None if state is None else StreamState(*state)

        return await self._call(call)

    async def committed_offset(self, tenant_id: str, stream_id: str) -> int | None:
        state = await self.stream_state(tenant_id, stream_id)
        return None if state is None else state.committed_offset

    async def close(self, grace: float = 10.0) -> None:
        """Stop taking batches, commit everything queued within `grace` seconds, then release
        the connection. Whatever is not committed by then is answered StoreUnavailable (never
        acked), and a database call still stuck is abandoned rather than waited for."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._closing = True
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            log.error(
                "writer did not drain within %.1fs; %d rows unacked",
                grace,
                self.stats.pending_rows,
            )
            self._task.cancel()  # _run answers everything it still holds
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.health.close()
        lane = self._lane
        if lane is not None:
            # The connection is closed on its own thread; wait for that only as long as the
            # deadline allows (a frozen server may never acknowledge), then abandon it.
            closed = asyncio.wrap_future(lane.submit(Lane.disconnect))
            lane.close()
            done, _ = await asyncio.wait({closed}, timeout=max(0.0, deadline - loop.time()))
            if not done:
                closed.add_done_callback(_retrieve)
                lane.abandon()
        self._task = None

    # -- the loop -----------------------------------------------------------------------------

    def _admit(self) -> None:
        """Move waiting batches to the queue, oldest first, while there is room. A batch larger
        than the whole budget still goes through when nothing else is pending."""
        while self._waiting:
            size = self._waiting[0].size
            pending = self.stats.pending_rows
            if pending and pending + size > self.max_pending_rows:
                return
            item = self._waiting.popleft()
            item.admitted = True
            self.stats.pending_rows += size
            self._queue.put_nowait(item)

    async def _call(self, fn: Callable[[Any], T]) -> T:
        self._refuse_now()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Call(fn, future))
        return await future

    async def _run(self) -> None:
        try:
            await self._serve()
        finally:
            # Only reached with work left when close() cancelled us at its deadline: answer
            # every caller still waiting; none of it was committed, so nothing was acked.
            error = StoreUnavailable(
                "the server is shutting down; nothing of this request was stored; retry",
                self.retry_after,
            )
            for item in self._current:
                _resolve(item.future, exc=error)
            while not self._queue.empty():
                left = self._queue.get_nowait()
                if left is not None:
                    _resolve(left.future, exc=error)
            while self._waiting:
                _resolve(self._waiting.popleft().future, exc=error)

    async def _serve(self) -> None:
        stop = False
        while not stop:
            item = await self._queue.get()
            if item is None:
                break
            if isinstance(item, _Call):
                await self._run_call(item)
                continue
            group = [item]
            rows = item.size
            while rows < self.max_flush_rows and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                if isinstance(nxt, _Call):
                    # Keep FIFO order: flush what we have, then run the call.
                    await self._flush(group)
                    group, rows = [], 0
                    await self._run_call(nxt)
                    continue
                group.append(nxt)
                rows += nxt.size
            if group:
                await self._flush(group)
        # Drain: whatever was queued before close() still gets committed and answered.
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Submission):
                await self._flush([item])
            elif isinstance(item, _Call):
                await self._run_call(item)

    async def _run_call(self, item: _Call) -> None:
        self._current = [item]
        try:
            self._refuse_now(closing=False)
            result = await self._on_lane(lambda lane: lane.transaction(item.fn))
        except StoreUnavailable as exc:
            self.health.failed(exc)
            _resolve(item.future, exc=exc)
        except Exception as exc:
            _resolve(item.future, exc=exc)
        else:
            self.health.answered()
            _resolve(item.future, result=result)
        self._current = []

    async def _flush(self, group: list[Submission]) -> None:
        started = time.perf_counter()
        for pending in group:  # from here on the lane reads their batches: no more joins
            pending.taken = True
        self._current = group
        results: list[BatchOutcome | BaseException]
        try:
            self._refuse_now(closing=False)
            batches = [p.batch for p in group]
            suspects = self._suspects.among(batches)
            results = await self._on_lane(
                lambda lane: flush.flush(lane, batches, suspects=suspects)
            )
        except StoreUnavailable as exc:
            self.health.failed(exc)
            self.stats.failures += 1
            results = [exc] * len(group)
        except Exception as exc:
            # Not the database's state nor a record's values: a bug. Callers answer with an
            # incident id; the connection is kept (the transaction was rolled back).
            log.error("a flush of %d batches failed", len(group), exc_info=exc)
            self.stats.failures += 1
            results = [exc] * len(group)
        else:
            self.health.answered()
        self._current = []
        self.stats.flushes += 1
        self.stats.last_flush_seconds = time.perf_counter() - started
        if self.on_flush is not None:
            try:
                self.on_flush([p.batch for p in group], results, self.stats.last_flush_seconds)
            except Exception:
                log.exception("the flush observer failed")
        for pending, result in zip(group, results, strict=True):
            self.stats.pending_rows -= pending.size
            if isinstance(result, BaseException):
                _resolve(pending.future, exc=result)
            else:
                self.stats.batches += 1
                self.stats.rows += pending.size
                if result.failed:
                    self.stats.refused_rows += len(result.failed)
                    self._suspects.add(pending.batch)
                _resolve(pending.future, result=result)
        self._admit()

    # -- deadlines and health -----------------------------------------------------------------

    def _new_lane(self) -> Lane:
        self._lanes += 1
        return Lane(
            self.engine,
            self.dialect,
            sqlite_file=self._sqlite_file,
            retry_after=self.retry_after,
            name=f"turnstream-writer-{self._lanes}",
        )

    async def _on_lane(self, fn: Callable[[Lane], T]) -> T:
        """fn(lane) on the writer's lane, given up on when it makes no progress for `timeout`
        seconds (+ MARGIN): then the caller gets StoreUnavailable and the lane is abandoned.

        Giving up is safe even if the abandoned transaction commits later, after the caller
        heard UNAVAILABLE: its upserts merge (a retry of the same records changes nothing) and
        stream offsets advance by compare-and-set, so a client that resumes from the committed
        offset neither loses nor duplicates anything."""
        lane = self._lane
        assert lane is not None, "Writer.start() was not called"
        submitted = time.monotonic()
        future = asyncio.wrap_future(lane.submit(fn))
        limit = self.timeout + MARGIN
        while True:
            wait = max(submitted, lane.progress) + limit - time.monotonic()
            if wait <= 0:
                break
            done, _ = await asyncio.wait({future}, timeout=wait)
            if done:
                return future.result()
        future.add_done_callback(_retrieve)
        self._abandon(lane)
        raise StoreUnavailable(
            f"the database did not answer within {self.timeout:g} s; "
            "nothing of this request was stored; retry",
            self.retry_after,
        )

    def _abandon(self, lane: Lane) -> None:
        if lane is not self._lane:
            return  # already replaced by a caller that gave up on it first
        log.error(
            "the database did not answer within %.1f s: abandoning its connection and "
            "reporting the store unavailable until it answers again",
            self.timeout,
        )
        lane.abandon()
        self.stats.abandoned += 1  # its thread ends once unblocked; a daemon, it never holds exit
        self._lane = self._new_lane()
        self.health.hung_up(self.timeout)

    def _refuse_now(self, *, closing: bool = True) -> None:
        """Answer at once, without touching the database, when it cannot help. (`closing`:
        refuse new work once close() began; work queued before it is still committed.)"""
        if closing and self._closing:
            raise StoreUnavailable("the server is shutting down", self.retry_after)
        self.health.refuse_now()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Done callback of an abandoned call: collect its outcome so asyncio does not log it as a
    never-retrieved exception (it was answered StoreUnavailable long ago)."""
    if not future.cancelled():
        future.exception()


def _resolve(
    future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():  # the caller went away; its rows are committed (or not) all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
