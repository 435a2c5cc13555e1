"""The wire-level pipeline against its oracle, and the byte-level readers it is built on.

``Pipeline.process_wire`` never decodes a record it need not touch: it appends prepared bytes and
reads evidence out of the serialized records (``processor/wire.py``, ``processor/evidence.py``).
These tests pin it to ``ReferencePipeline`` (``tests/oracle.py``), the message-at-a-time version:
same forwarded records, same held records, same counts, request after request, under every
configuration the fuzz invariants use.
"""

from __future__ import annotations

from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from processor.classify import CatalogError, Classifier, Signature
from processor.config import Config
from processor.evidence import EvidenceReader
from processor.intake import Limits
from processor.status import Rejected
from processor.redact import Redactor
from processor.service import build_pipeline
from processor import wire
from processor.wire import FirstNeedle

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
        forwarded, stats = wire_pipeline.process_wire(payload, now)
        expected = ExportLogsServiceRequest.FromString(payload)
        expected_stats = oracle.process(expected, now)
        assert ExportLogsServiceRequest.FromString(forwarded) == expected
        assert _stats(stats) == _stats(expected_stats)
        now += step
        released = wire_pipeline.release_ready(now)
        expected_released = oracle.release_ready(now)
        assert (released is None) == (expected_released is None)
        if released is not None:
            assert ExportLogsServiceRequest.FromString(released[0]) == expected_released[0]
            assert _stats(released[1]) == _stats(expected_released[1])
        compared += 1
    final = wire_pipeline.release_all(now)
    expected_final = oracle.release_all(now)
    assert (final is None) == (expected_final is None)
    if final is not None:
        assert ExportLogsServiceRequest.FromString(final[0]) == expected_final[0]
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


def _own(pipeline, payload: bytes, record: int = 0) -> tuple:
    """What ``EvidenceReader.read`` says of one record: (verdict, has synthetic type, upstream triage)."""
    found = pipeline.evidence.read(payload, pipeline.rules.min_severity_number)
    return found.own.get(record), record in found.typed, found.upstream.get(record)


@_settings(200)
@given(gen.log_records())
def test_evidence_read_from_bytes_is_the_decoded_records(record: LogRecord) -> None:
    """Every record's (verdict, has synthetic type) read from its bytes equals the attribute loop's; a
    record triaged upstream is passed on untouched, so only that is said of it."""
    for pipeline in PIPELINES.values():
        expected = pipeline.evidence.decoded(record)
        if expected[2] is not None:
            expected = (None, False, expected[2])
        assert _own(pipeline, _request(record)) == expected


@_settings(300)
@given(
    st.sampled_from(gen.USER_AGENTS),
    st.lists(st.booleans(), min_size=1, max_size=300),
    st.sampled_from(("user_agent.original", "http.user_agent")),
)
def test_user_agent_from_needles_is_the_regex_decision(user_agent: str, upper: list[bool], key: str) -> None:
    """The automaton's first needle, ASCII case ignored, gives the verdict the lowercased regex pass gives."""
    mixed = "".join(c.upper() if upper[i % len(upper)] else c.lower() for i, c in enumerate(user_agent))
    evidence = PIPELINES["default"].evidence
    assert _classified(evidence, key, [mixed]) == [evidence.classifier._user_agent(key, mixed)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_batch_of_user_agents_is_classified_as_one_by_one(name: str) -> None:
    """Every catalog user agent, varied, in one batch (the flood's path) against the classifier's own loop."""
    evidence = PIPELINES[name].evidence
    agents = [a for base in gen.USER_AGENTS for a in (base, base.upper(), f"{base} x/{len(base)}", "x" + base[3:])]
    agents += ["", "mozilla/", "MOZILLA/5.0", "été Mozilla/5.0", "curl", "bot"]
    found = _classified(evidence, "user_agent.original", agents)
    for agent, verdict in zip(agents, found):
        assert verdict is evidence.classifier.evidence("user_agent.original", AnyValue(string_value=agent)), agent


def test_values_too_long_to_keep_are_classified_every_time_but_not_cached() -> None:
    """Every cache of values from outside is bounded in bytes: a user agent, an address, a path
    over 1,024 characters, a severity text over 1,024 and a resource over 16 KiB are classified each
    time they come and never kept; shorter ones are kept."""

    def request(n: int) -> bytes:
        record = _record(
            _kv("user_agent.original", "Datadog/Synthetics é" + "x" * n),  # non-ASCII: the classifier's cache
            _kv("client.address", "10.0.0.1" + " " * n),
            _kv("url.path", "/healthz" + "x" * n),
            severity=17,
            text="ERROR" + "x" * n,
            body=AnyValue(string_value="Middleware error: AccessTokenError ERR_MISSING_SESSION " + "x" * n),
        )
        message = ExportLogsServiceRequest()
        resource_logs = message.resource_logs.add()
        resource_logs.resource.CopyFrom(Resource(attributes=[_kv("service.name", "s" * 16 * n)]))
        resource_logs.scope_logs.add().log_records.append(record)
        return message.SerializeToString()

    for n, kept in [(1100, 0), (10, 1)]:
        pipeline = build_pipeline(Config.from_env(CONFIGS["wide"]))
        for now in (0.0, 1.0):
            verdict = _own(pipeline, request(n))[0]
            assert verdict is not None and verdict.source == "synthetic"
            pipeline.process_wire(request(n), now)
        evidence, classifier = pipeline.evidence, pipeline.classifier
        sizes = [
            len(evidence._user_agents),
            classifier._user_agent_kept.cache_info().currsize,
            classifier._address_kept.cache_info().currsize,
            len(evidence._others),
            len(pipeline._resource_verdicts),
        ]
        assert sizes == [kept, kept, kept, 2 * kept, kept], n  # others: the address and the path
        assert len(pipeline._downgrades) == kept


def _classified(evidence: EvidenceReader, key: str, agents: list[str]) -> list:
    """The verdicts an emptied cache gives user agents of ``key`` in one request (the flood's path)."""
    cache = evidence._user_agents
    cache.clear()
    values = [AnyValue(string_value=agent).SerializeToString() for agent in agents]
    own = cache.verdicts(*_user_agents(values, evidence._names.index(key)), evidence._decoded_user_agent)
    return [own.get(record) for record in range(len(agents))]


# --- the C walk (processor/_wire.c) ----------------------------------------------------------------------


def _record(*attributes: KeyValue, body: AnyValue | None = None, severity: int = 9, text: str = "INFO") -> LogRecord:
    record = LogRecord(time_unix_nano=1, severity_number=severity, severity_text=text, trace_id=b"t" * 16, attributes=list(attributes))
    if body is not None:
        record.body.CopyFrom(body)
    return record


def _request(*records: LogRecord) -> bytes:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.extend(records)
    return request.SerializeToString()


def _kv(key: str, text: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=text))


