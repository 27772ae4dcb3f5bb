"""Door: one Append call, from `open` to its end. A reader task turns client messages into
answer slots (in request order); the call's own coroutine answers each slot once its batch has
committed. The pipeline validates, the writer stores and stream_rules.py decides what each
message means and how a call ends; this module only sequences.

A batch of more than STEP records is prepared STEP records at a time with the event loop free
between steps (and still stored as one batch): one large batch does not hold every other
stream's reads and answers for the whole of its preparation."""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.rpc import status_pb2

from turnstream import errors, logctx
from turnstream.core.batch import BatchOutcome, StreamAdvance, Submission, WriteBatch
from turnstream.core.pipeline import Prepared, answer_failures, join
from turnstream.core.ports import StoreUnavailable, StreamConflict
from turnstream.core.service import stream_id_problem
from turnstream.doors import stream_rules as rules
from turnstream.doors.grpc_answer import abort
from turnstream.doors.grpc_guard import Malformed
from turnstream.v1 import ingest_pb2

if TYPE_CHECKING:
    from turnstream.doors.grpc_stream import StreamDoor

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT = ingest_pb2.AppendResponse(heartbeat=ingest_pb2.Heartbeat())
# Records prepared between two yields to the event loop: ~1.2 ms of pipeline on this machine
# (a batch of 500 held the loop ~12 ms in one piece; docs/benchmarks.md compares 100 and 50).
STEP = 50


# Where the first batch of a submission starts in it, per kind.
_ORIGIN = (0, 0, 0, 0)


@dataclass(slots=True)
class _Group:
    """One writer submission and the batches of this call it holds, in order: the first one
    enqueued, the next ones joined while the writer had not taken it yet (Writer.join)."""

    submission: Submission
    # Per batch: where its rows start in the submission's batch, per kind (core.batch.KINDS).
    starts: list[tuple[int, ...]] = field(default_factory=lambda: [_ORIGIN])

    def failed(self, member: int, outcome: BatchOutcome) -> BatchOutcome:
        """`outcome` of the whole submission as the outcome of its `member`-th batch: the rows
        the database refused of that batch, at positions in its own rows."""
        starts = self.starts
        if not outcome.failed or len(starts) == 1:
            return outcome
        stop = starts[member + 1] if member + 1 < len(starts) else None
        return BatchOutcome(outcome.counts, outcome.part(starts[member], stop))


@dataclass(slots=True)
class _Ack:
    """The answer slot of one batch: the ack to send (`response.ack`), sent once `store` (if
    any) committed. The rejections are added then: rows the database refused are only known from
    the outcome."""

    response: ingest_pb2.AppendResponse
    store: asyncio.Future[BatchOutcome] | None = None
    prepared: Prepared | None = None
    # Records with no kind: answered without reaching the pipeline's rejections.
    empty: list[ingest_pb2.RecordRejection] = field(default_factory=list)
    # The submission holding the batch, and which of its batches this one is.
    group: _Group | None = None
    member: int = 0


@dataclass(slots=True)
class _End:
    """The last slot: end with `status` (None = OK), after a `drain` message if `drain`, once
    `store` (a dead letter, if any) committed."""

    status: status_pb2.Status | None = None
    drain: bool = False
    store: asyncio.Future[BatchOutcome] | None = None


async def _first(
    loop: asyncio.AbstractEventLoop,
    a: asyncio.Future[Any],
    b: asyncio.Future[Any],
    delay: float | None,
) -> None:
    """Until `a` or `b` is done or `delay` passed: asyncio.wait((a, b), delay, FIRST_COMPLETED)
    without its sets and checks. It runs once per batch answered, which with one
    record per message is once per record."""
    waiter = loop.create_future()

    def wake(_: object) -> None:
        if not waiter.done():
            waiter.set_result(None)

    a.add_done_callback(wake)
    b.add_done_callback(wake)
    timer = None if delay is None else loop.call_later(delay, wake, None)
    try:
        await waiter
    finally:
        a.remove_done_callback(wake)
        b.remove_done_callback(wake)
        if timer is not None:
            timer.cancel()


