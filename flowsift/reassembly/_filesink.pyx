# cython: language_level=3, wraparound=True, boundscheck=True
"""A Sink that writes each direction's delivered bytes to its own file, plus index.jsonl.

Bytes are buffered per direction in C (BUF bytes, allocated while the direction is live) and
written with write(2) to descriptors kept in a small LRU cache, so a capture with any number
of live connections never runs out of descriptors. The SHA-256 of each direction is updated
once per flushed buffer, never per packet. Index lines are written when connections end.
"""
import hashlib
import json
import os
from socket import AF_INET, AF_INET6, inet_ntop

from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ

from libc.errno cimport errno
from libc.stdint cimport int32_t, int64_t, uint64_t, uint32_t, uint8_t
from libc.string cimport memcpy, memset, strerror
from libc.stdlib cimport malloc, realloc, free
from posix.fcntl cimport open as c_open, O_WRONLY, O_CREAT, O_APPEND, O_TRUNC
from posix.unistd cimport write as c_write, close as c_close

from flowsift.errors import FlowsiftError
from flowsift.reassembly._engine cimport Sink

# Per-direction buffer: a few syscalls per 8 KiB; small enough that thousands of live
# connections cost tens of MB, not hundreds.
DEF BUF = 8192
# Descriptors kept open at once; a flush to a file not in the cache reopens it (O_APPEND).
DEF MAX_OPEN = 256

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
    cdef fdir_t* dirs            # 2 per connection
    cdef uint32_t cap
    cdef fdslot_t slots[MAX_OPEN]
    cdef uint64_t clock
    cdef readonly str outdir
    cdef object index
    cdef dict names              # conn -> (file name stem, client "ip:port", server "ip:port")
    cdef list hashes             # 2 * conn + d -> hashlib object (or None)
    cdef dict gaps               # (conn, d) -> [[offset, length], ...]
    cdef readonly uint64_t files
    cdef readonly uint64_t bytes_written

    def __init__(self, str outdir):
        cdef int k
        self.outdir = outdir
        try:
            os.makedirs(outdir, exist_ok=True)
            self.index = open(os.path.join(outdir, "index.jsonl"), "w")
        except OSError as e:
            raise FlowsiftError(f"{outdir}: cannot write there: {e.strerror}") from None
        self.names = {}
        self.hashes = []
        self.gaps = {}
        for k in range(MAX_OPEN):
            self.slots[k].fd = -1

    def __dealloc__(self):
        cdef uint32_t k
        cdef int j
        for j in range(MAX_OPEN):
            if self.slots[j].fd >= 0:
                c_close(self.slots[j].fd)
        if self.dirs != NULL:
            for k in range(2 * self.cap):
                free(self.dirs[k].buf)
            free(self.dirs)

    cdef fdir_t* _fd(self, uint32_t conn, int d) except NULL:
        cdef uint32_t cap, k
        cdef fdir_t* grown
        if conn >= self.cap:
            cap = self.cap if self.cap else 1024
            while cap <= conn:
                cap *= 2
            grown = <fdir_t*> realloc(self.dirs, 2 * cap * sizeof(fdir_t))
            if grown == NULL:
                raise MemoryError()
            memset(&grown[2 * self.cap], 0, 2 * (cap - self.cap) * sizeof(fdir_t))
            for k in range(2 * self.cap, 2 * cap):
                grown[k].slot = -1
            self.hashes.extend([None] * (2 * (cap - self.cap)))
            self.dirs = grown
            self.cap = cap
        return &self.dirs[2 * conn + d]

    cdef int on_open(self, uint32_t conn, object engine) except -1:
        ipver, client, cport, server, sport = engine.endpoints(conn)
        fam = AF_INET if ipver == 4 else AF_INET6
        c, s = inet_ntop(fam, client), inet_ntop(fam, server)
        fmt = "{}:{}" if ipver == 4 else "[{}]:{}"
        self.names[conn] = (f"c{conn:06d}-{c}.{cport}-{s}.{sport}", fmt.format(c, cport), fmt.format(s, sport))
        self._fd(conn, 1)
        return 0

    cdef str _name(self, uint32_t conn, int d):
        return f"{self.names[conn][0]}.{'c2s' if d == 0 else 's2c'}"

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
        path = os.path.join(self.outdir, self._name(conn, d)).encode()
        fd = c_open(path, flags, 0o644)
        if fd < 0:
            raise FlowsiftError(f"{path.decode()}: cannot write: {strerror(errno).decode()}")
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
                raise FlowsiftError(f"{os.path.join(self.outdir, self._name(conn, d))}: cannot write: "
                                    f"{strerror(errno).decode()}")
            done += w
        h = self.hashes[2 * conn + d]
        if h is None:
            h = self.hashes[2 * conn + d] = hashlib.sha256()
        h.update(PyMemoryView_FromMemory(<char*> f.buf, f.len, PyBUF_READ))   # no copy
        f.written += f.len
        self.bytes_written += f.len
        f.len = 0
        return 0

    cdef int _append(self, uint32_t conn, int d, const uint8_t* data, uint32_t n) except -1:
        cdef fdir_t* f = &self.dirs[2 * conn + d]       # on_open sized the table
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
                f = &self.dirs[2 * conn + d]
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

    cdef int on_close(self, uint32_t conn, object engine) except -1:
        cdef int d
        cdef fdir_t* f
        stem, client, server = self.names[conn]
        ends = (client, server)
        proto = "tcp" if engine.is_tcp(conn) else "udp"
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
            packets, delivered, gap_bytes, conflicts, retrans, midstream, close, first, last = \
                engine.direction_summary(conn, d)
            h = self.hashes[2 * conn + d]
            self.hashes[2 * conn + d] = None
            name = f'"{stem}.{"c2s" if d == 0 else "s2c"}"' if f.created else "null"
            # one line per direction, formatted directly: json.dumps of a dict costs more per connection
            self.index.write(
                f'{{"conn": {conn}, "dir": "{"c2s" if d == 0 else "s2c"}", "src": "{ends[d]}", "dst": "{ends[1 - d]}", '
                f'"proto": "{proto}", "file": {name}, "bytes": {f.written}, '
                f'"sha256": "{(h or hashlib.sha256()).hexdigest()}", "gaps": {json.dumps(self.gaps.pop((conn, d), []))}, '
                f'"gap_bytes": {gap_bytes}, "conflicts": {conflicts}, "retransmissions": {retrans}, '
                f'"midstream": {"true" if midstream else "false"}, "close": {json.dumps(close)}, "packets": {packets}, '
                f'"first_ts": {first / 1e9 if packets else "null"}, "last_ts": {last / 1e9 if packets else "null"}}}\n')
        del self.names[conn]
        return 0

    def close(self):
        self.index.close()
