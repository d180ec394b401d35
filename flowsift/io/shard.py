"""Sharding by a symmetric hash of the addresses (as RSS does on a NIC): both directions of a
connection, and every fragment of a datagram, land in the same shard."""
import numpy as np


def shard_mask(batch, index, count):
    """A byte per packet of `batch`: 1 if it belongs to shard `index` of `count`. Frames that
    are not IP (or not decoded) go to shard 0, where they are counted once."""
    a = batch.array
    src = np.ascontiguousarray(a["src"]).view("<u4")
    dst = np.ascontiguousarray(a["dst"]).view("<u4")
    h = src[:, 0] ^ src[:, 1] ^ src[:, 2] ^ src[:, 3] ^ dst[:, 0] ^ dst[:, 1] ^ dst[:, 2] ^ dst[:, 3]
    h = ((h.astype(np.uint64) * np.uint64(0x9E3779B1)) >> np.uint64(16)) % np.uint64(count)
    ip = (a["status"] == 0) & (a["ipver"] != 0)
    return np.where(ip, h == index, index == 0).astype(np.uint8)
