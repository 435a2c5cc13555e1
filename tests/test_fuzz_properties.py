"""Property-based fuzzing: the decoders, the pipeline, the classifier and the rule matcher keep their
contract (``tests/fuzz/invariants.py``) for random, mutated and generated inputs.

Deterministic and bounded for CI: every property runs a fixed number of derandomized examples and
uses no example database. A failure prints the smallest input hypothesis found; make it an explicit
regression test below.
"""

from __future__ import annotations

import asyncio
import re
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from processor import otlp_json
from processor.classify import Verdict
from processor.classify.verdict import LIKELY
from processor.config import Config
from processor.correlation import TraceMemory
from processor.intake import JSON, PROTOBUF, Intake, decompress
from processor.metrics import Metrics
from processor.queue import BoundedQueue
from processor.redact import Redactor
from processor.service import build_pipeline
from processor.status import INVALID, TOO_LARGE, Rejected

from .fuzz import strategies as gen
from .fuzz.invariants import (
    CONFIGS,
    Checker,
    build_pipelines,
    check_classifier,
    check_rules,
    checked_decompress,
    decode_json,
    golden_json,
    golden_protobuf,
    golden_records,
    intake_decode,
    wire,
)
from .fuzz.invariants import check_everywhere as check_in

PIPELINES = build_pipelines()
CHECKERS = {name: Checker(pipeline) for name, pipeline in PIPELINES.items()}
GOLDEN_JSON = golden_json()
GOLDEN_PROTOBUF = golden_protobuf()
JSON_DEPTH_LIMIT = 64  # processor/otlp_json.py _MAX_DEPTH
ENCODINGS = ("gzip", "deflate", "", "identity", "br", "GZIP", "x-gzip")


def fuzz_settings(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def json_depth(node, depth: int = 0) -> int:
    if isinstance(node, dict):
        return max((json_depth(v, depth + 1) for v in node.values()), default=depth)
    if isinstance(node, list):
        return max((json_depth(v, depth + 1) for v in node), default=depth)
    return depth


def check_everywhere(request: ExportLogsServiceRequest, payload: bytes | None = None) -> None:
    """The request through every configuration, each on its own copy (see invariants.check_everywhere)."""
    check_in(CHECKERS.values(), request, payload)


class TestJsonDecoder:
    @fuzz_settings(300)
    @given(st.binary(max_size=2048))
    def test_any_bytes(self, payload: bytes) -> None:
        """Random bytes: a request or JsonError, nothing else."""
        decode_json(payload)
        intake_decode(payload, JSON)

    @fuzz_settings(300)
    @given(gen.mutated(GOLDEN_JSON))
    def test_mutated_golden_bytes(self, payload: bytes) -> None:
        """Bit flips, truncations, splices of real payloads: decoded ones go through the pipeline intact."""
        request = intake_decode(payload, JSON)
        if request is not None:
            check_everywhere(request)

    @fuzz_settings(300)
    @given(gen.structurally_mutated_json(GOLDEN_JSON))
    def test_structurally_mutated_golden(self, payload: bytes) -> None:
        """Values replaced, keys renamed or removed in real payloads: still JSON, so the mapping is fuzzed."""
        request = intake_decode(payload, JSON)
        if request is not None:
            check_everywhere(request)

    @pytest.mark.parametrize(
        "payload",
        [
            b"[" * 2000,  # past orjson's depth limit
            b'{"resourceLogs":' + b"[" * 63 + b"]" * 63 + b"}",  # at our own depth limit
            b'{"resourceLogs":' + b"[" * 70 + b"]" * 70 + b"}",  # past it
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":' + b"9" * 5000 + b"}]}]}]}",
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"' + b"9" * 5000 + b'"}]}]}]}',
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"doubleValue":"1e400"}}]}]}]}',
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"\xc3\xbf\xc3\xbf"}]}]}]}',
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"a","intValue":"1"}}]}]}]}',
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"attributes":[null,{"key":null}]}]}]}]}',
            b'{"resourceLogs":[{"resource":"abc"}]}',  # lenient (protobuf's json_format): accepted, empty
            b'"\\ud800"',
            b"\xef\xbb\xbf{}",
            b'{"resourceLogs":null}',
        ],
        ids=lambda p: p[:48].decode("utf-8", "replace"),
    )
    def test_known_hard_inputs(self, payload: bytes) -> None:
        """Inputs at the parsers' edges: a request or JsonError."""
        request = decode_json(payload)
        if request is not None:
            check_everywhere(request)

    @fuzz_settings(150)
    @given(gen.requests())
    def test_encode_decode_round_trip(self, request: ExportLogsServiceRequest) -> None:
        """OTLP/JSON written by the processor reads back to the same message (ids of valid length)."""
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    if len(record.trace_id) not in (0, 16):
                        record.trace_id = b""
                    if len(record.span_id) not in (0, 8):
                        record.span_id = b""
        encoded = otlp_json.encode(request)
        decoded = decode_json(encoded)
        if decoded is None:
            # The one known way out, pinned by test_json_reads_what_protobuf_reads below.
            assert json_depth(orjson.loads(encoded)) > JSON_DEPTH_LIMIT
            return
        # Compared as OTLP/JSON: JSON's "NaN" cannot keep a NaN's payload bits, nothing else may differ.
        assert otlp_json.encode(decoded) == encoded

    def test_json_reads_what_protobuf_reads(self) -> None:
        """Regression (found by fuzzing): a body nested 20 maps deep decodes from protobuf and OTLP/JSON."""
        request = ExportLogsServiceRequest()
        record = request.resource_logs.add().scope_logs.add().log_records.add(severity_number=17)
        record.body.CopyFrom(gen.deep_kvlist(20))
        assert intake_decode(request.SerializeToString(), PROTOBUF) is not None
        decoded = decode_json(otlp_json.encode(request))
        assert decoded is not None and wire(decoded) == wire(request)


