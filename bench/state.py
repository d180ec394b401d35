"""Checkpoint cost: a module with declared state in a worker, checkpointing every batch, every
16 batches (the default) and only at the end; throughput ratios and checkpoint volume. Then
re-sharding: two shards, against two shards that go to three and back to two while the run
goes on (the connections moved, the pause each shard took, and the output compared).

    .venv/bin/python bench/state.py [CAPTURE] [--repeat 2]

Throughput ratios are the baseline's time over the row's: above 1x = faster than the baseline.
The cost of one checkpoint is the row's extra time over the baseline's, both best of --repeat,
divided by its checkpoints; an extra time within the spread of the baseline's runs is noise
and said so. The output compared is the counter's table, each row without `conn` and `shard`:
a flow a re-shard moves is named by its new shard from the move on (docs/cli.md).
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, Failed, capture_arg, describe, flowsift, timings, x  # noqa: E402
from common import run as run_cmd  # noqa: E402


def run(capture, every, repeat):
    env = dict(os.environ, FLOWSIFT_CHECKPOINT_EVERY=str(every))
    cmd = flowsift("chain", HERE / "modules" / "tally.py", capture, "--events", "/dev/null", "--json")
    times, out = timings(lambda: run_cmd(cmd, env), repeat)
    return times, json.loads(out)


def sharded(capture, repeat, *extra):
    cmd = flowsift("chain", "counter", capture, "--events", "/dev/null", "--json", "--shards", "2", *extra)
    times, out = timings(lambda: run_cmd(cmd, dict(os.environ)), repeat)
    return min(times), json.loads(out)


def rows(summary):
    # conn and shard name a connection, and a re-shard renames the flows it moves
    return sorted(json.dumps({k: v for k, v in r.items() if k not in ("conn", "shard")}, sort_keys=True)
                  for r in summary["tables"]["counter"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    describe()
    capture = capture_arg(args.capture)
    base_times, s = run(capture, 10**9, args.repeat)
    base, noise = min(base_times), max(base_times) - min(base_times)
    secs = (s["connections"]["tcp"] + s["connections"]["udp"])
    print(f"capture {capture.name}: {secs:,} connections, best of {args.repeat}; "
          f"throughput ratio = baseline time / row time, above 1x = faster than the baseline")
    print(f"  checkpoint only at the end       {base:7.2f} s   (the baseline; its runs spread {noise * 1e3:.0f} ms)")
    for every in (16, 1):
        times, s = run(capture, every, args.repeat)
        t = min(times)
        c = s["checkpoints"]["tally"]
        extra = t - base
        each = (f"{extra / c['checkpoints'] * 1e3:.2f} ms each" if extra > noise and c["checkpoints"]
                else f"cost below noise ({extra * 1e3:+.0f} ms in all, runs spread {noise * 1e3:.0f} ms)")
        print(f"  checkpoint every {every:2} batch{'es' if every > 1 else '  '}      {t:7.2f} s   throughput ratio "
              f"{x(base / t)}   {c['checkpoints']:,} checkpoints, {c['bytes'] / 2**20:,.1f} MiB, {each}")
    fixed, s2 = sharded(capture, args.repeat)
    n = s2["packets"]
    moving, s3 = sharded(capture, args.repeat, "--reshard", f"{n // 3}:3", "--reshard", f"{2 * n // 3}:2")
    moved = [sh["moved"] for sh in s3["shards"]]
    same = s3["connections"] == s2["connections"] and rows(s3) == rows(s2)
    print(f"  chain counter --shards 2         {fixed:7.2f} s   (the baseline)")
    print(f"  ... 2 -> 3 -> 2 shards           {moving:7.2f} s   throughput ratio {x(fixed / moving)}   "
          f"{sum(m['connections_in'] for m in moved):,} open connections and "
          f"{sum(m['flows_in'] for m in moved):,} flows moved, pause per shard "
          f"{max(m['seconds'] for m in moved):.2f} s at most; same output (counter rows without conn and "
          f"shard, connection totals): {'yes' if same else 'NO'}")


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        sys.exit(f"bench/state.py: {e}")
