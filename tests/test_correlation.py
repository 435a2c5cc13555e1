"""Trace correlation across requests: evidence before, after and never; bounds; shadow mode.

Time is passed in, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from processor.classify import Verdict
from processor.correlation import HeldBatch, Holding, TraceMemory

from processor import intake
from processor.config import Config
from processor.metrics import Metrics
from processor.queue import BoundedQueue
from processor.status import Rejected
from processor.redact import Redactor
from processor.service import build_pipeline

from .helpers import AUTH0, attributes, pipeline, records

DATADOG = "Datadog/Synthetics"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def trace(n: int) -> bytes:
    return n.to_bytes(16, "big")


def request(*logs: LogRecord, service: str = "web") -> ExportLogsServiceRequest:
    out = ExportLogsServiceRequest()
    resource_logs = out.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name", value=AnyValue(string_value=service))
    resource_logs.schema_url = "https://opentelemetry.io/schemas/1.26.0"
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "next"
    scope_logs.log_records.extend(logs)
    return out


def access(trace_id: bytes, user_agent: str, path: str = "/dashboard") -> LogRecord:
    return LogRecord(
        severity_number=9,
        body=AnyValue(string_value=f"GET {path}"),
        trace_id=trace_id,
        attributes=[
            KeyValue(key="user_agent.original", value=AnyValue(string_value=user_agent)),
            KeyValue(key="url.path", value=AnyValue(string_value=path)),
        ],
    )


def auth0_error(trace_id: bytes) -> LogRecord:
    return LogRecord(severity_number=17, severity_text="ERROR", body=AnyValue(string_value=AUTH0), trace_id=trace_id)


def make(**env: str):
    return pipeline(**{"TRIAGE_CORRELATION_WINDOW": "2", "TRIAGE_CORRELATION_TTL": "60", **env})


class TestEvidenceTiming:
    def test_evidence_before(self) -> None:
        """The access log came in an earlier request: the error is downgraded at once, not held."""
        p = make()
        p.process(request(access(trace(1), DATADOG)), now=0.0)
        later = request(auth0_error(trace(1)))
        stats = p.process(later, now=0.5)
        assert stats.held == 0 and stats.downgraded == {"auth0-missing-session": 1}
        error = attributes(records(later)[0])
        assert error["triage.source.evidence"] == "same trace: user_agent.original contains 'Datadog/Synthetics'"

    def test_evidence_after(self) -> None:
        """The error comes first: it is held, then released downgraded when the access log arrives."""
        p = make()
        first = request(auth0_error(trace(2)))
        stats = p.process(first, now=0.0)
        assert stats.held == 1 and records(first) == []  # moved out of the request ...
        assert p.release_ready(now=0.1) is None  # ... and waiting
        p.process(request(access(trace(2), DATADOG)), now=0.3)
        payload, released_stats = p.release_ready(now=0.3)
        released = ExportLogsServiceRequest.FromString(payload)
        [error] = records(released)
        assert (error.severity_number, error.severity_text) == (5, "DEBUG")
        assert attributes(error)["triage.original_severity_number"] == 17
        assert released_stats.downgraded == {"auth0-missing-session": 1}
        # It keeps the resource and scope it came with.
        assert released.resource_logs[0].resource == first.resource_logs[0].resource
        assert released.resource_logs[0].schema_url == first.resource_logs[0].schema_url
        assert released.resource_logs[0].scope_logs[0].scope.name == "next"
        assert len(p.holding) == 0 and p.holding.bytes == 0

    def test_evidence_never(self) -> None:
        """Nothing comes within the window: released as unknown, severity untouched."""
        p = make()
        p.process(request(auth0_error(trace(3))), now=0.0)
        assert p.release_ready(now=1.99) is None
        released, stats = p.release_ready(now=2.0)
        [error] = records(released)
        assert error.severity_number == 17 and attributes(error)["triage.source"] == "unknown"
        assert stats.downgraded == {} and stats.by_source == {"unknown": 1}

    def test_user_evidence_after_keeps_error(self) -> None:
        """A held error whose trace turns out to be a real user's is released untouched."""
        p = make()
        p.process(request(auth0_error(trace(4))), now=0.0)
        p.process(request(access(trace(4), CHROME)), now=0.2)
        released, _ = p.release_ready(now=0.2)
        [error] = records(released)
        assert error.severity_number == 17 and attributes(error)["triage.source"] == "user"

    def test_user_anywhere_in_trace_wins_across_requests(self) -> None:
        """Monitor evidence then user evidence for one trace: the trace counts as a user's."""
        p = make()
        p.process(request(access(trace(5), DATADOG)), now=0.0)
        p.process(request(access(trace(5), CHROME)), now=0.1)
        later = request(auth0_error(trace(5)))
        p.process(later, now=0.2)
        assert records(later)[0].severity_number == 17

    def test_only_rule_candidates_are_held(self) -> None:
        """Records no rule matches flow at once, even without evidence; so do records without a trace."""
        p = make()
        info = LogRecord(severity_number=9, body=AnyValue(string_value="hello"), trace_id=trace(6))
        other_error = LogRecord(severity_number=17, body=AnyValue(string_value="TypeError: boom"), trace_id=trace(6))
        no_trace = auth0_error(b"")
        req = request(info, other_error, no_trace)
        stats = p.process(req, now=0.0)
        assert stats.held == 0 and len(records(req)) == 3

    def test_held_among_others_keeps_the_rest_in_place(self) -> None:
        """Holding one record of a scope leaves the other records, in order, in the request."""
        p = make()
        a = LogRecord(severity_number=9, body=AnyValue(string_value="a"))
        b = LogRecord(severity_number=9, body=AnyValue(string_value="b"))
        req = request(a, auth0_error(trace(7)), b)
        p.process(req, now=0.0)
        assert [r.body.string_value for r in records(req)] == ["a", "b"]

    def test_window_zero_never_holds(self) -> None:
        """TRIAGE_CORRELATION_WINDOW=0: the error is decided at once (unknown)."""
        p = pipeline(TRIAGE_CORRELATION_WINDOW="0")
        req = request(auth0_error(trace(8)))
        assert p.process(req, now=0.0).held == 0
        assert attributes(records(req)[0])["triage.source"] == "unknown"

    def test_span_evidence_releases_held(self) -> None:
        """Evidence learned from a span (not a log) frees the trace's held records too."""
        p = make()
        p.process(request(auth0_error(trace(9))), now=0.0)
        span_verdict = p.classifier.tracestate("dd=s:1;o:synthetics")
        p.learn(trace(9), span_verdict, now=0.4)
        released, stats = p.release_ready(now=0.4)
        assert stats.downgraded == {"auth0-missing-session": 1}
        assert attributes(records(released)[0])["triage.source.evidence"] == "same trace: tracestate contains 'o:synthetics'"

    def test_held_records_are_redacted_as_they_are_released(self) -> None:
        """Kept as they came while held (the evidence may be in what redaction removes), redacted as
        they go: the record, its resource, and the counts, as for a forwarded record."""
        p = build_pipeline(Config.from_env({"TRIAGE_CORRELATION_WINDOW": "2"}), Redactor())
        error = auth0_error(trace(20))
        error.attributes.add(key="http.request.header.cookie", value=AnyValue(string_value="appSession=abc.def.ghi"))
        kept = auth0_error(trace(21))  # nothing to redact: its bytes go as they came, enriched
        first = request(error, kept)
        first.resource_logs[0].resource.attributes.add(
            key="http.request.header.authorization", value=AnyValue(string_value="Bearer abcdefghijkl")
        )
        assert p.process(first, now=0.0).held == 2
        payload, stats = p.release_ready(now=2.0)
        released = ExportLogsServiceRequest.FromString(payload)
        assert attributes(records(released)[0])["http.request.header.cookie"] == "[REDACTED]"
        assert attributes(released.resource_logs[0].resource)["http.request.header.authorization"] == "[REDACTED]"
        assert attributes(released.resource_logs[0].resource)["service.name"] == "web"
        assert b"abc.def.ghi" not in payload and b"abcdefghijkl" not in payload
        assert stats.redactions == {"attribute": 2} and stats.records == 2
        assert records(released)[1].body == kept.body

    def test_a_batch_released_whole_has_its_resource_redacted(self) -> None:
        """Records with nothing to redact leave whole (in C passes, not one by one): their resource is
        still redacted and counted, and a second group keeps its own resource and scope."""
        p = build_pipeline(Config.from_env({"TRIAGE_CORRELATION_WINDOW": "2"}), Redactor())

        def two_groups() -> ExportLogsServiceRequest:
            first = request(auth0_error(trace(22)), auth0_error(trace(23)))
            first.resource_logs[0].resource.attributes.add(
                key="http.request.header.authorization", value=AnyValue(string_value="Bearer abcdefghijkl")
            )
            second = request(auth0_error(trace(24)), service="api")
            second.resource_logs[0].scope_logs[0].scope.name = "api-scope"
            first.resource_logs.extend(second.resource_logs)
            return first

        assert p.process(two_groups(), now=0.0).held == 3
        payload, stats = p.release_ready(now=2.0)
        released = ExportLogsServiceRequest.FromString(payload)
        assert [attributes(r.resource)["service.name"] for r in released.resource_logs] == ["web", "api"]
        assert attributes(released.resource_logs[0].resource)["http.request.header.authorization"] == "[REDACTED]"
        assert released.resource_logs[1].scope_logs[0].scope.name == "api-scope"
        assert [r.trace_id for r in records(released)] == [trace(22), trace(23), trace(24)]
        assert {attributes(r)["triage.source"] for r in records(released)} == {"unknown"}
        assert b"abcdefghijkl" not in payload
        assert stats.redactions == {"attribute": 1} and stats.records == 3 and stats.by_source == {"unknown": 3}
        assert len(p.holding) == 0 and p.holding.bytes == 0
        # Evidence for one record of such a batch: the rest leave later, each with its own group.
        assert p.process(two_groups(), now=3.0).held == 3
        p.process(request(access(trace(23), DATADOG)), now=3.5)
        payload, stats = p.release_ready(now=3.5)
        assert [r.trace_id for r in records(payload)] == [trace(23)] and stats.downgraded == {"auth0-missing-session": 1}
        payload, stats = p.release_ready(now=5.0)
        released = ExportLogsServiceRequest.FromString(payload)
        assert [(attributes(rl.resource)["service.name"], [r.trace_id for r in records_in(rl)]) for rl in released.resource_logs] == [
            ("web", [trace(22)]),
            ("api", [trace(24)]),
        ]
        assert attributes(released.resource_logs[0].resource)["http.request.header.authorization"] == "[REDACTED]"
        assert len(p.holding) == 0 and p.holding.bytes == 0

    def test_a_held_record_that_names_its_synthetic_type_keeps_it_once(self) -> None:
        """A held error that already carries user_agent.synthetic.type (set upstream) does not get
        it a second time when its window ends, whether it leaves with its whole request or after
        another of its request left with its evidence."""
        p = make()

        def typed(n: int) -> LogRecord:
            record = auth0_error(trace(n))
            record.attributes.add(key="user_agent.synthetic.type", value=AnyValue(string_value="test"))
            return record

        assert p.process(request(typed(30), auth0_error(trace(31))), now=0.0).held == 2  # leaves whole
        assert p.process(request(typed(32), auth0_error(trace(33))), now=0.1).held == 2
        p.process(request(access(trace(33), DATADOG)), now=0.5)  # frees the second request's second
        released, _ = p.release_ready(now=0.5)
        assert [r.trace_id for r in records(ExportLogsServiceRequest.FromString(released))] == [trace(33)]
        released, stats = p.release_ready(now=2.1)
        out = records(ExportLogsServiceRequest.FromString(released))
        assert [r.trace_id for r in out] == [trace(30), trace(31), trace(32)] and stats.records == 3
        for record in (out[0], out[2]):
            assert [kv.key for kv in record.attributes].count("user_agent.synthetic.type") == 1
            assert attributes(record)["user_agent.synthetic.type"] == "test"
        assert {attributes(record)["triage.source"] for record in out} == {"unknown"}
        assert len(p.holding) == 0 and p.holding.bytes == 0

    def test_a_record_freed_early_is_not_kept_by_its_request_s_batch(self) -> None:
        """A request's held records are kept together until their window ends; one freed earlier by
        its evidence leaves that batch at once, so what stays in memory is what holding counts."""
        p = make()
        freed, waiting = auth0_error(trace(40)), auth0_error(trace(41))
        freed.body.string_value += " " + "x" * 4096
        assert p.process(request(freed, waiting), now=0.0).held == 2
        before = p.holding.bytes
        p.process(request(access(trace(40), DATADOG)), now=0.5)
        released, _ = p.release_ready(now=0.5)
        assert len(released) > 4096 and p.holding.bytes < before - 4096 and len(p.holding) == 1
        (batch,) = p.holding._by_deadline
        assert not any(b"x" * 4096 in bytes(item[3]) for item in batch.records if item is not None)
        assert not any(b"x" * 4096 in serialized for serialized in batch.wires)
        released, stats = p.release_ready(now=2.0)
        assert [r.trace_id for r in records(ExportLogsServiceRequest.FromString(released))] == [trace(41)]
        assert len(p.holding) == 0 and p.holding.bytes == 0
        # A request's only held record freed by a real user's access log: the whole batch leaves at once.
        alone = auth0_error(trace(42))
        alone.body.string_value = freed.body.string_value
        assert p.process(request(alone), now=3.0).held == 1
        p.process(request(access(trace(42), CHROME)), now=3.5)
        released, stats = p.release_ready(now=3.5)
        assert stats.by_source == {"user": 1} and b"x" * 4096 in released
        (batch,) = p.holding._by_deadline
        assert len(p.holding) == 0 and p.holding.bytes == 0
        assert not any(b"x" * 4096 in bytes(item[3]) for item in batch.records if item is not None)
        assert not any(b"x" * 4096 in serialized for serialized in batch.wires)

    def test_release_all_on_shutdown(self) -> None:
        """Shutdown takes every held record out, decided with what is known."""
        p = make()
        for n in range(10, 15):
            p.process(request(auth0_error(trace(n))), now=0.0)
        released, stats = p.release_all(now=0.1)
        assert len(records(released)) == 5 and stats.records == 5
        assert len(p.holding) == 0 and p.holding.bytes == 0


