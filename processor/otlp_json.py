"""OTLP/JSON <-> protobuf messages, by the OTLP rules protobuf's own JSON mapping does not follow.

protobuf's ``json_format`` already does lowerCamelCase keys (and accepts the proto names), int64 as
strings or numbers, integer or named enums, and ignoring unknown fields. What OTLP changes: trace
and span ids are hex, not base64. Only those fields are rewritten here. json_format is slow, so
documents as exporters write them are decoded by a fast path first (below); it declines the rest.
"""

from __future__ import annotations

import base64
import binascii
import gc
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
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
    first and may refuse it (by raising): building the messages is Python."""
    # The cyclic collector would run hundreds of times while the document's millions of containers
    # are made, each time walking all those made so far, though none of them can form a cycle: a
    # 15 MB request decoded in 1.28 CPU-s with it, 0.76 without. (Process-wide, for this call only.)
    # It comes back on only once the document is gone: with it still alive, the next allocation in
    # any thread (the event loop's) could make it walk them all, holding the GIL (0.1 s for the
    # 160,000 containers of a 16,000-record request; more for larger ones).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _decode(payload, message, check)
    finally:
        if collecting:
            gc.enable()


def _decode(payload: bytes, message: M, check: Callable[[dict], None] | None) -> M:
    try:
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            raise JsonError(f"malformed JSON: {e}") from None
        if not isinstance(document, dict):
            raise JsonError("expected a JSON object at the top level")
        if check is not None:
            check(document)
        if _fast(document, message):
            return message
        return _by_json_format(document, message)
    except BaseException as refused:
        # Its traceback keeps the frames that saw the document (the check's): their locals go.
        traceback.clear_frames(refused.__traceback__)
        raise
    finally:
        document = None  # this frame's own, which the traceback keeps too


def _by_json_format(document: dict, message: M) -> M:
    _ids_hex_to_base64(document, 0)
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise JsonError(f"invalid OTLP/JSON: {e}") from None
    return message


def parsed_size(payload: bytes) -> int:
    """About what ``orjson.loads(payload)`` would take in memory, in bytes, without parsing it."""
    counted = sum(cost * payload.count(character) for character, cost in _COST_PER_CHARACTER)
    return _COST_PER_BYTE * len(payload) + counted


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

# --- the fast path: OTLP/JSON documents as OTLP exporters write them -----------------------------------
#
# json_format is generic, reflective pure Python: ~0.3 ms per record of the bench's workload (its
# ~8 attributes each), 85 % of decoding an OTLP/JSON request. The documents exporters send use one
# spelling (lowerCamelCase) and plain types, so they are filled here from tables made once per message
# type from its descriptor, with upb doing the setting. Anything else (snake_case names, null, enum
# names, base64 bytes, a value of an unexpected type, out of range, unknown fields) raises _Unhandled,
# and json_format decodes the whole document as before: it has the last word and words the errors.


class _Unhandled(Exception):
    """A document the fast path does not model."""


# What a setter can raise on a value the fast path does not take: upb's TypeError and ValueError
# (wrong type, out of range, a string that is not valid UTF-8), int()'s ValueError.
_NOT_FAST = (_Unhandled, TypeError, ValueError, OverflowError, RecursionError)
_FAST_MAX_DEPTH = 64  # deeper documents go to json_format, which applies protobuf's own limit
_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_EXACT_TYPES = {FieldDescriptor.TYPE_STRING: str, FieldDescriptor.TYPE_BOOL: bool, FieldDescriptor.TYPE_ENUM: int}
_MAX_EXACT_FLOAT = 1 << 53
_KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"


class _Table(dict):
    """JSON name -> setter for a message type's fields the fast path takes."""

    one_key = False  # AnyValue: its fields are one oneof, so a second key is json_format's to refuse


def _fill(message: Message, document: dict, table: _Table, depth: int) -> None:
    if depth > _FAST_MAX_DEPTH or (table.one_key and len(document) > 1):
        raise _Unhandled
    for key, value in document.items():
        table[key](message, value, depth)  # KeyError: an unknown field


