"""API keys on every door, against a real server and database (both dialects): every gRPC RPC and
every HTTP route refuses a missing, malformed, unknown, revoked or expired key (401 /
UNAUTHENTICATED) and a key without the scope (403 / PERMISSION_DENIED); a revoked key ends an
open Append stream; anonymous calls only on loopback while no key exists; `turnstream keys`."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from starlette.routing import Route

from tests.dbutil import rows
from tests.serving import running_server
from turnstream import errors
from turnstream.cli import main
from turnstream.client import Client, StreamWriter
from turnstream.client.errors import raw_status
from turnstream.server import Server
from turnstream.store.engine import create_engine, migrate
from turnstream.store.keys import KeyStore
from turnstream.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc

TTL = 0.3  # the servers' key cache: short, so revocations show quickly in tests
UNKNOWN = "ts_0123456789ab_" + "A" * 43


def make_key(url: str, tenant: str, scopes: str = "ingest,read", **kw: Any) -> tuple[str, str]:
    """(key, key_id) of a new key, created as `turnstream keys create` does."""
    engine = create_engine(url)
    try:
        migrate(engine)
        made, _ = KeyStore(engine).create(tenant, scopes, **kw)
    finally:
        engine.dispose()
    return made.key, made.key_id


def revoke(url: str, key_id: str) -> None:
    engine = create_engine(url)
    try:
        assert KeyStore(engine).revoke(key_id) is not None
    finally:
        engine.dispose()


def bearer(key: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {key}"}


class Keys:
    """One key of each kind, all of tenant `acme`."""

    def __init__(self, url: str) -> None:
        self.both, _ = make_key(url, "acme", "ingest,read", name="both")
        self.ingest, _ = make_key(url, "acme", "ingest")
        self.read, _ = make_key(url, "acme", "read")
        self.admin, _ = make_key(url, "acme", "admin")
        self.revoked, revoked_id = make_key(url, "acme")
        revoke(url, revoked_id)
        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        self.expired, _ = make_key(url, "acme", expires_at=past)

    def bad(self) -> list[tuple[str | None, str]]:
        """(Authorization value, the ErrorInfo reason it is refused with)."""
        return [
            (None, "API_KEY_MISSING"),
            ("Bearer not-a-turnstream-key", "API_KEY_MALFORMED"),
            ("Basic dXNlcjpwYXNz", "API_KEY_MALFORMED"),
            (f"Bearer {UNKNOWN}", "API_KEY_INVALID"),
            (f"Bearer {self.both[:-4]}AAAA", "API_KEY_INVALID"),  # a wrong secret
            (f"Bearer {self.revoked}", "API_KEY_REVOKED"),
            (f"UserKey {self.expired}", "API_KEY_EXPIRED"),
        ]


@pytest.fixture
async def keyed(database_url: str) -> AsyncIterator[tuple[Server, Keys]]:
    keys = Keys(database_url)
    async with running_server(database_url, auth_cache_ttl=TTL) as server:
        yield server, keys


def http(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}")


# -- gRPC: every RPC of both services --------------------------------------------------------------

SERVICES = [
    (ingest_pb2.DESCRIPTOR.services_by_name["IngestService"], "ingest"),
    (analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"], "read"),
]
RPCS = [(m, scope) for service, scope in SERVICES for m in service.methods]


async def call_rpc(channel: grpc.aio.Channel, method: Any, authorization: str | None) -> Any:
    """Call `method` with an empty request (Append: an open), return the status it ends with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = () if authorization is None else (("authorization", authorization),)
    try:
        if method.client_streaming:
            call = channel.stream_stream(
                path, request_serializer=bytes, response_deserializer=bytes
            )
            open_ = ingest_pb2.AppendRequest(open=ingest_pb2.OpenStream(stream_id="auth-s"))
            stream = call(iter([open_.SerializeToString()]), metadata=metadata)
            async for _ in stream:
                pass
            return grpc.StatusCode.OK, None
        unary = channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
        await unary(b"", metadata=metadata, timeout=10)
        return grpc.StatusCode.OK, None
    except grpc.aio.AioRpcError as exc:
        st = raw_status(exc.trailing_metadata())
        return exc.code(), None if st is None else errors.reason_of(st)


