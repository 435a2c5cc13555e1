"""Secret redaction before forwarding: header attributes that carry credentials, and token-shaped text.

Runs after classification (which may need what it removes) and before the request is queued, so a
redacted record keeps its enrichment and no secret reaches the queue, the disk or the backend.
Pure: no I/O; everything is compiled once in ``Redactor.__init__``.

How a request is handled:

1. ``needed(wire)`` searches the request's protobuf bytes for every watched attribute key and, for
   each pattern, for one literal that every match of it must contain (``eyJ``, ``appSession``,
   ``Bearer``, ...). Literals, not the patterns themselves: a text pattern run over protobuf bytes
   misses real matches (``\\b`` or ``^`` next to a length byte, a Unicode ``\\s``) and can take
   quadratic time over a whole request. Strings are stored as their UTF-8 bytes, so "literal absent
   from the bytes" proves "no match in any string". A pattern with no such literal (one entirely
   under ``(?i)``, or starting with a class) makes every request walked: correct, but slower.
2. Only then ``redact_request`` walks the resource attributes and every record that passes the same
   check on its own bytes: a watched attribute's value is replaced whole, and every pattern is
   applied, in order, to every other string (attribute values, string bodies, strings nested in
   arrays and maps at any depth).

What is replaced, and what is counted (the ``triage_redactions_total{rule}`` metric):

- A watched attribute (``ATTRIBUTE_RULE``): every non-empty leaf of its value becomes ``MARKER``,
  keeping an array an array and a map a map. A non-string leaf (int, bool, double, bytes) becomes
  the string ``MARKER`` too: a header is a string or an array of strings, so only malformed data
  changes type, and then secrecy wins. Counted once per attribute that changed. Keys match
  exactly (OTel semantic conventions lowercase header names).
- A pattern: a match's named group ``secret`` if it has one (the rest, e.g. a cookie's name,
  stays), else the whole match. Counted once per replaced match. A later pattern does not count
  text an earlier one already replaced, and text that already is ``MARKER`` is neither changed nor
  counted, so running twice (a second processor in the path) changes nothing.
- Never touched: ``triage.*`` attributes (the enrichment), map keys, ``bytes`` bodies, trace and
  span ids, timestamps, severity. Scope attributes are not walked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

try:  # the standard library's own regex parser: used only to find each pattern's required literal
    from re import _constants as _sre_constants
    from re import _parser as _sre_parser
except ImportError:  # pragma: no cover - a Python without it: every pattern then has no literal
    _sre_parser = None  # type: ignore[assignment]
    _sre_constants = None  # type: ignore[assignment]

MARKER = "[REDACTED]"  # what a secret is replaced by: fixed, so dashboards and tests can look for it
ATTRIBUTE_RULE = "attribute"  # the metric label for values removed because of their attribute key
PROTECTED_PREFIX = "triage."  # the enrichment: never redacted, never counted

DEFAULT_ATTRIBUTES = (
    "http.request.header.authorization",
    "http.request.header.proxy-authorization",
    "http.request.header.cookie",
    "http.request.header.set-cookie",
    "http.response.header.set-cookie",
    "http.request.header.x-api-key",
)
# Applied in this order: the patterns that know the context (a cookie's name, the Bearer scheme)
# come before the bare token shape, so a Bearer JWT counts as ``bearer``. Quantifiers are
# possessive (``++``) and nothing backtracks, so each pattern runs in linear time.
DEFAULT_PATTERNS = (
    # Auth0 (nextjs-auth0 v1-v3) session cookie and its chunks appSession.0, appSession.1, ...: the
    # value, up to what ends a cookie value (RFC 6265 cookie-octet), optionally quoted, goes.
    ("auth0-appsession", r"appSession(?:\.[0-9]++)?+=(?:\\?\")?+(?P<secret>[^;\s\"',\\]++)"),
    # RFC 6750 b64token after the scheme. 8+ characters, so "Bearer null" stays readable. Two
    # literal spellings rather than (?i), which would leave the byte prefilter no literal.
    ("bearer", r"Bearer\s++(?P<secret>[A-Za-z0-9._~+/=-]{8,}+)"),
    ("bearer-lowercase", r"bearer\s++(?P<secret>[A-Za-z0-9._~+/=-]{8,}+)"),
    # JWS (header.payload.signature; the signature may be empty) and JWE (five parts; the key may be
    # empty, as in Auth0's session cookies). Starts only where a token starts, or right after a %XX
    # escape (an URL-encoded "=eyJ..."): starting inside a run of "eyJeyJeyJ..." would make the
    # search quadratic (1 MiB of it took minutes).
    (
        "jwt",
        r"(?:(?<![A-Za-z0-9_-])|(?<=%[0-9A-Fa-f]{2}))eyJ[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]*+\.[A-Za-z0-9_-]*+"
        r"(?:\.[A-Za-z0-9_-]*+\.[A-Za-z0-9_-]++)?+",
    ),
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CONTAINERS = ("array_value", "kvlist_value")


# --- configuration ---------------------------------------------------------------------------------------

def parse_attributes(value: str) -> tuple[str, ...]:
    """``default``, ``none``, and keys to add, or ``-key`` to remove: ``default,-http.request.header.cookie``."""
    keys: list[str] = []
    problems = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if part == "default":
            keys.extend(k for k in DEFAULT_ATTRIBUTES if k not in keys)
        elif part == "none":
            keys.clear()
        elif part.startswith("-") and _attribute_key_ok(part[1:]):
            if part[1:] in keys:
                keys.remove(part[1:])
        elif not _attribute_key_ok(part.lstrip("-")):
            problems.append(f"{part!r} is not an attribute key")
        elif part.startswith(PROTECTED_PREFIX):
            problems.append(f"{part!r}: the {PROTECTED_PREFIX}* enrichment is never redacted")
        elif part not in keys:
            keys.append(part)
    if problems:
        raise ValueError("; ".join(problems) + "; expected e.g. default,http.request.header.x-token or none")
    return tuple(keys)


def _attribute_key_ok(key: str) -> bool:
    return bool(key) and not any(c.isspace() for c in key)


def parse_patterns(value: str) -> tuple[tuple[str, str], ...]:
    """``default``, ``none``, or a JSON object added to the defaults: ``{"stripe": "sk_live_\\\\w+", "bearer": null}``.

    A name mapped to null removes that default pattern. Every problem is reported at once.
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
    problems = []
    for name, regex in extra.items():
        if regex is None:
            patterns.pop(name, None)
            continue
        problem = _pattern_problem(name, regex)
        if problem:
            problems.append(f"{name}: {problem}")
        else:
            patterns[name] = regex
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(patterns.items())


