"""`flowsift inspect`: record files and stores, described as plain data."""
import contextlib
import json
import os

from flowsift.streams import format as F
from flowsift.streams.reader import (TRUNCATED, RecordFile, StoreError, check_store, not_record_files,
                                     read_manifest, record_name, retired_note, store_files)

PROTOS = {6: "tcp", 17: "udp"}
# what the format gives a meaning to (docs/record-format.md): anything else is said, not dropped
KNOWN_FLAGS = F.HF_CLOSED | F.HF_KEEP | F.HF_NO_BYTES | F.HF_VLAN_KEY
KNOWN_RFLAGS = sum(F.RF_NAMES)


def _flags(rflags):
    return [name for bit, name in F.RF_NAMES.items() if rflags & bit] + (
        [f"{rflags & ~KNOWN_RFLAGS:#x}"] if rflags & ~KNOWN_RFLAGS else [])


def _tcp_flags(f):
    return "".join(c for bit, c in ((2, "S"), (16, "."), (8, "P"), (1, "F"), (4, "R"), (32, "U")) if f & bit) or "-"


def _header_problems(h):
    """What a header holds that the format gives no meaning to, in the fields a reader does not
    need to read the file (those it needs are refused when it is opened: RecordFile)."""
    out = []
    if h["ipver"] not in (4, 6):
        out.append(f"header field ipver is {h['ipver']}; 4 or 6 (its addresses are shown as IPv6)")
    if h["proto"] not in PROTOS:
        out.append(f"header field proto is {h['proto']}; 6 (TCP) or 17 (UDP)")
    if h["flags"] & ~KNOWN_FLAGS:
        out.append(f"header field flags has bits the format does not define: {h['flags'] & ~KNOWN_FLAGS:#x}")
    for name in ("vlan_outer", "vlan_inner"):
        if not h["flags"] & F.HF_VLAN_KEY and h[name]:
            out.append(f"header field {name} is {h[name]}; 0 without flag {F.HF_VLAN_KEY} (connections keyed by VLAN)")
        elif h[name] > 4095:
            out.append(f"header field {name} is {h[name]:,}; a VLAN id is 0 to 4095")
    for d in (0, 1):
        if h[f"close{d}"] not in F.CLOSE_NAMES:
            out.append(f"header field close{d} is {h[f'close{d}']}; 0 (open) to {max(F.CLOSE_NAMES)}")
        if h[f"reclaimed{d}"] > h[f"end{d}"]:
            out.append(f"header field reclaimed{d} is {h[f'reclaimed{d}']:,}, past end{d} ({h[f'end{d}']:,})")
    return out


def _gap_problems(rf):
    """Gap entries out of the order the format gives (by offset within a direction, none
    overlapping another), past their direction's end, or of a reason it does not define: one
    line per kind, naming the first."""
    h, found, reach = rf.header, {}, [None, None]
    for j, g in enumerate(g for g in rf.gaps() if g.reason != TRUNCATED):
        if reach[g.dir] is not None and g.offset < reach[g.dir]:
            found.setdefault("order", []).append(f"gap entry {j} (offset {g.offset:,}) overlaps or comes before "
                                                 f"the one before it (which reaches {reach[g.dir]:,})")
        reach[g.dir] = max(reach[g.dir] or 0, g.offset + g.length)
        if g.offset + g.length > h[f"end{g.dir}"]:
            found.setdefault("end", []).append(f"gap entry {j} ({g.offset:,}+{g.length:,}) reaches past its "
                                               f"direction's end ({h[f'end{g.dir}']:,})")
        if not isinstance(g.reason, str):
            found.setdefault("reason", []).append(f"gap entry {j} has reason {g.reason}; 1 to {max(F.GAP_REASONS)}")
    return [lines[0] + (f" (and {len(lines) - 1:,} more)" if len(lines) > 1 else "") for lines in found.values()]


