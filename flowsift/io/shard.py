"""Sharding by a symmetric hash of the addresses (as RSS does on a NIC): both directions of a
connection, and every fragment of a datagram, land in the same shard.

The hash picks one of BUCKETS buckets and a table says which shard owns each bucket (as an
RSS indirection table does). Re-sharding changes the table: only the buckets that change
owner move, with their flows.
"""
import numpy as np

BUCKETS = 4096


def _bucket(h):
    return ((h.astype(np.uint64) * np.uint64(0x9E3779B1)) >> np.uint64(16)) % np.uint64(BUCKETS)


def packet_buckets(batch):
    """The bucket of every packet of `batch` (from its addresses only, so fragments agree)."""
    a = batch.array
    src = np.ascontiguousarray(a["src"]).view("<u4")
    dst = np.ascontiguousarray(a["dst"]).view("<u4")
    return _bucket(src[:, 0] ^ src[:, 1] ^ src[:, 2] ^ src[:, 3] ^ dst[:, 0] ^ dst[:, 1] ^ dst[:, 2] ^ dst[:, 3])


def bucket_of(a, b):
    """The bucket of a flow from its two 16-byte addresses (as the flow table keeps them)."""
    w = np.frombuffer(a + b, dtype="<u4")
    return int(_bucket(np.bitwise_xor.reduce(w).reshape(1))[0])


def initial_table(count):
    """Bucket -> shard, buckets dealt round-robin."""
    return np.arange(BUCKETS, dtype=np.uint16) % np.uint16(count)


def reshard_table(table, count):
    """The table for `count` shards that moves the fewest buckets: shards that stay keep theirs
    up to an even share; the buckets of shards that leave and the excess of the others go to
    the shards below their share (lowest numbers first). Every shard runs this and agrees."""
    table = np.array(table, dtype=np.uint16)
    share = [BUCKETS // count + (1 if k < BUCKETS % count else 0) for k in range(count)]
    owned = [list(np.flatnonzero(table == k)) for k in range(max(count, int(table.max()) + 1))]
    free = []
    for k, buckets in enumerate(owned):
        keep = share[k] if k < count else 0
        if len(buckets) > keep:
            free.extend(buckets[keep:])
            del buckets[keep:]
    free.sort()
    for k in range(count):
        while len(owned[k]) < share[k]:
            owned[k].append(free.pop(0))
    for k in range(count):
        table[owned[k]] = k
    return table


def shard_mask(batch, index, table):
    """A byte per packet of `batch`: 1 if it belongs to shard `index` under `table`. Frames that
    are not IP (or not decoded) go to shard 0, where they are counted once."""
    a = batch.array
    mine = table[packet_buckets(batch)] == index
    ip = (a["status"] == 0) & (a["ipver"] != 0)
    return np.where(ip, mine, index == 0).astype(np.uint8)
