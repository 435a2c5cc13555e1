"""Each record's own evidence, read from the request's serialized form.

``wire.index`` walks the request in C and reports only the attributes whose key the classifier
reads (user agents, marker headers, monitor addresses, a path that starts like a health path,
``user_agent.synthetic.type``), so records without evidence cost no Python at all. The
decisions stay the classifier's:

- a user agent is cached by (key, serialized value) in ``wire.UserAgentCache`` (C). A request's
  user agents are looked up where they lie in it, and the new ones that are one ASCII string are
  classified in the same call: one pass each of an automaton of the catalog's needles
  (``wire.FirstNeedle``), then a table lookup. No bytes object is made for them;
- any other evidence attribute is decoded and handed to ``Classifier.evidence``, cached by value;
- a record the walk does not model (triaged upstream, a key given twice in one attribute, ...)
  is decoded whole and read attribute by attribute (``decoded``), as the reference loop does.

The redactor's literals are found by one Hyperscan pass over the request: a record without one
has nothing to redact.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from . import wire
from .classify import CatalogError, Classifier, Verdict
from .classify.classifier import BROWSER_MARKER, MAX_CACHED_VALUE
from .classify.verdict import SOURCE, SYNTHETIC_TYPE
from .redact import Redactor
from .wire import FirstNeedle, Index, Scanner

_MISSING = object()
_KINDS = {"user_agent": wire.USER_AGENT, "path": wire.PATH}
# The user-agent cache's hash key: user agents come from outside, and ones made to collide would go uncached.
_SEED = os.urandom(16)


@dataclass
class Evidence:
    """What a request's records say about themselves."""

    index: Index
    own: dict[int, Verdict]  # record -> the verdict its own attributes give, when they give one
    typed: set[int]  # records that already carry user_agent.synthetic.type
    upstream: dict[int, str]  # record -> triage.source a processor upstream set (passed on untouched)
    secrets: set[int]  # records that may hold something to redact


class EvidenceReader:
    def __init__(self, classifier: Classifier, redactor: Redactor, cache_size: int = 10_000):
        self.classifier = classifier
        self._names = [*classifier.evidence_keys, SYNTHETIC_TYPE, SOURCE]  # a key's id is its place here
        if len(self._names) > wire.MAX_KEYS:
            raise CatalogError(
                f"{len(classifier.evidence_keys)} evidence attribute keys (user agents, paths, addresses and every"
                f" signature's marker headers); at most {wire.MAX_KEYS - 2} are supported: drop some headers"
                " from TRIAGE_SIGNATURES_FILE"
            )
        self._keys = tuple(name.encode() for name in self._names)
        self._kinds = bytes(
            [_KINDS.get(kind, wire.EVIDENCE) for kind in classifier.evidence_keys.values()] + [wire.EVIDENCE, wire.ODD]
        )
        self._synthetic_type = len(self._names) - 2
        self._health_paths = tuple(path.encode() for path in classifier.health_paths)
        # A user agent not seen lately is searched for every signature needle at once, and for the
        # browser marker ranked after them all, with ASCII case ignored (what str.lower() does to
        # ASCII text); other text takes the classifier's path (``_decoded_user_agent``).
        order = classifier.ua_needle_order
        needles = (
            FirstNeedle(
                [classifier.ua_needles[n].encode() for n in order] + [BROWSER_MARKER], list(range(len(order) + 1))
            )
            if classifier.ua_needles_ascii
            else None
        )
        # Per key id, by rank: the verdict of a user agent whose first needle has that rank; then a
        # browser's (the marker's rank), then None (no needle at all; the last, as the cache reads it).
        by_needle = [
            [classifier.user_agent_found(name, b"", frozenset((needle,))) for needle in order]
            + [classifier.user_agent_found(name, BROWSER_MARKER, frozenset()), None]
            if kind == wire.USER_AGENT
            else []
            for name, kind in zip(self._names, self._kinds)
        ]
        # key id byte + AnyValue bytes -> verdict; bounded in entries and bytes, it starts over when full.
        # The doorkeeper keeps one-off user agents out (a flood of them would start it over every few
        # requests, forgetting the ones that come again): the automaton classifies them again cheaply.
        self._user_agents = wire.UserAgentCache(
            cache_size, _SEED, None if needles is None else needles.automaton, by_needle, doorkeeper=True
        )
        self._others: dict[tuple[int, bytes], Verdict | None] = {}  # (key id, AnyValue bytes) -> verdict
        self._cache_size = cache_size
        self._redacting = redactor.active
        # A redaction pattern with no literal may match anything: then every record is looked at.
        self._every_record_secret = redactor.active and redactor.literals is None
        self._secrets = Scanner(list(redactor.literals or ()))

    def read(self, payload: bytes, min_severity: int, max_count: int = wire.UNLIMITED) -> Evidence:
        """The evidence of every record of the serialized request ``payload`` (``wire.Malformed`` if
        upb would not decode it; ``wire.TooMany`` past ``max_count``, as ``wire.index``)."""
        found = wire.index(payload, self._keys, self._kinds, self._health_paths, min_severity, max_count)
        # record -> the verdict its user agents give (the better one, the first on a tie)
        own: dict[int, Verdict] = self._user_agents.verdicts(payload, found.user_agents, self._decoded_user_agent)
        typed: set[int] = set()
        upstream: dict[int, str] = {}
        others = self._others
        for record, key, value in found.hits:
            if key == self._synthetic_type:
                typed.add(record)
                continue
            verdict = others.get((key, value), _MISSING)
            if verdict is _MISSING:
                verdict = self._classify_other(key, value)
            if verdict is not None:
                best = own.get(record)
                if best is None or verdict.rank < best.rank:
                    own[record] = verdict
        spans = found.spans
        for record in found.odd:
            verdict, has_synthetic_type, already = self.decoded(LogRecord.FromString(payload[spans[2 * record] : spans[2 * record + 1]]))
            if already is not None:
                upstream[record] = already
                continue
            if verdict is not None:
                own[record] = verdict
            if has_synthetic_type:
                typed.add(record)
        return Evidence(found, own, typed, upstream, self._secrets_in(payload, spans))

    def _classify_other(self, key: int, value: bytes) -> Verdict | None:
        """The verdict of any other evidence attribute (a probe's path, a header, an address) not in
        ``_others``, which ``read`` looks up first: the same few values come again and again."""
        verdict = self.classifier.evidence(self._names[key], AnyValue.FromString(value))
        if len(value) <= MAX_CACHED_VALUE:  # a longer one is classified every time: the cache's memory is bounded
            cache = self._others
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[key, value] = verdict
        return verdict

    def decoded(self, record: LogRecord) -> tuple[Verdict | None, bool, str | None]:
        """A decoded record's own evidence: (best verdict, has user_agent.synthetic.type, triage.source if set)."""
        classifier = self.classifier
        evidence_keys = classifier.evidence_keys
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
        return verdict, has_synthetic_type, already

    def _secrets_in(self, payload: bytes, spans: memoryview) -> set[int]:
        if not self._redacting:
            return set()
        if self._every_record_secret:
            return set(range(len(spans) // 2))
        positions = self._secrets.positions(payload)
        if not positions:  # the usual request
            return set()
        starts = spans[::2].tolist()
        # An occurrence outside every record (in a resource) names the record before it: harmless,
        # the redactor checks what it is given.
        return {bisect_right(starts, at) - 1 for _, at in positions} - {-1}

    def _decoded_user_agent(self, key: bytes) -> Verdict | None:
        return self.classifier.evidence(self._names[key[0]], AnyValue.FromString(key[1:]))
