"""Door: one Append call, from `open` to its end. A reader task turns client messages into
answer slots (in request order); the call's own coroutine answers each slot once its batch has
committed. The pipeline validates and the writer stores; this module only sequences and maps."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.rpc import code_pb2, status_pb2

from turnstream import errors
from turnstream.core.batch import BatchOutcome, StreamAdvance, WriteBatch
from turnstream.core.ports import StoreUnavailable, StreamConflict
from turnstream.doors.grpc_ingest import abort
from turnstream.v1 import ingest_pb2

if TYPE_CHECKING:
    from turnstream.doors.grpc_stream import StreamDoor

log = logging.getLogger(__name__)
T = TypeVar("T")

DOOR = "grpc.Append"
APPENDED = ingest_pb2.APPEND_OUTCOME_APPENDED
ALREADY_STORED = ingest_pb2.APPEND_OUTCOME_ALREADY_STORED
GAP = ingest_pb2.APPEND_OUTCOME_GAP
HEARTBEAT = ingest_pb2.AppendResponse(heartbeat=ingest_pb2.Heartbeat())


def shutting_down() -> status_pb2.Status:
    """UNAVAILABLE for a call the server cannot take or finish because it is going away."""
    return errors.status(
        code_pb2.UNAVAILABLE,
        "the server is shutting down; reconnect and resume",
        "SHUTTING_DOWN",
        retry_after=1.0,
    )


@dataclass(slots=True)
class _Ack:
    """The answer slot of one batch: the ack to send, sent once `store` (if any) committed."""

    ack: ingest_pb2.BatchAck
    store: asyncio.Future[BatchOutcome] | None = None


@dataclass(slots=True)
class _End:
    """The last slot: end with `status` (None = OK), after a `drain` message if `drain`."""

    status: status_pb2.Status | None = None
    drain: bool = False


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
        self._slots: asyncio.Queue[_Ack | _End] = asyncio.Queue()
        self._unanswered = 0  # batches read and not yet answered (the backpressure window)
        self._room = asyncio.Event()
        self._stopped: asyncio.Future[status_pb2.Status] = (
            asyncio.get_running_loop().create_future()
        )
        self._draining = False
        self._reader: asyncio.Task[None] | None = None
        self._read: asyncio.Future[Any] | None = None
        self._stores: set[asyncio.Future[BatchOutcome]] = set()
        self._last_sent = 0.0
        self._opened = False

    # -- control from the door ----------------------------------------------------------------

    def fence(self) -> None:
        """A newer connection opened this stream: end with ABORTED, answering nothing more."""
        self.stop(
            errors.status(
                code_pb2.ABORTED,
                f"stream {self.stream_id!r} was opened by a newer connection",
                "STREAM_FENCED",
                metadata={"stream_id": self.stream_id},
            )
        )

    def drain(self) -> None:
        """Stop reading; answer every batch already read, then send `drain` and end with OK."""
        if not self._opened:  # nothing read to answer yet
            self.stop(shutting_down())
            return
        self._draining = True
        self._room.set()
        if self._read is not None and not self._read.done():
            # A message already received is still processed; a read still waiting is abandoned
            # (nothing of it reached us, so nothing is lost: the client resends it on resume).
            self._read.cancel()

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
        first = await self._until(asyncio.ensure_future(self.context.read()), heartbeat=False)
        if first is grpc.aio.EOF:
            return None
        if first.WhichOneof("kind") != "open":
            return errors.invalid_request(
                "open", "the first message of an Append call must be open", "OPEN_REQUIRED"
            )
        problem = self.door.check_stream_id(first.open.stream_id, "open.stream_id")
        if problem is not None:
            return problem
        if self.door.draining:
            return shutting_down()
        self.stream_id = first.open.stream_id
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
        while True:
            if self._slots.empty():
                slot = await self._until(asyncio.ensure_future(self._slots.get()))
            else:
                slot = self._slots.get_nowait()
            if isinstance(slot, _End):
                if slot.drain and slot.status is None:
                    reason = "the server is shutting down: every batch read was answered; resume"
                    await self._send(
                        ingest_pb2.AppendResponse(drain=ingest_pb2.Drain(reason=reason))
                    )
                return slot.status
            if slot.store is not None:
                try:
                    await self._until(slot.store)
                except _Interrupted:
                    raise
                except StoreUnavailable as exc:
                    return errors.unavailable(str(exc), exc.retry_after)
                except StreamConflict as exc:
                    return self._conflict(exc)
                except Exception:
                    return errors.unexpected(log, f"storing a batch of stream {self.stream_id!r}")
            self.committed_offset = slot.ack.committed_offset
            await self._send(ingest_pb2.AppendResponse(ack=slot.ack))
            self._unanswered -= 1
            self._room.set()

    def _conflict(self, exc: StreamConflict) -> status_pb2.Status:
        if exc.epoch != self.epoch:
            self.fence()
            return self._stopped.result()
        return errors.status(
            code_pb2.ABORTED,
            f"stream {self.stream_id!r} is at committed offset {exc.committed_offset}; "
            "reopen it and resume from there",
            "STREAM_CONFLICT",
            metadata={"stream_id": self.stream_id, "committed_offset": str(exc.committed_offset)},
        )

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
            await asyncio.wait(
                (future, self._stopped),
                timeout=timeout if heartbeat else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
        if self._stopped.done():
            future.cancel()
            raise _Interrupted
        return future.result()

    async def _send(self, response: ingest_pb2.AppendResponse) -> None:
        await self.context.write(response)
        self._last_sent = asyncio.get_running_loop().time()

    def _close(self) -> None:
        self.door.release(self)
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
                    self._slots.put_nowait(_End())
                    return
                end = self._on_message(message)
                if end is not None:
                    self._slots.put_nowait(end)
                    return
            self._slots.put_nowait(_End(drain=True))
        except asyncio.CancelledError:
            raise
        except Exception:
            problem = errors.unexpected(log, f"reading Append stream {self.stream_id!r}")
            self._slots.put_nowait(_End(problem))

    async def _has_room(self) -> bool:
        """Wait while the window is full: not reading lets HTTP/2 flow control slow the client."""
        while self._unanswered >= self._settings.max_inflight_batches and not self._draining:
            self._room.clear()
            await self._room.wait()
        return not self._draining

    async def _next_message(self) -> Any:
        """The next client message, EOF, or None when drain abandoned the read."""
        self._read = asyncio.ensure_future(self.context.read())
        try:
            return await self._read
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._draining and task is not None and not task.cancelling():
                return None
            raise

    def _on_message(self, message: ingest_pb2.AppendRequest) -> _End | None:
        kind = message.WhichOneof("kind")
        if kind == "batch":
            return self._on_batch(message.batch)
        if kind == "heartbeat":
            return None
        if kind == "open":
            return _End(
                errors.invalid_request(
                    "open", "the stream is already open; open only comes first", "ALREADY_OPEN"
                )
            )
        return _End(errors.invalid_request("kind", "set one of open, batch, heartbeat", "REQUIRED"))

    def _on_batch(self, batch: ingest_pb2.AppendBatch) -> _End | None:
        """Decide what becomes of a batch and queue its answer slot (in request order)."""
        problem = self._check_batch(batch)
        if problem is not None:
            return _End(problem)
        offset, count, expected = batch.offset, len(batch.records), self.next_offset
        ack = ingest_pb2.BatchAck(offset=offset, record_count=count, committed_offset=expected)
        if offset == expected:
            advance = StreamAdvance(self.stream_id, self.epoch, offset, offset + count)
            prepared, empty = self.door.pipeline.prepare_append(
                batch.records, self.tenant, DOOR, advance
            )
            ack.outcome = APPENDED
            ack.committed_offset = advance.to_offset
            ack.rejections.extend(sorted([*prepared.rejections, *empty], key=_index))
            slot = _Ack(ack, self._store(prepared.batch))
            self.next_offset = advance.to_offset
        elif offset + count <= expected:
            # Committed, or covered by a batch in flight: answered in order, so after it committed.
            ack.outcome = ALREADY_STORED
            slot = _Ack(ack)
        elif offset > expected:
            ack.outcome = GAP
            slot = _Ack(ack)
        else:
            return _End(
                errors.invalid_request(
                    "batch.offset",
                    f"the batch at offset {offset} with {count} records straddles the stream's "
                    f"offset {expected}: send batches that start at offset {expected}",
                    "OFFSET_STRADDLES",
                )
            )
        self._unanswered += 1
        self._slots.put_nowait(slot)
        return None

    def _check_batch(self, batch: ingest_pb2.AppendBatch) -> status_pb2.Status | None:
        s, count = self._settings, len(batch.records)
        if count == 0:
            return errors.invalid_request(
                "batch.records", "a batch must carry at least one record", "EMPTY_BATCH"
            )
        if count > s.max_batch_records:
            return errors.invalid_request(
                "batch.records",
                f"the batch has {count} records, more than max_batch_records "
                f"({s.max_batch_records})",
                "BATCH_TOO_LARGE",
            )
        size = batch.ByteSize()
        if size > s.max_batch_bytes:
            return errors.invalid_request(
                "batch",
                f"the batch is {size} bytes, more than max_batch_bytes ({s.max_batch_bytes})",
                "BATCH_TOO_LARGE",
            )
        if batch.offset < 0:
            return errors.invalid_request(
                "batch.offset", "offsets start at 0; a batch offset cannot be negative", "INVALID"
            )
        return None

    def _store(self, batch: WriteBatch) -> asyncio.Future[BatchOutcome]:
        # Tasks start in creation order, so submit() is called in request order; the writer
        # admits and commits in that order, which keeps a stream's offset checks in sequence.
        store = asyncio.ensure_future(self.door.writer.submit(batch))
        self._stores.add(store)
        store.add_done_callback(self._stored)
        return store

    def _stored(self, store: asyncio.Future[BatchOutcome]) -> None:
        self._stores.discard(store)
        if not store.cancelled():
            store.exception()  # retrieved: the answer loop reports it, or the call is over


def _index(rejection: ingest_pb2.RecordRejection) -> int:
    return rejection.index
