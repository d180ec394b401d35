# cython: language_level=3
"""TCP reassembly, sans-IO: decoded segments in, stream events out (to a Sink).

Theory of operation
-------------------
Each connection has two directions. A direction maps 32-bit sequence numbers onto 64-bit
*internal offsets* anchored at the first sequence number it met (ISN + 1 when the SYN was
seen). Reported offsets are internal - origin, so the stream starts at 0.

A direction is *settled* once its start is known: at once when its SYN was seen; for a
midstream pickup (no SYN) only when one of these happens first: SETTLE_BYTES held, SETTLE_NS of
capture time since its first segment, the peer acknowledging its data, or the connection
ending. Until then nothing is delivered, so segments that arrive reordered at the very start
still count: the stream starts at the lowest sequence number seen.

Bytes are delivered the moment they are contiguous with what was delivered before (`next`).
Segments beyond `next` are *held*, as non-overlapping chunks that remember which segment
supplied each byte; overlapping held bytes are resolved by the overlap policy. Delivered bytes
are final: a later copy that differs is reported (Overlap events, conflict counts) but cannot
change them. To compare, each direction keeps its last delivered bytes (RETAIN_MAX): bytes that
lie in a capture file's mapping (PF_STABLE) by reference, the others copied into a ring. The
references hold while the capture is open: whoever feeds a capture file ends its connections
(close_all) before closing it, and export_flow copies them.

A hole becomes a gap when it can no longer fill: the receiver acknowledged past it while
data waits beyond it, the out-of-order memory bound is reached (the oldest hole is given up),
the capture cut the bytes and no full copy came within CUT_GRACE_NS, or the connection ends.
Gaps are events with an offset and a length; the stream goes on after them.

Connections end lazily: FIN from both sides with nothing missing ends one at once; a RST,
or FINs with holes left, moves it to the closing timeout so late retransmissions still count.
Idle timeouts are per state (embryonic, established, closing, UDP), kept in one LRU list per
state so expiry is O(1) per connection.
"""
from libc.stdint cimport int32_t, int64_t, uint64_t, uint32_t, uint16_t, uint8_t, INT64_MAX
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport malloc, calloc, realloc, free

from flowsift.io._batch cimport *
from flowsift.io._flowtable cimport FlowTable, flow_t, flow_at, carries_flow
from flowsift.io._tables cimport reach_chunk

cdef extern from "string.h" nogil:
    void* _memmove "memmove"(void* dst, const void* src, size_t n)

# --- limits, each with why ---------------------------------------------------------------
# The last delivered bytes kept per direction to compare with later copies (retransmissions,
# keep-alive probes). Kept whether or not the peer ACKed them, since late copies come after
# the ACK too; 32 KiB covers typical in-flight data while bounding memory per open stream.
DEF RETAIN_MAX = 32768
# references to delivered bytes a direction keeps before it copies the oldest (RETAIN_MAX in
# full-size segments)
DEF NREF = 32
# A midstream direction waits this long / this much before fixing its start (see above).
DEF SETTLE_BYTES = 16384
DEF SETTLE_NS = 1000000000
# A hole the receiver acknowledged (the capture missed bytes the receiver got) is given up this
# long after the ACK, not at once: a capture can hold the (spurious) retransmission just after
# the ACK, or stamped a little earlier on another interface.
DEF ACK_GRACE_NS = 500000000
# Bytes the capture cut wait as long for a full copy before they are a gap: the same packet
# seen whole on a second interface, or the sender's retransmission.
DEF CUT_GRACE_NS = ACK_GRACE_NS
# A trailing gap (bytes proven sent by FIN or ACK but never captured) larger than this is not
# believed: such ACK values come from broken or crafted packets.
DEF MAX_TRAILING_GAP = 1073741824
# a packet further than this ahead of the capture clock moves it only if the next one agrees
DEF CLOCK_JUMP_NS = 3600000000000
# A connection whose FINs both came, with nothing missing, waits this long for the ACK of the
# last FIN (so that ACK is its packet, not a late one); it ends by FIN either way. An RTT is
# well below it; kept short, since the connection's memory waits with it.
DEF LAST_ACK_NS = 1000000000
# A segment moves the sequence anchor (what later numbers are unwrapped against) by at most
# this far beyond what its direction delivered or holds: a window is at most 2^30 bytes
# (RFC 7323), so a segment further out is garbage or a capture that skipped as much; it is
# still placed (a hole, at worst a gap), but it cannot make everything after it read 2^32 on.
DEF MAX_ANCHOR_STEP = 1073741824
# What one held chunk costs besides its payload: its chunk_t record (40 bytes) and the
# allocator's header and rounding of its copy. Counted in held bytes, so the per-direction and
# global bounds bound memory, not payload (a million 1-byte segments are ~70 MB, not 1 MB).
DEF CHUNK_OVERHEAD = 64
# A direction's stream ends at 2 TiB of sequence space (a record file keeps 3 TiB for the
# client's bytes before the server's): bytes past it, reachable only through holes (window
# jumps, thinned captures), are counted (beyond_limit_bytes), never delivered.
DEF MAX_STREAM = 2199023255552
# A RST is applied only when its sequence number lies in the receiver's window (RFC 9293
# 3.10.7.4, RFC 5961): from RST_SLACK before the next byte expected to the largest window the
# peer advertised (scaled when both SYNs offered window scaling), and never less than
# MIN_RST_WINDOW (a capture that missed the window advertisements, or the handshake).
DEF RST_SLACK = 1
DEF MIN_RST_WINDOW = 65536

DEF TH_FIN = 0x01
DEF TH_SYN = 0x02
DEF TH_RST = 0x04
DEF TH_ACK = 0x10

POLICIES = {"first": POL_FIRST, "last": POL_LAST, "bsd": POL_BSD, "linux": POL_LINUX,
            "windows": POL_WINDOWS, "solaris": POL_SOLARIS}


cdef inline bint new_wins(int policy, int64_t ns, int64_t ne, int64_t os, int64_t oe) noexcept nogil:
    # Overlap between a new segment [ns, ne) and bytes held from an older one [os, oe):
    # does the new copy replace the old? (Suricata's and Snort's target-based policies.)
    if policy == POL_FIRST:
        return False
    if policy == POL_LAST:
        return True
    if policy == POL_BSD or policy == POL_WINDOWS:
        return ns < os
    if policy == POL_LINUX:
        return ns < os or (ns == os and ne > oe)
    # solaris
    return ne > oe or (ne == oe and ns <= os)


cdef inline int64_t cut_ts(const chunk_t* ch) noexcept nogil:
    # when the capture cut the bytes of a "known missing" chunk (no policy looks at its extent)
    return ch.own_start

cdef inline bint cut_waits(const dir_t* D) noexcept nogil:
    # the next bytes to deliver were cut by the capture: a full copy may still come
    return D.settled and D.n_chunks and D.chunks[0].data == NULL and D.chunks[0].start <= D.next

cdef inline int64_t _cut_end(const dir_t* D, int64_t cut_by) noexcept nogil:
    # where the cut bytes at the front end: over the pieces that follow on, cut by `cut_by`
    # (pieces of one cut, split by other copies, are one gap)
    cdef int32_t k = 0
    cdef int64_t end = D.chunks[0].end
    while (k + 1 < D.n_chunks and D.chunks[k + 1].data == NULL and D.chunks[k + 1].start == end
           and cut_ts(&D.chunks[k + 1]) <= cut_by):
        k += 1
        end = D.chunks[k].end
    return end

cdef inline void _unseen_ack(dir_t* P, uint32_t ack) noexcept nogil:
    # the peer acknowledged P, of which no packet came: how far its ACKs advance (forward steps
    # only, modulo 2^32) tells what P sent
    cdef uint32_t step
    if not P.unseen_acks:
        P.unseen_acks = 1
        P.unseen_ack = ack
        return
    step = ack - P.unseen_ack
    if step != 0 and step < (<uint32_t>1 << 31):
        P.unseen_advance += step
        P.unseen_ack = ack
        P.unseen_step = step

cdef inline uint64_t chunk_cost(const chunk_t* ch) noexcept nogil:
    # what a held chunk counts for in held bytes: its payload copy and its bookkeeping
    return <uint64_t>(ch.end - ch.start if ch.data != NULL else 0) + CHUNK_OVERHEAD


cdef class Sink:
    """Base sink: ignores everything. Subclass in Cython (cdef methods) or use EventSink."""
    cdef int on_open(self, uint32_t conn, object engine) except -1:
        return 0
    cdef int on_data(self, uint32_t conn, int d, int64_t offset, const uint8_t* data, uint32_t n) except -1:
        return 0
    cdef int on_gap(self, uint32_t conn, int d, int64_t offset, int64_t length, int reason) except -1:
        return 0
    cdef int on_overlap(self, uint32_t conn, int d, int64_t offset, int64_t length, uint64_t conflicts) except -1:
        return 0
    cdef int on_datagram(self, uint32_t conn, int d, int64_t ts, const uint8_t* data, uint32_t n) except -1:
        return 0
    cdef int on_close(self, uint32_t conn, object engine) except -1:
        return 0
    cdef int on_packet(self, uint32_t conn, pkt_t* p) except -1:
        # every segment, once the engine handled it (p.stream_off, p.rflags set), before any close
        return 0


cdef class CountSink(Sink):
    """Counts delivered bytes and events; touches every delivered byte (the benchmark's no-op consumer)."""
    cdef readonly uint64_t bytes
    cdef readonly uint64_t datagram_bytes
    cdef readonly uint64_t chunks
    cdef readonly uint64_t gaps
    cdef readonly uint64_t closes
    cdef readonly uint64_t checksum

    cdef int on_data(self, uint32_t conn, int d, int64_t offset, const uint8_t* data, uint32_t n) except -1:
        self.bytes += n
        self.chunks += 1
        if n:
            self.checksum += data[0] + data[n - 1]
        return 0

    cdef int on_gap(self, uint32_t conn, int d, int64_t offset, int64_t length, int reason) except -1:
        self.gaps += 1
        return 0

    cdef int on_datagram(self, uint32_t conn, int d, int64_t ts, const uint8_t* data, uint32_t n) except -1:
        self.datagram_bytes += n
        return 0

    cdef int on_close(self, uint32_t conn, object engine) except -1:
        self.closes += 1
        return 0


