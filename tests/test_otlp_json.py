"""OTLP/JSON decoding follows the OTLP rules, not protobuf's default JSON mapping."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


@pytest.mark.parametrize(
    "document, refused",
    [
        ('{"resourceLogs":[' + ",".join(["{}"] * 11) + "]}", "ResourceLogs and ScopeLogs"),
        ('{"resource_logs":[{"scopeLogs":[' + ",".join(["{}"] * 10) + "]}]}", "ResourceLogs and ScopeLogs"),
        ('{"resourceLogs":[{"scope_logs":[{"logRecords":[' + ",".join(["{}"] * 6) + '],"log_records":[' + ",".join(["{}"] * 5) + "]}]}]}", "log records"),
        ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[' + ",".join(["{}"] * 10) + "]}]}]}", None),
    ],
)
def test_json_requests_over_the_limits_are_refused_before_any_message_is_built(monkeypatch, document: str, refused) -> None:
    """The walk's limits (TRIAGE_MAX_RECORDS_PER_REQUEST records, as many ResourceLogs and ScopeLogs)
    on an OTLP/JSON logs request, counted in the parsed document (both spellings of each field)
    before json_format builds anything: it is pure Python, 3.4 s for a million empty ScopeLogs."""
    from processor.intake import JSON, Intake, Limits
    from processor.metrics import Metrics
    from processor.queue import BoundedQueue
    from processor.status import Rejected

    from .helpers import pipeline

    intake = Intake(pipeline(), BoundedQueue(1 << 30), Metrics(), 1 << 30, Limits(max_records=10))
    built = []
    parse, fast = otlp_json.json_format.ParseDict, otlp_json._fast
    monkeypatch.setattr(otlp_json.json_format, "ParseDict", lambda *a, **k: built.append(1) or parse(*a, **k))
    monkeypatch.setattr(otlp_json, "_fast", lambda *a: built.append(1) or fast(*a))
    if refused is None:
        assert len(records(Intake.decode(document.encode(), JSON, check=intake._count_json))) == 10
        assert built
        return
    with pytest.raises(Rejected, match=f"more than 10 {refused}.*TRIAGE_MAX_RECORDS_PER_REQUEST"):
        Intake.decode(document.encode(), JSON, check=intake._count_json)
    assert not built


def _golden_documents() -> bytes:
    """Every golden input's records in one OTLP/JSON request, repeated to a few hundred kilobytes."""
    from pathlib import Path

    from .helpers import load_request

    request = ExportLogsServiceRequest()
    for path in sorted((Path(__file__).parent / "testdata" / "golden").glob("input/*.json")):
        request.MergeFrom(load_request(path))
    while request.ByteSize() < 200_000:
        request.resource_logs.extend(list(request.resource_logs))
    return otlp_json.encode(request)


@pytest.mark.parametrize(
    "shape",
    ["otlp", "empty objects", "empty arrays", "numbers", "short strings", "small objects", "nested arrays"],
)
def test_parsed_size_estimates_the_documents_memory(shape: str) -> None:
    """The estimate the intake refuses oversized OTLP/JSON bodies by is near what orjson's document
    really takes (tracemalloc's peak), for OTLP requests and for the tiny objects that cost the most."""
    import tracemalloc

    import orjson

    n = 50_000
    items = {
        "empty objects": lambda i: "{}",
        "empty arrays": lambda i: "[]",
        "numbers": lambda i: str(i),
        "short strings": lambda i: f'"{i}"',
        "small objects": lambda i: f'{{"k{i % 7}":{{"stringValue":"v{i}"}}}}',
        "nested arrays": lambda i: "[[[]]]",
    }
    payload = _golden_documents() if shape == "otlp" else ('{"a":[' + ",".join(map(items[shape], range(n))) + "]}").encode()
    tracemalloc.start()
    try:
        document = orjson.loads(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del document
    assert 0.65 * peak <= otlp_json.parsed_size(payload) <= 1.5 * peak
    assert otlp_json.parsed_size(payload) <= otlp_json.MAX_COST_PER_BYTE * len(payload)


# --- the fast path against json_format -------------------------------------------------------------------

def _mostly(valid, odd):
    """``valid`` but about one time in 40: documents as exporters write them, with the odd value
    somewhere (a document has a few dozen values: about half take the fast path)."""
    return st.integers(0, 39).flatmap(lambda n: odd if n == 17 else valid)


_odd_integer = st.one_of(
    st.integers(min_value=-(1 << 65), max_value=1 << 65),
    st.integers(min_value=0, max_value=1 << 64).map(str),
    st.sampled_from(["-5", "+5", " 5", "1_000", "007", "1e3", "", "٣", None, True, 1.0, 1.5]),
)
_uint32 = st.integers(0, (1 << 31) - 1)
_integer = _mostly(st.one_of(_uint32, _uint32.map(str)), _odd_integer)
_int64 = _mostly(
    st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, (1 << 63) - 1).map(str)), _odd_integer
)
_text = _mostly(st.text(max_size=8), st.one_of(st.integers(), st.none(), st.booleans()))


