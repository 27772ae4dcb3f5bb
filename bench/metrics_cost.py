"""Bench: what the gRPC metrics interceptor costs per call and per stream message, isolated from
the pipeline and the database: a grpc.aio server with an echo unary method and an echo
bidirectional stream written like Append (context.read / context.write), with and without
MetricsInterceptor, both at once, in alternating blocks; prints the median CPU microseconds per
operation (this process's CPU time, client and server both, so the difference is the
interceptor's; CPU time rather than wall time because the machine is shared). The
end-to-end benchmark (`python -m bench.run`, TURNSTREAM_METRICS=false for off) cannot resolve a
difference this small on a shared machine.

    python -m bench.metrics_cost [--rounds 40] [--calls 200] [--messages 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import grpc

from turnstream.metrics.grpc_server import MetricsInterceptor
from turnstream.metrics.registry import Metrics

SERVICE = "bench.Echo"


def _identity(b: bytes) -> bytes:
    return b


async def _unary(request: bytes, _context: Any) -> bytes:
    return request


async def _stream(_requests: Any, context: Any) -> None:
    while True:
        message = await context.read()
        if message is grpc.aio.EOF:
            return
        await context.write(message)


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary, _identity, _identity),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream, _identity, _identity),
        },
    )


async def _serve(with_metrics: bool) -> tuple[grpc.aio.Server, int]:
    interceptors = [MetricsInterceptor(Metrics())] if with_metrics else []
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _unary_block(channel: grpc.aio.Channel, calls: int) -> float:
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    started = time.process_time()
    for _ in range(calls):
        await unary(b"x" * 64)
    return time.process_time() - started


async def _stream_block(call: Any, messages: int) -> float:
    payload = b"y" * 64
    started = time.process_time()
    for _ in range(messages):
        await call.write(payload)
        await call.read()
    return time.process_time() - started


async def main_async(args: argparse.Namespace) -> None:
    """Both servers run at once and blocks alternate between them, so the load of the machine
    weighs on both alike; medians of the per-block figures."""
    servers = {m: await _serve(m) for m in (False, True)}
    channels = {m: grpc.aio.insecure_channel(f"127.0.0.1:{p}") for m, (_, p) in servers.items()}
    calls: dict[bool, list[float]] = {False: [], True: []}
    messages: dict[bool, list[float]] = {False: [], True: []}
    try:
        streams = {m: channels[m].stream_stream(f"/{SERVICE}/Stream")() for m in channels}
        for m in (False, True):  # warm up
            await _unary_block(channels[m], 50)
            await _stream_block(streams[m], 50)
        for i in range(args.rounds):
            for m in (i % 2 == 0, i % 2 != 0):
                calls[m].append(await _unary_block(channels[m], args.calls) / args.calls * 1e6)
                block = await _stream_block(streams[m], args.messages)
                messages[m].append(block / args.messages * 1e6)
        for call in streams.values():
            await call.done_writing()
            await call.read()
    finally:
        for channel in channels.values():
            await channel.close()
        for server, _ in servers.values():
            await server.stop(None)
    print("| interceptor | CPU µs per unary call (median) | CPU µs per stream message (median) |")
    print("|---|---:|---:|")
    for m in (False, True):
        per_call, per_message = statistics.median(calls[m]), statistics.median(messages[m])
        print(f"| {'on' if m else 'off'} | {per_call:.1f} | {per_message:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--messages", type=int, default=1000)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
