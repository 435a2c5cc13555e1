"""Trace correlation across requests: what each trace is known to be, and records waiting to learn it.

The error record that matters usually carries no evidence; the access log of the same trace does,
and it often arrives in another export request a little earlier or later. ``TraceMemory`` keeps,
per ``trace_id``, the verdict learned from records (or spans) with evidence, bounded in time (TTL)
and in count (oldest evicted first). ``Holding`` keeps the few records a rule could fire on whose
trace has no evidence yet, for at most the correlation window.

Pure data structures: the caller passes ``now`` (monotonic seconds), so tests need no sleeps.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from functools import partial
from itertools import islice, repeat, takewhile
from operator import attrgetter, ge
from dataclasses import dataclass, field

from .classify.verdict import Verdict


_INHERITED = attrgetter("_inherited")


def outranks(new: Verdict, known: Verdict) -> bool:
    """Whether ``new`` should replace ``known`` as the trace's verdict.

    Certain evidence beats likely evidence; among equals, ``user`` beats everything, so one
    real-user record in a trace keeps the whole trace from being downgraded.
    """
    return new.trace_rank < known.trace_rank


class TraceMemory:
    """trace_id -> verdict, for ``ttl_s`` after the last evidence, at most ``max_traces`` traces.

    Kept as flat dicts of shared objects, not a tuple per trace: a hundred thousand small tuples
    are as many objects for the garbage collector to walk on every full collection (a pause that
    showed up as p99 latency).
    """

    def __init__(self, ttl_s: float, max_traces: int):
        self.ttl_s = ttl_s
        self.max_traces = max_traces
        # trace -> when it expires, ordered by last update: expiry and eviction both pop from the front.
        self.expires: OrderedDict[bytes, float] = OrderedDict()
        # trace -> what a record without evidence of its own inherits from it (``.origin``: the trace's
        # verdict). Looked up for every record of a request in one C-level pass.
        self.inherited: dict[bytes, Verdict] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.expires)

    def learn(self, trace_id: bytes, verdict: Verdict, now: float) -> Verdict:
        """Merge evidence into the trace's verdict; returns the trace's verdict after the merge."""
        expires = self.expires
        until = expires.get(trace_id)
        if until is not None:
            # An expired verdict is forgotten, not merged: fresh evidence alone decides.
            if until > now:
                known = self.inherited[trace_id].origin
                if not outranks(verdict, known):
                    verdict = known
            expires.move_to_end(trace_id)
        expires[trace_id] = now + self.ttl_s
        self.inherited[trace_id] = verdict.inherited()
        if len(expires) > self.max_traces:
            del self.inherited[expires.popitem(last=False)[0]]
            self.evicted += 1
        return verdict

    def learn_many(self, learned: list[tuple[bytes, Verdict]], now: float) -> None:
        """``learn`` each (trace, verdict) in order. The usual request teaches traces not known yet,
        each once: those are added in two C-level dict updates instead of one call each."""
        if not learned:
            return
        trace_ids = [trace_id for trace_id, _ in learned]
        if len(set(trace_ids)) != len(trace_ids) or not self.expires.keys().isdisjoint(trace_ids):
            for trace_id, verdict in learned:
                self.learn(trace_id, verdict, now)
            return
        verdicts = [verdict for _, verdict in learned]
        for verdict in set(verdicts):
            verdict.inherited()  # made once per verdict, then read as an attribute
        self.expires.update(zip(trace_ids, repeat(now + self.ttl_s)))
        self.inherited.update(zip(trace_ids, map(_INHERITED, verdicts)))
        excess = len(self.expires) - self.max_traces
        if excess > 0:
            self._forget(excess)
            self.evicted += excess

    def recall(self, trace_id: bytes, now: float) -> Verdict | None:
        until = self.expires.get(trace_id)
        if until is None or until <= now:
            return None
        return self.inherited[trace_id].origin

    def expire(self, now: float) -> None:
        # Expiry times grow along the order (every update moves its trace to the end): the expired
        # traces are a prefix, counted and dropped in C-level passes rather than one by one.
        self._forget(len(list(takewhile(partial(ge, now), self.expires.values()))))

    def _forget(self, count: int) -> None:
        """Drop the ``count`` oldest traces."""
        if count:
            oldest = list(islice(self.expires, count))
            deque(map(self.expires.pop, oldest), maxlen=0)
            deque(map(self.inherited.pop, oldest), maxlen=0)


@dataclass(eq=False)
class Held:
    """A record waiting for its trace's evidence, with the resource and scope it came in."""

    record: object  # LogRecord (a copy, detached from the request it came in)
    group: object  # ResourceLogs skeleton (resource + one ScopeLogs with scope, no records)
    rule: object  # the Rule that matched it
    has_synthetic_type: bool
    deadline: float
    size: int
    released: bool = field(default=False)


class Holding:
    """Held records by trace and by deadline; bounded by the caller's memory accounting (``bytes``)."""

    def __init__(self) -> None:
        self._by_trace: dict[bytes, list[Held]] = {}
        self._by_deadline: deque[Held] = deque()  # deadlines are now + a constant window: FIFO order
        self.bytes = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def waiting_for(self, trace_id: bytes) -> bool:
        return trace_id in self._by_trace

    def hold(self, trace_id: bytes, held: Held) -> None:
        self._by_trace.setdefault(trace_id, []).append(held)
        self._by_deadline.append(held)
        self.bytes += held.size
        self.count += 1

    def take_trace(self, trace_id: bytes) -> list[Held]:
        taken = self._by_trace.pop(trace_id, [])
        for held in taken:
            self._release(held)
        return taken

    def take_expired(self, now: float) -> list[Held]:
        taken = []
        queue = self._by_deadline
        while queue and (queue[0].released or queue[0].deadline <= now):
            held = queue.popleft()
            if held.released:
                continue
            trace_id = held.record.trace_id
            waiting = self._by_trace.get(trace_id)
            if waiting is not None:
                waiting.remove(held)
                if not waiting:
                    del self._by_trace[trace_id]
            self._release(held)
            taken.append(held)
        return taken

    def take_all(self) -> list[Held]:
        taken = [h for h in self._by_deadline if not h.released]
        for held in taken:
            self._release(held)
        self._by_trace.clear()
        self._by_deadline.clear()
        return taken

    def next_deadline(self) -> float | None:
        for held in self._by_deadline:
            if not held.released:
                return held.deadline
        return None

    def _release(self, held: Held) -> None:
        held.released = True
        self.bytes -= held.size
        self.count -= 1