@pytest.mark.parametrize("merge_limit", [intake.MERGE_LIMIT_BYTES, 1])
def test_released_records_join_the_request_that_freed_them(monkeypatch, merge_limit: int) -> None:
    """The intake queues a request and the held records its evidence freed as one export request,
    unless together they would pass the merge limit: then as two, nothing lost either way."""
    monkeypatch.setattr(intake, "MERGE_LIMIT_BYTES", merge_limit)
    queue = BoundedQueue(1 << 30)
    accepting = intake.Intake(make(), queue, Metrics(), 1 << 30)
    asyncio.run(accepting.accept(request(auth0_error(trace(30))).SerializeToString(), intake.PROTOBUF, "grpc"))
    assert not queue.pending()  # held
    asyncio.run(accepting.accept(request(access(trace(30), DATADOG)).SerializeToString(), intake.PROTOBUF, "grpc"))
    batches = queue.pending()
    queued = [records(ExportLogsServiceRequest.FromString(batch.payload)) for batch in batches]
    bodies = [record.body.string_value for batch in queued for record in batch]
    assert bodies == ["GET /dashboard", AUTH0]
    assert [len(batch) for batch in queued] == ([2] if merge_limit > 1 else [1, 1])
    assert [batch.records for batch in batches] == [len(batch) for batch in queued]
    assert attributes(queued[-1][-1])["triage.rule"] == "auth0-missing-session"


