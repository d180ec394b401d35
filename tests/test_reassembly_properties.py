"""The compiled engine against the pure-Python reference: same bytes, gaps and conflicts.

Random streams are cut into random segments, permuted, duplicated with conflicting bytes,
partly lost, partly cut by the capture, interleaved with receiver ACKs (some advertising a zero
window, some followed by a one-byte probe), with sequence numbers anywhere in the 32-bit space
(so wraparound happens), under every overlap policy.
`HYPOTHESIS_PROFILE=deep` runs thousands of cases.
"""
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from reassembly_helpers import client_stream, conversation, run_engine
from flowsift.reassembly.reference import ReferenceDirection

POLICIES = ["first", "last", "bsd", "linux", "windows", "solaris"]


@st.composite
def scenarios(draw):
    isn = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 3000, 2**32 - 1)))
    size = draw(st.integers(0, 2500))
    seed = draw(st.integers(0, 2**31))
    rnd = random.Random(seed)
    stream = bytes(rnd.getrandbits(8) for _ in range(size))
    segs = []
    pos = 0
    while pos < size:
        n = rnd.randint(1, 400)
        segs.append((pos, n))
        pos += n
    events = []
    ordered = rnd.random() < 0.3                         # sent in order: probes meet a closed window
    for start, n in segs:
        r = rnd.random()
        if r < 0.12:
            continue                                     # lost: a hole
        payload = stream[start:start + n]
        wire = None
        if rnd.random() < 0.1 and n > 1:
            cut = rnd.randint(1, n - 1)                  # the capture kept only the first bytes
            payload, wire = payload[:cut], n
        events.append(["data", start, payload, wire])
        if ordered and rnd.random() < 0.2:               # the window closes: a probe, maybe it opens
            events += [["ack", start + n, 0], ["data", start + n, bytes([rnd.getrandbits(8)]), None]]
            if rnd.random() < 0.7:
                events.append(["ack", start + n, 8192])
        if rnd.random() < 0.3:                           # a copy, maybe shifted, maybe different
            s2 = max(0, start + rnd.randint(-50, 50))
            n2 = rnd.randint(1, 300)
            copy = bytearray(stream[s2:s2 + n2])
            if rnd.random() < 0.5:
                for _ in range(rnd.randint(1, 5)):
                    if copy:
                        copy[rnd.randrange(len(copy))] ^= 0xFF
            if copy:
                events.append(["data", s2, bytes(copy), None])
    if not ordered:
        rnd.shuffle(events)
    for _ in range(draw(st.integers(0, 3))):             # receiver ACKs, anywhere
        events.insert(rnd.randint(0, len(events)), ["ack", rnd.randint(0, size + 10), rnd.choice([0, 8192])])
    policy = draw(st.sampled_from(POLICIES))
    return isn, events, policy


def reference(isn, events, policy):
    ref = ReferenceDirection(isn, policy)
    for ev in events:
        if ev[0] == "data":
            ref.segment((isn + 1 + ev[1]) % 2**32, ev[2], ev[3])
        else:
            ref.ack((isn + 1 + ev[1]) % 2**32, *ev[2:])
    data, gaps, conflicts = ref.finish()
    return data, gaps, conflicts


def engine_events(isn, events):
    out = []
    for ev in events:
        if ev[0] == "data":
            out.append(("data", isn + 1 + ev[1], ev[2], ev[3]))
        else:
            out.append(("ack", isn + 1 + ev[1], *ev[2:]))
    return out


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(scenarios())
def test_engine_matches_reference(tmp_path, scenario):
    isn, events, policy = scenario
    r = run_engine(tmp_path, conversation(isn, engine_events(isn, events)), policy=policy)
    got, want = client_stream(r), reference(isn, events, policy)
    if got != want and os.environ.get("FLOWSIFT_DUMP"):
        with open(os.environ["FLOWSIFT_DUMP"], "w") as f:
            f.write(repr((isn, events, policy)))
    assert got == want


