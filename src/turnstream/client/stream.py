"""SDK: StreamWriter, the asyncio writer of one Append stream. It batches records by count and
linger, keeps a bounded buffer of un-acked records, and survives disconnects, restarts and drains
by reopening the stream and resending what the server has not committed (same offsets)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import grpc

from turnstream.client.backoff import Backoff
from turnstream.client.channel import REBALANCE_HEADER, channel_for, own_connection
from turnstream.client.convert import to_record
from turnstream.client.credentials import with_api_key
from turnstream.client.errors import Rejection, RPCError, StreamError
from turnstream.client.outbox import (
    BATCH_OVERHEAD,
    Limits,
    Outbox,
    ProtocolError,
    wire_size,
)
from turnstream.client.patience import Ending, Patience, stream_retryable
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc

log = logging.getLogger("turnstream.client")

_HEARTBEAT = ingest_pb2.AppendRequest(heartbeat=ingest_pb2.Heartbeat())
# How long close() waits for the server to end the stream after the last ack.
_CLOSE_TIMEOUT = 2.0
# The server takes an open after at most 12 turn-aways (REBALANCE); past this many, one is
# treated like any UNAVAILABLE (backoff and patience), so no server can keep a writer looping.
_MAX_TURNS = 16


class _Signal:
    """Wakes every waiter at the next `fire()` (an asyncio.Condition without the lock)."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._future)

    def fire(self) -> None:
        if self._future is not None:
            if not self._future.done():
                self._future.set_result(None)
            self._future = None


