"""`turnstream demo` fills the configured database through the ingest path (both dialects):
executions, turns, tool calls, derived-only executions and a few dead letters."""

from __future__ import annotations

import sqlalchemy as sa

from turnstream import cli
from turnstream.store.engine import create_engine


def test_demo_fills_the_database(database_url: str) -> None:
    argv = ["demo", "--database-url", database_url, "--executions", "120", "--days", "3"]
    assert cli.main(argv) == 0
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            count = lambda table: conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar()  # noqa: E731
            assert count("executions") == 120
            assert count("turns") > 120
            assert count("tool_calls") > 0
            assert count("rejected_records") == 2  # one invalid turn per 50 executions
            derived = "SELECT COUNT(*) FROM executions WHERE workflow_name IS NULL"
            assert conn.execute(sa.text(derived)).scalar() > 0
    finally:
        engine.dispose()
    assert cli.main([*argv[:3], "--executions", "0"]) == 2  # refused, named
