"""The registry: updates per second, wake-up latency, and a chain through Redis against embedded.

    .venv/bin/python bench/registry.py [CAPTURE] [--repeat 2]

Starts its own redis-server (no persistence) on a free loopback port.

1. Updates per second, gateway side: `sync` once per batch with 256 changed connections (the
   latest record of each, a quarter of them new) -- one round trip per batch. The embedded
   registry announces nothing (the record headers are the registry), so its figure is the
   cost of the call.
2. Module commits per second: finished connections with counters and output length, one
   transaction per connection and per 64.
3. Wake-up latency, from the gateway's update to the module process holding the connection
   id: Redis keyspace notifications, against the embedded chain's pipe to a worker.
4. `flowsift chain counter --registry redis://...` against the embedded default (ratio).
"""
import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWSIFT, capture_arg, describe  # noqa: E402


def start_redis():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    import redis
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.02)
    raise SystemExit("redis-server did not start")


def updates(reg, batches=400, per_batch=256):
    ident = "tcp 10.0.0.1:40000 10.0.0.2:80 c00000001.rec"
    t0 = time.perf_counter()
    for b in range(batches):
        base = b * per_batch // 4
        new = [(base + i, ident) for i in range(per_batch // 4)]
        ups = [(base + i, 10 + b, 1 << 40, 0) for i in range(per_batch)]
        reg.sync(new, ups)
    return batches * per_batch / (time.perf_counter() - t0)


def commits(reg, bit, n, per):
    t0 = time.perf_counter()
    for i in range(0, n, per):
        items = [(c, 12, {"packets": 12, "bytes": 3000}) for c in range(i, i + per)]
        if reg.kind == "embedded":
            for c, r, k in items:
                reg.commit(bit, c, r, k)
        else:
            reg.commit_many(bit, items, i * 100)
    return n / (time.perf_counter() - t0)


def _listener(url, run, ready, out, count):
    from flowsift.registry.redis import RedisRegistry
    reg = RedisRegistry(url, run, role="module")
    reg.subscribe()
    ready.set()
    got = []
    while len(got) < count:
        changed = reg.wait(1.0) or ()
        now = time.monotonic()
        got += [(c, now) for c in changed if c >= 0]
    out.send(got)


def redis_latency(url, samples=500):
    from flowsift.registry.redis import RedisRegistry
    reg = RedisRegistry(url, "lat")
    reg.start_run({"store": "/nonexistent", "source": "bench"})
    ctx = mp.get_context("fork")
    ready, (rx, tx) = ctx.Event(), ctx.Pipe(duplex=False)
    p = ctx.Process(target=_listener, args=(url, "lat", ready, tx, samples))
    p.start()
    ready.wait(10)
    time.sleep(0.2)
    sent = {}
    for c in range(samples):
        sent[c] = time.monotonic()
        reg.sync([], [(c, 1, 1, 0)])
        time.sleep(0.002)
    got = rx.recv()
    p.join(10)
    reg.end_run()
    return [(t - sent[c]) * 1e6 for c, t in got if c in sent]


def _pipe_worker(conn, out, count):
    got = []
    while len(got) < count:
        msg = conn.recv()
        got.append((msg, time.monotonic()))
    out.send(got)


def pipe_latency(samples=500):
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe()
    rx, tx = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_pipe_worker, args=(b, tx, samples))
    p.start()
    time.sleep(0.2)
    sent = {}
    for c in range(samples):
        sent[c] = time.monotonic()
        a.send(("batch", [c], []))
        time.sleep(0.002)
    got = rx.recv()
    p.join(10)
    return [(t - sent[m[1][0]]) * 1e6 for m, t in got]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def timed(*args):
    best = None
    for _ in range(ARGS.repeat):
        t0 = time.perf_counter()
        subprocess.run([*FLOWSIFT, *map(str, args)], check=True, capture_output=True)
        t = time.perf_counter() - t0
        best = t if best is None else min(best, t)
    return best


def main():
    from flowsift.registry import EmbeddedRegistry
    from flowsift.registry.redis import RedisRegistry
    proc, url = start_redis()
    try:
        emb = EmbeddedRegistry()
        red = RedisRegistry(url, "bench")
        red.start_run({"store": "/nonexistent", "source": "bench"})
        e_up, r_up = updates(emb), updates(red)
        print(f"1. connection updates per second (batches of 256)   embedded {e_up:12,.0f}   redis {r_up:10,.0f}")
        bit_e, _ = emb.register("bench")
        bit_r, _ = red.register("bench")
        e_c = commits(emb, bit_e, 20000, 1)
        r_c1, r_c64 = commits(red, bit_r, 5000, 1), commits(red, bit_r, 20000, 64)
        print(f"2. module commits per second                       embedded {e_c:12,.0f}   redis {r_c1:10,.0f} "
              f"(one per transaction), {r_c64:,.0f} (64 per transaction)")
        red.end_run()
        rl, pl = redis_latency(url), pipe_latency()
        print(f"3. wake-up latency (µs)  redis notifications: median {statistics.median(rl):6.0f}  p99 {pct(rl, 0.99):6.0f}"
              f"   embedded pipe: median {statistics.median(pl):6.0f}  p99 {pct(pl, 0.99):6.0f}")
        capture = capture_arg(ARGS.capture)
        t_emb = timed("chain", "counter", capture, "--events", "/dev/null", "--json")
        t_red = timed("chain", "counter", capture, "--events", "/dev/null", "--json", "--registry", url)
        print(f"4. flowsift chain counter on {capture.name} ({capture.stat().st_size / 2**20:,.0f} MiB), best of {ARGS.repeat}: "
              f"embedded {t_emb:.2f} s, --registry redis {t_red:.2f} s   ratio {t_emb / t_red:.2f}x")
    finally:
        proc.kill()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--repeat", type=int, default=2)
    ARGS = ap.parse_args()
    describe()
    main()