class _Interrupted(Exception):
    """The door stopped the call (fenced, or shutdown grace over): answer nothing more."""


class Session:
    """One Append call. `run()` is the call's coroutine; the door may `fence()`, `drain()` or
    `stop()` it from outside."""

    def __init__(self, door: StreamDoor, context: grpc.aio.ServicerContext[Any, Any], tenant: str):
        self.door = door
        self.context = context
        self.tenant = tenant
        self.stream_id = ""
        self.epoch = 0
        self.committed_offset = 0
        # Committed offset + records of the batches accepted and still in flight: where the next
        # batch must start.
        self.next_offset = 0
        self._settings = door.settings
        # Answer slots in request order; the answer loop waits on `_waiter` for the next one
        # (or its commit, or a stop, or a heartbeat due): one future per wait, no task.
        self._slots: collections.deque[_Ack | _End] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._awaited: asyncio.Future[BatchOutcome] | None = None  # the store it waits for
        self._beat: asyncio.TimerHandle | None = None
        self._unanswered = 0  # batches read and not yet answered (the backpressure window)
        self._room = asyncio.Event()
        self._stopped: asyncio.Future[status_pb2.Status] = (
            asyncio.get_running_loop().create_future()
        )
        self._stopped.add_done_callback(self._wake)
        self._draining = False
        self._reader: asyncio.Task[None] | None = None
        self._reading = False  # the reader waits in context.read()
        self._abandon_read = False  # drain cancelled that read
        self._stores: set[asyncio.Future[BatchOutcome]] = set()
        self._group: _Group | None = None  # the last submission: others may still join it
        self._last_sent = 0.0
        self._opened = False

    # -- control from the door ----------------------------------------------------------------

    def fence(self) -> None:
        """A newer connection opened this stream: end with ABORTED, answering nothing more."""
        self.stop(rules.fenced(self.stream_id))

    def drain(self) -> None:
        """Stop reading; answer every batch already read, then send `drain` and end with OK."""
        if not self._opened:  # nothing read to answer yet
            self.stop(rules.shutting_down())
            return
        self._draining = True
        self._room.set()
        if self._reading and self._reader is not None and not self._abandon_read:
            # A message already received is still processed; a read still waiting is abandoned
            # (nothing of it reached us, so nothing is lost: the client resends it on resume).
            self._abandon_read = True
            self._reader.cancel()

    def stop(self, status: status_pb2.Status) -> None:
        """End the call now with `status`, whatever is still unanswered."""
        if not self._stopped.done():
            self._stopped.set_result(status)

    # -- the call -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            status = await self._serve()
        except _Interrupted:
            status = self._stopped.result()
        except asyncio.CancelledError:
            raise
        except Exception:
            status = errors.unexpected(log, f"Append on stream {self.stream_id!r}")
        finally:
            self._close()
        if status is not None:
            await abort(self.context, status)

    async def _serve(self) -> status_pb2.Status | None:
        """Open, then answer slots until the end; returns the status to end with (None = OK)."""
        # Bounded: a call that never opens would otherwise hold its task and buffers forever.
        limit = self._settings.open_timeout
        read = asyncio.ensure_future(self.context.read())
        try:
            async with asyncio.timeout(limit):
                first = await self._until(read, heartbeat=False)
        except TimeoutError:
            read.cancel()
            return rules.open_timeout(limit)
        if first is grpc.aio.EOF:
            return None
        if isinstance(first, Malformed):
            end = self._on_malformed(first)
            return await self._committed(end.store, heartbeat=False) or end.status
        if first.WhichOneof("kind") != "open":
            return rules.open_required()
        problem = stream_id_problem(first.open.stream_id, "open.stream_id")
        if problem is not None:
            return problem
        if self.door.draining:
            return rules.shutting_down()
        self.stream_id = first.open.stream_id
        # Every line logged for this call from here on (its reader task too) names the stream.
        logctx.bind(stream_id=self.stream_id, tenant=self.tenant)
        try:
            state = await self._until(
                asyncio.ensure_future(self.door.writer.open_stream(self.tenant, self.stream_id)),
                heartbeat=False,
            )
        except StoreUnavailable as exc:
            return errors.unavailable(str(exc), exc.retry_after)
        self.epoch = state.epoch
        self.committed_offset = self.next_offset = state.committed_offset
        if not self.door.claim(self):
            self.fence()
            raise _Interrupted
        await self._send(
            ingest_pb2.AppendResponse(
                opened=ingest_pb2.StreamOpened(
                    committed_offset=self.committed_offset, limits=self.door.limits
                )
            )
        )
        self._opened = True
        self._room.set()
        self._reader = asyncio.create_task(self._read_loop(), name=f"append-read-{self.stream_id}")
        return await self._answer_loop()

    async def _answer_loop(self) -> status_pb2.Status | None:
        """Answer slots in request order; an ack only after its batch committed."""
        slots = self._slots
        self._on_beat()
        while True:
            if not slots:
                await self._idle(None)
            slot = slots.popleft()
            if isinstance(slot, _End):
                failed = await self._committed(slot.store)
                if failed is not None:
                    return failed
                if slot.drain and slot.status is None:
                    reason = "the server is shutting down: every batch read was answered; resume"
                    await self._send(
                        ingest_pb2.AppendResponse(drain=ingest_pb2.Drain(reason=reason))
                    )
                return slot.status
            store = slot.store
            if store is not None:
                if not store.done():
                    await self._idle(store)
                failed = self._outcome(store, slot)
                if failed is not None:
                    return failed
            response = slot.response
            self.committed_offset = response.ack.committed_offset
            await self._send(response)
            self._unanswered -= 1
            self._room.set()

    async def _idle(self, store: asyncio.Future[BatchOutcome] | None) -> None:
        """Wait for the next slot (store None) or for `store` to be done, sending heartbeats
        while nothing else is sent; raise _Interrupted if the door stops the call first. The
        reader, the store's done callback, a stop and the heartbeat timer wake it."""
        loop = asyncio.get_running_loop()
        interval = self._settings.heartbeat_interval
        while not (store.done() if store is not None else self._slots):
            if self._stopped.done():
                break
            if loop.time() >= self._last_sent + interval:
                await self._send(HEARTBEAT)
                continue
            self._waiter = waiter = loop.create_future()
            self._awaited = store
            try:
                await waiter
            finally:
                self._waiter = None
        if self._stopped.done():
            raise _Interrupted

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_beat(self) -> None:
        """The heartbeat timer: wakes the answer loop when nothing was sent for an interval.
        One timer per call, moved only when it fires (not once per answer)."""
        loop = asyncio.get_running_loop()
        due = self._last_sent + self._settings.heartbeat_interval
        if loop.time() >= due:
            self._wake()
            due = loop.time() + self._settings.heartbeat_interval
        self._beat = loop.call_at(due, self._on_beat)

    def _queue(self, slot: _Ack | _End) -> None:
        self._slots.append(slot)
        if self._awaited is None:  # not while the loop waits for a commit: nothing to do yet
            self._wake()

    async def _committed(
        self,
        store: asyncio.Future[BatchOutcome] | None,
        slot: _Ack | None = None,
        *,
        heartbeat: bool = True,
    ) -> status_pb2.Status | None:
        """Wait for `store` to commit and complete `slot`'s rejections from its outcome; the
        status to end the call with if it failed."""
        if store is None:
            return None
        try:
            await self._until(store, heartbeat=heartbeat)
        except _Interrupted:
            raise
        except Exception:
            pass  # the store's failure: _outcome tells it
        return self._outcome(store, slot)

    def _outcome(
        self, store: asyncio.Future[BatchOutcome], slot: _Ack | None
    ) -> status_pb2.Status | None:
        """`store` is done: complete `slot`'s rejections from its outcome; the status to end
        the call with if it failed."""
        try:
            outcome = store.result()
            if slot is not None and slot.prepared is not None:
                prepared = slot.prepared
                # Rows the database refused were dead-lettered in the same transaction and
                # their offsets consumed: answered like any invalid record, in index order.
                if outcome.failed and slot.group is not None:
                    outcome = slot.group.failed(slot.member, outcome)
                answer_failures(prepared, outcome)
                if prepared.rejections or slot.empty:
                    rejections = [*prepared.rejections, *slot.empty]
                    slot.response.ack.rejections.extend(rules.by_index(rejections))
        except StoreUnavailable as exc:
            return errors.unavailable(str(exc), exc.retry_after)
        except StreamConflict as exc:
            return self._conflict(exc)
        except Exception:
            return errors.unexpected(log, f"storing a batch of stream {self.stream_id!r}")
        return None

    def _conflict(self, exc: StreamConflict) -> status_pb2.Status:
        if exc.epoch != self.epoch:
            self.fence()
            return self._stopped.result()
        return rules.conflict(self.stream_id, exc.committed_offset)

    async def _until(self, future: asyncio.Future[T], *, heartbeat: bool = True) -> T:
        """Await `future`, sending heartbeats while nothing else is sent; raise _Interrupted
        (abandoning the future) if the door stops the call first."""
        loop = asyncio.get_running_loop()
        while not future.done():
            if self._stopped.done():
                break
            timeout = self._last_sent + self._settings.heartbeat_interval - loop.time()
            if heartbeat and timeout <= 0:
                await self._send(HEARTBEAT)
                continue
            await _first(loop, future, self._stopped, timeout if heartbeat else None)
        if self._stopped.done():
            future.cancel()
            raise _Interrupted
        return future.result()

    async def _send(self, response: ingest_pb2.AppendResponse) -> None:
        await self.context.write(response)
        self._last_sent = asyncio.get_running_loop().time()

    def _close(self) -> None:
        self.door.release(self)
        if self._beat is not None:
            self._beat.cancel()
        if self._reader is not None:
            self._reader.cancel()
        # Batches already queued in the writer commit all the same; unanswered, the client
        # resends them on resume and they are answered as already stored.
        for store in list(self._stores):
            store.cancel()

    # -- the reader ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while await self._has_room():
                message = await self._next_message()
                if message is None:
                    break
                if message is grpc.aio.EOF:
                    self._queue(_End())
                    return
                end = await self._on_message(message)
                if end is not None:
                    self._queue(end)
                    return
            self._queue(_End(drain=True))
        except asyncio.CancelledError:
            raise
        except Exception:
            problem = errors.unexpected(log, f"reading Append stream {self.stream_id!r}")
            self._queue(_End(problem))

    async def _has_room(self) -> bool:
        """Wait while the window is full: not reading lets HTTP/2 flow control slow the client."""
        while self._unanswered >= self._settings.max_inflight_batches and not self._draining:
            self._room.clear()
            await self._room.wait()
        return not self._draining

    async def _next_message(self) -> Any:
        """The next client message, EOF, or None when drain abandoned the read (it cancels this
        task while it waits here: no task of its own per read)."""
        self._reading = True
        try:
            return await self.context.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._abandon_read and task is not None and task.uncancel() == 0:
                return None
            raise
        finally:
            self._reading = False

    async def _on_message(self, message: ingest_pb2.AppendRequest | Malformed) -> _End | None:
        if isinstance(message, Malformed):
            return self._on_malformed(message)
        kind = message.WhichOneof("kind")
        if kind == "batch":
            return await self._on_batch(message.batch)
        if kind == "heartbeat":
            return None
        return _End(rules.unexpected_message(kind))

    async def _on_batch(self, batch: ingest_pb2.AppendBatch) -> _End | None:
        """Decide what becomes of a batch and queue its answer slot (in request order)."""
        problem = rules.check_batch(batch, self._settings)
        if problem is not None:
            return _End(problem)
        offset, count, expected = batch.offset, len(batch.records), self.next_offset
        outcome = rules.placement(offset, count, expected)
        if outcome is None:
            return _End(rules.straddles(offset, count, expected))
        response = ingest_pb2.AppendResponse()
        ack = response.ack  # set in place: no copy of the ack into its response
        ack.offset, ack.record_count, ack.outcome = offset, count, outcome
        ack.committed_offset = expected
        slot = _Ack(response)
        if outcome == rules.APPENDED:
            advance = StreamAdvance(self.stream_id, self.epoch, offset, offset + count)
            try:
                if count <= STEP:  # the usual case: no coroutine, no yield
                    prepared, empty = self.door.pipeline.prepare_append(
                        batch.records, self.tenant, rules.DOOR, advance
                    )
                else:
                    prepared, empty = await self._prepare(batch.records, advance)
            except _Interrupted:
                return None  # the call is over (fenced or stopped): nothing more is answered
            except Exception:
                # The pipeline turns bad records into rejections and never raises; if it does
                # anyway (a bug), end the call after answering what came before. The client
                # retries the batch, and the SDK gives up once that has made no progress for
                # its max_stall_time: the stream fails loudly rather than wedging in silence.
                what = f"preparing the batch at offset {offset} of stream {self.stream_id!r}"
                return _End(errors.unexpected(log, what))
            ack.committed_offset = self.next_offset = advance.to_offset
            group, member = self._submit(prepared.batch)
            slot = _Ack(response, group.submission.future, prepared, empty, group, member)
        self._unanswered += 1
        self._queue(slot)
        return None

    async def _prepare(
        self, records: Any, advance: StreamAdvance
    ) -> tuple[Prepared, list[ingest_pb2.RecordRejection]]:
        """The pipeline's `prepare_append` of a batch (the seam), STEP records at a time."""
        pipeline, count = self.door.pipeline, len(records)
        parts, empty = [], []
        for start in range(0, count, STEP):
            if start:
                await asyncio.sleep(0)  # let the other streams' reads and answers run
                if self._stopped.done():
                    raise _Interrupted
            stop = min(start + STEP, count)
            step = StreamAdvance(
                advance.stream_id,
                advance.epoch,
                advance.from_offset + start,
                advance.from_offset + stop,
                first_index=start,
            )
            part, none = pipeline.prepare_append(records[start:stop], self.tenant, rules.DOOR, step)
            parts.append(part)
            empty += none
        return join(parts, advance), empty

    def _on_malformed(self, bad: Malformed) -> _End:
        """A message whose bytes do not parse: the caller's error, answered INVALID_ARGUMENT
        and never worth a retry (the same bytes fail the same way). Its bytes are kept as a dead
        letter first (committed before the call ends: nothing is lost, not even bad input). The
        batches read before it are still answered, in order: the dead letter queues behind
        them in the writer, and the end slot behind their acks."""
        dead = rules.malformed_dead_letter(
            bad, self.tenant, self.stream_id, self.door.pipeline.clock()
        )
        return _End(
            errors.malformed(bad.message_name, bad.problem), store=self._enqueue(dead).future
        )

    def _submit(self, batch: WriteBatch) -> tuple[_Group, int]:
        """Hand an appended batch to the writer: joined to this call's last submission while
        the writer has not taken it into a flush (no waiting: the writer takes it as soon as
        the running flush ends), else as a new one. Its group, and its place in the group."""
        group = self._group
        if group is not None:
            start = group.submission.batch.starts()
            if self.door.writer.join(group.submission, batch):
                group.starts.append(start)
                return group, len(group.starts) - 1
        self._group = group = _Group(self._enqueue(batch))
        return group, 0

    def _enqueue(self, batch: WriteBatch) -> Submission:
        # Enqueued in request order; the writer admits and commits in that order, which keeps
        # a stream's offset checks in sequence.
        self._group = None
        submission = self.door.writer.enqueue(batch)
        store = submission.future
        self._stores.add(store)
        store.add_done_callback(self._stored)
        return submission

    def _stored(self, store: asyncio.Future[BatchOutcome]) -> None:
        self._stores.discard(store)
        if not store.cancelled():
            store.exception()  # retrieved: the answer loop reports it, or the call is over
        if self._awaited is store:
            self._wake()
