"""Replay throughput: connections/s and turns/s against a fast local server, and what diffing costs.

    .venv/bin/python bench/replay.py [CAPTURE] [--concurrency 32]

A local asyncio server answers every HTTP request of CAPTURE with its recorded response
(tests/servers/recorded_http.py); `flowsift replay --speed max` plays the capture's HTTP
connections against it with --match exact and --match http (headers parsed, bodies
de-chunked and compared). GoReplay, the usual peer, has no Debian or PyPI package, so it is
not run here.
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, FLOWSIFT, capture_arg, describe  # noqa: E402
SERVER = HERE.parent / "tests" / "servers" / "recorded_http.py"


def table_of(capture, out):
    from flowsift.gateway import Gateway
    from flowsift.replay import conversation
    from flowsift.streams.reader import store_files
    g = Gateway(None, keep=True)
    g.run_capture(capture)
    table, http = {}, 0
    try:
        for path in store_files(g.store_dir):
            c = conversation(path, match="http")
            if c.skip:
                continue
            http += 1
            for t in c.turns:
                table.setdefault(t.request.split(b"\r\n", 1)[0].decode("latin-1"), []).append(t.response.hex())
    finally:
        shutil.rmtree(g.store_dir)
    out.write_text(json.dumps(table))
    return http


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    describe()
    capture = capture_arg(args.capture)
    table = HERE / "out" / "replay-table.json"
    table.parent.mkdir(exist_ok=True)
    n = table_of(capture, table)
    srv = subprocess.Popen([sys.executable, str(SERVER), str(table)], stdout=subprocess.PIPE, text=True)
    port = int(srv.stdout.readline())
    try:
        print(f"capture {capture.name}: {n:,} HTTP connections; server on 127.0.0.1:{port}; -j {args.concurrency}")
        runs = {}
        for match in ("exact", "http"):
            t0 = time.perf_counter()
            res = subprocess.run([*FLOWSIFT, "replay", str(capture), "--to", f"127.0.0.1:{port}", "--match", match,
                                  "--server-port", "80", "-j", str(args.concurrency), "--idle", "0.2", "--timeout", "1",
                                  "--json"], capture_output=True, text=True)
            if res.returncode not in (0, 1):            # (1: some connection differed or failed)
                sys.exit(f"replay failed ({res.returncode}): {res.stderr.strip()}")
            out = res.stdout
            wall = time.perf_counter() - t0
            s = json.loads(out)
            runs[match] = s
            print(f"  --match {match:5}  {s['connections']:6,} connections {s['turns']:7,} turns in {s['seconds']:6.2f} s "
                  f"(+{wall - s['seconds']:.2f} s reading the capture): {s['connections_per_second']:8,.1f} conn/s "
                  f"{s['turns_per_second']:9,.1f} turns/s; identical {s['identical']:,}, differing {s['differing']:,}, "
                  f"failed {s['failed']:,}")
        e, h = runs["exact"]["seconds"], runs["http"]["seconds"]
        print(f"  diffing as HTTP costs {100 * (h - e) / e:+.0f}% over exact comparison")
        print("  GoReplay: no Debian or PyPI package in the registries this machine reaches; not compared")
    finally:
        srv.kill()


if __name__ == "__main__":
    main()
