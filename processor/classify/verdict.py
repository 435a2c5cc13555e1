"""A classification decision and the attributes it adds to a record."""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

SOURCE = "triage.source"
SOURCE_NAME = "triage.source.name"
SOURCE_EVIDENCE = "triage.source.evidence"
SOURCE_CONFIDENCE = "triage.source.confidence"
SYNTHETIC_TYPE = "user_agent.synthetic.type"

CERTAIN = "certain"
LIKELY = "likely"

# When records of one trace disagree, the trace takes the first of these. ``user`` comes first on
# purpose: if any record of a trace looks like a real user, nothing in that trace is downgraded.
TRACE_PRECEDENCE = {"user": 0, "synthetic": 1, "probe": 2, "bot": 3, "service": 4, "unknown": 5}

_SYNTHETIC_TYPE = {"synthetic": "test", "probe": "test", "bot": "bot"}


def string_attribute(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


class Verdict:
    """Where a record's traffic came from, why we think so, and the enrichment that says it.

    Verdicts are built once (at start-up, or once per user agent in a bounded cache) and shared
    by every record they apply to, so per-record work is a lookup and a copy of prepared attributes.
    """

    __slots__ = (
        "source", "name", "evidence", "confidence", "rank", "trace_rank", "wire",
        "wire_typed", "origin", "_inherited",
    )

    def __init__(self, source: str, name: str, evidence: str, confidence: str = CERTAIN, rank: tuple = ()):
        self.source = source
        self.name = name
        self.evidence = evidence
        self.confidence = confidence
        # Orders verdicts found on one record: lower wins (marker header, then user agent signature, ...).
        self.rank = rank
        # Orders verdicts of one trace: lower wins (certain before likely; then TRACE_PRECEDENCE).
        self.trace_rank = (0 if confidence == CERTAIN else len(TRACE_PRECEDENCE)) + TRACE_PRECEDENCE[source]
        self.origin = self  # for an inherited verdict: the verdict it was inherited from
        attributes = [string_attribute(SOURCE, source)]
        if name:
            attributes.append(string_attribute(SOURCE_NAME, name))
        if evidence:
            attributes.append(string_attribute(SOURCE_EVIDENCE, evidence))
            attributes.append(string_attribute(SOURCE_CONFIDENCE, confidence))
        synthetic_type = _SYNTHETIC_TYPE.get(source)
        # The enrichment as serialized LogRecord fields: merging these bytes into a record appends the
        # attributes in C, several times cheaper than copying KeyValue messages from Python.
        self.wire = LogRecord(attributes=attributes).SerializeToString()
        typed = attributes + ([string_attribute(SYNTHETIC_TYPE, synthetic_type)] if synthetic_type else [])
        self.wire_typed = LogRecord(attributes=typed).SerializeToString()
        self._inherited: Verdict | None = None

    def inherited(self) -> Verdict:
        """The same decision, for a record that has no evidence of its own but shares the trace."""
        if self._inherited is None:
            inherited = Verdict(self.source, self.name, f"same trace: {self.evidence}", self.confidence, self.rank)
            inherited.origin = self
            self._inherited = inherited
        return self._inherited

    def __repr__(self) -> str:
        return f"Verdict({self.source!r}, {self.name!r}, {self.evidence!r}, {self.confidence!r})"


UNKNOWN = Verdict("unknown", "", "")
