"""Hand-built captures for tests: pcap and pcapng written byte by byte with struct.

Independent of flowsift's reader on purpose, so the reader is checked against the formats'
specifications and not against itself.
"""
import struct


def pcap(records, linktype=1, nanosecond=False, big_endian=False, snaplen=65535, kuznetzov=False):
    """records: iterable of (ts_sec, ts_frac, data[, wirelen])."""
    e = ">" if big_endian else "<"
    magic = 0xA1B2CD34 if kuznetzov else (0xA1B23C4D if nanosecond else 0xA1B2C3D4)
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for rec in records:
        sec, frac, data = rec[:3]
        wire = rec[3] if len(rec) > 3 else len(data)
        out.append(struct.pack(e + "IIII", sec, frac, len(data), wire))
        if kuznetzov:
            out.append(struct.pack(e + "IHBB", 0, 0, 0, 0))
        out.append(data)
    return b"".join(out)


def _pad4(b):
    return b + b"\0" * (-len(b) % 4)


def _options(opts, e):
    if not opts:
        return b""
    out = b"".join(struct.pack(e + "HH", code, len(val)) + _pad4(val) for code, val in opts)
    return out + struct.pack(e + "HH", 0, 0)


def block(btype, body, e="<"):
    body = _pad4(body)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e="<", options=()):
    return block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _options(options, e), e)


def idb(linktype, snaplen=0, e="<", name=None, tsresol=None, tsoffset=None):
    opts = []
    if name is not None:
        opts.append((2, name.encode()))
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((14, struct.pack(e + "q", tsoffset)))
    return block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + _options(opts, e), e)


def epb(iface, ts, data, wirelen=None, e="<", options=()):
    wire = len(data) if wirelen is None else wirelen
    body = struct.pack(e + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), wire) + _pad4(data)
    return block(6, body + _options(options, e), e)


def opb(iface, ts, data, e="<"):
    body = struct.pack(e + "HHIIII", iface, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + _pad4(data)
    return block(2, body, e)


def spb(data, wirelen=None, e="<"):
    return block(3, struct.pack(e + "I", len(data) if wirelen is None else wirelen) + _pad4(data), e)


# --- packets -----------------------------------------------------------------------------

def ipv4(src, dst, proto, payload, ttl=64, ident=1, frag=0, options=b"", total=None):
    ihl = 5 + len(options) // 4
    tot = 4 * ihl + len(payload) if total is None else total
    return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, tot, ident, frag, ttl, proto, 0, bytes(src), bytes(dst)) + options + payload


def ipv6(src, dst, nh, payload, hlim=64, plen=None):
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload) if plen is None else plen, nh, hlim, bytes(src), bytes(dst)) + payload


