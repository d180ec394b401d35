# cython: language_level=3
"""The record store's writer: one sparse record file per connection (format in format.py).

A Sink of the reassembly engine: delivered bytes, gaps, opens and closes, and every segment
(`on_packet`), which becomes a record. Records, gap entries and bytes are gathered per batch in
one staging arena, as runs of contiguous file ranges, and written at `publish` with one
pwritev(2) per run: a connection that got ten packets in a batch costs one system call per
region, not twenty, and the kernel copies into its page cache without the page faults and
unmapping that writing through shared mappings costs. On memory file systems (tmpfs) the header
alone is mapped, so that its counters are published with release stores; elsewhere it is written
with pwrite after the data (see MEMORY_FS). Descriptors and mappings are held for at most
`max_handles` connections at a time (least recently used are closed and reopened on demand), so
any number of live connections fits in the process's descriptor and vm.max_map_count limits.
A reader that sees a count sees everything it covers. The gateway also records module bitmaps,
gives back space (reclaim) and retires finished files.
"""
import os

from libc.errno cimport errno, ENOSPC
from libc.stdint cimport int32_t, int64_t, uint64_t, uint32_t, uint16_t, uint8_t
from libc.string cimport memcpy, memset, strerror
from libc.stdlib cimport calloc, malloc, realloc, free
from posix.fcntl cimport open as c_open, O_RDWR, O_CREAT, O_TRUNC
from posix.unistd cimport close as c_close, ftruncate, unlink, pwrite, pread
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED

from flowsift.errors import FlowsiftError
from flowsift.io._batch cimport Batch, pkt_t
from flowsift.reassembly._engine cimport Sink, Engine, conn_t, dir_t, CS_OPEN

cdef extern from "_atomic.h":
    void fs_publish_u64(uint64_t* p, uint64_t v) nogil
    void fs_publish_i64(int64_t* p, int64_t v) nogil

cdef extern from "sys/vfs.h" nogil:
    struct statfs_t "statfs":
        long f_type
    int statfs(const char* path, statfs_t* buf)

cdef extern from "sys/uio.h" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t pwritev(int fd, const iovec* iov, int iovcnt, int64_t offset)

cdef extern from "fcntl.h" nogil:
    int fallocate(int fd, int mode, int64_t offset, int64_t length)
    enum: FALLOC_FL_PUNCH_HOLE
    enum: FALLOC_FL_KEEP_SIZE

# --- format constants (mirror flowsift/streams/format.py) --------------------------------
DEF HEADER_SIZE = 4096
DEF RECORD_SIZE = 128
DEF GAP_SIZE = 32
DEF RECORDS_OFF = 4096
DEF VERSION = 1
DEF HF_CLOSED = 1
DEF HF_KEEP = 2

cdef extern from *:
    """
    #define FS_GAPS_OFF (1LL << 39)
    #define FS_DATA0_OFF (1LL << 40)
    #define FS_DATA1_OFF (1LL << 42)
    #define FS_FILE_SIZE (1LL << 43)
    """
    const int64_t GAPS_OFF "FS_GAPS_OFF"
    const int64_t DATA0_OFF "FS_DATA0_OFF"
    const int64_t DATA1_OFF "FS_DATA1_OFF"
    const int64_t FILE_SIZE "FS_FILE_SIZE"

# Connections whose file is open at once (a descriptor and a header mapping each) is sized at
# start from the process's limits (see _handle_budget); never fewer than this.
DEF MIN_HANDLES = 64
# The staging arena is written out before it grows past this, even within a batch.
DEF ARENA_FLUSH = 33554432
# iovecs per pwritev (IOV_MAX is 1024 on Linux)
DEF MAX_IOV = 1024
# records read back at a time when setting module bits or finding what is complete
DEF CHUNK_RECS = 512
# Before each batch the gateway checks that the store's file system has at least this much
# free, plus four times the batch's captured bytes (more than a batch can write), and stops
# cleanly otherwise: a full tmpfs starves the whole machine, and the store's manifest must
# still be written to say the store is incomplete.
DEF FREE_MARGIN = 16777216

# File systems whose pages live in memory, where the header is written through a shared mapping
# (its counters are published with release stores). On disk file systems every first write to
# a page of a mapping faults into the file system (measured here: milliseconds on ext4), so
# there the header is written with pwrite too.
MEMORY_FS = (0x01021994, 0x858458F6)    # tmpfs, ramfs

# the regions of a record file that are written in runs
DEF R_RECORDS = 0
DEF R_GAPS = 1
DEF R_DATA0 = 2
DEF R_DATA1 = 3
DEF N_REGION = 4

ctypedef struct hdr_t:           # the header's first 232 bytes, at their offsets (format.py)
    uint8_t magic[8]
    uint32_t version
    uint32_t header_size
    uint32_t record_size
    uint32_t flags
    uint64_t conn
    uint64_t first_record_id
    uint64_t records
    uint64_t gaps
    uint8_t ipver
    uint8_t proto
    uint16_t _pad0
    uint16_t client_port
    uint16_t server_port
    uint8_t client_addr[16]
    uint8_t server_addr[16]
    uint64_t records_off
    uint64_t gaps_off
    uint64_t data_off[2]
    int64_t origin[2]
    int64_t end[2]
    int64_t acked[2]
    int64_t reclaimed[2]
    int64_t first_ts
    int64_t last_ts
    uint8_t settled[2]
    uint8_t close[2]
    uint8_t midstream[2]
    uint8_t _pad1[2]
    uint64_t modules_mask
    uint64_t oldest_unacked_done

