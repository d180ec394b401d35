from libc.stdint cimport int8_t, int32_t, int64_t, uint64_t, uint32_t, uint16_t, uint8_t

from flowsift.io._batch cimport Batch, pkt_t
from flowsift.io._flowtable cimport FlowTable

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
    CLOSE_REUSED = 6   # a new connection (a SYN with another ISN) took over the 5-tuple
    N_CLOSE = 7


cdef class Sink:
    """Receives the engine's events. C-level methods: subclasses in Cython cost no Python call.
    A finished connection's record is freed right after on_close (and its flow after the
    linger): a sink copies what it needs of it by then."""
    cdef int on_open(self, uint32_t conn, object engine) except -1
    cdef int on_data(self, uint32_t conn, int d, int64_t offset, const uint8_t* data, uint32_t n) except -1
    cdef int on_gap(self, uint32_t conn, int d, int64_t offset, int64_t length, int reason) except -1
    cdef int on_overlap(self, uint32_t conn, int d, int64_t offset, int64_t length, uint64_t conflicts) except -1
    cdef int on_datagram(self, uint32_t conn, int d, int64_t ts, const uint8_t* data, uint32_t n) except -1
    cdef int on_close(self, uint32_t conn, object engine) except -1
    cdef int on_packet(self, uint32_t conn, pkt_t* p) except -1


cdef enum:
    POL_FIRST = 0
    POL_LAST = 1
    POL_BSD = 2
    POL_LINUX = 3
    POL_WINDOWS = 4
    POL_SOLARIS = 5


# LRU classes (timeouts)
cdef enum:
    LRU_EMBRYONIC = 0
    LRU_ESTABLISHED = 1
    LRU_CLOSING = 2
    LRU_UDP = 3
    LRU_LAST_ACK = 4   # both FINs, nothing missing: waiting for the ACK of the last FIN
    LRU_NONE = 5
    N_LRU = 5
    LRU_RELEASED = 6   # (in conn_t.lru) ended, and its record released: nobody reads it

# connection state
cdef enum:
    CS_UNUSED = 0
    CS_OPEN = 1
    CS_DONE = 2

ctypedef struct chunk_t:
    int64_t start
    int64_t end
    int64_t own_start      # the segment that supplied these bytes, for the overlap policy
    int64_t own_end        # (bytes known missing: own_start is when the capture cut them, cut_ts)
    uint8_t* data          # NULL for bytes known to be missing (cut by the capture)

ctypedef struct ref_t:        # delivered bytes still in the capture file's mapping (not copied)
    int64_t start
    const uint8_t* ptr
    uint32_t len

