# cython: language_level=3
"""Batch of packets: the C pkt_t array, viewable as numpy columns.

numpy is imported only when a caller asks for columns, so the command line starts fast.
"""
from libc.string cimport memset, memcpy

# Large enough to amortise the per-batch Python calls, small enough that a batch's
# descriptors (and usually its frames) stay in L2 cache between the stages.
DEFAULT_BATCH = 512
PKT_SIZE = sizeof(pkt_t)


cdef class Batch:
    """Up to `capacity` packets. `array` views the first `n` descriptors as numpy columns."""

    def __cinit__(self, Py_ssize_t capacity=DEFAULT_BATCH):
        if capacity <= 0:
            raise ValueError("batch capacity must be positive")
        self._buf = bytearray(capacity * sizeof(pkt_t))
        self.pkts = <pkt_t*> (<char*> self._buf)
        self.capacity = capacity
        self.n = 0

    @property
    def array(self):
        """The columns of the packets in use: a numpy view, valid until the next fill."""
        from flowsift.io.columns import view
        return view(self._buf, self.n)

    def frame(self, Py_ssize_t i):
        """The captured bytes of packet i (a copy)."""
        if i < 0 or i >= self.n:
            raise IndexError(i)
        cdef pkt_t* p = &self.pkts[i]
        return (<const char*> p.data)[:p.caplen]

    def payload(self, Py_ssize_t i):
        """The captured L4 payload bytes of packet i (a copy)."""
        if i < 0 or i >= self.n:
            raise IndexError(i)
        cdef pkt_t* p = &self.pkts[i]
        return (<const char*> p.data)[p.payload_off:p.payload_off + p.payload_len]

    def snapshot(self):
        """A copy of the descriptors (frame bytes shared, valid as long as this batch's): the
        frames as captured, before later stages (defragmentation) rewrite entries in place."""
        cdef Batch b = Batch(max(self.n, 1))
        memcpy(b.pkts, self.pkts, self.n * sizeof(pkt_t))
        b.n = self.n
        b.owner = self.owner
        return b

    def mark_other(self, const unsigned char[:] mask):
        """Mark the packets whose mask byte is clear as another shard's (PF_OTHER_SHARD): they
        stay in the batch, in order, so that the capture clock moves as in one gateway, but no
        flow, fragment or record is made of them. Returns how many were marked."""
        cdef Py_ssize_t i, k = 0
        if mask.shape[0] < self.n:
            raise ValueError("mask shorter than the batch")
        for i in range(self.n):
            if not mask[i]:
                self.pkts[i].flags |= PF_OTHER_SHARD
                k += 1
        return k

    def clear(self):
        memset(self.pkts, 0, self.n * sizeof(pkt_t))
        self.n = 0

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"<Batch {self.n}/{self.capacity} packets>"
