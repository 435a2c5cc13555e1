"""The transform: classify, enrich and downgrade the records of one OTLP logs request, in place.

No I/O here: receivers hand a decoded request in, the exporter takes it out. Everything that can be
decided once (signatures, rules, prepared attributes) is decided in ``Pipeline.__init__``.

How a record's source is decided:
1. its own attributes (marker header, user agent), else its resource's attributes;
2. else the verdict of another record of the same trace (``trace_id``) in this request that has
   evidence — when the trace's records disagree, ``user`` wins, so a real user is never downgraded;
3. else ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from .classify import UNKNOWN, Classifier, Verdict
from .classify.verdict import CERTAIN, SOURCE, SYNTHETIC_TYPE, TRACE_PRECEDENCE, string_attribute
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
    """What one request's processing did, for metrics and tests."""

    records: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    downgraded: dict[str, int] = field(default_factory=dict)  # rule -> records
    would_downgrade: dict[str, int] = field(default_factory=dict)  # shadow mode: rule -> records


def effective_severity(record) -> int:
    number = record.severity_number
    if number == 0 and record.severity_text:
        return _TEXT_SEVERITY.get(record.severity_text.upper(), 0)
    return number


class Pipeline:
    def __init__(self, classifier: Classifier, rules: RuleSet, downgrade_sources: frozenset[str], mode: str = "enforce"):
        self.classifier = classifier
        self.rules = rules
        self.downgrade_sources = downgrade_sources
        self.enforce = mode == "enforce"
        self._rule_attributes = {r.name: string_attribute(RULE, r.name) for r in rules.rules}
        self._would_attributes = {r.name: string_attribute(WOULD_DOWNGRADE, r.name) for r in rules.rules}

    def process(self, request: ExportLogsServiceRequest) -> Stats:
        stats = Stats()
        classifier = self.classifier
        evidence_keys = classifier.evidence_keys
        min_rule_severity = self.rules.min_severity_number
        trace_verdicts: dict[bytes, Verdict] = {}
        decided: list[tuple] = []  # (record, own verdict or None, has synthetic type, rule or None)

        for resource_logs in request.resource_logs:
            resource_verdict = classifier.attributes(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    verdict = None
                    has_synthetic_type = False
                    already = None
                    for kv in record.attributes:
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
                        stats.records += 1
                        stats.by_source[already] = stats.by_source.get(already, 0) + 1
                        continue
                    if verdict is None:
                        verdict = resource_verdict
                    rule = None
                    severity = effective_severity(record)
                    if severity >= min_rule_severity:
                        rule = self.rules.match(record, severity)
                    trace_id = record.trace_id
                    if verdict is not None and trace_id:
                        known = trace_verdicts.get(trace_id)
                        if known is None or TRACE_PRECEDENCE[verdict.source] < TRACE_PRECEDENCE[known.source]:
                            trace_verdicts[trace_id] = verdict
                    decided.append((record, verdict, has_synthetic_type, rule))

        for record, verdict, has_synthetic_type, rule in decided:
            if verdict is None:
                known = trace_verdicts.get(record.trace_id) if record.trace_id else None
                verdict = known.inherited() if known is not None else UNKNOWN
            self.enrich(record, verdict, has_synthetic_type)
            stats.records += 1
            stats.by_source[verdict.source] = stats.by_source.get(verdict.source, 0) + 1
            if rule is not None and self.fires(rule, verdict):
                if self.enforce:
                    self.downgrade(record, rule)
                    stats.downgraded[rule.name] = stats.downgraded.get(rule.name, 0) + 1
                else:
                    record.attributes.append(self._would_attributes[rule.name])
                    stats.would_downgrade[rule.name] = stats.would_downgrade.get(rule.name, 0) + 1
        return stats

    def fires(self, rule: Rule, verdict: Verdict) -> bool:
        """Downgrade only on evidence: a configured monitor-like source, decided with certainty."""
        return verdict.source in self.downgrade_sources and verdict.confidence == CERTAIN

    @staticmethod
    def enrich(record, verdict: Verdict, has_synthetic_type: bool) -> None:
        record.attributes.extend(verdict.attributes)
        if verdict.synthetic_type is not None and not has_synthetic_type:
            record.attributes.append(verdict.synthetic_type)

    def downgrade(self, record, rule: Rule) -> None:
        record.attributes.append(
            KeyValue(key=ORIGINAL_SEVERITY_NUMBER, value=AnyValue(int_value=record.severity_number))
        )
        record.attributes.append(string_attribute(ORIGINAL_SEVERITY_TEXT, record.severity_text))
        record.attributes.append(self._rule_attributes[rule.name])
        record.severity_number = DEBUG_SEVERITY_NUMBER
        record.severity_text = "DEBUG"