class TestJsonKeyEscapes:
    """OTLP/JSON may write any character of a string as an escape: the same request, other bytes."""

    @fuzz_settings(150)
    @given(gen.escaped_variants(GOLDEN_JSON))
    def test_escapes_decode_to_the_same_request(self, variants: tuple[bytes, bytes]) -> None:
        """The decoder reads an escaped document as the plain one."""
        plain, escaped = variants
        request = decode_json(escaped)
        assert request is not None and wire(request) == wire(decode_json(plain))
        check_everywhere(request)

    @pytest.mark.parametrize("case", ["triaged-upstream", "browser-inherits-monitor", "golden-inputs"])
    def test_escaped_keys_are_read(self, case: str) -> None:
        """Regression (found writing the escaped-JSON property): through Intake.accept, an escaped request
        comes out exactly as the plain one."""
        for plain, escaped, earlier in _escape_cases(case):
            assert wire(decode_json(plain)) == wire(decode_json(escaped))
            outputs = [_accepted(payload, earlier) for payload in (plain, escaped)]
            assert outputs[0] == outputs[1], plain[:160]


    def test_escaped_secrets_are_redacted(self) -> None:
        """Regression: a JWT written with JSON escapes is still found (the redaction prefilter reads the wire form)."""
        jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX3ZhbHVl"
        escaped = "".join(f"\\u{ord(c):04x}" for c in jwt)
        payload = ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"token ' + escaped + '"}}]}]}]}').encode()
        assert jwt.encode() not in _accepted(payload, [])


def _accepted(payload: bytes, earlier: list[bytes]) -> bytes:
    """What Intake.accept queues for an OTLP/JSON ``payload``, after the ``earlier`` requests."""
    pipeline = build_pipeline(Config.from_env(CONFIGS["window0"]), Redactor())
    intake = Intake(pipeline, BoundedQueue(1 << 30), Metrics(), 1 << 30)
    for request in [*earlier, payload]:
        asyncio.run(intake.accept(request, JSON, "http"))
    return intake.queue.pending()[-1].payload


_TRACE = "5b8efff798038103d269b633813fc60c"
_BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"