async def test_every_rpc_refuses_bad_keys_and_missing_scopes(
    keyed: tuple[Server, Keys], database_url: str
) -> None:
    server, keys = keyed
    refused = {
        "ingest": (keys.read, "read-only"),
        "read": (keys.ingest, "ingest-only"),
    }
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for method, scope in RPCS:
            for authorization, reason in keys.bad():
                code, got = await call_rpc(channel, method, authorization)
                assert (code, got) == (grpc.StatusCode.UNAUTHENTICATED, reason), (method, reason)
            wrong, _ = refused[scope]
            code, got = await call_rpc(channel, method, f"Bearer {wrong}")
            assert (code, got) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING"), method
            for good in (f"Bearer {keys.both}", f"UserKey {keys.both}", f"Bearer {keys.admin}"):
                code, got = await call_rpc(channel, method, good)
                assert code not in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ), (method, code, got)
    # A refused caller leaves nothing behind, not even a dead letter.
    assert rows(database_url, "rejected_records", tenant_id="default") == []


async def test_malformed_bytes_of_an_unknown_caller_are_not_kept(
    keyed: tuple[Server, Keys], database_url: str
) -> None:
    server, keys = keyed
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        write = channel.unary_unary(
            "/turnstream.v1.IngestService/Write",
            request_serializer=bytes,
            response_deserializer=bytes,
        )
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await write(b"\xff\xff\xff", timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await write(b"\xff\xff\xff", metadata=(("authorization", f"Bearer {keys.both}"),))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    kept = rows(database_url, "rejected_records")
    assert [r["tenant_id"] for r in kept] == ["acme"]


# -- HTTP: every route of the app ------------------------------------------------------------------

OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/docs.js", "/"}
READ_ROUTES = re.compile(
    r"^(/v1/dashboard:get|/v1/executions.*|/api/analytics/batch"
    r"|/api/v1/analytics/(summary|costs|aem/.*|executions/.*))$"
)


def routes(server: Server) -> list[tuple[str, str]]:
    assert server.http_app is not None
    out = []
    for route in server.http_app.routes:
        if not isinstance(route, Route):  # a mounted app (metrics, say) must be an open path
            assert getattr(route, "path", "") in OPEN, route
            continue
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                out.append((method, re.sub(r"\{[^}]+\}", "x", route.path)))
    return out


async def test_every_http_route_refuses_bad_keys_and_missing_scopes(
    keyed: tuple[Server, Keys], database_url: str
) -> None:
    server, keys = keyed
    guarded = [(m, p) for m, p in routes(server) if p not in OPEN and not p.startswith("/web/")]
    assert len(guarded) >= 20  # native, Kubiya, HoneyHive, Granite, analytics
    async with http(server) as c:
        for method, path in routes(server):
            if path in OPEN or path.startswith("/web/"):
                r = await c.request(method, path)
                assert r.status_code not in (401, 403), path
        for method, path in guarded:
            for authorization, reason in keys.bad():
                headers = {} if authorization is None else {"Authorization": authorization}
                r = await c.request(method, path, json={}, headers=headers)
                assert r.status_code == 401, (method, path, reason, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                secret = (authorization or " ").split(" ", 1)[1][16:]
                assert not secret or secret not in r.text
                if path.startswith("/v1/"):  # AIP-193: the reason is machine-readable
                    assert r.json()["error"]["details"][0]["reason"] == reason
            needs = "read" if READ_ROUTES.match(path) else "ingest"
            wrong = keys.ingest if needs == "read" else keys.read
            r = await c.request(method, path, json={}, headers=bearer(wrong))
            assert r.status_code == 403, (method, path, r.text)
            assert f"needs the {needs!r} scope" in r.text
            for good in (bearer(keys.both), bearer(keys.both, "UserKey"), bearer(keys.admin)):
                r = await c.request(method, path, json={}, headers=good)
                assert r.status_code not in (401, 403), (method, path, r.text)
    assert rows(database_url, "rejected_records", tenant_id="default") == []


# -- a revoked key ends an open stream -------------------------------------------------------------


async def test_revoking_a_key_ends_its_open_append_stream(database_url: str) -> None:
    key, key_id = make_key(database_url, "acme", "ingest")
    other, _ = make_key(database_url, "acme", "ingest")
    async with running_server(database_url, auth_cache_ttl=TTL) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        async with StreamWriter(target, "kept", api_key=other) as survivor:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)
                call = stub.Append(metadata=(("authorization", f"Bearer {key}"),))
                await call.write(
                    ingest_pb2.AppendRequest(open=ingest_pb2.OpenStream(stream_id="doomed"))
                )
                opened = await call.read()
                assert opened.WhichOneof("kind") == "opened"
                revoke(database_url, key_id)
                # Within the cache TTL plus the re-check interval; generous under load.
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    async with asyncio.timeout(30):
                        while await call.read() is not grpc.aio.EOF:
                            pass
                assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
                st = raw_status(ended.value.trailing_metadata())
                assert st is not None and errors.reason_of(st) == "API_KEY_REVOKED"
                assert key.split("_", 2)[2] not in st.message
            # Another key's stream is not touched.
            await survivor.turn(execution_id="e1", turn_number=1, model="gpt-4o")
            await survivor.flush()
        async with Client(target, api_key=key) as client:
            with pytest.raises(Exception, match="revoked"):
                await client.write({"execution_id": "e2"})


# -- anonymous mode --------------------------------------------------------------------------------


async def test_anonymous_on_loopback_until_a_key_exists(database_url: str) -> None:
    async with running_server(database_url, auth_cache_ttl=TTL) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        async with Client(target) as client:
            await client.write({"execution_id": "anon-1", "workflow_name": "wf"})
        async with http(server) as c:
            r = await c.get("/v1/executions/anon-1")
            assert r.status_code == 200, r.text
            key, _ = make_key(database_url, "acme")
            async with asyncio.timeout(30):
                while (await c.get("/v1/executions/anon-1")).status_code == 200:  # noqa: ASYNC110
                    await asyncio.sleep(TTL / 3)
            r = await c.get("/v1/executions/anon-1")
            assert r.status_code == 401
            assert r.json()["error"]["details"][0]["reason"] == "API_KEY_MISSING"
            # The key's tenant is not `default`: the anonymous rows are not its.
            assert (await c.get("/v1/executions/anon-1", headers=bearer(key))).status_code == 404
    assert [r["tenant_id"] for r in rows(database_url, "executions")] == ["default"]


async def test_auth_required_demands_a_key_on_loopback(database_url: str) -> None:
    async with running_server(database_url, auth="required") as server, http(server) as c:
        r = await c.post("/v1/dashboard:get", json={})
        assert r.status_code == 401
        assert "needs an API key" in r.json()["error"]["message"]


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "turnstream.cli", "serve", "--log-level", "WARNING", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_refuses_to_start_on_a_public_address_without_keys(database_url: str) -> None:
    out = serve("--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0",
                "--database-url", database_url)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "refusing to start: gRPC on 0.0.0.0:0 is reachable beyond this machine" in out.stderr
    assert "turnstream keys create --tenant NAME" in out.stderr
    assert "--grpc-addr 127.0.0.1:50051" in out.stderr
    assert "Traceback" not in out.stderr


# -- the CLI ---------------------------------------------------------------------------------------


def test_keys_create_list_revoke(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--database-url", database_url)
    assert (
        main(["keys", "create", "--tenant", "acme", "--scopes", "ingest", "--name", "ci", *db]) == 0
    )
    shown = capsys.readouterr().out
    key = re.search(r"ts_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", shown)
    assert key is not None and "only time the key is shown" in shown
    key_id = key.group(0).split("_")[1]
    assert main(["keys", "create", "--tenant", "globex", "--quiet", *db]) == 0
    quiet = capsys.readouterr().out.strip()
    assert re.fullmatch(r"ts_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", quiet)

    assert main(["keys", "list", *db]) == 0
    listing = capsys.readouterr().out
    assert "KEY_ID" in listing and key_id in listing and "globex" in listing
    assert key.group(0).split("_", 2)[2] not in listing  # never the secret
    assert quiet.split("_", 2)[2] not in listing
    assert main(["keys", "list", "--tenant", "acme", "--json", *db]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert '"scopes": "ingest"' in line and '"name": "ci"' in line and '"revoked": "-"' in line

    assert main(["keys", "revoke", key_id, *db]) == 0
    assert f"revoked key {key_id}" in capsys.readouterr().out
    assert main(["keys", "list", "--tenant", "acme", "--json", *db]) == 0
    assert '"revoked": "-"' not in capsys.readouterr().out
    assert main(["keys", "revoke", "ffffffffffff", *db]) == 1
    assert "no key has id" in capsys.readouterr().err
    assert main(["keys", "create", "--tenant", "acme", "--scopes", "write", *db]) == 2
    assert "unknown scope 'write'" in capsys.readouterr().err
    assert main(["keys", "create", "--tenant", "a", "--expires", "2001-01-01", *db]) == 2
    assert "in the past" in capsys.readouterr().err


def test_keys_help_explains_the_format_and_scopes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "turnstream.cli", "keys", "create", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Authorization: Bearer" in out and "--scopes" in out and "UserKey" in out


async def test_send_takes_the_key_from_the_environment(database_url: str) -> None:
    key, _ = make_key(database_url, "acme", "ingest")
    batch = Path(__file__).parents[2] / "examples" / "kubiya_batch.json"
    async with running_server(database_url) as server:
        for env, code in (({}, 1), ({"TURNSTREAM_API_KEY": key}, 0)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "turnstream.cli", "send", str(batch),
                "--target", f"127.0.0.1:{server.grpc_port}",
                env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == code, out.decode()
    assert {r["tenant_id"] for r in rows(database_url, "turns")} == {"acme"}
