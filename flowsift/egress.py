"""Egress to a pcap file (`flowsift chain ... -w OUT.pcap`): the source's frames, in order, with
the chain's verdicts and verified edits applied.

Frames are found again by their position in the source (records keep it); frames no module
touched are written byte for byte; dropped ones are left out, with every fragment of a dropped
datagram. An edit changes only what it names: header fields, and the stream bytes a payload
edit replaced, laid on each copy of them on the wire (a retransmission, an overlapping segment,
a packet after the connection ended). Checksums are updated for those bytes alone (RFC 1624),
so a packet whose checksum was wrong on the wire stays as wrong, and no length is recomputed (a
TSO capture's IP total length 0, a snaplen-cut packet: edited all the same).
"""
import ipaddress
import os
import struct
import time

from flowsift.errors import CaptureFormatError, UsageError, say
from flowsift.io import Decoder, PcapWriter, decoded_batches, open_capture
from flowsift.io._decode import is_ipv6_extension
from flowsift.modules.edits import checksum_words
from flowsift.streams import RecordFile
from flowsift.streams.format import RF_LATE

PF_FRAGMENT = 2
DROPPED = object()          # (a datagram's verdict, where its edits would be)
GONE_CONNECTIONS = 65536    # connections dropped whole the forwarder remembers, for their late packets
LATE_DATAGRAMS = 4096       # datagrams the forwarder remembers, for fragments sent again after them
# seconds between looks for an interface of the output's name once the one bound was deleted: a
# name lookup is a system call, not for every batch of a busy link
REBIND_EVERY = 0.5


def _routed(b, l3, l4, v4):
    """Whether the packet in `b` is source-routed with hops left (an IPv4 LSRR/SSRR option, an
    IPv6 Routing header with segments left): its destination field is the next hop, and the
    transport checksum covers the final one (RFC 9293 3.1, RFC 8200 8.1)."""
    if v4:
        at, end = l3 + 20, l3 + (b[l3] & 15) * 4
        while at < end and b[at] != 0:                  # (0: end of options)
            if b[at] == 1:                              # no-op
                at += 1
                continue
            if at + 1 >= end or b[at + 1] < 2:
                return False                            # (malformed: as it was)
            if b[at] in (131, 137) and at + 2 < end and b[at + 2] <= b[at + 1]:
                return True                             # (the pointer is inside the route)
            at += b[at + 1]
        return False
    nh, at = b[l3 + 6], l3 + 40
    while at + 8 <= l4 and is_ipv6_extension(nh):
        if nh == 43 and b[at + 3]:
            return True
        nh, at = b[at], at + (8 if nh == 44 else (b[at + 1] + 2) * 4 if nh == 51 else (b[at + 1] + 1) * 8)
    return False


def _put_field(b, l3, l4, v4, key, value):
    """Write header field `key` into frame bytes `b`; returns (old bytes, new bytes) where the
    transport checksum covers them (addresses, ports), else None."""
    if key in ("ip_src", "ip_dst"):
        raw = ipaddress.ip_address(value).packed
        at = (l3 + 12 if key == "ip_src" else l3 + 16) if v4 else (l3 + 8 if key == "ip_src" else l3 + 24)
        if key == "ip_dst" and _routed(b, l3, l4, v4):
            b[at:at + len(raw)] = raw
            return None
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


def _incremental(csum, old, new):
    """A ones' complement checksum after bytes `old` of what it covers became `new` (RFC 1624)."""
    s = (~csum) & 0xFFFF
    for i in range(0, len(old), 2):
        s += ((~((old[i] << 8) | old[i + 1])) & 0xFFFF) + ((new[i] << 8) | new[i + 1])
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _checksums(b, l3, l4, v4, proto, ip_old, words, at=None):
    """Update the IPv4 header checksum for the header bytes that changed (`ip_old`: the header
    before, or None) and the transport checksum for `words` ((old, new) pairs), each from what
    it was: a checksum wrong on the wire stays as wrong."""
    if v4 and ip_old is not None:
        csum = struct.unpack_from("!H", b, l3 + 10)[0]
        b[l3 + 10:l3 + 12] = struct.pack("!H", _incremental(csum, ip_old, bytes(b[l3:l3 + len(ip_old)])))
    if words and proto in (6, 17):
        if at is None:
            at = l4 + (16 if proto == 6 else 6)
        if at + 2 > len(b):
            return                            # (cut by the snaplen: no checksum to keep right)
        old = struct.unpack_from("!H", b, at)[0]
        if proto == 17 and old == 0:
            return                            # no UDP checksum (IPv4; IPv6 tunnels, RFC 6935)
        c = _incremental(old, b"".join(o for o, _ in words), b"".join(n for _, n in words))
        b[at:at + 2] = struct.pack("!H", c if c or proto == 6 else 0xFFFF)


def _put_fields(b, l3, l4, v4, fields, first=True):
    """Header `fields` into frame bytes `b`: the (old, new) bytes the transport checksum covers,
    or None when a field lies past the captured bytes. Not `first` (a fragment after the first):
    the ports and flags are not in it."""
    words = []
    for key, value in (fields or {}).items():
        if key.endswith(("sport", "dport")) or key == "tcp_flags":
            if not first:
                continue
            if l4 + (14 if key == "tcp_flags" else 4) > len(b):
                return None
        change = _put_field(b, l3, l4, v4, key, value)
        if change is not None:
            words.append(change)
    return words


