"""When PostgreSQL is down, unary writes fail UNAVAILABLE with RetryInfo, nothing is acked, and
the server carries on once the database is back. Uses its own PostgreSQL, never the shared one."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.dbutil import rows
from tests.integration.test_write import turn
from tests.pgserver import PgServer
from tests.serving import ingest_stub, running_server
from turnstream.v1 import ingest_pb2

pytestmark = pytest.mark.postgresql


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    pg = PgServer()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop("immediate") if pg.is_running() else None
        pg.cleanup()


async def test_database_down_is_unavailable_with_retry_info_then_recovers(
    own_pg: PgServer,
) -> None:
    url = own_pg.create_database("ts")
    async with running_server(url) as server, ingest_stub(server) as stub:
        first = await stub.Write(ingest_pb2.WriteRequest(turns=[turn(1)]))
        assert first.counts.turns.created == 1

        own_pg.stop("immediate")
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Write(ingest_pb2.WriteRequest(turns=[turn(2)]))
        assert time.monotonic() - started < 5
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(info.value)
        assert status is not None
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        delay = error_details_pb2.RetryInfo()
        retry[0].Unpack(delay)
        assert delay.retry_delay.ToMilliseconds() > 0
        # The same delay as `retry-after` metadata, for proxies that cannot read RetryInfo
        # (Envoy's rate_limited_retry_back_off, deploy/envoy/envoy.yaml): whole seconds, up.
        metadata = dict(info.value.trailing_metadata() or ())
        assert metadata["retry-after"] == str(
            max(1, math.ceil(delay.retry_delay.ToMilliseconds() / 1000))
        )

        own_pg.start()
        again = await stub.Write(ingest_pb2.WriteRequest(turns=[turn(2)]))
        assert again.counts.turns.created == 1
    assert sorted(r["turn_number"] for r in rows(url, "turns")) == [1, 2]
