"""Prometheus /metrics counts real traffic: gRPC Write, an Append stream and a native JSON write
against a real server and database, scraped over HTTP and parsed with prometheus_client's own
parser; and with --workers 2 a scrape shows both processes' counts, whichever one answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_append import batch, next_ack, open_stream, turns
from tests.integration.test_cli import free_port, wait_healthy
from tests.integration.test_write import turn
from tests.serving import ingest_stub, running_server
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as c:
        response = await c.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


WRITE = {"grpc_service": "turnstream.v1.IngestService", "grpc_method": "Write"}
APPEND = {"grpc_service": "turnstream.v1.IngestService", "grpc_method": "Append"}


async def test_metrics_count_grpc_append_and_json_traffic(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        # gRPC Write: two valid turns, one invalid (negative tokens), then an exact retry.
        request = ingest_pb2.WriteRequest(turns=[turn(1), turn(2), turn(3, input_tokens=-1)])
        await stub.Write(request)
        await stub.Write(ingest_pb2.WriteRequest(turns=[turn(1)]))
        with pytest.raises(grpc.aio.AioRpcError):  # INVALID_ARGUMENT: no records
            await stub.CreateTurn(ingest_pb2.CreateTurnRequest())
        # Append: open, two batches of 3 records, one of them an unknown model (unpriced).
        call, _ = await open_stream(stub, "s-metrics")
        records = turns(0, 6)
        records[5].turn.model = "no-such-model"
        records[5].turn.input_tokens = 100
        await call.write(batch(0, records[:3]))
        await next_ack(call)
        await call.write(batch(3, records[3:]))
        await next_ack(call)
        during = await scrape(server.http_port)
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        # Native JSON: one turn, and a route with an id in its path.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as c:
            turn_json = {"executionId": "j1", "turnNumber": 1, "model": "gpt-4o"}
            turn_json["startedAt"] = "2026-11-01T09:00:00Z"
            body = {"turns": [turn_json]}
            assert (await c.post("/v1/records:write", json=body)).status_code == 200
            assert (await c.get("/v1/streams/s-metrics")).status_code == 200
            assert (await c.get("/v1/streams/other")).status_code == 200
            assert (await c.get("/no/such/path")).status_code == 404
        await asyncio.sleep(0)
        m = await scrape(server.http_port)

    assert value(during, "turnstream_open_streams") == 1
    assert value(m, "turnstream_open_streams") == 0
    # gRPC server metrics, go-grpc-prometheus names and labels.
    assert value(m, "grpc_server_started_total", grpc_type="unary", **WRITE) == 2
    assert value(m, "grpc_server_handled_total", grpc_code="OK", **WRITE) == 2
    assert value(m, "grpc_server_handling_seconds_count", grpc_type="unary", **WRITE) == 2
    assert value(m, "grpc_server_msg_received_total", **WRITE) == 2
    assert value(m, "grpc_server_msg_sent_total", **WRITE) == 2
    create = {"grpc_method": "CreateTurn", "grpc_code": "INVALID_ARGUMENT"}
    assert value(m, "grpc_server_handled_total", **create) == 1
    assert value(m, "grpc_server_started_total", grpc_type="bidi_stream", **APPEND) == 1
    assert value(m, "grpc_server_handled_total", grpc_code="OK", **APPEND) == 1
    assert value(m, "grpc_server_msg_received_total", **APPEND) == 3  # open + 2 batches
    assert value(m, "grpc_server_msg_sent_total", **APPEND) == 3  # opened + 2 acks
    # Ingest metrics, by kind, door and outcome.
    assert (
        value(m, "turnstream_records_total", kind="turn", door="grpc.Write", outcome="accepted")
        == 2
    )
    assert (
        value(m, "turnstream_records_total", kind="turn", door="grpc.Write", outcome="unchanged")
        == 1
    )
    assert (
        value(m, "turnstream_records_total", kind="turn", door="grpc.Write", outcome="rejected")
        == 1
    )
    assert (
        value(m, "turnstream_records_total", kind="turn", door="grpc.Append", outcome="accepted")
        == 6
    )
    assert (
        value(m, "turnstream_records_total", kind="turn", door="http.Write", outcome="accepted")
        == 1
    )
    assert value(m, "turnstream_tenant_records_total", tenant="default", outcome="accepted") == 9
    assert value(m, "turnstream_unpriced_turns_total") == 1
    assert value(m, "turnstream_commit_seconds_count") >= 4
    assert value(m, "turnstream_flush_rows_sum") >= 10
    assert value(m, "turnstream_writer_pending_rows") == 0
    assert value(m, "turnstream_database_up") == 1
    # HTTP: the route template, never the raw path.
    assert value(m, "http_requests_total", route="/v1/streams/{stream_id}", status="200") == 2
    assert value(m, "http_requests_total", route="/v1/records:write", method="POST") == 1
    assert value(m, "http_requests_total", route="<unmatched>", status="404") == 1
    assert not [
        ls for (n, ls) in m if n == "http_requests_total" and ("route", "/v1/streams/other") in ls
    ]
    assert value(m, "http_request_duration_seconds_count", route="/v1/records:write") == 1


async def test_metrics_can_be_turned_off(sqlite_url: str) -> None:
    async with running_server(sqlite_url, metrics=False) as server, httpx.AsyncClient() as c:
        response = await c.get(f"http://127.0.0.1:{server.http_port}/metrics")
    assert response.status_code == 404


@contextlib.contextmanager
def workers(args: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "turnstream.cli", "serve", *args],
            stderr=out,
            text=True,
            env=env,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


@pytest.mark.postgresql
async def test_with_two_workers_a_scrape_sums_both_processes(
    postgresql_url: str, tmp_path: Path
) -> None:
    grpc_port, http_port = free_port(), free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # from an earlier run: removed
    args = [
        "--grpc-addr", f"127.0.0.1:{grpc_port}",
        "--http-addr", f"127.0.0.1:{http_port}",
        "--database-url", postgresql_url,
        "--workers", "2",
    ]  # fmt: skip
    env = {**os.environ, "TURNSTREAM_METRICS_DIR": str(metrics_dir)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with workers(args, tmp_path / "serve.log", env) as proc:
        await asyncio.to_thread(wait_healthy, http_port, proc)
        # Until both workers wrote their files, which is when each served its first call.
        pids: set[str] = set()
        sent = 0
        for _ in range(200):
            # A new connection per call: SO_REUSEPORT spreads connections over the workers.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)
                await stub.Write(ingest_pb2.WriteRequest(turns=[turn(sent + 1)]))
            sent += 1
            pids = {p.name.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}
            if len(pids) >= 2 and sent >= 10:
                break
        assert len(pids) == 2, f"both workers should have served calls: {pids}"
        for _ in range(4):  # whichever worker answers, the sum is the same
            m = await scrape(http_port)
            assert value(m, "grpc_server_handled_total", grpc_code="OK", **WRITE) == sent
            assert value(m, "turnstream_records_total", outcome="accepted", kind="turn") == sent
    assert not (metrics_dir / "counter_999999.db").exists()
