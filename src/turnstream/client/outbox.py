"""SDK: the client half of the Append protocol as pure state (no I/O): un-acked records by offset,
batches in flight on the current connection, and what each ack, resume or gap does to them.
StreamWriter drives it from the network; the unit tests drive it directly."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import grpc

from turnstream.client.errors import KIND_NAMES, Rejection
from turnstream.v1 import ingest_pb2

# Bytes an AppendRequest{batch: AppendBatch{offset, records}} adds around its records: two tags,
# two length varints (<= 5 bytes each) and the offset varint (<= 10 bytes).
BATCH_OVERHEAD = 17


def wire_size(record: Any) -> int:
    """Bytes one record takes inside a batch: tag, length varint, payload."""
    size: int = record.ByteSize()
    return 1 + _varint_len(size) + size


def _varint_len(n: int) -> int:
    length = 1
    while n >= 0x80:
        n >>= 7
        length += 1
    return length


class ProtocolError(Exception):
    """The stream cannot go on consistently; StreamWriter turns it into a StreamError."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Limits:
    """What the server announced in `opened`, capped by what the caller asked for."""

    max_batch_records: int = 500
    max_batch_bytes: int = 4 * 1024 * 1024
    max_inflight_batches: int = 16
    heartbeat_interval: float = 30.0

    @classmethod
    def announced(cls, limits: Any, *, max_batch_records: int) -> Limits:
        """Zero or absent fields (an older server) keep the defaults."""
        default = cls()
        hb = limits.heartbeat_interval.ToTimedelta().total_seconds()
        server_records = limits.max_batch_records or max_batch_records
        return cls(
            max_batch_records=max(1, min(max_batch_records, server_records)),
            max_batch_bytes=limits.max_batch_bytes or default.max_batch_bytes,
            max_inflight_batches=limits.max_inflight_batches or default.max_inflight_batches,
            heartbeat_interval=hb if hb > 0 else default.heartbeat_interval,
        )


@dataclass(slots=True)
class Batch:
    """Records at offset, offset+1, ... sent on one connection; `generation` tells a batch sent
    before the last gap or resume (its answer is stale) from one sent after."""

    offset: int
    records: list[Any]
    generation: int

    @property
    def end(self) -> int:
        return self.offset + len(self.records)

    def request(self) -> ingest_pb2.AppendRequest:
        return ingest_pb2.AppendRequest(
            batch=ingest_pb2.AppendBatch(offset=self.offset, records=self.records)
        )


@dataclass(slots=True)
class AckResult:
    """What one ack did: records newly committed, rejections to report, a resend position."""

    committed: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    resend_from: int | None = None


