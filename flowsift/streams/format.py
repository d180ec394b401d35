"""The record file format, version 2, as data (docs/record-format.md says the same in prose).

One file per connection, written only by the gateway. Little-endian throughout. The file is
sparse: four regions sit at fixed offsets, so each can grow without moving the others, and a
byte's position never changes (reclaimed space is punched out, offsets stay valid).

    0            header (HEADER_SIZE bytes)
    RECORDS_OFF  records, RECORD_SIZE bytes each, in arrival order
    GAPS_OFF     gap entries, GAP_SIZE bytes each
    DATA_OFF[0]  client-to-server bytes, at DATA_OFF[0] + stream offset
    DATA_OFF[1]  server-to-client bytes, at DATA_OFF[1] + stream offset
"""
import functools
import struct
from socket import AF_INET, AF_INET6, inet_ntop

MAGIC = b"FSRECORD"
VERSION = 2

HEADER_SIZE = 256
RECORD_SIZE = 128
GAP_SIZE = 32
RECORDS_OFF = 256               # right after the header: a short connection's records share its page
GAPS_OFF = 1 << 39              # 512 GiB: room for 4 billion records before it
DATA_OFF = (1 << 40, 1 << 42)   # 1 TiB and 4 TiB: 3 TiB for the client's stream, 4 TiB for the server's
FILE_SIZE = 1 << 43             # 8 TiB apparent size (sparse; ext4 allows 16 TiB, tmpfs more)

# How far each counter of a header can go before what it counts runs into the next region
# (a header beyond them is corrupt: read as it says, it would send a reader into another
# region, or into terabytes of nothing).
MAX_RECORDS = (GAPS_OFF - RECORDS_OFF) // RECORD_SIZE
MAX_GAPS = (DATA_OFF[0] - GAPS_OFF) // GAP_SIZE
MAX_END = (DATA_OFF[1] - DATA_OFF[0], FILE_SIZE - DATA_OFF[1])   # bytes of each direction's region

# header flags
HF_CLOSED = 1        # the gateway finished the connection: nothing more will be written
HF_KEEP = 2          # space is never reclaimed (--keep)
HF_NO_BYTES = 4      # the streams' bytes were not stored: no reader of the run reads them
HF_VLAN_KEY = 8      # connections were told apart by VLAN ids too: vlan_outer and vlan_inner are its own

# header: (name, struct code, offset)
HEADER_FIELDS = [
    ("magic", "8s", 0),
    ("version", "I", 8),
    ("header_size", "I", 12),
    ("record_size", "I", 16),
    ("flags", "I", 20),
    ("conn", "Q", 24),
    ("first_record_id", "Q", 32),
    ("records", "Q", 40),             # published records: each of them is complete
    ("gaps", "Q", 48),                # published gap entries
    ("ipver", "B", 56),
    ("proto", "B", 57),
    ("client_port", "H", 60),
    ("server_port", "H", 62),
    ("client_addr", "16s", 64),       # IPv4 in the first 4 bytes
    ("server_addr", "16s", 80),
    ("records_off", "Q", 96),
    ("gaps_off", "Q", 104),
    ("data_off0", "Q", 112),
    ("data_off1", "Q", 120),
    ("origin0", "q", 128),            # record seq_offset of stream byte 0, per direction
    ("origin1", "q", 136),
    ("end0", "q", 144),               # stream offset after the last delivered byte or gap
    ("end1", "q", 152),
    ("acked0", "q", 160),             # stream offset the peer acknowledged (-1: never)
    ("acked1", "q", 168),
    ("reclaimed0", "q", 176),         # data below this stream offset was punched out
    ("reclaimed1", "q", 184),
    ("first_ts", "q", 192),
    ("last_ts", "q", 200),
    ("settled0", "B", 208),           # origin known (midstream directions wait; see docs/reassembly.md)
    ("settled1", "B", 209),
    ("close0", "B", 210),             # 0 open, else fin/rst/timeout/evicted/eof/reused (1..6)
    ("close1", "B", 211),
    ("midstream0", "B", 212),
    ("midstream1", "B", 213),
    ("modules_mask", "Q", 216),       # the global module bitmap at the last publish
    ("oldest_unacked_done", "Q", 224),  # index of the oldest record every module finished that is not yet ACKed
    ("vlan_outer", "H", 232),         # with HF_VLAN_KEY: the connection's VLAN ids (0: untagged); else 0
    ("vlan_inner", "H", 234),
]


