"""Stream pointers over record files: reads without copies, searches across packets, gaps as values."""
import hashlib
import os
import re
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


# --- pointers against a model, over record files made by hand ---

def hand_made_file(path, stream, gaps, direction=1, reclaimed=0, fill=b"G"):
    """A record file holding one direction: `stream` (its bytes, the end is its length) with
    gap entries `gaps` [(offset, length, reason code)], and bytes given back below `reclaimed`.
    Gap ranges and what was given back hold `fill` in the file, not zeros: a pointer that
    showed any of them as data would be caught. The other direction has gap entries of its own
    at the same offsets (a pointer reads its direction's only)."""
    from flowsift.streams import format as F
    end = len(stream)
    h = dict.fromkeys(F._HEADER_NAMES, 0)
    h.update(magic=F.MAGIC, version=F.VERSION, header_size=F.HEADER_SIZE, record_size=F.RECORD_SIZE,
             flags=F.HF_CLOSED | F.HF_KEEP, conn=7, gaps=2 * len(gaps), ipver=4, proto=6, client_addr=b"\0" * 16,
             server_addr=b"\0" * 16, records_off=F.RECORDS_OFF, gaps_off=F.GAPS_OFF, data_off0=F.DATA_OFF[0],
             data_off1=F.DATA_OFF[1], acked0=-1, acked1=-1, close0=1, close1=1)
    h[f"end{direction}"] = end
    h[f"reclaimed{direction}"] = reclaimed
    shown = bytearray(stream)
    for off, ln, _ in gaps:
        shown[off:off + ln] = (fill * ln)[:ln]
    shown[:reclaimed] = (fill * reclaimed)[:reclaimed]
    table = b"".join(F.GAP_STRUCT.pack(d, reason, 0, off, ln) for off, ln, reason in gaps for d in (1 - direction, direction))
    with open(path, "wb") as f:
        f.write(F.HEADER_STRUCT.pack(*(h[name] for name in F._HEADER_NAMES)).ljust(F.HEADER_SIZE, b"\0"))
        f.seek(F.GAPS_OFF)
        f.write(table)
        f.seek(F.DATA_OFF[direction])
        f.write(bytes(shown) + fill * 64)                # and past the end
        f.truncate(F.FILE_SIZE)
    return path


class PointerModel:
    """What a StreamPointer promises, over plain lists: the reference the property test holds
    it to."""
    def __init__(self, stream, gaps, reclaimed):
        from flowsift.streams import format as F
        self.data, self.end, self.start, self.pos = stream, len(stream), reclaimed, reclaimed
        self.gaps = [(off, ln, F.GAP_REASONS[r]) for off, ln, r in gaps]

    def _holding(self, off):
        return next((g for g in self.gaps if g[0] <= off < g[0] + g[1]), None)

    def limit(self, off):
        if off < self.start or self._holding(off) or off >= self.end:
            return off
        return min([g[0] for g in self.gaps if g[0] > off] + [self.end])

    def at_gap(self):
        if self.pos >= self.end:
            return None
        g = self._holding(self.pos)
        if g:
            return (g[0], min(g[0] + g[1], self.end) - g[0], g[2])
        if self.pos < self.start:
            stop = min([g[0] for g in self.gaps if g[0] > self.pos] + [self.start])
            return (self.pos, stop - self.pos, "reclaimed")
        return None

    def next_gap(self):
        at = self.at_gap()
        if at is not None:
            return at
        g = next((g for g in self.gaps if g[0] + g[1] > self.pos), None)
        return None if g is None or g[0] >= self.end or self.pos >= self.end else (g[0], min(g[0] + g[1], self.end) - g[0], g[2])

    def available(self):
        return self.limit(self.pos) - self.pos

    def peek(self, n):
        k = self.available() if n is None or n > self.available() else n
        return self.data[self.pos:self.pos + k]

    def read(self, n):
        out = self.peek(n)
        self.pos += len(out)
        return out

    def find(self, pat, start=None, end=None):
        s = self.pos if start is None else start
        if s < self.start or s > self.end:
            return -1
        lim = self.limit(s) if end is None else min(self.limit(s), end)
        if not pat:
            return s if lim >= s else -1
        i = self.data[s:lim].find(pat) if lim >= s else -1
        return -1 if i < 0 else s + i

    def read_until(self, delim, max):
        avail = self.available() if max is None else min(max, self.available())
        i = self.data[self.pos:self.pos + avail].find(delim) if avail > 0 else -1
        return None if i < 0 else self.read(i + len(delim))

    def skip(self, n):
        # as read: not past a gap
        self.pos += self.available() if n is None else min(n, self.available())
        return self.pos

    def skip_gap(self):
        g = self.at_gap()
        if g:
            self.pos = g[0] + g[1]
        return g

    def seek(self, off):
        if not self.start <= off <= self.end:
            raise ValueError(off)
        self.pos = off
        return off

    def resume(self, off):
        if not 0 <= off <= self.end:
            raise ValueError(off)
        self.pos = off
        return off


