"""OTLP/JSON <-> protobuf messages, by the OTLP rules protobuf's own JSON mapping does not follow.

protobuf's ``json_format`` already does lowerCamelCase keys (and accepts the proto names), int64 as
strings or numbers, integer or named enums, and ignoring unknown fields. What OTLP changes: trace
and span ids are hex, not base64. Only those fields are rewritten here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

# Field names (JSON and proto spelling) that OTLP encodes as hex instead of base64.
_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_ID_LENGTHS = {"traceId": 16, "trace_id": 16}  # everything else: 8 bytes
# Deeper than protobuf's own nesting limit (100), so that limit is the one that applies to both encodings.
_MAX_DEPTH = 256

M = TypeVar("M", bound=Message)

# What orjson's document costs in memory: per byte of JSON, and per structural character. Fitted
# (least squares of the relative error) to tracemalloc's peak over 19 shapes of document, from arrays
# of ``{}`` or ``0`` to OTLP attributes and nested lists: every shape's estimate was within 0.73–1.28 of
# its peak. Tiny objects cost up to ~40 times their JSON; this workload's OTLP/JSON requests 18 times.
_COST_PER_BYTE = 14
_COST_PER_CHARACTER = ((b"{", 78), (b"[", 59), (b'"', 20), (b",", 4))
# No body can be estimated at more than this per byte (a body of ``{`` alone); below it, no need to count.
MAX_COST_PER_BYTE = _COST_PER_BYTE + max(cost for _, cost in _COST_PER_CHARACTER)


class JsonError(ValueError):
    """An OTLP/JSON payload that cannot be decoded; the message says what is wrong."""


def decode(payload: bytes, message: M, check: Callable[[dict], None] | None = None) -> M:
    """Fill ``message`` from an OTLP/JSON payload. ``check``, if given, sees the parsed document
    first and may refuse it (by raising): building the messages (``json_format``) is pure Python."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise JsonError(f"malformed JSON: {e}") from None
    if not isinstance(document, dict):
        raise JsonError("expected a JSON object at the top level")
    if check is not None:
        check(document)
    _ids_hex_to_base64(document, 0)
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise JsonError(f"invalid OTLP/JSON: {e}") from None
    return message


def parsed_size(payload: bytes) -> int:
    """About what ``orjson.loads(payload)`` would take in memory, in bytes, without parsing it."""
    return _COST_PER_BYTE * len(payload) + sum(cost * payload.count(character) for character, cost in _COST_PER_CHARACTER)


def encode(message: Message) -> bytes:
    """An OTLP/JSON document for ``message`` (integer enums, hex ids), as one line."""
    document = json_format.MessageToDict(message, use_integers_for_enums=True)
    _ids_base64_to_hex(document)
    return orjson.dumps(document)


def to_dict(message: Message) -> dict[str, Any]:
    """The OTLP/JSON form of ``message`` as a dict (for tests and the explain command)."""
    document = json_format.MessageToDict(message, use_integers_for_enums=True)
    _ids_base64_to_hex(document)
    return document


def _ids_hex_to_base64(node: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise JsonError(f"nesting deeper than {_MAX_DEPTH} levels")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = _hex_to_base64(key, value)
            elif isinstance(value, (dict, list)):
                _ids_hex_to_base64(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _ids_hex_to_base64(item, depth + 1)


def _hex_to_base64(key: str, value: str) -> str:
    if value == "":
        return ""
    expected = _ID_LENGTHS.get(key, 8)
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise JsonError(f"{key}: expected {expected * 2} hex digits, got {value[:40]!r}") from None
    if len(raw) != expected:
        raise JsonError(f"{key}: expected {expected * 2} hex digits, got {len(value)}")
    return base64.b64encode(raw).decode("ascii")


def _ids_base64_to_hex(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64decode(value).hex()
                except binascii.Error:  # pragma: no cover - MessageToDict always writes valid base64
                    pass
            elif isinstance(value, (dict, list)):
                _ids_base64_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _ids_base64_to_hex(item)