def _field(number: int, content: bytes) -> bytes:
    """A length-delimited field, hand-encoded (for shapes the SDK never writes)."""
    return _tag(number, 2) + _varint(len(content)) + content


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@pytest.mark.parametrize("length", [0, 1, 100, 127, 128, 300, 16383, 16384, 70000])
def test_a_user_agent_of_every_length_is_read(length: int) -> None:
    text = "Datadog/Synthetics " + "u" * length
    kv = _kv("user_agent.original", text)
    record = _record(_kv("a", "x"), kv, _kv("b", "y"))
    pipeline = PIPELINES["default"]
    evidence = pipeline.evidence
    payload = _request(record)
    found = wire.index(payload, evidence._keys, evidence._kinds, evidence._health_paths, 13)
    key_id = evidence._names.index("user_agent.original")
    record_, key, start, end = found.user_agents.tolist()
    assert (record_, key) == (0, key_id) and payload[start:end] == kv.value.SerializeToString()
    assert _own(pipeline, payload) == evidence.decoded(record)
    assert _own(pipeline, payload)[0].source == "synthetic"
    # Kept unless longer than 1 KiB (then classified every time, as here).
    kept = evidence._user_agents.get(bytes((key_id,)) + kv.value.SerializeToString())
    assert (kept is not None) == (1 + len(kv.value.SerializeToString()) <= 1024)


def _user_agents(values: list[bytes], key_id: int = 0) -> tuple[bytes, array]:
    """A payload of serialized AnyValues and where each lies (record i, ``key_id``), as index() reports them."""
    entries, at = array("I"), 0
    for record, value in enumerate(values):
        entries.extend((record, key_id, at, at + len(value)))
        at += len(value)
    return b"".join(values), entries


def _first(needles: FirstNeedle, values: list[bytes], none: int) -> list[int]:
    """Per serialized AnyValue: the lowest needle rank in its plain ASCII string, ``none`` if no
    needle is in it, -1 if it is not one (a cache whose verdicts are the ranks; the fallback says -1)."""
    cache = wire.UserAgentCache(1000, bytes(16), needles.automaton, [[*range(1000), none]])
    unread: list[bytes] = []

    def fallback(key: bytes) -> int:
        unread.append(key)
        return -1

    own = cache.verdicts(*_user_agents(values), fallback)
    found = [own[record] for record in range(len(values))]
    assert unread == list(dict.fromkeys(b"\0" + v for v, rank in zip(values, found) if rank == -1))  # each once
    return found


def test_only_plain_ascii_user_agents_go_to_the_needle_search() -> None:
    needles = FirstNeedle([b"curl/", b"bot", b"mozilla/"], [1, 0, 2])
    values = [
        AnyValue(string_value="curl/8.4.0"),
        AnyValue(string_value="CURL/8.4.0 (a Bot)"),  # both: the lower rank; case ignored
        AnyValue(string_value="Mozilla/5.0"),
        AnyValue(string_value="wget"),
        AnyValue(string_value="Mozilla/5.0 (été)"),  # non-ASCII: str.lower() may differ from ASCII case folding
        AnyValue(string_value=""),
        AnyValue(int_value=7),
        AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="curl/8.4.0")])),
    ]
    assert _first(needles, [v.SerializeToString() for v in values], 9) == [1, 0, 2, 9, -1, -1, -1, -1]
    assert _first(needles, [values[4].SerializeToString()] * 3, 9) == [-1, -1, -1]  # the fallback asked once


def test_the_cache_refuses_a_table_without_the_rank() -> None:
    needles = FirstNeedle([b"curl/", b"bot"], [0, 1])
    curl = AnyValue(string_value="curl/8.4.0").SerializeToString()
    plain = AnyValue(string_value="wget").SerializeToString()
    number = AnyValue(int_value=3).SerializeToString()
    for tables in ([[]], [[], []], [[], ["none"]]):  # no table for key 1; an empty one; none for rank 0
        cache = wire.UserAgentCache(10, bytes(16), needles.automaton, tables)
        with pytest.raises(ValueError):
            cache.verdicts(*_user_agents([curl], key_id=1), None)
        assert len(cache) == 0
    cache = wire.UserAgentCache(10, bytes(16), needles.automaton, [[], ["none"]])
    assert cache.verdicts(*_user_agents([plain, number], key_id=1), lambda key: ("fallback", key)) == {
        0: "none",
        1: ("fallback", b"\x01" + number),
    }
    assert cache.get(b"\x01" + plain) == "none" and cache.get(b"\x00" + plain) is None and cache.get(b"") is None


