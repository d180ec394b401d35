"""Egress to a pcap file (`flowsift chain ... -w OUT.pcap`): the source's frames, in order, with
the chain's verdicts and verified edits applied and checksums recomputed on edited packets.

Frames are found again by their position in the source (records keep it); frames no module
touched are written byte for byte; dropped ones are left out.
"""
import ipaddress
import struct

from flowsift.errors import UsageError
from flowsift.io import Decoder, PcapWriter, decoded_batches, open_capture
from flowsift.streams import RecordFile
from flowsift.streams.format import RF_LATE

PF_FRAGMENT = 2


def _csum(data, start=0):
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _put_field(b, l3, l4, v4, key, value):
    """Write header field `key` into frame bytes `b`; returns (old bytes, new bytes) where the
    transport checksum covers them (addresses, ports), else None."""
    if key in ("ip_src", "ip_dst"):
        raw = ipaddress.ip_address(value).packed
        at = (l3 + 12 if key == "ip_src" else l3 + 16) if v4 else (l3 + 8 if key == "ip_src" else l3 + 24)
    elif key == "ip_ttl":
        b[l3 + 8 if v4 else l3 + 7] = value
        return None
    elif key.endswith(("sport", "dport")):
        raw = struct.pack("!H", value)
        at = l4 if key.endswith("sport") else l4 + 2
    elif key == "tcp_flags":
        # the checksum covers the 16-bit word it is the low byte of (with the header length)
        old = bytes(b[l4 + 12:l4 + 14])
        b[l4 + 13] = value
        return old, bytes(b[l4 + 12:l4 + 14])
    else:
        return None
    old = bytes(b[at:at + len(raw)])
    b[at:at + len(raw)] = raw
    return old, raw


def _ipv4_header_checksum(b, l3):
    ihl = (b[l3] & 15) * 4
    b[l3 + 10:l3 + 12] = b"\0\0"
    b[l3 + 10:l3 + 12] = struct.pack("!H", _csum(b[l3:l3 + ihl]))
    return ihl


def _rewrite(frame, p, fields, payload):
    """A copy of `frame` (decoded as `p`) with header `fields` and `payload` bytes applied and
    the IP and transport checksums recomputed; None if it cannot be edited (a fragment)."""
    if p["flags"] & PF_FRAGMENT:
        return None
    b = bytearray(frame)
    l3, l4, v4 = int(p["l3_off"]), int(p["l4_off"]), p["ipver"] == 4
    for key, value in (fields or {}).items():
        _put_field(b, l3, l4, v4, key, value)
    if payload:
        off, n = int(p["payload_off"]), min(len(payload), int(p["payload_len"]))
        b[off:off + n] = payload[:n]
    if v4:
        ihl = _ipv4_header_checksum(b, l3)
        l4_len = struct.unpack_from("!H", b, l3 + 2)[0] - ihl
        src, dst = bytes(b[l3 + 12:l3 + 16]), bytes(b[l3 + 16:l3 + 20])
    else:
        l4_len = struct.unpack_from("!H", b, l3 + 4)[0] + 40 - (l4 - l3)
        src, dst = bytes(b[l3 + 8:l3 + 24]), bytes(b[l3 + 24:l3 + 40])
    proto = int(p["proto"])
    if proto in (6, 17) and l4 + l4_len <= len(b):          # a transport checksum needs every byte
        at = l4 + (16 if proto == 6 else 6)
        b[at:at + 2] = b"\0\0"
        pseudo = src + dst + (struct.pack("!BBH", 0, proto, l4_len) if v4 else struct.pack("!I3xB", l4_len, proto))
        c = _csum(bytes(b[l4:l4 + l4_len]), sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo)))
        b[at:at + 2] = struct.pack("!H", c if c or proto == 6 else 0xFFFF)
    return bytes(b)


def _incremental(csum, old, new):
    """A ones' complement checksum after bytes `old` of what it covers became `new` (RFC 1624)."""
    s = (~csum) & 0xFFFF
    for i in range(0, len(old), 2):
        s += ((~((old[i] << 8) | old[i + 1])) & 0xFFFF) + ((new[i] << 8) | new[i + 1])
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


