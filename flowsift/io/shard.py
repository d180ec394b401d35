"""Sharding by a symmetric hash of the addresses (as RSS does on a NIC): both directions of a
connection, and every fragment of a datagram, land in the same shard.

The hash picks one of BUCKETS buckets and a table says which shard owns each bucket (as an
RSS indirection table does). Re-sharding changes the table: only the buckets that change
owner move, with their flows.
"""
import numpy as np

BUCKETS = 4096


def _buckets(words):
    # rows of 8 little-endian words (two 16-byte addresses) -> their buckets; xor is symmetric,
    # so both directions agree
    h = np.bitwise_xor.reduce(words, axis=1).astype(np.uint64)
    return ((h * np.uint64(0x9E3779B1)) >> np.uint64(16)) % np.uint64(BUCKETS)


def packet_buckets(batch):
    """The bucket of every packet of `batch` (from its addresses only, so fragments agree)."""
    a = batch.array
    return _buckets(np.hstack([np.ascontiguousarray(a["src"]).view("<u4"), np.ascontiguousarray(a["dst"]).view("<u4")]))


def address_buckets(pairs):
    """The buckets of flows (or datagrams) given as (.., address a, address b) rows, the
    addresses 16 bytes each, as the flow table and the defragmenter keep them."""
    if not pairs:
        return np.zeros(0, dtype=np.uint64)
    return _buckets(np.frombuffer(b"".join(a + b for *_, a, b in pairs), dtype="<u4").reshape(-1, 8))


def bucket_of(a, b):
    """The bucket of one flow from its two 16-byte addresses."""
    return int(address_buckets([(a, b)])[0])


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
        free.extend(buckets[keep:])
    free = iter(sorted(free))
    for k in range(count):
        mine = owned[k][:share[k]]
        mine += [next(free) for _ in range(share[k] - len(mine))]
        table[mine] = k
    return table


def shard_mask(batch, index, table):
    """A byte per packet of `batch`: 1 if it belongs to shard `index` under `table`. Frames that
    are not IP (or not decoded) go to shard 0, where they are counted once."""
    a = batch.array
    mine = table[packet_buckets(batch)] == index
    ip = (a["status"] == 0) & (a["ipver"] != 0)
    return np.where(ip, mine, index == 0).astype(np.uint8)
