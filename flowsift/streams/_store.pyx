# cython: language_level=3
"""The record store's writer: one sparse record file per connection (format in format.py).

A Sink of the reassembly engine: delivered bytes, gaps, opens and closes, and every segment
(`on_packet`), which becomes a record. Records, gap entries and bytes are gathered per batch in
one staging arena, as runs of contiguous file ranges, and written at `publish` with one
pwritev(2) per run: a connection that got ten packets in a batch costs one system call per
region, not twenty, and the kernel copies into its page cache without the page faults and
unmapping that writing through shared mappings costs. A new file is made under a temporary name
and renamed into place once its header and what the header counts are written. After that, on
memory file systems (tmpfs) its header is mapped, so that its counters are published with
release stores; elsewhere the header is written with pwrite after the data (see MEMORY_FS).
When nobody in the process reads the store during the run, or its readers hear only of
batches once written, a writer thread writes the batches while the gateway reassembles the
next ones (set_background); the thread owns every descriptor and mapping while it runs, and
runs plain C. A gateway that must wait for it writes runs of the same batch meanwhile, with
descriptors the thread found for them (ws_share_runs). Descriptors and mappings are held for
at most `max_handles` connections at a time (the least recently used, kept in a list, are
closed and reopened on demand), so any number of live connections fits in the process's
descriptor and vm.max_map_count limits.
A reader that sees a count sees everything it covers. The gateway also records module bitmaps,
gives back space (reclaim) and retires finished files.
"""
import collections
import os

from flowsift.streams.format import vlan_ids

from libc.errno cimport errno, ENOSPC
from libc.stdint cimport int32_t, int64_t, uint64_t, uint32_t, uint16_t, uint8_t
from libc.string cimport memcpy, memset, strerror
from libc.stdio cimport snprintf, rename
from libc.stdlib cimport calloc, malloc, realloc, free
from posix.fcntl cimport open as c_open, O_RDWR, O_CREAT, O_TRUNC
from posix.unistd cimport close as c_close, ftruncate, unlink, pwrite, pread
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED

from flowsift.errors import FlowsiftError
from flowsift.io._batch cimport Batch, pkt_t
from flowsift.reassembly._engine cimport Sink, Engine, conn_t, conn_at, dir_t, CS_OPEN
from flowsift.io._tables cimport reach_chunk

cdef extern from "_writer.h" nogil:
    ctypedef struct fs_bg_t:
        int started
    int fs_bg_start(fs_bg_t* bg, void (*job)(void*) noexcept nogil, void* arg)
    void fs_bg_wait(fs_bg_t* bg)
    int fs_bg_running(fs_bg_t* bg)
    void fs_bg_kick(fs_bg_t* bg)
    void fs_bg_stop(fs_bg_t* bg)
    void fs_bg_open_share(fs_bg_t* bg, int* open)
    void fs_bg_notify(fs_bg_t* bg)
    int fs_bg_await_share(fs_bg_t* bg, int* open)
    void fs_bg_await_count(fs_bg_t* bg, int* done, int n)

cdef extern from "_atomic.h":
    void fs_publish_u64(uint64_t* p, uint64_t v) nogil
    void fs_publish_i64(int64_t* p, int64_t v) nogil
    void fs_publish_u32(uint32_t* p, uint32_t v) nogil
    int fs_take(int* p) nogil
    int fs_load_int(int* p) nogil
    void fs_add_u64(uint64_t* p, uint64_t v) nogil
    int fs_claim_int(int* p, int v) nogil

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
DEF HEADER_SIZE = 256
DEF RECORD_SIZE = 128
DEF GAP_SIZE = 32
DEF RECORDS_OFF = 256
DEF VERSION = 2
DEF HF_CLOSED = 1
DEF HF_KEEP = 2
DEF HF_NO_BYTES = 4
DEF HF_VLAN_KEY = 8

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
# start from the process's limits (see _handle_budget); never fewer than this (with fewer,
# nearly every batch would close and open again the files it writes). A descriptor limit too
# small for it is said before the first packet.
DEF MIN_HANDLES = 8
# The staging arena is written out before it grows past this, even within a batch.
DEF ARENA_FLUSH = 33554432
# In the background, batches gather in the arena while the writer thread is busy, up to this:
# longer runs, fewer system calls, and the gateway waits only when the writer falls behind.
DEF ARENA_HOLD = 16777216
# iovecs per pwritev (IOV_MAX is 1024 on Linux)
DEF MAX_IOV = 1024
# records read back at a time when setting module bits or finding what is complete
DEF CHUNK_RECS = 512
# Ended connections whose last bytes the receiver never acknowledged keep their files (for
# `replay --unacked`); a long run keeps at most this many, the oldest going first, so that the
# store stays bounded (~15% of a web capture's connections end so).
DEF DEFAULT_UNACKED_FILES = 10000
# Connection states are kept in chunks of this many; a chunk whose connections were all retired
# (and forgotten) is freed, so a long chain keeps state for the files it has, not every one seen.
DEF CS_CHUNK_SHIFT = 6
DEF CS_CHUNK = 64
# Before each batch the gateway checks that the store's file system has at least this much
# free, plus what waits to be written and four times the batch's captured bytes (more than a
# batch can write), and stops cleanly otherwise: a full tmpfs starves the whole machine, and
# the store's manifest must still be written to say the store is incomplete.
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

ctypedef struct hdr_t:           # the header's first 236 bytes, at their offsets (format.py)
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
    uint16_t vlan[2]             # the flow key's outer and inner VLAN id (HF_VLAN_KEY)

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
    uint8_t bits_pending     # done_mask's bits are not yet in the records (module_done)
    uint64_t records
    uint64_t gaps
    uint64_t first_id
    int64_t udp_end[2]       # data written so far for a UDP direction (datagrams appended, a cut tail a hole)
    int64_t udp_rec[2]       # the same, advanced as records are written
    int64_t pub_end[2]       # stream ends as last published (what readers were told)
    uint64_t done_mask       # modules that finished every record
    int64_t pub_last_ts      # the last packet's time as last published
    uint64_t out_records     # records whose publish went to the writer (in the file once it is idle)
    uint8_t out_closed       # ... and its last publish too
    uint8_t forgotten        # retired, and counted in its chunk's forgotten ones
    uint8_t kept_unacked     # ended and done, its file kept for bytes never acknowledged
    int32_t run[N_REGION]    # the filling batch's open run of each region, or -1
    # what the store needs of the connection once it ended (the engine frees its record then)
    int64_t pub_acked[2]     # stream offset the peer acknowledged as last published, or -1
    uint8_t proto
    uint8_t ipver
    uint16_t cport
    uint16_t sport
    uint16_t vlan[2]
    uint8_t client[16]
    uint8_t server[16]

ctypedef struct run_t:       # a contiguous file range of one connection waiting in a batch
    uint32_t conn
    int32_t first            # its pieces (a chain through piece_t.next)
    int32_t last
    int64_t off              # file offset
    int64_t len
    int fd                   # its file's descriptor, when the batch's runs are shared (ws_share_runs)

ctypedef struct piece_t:     # bytes of a run that are contiguous in the arena
    int64_t pos
    int64_t len
    int32_t next

# what a batch asks of a file besides its runs
DEF OP_CREATE = 0            # a new file; its header (hdr_t) is in the arena
DEF OP_PUBLISH = 1           # new counters (pub_t in the arena)
DEF OP_FINAL = 2             # the last counters, then the file is closed
DEF OP_RETIRE = 3            # the file goes (every module is done with it, nothing waits for an ACK)

ctypedef struct op_t:
    uint32_t conn
    uint8_t kind
    int64_t pos

ctypedef struct pub_t:       # what a publish puts into a header
    int64_t origin[2]
    int64_t end[2]
    int64_t acked[2]
    int64_t last_ts
    uint64_t gaps
    uint64_t records
    uint64_t modules_mask
    uint8_t settled[2]
    uint8_t midstream[2]
    uint8_t close[2]
    uint8_t has_end[2]
    uint8_t has_acked[2]