def _records_json(*records: str) -> bytes:
    return ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[' + ",".join(records) + "]}]}]}").encode()


def _escape_cases(case: str) -> list[tuple[bytes, bytes, list[bytes]]]:
    """(plain JSON, the same with every key's dots escaped, requests processed before it)."""

    def escape_keys(payload: bytes) -> bytes:
        return re.sub(
            rb'"key":"([^"]*)"', lambda m: b'"key":"' + m[1].replace(b".", rb"\u002e") + b'"', payload
        )

    if case == "triaged-upstream":
        plain = _records_json(
            '{"severityNumber":9,"attributes":[{"key":"triage.source","value":{"stringValue":"user"}},'
            '{"key":"user_agent.original","value":{"stringValue":"Datadog/Synthetics"}}]}'
        )
        return [(plain, escape_keys(plain), [])]
    if case == "browser-inherits-monitor":
        monitor = _records_json(
            f'{{"severityNumber":9,"traceId":"{_TRACE}","attributes":[{{"key":"user_agent.original",'
            '"value":{"stringValue":"Datadog/Synthetics"}}]}'
        )
        plain = _records_json(
            f'{{"severityNumber":17,"traceId":"{_TRACE}","body":{{"stringValue":"AccessTokenError: '
            f'ERR_MISSING_SESSION"}},"attributes":[{{"key":"user_agent.original","value":{{"stringValue":"{_BROWSER}"}}}}]}}'
        )
        return [(plain, escape_keys(plain), [monitor])]
    return [(plain, escape_keys(plain), []) for plain in GOLDEN_JSON]


class TestProtobufDecoder:
    @fuzz_settings(300)
    @given(st.binary(max_size=2048))
    def test_any_bytes(self, payload: bytes) -> None:
        """Random bytes: a request or Rejected(INVALID); decoded ones go through the pipeline intact."""
        request = intake_decode(payload, PROTOBUF)
        if request is not None:
            check_everywhere(request, payload)

    @fuzz_settings(300)
    @given(gen.mutated(GOLDEN_PROTOBUF))
    def test_mutated_golden(self, payload: bytes) -> None:
        """Mutations of the golden requests' protobuf encoding."""
        request = intake_decode(payload, PROTOBUF)
        if request is not None:
            check_everywhere(request, payload)

    @fuzz_settings(100)
    @given(st.data())
    def test_mutated_generated(self, data) -> None:
        """Mutations of generated requests' encoding (every AnyValue type on the wire)."""
        seeds = [data.draw(gen.requests()).SerializeToString() for _ in range(2)]
        payload = data.draw(gen.mutated(seeds))
        request = intake_decode(payload, PROTOBUF)
        if request is not None:
            check_everywhere(request, payload)

    def test_nesting_past_the_decoder_limit_is_invalid(self) -> None:
        """A body nested deeper than upb allows is refused as INVALID, not a crash."""
        request = ExportLogsServiceRequest()
        record = request.resource_logs.add().scope_logs.add().log_records.add()
        record.body.CopyFrom(gen.deep_kvlist(200))
        assert intake_decode(request.SerializeToString(), PROTOBUF) is None


class TestDecompress:
    @fuzz_settings(300)
    @given(st.binary(max_size=1024), st.sampled_from(ENCODINGS), st.integers(0, 4096))
    def test_any_bytes(self, body: bytes, encoding: str, limit: int) -> None:
        """Random bodies: the body, or INVALID / TOO_LARGE / UNSUPPORTED; never past the limit."""
        checked_decompress(body, encoding, limit)

    @fuzz_settings(300)
    @given(st.data(), st.sampled_from(("gzip", "deflate")), st.integers(0, 8192))
    def test_mutated_compressed_golden(self, data, encoding: str, limit: int) -> None:
        """Bit flips and truncations of real compressed payloads."""
        seeds = [gen.compress(p, encoding) for p in GOLDEN_PROTOBUF + GOLDEN_JSON]
        checked_decompress(data.draw(gen.mutated(seeds)), encoding, limit)

    @fuzz_settings(200)
    @given(st.binary(max_size=4096), st.sampled_from(("gzip", "deflate")), st.integers(0, 5000))
    def test_limit_is_exact(self, payload: bytes, encoding: str, limit: int) -> None:
        """A valid body inflates to exactly what was sent when it fits, else TOO_LARGE."""
        body = gen.compress(payload, encoding)
        if len(payload) <= limit:
            assert decompress(body, encoding, limit) == payload
        else:
            with pytest.raises(Rejected) as refused:
                decompress(body, encoding, limit)
            assert refused.value.refusal is TOO_LARGE

    def test_bomb_costs_at_most_the_limit(self) -> None:
        """64 MiB of zeros in 64 KiB of gzip is refused without being inflated."""
        body = gen.compress(bytes(64 << 20), "gzip")
        started = time.monotonic()
        with pytest.raises(Rejected) as refused:
            decompress(body, "gzip", 1 << 20)
        assert refused.value.refusal is TOO_LARGE and time.monotonic() - started < 2.0

    @pytest.mark.parametrize(
        "encoding, tail, expected",
        [
            # Two gzip members: RFC 1952 and every gzip reader (gzip.decompress, Go's gzip.Reader) read both.
            ("gzip", gen.compress(b"-second-member", "gzip"), b"first-member-second-member"),
            # Garbage after a complete stream: refused by gzip.decompress and Go; here accepted.
            ("gzip", b"trailing garbage", None),
            ("deflate", b"trailing garbage", None),
        ],
        ids=["gzip-two-members", "gzip-trailing-garbage", "deflate-trailing-garbage"],
    )
    def test_nothing_after_the_first_stream_is_ignored(self, encoding: str, tail: bytes, expected) -> None:
        """Regression (found by fuzzing, fixed in a696b0a): every byte of the body is inflated, or the body is
        INVALID; the first gzip member alone used to be taken, the rest silently dropped."""
        body = gen.compress(b"first-member", encoding) + tail
        if expected is not None:
            assert decompress(body, encoding, 1 << 20) == expected
        else:
            with pytest.raises(Rejected) as refused:
                decompress(body, encoding, 1 << 20)
            assert refused.value.refusal is INVALID


class TestPipeline:
    @fuzz_settings(250)
    @given(
        st.one_of(gen.requests(), gen.scenario_requests()), st.sampled_from(sorted(CONFIGS)), st.booleans()
    )
    def test_generated_requests(
        self, request: ExportLogsServiceRequest, config: str, with_payload: bool
    ) -> None:
        """Any request: never raises, one triage.source per record, nothing but the enrichment changes."""
        # What a receiver hands the pipeline is always decoded from the wire.
        payload = request.SerializeToString()
        decoded = intake_decode(payload, PROTOBUF)
        assert decoded is not None
        CHECKERS[config].check(decoded, payload if with_payload else None)

    @fuzz_settings(100)
    @given(st.data(), st.floats(0.0, 3.0))
    def test_request_sequences(self, data, step_s: float) -> None:
        """Requests in a row on the holding pipeline: held records come back (evidence or window)."""
        traces = data.draw(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=3, unique=True))
        requests = data.draw(
            st.lists(
                st.one_of(gen.scenario_requests(traces), gen.requests(max_resources=1, max_records=3)),
                min_size=2,
                max_size=5,
            )
        )
        CHECKERS["default"].run(requests, step_s, payloads=data.draw(st.booleans()))

    @fuzz_settings(150)
    @given(gen.browser_and_monitor_requests(), st.sampled_from(sorted(CONFIGS)))
    def test_browser_user_agent_is_never_downgraded(self, case, config: str) -> None:
        """An Auth0 error whose only evidence is a browser user agent (its own or its trace's) stays an error,
        even with monitor records in the same trace."""
        request, browser_traces = case
        CHECKERS[config].check(request, request.SerializeToString())
        for record in request.resource_logs[0].scope_logs[0].log_records:
            values = {kv.key: kv.value.string_value for kv in record.attributes}
            if record.trace_id in browser_traces and record.severity_number >= 13:
                assert values["triage.source"] == "user" and "triage.rule" not in values

    def test_deep_and_wide_bodies_at_the_wire_limit(self) -> None:
        """The deepest map body a request can carry, and a 20 000-entry one, through every configuration."""
        for body in (gen.deep_kvlist(gen.WIRE_DEPTH), gen.wide_kvlist(20_000)):
            request = ExportLogsServiceRequest()
            record = (
                request.resource_logs.add()
                .scope_logs.add()
                .log_records.add(severity_number=17, trace_id=b"t" * 16)
            )
            record.body.CopyFrom(body)
            payload = request.SerializeToString()
            decoded = intake_decode(payload, PROTOBUF)
            assert decoded is not None
            check_everywhere(decoded, payload)


