"""DPDK with virtual devices (no NIC, no hugepages): net_pcap reads a corpus capture and writes
what flowsift forwards, net_ring loops frames back. The EAL allows one initialisation per
process, so every case runs flowsift in a process of its own."""
import json
import os
import subprocess
import sys

import pytest

from conftest import CORPUS, IN_CI

JPEGS = CORPUS / "http__tcpflow__jpegs.cap"


@pytest.fixture(autouse=True)
def dpdk_built():
    try:
        import flowsift.io._dpdk  # noqa: F401
    except ImportError:
        msg = "flowsift was built without DPDK (apt-get install libdpdk-dev; ./dev build)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def flowsift(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "flowsift", *map(str, args)], capture_output=True, text=True,
                         timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def frames_of(path):
    from flowsift.io import Batch, open_capture
    cap, b, out = open_capture(path), Batch(512), []
    while cap.fill(b):
        out += [b.frame(i) for i in range(b.n)]
    return out


def test_streams_through_net_pcap_equal_streams_of_the_file(tmp_path, corpus):
    a, b = tmp_path / "dpdk", tmp_path / "file"
    res = flowsift("streams", f"dpdk:net_pcap0,rx_pcap={JPEGS}", "--count", 483, "-o", a, "--json")
    flowsift("streams", JPEGS, "-o", b, "--json")
    got = json.loads(res.stdout)
    assert got["kernel"]["driver"] == "net_pcap" and got["kernel"]["received"] == 483
    # the port's timestamps are the capture's: the index is the same to the byte, and so is every stream
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) > 30
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_stats_and_filter_through_net_pcap(corpus):
    expr = "tcp[tcpflags] & tcp-syn != 0"
    got = json.loads(flowsift("stats", f"dpdk:net_pcap0,rx_pcap={JPEGS}", "--count", 483, "--filter", expr,
                              "--json").stdout)
    want = json.loads(flowsift("stats", JPEGS, "--filter", expr, "--json").stdout)
    for k in ("packets", "filtered", "flows", "protocols", "bytes_captured", "time"):
        assert got[k] == want[k], k


def test_inline_through_net_pcap_tx(tmp_path, corpus):
    out = tmp_path / "tx.pcap"
    res = flowsift("chain", "counter", f"dpdk:net_pcap0,rx_pcap={JPEGS},tx_pcap={out}", "--out", "dpdk:net_pcap0",
                   "--count", 483, "--events", "/dev/null", "--json")
    s = json.loads(res.stdout)
    assert s["egress"]["forwarded"] == 483 and s["modules"]["counter"]["flows"] == 19
    assert frames_of(out) == frames_of(JPEGS)            # forwarded byte for byte
    # with nat: the frames -w writes from the file, no more, no less
    out2, ref = tmp_path / "tx2.pcap", tmp_path / "ref.pcap"
    chain = "nat(to=10.9.9.9:8080)"
    flowsift("chain", chain, f"dpdk:net_pcap0,rx_pcap={JPEGS},tx_pcap={out2}", "--out", "dpdk:net_pcap0",
             "--count", 483, "--events", "/dev/null")
    flowsift("chain", chain, JPEGS, "-w", ref, "--events", "/dev/null")
    assert frames_of(out2) == frames_of(ref)


def test_inline_out_naming_the_sources_port_by_number(tmp_path, corpus):
    """`--out dpdk:0` for the port the source's net_pcap0 is: a second DpdkPort for it failed,
    "cannot create a pool ... File exists"; it is the same port, as `--out dpdk:net_pcap0`."""
    out = tmp_path / "tx.pcap"
    res = flowsift("chain", "counter", f"dpdk:net_pcap0,rx_pcap={JPEGS},tx_pcap={out}", "--out", "dpdk:0",
                   "--count", 483, "--events", "/dev/null", "--json")
    assert json.loads(res.stdout)["egress"]["forwarded"] == 483
    assert frames_of(out) == frames_of(JPEGS)


def test_an_output_port_takes_mbufs(tmp_path):
    """`--out dpdk:X,mbufs=N` was refused as not a port ("expected afpacket:IFACE or dpdk:PORT"):
    an output port of its own takes its pool's size; the source's port has the source's."""
    out = tmp_path / "tx.pcap"
    res = flowsift("chain", "counter", f"dpdk:net_pcap0,rx_pcap={JPEGS}", "--count", 483, "--out",
                   f"dpdk:net_pcap1,tx_pcap={out},mbufs=2048", "--events", "/dev/null", "--json")
    assert json.loads(res.stdout)["egress"]["forwarded"] == 483 and frames_of(out) == frames_of(JPEGS)
    src = f"dpdk:net_pcap0,rx_pcap={JPEGS},tx_pcap={out}"
    for spec, said in (("dpdk:net_pcap0,mbufs=2048", "dpdk:net_pcap0 is the source's port, with its 8191 packet "
                                                      "buffers: give mbufs= to the source"),
                       ("dpdk:0,count=5", "count= is for sources; an output takes mbufs= alone"),
                       ("dpdk:0,mbufs=5", "mbufs=5 is a number of packet buffers from 1792 to 4294967295")):
        res = flowsift("chain", "counter", src, "--count", 483, "--out", spec, "--events", "/dev/null", check=False)
        assert res.returncode == 2 and res.stderr.endswith(f"flowsift: chain: --out {spec}: {said}\n"), res.stderr


