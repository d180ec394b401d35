# cython: language_level=3, wraparound=True, boundscheck=True
"""A Sink that writes each direction's delivered bytes to its own file, plus index.jsonl.

Bytes are buffered per direction in C (BUF bytes, allocated while the direction is live) and
written with write(2) to descriptors kept in a small LRU cache, so a capture with any number
of live connections never runs out of descriptors. The SHA-256 of each direction is updated
once per flushed buffer, never per packet. Index lines are written when connections end,
formatted in C into a buffer that goes out with write(2) (as json.dumps would write them).
"""
import hashlib
import os

from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ
from cpython.conversion cimport PyOS_double_to_string, Py_DTSF_ADD_DOT_0
from cpython.mem cimport PyMem_Free

from libc.errno cimport errno
from libc.stdint cimport int32_t, int64_t, uint64_t, uint32_t, uint8_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy, memset, strerror, strlen
from libc.stdlib cimport calloc, malloc, realloc, free
from posix.fcntl cimport open as c_open, O_WRONLY, O_CREAT, O_APPEND, O_TRUNC
from posix.unistd cimport write as c_write, close as c_close

from flowsift.errors import FlowsiftError
from flowsift.io._tables cimport reach_chunk
from flowsift.reassembly._engine cimport Sink, Engine, conn_t, conn_at, dir_t


cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)
    enum:
        AF_INET
        AF_INET6

# Per-direction buffer: a few syscalls per 8 KiB; small enough that thousands of live
# connections cost tens of MB, not hundreds.
DEF BUF = 8192
# Descriptors kept open at once; a flush to a file not in the cache reopens it (O_APPEND).
DEF MAX_OPEN = 256
# index.jsonl is written in pieces of this size
DEF INDEX_BUF = 65536
# connections per chunk of direction state
DEF DIR_CHUNK = 64

# CLOSE_* (engine) -> the index's "close" value, JSON-encoded
cdef const char* CLOSE_JSON[6]
CLOSE_JSON[:] = [b"null", b'"fin"', b'"rst"', b'"timeout"', b'"evicted"', b'"eof"']

ctypedef struct fdir_t:
    uint8_t* buf
    uint32_t len
    int32_t slot           # index in the descriptor cache, or -1
    uint8_t created
    uint8_t _pad[7]
    uint64_t written

ctypedef struct fdslot_t:
    int fd
    uint32_t conn
    int32_t d
    uint64_t stamp


