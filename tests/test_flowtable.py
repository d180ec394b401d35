"""The flow table: both directions on one flow, client side, reuse of a 5-tuple, removal."""
from conftest import decode_bytes
from pcapgen import A, A6, B, B6, ether, ipv4, ipv6, pcap, tcp, udp
from flowsift.io import Batch, Decoder, FlowTable, open_capture

SYN, SYNACK, ACK, FIN, RST = 0x02, 0x12, 0x10, 0x11, 0x04


def t(src, dst, sport, dport, flags, seq=0, v6=False, payload=b""):
    seg = tcp(sport, dport, seq=seq, flags=flags, payload=payload)
    return ether(ipv6(src, dst, 6, seg), ethertype=0x86DD) if v6 else ether(ipv4(src, dst, 6, seg))


def flows_of(tmp_path, frames):
    arr, *_ = decode_bytes(tmp_path, pcap([(i, 0, f) for i, f in enumerate(frames)]))
    return list(arr["flow_id"]), list(arr["dir"])


def test_both_directions_share_a_flow_and_the_client_is_dir_0(tmp_path):
    ids, dirs = flows_of(tmp_path, [t(B, A, 80, 5000, SYNACK, 7), t(A, B, 5000, 80, SYN, 1), t(A, B, 5000, 80, ACK, 2)])
    assert ids == [0, 0, 0]
    assert dirs == [1, 0, 0]          # the SYN-ACK's receiver is the client, even when seen first


def test_ipv6_and_udp(tmp_path):
    frames = [t(A6, B6, 1, 2, SYN, v6=True), t(B6, A6, 2, 1, SYNACK, v6=True),
              ether(ipv4(A, B, 17, udp(53, 1000))), ether(ipv4(B, A, 17, udp(1000, 53)))]
    ids, dirs = flows_of(tmp_path, frames)
    assert ids == [0, 0, 1, 1] and dirs == [0, 1, 0, 1]


def test_reused_tuple_after_close_is_a_new_connection(tmp_path):
    frames = [t(A, B, 5000, 80, SYN, 100), t(B, A, 80, 5000, SYNACK, 900), t(A, B, 5000, 80, FIN, 101),
              t(B, A, 80, 5000, FIN, 901), t(A, B, 5000, 80, SYN, 5555), t(A, B, 5000, 80, ACK, 5556)]
    ids, _ = flows_of(tmp_path, frames)
    assert ids == [0, 0, 0, 0, 1, 1]


def test_retransmitted_syn_is_not_a_new_connection(tmp_path):
    ids, _ = flows_of(tmp_path, [t(A, B, 1, 2, SYN, 10), t(A, B, 1, 2, SYN, 10), t(B, A, 2, 1, SYNACK, 50)])
    assert ids == [0, 0, 0]


def test_syn_with_another_isn_is_a_new_connection(tmp_path):
    ids, _ = flows_of(tmp_path, [t(A, B, 1, 2, SYN, 10), t(A, B, 1, 2, SYN, 99999)])
    assert ids == [0, 1]


def test_late_syn_of_a_shuffled_capture_joins_its_connection(tmp_path):
    frames = [t(A, B, 1, 2, ACK, 501, payload=b"x" * 10), t(A, B, 1, 2, ACK, 101, payload=b"y" * 400),
              t(A, B, 1, 2, FIN, 511), t(A, B, 1, 2, SYN, 100)]
    ids, _ = flows_of(tmp_path, frames)
    assert ids == [0, 0, 0, 0]


def test_remove_and_growth(tmp_path):
    frames = [ether(ipv4(A, bytes([10, 1, i >> 8, i & 255]), 17, udp(1, 2))) for i in range(5000)]
    path = tmp_path / "many.pcap"
    path.write_bytes(pcap([(0, 0, f) for f in frames]))
    ft, dec = FlowTable(), Decoder()
    for b in open_capture(path).batches(capacity=300):
        dec.decode(b)
        ft.update(b)
    assert len(ft) == 5000 and ft.udp_flows == 5000
    for i in range(0, 5000, 2):
        assert ft.remove(i)
    assert not ft.remove(0)
    # every remaining flow is still found by key: re-reading assigns no new ids to odd flows
    for b in open_capture(path).batches(capacity=300):
        dec.decode(b)
        ft.update(b)
        ids = b.array["flow_id"]
    assert len(ft) == 5000 + 2500
    assert ft.flow(1)["live"] and not ft.flow(0)["live"]


