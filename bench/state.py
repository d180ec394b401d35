"""Checkpoint cost: a module with declared state in a worker, checkpointing every batch, every
16 batches (the default) and only at the end; throughput ratios and checkpoint volume.

    .venv/bin/python bench/state.py [CAPTURE] [--repeat 2]
"""
import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ingest import best, workload  # noqa: E402
from ingest import run as run_cmd  # noqa: E402

FLOWSIFT = str(Path(sys.executable).parent / "flowsift")


def run(capture, every, repeat):
    env = dict(os.environ, FLOWSIFT_CHECKPOINT_EVERY=str(every))
    cmd = [FLOWSIFT, "chain", str(HERE / "modules" / "tally.py"), str(capture), "--events", "/dev/null", "--json"]
    t, out = best(lambda: run_cmd(cmd, env), repeat)
    return t, json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    capture = Path(args.capture) if args.capture else workload()
    base, s = run(capture, 10**9, args.repeat)
    secs = (s["connections"]["tcp"] + s["connections"]["udp"])
    print(f"capture {capture.name}: {secs:,} connections, best of {args.repeat}")
    print(f"  checkpoint only at the end      {base:7.2f} s")
    for every in (16, 1):
        t, s = run(capture, every, args.repeat)
        c = s["checkpoints"]["tally"]
        print(f"  checkpoint every {every:2} batch{'es' if every > 1 else '  '}      {t:7.2f} s   throughput ratio "
              f"{base / t:.2f}x   {c['checkpoints']:,} checkpoints, {c['bytes'] / 2**20:,.1f} MiB, "
              f"{(t - base) / max(c['checkpoints'], 1) * 1e3:.2f} ms each")


if __name__ == "__main__":
    main()