def _gap_layouts(draw):
    from hypothesis import strategies as st
    end = draw(st.integers(0, 400))
    cuts = sorted(set(draw(st.lists(st.integers(0, end), max_size=10))))
    gaps = []
    for a, b in zip(cuts[::2], cuts[1::2]):
        if draw(st.booleans()) and b - a > 1:          # one hole noted in two adjacent entries
            mid = draw(st.integers(a + 1, b - 1))
            gaps += [(a, mid - a, draw(st.integers(1, 5))), (mid, b - mid, draw(st.integers(1, 5)))]
        else:
            gaps.append((a, b - a, draw(st.integers(1, 5))))
    stream = bytes(draw(st.lists(st.sampled_from(b"ab\0\n"), min_size=end, max_size=end)))
    reclaimed = draw(st.sampled_from([0, 0, draw(st.integers(0, end))]))
    return stream, gaps, reclaimed


def _ops(draw, end):
    from hypothesis import strategies as st
    off = st.integers(-3, end + 3)
    pat = st.binary(min_size=0, max_size=3).map(lambda b: bytes(b"ab\0\n"[x % 4] for x in b))
    return draw(st.lists(st.one_of(
        st.tuples(st.sampled_from(["seek", "resume", "find_from"]), off),
        st.tuples(st.sampled_from(["read", "peek", "skip"]), st.one_of(st.none(), st.integers(0, end + 3))),
        st.tuples(st.just("find"), pat, st.one_of(st.none(), off), st.one_of(st.none(), off)),
        st.tuples(st.just("read_until"), pat.filter(bool), st.one_of(st.none(), st.integers(0, end + 3))),
        st.tuples(st.just("skip_gap"))), max_size=25))


