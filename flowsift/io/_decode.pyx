# cython: language_level=3
"""Link, IP and transport header decoding over a batch, and the per-capture counters.

Every frame leaves with either status ST_OK (headers decoded as far as they go) or the reason
it could not be decoded. "Cut short by the snaplen" is kept apart from "malformed" (dpkt's
lesson): a frame whose payload was truncated by the capture is decoded and flagged, a frame
whose headers lie about their lengths gets a reason.
"""
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport calloc, free

from flowsift.io._batch cimport *
from flowsift.io._bytes cimport fs_be16, fs_be32, fs_ld32

# Deeper VLAN stacks than this are not seen in practice; stop rather than loop on garbage.
DEF MAX_VLAN_TAGS = 8
# RFC 8200 allows any number of extension headers; real traffic has a handful.
DEF MAX_IPV6_EXT = 16

DEF LT_NULL = 0
DEF LT_EN10MB = 1
DEF LT_RAW_DLT = 12
DEF LT_RAW = 101
DEF LT_LOOP = 108
DEF LT_SLL = 113
DEF LT_IPV4 = 228
DEF LT_IPV6 = 229
DEF LT_SLL2 = 276

cdef extern from *:
    uint32_t __builtin_bswap32(uint32_t) nogil

DEF ET_IPV4 = 0x0800
DEF ET_IPV6 = 0x86DD
DEF ET_PPP = 0x880B       # PPP's ethertype: names a PPP frame of another protocol than IP

# --checksums: "ignore" decodes whatever the checksums say (tshark's and tcpflow's default: a
# capture taken on a sending host with checksum offload has wrong ones on every packet it
# sent); "verify" leaves out of connections what a receiver drops (Suricata, Snort, Zeek)
CHECKSUM_MODES = ("ignore", "verify")