class Outbox:
    """Records appended and not yet acknowledged, at dense offsets from `base`.

    >>> box = Outbox(committed_offset=0)
    >>> box.append(record)            # -> 0, the record's offset
    >>> batch = box.next_batch(500, 4 << 20)   # registers it as in flight
    >>> box.on_ack(ack)               # drops committed records, returns rejections
    """

    def __init__(self, committed_offset: int = 0) -> None:
        self.base = committed_offset  # first offset not known to be committed
        self.next_offset = committed_offset  # offset the next appended record gets
        self.send_offset = committed_offset  # next offset to send on this connection
        self.sent_high = committed_offset  # one past the highest offset ever sent
        self.generation = 0
        self.inflight: deque[Batch] = deque()
        self.resends = 0
        # (record, wire size, monotonic time appended); the item at _head has offset `base`.
        self._items: list[tuple[Any, int, float]] = []
        self._head = 0

    def __len__(self) -> int:
        return self.next_offset - self.base

    @property
    def unsent(self) -> int:
        return self.next_offset - self.send_offset

    def append(self, record: Any, now: float = 0.0, size: int | None = None) -> int:
        """Buffer a record; return the offset it takes."""
        self._items.append((record, wire_size(record) if size is None else size, now))
        offset = self.next_offset
        self.next_offset += 1
        return offset

    def appended_at(self, offset: int) -> float:
        return self._items[self._head + offset - self.base][2]

    def records(self, start: int | None = None) -> list[Any]:
        """Un-acked records from `start` (default: all of them)."""
        first = self._head + (self.base if start is None else start) - self.base
        return [item[0] for item in self._items[first:]]

    def next_batch(self, max_records: int, max_bytes: int) -> Batch | None:
        """The next batch to send from send_offset, bounded by count and bytes (a record larger
        than max_bytes goes alone: the server answers it), registered as in flight."""
        count = min(max_records, self.unsent)
        if count <= 0:
            return None
        first = self._head + self.send_offset - self.base
        total = BATCH_OVERHEAD
        taken: list[Any] = []
        for record, size, _ in self._items[first : first + count]:
            if taken and total + size > max_bytes:
                break
            taken.append(record)
            total += size
        batch = Batch(self.send_offset, taken, self.generation)
        self.inflight.append(batch)
        self.send_offset = batch.end
        if batch.offset < self.sent_high:
            self.resends += min(batch.end, self.sent_high) - batch.offset
        self.sent_high = max(self.sent_high, batch.end)
        return batch

    def oldest_batch(self, max_records: int) -> range | None:
        """Offsets of the oldest un-acked batch (the one a stalled stream cannot get past):
        as sent when it is in flight, else as it would be cut; None when all is acked."""
        if self.base == self.next_offset:
            return None
        for batch in self.inflight:
            if batch.offset == self.base:
                return range(batch.offset, batch.end)
        return range(self.base, min(self.next_offset, self.base + max_records))

    def resume(self, committed_offset: int) -> int:
        """A (re)opened connection: the server holds everything below committed_offset. Drop
        that, forget what was in flight, send the rest again. Returns how many records it
        committed that were never acked (their acks were lost with the connection)."""
        self._check_within(committed_offset, "the reopened stream")
        dropped = self._advance(committed_offset)
        self.inflight.clear()
        self.send_offset = committed_offset
        self.generation += 1
        return dropped

    def on_ack(self, ack: Any) -> AckResult:
        """Match an ack with the oldest batch in flight (answers come in request order)."""
        if not self.inflight:
            raise ProtocolError(grpc.StatusCode.INTERNAL, "the server acked a batch never sent")
        batch = self.inflight.popleft()
        if ack.offset != batch.offset:
            raise ProtocolError(
                grpc.StatusCode.INTERNAL,
                f"the server acked offset {ack.offset} when offset {batch.offset} was next",
            )
        result = AckResult()
        if ack.outcome in (
            ingest_pb2.APPEND_OUTCOME_APPENDED,
            ingest_pb2.APPEND_OUTCOME_ALREADY_STORED,
        ):
            committed = max(ack.committed_offset, batch.end)
            self._check_within(committed, "an ack")
            result.committed = self._advance(committed)
            self.send_offset = max(self.send_offset, self.base)
            for r in ack.rejections:
                record = batch.records[r.index] if 0 <= r.index < len(batch.records) else None
                result.rejections.append(
                    Rejection(
                        offset=batch.offset + r.index,
                        kind=KIND_NAMES.get(r.kind, "unspecified"),
                        violations=tuple(r.violations),
                        record=record,
                    )
                )
        elif ack.outcome == ingest_pb2.APPEND_OUTCOME_GAP:
            # Batches sent after the one that met the gap are gaps too: only the first of a
            # generation moves the send position, so each record is resent once.
            if batch.generation == self.generation:
                committed = ack.committed_offset
                self._check_within(committed, "a gap answer")
                result.committed = self._advance(committed)
                self.send_offset = committed
                self.generation += 1
                result.resend_from = committed
        else:
            raise ProtocolError(
                grpc.StatusCode.INTERNAL, f"the server answered outcome {ack.outcome}"
            )
        return result

    def _check_within(self, committed: int, where: str) -> None:
        if committed < self.base:
            raise ProtocolError(
                grpc.StatusCode.DATA_LOSS,
                f"{where} says the stream is committed up to offset {committed}, but offsets "
                f"up to {self.base} were acknowledged: the server lost acknowledged records",
            )
        if committed > self.next_offset:
            raise ProtocolError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{where} says the stream is committed up to offset {committed}, past the "
                f"{self.next_offset} records written: another writer appended to this stream",
            )

    def _advance(self, committed: int) -> int:
        dropped = committed - self.base
        if dropped <= 0:
            return 0
        self._head += dropped
        self.base = committed
        self.sent_high = max(self.sent_high, committed)
        # Compact now and then: O(1) amortised per record, no deque indexing cost.
        if self._head > 1024 and self._head * 2 > len(self._items):
            del self._items[: self._head]
            self._head = 0
        return dropped