def test_the_needle_automaton_finds_overlapping_needles() -> None:
    """A needle that is a suffix of another's prefix path (failure links), at any place."""
    needles = FirstNeedle([b"abcd", b"bc", b"cde", b"e"], [3, 2, 1, 0])
    found = _first(needles, [AnyValue(string_value=t).SerializeToString() for t in ("abcd", "xabcx", "abcde", "zzz", "ABCE")], 9)
    assert found == [2, 2, 0, 9, 0]


_NEEDLE_TEXT = st.text(alphabet="abcAB/ .é", max_size=40)


@given(
    st.lists(st.text(alphabet="abcAB/ ", min_size=1, max_size=6), min_size=1, max_size=8, unique_by=str.lower),
    st.lists(_NEEDLE_TEXT, max_size=30),
)
def test_the_needle_automaton_agrees_with_a_plain_search(needles: list[str], texts: list[str]) -> None:
    """Every text of a call, however many and whatever their lengths (texts are run several at a
    time, each in its own lane): the lowest rank of a needle in it, ASCII case ignored."""
    ranks = list(range(len(needles)))[::-1]
    automaton = FirstNeedle([n.encode() for n in needles], ranks)
    values = [AnyValue(string_value=t).SerializeToString() for t in texts]

    def expected(text: str) -> int:
        if not text or not text.isascii():
            return -1
        present = [rank for needle, rank in zip(needles, ranks) if needle.lower() in text.lower()]
        return min(present, default=99)

    assert _first(automaton, values, 99) == [expected(t) for t in texts]
    # Each rank's verdict taken from key 1's table (its last entry: no needle); None from the fallback.
    tables = [[], [("verdict", rank) for rank in range(len(needles))] + ["none"]]
    cache = wire.UserAgentCache(1000, bytes(16), automaton.automaton, tables)
    assert cache.verdicts(*_user_agents(values, key_id=1), lambda key: None) == {
        record: "none" if expected(text) == 99 else ("verdict", expected(text))
        for record, text in enumerate(texts)
        if expected(text) != -1
    }


def test_a_record_with_two_user_agents_gets_the_better_verdict() -> None:
    """Lower rank wins, the first on a tie; a user agent that gives no verdict gives the record none."""
    (robot, person, other) = (_Ranked("robot", 1), _Ranked("person", 0), _Ranked("other", 0))
    table = {b"r": robot, b"p": person, b"o": other, b"n": None}
    values = [AnyValue(string_value=name).SerializeToString() for name in ("r", "p", "o", "n", "n", "r", "p")]
    payload, _ = _user_agents(values)
    entries, at = array("I"), 0
    for record, value in zip([0, 0, 0, 1, 2, 2, 3], values):  # a record's user agents are next to each other
        entries.extend((record, 0, at, at + len(value)))
        at += len(value)
    cache = wire.UserAgentCache(10, bytes(16), None, [])
    own = cache.verdicts(payload, entries, lambda key: table[AnyValue.FromString(key[1:]).string_value.encode()])
    assert own == {0: person, 2: robot, 3: person}
    assert cache.verdicts(payload, array("I"), None) == {}


class _Ranked:
    def __init__(self, name: str, rank: int):
        self.name, self.rank = name, rank

    def __repr__(self) -> str:
        return self.name


def test_a_record_with_two_user_agents_takes_the_better() -> None:
    """By the classifier's rank (a signature before a browser); on a tie, the first."""
    pipeline = PIPELINES["default"]
    chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
    for first, second in ((chrome, DATADOG), (DATADOG, chrome)):
        record = _record(_kv("user_agent.original", first), _kv("http.user_agent", second))
        verdict = _own(pipeline, _request(_record(), record), 1)[0]
        assert verdict == pipeline.evidence.decoded(record)[0]
        assert verdict.source == "synthetic"
    both = _record(_kv("user_agent.original", "curl/8.4.0"), _kv("http.user_agent", "curl/8.5.0"))
    assert _own(pipeline, _request(both))[0] is pipeline.evidence.decoded(both)[0]


def test_a_key_in_a_body_a_map_or_a_bytes_value_is_not_evidence() -> None:
    nested = AnyValue(kvlist_value=KeyValueList(values=[_kv("user_agent.original", DATADOG)]))
    inner = _record(_kv("user_agent.original", DATADOG)).SerializeToString()
    for record in (
        _record(body=AnyValue(string_value="user_agent.original: " + DATADOG)),
        _record(body=nested),
        _record(KeyValue(key="headers", value=nested)),
        _record(_kv("note", "user_agent.original")),
        _record(KeyValue(key="payload", value=AnyValue(bytes_value=inner))),
        _record(body=AnyValue(bytes_value=inner)),
    ):
        for pipeline in PIPELINES.values():
            assert _own(pipeline, _request(record)) == pipeline.evidence.decoded(record) == (None, False, None)


def test_what_the_walk_does_not_model_is_read_decoded() -> None:
    """A KeyValue whose key is given twice (protobuf keeps the last), or a record triaged upstream."""
    ua = AnyValue(string_value=DATADOG).SerializeToString()
    twice = _field(1, b"note") + _field(1, b"user_agent.original") + _field(2, ua)
    record_bytes = _record().SerializeToString() + _field(6, twice)
    upstream = _record(_kv("triage.source", "synthetic"), _kv("user_agent.original", DATADOG))
    payload = _field(1, _field(2, _field(2, record_bytes) + _field(2, upstream.SerializeToString())))
    pipeline = PIPELINES["default"]
    evidence = pipeline.evidence
    found = wire.index(payload, evidence._keys, evidence._kinds, evidence._health_paths, 13)
    assert found.odd == [0, 1]
    decoded = ExportLogsServiceRequest.FromString(payload).resource_logs[0].scope_logs[0].log_records
    assert decoded[0].attributes[0].key == "user_agent.original"
    assert _own(pipeline, payload, 0) == evidence.decoded(decoded[0])
    assert _own(pipeline, payload, 0)[0].source == "synthetic"
    assert _own(pipeline, payload, 1) == (None, False, "synthetic")