def test_pointer_operations_match_the_model_over_any_gap_layout(tmp_path_factory):
    """Every operation, from any position and any explicit offset (behind the position, inside
    a gap, past the end), agrees with PointerModel: a gap ends every search and read, and the
    bytes in gaps and below what was given back never show (the file holds junk there)."""
    from hypothesis import HealthCheck, given, settings, strategies as st
    base = tmp_path_factory.mktemp("model")

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(data):
        stream, gaps, reclaimed = _gap_layouts(data.draw)
        path = hand_made_file(base / "c00000007.rec", stream, gaps, reclaimed=reclaimed)
        sp, m = StreamPointer(path, 1), PointerModel(stream, gaps, reclaimed)

        def same():
            assert sp.tell() == m.pos and sp.available == m.available()
            for got, want in ((sp.at_gap, m.at_gap()), (sp.next_gap, m.next_gap())):
                assert (got and (got.offset, got.length, got.reason)) == want
            assert bytes(sp.peek()) == m.peek(None) and sp.peek_bytes(2) == m.peek(2)
        same()
        for op in _ops(data.draw, len(stream)):
            name, args = op[0], op[1:]
            if name in ("seek", "resume"):
                try:
                    want = getattr(m, name)(*args)
                except ValueError:
                    with pytest.raises(ValueError):
                        getattr(sp, name)(*args)
                else:
                    assert getattr(sp, name)(*args) == want
            elif name == "find_from":
                for pattern in (b"a", b"\0\0", b"ab\n"):
                    assert sp.find(pattern, args[0]) == m.find(pattern, args[0]), (pattern, args)
            elif name in ("read", "peek", "read_until"):
                got = getattr(sp, name)(*args)
                assert (got if got is None else bytes(got)) == getattr(m, name)(*args), op
            elif name == "skip_gap":
                got, want = sp.skip_gap(), m.skip_gap()
                assert (got and (got.offset, got.length, got.reason)) == want
            else:
                assert getattr(sp, name)(*args) == getattr(m, name)(*args), op
            same()
        sp.file.close()
    check()


def test_find_behind_the_position_stops_at_the_gap_there(tmp_path, corpus):
    """A search from an offset behind the position finds the gap at that offset, whatever the
    pointer looked at last (the review's case: a server stream that starts with a lost packet)."""
    store = store_of(tmp_path, corpus, "http__tcpflow__jpegs.cap")
    sp = StreamPointer(store_files(store)[1], 1)
    gap = sp.skip_gap()
    assert (gap.offset, gap.length) == (0, 1460) and sp.tell() == 1460
    text = bytes(sp.peek(200))[136:143]
    sp.peek(8)
    assert sp.find(b"\0\0\0\0", 601) == -1              # inside the gap: its zeros are no data
    assert sp.find(text, 0) == sp.find(text, 114) == -1  # across the gap
    assert sp.find(text, 1460) == sp.find(text) == 1460 + 136


def test_sizes_past_int64_mean_all_and_offsets_past_it_are_outside(tmp_path, corpus):
    store = store_of(tmp_path, corpus, "http__zeek__get.pcap")
    sp = StreamPointer(store_files(store)[0], 1)
    end = sp.end_offset
    sp.read(5)
    assert sp.skip(2**63 - 1) == sp.tell() == end and sp.eof      # not past the end, never negative
    assert sp.seek(0) == 0 and sp.skip(2**63 - 6) == end
    sp.seek(0)
    want = bytes(sp.peek())
    assert bytes(sp.peek(2**63)) == bytes(sp.peek_bytes(2**64)) == want and sp.tell() == 0
    assert bytes(sp.read_until(b"\r\n", 2**64)) == want[:want.index(b"\r\n") + 2]
    assert sp.find(b"HTTP", 2**70) == sp.find(b"HTTP", -2**70) == -1
    assert sp.find(b"\r\n\r\n", 0, 2**70) == want.find(b"\r\n\r\n")
    for offset in (2**64, -2**64, end + 1, -1):
        with pytest.raises(ValueError, match="outside the retained stream"):
            sp.seek(offset)
    with pytest.raises(ValueError, match="outside the stream"):
        sp.resume(2**64)
    import numpy
    sp.seek(0)
    assert bytes(sp.peek(numpy.int64(3))) == want[:3] and sp.seek(numpy.uint16(2)) == 2


@pytest.mark.parametrize("call", ["seek", "resume", "skip", "peek", "read", "peek_bytes", "read_bytes", "find_start",
                                  "find_end", "read_until_max"])
def test_offsets_and_sizes_are_integers(tmp_path, corpus, call):
    """As for range() or bytes.find: a float is a TypeError, never truncated."""
    store = store_of(tmp_path, corpus, "http__zeek__get.pcap")
    sp = StreamPointer(store_files(store)[0], 1)
    sp.read(4)
    with pytest.raises(TypeError, match="'float' object cannot be interpreted as an integer"):
        {"find_start": lambda: sp.find(b"x", 1.5), "find_end": lambda: sp.find(b"x", 0, 9.5),
         "read_until_max": lambda: sp.read_until(b"\n", 9.5)}.get(call, lambda: getattr(sp, call)(1.5))()
    assert sp.tell() == 4


