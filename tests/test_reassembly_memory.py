"""Memory follows the connections kept, not every connection seen: an ended connection's record
is freed after its end, its flow after the linger (late packets until then stay late)."""
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


def test_a_record_store_keeps_every_record(tmp_path, corpus):
    """The gateway's store reads records after their connection ended (publish, reclaim,
    retire): its engine releases nothing."""
    from flowsift.gateway import Gateway
    g = Gateway(str(tmp_path / "store"), keep=True)
    g.run_capture(corpus / "http__zeek__get.pcap")
    assert g.reassembler.engine.released_connections == 0
    assert g.reassembler.engine.connection(0)["dirs"][0]["packets"] > 0


def kept_kib(capture):
    """Anonymous memory of a process that reassembled `capture` and still holds its engine:
    what the engine keeps once every connection ended."""
    code = ("import sys; from flowsift.reassembly import Reassembler; from flowsift.reassembly._engine import CountSink\n"
            "r = Reassembler(sink=CountSink()); r.feed_capture(sys.argv[1])\n"
            "print([l for l in open('/proc/self/status') if l.startswith('RssAnon')][0].split()[1])")
    res = subprocess.run([sys.executable, "-c", code, str(capture)], capture_output=True, text=True, check=True)
    return int(res.stdout.split()[-1])


def test_memory_kept_does_not_grow_with_connections_seen(tmp_path):
    """60,000 more short connections (at most 1,000 open at once) cost far less than the
    0.9 KB each that kept records did: what grows is the flows of the last 60 s (the linger)."""
    from test_store_faults import many_connections
    small = many_connections(tmp_path / "20k.pcap", 20_000)
    large = many_connections(tmp_path / "80k.pcap", 80_000)
    grown = kept_kib(large) - kept_kib(small)
    assert grown * 1024 < 60_000 * 150, f"memory kept grew by {grown} KiB for 60,000 more connections"