def _rewrite(frame, p, fields, changes=None, so=None):
    """A copy of `frame` (decoded as `p`) with header `fields` and, its payload being stream
    bytes from offset `so` on, the payload edits of `changes` (a Changes) laid on it; None if it
    cannot be edited (a fragment, or a field the captured bytes lack)."""
    if p["flags"] & PF_FRAGMENT:
        return None
    b = bytearray(frame)
    l3, l4, v4, proto = int(p["l3_off"]), int(p["l4_off"]), p["ipver"] == 4, int(p["proto"])
    ip_old = bytes(b[l3:l3 + (b[l3] & 15) * 4]) if v4 and fields else None
    words = _put_fields(b, l3, l4, v4, fields)
    if words is None:
        return None
    if changes is not None and so is not None:
        at = int(p["payload_off"])
        n = min(int(p["payload_len"]), len(b) - at)          # (what the snaplen left of it)
        if n > 0:
            w = changes.lay(b, at, n, so, at - l4)
            if w is not None:
                words.append(w)
    _checksums(b, l3, l4, v4, proto, ip_old, words)
    return bytes(b)


class _DatagramBytes:
    """The payload edits of a datagram that came in fragments, laid on each of its fragments,
    and what they change of the transport checksum, which one fragment holds: worked out from
    the edits' old and new bytes, so no other fragment is needed to write it."""

    def __init__(self, changes, offset, length, header):
        # `header`: the transport header's length (the datagram's IP payload less the stream's)
        self.changes, self.offset, self.length, self.header = changes, offset, length, header

    def put(self, b, l4, frag_off, frag_len):
        """Lay the edits on fragment bytes `b` (its IP payload at l4: bytes frag_off.. of the
        datagram's); returns the (old, new) checksum words of all of the datagram's edits."""
        H = self.header
        lo, hi = max(0, frag_off - H), min(self.length, frag_off + frag_len - H)
        if lo < hi:
            self.changes.lay(b, l4 + H + lo - frag_off, hi - lo, self.offset + lo, 0)
        words = []
        for off, old, new in self.changes.over(self.offset, self.offset + self.length):
            # clipped to the datagram, each from the bytes before it (in the order accepted)
            a, z = max(off, self.offset), min(off + len(new), self.offset + self.length)
            words.append(checksum_words(old[a - off:z - off], new[a - off:z - off], H + a - self.offset))
        return words


# why a packet with edits to carry leaves as it came (egress `not_editable_reasons`)
CUT = "cut by the snaplen before the bytes to edit"
NO_LENGTH = "a fragment with no IP length to go by"
V6_EXTENSIONS = "a fragmented datagram with IPv6 extension headers before its transport header"
SENT_ALREADY = "a fragmented datagram partly sent in an earlier batch"
A_FRAGMENT = "a fragment after its connection ended"

# where a transport header field is (bytes from its start): ports, TCP flags, checksum
_AT = {"tcp_sport": 0, "udp_sport": 0, "tcp_dport": 2, "udp_dport": 2, "tcp_flags": 13}
_CHECKSUM_AT = {6: 16, 17: 6}
HEAD = 20                   # transport header bytes a fragment's edits may need (a TCP header's fixed part)


def head_piece(frame, p):
    """(offset in the datagram, bytes) of what fragment `frame` (decoded as `p`) holds of its
    datagram's first HEAD bytes, or None."""
    off, l4 = int(p["frag_off"]), int(p["l4_off"])
    if off >= HEAD:
        return None
    return off, bytes(frame[l4:l4 + HEAD - off])


def datagram_head(pieces):
    """The first HEAD bytes of a datagram from its fragments' head_piece()s (a byte no piece
    holds: None)."""
    head = [None] * HEAD
    for off, piece in pieces:
        for k, c in enumerate(piece):
            head[off + k] = c
    return head


