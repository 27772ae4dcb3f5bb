"""Storage: reads, on their own pooled connections — never the writer's, never its queue. Each
runs in a worker thread so the event loop never waits on the database."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from turnstream.core.ports import StoreUnavailable
from turnstream.store import schema


class Reads:
    def __init__(self, engine: sa.Engine, retry_after: float = 1.0) -> None:
        self.engine = engine
        self.retry_after = retry_after

    async def find_task(self, tenant_id: str, task_id: str) -> tuple[str, str] | None:
        """(execution_id, task_description) of the task with this id, if one is stored. Ids
        are unique in practice; if two executions reuse one, the latest written wins."""
        t = schema.tasks
        query = (
            sa.select(t.c.execution_id, t.c.task_description)
            .where(t.c.tenant_id == tenant_id, t.c.task_id == task_id)
            .order_by(t.c.updated_at.desc())
            .limit(1)
        )

        def run() -> tuple[str, str] | None:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
            return None if row is None else (str(row[0]), str(row[1] or ""))

        try:
            return await asyncio.to_thread(run)
        except sa.exc.OperationalError as exc:
            raise StoreUnavailable(
                "the database is unavailable; nothing was read, retry", self.retry_after
            ) from exc