def test_released_records_are_queued_even_when_the_request_that_freed_them_is_refused(monkeypatch) -> None:
    """The queue fails to take the request whose evidence freed a held error: the request is refused
    (its sender retries it), the error, acknowledged long ago, is queued on the next try."""
    monkeypatch.setattr(intake, "RETRY_QUEUE_S", 0.0)

    class FailingQueue(BoundedQueue):  # as the persistent queue fails when its disk does
        fail_next = False

        async def put(self, batch) -> None:
            if self.fail_next:
                self.fail_next = False
                raise OSError("disk full")
            await super().put(batch)

    queue = FailingQueue(1 << 30)
    accepting = intake.Intake(make(), queue, Metrics(), 1 << 30)
    asyncio.run(accepting.accept(request(auth0_error(trace(31))).SerializeToString(), intake.PROTOBUF, "grpc"))
    queue.fail_next = True
    evidence = request(access(trace(31), DATADOG)).SerializeToString()
    with pytest.raises(Rejected):
        asyncio.run(accepting.accept(evidence, intake.PROTOBUF, "grpc"))
    (queued,) = [records(ExportLogsServiceRequest.FromString(batch.payload)) for batch in queue.pending()]
    assert [record.body.string_value for record in queued] == [AUTH0]
    assert attributes(queued[0])["triage.rule"] == "auth0-missing-session"
    asyncio.run(accepting.accept(evidence, intake.PROTOBUF, "grpc"))  # the sender's retry
    assert [len(records(ExportLogsServiceRequest.FromString(b.payload))) for b in queue.pending()] == [1, 1]


