"""Targeted reassembly cases from the corpus, one per category."""
import hashlib
import json

import pytest

from conftest import run_cli, small_tmpfs
from flowsift.reassembly import Gap, Reassembler


def run(path, **options):
    r = Reassembler(**options)
    r.feed_capture(path)
    return r


def streams(r):
    """conn -> (client bytes, server bytes)"""
    out = {}
    for conn in r.collector.closed:
        c = r.collector.dirs.get((conn, 0))
        s = r.collector.dirs.get((conn, 1))
        out[conn] = (bytes(c.data) if c else b"", bytes(s.data) if s else b"")
    return out


def test_wrap_and_its_control_give_identical_bytes(corpus):
    wrapped = run(corpus / "wrap__pcpp__one_tcp_stream_max_seq.pcap")
    control = run(corpus / "wrap-control__pcpp__one_tcp_stream.pcap")
    assert streams(wrapped) == streams(control)
    (c, s), = streams(wrapped).values()
    assert len(c) == 9948 and len(s) > 0


def test_evasion_captures_deliver_what_the_control_delivers(corpus):
    """RST/FIN injected before the handshake must not end the connection (bug-3286 captures)."""
    control = streams(run(corpus / "overlap__suri__without_evasion.pcap"))
    (ctrl_c, ctrl_s), = control.values()
    assert ctrl_c.startswith(b"GET /") and ctrl_s.startswith(b"HTTP/1.1 200")
    for name in ("overlap__suri__with_evasion_linux.pcap", "overlap__suri__with_evasion_windows.pcap"):
        r = run(corpus / name)
        (c, s), = streams(r).values()
        assert c.startswith(b"GET /") and s.startswith(b"HTTP/1.1 200")
        assert len(s) == len(ctrl_s)


@pytest.mark.parametrize("policy,want", [("first", b"GOOD"), ("last", b"GOOD")])
def test_exact_overlap_first_copy_delivered_conflict_reported(corpus, policy, want):
    r = run(corpus / "overlap__suri__eve-payload-01-tcp-exact-overlap.pcap", policy=policy)
    d = r.collector.dirs[(0, 0)]
    assert bytes(d.data) == want and d.conflicts == 4


def test_retransmissions_are_not_delivered_twice(corpus):
    r = run(corpus / "retrans__zeek__ssh-dups.pcap")
    info = next(iter(r.collector.closed.values()))
    assert sum(x["retransmissions"] for x in info["dirs"]) > 100
    for (conn, d), D in r.collector.dirs.items():
        assert len(D.data) == info["dirs"][d]["delivered"]
        assert not D.gaps


def test_gaps_keep_data_flowing_and_are_not_filled(corpus):
    r = run(corpus / "gap__suri__tcp-simple-gap2.pcap")
    d = r.collector.dirs[(0, 0)]
    assert d.gaps == [[4, 4]] and len(d.data) > 4
    assert b"\0\0\0\0" not in bytes(d.data)
    gaps = [e for e in r.collector.events if isinstance(e, Gap)]
    # the receiver ACKed past the hole, but the capture ends within the ACK grace: given up at close
    assert [(g.offset, g.length, g.reason) for g in gaps] == [(4, 4, "closed")]


def test_trailing_gap_from_fin(corpus):
    """The server's FIN says 2902 bytes were sent that the capture never saw."""
    r = run(corpus / "gap__zeek__miss_end_data.pcap")
    gaps = [e for e in r.collector.events if isinstance(e, Gap) and e.reason == "trailing"]
    assert sum(g.length for g in gaps) == 2902


def test_midstream_directions_are_flagged(corpus):
    r = run(corpus / "midstream__zeek__get_nosyn.pcap")        # neither SYN nor SYN-ACK captured
    info = next(iter(r.collector.closed.values()))
    assert info["dirs"][0]["midstream"] and info["dirs"][1]["midstream"]
    assert len(r.collector.dirs[(0, 0)].data) == 136
    r = run(corpus / "http__zeek__get.pcap")
    info = next(iter(r.collector.closed.values()))
    assert not info["dirs"][0]["midstream"] and not info["dirs"][1]["midstream"]


def test_a_connection_picked_up_from_the_server_side_names_its_client(corpus):
    """Without a SYN, the first sender is the client unless it sends from a service port to one
    that is not: then it is the server (650 HTTP responses, all from port 80)."""
    from flowsift.io import Batch, Decoder, FlowTable, open_capture
    cap = open_capture(str(corpus / "midstream__pcpp__650HttpResponses.pcap"))
    dec, flows, batch = Decoder(), FlowTable(), Batch(4096)
    dirs = {}
    while cap.fill(batch):
        dec.decode(batch)
        flows.update(batch)
        a = batch.array
        for sport, d in zip(a["sport"][a["proto"] == 6], a["dir"][a["proto"] == 6]):
            dirs.setdefault(int(sport), set()).add(int(d))
    assert dirs[80] == {1} and all(d == {0} for port, d in dirs.items() if port != 80)


def test_midstream_start_is_the_lowest_sequence_seen(corpus):
    """Second half first: the stream starts at the lowest sequence number, not the first seen."""
    r = run(corpus / "ooo__tcpflow__test1-out-of-order.pcap")
    d = r.collector.dirs[(0, 1)]            # sent from port 80 to 50955: the server's direction
    assert d.gaps == [] or d.gaps[0][0] > 0


def test_rst_data_is_delivered_and_close_reasons(corpus):
    r = run(corpus / "rstfin__suri__tcp-rst-with-data.pcap")
    info = next(iter(r.collector.closed.values()))
    assert info["dirs"][0]["close"] == "rst" and len(r.collector.dirs[(0, 0)].data) == 13
    r = run(corpus / "http__zeek__get.pcap")
    info = next(iter(r.collector.closed.values()))
    assert [d["close"] for d in info["dirs"]] == ["fin", "fin"]


def test_tcp_fast_open_data_on_the_syn(corpus):
    r = run(corpus / "rstfin__suri__tcp-fastopen-01.pcap")
    sizes = sorted(len(r.collector.dirs[(c, 0)].data) for c in r.collector.closed if (c, 0) in r.collector.dirs)
    assert 86 <= max(sizes)


def test_ip_fragments_are_reassembled_before_tcp(corpus):
    for name, want in (("frag__pcpp__frag_http_req.pcap", 1460), ("frag__suri__frag-eth-vlan-ipv6-tcp.pcap", 1000)):
        r = run(corpus / name)
        assert r.defrag.datagrams >= 1
        assert len(r.collector.dirs[(0, 0)].data) == want


def test_snaplen_cut_bytes_are_gaps(corpus):
    r = run(corpus / "trunc__zeek__timestamp.pcap")
    gaps = [e for e in r.collector.events if isinstance(e, Gap)]
    assert gaps and all(g.reason in ("snaplen", "trailing", "closed") for g in gaps)
    assert sum(g.length for g in gaps if g.reason == "snaplen") > 900_000


@pytest.mark.parametrize("order", ["cut,full,next", "cut,next,full", "full,cut,next"])
@pytest.mark.parametrize("apart_ns", [10**7, 2 * 10**9])
def test_bytes_the_capture_cut_are_filled_by_a_full_copy_that_soon_follows(tmp_path, order, apart_ns):
    """A segment cut by the snaplen, and the same segment whole (seen on another interface, or
    retransmitted) within the grace: its bytes are delivered, no gap. A packet of the
    connection past the grace gives the cut bytes up: a snaplen gap, whatever comes later."""
    from reassembly_helpers import client_stream, conversation, run_engine
    isn, stream = 1000, bytes(range(200))
    seg = {"cut": ("data", isn + 1, stream[:20], 100), "full": ("data", isn + 1, stream[:100], None),
           "next": ("data", isn + 101, stream[100:], None)}
    events = [seg[k] for k in order.split(",")]
    r = run_engine(tmp_path, conversation(isn, events, gap_ns=apart_ns))
    data, gaps, _ = client_stream(r)
    if not (apart_ns > 10**9 and order == "cut,next,full"):
        assert (data, gaps) == (stream, [])
        assert r.engine.totals()["retransmissions"] == 1       # whichever copy came second
    else:
        assert (data, gaps) == (stream[:20] + stream[100:], [[20, 80]])
        assert [g.reason for g in r.collector.events if isinstance(g, Gap)] == ["snaplen"]


def test_a_direction_the_capture_never_saw_is_a_gap_of_what_its_peer_acknowledged(corpus, tmp_path):
    """One-sided captures: the peer's ACKs prove how many bytes the unseen side sent (less the
    FIN's sequence number). With the server's packets filtered out, the gap is exactly the
    response the whole capture delivers."""
    path = corpus / "http__zeek__get.pcap"
    whole = [json.loads(l) for l in (_streams(path, tmp_path / "w") / "index.jsonl").read_text().splitlines()]
    one = [json.loads(l) for l in (_streams(path, tmp_path / "o", "--filter", "src host 141.142.228.5")
                                   / "index.jsonl").read_text().splitlines()]
    sent = next(d["bytes"] for d in whole if d["dir"] == "s2c")
    (unseen,) = [d for d in one if d["packets"] == 0]
    assert sent > 0 and unseen["bytes"] == 0
    assert unseen["gaps"] == [{"offset": 0, "length": sent, "file_offset": 0, "reason": "trailing"}]
    res = run_cli("gateway", corpus / "midstream__zeek__smtp-one-side-only.pcap", "--store", tmp_path / "g", "--keep",
                  "--json", check=True)
    assert json.loads(res.stdout)["connections"]["gap_bytes"] == 763
    listed = json.loads(run_cli("inspect", tmp_path / "g" / "c00000000.rec", "--json", check=True).stdout)
    assert listed["problems"] == [] and listed["streams"][1]["gaps"] == [[0, 763, "trailing"]]


