"""Logs as `--log-format json` writes them: one JSON object per line with timestamp, level,
logger, message and the request / stream / tenant ids bound where the line was written; and
never a key or a payload, whatever a caller sends (valid, invalid, unparsable, with keys)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import grpc
import httpx
import pytest

from tests.integration.test_append import batch, open_stream, turns
from tests.integration.test_write import turn
from tests.serving import ingest_stub, running_server
from turnstream.cli import _JsonFormatter
from turnstream.v1 import ingest_pb2

SECRET = "sk-live-7f3a9c1e5b2d4f6a8c0e"
KEY = "tsk_8d1f4b7a2c9e6f3a0b5d"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged, at DEBUG, through the JSON formatter `serve` uses."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_log_lines_are_json_with_ids_and_hold_no_key_nor_payload(
    sqlite_url: str, json_log: io.StringIO
) -> None:
    metadata = (("authorization", f"Bearer {KEY}"), ("x-request-id", "req-fence"))
    async with running_server(sqlite_url) as server, ingest_stub(server) as stub:
        good = turn(1, response_preview=SECRET, error_message=SECRET)
        bad = turn(2, input_tokens=-1, response_preview=SECRET)
        await stub.Write(ingest_pb2.WriteRequest(turns=[good, bad]), metadata=metadata)
        # Bytes that do not parse, carrying the secret: kept as a dead letter, never logged.
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        raw = channel.unary_unary("/turnstream.v1.IngestService/Write")
        with pytest.raises(grpc.aio.AioRpcError):
            await raw(b"\x1a\xff" + SECRET.encode(), metadata=metadata)
        await channel.close()
        # A stream with the secret in its records, then reopened: the older call is fenced,
        # which is logged (with the stream id).
        records = turns(0, 2)
        records[0].turn.response_preview = SECRET
        first, _ = await open_stream(stub, "s-logged")
        await first.write(batch(0, records))
        await first.read()
        second = stub.Append(metadata=metadata)
        await second.write(
            ingest_pb2.AppendRequest(open=ingest_pb2.OpenStream(stream_id="s-logged"))
        )
        await second.read()
        with pytest.raises(grpc.aio.AioRpcError):
            await first.read()
        second.cancel()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as c:
            headers = {"Authorization": f"Bearer {KEY}", "X-Api-Key": KEY}
            body = {"turns": [{"executionId": "j", "turnNumber": 1, "model": SECRET}]}
            await c.post("/v1/records:write", json=body, headers=headers)
            await c.post(
                "/v1/records:write", content=b'{"turns": [' + SECRET.encode(), headers=headers
            )
            await c.post("/api/v1/analytics/batch", content=SECRET, headers=headers)

    text = json_log.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines, "the server logs something (start, fencing, stop)"
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= set(line)
        assert line["timestamp"].endswith("Z")
    fenced = [line for line in lines if "fencing the older call" in line["message"]]
    assert fenced
    assert fenced[0]["stream_id"] == "s-logged"
    assert fenced[0]["tenant"] == "default"
    assert fenced[0]["request_id"] == "req-fence"
    assert SECRET not in text
    assert KEY not in text
