"""Downgrade rules: which errors are known noise when a monitor caused them. Pure: no I/O per record.

A rule names conditions; all the conditions it gives must hold (within one condition, any listed
value will do). Where each condition looks:

- ``exception_type``: ``exception.type`` / ``error.type`` attributes; ``type`` or ``name`` keys in a
  map body or JSON-text body (at any depth); or as a whole word in free text (a plain-text body,
  ``exception.message``, ``msg``/``message``/``stack`` values).
- ``code``: ``code`` / ``error.code`` / ``exception.code`` / ``err.code`` attributes; ``code`` keys
  in a map or JSON-text body; or as a whole word in free text.
- ``body``: regular expressions searched in a string body, or in every string value of a map body.
- ``attributes``: attribute key -> regular expression its string value must contain.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from .. import _wire
from ..data_files import entry_name, parse_named
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_RULE_KEYS = {
    "name", "description", "reference", "min_severity_number", "exception_type", "code", "body", "attributes",
}
_FILE_KEYS = {"rules", "disable_builtin"}
TYPE_ATTRIBUTES = frozenset({"exception.type", "error.type"})
CODE_ATTRIBUTES = frozenset({"code", "error.code", "exception.code", "err.code"})
TEXT_ATTRIBUTES = frozenset({"exception.message"})
_TYPE_KEYS = frozenset({"type", "name"})
_TEXT_KEYS = frozenset({"message", "msg", "stack", "err", "error"})
_MAX_DEPTH = 6
_MAX_NODES = 500


class RulesError(ValueError):
    """A rules file that cannot be used, with the file and rule named."""


@dataclass(frozen=True)
class Rule:
    name: str
    min_severity_number: int
    exception_types: frozenset[str]
    codes: frozenset[str]
    body: tuple[re.Pattern[str], ...]
    attributes: tuple[tuple[str, re.Pattern[str]], ...]
    type_words: tuple[str, ...]  # exception types and codes, searched as whole words in free text
    code_words: tuple[str, ...]

    def matches(self, facts: Facts) -> bool:
        if self.exception_types and not (
            self.exception_types & facts.types or found_word(self.type_words, facts.texts)
        ):
            return False
        if self.codes and not (self.codes & facts.codes or found_word(self.code_words, facts.texts)):
            return False
        if self.body and not all(_found(p, facts.body_strings) for p in self.body):
            return False
        for key, pattern in self.attributes:
            value = facts.attributes.get(key)
            if value is None or not pattern.search(value):
                return False
        return True


def _found(pattern: re.Pattern[str], texts: list[str]) -> bool:
    return any(pattern.search(t) for t in texts)


def found_word(words: tuple[str, ...], texts: list[str]) -> bool:
    """Whether one of ``words`` occurs in one of ``texts`` as a whole word: not inside a longer word,
    and not right after a dot (``AccessTokenError`` but not ``NotAccessTokenError``, ``errors.AccessTokenError``
    or ``AccessTokenError2``). A word character is what ``\\w`` matches: ``str.isalnum()`` or ``_``.

    What ``(?<![\\w.])(?:word|...)(?!\\w)`` finds, without the regex: ``re`` tries that pattern at every
    position of the text (~7 µs for a stack trace), where ``str.find`` skips to the candidates.
    """
    for text in texts:
        for word in words:
            at = text.find(word)
            while at >= 0:
                end = at + len(word)
                if (at == 0 or not (text[at - 1].isalnum() or text[at - 1] in "_.")) and (
                    end == len(text) or not (text[end].isalnum() or text[end] == "_")
                ):
                    return True
                at = text.find(word, at + 1)
    return False


class Facts:
    """What rules look at, gathered once per candidate record (severity high enough for some rule)."""

    __slots__ = ("types", "codes", "texts", "body_strings", "attributes")

    def __init__(self) -> None:
        self.types: set[str] = set()
        self.codes: set[str] = set()
        self.texts: list[str] = []
        self.body_strings: list[str] = []
        self.attributes: dict[str, str] = {}


class RuleSet:
    def __init__(self, rules: tuple[Rule, ...]):
        self.rules = rules
        self.min_severity_number = min((r.min_severity_number for r in rules), default=1 << 30)
        self._wanted_attributes = frozenset(k for r in rules for k, _ in r.attributes)
        # Per rule, groups of byte strings: a record the rule matches contains one of each group.
        self._needles = tuple(_needles(rule) for rule in rules)
        # The attribute keys rules read: a record with none of them is matched on its body alone.
        read = TYPE_ATTRIBUTES | CODE_ATTRIBUTES | TEXT_ATTRIBUTES | self._wanted_attributes
        self._fact_keys = tuple(key.encode() for key in sorted(read))

    def may_match(self, payload: bytes, start: int, end: int) -> bool:
        """False only if no rule can match the serialized record ``payload[start:end]``: a cheap
        look at its bytes before it is decoded (most warnings and errors are not known noise)."""
        return bool(self.may_match_among(payload, array("I", (start, end)), [0]))

    def may_match_among(self, payload: bytes, spans, records: list[int]) -> list[int]:
        """Those of ``records`` (``spans``: uint32 start, end of each record in ``payload``) that
        ``may_match``, looked at in one C pass. A record with a backslash always may: a JSON text
        body may spell any value with escapes."""
        return _wire.may_match(payload, spans, records, self._needles)

    def match(self, record, severity: int) -> Rule | None:
        """The first rule that matches a LogRecord whose (effective) severity number is ``severity``."""
        if severity < self.min_severity_number:
            return None
        return self._first_match(gather_facts(record, self._wanted_attributes), severity)

    def record_text(self, record: bytes) -> tuple[int, str, str] | None:
        """(severity_number, severity_text, body) of a serialized LogRecord whose body is one string
        and whose attributes hold nothing a rule reads (then ``match_text`` decides it without
        decoding it); None for any other record."""
        return _wire.record_text(record, self._fact_keys)

    def match_text(self, body: str, severity: int) -> Rule | None:
        """``match`` for a record ``record_text`` read: its body is the string ``body``."""
        if severity < self.min_severity_number:
            return None
        facts = Facts()
        _string_body_facts(facts, body)
        return self._first_match(facts, severity)

    def _first_match(self, facts: Facts, severity: int) -> Rule | None:
        for rule in self.rules:
            if severity >= rule.min_severity_number and rule.matches(facts):
                return rule
        return None


_INT = re.compile(r"-?[0-9]+")


def _needles(rule: Rule) -> tuple[tuple[bytes, ...], ...]:
    """Byte strings a record the rule matches must contain: for its exception types, one of them;
    for its codes, one of them. Every fact is a string of the record, stored as its UTF-8 bytes,
    except an int attribute (read as its digits: a numeric code gives no needle) and text a JSON
    body escapes (``may_match`` looks for a backslash first). Patterns give none."""
    groups = []
    for values in (rule.exception_types, rule.codes):
        if values and not any(_INT.fullmatch(value) for value in values):
            groups.append(tuple(sorted(value.encode() for value in values)))
    return tuple(groups)


def gather_facts(record, wanted_attributes: frozenset[str] = frozenset()) -> Facts:
    facts = Facts()
    for kv in record.attributes:
        key = kv.key
        if key in TYPE_ATTRIBUTES or key in CODE_ATTRIBUTES or key in TEXT_ATTRIBUTES or key in wanted_attributes:
            value = _scalar_string(kv.value)
            if value is None:
                continue
            if key in TYPE_ATTRIBUTES:
                facts.types.add(value)
            elif key in CODE_ATTRIBUTES:
                facts.codes.add(value)
            elif key in TEXT_ATTRIBUTES:
                facts.texts.append(value)
            if key in wanted_attributes:
                facts.attributes[key] = value
    body = record.body
    kind = body.WhichOneof("value")
    if kind == "string_value":
        _string_body_facts(facts, body.string_value)
    elif kind == "kvlist_value":
        _walk(_kvlist_to_dict(body.kvlist_value, 0), facts, 0, [0])
    return facts


def _string_body_facts(facts: Facts, text: str) -> None:
    facts.body_strings.append(text)
    parsed = _json_object(text)
    if parsed is None:
        facts.texts.append(text)
    else:
        _walk(parsed, facts, 0, [0])


def _scalar_string(value: AnyValue) -> str | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    return None


def _json_object(text: str) -> Any:
    stripped = text.lstrip()
    if not stripped.startswith("{"):
        return None
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return None


def _kvlist_to_dict(kvlist, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvlist.values[:_MAX_NODES]:
        out[kv.key] = _any_to_python(kv.value, depth + 1)
    return out


def _any_to_python(value: AnyValue, depth: int) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if depth > _MAX_DEPTH:
        return None
    if kind == "kvlist_value":
        return _kvlist_to_dict(value.kvlist_value, depth)
    if kind == "array_value":
        return [_any_to_python(v, depth + 1) for v in value.array_value.values[:_MAX_NODES]]
    return None


def _walk(node: Any, facts: Facts, depth: int, budget: list[int]) -> None:
    """Collect type/code/text values from a decoded body, bounded in depth and size."""
    budget[0] += 1
    if depth > _MAX_DEPTH or budget[0] > _MAX_NODES:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                facts.body_strings.append(value)
                if key in _TYPE_KEYS:
                    facts.types.add(value)
                elif key == "code":
                    facts.codes.add(value)
                elif key in _TEXT_KEYS:
                    facts.texts.append(value)
            elif isinstance(value, (dict, list)):
                _walk(value, facts, depth + 1, budget)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str):
                facts.body_strings.append(item)
            elif isinstance(item, (dict, list)):
                _walk(item, facts, depth + 1, budget)


# --- loading -------------------------------------------------------------------------------------------------

def builtin_rules() -> tuple[Rule, ...]:
    text = resources.files(__package__).joinpath("builtin_rules.json").read_bytes()
    rules, _ = parse_rules(text, "built-in builtin_rules.json")
    return rules


def load_rule_set(path: str = "") -> RuleSet:
    """Built-in rules minus those the file switches off, then the file's own rules."""
    builtin = builtin_rules()
    if not path:
        return RuleSet(builtin)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise RulesError(f"{path}: cannot read: {e.strerror}") from None
    extra, disabled = parse_rules(text, path)
    names = {r.name for r in builtin}
    unknown = disabled - names
    if unknown:
        raise RulesError(f"{path}: disable_builtin names no built-in rule: {sorted(unknown)}; built-ins: {sorted(names)}")
    clash = {r.name for r in extra} & (names - disabled)
    if clash:
        raise RulesError(f"{path}: rule name(s) {sorted(clash)} clash with built-in rules; rename them or disable the built-in")
    return RuleSet(tuple(r for r in builtin if r.name not in disabled) + extra)


