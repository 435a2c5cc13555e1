"""A fast OTLP logs backend for the benchmark: accepts everything, counts, forwards nothing.

Runs in its own process so its CPU is never charged to the measured one. It serves
``LogsService/Export`` on gRPC (raw bytes, no deserializer) and ``POST /v1/logs`` on HTTP, and
``GET /stats`` with what it has received so far, ``GET /arrivals`` with when each request's
marked record (``bench.request.id``, see workload.py) last arrived, and when its Auth0 errors
(``bench.error.request.id``) last arrived without it: those were held for their trace's evidence.

Counting stays cheap: one C-level protobuf parse per request for the exact record count (the
naive SDK sends batches of its own size), and byte searches for the attributes the processor
adds — every enriched record carries the key ``triage.source``, every downgraded one
``triage.rule`` — instead of walking records in Python.

Usage: python tests/bench/sink.py   (prints {"grpc": port, "http": port} once listening)
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from procs import HOST, announce
from workload import ERROR_REQUEST_ID, REQUEST_ID_DIGITS, request_id_marker

SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_EMPTY = ExportLogsServiceResponse().SerializeToString()


def _key_marker(key: str) -> bytes:
    """How a KeyValue with this key starts on the wire: field 1 (key), length, key, then field 2 (value)."""
    encoded = key.encode()
    assert len(encoded) < 128
    return bytes((0x0A, len(encoded))) + encoded + b"\x12"


ENRICHED = _key_marker("triage.source")
DOWNGRADED = _key_marker("triage.rule")
REQUEST_ID = request_id_marker()
ERROR_ID = request_id_marker(ERROR_REQUEST_ID)


def _ids(payload: bytes, marker: bytes) -> set[str]:
    """The request ids that follow ``marker`` in ``payload``."""
    found = set()
    at = payload.find(marker)
    while at >= 0:
        at += len(marker)
        found.add(payload[at : at + REQUEST_ID_DIGITS].decode())
        at = payload.find(marker, at)
    return found


class Counts:
    def __init__(self) -> None:
        self.requests = 0
        self.records = 0
        self.enriched = 0
        self.downgraded = 0
        self.bytes = 0
        self.last_at = 0.0  # time.monotonic() of the last request (one clock for every process here)
        self.arrivals: dict[str, float] = {}  # bench request id -> when its marked record last arrived
        # bench request id -> when some of its Auth0 errors last arrived in an export without its
        # marked record: held, and released after the request was forwarded
        self.held_arrivals: dict[str, float] = {}

    def add(self, payload: bytes) -> None:
        request = ExportLogsServiceRequest.FromString(payload)
        self.records += sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        self.enriched += payload.count(ENRICHED)
        self.downgraded += payload.count(DOWNGRADED)
        self.requests += 1
        self.bytes += len(payload)
        self.last_at = now = time.monotonic()
        requests = _ids(payload, REQUEST_ID)
        for request_id in requests:
            self.arrivals[request_id] = now
        for request_id in _ids(payload, ERROR_ID) - requests:
            self.held_arrivals[request_id] = now

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in ("arrivals", "held_arrivals")}


async def main() -> None:
    counts = Counts()

    async def export(request: bytes, context) -> bytes:
        counts.add(request)
        return _EMPTY

    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
            ),
        )
    )
    grpc_port = server.add_insecure_port(f"{HOST}:0")
    await server.start()

    async def logs(request: web.Request) -> web.Response:
        counts.add(await request.read())
        return web.Response(body=_EMPTY, content_type="application/x-protobuf")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts.as_dict())

    async def arrivals(request: web.Request) -> web.Response:
        return web.json_response({"requests": counts.arrivals, "held": counts.held_arrivals})

    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    app.router.add_post("/v1/logs", logs)
    app.router.add_get("/stats", stats)
    app.router.add_get("/arrivals", arrivals)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    http_port = site._server.sockets[0].getsockname()[1]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(grpc=grpc_port, http=http_port)
    await stop.wait()
    await server.stop(1)
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
