"""End to end with real parts: the OTel Python SDK as the client, the processor as a process, a real sink.

Classification, enrichment and the downgrade are checked on what the sink (or stdout) actually
receives; the expectations are derived from what each test sent.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter

import pytest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from .conftest import (
    GrpcClient,
    Processor,
    Sink,
    attributes,
    export_request,
    http_get,
    http_post,
    log_record,
    records_of,
    wait_for,
)

# Node's console.error(err) of the Auth0 Next.js SDK v3 error (util.inspect: name, message, stack, code).
AUTH0_ERROR = (
    "AccessTokenError: The user does not have a valid session.\n"
    "    at getAccessToken (/app/node_modules/@auth0/nextjs-auth0/dist/session/get-access-token.js:31:19)\n"
    "    at async Page (/app/.next/server/app/dashboard/page.js:1:3021) {\n"
    "  code: 'ERR_MISSING_SESSION'\n"
    "}"
)
DATADOG_UA = "Datadog/Synthetics"
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
KUBE_PROBE_UA = "kube-probe/1.30"
RULE = "auth0-missing-session"
ERROR, DEBUG, INFO = 17, 5, 9


# --- the OTel SDK as the client ------------------------------------------------------------------------


def sdk_exporter(client: str, proc: Processor):
    """The SDK's own OTLP log exporter for ``client`` ("grpc" / "http", "+gzip" for compression)."""
    protocol, _, compression = client.partition("+")
    if protocol == "grpc":
        from grpc import Compression
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter(
            endpoint=proc.grpc_endpoint,
            insecure=True,
            timeout=10,
            compression=Compression.Gzip if compression else Compression.NoCompression,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter(
        endpoint=proc.http_url,
        timeout=10,
        compression=Compression.Gzip if compression else Compression.NoCompression,
    )


class Recording(LogRecordExporter):
    """The SDK exporter, remembering each export's result (the SDK only logs a failure)."""

    def __init__(self, inner: LogRecordExporter):
        self.inner = inner
        self.results: list[LogRecordExportResult] = []

    def export(self, batch):
        result = self.inner.export(batch)
        self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def emit_two_traces(client: str, proc: Processor) -> tuple[bytes, bytes]:
    """Through ``logging``: a Datadog Synthetics trace and a Chrome user's trace, each an access log
    and the Auth0 error, in one export request. Returns (monitor trace id, user trace id)."""
    provider = LoggerProvider(resource=Resource.create({"service.name": "e2e-web"}))
    # One batch, flushed explicitly: both records of a trace travel in the same request.
    exporter = Recording(sdk_exporter(client, proc))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, schedule_delay_millis=60_000))
    tracer = TracerProvider().get_tracer("e2e")
    logger = logging.getLogger(f"e2e.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    trace_ids = []
    try:
        for user_agent in (DATADOG_UA, CHROME_UA):
            with tracer.start_as_current_span("GET /dashboard") as span:
                logger.info(
                    "GET /dashboard 307", extra={"user_agent.original": user_agent, "url.path": "/dashboard"}
                )
                logger.error(AUTH0_ERROR)
                trace_ids.append(span.get_span_context().trace_id.to_bytes(16, "big"))
        assert provider.force_flush(20_000), "the SDK could not flush its batch"
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    assert exporter.results == [LogRecordExportResult.SUCCESS], (
        "the processor refused the SDK's export (see log)"
    )
    return trace_ids[0], trace_ids[1]


CLIENT_BACKEND = [
    (client, backend) for client in ("grpc", "http") for backend in ("grpc", "http/protobuf")
] + [
    ("grpc+gzip", "grpc"),  # compressed both ways: SDK -> processor and processor -> sink
    ("http+gzip", "http/protobuf"),  # the OTel Collector's otlphttp exporter sends gzip by default
]


@pytest.mark.parametrize(("client", "backend"), CLIENT_BACKEND)
def test_sdk_monitor_error_is_downgraded_and_user_error_kept(
    client: str, backend: str, sink: Sink, processor
):
    """The synthetic trace's Auth0 error arrives as DEBUG with its evidence; the user's stays ERROR."""
    compression = {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"} if "gzip" in client else {}
    proc = processor(sink=sink, protocol=backend, **compression)
    monitor_trace, user_trace = emit_two_traces(client, proc)

    wanted = {monitor_trace, user_trace}
    arrived = sink.wait_records(4, lambda r: r.trace_id in wanted)
    assert len(arrived) == 4
    by_trace_and_body = {(r.trace_id, r.body.string_value.startswith("AccessTokenError")): r for r in arrived}
    monitor_access = by_trace_and_body[monitor_trace, False]
    monitor_error = by_trace_and_body[monitor_trace, True]
    user_access = by_trace_and_body[user_trace, False]
    user_error = by_trace_and_body[user_trace, True]

    access = attributes(monitor_access)
    assert monitor_access.severity_number == INFO
    assert access["triage.source"] == "synthetic"
    assert access["triage.source.name"] == "datadog-synthetics"
    assert DATADOG_UA in access["triage.source.evidence"]
    assert access["user_agent.synthetic.type"] == "test"

    error = attributes(monitor_error)
    assert monitor_error.body.string_value == AUTH0_ERROR  # the body is untouched
    assert (monitor_error.severity_number, monitor_error.severity_text) == (DEBUG, "DEBUG")
    assert error["triage.rule"] == RULE
    assert error["triage.original_severity_number"] == ERROR
    assert error["triage.original_severity_text"] == "ERROR"
    assert error["triage.source"] == "synthetic"
    assert error["triage.source.evidence"].startswith("same trace")
    assert DATADOG_UA in error["triage.source.evidence"]

    assert attributes(user_access)["triage.source"] == "user"
    kept = attributes(user_error)
    assert (user_error.severity_number, user_error.severity_text) == (ERROR, "ERROR")
    assert kept["triage.source"] == "user"
    assert "triage.rule" not in kept and "triage.original_severity_number" not in kept
    assert "user_agent.synthetic.type" not in kept

    metrics = proc.metrics()
    transport = "grpc" if client.startswith("grpc") else "http"
    assert metrics[f'triage_records_received_total{{transport="{transport}"}}'] == 4
    assert metrics[f'triage_records_downgraded_total{{rule="{RULE}"}}'] == 1


# --- stdout mode ---------------------------------------------------------------------------------------


def readme_request(trace_id: str, user_agent: str) -> bytes:
    """The README's curl example (an access log and the Auth0 error of one trace) as OTLP/JSON."""
    access = {
        "timeUnixNano": "1700000000000000000",
        "severityNumber": 9,
        "severityText": "INFO",
        "body": {"stringValue": "GET /dashboard 307"},
        "traceId": trace_id,
        "spanId": "eee19b7ec3c1b174",
        "attributes": [
            {"key": "user_agent.original", "value": {"stringValue": user_agent}},
            {"key": "url.path", "value": {"stringValue": "/dashboard"}},
        ],
    }
    error = {
        "timeUnixNano": "1700000000100000000",
        "severityNumber": 17,
        "severityText": "ERROR",
        "body": {
            "stringValue": "Middleware error refreshing access token or session: "
            '{ code: "ERR_MISSING_SESSION", name: "AccessTokenError", '
            'message: "The user does not have a valid session." }'
        },
        "traceId": trace_id,
        "spanId": "eee19b7ec3c1b174",
    }
    return json.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
                    "scopeLogs": [{"scope": {"name": "next"}, "logRecords": [access, error]}],
                }
            ]
        }
    ).encode()