class _DatagramBytes:
    """The merged stream bytes of a datagram that came in fragments, put back into each of its
    fragments, and what they change of the transport checksum, which only the first fragment
    holds: worked out from the edits' old and new bytes (Editor.changes), so no other fragment
    is needed to write it."""

    def __init__(self, rf, d, offset, length, header, changes):
        # `header`: the transport header's length (the datagram's IP payload less the stream's)
        self.rf, self.d, self.offset, self.length, self.header = rf, d, offset, length, header
        self.changes = [c for c in changes if c[0] < offset + length and offset < c[0] + len(c[2])]

    def put(self, b, l4, frag_off, frag_len, first):
        """Put the merged bytes into fragment bytes `b` (its IP payload at l4: bytes frag_off..
        of the datagram's); returns the (old, new) checksum word changes for the first."""
        H = self.header
        lo, hi = max(0, frag_off - H), min(self.length, frag_off + frag_len - H)
        if lo < hi:
            at = l4 + H + lo - frag_off
            b[at:at + hi - lo] = self.rf.data(self.d, self.offset + lo, hi - lo)
        if not first:
            return []
        words = []
        for off, old, new in self.changes:
            # clipped to the datagram, then laid on 16-bit words of the transport segment
            a, z = max(off, self.offset), min(off + len(new), self.offset + self.length)
            old, new = old[a - off:z - off], new[a - off:z - off]
            if (H + a - self.offset) % 2:
                old, new = b"\0" + old, b"\0" + new
            if len(old) % 2:
                old, new = old + b"\0", new + b"\0"
            words.append((old, new))
        return words


def _rewrite_fragment(frame, p, fields, payload=None):
    """A copy of one fragment of an edited datagram with its header edits: addresses and TTL in
    every fragment (IPv4 header checksum recomputed), ports in the first, whose transport
    checksum is updated for the changed addresses and ports without the other fragments' bytes;
    and with the datagram's merged stream bytes (`payload`, a _DatagramBytes). None for what a
    fragment cannot take."""
    b = bytearray(frame)
    l3, l4, v4 = int(p["l3_off"]), int(p["l4_off"]), p["ipver"] == 4
    proto, first = int(p["proto"]), int(p["frag_off"]) == 0
    changed = []                      # (old, new) bytes the transport checksum covers
    if payload is not None:
        if v4:
            frag_len = struct.unpack_from("!H", b, l3 + 2)[0] - (l4 - l3)
        else:
            frag_len = struct.unpack_from("!H", b, l3 + 4)[0] + 40 - (l4 - l3)
        if l4 + frag_len > len(b):
            return None                   # (cut by the snaplen)
        changed.extend(payload.put(b, l4, int(p["frag_off"]), frag_len, first))
    for key, value in fields.items():
        if key.endswith(("sport", "dport")) or key == "tcp_flags":
            if not first:
                continue                  # the ports and flags are in the first fragment only
            if l4 + (4 if key != "tcp_flags" else 14) > len(b):
                return None
        change = _put_field(b, l3, l4, v4, key, value)
        if change is not None:
            changed.append(change)
    if v4 and fields:
        _ipv4_header_checksum(b, l3)
    if first and changed and proto in (6, 17):
        at = l4 + (16 if proto == 6 else 6)
        if at + 2 > len(b):
            return None
        old = struct.unpack_from("!H", b, at)[0]
        if proto == 17 and old == 0 and v4:
            return bytes(b)               # no UDP checksum to keep right
        c = _incremental(old, b"".join(o for o, _ in changed), b"".join(n for _, n in changed))
        b[at:at + 2] = struct.pack("!H", c if c or proto == 6 else 0xFFFF)
    return bytes(b)


def _fragment_fields(editor, members, positions=None):
    """frame position of each fragment of an edited datagram -> the datagram's header edits, or
    None where the datagram cannot take them (its transport header spans fragments; or, given
    the `positions` that can still be sent, some of its fragments are gone already): it leaves
    unedited, whole, and counted."""
    out = {}
    for pos, fields in editor.headers.items():
        frags, whole = members.get(pos, ((), False))
        ok = whole and (positions is None or all(m in positions for m in frags))
        for m in frags:
            if positions is None or m in positions:
                out[m] = fields if ok else None
    return out


