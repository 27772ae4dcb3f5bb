"""Storage: the one writer of a process. Doors hand it batches and await a future that resolves
only after the transaction holding their rows has committed (group commit).

Batches queue up while a transaction runs; the next transaction takes everything queued (up to
`max_flush_rows`), so throughput grows with load and an idle server commits at once. Database
work runs on one dedicated thread that owns the one ingest connection. Driver errors are
translated here, never in a door: connection trouble -> StoreUnavailable (retry later), a stream
that moved under us -> StreamConflict.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import sqlalchemy as sa

from turnstream.core.batch import KINDS, BatchOutcome, StreamAdvance, WriteBatch
from turnstream.core.ports import StoreUnavailable, StreamConflict
from turnstream.core.rows import Row
from turnstream.store import dialects, schema
from turnstream.store.dialects import Key

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class StreamState:
    epoch: int
    committed_offset: int


@dataclass(slots=True)
class _Pending:
    batch: WriteBatch
    future: asyncio.Future[BatchOutcome]
    size: int


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
    last_flush_seconds: float = 0.0
    pending_rows: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


def _is_unavailable(exc: BaseException) -> bool:
    """Connection-level trouble (server down, disk locked) as opposed to a bad statement."""
    import sqlite3

    import psycopg

    if isinstance(exc, sqlite3.OperationalError | psycopg.OperationalError):
        return True
    return isinstance(exc, psycopg.InterfaceError)


class Writer:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        max_flush_rows: int = 5_000,
        max_pending_rows: int = 50_000,
        retry_after: float = 1.0,
    ) -> None:
        self.engine = engine
        self.dialect = dialects.for_url(engine.url)
        self.max_flush_rows = max_flush_rows
        self.max_pending_rows = max_pending_rows
        self.retry_after = retry_after
        self.stats = WriterStats()
        self._queue: asyncio.Queue[_Pending | _Call | None] = asyncio.Queue()
        # Batches waiting for room, in arrival order: admission must be FIFO, or a small later
        # batch of a stream could overtake a large earlier one and fail its offset check.
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnstream-writer")
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- public API ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="turnstream-writer")

    async def submit(self, batch: WriteBatch) -> BatchOutcome:
        """Store a batch; returns after its transaction committed. Batches are committed in
        the order submit() was called, also when callers have to wait for room."""
        if self._closing:
            raise StoreUnavailable("the server is shutting down", self.retry_after)
        future: asyncio.Future[BatchOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(batch, future, max(1, batch.size())))
        self._admit()
        return await future

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
        """Stop taking batches, commit everything queued, then release the connection."""
        if self._task is None:
            return
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
            self._task.cancel()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)
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
            self.stats.pending_rows += size
            self._queue.put_nowait(item)

    async def _call(self, fn: Callable[[Any], T]) -> T:
        if self._closing:
            raise StoreUnavailable("the server is shutting down", self.retry_after)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Call(fn, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            item = await self._queue.get()
            if item is None:
                break
            if isinstance(item, _Call):
                await self._run_call(loop, item)
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
                    await self._flush(loop, group)
                    group, rows = [], 0
                    await self._run_call(loop, nxt)
                    continue
                group.append(nxt)
                rows += nxt.size
            if group:
                await self._flush(loop, group)
        # Drain: whatever was queued before close() still gets committed and answered.
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Pending):
                await self._flush(loop, [item])
            elif isinstance(item, _Call):
                await self._run_call(loop, item)
        # Admission refills the queue as flushes free room, so this is empty unless a flush
        # failed; never leave a caller waiting forever.
        while self._waiting:
            _resolve(
                self._waiting.popleft().future,
                exc=StoreUnavailable("the server is shutting down", self.retry_after),
            )

    async def _run_call(self, loop: asyncio.AbstractEventLoop, item: _Call) -> None:
        try:
            result = await loop.run_in_executor(self._executor, self._in_transaction, item.fn)
        except BaseException as exc:
            _resolve(item.future, exc=self._translate(exc))
        else:
            _resolve(item.future, result=result)

    async def _flush(self, loop: asyncio.AbstractEventLoop, group: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._flush_sync, group)
        except BaseException as exc:
            self.stats.failures += 1
            error = self._translate(exc)
            results = [error] * len(group)
        self.stats.flushes += 1
        self.stats.last_flush_seconds = time.perf_counter() - started
        for pending, result in zip(group, results, strict=True):
            self.stats.pending_rows -= pending.size
            if isinstance(result, BaseException):
                _resolve(pending.future, exc=result)
            else:
                self.stats.batches += 1
                self.stats.rows += pending.size
                _resolve(pending.future, result=result)
        self._admit()

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, StoreUnavailable | StreamConflict):
            return exc
        if _is_unavailable(exc):
            log.warning("database unavailable: %s", exc)
            self._disconnect()
            return StoreUnavailable(
                "the database is unavailable; nothing was stored, retry", self.retry_after
            )
        log.exception("write failed", exc_info=exc)
        self._disconnect()
        return exc

    # -- on the writer thread -----------------------------------------------------------------

    def _connection(self) -> Any:
        if self._conn is None:
            raw = self.engine.raw_connection()
            self._raw = raw
            self._conn = raw.driver_connection
            self.dialect.prepare(self._conn)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._raw.invalidate()
            except Exception:
                log.debug("closing a broken connection failed", exc_info=True)
            self._conn = None

    def _in_transaction(self, fn: Callable[[Any], T]) -> T:
        conn = self._connection()
        self.dialect.begin(conn)
        try:
            result = fn(conn)
        except BaseException:
            _rollback(conn)
            raise
        conn.commit() if self.dialect.name == "postgresql" else conn.execute("COMMIT")
        return result

    def _flush_sync(self, group: list[_Pending]) -> list[BatchOutcome | BaseException]:
        try:
            return self._in_transaction(lambda conn: self._write(conn, group))
        except BaseException as exc:
            if _is_unavailable(exc) or len(group) == 1:
                raise
            # One bad batch must not fail the others: commit each on its own.
            log.warning("group commit failed (%s); retrying %d batches one by one", exc, len(group))
            out: list[BatchOutcome | BaseException] = []
            for pending in group:
                try:
                    out += self._in_transaction(_bind_write(self, pending))
                except BaseException as one:
                    if _is_unavailable(one):
                        raise
                    out.append(self._translate(one))
            return out

    def _advance_streams(
        self, conn: Any, group: list[_Pending], now: dt.datetime
    ) -> dict[int, StreamConflict]:
        """Advance every stream's committed offset; the batches whose advance failed."""
        failed: dict[int, StreamConflict] = {}
        chains = _chains(group)
        # One statement for the first chain of every stream; a stream with a second chain in the
        # same flush (an older, fenced epoch beside a newer one: rare) goes one by one after.
        first: dict[tuple[str, str], int] = {}
        for n, (tenant_id, adv, _) in enumerate(chains):
            first.setdefault((tenant_id, adv.stream_id), n)
        batched = [chains[n] for n in first.values()]
        moved = (
            self.dialect.advance_many(conn, [(t, a) for t, a, _ in batched], now)
            if batched
            else set()
        )
        for n, (tenant_id, adv, members) in enumerate(chains):
            if first[(tenant_id, adv.stream_id)] == n:
                ok = (tenant_id, adv.stream_id) in moved
            else:
                ok = self.dialect.advance(conn, tenant_id, adv, now)
            if not ok:
                state = self.dialect.stream_state(conn, tenant_id, adv.stream_id) or (0, 0)
                for i in members:
                    failed[i] = StreamConflict(adv.stream_id, *state)
        return failed

    def _write(self, conn: Any, group: list[_Pending]) -> list[BatchOutcome | BaseException]:
        now = _now()
        results: list[BatchOutcome | BaseException] = []
        live: list[tuple[int, WriteBatch]] = []
        failed = self._advance_streams(conn, group, now)
        for i, pending in enumerate(group):
            if i in failed:
                results.append(failed[i])
                continue
            results.append(BatchOutcome())
            live.append((i, pending.batch))
        for kind in KINDS:
            table = schema.RECORD_TABLES[kind]
            merged, order = _merge_group(table, [(i, b.rows[kind]) for i, b in live])
            if not merged:
                continue
            revisions = self.dialect.upsert(conn, table, list(merged.values()), now)
            _count(kind, order, revisions, results)
        derived = _merge_derived([r for _, b in live for r in b.derived_executions])
        if derived:
            self.dialect.upsert_derived(conn, derived, now)
        rejected = [r for _, b in live for r in b.rejected]
        if rejected:
            self.dialect.insert_rejected(conn, rejected)
        return results


