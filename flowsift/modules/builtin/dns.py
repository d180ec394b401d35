import struct

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from flowsift.modules.base import Module, Option

DNS_PORTS = (53, 5353, 5355)
MDNS_PORT = 5353
# After a gap in a TCP stream, the next message is looked for in this many bytes: DNS over TCP
# carries short messages (a few hundred bytes), so one whole message fits many times over;
# past them the direction is given up (counted)
RESYNC_SCAN = 4096
# opcodes whose messages hold exactly one question (or zone): QUERY, NOTIFY, UPDATE -- what a
# message start after a gap must look like
RESYNC_OPCODES = (0, 4, 5)
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


def _skip_name(wire, p):
    """The offset after the (possibly compressed) name at `p`; ValueError past the end."""
    while True:
        if p >= len(wire):
            raise ValueError("name past the end")
        b = wire[p]
        if b == 0:
            return p + 1
        if b & 0xC0 == 0xC0:
            return p + 2
        p += 1 + b


def mdns_unflagged(wire):
    """`wire` with mDNS's flag bits cleared (RFC 6762 5.4, 10.2): the top bit of a question's
    class asks for a unicast response, of a record's class says "cache flush"; left in, class
    IN (1) reads as 32769 and dnspython gives the records' data as opaque hex. The same bytes
    when no class has that bit or the message cannot be walked (dnspython then says why)."""
    try:
        qd, an, ns, ar = struct.unpack_from(">HHHH", wire, 4)
        p, fix = 12, []
        for _ in range(qd):
            p = _skip_name(wire, p)
            if wire[p + 2] & 0x80:
                fix.append(p + 2)
            p += 4
        for _ in range(an + ns + ar):
            p = _skip_name(wire, p)
            rtype, _, _, rdlen = struct.unpack_from(">HHIH", wire, p)
            if rtype != 41 and wire[p + 2] & 0x80:    # (OPT's class is a payload size)
                fix.append(p + 2)
            p += 10 + rdlen
    except (ValueError, IndexError, struct.error):
        return wire
    if not fix:
        return wire
    out = bytearray(wire)
    for i in fix:
        out[i] &= 0x7F
    return bytes(out)


class Dns(Module):
    """DNS queries and answers over UDP (one message per datagram) and TCP (length-prefixed),
    mDNS and LLMNR included. A message dnspython refuses in part (mDNS compresses the names in
    NSEC records, which DNS forbids) is reported with what could be read (partial=true). On
    mDNS's port the top bit of a class (cache flush, unicast response) is a flag, cleared
    before the records are read, as tshark does.

    After a gap in a TCP stream, the message it fell in is dropped (counted lost) and the next
    message is looked for: a length prefix followed by a header with one question, opcode
    QUERY, NOTIFY or UPDATE and small record counts, the whole message read by dnspython. None
    in the next 4 KiB: the direction is given up (counted).

    Synopsis: dns(ports=53;5353;5355)
    Reads: UDP datagrams (packets) and TCP streams of flows with an endpoint on one of the ports
    Writes: nothing (read-only)
    Options: ports (list of ports, parted by ';') the flows to read: those with either end on
             one of them (default 53;5353;5355: DNS, mDNS, LLMNR)
    Counters: queries, answers, partial (messages read in part: a record that could not be
              read is left out), malformed (messages that could not be read), lost (TCP:
              messages a gap fell in), gave_up (TCP directions where no message start was
              found after a gap)
    Events: "query" and "answer": direction (who sent the message: c2s the flow's client, s2c
            its server; in an mDNS flow 5353 to 5353 the client is the first sender, which may
            be a responder sending answers to the multicast group), id, qname, qtype (null
            when the message has no question, as mDNS answers), the header flags aa, tc
            (truncated: the answer continues over TCP), rd, ra, ad, cd, and partial; "answer"
            also rcode and answers
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
            wire = flow.payload(record)
            if wire is not None:              # (None: not in the file, one cut short)
                self._message(flow, wire, record.dir)

    def on_gap(self, flow, direction, gap):
        if flow.proto != "tcp" or flow.state.get(f"resync{direction}") == -1:
            return
        # the message the loss fell in (or started at) is gone; what follows is looked through
        # for the next message start (the runner passes over what was left before the gap)
        self.count("lost")
        flow.state[f"resync{direction}"] = 0  # bytes looked through so far

    def on_data(self, flow, stream):
        if not self._is_dns(flow):
            flow.skip()
            return
        if flow.proto != "tcp":
            stream.skip()
            return
        key = f"resync{stream.direction}"
        if key in flow.state and not self._resync(flow, stream, key):
            return
        while True:
            head = stream.peek_bytes(2)
            if len(head) < 2:
                return
            (n,) = struct.unpack(">H", head)
            if stream.available < 2 + n:
                return                        # the message is not complete yet
            stream.skip(2)
            self._message(flow, stream.read_bytes(n), stream.direction)

    def _resync(self, flow, stream, key):
        """Look for the next message start after a gap; True once the stream is at one."""
        scanned = flow.state[key]
        if scanned == -1:
            stream.skip()                     # given up
            return False
        data = stream.peek_bytes(min(stream.available, RESYNC_SCAN + 2 + 65535))
        end = stream.tell() + len(data)
        g = stream.next_gap
        final = (g is not None and g.offset == end) or (stream.closed and end == stream.end_offset)
        i = 0
        # (a loop per byte, in Python: only after a gap, over a few KiB of DNS over TCP)
        while i + 14 <= len(data) and scanned + i < RESYNC_SCAN:
            n = (data[i] << 8) | data[i + 1]
            qd, an, ns, ar = struct.unpack_from(">HHHH", data, i + 6)
            if n >= 12 and qd == 1 and an < 256 and ns < 256 and ar < 256 \
                    and (data[i + 4] >> 3) & 0xF in RESYNC_OPCODES:
                if i + 2 + n > len(data) and not final:
                    break                     # a candidate not whole yet: wait for its bytes
                try:
                    if i + 2 + n <= len(data):
                        dns.message.from_wire(data[i + 2:i + 2 + n])
                        stream.skip(i)
                        del flow.state[key]
                        return True
                except (dns.exception.DNSException, ValueError, struct.error):
                    pass
            i += 1
        stream.skip(i)
        flow.state[key] = scanned = scanned + i
        if scanned >= RESYNC_SCAN:
            self.count("gave_up")
            flow.state[key] = -1
            stream.skip()
        elif final:
            stream.skip()                     # the rest of the lost message, before another loss or the end
        return False

    def _message(self, flow, wire, direction):
        partial = False
        if MDNS_PORT in (int(flow.server.rsplit(":", 1)[1]), int(flow.client.rsplit(":", 1)[1])):
            wire = mdns_unflagged(wire)
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
        # who sent it: in mDNS the flow's client (its first sender) may be the one answering
        fields = {"direction": "c2s" if direction == 0 else "s2c", "id": m.id,
                  "qname": q.name.to_text() if q is not None else None,
                  "qtype": dns.rdatatype.to_text(q.rdtype) if q is not None else None,
                  **{name: bool(m.flags & bit) for name, bit in FLAGS}, "partial": partial}
        if m.flags & 0x8000:
            answers = [f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)} {r.to_text()}" for rr in m.answer for r in rr]
            self.emit("answer", rcode=dns.rcode.to_text(m.rcode()), answers=answers, **fields)
            self.count("answers")
        else:
            self.emit("query", **fields)
            self.count("queries")