def test_a_count_in_the_spec_and_count_option_both(tmp_path):
    """`dpdk:...,count=7 --count 9` said "option 'count' is given twice" of a spec with a second
    count= the user never typed."""
    for args, said in (([f"afpacket:lo,count=7", "--count", "9"], "--count 9 and count=7 in afpacket:lo,count=7: give one"),
                       ([f"dpdk:net_pcap0,rx_pcap={JPEGS},duration=2", "--duration", "1m"],
                        f"--duration 1m and duration=2 in dpdk:net_pcap0,rx_pcap={JPEGS},duration=2: give one")):
        res = flowsift("stats", *args, check=False)
        assert res.returncode == 2 and res.stderr == f"flowsift: stats: {said}\n", res.stderr


@pytest.mark.parametrize("chain", ["redact(pattern=JFIF)", "counter,redact(pattern=JFIF)"])
def test_inline_payload_edits_are_applied(tmp_path, corpus, chain):
    """redact inline: the masked bytes leave in the forwarded frames (they are read back from
    the record files, which are given back only after the batch was forwarded), as with -w;
    after a parallel stage too (the writing stage gets each batch once the workers read it,
    not each connection at its end, when its frames are gone)."""
    out, ref = tmp_path / "tx.pcap", tmp_path / "ref.pcap"
    got = json.loads(flowsift("chain", chain, f"dpdk:net_pcap0,rx_pcap={JPEGS},tx_pcap={out}", "--out",
                              "dpdk:net_pcap0", "--count", 483, "--events", "/dev/null", "--json").stdout)
    want = json.loads(flowsift("chain", chain, JPEGS, "-w", ref, "--events", "/dev/null", "--json").stdout)
    sent, written, source = frames_of(out), frames_of(ref), frames_of(JPEGS)
    assert sum(b"JFIF" in f for f in source) == 5
    assert sent == written and not any(b"JFIF" in f for f in sent)
    assert got["egress"]["edited"] == want["egress"]["edited"] == 5 and got["modules"]["redact"]["redacted"] == 5


RING = """
import json, sys
from flowsift.io import Batch
from flowsift.io.live import dpdk_port
frames = [bytes.fromhex(h) for h in json.load(sys.stdin)]
port = dpdk_port("net_ring0")
sent = port.send(frames)
b, got = Batch(512), []
for _ in range(50):
    n = port.fill(b, 20)
    got += [b.frame(i).hex() for i in range(n)]
    if len(got) >= len(frames):
        break
print(json.dumps({"sent": sent, "got": got, "driver": port.driver}))
"""


def test_net_ring_loops_frames_back(corpus):
    frames = frames_of(JPEGS)[:300]
    res = subprocess.run([sys.executable, "-c", RING], input=json.dumps([f.hex() for f in frames]),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["driver"] == "net_ring" and r["sent"] == 300
    assert [bytes.fromhex(h) for h in r["got"]] == frames


def test_dpdk_mistakes_are_one_line_exit_2(corpus):
    for args, words in (
            (("stats", "dpdk:net_nosuch0", "--count", 1), "unknown DPDK driver net_nosuch"),
            (("--dpdk-args", "-l 0 --help", "stats", f"dpdk:net_pcap0,rx_pcap={JPEGS}", "--count", 1),
             "--help is not accepted"),
            (("stats", "dpdk:7", "--count", 1), "dpdk:7: no such port"),
            (("stats", "dpdk:", "--count", 1), "name the port")):
        res = flowsift(*args, check=False)
        assert res.returncode == 2, res.stderr
        lines = [l for l in res.stderr.strip().splitlines() if l.startswith("flowsift:")]
        assert len(lines) == 1 and words in lines[0], res.stderr


@pytest.mark.parametrize("args,words", [
    (("--dpdk-args", "--bogus", "stats", "dpdk:net_null0"), "DPDK refused --dpdk-args '--bogus': unrecognized option '--bogus'"),
    (("--dpdk-args", "-l 99 --no-huge", "stats", "dpdk:net_null0"), "DPDK refused --dpdk-args '-l 99 --no-huge': lcore 99 unavailable"),
    (("stats", "dpdk:net_bogus0"), "dpdk:net_bogus0: unknown DPDK driver net_bogus (a virtual device is"),
    (("stats", "dpdk:net_pcap0"), "dpdk:net_pcap0: net_pcap0 needs rx_pcap=FILE, rx_iface=IFACE or iface=IFACE"),
    (("stats", "dpdk:net_pcap0,tx_pcap=/nonexistent/x.pcap"),
     "the device did not probe: Couldn't open /nonexistent/x.pcap for writing; FLOWSIFT_DEBUG=1 shows DPDK's own")])
def test_what_dpdk_refuses_is_one_line_naming_the_problem(args, words):
    """DPDK's own lines (its log, its 60-line usage on stdout) came before flowsift's, and its
    reason was a stray errno: "Bad address" for an unknown driver, "No such file or directory"
    for net_pcap without arguments."""
    res = flowsift(*args, "--count", 1, check=False)
    assert res.returncode == 2 and res.stdout == "", res.stdout
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and words in res.stderr, res.stderr
    if "--bogus" in args:
        import os
        res = subprocess.run([sys.executable, "-m", "flowsift", *args, "--count", "1"], capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, FLOWSIFT_DEBUG="1"))
        assert res.returncode == 2 and "Usage: flowsift [options]" in res.stdout + res.stderr


