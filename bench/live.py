"""Live sources: what AF_PACKET receivers cost against tcpdump on the same veth load, and DPDK
against the file reader, packet loop against packet loop.

    .venv/bin/python bench/live.py [CAPTURE] [--loops 40] [--count 3000000] [--repeat 3]   (as root)

1. AF_PACKET: tcpreplay sends CAPTURE --loops times at top speed into one end of a veth pair
   in a private network namespace; on the other end, in turn, `tcpdump -w /dev/null`,
   `flowsift stats afpacket:` and `flowsift gateway afpacket:` receive. Nothing makes the
   sender wait for a receiver, so how long tcpreplay takes says how fast packets came, not how
   fast a receiver is. What is compared is what receiving cost each: the CPU time (user +
   system, every thread, from wait4) of the receiving process per packet it received, less
   what the same process costs started and stopped with no traffic (its start-up, the less of
   two runs; a difference within their spread is noise), side by side with the packets the
   kernel dropped for it. Give enough --loops that start-up is small beside the load. The kernel's own work delivering each
   packet to the socket runs on the sending side and is in no row. The gateway's store goes to
   a flowsift-bench-* directory in /dev/shm, checked for room first and stopped early (said
   so) if /dev/shm runs low while it receives.
2. DPDK `net_pcap` (rx_pcap=CAPTURE, DPDK reading the file through libpcap) against flowsift's
   file reader, over the capture's packets: flowsift's packet loop (batch, decode, flow table,
   as `flowsift stats`) timed in a process of its own for each (bench/packet_loop.py), the
   start-up (the EAL and the device for DPDK, opening the file) excluded and printed apart.
3. DPDK's upper bound: `net_pcap` with infinite_rx (the capture loaded into packet buffers
   once, then handed out again and again) against the file reader reading the capture again
   and again from the page cache, both over --count packets, timed as in 2 (captures of up to
   65,536 packets: infinite_rx holds every one in a buffer).
Ratios are the file reader's (or tcpdump's) figure over the row's, so above 1x = the row is
faster (or cheaper per packet).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWSIFT, HERE, SHM, Failed, capture_arg, describe, fail, free_bytes, run, scratch, x  # noqa: E402

LOW_SHM = 1 << 30       # a receiving gateway is stopped when /dev/shm has less free than this
CPU_FLOOR = 0.02        # seconds: CPU time is charged by clock ticks, finer differences are noise
READY_WAIT = 20         # seconds a receiver has to say it listens
END_WAIT = 120          # seconds a receiver has to exit after SIGINT


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
        # (ip netns exec execs the command in place: the pid is the receiver's)
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


def reap(p):
    """Waits for p to end (killed after END_WAIT s): (stdout, stderr, CPU seconds it used)."""
    texts = {}
    readers = [threading.Thread(target=lambda k, f: texts.__setitem__(k, f.read()), args=(k, f), daemon=True)
               for k, f in (("out", p.stdout), ("err", p.stderr))]
    for t in readers:
        t.start()
    deadline = time.monotonic() + END_WAIT
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join(10)
    return texts.get("out", ""), texts.get("err", ""), ru.ru_utime + ru.ru_stime


def receive(veth, cmd, ready, load=None, watch=None):
    """Runs cmd in the namespace until it says `ready`, then load() (None: no traffic), then
    stops it with SIGINT; watch(p), if given, runs beside the load. Returns (load's result,
    stdout, stderr, CPU seconds)."""
    p = veth.popen(*cmd)
    try:
        deadline = time.monotonic() + READY_WAIT
        seen = []
        while time.monotonic() < deadline:          # wait until it listens
            line = p.stderr.readline()
            seen.append(line)
            if ready in line or not line:
                break
        if not any(ready in s for s in seen):
            raise Failed(f"`{' '.join(cmd[:3])}` did not start listening: {''.join(seen).strip()[-200:]}")
        time.sleep(0.3)
        stop = threading.Event()
        if watch is not None:
            threading.Thread(target=watch, args=(p, stop), daemon=True).start()
        result = load() if load is not None else time.sleep(1.0)
        stop.set()
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        out, err, cpu = reap(p)
        return result, out, err, cpu
    finally:
        if p.returncode is None:
            p.kill()
            p.wait()


def afpacket(capture, loops):
    veth = Veth()
    try:
        rows = []

        def tcpdump_counts(out, err):
            got = int(re.search(r"(\d+) packets captured", err).group(1))
            drops = int(re.search(r"(\d+) packets dropped by kernel", err).group(1))
            return got, drops, None

        def flowsift_counts(out, err):
            try:
                summary = json.loads(out)
            except ValueError:
                raise Failed(f"no summary: {err.strip()[-200:]}") from None
            k = summary["kernel"]
            return k["received"], k["kernel_drops"], None

        receivers = [("tcpdump -w /dev/null", lambda d: ["tcpdump", "-i", "va", "-n", "-w", "/dev/null", "-B", "32768"],
                      "listening on", tcpdump_counts, False),
                     ("flowsift stats afpacket:", lambda d: [*FLOWSIFT, "stats", "afpacket:va,ring=32M", "--json"],
                      "capturing on", flowsift_counts, False),
                     ("flowsift gateway afpacket:", lambda d: [*FLOWSIFT, "gateway", "afpacket:va,ring=32M",
                                                               "--store", str(d / "s"), "--json"],
                      "capturing on", flowsift_counts, True)]
        for name, cmd, ready, counts, stores in receivers:
            if stores and free_bytes(SHM) < 2 * capture.stat().st_size + LOW_SHM:
                rows.append((name, None, f"skipped: /dev/shm has {free_bytes(SHM) / 2**30:.1f} GiB free, "
                                         f"less than twice the capture and {LOW_SHM / 2**30:.0f} GiB"))
                continue
            with scratch("live") as d:
                idle = []
                for _ in range(2):              # (two, for how much start-up alone varies)
                    idle.append(receive(veth, cmd(d), ready)[3])
                    shutil.rmtree(d / "s", ignore_errors=True)     # (a store directory is one run's)
                cut = []

                def watch(p, stop):
                    # the gateway's store grows with the load: stop it before /dev/shm fills
                    while not stop.wait(0.5):
                        if free_bytes(SHM) < LOW_SHM:
                            cut.append(True)
                            p.send_signal(signal.SIGINT)
                            return
                (sent, secs), out, err, cpu = receive(veth, cmd(d), ready, lambda: replay(veth, capture, loops),
                                                      watch if stores else None)
                got, drops, _ = counts(out, err)
            note = "stopped early: /dev/shm ran low" if cut else ""
            rows.append((name, (sent, secs, got, drops, cpu, idle), note))
        print(f"1. AF_PACKET on a veth pair, tcpreplay --topspeed x{loops}: CPU time of each receiving process "
              f"per packet received, its start-up and stop (measured with no traffic) subtracted; "
              f"ratio = tcpdump's CPU per packet / the row's, above 1x = cheaper than tcpdump")
        base = None
        for name, r, note in rows:
            if r is None:
                print(f"   {name:28} {note}")
                continue
            sent, secs, got, drops, cpu, idle = r
            extra = cpu - min(idle)
            # (a difference within how much start-up alone varies is noise, not a cost)
            per = extra / got if got and extra > max(idle) - min(idle) + CPU_FLOOR else None
            if name.startswith("tcpdump"):
                base = per
            cost = (f"{per * 1e6:6.3f} µs/packet" + (f"  ratio {x(base / per)}" if base else "")
                    if per else "below noise (more --loops)")
            print(f"   {name:28} sent {sent:10,} ({sent / secs:,.0f} pkt/s)  received {got:10,}  dropped {drops:9,}  "
                  f"CPU {cpu:6.2f} s - {min(idle):4.2f} s start-up = {cost}" + (f"  ({note})" if note else ""))
    finally:
        veth.close()


def packet_loop(source, count, eal=None):
    """bench/packet_loop.py's figures for source, its loop the best of --repeat processes."""
    env = dict(os.environ, FLOWSIFT_DPDK_ARGS=eal) if eal else None
    runs = [json.loads(run([sys.executable, HERE / "packet_loop.py", source, count], env=env))
            for _ in range(ARGS.repeat)]
    return min(runs, key=lambda r: r["loop"] / max(r["packets"], 1))