def batch(deadline: float, *traces: int, size: int = 10) -> HeldBatch:
    """A request's held records: one per trace number, each its (trace number, serial) as its record."""
    global _serial
    _serial += 1
    return HeldBatch([trace(t) for t in traces], [size] * len(traces), deadline, [(t, _serial) for t in traces])


_serial = 0


def records_of(taken: list[tuple[HeldBatch, list[int]]]) -> list:
    return [held.records[position] for held, positions in taken for position in positions]


def test_holding_finds_the_traces_still_waiting_among_a_requests() -> None:
    """waiting_among answers, by position in request order, exactly the traces with records still
    held: not one whose records its evidence freed, nor one whose records' window ended."""
    holding = Holding()
    first, second, third = batch(2.0, 1, 2), batch(3.0, 2), batch(4.0, 3)
    for held in (first, second, third):
        holding.hold(held)
    asked = [trace(n) for n in (0, 1, 2, 3, 4, 5, 2)]
    assert holding.waiting_among(asked) == [1, 2, 3, 6]
    assert holding.take_trace(trace(3)) == [(third, [0])]
    assert holding.waiting_among(asked) == [1, 2, 6]
    assert holding.take_expired(2.0) == [(first, [0, 1])]
    assert holding.waiting_among(asked) == [2, 6]  # its second record waits until 3.0
    assert holding.take_expired(3.0) == [(second, [0])]
    assert holding.take_expired(4.0) == []  # the third batch's only record left with its evidence
    assert holding.waiting_among(asked) == [] and len(holding) == 0 and holding.bytes == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("hold"), st.lists(st.integers(0, 5), max_size=6)),
            st.tuples(st.just("take"), st.integers(0, 5)),
            st.tuples(st.just("expire"), st.integers(0, 5)),
        ),
        max_size=40,
    )
)
def test_holding_a_request_at_a_time_agrees_with_a_list_of_records(steps) -> None:
    """Batches (a request's records, one deadline) against a plain list of records: each record
    leaves once, by its trace's evidence (every record of the trace, in the order held) or by its
    deadline (in the order held), and the counts and bytes come back to zero. Traces repeat within
    a batch and across batches, and are held again after they left."""
    holding = Holding()
    model: list[tuple] = []  # (record, trace, deadline, size) still held, in the order held
    asked = [trace(t) for t in range(6)]
    now = 0.0
    for step, argument in steps:
        if step == "hold":
            now += 1.0
            held = batch(now + 2.0, *argument)
            held.sizes = [t + 1 for t in argument]
            holding.hold(held)
            model.extend((record, t, now + 2.0, t + 1) for record, t in zip(held.records, argument))
        elif step == "take":
            expected = [m for m in model if m[1] == argument]
            assert records_of(holding.take_trace(trace(argument))) == [m[0] for m in expected]
            model = [m for m in model if m[1] != argument]
        else:
            now += argument
            expected = [m for m in model if m[2] <= now]
            assert records_of(holding.take_expired(now)) == [m[0] for m in expected]
            model = [m for m in model if m[2] > now]
        assert len(holding) == len(model) and holding.bytes == sum(m[3] for m in model)
        assert holding.waiting_among(asked) == sorted({m[1] for m in model})
    assert records_of(holding.take_all()) == [m[0] for m in model]
    assert len(holding) == 0 and holding.bytes == 0 and holding.waiting_among(asked) == []