def test_out_of_range_values_are_one_line_exit_2_before_capturing(corpus):
    """mbufs=-1, a count past 64 bits and an unclosed quote in --dpdk-args were internal
    errors (OverflowError, ValueError), the count one only after the capture had started."""
    for args, words in (
            (("stats", "dpdk:net_null0,mbufs=-1", "--count", 1), "mbufs=-1 is a number of packet buffers from 1792"),
            (("stats", "dpdk:net_null0,mbufs=99999999999", "--count", 1), "from 1792 to 4294967295"),
            (("stats", "dpdk:net_null0,mbufs=1791", "--count", 1), "from 1792 to"),
            (("stats", "dpdk:net_null0", "--count", 10 ** 23), "a number of packets, at most 2^63 - 1"),
            (("stats", f"dpdk:net_null0,count={10 ** 23}"), "a number of packets, at most 2^63 - 1"),
            (("--dpdk-args", "'unclosed", "stats", "dpdk:net_null0", "--count", 1), "--dpdk-args: no closing quotation"),
            # (DPDK took the words for the end of its options, and said only that hugepages failed)
            (("--dpdk-args", "hello world", "stats", "dpdk:net_null0", "--count", 1),
             "--dpdk-args: 'hello' is no EAL option nor an option's value (EAL options begin with '-'"),
            (("--dpdk-args", "--no-huge -m 256 stray", "stats", "dpdk:net_null0", "--count", 1),
             "--dpdk-args: 'stray' is no EAL option nor an option's value")):
        res = flowsift(*args, check=False)
        assert res.returncode == 2 and "capturing on" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr, res.stderr


def test_without_dpdk_the_message_says_what_to_install(corpus):
    code = ("import sys; sys.modules['flowsift.io._dpdk'] = None; sys.argv = ['flowsift', 'stats', 'dpdk:0']; "
            "from flowsift.cli import main; main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == ("flowsift: dpdk: sources need flowsift built with DPDK: apt-get install "
                                  "libdpdk-dev (pkg-config libdpdk), then ./dev build")


def inline_and_written(tmp_path, chain, src, count, code=0):
    """The chain run inline over a net_pcap port reading `src` (--out the same port), and over
    the file with -w: (the inline run's summary, frames it sent, frames -w wrote). `code`: the
    inline run's exit code (3: it left packets with accepted edits unedited)."""
    out, ref = tmp_path / "tx.pcap", tmp_path / "ref.pcap"
    res = flowsift("chain", chain, f"dpdk:net_pcap0,rx_pcap={src},tx_pcap={out}", "--out", "dpdk:net_pcap0",
                   "--count", count, "--events", "/dev/null", "--json", check=False)
    got = json.loads(res.stdout)
    if code is None:      # (the caller's to check: 3 for edits rejected as already forwarded)
        code = 3 if sum(n for k, n in got["edits"]["rejected"].items() if k.endswith(": already forwarded")) else 0
        assert res.stderr.count("edits came after their packets had been forwarded") == (code == 3), res.stderr
    assert res.returncode == code, res.stderr
    flowsift("chain", chain, src, "-w", ref, "--events", "/dev/null")
    return got, frames_of(out), frames_of(ref)


def test_inline_nat_rewrites_the_fragments_of_a_datagram_as_w_does(tmp_path, corpus):
    src = CORPUS / "frag__pcpp__frag_http_req.pcap"
    got, sent, written = inline_and_written(tmp_path, "nat(to=10.9.9.9:8080)", src, 11)
    assert got["egress"]["edited"] == 11 and got["egress"]["not_editable"] == 0
    assert sent == written != frames_of(src)


