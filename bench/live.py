"""Live sources: AF_PACKET against tcpdump on the same veth load, DPDK against the file reader.

    .venv/bin/python bench/live.py [CAPTURE] [--loops 40]      (as root: it makes a namespace)

1. AF_PACKET: tcpreplay sends CAPTURE --loops times at top speed into one end of a veth pair
   in a private network namespace; on the other end, in turn, `tcpdump -w /dev/null`,
   `flowsift stats afpacket:` and `flowsift gateway afpacket:` receive. For each: packets
   captured, dropped by the kernel, and packets/s over the replay (ratios to tcpdump).
2. DPDK `net_pcap` (rx_pcap=CAPTURE) against the file reader: `flowsift stats` wall time.
3. DPDK upper bound: `net_pcap` with infinite_rx (the capture replayed from memory), packets/s
   of `flowsift stats` over a fixed count (captures of up to 65,536 packets).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWSIFT, capture_arg, describe  # noqa: E402


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


class Veth:
    def __init__(self):
        self.ns = "fsbench" + uuid.uuid4().hex[:6]
        sh("ip", "netns", "add", self.ns)
        sh("ip", "-n", self.ns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        for dev in ("va", "vb"):
            sh("ip", "-n", self.ns, "link", "set", dev, "mtu", "9000")
            sh("ip", "-n", self.ns, "link", "set", dev, "up")
        sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")

    def popen(self, *args):
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def close(self):
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def replay(veth, capture, loops):
    t0 = time.perf_counter()
    out = subprocess.run(["ip", "netns", "exec", veth.ns, "tcpreplay", "-i", "vb", "--topspeed", f"--loop={loops}",
                          str(capture)], capture_output=True, text=True, check=True).stdout
    secs = time.perf_counter() - t0
    sent = int(re.search(r"Actual: (\d+) packets", out).group(1))
    return sent, secs


def receive(veth, cmd, capture, loops, ready):
    p = veth.popen(*cmd)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:          # wait until it listens
        line = p.stderr.readline()
        if ready in line:
            break
    time.sleep(0.3)
    sent, secs = replay(veth, capture, loops)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    return sent, secs, out, err


def afpacket(capture, loops):
    veth = Veth()
    try:
        rows = []
        sent, secs, out, err = receive(veth, ["tcpdump", "-i", "va", "-n", "-w", "/dev/null", "-B", "32768"],
                                       capture, loops, "listening on")
        got = int(re.search(r"(\d+) packets captured", err).group(1))
        drops = int(re.search(r"(\d+) packets dropped by kernel", err).group(1))
        rows.append(("tcpdump -w /dev/null", sent, secs, got, drops))
        for name, cmd in (("flowsift stats afpacket:", [*FLOWSIFT, "stats", "afpacket:va,ring=32M", "--json"]),
                          ("flowsift gateway afpacket:", [*FLOWSIFT, "gateway", "afpacket:va,ring=32M", "--json"])):
            sent, secs, out, err = receive(veth, cmd, capture, loops, "capturing on")
            summary = json.loads(out)
            if summary.get("store"):
                shutil.rmtree(summary["store"], ignore_errors=True)    # (a gateway keeps its store: its output)
            k = summary["kernel"]
            rows.append((name, sent, secs, k["received"], k["kernel_drops"]))
        base = rows[0][3] / rows[0][2]
        print(f"1. AF_PACKET on a veth pair, tcpreplay --topspeed x{loops} ({rows[0][1]:,} packets per run)")
        for name, sent, secs, got, drops in rows:
            rate = got / secs
            print(f"   {name:28} captured {got:10,}  dropped {drops:9,}  {rate:12,.0f} pkt/s  ratio {rate / base:.2f}x")
    finally:
        veth.close()


def timed(*args):
    t0 = time.perf_counter()
    out = subprocess.run([*FLOWSIFT, *map(str, args)], check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, json.loads(out)


def dpdk(capture, count):
    t_file, s = timed("stats", capture, "--json")
    n = s["packets"]
    t_dpdk, d = timed("stats", f"dpdk:net_pcap0,rx_pcap={capture}", "--count", n, "--json")
    assert d["packets"] == n
    print(f"2. flowsift stats, {n:,} packets: file reader {t_file:.2f} s, DPDK net_pcap {t_dpdk:.2f} s   "
          f"ratio {t_file / t_dpdk:.2f}x")
    # infinite_rx holds the whole capture in packet buffers (9.5 KiB each): small captures only
    if n > 65536:
        print(f"3. DPDK net_pcap infinite_rx: skipped ({n:,} packets would need {n * 9.5 / 2**20:.0f} GiB of "
              f"packet buffers; give a capture of up to 65,536 packets)")
        return
    mbufs = 1 << (n + 2048).bit_length()
    t_inf, d = timed("--dpdk-args", f"-l 0 --no-huge -m {mbufs * 10 // 1024 + 128} --no-pci --no-shconf --no-telemetry "
                     "--log-level=*:error", "stats", f"dpdk:net_pcap0,rx_pcap={capture},infinite_rx=1,mbufs={mbufs - 1}",
                     "--count", count, "--json")
    print(f"3. DPDK net_pcap infinite_rx, {count:,} packets: {t_inf:.2f} s, {count / t_inf:,.0f} pkt/s "
          f"(file reader: {n / t_file:,.0f} pkt/s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--loops", type=int, default=40)
    ap.add_argument("--count", type=int, default=3_000_000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/live.py makes a network namespace: run it as root")
    describe()
    cap = capture_arg(args.capture)
    afpacket(cap, args.loops)
    dpdk(cap, args.count)
