"""The TCP reassembler one writes in an afternoon with dpkt and a dict: the Python baseline.

Per direction of each 5-tuple, out-of-order segments wait in a dict seq -> payload and are
delivered in sequence order to a no-op consumer; where copies overlap, the first one wins.
Naive on purpose: a waiting segment is only found by its exact start, so one that straddles
the delivery point (a retransmission cut differently) stalls that direction.
"""
import dpkt

TH_SYN = dpkt.tcp.TH_SYN


def reassemble(path, limit_packets):
    """Reads the first limit_packets packets of a pcap; returns (packets, connections, delivered bytes)."""
    streams = {}   # (src, sport, dst, dport) -> [next seq or None, {seq: payload}]
    packets = delivered = 0
    with open(path, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            if packets == limit_packets:
                break
            packets += 1
            try:
                ip = dpkt.ethernet.Ethernet(buf).data
            except dpkt.UnpackError:
                continue
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            s = streams.get((ip.src, tcp.sport, ip.dst, tcp.dport))
            if s is None:
                s = streams[(ip.src, tcp.sport, ip.dst, tcp.dport)] = [None, {}]
            seq, data = tcp.seq, tcp.data
            if tcp.flags & TH_SYN:
                s[0] = (seq + 1) & 0xFFFFFFFF
                continue
            if not data:
                continue
            if s[0] is None:   # joined mid-connection: start at the first data seen
                s[0] = seq
            ahead = (seq - s[0]) & 0xFFFFFFFF
            if ahead and ahead < 1 << 31:
                s[1].setdefault(seq, data)   # a hole before it: wait
                continue
            if ahead:   # starts before the delivery point: keep only what is new
                data = data[(s[0] - seq) & 0xFFFFFFFF:]
            while data:
                delivered += len(data)   # the consumer
                s[0] = (s[0] + len(data)) & 0xFFFFFFFF
                data = s[1].pop(s[0], b"")
    connections = {min(k, (k[2], k[3], k[0], k[1])) for k in streams}
    return packets, len(connections), delivered