ctypedef struct wbuf_t:      # one batch's writes: the arena, its runs and its other operations
    uint8_t* arena
    int64_t used
    int64_t cap
    run_t* runs
    int32_t n_runs
    int32_t cap_runs
    piece_t* pieces
    int32_t n_pieces
    int32_t cap_pieces
    op_t* ops
    int32_t n_ops
    int32_t cap_ops
    int32_t n_creates

ctypedef struct handle_t:
    int fd
    uint32_t conn
    int newer, older         # the recency list of open handles (slots; -1 at its ends)
    hdr_t* hdr               # the header: a shared mapping, or a copy in memory (in_memory)
    uint8_t in_memory        # written out with pwrite (disk file systems; new files)
    uint8_t fresh            # made in this drain, not yet renamed into place
    uint8_t final            # its connection ended: closed once it is in place

# what went wrong in the writer (turned into a message on the Python side)
DEF E_NONE = 0
DEF E_CREATE = 1             # open/ftruncate of a new file
DEF E_REOPEN = 2
DEF E_WRITE = 3
DEF E_MAP = 4
DEF E_RENAME = 5
DEF E_READ_HEADER = 6
DEF E_MEMORY = 7

ctypedef struct wstate_t:    # the files: touched by the writer thread only, or by the gateway while it is idle
    char dir[4096]
    bint mapped
    handle_t* handles
    int max_handles
    int* free_slots          # handle slots not in use (a stack), so opening is O(1)
    int n_free
    int newest, oldest       # ends of the recency list: the oldest is closed when every slot is busy
    int32_t* hmap            # connection -> handle slot, or -1
    uint32_t hcap
    uint32_t* fresh          # connections whose file this drain made (ws_finish_new at its end)
    int32_t n_fresh
    int32_t cap_fresh
    iovec* iov
    iovec* iov_gateway       # the gateway's, when it writes runs of the writer thread's batch
    uint8_t* zeros           # HEADER_SIZE zero bytes: a new header's page
    uint64_t writes
    uint64_t reopens
    uint64_t drains          # batches (or gathered batches) the writer thread wrote
    uint64_t closes          # handles let go (a descriptor number may then be reused)
    fs_bg_t* bg              # the writer thread, when the gateway may share a batch's runs
    int share_open           # this batch's runs may be taken (ws_take_runs) by the gateway too
    int share_n
    int share_next           # the next run to take
    int share_done           # runs written (or passed over after a failure)
    int err                  # E_*: the first failure; the writer does nothing more after it
    int err_no
    uint32_t err_conn
    wbuf_t* job              # the batch the writer thread writes


