"""A validated record always stores (issue 6): whatever Write the property generates, its accepted
rows and dead letters go through a real Writer into a real database, on SQLite and PostgreSQL,
and the transaction commits with every accepted record stored once, intact, every rejection in
rejected_records, and nothing else. One engine and writer per test; each example writes as its
own tenant, so examples never see each other's rows."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from tests.property import strategies as s
from tests.property.checks import check_total
from tests.property.test_pipeline_total import phases, prepare_write
from turnstream.core.batch import KINDS
from turnstream.store import dialects, schema
from turnstream.store.engine import create_engine, migrate
from turnstream.store.writer import Writer
from turnstream.v1 import ingest_pb2

STORE = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one database for all examples, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@dataclass
class Store:
    engine: sa.Engine
    writer: Writer
    loop: asyncio.AbstractEventLoop
    tenants: Iterator[int]


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated database and a started Writer, driven from this (sync) test by its own loop:
    Hypothesis runs examples synchronously, and the writer must outlive them all."""
    engine = create_engine(database_url)
    migrate(engine)
    loop = asyncio.new_event_loop()
    writer = Writer(engine)
    loop.run_until_complete(writer.start())
    try:
        yield Store(engine, writer, loop, itertools.count())
    finally:
        loop.run_until_complete(writer.close(grace=10))
        loop.close()
        engine.dispose()


def _number(value: Any) -> Any:
    """JSON numbers compare as floats: jsonb keeps 1.2345e300 as a decimal that reads back as
    an int, equal as a double but not as Python's exact int/float comparison."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {k: _number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_number(v) for v in value]
    return value


def _stored(conn: sa.Connection, table: sa.Table, tenant: str) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(table).where(table.c.tenant_id == tenant))
    return [dict(r._mapping) for r in rows]


def _assert_intact(kind: str, sent: dict[str, Any], stored: dict[str, Any]) -> None:
    for column, value in sent.items():
        if value is None:
            continue
        got = stored[column]
        if isinstance(value, dict | list):
            assert _number(got) == _number(value), (kind, column)
        else:
            assert got == value, (kind, column, value, got)


HAZARDS = [
    pytest.param(s.NONE, id="baseline"),
    pytest.param(s.ISSUE_6, id="issue-6-hazards"),
    pytest.param(
        dataclasses.replace(s.NONE, long_price_version=True),
        id="long-price-version",
    ),
]


@pytest.mark.parametrize("hazards", HAZARDS)
def test_a_validated_record_always_stores(store: Store, hazards: s.Hazards) -> None:
    @settings(STORE, phases=phases(hazards))
    @given(drawn=s.shown(s.write_requests(hazards)))
    def write(drawn: s.Shown) -> None:
        request = drawn.message
        tenant = f"t{next(store.tenants)}"
        prepared = prepare_write(request, tenant)
        check_total(request, prepared)
        batch = prepared.batch

        outcome = store.loop.run_until_complete(store.writer.submit(batch))

        assert not outcome.failed, f"the database refused validated rows: {outcome.failed}"
        with store.engine.connect() as conn:
            for kind in KINDS:
                table = schema.RECORD_TABLES[kind]
                keys = dialects.key_columns(table)
                sent = batch.rows[kind]
                if kind == "execution":
                    sent = sent + batch.derived_executions
                stored = {tuple(r[k] for k in keys): r for r in _stored(conn, table, tenant)}
                expected = Counter(tuple(r[k] for k in keys) for r in sent)
                assert set(stored) == set(expected), kind
                if kind != "execution":
                    counts = outcome.counts[kind]
                    assert counts.created == len(expected), (kind, counts)
                    assert counts.created + counts.updated + counts.unchanged == len(sent)
                for row in batch.rows[kind]:
                    key = tuple(row[k] for k in keys)
                    if expected[key] == 1:  # a key sent twice is merged: checked by the counts
                        _assert_intact(kind, row, stored[key])
            # The same invalid record twice (same door, kind, bytes) is one dead letter: the first.
            letters: dict[str, dict[str, Any]] = {}
            for letter in batch.rejected:
                letters.setdefault(letter["rejected_id"], letter)
            kept = {r["rejected_id"]: r for r in _stored(conn, schema.rejected_records, tenant)}
            assert set(kept) == set(letters)
            for rejected_id, letter in letters.items():
                got = kept[rejected_id]
                assert got["door"] == "grpc.Write"
                assert got["execution_id"] == letter["execution_id"]
                assert _number(got["payload"]) == _number(letter["payload"])
                assert got["violations"] == letter["violations"]
            assert _stored(conn, schema.streams, tenant) == []

    write()


def test_examples_write_as_separate_tenants(store: Store) -> None:
    """The property's isolation: a tenant sees only its own rows (else 'nothing else' is void)."""
    request = ingest_pb2.WriteRequest(execution_id="exec-a")
    turn = request.turns.add(turn_number=1, model="claude-sonnet-4-5")
    turn.started_at.FromDatetime(s.NOW - dt.timedelta(hours=1))
    for tenant in ("t-a", "t-b"):
        again = ingest_pb2.WriteRequest()
        again.CopyFrom(request)
        outcome = store.loop.run_until_complete(
            store.writer.submit(prepare_write(again, tenant).batch)
        )
        assert outcome.counts["turn"].created == 1
    with store.engine.connect() as conn:
        assert len(_stored(conn, schema.turns, "t-a")) == 1
        assert len(_stored(conn, schema.executions, "t-b")) == 1
