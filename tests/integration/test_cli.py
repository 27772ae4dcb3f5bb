"""The `turnstream` command as a user runs it: a real process, real ports, real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dbutil import rows

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kubiya_batch.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def turnstream(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@contextlib.contextmanager
def serving(args: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen[str]]:
    """`turnstream serve ARGS` as a process, its log in `log`; killed if still running."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "turnstream.cli", "serve", *args], stderr=out, text=True, **kw
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def wait_healthy(http_port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1) as r:
                if json.load(r)["status"] == "serving":
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server not healthy within 30 s")


def test_help_describes_every_command() -> None:
    out = turnstream("--help")
    assert out.returncode == 0
    for command in ("serve", "migrate", "send"):
        assert command in out.stdout
    serve = turnstream("serve", "--help").stdout
    for flag in ("--grpc-addr", "--http-addr", "--database-url", "TURNSTREAM_DATABASE_URL"):
        assert flag in serve


def test_migrate_creates_the_schema_and_is_idempotent(database_url: str) -> None:
    for _ in range(2):
        out = turnstream("migrate", "--database-url", database_url)
        assert out.returncode == 0, out.stderr
        assert "up to date" in out.stdout
    assert rows(database_url, "turns") == []


def test_bad_database_url_is_a_clear_error() -> None:
    out = turnstream("migrate", "--database-url", "mysql://x/y")
    assert out.returncode == 2
    assert "unsupported database URL scheme" in out.stderr


def test_serve_defaults_to_sqlite_in_cwd_then_send_and_sigterm(tmp_path: Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "TURNSTREAM_GRPC_ADDR": f"127.0.0.1:{grpc_port}"}
    env.pop("TURNSTREAM_DATABASE_URL", None)
    log = tmp_path / "server.log"
    with serving(["--http-addr", f"127.0.0.1:{http_port}"], log, cwd=tmp_path, env=env) as proc:
        wait_healthy(http_port, proc)
        assert (tmp_path / "turnstream.db").exists()
        sent = turnstream("send", "--target", f"127.0.0.1:{grpc_port}", str(EXAMPLE))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        url = f"sqlite:///{tmp_path}/turnstream.db"
        assert len(rows(url, "turns")) == 3
        again = turnstream("send", "--target", f"127.0.0.1:{grpc_port}", str(EXAMPLE))
        assert again.returncode == 0
        assert "unchanged" in again.stdout
        assert len(rows(url, "turns")) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert "stopped" in log.read_text()


def test_send_reports_rejections_and_exits_nonzero(tmp_path: Path, sqlite_url: str) -> None:
    grpc_port, http_port = free_port(), free_port()
    bad = tmp_path / "bad.json"
    turn = {"execution_id": "exec-bad", "model": "claude-sonnet-4-5"}
    bad.write_text(
        json.dumps(
            {
                "execution_id": "exec-bad",
                "turns": [
                    {**turn, "turn_number": 1, "started_at": "2026-11-01T10:00:00Z"},
                    {
                        **turn,
                        "turn_number": 2,
                        "started_at": "2026-11-01T10:00:00Z",
                        "completed_at": "2026-11-01T09:00:00Z",
                    },
                ],
            }
        )
    )
    args = ["--grpc-addr", f"127.0.0.1:{grpc_port}", "--http-addr", f"127.0.0.1:{http_port}"]
    with serving([*args, "--database-url", sqlite_url], tmp_path / "server.log") as proc:
        wait_healthy(http_port, proc)
        out = turnstream("send", "--target", f"127.0.0.1:{grpc_port}", str(bad))
        assert out.returncode == 1
        assert "turns[1].completed_at" in out.stdout
        assert len(rows(sqlite_url, "turns")) == 1
        assert len(rows(sqlite_url, "rejected_records")) == 1


@pytest.mark.parametrize("addr", ["nonsense", "127.0.0.1:notaport"])
def test_bad_listen_address_is_a_clear_error(addr: str, tmp_path: Path) -> None:
    out = turnstream("serve", "--grpc-addr", addr, "--database-url", f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 2
    assert "HOST:PORT" in out.stderr


def test_workers_share_the_ports_and_all_stop_on_sigterm(
    tmp_path: Path, postgresql_url: str
) -> None:
    grpc_port, http_port = free_port(), free_port()
    args = ["--grpc-addr", f"127.0.0.1:{grpc_port}", "--http-addr", f"127.0.0.1:{http_port}"]
    log = tmp_path / "server.log"
    with serving([*args, "--database-url", postgresql_url, "--workers", "3"], log) as proc:
        wait_healthy(http_port, proc)
        deadline = time.monotonic() + 30
        while "started 2 more workers" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        pids = [
            int(p) for p in log.read_text().split("more workers: [")[1].split("]")[0].split(",")
        ]
        # Each worker serves: a batch sent on fresh connections lands whichever process answers.
        for _ in range(3):
            sent = turnstream("send", "--target", f"127.0.0.1:{grpc_port}", str(EXAMPLE))
            assert sent.returncode == 0, sent.stdout + sent.stderr
        assert len(rows(postgresql_url, "turns")) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_need_fixed_ports(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    out = turnstream("serve", "--grpc-addr", "127.0.0.1:0", "--workers", "2", "--database-url", url)
    assert out.returncode == 2
    assert "--workers needs fixed ports" in out.stderr