cdef class Decoder:
    """Decodes batches in place and keeps the counters `flowsift stats` reports."""
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes_captured
    cdef readonly uint64_t bytes_wire
    cdef readonly int64_t ts_first
    cdef readonly int64_t ts_last
    cdef readonly int64_t ts_min
    cdef readonly int64_t ts_max
    cdef readonly uint64_t ipv4
    cdef readonly uint64_t ipv6
    cdef readonly uint64_t frag4      # IPv4 fragments (all, first included)
    cdef readonly uint64_t frag6
    cdef readonly uint64_t snaplen_cut
    cdef readonly uint64_t trailers
    cdef readonly uint64_t ip_len_from_frame
    cdef readonly uint64_t bad_tcp_options
    cdef readonly uint64_t ip_len_exceeds_frame
    cdef readonly uint64_t ts_backwards     # packets stamped earlier than the one before
    cdef readonly uint64_t ts_packets       # packets with a timestamp of their own
    cdef readonly uint64_t other_protocols  # decoded packets, not fragments, of protocols other than TCP and UDP
    cdef uint64_t reasons[ST_COUNT]
    cdef uint64_t proto4[256]        # decoded IPv4 packets by protocol (later fragments apart)
    cdef uint64_t proto6[256]
    cdef uint64_t later_frag4        # fragments with offset > 0: no transport header
    cdef uint64_t later_frag6
    cdef uint64_t* ethertypes        # non-IP frames by ethertype (0: 802.3/LLC or unknown family)
    cdef uint64_t* linktypes         # frames of a link type not decoded, by link type
    cdef readonly bint verify        # --checksums verify: a wrong checksum makes a frame ST_BAD_CHECKSUM
    cdef uint64_t checks[CK_COUNT]   # frames by what verifying their checksums found (CK_*)

    def __cinit__(self, str checksums="ignore"):
        if checksums not in CHECKSUM_MODES:
            raise ValueError(f"checksums {checksums!r}: one of {', '.join(CHECKSUM_MODES)}")
        self.verify = checksums == "verify"
        self.ethertypes = <uint64_t*> calloc(65536, sizeof(uint64_t))
        self.linktypes = <uint64_t*> calloc(65536, sizeof(uint64_t))
        if self.ethertypes == NULL or self.linktypes == NULL:
            raise MemoryError()
        self.ts_min = 0x7FFFFFFFFFFFFFFF
        self.ts_max = -0x7FFFFFFFFFFFFFFF

    def __dealloc__(self):
        free(self.ethertypes)
        free(self.linktypes)

    def decode(self, Batch batch):
        """Decode every packet of `batch` in place; returns the number decoded (status OK)."""
        cdef Py_ssize_t i, ok = 0
        cdef pkt_t* p
        with nogil:
            for i in range(batch.n):
                p = &batch.pkts[i]
                if p.status == ST_OK:
                    decode_packet(p)
                    if self.verify and p.status == ST_OK:
                        take_check(p, check_packet(p), self.checks)
                self._account(p)
                if p.status == ST_OK:
                    ok += 1
        return ok

    cdef inline void _account(self, pkt_t* p) noexcept nogil:
        self.packets += 1
        self.bytes_captured += p.caplen
        self.bytes_wire += p.wirelen
        if not (p.flags & PF_NO_TS):
            # a packet without a time of its own says nothing of the capture's time span
            self.ts_packets += 1
            if self.ts_packets == 1:
                self.ts_first = p.ts_ns
            elif p.ts_ns < self.ts_last:
                self.ts_backwards += 1
            self.ts_last = p.ts_ns
            if p.ts_ns < self.ts_min:
                self.ts_min = p.ts_ns
            if p.ts_ns > self.ts_max:
                self.ts_max = p.ts_ns
        if p.status != ST_OK:
            self.reasons[p.status] += 1
            if p.status == ST_NON_IP:
                self.ethertypes[p.ethertype] += 1
            elif p.status == ST_UNSUPPORTED_LINKTYPE:
                self.linktypes[p.linktype] += 1
            return
        if p.flags & PF_SNAPLEN_CUT:
            self.snaplen_cut += 1
        if p.flags & PF_TRAILER:
            self.trailers += 1
        if p.flags & PF_IP_LEN_FROM_FRAME:
            self.ip_len_from_frame += 1
        if p.flags & PF_BAD_TCP_OPTION:
            self.bad_tcp_options += 1
        if p.flags & PF_IP_LEN_EXCEEDS_FRAME:
            self.ip_len_exceeds_frame += 1
        if p.proto != 6 and p.proto != 17 and not (p.flags & PF_FRAGMENT):
            # (a datagram that came in fragments is counted once rebuilt, by the defragmenter)
            self.other_protocols += 1
        if p.ipver == 4:
            self.ipv4 += 1
            if p.flags & PF_FRAGMENT:
                self.frag4 += 1
                if not (p.flags & PF_FRAG_FIRST):
                    self.later_frag4 += 1
                    return
            self.proto4[p.proto] += 1
        else:
            self.ipv6 += 1
            if p.flags & PF_FRAGMENT:
                self.frag6 += 1
                if not (p.flags & PF_FRAG_FIRST):
                    self.later_frag6 += 1
                    return
            self.proto6[p.proto] += 1

    def checksums(self):
        """{CK_* code: frames} of what verifying checksums found (empty unless verifying)."""
        cdef int k
        return {k: self.checks[k] for k in range(1, CK_COUNT) if self.checks[k]}

    def counters(self):
        """Plain-Python snapshot of the counters."""
        cdef int i
        reasons = {i: self.reasons[i] for i in range(1, ST_COUNT) if self.reasons[i]}
        proto4 = {i: self.proto4[i] for i in range(256) if self.proto4[i]}
        proto6 = {i: self.proto6[i] for i in range(256) if self.proto6[i]}
        ethertypes = {i: self.ethertypes[i] for i in range(65536) if self.ethertypes[i]}
        linktypes = {i: self.linktypes[i] for i in range(65536) if self.linktypes[i]} if self.reasons[ST_UNSUPPORTED_LINKTYPE] else {}
        return {
            "packets": self.packets, "bytes_captured": self.bytes_captured, "bytes_wire": self.bytes_wire,
            "ts_first": self.ts_first, "ts_last": self.ts_last, "ts_packets": self.ts_packets,
            "ts_min": self.ts_min if self.ts_packets else 0, "ts_max": self.ts_max if self.ts_packets else 0,
            "ipv4": self.ipv4, "ipv6": self.ipv6, "ipv4_fragments": self.frag4, "ipv6_fragments": self.frag6,
            "ipv4_later_fragments": self.later_frag4, "ipv6_later_fragments": self.later_frag6,
            "other_protocols": self.other_protocols,
            "snaplen_cut": self.snaplen_cut, "trailers": self.trailers,
            "ip_len_from_frame": self.ip_len_from_frame, "bad_tcp_options": self.bad_tcp_options, "ip_len_exceeds_frame": self.ip_len_exceeds_frame, "ts_backwards": self.ts_backwards,
            "reasons": reasons, "proto4": proto4, "proto6": proto6, "non_ip_ethertypes": ethertypes,
            "unsupported_linktypes": linktypes,
        }