ctypedef struct rec_t:
    uint64_t record_id
    int64_t ts_ns
    uint64_t modules
    int64_t seq_offset
    uint32_t payload_len
    uint32_t payload_wirelen
    uint32_t seq
    uint32_t ack
    uint16_t window
    uint8_t tcp_flags
    uint8_t dir
    uint16_t rflags
    uint8_t ipver
    uint8_t proto
    uint16_t sport
    uint16_t dport
    uint32_t caplen
    uint8_t src[16]
    uint8_t dst[16]
    uint32_t wirelen
    uint32_t _pad0
    uint64_t frame_pos
    uint8_t _pad[16]

ctypedef struct gap_t:
    uint8_t dir
    uint8_t reason
    uint8_t _pad[6]
    uint64_t record_index
    int64_t offset
    int64_t length

ctypedef struct cstate_t:
    uint8_t exists           # a file was created for this connection
    uint8_t closed
    uint8_t touched          # in this batch's publish list
    uint8_t _pad
    int32_t handle           # index in the handle table, or -1
    uint64_t records
    uint64_t gaps
    uint64_t first_id
    int64_t udp_end[2]       # data written so far for a UDP direction (datagrams are appended)
    int64_t udp_rec[2]       # the same, advanced as records are written
    int64_t pub_end[2]       # stream ends as last published (what readers were told)
    uint64_t done_mask       # modules that finished every record
    int64_t pub_last_ts      # the last packet's time as last published
    int32_t run[N_REGION]    # this arena's open run of each region, or -1
    int32_t runs             # this arena's first run of the connection, or -1

ctypedef struct run_t:       # a contiguous file range of one connection waiting in the arena
    uint32_t conn
    int32_t next             # the connection's next run, or -1
    int32_t first            # its pieces (a chain through piece_t.next)
    int32_t last
    int64_t off              # file offset
    int64_t len              # bytes; 0 once written

ctypedef struct piece_t:     # bytes of a run that are contiguous in the arena
    int64_t pos
    int64_t len
    int32_t next

ctypedef struct handle_t:
    int fd
    uint32_t conn
    uint64_t stamp
    hdr_t* hdr


