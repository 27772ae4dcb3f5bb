"""The schema held to docs/scaling.md (Citus, distributed by tenant_id): every table classified
in the doc's table; every primary key, unique constraint, unique index (and index) of a
distributed table leads with tenant_id; no foreign key crosses tenants; every ON CONFLICT target
on a distributed table leads with tenant_id and every UPDATE / DELETE of one filters on it —
checked on store/schema.py, on the migrated database of both dialects, on the SQL in the source,
and on the statements a real server runs."""

from __future__ import annotations

import ast
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.deploy.manifests import ROOT
from tests.integration.test_chaos import small_turn
from tests.serving import ingest_stub, running_server
from turnstream.client import StreamWriter
from turnstream.store import schema
from turnstream.store.dialects import SqlDialect
from turnstream.store.engine import create_engine, migrate
from turnstream.v1 import ingest_pb2, records_pb2

DOC = ROOT / "docs" / "scaling.md"
SRC = ROOT / "src" / "turnstream"
TENANT = "tenant_id"
# The one place that builds ON CONFLICT targets from a table's columns (checked by calling it).
DYNAMIC_TARGETS = {("store/dialects.py", "_upsert_tail")}
MUTABLE = re.compile(
    r"\b(now|random|clock_timestamp|statement_timestamp|nextval)\s*\(|CURRENT_", re.I
)


def doc_kinds() -> dict[str, str]:
    """table -> distributed | reference | local, from the doc's table."""
    rows = re.findall(
        r"^\| `(\w+)` \| (distributed|reference|local) \|", DOC.read_text(), re.MULTILINE
    )
    kinds = dict(rows)
    assert len(kinds) == len(rows), "a table is listed twice in docs/scaling.md"
    assert kinds, "docs/scaling.md lists no tables"
    return kinds


KINDS = doc_kinds()
DISTRIBUTED = {t for t, k in KINDS.items() if k == "distributed"}


@dataclass
class Shape:
    """What matters of a table for distribution, from MetaData or from a live database."""

    name: str
    tenant_nullable: bool | None  # None: no tenant_id column
    primary_key: list[str]
    # (what, columns): unique constraints and indexes, unique or not
    unique: list[tuple[str, list[str | None]]] = field(default_factory=list)
    indexes: list[tuple[str, list[str | None]]] = field(default_factory=list)
    # (columns, referred table, referred columns)
    foreign_keys: list[tuple[list[str], str, list[str]]] = field(default_factory=list)


def shapes_of_metadata(metadata: sa.MetaData) -> dict[str, Shape]:
    out = {}
    for table in metadata.sorted_tables:
        tenant = table.c.get(TENANT)
        shape = Shape(
            table.name,
            None if tenant is None else bool(tenant.nullable),
            [c.name for c in table.primary_key.columns],
        )
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint):
                shape.unique.append(
                    (f"constraint {constraint.name}", list(constraint.columns.keys()))
                )
        for index in table.indexes:
            names: list[str | None] = [
                e.name if isinstance(e, sa.Column) else None for e in index.expressions
            ]
            (shape.unique if index.unique else shape.indexes).append((f"index {index.name}", names))
        for fk in table.foreign_key_constraints:
            shape.foreign_keys.append(
                (
                    [c.name for c in fk.columns],
                    fk.referred_table.name,
                    [e.column.name for e in fk.elements],
                )
            )
        out[table.name] = shape
    return out


