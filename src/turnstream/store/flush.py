"""Storage: the body of one group commit, run on the writer's lane.

The fast path writes every batch of the group in one transaction, one statement per table. If
the database refuses it for the values it carries (not because it is unavailable), the
transaction is rolled back and the group written again, guarded (isolate.py): the rows the
database refuses are found and dead-lettered, everything else commits, and nobody else's batch
fails or waits for a reconnect.

The writer remembers where poison came from (writer.py) and names the batches of a group that
come from there (`suspects`): the group is then written guarded at once, the trusted batches as
on the fast path and the suspects in statements of their own, so a poisoner sending bad records
several times a second pays for its own batches, not for every group they land in
(bench/poison.py measures what it costs the others).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa

from turnstream.core.batch import KINDS, WriteBatch
from turnstream.core.rows import Row
from turnstream.store import rollup, schema
from turnstream.store.faults import StoreUnavailable, is_value_error, refusal
from turnstream.store.group import STATEMENT_ROWS, GroupWrite, Result, Sent, count, merge_derived
from turnstream.store.isolate import Guarded, TrustedRefused
from turnstream.store.lane import Lane

log = logging.getLogger(__name__)

# How long a batch's origin stays suspect after it carried a row the database refused.
SUSPECT_SECONDS = 10.0


class Suspects:
    """Origins (tenant, door, stream) that recently sent rows the database refused. A group
    holding batches from one of them is flushed guarded at once, so a poisoner that keeps
    sending bad records pays for its own batches, not everyone's."""

    def __init__(self) -> None:
        self._until: dict[tuple[str, str, str], float] = {}

    def add(self, batch: WriteBatch) -> None:
        self._until[_origin(batch)] = time.monotonic() + SUSPECT_SECONDS

    def among(self, batches: Sequence[WriteBatch]) -> list[int] | None:
        """Indices of the suspect batches; None when there are none (the fast path)."""
        if not self._until:
            return None
        now = time.monotonic()
        self._until = {k: until for k, until in self._until.items() if until > now}
        found = [i for i, b in enumerate(batches) if _origin(b) in self._until]
        return found or None


def _origin(batch: WriteBatch) -> tuple[str, str, str]:
    """Where a batch came from, as far as the writer can tell: a stream, or a door of a tenant."""
    return (batch.tenant_id, batch.door, batch.stream.stream_id if batch.stream else "")


def flush(
    lane: Lane, batches: Sequence[WriteBatch], *, suspects: Collection[int] | None = None
) -> list[Result]:
    """Store `batches` in one transaction; one result per batch, in order. `suspects`: the
    indices of batches likely to carry poison; when given, the group is written guarded."""
    now = dt.datetime.now(dt.UTC)
    if suspects is not None:
        chosen = frozenset(suspects)
        try:
            return lane.transaction(
                _with_rollups(
                    lane, batches, lambda c: Guarded(lane, batches, now).guarded(c, chosen)
                )
            )
        except TrustedRefused as exc:
            refused: BaseException = exc.cause
    else:
        try:
            return lane.transaction(_with_rollups(lane, batches, Fast(lane, batches, now).fast))
        except StoreUnavailable:
            raise
        except Exception as exc:
            if not is_value_error(exc):
                raise
            refused = exc
    log.warning(
        "the database refused a flush of %d batches (%s); isolating what it refuses",
        len(batches),
        refusal(refused),
    )
    everyone = frozenset(range(len(batches)))
    return lane.transaction(
        _with_rollups(lane, batches, lambda c: Guarded(lane, batches, now).guarded(c, everyone))
    )


def _with_rollups(
    lane: Lane, batches: Sequence[WriteBatch], write: Callable[[Any], list[Result]]
) -> Callable[[Any], list[Result]]:
    """`write`, with the dashboard's rollups moved by what it changed (store/rollup.py), in
    the same transaction: an ack means they agree with the records."""
    rollups = rollup.Rollups(lane.dialect.name)
    return lambda conn: rollups.around(conn, batches, write)


class Fast(GroupWrite):
    """The whole group in one statement per table."""

    def fast(self, conn: Any) -> list[Result]:
        self.conn = conn
        self._advance_streams()
        derived = merge_derived([r for i in self.live for r in self.batches[i].derived_executions])
        rolled: dict[str, tuple[sa.Table, list[Row]]] = {}
        orders: dict[str, list[Sent]] = {}
        for kind in KINDS:
            table = schema.RECORD_TABLES[kind]
            merged, order = self._merge(kind, table, self.live)
            if not merged:
                continue
            if kind in rollup.ROLLED and len(merged) <= STATEMENT_ROWS:
                # Sent with the derived executions, after the explicit ones (store them first).
                rolled[kind], orders[kind] = (table, list(merged.values())), order
                continue
            count(kind, order, self._upsert(table, list(merged.values())), self.results)
        if rolled or derived:
            moved = self.dialect.upsert_rolled(conn, rolled, derived, self.now)
            self.lane.touch()
            for kind, revisions in moved.items():
                count(kind, orders[kind], revisions, self.results)
        rejected = [r for i in self.live for r in self.batches[i].rejected]
        if rejected:
            self._insert_rejected(rejected)
        return self.results