def _handle_budget():
    """How many record files may be open at once: within the descriptor limit (raised to its
    hard limit if need be) and vm.max_map_count (each open file holds one mapping)."""
    from flowsift.limits import descriptor_limit, max_map_count
    soft, max_maps = descriptor_limit(), max_map_count()
    # leave half for readers in the same process (an inline chain maps and opens files too)
    return max(MIN_HANDLES, min((soft - 256) // 2, (max_maps - 8192) // 4, 8192))


cdef inline uint64_t splitmix64(uint64_t* state) noexcept nogil:
    state[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef class RecordStore(Sink):
    """Writes record files for every connection into `directory` (see format.py)."""
    cdef readonly str directory
    cdef readonly bint keep
    cdef Engine engine
    cdef cstate_t* cs
    cdef uint32_t cap
    cdef handle_t* handles
    cdef readonly int max_handles
    cdef int* free_slots             # handle slots not in use (a stack), so opening is O(1)
    cdef int n_free
    cdef uint64_t clock
    cdef uint64_t rng
    cdef uint32_t* touched
    cdef uint32_t n_touched
    cdef uint32_t cap_touched
    cdef readonly uint64_t files
    cdef readonly uint64_t records_written
    cdef readonly uint64_t bytes_written
    cdef readonly uint64_t reopens
    cdef readonly uint64_t late_packets
    cdef readonly uint64_t modules_mask
    cdef readonly uint64_t reclaimed_bytes
    cdef readonly uint64_t retired
    cdef readonly bint mapped        # the header is written through a mapping (memory file systems)
    cdef list just_closed            # connections closed since the last publish
    cdef uint8_t* arena              # bytes waiting to be written (see the module's docstring)
    cdef int64_t arena_used
    cdef int64_t arena_cap
    cdef run_t* runs_
    cdef int32_t n_runs
    cdef int32_t cap_runs
    cdef piece_t* pieces
    cdef int32_t n_pieces
    cdef int32_t cap_pieces
    cdef iovec* iov
    cdef rec_t* rbuf                 # records read back (CHUNK_RECS)
    cdef readonly uint64_t writes    # pwritev calls

    def __init__(self, str directory, bint keep=False, max_handles=None):
        cdef int k
        cdef statfs_t sf
        self.directory = directory
        self.keep = keep
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise FlowsiftError(f"{directory}: cannot create the store: {e.strerror}") from None
        if not os.access(directory, os.W_OK):
            raise FlowsiftError(f"{directory}: store directory is not writable")
        self.mapped = statfs(directory.encode(), &sf) == 0 and sf.f_type in MEMORY_FS
        self.max_handles = _handle_budget() if max_handles is None else max(MIN_HANDLES, int(max_handles))
        self.handles = <handle_t*> calloc(self.max_handles, sizeof(handle_t))
        self.free_slots = <int*> calloc(self.max_handles, sizeof(int))
        self.iov = <iovec*> malloc(MAX_IOV * sizeof(iovec))
        self.rbuf = <rec_t*> malloc(CHUNK_RECS * sizeof(rec_t))
        if self.handles == NULL or self.free_slots == NULL or self.iov == NULL or self.rbuf == NULL:
            raise MemoryError()
        for k in range(self.max_handles):
            self.free_slots[k] = self.max_handles - 1 - k
        self.n_free = self.max_handles
        self.just_closed = []
        self.rng = int.from_bytes(os.urandom(8), "little")
        for k in range(self.max_handles):
            self.handles[k].fd = -1

    def __dealloc__(self):
        cdef int k
        if self.handles != NULL:
            for k in range(self.max_handles):
                self._close_handle(k)
            free(self.handles)
        free(self.free_slots)
        free(self.cs)
        free(self.touched)
        free(self.arena)
        free(self.runs_)
        free(self.pieces)
        free(self.iov)
        free(self.rbuf)

    def attach(self, Engine engine):
        """The engine whose connections this store records (for per-direction state)."""
        self.engine = engine

    def path(self, uint32_t conn):
        return os.path.join(self.directory, f"c{conn:08d}.rec")

    # --- handles and windows ---------------------------------------------------------------

    cdef cstate_t* _state(self, uint32_t conn) except NULL:
        cdef uint32_t cap
        cdef cstate_t* grown
        if conn >= self.cap:
            cap = self.cap if self.cap else 1024
            while cap <= conn:
                cap *= 2
            grown = <cstate_t*> realloc(self.cs, cap * sizeof(cstate_t))
            if grown == NULL:
                raise MemoryError()
            memset(&grown[self.cap], 0, (cap - self.cap) * sizeof(cstate_t))
            for k in range(self.cap, cap):
                grown[k].handle = -1
                grown[k].runs = -1
                grown[k].run[0] = grown[k].run[1] = grown[k].run[2] = grown[k].run[3] = -1
            self.cs = grown
            self.cap = cap
        return &self.cs[conn]

    cdef void _close_handle(self, int k) noexcept nogil:
        # the connection's runs must have been written first (_flush_conn)
        cdef handle_t* h = &self.handles[k]
        if h.fd < 0:
            return
        if h.hdr != NULL:
            if self.mapped:
                munmap(h.hdr, HEADER_SIZE)
            else:
                free(h.hdr)
            h.hdr = NULL
        c_close(h.fd)
        h.fd = -1
        if self.cs != NULL and h.conn < self.cap:
            self.cs[h.conn].handle = -1
        if self.free_slots != NULL:
            self.free_slots[self.n_free] = k
            self.n_free += 1

    cdef handle_t* _handle(self, uint32_t conn, bint create) except NULL:
        cdef cstate_t* st = self._state(conn)
        cdef int k, victim = 0, fd
        cdef void* m
        cdef handle_t* h
        self.clock += 1
        if st.handle >= 0:
            self.handles[st.handle].stamp = self.clock
            return &self.handles[st.handle]
        if self.n_free == 0:
            # every slot busy: close the least recently used (a scan, but only when full)
            for k in range(self.max_handles):
                if self.handles[k].stamp < self.handles[victim].stamp:
                    victim = k
            self._flush_conn(self.handles[victim].conn)
            self._close_handle(victim)
        path = self.path(conn).encode()
        if create:
            # created under a temporary name; on_open renames it once the header is written,
            # so a reader never finds a record file without its header
            path = (self.path(conn) + ".new").encode()
            fd = c_open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
            if fd >= 0 and ftruncate(fd, FILE_SIZE) != 0:
                c_close(fd)
                fd = -1
        else:
            fd = c_open(path, O_RDWR, 0)
            self.reopens += 1
        if fd < 0:
            raise FlowsiftError(f"{self.directory}: cannot write record file {os.path.basename(path.decode())}: "
                                f"{strerror(errno).decode()}")
        if self.mapped:
            if create:
                # the header's page is allocated by a write, where a full file system is an
                # error (ENOSPC), not a SIGBUS at the first store through the mapping
                m = calloc(1, HEADER_SIZE)
                if m == NULL:
                    c_close(fd)
                    raise MemoryError()
                try:
                    self._pwrite(fd, m, HEADER_SIZE, 0)
                except BaseException:
                    c_close(fd)
                    raise
                finally:
                    free(m)
            m = mmap(NULL, HEADER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            if m == MAP_FAILED:
                c_close(fd)
                raise FlowsiftError(f"{self.directory}: cannot map a record file: {strerror(errno).decode()}")
        else:
            # the header lives in memory and is written out at each publish
            m = calloc(1, HEADER_SIZE)
            if m == NULL:
                c_close(fd)
                raise MemoryError()
            if not create and pread(fd, m, HEADER_SIZE, 0) != HEADER_SIZE:
                free(m)
                c_close(fd)
                raise FlowsiftError(f"{self.directory}: cannot read back a record file header: {strerror(errno).decode()}")
        self.n_free -= 1
        k = self.free_slots[self.n_free]
        h = &self.handles[k]
        h.fd = fd
        h.conn = conn
        h.stamp = self.clock
        h.hdr = <hdr_t*> m
        st.handle = k
        return h

    cdef int _pwrite(self, int fd, const void* src, int64_t n, int64_t off) except -1:
        cdef int64_t w
        while n > 0:
            w = pwrite(fd, src, n, off)
            if w < 0:
                self._write_error()
            n -= w
            off += w
            src = <const uint8_t*>src + w
        return 0

    cdef int _write_error(self) except -1:
        if errno == ENOSPC:
            raise FlowsiftError(f"{self.directory}: store is full (no space left on device); "
                                f"the connections being written are incomplete")
        raise FlowsiftError(f"{self.directory}: cannot write a record file: {strerror(errno).decode()}")

    # --- the staging arena --------------------------------------------------------------------

    cdef int _write(self, uint32_t conn, cstate_t* st, int region, int64_t off, const uint8_t* src, int64_t n) except -1:
        # queue n bytes for file offset `off`: they join the region's open run when they follow
        # it, and its last piece when they follow that in the arena too
        cdef int32_t r = st.run[region]
        cdef run_t* run
        cdef piece_t* pc
        cdef int64_t cap
        cdef void* grown
        if n <= 0:
            return 0
        if self.arena_used + n > self.arena_cap:
            if self.arena_used and self.arena_used + n > ARENA_FLUSH:
                self._flush_all()
                r = -1
            if self.arena_used + n > self.arena_cap:
                cap = self.arena_cap * 2 if self.arena_cap else 1 << 20
                while cap < self.arena_used + n:
                    cap *= 2
                grown = realloc(self.arena, cap)
                if grown == NULL:
                    raise MemoryError()
                self.arena = <uint8_t*> grown
                self.arena_cap = cap
        memcpy(self.arena + self.arena_used, src, n)
        if r >= 0 and self.runs_[r].off + self.runs_[r].len == off:
            run = &self.runs_[r]
            pc = &self.pieces[run.last]
            if pc.pos + pc.len == self.arena_used:
                pc.len += n
                run.len += n
                self.arena_used += n
                return 0
            self._piece(run)
            self.pieces[run.last].pos = self.arena_used
            self.pieces[run.last].len = n
            run.len += n
            self.arena_used += n
            return 0
        if self.n_runs == self.cap_runs:
            self.cap_runs = self.cap_runs * 2 if self.cap_runs else 1024
            grown = realloc(self.runs_, self.cap_runs * sizeof(run_t))
            if grown == NULL:
                raise MemoryError()
            self.runs_ = <run_t*> grown
        r = self.n_runs
        self.n_runs += 1
        run = &self.runs_[r]
        run.conn = conn
        run.off = off
        run.len = n
        run.first = -1
        self._piece(run)
        self.pieces[run.first].pos = self.arena_used
        self.pieces[run.first].len = n
        self.arena_used += n
        # a connection's runs never overlap (bytes are delivered once, records and gap entries
        # are appended, edits are written after a flush), so their order does not matter
        run.next = st.runs
        st.runs = r
        st.run[region] = r
        self._touch(conn, st)
        return 0

    cdef int _piece(self, run_t* run) except -1:
        # a new last piece for `run`
        cdef void* grown
        cdef int32_t k
        if self.n_pieces == self.cap_pieces:
            self.cap_pieces = self.cap_pieces * 2 if self.cap_pieces else 4096
            grown = realloc(self.pieces, self.cap_pieces * sizeof(piece_t))
            if grown == NULL:
                raise MemoryError()
            self.pieces = <piece_t*> grown
        k = self.n_pieces
        self.n_pieces += 1
        self.pieces[k].next = -1
        if run.first < 0:
            run.first = k
        else:
            self.pieces[run.last].next = k
        run.last = k
        return 0

    cdef int _write_run(self, int fd, run_t* run) except -1:
        cdef int32_t k = run.first
        cdef int cnt, i
        cdef int64_t off = run.off, done
        while k >= 0:
            cnt = 0
            while k >= 0 and cnt < MAX_IOV:
                self.iov[cnt].iov_base = self.arena + self.pieces[k].pos
                self.iov[cnt].iov_len = self.pieces[k].len
                cnt += 1
                k = self.pieces[k].next
            # a short write goes on from where it stopped
            i = 0
            while i < cnt:
                done = pwritev(fd, &self.iov[i], cnt - i, off)
                self.writes += 1
                if done < 0:
                    self._write_error()
                off += done
                while i < cnt and done >= <int64_t>self.iov[i].iov_len:
                    done -= self.iov[i].iov_len
                    i += 1
                if i < cnt:
                    self.iov[i].iov_base = <uint8_t*>self.iov[i].iov_base + done
                    self.iov[i].iov_len -= done
        run.len = 0
        return 0

    cdef int _flush_conn(self, uint32_t conn) except -1:
        # write out a connection's runs now (before its file is closed, read back or published)
        cdef cstate_t* st
        cdef int32_t r
        cdef handle_t* h
        if conn >= self.cap:
            return 0
        st = &self.cs[conn]
        r = st.runs
        if r < 0:
            return 0
        h = self._handle(conn, False)
        while r >= 0:
            if self.runs_[r].len:
                self._write_run(h.fd, &self.runs_[r])
            r = self.runs_[r].next
        st.runs = -1
        st.run[0] = st.run[1] = st.run[2] = st.run[3] = -1
        return 0

    cdef int _flush_all(self) except -1:
        # every run in the arena, in the order they were opened; then the arena is empty
        cdef int32_t r
        cdef cstate_t* st
        for r in range(self.n_runs):
            st = &self.cs[self.runs_[r].conn]
            if self.runs_[r].len:
                self._write_run(self._handle(self.runs_[r].conn, False).fd, &self.runs_[r])
            st.runs = -1
            st.run[0] = st.run[1] = st.run[2] = st.run[3] = -1
        self.n_runs = 0
        self.n_pieces = 0
        self.arena_used = 0
        return 0

    cdef int _drop_runs(self) except -1:
        # forget what waits in the arena (after an error)
        cdef int32_t r
        cdef cstate_t* st
        for r in range(self.n_runs):
            st = &self.cs[self.runs_[r].conn]
            st.runs = -1
            st.run[0] = st.run[1] = st.run[2] = st.run[3] = -1
        self.n_runs = 0
        self.n_pieces = 0
        self.arena_used = 0
        return 0

    cdef void _touch(self, uint32_t conn, cstate_t* st) noexcept nogil:
        cdef uint32_t* grown
        if st.touched:
            return
        if self.n_touched == self.cap_touched:
            self.cap_touched = 256 if self.cap_touched == 0 else self.cap_touched * 2
            grown = <uint32_t*> realloc(self.touched, self.cap_touched * sizeof(uint32_t))
            if grown == NULL:
                return          # publishing this one waits for its close
            self.touched = grown
        st.touched = 1
        self.touched[self.n_touched] = conn
        self.n_touched += 1

    # --- sink -------------------------------------------------------------------------------

    cdef int on_open(self, uint32_t conn, object engine) except -1:
        cdef cstate_t* st = self._state(conn)
        cdef handle_t* h = self._handle(conn, True)
        cdef conn_t* c = &self.engine.conns[conn]
        cdef hdr_t* hd = h.hdr
        memcpy(hd.magic, b"FSRECORD", 8)
        hd.version = VERSION
        hd.header_size = HEADER_SIZE
        hd.record_size = RECORD_SIZE
        hd.flags = HF_KEEP if self.keep else 0
        hd.conn = conn
        st.first_id = splitmix64(&self.rng)      # SIFT: record ids start at a random 64-bit value
        hd.first_record_id = st.first_id
        hd.ipver = c.ipver
        hd.proto = c.proto
        hd.client_port = c.cport
        hd.server_port = c.sport
        memcpy(hd.client_addr, c.client, 16)
        memcpy(hd.server_addr, c.server, 16)
        hd.records_off = RECORDS_OFF
        hd.gaps_off = GAPS_OFF
        hd.data_off[0] = DATA0_OFF
        hd.data_off[1] = DATA1_OFF
        hd.acked[0] = -1
        hd.acked[1] = -1
        hd.first_ts = c.first_ts
        hd.modules_mask = self.modules_mask
        if not self.mapped:
            self._pwrite(h.fd, hd, sizeof(hdr_t), 0)
        final = self.path(conn)
        try:
            os.rename(final + ".new", final)
        except OSError as e:
            raise FlowsiftError(f"{final}: cannot create the record file: {e.strerror}") from None
        st.exists = 1
        st.closed = 0
        st.records = 0
        st.gaps = 0
        st.udp_end[0] = st.udp_end[1] = 0
        st.pub_end[0] = st.pub_end[1] = 0
        st.udp_rec[0] = st.udp_rec[1] = 0
        st.done_mask = 0
        st.pub_last_ts = c.first_ts
        self.files += 1
        return 0

    cdef int on_data(self, uint32_t conn, int d, int64_t offset, const uint8_t* data, uint32_t n) except -1:
        self._write(conn, self._state(conn), R_DATA0 + d, (DATA1_OFF if d else DATA0_OFF) + offset, data, n)
        self.bytes_written += n
        return 0

    cdef int on_datagram(self, uint32_t conn, int d, int64_t ts, const uint8_t* data, uint32_t n) except -1:
        cdef cstate_t* st = self._state(conn)
        self._write(conn, st, R_DATA0 + d, (DATA1_OFF if d else DATA0_OFF) + st.udp_end[d], data, n)
        st.udp_end[d] += n
        self.bytes_written += n
        return 0

    cdef int on_gap(self, uint32_t conn, int d, int64_t offset, int64_t length, int reason) except -1:
        cdef cstate_t* st = self._state(conn)
        cdef gap_t g
        memset(&g, 0, sizeof(gap_t))
        g.dir = d
        g.reason = reason
        g.record_index = st.records
        g.offset = offset
        g.length = length
        self._write(conn, st, R_GAPS, GAPS_OFF + <int64_t>st.gaps * GAP_SIZE, <const uint8_t*>&g, GAP_SIZE)
        st.gaps += 1
        self._touch(conn, st)
        return 0

    cdef int on_close(self, uint32_t conn, object engine) except -1:
        cdef cstate_t* st = self._state(conn)
        if not st.exists:
            return 0
        self._publish(conn, True)
        st.closed = 1
        self.just_closed.append(conn)
        if st.handle >= 0:
            self._close_handle(st.handle)
        return 0

    def abort(self):
        """Stop writing (after an error): close every file as it is, CLOSED flags left clear."""
        cdef int k
        self._drop_runs()
        for k in range(self.max_handles):
            self._close_handle(k)
        if self.cs != NULL:
            for k in range(self.cap):
                self.cs[k].closed = 1

    # --- records ----------------------------------------------------------------------------

    cdef int on_packet(self, uint32_t conn, pkt_t* p) except -1:
        # one record per segment, in arrival order
        cdef cstate_t* st = self._state(conn)
        cdef rec_t r
        if not st.exists or st.closed:
            self.late_packets += 1
            return 0
        memset(&r, 0, sizeof(rec_t))
        r.record_id = st.first_id + st.records
        r.ts_ns = p.ts_ns
        if p.proto == 17:
            r.seq_offset = st.udp_rec[p.dir]
            st.udp_rec[p.dir] += p.payload_len
        else:
            r.seq_offset = p.stream_off
        r.payload_len = p.payload_len
        r.payload_wirelen = p.payload_wirelen
        r.seq = p.seq
        r.ack = p.ack
        r.window = p.window
        r.tcp_flags = p.tcp_flags
        r.dir = p.dir
        r.rflags = p.rflags
        r.ipver = p.ipver
        r.proto = p.proto
        r.sport = p.sport
        r.dport = p.dport
        r.caplen = p.caplen
        r.wirelen = p.wirelen
        r.frame_pos = p.rec_pos
        memcpy(r.src, p.src, 16)
        memcpy(r.dst, p.dst, 16)
        self._write(conn, st, R_RECORDS, RECORDS_OFF + <int64_t>st.records * RECORD_SIZE, <const uint8_t*>&r, RECORD_SIZE)
        st.records += 1
        self.records_written += 1
        self._touch(conn, st)
        return 0

    def publish(self):
        """Make everything written so far visible to readers (header counters). Returns the
        connections that changed since the last publish and those that ended (for in-process
        readers such as an inline chain)."""
        cdef uint32_t k
        self._flush_all()
        touched = [self.touched[k] for k in range(self.n_touched)]
        for k in range(self.n_touched):
            self.cs[self.touched[k]].touched = 0
            if not self.cs[self.touched[k]].closed:
                self._publish(self.touched[k], False)
        self.n_touched = 0
        closed, self.just_closed = self.just_closed, []
        return touched, closed

    cdef int _publish(self, uint32_t conn, bint final) except -1:
        cdef cstate_t* st = &self.cs[conn]
        cdef handle_t* h
        self._flush_conn(conn)
        h = self._handle(conn, False)
        cdef hdr_t* hd = h.hdr
        cdef conn_t* c = &self.engine.conns[conn]
        cdef dir_t* D
        cdef int d
        for d in range(2):
            D = &c.d[d]
            hd.settled[d] = D.settled
            hd.midstream[d] = D.midstream
            fs_publish_i64(&hd.origin[d], D.origin)
            if c.proto == 17:
                fs_publish_i64(&hd.end[d], st.udp_end[d])
                st.pub_end[d] = st.udp_end[d]
            elif D.settled:
                fs_publish_i64(&hd.end[d], D.next - D.origin)
                st.pub_end[d] = D.next - D.origin
            if D.has_ack and D.settled:
                fs_publish_i64(&hd.acked[d], D.acked - D.origin)
            if final:
                hd.close[d] = D.close_reason if D.close_reason else c.close_reason
        hd.last_ts = c.last_ts
        st.pub_last_ts = c.last_ts
        hd.modules_mask = self.modules_mask
        fs_publish_u64(&hd.gaps, st.gaps)
        fs_publish_u64(&hd.records, st.records)
        if final:
            hd.flags |= HF_CLOSED
        if not self.mapped:
            # pwrites are ordered: the records and bytes written before are in the file first
            self._pwrite(h.fd, hd, sizeof(hdr_t), 0)
        return 0

    def write_data(self, uint32_t conn, int d, int64_t offset, bytes data):
        """Merge a verified payload edit: the gateway, the only writer, overwrites stream bytes in
        place (same length), so every later reader sees the merged bytes."""
        cdef cstate_t* st = self._state(conn)
        cdef handle_t* h
        if not st.exists:
            raise KeyError(conn)
        self._flush_conn(conn)
        h = self._handle(conn, False)
        self._pwrite(h.fd, <const uint8_t*><char*>data, len(data), (DATA1_OFF if d else DATA0_OFF) + offset)

    def latest(self, conns):
        """(records published, latest record id, closed) of each connection: what the registry
        announces once per batch."""
        cdef uint32_t conn
        cdef cstate_t* st
        out = []
        for conn in conns:
            st = self._state(conn)
            out.append((st.records, st.first_id + st.records - 1 if st.records else 0, bool(st.closed)))
        return out

    def published(self, conns):
        """(records, gaps, end0, end1, last_ts) of each connection as last published: what a
        reader that is behind may read of it, so that it sees the batches one by one."""
        cdef uint32_t conn
        cdef cstate_t* st
        out = []
        for conn in conns:
            st = self._state(conn)
            out.append((st.records, st.gaps, st.pub_end[0], st.pub_end[1], st.pub_last_ts))
        return out

    def identity(self, uint32_t conn):
        """(proto, ipver, client address bytes, client port, server address bytes, server port)."""
        cdef conn_t* c = &self.engine.conns[conn]
        n = 4 if c.ipver == 4 else 16
        return (c.proto, c.ipver, bytes(c.client[:n]), c.cport, bytes(c.server[:n]), c.sport)

    # --- re-sharding: a connection's file handed to another store -----------------------------

    def export_conn(self, uint32_t conn):
        """Hand an open connection's record file over to another store (re-sharding): returns
        (its writing state, its path), or None if it has no open file here. This store writes
        nothing more to it."""
        cdef cstate_t* st = self._state(conn)
        if not st.exists or st.closed:
            return None
        self._flush_conn(conn)
        if st.handle >= 0:
            self._close_handle(st.handle)
        out = ((<char*>st)[:sizeof(cstate_t)], self.path(conn))
        st.exists = 0
        st.closed = 1
        return out

    def adopt_conn(self, uint32_t conn, bytes state, str path):
        """Take over a record file `export_conn` gave, as connection `conn`: the file moves into
        this store under its new name, and writing goes on where it stopped (same record ids,
        offsets and gaps)."""
        cdef cstate_t* st = self._state(conn)
        cdef handle_t* h
        if st.exists:
            raise ValueError(f"connection {conn} already has a record file")
        memcpy(st, <const char*>state, sizeof(cstate_t))
        st.handle = -1
        st.touched = 0
        st.runs = -1
        st.run[0] = st.run[1] = st.run[2] = st.run[3] = -1
        final = self.path(conn)
        try:
            os.rename(path, final)
        except OSError as e:
            raise FlowsiftError(f"{final}: cannot take over the record file {path}: {e.strerror}") from None
        h = self._handle(conn, False)
        self.reopens -= 1                   # an adoption, not a reopen
        h.hdr.conn = conn
        h.hdr.modules_mask = self.modules_mask
        if not self.mapped:
            self._pwrite(h.fd, h.hdr, sizeof(hdr_t), 0)
        return 0

    # --- modules, acknowledgements, reclaiming ------------------------------------------------

    def register_module(self, int bit):
        """A module takes bit `bit` of the global bitmap (0..63)."""
        if not 0 <= bit < 64:
            raise ValueError("module bits are 0..63")
        self.modules_mask |= (<uint64_t>1) << bit

    def release_module(self, int bit):
        self.modules_mask &= ~((<uint64_t>1) << bit)

    cdef int _read_records(self, handle_t* h, uint64_t start, uint64_t n) except -1:
        # records [start, start + n) into rbuf (n <= CHUNK_RECS; the connection's runs written)
        cdef int64_t want = <int64_t>n * RECORD_SIZE, got = 0, k
        while got < want:
            k = pread(h.fd, <uint8_t*>self.rbuf + got, want - got, RECORDS_OFF + <int64_t>start * RECORD_SIZE + got)
            if k <= 0:
                raise FlowsiftError(f"{self.directory}: cannot read back a record: "
                                    f"{strerror(errno).decode() if k < 0 else 'file cut short'}")
            got += k
        return 0

    def module_done(self, uint32_t conn, int bit, uint64_t upto):
        """Module `bit` finished records [0, upto) of `conn`: set its bit in them (the gateway is
        the only writer; modules report, the gateway records). Then reclaim what is complete and
        acknowledged. Returns the connection's state as reclaim() does."""
        cdef cstate_t* st = self._state(conn)
        cdef handle_t* h
        cdef uint64_t i = 0, j, n, mask = (<uint64_t>1) << bit
        cdef bint changed
        if not st.exists:
            raise KeyError(conn)
        if upto >= st.records:
            st.done_mask |= mask
        if self._retire_at_once(conn, st):
            return {"complete": st.records, "reclaimed": None, "oldest_unacked_done": st.records, "retired": True}
        if upto > st.records:
            upto = st.records
        self._flush_conn(conn)
        h = self._handle(conn, False)
        while i < upto:
            n = upto - i if upto - i < CHUNK_RECS else CHUNK_RECS
            self._read_records(h, i, n)
            changed = False
            for j in range(n):
                if not (self.rbuf[j].modules & mask):
                    self.rbuf[j].modules |= mask
                    changed = True
            if changed:
                self._pwrite(h.fd, self.rbuf, <int64_t>n * RECORD_SIZE, RECORDS_OFF + <int64_t>i * RECORD_SIZE)
            i += n
        return self.reclaim(conn)

    cdef bint _retire_at_once(self, uint32_t conn, cstate_t* st) except -1:
        # The common end of a connection: closed, every module done with every record, all its
        # bytes acknowledged. Its file goes without being opened again to set bits in records
        # that nobody will read. Anything less certain takes the long way (reclaim).
        cdef conn_t* c = &self.engine.conns[conn]
        cdef dir_t* D
        cdef int d
        if not st.closed or self.keep or self.modules_mask == 0 or (st.done_mask & self.modules_mask) != self.modules_mask:
            return False
        if c.proto == 6:
            for d in range(2):
                D = &c.d[d]
                if st.pub_end[d] > 0 and not (D.has_ack and D.settled and D.acked - D.origin >= st.pub_end[d]):
                    return False
        self._retire(conn, st)
        return True

    cdef int _retire(self, uint32_t conn, cstate_t* st) except -1:
        # every module is done with every record and nothing waits for an ACK: the file goes
        self._flush_conn(conn)
        if st.handle >= 0:
            self._close_handle(st.handle)
        try:
            os.unlink(self.path(conn))
        except FileNotFoundError:
            pass
        st.exists = 0
        self.retired += 1
        return 0

    def reclaim(self, uint32_t conn):
        """Give back the space of records every registered module finished and the receiver
        acknowledged: their stream bytes are punched out (offsets stay valid). Nothing is given
        back with keep, or while no module is registered (nobody said what "done" means).
        Returns {"complete": records complete, "reclaimed": [bytes per direction], "oldest_unacked_done": i}."""
        cdef cstate_t* st = self._state(conn)
        cdef handle_t* h
        cdef hdr_t* hd
        cdef conn_t* c = &self.engine.conns[conn]
        cdef rec_t* r
        cdef uint64_t i, j, n, complete, oldest
        cdef bint in_prefix
        cdef int64_t bound[2]
        cdef int64_t acked[2]
        cdef int64_t start, stop, data_off
        cdef int d
        if not st.exists:
            raise KeyError(conn)
        self._flush_conn(conn)
        h = self._handle(conn, False)
        hd = h.hdr
        mask = self.modules_mask
        for d in range(2):
            acked[d] = hd.acked[d]
            bound[d] = -1
        # One pass: the complete prefix (records whose bitmap holds every registered module's
        # bit), the oldest record in it not yet acknowledged, and for each direction the offset
        # of its first record past the prefix (bytes below it are complete).
        complete = st.records
        oldest = st.records
        in_prefix = True
        i = 0
        while i < st.records:
            n = st.records - i if st.records - i < CHUNK_RECS else CHUNK_RECS
            self._read_records(h, i, n)
            for j in range(n):
                r = &self.rbuf[j]
                d = r.dir & 1
                if in_prefix and mask != 0 and (r.modules & mask) == mask:
                    if oldest == st.records and c.proto == 6 and r.payload_len and \
                            r.seq_offset - hd.origin[d] + r.payload_len > acked[d]:
                        oldest = i + j      # done by every module, not yet acknowledged
                    continue
                if in_prefix:
                    in_prefix = False
                    complete = i + j
                if bound[d] < 0:
                    bound[d] = r.seq_offset - hd.origin[d] if c.proto == 6 else r.seq_offset
                    if bound[0] >= 0 and bound[1] >= 0:
                        break
            if not in_prefix and bound[0] >= 0 and bound[1] >= 0:
                break
            i += n
        if oldest > complete:
            oldest = complete
        out = []
        for d in range(2):
            if bound[d] < 0:
                bound[d] = hd.end[d]
            stop = acked[d] if acked[d] < bound[d] else bound[d]
            if self.keep or mask == 0 or c.proto != 6:
                stop = hd.reclaimed[d]
            stop &= ~(<int64_t>4095)
            start = (hd.reclaimed[d] + 4095) & ~(<int64_t>4095)
            data_off = DATA1_OFF if d else DATA0_OFF
            if stop > start:
                if fallocate(h.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, data_off + start, stop - start) != 0:
                    raise FlowsiftError(f"{self.directory}: cannot give back space: {strerror(errno).decode()}")
                self.reclaimed_bytes += stop - start
                fs_publish_i64(&hd.reclaimed[d], stop)
            out.append(hd.reclaimed[d])
        hd.oldest_unacked_done = oldest
        hd.modules_mask = mask
        if not self.mapped:
            self._pwrite(h.fd, hd, sizeof(hdr_t), 0)
        retire = (st.closed and not self.keep and mask != 0 and complete == st.records and oldest == st.records)
        if retire:
            self._retire(conn, st)
        return {"complete": complete, "reclaimed": out, "oldest_unacked_done": oldest, "retired": bool(retire)}

    def check_space(self, Batch batch):
        """Before writing a batch: is there room for it? (see FREE_MARGIN)"""
        cdef Py_ssize_t i
        cdef uint64_t need = FREE_MARGIN
        for i in range(batch.n):
            need += 4 * batch.pkts[i].caplen
        st = os.statvfs(self.directory)
        if st.f_bavail * st.f_frsize < need:
            raise FlowsiftError(f"{self.directory}: store is full (less than {need >> 20} MiB free); "
                                f"the connections being written are incomplete")

    def counters(self):
        return {"files": self.files, "records": self.records_written, "bytes": self.bytes_written,
                "reopens": self.reopens, "late_packets": self.late_packets, "reclaimed_bytes": self.reclaimed_bytes,
                "retired": self.retired, "writes": self.writes}