@pytest.mark.parametrize(
    "path, reported",
    [("/healthz", True), ("/healthz?probe=1", True), ("/healthz/", True), ("/healthz-insurance", True), ("/products", False)],
)
def test_only_a_path_that_starts_like_a_health_path_is_reported(path: str, reported: bool) -> None:
    """The classifier decides (/healthz-insurance is not /healthz); paths that cannot be one cost no Python."""
    pipeline = PIPELINES["default"]
    evidence = pipeline.evidence
    assert evidence._health_paths  # the default configuration has health paths
    record = _record(_kv("http.request.method", "GET"), _kv("url.path", path), body=AnyValue(string_value="GET /healthz"))
    found = wire.index(_request(record), evidence._keys, evidence._kinds, evidence._health_paths, 13)
    assert bool(found.hits) is reported
    assert _own(pipeline, _request(record)) == evidence.decoded(record)


def _unknown_fields() -> bytes:
    """Fields no OTLP message defines, of every wire type, a group with a nested group among them."""
    group = _tag(101, 3) + _tag(7, 0) + b"\x01" + _tag(8, 3) + _tag(9, 5) + b"abcd" + _tag(8, 4) + _tag(101, 4)
    return _tag(100, 0) + b"\x96\x01" + _tag(102, 1) + b"12345678" + _field(103, b"zz") + group


def test_unknown_fields_are_skipped_and_forwarded_as_they_came() -> None:
    extra = _unknown_fields()
    kv = _field(1, b"user_agent.original") + _field(2, AnyValue(string_value=DATADOG).SerializeToString()) + extra
    record = _record(severity=17, text="ERROR").SerializeToString() + _field(6, kv) + extra
    scope = _field(2, record) + extra
    resource_logs = _field(2, scope) + extra
    payload = _field(1, resource_logs) + extra
    decoded = ExportLogsServiceRequest.FromString(payload)  # upb keeps unknown fields: valid
    pipeline = PIPELINES["default"]
    evidence = pipeline.evidence
    found = wire.index(payload, evidence._keys, evidence._kinds, evidence._health_paths, 13)
    assert found.user_agents.tolist()[:2] == [0, evidence._names.index("user_agent.original")] and found.candidates == [0] and found.trace_ids == [b"t" * 16]
    assert wire.assemble(payload, [b""]) == payload
    enriched = ExportLogsServiceRequest.FromString(wire.assemble(payload, [_kv("k", "v").SerializeToString() and
                                                                        LogRecord(attributes=[_kv("k", "v")]).SerializeToString()]))
    expected = ExportLogsServiceRequest()
    expected.CopyFrom(decoded)
    expected.resource_logs[0].scope_logs[0].log_records[0].attributes.append(_kv("k", "v"))
    assert enriched == expected


def test_index_reports_spans_trace_ids_candidates_and_groups() -> None:
    request = ExportLogsServiceRequest()
    first = request.resource_logs.add()
    first.resource.attributes.append(_kv("service.name", "a"))
    first.scope_logs.add().log_records.extend([_record(severity=17, text="ERROR"), LogRecord(body=AnyValue(string_value="x"))])
    first.scope_logs.add().log_records.append(LogRecord(severity_text="Warning"))
    request.resource_logs.add().scope_logs.add().log_records.append(_record(severity=13, text="WARN"))
    payload = request.SerializeToString()
    found = wire.index(payload, (), b"", (), 13)
    assert found.trace_ids == [b"t" * 16, b"", b"", b"t" * 16]
    assert found.candidates == [0, 2, 3]  # ERROR, a severity text alone, WARN
    assert [(which, first, count) for which, _, _, first, count in found.groups] == [(0, 0, 2), (0, 2, 1), (1, 3, 1)]
    assert found.resources == [first.resource.SerializeToString(), b""]
    records = [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    assert [payload[found.spans[2 * i] : found.spans[2 * i + 1]] for i in range(4)] == [r.SerializeToString() for r in records]


def test_index_groups_keep_each_message_without_its_children_as_it_came() -> None:
    """What a held record keeps of its ResourceLogs and ScopeLogs: every field but their children
    (scope_logs, log_records), in order and as they came, unknown ones too; an unknown group is kept
    whole, even one holding a field numbered as the children are."""
    group = _tag(101, 3) + _field(2, b"not a child") + _tag(101, 4)
    extra = _unknown_fields()
    record = _record(severity=17, text="ERROR").SerializeToString()
    scope_own = [_field(1, InstrumentationScope(name="pino").SerializeToString()), extra, group, _field(3, b"https://s")]
    scope_logs = scope_own[0] + _field(2, record) + scope_own[1] + _field(2, record) + scope_own[2] + scope_own[3]
    resource = Resource(attributes=[_kv("service.name", "a")]).SerializeToString()
    resource_own = [group, _field(1, resource), extra, _field(3, b"https://r")]
    resource_logs = resource_own[0] + _field(2, scope_logs) + resource_own[1] + resource_own[2] + _field(2, scope_logs) + resource_own[3]
    payload = _field(1, resource_logs)
    ExportLogsServiceRequest.FromString(payload)  # valid, as upb reads it
    found = wire.index(payload, (), b"", (), 13)
    assert [(which, first, count) for which, _, _, first, count in found.groups] == [(0, 0, 2), (0, 2, 2)]
    assert all(skeleton == b"".join(resource_own) for _, skeleton, _, _, _ in found.groups)
    assert all(scope == b"".join(scope_own) for _, _, scope, _, _ in found.groups)
    assert found.resources == [resource]


@pytest.mark.parametrize(
    "attributes, body, rejected",
    [
        (4, 10, set()),  # at both limits: accepted
        (5, 10, {1}),
        (1, 400, {1}),
        (0, 1000, {1}),
    ],
)
def test_records_over_a_limit_are_named(attributes: int, body: int, rejected: set[int]) -> None:
    """The index's largest record and most attributes decide whether any record is looked at; those
    over a limit are named (sizes as they came, attributes as upb counts them)."""
    limits = Limits(max_records=10, max_attributes=4, max_record_bytes=420)
    odd = _record(*(_kv(f"k{n}", "v") for n in range(attributes)), body=AnyValue(string_value="x" * body))
    payload = _request(_record(_kv("a", "b")), odd)
    found = wire.index(payload, (), b"", (), 13)
    assert limits.check(found, lambda i: LogRecord.FromString(payload[found.spans[2 * i] : found.spans[2 * i + 1]]))[0] == rejected
    with pytest.raises(Rejected):
        Limits(max_records=1).check(found, None)


@pytest.mark.parametrize(
    "request_, records, messages",
    [
        (ExportLogsServiceRequest(resource_logs=[ResourceLogs()] * 5), 0, 5),
        (ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs()] * 4)]), 0, 5),
        (ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord()] * 5)])]), 5, 2),
        (ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[LogRecord()] * 2)] * 2)] * 2), 8, 6),
    ],
)
def test_index_stops_past_max_count_records_or_messages(request_, records: int, messages: int) -> None:
    """At most ``max_count`` records, and ``max_count`` ResourceLogs and ScopeLogs together: one more of
    either and the walk stops with TooMany, naming which."""
    payload = request_.SerializeToString()
    most = max(records, messages)
    assert len(wire.index(payload, (), b"", (), 13, most).spans) // 2 == records
    with pytest.raises(wire.TooMany, match="log records" if records > messages else "ResourceLogs and ScopeLogs"):
        wire.index(payload, (), b"", (), 13, most - 1)


