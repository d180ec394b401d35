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

PF_FRAGMENT = 2


def _csum(data, start=0):
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _rewrite(frame, p, fields, payload):
    """A copy of `frame` (decoded as `p`) with header `fields` and `payload` bytes applied and
    the IP and transport checksums recomputed; None if it cannot be edited (a fragment)."""
    if p["flags"] & PF_FRAGMENT:
        return None
    b = bytearray(frame)
    l3, l4, v4 = int(p["l3_off"]), int(p["l4_off"]), p["ipver"] == 4
    for key, value in (fields or {}).items():
        if key in ("ip_src", "ip_dst"):
            raw = ipaddress.ip_address(value).packed
            at = (l3 + 12 if key == "ip_src" else l3 + 16) if v4 else (l3 + 8 if key == "ip_src" else l3 + 24)
            b[at:at + len(raw)] = raw
        elif key == "ip_ttl":
            b[l3 + 8 if v4 else l3 + 7] = value
        elif key.endswith("sport"):
            b[l4:l4 + 2] = struct.pack("!H", value)
        elif key.endswith("dport"):
            b[l4 + 2:l4 + 4] = struct.pack("!H", value)
    if payload:
        off, n = int(p["payload_off"]), min(len(payload), int(p["payload_len"]))
        b[off:off + n] = payload[:n]
    if v4:
        ihl = (b[l3] & 15) * 4
        b[l3 + 10:l3 + 12] = b"\0\0"
        b[l3 + 10:l3 + 12] = struct.pack("!H", _csum(b[l3:l3 + ihl]))
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


def write_egress(source, out, editor, store):
    cap = open_capture(source)
    linktypes = {i["linktype"] for i in cap.interfaces()}
    if len(linktypes) != 1:
        raise UsageError(f"{source}: -w writes a pcap with one link type; this capture has {len(linktypes)}")
    payload_of, files = {}, {}
    for conn, d in editor.payload_dirs:
        rf = files.get(conn) or files.setdefault(conn, RecordFile(store.path(conn)))
        for rec in rf.records():
            if rec.dir == d and rec.payload_len and rec.proto == 6:
                payload_of[rec.frame_pos] = (conn, d, rec.stream_offset, rec.payload_len)
    counts = {"packets": 0, "edited": 0, "dropped": 0, "not_editable": 0}
    with PcapWriter(out, linktype=linktypes.pop(), nanosecond=True) as w:
        for batch in decoded_batches(cap, Decoder()):
            arr = batch.array
            for i in range(len(batch)):
                pos = int(arr["rec_pos"][i])
                if pos in editor.dropped:
                    counts["dropped"] += 1
                    continue
                frame = batch.frame(i)
                fields, where = editor.headers.get(pos), payload_of.get(pos)
                if fields or where:
                    data = files[where[0]].data(where[1], where[2], where[3]) if where else None
                    new = _rewrite(frame, arr[i], fields, data)
                    if new is None:
                        counts["not_editable"] += 1
                    else:
                        frame = new
                        counts["edited"] += 1
                w.write(int(arr["ts_ns"][i]), frame, int(arr["wirelen"][i]))
                counts["packets"] += 1
    for rf in files.values():
        rf.close()
    return counts
