import struct

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from flowsift.modules.base import Module, Option

DNS_PORTS = (53, 5353, 5355)
# header flags reported with every message (RFC 1035 4.1.1, RFC 4035 3.2)
FLAGS = (("aa", dns.flags.AA), ("tc", dns.flags.TC), ("rd", dns.flags.RD), ("ra", dns.flags.RA),
         ("ad", dns.flags.AD), ("cd", dns.flags.CD))


def port_list(text):
    """Ports parted by ';' ('53;5353'), as a tuple of integers."""
    ports = tuple(int(p) for p in text.split(";") if p.strip())
    if not ports or not all(0 < p < 65536 for p in ports):
        raise ValueError(text)
    return ports


port_list.__name__ = "list of ports (1 to 65535, parted by ';')"


class Dns(Module):
    """DNS queries and answers over UDP (one message per datagram) and TCP (length-prefixed),
    mDNS and LLMNR included. A message dnspython refuses in part (mDNS compresses the names in
    NSEC records, which DNS forbids) is reported with what could be read (partial=true).

    Synopsis: dns(ports=53;5353;5355)
    Reads: UDP datagrams (packets) and TCP streams of flows with an endpoint on one of the ports
    Writes: nothing (read-only)
    Options: ports (list of ports, parted by ';') the flows to read: those with either end on
             one of them (default 53;5353;5355: DNS, mDNS, LLMNR)
    Counters: queries, answers, partial (messages read in part: a record that could not be
              read is left out), malformed (messages that could not be read)
    Events: "query" and "answer": id, qname, qtype (null when the message has no question, as
            mDNS answers), the header flags aa, tc (truncated: the answer continues over TCP),
            rd, ra, ad, cd, and partial; "answer" also rcode and answers
    Example: flowsift chain dns trace.pcap   emits "query" and "answer" events (qname, qtype, rcode, answers)
    """
    name = "dns"

    options = {"ports": Option(port_list, DNS_PORTS, "the ports of the flows to read, e.g. 53;5353")}

    def _is_dns(self, flow):
        ports = self.config.get("ports", DNS_PORTS)
        return int(flow.server.rsplit(":", 1)[1]) in ports or int(flow.client.rsplit(":", 1)[1]) in ports

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
        partial = False
        try:
            m = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, struct.error):
            try:
                # what can be read: a record that cannot is left out (and said so)
                m = dns.message.from_wire(wire, continue_on_error=True)
                partial = True
            except (dns.exception.DNSException, ValueError, struct.error):
                self.count("malformed")
                return
            self.count("partial")
        q = m.question[0] if m.question else None
        fields = {"id": m.id, "qname": q.name.to_text() if q is not None else None,
                  "qtype": dns.rdatatype.to_text(q.rdtype) if q is not None else None,
                  **{name: bool(m.flags & bit) for name, bit in FLAGS}, "partial": partial}
        if m.flags & 0x8000:
            answers = [f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)} {r.to_text()}" for rr in m.answer for r in rr]
            self.emit("answer", rcode=dns.rcode.to_text(m.rcode()), answers=answers, **fields)
            self.count("answers")
        else:
            self.emit("query", **fields)
            self.count("queries")