class TestTraceMemory:
    def test_expired_evidence_does_not_outlive_its_ttl(self) -> None:
        """Regression (found writing the invariants, fixed in a696b0a): after the TTL, a trace is what new
        evidence says; an expired verdict used to outrank it and be renewed."""
        memory = TraceMemory(ttl_s=60, max_traces=100)
        trace = b"t" * 16
        monitor = Verdict(
            "synthetic", "datadog-synthetics", "user_agent.original contains 'Datadog/Synthetics'"
        )
        health_check = Verdict("probe", "health-check-path", "url.path is '/healthz'", confidence=LIKELY)
        memory.learn(trace, monitor, now=0.0)
        assert memory.recall(trace, now=100.0) is None  # expired (the ticker's expire() has not run yet)
        memory.learn(trace, health_check, now=100.0)
        assert memory.recall(trace, now=100.0) is health_check


class TestClassifier:
    @fuzz_settings(300)
    @given(gen.any_values, gen.user_agents, st.sampled_from(sorted(CONFIGS)))
    def test_evidence_never_raises(self, value: AnyValue, user_agent: str, config: str) -> None:
        """Every evidence key with any AnyValue (and any user agent text): None or a verdict."""
        pipeline = PIPELINES[config]
        keys = list(pipeline.classifier.evidence_keys)
        check_classifier(pipeline, [(key, value) for key in keys])
        check_classifier(pipeline, [(key, gen.string(user_agent)) for key in keys])
        pipeline.classifier.attributes([KeyValue(key=key, value=value) for key in keys])

    @fuzz_settings(200)
    @given(st.lists(gen.attributes, max_size=8), st.sampled_from(sorted(CONFIGS)))
    def test_attributes_never_raises(self, attributes: list[KeyValue], config: str) -> None:
        """A list of attributes as records and resources carry them: None or the best verdict."""
        verdict = PIPELINES[config].classifier.attributes(attributes)
        assert verdict is None or verdict.source in ("user", "synthetic", "probe", "bot", "service")


