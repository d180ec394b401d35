# cython: language_level=3
"""pcap and pcapng reading over a read-only memory map, one batch at a time.

The loops below run without the GIL and create no Python object per packet: each record
becomes a pkt_t whose `data` points into the mapping. Problems are recorded as a code and
a position; the Python face (capture.py) turns them into one-line errors.
"""
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t
from libc.string cimport memset
from libc.stdlib cimport realloc, free
from posix.stat cimport fstat, struct_stat as stat_t
from posix.unistd cimport close, dup
from posix.mman cimport mmap, munmap, madvise, PROT_READ, MAP_PRIVATE, MAP_FAILED, MADV_SEQUENTIAL, MADV_DONTNEED

cdef extern from "sys/mman.h" nogil:
    enum: MADV_POPULATE_READ

cdef extern from *:
    """
    #include <signal.h>
    #include <stdint.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <unistd.h>
    /* A capture file cut short while mapped (log rotation, tcpdump -w over it) makes the next
       touch of a page past its new end a SIGBUS. For pages of our mappings, the handler maps
       zeros there and raises the reader's flag; the reader then stops with an error at its
       next look. Faults elsewhere go to the handler that was there before. */
    #define FS_MAX_MAPS 64
    static struct { uintptr_t base; size_t size; volatile int *shrunk; } fs_maps[FS_MAX_MAPS];
    static struct sigaction fs_old_bus;
    static int fs_bus_installed = 0;

    static void fs_bus_handler(int sig, siginfo_t *si, void *ctx) {
        uintptr_t a = (uintptr_t) si->si_addr, page;
        int i;
        for (i = 0; i < FS_MAX_MAPS; i++) {
            uintptr_t b = fs_maps[i].base;
            if (b && a >= b && a < b + fs_maps[i].size) {
                page = a & ~((uintptr_t) sysconf(_SC_PAGESIZE) - 1);
                mmap((void *) page, b + fs_maps[i].size - page, PROT_READ,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                *fs_maps[i].shrunk = 1;
                return;
            }
        }
        sigaction(SIGBUS, &fs_old_bus, NULL);   /* the fault repeats under the old disposition */
    }

    static int fs_watch_map(const void *base, size_t size, volatile int *flag) {
        int i;
        if (!fs_bus_installed) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_sigaction = fs_bus_handler;
            sa.sa_flags = SA_SIGINFO | SA_NODEFER;
            sigemptyset(&sa.sa_mask);
            if (sigaction(SIGBUS, &sa, &fs_old_bus) != 0)
                return -1;
            fs_bus_installed = 1;
        }
        for (i = 0; i < FS_MAX_MAPS; i++) {
            if (!fs_maps[i].base) {
                fs_maps[i].size = size;
                fs_maps[i].shrunk = flag;
                fs_maps[i].base = (uintptr_t) base;
                return 0;
            }
        }
        return -1;
    }

    static void fs_unwatch_map(const void *base) {
        int i;
        for (i = 0; i < FS_MAX_MAPS; i++)
            if (fs_maps[i].base == (uintptr_t) base)
                fs_maps[i].base = 0;
    }
    """
    int fs_watch_map(const void* base, size_t size, volatile int* flag) nogil
    void fs_unwatch_map(const void* base) nogil

from flowsift.io._batch cimport Batch, pkt_t, PF_CAPLEN_GT_WIRELEN, PF_STABLE, PF_NO_TS, ST_BAD_INTERFACE, ST_BAD_RECORD
from flowsift.io._bytes cimport fs_rd16, fs_rd32, fs_rd64, fs_ld32

# libpcap refuses records above this (MAXIMUM_SNAPLEN); anything larger is a corrupt header.
DEF MAX_CAPLEN = 262144
# Largest pcapng block we accept: a packet block of MAX_CAPLEN plus generous options.
# Wireshark's limit is the same order (16 MiB); larger lengths are corrupt.
DEF MAX_BLOCK = 16777216

# Pages already read are dropped from our mapping in steps of this size: they stay in the
# page cache, but the process's resident size stays bounded however large the file.
DEF RELEASE_STEP = 8388608

DEF PCAP_MAGIC_US = 0xA1B2C3D4
DEF PCAP_MAGIC_NS = 0xA1B23C4D
DEF PCAP_MAGIC_KUZNETZOV = 0xA1B2CD34   # "modified" pcap: 24-byte record headers
DEF PCAPNG_SHB = 0x0A0D0D0A
DEF PCAPNG_BOM = 0x1A2B3C4D

