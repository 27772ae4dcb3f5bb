"""Hostile HTTP clients against the real listener, over raw sockets: a slowloris (half a request
line, then nothing), a body that never ends, an idle connection, and more connections than the
cap. Each is closed, or refused with 503, in bounded time; a well-behaved client still gets its
answer. (uvicorn alone holds the first three forever.)"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from tests.serving import running_server
from turnstream.server import Server

TIMEOUT = 1.0


@asynccontextmanager
async def limited_server(tmp_path: Path, connections: int = 100) -> AsyncIterator[Server]:
    url = f"sqlite:///{tmp_path}/t.db"
    async with running_server(
        url, http_timeout=TIMEOUT, http_max_connections=connections
    ) as server:
        yield server


@contextmanager
def connection(server: Server) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers, then Content-Length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


async def closed_after(sock: socket.socket) -> tuple[float, bytes]:
    started = time.monotonic()
    data = await asyncio.to_thread(read_until_closed, sock)
    return time.monotonic() - started, data


async def test_a_request_line_that_never_ends_is_closed(tmp_path: Path) -> None:
    async with limited_server(tmp_path) as server:
        with connection(server) as sock:
            sock.sendall(b"GET /hea")
            elapsed, data = await closed_after(sock)
        assert elapsed <= TIMEOUT + 0.5
        assert data == b""


async def test_a_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    async with limited_server(tmp_path) as server:
        with connection(server) as sock:
            elapsed, _ = await closed_after(sock)
        assert elapsed <= TIMEOUT + 0.5


async def test_headers_dribbled_byte_by_byte_do_not_extend_the_deadline(tmp_path: Path) -> None:
    async with limited_server(tmp_path) as server:
        with connection(server) as sock:
            started = time.monotonic()
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
            for byte in request:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break  # closed by the server, as it should be
                await asyncio.sleep(0.05)
                if time.monotonic() - started > TIMEOUT + 2:
                    break
            _, data = await closed_after(sock)
            assert time.monotonic() - started <= TIMEOUT + 1.0
            assert data == b""


async def test_a_body_that_never_ends_is_closed(tmp_path: Path) -> None:
    async with limited_server(tmp_path) as server:
        with connection(server) as sock:
            sock.sendall(
                b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
            )
            elapsed, _ = await closed_after(sock)
        assert elapsed <= TIMEOUT + 0.5


async def test_a_keep_alive_connection_answers_then_is_closed_when_idle(tmp_path: Path) -> None:
    async with limited_server(tmp_path) as server:
        with connection(server) as sock:
            for _ in range(2):  # two requests on one connection, each well within the deadline
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                # A thread: the server runs in this event loop.
                response = await asyncio.to_thread(read_response, sock)
                assert response.startswith(b"HTTP/1.1 200 ")
                await asyncio.sleep(TIMEOUT / 2)
            elapsed, _ = await closed_after(sock)
        assert elapsed <= TIMEOUT + 0.5


async def test_connections_beyond_the_cap_are_answered_503_and_closed(tmp_path: Path) -> None:
    cap = 3
    async with limited_server(tmp_path, connections=cap) as server:
        held = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(cap)]
        try:
            await asyncio.sleep(0.2)  # accepted by the server
            with connection(server) as extra:
                _, data = await closed_after(extra)
            assert data.startswith(b"HTTP/1.1 503 ")
            assert b"too many open connections" in data
            held.pop().close()
            await asyncio.sleep(0.2)
            with connection(server) as again:
                again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                _, data = await closed_after(again)
            assert data.startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_200_when_all_is_well(tmp_path: Path, path: str) -> None:
    async with limited_server(tmp_path) as server:
        with connection(server) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            _, data = await closed_after(sock)
        assert data.startswith(b"HTTP/1.1 200 ")


def test_the_limits_are_flags_of_serve_and_variables() -> None:
    from turnstream.cli import _parser
    from turnstream.config import Settings

    args = _parser().parse_args(
        ["serve", "--db-timeout", "2.5", "--http-timeout", "3", "--http-max-connections", "7"]
    )
    options = {k: v for k, v in vars(args).items() if k != "command"}
    settings = Settings.from_env(env={"TURNSTREAM_HTTP_TIMEOUT": "9"}, **options)
    assert (settings.db_timeout, settings.http_timeout, settings.http_max_connections) == (
        2.5,
        3.0,
        7,
    )
    from_env = Settings.from_env(env={"TURNSTREAM_DB_TIMEOUT": "1.5"})
    assert from_env.db_timeout == 1.5
