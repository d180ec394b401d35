"""Capture ingest: packets/s of a plain C libpcap loop, `flowsift stats`, dpkt and Scapy, in one run.

    .venv/bin/python bench/ingest.py [CAPTURE] [--repeat 3] [--dpkt-packets N] [--scapy-packets N]

Without CAPTURE, builds the shared workload (web.pcap, ~0.7 GB) into bench/out/ first (see
bench/README.md). The fast tools run over the whole file (best of --repeat runs, page cache
warm); dpkt and Scapy run over the first N packets (best of --repeat too, imports done before
the clock starts) and are extrapolated (the table says so).

What is compared: packet loops. The C loop and `flowsift stats` run as processes; their start-up
(exec, libpcap or the interpreter and imports, opening the file) is measured on an empty capture
of the same link type and subtracted. The library row and the Python rows run in this process
and have no start-up. The whole `flowsift stats` command, start-up included, is one more row.
"vs C": packets/s against the C loop's, above 1x = faster than it.
Needs: gcc, libpcap-dev; `pip install dpkt scapy` in the venv for those rows.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, OUT, Failed, best, capture_arg, describe, flowsift, run, scratch, timings, x  # noqa: E402


def c_loop():
    exe = OUT / "pcap_loop"
    src = HERE / "pcap_loop.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        OUT.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), "-lpcap"], check=True)
    return exe


def empty_like(path, dst):
    """A capture of no packet with path's file header (pcap: its first 24 bytes)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:4] not in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        return None                 # (pcapng: no start-up measured, said in the table)
    dst.write_bytes(head)
    return dst


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


# what each Python row imports, done before its clock starts (Scapy's import takes a second)
IMPORTS = {dpkt_parse: ("dpkt",), scapy_parse: ("scapy.utils", "scapy.layers.inet")}


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

    rows = []       # (name, packets, seconds or None, subset, note)
    exe = c_loop()
    with scratch("ingest") as d:
        empty = empty_like(path, d / "empty.pcap")
        t_c, out = best(lambda: run([exe, path]), a.repeat)
        total = int(out.split()[0])
        t_stats, out = best(lambda: run(flowsift("stats", "--json", path)), a.repeat)
        assert json.loads(out)["packets"] == total
        c_start = timings(lambda: run([exe, empty]), a.repeat)[0] if empty else None
        f_start = timings(lambda: run(flowsift("stats", "--json", empty)), a.repeat)[0] if empty else None

    def loop(name, t, start):
        if start is None:
            rows.append((name, total, t, False, "start-up NOT subtracted (not a pcap file)"))
            return
        # start-up is measured apart: a difference within its spread is noise, not a loop time
        noise = max(start) - min(start)
        said = f"start-up {min(start) * 1e3:.1f} ms (spread {noise * 1e3:.1f} ms) subtracted"
        loop_t = t - min(start)
        rows.append((name, total, loop_t if loop_t > noise else None, False,
                     said if loop_t > noise else f"below noise: {said}"))
    loop("C libpcap read loop", t_c, c_start)
    loop("flowsift stats", t_stats, f_start)
    rows.append(("flowsift stats (whole command)", total, t_stats, False, "start-up included"))
    t, n = best(lambda: flowsift_in_process(path), a.repeat)
    assert n == total
    rows.append(("flowsift read+decode+flows (library)", total, t, False, "in process"))

    for name, fn, limit in (("dpkt read+parse", dpkt_parse, a.dpkt_packets),
                            ("Scapy PcapReader parse", scapy_parse, a.scapy_packets)):
        try:
            for m in IMPORTS[fn]:
                __import__(m)
        except ImportError as e:
            rows.append((name, 0, None, False, f"skipped: {e} (pip install dpkt scapy)"))
            continue
        t, n = best(lambda: fn(path, min(limit, total)), a.repeat)
        rows.append((name, n, t, n < total, "in process, imports before the clock"))

    # the base: the C loop, else (its loop below noise) the whole C command
    base_pps = total / (rows[0][2] or t_c)
    base = "the C loop's" if rows[0][2] else "the whole C command's (its loop is below noise)"
    result = []
    print(f"capture: {path} ({size / 2**20:,.0f} MiB, {total:,} packets); one core; best of {a.repeat}; "
          f"vs C: packets/s against {base}, above 1x = faster")
    print(f"{'tool':<38} {'packets':>10} {'seconds':>9} {'Mpkt/s':>8} {'Gbit/s':>7} {'vs C':>9}  note")
    for name, n, t, subset, note in rows:
        if t is None:
            shown = f"{n:,}" if n else "-"
            print(f"{name:<38} {shown:>10} {'-':>9} {'-':>8} {'-':>7} {'-':>9}  {note}")
            result.append({"tool": name, "packets": n, "seconds": None, "note": note})
            continue
        pps = n / t
        gbps = size * (n / total) * 8 / t / 1e9
        if subset:
            note = f"first {n:,} packets, extrapolated; {note}"
        print(f"{name:<38} {n:>10,} {t:>9.4f} {pps / 1e6:>8.3f} {gbps:>7.2f} {x(pps / base_pps):>9}  {note}")
        result.append({"tool": name, "packets": n, "seconds": t, "pps": pps, "ratio_vs_c": pps / base_pps,
                       "subset": subset, "note": note})
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        sys.exit(f"bench/ingest.py: {e}")
