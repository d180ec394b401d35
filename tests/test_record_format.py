"""The record format as documented, read with struct alone; and the store against the reassembler."""
import json
import os
import shutil
import struct

import pytest

from conftest import ROOT, run_cli

HEADER_FIELDS = {   # from docs/record-format.md, not from flowsift
    "magic": ("8s", 0), "version": ("I", 8), "record_size": ("I", 16), "flags": ("I", 20), "conn": ("Q", 24),
    "first_record_id": ("Q", 32), "records": ("Q", 40), "gaps": ("Q", 48), "ipver": ("B", 56), "proto": ("B", 57),
    "client_port": ("H", 60), "server_port": ("H", 62), "client_addr": ("16s", 64), "server_addr": ("16s", 80),
    "records_off": ("Q", 96), "gaps_off": ("Q", 104), "data_off0": ("Q", 112), "data_off1": ("Q", 120),
    "origin0": ("q", 128), "origin1": ("q", 136), "end0": ("q", 144), "end1": ("q", 152),
}
RECORD = struct.Struct("<QqQqIIIIHBBHBBHHI16s16sI4xQ16x")
GAP = struct.Struct("<BB6xQqq")


def read_with_struct(path):
    """Everything in a record file, using only open/seek/read and struct, as the doc describes."""
    with open(path, "rb") as f:
        head = f.read(256)
        h = {k: struct.unpack_from("<" + code, head, off)[0] for k, (code, off) in HEADER_FIELDS.items()}
        records = []
        for i in range(h["records"]):
            f.seek(h["records_off"] + i * h["record_size"])
            records.append(RECORD.unpack(f.read(128)))
        gaps = []
        for j in range(h["gaps"]):
            f.seek(h["gaps_off"] + 32 * j)
            gaps.append(GAP.unpack(f.read(32)))
        streams = []
        for d in (0, 1):
            f.seek(h[f"data_off{d}"])
            raw = f.read(h[f"end{d}"])
            out, pos = bytearray(), 0
            for gd, _, _, off, ln in gaps:
                if gd == d:
                    out += raw[pos:off]
                    pos = off + ln
            out += raw[pos:]
            streams.append(bytes(out))
    return h, records, gaps, streams


@pytest.fixture(params=["disk", "shm"])
def store_dir(request, tmp_path):
    """A store on a disk file system (header written with pwrite) and in /dev/shm (header mapped)."""
    if request.param == "disk":
        yield tmp_path / "store"
    else:
        import tempfile
        from pathlib import Path
        d = Path(tempfile.mkdtemp(prefix="flowsift-test-", dir="/dev/shm"))
        yield d / "store"
        shutil.rmtree(d)


@pytest.mark.parametrize("name", ["http__zeek__get.pcap", "overlap__zeek__reassembly.pcap", "ipv6__zeek__ipv6.pcap",
                                  "trunc__suri__tcp-rst-unacked-stream-10.pcap", "wrap__pcpp__one_tcp_stream_max_seq.pcap",
                                  "pcapng__pcpp__many_interfaces-1.pcapng", "vlan__pcpp__example2.pcap@64"])
def test_struct_alone_reads_what_the_reassembler_delivered(store_dir, corpus, name):
    """name@N: at most N files open at once, so files are closed and reopened while the bytes
    and records of a batch wait to be written."""
    from flowsift.gateway import Gateway
    from flowsift.reassembly import Reassembler
    store = store_dir
    name, _, handles = name.partition("@")
    summary = Gateway(store, keep=True, max_open_files=int(handles) if handles else None).run_capture(corpus / name)
    assert summary["reopens"] > 0 if handles else True
    r = Reassembler()
    r.feed_capture(corpus / name)
    files = sorted(p for p in os.listdir(store) if p.endswith(".rec"))
    assert len(files) == len(r.collector.closed) == summary["files"]
    total_records = 0
    for fname in files:
        h, records, gaps, streams = read_with_struct(store / fname)
        assert h["magic"] == b"FSRECORD" and h["version"] == 2 and h["flags"] & 1
        conn = h["conn"]
        info = r.collector.closed[conn]
        assert (h["client_addr"][:len(info["client"][0])], h["client_port"]) == info["client"]
        for d in (0, 1):
            D = r.collector.dirs.get((conn, d))
            assert streams[d] == (bytes(D.data) if D else b"")
            assert [[g[3], g[4]] for g in gaps if g[0] == d] == ([list(x) for x in D.gaps] if D else [])
        ids = [rec[0] for rec in records]
        assert ids == [(h["first_record_id"] + i) % 2**64 for i in range(len(records))]
        assert sum(1 for rec in records if rec[10] == 0) == info["dirs"][0]["packets"]
        assert sum(1 for rec in records if rec[10] == 1) == info["dirs"][1]["packets"]
        for rec in records:
            payload_len, d, seq_offset = rec[4], rec[10], rec[3]
            if payload_len and not rec[11] & (1 | 2 | 8 | 32) and h["proto"] == 6:
                # an in-order segment's payload sits at its stream offset in the data region
                off = seq_offset - h[f"origin{d}"]
                assert off >= 0
        total_records += len(records)
    assert total_records == summary["records"]