def test_index_reports_where_each_user_agent_lies() -> None:
    """Per user-agent attribute, in request order: its record, its key's id, and its AnyValue's bytes."""
    texts = ["curl/8.5.0", "Mozilla/5.0 (X11)", "x" * 300]
    payload = _request(
        _record(_kv("user_agent.original", texts[0])),
        _record(_kv("other", "y")),
        _record(_kv("user_agent.original", texts[1]), _kv("http.user_agent", texts[2])),
    )
    keys = (b"http.user_agent", b"user_agent.original")
    found = wire.index(payload, keys, bytes([wire.USER_AGENT, wire.USER_AGENT]), (), 13).user_agents.tolist()
    entries = [found[i : i + 4] for i in range(0, len(found), 4)]
    assert [(record, key) for record, key, _, _ in entries] == [(0, 1), (2, 1), (2, 0)]
    assert [payload[start:end] for _, _, start, end in entries] == [AnyValue(string_value=t).SerializeToString() for t in texts]


class _Verdict:
    def __init__(self, name: str):
        self.wire_typed = name.encode()


@pytest.mark.parametrize("distinct", [3, 40])  # within the table of distinct verdicts, and past it
def test_resolve_gives_own_else_trace_else_fallback(distinct: int) -> None:
    fallback = _Verdict("unknown")
    verdicts = [_Verdict(f"v{n}") for n in range(distinct)]
    t1, t2, t3 = b"1" * 16, b"2" * 16, b"3" * 16
    trace_ids = [b"", t1, t2, t1, t3, b"short"] + [b"own-%d" % n for n in range(distinct)]
    inherited = wire.TraceTable(100, bytes(16))
    for trace_id, verdict in [(t1, verdicts[0]), (t2, verdicts[1]), (b"", verdicts[2]), (b"short", verdicts[2])]:
        inherited.set(trace_id, verdict, 1.0)  # only 16-byte trace ids are kept
    own = {3: verdicts[2]} | {6 + n: v for n, v in enumerate(verdicts)}
    forward, counts = wire.resolve(trace_ids, own, inherited, fallback)
    expected = [own.get(i) or inherited.get(t) or fallback for i, t in enumerate(trace_ids)]
    assert expected[:6] == [fallback, verdicts[0], verdicts[1], verdicts[2], fallback, fallback]
    assert forward == [v.wire_typed for v in expected]
    assert counts == {v: expected.count(v) for v in set(expected)}
    with pytest.raises(IndexError):
        wire.resolve(trace_ids, {len(trace_ids): fallback}, inherited, fallback)
    with pytest.raises(TypeError, match="TraceTable"):
        wire.resolve(trace_ids, own, {}, fallback)