cdef inline bint is_vlan(uint16_t et) noexcept nogil:
    return et == 0x8100 or et == 0x88A8 or et == 0x9100


cdef inline uint16_t skip_vlans(pkt_t* p, uint16_t et, uint32_t* off) noexcept nogil:
    # 802.1Q/802.1ad tags from `off` on: the two outer VLAN ids and the depth noted, the inner
    # ethertype returned (status set when the frame ends inside them)
    cdef int tags = 0
    cdef uint32_t o = off[0]
    while is_vlan(et):
        if tags == MAX_VLAN_TAGS or p.caplen < o + 4:
            p.status = ST_TRUNCATED_LINK
            return 0
        if tags == 0:
            p.vlan = fs_be16(p.data + o) & 0x0FFF
        elif tags == 1:
            p.vlan_inner = fs_be16(p.data + o) & 0x0FFF
        tags += 1
        et = fs_be16(p.data + o + 2)
        o += 4
    p.vlan_depth = tags
    off[0] = o
    return et


cdef void decode_packet(pkt_t* p) noexcept nogil:
    cdef const uint8_t* d = p.data
    cdef uint32_t L = p.caplen
    cdef uint32_t off = 0, fam
    cdef uint16_t et = 0
    cdef uint16_t lt = p.linktype
    if lt == LT_EN10MB:
        if L < 14:
            p.status = ST_TRUNCATED_LINK
            return
        et = fs_be16(d + 12)
        off = 14
        if is_vlan(et):
            et = skip_vlans(p, et, &off)
            if p.status != ST_OK:
                return
        if et < 0x0600:
            et = 0            # 802.3 length field: LLC/SNAP, not IP
        elif et == 0x8864:    # PPPoE session: 6-byte header, then the PPP protocol
            if L < off + 8:
                p.status = ST_TRUNCATED_LINK
                return
            fam = fs_be16(d + off + 6)
            off += 8
            et = ET_IPV4 if fam == 0x0021 else (ET_IPV6 if fam == 0x0057 else 0x8864)
        elif et == 0x8847 or et == 0x8848:   # MPLS: skip labels to bottom of stack, then IP by version
            while True:
                if L < off + 4:
                    p.status = ST_TRUNCATED_LINK
                    return
                off += 4
                if d[off - 2] & 1:
                    break
            if L > off and (d[off] >> 4) == 4:
                et = ET_IPV4
            elif L > off and (d[off] >> 4) == 6:
                et = ET_IPV6
    elif lt == LT_RAW or lt == LT_RAW_DLT:
        if L < 1:
            p.status = ST_TRUNCATED_LINK
            return
        if (d[0] >> 4) == 4:
            et = ET_IPV4
        elif (d[0] >> 4) == 6:
            et = ET_IPV6
        else:
            p.status = ST_BAD_IP_VERSION
            return
    elif lt == LT_IPV4:
        et = ET_IPV4
    elif lt == LT_IPV6:
        et = ET_IPV6
    elif lt == LT_NULL or lt == LT_LOOP:
        if L < 4:
            p.status = ST_TRUNCATED_LINK
            return
        off = 4
        if lt == LT_NULL and (fs_be16(d) == 0x0F00 or fs_be16(d) == 0x8F00):
            # Cisco HDLC framing (address, control, an ethertype), as tshark reads such a header:
            # no address family starts so, in either byte order
            et = fs_be16(d + 2)
        elif lt == LT_NULL and fs_be16(d) == 0xFF03:
            # PPP in HDLC framing (address, control, the PPP protocol)
            fam = fs_be16(d + 2)
            et = ET_IPV4 if fam == 0x0021 else (ET_IPV6 if fam == 0x0057 else ET_PPP)
        else:
            if lt == LT_LOOP:
                fam = fs_be32(d)
            else:
                fam = fs_ld32(d)             # host order of the capturing machine: either
                if fam > 0xFFFF:
                    fam = __builtin_bswap32(fam)
            if fam == 2:
                et = ET_IPV4
            elif fam == 10 or fam == 24 or fam == 28 or fam == 30:   # AF_INET6: Linux, BSDs, macOS
                et = ET_IPV6
            else:
                et = 0
    elif lt == LT_SLL:
        if L < 16:
            p.status = ST_TRUNCATED_LINK
            return
        et = fs_be16(d + 14)
        off = 16
        if is_vlan(et):      # libpcap puts the tag a cooked capture took off back in place
            et = skip_vlans(p, et, &off)
            if p.status != ST_OK:
                return
    elif lt == LT_SLL2:
        if L < 20:
            p.status = ST_TRUNCATED_LINK
            return
        et = fs_be16(d)
        off = 20
        if is_vlan(et):
            et = skip_vlans(p, et, &off)
            if p.status != ST_OK:
                return
    else:
        p.status = ST_UNSUPPORTED_LINKTYPE
        return
    p.ethertype = et
    p.l3_off = <uint16_t>off
    if et == ET_IPV4:
        decode_ipv4(p, off)
    elif et == ET_IPV6:
        decode_ipv6(p, off)
    else:
        p.status = ST_NON_IP