DEF BT_IDB = 1
DEF BT_OPB = 2
DEF BT_SPB = 3
DEF BT_EPB = 6

cdef enum:
    FMT_PCAP = 1
    FMT_PCAPNG = 2

# error codes (fatal: the rest of the file cannot be read reliably)
cdef enum:
    E_NONE = 0
    E_TRUNC_RECORD_HEADER = 1  # a: bytes left
    E_CAPLEN_ABSURD = 2        # a: caplen
    E_CAPLEN_PAST_EOF = 3      # a: caplen, b: bytes left
    E_BLOCK_TRUNC = 4          # a: bytes left
    E_BLOCK_LEN_SMALL = 5      # a: length
    E_BLOCK_LEN_ALIGN = 6      # a: length
    E_BLOCK_LEN_HUGE = 7       # a: length
    E_BLOCK_PAST_EOF = 8       # a: length, b: bytes left
    E_BLOCK_TRAILER = 9        # a: leading length, b: trailing length
    E_SHB_BOM = 10             # a: value found
    E_SHB_VERSION = 11         # a: major
    E_TOO_MANY_IFACES = 12
    E_FILE_SHRANK = 13         # a: the file's size now

ctypedef struct iface_t:
    uint32_t snaplen
    uint16_t linktype
    uint8_t pow2           # timestamp resolution: 2^-exp when set, else 10^-exp
    uint8_t exp
    int64_t offset_ns      # if_tsoffset
    uint64_t name_pos      # if_name option in the mapping (0: none)
    uint32_t name_len
    uint32_t section
    uint64_t packets


cdef inline bint ng_ts_in_range(const iface_t* ifc, uint64_t ts) noexcept nogil:
    # whether the time fits int64 nanoseconds (up to year 2262); beyond, it is no time at all
    cdef uint64_t div = 1
    cdef int i
    if ifc.pow2:
        return (ts >> ifc.exp) <= 9223372035ULL
    if ifc.exp >= 9:
        return True
    for i in range(9 - ifc.exp):
        div *= 10
    return ts <= 9223372035000000000ULL // div