def _streams(path, out, *args):
    run_cli("streams", path, "-o", out, *args, check=True)
    return out


def test_reused_tuple_after_close_is_a_new_connection(corpus):
    r = run(corpus / "rstfin__suri__tcp-fastopen-01.pcap")
    assert len(r.collector.closed) == 2


def test_idle_timeout_and_eviction(tmp_path):
    """Tiny timeouts and a table of one: connections end by timeout or eviction, and say so."""
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    frames = []
    for i in range(5):
        t = 1_000 + i * 100
        frames.append((t, 0, ether(ipv4(A, B, 6, tcp(1000 + i, 80, seq=10, flags=0x02)))))
        frames.append((t, 1, ether(ipv4(A, B, 6, tcp(1000 + i, 80, seq=11, flags=0x18, payload=b"hi")))))
    path = tmp_path / "idle.pcap"
    path.write_bytes(pcap(frames))
    r = Reassembler(embryonic_timeout=10.0, established_timeout=10.0)
    r.feed_capture(path)
    assert [r.collector.closed[c]["dirs"][0]["close"] for c in sorted(r.collector.closed)] == ["timeout"] * 4 + ["eof"]
    r = Reassembler(max_connections=1)
    r.feed_capture(path)
    assert r.engine.evictions == 4
    assert r.engine.peak_open == 1          # (it counted the new one before the eviction: 2)


def test_a_syn_flood_into_a_full_table_does_not_push_out_an_established_connection(tmp_path):
    """An established connection, idle while 50 SYNs from other ports fill a table of 10: the
    half-open connections are given up first (the idlest was the established one, whose later
    bytes then started a second, midstream connection)."""
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    frames = [(1000, 0, ether(ipv4(A, B, 6, tcp(40000, 80, seq=100, flags=0x02)))),
              (1000, 1, ether(ipv4(B, A, 6, tcp(80, 40000, seq=500, ack=101, flags=0x12)))),
              (1000, 2, ether(ipv4(A, B, 6, tcp(40000, 80, seq=101, ack=501, flags=0x18, payload=b"hello "))))]
    frames += [(1001, i, ether(ipv4(A, B, 6, tcp(50000 + i, 80, seq=7, flags=0x02)))) for i in range(50)]
    frames += [(1002, 0, ether(ipv4(A, B, 6, tcp(40000, 80, seq=107, ack=501, flags=0x18, payload=b"world")))),
               (1002, 1, ether(ipv4(A, B, 6, tcp(40000, 80, seq=112, ack=501, flags=0x11)))),
               (1002, 2, ether(ipv4(B, A, 6, tcp(80, 40000, seq=501, ack=113, flags=0x11))))]
    path = tmp_path / "flood.pcap"
    path.write_bytes(pcap(frames))
    r = Reassembler(max_connections=10)
    r.feed_capture(path)
    victim = [c for c, info in r.collector.closed.items() if info["client"][1] == 40000]
    assert len(victim) == 1 and streams(r)[victim[0]] == (b"hello world", b"")
    assert [d["close"] for d in r.collector.closed[victim[0]]["dirs"]] == ["fin", "fin"]
    assert r.engine.evictions == 41


def _jump_capture(path, after):
    """A connection at year 2015, then `after`: (seconds, microseconds, frame) six years on."""
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    t0 = 1_420_000_000
    frames = [(t0, 0, ether(ipv4(A, B, 6, tcp(1000, 80, seq=10, flags=0x02)))),
              (t0, 1000, ether(ipv4(B, A, 6, tcp(80, 1000, seq=50, ack=11, flags=0x12)))),
              (t0, 2000, ether(ipv4(A, B, 6, tcp(1000, 80, seq=11, ack=51, flags=0x18, payload=b"hi"))))]
    frames += [(t0 + 6 * 365 * 86400 + s, us, f) for s, us, f in after]
    path.write_bytes(pcap(frames))
    return path


def test_a_clock_jump_does_not_expire_what_its_first_packet_opened(tmp_path, corpus):
    """The packet that jumps far ahead is held back from the clock until the next one agrees;
    then the connection it opened counts its idle time from that packet, not from before the
    jump: the SYN-ACK 0.34 s later belongs to it, with the roles kept."""
    from pcapgen import A, B, ether, ipv4, tcp, udp
    path = _jump_capture(tmp_path / "jump.pcap", [
        (0, 0, ether(ipv4(A, B, 6, tcp(2000, 80, seq=100, flags=0x02)))),
        (0, 340_000, ether(ipv4(B, A, 6, tcp(80, 2000, seq=900, ack=101, flags=0x12)))),
        (0, 341_000, ether(ipv4(A, B, 6, tcp(2000, 80, seq=101, ack=901, flags=0x18, payload=b"after")))),
        # and six more years on, a DNS query answered 17 ms later
        (6 * 365 * 86400, 0, ether(ipv4(A, B, 17, udp(5353, 53, b"query")))),
        (6 * 365 * 86400, 17_000, ether(ipv4(B, A, 17, udp(53, 5353, b"answer"))))])
    r = run(path)
    closed = r.collector.closed
    assert len(closed) == 3 and r.engine.clock_outliers == 0
    assert [closed[c]["dirs"][0]["close"] for c in sorted(closed)] == ["timeout", "timeout", "eof"]
    assert closed[1]["client"][1] == 2000 and streams(r)[1] == (b"after", b"")
    assert closed[2]["proto"] == "udp" and closed[2]["client"][1] == 5353
    assert closed[2]["dirs"][0]["packets"] == closed[2]["dirs"][1]["packets"] == 1
    # the corpus captures with such a jump: one connection each, as tshark and `stats` count
    for name, proto, n in (("smtp__zeek__smtp.pcap", "tcp", 6), ("linktype__pcpp__raw_ip.pcap", "udp", 4)):
        r = run(corpus / name)
        assert sum(c["proto"] == proto for c in r.collector.closed.values()) == n


def test_a_clock_jump_keeps_the_linger_of_what_its_first_packet_ended(tmp_path):
    """The server's FIN, six years after the client's, and the client's last ACK end the
    connection; that ACK sent again right after is a late packet of it, not a new connection."""
    from pcapgen import A, B, ether, ipv4, tcp
    path = _jump_capture(tmp_path / "jumpfin.pcap", [])
    blob = path.read_bytes()
    from pcapgen import pcap
    t0 = 1_420_000_000
    path.write_bytes(blob + pcap([
        (t0, 3000, ether(ipv4(A, B, 6, tcp(1000, 80, seq=13, ack=51, flags=0x11)))),
        (t0 + 6 * 365 * 86400, 0, ether(ipv4(B, A, 6, tcp(80, 1000, seq=51, ack=14, flags=0x11)))),
        (t0 + 6 * 365 * 86400, 100_000, ether(ipv4(A, B, 6, tcp(1000, 80, seq=14, ack=52, flags=0x10)))),
        (t0 + 6 * 365 * 86400, 200_000, ether(ipv4(A, B, 6, tcp(1000, 80, seq=14, ack=52, flags=0x10))))])[24:])
    r = run(path)
    assert len(r.collector.closed) == 1 and r.engine.late_packets == 1
    assert [d["close"] for d in r.collector.closed[0]["dirs"]] == ["fin", "fin"]


def _timed_capture(path, packets):
    from pcapgen import timed_capture
    return timed_capture(path, packets)


RESET = [(0, True, 100, 0, 0x02, b""), (0.01, False, 500, 101, 0x12, b""),
         (0.02, True, 101, 501, 0x18, b"hello"), (0.03, True, 106, 501, 0x14, b"")]


def test_a_reset_connection_lingers_after_its_closing_timeout(tmp_path):
    """RST, then the closing timeout (10 s) ends the connection; its 5-tuple lingers 60 s more:
    a FIN 15 s after the RST is a late packet, not a new midstream connection; a packet after
    the linger starts one."""
    path = _timed_capture(tmp_path / "rst.pcap", RESET + [
        (15, True, 106, 501, 0x11, b""), (16, False, 501, 107, 0x11, b""),
        (90, True, 106, 501, 0x18, b"later")])
    r = run(path)
    closed = r.collector.closed
    assert len(closed) == 2 and r.engine.late_packets == 2
    assert [d["close"] for d in closed[0]["dirs"]] == ["rst", "rst"] and closed[0]["dirs"][0]["packets"] == 3
    assert closed[1]["dirs"][0]["midstream"] and streams(r)[1] == (b"later", b"")


