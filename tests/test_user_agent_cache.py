"""The user-agent cache (``processor/_user_agents.c``): what it answers, and what it keeps.

Its verdicts are checked against the classifier in ``test_wire.py``; here, against a model (a plain
search and a dict that starts over when full, with or without the doorkeeper), and its bounds:
entries, bytes of keys, a key too long to keep, references released when it starts over, bad
arguments refused.
"""

from __future__ import annotations

import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from processor import wire
from processor.wire import FirstNeedle

NEEDLES = [b"bot", b"curl/", b"mozilla/"]
TABLES = [[], ["robot", "client", "browser", "nothing"]]  # key id 1: a verdict per needle rank, then no needle
KEY_ID = 1


def _cache(max_entries: int = 100, doorkeeper: bool = False) -> wire.UserAgentCache:
    return wire.UserAgentCache(
        max_entries, bytes(16), FirstNeedle(NEEDLES, [0, 1, 2]).automaton, TABLES, doorkeeper=doorkeeper
    )


def _request(texts: list[str]) -> tuple[bytes, array]:
    """A payload of one user agent per record, and where each lies (as index() reports them)."""
    payload, entries = bytearray(), array("I")
    for record, text in enumerate(texts):
        value = AnyValue(string_value=text).SerializeToString()
        entries.extend((record, KEY_ID, len(payload), len(payload) + len(value)))
        payload += value
    return bytes(payload), entries


def _expected(text: str) -> str:
    lowered = text.lower()
    return next((TABLES[KEY_ID][rank] for rank, needle in enumerate(NEEDLES) if needle.decode() in lowered), "nothing")


def _key(text: str) -> bytes:
    return bytes((KEY_ID,)) + AnyValue(string_value=text).SerializeToString()


def _no_fallback(key: bytes):
    raise AssertionError(f"an ASCII user agent went to the fallback: {key!r}")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.sampled_from(["Bot/1", "curl/8", "Mozilla/5.0", "MOZILLA/5.0 bot", "x", "y", "z/1"]), max_size=12), max_size=20))
def test_cache_answers_what_the_model_does(requests: list[list[str]]) -> None:
    """Request after request, each user agent's verdict is its first needle's; the cache holds what a
    dict that starts over when full holds (the request's known ones looked up first, then its new ones
    kept in order), never more than its bound."""
    cache = _cache(max_entries=4)
    model: set[str] = set()
    for texts in requests:
        assert cache.verdicts(*_request(texts), _no_fallback) == {r: _expected(t) for r, t in enumerate(texts)}
        for text in [t for t in texts if t not in model]:  # looked up first, then the new ones kept in order
            if text not in model:
                if len(model) >= 4:
                    model.clear()
                model.add(text)
        assert len(cache) == len(model) <= 4
        assert all(cache.get(_key(text)) == _expected(text) for text in model)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.sampled_from(["Bot/1", "curl/8", "Mozilla/5.0", "MOZILLA/5.0 bot", "x", "y", "z/1"]), max_size=12), max_size=20))
def test_with_the_doorkeeper_the_cache_answers_what_the_model_does(requests: list[list[str]]) -> None:
    """With the doorkeeper (what the processor runs), the verdicts are the same; a new user agent is
    kept the second time it is seen, in a later request or the same one."""
    cache = _cache(max_entries=4, doorkeeper=True)
    model: set[str] = set()
    seen: set[str] = set()
    for texts in requests:
        assert cache.verdicts(*_request(texts), _no_fallback) == {r: _expected(t) for r, t in enumerate(texts)}
        for text in [t for t in texts if t not in model]:
            if text not in seen:
                seen.add(text)
            elif text not in model:
                if len(model) >= 4:
                    model.clear()
                model.add(text)
        assert len(cache) == len(model) <= 4
        assert all(cache.get(_key(text)) == _expected(text) for text in model)


