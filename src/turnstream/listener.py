"""Entrypoint: the HTTP listener (uvicorn, HTTP/1.1 through h11) with the limits a port open to
a network needs: a cap on open connections, and a deadline for reading every request.

What uvicorn (0.34 to 0.54) does and does not do, read from its source: `timeout_keep_alive`
closes a connection left idle *after a response*; `limit_concurrency` answers 503 to a request
once that many connections or tasks exist, but still accepts and holds the connection. Nothing
bounds the time a client may take to send its request line, headers or body: a connection that
sends half a request line and then nothing is held forever (slowloris), and enough of them
exhaust file descriptors. So, here:

- a connection beyond `max_connections` is answered 503 and closed as soon as it is accepted;
- every connection has `timeout` seconds from the moment it is idle (just opened, or its last
  response sent) until its next request has been read completely, headers and body, or it is
  closed. Time the application spends answering is not counted.

And `serve()` leaves signals alone: uvicorn's own handlers would take SIGTERM from the process
and wait, without limit, for open connections before passing it on. The server stops the
listener itself, within its shutdown deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Generator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

_REFUSED_BODY = b'{"status":"unavailable","reason":"too many open connections; retry"}'
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n\r\n" + _REFUSED_BODY
)


class _LimitedH11(H11Protocol):
    """uvicorn's h11 protocol plus the connection cap and the request-read deadline. Relies on
    three things of uvicorn's H11Protocol, stable since 0.2x: `connections` (the server's set
    of open connections), `cycle` (the request being served; `more_body` is False once its
    body was read) and `on_response_complete()`. tests/hostile/test_server_limits.py checks
    the behaviour, so an upgrade that changes them fails there."""

    max_connections = 1_000
    read_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch: asyncio.TimerHandle | None = None
        self._watched: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning(
                "refusing an HTTP connection: %d open, the limit is %d",
                len(self.connections) - 1,
                self.max_connections,
            )
            transport.write(REFUSED)
            transport.close()
            return
        self._arm(None)

    def on_response_complete(self) -> None:
        finished = self.cycle
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(finished)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, watched: Any) -> None:
        """Start the clock for the next request; `watched` is the cycle already answered (None
        on a fresh connection): if it is still the current one when the clock runs out, no new
        request arrived in full."""
        self._disarm()
        self._watched = watched
        self._watch = self.loop.call_later(self.read_timeout, self._expire)

    def _disarm(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _expire(self) -> None:
        self._watch = None
        cycle = self.cycle
        still_reading = cycle is self._watched or (cycle is not None and cycle.more_body)
        if still_reading and not self.transport.is_closing():
            log.info(
                "closing an HTTP connection that did not send a complete request in %gs",
                self.read_timeout,
            )
            self.transport.close()


def protocol(max_connections: int, timeout: float) -> type[H11Protocol]:
    """The h11 protocol class with these limits (uvicorn instantiates one per connection)."""
    return type(
        "LimitedH11",
        (_LimitedH11,),
        {"max_connections": max_connections, "read_timeout": timeout},
    )


class HttpServer(uvicorn.Server):
    """uvicorn's server without its signal handlers (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stop(self, grace: float) -> None:
        """Stop accepting; requests being answered may finish for about `grace` seconds (the
        caller drops what is left with `force_exit` at its deadline)."""
        self.config.timeout_graceful_shutdown = max(0, int(grace))
        self.should_exit = True


class _Config(uvicorn.Config):
    """uvicorn's config, given the SSLContext server.py builds (TLS, and CERT_REQUIRED with a
    client CA), so the HTTP port's TLS rules are written next to the gRPC port's."""

    tls: ssl.SSLContext | None = None

    def load(self) -> None:
        super().load()
        if self.tls is not None:
            self.ssl = self.tls


def server(
    app: Any, *, max_connections: int, timeout: float, tls: ssl.SSLContext | None = None
) -> HttpServer:
    config = _Config(
        app,
        http=protocol(max_connections, timeout),
        timeout_keep_alive=max(1, round(timeout)),
        log_level="warning",
        lifespan="off",
        access_log=False,
    )
    config.tls = tls
    return HttpServer(config)