def tcp(sport, dport, seq=1, ack=0, flags=0x18, window=8192, options=b"", payload=b"", doff=None):
    options = options + b"\0" * (-len(options) % 4)
    off = (5 + len(options) // 4) if doff is None else doff
    return struct.pack(">HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, window, 0, 0) + options + payload


def udp(sport, dport, payload=b"", length=None):
    return struct.pack(">HHHH", sport, dport, 8 + len(payload) if length is None else length, 0) + payload


def fragments(src, dst, proto, body, cuts, ident=1, v6=False, inner=b"", vlans=()):
    """`body` (what follows the IP header: transport header and payload) as IP fragments, one
    per piece starting at each of `cuts` (multiples of 8), in order; Ethernet frames (tagged
    with `vlans`, as ether() takes them). IPv6: `inner` (extension headers that follow the
    Fragment header) is part of what is cut, and `proto` is the Fragment header's next header."""
    body = inner + body
    ends = list(cuts[1:]) + [len(body)]
    return [fragment(src, dst, proto, start, body[start:end], end < len(body), ident, v6, vlans)
            for start, end in zip(cuts, ends)]


def fragment(src, dst, proto, offset, piece, more, ident=1, v6=False, vlans=()):
    """One IP fragment in an Ethernet frame: `piece` at `offset` (a multiple of 8) of its
    datagram, with the more-fragments flag `more` (any piece: overlapping ones too)."""
    if v6:
        fh = struct.pack(">BBHI", proto, 0, offset | more, ident)
        return ether(ipv6(src, dst, 44, fh + piece), ethertype=0x86DD, vlans=vlans)
    return ether(ipv4(src, dst, proto, piece, ident=ident, frag=(0x2000 if more else 0) | offset // 8), vlans=vlans)


def ether(payload, ethertype=0x0800, vlans=()):
    hdr = b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02"
    for tpid, vid in vlans:
        hdr += struct.pack(">HH", tpid, vid)
    return hdr + struct.pack(">H", ethertype) + payload


A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")


def timed_capture(path, packets, port=80):
    """A pcap of one TCP connection between A:40000 and B:`port`. packets: (seconds after the
    start, client sends?, seq, ack, flags, payload[, window[, options]]): the window field
    8192 and no TCP options unless given."""
    t0 = 1_700_000_000 * 10**6
    frames = []
    for at, from_client, seq, ack, flags, payload, *rest in packets:
        window, options = (list(rest) + [8192, b""][len(rest):])[:2]
        src, dst, sp, dp = (A, B, 40000, port) if from_client else (B, A, port, 40000)
        us = t0 + round(at * 10**6)
        frames.append((us // 10**6, us % 10**6, ether(ipv4(src, dst, 6, tcp(
            sp, dp, seq=seq, ack=ack, flags=flags, window=window, options=options, payload=payload)))))
    path.write_bytes(pcap(frames))
    return path


def udp_cut_capture(path):
    """A UDP datagram of 1000 bytes the capture cut to its first 38, then one of 5 whole."""
    cut = ether(ipv4(A, B, 17, udp(50003, 7003, b"S" * 1000)))
    path.write_bytes(pcap([(1, 0, cut[:14 + 20 + 8 + 38], len(cut)),
                           (1, 1, ether(ipv4(A, B, 17, udp(50003, 7003, b"after"))))]))
    return path


def fragmented_clients(path, n, v6=False, atomic=False):
    """A pcap of `n` TCP connections, each from its own client (port 40000+i) to port 80, each a
    handshake, a 64-byte request, a 200-byte answer and the closes. The clients' segments are IP
    fragments: IPv6 atomic ones (`atomic`: one Fragment header, offset 0, no more) or cut in two
    (an IPv4 or IPv6 fragment of 24 bytes, then the rest); the servers' are not."""
    frames, t = [], 1_700_000_000 * 10**6
    for i in range(n):
        if v6:
            cli, srv = A6[:14] + bytes([i >> 8, i & 0xFF]), B6
        else:
            cli, srv = bytes([10, 1, i >> 8, i & 0xFF]), B
        sp, cisn, sisn = 40000 + i, 1000 * i, 50000 * i
        steps = ((True, cisn, 0, 0x02, b""), (False, sisn, cisn + 1, 0x12, b""),
                 (True, cisn + 1, sisn + 1, 0x10, b""), (True, cisn + 1, sisn + 1, 0x18, b"Q%03d" % i * 16),
                 (False, sisn + 1, cisn + 65, 0x18, b"A%03d" % i * 50), (True, cisn + 65, sisn + 201, 0x11, b""),
                 (False, sisn + 201, cisn + 66, 0x11, b""), (True, cisn + 66, sisn + 202, 0x10, b""))
        for k, (client, seq, ack, flags, payload) in enumerate(steps):
            src, dst, a, b = (cli, srv, sp, 80) if client else (srv, cli, 80, sp)
            seg = tcp(a, b, seq=seq, ack=ack, flags=flags, payload=payload)
            if client and atomic:
                out = [ether(ipv6(src, dst, 44, struct.pack(">BBHI", 6, 0, 0, 7 + i) + seg), ethertype=0x86DD)]
            elif client and payload:
                out = fragments(src, dst, 6, seg, [0, 24], ident=7 + i + k, v6=v6)
            elif v6:
                out = [ether(ipv6(src, dst, 6, seg), ethertype=0x86DD)]
            else:
                out = [ether(ipv4(src, dst, 6, seg))]
            for f in out:
                t += 1000
                frames.append((t // 10**6, t % 10**6, f))
    path.write_bytes(pcap(frames))
    return path


def interleaved_capture(path, n, parts, port=80):
    """A pcap of n TCP connections A:40000+i -> B:`port` open at once: each handshake, then
    each client segment of `parts` (bytes formatted with the connection's number, `%d`) sent
    by every connection in turn, then the FINs, connection after connection."""
    t0 = 1_700_000_000 * 10**6
    frames, seq = [], {}

    def send(i, client, flags, payload=b""):
        src, dst, sp, dp = (A, B, 40000 + i, port) if client else (B, A, port, 40000 + i)
        s = seq.setdefault((i, client), 1000 if client else 5000)
        ack = seq.get((i, not client), 0)
        us = t0 + 1000 * len(frames)
        frames.append((us // 10**6, us % 10**6,
                       ether(ipv4(src, dst, 6, tcp(sp, dp, seq=s, ack=ack, flags=flags, payload=payload)))))
        seq[(i, client)] = s + len(payload) + (1 if flags & 0x03 else 0)

    for i in range(n):
        send(i, True, 0x02)
        send(i, False, 0x12)
        send(i, True, 0x10)
    for part in parts:
        for i in range(n):
            send(i, True, 0x18, part % i)
    for i in range(n):
        send(i, True, 0x11)
        send(i, False, 0x11)
    path.write_bytes(pcap(frames))
    return path


# --- checksums ---------------------------------------------------------------------------
# The builders above leave every checksum 0. checksummed() fills in an Ethernet frame's IPv4
# header checksum and its TCP or UDP checksum (IPv4 or IPv6 without extension headers, not a
# fragment), as a sender would; corrupt() then spoils one of them.

from flowsift.testing import inet_checksum  # noqa: E402  (the one flowsift.testing's packets get)


def _layers(frame):
    # (offset of the IP header, IP version, offset of the transport header, its protocol, its end)
    l3 = 14
    while struct.unpack(">H", frame[l3 - 2:l3])[0] in (0x8100, 0x88A8):
        l3 += 4
    if frame[l3] >> 4 == 4:
        ihl = (frame[l3] & 15) * 4
        return l3, 4, l3 + ihl, frame[l3 + 9], l3 + struct.unpack(">H", frame[l3 + 2:l3 + 4])[0]
    return l3, 6, l3 + 40, frame[l3 + 6], l3 + 40 + struct.unpack(">H", frame[l3 + 4:l3 + 6])[0]


def checksummed(frame, udp_zero=False, transport=True):
    """`frame` with right checksums (a UDP one left 0 over IPv4 with `udp_zero`: none computed;
    the IPv4 header's alone without `transport`, for a fragment)."""
    f = bytearray(frame)
    l3, ver, l4, proto, end = _layers(f)
    if ver == 4:
        f[l3 + 10:l3 + 12] = b"\0\0"
        f[l3 + 10:l3 + 12] = struct.pack(">H", inet_checksum(bytes(f[l3:l4])))
        pseudo = bytes(f[l3 + 12:l3 + 20]) + struct.pack(">BBH", 0, proto, end - l4)
    else:
        pseudo = bytes(f[l3 + 8:l3 + 40]) + struct.pack(">IxxxB", end - l4, proto)
    at = {6: 16, 17: 6}.get(proto)
    if transport and at is not None and not (udp_zero and proto == 17):
        f[l4 + at:l4 + at + 2] = b"\0\0"
        c = inet_checksum(pseudo + bytes(f[l4:end]))
        f[l4 + at:l4 + at + 2] = struct.pack(">H", c or 0xFFFF if proto == 17 else c)
    return bytes(f)


def corrupt(frame, which="tcp"):
    """`frame` (checksummed) with its IPv4 header checksum ("ip") or its TCP/UDP one wrong."""
    f = bytearray(frame)
    l3, ver, l4, proto, end = _layers(f)
    at = l3 + 10 if which == "ip" else l4 + {6: 16, 17: 6}[proto]
    f[at] ^= 0x5A
    return bytes(f)