class _LateBytes:
    """Where a direction's merged bytes are, for its packets that came after the connection
    ended: such a packet reaches no module, but a retransmission among them repeats stream
    bytes, which must leave as merged (masked) as their first copy did."""

    def __init__(self, rf, d):
        h = rf.header
        self.rf, self.d, self.end = rf, d, h[f"end{d}"]
        self.origin = h[f"origin{d}"]
        self.holes = [(g.offset, g.offset + g.length) for g in rf.gaps(d)]
        self.anchor = None                   # (seq, seq_offset) of the direction's last non-SYN record
        for rec in rf.records():
            if rec.dir == d and rec.proto == 6 and not rec.tcp_flags & 2:
                self.anchor = (rec.seq, rec.seq_offset)

    def payload(self, frame, p):
        """The packet's payload with the merged bytes it repeats put in, or None when no
        stream byte can be placed (a SYN, no anchor)."""
        if self.anchor is None or p["tcp_flags"] & 2:
            return None
        seq0, off0 = self.anchor
        delta = (int(p["seq"]) - seq0) & 0xFFFFFFFF
        off = off0 + (delta - (1 << 32) if delta >= 1 << 31 else delta) - self.origin
        at, n = int(p["payload_off"]), int(p["payload_len"])
        data = bytearray(frame[at:at + n])
        lo, hi = max(off, 0), min(off + n, self.end)
        # delivered ranges only: a gap's range holds no bytes
        cuts = [lo] + [x for a, b in self.holes for x in (a, b) if lo < x < hi] + [hi]
        for a, b in zip(cuts[::2], cuts[1::2]):
            if a < b and not any(ga <= a < gb for ga, gb in self.holes):
                data[a - off:b - off] = self.rf.data(self.d, a, b - a)
        return bytes(data)


def egress_linktype(source, cap=None):
    """The one link type of the interfaces `source` declared so far (a pcapng declares them as
    it goes: the ones before its first packets, unless `cap` was read further); -w writes a pcap,
    which has one."""
    if cap is None:
        cap = open_capture(source)
        next(iter(cap.batches()), None)
    linktypes = sorted({i["linktype"] for i in cap.interfaces()})
    if len(linktypes) > 1:
        raise UsageError(f"{source}: -w writes a pcap, with one link type; this capture has "
                         f"{len(linktypes)} ({', '.join(map(str, linktypes))})")
    return linktypes[0] if linktypes else None


def write_egress(source, out, editor, store, late=None, members=None):
    """Write the source's frames to `out` with the chain's verdicts and edits; `late`: frame
    position -> (conn, dir) of the packets that came after their connection ended; `members`:
    frame position of a rebuilt datagram -> its fragments' positions."""
    cap = open_capture(source)
    batches = decoded_batches(cap, Decoder())
    first = next(batches, None)
    linktype = egress_linktype(source, cap) or 1
    members = members or {}
    payload_of, files, in_fragments = {}, {}, {}

    def file_of(conn):
        rf = files.get(conn)
        if rf is None:
            rf = files[conn] = RecordFile(store.path(conn))
        return rf
    for conn, d in editor.payload_dirs:
        rf = file_of(conn)
        for rec in rf.records():
            if rec.dir == d and rec.payload_len:          # (a TCP segment, or a UDP datagram)
                payload_of[rec.frame_pos] = (conn, d, rec.stream_offset, rec.payload_len)
                if rec.frame_pos in members and members[rec.frame_pos][1]:
                    # a datagram rebuilt from fragments (its IP header, made by the defragmenter,
                    # has no options): its bytes go back into them
                    header = rec.wirelen - (20 if rec.ipver == 4 else 40) - rec.payload_len
                    in_fragments[rec.frame_pos] = _DatagramBytes(rf, d, rec.stream_offset, rec.payload_len, header,
                                                                 editor.changes.get((conn, d), ()))
    counts = {"packets": 0, "edited": 0, "dropped": 0, "not_editable": 0, "late_edited": 0}
    late = late or {}
    fragment_fields = _fragment_fields(editor, members)
    for dpos in payload_of.keys() & members.keys():
        for m in members[dpos][0]:
            if dpos in in_fragments:
                fragment_fields.setdefault(m, {})       # (fragments of a datagram with stream edits only)
            else:
                fragment_fields[m] = None               # its transport header spans fragments
    datagram_of = {m: dpos for dpos, (frags, _) in members.items() for m in frags}
    late_bytes = {}
    import itertools
    from flowsift.io.pcapwriter import MAX_SNAPLEN
    known = len(cap.interfaces())
    # the source's time resolution and snaplen: a capture no module changed comes out as it came
    ifs = cap.interfaces()
    nanosecond = not ifs or any(i["tsresol"] != "1e-6" for i in ifs)
    snaplen = max((i["snaplen"] for i in ifs), default=0)
    with PcapWriter(out, linktype=linktype, nanosecond=nanosecond,
                    snaplen=snaplen if 0 < snaplen <= MAX_SNAPLEN else MAX_SNAPLEN) as w:
        for batch in itertools.chain([first] if first is not None else [], batches):
            if len(cap.interfaces()) != known:          # a pcapng declared another interface
                known = len(cap.interfaces())
                egress_linktype(source, cap)
            arr = batch.array
            for i in range(len(batch)):
                pos = int(arr["rec_pos"][i])
                if pos in editor.dropped:
                    counts["dropped"] += 1
                    continue
                frame = batch.frame(i)
                new = frame
                if pos in fragment_fields and arr["flags"][i] & PF_FRAGMENT:
                    fields = fragment_fields[pos]          # (None: the datagram cannot take them)
                    dpos = datagram_of.get(pos)
                    if dpos in payload_of and dpos not in in_fragments:
                        new = None                        # its transport header spans fragments
                    elif fields is not None:
                        new = _rewrite_fragment(frame, arr[i], fields, in_fragments.get(dpos))
                    else:
                        new = None
                else:
                    fields, where = editor.headers.get(pos), payload_of.get(pos)
                    data = files[where[0]].data(where[1], where[2], where[3]) if where else None
                    if pos in late:
                        if not fields:
                            fields = editor.late_fields(*late[pos])
                        if late[pos] in editor.payload_dirs and arr["proto"][i] == 6 and arr["payload_len"][i]:
                            lb = late_bytes.get(late[pos])
                            if lb is None:
                                lb = late_bytes[late[pos]] = _LateBytes(file_of(late[pos][0]), late[pos][1])
                            data = lb.payload(frame, arr[i])
                        counts["late_edited"] += bool(fields or data)
                    if fields or data:
                        new = _rewrite(frame, arr[i], fields, data)
                if new is None:
                    counts["not_editable"] += 1
                elif new != frame:
                    frame = new
                    counts["edited"] += 1
                w.write(int(arr["ts_ns"][i]), frame, int(arr["wirelen"][i]))
                counts["packets"] += 1
    for rf in files.values():
        rf.close()
    return counts


