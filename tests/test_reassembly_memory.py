"""Memory follows the connections kept, not every connection seen: an ended connection's record
is freed after its end, its flow after the linger (late packets until then stay late)."""
import os
import subprocess
import sys

import pytest

from pcapgen import A, B, ether, ipv4, pcap, tcp
from flowsift.reassembly import Reassembler

SYN, SYNACK, PSH, FIN = 0x02, 0x12, 0x18, 0x11


def seg(t, src, dst, sport, dport, seq, ack, flags, payload=b""):
    return (t, 0, ether(ipv4(src, dst, 6, tcp(sport, dport, seq=seq, ack=ack, flags=flags, payload=payload))))


def conversation(t, sport, payload=b"hello"):
    """SYN, SYN-ACK, data, FIN, FIN at second t: the connection ends at once (fin)."""
    n = len(payload)
    return [seg(t, A, B, sport, 80, 100, 0, SYN), seg(t, B, A, 80, sport, 500, 101, SYNACK),
            seg(t, A, B, sport, 80, 101, 501, PSH, payload), seg(t, A, B, sport, 80, 101 + n, 501, FIN),
            seg(t, B, A, 80, sport, 501, 102 + n, FIN)]


def test_a_late_packet_is_late_within_the_linger_and_a_new_connection_after_it(tmp_path):
    late = lambda t: seg(t, A, B, 5000, 80, 106, 501, PSH, b"late")     # noqa: E731
    path = tmp_path / "late.pcap"
    path.write_bytes(pcap(conversation(1000, 5000) + [late(1030), late(1100)]))

    r = Reassembler()                                    # linger 60 s
    r.feed_capture(path)
    assert r.engine.late_packets == 1                    # 30 s after the end
    assert sorted(r.collector.closed) == [0, 1]          # 100 s after: the tuple was forgotten
    assert r.collector.closed[1]["dirs"][0]["midstream"]
    with pytest.raises(KeyError, match="released"):
        r.engine.connection(0)

    r = Reassembler(finished_linger=1000.0)
    r.feed_capture(path)
    assert r.engine.late_packets == 2 and sorted(r.collector.closed) == [0]


@pytest.mark.parametrize("after,late", [(30, 1), (100, 0)])
def test_an_ended_flow_handed_over_lingers_from_when_it_ended(tmp_path, after, late):
    """A re-shard hands lingering flows to another engine, possibly one that saw no packet yet:
    their linger runs on from their end there, not from the new engine's clock."""
    first, then = tmp_path / "first.pcap", tmp_path / "then.pcap"
    first.write_bytes(pcap(conversation(1000, 5000)))
    then.write_bytes(pcap([seg(1000 + after, A, B, 5000, 80, 106, 501, PSH, b"late")]))
    r = Reassembler()
    r.feed_capture(first)
    assert r.engine.released_connections == 1
    (i, _, _), = r.flows.live()
    rec = r.engine.export_flow(i)
    assert rec["done"]
    other = Reassembler()
    other.engine.import_flow(rec)
    other.feed_capture(then)
    assert other.engine.late_packets == late
    assert len(other.collector.closed) == 1 - late