@pytest.mark.parametrize("isn,conns", [(100, 1), (7000, 2)])
def test_a_syn_during_the_linger_after_a_reset(tmp_path, isn, conns):
    """A SYN with the reset connection's ISN is that connection's (a late packet, as tshark keeps
    it in the same stream); one with another ISN starts a new connection (docs/reassembly.md)."""
    path = _timed_capture(tmp_path / "rstsyn.pcap", RESET + [
        (20, True, isn, 0, 0x02, b""), (20.01, False, 900, isn + 1, 0x12, b""),
        (20.02, True, isn + 1, 901, 0x18, b"again")])
    r = run(path)
    assert len(r.collector.closed) == conns
    if conns == 2:
        assert streams(r)[1] == (b"again", b"") and not r.collector.closed[1]["dirs"][0]["midstream"]
    else:
        assert r.engine.late_packets == 3 and streams(r)[0] == (b"hello", b"")


def test_a_reset_of_a_stray_ack_during_the_handshake_is_ignored(tmp_path, corpus):
    """The server answers the SYN with an ACK for an older connection on the tuple; the client
    resets it with that ACK's number (RFC 793, SYN-SENT) and sends its SYN again 13 s later.
    That RST is not at the client's ISN + 1: it does not reset this connection, which goes on
    and ends by FIN, one connection as tshark sees it."""
    path = _timed_capture(tmp_path / "stray.pcap", [
        (0, True, 100, 0, 0x02, b""), (0.01, False, 3000, 123456, 0x10, b""),
        (0.02, True, 123456, 123456, 0x04, b""),
        (13, True, 100, 0, 0x02, b""), (13.01, False, 500, 101, 0x12, b""),
        (13.02, True, 101, 501, 0x18, b"hello"), (13.03, False, 501, 106, 0x18, b"world"),
        (14, True, 106, 506, 0x11, b""), (14.01, False, 506, 107, 0x11, b"")])
    r = run(path)
    assert len(r.collector.closed) == 1 and r.engine.ignored_flags == 1
    assert streams(r)[0] == (b"hello", b"world")
    assert [d["close"] for d in r.collector.closed[0]["dirs"]] == ["fin", "fin"]
    # nine connections of the TLS capture start so; with their 5-tuples kept after a RST, the
    # capture holds 68 TCP connections, as tshark counts them
    r = run(corpus / "tls__suri__tls-subjectaltname.pcap")
    tcp = {c: i for c, i in r.collector.closed.items() if i["proto"] == "tcp"}
    assert len(tcp) == 68 and r.engine.ignored_flags == 9
    (conn,) = [c for c, i in tcp.items() if i["client"][1] == 59622]
    assert [len(x) for x in streams(r)[conn]] == [344, 1507]


def test_a_stray_ack_does_not_fix_where_the_stream_starts(tmp_path):
    """The server answers the SYN with a challenge ACK of an older connection (its sequence
    number is that connection's), and no SYN-ACK is captured; the server's FIN comes 314 MB
    further on. The stray ACK is not applied: the server side starts at its FIN, not 314 MB of
    gap after the old connection's number."""
    path = _timed_capture(tmp_path / "chal.pcap", [
        (0, True, 100, 0, 0x02, b""), (0.01, False, 1272121215, 3058576675, 0x10, b""),
        (0.02, True, 3058576675, 0, 0x04, b""), (3, True, 100, 0, 0x02, b""),
        (18, True, 445, 1586796467, 0x11, b""), (18.03, False, 1586796467, 446, 0x11, b""),
        (18.04, True, 446, 1586796468, 0x10, b"")])
    r = run(path)
    assert len(r.collector.closed) == 1 and r.engine.stray_acks == 1 and r.engine.ignored_flags == 1
    (conn,) = r.collector.closed.values()
    assert [d["gap_bytes"] for d in conn["dirs"]] == [344, 0]
    assert [d["close"] for d in conn["dirs"]] == ["fin", "fin"] and conn["dirs"][1]["midstream"]


@pytest.mark.parametrize("name,holes,entries", [("retrans__zeek__retransmit-fast009.pcap", 2, 3),
                                                ("trunc__zeek__truncated-header.pcap", 2, 9),
                                                ("overlap__zeek__reassembly.pcap", 9, 10),
                                                ("trunc__suri__tcp-rst-unacked-stream-10.pcap", 2, 3)])
def test_summaries_count_holes_as_the_index_lists_them(tmp_path, corpus, name, holes, entries):
    """A gap declared right after another (a snaplen cut, then the loss at the end) is the
    same hole: the index merges them, and the summaries of streams and gateway count them so;
    the record files keep one entry per gap declared, each with its reason (cuts in a row given
    up together are one)."""
    res = run_cli("streams", corpus / name, "-o", tmp_path / "s", "--json", check=True)
    index = [json.loads(l) for l in (tmp_path / "s" / "index.jsonl").read_text().splitlines()]
    assert json.loads(res.stdout)["gaps"] == sum(len(d["gaps"]) for d in index) == holes
    res = run_cli("gateway", corpus / name, "--store", tmp_path / "g", "--keep", "--json", check=True)
    assert json.loads(res.stdout)["connections"]["gaps"] == holes
    listed = json.loads(run_cli("inspect", tmp_path / "g", "--json", check=True).stdout)["connections"]
    assert sum(c["gaps"] for c in listed) == entries


@pytest.mark.parametrize("name", ["pcapng__pcpp__pcapng-example.pcapng", "ooo__tcpflow__test1-out-of-order.pcap",
                                  "ooo__tcpflow__test5-lines-randomized.pcap", "pcapng__pcpp__many_interfaces-1.pcapng"])
def test_index_times_are_the_earliest_and_latest(tmp_path, corpus, name):
    """An index line's first_ts and last_ts span its direction's packets whatever their order in
    the file (shuffled captures, interfaces with their own clocks), as `stats` spans a capture."""
    run_cli("streams", corpus / name, "-o", tmp_path / "s", check=True)
    index = [json.loads(l) for l in (tmp_path / "s" / "index.jsonl").read_text().splitlines()]
    assert all(d["first_ts"] <= d["last_ts"] for d in index if d["packets"])
    if name.startswith("pcapng__pcpp__pcapng-example"):
        # connection 0's server: packets from 2015, and one stamped 2061 (in the file after its first)
        (d,) = [d for d in index if d["conn"] == 0 and d["dir"] == "s2c"]
        assert int(d["first_ts"]) == 1422527998 and int(d["last_ts"]) == 2894531997


