"""The naive pipeline: receive OTLP, re-emit every record through the OpenTelemetry Python SDK.

What one would build first with the SDK's public API: a gRPC receiver (grpc.aio, as the processor
uses) decodes each request and emits each record through ``Logger.emit`` of a ``LoggerProvider``
(one per distinct resource, so resources survive), whose ``BatchLogRecordProcessor`` hands
batches to an ``OTLPLogExporter`` (gRPC) pointed at the sink. No classification: the records are
only carried through the SDK's record model, which is the cost being measured.

Everything is left at the SDK's defaults (queue 2048 records, batch 512, 1 s schedule), as a
first version would. The SDK's queue does not push back: when it is full it drops records (and
logs a warning for each), so the bench counts what actually reached the sink.

Usage: python tests/bench/naive_sdk.py SINK_HOST:PORT   (prints {"grpc": port} once listening)
"""

from __future__ import annotations

import asyncio
import sys

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from procs import MAX_MESSAGE_BYTES, serve_logs_export

_EMPTY = ExportLogsServiceResponse().SerializeToString()


def python_value(value):
    """An OTLP AnyValue as the SDK's attribute / body value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [python_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: python_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


class Reemitter:
    def __init__(self, sink: str):
        self.sink = sink
        self.providers: dict[bytes, LoggerProvider] = {}

    def provider(self, resource) -> LoggerProvider:
        key = resource.SerializeToString(deterministic=True)
        provider = self.providers.get(key)
        if provider is None:
            provider = LoggerProvider(
                resource=Resource({kv.key: python_value(kv.value) for kv in resource.attributes}),
                shutdown_on_exit=False,
            )
            provider.add_log_record_processor(
                BatchLogRecordProcessor(OTLPLogExporter(endpoint=self.sink, insecure=True))
            )
            self.providers[key] = provider
        return provider

    def emit(self, payload: bytes) -> None:
        request = ExportLogsServiceRequest.FromString(payload)
        for resource_logs in request.resource_logs:
            provider = self.provider(resource_logs.resource)
            for scope_logs in resource_logs.scope_logs:
                logger = provider.get_logger(scope_logs.scope.name, scope_logs.scope.version or None)
                for record in scope_logs.log_records:
                    context = None
                    if record.trace_id:
                        span = NonRecordingSpan(
                            SpanContext(
                                trace_id=int.from_bytes(record.trace_id, "big"),
                                span_id=int.from_bytes(record.span_id, "big"),
                                is_remote=True,
                                trace_flags=TraceFlags(record.flags & 0xFF),
                            )
                        )
                        context = trace.set_span_in_context(span)
                    logger.emit(
                        timestamp=record.time_unix_nano,
                        observed_timestamp=record.observed_time_unix_nano,
                        context=context,
                        severity_number=SeverityNumber(record.severity_number),
                        severity_text=record.severity_text,
                        body=python_value(record.body),
                        attributes={kv.key: python_value(kv.value) for kv in record.attributes},
                    )

    def shutdown(self) -> None:
        for provider in self.providers.values():
            provider.shutdown()


async def main(sink: str) -> None:
    reemitter = Reemitter(sink)

    async def export(request: bytes, context) -> bytes:
        reemitter.emit(request)
        return _EMPTY

    await serve_logs_export(export, [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    reemitter.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
