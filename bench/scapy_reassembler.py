"""Scapy's TCPSession as a reassembler, for bench/reassembly.py (imported before its clock starts:
Scapy's import alone takes about a second)."""
from scapy.layers.inet import TCP
from scapy.sendrecv import sniff
from scapy.sessions import TCPSession


def reassemble(path, _limit):
    """Scapy's TCPSession over the whole of path, which the caller cut to the subset: sniff's
    count= counts what the session emits, not packets read. Returns (packets, None, bytes)."""
    class Counting(TCPSession):
        packets = 0

        def process(self, pkt, cls=None):
            Counting.packets += 1
            return super().process(pkt, cls)

    delivered = 0

    def consume(p):
        nonlocal delivered
        if TCP in p:
            delivered += len(p[TCP].payload)

    sniff(offline=str(path), session=Counting, store=False, prn=consume)
    return Counting.packets, None, delivered