def _rewrite_fragment(frame, p, fields, payload=None, head=None):
    """A copy of one fragment of an edited datagram with its header edits: addresses and TTL in
    every fragment, ports and TCP flags in the fragment that holds them, the transport checksum
    in the one that holds it, updated for every change of the datagram (addresses, ports, flags,
    payload edits) from their old and new bytes; and with the datagram's payload edits that
    fall in it (`payload`, a _DatagramBytes). `head`: the datagram's first HEAD bytes
    (datagram_head), for the old values of fields another fragment holds (tiny fragments);
    without it, this fragment's own. A reason (str) for what a fragment cannot take."""
    b = bytearray(frame)
    l3, l4, v4 = int(p["l3_off"]), int(p["l4_off"]), p["ipver"] == 4
    proto, frag_off = int(p["proto"]), int(p["frag_off"])
    if not v4 and is_ipv6_extension(proto):
        return V6_EXTENSIONS           # (its transport header is somewhere after them)
    if v4:
        frag_len = struct.unpack_from("!H", b, l3 + 2)[0] - (l4 - l3)
    else:
        frag_len = struct.unpack_from("!H", b, l3 + 4)[0] + 40 - (l4 - l3)
    if frag_len <= 0:
        return NO_LENGTH
    end = min(frag_off + frag_len, frag_off + len(b) - l4)       # (what the snaplen left of it)

    def here(x, n):
        return frag_off <= x and x + n <= frag_off + frag_len

    ip_old = bytes(b[l3:l3 + (b[l3] & 15) * 4]) if v4 and fields else None
    words, unknown = [], False          # (old, new) bytes the transport checksum covers
    if payload is not None:
        if frag_off + frag_len > end:
            return CUT
        words.extend(payload.put(b, l4, frag_off, frag_len))
    for key, value in (fields or {}).items():
        if key in _AT:
            x = _AT[key]
            new = struct.pack("!H", value) if key != "tcp_flags" else bytes([value])
            if here(x, len(new)):
                if x + len(new) > end:
                    return CUT
                at = l4 + x - frag_off
                old = bytes(b[at:at + len(new)])
                b[at:at + len(new)] = new
            elif head is not None and None not in head[x:x + len(new)]:
                old = bytes(head[x:x + len(new)])
            else:
                unknown = True
                continue
            words.append(checksum_words(old, new, x))
        else:
            change = _put_field(b, l3, l4, v4, key, value)
            if change is not None:
                words.append(change)
    ck = _CHECKSUM_AT.get(proto)
    if words and ck is not None and here(ck, 2):
        if ck + 2 > end:
            return CUT
        if unknown:
            return CUT                  # (a field's old value is in no fragment captured whole)
        _checksums(b, l3, l4 + ck - frag_off, v4, proto, None, words, at=l4 + ck - frag_off)
    if ip_old is not None:
        _checksums(b, l3, l4, v4, proto, ip_old, ())
    return bytes(b)


def _fragment_fields(editor, members):
    """frame position of each fragment of an edited datagram -> the datagram's header edits.
    (-w; inline: Forwarder._datagram_edits.)"""
    out = {}
    for pos, fields in editor.headers.items():
        for m in members.get(pos, ((), False))[0]:
            out[m] = fields
    return out


def _heads(source, datagram_of, wanted):
    """{datagram position: its first HEAD bytes (datagram_head)} for the datagrams in `wanted`
    whose first fragment does not hold them (tiny fragments): read from their fragments in a
    first pass, as the fragment that holds a field may come after the one that holds the
    checksum."""
    import numpy as np
    want = np.fromiter((m for m, d in datagram_of.items() if d in wanted), dtype=np.uint64)
    pieces = {}
    for batch in _up_to_defect(decoded_batches(open_capture(source), Decoder())):
        arr = batch.array
        for i in np.flatnonzero(np.isin(arr["rec_pos"], want) & ((arr["flags"] & PF_FRAGMENT) != 0)).tolist():
            piece = head_piece(batch.frame(i), arr[i])
            if piece is not None:
                pieces.setdefault(datagram_of[int(arr["rec_pos"][i])], []).append(piece)
    return {d: datagram_head(ps) for d, ps in pieces.items()}


def _dropped_frames(editor, members):
    """The frame positions a drop verdict leaves out: a rebuilt datagram's are its fragments'."""
    out = set(editor.dropped)
    for pos in editor.dropped:
        frags = members.get(pos)
        if frags is not None:
            out.update(frags[0])
    return out


def _all_dropped(conn, gone, file_of, dropped):
    """Was every packet of connection `conn` dropped? (`gone` caches the answers.) Its packets
    after its end are then dropped too: a connection dropped whole leaves nothing behind."""
    answer = gone.get(conn)
    if answer is None:
        import numpy as np
        pos = file_of(conn).record_array()["frame_pos"]
        answer = gone[conn] = len(pos) > 0 and bool(np.isin(pos, np.fromiter(dropped, np.uint64, len(dropped))).all())
    return answer


class _LateStream:
    """Where the packets of a direction that came after its connection ended fall in its stream:
    such a packet reaches no module, but a retransmission among them repeats stream bytes, which
    must leave with the edits (and the drops) their first copy had."""

    def __init__(self, rf, d):
        self.origin = rf.header[f"origin{d}"]
        self.anchor = None                   # (seq, seq_offset) of the direction's last non-SYN record
        for rec in rf.records():
            if rec.dir == d and rec.proto == 6 and not rec.tcp_flags & 2:
                self.anchor = (rec.seq, rec.seq_offset)

    def offset(self, p):
        """The stream offset of the packet's payload, or None when it has no place (a SYN, no
        anchor)."""
        if self.anchor is None or p["tcp_flags"] & 2:
            return None
        seq0, off0 = self.anchor
        delta = (int(p["seq"]) - seq0) & 0xFFFFFFFF
        return off0 + (delta - (1 << 32) if delta >= 1 << 31 else delta) - self.origin