def test_records_and_flows_of_ended_connections_are_released(tmp_path):
    frames = [f for k in range(2000) for f in conversation(1000 + k // 100, 1024 + k)]   # 100 a second
    path = tmp_path / "many.pcap"
    path.write_bytes(pcap(frames))
    r = Reassembler(finished_linger=5.0)
    r.feed_capture(path)
    assert len(r.collector.closed) == 2000 and r.engine.released_connections == 2000
    # flows ended more than 5 s before the last packet left the table, chunk by chunk
    assert 1400 <= r.flows.released_flows <= 1500
    with pytest.raises(KeyError, match="released"):
        r.flows.flow(0)
    assert r.flows.flow(1999)["live"]


@pytest.mark.parametrize("acked", [True, False])
def test_a_gateway_frees_records_and_its_store_still_retires_what_is_acknowledged(tmp_path, acked):
    """The record store copies what it needs of a connection by its end (identity, the last
    ACKs), so the engine frees the record under a gateway too; a file whose bytes the peer
    acknowledged is retired once every module is done with it, one with bytes unacknowledged
    stays (the store's copy of the ACKs, not the freed record, decides)."""
    from flowsift.gateway import Gateway
    frames = conversation(1000, 5000)
    if not acked:                       # the server's FIN acknowledges the SYN only
        frames[-1] = seg(1000, B, A, 80, 5000, 501, 101, FIN)
    path = tmp_path / "one.pcap"
    path.write_bytes(pcap(frames))
    g = Gateway(str(tmp_path / "store"))
    g.store.register_module(0)
    g.run_capture(path)
    assert g.reassembler.engine.released_connections == 1
    with pytest.raises(KeyError, match="released"):
        g.reassembler.engine.connection(0)
    assert g.store.identity(0) == (6, 4, A, 5000, B, 80)
    records = g.store.latest([0])[0][0]
    done = g.store.module_done(0, 0, records)
    assert done["retired"] is acked
    assert os.path.exists(g.store.path(0)) is not acked
    if acked:
        assert done["reclaimed"] is None        # at once, without reading its records back


def kept_kib(capture):
    """Anonymous memory of a process that reassembled `capture` and still holds its engine:
    what the engine keeps once every connection ended."""
    code = ("import sys; from flowsift.reassembly import Reassembler; from flowsift.reassembly._engine import CountSink\n"
            "r = Reassembler(sink=CountSink()); r.feed_capture(sys.argv[1])\n"
            "print([l for l in open('/proc/self/status') if l.startswith('RssAnon')][0].split()[1])")
    res = subprocess.run([sys.executable, "-c", code, str(capture)], capture_output=True, text=True, check=True)
    return int(res.stdout.split()[-1])


@pytest.fixture(scope="module")
def twenty_and_eighty_thousand(tmp_path_factory):
    """Captures of 20,000 and 80,000 short connections, 1,000 a second, at most 1,000 open."""
    from test_store_faults import many_connections
    d = tmp_path_factory.mktemp("many")
    return many_connections(d / "20k.pcap", 20_000), many_connections(d / "80k.pcap", 80_000)


def test_memory_kept_does_not_grow_with_connections_seen(twenty_and_eighty_thousand):
    """60,000 more short connections cost far less than the 0.9 KB each that kept records did:
    what grows is the flows of the last 60 s (the linger)."""
    small, large = twenty_and_eighty_thousand
    grown = kept_kib(large) - kept_kib(small)
    assert grown * 1024 < 60_000 * 150, f"memory kept grew by {grown} KiB for 60,000 more connections"


RSS_MODULE = """
from flowsift.modules import Module


class Rss(Module):
    \"\"\"Its process's anonymous memory at the end of the run.

    Synopsis: rss.py
    Reads: each connection's end
    Writes: nothing
    Options: none
    Counters: connections
    Example: flowsift chain rss.py trace.pcap --inline
    \"\"\"
    name = "rss"

    def on_close(self, flow, reason):
        self.count("connections")

    def summary(self):
        with open("/proc/self/status") as f:
            return [{"kib": next(int(l.split()[1]) for l in f if l.startswith("RssAnon"))}]
"""


def test_a_chain_keeps_memory_for_what_it_holds_not_for_every_connection(tmp_path, twenty_and_eighty_thousand):
    """A chain (gateway, store, module runner in one process) over 60,000 more connections grows
    by the flows of the linger, not by the ~1 KB each that its engine records, store state and
    runner kept before."""
    import json
    from conftest import run_cli
    module = tmp_path / "rss.py"
    module.write_text(RSS_MODULE)
    kib = []
    for capture in twenty_and_eighty_thousand:
        summary = json.loads(run_cli("chain", module, capture, "--inline", "--json", check=True).stdout)
        assert summary["modules"]["rss"]["connections"] == int(capture.name[:2]) * 1000
        kib.append(summary["tables"]["rss"][0]["kib"])
    grown = kib[1] - kib[0]
    assert grown * 1024 < 60_000 * 300, f"a chain's memory grew by {grown} KiB for 60,000 more connections"


@pytest.mark.parametrize("announcing", [False, True])
def test_a_store_forgets_what_it_retired_unless_a_registry_may_ask(tmp_path, announcing):
    """Retired files' connection state goes, 64 connections at a time; a registry that announces
    may be rebuilt from the store later, which then still names every connection."""
    from flowsift.gateway import Gateway
    from test_store_faults import many_connections
    capture = many_connections(tmp_path / "many.pcap", 2048)
    g = Gateway(str(tmp_path / "store"))
    g.store.forget_retired = not announcing
    g.store.register_module(0)
    g.run_capture(capture)
    held = g.store.state_chunks
    assert held == 2048 // 64
    for conn in range(2048):
        assert g.store.module_done(conn, 0, g.store.latest([conn])[0][0])["retired"]
    assert g.store.counters()["retired"] == 2048
    if announcing:
        assert g.store.state_chunks == held
        assert g.store.identity(1999)[3] == 1024 + 1999
    else:
        assert g.store.state_chunks == 0
        assert g.store.latest([5]) == [(0, 0, True)]       # a file that is gone
        with pytest.raises(KeyError):
            g.store.identity(5)
        with pytest.raises(KeyError):
            g.store.module_done(5, 0, 5)


def test_a_connection_set_keeps_numbers_in_a_bitmap():
    from flowsift.io._connset import ConnSet
    s = ConnSet([7, 3, 100_000, 3])
    assert len(s) == 3 and list(s) == [3, 7, 100_000]
    assert 3 in s and 4 not in s and 2**40 not in s and -1 not in s and "3" not in s
    s.discard(3)
    s.discard(8)
    assert len(s) == 2 and 3 not in s and list(s) == [7, 100_000]
    s.add(2**32 - 1)
    assert 2**32 - 1 in s and len(s) == 3
    with pytest.raises(OverflowError):
        s.add(2**32)
