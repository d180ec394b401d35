"""Checkpoint cost: a module with declared state in a worker, checkpointing every batch, every
16 batches (the default) and only at the end; throughput ratios and checkpoint volume. Then
re-sharding: two shards, against two shards that go to three and back to two while the run
goes on (the connections moved, the pause each shard took, and the output compared).

    .venv/bin/python bench/state.py [CAPTURE] [--repeat 2]
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, best, capture_arg, describe, flowsift  # noqa: E402
from common import run as run_cmd  # noqa: E402


def run(capture, every, repeat):
    env = dict(os.environ, FLOWSIFT_CHECKPOINT_EVERY=str(every))
    cmd = flowsift("chain", HERE / "modules" / "tally.py", capture, "--events", "/dev/null", "--json")
    t, out = best(lambda: run_cmd(cmd, env), repeat)
    return t, json.loads(out)


def sharded(capture, repeat, *extra):
    cmd = flowsift("chain", "counter", capture, "--events", "/dev/null", "--json", "--shards", "2", *extra)
    t, out = best(lambda: run_cmd(cmd, dict(os.environ)), repeat)
    return t, json.loads(out)


def rows(summary):
    return sorted(json.dumps({k: v for k, v in r.items() if k != "conn"}, sort_keys=True)
                  for r in summary["tables"]["counter"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    describe()
    capture = capture_arg(args.capture)
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
    fixed, s2 = sharded(capture, args.repeat)
    n = s2["packets"]
    moving, s3 = sharded(capture, args.repeat, "--reshard", f"{n // 3}:3", "--reshard", f"{2 * n // 3}:2")
    moved = [x["moved"] for x in s3["shards"]]
    same = s3["connections"] == s2["connections"] and rows(s3) == rows(s2)
    print(f"  chain counter --shards 2         {fixed:7.2f} s")
    print(f"  ... 2 -> 3 -> 2 shards           {moving:7.2f} s   throughput ratio {fixed / moving:.2f}x   "
          f"{sum(m['connections_in'] for m in moved):,} open connections and "
          f"{sum(m['flows_in'] for m in moved):,} flows moved, pause per shard "
          f"{max(m['seconds'] for m in moved):.2f} s at most; same output: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