def egress_linktype(source, cap=None, batch=None):
    """The one link type of `source`'s packets so far (`batch`, read from `cap`; the first batch
    of the source when both are None): -w writes a pcap, which has one. Interfaces a pcapng
    declares and no packet uses do not count; with no packet yet, the declared ones do."""
    if cap is None:
        cap = open_capture(source)
        batch = next(iter(cap.batches()), None)
    declared = cap.interfaces()
    linktypes = []
    if batch is not None and len(batch):
        arr = batch.array
        import numpy as np
        linktypes = np.unique(arr["linktype"][arr["iface"] < len(declared)]).tolist()
    if not linktypes:
        linktypes = sorted({i["linktype"] for i in declared})
    if len(linktypes) > 1:
        raise UsageError(f"{source}: -w writes a pcap, with one link type; this capture's packets have "
                         f"{len(linktypes)} ({', '.join(map(str, linktypes))})")
    return linktypes[0] if linktypes else None


class EgressFile:
    """The -w output, opened before anything is read: a path that cannot be written is one line
    at once, with the reason its open gave, not an error after the whole run. A regular file
    (or a new one) is written under a temporary name beside it and put in its place once whole
    (`commit`): a run that fails leaves none (`discard`). A device or a pipe is written as it
    is (a FIFO's open waits for its reader)."""

    def __init__(self, path, option="-w"):
        self.path = str(path)
        self.tmp = None
        what = self.path
        there = os.path.exists(self.path)
        try:
            if there and not os.path.isfile(self.path):
                self.file = open(self.path, "wb")               # (/dev/null, a pipe)
                return
            if there:
                # the file it replaces: one that cannot be written is not replaced either
                os.close(os.open(self.path, os.O_WRONLY))
            self.tmp = os.path.join(os.path.dirname(self.path) or ".", f".{os.path.basename(self.path)}.partial")
            if there:
                what = f"{self.tmp} (written first, then put in its place)"
            self.file = open(self.tmp, "wb")
        except OSError as e:
            self.tmp = None
            where = f"{self.path}: cannot write" if what == self.path else f"{self.path}: cannot make {what}"
            raise UsageError(f"{option} {where}: {e.strerror}") from None

    def commit(self):
        """Close the file and put it in place."""
        self.file.close()
        if self.tmp is not None:
            os.replace(self.tmp, self.path)
            self.tmp = None

    def discard(self):
        """Close the file and remove what was made (nothing of a device or a pipe)."""
        try:
            self.file.close()
        except OSError:
            pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


def write_egress(source, out, editor, store, late=None, members=None):
    """Write the source's frames to `out` (a path, or an EgressFile opened before the run) with
    the chain's verdicts and edits; `late`: frame position -> (conn, dir) of the packets that
    came after their connection ended; `members`: frame position of a rebuilt datagram -> its
    fragments' positions. A file is written under a temporary name and put in place once
    whole: a run that fails leaves none."""
    egress = out if isinstance(out, EgressFile) else EgressFile(out)
    try:
        counts = _write_egress(source, egress.file, editor, store, late, members, shown=egress.path)
        egress.commit()
    except BaseException:
        egress.discard()
        raise
    return counts


def _up_to_defect(batches):
    """The batches up to where reading stops at a defect (a capture cut short): the run's
    summary says where (its `error`), and the output holds every packet read before it, as
    `streams` keeps the bytes it read."""
    try:
        yield from batches
    except CaptureFormatError:
        return


