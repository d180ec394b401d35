"""AF_PACKET, live: a network namespace and veth pairs made by each test, frames from a corpus
capture sent on one end and read on the other through the TPACKET_V3 ring, with the kernel
running the BPF filter. Nothing leaves the namespace; every loop is bounded."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import CORPUS, IN_CI, require

JPEGS = "http__tcpflow__jpegs.cap"          # 483 frames, 19 TCP connections


class Netns:
    """A private network namespace with veth pairs (created here, removed afterwards)."""

    def __init__(self):
        if os.geteuid() != 0:
            msg = "AF_PACKET tests need root (network namespaces, raw sockets)"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
        require("ip")
        self.name = "fs" + uuid.uuid4().hex[:10]
        self.procs = []                 # what a failed test left running is killed at close
        self.ip("netns", "add", self.name)
        self.exec("ip", "link", "set", "lo", "up")
        self.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")     # no router solicitations
        self.exec("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")

    def ip(self, *args):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)

    def exec(self, *args):
        return subprocess.run(["ip", "netns", "exec", self.name, *args], check=True, capture_output=True, text=True,
                              timeout=60)

    def veth(self, a, b):
        self.ip("-n", self.name, "link", "add", a, "type", "veth", "peer", "name", b)
        for dev in (a, b):
            self.ip("-n", self.name, "link", "set", dev, "mtu", "9000")
            self.ip("-n", self.name, "link", "set", dev, "up")

    def flowsift(self, *args):
        return self.popen(sys.executable, "-m", "flowsift", *args)

    def python(self, code, *args):
        return self.popen(sys.executable, "-c", code, *args)

    def popen(self, *args, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()               # (a flowsift cleans up at SIGTERM: its store, its shards)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=20)
        # what they started outlives them (a sharded run's shards and workers, after a failed
        # test), in the namespace, which it keeps alive: every process still in it goes too
        left = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=20)
        for pid in left.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)


@pytest.fixture
def netns():
    ns = Netns()
    ns.veth("va", "vb")
    yield ns
    ns.close()


SEND = """
import sys
from flowsift.io import Batch, open_capture
from flowsift.io._afpacket import AfPacketSink
cap, b, frames = open_capture(sys.argv[1]), Batch(512), []
while cap.fill(b):
    frames += [b.frame(i) for i in range(b.n)]
