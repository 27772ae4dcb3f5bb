"""Storage, read side: GetExecution (one execution and its records, in order) and
ListExecutions (newest first, keyset-paged), on the read engine's own connections."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from turnstream.core.ports import Keyset
from turnstream.store import schema
from turnstream.store.analytics_sql import Filters, Sql, num
from turnstream.store.queries import Reads, record_of
from turnstream.v1 import analytics_pb2 as pb
from turnstream.v1 import records_pb2


def _aware(value: Any) -> dt.datetime:
    if isinstance(value, str):  # SQLite answers its stored UTC text
        value = dt.datetime.fromisoformat(value)
    aware: dt.datetime = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
    return aware.astimezone(dt.UTC)


def _order(row: dict[str, Any], columns: tuple[str, ...]) -> tuple[Any, ...]:
    # NULLs last, as PostgreSQL orders them ascending.
    return tuple((row[c] is None, row[c] if row[c] is not None else 0) for c in columns)


class Executions:
    def __init__(self, reads: Reads) -> None:
        self.reads = reads
        self.sql = Sql(reads.engine.dialect.name)

    async def get(self, tenant_id: str, execution_id: str) -> pb.GetExecutionResponse | None:
        def run() -> pb.GetExecutionResponse | None:
            with self.reads.engine.connect() as conn:
                found = self._executions(conn, tenant_id, [execution_id])
                if not found:
                    return None
                out = pb.GetExecutionResponse(execution=found[execution_id])
                key = {"tenant_id": tenant_id, "execution_id": execution_id}
                for kind, table, target, order in (
                    ("turn", schema.turns, out.turns, ("turn_number", "started_at")),
                    ("tool_call", schema.tool_calls, out.tool_calls, ("started_at",)),
                    ("task", schema.tasks, out.tasks, ("task_number", "started_at")),
                ):
                    # The primary key's range (tenant, execution); ordered here, because an
                    # ORDER BY started_at led SQLite to walk ix_tool_calls_started, i.e. every
                    # tool call of the tenant. One execution's records are few.
                    query = sa.select(table).where(*(table.c[k] == v for k, v in key.items()))
                    rows = [dict(row._mapping) for row in conn.execute(query)]
                    rows.sort(key=functools.partial(_order, columns=(*order, "record_key")))
                    for row in rows:
                        target.append(record_of(kind, row))  # type: ignore[arg-type]
                totals = self._totals(conn, tenant_id, [execution_id])
                out.totals.CopyFrom(totals[execution_id])
                return out

        return await self.reads._read(run)

    async def list(
        self, tenant_id: str, f: Filters, page_size: int, after: Keyset | None
    ) -> tuple[pb.ListExecutionsResponse, Keyset | None]:
        """One page, newest first, after the keyset (start, id) of the previous page's last
        execution; answers the keyset of this page's last when there are more."""

        def run() -> tuple[pb.ListExecutionsResponse, Keyset | None]:
            with self.reads.engine.connect() as conn:
                cte, params = self.sql.runs(f, where=("e.started_at IS NOT NULL",))
                keyset = ""
                if after is not None:
                    keyset = (
                        "WHERE started_at < :after_t OR (started_at = :after_t"
                        f" AND execution_id{self.sql.collate} < :after_id)"
                    )
                    params |= {"after_t": self.sql.time(after[0]), "after_id": after[1]}
                statement = sa.text(
                    f"""{cte} SELECT execution_id, started_at FROM runs {keyset}
                        ORDER BY started_at DESC, execution_id{self.sql.collate} DESC
                        LIMIT :n"""
                )
                page = list(
                    conn.execute(statement, {"tenant": tenant_id, **params, "n": page_size + 1})
                )
                more = len(page) > page_size
                page = page[:page_size]
                ids = [eid for eid, _ in page]
                found = self._executions(conn, tenant_id, ids)
                totals = self._totals(conn, tenant_id, ids)
                out = pb.ListExecutionsResponse()
                for eid in ids:
                    out.executions.add(execution=found[eid], totals=totals[eid])
                last = (_aware(page[-1][1]), page[-1][0]) if more else None
                return out, last

        return await self.reads._read(run)

    def _executions(
        self, conn: sa.Connection, tenant_id: str, ids: Sequence[str]
    ) -> dict[str, records_pb2.Execution]:
        """The stored executions, each with the status and duration the dashboard derives."""
        if not ids:
            return {}
        e = schema.executions
        rows = conn.execute(
            sa.select(e).where(e.c.tenant_id == tenant_id, e.c.execution_id.in_(ids))
        )
        out: dict[str, records_pb2.Execution] = {}
        for row in rows:
            out[row.execution_id] = record_of("execution", dict(row._mapping))  # type: ignore[assignment]
        cte, params = self.sql.runs(
            Filters(None, None),
            where=("e.execution_id IN :ids",),
            task_where=" AND execution_id IN :ids",  # not every failed task of the tenant
        )
        statement = sa.text(
            f"{cte} SELECT execution_id, status, error_message, duration_ms FROM runs"
        ).bindparams(sa.bindparam("ids", expanding=True))
        for eid, status, message, ms in conn.execute(
            statement, {"tenant": tenant_id, **params, "ids": list(ids)}
        ):
            record = out[eid]
            record.status = records_pb2.ExecutionStatus.Value(f"EXECUTION_STATUS_{status.upper()}")
            if message and not record.error_message:
                record.error_message = message
            if ms is not None and not record.HasField("duration_ms"):
                record.duration_ms = int(ms)
        return out

    def _totals(
        self, conn: sa.Connection, tenant_id: str, ids: Sequence[str]
    ) -> dict[str, pb.ExecutionTotals]:
        out = {eid: pb.ExecutionTotals() for eid in ids}
        if not ids:
            return out
        ids_param: Any = sa.bindparam("ids", expanding=True)
        turns = sa.text(
            """SELECT execution_id, COUNT(*), SUM(COALESCE(input_tokens, 0)),
                SUM(COALESCE(output_tokens, 0)), SUM(COALESCE(total_tokens, 0)),
                SUM(COALESCE(total_cost, 0)), SUM(COALESCE(aem_value, 0))
            FROM turns WHERE tenant_id = :tenant AND execution_id IN :ids
            GROUP BY execution_id"""
        ).bindparams(ids_param)
        params = {"tenant": tenant_id, "ids": list(ids)}
        for eid, n, i, o, t, cost, aem in conn.execute(turns, params):
            tot = out[eid]
            tot.turns, tot.input_tokens, tot.output_tokens = n, int(i), int(o)
            tot.total_tokens, tot.total_cost, tot.aem_value = int(t), num(cost), num(aem)
        calls = sa.text(
            """SELECT execution_id, COUNT(*),
                SUM(CASE WHEN success = FALSE THEN 1 ELSE 0 END)
            FROM tool_calls WHERE tenant_id = :tenant AND execution_id IN :ids
            GROUP BY execution_id"""
        ).bindparams(ids_param)
        for eid, n, failed in conn.execute(calls, params):
            out[eid].tool_calls, out[eid].failed_tool_calls = n, int(num(failed))
        tasks = sa.text(
            """SELECT execution_id, COUNT(*) FROM tasks
            WHERE tenant_id = :tenant AND execution_id IN :ids GROUP BY execution_id"""
        ).bindparams(ids_param)
        for eid, n in conn.execute(tasks, params):
            out[eid].tasks = n
        return out