def shapes_of_database(engine: sa.Engine) -> dict[str, Shape]:
    inspector = sa.inspect(engine)
    out = {}
    for name in inspector.get_table_names():
        columns = {c["name"]: c for c in inspector.get_columns(name)}
        tenant = columns.get(TENANT)
        shape = Shape(
            name,
            None if tenant is None else bool(tenant["nullable"]),
            list(inspector.get_pk_constraint(name)["constrained_columns"]),
        )
        for uc in inspector.get_unique_constraints(name):
            shape.unique.append((f"constraint {uc['name']}", list(uc["column_names"])))
        for ix in inspector.get_indexes(name):
            cols = list(ix["column_names"])
            (shape.unique if ix["unique"] else shape.indexes).append((f"index {ix['name']}", cols))
        for fk in inspector.get_foreign_keys(name):
            shape.foreign_keys.append(
                (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
            )
        out[name] = shape
    return out


def violations(shapes: dict[str, Shape], kinds: dict[str, str]) -> list[str]:
    """Every way `shapes` breaks the rules of docs/scaling.md, one sentence each."""
    out = []
    for name, shape in shapes.items():
        kind = kinds.get(name)
        if kind is None:
            out.append(f"{name}: not classified in docs/scaling.md (distributed/reference/local)")
            continue
        for cols, referred, referred_cols in shape.foreign_keys:
            target = kinds.get(referred)
            if kind == "reference" and target == "distributed":
                out.append(f"{name}: a reference table cannot reference distributed {referred}")
            if kind == "distributed" and target == "distributed":
                pairs = set(zip(cols, referred_cols, strict=True))
                if (TENANT, TENANT) not in pairs:
                    out.append(
                        f"{name}: foreign key {cols} -> {referred}{referred_cols} crosses "
                        f"tenants (it must pair {TENANT} with {TENANT})"
                    )
        if kind != "distributed":
            continue
        if shape.tenant_nullable is None:
            out.append(f"{name}: a distributed table without a {TENANT} column")
            continue
        if shape.tenant_nullable:
            out.append(f"{name}: {TENANT} must be NOT NULL")
        keys = [("primary key", shape.primary_key), *shape.unique, *shape.indexes]
        for what, cols in keys:
            if not cols or cols[0] != TENANT:
                out.append(f"{name}: {what} {cols} does not lead with {TENANT}")
    return out


def test_the_doc_classifies_every_table_and_only_real_ones() -> None:
    tables = set(schema.metadata.tables)
    assert tables - set(KINDS) == set(), "classify these tables in docs/scaling.md"
    unknown = set(KINDS) - tables - {"alembic_version"}
    assert unknown == set(), "docs/scaling.md lists tables the schema does not have"


def test_tables_that_say_their_distribution_agree_with_the_doc() -> None:
    """A table may carry info={"distribution": ...} in store/schema.py; it must say what the
    doc says."""
    for table in schema.metadata.tables.values():
        said = table.info.get("distribution")
        if said is not None:
            assert said == KINDS.get(table.name), table.name


def test_schema_keys_lead_with_tenant_and_no_foreign_key_crosses_tenants() -> None:
    assert violations(shapes_of_metadata(schema.metadata), KINDS) == []


def test_the_migrated_database_keeps_the_rules(database_url: str) -> None:
    """What migrations really created (an index added by a migration only counts too)."""
    engine = create_engine(database_url)
    try:
        migrate(engine)
        shapes = shapes_of_database(engine)
    finally:
        engine.dispose()
    assert violations(shapes, KINDS) == []
    assert set(KINDS) - set(shapes) == set()


def test_the_checks_catch_what_they_are_for() -> None:
    """The rules above on a schema that breaks each one."""
    bad = sa.MetaData()
    sa.Table(
        "executions",
        bad,
        sa.Column("tenant_id", sa.String, primary_key=True),
        sa.Column("execution_id", sa.String, primary_key=True),
    )
    sa.Table(
        "turns",
        bad,
        sa.Column("turn_id", sa.String, primary_key=True),
        sa.Column("tenant_id", sa.String, primary_key=True),
        sa.Column("execution_id", sa.String),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.execution_id"]),
        sa.Index("ix_by_turn", "turn_id", unique=True),
    )
    sa.Table("tasks", bad, sa.Column("id", sa.String, primary_key=True))
    sa.Table("mystery", bad, sa.Column("tenant_id", sa.String, primary_key=True))
    found = violations(shapes_of_metadata(bad), KINDS)
    assert any("turns: primary key" in v for v in found)
    assert any("turns: index ix_by_turn" in v for v in found)
    assert any("turns: foreign key" in v and "crosses tenants" in v for v in found)
    assert any("tasks: a distributed table without a tenant_id" in v for v in found)
    assert any("mystery: not classified" in v for v in found)
    assert not any(v.startswith("executions:") for v in found)


# -- SQL: ON CONFLICT targets, UPDATE and DELETE ------------------------------------------------

_INSERT = re.compile(r"\bINSERT\s+INTO\s+(\w+)\s*(?:\(([^)]*)\))?", re.I)
_CONFLICT = re.compile(r"\bON\s+CONFLICT\s*(?:\(([^)]*)\))?\s*DO\s+(\w+)", re.I)
_MODIFY = re.compile(r"^\s*(?:UPDATE\s+(\w+)\s+SET|DELETE\s+FROM\s+(\w+))\b", re.I)


def statement_problems(sql: str) -> list[str]:
    """Problems of one SQL statement against the rules for distributed tables."""
    sql = " ".join(sql.split())
    out = []
    insert = _INSERT.search(sql)
    if insert and insert.group(1) in DISTRIBUTED:
        table = insert.group(1)
        columns = [c.strip() for c in (insert.group(2) or "").split(",")]
        if TENANT not in columns:
            out.append(f"INSERT INTO {table} does not name {TENANT}: {sql[:160]}")
        conflict = _CONFLICT.search(sql)
        if conflict and conflict.group(1) is not None:
            target = [c.strip() for c in conflict.group(1).split(",")]
            if target[0] != TENANT:
                out.append(f"ON CONFLICT {target} on {table} does not lead with {TENANT}")
        if conflict and conflict.group(2).upper() == "UPDATE":
            tail = sql[conflict.end() :]
            if MUTABLE.search(tail):
                out.append(f"a mutable function in the ON CONFLICT of {table}: {tail[:160]}")
    modify = _MODIFY.match(sql)
    if modify:
        table = modify.group(1) or modify.group(2)
        where = sql.split(" WHERE ", 1)[1] if " WHERE " in sql else ""
        if table in DISTRIBUTED and not re.search(rf"\b{TENANT}\s*(=|IN\b)", where, re.I):
            out.append(f"{sql[:60]}… does not filter on {TENANT}")
    return out


def test_the_writers_upsert_targets_lead_with_tenant() -> None:
    """The targets built from a table's key (dialects._upsert_tail) and the fixed ones."""
    dialect = SqlDialect()
    for table in schema.RECORD_TABLES.values():
        names = ", ".join(c.name for c in table.columns)
        sql = f"INSERT INTO {table.name} ({names}) VALUES (?)" + dialect._upsert_tail(table)
        assert statement_problems(sql) == [], table.name
        assert _CONFLICT.search(sql) is not None
    derived = (
        "INSERT INTO executions (tenant_id, execution_id) VALUES (?)" + dialect._derived_tail()
    )
    assert statement_problems(derived) == []


def string_sites(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, enclosing function, text) of every string literal and f-string in a module, with
    f-string holes shown as `{…}`."""
    tree = ast.parse(path.read_text())
    functions: list[tuple[int, int, str]] = [
        (n.lineno, n.end_lineno or n.lineno, n.name)
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    ]

    def enclosing(line: int) -> str:
        inside = [f for f in functions if f[0] <= line <= f[1]]
        return max(inside)[2] if inside else "<module>"

    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{…}" for v in node.values)
            yield node.lineno, enclosing(node.lineno), str(text)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, enclosing(node.lineno), node.value


def sources() -> Iterable[Path]:
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(("v1/", "store/migrations/")):
            continue
        yield path


def test_every_on_conflict_target_in_the_source_leads_with_tenant() -> None:
    """Each `ON CONFLICT (…)` written in src/: literal targets lead with tenant_id (unless the
    INSERT is into a reference or local table); targets built at run time come from the one
    place checked above; SQLAlchemy's on_conflict_* are checked the same way."""
    problems = []
    seen = 0
    for path in sources():
        rel = path.relative_to(SRC).as_posix()
        for line, function, text in string_sites(path):
            for match in re.finditer(r"ON CONFLICT\s*\(([^)]*)\)", text):
                seen += 1
                where = f"{rel}:{line} ({function})"
                target = match.group(1)
                if "{…}" in target:
                    if (rel, function) not in DYNAMIC_TARGETS:
                        problems.append(f"{where}: a target built at run time, unchecked")
                    continue
                inserts = _INSERT.findall(text[: match.start()])
                table = inserts[-1][0] if inserts else None
                if table is not None and KINDS.get(table) in ("reference", "local"):
                    continue
                if target.split(",")[0].strip() != TENANT:
                    problems.append(f"{where}: ON CONFLICT ({target}) into {table}")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("on_conflict_do_update", "on_conflict_do_nothing")
            ):
                elements = [k.value for k in node.keywords if k.arg == "index_elements"]
                first = ast.unparse(elements[0]) if elements else ""
                if TENANT not in first.split(",")[0]:
                    problems.append(
                        f"{rel}:{node.lineno}: {node.func.attr} without a target leading with "
                        f"{TENANT} (add a literal index_elements=[...'{TENANT}'...], or classify)"
                    )
    assert seen >= 2, "found no ON CONFLICT in src/: has the SQL moved?"
    assert problems == []