def _pattern_problem(name: str, regex: object) -> str:
    """Why a (name, regex) pair cannot be a pattern, or ''."""
    if not _NAME.fullmatch(name) or name == ATTRIBUTE_RULE:
        return f"a name is letters, digits, '_', '.', '-' (not {ATTRIBUTE_RULE!r}): it is the metric's rule label"
    if not isinstance(regex, str):
        return "expected a regular expression string or null"
    try:
        compiled = re.compile(regex)
    except re.error as e:
        return f"invalid regular expression {regex!r}: {e}"
    if compiled.search("") is not None:
        return f"{regex!r} matches the empty string; it must match the secret itself, e.g. sk_live_[0-9A-Za-z]{{8,}}"
    if compiled.search(MARKER) is not None:
        return f"{regex!r} matches the marker {MARKER} itself, so every pass would replace it again"
    return ""


# --- the redactor ----------------------------------------------------------------------------------------

class Redactor:
    """Compiled once from the configured keys and patterns; immutable, so one serves every request."""

    def __init__(self, attribute_keys: Iterable[str] = DEFAULT_ATTRIBUTES, patterns=DEFAULT_PATTERNS):
        self.attribute_keys = frozenset(attribute_keys)
        self.patterns = tuple((name, re.compile(regex)) for name, regex in patterns)
        # (name, pattern, literal every match contains or None, has a ``secret`` group), in order.
        self._rules = tuple(
            (name, pattern, required_literal(pattern.pattern), "secret" in pattern.groupindex)
            for name, pattern in self.patterns
        )
        # What needed() looks for in a request's bytes; a pattern without a literal: look at everything.
        self._always = any(literal is None for _, _, literal, _ in self._rules)
        literals = [literal.encode() for _, _, literal, _ in self._rules if literal is not None]
        self._probes = _probes(literals, sorted(k.encode() for k in self.attribute_keys))
        # Byte strings a record holding something to redact must contain (None: any record may).
        self.literals: tuple[bytes, ...] | None = (
            None if self._always else tuple(literals) + tuple(k.encode() for k in self.attribute_keys)
        )

    @property
    def active(self) -> bool:
        return bool(self.attribute_keys or self._rules)

    def needed(self, payload: bytes) -> bool:
        """Whether the protobuf bytes of a request (or record) may hold something to redact.

        False is a proof; True means "walk it". Cost: one pass over ``payload`` per watched literal.
        """
        if self._always:
            return True
        for probe, confirms in self._probes:
            if probe(payload) is not None:
                if not confirms:
                    return True
                for confirm in confirms:
                    if confirm(payload) is not None:
                        return True
        return False

    def redact_request(self, request, counts: dict[str, int]) -> None:
        """Redact resource attributes and every record (attributes and body) of a logs request in place.

        A record whose own bytes hold nothing to redact is skipped without being walked; once most
        records turn out to need walking (every access log has a Cookie header), the rest are
        walked without the check, which would only add its cost.
        """
        check = not self._always
        hits = misses = 0
        for resource_logs in request.resource_logs:
            self._attributes(resource_logs.resource.attributes, counts)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    if check:
                        if not self.needed(record.SerializeToString()):
                            misses += 1
                            continue
                        hits += 1
                        check = hits <= misses + 8
                    self._record(record, counts)

    def redact(self, record, counts: dict[str, int] | None = None) -> dict[str, int]:
        """Redact one LogRecord in place; ``counts`` (returned) gains the replacements per rule."""
        if counts is None:
            counts = {}
        if self.active and (self._always or self.needed(record.SerializeToString())):
            self._record(record, counts)
        return counts

    def redact_record_bytes(self, record: bytes, counts: dict[str, int]) -> bytes:
        """A serialized LogRecord with its secrets redacted; ``record`` itself if it has none."""
        if not self.active or not (self._always or self.needed(record)):
            return record
        parsed = LogRecord.FromString(record)
        before = sum(counts.values())
        self._record(parsed, counts)
        return parsed.SerializeToString() if sum(counts.values()) != before else record

    def redact_resource_bytes(self, resource: bytes, counts: dict[str, int]) -> bytes:
        """A serialized Resource with its secret attributes redacted; ``resource`` itself if it has none."""
        if not self.active or not (self._always or self.needed(resource)):
            return resource
        parsed = Resource.FromString(resource)
        before = sum(counts.values())
        self._attributes(parsed.attributes, counts)
        return parsed.SerializeToString() if sum(counts.values()) != before else resource

    def text(self, text: str, counts: dict[str, int]) -> str:
        """``text`` with every pattern's secret replaced (the same object when nothing changed)."""
        for name, pattern, literal, has_secret in self._rules:
            if literal is not None and literal not in text:
                continue
            replaced, found = _substitute(pattern, has_secret, text)
            if found:
                counts[name] = counts.get(name, 0) + found
                text = replaced
        return text

    # --- walking ---------------------------------------------------------------------------------------

    def _record(self, record, counts: dict[str, int]) -> None:
        self._attributes(record.attributes, counts)
        if self._rules and record.HasField("body"):
            self._value(record.body, counts)

    def _attributes(self, attributes, counts: dict[str, int]) -> None:
        keys = self.attribute_keys
        for kv in attributes:
            key = kv.key
            if key.startswith(PROTECTED_PREFIX):
                continue
            if key in keys:
                if _replace_all(kv.value):
                    counts[ATTRIBUTE_RULE] = counts.get(ATTRIBUTE_RULE, 0) + 1
            elif self._rules:
                value = kv.value
                string = value.string_value  # most attributes are strings: no walk for them
                if string:
                    redacted = self.text(string, counts)
                    if redacted is not string:
                        value.string_value = redacted
                elif value.WhichOneof("value") in _CONTAINERS:
                    self._value(value, counts)

    def _value(self, value: AnyValue, counts: dict[str, int]) -> None:
        """Apply the patterns to every string in ``value``, at any depth (no recursion: no depth limit).

        The work is linear in the value's size, which the per-record size limit bounds.
        """
        stack = [value]
        while stack:
            value = stack.pop()
            kind = value.WhichOneof("value")
            if kind == "string_value":
                text = value.string_value
                redacted = self.text(text, counts)
                if redacted is not text:
                    value.string_value = redacted
            elif kind == "array_value":
                stack.extend(value.array_value.values)
            elif kind == "kvlist_value":
                # A map entry under a watched key (a structured body) is replaced whole, like an attribute.
                for kv in value.kvlist_value.values:
                    if kv.key in self.attribute_keys:
                        if _replace_all(kv.value):
                            counts[ATTRIBUTE_RULE] = counts.get(ATTRIBUTE_RULE, 0) + 1
                    else:
                        stack.append(kv.value)


