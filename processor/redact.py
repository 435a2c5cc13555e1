"""Secret redaction before forwarding: header attributes that carry credentials, and token-shaped text.

Runs after classification (which may need what it removes) and before the request is queued, so a
redacted record keeps its enrichment and no secret reaches the queue, the disk or the backend.

Cheap when there is nothing to redact: one search over the request's serialized bytes for any
watched key or pattern decides whether the records need looking at at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

MARKER = "[REDACTED]"
ATTRIBUTE_RULE = "attribute"  # the metric label for values removed because of their attribute key

DEFAULT_ATTRIBUTES = (
    "http.request.header.authorization",
    "http.request.header.proxy-authorization",
    "http.request.header.cookie",
    "http.request.header.set-cookie",
    "http.response.header.set-cookie",
    "http.request.header.x-api-key",
)
# A pattern's named group ``secret`` is what gets replaced (the rest, e.g. a cookie's name, stays);
# without one the whole match is replaced.
DEFAULT_PATTERNS = (
    ("jwt", r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),
    # Patterns start with a literal so that searching a whole request stays a fast scan in C.
    ("auth0-appsession", r"appSession(?:\.\d+)?=(?P<secret>[^;\s\"',]+)"),
    # Two literal spellings rather than (?i): a case-insensitive start makes the scan ~10x slower.
    ("bearer", r"Bearer\s+(?P<secret>[A-Za-z0-9._~+/=-]{8,})"),
    ("bearer-lowercase", r"bearer\s+(?P<secret>[A-Za-z0-9._~+/=-]{8,})"),
)
_MAX_DEPTH = 8


def parse_attributes(value: str) -> tuple[str, ...]:
    """``default``, ``none``, and keys to add, or ``-key`` to remove: ``default,-http.request.header.cookie``."""
    keys: list[str] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if part == "default":
            keys.extend(k for k in DEFAULT_ATTRIBUTES if k not in keys)
        elif part == "none":
            keys.clear()
        elif part.startswith("-"):
            if part[1:] in keys:
                keys.remove(part[1:])
        elif " " in part:
            raise ValueError(f"{part!r} is not an attribute key; expected e.g. default,http.request.header.x-token")
        elif part not in keys:
            keys.append(part)
    return tuple(keys)


def parse_patterns(value: str) -> tuple[tuple[str, str], ...]:
    """``default``, ``none``, or a JSON object added to the defaults: ``{"stripe": "sk_live_\\\\w+", "bearer": null}``.

    A name mapped to null removes that default pattern.
    """
    value = value.strip()
    if value in ("", "default"):
        return DEFAULT_PATTERNS
    if value == "none":
        return ()
    try:
        extra = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ValueError('expected default, none, or a JSON object {"name": "regex", "default-name": null}') from None
    if not isinstance(extra, dict):
        raise ValueError('expected a JSON object {"name": "regex"}')
    patterns = dict(DEFAULT_PATTERNS)
    for name, regex in extra.items():
        if regex is None:
            patterns.pop(name, None)
            continue
        if not isinstance(regex, str):
            raise ValueError(f"{name}: expected a regular expression string or null")
        try:
            re.compile(regex)
        except re.error as e:
            raise ValueError(f"{name}: invalid regular expression {regex!r}: {e}") from None
        patterns[name] = regex
    return tuple(patterns.items())


class Redactor:
    def __init__(self, attribute_keys: Iterable[str] = DEFAULT_ATTRIBUTES, patterns=DEFAULT_PATTERNS):
        self.attribute_keys = frozenset(attribute_keys)
        self.patterns = tuple((name, re.compile(regex)) for name, regex in patterns)
        # Whether a request needs looking at: any watched key or any pattern, searched in its bytes.
        self._prefilters: list[re.Pattern[bytes]] = []
        if self.attribute_keys:
            self._prefilters.append(re.compile(b"|".join(re.escape(k.encode()) for k in sorted(self.attribute_keys))))
        self._always = False
        for _, regex in patterns:
            try:
                self._prefilters.append(re.compile(regex.encode()))
            except (re.error, UnicodeEncodeError):
                self._always = True  # a pattern bytes cannot express: look at every request

    @property
    def active(self) -> bool:
        return bool(self._prefilters) or self._always

    def needed(self, payload: bytes) -> bool:
        return self._always or any(p.search(payload) is not None for p in self._prefilters)

    def redact_request(self, request, counts: dict[str, int]) -> None:
        """Redact every record (attributes and body) and resource attribute of a logs request in place."""
        for resource_logs in request.resource_logs:
            self._attributes(resource_logs.resource.attributes, counts)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    self._attributes(record.attributes, counts)
                    self._value(record.body, counts, 0)

    def _attributes(self, attributes, counts: dict[str, int]) -> None:
        for kv in attributes:
            if kv.key in self.attribute_keys:
                if _replace_all(kv.value):
                    counts[ATTRIBUTE_RULE] = counts.get(ATTRIBUTE_RULE, 0) + 1
            else:
                self._value(kv.value, counts, 0)

    def _value(self, value: AnyValue, counts: dict[str, int], depth: int) -> None:
        kind = value.WhichOneof("value")
        if kind == "string_value":
            text = value.string_value
            redacted = self.text(text, counts)
            if redacted is not text:
                value.string_value = redacted
        elif depth < _MAX_DEPTH and kind == "array_value":
            for item in value.array_value.values:
                self._value(item, counts, depth + 1)
        elif depth < _MAX_DEPTH and kind == "kvlist_value":
            self._attributes(value.kvlist_value.values, counts)

    def text(self, text: str, counts: dict[str, int]) -> str:
        """``text`` with every pattern's secret replaced (the same object when nothing matched)."""
        for name, pattern in self.patterns:
            if pattern.search(text) is None:
                continue
            found = 0

            def replace(match: re.Match) -> str:
                nonlocal found
                found += 1
                if "secret" in pattern.groupindex and match.group("secret") is not None:
                    start, end = match.span("secret")
                    whole_start = match.start()
                    return match.group(0)[: start - whole_start] + MARKER + match.group(0)[end - whole_start :]
                return MARKER

            text = pattern.sub(replace, text)
            counts[name] = counts.get(name, 0) + found
        return text


def _replace_all(value: AnyValue) -> bool:
    """Replace a credential attribute's value(s) by the marker, keeping an array an array."""
    if value.WhichOneof("value") == "array_value":
        for item in value.array_value.values:
            item.string_value = MARKER
        return True
    if value.WhichOneof("value") is None:
        return False
    value.string_value = MARKER
    return True
