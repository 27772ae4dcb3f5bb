"""Storage: the guarded write of a group, which finds the rows the database refuses (poison)
instead of failing their batches.

Every statement of the suspect batches runs under a SAVEPOINT; a refused one is taken apart
until the rows refused are found: PostgreSQL's COPY names the row (faults.RowRefused), else the
batches and then the rows are bisected. Refused rows become dead letters and `FailedRow`s of
their batches, in the same transaction as the rest of the group and its stream advances, so a
stream moves past a poison record instead of wedging on it. The trusted batches are written
exactly as on the fast path, one statement per table and no savepoint: each statement costs the
database about a millisecond whatever its size, so the number of statements is what counts.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from turnstream.core import deadletter
from turnstream.core.batch import KINDS, BatchOutcome, FailedRow, WriteBatch
from turnstream.core.rows import Row
from turnstream.store import dialects, schema
from turnstream.store.dialects import Key
from turnstream.store.faults import RowRefused, is_value_error, refusal
from turnstream.store.group import (
    STATEMENT_ROWS,
    GroupWrite,
    Result,
    Sent,
    count,
    derive,
    merge_derived,
)

log = logging.getLogger(__name__)
X = TypeVar("X")

# A failure known without trying (a sibling half of a refused chunk went through).
KNOWN: BaseException = Exception("known to be refused")


class TrustedRefused(Exception):
    """The statement of a guarded flush's trusted batches was refused: a new poisoner. The
    transaction is rolled back and the group written again with every batch suspect."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Guarded(GroupWrite):
    """A group written guarded (see the module docstring)."""

    _savepoint_set = False

    def guarded(self, conn: Any, suspects: frozenset[int]) -> list[Result]:
        """Like `fast` for the trusted batches (one statement per table, no savepoint: if it is
        refused after all, TrustedRefused starts over with everyone suspect); the suspects after
        them, each statement under a SAVEPOINT and a refused one taken apart. If the two share
        a key, whose merge must follow batch order, that table is written all guarded."""
        self.conn = conn
        self._advance_streams()
        failed: dict[int, list[FailedRow]] = collections.defaultdict(list)
        trusted = [i for i in self.live if i not in suspects]
        suspect = [i for i in self.live if i in suspects]
        for kind in KINDS:
            table = schema.RECORD_TABLES[kind]
            merged, order = self._merge(kind, table, trusted)
            if merged and self._keys(table, kind, suspect) & merged.keys():
                self._write_batches(kind, self.live, failed)
                continue
            if merged:
                try:
                    revisions = self._upsert(table, list(merged.values()))
                except Exception as exc:
                    if is_value_error(exc):
                        raise TrustedRefused(exc) from exc
                    raise
                count(kind, order, revisions, self.results)
            if suspect:
                self._write_batches(kind, suspect, failed)
        self._store_derived(failed)
        self._store_dead_letters(failed)
        for i, rows in failed.items():
            outcome = self.results[i]
            assert isinstance(outcome, BatchOutcome)
            outcome.failed = sorted(rows, key=lambda f: (KINDS.index(f.kind), f.position))
        return self.results

    def _keys(self, table: sa.Table, kind: str, batches: list[int]) -> set[Key]:
        keys = dialects.key_columns(table)
        return {tuple(r[k] for k in keys) for i in batches for r in self.batches[i].rows[kind]}

    def _write_batches(
        self,
        kind: str,
        batches: list[int],
        failed: dict[int, list[FailedRow]],
        known_bad: bool = False,
    ) -> bool:
        """Upsert the `kind` rows of `batches` (in order) in one statement; if refused, find
        what it refuses: the row it names, else halves of the batches, then the rows of one
        batch. True if the one statement went through. `known_bad`: it would fail (a sibling
        half succeeded and the dialect cannot name rows), so split at once. More rows than a
        statement takes are split before trying."""
        table = schema.RECORD_TABLES[kind]
        merged, order = self._merge(kind, table, batches)
        if not merged:
            return True
        revisions: dict[Key, int] = {}
        skipped: list[tuple[Key, BaseException]] = []
        items = list(merged.items())
        exc: BaseException | None = KNOWN if known_bad else None
        tried = not known_bad and len(items) <= STATEMENT_ROWS
        if tried:
            exc = self._savepoint(lambda: self._isolating_upsert(table, items, revisions, skipped))
            if exc is None:
                self._settle(kind, table, order, revisions, dict(skipped), failed)
                return True
        if len(batches) > 1 and not isinstance(exc, RowRefused):
            mid = len(batches) // 2
            whole = self._write_batches(kind, batches[:mid], failed)
            infer = tried and whole and not self.dialect.pinpoints
            self._write_batches(kind, batches[mid:], failed, known_bad=infer)
            return False
        self._write_rows(kind, table, merged, order, failed, exc)
        return False

    def _write_rows(
        self,
        kind: str,
        table: sa.Table,
        merged: dict[Key, Row],
        order: list[Sent],
        failed: dict[int, list[FailedRow]],
        failure: BaseException | None,
    ) -> None:
        """The rows of `merged` (one batch, or a statement that named a refused row): find the
        rows refused, store the rest. `failure`: how writing them all failed (KNOWN: known to
        fail; None: not tried)."""
        revisions: dict[Key, int] = {}
        skipped: list[tuple[Key, BaseException]] = []

        def upsert(chunk: list[tuple[Key, Row]]) -> None:
            self._isolating_upsert(table, chunk, revisions, skipped)

        isolated = self._isolate(list(merged.items()), upsert, failure)
        refused = {key: exc for (key, _), exc in isolated}
        self._settle(kind, table, order, revisions, {**refused, **dict(skipped)}, failed)

    def _isolating_upsert(
        self,
        table: sa.Table,
        items: list[tuple[Key, Row]],
        revisions: dict[Key, int],
        skipped: list[tuple[Key, BaseException]],
    ) -> None:
        """One isolating upsert. Rows the driver could not even bind (SQLite leaves them out
        rather than fail the statement) join `skipped`, once the statement went through."""
        left_out: list[tuple[int, BaseException]] = []
        rows = [row for _, row in items]
        revisions.update(
            self.dialect.upsert(self.conn, table, rows, self.now, again=True, refused=left_out)
        )
        skipped += [(items[i][0], exc) for i, exc in left_out]

    def _settle(
        self,
        kind: str,
        table: sa.Table,
        order: list[Sent],
        revisions: dict[Key, int],
        refused: dict[Key, BaseException],
        failed: dict[int, list[FailedRow]],
    ) -> None:
        """Count what was stored; a refused key becomes the FailedRow of the batch that sent
        it (or, merged from several, of the copies the database refuses one by one)."""
        count(kind, [s for s in order if s.key not in refused], revisions, self.results)
        for key, exc in refused.items():
            sent = [s for s in order if s.key == key]
            if len(sent) == 1:
                failed[sent[0].batch].append(FailedRow(kind, sent[0].position, refusal(exc)))
            else:
                self._one_by_one(kind, table, sent, failed)

    def _isolate(
        self,
        items: list[X],
        write: Callable[[list[X]], None],
        failure: BaseException | None = None,
    ) -> list[tuple[X, BaseException]]:
        """Write `items` under a SAVEPOINT, finding what the database refuses; the items it
        refuses alone, with why. `failure`: how writing all of them already failed (KNOWN:
        it would fail), so that attempt is not repeated.

        A refusal that names its row (RowRefused) takes that row out and retries the rest: one
        statement per bad row. Otherwise bisect: a refusal is a value error of some item, so
        when the first half of a refused chunk goes through the second is split without being
        tried whole; one bad item among n costs about log2(n) + 1 statements."""
        refused: list[tuple[X, BaseException]] = []

        def attempt(chunk: list[X], failure: BaseException | None) -> bool:
            while True:
                if failure is KNOWN and (len(chunk) == 1 or self.dialect.pinpoints):
                    failure = None  # try it anyway: to hear why, or to hear which row
                if failure is None:
                    failure = self._savepoint(functools.partial(write, chunk))
                    if failure is None:
                        return True
                if isinstance(failure, RowRefused) and 0 <= failure.index < len(chunk):
                    refused.append((chunk[failure.index], failure.cause))
                    chunk = chunk[: failure.index] + chunk[failure.index + 1 :]
                    if not chunk:
                        return False
                    failure = None
                    continue
                if len(chunk) == 1:
                    refused.append((chunk[0], failure))
                    return False
                mid = len(chunk) // 2
                whole = attempt(chunk[:mid], None)
                attempt(chunk[mid:], KNOWN if whole else None)
                return False

        if len(items) <= STATEMENT_ROWS:
            if items:
                attempt(items, failure)
            return refused
        for start in range(0, len(items), STATEMENT_ROWS):  # what one statement takes, each
            attempt(items[start : start + STATEMENT_ROWS], None)
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
        self, kind: str, table: sa.Table, sent: list[Sent], failed: dict[int, list[FailedRow]]
    ) -> None:
        """Rows of one key from several batches, each upserted alone in order (the SQL merge
        gives what the Python merge would have), each counted from its own revision."""
        for s in sent:
            row = self.batches[s.batch].rows[kind][s.position]
            got: dict[Key, int] = {}
            skipped: list[tuple[Key, BaseException]] = []
            exc = self._savepoint(
                functools.partial(self._isolating_upsert, table, [(s.key, row)], got, skipped)
            )
            if exc is None and skipped:
                exc = skipped[0][1]
            if exc is not None:
                failed[s.batch].append(FailedRow(kind, s.position, refusal(exc)))
                continue
            outcome = self.results[s.batch]
            assert isinstance(outcome, BatchOutcome)
            outcome.counts[kind].count(got.get(s.key))

    def _store_derived(self, failed: dict[int, list[FailedRow]]) -> None:
        """Executions derived from the records that were stored (a dead-lettered record does not
        widen its execution). One that is refused is only logged: it is a summary, and its
        records are stored."""
        rows: list[Row] = []
        for i in self.live:
            batch = self.batches[i]
            bad = {(f.kind, f.position) for f in failed.get(i, ())}
            rows += derive(batch, bad) if bad else batch.derived_executions
        derived = merge_derived(rows)
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
