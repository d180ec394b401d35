# cython: language_level=3
"""Bidirectional flow table: canonical 5-tuple -> flow id, open addressing, in C.

Both directions of a connection hash to the same slot because the key is canonical (the lower
endpoint first), which is also what makes the hash usable for symmetric sharding. A TCP
5-tuple that is reused after its connection closed gets a new flow id: see `_new_connection`.

With `vlan_key` the key also holds the frame's two outer VLAN ids (802.1ad/802.1Q; 0: untagged),
so that one 5-tuple on two VLANs (tenants with overlapping addresses on a trunk) is two flows.
Without it the ids are 0 in every key: the VLAN does not part flows, as in tshark.
"""
from libc.stdint cimport int32_t, int64_t, uint64_t, uint32_t, uint16_t, uint8_t
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport calloc, malloc, realloc, free

from flowsift.io._batch cimport Batch, pkt_t, ST_OK, PF_L4, PF_FRAGMENT, PF_OTHER_SHARD
from flowsift.io._tables cimport reach_chunk

DEF TH_FIN = 0x01
DEF TH_SYN = 0x02
DEF TH_RST = 0x04
DEF TH_ACK = 0x10

# Slots are kept at most half full: linear probing stays short and the table cheap to grow.
DEF INITIAL_SLOTS = 1024

cdef extern from *:
    """
    /* flow ids are uint32; 0xFFFFFFFF means "no flow" */
    #define FS_NONE32 0xFFFFFFFFu
    #define FS_MAX_FLOWS 0xFFFFFFFEu
    """
    const uint32_t NONE32 "FS_NONE32"
    const uint32_t MAX_FLOWS "FS_MAX_FLOWS"

NO_FLOW = 0xFFFFFFFF

# Ports a server listens on: below 1024, and the common ones above. A connection first seen
# without its SYN (and a UDP flow) has its server guessed from its ports, so that every
# connection to one server is named alike whichever side was seen first: the port on this list
# when only one is (as Zeek's likely-server ports do), else the lower port (clients send from
# high, ephemeral ports), and the first sender is the client only when that says nothing.
SERVICE_PORTS = frozenset(range(1, 1024)) | frozenset((
    1080, 1194, 1433, 1521, 1723, 1883, 2049, 2181, 2375, 2376, 3128, 3268, 3306, 3389, 4369, 5000, 5060,
    5061, 5222, 5349, 5353, 5355, 5432, 5601, 5671, 5672, 5900, 5984, 6379, 6443, 6881, 7001, 8000, 8008,
    8080, 8081, 8088, 8443, 8883, 8888, 9000, 9042, 9092, 9200, 9300, 9418, 11211, 27017))
cdef uint8_t _service[8192]
for _p in SERVICE_PORTS:
    _service[_p >> 3] |= 1 << (_p & 7)


cdef inline bint is_service(uint16_t port) noexcept nogil:
    return (_service[port >> 3] >> (port & 7)) & 1


cdef inline bint sent_by_server(uint16_t sport, uint16_t dport) noexcept nogil:
    # the guess above, for a first packet that is neither SYN nor SYN-ACK
    cdef bint ss = is_service(sport), ds = is_service(dport)
    if ss != ds:
        return ss
    if ss:
        return False            # both on the list (53 to 53, 1021 to 2049): the first sender asks
    return sport < dport

cdef inline uint64_t rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t mix(uint64_t h, uint64_t w) noexcept nogil:
    h ^= rotl(w * 0x87C37B91114253D5ULL, 31) * 0x4CF5AD432745937FULL
    return rotl(h, 27) * 5 + 0x52DCE729


cdef inline uint32_t key_hash(const flow_t* k) noexcept nogil:
    # IPv4 keys use only the first 4 bytes of each address: hash 3 words instead of 5
    cdef uint64_t w[4]
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL
    cdef uint32_t a4, b4
    if k.ipver == 4:
        memcpy(&a4, k.a, 4)
        memcpy(&b4, k.b, 4)
        h = mix(h, (<uint64_t>a4 << 32) | b4)
    else:
        memcpy(w, k.a, 16)
        memcpy(&w[2], k.b, 16)
        h = mix(h, w[0])
        h = mix(h, w[1])
        h = mix(h, w[2])
        h = mix(h, w[3])
    # (VLAN ids are 12 bits: the word holds ports, ids and protocol without overlap)
    h = mix(h, (<uint64_t>k.pa << 48) | (<uint64_t>k.pb << 32) | (<uint64_t>k.vlan[0] << 20)
            | (<uint64_t>k.vlan[1] << 8) | k.proto)
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    return <uint32_t>h