def _substitute(pattern: re.Pattern[str], has_secret: bool, text: str) -> tuple[str, int]:
    """``text`` with each match's secret (or the whole match) replaced, and how many were."""
    found = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal found
        whole = match.group(0)
        if has_secret:
            start, end = match.span("secret")
            if start >= 0:  # the group took part: only it goes
                if start == end or match.group("secret") == MARKER:
                    return whole
                found += 1
                base = match.start()
                return whole[: start - base] + MARKER + whole[end - base :]
        if not whole or whole == MARKER:  # an empty match has nothing to hide; the marker is done
            return whole
        found += 1
        return MARKER

    replaced = pattern.sub(replace, text)
    return replaced, found


def _replace_all(value: AnyValue) -> bool:
    """Replace every non-empty leaf of a credential attribute's value by the marker; whether any changed.

    Arrays and maps keep their shape; an empty string or bytes value and an unset value have
    nothing to hide and stay; a value that already is the marker is not a new redaction.
    """
    changed = False
    stack = [value]
    while stack:
        value = stack.pop()
        kind = value.WhichOneof("value")
        if kind == "array_value":
            stack.extend(value.array_value.values)
        elif kind == "kvlist_value":
            stack.extend(kv.value for kv in value.kvlist_value.values)
        elif kind == "string_value":
            if value.string_value and value.string_value != MARKER:
                value.string_value = MARKER
                changed = True
        elif kind == "bytes_value":
            if value.bytes_value:
                value.string_value = MARKER
                changed = True
        elif kind is not None:  # int, double, bool: a number can be a key too
            value.string_value = MARKER
            changed = True
    return changed


