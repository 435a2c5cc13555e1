"""The floor: a plain Python gRPC relay that forwards each Export request's bytes, unparsed, to the sink.

Same stack as the processor's gRPC path (grpc.aio server, grpc.aio channel, one asyncio loop) minus
everything the processor does with a request: no decode, no pipeline, no re-encode, no queue. It
answers once the sink has answered, so nothing it acknowledges is lost.

Usage: python tests/bench/relay.py SINK_HOST:PORT   (prints {"grpc": port} once listening)
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from procs import LOGS_SERVICE, MAX_MESSAGE_BYTES, serve_logs_export

METHOD = f"/{LOGS_SERVICE}/Export"


async def main(sink: str) -> None:
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", -1)]
    channel = grpc.aio.insecure_channel(sink, options=options)
    forward = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    async def export(request: bytes, context) -> bytes:
        return await forward(request, timeout=30)

    await serve_logs_export(export, options)
    await channel.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