def test_a_connection_picked_up_midstream_names_its_server_by_its_ports(tmp_path):
    """Without SYN or SYN-ACK: the port on the service list when only one is; else the lower
    port (clients send from high, ephemeral ones); the first sender only when ports say nothing.
    Whichever side speaks first, every connection to one server is named alike."""
    frames = [t(B, A, 6000, 40001, ACK, payload=b"x"), t(A, B, 40002, 6000, ACK, payload=b"y"),   # X11: 6000 not listed
              t(B, A, 80, 40003, ACK, payload=b"z"), t(A, B, 40004, 80, ACK, payload=b"z"),
              t(A, B, 7000, 7000, ACK, payload=b"q"), t(A, B, 53, 853, ACK, payload=b"r"),        # first sender
              ether(ipv4(B, A, 17, udp(9999, 50000, b"u"))), ether(ipv4(A, B, 17, udp(50001, 9999, b"u")))]
    _, dirs = flows_of(tmp_path, frames)
    assert dirs == [1, 0, 1, 0, 0, 0, 1, 0]


def test_x11_connections_seen_midstream_all_name_port_6000_the_server(corpus):
    """pcapng-example holds eleven X11 connections picked up midstream, some first seen from the
    server's side: each has the X server (port 6000) as its server."""
    from flowsift.reassembly import Reassembler
    r = Reassembler()
    r.feed_capture(corpus / "pcapng__pcpp__pcapng-example.pcapng")
    x11 = [(i["client"][1], i["server"][1]) for i in r.collector.closed.values()
           if 6000 in (i["client"][1], i["server"][1])]
    assert len(x11) == 11 and all(server == 6000 for _, server in x11)


def _tagged(tags, *args, **kw):
    frame = t(*args, **kw)
    return frame[:12] + b"".join(tpid.to_bytes(2, "big") + vid.to_bytes(2, "big") for tpid, vid in tags) + frame[12:]


def _ids(tmp_path, frames, vlan_key):
    path = tmp_path / "tagged.pcap"
    path.write_bytes(pcap([(i, 0, f) for i, f in enumerate(frames)]))
    ft, dec, out = FlowTable(vlan_key), Decoder(), []
    for b in open_capture(path).batches(capacity=7):
        dec.decode(b)
        ft.update(b)
        out += b.array["flow_id"].tolist()
    return out, ft


def test_vlan_key_parts_one_five_tuple_by_its_vlan_ids(tmp_path):
    """Outer id, inner id (QinQ) and untagged are each their own flow with vlan_key; without it
    (the default, as tshark) the VLAN does not part flows. A priority tag (id 0) is untagged."""
    tags = [[(0x8100, 10)], [(0x8100, 20)], [(0x88A8, 10), (0x8100, 5)], [], [(0x8100, 0)], [(0x88A8, 10), (0x8100, 6)]]
    frames = [_tagged(tg, A, B, 5000, 80, SYN, 1) for tg in tags] + [_tagged(tg, B, A, 80, 5000, SYNACK, 9) for tg in tags]
    ids, ft = _ids(tmp_path, frames, False)
    assert ids == [0] * 12 and ft.flow(0)["vlan"] is None
    ids, ft = _ids(tmp_path, frames, True)
    assert ids == [0, 1, 2, 3, 3, 4] * 2 and ft.tcp_connections == 5
    assert [ft.flow(i)["vlan"] for i in range(5)] == [(10, 0), (20, 0), (10, 5), (0, 0), (10, 6)]
    assert ft.vlan_counts() == {(10, 0): [1, 0], (20, 0): [1, 0], (10, 5): [1, 0], (0, 0): [1, 0], (10, 6): [1, 0]}
    assert [ft.flow(i)["client"][1] for i in range(5)] == [5000] * 5
    # a flow is found by its whole key to be removed: the others stay
    assert ft.remove(1) and not ft.remove(1)
    assert [ft.flow(i)["live"] for i in range(5)] == [True, False, True, True, True]