def test_holding_refuses_a_trace_id_it_could_not_find_again() -> None:
    """Only 16-byte trace ids are held (the pipeline holds no other): another is refused, not lost."""
    holding = Holding()
    for trace_id in (b"", b"12345678", b"x" * 17):
        with pytest.raises(ValueError):
            holding.hold(HeldBatch([trace(1), trace_id], [10, 10], 1.0, ["record", "record"]))
    assert len(holding) == 0 and holding.take_all() == []


def test_traces_held_and_taken_again_and_again_keep_holding_small() -> None:
    """A trace held, freed by its evidence, and held again (a long-lived trace) leaves nothing
    behind: what the table kept of each holding is dropped once superseded."""
    holding = Holding()
    for n in range(5000):
        now = float(n)
        held = batch(now + 2.0, 1, 2)
        holding.hold(held)
        assert holding.take_trace(trace(1)) == [(held, [0])]
        holding.take_expired(now)
    assert len(holding) == 2 and holding.waiting_among([trace(1), trace(2)]) == [1]
    assert holding._by_trace.learnings <= 64  # the table's first ring: never grew


class TestTraceIdsNotOtlps:
    @pytest.mark.parametrize("trace_id", [b"12345678", b"x" * 17])
    def test_a_trace_id_not_16_bytes_correlates_nothing(self, trace_id: bytes) -> None:
        """OTLP trace ids are 16 bytes (the Collector refuses others). Another length is remembered
        by no one: its error inherits nothing, in the same request or a later one, and is not held
        for evidence that could never free it."""
        p = make()
        same = request(access(trace_id, DATADOG), auth0_error(trace_id))
        stats = p.process(same, now=0.0)
        assert stats.held == 0 and stats.downgraded == {} and len(p.memory) == 0
        access_log, error = map(attributes, records(same))
        assert access_log["triage.source"] == "synthetic"
        assert error["triage.source"] == "unknown" and records(same)[1].severity_number == 17
        stats = p.process(request(auth0_error(trace_id)), now=0.5)
        assert stats.held == 0 and stats.downgraded == {}


