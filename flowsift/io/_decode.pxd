from flowsift.io._batch cimport pkt_t

cdef void decode_packet(pkt_t* p) noexcept nogil


cdef inline bint ipv6_extension(unsigned char nh) noexcept nogil:
    # the IPv6 extension headers walked to find the transport (RFC 8200 4, RFC 7045's list)
    return nh == 0 or nh == 43 or nh == 44 or nh == 51 or nh == 60 or nh == 135 or nh == 139 or nh == 140
