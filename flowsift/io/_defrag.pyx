# cython: language_level=3
"""IP defragmentation (IPv4 and IPv6) over batches, before the flow table.

Fragments stay in the batch (counted by the decoder, skipped by the flow table); when the last
missing piece of a datagram arrives, its slot in the batch is replaced by the whole datagram,
decoded as raw IP, so TCP/UDP see it as one packet. Overlapping IPv4 fragments are resolved
by a policy (first copy wins, or last) and counted, with the bytes that differed. An IPv6
datagram with overlapping fragments is discarded whole (RFC 5722, RFC 8200 section 4.5), as
hosts do: a fragment wholly within bytes already held is a duplicate, dropped (the first copy
stays, as in Linux); any other overlap drops the datagram.

A datagram is known by its addresses, identification and (IPv4) protocol, and with `vlan_key`
by its frames' two outer VLAN ids too, as the flow table then keys flows: fragments of two
VLANs are never joined. The rebuilt datagram carries the VLAN ids of its first fragment taken.
"""
from libc.stdint cimport int32_t, int64_t, uint64_t, uint32_t, uint16_t, uint8_t
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport malloc, calloc, realloc, free

from flowsift.io._batch cimport *
from flowsift.io._bytes cimport fs_be16
from flowsift.io._decode cimport decode_packet, ipv6_extension, ipv6_routed, check_transport, take_check, CK_COUNT

cdef extern from "string.h" nogil:
    void* _memmove "memmove"(void* dst, const void* src, size_t n)

# Datagrams being rebuilt at once; past this the oldest is dropped (counted). Real traffic
# has a handful; the bound keeps a fragment flood from eating memory.
DEF MAX_TRACKERS = 4096
# IP datagrams are at most 64 KiB (IPv6 jumbograms are not fragmented).
DEF MAX_DATAGRAM = 65535
# Linux's ipfrag_time default: a datagram not complete after 30 s of capture time is dropped.
DEF MAX_RANGES = 64
# The trackers are found through a hash index (twice their number: probes stay short), and
# when all are taken the one begun first goes (a FIFO of creations): a fragment costs the
# same whether 10 or 4,096 datagrams are being rebuilt.
DEF INDEX_SLOTS = 8192
DEF FIFO_SLOTS = 8192
# what a datagram holds of a new fragment's bytes (IPv6 overlap rules)
DEF HELD_NONE = 0
DEF HELD_ALL = 1
DEF HELD_PART = 2

ctypedef struct fifo_t:
    int32_t idx
    uint32_t gen

cdef extern from *:
    """
    #define FS_FRAG_TIMEOUT_NS 30000000000LL
    #define FS_FRAG_CLOCK_JUMP_NS 3600000000000LL
    """
    const int64_t FRAG_TIMEOUT_NS "FS_FRAG_TIMEOUT_NS"
    const int64_t CLOCK_JUMP_NS "FS_FRAG_CLOCK_JUMP_NS"

ctypedef struct range_t:
    uint32_t start
    uint32_t end

ctypedef struct tracker_t:
    uint8_t used
    uint8_t ipver
    uint8_t proto
    uint8_t poisoned         # a fragment was cut by the snaplen: the datagram cannot be whole
    uint8_t have_first
    uint8_t overflowed       # more disjoint pieces than MAX_RANGES: given up, counted apart
    uint64_t key_hash        # of ipver, proto (IPv4), addresses, identification, kvlan: its index slot
    uint32_t gen             # which use of this slot (stale FIFO entries are told apart)
    uint32_t kvlan           # VLAN ids in the key (outer << 16 | inner; 0 without vlan_key)
    uint16_t vlan[2]         # the VLAN ids of the fragment that began it, and how many tags
    uint8_t vlan_depth
    uint8_t src[16]
    uint8_t dst[16]
    uint32_t ident
    uint32_t total           # payload length, known once the last fragment (MF=0) arrived
    int64_t first_ts
    int64_t last_ts
    uint8_t hdr[60]          # IPv4 header of the offset-0 fragment (options included)
    uint16_t hdr_len
    uint8_t* data            # MAX_DATAGRAM bytes of payload
    range_t ranges[MAX_RANGES]
    int n_ranges
    uint32_t fragments
    uint32_t first_len       # payload bytes of the offset-0 fragment (does it hold the transport header?)
    uint8_t routed           # the offset-0 fragment had a Routing header with segments left (IPv6)