cdef class FileSink(Sink):
    cdef fdir_t** chunks         # DIR_CHUNK connections' directions each (2 per connection);
    cdef uint8_t* closed         # per chunk: connections closed; a chunk all closed is freed
    cdef uint32_t cap_chunks
    cdef fdslot_t slots[MAX_OPEN]
    cdef uint64_t clock
    cdef readonly str outdir
    cdef bytes outdir_b          # outdir + "/", for file paths
    cdef str index_path
    cdef int index_fd
    cdef char* ibuf              # index lines not yet written (INDEX_BUF bytes)
    cdef Py_ssize_t ilen
    cdef dict names              # conn -> (file name stem, client "ip:port", server "ip:port"), UTF-8
    cdef dict hashes             # 2 * conn + d -> hashlib object, while the direction is live
    cdef dict gaps               # (conn, d) -> [[offset, length], ...]
    cdef readonly uint64_t files
    cdef readonly uint64_t bytes_written

    def __init__(self, str outdir):
        cdef int k
        self.outdir = outdir
        self.outdir_b = os.fsencode(os.path.join(outdir, ""))
        self.index_fd = -1
        self.index_path = os.path.join(outdir, "index.jsonl")
        try:
            os.makedirs(outdir, exist_ok=True)
            self.index_fd = os.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise FlowsiftError(f"{outdir}: cannot write there: {e.strerror}") from None
        self.ibuf = <char*> malloc(INDEX_BUF)
        if self.ibuf == NULL:
            raise MemoryError()
        self.names = {}
        self.hashes = {}
        self.gaps = {}
        for k in range(MAX_OPEN):
            self.slots[k].fd = -1

    def __dealloc__(self):
        cdef uint32_t k
        cdef int j
        for j in range(MAX_OPEN):
            if self.slots[j].fd >= 0:
                c_close(self.slots[j].fd)
        if self.index_fd >= 0:
            c_close(self.index_fd)
        free(self.ibuf)
        if self.chunks != NULL:
            for k in range(self.cap_chunks):
                if self.chunks[k] != NULL:
                    for j in range(2 * DIR_CHUNK):
                        free(self.chunks[k][j].buf)
                    free(self.chunks[k])
        free(self.chunks)
        free(self.closed)

    cdef fdir_t* _fd(self, uint32_t conn, int d) except NULL:
        # a live connection's direction (its chunk is made when the first one opens)
        cdef uint32_t k = conn // DIR_CHUNK, j
        if reach_chunk(<void**>&self.chunks, &self.closed, &self.cap_chunks, k):
            raise MemoryError()
        if self.chunks[k] == NULL:
            self.chunks[k] = <fdir_t*> calloc(2 * DIR_CHUNK, sizeof(fdir_t))
            if self.chunks[k] == NULL:
                raise MemoryError()
            for j in range(2 * DIR_CHUNK):
                self.chunks[k][j].slot = -1
        return &self.chunks[k][2 * (conn % DIR_CHUNK) + d]

    cdef void _closed(self, uint32_t conn) noexcept nogil:
        cdef uint32_t k = conn // DIR_CHUNK
        self.closed[k] += 1
        if self.closed[k] == DIR_CHUNK:
            free(self.chunks[k])          # (each direction's buffer went at its close)
            self.chunks[k] = NULL

    cdef int on_open(self, uint32_t conn, object engine) except -1:
        cdef Engine e = <Engine?> engine
        cdef conn_t* c = conn_at(e, conn)
        cdef char ca[64]
        cdef char sa[64]
        cdef char out[256]
        cdef int fam = AF_INET if c.ipver == 4 else AF_INET6
        if inet_ntop(fam, c.client, ca, sizeof(ca)) == NULL or inet_ntop(fam, c.server, sa, sizeof(sa)) == NULL:
            raise FlowsiftError(f"connection {conn}: address of an unknown family (IP version {c.ipver})")
        stem = out[:snprintf(out, sizeof(out), b"c%06u-%s.%u-%s.%u", conn, ca, c.cport, sa, c.sport)]
        fmt = b"%s:%u" if c.ipver == 4 else b"[%s]:%u"
        client = out[:snprintf(out, sizeof(out), fmt, ca, c.cport)]
        server = out[:snprintf(out, sizeof(out), fmt, sa, c.sport)]
        self.names[conn] = (stem, client, server)
        self._fd(conn, 1)
        return 0

    cdef bytes _path(self, uint32_t conn, int d):
        return self.outdir_b + self.names[conn][0] + (b".c2s" if d == 0 else b".s2c")

    cdef int _descriptor(self, uint32_t conn, int d, fdir_t* f) except -1:
        # a cached descriptor for this direction's file, opening (and evicting) as needed
        cdef int j, victim = 0
        cdef int flags = O_WRONLY | O_CREAT | (O_APPEND if f.created else O_TRUNC)
        self.clock += 1
        if f.slot >= 0:
            self.slots[f.slot].stamp = self.clock
            return self.slots[f.slot].fd
        for j in range(MAX_OPEN):
            if self.slots[j].fd < 0:
                victim = j
                break
            if self.slots[j].stamp < self.slots[victim].stamp:
                victim = j
        if self.slots[victim].fd >= 0:
            c_close(self.slots[victim].fd)
            self._fd(self.slots[victim].conn, self.slots[victim].d).slot = -1
        path = self._path(conn, d)
        fd = c_open(path, flags, 0o644)
        if fd < 0:
            raise FlowsiftError(f"{os.fsdecode(path)}: cannot write: {strerror(errno).decode()}")
        if not f.created:
            f.created = 1
            self.files += 1
        self.slots[victim].fd = fd
        self.slots[victim].conn = conn
        self.slots[victim].d = d
        self.slots[victim].stamp = self.clock
        f.slot = victim
        return fd

    cdef int _flush(self, uint32_t conn, int d) except -1:
        cdef fdir_t* f = self._fd(conn, d)
        cdef int fd
        cdef Py_ssize_t done = 0, w
        if f.len == 0:
            return 0
        fd = self._descriptor(conn, d, f)
        while done < f.len:
            w = c_write(fd, f.buf + done, f.len - done)
            if w < 0:
                raise FlowsiftError(f"{os.fsdecode(self._path(conn, d))}: cannot write: {strerror(errno).decode()}")
            done += w
        h = self.hashes.get(2 * conn + d)
        if h is None:
            h = self.hashes[2 * conn + d] = hashlib.sha256()
        h.update(PyMemoryView_FromMemory(<char*> f.buf, f.len, PyBUF_READ))   # no copy
        f.written += f.len
        self.bytes_written += f.len
        f.len = 0
        return 0

    cdef int _append(self, uint32_t conn, int d, const uint8_t* data, uint32_t n) except -1:
        cdef fdir_t* f = self._fd(conn, d)
        cdef uint32_t take
        if f.buf == NULL:
            f.buf = <uint8_t*> malloc(BUF)
            if f.buf == NULL:
                raise MemoryError()
        while n:
            take = BUF - f.len if BUF - f.len < n else n
            memcpy(f.buf + f.len, data, take)
            f.len += take
            data += take
            n -= take
            if f.len == BUF:
                self._flush(conn, d)
                f = self._fd(conn, d)
        return 0

    cdef int on_data(self, uint32_t conn, int d, int64_t offset, const uint8_t* data, uint32_t n) except -1:
        return self._append(conn, d, data, n)

    cdef int on_datagram(self, uint32_t conn, int d, int64_t ts, const uint8_t* data, uint32_t n) except -1:
        return self._append(conn, d, data, n)

    cdef int on_gap(self, uint32_t conn, int d, int64_t offset, int64_t length, int reason) except -1:
        lst = self.gaps.setdefault((conn, d), [])
        if lst and lst[-1][0] + lst[-1][1] == offset:
            lst[-1][1] += length            # adjacent gaps (e.g. cut, then lost) read as one
        else:
            lst.append([offset, length])
        return 0

    # --- index.jsonl ---
    cdef int _iflush(self) except -1:
        cdef Py_ssize_t done = 0, w
        while done < self.ilen:
            w = c_write(self.index_fd, self.ibuf + done, self.ilen - done)
            if w < 0:
                raise FlowsiftError(f"{self.index_path}: cannot write: {strerror(errno).decode()}")
            done += w
        self.ilen = 0
        return 0

    cdef int _put(self, const char* s, Py_ssize_t n) except -1:
        cdef Py_ssize_t take
        while n > 0:
            if self.ilen == INDEX_BUF:
                self._iflush()
            take = min(n, INDEX_BUF - self.ilen)
            memcpy(self.ibuf + self.ilen, s, take)
            self.ilen += take
            s += take
            n -= take
        return 0

    cdef int _puts(self, const char* s) except -1:
        return self._put(s, strlen(s))

    cdef int _put_ts(self, uint64_t packets, int64_t ns) except -1:
        # seconds as Python writes a float (repr), or null for a direction that saw nothing
        cdef char* text
        if not packets:
            return self._put(b"null", 4)
        text = PyOS_double_to_string(ns / 1e9, b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            self._puts(text)
        finally:
            PyMem_Free(text)
        return 0

    cdef int _index_line(self, uint32_t conn, int d, dir_t* D, const char* proto, bytes stem, bytes src,
                         bytes dst, bint created, uint64_t written, bytes hexdigest, list gaps) except -1:
        # one line per direction; keys and spacing as json.dumps writes them
        cdef char tmp[512]
        cdef const char* name = b"c2s" if d == 0 else b"s2c"
        cdef int k
        self._put(tmp, snprintf(tmp, sizeof(tmp), b'{"conn": %u, "dir": "%s", "src": "', conn, name))
        self._put(src, len(src))
        self._put(b'", "dst": "', 11)
        self._put(dst, len(dst))
        self._put(tmp, snprintf(tmp, sizeof(tmp), b'", "proto": "%s", "file": ', proto))
        if created:
            self._put(b'"', 1)
            self._put(stem, len(stem))
            self._put(tmp, snprintf(tmp, sizeof(tmp), b'.%s"', name))
        else:
            self._put(b"null", 4)
        self._put(tmp, snprintf(tmp, sizeof(tmp), b', "bytes": %llu, "sha256": "', written))
        self._put(hexdigest, 64)
        self._put(b'", "gaps": [', 12)
        for k, (offset, length) in enumerate(gaps):
            self._put(tmp, snprintf(tmp, sizeof(tmp), b'%s[%lld, %lld]', b", " if k else b"",
                                    <long long>offset, <long long>length))
        self._put(tmp, snprintf(tmp, sizeof(tmp),
                                b'], "gap_bytes": %llu, "conflicts": %llu, "retransmissions": %llu, '
                                b'"midstream": %s, "close": %s, "packets": %llu, "first_ts": ',
                                D.gap_bytes, D.conflict_bytes, D.retransmissions,
                                b"true" if D.midstream else b"false",
                                CLOSE_JSON[D.close_reason if D.close_reason < 6 else 0], D.packets))
        self._put_ts(D.packets, D.first_ts)
        self._put(b', "last_ts": ', 13)
        self._put_ts(D.packets, D.last_ts)
        self._put(b"}\n", 2)
        return 0

    cdef int on_close(self, uint32_t conn, object engine) except -1:
        cdef int d
        cdef fdir_t* f
        cdef Engine e = <Engine?> engine
        stem, client, server = self.names[conn]
        ends = (client, server)
        proto = b"tcp" if conn_at(e, conn).proto == 6 else b"udp"
        for d in range(2):
            self._flush(conn, d)
            f = self._fd(conn, d)
            free(f.buf)
            f.buf = NULL
            if f.slot >= 0:
                c_close(self.slots[f.slot].fd)
                self.slots[f.slot].fd = -1
                self.slots[f.slot].stamp = 0
                f.slot = -1
            h = self.hashes.pop(2 * conn + d, None)
            self._index_line(conn, d, &conn_at(e, conn).d[d], proto, stem, ends[d], ends[1 - d], f.created,
                             f.written, (h or hashlib.sha256()).hexdigest().encode(), self.gaps.pop((conn, d), []))
        del self.names[conn]
        self._closed(conn)
        return 0

    def close(self):
        """Write out what index.jsonl still holds and close it."""
        if self.index_fd < 0:
            return
        try:
            self._iflush()
        finally:
            c_close(self.index_fd)
            self.index_fd = -1
