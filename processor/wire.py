"""The serialized form of a logs request, worked on without decoding it into messages.

Decoding a request into Python-visible messages and encoding it again costs more than everything
else the pipeline does, and most records need only a few prepared bytes appended. So:

- ``index`` (C, ``_wire.c``) walks the request once and reports per record only what the pipeline
  decides on: where the record lies, its trace id, whether a downgrade rule could apply, and its
  attributes whose key the classifier reads (``Index``). On the way it checks the request as upb's
  decoder would, without building messages, and raises ``Malformed`` for one upb would refuse: the
  intake's check of every protobuf body costs no pass of its own (``problem`` says the same alone).
- ``resolve`` (C) gives each record its verdict's enrichment bytes in one pass, reading the
  trace memory's table (``TraceTable``, C: trace id -> verdict, kept in learning order).
- ``assemble`` (C) writes the request to forward: each record with its enrichment appended
  (protobuf merges a repeated field's later entries into the same message), replaced, or left
  out, and every enclosing length prefix recomputed. Everything else is copied byte for byte.
- ``Scanner`` finds the redactor's literals in a whole request in one pass (Hyperscan, a SIMD
  multi-literal search).
- ``UserAgentCache`` (C, ``_user_agents.c``) gives a request's user agents their verdicts where
  ``index`` found them, and classifies the new ones with ``FirstNeedle``'s automaton: the first
  user-agent signature needle in each.
- ``field`` writes one length-delimited field: held records are released as a request built of
  their bytes.
- ``record_counts`` (C) counts each ResourceLogs' records from the framing alone: what the
  export's split needs of a request it cuts.

``assemble`` only ever sees requests ``index`` found valid.
"""

from __future__ import annotations

from array import array
from collections import deque
from typing import NamedTuple

import hyperscan
from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from . import _wire

MAX_KEYS = 250  # evidence keys index() takes: a key's id is one byte of a user-agent cache key

# What index() does with an attribute whose key is one of the keys it is given.
EVIDENCE = 0  # report it (its AnyValue)
PATH = 1  # report it only if its string starts with a health path (or it is not a plain string)
USER_AGENT = 2  # report where it lies, for UserAgentCache
ODD = 3  # the record is decided from its decoded form


class Index(NamedTuple):
    """What ``index`` found in a request; records are numbered in request order."""

    spans: memoryview  # uint32 start, end of each record's bytes in the payload
    trace_ids: list[bytes]  # per record (b"" if none)
    candidates: list[int]  # records a downgrade rule could match (by severity)
    user_agents: memoryview  # per user-agent attribute, in request order: uint32 record, key id, start, end of its AnyValue
    hits: list[tuple[int, int, bytes]]  # (record, key id, AnyValue bytes): every other evidence attribute
    odd: list[int]  # records the walk does not model (ODD keys, a key given twice, ...): read them decoded
    groups: list[tuple[int, bytes, bytes, int, int]]
    # ^ per ScopeLogs: (ResourceLogs index, that ResourceLogs and this ScopeLogs serialized without their
    #   children, first record, record count)
    resources: list[bytes]  # per ResourceLogs: its resource's bytes (every occurrence, joined)
    largest: int  # the largest record's size in bytes
    most_attributes: int  # the most attributes (KeyValue entries) one record has


_SCHEMA_FIELDS = 32  # field numbers _wire.c's schema covers (OTLP's logs messages use 1..12)
_FIELD_STRING, _FIELD_MESSAGE = 1, 2  # what _wire.c checks of a field; 0: only its framing


