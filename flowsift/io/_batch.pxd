# The batch: the one structure every source fills and every later stage reads.
# A batch is an array of pkt_t, one per captured frame. Sources fill the capture fields,
# decode fills the header fields, the flow table fills flow_id/dir. Batch.array views the
# memory as a numpy structured array (PKT_DTYPE in columns.py mirrors this struct) so Python
# tools read whole columns without a per-packet loop.
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t

# status: 0 = decoded, else the reason the frame could not be decoded.
# Names for these live in flowsift/io/reasons.py; keep the two in step.
cdef enum:
    ST_OK = 0
    ST_BAD_INTERFACE = 1         # pcapng packet names an interface its section never described
    ST_BAD_RECORD = 2            # packet block intact, but its lengths do not fit inside it
    ST_UNSUPPORTED_LINKTYPE = 3
    ST_TRUNCATED_LINK = 4        # frame ends inside the link-layer header
    ST_NON_IP = 5                # a link-layer protocol other than IPv4/IPv6 (ARP, LLDP, ...)
    ST_TRUNCATED_IP = 6          # frame ends inside the IP header
    ST_BAD_IP_VERSION = 7
    ST_BAD_IP_HEADER_LEN = 8
    ST_BAD_IP_TOTAL_LEN = 9      # length field below the header size
    ST_TRUNCATED_IPV6_EXT = 10   # frame ends inside an IPv6 extension header
    ST_TRUNCATED_TCP = 11        # frame ends inside the TCP header
    ST_BAD_TCP_DATA_OFFSET = 12
    ST_TRUNCATED_UDP = 13
    ST_BAD_UDP_LENGTH = 14
    ST_BAD_CHECKSUM = 15         # with checksums verified: an IPv4 header or a TCP/UDP checksum is wrong
    ST_COUNT = 16

# pkt_t.flags
cdef enum:
    PF_SNAPLEN_CUT = 1        # payload bytes missing because caplen < wirelen
    PF_FRAGMENT = 2           # an IP fragment (first or later)
    PF_FRAG_FIRST = 4         # the fragment at offset 0 (carries the L4 header)
    PF_MORE_FRAGS = 8         # MF bit set
    PF_IP_LEN_FROM_FRAME = 16 # IP length field was 0 (TSO capture): length taken from the frame
    PF_BAD_TCP_OPTION = 32    # TCP options malformed; header still decoded
    PF_CAPLEN_GT_WIRELEN = 64 # record claims more captured than on-wire bytes
    PF_TRAILER = 128          # link-layer bytes after the IP packet (padding or FCS)
    PF_L4 = 256               # transport header decoded: ports (and TCP fields) are valid
    PF_IP_LEN_EXCEEDS_FRAME = 512  # IP length claims more than the frame held on the wire
    PF_REASSEMBLED = 1024     # a datagram rebuilt from IP fragments (data owned by the defragmenter)
    PF_OTHER_SHARD = 2048     # another shard's packet: it only moves this shard's clock
    PF_STABLE = 4096          # data lies in a capture file's mapping: valid while the capture is open
    PF_NO_TS = 8192           # no timestamp of its own (SPB, bad block, out of range): ts_ns is the last one's

# pkt_t.opts: which TCP options were present
cdef enum:
    OPT_MSS = 1
    OPT_WSCALE = 2
    OPT_SACK_PERM = 4
    OPT_SACK = 8
    OPT_TS = 16
    OPT_TFO = 32

# pkt_t.rflags: set by reassembly for each TCP segment
cdef enum:
    RF_RETRANSMISSION = 1     # every byte was seen before
    RF_OVERLAP = 2            # some bytes were seen before
    RF_CONFLICT = 4           # some of those bytes differed
    RF_OUT_OF_ORDER = 8       # arrived beyond the next expected byte: held
    RF_GAP_BEFORE = 16        # a gap was declared in this direction while handling it
    RF_SNAPLEN_CUT = 32       # the capture cut some of its payload
    RF_LATE = 64              # its connection had already ended
    RF_IGNORED = 128          # FIN/RST from a side that never started: not applied
    RF_KEEPALIVE = 256        # a keep-alive probe: its byte (below the next expected) not compared

ctypedef struct pkt_t:
    int64_t ts_ns            # capture time, ns since the epoch
    const uint8_t* data      # frame bytes (valid until the source produces its next batch)
    uint64_t rec_pos         # source position of the record (byte offset in a file)
    int64_t stream_off       # set by reassembly: stream offset of the payload (or of next, without one)
    uint32_t caplen          # bytes captured
    uint32_t wirelen         # bytes on the wire
    uint32_t seq
    uint32_t ack
    uint32_t tsval
    uint32_t tsecr
    uint32_t sack[8]         # up to 4 SACK blocks (left, right)
    uint32_t flow_id         # set by the flow table
    uint32_t payload_off     # offset of the L4 payload in data
    uint32_t payload_len     # payload bytes captured
    uint32_t payload_wirelen # payload bytes per the headers (> payload_len when snaplen-cut)
    uint32_t frag_id         # IPv4 id or IPv6 fragment identification
    uint16_t linktype
    uint16_t iface
    uint16_t l3_off
    uint16_t l4_off
    uint16_t sport
    uint16_t dport
    uint16_t window
    uint16_t mss
    uint16_t frag_off        # fragment offset in bytes
    uint16_t ethertype       # L3 protocol as an ethertype (0x0800 / 0x86dd / other)
    uint16_t vlan            # outermost VLAN id (0 when untagged)
    uint16_t vlan_inner      # the next tag's id (QinQ: the customer VLAN; 0 when fewer than two tags)
    uint16_t flags           # PF_*
    uint16_t rflags          # set by reassembly: RF_* (what happened to this segment)
    uint8_t src[16]          # IPv4 in the first 4 bytes
    uint8_t dst[16]
    uint8_t status           # ST_OK or a reason code
    uint8_t ipver            # 4, 6 or 0
    uint8_t proto            # final IP protocol number (6 tcp, 17 udp, ...)
    uint8_t tcp_flags
    uint8_t wscale
    uint8_t nsack
    uint8_t ttl
    uint8_t opts             # OPT_*
    uint8_t dir              # 0: from the connection's client, 1: from its server
    uint8_t vlan_depth
    uint8_t filtered         # 1 when a BPF filter rejected the frame
    uint8_t _pad[5]

cdef class Batch:
    cdef pkt_t* pkts
    cdef public Py_ssize_t n          # packets in use
    cdef readonly Py_ssize_t capacity
    cdef bytearray _buf               # owns the memory; numpy views it on demand
    cdef public object owner          # keeps the memory behind pkt_t.data alive
