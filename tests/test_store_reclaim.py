"""ACK tracking and reclaiming: space goes back only for records every module finished and the
receiver acknowledged; --keep keeps everything; offsets stay valid."""
import json
import os

import pytest

from flowsift.gateway import Gateway
from flowsift.streams import RecordFile, StreamPointer, store_files
from conftest import run_cli

SEEK_DATA, SEEK_HOLE = 3, 4


def data_extents(path, start, end):
    """(offset, length) runs of real data in [start, end) of a sparse file."""
    fd = os.open(path, os.O_RDONLY)
    runs, pos = [], start
    try:
        while pos < end:
            try:
                d = os.lseek(fd, pos, SEEK_DATA)
            except OSError:
                break
            if d >= end:
                break
            h = min(os.lseek(fd, d, SEEK_HOLE), end)
            runs.append((d - start, h - d))
            pos = h
    finally:
        os.close(fd)
    return runs


@pytest.fixture
def gateway_run(tmp_path, corpus):
    def run(keep):
        g = Gateway(tmp_path / ("keep" if keep else "reclaim"), keep=keep)
        g.store.register_module(3)
        g.run_capture(corpus / "http__zeek__206_example_b.pcap")
        return g
    return run


def test_nothing_goes_back_before_modules_are_done(gateway_run):
    g = gateway_run(keep=False)
    path = store_files(g.store_dir)[0]
    state = g.store.reclaim(0)
    assert state["complete"] == 0 and state["reclaimed"] == [0, 0]


