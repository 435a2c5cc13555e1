"""OTLP/JSON decoding follows the OTLP rules, not protobuf's default JSON mapping."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from processor import otlp_json

from .helpers import records


def decode(text: str) -> ExportLogsServiceRequest:
    return otlp_json.decode(text.encode(), ExportLogsServiceRequest())


def one_record(fields: str) -> str:
    return '{"resourceLogs":[{"scopeLogs":[{"logRecords":[{' + fields + "}]}]}]}"


class TestDecode:
    def test_hex_ids(self) -> None:
        """traceId and spanId are hex in OTLP/JSON (protobuf's mapping would read base64)."""
        record = records(decode(one_record('"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"')))[0]
        assert record.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
        assert record.span_id.hex() == "eee19b7ec3c1b174"

    @pytest.mark.parametrize(
        "value",
        [
            '"1700000000000000000"',  # int64 as a decimal string
            "1700000000000000000",  # int64 as a number
        ],
    )
    def test_int64_as_string_or_number(self, value: str) -> None:
        """Both spellings of int64 decode to the same timestamp."""
        record = records(decode(one_record(f'"timeUnixNano":{value}')))[0]
        assert record.time_unix_nano == 1700000000000000000

    def test_integer_enums_and_unknown_fields(self) -> None:
        """Enums as integers are read; fields this version does not know are ignored."""
        record = records(decode(one_record('"severityNumber":17,"someFutureField":{"x":1}')))[0]
        assert record.severity_number == 17

    def test_snake_case_keys_accepted(self) -> None:
        """Proto field names are accepted as well as lowerCamelCase."""
        record = records(decode(one_record('"severity_number":13,"severity_text":"WARN"')))[0]
        assert (record.severity_number, record.severity_text) == (13, "WARN")

    @pytest.mark.parametrize(
        ("payload", "says"),
        [
            ("{not json", "malformed JSON"),  # syntax error
            ("[1,2]", "top level"),  # not an object
            (one_record('"traceId":"zz"'), "traceId"),  # bad hex
            (one_record('"traceId":"abcd"'), "32 hex digits"),  # wrong id length
            (one_record('"timeUnixNano":"soon"'), "invalid OTLP/JSON"),  # not an int64
            ('{"resourceLogs":"nope"}', "invalid OTLP/JSON"),  # wrong type
        ],
    )
    def test_errors_say_what_is_wrong(self, payload: str, says: str) -> None:
        """Every malformed payload raises JsonError naming the problem."""
        with pytest.raises(otlp_json.JsonError, match=says):
            decode(payload)

    def test_deep_nesting_is_refused(self) -> None:
        """A pathological nesting depth is refused with a message, not a RecursionError."""
        deep = '{"a":' * 5000 + "1" + "}" * 5000
        with pytest.raises(otlp_json.JsonError):
            decode(deep)


def test_encode_writes_hex_ids_and_integer_enums() -> None:
    """The stdout exporter's output is OTLP/JSON a Collector would accept."""
    request = decode(one_record('"traceId":"5b8efff798038103d269b633813fc60c","severityNumber":17'))
    text = otlp_json.encode(request).decode()
    assert '"traceId":"5b8efff798038103d269b633813fc60c"' in text
    assert '"severityNumber":17' in text
