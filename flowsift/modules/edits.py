"""Verified write-back: modules ask, the gateway decides (SIFT).

An edit names a record and a field the module declared in `writes` (`ip.src`, `ip.dst`,
`ip.ttl`, `tcp.sport`, `tcp.dport`, `tcp.flags`, `udp.sport`, `udp.dport`), or a same-length range
of stream bytes (`payload`); a drop (flow.drop) is declared as `drop`. The gateway checks the declaration and the value, merges it (header fields
into the edit table that egress applies; stream bytes into the record file, where every later
reader sees them), logs it (module, record, field, old, new), and counts it. A rejected edit is
counted and its reason returned to the module.
"""
import bisect
import collections
import ipaddress
import json

from flowsift.streams._pointer import StreamPointer

# keyword of flow.edit() -> the name a module declares in `writes`
FIELDS = {"ip_src": "ip.src", "ip_dst": "ip.dst", "ip_ttl": "ip.ttl", "tcp_sport": "tcp.sport",
          "tcp_dport": "tcp.dport", "tcp_flags": "tcp.flags", "udp_sport": "udp.sport", "udp_dport": "udp.dport"}
LIMITS = {"ip.ttl": 255, "tcp.flags": 255}          # else a port: 65535
# why an edit that names no field is refused (it changed nothing and said it was accepted)
NO_FIELD = "no field to change: edit(record, ip_dst=..., tcp_dport=...)"


class Edit(collections.namedtuple("Edit", "accepted reason")):
    """What the gateway said to an edit: accepted, or rejected with a reason."""
    __slots__ = ()

    def __bool__(self):
        return self.accepted


def checksum_words(old, new, pos):
    """(old, new) bytes that begin at byte `pos` of what a checksum covers, padded onto whole
    16-bit words."""
    if pos % 2:
        old, new = b"\0" + old, b"\0" + new
    if len(old) % 2:
        old, new = old + b"\0", new + b"\0"
    return old, new


class Changes:
    """The payload edits accepted in one direction, in the order accepted, found by the stream
    range they touch: what egress lays on each packet that carries those bytes."""

    def __init__(self):
        self.items = []                   # (offset, end, order, old, new), by offset
        self.starts = []
        self.longest = 0

    def add(self, offset, old, new):
        item = (offset, offset + len(new), len(self.items), old, new)
        i = bisect.bisect_right(self.starts, offset)
        self.items.insert(i, item)
        self.starts.insert(i, offset)
        self.longest = max(self.longest, len(new))

    def __len__(self):
        return len(self.items)

    def over(self, lo, hi):
        """(offset, old, new) of the edits touching stream range [lo, hi), in the order
        accepted (a later one over an earlier one's bytes wins, as in the stream)."""
        i = bisect.bisect_left(self.starts, lo - self.longest + 1)
        j = bisect.bisect_left(self.starts, hi)
        hits = sorted((c for c in self.items[i:j] if c[1] > lo), key=lambda c: c[2])
        return [(c[0], c[3], c[4]) for c in hits]

    def lay(self, b, at, n, so, pos):
        """Lay the edits of stream range [so, so + n) onto b[at:at + n], whatever this copy of
        those bytes held; returns the (old, new) checksum words of what changed (`pos`: where
        b[at] is in what the checksum covers), or None."""
        hits = self.over(so, so + n)
        if not hits:
            return None
        lo = min(max(off, so) for off, _, _ in hits) - so
        hi = max(min(off + len(new), so + n) for off, _, new in hits) - so
        old = bytes(b[at + lo:at + hi])
        for off, _, new in hits:
            a, z = max(off, so), min(off + len(new), so + n)
            b[at + a - so:at + z - so] = new[a - off:z - off]
        return checksum_words(old, bytes(b[at + lo:at + hi]), pos + lo)