class StreamWriter:
    """Writes the records of one stream exactly once, whatever happens to the connection.

    Each record takes the next offset of the stream (continuing from the stream's committed
    offset when the writer opens it). Records are sent in batches of up to `max_batch_records`
    (and the server's limits), a partial batch after `linger` seconds. At most
    `max_buffer_records` records wait un-acked: beyond that `turn()` and friends wait for room,
    they never drop. On a disconnect, UNAVAILABLE or drain the writer reconnects with jittered
    backoff (initial_backoff .. max_backoff, at least the server's RetryInfo delay), reopens the
    stream and resends from its committed offset; after `max_reconnect_time` seconds without a
    stream (None: forever) it fails, and after `max_stall_time` seconds in which opened streams
    kept failing without the committed offset advancing (the same batch failing every time;
    None: forever). Invalid records reach `on_rejection` and `rejections`. A fatal error
    (ABORTED: a newer writer opened the stream; INVALID_ARGUMENT; a stall; ...) makes the next
    call, `flush()` or `close()` raise StreamError.

    >>> async with StreamWriter("127.0.0.1:50051", "exec-42", execution_id="exec-42") as w:
    ...     await w.turn(turn_number=1, model="claude-sonnet-4-5", started_at=datetime.now(UTC))
    ...     await w.task(task_number=1, task_description="plan", status="completed")
    ...     await w.flush()          # everything above is committed
    """

    def __init__(
        self,
        target: str,
        stream_id: str,
        *,
        channel_options: Sequence[tuple[str, Any]] | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        execution_id: str = "",
        max_batch_records: int = 500,
        linger: float = 0.05,
        max_buffer_records: int = 10_000,
        on_rejection: Callable[[Rejection], None] | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_reconnect_time: float | None = None,
        max_stall_time: float | None = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        if not stream_id:
            raise ValueError("stream_id must not be empty")
        if max_batch_records < 1 or max_buffer_records < 1:
            raise ValueError("max_batch_records and max_buffer_records must be at least 1")
        self.target = target
        self.stream_id = stream_id
        self._channel_options = channel_options
        self._metadata = with_api_key(metadata, api_key)
        self._credentials = credentials
        self._execution_id = execution_id
        self._max_batch_records = max_batch_records
        self._linger = linger
        self._max_buffer = max_buffer_records
        self._on_rejection = on_rejection
        self._backoff = Backoff(initial_backoff, max_backoff, rng or random.Random())
        self._patience = Patience(max_reconnect_time, max_stall_time)

        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._outbox: Outbox | None = None
        self._limits = Limits(max_batch_records=max_batch_records)
        self._task: asyncio.Task[None] | None = None
        self._opened: asyncio.Future[None] | None = None
        self._changed = _Signal()  # acks, resumes, failure: what flush() and turn() wait for
        self._wake = asyncio.Event()  # the sender has something to do
        self._flush_upto = 0
        self._draining = False
        self._closing = False
        self._closed = False
        self._fatal: StreamError | None = None
        self._fatal_raised = False
        self._attempt_opened = False
        self._live = False  # a stream is open right now

        self.acked = 0
        """Records the server has committed (stored or kept as dead letters)."""
        self.rejected = 0
        """Records the server refused as invalid (a subset of `acked`)."""
        self.reconnects = 0
        """Times the stream was reopened after the first open."""
        self.rebalances = 0
        """Times a `serve --workers` process turned an open away (REBALANCE) and the writer
        reopened the stream on a new connection."""
        self._turned = 0  # turn-aways of the open under way
        self._retired: set[asyncio.Task[None]] = set()  # channels left by a turn-away, closing
        self.rejections: list[Rejection] = []
        """Every rejection, in offset order."""

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> StreamWriter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.close()
        elif issubclass(exc_type, Exception):
            # The body failed: still deliver what it appended, but let its error propagate.
            try:
                await self.close()
            except StreamError as error:
                log.warning("stream %s: closing after an error failed: %s", self.stream_id, error)
        else:  # cancelled or interrupted: do not block on the network
            await self.close(flush=False)

    async def start(self) -> None:
        """Open the stream (retrying like any reconnect); `async with` calls it."""
        if self._task is not None:
            raise RuntimeError("the writer is already started")
        self._channel = channel_for(self.target, self._channel_options, self._credentials)
        self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
        self._opened = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"turnstream-stream-{self.stream_id}")
        try:
            await asyncio.shield(self._opened)
        except BaseException:
            await self.close(flush=False)
            raise

    async def flush(self) -> None:
        """Return when every record appended so far is committed (acked)."""
        box = self._ready()
        target = box.next_offset
        if target > self._flush_upto:
            self._flush_upto = target
            self._wake.set()
        while box.base < target:
            await self._changed.wait()
            self._raise_failure()
            if self._closed:
                raise RuntimeError("the writer was closed before these records were acked")

    async def close(self, *, flush: bool = True) -> None:
        """Flush (unless flush=False), end the stream and close the channel. Raises the
        StreamError that stopped the writer, unless it was already raised to the caller."""
        if self._closed:
            return
        try:
            if flush and self._fatal is None and self._outbox is not None:
                await self.flush()
        finally:
            self._closed = self._closing = True
            self._wake.set()
            self._changed.fire()  # callers waiting for acks or room find the writer closed
            if self._task is not None:
                if not flush or not self._live:  # nothing to end gracefully
                    self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._task), _CLOSE_TIMEOUT)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            if self._channel is not None:
                await self._channel.close()
            if self._retired:
                await asyncio.gather(*self._retired, return_exceptions=True)
        if self._fatal is not None and not self._fatal_raised and flush:
            self._fatal_raised = True
            raise self._fatal

    # -- appending ------------------------------------------------------------------------

    async def turn(self, turn: Any = None, /, **fields: Any) -> int:
        """Append a Turn (a message, a dict, or keyword arguments); return its offset."""
        return await self.append("turn", turn, **fields)

    async def tool_call(self, tool_call: Any = None, /, **fields: Any) -> int:
        """Append a ToolCall; return its offset."""
        return await self.append("tool_call", tool_call, **fields)

    async def task(self, task: Any = None, /, **fields: Any) -> int:
        """Append a Task (status may be a string: "running", "completed", ...)."""
        return await self.append("task", task, **fields)

    async def execution(self, execution: Any = None, /, **fields: Any) -> int:
        """Append an Execution; return its offset."""
        return await self.append("execution", execution, **fields)

    async def append(self, kind: str, value: Any = None, /, **fields: Any) -> int:
        """Append one record of `kind` ("turn", "tool_call", "task", "execution")."""
        box = self._ready()
        record = to_record(kind, value, fields, self._execution_id)
        size = wire_size(record)
        if size + BATCH_OVERHEAD > self._limits.max_batch_bytes:
            raise ValueError(
                f"the {kind} takes {size} bytes, more than the server's batch limit of "
                f"{self._limits.max_batch_bytes}"
            )
        while len(box) >= self._max_buffer:
            await self._changed.wait()
            self._ready()
        offset = box.append(record, asyncio.get_running_loop().time(), size)
        self._wake.set()
        return offset

    # -- state ----------------------------------------------------------------------------

    @property
    def committed_offset(self) -> int:
        """Offset of the first record the server has not committed."""
        return 0 if self._outbox is None else self._outbox.base

    @property
    def next_offset(self) -> int:
        """Offset the next appended record takes."""
        return 0 if self._outbox is None else self._outbox.next_offset

    @property
    def pending(self) -> int:
        """Records appended and not yet acked."""
        return 0 if self._outbox is None else len(self._outbox)

    @property
    def resends(self) -> int:
        """Records sent more than once (after a reconnect or a gap)."""
        return 0 if self._outbox is None else self._outbox.resends

    @property
    def limits(self) -> Limits:
        """The limits in force (the server's, capped by this writer's)."""
        return self._limits

    @property
    def error(self) -> StreamError | None:
        """The error that stopped the writer, if any."""
        return self._fatal

    def _ready(self) -> Outbox:
        self._raise_failure()
        if self._closing:
            raise RuntimeError("the writer is closed")
        if self._outbox is None:
            raise RuntimeError("the writer is not started: use `async with` or `await start()`")
        return self._outbox

    def _raise_failure(self) -> None:
        if self._fatal is not None:
            self._fatal_raised = True
            raise self._fatal

    def _fail(self, error: StreamError) -> None:
        if self._fatal is None:
            if self._outbox is not None:
                error.unacked = self._outbox.records()
            self._fatal = error
            log.error("stream %s failed: %s", self.stream_id, error)
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(error)
            self._fatal_raised = True  # start() raises it
        self._changed.fire()

    # -- the connection -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._reconnect_loop()
        except Exception as exc:  # a bug here must fail the writer, never hang flush()
            log.exception("stream %s: the writer task failed", self.stream_id)
            self._fail(StreamError(grpc.StatusCode.INTERNAL, f"the writer task failed: {exc!r}"))

    async def _reconnect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            error: RPCError | None = None
            drained, reason = False, ""
            try:
                drained = await self._connection()
                reason = "the server drained the stream" if drained else "the server ended it"
            except grpc.aio.AioRpcError as exc:
                error = RPCError.from_aio(exc)
            except ProtocolError as exc:
                self._fail(StreamError(exc.code, exc.message))
                return
            if error is not None and self._rebalance(error):
                self._reconnect_elsewhere()
                continue
            if self._closing and (error is None or stream_retryable(error)):
                return
            ending = Ending(self._attempt_opened, error, drained, reason)
            self._attempt_opened = False
            stuck = None
            if self._outbox is not None:
                stuck = self._outbox.oldest_batch(self._limits.max_batch_records)
            fatal = self._patience.ended(ending, loop.time(), stuck)
            if fatal is not None:
                self._fail(fatal)
                return
            # A drain is planned: reconnect at once (another replica may be up already).
            retry_after = None if error is None else error.retry_delay
            delay = 0.0 if drained else self._backoff.next(retry_after)
            level = logging.INFO if drained else logging.WARNING
            log.log(
                level,
                "stream %s: %s; reconnecting in %.2f s",
                self.stream_id,
                ending.describe(),
                delay,
            )
            await asyncio.sleep(delay)

    def _rebalance(self, error: RPCError) -> bool:
        """The open was turned away to even the streams over a server's --workers processes:
        reopen at once on a new connection (not a failure: no backoff, no patience spent)."""
        return (
            error.code == grpc.StatusCode.UNAVAILABLE
            and error.reason == "REBALANCE"
            and not self._closing
            and self._turned < _MAX_TURNS
        )

    def _reconnect_elsewhere(self) -> None:
        """A channel of its own (not the process's shared connection to the target): a new
        TCP connection, from a new source port, which the server's kernel hashes again."""
        self._turned += 1
        self.rebalances += 1
        log.debug(
            "stream %s: turned away (REBALANCE); reopening on a new connection", self.stream_id
        )
        old = self._channel
        self._channel = channel_for(
            self.target, own_connection(self._channel_options), self._credentials
        )
        self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
        if old is not None:  # closed meanwhile: the reopen need not wait for it
            task = asyncio.create_task(old.close())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def _connection(self) -> bool:
        """One connection: open, then send and receive until it ends. Returns True when the
        server drained it; raises AioRpcError when it failed."""
        # Declares that this writer can be turned away and reopen on a new connection.
        metadata = (*self._metadata, (REBALANCE_HEADER, str(self._turned)))
        call = self._stub.Append(metadata=metadata)
        self._draining = False
        sender: asyncio.Task[None] | None = None
        receiver: asyncio.Task[bool] | None = None
        try:
            try:
                await call.write(
                    ingest_pb2.AppendRequest(open=ingest_pb2.OpenStream(stream_id=self.stream_id))
                )
            except asyncio.InvalidStateError:  # the server ended the call at once, with OK
                return False
            response = await call.read()
            if response is grpc.aio.EOF:
                return False
            if response.WhichOneof("kind") != "opened":
                raise ProtocolError(
                    grpc.StatusCode.INTERNAL,
                    f"the server answered open with {response.WhichOneof('kind')}",
                )
            self._on_opened(response.opened)
            self._attempt_opened = self._live = True
            self._turned = 0
            receiver = asyncio.create_task(self._receive(call))
            sender = asyncio.create_task(self._send(call))
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()  # a bug in the sender surfaces here
            return await receiver
        finally:
            self._live = False
            for task in (sender, receiver):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await task
            call.cancel()

    def _on_opened(self, opened: Any) -> None:
        self._limits = Limits.announced(opened.limits, max_batch_records=self._max_batch_records)
        committed = opened.committed_offset
        if self._outbox is None:
            self._outbox = Outbox(committed)
            self._flush_upto = committed
            if self._opened is not None and not self._opened.done():
                self._opened.set_result(None)
            log.debug("stream %s opened at offset %d", self.stream_id, committed)
        else:
            dropped = self._outbox.resume(committed)
            self.acked += dropped
            if dropped:
                self._patience.progressed()
            self.reconnects += 1
            log.info(
                "stream %s resumed at offset %d (%d records not yet acked)",
                self.stream_id,
                committed,
                self._outbox.unsent,
            )
        self._changed.fire()
        self._wake.set()

    async def _receive(self, call: Any) -> bool:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return self._draining
            kind = response.WhichOneof("kind")
            if kind == "ack":
                self._on_ack(response.ack)
            elif kind == "heartbeat":
                self._backoff.reset()
            elif kind == "drain":
                # The server answered everything it read; what it did not read is resent.
                log.info("stream %s: drain: %s", self.stream_id, response.drain.reason)
                self._draining = True
                self._wake.set()
            else:
                raise ProtocolError(grpc.StatusCode.INTERNAL, f"unexpected {kind} on the stream")

    def _on_ack(self, ack: Any) -> None:
        assert self._outbox is not None
        result = self._outbox.on_ack(ack)
        self._backoff.reset()
        self.acked += result.committed
        if result.committed:
            self._patience.progressed()
        if result.resend_from is not None:
            log.info("stream %s: gap, resending from %d", self.stream_id, result.resend_from)
        for rejection in result.rejections:
            self.rejected += 1
            self.rejections.append(rejection)
            if self._on_rejection is not None:
                try:
                    self._on_rejection(rejection)
                except Exception:
                    log.exception("stream %s: on_rejection raised", self.stream_id)
        self._changed.fire()
        self._wake.set()

    async def _send(self, call: Any) -> None:
        """Write batches (full, flushed or lingered long enough) and idle heartbeats."""
        assert self._outbox is not None
        box, loop = self._outbox, asyncio.get_running_loop()
        last_write = loop.time()
        try:
            while not self._draining:
                if self._closing:
                    await call.done_writing()
                    return
                self._wake.clear()
                limits, now = self._limits, loop.time()
                timeout = last_write + limits.heartbeat_interval - now
                if box.unsent and len(box.inflight) < limits.max_inflight_batches:
                    due = box.appended_at(box.send_offset) + self._linger
                    if (
                        box.unsent >= limits.max_batch_records
                        or self._flush_upto > box.send_offset
                        or len(box) >= self._max_buffer  # callers wait: no point lingering
                        or now >= due
                    ):
                        batch = box.next_batch(limits.max_batch_records, limits.max_batch_bytes)
                        if batch is not None:
                            await call.write(batch.request())
                            last_write = loop.time()
                        continue
                    timeout = min(timeout, due - now)
                if timeout <= 0:
                    await call.write(_HEARTBEAT)
                    last_write = loop.time()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            # The call is over; the receiver reads why.
            return