cdef inline bint same_key(const flow_t* x, const flow_t* y) noexcept nogil:
    return (x.pa == y.pa and x.pb == y.pb and x.proto == y.proto
            and x.vlan[0] == y.vlan[0] and x.vlan[1] == y.vlan[1]
            and memcmp(x.a, y.a, 16) == 0 and memcmp(x.b, y.b, 16) == 0)


cdef class FlowTable:
    """Assigns flow_id and dir to every decoded TCP/UDP packet of a batch. `vlan_key`: flows
    are told apart by their VLAN ids too (the outer and, for QinQ, the inner one)."""

    def __cinit__(self, bint vlan_key=False):
        self.vlan_key = vlan_key
        self.slots = <slot_t*> calloc(INITIAL_SLOTS, sizeof(slot_t))
        self.mask = INITIAL_SLOTS - 1
        if self.slots == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef uint32_t k
        free(self.slots)
        if self.chunks != NULL:
            for k in range(self.cap_chunks):
                free(self.chunks[k])
        free(self.chunks)
        free(self.released)

    def __len__(self):
        return self.n_flows

    def update(self, Batch batch):
        cdef Py_ssize_t i
        cdef int rc = 0
        with nogil:
            for i in range(batch.n):
                if self.place(<void*>&batch.pkts[i]) < 0:
                    rc = -1
                    break
        if rc < 0:
            raise MemoryError("flow table")

    cdef bint has_flow(self, const void* pv) noexcept nogil:
        cdef const pkt_t* p = <const pkt_t*>pv
        return carries_flow(p) and not (p.flags & PF_OTHER_SHARD)

    cdef int place(self, void* pv) noexcept nogil:
        """One packet's flow id (NONE32: it has no flow); -1 when out of memory."""
        (<pkt_t*>pv).flow_id = NONE32
        if not self.has_flow(pv):
            return 0
        return self._assign(pv)

    cdef int _grow_slots(self) noexcept nogil:
        cdef uint32_t old_n = self.mask + 1, n = old_n * 2, i, j
        cdef slot_t* s = <slot_t*> calloc(n, sizeof(slot_t))
        if s == NULL:
            return -1
        for i in range(old_n):
            if self.slots[i].idx1:
                j = self.slots[i].hash & (n - 1)
                while s[j].idx1:
                    j = (j + 1) & (n - 1)
                s[j] = self.slots[i]
        free(self.slots)
        self.slots = s
        self.mask = n - 1
        return 0

    cdef int _new_flow(self, const flow_t* key) noexcept nogil:
        cdef uint32_t k = self.n_flows >> FLOW_CHUNK_SHIFT
        if self.n_flows == MAX_FLOWS:
            return -1
        if reach_chunk(<void**>&self.chunks, &self.released, &self.cap_chunks, k):
            return -1
        if self.chunks[k] == NULL:
            self.chunks[k] = <flow_t*> malloc(FLOW_CHUNK * sizeof(flow_t))
            if self.chunks[k] == NULL:
                return -1
        cdef flow_t* f = flow_at(self, self.n_flows)
        memset(f, 0, sizeof(flow_t))
        memcpy(f, key, KEY_BYTES)
        f.prev = NONE32
        f.in_table = 1
        self.n_flows += 1
        if f.proto == 6:
            self.tcp_connections += 1
        else:
            self.udp_flows += 1
        return <int>(self.n_flows - 1)

    cdef void _release(self, uint32_t flow_id) noexcept nogil:
        # the flow is out of the table and nobody will ask for it again: once every flow of its
        # chunk is, the chunk goes
        cdef uint32_t k = flow_id >> FLOW_CHUNK_SHIFT
        self.released[k] += 1
        self.released_flows += 1
        if self.released[k] == FLOW_CHUNK:
            free(self.chunks[k])
            self.chunks[k] = NULL

    cdef bint _known(self, uint32_t flow_id) noexcept nogil:
        return flow_id < self.n_flows and self.chunks[flow_id >> FLOW_CHUNK_SHIFT] != NULL

    cdef int _assign(self, void* pv) noexcept nogil:
        cdef pkt_t* p = <pkt_t*>pv
        cdef flow_t key
        cdef flow_t* f
        cdef int src_is_a, c, idx
        cdef uint32_t h, j, old
        cdef uint8_t d, fl
        cdef int alen = 4 if p.ipver == 4 else 16
        memset(&key, 0, KEY_BYTES)   # the part compared and hashed
        c = memcmp(p.src, p.dst, alen)
        src_is_a = c < 0 or (c == 0 and p.sport <= p.dport)
        if src_is_a:
            memcpy(key.a, p.src, alen)
            memcpy(key.b, p.dst, alen)
            key.pa = p.sport
            key.pb = p.dport
        else:
            memcpy(key.a, p.dst, alen)
            memcpy(key.b, p.src, alen)
            key.pa = p.dport
            key.pb = p.sport
        key.proto = p.proto
        key.ipver = p.ipver
        if self.vlan_key:
            key.vlan[0] = p.vlan
            key.vlan[1] = p.vlan_inner
        h = key_hash(&key)
        j = h & self.mask
        idx = -1
        while self.slots[j].idx1:
            if self.slots[j].hash == h and same_key(flow_at(self, self.slots[j].idx1 - 1), &key):
                idx = <int>self.slots[j].idx1 - 1
                break
            j = (j + 1) & self.mask
        fl = p.tcp_flags
        if idx >= 0 and p.proto == 6 and (fl & (TH_SYN | TH_ACK)) == TH_SYN:
            f = flow_at(self, idx)
            d = 0 if (src_is_a == f.client_is_a) else 1
            if self._new_connection(f, d, p.seq):
                old = <uint32_t>idx
                idx = self._new_flow(&key)
                if idx < 0:
                    return -1
                flow_at(self, idx).prev = old
                flow_at(self, old).in_table = 0
                self.slots[j].idx1 = <uint32_t>idx + 1
                self.reused_tuples += 1
                f = flow_at(self, idx)
                f.client_is_a = src_is_a
                f.first_ts = p.ts_ns
        if idx < 0:
            idx = self._new_flow(&key)
            if idx < 0:
                return -1
            self.slots[j].hash = h
            self.slots[j].idx1 = <uint32_t>idx + 1
            self.used += 1
            f = flow_at(self, idx)
            # the client sends direction 0: the SYN's sender, the SYN-ACK's receiver; else as
            # the ports say (SERVICE_PORTS)
            if p.proto == 6 and (fl & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK):
                f.client_is_a = not src_is_a
            elif (p.proto != 6 or not (fl & TH_SYN)) and sent_by_server(p.sport, p.dport):
                f.client_is_a = not src_is_a
            else:
                f.client_is_a = src_is_a
            f.first_ts = p.ts_ns
            if self.used * 2 > self.mask + 1:
                if self._grow_slots() < 0:
                    return -1
        f = flow_at(self, idx)
        d = 0 if (src_is_a == f.client_is_a) else 1
        p.flow_id = <uint32_t>idx
        p.dir = d
        f.pkts[d] += 1
        f.bytes[d] += p.payload_len
        f.last_ts = p.ts_ns
        if p.proto == 6:
            if fl & (TH_FIN | TH_RST):
                f.closing = 1
            if fl & TH_SYN:
                if not f.syn_seen[d]:
                    f.syn_seen[d] = 1
                    f.isn[d] = p.seq
            if not f.seq_seen[d] or <int32_t>(p.seq - f.min_seq[d]) < 0:
                f.seq_seen[d] = 1
                f.min_seq[d] = p.seq
        return 0

    cdef bint _new_connection(self, const flow_t* f, uint8_t d, uint32_t seq) noexcept nogil:
        # A SYN (without ACK) starts a new connection on a known 5-tuple when it cannot belong
        # to the current one: that side already sent a SYN with another ISN, or the connection
        # was closing (FIN/RST) or has carried data (a midstream pickup) and the SYN does not
        # precede the bytes seen from that side (a reordered capture can deliver the SYN last:
        # ISN + 1 == lowest sequence seen).
        if f.syn_seen[d]:
            return f.isn[d] != seq
        if f.closing or f.bytes[0] or f.bytes[1]:
            return not (f.seq_seen[d] and <uint32_t>(seq + 1) == f.min_seq[d])
        return False

    def flow(self, uint32_t flow_id):
        """One flow as a dict (for tools and tests; not for per-packet use)."""
        if flow_id >= self.n_flows:
            raise IndexError(flow_id)
        if not self._known(flow_id):
            raise KeyError(f"flow {flow_id} was released (its connection ended long enough ago)")
        cdef flow_t* f = flow_at(self, flow_id)
        alen = 4 if f.ipver == 4 else 16
        a = (bytes(f.a[:alen]), f.pa)
        b = (bytes(f.b[:alen]), f.pb)
        client, server = (a, b) if f.client_is_a else (b, a)
        return {
            "id": flow_id, "proto": f.proto, "ipver": f.ipver, "client": client, "server": server,
            "vlan": (f.vlan[0], f.vlan[1]) if self.vlan_key else None,
            "packets": (f.pkts[0], f.pkts[1]), "bytes": (f.bytes[0], f.bytes[1]),
            "first_ts": f.first_ts, "last_ts": f.last_ts, "closing": bool(f.closing),
            "prev": None if f.prev == NONE32 else f.prev, "live": bool(f.in_table),
        }

    def vlan_counts(self):
        """{(outer VLAN id, inner VLAN id): [TCP connections, UDP flows]} over the flows not
        released (a summary at the end of a run: one step per flow, none per packet). Ids are 0
        without vlan_key."""
        cdef uint32_t i
        cdef flow_t* f
        cdef dict packed = {}
        for i in range(self.n_flows):
            if self._known(i):
                f = flow_at(self, i)
                k = ((<uint32_t>f.vlan[0] << 13) | (<uint32_t>f.vlan[1] << 1) | (f.proto != 6))
                packed[k] = packed.get(k, 0) + 1
        out = {}
        for k, n in packed.items():
            out.setdefault((k >> 13, (k >> 1) & 0xFFF), [0, 0])[k & 1] += n
        return out

    def remove(self, uint32_t flow_id):
        """Forget a flow's key (its id stays valid for `flow`); a later packet opens a new flow."""
        if flow_id >= self.n_flows:
            raise IndexError(flow_id)
        return self._remove(flow_id)

    cdef bint _remove(self, uint32_t flow_id) noexcept nogil:
        cdef flow_t* f
        cdef uint32_t j, k, want
        if not self._known(flow_id):
            return False
        f = flow_at(self, flow_id)
        if not f.in_table:
            return False
        j = key_hash(f) & self.mask
        while self.slots[j].idx1 and self.slots[j].idx1 != flow_id + 1:
            j = (j + 1) & self.mask
        if not self.slots[j].idx1:
            return False
        # backward-shift deletion keeps every probe sequence unbroken without tombstones
        self.slots[j].idx1 = 0
        k = (j + 1) & self.mask
        while self.slots[k].idx1:
            want = self.slots[k].hash & self.mask
            if ((k - want) & self.mask) >= ((k - j) & self.mask):
                self.slots[j] = self.slots[k]
                self.slots[k].idx1 = 0
                j = k
            k = (k + 1) & self.mask
        f.in_table = 0
        self.used -= 1
        return True

    # --- re-sharding: a flow handed from one table to another ---
    def live(self):
        """[(flow id, address a, address b)] of the flows in the table (whose packets it would
        place): what a re-shard hands over when their addresses' bucket moves."""
        cdef uint32_t i
        out = []
        for i in range(self.n_flows):
            if self._known(i) and flow_at(self, i).in_table:
                out.append((i, bytes(flow_at(self, i).a[:16]), bytes(flow_at(self, i).b[:16])))
        return out

    cdef int _adopt(self, const flow_t* src) noexcept nogil:
        # a flow another table placed (its packets, ISNs, closing flag) takes a new id here;
        # -1: out of memory, -2: its key is already in this table
        cdef uint32_t h = key_hash(src), j = h & self.mask
        cdef int idx
        while self.slots[j].idx1:
            if self.slots[j].hash == h and same_key(flow_at(self, self.slots[j].idx1 - 1), src):
                return -2
            j = (j + 1) & self.mask
        idx = self._new_flow(src)
        if idx < 0:
            return -1
        if src.proto == 6:
            self.tcp_connections -= 1        # counted by the table it began in
        else:
            self.udp_flows -= 1
        memcpy(flow_at(self, idx), src, sizeof(flow_t))
        flow_at(self, idx).prev = NONE32        # an earlier connection on the tuple stayed behind
        flow_at(self, idx).in_table = 1
        self.slots[j].hash = h
        self.slots[j].idx1 = <uint32_t>idx + 1
        self.used += 1
        if self.used * 2 > self.mask + 1 and self._grow_slots() < 0:
            return -1
        return idx
