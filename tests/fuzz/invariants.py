"""The fuzzing contract, shared by the hypothesis properties and the atheris targets.

1. Decoders: for any bytes, a message or the documented error — ``otlp_json.JsonError`` from
   ``otlp_json.decode``; ``Rejected`` with refusal INVALID from ``Intake.decode``; INVALID,
   TOO_LARGE or UNSUPPORTED from ``decompress`` (whose output never exceeds its limit).
2. ``Pipeline.process``: for any request, never raises; a record that did not already carry
   ``triage.source`` leaves with exactly one, plus only ``triage.*`` / ``user_agent.synthetic.type``
   attributes appended and, when downgraded, severity 5/DEBUG with the original kept; everything
   else (grouping, resource, scope, every other field) is byte-for-byte what was sent. A held record
   comes back, enriched the same way, from ``release_ready`` / ``release_all``.
3. Source: a record's own (else its resource's) evidence decides it; a record whose own evidence is a
   browser user agent is ``user``; a record without evidence in a trace where another record of the
   same request is ``user`` is ``user`` too; ``user`` is never downgraded.

Every check raises ``AssertionError`` naming the broken invariant (atheris reports it as a crash).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from processor import otlp_json
from processor.classify import Verdict
from processor.classify.verdict import (
    CERTAIN,
    SOURCE,
    SOURCE_CONFIDENCE,
    SOURCE_EVIDENCE,
    SOURCE_NAME,
    SYNTHETIC_TYPE,
)
from processor.config import SOURCES, Config
from processor.correlation import TRACE_ID_SIZE
from processor.intake import JSON, PROTOBUF, Intake, decompress
from processor.pipeline import (
    DEBUG_SEVERITY_NUMBER,
    ORIGINAL_SEVERITY_NUMBER,
    ORIGINAL_SEVERITY_TEXT,
    RULE,
    WOULD_DOWNGRADE,
    Pipeline,
    Stats,
    effective_severity,
)
from processor.service import build_pipeline
from processor.status import INVALID, TOO_LARGE, UNSUPPORTED, Rejected

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests" / "testdata"
GOLDEN_INPUTS = tuple(sorted((TESTDATA / "golden" / "input").glob("*.json")))
USER_AGENTS_FILE = TESTDATA / "classify" / "user_agents.json"
EXTRA_RULES_FILE = Path(__file__).with_name("extra_rules.json")

# Monitor address ranges (documentation ranges), so the address evidence path is fuzzed too.
MONITOR_CIDRS = "datadog-synthetics=192.0.2.0/24 2001:db8::/32;acme-uptime=198.51.100.0/24"

# The configurations every request is checked under: the golden tests' (one request, nothing held),
# the default (correlation memory, rule candidates held), everything that can downgrade does (extra
# rules, every source, weak evidence, address ranges), and shadow mode.
CONFIGS: dict[str, dict[str, str]] = {
    "window0": {"TRIAGE_CORRELATION_WINDOW": "0"},
    "default": {},
    "wide": {
        "TRIAGE_RULES_FILE": str(EXTRA_RULES_FILE),
        "TRIAGE_DOWNGRADE_SOURCES": "synthetic,probe,bot,service",
        "TRIAGE_DOWNGRADE_CONFIDENCE": "likely",
        "TRIAGE_MONITOR_CIDRS": MONITOR_CIDRS,
        "TRIAGE_UA_CACHE_SIZE": "64",
    },
    "shadow": {"TRIAGE_MODE": "shadow", "TRIAGE_CORRELATION_TTL": "0"},
}

DECOMPRESS_REFUSALS = (INVALID, TOO_LARGE, UNSUPPORTED)
_SYNTHETIC_TYPES = {"synthetic": "test", "probe": "test", "bot": "bot"}
_DOWNGRADE_KEYS = (ORIGINAL_SEVERITY_NUMBER, ORIGINAL_SEVERITY_TEXT, RULE)


def build_pipelines() -> dict[str, Pipeline]:
    return {name: build_pipeline(Config.from_env(env)) for name, env in CONFIGS.items()}


def golden_json() -> list[bytes]:
    """The golden OTLP/JSON inputs, as sent."""
    return [path.read_bytes() for path in GOLDEN_INPUTS]


def golden_protobuf() -> list[bytes]:
    """The golden inputs in their protobuf serialization."""
    return [
        otlp_json.decode(payload, ExportLogsServiceRequest()).SerializeToString() for payload in golden_json()
    ]


def golden_records() -> list[LogRecord]:
    return [
        record
        for payload in golden_json()
        for resource_logs in otlp_json.decode(payload, ExportLogsServiceRequest()).resource_logs
        for scope_logs in resource_logs.scope_logs
        for record in scope_logs.log_records
    ]


def fill_any(target: AnyValue, value: Any, depth: int = 0, max_depth: int = 200) -> AnyValue:
    """Set ``target`` to a JSON value, as a structured-logging bridge sends it (maps for objects).

    Built in place: protobuf's own MergeFrom re-parses, and refuses more than 100 levels.
    """
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if -(2**63) <= value < 2**63:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif depth >= max_depth:
        target.string_value = "..."
    elif isinstance(value, dict):
        target.kvlist_value.SetInParent()
        for key, item in value.items():
            fill_any(target.kvlist_value.values.add(key=key).value, item, depth + 1, max_depth)
    elif isinstance(value, list):
        target.array_value.SetInParent()
        for item in value:
            fill_any(target.array_value.values.add(), item, depth + 1, max_depth)
    return target


# --- decoders ----------------------------------------------------------------------------------------------


def decode_json(payload: bytes) -> ExportLogsServiceRequest | None:
    """``otlp_json.decode``: a request, or None for the documented ``JsonError``; anything else escapes."""
    try:
        request = otlp_json.decode(payload, ExportLogsServiceRequest())
    except otlp_json.JsonError:
        return None
    assert isinstance(request, ExportLogsServiceRequest)
    return request


def intake_decode(payload: bytes, encoding: str) -> ExportLogsServiceRequest | None:
    """``Intake.decode`` (JSON or protobuf): a request, or None for ``Rejected(INVALID)``."""
    assert encoding in (JSON, PROTOBUF)
    try:
        request = Intake.decode(payload, encoding)
    except Rejected as rejected:
        assert rejected.refusal is INVALID, (
            f"decode refused with {rejected.refusal.reason}, not invalid: {rejected}"
        )
        assert rejected.message, "a refusal without a reason for the client"
        return None
    assert isinstance(request, ExportLogsServiceRequest)
    return request


def checked_decompress(body: bytes, encoding: str, limit: int) -> bytes | None:
    """``decompress``: the body (never over ``limit`` once inflated), or None for a documented refusal."""
    try:
        out = decompress(body, encoding, limit)
    except Rejected as rejected:
        assert rejected.refusal in DECOMPRESS_REFUSALS, f"decompress refused with {rejected.refusal.reason}"
        assert rejected.message
        return None
    assert isinstance(out, bytes)
    if encoding in ("", "identity"):
        assert out == body, "identity encoding changed the body"
    else:
        assert len(out) <= limit, f"decompressed {len(out)} bytes past the limit of {limit}"
    return out


# --- the pipeline ------------------------------------------------------------------------------------------


def wire(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


def copy_of(request: ExportLogsServiceRequest) -> ExportLogsServiceRequest:
    duplicate = ExportLogsServiceRequest()
    duplicate.CopyFrom(request)
    return duplicate


def _has_key(record: LogRecord, key: str) -> bool:
    return any(kv.key == key for kv in record.attributes)


def is_added_key(key: str) -> bool:
    return key.startswith("triage.") or key == SYNTHETIC_TYPE


@dataclass
class _Held:
    """A record missing from the processed request: it must come back from a release."""

    group: tuple[bytes, str, bytes, str]  # resource, its schema URL, scope, its schema URL
    record: LogRecord
    resource_verdict: Verdict | None


@dataclass
class Checker:
    """Runs requests through one pipeline and checks the contract on every request and release.

    ``fresh()`` moves the clock far ahead and empties the pipeline's state, so each example starts
    from nothing without rebuilding the pipeline; ``run([...])`` feeds several requests in a row.
    """

    pipeline: Pipeline
    now: float = 0.0
    _pending: list[_Held] = field(default_factory=list)

    def fresh(self) -> None:
        # Whatever an earlier, failed check left behind goes unchecked: each example stands alone.
        self.pipeline.release_all(self.now)
        self._pending.clear()
        self.now += 1_000_000.0
        if self.pipeline.memory is not None:
            self.pipeline.memory.expire(self.now)

    def check(self, request: ExportLogsServiceRequest, payload: bytes | None = None) -> Stats:
        """One request on its own: process it, then release everything it left held.

        ``payload``: the bytes it was decoded from, handed to ``process`` as ``Intake.accept`` does
        (they let it skip the attribute scan when no watched key occurs in them).
        """
        self.fresh()
        stats = self.process(request, payload)
        self.release_everything()
        return stats

    def run(
        self, requests: Sequence[ExportLogsServiceRequest], step_s: float = 0.5, payloads: bool = True
    ) -> None:
        """Requests in a row, ``step_s`` apart, releasing what is ready after each, then everything;
        with ``payloads``, each is processed with its protobuf encoding as the payload."""
        self.fresh()
        for request in requests:
            self.process(request, request.SerializeToString() if payloads else None)
            self.release_ready()
            self.now += step_s
        self.release_everything()

    def process(self, request: ExportLogsServiceRequest, payload: bytes | None = None) -> Stats:
        original = copy_of(request)
        stats = self.pipeline.process(request, self.now, payload)
        assert isinstance(stats, Stats)
        self._pending.extend(check_processed(self.pipeline, original, request, stats))
        return stats

    def release_ready(self) -> None:
        self._check_released(self.pipeline.release_ready(self.now))

    def release_everything(self) -> None:
        self._check_released(self.pipeline.release_all(self.now))
        assert not self._pending, f"{len(self._pending)} held records never came back"
        assert len(self.pipeline.holding) == 0 and self.pipeline.holding.bytes == 0, "holding not empty"

    def _check_released(self, released) -> None:
        if released is None:
            return
        payload, stats = released
        request = ExportLogsServiceRequest.FromString(payload)
        count = 0
        for resource_logs in request.resource_logs:
            resource = (wire(resource_logs.resource), resource_logs.schema_url)
            for scope_logs in resource_logs.scope_logs:
                group = resource + (wire(scope_logs.scope), scope_logs.schema_url)
                for record in scope_logs.log_records:
                    count += 1
                    problem = "no held record in that resource and scope"
                    for i, held in enumerate(self._pending):
                        if held.group != group:
                            continue
                        problem = record_problem(self.pipeline, held.record, record, held.resource_verdict)
                        if problem is None:
                            del self._pending[i]
                            break
                    else:
                        raise AssertionError(f"a released record is not a held one, enriched: {problem}")
        assert stats.records == count and stats.held == 0, f"release stats {stats} for {count} records"


def check_everywhere(
    checkers: Iterable[Checker], request: ExportLogsServiceRequest, payload: bytes | None = None
) -> None:
    """The request through every checker's pipeline, each on its own copy.

    ``payload``: the protobuf bytes the request was decoded from, as ``Intake.accept`` passes them.
    OTLP/JSON payloads are not passed: their keys may be written with escapes (``\\u002e``), which
    the pipeline's byte prefilter does not see (see TestJsonKeyEscapes in test_fuzz_properties.py).
    """
    for checker in checkers:
        checker.check(copy_of(request), payload)


def check_processed(
    pipeline: Pipeline, original: ExportLogsServiceRequest, output: ExportLogsServiceRequest, stats: Stats
) -> list[_Held]:
    """Check ``output`` = ``pipeline.process(original)``; returns the records it held (moved out)."""
    classifier = pipeline.classifier
    user_traces = _user_traces(pipeline, original)
    held: list[_Held] = []
    may_hold = pipeline.window_s > 0
    assert len(output.resource_logs) == len(original.resource_logs), "resource_logs added or removed"
    for resource_o, resource_p in zip(original.resource_logs, output.resource_logs, strict=True):
        assert wire(resource_o.resource) == wire(resource_p.resource), "resource changed"
        assert resource_o.schema_url == resource_p.schema_url, "resource schema_url changed"
        assert len(resource_o.scope_logs) == len(resource_p.scope_logs), "scope_logs added or removed"
        resource_verdict = classifier.attributes(resource_o.resource.attributes)
        for scope_o, scope_p in zip(resource_o.scope_logs, resource_p.scope_logs, strict=True):
            assert wire(scope_o.scope) == wire(scope_p.scope), "scope changed"
            assert scope_o.schema_url == scope_p.schema_url, "scope schema_url changed"
            group = (
                wire(resource_o.resource),
                resource_o.schema_url,
                wire(scope_o.scope),
                scope_o.schema_url,
            )
            originals, outputs = list(scope_o.log_records), list(scope_p.log_records)
            if not may_hold:
                assert len(originals) == len(outputs), "records removed though nothing can be held"
            # Held records leave gaps; the others keep their order (greedy subsequence match).
            i = 0
            for record in outputs:
                first_problem = None
                while i < len(originals):
                    problem = record_problem(pipeline, originals[i], record, resource_verdict)
                    if problem is None:
                        break
                    first_problem = first_problem or problem
                    assert may_hold, f"record {i}: {problem}"
                    held.append(_Held(group, originals[i], resource_verdict))
                    i += 1
                else:
                    raise AssertionError(f"an output record matches no input record: {first_problem}")
                _check_trace_user(pipeline, originals[i], record, resource_verdict, user_traces)
                i += 1
            held.extend(_Held(group, record, resource_verdict) for record in originals[i:])

    total = sum(len(s.log_records) for r in original.resource_logs for s in r.scope_logs)
    assert stats.held == len(held), f"stats.held={stats.held}, but {len(held)} records are missing"
    assert stats.records + stats.held == total, f"stats {stats} for {total} records"
    for h in held:
        _check_holdable(pipeline, h)
    return held


def _user_traces(pipeline: Pipeline, request: ExportLogsServiceRequest) -> set[bytes]:
    """Traces with a record whose own (or resource) evidence says ``user``. Only OTLP's 16-byte trace
    ids correlate records: another length is no trace."""
    classifier = pipeline.classifier
    traces = set()
    for resource_logs in request.resource_logs:
        resource_verdict = classifier.attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                if len(record.trace_id) == TRACE_ID_SIZE and not _has_key(record, SOURCE):
                    verdict = classifier.attributes(record.attributes) or resource_verdict
                    if verdict is not None and verdict.source == "user":
                        traces.add(record.trace_id)
    return traces


def _check_trace_user(pipeline, original, output, resource_verdict, user_traces) -> None:
    """A record without evidence, in a trace with a ``user`` record in the same request, is a user."""
    if original.trace_id not in user_traces or _has_key(original, SOURCE):
        return
    if resource_verdict is not None or pipeline.classifier.attributes(original.attributes) is not None:
        return  # decided by its own evidence
    source = next(kv.value.string_value for kv in output.attributes if kv.key == SOURCE)
    assert source == "user", f"a record of a trace with a user in the same request became {source!r}"


def _check_holdable(pipeline: Pipeline, held: _Held) -> None:
    """Only a rule candidate with a (16-byte) trace id and no evidence of its own is ever held."""
    record = held.record
    assert len(record.trace_id) == TRACE_ID_SIZE, "held a record without a trace id"
    assert not _has_key(record, SOURCE), "held a record that was already triaged"
    assert pipeline.rules.match(record, effective_severity(record)) is not None, (
        "held a record no rule matches"
    )
    assert held.resource_verdict is None, "held a record whose resource has evidence"
    assert pipeline.classifier.attributes(record.attributes) is None, "held a record with evidence of its own"


def record_problem(
    pipeline: Pipeline, original: LogRecord, output: LogRecord, resource_verdict: Verdict | None = None
) -> str | None:
    """Why ``output`` is not ``original`` enriched (and maybe downgraded) by ``pipeline``; None if it is.

    ``resource_verdict``: what the record's resource attributes say (decides when the record cannot).
    """
    if _has_key(original, SOURCE):
        return None if wire(original) == wire(output) else "a record triaged upstream was changed"
    n = len(original.attributes)
    if len(output.attributes) < n:
        return "attributes removed"
    for i in range(n):
        if wire(original.attributes[i]) != wire(output.attributes[i]):
            return f"attribute {i} ({original.attributes[i].key!r}) changed"
    added = list(output.attributes[n:])
    keys = [kv.key for kv in added]
    if not all(is_added_key(k) for k in keys):
        return f"added attributes outside the contract: {keys}"
    if len(set(keys)) != len(keys):
        return f"an attribute added twice: {keys}"
    if keys.count(SOURCE) != 1:
        return f"{keys.count(SOURCE)} triage.source attributes added"
    values = {kv.key: kv.value for kv in added}
    source = values[SOURCE].string_value
    if source not in SOURCES:
        return f"triage.source {source!r} is not one of {SOURCES}"
    if source != "unknown" and not (SOURCE_NAME in values and SOURCE_EVIDENCE in values):
        return f"source {source!r} without its name and evidence"
    confidence = values[SOURCE_CONFIDENCE].string_value if SOURCE_CONFIDENCE in values else ""

    # user_agent.synthetic.type: added for synthetic/probe/bot unless the record has it already.
    wanted_type = _SYNTHETIC_TYPES.get(source)
    if SYNTHETIC_TYPE in values:
        if _has_key(original, SYNTHETIC_TYPE) or values[SYNTHETIC_TYPE].string_value != wanted_type:
            return f"user_agent.synthetic.type {values[SYNTHETIC_TYPE].string_value!r} for {source!r}"
    elif wanted_type is not None and not _has_key(original, SYNTHETIC_TYPE):
        return f"user_agent.synthetic.type missing for {source!r}"

    downgraded = RULE in values
    marked = WOULD_DOWNGRADE in values
    if downgraded or marked:
        if source == "user" or source not in pipeline.downgrade_sources:
            return f"a {source!r} record was downgraded (or marked)"
        if not pipeline.any_confidence and confidence != CERTAIN:
            return f"downgraded on {confidence!r} evidence"
        name = values[RULE if downgraded else WOULD_DOWNGRADE].string_value
        rule = next((r for r in pipeline.rules.rules if r.name == name), None)
        if rule is None or effective_severity(original) < rule.min_severity_number:
            return f"downgraded by {name!r} below its minimum severity"
    if marked and (downgraded or pipeline.enforce):
        return "triage.would_downgrade outside shadow mode"
    if downgraded:
        if not pipeline.enforce:
            return "downgraded in shadow mode"
        if (output.severity_number, output.severity_text) != (DEBUG_SEVERITY_NUMBER, "DEBUG"):
            return "downgraded, but not to DEBUG"
        if values.get(ORIGINAL_SEVERITY_NUMBER) is None or values[ORIGINAL_SEVERITY_NUMBER].int_value != (
            original.severity_number
        ):
            return "original severity number not kept"
        if values.get(ORIGINAL_SEVERITY_TEXT) is None or values[ORIGINAL_SEVERITY_TEXT].string_value != (
            original.severity_text
        ):
            return "original severity text not kept"
    else:
        if any(k in values for k in _DOWNGRADE_KEYS):
            return f"downgrade attributes without a downgrade: {keys}"
        if (output.severity_number, output.severity_text) != (
            original.severity_number,
            original.severity_text,
        ):
            return "severity changed without a downgrade"

    # The verdict: own evidence decides (a browser user agent: user), else the resource's, else the trace.
    evidence = values[SOURCE_EVIDENCE].string_value if SOURCE_EVIDENCE in values else ""
    own = pipeline.classifier.attributes(original.attributes) or resource_verdict
    if own is not None and (source, evidence) != (own.source, own.evidence):
        return f"its evidence says {own.source!r} ({own.evidence}), the record says {source!r} ({evidence})"
    if own is None and source != "unknown" and not evidence.startswith("same trace: "):
        return f"{source!r} without evidence of its own or its trace's ({evidence})"

    # Everything else byte-for-byte.
    restored = LogRecord()
    restored.CopyFrom(output)
    del restored.attributes[n:]
    restored.severity_number = original.severity_number
    restored.severity_text = original.severity_text
    if wire(restored) != wire(original):
        return "a field other than the enrichment and the severity changed"
    return None


def check_classifier(pipeline: Pipeline, pairs: Iterable[tuple[str, object]]) -> None:
    """``Classifier.evidence`` on every evidence key: None or a verdict with a known source."""
    classifier = pipeline.classifier
    for key, value in pairs:
        verdict = classifier.evidence(key, value)
        if verdict is not None:
            assert verdict.source in SOURCES, verdict
            assert verdict.evidence, verdict


def check_rules(pipeline: Pipeline, record: LogRecord, severities: Iterable[int] = ()) -> None:
    """``RuleSet.match`` returns a rule or None, at the record's severity and the given ones."""
    rules = pipeline.rules
    before = wire(record)
    # What the pipeline looks at before decoding a record: the needles in its bytes, and its body
    # read from its bytes when that is all a rule needs. Both must answer as the decoded record does.
    may = rules.may_match(before, 0, len(before))
    read = rules.record_text(before)
    for severity in (effective_severity(record), *severities):
        rule = rules.match(record, severity)
        assert rule is None or (rule in rules.rules and severity >= rule.min_severity_number), rule
        assert rule is None or may, f"may_match refused a record {rule.name} matches"
        assert read is None or rules.match_text(read[2], severity) == rule, "match_text disagrees with match"
    assert wire(record) == before, "the rule matcher changed the record"
