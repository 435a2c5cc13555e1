"""OTLP/HTTP receiver: POST /v1/logs, protobuf or JSON, optionally gzip, answered in the request's encoding."""

from __future__ import annotations

from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .. import otlp_json
from ..intake import JSON, PROTOBUF, Intake, decompress
from ..pipeline import Stats
from ..security import TlsMaterial, TokenAuth
from ..status import RETRY_AFTER_S, TOO_LARGE, UNAUTHENTICATED, UNSUPPORTED, Rejected, rpc_status

_CONTENT_TYPES = {"application/x-protobuf": PROTOBUF, "application/json": JSON}
_EMPTY_RESPONSE = {
    PROTOBUF: ExportLogsServiceResponse().SerializeToString(),
    JSON: otlp_json.encode(ExportLogsServiceResponse()),
}
_EMPTY_TRACE_RESPONSE = {
    PROTOBUF: ExportTraceServiceResponse().SerializeToString(),
    JSON: otlp_json.encode(ExportTraceServiceResponse()),
}


class HttpReceiver:
    def __init__(
        self,
        intake: Intake,
        endpoint: str,
        max_request_bytes: int,
        max_decompressed_bytes: int,
        traces_as_evidence: bool = False,
        tls: TlsMaterial | None = None,
        auth: TokenAuth | None = None,
        shutdown_grace_s: float = 5.0,
    ):
        self.intake = intake
        # How long stop() lets in-flight requests finish; aiohttp's own default is 60 s, longer than
        # a pod's termination grace, so one stalled client could hold up the drain.
        self.shutdown_grace_s = shutdown_grace_s
        self.tls = tls
        self.auth = auth
        self.endpoint = endpoint
        self.max_request_bytes = max_request_bytes
        self.max_decompressed_bytes = max_decompressed_bytes
        self.app = web.Application(client_max_size=max_request_bytes)
        self.app.router.add_post("/v1/logs", self.logs)
        if traces_as_evidence:
            self.app.router.add_post("/v1/traces", self.traces)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        host, _, port = self.endpoint.rpartition(":")
        # auto_decompress off: aiohttp would inflate gzip without our decompressed-size limit.
        self.runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            auto_decompress=False,
            shutdown_timeout=self.shutdown_grace_s,
        )
        await self.runner.setup()
        site = web.TCPSite(
            self.runner,
            host.strip("[]"),
            int(port),
            backlog=1024,
            ssl_context=self.tls.server_context() if self.tls is not None else None,
        )
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for

    async def stop(self) -> None:
        """Stop listening; requests in flight get ``shutdown_grace_s`` to finish, then are cut off
        (unacknowledged, so their senders retry elsewhere)."""
        if self.runner is not None:
            await self.runner.shutdown()
            await self.runner.cleanup()

    async def logs(self, request: web.Request) -> web.Response:
        return await self._export(request, self.intake.accept, _logs_response)

    async def traces(self, request: web.Request) -> web.Response:
        return await self._export(request, self.intake.accept_spans, lambda result, encoding: _EMPTY_TRACE_RESPONSE[encoding])

    async def _export(self, request: web.Request, accept, response_body) -> web.Response:
        encoding = _CONTENT_TYPES.get(request.content_type, PROTOBUF)
        try:
            # Authentication first: nothing of the body is read or parsed for an unknown client.
            if self.auth is not None and not self.auth.allows(request.headers.get("Authorization")):
                raise Rejected(UNAUTHENTICATED, "missing or invalid bearer token")
            if request.content_type not in _CONTENT_TYPES:
                raise Rejected(
                    UNSUPPORTED,
                    f"unsupported Content-Type {request.content_type!r}; use application/x-protobuf or application/json",
                )
            if request.content_length is not None and request.content_length > self.max_request_bytes:
                raise Rejected(TOO_LARGE, f"body of {request.content_length} bytes exceeds the limit of {self.max_request_bytes}")
            # Refuse overload before reading the body, so refused requests cost no memory.
            self.intake.admit(request.content_length or 0)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise Rejected(TOO_LARGE, f"body exceeds the limit of {self.max_request_bytes} bytes") from None
            payload = decompress(
                body, request.headers.get("Content-Encoding", "").strip().lower(), self.max_decompressed_bytes
            )
            result = await accept(payload, encoding, "http")
        except Rejected as rejected:
            self.intake.refused("http", rejected)
            return _error_response(rejected, encoding)
        return web.Response(body=response_body(result, encoding), content_type=_content_type(encoding))


def _logs_response(stats: Stats, encoding: str) -> bytes:
    if not stats.rejected:
        return _EMPTY_RESPONSE[encoding]
    response = ExportLogsServiceResponse()
    response.partial_success.rejected_log_records = stats.rejected
    response.partial_success.error_message = stats.rejected_message
    return otlp_json.encode(response) if encoding == JSON else response.SerializeToString()


def _content_type(encoding: str) -> str:
    return "application/json" if encoding == JSON else "application/x-protobuf"


def _error_response(rejected: Rejected, encoding: str) -> web.Response:
    status = rpc_status(rejected)
    body = otlp_json.encode(status) if encoding == JSON else status.SerializeToString()
    headers = {"Retry-After": str(RETRY_AFTER_S)} if rejected.refusal.retryable else {}
    if rejected.refusal is UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return web.Response(
        status=rejected.refusal.http_status, body=body, content_type=_content_type(encoding), headers=headers
    )