cdef inline uint32_t wire_ip_bytes(pkt_t* p, uint32_t off) noexcept nogil:
    # bytes of the frame from `off` on the wire (a record may, wrongly, claim caplen > wirelen)
    cdef uint32_t w = p.wirelen if p.wirelen > p.caplen else p.caplen
    return w - off if w > off else 0


cdef inline void decode_ipv4(pkt_t* p, uint32_t off) noexcept nogil:
    cdef const uint8_t* d = p.data
    cdef uint32_t L = p.caplen
    cdef uint32_t avail = L - off if L > off else 0
    cdef uint32_t ihl, tot, wire, fo
    if avail < 1:
        p.status = ST_TRUNCATED_IP
        return
    if (d[off] >> 4) != 4:
        p.status = ST_BAD_IP_VERSION
        return
    if avail < 20:
        p.status = ST_TRUNCATED_IP
        return
    ihl = (d[off] & 0x0F) * 4
    if ihl < 20:
        p.status = ST_BAD_IP_HEADER_LEN
        return
    if avail < ihl:
        p.status = ST_TRUNCATED_IP
        return
    tot = fs_be16(d + off + 2)
    wire = wire_ip_bytes(p, off)
    if tot == 0:
        # TSO/GSO captures carry length 0: the frame is the packet
        tot = wire
        p.flags |= PF_IP_LEN_FROM_FRAME
    if tot < ihl:
        p.status = ST_BAD_IP_TOTAL_LEN
        return
    if tot > wire:
        # the frame is shorter than its IP header says: decode what is there and let the
        # missing tail count as missing bytes (as for a snaplen cut), flagged apart
        p.flags |= PF_IP_LEN_EXCEEDS_FRAME
    p.ipver = 4
    p.ttl = d[off + 8]
    p.proto = d[off + 9]
    memcpy(p.src, d + off + 12, 4)
    memcpy(p.dst, d + off + 16, 4)
    fo = fs_be16(d + off + 6)
    if fo & 0x3FFF:
        p.flags |= PF_FRAGMENT
        p.frag_id = fs_be16(d + off + 4)
        p.frag_off = <uint16_t>((fo & 0x1FFF) * 8)
        if fo & 0x2000:
            p.flags |= PF_MORE_FRAGS
        if p.frag_off == 0:
            p.flags |= PF_FRAG_FIRST
    elif p.proto == 51:
        # Authentication Header (RFC 4302): the transport follows it, as IPv6's walk does
        ihl = skip_ah(p, off + ihl, off + tot)
        if p.status != ST_OK:
            return
        decode_l4(p, ihl, off + tot)
        return
    decode_l4(p, off + ihl, off + tot)


