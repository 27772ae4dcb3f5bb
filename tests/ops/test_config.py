"""`turnstream config` prints what `serve` would run with (flags over TURNSTREAM_* variables,
the database password masked), and every invalid setting is refused at start, all at once, each
problem naming its setting and rule — by `config` and by `serve` alike."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_cli import ROOT
from turnstream.cli import _parser
from turnstream.config import FLAGS, Settings


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TURNSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "turnstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean, **(env or {})},
    )


def test_config_prints_every_setting_flags_over_env_and_masks_the_password(
    tmp_path: Path,
) -> None:
    out = run(
        "config",
        "--http-addr",
        "0.0.0.0:9000",
        "--no-reflection",
        env={
            "TURNSTREAM_HTTP_ADDR": "127.0.0.1:1",
            "TURNSTREAM_DATABASE_URL": "postgresql+psycopg://ingest:s3cr3t-pw@db:5432/ts",
            "TURNSTREAM_DB_TIMEOUT": "2.5",
        },
    )
    assert out.returncode == 0, out.stderr
    printed = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert set(printed) == {f"TURNSTREAM_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert printed["TURNSTREAM_HTTP_ADDR"] == "0.0.0.0:9000"  # the flag wins
    assert printed["TURNSTREAM_DB_TIMEOUT"] == "2.5"
    assert printed["TURNSTREAM_REFLECTION"] == "false"
    assert printed["TURNSTREAM_DATABASE_URL"] == "postgresql+psycopg://ingest:****@db:5432/ts"
    assert "s3cr3t-pw" not in out.stdout + out.stderr


BAD = {
    "TURNSTREAM_GRPC_ADDR": "localhost",
    "TURNSTREAM_HTTP_ADDR": "127.0.0.1:70000",
    "TURNSTREAM_DB_TIMEOUT": "0",
    "TURNSTREAM_HEARTBEAT_INTERVAL": "300",
    "TURNSTREAM_MAX_FLUSH_ROWS": "-5",
    "TURNSTREAM_WORKERS": "0",
    "TURNSTREAM_LOG_LEVEL": "LOUD",
    "TURNSTREAM_TLS_KEY": "/nonexistent/key.pem",
    "TURNSTREAM_MAX_BATCH_BYTES": str(64 * 1024 * 1024),
}


@pytest.mark.parametrize("command", ["config", "serve"])
def test_every_invalid_setting_is_refused_at_once(command: str) -> None:
    out = run(command, env=BAD)
    assert out.returncode == 2
    assert out.stdout == ""
    err = out.stderr
    assert "invalid setting(s), nothing was started" in err
    expected = [
        "grpc_addr (--grpc-addr / TURNSTREAM_GRPC_ADDR): address 'localhost' must be HOST:PORT",
        "http_addr (--http-addr / TURNSTREAM_HTTP_ADDR): port 70000 is not a TCP port",
        "db_timeout (--db-timeout / TURNSTREAM_DB_TIMEOUT): must be a number of seconds > 0",
        "heartbeat_interval (TURNSTREAM_HEARTBEAT_INTERVAL): must be below 60 s",
        "max_flush_rows (TURNSTREAM_MAX_FLUSH_ROWS): must be at least 1",
        "workers (--workers / TURNSTREAM_WORKERS): must be at least 1, got 0",
        "log_level (--log-level / TURNSTREAM_LOG_LEVEL): must be one of DEBUG, INFO",
        "tls_key (--tls-key / TURNSTREAM_TLS_KEY): must be a readable file",
        "tls_key (--tls-key / TURNSTREAM_TLS_KEY): is set without tls_cert",
        "max_batch_bytes (TURNSTREAM_MAX_BATCH_BYTES): must not exceed max_message_bytes",
    ]
    for problem in expected:
        assert problem in err, problem
    assert err.count("\n  - ") == len(expected)


def test_validate_accepts_the_defaults_and_checks_tls_files(tmp_path: Path) -> None:
    assert Settings().validate() == []
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    assert Settings(tls_cert=cert, tls_key=key, tls_client_ca=cert).validate() == []
    (only_ca,) = Settings(tls_client_ca=cert).validate()
    assert only_ca.startswith("tls_client_ca (--tls-client-ca / TURNSTREAM_TLS_CLIENT_CA)")
    (no_key,) = Settings(tls_cert=cert).validate()
    assert "tls_cert" in no_key and "without tls_key" in no_key
    (fixed,) = Settings(workers=2, grpc_addr="127.0.0.1:0").validate()
    assert "--workers needs fixed ports" in fixed


def test_an_unparsable_variable_is_named() -> None:
    out = run("config", env={"TURNSTREAM_WORKERS": "two"})
    assert out.returncode == 2
    assert "TURNSTREAM_WORKERS='two' is not a valid int" in out.stderr


def test_the_flags_named_in_messages_are_the_flags_serve_takes() -> None:
    parser = _parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    taken = {a.dest: a.option_strings[0] for a in serve._actions if a.option_strings}
    taken.pop("help")
    assert taken == FLAGS