def _header_struct(fields=HEADER_FIELDS):
    fmt, pos = "<", 0
    for _, code, off in sorted(fields, key=lambda f: f[2]):
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += code
        pos = off + struct.calcsize("<" + code)
    return struct.Struct(fmt)


# every header field in one unpack: readers poll headers often
HEADER_STRUCT = _header_struct()
_HEADER_NAMES = [name for name, _, _ in sorted(HEADER_FIELDS, key=lambda f: f[2])]


def parse_header(buf):
    """The header fields of a record file, from its first HEADER_SIZE bytes."""
    return dict(zip(_HEADER_NAMES, HEADER_STRUCT.unpack_from(buf)))


# the fields that say where the regions are: the same in every file of this version
FIXED_FIELDS = {"header_size": HEADER_SIZE, "record_size": RECORD_SIZE, "records_off": RECORDS_OFF,
                "gaps_off": GAPS_OFF, "data_off0": DATA_OFF[0], "data_off1": DATA_OFF[1]}


def fixed_field_problem(h):
    """None, or what is wrong with a header's fields that place the regions (they never change:
    checked once, when a file is opened)."""
    for name, want in FIXED_FIELDS.items():
        if h[name] != want:
            return f"header field {name} is {h[name]:,}; version {VERSION} has {want:,}"
    return None


# each counter of a header and how far it may go: (field, highest, what holds it)
_COUNTER_LIMITS = (("records", MAX_RECORDS, f"the records region holds {MAX_RECORDS:,} at most"),
                   ("gaps", MAX_GAPS, f"the gaps region holds {MAX_GAPS:,} entries at most")) + tuple(
    (f"{name}{d}", MAX_END[d], f"a stream offset of direction {d} is 0 to {MAX_END[d]:,}")
    for d in (0, 1) for name in ("end", "reclaimed"))


def counter_problem(h):
    """None, or what is wrong with a header's counters: one that counts past its region (records,
    gap entries, a direction's end or what was given back of it). Checked at every header read."""
    for name, high, why in _COUNTER_LIMITS:
        if not 0 <= h[name] <= high:
            return f"header field {name} is {h[name]:,}; {why}"
    return None


# The fields a gateway may change after it made the file (flags, conn -- a re-shard renumbers
# it --, the counters, and everything from origin0 up to the VLAN ids): a reader polling a
# header re-reads only these, in the order a reader of a header the gateway is changing must
# load them (docs/record-format.md, "Reading while the gateway writes"): flags, then the
# directions' fields (ends...), then the counts (records, gaps).
_DYNAMIC_GROUPS = [[f for f in HEADER_FIELDS if lo <= f[2] < hi] for lo, hi in ((20, 24), (128, 232), (24, 56))]
_DYNAMIC_STRUCTS = [(_header_struct(g), [name for name, _, _ in sorted(g, key=lambda f: f[2])])
                    for g in _DYNAMIC_GROUPS]


def parse_header_again(buf, first):
    """The header fields, from `first` (a whole parse of the same file) and the fields that
    change re-read from `buf` (in the order above, for a mapping the gateway writes through):
    half the work of parse_header."""
    h = first.copy()
    for st, names in _DYNAMIC_STRUCTS:
        h.update(zip(names, st.unpack_from(buf)))
    return h

RECORD_FIELDS = [
    ("record_id", "Q", 0),            # first_record_id + index, modulo 2^64
    ("ts_ns", "q", 8),
    ("modules", "Q", 16),             # bit k set: module k is done with this record
    ("seq_offset", "q", 24),          # sequence-space offset: stream offset = seq_offset - origin[dir]
    ("payload_len", "I", 32),         # payload bytes captured
    ("payload_wirelen", "I", 36),     # payload bytes on the wire
    ("seq", "I", 40),
    ("ack", "I", 44),
    ("window", "H", 48),
    ("tcp_flags", "B", 50),
    ("dir", "B", 51),                 # 0 client to server, 1 server to client
    ("rflags", "H", 52),              # RF_* below
    ("ipver", "B", 54),
    ("proto", "B", 55),
    ("sport", "H", 56),
    ("dport", "H", 58),
    ("caplen", "I", 60),
    ("src", "16s", 64),
    ("dst", "16s", 80),
    ("wirelen", "I", 96),
    ("frame_pos", "Q", 104),          # where the frame is in its source (byte offset of the pcap record)
]
RECORD_STRUCT = struct.Struct("<QqQqIIIIHBBHBBHHI16s16sI4xQ16x")
assert RECORD_STRUCT.size == RECORD_SIZE