def test_assemble_appends_replaces_leaves_out_and_rewrites_resources() -> None:
    request = ExportLogsServiceRequest()
    group = request.resource_logs.add()
    group.resource.attributes.append(_kv("secret", "s3cret"))
    group.scope_logs.add().log_records.extend([_record(_kv("n", "0")), _record(_kv("n", "1")), _record(_kv("n", "2"))])
    request.resource_logs.add().scope_logs.add().log_records.append(_record(_kv("n", "3")))
    payload = request.SerializeToString()
    added = LogRecord(attributes=[_kv("triage.source", "user")]).SerializeToString()
    replacement = _record(_kv("n", "replaced" * 40))  # longer: its length prefix and its parents' grow
    resource = group.resource.__class__(attributes=[_kv("secret", "[REDACTED]")])
    out = ExportLogsServiceRequest.FromString(
        wire.assemble(payload, [added, None, (replacement.SerializeToString(),), b""], {0: resource.SerializeToString()})
    )
    expected = ExportLogsServiceRequest()
    expected.CopyFrom(request)
    records = expected.resource_logs[0].scope_logs[0].log_records
    records[0].attributes.append(_kv("triage.source", "user"))
    del records[1]
    records[1].CopyFrom(replacement)
    expected.resource_logs[0].resource.CopyFrom(resource)
    assert out == expected
    with pytest.raises(ValueError):
        wire.assemble(payload, [b""] * 3)
    with pytest.raises(ValueError):
        wire.assemble(payload, [b""] * 5)
    with pytest.raises(TypeError):
        wire.assemble(payload, ["text"] * 4)


def _damaged(payload: bytes, data) -> bytes:
    """``payload`` with one to three of its bytes overwritten, at places hypothesis draws."""
    damaged = bytearray(payload)
    if damaged:
        for _ in range(data.draw(st.integers(1, 3))):
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    return bytes(damaged)


@_settings(300)
@given(gen.requests(max_resources=2, max_records=4), st.data())
def test_a_damaged_request_is_refused_by_upb_or_walked_safely(request: ExportLogsServiceRequest, data) -> None:
    """Whatever upb accepts, the walk reads and writes back unchanged; what it refuses, index refuses as Malformed."""
    payload = _damaged(request.SerializeToString(), data)
    try:
        decoded = ExportLogsServiceRequest.FromString(payload)
    except Exception:
        with pytest.raises(wire.Malformed):
            wire.index(payload, (b"user_agent.original",), bytes([wire.USER_AGENT]), (b"/healthz",), 13)
        return
    found = wire.index(payload, (b"user_agent.original",), bytes([wire.USER_AGENT]), (b"/healthz",), 13)
    records = [r for rl in decoded.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    assert len(found.trace_ids) == len(records)
    # What the per-record limits go by: attributes as upb counts them, sizes as they came.
    assert found.most_attributes == max((len(r.attributes) for r in records), default=0)
    assert found.largest == max((found.spans[2 * i + 1] - found.spans[2 * i] for i in range(len(records))), default=0)
    assert ExportLogsServiceRequest.FromString(wire.assemble(payload, [b""] * len(found.trace_ids))) == decoded


@_settings(300)
@given(gen.requests(max_resources=3, max_records=5), st.data())
def test_record_counts_from_the_framing_are_upbs_on_damaged_requests(request: ExportLogsServiceRequest, data) -> None:
    """What upb decodes, ``record_counts`` counts as upb does per ResourceLogs (the export's split
    goes by it); what it cannot frame, it refuses as Malformed, never anything else."""
    payload = request.SerializeToString()
    if data.draw(st.booleans()):
        payload = _damaged(payload, data)
    try:
        decoded = ExportLogsServiceRequest.FromString(payload)
    except Exception:
        decoded = None
    try:
        counts = wire.record_counts(payload)
    except wire.Malformed:
        assert decoded is None, "upb decodes what record_counts refused"
        return
    assert all(isinstance(count, int) and count >= 0 for count in counts)
    if decoded is not None:
        assert counts == [sum(len(sl.log_records) for sl in rl.scope_logs) for rl in decoded.resource_logs]


@pytest.mark.parametrize("cut", [1, 2, 5, 40])
def test_record_counts_refuse_a_truncated_request(cut: int) -> None:
    records = [LogRecord(body=AnyValue(string_value=f"record {i}")) for i in range(5)]
    payload = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=records[:3]), ScopeLogs(log_records=records[3:])]),
                       ResourceLogs(scope_logs=[ScopeLogs(log_records=records[:1])])]
    ).SerializeToString()
    assert wire.record_counts(payload) == [5, 1]
    with pytest.raises(wire.Malformed, match="broken framing"):
        wire.record_counts(payload[:-cut])


