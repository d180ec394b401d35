"""Module chains: their cost over plain reassembly, parallel against inline, overhead per MB.

    .venv/bin/python bench/chain.py [CAPTURE] [--repeat 2]

1. `flowsift chain counter` against `flowsift streams --discard` (target >= 0.5); counter reads
   no stream bytes, so they are counted, not stored. Also with them stored (`--store`).
2. Two CPU-bound read-only modules (bench/modules/burn*.py) in parallel worker processes
   against the same two with --inline (target >= 1.7 on 2 cores).
3. Per-module overhead per MB of stream: a module that reads every byte and does nothing,
   against plain reassembly.
4. The README's main job, `flowsift chain http,tls,dns,counter` (no target: what users run).
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, capture_arg, describe, flowsift  # noqa: E402


def timed(*args, before=None):
    best, out = None, None
    for _ in range(ARGS.repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        out = subprocess.run(flowsift(*args), check=True, capture_output=True, text=True).stdout
        t = time.perf_counter() - t0
        best = t if best is None else min(best, t)
    return best, out


def main(capture):
    t_streams, out = timed("streams", capture, "--discard", "--json")
    mb = json.loads(out)["bytes"] / 1e6
    print(f"capture {capture} ({capture.stat().st_size / 2**20:,.0f} MiB, {mb:,.0f} MB of streams), best of {ARGS.repeat}")
    print(f"  flowsift streams --discard                 {t_streams:7.2f} s")
    t_counter, out = timed("chain", "counter", capture, "--events", "/dev/null", "--json")
    stored = "stored" if json.loads(out)["bytes_stored"] else "counted, not stored: counter reads none"
    print(f"1. flowsift chain counter                    {t_counter:7.2f} s   ratio {t_streams / t_counter:.2f}x (target >= 0.5); bytes {stored}")
    # the same with the bytes stored, as a chain with a module that reads them would (a store
    # that stays: its files still go once read)
    kept = Path(tempfile.mkdtemp(prefix="flowsift-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        t_stored, _ = timed("chain", "counter", capture, "--events", "/dev/null", "--json", "--store", kept / "s",
                            before=lambda: shutil.rmtree(kept / "s", ignore_errors=True))
    finally:
        shutil.rmtree(kept, ignore_errors=True)
    print(f"   the same, bytes stored (--store)          {t_stored:7.2f} s   ratio {t_streams / t_stored:.2f}x")
    burn = f"{HERE / 'modules' / 'burn.py'},{HERE / 'modules' / 'burn2.py'}"
    t_inline, _ = timed("chain", burn, capture, "--events", "/dev/null", "--json", "--inline")
    t_par, _ = timed("chain", burn, capture, "--events", "/dev/null", "--json")
    print(f"2. two CPU-bound modules --inline            {t_inline:7.2f} s")
    print(f"   the same two in parallel workers          {t_par:7.2f} s   speed-up {t_inline / t_par:.2f}x (target >= 1.7)")
    t_read, _ = timed("chain", HERE / "modules" / "reader.py", capture, "--events", "/dev/null", "--json")
    print(f"3. a module reading every byte               {t_read:7.2f} s   overhead {(t_read - t_streams) / mb * 1e3:.2f} ms per MB")
    t_main, out = timed("chain", "http,tls,dns,counter", capture, "--events", "/dev/null", "--json")
    events = json.loads(out)["events"]
    print(f"4. the main job, chain http,tls,dns,counter  {t_main:7.2f} s   {events:,} events, ratio {t_streams / t_main:.2f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--repeat", type=int, default=2)
    ARGS = ap.parse_args()
    describe()
    main(capture_arg(ARGS.capture))