cdef inline int64_t ng_ts_to_ns(const iface_t* ifc, uint64_t ts) noexcept nogil:
    cdef uint64_t secs, frac, div
    cdef int e = ifc.exp
    cdef int i
    if ifc.pow2:
        if e == 0:
            return <int64_t>(ts * 1000000000ULL) + ifc.offset_ns
        secs = ts >> e
        frac = ts & ((1ULL << e) - 1)
        if e > 34:   # keep frac * 1e9 inside 64 bits
            frac >>= (e - 34)
            e = 34
        return <int64_t>(secs * 1000000000ULL + ((frac * 1000000000ULL) >> e)) + ifc.offset_ns
    if e <= 9:
        div = 1
        for i in range(9 - e):
            div *= 10
        return <int64_t>(ts * div) + ifc.offset_ns
    div = 1
    for i in range(e - 9):
        div *= 10
    return <int64_t>(ts // div) + ifc.offset_ns


cdef class CaptureReader:
    """Reads one pcap or pcapng file. Use flowsift.io.open_capture() rather than this class."""
    cdef const uint8_t* base
    cdef readonly uint64_t size
    cdef readonly uint64_t pos
    cdef readonly int fmt
    cdef int swap
    cdef int nanosec
    cdef uint32_t rec_hdr_len
    cdef iface_t* ifaces
    cdef readonly int n_ifaces
    cdef int cap_ifaces
    cdef int section_first
    cdef readonly uint32_t sections
    cdef readonly uint64_t records        # packet records read so far
    cdef public uint64_t max_records      # 0, or the packet records read at most (--count on a file)
    cdef readonly uint64_t blocks_skipped # pcapng blocks of other types (stats, names, ...)
    cdef readonly uint64_t caplen_gt_snaplen
    cdef readonly uint64_t caplen_gt_wirelen
    cdef readonly uint64_t bad_ts_fraction
    cdef readonly uint64_t bad_timestamp  # pcapng times past int64 nanoseconds (year 2262)
    cdef int64_t last_ts
    cdef readonly int err
    cdef readonly uint64_t err_pos
    cdef readonly uint64_t err_record
    cdef readonly uint64_t err_a
    cdef readonly uint64_t err_b
    cdef readonly object path
    cdef readonly uint32_t version_major
    cdef readonly uint32_t version_minor
    cdef uint64_t released
    cdef uint64_t populated      # page tables filled up to here (MADV_POPULATE_READ)
    cdef volatile int shrunk     # set by the SIGBUS handler: the file was cut while mapped
    cdef int fd                  # kept to see, once a batch, whether the file was cut
    cdef uint64_t mapped         # bytes mapped (size may shrink with the file)

    def __cinit__(self):
        self.base = NULL
        self.ifaces = NULL
        self.fd = -1

    def __dealloc__(self):
        if self.base != NULL:
            fs_unwatch_map(self.base)
            munmap(<void*> self.base, self.mapped)
        if self.fd >= 0:
            close(self.fd)
        free(self.ifaces)

    cdef int _add_iface(self, uint16_t linktype, uint32_t snaplen) noexcept nogil:
        cdef iface_t* grown
        if self.n_ifaces >= 65535:
            return -1
        if self.n_ifaces == self.cap_ifaces:
            self.cap_ifaces = 8 if self.cap_ifaces == 0 else self.cap_ifaces * 2
            grown = <iface_t*> realloc(self.ifaces, self.cap_ifaces * sizeof(iface_t))
            if grown == NULL:
                return -1
            self.ifaces = grown
        memset(&self.ifaces[self.n_ifaces], 0, sizeof(iface_t))
        self.ifaces[self.n_ifaces].linktype = linktype
        self.ifaces[self.n_ifaces].snaplen = snaplen
        self.ifaces[self.n_ifaces].exp = 6          # pcapng default: microseconds
        self.ifaces[self.n_ifaces].section = self.sections - 1 if self.sections else 0
        self.n_ifaces += 1
        return 0

    def open(self, path, int fd, uint64_t size):
        """Map `size` bytes of `fd` and read the file header. Returns None or an error string."""
        cdef void* m
        cdef uint32_t magic
        self.path = path
        self.size = size
        if size == 0:
            return "empty file (0 bytes): not a pcap or pcapng capture"
        m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0)
        if m == MAP_FAILED:
            return "cannot map the file into memory"
        self.base = <const uint8_t*> m
        self.mapped = size
        self.fd = dup(fd)
        fs_watch_map(m, size, &self.shrunk)     # best effort: without it a cut file is a SIGBUS
        madvise(m, size, MADV_SEQUENTIAL)
        if size < 4:
            return f"file too short ({size} bytes) for a capture header"
        magic = fs_ld32(self.base)
        if magic == PCAPNG_SHB:
            self.fmt = FMT_PCAPNG
            if size < 28:
                return f"pcapng section header block cut short: {size} bytes, at least 28 needed"
            self.pos = 0
            return None
        for swap in (0, 1):
            magic = fs_rd32(self.base, swap)
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_KUZNETZOV):
                self.fmt = FMT_PCAP
                self.swap = swap
                self.nanosec = magic == PCAP_MAGIC_NS
                self.rec_hdr_len = 24 if magic == PCAP_MAGIC_KUZNETZOV else 16
                if size < 24:
                    return f"pcap file header cut short: {size} bytes, 24 needed"
                self.version_major = fs_rd16(self.base + 4, swap)
                self.version_minor = fs_rd16(self.base + 6, swap)
                self.sections = 1
                self._add_iface(fs_rd32(self.base + 20, swap) & 0xFFFF, fs_rd32(self.base + 16, swap))
                self.ifaces[0].exp = 9 if self.nanosec else 6
                self.pos = 24
                return None
        head = bytes(self.base[:min(size, 16)])
        for sig, kind, tool in ((b"\x1f\x8b", "gzip", "gunzip"), (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
                                  (b"\xfd7zXZ\x00", "xz", "unxz"), (b"BZh", "bzip2", "bunzip2"),
                                  (b"\x04\x22\x4d\x18", "lz4", "unlz4")):
            if head.startswith(sig):
                return f"{kind}-compressed: decompress it first ({tool} FILE)"

        if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
            return f"not a capture file: starts with text {head.decode('ascii', 'replace')!r}"
        return f"not a pcap or pcapng file: unknown magic number 0x{fs_ld32(self.base):08x}"

    def fill(self, Batch batch):
        """Read up to batch.capacity packet records into `batch`; returns how many (0 at end)."""
        cdef Py_ssize_t n, cap = batch.capacity
        cdef uint64_t upto, here
        cdef stat_t st
        if self.err != E_NONE:
            batch.n = 0
            return 0
        if self.max_records:
            if self.records >= self.max_records:
                batch.n = 0
                return 0
            if <uint64_t>cap > self.max_records - self.records:
                cap = <Py_ssize_t>(self.max_records - self.records)
        if self.fd >= 0 and fstat(self.fd, &st) == 0 and <uint64_t>st.st_size < self.size:
            # cut since the last batch: read up to its new end, no further
            self.size = st.st_size
            self.shrunk = 1
        with nogil:
            # what lies before pos can leave our RSS: a private read-only file mapping re-reads
            # from the file if touched again, so pointers into it (PF_STABLE) stay valid
            if self.pos - self.released >= RELEASE_STEP:
                # from the start: pages a reassembler touched again (comparing a retransmission
                # with delivered bytes it keeps by reference) leave too
                upto = self.pos & ~(<uint64_t>4095)
                madvise(<void*>self.base, upto, MADV_DONTNEED)
                self.released = upto
            if self.pos + RELEASE_STEP > self.populated and self.populated < self.size:
                # the next steps' page tables filled in one call, not a fault every 16 pages
                # (best effort: kernels before 5.14 say EINVAL and faults do it)
                here = self.pos & ~(<uint64_t>4095)
                upto = min(here + 2 * RELEASE_STEP, self.size)
                if upto > self.populated:
                    here = max(here, self.populated)
                    madvise(<void*>(self.base + here), upto - here, MADV_POPULATE_READ)
                    self.populated = upto
            if self.fmt == FMT_PCAP:
                n = self._fill_pcap(batch.pkts, cap)
            else:
                n = self._fill_pcapng(batch.pkts, cap)
        if self.shrunk:
            n = self._cut_to_file(batch, n)
        batch.n = n
        batch.owner = self
        return n

    cdef Py_ssize_t _cut_to_file(self, Batch batch, Py_ssize_t n):
        # the file shrank under the mapping: keep the packets whose bytes it still holds, and
        # stop there with an error (what was read before stays read)
        cdef Py_ssize_t i, k = 0
        cdef stat_t st
        now = st.st_size if self.fd >= 0 and fstat(self.fd, &st) == 0 else 0
        if now > self.size:
            now = self.size
        for i in range(n):
            if <uint64_t>(batch.pkts[i].data - self.base) + batch.pkts[i].caplen > <uint64_t>now:
                break
            k += 1
        if k < n or self.err != E_NONE or self.pos >= <uint64_t>now:
            # the reading met the cut (the loop's own "cut short" error is this one)
            self.records -= <uint64_t>(n - k)
            self.err = E_NONE
            self._set_err(E_FILE_SHRANK, <uint64_t>now, <uint64_t>now, 0)
        return k

    cdef Py_ssize_t _fill_pcap(self, pkt_t* pkts, Py_ssize_t cap) noexcept nogil:
        cdef Py_ssize_t n = 0
        cdef const uint8_t* h
        cdef uint32_t ts_sec, ts_frac, caplen, wirelen
        cdef uint64_t left
        cdef pkt_t* p
        cdef int swap = self.swap
        cdef uint32_t hl = self.rec_hdr_len
        cdef uint32_t snaplen = self.ifaces[0].snaplen
        cdef uint16_t linktype = self.ifaces[0].linktype
        cdef uint32_t frac_max = 1000000000 if self.nanosec else 1000000
        cdef uint64_t pos = self.pos
        while n < cap:
            if pos >= self.size:
                break
            left = self.size - pos
            if left < hl:
                self._set_err(E_TRUNC_RECORD_HEADER, pos, left, 0)
                break
            h = self.base + pos
            ts_sec = fs_rd32(h, swap)
            ts_frac = fs_rd32(h + 4, swap)
            caplen = fs_rd32(h + 8, swap)
            wirelen = fs_rd32(h + 12, swap)
            if caplen > MAX_CAPLEN:
                self._set_err(E_CAPLEN_ABSURD, pos, caplen, 0)
                break
            if caplen > left - hl:
                self._set_err(E_CAPLEN_PAST_EOF, pos, caplen, left - hl)
                break
            p = &pkts[n]
            memset(p, 0, sizeof(pkt_t))
            if ts_frac >= frac_max:
                self.bad_ts_fraction += 1
            p.ts_ns = <int64_t>ts_sec * 1000000000 + (<int64_t>ts_frac if self.nanosec else <int64_t>ts_frac * 1000)
            p.data = h + hl
            p.flags = PF_STABLE
            p.rec_pos = pos
            p.caplen = caplen
            p.wirelen = wirelen
            p.linktype = linktype
            if snaplen and caplen > snaplen:
                self.caplen_gt_snaplen += 1
            if caplen > wirelen:
                self.caplen_gt_wirelen += 1
                p.flags |= PF_CAPLEN_GT_WIRELEN
            pos += hl + caplen
            self.records += 1
            n += 1
        self.pos = pos
        self.ifaces[0].packets += n
        return n

    cdef void _set_err(self, int code, uint64_t pos, uint64_t a, uint64_t b) noexcept nogil:
        self.err = code
        self.err_pos = pos
        self.err_record = self.records + 1
        self.err_a = a
        self.err_b = b

    cdef int _parse_idb(self, const uint8_t* body, uint32_t blen, int swap) noexcept nogil:
        cdef uint16_t code, olen
        cdef uint32_t off = 8
        cdef iface_t* ifc
        if blen < 8:
            # malformed IDB: still define the interface (link type 0xFFFF: unknown, its frames
            # counted as unsupported) so the next interfaces keep their ids
            return self._add_iface(0xFFFF, 0)
        if self._add_iface(fs_rd16(body, swap), fs_rd32(body + 4, swap)) < 0:
            return -1
        ifc = &self.ifaces[self.n_ifaces - 1]
        while off + 4 <= blen:
            code = fs_rd16(body + off, swap)
            olen = fs_rd16(body + off + 2, swap)
            if code == 0 or off + 4 + olen > blen:
                break
            if code == 2 and olen > 0:            # if_name
                ifc.name_pos = <uint64_t>(body + off + 4 - self.base)
                ifc.name_len = olen
            elif code == 9 and olen >= 1:         # if_tsresol
                ifc.pow2 = (body[off + 4] & 0x80) != 0
                ifc.exp = body[off + 4] & 0x7F
                if not ifc.pow2 and ifc.exp > 19:
                    ifc.exp = 19                  # beyond 64-bit range: treat as 1e-19
                if ifc.pow2 and ifc.exp > 63:
                    ifc.exp = 63
            elif code == 14 and olen >= 8:        # if_tsoffset, seconds
                ifc.offset_ns = <int64_t>fs_rd64(body + off + 4, swap) * 1000000000
            off += 4 + ((olen + 3) & ~3)
        return 0

    cdef Py_ssize_t _fill_pcapng(self, pkt_t* pkts, Py_ssize_t cap) noexcept nogil:
        cdef Py_ssize_t n = 0
        cdef uint64_t pos = self.pos, left
        cdef const uint8_t* b
        cdef const uint8_t* body
        cdef uint32_t btype, blen, bodylen, bom, ifid, caplen, wirelen, hdr
        cdef uint64_t ts
        cdef int swap = self.swap
        cdef pkt_t* p
        cdef iface_t* ifc
        while n < cap:
            if pos >= self.size:
                break
            left = self.size - pos
            if left < 12:
                self._set_err(E_BLOCK_TRUNC, pos, left, 0)
                break
            b = self.base + pos
            btype = fs_ld32(b)
            if btype == PCAPNG_SHB:
                if left < 28:
                    self._set_err(E_BLOCK_TRUNC, pos, left, 0)
                    break
                bom = fs_ld32(b + 8)
                if bom == PCAPNG_BOM:
                    swap = 0
                elif bom == 0x4D3C2B1A:
                    swap = 1
                else:
                    self._set_err(E_SHB_BOM, pos, bom, 0)
                    break
                self.swap = swap
                if fs_rd16(b + 12, swap) != 1:
                    self._set_err(E_SHB_VERSION, pos, fs_rd16(b + 12, swap), 0)
                    break
                if self.sections == 0:
                    self.version_major = 1
                    self.version_minor = fs_rd16(b + 14, swap)
                self.sections += 1
                self.section_first = self.n_ifaces
            else:
                btype = fs_rd32(b, swap)
            blen = fs_rd32(b + 4, swap)
            if blen < 12:
                self._set_err(E_BLOCK_LEN_SMALL, pos, blen, 0)
                break
            if blen & 3:
                self._set_err(E_BLOCK_LEN_ALIGN, pos, blen, 0)
                break
            if blen > MAX_BLOCK:
                self._set_err(E_BLOCK_LEN_HUGE, pos, blen, 0)
                break
            if blen > left:
                self._set_err(E_BLOCK_PAST_EOF, pos, blen, left)
                break
            if fs_rd32(b + blen - 4, swap) != blen:
                self._set_err(E_BLOCK_TRAILER, pos, blen, fs_rd32(b + blen - 4, swap))
                break
            body = b + 8
            bodylen = blen - 12
            if btype == PCAPNG_SHB:
                pass
            elif btype == BT_IDB:
                if self._parse_idb(body, bodylen, swap) < 0:
                    self._set_err(E_TOO_MANY_IFACES, pos, 0, 0)
                    break
            elif btype == BT_EPB or btype == BT_OPB or btype == BT_SPB:
                p = &pkts[n]
                memset(p, 0, sizeof(pkt_t))
                p.rec_pos = pos
                p.linktype = 0xFFFF
                ifc = NULL
                if btype == BT_SPB:
                    hdr = 4
                    ifid = 0
                    ts = 0
                    if bodylen >= 4:
                        wirelen = fs_rd32(body, swap)
                        caplen = bodylen - 4
                        if wirelen < caplen:
                            caplen = wirelen
                    else:
                        wirelen = 0
                        caplen = 0xFFFFFFFF
                else:
                    hdr = 20
                    if bodylen >= 20:
                        if btype == BT_EPB:
                            ifid = fs_rd32(body, swap)
                        else:
                            ifid = fs_rd16(body, swap)
                        ts = (<uint64_t>fs_rd32(body + 4, swap) << 32) | fs_rd32(body + 8, swap)
                        caplen = fs_rd32(body + 12, swap)
                        wirelen = fs_rd32(body + 16, swap)
                    else:
                        ifid = 0
                        caplen = 0xFFFFFFFF
                        wirelen = 0
                if ifid < <uint32_t>(self.n_ifaces - self.section_first):   # unsigned: a huge id must not pass
                    ifc = &self.ifaces[self.section_first + ifid]
                    p.iface = <uint16_t>(self.section_first + ifid)
                    p.linktype = ifc.linktype
                    ifc.packets += 1
                    if btype == BT_SPB:
                        p.ts_ns = self.last_ts   # SPBs carry no timestamp
                        p.flags |= PF_NO_TS
                        if ifc.snaplen and caplen > ifc.snaplen:
                            caplen = ifc.snaplen
                    elif ng_ts_in_range(ifc, ts):
                        p.ts_ns = ng_ts_to_ns(ifc, ts)
                        self.last_ts = p.ts_ns
                    else:
                        p.ts_ns = self.last_ts
                        p.flags |= PF_NO_TS
                        self.bad_timestamp += 1
                else:
                    p.status = ST_BAD_INTERFACE
                    p.iface = 0xFFFF
                    p.ts_ns = self.last_ts
                    p.flags |= PF_NO_TS
                if caplen > bodylen - hdr or bodylen < hdr:
                    # the block is intact but its packet claims more bytes than it holds
                    p.status = ST_BAD_RECORD
                    p.flags |= PF_NO_TS
                    caplen = 0
                    wirelen = 0
                p.data = body + hdr
                p.flags |= PF_STABLE
                p.caplen = caplen
                p.wirelen = wirelen
                if ifc != NULL and ifc.snaplen and caplen > ifc.snaplen:
                    self.caplen_gt_snaplen += 1
                if caplen > wirelen:
                    self.caplen_gt_wirelen += 1
                    p.flags |= PF_CAPLEN_GT_WIRELEN
                self.records += 1
                n += 1
            else:
                self.blocks_skipped += 1
            pos += blen
        self.pos = pos
        return n

    def interfaces(self):
        """One dict per interface (pcap files have one), in file order."""
        out = []
        cdef int i
        cdef iface_t* ifc
        for i in range(self.n_ifaces):
            ifc = &self.ifaces[i]
            name = None
            if ifc.name_pos:
                name = bytes(self.base[ifc.name_pos:ifc.name_pos + ifc.name_len]).split(b"\0", 1)[0].decode("utf-8", "replace")
            res = ("2^-%d" % ifc.exp) if ifc.pow2 else ("1e-%d" % ifc.exp)
            out.append({"index": i, "section": ifc.section, "linktype": ifc.linktype, "snaplen": ifc.snaplen,
                        "name": name, "tsresol": res, "packets": ifc.packets})
        return out
