"""Which records of a request need a closer look, and their evidence read straight from their bytes.

Reading a record's attributes through protobuf messages costs about 0.4 µs per attribute in
Python, several times the budget for a whole record. So one Hyperscan pass over all the records'
bytes finds every literal that matters:

- an evidence attribute key (user agent, marker headers, monitor addresses);
- a configured health path (path keys are on nearly every record, the health paths are not);
- ``user_agent.synthetic.type`` and ``triage.source`` (a processor upstream already triaged);
- the redactor's literals (a record without one has nothing to redact).

A found key counts only when it is framed as one of the record's own attributes and that frame
starts one of the record's top-level fields (``wire``), so a key mentioned in a body, nested in a
map or inside a bytes value is not evidence, exactly as with the decoded record. The
decisions themselves stay the classifier's.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .classify import Classifier, Verdict
from .classify.classifier import PATH_RANK
from .classify.verdict import SOURCE, SYNTHETIC_TYPE
from .redact import Redactor
from .wire import Scanner, attribute_value, attribute_with_string_at, field_containing, string_value

_MISSING = object()
_NONE: frozenset[int] = frozenset()
_ATTRIBUTE_TAG = 0x32  # LogRecord.attributes, length-delimited

# What an occurrence of a literal means.
_USER_AGENT_KEY, _KEY, _HEALTH_PATH, _SYNTHETIC_TYPE, _SOURCE, _SECRET = range(6)


@dataclass(frozen=True)
class Scan:
    joined: bytes  # the request's records, back to back
    bounds: list[int]  # where each record ends in ``joined``
    hits: dict[int, list[tuple[int, int]]]  # record index -> (literal id, start in joined)
    secrets: set[int]  # records that may hold something to redact
    flagged: set[int]  # records with evidence, a synthetic type or an upstream triage to read
    known: dict[int, Verdict | None]  # the usual access logs (a user agent, nothing else), already decided


class EvidenceReader:
    def __init__(self, classifier: Classifier, redactor: Redactor, cache_size: int = 10_000):
        self.classifier = classifier
        literals: list[tuple[bytes, bool]] = []
        self._roles: list[tuple[int, object]] = []  # per literal id: (role, argument)

        def watch(literal: bytes, role: int, argument: object = None, caseless: bool = False) -> None:
            literals.append((literal, caseless))
            self._roles.append((role, argument))

        self._path_keys = tuple(k.encode() for k, kind in classifier.evidence_keys.items() if kind == "path")
        for key, kind in classifier.evidence_keys.items():
            if kind == "user_agent":
                watch(key.encode(), _USER_AGENT_KEY, key.encode())
            elif kind != "path":
                watch(key.encode(), _KEY, key.encode())
        for path in classifier.health_paths if self._path_keys else ():
            watch(path.encode(), _HEALTH_PATH)
        watch(SYNTHETIC_TYPE.encode(), _SYNTHETIC_TYPE, SYNTHETIC_TYPE.encode())
        watch(SOURCE.encode(), _SOURCE, SOURCE.encode())
        # A redaction pattern with no literal may match anything: then every record is looked at.
        self._every_record_secret = redactor.active and redactor.literals is None
        if redactor.active:
            for literal in redactor.literals or ():
                watch(literal, _SECRET)
        self._scanner = Scanner(literals)
        # A user agent not seen lately is searched for every signature needle at once, with ASCII
        # case ignored (what str.lower() does to ASCII text); other text takes the classifier's path.
        self._needles = (
            Scanner([(needle.encode(), True) for needle in classifier.ua_needles])
            if classifier.ua_needles_ascii and not any("\0" in needle for needle in classifier.ua_needles)
            else None
        )
        self._user_agents: dict[tuple[bytes, bytes], Verdict | None] = {}
        self._cache_size = cache_size
        self._is_secret = [role == _SECRET for role, _ in self._roles]

    def scan(self, records: list[bytes]) -> Scan:
        joined, bounds, hits = self._scanner.scan(records)
        is_secret = self._is_secret
        secrets = set(range(len(records))) if self._every_record_secret else set()
        flagged = set()
        for index, found in hits.items():
            for literal, _ in found:
                if is_secret[literal]:
                    secrets.add(index)
                else:
                    flagged.add(index)
        return Scan(joined, bounds, hits, secrets, flagged, self._user_agents_of(joined, bounds, hits, flagged))

    def _user_agents_of(self, buf: bytes, bounds: list[int], hits, flagged: set[int]) -> dict[int, Verdict | None]:
        """The verdicts of the records whose only hit is a user-agent key framed as their attribute.

        User agents not in the cache are searched for the catalog's needles together, in one
        Hyperscan call for the whole request: a flood of unique user agents then costs little more
        per record than the usual few.
        """
        known: dict[int, Verdict | None] = {}
        cache = self._user_agents
        roles = self._roles
        missing: dict[tuple[bytes, bytes], list[int]] = {}  # cache key -> records
        for index in flagged:
            found = hits[index]
            if len(found) != 1:
                continue
            literal, at = found[0]
            role, key = roles[literal]
            if role != _USER_AGENT_KEY:
                continue
            start = bounds[index - 1] if index else 0
            stop = bounds[index]
            framed = attribute_value(buf, at, key, start, stop)
            if framed is None or framed[0] != field_containing(buf, start, stop, at):
                continue  # read() says what it is
            cache_key = (key, buf[framed[1] : framed[2]])
            verdict = cache.get(cache_key, _MISSING)
            if verdict is _MISSING:
                missing.setdefault(cache_key, []).append(index)
            else:
                known[index] = verdict
        if missing:
            for cache_key, verdict in self._remember(self._classify_user_agents(list(missing))).items():
                for index in missing[cache_key]:
                    known[index] = verdict
        return known

    def _remember(self, verdicts: dict[tuple[bytes, bytes], Verdict | None]) -> dict[tuple[bytes, bytes], Verdict | None]:
        """Keep newly classified user agents (returned as given); bounded: a flood of unique ones
        starts the cache over rather than tracking age."""
        cache = self._user_agents
        if len(cache) + len(verdicts) > self._cache_size:
            cache.clear()
        cache.update(verdicts)
        return verdicts

    def _classify_user_agents(self, keys: list[tuple[bytes, bytes]]) -> dict[tuple[bytes, bytes], Verdict | None]:
        """Verdicts for (key, AnyValue bytes) pairs: ASCII strings from one needle search, the rest one by one."""
        verdicts: dict[tuple[bytes, bytes], Verdict | None] = {}
        texts: list[tuple[tuple[bytes, bytes], bytes]] = []
        for cache_key in keys:
            key, value = cache_key
            text = string_value(value, 0, len(value))
            if text is not None and self._needles is not None and value[text[0] :].isascii():
                texts.append((cache_key, value[text[0] :]))
            else:  # an array of values, or non-ASCII text: exactly as for a decoded record
                verdicts[cache_key] = self.classifier.evidence(key.decode(), AnyValue.FromString(value))
        if texts:
            # NUL never occurs in a needle, so no match spans two user agents.
            found = self._needles.found_in_each([text for _, text in texts])
            for i, (cache_key, text) in enumerate(texts):
                verdicts[cache_key] = self.classifier.user_agent_found(cache_key[0].decode(), text, found.get(i, _NONE))
        return verdicts

    def read(self, scan: Scan, index: int) -> tuple[Verdict | None, bool] | None:
        """(best verdict, has user_agent.synthetic.type) of record ``index``, from its own attributes.

        None when the bytes cannot say for sure (the record was triaged upstream, or a key sits inside
        an attribute without being its key): the caller reads the decoded record instead.
        """
        known = scan.known.get(index, _MISSING)
        if known is not _MISSING:
            return known, False
        buf = scan.joined
        start = scan.bounds[index - 1] if index else 0
        stop = scan.bounds[index]
        roles = self._roles
        hits = scan.hits[index]
        classifier = self.classifier
        verdict = None
        has_synthetic_type = False
        paths = []
        for literal, at in hits:
            role, argument = roles[literal]
            if role == _SECRET:  # the redactor's business
                continue
            field = field_containing(buf, start, stop, at)
            if field is None or buf[field] != _ATTRIBUTE_TAG:
                continue  # in the body, the severity text, the event name: never evidence
            if role == _HEALTH_PATH:
                paths.append((at, field))
                continue
            framed = attribute_value(buf, at, argument, start, stop)
            if framed is None or framed[0] != field:
                # Inside an attribute but not framed as its key: nested in its value, or encoded
                # unusually (fields out of order): the decoded record decides.
                return None
            value = framed[1:]
            if role == _USER_AGENT_KEY:
                found = self._user_agent(buf, argument, value)
            elif role == _KEY:
                found = classifier.evidence(argument.decode(), AnyValue.FromString(buf[value[0] : value[1]]))
            elif role == _SYNTHETIC_TYPE:
                has_synthetic_type = True
                continue
            else:  # _SOURCE: triaged upstream
                return None
            if found is not None and (verdict is None or found.rank < verdict.rank):
                verdict = found
        # A health path is the weakest evidence: read only if nothing better was found.
        if paths and (verdict is None or verdict.rank > PATH_RANK):
            for at, field in paths:
                located = attribute_with_string_at(buf, at, self._path_keys, start, stop)
                if located is None or located[2] != field:
                    return None  # a health path inside an attribute, not as a path key's value: decide decoded
                key, end, _ = located
                found = classifier.path(key.decode(), buf[at:end].decode())
                if found is not None and (verdict is None or found.rank < verdict.rank):
                    verdict = found
        return verdict, has_synthetic_type

    def _user_agent(self, buf: bytes, key: bytes, value: tuple[int, int]) -> Verdict | None:
        cache_key = (key, buf[value[0] : value[1]])
        verdict = self._user_agents.get(cache_key, _MISSING)
        if verdict is _MISSING:
            verdict = self._remember(self._classify_user_agents([cache_key]))[cache_key]
        return verdict
