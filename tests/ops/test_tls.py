"""TLS and mTLS on both ports of a real server, with certificates the test generates: a TLS
client gets through on gRPC and HTTP; with a client CA, a client without a certificate (or with
one another CA signed) is refused on both, and one the CA signed gets through — the SDK too."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import grpc
import httpx
import pytest

from tests.dbutil import rows
from tests.integration.test_write import turn
from tests.ops.certs import Authority, Pair
from tests.serving import running_server
from turnstream.client import StreamWriter, tls_credentials
from turnstream.server import Server
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc


async def grpc_write(
    server: Server, ca: Path, client: Pair | None = None
) -> ingest_pb2.WriteResponse:
    credentials = tls_credentials(
        ca,
        client_certificate=client.cert if client else None,
        client_key=client.key if client else None,
    )
    async with grpc.aio.secure_channel(f"localhost:{server.grpc_port}", credentials) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        return await stub.Write(ingest_pb2.WriteRequest(turns=[turn(1)]), timeout=10)


async def https_get(server: Server, ca: Path, client: Pair | None = None) -> httpx.Response:
    context = ssl.create_default_context(cafile=ca)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    async with httpx.AsyncClient(verify=context) as c:
        return await c.get(f"https://localhost:{server.http_port}/readyz", timeout=10)


async def test_tls_on_both_ports(sqlite_url: str, tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    cert = ca.issue("server", server=True)
    async with running_server(sqlite_url, tls_cert=cert.cert, tls_key=cert.key) as server:
        assert (await grpc_write(server, ca.pem)).counts.total.created == 1
        assert (await https_get(server, ca.pem)).status_code == 200
        # Plain text is not answered on either port.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ingest_pb2_grpc.IngestServiceStub(channel).Write(
                    ingest_pb2.WriteRequest(), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        async with httpx.AsyncClient() as c:
            with pytest.raises(httpx.TransportError):
                await c.get(f"http://127.0.0.1:{server.http_port}/readyz", timeout=5)


async def test_mtls_refuses_clients_without_a_certificate_of_the_ca(
    sqlite_url: str, tmp_path: Path
) -> None:
    ca = Authority(tmp_path)
    stranger_ca = Authority(tmp_path, "another CA")
    cert = ca.issue("server", server=True)
    worker, stranger = ca.issue("worker", server=False), stranger_ca.issue("stranger", server=False)
    async with running_server(
        sqlite_url, tls_cert=cert.cert, tls_key=cert.key, tls_client_ca=ca.pem
    ) as server:
        for client in (None, stranger):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await grpc_write(server, ca.pem, client)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(httpx.TransportError):
                await https_get(server, ca.pem, client)
        assert (await grpc_write(server, ca.pem, worker)).counts.total.created == 1
        assert (await https_get(server, ca.pem, worker)).status_code == 200
        # The SDK takes the same files.
        credentials = tls_credentials(ca.pem, client_certificate=worker.cert, client_key=worker.key)
        target = f"localhost:{server.grpc_port}"
        async with StreamWriter(target, "tls-stream", credentials=credentials) as w:
            started = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
            await w.turn(execution_id="tls", turn_number=1, model="gpt-4o", started_at=started)
            await w.flush()
    assert {r["execution_id"] for r in rows(sqlite_url, "turns")} == {"exec-1", "tls"}