def json_records(line: str) -> list[dict]:
    document = json.loads(line)
    return [r for rl in document["resourceLogs"] for sl in rl["scopeLogs"] for r in sl["logRecords"]]


def json_attributes(record: dict) -> dict:
    return {kv["key"]: next(iter(kv["value"].values()), None) for kv in record.get("attributes", [])}


def test_stdout_mode_prints_one_otlp_json_line_per_request(processor):
    """Without a backend, each request is one OTLP/JSON line on stdout, already triaged."""
    proc = processor()  # no OTEL_EXPORTER_OTLP_ENDPOINT
    sent = [(os.urandom(16).hex(), DATADOG_UA), (os.urandom(16).hex(), CHROME_UA)]
    for count, (trace_id, user_agent) in enumerate(sent, 1):
        status, headers, body = http_post(
            proc.http_url, readme_request(trace_id, user_agent), "application/json"
        )
        assert status == 200, body
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == {}  # an empty ExportLogsServiceResponse, in the request's encoding
        wait_for(lambda n=count: len(proc.stdout_lines()) >= n, 10, f"{count} line(s) on stdout")

    assert proc.terminate() == 0
    lines = proc.stdout_lines()
    assert len(lines) == len(sent)
    for line, (trace_id, user_agent) in zip(lines, sent, strict=True):
        access, error = json_records(line)
        assert access["traceId"] == error["traceId"] == trace_id  # hex ids, as OTLP/JSON says
        if user_agent == DATADOG_UA:
            assert (error["severityNumber"], error["severityText"]) == (DEBUG, "DEBUG")
            assert json_attributes(error)["triage.rule"] == RULE
            assert int(json_attributes(error)["triage.original_severity_number"]) == ERROR
            assert json_attributes(error)["triage.source.evidence"] == (
                f"same trace: user_agent.original contains '{DATADOG_UA}'"
            )
        else:
            assert (error["severityNumber"], error["severityText"]) == (ERROR, "ERROR")
            assert json_attributes(error)["triage.source"] == "user"
            assert "triage.rule" not in json_attributes(error)


