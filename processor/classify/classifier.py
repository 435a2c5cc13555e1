"""Decides the source of a record's traffic from its attributes. Pure: no I/O, no clock.

Compiled once from the catalog; per attribute the work is a dict lookup, and per distinct
user agent a single regex pass whose result is kept in a bounded LRU cache.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .catalog import Signature
from .verdict import LIKELY, Verdict

USER_AGENT_KEYS = ("user_agent.original", "http.user_agent", "http.request.header.user-agent")
HEADER_PREFIX = "http.request.header."
PATH_KEYS = ("url.path", "http.target", "http.route")
ADDRESS_KEYS = ("client.address", "http.client_ip", "net.sock.peer.addr", "net.peer.ip", "network.peer.address")
HEALTH_PATH_NAME = "health-check-path"

# Rank of a verdict's kind of evidence within one record, best first: a monitor's marker header is
# set on purpose; an address in a monitor's published ranges is next; then a recognised user agent;
# then "looks like a browser"; a health-check path alone is only weak evidence.
_HEADER, _ADDRESS, _SIGNATURE_UA, _BROWSER_UA, _PATH = 0, 1, 2, 3, 4
PATH_RANK = (_PATH, 0)  # every health-path verdict's rank: any other evidence outranks it
# A value longer than this (in characters) is classified every time and never kept: a cache then
# holds at most its count of values this long, and a flood of huge ones costs CPU, not memory.
MAX_CACHED_VALUE = 1024
BROWSER_MARKER = b"mozilla/"  # in a lowercased user agent with no signature needle: a browser
_BROWSER_TEXT = BROWSER_MARKER.decode()


@dataclass(frozen=True)
class MonitorCidrs:
    """A monitor's published address ranges (TRIAGE_MONITOR_CIDRS)."""

    name: str
    source: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def strings_of(value: AnyValue) -> list[str]:
    """A header attribute's values: semantic conventions say an array of strings; a plain string is common too."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return [value.string_value]
    if kind == "array_value":
        return [v.string_value for v in value.array_value.values if v.WhichOneof("value") == "string_value"]
    return []


def trie_pattern(words: list[str]) -> str:
    """A regex matching any of ``words``, shaped as a trie: ``(?:ab(?:c|d)|x)``.

    Python's ``re`` tries every branch of a flat ``a|b|c`` alternation at every position; a trie
    explores only the branch the next character selects, so a miss costs about one pass over the
    text however many words there are (what keeps a flood of unique user agents cheap).
    """
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # end of a word

    def build(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and not ends else "(?:" + "|".join(branches) + ")"
        return body + "?" if ends else body

    return build(trie)


class Classifier:
    def __init__(
        self,
        signatures: tuple[Signature, ...],
        ua_cache_size: int = 10_000,
        health_paths: tuple[str, ...] = (),
        monitor_cidrs: tuple[MonitorCidrs, ...] = (),
    ):
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
        self._ua_any = re.compile(trie_pattern(needles)) if needles else None
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

        # tracestate (on spans): Datadog marks synthetic traces with o:synthetics.
        self._tracestate = [
            (needle.lower(), Verdict(s.source, s.name, f"tracestate contains {needle!r}", rank=(_HEADER, i)))
            for i, s in enumerate(signatures)
            for needle in s.tracestate
        ]

        # Health-check paths: exact match only, so /health-insurance is not /health.
        self.health_paths = tuple(health_paths)
        self._paths: dict[tuple[str, str], Verdict] = {}
        for key in PATH_KEYS if health_paths else ():
            self.evidence_keys[key] = "path"
            for path in health_paths:
                self._paths[key, path] = Verdict(
                    "probe", HEALTH_PATH_NAME, f"{key} is {path!r}", confidence=LIKELY, rank=PATH_RANK
                )

        self._cidrs = monitor_cidrs
        self._cidr_verdicts = {
            (key, m.name): Verdict(m.source, m.name, f"{key} in {m.name} address ranges", rank=(_ADDRESS, i))
            for i, m in enumerate(monitor_cidrs)
            for key in ADDRESS_KEYS
        }
        for key in ADDRESS_KEYS if monitor_cidrs else ():
            self.evidence_keys[key] = "address"

        # The same decision from the outside: a caller that searched the user agent for every needle
        # at once (``ua_needles``, ASCII case ignored) passes the indices it found. Each needle's
        # verdict is the one the catalog-order loop in _user_agent would reach first.
        self.ua_needles: tuple[str, ...] = tuple(needles)
        needle_index = {low: n for n, low in enumerate(self.ua_needles)}
        # needle -> (where the loop first meets it: signature order, needle position; catalog index; needle)
        self._needle_first: dict[int, tuple[tuple[int, int], int, str]] = {}
        for order, (i, _, pairs) in enumerate(self._ua_signatures):
            for position, (low, _) in enumerate(pairs):
                self._needle_first.setdefault(needle_index[low], ((order, position), i, low))
        # Needle indices, first in precedence first: of the needles found in a user agent, the one
        # that comes first here decides (what user_agent_found computes from the full set).
        self.ua_needle_order: tuple[int, ...] = tuple(sorted(self._needle_first, key=self._needle_first.__getitem__))
        self.ua_needles_ascii = all(n.isascii() for n in self.ua_needles)
        self.ua_cache_size = ua_cache_size
        self._user_agent_kept = lru_cache(maxsize=ua_cache_size)(self._user_agent)
        self._address_kept = lru_cache(maxsize=ua_cache_size)(self._address)

    def user_agent(self, key: str, user_agent: str) -> Verdict | None:
        """The verdict a user agent gives (cached, unless it is longer than ``MAX_CACHED_VALUE``)."""
        if len(user_agent) > MAX_CACHED_VALUE:
            return self._user_agent(key, user_agent)
        return self._user_agent_kept(key, user_agent)

    def address(self, key: str, text: str) -> Verdict | None:
        """The verdict a client address gives (cached, unless it is longer than ``MAX_CACHED_VALUE``)."""
        if len(text) > MAX_CACHED_VALUE:
            return self._address(key, text)
        return self._address_kept(key, text)

    def evidence(self, key: str, value: AnyValue) -> Verdict | None:
        """The verdict one evidence attribute (a key in ``evidence_keys``) gives, if any."""
        kind = self.evidence_keys[key]
        if kind == "user_agent":
            strings = strings_of(value)
            return self.user_agent(key, strings[0]) if strings else None
        if kind == "header":
            return self.header(key, strings_of(value))
        if value.WhichOneof("value") != "string_value":
            return None
        if kind == "path":
            return self.path(key, value.string_value)
        return self.address(key, value.string_value)

    def path(self, key: str, target: str) -> Verdict | None:
        found = self._paths.get((key, target))
        plain = not target.endswith("/") and "?" not in target and "#" not in target
        if found is not None or plain:
            return found  # the common case: a plain path, exact hit or miss
        path = target.split("?", 1)[0].split("#", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        return self._paths.get((key, path))

    def _address(self, key: str, text: str) -> Verdict | None:
        try:
            address = ipaddress.ip_address(text.strip().strip("[]"))
        except ValueError:
            return None
        for monitor in self._cidrs:
            for network in monitor.networks:
                if address.version == network.version and address in network:
                    return self._cidr_verdicts[key, monitor.name]
        return None

    def tracestate(self, value: str) -> Verdict | None:
        lowered = value.lower()
        for needle, verdict in self._tracestate:
            if needle in lowered:
                return verdict
        return None

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
        if _BROWSER_TEXT in lowered:
            return self._browser[key]
        return None

    def user_agent_found(self, key: str, user_agent: bytes, needles: set[int] | frozenset[int]) -> Verdict | None:
        """``user_agent(key, ...)`` for an ASCII user agent in which exactly ``needles`` occur (case ignored)."""
        if needles:
            _, i, low = min(self._needle_first[n] for n in needles)
            return self._ua_verdicts[key, i, low]
        if BROWSER_MARKER in user_agent.lower():
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