def _record_problems(rf, upto):
    """Records [0, upto) of a direction other than 0 and 1, or with reassembly flags the format
    does not define: one line per kind, naming the first and counting the rest."""
    import numpy as np
    out = []
    arr = rf.record_array(0, upto, unpublished=upto > rf.header["records"])
    bad = np.flatnonzero(arr["dir"] > 1)
    if len(bad):
        out.append(f"record {bad[0]:,} has direction {arr['dir'][bad[0]]}; 0 or 1"
                   + (f" (and {len(bad) - 1:,} more)" if len(bad) > 1 else ""))
    unknown = arr["rflags"] & np.uint16(~KNOWN_RFLAGS & 0xFFFF)
    bad = np.flatnonzero(unknown)
    if len(bad):
        out.append(f"record {bad[0]:,} has reassembly flags the format does not define: "
                   f"{int(np.bitwise_or.reduce(unknown[bad])):#x}"
                   + (f" (in {len(bad):,} records)" if len(bad) > 1 else ""))
    return out


# the bytes the format says are zero (docs/record-format.md): (first, last) byte of each
HEADER_ZERO = ((58, 59), (214, 215), (236, 255))
RECORD_ZERO = ((100, 103), (112, 127))
GAP_ZERO = ((2, 7),)


def _nonzero(rf, off, count, size, spans):
    """(first index, how many) of the `size`-byte items [0, count) at file offset `off` with a
    byte not zero in `spans`, read 8192 at a time."""
    import numpy as np
    first, n = None, 0
    for i in range(0, count, 8192):
        k = min(8192, count - i)
        items = np.frombuffer(rf._region(off + i * size, k * size), dtype=np.uint8).reshape(k, size)
        bad = np.flatnonzero(np.logical_or.reduce([items[:, a:b + 1].any(axis=1) for a, b in spans]))
        if len(bad):
            first = i + int(bad[0]) if first is None else first
            n += len(bad)
    return first, n


def reserved_warnings(rf, upto):
    """Lines for bytes the format says are zero and are not, in the header, records [0, upto)
    and the published gap entries: a writer of a later layout, or damage. Said, not refused
    (a reader of this version reads the file as if they were zero)."""
    h, out = rf.header, []
    spans = lambda zero: ", ".join(f"{a}-{b}" for a, b in zero)
    if _nonzero(rf, 0, 1, F.HEADER_SIZE, HEADER_ZERO)[1]:
        out.append(f"header bytes {spans(HEADER_ZERO)} are not all zero (the format says they are)")
    for what, many, off, count, size, zero in (
            ("record", "records", h["records_off"], upto, F.RECORD_SIZE, RECORD_ZERO),
            ("gap entry", "gap entries", h["gaps_off"], h["gaps"], F.GAP_SIZE, GAP_ZERO)):
        first, n = _nonzero(rf, off, count, size, zero)
        if n:
            out.append(f"{what} {first:,} has bytes {spans(zero)} not all zero (the format says they are)"
                       + (f" (and {n - 1:,} more {many})" if n > 1 else ""))
    return out


def _written(rf):
    """(records written and published, complete records after them, problems): a record whose
    id is not `first_record_id` + its index, or whose `caplen` is 0, is where those written end
    (docs/record-format.md), whatever the header counts."""
    h, problems = rf.header, []
    written = rf.first_unwritten(0, h["records"])
    unpublished = 0
    if written < h["records"]:
        (first,) = rf.record_array(written, written + 1)
        why = (f"does not have the id first_record_id + {written:,}"
               if int(first["record_id"]) != (h["first_record_id"] + written) % 2**64 else "has caplen 0")
        problems.append(f"records {written:,} to {h['records'] - 1:,}: not written (the header counts "
                        f"{h['records']:,}; record {written:,} {why})")
    elif not rf.closed_by_gateway:
        unpublished = rf.unpublished
    return written, unpublished, problems


def name_problem(rf, name):
    """What is wrong with a record file named `name` whose header names another connection,
    or None: a copy or a rename, whose connection another file may hold too."""
    conn = record_name(name)
    if conn is not None and conn != rf.header["conn"]:
        return f"named for connection {conn}, its header says connection {rf.header['conn']}"
    return None


def _file_problems(rf, name):
    """(records written and published, unpublished complete records, problems) of a record
    file named `name`."""
    written, unpublished, problems = _written(rf)
    problems += _header_problems(rf.header) + _gap_problems(rf) + _record_problems(rf, written + unpublished)
    named = name_problem(rf, name)
    if named:
        problems.append(named)
    return written, unpublished, problems