def test_the_doorkeeper_keeps_one_off_user_agents_out() -> None:
    """A flood of user agents seen once is classified, not kept (but for the doorkeeper's rare false
    positive), so the cache does not start over; seen again, they are kept."""
    cache = _cache(max_entries=5000, doorkeeper=True)
    texts = [f"Mozilla/5.0 agent {n}" if n % 2 else f"curl/8 {n}" for n in range(2000)]
    for start in range(0, 2000, 500):
        request = texts[start : start + 500]
        assert cache.verdicts(*_request(request), _no_fallback) == {r: _expected(t) for r, t in enumerate(request)}
    assert len(cache) <= 20 and cache.first_sightings + len(cache) == 2000 and cache.cleared == 0
    for start in range(0, 2000, 500):
        cache.verdicts(*_request(texts[start : start + 500]), _no_fallback)
    assert len(cache) == 2000 and cache.cleared == 0
    assert all(cache.get(_key(text)) == _expected(text) for text in texts)


def test_the_doorkeeper_starts_over_once_it_has_seen_enough() -> None:
    """Its bits start over after 32,768 first sightings: what it saw before is new to it again."""
    cache = _cache(max_entries=100, doorkeeper=True)
    cache.verdicts(*_request(["bot once"]), _no_fallback)
    others = [f"agent {n}" for n in range(40_000)]
    for start in range(0, len(others), 1000):
        cache.verdicts(*_request(others[start : start + 1000]), _no_fallback)
    before = cache.first_sightings
    assert cache.verdicts(*_request(["bot once"]), _no_fallback) == {0: "robot"}
    assert cache.first_sightings == before + 1 and cache.get(_key("bot once")) is None


_PIECES = st.sampled_from(["bot", "BO", "t", "cu", "rl/", "Mozilla/", "mozil", "la/5.0 ", "x", "y" * 7, "z" * 31, " "])
_TEXTS = st.lists(_PIECES, max_size=60).map("".join)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.lists(_TEXTS, min_size=1, max_size=3),
    st.lists(st.lists(st.tuples(st.integers(0, 2), _TEXTS), min_size=1, max_size=10), min_size=1, max_size=8),
)
def test_resuming_from_a_checkpoint_gives_what_a_fresh_start_gives(
    beginnings: list[str], requests: list[list[tuple[int, str]]]
) -> None:
    """New user agents that share beginnings (up to ~400 bytes, needles across every 32-byte
    boundary, in the beginning or the rest) get their first needle's verdict however the automaton
    resumed them. The cache holds 2 entries: most are new to it, its checkpoints stay."""
    cache = _cache(max_entries=2)
    for request in requests:
        texts = [beginnings[i % len(beginnings)] + rest for i, rest in request]
        texts = [t for t in texts if t]  # an empty string is not the automaton's
        assert cache.verdicts(*_request(texts), _no_fallback) == {r: _expected(t) for r, t in enumerate(texts)}


def test_a_beginning_seen_before_is_resumed_from_its_checkpoint() -> None:
    """The state after a beginning is kept, a step (32 bytes) deeper each time it comes again: what was
    found in it (a needle before the checkpoint, one across it) carries on; the rest is read."""
    cache = _cache(max_entries=1)
    cases = [  # (user agent, its verdict, of 4 with new ends: how many resumed)
        ("x" * 30 + "curl/" + "y" * 100, "client", 3),  # curl/ across the 32-byte checkpoint
        ("bot" + "x" * 100, "robot", 3),  # found before the checkpoint, nothing after
        ("z" * 64 + "y" * 40, "nothing", 3),
        ("z" * 64 + "y" * 20 + "Mozilla/5.0", "browser", 4),  # found in the rest only; begins as the last
    ]
    for text, verdict, resumed in cases:
        before = cache.resumed
        for n in range(4):  # the same beginning, a new end each time
            assert cache.verdicts(*_request([f"{text} {n}"]), _no_fallback) == {0: verdict}, (text, n)
        assert cache.resumed - before == resumed, text  # the first of a new beginning kept its first checkpoint
    before = cache.resumed
    assert cache.verdicts(*_request(["Z" * 64 + "y" * 40]), _no_fallback) == {0: "nothing"}
    assert cache.resumed == before  # matched by bytes: another case is another beginning


