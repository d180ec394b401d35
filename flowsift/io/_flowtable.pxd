from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t

from flowsift.io._batch cimport pkt_t, ST_OK, PF_L4, PF_FRAGMENT


cdef inline bint carries_flow(const pkt_t* p) noexcept nogil:
    # a decoded TCP/UDP packet that is not a fragment (fragments wait for the defragmenter,
    # which hands on the whole datagram): in this shard or another
    return p.status == ST_OK and (p.flags & PF_L4) and not (p.flags & PF_FRAGMENT) and (p.proto == 6 or p.proto == 17)

ctypedef struct slot_t:
    uint32_t hash
    uint32_t idx1

# A flow's key is its first KEY_BYTES: addresses, ports, VLAN ids, protocol, IP version. flow_t
# stays 128 bytes: the key's hash is kept in its slot only.
cdef enum:
    KEY_BYTES = 42

ctypedef struct flow_t:
    uint8_t a[16]
    uint8_t b[16]
    uint16_t pa
    uint16_t pb
    uint16_t vlan[2]         # outer, inner VLAN id when the table keys by VLAN (0: untagged), else 0
    uint8_t proto
    uint8_t ipver
    uint8_t client_is_a
    uint8_t closing
    uint8_t syn_seen[2]
    uint8_t seq_seen[2]
    uint8_t in_table
    uint8_t _pad[3]
    uint32_t prev
    uint32_t isn[2]
    uint32_t min_seq[2]
    int64_t first_ts
    int64_t last_ts
    uint64_t pkts[2]
    uint64_t bytes[2]
    int64_t ended_ts         # when its connection ended, for the linger (set by the engine)


# Flows are stored in chunks of FLOW_CHUNK: a chunk whose flows were all released (their
# connections over and forgotten) is freed, so memory follows the flows kept, not every flow seen.
cdef enum:
    FLOW_CHUNK_SHIFT = 6
    FLOW_CHUNK = 64


cdef class FlowTable:
    cdef slot_t* slots
    cdef uint32_t mask
    cdef uint32_t used
    cdef flow_t** chunks          # chunk k holds flows k * FLOW_CHUNK ...; NULL: not made yet, or freed
    cdef uint8_t* released        # per chunk: its flows released so far
    cdef uint32_t cap_chunks
    cdef readonly uint32_t n_flows
    cdef readonly uint64_t released_flows
    cdef readonly uint64_t tcp_connections
    cdef readonly uint64_t udp_flows
    cdef readonly uint64_t reused_tuples
    cdef readonly bint vlan_key   # the key holds the packets' two outer VLAN ids
    cdef int _grow_slots(self) noexcept nogil
    cdef int _new_flow(self, const flow_t* key) noexcept nogil
    cdef int _assign(self, void* p) noexcept nogil
    cdef bint has_flow(self, const void* p) noexcept nogil
    cdef int place(self, void* p) noexcept nogil
    cdef bint _new_connection(self, const flow_t* f, uint8_t d, uint32_t seq) noexcept nogil
    cdef bint _remove(self, uint32_t flow_id) noexcept nogil
    cdef int _adopt(self, const flow_t* src) noexcept nogil
    cdef void _release(self, uint32_t flow_id) noexcept nogil
    cdef bint _known(self, uint32_t flow_id) noexcept nogil


cdef inline flow_t* flow_at(FlowTable t, uint32_t i) noexcept nogil:
    # flow i, which must be neither released nor beyond n_flows
    return &t.chunks[i >> FLOW_CHUNK_SHIFT][i & (FLOW_CHUNK - 1)]
