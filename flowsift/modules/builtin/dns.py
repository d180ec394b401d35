import struct

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from flowsift.modules.base import Module

DNS_PORTS = (53, 5353, 5355)


class Dns(Module):
    """DNS queries and answers over UDP (one message per datagram) and TCP (length-prefixed).

    Synopsis: dns(ports=...)
    Reads: UDP datagrams (packets) and TCP streams of flows on a DNS port
    Writes: nothing (read-only)
    Options: none (ports 53, 5353 and 5355)
    Counters: queries, answers, malformed
    Example: flowsift chain dns trace.pcap   emits "query" and "answer" events (qname, qtype, rcode, answers)
    """
    name = "dns"

    def _is_dns(self, flow):
        return int(flow.server.rsplit(":", 1)[1]) in DNS_PORTS or int(flow.client.rsplit(":", 1)[1]) in DNS_PORTS

    def on_open(self, flow):
        if not self._is_dns(flow):
            flow.skip()                       # not a packet or a byte of it is looked at

    def on_packet(self, flow, record):
        if not self._is_dns(flow):
            flow.skip()                       # (opened without on_open: a restored checkpoint)
        elif flow.proto == "udp" and record.payload_len:
            self._message(flow, flow.payload(record))

    def on_data(self, flow, stream):
        if not self._is_dns(flow):
            flow.skip()
            return
        if flow.proto != "tcp":
            stream.skip()
            return
        while True:
            head = stream.peek_bytes(2)
            if len(head) < 2:
                return
            (n,) = struct.unpack(">H", head)
            if stream.available < 2 + n:
                return                        # the message is not complete yet
            stream.skip(2)
            self._message(flow, stream.read_bytes(n))

    def _message(self, flow, wire):
        try:
            m = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, struct.error):
            self.count("malformed")
            return
        q = m.question[0] if m.question else None
        fields = {"id": m.id, "qname": q.name.to_text() if q is not None else None,
                  "qtype": dns.rdatatype.to_text(q.rdtype) if q is not None else None}
        if m.flags & 0x8000:
            answers = [f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)} {r.to_text()}" for rr in m.answer for r in rr]
            self.emit("answer", rcode=dns.rcode.to_text(m.rcode()), answers=answers, **fields)
            self.count("answers")
        else:
            self.emit("query", **fields)
            self.count("queries")
