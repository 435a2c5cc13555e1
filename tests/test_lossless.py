"""Everything except the enrichment and downgrade leaves the pipeline byte-for-byte equal."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from processor import otlp_json

from .helpers import pipeline, records

ADDED_PREFIXES = ("triage.", "user_agent.synthetic.type")


def every_value_type() -> list[KeyValue]:
    return [
        KeyValue(key="s", value=AnyValue(string_value="text ünïcode")),
        KeyValue(key="b", value=AnyValue(bool_value=True)),
        KeyValue(key="i", value=AnyValue(int_value=-(2**63))),
        KeyValue(key="d", value=AnyValue(double_value=1.5e-300)),
        KeyValue(key="y", value=AnyValue(bytes_value=b"\x00\xff\x10")),
        KeyValue(
            key="a",
            value=AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="x")])),
        ),
        KeyValue(
            key="k",
            value=AnyValue(
                kvlist_value=KeyValueList(values=[KeyValue(key="nested", value=AnyValue(double_value=2.0))])
            ),
        ),
        KeyValue(key="empty", value=AnyValue()),
    ]


def full_request() -> ExportLogsServiceRequest:
    """A request with every field of every level set, including the Auth0 case that gets downgraded."""
    trace = bytes.fromhex("5b8efff798038103d269b633813fc60c")
    record_fields = dict(
        observed_time_unix_nano=1_700_000_000_000_000_001,
        dropped_attributes_count=3,
        flags=1,
        trace_id=trace,
        span_id=bytes.fromhex("eee19b7ec3c1b174"),
        event_name="http.access",
    )
    access = LogRecord(
        time_unix_nano=1_700_000_000_000_000_000,
        severity_number=9,
        severity_text="INFO",
        body=AnyValue(kvlist_value=KeyValueList(values=every_value_type())),
        attributes=every_value_type() + [KeyValue(key="user_agent.original", value=AnyValue(string_value="Datadog/Synthetics"))],
        **record_fields,
    )
    error = LogRecord(
        time_unix_nano=1_700_000_000_100_000_000,
        severity_number=17,
        severity_text="ERROR",
        body=AnyValue(string_value='AccessTokenError { code: "ERR_MISSING_SESSION" }'),
        attributes=every_value_type(),
        **record_fields,
    )
    plain = LogRecord(body=AnyValue(bytes_value=b"\x01binary body"))  # a record with almost nothing set
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=every_value_type(), dropped_attributes_count=7),
                schema_url="https://opentelemetry.io/schemas/1.26.0",
                scope_logs=[
                    ScopeLogs(
                        scope=InstrumentationScope(
                            name="scope", version="1.2.3", attributes=every_value_type(), dropped_attributes_count=2
                        ),
                        schema_url="https://opentelemetry.io/schemas/1.25.0",
                        log_records=[access, error, plain],
                    ),
                    ScopeLogs(scope=InstrumentationScope(name="second-scope")),
                ],
            ),
            ResourceLogs(resource=Resource(), scope_logs=[ScopeLogs(log_records=[LogRecord(severity_number=21)])]),
        ]
    )


def strip_triage(request: ExportLogsServiceRequest) -> ExportLogsServiceRequest:
    """Undo exactly what the contract allows the processor to change."""
    out = ExportLogsServiceRequest()
    out.CopyFrom(request)
    for record in records(out):
        original = {kv.key: kv.value for kv in record.attributes}
        if "triage.original_severity_number" in original:
            record.severity_number = original["triage.original_severity_number"].int_value
            record.severity_text = original["triage.original_severity_text"].string_value
        kept = [kv for kv in record.attributes if not kv.key.startswith(ADDED_PREFIXES)]
        del record.attributes[:]
        record.attributes.extend(kept)
    return out


def test_round_trip_is_byte_for_byte_except_the_contract() -> None:
    """Resource/scope grouping, schema urls, ids, timestamps, flags, every value type survive unchanged."""
    original = full_request()
    wire = original.SerializeToString()
    processed = ExportLogsServiceRequest.FromString(wire)
    stats = pipeline().process(processed)
    assert stats.downgraded == {"auth0-missing-session": 1}
    assert processed.SerializeToString() != wire  # something was added ...
    assert strip_triage(processed).SerializeToString() == wire  # ... and nothing else changed


def test_round_trip_through_otlp_json_is_lossless() -> None:
    """OTLP/JSON decode(encode(x)) == x for every field, including hex ids and bytes values."""
    original = full_request()
    decoded = otlp_json.decode(otlp_json.encode(original), ExportLogsServiceRequest())
    assert decoded.SerializeToString() == original.SerializeToString()