cdef inline uint32_t skip_ah(pkt_t* p, uint32_t cur, uint32_t end) noexcept nogil:
    cdef uint32_t n
    if cur + 2 > p.caplen or cur + 2 > end:
        p.status = ST_TRUNCATED_IP
        return cur
    n = (<uint32_t>p.data[cur + 1] + 2) * 4
    if cur + n > end or cur + n > p.caplen:
        p.status = ST_TRUNCATED_IP
        return cur
    p.proto = p.data[cur]
    return cur + n


cdef inline void decode_ipv6(pkt_t* p, uint32_t off) noexcept nogil:
    cdef const uint8_t* d = p.data
    cdef uint32_t L = p.caplen
    cdef uint32_t avail = L - off if L > off else 0
    cdef uint32_t tot, wire, cur, end, fo, cur_len
    cdef uint8_t nh
    cdef int n_ext = 0
    if avail < 1:
        p.status = ST_TRUNCATED_IP
        return
    if (d[off] >> 4) != 6:
        p.status = ST_BAD_IP_VERSION
        return
    if avail < 40:
        p.status = ST_TRUNCATED_IP
        return
    wire = wire_ip_bytes(p, off)
    tot = 40 + <uint32_t>fs_be16(d + off + 4)
    if tot == 40 and wire > 40 and d[off + 6] != 59:
        # a jumbogram, or a TSO/GSO send captured before the NIC split it (Linux BIG TCP leaves
        # the length 0, as IPv4's): the frame gives the length. Only No Next Header may really
        # carry nothing, so its frame's bytes past the header stay padding
        tot = wire
        p.flags |= PF_IP_LEN_FROM_FRAME
    if tot > wire:
        p.flags |= PF_IP_LEN_EXCEEDS_FRAME
    p.ipver = 6
    p.ttl = d[off + 7]
    memcpy(p.src, d + off + 8, 16)
    memcpy(p.dst, d + off + 24, 16)
    nh = d[off + 6]
    cur = off + 40
    end = off + tot
    while ipv6_extension(nh):
        n_ext += 1
        if n_ext > MAX_IPV6_EXT:
            p.status = ST_TRUNCATED_IPV6_EXT
            return
        if nh == 44:
            if cur + 8 > L or cur + 8 > end:
                p.status = ST_TRUNCATED_IPV6_EXT
                return
            fo = fs_be16(d + cur + 2)
            nh = d[cur]
            if (fo & 0xFFF8) or (fo & 1):        # offset 0 and M=0 is an atomic fragment (RFC 6946)
                p.flags |= PF_FRAGMENT
                p.frag_id = fs_be32(d + cur + 4)
                p.frag_off = <uint16_t>(fo & 0xFFF8)
                if fo & 1:
                    p.flags |= PF_MORE_FRAGS
                if p.frag_off == 0:
                    p.flags |= PF_FRAG_FIRST
            cur += 8
            if p.flags & PF_FRAGMENT:
                # the fragmentable part starts here: the headers in it (Destination Options...)
                # are decoded from the rebuilt datagram, as the first fragment may not hold them
                break
        else:
            if cur + 2 > L or cur + 2 > end:
                p.status = ST_TRUNCATED_IPV6_EXT
                return
            if nh == 51:
                cur_len = (<uint32_t>d[cur + 1] + 2) * 4
            else:
                cur_len = (<uint32_t>d[cur + 1] + 1) * 8
            nh = d[cur]
            if cur + cur_len > end:
                p.status = ST_TRUNCATED_IPV6_EXT
                return
            cur += cur_len
    p.proto = nh
    decode_l4(p, cur, end)