def test_first_record_ids_are_random_per_connection(tmp_path, corpus):
    from flowsift.gateway import Gateway
    store = tmp_path / "s"
    Gateway(store, keep=True).run_capture(corpus / "http__pcpp__three_http_streams.pcap")
    firsts = [read_with_struct(store / f)[0]["first_record_id"] for f in sorted(os.listdir(store)) if f.endswith(".rec")]
    assert len(set(firsts)) == len(firsts) == 3 and all(f != 0 for f in firsts)


def test_the_document_lists_every_field():
    doc = (ROOT / "docs" / "record-format.md").read_text()
    from flowsift.streams import format as F
    for name, _, _ in F.HEADER_FIELDS + F.RECORD_FIELDS:
        assert f"`{name}`" in doc, name


@pytest.mark.parametrize("name", ["overlap__zeek__reassembly.pcap", "retrans__csanders__tcp_retransmissions.pcapng",
                                  "http__pcpp__three_http_streams.pcap"])
def test_totals_in_one_pass_agree_with_struct(tmp_path, corpus, name):
    """RecordFile.totals (the counter module's one pass in C) against the records read with struct."""
    from flowsift.gateway import Gateway
    from flowsift.streams.reader import RecordFile
    store = tmp_path / "s"
    Gateway(store, keep=True).run_capture(corpus / name)
    seen = {"retrans": 0, "conflicts": 0}
    for fname in sorted(p for p in os.listdir(store) if p.endswith(".rec")):
        _, records, _, _ = read_with_struct(store / fname)
        f = RecordFile(store / fname)
        for start, stop in ((0, None), (1, None), (0, 1), (2, 5)):
            part = records[start:stop]
            t = f.totals(start, stop)
            assert t.packets == tuple(sum(1 for r in part if r[10] == d) for d in (0, 1))
            assert t.bytes == tuple(sum(r[4] for r in part if r[10] == d) for d in (0, 1))
            assert t.retransmissions == sum(1 for r in part if r[11] & 1)
            assert t.conflicts == sum(1 for r in part if r[11] & 4)
        seen["retrans"] += f.totals().retransmissions
        seen["conflicts"] += f.totals().conflicts
        f.close()
    if name.startswith("overlap"):
        assert seen["conflicts"] > 0
    if name.startswith("retrans"):
        assert seen["retrans"] > 0


@pytest.mark.parametrize("name", ["overlap__zeek__reassembly.pcap", "gap__suri__tcp-simple-gap2.pcap",
                                  "speed__pcpp__example.pcap"])
