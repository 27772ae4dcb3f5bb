"""Storage: a group of batches as one transaction writes it — rows merged by key, outcomes
counted from the revisions the database returns, stream advances chained — shared by the fast
path (flush.py) and the guarded one (isolate.py)."""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import sqlalchemy as sa

from turnstream.core.batch import KINDS, BatchOutcome, StreamAdvance, WriteBatch
from turnstream.core.rows import Row, span_rows, widen_span
from turnstream.store import dialects
from turnstream.store.dialects import Key
from turnstream.store.faults import StreamConflict
from turnstream.store.lane import Lane

Result = BatchOutcome | BaseException
# Most rows in one statement. Every statement must end well within db_timeout, which is both the
# server's statement_timeout and the writer's deadline for a call that shows no progress: a
# 100,000-record request goes in several statements, with progress noted between them.
STATEMENT_ROWS = 5_000


class Sent(NamedTuple):
    """One row as a batch sent it: batch index, position in batch.rows[kind], key, and whether
    it is the first of its key in the statement (or, for a repeat, whether it changed nothing)."""

    batch: int
    position: int
    key: Key
    flag: bool


class GroupWrite:
    """One attempt at writing a group: its transaction's statements and the results."""

    def __init__(self, lane: Lane, batches: Sequence[WriteBatch], now: dt.datetime) -> None:
        self.lane = lane
        self.dialect = lane.dialect
        self.batches = batches
        self.now = now
        self.conn: Any = None
        self.results: list[Result] = []
        self.live: list[int] = []  # batches whose stream advance (if any) succeeded

    def _upsert(self, table: sa.Table, rows: list[Row]) -> dict[Key, int]:
        """The bulk upsert of a transaction, in statements of at most STATEMENT_ROWS rows."""
        revisions: dict[Key, int] = {}
        for start in range(0, len(rows), STATEMENT_ROWS):
            chunk = rows[start : start + STATEMENT_ROWS]
            revisions.update(self.dialect.upsert(self.conn, table, chunk, self.now))
            self.lane.touch()
        return revisions

    def _insert_rejected(self, rows: list[Row]) -> None:
        for start in range(0, len(rows), STATEMENT_ROWS):
            self.dialect.insert_rejected(self.conn, rows[start : start + STATEMENT_ROWS])
            self.lane.touch()

    def _merge(
        self, kind: str, table: sa.Table, batches: list[int]
    ) -> tuple[dict[Key, Row], list[Sent]]:
        return merge_group(table, [(i, self.batches[i].rows[kind]) for i in batches])

    def _advance_streams(self) -> None:
        """Advance every stream's committed offset; batches whose advance failed get a
        StreamConflict, the others an empty outcome and a place in `live`."""
        failed: dict[int, StreamConflict] = {}
        links = chains(self.batches)
        # One statement for the first chain of every stream; a stream with a second chain in the
        # same flush (an older, fenced epoch beside a newer one: rare) goes one by one after.
        first: dict[tuple[str, str], int] = {}
        for n, (tenant_id, adv, _) in enumerate(links):
            first.setdefault((tenant_id, adv.stream_id), n)
        batched = [links[n] for n in first.values()]
        moved = (
            self.dialect.advance_many(self.conn, [(t, a) for t, a, _ in batched], self.now)
            if batched
            else set()
        )
        for n, (tenant_id, adv, members) in enumerate(links):
            if first[(tenant_id, adv.stream_id)] == n:
                ok = (tenant_id, adv.stream_id) in moved
            else:
                ok = self.dialect.advance(self.conn, tenant_id, adv, self.now)
            if not ok:
                state = self.dialect.stream_state(self.conn, tenant_id, adv.stream_id) or (0, 0)
                for i in members:
                    failed[i] = StreamConflict(adv.stream_id, *state)
        if links:
            self.lane.touch()
        self.results, self.live = [], []
        for i in range(len(self.batches)):
            if i in failed:
                self.results.append(failed[i])
            else:
                self.results.append(BatchOutcome())
                self.live.append(i)


def chains(batches: Sequence[WriteBatch]) -> list[tuple[str, StreamAdvance, list[int]]]:
    """Consecutive batches of one stream (same epoch, each starting where the previous ends)
    become one advance: one UPDATE per stream per flush instead of one per batch. If the first
    advance of a chain would fail, every later one would too, so the results are the same."""
    chains: list[tuple[str, StreamAdvance, list[int]]] = []
    last: dict[tuple[str, str, int], int] = {}
    for i, batch in enumerate(batches):
        adv = batch.stream
        if adv is None:
            continue
        key = (batch.tenant_id, adv.stream_id, adv.epoch)
        at = last.get(key)
        if at is not None and chains[at][1].to_offset == adv.from_offset:
            tenant, first, members = chains[at]
            chains[at] = (tenant, replace(first, to_offset=adv.to_offset), [*members, i])
            continue
        last[key] = len(chains)
        chains.append((batch.tenant_id, adv, [i]))
    return chains


def merge_group(
    table: sa.Table, per_batch: list[tuple[int, list[Row]]]
) -> tuple[dict[Key, Row], list[Sent]]:
    """Merge rows with the same key; remember which batch sent which key, and whether it was the
    first to send it (the first is credited with the database's answer)."""
    keys = dialects.key_columns(table)
    # One C call per row for its key (a tuple, as itemgetter of two or more names returns).
    getter = operator.itemgetter(*keys) if len(keys) > 1 else lambda row: (row[keys[0]],)
    merged: dict[Key, Row] = {}
    order: list[Sent] = []
    for i, rows in per_batch:
        for position, row in enumerate(rows):
            key = getter(row)
            old = merged.get(key)
            if old is None:
                merged[key] = row
                order.append(Sent(i, position, key, True))
            else:
                new = dialects.merge_rows(table, old, row)
                # A repeat that changed nothing is unchanged.
                order.append(Sent(i, position, key, new == old))
                merged[key] = new
    return merged, order


def count(kind: str, order: list[Sent], revisions: dict[Key, int], results: list[Result]) -> None:
    seen: set[Key] = set()
    for sent in order:
        outcome = results[sent.batch]
        assert isinstance(outcome, BatchOutcome)
        counts = outcome.counts[kind]
        if sent.key in seen:
            # A later write of the same key in this flush: unchanged when it added nothing.
            if sent.flag:
                counts.unchanged += 1
            else:
                counts.updated += 1
            continue
        seen.add(sent.key)
        counts.count(revisions.get(sent.key))


def derive(batch: WriteBatch, bad: set[tuple[str, int]]) -> list[Row]:
    """The batch's derived executions recomputed without its refused rows (the same first
    start / last completion rule as core.pipeline)."""
    spans: dict[str, list[dt.datetime | None]] = {}
    for kind in KINDS:
        if kind == "execution":
            continue
        for position, row in enumerate(batch.rows[kind]):
            if (kind, position) in bad:
                continue
            widen_span(spans, row)
    return span_rows(batch.tenant_id, spans)


def merge_derived(rows: list[Row]) -> list[Row]:
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
