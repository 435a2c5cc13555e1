"""The trace memory's table in C (``wire.TraceTable``) against a plain model of what it promises.

The model is a dict and a queue of learnings; the table is a hash table with linear probing and
backward-shift deletion. With a zero seed a key's home slot is its low half (its high half 1), so
the tests choose where keys land: long runs, runs that wrap past the last slot, and deletions in
the middle of them.
"""

from __future__ import annotations

import os
import random
import sys
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor import wire

ZERO_SEED = bytes(16)


def key(home: int, tag: int = 0) -> bytes:
    """A trace id whose home slot is ``home`` (modulo the table's size) under ZERO_SEED."""
    return (1).to_bytes(8, "little") + ((tag << 32) | home).to_bytes(8, "little")


class Model:
    """What TraceTable promises, written the obvious way."""

    def __init__(self, max_traces: int):
        self.max_traces = max_traces
        self.values: dict[bytes, object] = {}
        self.until: dict[bytes, float] = {}
        self.order: deque[tuple[bytes, float]] = deque()  # learnings, oldest first
        self.evicted = 0

    def set(self, trace_id: bytes, value, until: float) -> None:
        if len(trace_id) != 16:
            return
        if self.until.get(trace_id) != until:
            self.order.append((trace_id, until))
            self.until[trace_id] = until
        self.values[trace_id] = value

    def learn_new(self, trace_ids, values, until: float) -> list[int]:
        known = []
        for i, (trace_id, value) in enumerate(zip(trace_ids, values)):
            if len(trace_id) != 16:
                continue
            if trace_id in self.values:
                known.append(i)
            else:
                self.set(trace_id, value, until)
        return known

    def pop(self, trace_id: bytes, default):
        """Forgotten now; its learnings stay in the queue and no longer match (``_drop_oldest``)."""
        self.until.pop(trace_id, None)
        return self.values.pop(trace_id, default)

    def among(self, trace_ids) -> list[int]:
        return [i for i, trace_id in enumerate(trace_ids) if trace_id in self.values]

    def _drop_oldest(self) -> int:
        trace_id, until = self.order.popleft()
        if trace_id in self.values and self.until[trace_id] == until:
            del self.values[trace_id], self.until[trace_id]
            return 1
        return 0

    def expire(self, now: float) -> int:
        forgotten = 0
        while self.order and self.order[0][1] <= now:
            forgotten += self._drop_oldest()
        return forgotten

    def evict(self) -> int:
        evicted = 0
        while len(self.values) > self.max_traces and self.order:
            evicted += self._drop_oldest()
        self.evicted += evicted
        return evicted


_KEYS = st.one_of(
    st.builds(key, st.integers(0, 70), st.integers(0, 3)),  # crowded homes, some past a small table's end
    st.sampled_from([b"", b"short", b"x" * 17]),  # not a trace id: never kept
)
_OPS = st.one_of(
    st.tuples(st.just("set"), _KEYS, st.integers(0, 5), st.integers(0, 20)),
    st.tuples(st.just("learn_new"), st.lists(_KEYS, max_size=12), st.integers(0, 20)),
    st.tuples(st.just("expire"), st.integers(0, 20)),
    st.tuples(st.just("evict"),),
    st.tuples(st.just("pop"), _KEYS),
    st.tuples(st.just("among"), st.lists(_KEYS, max_size=12)),
)


def _agree(table, model: Model, keys) -> None:
    assert len(table) == len(model.values)
    assert dict(table.items()) == model.values
    assert table.evicted == model.evicted
    for trace_id in keys:
        assert table.get(trace_id, "none") == model.values.get(trace_id, "none")


@settings(max_examples=400, deadline=None)
@given(st.lists(_OPS, max_size=60), st.integers(1, 40))
def test_table_does_what_the_model_does(ops, max_traces: int) -> None:
    table, model = wire.TraceTable(max_traces, ZERO_SEED), Model(max_traces)
    seen: set[bytes] = set()
    for op in ops:
        if op[0] == "set":
            _, trace_id, value, until = op
            seen.add(trace_id)
            assert table.set(trace_id, value, float(until)) is None
            model.set(trace_id, value, float(until))
        elif op[0] == "learn_new":
            _, trace_ids, until = op
            seen.update(trace_ids)
            values = [f"v{i}" for i in range(len(trace_ids))]
            assert table.learn_new(trace_ids, values, float(until)) == model.learn_new(trace_ids, values, float(until))
        elif op[0] == "expire":
            assert table.expire(float(op[1])) == model.expire(float(op[1]))
        elif op[0] == "pop":
            assert table.pop(op[1], "none") == model.pop(op[1], "none")
        elif op[0] == "among":
            assert table.among(op[1]) == model.among(op[1])
        else:
            assert table.evict() == model.evict()
        _agree(table, model, seen)