def test_redaction_on_the_wire_path_matches_redacting_the_decoded_request() -> None:
    """Secrets found by the scan are redacted per record; the rest forwarded as they came."""
    redactor = Redactor()
    pipeline = build_pipeline(Config.from_env({}), redactor)
    oracle = reference_of(build_pipeline(Config.from_env({})))
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    records.add().CopyFrom(_record(_kv("http.request.header.cookie", "appSession=abc")))
    records.add().CopyFrom(_record(_kv("msg", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln")))
    records.add().CopyFrom(_record(_kv("user_agent.original", DATADOG)))
    payload = request.SerializeToString()
    forwarded, stats = pipeline.process_wire(payload, 0.0)
    expected = ExportLogsServiceRequest.FromString(payload)
    oracle.process(expected, 0.0)
    counts: dict[str, int] = {}
    redactor.redact_request(expected, counts)
    assert ExportLogsServiceRequest.FromString(forwarded) == expected
    assert stats.redactions == counts and counts


# --- validation without decoding (wire.problem) -----------------------------------------------------------


def _upb_accepts(payload: bytes) -> bool:
    try:
        ExportLogsServiceRequest.FromString(payload)
    except Exception:
        return False
    return True


def _nested(levels: int, inner: bytes = b"") -> bytes:
    """A request whose first record's body nests ``levels`` array values (2 messages each)."""
    value = _field(1, b"x") + inner
    for _ in range(levels):
        value = _field(5, _field(1, value))
    return _field(1, _field(2, _field(2, _field(5, value))))


def _group(depth: int) -> bytes:
    return _tag(101, 3) * depth + _tag(101, 4) * depth


def _in_attribute(levels: int, inner: bytes = b"", extra: bytes = b"") -> bytes:
    """A request whose first record's attribute value nests ``levels`` array values; ``extra`` ends the
    KeyValue (an unknown field takes it off the usual framing)."""
    value = _field(1, b"x") + inner
    for _ in range(levels):
        value = _field(5, _field(1, value))
    return _field(1, _field(2, _field(2, _field(6, _field(1, b"k") + _field(2, value) + extra))))


def _in_record(content: bytes) -> bytes:
    return _field(1, _field(2, _field(2, content)))


@pytest.mark.parametrize(
    "payload",
    [
        _request(_record(_kv("k", "v"))),
        _request(_record(_kv("k", "été ✓ 𝄞"))),
        _field(1, _field(2, _field(2, _field(6, _field(1, b"\xff"))))),  # a key that is not UTF-8
        _field(1, _field(2, _field(2, _field(6, _field(1, b"\xed\xa0\x80"))))),  # a surrogate
        _field(1, _field(2, _field(2, _field(6, _field(1, b"\xc0\x80"))))),  # overlong
        _field(1, _field(2, _field(2, _field(6, _field(1, b"\xf4\x90\x80\x80"))))),  # past U+10FFFF
        _field(1, _field(2, _field(2, _field(5, _field(7, b"\xff"))))),  # bytes_value: any bytes
        _field(1, _field(2, _field(2, _tag(3, 0) + b"\x01"))),  # severity_text as a varint: unknown, fine
        _field(1, _field(2, _field(2, _tag(6, 2) + b"\x05ab"))),  # a length past its message
        _field(1, _field(2, _field(2, _tag(2, 0) + b"\xff" * 9 + b"\x01"))),  # a 10-byte varint
        _field(1, _field(2, _field(2, _tag(2, 0) + b"\xff" * 10 + b"\x01"))),  # 11 bytes
        _field(1, _field(2, _field(2, b"\xf8\xff\xff\xff\x7f\x01"))),  # a tag past 32 bits
        _field(1, _field(2, _field(2, b"\x0a\x81\x80\x80\x80\x80\x00x"))),  # a 6-byte length
        _field(1, _field(2, _field(2, b"\x02\x00"))),  # field number 0
        _field(1, _field(2, _field(2, _tag(7, 4)))),  # an end-group tag alone
        _field(1, _field(2, _field(2, _tag(7, 6)))),  # wire type 6
        _field(1, _field(2, _field(2, _tag(101, 3) + _tag(102, 4)))),  # a group ended by another number
        _field(1, _field(2, _field(2, _tag(101, 3)))),  # a group never ended
        # Field number 0: refused in a message, skipped inside a group (as upb does), any wire type.
        _tag(0, 3) + _tag(0, 4),
        _tag(1, 3) + b"\x00\x00" + _tag(1, 4),
        _tag(1, 3) + _tag(0, 2) + b"\x02\xff\xfe" + _tag(1, 4),
        _tag(1, 3) + _tag(0, 5) + b"abcd" + _tag(0, 1) + b"12345678" + _tag(1, 4),
        _tag(1, 3) + _tag(0, 3) + b"\x00\x00" + _tag(0, 4) + _tag(1, 4),
        _tag(1, 3) + _tag(0, 3) + _tag(2, 4) + _tag(1, 4),  # group 0 ended by another number
        _tag(1, 3) + _tag(0, 4),  # an end tag 0 in group 1
        _in_record(_tag(101, 3) + b"\x00\x00" + _tag(101, 4)),
        _in_record(b"\x00\x00"),
        _nested(48),  # nested 100 deep below the request: the most upb decodes
        _nested(48, _group(1)),  # groups count too
        _nested(47, _group(2)),
        _nested(47, _group(3)),
        _nested(49),
        _group(100),
        _group(101),
        # Every level the walk reads field by field, and what it hands to the whole-message check.
        _in_record(_field(6, _field(1, b"k") + _field(2, _field(1, b"\xff")))),  # a value that is not UTF-8
        _in_record(_field(6, _field(1, b"k") + _field(2, _field(1, b"v")) + _field(1, b"\xff"))),  # a second key
        # A value of one string_value with a one-byte length is checked apart (its UTF-8 alone): at
        # the edge of that, and with more after the string.
        _in_record(_field(6, _field(1, b"k") + _field(2, _field(1, b"v" * 126 + b"\xff")))),
        _in_record(_field(6, _field(1, b"k") + _field(2, _field(1, b"v" * 127 + b"\xff")))),
        _in_record(_field(6, _field(1, b"k") + _field(2, _field(1, b"v" * 126 + b"\xc3\xa9")))),
        _in_record(_field(6, _field(1, b"k") + _field(2, _field(1, b"v") + _field(1, b"\xff")))),
        _in_record(_field(6, _field(1, b"k") + _field(2, _field(1, b"v") + _tag(3, 0) + b"\x80"))),
        _in_record(_field(6, _field(1, b"k") + _field(2, _field(1, b"\xff") + _tag(3, 0) + b"\x01"))),
        _in_record(_field(3, b"\xc0\x80")),  # severity_text
        _in_record(_field(12, b"\xff")),  # event_name
        _in_record(_field(9, b"\xff" * 16)),  # trace_id: bytes, anything goes
        _in_record(_field(5, _field(1, b"\xff"))),  # the body
        _in_record(_group(2)),
        _field(1, _field(2, _field(1, _field(1, b"\xff")))),  # the scope's name
        _field(1, _field(2, _field(3, b"\xff"))),  # the scope's schema_url
        _field(1, _field(1, _field(1, _field(1, b"\xff")))),  # a resource attribute's key
        _field(1, _field(3, b"\xff")),  # the resource's schema_url
        _field(1, _group(3)),
        _group(1) + _field(1, b""),
        _field(1, _field(2, _field(2, b"") + _tag(7, 6))),  # wire type 6 after a record
        _in_attribute(47, _group(1)),  # 100 deep: the most upb decodes
        _in_attribute(47, _group(2)),
        _in_attribute(47, _group(1), extra=_field(3, b"")),
        _in_attribute(47, _group(2), extra=_field(3, b"")),
    ],
)
def test_validation_agrees_with_upb(payload: bytes) -> None:
    assert (wire.problem(payload) is None) == _upb_accepts(payload), wire.problem(payload)


@pytest.mark.parametrize(
    "payload",
    [
        _in_record(_group(96)),  # a record's unknown group, as deep as upb takes it
        _field(1, _field(2, _group(97) + _field(2, b""))),  # in a ScopeLogs, cut off a held record's skeleton
        _field(1, _group(98) + _field(2, _field(2, b""))),  # in a ResourceLogs, likewise
        _in_record(_tag(101, 3) + _tag(0, 0) + b"\x00" + _tag(0, 3) + _tag(0, 2) + b"\x00" + _tag(0, 4) + _tag(101, 4)),
    ],
)
def test_deeply_nested_unknown_groups_are_walked_and_kept(payload: bytes) -> None:
    """What the check lets through, the walk and the skeletons skip too (they once stopped at 64 deep)."""
    assert _upb_accepts(payload)
    found = wire.index(payload, (), b"", (), 13)
    assert len(found.trace_ids) == 1 and wire.assemble(payload, [b""]) == payload


@_settings(400)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.text(max_size=20).map(str.encode),
        st.lists(st.sampled_from((b"a", b"\xc3\xa9", b"\xe2\x9c\x93", b"\xf0\x9d\x84\x9e", b"\x80", b"\xed\xa0\x80", b"\xc0\x80")), max_size=12).map(b"".join),
    ),
    st.sampled_from(("key", "value", "body", "severity_text")),
)
def test_strings_of_every_length_are_checked_as_upb_checks_them(text: bytes, where: str) -> None:
    """UTF-8 is checked words at a time with the last word overlapping: every length and position."""
    content = {
        "key": _field(6, _field(1, text)),
        "value": _field(6, _field(1, b"k") + _field(2, _field(1, text))),
        "body": _field(5, _field(1, text)),
        "severity_text": _field(3, text),
    }[where]
    payload = _in_record(content)
    assert (wire.problem(payload) is None) == _upb_accepts(payload), (text, where)


@_settings(400)
@given(gen.requests(max_resources=2, max_records=4), st.data())
def test_validation_agrees_with_upb_on_damaged_requests(request: ExportLogsServiceRequest, data) -> None:
    """Bytes changed, inserted or cut anywhere: accepted exactly when upb accepts."""
    payload = bytearray(request.SerializeToString())
    assert wire.problem(bytes(payload)) is None
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(("set", "insert", "cut")))
        at = data.draw(st.integers(0, len(payload)))
        if action == "insert":
            payload[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif action == "cut":
            del payload[at : at + data.draw(st.integers(1, 4))]
        elif payload:
            payload[min(at, len(payload) - 1)] = data.draw(st.sampled_from((0x00, 0x80, 0xFF, 0xC0, 0xED, 0x0C, 0x0B, 0x7F)))
    payload = bytes(payload)
    assert (wire.problem(payload) is None) == _upb_accepts(payload), wire.problem(payload)


def test_evidence_keys_past_the_masked_ones_are_found() -> None:
    """index() finds the first 64 keys through bit masks and the rest one by one: both are found."""
    keys = tuple(f"http.request.header.x-marker-{n}".encode() for n in range(100))
    record = _record(_kv("http.request.header.x-marker-3", "a"), _kv("http.request.header.x-marker-90", "b"))
    found = wire.index(_request(record), keys, bytes(len(keys)), (), 13)
    assert [(r, k) for r, k, _ in found.hits] == [(0, 3), (0, 90)]


def test_more_evidence_keys_than_index_takes_are_refused_at_start_up() -> None:
    signatures = (
        Signature("many", "synthetic", (), tuple((f"x-marker-{n}", ()) for n in range(wire.MAX_KEYS)), "https://example.com"),
    )
    with pytest.raises(CatalogError, match="TRIAGE_SIGNATURES_FILE"):
        EvidenceReader(Classifier(signatures), Redactor((), ()))


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 2_097_152])
def test_fields_encodes_repeated_children_as_protobuf_does(size: int) -> None:
    """``fields`` is how held records are put back into a request: a ScopeLogs built from its own
    bytes and its records' is the one protobuf serializes, whatever the varint length of a child."""
    records = [LogRecord(body=AnyValue(string_value="x" * size)), LogRecord(), LogRecord(severity_number=17)]
    own = ScopeLogs(scope=InstrumentationScope(name="pino"), schema_url="s")
    expected = ScopeLogs(scope=own.scope, schema_url="s", log_records=records).SerializeToString()
    built = wire.fields(2, own.SerializeToString(), [r.SerializeToString() for r in records])
    assert ScopeLogs.FromString(built) == ScopeLogs.FromString(expected)
    assert len(built) == len(expected)
    assert wire.fields(2, b"", []) == b""


def test_fields_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="1 to 15"):
        wire.fields(16, b"", [b"x"])
    with pytest.raises(ValueError, match="1 to 15"):
        wire.fields(0, b"", [b"x"])
    with pytest.raises(TypeError, match="list of bytes"):
        wire.fields(2, b"", [b"x", "text"])
