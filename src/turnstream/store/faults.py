"""Storage: what a driver error means, decided once for both dialects. Either the database cannot
take writes now (StoreUnavailable: retry later, nothing was stored), or one statement was refused
because of the values it carried (a poison row: the writer isolates it and dead-letters it), or
our own bug. Callers read one sentence, never a driver's class name."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import psycopg

from turnstream.core import deadletter
from turnstream.core.ports import StoreUnavailable, StreamConflict

__all__ = ["StoreGone", "StoreUnavailable", "StreamConflict"]


class StoreGone(StoreUnavailable):
    """The database the server opened is no longer there (its SQLite file was deleted or
    replaced). Permanent until a restart: retrying cannot help, so health stays NOT_SERVING."""


class RowRefused(Exception):
    """Row `index` of the rows a statement was given is the one refused (the driver could not
    encode it, or PostgreSQL's COPY named its line): no need to bisect to find it."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


UNAVAILABLE = "the database is unavailable; nothing of this request was stored; retry"

# SQLSTATE classes of PostgreSQL errors that say "the server, the connection or the load", not
# "these values": connection exception, insufficient resources, object not in prerequisite state
# (lock_timeout), operator intervention (statement_timeout, admin shutdown), system error,
# transaction rollback (serialization failure, deadlock). Retrying later can succeed.
_PG_UNAVAILABLE_CLASSES = ("08", "40", "53", "55", "57", "58")


def is_unavailable(exc: BaseException) -> bool:
    """Connection-level trouble (server down or hung, disk full or locked) as opposed to a
    statement the database refused for the values it carried."""
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        if not state:  # raised by libpq itself (connection lost mid-statement): no SQLSTATE
            return isinstance(exc, psycopg.OperationalError)
        return state[:2] in _PG_UNAVAILABLE_CLASSES
    # sqlite3 says OperationalError for locked, read-only, full and I/O errors; what a value
    # breaks is IntegrityError, DataError, or a Python error while binding.
    return isinstance(exc, sqlite3.OperationalError)


def is_value_error(exc: BaseException) -> bool:
    """An error a row's values can cause, so bisecting the rows can find the culprit. Anything
    else (a KeyError in our code, a syntax error in our SQL) is a bug and fails loudly instead
    of dead-lettering every record it touches."""
    if isinstance(exc, RowRefused):
        return is_value_error(exc.cause)
    if is_unavailable(exc):
        return False
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        # data exception, integrity constraint, program limit (index row or jsonb too large),
        # or a value the driver could not send at all (no SQLSTATE).
        return not state or state[:2] in ("22", "23", "54")
    if isinstance(exc, sqlite3.Error):
        return isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError)
    # Binding: an int beyond 64 bits, a string that is not encodable, a type no adapter takes.
    return isinstance(exc, OverflowError | ValueError | TypeError)


def is_broken(conn: Any) -> bool:
    """The connection itself is lost: only then does the writer reconnect."""
    if isinstance(conn, psycopg.Connection):
        return bool(conn.broken or conn.closed)
    return False


_CLASS_NAME = re.compile(r"\b(?:[a-z_]+\.)*[A-Z][A-Za-z]*(?:Error|Exception|Warning)\b:?\s*")


def refusal(exc: BaseException) -> str:
    """One sentence for the caller whose record the database refused, with the database's own
    reason (e.g. "value too long for type character varying(256)"), never a class name."""
    if isinstance(exc, RowRefused):
        return refusal(exc.cause)
    reason = ""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        reason = exc.diag.message_primary
    elif str(exc):
        reason = str(exc).strip().splitlines()[0]
    reason = _CLASS_NAME.sub("", deadletter.clean_text(reason)).strip()[:300]
    if not reason:
        return "the database refused this record"
    return f"the database refused this record: {reason}"