cdef inline void decode_l4(pkt_t* p, uint32_t l4, uint32_t ip_end) noexcept nogil:
    # ip_end: end of the IP packet per its headers (may lie beyond the captured bytes)
    cdef const uint8_t* d = p.data
    cdef uint32_t L = p.caplen
    cdef uint32_t cap_end = ip_end if ip_end < L else L
    cdef uint32_t wire_len = ip_end - l4 if ip_end > l4 else 0
    cdef uint32_t cap_len = cap_end - l4 if cap_end > l4 else 0
    cdef uint32_t doff, ulen
    p.l4_off = <uint16_t>l4 if l4 < 65536 else 0
    if ip_end < L:
        p.flags |= PF_TRAILER
    if p.flags & PF_FRAGMENT:
        if not (p.flags & PF_FRAG_FIRST):
            return
        # a first fragment: decode the transport header if it is all there, never judge lengths
        if p.proto == 6 and cap_len >= 20 and (d[l4 + 12] >> 4) * 4 <= cap_len:
            decode_tcp_header(p, l4, (d[l4 + 12] >> 4) * 4)
            p.flags |= PF_L4
        elif p.proto == 17 and cap_len >= 8:
            p.sport = fs_be16(d + l4)
            p.dport = fs_be16(d + l4 + 2)
            p.flags |= PF_L4
        return
    if p.proto == 6:
        if cap_len < 20:
            p.status = ST_TRUNCATED_TCP
            return
        doff = (d[l4 + 12] >> 4) * 4
        if doff < 20 or doff > wire_len:
            p.status = ST_BAD_TCP_DATA_OFFSET
            return
        if doff > cap_len:
            p.status = ST_TRUNCATED_TCP
            return
        decode_tcp_header(p, l4, doff)
        p.payload_off = l4 + doff
        p.payload_wirelen = wire_len - doff
        p.payload_len = cap_len - doff
        if p.payload_len < p.payload_wirelen:
            p.flags |= PF_SNAPLEN_CUT
        p.flags |= PF_L4
    elif p.proto == 17:
        if cap_len < 8:
            p.status = ST_TRUNCATED_UDP
            return
        ulen = fs_be16(d + l4 + 4)
        if ulen == 0 and (p.flags & PF_IP_LEN_FROM_FRAME):
            ulen = wire_len
        if ulen < 8 or ulen > wire_len:
            p.status = ST_BAD_UDP_LENGTH
            return
        p.sport = fs_be16(d + l4)
        p.dport = fs_be16(d + l4 + 2)
        p.payload_off = l4 + 8
        p.payload_wirelen = ulen - 8
        p.payload_len = (ulen if ulen < cap_len else cap_len) - 8
        if p.payload_len < p.payload_wirelen:
            p.flags |= PF_SNAPLEN_CUT
        p.flags |= PF_L4
    elif cap_len < wire_len:
        p.flags |= PF_SNAPLEN_CUT


