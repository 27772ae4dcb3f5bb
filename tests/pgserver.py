"""Test support: a real, throwaway PostgreSQL server that we start, crash and delete ourselves.

Used by the test fixtures (one server per pytest session), by fault-injection tests (which need a
server of their own to kill) and by benchmarks. Nothing here touches a system cluster: the data
directory, the unix socket and the log live in one temporary directory on a free TCP port.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found in /usr/lib/postgresql/*/bin or on "
    "PATH. Run `make test` (it runs scripts/ensure-postgres.sh, which installs them with apt-get "
    "when run as root), or `sudo scripts/ensure-postgres.sh`, or point TURNSTREAM_TEST_PG_URL at "
    "a PostgreSQL >= 13 server you own."
)

# Settings for tests. fsync stays on: the suite tests durability (ack means committed), and a
# kill -9 test must see exactly what a real crash would leave behind.
TEST_SETTINGS = {
    "fsync": "on",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "listen_addresses": "'127.0.0.1'",
    # Quiet, readable logs in <base>/postgres.log when a test needs to look.
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
}


class PgServerError(RuntimeError):
    """Raised when the server cannot be found, initialised or started; the message says why."""


def find_bin_dir() -> Path:
    """The highest installed PostgreSQL's bin directory (Debian layout first, then PATH)."""
    candidates = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = Path(initdb).parent.parent.name
        with contextlib.suppress(ValueError):
            candidates.append((float(version), Path(initdb).parent))
    if candidates:
        return max(candidates)[1]
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    raise PgServerError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_conninfo(url: str) -> str:
    """A libpq connection string for a SQLAlchemy or libpq URL (drops the `+driver` suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE `name` on the server of `admin_url`; returns the new database's URL."""
    with psycopg.connect(admin_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return (
        make_url(admin_url)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE `name`, ending its sessions first (a test may leave connections open)."""
    with psycopg.connect(admin_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie counts as gone: the postmaster is not our child, and in a
    container whose init does not reap, it would otherwise look alive forever."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (the postmaster's backends and auxiliary processes)."""
    out = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


class PgServer:
    """One PostgreSQL server in its own temporary directory.

    >>> with PgServer() as pg:           # starts; stops and deletes everything on exit
    ...     url = pg.create_database("t1")

    As root, every PostgreSQL command runs as the `postgres` user (initdb and pg_ctl refuse root),
    so the directory is chowned to it. The port is fixed for the object's lifetime, so a restart
    after `kill()` or `stop()` comes back on the same URL.
    """

    def __init__(self, base_dir: Path | None = None, port: int | None = None) -> None:
        self.bin_dir = find_bin_dir()
        self._owns_base_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="turnstream-pg-")) if base_dir is None else Path(base_dir)
        )
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_file = self.base_dir / "postgres.log"
        self._port_given = port is not None
        self.port = port if port is not None else free_port()
        self._as_root = os.geteuid() == 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """initdb (first time only), then start and wait until the server accepts connections."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._give_to_postgres(self.base_dir, self.socket_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        attempts = 1 if self._port_given else 3
        for attempt in range(attempts):
            self._write_settings()
            result = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file))
            if result.returncode == 0:
                return
            # A free port can be taken between free_port() and the bind: pick another one.
            if attempt + 1 < attempts and "could not bind" in self._log_tail():
                self.port = free_port()
                continue
            raise PgServerError(
                f"pg_ctl start failed (exit {result.returncode}): {result.stdout}{result.stderr}\n"
                f"--- {self.log_file} ---\n{self._log_tail()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: `fast` (roll back sessions, clean shutdown) or `immediate` (no checkpoint,
        recovery on next start). No-op when not running."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        if not self.is_running():
            return
        result = self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)
        if result.returncode != 0 and self.is_running():
            raise PgServerError(f"pg_ctl stop failed: {result.stdout}{result.stderr}")

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends, as a machine crash would, and wait until all
        are gone so that `start()` can run crash recovery straight away. Clients see their
        connections drop mid-statement."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        victims = [pid, *_children(pid)]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_pid_alive(p) for p in victims):
            if time.monotonic() > deadline:
                raise PgServerError(f"postgres processes {victims} survived SIGKILL for 30 s")
            time.sleep(0.02)
        # A killed postmaster that nobody reaps stays a zombie, and a new postmaster would read
        # its lock files (data dir and socket) as "another server is running". Every process is
        # gone, so they are stale, as after a power cut.
        stale = [self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*")]
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def cleanup(self) -> None:
        """Stop the server (immediately: its data is thrown away) and delete the directory if this
        object created it."""
        try:
            self.stop("immediate")
        except PgServerError:
            self.kill()
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- state and URLs --------------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, from postmaster.pid, or None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; returns its SQLAlchemy URL."""
        return create_database(self.url(), name)

    def drop_database(self, name: str) -> None:
        drop_database(self.url(), name)

    # -- internals -------------------------------------------------------------------------------

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # cwd: the postgres user may not be able to enter the caller's directory (e.g. /root).
        return subprocess.run(
            cmd,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args)

    def _initdb(self) -> None:
        # --no-sync: initdb's own fsyncs only protect the template files; the server runs with
        # fsync=on, which is what the tests rely on.
        result = self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if result.returncode != 0:
            raise PgServerError(f"initdb failed: {result.stdout}{result.stderr}")
        # Our settings live in a file of their own, rewritten on every start (the port may change).
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'turnstream_test.conf'\n")

    def _write_settings(self) -> None:
        settings = {
            **TEST_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        path = self.data_dir / "turnstream_test.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._give_to_postgres(path)

    def _give_to_postgres(self, *paths: Path) -> None:
        if self._as_root:
            for path in paths:
                shutil.chown(path, "postgres")

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
