"""Batch of packets: a numpy structured array over the C pkt_t array."""
import numpy as np
cimport numpy as cnp
from libc.string cimport memset

cnp.import_array()

# Mirrors pkt_t in _batch.pxd, field for field; align=True follows C's layout rules.
PKT_DTYPE = np.dtype([
    ("ts_ns", "<i8"), ("data", "<u8"), ("rec_pos", "<u8"),
    ("caplen", "<u4"), ("wirelen", "<u4"), ("seq", "<u4"), ("ack", "<u4"),
    ("tsval", "<u4"), ("tsecr", "<u4"), ("sack", "<u4", (8,)), ("flow_id", "<u4"),
    ("payload_off", "<u4"), ("payload_len", "<u4"), ("payload_wirelen", "<u4"), ("frag_id", "<u4"),
    ("linktype", "<u2"), ("iface", "<u2"), ("l3_off", "<u2"), ("l4_off", "<u2"),
    ("sport", "<u2"), ("dport", "<u2"), ("window", "<u2"), ("mss", "<u2"),
    ("frag_off", "<u2"), ("ethertype", "<u2"), ("vlan", "<u2"), ("flags", "<u2"),
    ("src", "u1", (16,)), ("dst", "u1", (16,)),
    ("status", "u1"), ("ipver", "u1"), ("proto", "u1"), ("tcp_flags", "u1"),
    ("wscale", "u1"), ("nsack", "u1"), ("ttl", "u1"), ("opts", "u1"),
    ("dir", "u1"), ("vlan_depth", "u1"), ("filtered", "u1"), ("_pad", "u1", (5,)),
], align=True)

if PKT_DTYPE.itemsize != sizeof(pkt_t):
    raise ImportError(f"flowsift: PKT_DTYPE ({PKT_DTYPE.itemsize} B) does not match pkt_t ({sizeof(pkt_t)} B)")

# Large enough to amortise the per-batch Python calls, small enough that a batch's
# descriptors (and usually its frames) stay in L2 cache between the stages.
DEFAULT_BATCH = 512


cdef class Batch:
    """Up to `capacity` packets. `array` views the first `n` descriptors as numpy columns."""

    def __cinit__(self, Py_ssize_t capacity=DEFAULT_BATCH):
        if capacity <= 0:
            raise ValueError("batch capacity must be positive")
        self._array = np.zeros(capacity, dtype=PKT_DTYPE)
        self.pkts = <pkt_t*> cnp.PyArray_DATA(self._array)
        self.capacity = capacity
        self.n = 0

    @property
    def array(self):
        """The decoded columns of the packets in use (a view, valid until the next fill)."""
        return self._array[:self.n]

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

    def clear(self):
        memset(self.pkts, 0, self.n * sizeof(pkt_t))
        self.n = 0

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"<Batch {self.n}/{self.capacity} packets>"