def parse_rules(text: bytes, origin: str) -> tuple[tuple[Rule, ...], frozenset[str]]:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise RulesError(f"{origin}: not valid JSON: {e}") from None
    if not isinstance(document, dict) or set(document) - _FILE_KEYS:
        raise RulesError(f'{origin}: expected an object with keys {sorted(_FILE_KEYS)}')
    entries = document.get("rules", [])
    disabled = document.get("disable_builtin", [])
    if not isinstance(entries, list):
        raise RulesError(f"{origin}: 'rules' must be a list")
    if not isinstance(disabled, list) or not all(isinstance(n, str) for n in disabled):
        raise RulesError(f"{origin}: 'disable_builtin' must be a list of rule names")
    rules = parse_named(entries, _rule, lambda i: f"{origin}: rules[{i}]", RulesError)
    return rules, frozenset(disabled)


def _strings(entry: dict, key: str) -> list[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise RulesError(f"'{key}' must be a list of non-empty strings")
    return value


def _regex(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise RulesError(f"{where}: invalid regular expression {pattern!r}: {e}") from None


def _rule(entry: Any) -> Rule:
    name = entry_name(entry, _RULE_KEYS, RulesError)
    severity = entry.get("min_severity_number", 13)
    if not isinstance(severity, int) or not 1 <= severity <= 24:
        raise RulesError(f"{name}: 'min_severity_number' must be 1..24 (13 = WARN, 17 = ERROR)")
    types = _strings(entry, "exception_type")
    codes = _strings(entry, "code")
    body = tuple(_regex(p, f"{name}: body") for p in _strings(entry, "body"))
    attributes = entry.get("attributes", {})
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise RulesError(f"{name}: 'attributes' must map attribute keys to regular expressions")
    compiled_attributes = tuple((k, _regex(v, f"{name}: attributes.{k}")) for k, v in attributes.items())
    if not (types or codes or body or compiled_attributes):
        raise RulesError(f"{name}: give at least one condition (exception_type, code, body, attributes)")
    return Rule(
        name=name,
        min_severity_number=severity,
        exception_types=frozenset(types),
        codes=frozenset(codes),
        body=body,
        attributes=compiled_attributes,
        type_words=tuple(types),
        code_words=tuple(codes),
    )