def test_done_and_acknowledged_bytes_are_punched_out_offsets_stay(gateway_run):
    g = gateway_run(keep=False)
    path = store_files(g.store_dir)[0]
    with RecordFile(path) as rf:
        n, end1, acked1 = rf.header["records"], rf.header["end1"], rf.header["acked1"]
        tail = rf.data(1, end1 - 1000, 1000)
    half = g.store.module_done(0, 3, n // 2)
    assert half["complete"] == n // 2 and 0 < half["reclaimed"][1] < end1
    done = g.store.module_done(0, 3, n)
    assert done["complete"] == n
    with RecordFile(path) as rf:
        h = rf.header
        # the client acknowledged only part of the server's bytes (the connection was reset):
        # space goes back up to the acknowledgement, page by page, and no further
        assert acked1 < end1
        assert h["reclaimed1"] == done["reclaimed"][1] == acked1 // 4096 * 4096
        assert all(r.modules & (1 << 3) for r in rf.records())
        # the punched range reads as a hole; what is left keeps its offset
        assert data_extents(path, h["data_off1"], h["data_off1"] + h["reclaimed1"]) == []
        assert rf.data(1, end1 - 1000, 1000) == tail
    sp = StreamPointer(path, 1)
    assert sp.tell() == done["reclaimed"][1]          # a reader starts at what is retained
    with pytest.raises(ValueError):
        sp.seek(0)



def test_a_reader_resumed_below_what_was_given_back_meets_it_as_a_gap(gateway_run):
    """resume() may stand below the retained start (a reader that stood there before its file
    was closed): the punched bytes it never read are a gap, never zeros shown as data."""
    g = gateway_run(keep=False)
    path = store_files(g.store_dir)[0]
    with RecordFile(path) as rf:
        n = rf.header["records"]
    start = g.store.module_done(0, 3, n)["reclaimed"][1]
    with RecordFile(path) as rf:
        rest = rf.data(1, start, 100)
    sp = StreamPointer(path, 1)
    assert sp.resume(10) == 10 and sp.available == 0 and len(sp.peek(8)) == 0 and sp.read_until(b"\r\n") is None
    gap = sp.at_gap
    assert gap == sp.next_gap and (gap.offset, gap.length, gap.reason) == (10, start - 10, "reclaimed")
    assert sp.find(b"HTTP", 10) == -1 and sp.skip_gap() == gap and sp.tell() == start
    assert sp.at_gap is None and bytes(sp.read(100)) == rest

def test_keep_keeps_everything(gateway_run):
    g = gateway_run(keep=True)
    path = store_files(g.store_dir)[0]
    with RecordFile(path) as rf:
        n, end1 = rf.header["records"], rf.header["end1"]
    state = g.store.module_done(0, 3, n)
    assert state["complete"] == n and state["reclaimed"] == [0, 0]
    with RecordFile(path) as rf:
        assert rf.header["flags"] & 2 and rf.data(1, 0, 10) == StreamPointer(path, 1).peek(10).tobytes()


def test_oldest_unacked_done_record(gateway_run):
    g = gateway_run(keep=True)
    path = store_files(g.store_dir)[0]
    with RecordFile(path) as rf:
        n = rf.header["records"]
    state = g.store.module_done(0, 3, n)
    with RecordFile(path) as rf:
        h = rf.header
        i = h["oldest_unacked_done"]
        assert i == state["oldest_unacked_done"] < n
        recs = list(rf.records())
        # the first record done by every module whose bytes the receiver has not acknowledged
        assert recs[i].stream_offset + recs[i].payload_len > h[f"acked{recs[i].dir}"]
        assert all(r.stream_offset + r.payload_len <= h[f"acked{r.dir}"] for r in recs[:i] if r.payload_len)


def test_finished_connections_are_retired(tmp_path, corpus):
    """A closed connection that every module finished and whose bytes were all acknowledged
    leaves the store; one with unacknowledged bytes stays (it may have to be replayed)."""
    g = Gateway(tmp_path / "s")
    g.store.register_module(0)
    g.run_capture(corpus / "http__pcpp__three_http_streams.pcap")
    files = store_files(g.store_dir)
    assert len(files) == 3
    for conn in range(3):
        with RecordFile(files[conn]) as rf:
            n = rf.header["records"]
        state = g.store.module_done(conn, 0, n)
        assert state["retired"]
    assert store_files(g.store_dir) == [] and g.store.counters()["retired"] == 3
    g2 = Gateway(tmp_path / "s2")
    g2.store.register_module(0)
    g2.run_capture(corpus / "http__zeek__206_example_b.pcap")      # reset before all bytes were ACKed
    with RecordFile(store_files(g2.store_dir)[0]) as rf:
        n = rf.header["records"]
    assert not g2.store.module_done(0, 0, n)["retired"]
    assert os.path.exists(os.path.join(g2.store_dir, "c00000000.rec"))


def test_a_chain_summary_counts_what_its_last_reports_gave_back(corpus):
    """Files retired as the modules' last reports come in, after the source ended, are in the
    summary too (three connections, all bytes acknowledged: all three files go)."""
    from flowsift.chain import run_chain
    summary = run_chain("counter", str(corpus / "http__pcpp__three_http_streams.pcap"))
    assert summary["files"] == 3 and summary["retired"] == 3


@pytest.mark.parametrize("inline", [False, True])
def test_a_chain_leaves_only_the_files_it_did_not_retire(tmp_path, corpus, inline, monkeypatch):
    """Retired files are removed while the chain runs -- by the writer thread, with the next
    batch, when the modules run in workers -- and none is left behind at the end."""
    from flowsift.chain import run_chain
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")      # many batches: files retire during the run
    summary = run_chain("counter", str(corpus / "http__csanders__http_espn.pcapng"), store=str(tmp_path / "s"),
                        inline=inline)
    assert summary["mode"] == ("inline" if inline else "parallel")
    assert summary["retired"] > 10
    assert len(store_files(tmp_path / "s")) == summary["files"] - summary["retired"]


def test_in_the_background_the_writer_removes_retired_files_with_the_next_batch(tmp_path, corpus):
    """Writing in the background, a retire does not wait for the writer: the file goes with the
    batch handed over next (after what the batches before it wrote)."""
    g = Gateway(tmp_path / "s")
    g.store.register_module(0)
    g.run_capture(corpus / "http__pcpp__three_http_streams.pcap")
    g.store.set_background(True)
    try:
        for conn in range(3):
            assert g.store.module_done(conn, 0, g.store.latest([conn])[0][0])["retired"]
        assert len(store_files(g.store_dir)) == 3           # not yet: they wait for the next batch
        g.store.hand_over()
        g.store.wait()
        assert store_files(g.store_dir) == [] and g.store.counters()["retired"] == 3
    finally:
        g.store.set_background(False)


def test_an_ended_connections_bits_wait_for_its_last_module(tmp_path, corpus):
    """A module done with the whole of an ended connection that other modules still read: its
    bit waits in memory and goes into the records with the last module's, in one pass (or
    never, if the file is retired then); settle_bits writes those whose last module never came."""
    g = Gateway(tmp_path / "s", keep=True)
    for bit in (0, 1, 2):
        g.store.register_module(bit)
    g.run_capture(corpus / "http__pcpp__three_http_streams.pcap")
    files = store_files(g.store_dir)
    n = [g.store.latest([c])[0][0] for c in range(3)]

    def bits(path):
        with RecordFile(path) as rf:
            return {r.modules for r in rf.records()}

    assert g.store.module_done(0, 0, n[0])["deferred"] and g.store.module_done(0, 1, n[0])["deferred"]
    assert bits(files[0]) == {0}                          # not in the file yet
    assert g.store.module_done(0, 2, n[0])["complete"] == n[0]
    assert bits(files[0]) == {0b111}                      # all three, with the last one
    assert g.store.module_done(1, 1, n[1])["deferred"]
    assert g.store.module_done(2, 0, n[2] - 1)["complete"] == 0    # part of it: written at once
    assert bits(files[2]) == {0b001, 0}
    assert g.store.settle_bits() == 1 and bits(files[1]) == {0b010}
    assert g.store.settle_bits() == 0


def test_a_retired_connection_never_gets_its_waiting_bits(tmp_path, corpus):
    g = Gateway(tmp_path / "s")
    g.store.register_module(0)
    g.store.register_module(1)
    g.run_capture(corpus / "http__pcpp__three_http_streams.pcap")
    n = g.store.latest([0])[0][0]
    assert g.store.module_done(0, 1, n)["deferred"]
    assert g.store.module_done(0, 0, n)["retired"]
    assert g.store.settle_bits() == 0 and len(store_files(g.store_dir)) == 2


def test_files_a_chain_leaves_hold_every_modules_bits(tmp_path, corpus):
    """The connection was reset before all its bytes were acknowledged: its file stays, with
    the bits of both modules in every record."""
    from flowsift.chain import run_chain
    summary = run_chain("http,counter", str(corpus / "http__zeek__206_example_b.pcap"), store=str(tmp_path / "s"))
    left = store_files(tmp_path / "s")
    assert len(left) == 1 and summary["files"] - summary["retired"] == 1
    with RecordFile(left[0]) as rf:
        assert {r.modules for r in rf.records()} == {0b11}


def test_files_kept_for_unacknowledged_bytes_are_bounded_oldest_first(tmp_path, corpus):
    """A one-sided capture: no byte of its 284 connections was acknowledged, so every file would
    stay. With a bound of 3, the files kept are the last three finished; the others went in the
    order they were finished, counted, and a late report of one that went says it went."""
    g = Gateway(tmp_path / "s", unacked_files=3)
    g.store.forget_retired = False      # (as with a registry, whose modules may report late)
    g.store.register_module(0)
    g.run_capture(corpus / "midstream__pcpp__650HttpResponses.pcap")
    files = store_files(g.store_dir)
    assert len(files) == 284
    order = [17, 3, 250, 99, 0, 141, 8]
    for k, conn in enumerate(order):
        state = g.store.module_done(conn, 0, g.store.latest([conn])[0][0])
        assert not state["retired"]
        kept = order[max(0, k - 2):k + 1]
        left = {int(os.path.basename(f)[1:9]) for f in store_files(g.store_dir)}
        assert left & set(order[:k + 1]) == set(kept) and len(left) == 284 - (k + 1 - len(kept))
    c = g.store.counters()
    assert (c["unacked_kept"], c["unacked_retired"], c["retired"]) == (3, 4, 4)
    assert g.store.module_done(17, 0, 1)["retired"]          # gone already: not a KeyError


@pytest.mark.parametrize("mode", ["inline", "parallel", "shards"])
def test_a_chain_keeps_at_most_unacked_files(tmp_path, corpus, mode):
    from flowsift.chain import run_chain
    kw = {"inline": True} if mode == "inline" else {"shards": 2} if mode == "shards" else {}
    if mode != "shards":
        kw["store"] = str(tmp_path / "s")
    summary = run_chain("counter", str(corpus / "midstream__pcpp__650HttpResponses.pcap"), unacked_files=50, **kw)
    assert summary["files"] == 284 and summary["unacked_kept"] == (100 if mode == "shards" else 50)
    assert summary["unacked_retired"] == 284 - summary["unacked_kept"] == summary["retired"]
    if mode != "shards":
        assert len(store_files(tmp_path / "s")) == 50
    unbounded = run_chain("counter", str(corpus / "midstream__pcpp__650HttpResponses.pcap"))
    assert (unbounded["unacked_kept"], unbounded["unacked_retired"]) == (284, 0)


@pytest.mark.parametrize("args,says", [
    (["chain", "counter", "{cap}", "--unacked-files", "-1"], "--unacked-files -1: a number of files, 0 or more"),
    (["chain", "counter", "{cap}", "--unacked-files", "5", "--keep"], "with --keep (or -w) every file stays"),
    (["gateway", "{cap}", "--unacked-files", "5"], "the gateway alone gives nothing back"),
])
def test_unacked_files_refused_where_it_bounds_nothing(corpus, args, says):
    r = run_cli(*[a.format(cap=corpus / "midstream__pcpp__650HttpResponses.pcap") for a in args])
    assert r.returncode == 2 and r.stdout == "" and says in r.stderr and len(r.stderr.splitlines()) == 1


def test_unacked_files_from_the_command_line(tmp_path, corpus):
    r = run_cli("chain", "counter", str(corpus / "midstream__pcpp__650HttpResponses.pcap"), "--store",
                str(tmp_path / "s"), "--unacked-files", "0", "--events", os.devnull, "--json", check=True)
    summary = json.loads(r.stdout)
    assert (summary["unacked_kept"], summary["unacked_retired"]) == (0, 284) and store_files(tmp_path / "s") == []


def test_inspect_shows_what_was_given_back_as_not_there_to_read(tmp_path, corpus, monkeypatch):
    """Bytes below `reclaimed` read as zeros: inspect listed neither them among the gaps nor
    apart from the bytes delivered, so a reader going by it took 49 KB of zeros for data. Every
    range it lists as a gap is one stream_bytes will not read, and every other one it reads."""
    store = tmp_path / "s"
    run_cli("chain", "counter", corpus / "trunc__suri__tcp-rst-unacked-stream-10.pcap", "--store", store,
            "--events", os.devnull, check=True)
    path = store / "c00000000.rec"
    s2c = json.loads(run_cli("inspect", path, "--json", check=True).stdout)["streams"][1]
    assert (s2c["end"], s2c["reclaimed"], s2c["delivered"]) == (58760, 49152, 52320)
    assert s2c["gaps"] == [[0, 35576, "reclaimed"], [35576, 1288, "acked"], [36864, 12288, "reclaimed"],
                           [51032, 1288, "acked"], [52320, 3864, "closed"]]
    assert s2c["readable"] == 58760 - 35576 - 1288 - 12288 - 1288 - 3864
    with RecordFile(path) as rf:
        pos = 0
        for off, length, _ in s2c["gaps"] + [[s2c["end"], 0, None]]:
            if off > pos:
                assert rf.stream_bytes(1, pos, off - pos) is not None
            if length:
                assert rf.stream_bytes(1, off, 1) is None and rf.stream_bytes(1, off + length - 1, 1) is None
            pos = off + length
    listing = json.loads(run_cli("inspect", store, "--json", check=True).stdout)["connections"]
    assert listing[0]["readable"] == [771, s2c["readable"]] and listing[0]["delivered"] == [771, 52320]
    monkeypatch.setenv("COLUMNS", "300")
    assert "0+35576 (reclaimed)" in run_cli("inspect", path, check=True).stdout
