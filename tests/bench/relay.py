"""The floor: a plain Python gRPC relay that forwards each Export request's bytes, unparsed, to the sink.

Same stack as the processor's gRPC path (grpc.aio server, grpc.aio channel, one asyncio loop) minus
everything the processor does with a request: no decode, no pipeline, no re-encode, no queue. It
answers once the sink has answered, so nothing it acknowledges is lost.

Usage: python tests/bench/relay.py SINK_HOST:PORT   (prints {"grpc": port} once listening)
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
from procs import HOST, announce

SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
METHOD = f"/{SERVICE}/Export"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def main(sink: str) -> None:
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", -1)]
    channel = grpc.aio.insecure_channel(sink, options=options)
    forward = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    async def export(request: bytes, context) -> bytes:
        return await forward(request, timeout=30)

    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
            ),
        )
    )
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(grpc=port)
    await stop.wait()
    await server.stop(1)
    await channel.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
