"""The wire-level pipeline against its oracle, and the byte-level readers it is built on.

``Pipeline.process_wire`` never decodes a record it need not touch: it appends prepared bytes and
reads evidence out of the serialized records (``processor/wire.py``, ``processor/evidence.py``).
These tests pin it to ``ReferencePipeline`` (``tests/oracle.py``), the message-at-a-time version:
same forwarded records, same held records, same counts, request after request, under every
configuration the fuzz invariants use.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from processor.config import Config
from processor.redact import Redactor
from processor.service import build_pipeline
from processor.wire import attribute_value, attribute_with_string_at, field_containing, string_value, varint

from .corpus import generate
from .fuzz import strategies as gen
from .fuzz.invariants import CONFIGS, golden_protobuf
from .oracle import reference_of

PIPELINES = {name: build_pipeline(Config.from_env(env)) for name, env in CONFIGS.items()}
DATADOG = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36 DatadogSynthetics"


def _settings(examples: int):
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _stats(stats) -> tuple:
    return (stats.records, stats.held, stats.by_source, stats.downgraded, stats.would_downgrade)


def run_both(name: str, requests: list[bytes], step: float = 0.3) -> int:
    """Feed the same requests to a fresh wire pipeline and its oracle; assert every output agrees."""
    return run_timed(name, [(i * step, payload) for i, payload in enumerate(requests)], step)


def run_timed(name: str, requests: list[tuple[float, bytes]], step: float) -> int:
    """``run_both`` with each request's own arrival time; held records are released ``step`` later."""
    config = Config.from_env(CONFIGS[name])
    wire_pipeline = build_pipeline(config)
    oracle = reference_of(wire_pipeline)
    compared = 0
    now = 0.0
    for now, payload in requests:
        forwarded, stats = wire_pipeline.process_wire(payload, now, ExportLogsServiceRequest.FromString(payload))
        expected = ExportLogsServiceRequest.FromString(payload)
        expected_stats = oracle.process(expected, now)
        assert ExportLogsServiceRequest.FromString(forwarded) == expected
        assert _stats(stats) == _stats(expected_stats)
        now += step
        released = wire_pipeline.release_ready(now)
        expected_released = oracle.release_ready(now)
        assert (released is None) == (expected_released is None)
        if released is not None:
            assert released[0] == expected_released[0]
            assert _stats(released[1]) == _stats(expected_released[1])
        compared += 1
    final = wire_pipeline.release_all(now)
    expected_final = oracle.release_all(now)
    assert (final is None) == (expected_final is None)
    if final is not None:
        assert final[0] == expected_final[0]
    assert len(wire_pipeline.holding) == len(oracle.holding) == 0
    return compared


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_golden_inputs_agree(name: str) -> None:
    assert run_both(name, golden_protobuf()) == len(golden_protobuf())


@pytest.mark.parametrize("name", ["default", "wide"])
def test_labelled_corpus_agrees(name: str) -> None:
    """The corpus: monitors' errors and their access logs in different requests, in either order."""
    requests = [(sent_at, request.SerializeToString()) for sent_at, request in generate().requests[:400]]
    assert run_timed(name, requests, step=0.05) == 400


@_settings(120)
@given(st.lists(gen.requests(max_resources=2, max_records=6), min_size=1, max_size=4), st.sampled_from(sorted(CONFIGS)))
def test_random_request_sequences_agree(requests: list[ExportLogsServiceRequest], name: str) -> None:
    run_both(name, [r.SerializeToString() for r in requests])


@_settings(200)
@given(gen.log_records())
def test_evidence_read_from_bytes_is_the_decoded_records(record: LogRecord) -> None:
    """Every record's (verdict, has synthetic type) read from its bytes equals the attribute loop's."""
    for pipeline in PIPELINES.values():
        serialized = record.SerializeToString()
        scan = pipeline.evidence.scan([serialized])
        expected = pipeline._inspect(record)
        if 0 not in scan.flagged:
            assert expected[0] is None and not expected[1] and expected[2] is None
            continue
        found = pipeline.evidence.read(scan, 0)
        if expected[2] is not None:
            assert found is None  # triaged upstream: read in full instead
        elif found is not None:  # None: the bytes could not say for sure; the decoded record decides
            assert found == expected[:2]


@_settings(300)
@given(
    st.sampled_from(gen.USER_AGENTS),
    st.lists(st.booleans(), min_size=1, max_size=300),
    st.sampled_from(("user_agent.original", "http.user_agent")),
)
def test_user_agent_from_needles_is_the_regex_decision(user_agent: str, upper: list[bool], key: str) -> None:
    """Needles found with ASCII case ignored give the verdict the lowercased regex pass gives."""
    mixed = "".join(c.upper() if upper[i % len(upper)] else c.lower() for i, c in enumerate(user_agent))
    if not mixed.isascii():
        return
    classifier = PIPELINES["default"].classifier
    needles = PIPELINES["default"].evidence._needles.found_in_each([mixed.encode()]).get(0, set())
    assert classifier.user_agent_found(key, mixed.encode(), needles) is classifier._user_agent(key, mixed)


# --- the byte-level readers ------------------------------------------------------------------------------