class Forwarder:
    """Inline mode (`flowsift chain MODULES SOURCE --out afpacket:IFACE|dpdk:PORT`): each batch's frames
    leave by an interface as soon as the chain has seen them -- the writing stages run in the
    gateway's process, synchronously, so their verdicts and edits are in; read-only stages
    cannot change a packet, so nothing waits for them. Dropped frames are not sent, edited ones
    are rewritten with checksums recomputed, all others go out byte for byte, non-IP included.
    Once a frame is sent it cannot be changed: a later edit of it is rejected and counted."""

    def __init__(self, spec, editor, store):
        from flowsift.io.live import dpdk_port, parse_spec
        scheme, name, opts = parse_spec(spec) if ":" in spec else (None, None, None)
        if scheme not in ("afpacket", "dpdk") or opts:
            raise UsageError(f"--out {spec}: expected afpacket:IFACE or dpdk:PORT")
        self.shared = scheme == "dpdk"          # a DPDK port may be the source too: never closed here
        self.sink = None
        if scheme == "dpdk":
            # opened at the first batch: the source (maybe this very port, with its device
            # arguments) is open by then
            self._open = lambda: dpdk_port(name)
        else:
            from flowsift.io._afpacket import AfPacketError, AfPacketSink
            try:
                self.sink = AfPacketSink(name)
            except AfPacketError as e:
                from flowsift.errors import FlowsiftError
                raise FlowsiftError(str(e)) from None
        self.spec = spec
        self.editor = editor
        self.store = store
        editor.forwarded_upto = -1            # frame positions at or below were sent
        editor.forwarded_end = {}             # (conn, dir) -> stream offset sent so far
        self.files = {}
        self.members = None                   # the defragmenter's datagram -> fragments map
        self.counts = {"forwarded": 0, "edited": 0, "dropped": 0, "not_editable": 0, "failed": 0,
                       "late_edited": 0}

    def _file(self, conn):
        rf = self.files.get(conn)
        if rf is None:
            if len(self.files) >= 256:
                # a live run goes on for ever: keep the files of recent edits open, not all
                for old in self.files.values():
                    old.close()
                self.files.clear()
            rf = self.files[conn] = RecordFile(self.store.path(conn))
            self.fresh.add(conn)
        elif conn not in self.fresh:
            # what the gateway published since the last batch: data() reads no further than
            # the header it holds (a stale one cut this batch's bytes short: sent unedited)
            rf.refresh()
            self.fresh.add(conn)
        return rf

    def forward(self, batch):
        import numpy as np
        n = len(batch)
        if not n:
            return
        self.fresh = set()                    # record files read again for this batch
        if self.sink is None:
            self.sink = self._open()
        ed = self.editor
        arr = batch.array
        pos = arr["rec_pos"]
        skip = None
        if ed.dropped:
            skip = np.isin(pos, np.fromiter(ed.dropped, dtype=np.uint64, count=len(ed.dropped))).astype(np.uint8)
            self.counts["dropped"] += int(skip.sum())
        # packets carrying stream bytes at their stream offset: TCP segments and UDP datagrams
        # (late ones have none: see below)
        data_pkts = (arr["payload_len"] > 0) & (arr["flow_id"] != 0xFFFFFFFF) & ((arr["proto"] == 6) | (arr["proto"] == 17)) \
            & ((arr["rflags"] & RF_LATE) == 0)
        keys = (arr["flow_id"].astype(np.uint64) << np.uint64(1)) | arr["dir"].astype(np.uint64)
        todo = np.zeros(n, dtype=bool)
        if ed.headers:
            todo |= np.isin(pos, np.fromiter(ed.headers, dtype=np.uint64, count=len(ed.headers)))
        if ed.payload_dirs:
            edited = np.fromiter(((c << 1) | d for c, d in ed.payload_dirs), dtype=np.uint64)
            todo |= data_pkts & np.isin(keys, edited)
        frag = {}
        if self.members and ed.headers:
            # a datagram's fragments take its edits only if all of them are in this batch (the
            # ones before were sent already): the datagram leaves rewritten whole, or as it came
            frag = _fragment_fields(ed, self.members, set(pos.tolist()))
            if frag:
                todo |= np.isin(pos, np.fromiter(frag, dtype=np.uint64, count=len(frag)))
        late = None
        if ed.flow_fields or ed.payload_dirs:
            # (a late packet has no stream offset of its own: its bytes are placed by _LateBytes)
            late = ((arr["rflags"] & RF_LATE) != 0) & (arr["flow_id"] != 0xFFFFFFFF)
            todo |= late
        if skip is not None:
            todo &= skip == 0
        replace = {}
        for i in np.flatnonzero(todo):
            p = arr[i]
            if frag and int(p["rec_pos"]) in frag and p["flags"] & PF_FRAGMENT:
                fields = frag[int(p["rec_pos"])]
                frame = batch.frame(i)
                new = _rewrite_fragment(frame, p, fields) if fields else None
                if new is None:
                    self.counts["not_editable"] += 1
                elif new != frame:
                    replace[int(i)] = new
                    self.counts["edited"] += 1
                continue
            fields = ed.headers.get(int(p["rec_pos"]))
            key = (int(p["flow_id"]), int(p["dir"]))
            data = None
            frame = batch.frame(i)
            if late is not None and late[i]:
                if not fields:
                    fields = ed.late_fields(*key)
                if key in ed.payload_dirs and p["proto"] == 6 and p["payload_len"]:
                    data = _LateBytes(self._file(key[0]), key[1]).payload(frame, p)
                self.counts["late_edited"] += bool(fields or data)
            elif data_pkts[i] and key in ed.payload_dirs:
                data = self._file(key[0]).data(key[1], int(p["stream_off"]), int(p["payload_len"]))
            if not fields and data is None:
                continue                      # (a late packet with nothing to put in): as it came
            new = _rewrite(frame, p, fields, data)
            if new is None:
                self.counts["not_editable"] += 1
            elif new != frame:
                replace[int(i)] = new
                self.counts["edited"] += 1
        sent = self.sink.send_batch(batch, skip.tobytes() if skip is not None else None, replace)
        want = n - (int(skip.sum()) if skip is not None else 0)
        self.counts["forwarded"] += sent
        # what was sent is final: prune the verdicts it used, remember how far each stream went
        top = int(pos.max())
        ed.forwarded_upto = max(ed.forwarded_upto, top)
        if ed.headers:
            for k in [k for k in ed.headers if k <= top]:
                del ed.headers[k]
        if self.members:
            for k in [k for k in self.members if k <= top]:
                del self.members[k]
        if ed.dropped:
            ed.dropped.difference_update([k for k in ed.dropped if k <= top])
        if data_pkts.any():
            ends = (arr["stream_off"] + arr["payload_len"])[data_pkts]
            uk, inv = np.unique(keys[data_pkts], return_inverse=True)
            best = np.full(len(uk), -1, dtype=np.int64)
            np.maximum.at(best, inv, ends)
            fe = ed.forwarded_end
            for k, e in zip(uk.tolist(), best.tolist()):
                key = (k >> 1, k & 1)
                if e > fe.get(key, -1):
                    fe[key] = e
        return want - sent

    def close(self):
        for rf in self.files.values():
            rf.close()
        self.files.clear()
        if not self.shared:
            self.sink.close()

    def counters(self):
        if self.shared:
            return dict(self.counts, failed=self.sink.tx_failed if self.sink is not None else 0, out=self.spec)
        return dict(self.counts, failed=self.sink.failed, out=self.spec, bytes=self.sink.bytes_sent)
