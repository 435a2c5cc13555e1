"""How every refusal maps to OTLP status codes, gRPC and HTTP, in one place.

OTLP rules (opentelemetry-proto docs/specification.md): bad data is not retryable (400 /
INVALID_ARGUMENT); overload is retryable and carries a retry hint (503 + Retry-After /
UNAVAILABLE + RetryInfo) — never RESOURCE_EXHAUSTED without RetryInfo, which makes clients drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True)
class Refusal:
    reason: str  # metric label
    grpc_code: grpc.StatusCode
    http_status: int
    retryable: bool


INVALID = Refusal("invalid", grpc.StatusCode.INVALID_ARGUMENT, 400, False)  # Not retryable: bad data.
TOO_LARGE = Refusal("too_large", grpc.StatusCode.INVALID_ARGUMENT, 413, False)  # Not retryable: same bytes, same answer.
UNSUPPORTED = Refusal("unsupported", grpc.StatusCode.UNIMPLEMENTED, 415, False)  # Not retryable: wrong content type.
UNAUTHENTICATED = Refusal("unauthenticated", grpc.StatusCode.UNAUTHENTICATED, 401, False)  # Not retryable.
OVERLOADED = Refusal("overloaded", grpc.StatusCode.UNAVAILABLE, 503, True)  # Retryable, with a hint.
SHUTTING_DOWN = Refusal("shutting_down", grpc.StatusCode.UNAVAILABLE, 503, True)  # Retryable: another replica.

RETRY_AFTER_S = 1


class Rejected(Exception):
    """A request refused; ``str(self)`` is the message the client sees."""

    def __init__(self, refusal: Refusal, message: str):
        super().__init__(message)
        self.refusal = refusal
        self.message = message


_GRPC_TO_RPC_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED: code_pb2.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
}


def rpc_status(rejected: Rejected) -> status_pb2.Status:
    """The google.rpc.Status an OTLP error response carries (HTTP body, gRPC status details)."""
    status = status_pb2.Status(code=_GRPC_TO_RPC_CODE[rejected.refusal.grpc_code], message=rejected.message)
    if rejected.refusal.retryable:
        detail = any_pb2.Any()
        detail.Pack(retry_info())
        status.details.append(detail)
    return status


def retry_info() -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=RETRY_AFTER_S))


def grpc_trailers(rejected: Rejected) -> tuple[tuple[str, bytes], ...]:
    trailers = [("grpc-status-details-bin", rpc_status(rejected).SerializeToString())]
    if rejected.refusal.retryable:
        # The key the OTel SDK exporters (and grpc's retry support) read the delay from.
        trailers.append(("google.rpc.retryinfo-bin", retry_info().SerializeToString()))
    return tuple(trailers)