def _write_egress(source, out, editor, store, late, members, shown=None):
    cap = open_capture(source)
    batches = _up_to_defect(decoded_batches(cap, Decoder()))
    first = next(batches, None)
    linktype = egress_linktype(source, cap, first)
    members = members or {}
    changes = editor.changes
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
                payload_of[rec.frame_pos] = (conn, d, rec.stream_offset)
                if rec.frame_pos in members:
                    # a datagram rebuilt from fragments (its IP header, made by the defragmenter,
                    # has no options): its edits go into them
                    header = rec.wirelen - (20 if rec.ipver == 4 else 40) - rec.payload_len
                    in_fragments[rec.frame_pos] = _DatagramBytes(changes[(conn, d)], rec.stream_offset,
                                                                 rec.payload_len, header)
    counts = {"packets": 0, "edited": 0, "dropped": 0, "not_editable": 0, "late_edited": 0, "late_dropped": 0}
    why = {}                                    # not editable: reason -> packets
    late = late or {}
    dropped = _dropped_frames(editor, members)
    fragment_fields = _fragment_fields(editor, members)
    for dpos in in_fragments:
        for m in members[dpos][0]:
            fragment_fields.setdefault(m, {})           # (fragments of a datagram with stream edits only)
    datagram_of = {m: dpos for dpos, (frags, _) in members.items() for m in frags}
    # datagrams whose first fragment lacks part of the transport header (tiny fragments)
    spread = {d for d in set(editor.headers) | set(in_fragments) if d in members and not members[d][1]}
    heads = _heads(source, datagram_of, spread) if spread else {}
    late_streams = {}
    gone = {}                                   # conn -> whether every packet of it was dropped
    import itertools
    from flowsift.io.pcapwriter import MAX_SNAPLEN
    # the source's time resolution and snaplen: a capture no module changed comes out as it came
    ifs = cap.interfaces()
    nanosecond = not ifs or any(i["tsresol"] != "1e-6" for i in ifs)
    snaplen = max((i["snaplen"] for i in ifs), default=0)
    with PcapWriter(out, linktype=1 if linktype is None else linktype, nanosecond=nanosecond,
                    snaplen=snaplen if 0 < snaplen <= MAX_SNAPLEN else MAX_SNAPLEN, shown=shown) as w:
        for batch in itertools.chain([first] if first is not None else [], batches):
            arr = batch.array
            if linktype is not None and len(batch):
                other = (arr["linktype"] != linktype) & (arr["iface"] < len(cap.interfaces()))
                if other.any():                         # (packets of another interface's link type)
                    raise UsageError(f"{source}: -w writes a pcap, with one link type; this capture's packets "
                                     f"have 2 ({', '.join(map(str, sorted({linktype, int(arr['linktype'][other][0])})))})")
            for i in range(len(batch)):
                pos = int(arr["rec_pos"][i])
                if pos in dropped:
                    counts["dropped"] += 1
                    continue
                frame = batch.frame(i)
                new = frame
                if pos in fragment_fields and arr["flags"][i] & PF_FRAGMENT:
                    dpos = datagram_of.get(pos)
                    new = _rewrite_fragment(frame, arr[i], fragment_fields[pos], in_fragments.get(dpos),
                                            heads.get(dpos))
                elif pos in late:
                    key = late[pos]
                    if dropped and _all_dropped(key[0], gone, file_of, dropped):
                        counts["late_dropped"] += 1   # of a connection dropped whole
                        continue
                    so = None
                    if arr["proto"][i] == 6 and arr["payload_len"][i] and \
                            (key in changes or key in editor.dropped_ranges):
                        ls = late_streams.get(key)
                        if ls is None:
                            ls = late_streams[key] = _LateStream(file_of(key[0]), key[1])
                        so = ls.offset(arr[i])
                    if so is not None and editor.dropped_at(key, so, so + int(arr["payload_len"][i])):
                        counts["late_dropped"] += 1   # a copy of bytes whose packet was dropped
                        continue
                    fields = editor.late_fields(*key)
                    if fields or (so is not None and key in changes):
                        new = _rewrite(frame, arr[i], fields, changes.get(key), so)
                        counts["late_edited"] += isinstance(new, bytes) and new != frame
                else:
                    fields, where = editor.headers.get(pos), payload_of.get(pos)
                    if fields or where:
                        new = _rewrite(frame, arr[i], fields, changes[where[:2]] if where else None,
                                       where[2] if where else None)
                if new is None or isinstance(new, str):
                    counts["not_editable"] += 1
                    reason = new or (A_FRAGMENT if arr["flags"][i] & PF_FRAGMENT else CUT)
                    why[reason] = why.get(reason, 0) + 1
                elif new != frame:
                    frame = new
                    counts["edited"] += 1
                w.write(int(arr["ts_ns"][i]), frame, int(arr["wirelen"][i]))
                counts["packets"] += 1
    for rf in files.values():
        rf.close()
    counts["not_editable_reasons"] = why
    return counts


