"""numpy view of a batch's packet descriptors (pkt_t in _batch.pxd)."""
import numpy as np

from flowsift.io._batch import PKT_SIZE

# Mirrors pkt_t field for field; align=True follows C's layout rules.
PKT_DTYPE = np.dtype([
    ("ts_ns", "<i8"), ("data", "<u8"), ("rec_pos", "<u8"), ("stream_off", "<i8"),
    ("caplen", "<u4"), ("wirelen", "<u4"), ("seq", "<u4"), ("ack", "<u4"),
    ("tsval", "<u4"), ("tsecr", "<u4"), ("sack", "<u4", (8,)), ("flow_id", "<u4"),
    ("payload_off", "<u4"), ("payload_len", "<u4"), ("payload_wirelen", "<u4"), ("frag_id", "<u4"),
    ("linktype", "<u2"), ("iface", "<u2"), ("l3_off", "<u2"), ("l4_off", "<u2"),
    ("sport", "<u2"), ("dport", "<u2"), ("window", "<u2"), ("mss", "<u2"),
    ("frag_off", "<u2"), ("ethertype", "<u2"), ("vlan", "<u2"), ("vlan_inner", "<u2"), ("flags", "<u2"), ("rflags", "<u2"),
    ("src", "u1", (16,)), ("dst", "u1", (16,)),
    ("status", "u1"), ("ipver", "u1"), ("proto", "u1"), ("tcp_flags", "u1"),
    ("wscale", "u1"), ("nsack", "u1"), ("ttl", "u1"), ("opts", "u1"),
    ("dir", "u1"), ("vlan_depth", "u1"), ("filtered", "u1"), ("_pad", "u1", (5,)),
], align=True)

if PKT_DTYPE.itemsize != PKT_SIZE:
    raise ImportError(f"flowsift: PKT_DTYPE ({PKT_DTYPE.itemsize} B) does not match pkt_t ({PKT_SIZE} B)")


def view(buf, n):
    return np.frombuffer(buf, dtype=PKT_DTYPE, count=n)
