"""Core: the one write path of every door, after it parsed its wire format. A door calls
`write` (records) or `keep_unparsed` (a body it could not turn into records); both hand their
work to a `Sink` — the writer, or a recording fake in tests — and return the answer, built here
once. Doors only encode it (gRPC WriteResponse, Kubiya JSON, HoneyHive JSON).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from turnstream.core import deadletter
from turnstream.core.batch import BatchOutcome, WriteBatch
from turnstream.core.pipeline import KINDS, Item, Pipeline, Prepared, answer_failures
from turnstream.v1 import ingest_pb2

# A large request is prepared and stored this many records at a time: the event loop is never
# held for more than a few milliseconds (other callers' latency), rows exist for one chunk at a
# time (memory), and each chunk commits in its own transaction, interleaved with other callers'.
# A Write was never atomic (partial success), and a retry after a failure half-way merges.
CHUNK_RECORDS = 250
# Chunks of one request submitted and not yet committed while the next one is prepared.
AHEAD = 2


class Sink(Protocol):
    """Where prepared batches go. `submit` returns once the batch's transaction committed; it
    raises core.ports errors (StoreUnavailable) when nothing was stored."""

    async def submit(self, batch: WriteBatch) -> BatchOutcome: ...


async def write(
    sink: Sink,
    pipeline: Pipeline,
    tenant_id: str,
    door: str,
    items: Iterator[Item],
    count: int,
) -> tuple[Prepared, BatchOutcome]:
    """Validate, enrich and store `count` records, a chunk at a time; every record ends as a
    row or a dead letter. Returns what was accepted and rejected (in `Prepared`) and the
    merged counts, after everything committed."""

    async def chunks() -> AsyncIterator[Prepared]:
        for n in range(0, max(count, 1), CHUNK_RECORDS):
            if n:
                await asyncio.sleep(0)  # let other callers' work in between chunks
            yield pipeline.prepare(tenant_id, door, list(itertools.islice(items, CHUNK_RECORDS)))

    total, outcome = await _store(sink, chunks(), Prepared(WriteBatch(tenant_id, door=door)))
    total.rejections.sort(key=lambda r: (r.kind, r.index))
    return total, outcome


async def _store(
    sink: Sink, chunks: AsyncIterator[Prepared], total: Prepared
) -> tuple[Prepared, BatchOutcome]:
    """Submit each chunk as soon as it is prepared, and prepare the next one while the writer
    stores it: at most AHEAD chunks wait for their commit at once (a chunk's preparation and
    the previous chunk's flush overlap instead of taking turns). The writer commits in submit
    order; every submission is awaited, also when one fails, so none is left unanswered."""
    outcome = BatchOutcome()
    waiting: collections.deque[tuple[Prepared, asyncio.Future[BatchOutcome]]] = collections.deque()
    try:
        async for chunk in chunks:
            waiting.append((chunk, asyncio.ensure_future(sink.submit(chunk.batch))))
            if len(waiting) > AHEAD:
                prepared, stored = waiting.popleft()
                _absorb(total, outcome, prepared, await stored)
        while waiting:
            prepared, stored = waiting.popleft()
            _absorb(total, outcome, prepared, await stored)
    finally:
        # Left only by an error (or the caller's cancellation): the chunks already submitted
        # are committed or not all the same, as any Write's chunks; wait for them to be
        # answered so no outcome goes unretrieved.
        if waiting:
            await asyncio.gather(*(stored for _, stored in waiting), return_exceptions=True)
    return total, outcome


def _absorb(total: Prepared, outcome: BatchOutcome, prepared: Prepared, part: BatchOutcome) -> None:
    """Add one committed chunk to the request's answer (rows the database refused included)."""
    answer_failures(prepared, part)
    for kind, counts in part.counts.items():
        into = outcome.counts[kind]
        into.created += counts.created
        into.updated += counts.updated
        into.unchanged += counts.unchanged
    total.rejections += prepared.rejections
    total.accepted += prepared.accepted
    total.unpriced += prepared.unpriced


async def keep_unparsed(
    sink: Sink,
    pipeline: Pipeline,
    tenant_id: str,
    door: str,
    body: bytes,
    violations: list[Any],
    *,
    kind: str = "request",
    parsed: dict[str, Any] | None = None,
    execution_id: str | None = None,
) -> None:
    """Keep a body no record could be made of (unparseable bytes or JSON, the wrong shape) as
    a dead letter; returns once it is committed. Nothing is lost, not even bad input."""
    batch = WriteBatch(tenant_id, door=door)
    batch.rejected.append(
        deadletter.unparsed(
            tenant_id=tenant_id,
            door=door,
            kind=kind,
            body=body,
            violations=violations,
            received_at=pipeline.clock(),
            parsed=parsed,
            execution_id=execution_id,
        )
    )
    await sink.submit(batch)


def write_response(prepared: Prepared, outcome: BatchOutcome) -> ingest_pb2.WriteResponse:
    """The answer to a Write, whatever door it came through (foreign formats derive theirs)."""
    rejected = dict.fromkeys(KINDS, 0)
    enum_to_kind = {k.enum: name for name, k in KINDS.items()}
    for r in prepared.rejections:
        rejected[enum_to_kind[r.kind]] += 1
    per = {
        kind: ingest_pb2.RecordCounts(
            created=outcome.counts[kind].created,
            updated=outcome.counts[kind].updated,
            unchanged=outcome.counts[kind].unchanged,
            rejected=rejected[kind],
        )
        for kind in KINDS
    }
    total = ingest_pb2.RecordCounts(
        created=sum(c.created for c in per.values()),
        updated=sum(c.updated for c in per.values()),
        unchanged=sum(c.unchanged for c in per.values()),
        rejected=sum(c.rejected for c in per.values()),
    )
    ids = {item.message.execution_id for item in prepared.accepted}
    return ingest_pb2.WriteResponse(
        counts=ingest_pb2.WriteCounts(
            total=total,
            turns=per["turn"],
            tool_calls=per["tool_call"],
            tasks=per["task"],
            executions=per["execution"],
            unpriced_turns=prepared.unpriced,
        ),
        rejections=prepared.rejections,
        execution_id=ids.pop() if len(ids) == 1 else "",
    )


async def write_all_or_nothing(
    sink: Sink,
    pipeline: Pipeline,
    tenant_id: str,
    door: str,
    items: list[Item],
    body: bytes,
    parsed: dict[str, Any] | None,
) -> tuple[Prepared, BatchOutcome | None]:
    """For formats whose callers expect an invalid request to store nothing (Kubiya, as
    FastAPI answers 422): every record is validated first; if any is invalid, none is stored
    and the whole body is kept as one dead letter with every violation. Returns the prepared
    records and the outcome, None when nothing was stored."""
    chunks: list[Prepared] = []
    for n in range(0, max(len(items), 1), CHUNK_RECORDS):
        if n:
            await asyncio.sleep(0)
        chunks.append(pipeline.prepare(tenant_id, door, items[n : n + CHUNK_RECORDS]))
    rejections = [r for chunk in chunks for r in chunk.rejections]
    if rejections:
        execution_id = (parsed or {}).get("execution_id")
        await keep_unparsed(
            sink,
            pipeline,
            tenant_id,
            door,
            body,
            [v for r in rejections for v in r.violations],
            parsed=parsed,
            execution_id=execution_id if isinstance(execution_id, str) else None,
        )
        failed = Prepared(WriteBatch(tenant_id, door=door), rejections=rejections)
        return failed, None

    async def prepared() -> AsyncIterator[Prepared]:
        for chunk in chunks:
            yield chunk

    return await _store(sink, prepared(), Prepared(WriteBatch(tenant_id, door=door)))