class Forwarder:
    """Inline mode (`flowsift chain MODULES SOURCE --out afpacket:IFACE|dpdk:PORT`): each batch's frames
    leave by an interface as soon as the chain has seen them -- the writing stages run in the
    gateway's process, synchronously, so their verdicts and edits are in; read-only stages
    cannot change a packet, so nothing waits for them. Dropped frames are not sent, edited ones
    are rewritten with checksums recomputed, all others go out byte for byte, non-IP included.
    Once a frame is sent it cannot be changed: a later edit of it is rejected and counted."""

    def __init__(self, spec, editor, store):
        from flowsift.io.live import mbufs_of, parse_spec
        scheme, name, opts = parse_spec(spec) if ":" in spec else (None, None, None)
        if scheme not in ("afpacket", "dpdk") or (opts and scheme != "dpdk"):
            raise UsageError(f"--out {spec}: expected afpacket:IFACE or dpdk:PORT")
        for key in opts or ():
            if key != "mbufs":
                # (count= and duration= end a source: the run's -c/--duration end this one)
                raise UsageError(f"--out {spec}: {key}= is for sources; an output takes mbufs= alone")
        if scheme == "dpdk" and name.startswith("net_pcap") and "," in name and not (
                {a.partition("=")[0].strip() for a in name.split(",")[1:]} & {"tx_pcap", "tx_iface", "iface"}):
            # (DPDK takes such a device: what it is given to send goes nowhere, counted sent)
            raise UsageError(f"--out {spec}: {name.split(',')[0]} sends only with tx_pcap=FILE, tx_iface=IFACE or "
                             f"iface=IFACE; without one, every frame would go nowhere")
        self.shared = scheme == "dpdk"          # a DPDK port may be the source too: never closed here
        self.sink = None
        if scheme == "dpdk":
            # opened once the source is (see open): it may be this very port, with its device
            # arguments, or probe the port that a port number names
            mbufs = mbufs_of(f"--out {spec}", opts)
            self._open = lambda: self._dpdk(name, mbufs, "mbufs" in opts)
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
        editor.forwarded_end = {}             # (conn, dir) -> sequence-space offset sent so far
        self.udp_end = {}                     # (conn, dir) -> a UDP direction's stream offset so far
        self.files = {}
        self.members = None                   # the defragmenter's datagram -> fragments map
        # datagrams sent with edits or dropped -> their edits (DROPPED): a fragment sent again
        # after them (the defragmenter adds it to their members) leaves as they did
        self.sent_datagrams = {}
        self._down_said, self._down_seen, self._sent_seen = False, 0, 0
        self._gone_said, self._gone_seen, self._rebind_at = False, 0, 0.0
        self.gone, self.top_conn = {}, -1     # connections dropped whole so far (see _whole_drops)
        self.counts = {"forwarded": 0, "edited": 0, "dropped": 0, "not_editable": 0, "failed": 0,
                       "late_edited": 0, "late_dropped": 0}
        self.why = {}                         # not editable: reason -> frames

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

    def _dpdk(self, name, mbufs, given):
        from flowsift.io.live import dpdk_port
        port = dpdk_port(name, mbufs)
        if given and port.mbufs != mbufs:
            # the source's port, open already with its own pool (one pool per port)
            raise UsageError(f"--out {self.spec}: dpdk:{port.name} is the source's port, with its {port.mbufs} "
                             f"packet buffers: give mbufs= to the source")
        return port

    def open(self):
        """The DPDK port opened, after the source and before its first packet: a bad one is
        said before anything is read (at the first batch, that batch was lost)."""
        if self.sink is None:
            self.sink = self._open()

    def _whole_drops(self, arr, skip):
        """Note the connections every packet of which was dropped so far, and drop their
        packets that come after their end (counted late_dropped): a connection dropped whole
        leaves nothing behind. Returns the batch's skip mask (None: nothing to skip)."""
        import numpy as np
        flows = arr["flow_id"]
        late = (arr["rflags"] & RF_LATE) != 0
        own = (flows != 0xFFFFFFFF) & ~late
        gone = self.gone
        if own.any():
            ids = flows[own]
            out = skip[own] != 0 if skip is not None else np.zeros(len(ids), dtype=bool)
            sent = np.unique(ids[~out])
            if gone:
                for c in sent[np.isin(sent, np.fromiter(gone, np.uint32, len(gone)))].tolist():
                    del gone[c]
            if out.any():
                # (connections are numbered as they come: a higher one is new in this batch)
                for c in np.setdiff1d(np.unique(ids[out]), sent).tolist():
                    if c > self.top_conn:
                        gone[c] = True
                        if len(gone) > GONE_CONNECTIONS:
                            del gone[next(iter(gone))]
            self.top_conn = max(self.top_conn, int(ids.max()))
        if gone and late.any():
            hit = late & np.isin(flows, np.fromiter(gone, np.uint32, len(gone)))
            if hit.any():
                if skip is None:
                    skip = np.zeros(len(arr), dtype=np.uint8)
                skip[hit] = 1
                self.counts["late_dropped"] += int(hit.sum())
        return skip

    def _late_fragments(self, pos):
        """{index in the batch: the edits (or DROPPED) of the datagram sent already} for the
        fragments of this batch that copy one of its fragments."""
        out = {}
        index = None
        for dpos, what in self.sent_datagrams.items():
            frags = self.members.get(dpos, ((),))[0]
            if frags:
                if index is None:
                    index = {p: i for i, p in enumerate(pos.tolist())}
                out.update((index[m], what) for m in frags if m in index)
                frags.clear()
        return out

    def _datagram_edits(self, ed, batch, arr, pos, rebuilt, stream_at):
        """{fragment position: (header fields, _DatagramBytes or None), or None where the
        datagram cannot take its edits} for the datagrams rebuilt in this batch that have
        edits. A datagram takes them only if all its fragments are in this batch (those before
        were sent already) and its first holds the transport header; else it leaves as it came."""
        out = {}
        if not rebuilt or not self.members:
            return out
        here = set(pos.tolist())
        index = None
        for dpos, (length, header) in rebuilt.items():
            member = self.members.get(dpos)
            if member is None:
                continue
            fields = ed.headers.get(dpos) or {}
            payload = None
            if ed.changes:
                if index is None:
                    index = {p: i for i, p in enumerate(pos.tolist())}
                i = index.get(dpos)
                key = (int(arr["flow_id"][i]), int(arr["dir"][i])) if i is not None else None
                changes = ed.changes.get(key)
                if changes is not None and length:
                    so = stream_at.get(i)
                    if so is None:           # (TCP: in sequence space, from the stream's origin)
                        so = int(arr["stream_off"][i]) - self._file(key[0]).header[f"origin{key[1]}"]
                    if changes.over(so, so + length):
                        payload = _DatagramBytes(changes, so, length, header)
            if not fields and payload is None:
                continue
            frags, whole = member
            ok = all(m in here for m in frags)
            head = None
            if ok and not whole:
                # tiny fragments: the old values of the fields another fragment holds
                if index is None:
                    index = {p: i for i, p in enumerate(pos.tolist())}
                head = datagram_head([hp for hp in (head_piece(batch.frame(index[m]), arr[index[m]]) for m in frags)
                                      if hp is not None])
            for m in frags:
                if m in here:
                    out[m] = (fields, payload, head) if ok else None
                elif not ok:
                    self._not_editable(SENT_ALREADY)      # (sent already, before the edits)
        return out

    def _not_editable(self, reason):
        self.counts["not_editable"] += 1
        self.why[reason] = self.why.get(reason, 0) + 1

    def forward(self, batch, rebuilt=None):
        """Send `batch` (the frames as captured) with the edits of what they carry; `rebuilt`:
        {position: (payload length, transport header length)} of the datagrams rebuilt from
        fragments in it (gateway._flows_onto)."""
        import numpy as np
        n = len(batch)
        if not n:
            return
        self.fresh = set()                    # record files read again for this batch
        self.open()
        ed = self.editor
        arr = batch.array
        pos = arr["rec_pos"]
        skip = None
        if ed.dropped:
            # (a dropped datagram's fragments in this batch with it: those before were sent)
            drop = _dropped_frames(ed, self.members or {})
            skip = np.isin(pos, np.fromiter(drop, dtype=np.uint64, count=len(drop))).astype(np.uint8)
            self.counts["dropped"] += int(skip.sum())
        skip = self._whole_drops(arr, skip)
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
        late_frags = {}
        if self.sent_datagrams and (arr["flags"] & PF_FRAGMENT).any():
            for i, what in self._late_fragments(pos).items():
                if what is DROPPED:
                    if skip is None:
                        skip = np.zeros(n, dtype=np.uint8)
                    skip[i] = 1
                    self.counts["dropped"] += 1
                    continue
                new = _rewrite_fragment(batch.frame(i), arr[i], *what)
                if isinstance(new, str):
                    self._not_editable(new)
                else:
                    late_frags[i] = new
        late = None
        if ed.flow_fields or ed.payload_dirs or ed.dropped_ranges:
            # (a late packet has no stream offset of its own: _LateStream places it)
            late = ((arr["rflags"] & RF_LATE) != 0) & (arr["flow_id"] != 0xFFFFFFFF)
            todo |= late
        if skip is not None:
            todo &= skip == 0
        # a UDP direction's stream is its datagrams end to end, on the wire (what the snaplen cut
        # of one is a gap, as the store counts it): each one's offset is what came before it
        # (the batch has none of its own)
        stream_at = {}
        udp = (arr["payload_wirelen"] > 0) & (arr["proto"] == 17) & (arr["flow_id"] != 0xFFFFFFFF) \
            & ((arr["rflags"] & RF_LATE) == 0)
        rebuilt = rebuilt or {}
        if rebuilt:
            # a datagram rebuilt from fragments: the one that completed it stands for it
            at_pos = {p: i for i, p in enumerate(pos.tolist())}
            wire = {at_pos[d]: length for d, (length, _) in rebuilt.items() if d in at_pos}
            stands = np.zeros(n, dtype=bool)
            stands[list(wire)] = True
            udp |= stands & (arr["proto"] == 17) & (arr["flow_id"] != 0xFFFFFFFF) & ((arr["rflags"] & RF_LATE) == 0)
        for i in np.flatnonzero(udp).tolist():
            key = (int(arr["flow_id"][i]), int(arr["dir"][i]))
            stream_at[i] = self.udp_end.get(key, 0)
            self.udp_end[key] = stream_at[i] + (wire[i] if rebuilt and i in wire else int(arr["payload_wirelen"][i]))
        frag = self._datagram_edits(ed, batch, arr, pos, rebuilt, stream_at)
        if frag:
            todo |= np.isin(pos, np.fromiter(frag, dtype=np.uint64, count=len(frag)))
            if skip is not None:
                todo &= skip == 0
        replace = {}
        for i in np.flatnonzero(todo):
            p = arr[i]
            if frag and int(p["rec_pos"]) in frag and p["flags"] & PF_FRAGMENT:
                edits = frag[int(p["rec_pos"])]
                frame = batch.frame(i)
                new = _rewrite_fragment(frame, p, *edits) if edits else SENT_ALREADY
                if isinstance(new, str):
                    self._not_editable(new)
                elif new != frame:
                    replace[int(i)] = new
                    self.counts["edited"] += 1
                continue
            fields = ed.headers.get(int(p["rec_pos"]))
            key = (int(p["flow_id"]), int(p["dir"]))
            changes, so = None, None
            if late is not None and late[i]:
                if p["proto"] == 6 and p["payload_len"] and (key in ed.changes or key in ed.dropped_ranges):
                    so = _LateStream(self._file(key[0]), key[1]).offset(p)
                    if so is not None and ed.dropped_at(key, so, so + int(p["payload_len"])):
                        # a copy of bytes whose packet was dropped
                        if skip is None:
                            skip = np.zeros(n, dtype=np.uint8)
                        skip[i] = 1
                        self.counts["late_dropped"] += 1
                        continue
                fields = ed.late_fields(*key)
                changes = ed.changes.get(key)
            elif data_pkts[i]:
                changes, so = ed.changes.get(key), stream_at.get(int(i))
                if so is None and changes is not None:
                    # a TCP segment's offset is in sequence space: its stream's origin is in
                    # the header (it moves down when a side seen midstream gets earlier bytes)
                    so = int(p["stream_off"]) - self._file(key[0]).header[f"origin{key[1]}"]
            if not fields and (changes is None or so is None):
                continue                      # (nothing to put in): as it came
            frame = batch.frame(i)
            new = _rewrite(frame, p, fields, changes, so)
            if new is None:
                self._not_editable(A_FRAGMENT if p["flags"] & PF_FRAGMENT else CUT)
            elif new != frame:
                replace[int(i)] = new
                self.counts["edited"] += 1
                if late is not None and late[i]:
                    self.counts["late_edited"] += 1
        for i, new in late_frags.items():
            if skip is None or not skip[i]:
                replace[i] = new
                self.counts["edited"] += 1
        if self._gone_said:
            self._rebind()                    # (one of that name may have come while the link was quiet)
        sent = self.sink.send_batch(batch, skip.tobytes() if skip is not None else None, replace)
        if not self.shared:
            self._say_down_or_up()
        want = n - (int(skip.sum()) if skip is not None else 0)
        self.counts["forwarded"] += sent
        # what was sent is final: prune the verdicts it used, remember how far each stream went
        top = int(pos.max())
        ed.forwarded_upto = max(ed.forwarded_upto, top)
        if self.members:
            for k in [k for k in self.members if k <= top and k not in self.sent_datagrams]:
                frags = self.members[k][0]
                if k in ed.dropped or (frags and all(frag.get(m) for m in frags)):
                    self.sent_datagrams[k] = DROPPED if k in ed.dropped else frag[frags[0]]
                    frags.clear()             # (what the defragmenter adds from now on is a copy)
                    if len(self.sent_datagrams) > LATE_DATAGRAMS:
                        oldest = next(iter(self.sent_datagrams))
                        del self.sent_datagrams[oldest]
                        self.members.pop(oldest, None)
                else:
                    del self.members[k]
        if ed.headers:
            for k in [k for k in ed.headers if k <= top]:
                del ed.headers[k]
        if ed.dropped:
            ed.dropped.difference_update([k for k in ed.dropped if k <= top])
        tcp = data_pkts & (arr["proto"] == 6)
        plen = arr["payload_len"]
        if rebuilt and wire:
            # (a datagram rebuilt from fragments went out with the fragment that completed it)
            plen = plen.copy()
            for i, length in wire.items():
                if arr["proto"][i] == 6 and arr["flow_id"][i] != 0xFFFFFFFF:
                    plen[i] = length
                    tcp[i] = length > 0
        fe = ed.forwarded_end
        if tcp.any():
            ends = (arr["stream_off"] + plen)[tcp]
            uk, inv = np.unique(keys[tcp], return_inverse=True)
            best = np.full(len(uk), -1, dtype=np.int64)
            np.maximum.at(best, inv, ends)
            for k, e in zip(uk.tolist(), best.tolist()):
                key = (k >> 1, k & 1)
                if e > fe.get(key, -1):
                    fe[key] = e
        for i in stream_at:
            key = (int(arr["flow_id"][i]), int(arr["dir"][i]))
            fe[key] = self.udp_end[key]         # (a UDP stream's origin is 0)
        return want - sent

    def _say_down_or_up(self):
        # said when it happens, once each way: a run on an interface that stays down would
        # otherwise only count its frames failed (an operator sees it at the end, or never)
        s = self.sink
        if s.failed_gone > self._gone_seen and not self._gone_said:
            # the socket stays bound to the index of the interface deleted: it sends nowhere
            # again unless bound to the one that has the name now
            say(f"--out {self.spec}: the interface was deleted; frames are counted failed until one of that "
                f"name comes")
            self._gone_said = True
            self._rebind()
        self._gone_seen = s.failed_gone
        if s.failed_down > self._down_seen and not self._down_said:
            say(f"--out {self.spec}: the interface is down; frames are counted failed until it comes up")
            self._down_said = True
        elif self._down_said and s.sent > self._sent_seen:
            say(f"--out {self.spec}: the interface is up again; sending")
            self._down_said = False
        self._down_seen, self._sent_seen = s.failed_down, s.sent

    def _rebind(self):
        now = time.monotonic()
        if now < self._rebind_at:
            return
        self._rebind_at = now + REBIND_EVERY
        index = self.sink.rebind()
        if index:
            say(f"--out {self.spec}: an interface of that name came (index {index}); sending to it")
            self._gone_said = self._down_said = False      # (a new interface: its state is said anew)

    def close(self):
        for rf in self.files.values():
            rf.close()
        self.files.clear()
        if not self.shared:
            self.sink.close()
            s = self.sink
            if s.failed and not s.sent and s.failed_down == s.failed:
                # a run that sent nothing, and not for the frames' sake: say it, not only count it
                say(f"--out {self.spec}: the interface is down; none of the {s.failed} frames was sent")

    def counters(self):
        counts = dict(self.counts, not_editable_reasons=dict(self.why))
        if self.shared:
            p = self.sink
            if p is None:
                return dict(counts, failed=0, out=self.spec)
            # (the port's own counts: the source's too when it is the same port)
            reasons = {"too_large": p.tx_too_large, "no_mbufs": p.tx_no_mbufs,
                       "other": p.tx_failed - p.tx_too_large - p.tx_no_mbufs}
            return dict(counts, failed=p.tx_failed, failed_reasons=reasons, out=self.spec)
        s = self.sink
        reasons = {"interface_down": s.failed_down, "interface_deleted": s.failed_gone,
                   "other": s.failed - s.failed_down - s.failed_gone}
        return dict(counts, failed=s.failed, failed_reasons=reasons, out=self.spec, bytes=s.bytes_sent)
