"""Module chains: their cost over plain reassembly, parallel against inline, overhead per MB.

    .venv/bin/python bench/chain.py [CAPTURE] [--repeat 2]

1. `flowsift chain counter` against `flowsift streams --discard` (target >= 0.5); counter reads
   no stream bytes, so they are counted, not stored. Also with them stored (`--store`).
2. Two CPU-bound read-only modules (bench/modules/burn*.py) in parallel worker processes
   against the same two with --inline (target >= 1.7 on 2 cores).
3. Per-module overhead per MB of stream: a module that reads every byte and does nothing
   (bench/modules/reader.py) against row 1's `chain counter --store`, a module that reads none
   in the same kind of run: one worker, the bytes stored in both. The difference is what
   reading the bytes costs a module, not storing them or starting workers.
4. The README's main job, `flowsift chain http,tls,dns,counter` (no target: what users run).

Ratios against `streams --discard` are its time over the row's: the row's speed as a fraction
of plain reassembly's, above 1x = faster than it.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, Failed, capture_arg, describe, flowsift, run, scratch, timings, x  # noqa: E402

SPREAD = {}         # row name -> how far its runs spread (max - min): what is noise


def timed(*args, before=None, name=None):
    times, out = timings(lambda: run(flowsift(*args)), ARGS.repeat, before)
    SPREAD[name] = max(times) - min(times)
    return min(times), out


def main(capture):
    t_streams, out = timed("streams", capture, "--discard", "--json")
    mb = json.loads(out)["bytes"] / 1e6
    print(f"capture {capture} ({capture.stat().st_size / 2**20:,.0f} MiB, {mb:,.0f} MB of streams), best of {ARGS.repeat}; "
          f"ratio = streams --discard time / row time, above 1x = faster than plain reassembly")
    print(f"  flowsift streams --discard                 {t_streams:7.2f} s")
    t_counter, out = timed("chain", "counter", capture, "--events", "/dev/null", "--json")
    stored = "stored" if json.loads(out)["bytes_stored"] else "counted, not stored: counter reads none"
    print(f"1. flowsift chain counter                    {t_counter:7.2f} s   ratio {x(t_streams / t_counter)} "
          f"(target >= 0.5); bytes {stored}")
    # the same with the bytes stored, as a chain with a module that reads them would (a store
    # that stays: its files still go once read)
    with scratch("chain") as kept:
        t_stored, _ = timed("chain", "counter", capture, "--events", "/dev/null", "--json", "--store", kept / "s",
                            name="stored", before=lambda: shutil.rmtree(kept / "s", ignore_errors=True))
    print(f"   the same, bytes stored (--store)          {t_stored:7.2f} s   ratio {x(t_streams / t_stored)}")
    burn = f"{HERE / 'modules' / 'burn.py'},{HERE / 'modules' / 'burn2.py'}"
    t_inline, _ = timed("chain", burn, capture, "--events", "/dev/null", "--json", "--inline")
    t_par, _ = timed("chain", burn, capture, "--events", "/dev/null", "--json")
    print(f"2. two CPU-bound modules --inline            {t_inline:7.2f} s")
    print(f"   the same two in parallel workers          {t_par:7.2f} s   speed-up {x(t_inline / t_par)} "
          f"(inline time / parallel time; target >= 1.7)")
    t_read, _ = timed("chain", HERE / "modules" / "reader.py", capture, "--events", "/dev/null", "--json",
                      name="reader")
    extra, noise = t_read - t_stored, max(SPREAD["stored"], SPREAD["reader"])
    per = f"{extra / mb * 1e3:.2f} ms per MB" if extra > noise else f"below noise ({extra * 1e3:+.0f} ms in all)"
    print(f"3. a module reading every byte               {t_read:7.2f} s   overhead {per} over row 1's --store run "
          f"(a module reading none; bytes stored and one worker in both)")
    t_main, out = timed("chain", "http,tls,dns,counter", capture, "--events", "/dev/null", "--json")
    events = json.loads(out)["events"]
    print(f"4. the main job, chain http,tls,dns,counter  {t_main:7.2f} s   {events:,} events, ratio {x(t_streams / t_main)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--repeat", type=int, default=2)
    ARGS = ap.parse_args()
    describe()
    try:
        main(capture_arg(ARGS.capture))
    except Failed as e:
        sys.exit(f"bench/chain.py: {e}")