class TestRuleMatcher:
    deep_bodies = st.one_of(
        gen.bodies,
        st.builds(gen.deep_kvlist, st.integers(0, 3000), st.sampled_from(("err", "error", "cause", "x"))),
        st.builds(gen.wide_kvlist, st.integers(0, 5000)),
        gen.json_text_bodies().map(gen.string),
    )

    @fuzz_settings(300)
    @given(gen.log_records(body_strategy=deep_bodies), st.sampled_from(sorted(CONFIGS)))
    def test_match_never_raises(self, record: LogRecord, config: str) -> None:
        """Any record, however deep or wide its body: a rule or None, and the record untouched."""
        check_rules(PIPELINES[config], record, (13, 17, 24))

    @fuzz_settings(100)
    @given(st.sampled_from(golden_records()), gen.mutated([r.SerializeToString() for r in golden_records()]))
    def test_mutated_golden_records(self, record: LogRecord, mutation: bytes) -> None:
        """Real records, and mutations of their encoding that still decode."""
        check_rules(PIPELINES["wide"], record, (17,))
        mutated = LogRecord()
        try:
            mutated.ParseFromString(mutation)
        except Exception:  # noqa: BLE001 - only records that decode are of interest here
            return
        check_rules(PIPELINES["wide"], mutated, (17,))

    @pytest.mark.parametrize(
        "body",
        [
            gen.deep_kvlist(5_000),  # (much deeper overflows upb's recursive encoder in the check itself)
            gen.wide_kvlist(200_000),
            gen.string('{"err":' * 50_000 + '"AccessTokenError"' + "}" * 50_000),
            gen.string("[" * 1_000_000),
            gen.string("{" + '"code":"ERR_MISSING_SESSION",' * 100_000 + '"type":"AccessTokenError"}'),
            gen.string("AccessTokenError " * 200_000),
            gen.string("A" * 5_000_000),
        ],
        ids=[
            "deep-map",
            "wide-map",
            "deep-json-text",
            "unclosed-json-text",
            "long-json-text",
            "long-words",
            "5MB",
        ],
    )
    def test_huge_bodies_are_bounded(self, body: AnyValue) -> None:
        """Huge or deep bodies: the matcher answers within seconds (bounded depth and node budget)."""
        record = LogRecord(severity_number=17)
        record.body.CopyFrom(body)
        started = time.monotonic()
        check_rules(PIPELINES["wide"], record)
        assert time.monotonic() - started < 10.0