def _gap_list(rf, d):
    """A direction's gaps as [offset, length, reason], by offset: its gap entries, what a cut
    file lacks ("truncated") and what was given back ("reclaimed"): every range of [0, end)
    that is not there to read."""
    return [[g.offset, g.length, g.reason]
            for g in sorted(rf.gaps(d) + rf.given_back(d), key=lambda g: g.offset)]


def _gap_entries(rf, d):
    """A direction's gap entries as the file holds them (no "truncated" or "reclaimed" range),
    in the file's order, each with its index among the file's entries."""
    return [{"entry": j, "offset": g.offset, "length": g.length, "reason": g.reason, "record_index": g.record_index}
            for j, g in enumerate(g for g in rf.gaps() if g.reason != TRUNCATED) if g.dir == d]


def _record_row(r, published):
    return {"index": r.index, "id": r.record_id, "ts_ns": r.ts_ns, "dir": r.dir, "flags": _tcp_flags(r.tcp_flags),
            "tcp_flags": r.tcp_flags, "seq": r.seq, "ack": r.ack, "window": r.window, "offset": r.stream_offset,
            "seq_offset": r.seq_offset, "len": r.payload_len, "payload_wirelen": r.payload_wirelen,
            "caplen": r.caplen, "wirelen": r.wirelen, "frame_pos": r.frame_pos, "rflags": _flags(r.rflags),
            "modules": r.modules, "published": published}


@contextlib.contextmanager
def file_description(path, n_records=20):
    """describe_file() with `record_list` an iterator, read while the block runs: a listing
    of every record (-n -1) is written as it is read, never held whole."""
    with RecordFile(path) as rf:
        h = rf.header
        written, unpublished, problems = _file_problems(rf, os.path.basename(str(path)))
        info = {
            "file": str(path), "conn": h["conn"], "version": h["version"], "flags": h["flags"],
            "ipver": h["ipver"], "proto": PROTOS.get(h["proto"], h["proto"]),
            "client": F.endpoint(h["client_addr"], h["client_port"], h["ipver"]),
            "server": F.endpoint(h["server_addr"], h["server_port"], h["ipver"]),
            **F.vlan_field(F.header_vlan(h)),
            "first_record_id": h["first_record_id"], "records": h["records"], "gaps": h["gaps"],
            "closed": rf.closed_by_gateway, "keep": bool(h["flags"] & F.HF_KEEP), "bytes_stored": rf.has_bytes,
            "first_ts": h["first_ts"], "last_ts": h["last_ts"], "modules_mask": h["modules_mask"],
            "oldest_unacked_done": h["oldest_unacked_done"],
            "streams": [{"dir": "c2s" if d == 0 else "s2c", "origin": h[f"origin{d}"], "end": h[f"end{d}"],
                         "delivered": rf.delivered(d), "readable": rf.readable(d), "acked": h[f"acked{d}"],
                         "reclaimed": h[f"reclaimed{d}"], "settled": bool(h[f"settled{d}"]),
                         "midstream": bool(h[f"midstream{d}"]), "close": F.CLOSE_NAMES.get(h[f"close{d}"], h[f"close{d}"]),
                         "gaps": _gap_list(rf, d), "gap_entries": _gap_entries(rf, d)} for d in (0, 1)],
        }
        info["truncated"] = rf.missing
        if not rf.closed_by_gateway:
            info["cut"] = {"unpublished_complete_records": unpublished,
                           "note": "the gateway did not close this file: records after these may be missing"}
        info["problems"] = problems
        upto = written + unpublished
        info["warnings"] = reserved_warnings(rf, upto)
        stop = upto if n_records < 0 else min(n_records, upto)
        info["record_list"] = (_record_row(r, r.index < written) for r in rf.records(0, stop, unpublished=unpublished > 0))
        yield info


def describe_file(path, n_records=20):
    """A record file as plain data: its header, streams, problems and first `n_records`
    records (all of them written if negative: a header may count records never written)."""
    with file_description(path, n_records) as info:
        info["record_list"] = list(info["record_list"])
    return info