async def test_every_statement_a_real_server_runs_keeps_the_rules(sqlite_url: str) -> None:
    """Every statement of a real server (SQLite's trace of each connection) while it takes a
    Write with every kind of record and a dead letter, an Append stream, and the reads."""
    statements: list[str] = []

    def trace(dbapi_conn: Any, _record: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.set_trace_callback(statements.append)

    async def traffic() -> None:
        async with running_server(sqlite_url) as server, ingest_stub(server) as stub:
            turn = small_turn("e1", 1)
            call = records_pb2.ToolCall(execution_id="e1", tool_name="search", tool_use_id="u1")
            call.started_at.CopyFrom(turn.started_at)
            task = records_pb2.Task(execution_id="e1", task_number=1, task_description="plan")
            task.started_at.CopyFrom(turn.started_at)
            await stub.Write(
                ingest_pb2.WriteRequest(
                    execution=records_pb2.Execution(execution_id="e1", workflow_name="w"),
                    turns=[turn, records_pb2.Turn(execution_id="e1")],  # the second: invalid
                    tool_calls=[call],
                    tasks=[task],
                )
            )
            target = f"127.0.0.1:{server.grpc_port}"
            async with StreamWriter(target, "s1") as writer:
                for n in range(20):
                    await writer.turn(small_turn("s1", n))
                await writer.flush()
            # A second writer on the same stream: open again (epoch + 1), advance.
            async with StreamWriter(target, "s1") as writer:
                await writer.turn(small_turn("s1", 20))
                await writer.flush()
            await stub.GetStream(ingest_pb2.GetStreamRequest(stream_id="s1"))

    sa.event.listen(sa.engine.Engine, "connect", trace)
    try:
        await traffic()
    finally:
        sa.event.remove(sa.engine.Engine, "connect", trace)

    dml = [s for s in statements if re.match(r"\s*(INSERT|UPDATE|DELETE|WITH)\b", s, re.I)]
    touched = {m.group(1) for s in dml for m in [_INSERT.search(s)] if m}
    assert {"turns", "tool_calls", "tasks", "executions", "streams", "rejected_records"} <= touched
    assert any(re.match(r"\s*UPDATE streams\b", s) for s in dml), "no stream advance traced"
    assert [p for s in dml for p in statement_problems(s)] == []
    print(f"{len(dml)} statements checked, into {sorted(touched)}")


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        (
            "INSERT INTO turns (tenant_id, x) VALUES (1, 2) ON CONFLICT (x) DO NOTHING",
            "ON CONFLICT",
        ),
        ("INSERT INTO turns (x) VALUES (2)", "does not name"),
        ("UPDATE streams SET epoch = 2 WHERE stream_id = 'a'", "does not filter"),
        ("DELETE FROM turns WHERE execution_id = 'a'", "does not filter"),
        (
            "INSERT INTO turns (tenant_id) VALUES (1) ON CONFLICT (tenant_id) DO UPDATE "
            "SET updated_at = now()",
            "mutable",
        ),
    ],
)
def test_the_statement_check_catches(sql: str, problem: str) -> None:
    found = statement_problems(sql)
    assert len(found) == 1 and problem in found[0], found
