"""Test support: read what a database holds, through SQLAlchemy, to compare states."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from turnstream.store import schema

TABLES = ("executions", "turns", "tool_calls", "tasks", "rejected_records", "streams")


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: two equal snapshots mean nothing changed."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for name in TABLES:
                table = schema.metadata.tables[name]
                rows = conn.execute(sa.select(table)).all()
                out[name] = sorted((tuple(r) for r in rows), key=repr)
            return out
    finally:
        engine.dispose()


def rows(url: str, table: str, **where: Any) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        t = schema.metadata.tables[table]
        query = sa.select(t)
        for k, v in where.items():
            query = query.where(t.c[k] == v)
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
    finally:
        engine.dispose()


def _total(values: list[Any]) -> Any:
    return sum(v for v in values if v is not None)  # the rollups count NULL as 0


def _hour(value: Any) -> Any:
    return None if value is None else value.replace(minute=0, second=0, microsecond=0)


def rollups_and_recomputed(url: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """The writer's dashboard rollups as stored, and the same computed here in plain Python
    from the base rows: equal means every replay, revision and resume left them exact."""
    from turnstream.store.rollup import NO_PROVIDER, NO_WEIGHT, TURN_SUMS

    turn_keys = ("tenant_id", "execution_id")
    stored: dict[Any, Any] = {}
    for r in rows(url, "turn_rollups"):
        key = ("turn", *(r[k] for k in turn_keys), r["hour"], r["model"], r["model_provider"])
        key += (r["model_weight"],)
        assert key not in stored, f"two rollup rows for {key}"
        stored[key] = (r["turns"], *(r[c] for c in TURN_SUMS))
    for r in rows(url, "tool_rollups"):
        key = ("tool", r["tenant_id"], r["execution_id"], r["tool_name"])
        assert key not in stored, f"two rollup rows for {key}"
        stored[key] = (r["calls"], r["successes"])
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows(url, "turns"):
        key = ("turn", *(r[k] for k in turn_keys), _hour(r["started_at"]), r["model"])
        provider = NO_PROVIDER if r["model_provider"] is None else r["model_provider"]
        weight = NO_WEIGHT if r["model_weight"] is None else r["model_weight"]
        groups.setdefault((*key, provider, weight), []).append(r)
    for r in rows(url, "tool_calls"):
        groups.setdefault(("tool", r["tenant_id"], r["execution_id"], r["tool_name"]), []).append(r)
    recomputed: dict[Any, Any] = {}
    for key, members in groups.items():
        if key[0] == "turn":
            sums = (_total([m[c] for m in members]) for c in TURN_SUMS)
            recomputed[key] = (len(members), *sums)
        else:
            recomputed[key] = (len(members), sum(1 for m in members if m["success"]))
    return stored, recomputed


def assert_rollups_exact(url: str) -> None:
    import pytest

    stored, recomputed = rollups_and_recomputed(url)
    assert set(stored) == set(recomputed)
    for key, values in recomputed.items():
        assert list(stored[key]) == pytest.approx(list(values), rel=1e-9, abs=1e-9), key
