"""Test support: the turnstream server as a real subprocess (`python -m turnstream.cli serve`),
on fixed ports so it can be SIGKILLed and restarted where its clients expect it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tests.pgserver import free_port


class ServerProcessError(RuntimeError):
    """The server did not start (or died); the message carries the end of its log."""


class ServerProcess:
    """One `turnstream serve` process; ports are fixed for the object's life.

    >>> with ServerProcess("sqlite:///t.db", log_path=tmp / "server.log") as server:
    ...     target = server.target      # "127.0.0.1:PORT"
    ...     server.kill()               # SIGKILL, as a crash would
    ...     server.start()              # same ports, same database
    """

    def __init__(
        self,
        database_url: str,
        *,
        log_path: Path,
        grpc_port: int | None = None,
        http_port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.database_url = database_url
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until /healthz answers 200 (migrations applied, both ports bound)."""
        if self.running:
            raise ServerProcessError("the server is already running")
        cmd = [
            sys.executable,
            "-m",
            "turnstream.cli",
            "serve",
            "--grpc-addr",
            self.target,
            "--http-addr",
            f"127.0.0.1:{self.http_port}",
            "--database-url",
            self.database_url,
            "--log-level",
            "WARNING",
            *self.extra_args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts + 1}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.process.poll() is not None:
                raise ServerProcessError(
                    f"the server exited with {self.process.returncode} at start:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise ServerProcessError(
                    f"the server was not healthy after {timeout:g} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no commit of anything in flight, sockets reset."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful drain); SIGKILL if it is still up after `timeout`."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=1.0) as response,
        ):
            return bool(response.status == 200)
        return False

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate(timeout=10.0)
