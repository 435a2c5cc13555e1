"""Redaction: credential attributes and token-shaped text never leave the processor."""

from __future__ import annotations

import logging
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from processor.redact import MARKER, Redactor, parse_attributes, parse_patterns

from .conftest import attributes as attributes_of
from .conftest import wait_for

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
APPSESSION = "eyJ0eXAiOiJKV1Qi.some-session-value_123"
REDACTOR = Redactor()


def request_with(record: LogRecord) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.append(record)
    return request


def redacted(record: LogRecord, redactor: Redactor = REDACTOR) -> tuple[LogRecord, dict[str, int]]:
    request = request_with(record)
    counts: dict[str, int] = {}
    assert redactor.needed(request.SerializeToString())
    redactor.redact_request(request, counts)
    return request.resource_logs[0].scope_logs[0].log_records[0], counts


def text(value: str) -> AnyValue:
    return AnyValue(string_value=value)


def header(values: list[str]) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=[text(v) for v in values]))


class TestAttributes:
    @pytest.mark.parametrize(
        "key",
        [
            "http.request.header.cookie",
            "http.request.header.authorization",
            "http.request.header.set-cookie",
            "http.response.header.set-cookie",
            "http.request.header.x-api-key",
        ],
    )
    @pytest.mark.parametrize("shape", ["string", "array"])
    def test_credential_headers_replaced(self, key: str, shape: str) -> None:
        """Each default credential attribute loses its value(s), keeping its shape."""
        value = text("secret-value") if shape == "string" else header(["secret-1", "secret-2"])
        record, counts = redacted(LogRecord(attributes=[KeyValue(key=key, value=value)]))
        out = record.attributes[0].value
        if shape == "string":
            assert out.string_value == MARKER
        else:
            assert [v.string_value for v in out.array_value.values] == [MARKER, MARKER]
        assert counts == {"attribute": 1}

    def test_enrichment_and_other_attributes_untouched(self) -> None:
        """Only the listed keys change: triage.*, user agent and the rest stay as they were."""
        record = LogRecord(
            attributes=[
                KeyValue(key="triage.source", value=text("synthetic")),
                KeyValue(key="user_agent.original", value=text("Datadog/Synthetics")),
                KeyValue(key="http.request.header.cookie", value=header(["appSession=abc"])),
            ]
        )
        out, _ = redacted(record)
        assert attributes_of(out)["triage.source"] == "synthetic"
        assert attributes_of(out)["user_agent.original"] == "Datadog/Synthetics"


class TestPatterns:
    @pytest.mark.parametrize(
        ("body", "expected", "rule"),
        [
            # a JWT anywhere in text
            (f"token={JWT} end", f"token={MARKER} end", "jwt"),
            # Auth0's session cookie: the value goes, the name stays
            (f"cookie: appSession={APPSESSION}; theme=dark", f"cookie: appSession={MARKER}; theme=dark", "auth0-appsession"),
            # chunked session cookies
            ("appSession.0=part-one-abcdef; appSession.1=part-two", f"appSession.0={MARKER}; appSession.1={MARKER}", "auth0-appsession"),
            # a bearer token in a log line
            ("Authorization: Bearer abcdefgh12345678", f"Authorization: Bearer {MARKER}", "bearer"),
        ],
    )
    def test_string_body(self, body: str, expected: str, rule: str) -> None:
        """Token-shaped text inside a string body is replaced; the text around it stays."""
        out, counts = redacted(LogRecord(body=text(body)))
        assert out.body.string_value == expected
        assert counts[rule] >= 1

    def test_nested_map_body_and_attribute_values(self) -> None:
        """Strings inside map/array bodies and inside ordinary attributes are redacted too."""
        body = AnyValue(kvlist_value=KeyValueList(values=[
            KeyValue(key="req", value=AnyValue(kvlist_value=KeyValueList(values=[
                KeyValue(key="headers", value=header([f"Bearer {JWT}"]))]))),
        ]))
        record = LogRecord(body=body, attributes=[KeyValue(key="note", value=text(f"jwt {JWT}"))])
        out, _ = redacted(record)
        assert JWT not in out.SerializeToString().decode("utf-8", "replace")
        assert attributes_of(out)["note"] == f"jwt {MARKER}"

    def test_nothing_to_redact_is_byte_for_byte_unchanged(self) -> None:
        """A request with nothing secret is not even looked at, and stays identical."""
        record = LogRecord(body=text("GET /dashboard 200"), attributes=[KeyValue(key="url.path", value=text("/x"))])
        request = request_with(record)
        before = request.SerializeToString()
        assert not REDACTOR.needed(before)
        REDACTOR.redact_request(request, {})
        assert request.SerializeToString() == before