def test_streams_cli_files_and_index(tmp_path, corpus):
    out = tmp_path / "out"
    res = run_cli("streams", corpus / "http__zeek__206_example_b.pcap", "-o", out, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    lines = [json.loads(l) for l in (out / "index.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * summary["connections"]
    keys = {"src", "dst", "proto", "file", "bytes", "sha256", "gaps", "conflicts", "retransmissions", "midstream",
            "close", "packets", "first_ts", "last_ts"}
    for line in lines:
        assert keys <= set(line)
        if line["file"]:
            data = (out / line["file"]).read_bytes()
            assert len(data) == line["bytes"] and hashlib.sha256(data).hexdigest() == line["sha256"]
        else:
            assert line["bytes"] == 0
    assert sum(l["bytes"] for l in lines) == summary["bytes"]


def test_streams_cli_replaces_an_earlier_output(tmp_path, corpus):
    """A second run into the same directory with --replace leaves exactly its own files and
    index: the first run's stream files (other connections, other names) are removed and
    counted, a file of the user's is not touched."""
    out = tmp_path / "out"
    first = json.loads(run_cli("streams", corpus / "http__pcpp__three_http_streams.pcap", "-o", out, "--json",
                               check=True).stdout)
    (out / "notes.txt").write_text("mine")
    res = run_cli("streams", corpus / "ipv6__pcpp__one_ipv6_http_stream.pcap", "-o", out, "--replace", "--json",
                  check=True)
    second = json.loads(res.stdout)
    assert first["replaced"] == 0 and second["replaced"] == first["files"] > second["files"] > 0
    listed = {json.loads(l)["file"] for l in (out / "index.jsonl").read_text().splitlines()} - {None}
    assert len(listed) == second["files"]
    assert {p.name for p in out.iterdir()} == listed | {"index.jsonl", "notes.txt"}
    assert (out / "notes.txt").read_text() == "mine"
    table = run_cli("streams", corpus / "ipv6__pcpp__one_ipv6_http_stream.pcap", "-o", out, "--replace",
                    check=True).stdout
    assert f"{second['files']} stream files of an earlier run, removed first" in table


def test_streams_cli_discard_and_policy(corpus):
    res = run_cli("streams", corpus / "http__dpkt__http.pcap", "--discard", "--json", "--policy", "linux")
    s = json.loads(res.stdout)
    assert res.returncode == 0 and s["output"] is None and s["policy"] == "linux" and s["bytes"] > 20000


def test_streams_cli_ipv6_addresses_in_brackets(tmp_path, corpus):
    out = tmp_path / "o"
    run_cli("streams", corpus / "ipv6__pcpp__one_ipv6_http_stream.pcap", "-o", out, check=True)
    line = json.loads((out / "index.jsonl").read_text().splitlines()[0])
    assert line["src"].startswith("[") and "]:" in line["src"]


@pytest.mark.parametrize("args,needle", [
    (["--discard", "--policy", "nope"], "unknown policy"),
    ([], "either -o DIR or --discard"),
    (["--discard", "--filter", "tcp prot"], "bad filter"),
])
def test_streams_cli_bad_arguments(corpus, args, needle):
    res = run_cli("streams", corpus / "http__zeek__get.pcap", *args)
    assert res.returncode == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_streams_cli_unwritable_output(tmp_path, corpus):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli("streams", corpus / "http__zeek__get.pcap", "-o", blocker / "sub")
    assert res.returncode == 2 and "cannot write" in res.stderr and "Traceback" not in res.stderr


def test_streams_cli_full_output_names_the_file(tmp_path, corpus):
    """Stream files and index.jsonl are written with write(2): a full file system is one line
    naming the file that did not fit, exit 2."""
    with small_tmpfs(tmp_path, "64k") as mnt:
        res = run_cli("streams", corpus / "http__zeek__206_example_b.pcap", "-o", mnt / "s")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert f"{mnt}/s/c000000-" in res.stderr and "cannot write: No space left on device" in res.stderr


def _frames(segs, start=1_000):
    from pcapgen import A, B, ether, ipv4, tcp
    out = []
    for k, (seq, payload, flags) in enumerate(segs):
        out.append((start + k, 0, ether(ipv4(A, B, 6, tcp(5000, 80, seq=seq, flags=flags, payload=payload)))))
    return out


def test_midstream_start_waits_for_reordered_first_segments(tmp_path):
    from pcapgen import pcap
    path = tmp_path / "m.pcap"
    # no SYN; the second segment is captured first
    path.write_bytes(pcap([(1000, 0, f[2]) for f in _frames([(2100, b"B" * 100, 0x18), (2000, b"A" * 100, 0x18)])]))
    r = run(path)
    d = r.collector.dirs[(0, 0)]
    assert bytes(d.data) == b"A" * 100 + b"B" * 100 and d.gaps == []
    assert r.collector.closed[0]["dirs"][0]["midstream"]


def test_memcap_gives_up_the_oldest_hole(tmp_path):
    from pcapgen import pcap
    segs = [(1, b"", 0x02), (2, b"a" * 10, 0x18)] + [(2 + 10 + 100 + k * 100, b"x" * 100, 0x18) for k in range(30)]
    path = tmp_path / "mem.pcap"
    path.write_bytes(pcap(_frames(segs)))
    r = Reassembler(max_held_per_dir=1000)
    r.feed_capture(path)
    gaps = [e for e in r.collector.events if isinstance(e, Gap)]
    assert gaps[0].reason == "memcap" and (gaps[0].offset, gaps[0].length) == (10, 100)
    assert r.engine.memcap_gaps == 1 and len(r.collector.dirs[(0, 0)].data) == 10 + 3000


def test_udp_datagrams_per_direction(corpus):
    r = run(corpus / "pcapng__pcpp__many_interfaces-1.pcapng")
    from flowsift.reassembly import Datagram
    grams = [e for e in r.collector.events if isinstance(e, Datagram)]
    assert grams and all(isinstance(g.data, bytes) for g in grams)
    udp = [c for c, i in r.collector.closed.items() if i["proto"] == "udp"]
    assert len(udp) == 13


def test_a_udp_datagram_cut_by_the_snaplen_leaves_a_gap(tmp_path):
    """The missing tail is a gap of reason snaplen, as a TCP segment's would be: the next
    datagram is not glued to the captured part, in the events and in the streams index."""
    from pcapgen import udp_cut_capture
    path = udp_cut_capture(tmp_path / "udpcut.pcap")
    r = run(path)
    D = r.collector.dirs[(0, 0)]
    assert bytes(D.data) == b"S" * 38 + b"after" and D.gaps == [[38, 962]] and D.end == 1005
    gaps = [e for e in r.collector.events if isinstance(e, Gap)]
    assert [(g.offset, g.length, g.reason) for g in gaps] == [(38, 962, "snaplen")]
    out = tmp_path / "o"
    summary = json.loads(run_cli("streams", path, "-o", out, "--json", check=True).stdout)
    assert (summary["gaps"], summary["gap_bytes"], summary["bytes"]) == (1, 962, 43)
    line = json.loads((out / "index.jsonl").read_text().splitlines()[0])
    assert line["gaps"] == [{"offset": 38, "length": 962, "file_offset": 38, "reason": "snaplen"}]
    assert line["gap_bytes"] == 962 and line["bytes"] == 43

def test_streams_index_fields_are_documented(tmp_path, corpus):
    from conftest import ROOT
    out = tmp_path / "o"
    summary = json.loads(run_cli("streams", corpus / "http__zeek__get.pcap", "-o", out, "--json", check=True).stdout)
    doc = (ROOT / "docs" / "cli.md").read_text()
    line = json.loads((out / "index.jsonl").read_text().splitlines()[0])
    for key in list(line) + list(summary) + list(summary["engine"]) + list(summary["fragments"]):
        assert f"`{key}`" in doc, key


def interleaved_capture(path, n, rounds, size, seed=5, live=None):
    """n TCP connections, `live` at once (default all): for each group, handshakes first, then
    `rounds` data segments of `size` random bytes each way, round robin, then FINs. Returns
    {(conn, dir): bytes sent}."""
    import random
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    rnd = random.Random(seed)
    frames, clock = [], [0]

    def put(src, dst, sport, dport, **kw):
        clock[0] += 1
        frames.append((1_000 + clock[0] // 1000, clock[0] % 1000, ether(ipv4(src, dst, 6, tcp(sport, dport, **kw)))))

    seq = {}
    sent = {(c, d): bytearray() for c in range(n) for d in (0, 1)}
    live = live or n
    for first in range(0, n, live):
        group = range(first, min(n, first + live))
        for c in group:
            seq[c] = [1000, 5000]
            put(A, B, 20000 + c, 80, seq=999, flags=0x02)
            put(B, A, 80, 20000 + c, seq=4999, ack=1000, flags=0x12)
            put(A, B, 20000 + c, 80, seq=1000, ack=5000, flags=0x10)
        for _ in range(rounds):
            for c in group:
                for d in (0, 1):
                    data = rnd.randbytes(size)
                    sent[(c, d)] += data
                    src, dst, sport, dport = (A, B, 20000 + c, 80) if d == 0 else (B, A, 80, 20000 + c)
                    put(src, dst, sport, dport, seq=seq[c][d], ack=seq[c][1 - d], flags=0x18, payload=data)
                    seq[c][d] += size
        for c in group:
            put(A, B, 20000 + c, 80, seq=seq[c][0], ack=seq[c][1], flags=0x11)
            put(B, A, 80, 20000 + c, seq=seq[c][1], ack=seq[c][0] + 1, flags=0x11)
            put(A, B, 20000 + c, 80, seq=seq[c][0] + 1, ack=seq[c][1] + 1, flags=0x10)
    path.write_bytes(pcap(frames))
    return {k: bytes(v) for k, v in sent.items()}


def index_agrees_with_files(out, sent=None):
    """Every line of out/index.jsonl describes its file as it is: size, SHA-256, and (with
    `sent`) the bytes sent. Returns the lines."""
    lines = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    for line in lines:
        got = (out / line["file"]).read_bytes() if line["file"] else b""
        assert line["bytes"] == len(got) and line["sha256"] == hashlib.sha256(got).hexdigest(), line
        if sent is not None:
            c = int(line["src" if line["dir"] == "c2s" else "dst"].rpartition(":")[2]) - 20000
            assert got == sent[(c, 0 if line["dir"] == "c2s" else 1)] and line["gaps"] == []
    return lines


@pytest.mark.parametrize("cpus", [1, 2])
def test_streams_files_whole_with_more_live_connections_than_descriptors(tmp_path, cpus):
    """600 connections live at once, each direction several buffers long, interleaved: the
    writer's descriptors (256) are evicted and files reopened to append, and bytes go to the
    writer (a thread, or inline on one CPU) in many hand-overs. Every file and index line is
    what was sent."""
    import os
    import subprocess
    import sys
    if len(os.sched_getaffinity(0)) < cpus:
        pytest.skip(f"needs {cpus} CPUs")
    n, rounds, size = 600, 4, 3000
    cap = tmp_path / "many.pcap"
    sent = interleaved_capture(cap, n, rounds, size)
    out = tmp_path / "out"
    on = sorted(os.sched_getaffinity(0))[:cpus]
    res = subprocess.run([sys.executable, "-m", "flowsift", "streams", str(cap), "-o", str(out), "--json"],
                         capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, on))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["files"] == 2 * n
    lines = index_agrees_with_files(out, sent)
    assert len(lines) == 2 * n and all(line["bytes"] == rounds * size for line in lines)


def test_streams_killed_midway_leaves_no_index_line_ahead_of_its_file(tmp_path):
    """streams -o killed (SIGKILL: nothing flushed on the way out) while it writes: every
    index line out by then describes its file as it is. The writer puts index lines after
    the bytes they count; what was still queued is lost from both."""
    import os
    import signal
    import subprocess
    import sys
    import time
    n = 4000
    cap = tmp_path / "big.pcap"
    sent = interleaved_capture(cap, n, 3, 4000, seed=9, live=300)
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "flowsift", "streams", str(cap), "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = out / "index.jsonl"
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and not (index.exists() and index.stat().st_size):
        time.sleep(0.001)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    text = index.read_text()
    if text and not text.endswith("\n"):
        text = text[:text.rindex("\n") + 1] if "\n" in text else ""      # a line cut by the kill
        index.write_text(text)
    lines = index_agrees_with_files(out, sent)
    assert p.returncode == -signal.SIGKILL and 0 < len(lines) < 2 * n


def test_a_stray_ack_before_the_answer_to_a_syn_acknowledges_nothing(tmp_path, corpus):
    """The ACK for an older connection that answered nine SYNs of the TLS capture set their
    clients' acked to its number (2,094,168,062 in one): a later hole would have been taken as
    acknowledged past, and given up. No direction is acknowledged past its end and FIN now."""
    from flowsift.streams import RecordFile
    store = tmp_path / "s"
    run_cli("gateway", corpus / "tls__suri__tls-subjectaltname.pcap", "--store", store, "--keep", check=True)
    over = []
    for f in sorted(store.glob("*.rec")):
        with RecordFile(f) as rf:
            h = rf.header
            over += [(f.name, d, h[f"acked{d}"], h[f"end{d}"]) for d in (0, 1) if h[f"acked{d}"] > h[f"end{d}"] + 1]
    assert over == []


# --- review of the TCP state machine: each case a capture built by hand ----------------------

C, S = 1000, 5000
HANDSHAKE = [(0, True, C, 0, 0x02, b""), (0.01, False, S, C + 1, 0x12, b""), (0.02, True, C + 1, S + 1, 0x10, b"")]


def _close(t, c, s):
    """FIN from the client at c, FIN from the server at s, the client's last ACK."""
    return [(t, True, c, s, 0x11, b""), (t + 0.01, False, s, c + 1, 0x11, b""), (t + 0.02, True, c + 1, s + 1, 0x10, b"")]


@pytest.mark.parametrize("far", [
    [(1.1, True, C + 1 + 0x7FFF0000, S + 1, 0x10, b""), (1.2, True, C + 1 + 0xFFFE0000, S + 1, 0x10, b"")],
    [(1.1, True, C + 1 + k * 0x40000000, S + 1, 0x10, b"") for k in (1, 2, 3)],
])
def test_bare_acks_far_off_do_not_move_the_sequence_anchor(tmp_path, far):
    """A bare ACK's sequence number is checked by no receiver (spoofed or garbage ones are
    common): two such, half the sequence space apart, used to walk the unwrap anchor round, so
    the next real data landed 2^32 later, behind a 4 GiB gap."""
    path = _timed_capture(tmp_path / "anchor.pcap", HANDSHAKE + [(1, True, C + 1, S + 1, 0x18, b"AAAA")] + far + [
        (1.3, True, C + 5, S + 1, 0x18, b"BBBB"), (1.4, False, S + 1, C + 9, 0x10, b"")] + _close(2, C + 9, S + 1))
    r = run(path)
    assert streams(r)[0] == (b"AAAABBBB", b"") and r.collector.dirs[(0, 0)].gaps == []


def test_a_far_off_data_segment_is_a_hole_of_its_own(tmp_path):
    """Data segments 2 and 3 GiB ahead (garbage, or a capture that skipped that much) do not
    move the anchor either: the real data after them is placed where it belongs."""
    path = _timed_capture(tmp_path / "faroff.pcap", HANDSHAKE + [
        (1, True, C + 1, S + 1, 0x18, b"AAAA"), (1.1, True, C + 1 + 0x7FFF0000, S + 1, 0x18, b"x"),
        (1.2, True, C + 1 + 0xBFFF0000, S + 1, 0x18, b"y"), (1.3, True, C + 5, S + 1, 0x18, b"BBBB")])
    r = run(path)
    d = r.collector.dirs[(0, 0)]
    assert bytes(d.data).startswith(b"AAAABBBB") and d.gaps[0][0] >= 8


def test_the_reference_moves_its_anchor_as_the_engine(tmp_path):
    from flowsift.reassembly.reference import ReferenceDirection
    ref = ReferenceDirection(C)
    ref.segment(C + 1, b"AAAA")
    ref.segment((C + 1 + 0x7FFF0000) % 2**32, b"x")
    ref.segment((C + 1 + 0xBFFF0000) % 2**32, b"y")
    ref.segment(C + 5, b"BBBB")
    data, gaps, _ = ref.finish()
    assert data.startswith(b"AAAABBBB") and gaps[0][0] >= 8


def test_a_reset_outside_the_receive_window_is_ignored(tmp_path):
    """RFC 9293 3.10.7.4 / RFC 5961: a RST 1 GiB beyond the next byte is not acceptable; the
    connection goes on (20 s later) and ends by FIN. One in the window still resets it."""
    tail = [(25, True, C + 6, S + 1, 0x18, b"world"), (25.1, False, S + 1, C + 11, 0x18, b"reply")] + _close(26, C + 11, S + 6)
    head = HANDSHAKE + [(1, True, C + 1, S + 1, 0x18, b"hello"), (1.1, False, S + 1, C + 6, 0x10, b"")]
    path = _timed_capture(tmp_path / "oow.pcap", head + [(2, True, C + 1 + 0x40000000, 0, 0x04, b"")] + tail)
    r = run(path)
    assert len(r.collector.closed) == 1 and r.engine.rst_out_of_window == 1
    assert streams(r)[0] == (b"helloworld", b"reply")
    assert [d["close"] for d in r.collector.closed[0]["dirs"]] == ["fin", "fin"]
    path = _timed_capture(tmp_path / "inwin.pcap", head + [(2, True, C + 6 + 5000, 0, 0x04, b"")])
    r = run(path)
    assert r.engine.rst_out_of_window == 0 and [d["close"] for d in r.collector.closed[0]["dirs"]] == ["rst", "rst"]


def _tiny_held(path, n, reverse):
    """SYN, then n one-byte segments after a one-byte hole (in order, or last first), then the hole."""
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    offs = list(range(1, n + 1))
    if reverse:
        offs.reverse()
    frames = [(1000, 0, ether(ipv4(A, B, 6, tcp(40000, 80, seq=C, flags=0x02))))]
    frames += [(1000, 1 + k, ether(ipv4(A, B, 6, tcp(40000, 80, seq=C + 1 + o, ack=S + 1, flags=0x10, payload=b"x"))))
               for k, o in enumerate(offs)]
    frames.append((1001, 0, ether(ipv4(A, B, 6, tcp(40000, 80, seq=C + 1, ack=S + 1, flags=0x10, payload=b"y")))))
    path.write_bytes(pcap(frames))
    return path


@pytest.mark.parametrize("reverse", [False, True])
def test_many_tiny_held_segments_cost_linear_work(tmp_path, reverse):
    """100,000 one-byte segments held behind a one-byte hole: finding each one's place is a
    binary search, adding it at either end and delivering the run move O(1) records each
    (held_work counts records moved or probed: it was ~n^2/2 = 5e9 with the linear scan and a
    move of the whole array per delivered chunk)."""
    from flowsift.reassembly._engine import CountSink
    n = 100_000
    path = _tiny_held(tmp_path / "tiny.pcap", n, reverse)
    sink = CountSink()
    r = Reassembler(sink=sink, max_held_per_dir=1 << 30)
    r.feed_capture(path)
    assert sink.bytes == n + 1 and sink.gaps == 0
    assert r.engine.held_work < 20 * n


def test_held_memory_counts_each_chunk_not_only_its_payload(tmp_path):
    """200 one-byte segments hold 200 bytes of payload but some 13 KB of memory: the per-direction
    bound (here 4,000) counts what they take (payload + 64 per chunk), and gives up the hole."""
    path = _tiny_held(tmp_path / "tiny.pcap", 200, False)
    r = Reassembler(max_held_per_dir=4000)
    r.feed_capture(path)
    assert r.engine.memcap_gaps == 1
    # (the hole's byte comes after it was given up: a copy of a gap's byte, not delivered)
    assert r.collector.dirs[(0, 0)].gaps == [[0, 1]] and len(r.collector.dirs[(0, 0)].data) == 200
    assert r.engine.held_total == 0


@pytest.mark.parametrize("s2", [70000, 3000])
def test_a_second_syn_ack_with_another_isn_restarts_that_side(tmp_path, s2):
    """The client's SYN is answered (ISN S), the client sends it again, the server answers with
    another ISN (it lost its first answer's state) and the client acknowledges that one: the
    server's stream starts there, whether the new ISN is above S or below it."""
    path = _timed_capture(tmp_path / "synack.pcap", [
        (0, True, C, 0, 0x02, b""), (0.01, False, S, C + 1, 0x12, b""), (1, True, C, 0, 0x02, b""),
        (1.01, False, s2, C + 1, 0x12, b""), (1.02, True, C + 1, s2 + 1, 0x10, b""),
        (1.1, True, C + 1, s2 + 1, 0x18, b"GET"), (1.2, False, s2 + 1, C + 4, 0x18, b"OK")] + _close(2, C + 4, s2 + 3))
    r = run(path)
    assert streams(r) == {0: (b"GET", b"OK")}
    assert r.collector.dirs[(0, 1)].gaps == [] and r.collector.closed[0]["dirs"][1]["retransmissions"] == 0


@pytest.mark.parametrize("ack", ["isn", "garbage"])
def test_a_forged_syn_ack_after_the_handshake_changes_nothing(tmp_path, ack):
    """The handshake is done; a SYN-ACK with another ISN (forged: no SYN was sent again) and
    data at that ISN come, then the server's real bytes. The real bytes are the stream, the
    forged SYN-ACK is counted and not applied, and the forged bytes, far from the real stream,
    come only after a gap."""
    forged = 9_000_000
    path = _timed_capture(tmp_path / "forged.pcap", HANDSHAKE + [
        (1, False, forged, C + 1 if ack == "isn" else 0xDEADBEEF, 0x12, b""),
        (1.01, False, forged + 1, C + 1, 0x18, b"FAKE"),
        (1.1, False, S + 1, C + 1, 0x18, b"HTTP/1.0 200 OK"), (1.2, True, C + 1, S + 16, 0x10, b"")])
    r = run(path)
    d = r.collector.dirs[(0, 1)]
    assert bytes(d.data).startswith(b"HTTP/1.0 200 OK") and r.engine.syn_conflicts == 1
    assert d.gaps[0][0] == 15 and r.collector.closed[0]["dirs"][1]["retransmissions"] == 0


@pytest.mark.parametrize("taken", ["forged", "real"])
def test_of_two_syn_acks_the_one_the_client_acknowledges_counts(tmp_path, taken):
    """A forged SYN-ACK (another ISN) comes before the real one: the client's ACK tells which
    it took, and the server's stream starts after that one's ISN."""
    forged = 123
    first = forged if taken == "forged" else S
    path = _timed_capture(tmp_path / "two.pcap", [
        (0, True, C, 0, 0x02, b""), (0.01, False, forged, C + 1, 0x12, b""), (0.02, False, S, C + 1, 0x12, b""),
        (0.03, True, C + 1, first + 1, 0x10, b""), (0.1, False, first + 1, C + 1, 0x18, b"SERVERDATA"),
        (0.2, True, C + 1, first + 11, 0x10, b"")])
    r = run(path)
    assert streams(r) == {0: (b"", b"SERVERDATA")} and r.collector.dirs[(0, 1)].gaps == []
    assert r.engine.syn_conflicts == 1


def test_a_stale_fin_below_the_delivered_bytes_does_not_end_the_stream(tmp_path):
    """ "hello " is delivered and acknowledged; a FIN at offset 3 (below it: no receiver takes
    it) comes, then "ATTACK": the stream goes on, the FIN counted and not applied."""
    path = _timed_capture(tmp_path / "stale.pcap", HANDSHAKE + [
        (1, True, C + 1, S + 1, 0x18, b"hello "), (1.01, False, S + 1, C + 7, 0x10, b""),
        (1.02, True, C + 4, S + 1, 0x11, b""), (1.03, True, C + 7, S + 1, 0x18, b"ATTACK")]
        + _close(2, C + 13, S + 1))
    r = run(path)
    assert streams(r) == {0: (b"hello ATTACK", b"")}
    assert r.engine.fin_out_of_window == 1 and r.engine.after_fin_bytes == 0 and r.engine.fin_conflicts == 0
    assert [d["close"] for d in r.collector.closed[0]["dirs"]] == ["fin", "fin"]


def test_segments_without_ack_are_not_applied(tmp_path):
    """Data (and a FIN) without the ACK bit, which every receiver drops, are counted and not
    applied: the bytes sent at the same place with ACK are the stream, with no conflict."""
    path = _timed_capture(tmp_path / "noack.pcap", HANDSHAKE + [
        (1, True, C + 1, S + 1, 0x18, b"abc"), (1.01, True, C + 4, 0, 0x08, b"EVIL"),
        (1.02, True, C + 8, 0, 0x01, b""), (1.03, True, C + 4, S + 1, 0x18, b"GOOD")] + _close(2, C + 8, S + 1))
    r = run(path)
    assert streams(r) == {0: (b"abcGOOD", b"")}
    assert r.engine.no_ack_segments == 2 and r.collector.closed[0]["dirs"][0]["conflicts"] == 0


def test_a_syn_on_a_tuple_picked_up_midstream_starts_a_new_connection(tmp_path):
    """A connection picked up midstream, then 5 s later a handshake on the same 5-tuple whose
    ISN + 1 is not where the client's bytes start: a new connection (as tshark sees it), the
    first one ended as `reused`, and none of its bytes lost."""
    path = _timed_capture(tmp_path / "midsyn.pcap", [
        (0, True, 1001, 5001, 0x18, b"mid1"), (0.1, False, 5001, 1005, 0x18, b"MID1"),
        (5, True, 777777, 0, 0x02, b""), (5.01, False, 9999, 777778, 0x12, b""), (5.02, True, 777778, 10000, 0x10, b""),
        (5.03, True, 777778, 10000, 0x18, b"two"), (5.04, False, 10000, 777781, 0x18, b"TWO")] + _close(6, 777781, 10003))
    r = run(path)
    assert streams(r) == {0: (b"mid1", b"MID1"), 1: (b"two", b"TWO")}
    assert [d["close"] for d in r.collector.closed[0]["dirs"]] == ["reused", "reused"]
    assert all(not d.gaps for d in r.collector.dirs.values())


def test_a_syn_that_precedes_a_midstream_streams_bytes_is_its_own(tmp_path):
    """A shuffled capture: the SYN after the first data, at ISN + 1 == the first byte: one connection."""
    path = _timed_capture(tmp_path / "latesyn.pcap", [
        (0, True, 101, 501, 0x18, b"abc"), (0.1, True, 100, 0, 0x02, b""), (0.2, True, 104, 501, 0x18, b"def")])
    r = run(path)
    assert streams(r) == {0: (b"abcdef", b"")} and not r.collector.closed[0]["dirs"][0]["midstream"]


def test_bytes_after_a_fin_are_counted_not_delivered(tmp_path):
    """The FIN (on "last") is retransmitted, then "AFTER" at the FIN's sequence number + 1: the
    stream ended at its FIN (as tshark follows it), the FIN's number is not a gap, and the bytes
    beyond it are counted. A FIN at another number later does not move the end (first FIN wins)."""
    path = _timed_capture(tmp_path / "fin.pcap", HANDSHAKE + [
        (1, True, C + 1, S + 1, 0x19, b"last"), (1.5, True, C + 1, S + 1, 0x19, b"last"),
        (1.6, True, C + 6, S + 1, 0x18, b"AFTER"), (1.7, True, C + 20, S + 1, 0x11, b""),
        (2, False, S + 1, C + 6, 0x11, b""), (2.1, True, C + 6, S + 2, 0x10, b"")])
    r = run(path)
    d = r.collector.dirs[(0, 0)]
    assert bytes(d.data) == b"last" and d.gaps == []
    assert r.engine.after_fin_bytes == 5 and r.engine.fin_conflicts == 1
    assert [x["close"] for x in r.collector.closed[0]["dirs"]] == ["fin", "fin"]


def test_held_bytes_beyond_a_fin_that_comes_later_are_dropped(tmp_path):
    path = _timed_capture(tmp_path / "finlate.pcap", HANDSHAKE + [
        (1, True, C + 9, S + 1, 0x18, b"XXXX"), (1.1, True, C + 5, S + 1, 0x11, b"bb"),
        (1.2, True, C + 1, S + 1, 0x18, b"aaaa")])
    r = run(path)
    d = r.collector.dirs[(0, 0)]
    assert bytes(d.data) == b"aaaabb" and d.gaps == [] and r.engine.after_fin_bytes == 4


def test_a_refused_connection_is_reset(tmp_path):
    """SYN answered by RST|ACK acknowledging ISN + 1 (RFC 9293 3.10.7.3), the SYN sent again and
    refused again: one connection, reset; nothing ignored."""
    path = _timed_capture(tmp_path / "refused.pcap", [
        (0, True, C, 0, 0x02, b""), (0.001, False, 0, C + 1, 0x14, b""),
        (1, True, C, 0, 0x02, b""), (1.001, False, 0, C + 1, 0x14, b"")])
    r = run(path)
    assert len(r.collector.closed) == 1 and r.engine.ignored_flags == 0
    assert [d["close"] for d in r.collector.closed[0]["dirs"]] == ["rst", "rst"]
    assert r.engine.totals()["close"] == {"rst": 1}


@pytest.mark.parametrize("last,want", [
    ([(1.1, False, S + 1, C + 6, 0x14, b"")], {"rst": 1}),
    ([(1.1, False, S + 1, C + 6, 0x14, b""), (30, True, C + 6, S + 1, 0x18, b"x")], {"rst": 1}),
    (_close(1.1, C + 6, S + 1), {"fin": 1}),
    ([(1.1, True, C + 6, S + 1, 0x11, b"")], {"eof": 1}),
    # both FINs, then a RST for the last ACK: each direction had ended by its FIN
    (_close(1.1, C + 6, S + 1)[:2] + [(1.2, True, C + 7, S + 2, 0x14, b"")], {"fin": 1}),
])
def test_summary_close_counts_say_how_connections_ended(tmp_path, last, want):
    """The summary counts how each connection ended, by the rule the index's directions and
    on_close (the counter module) follow: a reset connection is `rst` though the closing timeout
    or the end of input finished it; every output says the same."""
    path = _timed_capture(tmp_path / "end.pcap", HANDSHAKE + [(1, True, C + 1, S + 1, 0x18, b"hello")] + last)
    r = run(path)
    assert r.engine.totals()["close"] == want
    res = run_cli("streams", path, "-o", tmp_path / "o", "--json", check=True)
    assert json.loads(res.stdout)["close"] == want
    index = [json.loads(l) for l in (tmp_path / "o" / "index.jsonl").read_text().splitlines()]
    if "rst" in want:
        assert {d["close"] for d in index} == {"rst"}
    res = run_cli("chain", "counter", path, "--events", tmp_path / "ev.jsonl", "--json", check=True)
    assert json.loads(res.stdout)["connections"]["close"] == want
    (row,) = [json.loads(l) for l in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert {row["close"]: 1} == want


def test_copies_of_held_data_are_retransmissions(tmp_path):
    """[5, 10) three times, then [0, 5): two segments whose every byte was seen before."""
    path = _timed_capture(tmp_path / "dup.pcap", HANDSHAKE + [
        (1, True, C + 6, S + 1, 0x10, b"bbbbb"), (1.1, True, C + 6, S + 1, 0x10, b"bbbbb"),
        (1.2, True, C + 6, S + 1, 0x10, b"bbbbb"), (1.3, True, C + 1, S + 1, 0x10, b"aaaaa")] + _close(2, C + 11, S + 1))
    r = run(path)
    assert streams(r)[0] == (b"aaaaabbbbb", b"")
    assert r.collector.closed[0]["dirs"][0]["retransmissions"] == 2


@pytest.mark.parametrize("ack", [True, False])
def test_the_ack_of_the_last_fin_belongs_to_its_connection(tmp_path, ack):
    """FIN, FIN, ACK: the connection ends at that last ACK, which is its packet, not a late one;
    without it, it ends by FIN all the same, a second after the last FIN (not a timeout)."""
    close = _close(1, C + 3, S + 1) if ack else _close(1, C + 3, S + 1)[:2]
    path = _timed_capture(tmp_path / "fin.pcap", HANDSHAKE + [(0.5, True, C + 1, S + 1, 0x18, b"hi")] + close
                          + [(20, False, S + 1, C + 4, 0x18, b"late")])
    r = run(path)
    info = r.collector.closed[0]
    assert r.engine.late_packets == 1 and r.engine.timeouts_fired == 0
    assert [d["close"] for d in info["dirs"]] == ["fin", "fin"]
    assert info["dirs"][0]["packets"] == (5 if ack else 4)
    assert r.engine.totals()["close"] == {"fin": 1}


def test_a_tuple_reused_by_a_new_syn_ends_the_old_connection_as_reused(tmp_path):
    """A new handshake (another ISN) on an established connection's 5-tuple: the old one ends
    `reused` (not `evicted`: no table was full), in the index, the summary and the record files."""
    path = _timed_capture(tmp_path / "reuse.pcap", HANDSHAKE + [
        (0.03, True, C + 1, S + 1, 0x18, b"one"), (0.04, False, S + 1, C + 4, 0x18, b"ONE"),
        (5, True, 777777, 0, 0x02, b""), (5.01, False, 9999, 777778, 0x12, b""), (5.02, True, 777778, 10000, 0x10, b"")]
        + _close(6, 777778, 10000))
    r = run(path)
    assert r.engine.evictions == 0
    assert [d["close"] for d in r.collector.closed[0]["dirs"]] == ["reused", "reused"]
    assert r.engine.totals()["close"] == {"reused": 1, "fin": 1}
    run_cli("streams", path, "-o", tmp_path / "o", check=True)
    index = [json.loads(l) for l in (tmp_path / "o" / "index.jsonl").read_text().splitlines()]
    assert [d["close"] for d in index if d["conn"] == 0] == ["reused", "reused"]
    run_cli("gateway", path, "--store", tmp_path / "g", "--keep", check=True)
    listed = json.loads(run_cli("inspect", tmp_path / "g", "--json", check=True).stdout)["connections"]
    (first,) = [c["file"] for c in listed if c["conn"] == 0]
    info = json.loads(run_cli("inspect", tmp_path / "g" / first, "--json", check=True).stdout)
    assert [d["close"] for d in info["streams"]] == ["reused", "reused"]


def test_a_keep_alive_probe_is_named_not_a_retransmission(tmp_path):
    """One garbage byte just below the next expected, nothing outstanding (RFC 9293 3.8.4): a
    keep-alive, flagged on its record; its byte is still compared (a conflict, as tshark's
    segment view counts it) but it is no retransmission."""
    path = _timed_capture(tmp_path / "ka.pcap", HANDSHAKE + [
        (0.03, True, C + 1, S + 1, 0x18, b"hello"), (0.04, False, S + 1, C + 6, 0x10, b""),
        (60, True, C + 5, S + 1, 0x10, b"\0"), (60.01, False, S + 1, C + 6, 0x10, b""),
        (61, True, C + 6, S + 1, 0x18, b"!")] + _close(62, C + 7, S + 1))
    r = run(path)
    info = r.collector.closed[0]
    assert r.engine.keepalives == 1 and info["dirs"][0]["retransmissions"] == 0
    assert r.collector.dirs[(0, 0)].data == b"hello!" and info["dirs"][0]["conflicts"] == 1
    run_cli("gateway", path, "--store", tmp_path / "g", "--keep", check=True)
    (f,) = json.loads(run_cli("inspect", tmp_path / "g", "--json", check=True).stdout)["connections"]
    recs = json.loads(run_cli("inspect", tmp_path / "g" / f["file"], "--json", "-n", "-1", check=True).stdout)["record_list"]
    probe = [x for x in recs if "keep-alive" in x["rflags"]]
    assert len(probe) == 1 and "retransmission" not in probe[0]["rflags"] and "conflict" in probe[0]["rflags"]


WSCALE7 = b"\x01\x03\x03\x07"      # NOP, window scale 7


def _zero_window(probe, scaled=False, window=0):
    """"hello", the server acknowledges it with `window`, the client sends `probe` (one byte at
    the next sequence number), the server acknowledges it with the same window and then opens
    it, and the client sends "world" there."""
    syns = HANDSHAKE if not scaled else [
        (0, True, C, 0, 0x02, b"", 8192, WSCALE7), (0.01, False, S, C + 1, 0x12, b"", 8192, WSCALE7),
        HANDSHAKE[2]]
    return syns + [
        (0.03, True, C + 1, S + 1, 0x18, b"hello"), (0.04, False, S + 1, C + 6, 0x10, b"", window),
        (0.5, True, C + 6, S + 1, 0x10, probe), (0.51, False, S + 1, C + 6, 0x10, b"", window),
        (1, False, S + 1, C + 6, 0x10, b"", 65535), (1.01, True, C + 6, S + 1, 0x18, b"world"),
        (1.02, False, S + 1, C + 11, 0x10, b"")] + _close(2, C + 11, S + 1)


@pytest.mark.parametrize("scaled", [False, True])
def test_a_zero_window_probe_is_not_the_stream(tmp_path, scaled):
    """The server advertised a zero window (0 whether scaled or not): the client's one byte at
    the next sequence number, acknowledging all the server sent, is a zero-window probe, which
    the receiver drops (RFC 9293 3.8.6.1). It is counted and not applied, so the byte sent
    there once the window opens is the stream, with no conflict (the probe's byte used to win
    under `first`)."""
    path = _timed_capture(tmp_path / "zwp.pcap", _zero_window(b"X", scaled))
    r = run(path)
    info = r.collector.closed[0]["dirs"][0]
    assert streams(r)[0] == (b"helloworld", b"") and info["conflicts"] == 0
    assert r.engine.zero_window_probes == 1 and info["retransmissions"] == 0 and r.engine.keepalives == 0
    if not scaled:
        run_cli("gateway", path, "--store", tmp_path / "g", "--keep", check=True)
        (f,) = json.loads(run_cli("inspect", tmp_path / "g", "--json", check=True).stdout)["connections"]
        recs = json.loads(run_cli("inspect", tmp_path / "g" / f["file"], "--json", "-n", "-1",
                                  check=True).stdout)["record_list"]
        assert [x["rflags"] for x in recs if x["len"] == 1] == [["ignored"]]


def test_a_zero_window_from_the_syn_ack_makes_a_probe_too(tmp_path):
    """A SYN-ACK's window field is never scaled, and 0 is 0: a byte at ISN + 1 before the
    window opens is a probe."""
    path = _timed_capture(tmp_path / "zwpsyn.pcap", [
        (0, True, C, 0, 0x02, b"", 8192, WSCALE7), (0.01, False, S, C + 1, 0x12, b"", 0, WSCALE7),
        (0.02, True, C + 1, S + 1, 0x10, b""), (0.5, True, C + 1, S + 1, 0x10, b"X"),
        (0.51, False, S + 1, C + 1, 0x10, b"", 0), (1, False, S + 1, C + 1, 0x10, b"", 1),
        (1.01, True, C + 1, S + 1, 0x18, b"hello")] + _close(2, C + 6, S + 1))
    r = run(path)
    assert streams(r)[0] == (b"hello", b"") and r.engine.zero_window_probes == 1
    assert r.collector.closed[0]["dirs"][0]["conflicts"] == 0


@pytest.mark.parametrize("case", ["open", "reopened", "two_bytes", "beyond", "unacked"])
def test_near_misses_of_a_zero_window_probe_are_the_stream(tmp_path, case):
    """What is not a probe is delivered: one byte while the window is open (or open again), two
    bytes, one byte beyond the next expected, or one byte when the zero window did not
    acknowledge all the client sent."""
    if case == "open":
        pkts = _zero_window(b"!", window=1)
    elif case == "reopened":
        pkts = _zero_window(b"!")
        pkts[4:5] = [pkts[4], (0.2, False, S + 1, C + 6, 0x10, b"", 512)]
    elif case == "two_bytes":
        pkts = _zero_window(b"!!")
    elif case == "beyond":
        pkts = [p if p[0] != 0.5 else (0.5, True, C + 8, S + 1, 0x10, b"!") for p in _zero_window(b"!")]
    else:
        pkts = _zero_window(b"!")
        pkts[4] = (0.04, False, S + 1, C + 5, 0x10, b"", 0)
    r = run(_timed_capture(tmp_path / "near.pcap", pkts))
    assert r.engine.zero_window_probes == 0
    want = {"two_bytes": b"hello!!rld", "beyond": b"hellowo!ld"}.get(case, b"hello!orld")
    assert streams(r)[0] == (want, b"")


def test_a_probe_then_the_same_byte_delivers_it_once(tmp_path):
    """A real zero-window probe carries the next byte, and the same byte comes again once the
    window opens: delivered once, no conflict, no retransmission."""
    r = run(_timed_capture(tmp_path / "zwpsame.pcap", _zero_window(b"w")))
    info = r.collector.closed[0]["dirs"][0]
    assert streams(r)[0] == (b"helloworld", b"") and r.engine.zero_window_probes == 1
    assert (info["conflicts"], info["retransmissions"], info["delivered"]) == (0, 0, 10)


@pytest.mark.parametrize("early", [
    [(0.005, False, S + 1, C + 1, 0x18, b"EVIL")],
    [(0.005, False, S + 3, C + 1, 0x18, b"XX")],
    # (the second, a second after the first, used to fix the start on its own)
    [(0.005, False, S + 1, C + 1, 0x18, b"EV"), (1.2, False, S + 3, C + 1, 0x18, b"IL")],
    # half the sequence space away: the real bytes are still read where they lie
    [(0.005, False, (S + 1 - 0x7FFFFFFE) % 2**32, C + 1, 0x18, b"EVIL")],
    [(0.005, False, S + 1 + 0x7FFFFFFE, C + 1, 0x18, b"EVIL")],
])
def test_server_data_before_its_syn_ack_is_not_the_stream(tmp_path, early):
    """The client sent its SYN and nothing since: in SYN-SENT it takes nothing but a SYN-ACK
    (RFC 9293 3.10.7.3), so server data sent before the SYN-ACK never reaches it. When the
    SYN-ACK comes after such data, the data is dropped and counted; the server's real bytes
    are the stream, with no conflict (the early copy used to win under `first`)."""
    t = early[-1][0]
    path = _timed_capture(tmp_path / "early.pcap", [(0, True, C, 0, 0x02, b"")] + early + [
        (t + 0.01, False, S, C + 1, 0x12, b""), (t + 0.02, True, C + 1, S + 1, 0x10, b""),
        (t + 0.03, True, C + 1, S + 1, 0x18, b"GET"), (t + 0.04, False, S + 1, C + 4, 0x18, b"GOOD"),
        (t + 0.05, False, S + 5, C + 4, 0x18, b"MORE")] + _close(t + 1, C + 4, S + 9))
    r = run(path)
    assert streams(r)[0] == (b"GET", b"GOODMORE") and r.collector.dirs[(0, 1)].gaps == []
    info = r.collector.closed[0]["dirs"][1]
    assert info["conflicts"] == 0 and not info["midstream"]
    assert r.engine.before_synack_bytes == sum(len(e[5]) for e in early) and r.engine.held_total == 0


@pytest.mark.parametrize("case", ["ack_first", "no_syn_ack", "syn_ack_late"])
def test_server_data_the_client_may_have_taken_is_the_stream(tmp_path, case):
    """Near misses, kept as before: the capture missed the SYN-ACK and the client's ACK comes
    first; or the server's data (an answer to Fast Open data on the SYN) comes before the
    client's ACK and no SYN-ACK is ever captured; or the client's ACK, the data, and the
    SYN-ACK last (a reordered capture): in each the client left SYN-SENT, or may have."""
    syn = [(0, True, C, 0, 0x02, b"GET")]
    ack = [(0.02, True, C + 4, S + 1, 0x10, b"")]
    data = [(0.03, False, S + 1, C + 4, 0x18, b"GOOD")]
    pkts = {"ack_first": syn + ack + data,
            "no_syn_ack": syn + [(0.01,) + data[0][1:], (0.02, True, C + 4, S + 5, 0x10, b"")],
            "syn_ack_late": syn + ack + data + [(0.04, False, S, C + 1, 0x12, b"")]}[case]
    r = run(_timed_capture(tmp_path / "near.pcap", pkts + _close(1, C + 4, S + 5)))
    assert streams(r)[0] == (b"GET", b"GOOD") and r.engine.before_synack_bytes == 0
    assert r.collector.dirs[(0, 1)].gaps == []


def test_a_direction_ends_at_two_tib_and_its_record_file_keeps_the_other_intact(tmp_path):
    """Holes of 512 MiB, each acknowledged, carry the client's stream past 3 TiB (its room in a
    record file, before the server's): past 2 TiB its bytes are counted, never written over the
    server's."""
    step = 1 << 29
    pkts = HANDSHAKE + [(0.03, False, S + 1, C + 1, 0x18, b"S" * 100)]
    for k in range(6300):
        seq = (C + 1 + k * step) % (1 << 32)
        pkts.append((0.1 + k * 0.001, True, seq, S + 101, 0x18, b"z" * 100))
        pkts.append((0.1 + k * 0.001 + 0.0005, False, S + 101, (seq + 100) % (1 << 32), 0x10, b""))
    path = _timed_capture(tmp_path / "long.pcap", pkts)
    res = json.loads(run_cli("gateway", path, "--store", tmp_path / "g", "--keep", "--json", check=True).stdout)
    # (past the limit nothing is delivered, so the anchor stops following: later segments read
    # as old copies, and only those within reach count as beyond)
    assert 0 < res["engine"]["beyond_limit_bytes"] <= (6300 - 4096) * 100
    from flowsift.streams.reader import RecordFile
    with RecordFile(tmp_path / "g" / "c00000000.rec") as rf:
        assert rf.data(1, 0, 100) == b"S" * 100


def test_a_late_segment_in_a_given_up_hole_is_no_retransmission(tmp_path):
    """Bytes held past the per-direction bound are given up as a hole; when the missing bytes
    come after, they were sent once: unverified, not a retransmission."""
    path = _timed_capture(tmp_path / "late.pcap", HANDSHAKE + [
        (0.03, True, C + 101, S + 1, 0x18, b"B" * 200), (0.04, True, C + 1, S + 1, 0x18, b"A" * 100)]
        + _close(1, C + 301, S + 1))
    s = json.loads(run_cli("streams", path, "--discard", "--json", "--reassembly", "max_held_per_dir=100",
                           check=True).stdout)
    assert s["gaps"] == 1 and s["retransmissions"] == 0 and s["unverified_bytes"] == 100


def test_max_connections_bounds_the_lingering_connections_too(tmp_path):
    """Finished connections linger (late packets stay late), but no more of them than
    max_connections: past it the earliest ended stop lingering, counted, so a flood of short
    connections does not grow the table at its rate times the linger."""
    from test_store_faults import many_connections
    path = many_connections(tmp_path / "many.pcap", 2000, block=50)
    r = run(path, max_connections=100)
    e = r.engine.counters()
    assert r.engine.totals()["tcp"] == 2000 and e["late_packets"] == 0
    assert e["lingers_cut"] >= 2000 - 2 * 100
    r = run(path)
    assert r.engine.counters()["lingers_cut"] == 0
