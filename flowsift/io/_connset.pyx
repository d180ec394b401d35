# cython: language_level=3
"""A set of connection numbers as a bitmap: one bit per number up to the highest added.

Connection numbers are dense and only grow, so a long run that must remember every connection
it finished (a module's runner, a gateway announcing to a registry) keeps an eighth of a byte
for each instead of the 60 to 100 bytes a Python set of ints takes.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport realloc, free
from libc.string cimport memset


cdef class ConnSet:
    cdef uint8_t* bits
    cdef uint64_t nbytes
    cdef Py_ssize_t n

    def __init__(self, items=()):
        for conn in items:
            self.add(conn)

    def __dealloc__(self):
        free(self.bits)

    def add(self, uint32_t conn):
        cdef uint64_t byte = conn >> 3, grown
        cdef uint8_t mask = 1 << (conn & 7)
        cdef void* p
        if byte >= self.nbytes:
            grown = self.nbytes * 2 if self.nbytes else 1024
            while grown <= byte:
                grown *= 2
            p = realloc(self.bits, grown)
            if p == NULL:
                raise MemoryError("connection set")
            memset(<uint8_t*>p + self.nbytes, 0, grown - self.nbytes)
            self.bits = <uint8_t*> p
            self.nbytes = grown
        if not self.bits[byte] & mask:
            self.bits[byte] |= mask
            self.n += 1

    def discard(self, uint32_t conn):
        cdef uint64_t byte = conn >> 3
        cdef uint8_t mask = 1 << (conn & 7)
        if byte < self.nbytes and self.bits[byte] & mask:
            self.bits[byte] &= ~mask
            self.n -= 1

    def __contains__(self, conn):
        cdef uint64_t c, byte
        try:
            c = conn
        except (TypeError, OverflowError):
            return False                # not a connection number
        if c > 0xFFFFFFFF:
            return False
        byte = c >> 3
        return byte < self.nbytes and (self.bits[byte] >> (c & 7)) & 1

    def __len__(self):
        return self.n

    def __iter__(self):
        """In ascending order."""
        cdef uint64_t byte
        cdef int b
        for byte in range(self.nbytes):
            if self.bits[byte]:
                for b in range(8):
                    if (self.bits[byte] >> b) & 1:
                        yield byte * 8 + b

    def __repr__(self):
        return f"ConnSet({len(self)} connections)"
