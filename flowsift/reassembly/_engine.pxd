from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t

# Gap reasons (names in flowsift/reassembly/events.py)
cdef enum:
    GAP_ACKED = 1      # the receiver acknowledged past the hole
    GAP_CLOSED = 2     # the connection ended (FIN/RST, timeout, eviction, end of input) with the hole open
    GAP_MEMCAP = 3     # out-of-order memory bound reached: the oldest hole was given up
    GAP_SNAPLEN = 4    # the capture cut the bytes (snaplen, or a frame shorter than its IP length)
    GAP_TRAILING = 5   # FIN or the peer's ACK prove bytes were sent that were never captured

# Close reasons
cdef enum:
    CLOSE_FIN = 1
    CLOSE_RST = 2
    CLOSE_TIMEOUT = 3
    CLOSE_EVICTED = 4
    CLOSE_EOF = 5


cdef class Sink:
    """Receives the engine's events. C-level methods: subclasses in Cython cost no Python call."""
    cdef int on_open(self, uint32_t conn, object engine) except -1
    cdef int on_data(self, uint32_t conn, int d, int64_t offset, const uint8_t* data, uint32_t n) except -1
    cdef int on_gap(self, uint32_t conn, int d, int64_t offset, int64_t length, int reason) except -1
    cdef int on_overlap(self, uint32_t conn, int d, int64_t offset, int64_t length, uint64_t conflicts) except -1
    cdef int on_datagram(self, uint32_t conn, int d, int64_t ts, const uint8_t* data, uint32_t n) except -1
    cdef int on_close(self, uint32_t conn, object engine) except -1