class TestBounds:
    def test_ttl(self) -> None:
        """A trace's verdict is forgotten after the TTL."""
        p = make(TRIAGE_CORRELATION_TTL="60")
        p.process(request(access(trace(20), DATADOG)), now=0.0)
        late = request(auth0_error(trace(20)))
        assert p.process(late, now=61.0).held == 1  # not remembered any more: held again

    def test_max_traces_evicts_oldest(self) -> None:
        """At most max traces are remembered; the oldest go first."""
        memory = TraceMemory(ttl_s=60, max_traces=3)
        verdict = Verdict("synthetic", "x", "e")
        for n in range(5):
            memory.learn(trace(n), verdict, now=float(n))
        assert len(memory) == 3 and memory.evicted == 2
        assert memory.recall(trace(0), 5.0) is None and memory.recall(trace(4), 5.0) is verdict

    def test_flood_of_unique_traces_stays_bounded(self) -> None:
        """100k unique trace ids with evidence: memory never holds more than the bound."""
        p = make(TRIAGE_CORRELATION_MAX_TRACES="1000")
        for batch in range(100):
            p.process(request(*(access(trace(batch * 1000 + i), DATADOG) for i in range(1000))), now=batch * 0.01)
        assert len(p.memory) == 1000 and p.memory.evicted == 99_000

    def test_expire_drops_old_traces(self) -> None:
        """expire() forgets traces past their TTL (the service calls it every second)."""
        memory = TraceMemory(ttl_s=10, max_traces=100)
        verdict = Verdict("synthetic", "x", "e")
        memory.learn(trace(1), verdict, now=0.0)
        memory.learn(trace(2), verdict, now=5.0)
        memory.expire(now=12.0)
        assert len(memory) == 1

    def test_a_trace_learned_again_lives_from_its_last_evidence(self) -> None:
        """The TTL counts from the last evidence, also when that came in the same instant as before."""
        memory = TraceMemory(ttl_s=10, max_traces=100)
        verdict = Verdict("synthetic", "x", "e")
        memory.learn(trace(1), verdict, now=0.0)
        memory.learn(trace(1), verdict, now=0.0)  # twice at once: one batch, one trace
        memory.learn(trace(2), verdict, now=5.0)
        memory.learn(trace(1), verdict, now=8.0)
        memory.expire(now=11.0)
        assert memory.recall(trace(1), 11.0) is verdict and memory.recall(trace(2), 11.0) is verdict
        memory.expire(now=16.0)
        assert len(memory) == 1 and memory.recall(trace(1), 16.0) is verdict
        memory.expire(now=18.0)
        assert len(memory) == 0

    def test_eviction_skips_traces_learned_again(self) -> None:
        """At the bound, the trace whose last evidence is oldest goes, not the one first seen."""
        memory = TraceMemory(ttl_s=60, max_traces=2)
        verdict = Verdict("synthetic", "x", "e")
        memory.learn(trace(1), verdict, now=0.0)
        memory.learn(trace(2), verdict, now=1.0)
        memory.learn(trace(1), verdict, now=2.0)
        memory.learn(trace(3), verdict, now=3.0)
        assert len(memory) == 2 and memory.evicted == 1
        assert memory.recall(trace(2), 3.0) is None and memory.recall(trace(1), 3.0) is verdict