def test_a_store_without_bytes_has_the_same_records_and_refuses_to_be_read_for_bytes(tmp_path, corpus, name):
    """store_bytes=False (a chain whose modules read no bytes): the same header counts, records
    and gaps as a store with its bytes, the NO_BYTES flag set, no data written, and a reader
    that asks for bytes is told they are not there (never handed zeros)."""
    from flowsift.gateway import Gateway
    from flowsift.streams import StreamPointer
    from flowsift.streams.reader import RecordFile, StoreError
    cap = corpus / name
    with_b, without = tmp_path / "with", tmp_path / "without"
    Gateway(with_b, keep=True).run_capture(cap)
    Gateway(without, keep=True, store_bytes=False).run_capture(cap)
    names = sorted(p for p in os.listdir(with_b) if p.endswith(".rec"))
    assert names and names == sorted(p for p in os.listdir(without) if p.endswith(".rec"))
    delivered = 0
    for fname in names:
        h1, rec1, gaps1, streams = read_with_struct(with_b / fname)
        h2, rec2, gaps2, _ = read_with_struct(without / fname)
        assert h1["flags"] & 4 == 0 and h2["flags"] & 4 == 4
        same = ("records", "gaps", "end0", "end1", "origin0", "origin1", "client_addr", "server_addr")
        assert {k: h1[k] for k in same} == {k: h2[k] for k in same}
        strip = lambda recs: [r[1:] for r in recs]      # (record ids start at random values)
        assert strip(rec1) == strip(rec2) and gaps1 == gaps2
        delivered += sum(map(len, streams))
        for d in (0, 1):                                 # nothing stored where the bytes would be
            raw = []
            for store in (with_b, without):
                with open(store / fname, "rb") as f:
                    f.seek(h2[f"data_off{d}"])
                    raw.append(f.read(h2[f"end{d}"]))
            assert raw[1] == bytes(len(raw[1])) and (not raw[0] or raw[0] != raw[1])
        with RecordFile(without / fname) as rf:
            assert not rf.has_bytes
            assert rf.totals() == RecordFile(with_b / fname).totals()
            for read in (lambda: rf.data(0), lambda: StreamPointer(rf, 1)):
                with pytest.raises(StoreError, match="bytes were not stored"):
                    read()
    assert delivered > 0
    shown = run_cli("inspect", without / names[0], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["bytes_stored"] is False
    assert "counted, not stored" in run_cli("inspect", without / names[0]).stdout
    assert json.loads(run_cli("inspect", with_b / names[0], "--json").stdout)["bytes_stored"] is True


RF_DOCUMENTED = {1, 2, 4, 8, 16, 32, 128}     # docs/record-format.md, rflags



def test_a_udp_datagram_cut_by_the_snaplen_is_flagged_and_leaves_a_hole(tmp_path):
    """Its record says snaplen-cut (rflags 32) and carries the gap declared for its tail (16);
    the next datagram lies at the offset the bytes sent give it, after the hole."""
    from pcapgen import udp_cut_capture
    store = tmp_path / "s"
    run_cli("gateway", udp_cut_capture(tmp_path / "udpcut.pcap"), "--store", store, "--keep", check=True)
    h, records, gaps, streams = read_with_struct(store / "c00000000.rec")
    assert [(r[3], r[4], r[5], r[11]) for r in records] == [(0, 38, 1000, 32 | 16), (1000, 5, 5, 0)]
    assert gaps == [(0, 4, 0, 38, 962)] and h["end0"] == 1005
    assert streams[0] == b"S" * 38 + b"after"

def test_record_fields_mean_what_the_document_says(tmp_path, corpus):
    """seq_offset, origin, acked, rflags and a gap's record_index, read with struct, on captures
    that exercise them: FIN/RST injected before the SYN-ACK (rflags 128), a hole and its gaps,
    FINs acknowledged."""
    from flowsift.inspect import describe_file
    seen_rflags, syn_offsets, fin_acked = set(), set(), 0
    for name in ("overlap__suri__with_evasion_linux.pcap", "trunc__suri__tcp-rst-unacked-stream-10.pcap",
                 "http__zeek__get.pcap", "trunc__zeek__truncated-header.pcap"):
        store = tmp_path / name
        run_cli("gateway", corpus / name, "--store", store, "--keep", check=True)
        for fname in sorted(p for p in os.listdir(store) if p.endswith(".rec")):
            h, records, gaps, _ = read_with_struct(store / fname)
            origin = (h["origin0"], h["origin1"])
            for i, r in enumerate(records):
                flags, d, rflags = r[9], r[10], r[11]
                for bit in range(16):
                    if rflags & (1 << bit):
                        seen_rflags.add(1 << bit)
                if flags & 2:
                    syn_offsets.add(r[3] - origin[d])     # a SYN carries ISN + 1: stream offset 0
                if rflags & 128:
                    assert r[3] == 0 and flags & 5      # a FIN or RST, not applied
            for gd, reason, index, off, ln in gaps:
                # the record being handled when it was declared carries rflag 16; one declared at the end, `records`
                assert index == h["records"] or records[index][11] & 16
            with open(store / fname, "rb") as f:
                head = f.read(256)
            for d in (0, 1):
                acked, end = struct.unpack_from("<q", head, 160 + 8 * d)[0], h[f"end{d}"]
                fin = any(r[9] & 1 and r[10] == d for r in records)
                fin_acked += fin and acked == end + 1
        if name.startswith("overlap__suri"):
            listed = describe_file(store / "c00000000.rec", n_records=3)["record_list"]
            assert [x["rflags"] for x in listed[1:3]] == [["ignored"], ["ignored"]]
    assert seen_rflags <= RF_DOCUMENTED and 128 in seen_rflags and 16 in seen_rflags
    assert syn_offsets == {0} and fin_acked > 0


def test_a_direction_without_packets_says_what_its_peer_acknowledged(tmp_path, corpus):
    """A one-sided capture: the server's direction has no packet, its stream is the trailing gap
    the client's ACKs measure, and its `acked` is where those ACKs went (it was -1, "never")."""
    from pcapgen import timed_capture
    store = tmp_path / "smtp"
    run_cli("gateway", corpus / "midstream__zeek__smtp-one-side-only.pcap", "--store", store, "--keep", check=True)
    h, records, gaps, _ = read_with_struct(store / "c00000000.rec")
    with open(store / "c00000000.rec", "rb") as f:
        head = f.read(256)
    acked = struct.unpack_from("<qq", head, 160)
    assert records and all(r[10] == 0 for r in records)
    assert [(g[0], g[1], g[3], g[4]) for g in gaps] == [(1, 5, 0, 763)] and h["end1"] == 763
    assert acked == (-1, 764)          # the last ACK moved by one: the FIN's number (end + 1)
    assert head[208:214] == bytes([1, 1, 1, 5, 0, 0])    # settled, close fin / eof, not midstream
    # ACKs that moved by more than one at the end: no FIN, `acked` is the end
    cap = timed_capture(tmp_path / "acks.pcap", [(0, True, 100, 0, 0x02, b""), (0.1, True, 101, 5000, 0x10, b""),
                                                 (0.2, True, 101, 5100, 0x10, b"")])
    run_cli("gateway", cap, "--store", tmp_path / "acks", "--keep", check=True)
    h, _, gaps, _ = read_with_struct(tmp_path / "acks" / "c00000000.rec")
    assert [(g[3], g[4]) for g in gaps] == [(0, 100)] and h["end1"] == 100
    with open(tmp_path / "acks" / "c00000000.rec", "rb") as f:
        assert struct.unpack_from("<q", f.read(256), 168)[0] == 100


def test_a_header_read_again_is_the_header():
    """parse_header_again loads the fields that change in groups, in the order a reader of a
    header being written must (flags, the directions' fields, the counts): every one of them
    still comes from the buffer read, the rest from the first parse."""
    import random
    from flowsift.streams import format as F
    rng = random.Random(7)
    first, again = (bytes(rng.getrandbits(8) for _ in range(256)) for _ in range(2))
    whole = F.parse_header(again)
    mixed = F.parse_header_again(again, F.parse_header(first))
    changing = {n for n, _, off in F.HEADER_FIELDS if 20 <= off < 56 or 128 <= off < 232}
    assert {n: mixed[n] for n in changing} == {n: whole[n] for n in changing}
    assert all(mixed[n] == F.parse_header(first)[n] for n in set(whole) - changing)


def test_inspect_json_carries_what_the_file_holds(tmp_path, corpus):
    """inspect --json lacked records' caplen, wirelen, frame_pos, seq_offset and raw TCP flags,
    the header's flags, ipver, origins and oldest_unacked_done, and gap entries' record_index:
    each as struct reads it."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "trunc__suri__tcp-rst-unacked-stream-10.pcap", "--store", store, "--keep", check=True)
    path = store / "c00000000.rec"
    h, records, gaps, _ = read_with_struct(path)
    with open(path, "rb") as f:
        head = f.read(256)
    out = json.loads(run_cli("inspect", path, "--json", "-n", "-1", check=True).stdout)
    assert (out["flags"], out["ipver"]) == (h["flags"], h["ipver"]) == (3, 4)
    assert out["oldest_unacked_done"] == struct.unpack_from("<Q", head, 224)[0]
    reasons = {1: "acked", 2: "closed", 3: "memcap", 4: "snaplen", 5: "trailing"}
    for d in (0, 1):
        s = out["streams"][d]
        assert s["origin"] == h[f"origin{d}"]
        assert s["gap_entries"] == [{"entry": j, "offset": off, "length": ln, "reason": reasons[reason],
                                     "record_index": index}
                                    for j, (gd, reason, index, off, ln) in enumerate(gaps) if gd == d]
    assert sum(len(s["gap_entries"]) for s in out["streams"]) == len(gaps) == 3
    assert [(r["seq_offset"], r["tcp_flags"], r["caplen"], r["wirelen"], r["frame_pos"]) for r in out["record_list"]] \
        == [(r[3], r[9], r[16], r[19], r[20]) for r in records]
    assert len({r["frame_pos"] for r in out["record_list"]}) == len(records) and records[0][20] == 24
