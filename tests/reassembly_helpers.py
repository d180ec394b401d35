"""Build a TCP conversation as a capture, run the engine on it, and read back one direction."""
import struct

from pcapgen import A, B, ether, ipv4, pcap, tcp

CLIENT, SERVER = (A, 40000), (B, 80)
SYN, SYNACK, ACK, PSH, FIN, RST = 0x02, 0x12, 0x10, 0x08, 0x01, 0x04


def conversation(isn, events, server_isn=7777, gap_ns=10**9):
    """events: ("data", seq, payload, wirelen) from the client, or ("ack", ack[, window]) from
    the server (its window 8192 unless given).

    Returns pcap bytes: SYN, SYN-ACK, then the events, each `gap_ns` apart (longer than the
    engine's ACK grace, so an acknowledged hole is given up at the next event).
    """
    frames = []
    t = 1_700_000_000 * 10**9

    def add(src, dst, seq, ack, flags, payload=b"", wirelen=None, window=8192):
        nonlocal t
        seg = tcp(src[1], dst[1], seq=seq % 2**32, ack=ack % 2**32, flags=flags, window=window, payload=payload)
        frame = ether(ipv4(src[0], dst[0], 6, seg))
        if wirelen is not None and wirelen > len(payload):
            # the capture cut the frame: the headers say `wirelen` bytes of payload
            full = ether(ipv4(src[0], dst[0], 6, tcp(src[1], dst[1], seq=seq % 2**32, ack=ack % 2**32,
                                                     flags=flags, payload=payload + b"\0" * (wirelen - len(payload)))))
            frames.append((t // 10**9, t % 10**9, full[:len(frame)], len(full)))
        else:
            frames.append((t // 10**9, t % 10**9, frame))
        t += gap_ns

    add(CLIENT, SERVER, isn, 0, SYN)
    add(SERVER, CLIENT, server_isn, isn + 1, SYNACK)
    for ev in events:
        if ev[0] == "data":
            _, seq, payload, wirelen = ev
            add(CLIENT, SERVER, seq, server_isn + 1, ACK | PSH, payload, wirelen)
        else:
            add(SERVER, CLIENT, server_isn + 1, ev[1], ACK, window=ev[2] if len(ev) > 2 else 8192)
    return pcap(frames, nanosecond=True)


def run_engine(tmp_path, blob, policy="first", name="conv.pcap"):
    from flowsift.reassembly import Reassembler
    path = tmp_path / name
    path.write_bytes(blob)
    r = Reassembler(policy=policy)
    r.feed_capture(path)
    return r


def merged(gaps):
    out = []
    for off, ln in gaps:
        if out and out[-1][0] + out[-1][1] == off:
            out[-1][1] += ln
        else:
            out.append([off, ln])
    return out


def client_stream(r):
    """(bytes, merged gaps, conflicts) of connection 0's client direction."""
    d = r.collector.dirs.get((0, 0))
    if d is None:
        return b"", [], 0
    return bytes(d.data), merged(d.gaps), d.conflicts
