"""The transform: classify, enrich and downgrade the records of OTLP logs requests, in place.

No I/O here: receivers hand a decoded request in, the exporter takes it out; time comes in as an
argument. Everything that can be decided once (signatures, rules, prepared attributes) is decided
in ``Pipeline.__init__``.

How a record's source is decided:
1. its own attributes (marker header, monitor address, user agent, health path), else its
   resource's attributes;
2. else the trace's verdict (``trace_id``): learned from other records with evidence, in this
   request or an earlier one (``TraceMemory``), or from spans; when they disagree, ``user`` wins;
3. else, if a rule matches the record, it is *held* for up to the correlation window waiting for
   its trace's evidence (``Holding``), then released — classified ``unknown`` if nothing came;
4. else ``unknown``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs

from .classify import UNKNOWN, Classifier, Verdict
from .classify.verdict import CERTAIN, SOURCE, SYNTHETIC_TYPE, string_attribute
from .correlation import Held, Holding, TraceMemory
from .downgrade import Rule, RuleSet

ORIGINAL_SEVERITY_NUMBER = "triage.original_severity_number"
ORIGINAL_SEVERITY_TEXT = "triage.original_severity_text"
RULE = "triage.rule"
WOULD_DOWNGRADE = "triage.would_downgrade"
DEBUG_SEVERITY_NUMBER = 5  # semantic conventions: exceptions that are not an actual issue SHOULD be DEBUG (5)

# Records that set only severity_text (severity_number 0) still count as warnings and errors.
_TEXT_SEVERITY = {"WARN": 13, "WARNING": 13, "ERROR": 17, "CRITICAL": 21, "FATAL": 21, "SEVERE": 17}


@dataclass
class Stats:
    """What processing did, for metrics and tests."""

    records: int = 0  # records decided (enriched) now; held ones are counted when released
    held: int = 0
    rejected: int = 0  # records refused by the per-record limits (partial success)
    rejected_message: str = ""
    by_source: dict[str, int] = field(default_factory=dict)
    downgraded: dict[str, int] = field(default_factory=dict)  # rule -> records
    would_downgrade: dict[str, int] = field(default_factory=dict)  # shadow mode: rule -> records


def effective_severity(record) -> int:
    number = record.severity_number
    if number == 0 and record.severity_text:
        return _TEXT_SEVERITY.get(record.severity_text.upper(), 0)
    return number


class Pipeline:
    def __init__(
        self,
        classifier: Classifier,
        rules: RuleSet,
        downgrade_sources: frozenset[str],
        mode: str = "enforce",
        downgrade_confidence: str = CERTAIN,
        memory: TraceMemory | None = None,
        window_s: float = 0.0,
    ):
        self.classifier = classifier
        self.rules = rules
        self.downgrade_sources = downgrade_sources
        self.enforce = mode == "enforce"
        self.any_confidence = downgrade_confidence != CERTAIN
        # Without a shared memory, traces are correlated within one request only.
        self.memory = memory
        self.window_s = window_s if memory is not None and downgrade_sources else 0.0
        self.holding = Holding()
        self._ready: list[Held] = []  # released by new evidence, waiting for release_ready()
        # Every attribute key the record scan reacts to, as bytes: absent from a payload, no scan is needed.
        keys = sorted(set(classifier.evidence_keys) | {SYNTHETIC_TYPE, SOURCE}, key=len, reverse=True)
        self._keys_pattern = re.compile(b"|".join(re.escape(k.encode()) for k in keys))
        self._rule_attributes = {r.name: string_attribute(RULE, r.name) for r in rules.rules}
        self._would_attributes = {r.name: string_attribute(WOULD_DOWNGRADE, r.name) for r in rules.rules}

    # --- per request -------------------------------------------------------------------------------------

    def process(self, request: ExportLogsServiceRequest, now: float = 0.0, payload: bytes | None = None) -> Stats:
        """Classify, enrich and downgrade ``request`` in place; records to hold are moved out of it.

        ``payload``, the request's serialized form, lets records skip the attribute scan when none of
        the keys it looks for occurs anywhere in the request (one search in C instead of a Python
        loop over every attribute).
        """
        stats = Stats()
        classifier = self.classifier
        scan = payload is None or self._keys_pattern.search(payload) is not None
        evidence_keys = classifier.evidence_keys
        min_rule_severity = self.rules.min_severity_number
        memory = self.memory if self.memory is not None else TraceMemory(ttl_s=1.0, max_traces=1 << 30)
        undecided: list[tuple] = []  # (record, index, has synthetic type, rule, resource_logs, scope_logs)

        for resource_logs in request.resource_logs:
            resource_verdict = classifier.attributes(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for index, record in enumerate(scope_logs.log_records):
                    verdict = None
                    has_synthetic_type = False
                    already = None
                    for kv in record.attributes if scan else ():
                        key = kv.key
                        if key in evidence_keys:
                            found = classifier.evidence(key, kv.value)
                            if found is not None and (verdict is None or found.rank < verdict.rank):
                                verdict = found
                        elif key == SYNTHETIC_TYPE:
                            has_synthetic_type = True
                        elif key == SOURCE:
                            already = kv.value.string_value
                    if already is not None:
                        # Triaged upstream (a second processor in the path): pass on untouched.
                        _count(stats.by_source, already)
                        stats.records += 1
                        continue
                    if verdict is None:
                        verdict = resource_verdict
                    rule = None
                    severity = effective_severity(record)
                    if severity >= min_rule_severity:
                        rule = self.rules.match(record, severity)
                    if verdict is None:
                        undecided.append((record, index, has_synthetic_type, rule, resource_logs, scope_logs))
                        continue
                    if record.trace_id:
                        self._learn(memory, record.trace_id, verdict, now)
                    self._decide(record, verdict, has_synthetic_type, rule, stats)

        held_from: dict[int, tuple] = {}  # id(scope_logs) -> (resource_logs, scope_logs, records to hold)
        for record, index, has_synthetic_type, rule, resource_logs, scope_logs in undecided:
            trace_id = record.trace_id
            known = memory.recall(trace_id, now) if trace_id else None
            if known is not None:
                self._decide(record, known.inherited(), has_synthetic_type, rule, stats)
            elif rule is not None and trace_id and self.window_s > 0:
                held_from.setdefault(id(scope_logs), (resource_logs, scope_logs, []))[2].append(
                    (record, index, has_synthetic_type, rule)
                )
            else:
                self._decide(record, UNKNOWN, has_synthetic_type, rule, stats)
        if held_from:
            stats.held = self._hold(held_from.values(), now)
        return stats

    def _learn(self, memory: TraceMemory, trace_id: bytes, verdict: Verdict, now: float) -> None:
        memory.learn(trace_id, verdict, now)
        if self.holding.waiting_for(trace_id):
            self._ready.extend(self.holding.take_trace(trace_id))

    def learn(self, trace_id: bytes, verdict: Verdict, now: float) -> None:
        """Evidence from outside the logs (a span): remember it and free the trace's held records."""
        if self.memory is not None:
            self._learn(self.memory, trace_id, verdict, now)

    def _decide(self, record, verdict: Verdict, has_synthetic_type: bool, rule: Rule | None, stats: Stats) -> None:
        # user_agent.synthetic.type is added unless the record already has it.
        record.MergeFromString(verdict.wire if has_synthetic_type else verdict.wire_typed)
        stats.records += 1
        _count(stats.by_source, verdict.source)
        if rule is not None and self.fires(verdict):
            if self.enforce:
                self.downgrade(record, rule)
                _count(stats.downgraded, rule.name)
            else:
                record.attributes.append(self._would_attributes[rule.name])
                _count(stats.would_downgrade, rule.name)

    def fires(self, verdict: Verdict) -> bool:
        """Downgrade only on evidence: a configured monitor-like source, decided with enough confidence."""
        return verdict.source in self.downgrade_sources and (self.any_confidence or verdict.confidence == CERTAIN)

    def downgrade(self, record, rule: Rule) -> None:
        record.attributes.append(
            KeyValue(key=ORIGINAL_SEVERITY_NUMBER, value=AnyValue(int_value=record.severity_number))
        )
        record.attributes.append(string_attribute(ORIGINAL_SEVERITY_TEXT, record.severity_text))
        record.attributes.append(self._rule_attributes[rule.name])
        record.severity_number = DEBUG_SEVERITY_NUMBER
        record.severity_text = "DEBUG"

    # --- holding -----------------------------------------------------------------------------------------

    def _hold(self, groups, now: float) -> int:
        """Move the records to hold out of their request, keeping their resource and scope."""
        count = 0
        deadline = now + self.window_s
        for resource_logs, scope_logs, waiting in groups:
            group = ResourceLogs(resource=resource_logs.resource, schema_url=resource_logs.schema_url)
            group.scope_logs.add(scope=scope_logs.scope, schema_url=scope_logs.schema_url)
            group_size = group.ByteSize()
            for record, _, has_synthetic_type, rule in waiting:
                copy = LogRecord()
                copy.CopyFrom(record)
                self.holding.hold(
                    copy.trace_id,
                    Held(copy, group, rule, has_synthetic_type, deadline, copy.ByteSize() + group_size),
                )
                count += 1
            for _, index, _, _ in sorted(waiting, key=lambda w: w[1], reverse=True):
                del scope_logs.log_records[index]
        return count

    def release_ready(self, now: float) -> tuple[ExportLogsServiceRequest, Stats] | None:
        """Held records whose evidence came, or whose window passed: a request to forward, or None."""
        released = self._ready
        self._ready = []
        released.extend(self.holding.take_expired(now))
        return self._release(released, now) if released else None

    def release_all(self, now: float) -> tuple[ExportLogsServiceRequest, Stats] | None:
        """Shutdown: every held record goes now, with whatever its trace is known to be."""
        released = self._ready + self.holding.take_all()
        self._ready = []
        return self._release(released, now) if released else None

    def next_deadline(self) -> float | None:
        return self.holding.next_deadline()

    def _release(self, released: list[Held], now: float) -> tuple[ExportLogsServiceRequest, Stats]:
        stats = Stats()
        request = ExportLogsServiceRequest()
        groups: dict[int, object] = {}  # id(group skeleton) -> the ScopeLogs in the new request
        for held in released:
            scope_logs = groups.get(id(held.group))
            if scope_logs is None:
                resource_logs = request.resource_logs.add()
                resource_logs.CopyFrom(held.group)
                scope_logs = groups[id(held.group)] = resource_logs.scope_logs[0]
            record = scope_logs.log_records.add()
            record.CopyFrom(held.record)
            known = self.memory.recall(record.trace_id, now) if self.memory is not None else None
            verdict = known.inherited() if known is not None else UNKNOWN
            self._decide(record, verdict, held.has_synthetic_type, held.rule, stats)
        return request, stats


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1
