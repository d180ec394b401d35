"""Record store: the gateway's cost over plain reassembly, per-connection cost, and stream-pointer find.

    .venv/bin/python bench/store.py [CAPTURE] [--connections N] [--stream-mb M] [--repeat 3]

1. `flowsift gateway` (records + stream bytes into a /dev/shm store) against `flowsift streams
   --discard` on the same capture (default: the shared workload): the cost of the store, as a
   ratio (target >= 0.6).
2. Files created per second and the cost per connection, on a generated capture of N short
   connections (5 packets each), in /dev/shm and on the disk under /tmp.
3. StreamPointer.find over one M MB stream (read-only mapping, memmem) against bytes.find on
   the same bytes in memory (target >= 0.9), for a pattern absent and one near the end.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWSIFT, ROOT, capture_arg, describe  # noqa: E402
sys.path.insert(1, str(ROOT / "tests"))


def timed(cmd):
    best = None
    for _ in range(ARGS.repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        t = time.perf_counter() - t0
        best = t if best is None else min(best, t)
    return best


def gateway_vs_streams(capture):
    t_streams = timed([*FLOWSIFT, "streams", str(capture), "--discard", "--json"])
    store = Path(tempfile.mkdtemp(prefix="bench-store-", dir="/dev/shm"))
    try:
        best = None
        for _ in range(ARGS.repeat):
            shutil.rmtree(store / "s", ignore_errors=True)      # (freeing the last run's pages is not timed)
            t0 = time.perf_counter()
            subprocess.run([*FLOWSIFT, "gateway", str(capture), "--store", str(store / "s"), "--keep", "--json"],
                           check=True, stdout=subprocess.DEVNULL)
            t = time.perf_counter() - t0
            best = t if best is None else min(best, t)
        files = len(os.listdir(store / "s")) - 1
        shutil.rmtree(store / "s")
        # the same bytes written as stream files instead (no records, no header, no store):
        # how much of the store's cost is writing the bytes at all
        t_files = None
        for _ in range(ARGS.repeat):
            shutil.rmtree(store / "o", ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([*FLOWSIFT, "streams", str(capture), "-o", str(store / "o"), "--json"],
                           check=True, stdout=subprocess.DEVNULL)
            t = time.perf_counter() - t0
            t_files = t if t_files is None else min(t_files, t)
    finally:
        shutil.rmtree(store)
    print(f"1. {capture} ({capture.stat().st_size / 2**20:,.0f} MiB), best of {ARGS.repeat}:")
    print(f"   flowsift streams --discard   {t_streams:7.3f} s")
    print(f"   flowsift gateway (/dev/shm)  {best:7.3f} s   {files:,} record files")
    print(f"   store cost ratio: gateway speed / streams speed = {t_streams / best:.2f}x (target >= 0.6)")
    print(f"   for scale: flowsift streams -o /dev/shm (stream files and SHA-256, no records) {t_files:7.3f} s, "
          f"gateway speed / that = {t_files / best:.2f}x")


def per_connection(n):
    from test_store_faults import many_connections
    tmp = Path(tempfile.mkdtemp(prefix="bench-conns-"))
    capture = many_connections(tmp / "many.pcap", n, payload=b"z" * 100)
    t_streams = timed([*FLOWSIFT, "streams", str(capture), "--discard", "--json"])
    print(f"2. {n:,} connections of 5 packets:")
    print(f"   flowsift streams --discard   {t_streams:7.3f} s")
    for where, parent in (("/dev/shm", "/dev/shm"), ("disk /tmp", str(tmp))):
        store = Path(tempfile.mkdtemp(dir=parent)) / "s"
        t0 = time.perf_counter()
        subprocess.run([*FLOWSIFT, "gateway", str(capture), "--store", str(store), "--keep", "--json"],
                       check=True, stdout=subprocess.DEVNULL)
        t = time.perf_counter() - t0
        shutil.rmtree(store.parent)
        print(f"   gateway, store on {where:9} {t:7.3f} s  {n / t:9,.0f} files/s  "
              f"{(t - t_streams) / n * 1e6:6.1f} us per connection over plain reassembly")
    shutil.rmtree(tmp)


def pointer_find(mb):
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    from flowsift.gateway import Gateway
    from flowsift.streams import StreamPointer, store_files
    tmp = Path(tempfile.mkdtemp(prefix="bench-find-", dir="/dev/shm"))
    rnd = os.urandom(1 << 20)
    body = (rnd * (mb + 1))[:mb << 20]
    marker = b"NEEDLE-in-the-haystack-0123456789"
    body = body[:-4096] + marker + body[-4096 + len(marker):]
    seg = 1448
    frames = [(1, 0, ether(ipv4(A, B, 6, tcp(1, 80, seq=99, flags=0x02))))]
    for k, off in enumerate(range(0, len(body), seg)):
        frames.append((2 + k // 100000, k % 100000, ether(ipv4(A, B, 6, tcp(1, 80, seq=100 + off, ack=1, flags=0x18,
                                                                         payload=body[off:off + seg])))))
    (tmp / "big.pcap").write_bytes(pcap(frames))
    Gateway(tmp / "s", keep=True).run_capture(tmp / "big.pcap")
    sp = StreamPointer(store_files(tmp / "s")[0], 0)
    assert sp.available == len(body)
    data = bytes(sp.peek())
    print(f"3. find over a {mb} MiB stream (best of {ARGS.repeat}):")
    for label, pat in (("absent", b"this pattern is not in the stream"), ("near the end", marker)):
        want = data.find(pat)
        tp = tb = None
        for _ in range(ARGS.repeat):
            t0 = time.perf_counter()
            got = sp.find(pat, start=0)
            t1 = time.perf_counter()
            ref = data.find(pat)
            t2 = time.perf_counter()
            assert got == ref == want
            tp = t1 - t0 if tp is None else min(tp, t1 - t0)
            tb = t2 - t1 if tb is None else min(tb, t2 - t1)
        print(f"   {label:13} StreamPointer.find {tp * 1e3:7.2f} ms   bytes.find {tb * 1e3:7.2f} ms   "
              f"ratio {tb / tp:.2f}x (target >= 0.9)")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--stream-mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ARGS = ap.parse_args()
    describe()
    gateway_vs_streams(capture_arg(ARGS.capture))
    per_connection(ARGS.connections)
    pointer_find(ARGS.stream_mb)
