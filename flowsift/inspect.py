"""`flowsift inspect`: record files and stores, described as plain data."""
import os

from flowsift.streams import format as F
from flowsift.streams.reader import (RecordFile, StoreError, check_store, not_record_files, read_manifest,
                                     retired_note, store_files)


def _flags(rflags):
    return [name for bit, name in F.RF_NAMES.items() if rflags & bit]


def _tcp_flags(f):
    return "".join(c for bit, c in ((2, "S"), (16, "."), (8, "P"), (1, "F"), (4, "R"), (32, "U")) if f & bit) or "-"


def describe_file(path, n_records=20):
    with RecordFile(path) as rf:
        h = rf.header
        info = {
            "file": str(path), "conn": h["conn"], "version": h["version"],
            "proto": {6: "tcp", 17: "udp"}.get(h["proto"], h["proto"]),
            "client": F.endpoint(h["client_addr"], h["client_port"], h["ipver"]),
            "server": F.endpoint(h["server_addr"], h["server_port"], h["ipver"]),
            "first_record_id": h["first_record_id"], "records": h["records"], "gaps": h["gaps"],
            "closed": rf.closed_by_gateway, "keep": bool(h["flags"] & F.HF_KEEP), "bytes_stored": rf.has_bytes,
            "first_ts": h["first_ts"], "last_ts": h["last_ts"], "modules_mask": h["modules_mask"],
            "streams": [{"dir": "c2s" if d == 0 else "s2c", "end": h[f"end{d}"],
                         "delivered": rf.delivered(d), "acked": h[f"acked{d}"],
                         "reclaimed": h[f"reclaimed{d}"], "settled": bool(h[f"settled{d}"]),
                         "midstream": bool(h[f"midstream{d}"]), "close": F.CLOSE_NAMES.get(h[f"close{d}"]),
                         "gaps": [[g.offset, g.length, g.reason] for g in rf.gaps(d)]} for d in (0, 1)],
        }
        info["truncated"] = rf.missing
        if not rf.closed_by_gateway:
            info["cut"] = {"unpublished_complete_records": rf.unpublished,
                           "note": "the gateway did not close this file: records after these may be missing"}
        stop = None if n_records < 0 else n_records
        info["record_list"] = [
            {"index": r.index, "id": r.record_id, "ts_ns": r.ts_ns, "dir": r.dir, "flags": _tcp_flags(r.tcp_flags),
             "seq": r.seq, "ack": r.ack, "window": r.window, "offset": r.stream_offset, "len": r.payload_len,
             "payload_wirelen": r.payload_wirelen, "rflags": _flags(r.rflags), "modules": r.modules}
            for r in rf.records(0, stop)]
    return info


def describe_store(directory):
    check_store(directory)
    manifest, problem = read_manifest(directory)
    problems = [problem] if problem else []
    if manifest is not None and not manifest.get("complete"):
        why = f": {manifest['error']}" if manifest.get("error") else ""
        problems.append(f"store.json: incomplete (being written, or its gateway stopped before the end{why})")
    conns = []
    for path in store_files(directory):
        try:
            with RecordFile(path) as rf:
                h = rf.header
                conns.append({"file": os.path.basename(path), "conn": h["conn"],
                              "proto": {6: "tcp", 17: "udp"}.get(h["proto"], h["proto"]),
                              "client": F.endpoint(h["client_addr"], h["client_port"], h["ipver"]),
                              "server": F.endpoint(h["server_addr"], h["server_port"], h["ipver"]),
                              "records": h["records"], "end": [h["end0"], h["end1"]],
                              "delivered": [rf.delivered(d) for d in (0, 1)],
                              "gaps": h["gaps"],
                              "closed": rf.closed_by_gateway, "truncated": rf.missing is not None})
                if rf.missing:
                    problems.append(f"{os.path.basename(path)}: {rf.missing}")
        except StoreError as e:
            problems.append(str(e))
    for name, kind in not_record_files(directory):
        problems.append(f"{name}: not a record file: {kind}, not a regular file")
    note = retired_note(directory)
    if note:
        problems.append(note)
    for name in sorted(os.listdir(directory)):
        if name.endswith(".rec.new"):
            problems.append(f"{name}: not in place (being made, or left by a gateway that stopped before "
                            f"writing its header)")
    return {"store": str(directory), "manifest": manifest, "connections": conns, "problems": problems}
