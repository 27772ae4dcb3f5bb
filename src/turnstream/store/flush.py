"""Storage: the body of one group commit, run on the writer's lane.

The fast path writes every batch of the group in one transaction, one statement per table. If
the database refuses that for the values it carries (not because it is unavailable), the
transaction is rolled back and the group written again, guarded: each table's rows under a
SAVEPOINT, and a statement the database refuses split — by batches, then by rows — until the
rows it refuses are found. Those become dead letters and `FailedRow`s of their batches;
everything else commits in the same transaction as the stream advances, so a stream moves past a
poison record instead of wedging on it, and nobody else's batch fails or waits for a reconnect.

The writer remembers where poison came from (writer.py) and names the batches of a group that
come from there (`suspects`): the group is then written guarded at once, the trusted batches in
one statement and the suspects in another. A poisoner sending bad records several times a second
costs a re-write of its own batches, not of every group they land in. (Each statement costs the
database about a millisecond whatever its size, so the number of statements is what counts.)
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa

from turnstream.core import deadletter
from turnstream.core.batch import KINDS, BatchOutcome, FailedRow, StreamAdvance, WriteBatch
from turnstream.core.rows import Row
from turnstream.store import dialects, schema
from turnstream.store.dialects import Key
from turnstream.store.faults import StoreUnavailable, StreamConflict, is_value_error, refusal
from turnstream.store.lane import Lane

log = logging.getLogger(__name__)
X = TypeVar("X")

Result = BatchOutcome | BaseException


class _Sent(NamedTuple):
    """One row as a batch sent it: batch index, position in batch.rows[kind], key, and whether
    it is the first of its key in the statement (or, for a repeat, whether it changed nothing)."""

    batch: int
    position: int
    key: Key
    flag: bool


def flush(
    lane: Lane, batches: Sequence[WriteBatch], *, suspects: Collection[int] | None = None
) -> list[Result]:
    """Store `batches` in one transaction; one result per batch, in order. `suspects`: the
    indices of batches likely to carry poison; when given, the group is written guarded."""
    now = dt.datetime.now(dt.UTC)
    if suspects is None:
        try:
            return lane.transaction(_Write(lane, batches, now).fast)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if not is_value_error(exc):
                raise
            log.warning(
                "the database refused a flush of %d batches (%s); isolating what it refuses",
                len(batches),
                refusal(exc),
            )
        suspects = range(len(batches))
    chosen = frozenset(suspects)
    return lane.transaction(lambda conn: _Write(lane, batches, now).guarded(conn, chosen))


class _Write:
    """One attempt at writing a group: its transaction's statements and the results."""

    def __init__(self, lane: Lane, batches: Sequence[WriteBatch], now: dt.datetime) -> None:
        self.lane = lane
        self.dialect = lane.dialect
        self.batches = batches
        self.now = now
        self.conn: Any = None
        self.results: list[Result] = []
        self.live: list[int] = []  # batches whose stream advance (if any) succeeded
        self._savepoint_set = False

    # -- the fast path ----------------------------------------------------------------------

    def fast(self, conn: Any) -> list[Result]:
        self.conn = conn
        self._advance_streams()
        for kind in KINDS:
            table = schema.RECORD_TABLES[kind]
            merged, order = self._merge(kind, table, self.live)
            if not merged:
                continue
            revisions = self.dialect.upsert(conn, table, list(merged.values()), self.now)
            self.lane.touch()
            _count(kind, order, revisions, self.results)
        derived = _merge_derived([r for i in self.live for r in self.batches[i].derived_executions])
        if derived:
            self.dialect.upsert_derived(conn, derived, self.now)
            self.lane.touch()
        rejected = [r for i in self.live for r in self.batches[i].rejected]
        if rejected:
            self.dialect.insert_rejected(conn, rejected)
            self.lane.touch()
        return self.results

    # -- the guarded path -------------------------------------------------------------------

    def guarded(self, conn: Any, suspects: frozenset[int]) -> list[Result]:
        """Like `fast`, with every statement under a SAVEPOINT and a refused one split. The
        trusted batches go first in one statement per table, the suspects after them — unless
        the two share a key, whose merge must then follow batch order: all batches together."""
        self.conn = conn
        self._advance_streams()
        failed: dict[int, list[FailedRow]] = collections.defaultdict(list)
        trusted = [i for i in self.live if i not in suspects]
        suspect = [i for i in self.live if i in suspects]
        parts = [trusted, suspect] if trusted and suspect else [self.live]
        for kind in KINDS:
            table = schema.RECORD_TABLES[kind]
            if len(parts) > 1 and self._share_keys(table, kind, trusted, suspect):
                self._write_batches(kind, self.live, failed)
                continue
            for part in parts:
                self._write_batches(kind, part, failed)
        self._store_derived(failed)
        self._store_dead_letters(failed)
        for i, rows in failed.items():
            outcome = self.results[i]
            assert isinstance(outcome, BatchOutcome)
            outcome.failed = sorted(rows, key=lambda f: (KINDS.index(f.kind), f.position))
        return self.results

    def _share_keys(self, table: sa.Table, kind: str, a: list[int], b: list[int]) -> bool:
        keys = dialects.key_columns(table)

        def of(batches: list[int]) -> set[Key]:
            return {tuple(r[k] for k in keys) for i in batches for r in self.batches[i].rows[kind]}

        return not of(a).isdisjoint(of(b))

    def _write_batches(
        self,
        kind: str,
        batches: list[int],
        failed: dict[int, list[FailedRow]],
        known_bad: bool = False,
    ) -> bool:
        """Upsert the `kind` rows of `batches` (in order) in one statement; if refused, split:
        halves of the batches, then the rows of a single batch. True if the one statement
        went through. `known_bad`: it would fail (a sibling half succeeded), so split at once."""
        table = schema.RECORD_TABLES[kind]
        merged, order = self._merge(kind, table, batches)
        if not merged:
            return True
        if not known_bad:
            revisions: dict[Key, int] = {}
            rows = list(merged.values())
            exc = self._savepoint(
                lambda: revisions.update(
                    self.dialect.upsert(self.conn, table, rows, self.now, again=True)
                )
            )
            if exc is None:
                _count(kind, order, revisions, self.results)
                return True
        if len(batches) > 1:
            mid = len(batches) // 2
            whole = self._write_batches(kind, batches[:mid], failed)
            self._write_batches(kind, batches[mid:], failed, known_bad=whole)
            return False
        self._write_rows(kind, table, merged, order, failed)
        return False

    def _write_rows(
        self,
        kind: str,
        table: sa.Table,
        merged: dict[Key, Row],
        order: list[_Sent],
        failed: dict[int, list[FailedRow]],
    ) -> None:
        """The rows of one batch whose statement was refused: bisect to the rows refused."""
        revisions: dict[Key, int] = {}

        def upsert(chunk: list[tuple[Key, Row]]) -> None:
            rows = [row for _, row in chunk]
            revisions.update(self.dialect.upsert(self.conn, table, rows, self.now, again=True))

        items = list(merged.items())
        refused = {key: exc for (key, _), exc in self._isolate(items, upsert, known_bad=True)}
        _count(kind, [s for s in order if s.key not in refused], revisions, self.results)
        for key, exc in refused.items():
            sent = [s for s in order if s.key == key]
            if len(sent) == 1:
                failed[sent[0].batch].append(FailedRow(kind, sent[0].position, refusal(exc)))
            else:  # the batch sent this key twice: find which copy the database refuses
                self._one_by_one(kind, table, sent, failed)

    def _isolate(
        self, items: list[X], write: Callable[[list[X]], None], *, known_bad: bool = False
    ) -> list[tuple[X, BaseException]]:
        """Write `items` under a SAVEPOINT, bisecting what the database refuses; the items it
        refuses alone, with why. A refusal is a value error of some item, so when the first
        half of a refused chunk goes through, the second is split without being tried whole:
        one bad item among n costs about log2(n) + 1 statements."""
        refused: list[tuple[X, BaseException]] = []

        def attempt(chunk: list[X], known_bad: bool) -> bool:
            if not known_bad or len(chunk) == 1:
                exc = self._savepoint(lambda: write(chunk))
                if exc is None:
                    return True
                if len(chunk) == 1:
                    refused.append((chunk[0], exc))
                    return False
            mid = len(chunk) // 2
            whole = attempt(chunk[:mid], False)
            attempt(chunk[mid:], whole)
            return False

        if items:
            attempt(items, known_bad)
        return refused

    def _savepoint(self, fn: Callable[[], None]) -> BaseException | None:
        """Run fn under a SAVEPOINT; a refusal for its values is rolled back to it and returned
        (the transaction lives on). Anything else (the database gone, a bug) propagates.

        One savepoint is kept open and moved forward: ROLLBACK TO leaves it in place for the
        next attempt, and after a success it is released and set again in one round trip."""
        if not self._savepoint_set:
            self.conn.execute("SAVEPOINT isolate")
            self._savepoint_set = True
        try:
            fn()
        except Exception as exc:
            if not is_value_error(exc):
                raise
            self.conn.execute("ROLLBACK TO SAVEPOINT isolate")
            self.lane.touch()
            return exc
        self.dialect.renew_savepoint(self.conn, "isolate")
        self.lane.touch()
        return None

    def _one_by_one(
        self, kind: str, table: sa.Table, sent: list[_Sent], failed: dict[int, list[FailedRow]]
    ) -> None:
        """Rows of one key from several batches, each upserted alone in order (the SQL merge
        gives what the Python merge would have), each counted from its own revision."""
        for s in sent:
            row = self.batches[s.batch].rows[kind][s.position]
            got: dict[Key, int] = {}

            def upsert(row: Row = row, got: dict[Key, int] = got) -> None:
                got.update(self.dialect.upsert(self.conn, table, [row], self.now, again=True))

            exc = self._savepoint(upsert)
            if exc is not None:
                failed[s.batch].append(FailedRow(kind, s.position, refusal(exc)))
                continue
            outcome = self.results[s.batch]
            assert isinstance(outcome, BatchOutcome)
            counts = outcome.counts[kind]
            revision = got.get(s.key)
            if revision is None:
                counts.unchanged += 1
            elif revision == 1:
                counts.created += 1
            else:
                counts.updated += 1

    def _store_derived(self, failed: dict[int, list[FailedRow]]) -> None:
        """Executions derived from the records that were stored (a dead-lettered record does not
        widen its execution). One that is refused is only logged: it is a summary, and its
        records are stored."""
        rows: list[Row] = []
        for i in self.live:
            batch = self.batches[i]
            bad = {(f.kind, f.position) for f in failed.get(i, ())}
            rows += _derive(batch, bad) if bad else batch.derived_executions
        derived = _merge_derived(rows)
        for row, exc in self._isolate(
            derived, lambda chunk: self.dialect.upsert_derived(self.conn, chunk, self.now)
        ):
            log.warning(
                "the derived execution %r was not stored: %s", row["execution_id"], refusal(exc)
            )

    def _store_dead_letters(self, failed: dict[int, list[FailedRow]]) -> None:
        """The dead letters of the refused rows and of the batches' invalid records, in this
        transaction. A dead letter the database refuses too is stored in a minimal form (the
        record's raw bytes); only if even that fails is it lost, loudly logged."""
        letters: list[tuple[Row, Callable[[], Row]]] = []
        for i, rows in failed.items():
            for f in rows:
                letters.append(_storage_letter(self.batches[i], f, self.now))
        for i in self.live:
            for r in self.batches[i].rejected:
                letters.append((r, functools.partial(_minimal, r, self.now)))

        def insert(chunk: list[tuple[Row, Callable[[], Row]]]) -> None:
            self.dialect.insert_rejected(self.conn, [row for row, _ in chunk])

        for (row, fallback), exc in self._isolate(letters, insert):
            log.warning("a dead letter was refused (%s); storing it as raw bytes", refusal(exc))
            again = self._savepoint(functools.partial(insert, [(fallback(), fallback)]))
            if again is not None:
                log.error(
                    "the dead letter %s of door %s could not be stored at all (%s); its record"
                    " was answered as rejected",
                    row.get("rejected_id"),
                    row.get("door"),
                    refusal(again),
                )

    # -- shared -----------------------------------------------------------------------------

    def _merge(
        self, kind: str, table: sa.Table, batches: list[int]
    ) -> tuple[dict[Key, Row], list[_Sent]]:
        return _merge_group(table, [(i, self.batches[i].rows[kind]) for i in batches])

    def _advance_streams(self) -> None:
        """Advance every stream's committed offset; batches whose advance failed get a
        StreamConflict, the others an empty outcome and a place in `live`."""
        failed: dict[int, StreamConflict] = {}
        chains = _chains(self.batches)
        # One statement for the first chain of every stream; a stream with a second chain in the
        # same flush (an older, fenced epoch beside a newer one: rare) goes one by one after.
        first: dict[tuple[str, str], int] = {}
        for n, (tenant_id, adv, _) in enumerate(chains):
            first.setdefault((tenant_id, adv.stream_id), n)
        batched = [chains[n] for n in first.values()]
        moved = (
            self.dialect.advance_many(self.conn, [(t, a) for t, a, _ in batched], self.now)
            if batched
            else set()
        )
        for n, (tenant_id, adv, members) in enumerate(chains):
            if first[(tenant_id, adv.stream_id)] == n:
                ok = (tenant_id, adv.stream_id) in moved
            else:
                ok = self.dialect.advance(self.conn, tenant_id, adv, self.now)
            if not ok:
                state = self.dialect.stream_state(self.conn, tenant_id, adv.stream_id) or (0, 0)
                for i in members:
                    failed[i] = StreamConflict(adv.stream_id, *state)
        if chains:
            self.lane.touch()
        self.results, self.live = [], []
        for i in range(len(self.batches)):
            if i in failed:
                self.results.append(failed[i])
            else:
                self.results.append(BatchOutcome())
                self.live.append(i)


