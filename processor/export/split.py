"""Cutting a request that is larger than one export call may be into requests that are not.

A backend refuses a message over its size limit (the OTel Collector's OTLP receiver: 4 MiB by
default), and OTLP makes that a permanent error: the records would be dropped. A processed request
can be that large: the processor accepts up to ``TRIAGE_MAX_DECOMPRESSED_BYTES``, and the
enrichment adds ~200 bytes per record. So a request over ``TRIAGE_EXPORT_MAX_BYTES`` is cut
between its ResourceLogs; a ResourceLogs too large on its own is cut between its ScopeLogs and
records, each part repeating the resource and the scope (what the Collector's exporters do when
they split a batch). Everything stays in order and nothing else changes: a ResourceLogs that fits
is passed on as it came. Only a single record larger than the limit makes a larger part.
"""

from __future__ import annotations

from .. import wire

_RESOURCE_LOGS = 1 << 3 | 2  # the request's field 1, length-delimited: a ResourceLogs
_NO_CANDIDATES = 1 << 30  # index() need not report rule candidates here
# A length-delimited field's tag and length, at most: OTLP's field numbers take one byte, and the
# length of anything shorter than 4 GiB at most five.
_FRAME = 6


def split(payload: bytes, max_bytes: int) -> list[tuple[bytes, int]]:
    """``payload`` (a serialized ExportLogsServiceRequest, checked) as requests of at most
    ``max_bytes``, in order: (request, its record count) each."""
    # The framing's counts suffice to cut between ResourceLogs, where a Collector's batch of 8,000
    # records is cut: with index()'s full walk of the request that split cost 0.6 µs per record, 0.3
    # without. The walk is needed only to cut inside a ResourceLogs.
    per_resource = wire.record_counts(payload)
    if len(payload) <= max_bytes:
        return [(payload, sum(per_resource))]
    try:
        fields = list(_fields(memoryview(payload)))  # views: each part is copied once, when it is joined
    except _Unsplittable:
        return [(payload, sum(per_resource))]
    found = None
    parts: list[tuple[bytes, int]] = []
    pieces: list[bytes | memoryview] = []
    size = records = 0
    which = 0
    for tag, field in fields:
        resource_logs = tag == _RESOURCE_LOGS
        if not resource_logs or len(field) <= max_bytes:  # a ResourceLogs that fits, or a field unknown to OTLP
            cut = [(field, per_resource[which] if resource_logs else 0)]
        else:
            if found is None:
                found = wire.index(payload, (), b"", (), _NO_CANDIDATES)
            groups = [group for group in found.groups if group[0] == which]
            cut = _cut_resource_logs(payload, field, groups, found.spans, max_bytes)
        which += resource_logs
        for piece, count in cut:
            if pieces and size + len(piece) > max_bytes:
                parts.append((b"".join(pieces), records))
                pieces, size, records = [], 0, 0
            pieces.append(piece)
            size += len(piece)
            records += count
    if pieces:
        parts.append((b"".join(pieces), records))
    return parts


def _cut_resource_logs(payload: bytes, field: bytes, groups: list[tuple], spans, max_bytes: int) -> list[tuple[bytes, int]]:
    """One ResourceLogs of ``payload``, ``field`` (tag, length, message), cut into such fields of at
    most ``max_bytes``, each with the ResourceLogs' own fields and, per ScopeLogs, the ScopeLogs' own;
    ``groups`` are its ScopeLogs as ``wire.index`` gives them, ``spans`` its records' bytes in ``payload``."""
    if not groups:
        return [(field, 0)]  # no ScopeLogs: nothing to cut between
    resource_logs = groups[0][1]
    pieces: list[tuple[bytes, int]] = []
    scopes: list[bytes] = []  # the piece's finished ScopeLogs
    records: list[bytes] = []  # the open ScopeLogs' records
    in_piece = 0
    size = _FRAME + len(resource_logs)  # the piece so far, framed: kept as it grows (no re-summing)
    for _, _, scope_logs, first, count in groups:
        opening = _FRAME + len(scope_logs)
        if scopes and size + opening > max_bytes:  # not even the ScopeLogs' own fields fit
            pieces.append((_resource_logs_field(resource_logs, scopes), in_piece))
            scopes, in_piece = [], 0
            size = _FRAME + len(resource_logs)
        size += opening
        for i in range(first, first + count):
            record = payload[spans[2 * i] : spans[2 * i + 1]]
            if (scopes or records) and size + _FRAME + len(record) > max_bytes:
                if records:
                    scopes.append(wire.fields(2, scope_logs, records))
                pieces.append((_resource_logs_field(resource_logs, scopes), in_piece))
                scopes, records, in_piece = [], [], 0
                size = _FRAME + len(resource_logs) + opening
            records.append(record)
            size += _FRAME + len(record)
            in_piece += 1
        scopes.append(wire.fields(2, scope_logs, records))
        records = []
    pieces.append((_resource_logs_field(resource_logs, scopes), in_piece))
    return pieces


def _resource_logs_field(resource_logs: bytes, scopes: list[bytes]) -> bytes:
    return wire.fields(1, b"", [wire.fields(2, resource_logs, scopes)])


def _fields(message: memoryview):
    """(tag, the field's bytes: tag and value) for each field of a message whose framing
    ``wire.record_counts`` found sound."""
    at = 0
    end = len(message)
    while at < end:
        start = at
        tag, at = _varint(message, at)
        kind = tag & 7
        if kind == 0:
            _, at = _varint(message, at)
        elif kind == 2:
            length, at = _varint(message, at)
            at += length
        elif kind in (1, 5):
            at += 8 if kind == 1 else 4
        else:  # an unknown group (upb keeps them): rare enough to leave the request whole
            raise _Unsplittable
        yield tag, message[start:at]


class _Unsplittable(Exception):
    pass


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
