"""Header decoding: each link type, tags, IP variants, transport options, and property tests."""
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import decode_bytes
from pcapgen import A, A6, B, B6, ether, ipv4, ipv6, pcap, tcp, udp
from flowsift.io.reasons import REASONS

REASON = {v: k for k, v in REASONS.items()}
SEG = tcp(1234, 80, seq=1000, ack=2000, flags=0x18, payload=b"GET / HTTP/1.0\r\n\r\n")


def one(tmp_path, frame, linktype=1, wirelen=None):
    rec = (1, 0, frame) if wirelen is None else (1, 0, frame, wirelen)
    arr, _, pay, _, _ = decode_bytes(tmp_path, pcap([rec], linktype=linktype))
    return arr[0], pay[0]


def test_ethernet_ipv4_tcp_fields(tmp_path):
    p, pay = one(tmp_path, ether(ipv4(A, B, 6, SEG, ttl=33, ident=7)))
    assert p["status"] == 0 and p["ipver"] == 4 and p["proto"] == 6 and p["ttl"] == 33
    assert bytes(p["src"][:4]) == A and bytes(p["dst"][:4]) == B
    assert (p["sport"], p["dport"], p["seq"], p["ack"], p["tcp_flags"]) == (1234, 80, 1000, 2000, 0x18)
    assert p["l3_off"] == 14 and p["l4_off"] == 34 and pay == b"GET / HTTP/1.0\r\n\r\n"


@pytest.mark.parametrize("tags", [[(0x8100, 10)], [(0x88A8, 100), (0x8100, 10)], [(0x9100, 5), (0x8100, 6)]],
                         ids=["802.1Q", "802.1ad-QinQ", "old-QinQ"])
def test_vlan_tags(tmp_path, tags):
    p, pay = one(tmp_path, ether(ipv4(A, B, 6, SEG), vlans=tags))
    assert p["status"] == 0 and p["vlan"] == tags[0][1] and p["vlan_depth"] == len(tags)
    assert p["vlan_inner"] == (tags[1][1] if len(tags) > 1 else 0)
    assert p["l3_off"] == 14 + 4 * len(tags) and pay.startswith(b"GET")


def test_pppoe_and_mpls(tmp_path):
    pppoe = struct.pack(">BBHHH", 0x11, 0, 1, 40, 0x0021) + ipv4(A, B, 6, SEG)
    p, _ = one(tmp_path, ether(pppoe, ethertype=0x8864))
    assert p["status"] == 0 and p["proto"] == 6
    mpls = struct.pack(">I", (16 << 12) | 64) + struct.pack(">I", (17 << 12) | 0x100 | 64) + ipv6(A6, B6, 6, SEG)
    p, _ = one(tmp_path, ether(mpls, ethertype=0x8847))
    assert p["status"] == 0 and p["ipver"] == 6 and p["dport"] == 80


