"""Shared by the in-process tests: build the pipeline the service builds, read golden files."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from processor import otlp_json
from processor.config import Config
from processor.pipeline import Pipeline
from processor.service import build_pipeline

TESTDATA = Path(__file__).parent / "testdata"
# The Auth0 SDK's error as the middleware logs it: what the built-in rule downgrades.
AUTH0 = 'Middleware error refreshing access token or session: { code: "ERR_MISSING_SESSION", name: "AccessTokenError" }'


def pipeline(**env: str) -> Pipeline:
    return build_pipeline(Config.from_env(env))


def load_request(path: Path) -> ExportLogsServiceRequest:
    return otlp_json.decode(path.read_bytes(), ExportLogsServiceRequest())


def attributes(record) -> dict:
    """A record's attributes as {key: python value} (first value per key)."""
    out = {}
    for kv in record.attributes:
        kind = kv.value.WhichOneof("value")
        out.setdefault(kv.key, getattr(kv.value, kind) if kind else None)
    return out


def records(request: ExportLogsServiceRequest | bytes) -> list:
    """The records of a request, decoded or serialized (what ``release_ready`` gives)."""
    if isinstance(request, bytes):
        request = ExportLogsServiceRequest.FromString(request)
    return [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
