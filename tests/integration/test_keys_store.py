"""store/keys.py on both dialects: the migration creates exactly the tables schema.py declares,
and a key's life (create, find, list, revoke, expiry) as the server and the CLI see it."""

from __future__ import annotations

import datetime as dt

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from turnstream.core.auth import hash_secret
from turnstream.store import schema
from turnstream.store.engine import create_engine, migrate
from turnstream.store.keys import KeyStore


def test_migration_0003_matches_the_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    finally:
        engine.dispose()
    assert diff == []  # 0003 creates tenants and api_keys exactly as schema.py declares


async def test_a_keys_life(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        migrate(engine)
        keys = KeyStore(engine)
        assert keys.any_active_now() is False
        made, _ = keys.create("acme", "read,ingest", "ci")
        found = await keys.find(made.key_id)
        assert found is not None and found.secret_hash == made.secret_hash
        assert found.secret_hash == hash_secret(made.key.split("_", 2)[2])
        assert made.key.split("_", 2)[2] not in str(found)
        assert (found.tenant_id, found.scopes, found.name) == ("acme", {"ingest", "read"}, "ci")
        assert await keys.find("ffffffffffff") is None
        assert await keys.any_active() is True
        keys.create("acme", "read")  # the tenant row is created once
        with engine.connect() as conn:
            assert [r.tenant_id for r in conn.execute(schema.tenants.select())] == ["acme"]
        assert keys.list("acme")[0].key_id == made.key_id
        assert keys.list("nobody") == []

        first = keys.revoke(made.key_id)
        assert first is not None and first.revoked_at is not None
        again = keys.revoke(made.key_id)
        assert again is not None and again.revoked_at == first.revoked_at  # idempotent
        assert keys.revoke("ffffffffffff") is None
        for r in keys.list():
            if r.revoked_at is None:
                keys.revoke(r.key_id)
        assert keys.any_active_now() is False
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        keys.create("acme", "ingest", expires_at=soon)
        assert keys.any_active_now() is True
        later = KeyStore(engine, clock=lambda: soon + dt.timedelta(seconds=1))
        assert later.any_active_now() is False  # an expired key is not usable either
    finally:
        engine.dispose()
