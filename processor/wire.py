"""The serialized form of a logs request, worked on without re-encoding it.

Decoding a request into messages and encoding it again costs more than everything else the
pipeline does; most records need only a few prepared bytes appended. So:

- ``RequestView`` reads the same bytes as an ``ExportLogsServiceRequest`` but keeps every log
  record (and resource, scope) as its serialized bytes. Appending a record's enrichment is then a
  bytes concatenation (protobuf merges a repeated field's later entries into the same message),
  and upb writes the new length prefixes when the view is serialized.
- ``Scanner`` finds, in one pass over all records' bytes (Hyperscan, a SIMD multi-literal
  search), which records contain any byte string the pipeline must look at closer: an evidence
  attribute key, a health path, a secret's literal. Only those records' attributes are read.

A resource or scope is a repeated field of the view: protobuf merges a message field that occurs
twice, so every occurrence is kept, in order, for the backend to merge as the decoder did. Views
use proto2 syntax so that a present-but-empty schema URL stays present.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

import hyperscan
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _view_classes():
    file = descriptor_pb2.FileDescriptorProto(name="otlp_triage/wire_view.proto", package="otlp_triage.wire", syntax="proto2")

    def message(name: str, fields) -> None:
        m = file.message_type.add(name=name)
        for number, field_name, kind, repeated, type_name in fields:
            f = m.field.add(name=field_name, number=number, type=kind)
            f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if type_name:
                f.type_name = f".otlp_triage.wire.{type_name}"

    # Field numbers as in opentelemetry/proto/logs/v1/logs.proto.
    message("RequestView", [(1, "resource_logs", _F.TYPE_MESSAGE, True, "ResourceLogsView")])
    message(
        "ResourceLogsView",
        [
            (1, "resource", _F.TYPE_BYTES, True, None),
            (2, "scope_logs", _F.TYPE_MESSAGE, True, "ScopeLogsView"),
            (3, "schema_url", _F.TYPE_BYTES, False, None),
        ],
    )
    message(
        "ScopeLogsView",
        [
            (1, "scope", _F.TYPE_BYTES, True, None),
            (2, "log_records", _F.TYPE_BYTES, True, None),
            (3, "schema_url", _F.TYPE_BYTES, False, None),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("otlp_triage.wire.RequestView"))


RequestView = _view_classes()


class Scanner:
    """Every occurrence of a set of literals in a list of serialized records, found in one pass."""

    def __init__(self, literals: list[tuple[bytes, bool]]):
        """``literals``: (bytes, whether ASCII case is ignored); a literal's id is its index."""
        if any(not literal for literal, _ in literals):
            raise ValueError("an empty literal occurs everywhere: look at every record instead of scanning")
        self._database = None
        if literals:
            self._database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            # Every byte escaped: a literal may hold regex syntax or bytes Hyperscan's parser treats specially.
            self._database.compile(
                expressions=["".join(f"\\x{b:02x}" for b in literal).encode() for literal, _ in literals],
                ids=list(range(len(literals))),
                elements=len(literals),
                flags=[hyperscan.HS_FLAG_CASELESS if caseless else 0 for _, caseless in literals],
            )
            self._scratch = hyperscan.Scratch(self._database)
            self._lengths = [len(literal) for literal, _ in literals]

    def found_in_each(self, texts: list[bytes]) -> dict[int, set[int]]:
        """Per text (by index; texts with no match left out), the ids of the literals that occur in it.

        One pass over all of them, NUL-separated: callers make sure no literal contains NUL, so no
        match spans two texts.
        """
        found: dict[int, set[int]] = {}
        if self._database is None or not texts:
            return found
        bounds = list(accumulate(len(text) + 1 for text in texts))
        lengths = self._lengths

        def on_match(literal: int, _start: int, end: int, _flags: int, _context: object) -> None:
            index = bisect_right(bounds, end - lengths[literal])
            ids = found.get(index)
            if ids is None:
                found[index] = {literal}
            else:
                ids.add(literal)

        self._database.scan(b"\0".join(texts), match_event_handler=on_match, scratch=self._scratch)
        return found

    def scan(self, records: list[bytes]) -> tuple[bytes, list[int], dict[int, list[tuple[int, int]]]]:
        """The records joined, where each ends in the joined bytes, and per record index the
        (literal id, start in the joined bytes) of each occurrence, in order.

        An occurrence that straddles two records (a literal split by the joint) is reported too;
        callers check what surrounds an occurrence anyway.
        """
        joined = b"".join(records)
        bounds = list(accumulate(map(len, records)))
        found: dict[int, list[tuple[int, int]]] = {}
        if self._database is None or not joined:
            return joined, bounds, found
        ends: list[tuple[int, int]] = []
        self._database.scan(
            joined,
            match_event_handler=lambda literal, _start, end, _flags, _context: ends.append((literal, end)),
            scratch=self._scratch,
        )
        lengths = self._lengths
        for literal, end in ends:
            start = end - lengths[literal]
            index = bisect_right(bounds, start)
            hits = found.get(index)
            if hits is None:
                found[index] = [(literal, start)]
            else:
                hits.append((literal, start))
        return joined, bounds, found