def test_stdout_mode_answers_health_checks_while_it_prints_a_large_request(processor):
    """Printing is Python (json_format: ~150 µs per record): a 16,000-record request took ~2.5 s to
    print, and in the event loop it held health checks and every other client for all of it."""
    import time

    proc = processor()
    fields = {f"app.attribute_{n}": f"value {n}" for n in range(8)}
    request = export_request(*(log_record(f"record {i}", **fields) for i in range(16_000)))
    assert http_post(proc.http_url, request.SerializeToString())[0] == 200

    def printed() -> bool:  # all of it (the exporter cuts it in two: enriched, it is over 4 MiB)
        out = proc.stdout_path.read_bytes()
        return out.endswith(b"\n") and out.count(b'"stringValue":"record ') == 16_000

    started = time.monotonic()
    answered = []
    while not printed():
        assert http_get(proc.admin_url + "/healthz", timeout=60)[0] == 200
        answered.append(time.monotonic())
        assert answered[-1] - started < 60, "the request was not printed within a minute"
    finished = time.monotonic()
    gaps = [later - earlier for earlier, later in zip([started, *answered], [*answered, finished])]
    assert max(gaps) < 0.5 * (finished - started), (max(gaps), finished - started, len(answered))
    assert sum(len(json_records(line)) for line in proc.stdout_lines()) == 16_000


# --- metrics agree with the traffic --------------------------------------------------------------------

# One trace per row: the evidence its access log carries, the source that evidence means, and how many
# Auth0 errors (without evidence of their own) follow in the same trace.
TRAFFIC = [
    ({"user_agent__original": DATADOG_UA}, "synthetic", 2),
    ({"http__request__header__x-datadog-origin": ["synthetics"]}, "synthetic", 1),  # marker header only
    ({"user_agent__original": KUBE_PROBE_UA}, "probe", 1),
    ({"user_agent__original": CHROME_UA}, "user", 3),
    ({}, "unknown", 1),  # no evidence at all
]
DOWNGRADED_SOURCES = {"synthetic", "probe"}  # the default TRIAGE_DOWNGRADE_SOURCES


