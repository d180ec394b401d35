"""Capture ingest: packets/s of a plain C libpcap loop, `flowsift stats`, dpkt and Scapy, in one run.

    .venv/bin/python bench/ingest.py [CAPTURE] [--repeat 3] [--dpkt-packets N] [--scapy-packets N]

Without CAPTURE, builds ../shared/bench workload (web.pcap, ~0.7 GB) into bench/out/ first.
The fast tools run over the whole file (best of --repeat runs, page cache warm); dpkt and Scapy
run over the first N packets and are extrapolated (the table says so). Ratios are against the
C loop. Needs: gcc, libpcap-dev; `pip install dpkt scapy` in the venv for those rows.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, OUT, capture_arg, describe, flowsift  # noqa: E402


def c_loop():
    exe = OUT / "pcap_loop"
    src = HERE / "pcap_loop.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        OUT.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), "-lpcap"], check=True)
    return exe


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def run(cmd, env=None):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def flowsift_in_process(path):
    from flowsift.io import Batch, Decoder, FlowTable, open_capture
    cap, dec, ft, b = open_capture(path), Decoder(), FlowTable(), Batch()
    while cap.fill(b):
        dec.decode(b)
        ft.update(b)
    return dec.packets


def dpkt_parse(path, limit):
    import dpkt
    n = 0
    with open(path, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                l4 = ip.data
                if isinstance(l4, dpkt.tcp.TCP):
                    (l4.sport, l4.dport, l4.seq, l4.flags, len(l4.data))
            n += 1
            if n >= limit:
                break
    return n


def scapy_parse(path, limit):
    from scapy.utils import PcapReader
    from scapy.layers.inet import TCP
    n = 0
    with PcapReader(str(path)) as r:
        for pkt in r:
            if TCP in pkt:
                t = pkt[TCP]
                (t.sport, t.dport, t.seq, t.flags)
            n += 1
            if n >= limit:
                break
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dpkt-packets", type=int, default=300_000)
    ap.add_argument("--scapy-packets", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    describe()
    path = capture_arg(a.capture)
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)   # warm the page cache

    rows = []
    exe = c_loop()
    t, out = best(lambda: run([str(exe), str(path)]), a.repeat)
    total = int(out.split()[0])
    rows.append(("C libpcap read loop", total, t, False))

    t, out = best(lambda: run(flowsift("stats", "--json", path)), a.repeat)
    assert json.loads(out)["packets"] == total
    rows.append(("flowsift stats (whole command)", total, t, False))
    t, n = best(lambda: flowsift_in_process(path), a.repeat)
    assert n == total
    rows.append(("flowsift read+decode+flows (library)", total, t, False))

    for name, fn, limit in (("dpkt read+parse", dpkt_parse, a.dpkt_packets),
                            ("Scapy PcapReader parse", scapy_parse, a.scapy_packets)):
        try:
            t, n = best(lambda: fn(path, min(limit, total)), 1)
        except ImportError as e:
            print(f"skipping {name}: {e} (pip install dpkt scapy)", file=sys.stderr)
            continue
        rows.append((name, n, t, n < total))

    base_pps = rows[0][1] / rows[0][2]
    result = []
    print(f"capture: {path} ({size / 2**20:,.0f} MiB, {total:,} packets); one core; best of {a.repeat} for full-file rows")
    print(f"{'tool':<40} {'packets':>10} {'seconds':>9} {'Mpkt/s':>8} {'Gbit/s':>7} {'vs C':>7}")
    for name, n, t, subset in rows:
        pps = n / t
        gbps = size * (n / total) * 8 / t / 1e9
        note = f"  (first {n:,} packets, extrapolated)" if subset else ""
        print(f"{name:<40} {n:>10,} {t:>9.3f} {pps / 1e6:>8.3f} {gbps:>7.2f} {pps / base_pps:>6.2f}x{note}")
        result.append({"tool": name, "packets": n, "seconds": t, "pps": pps, "ratio_vs_c": pps / base_pps, "subset": subset})
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