def _record(*attributes: KeyValue, body: AnyValue | None = None) -> bytes:
    record = LogRecord(time_unix_nano=1, severity_number=9, trace_id=b"t" * 16, attributes=list(attributes))
    if body is not None:
        record.body.CopyFrom(body)
    return record.SerializeToString()


def _kv(key: str, text: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=text))


@pytest.mark.parametrize("length", [0, 1, 100, 127, 128, 300, 16383, 16384, 70000])
def test_attribute_value_reads_every_length(length: int) -> None:
    text = "u" * length
    buf = _record(_kv("a", "x"), _kv("user_agent.original", text), _kv("b", "y"))
    at = buf.index(b"user_agent.original")
    framed = attribute_value(buf, at, b"user_agent.original", 0, len(buf))
    assert framed is not None
    frame_at, value_at, end = framed
    assert field_containing(buf, 0, len(buf), at) == frame_at
    assert AnyValue.FromString(buf[value_at:end]).string_value == text
    begin, end = string_value(buf, value_at, end)
    assert buf[begin:end] == text.encode()


def test_a_key_in_a_body_or_a_map_is_not_an_attribute() -> None:
    nested = AnyValue(kvlist_value=KeyValueList(values=[_kv("user_agent.original", DATADOG)]))
    for buf in (
        _record(body=AnyValue(string_value="user_agent.original: " + DATADOG)),
        _record(body=nested),
        _record(KeyValue(key="headers", value=nested)),
        _record(_kv("note", "user_agent.original")),
    ):
        at = buf.index(b"user_agent.original")
        assert attribute_value(buf, at, b"user_agent.original", 0, len(buf)) is None


def test_a_serialized_attribute_inside_a_bytes_value_is_not_evidence() -> None:
    """A bytes value (or body) holding a serialized record holds correctly framed attributes: not this record's."""
    inner = _record(_kv("user_agent.original", DATADOG))
    for outer in (
        LogRecord.FromString(_record(KeyValue(key="payload", value=AnyValue(bytes_value=inner)))),
        LogRecord.FromString(_record(body=AnyValue(bytes_value=inner))),
    ):
        buf = outer.SerializeToString()
        at = buf.index(b"user_agent.original")
        framed = attribute_value(buf, at, b"user_agent.original", 0, len(buf))
        assert framed is not None  # the frame is there...
        assert framed[0] != field_containing(buf, 0, len(buf), at)  # ...but not as a field of this record
        for pipeline in PIPELINES.values():
            scan = pipeline.evidence.scan([buf])
            assert pipeline._inspect(outer)[:2] == (None, False)
            # Ignored (inside the body), or left to the decoded record (inside an attribute's value).
            assert pipeline.evidence.read(scan, 0) in ((None, False), None)


def test_an_attribute_must_lie_inside_its_record() -> None:
    buf = _record(_kv("user_agent.original", DATADOG))
    at = buf.index(b"user_agent.original")
    assert attribute_value(buf, at, b"user_agent.original", 0, len(buf)) is not None
    assert attribute_value(buf, at, b"user_agent.original", at - 1, len(buf)) is None  # frame before the start
    assert attribute_value(buf, at, b"user_agent.original", 0, len(buf) - 30) is None  # value past the end


@pytest.mark.parametrize("path", ["/healthz", "/healthz?probe=1", "/healthz/", "/healthz?" + "x" * 200])
def test_attribute_with_string_at_finds_the_path_attribute(path: str) -> None:
    buf = _record(_kv("http.request.method", "GET"), _kv("url.path", path), body=AnyValue(string_value="GET /healthz"))
    starts = [i for i in range(len(buf)) if buf.startswith(b"/healthz", i)]
    found = [attribute_with_string_at(buf, i, (b"http.route", b"url.path"), 0, len(buf)) for i in starts]
    assert found[0] is None  # the body's mention
    key, end, frame_at = found[1]
    assert (key, end) == (b"url.path", buf.rindex(path.encode()) + len(path.encode()))
    assert field_containing(buf, 0, len(buf), starts[1]) == frame_at


def test_varint_round_trips() -> None:
    for n in (0, 1, 127, 128, 255, 300, 16383, 16384, 2**21, 2**28 + 5):
        encoded = varint(n)
        assert AnyValue.FromString(b"\x18" + encoded).int_value == n  # field 3, varint


def test_redaction_on_the_wire_path_matches_redacting_the_decoded_request() -> None:
    """Secrets found by the scan are redacted per record; the rest forwarded as they came."""
    redactor = Redactor()
    pipeline = build_pipeline(Config.from_env({}), redactor)
    oracle = reference_of(build_pipeline(Config.from_env({})))
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    records.add().CopyFrom(LogRecord.FromString(_record(_kv("http.request.header.cookie", "appSession=abc"))))
    records.add().CopyFrom(LogRecord.FromString(_record(_kv("msg", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"))))
    records.add().CopyFrom(LogRecord.FromString(_record(_kv("user_agent.original", DATADOG))))
    payload = request.SerializeToString()
    forwarded, stats = pipeline.process_wire(payload, 0.0, ExportLogsServiceRequest.FromString(payload))
    expected = ExportLogsServiceRequest.FromString(payload)
    oracle.process(expected, 0.0)
    counts: dict[str, int] = {}
    redactor.redact_request(expected, counts)
    assert ExportLogsServiceRequest.FromString(forwarded) == expected
    assert stats.redactions == counts and counts