# --- the byte prefilter ---------------------------------------------------------------------------------

_MIN_SHARED = 4  # literals sharing this many bytes are probed once, by what they share
_Search = Callable[[bytes], "re.Match[bytes] | None"]


def _probes(literals: list[bytes], keys: list[bytes]) -> tuple[tuple[_Search, tuple[_Search, ...]], ...]:
    """What needed() searches: (probe, confirmations) pairs, every one a plain byte string.

    Each scan of a request costs about the same whatever it looks for, so literals that share a
    part are scanned once for that part (``Bearer`` and ``bearer``: ``earer``; the six default keys:
    ``.header.``), and only a hit is confirmed with the literals themselves. Sound: each literal
    contains its probe, so a probe's absence proves the literals' absence. Searched with ``re``
    (a literal prefix search in C), measured faster than ``in`` on these short needles.
    """
    groups: list[tuple[bytes, list[bytes]]] = [(lit, [lit]) for lit in dict.fromkeys(literals)]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                shared = _longest_common(groups[i][0], groups[j][0])
                if len(shared) >= _MIN_SHARED:
                    groups[i] = (shared, groups[i][1] + groups[j][1])
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    probes = [(_search(probe), tuple(_search(lit) for lit in members if lit != probe)) for probe, members in groups]
    if keys:
        # The keys in one alternation (the regex parser factors out their common prefix).
        every_key = re.compile(b"|".join(re.escape(k) for k in keys)).search
        shared = keys[0]
        for key in keys[1:]:
            shared = _longest_common(shared, key)
        if len(keys) > 1 and len(shared) >= _MIN_SHARED:
            probes.append((_search(shared), (every_key,)))
        else:
            probes.append((every_key, ()))
    return tuple(probes)


def _search(literal: bytes) -> _Search:
    return re.compile(re.escape(literal)).search


def _longest_common(a: bytes, b: bytes) -> bytes:
    """The longest byte string both contain (short inputs: a plain quadratic scan)."""
    best = b""
    for start in range(len(a)):
        for end in range(start + len(best) + 1, len(a) + 1):
            if a[start:end] in b:
                best = a[start:end]
            else:
                break
    return best


# --- required literals -----------------------------------------------------------------------------------

def required_literal(regex: str) -> str | None:
    """The longest run of characters that every match of ``regex`` contains, or None.

    Found from the regex's parse tree, conservatively: a run ends at anything that is not a plain
    character (class, alternation, optional part, lookaround, case-insensitive scope); a repetition
    that must happen at least once contributes its own runs. With (?i) for the whole pattern there
    is none. Any surprise from the parser also gives None: then the pattern is simply always run.
    """
    if _sre_parser is None:
        return None
    try:
        parsed = _sre_parser.parse(regex, 0)
        if parsed.state.flags & re.IGNORECASE:
            return None
        runs = _literal_runs(parsed.data)
        best = max(runs, key=len, default="")
        best.encode()  # a lone surrogate cannot appear in UTF-8 strings: no literal then
    except Exception:  # noqa: BLE001 - the parser is private; a surprise only costs speed
        return None
    return best or None


def _literal_runs(items) -> list[str]:
    c = _sre_constants
    runs: list[str] = []
    current: list[str] = []

    def end() -> None:
        if current:
            runs.append("".join(current))
            current.clear()

    def walk(items) -> None:
        for op, av in items:
            if op is c.LITERAL:
                current.append(chr(av))
            elif op is c.SUBPATTERN and not (av[1] | av[2]) & re.IGNORECASE:
                walk(av[3].data)  # a group is matched in place: its characters continue the run
            else:
                end()
                if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
                    runs.extend(_literal_runs(av[2].data))
                elif op is c.ATOMIC_GROUP:
                    runs.extend(_literal_runs(av.data))

    walk(items)
    end()
    return runs
