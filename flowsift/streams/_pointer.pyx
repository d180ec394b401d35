# cython: language_level=3
"""Stream pointers: a module's cursor into one direction of one connection's record file.

Reads return memoryviews into a read-only mapping of the file: no copy until the caller asks
for bytes. A gap is a value the reader meets (`at_gap`), never an exception, never filler.
The hot loops (find, read_until) run memmem over the mapping.
"""
import mmap as _mmap
import os as _os

from operator import index as _index

from cpython.buffer cimport PyBuffer_FillInfo
from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t, INT64_MAX, INT64_MIN
from libc.string cimport memchr, memcpy, strerror
from posix.mman cimport mmap, munmap, PROT_READ, MAP_SHARED, MAP_FAILED
from posix.stat cimport fstat, struct_stat

from flowsift.reassembly.events import Gap
from flowsift.streams import format as F
from flowsift.streams.reader import RecordFile, StoreError

cdef extern from "string.h" nogil:
    void* memmem(const void* haystack, size_t hl, const void* needle, size_t nl)

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

# Virtual size of one mapping of a direction's data: no page is touched until read, so a big
# window costs address space only, and the stream rarely outgrows it.
DEF MAP_WINDOW = 1073741824

# record layout (format.RECORD_FIELDS; little-endian), checked against format.py at import
DEF RECORD_SIZE = 128
DEF OFF_PAYLOAD_LEN = 32
DEF OFF_DIR = 51
DEF OFF_RFLAGS = 52
DEF OFF_TS = 8
DEF OFF_SEQ_OFFSET = 24
DEF RF_RETRANSMISSION = 1
DEF RF_CONFLICT = 4
_offsets = {name: off for name, _, off in F.RECORD_FIELDS}
assert (F.RECORD_SIZE, _offsets["payload_len"], _offsets["dir"], _offsets["rflags"], F.RF_RETRANSMISSION, F.RF_CONFLICT,
        _offsets["ts_ns"], _offsets["seq_offset"]) \
    == (RECORD_SIZE, OFF_PAYLOAD_LEN, OFF_DIR, OFF_RFLAGS, RF_RETRANSMISSION, RF_CONFLICT, OFF_TS, OFF_SEQ_OFFSET)


cdef class Mapping:
    """A read-only shared mapping of part of a file, usable as a buffer (memoryview), that does
    not duplicate the descriptor (Python's mmap does: thousands of open streams would cost
    thousands of descriptors)."""
    cdef void* addr
    cdef readonly Py_ssize_t length

    def __cinit__(self, int fd, Py_ssize_t length, long long offset):
        self.addr = mmap(NULL, length, PROT_READ, MAP_SHARED, fd, offset)
        if self.addr == MAP_FAILED:
            self.addr = NULL
            raise OSError(errno, strerror(errno).decode())
        self.length = length

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, self.addr, self.length, 1, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __len__(self):
        return self.length

    def __dealloc__(self):
        if self.addr != NULL:
            munmap(self.addr, self.length)


def file_size(int fd):
    """The size of an open file: fstat without the stat_result os.fstat builds, which would
    double the cost of the header refresh that measures it every time (RecordFile.refresh)."""
    cdef struct_stat st
    if fstat(fd, &st) != 0:
        raise OSError(errno, strerror(errno).decode())
    return st.st_size


def record_totals(const uint8_t[::1] recs not None, Py_ssize_t count):
    """(packets0, packets1, bytes0, bytes1, retransmissions, conflicts) over `count` records
    laid out as in a record file: one pass in C where numpy would take a call per column
    (most connections have a few records, and each call is the cost)."""
    cdef Py_ssize_t i
    cdef const uint8_t* r
    cdef uint64_t packets[2]
    cdef uint64_t octets[2]
    cdef uint64_t retrans = 0, conflicts = 0
    cdef unsigned int d, rflags
    packets[0] = packets[1] = octets[0] = octets[1] = 0
    if count < 0 or count * RECORD_SIZE > recs.shape[0]:
        raise ValueError(f"{count} records do not fit in {recs.shape[0]} bytes")
    for i in range(count):
        r = &recs[0] + i * RECORD_SIZE
        d = r[OFF_DIR] & 1
        rflags = r[OFF_RFLAGS] | (<unsigned int>r[OFF_RFLAGS + 1] << 8)
        packets[d] += 1
        octets[d] += (<uint64_t>r[OFF_PAYLOAD_LEN] | (<uint64_t>r[OFF_PAYLOAD_LEN + 1] << 8)
                      | (<uint64_t>r[OFF_PAYLOAD_LEN + 2] << 16) | (<uint64_t>r[OFF_PAYLOAD_LEN + 3] << 24))
        retrans += (rflags & RF_RETRANSMISSION) != 0
        conflicts += (rflags & RF_CONFLICT) != 0
    return packets[0], packets[1], octets[0], octets[1], retrans, conflicts