def test_a_full_cache_starts_over() -> None:
    cache = _cache(max_entries=3)
    cache.verdicts(*_request(["a", "b", "c"]), _no_fallback)
    assert (len(cache), cache.cleared) == (3, 0)
    cache.verdicts(*_request(["a", "d"]), _no_fallback)  # a is kept; d does not fit
    assert (len(cache), cache.cleared) == (1, 1)
    assert cache.get(_key("d")) == "nothing" and cache.get(_key("a")) is None


def test_a_new_user_agent_twice_in_the_request_that_fills_the_cache_keeps_it() -> None:
    """The second occurrence finds the first kept, even in a cache it has just filled: no start-over."""
    cache = _cache(max_entries=3)
    cache.verdicts(*_request(["a", "b"]), _no_fallback)
    assert cache.verdicts(*_request(["c", "curl/1", "c"]), _no_fallback) == {0: "nothing", 1: "client", 2: "nothing"}
    assert (len(cache), cache.cleared) == (2, 1)  # curl/1 did not fit: started over; then c kept again
    cache = _cache(max_entries=3)
    cache.verdicts(*_request(["a", "b"]), _no_fallback)
    cache.verdicts(*_request(["c", "c"]), _no_fallback)
    assert (len(cache), cache.cleared) == (3, 0)


def test_a_key_over_1_kib_is_classified_every_time_but_never_kept() -> None:
    cache = _cache()
    longest = "curl/" + "x" * 1015  # its key is exactly 1 KiB: the id, a tag, a 2-byte length, 1020 characters
    assert len(_key(longest)) == 1024
    too_long = longest + "x"
    assert cache.verdicts(*_request([longest, too_long]), _no_fallback) == {0: "client", 1: "client"}
    assert cache.get(_key(longest)) == "client" and cache.get(_key(too_long)) is None
    assert len(cache) == 1


def test_the_bytes_kept_are_bounded() -> None:
    """At most 256 bytes of keys per entry on average (and 64 KiB at least): long keys fill that
    before the count does, and the cache starts over."""
    cache = _cache(max_entries=100)  # 64 KiB of keys
    texts = [f"{n:04d}" + "x" * 900 for n in range(300)]
    for start in range(0, 300, 10):
        cache.verdicts(*_request(texts[start : start + 10]), _no_fallback)
        assert cache.key_bytes <= 64 * 1024
    assert cache.cleared >= 3 and len(cache) < 100


@pytest.mark.parametrize("doorkeeper", [False, True])
def test_the_fallback_decides_any_other_value_once_per_request(doorkeeper: bool) -> None:
    """Not one ASCII string (an array, non-ASCII text, an empty string): the fallback's verdict,
    asked once however often it occurs, and kept (the doorkeeper lets these in at once: each costs a
    call into Python); an exception from it leaves the cache usable."""
    odd = [AnyValue(string_value="été bot"), AnyValue(int_value=3), AnyValue(string_value="")]
    payload, entries = bytearray(), array("I")
    for record, value in enumerate(odd * 2):
        raw = value.SerializeToString()
        entries.extend((record, KEY_ID, len(payload), len(payload) + len(raw)))
        payload += raw
    asked: list[bytes] = []

    def fallback(key: bytes):
        asked.append(key)
        return None if key[1:] == odd[2].SerializeToString() else ("decoded", key)

    cache = _cache(doorkeeper=doorkeeper)
    own = cache.verdicts(bytes(payload), entries, fallback)
    keys = [bytes((KEY_ID,)) + value.SerializeToString() for value in odd]
    assert asked == keys
    assert own == {0: ("decoded", keys[0]), 1: ("decoded", keys[1]), 3: ("decoded", keys[0]), 4: ("decoded", keys[1])}
    assert len(cache) == 3 and cache.first_sightings == 0

    def broken(key: bytes):
        raise RuntimeError("classifier failed")

    with pytest.raises(RuntimeError):
        _cache().verdicts(bytes(payload), entries, broken)
    assert cache.verdicts(*_request(["curl/1"]), _no_fallback) == {0: "client"}