def _hex_id(length: int):
    exact = st.binary(min_size=length, max_size=length).map(bytes.hex)
    damaged = st.text("0123456789abcdef xyz", max_size=2 * length + 2)
    odd = st.one_of(exact.map(str.upper), damaged, st.integers())
    return _mostly(exact, odd)


def _any_value(children):
    scalar = st.one_of(
        st.builds(lambda v: {"stringValue": v}, _text),
        st.builds(lambda v: {"boolValue": v}, _mostly(st.booleans(), st.sampled_from([0, 1, "true", None]))),
        st.builds(lambda v: {"intValue": v}, _int64),
        st.builds(
            lambda v: {"doubleValue": v},
            _mostly(
                st.floats(allow_nan=False, allow_infinity=False),
                st.one_of(st.integers(), st.sampled_from(["NaN", "Infinity", "1.5", None])),
            ),
        ),
    )
    composite = st.one_of(
        st.builds(lambda values: {"arrayValue": {"values": values}}, st.lists(children, max_size=3)),
        st.builds(
            lambda values: {"kvlistValue": {"values": values}}, st.lists(_key_value(children), max_size=3)
        ),
    )
    odd = st.sampled_from(
        [
            {},
            {"arrayValue": {}},
            {"stringValue": "a", "boolValue": True},
            {"bytesValue": "AAE="},
            {"string_value": "a"},
            {"x": 1},
            None,
        ]
    )
    return st.one_of(_mostly(scalar, odd), composite)  # composite as is: st.recursive must see it use children


def _key_value(values):
    valid = st.fixed_dictionaries({"key": _text, "value": values})
    odd = st.fixed_dictionaries({}, optional={"key": _text, "value": values, "junk": st.none()})
    return _mostly(valid, odd)


_values = st.recursive(_any_value(st.just({"stringValue": "leaf"})), _any_value, max_leaves=6)
_attributes = _mostly(st.lists(_key_value(_values), max_size=4), st.sampled_from([{}, None, [None]]))
_records = st.fixed_dictionaries(
    {},
    optional={
        "timeUnixNano": _int64,
        "observedTimeUnixNano": _int64,
        "severityNumber": _mostly(
            st.integers(0, 24),
            st.one_of(st.integers(-5, 1 << 33), st.sampled_from(["SEVERITY_NUMBER_INFO", "9"])),
        ),
        "severityText": _text,
        "body": _values,
        "attributes": _attributes,
        "droppedAttributesCount": _integer,
        "flags": _integer,
        "traceId": _hex_id(16),
        "spanId": _hex_id(8),
        "eventName": _text,
    },
).flatmap(
    lambda record: _mostly(
        st.just(record),
        st.sampled_from([{"time_unix_nano": 1}, {"unknownField": 1}]).map(lambda odd: {**record, **odd}),
    )
)
_scope_logs = st.fixed_dictionaries(
    {},
    optional={
        "scope": st.fixed_dictionaries(
            {},
            optional={
                "name": _text,
                "version": _text,
                "attributes": _attributes,
                "droppedAttributesCount": _integer,
            },
        ),
        "logRecords": st.lists(_records, max_size=3),
        "schemaUrl": _text,
    },
)
_documents = st.fixed_dictionaries(
    {
        "resourceLogs": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "resource": st.fixed_dictionaries(
                        {}, optional={"attributes": _attributes, "droppedAttributesCount": _integer}
                    ),
                    "schemaUrl": _text,
                    "scopeLogs": _mostly(
                        st.lists(_scope_logs, max_size=3),
                        st.lists(_scope_logs, max_size=1).map(lambda s: {"values": s}),
                    ),
                },
            ),
            max_size=3,
        )
    }
)