def first_carrier(const uint8_t[::1] recs not None, Py_ssize_t count, int direction, int64_t origin,
                  int64_t offset):
    """The time (ns) of the first of `count` records (laid out as in a record file) whose payload
    holds stream byte `offset` of `direction` (its seq_offset less `origin`), or None: the
    packet that first carried it. One pass in C (an event's time, flowsift.modules.runner)."""
    cdef Py_ssize_t i
    cdef const uint8_t* r
    cdef int64_t start, ts
    cdef uint32_t n
    if count < 0 or count * RECORD_SIZE > recs.shape[0]:
        raise ValueError(f"{count} records do not fit in {recs.shape[0]} bytes")
    for i in range(count):
        r = &recs[0] + i * RECORD_SIZE
        if r[OFF_DIR] != direction:
            continue
        memcpy(&n, r + OFF_PAYLOAD_LEN, 4)
        if n == 0:
            continue
        memcpy(&start, r + OFF_SEQ_OFFSET, 8)
        start -= origin
        if start <= offset < start + <int64_t>n:
            memcpy(&ts, r + OFF_TS, 8)
            return ts
    return None


cdef inline int64_t _as_int64(object n) except? -1:
    # A size or offset argument: an integer (TypeError for anything else, as range() says), held
    # to int64 (a size past it means "all there is"; an offset past it is out of range anyway).
    cdef int overflow = 0
    cdef long long v
    if not PyLong_Check(n):
        n = _index(n)
    v = PyLong_AsLongLongAndOverflow(n, &overflow)
    if overflow > 0:
        return INT64_MAX
    if overflow < 0:
        return INT64_MIN
    return v


cdef inline int64_t _size(object n, int64_t avail, str call) except? -1:
    # A size argument: None for all there is (up to `avail`); a negative one is a mistake, once
    # taken for "all" (skip(-5) passed everything)
    cdef int64_t k
    if n is None:
        return avail
    k = _as_int64(n)
    if k < 0:
        raise ValueError(f"{call}({n}): a size is 0 or more (None: all there is)")
    return avail if k > avail else k


# The reason of the gap a pointer shows for bytes given back (reclaimed) that it had not read:
# one resumed below the retained start (resume()). No gap entry of a file has it.
RECLAIMED = "reclaimed"


