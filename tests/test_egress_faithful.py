"""-w writes the input plus the logged edits and verdicts, and nothing else: bytes no edit named
stay as they came (conflicting copies, checksums wrong on the wire), verdicts cover every copy
of what they dropped, and the file is the source's link type, whole or not there at all.

Checksums are checked here with a ones' complement sum of our own and by tshark."""
import ipaddress
import json
import struct

from conftest import CORPUS, require, run_cli
from test_write_back import frames

A, B = "10.0.0.1", "10.0.0.2"
T0 = 1_700_000_000 * 10**6


def csum(data, start=0):
    if len(data) % 2:
        data += b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload, total=None):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload) if total is None else total, 1, 0, 64, proto, 0,
                    ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def transport(src, dst, proto, seg, bad=False, zero=False):
    """`seg` with its checksum right (or wrong by a constant, or 0: no UDP checksum)."""
    at = 16 if proto == 6 else 6
    if zero:
        return seg
    pseudo = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + struct.pack("!BBH", 0, proto, len(seg))
    c = csum(pseudo + seg) or (0xFFFF if proto == 17 else 0)
    return seg[:at] + struct.pack("!H", c ^ (0x1111 if bad else 0)) + seg[at + 2:]


def tcp(client, seq, ack, flags, payload=b"", bad=False, total=None):
    s, d, sp, dp = (A, B, 40000, 80) if client else (B, A, 80, 40000)
    seg = struct.pack("!HHIIBBHHH", sp, dp, seq, ack, 5 << 4, flags, 8192, 0, 0) + payload
    return b"\2\0\0\0\0\1\2\0\0\0\0\2\x08\x00" + ipv4(s, d, 6, transport(s, d, 6, seg, bad), total)


def udp(payload, zero=False):
    seg = struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload
    return b"\2\0\0\0\0\1\2\0\0\0\0\2\x08\x00" + ipv4(A, B, 17, transport(A, B, 17, seg, zero=zero))