def schema(root=ExportLogsServiceRequest.DESCRIPTOR) -> bytes:
    """What ``_wire.index`` checks, from the protobuf descriptors: per message type reachable from
    ``root`` (``root`` first), per field number, (kind, message type index)."""
    types = [root]
    table = bytearray()
    for descriptor in types:  # grows while walked: every message type once
        row = bytearray(2 * _SCHEMA_FIELDS)
        for field in descriptor.fields:
            if field.number >= _SCHEMA_FIELDS:
                raise NotImplementedError(f"{field.full_name}: field numbers from {_SCHEMA_FIELDS} are not in the schema")
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if field.message_type not in types:
                    types.append(field.message_type)
                row[2 * field.number : 2 * field.number + 2] = (_FIELD_MESSAGE, types.index(field.message_type))
            elif field.type == FieldDescriptor.TYPE_STRING:
                row[2 * field.number] = _FIELD_STRING  # proto3: upb checks UTF-8
            elif field.type == FieldDescriptor.TYPE_GROUP or (field.is_repeated and field.type != FieldDescriptor.TYPE_BYTES):
                # Packed scalars and groups would need checks _wire.c does not make: none in OTLP logs.
                raise NotImplementedError(f"{field.full_name}: packed or group fields are not in the schema")
        table += row
    if len(types) > 255:
        raise NotImplementedError("more than 255 message types")
    return bytes(table)


_LOGS_SCHEMA = schema()


class Malformed(ValueError):
    """A body upb would not decode as an ExportLogsServiceRequest; the message says what is wrong."""


TooMany = _wire.TooMany  # a request with more records, or ResourceLogs and ScopeLogs, than index() may take
UNLIMITED = 1 << 62  # index()'s max_count when there is no limit


def index(
    payload: bytes,
    keys: tuple[bytes, ...],
    kinds: bytes,
    health_paths: tuple[bytes, ...],
    min_severity: int,
    max_count: int = UNLIMITED,
) -> Index:
    """Walk a serialized ExportLogsServiceRequest; ``kinds[i]`` says what to do with ``keys[i]``.

    Raises ``Malformed`` if upb would not decode ``payload``, ``TooMany`` (before walking further)
    once it holds more than ``max_count`` records, or more than ``max_count`` ResourceLogs and
    ScopeLogs together."""
    found = _wire.index(payload, _LOGS_SCHEMA, keys, kinds, health_paths, min_severity, max_count)
    if isinstance(found, str):
        raise Malformed(found)
    spans, trace_ids, candidates, user_agents, *rest = found
    return Index(memoryview(spans).cast("I"), trace_ids, candidates, memoryview(user_agents).cast("I"), *rest)


def problem(payload: bytes) -> str | None:
    """None if upb decodes ``payload`` as an ExportLogsServiceRequest; else what is wrong with it."""
    try:
        index(payload, (), b"", (), 0)
    except Malformed as malformed:
        return str(malformed)
    return None


def record_counts(payload: bytes) -> list[int]:
    """Per ResourceLogs of a serialized ExportLogsServiceRequest, in order, how many records it holds,
    read from the framing alone (``Malformed`` if that is broken): for a request checked before, such
    as one ``assemble`` wrote, at a small part of ``index``'s cost."""
    counts = _wire.record_counts(payload)
    if isinstance(counts, str):
        raise Malformed(counts)
    return counts


TraceTable = _wire.TraceTable  # TraceTable(max_traces, seed): its methods are documented in _trace_table.c


def resolve(trace_ids: list[bytes], own: dict, inherited: TraceTable, fallback) -> tuple[list[bytes], dict]:
    """Per record (in request order): its own verdict (``own``: record -> Verdict), else its trace's
    (``inherited``: trace id -> Verdict), else ``fallback``. Returns each record's enrichment, its
    verdict's ``wire_typed`` bytes (what ``assemble`` appends), and how many records each verdict decided."""
    return _wire.resolve(trace_ids, own, inherited, fallback)


# UserAgentCache(max_entries, seed, automaton, tables): (key id, AnyValue) -> verdict, bounded, and
# ``verdicts(payload, user_agents, fallback)`` for a request's user agents; documented in _user_agents.c.
UserAgentCache = _wire.UserAgentCache


def fields(number: int, prefix: bytes, contents: list[bytes]) -> bytes:
    """``prefix``, then each of ``contents`` as a length-delimited field ``number`` (1 to 15), in
    one call: a message's own fields followed by its repeated children."""
    return _wire.fields(number, prefix, contents)