def _chains(group: list[_Pending]) -> list[tuple[str, StreamAdvance, list[int]]]:
    """Consecutive batches of one stream (same epoch, each starting where the previous ends)
    become one advance: one UPDATE per stream per flush instead of one per batch. If the first
    advance of a chain would fail, every later one would too, so the results are the same."""
    chains: list[tuple[str, StreamAdvance, list[int]]] = []
    last: dict[tuple[str, str, int], int] = {}
    for i, pending in enumerate(group):
        adv = pending.batch.stream
        if adv is None:
            continue
        key = (pending.batch.tenant_id, adv.stream_id, adv.epoch)
        at = last.get(key)
        if at is not None and chains[at][1].to_offset == adv.from_offset:
            tenant, first, members = chains[at]
            chains[at] = (tenant, replace(first, to_offset=adv.to_offset), [*members, i])
            continue
        last[key] = len(chains)
        chains.append((pending.batch.tenant_id, adv, [i]))
    return chains


def _bind_write(
    writer: Writer, pending: _Pending
) -> Callable[[Any], list[BatchOutcome | BaseException]]:
    return lambda conn: writer._write(conn, [pending])


def _merge_group(
    table: sa.Table, per_batch: list[tuple[int, list[Row]]]
) -> tuple[dict[Key, Row], list[tuple[int, Key, bool]]]:
    """Merge rows with the same key; remember which batch sent which key, and whether it was the
    first to send it (the first is credited with the database's answer)."""
    keys = dialects.key_columns(table)
    merged: dict[Key, Row] = {}
    order: list[tuple[int, Key, bool]] = []
    for i, rows in per_batch:
        for row in rows:
            key = tuple(row[k] for k in keys)
            old = merged.get(key)
            if old is None:
                merged[key] = row
                order.append((i, key, True))
            else:
                new = dialects.merge_rows(table, old, row)
                order.append((i, key, new == old))  # a repeat that changed nothing is unchanged
                merged[key] = new
    return merged, order