def test_metrics_count_what_was_sent(sink: Sink, processor):
    """By-source, received and downgraded counters match the traffic sent over both transports."""
    proc = processor(sink=sink, protocol="grpc")
    grpc_client = GrpcClient(proc.grpc_endpoint)
    expected_sources: Counter[str] = Counter()
    expected_downgraded = 0
    sent = {"grpc": 0, "http": 0}
    try:
        for i, (evidence, source, errors) in enumerate(TRAFFIC):
            trace_id = os.urandom(16)
            records = [log_record("GET /dashboard 307", INFO, trace_id, **evidence)]
            records += [log_record(AUTH0_ERROR, ERROR, trace_id) for _ in range(errors)]
            payload = export_request(*records).SerializeToString()
            transport = ("grpc", "http")[i % 2]
            if transport == "grpc":
                assert grpc_client.call(payload)[0].name == "OK"
            else:
                assert http_post(proc.http_url, payload)[0] == 200
            sent[transport] += len(records)
            expected_sources[source] += len(records)
            if source in DOWNGRADED_SOURCES:
                expected_downgraded += errors
    finally:
        grpc_client.close()

    total = sum(sent.values())
    sink.wait_records(total)
    # The sink stores a request before the processor has read the answer and counted it.
    metrics = wait_for(
        lambda: (m := proc.metrics()).get("triage_records_forwarded_total") == total and m,
        10,
        "forwarded to settle",
    )
    for source, count in expected_sources.items():
        assert metrics[f'triage_records_by_source_total{{source="{source}"}}'] == count, source
    for transport, count in sent.items():
        assert metrics[f'triage_records_received_total{{transport="{transport}"}}'] == count
    assert metrics[f'triage_records_downgraded_total{{rule="{RULE}"}}'] == expected_downgraded

    arrived = sink.records()
    assert Counter(attributes(r)["triage.source"] for r in arrived) == expected_sources
    assert sum(1 for r in arrived if attributes(r).get("triage.rule") == RULE) == expected_downgraded
    assert all(r.severity_number == DEBUG for r in arrived if "triage.rule" in attributes(r))


# --- trace correlation across requests ---------------------------------------------------------------------


def test_error_waits_for_evidence_from_a_later_request(sink: Sink, processor):
    """The Auth0 error arrives first (HTTP), its trace's Datadog access log after (gRPC): the held
    error is released as soon as the evidence comes — not at the end of the window — and downgraded."""
    window_s = 30
    proc = processor(sink=sink, TRIAGE_CORRELATION_WINDOW=str(window_s))
    trace_id = os.urandom(16)
    error = export_request(log_record(AUTH0_ERROR, ERROR, trace_id)).SerializeToString()
    assert http_post(proc.http_url, error)[0] == 200
    wait_for(lambda: proc.metrics().get("triage_held_records") == 1, 5, "the error to be held")
    assert not sink.records(), "the error was forwarded before its trace's evidence came"

    access = export_request(log_record("GET /dashboard 307", INFO, trace_id, user_agent__original=DATADOG_UA))
    client = GrpcClient(proc.grpc_endpoint)
    try:
        assert client.call(access.SerializeToString())[0].name == "OK"
    finally:
        client.close()
    arrived = sink.wait_records(1, lambda r: r.body.string_value == AUTH0_ERROR, timeout=window_s / 3)
    (downgraded,) = arrived
    assert downgraded.trace_id == trace_id
    assert downgraded.severity_number == DEBUG
    kept = attributes(downgraded)
    assert kept["triage.rule"] == RULE
    assert kept["triage.original_severity_number"] == ERROR
    assert kept["triage.source"] == "synthetic"
    assert kept["triage.source.evidence"].startswith("same trace")
    # The access log and the error it freed went to the backend in one export request.
    (together,) = sink.stored()
    assert [r.body.string_value for r in records_of(together)] == ["GET /dashboard 307", AUTH0_ERROR]