cdef class StreamPointer:
    """Cursor into direction `direction` (0: client to server, 1: server to client) of a record file."""
    cdef readonly object file
    cdef readonly int direction
    cdef int64_t pos
    cdef int64_t end              # stream offset after the last delivered byte or gap (published)
    cdef int64_t start            # lowest offset still retained (reclaimed below)
    cdef list gaps                # [(offset, length, reason)], increasing offset
    cdef int64_t* g_off           # the gaps' offsets, and the furthest end of gaps[0..i]:
    cdef int64_t* g_reach         # the gap at or after an offset is the first whose reach is beyond it
    cdef Py_ssize_t n_gaps
    cdef uint64_t gaps_read       # the header's gap count when the gaps were read
    cdef object cut_read          # and where the file ended then (None: not short of its layout)
    cdef Py_ssize_t gap_i         # the gap at or after pos at the last lookup: a hint, checked
    cdef object _map
    cdef const uint8_t* base      # mapping start
    cdef int64_t map_off          # stream offset at `base`
    cdef int64_t map_len
    cdef int64_t data_off
    cdef bint ended               # the direction ended at `end` (as the header it was given says)
    # the Flow whose module was handed the pointer (a chain sets it): whose replace() is refused
    cdef public object _flow

    def __cinit__(self, *args, **kwargs):
        self.g_off = self.g_reach = NULL
        self.n_gaps = 0

    def __dealloc__(self):
        PyMem_Free(self.g_off)
        PyMem_Free(self.g_reach)

    def __init__(self, file, int direction, header=None):
        """`header`: the file's header as the caller just read it (and may have limited it):
        the pointer reads no further."""
        self.file = file if isinstance(file, RecordFile) else RecordFile(file)
        if direction not in (0, 1):
            raise ValueError("direction is 0 (client to server) or 1 (server to client)")
        self.direction = direction
        self.file.require_bytes()
        self.data_off = self.file.header[f"data_off{direction}"]
        self.pos = 0
        self._map = None
        self.gaps = []
        self.gaps_read = 0
        self.cut_read = None
        self.gap_i = 0
        self.refresh(header)
        self.pos = self.start

    def refresh(self, header=None):
        """Learn what the gateway published since; returns True if the stream grew. `header`:
        the file's header just read by the caller (saves reading it again)."""
        h = header if header is not None else self.file.refresh()
        old = self.end
        self.end = h[f"end{self.direction}"]
        self.ended = h[f"close{self.direction}"] != 0
        # (a file cut short ends below what was given back)
        self.start = min(max(0, h[f"reclaimed{self.direction}"]), self.end)
        cut = self.file.cut_at
        if h["gaps"] > self.gaps_read or cut != self.cut_read:
            # (a file cut short has gaps where it lacks bytes: RecordFile.gaps)
            self._take_gaps([(g.offset, g.length, g.reason) for g in self.file.gaps(self.direction)])
            self.gaps_read = h["gaps"]
            self.cut_read = cut
        return self.end > old

    def detach(self):
        """Let go of the mapping (the record file is being closed): the next read maps again,
        from the file opened again, and views handed out keep theirs."""
        self._map = None
        self.base = NULL

    cdef int _take_gaps(self, list gaps) except -1:
        cdef Py_ssize_t i, n = len(gaps)
        cdef int64_t reach = INT64_MIN
        cdef int64_t* off
        gaps.sort()             # (written in order, so this costs a pass; the bisection needs it)
        off = <int64_t*> PyMem_Realloc(self.g_off, max(n, 1) * sizeof(int64_t))
        if off == NULL:
            raise MemoryError()
        self.g_off = off
        off = <int64_t*> PyMem_Realloc(self.g_reach, max(n, 1) * sizeof(int64_t))
        if off == NULL:
            raise MemoryError()
        self.g_reach = off
        for i in range(n):
            self.g_off[i] = gaps[i][0]
            reach = max(reach, self.g_off[i] + <int64_t>gaps[i][1])
            self.g_reach[i] = reach
        self.gaps = gaps
        self.n_gaps = n
        self.gap_i = 0
        return 0

    @property
    def closed(self):
        """The direction ended: nothing will be added after `end`. (A reader held behind the
        gateway, e.g. by a writing module before it, sees it end only once it may read to it.)"""
        return self.ended

    @property
    def eof(self):
        return self.closed and self.pos >= self.end

    def tell(self):
        return self.pos

    @property
    def end_offset(self):
        return self.end

    cdef Py_ssize_t _gap_index(self, int64_t off) noexcept:
        # The first gap whose reach is beyond `off` (n_gaps if none): the gap holding `off`, or
        # else the next one. Found by bisection from any offset; the hint (the last lookup from
        # the position) answers the common case, a position moving forward, in two compares.
        cdef Py_ssize_t lo = 0, hi = self.n_gaps, mid, i = self.gap_i
        if i > hi:
            i = hi
        if i == hi or self.g_reach[i] > off:
            if i == 0 or self.g_reach[i - 1] <= off:
                return i
            hi = i - 1
        else:
            lo = i + 1
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.g_reach[mid] > off:
                hi = mid
            else:
                lo = mid + 1
        return lo

    cdef int64_t _limit_at(self, int64_t off, Py_ssize_t i) noexcept:
        # End of the contiguous bytes from `off` (i: its _gap_index): the next gap's start, or
        # end; `off` itself inside a gap, below the retained start, or past the end (a file cut
        # short since) has none.
        cdef int64_t lim = self.end
        if off < self.start:
            return off
        if i < self.n_gaps and self.g_off[i] < lim:
            lim = self.g_off[i]     # (a gap past `end`: what a limited header leaves out)
        return lim if lim > off else off

    cdef int64_t _limit(self) noexcept:
        self.gap_i = self._gap_index(self.pos)
        return self._limit_at(self.pos, self.gap_i)

    cdef object _gap(self, Py_ssize_t i):
        # gap i as a Gap, cut at `end` (a cut file, a limited header: the pointer reads no further)
        goff, glen, reason = self.gaps[i]
        return Gap(self.file.header["conn"], self.direction, goff, min(goff + glen, self.end) - goff, reason)

    cdef object _reclaimed_gap(self, Py_ssize_t i):
        # at a position below the retained start and in no gap: the bytes given back from there
        # to the start (or the next gap) were never read by this reader, so they are lost to it
        cdef int64_t stop = self.start
        if i < self.n_gaps and self.g_off[i] < stop:
            stop = self.g_off[i]
        return Gap(self.file.header["conn"], self.direction, self.pos, stop - self.pos, RECLAIMED)

    @property
    def available(self):
        """Bytes readable from the position before the next gap or the end."""
        return self._limit() - self.pos

    @property
    def at_gap(self):
        """The Gap starting at (or containing) the position, or None. Below the retained start
        (a pointer resumed there), what was given back is a gap of reason "reclaimed"."""
        cdef Py_ssize_t i = self._gap_index(self.pos)
        self.gap_i = i
        if self.pos >= self.end:
            return None
        if i < self.n_gaps and self.g_off[i] <= self.pos:
            return self._gap(i)
        if self.pos < self.start:
            return self._reclaimed_gap(i)
        return None

    @property
    def next_gap(self):
        """The next Gap at or after the position, or None."""
        cdef Py_ssize_t i = self._gap_index(self.pos)
        self.gap_i = i
        if self.pos >= self.end:
            return None
        if self.pos < self.start and not (i < self.n_gaps and self.g_off[i] <= self.pos):
            return self._reclaimed_gap(i)
        if i < self.n_gaps and self.g_off[i] < self.end:
            return self._gap(i)
        return None

    cdef const uint8_t* _ptr(self, int64_t off, int64_t n) except NULL:
        # pointer to stream bytes [off, off+n), (re)mapping as needed
        cdef const uint8_t[::1] view
        cdef int64_t start
        if self._map is None or off < self.map_off or off + n > self.map_off + self.map_len:
            start = off - (off + self.data_off) % _mmap.ALLOCATIONGRANULARITY
            length = max(MAP_WINDOW, n + (off - start))
            m = Mapping(self.file._fd, length, self.data_off + start)
            view = m
            self._map = m
            self.base = &view[0]
            self.map_off = start
            self.map_len = length
        return self.base + (off - self.map_off)

    cdef object _view(self, int64_t off, int64_t n):
        if n <= 0:
            return memoryview(b"")
        self._ptr(off, n)
        return memoryview(self._map)[off - self.map_off:off - self.map_off + n]

    def peek(self, n=None):
        """Up to n bytes from the position (all available if n is None), without moving."""
        return self._view(self.pos, _size(n, self._limit() - self.pos, "peek"))

    def read(self, n=None):
        """Up to n bytes (all available if n is None); moves past them. Empty at a gap or the end."""
        v = self._view(self.pos, _size(n, self._limit() - self.pos, "read"))
        self.pos += len(v)
        return v

    def peek_bytes(self, n=None):
        """peek() as bytes, read from the file: for a caller that wants a copy anyway, no
        mapping is made, touched or unmapped (each costs more than the copy, for a few pages)."""
        return self._bytes(n, "peek_bytes")

    cdef object _bytes(self, object n, str call):
        cdef int64_t k = _size(n, self._limit() - self.pos, call)
        if k <= 0:
            return b""
        if self._map is not None and self.pos >= self.map_off and self.pos + k <= self.map_off + self.map_len:
            return bytes(self._view(self.pos, k))     # mapped already
        data = _os.pread(self.file._fd, k, self.data_off + self.pos)
        if len(data) < k:
            raise StoreError(f"{self.file.path}: cut short at stream offset {self.pos + len(data)}")
        return data

    def read_bytes(self, n=None):
        """read() as bytes, read from the file (see peek_bytes)."""
        data = self._bytes(n, "read_bytes")
        self.pos += len(data)
        return data

    def read_until(self, delim, max=None):
        """Bytes up to and including `delim` if it occurs within the available bytes (and within
        `max`), moving past them; else None and the position stays (more may come)."""
        cdef const uint8_t[::1] d = memoryview(delim).cast("B") if not isinstance(delim, bytes) else delim
        cdef int64_t avail = _size(max, self._limit() - self.pos, "read_until")
        cdef const uint8_t* p
        cdef const uint8_t* hit
        if len(d) == 0:
            raise ValueError("read_until: an empty delimiter (it would match before every byte)")
        if avail <= 0:
            return None
        p = self._ptr(self.pos, avail)
        if len(d) == 1:
            hit = <const uint8_t*> memchr(p, d[0], avail)
        else:
            hit = <const uint8_t*> memmem(p, avail, &d[0], len(d))
        if hit == NULL:
            return None
        return self.read(hit - p + len(d))

    def find(self, pattern, start=None, end=None):
        """Stream offset of the first `pattern` at or after `start` (default: the position) in the
        contiguous bytes there (a gap ends the search; none at a start inside one), ending
        before `end` if given, or -1. Works across packet boundaries; does not move."""
        cdef const uint8_t[::1] pat = pattern
        cdef int64_t s = self.pos if start is None else _as_int64(start)
        cdef int64_t lim, n
        cdef const uint8_t* p
        cdef const uint8_t* hit
        if s < self.start or s > self.end:
            return -1
        lim = self._limit_at(s, self._gap_index(s))
        if end is not None:
            lim = min(lim, _as_int64(end))
        n = lim - s
        if len(pat) == 0:
            return s if n >= 0 else -1
        if n < len(pat):
            return -1
        p = self._ptr(s, n)
        with nogil:
            hit = <const uint8_t*> memmem(p, n, &pat[0], len(pat))
        return -1 if hit == NULL else s + (hit - p)

    def skip(self, n=None):
        """Move forward up to n bytes, as read() would, unmapped: not past a gap (skip_gap()
        passes it, and the reader's on_gap learns of it) nor the end. Without n (None): every
        available byte. Returns the new position."""
        self.pos += _size(n, self._limit() - self.pos, "skip")
        return self.pos

    def skip_gap(self):
        """At a gap: move past it (not past the end) and return it; else None."""
        g = self.at_gap
        if g is not None:
            self.pos = g.offset + g.length
        return g

    def seek(self, offset):
        """Move to a stream offset within what is retained [start, end]."""
        cdef int64_t off = _as_int64(offset)
        if off < self.start or off > self.end:
            raise ValueError(f"offset {offset} outside the retained stream [{self.start}, {self.end}]")
        self.pos = off
        return self.pos

    def resume(self, offset):
        """Stand at `offset` again (a reader that closed its file, or restarted from a
        checkpoint, comes back to where it stood). Unlike seek(), below the retained start is
        allowed: what was given back since is shown as a gap (reason "reclaimed", at_gap and
        next_gap), never as bytes."""
        cdef int64_t off = _as_int64(offset)
        if off < 0 or off > self.end:
            raise ValueError(f"offset {offset} outside the stream [0, {self.end}]")
        self.pos = off
        return self.pos

    def replace(self, offset, new_bytes, old=None):
        """Ask to replace stream bytes [offset, offset + len(new_bytes)): a writing module that
        declares "payload" in `writes` may (its pointers are EditableStreams). Here the request
        is refused, as flow.edit refuses a read-only module's edits: an Edit, rejected with its
        reason, counted in the module's edits_rejected. Arguments of the wrong type are a
        TypeError, as for a writing module."""
        from flowsift.modules.edits import refused_replace
        return refused_replace(self._flow, offset, new_bytes, old)

    def __repr__(self):
        return f"<StreamPointer conn {self.file.header['conn']} dir {self.direction} at {self.pos}/{self.end}>"