def _setter(field: FieldDescriptor, tables: dict[str, _Table]) -> Callable[[Message, Any, int], None] | None:
    """How the fast path sets ``field`` from a JSON value, or None if it leaves it to json_format."""
    name = field.name
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return None
    # is_repeated since protobuf 6 (label is gone); label before it
    if getattr(field, "is_repeated", None) or getattr(field, "label", None) == FieldDescriptor.LABEL_REPEATED:
        if field.message_type is None:
            return None
        table = _table(field.message_type, tables)

        def repeated(message: Message, value: Any, depth: int) -> None:
            if type(value) is not list:
                raise _Unhandled
            add = getattr(message, name).add
            for item in value:
                if type(item) is not dict:
                    raise _Unhandled
                _fill(add(), item, table, depth + 1)

        def key_values(message: Message, value: Any, depth: int) -> None:
            if type(value) is not list:
                raise _Unhandled
            add = getattr(message, name).add
            for item in value:
                # Most attributes are a key and a string: set in one step, not three calls of _fill.
                if type(item) is dict and len(item) == 2 and type(any_value := item.get("value")) is dict:
                    key, string = item.get("key"), any_value.get("stringValue")
                    if type(key) is str and type(string) is str and len(any_value) == 1:
                        add(key=key).value.string_value = string
                        continue
                if type(item) is not dict:
                    raise _Unhandled
                _fill(add(), item, table, depth + 1)

        return key_values if field.message_type.full_name == _KEY_VALUE else repeated
    if field.message_type is not None:
        table = _table(field.message_type, tables)

        def message_field(message: Message, value: Any, depth: int) -> None:
            if type(value) is not dict:
                raise _Unhandled
            child = getattr(message, name)
            child.SetInParent()  # as json_format does: an empty object is a present message
            _fill(child, value, table, depth + 1)

        return message_field
    kind = field.type
    exact = _EXACT_TYPES.get(kind)  # enums: numbers only, names go to json_format
    if exact is not None:

        def typed(message: Message, value: Any, depth: int) -> None:
            if type(value) is not exact:
                raise _Unhandled
            setattr(message, name, value)  # ValueError when out of the field's range

        return typed
    if kind in _INTEGERS:

        def integer(message: Message, value: Any, depth: int) -> None:
            if type(value) is str and value.isascii() and value.isdigit():
                value = int(value)  # int64s are often strings; json_format reads digits the same way
            elif type(value) is not int:
                raise _Unhandled
            setattr(message, name, value)  # ValueError when out of the field's range

        return integer
    if kind == FieldDescriptor.TYPE_DOUBLE:

        def double(message: Message, value: Any, depth: int) -> None:
            if type(value) is int and -_MAX_EXACT_FLOAT <= value <= _MAX_EXACT_FLOAT:
                value = float(value)
            elif type(value) is not float:  # "NaN", "Infinity" go to json_format
                raise _Unhandled
            setattr(message, name, value)

        return double
    if kind == FieldDescriptor.TYPE_BYTES and field.json_name in _ID_FIELDS:
        length = _ID_LENGTHS.get(field.json_name, 8)

        def hex_id(message: Message, value: Any, depth: int) -> None:
            if type(value) is not str or len(value) != 2 * length:  # "" and wrong lengths: json_format
                raise _Unhandled
            raw = bytes.fromhex(value)
            if len(raw) != length:
                raise _Unhandled
            setattr(message, name, raw)

        return hex_id
    return None  # base64 bytes, floats: json_format


def _table(descriptor, tables: dict[str, _Table]) -> _Table:
    """A message type's table, made once (and before its fields', which may lead back to it)."""
    table = tables.get(descriptor.full_name)
    if table is not None:
        return table
    table = tables[descriptor.full_name] = _Table()
    oneofs = descriptor.oneofs
    if len(oneofs) == 1 and len(oneofs[0].fields) == len(descriptor.fields):
        table.one_key = True
    elif oneofs:
        return table  # empty: a message with other oneofs (or proto3 optional) goes to json_format
    for field in descriptor.fields:
        setter = _setter(field, tables)
        if setter is not None:
            table[field.json_name] = setter
    return table


_TABLES: dict[str, _Table] = {}


def _fast(document: dict, message: Message) -> bool:
    """Fill ``message`` from ``document`` if the fast path models all of it; else leave it empty."""
    try:
        _fill(message, document, _table(message.DESCRIPTOR, _TABLES), 0)
        return True
    except (KeyError, *_NOT_FAST):
        message.Clear()
        return False