cdef inline void decode_tcp_header(pkt_t* p, uint32_t l4, uint32_t doff) noexcept nogil:
    cdef const uint8_t* d = p.data
    cdef uint32_t o = l4 + 20, end = l4 + doff, ln, k
    cdef uint8_t kind
    p.sport = fs_be16(d + l4)
    p.dport = fs_be16(d + l4 + 2)
    p.seq = fs_be32(d + l4 + 4)
    p.ack = fs_be32(d + l4 + 8)
    p.tcp_flags = d[l4 + 13]
    p.window = fs_be16(d + l4 + 14)
    while o < end:
        kind = d[o]
        if kind == 0:
            break
        if kind == 1:
            o += 1
            continue
        if o + 1 >= end:
            p.flags |= PF_BAD_TCP_OPTION
            break
        ln = d[o + 1]
        if ln < 2 or o + ln > end:
            p.flags |= PF_BAD_TCP_OPTION
            break
        if kind == 2 and ln == 4:
            p.mss = fs_be16(d + o + 2)
            p.opts |= OPT_MSS
        elif kind == 3 and ln == 3:
            p.wscale = d[o + 2]
            p.opts |= OPT_WSCALE
        elif kind == 4 and ln == 2:
            p.opts |= OPT_SACK_PERM
        elif kind == 5 and ln >= 10 and (ln - 2) % 8 == 0:
            p.opts |= OPT_SACK
            p.nsack = 0
            k = o + 2
            while k + 8 <= o + ln and p.nsack < 4:
                p.sack[2 * p.nsack] = fs_be32(d + k)
                p.sack[2 * p.nsack + 1] = fs_be32(d + k + 4)
                p.nsack += 1
                k += 8
        elif kind == 8 and ln == 10:
            p.tsval = fs_be32(d + o + 2)
            p.tsecr = fs_be32(d + o + 6)
            p.opts |= OPT_TS
        elif kind == 34:
            p.opts |= OPT_TFO
        elif kind == 2 or kind == 3 or kind == 4 or kind == 5 or kind == 8:
            p.flags |= PF_BAD_TCP_OPTION   # known option with the wrong length
        o += ln


def is_ipv6_extension(unsigned char nh):
    """Whether next-header value `nh` is an IPv6 extension header the decoder walks over (egress
    walks the same ones to find a Routing header)."""
    return ipv6_extension(nh)


# --- checksums (--checksums verify) --------------------------------------------------------
# The Internet checksum (RFC 1071) is byte-order independent: words summed in the machine's
# order and folded give the byte-swapped sum, and a region that verifies sums to 0xFFFF in
# either order. So 32-bit words are added as they lie in memory, into 64 bits (64 KiB of data
# cannot overflow it), and folded once at the end.

cdef inline uint64_t csum_add(const uint8_t* b, uint32_t n, uint64_t acc) noexcept nogil:
    # `n` bytes from `b`, which starts at an even offset of what the checksum covers
    cdef uint32_t w
    cdef uint16_t h = 0
    while n >= 4:
        memcpy(&w, b, 4)
        acc += w
        b += 4
        n -= 4
    if n >= 2:
        memcpy(&h, b, 2)
        acc += h
        b += 2
        n -= 2
    if n:
        h = 0
        memcpy(&h, b, 1)           # the odd last byte, padded with a zero byte
        acc += h
    return acc


cdef inline bint csum_ok(uint64_t acc) noexcept nogil:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc == 0xFFFF


cdef inline bint ipv4_source_routed(const uint8_t* h, uint32_t ihl) noexcept nogil:
    # Loose or Strict Source Route option (RFC 791): the pseudo-header then holds the final
    # destination, not the header's
    cdef uint32_t o = 20
    while o < ihl:
        if h[o] == 0:
            return False
        if h[o] == 1:
            o += 1
            continue
        if h[o] == 131 or h[o] == 137:
            return True
        if o + 1 >= ihl or h[o + 1] < 2:
            return False
        o += h[o + 1]
    return False