@pytest.mark.parametrize("batch", ["512", "1"])
def test_inline_sends_segments_out_of_order_with_their_own_bytes(tmp_path, corpus, monkeypatch, batch):
    """Segments out of order in a direction seen midstream (its stream starts below them): they
    left with zeros, read at their sequence-space offset taken for a stream offset, and edits
    after they had gone were accepted. In one batch they now leave as -w writes them; a packet
    at a time, each leaves as it came, and the edits that came after it are rejected."""
    monkeypatch.setenv("FLOWSIFT_BATCH", batch)
    src = CORPUS / "ooo__tcpflow__test5-lines-randomized.pcap"
    got, sent, written = inline_and_written(tmp_path, "redact(pattern=line 7)", src, 11,
                                            code=0 if batch == "512" else 3)
    if batch == "512":
        assert sent == written != frames_of(src) and got["egress"]["edited"] == 2
    else:
        assert sent == frames_of(src) != written
        assert got["edits"]["accepted"] == {} and sum(got["edits"]["rejected"].values()) > 0
        # the masking that came too late is no clean run: exit 3 (it was 0)
        assert set(got["edits"]["rejected"]) == {"redact: already forwarded"}


@pytest.mark.parametrize("capture,pattern,count", [("overlap__zeek__reassembly.pcap", "displayname", 117),
                                                   ("demo", "flowsift", 88)])
def test_inline_masks_late_retransmissions_and_datagrams_as_w_does(tmp_path, corpus, capture, pattern, count):
    """A retransmission after the connection ended, and UDP datagrams: masked when forwarded,
    as in -w's output."""
    from conftest import ROOT
    src = ROOT / "examples" / "demo.pcap" if capture == "demo" else CORPUS / capture
    got, sent, written = inline_and_written(tmp_path, f"redact(pattern={pattern})", src, count)
    assert len(sent) == count and sent == written
    assert any(pattern.encode() in f for f in frames_of(src)) and not any(pattern.encode() in f for f in sent)
    assert got["egress"]["edited"] > 0


def test_inline_payload_edits_of_later_batches_reach_the_wire(tmp_path, corpus):
    """The forwarder kept each record file open with the header it first read, so bytes
    published later read back short and 50 of 58 accepted redactions left unmasked (bro.org).
    Every accepted edit is now in the frames sent; what differs from -w is only what was
    rejected because its frame had gone already (a match split by a batch's end)."""
    src = CORPUS / "http__zeek__bro.org.pcap"
    got, sent, written = inline_and_written(tmp_path, "redact(pattern=HTTP)", src, 751, code=None)
    late = sum(got["edits"]["rejected"].values())
    assert got["egress"]["edited"] == got["edits"]["accepted"]["redact"]
    assert len(sent) == len(written) == 751
    assert sum(a != b for a, b in zip(sent, written)) <= late and sum(b"HTTP" in f for f in sent) <= late


def test_a_count_takes_no_more_frames_off_the_port_than_it_processes(tmp_path, corpus):
    """--count 100 took a whole burst of 512 off the port and left 412 out: inline, frames taken
    off the wire and neither processed nor forwarded, counted nowhere."""
    out = tmp_path / "tx.pcap"
    got = json.loads(flowsift("chain", "counter", f"dpdk:net_pcap0,rx_pcap={JPEGS},tx_pcap={out}", "--out",
                              "dpdk:net_pcap0", "--count", 100, "--events", "/dev/null", "--json").stdout)
    assert got["packets"] == got["egress"]["forwarded"] == got["kernel"]["received"] == 100
    assert frames_of(out) == frames_of(JPEGS)[:100]


