"""Bench: the ceiling of one-record-per-message streams — a bare grpc.aio bidi server that
speaks just enough of the Append protocol for bench/load.py (an `opened` answer, then an ack per
batch, parsed and answered with the generated messages) and does nothing else: no pipeline, no
database, no ordering or fencing. Run in its own process, like the server.

    python -m bench.echo --addr 127.0.0.1:50099
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import grpc

from turnstream.v1 import ingest_pb2

_OPENED = ingest_pb2.AppendResponse(
    opened=ingest_pb2.StreamOpened(limits=ingest_pb2.StreamLimits(max_inflight_batches=64))
)


async def append(_: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # context.read()/write(), as the server's Append (doors/stream_session.py) uses them.
    while True:
        request = await context.read()
        if request is grpc.aio.EOF:
            return
        if request.WhichOneof("kind") == "open":
            await context.write(_OPENED)
            continue
        batch = request.batch
        await context.write(
            ingest_pb2.AppendResponse(
                ack=ingest_pb2.BatchAck(
                    offset=batch.offset,
                    record_count=len(batch.records),
                    outcome=ingest_pb2.APPEND_OUTCOME_APPENDED,
                )
            )
        )


async def serve(addr: str) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "turnstream.v1.IngestService",
        {
            "Append": grpc.stream_stream_rpc_method_handler(
                append,
                request_deserializer=ingest_pb2.AppendRequest.FromString,
                response_serializer=ingest_pb2.AppendResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(addr)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--addr", required=True)
    asyncio.run(serve(p.parse_args().addr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
