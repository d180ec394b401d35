"""Bad input of every kind: one line naming the file, the position and the problem; exit 2."""
import os
import random
import re
import struct

import pytest

from conftest import run_cli
from pcapgen import A, B, epb, ether, idb, ipv4, pcap, shb, tcp

GOOD = pcap([(1, 0, ether(ipv4(A, B, 6, tcp(1, 2, payload=b"x" * 50))))] * 3)
GOOD_NG = shb() + idb(1) + epb(0, 1, ether(ipv4(A, B, 6, tcp(1, 2)))) * 3


def one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def write(tmp_path, name, blob):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def test_missing_file(tmp_path):
    one_line_error(run_cli("stats", tmp_path / "nope.pcap"), "nope.pcap", "no such file")


def test_directory(tmp_path):
    one_line_error(run_cli("stats", tmp_path), "is a directory")


def test_fifo_is_refused_not_hung(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    one_line_error(run_cli("stats", fifo), "not a regular file")


def test_empty_file(tmp_path):
    one_line_error(run_cli("stats", write(tmp_path, "e.pcap", b"")), "e.pcap", "empty file")


def test_proc_file_is_not_called_empty():
    # procfs reports size 0 for a file with contents: not "empty"
    one_line_error(run_cli("stats", "/proc/self/status"), "not a capture file", "/proc")


def test_compressed_capture_says_so(tmp_path):
    import gzip
    one_line_error(run_cli("stats", write(tmp_path, "g.pcap.gz", gzip.compress(GOOD))), "gzip-compressed", "gunzip")


def test_random_bytes(tmp_path):
    rng = random.Random(7)
    blob = bytes(rng.getrandbits(8) for _ in range(4096))
    one_line_error(run_cli("stats", write(tmp_path, "r.pcap", blob)), "r.pcap", "magic")


def test_text_file(tmp_path):
    one_line_error(run_cli("stats", write(tmp_path, "t.pcap", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")), "not a capture", "GET")


def test_truncated_pcap_header(tmp_path):
    one_line_error(run_cli("stats", write(tmp_path, "h.pcap", GOOD[:20])), "h.pcap", "header cut short")


def test_truncated_record_reports_what_was_read(tmp_path):
    res = run_cli("stats", "--json", write(tmp_path, "c.pcap", GOOD[:-10]))
    line = one_line_error(res, "c.pcap", "record 3", "exceeds the end of the file", "cut short")
    import json
    out = json.loads(res.stdout)
    assert out["packets"] == 2 and out["error"] == line.removeprefix("flowsift: ")


def test_cut_inside_record_header(tmp_path):
    one_line_error(run_cli("stats", write(tmp_path, "c.pcap", GOOD + b"\0" * 7)), "record 4", "record header")


def test_absurd_caplen(tmp_path):
    blob = bytearray(GOOD)
    struct.pack_into("<I", blob, 24 + 8, 70_000_000)       # first record's caplen
    one_line_error(run_cli("stats", write(tmp_path, "a.pcap", bytes(blob))), "record 1", "at byte 24", "caplen 70000000")


@pytest.mark.parametrize("length,needle", [(13, "multiple of 4"), (8, "below the 12-byte"), (1 << 30, "16 MiB"),
                                           (4096, "end of the file")])
def test_pcapng_bad_block_length(tmp_path, length, needle):
    blob = bytearray(GOOD_NG)
    at = len(shb()) + len(idb(1))                        # the first packet block
    struct.pack_into("<I", blob, at + 4, length)
    line = one_line_error(run_cli("stats", write(tmp_path, "b.pcapng", bytes(blob))), "b.pcapng", needle)
    assert f"at byte {at}" in line


def test_pcapng_trailing_length_mismatch(tmp_path):
    blob = bytearray(GOOD_NG)
    struct.pack_into("<I", blob, len(blob) - 4, 9999 * 4)
    one_line_error(run_cli("stats", write(tmp_path, "t.pcapng", bytes(blob))), "trailing copy")


def test_pcapng_packet_larger_than_its_block_is_counted_and_reading_goes_on(tmp_path):
    bad = bytearray(epb(0, 1, ether(ipv4(A, B, 6, tcp(1, 2)))))
    struct.pack_into("<I", bad, 8 + 12, 5000)             # caplen beyond the block
    blob = shb() + idb(1) + bytes(bad) + epb(0, 2, ether(ipv4(A, B, 6, tcp(1, 2))))
    res = run_cli("stats", "--json", write(tmp_path, "p.pcapng", blob))
    assert res.returncode == 0, res.stderr
    import json
    out = json.loads(res.stdout)
    assert out["packets"] == 2 and out["undecoded"] == {"bad_record": 1} and out["decoded"] == 1


def test_bad_filter_expression(tmp_path):
    line = one_line_error(run_cli("stats", "--filter", "tcp prot 80", write(tmp_path, "g.pcap", GOOD)), "bad filter")
    assert "syntax error" in line


def test_unknown_option_is_a_usage_error(tmp_path):
    res = run_cli("stats", "--frobnicate", write(tmp_path, "g.pcap", GOOD))
    assert res.returncode == 2 and "Traceback" not in res.stderr


@pytest.mark.parametrize("args,line", [
    (["stats", "--bogus", "x"], "stats: no such option '--bogus' (see flowsift stats --help)"),
    (["stats"], "stats: missing argument 'SOURCE' (see flowsift stats --help)"),
    (["frobnicate"], "no such command 'frobnicate' (see flowsift --help)"),
    (["replay", "x.pcap", "--to"], "replay: option '--to' requires an argument (see flowsift replay --help)"),
    (["replay", "x.pcap", "--to", "h:1", "--limit", "many"],
     "replay: invalid value for '--limit': 'many' is not a valid integer (see flowsift replay --help)"),
    (["inspect", "x.rec", "-n", "-2"],
     "inspect: invalid value for '--records' / '-n': -2: 0 or more, or -1 for all (see flowsift inspect --help)"),
])
def test_usage_errors_are_one_line(args, line):
    # click's usage block and boxed message, on several lines, said what one line says
    res = run_cli(*args)
    assert res.returncode == 2 and res.stderr == f"flowsift: {line}\n" and res.stdout == ""


def test_help_is_still_the_help():
    res = run_cli("stats", "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout and "--filter" in res.stdout
    res = run_cli()
    assert res.returncode == 2 and "Usage:" in res.stdout + res.stderr and "stats" in res.stdout + res.stderr


@pytest.mark.parametrize("value", ["0", "abc", "100000"])
def test_bad_batch_size_is_one_line(tmp_path, monkeypatch, value):
    monkeypatch.setenv("FLOWSIFT_BATCH", value)
    one_line_error(run_cli("stats", write(tmp_path, "good.pcap", GOOD)), "FLOWSIFT_BATCH")


@pytest.mark.parametrize("name", ["FLOWSIFT_READER_FILES", "FLOWSIFT_CHECKPOINT_EVERY", "FLOWSIFT_PROGRESS_MIN_BYTES",
                                  "FLOWSIFT_HEARTBEAT_TTL_MS"])
def test_bad_numbers_in_the_environment_are_one_line(tmp_path, monkeypatch, name):
    """Said once, before the first packet (not by every worker as it dies)."""
    monkeypatch.setenv(name, "many")
    args = ["--registry", "redis://127.0.0.1:1"] if "HEARTBEAT" in name else []
    one_line_error(run_cli("chain", "counter", write(tmp_path, "good.pcap", GOOD), "--events", "/dev/null", *args), name)


def test_batch_size_changes_nothing_but_the_batches(tmp_path, monkeypatch):
    import json
    path = write(tmp_path, "good.pcap", GOOD)
    want = json.loads(run_cli("stats", path, "--json", check=True).stdout)
    monkeypatch.setenv("FLOWSIFT_BATCH", "1")
    assert json.loads(run_cli("stats", path, "--json", check=True).stdout) == want


# --- outputs that are inputs: refused before anything is opened for writing ---

def test_chain_output_that_is_the_input_capture_is_refused(tmp_path):
    # opened for writing first, the capture was emptied before it was read (SIGBUS)
    cap = write(tmp_path, "in.pcap", GOOD)
    (tmp_path / "link.pcap").symlink_to(cap)
    os.link(cap, tmp_path / "hard.pcap")
    for args, option in [(["-w", tmp_path / "link.pcap"], "-w"), (["-w", cap], "-w"),
                         (["--events", tmp_path / "hard.pcap"], "--events")]:
        one_line_error(run_cli("chain", "redact(pattern=x)", cap, *args), option, "is the input capture")
    one_line_error(run_cli("chain", "counter", cap, "-w", tmp_path / "o.pcap", "--events", tmp_path / "o.pcap"),
                   "are the same file")
    assert cap.read_bytes() == GOOD


def test_streams_never_removes_the_input_capture(tmp_path):
    # --replace removes an earlier run's stream files from -o DIR first: the input named like one is not
    out = tmp_path / "out"
    out.mkdir()
    cap = write(out, "c000001-10.0.0.1.1-10.0.0.2.2.c2s", GOOD)
    one_line_error(run_cli("streams", cap, "-o", out, "--replace"), "is the input capture")
    assert cap.read_bytes() == GOOD
    index = write(out, "index.jsonl", GOOD)
    one_line_error(run_cli("streams", index, "-o", out, "--replace"), "is the input capture")
    assert index.read_bytes() == GOOD


def test_replay_report_that_is_an_input_is_refused(tmp_path):
    cap = write(tmp_path, "in.pcap", GOOD)
    one_line_error(run_cli("replay", cap, "--to", "127.0.0.1:1", "--report", cap), "--report", "is the input capture")
    store = tmp_path / "st"
    run_cli("gateway", cap, "--store", store, "--keep", check=True)
    rec = sorted(store.glob("c*.rec"))[0]
    size = rec.stat().st_size          # (a record file is sparse and large: its size says enough)
    one_line_error(run_cli("replay", "--store", store, "--to", "127.0.0.1:1", "--report", rec), "a file of the store")
    assert rec.stat().st_size == size and cap.read_bytes() == GOOD


@pytest.mark.parametrize("value", ["0", "-1", "64", "1000"])
def test_max_backlog_outside_what_it_can_do_is_refused(tmp_path, value):
    # below 1 it gave up every connection at once (a chain that read nothing, exit 0); from 64
    # on, back-pressure held the gateway first, so the bound was never reached
    one_line_error(run_cli("chain", "counter", write(tmp_path, "good.pcap", GOOD), "--max-backlog", value,
                           "--events", "/dev/null"), f"--max-backlog {value}: a number of batches, 1 to 63")


@pytest.mark.parametrize("args", [["counter", "--inline"], ["redact(pattern=x),counter"]])
def test_max_backlog_where_nothing_can_fall_behind_is_refused(tmp_path, args):
    # (it was silently ignored: --inline runs every module in the gateway's process, and a
    # writing module's later stages must read what it wrote)
    res = run_cli("chain", args[0], write(tmp_path, "good.pcap", GOOD), *args[1:], "--max-backlog", "3",
                  "--events", "/dev/null")
    one_line_error(res, "--max-backlog lets a read-only module in its own worker fall behind")


@pytest.mark.parametrize("args,words", [
    (["afpacket:lo", "--count", "-1"], "--count -1: a number of packets, 1 or more"),
    (["afpacket:lo", "--count", "0"], "--count 0: a number of packets"),
    (["afpacket:lo", "--duration", "-1"], "--duration -1: seconds, more than 0"),
    (["afpacket:lo", "--duration", "0"], "--duration 0: seconds, more than 0"),
    # (an interface that does not exist: the duration is refused before it is looked for)
    (["afpacket:nosuch0", "--duration", "inf"], "--duration inf: seconds, more than 0 and finite"),
    (["afpacket:nosuch0", "--duration", "1e400"], "--duration 1e400: seconds, more than 0 and finite"),
    (["afpacket:nosuch0", "--duration", "nan"], "--duration nan: seconds, more than 0 and finite"),
    # as given, sign and unit (-5m was "seconds, or with a unit", 0ms was "--duration 0")
    (["afpacket:nosuch0", "--duration", "-5m"], "--duration -5m: seconds, more than 0 and finite"),
    (["afpacket:nosuch0", "--duration", "0ms"], "--duration 0ms: seconds, more than 0 and finite"),
    (["afpacket:nosuch0,duration=inf"], "afpacket:nosuch0,duration=inf: duration=inf: seconds, more than 0 and finite"),
    (["afpacket:lo,count=-2"], "afpacket:lo,count=-2: count=-2: a number of packets"),
    (["afpacket:lo,ring=3M", "--duration", "1"], "ring=3M is not a power of two"),
    (["afpacket:lo,block=6k", "--duration", "1"], "block=6k is not a power of two"),
    (["afpacket:lo,block=1k", "--duration", "1"], "block=1k is less than 4k, the smallest block the kernel takes"),
    (["afpacket:lo,fanout=abc", "--duration", "1"], "fanout='abc' is a group number from 0 to 65535"),
])
def test_live_source_limits_and_options_are_checked_before_capturing(args, words):
    # they started a capture that ended at once (or a ring the kernel was given fewer blocks
    # of), exit 0; fanout=abc said what int() says
    one_line_error(run_cli("stats", *args), words)


def test_a_file_name_that_is_not_utf8_is_shown_by_its_bytes(tmp_path):
    name = os.fsdecode(b"bad\xffname.pcap")
    (tmp_path / name).write_bytes(b"")
    res = run_cli("stats", tmp_path / name)
    assert res.returncode == 2 and "bad\\xffname.pcap" in res.stderr and "udcff" not in res.stderr


USER0 = 147      # a link type flowsift does not decode (editcap -T user0 makes such captures)


@pytest.mark.parametrize("args", [["stats"], ["streams", "--discard"], ["gateway"], ["chain", "counter"],
                                  ["chain", "counter", "--shards", "2"]])
def test_a_capture_of_no_link_type_flowsift_decodes_is_one_line(tmp_path, args):
    """Nothing in it can be decoded: every command says which link type, exit 2, rather than
    a summary of nothing with exit 0."""
    frames = [(1, k, ether(ipv4(A, B, 6, tcp(40000, 80, seq=1 + k, payload=b"x")))) for k in range(14)]
    cap = write(tmp_path, "u0.pcap", pcap(frames, linktype=USER0))
    *command, = args
    if command[0] == "gateway":
        command += ["--store", tmp_path / "store"]         # (its default store would stay in /dev/shm)
    res = run_cli(*command[:2 if command[0] == "chain" else 1], cap, *command[2 if command[0] == "chain" else 1:])
    one_line_error(res, "u0.pcap", "nothing decoded", "link type 147 (USER0) not supported")


def _stores_of(capture):
    """The default stores (under /dev/shm, or the temporary directory) whose store.json names
    `capture`: other runs' stores are not this test's."""
    import glob
    import tempfile
    found = []
    for parent in ("/dev/shm", tempfile.gettempdir()):
        for manifest in glob.glob(os.path.join(parent, "flowsift-*", "store.json")):
            try:
                with open(manifest) as f:
                    if str(capture) in f.read():
                        found.append(os.path.dirname(manifest))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("args", [["gateway"], ["chain", "counter"], ["chain", "counter", "--inline"]])
def test_a_capture_where_nothing_decodes_leaves_no_store(tmp_path, args):
    """Packets were read but none made a connection, and the run fails: the store it made goes
    (a new --store directory, the default one under /dev/shm), a --store directory that was
    there keeps what it held, and the next run on it is not refused for a store of nothing."""
    frames = [(1, k, ether(ipv4(A, B, 6, tcp(40000, 80, seq=1 + k, payload=b"x")))) for k in range(14)]
    cap = write(tmp_path, "u0.pcap", pcap(frames, linktype=USER0))
    good = write(tmp_path, "good.pcap", GOOD)
    name, rest = args[:2 if args[0] == "chain" else 1], args[2 if args[0] == "chain" else 1:]

    new = tmp_path / "new"
    one_line_error(run_cli(*name, cap, *rest, "--store", new), "nothing decoded")
    assert not os.path.lexists(new)

    there = tmp_path / "there"
    there.mkdir()
    (there / "notes.txt").write_text("mine")
    one_line_error(run_cli(*name, cap, *rest, "--store", there), "nothing decoded")
    assert os.listdir(there) == ["notes.txt"] and (there / "notes.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_cli(*name, cap, *rest, "--store", empty), "nothing decoded")
    assert os.listdir(empty) == []
    run_cli(*name, good, *rest, "--store", empty, check=True)      # (not "holds an earlier store")

    # the default store: removed (chain --keep would keep it after a run that worked)
    one_line_error(run_cli(*name, cap, *rest, *(["--keep"] if name[0] == "chain" else [])), "nothing decoded")
    assert _stores_of(cap) == []


def test_packets_of_a_link_type_not_decoded_are_named_in_every_summary(tmp_path):
    """A pcapng with an Ethernet interface and a USER0 one: the Ethernet packets are read, the
    others counted and their link type named, in JSON and in the tables; exit 0."""
    import json
    blocks = [shb(), idb(1), idb(USER0)]
    for k in range(3):
        blocks += [epb(0, 10**6 + k, ether(ipv4(A, B, 6, tcp(40000, 80, seq=1 + k, payload=b"x")))),
                   epb(1, 10**6 + k, b"\0" * 40)]
    cap = write(tmp_path, "mixed.pcapng", b"".join(blocks))
    named = [{"linktype": USER0, "name": "USER0", "packets": 3}]
    for args in (["stats", cap], ["streams", cap, "--discard"], ["gateway", cap, "--store", tmp_path / "s1"],
                 ["chain", "counter", cap]):
        res = run_cli(*args, "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout.splitlines()[-1])["unsupported_link_types"] == named, args

    def text(*args):
        # the table's words, whatever width folded its cells
        return " ".join(re.sub(r"[│┃]", " ", run_cli(*args, check=True).stdout).split())
    assert "3 not decoded: link type 147 (USER0) unsupported" in text("streams", cap, "--discard")
    assert "link type 147 (USER0): 3" in text("stats", cap)
    assert "3 not decoded: link type 147 (USER0) unsupported" in text("gateway", cap, "--store", tmp_path / "s2")


@pytest.mark.parametrize("args", [
    ["chain", "counter", "{cap}", "--events", ""], ["chain", "counter", "{cap}", "--store", ""],
    ["gateway", "{cap}", "--store", ""], ["replay", "{cap}", "--to", "127.0.0.1:9", "--report", ""],
    ["module", "counter", "--registry", "redis://127.0.0.1:1/0", "--events", ""]])
def test_an_empty_path_is_said_to_be_empty(corpus, args):
    """An empty option value names no file: said so, before anything is read or opened."""
    option = args[-2]
    res = run_cli(*[a.format(cap=corpus / "http__dpkt__http.pcap") for a in args])
    assert res.returncode == 2 and res.stderr == f"flowsift: {args[0]}: {option} '': an empty path names nothing\n"


@pytest.mark.parametrize("args", [["chain", "counter", "{cap}", "--events", "--json"],
                                  ["chain", "counter", "{cap}", "-w", "-h", "--store", "st"],
                                  ["chain", "counter", "{cap}", "--store", "--keep"],
                                  ["streams", "{cap}", "-o", "-h"],
                                  ["gateway", "{cap}", "--store", "--json"],
                                  ["replay", "{cap}", "--to", "127.0.0.1:9", "--report", "--json"]])
def test_an_option_typed_where_a_file_name_goes_is_refused(tmp_path, args):
    """`--events --json` took "--json" for the events file's name: the run went on, its summary
    left out, and a file "--json" was made where the user stood (`-o -h`, `--store --keep` alike)."""
    import subprocess
    import sys
    cap = write(tmp_path, "in.pcap", GOOD)
    res = subprocess.run([sys.executable, "-m", "flowsift", *(a.format(cap=cap) for a in args)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    name = args[args.index("{cap}") + 2] if args[0] != "replay" else "--json"
    one_line_error(res, f"{name!r} is an option, not a file name (a name that begins with '-': ./{name})")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pcap"]


def test_a_file_name_that_begins_with_a_dash_is_taken_as_dot_slash_name(tmp_path):
    import subprocess
    import sys
    cap = write(tmp_path, "in.pcap", GOOD)
    res = subprocess.run([sys.executable, "-m", "flowsift", "chain", "counter", str(cap), "--events", "./-h",
                          "--store", "st"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "-h").exists()
