"""Storage: tenants and API keys (`turnstream keys`, and the authenticator's KeyLookup port). On
the engine's own pooled connections, never the writer's queue: a key check must not wait behind
a group commit. The server only reads (through the authenticator's cache); the CLI writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import sqlalchemy as sa

from turnstream.core.auth import KeyRecord, NewKey, new_key, parse_scopes
from turnstream.store import schema
from turnstream.store.queries import off_loop

T = TypeVar("T")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _record(row: Any) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        tenant_id=m["tenant_id"],
        key_id=m["key_id"],
        secret_hash=m["secret_hash"],
        scopes=frozenset(s for s in m["scopes"].split(",") if s),
        name=m["name"] or "",
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
        expires_at=m["expires_at"],
    )


class KeyStore:
    def __init__(
        self,
        engine: sa.Engine,
        retry_after: float = 1.0,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.engine = engine
        self.retry_after = retry_after
        self.clock = clock

    # -- the server's reads (async: in a worker thread, off the event loop) ---------------------

    async def find(self, key_id: str) -> KeyRecord | None:
        return await self._read(lambda: self.find_now(key_id))

    async def any_active(self) -> bool:
        return await self._read(self.any_active_now)

    async def _read(self, run: Callable[[], T]) -> T:
        return await off_loop(
            run, "the database is unavailable; the API key could not be checked", self.retry_after
        )

    # -- synchronous (the CLI, and the server's start-up check) --------------------------------

    def find_now(self, key_id: str) -> KeyRecord | None:
        k = schema.api_keys
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(k).where(k.c.key_id == key_id)).first()
        return None if row is None else _record(row)

    def any_active_now(self) -> bool:
        """True when a key exists that is neither revoked nor expired (anonymous mode is off)."""
        k = schema.api_keys
        usable = sa.and_(
            k.c.revoked_at.is_(None),
            sa.or_(k.c.expires_at.is_(None), k.c.expires_at > self.clock()),
        )
        with self.engine.connect() as conn:
            return conn.execute(sa.select(k.c.key_id).where(usable).limit(1)).first() is not None

    def create(
        self,
        tenant_id: str,
        scopes: str | Iterable[str],
        name: str = "",
        expires_at: dt.datetime | None = None,
        make: Callable[[], NewKey] = new_key,
    ) -> tuple[NewKey, KeyRecord]:
        """A new key for `tenant_id` (the tenant is created on first use). The NewKey's `key`
        is the only copy of the secret: show it once."""
        tenant_id = tenant_id.strip()
        if not tenant_id or len(tenant_id) > schema.ID:
            raise ValueError(f"--tenant must have 1 to {schema.ID} characters")
        wanted = parse_scopes(scopes)
        now = self.clock()
        made = make()
        record = KeyRecord(
            tenant_id=tenant_id,
            key_id=made.key_id,
            secret_hash=made.secret_hash,
            scopes=wanted,
            name=name,
            created_at=now,
            expires_at=expires_at,
        )
        with self.engine.begin() as conn:
            t = schema.tenants
            known = conn.execute(sa.select(t.c.tenant_id).where(t.c.tenant_id == tenant_id))
            if known.first() is None:
                conn.execute(sa.insert(t).values(tenant_id=tenant_id, created_at=now))
            # The primary key refuses a (vanishingly unlikely) key id collision.
            conn.execute(
                sa.insert(schema.api_keys).values(
                    key_id=made.key_id,
                    tenant_id=tenant_id,
                    secret_hash=made.secret_hash,
                    scopes=",".join(sorted(wanted)),
                    name=name,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return made, record

    def list(self, tenant_id: str | None = None) -> list[KeyRecord]:
        k = schema.api_keys
        query = sa.select(k).order_by(k.c.tenant_id, k.c.created_at, k.c.key_id)
        if tenant_id is not None:
            query = query.where(k.c.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke the key (idempotent: a second revoke keeps the first time). None when no key
        has this id."""
        k = schema.api_keys
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(k)
                .where(k.c.key_id == key_id, k.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )
            row = conn.execute(sa.select(k).where(k.c.key_id == key_id)).first()
        return None if row is None else _record(row)