ctypedef struct dir_t:
    uint8_t anchored       # the sequence-to-offset mapping is fixed
    uint8_t settled        # the start (origin) is known: delivery may proceed
    uint8_t syn_seen
    uint8_t midstream
    uint8_t fin_seen
    uint8_t rst_seen
    uint8_t done
    uint8_t close_reason
    uint32_t anchor_seq    # sequence number at internal offset anchor_off
    int64_t anchor_off
    int64_t origin         # internal offset of stream byte 0
    int64_t next           # internal offset of the next byte to deliver
    int64_t fin_off
    int64_t acked          # highest internal offset the peer acknowledged (valid if has_ack)
    uint8_t has_ack
    int8_t wscale          # window scale its SYN offered (-1: none)
    uint16_t max_win       # largest window field it advertised outside its SYN (unscaled)
    uint8_t unseen_acks    # the peer acknowledged this direction before any packet of it
    uint8_t syn_again      # its SYN came again after the peer answered it (the answer was lost)
    uint8_t has_alt        # alt_seq holds another SYN-ACK's ISN + 1, before any byte (see _packet)
    uint8_t zero_win       # its latest window field (SYN, ACK; not RST) was 0: the peer may probe
    uint8_t early          # first seen while the peer, its SYN sent, acknowledged nothing: its SYN(-ACK) drops what it holds
    uint32_t alt_seq
    uint32_t unseen_ack    # (so far unseen) the peer's latest ACK number, how far its ACKs
    uint32_t unseen_step   # advanced in all and at their last step: what was sent unseen
    int64_t unseen_advance
    int64_t hole_acked_ts  # when the receiver first ACKed past the current hole (0: not)
    int64_t first_data_ts
    # held (out-of-order) data: n_chunks chunks from `chunks`, which points into the
    # allocation chunk_mem of cap_chunks (room kept at both ends: delivery takes from the
    # front, in-order arrivals add at the back, reversed ones at the front, each O(1))
    chunk_t* chunks
    chunk_t* chunk_mem
    int32_t n_chunks
    int32_t cap_chunks
    uint64_t held_bytes        # payload held plus CHUNK_OVERHEAD per chunk (what memory it takes)
    # the last delivered bytes (RETAIN_MAX), to compare later copies with: a ring of copies,
    # then references to bytes of the capture file (refs, a FIFO from ref_head)
    uint8_t* ring
    uint32_t ring_cap
    uint32_t ring_len
    int64_t ring_start
    ref_t* refs
    uint32_t ref_bytes
    uint16_t ref_head
    uint16_t n_refs
    # counters
    uint64_t packets
    uint64_t payload_bytes     # captured payload bytes seen
    uint64_t delivered
    uint64_t gap_bytes
    uint64_t n_gaps            # holes: a gap right after another (nothing delivered between) is the same
    int64_t gap_end            # internal offset where the last gap ended
    int64_t gap_start          # and where that hole began
    uint64_t conflict_bytes
    uint64_t overlap_bytes     # bytes seen more than once (same or different)
    uint64_t retransmissions   # segments whose bytes were all seen before
    uint64_t unverified_bytes  # repeated bytes not compared: no longer retained, or in a gap
    int64_t first_ts           # earliest and latest timestamp of its packets
    int64_t last_ts

ctypedef struct conn_t:
    dir_t d[2]
    uint8_t state
    uint8_t proto
    uint8_t lru
    uint8_t close_reason
    uint8_t rst
    uint8_t ipver
    uint8_t refused          # RSTs that acknowledged the client's SYN (with no SYN-ACK since)
    uint8_t _pad[1]
    int32_t lru_prev
    int32_t lru_next
    int64_t first_ts
    int64_t last_ts
    int64_t idle_ts          # the capture clock at its last packet: what idle timeouts count from
    uint8_t client[16]
    uint8_t server[16]
    uint16_t cport
    uint16_t sport
    uint16_t vlan[2]         # its flow key's VLAN ids (outer, inner; 0 without the table's vlan_key)



# Connection records are stored in chunks of CONN_CHUNK (flow ids are connection ids): a
# chunk whose connections all ended and were released is freed.
cdef enum:
    CONN_CHUNK_SHIFT = 6
    CONN_CHUNK = 64

