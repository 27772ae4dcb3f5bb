"""Storage: the writer's lane — one daemon thread and the one database connection it owns.

Every database call of the writer runs on its lane, one at a time, and only the lane's thread
ever touches its connection (drivers are not thread-safe). A call can hang in the driver (a
frozen server keeps ACKing TCP, so no socket timeout fires); the writer then abandons the lane:
the call is unblocked from outside with the one operation that is safe from another thread
(shutting the socket down on PostgreSQL, sqlite3's interrupt() on SQLite), the thread closes
its connection and ends, and the writer carries on with a fresh lane. The thread is a daemon so
that a call stuck for good can never keep the process from exiting.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from turnstream.store.dialects import Dialect
from turnstream.store.faults import (
    UNAVAILABLE,
    StoreGone,
    StoreUnavailable,
    is_broken,
    is_unavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_Job = tuple[Callable[["Lane"], Any], "concurrent.futures.Future[Any]"]


class SqliteFile:
    """The SQLite file the writer opened, by identity (device and inode), for the writer's whole
    life. A file deleted or replaced under a running server would otherwise go on taking commits
    into an unlinked inode, or a fresh empty file: acks for records that are gone."""

    def __init__(self, database: str) -> None:
        self.shown = database
        self.path = os.path.abspath(database)
        self.identity: tuple[int, int] | None = None

    @classmethod
    def for_url(cls, url: sa.URL) -> SqliteFile | None:
        database = url.database or ""
        if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
            return None
        if database.startswith("file:"):  # a URI filename: no plain path to compare
            return None
        return cls(database)

    def message(self) -> str:
        return (
            f"the SQLite database file {self.shown} was deleted or replaced while turnstream "
            "was running; nothing of this request was stored; restart turnstream"
        )

    def check(self) -> None:
        """Remember the file at the first call; afterwards raise StoreGone if the path no longer
        names it. One stat() per transaction: microseconds."""
        try:
            st = os.stat(self.path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if self.identity is None and current is not None:
            self.identity = current
        elif current != self.identity:
            raise StoreGone(self.message())


class Lane:
    """One thread, one connection. `submit` queues a call `fn(lane)`; `abandon` gives up on
    whatever runs now (from any thread)."""

    def __init__(
        self,
        engine: sa.Engine,
        dialect: Dialect,
        *,
        sqlite_file: SqliteFile | None,
        retry_after: float,
        name: str,
    ) -> None:
        self.engine = engine
        self.dialect = dialect
        self.sqlite_file = sqlite_file
        self.retry_after = retry_after
        self.conn: Any = None
        self._raw: Any = None
        self._fd: int | None = None
        # When the running call last made progress (monotonic): the writer's deadline counts
        # from here, so a long flush of many statements is not mistaken for a hung one.
        self.progress = time.monotonic()
        self.abandoned = False
        self._busy = False
        self._lock = threading.Lock()  # guards conn/_fd/_busy against abandon()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    # -- from the event loop ----------------------------------------------------------------

    def submit(self, fn: Callable[[Lane], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def abandon(self) -> None:
        """Stop waiting for this lane: unblock its running call (which then fails), close its
        connection and end its thread. Queued calls fail with StoreUnavailable."""
        with self._lock:
            self.abandoned = True
            if self._busy and self.conn is not None:
                self._interrupt()
        self._jobs.put(None)

    def close(self) -> None:
        """End the thread after the calls already queued; the connection is closed by it."""
        self._jobs.put(None)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _interrupt(self) -> None:
        # Called with the lock held, while the lane's thread is inside a call on self.conn: the
        # socket cannot have been closed (only the lane thread closes it, and it takes the lock
        # first), so the fd is still the connection's own.
        try:
            if self._fd is not None:
                with socket.socket(fileno=os.dup(self._fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            elif hasattr(self.conn, "interrupt"):
                self.conn.interrupt()  # sqlite3: documented as callable from another thread
        except OSError:
            log.debug("interrupting an abandoned database call failed", exc_info=True)

    # -- on the lane's thread ---------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            if self.abandoned:
                future.set_exception(StoreUnavailable(UNAVAILABLE, self.retry_after))
                continue
            with self._lock:
                self._busy = True
            self.progress = time.monotonic()
            try:
                result = fn(self)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                with self._lock:
                    self._busy = False
            if self.abandoned:
                break
        self.disconnect()
        while True:  # calls queued behind the end: answered, never left waiting
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and job[1].set_running_or_notify_cancel():
                job[1].set_exception(StoreUnavailable(UNAVAILABLE, self.retry_after))

    def touch(self) -> None:
        """The running call made progress (a statement finished): restart the deadline."""
        self.progress = time.monotonic()

    def connection(self) -> Any:
        if self.conn is None:
            raw = self.engine.raw_connection()
            conn: Any = raw.driver_connection
            fd = conn.pgconn.socket if self.dialect.name == "postgresql" else None
            # Registered before the session is prepared, so that abandon() can interrupt a
            # server that stops answering right after the connection was made.
            with self._lock:
                self._raw, self.conn, self._fd = raw, conn, fd
            try:
                self.dialect.prepare(conn)
                if self.sqlite_file is not None:
                    self.sqlite_file.check()
            except BaseException:
                self.disconnect()
                raise
            self.touch()
        return self.conn

    def disconnect(self) -> None:
        with self._lock:
            raw, self._raw, self.conn, self._fd = self._raw, None, None, None
        if raw is not None:
            try:
                raw.invalidate()
            except Exception:
                log.debug("closing a database connection failed", exc_info=True)

    def transaction(self, fn: Callable[[Any], T]) -> T:
        """Run fn(conn) in one transaction and commit it. Database trouble -> StoreUnavailable
        (after a rollback; the connection is dropped only if it is broken). Any other error is
        re-raised after the rollback, with the connection kept: it still works."""
        conn = self._connect_or_unavailable()
        try:
            self.dialect.begin(conn)
            result = fn(conn)
            # Last moment to notice a replaced SQLite file: after this the caller hears "stored".
            if self.sqlite_file is not None:
                self.sqlite_file.check()
            self.touch()
            self.dialect.commit(conn)
        except BaseException as exc:
            _rollback(conn)
            translated = self._translate(exc, conn)
            if translated is exc:
                raise
            raise translated from exc
        self.touch()
        return result

    def probe(self) -> None:
        """Does the database answer now? (The health probe: connect if needed, one SELECT.)"""
        conn = self._connect_or_unavailable()
        try:
            self.dialect.ping(conn)
            if self.sqlite_file is not None:
                self.sqlite_file.check()
        except BaseException as exc:
            translated = self._translate(exc, conn)
            if translated is exc:
                raise
            raise translated from exc

    def _connect_or_unavailable(self) -> Any:
        try:
            return self.connection()
        except StoreUnavailable:
            raise
        except Exception as exc:
            log.warning("cannot connect to the database: %s", exc)
            raise StoreUnavailable(UNAVAILABLE, self.retry_after) from exc

    def _translate(self, exc: BaseException, conn: Any) -> BaseException:
        if isinstance(exc, StoreUnavailable):
            return exc
        if is_unavailable(exc) or is_broken(conn) or self.abandoned:
            log.warning("database unavailable: %s", exc)
            self.disconnect()
            return StoreUnavailable(UNAVAILABLE, self.retry_after)
        return exc


def _rollback(conn: Any) -> None:
    try:
        conn.rollback()  # psycopg and sqlite3 alike (sqlite3 sees our BEGIN IMMEDIATE too)
        if getattr(conn, "in_transaction", False):  # sqlite3 only; belt and braces
            conn.execute("ROLLBACK")
    except Exception:
        log.debug("rollback failed", exc_info=True)
