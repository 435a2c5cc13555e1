"""The oracle for the wire-level pipeline: the straightforward message-at-a-time version it replaced.

``ReferencePipeline.process`` decodes nothing itself (it takes the decoded request), reads every
attribute of every record through protobuf messages, and enriches records by merging messages:
slow (about 15 CPU-s per million records end to end) but obviously what the contract says. The
differential tests (``test_wire.py``) check that ``Pipeline.process_wire`` forwards the same
records, holds the same records and counts the same things, request after request.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs

from processor.classify import UNKNOWN, Verdict
from processor.classify.verdict import CERTAIN, LIKELY
from processor.correlation import TRACE_ID_SIZE, HeldBatch, TraceMemory
from processor.downgrade import Rule
from processor.pipeline import Pipeline, Stats, _count, effective_severity


@dataclass(eq=False)
class DecodedHeld:
    """A held record as the oracle keeps it: decoded, with a copy of its resource and scope."""

    trace_id: bytes
    record: LogRecord
    group: ResourceLogs  # resource + one ScopeLogs with its scope, no records
    rule: Rule
    has_synthetic_type: bool
    size: int


class ReferencePipeline(Pipeline):
    def process(self, request: ExportLogsServiceRequest, now: float = 0.0, payload: bytes | None = None) -> Stats:
        stats = Stats()
        classifier = self.classifier
        min_rule_severity = self.rules.min_severity_number
        memory = self.memory if self.memory is not None else TraceMemory(ttl_s=1.0, max_traces=1 << 30)
        undecided: list[tuple] = []
        for resource_logs in request.resource_logs:
            resource_verdict = classifier.attributes(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for index, record in enumerate(scope_logs.log_records):
                    verdict, has_synthetic_type, already = self.evidence.decoded(record)
                    if already is not None:
                        stats.by_source[already] = stats.by_source.get(already, 0) + 1
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
        held_from: dict[int, tuple] = {}
        for record, index, has_synthetic_type, rule, resource_logs, scope_logs in undecided:
            trace_id = record.trace_id
            known = memory.recall(trace_id, now) if trace_id else None
            if known is not None:
                self._decide(record, known.inherited(), has_synthetic_type, rule, stats)
            elif rule is not None and len(trace_id) == TRACE_ID_SIZE and self.window_s > 0:
                held_from.setdefault(id(scope_logs), (resource_logs, scope_logs, []))[2].append(
                    (record, index, has_synthetic_type, rule)
                )
            else:
                self._decide(record, UNKNOWN, has_synthetic_type, rule, stats)
        if held_from:
            stats.held = self._hold_groups(held_from.values(), now)
        return stats

    def _hold_groups(self, groups, now: float) -> int:
        helds = []
        deadline = now + self.window_s
        for resource_logs, scope_logs, waiting in groups:
            group = ResourceLogs(resource=resource_logs.resource, schema_url=resource_logs.schema_url)
            group.scope_logs.add(scope=scope_logs.scope, schema_url=scope_logs.schema_url)
            group_size = group.ByteSize()
            for record, _, has_synthetic_type, rule in waiting:
                copy = LogRecord()
                copy.CopyFrom(record)
                helds.append(DecodedHeld(copy.trace_id, copy, group, rule, has_synthetic_type, copy.ByteSize() + group_size))
            for _, index, _, _ in sorted(waiting, key=lambda w: w[1], reverse=True):
                del scope_logs.log_records[index]
        self.holding.hold(HeldBatch([held.trace_id for held in helds], [held.size for held in helds], deadline, helds))
        return len(helds)

    def _release(self, released: list[tuple[HeldBatch, list[int]]], now: float) -> tuple[ExportLogsServiceRequest, Stats]:
        stats = Stats()
        request = ExportLogsServiceRequest()
        groups: dict[int, object] = {}  # id(group skeleton) -> the ScopeLogs in the new request
        for held in [batch.records[position] for batch, positions in released for position in positions]:
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


def reference_of(pipeline: Pipeline) -> ReferencePipeline:
    """A ReferencePipeline configured as ``pipeline`` (same classifier and rules, its own memory)."""
    memory = pipeline.memory
    return ReferencePipeline(
        pipeline.classifier,
        pipeline.rules,
        pipeline.downgrade_sources,
        mode="enforce" if pipeline.enforce else "shadow",
        downgrade_confidence=LIKELY if pipeline.any_confidence else CERTAIN,
        memory=TraceMemory(memory.ttl_s, memory.max_traces) if memory is not None else None,
        window_s=pipeline.window_s,
    )
