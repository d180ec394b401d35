"""The store under bad conditions: unwritable, full, killed mid-write, cut, another version."""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import run_cli, small_tmpfs
from pcapgen import A, B, ether, ipv4, pcap, tcp
from flowsift.streams import RecordFile, StoreError, StreamPointer, store_files
from flowsift.streams import format as F


def many_connections(path, n, payload=b"x" * 200, start=1_700_000_000, block=1000, long_lived=False):
    """n short TCP connections (SYN, SYN-ACK, data, FIN, FIN), interleaved by blocks of `block`
    so that many are open at once. With `long_lived`, one more connection (to port 8080) opens
    first and sends a segment in every block: it is open until the end."""
    def seg(src, dst, seq, ack, fl, pl=b""):
        return ether(ipv4(src[0], dst[0], 6, tcp(src[1], dst[1], seq=seq, ack=ack, flags=fl, payload=pl)))
    frames = []
    lc, ls = (A, 999), (bytes([10, 2, 0, 1]), 8080)
    if long_lived:
        frames.append((start - 1, 0, seg(lc, ls, 100, 0, 0x02)))
        frames.append((start - 1, 1, seg(ls, lc, 500, 101, 0x12)))
    for b0 in range(0, n, block):
        ends = [((A, 1024 + i % 60000), (bytes([10, 1, (i // 60000) & 255, 1]), 80)) for i in range(b0, min(n, b0 + block))]
        t = start + b0 // block
        for k, (c, s) in enumerate(ends):
            frames.append((t, k, seg(c, s, 100, 0, 0x02)))
        for k, (c, s) in enumerate(ends):
            frames.append((t, 2000 + k, seg(s, c, 500, 101, 0x12)))
        for k, (c, s) in enumerate(ends):
            frames.append((t, 4000 + k, seg(c, s, 101, 501, 0x18, payload)))
        for k, (c, s) in enumerate(ends):
            frames.append((t, 6000 + k, seg(c, s, 101 + len(payload), 501, 0x11)))
        for k, (c, s) in enumerate(ends):
            frames.append((t, 8000 + k, seg(s, c, 501, 102 + len(payload), 0x11)))
        if long_lived:
            frames.append((t, 9999, seg(lc, ls, 101 + b0 // block, 501, 0x18, b"k")))
    path.write_bytes(pcap(frames))
    return path


def one_line(res, needle):
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr


def test_a_store_directory_holding_an_earlier_store_is_refused(tmp_path, corpus):
    """Record files of an earlier run would be read as this run's (inspect, replay --store):
    a second gateway or chain into the same store is one line, exit 2, and the kept store is
    left as it was."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "http__pcpp__three_http_streams.pcap", "--store", store, "--keep", check=True)
    def state():    # (record files are sparse, terabytes long: their mtime and header say enough)
        return {p.name: (p.stat().st_mtime_ns, p.open("rb").read(4096)) for p in store.iterdir() if p.is_file()}
    before = state()
    n = sum(1 for name in before if name.endswith(".rec"))
    for cmd in (["gateway", corpus / "http__zeek__get.pcap"], ["chain", "counter", corpus / "http__zeek__get.pcap"]):
        one_line(run_cli(*cmd, "--store", store), f"holds an earlier store ({n} record files)")
    assert n > 0 and state() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "unrelated.txt").write_text("x")
    (empty / "notes.rec").write_text("x")                       # (not named as a record file)
    run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", empty, check=True)


def test_store_path_that_cannot_be_a_directory(tmp_path, corpus):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line(run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", blocker / "store"), "cannot create the store")


GOOD = pcap([(1, 0, ether(ipv4(A, B, 6, tcp(1, 2, payload=b"x" * 50))))] * 3)


def _bad_captures(tmp_path):
    """(path, what the line says) of captures that cannot be read."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "e.pcap").write_bytes(b"")
    (d / "t.txt").write_text("hello\n")
    (d / "dir").mkdir()
    absurd = bytearray(GOOD)
    struct.pack_into("<I", absurd, 24 + 8, 70_000_000)        # the first record's caplen
    (d / "a.pcap").write_bytes(bytes(absurd))
    return [(d / "nope.pcap", "no such file"), (d / "e.pcap", "empty file"), (d / "t.txt", "not a capture file"),
            (d / "dir", "is a directory"), ("/dev/null", "not a regular file"), (d / "a.pcap", "caplen 70000000")]


@pytest.mark.parametrize("command", [["gateway"], ["chain", "counter"], ["chain", "counter", "--inline"]])
def test_a_capture_that_cannot_be_read_leaves_no_store_to_refuse_the_run_again(tmp_path, corpus, command):
    """A store left by a run that never read a packet refused the same run once its capture was
    put right (a store is one run's): the capture is opened before the store is made, and a
    store of nothing this run made goes when it fails (one whose first record is corrupt)."""
    store = tmp_path / "store"
    for bad, why in _bad_captures(tmp_path):
        res = run_cli(*command, bad, "--store", store)
        # (one line; after the summary of what was read where reading stopped at a defect)
        assert res.returncode == 2 and why in res.stderr.strip().splitlines()[-1], res.stderr
        assert not store.exists(), bad
    run_cli(*command, corpus / "http__zeek__get.pcap", "--store", store, check=True)
    assert (store / "store.json").exists()


def test_the_default_store_of_a_gateway_that_cannot_read_its_capture_is_not_left_in_dev_shm(tmp_path):
    nope = tmp_path / "nope.pcap"
    one_line(run_cli("gateway", nope), "no such file")
    for manifest in Path("/dev/shm").glob("flowsift-store-*/store.json"):
        try:
            assert str(nope) not in manifest.read_text(), manifest.parent
        except OSError:
            pass                    # (another run's, gone meanwhile)


@pytest.mark.parametrize("spec", ["nat", "nat(to=bogus)", "redact(pattern=)", "redact(pattern=*)", "strsearch",
                                  "http(x=1)", "counter,strsearch"])
@pytest.mark.parametrize("mode", [[], ["--inline"]])
def test_a_module_that_refuses_its_options_leaves_no_store_and_no_output(tmp_path, corpus, spec, mode):
    """An option a module's __init__ refuses (a required one missing, a value it cannot use) is
    said before the store is made and -w opened, as one the chain's parser refuses is."""
    out = tmp_path / "out"
    out.mkdir()
    res = run_cli("chain", spec, corpus / "http__zeek__get.pcap", *mode, "--store", out / "store", "-w", out / "o.pcap")
    one_line(res, "module ")
    assert sorted(os.listdir(out)) == []


def test_a_source_that_does_not_open_leaves_no_store_made_for_it(tmp_path):
    """A live source is opened as the run starts reading (its ring would fill meanwhile): one
    that does not open leaves no store of nothing behind, and a --store directory that was
    there keeps what it held and stays."""
    made, there = tmp_path / "made", tmp_path / "there"
    there.mkdir()
    (there / "notes.txt").write_text("mine")
    for command in (["gateway"], ["chain", "counter"], ["chain", "counter", "--keep"]):
        for store in (made, there):
            res = run_cli(*command, "afpacket:nosuch0", "--store", store)
            assert res.returncode == 2 and "afpacket:nosuch0" in res.stderr, res.stderr
            assert not made.exists()
            assert sorted(os.listdir(there)) == ["notes.txt"] and (there / "notes.txt").read_text() == "mine"


def test_full_store_is_one_line_and_nothing_looks_complete(tmp_path, corpus):
    with small_tmpfs(tmp_path, "256k") as mnt:
        res = run_cli("gateway", corpus / "http__zeek__206_example_b.pcap", "--store", mnt / "s")
        one_line(res, "store is full")
        manifest = json.loads((mnt / "s" / "store.json").read_text())
        assert manifest["complete"] is False and "full" in manifest["error"]
        for path in store_files(mnt / "s"):
            with RecordFile(path) as rf:
                assert not rf.closed_by_gateway and rf.cut


def test_other_format_version_is_named(tmp_path, corpus):
    store = tmp_path / "s"
    run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", store, "--keep", check=True)
    path = store_files(store)[0]
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 3))
    one_line(run_cli("inspect", path), "version 3; this flowsift reads version 2")


def test_not_a_record_file(tmp_path):
    p = tmp_path / "junk.rec"
    p.write_bytes(b"\0" * 5000)
    one_line(run_cli("inspect", p), "not a flowsift record file")
    p.write_bytes(b"FSREC")
    one_line(run_cli("inspect", p), "cut short: 5 bytes")


def test_a_file_shorter_than_the_header_is_named_by_what_its_bytes_say(tmp_path, corpus):
    """The magic, then the version, then the length: a 100-byte text file, or a cut file of
    another version, was "cut short"."""
    p = tmp_path / "junk.rec"
    for text in (b"short", b"hello, this is not a record file\n" * 3):
        p.write_bytes(text)
        one_line(run_cli("inspect", p), "not a flowsift record file")
    store = tmp_path / "s"
    run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", store, "--keep", check=True)
    with open(store_files(store)[0], "rb") as f:
        head = f.read(100)
    p.write_bytes(head[:8] + struct.pack("<I", 3) + head[12:])
    one_line(run_cli("inspect", p), "version 3; this flowsift reads version 2")
    p.write_bytes(head)
    one_line(run_cli("inspect", p), "cut short: 100 bytes, the header alone is 256")


def test_file_cut_by_hand_reads_up_to_the_last_complete_record(tmp_path, corpus):
    store = tmp_path / "s"
    run_cli("gateway", corpus / "http__zeek__206_example_b.pcap", "--store", store, "--keep", check=True)
    path = store_files(store)[0]
    with RecordFile(path) as rf:
        total = rf.header["records"]
    os.truncate(path, 256 + 128 * 100 + 50)          # in the middle of record 100
    with RecordFile(path) as rf:
        assert rf.cut and rf.header["records"] == 100 == len(list(rf.records()))
        for d in (0, 1):                # the data regions are gone: each stream is one gap
            end = rf.header[f"end{d}"]
            assert end > 0 and rf.in_file(d) == 0 == rf.delivered(d)
            assert [(g.offset, g.length, g.reason) for g in rf.gaps(d)] == [(0, end, "truncated")]
    res = run_cli("inspect", path, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["records"] == 100 < total


def test_gateway_killed_mid_write_leaves_readable_files(tmp_path):
    capture = many_connections(tmp_path / "many.pcap", 60_000, long_lived=True)
    store = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "flowsift", "gateway", str(capture), "--store", str(store), "--keep"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30

    def first_closed():
        with RecordFile(store_files(store)[1]) as rf:      # [0] is the long-lived one
            return rf.closed_by_gateway
    # killed once some connections are complete, and more than a batch's worth of files is in place
    # (the long-lived connection is in place and open: cut)
    while time.time() < deadline and not (store.exists() and len(store_files(store)) >= 2000 and first_closed()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    files = store_files(store)
    assert 2000 <= len(files) < 60_000
    closed, cut = 0, []
    for path in files:
        with RecordFile(path) as rf:
            recs = list(rf.records())
            assert len(recs) == rf.header["records"]
            assert all(r.record_id == (rf.header["first_record_id"] + r.index) % 2**64 for r in recs)
            if rf.closed_by_gateway:
                closed += 1
                assert len(recs) == 5 and StreamPointer(rf, 0).read().tobytes() == b"x" * 200
            else:
                cut.append(path)
    assert closed > 0 and cut
    # files not yet in place when it died are named as such by inspect STORE
    left = sorted(n for n in os.listdir(store) if n.endswith(".rec.new"))
    res = run_cli("inspect", store, "--json")
    problems = json.loads(res.stdout)["problems"]
    assert [p.split(":")[0] for p in problems if "not in place" in p] == left
    res = run_cli("inspect", cut[-1])
    assert res.returncode == 0 and ("cut" in res.stdout or "open or cut" in res.stdout)


def kept_run(store, capture, threaded):
    """A gateway with --keep over `capture`, with its writer thread or (an inline chain reading
    each batch) without: (gateway, summary)."""
    from flowsift.gateway import Gateway
    g = Gateway(store, keep=True)
    summary = g.run_capture(capture, after_batch=None if threaded else (lambda touched, closed: None))
    assert (g.store.background_drains > 0) is threaded
    return g, summary


def test_standalone_gateway_writes_on_a_thread_and_a_chain_does_not(tmp_path, corpus):
    """The writer thread runs only when nobody in the process reads the store during the run;
    either way every file is complete when run_capture returns."""
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        for threaded in (True, False):
            g, summary = kept_run(shm / f"s{threaded}", corpus / "http__zeek__206_example_b.pcap", threaded)
            files = store_files(shm / f"s{threaded}")
            assert len(files) == summary["files"] > 0
            for path in files:
                with RecordFile(path) as rf:
                    assert rf.closed_by_gateway and len(list(rf.records())) == rf.header["records"] > 0
    finally:
        shutil.rmtree(shm)


def _store_content(directory):
    # every file's header, records, gaps and bytes, but the random record IDs
    out = {}
    for path in store_files(directory):
        with RecordFile(path) as rf:
            h = {k: v for k, v in rf.header.items() if k != "first_record_id"}
            recs = [r._replace(record_id=0) for r in rf.records()]
            out[os.path.basename(path)] = (h, recs, rf.gaps(), rf.data(0), rf.data(1))
    return out


def test_the_gateway_writes_runs_of_the_writer_threads_batch_while_it_waits(tmp_path, monkeypatch):
    """Waiting for the writer thread, the gateway writes runs of the same batch (the two take
    the next run in turn): the files are byte for byte those of a store written without the
    thread, record IDs aside."""
    capture = many_connections(tmp_path / "many.pcap", 6000, block=3000, long_lived=True)
    monkeypatch.setenv("FLOWSIFT_BATCH", "65536")       # the whole capture in one batch: thousands of runs
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        stores = {}
        for threaded in (True, False):
            g, summary = kept_run(shm / f"s{threaded}", capture, threaded)
            assert (g.store.gateway_runs > 0) is threaded
            stores[threaded] = _store_content(shm / f"s{threaded}")
            assert len(stores[threaded]) == summary["files"] == 6001
        assert stores[True] == stores[False]
    finally:
        shutil.rmtree(shm)


def test_a_batch_larger_than_the_arena_bound_is_written_as_it_was_read(tmp_path, monkeypatch):
    """One batch of 40 MB (full-size segments of a bulk transfer, all in one batch) passes the
    staging arena's bound: what it holds so far is written mid-batch, by the writer thread when
    there is one, and every byte lands where it belongs."""
    c, s = (A, 40000), (B, 443)
    n, size = 28_000, 1448
    frames = [(1_700_000_000, 0, ether(ipv4(c[0], s[0], 6, tcp(c[1], s[1], seq=99, ack=0, flags=0x02)))),
              (1_700_000_000, 1, ether(ipv4(s[0], c[0], 6, tcp(s[1], c[1], seq=499, ack=100, flags=0x12))))]
    for i in range(n):
        payload = (i % 251).to_bytes(1, "big") * size
        frames.append((1_700_000_001, i, ether(ipv4(s[0], c[0], 6, tcp(s[1], c[1], seq=500 + i * size, ack=100,
                                                                        flags=0x18, payload=payload)))))
    capture = tmp_path / "bulk.pcap"
    capture.write_bytes(pcap(frames))
    monkeypatch.setenv("FLOWSIFT_BATCH", "65536")
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        for threaded in (True, False):
            kept_run(shm / f"s{threaded}", capture, threaded)
            with RecordFile(store_files(shm / f"s{threaded}")[0]) as rf:
                data = rf.data(1)
            assert len(data) == n * size
            assert all(data[i * size] == data[i * size + size - 1] == i % 251 for i in range(n))
    finally:
        shutil.rmtree(shm)


def test_readers_in_other_processes_hear_of_each_batch_once_it_is_written(tmp_path, monkeypatch):
    """after_written (a chain of worker processes): batches are written on the thread, gathered
    while it is busy, and told in order once in the files; commits made meanwhile are recorded
    when the writer is idle, and a file goes only once its end is written."""
    from flowsift.gateway import Gateway
    from flowsift.streams.format import HF_CLOSED
    capture = many_connections(tmp_path / "many.pcap", 3000, block=300, long_lived=True)
    monkeypatch.setenv("FLOWSIFT_BATCH", "128")
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        g = Gateway(shm / "s")
        bit, _ = g.registry.register("reader")
        g.registry.hold = True

        class Reader:
            told, batches = [], 0

            def snapshot(self, touched, closed):
                conns = list(dict.fromkeys([*touched, *closed]))
                return dict(zip(conns, g.store.published(conns)))

            def process(self, touched, closed, published):
                Reader.batches += 1
                for c, (records, *_) in published.items():
                    with RecordFile(g.store.path(c)) as rf:      # still there, holding what it is told
                        assert rf.header["records"] >= records
                        if c in closed:
                            assert rf.header["flags"] & HF_CLOSED and rf.header["records"] == records
                    Reader.told.append(c)
                for c in closed:
                    g.registry.commit(bit, c, published[c][0])   # done: recorded when the writer is idle

        summary = g.run_capture(capture, after_written=Reader())
        g.registry.flush()                   # the commits made for the last batch
        summary.update(retired=g.store.retired)
        assert Reader.batches == -(-summary["packets"] // 128) + 1          # every batch, and the end
        assert 0 < g.store.background_drains < Reader.batches                # some were gathered
        assert set(Reader.told) == set(range(summary["files"]))
        left = store_files(shm / "s")
        assert summary["retired"] + len(left) == summary["files"] and summary["retired"] > 2500
    finally:
        shutil.rmtree(shm)


def test_a_forked_child_does_not_wait_for_its_parents_writer_thread(tmp_path, corpus):
    """A child forked while the parent's store has its writer thread (chain workers are forked)
    lets go of its copy of the store without waiting for a thread it does not have."""
    import gc
    from flowsift.streams._store import RecordStore
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        store = RecordStore(str(shm / "s"))
        store.set_background(True)
        store.publish()                     # starts the thread (an empty batch)
        pid = os.fork()
        if pid == 0:                        # the child: stop writing in the background, then leave
            try:
                store.set_background(False)
            finally:
                os._exit(0)
        deadline = time.time() + 10
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung waiting for its parent's writer thread")
        assert os.waitstatus_to_exitcode(status) == 0
        store.set_background(False)
        del store
        gc.collect()
    finally:
        shutil.rmtree(shm)


def test_a_failure_on_the_writer_thread_is_one_error_from_the_gateway(tmp_path):
    """The writer thread cannot raise: what it met (here: a new file that cannot be made, a
    directory being in its way) comes back as the gateway's error at the next batch, and the
    manifest says the store is incomplete."""
    from flowsift.errors import FlowsiftError
    from flowsift.gateway import Gateway
    capture = many_connections(tmp_path / "many.pcap", 5_000)
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        g = Gateway(shm / "s", keep=True)
        (shm / "s" / "c00003000.rec.new").mkdir()
        with pytest.raises(FlowsiftError, match="cannot write record file c00003000.rec: Is a directory"):
            g.run_capture(capture)
        assert g.store.background_drains > 0
        manifest = json.loads((shm / "s" / "store.json").read_text())
        assert manifest["complete"] is False and "c00003000" in manifest["error"]
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_a_store_directory_that_vanishes_is_one_line(tmp_path):
    from flowsift.errors import FlowsiftError
    from flowsift.gateway import Gateway
    capture = many_connections(tmp_path / "many.pcap", 5_000)
    g = Gateway(tmp_path / "s", keep=True)
    # (named by the store, or by the file it could not make or open again: whichever came first)
    with pytest.raises(FlowsiftError, match=r"/s(/c\d+\.rec)?: cannot"):
        g.run_capture(capture, on_progress=lambda pos, size: shutil.rmtree(tmp_path / "s", ignore_errors=True))


def test_a_store_filled_by_new_files_still_says_why(tmp_path):
    """Thousands of new connections fill a small store with pages their packets' bytes do not
    account for: the run stops in one line, and the manifest (rewritten in the page it holds)
    says why; files never put in place are not left behind."""
    cap = many_connections(tmp_path / "many.pcap", 20_000)
    with small_tmpfs(tmp_path, "24m") as mnt:
        res = run_cli("gateway", cap, "--store", mnt / "s")
        one_line(res, "store is full")
        manifest = json.loads((mnt / "s" / "store.json").read_text())
        assert manifest["complete"] is False and "full" in manifest["error"] and manifest["source"] == str(cap)
        assert not [p for p in (mnt / "s").iterdir() if p.name.endswith(".rec.new")]


def _quick_cli(*args, seconds=20):
    # a command that hung (reading a FIFO, counting 2^62 records) fails the test, not the suite
    try:
        return subprocess.run([sys.executable, "-m", "flowsift", *map(str, args)], capture_output=True, text=True,
                              timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flowsift {' '.join(map(str, args))} still running after {seconds} s")


def test_a_file_cut_while_a_reader_has_it_mapped_is_read_only_as_far_as_it_goes(tmp_path, corpus):
    """The gateway keeps a record file at its full sparse size, but a file can still be cut
    under a reader (by hand, a full disk): its next refresh measures the file, and the bytes the
    file lacks are a gap of reason "truncated" up to the end the header says; reading never goes
    past the file (SIGBUS)."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "http__zeek__206_example_b.pcap", "--store", store, "--keep", check=True)
    path = store_files(store)[0]
    code = f"""
import os
from flowsift.streams import StreamPointer, StoreError, format as F
sp = StreamPointer({str(path)!r}, 1)
whole, end = sp.available, sp.end_offset
assert bytes(sp.peek(4)) == b"HTTP" and whole > 100_000
os.truncate({str(path)!r}, F.DATA_OFF[1] + 100)
assert sp.refresh() is False and sp.end_offset == end and sp.file.truncated
assert "s2c bytes (100 in the file)" in sp.file.missing, sp.file.missing
assert len(sp.read()) == 100 and sp.find(b"HTTP", 0) == 0 and sp.read() == b""
gap = sp.at_gap
assert (gap.offset, gap.reason) == (100, "truncated") and not sp.eof
sp.seek(0); sp.skip(2**40)
assert sp.tell() == 100
os.truncate({str(path)!r}, 200)                   # into the header
try:
    sp.refresh()
except StoreError as e:
    print("error:", e)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (res.returncode, res.stderr)            # (-7: SIGBUS)
    assert res.stdout.strip() == f"error: {path}: cut short: 200 bytes, the header alone is 256"


# (field, offset and struct code in the header, value, what the error names)
BAD_HEADERS = [
    ("records", 40, "<Q", 2**62, "header field records is 4,611,686,018,427,387,904; the records region holds"),
    ("gaps", 48, "<Q", 2**62, "header field gaps is 4,611,686,018,427,387,904; the gaps region holds"),
    ("end0", 144, "<q", -5, "header field end0 is -5; a stream offset of direction 0 is 0 to 3,298,534,883,328"),
    ("end1", 152, "<q", 2**62, "header field end1 is 4,611,686,018,427,387,904"),
    ("reclaimed1", 184, "<q", -1, "header field reclaimed1 is -1"),
    ("header_size", 12, "<I", 512, "header field header_size is 512; version 2 has 256"),
    ("record_size", 16, "<I", 64, "header field record_size is 64; version 2 has 128"),
    ("records_off", 96, "<Q", 0, "header field records_off is 0; version 2 has 256"),
    ("gaps_off", 104, "<Q", 2**38, "header field gaps_off is 274,877,906,944"),
    ("data_off0", 112, "<Q", 2**62, "header field data_off0 is 4,611,686,018,427,387,904; version 2 has 1,099,511,627,776"),
    ("data_off1", 120, "<Q", 2**40, "header field data_off1 is 1,099,511,627,776"),
    ("gap entry", 48, "<Q", 3, "gap entry 0 (of 3 the header counts) is no gap: direction 0, offset 0, length 0"),
]


@pytest.mark.parametrize("field,offset,code,value,needle", BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_a_header_that_does_not_fit_the_format_is_refused_naming_the_field(tmp_path, corpus, field, offset, code,
                                                                            value, needle):
    """Every header field that says where a region is, or how far it goes, is checked against
    the format when the file is opened (and the counters at each refresh): a corrupt one is a
    StoreError, and for inspect one line naming the file and the field, exit 2 -- never a hang,
    an OverflowError or a read into another region."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", store, "--keep", check=True)
    path = store_files(store)[0]
    rf = RecordFile(path)                   # opened while the header was sound
    sp = StreamPointer(rf, 1)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(code, value))
    said = "^" + re.escape(f"{path}: {needle}")
    with pytest.raises(StoreError, match=said):
        StreamPointer(path, 1) if field == "gap entry" else RecordFile(path)
    if field in ("records", "gaps", "end0", "end1", "reclaimed1"):
        with pytest.raises(StoreError, match=said):                 # a counter that goes wrong later
            sp.refresh()
    res = _quick_cli("inspect", path, "-n", "-1", "--json")
    one_line(res, f"flowsift: {path}: {needle}")
    assert res.stdout == ""
    res = _quick_cli("inspect", store, "--json")          # in a store: one of its problems
    assert res.returncode == 0 and any(needle in p for p in json.loads(res.stdout)["problems"])
    rf.close()


def test_only_regular_files_named_as_the_gateway_names_them_are_record_files(tmp_path, corpus):
    """A directory or a FIFO named like a record file is named as a problem, never opened (a
    FIFO would block for ever); names the gateway never writes are not record files; files go
    in connection order past c99999999."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", store, "--keep", check=True)
    real = store / "c00000000.rec"
    os.link(real, store / "c100000000.rec")
    os.link(real, store / "c99999999.rec")
    (store / "c00000004.rec").mkdir()
    os.mkfifo(store / "c00000008.rec")
    for junk in ("C00000007.rec", "c123.rec", "c000000001.rec", "c00000001.rec.bak"):
        (store / junk).write_text("x")
    assert store_files(store) == [str(store / n) for n in ("c00000000.rec", "c99999999.rec", "c100000000.rec")]
    res = _quick_cli("inspect", store, "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 0 and len(out["connections"]) == 3
    assert [p for p in out["problems"] if "not a regular file" in p] == [
        "c00000004.rec: not a record file: a directory, not a regular file",
        "c00000008.rec: not a record file: a FIFO, not a regular file"]
    one_line(_quick_cli("inspect", store / "c00000008.rec"), "c00000008.rec: not a record file: a FIFO, not a regular file")
    for name in ("c00000004.rec", "c00000008.rec"):
        with pytest.raises(StoreError, match="not a regular file"):
            StreamPointer(store / name, 0)
    junk_only = tmp_path / "junk"
    junk_only.mkdir()
    (junk_only / "c123.rec").write_text("x")
    one_line(_quick_cli("inspect", junk_only), "not a store")


def _with_descriptor_limit(n):
    import resource
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def test_a_small_descriptor_limit_is_shared_with_what_the_process_holds(tmp_path):
    """The store's budget of open record files is what the limit leaves after the descriptors
    the process holds and a spare for what it opens later: at ulimit -n 64 (hard) a gateway
    with 1,000 connections open at once closes and reopens files instead of running out; a
    limit that leaves too few is one line before anything is made."""
    capture = many_connections(tmp_path / "many.pcap", 1000)
    cmd = [sys.executable, "-m", "flowsift", "gateway", str(capture), "--keep", "--json"]
    res = subprocess.run(cmd + ["--store", str(tmp_path / "s")], capture_output=True, text=True, timeout=300,
                         preexec_fn=_with_descriptor_limit(64))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["files"] == len(store_files(tmp_path / "s")) == 1000 and summary["reopens"] > 0
    res = subprocess.run(cmd + ["--store", str(tmp_path / "t")], capture_output=True, text=True, timeout=300,
                         preexec_fn=_with_descriptor_limit(12))
    one_line(res, "the descriptor limit (12, ulimit -n) is too small for the record store")
    assert "raise it to" in res.stderr and not (tmp_path / "t").exists()


def test_a_small_max_map_count_is_named_not_the_descriptor_limit(monkeypatch):
    """Each open record file holds mappings: a vm.max_map_count that leaves too few record
    files is said as such (the message named the descriptor limit, which was ample). The
    sysctl is the machine's: its reading is replaced here, not the sysctl."""
    import flowsift.limits
    from flowsift.streams._store import _handle_budget
    monkeypatch.setattr(flowsift.limits, "max_map_count", lambda: 8200)
    from flowsift.errors import FlowsiftError
    with pytest.raises(FlowsiftError) as e:
        _handle_budget(True)
    assert str(e.value).startswith("vm.max_map_count (8200) is too small for the record store")
    assert "raise it to 8224 at least" in str(e.value) and "ulimit" not in str(e.value)
    monkeypatch.setattr(flowsift.limits, "max_map_count", lambda: 8224)
    assert _handle_budget(True) == 8


def test_a_full_store_with_json_still_prints_the_summary(tmp_path, corpus):
    """--json: the summary of what was read goes to stdout with its `error` saying why the run
    stopped; the one line on stderr and exit 2 are as without it."""
    with small_tmpfs(tmp_path, "256k") as mnt:
        res = run_cli("gateway", corpus / "http__zeek__206_example_b.pcap", "--store", mnt / "s", "--json")
        one_line(res, "store is full")
        summary = json.loads(res.stdout)
        assert "store is full" in summary["error"] and summary["store"] == str(mnt / "s")
        assert summary["source"] == str(corpus / "http__zeek__206_example_b.pcap") and summary["packets"] > 0


@pytest.mark.parametrize("chain,extra,mode", [("counter", [], "parallel"), ("counter", ["--inline"], "inline"),
                                              ("counter,nat(to=10.0.0.9)", [], "staged")])
def test_a_full_store_under_a_chain_with_json_still_prints_its_summary(tmp_path, corpus, chain, extra, mode):
    """chain --json as gateway --json: the chain's summary (its modules, its mode) with the
    store's `error`, then the one line on stderr and exit 2."""
    with small_tmpfs(tmp_path, "256k") as mnt:
        res = run_cli("chain", chain, corpus / "http__zeek__206_example_b.pcap", "--store", mnt / "s", "--json", *extra)
        if mode == "staged":            # (a writing module with no -w: said first)
            said, res.stderr = res.stderr.split("\n", 1)
            assert "nothing is written" in said
        one_line(res, "store is full")
        summary = json.loads(res.stdout)
        assert "store is full" in summary["error"] and summary["store"] == str(mnt / "s")
        assert summary["chain"] == chain.replace("(to=10.0.0.9)", "").split(",") and summary["mode"] == mode
        assert set(summary["modules"]) == set(summary["chain"]) and ("edits" in summary) == (mode == "staged")


def test_a_store_that_was_full_before_its_first_connection_takes_the_run_again(tmp_path, corpus):
    """A run whose store was full before it wrote a record file left its manifest (saying why):
    given again once room was made, into the same --store, it was refused ("holds an earlier
    store (0 record files)"). The manifest of nothing is replaced, said in one line; one with
    record files still refuses the run."""
    capture = corpus / "http__zeek__206_example_b.pcap"
    with small_tmpfs(tmp_path, "24m") as mnt:
        (mnt / "s").mkdir()
        (mnt / "filler").write_bytes(b"\0" * (12 << 20))
        one_line(run_cli("gateway", capture, "--store", mnt / "s"), "store is full")
        assert [p.name for p in (mnt / "s").iterdir()] == ["store.json"]
        (mnt / "filler").unlink()
        res = run_cli("gateway", capture, "--store", mnt / "s", "--json")
        assert res.returncode == 0 and res.stderr == (
            f"flowsift: {mnt / 's'}: an earlier run failed here before writing a connection; its manifest is "
            "replaced\n"), res.stderr
        assert json.loads(res.stdout)["files"] > 0
        manifest = json.loads((mnt / "s" / "store.json").read_text().rstrip("\0 \n"))
        assert manifest["complete"] is True and not manifest.get("error")
        one_line(run_cli("gateway", capture, "--store", mnt / "s"), "holds an earlier store")


def test_the_manifest_names_its_source_while_the_run_goes_on(tmp_path, corpus):
    """A gateway killed mid-run (kill -9) leaves store.json as it was while it ran: it says
    where the store came from from the first batch on."""
    from flowsift.gateway import Gateway
    capture = corpus / "http__zeek__206_example_b.pcap"
    g, seen = Gateway(tmp_path / "s", keep=True), []
    g.run_capture(capture, after_batch=lambda touched, closed: seen.append(
        json.loads((tmp_path / "s" / "store.json").read_text())))
    assert seen and all(m["source"] == str(capture) and m["complete"] is False for m in seen)


def _bounded_cli(*args, seconds=20, memory=4 << 30):
    # as _quick_cli, in at most `memory` bytes of address space: a command that reads without
    # end fails the test with a MemoryError, not the machine through its OOM killer
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        return subprocess.run([sys.executable, "-m", "flowsift", *map(str, args)], capture_output=True, text=True,
                              timeout=seconds, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flowsift {' '.join(map(str, args))} still running after {seconds} s")


def test_a_store_json_that_is_no_regular_file_or_no_manifest_is_a_problem_of_the_store(tmp_path, corpus):
    """store.json is read only if it is a regular file, and only so far: a FIFO (which would
    block the open), a link to /dev/zero or /dev/urandom (which never end), a file of
    megabytes or of JSON nested 100,000 deep are each one of the store's problems, exit 0."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", store, "--keep", check=True)
    manifest = store / "store.json"

    def problems():
        res = _bounded_cli("inspect", store, "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert len(out["connections"]) == 1 and out["manifest"] is None
        return [p for p in out["problems"] if p.startswith("store.json")]

    for device in ("/dev/zero", "/dev/urandom"):
        manifest.unlink()
        manifest.symlink_to(device)
        assert problems() == ["store.json: cannot be read: a device, not a regular file"]
    manifest.unlink()
    os.mkfifo(manifest)
    assert problems() == ["store.json: cannot be read: a FIFO, not a regular file"]
    res = _bounded_cli("inspect", store)                 # the table too
    assert res.returncode == 0 and "store.json: cannot be read: a FIFO, not a regular file" in res.stdout
    manifest.unlink()
    manifest.write_bytes(b" " * (2 << 20))
    assert problems() == ["store.json: too large (over 1,048,576 bytes): not a store manifest"]
    for nested in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        manifest.write_text(nested)
        assert problems() == ["store.json: cannot be read: JSON nested too deeply"]
    manifest.unlink()
    manifest.symlink_to(tmp_path / "nowhere")
    assert problems() == ["store.json: cannot be read: a dangling symbolic link"]


def test_what_a_cut_file_lacks_is_a_gap_and_replay_does_not_send_a_cut_stream_as_whole(tmp_path, corpus):
    """A file cut at data_off0 + 20 whose header says the client sent 104 bytes (and 232 more
    the capture cut): a pointer read 20 bytes and stood at the end, closed, eof, no gap. The bytes
    the file lacks are a gap of reason "truncated", before the file's own gaps; replay skips
    the connection for the gap as for any other hole in the client's stream."""
    from flowsift.replay import conversation
    from flowsift.streams import format as F
    store = tmp_path / "s"
    run_cli("gateway", corpus / "pcapng__pcpp__pcapng-example.pcapng", "--store", store, "--keep", check=True)
    path = store / "c00000009.rec"
    os.truncate(path, F.DATA_OFF[0] + 20)
    sp = StreamPointer(path, 0)
    assert sp.end_offset == 336 and sp.closed and len(sp.read()) == 20 and not sp.eof
    gap = sp.skip_gap()
    assert (gap.offset, gap.length, gap.reason) == (20, 84, "truncated") and not sp.eof
    gap = sp.skip_gap()
    assert (gap.offset, gap.length, gap.reason) == (104, 232, "snaplen") and sp.eof
    sp = StreamPointer(path, 1)                          # none of the server's bytes is in the file
    assert (sp.at_gap.offset, sp.at_gap.length, sp.at_gap.reason) == (0, 64, "truncated")
    store = tmp_path / "h"
    run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", store, "--keep", check=True)
    (path,) = store_files(store)
    whole = conversation(path)
    assert whole.skip is None and len(whole.turns) == 1
    os.truncate(path, F.DATA_OFF[0] + 20)               # inside the request
    assert conversation(path).skip == conversation(path, partial=True).skip == "gap in the client's stream"


def _patched(src, dst, *edits):
    """A sparse copy of record file `src` at `dst` with `edits` written in: (offset, struct
    code, value)."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    with open(dst, "r+b") as f:
        for offset, code, value in edits:
            f.seek(offset)
            f.write(struct.pack(code, value))
    return dst


def _inspected(path, *args):
    # inspect PATH as a table and as JSON: both exit 0 (a problem is said, not an error)
    table = _quick_cli("inspect", path, *args)
    assert table.returncode == 0 and table.stderr == "", table.stderr
    res = _quick_cli("inspect", path, *args, "--json")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return table.stdout, json.loads(res.stdout)


REC = 256                       # records_off
GAP = 2**39                     # gaps_off


def test_fields_the_format_gives_no_meaning_are_problems_of_the_file_not_errors(tmp_path, corpus):
    """A record's direction of 5 was an IndexError, a header proto of 1 an AttributeError in
    the store's table (and shown quietly in the file's); ipver 5, close 9, unknown flag bits,
    `reclaimed` past `end`, gap entries out of order, past the end or repeated were shown
    without a word (and a repeated entry made the bytes delivered wrong). Each is a problem
    of the file, in the file's view and the store's, exit 0."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "pcapng__pcpp__pcapng-example.pcapng", "--store", store, "--keep", check=True)
    src = store / "c00000005.rec"           # s2c: 3,360, gaps 60+1060, 1180+1060, 2300+1060 (entries 2-4)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "store.json").write_text((store / "store.json").read_text())
    cases = {
        "dir": ([(REC + 128 + 51, "<B", 5)], ["record 1 has direction 5; 0 or 1"]),
        "proto": ([(57, "<B", 1)], ["header field proto is 1; 6 (TCP) or 17 (UDP)"]),
        "ipver": ([(56, "<B", 5)], ["header field ipver is 5; 4 or 6 (its addresses are shown as IPv6)"]),
        "ipver0": ([(56, "<B", 0)], ["header field ipver is 0; 4 or 6 (its addresses are shown as IPv6)"]),
        "close": ([(210, "<B", 9)], ["header field close0 is 9; 0 (open) to 6"]),
        "flags": ([(20, "<I", 0x13)], ["header field flags has bits the format does not define: 0x10"]),
        "rflags": ([(REC + 2 * 128 + 52, "<H", 0x1410), (REC + 4 * 128 + 52, "<H", 0x400)],
                   ["record 2 has reassembly flags the format does not define: 0x1400 (in 2 records)"]),
        "reclaimed": ([(184, "<q", 99_999)], ["header field reclaimed1 is 99,999, past end1 (3,360)"]),
        "past_end": ([(GAP + 4 * 32 + 24, "<q", 9_999)],
                     ["gap entry 4 (2,300+9,999) reaches past its direction's end (3,360)"]),
        "order": ([(GAP + 2 * 32 + 16, "<q", 2000), (GAP + 2 * 32 + 24, "<q", 100)],
                  ["gap entry 3 (offset 1,180) overlaps or comes before the one before it (which reaches 2,100)"]),
        "repeated": ([(48, "<Q", 6), (GAP + 5 * 32, "<B", 1), (GAP + 5 * 32 + 1, "<B", 4),
                      (GAP + 5 * 32 + 16, "<q", 60), (GAP + 5 * 32 + 24, "<q", 1060)],
                     ["gap entry 5 (offset 60) overlaps or comes before the one before it (which reaches 3,360)"]),
    }
    for conn, (case, (edits, said)) in enumerate(cases.items()):
        path = _patched(src, bad / f"c{conn:08d}.rec", (24, "<Q", conn), *edits)
        table, out = _inspected(path, "-n", "-1")
        assert out["problems"] == said, case
        assert all(p in " ".join(table.split()) for p in said), case
        listing = json.loads(_quick_cli("inspect", bad, "--json").stdout)
        assert [p for p in listing["problems"] if p.startswith(path.name)] == [f"{path.name}: {p}" for p in said]
    table, out = _inspected(bad / "c00000000.rec", "-n", "-1")
    assert out["record_list"][1]["dir"] == 5 and out["record_list"][1]["offset"] is None
    table, out = _inspected(bad / "c00000004.rec")
    assert out["streams"][0]["close"] == 9
    table, out = _inspected(bad / "c00000006.rec", "-n", "-1")
    assert out["record_list"][2]["rflags"] == ["gap-before", "0x1400"] and "gap-before, 0x1400" in table
    table, out = _inspected(bad / "c00000010.rec")              # 60+1060 twice: counted once
    assert out["streams"][1]["delivered"] == 180 and out["streams"][1]["end"] == 3360
    table, listing = _inspected(bad)
    assert listing["connections"][1]["proto"] == 1 and " 1 " in table


def test_a_header_counting_records_never_written_lists_only_those_written(tmp_path, corpus):
    """Records past those written were listed with id 0 and time 0; with `records` at
    4,294,967,294, `inspect -n -1 --json` grew to gigabytes. A record whose id is not
    first_record_id + its index is where the written records end: the listing stops there
    and says so."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "pcapng__pcpp__pcapng-example.pcapng", "--store", store, "--keep", check=True)
    for claimed in (12, 4_294_967_294):
        path = _patched(store / "c00000005.rec", tmp_path / "c00000005.rec", (40, "<Q", claimed))
        res = _bounded_cli("inspect", path, "-n", "-1", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["records"] == claimed and [r["index"] for r in out["record_list"]] == list(range(10))
        assert out["problems"] == [f"records 10 to {claimed - 1:,}: not written (the header counts {claimed:,}; "
                                   "record 10 does not have the id first_record_id + 10)"]
        res = _bounded_cli("inspect", path, "-n", "-1")
        assert res.returncode == 0 and "not written" in res.stdout


def test_a_file_cut_by_a_stopped_gateway_lists_its_unpublished_records(tmp_path, corpus):
    """A file the gateway did not close counted its complete records after the published ones
    ("2 complete unpublished") without listing them: they are listed, marked unpublished
    (JSON `published`: false; the table marks their index with *)."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "pcapng__pcpp__pcapng-example.pcapng", "--store", store, "--keep", check=True)
    path = _patched(store / "c00000005.rec", tmp_path / "c00000005.rec", (40, "<Q", 8), (20, "<I", 2))
    table, out = _inspected(path, "-n", "-1")
    assert out["cut"]["unpublished_complete_records"] == 2 and out["problems"] == []
    assert [(r["index"], r["published"]) for r in out["record_list"]] == [(i, i < 8) for i in range(10)]
    rows = [w[0] for line in table.splitlines()
            if (w := line.split()) and re.fullmatch(r"\d+\*?", w[0]) and ("c2s" in w or "s2c" in w)]
    assert rows == [str(i) for i in range(8)] + ["8*", "9*"]
    _, out = _inspected(path, "-n", "9")
    assert len(out["record_list"]) == 9


def test_a_slot_never_written_is_not_taken_for_a_record_when_its_id_wraps_to_zero(tmp_path, corpus):
    """first_record_id + n is 0 mod 2^64 in a file of n records: the zeros after them passed
    for record n, unpublished in a file not closed, written in one whose header counts it."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "pcapng__pcpp__pcapng-example.pcapng", "--store", store, "--keep", check=True)
    with RecordFile(store / "c00000005.rec") as rf:
        n = rf.header["records"]
    first = 2**64 - n
    ids = [(F.RECORDS_OFF + 128 * i, "<Q", (first + i) % 2**64) for i in range(n)]
    path = _patched(store / "c00000005.rec", tmp_path / "c00000005.rec", (32, "<Q", first), (20, "<I", 2), *ids)
    with RecordFile(path) as rf:
        assert rf.unpublished == 0 and rf.first_unwritten(0, n + 5) == n
    table, out = _inspected(path, "-n", "-1")
    assert out["cut"]["unpublished_complete_records"] == 0 and out["problems"] == []
    assert [r["index"] for r in out["record_list"]] == list(range(n))
    _patched(path, tmp_path / "more.rec", (40, "<Q", n + 1))      # a header counting it
    _, out = _inspected(tmp_path / "more.rec", "-n", "-1")
    assert out["problems"] == [f"records {n} to {n}: not written (the header counts {n + 1}; "
                               f"record {n} has caplen 0)"]
    assert len(out["record_list"]) == n


def test_bytes_the_format_says_are_zero_are_flagged_when_they_are_not(tmp_path, corpus):
    """Header bytes 236-255, record bytes 100-103 and 112-127, gap entry bytes 2-7 are zero in
    this version: inspect read past them without a word. It warns (no problem, exit 0)."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "trunc__suri__tcp-rst-unacked-stream-10.pcap", "--store", store, "--keep", check=True)
    kept = store / "c00000000.rec"
    table, out = _inspected(kept)
    assert out["warnings"] == [] and out["problems"] == []
    path = _patched(kept, tmp_path / "c00000000.rec", (240, "<B", 1), (F.RECORDS_OFF + 128 * 3 + 101, "<B", 1),
                    (F.RECORDS_OFF + 128 * 7 + 127, "<B", 9), (F.GAPS_OFF + 32 * 1 + 5, "<B", 1))
    table, out = _inspected(path)
    assert out["problems"] == []
    assert out["warnings"] == [
        "header bytes 58-59, 214-215, 236-255 are not all zero (the format says they are)",
        "record 3 has bytes 100-103, 112-127 not all zero (the format says they are) (and 1 more records)",
        "gap entry 1 has bytes 2-7 not all zero (the format says they are)"]
    assert "record 3 has bytes 100-103" in " ".join(table.split())
    os.replace(path, kept)
    _, listing = _inspected(store)
    assert listing["warnings"] == [f"c00000000.rec: {w}" for w in out["warnings"]] and listing["problems"] == []


def test_the_store_listing_sees_files_missing_copied_or_linked_and_open_files_of_a_complete_store(tmp_path,
                                                                                                  corpus):
    """A complete store kept whole that lacks a file its run made, a record file that is a
    symbolic link (to another store's file, or to itself), a file whose name says another
    connection than its header, a file not closed in a store said complete: each is a
    problem; a link is never followed (nor an internal error: ELOOP), for replay neither."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "pcapng__pcpp__pcapng-example.pcapng", "--store", store, "--keep", check=True)
    other = tmp_path / "o"
    run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", other, "--keep", check=True)
    (store / "c00000003.rec").unlink()
    (store / "c00000004.rec").unlink()
    (store / "c00000004.rec").symlink_to(other / "c00000000.rec")
    (store / "c00000005.rec").unlink()
    (store / "c00000005.rec").symlink_to("c00000005.rec")
    (store / "c00000007.rec").unlink()
    subprocess.run(["cp", "--sparse=always", str(store / "c00000000.rec"), str(store / "c00000007.rec")], check=True)
    _patched(store / "c00000001.rec", tmp_path / "open.rec", (20, "<I", 2))
    os.replace(tmp_path / "open.rec", store / "c00000001.rec")
    table, out = _inspected(store)
    assert out["problems"] == [
        "store.json: its run kept the 15 record files it made, 14 are here: c00000003.rec missing",
        "c00000001.rec: not closed by the gateway, though store.json says the store is complete",
        "c00000007.rec: named for connection 7, its header says connection 0",
        "c00000004.rec: not a record file: a symbolic link, not a regular file",
        "c00000005.rec: not a record file: a symbolic link, not a regular file"]
    assert [c["file"] for c in out["connections"]] == [f"c{i:08d}.rec" for i in range(15) if i not in (3, 4, 5)]
    assert store_files(store) == [str(store / c["file"]) for c in out["connections"]]
    _, one = _inspected(store / "c00000007.rec")
    assert one["problems"] == ["named for connection 7, its header says connection 0"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = _quick_cli("replay", "--store", store, "--to", f"127.0.0.1:{s.getsockname()[1]}", "--limit", 1,
                         "--timeout", 0.5, "--json")
    assert "internal error" not in res.stderr and res.returncode in (0, 1), res.stderr


@pytest.mark.parametrize("manifest,said", [
    ({"format": "something else"}, "store.json: not a flowsift store manifest (format 'something else')"),
    ({"version": 99}, "store.json: store manifest version 99; this flowsift reads version 1"),
    ({"complete": "yes"}, 'store.json: field complete is "yes"; true or false'),
    ({"files": -3}, "store.json: field files is -3; a number"),
])
def test_a_store_json_of_another_format_or_version_is_a_problem(tmp_path, corpus, manifest, said):
    store = tmp_path / "s"
    run_cli("gateway", corpus / "http__zeek__get.pcap", "--store", store, "--keep", check=True)
    good = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps({**good, **manifest}))
    _, out = _inspected(store)
    assert out["problems"] == [said] and len(out["connections"]) == 1