def _chains(batches: Sequence[WriteBatch]) -> list[tuple[str, StreamAdvance, list[int]]]:
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


def _merge_group(
    table: sa.Table, per_batch: list[tuple[int, list[Row]]]
) -> tuple[dict[Key, Row], list[_Sent]]:
    """Merge rows with the same key; remember which batch sent which key, and whether it was the
    first to send it (the first is credited with the database's answer)."""
    keys = dialects.key_columns(table)
    merged: dict[Key, Row] = {}
    order: list[_Sent] = []
    for i, rows in per_batch:
        for position, row in enumerate(rows):
            key = tuple(row[k] for k in keys)
            old = merged.get(key)
            if old is None:
                merged[key] = row
                order.append(_Sent(i, position, key, True))
            else:
                new = dialects.merge_rows(table, old, row)
                # A repeat that changed nothing is unchanged.
                order.append(_Sent(i, position, key, new == old))
                merged[key] = new
    return merged, order


def _count(kind: str, order: list[_Sent], revisions: dict[Key, int], results: list[Result]) -> None:
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
        revision = revisions.get(sent.key)
        if revision is None:
            counts.unchanged += 1
        elif revision == 1:
            counts.created += 1
        else:
            counts.updated += 1


def _derive(batch: WriteBatch, bad: set[tuple[str, int]]) -> list[Row]:
    """The batch's derived executions recomputed without its refused rows (the same first
    start / last completion rule as core.pipeline)."""
    spans: dict[str, list[dt.datetime | None]] = {}
    for kind in KINDS:
        if kind == "execution":
            continue
        for position, row in enumerate(batch.rows[kind]):
            if (kind, position) in bad:
                continue
            span = spans.setdefault(row["execution_id"], [None, None])
            started, completed = row.get("started_at"), row.get("completed_at")
            if started is not None and (span[0] is None or started < span[0]):
                span[0] = started
            if completed is not None and (span[1] is None or completed > span[1]):
                span[1] = completed
    return [
        {"tenant_id": batch.tenant_id, "execution_id": e, "started_at": s, "completed_at": c}
        for e, (s, c) in spans.items()
    ]


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


