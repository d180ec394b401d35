"""Verified write-back: modules ask, the gateway decides (SIFT).

An edit names a record and a field the module declared in `writes` (`ip.src`, `ip.dst`,
`ip.ttl`, `tcp.sport`, `tcp.dport`, `tcp.flags`, `udp.sport`, `udp.dport`), or a same-length range
of stream bytes (`payload`, checked against the `old` bytes the module says it replaces); a drop
(flow.drop) is declared as `drop`. The gateway checks the declaration and the value, merges it
(header fields into the edit table that egress applies and into the record, stream bytes into
the record file: every later reader sees them), logs it (module, record, field, old, new), and
counts it. A rejected edit is counted by the kind of its reason and the reason returned to the
module; a wrong type of argument is a TypeError.
"""
import bisect
import collections
import ipaddress
import json
import operator

from flowsift.streams import format as F
from flowsift.streams._pointer import StreamPointer
from flowsift.streams.reader import Record

# keyword of flow.edit() -> the name a module declares in `writes`
FIELDS = {"ip_src": "ip.src", "ip_dst": "ip.dst", "ip_ttl": "ip.ttl", "tcp_sport": "tcp.sport",
          "tcp_dport": "tcp.dport", "tcp_flags": "tcp.flags", "udp_sport": "udp.sport", "udp_dport": "udp.dport"}
LIMITS = {"ip.ttl": 255, "tcp.flags": 255}          # else a port: 65535
# why an edit that names no field is refused (it changed nothing and said it was accepted)
NO_FIELD = "no field to change: edit(record, ip_dst=..., tcp_dport=...)"
DROP_UNDECLARED = "drop is not declared in writes"
# the kind under which the edits of a read-only module are refused, wherever it runs (in a worker
# no editor sees them: the module's edits_rejected counts them)
READ_ONLY = "read-only module"
# why an edit of what a later stage was handed already is refused: it read it as it was, and
# "downstream stages see the merged values" would not hold
LATE = "already read by a later stage"
ENDED = "connection ended"      # (after the module's on_close for it: its record file may be gone)
# keyword of flow.edit() -> the record column that holds it (ip.ttl has none), and where it is
RECORD_NAME = {"ip_src": "src", "ip_dst": "dst", "tcp_sport": "sport", "udp_sport": "sport", "tcp_dport": "dport",
               "udp_dport": "dport", "tcp_flags": "tcp_flags"}
RECORD_FIELD = {k: next(off for n, _, off in F.RECORD_FIELDS if n == v) for k, v in RECORD_NAME.items()}


class Handed(collections.namedtuple("Handed", "records end0 end1 ended")):
    """What the stages after a writing module were handed of a connection (flow._handed): its
    first `records` records and its stream bytes before end0, end1; `ended`: the module's stage
    is done with it (its on_close returned)."""
    __slots__ = ()


