"""Core: the unit of work a door hands the writer: rows of every kind, dead letters, and the
stream offset the same transaction must advance (no I/O)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from turnstream.core.rows import Row, span_rows, widen_span

KINDS = ("execution", "turn", "tool_call", "task")


def _per_kind() -> dict[str, list[Any]]:
    # A literal, not a comprehension over KINDS: built twice per batch, and with one record per
    # message that is twice per record.
    return {"execution": [], "turn": [], "tool_call": [], "task": []}


@dataclass(slots=True, frozen=True)
class StreamAdvance:
    """Move stream_id from from_offset to to_offset, only if it is still there under epoch."""

    stream_id: str
    epoch: int
    from_offset: int
    to_offset: int
    # For the pipeline: the index, in its client message, of the record at from_offset (a long
    # message is prepared a part at a time; answers and field paths still name its own index).
    first_index: int = 0


@dataclass(slots=True)
class WriteBatch:
    """Rows of one request; stored in one transaction, merged by key with what is stored."""

    tenant_id: str
    rows: dict[str, list[Row]] = field(default_factory=_per_kind)
    # Executions never sent explicitly: first start and last completion of their records.
    derived_executions: list[Row] = field(default_factory=list)
    rejected: list[Row] = field(default_factory=list)
    stream: StreamAdvance | None = None
    # The door the rows came through, and per kind the pipeline Item each row was built from
    # (same positions as `rows`): if the database refuses a row, the writer dead-letters it
    # with `core.deadletter.storage_failure` and the door answers it by the item's index.
    door: str = ""
    sources: dict[str, list[Any]] = field(default_factory=_per_kind)

    def size(self) -> int:
        return sum(len(r) for r in self.rows.values()) + len(self.rejected)

    def starts(self) -> tuple[int, ...]:
        """Where rows added next would start, per kind (in KINDS order): see `absorb`."""
        rows = self.rows
        return (
            len(rows["execution"]),
            len(rows["turn"]),
            len(rows["tool_call"]),
            len(rows["task"]),
        )

    def extend(self, other: WriteBatch) -> None:
        """Add `other`'s rows, their sources and dead letters after this batch's, and widen
        the derived executions over both. A row of `other` lands at `starts()` (taken before)
        + its position."""
        for kind, got in other.rows.items():
            if got:
                self.rows[kind] += got
                self.sources[kind] += other.sources[kind]
        if other.rejected:
            self.rejected += other.rejected
        if other.derived_executions:
            spans: dict[str, list[Any]] = {}
            for row in (*self.derived_executions, *other.derived_executions):
                widen_span(spans, row)
            self.derived_executions = span_rows(self.tenant_id, spans)

    def absorb(self, other: WriteBatch) -> None:
        """Add `other`, the next batch of the same stream (starting where this one ends): stored
        in one transaction, advancing the stream over both; `BatchOutcome.part` maps a refused
        row of it back."""
        self.extend(other)
        mine, theirs = self.stream, other.stream
        assert mine is not None and theirs is not None and mine.to_offset == theirs.from_offset
        self.stream = StreamAdvance(
            mine.stream_id, mine.epoch, mine.from_offset, theirs.to_offset, mine.first_index
        )


@dataclass(slots=True)
class KindCounts:
    """What became of the rows of one kind."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def count(self, revision: int | None) -> None:
        """One stored row by the revision its upsert returned: None when nothing changed (an
        exact retry), 1 when it was new, more when an existing row changed."""
        if revision is None:
            self.unchanged += 1
        elif revision == 1:
            self.created += 1
        else:
            self.updated += 1


@dataclass(slots=True, frozen=True)
class FailedRow:
    """A row the database refused although it passed validation (a poison row): it was stored
    as a dead letter instead, and the rest of its batch was committed without it."""

    kind: str
    position: int  # index into WriteBatch.rows[kind] / WriteBatch.sources[kind]
    description: str  # one sentence for the caller; never a driver's class name


@dataclass(slots=True)
class BatchOutcome:
    """The writer's answer for one batch, given after its transaction committed."""

    counts: dict[str, KindCounts] = field(default_factory=lambda: {k: KindCounts() for k in KINDS})
    failed: list[FailedRow] = field(default_factory=list)

    def part(self, start: tuple[int, ...], stop: tuple[int, ...] | None) -> list[FailedRow]:
        """The refused rows of one batch absorbed into the batch this outcome answers (its rows
        from `start` to `stop` per kind, None = to the end), at positions in its own rows.
        (The counts are the whole batch's: they are for metrics, never split.)"""
        found = []
        for f in self.failed:
            k = KINDS.index(f.kind)
            if start[k] <= f.position and (stop is None or f.position < stop[k]):
                found.append(FailedRow(f.kind, f.position - start[k], f.description))
        return found


@dataclass(slots=True)
class Submission:
    """A batch handed to the writer (`Writer.enqueue`) and the future of its outcome. Until the
    writer takes it into a flush (`taken`), its submitter may add the next batch of the same
    stream to it (`Writer.join`): one batch in the flush, one future for both."""

    batch: WriteBatch
    future: asyncio.Future[BatchOutcome]
    size: int
    taken: bool = False
    admitted: bool = False
    joined: int = 0  # batches joined to it after the first