def _count(
    kind: str,
    order: list[tuple[int, Key, bool]],
    revisions: dict[Key, int],
    results: list[BatchOutcome | BaseException],
) -> None:
    seen: set[Key] = set()
    for i, key, flag in order:
        outcome = results[i]
        assert isinstance(outcome, BatchOutcome)
        counts = outcome.counts[kind]
        if key in seen:
            # A later write of the same key in this flush: unchanged when it added nothing.
            if flag:
                counts.unchanged += 1
            else:
                counts.updated += 1
            continue
        seen.add(key)
        revision = revisions.get(key)
        if revision is None:
            counts.unchanged += 1
        elif revision == 1:
            counts.created += 1
        else:
            counts.updated += 1


def _merge_derived(rows: list[Row]) -> list[Row]:
    out: dict[tuple[str, str], Row] = {}
    for row in rows:
        key = (row["tenant_id"], row["execution_id"])
        old = out.get(key)
        if old is None:
            out[key] = dict(row)
            continue
        for name, pick in (("started_at", min), ("completed_at", max)):
            values = [v for v in (old[name], row[name]) if v is not None]
            old[name] = pick(values) if values else None
    return list(out.values())


def _rollback(conn: Any) -> None:
    try:
        conn.rollback()  # psycopg and sqlite3 alike (sqlite3 sees our BEGIN IMMEDIATE too)
        if getattr(conn, "in_transaction", False):  # sqlite3 only; belt and braces
            conn.execute("ROLLBACK")
    except Exception:
        log.debug("rollback failed", exc_info=True)


def _resolve(
    future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():  # the caller went away; its rows are committed (or not) all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
