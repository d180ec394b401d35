from flowsift.io._batch cimport pkt_t

cdef void decode_packet(pkt_t* p) noexcept nogil