_SOURCES = [Verdict("synthetic", "dd", "e"), Verdict("user", "browser", "e"), Verdict("probe", "k8s", "e", confidence="likely")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 6), st.sampled_from(_SOURCES)), max_size=8), max_size=8), st.integers(2, 9))
def test_learning_a_request_at_once_is_learning_it_record_by_record(requests, max_traces: int) -> None:
    """learn_many (one C pass for new traces) gives each trace the verdict learn() one by one
    would (merged in order, a trace taught twice in one request too) and forgets by the same TTL;
    and it keeps to the bound. (Which traces a request over the bound evicts may differ: learn_many
    merges the known traces before adding the new ones.)"""
    at_once, one_by_one = TraceMemory(ttl_s=3, max_traces=max_traces), TraceMemory(ttl_s=3, max_traces=max_traces)
    for step, taught in enumerate(requests):
        now = float(step)
        at_once.learn_many([trace(t) for t, _ in taught], [v for _, v in taught], now)
        for t, verdict in taught:
            one_by_one.learn(trace(t), verdict, now)
        assert len(at_once) <= max_traces
        if not one_by_one.evicted:
            assert not at_once.evicted
            assert {t: v.origin for t, v in at_once.inherited.items()} == {t: v.origin for t, v in one_by_one.inherited.items()}


class TestShadowMode:
    def test_shadow_marks_instead_of_downgrading(self) -> None:
        """TRIAGE_MODE=shadow: severity untouched, triage.would_downgrade names the rule."""
        p = make(TRIAGE_MODE="shadow")
        req = request(access(trace(30), DATADOG), auth0_error(trace(30)))
        stats = p.process(req, now=0.0)
        error = records(req)[1]
        assert error.severity_number == 17 and error.severity_text == "ERROR"
        assert attributes(error)["triage.would_downgrade"] == "auth0-missing-session"
        assert "triage.rule" not in attributes(error)
        assert stats.would_downgrade == {"auth0-missing-session": 1} and stats.downgraded == {}


class TestConfidence:
    def test_health_path_alone_does_not_downgrade(self) -> None:
        """A probe guessed from the path only is 'likely': rules do not fire by default."""
        p = make()
        req = request(
            LogRecord(severity_number=9, trace_id=trace(40), attributes=[KeyValue(key="url.path", value=AnyValue(string_value="/healthz"))]),
            auth0_error(trace(40)),
        )
        p.process(req, now=0.0)
        error = records(req)[1]
        assert error.severity_number == 17
        assert attributes(error)["triage.source.confidence"] == "likely"

    def test_likely_allowed_when_configured(self) -> None:
        """TRIAGE_DOWNGRADE_CONFIDENCE=likely lets weak evidence fire rules."""
        p = make(TRIAGE_DOWNGRADE_CONFIDENCE="likely")
        req = request(
            LogRecord(severity_number=9, trace_id=trace(41), attributes=[KeyValue(key="url.path", value=AnyValue(string_value="/healthz"))]),
            auth0_error(trace(41)),
        )
        p.process(req, now=0.0)
        assert records(req)[1].severity_number == 5

    def test_certain_evidence_beats_likely_in_a_trace(self) -> None:
        """A certain verdict (kube-probe UA) is not replaced by a later likely one, and vice versa."""
        p = make()
        p.process(request(access(trace(42), "kube-probe/1.30", path="/dashboard")), now=0.0)
        p.process(request(LogRecord(severity_number=9, trace_id=trace(42), attributes=[KeyValue(key="url.path", value=AnyValue(string_value="/healthz"))])), now=0.1)
        later = request(auth0_error(trace(42)))
        p.process(later, now=0.2)
        assert records(later)[0].severity_number == 5


def records_in(resource_logs) -> list:
    return [r for sl in resource_logs.scope_logs for r in sl.log_records]
