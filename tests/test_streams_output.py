"""`flowsift streams -o DIR`: what the directory holds after good runs, failed ones and full
disks; the index's gaps; names, times and messages."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import run_cli, small_tmpfs
from pcapgen import A, B, epb, ether, idb, ipv4, pcap, shb, tcp

SYN, SYNACK, ACK, PSH, FIN = 0x02, 0x12, 0x10, 0x18, 0x11


def conversation(conns, size, t0=1_700_000_000, chunk=1400):
    """Frames of `conns` whole TCP connections, one after the other, each sending `size` bytes
    each way in segments of `chunk`, then closing with FINs. Returns (frames, {(conn, dir): bytes})."""
    frames, sent, clock = [], {}, [0]

    def put(src, dst, sport, dport, **kw):
        clock[0] += 1
        frames.append((t0 + clock[0] // 1000, clock[0] % 1000 * 1000, ether(ipv4(src, dst, 6, tcp(sport, dport, **kw)))))
    for c in range(conns):
        port = 40000 + c
        seq = [1000, 5000]
        put(A, B, port, 80, seq=999, flags=SYN)
        put(B, A, 80, port, seq=4999, ack=1000, flags=SYNACK)
        put(A, B, port, 80, seq=1000, ack=5000, flags=ACK)
        for d in (0, 1):
            data = (bytes(range(251)) * (size // 251 + 2))[(c * 7 + d * 3) % 251:][:size]
            sent[(c, d)] = data
            src, dst, sp, dp = (A, B, port, 80) if d == 0 else (B, A, 80, port)
            for k in range(0, size, chunk):
                put(src, dst, sp, dp, seq=seq[d] + k, ack=seq[1 - d], flags=PSH, payload=data[k:k + chunk])
            seq[d] += size
        put(A, B, port, 80, seq=seq[0], ack=seq[1], flags=FIN)
        put(B, A, 80, port, seq=seq[1], ack=seq[0] + 1, flags=FIN)
        put(A, B, port, 80, seq=seq[0] + 1, ack=seq[1] + 1, flags=ACK)
    return frames, sent


def listing(out):
    """{name: bytes} of everything in `out`."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def index_of(out):
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def only_listed_files_whole(out):
    """Every stream file in `out` is listed in its index, and every line says its file's size
    and digest. Returns the lines."""
    lines = index_of(out)
    listed = {line["file"] for line in lines if line["file"]}
    assert {p.name for p in out.iterdir()} - {"index.jsonl"} == listed
    for line in lines:
        if line["file"]:
            data = (out / line["file"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (line["bytes"], line["sha256"]), line["file"]
    return lines


def one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --- a run that fails on its input leaves the directory as it was ----------------------------

def _bad_inputs(tmp_path):
    conn = [(1, k, ether(ipv4(A, B, 6, tcp(40000, 80, seq=1 + k, payload=b"x")))) for k in range(3)]
    raw = [(1, 0, ipv4(A, B, 6, tcp(40000, 80, payload=b"x")))]
    files = {
        "missing": (tmp_path / "http__zeek__gte.pcap", None, "no such file"),
        "text": (tmp_path / "notes.txt", b"root:x:0:0:root:/root:/bin/bash\n", "not a capture file"),
        "empty": (tmp_path / "empty.pcap", b"", "empty file"),
        # a filter libpcap cannot compile for the capture's link type: a pcap says it at its
        # header, a pcapng once every interface was read
        "filter-pcap": (tmp_path / "raw.pcap", pcap(raw, linktype=101), "cannot be applied"),
        "filter-pcapng": (tmp_path / "raw.pcapng", shb() + idb(101) + epb(0, 1, raw[0][2]), "cannot be applied"),
        "user0": (tmp_path / "u0.pcap", pcap(conn, linktype=147), "link type 147 (USER0) not supported"),
    }
    for path, blob, _ in files.values():
        if blob is not None:
            path.write_bytes(blob)
    return files


@pytest.mark.parametrize("bad", ["missing", "text", "empty", "stdin", "filter-pcap", "filter-pcapng", "user0"])
def test_a_run_that_fails_on_its_input_leaves_the_earlier_output(tmp_path, bad):
    """A typo in the capture's name, a file that is no capture, `-`, a filter that cannot apply
    to the capture's link type, a capture nothing in which decodes: one line, exit 2, and DIR
    holds the earlier run's files and index as they were (it used to hold an empty index), even
    with --replace."""
    good = tmp_path / "good.pcap"
    frames, _ = conversation(2, 3000)
    good.write_bytes(pcap(frames))
    out = tmp_path / "out1"
    run_cli("streams", good, "-o", out, check=True)
    before = listing(out)
    assert len(before) == 5
    if bad == "stdin":
        path, needle = "-", "standard input"
    else:
        path, _, needle = _bad_inputs(tmp_path)[bad]
    args = ["--filter", "vlan"] if bad.startswith("filter") else []
    one_line_error(run_cli("streams", path, "-o", out, "--replace", *args), needle)
    assert listing(out) == before


def test_a_run_that_fails_on_its_input_makes_no_directory(tmp_path):
    one_line_error(run_cli("streams", tmp_path / "nope.pcap", "-o", tmp_path / "new"), "no such file")
    assert not (tmp_path / "new").exists()


def test_a_capture_without_connections_still_replaces_the_earlier_output(tmp_path):
    """A capture read to its end is this run's output, even with no connection in it: with
    --replace, the earlier streams go and the index is empty."""
    good, arp = tmp_path / "good.pcap", tmp_path / "arp.pcap"
    good.write_bytes(pcap(conversation(1, 100)[0]))
    arp.write_bytes(pcap([(1, 0, ether(b"\0" * 28, ethertype=0x0806))]))
    out = tmp_path / "o"
    run_cli("streams", good, "-o", out, check=True)
    res = json.loads(run_cli("streams", arp, "-o", out, "--replace", "--json", check=True).stdout)
    assert res["replaced"] == 2 and listing(out) == {"index.jsonl": b""}


# --- a directory that holds an earlier run's output -------------------------------------------

def _two_captures(tmp_path):
    first, second = tmp_path / "first.pcap", tmp_path / "second.pcap"
    first.write_bytes(pcap(conversation(2, 3000)[0]))
    second.write_bytes(pcap(conversation(1, 500, t0=1_800_000_000)[0]))
    return first, second


def _stamps(out):
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


@pytest.mark.parametrize("left", ["all", "streams", "index"])
def test_an_earlier_runs_output_is_refused_and_left_as_it_was(tmp_path, left):
    """Running again into the same -o DIR used to replace the earlier run's files silently (one
    capture after another into one DIR kept only the last one's, their connection numbers
    colliding): its index.jsonl or any of its stream files is one line and exit 2 before
    anything is read, saying how many stream files DIR holds and the two ways on; every file
    stays as it was, bytes and times."""
    first, second = _two_captures(tmp_path)
    out = tmp_path / "out"
    run_cli("streams", first, "-o", out, check=True)
    if left == "streams":
        (out / "index.jsonl").unlink()
    elif left == "index":
        for p in out.glob("c*"):
            p.unlink()
    before, stamps = listing(out), _stamps(out)
    files = {"all": "index.jsonl and 4 stream files", "streams": "(4 stream files)",
             "index": "index.jsonl and no stream file"}[left]
    res = run_cli("streams", second, "-o", out, "--json")
    one_line_error(res, f"{out}: holds the output of an earlier run", files, "--replace", "another -o")
    assert res.stdout == ""
    assert listing(out) == before and _stamps(out) == stamps
    # before anything is read: a capture that does not exist is not reached
    one_line_error(run_cli("streams", tmp_path / "nope.pcap", "-o", out), "holds the output of an earlier run")


def test_replace_replaces_an_earlier_runs_output(tmp_path):
    """--replace does what a second run used to: the earlier stream files go (counted), the
    index is rewritten, and DIR holds what a run into a new directory writes; other files stay."""
    first, second = _two_captures(tmp_path)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    run_cli("streams", first, "-o", out, check=True)
    (out / "notes.txt").write_bytes(b"mine")
    res = json.loads(run_cli("streams", second, "-o", out, "--replace", "--json", check=True).stdout)
    assert res["replaced"] == 4 and res["files"] == 2
    run_cli("streams", second, "-o", fresh, check=True)
    assert listing(out) == {**listing(fresh), "notes.txt": b"mine"}
    table = " ".join(re.sub(r"[│┃]", " ", run_cli("streams", first, "-o", out, "--replace", check=True).stdout).split())
    assert "replaced 2 stream files of an earlier run, removed first" in table
    one_line_error(run_cli("streams", first, "--discard", "--replace"), "--replace", "goes with -o DIR")


def test_only_a_runs_output_makes_a_directory_refused(tmp_path):
    """An empty directory, or one with unrelated files (names close to a stream file's or the
    index's), is written into as a new one, the other files left alone; once it holds that
    run's output, the next run into it is refused."""
    first, second = _two_captures(tmp_path)
    empty, mixed, fresh = tmp_path / "empty", tmp_path / "mixed", tmp_path / "fresh"
    empty.mkdir()
    mixed.mkdir()
    others = {"notes.txt": b"mine", "index.jsonl.bak": b"{}", "c1-10.0.0.1.1-10.0.0.2.2.c2s": b"short number",
              "c000009-x.s2c.old": b"x"}
    for name, blob in others.items():
        (mixed / name).write_bytes(blob)
    run_cli("streams", first, "-o", fresh, check=True)
    for out, kept in ((empty, {}), (mixed, others)):
        res = json.loads(run_cli("streams", first, "-o", out, "--json", check=True).stdout)
        assert res["replaced"] == 0 and res["files"] == 4
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == {**listing(fresh), **kept}
        one_line_error(run_cli("streams", second, "-o", out), "holds the output of an earlier run",
                       "index.jsonl and 4 stream files")


@pytest.mark.parametrize("replace", [False, True])
@pytest.mark.parametrize("what", ["fifo", "symlink", "dangling", "stream-fifo", "stream-symlink", "index-dir",
                                  "stream-dir"])
def test_what_is_no_regular_file_under_an_output_name_is_refused_and_never_written_through(tmp_path, what, replace):
    """A FIFO named index.jsonl in DIR hung `streams -o DIR --replace` (opened for writing, it
    waited for a reader); a symlink named index.jsonl or like a stream file had its target
    overwritten; a directory at a stream file's name stopped the run half-way ("File exists"),
    leaving an empty index and the directory stamped with the capture's time. No run wrote
    them, none writes through them: one line, exit 2, before anything is read, with or without
    --replace; they, their targets and DIR stay as they were."""
    first, _ = _two_captures(tmp_path)
    out, fresh, victim = tmp_path / "out", tmp_path / "fresh", tmp_path / "victim"
    run_cli("streams", first, "-o", fresh, check=True)
    out.mkdir()
    victim.write_bytes(b"not a stream")
    stream = sorted(p.name for p in fresh.iterdir() if p.name != "index.jsonl")[0]
    name, kind = {"fifo": ("index.jsonl", "a FIFO"), "symlink": ("index.jsonl", "a symbolic link (to "),
                  "dangling": ("index.jsonl", "a symbolic link (to "), "stream-fifo": (stream, "a FIFO"),
                  "stream-symlink": (stream, "a symbolic link (to "), "index-dir": ("index.jsonl", "a directory"),
                  "stream-dir": (stream, "a directory")}[what]
    if what.endswith("fifo"):
        os.mkfifo(out / name)
    elif what.endswith("-dir"):
        (out / name).mkdir()
        os.utime(out / name, (1234567890, 1234567890))
    else:
        (out / name).symlink_to(victim if what != "dangling" else tmp_path / "nowhere")
    res = subprocess.run([sys.executable, "-m", "flowsift", "streams", str(first), "-o", str(out),
                          *(["--replace"] if replace else [])], capture_output=True, text=True, timeout=60)
    one_line_error(res, f"{out / name} is {kind}", "where streams writes a regular file", "remove it")
    assert res.stdout == ""
    assert [p.name for p in out.iterdir()] == [name] and victim.read_bytes() == b"not a stream"
    assert not (tmp_path / "nowhere").exists()
    if what.endswith("-dir"):
        assert os.lstat(out / name).st_mtime == 1234567890 and os.listdir(out / name) == []
    # before anything is read
    one_line_error(run_cli("streams", tmp_path / "nope.pcap", "-o", out), f"{out / name} is {kind}")


@pytest.mark.parametrize("what", ["symlink", "directory"])
def test_a_symlink_put_in_the_directory_while_it_is_written_is_never_followed(tmp_path, what):
    """Files are made new (O_EXCL, O_NOFOLLOW), the writer thread's stream files as index.jsonl:
    a symlink (a directory) that comes at a stream file's name after the directory was made
    ready is not written through; the run stops, saying which file it could not make and what
    came there ("File exists" did not say), and leaves it as it is (a directory was stamped
    with the capture's time)."""
    from flowsift.errors import FlowsiftError
    from flowsift.io import Decoder, decoded_batches
    from flowsift.reassembly import Reassembler
    from flowsift.reassembly._filesink import FileSink
    frames, _ = conversation(1, 3000)
    start, rest = tmp_path / "start.pcap", tmp_path / "rest.pcap"
    start.write_bytes(pcap(frames[:1]))         # the SYN: the connection opens, DIR is made ready
    rest.write_bytes(pcap(frames[1:]))
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.write_bytes(b"not a stream")
    sink = FileSink(str(out))
    r = Reassembler(sink=sink)
    for cap in (start, rest):
        for batch in decoded_batches(str(cap), Decoder(), None, None):
            r.feed(batch)
        if cap == start:
            assert os.listdir(out) == ["index.jsonl"]
            there = out / "c000000-10.0.0.1.40000-10.0.0.2.80.c2s"
            if what == "symlink":
                there.symlink_to(victim)
            else:
                there.mkdir()
                os.utime(there, (1234567890, 1234567890))
    kind = "a symbolic link" if what == "symlink" else "a directory"
    with pytest.raises(FlowsiftError, match=f"c000000-10.0.0.1.40000-10.0.0.2.80.c2s: cannot write: {kind}.* was "
                                            "put at its name while streams wrote"):
        r.finish()
        sink.close()
    assert victim.read_bytes() == b"not a stream"
    if what == "directory":
        assert os.lstat(there).st_mtime == 1234567890 and os.listdir(there) == []


# --- a low descriptor limit ------------------------------------------------------------------

def _many_at_once(conns, size, t0=1_700_000_000):
    """Frames of `conns` TCP connections live at once: all open, then `size` bytes each way in
    rounds over all of them (more than a direction's buffer, so every file is written while the
    others are open), then all close."""
    frames, clock = [], [0]

    def put(src, dst, sport, dport, **kw):
        clock[0] += 1
        frames.append((t0 + clock[0] // 1000, clock[0] % 1000 * 1000, ether(ipv4(src, dst, 6, tcp(sport, dport, **kw)))))
    ports = [40000 + c for c in range(conns)]
    for p in ports:
        put(A, B, p, 80, seq=999, flags=SYN)
        put(B, A, 80, p, seq=4999, ack=1000, flags=SYNACK)
        put(A, B, p, 80, seq=1000, ack=5000, flags=ACK)
    for k in range(0, size, 1400):
        for c, p in enumerate(ports):
            data = bytes((c + k + j) % 251 for j in range(1400))
            put(A, B, p, 80, seq=1000 + k, ack=5000 + k, flags=PSH, payload=data)
            put(B, A, 80, p, seq=5000 + k, ack=1000 + k + 1400, flags=PSH, payload=data[::-1])
    end = 1000 + -(-size // 1400) * 1400, 5000 + -(-size // 1400) * 1400
    for p in ports:
        put(A, B, p, 80, seq=end[0], ack=end[1], flags=FIN)
        put(B, A, 80, p, seq=end[1], ack=end[0] + 1, flags=FIN)
        put(A, B, p, 80, seq=end[0] + 1, ack=end[1] + 1, flags=ACK)
    return frames


def _streams_within(limit, cap, out):
    import resource
    setting = None if limit is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return subprocess.run([sys.executable, "-m", "flowsift", "streams", str(cap), "-o", str(out), "--json"],
                          capture_output=True, text=True, timeout=300, preexec_fn=setting)


def test_a_low_descriptor_limit_is_lived_within_or_said_up_front(tmp_path):
    """40 connections writing at once kept 80 stream files open: at ulimit -n 32 streams -o
    stopped part-way ("Too many open files", the files not listed removed). The files kept open
    are now sized from the limit (the others closed and reopened), so a low limit gives the
    same files, bytes and times as no limit; one too low for a few is one line, exit 2, before
    anything is read, and no DIR."""
    cap = tmp_path / "many.pcap"
    cap.write_bytes(pcap(_many_at_once(40, 12_000)))
    free = _streams_within(None, cap, tmp_path / "free")
    assert free.returncode == 0, free.stderr
    want = json.loads(free.stdout)
    assert want["files"] == 80
    for limit in (32, 20):
        out = tmp_path / f"at{limit}"
        res = _streams_within(limit, cap, out)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        got = json.loads(res.stdout)
        assert {**got, "output": None, "index": None} == {**want, "output": None, "index": None}
        assert listing(out) == listing(tmp_path / "free")
        # (the streams' times are their last packets'; the index's, when it was written)
        assert {**_stamps(out), "index.jsonl": 0} == {**_stamps(tmp_path / "free"), "index.jsonl": 0}
    res = _streams_within(8, cap, tmp_path / "at8")
    one_line_error(res, "the descriptor limit (8, ulimit -n) is too small for streams -o", "raise it to")
    assert res.stdout == "" and not (tmp_path / "at8").exists()


# --- a full disk -----------------------------------------------------------------------------

def test_a_full_disk_leaves_only_files_the_index_lists(tmp_path):
    """The file system fills up: one line naming the file that did not fit, exit 2, and the
    directory holds no stream file cut short (as after SIGTERM, only what the index lists,
    each file as its line says)."""
    frames, _ = conversation(12, 150_000)
    cap = tmp_path / "big.pcap"
    cap.write_bytes(pcap(frames))
    with small_tmpfs(tmp_path, "1m") as mnt:
        res = run_cli("streams", cap, "-o", mnt / "s")
        line = one_line_error(res, f"{mnt}/s/c0000", "cannot write: No space left on device")
        assert re.search(r"; \d+ stream files? not listed in index.jsonl removed$", line), line
        only_listed_files_whole(mnt / "s")


def test_a_full_disk_still_gives_the_json_summary(tmp_path):
    """With --json, a run the disk stopped prints its summary (it printed nothing), its `error`
    the stderr line, as a capture cut short does; `files` counts the files the index lists,
    not those begun and removed. Still one line and exit 2."""
    frames, _ = conversation(12, 150_000)
    cap = tmp_path / "big.pcap"
    cap.write_bytes(pcap(frames))
    with small_tmpfs(tmp_path, "1m") as mnt:
        res = run_cli("streams", cap, "-o", mnt / "s", "--json")
        line = one_line_error(res, "cannot write: No space left on device")
        summary = json.loads(res.stdout)
        assert summary["error"] == line[len("flowsift: "):]
        lines = only_listed_files_whole(mnt / "s")
        assert summary["files"] == sum(1 for x in lines if x["file"]) < 24
        assert summary["spliced_files"] == 0 and summary["connections"] >= 1


@pytest.mark.parametrize("command", ["streams", "stats"])
def test_a_capture_cut_short_says_so_in_the_table(tmp_path, command):
    """The table of a capture cut short has an error line (it had none: only stderr said why
    reading stopped, and a table sent to a file read as a whole run)."""
    cap = tmp_path / "cut.pcap"
    cap.write_bytes(pcap(conversation(2, 3000)[0])[:-20])
    res = run_cli(command, cap, *(["-o", tmp_path / "o"] if command == "streams" else []))
    one_line_error(res, "the file is cut short")
    table = " ".join(re.sub(r"[│┃]", " ", res.stdout).split())
    # (a long path may be cut to the terminal's width)
    assert re.search(r" error \S+ record \d+ at byte \d+: caplen \d+ exceeds the end of the file \(\d+ bytes left\): "
                     r"the file is cut short ", table), table


def test_an_empty_output_path_says_it_is_empty(tmp_path):
    good = tmp_path / "good.pcap"
    good.write_bytes(pcap(conversation(1, 10)[0]))
    line = one_line_error(run_cli("streams", good, "-o", ""), "-o '': an empty path")
    assert ": :" not in line


# --- gaps ------------------------------------------------------------------------------------

GAPPY = ["gap__zeek__gap-recovery.pcap", "overlap__zeek__reassembly.pcap", "trunc__suri__tcp-rst-unacked-stream-10.pcap",
         "gap__suri__tcp-leading-gap.pcap", "retrans__zeek__retransmit-fast009.pcap"]


def expected_directions(path):
    """{(conn, dir): (spliced bytes, zero-filled bytes, [index gaps])} from the reassembler's
    events: a hole declared in adjacent pieces is one, its reasons each once, in order."""
    from flowsift.reassembly import Gap, Reassembler, StreamData
    r = Reassembler()
    r.feed_capture(str(path))
    out = {}
    for e in r.collector.events:
        if not isinstance(e, (Gap, StreamData)):
            continue
        spliced, zeros, gaps, pending = out.setdefault((e.conn, e.direction), (bytearray(), bytearray(), [], [0]))
        if isinstance(e, StreamData):
            zeros += bytes(pending[0]) + e.data
            pending[0] = 0
            spliced += e.data
        elif gaps and gaps[-1]["offset"] + gaps[-1]["length"] == e.offset:
            gaps[-1]["length"] += e.length
            pending[0] += e.length
            if e.reason not in gaps[-1]["reason"].split("+"):
                gaps[-1]["reason"] += "+" + e.reason
        else:
            gaps.append({"offset": e.offset, "length": e.length, "file_offset": len(spliced), "reason": e.reason})
            pending[0] += e.length
    return {k: v[:3] for k, v in out.items()}


@pytest.mark.parametrize("name", GAPPY)
def test_index_gaps_say_where_they_are_in_the_file_and_why(tmp_path, corpus, name):
    """Each gap: its stream offset and length, where the bytes after it start in the file (they
    follow the bytes before it), and the engine's reason. With --gaps zeros, the file holds
    each gap before bytes as zeros (file offsets are stream offsets) and the same gaps are
    listed, at their stream offsets; `bytes` stays what was delivered, `sha256` is the file's."""
    want = expected_directions(corpus / name)
    assert any(g for _, _, g in want.values())
    for mode in ("splice", "zeros"):
        out = tmp_path / mode
        summary = json.loads(run_cli("streams", corpus / name, "-o", out, "--gaps", mode, "--json", check=True).stdout)
        assert summary["gaps_in_files"] == mode
        for line in index_of(out):
            spliced, zeros, gaps = want.get((line["conn"], 0 if line["dir"] == "c2s" else 1), (b"", b"", []))
            data = (out / line["file"]).read_bytes() if line["file"] else b""
            assert line["bytes"] == len(spliced) and hashlib.sha256(data).hexdigest() == line["sha256"]
            if mode == "splice":
                assert data == spliced and line["gaps"] == gaps
            else:
                assert data == zeros and line["gaps"] == [dict(g, file_offset=g["offset"]) for g in gaps]


@pytest.mark.parametrize("name", GAPPY + ["http__zeek__bro.org.pcap"])
def test_the_summary_counts_the_files_gaps_are_spliced_out_of(tmp_path, corpus, name):
    """`spliced_files` and `spliced_gap_bytes`: the files whose bytes after a gap follow those
    before it, and those gaps' bytes, which is what --gaps zeros adds to them as zeros (a gap
    after a file's last byte moves nothing and is not counted). 0 with --gaps zeros."""
    zeros = json.loads(run_cli("streams", corpus / name, "-o", tmp_path / "z", "--gaps", "zeros", "--json",
                               check=True).stdout)
    grown = [(tmp_path / "z" / x["file"]).stat().st_size - x["bytes"] for x in index_of(tmp_path / "z") if x["file"]]
    splice = json.loads(run_cli("streams", corpus / name, "-o", tmp_path / "s", "--json", check=True).stdout)
    assert (splice["spliced_files"], splice["spliced_gap_bytes"]) == (sum(1 for g in grown if g), sum(grown))
    assert (zeros["spliced_files"], zeros["spliced_gap_bytes"]) == (0, 0)
    if name == "http__zeek__bro.org.pcap":
        assert (splice["spliced_files"], splice["spliced_gap_bytes"]) == (1, 7240)
    discard = json.loads(run_cli("streams", corpus / name, "--discard", "--json", check=True).stdout)
    assert (discard["spliced_files"], discard["spliced_gap_bytes"]) == (None, None)


def test_the_table_says_when_gaps_are_spliced_out_and_how_to_keep_offsets(tmp_path, corpus):
    """Only the index showed that a file's bytes jump over a hole: the table says how many files
    and bytes, naming --gaps zeros; not with --gaps zeros, nor for a run without such gaps."""
    def table(*args):
        return " ".join(re.sub(r"[│┃]", " ", run_cli("streams", *args, check=True).stdout).split())
    bro = corpus / "http__zeek__bro.org.pcap"
    assert "gaps spliced out 7.1 KiB from 1 file (--gaps zeros keeps stream offsets)" in table(bro, "-o", tmp_path / "a")
    assert "spliced" not in table(bro, "-o", tmp_path / "b", "--gaps", "zeros")
    trailing = corpus / "retrans__zeek__retransmit-fast009.pcap"     # gaps, each after its file's last byte
    assert "spliced" not in table(trailing, "-o", tmp_path / "c")


def test_a_udp_datagram_cut_short_is_zeros_in_its_file_with_gaps_zeros(tmp_path):
    from pcapgen import udp_cut_capture
    path = udp_cut_capture(tmp_path / "udpcut.pcap")
    run_cli("streams", path, "-o", tmp_path / "o", "--gaps", "zeros", check=True)
    (line,) = [x for x in index_of(tmp_path / "o") if x["file"]]
    assert (tmp_path / "o" / line["file"]).read_bytes() == b"S" * 38 + bytes(962) + b"after"
    assert line["gaps"] == [{"offset": 38, "length": 962, "file_offset": 38, "reason": "snaplen"}]


@pytest.mark.parametrize("args,needle", [(["--discard", "--gaps", "zeros"], "--gaps says how files hold gaps"),
                                         (["-o", "o", "--gaps", "fill"], "--gaps 'fill': one of splice, zeros")])
def test_gaps_option_misuse_is_one_line(tmp_path, args, needle):
    good = tmp_path / "good.pcap"
    good.write_bytes(pcap(conversation(1, 10)[0]))
    one_line_error(run_cli("streams", good, *args), needle)


# --- names, times, messages ------------------------------------------------------------------

def test_stream_files_are_stamped_with_their_last_packet(tmp_path):
    """A file's modification time is its direction's last packet (the index's last_ts), as
    tcpflow stamps its files, not the time it was written."""
    frames, _ = conversation(2, 5000, t0=1_300_000_000)
    cap = tmp_path / "t.pcap"
    cap.write_bytes(pcap(frames))
    run_cli("streams", cap, "-o", tmp_path / "o", check=True)
    lines = [x for x in index_of(tmp_path / "o") if x["file"]]
    assert len(lines) == 4
    for line in lines:
        st = os.stat(tmp_path / "o" / line["file"])
        assert abs(st.st_mtime_ns - round(line["last_ts"] * 1e9)) < 1000 and st.st_mtime < 1_400_000_000


@pytest.mark.parametrize("kind", ["file", "dangling", "under-a-file"])
def test_an_output_that_is_not_a_directory_says_what_it_is(tmp_path, kind):
    good = tmp_path / "good.pcap"
    good.write_bytes(pcap(conversation(1, 10)[0]))
    (tmp_path / "afile").write_text("mine")
    os.symlink("nowhere", tmp_path / "dangling")
    target, needle = {"file": ("afile", "afile: cannot write there: it is a regular file, not a directory"),
                      "dangling": ("dangling", "dangling: cannot write there: it is a symbolic link to 'nowhere', "
                                               "which does not exist"),
                      "under-a-file": ("afile/sub", f"{tmp_path}/afile is a regular file, not a directory")}[kind]
    one_line_error(run_cli("streams", good, "-o", tmp_path / target), needle)
    assert (tmp_path / "afile").read_text() == "mine" and not (tmp_path / "nowhere").exists()


def test_stdin_is_named_as_such(tmp_path):
    one_line_error(run_cli("streams", "-", "-o", tmp_path / "x"), "-: captures are not read from standard input",
                   "save the capture to a file")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("one", [False, True])
def test_the_table_counts_files_in_words_that_agree(tmp_path, one):
    if one:
        frames = [(1, 0, ether(ipv4(A, B, 6, tcp(40000, 80, seq=1, flags=PSH, payload=b"hello"))))]
    else:
        frames, _ = conversation(1, 10)
    cap = tmp_path / "c.pcap"
    cap.write_bytes(pcap(frames))
    table = " ".join(re.sub(r"[│┃]", " ", run_cli("streams", cap, "-o", tmp_path / "o", check=True).stdout).split())
    assert ("written 1 file in" if one else "written 2 files in") in table
    # a second run replaces the first one's files ("1 stream files of an earlier run")
    table = " ".join(re.sub(r"[│┃]", " ", run_cli("streams", cap, "-o", tmp_path / "o", "--replace",
                                                  check=True).stdout).split())
    assert ("replaced 1 stream file of an earlier run" if one else "replaced 2 stream files of an earlier run") in table


def test_streams_help_fits_80_columns_and_says_what_it_replaces():
    """At 80 columns, no example breaks in the middle (the --reassembly one did), -o says that
    a DIR with an earlier run's output is refused and --replace that it replaces it; --policy
    says delivered bytes are final."""
    env = dict(os.environ, COLUMNS="80", TERM="dumb")
    text = subprocess.run([sys.executable, "-m", "flowsift", "streams", "--help"], capture_output=True, text=True,
                          env=env, check=True).stdout
    examples = text.split("Examples:")[1].split("╭")[0]
    lines = [x.strip() for x in examples.strip().splitlines() if x.strip()]
    assert lines and all(x.startswith("flowsift streams ") for x in lines), lines
    words = " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())
    assert "earlier run's output (index.jsonl, stream files) is refused unless --replace is given" in words
    assert "--replace Replace the output of an earlier run in -o DIR" in words
    assert "Delivered bytes are final" in words


def test_a_stopped_run_leaves_only_files_the_index_lists(tmp_path):
    """SIGTERM while streams are written: `flowsift: terminated`, exit 143, and every stream
    file in DIR is listed, whole (connections open at the stop are closed as at the end)."""
    import signal
    import time
    frames, _ = conversation(3000, 20_000, chunk=4000)
    cap = tmp_path / "big.pcap"
    cap.write_bytes(pcap(frames))
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "flowsift", "streams", str(cap), "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and not any(out.glob("c0000*")):
        time.sleep(0.001)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and err.strip() == "flowsift: terminated", (p.returncode, err)
    assert 0 < len(only_listed_files_whole(out)) < 2 * 3000