def test_a_run_that_wraps_past_the_last_slot_survives_deletions_in_its_middle() -> None:
    """Keys homed at the last slots of the 64-slot table spill over to the first ones; deleting
    from the run's middle must keep every later key findable (the backward shift)."""
    table, model = wire.TraceTable(1000, ZERO_SEED), Model(1000)
    crowd = [key(62, tag) for tag in range(5)] + [key(0, tag) for tag in range(3)] + [key(63)]
    for n, trace_id in enumerate(crowd):  # each its own learning, so each can expire alone
        table.set(trace_id, n, float(n))
        model.set(trace_id, n, float(n))
    _agree(table, model, crowd)
    for now in (1.0, 3.0, 6.0, 8.0):  # forgets the oldest first: 62's run, then 0's
        assert table.expire(now) == model.expire(now)
        _agree(table, model, crowd)


def test_among_stays_exact_while_traces_come_and_go() -> None:
    """among() answers from a filter of the keys made at its first call, kept up as keys come, and made
    again after the table grows or as many keys left as it holds: never missing a key it holds, and
    every position it gives is one it holds, through all of that."""
    table = wire.TraceTable(1 << 62, os.urandom(16))
    held: list[bytes] = []
    rng = random.Random(7)
    for step in range(300):
        new = [os.urandom(16) for _ in range(rng.randrange(0, 40))]
        table.learn_new(new, [step] * len(new), float(step))
        held += new
        for trace_id in rng.sample(held, k=min(len(held), rng.randrange(0, 40))):  # some leave
            assert table.pop(trace_id) is not None
            held.remove(trace_id)
        asked = rng.sample(held, k=min(len(held), 20)) + [os.urandom(16) for _ in range(200)]
        rng.shuffle(asked)
        holding = set(held)
        assert table.among(asked) == [i for i, trace_id in enumerate(asked) if trace_id in holding], step
    assert len(table) == len(held)


def test_grows_past_its_first_size_and_keeps_every_trace() -> None:
    table = wire.TraceTable(100_000, os.urandom(16))
    trace_ids = [os.urandom(16) for _ in range(20_000)]
    assert table.learn_new(trace_ids, list(range(20_000)), 1.0) == []
    assert len(table) == 20_000
    assert all(table.get(trace_id) == n for n, trace_id in enumerate(trace_ids))
    assert table.learn_new(trace_ids[:3], [0, 0, 0], 1.0) == [0, 1, 2]  # known: left as they were
    assert table.get(trace_ids[1]) == 1


def test_values_are_released_when_forgotten() -> None:
    """The table holds a reference to each value while it keeps the trace, and none after."""

    class Value:
        pass

    table = wire.TraceTable(1, ZERO_SEED)
    value = Value()
    before = sys.getrefcount(value)
    table.set(key(1), value, 1.0)
    table.set(key(2), value, 2.0)
    assert sys.getrefcount(value) == before + 2
    assert table.evict() == 1 and table.expire(5.0) == 1
    assert sys.getrefcount(value) == before and len(table) == 0


def test_refuses_a_bad_seed_or_bound() -> None:
    with pytest.raises(ValueError, match="16-byte seed"):
        wire.TraceTable(10, b"short")
    with pytest.raises(ValueError, match="max_traces >= 1"):
        wire.TraceTable(0, ZERO_SEED)


def test_traces_learned_again_and_again_keep_the_ring_small() -> None:
    """Each renewal is a learning; superseded ones are dropped once they fill the ring, so a trace
    renewed on every request for a whole TTL costs no memory per renewal, and expiry and
    eviction still go by each trace's latest learning."""
    table, model = wire.TraceTable(3, ZERO_SEED), Model(3)  # 3 of 5: eviction drops the oldest
    crowd = [key(home) for home in range(1, 6)]
    piled = 0  # the most learnings a ring that kept every one until its turn would have held
    for n in range(10_000):
        for trace_id in (crowd[0], crowd[1 + n % 4]):  # one renewed every step, four in turn
            table.set(trace_id, n, float(n))
            model.set(trace_id, n, float(n))
        if n % 1000 == 999:  # now and then: meanwhile thousands of superseded learnings pile up
            assert table.evict() == model.evict()
        assert table.learnings <= 64  # the ring's first size: never grown
        piled = max(piled, len(model.order))
    assert piled > 1000
    _agree(table, model, crowd)
    for now in (9_997.0, 9_998.0, 9_999.0):
        assert table.expire(now) == model.expire(now)
        _agree(table, model, crowd)
    assert len(table) == 0 and table.learnings == 0