# Datagrams completed lately, remembered so that a fragment sent again after its datagram
# was whole is known for a duplicate, not taken for the start of a datagram that never ends.
DEF MAX_DONE = 256
DEF NO_DATAGRAM = 0xFFFFFFFFFFFFFFFF   # a done entry of a datagram dropped, not rebuilt

ctypedef struct done_t:
    uint8_t ipver
    uint8_t proto
    uint32_t kvlan
    uint8_t src[16]
    uint8_t dst[16]
    uint32_t ident
    uint32_t total
    int64_t ts
    uint64_t pos             # the rebuilt datagram's frame position (its edits go to a copy too)


cdef inline uint64_t frag_hash(uint8_t ipver, uint8_t proto, const uint8_t* src, const uint8_t* dst,
                               uint32_t ident, uint32_t kvlan) noexcept nogil:
    cdef uint64_t h = 0xCBF29CE484222325ULL ^ ident ^ (<uint64_t>ipver << 40) ^ (<uint64_t>kvlan << 8)
    cdef int k, alen = 4 if ipver == 4 else 16
    if ipver == 4:
        h ^= <uint64_t>proto << 48      # (IPv6 fragments are matched without it)
    for k in range(alen):
        h = (h ^ src[k]) * 0x100000001B3ULL
        h = (h ^ dst[k]) * 0x100000001B3ULL
    return h ^ (h >> 29)


