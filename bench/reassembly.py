"""TCP reassembly: `flowsift streams` against libnids, tcpflow, dpkt and Scapy, in one run.

    .venv/bin/python bench/reassembly.py [CAPTURE] [--repeat 3] [--dpkt-packets N] [--scapy-packets N]
                                         [--nids-streams N] [--json]

Without CAPTURE, builds the shared workload into bench/out/ first (see ingest.py). Everything
runs on one core: this process pins itself and its children inherit the pin. Rows:
- C libpcap read loop (pcap_loop.c): the floor, reading only;
- libnids (nids_count.c) and `flowsift streams --discard`: both directions reassembled, every
  byte handed to a no-op consumer;
- `flowsift streams -o DIR` and `tcpflow -o DIR`: the same, written to files on tmpfs;
- dpkt + dict (dpkt_reassembler.py) and Scapy TCPSession (scapy_reassembler.py): first N
  packets, extrapolated; imported before the clock starts;
- memory against connections: peak RSS of `streams --discard` and libnids on generated captures
  of N and 4N short connections (bench/gen.py: SYN, SYN-ACK, data, FIN, FIN, ACK), at most
  1,000 open at once (--memory-connections N): what each keeps per connection it has seen,
  though few are open; each tool's count of connections closed and evicted shows they closed.
Every peer reassembles TCP only, so the flowsift rows run with `--filter tcp`; one more row
shows `streams --discard` over everything (UDP flows too) with both counts. With two or more
CPUs, one more row runs `streams -o` on two (its writer thread then runs beside reassembly):
the only row that breaks the one-core rule. Every row is the best of --repeat runs, page cache
warm. Peak RSS is each tool's own process (Python rows run in a child that measures itself).
A tool that is missing or fails is a row that says why. Needs gcc, libpcap-dev, libnids-dev,
tcpflow, and dpkt + scapy in the venv.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWSIFT, HERE, OUT, PREFIX, SHM, capture_arg, describe, last_line, x  # noqa: E402
from gen import many_connections  # noqa: E402
from ingest import c_loop  # noqa: E402

# Runs FUNC(PATH, LIMIT) of a bench module REPEAT times, the module imported before the clock
# starts, and prints [best seconds, peak RSS KiB, *FUNC's result].
CHILD = """import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
mod, fn = sys.argv[2].split(":")
fn = getattr(__import__(mod), fn)
times = []
for _ in range(int(sys.argv[5])):
    t0 = time.perf_counter()
    r = fn(sys.argv[3], int(sys.argv[4]))
    times.append(time.perf_counter() - t0)