class Editor:
    def __init__(self, store, log=None):
        self.store = store
        self.log = log                    # a text file for edit log lines, or None
        self.headers = {}                 # frame_pos -> {keyword: value}
        self.dropped = set()              # frame_pos of packets not to forward
        self.dropped_ranges = {}          # (conn, dir) -> [(start, end)]: stream bytes of dropped packets
        self.payload_dirs = set()         # (conn, dir) whose stream bytes were edited
        self.changes = {}                 # (conn, dir) -> Changes: what egress lays on the packets
        self.flow_fields = {}             # (conn, dir) -> the header edits of its last edited packet
        self.accepted = collections.Counter()
        self.rejected = collections.Counter()
        self.drops = 0
        self.forwarded_upto = None        # inline forwarding: frame positions at or below were sent
        self.forwarded_end = None         # inline forwarding: (conn, dir) -> sequence-space offset sent

    def _reject(self, module, reason):
        self.rejected[f"{module.name}: {reason}"] += 1
        module._tally("edits_rejected")
        return Edit(False, reason)

    def _log(self, module, conn, record_id, field, old, new):
        self.accepted[module.name] += 1
        if self.log is not None:
            self.log.write(json.dumps({"module": module.name, "conn": conn, "record": record_id, "field": field,
                                       "old": old, "new": new}) + "\n")

    def edit(self, module, flow, record, fields):
        if not fields:
            return self._reject(module, NO_FIELD)
        if self.forwarded_upto is not None and record.frame_pos <= self.forwarded_upto:
            return self._reject(module, "the packet was already forwarded")
        checked = {}
        for key, value in fields.items():
            name = FIELDS.get(key)
            if name is None:
                return self._reject(module, f"unknown field {key!r} (one of {', '.join(FIELDS)})")
            if name not in module.writes:
                return self._reject(module, f"{name} is not declared in writes")
            if name.startswith(("tcp.", "udp.")) and name[:3] != {6: "tcp", 17: "udp"}.get(record.proto):
                return self._reject(module, f"{name} on a {'tcp' if record.proto == 6 else 'udp'} packet")
            if name in ("ip.src", "ip.dst"):
                try:
                    if not isinstance(value, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
                        raise ValueError
                    addr = ipaddress.ip_address(value)
                except ValueError:
                    return self._reject(module, f"{name}={value!r} is not an IP address")
                if addr.version != record.ipver:
                    return self._reject(module, f"{name}={value} is IPv{addr.version} on an IPv{record.ipver} packet")
                checked[key] = addr
            else:
                limit = LIMITS.get(name, 65535)
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
                    return self._reject(module, f"{name}={value!r} is not an integer in 0..{limit}")
                checked[key] = value
        merged = self.headers.setdefault(record.frame_pos, {})
        for key, value in checked.items():
            old = merged.get(key, _original(record, key))
            merged[key] = value
            self._log(module, flow.conn, record.record_id, FIELDS[key], _text(old), _text(value))
        # what the connection's packets in this direction are rewritten to last: late packets
        # (after its end, no record) get the same
        self.flow_fields[(flow.conn, record.dir)] = merged
        return Edit(True, None)

    def late_fields(self, conn, d):
        """The header edits for a packet of (conn, d) that came after the connection ended."""
        return self.flow_fields.get((conn, d))

    def replace(self, module, flow, stream, offset, new):
        new = bytes(new)
        if "payload" not in module.writes:
            return self._reject(module, "payload is not declared in writes")
        if not new:
            return self._reject(module, "an empty replacement")
        if self.forwarded_end is not None:
            # (kept in sequence space: a direction seen midstream may start lower later)
            origin = stream.file.refresh()[f"origin{stream.direction}"]
            if offset + origin < self.forwarded_end.get((flow.conn, stream.direction), origin):
                return self._reject(module, f"bytes at {offset} were already forwarded")
        if offset < stream.tell():
            # read past already: a later stage may have been handed those bytes
            return self._reject(module, f"bytes at {offset} are behind the module's position {stream.tell()}")
        start, end = stream._retained()
        if offset < start or offset + len(new) > end:
            return self._reject(module, f"range {offset}+{len(new)} outside the stream's bytes [{start}, {end})")
        for g in stream.file.gaps(stream.direction):
            if offset < g.offset + g.length and g.offset < offset + len(new):
                return self._reject(module, f"range {offset}+{len(new)} crosses a gap at {g.offset}")
        old = stream.file.data(stream.direction, offset, len(new))
        self.store.write_data(flow.conn, stream.direction, offset, new)
        self.payload_dirs.add((flow.conn, stream.direction))
        changes = self.changes.get((flow.conn, stream.direction))
        if changes is None:
            changes = self.changes[(flow.conn, stream.direction)] = Changes()
        changes.add(offset, old, new)
        self._log(module, flow.conn, None, f"payload[{stream.direction}]@{offset}", old.hex(), new.hex())
        return Edit(True, None)

    def drop(self, record, conn=None):
        if self.forwarded_upto is not None and record.frame_pos <= self.forwarded_upto:
            self.rejected["drop: the packet was already forwarded"] += 1
            return
        if record.frame_pos not in self.dropped:
            self.drops += 1
            self.dropped.add(record.frame_pos)
            if conn is not None and record.payload_len:
                # its copies after the connection ended (late retransmissions) go with it
                so = record.stream_offset
                self.dropped_ranges.setdefault((conn, record.dir), []).append((so, so + record.payload_len))

    def dropped_at(self, key, start, end):
        """Do stream bytes [start, end) of direction `key` ((conn, dir)) belong to a dropped packet?"""
        return any(a < end and start < b for a, b in self.dropped_ranges.get(key, ()))

    def counters(self):
        return {"accepted": dict(self.accepted), "rejected": dict(self.rejected), "dropped": self.drops}


def _original(record, key):
    if key in ("ip_src", "ip_dst"):
        raw = record.src if key == "ip_src" else record.dst
        return ipaddress.ip_address(raw[:4] if record.ipver == 4 else raw)
    # (records do not keep the TTL: the log says null)
    return {"ip_ttl": None, "tcp_sport": record.sport, "udp_sport": record.sport, "tcp_flags": record.tcp_flags,
            "tcp_dport": record.dport, "udp_dport": record.dport}[key]


def _text(value):
    # the edit log's old and new: numbers as numbers, addresses as text, unknown as null
    return value if value is None or isinstance(value, int) else str(value)


class EditableStream(StreamPointer):
    """The stream pointer a writing module gets: it can also ask for same-length replacements."""

    def __init__(self, file, direction, editor, flow, module, header=None):
        super().__init__(file, direction, header)
        self._editor, self._flow, self._module = editor, flow, module

    def _retained(self):
        h = self.file.refresh()
        return max(0, h[f"reclaimed{self.direction}"]), h[f"end{self.direction}"]

    def replace(self, offset, new_bytes):
        """Ask the gateway to replace stream bytes [offset, offset+len) with `new_bytes` (same
        length). Returns an Edit: accepted, or rejected with its reason."""
        return self._editor.replace(self._module, self._flow, self, offset, new_bytes)
