from libc.stdint cimport uint64_t
from flowsift.io._batch cimport pkt_t, ST_BAD_CHECKSUM

cdef void decode_packet(pkt_t* p) noexcept nogil


cdef inline bint ipv6_extension(unsigned char nh) noexcept nogil:
    # the IPv6 extension headers walked to find the transport (RFC 8200 4, RFC 7045's list)
    return nh == 0 or nh == 43 or nh == 44 or nh == 51 or nh == 60 or nh == 135 or nh == 139 or nh == 140


# what verifying a decoded packet's checksums found (--checksums verify): the Decoder and the
# Defragmenter count each outcome but CK_OK; names in flowsift/io/reasons.py (CHECKSUM_OUTCOMES)
cdef enum:
    CK_OK = 0
    CK_BAD_IPV4 = 1          # IPv4 header checksum wrong
    CK_BAD_TCP = 2
    CK_BAD_UDP = 3
    CK_CUT = 4               # not verifiable: bytes it covers were not captured (snaplen, short frame)
    CK_LEN_FROM_FRAME = 5    # not verifiable: IP length 0 (TSO/GSO capture), headers not those sent
    CK_SOURCE_ROUTED = 6     # not verifiable: the pseudo-header's destination is in a routing header/option
    CK_UDP_NONE = 7          # UDP over IPv4 with checksum 0: the sender computed none (valid)
    CK_COUNT = 8

cdef int check_packet(pkt_t* p) noexcept nogil
cdef int check_transport(pkt_t* p, bint routed) noexcept nogil
cdef bint ipv6_routed(const pkt_t* p) noexcept nogil


cdef inline void take_check(pkt_t* p, int k, uint64_t* checks) noexcept nogil:
    # what verifying found (CK_*) is counted; a wrong checksum leaves the packet undecoded
    if k != CK_OK:
        checks[k] += 1
        if k <= CK_BAD_UDP:
            p.status = ST_BAD_CHECKSUM
