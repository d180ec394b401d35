# cython: language_level=3, wraparound=True, boundscheck=True
"""A Sink that writes each direction's delivered bytes to its own file, plus index.jsonl.

Bytes are buffered per direction in C and written in large pieces: a file is opened, appended
to and closed at each flush, so no descriptor stays open however many connections are live.
The SHA-256 of each direction is updated per flush (one Python call per BUF bytes, not per
packet). Index lines are written when connections end.
"""
import hashlib
import ipaddress
import json
import os

from libc.stdint cimport int64_t, uint64_t, uint32_t, uint8_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport malloc, realloc, free

from flowsift.errors import FlowsiftError
from flowsift.reassembly._engine cimport Sink, GAP_SNAPLEN

# Per-direction write buffer: large writes, few syscalls; allocated only while data flows.
DEF BUF = 65536

ctypedef struct fdir_t:
    uint8_t* buf
    uint32_t len
    uint8_t created
    uint8_t _pad[3]
    uint64_t written


cdef str _addr(bytes raw):
    return str(ipaddress.ip_address(raw))


cdef class FileSink(Sink):
    cdef fdir_t* dirs            # 2 per connection
    cdef uint32_t cap
    cdef readonly str outdir
    cdef object index
    cdef dict names              # conn -> (base name, src/dst strings)
    cdef dict hashes             # (conn, d) -> hashlib object
    cdef dict gaps               # (conn, d) -> [[offset, length], ...]
    cdef readonly uint64_t files
    cdef readonly uint64_t bytes_written

    def __init__(self, str outdir):
        self.outdir = outdir
        try:
            os.makedirs(outdir, exist_ok=True)
            self.index = open(os.path.join(outdir, "index.jsonl"), "w")
        except OSError as e:
            raise FlowsiftError(f"{outdir}: cannot write there: {e.strerror}") from None
        self.names = {}
        self.hashes = {}
        self.gaps = {}

    def __dealloc__(self):
        cdef uint32_t k
        if self.dirs != NULL:
            for k in range(2 * self.cap):
                free(self.dirs[k].buf)
            free(self.dirs)

    cdef fdir_t* _fd(self, uint32_t conn, int d) except NULL:
        cdef uint32_t cap
        cdef fdir_t* grown
        if conn >= self.cap:
            cap = self.cap if self.cap else 1024
            while cap <= conn:
                cap *= 2
            grown = <fdir_t*> realloc(self.dirs, 2 * cap * sizeof(fdir_t))
            if grown == NULL:
                raise MemoryError()
            memset(&grown[2 * self.cap], 0, 2 * (cap - self.cap) * sizeof(fdir_t))
            self.dirs = grown
            self.cap = cap
        return &self.dirs[2 * conn + d]

    cdef int on_open(self, uint32_t conn, object engine) except -1:
        info = engine.connection(conn)
        c = f"{_addr(info['client'][0])}.{info['client'][1]}"
        s = f"{_addr(info['server'][0])}.{info['server'][1]}"
        self.names[conn] = (f"c{conn:06d}-{c}-{s}", info)
        self._fd(conn, 0)
        return 0

    cdef int _flush(self, uint32_t conn, int d) except -1:
        cdef fdir_t* f = self._fd(conn, d)
        if f.len == 0:
            return 0
        path = self._path(conn, d)
        view = (<char*> f.buf)[:f.len]
        try:
            with open(path, "ab") as out:
                out.write(view)
        except OSError as e:
            raise FlowsiftError(f"{path}: cannot write: {e.strerror}") from None
        h = self.hashes.get((conn, d))
        if h is None:
            h = self.hashes[(conn, d)] = hashlib.sha256()
        h.update(view)
        if not f.created:
            f.created = 1
            self.files += 1
        f.written += f.len
        self.bytes_written += f.len
        f.len = 0
        return 0

    cdef str _path(self, uint32_t conn, int d):
        return os.path.join(self.outdir, f"{self.names[conn][0]}.{'c2s' if d == 0 else 's2c'}")

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
        info = engine.connection(conn)
        base = self.names[conn][0]
        ends = (f"{_addr(info['client'][0])}:{info['client'][1]}", f"{_addr(info['server'][0])}:{info['server'][1]}")
        if info["ipver"] == 6:
            ends = (f"[{_addr(info['client'][0])}]:{info['client'][1]}", f"[{_addr(info['server'][0])}]:{info['server'][1]}")
        for d in range(2):
            self._flush(conn, d)
            f = self._fd(conn, d)
            free(f.buf)
            f.buf = NULL
            D = info["dirs"][d]
            h = self.hashes.pop((conn, d), None)
            line = {
                "conn": conn, "dir": "c2s" if d == 0 else "s2c",
                "src": ends[d], "dst": ends[1 - d], "proto": info["proto"],
                "file": os.path.basename(f"{base}.{'c2s' if d == 0 else 's2c'}") if f.created else None,
                "bytes": f.written,
                "sha256": h.hexdigest() if h is not None else hashlib.sha256(b"").hexdigest(),
                "gaps": self.gaps.pop((conn, d), []),
                "gap_bytes": D["gap_bytes"], "conflicts": D["conflicts"], "retransmissions": D["retransmissions"],
                "midstream": D["midstream"], "close": D["close"], "packets": D["packets"],
                "first_ts": D["first_ts"] / 1e9 if D["packets"] else None,
                "last_ts": D["last_ts"] / 1e9 if D["packets"] else None,
            }
            self.index.write(json.dumps(line) + "\n")
        del self.names[conn]
        return 0

    def close(self):
        self.index.close()
