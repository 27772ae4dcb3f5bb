"""Test fixtures: a fresh, empty, real database per test, on SQLite and on PostgreSQL.

`database_url` runs a test once per dialect; `sqlite_url` / `postgresql_url` pin one. PostgreSQL
is a throwaway server started once per session (tests/pgserver.py), or the server named by
TURNSTREAM_TEST_PG_URL. No schema is created here: tests call the app's migrations.

Limit the dialects with `--db sqlite|postgresql|all` or TURNSTREAM_TEST_DB (default all); tests
of an unselected dialect are deselected, never skipped silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import PgServer, PgServerError, drop_database
from tests.pgserver import create_database as create_pg_database

DIALECTS = ("sqlite", "postgresql")
# Fixtures that tie a test to one dialect (used to deselect and mark it).
DIALECT_FIXTURES = {
    "sqlite": {"sqlite_url"},
    "postgresql": {"postgresql_url", "pg_admin_url", "pg_server"},
}
PG_URL_ENV = "TURNSTREAM_TEST_PG_URL"
DB_ENV = "TURNSTREAM_TEST_DB"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=[*DIALECTS, "all"],
        default=None,
        help=f"database dialects to test (default: ${DB_ENV} or all)",
    )


def selected_dialects(config: pytest.Config) -> set[str]:
    choice = config.getoption("--db") or os.environ.get(DB_ENV) or "all"
    if choice == "all":
        return set(DIALECTS)
    if choice not in DIALECTS:
        raise pytest.UsageError(f"{DB_ENV}={choice!r}: expected sqlite, postgresql or all")
    return {choice}


def pytest_report_header(config: pytest.Config) -> str:
    pg = f"external (${PG_URL_ENV})" if os.environ.get(PG_URL_ENV) else "throwaway server"
    return f"turnstream databases: {', '.join(sorted(selected_dialects(config)))}; postgresql: {pg}"


def pytest_configure(config: pytest.Config) -> None:
    for dialect in DIALECTS:
        config.addinivalue_line(
            "markers",
            f"{dialect}: needs {dialect} (set automatically for tests that use {dialect} "
            "fixtures; deselected when the dialect is not selected)",
        )


def item_dialects(item: pytest.Item) -> set[str]:
    """The dialects a collected test needs: its `database_url` parameter, the single-dialect
    fixtures it uses (directly or through other fixtures), and explicit markers."""
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("database_url") if callspec else None
    names = set(getattr(item, "fixturenames", ()))
    return {
        d
        for d in DIALECTS
        if d == param or names & DIALECT_FIXTURES[d] or item.get_closest_marker(d) is not None
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the dialects it needs (so `-m "not postgresql"` works too) and
    deselect the tests that need a dialect that is not selected."""
    wanted = selected_dialects(config)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        needed = item_dialects(item)
        for dialect in needed:
            item.add_marker(dialect)
        (keep if needed <= wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's own PostgreSQL server (started on first use, deleted at the end). Do not stop
    or kill it: a fault test that crashes a server starts a `PgServer()` of its own."""
    try:
        server = PgServer()
    except PgServerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        server.start()
    except PgServerError as e:
        server.cleanup()
        pytest.fail(f"could not start the test PostgreSQL server: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_admin_url(request: pytest.FixtureRequest) -> str:
    """URL of a database on the test PostgreSQL server with the right to create databases:
    TURNSTREAM_TEST_PG_URL if set, else the session's `pg_server`."""
    external = os.environ.get(PG_URL_ENV)
    if external:
        return external
    server: PgServer = request.getfixturevalue("pg_server")
    return server.url()


@pytest.fixture
def postgresql_url(pg_admin_url: str) -> Iterator[str]:
    """A new empty database `t_<uuid8>` on the test server, dropped (FORCE) after the test."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    url = create_pg_database(pg_admin_url, name)
    try:
        yield url
    finally:
        drop_database(pg_admin_url, name)


# -- SQLite --------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A new SQLite database file in the test's tmp_path (created on first connect)."""
    return f"sqlite:///{tmp_path}/t.db"


# -- both ----------------------------------------------------------------------------------------


@pytest.fixture(params=DIALECTS, ids=DIALECTS)
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh empty database; the test runs once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgresql_url"
    url: str = request.getfixturevalue(fixture)
    return url
