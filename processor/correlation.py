"""Trace correlation across requests: what each trace is known to be, and records waiting to learn it.

The error record that matters usually carries no evidence; the access log of the same trace does,
and it often arrives in another export request a little earlier or later. ``TraceMemory`` keeps,
per ``trace_id``, the verdict learned from records (or spans) with evidence, bounded in time (TTL)
and in count (oldest evicted first). ``Holding`` keeps the few records a rule could fire on whose
trace has no evidence yet, for at most the correlation window.

Pure data structures: the caller passes ``now`` (monotonic seconds), so tests need no sleeps.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field

from . import wire
from .classify.verdict import Verdict


def outranks(new: Verdict, known: Verdict) -> bool:
    """Whether ``new`` should replace ``known`` as the trace's verdict.

    Certain evidence beats likely evidence; among equals, ``user`` beats everything, so one
    real-user record in a trace keeps the whole trace from being downgraded.
    """
    return new.trace_rank < known.trace_rank


TRACE_ID_SIZE = 16  # bytes, OTLP's: the only trace ids remembered, so the only ones worth holding a record for

# The trace table's hash key: trace ids come from outside, and ids made to collide would make it slow.
_SEED = os.urandom(16)


class _InheritedOf(dict):
    """verdict -> ``verdict.inherited()``, looked up in C for every trace a request teaches (a
    method call per trace cost a third of learning). Bounded: a verdict made for one odd user
    agent is not kept forever."""

    MAX = 4096

    def __missing__(self, verdict: Verdict) -> Verdict:
        if len(self) >= self.MAX:
            self.clear()
        inherited = self[verdict] = verdict.inherited()
        return inherited


def _held_table() -> wire.TraceTable:
    return wire.TraceTable(1 << 62, _SEED)  # never evicted: the caller bounds what is held by its bytes


class TraceMemory:
    """trace_id -> verdict, for ``ttl_s`` after the last evidence, at most ``max_traces`` traces.

    Kept in a table in C (``wire.TraceTable``): a trace's verdict sits inline in a slot with its
    16-byte id, so learning, looking up and forgetting a trace each cost about one cache miss, and
    expiring and evicting (oldest learned first) walk the table's own record of learning order. A
    dict of bytes cost a fifth of the pipeline's time here. A trace id of another length than 16
    bytes (not OTLP's) is never remembered: its records inherit nothing.
    """

    def __init__(self, ttl_s: float, max_traces: int):
        self.ttl_s = ttl_s
        self.max_traces = max_traces
        # trace -> what a record without evidence of its own inherits from it (``.origin``: the trace's
        # verdict). Looked up for every record of a request in one C-level pass.
        self.inherited = wire.TraceTable(max_traces, _SEED)
        self._inherited_of = _InheritedOf()

    def __len__(self) -> int:
        return len(self.inherited)

    @property
    def evicted(self) -> int:
        return self.inherited.evicted

    def learn(self, trace_id: bytes, verdict: Verdict, now: float) -> Verdict:
        """Merge evidence into the trace's verdict; returns the trace's verdict after the merge."""
        self.expire(now)  # an expired verdict is forgotten, not merged: fresh evidence alone decides
        verdict = self._merge(trace_id, verdict, now)
        self.inherited.evict()
        return verdict

    def learn_many(self, trace_ids: list[bytes], verdicts: list[Verdict], now: float) -> None:
        """``learn`` each ``trace_ids[i]`` from ``verdicts[i]``, in order. The usual request teaches
        traces not known yet, each once: those are added in one C pass, one probe each."""
        if not trace_ids:
            return
        self.expire(now)
        inherited = list(map(self._inherited_of.__getitem__, verdicts))
        known = self.inherited.learn_new(trace_ids, inherited, now + self.ttl_s)
        for i in known:  # known before, or taught twice in this request: merged in order, as learn() does
            self._merge(trace_ids[i], verdicts[i], now)
        self.inherited.evict()  # after the merges: a trace this request renews is not the oldest

    def recall(self, trace_id: bytes, now: float) -> Verdict | None:
        self.expire(now)
        known = self.inherited.get(trace_id)
        return None if known is None else known.origin

    def expire(self, now: float) -> None:
        self.inherited.expire(now)

    def _merge(self, trace_id: bytes, verdict: Verdict, now: float) -> Verdict:
        known = self.inherited.get(trace_id)
        if known is not None and not outranks(verdict, known.origin):
            verdict = known.origin
        self.inherited.set(trace_id, self._inherited_of[verdict], now + self.ttl_s)
        return verdict


@dataclass(eq=False, slots=True)
class HeldGroup:
    """The ResourceLogs and ScopeLogs held records came in, serialized without their children."""

    resource_logs: bytes
    scope_logs: bytes
    resource: bytes  # the resource's own bytes, for the redactor


@dataclass(eq=False, slots=True)
class Held:
    """A record waiting for its trace's evidence: its bytes as they came, and what its release needs."""

    trace_id: bytes
    record: bytes  # the serialized LogRecord
    group: HeldGroup  # shared by the records held from one ScopeLogs of one request
    severity: tuple[int, str]  # its severity_number and severity_text, which a downgrade keeps
    rule: object  # the Rule that matched it
    has_synthetic_type: bool
    secret: bool  # may hold something to redact: redacted when released
    deadline: float
    size: int
    released: bool = field(default=False)


class Holding:
    """Held records by trace and by deadline; bounded by the caller's memory accounting (``bytes``).

    Only records of 16-byte trace ids are held (the only ones the trace memory learns). By trace,
    they are kept in a ``wire.TraceTable`` too: a request's new traces (a few hundred) are checked
    for waiting records in one C pass, which with a dict cost a siphash and a cache miss each.
    Records are held a request at a time (``hold_many``): one table pass and one deadline entry per
    request, not per record.
    """

    def __init__(self) -> None:
        self._by_trace = _held_table()  # trace id -> its held records, in the order they were held
        # One list of records per hold_many, all of one deadline; deadlines are now + a constant
        # window, so the lists are in deadline order.
        self._by_deadline: deque[list[Held]] = deque()
        self.bytes = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def waiting_for(self, trace_id: bytes) -> bool:
        return self._by_trace.get(trace_id) is not None

    def waiting_among(self, trace_ids: list[bytes]) -> list[int]:
        """The positions, in order, of those of ``trace_ids`` that have records waiting (one C pass)."""
        return self._by_trace.among(trace_ids)

    def hold(self, held: Held) -> None:
        self.hold_many([held])

    def hold_many(self, helds: list[Held]) -> None:
        """Hold records of one deadline, no earlier than any held before (one request's)."""
        if not helds:
            return
        trace_ids = [held.trace_id for held in helds]
        for trace_id in trace_ids:
            if len(trace_id) != TRACE_ID_SIZE:
                raise ValueError(f"only records of {TRACE_ID_SIZE}-byte trace ids are held, not {trace_id!r}")
        by_trace = self._by_trace
        # The table's expiry is not used (records leave by take_*); a distinct one per holding lets
        # the table drop what it kept of a trace taken and held again.
        for position in by_trace.learn_new(trace_ids, [[held] for held in helds], helds[0].deadline):
            by_trace.get(trace_ids[position]).append(helds[position])  # the trace waits already
        self._by_deadline.append(helds)
        self.bytes += sum(held.size for held in helds)
        self.count += len(helds)

    def take_trace(self, trace_id: bytes) -> list[Held]:
        taken = self._by_trace.pop(trace_id, [])
        for held in taken:
            self._release(held)
        return taken

    def take_expired(self, now: float) -> list[Held]:
        taken = []
        by_deadline = self._by_deadline
        by_trace = self._by_trace
        while by_deadline and by_deadline[0][0].deadline <= now:
            for held in by_deadline.popleft():
                if held.released:
                    continue
                waiting = by_trace.pop(held.trace_id, None)
                if waiting is not None and len(waiting) > 1:  # the trace's records held later stay
                    waiting.remove(held)
                    by_trace.set(held.trace_id, waiting, waiting[0].deadline)
                held.released = True
                taken.append(held)
        self.bytes -= sum(held.size for held in taken)
        self.count -= len(taken)
        return taken

    def take_all(self) -> list[Held]:
        taken = [held for helds in self._by_deadline for held in helds if not held.released]
        for held in taken:
            self._release(held)
        self._by_trace = _held_table()
        self._by_deadline.clear()
        return taken

    def _release(self, held: Held) -> None:
        held.released = True
        self.bytes -= held.size
        self.count -= 1
