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
from bisect import bisect_right
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
class HeldBatch:
    """The records held from one request: they share a deadline, so they wait, and mostly leave,
    together. One object per request, not per record: a flood of errors that never get evidence
    holds thousands of records, and every object per record cost allocations, collections and
    Python steps on the way in and out. ``Holding`` reads ``trace_ids``, ``sizes`` and ``deadline``;
    the rest is the holder's, per position."""

    trace_ids: list[bytes]  # per record; 16 bytes each
    sizes: list[int]  # per record, what it counts against the memory bound
    deadline: float
    records: list  # per record, what its release needs (the pipeline's: Pipeline._hold)
    groups: list = field(default_factory=list)  # (first position, HeldGroup): the ScopeLogs they came in, in order
    secrets: frozenset[int] = frozenset()  # positions that may hold something to redact
    typed: bool = False  # whether any record already has user_agent.synthetic.type
    wires: tuple[bytes, ...] = ()  # per record, its bytes as they came (the pipeline's)
    size: int = 0  # sum(sizes), set by Holding
    taken: set[int] | None = None  # positions that left early, with their trace's evidence

    def group_of(self, position: int) -> HeldGroup:
        return self.groups[bisect_right(self.groups, position, key=_first) - 1][1]


def _first(run: tuple) -> int:
    return run[0]


class Holding:
    """Held records by trace and by deadline; bounded by the caller's memory accounting (``bytes``).

    Records come and go a request at a time (``HeldBatch``): holding one is one table pass and one
    deadline entry, and a batch whose window ends leaves whole. Only records of 16-byte trace ids
    are held (the only ones the trace memory learns). By trace they are kept in a
    ``wire.TraceTable``: a request's new traces (a few hundred) are checked for waiting records in
    one C pass, which with a dict cost a siphash and a cache miss each. The table holds a trace's
    first batch; a trace with records waiting in later batches too (rare: an error repeated in
    another request before any evidence) has those in ``_later``.
    """

    def __init__(self) -> None:
        self._by_trace = _held_table()  # trace id -> the first batch with its records waiting
        self._later: dict[bytes, list[HeldBatch]] = {}  # trace id -> later batches with its records waiting
        # Deadlines are now + a constant window, so batches come in deadline order.
        self._by_deadline: deque[HeldBatch] = deque()
        self.bytes = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def waiting_for(self, trace_id: bytes) -> bool:
        return self._by_trace.get(trace_id) is not None

    def waiting_among(self, trace_ids: list[bytes]) -> list[int]:
        """The positions, in order, of those of ``trace_ids`` that have records waiting (one C pass)."""
        return self._by_trace.among(trace_ids)

    def hold(self, batch: HeldBatch) -> None:
        """Hold a request's records; its deadline is no earlier than any held before."""
        trace_ids = batch.trace_ids
        if not trace_ids:
            return
        if set(map(len, trace_ids)) != {TRACE_ID_SIZE}:
            raise ValueError(f"only records of {TRACE_ID_SIZE}-byte trace ids are held, not {trace_ids!r}")
        by_trace = self._by_trace
        # The table's expiry is not used (records leave by take_*); a distinct one per batch lets
        # the table drop what it kept of a trace taken and held again.
        for position in by_trace.learn_new(trace_ids, [batch] * len(trace_ids), batch.deadline):
            trace_id = trace_ids[position]  # waits already: in an earlier batch, or twice in this one
            if by_trace.get(trace_id) is not batch:
                later = self._later.setdefault(trace_id, [])
                if not later or later[-1] is not batch:
                    later.append(batch)
        self._by_deadline.append(batch)
        batch.size = sum(batch.sizes)
        self.bytes += batch.size
        self.count += len(trace_ids)

    def take_trace(self, trace_id: bytes) -> list[tuple[HeldBatch, list[int]]]:
        """The trace's records, in the order held: (batch, positions) per batch."""
        first = self._by_trace.pop(trace_id, None)
        if first is None:
            return []
        taken = []
        for batch in [first, *self._later.pop(trace_id, ())]:
            positions = [p for p, t in enumerate(batch.trace_ids) if t == trace_id]
            if batch.taken is None:
                batch.taken = set()
            batch.taken.update(positions)
            self.bytes -= sum(batch.sizes[p] for p in positions)
            self.count -= len(positions)
            taken.append((batch, positions))
        return taken

    def take_expired(self, now: float) -> list[tuple[HeldBatch, list[int]]]:
        """The batches whose deadline passed, in the order held: (batch, its positions still held)."""
        taken = []
        by_deadline = self._by_deadline
        while by_deadline and by_deadline[0].deadline <= now:
            batch = by_deadline.popleft()
            positions = self._forget(batch)
            if positions:
                taken.append((batch, positions))
        return taken

    def take_all(self) -> list[tuple[HeldBatch, list[int]]]:
        taken = [(batch, self._still_held(batch)) for batch in self._by_deadline]
        self._by_trace = _held_table()
        self._later.clear()
        self._by_deadline.clear()
        self.bytes = 0
        self.count = 0
        return [(batch, positions) for batch, positions in taken if positions]

    def _forget(self, batch: HeldBatch) -> list[int]:
        """Take the batch's records still held out of the table; their positions."""
        positions = self._still_held(batch)
        trace_ids = batch.trace_ids if batch.taken is None else [batch.trace_ids[p] for p in positions]
        by_trace = self._by_trace
        if not self._later:  # the usual case: each trace waits in one batch, this one
            for _ in map(by_trace.pop, trace_ids):
                pass
        else:
            for trace_id in trace_ids:
                if by_trace.get(trace_id) is not batch:
                    continue  # twice in this batch: done
                later = self._later.get(trace_id)
                if later:  # its next batch is first now
                    following = later.pop(0)
                    by_trace.set(trace_id, following, following.deadline)
                    if not later:
                        del self._later[trace_id]
                else:
                    by_trace.pop(trace_id)
        self.bytes -= batch.size if batch.taken is None else sum(batch.sizes[p] for p in positions)
        self.count -= len(positions)
        return positions

    def _still_held(self, batch: HeldBatch) -> list[int]:
        if batch.taken is None:
            return list(range(len(batch.trace_ids)))
        return [p for p in range(len(batch.trace_ids)) if p not in batch.taken]