def _by_json_format(document: dict) -> ExportLogsServiceRequest | str:
    try:
        return otlp_json._by_json_format(copy.deepcopy(document), ExportLogsServiceRequest())
    except otlp_json.JsonError as e:
        return str(e)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_fast_path_decodes_as_json_format_does(document: dict) -> None:
    """Whatever the fast path decodes, json_format decodes to the same message; what it does not
    model (wrong types, out-of-range numbers, names, null, snake_case) it leaves to json_format whole."""
    fast = ExportLogsServiceRequest()
    if otlp_json._fast(copy.deepcopy(document), fast):
        assert fast == _by_json_format(document)
    else:
        assert fast == ExportLogsServiceRequest()  # nothing half-filled


def test_fast_path_takes_what_exporters_send() -> None:
    """The golden inputs and the bench's workload, as OTLP/JSON, all take the fast path, to the same
    messages json_format builds."""
    import orjson

    from tests.bench import workload

    documents = [orjson.loads(_golden_documents())]
    for payload in workload.generate(2000, processes=1).payloads:
        documents.append(orjson.loads(otlp_json.encode(ExportLogsServiceRequest.FromString(payload))))
    for document in documents:
        fast = ExportLogsServiceRequest()
        assert otlp_json._fast(document, fast)
        assert fast == _by_json_format(document)


def test_fast_path_decodes_spans_as_json_format_does() -> None:
    """The same tables serve the traces request (spans as evidence): every field a span sends."""
    import orjson
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    attribute = KeyValue(key="http.request.header.user-agent", value=AnyValue(string_value="kube-probe/1.29"))
    span = Span(
        trace_id=bytes(range(16)), span_id=bytes(range(8)), parent_span_id=bytes(range(1, 9)),
        trace_state="dd=s:1", name="GET /", kind=Span.SPAN_KIND_SERVER, flags=257,
        start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_100_000_000,
        attributes=[attribute], dropped_attributes_count=1,
        events=[Span.Event(time_unix_nano=5, name="e", attributes=[attribute])],
        links=[Span.Link(trace_id=bytes(16), span_id=bytes(8), trace_state="a=b", flags=1)],
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
    )
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    document = orjson.loads(otlp_json.encode(request))
    fast = ExportTraceServiceRequest()
    assert otlp_json._fast(document, fast)
    assert fast == request == otlp_json._by_json_format(document, ExportTraceServiceRequest())


@pytest.mark.parametrize("refused", [False, True])
def test_the_collector_is_back_on_only_once_the_document_is_gone(monkeypatch, refused: bool) -> None:
    """Decoding pauses the cyclic collector. Re-enabled while the document was still alive, the next
    allocation anywhere in the process (the event loop's) could make it walk all of the document's
    containers, holding the GIL: 0.1 s for a 16,000-record request's 160,000. Whether the document
    decodes or is refused, it is freed first."""
    import gc

    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

    attributes = [KeyValue(key=f"k{n}", value=AnyValue(string_value=str(n))) for n in range(8)]
    request = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord(attributes=attributes)] * 5_000)])]
    )
    payload = otlp_json.encode(request)
    containers = payload.count(b"{") + payload.count(b"[")
    young_at_enable: list[int] = []
    real_enable = gc.enable

    def enable() -> None:
        young_at_enable.append(len(gc.get_objects(generation=0)))
        real_enable()

    def refuse(document: dict) -> None:
        raise ValueError("refused")

    monkeypatch.setattr(otlp_json.gc, "enable", enable)
    if refused:
        with pytest.raises(ValueError, match="refused"):
            otlp_json.decode(payload, ExportLogsServiceRequest(), refuse)
    else:
        assert otlp_json.decode(payload, ExportLogsServiceRequest()) == request
    assert len(young_at_enable) == 1 and containers > 50_000
    assert young_at_enable[0] < containers // 10, (young_at_enable, containers)