ALL = 1 << 64
EVERYTHING = Handed(ALL, ALL, ALL, False)   # of a connection the module skipped: it counts as read


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
    def __init__(self, store, log=None, also=None):
        self.store = store
        self.log = log                    # a text file for edit log lines, or None
        self.also = also                  # another one (flowsift.testing's), or None
        self.headers = {}                 # frame_pos -> {keyword: value}
        self.edited_by = {}               # frame_pos -> {keyword: the module whose value it holds}
        self.dropped = set()              # frame_pos of packets not to forward
        self.dropped_ranges = {}          # (conn, dir) -> [(start, end)]: stream bytes of dropped packets
        self.payload_dirs = set()         # (conn, dir) whose stream bytes were edited
        self.changes = {}                 # (conn, dir) -> Changes: what egress lays on the packets
        self.flow_fields = {}             # (conn, dir) -> the header edits of its last edited packet
        self.read_to = {}                 # (module name, conn, dir) -> the furthest a writing module read
        self.accepted = collections.Counter()
        self.rejected = collections.Counter()     # "module: kind" -> n
        self.overridden = collections.Counter()   # "later over earlier: field" -> n
        self.drops = 0
        self.forwarded_upto = None        # inline forwarding: frame positions at or below were sent
        self.forwarded_end = None         # inline forwarding: (conn, dir) -> sequence-space offset sent

    def _reject(self, module, kind, reason, conn=None, record=None, field=None, new=None):
        # counted by kind (a short, stable text); the details go to the module and the log
        self.rejected[f"{module.name}: {kind}"] += 1
        module._tally("edits_rejected")
        self._line({"module": module.name, "conn": conn, "record": record, "field": field, "old": None, "new": new,
                    "accepted": False, "reason": reason})
        return Edit(False, reason)

    def _line(self, entry):
        if self.log is not None or self.also is not None:
            line = json.dumps(entry) + "\n"
            for f in (self.log, self.also):
                if f is not None:
                    f.write(line)

    def _log(self, module, conn, record_id, field, old, new, over=None):
        self.accepted[module.name] += 1
        entry = {"module": module.name, "conn": conn, "record": record_id, "field": field, "old": old, "new": new,
                 "accepted": True, "reason": None}
        if over is not None:
            entry["over"] = over          # the module whose value this one replaced
        self._line(entry)

    def _not_ours(self, module, flow, record, call):
        """The reason a record is not one this module may edit now, or None; a TypeError for what
        is not a record at all."""
        check_record(record, call)
        if self.forwarded_upto is not None and record.frame_pos <= self.forwarded_upto:
            return "already forwarded", "the packet was already forwarded"
        rf = flow._file
        if rf is not None:
            h = rf.header
            if not 0 <= record.index < h["records"] or \
                    (record.record_id - h["first_record_id"]) % 2**64 != record.index:
                return ("not this connection's record",
                        f"record {record.index} (id {record.record_id}) is not one of connection {flow.conn}'s")
        return None

    def edit(self, module, flow, record, fields):
        bad = self._not_ours(module, flow, record, "flow.edit")
        rid = getattr(record, "record_id", None)
        if bad is not None:
            return self._reject(module, *bad, conn=flow.conn, record=rid)
        if not fields:
            return self._reject(module, "no field", NO_FIELD, conn=flow.conn, record=rid)
        handed = flow._handed.get(module) if flow._handed else None
        if handed is not None and (handed.ended or record.index < handed.records):
            return self._reject(module, *self._late(module, flow, handed, f"record {record.index}"), flow.conn, rid)
        checked = {}
        for key, value in fields.items():
            name = FIELDS.get(key)
            if name is None:
                return self._reject(module, "unknown field", f"unknown field {key!r} (one of {', '.join(FIELDS)})",
                                    flow.conn, rid, key)
            if name not in module.writes:
                return self._reject(module, "not declared in writes", f"{name} is not declared in writes",
                                    flow.conn, rid, name)
            if name.startswith(("tcp.", "udp.")) and name[:3] != {6: "tcp", 17: "udp"}.get(record.proto):
                return self._reject(module, "wrong protocol",
                                    f"{name} on a {'tcp' if record.proto == 6 else 'udp'} packet", flow.conn, rid, name)
            if name in ("ip.src", "ip.dst"):
                try:
                    if not isinstance(value, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
                        raise ValueError
                    addr = ipaddress.ip_address(value)
                except ValueError:
                    return self._reject(module, "bad value", f"{name}={value!r} is not an IP address",
                                        flow.conn, rid, name, repr(value))
                if addr.version != record.ipver:
                    return self._reject(module, "wrong address family",
                                        f"{name}={value} is IPv{addr.version} on an IPv{record.ipver} packet",
                                        flow.conn, rid, name, str(addr))
                checked[key] = addr
            else:
                limit = LIMITS.get(name, 65535)
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
                    return self._reject(module, "bad value", f"{name}={value!r} is not an integer in 0..{limit}",
                                        flow.conn, rid, name, repr(value))
                checked[key] = value
        merged = self.headers.setdefault(record.frame_pos, {})
        by = self.edited_by.setdefault(record.frame_pos, {})
        for key, value in checked.items():
            old = merged.get(key, _original(record, key))
            merged[key] = value
            # a field another module set already: the later stage's value goes out, and says so
            prev = by.get(key)
            over = prev if prev is not None and prev != module.name else None
            if over is not None:
                self.overridden[f"{module.name} over {over}: {FIELDS[key]}"] += 1
            by[key] = module.name
            self._log(module, flow.conn, record.record_id, FIELDS[key], _text(old), _text(value), over)
            self._merge_record(flow.conn, record, key, value)
        # what the connection's packets in this direction are rewritten to last: late packets
        # (after its end, no record) get the same
        self.flow_fields[(flow.conn, record.dir)] = merged
        return Edit(True, None)

    def _merge_record(self, conn, record, key, value):
        # into the record file, so later stages (workers too) read the merged field
        if key == "ip_ttl" or self.store is None:
            return                        # (records do not keep the TTL)
        off, data = RECORD_FIELD[key], None
        if key in ("ip_src", "ip_dst"):
            data = value.packed.ljust(16, b"\0")
        elif key == "tcp_flags":
            data = bytes([value])
        else:
            data = value.to_bytes(2, "little")
        self.store.write_record_field(conn, record.index, off, data)

    def merged(self, record):
        """`record` with the header edits merged into it so far (for a later module of the same
        batch, whose copy was read before they were made)."""
        fields = self.headers.get(record.frame_pos)
        if not fields:
            return record
        return record._replace(**{RECORD_NAME[k]: (v.packed.ljust(16, b"\0") if k in ("ip_src", "ip_dst") else v)
                                  for k, v in fields.items() if k != "ip_ttl"})

    def late_fields(self, conn, d):
        """The header edits for a packet of (conn, d) that came after the connection ended."""
        return self.flow_fields.get((conn, d))

    def _late(self, module, flow, handed, what, upto=ALL):
        # (kind, reason) of an edit that comes too late: the stages after the module read the
        # values it would change, or (the last stage) it is done with the connection
        if handed.records:
            return LATE, (f"{what}: already handed to the stages after {module.name}"
                          + (f" (up to {upto})" if upto < ALL else "") + ", which read the old values")
        return ENDED, f"connection {flow.conn} ended: {module.name} was done with it (its on_close returned)"

    def reached(self, module, conn, d, pos):
        """The furthest a writing module has read in direction d of conn (`pos`: where it stands):
        what it read past is final, wherever it went back to since."""
        return max(pos, self.read_to.get((module.name, conn, d), 0))

    def replace(self, module, flow, stream, offset, new, old=None):
        offset = _offset(offset)
        new = _bytes_like(new, "new_bytes")
        if old is not None:
            old = _bytes_like(old, "old")
        d = stream.direction
        where = f"payload[{d}]@{offset}"
        args = (flow.conn, None, where, new.hex())
        if "payload" not in module.writes:
            return self._reject(module, "not declared in writes", "payload is not declared in writes", *args)
        if not new:
            return self._reject(module, "empty replacement", "an empty replacement", *args)
        if old is not None and len(old) != len(new):
            return self._reject(module, "length change",
                                f"replacing {len(old)} bytes with {len(new)}: length-changing edits are not "
                                f"supported yet (same length only)", *args)
        handed = flow._handed.get(module) if flow._handed else None
        if handed is not None and handed.ended:
            # (before anything reads the record file: it is closed)
            return self._reject(module, *self._late(module, flow, handed, f"bytes at {offset}"), *args)
        if self.forwarded_end is not None:
            # (kept in sequence space: a direction seen midstream may start lower later)
            origin = stream.file.refresh()[f"origin{d}"]
            if offset + origin < self.forwarded_end.get((flow.conn, d), origin):
                return self._reject(module, "already forwarded", f"bytes at {offset} were already forwarded", *args)
        reached = self.reached(module, flow.conn, d, stream.tell())
        if offset < reached:
            # read past already: a later stage may have been handed those bytes
            return self._reject(module, "behind the module's position",
                                f"bytes at {offset} are behind the module's position (it read to {reached})", *args)
        if handed is not None and offset < handed[1 + d]:
            return self._reject(module, *self._late(module, flow, handed, f"bytes at {offset}", handed[1 + d]), *args)
        start, end = stream._retained()
        if offset < start or offset + len(new) > end:
            return self._reject(module, "outside the stream",
                                f"range {offset}+{len(new)} outside the stream's bytes [{start}, {end})", *args)
        for g in stream.file.gaps(d):
            if offset < g.offset + g.length and g.offset < offset + len(new):
                return self._reject(module, "crosses a gap", f"range {offset}+{len(new)} crosses a gap at {g.offset}",
                                    *args)
        held = stream.file.data(d, offset, len(new))
        if old is not None and held != old:
            return self._reject(module, "old bytes differ",
                                f"the stream holds {_short(held)} at {offset}, not {_short(old)}", *args)
        self.store.write_data(flow.conn, d, offset, new)
        self.payload_dirs.add((flow.conn, d))
        changes = self.changes.get((flow.conn, d))
        if changes is None:
            changes = self.changes[(flow.conn, d)] = Changes()
        changes.add(offset, held, new)
        self._log(module, flow.conn, None, where, held.hex(), new.hex())
        return Edit(True, None)

    def drop(self, module, flow, record):
        bad = self._not_ours(module, flow, record, "flow.drop")
        rid = getattr(record, "record_id", None)
        if bad is not None:
            return self._reject(module, *bad, conn=flow.conn, record=rid, field="drop")
        if "drop" not in module.writes:
            return self._reject(module, "not declared in writes", DROP_UNDECLARED, flow.conn, rid, "drop")
        if record.frame_pos not in self.dropped:
            self.drops += 1
            self.dropped.add(record.frame_pos)
            self._line({"module": module.name, "conn": flow.conn, "record": rid, "field": "drop", "old": None,
                        "new": None, "accepted": True, "reason": None})
            if record.payload_len:
                # its copies after the connection ended (late retransmissions) go with it
                so = record.stream_offset
                self.dropped_ranges.setdefault((flow.conn, record.dir), []).append((so, so + record.payload_len))
        return Edit(True, None)

    def dropped_at(self, key, start, end):
        """Do stream bytes [start, end) of direction `key` ((conn, dir)) belong to a dropped packet?"""
        return any(a < end and start < b for a, b in self.dropped_ranges.get(key, ()))

    def counters(self):
        out = {"accepted": dict(self.accepted), "rejected": dict(self.rejected), "dropped": self.drops}
        if self.overridden:
            out["overridden"] = dict(self.overridden)
        return out


def take_up_read_only(summary, chain):
    """Put the edits refused to the chain's read-only modules (their `edits_rejected`) into the
    summary's edits.rejected, as `module: read-only module`: the same total in every mode, and
    an `edits` object for them in a chain that has no writing module (and no editor) too."""
    for cls, _ in chain:
        n = summary.get("modules", {}).get(cls.name, {}).get("edits_rejected", 0) if cls.read_only() else 0
        if n:
            edits = summary.setdefault("edits", {"accepted": {}, "rejected": {}, "dropped": 0})
            edits.setdefault("rejected", {})[f"{cls.name}: {READ_ONLY}"] = n


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


def check_record(record, call):
    """A TypeError unless `record` is a record as hooks are handed them (on_packet's)."""
    if not isinstance(record, Record):
        kind = "None" if record is None else f"a {type(record).__module__}.{type(record).__name__}" \
            if type(record).__module__ not in ("builtins",) else f"a {type(record).__name__}"
        raise TypeError(f"{call}: record is {kind}, not a record: pass the record on_packet was handed "
                        f"(a row of flow.records() is not one)")


def _offset(offset):
    # a stream offset: an integer (numpy's too), never a bool, a float or text
    if isinstance(offset, bool) or not hasattr(offset, "__index__"):
        raise TypeError(f"stream.replace: offset is a {type(offset).__name__} ({offset!r}), not an integer")
    return operator.index(offset)


def _bytes_like(value, what):
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"stream.replace: {what} is a {type(value).__name__}, not bytes (bytes, bytearray or "
                        f"memoryview)")
    return bytes(value)


