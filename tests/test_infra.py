"""The test infrastructure itself: each test gets a real, reachable, empty database of its own, and
a PgServer survives a crash with its committed data (what the fault-injection tests rely on)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.pgserver import PgServer, admin_conninfo

# Filled as the tests of this module run, to check that no two tests share a database.
_seen_urls: set[str] = set()
_seen_pg_databases: set[str] = set()


@contextlib.contextmanager
def engine_for(url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    with engine_for(database_url) as engine:
        yield engine


def test_database_is_reachable(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1")).scalar_one() == 1
        if engine.dialect.name == "postgresql":
            version = int(conn.execute(sa.text("show server_version_num")).scalar_one())
            assert version >= 130000, "DROP DATABASE ... WITH (FORCE) needs PostgreSQL 13"
            assert conn.execute(sa.text("show fsync")).scalar_one() == "on"


@pytest.mark.parametrize("attempt", [1, 2])
def test_each_test_gets_a_distinct_empty_database(
    database_url: str, engine: sa.Engine, attempt: int
) -> None:
    assert database_url not in _seen_urls
    _seen_urls.add(database_url)
    assert sa.inspect(engine).get_table_names() == []
    # Leave something behind: the next test must not see it.
    with engine.begin() as conn:
        conn.execute(sa.text("create table leftover (id integer primary key)"))
    if engine.dialect.name == "postgresql":
        assert engine.url.database is not None
        assert engine.url.database.startswith("t_")
        _seen_pg_databases.add(engine.url.database)


def test_postgresql_databases_of_earlier_tests_are_dropped(
    postgresql_url: str, pg_admin_url: str
) -> None:
    with psycopg.connect(admin_conninfo(pg_admin_url)) as conn:
        names = {row[0] for row in conn.execute("select datname from pg_database")}
    assert sa.make_url(postgresql_url).database in names
    assert not (_seen_pg_databases & names)


def test_sqlite_database_is_a_file_in_tmp_path(sqlite_url: str, tmp_path: Path) -> None:
    database = sa.make_url(sqlite_url).database
    assert database is not None
    assert Path(database).parent == tmp_path
    with engine_for(sqlite_url) as engine, engine.begin() as conn:
        conn.execute(sa.text("create table t (id integer)"))
    assert Path(database).is_file()


@pytest.mark.postgresql
def test_pgserver_keeps_committed_rows_across_a_kill() -> None:
    """A private server (never the session's): create, commit, SIGKILL, restart, read back."""
    with PgServer() as pg:
        url = pg.create_database("crash")
        with engine_for(url) as engine, engine.begin() as conn:
            conn.execute(sa.text("create table t (id integer)"))
            conn.execute(sa.text("insert into t values (1), (2)"))
        first_port = pg.port
        pg.kill()
        assert not pg.is_running()
        pg.start()
        assert pg.port == first_port
        with engine_for(url) as engine, engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from t")).scalar_one() == 2
        pg.stop()
        assert not pg.is_running()
        base_dir = pg.base_dir
    assert not base_dir.exists()