class TestConfiguration:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("default", None),  # None: exactly the defaults
            ("none", ()),
            ("default,x.session", "x.session"),  # defaults plus one
            ("default,-http.request.header.cookie", "-cookie"),  # defaults minus one
        ],
    )
    def test_attribute_lists(self, value: str, expected) -> None:
        """default / none / additions / removals."""
        keys = parse_attributes(value)
        if expected is None:
            assert "http.request.header.cookie" in keys and len(keys) == 6
        elif expected == ():
            assert keys == ()
        elif expected == "-cookie":
            assert "http.request.header.cookie" not in keys and len(keys) == 5
        else:
            assert keys[-1] == expected

    def test_patterns_json_adds_and_removes(self) -> None:
        """A JSON object adds patterns; null removes a default one."""
        patterns = dict(parse_patterns('{"stripe": "sk_live_[0-9A-Za-z]{8,}", "bearer": null}'))
        assert "stripe" in patterns and "bearer" not in patterns and "jwt" in patterns
        out, counts = redacted(LogRecord(body=text("key sk_live_abcdefgh12")), Redactor((), tuple(patterns.items())))
        assert out.body.string_value == f"key {MARKER}" and counts == {"stripe": 1}

    @pytest.mark.parametrize("value", ['{"x": "("}', "[1]", "not json", '{"x": 3}'])
    def test_bad_patterns_refused(self, value: str) -> None:
        """A broken pattern list is refused with what would be valid."""
        with pytest.raises(ValueError):
            parse_patterns(value)


_SAFE_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " :;,/", max_size=40)
_B64URL = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=5, max_size=30)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(before=_SAFE_TEXT, after=_SAFE_TEXT, parts=st.tuples(_B64URL, _B64URL, _B64URL))
def test_property_jwt_never_survives(before: str, after: str, parts: tuple[str, str, str]) -> None:
    """For any text around a JWT-shaped token, the token is gone and the text around it is kept."""
    token = "eyJ" + ".".join(parts)
    body = f"{before} {token} {after}"
    out, _ = redacted(LogRecord(body=text(body)))
    assert token not in out.body.string_value
    assert out.body.string_value.startswith(before) and out.body.string_value.endswith(after)


def test_sdk_records_arrive_redacted(processor, sink) -> None:
    """End to end with the OTel SDK as the client: the sink never sees the secrets, enrichment stays."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    proc = processor(sink)
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=proc.http_url)))
    logger = logging.getLogger("redaction-e2e")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=provider))
    logger.warning(
        "request with session appSession=%s and %s",
        APPSESSION,
        JWT,
        extra={
            "http.request.header.cookie": [f"appSession={APPSESSION}"],
            "http.request.header.authorization": [f"Bearer {JWT}"],
            "user_agent.original": "Datadog/Synthetics",
        },
    )
    provider.shutdown()
    wait_for(lambda: sink.records(), 15, "the record at the sink")
    [record] = sink.records()
    wire = record.SerializeToString()
    assert JWT.encode() not in wire and APPSESSION.encode() not in wire
    got = attributes_of(record)
    assert got["triage.source"] == "synthetic"  # classified before redaction
    assert got["http.request.header.authorization"] == [MARKER]
    metrics = proc.metrics()
    assert metrics['triage_redactions_total{rule="attribute"}'] == 2
    assert metrics['triage_redactions_total{rule="jwt"}'] >= 1