def _storage_letter(
    batch: WriteBatch, failure: FailedRow, now: dt.datetime
) -> tuple[Row, Callable[[], Row]]:
    """The dead letter of a refused row, and its minimal fallback (the record's raw bytes)."""
    item = batch.sources[failure.kind][failure.position] if batch.sources[failure.kind] else None

    def fallback() -> Row:
        data = item.message.SerializeToString() if item is not None else b""
        return _minimal_row(batch, data, failure, now, item)

    try:
        row = deadletter.storage_failure(
            batch, failure.kind, failure.position, failure.description, now
        )
    except Exception:  # a batch built without sources (tests, a door's bug): keep what we can
        log.warning("no source for a refused %s row of door %s", failure.kind, batch.door)
        row = fallback()
    return row, fallback


def _minimal_row(
    batch: WriteBatch, data: bytes, failure: FailedRow, now: dt.datetime, item: Any
) -> Row:
    stream_offset = getattr(item, "offset", None)
    return deadletter.row(
        tenant_id=batch.tenant_id,
        door=batch.door,
        kind=failure.kind,
        rejected_id=deadletter.digest(batch.door, failure.kind, data, "db"),
        payload=deadletter.raw_payload(data, "kept as raw bytes: the database refused it"),
        violations=[
            {
                "field": deadletter.clean_text(getattr(item, "path", "")),
                "description": failure.description,
                "reason": deadletter.STORAGE_REJECTED,
            }
        ],
        received_at=now,
        stream_id=batch.stream.stream_id if batch.stream is not None else None,
        stream_offset=stream_offset if isinstance(stream_offset, int) else None,
    )


def _minimal(row: Row, now: dt.datetime) -> Row:
    """A refused dead letter of an invalid record, reduced to columns that cannot fail: its
    payload and violations kept as raw bytes (base64 of their JSON)."""
    kept = {"payload": row.get("payload"), "violations": row.get("violations")}
    data = json.dumps(kept, default=str, ensure_ascii=True, sort_keys=True).encode("ascii")
    offset = row.get("stream_offset")
    return deadletter.row(
        tenant_id=row["tenant_id"],
        door=str(row.get("door") or ""),
        kind=str(row.get("kind") or ""),
        rejected_id=str(row.get("rejected_id") or deadletter.digest(data)),
        payload=deadletter.raw_payload(data, "kept as raw bytes: the database refused it"),
        violations=[
            {
                "field": "",
                "description": "the dead letter was refused as built; its payload and "
                "violations are kept as raw bytes",
                "reason": deadletter.STORAGE_REJECTED,
            }
        ],
        received_at=now,
        stream_offset=offset if isinstance(offset, int) and abs(offset) < 2**63 else None,
    )
