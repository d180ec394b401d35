"""Stream pointers over record files: reads without copies, searches across packets, gaps as values."""
import hashlib
import os
import subprocess
import sys

import pytest

from flowsift.gateway import Gateway
from flowsift.reassembly import Gap, Reassembler
from flowsift.streams import Entry, EntryTable, RecordFile, StreamPointer, store_files


def store_of(tmp_path, corpus, name):
    store = tmp_path / "store"
    Gateway(store, keep=True).run_capture(corpus / name)
    return store


def test_read_find_read_until_across_packet_boundaries(tmp_path, corpus):
    store = store_of(tmp_path, corpus, "http__zeek__206_example_b.pcap")
    r = Reassembler()
    r.feed_capture(corpus / "http__zeek__206_example_b.pcap")
    path = store_files(store)[0]
    sp = StreamPointer(path, 1)
    want = bytes(r.collector.dirs[(0, 1)].data)
    assert sp.available == len(want) > 100_000
    head = sp.read_until(b"\r\n\r\n", max=65536)
    assert bytes(head) == want[:want.index(b"\r\n\r\n") + 4]
    assert isinstance(head, memoryview) and head.readonly
    # a pattern that straddles two segments (each ~1448 bytes): the 3000th-3010th bytes
    pat = want[3000:3010]
    assert sp.find(pat, start=0) == want.find(pat)
    assert sp.find(b"definitely not in there") == -1
    assert sp.tell() == len(head)
    sp.seek(0)
    total = b""
    while True:
        chunk = sp.read(5000)
        if not chunk:
            break
        total += bytes(chunk)
    assert total == want and sp.eof


def test_gaps_are_values_never_filler(tmp_path, corpus):
    store = store_of(tmp_path, corpus, "gap__suri__tcp-simple-gap2.pcap")
    sp = StreamPointer(store_files(store)[0], 0)
    first = bytes(sp.read())
    assert len(first) == 4 and sp.available == 0
    gap = sp.at_gap
    assert isinstance(gap, Gap) and (gap.offset, gap.length) == (4, 4)
    assert sp.read() == b"" or len(sp.read()) == 0
    assert sp.skip_gap() == gap and sp.at_gap is None
    rest = bytes(sp.read())
    assert rest and b"\0\0\0\0" not in first + rest


def test_a_pointer_given_a_header_reads_no_further_than_it(tmp_path, corpus):
    """A reader behind the gateway hands a new pointer the header as far as it may read."""
    store = store_of(tmp_path, corpus, "http__zeek__206_example_b.pcap")
    rf = RecordFile(store_files(store)[0])
    whole = StreamPointer(rf, 1).available
    h = dict(rf.header, end1=1000)
    sp = StreamPointer(rf, 1, h)
    assert whole > 100_000 and sp.available == 1000 and len(sp.read()) == 1000 and sp.read() == b""
    assert sp.refresh() and sp.available == whole - 1000        # the live header, when asked


def test_peek_does_not_move_and_seek_stays_in_bounds(tmp_path, corpus):
    store = store_of(tmp_path, corpus, "http__zeek__get.pcap")
    sp = StreamPointer(store_files(store)[0], 0)
    assert bytes(sp.peek(3)) == b"GET" and sp.tell() == 0
    with pytest.raises(ValueError):
        sp.seek(10**9)


