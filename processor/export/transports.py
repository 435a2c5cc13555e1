"""One export attempt to the backend, and what its answer means (OTLP retry rules).

Channel, TLS and compression are grpcio's and aiohttp's; what is ours is the classification of the
answer into Sent / Retryable / Permanent, which the sender's retry loop acts on.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import sys
import threading
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone

import aiohttp
import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from .. import otlp_json
from ..config import ExporterConfig

EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"

# OTLP: retryable gRPC codes; RESOURCE_EXHAUSTED only when the server sends RetryInfo.
_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Sent:
    rejected: int = 0  # partial success: records the backend refused (not retried, per OTLP)
    message: str = ""


@dataclass(frozen=True)
class Retryable:
    reason: str
    retry_after_s: float | None = None  # the server's hint, if it gave one


@dataclass(frozen=True)
class Permanent:
    reason: str
    too_large: bool = False  # the backend refused the message's size (HTTP 413, gRPC RESOURCE_EXHAUSTED)


Outcome = Sent | Retryable | Permanent


def make_transport(config: ExporterConfig):
    if config.protocol == "grpc":
        return GrpcTransport(config)
    if config.protocol == "http/protobuf":
        return HttpTransport(config)
    return StdoutTransport()


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class StdoutTransport:
    """The embedded default: each forwarded request printed as one line of OTLP/JSON."""

    description = "stdout (OTLP/JSON, one request per line)"

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout.buffer
        self._writing = threading.Lock()  # the sender's workers print in threads: one line at a time

    async def send(self, payload: bytes) -> Outcome:
        # In a thread: json_format is Python (~150 µs per record), and a 16,000-record request held
        # the event loop, its health checks and every other client, for 2.5 s.
        await asyncio.to_thread(self._print, payload)
        return Sent()

    def _print(self, payload: bytes) -> None:
        line = otlp_json.encode(ExportLogsServiceRequest.FromString(payload)) + b"\n"
        with self._writing:
            self.stream.write(line)
            self.stream.flush()

    async def close(self) -> None:
        pass


class GrpcTransport:
    def __init__(self, config: ExporterConfig):
        self.config = config
        self.description = f"grpc {'(insecure) ' if config.insecure else ''}{config.endpoint}"
        compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression
        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # gRPC's own reconnect backoff grows to 120 s; meanwhile every export fails at once. Cap it
            # at the retry interval so delivery resumes as soon as the backend is back.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", int(config.reconnect_max_s * 1000)),
        ]
        if config.insecure:
            self.channel = grpc.aio.insecure_channel(config.endpoint, options=options, compression=compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(config.certificate_file),
                private_key=_read(config.client_key_file),
                certificate_chain=_read(config.client_certificate_file),
            )
            self.channel = grpc.aio.secure_channel(config.endpoint, credentials, options=options, compression=compression)
        # Payloads are already serialized: no request serializer, bytes go out as they are.
        self._export = self.channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString
        )
        self._metadata = tuple(self.config.headers)

    async def send(self, payload: bytes) -> Outcome:
        try:
            response = await self._export(payload, metadata=self._metadata, timeout=self.config.timeout_s)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            hint = _grpc_retry_delay(error)
            reason = f"gRPC {code.name}: {error.details()}"
            if code in _RETRYABLE_CODES or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None):
                return Retryable(reason, hint)
            # Without a retry hint, RESOURCE_EXHAUSTED is how a gRPC server refuses a message over its limit.
            return Permanent(reason, too_large=code == grpc.StatusCode.RESOURCE_EXHAUSTED)
        partial = response.partial_success
        return Sent(partial.rejected_log_records, partial.error_message)

    async def close(self) -> None:
        await self.channel.close()


def _grpc_retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        try:
            if key == "google.rpc.retryinfo-bin":
                info = error_details_pb2.RetryInfo.FromString(value)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        except (DecodeError, TypeError):
            continue
    return None


class HttpTransport:
    def __init__(self, config: ExporterConfig):
        self.config = config
        self.description = f"http/protobuf {config.endpoint}"
        self._headers = {"Content-Type": "application/x-protobuf", **dict(config.headers)}
        if config.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self._ssl: ssl.SSLContext | bool = True
        if config.certificate_file or config.client_certificate_file:
            context = ssl.create_default_context(cafile=config.certificate_file or None)
            if config.client_certificate_file:
                context.load_cert_chain(config.client_certificate_file, config.client_key_file)
            self._ssl = context
        self._session: aiohttp.ClientSession | None = None

    async def send(self, payload: bytes) -> Outcome:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s), auto_decompress=True
            )
        body = gzip.compress(payload, compresslevel=5) if self.config.compression == "gzip" else payload
        try:
            async with self._session.post(
                self.config.endpoint, data=body, headers=self._headers, ssl=self._ssl
            ) as response:
                content = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            return Retryable(f"HTTP request failed: {type(error).__name__}: {error}")
        if 200 <= status < 300:
            try:
                partial = ExportLogsServiceResponse.FromString(content).partial_success
            except DecodeError:
                return Sent()  # a 2xx whose body is not a response: accepted, nothing more to learn
            return Sent(partial.rejected_log_records, partial.error_message)
        reason = f"HTTP {status}: {_status_message(content)}"
        if status in _RETRYABLE_HTTP:
            return Retryable(reason, _parse_retry_after(retry_after))
        return Permanent(reason, too_large=status == 413)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _status_message(content: bytes) -> str:
    try:
        return status_pb2.Status.FromString(content).message or content[:200].decode("utf-8", "replace")
    except DecodeError:
        return content[:200].decode("utf-8", "replace")


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