def refused_replace(flow, offset, new_bytes, old):
    """stream.replace on a pointer that cannot edit (a read-only module's, or one no chain
    handed out): the arguments checked as for a writing module, then refused as flow.edit is."""
    _offset(offset)
    _bytes_like(new_bytes, "new_bytes")
    if old is not None:
        _bytes_like(old, "old")
    if flow is None:
        return Edit(False, "edits need a chain run by the gateway")
    return flow._refused(None, "stream.replace", {"payload": new_bytes})


def _short(b, n=24):
    # stream bytes in a reason: enough to recognise them
    return repr(b[:n]) + ("..." if len(b) > n else "")


class EditableStream(StreamPointer):
    """The stream pointer a writing module gets: it can also ask for same-length replacements.
    Going back (seek, resume) does not make bytes it read past editable again: later stages
    may have been handed them."""

    def __init__(self, file, direction, editor, flow, module, header=None):
        super().__init__(file, direction, header)
        self._editor, self._flow, self._module = editor, flow, module

    def _retained(self):
        h = self.file.refresh()
        return max(0, h[f"reclaimed{self.direction}"]), h[f"end{self.direction}"]

    def _mark(self):
        key = (self._module.name, self._flow.conn, self.direction)
        reads = self._editor.read_to
        reads[key] = max(reads.get(key, 0), self.tell())

    def seek(self, offset):
        self._mark()
        return super().seek(offset)

    def resume(self, offset):
        self._mark()
        return super().resume(offset)

    def replace(self, offset, new_bytes, old=None):
        """Ask the gateway to replace stream bytes [offset, offset + len(new_bytes)) with
        `new_bytes`. `old`: the bytes you mean to replace; the edit is rejected if the stream
        does not hold them there, or if they are not as long as `new_bytes` (length-changing
        edits are not supported yet), or if the modules after this one have read them already
        (bytes of a connection it skipped). Returns an Edit: accepted, or rejected with its reason.
        An offset that is not an integer, or bytes that are not bytes, is a TypeError."""
        return self._editor.replace(self._module, self._flow, self, offset, new_bytes, old)
