"""Record store: the gateway's cost over plain reassembly, per-connection cost, and stream-pointer find.

    .venv/bin/python bench/store.py [CAPTURE] [--connections N] [--stream-mb M] [--repeat 3]

Every row is the best of --repeat runs. Scratch files go to directories named flowsift-bench-*
(in /dev/shm, and /tmp for the disk rows), removed however the script ends; it needs about the
capture's size free in /dev/shm, plus three times --stream-mb.

1. `flowsift gateway` (records + stream bytes into a /dev/shm store) against `flowsift streams
   --discard` on the same capture (default: the shared workload): the cost of the store, as a
   ratio (target >= 0.6).
2. Files created per second and the cost per connection, on a generated capture of N short
   connections (6 packets each: SYN, SYN-ACK, data, FIN, FIN, ACK), in /dev/shm and on the
   disk under /tmp.
3. StreamPointer.find over one M MiB stream (read-only mapping, memmem) against bytes.find, for
   a pattern absent and one near the end. The target (>= 0.9) is on warm finds: a pointer
   whose mapping is in place, against bytes.find on the same bytes already in memory. For the
   whole picture, also: the first find of a freshly opened pointer (the mapping made and its
   pages faulted in during it), and what bytes.find needs first: the bytes read from a file
   (the stream as `streams -o` writes it, on /dev/shm).
Ratios are bytes.find's time (or the other row's) over flowsift's: above 1x = flowsift faster.
"""
import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWSIFT, SHM, Failed, best, capture_arg, describe, need_space, run, scratch, x  # noqa: E402
from gen import many_connections, one_stream  # noqa: E402


def timed(cmd, before=None):
    return best(lambda: run(cmd), ARGS.repeat, before)[0]


def gateway_vs_streams(capture):
    need_space(SHM, 2 * capture.stat().st_size, "section 1 (a gateway store, then stream files)")
    t_streams = timed([*FLOWSIFT, "streams", capture, "--discard", "--json"])
    with scratch("store") as store:
        # (freeing the last run's pages is not timed)
        best_t = timed([*FLOWSIFT, "gateway", capture, "--store", store / "s", "--keep", "--json"],
                       before=lambda: shutil.rmtree(store / "s", ignore_errors=True))
        files = len(os.listdir(store / "s")) - 1
        shutil.rmtree(store / "s")
        # the same bytes written as stream files instead (no records, no header, no store):
        # how much of the store's cost is writing the bytes at all
        t_files = timed([*FLOWSIFT, "streams", capture, "-o", store / "o", "--json"],
                        before=lambda: shutil.rmtree(store / "o", ignore_errors=True))
    print(f"1. {capture} ({capture.stat().st_size / 2**20:,.0f} MiB), best of {ARGS.repeat}:")
    print(f"   flowsift streams --discard   {t_streams:7.3f} s")
    print(f"   flowsift gateway (/dev/shm)  {best_t:7.3f} s   {files:,} record files")
    print(f"   store cost ratio: gateway speed / streams speed = {x(t_streams / best_t)} "
          f"(above 1x = the gateway faster; target >= 0.6)")
    print(f"   for scale: flowsift streams -o /dev/shm (stream files and SHA-256, no records) {t_files:7.3f} s, "
          f"gateway speed / that = {x(t_files / best_t)}")


def per_connection(n):
    with scratch("conns", shm=False) as tmp:
        capture = many_connections(tmp / "many.pcap", n, payload=b"z" * 100)
        t_streams = timed([*FLOWSIFT, "streams", capture, "--discard", "--json"])
        print(f"2. {n:,} connections of 6 packets, best of {ARGS.repeat}:")
        print(f"   flowsift streams --discard   {t_streams:7.3f} s")
        for where, shm in (("/dev/shm", True), ("disk /tmp", False)):
            with scratch("conns-store", shm=shm) as d:
                t = timed([*FLOWSIFT, "gateway", capture, "--store", d / "s", "--keep", "--json"],
                          before=lambda: shutil.rmtree(d / "s", ignore_errors=True))
            print(f"   gateway, store on {where:9} {t:7.3f} s  {n / t:9,.0f} files/s  "
                  f"{(t - t_streams) / n * 1e6:6.1f} us per connection over plain reassembly")


def pointer_find(mb):
    from flowsift.gateway import Gateway
    from flowsift.streams import StreamPointer, store_files
    need_space(SHM, 3 * (mb << 20) + (64 << 20), "section 3 (a capture, a store and a stream file)")
    with scratch("find") as tmp:
        rnd = os.urandom(1 << 20)
        body = (rnd * (mb + 1))[:mb << 20]
        marker = b"NEEDLE-in-the-haystack-0123456789"
        body = body[:-4096] + marker + body[-4096 + len(marker):]
        one_stream(tmp / "big.pcap", body)
        Gateway(tmp / "s", keep=True).run_capture(tmp / "big.pcap")
        (tmp / "big.pcap").unlink()
        record = store_files(tmp / "s")[0]
        stream_file = tmp / "c2s"
        stream_file.write_bytes(body)
        del body

        def fresh_find(pat):
            sp = StreamPointer(record, 0)       # a new mapping, no page of it touched yet
            t0 = time.perf_counter()
            got = sp.find(pat, start=0)
            return time.perf_counter() - t0, got

        t_read, data = best(stream_file.read_bytes, ARGS.repeat)
        sp = StreamPointer(record, 0)
        assert sp.available == len(data)
        print(f"3. find over a {mb} MiB stream, best of {ARGS.repeat}; ratio = bytes.find's time / the pointer's, "
              f"above 1x = StreamPointer.find faster")
        print(f"   reading the stream file into bytes (what bytes.find needs first): {t_read * 1e3:.2f} ms")
        for label, pat in (("absent", b"this pattern is not in the stream"), ("near the end", marker)):
            want = data.find(pat)
            tf = min(fresh_find(pat) for _ in range(ARGS.repeat))
            assert tf[1] == want
            tf = tf[0]
            sp.find(pat, start=0)                # (its pages faulted in: the warm rows)
            tw, got = best(lambda: sp.find(pat, start=0), ARGS.repeat)
            tb, ref = best(lambda: data.find(pat), ARGS.repeat)
            assert got == ref == want
            print(f"   {label}:")
            print(f"     warm StreamPointer.find {tw * 1e3:7.2f} ms   bytes.find on bytes in memory {tb * 1e3:7.2f} ms   "
                  f"ratio {x(tb / tw)} (target >= 0.9)")
            print(f"     first find, fresh pointer {tf * 1e3:5.2f} ms   bytes.find on bytes in memory {tb * 1e3:7.2f} ms   "
                  f"ratio {x(tb / tf)}")
            print(f"     first find, fresh pointer {tf * 1e3:5.2f} ms   reading the file + bytes.find {(t_read + tb) * 1e3:6.2f} ms   "
                  f"ratio {x((t_read + tb) / tf)}")
        del sp, data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--stream-mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ARGS = ap.parse_args()
    describe()
    try:
        gateway_vs_streams(capture_arg(ARGS.capture))
        per_connection(ARGS.connections)
        pointer_find(ARGS.stream_mb)
    except Failed as e:
        sys.exit(f"bench/store.py: {e}")
