"""The load sender: pre-serialized requests, a few in flight, over OTLP/gRPC or OTLP/HTTP protobuf.

Closed loop (as fast as the server acknowledges) for throughput, or open loop (one request every
``interval_s``, whatever the server does) for latency at a given rate.

Behaves like a well-mannered OTLP client: a refusal that OTLP calls retryable (gRPC UNAVAILABLE /
RESOURCE_EXHAUSTED, HTTP 429 / 502 / 503 / 504) is retried after a short pause and counted; any
other failure is counted and the request given up, so it shows as delivered < sent. Bounded in
attempts per request and in total time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import grpc

METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
GRPC = "grpc"
HTTP = "http/protobuf"
PROTOCOLS = (GRPC, HTTP)
RETRY_PAUSE_S = 0.05
MAX_ATTEMPTS = 200  # per request: 10 s of refusals at RETRY_PAUSE_S

_RETRYABLE_GRPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


@dataclass
class Sent:
    """What the sender saw: acknowledged requests, retries, and failures by reason."""

    acknowledged: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0  # time.monotonic()
    finished_at: float = 0.0  # last acknowledgement
    sent_at: dict[int, float] = field(default_factory=dict)  # payload index -> first attempt

    def failed(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


class _Retry(Exception):
    pass


async def _drive(
    call, payloads: list[bytes], concurrency: int, timeout_s: float, interval_s: float | None
) -> Sent:
    sent = Sent(started_at=time.monotonic())
    deadline = sent.started_at + timeout_s
    next_index = iter(range(len(payloads)))

    async def worker() -> None:
        for i in next_index:  # shared iterator: each request is taken by exactly one worker
            if interval_s is not None:  # open loop: request i leaves at its slot, whatever came back before
                await asyncio.sleep(max(0.0, sent.started_at + i * interval_s - time.monotonic()))
            sent.sent_at[i] = time.monotonic()
            for attempt in range(MAX_ATTEMPTS):
                if time.monotonic() > deadline:
                    sent.failed("bench deadline")
                    break
                try:
                    await call(payloads[i])
                except _Retry:
                    sent.retries += 1
                    await asyncio.sleep(RETRY_PAUSE_S)
                    continue
                except Exception as error:  # noqa: BLE001 - any failure is counted and shown in the table
                    sent.failed(f"{type(error).__name__}: {str(error)[:120]}")
                    break
                sent.acknowledged += 1
                sent.finished_at = time.monotonic()
                break
            else:
                sent.failed(f"still refused after {MAX_ATTEMPTS} attempts")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


async def send_grpc(
    target: str, payloads: list[bytes], concurrency: int, timeout_s: float, interval_s: float | None = None
) -> Sent:
    """Unary Export calls with the request bytes as they are (no serializer)."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        export = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

        async def call(payload: bytes) -> None:
            try:
                await export(payload, timeout=30)
            except grpc.aio.AioRpcError as error:
                if error.code() in _RETRYABLE_GRPC:
                    raise _Retry from None
                raise RuntimeError(f"gRPC {error.code().name}: {error.details()}") from None

        return await _drive(call, payloads, concurrency, timeout_s, interval_s)


async def send_http(
    url: str, payloads: list[bytes], concurrency: int, timeout_s: float, interval_s: float | None = None
) -> Sent:
    """POST /v1/logs with Content-Type application/x-protobuf, on kept-alive connections."""
    headers = {"Content-Type": "application/x-protobuf"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def call(payload: bytes) -> None:
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                if response.status in _RETRYABLE_HTTP:
                    raise _Retry
                if not 200 <= response.status < 300:
                    raise RuntimeError(f"HTTP {response.status}")

        return await _drive(call, payloads, concurrency, timeout_s, interval_s)


async def send(
    protocol: str,
    endpoint: str,
    payloads: list[bytes],
    concurrency: int,
    timeout_s: float,
    interval_s: float | None = None,
) -> Sent:
    """Send every payload: as fast as ``concurrency`` allows, or one every ``interval_s`` (open loop)."""
    if protocol == GRPC:
        return await send_grpc(endpoint, payloads, concurrency, timeout_s, interval_s)
    return await send_http(f"http://{endpoint}/v1/logs", payloads, concurrency, timeout_s, interval_s)
