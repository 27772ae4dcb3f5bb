"""Storage schema: SQLAlchemy Core tables, one per record kind, named as the record fields.

Every table leads with tenant_id and every key and index starts with it, so the schema can be
distributed by tenant (Citus) without change. Record tables carry `revision` (1 on insert, +1 on
each change): the writer reads it back to tell created from updated on both dialects.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()

ID = 256  # length limit of ids and names, enforced by validation before the database sees them


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    PostgreSQL keeps `timestamptz`; SQLite has no time type, so values are stored as UTC text in
    a fixed, sortable format (the writer writes the same format, see `sqlite_time`).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def sqlite_time(value: dt.datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime reads back; lexical order equals time order."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _id(name: str, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.String(ID), **kw)


def _times() -> list[sa.Column[Any]]:
    return [
        sa.Column("started_at", UTCDateTime()),
        sa.Column("completed_at", UTCDateTime()),
        sa.Column("duration_ms", sa.BigInteger),
    ]


def _bookkeeping() -> list[sa.Column[Any]]:
    # Server-side facts, not record fields: excluded from merging and from change detection.
    return [
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    ]


executions = sa.Table(
    "executions",
    metadata,
    _id("tenant_id", primary_key=True),
    _id("execution_id", primary_key=True),
    _id("workflow_name"),
    sa.Column("triggered_by", sa.String(32)),
    sa.Column("status", sa.String(32)),
    *_times(),
    sa.Column("error_message", sa.Text),
    _id("source"),
    sa.Column("metadata", JSON),
    sa.Column("user_properties", JSON),
    *_bookkeeping(),
    sa.Index("ix_executions_started", "tenant_id", "started_at"),
    sa.Index("ix_executions_workflow", "tenant_id", "workflow_name", "started_at"),
)

turns = sa.Table(
    "turns",
    metadata,
    _id("tenant_id", primary_key=True),
    _id("execution_id", primary_key=True),
    # turn_id when the worker sent one, else "#<turn_number>" (see core.rows.turn_key).
    sa.Column("record_key", sa.String(ID + 1), primary_key=True),
    sa.Column("turn_number", sa.Integer),
    _id("turn_id"),
    _id("model"),
    _id("model_provider"),
    *_times(),
    sa.Column("input_tokens", sa.BigInteger),
    sa.Column("output_tokens", sa.BigInteger),
    sa.Column("cache_read_tokens", sa.BigInteger),
    sa.Column("cache_creation_tokens", sa.BigInteger),
    sa.Column("total_tokens", sa.BigInteger),
    sa.Column("input_cost", sa.Double),
    sa.Column("output_cost", sa.Double),
    sa.Column("cache_read_cost", sa.Double),
    sa.Column("cache_creation_cost", sa.Double),
    sa.Column("total_cost", sa.Double),
    _id("finish_reason"),
    sa.Column("response_preview", sa.Text),
    sa.Column("response_preview_size", sa.BigInteger),
    sa.Column("tools_called_count", sa.Integer),
    sa.Column("tools_called_names", JSON),
    sa.Column("error_message", sa.Text),
    sa.Column("metrics", JSON),
    sa.Column("runtime_minutes", sa.Double),
    sa.Column("model_weight", sa.Double),
    sa.Column("tool_calls_weight", sa.Double),
    sa.Column("aem_value", sa.Double),
    sa.Column("aem_cost", sa.Double),
    _id("parent_id"),
    sa.Column("price_version", sa.String(64)),
    sa.Column("inputs", JSON),
    sa.Column("outputs", JSON),
    sa.Column("metadata", JSON),
    *_bookkeeping(),
    sa.Index("ix_turns_started", "tenant_id", "started_at"),
    sa.Index("ix_turns_model", "tenant_id", "model", "started_at"),
)

tool_calls = sa.Table(
    "tool_calls",
    metadata,
    _id("tenant_id", primary_key=True),
    _id("execution_id", primary_key=True),
    # tool_use_id when sent, else a digest of turn, tool name and start (core.rows.tool_call_key).
    sa.Column("record_key", sa.String(ID + 1), primary_key=True),
    _id("turn_id"),
    _id("tool_name"),
    _id("tool_use_id"),
    *_times(),
    sa.Column("tool_input", JSON),
    sa.Column("tool_output", sa.Text),
    sa.Column("tool_output_size", sa.BigInteger),
    sa.Column("success", sa.Boolean),
    sa.Column("error_message", sa.Text),
    _id("error_type"),
    sa.Column("metadata", JSON),
    _id("parent_id"),
    *_bookkeeping(),
    sa.Index("ix_tool_calls_tool", "tenant_id", "tool_name", "started_at"),
    sa.Index("ix_tool_calls_started", "tenant_id", "started_at"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    _id("tenant_id", primary_key=True),
    _id("execution_id", primary_key=True),
    # task_id when sent, else "#<task_number>", else a digest of the description.
    sa.Column("record_key", sa.String(ID + 1), primary_key=True),
    _id("task_id"),
    sa.Column("task_number", sa.Integer),
    sa.Column("task_description", sa.Text),
    _id("task_type"),
    sa.Column("status", sa.String(32)),
    *_times(),
    sa.Column("result", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("metadata", JSON),
    _id("parent_id"),
    *_bookkeeping(),
    sa.Index("ix_tasks_status", "tenant_id", "status"),
)

rejected_records = sa.Table(
    "rejected_records",
    metadata,
    _id("tenant_id", primary_key=True),
    # A digest of door, kind and payload: an exact retry of an invalid record is kept once.
    sa.Column("rejected_id", sa.String(64), primary_key=True),
    sa.Column("door", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    _id("execution_id"),
    _id("stream_id"),
    sa.Column("stream_offset", sa.BigInteger),
    sa.Column("payload", JSON, nullable=False),
    sa.Column("violations", JSON, nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Index("ix_rejected_received", "tenant_id", "received_at"),
)

streams = sa.Table(
    "streams",
    metadata,
    _id("tenant_id", primary_key=True),
    _id("stream_id", primary_key=True),
    # Offset of the first record not yet stored; advanced in the transaction storing the records.
    sa.Column("committed_offset", sa.BigInteger, nullable=False),
    # Incremented by every open: a connection holding an older epoch is fenced.
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# Who may call (core/auth.py, docs/auth.md). Small, global lookup tables: a request arrives with
# a key and no tenant, so `api_keys` is keyed by the key's public id alone, and both tables are
# *reference tables* on Citus (copied to every node, so the lookup never crosses nodes) rather
# than distributed by tenant_id; `info["distribution"]` says so for the schema tests. They are
# read through their own connections (store/keys.py), never the writer's.
tenants = sa.Table(
    "tenants",
    metadata,
    _id("tenant_id", primary_key=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    info={"distribution": "reference"},
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    # Public id, the middle of ts_<key_id>_<secret>: what a request is looked up by.
    sa.Column("key_id", sa.String(32), primary_key=True),
    _id("tenant_id", nullable=False),
    # SHA-256 of the secret, hex (the secret itself is never stored).
    sa.Column("secret_hash", sa.String(64), nullable=False),
    # Comma-separated, sorted: "ingest,read".
    sa.Column("scopes", sa.String(64), nullable=False),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime()),
    sa.Column("expires_at", UTCDateTime()),
    # `keys list --tenant`; and the anonymous-mode question "is any key un-revoked?".
    sa.Index("ix_api_keys_tenant", "tenant_id", "created_at"),
    info={"distribution": "reference"},
)

RECORD_TABLES: dict[str, sa.Table] = {
    "execution": executions,
    "turn": turns,
    "tool_call": tool_calls,
    "task": tasks,
}
