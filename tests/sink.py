"""A real OTLP logs backend for the end-to-end tests: gRPC and HTTP on loopback, recording what it gets.

    python tests/sink.py --out FILE --ready FILE [--grpc-port 0] [--http-port 0]
                         [--fail-first N] [--fail-while PATH] [--lifetime SECONDS]
                         [--max-message-bytes N]

When both servers listen, it writes ``{"grpc_port": P, "http_port": Q}`` to the ``--ready`` file.
Each Export request (gRPC ``LogsService/Export`` or HTTP ``POST /v1/logs``, protobuf, optionally gzip)
is answered by the first of these that applies:

1. the first N requests (``--fail-first``), or any request while PATH exists (``--fail-while``):
   UNAVAILABLE / 503 with a retry hint of 0 s (RetryInfo / Retry-After) — retryable;
2. a request holding a record whose attribute ``sink.reject`` is true: INVALID_ARGUMENT / 400 — permanent;
3. records whose attribute ``sink.partial`` is true are refused, the rest kept: partial success;
4. otherwise everything is kept: success.

A request larger than ``--max-message-bytes`` (default 64 MiB; the OTel Collector's OTLP receiver
takes 4 MiB over gRPC) is refused before any of that, as the Collector refuses it: gRPC's own
RESOURCE_EXHAUSTED, HTTP 413; neither is recorded.

Every request appends one JSON line to ``--out``:
``{"transport": "grpc"|"http", "answer": "unavailable"|"invalid"|"partial"|"ok", "records": <received>,
"stored": <base64 ExportLogsServiceRequest of the records kept, or null>}``.
SIGTERM (or the end of ``--lifetime``) stops both servers and exits 0.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

REJECT = "sink.reject"
PARTIAL = "sink.partial"
RETRY_INFO = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=0))


def flagged(record, key: str) -> bool:
    for kv in record.attributes:
        if kv.key == key:
            return kv.value.bool_value or kv.value.string_value.lower() == "true"
    return False


def records_of(request: ExportLogsServiceRequest):
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            yield from scope_logs.log_records


class Backend:
    """The decision and the record keeping, shared by both transports."""

    def __init__(self, out: str, fail_first: int, fail_while: str):
        self.out = open(out, "a", encoding="utf-8")
        self.fail_first = fail_first
        self.fail_while = fail_while
        self.seen = 0
        self.lock = threading.Lock()

    def answer(self, transport: str, request: ExportLogsServiceRequest) -> tuple[str, int]:
        """(answer, records refused by partial success); also records the request."""
        with self.lock:
            self.seen += 1
            failing = self.seen <= self.fail_first or bool(
                self.fail_while and os.path.exists(self.fail_while)
            )
        received = sum(1 for _ in records_of(request))
        stored = None
        refused = 0
        if failing:
            answer = "unavailable"
        elif any(flagged(r, REJECT) for r in records_of(request)):
            answer = "invalid"
        else:
            for resource_logs in request.resource_logs:
                for scope_logs in resource_logs.scope_logs:
                    kept = [r for r in scope_logs.log_records if not flagged(r, PARTIAL)]
                    refused += len(scope_logs.log_records) - len(kept)
                    del scope_logs.log_records[:]
                    scope_logs.log_records.extend(kept)
            answer = "partial" if refused else "ok"
            stored = base64.b64encode(request.SerializeToString()).decode("ascii")
        line = json.dumps({"transport": transport, "answer": answer, "records": received, "stored": stored})
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()
        return answer, refused


def response(refused: int) -> ExportLogsServiceResponse:
    result = ExportLogsServiceResponse()
    if refused:
        result.partial_success.rejected_log_records = refused
        result.partial_success.error_message = f"sink: {refused} record(s) carry {PARTIAL}"
    return result


def grpc_server(backend: Backend, port: int, max_message_bytes: int) -> tuple[grpc.Server, int]:
    def export(request: ExportLogsServiceRequest, context: grpc.ServicerContext) -> ExportLogsServiceResponse:
        answer, refused = backend.answer("grpc", request)
        if answer == "unavailable":
            context.set_trailing_metadata((("google.rpc.retryinfo-bin", RETRY_INFO.SerializeToString()),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "sink: failing on purpose")
        if answer == "invalid":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"sink: a record carries {REJECT}")
        return response(refused)

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.logs.v1.LogsService",
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                export,
                request_deserializer=ExportLogsServiceRequest.FromString,
                response_serializer=ExportLogsServiceResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(8), options=[("grpc.max_receive_message_length", max_message_bytes)])
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def http_server(backend: Backend, port: int, max_message_bytes: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if len(body) > max_message_bytes:
                status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="sink: request too large")
                return self.reply(413, status.SerializeToString())
            if self.path != "/v1/logs":
                return self.reply(404, b"")
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            answer, refused = backend.answer("http", ExportLogsServiceRequest.FromString(body))
            if answer == "unavailable":
                status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="sink: failing on purpose")
                status.details.add().Pack(RETRY_INFO)
                return self.reply(503, status.SerializeToString(), {"Retry-After": "0"})
            if answer == "invalid":
                status = status_pb2.Status(
                    code=code_pb2.INVALID_ARGUMENT, message=f"sink: a record carries {REJECT}"
                )
                return self.reply(400, status.SerializeToString())
            self.reply(200, response(refused).SerializeToString())

        def reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # quiet: the out file is the record
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), name="sink-http", daemon=True).start()
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="file that every request is appended to (JSON lines)")
    parser.add_argument("--ready", required=True, help="file written with the bound ports once listening")
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument(
        "--fail-first", type=int, default=0, help="answer the first N requests with UNAVAILABLE/503"
    )
    parser.add_argument("--fail-while", default="", help="answer UNAVAILABLE/503 while this path exists")
    parser.add_argument(
        "--lifetime", type=float, default=300.0, help="exit after this many seconds regardless"
    )
    parser.add_argument(
        "--max-message-bytes", type=int, default=64 << 20, help="refuse larger requests (RESOURCE_EXHAUSTED / 413)"
    )
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    backend = Backend(args.out, args.fail_first, args.fail_while)
    grpc_srv, grpc_port = grpc_server(backend, args.grpc_port, args.max_message_bytes)
    http_srv = http_server(backend, args.http_port, args.max_message_bytes)
    temporary = args.ready + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump({"grpc_port": grpc_port, "http_port": http_srv.server_address[1]}, f)
    os.replace(temporary, args.ready)  # appears complete or not at all

    stop.wait(args.lifetime)  # an orphaned sink (test runner killed) goes away on its own
    http_srv.shutdown()
    grpc_srv.stop(1).wait(2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