def write_json(info, out):
    """`info` of file_description() as one JSON object on `out`, its records written as they
    are read."""
    rows = info.pop("record_list")
    head = json.dumps({**info, "record_list": []})
    out.write(head[:-len("[]}")] + "[")
    batch, first = [], True
    for row in rows:
        batch.append(json.dumps(row))
        if len(batch) == 1024:
            out.write(("" if first else ", ") + ", ".join(batch))
            batch, first = [], False
    if batch:
        out.write(("" if first else ", ") + ", ".join(batch))
    out.write("]}\n")


def _missing_files(directory, manifest):
    """Lines naming the record files a complete store kept whole (--keep) lacks, and those
    its run cannot have made: it made `files` of them, numbered from 0. The numbers are looked
    for, not counted: another file in place of a missing one hides nothing."""
    made = manifest.get("files")
    if not manifest["complete"] or not manifest["keep"] or made is None:
        return []
    found = {conn for name in os.listdir(directory) if (conn := record_name(name)) is not None}
    out = []
    lacking = [f"c{conn:08d}.rec" for conn in range(made) if conn not in found]
    if lacking:
        named = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5:,} more" if len(lacking) > 5 else "")
        out.append(f"store.json: its run kept the {made:,} record files it made, "
                   f"{made - len(lacking):,} are here: {named} missing")
    beyond = sorted(conn for conn in found if conn >= made)
    if beyond:
        named = ", ".join(f"c{conn:08d}.rec" for conn in beyond[:5]) + (
            f" and {len(beyond) - 5:,} more" if len(beyond) > 5 else "")
        out.append(f"store.json: its run made {made:,} record files, numbered from 0: {named} "
                   f"{'is' if len(beyond) == 1 else 'are'} not one of them")
    return out


def manifest_problems(directory):
    """(store.json as read, or None; whether it is a manifest to go by; what is wrong with it,
    or with the store as it says it should be: one line each)."""
    manifest, problem = read_manifest(directory)
    problems = [problem] if problem else []
    usable = manifest is not None and problem is None
    if usable and not manifest["complete"]:
        why = f": {manifest['error']}" if manifest.get("error") else ""
        problems.append(f"store.json: incomplete (being written, or its gateway stopped before the end{why})")
    if usable:
        problems += _missing_files(directory, manifest)
    return manifest, usable, problems


def entry_problems(directory):
    """[(kind, line)] for the entries of a store that are named as record files and are not
    record files in place: not regular files (never opened), files being made or left unmade
    (`.rec.new`)."""
    out = [("not a record file", f"{name}: not a record file: {kind}, not a regular file")
           for name, kind in not_record_files(directory)]
    out += [("not in place", f"{name}: not in place (being made, or left by a gateway that stopped before "
                             f"writing its header)")
            for name in sorted(os.listdir(directory)) if name.endswith(".rec.new")]
    return out


def describe_store(directory):
    check_store(directory)
    manifest, usable, problems = manifest_problems(directory)
    conns, warnings = [], []
    for path in store_files(directory):
        name = os.path.basename(path)
        try:
            with RecordFile(path) as rf:
                h = rf.header
                conns.append({"file": name, "conn": h["conn"], "proto": PROTOS.get(h["proto"], h["proto"]),
                              "client": F.endpoint(h["client_addr"], h["client_port"], h["ipver"]),
                              "server": F.endpoint(h["server_addr"], h["server_port"], h["ipver"]),
                              **F.vlan_field(F.header_vlan(h)), "records": h["records"], "end": [h["end0"], h["end1"]],
                              "delivered": [rf.delivered(d) for d in (0, 1)],
                              "readable": [rf.readable(d) for d in (0, 1)],
                              "gaps": h["gaps"],
                              "closed": rf.closed_by_gateway, "truncated": rf.missing is not None})
                if rf.missing:
                    problems.append(f"{name}: {rf.missing}")
                written, unpublished, found = _file_problems(rf, name)
                problems += [f"{name}: {p}" for p in found]
                warnings += [f"{name}: {w}" for w in reserved_warnings(rf, written + unpublished)]
                if usable and manifest["complete"] and not rf.closed_by_gateway:
                    problems.append(f"{name}: not closed by the gateway, though store.json says the store is complete")
        except StoreError as e:
            problems.append(str(e))
    problems += [line for _, line in entry_problems(directory)]
    note = retired_note(directory)
    if note:
        problems.append(note)
    return {"store": str(directory), "manifest": manifest, "connections": conns, "problems": problems,
            "warnings": warnings}