@pytest.mark.parametrize("linktype,prefix", [
    (0, struct.pack("<I", 2)), (0, struct.pack(">I", 2)),        # NULL in either host order
    (0, b"\x0f\x00\x08\x00"), (0, b"\x8f\x00\x08\x00"),              # NULL holding Cisco HDLC framing
    (0, b"\xff\x03\x00\x21"),                                       # NULL holding PPP in HDLC framing
    (108, struct.pack(">I", 2)),                                  # LOOP: network order
    (12, b""), (101, b""), (228, b""),                            # raw IP
    (113, struct.pack(">HHH8sH", 0, 1, 6, b"\0" * 8, 0x0800)),    # Linux SLL
    (276, struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\0" * 8)),  # Linux SLL2
])
def test_link_types_ipv4(tmp_path, linktype, prefix):
    p, pay = one(tmp_path, prefix + ipv4(A, B, 6, SEG), linktype=linktype)
    assert p["status"] == 0 and p["l3_off"] == len(prefix) and pay.startswith(b"GET")


@pytest.mark.parametrize("linktype,prefix", [(0, struct.pack("<I", 10)), (0, struct.pack("<I", 30)), (0, b"\x0f\x00\x86\xdd"),
                                             (0, b"\xff\x03\x00\x57"), (101, b""), (229, b"")])
def test_link_types_ipv6(tmp_path, linktype, prefix):
    p, _ = one(tmp_path, prefix + ipv6(A6, B6, 6, SEG), linktype=linktype)
    assert p["status"] == 0 and p["ipver"] == 6 and bytes(p["dst"]) == B6


def test_null_frames_in_hdlc_framing_of_other_protocols_are_named(tmp_path):
    """Cisco HDLC carries an ethertype (SLARP's here); PPP's other protocols (LCP) count as ppp."""
    from flowsift.io.reasons import ethertype_name
    p, _ = one(tmp_path, b"\x8f\x00\x80\x35" + b"\0" * 20, linktype=0)
    assert REASONS[int(p["status"])] == "non_ip" and p["ethertype"] == 0x8035
    p, _ = one(tmp_path, b"\xff\x03\xc0\x21" + b"\0" * 20, linktype=0)
    assert REASONS[int(p["status"])] == "non_ip" and ethertype_name(int(p["ethertype"])) == "ppp"


def test_a_loopback_capture_s_cisco_hdlc_frame_is_decoded_as_tshark_does(corpus):
    """Frame 3 of the capture starts 0f 00 08 00: tshark reads an IPv4 DNS response in it."""
    from flowsift.stats import capture_stats
    s = capture_stats(str(corpus / "linktype__pcpp__null_loopback.pcap"))
    assert s["undecoded"] == {} and s["protocols"] == {"udp": 2, "tcp": 1} and s["flows"]["udp"] == 2


@pytest.mark.parametrize("linktype,head", [
    (113, struct.pack(">HHH8sH", 0, 1, 6, b"\0" * 8, 0x8100)),
    (276, struct.pack(">HHIHBB8s", 0x8100, 0, 2, 1, 0, 6, b"\0" * 8)),
], ids=["SLL", "SLL2"])
def test_cooked_capture_with_a_vlan_tag(tmp_path, linktype, head):
    # libpcap puts back the tag the kernel took off (tcpdump -i any on a host with VLANs)
    p, pay = one(tmp_path, head + struct.pack(">HH", 42, 0x0800) + ipv4(A, B, 6, SEG), linktype=linktype)
    assert p["status"] == 0 and p["vlan"] == 42 and p["vlan_depth"] == 1
    assert p["l3_off"] == len(head) + 4 and pay.startswith(b"GET")


def test_ipv4_authentication_header_is_walked(tmp_path):
    ah = struct.pack(">BBHII", 6, 4, 0, 0x100, 1) + b"\0" * 12   # next header TCP, 24 bytes
    p, pay = one(tmp_path, ether(ipv4(A, B, 51, ah + SEG)))
    assert p["status"] == 0 and p["proto"] == 6 and p["dport"] == 80 and pay.startswith(b"GET")
    assert p["l4_off"] == 14 + 20 + 24


def test_unsupported_link_type_and_non_ip(tmp_path):
    p, _ = one(tmp_path, b"\0" * 40, linktype=147)
    assert p["status"] == REASON["unsupported_link_type"]
    p, _ = one(tmp_path, ether(b"\0" * 28, ethertype=0x0806))
    assert p["status"] == REASON["non_ip"] and p["ethertype"] == 0x0806


def test_ipv4_options_and_padding(tmp_path):
    frame = ether(ipv4(A, B, 6, SEG, options=b"\x01\x01\x01\x00")) + b"\0" * 6   # + Ethernet padding
    p, pay = one(tmp_path, frame)
    assert p["l4_off"] == 14 + 24 and pay == b"GET / HTTP/1.0\r\n\r\n"
    assert p["flags"] & 128   # PF_TRAILER: the padding is not payload


def test_ipv4_fragments(tmp_path):
    first, _ = one(tmp_path, ether(ipv4(A, B, 6, SEG[:24], frag=0x2000, ident=9)))
    assert first["flags"] & 2 and first["flags"] & 4 and first["flags"] & 8 and first["frag_id"] == 9
    assert first["dport"] == 80 and first["flags"] & 256
    later, _ = one(tmp_path, ether(ipv4(A, B, 6, SEG[24:], frag=3, ident=9)))
    assert later["flags"] & 2 and not later["flags"] & 4 and later["frag_off"] == 24 and later["dport"] == 0


def test_ipv6_extension_headers_and_fragments(tmp_path):
    hop = bytes([60, 0]) + b"\x01\x04\0\0\0\0"                  # hop-by-hop -> destination options
    dst = bytes([44, 0]) + b"\x01\x04\0\0\0\0"                  # destination options -> fragment
    atomic = struct.pack(">BBHI", 6, 0, 0, 77)                   # offset 0, M=0: not really a fragment
    p, pay = one(tmp_path, ether(ipv6(A6, B6, 0, hop + dst + atomic + SEG), ethertype=0x86DD))
    assert p["status"] == 0 and p["proto"] == 6 and not p["flags"] & 2 and pay.startswith(b"GET")
    frag = struct.pack(">BBHI", 6, 0, 1, 78)                     # offset 0, M=1
    p, _ = one(tmp_path, ether(ipv6(A6, B6, 44, frag + SEG), ethertype=0x86DD))
    assert p["flags"] & 2 and p["flags"] & 4 and p["frag_id"] == 78 and p["dport"] == 80


def test_tcp_options(tmp_path):
    opts = (b"\x02\x04\x05\xb4" + b"\x01\x03\x03\x07" + b"\x04\x02" + b"\x08\x0a" + struct.pack(">II", 11, 22)
            + b"\x01\x01" + b"\x05\x12" + struct.pack(">IIII", 100, 200, 300, 400))
    p, _ = one(tmp_path, ether(ipv4(A, B, 6, tcp(1, 2, flags=0x02, options=opts))))
    assert p["mss"] == 1460 and p["wscale"] == 7 and (p["tsval"], p["tsecr"]) == (11, 22)
    assert p["nsack"] == 2 and list(p["sack"][:4]) == [100, 200, 300, 400]
    assert p["opts"] & 0x1F == 0x1F and not p["flags"] & 32
    p, _ = one(tmp_path, ether(ipv4(A, B, 6, tcp(1, 2, options=b"\x02\x09\x05\xb4"))))   # length runs past header
    assert p["status"] == 0 and p["flags"] & 32


@pytest.mark.parametrize("frame,reason", [
    (ether(b"")[:10], "truncated_link_header"),
    (ether(ipv4(A, B, 6, SEG)[:15]), "truncated_ip_header"),
    (ether(b"\x55" + b"\0" * 39), "bad_ip_version"),
    (ether(b"\x44" + ipv4(A, B, 6, SEG)[1:]), "bad_ip_header_length"),
    (ether(ipv4(A, B, 6, SEG, total=15)), "bad_ip_total_length"),
    (ether(ipv4(A, B, 6, SEG[:12])), "truncated_tcp_header"),
    (ether(ipv4(A, B, 6, tcp(1, 2, doff=4))), "bad_tcp_data_offset"),
    (ether(ipv4(A, B, 6, tcp(1, 2, doff=15))), "bad_tcp_data_offset"),
    (ether(ipv4(A, B, 17, b"\0\1\0\2")), "truncated_udp_header"),
    (ether(ipv4(A, B, 17, udp(1, 2, b"abc", length=50))), "bad_udp_length"),
    (ether(ipv6(A6, B6, 0, b"\x06\x09"), ethertype=0x86DD), "truncated_ipv6_extension"),
])
def test_malformed_headers_get_a_reason(tmp_path, frame, reason):
    p, _ = one(tmp_path, frame)
    assert REASONS[int(p["status"])] == reason


def test_ip_length_beyond_frame_decodes_what_is_there(tmp_path):
    p, pay = one(tmp_path, ether(ipv4(A, B, 6, SEG, total=200)))
    assert p["status"] == 0 and p["flags"] & 512 and p["flags"] & 1     # flagged, and counted as cut
    assert pay == SEG[20:] and p["payload_wirelen"] == 200 - 40


def test_tso_zero_ip_length_uses_frame(tmp_path):
    big = tcp(1, 2, payload=b"x" * 4000)
    p, pay = one(tmp_path, ether(ipv4(A, B, 6, big, total=0)))
    assert p["status"] == 0 and len(pay) == 4000 and p["flags"] & 16


def test_zero_ipv6_payload_length_uses_frame_as_ipv4_does(tmp_path):
    """A GSO send captured before the NIC split it (Linux BIG TCP) has payload length 0 and no
    Jumbo Payload option; a jumbogram has the option. No Next Header alone may carry nothing:
    the bytes after it are padding."""
    big = tcp(1, 2, payload=b"x" * 4000)
    p, pay = one(tmp_path, ether(ipv6(A6, B6, 6, big, plen=0), ethertype=0x86DD))
    assert p["status"] == 0 and len(pay) == 4000 and p["flags"] & 16
    dgram = struct.pack(">HHHH", 5, 6, 0, 0) + b"j" * 70000                  # UDP length 0 too
    jumbo = bytes([17, 0, 0xC2, 4]) + struct.pack(">I", 8 + len(dgram))      # Hop-by-Hop: Jumbo Payload
    p, pay = one(tmp_path, ether(ipv6(A6, B6, 0, jumbo + dgram, plen=0), ethertype=0x86DD))
    assert p["status"] == 0 and p["proto"] == 17 and len(pay) == 70000 and p["flags"] & 16
    p, _ = one(tmp_path, ether(ipv6(A6, B6, 59, b"\0" * 6, plen=0), ethertype=0x86DD))
    assert p["status"] == 0 and p["proto"] == 59 and not p["flags"] & 16 and p["flags"] & 128
    # fragments so captured: each frame gives its fragment's length, and the datagram is rebuilt
    from flowsift.extract import extract_streams
    from pcapgen import fragments
    frames = [fr[:18] + b"\0\0" + fr[20:] for fr in fragments(A6, B6, 17, udp(5, 6, b"f" * 400), [0, 200], v6=True)]
    f = tmp_path / "frag0.pcap"
    f.write_bytes(pcap([(1, k, fr) for k, fr in enumerate(frames)]))
    s = extract_streams(str(f))
    assert s["fragments"]["datagrams"] == 1 and s["bytes"] == 400


def test_snaplen_cut_inside_tcp_header_is_truncation_not_malformation(tmp_path):
    frame = ether(ipv4(A, B, 6, SEG))
    p, _ = one(tmp_path, frame[:14 + 20 + 10], wirelen=len(frame))
    assert REASONS[int(p["status"])] == "truncated_tcp_header"


# --- properties -----------------------------------------------------------------------------

ports = st.integers(0, 65535)
u32 = st.integers(0, 2**32 - 1)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(v6=st.booleans(), sport=ports, dport=ports, seq=u32, ack=u32, flags=st.integers(0, 255),
       window=st.integers(0, 65535), payload=st.binary(max_size=300), ttl=st.integers(0, 255),
       vlans=st.lists(st.integers(0, 4095), max_size=2), mss=st.one_of(st.none(), st.integers(0, 65535)),
       pad=st.integers(0, 20))
def test_tcp_fields_round_trip(tmp_path, v6, sport, dport, seq, ack, flags, window, payload, ttl, vlans, mss, pad):
    opts = b"" if mss is None else struct.pack(">BBH", 2, 4, mss)
    seg = tcp(sport, dport, seq=seq, ack=ack, flags=flags, window=window, options=opts, payload=payload)
    l3 = ipv6(A6, B6, 6, seg, hlim=ttl) if v6 else ipv4(A, B, 6, seg, ttl=ttl)
    frame = ether(l3, ethertype=0x86DD if v6 else 0x0800, vlans=[(0x8100, v) for v in vlans]) + b"\0" * pad
    p, pay = one(tmp_path, frame)
    assert p["status"] == 0
    assert (p["sport"], p["dport"], p["seq"], p["ack"], p["tcp_flags"], p["window"], p["ttl"]) == \
        (sport, dport, seq, ack, flags, window, ttl)
    assert pay == payload and p["payload_wirelen"] == len(payload)
    assert (p["mss"] if p["opts"] & 1 else None) == mss


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(linktype=st.sampled_from([0, 1, 12, 101, 108, 113, 228, 229, 276]), data=st.binary(max_size=200),
       cut=st.integers(0, 60))
def test_any_bytes_decode_or_get_a_reason(tmp_path, linktype, data, cut):
    """Garbage in, never a crash; offsets stay inside the captured bytes; status is a known reason."""
    frame = ether(ipv4(A, B, 6, SEG))[:cut] + data if linktype == 1 else data
    p, pay = one(tmp_path, frame, linktype=linktype)
    assert p["status"] == 0 or int(p["status"]) in REASONS
    if p["status"] == 0 and p["flags"] & 256 and p["proto"] in (6, 17):
        assert p["payload_off"] + p["payload_len"] <= len(frame)
        assert len(pay) == p["payload_len"] <= p["payload_wirelen"]


def test_a_fragment_sent_again_after_its_datagram_was_rebuilt_is_a_duplicate(tmp_path):
    import json
    from conftest import run_cli
    first = ether(ipv4(A, B, 6, SEG[:24], frag=0x2000, ident=9))
    last = ether(ipv4(A, B, 6, SEG[24:], frag=3, ident=9))
    lone = ether(ipv4(A, B, 6, SEG[:24], frag=0x2000, ident=10))        # its rest never comes
    f = tmp_path / "f.pcap"
    f.write_bytes(pcap([(1, 0, first), (1, 1, last), (1, 2, first), (1, 3, lone)]))
    ip = json.loads(run_cli("stats", "--json", f, check=True).stdout)["ip"]
    assert ip["reassembled_datagrams"] == 1 and ip["late_duplicate_fragments"] == 1
    assert ip["incomplete_datagrams"] == 1


def test_a_datagram_in_too_many_pieces_is_counted_as_such(tmp_path):
    """Every other 8-byte piece first, so that more than 64 holes are held at once: the datagram
    is given up and counted apart, not as one whose fragments never all arrived."""
    import json
    from conftest import run_cli
    payload = bytes(range(256)) * 4 + b"x" * 104                      # 1128 bytes: 141 pieces
    udp_dgram = struct.pack(">HHHH", 53, 53, 8 + len(payload), 0) + payload
    pieces = [(k * 8, udp_dgram[k * 8:k * 8 + 8]) for k in range(len(udp_dgram) // 8)]
    order = pieces[0::2] + pieces[1::2]
    frames = []
    for off, chunk in order:
        more = off + 8 < len(udp_dgram)
        frames.append((1, len(frames), ether(ipv4(A, B, 17, chunk, ident=77, frag=(0x2000 if more else 0) | (off // 8)))))
    f = tmp_path / "pieces.pcap"
    f.write_bytes(pcap(frames))
    ip = json.loads(run_cli("stats", "--json", f, check=True).stdout)["ip"]
    assert ip["datagrams_in_too_many_pieces"] == 1 and ip["incomplete_datagrams"] == 0


@pytest.mark.parametrize("batch", ["1", "4096"])
def test_one_broken_timestamp_does_not_expire_the_datagrams_being_rebuilt(tmp_path, batch):
    """A packet stamped ten years ahead between two fragments 1 ms apart: the fragments' clock
    does not follow it (the next packet does not confirm it), whatever the batches."""
    import json
    import os
    import subprocess
    import sys
    body = struct.pack(">HHHH", 1000, 2000, 32, 0) + b"y" * 24
    t0 = 1_700_000_000
    frames = [(t0, 0, ether(ipv4(A, B, 17, body[:16], ident=77, frag=0x2000))),
              (t0 + 10 * 365 * 86400, 0, ether(ipv4(B, A, 17, struct.pack(">HHHH", 5, 6, 9, 0) + b"z"))),
              (t0, 1000, ether(ipv4(A, B, 17, body[16:], ident=77, frag=2)))]
    f = tmp_path / "outlier.pcap"
    f.write_bytes(pcap(frames))
    res = subprocess.run([sys.executable, "-m", "flowsift", "stats", "--json", str(f)], capture_output=True, text=True,
                         env={**os.environ, "FLOWSIFT_BATCH": batch}, timeout=60)
    ip = json.loads(res.stdout)["ip"]
    assert ip["reassembled_datagrams"] == 1 and ip["incomplete_datagrams"] == 0


def test_with_every_tracker_taken_the_datagram_begun_first_goes(tmp_path):
    """5,000 datagrams begun before any ends: the table holds 4,096, so the 904 begun first are
    given up (incomplete) and the others are rebuilt, found through the index after thousands of
    insertions and removals (the ends come newest first; the 904 late ones then begin datagrams
    of their own, which never complete)."""
    import json
    from conftest import run_cli
    frames = []
    body = struct.pack(">HHHH", 1000, 2000, 32, 0) + b"y" * 24
    for k in range(5000):
        src = bytes([10, 1, k >> 8, k & 0xFF])
        frames.append((1, k, ether(ipv4(src, B, 17, body[:16], ident=k, frag=0x2000))))
    for k in reversed(range(5000)):
        src = bytes([10, 1, k >> 8, k & 0xFF])
        frames.append((2, 5000 - k, ether(ipv4(src, B, 17, body[16:], ident=k, frag=2))))
    f = tmp_path / "many.pcap"
    f.write_bytes(pcap(frames))
    s = json.loads(run_cli("stats", "--json", f, check=True).stdout)
    assert s["ip"]["reassembled_datagrams"] == 4096 and s["ip"]["incomplete_datagrams"] == 2 * 904
    assert s["flows"]["udp"] == 4096


DEST_OPTS_UDP = bytes([17, 0]) + b"\x01\x04\0\0\0\0"        # Destination Options (PadN) -> UDP


def test_ipv6_fragments_whose_fragmentable_part_starts_with_destination_options_are_rebuilt(tmp_path):
    """The fragmentable part starts right after the Fragment header, with the Destination
    Options header in it: the first fragment's bytes are taken from there, and the datagram's
    headers decoded once it is whole."""
    from flowsift.extract import extract_streams
    from flowsift.reassembly import Reassembler
    from pcapgen import fragments
    payload = bytes(range(256)) * 2
    frames = fragments(A6, B6, 60, udp(52002, 9999, payload), [0, 200, 400], ident=22, v6=True, inner=DEST_OPTS_UDP)
    f = tmp_path / "destopts.pcap"
    f.write_bytes(pcap([(1, k, fr) for k, fr in enumerate(frames)]))
    first, _ = one(tmp_path, frames[0])
    assert first["flags"] & 4 and first["proto"] == 60 and first["l4_off"] == 14 + 40 + 8
    r = Reassembler()
    r.feed_capture(str(f))
    assert bytes(r.collector.dirs[(0, 0)].data) == payload
    s = extract_streams(str(f))
    assert s["fragments"]["datagrams"] == 1 and s["fragments"]["incomplete"] == 0
    assert s["capture_packets"] == accounted(s) == 3

def accounted(s):
    """A `streams` summary's packets as docs/cli.md accounts for them (it must be capture_packets)."""
    f = s["fragments"]
    return (s["packets"] + s["filtered"] + s["engine"]["late_packets"] + s["not_decoded"] + s["other_protocols"]
            + f["fragments"] - f["datagrams"])


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("proto,body,reason", [
    (17, udp(1000, 2000, b"u" * 392, length=600), "bad_udp_length"),
    (6, tcp(1000, 80, payload=b"t" * 380, doff=3), "bad_tcp_data_offset"),
], ids=["udp", "tcp"])
def test_a_rebuilt_datagram_whose_transport_header_is_bad_is_counted_as_not_decoded(tmp_path, v6, proto, body, reason):
    """As an unfragmented packet with the same header would be: under its reason, so that
    every packet read is still accounted for."""
    from flowsift.extract import extract_streams
    from flowsift.stats import capture_stats
    from pcapgen import fragments
    src, dst = (A6, B6) if v6 else (A, B)
    f = tmp_path / "bad.pcap"
    f.write_bytes(pcap([(1, k, fr) for k, fr in enumerate(fragments(src, dst, proto, body, [0, 200], v6=v6))]))
    s = extract_streams(str(f))
    assert s["fragments"]["datagrams"] == 1 and s["packets"] == 0 and s["not_decoded"] == 1
    assert s["capture_packets"] == accounted(s) == 2
    assert capture_stats(str(f))["ip"]["undecoded_datagrams"] == {reason: 1}


def test_a_datagram_of_another_protocol_counts_once_whether_rebuilt_or_not(tmp_path):
    """ICMP in fragments: rebuilt, it is one packet of another protocol; never completed, its
    fragments are counted as such, and not its first fragment as an ICMP packet too."""
    from flowsift.extract import extract_streams
    from pcapgen import fragments
    echo = struct.pack(">BBHHH", 8, 0, 0, 1, 1) + b"p" * 400
    whole = fragments(A, B, 1, echo, [0, 200], ident=5)
    lone = fragments(A, B, 1, echo, [0, 200], ident=6)[:1]
    f = tmp_path / "icmp.pcap"
    f.write_bytes(pcap([(1, k, fr) for k, fr in enumerate(whole + lone)]))
    s = extract_streams(str(f))
    assert s["other_protocols"] == 1 and s["fragments"]["incomplete"] == 1
    assert s["capture_packets"] == accounted(s) == 3


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("cut,order", [(1, [0, 1, 2]), (0, [2, 1, 0]), (2, [0, 1, 2]), (1, [0, 1])],
                         ids=["middle", "first-arriving-last", "last", "never-complete"])
def test_a_datagram_with_a_fragment_cut_by_the_snaplen_is_dropped_as_truncated(tmp_path, v6, cut, order):
    """Whether every fragment came (it is dropped when the last does) or not (when it is given
    up): a fragment was cut, so the datagram could never be whole, and says so."""
    from flowsift.extract import extract_streams
    from flowsift.stats import capture_stats
    from pcapgen import fragments
    src, dst = (A6, B6) if v6 else (A, B)
    frames = fragments(src, dst, 17, udp(3102, 9999, bytes(range(256)) * 2), [0, 200, 400], ident=43, v6=v6)
    recs = [(1, k, frames[i][:100], len(frames[i])) if i == cut else (1, k, frames[i]) for k, i in enumerate(order)]
    if len(order) == 3:
        recs.append((1, 9, frames[1]))          # sent again once the datagram was dropped: late
    f = tmp_path / "cut.pcap"
    f.write_bytes(pcap(recs))
    s = extract_streams(str(f))
    assert (s["fragments"]["truncated"], s["fragments"]["incomplete"], s["fragments"]["datagrams"]) == (1, 0, 0)
    assert s["fragments"]["late_duplicates"] == (len(order) == 3)
    assert s["capture_packets"] == accounted(s) == len(recs)
    ip = capture_stats(str(f))["ip"]
    assert ip["truncated_datagrams"] == 1 and ip["incomplete_datagrams"] == 0


GOOD = b"GOODGOODGOODGOOD" * 2


def fragmented_request(path, v6, pieces):
    """A TCP connection A:40000 -> B:80 whose one 32-byte request goes as the IP fragments
    `pieces`: (offset, bytes or None for the segment's own, more fragments?, ident), then the
    server's ACK and both FINs. Returns the request's TCP segment (52 bytes)."""
    from pcapgen import fragment
    src, dst = (A6, B6) if v6 else (A, B)

    def packet(a, b, segment):
        return ether(ipv6(a, b, 6, segment), ethertype=0x86DD) if v6 else ether(ipv4(a, b, 6, segment))
    seg = tcp(40000, 80, seq=1001, ack=5001, flags=0x18, payload=GOOD)
    frames = [packet(src, dst, tcp(40000, 80, seq=1000, flags=0x02)),
              packet(dst, src, tcp(80, 40000, seq=5000, ack=1001, flags=0x12)),
              packet(src, dst, tcp(40000, 80, seq=1001, ack=5001, flags=0x10))]
    for off, piece, more, ident in pieces:
        frames.append(fragment(src, dst, 6, off, seg[off:off + 20] if piece is None else piece, more, ident, v6))
    frames += [packet(dst, src, tcp(80, 40000, seq=5001, ack=1033, flags=0x10)),
               packet(src, dst, tcp(40000, 80, seq=1033, ack=5001, flags=0x11)),
               packet(dst, src, tcp(80, 40000, seq=5001, ack=1034, flags=0x11)),
               packet(src, dst, tcp(40000, 80, seq=1034, ack=5002, flags=0x10))]
    path.write_bytes(pcap([(1, k, f) for k, f in enumerate(frames)]))
    return seg


def request_pieces(seg, evil, ident=9):
    """The request as [0, 32) and [32, 52), with `evil` (offset, bytes) sent between them."""
    return [(0, seg[:32], True, ident), (evil[0], evil[1], True, ident), (32, seg[32:], False, ident)]


def test_an_ipv6_datagram_with_overlapping_fragments_is_discarded_and_its_retransmission_rebuilt(tmp_path):
    """RFC 5722: hosts discard it whole, so its bytes ([32, 40) from the overlapping fragment
    alone, which first-wins kept) must not reach the connection; the clean copy sent again
    (same identification) is rebuilt."""
    from flowsift.extract import extract_streams
    from flowsift.reassembly import Reassembler
    from flowsift.stats import capture_stats
    f = tmp_path / "evil6.pcap"
    seg = tcp(40000, 80, seq=1001, ack=5001, flags=0x18, payload=GOOD)
    pieces = request_pieces(seg, (24, b"EVILEVILEVILEVIL")) + [(0, seg[:32], True, 9), (32, seg[32:], False, 9)]
    fragmented_request(f, True, pieces)
    r = Reassembler()
    r.feed_capture(str(f))
    assert bytes(r.collector.dirs[(0, 0)].data) == GOOD
    s = extract_streams(str(f))
    fr = s["fragments"]
    assert (fr["overlap_discarded"], fr["datagrams"], fr["conflict_bytes"], s["conflicts"]) == (1, 1, 0, 0)
    assert s["capture_packets"] == accounted(s) == 12
    assert capture_stats(str(f))["ip"]["overlap_discarded_datagrams"] == 1


def test_an_ipv4_fragment_over_two_held_pieces_is_one_overlap(tmp_path):
    """`overlaps` counts fragments that overlapped bytes already held: one that spans two
    pieces held apart is one (it counted once per piece), and under `first` the datagram is
    rebuilt from the bytes held first."""
    from flowsift.extract import extract_streams
    f = tmp_path / "span.pcap"
    seg = tcp(40000, 80, seq=1001, ack=5001, flags=0x18, payload=GOOD)
    fragmented_request(f, False, [(0, seg[:16], True, 9), (24, seg[24:32], True, 9), (8, seg[8:40], True, 9),
                                  (40, seg[40:], False, 9)])
    s = extract_streams(str(f))
    fr = s["fragments"]
    assert (fr["overlaps"], fr["datagrams"], fr["conflict_bytes"], s["bytes"]) == (1, 1, 0, 32)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_duplicate_fragment_is_dropped_and_its_datagram_rebuilt_from_the_first_copy(tmp_path, v6):
    """A copy of a fragment already held (its bytes changed) does not discard an IPv6 datagram
    (RFC 5722 lets a host drop exact duplicates, as Linux does): the first copy stays, and the
    bytes that differed are counted as fragment conflicts, not as the connection's."""
    from flowsift.extract import extract_streams
    f = tmp_path / "dup.pcap"
    seg = tcp(40000, 80, seq=1001, ack=5001, flags=0x18, payload=GOOD)
    fragmented_request(f, v6, request_pieces(seg, (0, seg[:20] + b"EVILEVILEVIL")))
    s = extract_streams(str(f))
    fr = s["fragments"]
    assert (fr["overlap_discarded"], fr["datagrams"], fr["conflict_bytes"], s["conflicts"]) == (0, 1, 12, 0)
    assert s["bytes"] == 32 and s["capture_packets"] == accounted(s)


def test_ipv4_overlapping_fragments_follow_the_fragment_policy_setting(tmp_path):
    """IPv4 keeps its policy (no host-wide rule as RFC 5722's): `--reassembly
    fragment_policy=last` takes the later copy; the bytes that differed are counted in the
    summary's `fragments`, never in the connection's `conflicts`."""
    import json
    from conftest import run_cli
    f = tmp_path / "evil4.pcap"
    seg = tcp(40000, 80, seq=1001, ack=5001, flags=0x18, payload=GOOD)
    fragmented_request(f, False, request_pieces(seg, (24, b"EVILEVILEVILEVIL")))
    for policy, want in (("first", GOOD[:12] + b"EVILEVIL" + GOOD[20:]), ("last", b"GOODEVILEVILGOOD" + GOOD[16:])):
        out = tmp_path / policy
        s = json.loads(run_cli("streams", f, "-o", out, "--json", "--reassembly", f"fragment_policy={policy}",
                               check=True).stdout)
        assert [p.read_bytes() for p in out.glob("*.c2s")] == [want]
        assert (s["fragments"]["conflict_bytes"], s["fragments"]["overlap_discarded"], s["conflicts"]) == (16, 0, 0)
    # discard: the datagram goes, as a Linux host (4.19 on) drops it, and as IPv6's always do
    out = tmp_path / "discard"
    s = json.loads(run_cli("streams", f, "-o", out, "--json", "--reassembly", "fragment_policy=discard",
                           check=True).stdout)
    assert b"EVIL" not in b"".join(p.read_bytes() for p in out.glob("*.c2s"))
    assert (s["fragments"]["overlap_discarded"], s["fragments"]["datagrams"]) == (1, 0)
    res = run_cli("streams", f, "--discard", "--reassembly", "fragment_policy=bsd")
    assert res.returncode == 2 and res.stderr.strip() == (
        "flowsift: streams: --reassembly fragment_policy=bsd: one of first, last, discard expected")


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_stats_counts_a_malformed_fragment_as_streams_does(tmp_path, v6):
    """A last fragment at offset 65520 runs the datagram past 64 KiB: dropped, and `stats`
    says so (it showed only a decoded later fragment)."""
    from flowsift.extract import extract_streams
    from flowsift.stats import capture_stats
    f = tmp_path / "over64k.pcap"
    seg = tcp(40000, 80, seq=1001, ack=5001, flags=0x18, payload=GOOD)
    fragmented_request(f, v6, [(0, seg[:24], True, 9), (24, seg[24:], True, 9), (65520, b"X" * 32, False, 9)])
    assert extract_streams(str(f))["fragments"]["malformed"] == 1
    ip = capture_stats(str(f))["ip"]
    assert (ip["malformed_fragments"], ip["reassembled_datagrams"], ip["incomplete_datagrams"]) == (1, 0, 1)