@pytest.mark.parametrize("policy,want", [
    # held "AAAA" at 4..8, then "BBBBBB" at 2..8 (starts before, same end), then 0..2 fills
    ("first", b"xxBBAAAA"), ("last", b"xxBBBBBB"), ("bsd", b"xxBBBBBB"), ("windows", b"xxBBBBBB"),
    ("linux", b"xxBBBBBB"), ("solaris", b"xxBBBBBB"),
])
def test_policy_new_segment_starting_before(tmp_path, policy, want):
    isn = 1000
    events = [["data", 4, b"AAAA", None], ["data", 2, b"BBBBBB", None], ["data", 0, b"xx", None]]
    r = run_engine(tmp_path, conversation(isn, engine_events(isn, events)), policy=policy)
    data, gaps, conflicts = client_stream(r)
    assert data == want and gaps == [] and conflicts == 4
    assert (data, gaps, conflicts) == reference(isn, events, policy)


@pytest.mark.parametrize("policy,want", [
    # held "AAAA" at 2..6, then "BBBBBB" at 2..8 (same start, ends after)
    ("first", b"xxAAAABB"), ("last", b"xxBBBBBB"), ("bsd", b"xxAAAABB"), ("windows", b"xxAAAABB"),
    ("linux", b"xxBBBBBB"), ("solaris", b"xxBBBBBB"),
])
def test_policy_same_start_longer(tmp_path, policy, want):
    isn = 2**32 - 3      # and the sequence numbers wrap inside the stream
    events = [["data", 2, b"AAAA", None], ["data", 2, b"BBBBBB", None], ["data", 0, b"xx", None]]
    r = run_engine(tmp_path, conversation(isn, engine_events(isn, events)), policy=policy)
    assert client_stream(r) == (want, [], 4)
    assert client_stream(r) == reference(isn, events, policy)


def test_delivered_bytes_are_final_and_conflicts_reported(tmp_path):
    isn = 5
    events = [["data", 0, b"GOOD", None], ["data", 1, b"XXX", None]]
    for policy in ("first", "last"):
        r = run_engine(tmp_path, conversation(isn, engine_events(isn, events)), policy=policy)
        assert client_stream(r) == (b"GOOD", [], 3)
        overlaps = [e for e in r.collector.events if type(e).__name__ == "Overlap"]
        assert [(o.offset, o.length, o.conflicts) for o in overlaps] == [(1, 3, 3)]


def test_gap_is_never_filled(tmp_path):
    isn = 77
    events = [["data", 0, b"abc", None], ["data", 10, b"xyz", None]]
    r = run_engine(tmp_path, conversation(isn, engine_events(isn, events)))
    data, gaps, _ = client_stream(r)
    assert data == b"abcxyz" and gaps == [[3, 7]]
    from flowsift.reassembly import Gap
    (gap,) = [e for e in r.collector.events if isinstance(e, Gap)]
    assert (gap.offset, gap.length, gap.reason) == (3, 7, "closed")


def test_acked_hole_waits_for_a_late_retransmission(tmp_path):
    """The receiver ACKs past a hole; the missing bytes arrive right after (within the grace)."""
    isn = 9
    evs = [("data", isn + 1, b"aaaa", None), ("data", isn + 9, b"cccc", None), ("ack", isn + 13),
           ("data", isn + 5, b"bbbb", None)]
    r = run_engine(tmp_path, conversation(isn, evs, gap_ns=10**8))      # 100 ms apart
    assert client_stream(r) == (b"aaaabbbbcccc", [], 0)
    # with a packet more than the grace after the ACK before it, the hole is given up first
    evs = evs[:3] + [("ack", isn + 13)] + evs[3:]
    r = run_engine(tmp_path, conversation(isn, evs, gap_ns=10**9))
    data, gaps, _ = client_stream(r)
    assert data == b"aaaacccc" and gaps == [[4, 4]]
    from flowsift.reassembly import Gap
    assert [e.reason for e in r.collector.events if isinstance(e, Gap)] == ["acked"]
