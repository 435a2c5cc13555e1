"""Decides the source of a record's traffic from its attributes. Pure: no I/O, no clock.

Compiled once from the catalog; per attribute the work is a dict lookup, and per distinct
user agent a single regex pass whose result is kept in a bounded LRU cache.
"""

from __future__ import annotations

import re
from functools import lru_cache

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .catalog import Signature
from .verdict import Verdict

USER_AGENT_KEYS = ("user_agent.original", "http.user_agent", "http.request.header.user-agent")
HEADER_PREFIX = "http.request.header."

# Rank of a verdict's kind of evidence within one record: a monitor's marker header is set on
# purpose and beats a user agent; a recognised user agent beats "looks like a browser".
_HEADER, _SIGNATURE_UA, _BROWSER_UA = 0, 1, 2
_BROWSER_MARKER = "mozilla/"


def strings_of(value: AnyValue) -> list[str]:
    """A header attribute's values: semantic conventions say an array of strings; a plain string is common too."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return [value.string_value]
    if kind == "array_value":
        return [v.string_value for v in value.array_value.values if v.WhichOneof("value") == "string_value"]
    return []


class Classifier:
    def __init__(self, signatures: tuple[Signature, ...], ua_cache_size: int = 10_000):
        self.signatures = signatures
        # Attribute key -> how to read it; the pipeline looks every attribute key up here once.
        self.evidence_keys: dict[str, str] = {key: "user_agent" for key in USER_AGENT_KEYS}

        # User agents: one alternation finds whether any needle occurs (the common no-match case
        # costs one regex pass); only on a hit are the signatures tried in catalog order.
        # (catalog index, signature, [(lowercase needle, as written)])
        self._ua_signatures = [
            (i, s, [(n.lower(), n) for n in s.user_agent]) for i, s in enumerate(signatures) if s.user_agent
        ]
        needles = sorted({low for _, _, pairs in self._ua_signatures for low, _ in pairs}, key=len, reverse=True)
        self._ua_any = re.compile("|".join(map(re.escape, needles))) if needles else None
        self._ua_verdicts: dict[tuple[str, int, str], Verdict] = {}
        for key in USER_AGENT_KEYS:
            for i, s, pairs in self._ua_signatures:
                for low, written in pairs:
                    self._ua_verdicts[key, i, low] = Verdict(
                        s.source, s.name, f"{key} contains {written!r}", rank=(_SIGNATURE_UA, i)
                    )
        self._browser = {
            key: Verdict("user", "browser", f"{key} is a browser (no signature matched)", rank=(_BROWSER_UA, 0))
            for key in USER_AGENT_KEYS
        }

        # Marker headers: attribute key -> [verdict per lowercase value needle, or the presence verdict].
        self._header_rules: dict[str, list[dict[str, Verdict] | Verdict]] = {}
        for i, s in enumerate(signatures):
            for header, values in s.headers:
                key = HEADER_PREFIX + header
                if key in USER_AGENT_KEYS:
                    continue
                self.evidence_keys[key] = "header"
                if values:
                    made: dict[str, Verdict] | Verdict = {
                        v.lower(): Verdict(s.source, s.name, f"{key} contains {v!r}", rank=(_HEADER, i))
                        for v in values
                    }
                else:
                    made = Verdict(s.source, s.name, f"{key} is present", rank=(_HEADER, i))
                self._header_rules.setdefault(key, []).append(made)

        self.user_agent = lru_cache(maxsize=ua_cache_size)(self._user_agent)

    def evidence(self, key: str, value: AnyValue) -> Verdict | None:
        """The verdict one evidence attribute (a key in ``evidence_keys``) gives, if any."""
        if self.evidence_keys[key] == "user_agent":
            strings = strings_of(value)
            return self.user_agent(key, strings[0]) if strings else None
        return self.header(key, strings_of(value))

    def header(self, key: str, values: list[str]) -> Verdict | None:
        joined = "\n".join(values).lower()
        for made in self._header_rules[key]:
            if isinstance(made, Verdict):
                return made
            for needle, verdict in made.items():
                if needle in joined:
                    return verdict
        return None

    def _user_agent(self, key: str, user_agent: str) -> Verdict | None:
        lowered = user_agent.lower()
        if self._ua_any is not None and self._ua_any.search(lowered):
            for i, _, pairs in self._ua_signatures:
                for low, _ in pairs:
                    if low in lowered:
                        return self._ua_verdicts[key, i, low]
        if _BROWSER_MARKER in lowered:
            return self._browser[key]
        return None

    def attributes(self, attributes) -> Verdict | None:
        """The best verdict from a list of KeyValue (a record's or a resource's attributes)."""
        best = None
        keys = self.evidence_keys
        for kv in attributes:
            if kv.key in keys:
                verdict = self.evidence(kv.key, kv.value)
                if verdict is not None and (best is None or verdict.rank < best.rank):
                    best = verdict
        return best