cdef class PySink(Sink):
    """Forwards events to Python methods of `target` (events.EventCollector): for tests and tools."""
    cdef object target

    def __init__(self, target):
        self.target = target

    cdef int on_open(self, uint32_t conn, object engine) except -1:
        self.target.on_open(conn, engine)
        return 0

    cdef int on_data(self, uint32_t conn, int d, int64_t offset, const uint8_t* data, uint32_t n) except -1:
        self.target.on_data(conn, d, offset, (<const char*>data)[:n])
        return 0

    cdef int on_gap(self, uint32_t conn, int d, int64_t offset, int64_t length, int reason) except -1:
        self.target.on_gap(conn, d, offset, length, reason)
        return 0

    cdef int on_overlap(self, uint32_t conn, int d, int64_t offset, int64_t length, uint64_t conflicts) except -1:
        self.target.on_overlap(conn, d, offset, length, conflicts)
        return 0

    cdef int on_datagram(self, uint32_t conn, int d, int64_t ts, const uint8_t* data, uint32_t n) except -1:
        self.target.on_datagram(conn, d, ts, (<const char*>data)[:n])
        return 0

    cdef int on_close(self, uint32_t conn, object engine) except -1:
        self.target.on_close(conn, engine)
        return 0



# which connections a full table gives up first (Engine._evict_idlest), by the LRU they wait in
cdef int EVICT_ORDER[N_LRU]
EVICT_ORDER[:] = [LRU_LAST_ACK, LRU_CLOSING, LRU_EMBRYONIC, LRU_UDP, LRU_ESTABLISHED]


cdef inline void _count_hole(dir_t* D, int64_t at, int64_t end) noexcept nogil:
    # a hole [at, end) in the direction's totals; one running on from the last is the same hole
    # (a snaplen cut then a loss, say, is one hole, as the index lists it)
    D.gap_bytes += <uint64_t>(end - at)
    if D.n_gaps == 0 or D.gap_end != at:
        D.n_gaps += 1
        D.gap_start = at
    D.gap_end = end