sink = AfPacketSink(sys.argv[2])
print(sink.send(frames))
"""


def started(proc, timeout=20):
    """Wait for a live flowsift to say it is capturing (its socket is bound; with --shards,
    every shard's); returns that line."""
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "capturing on" in line or not line:
            break
    assert "capturing on" in line, line + proc.stderr.read()
    return line


def send(ns, capture, dev="vb"):
    p = ns.python(SEND, capture, dev)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return int(out)


def live(ns, *args, capture=CORPUS / JPEGS, dev="va"):
    """Run `flowsift ARGS afpacket:DEV ... --json` in the namespace while the capture is sent."""
    p = ns.flowsift(*args)
    started(p)
    assert send(ns, capture) > 0
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return json.loads(out)


def file_stats(name, *extra):
    res = subprocess.run([sys.executable, "-m", "flowsift", "stats", CORPUS / name, "--json", *extra],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def test_stats_live_equals_stats_of_the_file(netns, corpus):
    want = file_stats(JPEGS)
    got = live(netns, "stats", "afpacket:va", "--count", want["packets"], "--duration", 30, "--json")
    assert got["packets"] == want["packets"] == 483
    assert got["flows"] == want["flows"] and got["protocols"] == want["protocols"]
    assert got["bytes_captured"] == want["bytes_captured"]
    k = got["kernel"]
    assert k["stopped_by"] == "count" and k["kernel_drops"] == 0 and k["received"] == 483 and k["left_in_ring"] == 0
    assert (k["count"], k["duration"]) == (483, 30.0)
    assert got["format"] == "afpacket" and got["interfaces"][0]["name"] == "va"
    assert got["interfaces"][0]["tsresol"] == "1e-9"           # as a file's are written


def test_frames_left_in_the_ring_at_the_stop_are_counted(netns, corpus):
    """--count stops in the middle of the burst: the frames the kernel took after the last one
    read are neither received nor dropped, and were unexplained."""
    got = live(netns, "stats", "afpacket:va", "--count", 10, "--duration", 30, "--json")
    k = got["kernel"]
    assert k["stopped_by"] == "count" and k["received"] == got["packets"] == 10
    assert k["left_in_ring"] > 0
    assert k["kernel_packets"] == k["received"] + k["kernel_drops"] + k["left_in_ring"]


def test_the_kernel_runs_the_filter(netns, corpus):
    expr = "tcp[tcpflags] & tcp-syn != 0"
    want = file_stats(JPEGS, "--filter", expr)
    n = want["packets"] - want["filtered"]
    assert 0 < n < 100
    got = live(netns, "stats", "afpacket:va", "--filter", expr, "--duration", 3, "--json")
    # only the matching frames crossed into user space: the kernel counted no others
    assert got["packets"] == n and got["kernel"]["kernel_packets"] == n and got["filtered"] == 0
    assert got["flows"]["tcp"] == want["flows"]["tcp"]


def test_streams_live_equals_streams_of_the_file(netns, corpus, tmp_path):
    res = subprocess.run([sys.executable, "-m", "flowsift", "streams", CORPUS / JPEGS, "--discard", "--json"],
                         capture_output=True, text=True, check=True)
    want = json.loads(res.stdout)
    got = live(netns, "streams", "afpacket:va", "--discard", "--count", 483, "--duration", 30, "--json")
    for k in ("tcp", "udp", "packets", "bytes", "gaps", "gap_bytes", "conflicts", "retransmissions"):
        assert got[k] == want[k], k
    assert got["kernel"]["received"] == 483


def test_fanout_splits_connections_whole_between_shards(netns, corpus):
    want = file_stats(JPEGS)
    shards = [netns.flowsift("stats", "afpacket:va,fanout=7", "--duration", 3, "--json") for _ in range(2)]
    for p in shards:
        started(p)
    send(netns, CORPUS / JPEGS)
    results = []
    for p in shards:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["packets"] for r in results) == 483
    # the hash is symmetric: each connection (both directions) lands whole on one shard
    assert sum(r["flows"]["tcp"] for r in results) == want["flows"]["tcp"]
    assert all(r["packets"] > 0 for r in results)


def test_a_small_block_says_the_snaplen_it_gives(netns):
    """block=4k cuts a 9,000-byte frame to 3,966 bytes: the interface's snaplen says so (it said
    262144), and the table's file line gives no size (it said "0 B")."""
    p = netns.popen(sys.executable, "-m", "flowsift", "stats", "afpacket:va,block=4k", "--count", 1, "--json")
    started(p)
    jumbo = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + bytes(8986)
    sink = netns.python("from flowsift.io._afpacket import AfPacketSink; print(AfPacketSink('vb').send([%r]))" % jumbo)
    assert sink.communicate(timeout=60)[0].strip() == "1"
    out, err = p.communicate(timeout=60)
    got = json.loads(out)
    assert got["bytes_captured"] == 3966 and got["bytes_wire"] == 9000
    assert got["interfaces"][0]["snaplen"] == 3970
    p = netns.popen(sys.executable, "-m", "flowsift", "stats", "afpacket:va", "--duration", 0.2,
                    env=dict(os.environ, COLUMNS="200"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    line = next(l for l in out.splitlines() if l.startswith("file"))
    assert line.rstrip().endswith("(afpacket TPACKET_V3)"), line


def test_ctrl_c_ends_a_live_run_with_its_summary(netns, corpus):
    p = netns.flowsift("streams", "afpacket:va", "--discard", "--json")
    started(p)
    send(netns, CORPUS / JPEGS)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    got = json.loads(out)
    assert got["kernel"]["stopped_by"] == "SIGINT" and got["capture_packets"] == 483 and got["tcp"] == 19


def test_a_quiet_live_gateway_keeps_its_registry_heartbeat(netns, corpus, tmp_path):
    """Nothing on the wire for several heartbeat lifetimes: the gateway still tells the
    registry it is alive (attached modules would otherwise leave the run for dead)."""
    import redis
    from conftest import RedisServer
    sock = tmp_path / "redis.sock"          # a path: reachable from inside the namespace
    server = RedisServer(tmp_path, "--unixsocket", str(sock), "--unixsocketperm", "700")
    try:
        p = netns.popen(sys.executable, "-m", "flowsift", "gateway", "afpacket:va", "--registry",
                        f"unix://{sock}?db=0", "--run", "quiet", "--keep", "--store", tmp_path / "store",
                        "--json", env=dict(os.environ, FLOWSIFT_HEARTBEAT_TTL_MS="300"))
        started(p)
        client = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
        for _ in range(8):                  # 1.6 s of silence, five lifetimes of the key
            time.sleep(0.2)
            assert client.exists("flowsift:{quiet}:gateway"), "the gateway's heartbeat expired"
        send(netns, CORPUS / JPEGS)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert json.loads(out)["connections"]["tcp"] == 19
    finally:
        server.stop()


RING = """
import sys, json
from flowsift.io import Batch
from flowsift.io._afpacket import AfPacketSource
src = AfPacketSource("va", block_size=4096, block_nr=2)     # two small blocks: a burst overflows them
print("ready", flush=True)
sys.stdin.readline()                                        # the burst was sent, nothing read yet
b, n = Batch(512), 0
while True:
    k = src.fill(b, 200)
    if not k:
        break
    if n == 0:
        first = [b.frame(i) for i in range(min(k, 3))]
    n += k
print(json.dumps(dict(src.statistics(), read=n, first=[f.hex() for f in first])))
"""


def test_a_full_ring_drops_and_says_how_many(netns, corpus):
    p = netns.popen(sys.executable, "-c", RING, stdin=subprocess.PIPE)
    assert p.stdout.readline().strip() == "ready"
    sent = send(netns, CORPUS / JPEGS)
    out, err = p.communicate("go\n", timeout=60)
    assert p.returncode == 0, err
    s = json.loads(out)
    assert s["kernel_drops"] > 0 and s["read"] > 0
    # every frame the kernel took is either read or counted as dropped
    assert s["read"] + s["kernel_drops"] == s["kernel_packets"] == sent
    # and what was read is the sender's frames, byte for byte
    from flowsift.io import Batch, open_capture
    cap, b = open_capture(CORPUS / JPEGS), Batch(8)
    cap.fill(b)
    assert s["first"][0] == b.frame(0).hex()


def test_bad_live_sources_are_one_line_exit_2(netns):
    for args, words in ((("stats", "afpacket:nosuch0"), "afpacket:nosuch0: no such interface"),
                        (("stats", "afpacket:va,ring=lots"), "is not a size"),
                        (("stats", "afpacket:va,speed=9"), "unknown option 'speed'"),
                        (("stats", "afpacket:"), "name the interface"),
                        (("stats", "afpacket:va,outgoing=maybe"), "outgoing= is yes or no"),
                        (("stats", "afpacket:va,outgoing="), "outgoing= is yes or no"),
                        (("stats", CORPUS / JPEGS, "--duration", "5"), "--duration is for live sources"),
                        (("stats", "afpacket:va,ring=64G"), "more than a quarter of this machine's memory"),
                        (("stats", "afpacket:va,ring=32M,ring=64k"), "option 'ring' is given twice"),
                        (("chain", "counter", "afpacket:va", "--out", "afpacket:va"), "capture it with afpacket:va,outgoing=no")):
        p = netns.flowsift(*args)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 2, err
        assert len(err.strip().splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("value, frames", [("off", 0), ("NO", 0), ("False", 0), ("On", 483)])
def test_outgoing_takes_the_usual_spellings_of_yes_and_no(netns, corpus, value, frames):
    """Frames sent out of va are its outgoing ones: outgoing=off leaves them out as outgoing=no does."""
    p = netns.flowsift("stats", f"afpacket:va,outgoing={value}", "--duration", 2, "--json")
    started(p)
    assert send(netns, CORPUS / JPEGS, dev="va") == 483
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert json.loads(out)["packets"] == frames


def cpu_ticks(proc, seconds):
    """Clock ticks (1/100 s) of CPU `proc` used over the next `seconds`: a busy loop takes them all."""
    def used():
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])          # utime, stime
    before = used()
    time.sleep(seconds)
    return used() - before


def test_a_capture_started_on_a_down_interface_says_so_and_waits_without_spinning(netns, corpus):
    """The socket of a down interface is in error (ENETDOWN) until that is read: poll() said
    POLLERR at once, again and again, and --count 1 waited for ever at full CPU."""
    netns.ip("-n", netns.name, "link", "set", "va", "down")
    p = netns.flowsift("stats", "afpacket:va", "--count", 1, "--duration", 30, "--json")
    started(p)
    assert cpu_ticks(p, 1.5) < 30
    assert p.stderr.readline() == "flowsift: afpacket:va is down; waiting for it to come up\n"
    netns.ip("-n", netns.name, "link", "set", "va", "up")
    time.sleep(0.5)
    send(netns, CORPUS / JPEGS)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and err == "", err
    got = json.loads(out)
    assert got["packets"] == 1 and got["kernel"]["stopped_by"] == "count"


def test_an_interface_that_goes_down_is_waited_for_without_spinning(netns, corpus):
    p = netns.flowsift("stats", "afpacket:va", "--count", 483, "--duration", 30, "--json")
    started(p)
    netns.ip("-n", netns.name, "link", "set", "va", "down")
    assert cpu_ticks(p, 1.5) < 30
    assert p.stderr.readline() == "flowsift: afpacket:va went down; waiting for it to come up\n"
    netns.ip("-n", netns.name, "link", "set", "va", "up")
    time.sleep(0.5)
    assert cpu_ticks(p, 1.0) < 20           # up again (and still nothing to read)
    send(netns, CORPUS / JPEGS)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and err == "", err
    got = json.loads(out)
    assert got["packets"] == 483 and got["kernel"]["stopped_by"] == "count"


def test_shards_say_once_that_their_interface_went_down(netns, corpus):
    """Every shard's socket sees the interface go down: the run says it once (it said it once
    per shard)."""
    p = netns.flowsift("chain", "counter", "afpacket:va", "--shards", 2, "--count", 483, "--duration", 30,
                       "--events", "/dev/null", "--json")
    started(p)
    netns.ip("-n", netns.name, "link", "set", "va", "down")
    time.sleep(1.0)
    netns.ip("-n", netns.name, "link", "set", "va", "up")
    time.sleep(0.5)
    send(netns, CORPUS / JPEGS)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert err.count("afpacket:va went down; waiting for it to come up") == 1, err
    assert json.loads(out)["packets"] == 483


@pytest.mark.parametrize("command", [("stats",), ("chain", "counter", "--events", "/dev/null")])
def test_an_interface_deleted_while_captured_ends_the_run_with_what_it_read(netns, corpus, command):
    """It ran for ever at full CPU; now it ends as a capture file cut short does: the summary of
    what was read, its error, the same one line on stderr, exit 2."""
    netns.veth("vx", "vy")
    p = netns.flowsift(*command[:1], *command[1:2], "afpacket:vx", *command[2:], "--json")
    started(p)
    assert send(netns, CORPUS / JPEGS, dev="vy") == 483
    time.sleep(0.5)
    netns.ip("-n", netns.name, "link", "del", "vx")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2, err
    assert err.splitlines()[-1] == "flowsift: afpacket:vx: the interface was deleted", err
    got = json.loads(out)
    assert got["error"] == "afpacket:vx: the interface was deleted"
    assert got["kernel"]["stopped_by"] == "error" and got["kernel"]["received"] == 483 and got["packets"] == 483


RECEIVE = """
import sys, time
from flowsift.io import Batch, PcapWriter
from flowsift.io._afpacket import AfPacketSource
src, b = AfPacketSource(sys.argv[1]), Batch(512)
w = PcapWriter(sys.argv[2])
print("ready", flush=True)
n, want, t0 = 0, int(sys.argv[3]), time.monotonic()
while n < want and time.monotonic() - t0 < 20:
    k = src.fill(b, 100)
    if k:
        w.write_batch(b)
        n += k
w.close()
print(n)
"""

DROPPER = '''
from flowsift.modules import Module

class Dropper(Module):
    """Drops every packet of connections whose client port is in ports.

    Synopsis: dropper
    """
    name = "dropper"
    writes = frozenset({"drop"})

    def on_packet(self, flow, record):
        if int(flow.client.rpartition(":")[2]) % 3 == 0:
            flow.drop(record)
            self.count("dropped")
'''


def frames_of(path):
    from flowsift.io import Batch, open_capture
    cap, b, out = open_capture(path), Batch(512), []
    while cap.fill(b):
        out += [b.frame(i) for i in range(b.n)]
    return out


def inline(ns, tmp_path, chain, n_out):
    """Send the capture into va; flowsift forwards va -> vc; a receiver on vd writes out.pcap."""
    ns.veth("vc", "vd")
    out = tmp_path / "out.pcap"
    rx = ns.python(RECEIVE, "vd", out, n_out)
    assert rx.stdout.readline().strip() == "ready"
    fs = ns.flowsift("chain", chain, "afpacket:va", "--out", "afpacket:vc", "--count", 483, "--duration", 30,
                     "--events", "/dev/null", "--json")
    started(fs)
    send(ns, CORPUS / JPEGS)
    res, err = fs.communicate(timeout=60)
    assert fs.returncode == 0, err
    got, rerr = rx.communicate(timeout=60)
    assert rx.returncode == 0, rerr
    return json.loads(res), out, int(got)


def test_inline_nat_forwards_rewritten_packets_with_valid_checksums(netns, corpus, tmp_path):
    tshark = require("tshark")
    chain = "nat(to=10.9.9.9:8080)"
    summary, out, n = inline(netns, tmp_path, chain, 483)
    # the same chain over the file, written with -w: the same frames, byte for byte
    ref = tmp_path / "ref.pcap"
    res = subprocess.run([sys.executable, "-m", "flowsift", "chain", chain, CORPUS / JPEGS, "-w", ref,
                          "--events", "/dev/null", "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    edited = json.loads(res.stdout)["egress"]["edited"]
    assert n == 483 and summary["egress"]["forwarded"] == 483 and summary["egress"]["edited"] == edited == 464
    assert frames_of(out) == frames_of(ref)
    # an independent reader: every IP and TCP checksum valid, every server endpoint rewritten
    res = subprocess.run([tshark, "-r", out, "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
                          "-T", "fields", "-e", "ip.checksum.status", "-e", "tcp.checksum.status",
                          "-e", "ip.src", "-e", "tcp.srcport", "-e", "ip.dst", "-e", "tcp.dstport"],
                         capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    tcp = [r for r in rows if r[1]]
    assert len(rows) == 483 and len(tcp) == 464
    assert all(r[0] == "1" and r[1] == "1" for r in tcp), tcp[:3]          # 1: good
    # every packet of a connection is rewritten (the last ACKs too: they belong to their
    # connection; late packets would get the rewrite of its last packet in their direction)
    nat = [r for r in tcp if ("10.9.9.9", "8080") in ((r[2], r[3]), (r[4], r[5]))]
    assert len(nat) == 464 and summary["egress"]["late_edited"] == summary["engine"]["late_packets"]


def test_inline_leaves_dropped_packets_out(netns, corpus, tmp_path):
    module = tmp_path / "dropper.py"
    module.write_text(DROPPER)
    summary, out, n = inline(netns, tmp_path, f"{module}:Dropper", 483)
    dropped = summary["modules"]["dropper"]["dropped"]
    assert 0 < dropped < 483
    assert summary["egress"]["dropped"] == dropped and summary["egress"]["forwarded"] == 483 - dropped == n
    kept = frames_of(out)
    sent = frames_of(CORPUS / JPEGS)
    assert len(kept) == 483 - dropped and all(f in sent for f in kept)


def forward_to_vc(ns):
    """chain counter va --out vc, the capture sent into va: (summary, stderr)."""
    fs = ns.flowsift("chain", "counter", "afpacket:va", "--out", "afpacket:vc", "--count", 483, "--duration", 30,
                     "--events", "/dev/null", "--json")
    started(fs)
    send(ns, CORPUS / JPEGS)
    out, err = fs.communicate(timeout=60)
    assert fs.returncode == 0, err
    return json.loads(out)["egress"], err


def test_inline_frames_the_output_refuses_are_failed_not_forwarded(netns, corpus, tmp_path):
    """Frames larger than the output's MTU: the kernel refuses them (EMSGSIZE); they were counted
    as forwarded as well as failed."""
    netns.veth("vc", "vd")
    netns.ip("-n", netns.name, "link", "set", "vc", "mtu", "1000")
    big = sum(len(f) > 1000 + 14 for f in frames_of(CORPUS / JPEGS))
    assert 0 < big < 483
    rx = netns.python(RECEIVE, "vd", tmp_path / "out.pcap", 483 - big)
    assert rx.stdout.readline().strip() == "ready"
    egress, err = forward_to_vc(netns)
    got, rerr = rx.communicate(timeout=60)
    assert egress["failed"] == big and egress["forwarded"] == 483 - big == int(got)
    assert egress["failed_reasons"] == {"interface_down": 0, "interface_deleted": 0, "other": big}
    assert egress["bytes"] == sum(len(f) for f in frames_of(tmp_path / "out.pcap"))
    assert "none of the" not in err


def test_inline_to_a_down_interface_says_nothing_was_sent(netns, corpus):
    netns.veth("vc", "vd")
    netns.ip("-n", netns.name, "link", "set", "vc", "down")
    egress, err = forward_to_vc(netns)
    assert (egress["forwarded"], egress["failed"], egress["bytes"]) == (0, 483, 0)
    assert egress["failed_reasons"] == {"interface_down": 483, "interface_deleted": 0, "other": 0}
    assert "flowsift: --out afpacket:vc: the interface is down; none of the 483 frames was sent\n" in err


def test_inline_says_when_the_output_goes_down_and_comes_up_again(netns, corpus):
    """Said when it happens: a run whose output stayed down said so only at its end, and a
    long one that had sent something never."""
    netns.veth("vc", "vd")
    netns.ip("-n", netns.name, "link", "set", "vc", "down")
    fs = netns.flowsift("chain", "counter", "afpacket:va", "--out", "afpacket:vc", "--count", 2 * 483,
                        "--duration", 30, "--events", "/dev/null", "--json")
    started(fs)
    send(netns, CORPUS / JPEGS)
    # (read while the run waits for the second copy: a message kept for the end blocks here
    # until --duration ends the run, and then is the wrong one)
    assert fs.stderr.readline() == "flowsift: --out afpacket:vc: the interface is down; frames are counted failed until it comes up\n"
    netns.ip("-n", netns.name, "link", "set", "vc", "up")
    time.sleep(0.5)
    send(netns, CORPUS / JPEGS)
    out, err = fs.communicate(timeout=60)
    assert fs.returncode == 0, err
    egress = json.loads(out)["egress"]
    assert (egress["failed"], egress["forwarded"]) == (483, 483)
    assert err == "flowsift: --out afpacket:vc: the interface is up again; sending\n"


def test_inline_says_when_the_output_is_deleted_and_sends_to_one_of_its_name_again(netns, corpus, tmp_path):
    """The socket stayed bound to the deleted interface's index: nothing said, every frame
    failed from then on, even once an interface of that name was back."""
    netns.veth("vc", "vd")
    fs = netns.flowsift("chain", "counter", "afpacket:va", "--out", "afpacket:vc", "--count", 2 * 483,
                        "--duration", 30, "--events", "/dev/null", "--json")
    started(fs)
    netns.ip("-n", netns.name, "link", "del", "vc")
    send(netns, CORPUS / JPEGS)
    assert fs.stderr.readline() == ("flowsift: --out afpacket:vc: the interface was deleted; frames are counted "
                                    "failed until one of that name comes\n")
    netns.veth("vc", "vd")
    rx = netns.python(RECEIVE, "vd", tmp_path / "out.pcap", 483)
    assert rx.stdout.readline().strip() == "ready"
    time.sleep(1)                           # (more than the pause between looks for it)
    send(netns, CORPUS / JPEGS)
    out, err = fs.communicate(timeout=60)
    assert fs.returncode == 0, err
    got, rerr = rx.communicate(timeout=60)
    assert int(got) == 483, rerr
    egress = json.loads(out)["egress"]
    assert (egress["failed"], egress["forwarded"]) == (483, 483)
    assert egress["failed_reasons"] == {"interface_down": 0, "interface_deleted": 483, "other": 0}
    assert err.startswith("flowsift: --out afpacket:vc: an interface of that name came (index ")
    assert err.endswith("); sending to it\n") and err.count("\n") == 1, err


def test_vlan_tags_the_kernel_strips_are_put_back(netns, corpus):
    name = "vlan__pcpp__example2.pcap"
    want = file_stats(name)
    got = live(netns, "stats", "afpacket:va", "--count", want["packets"], "--duration", 30, "--json",
               capture=CORPUS / name)
    assert got["kernel"]["vlan_tags_restored"] == 24
    for k in ("packets", "flows", "protocols", "bytes_captured", "ip"):
        assert got[k] == want[k], k


@pytest.mark.parametrize("expr", ["vlan and tcp port 80", "tcp port 80"])
def test_a_filter_selects_the_frames_of_the_file_when_the_kernel_strips_their_tags(netns, corpus, expr):
    """The kernel runs the socket filter on a frame after taking its 802.1Q tag off: compiled for
    tagged frames, 'vlan and tcp port 80' let none through (the file: 14) and 'tcp port 80'
    every one (the file: none)."""
    name = "vlan__zeek__http-vlan-0.pcap"
    want = file_stats(name, "--filter", expr)
    got = live(netns, "stats", "afpacket:va", "--filter", expr, "--duration", 3, "--json", capture=CORPUS / name)
    assert got["kernel"]["kernel_packets"] == want["packets"] == 14
    assert got["packets"] - got["filtered"] == want["packets"] - want["filtered"]
    assert got["flows"] == want["flows"]


def test_hardware_timestamps_asked_for_where_there_are_none(netns, corpus):
    """veth has no clock of its own: the frames come with the kernel's time, and say so."""
    got = live(netns, "stats", "afpacket:va,timestamps=hw", "--count", 483, "--duration", 30, "--json")
    assert got["packets"] == 483 and got["kernel"]["hw_timestamps"] == 0
    t = got["time"]
    assert abs(t["last_ns"] / 1e9 - time.time()) < 60       # the receive time, not the capture's


def test_shards_of_a_live_interface_split_it_by_fan_out(netns, corpus, tmp_path):
    """`chain --shards 2 afpacket:IFACE`: the interface is read once, the kernel hands each shard
    whole connections, and the merged output is that of the capture file."""
    import io
    from flowsift.chain import run_chain
    spec = "counter,http"
    ref = io.StringIO()
    want = run_chain(spec, str(CORPUS / JPEGS), events=ref, inline=True, strict=True)
    events = tmp_path / "live.jsonl"
    began = time.monotonic()
    p = netns.flowsift("chain", spec, "afpacket:va", "--shards", 2, "--events", events, "--json")
    # one line for the run, once both shards are in the fan-out group (each said its own)
    assert started(p) == "flowsift: capturing on va (afpacket), 2 shards sharing it; Ctrl-C ends\n"
    assert send(netns, CORPUS / JPEGS) == 483
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)            # Ctrl-C: every shard ends cleanly, with its summary
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "capturing on" not in err, err
    got = json.loads(out)
    assert got["mode"] == "sharded" and [s["split"] for s in got["shards"]] == ["kernel", "kernel"]
    assert all(s["packets"] > 0 for s in got["shards"]), "one shard had every packet: nothing was split"
    assert got["packets"] == 483 and got["kernel"]["received"] == 483 and got["kernel"]["kernel_drops"] == 0
    assert got["kernel"]["stopped_by"] == "SIGINT" and got["kernel"]["count"] is None
    assert got["kernel"]["source"] == "afpacket:va"            # not the shards' fan-out spec
    assert 0 < got["kernel"]["seconds"] <= time.monotonic() - began, "the shards' seconds were added up"
    assert all(s["other_shards_packets"] == 0 for s in got["shards"])
    for m in ("counter", "http"):
        assert {k: v for k, v in got["modules"][m].items() if k != "restarts"} == \
               {k: v for k, v in want["modules"][m].items() if k != "restarts"}, m
    per_flow = lambda lines: sorted(json.dumps({k: v for k, v in json.loads(l).items() if k not in ("ts", "conn", "shard")},
                                               sort_keys=True) for l in lines)
    assert per_flow(events.read_text().splitlines()) == per_flow(ref.getvalue().splitlines())
    rows = lambda t: sorted(json.dumps({k: v for k, v in r.items() if k not in ("conn", "shard")}, sort_keys=True)
                            for r in t["counter"])
    assert rows(got["tables"]) == rows(want["tables"])


@pytest.mark.parametrize("v6,atomic,spread", [(True, True, "flow"), (False, False, "hosts"), (True, False, "hosts")],
                         ids=["ipv6-atomic-fragments", "ipv4-fragments-hosts", "ipv6-fragments-hosts"])
def test_shards_keep_a_connection_whole_when_only_its_client_fragments(netns, tmp_path, v6, atomic, spread):
    """16 connections whose clients send IP fragments and whose servers do not. The kernel's own
    hash took IPv6 fragments, atomic ones too, by their addresses and the servers' packets by
    the 4-tuple: the two directions of a connection landed in different shards. Atomic fragments
    carry the whole segment (hashed with the ports); real ones need `hash=hosts`."""
    import pcapgen
    capture = pcapgen.fragmented_clients(tmp_path / "c.pcap", 16, v6=v6, atomic=atomic)
    source = "afpacket:va" + ("" if spread == "flow" else f",hash={spread}")
    p = netns.flowsift("chain", "counter", source, "--shards", 2, "--events", "/dev/null", "--json")
    started(p)                              # (every shard listens)
    sent = send(netns, capture)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    got = json.loads(out)
    assert got["packets"] == sent == (128 if atomic else 144)
    assert all(s["packets"] > 0 for s in got["shards"]), "one shard had every packet: nothing was split"
    rows = got["tables"]["counter"]
    assert len(rows) == 16, "a connection was split between the shards"
    assert all(r["bytes"] == [64, 200] and r["packets"] == [5, 3] and r["close"] == "fin" for r in rows)


def test_a_fan_out_hash_is_flow_or_hosts_and_needs_a_group(netns):
    for source, needle in (("afpacket:va,hash=ports", "hash='ports' is flow"),
                           ("afpacket:va,hash=hosts", "give fanout=ID or --shards")):
        p = netns.flowsift("stats", source, "--duration", 1)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_shards_of_a_live_interface_stopped_through_their_group_end_with_the_summary(netns, corpus, tmp_path,
                                                                                   signame):
    """`systemctl stop` or `kill -TERM -PGID`: each shard had the signal twice, from the sender
    and forwarded by the parent; its capture ended at the first, and the second broke into its
    summary: exit 143 (or 130) with nothing printed and events lost."""
    events = tmp_path / "live.jsonl"
    p = netns.popen(sys.executable, "-m", "flowsift", "chain", "counter", "afpacket:va", "--shards", 2,
                    "--events", events, "--json", start_new_session=True)
    started(p)                              # (every shard listens)
    assert send(netns, CORPUS / JPEGS) == 483
    time.sleep(0.5)
    os.killpg(p.pid, getattr(signal, signame))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    got = json.loads(out)
    assert got["kernel"]["stopped_by"] == signame and got["packets"] == 483
    assert got["events"] == len(events.read_text().splitlines()) == 19


SLOW_CLOSE = """
import time
from flowsift.modules import Module


class SlowClose(Module):
    \"\"\"Takes 0.2 s per connection that ends: a run catches up after its capture.\"\"\"
    name = "slowclose"

    def on_close(self, flow, reason):
        time.sleep(0.2)
"""


@pytest.mark.parametrize("shards", [1, 2])
def test_a_stop_while_the_modules_catch_up_after_the_duration_keeps_the_summary(netns, corpus, tmp_path, shards):
    """The capture ended at --duration and the modules were still reading what it took: SIGTERM
    to the group then cut the run short (exit 143, no summary). It is said, and the run ends as
    at a stop during the capture: once the modules are done, with its summary."""
    module = tmp_path / "slowclose.py"
    module.write_text(SLOW_CLOSE)
    events = tmp_path / "live.jsonl"
    p = netns.popen(sys.executable, "-m", "flowsift", "chain", f"counter,{module}", "afpacket:va", "--duration", 1.5,
                    "--shards", shards, "--events", events, "--json", start_new_session=True)
    started(p)
    assert send(netns, CORPUS / JPEGS) == 483
    time.sleep(2.5)                       # past the duration; 19 closes take 3.8 s
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    # (by each shard still catching up: one may have finished before the stop came)
    assert "SIGTERM: the capture has ended; the run ends with its summary" in err, err
    got = json.loads(out)
    assert got["kernel"]["stopped_by"] == "duration" and got["packets"] == 483
    assert got["events"] == len(events.read_text().splitlines()) == 19


PACED = """
import sys, time
from flowsift.io import Batch, open_capture
from flowsift.io._afpacket import AfPacketSink
cap, b, frames = open_capture(sys.argv[1]), Batch(512), []
while cap.fill(b):
    frames += [b.frame(i) for i in range(b.n)]
sink, pause, sent = AfPacketSink(sys.argv[2]), float(sys.argv[3]), 0
for f in frames:                            # one by one: a link the chain keeps up with, but for its modules
    sent += sink.send([f])
    time.sleep(pause)
print(sent)
"""

HELD = """
import os, time
from flowsift.modules import Module


class Held(Module):
    \"\"\"Sleeps in on_data until the file {gate} is there (for 20 s at most): far slower than
    the traffic until then, and quick after.\"\"\"
    name = "{name}"

    def on_data(self, flow, stream):
        deadline = time.monotonic() + 20
        while not os.path.exists({gate!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
        stream.skip()
"""


@pytest.mark.parametrize("slow", [True, False], ids=["slow", "quick"])
def test_drops_while_the_capture_waited_for_a_slow_module_name_it(netns, corpus, tmp_path, slow):
    """A module slower than the traffic: its worker falls behind, the gateway waits for it
    (back-pressure), the ring fills meanwhile and the kernel drops. The summary showed the drops,
    and nothing said a module made them; it names the module and --max-backlog. Drops a module
    that keeps up had no part in (a burst into a small ring) are put on no module."""
    from flowsift.render import _console, print_chain
    name, gate = ("slowdata", tmp_path / "go") if slow else ("quick", tmp_path)
    module = tmp_path / f"{name}.py"
    module.write_text(HELD.format(gate=str(gate), name=name))
    p = netns.flowsift("chain", module, "afpacket:va,ring=8k,block=4k", "--duration", 3 if slow else 1.5,
                       "--events", "/dev/null", "--json")
    started(p)
    if slow:
        sender = netns.python(PACED, CORPUS / JPEGS, "vb", 0.002)       # 1 s of traffic
        assert int(sender.communicate(timeout=60)[0]) == 483
        gate.touch()                        # the module catches up: the gateway reads on
    else:
        assert send(netns, CORPUS / JPEGS) == 483
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    got = json.loads(out)
    k = got["kernel"]
    console = _console()
    with console.capture() as table:
        print_chain(got, console)
    said = [l for l in table.get().splitlines() if l.startswith("held back:")]
    assert k["kernel_drops"] > 0, k
    if slow:
        assert 0 < k["lost_while_held"] <= k["kernel_drops"], k
        h = k["held_back"][name]
        assert list(k["held_back"]) == [name] and h["waits"] > 0 and h["lost"] == k["lost_while_held"], k
        waits = f"{h['waits']:,} wait{'s' * (h['waits'] != 1)}"
        assert said == [f"held back: {k['lost_while_held']:,} of the {k['kernel_drops']:,} kernel drops came while "
                        f"the capture waited for module {name} ({h['seconds']:,.1f} s in {waits}), too slow for the "
                        f"traffic: --max-backlog N lets a module N batches behind lose connections (counted) instead "
                        f"of holding the capture back"], table.get()
    else:
        assert k["held_back"] == {} and k["lost_while_held"] == 0 and said == [], k


def _sigint_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # as a shell starts a background job


@pytest.mark.parametrize("when", ["during", "after"])
def test_ctrl_c_in_a_background_job_is_taken_after_the_capture_as_during_it(netns, corpus, tmp_path, when):
    """A background job starts with SIGINT ignored. The capture takes it (`kill -INT` ends it as
    Ctrl-C does); after --count ended it, while the modules caught up, SIG_IGN was back and a
    `kill -INT` went unheard, where a SIGTERM is said and taken. It is said (once) and taken too."""
    module = tmp_path / "slowclose.py"
    module.write_text(SLOW_CLOSE)
    events = tmp_path / "live.jsonl"
    limit = ("--count", 483) if when == "after" else ()
    p = netns.popen(sys.executable, "-m", "flowsift", "chain", f"counter,{module}", "afpacket:va", *limit,
                    "--events", events, "--json", preexec_fn=_sigint_ignored)
    started(p)
    assert send(netns, CORPUS / JPEGS) == 483
    time.sleep(0.5 if when == "during" else 1.0)       # (after: the count was reached; 19 closes take 3.8 s)
    p.send_signal(signal.SIGINT)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)                        # a second one is not said again
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    said = err.count("SIGINT: the capture has ended; the run ends with its summary once its modules have read")
    assert said == (1 if when == "after" else 0), err
    got = json.loads(out)
    assert got["kernel"]["stopped_by"] == ("count" if when == "after" else "SIGINT") and got["packets"] == 483
    assert got["events"] == len(events.read_text().splitlines()) == 19


def test_shards_that_stop_for_different_reasons_give_the_run_one(netns, corpus):
    """One connection: the shard that has it stops at its count, the other at the duration; the
    run ended with the last, and stopped_by is one value, as for one gateway."""
    p = netns.flowsift("chain", "counter", "afpacket:va", "--shards", 2, "--count", 5, "--duration", 3,
                       "--events", "/dev/null", "--json")
    started(p)                              # (every shard listens)
    assert send(netns, CORPUS / "http__zeek__get.pcap") == 14
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    got = json.loads(out)
    assert sorted(s["packets"] for s in got["shards"]) == [0, 5]          # --count is each shard's
    assert got["kernel"]["stopped_by"] == "duration"


def test_shards_refuse_what_cannot_be_split(netns):
    for source, needle in (("afpacket:va,fanout=3", "leave fanout= out"), ("dpdk:0", "one process owns a port")):
        p = netns.flowsift("chain", "counter", source, "--shards", 2, "--duration", 1)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command", [("stats",), ("streams", "--discard"), ("gateway", "--keep"), ("chain", "counter")])
def test_the_tables_of_a_live_run_say_what_the_kernel_took_and_lost(netns, corpus, tmp_path, command):
    """Without --json too: drops and frames left in the ring are on the table, not only in JSON."""
    extra = ("--store", tmp_path / "s") if command[0] == "gateway" else ()
    p = netns.popen(sys.executable, "-m", "flowsift", *command, "afpacket:va", "--count", 483, *extra,
                    env=dict(os.environ, COLUMNS="250"))
    started(p)
    send(netns, CORPUS / JPEGS)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    said = " ".join((out + err).split())           # (a chain's tables go to stderr, its events to stdout)
    assert "received 483 of 483 (0 dropped by the kernel (ring full); 0 left in the ring), stopped by count" in said, err


@pytest.mark.parametrize("mode", [(), ("--inline",), ("--max-backlog", "8")])
def test_events_of_finished_connections_go_out_while_the_link_is_quiet(netns, corpus, tmp_path, mode):
    """The capture's connections all end (FINs; those with holes left at their closing timeout,
    which runs on the host's clock while nothing comes); nothing comes after them: their events
    are in the events file within moments, not held until more traffic or the stop."""
    events = tmp_path / "events.jsonl"
    p = netns.flowsift("chain", "counter", "afpacket:va", "--events", events, "--reassembly", "closing_timeout=1s",
                       *mode)
    started(p)
    send(netns, CORPUS / JPEGS)
    lines = []
    for _ in range(80):                     # up to 8 s
        time.sleep(0.1)
        lines = events.read_text().splitlines() if events.exists() else []
        if len(lines) >= 19:
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert len(lines) == 19, f"{len(lines)} events before the stop"