def test_writes_through_a_readers_mapping_fail_and_the_file_is_unchanged(tmp_path, corpus):
    store = store_of(tmp_path, corpus, "http__zeek__get.pcap")
    path = store_files(store)[0]
    before = hashlib.sha256(open(path, "rb").read(1 << 20)).hexdigest()
    code = f"""
import ctypes, numpy
from flowsift.streams import StreamPointer
sp = StreamPointer({str(path)!r}, 0)
view = sp.peek(16)
addr = numpy.frombuffer(view, dtype=numpy.uint8).ctypes.data
ctypes.memset(addr, 0x41, 16)      # the mapping is PROT_READ: the kernel stops this
print("wrote")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == -11 and "wrote" not in res.stdout          # SIGSEGV
    assert hashlib.sha256(open(path, "rb").read(1 << 20)).hexdigest() == before
    # and the descriptor readers get is read-only
    rf = RecordFile(path)
    with pytest.raises(OSError):
        os.write(rf._fd, b"x")
    rf.close()


def test_entry_state_follows_published_records(tmp_path, corpus):
    store = store_of(tmp_path, corpus, "http__pcpp__three_http_streams.pcap")
    table = EntryTable(store)
    new = table.scan()
    assert len(new) == 3
    for e in new:
        assert e.latest_record == e.file.header["records"] > 0 and e.next_record == 0
        recs = e.pending()
        assert [r.index for r in recs] == list(range(e.latest_record))
        e.done(len(recs))
        assert e.finished
    table.close_finished()
    assert table.entries == {}


def _mappings_of(path):
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith(str(path)))


def test_bytes_read_from_the_file_are_what_the_views_show_and_map_nothing(tmp_path, corpus):
    """peek_bytes/read_bytes: the same bytes, position and gap behaviour as bytes(peek/read),
    read with pread: no mapping of the file is made for them. skip() without n passes over
    what read() would have returned, unmapped too."""
    store = store_of(tmp_path, corpus, "gap__suri__tcp-simple-gap2.pcap")
    path = store_files(store)[0]
    views, copies = StreamPointer(path, 0), StreamPointer(path, 0)
    got_views, got_copies = [], []
    while not views.eof:
        if views.at_gap is not None:
            assert copies.at_gap == views.at_gap and copies.peek_bytes() == b"" and copies.read_bytes(3) == b""
            views.skip_gap(), copies.skip_gap()
            continue
        assert copies.peek_bytes(2) == bytes(views.peek(2)) and copies.tell() == views.tell()
        got_views.append(bytes(views.read(3)))
        got_copies.append(copies.read_bytes(3))
        assert copies.tell() == views.tell()
    assert got_copies == got_views and b"".join(got_copies)
    # a fresh pointer reading everything as bytes, or passing over it, maps nothing
    big = store_files(store_of(tmp_path / "b", corpus, "http__zeek__206_example_b.pcap"))[0]
    want = bytes(StreamPointer(RecordFile(big), 1).read())
    sp = StreamPointer(RecordFile(big), 1)
    before = _mappings_of(big)                  # (its file's header may be mapped: not its bytes)
    assert sp.read_bytes(10) == want[:10] and sp.read_bytes() == want[10:] and sp.eof
    sp.seek(0)
    assert sp.skip() == len(want) and sp.read_bytes() == b""
    assert _mappings_of(big) == before
    sp.seek(0)
    view = sp.peek(1)                           # a view does map them
    assert bytes(view) == want[:1] and _mappings_of(big) == before + 1


def test_bytes_of_a_cut_file_say_so(tmp_path, corpus):
    store = store_of(tmp_path, corpus, "http__zeek__206_example_b.pcap")
    path = store_files(store)[0]
    sp = StreamPointer(path, 1)
    want = sp.available
    h = RecordFile(path).header
    os.truncate(path, h["data_off1"] + 1000)                      # cut behind the pointer's back
    assert sp.read_bytes(500) and sp.tell() == 500
    from flowsift.streams.reader import StoreError
    with pytest.raises(StoreError, match="cut short at stream offset 1000"):
        sp.read_bytes(want)


def test_a_header_read_again_and_again_follows_every_publish(tmp_path, corpus, monkeypatch):
    """RecordFile.refresh reads the header with pread, then (from the third read) through a
    mapping: both ways see each batch's publish of a live connection."""
    monkeypatch.setenv("FLOWSIFT_BATCH", "64")
    g = Gateway(tmp_path / "store", keep=True)
    files, seen = {}, []

    def after_batch(touched, closed):
        for conn in touched:
            if conn == 0 and 0 not in files:
                files[0] = RecordFile(g.store.path(0))
        if 0 in files and not files[0].closed_by_gateway:
            h = files[0].refresh()
            want = g.store.published([0])[0]
            assert (h["records"], h["gaps"], h["end0"], h["end1"]) == want[:4]
            seen.append(want[0])
    g.run_capture(corpus / "http__zeek__206_example_b.pcap", after_batch=after_batch)
    assert len(seen) >= 5 and len(set(seen)) >= 5       # read while it grew, both ways
    files[0].close()