def pcap(path, frames, gaps_us=1000):
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, f in enumerate(frames):
        t = T0 + i * gaps_us if not isinstance(f, tuple) else T0 + f[0]
        f = f[1] if isinstance(f, tuple) else f
        out.append(struct.pack("<IIII", t // 10**6, t % 10**6, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))
    return path


def checksums_ok(frame):
    """(IPv4 header checksum right, transport checksum right) of an Ethernet/IPv4 frame, the
    transport length taken from the frame (a TSO capture's IP length says 0)."""
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    proto, seg = ip[9], ip[ihl:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, proto, len(seg))
    return csum(ip[:ihl]) == 0, csum(pseudo + seg) == 0


def module(tmp_path, name, hook, body, writes):
    path = tmp_path / f"{name}.py"
    path.write_text(f'''
from flowsift.modules import Module

class M(Module):
    """A module of a test.

    Synopsis: {name}
    """
    name = "{name}"
    writes = frozenset({writes!r})

    def {hook}:{body}
''')
    return path


def chain(*args):
    res = run_cli("chain", *args, "--json", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_an_edit_changes_only_the_bytes_it_names(tmp_path):
    # frame 4 is an injected copy of bytes 0..10 with a wrong checksum (a receiver drops it),
    # frame 5 the genuine one: neither carries "secret", so both leave as they came -- egress
    # used to write the delivered bytes into every packet of an edited direction and recompute
    # checksums, which made the injected frame valid and overwrote the genuine one with it
    src = pcap(tmp_path / "in.pcap", [
        tcp(True, 100, 0, 0x02), tcp(False, 500, 101, 0x12), tcp(True, 101, 501, 0x10),
        tcp(True, 101, 501, 0x18, b"AAAAAAAAAA", bad=True), tcp(True, 101, 501, 0x18, b"GET /x HTT"),
        tcp(True, 111, 501, 0x18, b"P/1.0 k=secret\r\n\r\n"), tcp(False, 501, 129, 0x10)])
    out = tmp_path / "out.pcap"
    summary = chain("redact(pattern=secret)", src, "-w", out)
    assert summary["egress"]["edited"] == 1
    before, after = frames(src), frames(out)
    assert [i for i, (a, b) in enumerate(zip(before, after)) if a != b] == [5]
    assert after[5].endswith(b"k=XXXXXX\r\n\r\n") and checksums_ok(after[5]) == (True, True)
    rows = subprocess_fields(out, "tcp.checksum.status")
    assert rows[3] == "0" and rows[4] == rows[5] == "1"          # tshark: wrong stays wrong


def subprocess_fields(path, field):
    import subprocess
    return subprocess.run([require("tshark"), "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                           "-r", str(path), "-T", "fields", "-e", field],
                          capture_output=True, text=True, check=True).stdout.splitlines()


def test_a_tso_capture_with_ip_length_0_is_edited(tmp_path):
    # captured on the sending host before segmentation offload: the IP total length says 0.
    # Its transport length came from it: struct.error, an internal error, half an output file.
    payload = b"GET /secret HTTP/1.0\r\n\r\n"
    src = pcap(tmp_path / "in.pcap", [
        tcp(True, 100, 0, 0x02), tcp(False, 500, 101, 0x12), tcp(True, 101, 501, 0x10),
        tcp(True, 101, 501, 0x18, payload, total=0), tcp(False, 501, 101 + len(payload), 0x10)])
    out = tmp_path / "out.pcap"
    summary = chain("nat(to=10.9.9.9),redact(pattern=secret)", src, "-w", out)
    f = frames(out)[3]
    assert summary["egress"]["not_editable"] == 0
    assert f[14 + 2:14 + 4] == b"\0\0" and f[14 + 16:14 + 20] == bytes([10, 9, 9, 9])
    assert b"/XXXXXX " in f and checksums_ok(f) == (True, True)


def test_udp_redact_masks_within_each_datagram_and_no_checksum_stays_none(tmp_path):
    # a match ran on from one datagram into the next ("token=abc" + "hello" masked 14 bytes)
    src = pcap(tmp_path / "in.pcap", [udp(b"token=abc"), udp(b"hello world"), udp(b"token=xyz", zero=True)])
    out = tmp_path / "out.pcap"
    summary = chain("redact(pattern=token=[a-z]*)", src, "-w", out)
    a, b, c = frames(out)
    assert a.endswith(b"XXXXXXXXX") and b.endswith(b"hello world") and c.endswith(b"XXXXXXXXX")
    assert summary["modules"]["redact"]["bytes"] == 18
    assert checksums_ok(a) == (True, True)
    assert c[14 + 20 + 6:14 + 20 + 8] == b"\0\0"               # no UDP checksum over IPv4: still none


def test_w_keeps_a_null_loopback_capture_s_link_type(tmp_path):
    # link type 0 is false: `or 1` labelled the output Ethernet
    src = CORPUS / "linktype__pcpp__null_loopback.pcap"
    out = tmp_path / "out.pcap"
    chain("counter", src, "-w", out)
    assert struct.unpack_from("<I", out.read_bytes(), 20)[0] == 0
    assert frames(out) == frames(src)


def test_a_dropped_datagram_leaves_none_of_its_fragments(tmp_path):
    # the verdict named the rebuilt datagram: its 10 other fragments, with the request in
    # them, were written out
    src = CORPUS / "frag__pcpp__frag_http_req.pcap"
    mod = module(tmp_path, "dropall", "on_packet(self, flow, record)", "\n        flow.drop(record)", {"drop"})
    out = tmp_path / "out.pcap"
    summary = chain(str(mod), src, "-w", out)
    assert summary["egress"]["dropped"] == 11 and summary["egress"]["packets"] == 0
    assert frames(out) == []


def test_a_late_copy_of_a_dropped_packet_is_dropped_too(tmp_path):
    # the connection ended; 5 s later the dropped segment comes again: it reaches no module,
    # and left as it came
    src = pcap(tmp_path / "in.pcap", [
        (0, tcp(True, 100, 0, 0x02)), (1, tcp(False, 500, 101, 0x12)), (2, tcp(True, 101, 501, 0x10)),
        (3, tcp(True, 101, 501, 0x18, b"hello ")), (4, tcp(True, 107, 501, 0x18, b"DROPME")),
        (5, tcp(True, 113, 501, 0x11)), (6, tcp(False, 501, 114, 0x11)), (7, tcp(True, 114, 502, 0x10)),
        (5_000_000, tcp(True, 107, 501, 0x18, b"DROPME"))])
    mod = module(tmp_path, "dropper", "on_packet(self, flow, record)",
                 "\n        if b'DROPME' in bytes(flow.payload(record)):\n            flow.drop(record)", {"drop"})
    out = tmp_path / "out.pcap"
    summary = chain(str(mod), src, "-w", out)
    assert summary["engine"]["late_packets"] == 1
    assert summary["egress"]["dropped"] == 1 and summary["egress"]["late_dropped"] == 1
    assert len(frames(out)) == 7 and not any(b"DROPME" in f for f in frames(out))


def test_w_leaves_no_output_when_the_run_fails(tmp_path):
    # a pcapng whose packets take a second link type after its first batch: found at the end,
    # and the 512 frames written before looked like a whole capture
    from pcapgen import ether, epb, idb, ipv4 as ip, shb, tcp as seg
    blocks = [shb(), idb(1)]
    for i in range(600):
        blocks.append(epb(0, T0 + i, ether(ip(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 6,
                                              seg(1000 + i, 80, flags=0x02)))))
    blocks.append(idb(113))
    blocks.append(epb(1, T0 + 600, b"\0\0\0\1\0\6" + b"\2" * 8 + b"\x08\0" + ip(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 6,
                                                                               seg(999, 80, flags=0x02))))
    src = tmp_path / "two.pcapng"
    src.write_bytes(b"".join(blocks))
    out = tmp_path / "out.pcap"
    res = run_cli("chain", "counter", src, "-w", out, "--events", "/dev/null")
    assert res.returncode == 2 and "one link type; this capture's packets have 2 (1, 113)" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.pcapng"]


def test_an_edit_a_read_only_module_asks_for_is_counted(tmp_path):
    src = pcap(tmp_path / "in.pcap", [tcp(True, 100, 0, 0x02), tcp(False, 500, 101, 0x12), tcp(True, 101, 501, 0x10)])
    mod = module(tmp_path, "asks", "on_packet(self, flow, record)", "\n        flow.edit(record, ip_ttl=3)", set())
    for mode in ((), ("--inline",)):
        summary = chain(str(mod), src, "-w", tmp_path / "out.pcap", *mode)
        assert summary["modules"]["asks"]["edits_rejected"] == 3, mode