cdef class Engine:
    """One reassembler for many connections. Feed it decoded batches (flow ids assigned by `flows`)."""

    def __cinit__(self, FlowTable flows, Sink sink, str policy="first", double embryonic_timeout=30.0,
                  double established_timeout=600.0, double closing_timeout=10.0, double udp_timeout=120.0,
                  uint64_t max_held_per_dir=4 << 20, uint64_t memcap=1 << 30, uint64_t max_connections=1 << 20,
                  double finished_linger=60.0):
        if policy not in POLICIES:
            raise ValueError(f"unknown overlap policy {policy!r} (one of: {', '.join(POLICIES)})")
        self.flows = flows
        self.sink = sink
        self.policy = POLICIES[policy]
        cdef int i
        for i in range(N_LRU):
            self.lru_head[i] = -1
            self.lru_tail[i] = -1
        self.timeouts[LRU_EMBRYONIC] = <int64_t>(embryonic_timeout * 1e9)
        self.timeouts[LRU_ESTABLISHED] = <int64_t>(established_timeout * 1e9)
        self.timeouts[LRU_CLOSING] = <int64_t>(closing_timeout * 1e9)
        self.timeouts[LRU_UDP] = <int64_t>(udp_timeout * 1e9)
        self.timeouts[LRU_LAST_ACK] = LAST_ACK_NS
        self.max_held_per_dir = max_held_per_dir
        self.memcap = memcap
        self.max_connections = max_connections
        self.linger = <int64_t>(finished_linger * 1e9)

    def __dealloc__(self):
        cdef uint32_t i, k
        cdef int d
        if self.chunks != NULL:
            for k in range(self.cap_chunks):
                if self.chunks[k] == NULL:
                    continue
                for i in range(CONN_CHUNK):
                    for d in range(2):
                        self._free_dir(&self.chunks[k][i].d[d])
                free(self.chunks[k])
        free(self.chunks)
        free(self.released)
        free(self.ended)

    # --- public API ---------------------------------------------------------------------

    def feed(self, Batch batch):
        """Process a decoded (and defragmented) batch: each packet is placed in the flow table
        right before it is handled, after the timeouts its time fires, so flows, their ids and
        their fates are the same however the input is cut into batches."""
        cdef Py_ssize_t i
        cdef pkt_t* p
        for i in range(batch.n):
            p = &batch.pkts[i]
            if not self.flows.has_flow(<void*>p):
                p.flow_id = 0xFFFFFFFF
                if (p.flags & PF_OTHER_SHARD) and carries_flow(p):
                    # another shard's flow: the clock (and so timeouts) moves as in one gateway
                    self._clock(p.ts_ns)
                continue
            self._clock(p.ts_ns)
            if self.flows._assign(<void*>p) < 0:
                raise MemoryError("flow table")
            if self.jump_pending:
                self.jump_conn = p.flow_id
            self._packet(p)

    cdef int _clock(self, int64_t ts) except -1:
        if ts > self.now:
            self._tick(ts)
        else:
            self.jump_pending = 0
        return 0

    cdef int _tick(self, int64_t ts) except -1:
        # Timeouts fire at the packet that passes them, not at the end of its batch: a
        # connection's fate does not depend on where batches happen to be cut. A lone packet
        # far ahead of the clock (a broken timestamp) does not move it: it would time out every
        # connection at once; a second one in a row does (the capture really skipped ahead).
        if self.now and ts - self.now > CLOCK_JUMP_NS and not self.jump_pending:
            self.jump_pending = 1
            self.jump_ts = ts
            self.jump_from = self.now
            self.jump_conn = 0xFFFFFFFF
            self.jump_ended = self.ended_len
            self.clock_outliers += 1
            return 0
        if self.jump_pending and ts - self.now > CLOCK_JUMP_NS:
            self.clock_outliers -= 1           # confirmed: time did move on
            self._jump_confirmed()
        self.jump_pending = 0
        self.now = ts
        self._expire()
        return 0

    cdef int _jump_confirmed(self) except -1:
        # The pending packet was handled at the clock it did not move, but it really came at
        # jump_ts: what it touched counts its idle time and its linger from then, or the jump
        # would expire a connection it had just opened (and split it, roles reversed).
        cdef uint32_t i = self.jump_conn, j
        cdef conn_t* c
        cdef int cls
        cdef flow_t* f
        if i != 0xFFFFFFFF and self._state(i) == CS_OPEN:
            c = conn_at(self, i)
            if c.idle_ts == self.jump_from and c.lru < N_LRU:
                cls = c.lru
                self._lru_unlink(i)
                c.idle_ts = self.jump_ts
                self._lru_insert(i, cls)
        # flows it ended (their connection, a reused tuple's earlier one) joined the linger
        # FIFO last; nothing left it since (the clock did not move)
        for j in range(self.jump_ended, self.ended_len):
            f = flow_at(self.flows, self.ended[(self.ended_head + j) % self.ended_cap])
            if f.ended_ts == self.jump_from:
                f.ended_ts = self.jump_ts
        return 0

    def advance(self, int64_t now_ns):
        """Let capture time pass (fires idle timeouts); time never moves backwards."""
        if now_ns > self.now:
            self.now = now_ns
            self.jump_pending = 0
        self._expire()

    def close_all(self, str reason="eof"):
        """End every open connection (end of input); holes become gaps."""
        cdef int r = CLOSE_EOF if reason == "eof" else CLOSE_EVICTED
        cdef int c
        for c in range(N_LRU):
            while self.lru_head[c] >= 0:
                self._finish(<uint32_t>self.lru_head[c], r)

    def endpoints(self, uint32_t conn):
        """(ipver, client address bytes, client port, server address bytes, server port)."""
        self._held(conn)
        cdef conn_t* c = conn_at(self, conn)
        alen = 4 if c.ipver == 4 else 16
        return c.ipver, c.client[:alen], c.cport, c.server[:alen], c.sport

    def is_open(self, uint32_t conn):
        return self._state(conn) == CS_OPEN

    def is_tcp(self, uint32_t conn):
        self._held(conn)
        return conn_at(self, conn).proto == 6

    cdef int _held(self, uint32_t conn) except -1:
        # a connection whose record is here: opened, and not released since it ended
        if self._state(conn) == CS_UNUSED:
            raise KeyError(conn)
        if self._released(conn):
            raise KeyError(f"connection {conn} ended and its record was released")
        return 0

    def direction_summary(self, uint32_t conn, int d):
        """(packets, delivered, gap_bytes, conflicts, retransmissions, midstream, close, first_ts, last_ts):
        the fields an index line needs, as one tuple."""
        self._held(conn)
        cdef dir_t* D = &conn_at(self, conn).d[d & 1]
        return (D.packets, D.delivered, D.gap_bytes, D.conflict_bytes, D.retransmissions, bool(D.midstream),
                CLOSE_NAMES.get(D.close_reason), D.first_ts, D.last_ts)

    def connection(self, uint32_t conn):
        """A finished or open connection's summary, as a dict (per connection, not per packet)."""
        self._held(conn)
        cdef conn_t* c = conn_at(self, conn)
        alen = 4 if c.ipver == 4 else 16
        out = {"id": conn, "proto": "tcp" if c.proto == 6 else "udp", "ipver": c.ipver,
               "client": (bytes(c.client[:alen]), c.cport), "server": (bytes(c.server[:alen]), c.sport),
               "vlan": (c.vlan[0], c.vlan[1]) if self.flows.vlan_key else None,
               "first_ts": c.first_ts, "last_ts": c.last_ts, "open": c.state == CS_OPEN, "dirs": []}
        for d in range(2):
            D = &c.d[d]
            out["dirs"].append({
                "packets": D.packets, "payload_bytes": D.payload_bytes, "delivered": D.delivered,
                "gap_bytes": D.gap_bytes, "gaps": D.n_gaps, "conflicts": D.conflict_bytes,
                "overlap_bytes": D.overlap_bytes, "retransmissions": D.retransmissions,
                "unverified_bytes": D.unverified_bytes,
                "midstream": bool(D.midstream), "syn": bool(D.syn_seen), "fin": bool(D.fin_seen),
                "rst": bool(D.rst_seen), "close": CLOSE_NAMES.get(D.close_reason),
                "first_ts": D.first_ts, "last_ts": D.last_ts,
            })
        return out

    def totals(self):
        """Sums over the finished connections."""
        return {"tcp": self.t_conns[0], "udp": self.t_conns[1], "packets": self.t_packets,
                "bytes": self.t_delivered, "gaps": self.t_gaps, "gap_bytes": self.t_gap_bytes,
                "conflicts": self.t_conflicts, "retransmissions": self.t_retrans, "unverified_bytes": self.t_unverified,
                "midstream_directions": self.t_midstream,
                "close": {name: self.t_close[k] for k, name in CLOSE_NAMES.items() if self.t_close[k]}}

    def counters(self):
        return {"segments": self.segments, "open_connections": self.open_connections, "peak_open": self.peak_open,
                "held_bytes": self.held_total, "memcap_gaps": self.memcap_gaps, "evictions": self.evictions,
                "timeouts": self.timeouts_fired, "late_packets": self.late_packets,
                "clock_outliers": self.clock_outliers,
                "ignored_flags": self.ignored_flags, "rst_out_of_window": self.rst_out_of_window,
                "stray_acks": self.stray_acks, "fin_out_of_window": self.fin_out_of_window,
                "syn_conflicts": self.syn_conflicts, "no_ack_segments": self.no_ack_segments,
                "after_fin_bytes": self.after_fin_bytes,
                "before_synack_bytes": self.before_synack_bytes, "fin_conflicts": self.fin_conflicts, "keepalives": self.keepalives,
                "zero_window_probes": self.zero_window_probes, "beyond_limit_bytes": self.beyond_limit_bytes, "lingers_cut": self.lingers_cut, "released_connections": self.released_connections}

    # --- connections ----------------------------------------------------------------------

    cdef int _grow(self, uint32_t need) except -1:
        # the chunk of connection `need` exists (a fresh chunk reads as unused connections)
        cdef uint32_t k = need >> CONN_CHUNK_SHIFT
        if reach_chunk(<void**>&self.chunks, &self.released, &self.cap_chunks, k):
            raise MemoryError("reassembly connection table")
        if self.chunks[k] == NULL:
            if self.released[k] == CONN_CHUNK:
                raise AssertionError(f"connection {need} reopened after its chunk was freed")
            self.chunks[k] = <conn_t*> calloc(CONN_CHUNK, sizeof(conn_t))
            if self.chunks[k] == NULL:
                raise MemoryError("reassembly connection table")
        return 0

    cdef int _state(self, uint32_t i) noexcept nogil:
        # CS_*: a connection in a freed chunk ended (every one of the chunk did)
        cdef uint32_t k = i >> CONN_CHUNK_SHIFT
        if k >= self.cap_chunks:
            return CS_UNUSED
        if self.chunks[k] == NULL:
            return CS_DONE if self.released[k] == CONN_CHUNK else CS_UNUSED
        return self.chunks[k][i & (CONN_CHUNK - 1)].state

    cdef bint _released(self, uint32_t i) noexcept nogil:
        # ended, and its record freed (alone, or with its whole chunk)
        cdef uint32_t k = i >> CONN_CHUNK_SHIFT
        if k >= self.cap_chunks:
            return False
        if self.chunks[k] == NULL:
            return self.released[k] == CONN_CHUNK
        return self.chunks[k][i & (CONN_CHUNK - 1)].lru == LRU_RELEASED

    cdef int _release(self, uint32_t i, int64_t ended) except -1:
        # an ended connection nobody will read again: its record goes (its state stays
        # CS_DONE while its chunk lives); its flow lingers in the table for late packets,
        # from `ended` on, then goes too (_forget_ended)
        cdef uint32_t k = i >> CONN_CHUNK_SHIFT, at, j
        cdef conn_t* c = conn_at(self, i)
        cdef uint32_t* p
        c.lru = LRU_RELEASED
        self.released_connections += 1
        self.released[k] += 1
        if self.released[k] == CONN_CHUNK:
            free(self.chunks[k])
            self.chunks[k] = NULL
        if not self.flows._known(i):
            return 0                        # (never: a flow goes only through here)
        if not flow_at(self.flows, i).in_table:
            self.flows._release(i)          # already out of the table (timeout, eviction, a reused tuple)
            return 0
        if self.ended_len == self.ended_cap:
            p = <uint32_t*> malloc((self.ended_cap * 2 if self.ended_cap else 1024) * sizeof(uint32_t))
            if p == NULL:
                raise MemoryError("reassembly connection table")
            for j in range(self.ended_len):
                p[j] = self.ended[(self.ended_head + j) % self.ended_cap]
            free(self.ended)
            self.ended = p
            self.ended_head = 0
            self.ended_cap = self.ended_cap * 2 if self.ended_cap else 1024
        flow_at(self.flows, i).ended_ts = ended
        # the FIFO stays in order of end: only a flow handed over from another engine
        # (import_flow) may have ended before the latest here
        at = self.ended_len
        while at and flow_at(self.flows, self.ended[(self.ended_head + at - 1) % self.ended_cap]).ended_ts > ended:
            self.ended[(self.ended_head + at) % self.ended_cap] = self.ended[(self.ended_head + at - 1) % self.ended_cap]
            at -= 1
        self.ended[(self.ended_head + at) % self.ended_cap] = i
        self.ended_len += 1
        return 0

    cdef int _forget_ended(self) except -1:
        # flows of connections that ended more than the linger ago leave the table: a packet of
        # theirs now starts a new connection. max_connections bounds the lingering ones too
        # (a flood of short connections must not grow the table at its rate times the linger):
        # past it, the earliest ended stop lingering at once (counted)
        cdef uint32_t i
        while self.ended_len:
            i = self.ended[self.ended_head]
            if flow_at(self.flows, i).ended_ts + self.linger > self.now:
                if self.ended_len <= self.max_connections:
                    break
                self.lingers_cut += 1
            self.flows._remove(i)
            self.flows._release(i)
            self.ended_head = (self.ended_head + 1) % self.ended_cap
            self.ended_len -= 1
        return 0

    cdef void _lru_unlink(self, uint32_t i) noexcept nogil:
        cdef conn_t* c = conn_at(self, i)
        if c.lru == LRU_NONE:
            return
        if c.lru_prev >= 0:
            conn_at(self, c.lru_prev).lru_next = c.lru_next
        else:
            self.lru_head[c.lru] = c.lru_next
        if c.lru_next >= 0:
            conn_at(self, c.lru_next).lru_prev = c.lru_prev
        else:
            self.lru_tail[c.lru] = c.lru_prev
        c.lru = LRU_NONE

    cdef void _lru_push(self, uint32_t i, int cls) noexcept nogil:
        cdef conn_t* c = conn_at(self, i)
        if c.lru == cls and self.lru_tail[cls] == <int32_t>i:
            return          # already the most recent of its class: the common case in a burst
        self._lru_unlink(i)
        c.lru = cls
        c.lru_next = -1
        c.lru_prev = self.lru_tail[cls]
        if self.lru_tail[cls] >= 0:
            conn_at(self, self.lru_tail[cls]).lru_next = <int32_t>i
        else:
            self.lru_head[cls] = <int32_t>i
        self.lru_tail[cls] = <int32_t>i

    cdef void _lru_insert(self, uint32_t i, int cls) noexcept nogil:
        # after the last connection of the class idle no later than this one: the list stays
        # in idle order, so expiry from its head stays right for a connection taken over
        cdef conn_t* c = conn_at(self, i)
        cdef int32_t t = self.lru_tail[cls]
        while t >= 0 and conn_at(self, t).idle_ts > c.idle_ts:
            t = conn_at(self, t).lru_prev
        c.lru = cls
        c.lru_prev = t
        if t >= 0:
            c.lru_next = conn_at(self, t).lru_next
            conn_at(self, t).lru_next = <int32_t>i
        else:
            c.lru_next = self.lru_head[cls]
            self.lru_head[cls] = <int32_t>i
        if c.lru_next >= 0:
            conn_at(self, c.lru_next).lru_prev = <int32_t>i
        else:
            self.lru_tail[cls] = <int32_t>i

    # --- re-sharding: a connection handed from one engine to another ---------------------------

    def export_flow(self, uint32_t i):
        """Flow i's whole state, for another engine to take up (`import_flow`): its flow-table
        entry and, when it has one, its connection with the held bytes and the ring of
        delivered bytes. Here the flow leaves the table; an open connection is dropped without
        ending (no gap, no close: it goes on elsewhere), a finished one stays as it was."""
        cdef flow_t* f
        cdef conn_t c
        cdef dir_t* D
        cdef int d
        cdef int32_t k
        if not self.flows._known(i):
            raise KeyError(i)
        f = flow_at(self.flows, i)
        out = {"flow": (<char*>f)[:sizeof(flow_t)]}
        if self._released(i):
            out["done"] = True          # ended, its record released: late packets stay late there too
        elif self._state(i) != CS_UNUSED:
            for d in range(2):
                self._refs_to_ring(&conn_at(self, i).d[d])    # the other engine may read another capture
            c = conn_at(self, i)[0]
            dirs = []
            for d in range(2):
                D = &conn_at(self, i).d[d]
                chunks = []
                for k in range(D.n_chunks):
                    chunks.append((D.chunks[k].start, D.chunks[k].end, D.chunks[k].own_start, D.chunks[k].own_end,
                                   None if D.chunks[k].data == NULL else
                                   (<char*>D.chunks[k].data)[:D.chunks[k].end - D.chunks[k].start]))
                dirs.append((chunks, (<char*>D.ring)[:D.ring_cap] if D.ring != NULL else None))
                c.d[d].chunks = NULL
                c.d[d].chunk_mem = NULL
                c.d[d].n_chunks = 0
                c.d[d].cap_chunks = 0
                c.d[d].ring = NULL
                c.d[d].refs = NULL
            c.lru_prev = -1
            c.lru_next = -1
            out["conn"] = (<char*>&c)[:sizeof(conn_t)]
            out["dirs"] = dirs
            out["open"] = c.state == CS_OPEN
            if c.state == CS_OPEN:
                self._lru_unlink(i)
                for d in range(2):
                    self._free_dir(&conn_at(self, i).d[d])
                self.open_connections -= 1
                # a stray packet of it here would be late, not a new connection
                conn_at(self, i).state = CS_DONE
        self.flows._remove(i)
        return out

    def import_flow(self, dict rec):
        """Take up a flow `export_flow` gave; returns its id here."""
        cdef bytes fb = rec["flow"], cb, data
        cdef flow_t fl
        cdef conn_t* c
        cdef dir_t* D
        cdef int d, cls
        cdef int32_t k, n
        cdef int j
        memcpy(&fl, <const char*>fb, sizeof(flow_t))
        j = self.flows._adopt(&fl)
        if j == -2:
            raise ValueError("flow handed over is already in this table")
        if j < 0:
            raise MemoryError("flow table")
        if rec.get("done"):
            self._grow(<uint32_t>j)
            c = conn_at(self, j)
            c.state = CS_DONE
            self._release(<uint32_t>j, fl.ended_ts)     # its linger runs on from when it ended there
            return j
        if "conn" not in rec:
            return j
        self._grow(<uint32_t>j)
        cb = rec["conn"]
        c = conn_at(self, j)
        memcpy(c, <const char*>cb, sizeof(conn_t))
        cls = c.lru
        c.lru = LRU_NONE
        c.lru_prev = -1
        c.lru_next = -1
        for d in range(2):
            D = &c.d[d]
            chunks, ring = rec["dirs"][d]
            n = len(chunks)
            if n:
                D.chunk_mem = <chunk_t*> calloc(n if n > 8 else 8, sizeof(chunk_t))
                if D.chunk_mem == NULL:
                    raise MemoryError()
                D.chunks = D.chunk_mem
                D.cap_chunks = n if n > 8 else 8
                for k in range(n):
                    s, e, os_, oe, payload = chunks[k]
                    D.chunks[k].start, D.chunks[k].end, D.chunks[k].own_start, D.chunks[k].own_end = s, e, os_, oe
                    D.chunks[k].data = NULL
                    if payload is not None:
                        data = payload
                        D.chunks[k].data = <uint8_t*> malloc(len(data) if len(data) else 1)
                        if D.chunks[k].data == NULL:
                            raise MemoryError()
                        memcpy(D.chunks[k].data, <const char*>data, len(data))
                    self.held_total += chunk_cost(&D.chunks[k])
                    D.n_chunks = k + 1
            if ring is not None:
                data = ring
                D.ring = <uint8_t*> malloc(len(data))
                if D.ring == NULL:
                    raise MemoryError()
                memcpy(D.ring, <const char*>data, len(data))
        if c.state == CS_OPEN:
            self.open_connections += 1
            if self.open_connections > self.peak_open:
                self.peak_open = self.open_connections
            if cls != LRU_NONE:
                self._lru_insert(<uint32_t>j, cls)
        return j

    cdef int _open(self, uint32_t i, pkt_t* p) except -1:
        cdef conn_t* c = conn_at(self, i)
        cdef flow_t* f = flow_at(self.flows, i)
        memset(c, 0, sizeof(conn_t))
        c.state = CS_OPEN
        c.proto = p.proto
        c.ipver = p.ipver
        c.lru = LRU_NONE
        c.lru_prev = -1
        c.lru_next = -1
        c.first_ts = p.ts_ns
        c.d[0].wscale = -1
        c.d[1].wscale = -1
        c.vlan[0] = f.vlan[0]
        c.vlan[1] = f.vlan[1]
        if f.client_is_a:
            memcpy(c.client, f.a, 16)
            memcpy(c.server, f.b, 16)
            c.cport, c.sport = f.pa, f.pb
        else:
            memcpy(c.client, f.b, 16)
            memcpy(c.server, f.a, 16)
            c.cport, c.sport = f.pb, f.pa
        self.open_connections += 1
        if f.prev != 0xFFFFFFFF and self._state(f.prev) == CS_OPEN:
            # the 5-tuple was reused: the earlier connection is over
            self._finish(f.prev, CLOSE_REUSED)
            c = conn_at(self, i)
        self.sink.on_open(i, self)
        if self.open_connections > self.max_connections:
            self._evict_idlest(i)
        # (after the eviction: the bound holds at every packet's end)
        if self.open_connections > self.peak_open:
            self.peak_open = self.open_connections
        return 0

    cdef bint _any_fin(self, uint32_t i) noexcept nogil:
        return conn_at(self, i).d[0].fin_seen or conn_at(self, i).d[1].fin_seen

    cdef int _evict_idlest(self, uint32_t keep) except -1:
        # the table is full: the idlest connection of the first state that has one, in the order
        # of what losing it costs: ended ones waiting for late packets, then half-open ones (a
        # SYN flood fills the table with them: it must not push out established connections),
        # UDP flows, and established connections last
        cdef int k, cls
        cdef int32_t h
        for k in range(N_LRU):
            cls = EVICT_ORDER[k]
            h = self.lru_head[cls]
            if h >= 0 and <uint32_t>h == keep:
                h = conn_at(self, h).lru_next      # (not the connection being opened)
            if h >= 0:
                self.evictions += 1
                self._finish(<uint32_t>h, CLOSE_EVICTED)
                return 0
        return 0

    cdef int _expire(self) except -1:
        cdef int cls
        cdef int32_t h
        if self.ended_len:
            self._forget_ended()
        for cls in range(N_LRU):
            while True:
                h = self.lru_head[cls]
                if h < 0 or conn_at(self, h).idle_ts + self.timeouts[cls] > self.now:
                    break
                if (cls == LRU_LAST_ACK or cls == LRU_CLOSING) and self._fins_done(<uint32_t>h):
                    self._finish(<uint32_t>h, CLOSE_FIN)    # closed by FINs; the last ACK never came
                else:
                    self.timeouts_fired += 1
                    self._finish(<uint32_t>h, CLOSE_TIMEOUT)
        return 0

    cdef int _finish(self, uint32_t i, int reason) except -1:
        cdef conn_t* c = conn_at(self, i)
        cdef int d
        cdef dir_t* D
        if c.state != CS_OPEN:
            return 0
        self._lru_unlink(i)
        if c.refused:
            c.rst = 1               # refused: a RST answered the SYN, and nothing contradicted it
        for d in range(2):
            D = &c.d[d]
            if not D.anchored:
                D.close_reason = CLOSE_RST if c.rst else reason
                self._unseen_gap(i, d)
                continue
            if not D.settled:
                self._settle(i, d)
            self._flush_all(i, d, GAP_CLOSED)
            self._trailing_gap(i, d)
            D.done = 1
            D.close_reason = CLOSE_FIN if D.fin_seen else (CLOSE_RST if c.rst else reason)
            self._free_dir(D)
        c.state = CS_DONE
        self.open_connections -= 1
        self.t_conns[0 if c.proto == 6 else 1] += 1
        # how it ended, from how each direction ended (the index's close), by the rule on_close
        # uses: a direction reset, else both closed by FIN, else what ended it. (A RST after both
        # FINs ends nothing more: each direction had ended by its FIN.)
        if c.d[0].close_reason == CLOSE_RST or c.d[1].close_reason == CLOSE_RST:
            c.close_reason = CLOSE_RST
        elif c.d[0].close_reason == CLOSE_FIN and c.d[1].close_reason == CLOSE_FIN:
            c.close_reason = CLOSE_FIN
        else:
            c.close_reason = reason
        self.t_close[c.close_reason] += 1
        for d in range(2):
            D = &c.d[d]
            self.t_packets += D.packets
            self.t_delivered += D.delivered
            self.t_gaps += D.n_gaps
            self.t_gap_bytes += D.gap_bytes
            self.t_conflicts += D.conflict_bytes
            self.t_retrans += D.retransmissions
            self.t_unverified += D.unverified_bytes
            self.t_midstream += D.midstream
        if (reason == CLOSE_TIMEOUT or reason == CLOSE_EVICTED) and not c.rst and not self._any_fin(i):
            # a later packet on this 5-tuple starts a new connection; one that saw FIN or RST
            # lingers like the others (late packets of it are late, not a new connection)
            self.flows._remove(i)
        self.sink.on_close(i, self)
        self._release(i, self.now)
        return 0

    cdef void _free_dir(self, dir_t* D) noexcept nogil:
        cdef int32_t k
        for k in range(D.n_chunks):
            self.held_total -= chunk_cost(&D.chunks[k])
            free(D.chunks[k].data)
        free(D.chunk_mem)
        D.chunks = NULL
        D.chunk_mem = NULL
        D.n_chunks = 0
        D.cap_chunks = 0
        D.held_bytes = 0
        free(D.ring)
        D.ring = NULL
        D.ring_cap = 0
        D.ring_len = 0
        free(D.refs)
        D.refs = NULL
        D.n_refs = 0
        D.ref_head = 0
        D.ref_bytes = 0

    # --- per packet ------------------------------------------------------------------------

    cdef int _ignored(self, uint32_t i, pkt_t* p, int cls) except -1:
        # a packet reassembly applies nothing of: recorded as such, the connection waits on
        p.rflags = RF_IGNORED
        p.stream_off = 0
        self.sink.on_packet(i, p)
        self._lru_push(i, cls)
        return 0

    cdef int _ignored_here(self, uint32_t i, pkt_t* p) except -1:
        # ignored, the connection waiting where it waits (a new one: as embryonic)
        cdef int cls = conn_at(self, i).lru
        return self._ignored(i, p, cls if cls < N_LRU else LRU_EMBRYONIC)

    cdef int _packet(self, pkt_t* p) except -1:
        cdef uint32_t i = p.flow_id
        cdef conn_t* c
        cdef dir_t* D
        cdef dir_t* P
        cdef int d = p.dir
        cdef uint32_t seq
        cdef int64_t o, ack_off, keep
        cdef uint32_t n, wire
        cdef uint8_t fl
        cdef bint has_payload
        cdef uint32_t k = i >> CONN_CHUNK_SHIFT
        # (the state, read straight from the chunk in the common case: an open connection)
        cdef int st = self.chunks[k][i & (CONN_CHUNK - 1)].state \
            if k < self.cap_chunks and self.chunks[k] != NULL else self._state(i)
        if st == CS_UNUSED:
            self._grow(i)
            self._open(i, p)
        elif st == CS_DONE:
            self.late_packets += 1
            p.rflags = RF_LATE
            return 0
        c = conn_at(self, i)
        self.cur_rflags = 0
        self.cur_stable = (p.flags & PF_STABLE) != 0
        self.segments += 1
        c.last_ts = p.ts_ns
        # the clock, not the packet's own time: a timestamp behind the clock (another
        # interface's time base) or a lone one far ahead must neither expire nor pin the LRU
        c.idle_ts = self.now
        D = &c.d[d]
        P = &c.d[1 - d]
        D.packets += 1
        # the direction's time span: earliest and latest, not file order (interfaces with their
        # own clocks, a broken timestamp), as `stats` gives a capture's
        if D.packets == 1 or p.ts_ns < D.first_ts:
            D.first_ts = p.ts_ns
        if D.packets == 1 or p.ts_ns > D.last_ts:
            D.last_ts = p.ts_ns
        if c.proto == 17:
            D.payload_bytes += p.payload_len
            D.delivered += p.payload_len
            self.sink.on_datagram(i, d, p.ts_ns, p.data + p.payload_off, p.payload_len)
            p.rflags = 0
            if p.payload_len < p.payload_wirelen:
                self._udp_cut(i, d, p)
            self.sink.on_packet(i, p)
            self._lru_push(i, LRU_UDP)
            return 0

        fl = p.tcp_flags
        seq = p.seq
        has_payload = p.payload_wirelen > 0
        if not (fl & (TH_SYN | TH_ACK | TH_RST)):
            # RFC 9293 3.10.7.4: a segment without ACK is dropped by every receiver, whatever its
            # state (only a SYN or RST may lack it): its bytes or FIN would be an insertion
            self.no_ack_segments += 1
            return self._ignored_here(i, p)
        if fl & TH_SYN:
            if not D.syn_seen:
                D.syn_seen = 1
                if p.opts & OPT_WSCALE:
                    D.wscale = p.wscale if p.wscale < 14 else 14
                if not D.anchored:
                    self._anchor(D, seq + 1)
                    D.settled = 1
                    D.origin = D.anchor_off
                    D.next = D.origin
                elif not D.settled:
                    # the SYN came after data (a reordered capture, or data sent too soon): the
                    # stream starts after it
                    D.midstream = 0
                    if D.early and not D.fin_seen and not D.rst_seen:
                        # that data came while the peer was in SYN-SENT, which takes nothing but
                        # a SYN-ACK (RFC 9293 3.10.7.3): it never reached the peer
                        self.before_synack_bytes += self._drop_held(D)
                    D.early = 0
                    self._settle_at(i, d, self._off(D, seq + 1))
            elif self._off(D, seq + 1) != D.origin:
                if ((fl & TH_ACK) and P.syn_again and D.settled and D.next == D.origin and D.n_chunks == 0
                        and D.gap_bytes == 0 and not D.fin_seen and not D.rst_seen and P.anchored
                        and self._off(P, p.ack) == P.origin):
                    # a SYN-ACK with another ISN, answering the client's SYN sent again, while this
                    # side has sent no byte: it lost the state of its first answer; the latest counts
                    self._anchor(D, seq + 1)
                    D.settled = 1
                    D.has_ack = 0
                    P.syn_again = 0
                else:
                    # another ISN that answers nothing new: a forged or stale SYN (RFC 9293
                    # 3.10.7.4: a synchronized side answers it with a challenge ACK and drops it).
                    # Before this side sent a byte, the client's ACK still tells which SYN-ACK it
                    # took (the first one may be the forged one): this ISN is kept till then
                    if (fl & TH_ACK) and D.next == D.origin and D.n_chunks == 0 and D.gap_bytes == 0:
                        D.has_alt = 1
                        D.alt_seq = seq + 1
                    self.syn_conflicts += 1
                    return self._ignored_here(i, p)
            elif not (fl & TH_ACK) and P.syn_seen:
                D.syn_again = 1        # the client's SYN again, its answer lost: a new one may come
            if (fl & TH_ACK) and c.refused:
                # it answered the SYN after all: the RSTs that refused it were not real
                self.ignored_flags += c.refused
                c.refused = 0
            seq += 1
        elif not D.anchored:
            if ((fl & (TH_ACK | TH_FIN | TH_RST)) == TH_ACK and not has_payload and P.syn_seen and not P.fin_seen
                    and P.next == P.origin and P.n_chunks == 0 and self._off(P, p.ack) != P.origin):
                # the answer to a SYN is an ACK for something the SYN's side never sent: an ACK
                # for an older connection on the tuple (RFC 5961's challenge ACK). Its sequence
                # number is that connection's: it must not fix where this side's stream starts
                self.stray_acks += 1
                return self._ignored_here(i, p)
            if (fl & (TH_FIN | TH_RST)) and not has_payload and P.syn_seen and not P.fin_seen and P.next == P.origin:
                # a FIN/RST from a side that never answered the peer's SYN says nothing about its
                # stream (an evasion trick): do not let it fix the start or close anything. But
                # a RST that acknowledges the SYN (ISN + 1) answers it (RFC 9293 3.10.7.3): the
                # connection was refused, unless that side answers the SYN after all (the
                # evasion captures send such a RST before their SYN-ACK)
                if (fl & (TH_RST | TH_ACK)) == (TH_RST | TH_ACK) and self._off(P, p.ack) == P.origin:
                    if c.refused < 255:
                        c.refused += 1      # (counted as ignored if a SYN-ACK comes after all)
                else:
                    self.ignored_flags += 1
                return self._ignored(i, p, LRU_CLOSING if c.refused else LRU_EMBRYONIC)
            self._anchor(D, seq)
            D.midstream = 1
            # the peer sent its SYN and has acknowledged nothing: it may still be in SYN-SENT.
            # What comes now is held as a midstream start would be, but dropped if this side's
            # SYN(-ACK) comes before the peer's first ACK (a capture that missed it keeps it)
            D.early = P.syn_seen and not D.unseen_acks
        elif ((fl & TH_RST) and not has_payload and D.syn_seen and not P.syn_seen and not D.fin_seen
              and D.next == D.origin and D.n_chunks == 0 and self._off(D, seq) != D.origin):
            # a side still waiting for the answer to its SYN resets a stray ACK (one for an older
            # connection on the tuple) with that ACK's number, and its handshake goes on (RFC 793,
            # SYN-SENT): a RST not at ISN + 1 there says nothing about this connection
            self.ignored_flags += 1
            return self._ignored_here(i, p)

        o = self._off(D, seq)
        if (fl & TH_RST) and D.settled and not self._rst_in_window(D, P, o):
            # RFC 9293 3.10.7.4 / RFC 5961: a RST outside the receive window is not acceptable
            # (a blind injection, or one for an older connection): nothing of it is applied
            self.rst_out_of_window += 1
            return self._ignored_here(i, p)
        if (fl & TH_FIN) and D.settled and not D.fin_seen and o + p.payload_wirelen < D.next:
            # a FIN below what this side delivered is not acceptable to its peer (RFC 9293
            # 3.10.7.4): it must not end the stream. (Not bounded above: a FIN far ahead cuts
            # nothing off, and thinned captures put real ones beyond any window seen)
            self.fin_out_of_window += 1
            return self._ignored_here(i, p)
        if (p.payload_wirelen == 1 and P.zero_win and not (fl & (TH_SYN | TH_FIN | TH_RST)) and D.settled
                and not D.fin_seen and o == D.next and D.n_chunks == 0 and D.has_ack and D.acked == D.next
                and P.n_chunks == 0 and self._off(P, p.ack) == P.next):
            # a zero-window probe (RFC 9293 3.8.6.1): one byte at the next sequence number, all
            # acknowledged both ways, while the receiver's latest window is 0. The receiver drops
            # it (no room), and the byte comes again, maybe another, once the window opens
            self.zero_window_probes += 1
            return self._ignored_here(i, p)
        if not (fl & TH_RST):
            D.zero_win = p.window == 0      # (0 is 0 whatever the scale; a SYN's is never scaled)
        if not (fl & TH_SYN) and p.window > D.max_win:
            D.max_win = p.window
        p.stream_off = o
        if has_payload or (fl & (TH_SYN | TH_FIN)):
            # only a segment that occupies sequence space moves the anchor: a bare ACK's
            # sequence number is not checked by any receiver, so it may be anything
            self._follow(D, o)
        if has_payload:
            D.payload_bytes += p.payload_len
            if D.first_data_ts == 0:
                D.first_data_ts = p.ts_ns
            n = p.payload_len
            wire = p.payload_wirelen
            if D.fin_seen and o + wire > D.fin_off:
                # the stream ended at its FIN: bytes beyond it are counted, never delivered
                keep = D.fin_off - o if D.fin_off > o else 0
                self.after_fin_bytes += <uint64_t>(wire - keep)
                wire = <uint32_t>keep
                if n > wire:
                    n = wire
            if o + wire > D.origin + MAX_STREAM:
                keep = D.origin + MAX_STREAM - o if D.origin + MAX_STREAM > o else 0
                self.beyond_limit_bytes += <uint64_t>(wire - keep)
                wire = <uint32_t>keep
                if n > wire:
                    n = wire
            # a keep-alive probe (RFC 9293 3.8.4): one byte, often garbage, just below the next
            # expected with nothing outstanding. Its byte is still compared (a differing one is a
            # conflict, as the segment view counts it), but it is named, not a retransmission
            if (wire == 1 and not (fl & (TH_SYN | TH_FIN | TH_RST)) and D.settled and D.n_chunks == 0
                    and o == D.next - 1 and D.next > D.origin):
                self.keepalives += 1
                self.cur_rflags |= RF_KEEPALIVE       # (_insert counts no retransmission for it)
            if wire:
                self._insert(i, d, o, p.data + p.payload_off, n, wire)
                c = conn_at(self, i)
                D = &c.d[d]
                P = &c.d[1 - d]
        if fl & TH_FIN:
            if not D.fin_seen:
                D.fin_seen = 1
                D.fin_off = o + p.payload_wirelen
                if D.n_chunks and D.chunks[D.n_chunks - 1].end > D.fin_off:
                    self._drop_beyond(D, D.fin_off)
            elif o + p.payload_wirelen != D.fin_off:
                self.fin_conflicts += 1         # the first FIN stands
        if fl & TH_RST:
            D.rst_seen = 1
            c.rst = 1
        if (fl & TH_ACK) and P.has_alt:
            if p.ack == P.alt_seq and P.next == P.origin and P.n_chunks == 0 and P.gap_bytes == 0 and not P.fin_seen:
                # the client took the other SYN-ACK: the peer's stream starts after its ISN
                self._anchor(P, P.alt_seq)
                P.settled = 1
                P.has_ack = 0
            P.has_alt = 0
        if (fl & TH_ACK) and P.anchored:
            P.early = 0                         # (this side left SYN-SENT)
            ack_off = self._off(P, p.ack)
            if (not P.has_ack or ack_off > P.acked) and not (
                    # a peer that sent only its SYN can be acknowledged at its ISN + 1 alone: an ACK
                    # for anything else, before any SYN of this side, is a stray one (for an older
                    # connection on the tuple), and its number means nothing here
                    P.syn_seen and not D.syn_seen and P.next == P.origin and P.n_chunks == 0
                    and ack_off != P.origin):
                P.acked = ack_off
                P.has_ack = 1
            if P.n_chunks:
                self._on_ack(i, 1 - d)
        elif (fl & TH_ACK) and not (fl & TH_RST):
            _unseen_ack(P, p.ack)
        if (not D.settled and not D.early and D.n_chunks
                and (D.held_bytes >= SETTLE_BYTES or p.ts_ns - D.first_data_ts >= SETTLE_NS)):
            self._settle(i, d)
        if cut_waits(&c.d[0]) or cut_waits(&c.d[1]):
            self._cuts_due(i)
            c = conn_at(self, i)
        if c.d[0].hole_acked_ts or c.d[1].hole_acked_ts:
            self._acked_holes(i)
        c = conn_at(self, i)
        p.rflags = self.cur_rflags
        self.sink.on_packet(i, p)
        c = conn_at(self, i)
        if c.state != CS_OPEN:
            return 0
        # where the connection now waits for its timeout
        if c.rst or (c.d[0].fin_seen and c.d[1].fin_seen):
            if self._fins_done(i) and c.d[0].acked > c.d[0].fin_off and c.d[1].acked > c.d[1].fin_off:
                # both FINs, nothing missing, and both acknowledged: the last ACK was this
                # connection's last packet
                self._finish(i, CLOSE_FIN)
            elif self._fins_done(i):
                self._lru_push(i, LRU_LAST_ACK)     # a FIN not yet acknowledged
            else:
                # a RST, or holes left: late retransmissions still belong
                self._lru_push(i, LRU_CLOSING)
        elif (c.d[0].next > c.d[0].origin or c.d[1].next > c.d[1].origin or c.d[0].n_chunks or c.d[1].n_chunks or
              (c.d[0].packets and c.d[1].packets and c.d[0].syn_seen and c.d[1].syn_seen)):
            # bytes carried (delivered or held): established, even when only one side is captured
            # (asymmetric routing, a one-sided tap), whose pauses between messages are not a
            # handshake's
            self._lru_push(i, LRU_ESTABLISHED)
        else:
            self._lru_push(i, LRU_EMBRYONIC)
        return 0

    cdef bint _complete(self, dir_t* D) noexcept nogil:
        return D.settled and D.n_chunks == 0 and (not D.fin_seen or D.next >= D.fin_off)

    cdef bint _fins_done(self, uint32_t i) noexcept nogil:
        # both sides sent their FIN and nothing before either is missing: closed by FIN
        cdef conn_t* c = conn_at(self, i)
        return (not c.rst and c.d[0].fin_seen and c.d[1].fin_seen and self._complete(&c.d[0])
                and self._complete(&c.d[1]))

    cdef bint _rst_in_window(self, dir_t* D, dir_t* P, int64_t o) noexcept nogil:
        # is a RST from D at offset o acceptable to its receiver P? (RFC 9293 3.10.7.4): from
        # the next byte expected (what D delivered, or P acknowledged if less) less RST_SLACK,
        # to the furthest D is known to have sent plus the largest window P advertised
        cdef int64_t lo = D.next, hi = D.next, win
        if D.has_ack and D.acked < lo:
            lo = D.acked
        if D.has_ack and D.acked > hi:
            hi = D.acked
        if D.n_chunks and D.chunks[D.n_chunks - 1].end > hi:
            hi = D.chunks[D.n_chunks - 1].end
        if D.fin_seen and D.fin_off + 1 > hi:
            hi = D.fin_off + 1
        win = <int64_t>P.max_win << (P.wscale if P.wscale >= 0 and D.wscale >= 0 else 0)
        if win < MIN_RST_WINDOW:
            win = MIN_RST_WINDOW
        return lo - RST_SLACK <= o <= hi + win

    cdef int _drop_beyond(self, dir_t* D, int64_t end) except -1:
        # held bytes past the FIN's sequence number go: counted (after_fin_bytes), never delivered
        cdef chunk_t* ch
        cdef uint64_t cost
        while D.n_chunks and D.chunks[D.n_chunks - 1].end > end:
            ch = &D.chunks[D.n_chunks - 1]
            cost = chunk_cost(ch)
            D.held_bytes -= cost
            self.held_total -= cost
            if ch.start >= end:
                self.after_fin_bytes += <uint64_t>(ch.end - ch.start)
                free(ch.data)
                D.n_chunks -= 1
            else:
                self.after_fin_bytes += <uint64_t>(ch.end - end)
                ch.end = end
                cost = chunk_cost(ch)
                D.held_bytes += cost
                self.held_total += cost
                break
        return 0

    cdef uint64_t _drop_held(self, dir_t* D) noexcept nogil:
        # every held chunk goes, never delivered: returns the sequence space they held
        cdef uint64_t n = 0
        cdef int32_t k
        for k in range(D.n_chunks):
            n += <uint64_t>(D.chunks[k].end - D.chunks[k].start)
            self.held_total -= chunk_cost(&D.chunks[k])
            free(D.chunks[k].data)
        D.n_chunks = 0
        D.held_bytes = 0
        if D.chunk_mem != NULL:
            D.chunks = D.chunk_mem + D.cap_chunks // 2
        return n

    cdef void _anchor(self, dir_t* D, uint32_t seq) noexcept nogil:
        D.anchored = 1
        D.anchor_seq = seq
        D.anchor_off = 0
        D.origin = 0
        D.next = 0

    cdef int64_t _off(self, dir_t* D, uint32_t seq) noexcept nogil:
        # unwrap against the anchor, which follows the stream so differences stay < 2^31
        return D.anchor_off + <int32_t>(seq - D.anchor_seq)

    cdef void _follow(self, dir_t* D, int64_t off) noexcept nogil:
        # a segment moves the anchor, but not more than MAX_ANCHOR_STEP beyond the furthest
        # byte its direction delivered or holds (so one far-off segment is a hole of its own)
        cdef int64_t hi
        if off > D.anchor_off:
            hi = D.next
            if D.n_chunks and D.chunks[D.n_chunks - 1].end > hi:
                hi = D.chunks[D.n_chunks - 1].end
            if off - hi <= MAX_ANCHOR_STEP:
                self._move_anchor(D, off)

    cdef void _move_anchor(self, dir_t* D, int64_t off) noexcept nogil:
        # the anchor follows the highest offset seen, so a later sequence number is read as
        # within +-2^31 of the latest one (thinned captures jump far between segments)
        if off > D.anchor_off:
            D.anchor_seq = <uint32_t>(D.anchor_seq + <uint32_t>(off - D.anchor_off))
            D.anchor_off = off

    cdef int _settle(self, uint32_t i, int d) except -1:
        cdef dir_t* D = &conn_at(self, i).d[d]
        cdef int64_t start = D.chunks[0].start if D.n_chunks else D.next
        return self._settle_at(i, d, start)

    cdef int _settle_at(self, uint32_t i, int d, int64_t start) except -1:
        cdef dir_t* D = &conn_at(self, i).d[d]
        D.settled = 1
        D.origin = start
        D.next = start
        self._flush(i, d)
        return 0

    cdef int _on_ack(self, uint32_t i, int d) except -1:
        # the peer acknowledged direction d up to D.acked
        cdef dir_t* D = &conn_at(self, i).d[d]
        if not D.settled:
            if D.n_chunks and D.acked > D.chunks[0].start:
                self._settle(i, d)
            return 0
        if D.n_chunks and D.acked > D.next and D.hole_acked_ts == 0:
            # the receiver has bytes the capture missed, and data waits beyond: a gap soon
            D.hole_acked_ts = self.now if self.now else 1
        return 0

    cdef int _acked_holes(self, uint32_t i) except -1:
        # give up holes acknowledged more than ACK_GRACE_NS ago
        cdef int d
        cdef dir_t* D
        for d in range(2):
            D = &conn_at(self, i).d[d]
            if D.hole_acked_ts and self.now - D.hole_acked_ts >= ACK_GRACE_NS:
                D.hole_acked_ts = 0
                if D.settled and D.n_chunks and D.acked > D.next:
                    self._gap_to(i, d, D.acked if D.acked < D.chunks[0].start else D.chunks[0].start, GAP_ACKED)
                    self._flush(i, d)
        return 0

    cdef int _cuts_due(self, uint32_t i) except -1:
        # give up bytes the capture cut that no full copy replaced within CUT_GRACE_NS
        cdef int d
        cdef dir_t* D
        for d in range(2):
            D = &conn_at(self, i).d[d]
            while cut_waits(D) and self.now - cut_ts(&D.chunks[0]) >= CUT_GRACE_NS:
                self._gap_to(i, d, _cut_end(D, self.now - CUT_GRACE_NS), GAP_SNAPLEN)
                self._flush(i, d)
                D = &conn_at(self, i).d[d]
        return 0

    cdef int _pass_front(self, uint32_t i, int d, int reason) except -1:
        # give up the hole before the first held chunk (bytes the capture cut are a gap of
        # their own reason), then deliver what follows it
        cdef dir_t* D = &conn_at(self, i).d[d]
        if cut_waits(D):
            self._gap_to(i, d, _cut_end(D, INT64_MAX), GAP_SNAPLEN)
        else:
            self._gap_to(i, d, D.chunks[0].start, reason)
        self._flush(i, d)
        return 0

    cdef int _gap_to(self, uint32_t i, int d, int64_t upto, int reason) except -1:
        cdef dir_t* D = &conn_at(self, i).d[d]
        if upto <= D.next:
            return 0
        _count_hole(D, D.next, upto)
        self.cur_rflags |= RF_GAP_BEFORE
        self.sink.on_gap(i, d, D.next - D.origin, upto - D.next, reason)
        D = &conn_at(self, i).d[d]
        D.next = upto
        self._move_anchor(D, upto)
        D.ring_len = 0
        D.ring_start = upto
        D.n_refs = 0
        D.ref_head = 0
        D.ref_bytes = 0
        return 0

    cdef int _udp_cut(self, uint32_t i, int d, pkt_t* p) except -1:
        # the capture cut a datagram: its missing tail is a gap, so that the direction's offsets
        # (the next datagram's too) count the bytes sent, as a TCP stream's do
        cdef dir_t* D = &conn_at(self, i).d[d]
        cdef int64_t at = <int64_t>(D.delivered + D.gap_bytes)
        cdef int64_t n = <int64_t>p.payload_wirelen - p.payload_len
        _count_hole(D, at, at + n)
        p.rflags = RF_SNAPLEN_CUT | RF_GAP_BEFORE
        self.sink.on_gap(i, d, at, n, GAP_SNAPLEN)
        return 0

    cdef int _trailing_gap(self, uint32_t i, int d) except -1:
        cdef dir_t* D = &conn_at(self, i).d[d]
        cdef int64_t end = D.next
        if D.fin_seen and D.fin_off > end:
            end = D.fin_off
        if D.has_ack and D.acked > end:
            end = D.acked
        # an ACK of the FIN itself covers one sequence number that carries no byte
        if D.fin_seen and end > D.fin_off:
            end = D.fin_off if D.fin_off > D.next else D.next
        # an ACK far beyond anything sent is garbage (zero or random ACK fields), not a loss
        if end > D.next and end - D.next < MAX_TRAILING_GAP:
            self._gap_to(i, d, end, GAP_TRAILING)
        return 0

    cdef int _unseen_gap(self, uint32_t i, int d) except -1:
        # a direction the capture never held a packet of, whose peer acknowledged bytes of it
        # (a one-sided capture): those bytes are a trailing gap from offset 0, less the one
        # sequence number of a FIN when the last acknowledgement moved by one
        cdef dir_t* D = &conn_at(self, i).d[d]
        cdef int64_t n = D.unseen_advance - (1 if D.unseen_step == 1 else 0)
        if D.unseen_acks and 0 < n < MAX_TRAILING_GAP:
            D.settled = 1                   # its stream is that gap: offsets 0 to n
            D.origin = 0
            D.next = 0
            self._gap_to(i, d, n, GAP_TRAILING)
            # what the peer acknowledged is known as well as the gap is (the FIN's number too)
            D.acked = D.unseen_advance
            D.has_ack = 1
        return 0

    cdef int _flush_all(self, uint32_t i, int d, int reason) except -1:
        cdef dir_t* D = &conn_at(self, i).d[d]
        while D.n_chunks:
            self._pass_front(i, d, reason)
            D = &conn_at(self, i).d[d]
        return 0

    # --- data ------------------------------------------------------------------------------

    cdef int _deliver(self, uint32_t i, int d, const uint8_t* data, uint32_t n, bint stable) except -1:
        cdef dir_t* D = &conn_at(self, i).d[d]
        self._retain(D, data, n, stable)
        D.delivered += n
        self.sink.on_data(i, d, D.next - D.origin, data, n)
        D = &conn_at(self, i).d[d]
        D.next += n
        return 0

    cdef void _retain(self, dir_t* D, const uint8_t* data, uint32_t n, bint stable) noexcept nogil:
        # Keep the last RETAIN_MAX delivered bytes (data goes at D.next): the ring of copies,
        # then references to bytes that stay in the capture file's mapping (no copy of the bulk
        # of a stream). Bytes that do not stay (held chunks, a live source's buffers) are copied,
        # and the references before them with them, so the ring always comes first.
        cdef ref_t* r
        cdef uint32_t over, cut
        if n == 0:
            return
        if stable and n < RETAIN_MAX:
            if D.refs == NULL:
                D.refs = <ref_t*> malloc(NREF * sizeof(ref_t))
            if D.refs != NULL:
                if D.n_refs == NREF:
                    self._oldest_ref_to_ring(D)         # short segments: it becomes a copy
                r = &D.refs[(D.ref_head + D.n_refs) % NREF]
                r.start = D.next
                r.ptr = data
                r.len = n
                D.n_refs += 1
                D.ref_bytes += n
                if D.ring_len + D.ref_bytes > RETAIN_MAX:
                    # the oldest go: copies first, then references (never the one just added)
                    over = D.ring_len + D.ref_bytes - RETAIN_MAX
                    cut = over if over < D.ring_len else D.ring_len
                    D.ring_start += cut
                    D.ring_len -= cut
                    over -= cut
                    while over:
                        r = &D.refs[D.ref_head]
                        cut = over if over < r.len else r.len
                        r.start += cut
                        r.ptr += cut
                        r.len -= cut
                        D.ref_bytes -= cut
                        over -= cut
                        if r.len == 0:
                            D.ref_head = (D.ref_head + 1) % NREF
                            D.n_refs -= 1
                return
        if n >= RETAIN_MAX:
            D.n_refs = 0                # all older bytes fall out of the window
            D.ref_head = 0
            D.ref_bytes = 0
        else:
            self._refs_to_ring(D)
        self._ring_append(D, D.next, data, n)

    cdef void _refs_to_ring(self, dir_t* D) noexcept nogil:
        # the references become copies (before bytes that must be copied, or before the
        # capture they point into goes)
        while D.n_refs:
            self._oldest_ref_to_ring(D)
        D.ref_head = 0

    cdef void _oldest_ref_to_ring(self, dir_t* D) noexcept nogil:
        cdef ref_t* r = &D.refs[D.ref_head]
        self._ring_append(D, r.start, r.ptr, r.len)
        D.ref_bytes -= r.len
        D.ref_head = (D.ref_head + 1) % NREF
        D.n_refs -= 1

    cdef void _ring_append(self, dir_t* D, int64_t at, const uint8_t* data, uint32_t n) noexcept nogil:
        # bytes [at, at+n) follow the ring's; byte at offset x lives at ring[x & (cap-1)]
        cdef uint32_t cap, need, pos, first, old_pos
        cdef uint8_t* nr
        if n >= RETAIN_MAX:
            data += n - RETAIN_MAX
            D.ring_start = at + (n - RETAIN_MAX)
            D.ring_len = 0
            n = RETAIN_MAX
        elif D.ring_len == 0:
            D.ring_start = at
        need = D.ring_len + n
        if need > D.ring_cap and D.ring_cap < RETAIN_MAX:
            cap = D.ring_cap if D.ring_cap else 4096
            while cap < need and cap < RETAIN_MAX:
                cap *= 2
            nr = <uint8_t*> malloc(cap)
            if nr == NULL:
                D.ring_len = 0
                return
            if D.ring_len:
                # move the live bytes to where the new mask puts them (at most two pieces each way)
                old_pos = <uint32_t>(D.ring_start & (D.ring_cap - 1))
                first = D.ring_cap - old_pos
                if first > D.ring_len:
                    first = D.ring_len
                self._ring_put(nr, cap, D.ring_start, D.ring + old_pos, first)
                if first < D.ring_len:
                    self._ring_put(nr, cap, D.ring_start + first, D.ring, D.ring_len - first)
            free(D.ring)
            D.ring = nr
            D.ring_cap = cap
        if need > D.ring_cap:
            D.ring_start += need - D.ring_cap          # drop the oldest
            D.ring_len -= need - D.ring_cap
        self._ring_put(D.ring, D.ring_cap, D.ring_start + D.ring_len, data, n)
        D.ring_len += n

    cdef void _ring_put(self, uint8_t* ring, uint32_t cap, int64_t at, const uint8_t* src, uint32_t n) noexcept nogil:
        cdef uint32_t pos = <uint32_t>(at & (cap - 1))
        cdef uint32_t first = cap - pos
        if first >= n:
            memcpy(ring + pos, src, n)
        else:
            memcpy(ring + pos, src, first)
            memcpy(ring, src + first, n - first)

    cdef uint64_t _compare_delivered(self, uint32_t i, int d, int64_t o, const uint8_t* data, int64_t n) except? 0:
        # bytes [o, o+n) lie below next: compare with what was delivered, where still retained
        cdef dir_t* D = &conn_at(self, i).d[d]
        cdef int64_t a = o, b = o + n, k, lo, hi, verified = 0
        cdef uint64_t diff = 0
        cdef ref_t* r
        cdef int j
        D.overlap_bytes += <uint64_t>n
        lo = a if a > D.ring_start else D.ring_start
        hi = b if b < D.ring_start + D.ring_len else D.ring_start + D.ring_len
        if hi > lo and D.ring_cap:
            for k in range(lo, hi):
                if D.ring[k & (D.ring_cap - 1)] != data[k - a]:
                    diff += 1
            verified += hi - lo
        for j in range(D.n_refs):
            r = &D.refs[(D.ref_head + j) % NREF]
            lo = a if a > r.start else r.start
            hi = b if b < r.start + r.len else r.start + r.len
            if hi > lo:
                for k in range(lo, hi):
                    if r.ptr[k - r.start] != data[k - a]:
                        diff += 1
                verified += hi - lo
        D.unverified_bytes += <uint64_t>(n - verified)
        self.cur_rflags |= RF_OVERLAP
        if diff:
            D.conflict_bytes += diff
            self.cur_rflags |= RF_CONFLICT
        self.sink.on_overlap(i, d, a - D.origin, n, diff)
        return diff

    cdef int _insert(self, uint32_t i, int d, int64_t o, const uint8_t* data, uint32_t n, uint32_t wire) except -1:
        cdef dir_t* D = &conn_at(self, i).d[d]
        cdef int64_t end = o + n, skip, seg_s = o, cut_start = o + n, cut_end = o + wire
        if D.settled and o < D.next and n:
            # bytes below next were delivered (or given up): compare, then keep the rest
            # every byte seen before: a retransmission; not so a keep-alive probe, nor bytes that
            # land in the hole given up last (sent once, late: past a bound, or after the ACK)
            if (end <= D.next and not (self.cur_rflags & RF_KEEPALIVE)
                    and not (D.n_gaps and o >= D.gap_start and end <= D.gap_end)):
                D.retransmissions += 1
                self.cur_rflags |= RF_RETRANSMISSION
            skip = (end if end < D.next else D.next) - o
            self._compare_delivered(i, d, o, data, skip)
            D = &conn_at(self, i).d[d]
            o += skip
            data += skip
            n -= <uint32_t>skip
        if n and D.settled and o == D.next and D.n_chunks == 0:
            self._deliver(i, d, data, n, self.cur_stable)   # the common case: in order, nothing held
        elif n:
            self.cur_rflags |= RF_OUT_OF_ORDER
            # the policy judges the whole segment as sent, so pass its original extent
            if self._hold(i, d, o, o + n, data, seg_s, cut_start) + self.cut_filled == n and cut_end <= cut_start:
                # every byte of it was held already (or cut from an earlier copy): a retransmission too
                D = &conn_at(self, i).d[d]
                D.retransmissions += 1
                self.cur_rflags |= RF_RETRANSMISSION
        if cut_end > cut_start:
            self.cur_rflags |= RF_SNAPLEN_CUT
            # bytes the capture cut: a piece known to be missing, since now
            self._hold(i, d, cut_start, cut_end, NULL, self.now, self.now)
        D = &conn_at(self, i).d[d]
        if D.settled and D.n_chunks and D.chunks[0].start <= D.next:
            self._flush(i, d)
        self._check_memory(i, d)
        return 0

    cdef int _check_memory(self, uint32_t i, int d) except -1:
        cdef dir_t* D = &conn_at(self, i).d[d]
        while D.n_chunks and (D.held_bytes > self.max_held_per_dir or self.held_total > self.memcap):
            if not D.settled:
                self._settle(i, d)
            else:
                self.memcap_gaps += 1
                self._pass_front(i, d, GAP_MEMCAP)
            D = &conn_at(self, i).d[d]
            if D.n_chunks and D.chunks[0].start <= D.next:
                self._flush(i, d)
                D = &conn_at(self, i).d[d]
        return 0

    cdef int _flush(self, uint32_t i, int d) except -1:
        # deliver held chunks that now touch next
        # (the run of chunks delivered leaves the front at once, by moving the start pointer)
        cdef dir_t* D = &conn_at(self, i).d[d]
        cdef chunk_t ch
        cdef int64_t from_
        cdef int32_t k = 0
        cdef uint64_t cost
        if not D.settled:
            return 0
        try:
            while k < D.n_chunks and D.chunks[k].start <= D.next:
                if D.chunks[k].data == NULL and D.chunks[k].end > D.next:
                    break                   # cut by the capture: waits for a full copy (_cuts_due)
                ch = D.chunks[k]
                D.chunks[k].data = NULL
                k += 1
                cost = chunk_cost(&ch)
                D.held_bytes -= cost
                self.held_total -= cost
                try:
                    if ch.end > D.next:
                        from_ = D.next
                        self._deliver(i, d, ch.data + (from_ - ch.start), <uint32_t>(ch.end - from_), False)
                    elif ch.data != NULL:
                        # wholly before the start a late SYN fixed: never delivered, never
                        # compared, but counted
                        D.unverified_bytes += <uint64_t>(ch.end - ch.start)
                finally:
                    free(ch.data)
                D = &conn_at(self, i).d[d]
        finally:
            D = &conn_at(self, i).d[d]
            D.chunks += k
            D.n_chunks -= k
            if D.n_chunks == 0 and D.chunk_mem != NULL:
                D.chunks = D.chunk_mem + D.cap_chunks // 2
        if D.hole_acked_ts and (D.n_chunks == 0 or D.acked <= D.next):
            D.hole_acked_ts = 0
        return 0

    cdef int _push_chunk(self, dir_t* D, int32_t at, int64_t s, int64_t e, int64_t os, int64_t oe,
                         const uint8_t* src) except -1:
        # insert chunk [s, e) at index `at`; returns 1 if a chunk was added
        cdef uint8_t* buf = NULL
        cdef uint64_t cost
        if e <= s:
            return 0
        if src != NULL:
            buf = <uint8_t*> malloc(e - s)
            if buf == NULL:
                raise MemoryError()
            memcpy(buf, src, e - s)
        try:
            self._make_slot(D, at)
        except MemoryError:
            free(buf)
            raise
        D.chunks[at].start = s
        D.chunks[at].end = e
        D.chunks[at].own_start = os
        D.chunks[at].own_end = oe
        D.chunks[at].data = buf
        cost = chunk_cost(&D.chunks[at])
        D.held_bytes += cost
        self.held_total += cost
        return 1

    cdef int _make_slot(self, dir_t* D, int32_t at) except -1:
        # room for one more chunk at index `at` (0..n_chunks): the shorter side moves by one
        # record. When that side has no room left, the chunks are re-centred first (in place if
        # a quarter of the allocation is free, else into one twice as large), so adding at
        # either end costs O(1) amortised and in the middle at most half the records.
        cdef int32_t n = D.n_chunks, front = 0, back = 0
        cdef bint to_front = at < n - at
        if D.chunk_mem != NULL:
            front = <int32_t>(D.chunks - D.chunk_mem)
            back = D.cap_chunks - front - n
        if D.chunk_mem == NULL or (front == 0 if to_front else back == 0):
            if D.chunk_mem != NULL and (D.cap_chunks - n) * 4 >= D.cap_chunks:
                self._recentre(D, D.cap_chunks)
            else:
                self._recentre(D, D.cap_chunks * 2 if D.cap_chunks else 8)
        if to_front:
            _memmove(D.chunks - 1, D.chunks, at * sizeof(chunk_t))
            D.chunks -= 1
            self.held_work += <uint64_t>at
        else:
            _memmove(D.chunks + at + 1, D.chunks + at, (n - at) * sizeof(chunk_t))
            self.held_work += <uint64_t>(n - at)
        D.n_chunks += 1
        return 0

    cdef int _recentre(self, dir_t* D, int32_t cap) except -1:
        # the chunks move to the middle of an allocation of `cap` records (the same, or a new one)
        cdef chunk_t* mem = D.chunk_mem
        cdef int32_t lead = (cap - D.n_chunks) // 2
        if mem == NULL or cap != D.cap_chunks:
            mem = <chunk_t*> malloc(cap * sizeof(chunk_t))
            if mem == NULL:
                raise MemoryError()
            if D.n_chunks:
                memcpy(mem + lead, D.chunks, D.n_chunks * sizeof(chunk_t))
            free(D.chunk_mem)
            D.chunk_mem = mem
            D.cap_chunks = cap
        elif D.n_chunks:
            _memmove(mem + lead, D.chunks, D.n_chunks * sizeof(chunk_t))
        D.chunks = mem + lead
        self.held_work += <uint64_t>D.n_chunks
        return 0

    cdef int32_t _first_ending_after(self, dir_t* D, int64_t s) noexcept nogil:
        # the index of the first held chunk that ends after s (chunks are sorted and disjoint,
        # so their ends are sorted too): a binary search, O(1) when s lies beyond them all
        cdef int32_t lo = 0, hi = D.n_chunks, mid
        if hi == 0 or D.chunks[hi - 1].end <= s:
            return hi
        while lo < hi:
            mid = (lo + hi) >> 1
            self.held_work += 1
            if D.chunks[mid].end <= s:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef int64_t _hold(self, uint32_t i, int d, int64_t s, int64_t e, const uint8_t* data,
                       int64_t own_s, int64_t own_e) except -1:
        # Insert [s, e) (data, or NULL for bytes known missing) among the held chunks. The
        # overlapped chunks are replaced by pieces: old bytes, or new ones where the policy says.
        # Returns how many of its bytes were already held (as bytes, not as known missing).
        cdef dir_t* D = &conn_at(self, i).d[d]
        cdef int32_t first = 0, last, k, n_old, at
        cdef chunk_t* old
        cdef int64_t pos, a, b, cs, ce, x, overlap = 0
        cdef uint64_t diff = 0
        cdef bint take_new
        self.cut_filled = 0
        if e <= s:
            return 0
        if D.settled and s < D.next:
            if data != NULL:
                data += D.next - s
            s = D.next
            if e <= s:
                return 0
        first = self._first_ending_after(D, s)
        last = first
        while last < D.n_chunks and D.chunks[last].start < e:
            last += 1
        n_old = last - first
        if n_old == 0:
            self._push_chunk(D, first, s, e, own_s, own_e, data)
            return 0
        # take the overlapped chunks out, then write pieces back in order
        old = <chunk_t*> malloc(n_old * sizeof(chunk_t))
        if old == NULL:
            raise MemoryError()
        memcpy(old, D.chunks + first, n_old * sizeof(chunk_t))
        if first < D.n_chunks - last:       # close the hole from the shorter side
            _memmove(D.chunks + n_old, D.chunks, first * sizeof(chunk_t))
            D.chunks += n_old
            self.held_work += <uint64_t>first
        else:
            _memmove(D.chunks + first, D.chunks + last, (D.n_chunks - last) * sizeof(chunk_t))
            self.held_work += <uint64_t>(D.n_chunks - last)
        D.n_chunks -= n_old
        for k in range(n_old):
            D.held_bytes -= chunk_cost(&old[k])
            self.held_total -= chunk_cost(&old[k])
        at = first
        pos = s
        try:
            for k in range(n_old):
                cs = old[k].start
                ce = old[k].end
                if cs < s:          # the old chunk's part before the new segment
                    at += self._push_chunk(D, at, cs, s, old[k].own_start, old[k].own_end, old[k].data)
                if pos < cs:        # new bytes in the space before this old chunk
                    at += self._push_chunk(D, at, pos, cs, own_s, own_e, data + (pos - s) if data != NULL else NULL)
                a = cs if cs > s else s
                b = ce if ce < e else e
                if old[k].data == NULL:
                    take_new = data != NULL            # real bytes replace "known missing"
                    if take_new:
                        self.cut_filled += b - a
                elif data == NULL:
                    take_new = False                   # "known missing" never replaces bytes
                else:
                    overlap += b - a
                    for x in range(a, b):
                        if old[k].data[x - cs] != data[x - s]:
                            diff += 1
                    take_new = new_wins(self.policy, own_s, own_e, old[k].own_start, old[k].own_end)
                if take_new:
                    at += self._push_chunk(D, at, a, b, own_s, own_e, data + (a - s) if data != NULL else NULL)
                else:
                    at += self._push_chunk(D, at, a, b, old[k].own_start, old[k].own_end,
                                           old[k].data + (a - cs) if old[k].data != NULL else NULL)
                if ce > e:          # the old chunk's part after the new segment
                    at += self._push_chunk(D, at, e, ce, old[k].own_start, old[k].own_end,
                                           old[k].data + (e - cs) if old[k].data != NULL else NULL)
                pos = b
            if pos < e:
                self._push_chunk(D, at, pos, e, own_s, own_e, data + (pos - s) if data != NULL else NULL)
        finally:
            for k in range(n_old):
                free(old[k].data)
            free(old)
        D = &conn_at(self, i).d[d]
        if overlap:
            self.cur_rflags |= RF_OVERLAP | (RF_CONFLICT if diff else 0)
            D.overlap_bytes += <uint64_t>overlap
            D.conflict_bytes += diff
            self.sink.on_overlap(i, d, s - D.origin, overlap, diff)
        return overlap


CLOSE_NAMES = {CLOSE_FIN: "fin", CLOSE_RST: "rst", CLOSE_TIMEOUT: "timeout", CLOSE_EVICTED: "evicted", CLOSE_EOF: "eof",
               CLOSE_REUSED: "reused"}
GAP_NAMES = {GAP_ACKED: "acked", GAP_CLOSED: "closed", GAP_MEMCAP: "memcap", GAP_SNAPLEN: "snaplen", GAP_TRAILING: "trailing"}