# record rflags (what reassembly made of the segment)
RF_RETRANSMISSION = 1
RF_OVERLAP = 2
RF_CONFLICT = 4
RF_OUT_OF_ORDER = 8
RF_GAP_BEFORE = 16
RF_SNAPLEN_CUT = 32
RF_LATE = 64                    # after its connection ended: no record holds it (batch columns only)
RF_IGNORED = 128                # not applied: a FIN/RST that says nothing about the stream, a zero-window probe... (docs/reassembly.md)
RF_KEEPALIVE = 256              # a keep-alive probe: its byte is not the stream's
RF_NAMES = {RF_RETRANSMISSION: "retransmission", RF_OVERLAP: "overlap", RF_CONFLICT: "conflict",
            RF_OUT_OF_ORDER: "out-of-order", RF_GAP_BEFORE: "gap-before", RF_SNAPLEN_CUT: "snaplen-cut",
            RF_IGNORED: "ignored", RF_KEEPALIVE: "keep-alive"}

# gap entry: dir, reason, record index during which it was declared, stream offset, length
GAP_STRUCT = struct.Struct("<BB6xQqq")
assert GAP_STRUCT.size == GAP_SIZE

CLOSE_NAMES = {0: None, 1: "fin", 2: "rst", 3: "timeout", 4: "evicted", 5: "eof", 6: "reused"}
GAP_REASONS = {1: "acked", 2: "closed", 3: "memcap", 4: "snaplen", 5: "trailing"}


@functools.lru_cache(maxsize=1)
def record_dtype():
    """numpy dtype of a record (for reading many records at once without a loop)."""
    import numpy as np
    return np.dtype({"names": [n for n, _, _ in RECORD_FIELDS],
                     "formats": ["<u8", "<i8", "<u8", "<i8", "<u4", "<u4", "<u4", "<u4", "<u2", "u1", "u1", "<u2",
                                 "u1", "u1", "<u2", "<u2", "<u4", "S16", "S16", "<u4", "<u8"],
                     "offsets": [off for _, _, off in RECORD_FIELDS], "itemsize": RECORD_SIZE})


def header_vlan(h):
    """A header's VLAN ids as outputs list them (vlan_ids), or None when its gateway did not
    key connections by VLAN."""
    return vlan_ids(h["vlan_outer"], h["vlan_inner"]) if h["flags"] & HF_VLAN_KEY else None


def vlan_ids(outer, inner):
    """A flow key's VLAN ids as outputs list them, outer first: [] untagged, [10], or QinQ
    [100, 10]. Id 0 (a priority tag) is untagged, as 802.1Q means it."""
    return [outer, inner] if inner else ([outer] if outer else [])


def vlan_field(ids):
    """{"vlan": ids} for a connection of a run keyed by VLAN (`ids` as vlan_ids gives them);
    {} otherwise (ids None), so that outputs of other runs do not change."""
    return {} if ids is None else {"vlan": ids}


def vlan_text(ids):
    """VLAN ids as text: 100.10 (outer first), '-' untagged, '' unknown (None)."""
    return "" if ids is None else ".".join(map(str, ids)) or "-"


def endpoint(raw, port, ipver):
    """'10.0.0.1:80' or '[2001:db8::1]:80' from an address field (16 bytes, IPv4 in the first 4),
    formatted as `flowsift streams` writes its index (inet_ntop: an IPv4-mapped IPv6 address
    reads ::ffff:192.0.2.1)."""
    if ipver == 4:
        return f"{inet_ntop(AF_INET, raw[:4])}:{port}"
    return f"[{inet_ntop(AF_INET6, raw[:16])}]:{port}"