print(json.dumps([min(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, *r]))
"""


def nids_count():
    exe, src = OUT / "nids_count", HERE / "nids_count.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        OUT.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), "-lnids", "-lpcap"], check=True)
    return exe


def measure(cmd):
    """One run of cmd: (wall seconds, stdout, peak RSS in KiB)."""
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], capture_output=True, text=True)
        t = time.perf_counter() - t0
        if p.returncode:
            raise RuntimeError(f"`{' '.join(cmd[:2])} ...` exited {p.returncode}: {last_line(p.stderr)}")
        return t, p.stdout, int(rss.read().split()[-1])


def best(run, repeat):
    return min((run() for _ in range(repeat)), key=lambda r: r[0])


def into_tmpfs(cmd):
    """One run of cmd(DIR) writing into a fresh tmpfs directory: (seconds, stdout, RSS KiB, stream
    files, their bytes); tcpflow's report.xml and flowsift's index.jsonl are not stream files."""
    d = tempfile.mkdtemp(prefix=f"{PREFIX}reassembly-", dir=SHM)
    try:
        t, out, rss = measure(cmd(d))
        sizes = [e.stat().st_size for e in os.scandir(d)
                 if e.is_file() and e.name not in ("report.xml", "index.jsonl")]
        return t, out, rss, len(sizes), sum(sizes)
    finally:
        shutil.rmtree(d)


def in_child(func, path, limit, repeat):
    p = subprocess.run([sys.executable, "-c", CHILD, str(HERE), func, str(path), str(limit), str(repeat)],
                       capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(last_line(p.stderr))     # e.g. ModuleNotFoundError: No module named 'scapy'
    return json.loads(p.stdout)


def head_pcap(src, n, dst):
    """Copies the first n records of a classic pcap file."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        header = f.read(24)
        order = "<" if header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        out.write(header)
        for _ in range(n):
            rec = f.read(16)
            if len(rec) < 16:
                break
            out.write(rec + f.read(struct.unpack(order + "I", rec[8:12])[0]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dpkt-packets", type=int, default=100_000)
    ap.add_argument("--scapy-packets", type=int, default=5_000)
    ap.add_argument("--nids-streams", type=int, default=1 << 18,
                    help="libnids stream table size; preallocated, so it shows in its RSS")
    ap.add_argument("--memory-connections", type=int, default=100_000, metavar="N",
                    help="short connections in the smaller capture of the memory rows (0: no memory rows)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    describe()
    path = capture_arg(a.capture)
    size = path.stat().st_size
    allowed = sorted(os.sched_getaffinity(0))
    cpu = max(allowed)
    os.sched_setaffinity(0, {cpu})
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)   # warm the page cache

    flowsift = FLOWSIFT
    t, out, rss = best(lambda: measure([str(c_loop()), str(path)]), a.repeat)
    total = int(out.split()[0])
    rows = [dict(tool="C libpcap read loop", packets=total, seconds=t, rss=rss, conns=None, bytes=None,
                 note="reads only")]

    def row(tool, fn):
        try:
            rows.append(dict(tool=tool, **fn()))
        except Exception as e:   # one tool missing or failing is a row that says why, not the run's end
            rows.append(dict(tool=tool, skipped=str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__))

    def libnids():
        t, out, rss = best(lambda: measure([str(nids_count()), str(path), str(a.nids_streams)]), a.repeat)
        r = json.loads(out)
        return dict(packets=total, seconds=t, rss=rss, conns=r["streams"], bytes=r["bytes"],
                    note=f"skips IPv6, SYN-less flows, all after a side's first hole; {r['closed']:,} closed"
                         + (f", {r['evicted']:,} evicted (table full)" if r["evicted"] else ""))

    def discard(*tcp):
        def run():
            t, out, rss = best(lambda: measure([*flowsift, "streams", str(path), "--discard", *tcp, "--json"]), a.repeat)
            r = json.loads(out)   # its "packets" are those of the connections it reassembled, of capture_packets
            what = ("TCP only (--filter tcp), as its peers" if tcp else
                    f"TCP and UDP: {r['tcp']:,} TCP connections and {r['udp']:,} UDP flows")
            return dict(packets=r["capture_packets"], seconds=t, rss=rss, conns=r["connections"], bytes=r["bytes"],
                        note=f"complete; {r['gaps']:,} gaps, {r['conflicts']:,} conflicts; {what}")
        return run

    def to_files(cmd, note):
        def run():
            t, out, rss, files, nbytes = best(lambda: into_tmpfs(cmd), a.repeat)
            conns = json.loads(out)["connections"] if out.strip() else None
            return dict(packets=total, seconds=t, rss=rss, conns=conns, bytes=nbytes, files=files,
                        note=f"{files:,} files; {note}")
        return run

    def python_row(func, limit, capture, note):
        t, rss, n, conns, nbytes = in_child(func, capture, limit, a.repeat)
        subset = f"subset, extrapolated: first {n:,} packets, whole file ~{t * total / n:,.0f} s; "
        return dict(packets=n, seconds=t, rss=rss, conns=conns, bytes=nbytes, subset=n < total,
                    note=(subset if n < total else "") + note)

    row("libnids (nids_count.c)", libnids)
    tcp = ("--filter", "tcp")
    row("flowsift streams --discard", discard(*tcp))
    row("flowsift streams -o tmpfs", to_files(lambda d: [*flowsift, "streams", str(path), "-o", d, *tcp, "--json"],
                                              "complete, holes left out and listed; TCP only"))
    row("tcpflow -o tmpfs", to_files(lambda d: ["tcpflow", "-r", str(path), "-o", d],
                                     "NUL-fills holes, last copy wins"))
    if len(allowed) > 1 and shutil.which("taskset"):
        # beyond the one-core rule, for what a user sees: its writer thread then runs beside
        # reassembly (tcpflow has one thread either way)
        cpus = ",".join(map(str, allowed[-2:]))
        row("flowsift streams -o, 2 CPUs", to_files(
            lambda d: ["taskset", "-c", cpus, *flowsift, "streams", str(path), "-o", d, *tcp, "--json"],
            "the same; system calls in a writer thread"))
    row("dpkt + dict (Python)", lambda: python_row(
        "dpkt_reassembler:reassemble", a.dpkt_packets, path, "stalls on re-cut retransmissions"))
    with tempfile.NamedTemporaryFile(prefix=PREFIX, suffix=".pcap", dir=SHM) as head:
        head_pcap(path, a.scapy_packets, head.name)
        row("Scapy sniff TCPSession", lambda: python_row(
            "scapy_reassembler:reassemble", a.scapy_packets, head.name, "zero-fills holes, last copy wins"))
    row("flowsift streams --discard, all", discard())

    print_table(rows, path, size, total, cpu, a)
    memory = memory_rows(a, flowsift) if a.memory_connections else []
    if a.json:
        print(json.dumps(rows + memory))


def memory_rows(a, flowsift):
    """Peak RSS on N and 4N short connections, few open at once; bytes kept per connection seen."""
    def flowsift_closed(out):
        r = json.loads(out)
        return sum(r["close"].get(k, 0) for k in ("fin", "rst")), r["close"].get("evicted", 0)

    def nids_closed(out):
        r = json.loads(out)
        return r["closed"], r["evicted"]
    n = a.memory_connections
    tools = {"flowsift streams --discard": (lambda p: [*flowsift, "streams", str(p), "--discard", "--json"], flowsift_closed),
             "libnids (nids_count.c)": (lambda p: [str(nids_count()), str(p), str(a.nids_streams)], nids_closed)}
    rss, ends = {}, {}
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}reassembly-mem-", dir=SHM) as d:
        for k in (n, 4 * n):
            cap = many_connections(Path(d) / f"c{k}.pcap", k)
            for tool, (cmd, closed) in tools.items():
                _, out, rss[tool, k] = best(lambda: measure(cmd(cap)), a.repeat)
                ends[tool, k] = closed(out)
            cap.unlink()
    print(f"\nmemory: {n:,} and {4 * n:,} six-packet connections (SYN, SYN-ACK, data, FIN, FIN, ACK), "
          f"at most 1,000 open at once; best of {a.repeat}")
    print(f"{'tool':<28} {'RSS MiB':>8} {'RSS MiB':>8}  {'bytes kept per connection seen':>30}  closed / evicted")
    out = []
    for tool in tools:
        per = (rss[tool, 4 * n] - rss[tool, n]) * 1024 / (3 * n)
        said = "; ".join(f"{k:,}: {ends[tool, k][0]:,} / {ends[tool, k][1]:,}" for k in (n, 4 * n))
        # (RSS is in KiB: a few bytes a connection either way is none)
        kept = f"{per:,.0f}" if per >= 8 else "under 8"
        print(f"{tool:<28} {rss[tool, n] / 1024:>8.0f} {rss[tool, 4 * n] / 1024:>8.0f}  {kept:>30}  {said}")
        out.append(dict(tool=tool, memory_connections=[n, 4 * n], rss=[rss[tool, n], rss[tool, 4 * n]],
                        bytes_per_connection=per, closed=[ends[tool, k][0] for k in (n, 4 * n)],
                        evicted=[ends[tool, k][1] for k in (n, 4 * n)]))
    return out


def print_table(rows, path, size, total, cpu, a):
    done = [r for r in rows if "skipped" not in r]
    ref = {r["tool"].split()[0]: r["packets"] / r["seconds"] for r in done}
    print(f"capture: {path} ({size / 2**20:,.0f} MiB, {total:,} packets); CPU {cpu} only; "
          f"best of {a.repeat}; libnids table {a.nids_streams:,} streams; "
          f"/libnids, /tcpflow: packets/s against theirs, above 1x = faster than it")
    head = (f"{'tool':<31} {'packets':>10} {'seconds':>8} {'Mpkt/s':>7} {'Gbit/s':>6} {'RSS MiB':>7} "
            f"{'conns':>7} {'MB out':>7} {'/libnids':>8} {'/tcpflow':>8}  complete?")
    print(head)
    for r in rows:
        if "skipped" in r:
            print(f"{r['tool']:<31} {'-':>10} {'-':>8} {'-':>7} {'-':>6} {'-':>7} {'-':>7} {'-':>7} {'-':>8} {'-':>8}  "
                  f"skipped: {r['skipped']}")
            continue
        pps = r["packets"] / r["seconds"]
        r.setdefault("subset", False)
        r.update(pps=pps, gbps=size * r["packets"] / total * 8 / r["seconds"] / 1e9, rss_mib=r["rss"] / 1024,
                 vs_libnids=pps / ref["libnids"] if "libnids" in ref else None,
                 vs_tcpflow=pps / ref["tcpflow"] if "files" in r and "tcpflow" in ref else None)
        num = lambda v, fmt, unit="": "-" if v is None else format(v, fmt) + unit   # noqa: E731
        print(f"{r['tool']:<31} {r['packets']:>10,} {r['seconds']:>8.3f} {pps / 1e6:>7.3f} {r['gbps']:>6.2f} "
              f"{r['rss_mib']:>7.0f} {num(r['conns'], ','):>7} {num(r['bytes'] and r['bytes'] / 1e6, ',.1f'):>7} "
              f"{x(r['vs_libnids']):>8} {x(r['vs_tcpflow']):>8}  {r['note']}")


if __name__ == "__main__":
    main()