cdef class Engine:
    cdef conn_t** chunks          # chunk k: connections k * CONN_CHUNK ...; NULL: not made, or freed
    cdef uint8_t* released        # per chunk: connections released from it
    cdef uint32_t cap_chunks
    cdef uint32_t* ended          # FIFO of finished connections whose flow lingers, by end time (flow_t.ended_ts)
    cdef uint32_t ended_head
    cdef uint32_t ended_len
    cdef uint32_t ended_cap
    cdef int64_t linger
    cdef readonly uint64_t released_connections
    cdef FlowTable flows
    cdef Sink sink
    cdef int policy
    cdef int32_t lru_head[N_LRU]
    cdef int32_t lru_tail[N_LRU]
    cdef int64_t timeouts[N_LRU]
    cdef readonly uint64_t max_held_per_dir
    cdef readonly uint64_t memcap
    cdef readonly uint64_t max_connections
    cdef readonly uint64_t held_total
    cdef readonly uint64_t open_connections
    cdef readonly uint64_t peak_open
    cdef readonly uint64_t memcap_gaps
    cdef readonly uint64_t evictions
    cdef readonly uint64_t timeouts_fired
    cdef readonly uint64_t late_packets      # packets for a connection already finished
    cdef readonly uint64_t ignored_flags     # FIN/RST from a side that never started (evasion), RST of a stray ACK
    cdef readonly uint64_t segments
    cdef readonly uint64_t rst_out_of_window # RSTs whose sequence number lay outside the receive window: not applied
    cdef readonly uint64_t stray_acks        # bare ACKs for an older connection answering a SYN: not applied
    cdef readonly uint64_t after_fin_bytes   # bytes sent beyond a direction's FIN: not delivered
    cdef readonly uint64_t before_synack_bytes  # bytes sent before the SYN-ACK, the peer in SYN-SENT: not delivered
    cdef readonly uint64_t keepalives        # keep-alive probes (not retransmissions)
    cdef readonly uint64_t zero_window_probes  # one byte at the next seq into a zero window: not applied
    cdef readonly uint64_t beyond_limit_bytes  # bytes past a direction's 2 TiB of sequence space
    cdef readonly uint64_t lingers_cut       # ended connections forgotten early: max_connections lingering
    cdef readonly uint64_t fin_conflicts     # FINs at another sequence number than the direction's first FIN
    cdef readonly uint64_t fin_out_of_window # first FINs below the bytes their direction delivered: not applied
    cdef readonly uint64_t syn_conflicts     # SYNs with another ISN than their direction's, not a new answer to a SYN sent again: not applied
    cdef readonly uint64_t no_ack_segments   # segments without ACK (nor SYN, RST): every receiver drops them; not applied
    cdef readonly uint64_t held_work         # chunk records moved or probed while holding (a scale witness)
    cdef readonly int64_t now
    cdef readonly uint64_t clock_outliers    # lone timestamps far ahead of the clock, not followed
    cdef bint jump_pending
    cdef int64_t jump_ts             # the pending packet's own time, and the clock it left
    cdef int64_t jump_from
    cdef uint32_t jump_conn          # the connection it touched (0xFFFFFFFF: none)
    cdef uint32_t jump_ended         # the linger FIFO's length before it
    # totals over finished connections (summaries without a Python call per connection)
    cdef uint64_t t_conns[2]          # tcp, udp
    cdef uint64_t t_close[N_CLOSE]    # by CLOSE_*: how connections ended (see _finish)
    cdef uint64_t t_packets
    cdef uint64_t t_delivered
    cdef uint64_t t_gaps
    cdef uint64_t t_gap_bytes
    cdef uint64_t t_conflicts
    cdef uint64_t t_retrans
    cdef uint64_t t_unverified
    cdef uint64_t t_midstream
    cdef uint16_t cur_rflags         # RF_* of the segment being handled
    cdef int64_t cut_filled          # bytes the capture had cut that the last _hold brought
    cdef bint cur_stable             # its bytes lie in the capture file's mapping (PF_STABLE)

    cdef int _grow(self, uint32_t need) except -1
    cdef int _state(self, uint32_t i) noexcept nogil
    cdef int _held(self, uint32_t conn) except -1
    cdef bint _released(self, uint32_t i) noexcept nogil
    cdef int _release(self, uint32_t i, int64_t ended) except -1
    cdef int _forget_ended(self) except -1
    cdef void _lru_unlink(self, uint32_t i) noexcept nogil
    cdef void _lru_push(self, uint32_t i, int cls) noexcept nogil
    cdef void _lru_insert(self, uint32_t i, int cls) noexcept nogil
    cdef int _open(self, uint32_t i, pkt_t* p) except -1
    cdef bint _any_fin(self, uint32_t i) noexcept nogil
    cdef int _evict_idlest(self, uint32_t keep) except -1
    cdef int _expire(self) except -1
    cdef int _clock(self, int64_t ts) except -1
    cdef int _tick(self, int64_t ts) except -1
    cdef int _jump_confirmed(self) except -1
    cdef int _finish(self, uint32_t i, int reason) except -1
    cdef void _free_dir(self, dir_t* D) noexcept nogil
    cdef int _ignored(self, uint32_t i, pkt_t* p, int cls) except -1
    cdef int _ignored_here(self, uint32_t i, pkt_t* p) except -1
    cdef int _packet(self, pkt_t* p) except -1
    cdef bint _complete(self, dir_t* D) noexcept nogil
    cdef bint _fins_done(self, uint32_t i) noexcept nogil
    cdef void _anchor(self, dir_t* D, uint32_t seq) noexcept nogil
    cdef int64_t _off(self, dir_t* D, uint32_t seq) noexcept nogil
    cdef void _move_anchor(self, dir_t* D, int64_t off) noexcept nogil
    cdef int _settle(self, uint32_t i, int d) except -1
    cdef int _settle_at(self, uint32_t i, int d, int64_t start) except -1
    cdef int _on_ack(self, uint32_t i, int d) except -1
    cdef int _acked_holes(self, uint32_t i) except -1
    cdef int _cuts_due(self, uint32_t i) except -1
    cdef int _pass_front(self, uint32_t i, int d, int reason) except -1
    cdef int _gap_to(self, uint32_t i, int d, int64_t upto, int reason) except -1
    cdef int _trailing_gap(self, uint32_t i, int d) except -1
    cdef int _unseen_gap(self, uint32_t i, int d) except -1
    cdef int _udp_cut(self, uint32_t i, int d, pkt_t* p) except -1
    cdef int _flush_all(self, uint32_t i, int d, int reason) except -1
    cdef int _deliver(self, uint32_t i, int d, const uint8_t* data, uint32_t n, bint stable) except -1
    cdef void _retain(self, dir_t* D, const uint8_t* data, uint32_t n, bint stable) noexcept nogil
    cdef void _refs_to_ring(self, dir_t* D) noexcept nogil
    cdef void _oldest_ref_to_ring(self, dir_t* D) noexcept nogil
    cdef void _ring_append(self, dir_t* D, int64_t at, const uint8_t* data, uint32_t n) noexcept nogil
    cdef void _ring_put(self, uint8_t* ring, uint32_t cap, int64_t at, const uint8_t* src, uint32_t n) noexcept nogil
    cdef uint64_t _compare_delivered(self, uint32_t i, int d, int64_t o, const uint8_t* data, int64_t n) except? 0
    cdef int _insert(self, uint32_t i, int d, int64_t o, const uint8_t* data, uint32_t n, uint32_t wire) except -1
    cdef int _check_memory(self, uint32_t i, int d) except -1
    cdef int _flush(self, uint32_t i, int d) except -1
    cdef int _make_slot(self, dir_t* D, int32_t at) except -1
    cdef int _recentre(self, dir_t* D, int32_t cap) except -1
    cdef int32_t _first_ending_after(self, dir_t* D, int64_t s) noexcept nogil
    cdef void _follow(self, dir_t* D, int64_t off) noexcept nogil
    cdef bint _rst_in_window(self, dir_t* D, dir_t* P, int64_t o) noexcept nogil
    cdef int _drop_beyond(self, dir_t* D, int64_t end) except -1
    cdef uint64_t _drop_held(self, dir_t* D) noexcept nogil
    cdef int _push_chunk(self, dir_t* D, int32_t at, int64_t s, int64_t e, int64_t os, int64_t oe, const uint8_t* src) except -1
    cdef int64_t _hold(self, uint32_t i, int d, int64_t s, int64_t e, const uint8_t* data, int64_t own_s, int64_t own_e) except -1


cdef inline conn_t* conn_at(Engine e, uint32_t i) noexcept nogil:
    # connection i's record: its chunk must exist (the connection opened and is not released)
    return &e.chunks[i >> CONN_CHUNK_SHIFT][i & (CONN_CHUNK - 1)]
