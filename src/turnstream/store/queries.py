"""Storage: reads, on their own pooled connections — never the writer's, never its queue. Each
runs in a worker thread so the event loop never waits on the database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message

from turnstream.core.ports import StoreUnavailable
from turnstream.store import schema
from turnstream.v1 import records_pb2

T = TypeVar("T")


async def off_loop(run: Callable[[], T], unavailable: str, retry_after: float) -> T:
    """`run` (blocking reads on a pooled connection, never the writer's) in a worker thread,
    off the event loop; a database that cannot be reached is StoreUnavailable(`unavailable`)."""
    try:
        return await asyncio.to_thread(run)
    except sa.exc.OperationalError as exc:
        raise StoreUnavailable(unavailable, retry_after) from exc


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

        return await self._read(run)

    async def find_event(self, tenant_id: str, event_id: str) -> Message | None:
        """The stored record a HoneyHive event id names (PUT /events gives nothing else): the
        execution with that id, else the turn, tool call or task keyed by it, the latest
        written when two executions reuse an id. Without an index on (tenant_id, record_key)
        the three last lookups scan the tenant's rows."""

        def run() -> Message | None:
            with self.engine.connect() as conn:
                for kind, table, column in _EVENT_TABLES:
                    query = sa.select(table).where(
                        table.c.tenant_id == tenant_id, table.c[column] == event_id
                    )
                    row = conn.execute(query.order_by(table.c.updated_at.desc()).limit(1)).first()
                    if row is not None:
                        return record_of(kind, dict(row._mapping))
            return None

        return await self._read(run)

    async def _read(self, run: Callable[[], T]) -> T:
        return await off_loop(
            run, "the database is unavailable; nothing was read, retry", self.retry_after
        )


_EVENT_TABLES = (
    ("execution", schema.executions, "execution_id"),
    ("turn", schema.turns, "record_key"),
    ("tool_call", schema.tool_calls, "record_key"),
    ("task", schema.tasks, "record_key"),
)
_MESSAGES: dict[str, type[Message]] = {
    "execution": records_pb2.Execution,
    "turn": records_pb2.Turn,
    "tool_call": records_pb2.ToolCall,
    "task": records_pb2.Task,
}


def record_of(kind: str, row: dict[str, Any]) -> Message:
    """A stored row as its turnstream.v1 record (the inverse of core.rows); columns that are
    not record fields (tenant, key, bookkeeping) are left out."""
    message = _MESSAGES[kind]()
    for field in message.DESCRIPTOR.fields:
        value = row.get(field.name)
        if value is None:
            continue
        target: Any = getattr(message, field.name)
        if field.is_repeated:
            target.extend(value)
        elif field.message_type is not None and field.message_type.name == "Timestamp":
            target.FromDatetime(value)
        elif field.message_type is not None:  # google.protobuf.Struct
            target.SetInParent()
            target.update(value)
        elif field.enum_type is not None:
            setattr(message, field.name, _enum_number(field, value))
        else:
            setattr(message, field.name, value)
    return message


def _enum_number(field: Any, word: str) -> int:
    # "running" -> TASK_STATUS_RUNNING, as core.rows.enum_word wrote it.
    enum = field.enum_type
    assert enum is not None
    prefix = "".join("_" + c if c.isupper() else c for c in enum.name).lstrip("_").upper()
    value = enum.values_by_name.get(f"{prefix}_{word.upper()}")
    return value.number if value is not None else 0