def test_sigterm_to_the_process_group_ends_a_live_chain_as_sigterm_to_it_does(corpus):
    """`systemctl stop` and `timeout` signal the whole group: the module workers died of it and
    were restarted while the gateway ended the run. They leave it to the gateway now."""
    import os
    import signal
    import time
    p = subprocess.Popen([sys.executable, "-m", "flowsift", "chain", "counter,http", "dpdk:net_null0", "--json",
                          "--events", "/dev/null"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert "capturing on" in p.stderr.readline()
        time.sleep(1)
        os.killpg(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0 and "died" not in err, err
    s = json.loads(out.splitlines()[-1])
    assert s["kernel"]["stopped_by"] == "SIGTERM" and s["kernel"]["received"] > 0
    assert s["mode"] == "parallel" and [m["restarts"] for m in s["modules"].values()] == [0, 0]


def test_a_bad_out_port_is_said_before_the_first_packet(tmp_path, corpus):
    """--out dpdk: was opened at the first batch: with no traffic a bogus device went unnoticed
    (exit 0), with traffic the error came after the capture had started and the batch was lost."""
    import struct
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for src in (empty, JPEGS):
        res = flowsift("chain", "counter", f"dpdk:net_pcap0,rx_pcap={src}", "--out", "dpdk:net_bogus1",
                       "--duration", 2, "--events", "/dev/null", check=False)
        lines = [l for l in res.stderr.splitlines() if l.startswith("flowsift:")]
        assert res.returncode == 2 and len(lines) == 1 and "dpdk:net_bogus1" in lines[0], res.stderr


@pytest.mark.parametrize("name,words", [
    ("linktype__pcpp__raw_ip.pcap", "has link type RAW (101): net_pcap hands every frame on as Ethernet"),
    ("linktype__pcpp__sll.pcap", "has link type LINUX_SLL (113)"),
    ("linktype__pcpp__sll2.pcap", "has link type LINUX_SLL2 (276)"),
    ("linktype__pcpp__null_loopback.pcap", "has link type NULL (0)"),
    ("pcapng__zeek__gap-data-missing.pcapng", "has link types EN10MB (1), LINUX_SLL (113), 274: net_pcap reads one")])
def test_an_rx_pcap_that_is_not_ethernet_is_refused_before_capturing(corpus, name, words):
    """net_pcap hands every frame on as Ethernet: a raw IP capture read as 100 non-IP frames,
    and libpcap stopped a pcapng at its first interface of another link type (0 of 18 read)."""
    res = flowsift("stats", f"dpdk:net_pcap0,rx_pcap={CORPUS / name}", "--duration", 1, "--json", check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert words in res.stderr and "give flowsift the file itself instead" in res.stderr, res.stderr


def test_an_rx_pcap_flowsift_cannot_read_is_said_before_probing(tmp_path, corpus):
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n")
    for path, words in ((tmp_path / "nosuch.pcap", "rx_pcap=" + str(tmp_path / "nosuch.pcap") + ": no such file"),
                        (text, "not a capture file")):
        res = flowsift("stats", f"dpdk:net_pcap0,rx_pcap={path}", "--duration", 1, check=False)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and words in res.stderr, res.stderr


@pytest.mark.parametrize("form", ["--vdev DEV", "--vdev=DEV"])
def test_a_vdev_of_the_dpdk_args_gets_its_rx_pcap_checked_too(tmp_path, corpus, form):
    """The EAL probes a --vdev of --dpdk-args itself: a missing file was "needs rx_pcap=FILE" and
    an SLL capture was read as Ethernet frames (518 packets of nothing decodable)."""
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n")
    for path, words in ((tmp_path / "nosuch.pcap", f"rx_pcap={tmp_path / 'nosuch.pcap'}: no such file"),
                        (text, "not a capture file"),
                        (CORPUS / "linktype__pcpp__sll.pcap", "has link type LINUX_SLL (113)")):
        eal = "--no-huge -m 256 --no-pci " + form.replace("DEV", f"net_pcap0,rx_pcap={path}")
        res = flowsift("--dpdk-args", eal, "stats", "dpdk:0", "--duration", 1, check=False)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        # (a link type is the user's to fix, said as their usage error, with the command)
        said = "stats: " * ("link type" in words)
        assert res.stderr.startswith(f"flowsift: {said}--dpdk-args --vdev net_pcap0: rx_pcap=") and words in res.stderr, \
            res.stderr



def jumbo_capture(path, sizes):
    """One connection whose client sends a segment of each size (an ACK after each)."""
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    frames = []

    def add(client, seq, ack, flags, payload=b""):
        src, dst, sp, dp = (A, B, 40000, 80) if client else (B, A, 80, 40000)
        frames.append((1_700_000_000, len(frames), ether(ipv4(src, dst, 6, tcp(sp, dp, seq=seq, ack=ack, flags=flags,
                                                                              payload=payload)))))
    add(1, 1000, 0, 0x02)
    add(0, 5000, 1001, 0x12)
    add(1, 1001, 5001, 0x10)
    seq = 1001
    for i, size in enumerate(sizes):
        add(1, seq, 5001, 0x18, bytes((i * 7 + j) % 251 for j in range(size)))
        seq += size
        add(0, 5001, seq, 0x10)
    add(1, seq, 5001, 0x11)
    add(0, 5001, seq + 1, 0x11)
    add(1, seq + 1, 5002, 0x10)
    path.write_bytes(pcap(frames, snaplen=262144))
    return len(frames)


def test_frames_larger_than_an_mbuf_arrive_and_leave_whole(tmp_path):
    """Only 64 multi-segment frames a batch were joined (the others were cut to their first
    segment, counted truncated: 136 gaps in 200 segments of 10 KB), frames over 16 KiB were cut
    when joined, and frames over one mbuf (9,216 bytes) could not be sent at all."""
    src = tmp_path / "jumbo.pcap"
    n = jumbo_capture(src, [10000] * 150 + [20000] * 20 + [65000])
    a, b = tmp_path / "dpdk", tmp_path / "file"
    got = json.loads(flowsift("streams", f"dpdk:net_pcap0,rx_pcap={src}", "--count", n, "-o", a, "--json").stdout)
    flowsift("streams", src, "-o", b)
    assert got["kernel"]["truncated"] == 0 and got["kernel"]["multi_segment_copied"] == 171
    assert (a / "index.jsonl").read_bytes() == (b / "index.jsonl").read_bytes()     # bytes, sha256, no gaps
    got, sent, written = inline_and_written(tmp_path, "counter", src, n)
    assert got["egress"]["forwarded"] == n and got["egress"]["failed"] == 0
    assert sent == written == frames_of(src)


def test_frames_larger_than_an_mbuf_leave_as_a_chain_where_the_port_takes_one():
    """net_ring takes chained mbufs (and hands them back as they are): frames of several mbufs,
    past the largest mbuf (64 KiB) too, go round whole."""
    frames = [bytes((i + j) % 256 for j in range(size)) for i, size in enumerate([60, 9000, 9300, 20000, 70000, 200000])]
    res = subprocess.run([sys.executable, "-c", RING], input=json.dumps([f.hex() for f in frames]),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["sent"] == len(frames) and [bytes.fromhex(h) for h in r["got"]] == frames


def test_net_pcap_times_of_1970_are_the_captures(tmp_path):
    """net_pcap's time unit was guessed from the first frame: a capture stamped in 1970 (times
    from 0) looked like a device clock, and every frame got the time it was read."""
    from pcapgen import A, B, ether, ipv4, pcap, udp
    src = tmp_path / "epoch.pcap"
    src.write_bytes(pcap([(sec, 250000, ether(ipv4(A, B, 17, udp(5000, 53, b"x" * sec)))) for sec in range(5)]))
    got = json.loads(flowsift("stats", f"dpdk:net_pcap0,rx_pcap={src}", "--count", 5, "--json").stdout)
    want = json.loads(flowsift("stats", src, "--json").stdout)
    assert got["time"] == want["time"] and want["time"]["first_ns"] == 250000000
    assert got["kernel"]["port_timestamps"] == 5


def test_inline_udp_edits_after_a_datagram_the_snaplen_cut_land_where_they_do_with_w(tmp_path):
    """A UDP direction's stream counts a cut datagram whole (its cut tail is a gap): inline
    counted only its captured bytes, and the edits of every later datagram landed short."""
    from pcapgen import A, B, ether, ipv4, pcap, udp
    recs = []
    for k, fill in enumerate(b"ABCD"):
        frame = ether(ipv4(A, B, 17, udp(40000, 53, bytes([fill]) * 100)))
        cut = frame[:len(frame) - 60] if fill == ord("B") else frame
        recs.append((1_700_000_000, k, cut, len(frame)))
    src, out, ref = tmp_path / "in.pcap", tmp_path / "tx.pcap", tmp_path / "ref.pcap"
    src.write_bytes(pcap(recs))
    chain = "redact(pattern=DDDD,mask=Z)"
    got = json.loads(flowsift("chain", chain, f"dpdk:net_pcap0,rx_pcap={src},tx_pcap={out}", "--out",
                              "dpdk:net_pcap0", "--count", 4, "--events", "/dev/null", "--json").stdout)
    flowsift("chain", chain, src, "-w", ref, "--events", "/dev/null")
    sent = frames_of(out)
    assert sent == frames_of(ref) and got["egress"]["edited"] == 1
    assert sent[3].endswith(b"Z" * 100)


NAT_AND_DROP = '''
from flowsift.modules import Module


class NatDrop(Module):
    """Rewrites datagrams to port 9000, drops those to 9001.

    Synopsis: natdrop
    """
    name = "natdrop"
    writes = {"ip.dst", "drop"}
    reads = {"records"}

    def on_packet(self, flow, record):
        if flow.server.endswith(":9000"):
            flow.edit(record, ip_dst="10.9.9.9")
        else:
            flow.drop(record)
'''


def test_inline_a_fragment_sent_again_in_a_later_batch_leaves_as_its_datagram_did(tmp_path, monkeypatch):
    """A packet at a time, a copy of a fragment after its datagram was rebuilt and sent came
    out as it was captured: the address a NAT hides, out of the NAT; a dropped datagram's
    copy went out too. It now leaves as with -w: edited, or dropped."""
    from pcapgen import A, B, fragments, pcap, udp
    monkeypatch.setenv("FLOWSIFT_BATCH", "3")         # each datagram in a batch, the copies in the next
    frames = []
    for ident, port in ((7, 9000), (8, 9001)):
        frames += fragments(A, B, 17, udp(41000, port, bytes([port & 255]) * 400), [0, 160, 320], ident=ident)
    frames += [frames[1], frames[4]]
    src, out, ref = tmp_path / "in.pcap", tmp_path / "tx.pcap", tmp_path / "ref.pcap"
    src.write_bytes(pcap([(1_700_000_000, i * 10_000, f) for i, f in enumerate(frames)]))
    mod = tmp_path / "natdrop.py"
    mod.write_text(NAT_AND_DROP)
    got = json.loads(flowsift("chain", mod, f"dpdk:net_pcap0,rx_pcap={src},tx_pcap={out}", "--out",
                              "dpdk:net_pcap0", "--count", len(frames), "--events", "/dev/null", "--json").stdout)
    flowsift("chain", mod, src, "-w", ref, "--events", "/dev/null")
    sent = frames_of(out)
    assert sent == frames_of(ref) and len(sent) == 4
    assert all(f[14 + 16:14 + 20] == bytes([10, 9, 9, 9]) for f in sent)
    assert got["egress"]["edited"] == 4 and got["egress"]["dropped"] == 4
    assert sent[3] == sent[1]                               # (the copy, as its original left)


@pytest.mark.parametrize("batch", ["512", "1"])
def test_inline_stream_edits_go_into_fragments_as_w_puts_them(tmp_path, corpus, monkeypatch, batch):
    """Redactions inside a TCP stream that came in IP fragments, and a UDP datagram in fragments
    followed by whole ones: inline sent every fragment unmasked and counted nothing, and the
    whole datagrams after it were masked at offsets shifted by the fragmented one. In one batch
    they now leave as -w writes them; a fragment at a time, the fragmented datagrams leave as
    they came, counted, and the rest as -w writes it."""
    from pcapgen import A, B, ether, fragments, ipv4, pcap, tcp, udp
    monkeypatch.setenv("FLOWSIFT_BATCH", batch)
    frames = [ether(ipv4(A, B, 6, tcp(40000, 80, seq=99, flags=0x02))),
              ether(ipv4(B, A, 6, tcp(80, 40000, seq=499, ack=100, flags=0x12))),
              ether(ipv4(A, B, 6, tcp(40000, 80, seq=100, ack=500, flags=0x10)))]
    frames += fragments(A, B, 6, tcp(40000, 80, seq=100, ack=500, payload=b"id=12345&pin=9876 " * 30),
                        [0, 160, 320], ident=9)
    frames.append(ether(ipv4(B, A, 6, tcp(80, 40000, seq=500, ack=640, flags=0x10))))
    src = tmp_path / "tcp.pcap"
    src.write_bytes(pcap([(1_700_000_000, i * 10_000, f) for i, f in enumerate(frames)]))
    got, sent, written = inline_and_written(tmp_path, "redact(pattern=[0-9]+)", src, len(frames),
                                            code=0 if batch == "512" else 3)
    if batch == "512":
        assert sent == written != frames and got["egress"]["edited"] == 3 and got["egress"]["not_editable"] == 0
    else:
        assert sent == frames != written and got["egress"]["not_editable"] == 3
    frames = fragments(A, B, 17, udp(41000, 9000, b"a secret, " * 40), [0, 160, 320], ident=7)
    frames += [ether(ipv4(A, B, 17, udp(41000, 9000, b"another secret"))) for _ in range(2)]
    udp_src = tmp_path / "udp.pcap"
    udp_src.write_bytes(pcap([(1_700_000_000, i * 10_000, f) for i, f in enumerate(frames)]))
    got, sent, written = inline_and_written(tmp_path, "redact(pattern=secret)", udp_src, len(frames),
                                            code=0 if batch == "512" else 3)
    assert b"secret" not in b"".join(written) and sent[3:] == written[3:]
    if batch == "512":
        assert sent == written and got["egress"]["edited"] == 5 and got["egress"]["not_editable"] == 0
    else:
        assert sent[:3] == frames[:3] and got["egress"]["not_editable"] == 3


def test_inline_drops_the_late_packets_of_a_connection_dropped_whole_as_w_does(tmp_path, corpus):
    from test_write_back import conn_dropper
    src = CORPUS / "retrans__zeek__ssh-dups.pcap"
    got, sent, written = inline_and_written(tmp_path, str(conn_dropper(tmp_path)), src, 377)
    assert sent == written == []
    assert got["egress"]["late_dropped"] == got["engine"]["late_packets"] > 0


def test_inline_edits_tiny_fragments_as_w_does(tmp_path, corpus):
    """8-byte fragments: each edit goes into the fragment that holds its bytes, as with -w."""
    src = CORPUS / "frag__peafowl__http_ip_fragmented_out_of_order.pcap"
    got, sent, written = inline_and_written(tmp_path, "nat(to=10.9.9.9:8080),redact(pattern=Digest)", src, 444)
    assert got["egress"]["not_editable"] == 0 and got["egress"]["edited"] == 444
    assert sent == written != frames_of(src)


def test_an_idle_port_does_not_spin_a_core():
    """A port with nothing to read (net_ring, no sender) is polled with pauses, not spun: the
    process takes a small part of one core."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = flowsift("stats", "dpdk:net_ring0", "--duration", 3, "--json")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert json.loads(res.stdout)["packets"] == 0
    assert cpu < 1.5, f"{cpu:.2f} s of CPU in a 3 s idle run"


def test_the_fewest_mbufs_taken_lose_no_frame():
    """mbufs= at its least takes every frame of a burst the size of the receive ring: 385 (a
    pool's cache and a little) lost frames for want of buffers (rx_nombuf), so a --count was
    never reached and the run waited for a signal."""
    speed = CORPUS / "speed__pcpp__example.pcap"
    res = flowsift("stats", f"dpdk:net_pcap0,rx_pcap={speed},mbufs=1792", "--count", 4631, "--json")
    s = json.loads(res.stdout)
    assert s["packets"] == s["kernel"]["received"] == 4631 and s["kernel"]["port_rx_nombuf"] == 0


def test_an_output_device_that_cannot_send_is_refused():
    """--out dpdk:net_pcap1,rx_pcap=F (no tx_pcap, tx_iface or iface): DPDK takes the device and
    drops what it is given, counted sent; the run said it forwarded every frame, exit 0."""
    res = flowsift("chain", "counter", f"dpdk:net_pcap0,rx_pcap={JPEGS}", "--count", 5, "--out",
                   f"dpdk:net_pcap1,rx_pcap={JPEGS}", check=False)
    assert res.returncode == 2 and res.stdout == "" and res.stderr == (
        f"flowsift: chain: --out dpdk:net_pcap1,rx_pcap={JPEGS}: net_pcap1 sends only with tx_pcap=FILE, tx_iface=IFACE "
        f"or iface=IFACE; without one, every frame would go nowhere\n")


def test_a_device_named_again_with_other_arguments_is_refused(tmp_path, corpus):
    """The arguments of a device that is there already were ignored: --out naming the source's
    device with a tx_pcap= sent nothing (the port had no tx side) and said it forwarded all, and a
    source given with other arguments than --dpdk-args' --vdev made it read the --vdev's file."""
    get = corpus / "http__zeek__get.pcap"
    res = flowsift("chain", "counter", f"dpdk:net_pcap0,rx_pcap={get}", "--count", 14, "--out",
                   f"dpdk:net_pcap0,tx_pcap={tmp_path / 'o.pcap'}", check=False)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == (
        f"flowsift: dpdk:net_pcap0,tx_pcap={tmp_path / 'o.pcap'}: net_pcap0 is open already, made as "
        f"dpdk:net_pcap0,rx_pcap={get}: name it alone (dpdk:net_pcap0), or give another device")
    assert not (tmp_path / "o.pcap").exists()
    eal = "-l 0 --no-huge -m 256 --no-pci --no-shconf --no-telemetry --log-level=*:error"
    res = flowsift("--dpdk-args", f"{eal} --vdev net_pcap0,rx_pcap={get}", "stats",
                   f"dpdk:net_pcap0,rx_pcap={JPEGS}", "--count", 3, check=False)
    assert res.returncode == 2 and res.stderr.strip() == (
        f"flowsift: dpdk:net_pcap0,rx_pcap={JPEGS}: net_pcap0 was made by --dpdk-args --vdev, with its own "
        f"arguments: name it alone (dpdk:net_pcap0), or give another device")
    # named alone, it is the device as made: the source's own, sending where it was told to
    out = tmp_path / "same.pcap"
    flowsift("chain", "counter", f"dpdk:net_pcap0,rx_pcap={get},tx_pcap={out}", "--count", 14, "--out",
             "dpdk:net_pcap0", "--events", os.devnull)
    assert out.exists()


def test_frames_an_output_port_refuses_say_why(tmp_path):
    """A frame larger than the largest buffer net_pcap sends (65,407 bytes) is refused by the
    output port: the summary's egress says why (failed_reasons), as an AF_PACKET output's does;
    it counted the frame failed, no reason given, when the output was not the source's port."""
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    frames = [ether(ipv4(A, B, 6, tcp(40000, 80, seq=1000, flags=0x02))),
              ether(ipv4(A, B, 6, tcp(40000, 80, seq=1001, flags=0x18, payload=b"B" * 65455))),
              ether(ipv4(A, B, 6, tcp(40000, 80, seq=66456, flags=0x11)))]
    src = tmp_path / "big.pcap"
    src.write_bytes(pcap([(1, k, f) for k, f in enumerate(frames)]))
    out = tmp_path / "out.pcap"
    res = flowsift("chain", "counter", f"dpdk:net_pcap0,rx_pcap={src}", "--count", 3, "--out",
                   f"dpdk:net_pcap1,tx_pcap={out}", "--events", os.devnull, "--json")
    e = json.loads(res.stdout)["egress"]
    assert (e["forwarded"], e["failed"], e["failed_reasons"]) == (2, 1, {"too_large": 1, "no_mbufs": 0, "other": 0})