# --- reading attributes out of serialized records --------------------------------------------------------
# Protobuf writes a message's fields in field-number order, so every OTLP exporter frames a record's
# attribute as  0x32 len(KeyValue) | 0x0a len(key) key | 0x12 len(AnyValue) AnyValue  and a string
# value as  0x0a len(string) string. attribute_value and attribute_with_string_at find that framing
# around an occurrence; the same bytes can also sit inside a body or another value (a map, a bytes
# value holding a serialized record), so the frame must also start a top-level field of the record:
# ``field_containing`` walks the record's fields to say which field an offset lies in.


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes, at: int, stop: int) -> tuple[int, int] | None:
    """(value, position after it), or None if it runs past ``stop`` or is longer than 5 bytes."""
    value = shift = 0
    for i in range(at, min(stop, at + 5)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    return None


# Field tag + length, for every length a record's attribute can have without being rejected as huge.
_FRAMES = 1 << 14
_ATTRIBUTE_FRAME = [b"\x32" + varint(n) for n in range(_FRAMES)]  # LogRecord.attributes
_VALUE_FRAME = [b"\x12" + varint(n) for n in range(_FRAMES)]  # KeyValue.value


def _frame(table: list[bytes], tag: bytes, n: int) -> bytes:
    return table[n] if n < _FRAMES else tag + varint(n)


def field_containing(buf: bytes, start: int, stop: int, position: int) -> int | None:
    """Where the top-level field of the message ``buf[start:stop]`` that holds ``position`` starts.

    Walks the fields from ``start`` (a few per record: the attribute that matters is usually among
    the first), so a frame found inside another field's content is told apart from a real field.
    """
    at = start
    field = None
    while at <= position:
        if at >= stop:
            return None
        field = at
        tag = buf[at]
        if tag >= 0x80:  # field numbers above 15: a longer tag
            read = _read_varint(buf, at, stop)
            if read is None:
                return None
            tag, at = read
        else:
            at += 1
        kind = tag & 7
        if kind == 2:
            if at >= stop:
                return None
            length = buf[at]
            if length < 0x80:
                at += 1 + length
            else:
                read = _read_varint(buf, at, stop)
                if read is None:
                    return None
                at = read[1] + read[0]
        elif kind == 0:
            while at < stop and buf[at] >= 0x80:
                at += 1
            at += 1
        elif kind == 1:
            at += 8
        elif kind == 5:
            at += 4
        else:  # groups: not in OTLP (the request decoded, so not reached in practice)
            return None
    return field


def attribute_value(buf: bytes, key_at: int, key: bytes, start: int, stop: int) -> tuple[int, int, int] | None:
    """(frame start, AnyValue start, AnyValue end) if ``key`` at ``key_at`` is framed as the key of an
    attribute of the record ``buf[start:stop]`` (a KeyValue without a value: an empty AnyValue at its
    end); None if not. Whether the frame starts a top-level field is the caller's check (``field_containing``)."""
    size = len(key)
    head = key_at - 2  # 0x0a len(key)
    if size >= 0x80 or head < start or buf[head] != 0x0A or buf[head + 1] != size:
        return None
    at = key_at + size
    if at > stop:
        return None
    if at == stop or buf[at] != 0x12:  # no value: the KeyValue may end with its key
        frame = _frame(_ATTRIBUTE_FRAME, b"\x32", at - head)
        if head - len(frame) < start or buf[head - len(frame) : head] != frame:
            return None
        return head - len(frame), at, at
    if at + 1 >= stop:
        return None
    length = buf[at + 1]
    if length < 0x80:
        value_at = at + 2
    elif at + 2 < stop and buf[at + 2] < 0x80:  # two bytes: a value of 128 B to 16 KiB
        length = (length & 0x7F) | buf[at + 2] << 7
        value_at = at + 3
    else:
        read = _read_varint(buf, at + 1, stop)
        if read is None:
            return None
        length, value_at = read
    end = value_at + length
    if end > stop:
        return None
    frame = _frame(_ATTRIBUTE_FRAME, b"\x32", end - head)
    if head - len(frame) < start or buf[head - len(frame) : head] != frame:
        return None
    return head - len(frame), value_at, end


def string_value(buf: bytes, value_at: int, end: int) -> tuple[int, int] | None:
    """Where the string lies if the AnyValue ``buf[value_at:end]`` is a string_value, else None."""
    if value_at >= end or buf[value_at] != 0x0A:
        return None
    read = _read_varint(buf, value_at + 1, end)
    if read is None or read[1] + read[0] != end:
        return None
    return read[1], end


def attribute_with_string_at(buf: bytes, string_at: int, keys: tuple[bytes, ...], start: int, stop: int):
    """(key, end of the string, frame start) if a string starting at ``string_at`` is framed as the
    value of an attribute of the record ``buf[start:stop]`` whose key is one of ``keys``; else None."""
    # Read the string's length backwards: one byte (< 0x80) after its 0x0a tag, or two.
    if string_at - 2 >= start and buf[string_at - 2] == 0x0A and buf[string_at - 1] < 0x80:
        value_at = string_at - 2
    elif string_at - 3 >= start and buf[string_at - 3] == 0x0A and buf[string_at - 2] >= 0x80 > buf[string_at - 1]:
        value_at = string_at - 3
    else:
        return None
    read = _read_varint(buf, value_at + 1, stop)
    if read is None or read[1] != string_at:
        return None
    end = string_at + read[0]
    if end > stop:
        return None
    frame = _frame(_VALUE_FRAME, b"\x12", end - value_at)
    key_end = value_at - len(frame)
    if key_end < start or buf[key_end:value_at] != frame:
        return None
    for key in keys:
        key_at = key_end - len(key)
        if key_at >= start and buf[key_at:key_end] == key:
            framed = attribute_value(buf, key_at, key, start, stop)
            if framed is not None and framed[1:] == (value_at, end):
                return key, end, framed[0]
    return None
