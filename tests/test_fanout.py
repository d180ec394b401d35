"""The fan-out program (flowsift.io.fanout) run on every frame of the corpus by a classic BPF
interpreter: both directions of a flow get one value, whatever the headers in between, and the
values spread. The kernel running it is tested in test_afpacket.py."""
import collections
import struct

import pytest

import cbpf
from conftest import corpus_reference
from flowsift.io import Batch, fanout, open_capture

EXTENSIONS = (0, 43, 60)


def network(frame):
    """(ethertype, bytes from the network header) of an Ethernet frame, its 802.1Q tags taken
    off as the kernel takes them before a fan-out program runs."""
    et, off = struct.unpack_from(">H", frame, 12)[0], 14
    while et in (0x8100, 0x88A8) and len(frame) >= off + 4:
        et, off = struct.unpack_from(">H", frame, off + 2)[0], off + 4
    return et, frame[off:]


def keys(et, ip):
    """(the host pair, the flow when the packet shows its ports, whether it is an atomic IPv6
    fragment), read with struct apart from the program."""
    if et == 0x0800 and len(ip) >= 20:
        hosts, proto, at = frozenset((ip[12:16], ip[16:20])), ip[9], 4 * (ip[0] & 0xF)
        whole = not struct.unpack_from(">H", ip, 6)[0] & 0x3FFF
        atomic = False
    elif et == 0x86DD and len(ip) >= 40:
        hosts, proto, at, whole, atomic = frozenset((ip[8:24], ip[24:40])), ip[6], 40, True, False
        for _ in range(4):
            if proto in EXTENSIONS and len(ip) >= at + 2:
                proto, at = ip[at], at + 8 * (ip[at + 1] + 1)
            elif proto == 44 and len(ip) >= at + 8:
                whole = atomic = not struct.unpack_from(">H", ip, at + 2)[0] & 0xFFF9
                proto, at = ip[at], at + 8
            else:
                break
    else:
        return None, None, False
    if not whole or proto not in (6, 17) or len(ip) < at + 4:
        return hosts, None, False
    sport, dport = struct.unpack_from(">HH", ip, at)
    ends = frozenset(((ip[12:16] if et == 0x0800 else ip[8:24], sport),
                      (ip[16:20] if et == 0x0800 else ip[24:40], dport)))
    return hosts, (proto, ends), atomic


@pytest.fixture(scope="module")
def placed(corpus):
    """For each hash: key -> the set of values its frames got; and what was seen."""
    progs = {h: fanout.program(h) for h in fanout.HASHES}
    by = {"flow": collections.defaultdict(set), "hosts": collections.defaultdict(set)}
    seen = collections.Counter()
    for f in corpus_reference():
        cap, batch = open_capture(str(corpus / f["file"])), Batch(512)
        while cap.fill(batch):
            for i in range(batch.n):
                if batch.array["linktype"][i] != 1:        # Ethernet only
                    continue
                et, ip = network(bytes(batch.frame(i)))
                hosts, flow, atomic = keys(et, ip)
                if hosts is None:
                    continue
                by["hosts"][hosts].add(cbpf.run(progs["hosts"], ip, et))
                seen["ip"] += 1
                if flow is not None:
                    by["flow"][flow].add(cbpf.run(progs["flow"], ip, et))
                    seen["atomic"] += atomic
    return by, seen


def test_every_frame_of_a_flow_gets_one_value(placed):
    by, seen = placed
    assert seen["ip"] > 15_000 and seen["atomic"] > 0, seen
    assert len(by["flow"]) > 900
    split = {k: v for k, v in by["flow"].items() if len(v) > 1}
    assert not split, f"{len(split)} flows placed in more than one socket"


def test_every_frame_of_a_host_pair_gets_one_value_fragments_too(placed):
    by, _ = placed
    split = {k: v for k, v in by["hosts"].items() if len(v) > 1}
    assert not split, f"{len(split)} host pairs placed in more than one socket"


@pytest.mark.parametrize("sockets", [2, 3, 4, 8])
def test_flows_spread_over_the_sockets(placed, sockets):
    by, _ = placed
    counts = collections.Counter(next(iter(v)) % sockets for v in by["flow"].values())
    share = len(by["flow"]) / sockets
    assert len(counts) == sockets and all(0.7 * share < n < 1.3 * share for n in counts.values()), counts


def test_an_unknown_hash_is_refused():
    with pytest.raises(ValueError, match="'ports'"):
        fanout.program("ports")