cdef bint ipv6_routed(const pkt_t* p) noexcept nogil:
    # a Routing header with segments left: the pseudo-header's destination is its last address
    # (RFC 8200 8.1). The decoder walked the chain already: l4_off is where it ended (a
    # fragment's: past its Fragment header, which follows any Routing header)
    cdef const uint8_t* d = p.data
    cdef uint32_t cur = p.l3_off + 40, end = p.l4_off
    cdef uint8_t nh = d[p.l3_off + 6]
    while cur + 4 <= end and ipv6_extension(nh):
        if nh == 43 and d[cur + 3] != 0:
            return True
        nh, cur = d[cur], cur + ((<uint32_t>d[cur + 1] + 2) * 4 if nh == 51 else (<uint32_t>d[cur + 1] + 1) * 8)
    return False


cdef int check_transport(pkt_t* p, bint routed) noexcept nogil:
    # the TCP or UDP checksum of a decoded packet that is not a fragment (a datagram rebuilt
    # from fragments included); CK_OK for other protocols. `routed`: its fragments had a Routing
    # header with segments left, which the rebuilt datagram does not carry
    cdef const uint8_t* d = p.data
    cdef uint32_t l4 = p.l4_off, n
    cdef uint64_t acc
    cdef uint8_t pseudo[8]
    if (p.proto != 6 and p.proto != 17) or not (p.flags & PF_L4):
        return CK_OK
    if p.flags & PF_IP_LEN_FROM_FRAME:
        return CK_LEN_FROM_FRAME
    if p.flags & (PF_SNAPLEN_CUT | PF_IP_LEN_EXCEEDS_FRAME):
        return CK_CUT
    # the bytes covered: the TCP segment (header and payload) or the UDP length's
    n = p.payload_off - l4 + p.payload_wirelen
    if p.ipver == 4:
        if p.proto == 17 and d[l4 + 6] == 0 and d[l4 + 7] == 0:
            return CK_UDP_NONE
        if l4 - p.l3_off > 20 and ipv4_source_routed(d + p.l3_off, (d[p.l3_off] & 0x0F) * 4):
            return CK_SOURCE_ROUTED
        acc = csum_add(p.src, 4, 0)
        acc = csum_add(p.dst, 4, acc)
        pseudo[0] = 0
        pseudo[1] = p.proto
        pseudo[2] = <uint8_t>(n >> 8)
        pseudo[3] = <uint8_t>(n & 0xFF)
        acc = csum_add(pseudo, 4, acc)
    else:
        # UDP over IPv6 must have a checksum: 0 is wrong (RFC 8200 8.1), even where the sum
        # comes out right (a computed 0 is sent as 0xFFFF)
        if p.proto == 17 and d[l4 + 6] == 0 and d[l4 + 7] == 0:
            return CK_BAD_UDP
        if routed or (l4 > p.l3_off + 40 and ipv6_routed(p)):
            return CK_SOURCE_ROUTED
        acc = csum_add(p.src, 16, 0)
        acc = csum_add(p.dst, 16, acc)
        pseudo[0] = <uint8_t>(n >> 24)
        pseudo[1] = <uint8_t>((n >> 16) & 0xFF)
        pseudo[2] = <uint8_t>((n >> 8) & 0xFF)
        pseudo[3] = <uint8_t>(n & 0xFF)
        pseudo[4] = 0
        pseudo[5] = 0
        pseudo[6] = 0
        pseudo[7] = p.proto
        acc = csum_add(pseudo, 8, acc)
    if csum_ok(csum_add(d + l4, n, acc)):
        return CK_OK
    return CK_BAD_TCP if p.proto == 6 else CK_BAD_UDP


cdef int check_packet(pkt_t* p) noexcept nogil:
    # a decoded frame's checksums: its IPv4 header's, then (not for a fragment, whose datagram
    # the defragmenter checks once rebuilt) its TCP or UDP checksum
    cdef uint32_t ihl
    if p.ipver == 4:
        if p.flags & PF_IP_LEN_FROM_FRAME:
            return CK_LEN_FROM_FRAME
        ihl = (p.data[p.l3_off] & 0x0F) * 4
        if not csum_ok(csum_add(p.data + p.l3_off, ihl, 0)):
            return CK_BAD_IPV4
    if p.flags & PF_FRAGMENT:
        return CK_OK
    return check_transport(p, False)
