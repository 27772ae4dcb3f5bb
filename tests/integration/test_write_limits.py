"""Large Writes: prepared and committed in chunks with exact answers; a Write over the record
limit is RESOURCE_EXHAUSTED naming the limit, and nothing of it is stored."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.dbutil import rows
from tests.integration.test_write import turn
from tests.serving import ingest_stub, running_server
from turnstream.core.ingest import CHUNK_RECORDS
from turnstream.v1 import ingest_pb2, records_pb2


async def test_a_write_over_many_chunks_answers_every_record_by_its_index(
    database_url: str,
) -> None:
    n = CHUNK_RECORDS * 2 + 7
    bad = {3, CHUNK_RECORDS, CHUNK_RECORDS * 2 + 6}  # in the first, second and last chunk
    request = ingest_pb2.WriteRequest(execution_id="exec-big")
    for i in range(n):
        t = turn(i + 1, execution_id="")
        if i in bad:
            t.ClearField("model")
        request.turns.append(t)
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        first = await stub.Write(request)
        again = await stub.Write(request)
    assert first.counts.turns.created == n - len(bad)
    assert first.counts.turns.rejected == len(bad)
    assert [r.index for r in first.rejections] == sorted(bad)
    assert [r.violations[0].field for r in first.rejections] == [
        f"turns[{i}].model" for i in sorted(bad)
    ]
    assert first.execution_id == "exec-big"
    assert again.counts.turns.unchanged == n - len(bad) and again.counts.turns.created == 0
    assert len(rows(database_url, "turns")) == n - len(bad)
    assert len(rows(database_url, "rejected_records")) == len(bad)


async def test_a_write_over_the_record_limit_is_resource_exhausted(database_url: str) -> None:
    request = ingest_pb2.WriteRequest(turns=[turn(i + 1) for i in range(11)])
    request.tool_calls.append(records_pb2.ToolCall(execution_id="exec-1", tool_name="x"))
    async with (
        running_server(database_url, max_request_records=10) as server,
        ingest_stub(server) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Write(request)
        ok = await stub.Write(ingest_pb2.WriteRequest(turns=[turn(i + 1) for i in range(10)]))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "12 records, more than the limit of 10" in (info.value.details() or "")
    status = rpc_status.from_call(info.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert bad.field_violations[0].field == "records"
    assert ok.counts.turns.created == 10
    assert len(rows(database_url, "turns")) == 10