def _failed_empty(path):
    """Whether the manifest at `path` is one of a run that ended in an error, incomplete."""
    import json
    try:
        with open(path, "rb") as f:
            info = json.loads(f.read().rstrip(b"\0 \n"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("complete") is False and bool(info.get("error"))


def _refuse_earlier_store(directory):
    # A store is one run's: record files left by an earlier run would be read (inspect,
    # replay --store, modules) as connections of this one, and overwriting only some of them
    # mixes the two. A kept store is kept for a reason, so it is never cleared here.
    # (named as the gateway names them: another file that ends in .rec is not a store's)
    from flowsift.streams.reader import record_name
    try:
        with os.scandir(directory) as it:
            earlier = [e.name for e in it if e.name == "store.json" or record_name(e.name) is not None
                       or (e.name.endswith(".new") and record_name(e.name[:-4]) is not None)]
    except OSError as e:
        raise FlowsiftError(f"{directory}: cannot read the store directory: {e.strerror}") from None
    if earlier == ["store.json"] and _failed_empty(os.path.join(directory, "store.json")):
        # the manifest of a run that failed (a full store) before its first record file: it
        # describes nothing, and left there it refused the run given again once room was made
        os.unlink(os.path.join(directory, "store.json"))
        from flowsift.errors import say
        say(f"{directory}: an earlier run failed here before writing a connection; its manifest is replaced")
        return
    if earlier:
        n = sum(1 for name in earlier if name != "store.json")
        raise FlowsiftError(f"{directory}: holds an earlier store ({n:,} record files): a run writes into a new "
                            f"or empty directory (give another, or remove that store first)")


def _handle_budget(bint readers_here=True):
    """How many record files may be open at once: within the descriptor limit (raised to its
    hard limit if need be), less the descriptors the process holds and a spare for what it
    opens later (flowsift.limits), and within vm.max_map_count (each open file holds one
    mapping). A limit that leaves fewer than MIN_HANDLES is a FlowsiftError saying so."""
    from flowsift.limits import free_descriptors, max_map_count, open_descriptors, spare_descriptors
    soft, free = free_descriptors()
    max_maps = max_map_count()
    # leave half for readers in the same process (an inline chain maps and opens files too)
    share = 2 if readers_here else 1
    maps = (max_maps - 8192) // (2 * share)
    budget = min(free // share, maps, 65536 // share)
    if budget < MIN_HANDLES and maps < MIN_HANDLES <= free // share:
        raise FlowsiftError(f"vm.max_map_count ({max_maps}) is too small for the record store: 8192 mappings "
                            f"are kept for the process and each record file open takes {2 * share}, leaving "
                            f"{max(0, maps)} record files where it needs {MIN_HANDLES}; raise it to "
                            f"{8192 + 2 * share * MIN_HANDLES} at least (sysctl -w vm.max_map_count=N)")
    if budget < MIN_HANDLES:
        held, need = open_descriptors(), soft
        while need - held - spare_descriptors(need) < MIN_HANDLES * share:
            need += 1
        raise FlowsiftError(f"the descriptor limit ({soft}, ulimit -n) is too small for the record store: "
                            f"{held} descriptors are in use and {spare_descriptors(soft)} kept for the run, "
                            f"leaving {max(0, budget)} record files where it needs {MIN_HANDLES}; "
                            f"raise it to {need} at least")
    return budget


cdef inline uint64_t splitmix64(uint64_t* state) noexcept nogil:
    state[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef int grow(void** items, int32_t* cap, int32_t n, size_t size) noexcept nogil:
    # room for item n of a growable array: 0, or -1 when out of memory (nothing changed then)
    cdef int32_t c
    cdef void* p
    if n < cap[0]:
        return 0
    c = cap[0] * 2 if cap[0] else 1024
    p = realloc(items[0], c * size)
    if p == NULL:
        return -1
    items[0] = p
    cap[0] = c
    return 0


cdef int64_t grow_index(void** items, uint32_t* cap, uint32_t index, size_t size) noexcept nogil:
    # room for items[index] of an array indexed by connection: its old capacity (the caller
    # fills what is new), or -1 when out of memory (nothing changed then)
    cdef uint32_t old = cap[0], c = cap[0] if cap[0] else 1024
    cdef void* p
    while c <= index:
        c *= 2
    p = realloc(items[0], c * size)
    if p == NULL:
        return -1
    items[0] = p
    cap[0] = c
    return old


# --- the writer: plain C over wstate_t, so that it runs without the GIL ----------------------

cdef int ws_fail(wstate_t* ws, int what, uint32_t conn) noexcept nogil:
    # (the writer thread and the gateway may fail at once while sharing runs: one wins)
    if fs_claim_int(&ws.err, what):
        ws.err_no = errno
        ws.err_conn = conn
    return -1


cdef void ws_path(wstate_t* ws, uint32_t conn, char* out, bint new) noexcept nogil:
    if new:
        snprintf(out, 4200, "%s/c%08u.rec.new", ws.dir, conn)
    else:
        snprintf(out, 4200, "%s/c%08u.rec", ws.dir, conn)


cdef int ws_finish_new(wstate_t* ws, handle_t* h) noexcept nogil:
    # A new file goes into place: its header (with the counters of this drain's publishes,
    # written after the runs they count), then the rename that makes it visible. So a reader
    # never finds a record file without its header, and a connection that starts and ends in
    # one drain is never mapped at all.
    cdef iovec v[2]
    cdef char path[4200]
    cdef char final[4200]
    h.fresh = 0
    v[0].iov_base = h.hdr
    v[0].iov_len = sizeof(hdr_t)
    v[1].iov_base = ws.zeros
    v[1].iov_len = HEADER_SIZE - sizeof(hdr_t)
    if pwritev(h.fd, v, 2, 0) != HEADER_SIZE:
        return ws_fail(ws, E_WRITE, h.conn)
    ws_path(ws, h.conn, path, True)
    ws_path(ws, h.conn, final, False)
    if rename(path, final) != 0:
        return ws_fail(ws, E_RENAME, h.conn)
    return 0


cdef inline void ws_unlink(wstate_t* ws, int k) noexcept nogil:
    cdef handle_t* h = &ws.handles[k]
    if h.newer >= 0:
        ws.handles[h.newer].older = h.older
    else:
        ws.newest = h.older
    if h.older >= 0:
        ws.handles[h.older].newer = h.newer
    else:
        ws.oldest = h.newer


cdef inline void ws_push_newest(wstate_t* ws, int k) noexcept nogil:
    cdef handle_t* h = &ws.handles[k]
    h.newer = -1
    h.older = ws.newest
    if ws.newest >= 0:
        ws.handles[ws.newest].newer = k
    else:
        ws.oldest = k
    ws.newest = k


cdef void ws_close_handle(wstate_t* ws, int k) noexcept nogil:
    cdef handle_t* h = &ws.handles[k]
    if h.fd < 0:
        return
    if h.fresh:
        ws_finish_new(ws, h)        # (a full store is reported by the next check)
    if h.hdr != NULL:
        if h.in_memory:
            free(h.hdr)
        else:
            munmap(h.hdr, HEADER_SIZE)
        h.hdr = NULL
    c_close(h.fd)
    h.fd = -1
    ws_unlink(ws, k)
    ws.closes += 1
    if h.conn < ws.hcap:
        ws.hmap[h.conn] = -1
    ws.free_slots[ws.n_free] = k
    ws.n_free += 1


cdef int ws_close_conn(wstate_t* ws, uint32_t conn) noexcept nogil:
    if conn < ws.hcap and ws.hmap[conn] >= 0:
        ws_close_handle(ws, ws.hmap[conn])
    return 0


cdef int ws_pwrite(wstate_t* ws, int fd, const void* src, int64_t n, int64_t off, uint32_t conn) noexcept nogil:
    cdef int64_t w
    while n > 0:
        w = pwrite(fd, src, n, off)
        if w < 0:
            return ws_fail(ws, E_WRITE, conn)
        n -= w
        off += w
        src = <const uint8_t*>src + w
    return 0


cdef handle_t* ws_handle(wstate_t* ws, uint32_t conn, const hdr_t* create) noexcept nogil:
    # the open file of `conn`; with `create` (its header) the file is made first
    cdef int k, fd
    cdef void* m
    cdef handle_t* h
    cdef char path[4200]
    cdef int64_t old
    if conn >= ws.hcap:
        old = grow_index(<void**>&ws.hmap, &ws.hcap, conn, sizeof(int32_t))
        if old < 0:
            ws_fail(ws, E_MEMORY, conn)
            return NULL
        memset(&ws.hmap[old], 0xFF, (ws.hcap - old) * sizeof(int32_t))      # no handle
    k = ws.hmap[conn]
    if k >= 0:
        if ws.newest != k:
            ws_unlink(ws, k)
            ws_push_newest(ws, k)
        return &ws.handles[k]
    if ws.n_free == 0:
        ws_close_handle(ws, ws.oldest)      # every slot busy: the least recently used goes
    if create != NULL:
        # made under a temporary name and renamed into place at the end of the drain, once its
        # header is written (ws_finish_new)
        if grow(<void**>&ws.fresh, &ws.cap_fresh, ws.n_fresh, sizeof(uint32_t)) != 0:
            ws_fail(ws, E_MEMORY, conn)
            return NULL
        ws_path(ws, conn, path, True)
        fd = c_open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        if fd < 0 or ftruncate(fd, FILE_SIZE) != 0:
            ws_fail(ws, E_CREATE, conn)
            if fd >= 0:
                c_close(fd)
            return NULL
        m = calloc(1, HEADER_SIZE)
        if m == NULL:
            ws_fail(ws, E_MEMORY, conn)
            c_close(fd)
            return NULL
        memcpy(m, create, sizeof(hdr_t))
        ws.fresh[ws.n_fresh] = conn
        ws.n_fresh += 1
    else:
        ws_path(ws, conn, path, False)
        fd = c_open(path, O_RDWR, 0)
        if fd < 0:
            ws_fail(ws, E_REOPEN, conn)
            return NULL
        ws.reopens += 1
        if ws.mapped:
            m = mmap(NULL, HEADER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            if m == MAP_FAILED:
                ws_fail(ws, E_MAP, conn)
                c_close(fd)
                return NULL
        else:
            # the header lives in memory and is written out at each publish
            m = calloc(1, HEADER_SIZE)
            if m == NULL:
                ws_fail(ws, E_MEMORY, conn)
                c_close(fd)
                return NULL
            if pread(fd, m, HEADER_SIZE, 0) != HEADER_SIZE:
                ws_fail(ws, E_READ_HEADER, conn)
                free(m)
                c_close(fd)
                return NULL
    ws.n_free -= 1
    k = ws.free_slots[ws.n_free]
    h = &ws.handles[k]
    h.fd = fd
    h.conn = conn
    ws_push_newest(ws, k)
    h.hdr = <hdr_t*> m
    h.in_memory = create != NULL or not ws.mapped
    h.fresh = create != NULL
    h.final = 0
    ws.hmap[conn] = k
    return h


cdef int ws_write_header(wstate_t* ws, handle_t* h) noexcept nogil:
    # a header kept in memory goes out with pwrite, after what it counts
    if not h.in_memory or h.fresh:
        return 0
    return ws_pwrite(ws, h.fd, h.hdr, sizeof(hdr_t), 0, h.conn)


cdef int ws_write_run(wstate_t* ws, wbuf_t* wb, run_t* run) noexcept nogil:
    cdef handle_t* h = ws_handle(ws, run.conn, NULL)
    if h == NULL:
        return -1
    return ws_write_pieces(ws, wb, run, h.fd, ws.iov)


cdef int ws_write_pieces(wstate_t* ws, wbuf_t* wb, run_t* run, int fd, iovec* iov) noexcept nogil:
    # touches no handle: the gateway may run it on runs of the writer thread's batch
    cdef int32_t k = run.first
    cdef int cnt, i
    cdef int64_t off = run.off, done
    while k >= 0:
        cnt = 0
        while k >= 0 and cnt < MAX_IOV:
            iov[cnt].iov_base = wb.arena + wb.pieces[k].pos
            iov[cnt].iov_len = wb.pieces[k].len
            cnt += 1
            k = wb.pieces[k].next
        # a short write goes on from where it stopped
        i = 0
        while i < cnt:
            done = pwritev(fd, &iov[i], cnt - i, off)
            fs_add_u64(&ws.writes, 1)
            if done < 0:
                return ws_fail(ws, E_WRITE, run.conn)
            off += done
            while i < cnt and done >= <int64_t>iov[i].iov_len:
                done -= iov[i].iov_len
                i += 1
            if i < cnt:
                iov[i].iov_base = <uint8_t*>iov[i].iov_base + done
                iov[i].iov_len -= done
    return 0


cdef int ws_share_runs(wstate_t* ws, wbuf_t* wb) noexcept nogil:
    # The batch's runs, written by the writer thread and, if it waits for this batch, the
    # gateway: both take the next run until none is left (tmpfs writes to different files scale
    # with cores, and the gateway would otherwise sleep). Each run's descriptor is found first,
    # here, so the gateway never touches the handles.
    cdef int32_t i
    cdef uint64_t closes = ws.closes
    cdef handle_t* h
    for i in range(wb.n_runs):
        h = ws_handle(ws, wb.runs[i].conn, NULL)
        if h == NULL:
            return -1
        wb.runs[i].fd = h.fd
    if ws.closes != closes:
        # more connections than handles: a descriptor found early may have been let go since
        for i in range(wb.n_runs):
            if ws_write_run(ws, wb, &wb.runs[i]) != 0:
                return -1
        return 0
    ws.share_n = wb.n_runs
    ws.share_next = 0
    ws.share_done = 0
    fs_bg_open_share(ws.bg, &ws.share_open)
    ws_take_runs(ws, wb, ws.iov)
    fs_bg_await_count(ws.bg, &ws.share_done, wb.n_runs)
    return 0 if fs_load_int(&ws.err) == E_NONE else -1


cdef int32_t ws_take_runs(wstate_t* ws, wbuf_t* wb, iovec* iov) noexcept nogil:
    # the next runs of a shared batch until none is left; how many this thread wrote
    cdef int i, n = ws.share_n
    cdef int32_t mine = 0
    while True:
        i = fs_take(&ws.share_next)
        if i >= n:
            return mine
        if fs_load_int(&ws.err) == E_NONE:
            ws_write_pieces(ws, wb, &wb.runs[i], wb.runs[i].fd, iov)
            mine += 1
        if fs_take(&ws.share_done) + 1 == n:
            fs_bg_notify(ws.bg)         # the writer thread may wait for this last one


cdef int ws_apply(wstate_t* ws, op_t* op, const pub_t* p) noexcept nogil:
    # a publish: counters last, with release stores, so that a reader that sees a count sees
    # everything it covers
    cdef handle_t* h = ws_handle(ws, op.conn, NULL)
    cdef hdr_t* hd
    cdef void* m
    cdef int d
    if h == NULL:
        return -1
    if ws.mapped and h.in_memory and not h.fresh:
        # a file in place whose header is still the copy it was made with: readers may be
        # reading it now, so from here on it changes through a mapping (release stores)
        m = mmap(NULL, HEADER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, h.fd, 0)
        if m == MAP_FAILED:
            return ws_fail(ws, E_MAP, op.conn)
        free(h.hdr)
        h.hdr = <hdr_t*> m
        h.in_memory = 0
    hd = h.hdr
    # (docs/record-format.md, "Reading while the gateway writes": a reader loads flags, then the
    # ends, then gaps and records: the gap entries an end covers are published before it, and
    # CLOSED after everything)
    for d in range(2):
        hd.settled[d] = p.settled[d]
        hd.midstream[d] = p.midstream[d]
        fs_publish_i64(&hd.origin[d], p.origin[d])
        if p.has_acked[d]:
            fs_publish_i64(&hd.acked[d], p.acked[d])
        if op.kind == OP_FINAL:
            hd.close[d] = p.close[d]
    hd.last_ts = p.last_ts
    hd.modules_mask = p.modules_mask
    fs_publish_u64(&hd.gaps, p.gaps)
    for d in range(2):
        if p.has_end[d]:
            fs_publish_i64(&hd.end[d], p.end[d])
    fs_publish_u64(&hd.records, p.records)
    if op.kind == OP_FINAL:
        fs_publish_u32(&hd.flags, hd.flags | HF_CLOSED)
    if h.fresh:
        h.final = op.kind == OP_FINAL       # written and closed at the end of the drain
        return 0
    if ws_write_header(ws, h) != 0:
        return -1
    if op.kind == OP_FINAL:
        ws_close_handle(ws, ws.hmap[op.conn])
    return 0


cdef void ws_retire(wstate_t* ws, uint32_t conn) noexcept nogil:
    # (a file already gone is fine: a retire is never undone, and nothing else removes files)
    cdef char path[4200]
    ws_close_conn(ws, conn)
    ws_path(ws, conn, path, False)
    unlink(path)


cdef void wb_reset(wbuf_t* wb) noexcept nogil:
    wb.n_creates = 0
    wb.used = 0
    wb.n_runs = 0
    wb.n_pieces = 0
    wb.n_ops = 0


cdef void wb_free(wbuf_t* wb) noexcept nogil:
    free(wb.arena)
    free(wb.runs)
    free(wb.pieces)
    free(wb.ops)
    memset(wb, 0, sizeof(wbuf_t))


cdef int ws_drain(wstate_t* ws, wbuf_t* wb, bint share) noexcept nogil:
    # write one batch: new files, then every run, then the headers' counters (publishes never
    # come before what they count); after a failure nothing more is written. With `share` (the
    # writer thread) the gateway may write some of the runs.
    cdef int32_t i, k
    cdef op_t* op
    if ws.err == E_NONE:
        for i in range(wb.n_ops):
            op = &wb.ops[i]
            if op.kind == OP_CREATE and ws_handle(ws, op.conn, <hdr_t*>(wb.arena + op.pos)) == NULL:
                break
    if ws.err == E_NONE:
        if share and wb.n_runs > 1:
            ws_share_runs(ws, wb)
        else:
            for i in range(wb.n_runs):
                if ws_write_run(ws, wb, &wb.runs[i]) != 0:
                    break
    if ws.err == E_NONE:
        for i in range(wb.n_ops):
            op = &wb.ops[i]
            if op.kind == OP_RETIRE:
                ws_retire(ws, op.conn)
            elif op.kind != OP_CREATE and ws_apply(ws, op, <pub_t*>(wb.arena + op.pos)) != 0:
                break
    # the new files go into place (those let go earlier in the drain already are)
    for i in range(ws.n_fresh):
        k = ws.hmap[ws.fresh[i]] if ws.fresh[i] < ws.hcap else -1
        if k >= 0 and ws.handles[k].fresh:
            if ws.handles[k].final or ws.err != E_NONE:
                ws_close_handle(ws, k)          # (which puts it in place first)
            else:
                ws_finish_new(ws, &ws.handles[k])
    ws.n_fresh = 0
    wb_reset(wb)
    return 0 if ws.err == E_NONE else -1


cdef void ws_job(void* arg) noexcept nogil:
    cdef wstate_t* ws = <wstate_t*> arg
    ws_drain(ws, ws.job, True)
    ws.drains += 1


cdef class RecordStore(Sink):
    """Writes record files for every connection into `directory` (see format.py)."""
    cdef readonly str directory
    cdef readonly bint keep
    cdef readonly bint store_bytes   # False: streams' bytes are counted, not written (no reader wants them)
    cdef int64_t last_avail          # free bytes at the last check_space (-1: none yet)
    cdef Engine engine
    cdef cstate_t** cs               # connection states, in chunks of CS_CHUNK (_state)
    cdef uint8_t* cs_forgotten       # per chunk: its connections retired and forgotten
    cdef uint32_t cs_chunks
    cdef cstate_t gone               # what _state gives for a connection of a freed chunk
    cdef public bint forget_retired  # a retired connection's state goes (nobody asks of it again)
    cdef wstate_t ws
    cdef wbuf_t bufs[2]
    cdef wbuf_t* cur                 # the batch being filled
    cdef fs_bg_t bg
    cdef bint background             # the writer thread writes a batch while the next is read
    cdef bint busy                   # the writer thread has a batch
    cdef uint64_t rng
    cdef uint32_t* touched
    cdef uint32_t n_touched
    cdef uint32_t cap_touched
    cdef rec_t* rbuf                 # records read back (CHUNK_RECS)
    cdef readonly uint64_t files
    cdef readonly uint64_t records_written
    cdef readonly uint64_t bytes_written
    cdef readonly uint64_t late_packets
    cdef readonly uint64_t modules_mask
    cdef readonly uint64_t reclaimed_bytes
    cdef readonly uint64_t retired
    cdef public uint64_t unacked_files   # at most this many files kept for unacknowledged bytes
    cdef readonly uint64_t unacked_kept      # such files now
    cdef readonly uint64_t unacked_retired   # such files that went, the oldest, past unacked_files
    cdef object unacked_order            # their connections, oldest first
    cdef readonly uint64_t gateway_runs   # runs of the writer thread's batches the gateway wrote while it waited
    cdef list just_closed            # connections closed since the last publish

    def __init__(self, str directory, bint keep=False, max_handles=None, bint store_bytes=True, bint readers_here=True):
        cdef int k
        cdef statfs_t sf
        self.directory = directory
        self.keep = keep
        self.store_bytes = store_bytes
        self.forget_retired = True
        self.last_avail = -1
        self.unacked_files = DEFAULT_UNACKED_FILES
        self.unacked_order = collections.deque()
        # (first: a limit too small leaves no directory made for nothing)
        handles = _handle_budget(readers_here) if max_handles is None else max(MIN_HANDLES, int(max_handles))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise FlowsiftError(f"{directory}: cannot create the store: {e.strerror}") from None
        if not os.access(directory, os.W_OK):
            raise FlowsiftError(f"{directory}: store directory is not writable")
        _refuse_earlier_store(directory)
        raw = directory.encode()
        if len(raw) >= 4000:
            raise FlowsiftError(f"{directory[:60]}...: store path too long")
        memcpy(self.ws.dir, <const char*>raw, len(raw))
        self.ws.dir[len(raw)] = 0
        self.ws.mapped = statfs(raw, &sf) == 0 and sf.f_type in MEMORY_FS
        self.ws.max_handles = handles
        self.ws.handles = <handle_t*> calloc(self.ws.max_handles, sizeof(handle_t))
        self.ws.free_slots = <int*> calloc(self.ws.max_handles, sizeof(int))
        self.ws.iov = <iovec*> malloc(MAX_IOV * sizeof(iovec))
        self.ws.iov_gateway = <iovec*> malloc(MAX_IOV * sizeof(iovec))
        self.ws.bg = &self.bg
        self.ws.zeros = <uint8_t*> calloc(1, HEADER_SIZE)
        self.rbuf = <rec_t*> malloc(CHUNK_RECS * sizeof(rec_t))
        if self.ws.handles == NULL or self.ws.free_slots == NULL or self.ws.iov == NULL or self.ws.iov_gateway == NULL or \
                self.ws.zeros == NULL or self.rbuf == NULL:
            raise MemoryError()
        for k in range(self.ws.max_handles):
            self.ws.free_slots[k] = self.ws.max_handles - 1 - k
            self.ws.handles[k].fd = -1
        self.ws.n_free = self.ws.max_handles
        self.ws.newest = self.ws.oldest = -1
        self.cur = &self.bufs[0]
        self.just_closed = []
        self.rng = int.from_bytes(os.urandom(8), "little")

    def __dealloc__(self):
        cdef int k
        with nogil:
            fs_bg_stop(&self.bg)
        if self.ws.handles != NULL:
            for k in range(self.ws.max_handles):
                ws_close_handle(&self.ws, k)
            free(self.ws.handles)
        free(self.ws.free_slots)
        free(self.ws.hmap)
        free(self.ws.fresh)
        free(self.ws.iov)
        free(self.ws.iov_gateway)
        free(self.ws.zeros)
        wb_free(&self.bufs[0])
        wb_free(&self.bufs[1])
        if self.cs != NULL:
            for k in range(self.cs_chunks):
                free(self.cs[k])
        free(self.cs)
        free(self.cs_forgotten)
        free(self.touched)
        free(self.rbuf)

    def attach(self, Engine engine):
        """The engine whose connections this store records (for per-direction state)."""
        self.engine = engine

    @property
    def background_drains(self):
        """Batches (gathered while it was busy) the writer thread has written."""
        return self.ws.drains

    def set_background(self, bint on):
        """Write each batch on a thread of its own while the gateway reads the next (only when
        nobody in this process reads the store during the run, or readers hear of a batch only
        once it is written: publish then returns before the batch is written)."""
        self.sync()
        self.background = on
        if not on:
            with nogil:
                fs_bg_stop(&self.bg)       # no idle thread left behind (nor for a fork to inherit)

    def halt(self):
        """The writer thread finishes the batch it has and stops (a run cut short: nothing is
        written after this, so its directory may be removed)."""
        self.background = False
        with nogil:
            fs_bg_stop(&self.bg)

    def path(self, uint32_t conn):
        return os.path.join(self.directory, f"c{conn:08d}.rec")

    @property
    def state_chunks(self):
        """Chunks of connection state held (64 connections each): what the store keeps in memory."""
        cdef uint32_t k
        return sum(1 for k in range(self.cs_chunks) if self.cs[k] != NULL)

    # --- the writer, seen from the gateway ----------------------------------------------------

    cdef int _check(self) except -1:
        cdef int what = self.ws.err
        if what == E_NONE:
            return 0
        err, conn = self.ws.err_no, self.ws.err_conn
        name = os.path.basename(self.path(conn))
        reason = strerror(err).decode()
        if err == ENOSPC:
            raise FlowsiftError(f"{self.directory}: store is full (no space left on device); "
                                f"the connections being written are incomplete")
        if what == E_CREATE or what == E_REOPEN:
            raise FlowsiftError(f"{self.directory}: cannot write record file {name}: {reason}")
        if what == E_RENAME:
            raise FlowsiftError(f"{self.path(conn)}: cannot create the record file: {reason}")
        if what == E_MAP:
            raise FlowsiftError(f"{self.directory}: cannot map a record file: {reason}")
        if what == E_READ_HEADER:
            raise FlowsiftError(f"{self.directory}: cannot read back a record file header: {reason}")
        if what == E_MEMORY:
            raise MemoryError()
        raise FlowsiftError(f"{self.directory}: cannot write a record file: {reason}")

    cdef int _wait(self) except -1:
        # the writer thread is done with its batch (the gateway writes some of its runs meanwhile)
        cdef int32_t mine = 0
        if self.busy:
            with nogil:
                if fs_bg_await_share(&self.bg, &self.ws.share_open):
                    mine = ws_take_runs(&self.ws, self.ws.job, self.ws.iov_gateway)
                fs_bg_wait(&self.bg)
            self.gateway_runs += mine
            self.busy = False
        return self._check()

    cdef int _end_runs(self, wbuf_t* wb) except -1:
        # the filling batch is closed: its runs take no more bytes
        cdef int32_t r
        cdef cstate_t* st
        for r in range(wb.n_runs):
            st = self._state(wb.runs[r].conn)
            st.run[0] = st.run[1] = st.run[2] = st.run[3] = -1
        return 0

    def sync(self):
        """Everything handed over so far is written (the gateway then works on the files itself)."""
        self._sync()

    cdef int _sync(self) except -1:
        if self.background:
            # the writer thread takes the batch, and the gateway writes its runs with it
            self._hand_over(True)
            return self._wait()
        self._wait()
        self._seal(self.cur)
        ws_drain(&self.ws, self.cur, False)
        return self._check()

    cdef int _seal(self, wbuf_t* wb) except -1:
        # the batch goes to be written: its runs take no more bytes, and what its publishes count
        # is what the files hold once the writer is idle (module_done and reclaim read no
        # further, and what waits in the buffer being filled -- records, a close -- does not
        # count yet)
        cdef int32_t i
        cdef op_t* op
        cdef cstate_t* st
        self._end_runs(wb)
        for i in range(wb.n_ops):
            op = &wb.ops[i]
            if op.kind == OP_PUBLISH or op.kind == OP_FINAL:
                st = self._state(op.conn)
                st.out_records = (<pub_t*>(wb.arena + op.pos)).records
                if op.kind == OP_FINAL:
                    st.out_closed = 1
        return 0

    def wait(self):
        """Until the writer thread is idle: the files hold every batch handed to it, and the
        gateway may work on them (module_done, reclaim) while what it published since waits in
        its buffer."""
        self._wait()

    def due(self):
        """Should the batches published without a hand-over go to the writer now: it is idle,
        or they are as many as a hand-over may gather?"""
        return self._due()

    cdef bint _due(self):
        # Not past half the files that may be open: a drain goes over its connections three
        # times (new files, runs, publishes), and with more than fit each pass would let go what
        # the next one needs. (Publishes stand for the connections: one a batch per connection.)
        return (not self.busy or not fs_bg_running(&self.bg) or self.cur.used >= ARENA_HOLD
                or self.cur.n_ops >= self.ws.max_handles // 2)

    def hand_over(self):
        """The batches published since the last hand-over go to the writer thread now (after it
        finished the previous ones)."""
        self._hand_over(True)

    cdef int _hand_over(self, bint now=False) except -1:
        # the filled batch goes to the writer thread; the gateway fills the other buffer
        cdef int err
        if not self.background:
            return self._sync()
        if not now and not self._due():
            return 0                # the writer is busy: this batch joins the next one
        self._wait()
        self._seal(self.cur)
        if not self.bg.started:
            err = fs_bg_start(&self.bg, ws_job, &self.ws)
            if err:
                raise FlowsiftError(f"cannot start the store's writer thread: {strerror(err).decode()}")
        self.ws.job = self.cur
        self.ws.share_open = 0
        self.cur = &self.bufs[1] if self.cur == &self.bufs[0] else &self.bufs[0]
        self.busy = True
        fs_bg_kick(&self.bg)
        return 0

    # --- filling a batch ------------------------------------------------------------------------

    cdef cstate_t* _state(self, uint32_t conn) except NULL:
        cdef uint32_t k = conn >> CS_CHUNK_SHIFT, i
        cdef cstate_t* chunk
        if reach_chunk(<void**>&self.cs, &self.cs_forgotten, &self.cs_chunks, k):
            raise MemoryError("record store connection table")
        if self.cs[k] == NULL:
            if self.cs_forgotten[k] == CS_CHUNK:
                # every connection of the chunk was retired: a file that is gone, and stays so
                memset(&self.gone, 0, sizeof(cstate_t))
                self.gone.closed = self.gone.out_closed = self.gone.forgotten = 1
                self.gone.run[0] = self.gone.run[1] = self.gone.run[2] = self.gone.run[3] = -1
                return &self.gone
            chunk = <cstate_t*> calloc(CS_CHUNK, sizeof(cstate_t))
            if chunk == NULL:
                raise MemoryError("record store connection table")
            for i in range(CS_CHUNK):
                chunk[i].run[0] = chunk[i].run[1] = chunk[i].run[2] = chunk[i].run[3] = -1
            self.cs[k] = chunk
        return &self.cs[k][conn & (CS_CHUNK - 1)]

    cdef void _forget(self, uint32_t conn, cstate_t* st) noexcept:
        # a retired connection's state is not asked for again: its chunk goes with its last one
        cdef uint32_t k = conn >> CS_CHUNK_SHIFT
        if st.forgotten or not self.forget_retired:
            return
        st.forgotten = 1
        self.cs_forgotten[k] += 1
        if self.cs_forgotten[k] == CS_CHUNK:
            free(self.cs[k])
            self.cs[k] = NULL

    cdef uint8_t* _room(self, int64_t n) except NULL:
        # n bytes at the end of the filling batch's arena
        cdef wbuf_t* wb = self.cur
        cdef int64_t cap
        cdef void* grown
        if wb.used + n > wb.cap:
            if wb.used and wb.used + n > ARENA_FLUSH:
                # a huge batch: write what it has so far now (with a writer thread, the batch
                # goes to it and filling goes on in the other buffer)
                self._sync()
                wb = self.cur
            if wb.used + n > wb.cap:
                cap = wb.cap * 2 if wb.cap else 1 << 20
                while cap < wb.used + n:
                    cap *= 2
                grown = realloc(wb.arena, cap)
                if grown == NULL:
                    raise MemoryError()
                wb.arena = <uint8_t*> grown
                wb.cap = cap
        return wb.arena + wb.used

    cdef int _op(self, uint32_t conn, int kind, const void* src, int64_t n) except -1:
        cdef wbuf_t* wb
        cdef uint8_t* dst
        if n:                       # (an empty arena has no address to give)
            dst = self._room(n)
        wb = self.cur
        if grow(<void**>&wb.ops, &wb.cap_ops, wb.n_ops, sizeof(op_t)) != 0:
            raise MemoryError()
        if n:
            memcpy(dst, src, n)
        wb.ops[wb.n_ops].conn = conn
        wb.ops[wb.n_ops].kind = kind
        wb.n_creates += kind == OP_CREATE
        wb.ops[wb.n_ops].pos = wb.used
        wb.n_ops += 1
        wb.used += n
        return 0

    cdef int _write(self, uint32_t conn, cstate_t* st, int region, int64_t off, const uint8_t* src, int64_t n) except -1:
        # queue n bytes for file offset `off`: they join the region's open run when they follow
        # it, and its last piece when they follow that in the arena too
        cdef wbuf_t* wb
        cdef int32_t r
        cdef run_t* run
        cdef piece_t* pc
        cdef uint8_t* dst
        if n <= 0:
            return 0
        dst = self._room(n)             # may write the batch out (then no run is open)
        wb = self.cur
        r = st.run[region]
        memcpy(dst, src, n)
        if r >= 0 and wb.runs[r].off + wb.runs[r].len == off:
            run = &wb.runs[r]
            pc = &wb.pieces[run.last]
            if pc.pos + pc.len == wb.used:
                pc.len += n
            else:
                self._piece(run, wb.used, n)
            run.len += n
            wb.used += n
            return 0
        # a connection's runs never overlap (bytes are delivered once, records and gap entries
        # are appended, edits are written after the batch), so their order does not matter
        if grow(<void**>&wb.runs, &wb.cap_runs, wb.n_runs, sizeof(run_t)) != 0:
            raise MemoryError()
        r = wb.n_runs
        wb.n_runs += 1
        run = &wb.runs[r]
        run.conn = conn
        run.off = off
        run.len = n
        run.first = -1
        self._piece(run, wb.used, n)
        wb.used += n
        st.run[region] = r
        self._touch(conn, st)
        return 0

    cdef int _piece(self, run_t* run, int64_t pos, int64_t n) except -1:
        # a new last piece for `run`
        cdef wbuf_t* wb = self.cur
        cdef int32_t k
        if grow(<void**>&wb.pieces, &wb.cap_pieces, wb.n_pieces, sizeof(piece_t)) != 0:
            raise MemoryError()
        k = wb.n_pieces
        wb.n_pieces += 1
        wb.pieces[k].pos = pos
        wb.pieces[k].len = n
        wb.pieces[k].next = -1
        if run.first < 0:
            run.first = k
        else:
            wb.pieces[run.last].next = k
        run.last = k
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
        cdef conn_t* c = conn_at(self.engine, conn)
        cdef hdr_t hd
        memset(&hd, 0, sizeof(hdr_t))
        memcpy(hd.magic, b"FSRECORD", 8)
        hd.version = VERSION
        hd.header_size = HEADER_SIZE
        hd.record_size = RECORD_SIZE
        hd.flags = (HF_KEEP if self.keep else 0) | (0 if self.store_bytes else HF_NO_BYTES)
        if self.engine.flows.vlan_key:
            hd.flags |= HF_VLAN_KEY
            hd.vlan[0] = c.vlan[0]
            hd.vlan[1] = c.vlan[1]
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
        self._op(conn, OP_CREATE, &hd, sizeof(hdr_t))
        st.exists = 1
        st.closed = 0
        st.records = 0
        st.gaps = 0
        st.udp_end[0] = st.udp_end[1] = 0
        st.pub_end[0] = st.pub_end[1] = 0
        st.udp_rec[0] = st.udp_rec[1] = 0
        st.done_mask = 0
        st.pub_last_ts = c.first_ts
        st.out_records = 0
        st.out_closed = 0
        st.pub_acked[0] = st.pub_acked[1] = -1
        st.proto = c.proto
        st.ipver = c.ipver
        st.cport = c.cport
        st.sport = c.sport
        st.vlan[0] = c.vlan[0]
        st.vlan[1] = c.vlan[1]
        memcpy(st.client, c.client, 16)
        memcpy(st.server, c.server, 16)
        self.files += 1
        return 0

    cdef int on_data(self, uint32_t conn, int d, int64_t offset, const uint8_t* data, uint32_t n) except -1:
        self.bytes_written += n
        if not self.store_bytes:
            return 0            # (the ends published still say how far the stream went)
        self._write(conn, self._state(conn), R_DATA0 + d, (DATA1_OFF if d else DATA0_OFF) + offset, data, n)
        return 0

    cdef int on_datagram(self, uint32_t conn, int d, int64_t ts, const uint8_t* data, uint32_t n) except -1:
        cdef cstate_t* st = self._state(conn)
        if self.store_bytes:
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
        if st.proto == 17:
            st.udp_end[d] = offset + length     # (a datagram's tail the capture cut: a hole)
        self._touch(conn, st)
        return 0

    cdef int on_close(self, uint32_t conn, object engine) except -1:
        cdef cstate_t* st = self._state(conn)
        if not st.exists:
            return 0
        self._publish(conn, True)
        st.closed = 1
        self.just_closed.append(conn)
        return 0

    def abort(self):
        """Stop writing (after an error): close every file as it is, CLOSED flags left clear."""
        cdef int k
        if self.busy:
            with nogil:
                fs_bg_wait(&self.bg)
            self.busy = False
        self._end_runs(self.cur)
        wb_reset(self.cur)
        for k in range(self.ws.max_handles):
            ws_close_handle(&self.ws, k)
        if self.cs != NULL:
            for k in range(<int>self.cs_chunks * CS_CHUNK):
                if self.cs[k >> CS_CHUNK_SHIFT] != NULL:
                    self.cs[k >> CS_CHUNK_SHIFT][k & (CS_CHUNK - 1)].closed = 1

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
            st.udp_rec[p.dir] += p.payload_wirelen  # (what the capture cut of it is a gap)
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

    def publish(self, bint hand_over=True):
        """Make everything written so far visible to readers (header counters). Returns the
        connections that changed since the last publish and those that ended (for in-process
        readers such as an inline chain). In the background (set_background) the batch is
        being written when this returns; without `hand_over` it waits in the buffer for
        hand_over()."""
        cdef uint32_t k
        cdef cstate_t* st
        touched = [self.touched[k] for k in range(self.n_touched)]
        for k in range(self.n_touched):
            st = self._state(self.touched[k])
            st.touched = 0
            if not st.closed:
                self._publish(self.touched[k], False)
        self.n_touched = 0
        if hand_over:
            self._hand_over()
        closed, self.just_closed = self.just_closed, []
        return touched, closed

    cdef int _publish(self, uint32_t conn, bint final) except -1:
        # the connection's counters as they stand, to go into its header after its runs
        cdef cstate_t* st = self._state(conn)
        cdef conn_t* c = conn_at(self.engine, conn)
        cdef dir_t* D
        cdef pub_t p
        cdef int d
        memset(&p, 0, sizeof(pub_t))
        for d in range(2):
            D = &c.d[d]
            p.settled[d] = D.settled
            p.midstream[d] = D.midstream
            p.origin[d] = D.origin
            if c.proto == 17:
                p.has_end[d] = 1
                p.end[d] = st.udp_end[d]
            elif D.settled:
                p.has_end[d] = 1
                p.end[d] = D.next - D.origin
            if p.has_end[d]:
                st.pub_end[d] = p.end[d]
            if D.has_ack and D.settled:
                p.has_acked[d] = 1
                p.acked[d] = D.acked - D.origin
                st.pub_acked[d] = p.acked[d]
            if final:
                p.close[d] = D.close_reason if D.close_reason else c.close_reason
        p.last_ts = c.last_ts
        st.pub_last_ts = c.last_ts
        p.modules_mask = self.modules_mask
        p.gaps = st.gaps
        p.records = st.records
        self._op(conn, OP_FINAL if final else OP_PUBLISH, &p, sizeof(pub_t))
        return 0

    cdef handle_t* _open(self, uint32_t conn) except NULL:
        # a connection's file, for the gateway's own use while the writer is idle (after _wait)
        cdef handle_t* h = ws_handle(&self.ws, conn, NULL)
        if h == NULL:
            self._check()
        return h

    def write_data(self, uint32_t conn, int d, int64_t offset, bytes data):
        """Merge a verified payload edit: the gateway, the only writer, overwrites stream bytes in
        place (same length), so every later reader sees the merged bytes."""
        cdef cstate_t* st = self._state(conn)
        cdef handle_t* h
        if not st.exists:
            raise KeyError(conn)
        self._sync()
        h = self._open(conn)
        if ws_pwrite(&self.ws, h.fd, <const uint8_t*><char*>data, len(data), (DATA1_OFF if d else DATA0_OFF) + offset, conn) != 0:
            self._check()

    def write_record_field(self, uint32_t conn, uint64_t index, int field_off, bytes data):
        """Merge a verified header edit into record `index` (bytes at `field_off` of it), so later
        stages, workers included, read the merged field; the record must be published."""
        cdef cstate_t* st = self._state(conn)
        cdef handle_t* h
        if not st.exists:
            raise KeyError(conn)
        if field_off < 0 or field_off + len(data) > RECORD_SIZE:
            raise ValueError(f"bytes {field_off}+{len(data)} are outside a record")
        self._wait()                # (the writer thread may still hold the record: see _set_bits)
        h = self._open(conn)
        if ws_pwrite(&self.ws, h.fd, <const uint8_t*><char*>data, len(data),
                     RECORDS_OFF + <int64_t>index * RECORD_SIZE + field_off, conn) != 0:
            self._check()

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
        cdef cstate_t* st = self._state(conn)
        if st.ipver == 0:                   # never opened here
            raise KeyError(conn)
        n = 4 if st.ipver == 4 else 16
        return (st.proto, st.ipver, bytes(st.client[:n]), st.cport, bytes(st.server[:n]), st.sport)

    def vlan(self, uint32_t conn):
        """The connection's VLAN ids as outputs list them (format.vlan_ids), or None when flows
        are not keyed by VLAN."""
        cdef cstate_t* st = self._state(conn)
        if st.ipver == 0:
            raise KeyError(conn)
        return vlan_ids(st.vlan[0], st.vlan[1]) if self.engine.flows.vlan_key else None

    # --- re-sharding: a connection's file handed to another store -----------------------------

    def export_conn(self, uint32_t conn):
        """Hand an open connection's record file over to another store (re-sharding): returns
        (its writing state, its path), or None if it has no open file here. This store writes
        nothing more to it."""
        cdef cstate_t* st = self._state(conn)
        if not st.exists or st.closed:
            return None
        self._sync()
        ws_close_conn(&self.ws, conn)
        out = ((<char*>st)[:sizeof(cstate_t)], self.path(conn))
        st.exists = 0
        st.closed = 1
        self._forget(conn, st)          # (it goes on in the other store)
        return out

    def adopt_conn(self, uint32_t conn, bytes state, str path):
        """Take over a record file `export_conn` gave, as connection `conn`: the file moves into
        this store under its new name, and writing goes on where it stopped (same record ids,
        offsets and gaps)."""
        cdef cstate_t* st = self._state(conn)
        cdef handle_t* h
        if st.exists:
            raise ValueError(f"connection {conn} already has a record file")
        self._sync()
        memcpy(st, <const char*>state, sizeof(cstate_t))
        st.touched = 0
        st.run[0] = st.run[1] = st.run[2] = st.run[3] = -1
        final = self.path(conn)
        try:
            os.rename(path, final)
        except OSError as e:
            raise FlowsiftError(f"{final}: cannot take over the record file {path}: {e.strerror}") from None
        h = self._open(conn)
        self.ws.reopens -= 1                # an adoption, not a reopen
        h.hdr.conn = conn
        h.hdr.modules_mask = self.modules_mask
        if ws_write_header(&self.ws, h) != 0:
            self._check()
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
        acknowledged. Returns the connection's state as reclaim() does.

        A module done with the whole of an ended connection that other modules still read has
        its bit recorded in memory only (done_mask; "deferred" in what this returns): it goes
        into the records with the last module's, in one pass over them, or not at all if the
        file is retired then (settle_bits writes what is still pending)."""
        cdef cstate_t* st = self._state(conn)
        cdef uint64_t n, mask = (<uint64_t>1) << bit
        if not st.exists:
            if st.out_closed and not st.forgotten:
                # ended and gone already, its state kept for a registry's late reports: the
                # oldest of the files kept for unacknowledged bytes (unacked_files), which a
                # module that registered later had not read
                return {"complete": None, "reclaimed": None, "oldest_unacked_done": None, "retired": True}
            raise KeyError(conn)
        if upto >= st.records:
            st.done_mask |= mask
        n = st.records
        if self._retire_at_once(conn, st):
            return {"complete": n, "reclaimed": None, "oldest_unacked_done": n, "retired": True}
        if st.out_closed and upto >= n and (st.done_mask & self.modules_mask) != self.modules_mask:
            st.bits_pending = 1
            return {"complete": None, "reclaimed": None, "oldest_unacked_done": None, "retired": False,
                    "deferred": True}
        self._set_bits(conn, st, mask, upto)
        return self.reclaim(conn)

    cdef int _set_bits(self, uint32_t conn, cstate_t* st, uint64_t mask, uint64_t upto) except -1:
        # `mask` into records [0, upto), and the pending done_mask into every record written
        cdef handle_t* h
        cdef uint64_t i = 0, j, n, bits, pending = st.done_mask if st.bits_pending else 0
        cdef uint64_t nrec
        cdef bint changed
        self._wait()
        nrec = st.out_records
        if upto > nrec:
            upto = nrec
        if not pending:
            nrec = upto
        h = self._open(conn)
        while i < nrec:
            n = nrec - i if nrec - i < CHUNK_RECS else CHUNK_RECS
            self._read_records(h, i, n)
            changed = False
            for j in range(n):
                bits = pending | (mask if i + j < upto else 0)
                if (self.rbuf[j].modules & bits) != bits:
                    self.rbuf[j].modules |= bits
                    changed = True
            if changed:
                if ws_pwrite(&self.ws, h.fd, self.rbuf, <int64_t>n * RECORD_SIZE, RECORDS_OFF + <int64_t>i * RECORD_SIZE, conn) != 0:
                    self._check()
            i += n
        if pending and st.out_closed:
            st.bits_pending = 0         # (an ended connection's records are all in the file)
        return 0

    def settle_bits(self):
        """Write the module bits still pending (module_done) into their records: for files that
        stay after the run. Returns how many files were written to."""
        cdef uint32_t k, i, conn
        cdef cstate_t* st
        cdef int done = 0
        for k in range(self.cs_chunks):
            if self.cs[k] == NULL:
                continue
            for i in range(CS_CHUNK):
                st = &self.cs[k][i]
                if st.exists and st.bits_pending:
                    conn = (k << CS_CHUNK_SHIFT) | i
                    self._set_bits(conn, st, 0, 0)
                    self.reclaim(conn)
                    done += 1
        return done

    cdef bint _retire_at_once(self, uint32_t conn, cstate_t* st) except -1:
        # The common end of a connection: closed, every module done with every record, all its
        # bytes acknowledged. Its file goes without being opened again to set bits in records
        # that nobody will read. Anything less certain takes the long way (reclaim). (What it
        # published last is final: the engine takes nothing more of an ended connection.)
        cdef int d
        if not st.out_closed or self.keep or self.modules_mask == 0 or (st.done_mask & self.modules_mask) != self.modules_mask:
            return False
        if st.proto == 6:
            for d in range(2):
                if st.pub_end[d] > 0 and st.pub_acked[d] < st.pub_end[d]:
                    return False
        self._retire(conn, st)
        return True

    cdef int _retire(self, uint32_t conn, cstate_t* st) except -1:
        # every module is done with every record and nothing waits for an ACK: the file goes.
        # In the background the writer thread removes it with the next batch (after the
        # batches before it, which wrote the file's end): removing a file frees its pages,
        # which costs about as much as writing them did.
        if self.background:
            self._op(conn, OP_RETIRE, NULL, 0)
        else:
            self._wait()
            ws_retire(&self.ws, conn)
        st.exists = 0
        self.retired += 1
        if st.kept_unacked:
            st.kept_unacked = 0
            self.unacked_kept -= 1
        self._forget(conn, st)
        return 0

    cdef int _keep_unacked(self, uint32_t conn, cstate_t* st) except -1:
        # an ended connection done by every module keeps its file for bytes never acknowledged:
        # counted, and past the bound the oldest such file goes. Returns 1 if that was conn's
        # own (st is not to be used then)
        cdef cstate_t* old
        cdef int own = 0
        if st.kept_unacked:
            return 0
        st.kept_unacked = 1
        self.unacked_kept += 1
        self.unacked_order.append(conn)
        while self.unacked_kept > self.unacked_files and self.unacked_order:
            k = self.unacked_order.popleft()
            old = self._state(k)
            if old.exists and old.kept_unacked:
                self._retire(k, old)
                self.unacked_retired += 1
                own |= k == conn
        return own

    def reclaim(self, uint32_t conn):
        """Give back the space of records every registered module finished and the receiver
        acknowledged: their stream bytes are punched out (offsets stay valid). Nothing is given
        back with keep, or while no module is registered (nobody said what "done" means).
        Returns {"complete": records complete, "reclaimed": [bytes per direction], "oldest_unacked_done": i}."""
        cdef cstate_t* st = self._state(conn)
        cdef handle_t* h
        cdef hdr_t* hd
        cdef rec_t* r
        cdef uint64_t i, j, n, complete, oldest
        cdef bint in_prefix
        cdef int64_t bound[2]
        cdef int64_t acked[2]
        cdef int64_t start, stop, data_off
        cdef int d
        cdef uint64_t nrec = st.out_records       # what the file holds
        if not st.exists:
            raise KeyError(conn)
        self._wait()
        h = self._open(conn)
        hd = h.hdr
        mask = self.modules_mask
        for d in range(2):
            acked[d] = hd.acked[d]
            bound[d] = -1
        # One pass: the complete prefix (records whose bitmap holds every registered module's
        # bit), the oldest record in it not yet acknowledged, and for each direction the offset
        # of its first record past the prefix (bytes below it are complete).
        complete = nrec
        oldest = nrec
        in_prefix = True
        i = 0
        while i < nrec:
            n = nrec - i if nrec - i < CHUNK_RECS else CHUNK_RECS
            self._read_records(h, i, n)
            for j in range(n):
                r = &self.rbuf[j]
                d = r.dir & 1
                if in_prefix and mask != 0 and (r.modules & mask) == mask:
                    if oldest == nrec and st.proto == 6 and r.payload_len and \
                            r.seq_offset - hd.origin[d] + r.payload_len > acked[d]:
                        oldest = i + j      # done by every module, not yet acknowledged
                    continue
                if in_prefix:
                    in_prefix = False
                    complete = i + j
                if bound[d] < 0:
                    bound[d] = r.seq_offset - hd.origin[d] if st.proto == 6 else r.seq_offset
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
            if self.keep or mask == 0 or st.proto != 6:
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
        if ws_write_header(&self.ws, h) != 0:
            self._check()
        retire = (st.out_closed and not self.keep and mask != 0 and complete == nrec and oldest == nrec)
        if retire:
            self._retire(conn, st)
        elif st.out_closed and not self.keep and mask != 0 and complete == nrec:
            retire = self._keep_unacked(conn, st)
        return {"complete": complete, "reclaimed": out, "oldest_unacked_done": oldest, "retired": bool(retire)}

    def check_space(self, Batch batch):
        """Before writing a batch: is there room for it? (see FREE_MARGIN)"""
        cdef Py_ssize_t i
        cdef uint64_t need = FREE_MARGIN + self.cur.used     # plus what waits to be written
        if self.busy:
            need += self.ws.job.used            # (read while the writer works: an upper bound)
        cdef uint64_t estimate = 0
        for i in range(batch.n):
            estimate += 4 * batch.pkts[i].caplen
        try:
            st = os.statvfs(self.directory)
        except OSError as e:
            raise FlowsiftError(f"{self.directory}: cannot check the store's free space: {e.strerror}") from None
        avail = st.f_bavail * st.f_frsize
        # what the last batch really took (new files cost pages whatever their packets' size),
        # twice, if that is more than the estimate from this one's bytes
        if self.last_avail >= 0 and avail < self.last_avail and 2 * (self.last_avail - avail) > estimate:
            estimate = 2 * (self.last_avail - avail)
        self.last_avail = avail
        need += estimate
        if avail < need:
            raise FlowsiftError(f"{self.directory}: store is full (less than {need >> 20} MiB free); "
                                f"the connections being written are incomplete")

    def counters(self):
        if self.busy:
            with nogil:
                fs_bg_wait(&self.bg)
            self.busy = False
        return {"files": self.files, "records": self.records_written, "bytes": self.bytes_written,
                "reopens": self.ws.reopens, "late_packets": self.late_packets, "reclaimed_bytes": self.reclaimed_bytes,
                "retired": self.retired, "unacked_kept": self.unacked_kept,
                "unacked_retired": self.unacked_retired, "writes": self.ws.writes,
                "bytes_stored": bool(self.store_bytes)}