def dpdk(capture, count):
    n = count_packets(capture)
    f = packet_loop(capture, n)
    d = packet_loop(f"dpdk:net_pcap0,rx_pcap={capture},count={n}", n)
    if d["packets"] != n:
        raise Failed(f"DPDK net_pcap gave {d['packets']:,} of the capture's {n:,} packets")
    print(f"2. flowsift's packet loop over the capture's {n:,} packets, start-up apart, best of {ARGS.repeat}; "
          f"ratio = file loop time / DPDK loop time, above 1x = DPDK faster")
    print(f"   file reader     {f['loop'] * 1e3:9.2f} ms  {n / f['loop']:12,.0f} pkt/s   (opening the file: "
          f"{f['start'] * 1e3:.2f} ms)")
    print(f"   DPDK net_pcap   {d['loop'] * 1e3:9.2f} ms  {n / d['loop']:12,.0f} pkt/s   (EAL and device start-up: "
          f"{d['start']:.2f} s)   ratio {x(f['loop'] / d['loop'])}")
    # infinite_rx holds the whole capture in packet buffers (9.5 KiB each): small captures only
    if n > 65536:
        print(f"3. DPDK net_pcap infinite_rx: skipped ({n:,} packets would need {n * 9.5 / 2**20:.0f} GiB of "
              f"packet buffers; give a capture of up to 65,536 packets)")
        return
    mbufs = 1 << (n + 2048).bit_length()
    eal = (f"-l 0 --no-huge -m {mbufs * 10 // 1024 + 128} --no-pci --no-shconf --no-telemetry "
           "--log-level=*:error")
    i = packet_loop(f"dpdk:net_pcap0,rx_pcap={capture},infinite_rx=1,mbufs={mbufs - 1},count={count}", count, eal)
    f = packet_loop(capture, count)
    print(f"3. the same loop over {count:,} packets, the capture's again and again, best of {ARGS.repeat}; "
          f"ratio = file time per packet / DPDK's, above 1x = DPDK faster")
    a, b = f"file reader, {f['passes']:,} passes from the page cache", "DPDK net_pcap infinite_rx, from mbufs"
    w = max(len(a), len(b))
    print(f"   {a:{w}} {f['loop']:7.3f} s  {f['packets'] / f['loop']:12,.0f} pkt/s   (reopening not timed)")
    print(f"   {b:{w}} {i['loop']:7.3f} s  {i['packets'] / i['loop']:12,.0f} pkt/s   "
          f"(start-up, the capture loaded into mbufs: {i['start']:.2f} s)   "
          f"ratio {x((f['loop'] / f['packets']) / (i['loop'] / i['packets']))}")


def count_packets(capture):
    from flowsift.io import Batch, open_capture
    cap, b, n = open_capture(capture), Batch(), 0
    while True:
        got = cap.fill(b)
        if not got:
            return n
        n += got


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--loops", type=int, default=40)
    ap.add_argument("--count", type=int, default=3_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each loop in sections 2 and 3 (the best is shown)")
    args = ARGS = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/live.py makes a network namespace: run it as root")
    describe()
    cap = capture_arg(args.capture)
    if SHM is None:
        fail("needs /dev/shm (the gateway's store)")
    try:
        afpacket(cap, args.loops)
        dpdk(cap, args.count)
    except Failed as e:
        sys.exit(f"bench/live.py: {e}")