def test_an_empty_delimiter_is_a_mistake(tmp_path, corpus):
    store = store_of(tmp_path, corpus, "http__zeek__get.pcap")
    sp = StreamPointer(store_files(store)[0], 1)
    for delim in (b"", memoryview(b""), bytearray()):
        with pytest.raises(ValueError, match="empty delimiter"):
            sp.read_until(delim)
    sp.skip()
    with pytest.raises(ValueError, match="empty delimiter"):
        sp.read_until(b"")                               # at the end too: the mistake is the same


def test_a_file_cut_inside_a_gap_shows_what_it_lacks_after_the_gap_as_a_truncated_gap(tmp_path):
    """A file cut inside a gap (its data region shorter than the gap): the gap is passed whole,
    and the bytes after it that the file lacks are a gap of reason "truncated", up to the end
    the header says; then there is nothing more to meet."""
    from flowsift.streams import format as F
    path = hand_made_file(tmp_path / "c00000007.rec", bytes(1460) + b"x" * 1224, [(0, 1460, 2)])
    os.truncate(path, F.DATA_OFF[1] + 1342)
    sp = StreamPointer(path, 1)
    assert sp.end_offset == 2684 and sp.file.missing and sp.closed and not sp.eof
    gap = sp.skip_gap()
    assert (gap.offset, gap.length, gap.reason) == (0, 1460, "closed") and sp.available == 0
    gap = sp.skip_gap()
    assert (gap.offset, gap.length, gap.reason) == (1460, 1224, "truncated") and sp.tell() == 2684 == sp.end_offset
    assert sp.at_gap is None and sp.next_gap is None and sp.skip_gap() is None and sp.eof


@pytest.mark.parametrize("call", ["skip", "peek", "read", "peek_bytes", "read_bytes", "read_until_max"])
def test_a_negative_size_is_a_mistake(tmp_path, corpus, call):
    """It read as "all there is": skip(-5) passed every byte available, peek(-1) returned them.
    All there is is asked for with no size (None)."""
    store = store_of(tmp_path, corpus, "http__zeek__get.pcap")
    sp = StreamPointer(store_files(store)[0], 1)
    sp.read(4)
    fn = (lambda n: sp.read_until(b"\n", n)) if call == "read_until_max" else getattr(sp, call)
    name = call.replace("_max", "")
    for n in (-1, -5, -2**70):
        with pytest.raises(ValueError, match=re.escape(f"{name}({n}): a size is 0 or more (None: all there is)")):
            fn(n)
    assert sp.tell() == 4
    whole = sp.available
    if call == "skip":
        assert fn(None) == sp.tell() == 4 + whole
    elif call == "read_until_max":
        line = fn(None)
        assert bytes(line).endswith(b"\n") and sp.tell() == 4 + len(line)
    else:
        assert len(fn(None)) == whole and sp.tell() == (4 if call.startswith("peek") else 4 + whole)


def test_a_pointer_no_chain_handed_out_refuses_replace(tmp_path, corpus):
    """Every pointer has replace(): one a tool opens on a record file refuses it (it was an
    AttributeError), its arguments checked as a writing module's are."""
    sp = StreamPointer(store_files(store_of(tmp_path, corpus, "http__zeek__get.pcap"))[0], 0)
    r = sp.replace(0, b"X")
    assert not r and r.reason == "edits need a chain run by the gateway"
    with pytest.raises(TypeError, match="stream.replace: offset is a str"):
        sp.replace("0", b"X")
    assert bytes(sp.peek(1)) != b"X"