cdef class Defragmenter:
    cdef tracker_t* trk
    cdef int32_t* index            # INDEX_SLOTS: tracker + 1, 0 empty
    cdef int32_t* free_list        # trackers not in use
    cdef int n_free
    cdef fifo_t* fifo              # trackers in the order they were begun (with stale entries)
    cdef int fifo_head
    cdef int fifo_len
    cdef uint32_t next_gen
    cdef done_t done[MAX_DONE]
    cdef int done_next
    cdef int64_t clock             # capture time as the fragments' expiry sees it
    cdef int n_used
    cdef list _out                 # datagram buffers handed out with the current batch
    # with egress: position of a rebuilt datagram (its last fragment's) -> (its fragments'
    # positions, whether they can take its header edits); None: not kept
    cdef public dict members
    cdef dict _pos                 # tracker -> positions of its fragments so far
    cdef readonly bint last_wins
    cdef readonly bint discard_overlaps  # IPv4 too: a datagram with overlapping fragments is dropped (policy "discard")
    cdef readonly bint vlan_key           # datagrams are told apart by VLAN ids too (see above)
    cdef readonly uint64_t datagrams      # datagrams rebuilt
    cdef readonly uint64_t fragments      # fragments taken in
    cdef readonly uint64_t overlaps       # fragments that overlapped bytes already held
    cdef readonly uint64_t conflict_bytes # overlapping bytes whose copies differed
    cdef readonly uint64_t timeouts       # datagrams dropped incomplete (timeout or table full)
    cdef readonly uint64_t truncated      # datagrams dropped because a fragment was cut by the snaplen
    cdef readonly uint64_t malformed      # fragments whose offsets run past 64 KiB or contradict the total
    cdef readonly uint64_t late_duplicates  # fragments of a datagram already rebuilt, sent again
    cdef readonly uint64_t too_many_pieces  # datagrams given up: more than MAX_RANGES disjoint pieces at once
    cdef readonly uint64_t overlap_discarded  # datagrams discarded: a fragment overlapped (IPv6: RFC 5722; IPv4: policy "discard")
    # rebuilt datagrams no connection holds, as the decoder counts whole packets: by the reason
    # their headers did not decode, or of protocols other than TCP and UDP
    cdef uint64_t not_decoded[ST_COUNT]
    cdef readonly uint64_t other_protocols
    # --checksums verify: a rebuilt datagram's TCP/UDP checksum is checked (its fragments' IPv4
    # headers were, by the decoder); one that is wrong is not decoded (ST_BAD_CHECKSUM)
    cdef public bint verify_checksums
    cdef uint64_t checks[CK_COUNT]

    def __cinit__(self, str policy="first", bint vlan_key=False):
        if policy not in ("first", "last", "discard"):
            raise ValueError(f"unknown fragment overlap policy {policy!r} (first, last or discard)")
        self.last_wins = policy == "last"
        # (Linux since 4.19 drops IPv4 datagrams whose fragments overlap, as RFC 5722 IPv6 ones)
        self.discard_overlaps = policy == "discard"
        self.vlan_key = vlan_key
        cdef int k
        self.trk = <tracker_t*> calloc(MAX_TRACKERS, sizeof(tracker_t))
        self.index = <int32_t*> calloc(INDEX_SLOTS, sizeof(int32_t))
        self.free_list = <int32_t*> malloc(MAX_TRACKERS * sizeof(int32_t))
        self.fifo = <fifo_t*> malloc(FIFO_SLOTS * sizeof(fifo_t))
        if self.trk == NULL or self.index == NULL or self.free_list == NULL or self.fifo == NULL:
            raise MemoryError()
        for k in range(MAX_TRACKERS):
            self.free_list[k] = MAX_TRACKERS - 1 - k
        self.n_free = MAX_TRACKERS
        self._out = []
        self.members = None
        self._pos = {}

    def __dealloc__(self):
        cdef int i
        if self.trk != NULL:
            for i in range(MAX_TRACKERS):
                free(self.trk[i].data)
            free(self.trk)
        free(self.index)
        free(self.free_list)
        free(self.fifo)

    def pending(self):
        return self.n_used

    # --- re-sharding: a datagram being rebuilt handed to another defragmenter ---
    def pending_addresses(self):
        """[(slot, source address, destination address)] of the datagrams being rebuilt."""
        cdef int i
        return [(i, bytes(self.trk[i].src[:16]), bytes(self.trk[i].dst[:16]))
                for i in range(MAX_TRACKERS) if self.trk[i].used]

    def export_datagram(self, int i):
        """The fragments of one datagram taken in so far, for another defragmenter (`import_datagram`); dropped here."""
        cdef tracker_t t = self.trk[i]
        cdef uint32_t end = 0
        cdef int k
        if not t.used:
            raise KeyError(i)
        for k in range(t.n_ranges):
            if t.ranges[k].end > end:
                end = t.ranges[k].end
        data = (<char*>t.data)[:end] if end else b""
        t.data = NULL
        self._drop(i)
        self._pos.pop(i, None)
        return {"tracker": (<char*>&t)[:sizeof(tracker_t)], "data": data}

    def import_datagram(self, dict rec):
        cdef bytes tb = rec["tracker"], data = rec["data"]
        cdef int i
        cdef uint8_t* buf
        if self.n_free == 0:
            self.timeouts += 1           # no room: dropped, as when the table is full
            return -1
        self.n_free -= 1
        i = self.free_list[self.n_free]
        buf = self.trk[i].data
        if buf == NULL:
            buf = <uint8_t*> malloc(MAX_DATAGRAM)
            if buf == NULL:
                raise MemoryError()
        memcpy(&self.trk[i], <const char*>tb, sizeof(tracker_t))
        self.trk[i].data = buf
        memcpy(buf, <const char*>data, len(data))
        self.n_used += 1
        self._begin(i)
        return i

    def process(self, Batch batch):
        """Take in the batch's fragments; completed datagrams replace their last fragment."""
        cdef Py_ssize_t i
        cdef pkt_t* p
        cdef int64_t now = self.clock
        self._out = []
        for i in range(batch.n):
            p = &batch.pkts[i]
            # the clock follows the packets, but not to a time more than an hour ahead that the
            # next packet does not confirm: one broken timestamp must not expire every datagram
            if p.ts_ns > now and (now == 0 or p.ts_ns - now <= CLOCK_JUMP_NS or
                                  (i + 1 < batch.n and batch.pkts[i + 1].ts_ns + CLOCK_JUMP_NS >= p.ts_ns)):
                now = p.ts_ns
            if p.status == ST_OK and (p.flags & PF_FRAGMENT) and not (p.flags & PF_OTHER_SHARD) and \
                    (p.ipver == 4 or p.ipver == 6):
                self._take(p)
        self.clock = now
        self._expire(now)

    cdef inline uint32_t _kvlan(self, const pkt_t* p) noexcept nogil:
        return (<uint32_t>p.vlan << 16 | p.vlan_inner) if self.vlan_key else 0

    cdef int _find(self, pkt_t* p, uint32_t ident) noexcept nogil:
        # the tracker of this fragment's datagram, or -1
        cdef int i
        cdef int alen = 4 if p.ipver == 4 else 16
        cdef uint32_t kv = self._kvlan(p)
        cdef uint32_t j = frag_hash(p.ipver, p.proto, p.src, p.dst, ident, kv) & (INDEX_SLOTS - 1)
        while self.index[j]:
            i = self.index[j] - 1
            if (self.trk[i].ident == ident and self.trk[i].ipver == p.ipver and self.trk[i].kvlan == kv and
                    (p.ipver == 6 or self.trk[i].proto == p.proto) and
                    memcmp(self.trk[i].src, p.src, alen) == 0 and memcmp(self.trk[i].dst, p.dst, alen) == 0):
                return i
            j = (j + 1) & (INDEX_SLOTS - 1)
        return -1

    cdef int _alloc(self) noexcept nogil:
        # a free tracker; when none is, the one begun first is given up
        cdef fifo_t e
        while self.n_free == 0 and self.fifo_len:
            e = self.fifo[self.fifo_head]
            self.fifo_head = (self.fifo_head + 1) % FIFO_SLOTS
            self.fifo_len -= 1
            if self.trk[e.idx].used and self.trk[e.idx].gen == e.gen:
                self._give_up(e.idx)
        self.n_free -= 1
        return self.free_list[self.n_free]

    cdef void _begin(self, int i) noexcept nogil:
        # a tracker now in use (its key set): indexed, and queued in the order of creation
        cdef tracker_t* t = &self.trk[i]
        cdef uint32_t j
        cdef int k, n
        cdef fifo_t e
        t.key_hash = frag_hash(t.ipver, t.proto, t.src, t.dst, t.ident, t.kvlan)
        j = t.key_hash & (INDEX_SLOTS - 1)
        while self.index[j]:
            j = (j + 1) & (INDEX_SLOTS - 1)
        self.index[j] = i + 1
        self.next_gen += 1
        t.gen = self.next_gen
        if self.fifo_len == FIFO_SLOTS:
            # full of stale entries (trackers since dropped): keep the live ones, in order
            n = 0
            for k in range(self.fifo_len):
                e = self.fifo[(self.fifo_head + k) % FIFO_SLOTS]
                if self.trk[e.idx].used and self.trk[e.idx].gen == e.gen:
                    self.fifo[n] = e
                    n += 1
            self.fifo_head = 0
            self.fifo_len = n
        self.fifo[(self.fifo_head + self.fifo_len) % FIFO_SLOTS].idx = i
        self.fifo[(self.fifo_head + self.fifo_len) % FIFO_SLOTS].gen = t.gen
        self.fifo_len += 1

    cdef void _drop(self, int i) noexcept nogil:
        # out of the index (shifting back the entries that probed past it) and free again
        cdef uint32_t j = self.trk[i].key_hash & (INDEX_SLOTS - 1), k, h
        while self.index[j] != i + 1:
            j = (j + 1) & (INDEX_SLOTS - 1)
        k = (j + 1) & (INDEX_SLOTS - 1)
        while self.index[k]:
            h = self.trk[self.index[k] - 1].key_hash & (INDEX_SLOTS - 1)
            if (k > j and (h <= j or h > k)) or (k < j and h <= j and h > k):
                self.index[j] = self.index[k]
                j = k
            k = (k + 1) & (INDEX_SLOTS - 1)
        self.index[j] = 0
        self.trk[i].used = 0
        self.n_used -= 1
        self.free_list[self.n_free] = i
        self.n_free += 1

    cdef void _give_up(self, int i) noexcept nogil:
        # leaves the table incomplete: timed out, pushed out, or at the end of input
        if self.trk[i].poisoned:
            self.truncated += 1             # (it could never have been whole)
        elif self.trk[i].overflowed:
            self.too_many_pieces += 1
        else:
            self.timeouts += 1
        self._drop(i)

    cdef int _take(self, pkt_t* p) except -1:
        cdef const uint8_t* d = p.data
        cdef uint32_t l3 = p.l3_off, l4 = p.l4_off, off = p.frag_off, n, wire_n, a, b, s, e, k2
        cdef int k
        cdef int i
        cdef tracker_t* t
        cdef bint more = (p.flags & PF_MORE_FRAGS) != 0
        cdef bint bad, overlapped
        cdef int held
        self.fragments += 1
        # fragment payload: the fragmentable part, from the end of the IP header (IPv6: of the
        # Fragment header) to the end of the IP packet
        if p.flags & PF_IP_LEN_FROM_FRAME:
            wire_n = (p.wirelen if p.wirelen > p.caplen else p.caplen) - l4     # (as the decoder took it)
        elif p.ipver == 4:
            wire_n = fs_be16(d + l3 + 2) - (l4 - l3)
        else:
            wire_n = <uint32_t>fs_be16(d + l3 + 4) + 40 - (l4 - l3)
        n = p.caplen - l4 if p.caplen > l4 else 0
        if n > wire_n:
            n = wire_n          # link trailer (padding / FCS) is not payload
        i = self._find(p, p.frag_id)
        if i < 0:
            k = self._was_done(p, off + wire_n)
            if k >= 0:
                self.late_duplicates += 1
                if self.members is not None and self.done[k].pos in self.members:
                    # a copy of one of its fragments: it leaves with the datagram's edits
                    self.members[self.done[k].pos][0].append(p.rec_pos)
                return 0
        if i < 0:
            i = self._alloc()
            t = &self.trk[i]
            if t.data == NULL:
                t.data = <uint8_t*> malloc(MAX_DATAGRAM)
                if t.data == NULL:
                    raise MemoryError()
            t.used = 1
            self.n_used += 1
            t.ipver = p.ipver
            t.proto = p.proto
            memcpy(t.src, p.src, 16)
            memcpy(t.dst, p.dst, 16)
            t.ident = p.frag_id
            t.kvlan = self._kvlan(p)
            t.vlan[0] = p.vlan
            t.vlan[1] = p.vlan_inner
            t.vlan_depth = p.vlan_depth
            t.total = 0
            t.poisoned = 0
            t.overflowed = 0
            t.have_first = 0
            t.n_ranges = 0
            t.fragments = 0
            t.first_ts = p.ts_ns
            self._begin(i)
            if self.members is not None:
                self._pos[i] = []
        t = &self.trk[i]
        t.last_ts = p.ts_ns
        t.fragments += 1
        if self.members is not None:
            self._pos.setdefault(i, []).append(p.rec_pos)
        if t.overflowed:
            return 0                # given up (counted when it leaves the table)
        bad = off + wire_n > MAX_DATAGRAM or (t.total and off + wire_n > t.total) or (not more and t.total and off + wire_n != t.total)
        if (p.ipver == 6 or self.discard_overlaps) and not bad:
            held = self._held(t, off, off + wire_n)
            if held == HELD_PART:
                # RFC 5722: hosts discard the whole datagram; reassembling it would show the
                # connection bytes no host took
                self.overlaps += 1
                self.overlap_discarded += 1
                self._drop(i)
                if self.members is not None:
                    self._pos.pop(i, None)
                return 0
            if held == HELD_ALL:
                # a duplicate: dropped, the first copy stays (Linux; RFC 5722 allows it)
                self.overlaps += 1
                if not t.poisoned:      # (else the bytes held there may be ones never captured)
                    for k2 in range(off, off + n):
                        if t.data[k2] != d[l4 + k2 - off]:
                            self.conflict_bytes += 1
                return 0
        if n < wire_n:
            t.poisoned = 1
        if bad:
            self.malformed += 1
            return 0
        if not more:
            t.total = off + wire_n
        if off == 0:
            t.have_first = 1
            t.first_len = n
            t.proto = p.proto
            t.routed = p.ipver == 6 and ipv6_routed(p)   # (the rebuilt datagram's header drops it)
            if p.ipver == 4:
                t.hdr_len = <uint16_t>(l4 - l3)
                memcpy(t.hdr, d + l3, t.hdr_len)
        # copy the bytes: where ranges already cover them, the policy decides
        s = off
        e = off + n
        overlapped = False
        for k in range(t.n_ranges):
            a = t.ranges[k].start if t.ranges[k].start > s else s
            b = t.ranges[k].end if t.ranges[k].end < e else e
            if a < b:
                overlapped = True           # (counted once per fragment, however many pieces it spans)
                if not t.poisoned:      # (else the bytes held there may be ones never captured)
                    for k2 in range(a, b):
                        if t.data[k2] != d[l4 + k2 - off]:
                            self.conflict_bytes += 1
        self.overlaps += overlapped
        if self.last_wins:
            memcpy(t.data + s, d + l4, e - s)
        else:
            self._copy_uncovered(t, s, e, d + l4 - off)
        # the bytes the capture cut count as arrived: the datagram completes when every fragment
        # came, and is dropped then as truncated rather than waiting to be given up
        self._add_range(t, s, off + wire_n)
        if t.total and t.have_first and t.n_ranges == 1 and t.ranges[0].start == 0 and t.ranges[0].end >= t.total:
            self._emit(i, p)
        return 0

    cdef int _held(self, tracker_t* t, uint32_t s, uint32_t e) noexcept nogil:
        # how much of [s, e) the datagram holds: none, all of it in one range, or part
        cdef int k
        for k in range(t.n_ranges):
            if t.ranges[k].start < e and s < t.ranges[k].end:
                return HELD_ALL if t.ranges[k].start <= s and e <= t.ranges[k].end else HELD_PART
        return HELD_NONE

    cdef int _was_done(self, pkt_t* p, uint32_t end) noexcept nogil:
        # the entry of the datagram `p` is a fragment of, rebuilt lately; -1 if none
        cdef int k
        cdef int alen = 4 if p.ipver == 4 else 16
        cdef done_t* x
        cdef uint32_t kv = self._kvlan(p)
        for k in range(MAX_DONE):
            x = &self.done[k]
            if (x.ipver == p.ipver and x.ident == p.frag_id and (p.ipver == 6 or x.proto == p.proto) and x.kvlan == kv and
                    end <= x.total and p.ts_ns - x.ts <= FRAG_TIMEOUT_NS and
                    memcmp(x.src, p.src, alen) == 0 and memcmp(x.dst, p.dst, alen) == 0):
                return k
        return -1

    cdef void _remember_done(self, tracker_t* t, uint64_t pos) noexcept nogil:
        cdef done_t* x = &self.done[self.done_next]
        self.done_next = (self.done_next + 1) % MAX_DONE
        x.ipver = t.ipver
        x.proto = t.proto
        x.kvlan = t.kvlan
        memcpy(x.src, t.src, 16)
        memcpy(x.dst, t.dst, 16)
        x.ident = t.ident
        x.total = t.total
        x.ts = t.last_ts
        x.pos = pos

    cdef void _copy_uncovered(self, tracker_t* t, uint32_t s, uint32_t e, const uint8_t* src) noexcept nogil:
        # src[x] is the byte for datagram offset x
        cdef uint32_t pos = s, a, b
        cdef int k
        for k in range(t.n_ranges):
            a = t.ranges[k].start
            b = t.ranges[k].end
            if b <= pos or a >= e:
                continue
            if a > pos:
                memcpy(t.data + pos, src + pos, a - pos)
            pos = b if b > pos else pos
            if pos >= e:
                return
        if pos < e:
            memcpy(t.data + pos, src + pos, e - pos)

    cdef void _add_range(self, tracker_t* t, uint32_t s, uint32_t e) noexcept nogil:
        # keep ranges sorted and merged
        cdef int k = 0, j
        if e <= s:
            return
        while k < t.n_ranges and t.ranges[k].end < s:
            k += 1
        j = k
        while j < t.n_ranges and t.ranges[j].start <= e:
            if t.ranges[j].start < s:
                s = t.ranges[j].start
            if t.ranges[j].end > e:
                e = t.ranges[j].end
            j += 1
        if j - k != 1 and t.n_ranges - (j - k) + 1 > MAX_RANGES:
            t.overflowed = 1    # more holes than tracked: give up on this datagram
            return
        if j != k + 1:
            _memmove(&t.ranges[k + 1], &t.ranges[j], (t.n_ranges - j) * sizeof(range_t))
        t.n_ranges = t.n_ranges - (j - k) + 1
        t.ranges[k].start = s
        t.ranges[k].end = e

    cdef int _emit(self, int i, pkt_t* p) except -1:
        cdef tracker_t* t = &self.trk[i]
        cdef uint32_t hl, total = t.total
        cdef bytearray buf
        cdef uint8_t* b
        cdef int64_t ts
        cdef uint64_t pos
        cdef uint16_t iface
        if t.poisoned:
            self.truncated += 1
            self._remember_done(t, NO_DATAGRAM)   # (its fragments all came: one sent again is late)
            self._drop(i)
            return 0
        hl = t.hdr_len if t.ipver == 4 else 40
        buf = bytearray(hl + total)
        b = <uint8_t*> (<char*> buf)
        if t.ipver == 4:
            memcpy(b, t.hdr, hl)
            b[2] = <uint8_t>((hl + total) >> 8)
            b[3] = <uint8_t>((hl + total) & 0xFF)
            b[6] = 0
            b[7] = 0
        else:
            memset(b, 0, 40)
            b[0] = 0x60
            b[4] = <uint8_t>(total >> 8)
            b[5] = <uint8_t>(total & 0xFF)
            b[6] = t.proto
            b[7] = 64
            memcpy(b + 8, t.src, 16)
            memcpy(b + 24, t.dst, 16)
        memcpy(b + hl, t.data, total)
        self._out.append(buf)
        ts = p.ts_ns
        pos = p.rec_pos
        iface = p.iface
        if self.members is not None:
            # editable in its fragments only if the first holds the whole transport header
            # (ports and checksum) where its fragmentable part starts: tiny fragments spread it
            # over several, and IPv6 extension headers (Destination Options) may come first
            self.members[pos] = (self._pos.pop(i, [pos]), t.first_len >= (20 if t.proto == 6 else 8) and
                                 not (t.ipver == 6 and ipv6_extension(t.proto)))
        memset(p, 0, sizeof(pkt_t))
        p.ts_ns = ts
        p.rec_pos = pos
        p.iface = iface
        p.data = b
        p.caplen = hl + total
        p.wirelen = hl + total
        p.linktype = 101
        decode_packet(p)
        p.vlan = t.vlan[0]              # (raw IP has no tags: the frames' are kept)
        p.vlan_inner = t.vlan[1]
        p.vlan_depth = t.vlan_depth
        p.flags |= PF_REASSEMBLED
        if self.verify_checksums and p.status == ST_OK:
            take_check(p, check_transport(p, t.routed), self.checks)
        self.datagrams += 1
        if p.status != ST_OK:
            self.not_decoded[p.status] += 1
        elif p.proto != 6 and p.proto != 17:
            self.other_protocols += 1
        self._remember_done(t, pos)
        self._drop(i)
        return 0

    cdef void _expire(self, int64_t now) noexcept nogil:
        cdef int i
        if self.n_used == 0:
            return
        for i in range(MAX_TRACKERS):
            if self.trk[i].used and self.trk[i].last_ts + FRAG_TIMEOUT_NS < now:
                self._give_up(i)

    def finish(self):
        """End of input: datagrams still incomplete are dropped (counted)."""
        cdef int i
        for i in range(MAX_TRACKERS):
            if self.trk[i].used:
                self._give_up(i)

    def undecoded(self):
        """{reason code: rebuilt datagrams whose headers did not decode} (codes as in reasons.py)."""
        cdef int k
        return {k: self.not_decoded[k] for k in range(1, ST_COUNT) if self.not_decoded[k]}

    def checksums(self):
        """{CK_* code: rebuilt datagrams} of what verifying their checksums found."""
        cdef int k
        return {k: self.checks[k] for k in range(1, CK_COUNT) if self.checks[k]}

    def counters(self):
        # datagrams still being rebuilt count as incomplete, but those a cut fragment already
        # made truncated
        cdef int i
        cdef uint64_t cut = 0
        if self.n_used:
            for i in range(MAX_TRACKERS):
                if self.trk[i].used and self.trk[i].poisoned:
                    cut += 1
        return {"fragments": self.fragments, "datagrams": self.datagrams, "overlaps": self.overlaps,
                "conflict_bytes": self.conflict_bytes, "incomplete": self.timeouts + self.n_used - cut,
                "truncated": self.truncated + cut, "malformed": self.malformed, "late_duplicates": self.late_duplicates,
                "too_many_pieces": self.too_many_pieces, "overlap_discarded": self.overlap_discarded}
