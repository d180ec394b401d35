"""Generated captures for the benchmarks, written with struct (no flowsift, no test helpers)."""
import struct

CLIENT = bytes([10, 0, 0, 1])


def pcap(frames):
    """A classic pcap (microseconds, Ethernet) of frames: (seconds, microseconds, bytes)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for sec, usec, data in frames:
        out.append(struct.pack("<IIII", sec, usec, len(data), len(data)))
        out.append(data)
    return b"".join(out)


def tcp_frame(src, dst, seq, ack, flags, payload=b""):
    """An Ethernet/IPv4/TCP frame from src to dst, each (4-byte address, port); checksums zero
    (the tools compared do not check them, libnids told not to)."""
    tcp = struct.pack(">HHIIBBHHH", src[1], dst[1], seq, ack, 5 << 4, flags, 8192, 0, 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src[0], dst[0])
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + ip + tcp


SYN, ACK, PSH_ACK, FIN_ACK, SYN_ACK = 0x02, 0x10, 0x18, 0x11, 0x12


def many_connections(path, n, payload=b"x" * 200, start=1_700_000_000, block=1000):
    """n short TCP connections, each SYN, SYN-ACK, data, FIN, FIN and the last ACK (six
    packets), interleaved by blocks of `block`: at most `block` are open at once, and every
    one closes as a TCP stack sees it close (the last ACK is what libnids closes on)."""
    frames = []
    for b0 in range(0, n, block):
        ends = [((CLIENT, 1024 + i % 60000), (bytes([10, 1, (i // 60000) & 255, 1]), 80))
                for i in range(b0, min(n, b0 + block))]
        t = start + b0 // block
        end = 101 + len(payload)                # the client's FIN's sequence number
        steps = ((0, lambda c, s: tcp_frame(c, s, 100, 0, SYN)),
                 (2000, lambda c, s: tcp_frame(s, c, 500, 101, SYN_ACK)),
                 (4000, lambda c, s: tcp_frame(c, s, 101, 501, PSH_ACK, payload)),
                 (6000, lambda c, s: tcp_frame(c, s, end, 501, FIN_ACK)),
                 (8000, lambda c, s: tcp_frame(s, c, 501, end + 1, FIN_ACK)),
                 (10000, lambda c, s: tcp_frame(c, s, end + 1, 502, ACK)))
        for usec, frame in steps:
            for k, (c, s) in enumerate(ends):
                frames.append((t, usec + k, frame(c, s)))
    path.write_bytes(pcap(frames))
    return path


def one_stream(path, body, segment=1448):
    """One TCP connection whose client sends `body` in segments of `segment` bytes (no
    handshake answer, no end: a stream the gateway keeps open)."""
    c, s = (CLIENT, 1), (bytes([10, 0, 0, 2]), 80)
    frames = [(1, 0, tcp_frame(c, s, 99, 0, SYN))]
    for k, off in enumerate(range(0, len(body), segment)):
        frames.append((2 + k // 100000, k % 100000, tcp_frame(c, s, 100 + off, 1, PSH_ACK, body[off:off + segment])))
    path.write_bytes(pcap(frames))
    return path