def test_verdicts_are_released_when_the_cache_starts_over() -> None:
    verdict = object()
    before = sys.getrefcount(verdict)
    cache = wire.UserAgentCache(2, bytes(16), None, [])
    cache.verdicts(*_request(["a", "b"]), lambda key: verdict)
    assert sys.getrefcount(verdict) == before + 2
    cache.verdicts(*_request(["c"]), lambda key: verdict)  # full: starts over, then keeps c
    assert sys.getrefcount(verdict) == before + 1
    cache.clear()
    assert sys.getrefcount(verdict) == before and len(cache) == 0
    cache.verdicts(*_request(["d"]), lambda key: verdict)
    del cache
    assert sys.getrefcount(verdict) == before


def test_starting_over_after_growing_forgets_every_entry_and_releases_its_verdicts() -> None:
    """The cache starts over by visiting the slots it filled (not every slot): after the table grew
    four times, every entry is still found before, none after, and each reference is released once."""
    verdict = object()
    before = sys.getrefcount(verdict)
    cache = wire.UserAgentCache(500, bytes(16), None, [])
    for round_ in range(3):
        texts = [f"agent {round_}.{n}" for n in range(500)]
        for start in range(0, 500, 100):
            cache.verdicts(*_request(texts[start : start + 100]), lambda key: verdict)
        assert len(cache) == 500 and cache.cleared == 2 * round_ and sys.getrefcount(verdict) == before + 500
        assert all(cache.get(_key(text)) is verdict for text in texts)
        cache.verdicts(*_request([f"one more {round_}"]), lambda key: verdict)  # full: starts over
        assert len(cache) == 1 and cache.cleared == 2 * round_ + 1 and sys.getrefcount(verdict) == before + 1
        assert not any(cache.get(_key(text)) is verdict for text in texts)
        cache.clear()
        assert len(cache) == 0 and sys.getrefcount(verdict) == before
    del cache
    assert sys.getrefcount(verdict) == before


def test_grows_past_its_first_size_and_keeps_every_entry() -> None:
    cache = _cache(max_entries=5000)
    texts = [f"agent {n} curl/" if n % 3 else f"agent {n}" for n in range(5000)]
    for start in range(0, 5000, 500):
        cache.verdicts(*_request(texts[start : start + 500]), _no_fallback)
    assert len(cache) == 5000 and cache.cleared == 0
    assert all(cache.get(_key(text)) == _expected(text) for text in texts)


@pytest.mark.parametrize(
    "entries",
    [
        array("I", [0, KEY_ID, 0, 99]),  # past the payload's end
        array("I", [0, KEY_ID, 3, 2]),  # ends before it starts
        array("I", [0, 256, 0, 2]),  # a key id past one byte
        b"\0" * 15,  # not whole entries
    ],
)
def test_refuses_user_agents_outside_the_payload(entries) -> None:
    payload, _ = _request(["curl/1"])
    with pytest.raises(ValueError):
        _cache().verdicts(payload, entries, _no_fallback)


def test_refuses_a_bad_bound_seed_or_automaton() -> None:
    automaton = FirstNeedle(NEEDLES, [0, 1, 2]).automaton
    for max_entries, seed in [(0, bytes(16)), (2**24 + 1, bytes(16)), (10, bytes(15))]:
        with pytest.raises(ValueError):
            wire.UserAgentCache(max_entries, seed, automaton, TABLES)
    with pytest.raises(ValueError):
        wire.UserAgentCache(10, bytes(16), "not an automaton", TABLES)
    with pytest.raises(TypeError):
        wire.UserAgentCache(10, bytes(16), automaton, "not a list")
