"""The transform: classify, enrich, downgrade (and redact) the records of OTLP logs requests.

No I/O here: the intake hands a checked, serialized request in and gets back the serialized
request to forward (``process_wire``); time comes in as an argument. Everything that can be decided
once (signatures, rules, prepared attributes and their bytes) is decided in ``Pipeline.__init__``.
Records are read and written in their serialized form (``wire``); a record is decoded only when
it may match a rule and its body is more than one string (``RuleSet.record_text``), holds a secret,
or carries evidence the C walk does not settle (``evidence``). Held records stay serialized too.

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

from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import compress

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from .classify import UNKNOWN, Classifier, Verdict
from .classify.classifier import MAX_CACHED_VALUE
from .classify.verdict import CERTAIN, string_attribute
from .correlation import TRACE_ID_SIZE, HeldBatch, HeldGroup, Holding, TraceMemory
from .downgrade import Rule, RuleSet
from .redact import Redactor
from .evidence import EvidenceReader
from . import wire

ORIGINAL_SEVERITY_NUMBER = "triage.original_severity_number"
ORIGINAL_SEVERITY_TEXT = "triage.original_severity_text"
RULE = "triage.rule"
WOULD_DOWNGRADE = "triage.would_downgrade"
DEBUG_SEVERITY_NUMBER = 5  # semantic conventions: exceptions that are not an actual issue SHOULD be DEBUG (5)

_RESOURCE_CACHE_SIZE = 1024  # distinct resources (service, pod, ...) whose verdict is remembered
# A larger resource is read every time, never kept: the cache holds at most 1024 of 16 KiB.
_MAX_CACHED_RESOURCE = 16 * 1024

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
    redactions: dict[str, int] = field(default_factory=dict)  # redaction rule -> values replaced


def effective_severity(record) -> int:
    return severity_of(record.severity_number, record.severity_text)


def severity_of(number: int, text: str) -> int:
    """The severity number a record with these severity fields counts as."""
    if number == 0 and text:
        return _TEXT_SEVERITY.get(text.upper(), 0)
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
        redactor: Redactor | None = None,
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
        self._ready: list[tuple[HeldBatch, list[int]]] = []  # released by new evidence, waiting for release_ready()
        self.redactor = redactor if redactor is not None else Redactor((), ())
        self.evidence = EvidenceReader(classifier, self.redactor, classifier.ua_cache_size)
        self._resource_verdicts: dict[bytes, Verdict | None] = {}
        self._rule_attributes = {r.name: string_attribute(RULE, r.name) for r in rules.rules}
        self._would_attributes = {r.name: string_attribute(WOULD_DOWNGRADE, r.name) for r in rules.rules}
        self._downgrades: dict[tuple[int, str, str], bytes] = {}  # (severity, text, rule) -> bytes to append
        self._debug_wire = LogRecord(severity_number=DEBUG_SEVERITY_NUMBER, severity_text="DEBUG").SerializeToString()
        self._would_wire = {
            name: LogRecord(attributes=[kv]).SerializeToString() for name, kv in self._would_attributes.items()
        }

    # --- per request -------------------------------------------------------------------------------------

    def process(self, request: ExportLogsServiceRequest, now: float = 0.0, payload: bytes | None = None) -> Stats:
        """``process_wire`` on a decoded request, in place: held records are moved out of it."""
        wire = request.SerializeToString() if payload is None else payload
        out, stats = self.process_wire(wire, now)
        request.Clear()
        request.ParseFromString(out)
        return stats

    def process_wire(self, payload: bytes, now: float, limits=None) -> tuple[bytes, Stats]:
        """Classify, enrich, downgrade (and redact) the records of ``payload``; returns what to forward.

        ``payload`` is a serialized ExportLogsServiceRequest; ``wire.Malformed`` is raised, before
        anything changes, if upb would not decode it, and ``wire.TooMany`` if it holds more records,
        or more ResourceLogs and ScopeLogs, than ``limits.max_records``. It is read through
        ``wire.index`` and written by ``wire.assemble``: a record that needs only its enrichment
        gets the prepared bytes appended, and nothing else is re-encoded.
        Only records with evidence, a possible rule match, a secret or a problem are looked at in
        Python. ``limits`` (``Limits.check``) rejects records, which are then left out (partial success).
        """
        stats = Stats()
        max_count = limits.max_records if limits is not None else wire.UNLIMITED
        evidence = self.evidence.read(payload, self.rules.min_severity_number, max_count)
        found = evidence.index
        spans = found.spans
        trace_ids = found.trace_ids
        own, typed, upstream, secrets = evidence.own, evidence.typed, evidence.upstream, evidence.secrets

        def record_at(i: int) -> LogRecord:
            return LogRecord.FromString(payload[spans[2 * i] : spans[2 * i + 1]])

        rejected: set[int] = set()
        if limits is not None:
            rejected, stats.rejected, stats.rejected_message = limits.check(found, record_at)
            for index in rejected:  # a rejected record teaches nothing
                own.pop(index, None)
        # A resource's evidence is its records' own, unless they have better.
        for which, _, _, first, count in found.groups:
            verdict = self._resource_verdict(found.resources[which])
            if verdict is not None:
                for index in range(first, first + count):
                    if index not in own and index not in upstream and index not in rejected:
                        own[index] = verdict
        memory = self.memory if self.memory is not None else TraceMemory(ttl_s=1.0, max_traces=1 << 30)
        memory.expire(now)  # so that every trace left in it is alive now

        # 1. Records with evidence of their own (or their resource's) decide their trace first, in
        #    request order, so that any record of the trace, earlier or later, can inherit it.
        decided = sorted(own)
        traces = list(map(trace_ids.__getitem__, decided))
        taught = list(map(own.__getitem__, decided))
        if not all(traces):  # records without a trace teach nothing
            traced = list(map(bool, traces))
            traces, taught = list(compress(traces, traced)), list(compress(taught, traced))
        memory.learn_many(traces, taught, now)
        if self.holding.count:  # records held earlier whose trace this request decides: released in request order
            for position in self.holding.waiting_among(traces):
                self._free_held(traces[position])

        # 2. Every record's verdict: its own, else its trace's, else unknown; its enrichment appended
        #    in one C pass over the whole request. Then the few that need more (a possible rule
        #    match, a secret, a limit, an upstream triage) are redone one by one.
        inherited = memory.inherited
        forward, counts = wire.resolve(trace_ids, own, inherited, UNKNOWN)

        def verdict_of(index: int) -> Verdict:
            return own.get(index) or inherited.get(trace_ids[index]) or UNKNOWN

        for index in typed:  # user_agent.synthetic.type is added unless the record has it
            forward[index] = verdict_of(index).wire
        held_from: list[tuple] = []  # (index, trace id, severity fields, its bytes, has synthetic type, rule)
        redactions: dict[str, int] = {}  # per rule
        redactor = self.redactor
        # A candidate no rule can match needs no more than the rest.
        candidates = self.rules.may_match_among(payload, spans, found.candidates)
        for index in sorted(rejected.union(secrets, upstream, candidates)):
            counts[verdict_of(index)] -= 1  # counted by _slow
            wire_bytes = payload[spans[2 * index] : spans[2 * index + 1]]
            done = self._slow(
                index,
                record_at,
                wire_bytes,
                trace_ids[index],
                own.get(index),
                index in typed,
                rejected,
                upstream,
                memory,
                now,
                stats,
                held_from,
            )
            if done is not None and index in secrets:
                done = redactor.redact_record_bytes(done, redactions)
            forward[index] = done if done is None else (done,)
        for verdict, n in counts.items():
            if n:
                stats.by_source[verdict.source] = stats.by_source.get(verdict.source, 0) + n
                stats.records += n

        resources = None
        if redactor.active:
            resources = {}
            for which, resource in enumerate(found.resources):
                redacted = redactor.redact_resource_bytes(resource, redactions) if resource else resource
                if redacted is not resource:
                    resources[which] = redacted
        stats.redactions = redactions
        if held_from:
            stats.held = self._hold(held_from, found, secrets, now)
        return wire.assemble(payload, forward, resources), stats

    def _resource_verdict(self, serialized: bytes) -> Verdict | None:
        """The verdict a resource's attributes give; resources repeat across requests, so it is cached."""
        cache = self._resource_verdicts
        if serialized in cache:
            return cache[serialized]
        verdict = self.classifier.attributes(Resource.FromString(serialized).attributes) if serialized else None
        if len(serialized) <= _MAX_CACHED_RESOURCE:
            if len(cache) >= _RESOURCE_CACHE_SIZE:
                cache.clear()
            cache[serialized] = verdict
        return verdict

    def _slow(
        self, index, record_at, wire, trace_id, verdict, has_synthetic_type, rejected, upstream, memory, now, stats,
        held_from,
    ):
        """One record that may match a rule, holds a secret, or was rejected: its bytes to forward, or None.

        ``trace_id`` is the index's, which is the record's when ``record_text`` reads it; any other
        record is decoded."""
        if index in rejected:
            return None
        already = upstream.get(index)
        if already is not None:
            # Triaged upstream (a second processor in the path): pass on untouched.
            _count(stats.by_source, already)
            stats.records += 1
            return wire
        rules = self.rules
        read = rules.record_text(wire)  # most candidates: a string body, no attribute a rule reads
        if read is None:
            record = record_at(index)
            severity_fields = (record.severity_number, record.severity_text)
            trace_id = record.trace_id
        else:
            severity_fields = read[:2]
        severity = severity_of(*severity_fields)
        rule = None
        if severity >= rules.min_severity_number:
            rule = rules.match(record, severity) if read is None else rules.match_text(read[2], severity)
        if verdict is None:
            # What recall() answers, inherited: the memory was expired to ``now`` at the request's start.
            known = memory.inherited.get(trace_id) if trace_id else None
            if known is not None:
                verdict = known
            elif rule is not None and len(trace_id) == TRACE_ID_SIZE and self.window_s > 0:
                held_from.append((index, trace_id, severity_fields, wire, has_synthetic_type, rule))
                return None
            else:
                verdict = UNKNOWN
        return self._decide_wire(severity_fields, wire, verdict, has_synthetic_type, rule, stats)

    def _decide_wire(
        self, severity: tuple[int, str], wire: bytes, verdict: Verdict, has_synthetic_type: bool, rule, stats: Stats
    ) -> bytes:
        """The record's bytes to forward: ``wire`` with its enrichment appended, and the downgrade's
        if ``rule`` fires; ``severity`` is its (severity_number, severity_text)."""
        enrichment = verdict.wire if has_synthetic_type else verdict.wire_typed
        stats.records += 1
        _count(stats.by_source, verdict.source)
        if rule is None or not self.fires(verdict):
            return wire + enrichment
        if not self.enforce:
            _count(stats.would_downgrade, rule.name)
            return wire + enrichment + self._would_wire[rule.name]
        _count(stats.downgraded, rule.name)
        return wire + enrichment + self._downgrade_wire(severity, rule)

    def _learn(self, memory: TraceMemory, trace_id: bytes, verdict: Verdict, now: float) -> None:
        memory.learn(trace_id, verdict, now)
        self._free_held(trace_id)

    def _free_held(self, trace_id: bytes) -> None:
        """The trace's held records, if any, are ready to go (its verdict is now known)."""
        if self.holding.waiting_for(trace_id):
            self._ready.extend(self.holding.take_trace(trace_id))

    def learn(self, trace_id: bytes, verdict: Verdict, now: float) -> None:
        """Evidence from outside the logs (a span): remember it and free the trace's held records."""
        if self.memory is not None:
            self._learn(self.memory, trace_id, verdict, now)

    def fires(self, verdict: Verdict) -> bool:
        """Downgrade only on evidence: a configured monitor-like source, decided with enough confidence."""
        return verdict.source in self.downgrade_sources and (self.any_confidence or verdict.confidence == CERTAIN)

    def _downgrade_wire(self, severity: tuple[int, str], rule: Rule) -> bytes:
        """``downgrade`` as bytes to append: the original severity kept as attributes, the rule named,
        and severity_number and severity_text given again (protobuf keeps a singular field's last
        occurrence). The same few severities and rules come again and again: cached."""
        key = (*severity, rule.name)
        suffix = self._downgrades.get(key)
        if suffix is None:
            downgraded = LogRecord(severity_number=severity[0], severity_text=severity[1])
            self.downgrade(downgraded, rule)
            suffix = LogRecord(attributes=downgraded.attributes).SerializeToString() + self._debug_wire
            if len(severity[1]) <= MAX_CACHED_VALUE:  # severity_text is the client's: a longer one is not kept
                if len(self._downgrades) >= _RESOURCE_CACHE_SIZE:
                    self._downgrades.clear()
                self._downgrades[key] = suffix
        return suffix

    def downgrade(self, record, rule: Rule) -> None:
        record.attributes.append(
            KeyValue(key=ORIGINAL_SEVERITY_NUMBER, value=AnyValue(int_value=record.severity_number))
        )
        record.attributes.append(string_attribute(ORIGINAL_SEVERITY_TEXT, record.severity_text))
        record.attributes.append(self._rule_attributes[rule.name])
        record.severity_number = DEBUG_SEVERITY_NUMBER
        record.severity_text = "DEBUG"

    # --- holding -----------------------------------------------------------------------------------------

    def _hold(self, waiting: list[tuple], found: wire.Index, secrets: set[int], now: float) -> int:
        """Keep records, as they came, for their trace's evidence; with the resource and scope they
        came in. ``waiting``: what ``_slow`` found of each, in request order."""
        indices, trace_ids, _, wires, typed, _ = zip(*waiting)
        sizes = list(map(len, wires))
        groups = []  # (first position, HeldGroup): a run per ScopeLogs of this request with records held
        for which, resource_logs, scope_logs, first, count in found.groups:  # both without their children
            start, end = bisect_left(indices, first), bisect_left(indices, first + count)
            if start < end:
                groups.append((start, HeldGroup(resource_logs, scope_logs, found.resources[which])))
                sizes[start:end] = [size + len(resource_logs) + len(scope_logs) for size in sizes[start:end]]
        self.holding.hold(
            HeldBatch(
                list(trace_ids),
                sizes,
                now + self.window_s,
                waiting,
                groups,
                frozenset(p for p, index in enumerate(indices) if index in secrets) if secrets else frozenset(),
                any(typed),
                wires,
            )
        )
        return len(waiting)

    def release_ready(self, now: float) -> tuple[bytes, Stats] | None:
        """Held records whose evidence came, or whose window passed: a serialized request to forward
        (redacted), or None."""
        released = self._ready
        self._ready = []
        released.extend(self.holding.take_expired(now))
        return self._release(released, now) if released else None

    def release_all(self, now: float) -> tuple[bytes, Stats] | None:
        """Shutdown: every held record goes now, with whatever its trace is known to be."""
        released = self._ready + self.holding.take_all()
        self._ready = []
        return self._release(released, now) if released else None

    def _release(self, released: list[tuple[HeldBatch, list[int]]], now: float) -> tuple[bytes, Stats]:
        """Held records as a request, each decided on what its trace is known to be now: built from
        their bytes, as ``process_wire`` builds a request, without decoding them again.
        ``released``: (batch, positions), in the order they left."""
        stats = Stats()
        redactions: dict[str, int] = {}
        # trace -> its inherited verdict (what recall() answers, inherited): the memory's table, if any
        known: wire.TraceTable | None = None
        if self.memory is not None:
            self.memory.expire(now)
            known = self.memory.inherited
        groups: dict[int, tuple[HeldGroup, list[bytes]]] = {}  # id(group) -> (group, its records' bytes)
        for batch, positions in released:
            runs = None
            if known is not None and not batch.typed and not batch.secrets and len(positions) == len(batch.records):
                runs = self._release_whole(batch, known, stats)
            if runs is None:
                runs = self._release_each(batch, positions, known, stats, redactions)
            for group, records in runs:
                entry = groups.get(id(group))
                if entry is None:
                    groups[id(group)] = (group, records)
                else:
                    entry[1].extend(records)
        # ResourceLogs (without children) + its ScopeLogs, which is the ScopeLogs (without children) + its records
        request = [
            wire.fields(2, self._held_resource_logs(group, redactions), [wire.fields(2, group.scope_logs, records)])
            for group, records in groups.values()
        ]
        stats.redactions = redactions
        return wire.fields(1, b"", request), stats

    def _release_whole(self, batch: HeldBatch, known: wire.TraceTable, stats: Stats) -> list | None:
        """A batch whose window ended with none of its records gone (the flood's case: no evidence
        came) in C passes: its records' verdicts, their enrichment appended. None if a rule could
        fire on a verdict now known: then each record is decided on its own."""
        enrichments, counts = wire.resolve(batch.trace_ids, {}, known, UNKNOWN)
        if any(map(self.fires, counts)):
            return None
        for verdict, n in counts.items():
            stats.by_source[verdict.source] = stats.by_source.get(verdict.source, 0) + n
            stats.records += n
        records = list(map(bytes.__add__, batch.wires, enrichments))
        batch.wires, batch.records = (), []  # a batch freed whole by evidence stays until its window ends
        groups = batch.groups
        ends = [start for start, _ in groups[1:]] + [len(records)]
        return [(group, records[start:end]) for (start, group), end in zip(groups, ends)]

    def _release_each(
        self, batch: HeldBatch, positions: list[int], known, stats: Stats, redactions: dict[str, int]
    ) -> list:
        """Some of a batch's records, one by one: (group, its records' bytes) per group, in order.
        What the batch kept of them is dropped: the memory bound counts only the records still held,
        and a batch stays until its window ends."""
        redactor = self.redactor
        decide = self._decide_wire
        runs: list = []
        batch.wires = ()  # only a whole batch's release reads them
        for position in positions:
            _, trace_id, severity_fields, serialized, has_synthetic_type, rule = batch.records[position]
            batch.records[position] = None
            verdict = known.get(trace_id, UNKNOWN) if known is not None else UNKNOWN
            record = decide(severity_fields, serialized, verdict, has_synthetic_type, rule, stats)
            if position in batch.secrets:
                record = redactor.redact_record_bytes(record, redactions)
            group = batch.group_of(position)
            if not runs or runs[-1][0] is not group:
                runs.append((group, []))
            runs[-1][1].append(record)
        return runs

    def _held_resource_logs(self, group: HeldGroup, redactions: dict[str, int]) -> bytes:
        """The group's ResourceLogs (without children), its resource redacted as a forwarded one is."""
        if not self.redactor.active or not group.resource:
            return group.resource_logs
        redacted = self.redactor.redact_resource_bytes(group.resource, redactions)
        if redacted is group.resource:
            return group.resource_logs
        resource_logs = ResourceLogs.FromString(group.resource_logs)
        resource_logs.resource.ParseFromString(redacted)
        return resource_logs.SerializeToString()


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1