def assemble(payload: bytes, records: list, resources: dict[int, bytes] | None = None) -> bytes:
    """``payload`` with, per record (in request order): bytes appended (``bytes``), the record left
    out (``None``) or replaced (``(bytes,)``); and per ResourceLogs index in ``resources``, its
    resource replaced (every occurrence by one: protobuf merges them the same way)."""
    return _wire.assemble(payload, records, resources)


class Scanner:
    """Every occurrence of a set of literals, found in one pass."""

    def __init__(self, literals: list[bytes]):
        """``literals``: matched exactly; a literal's id is its index."""
        if any(not literal for literal in literals):
            raise ValueError("an empty literal occurs everywhere: look at every record instead of scanning")
        self._database = None
        if literals:
            self._database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            # Every byte escaped: a literal may hold regex syntax or bytes Hyperscan's parser treats specially.
            self._database.compile(
                expressions=["".join(f"\\x{b:02x}" for b in literal).encode() for literal in literals],
                ids=list(range(len(literals))),
                elements=len(literals),
            )
            self._scratch = hyperscan.Scratch(self._database)
            self._lengths = [len(literal) for literal in literals]

    def positions(self, buf: bytes) -> list[tuple[int, int]]:
        """(literal id, start) of every occurrence in ``buf``, in order of where each ends."""
        found: list[tuple[int, int]] = []
        if self._database is None or not buf:
            return found
        lengths = self._lengths
        self._database.scan(
            buf,
            match_event_handler=lambda literal, _start, end, _flags, _context: found.append((literal, end - lengths[literal])),
            scratch=self._scratch,
        )
        return found


class FirstNeedle:
    """Of many ASCII needles, which one occurs first in precedence in each of many texts (ASCII case
    ignored): an Aho-Corasick automaton, built here once (``automaton``), run by ``UserAgentCache``
    over each new user agent in C (``_user_agents.c``).

    Per text it answers the needle with the lowest rank, which is all a user agent's verdict depends
    on, with no call back into Python per match (what a Hyperscan search costs per match).
    """

    def __init__(self, needles: list[bytes], ranks: list[int]):
        folded = [needle.lower() for needle in needles]
        alphabet = sorted({byte for needle in folded for byte in needle})
        classes = bytearray(256)  # byte -> class; 0: a byte no needle has
        for number, byte in enumerate(alphabet, 1):
            classes[byte] = number
            if 0x61 <= byte <= 0x7A:
                classes[byte - 0x20] = number  # ASCII upper case folds to lower
        width = len(alphabet) + 1
        goto: list[dict[int, int]] = [{}]
        best = [_NO_RANK]  # per state: the lowest rank among the needles ending there
        for needle, rank in zip(folded, ranks):
            state = 0
            for byte in needle:
                state = goto[state].setdefault(classes[byte], len(goto))
                if state == len(goto):
                    goto.append({})
                    best.append(_NO_RANK)
            best[state] = min(best[state], rank)
        if len(goto) >= 1 << 16:
            raise ValueError(f"{len(goto)} automaton states: more than the 16-bit table holds")
        # Breadth first: each state's failure link is final before its children need it.
        delta = [0] * (len(goto) * width)
        failure = [0] * len(goto)
        queue = deque()
        for cls in range(width):
            child = goto[0].get(cls)
            if child is not None:
                delta[cls] = child
                queue.append(child)
        while queue:
            state = queue.popleft()
            best[state] = min(best[state], best[failure[state]])  # a needle ending at a suffix ends here too
            for cls in range(width):
                child = goto[state].get(cls)
                if child is None:
                    delta[state * width + cls] = delta[failure[state] * width + cls]
                else:
                    failure[child] = delta[failure[state] * width + cls]
                    delta[state * width + cls] = child
                    queue.append(child)
        self.automaton = _wire.automaton(bytes(classes), array("H", delta).tobytes(), array("i", best).tobytes(), width)


_NO_RANK = 2**31 - 1
