"""The registry: updates per second, wake-up latency, and a chain through Redis against embedded.

    .venv/bin/python bench/registry.py [CAPTURE] [--repeat 2]

Starts its own redis-server (no persistence) on a free loopback port.

1. Updates per second, gateway side: `sync` once per batch with 256 changed connections (the
   latest record of each, a quarter of them new) -- one round trip per batch. The embedded
   registry announces nothing (the record headers are the registry), so its figure is the
   cost of the call.
2. Module commits per second: finished connections with counters and output length, one
   transaction per connection and per 64.
3. Wake-up latency: from the gateway's call that tells of a changed connection to the module
   process holding its id, one connection every 2 ms, the same clock on both sides.
   Redis: RedisRegistry.sync() in this process to RedisRegistry.wait() returning it in
   another (a keyspace notification); the sync call's own round trip is given beside it.
   Embedded: the embedded registry wakes nothing; a parallel chain's worker is woken by the
   batch message ParallelChain sends it (the same tuple, pickled over a multiprocessing pipe,
   received as its worker receives it). Every wait is bounded: a notification that does not
   come is counted as lost, not waited for.
4. `flowsift chain counter --registry redis://...` against the embedded default; ratio =
   embedded time / redis time, above 1x = redis faster.
Needs redis-server and the `redis` package in the venv.
"""
import argparse
import multiprocessing as mp
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Failed, best, capture_arg, describe, fail, flowsift, run, x  # noqa: E402

SAMPLES = 500
PACE = 0.002            # seconds between two wake-ups
GRACE = 10.0            # how long after the last wake-up a late one is still waited for


def start_redis():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        import redis
    except ImportError:
        fail("needs the redis package in the venv (pip install redis)")
    try:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL)
    except FileNotFoundError:
        fail("needs redis-server (apt-get install redis-server)")
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    proc.wait()
    fail("redis-server did not start within 4 s")


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


def _listener(url, run, ready, out, count, deadline):
    from flowsift.registry.redis import RedisRegistry
    reg = RedisRegistry(url, run, role="module")
    reg.subscribe()
    ready.set()
    got = []
    while len(got) < count and time.monotonic() < deadline:
        changed = reg.wait(0.2) or ()
        now = time.monotonic()
        got += [(c, now) for c in changed if c >= 0]
    out.send(got)


def _pipe_worker(conn, ready, out, count, deadline):
    ready.set()
    got = []
    while len(got) < count and time.monotonic() < deadline:
        if not conn.poll(0.2):
            continue
        msg = conn.recv()                   # as flowsift's _worker receives a batch
        now = time.monotonic()
        got += [(c, now) for c in msg[2]]
    out.send(got)


def _collect(ctx, target, args, send):
    """Starts target(*args, ready, tx, SAMPLES, deadline) in a process, calls send(c) for each
    sample and returns ({sample: latency µs}, samples lost); every wait ends by the deadline."""
    ready, (rx, tx) = ctx.Event(), ctx.Pipe(duplex=False)
    deadline = time.monotonic() + 10 + SAMPLES * PACE + GRACE
    p = ctx.Process(target=target, args=(*args, ready, tx, SAMPLES, deadline))
    p.start()
    try:
        if not ready.wait(10):
            raise Failed("the listening process did not start within 10 s")
        time.sleep(0.2)
        sent = {}
        for c in range(SAMPLES):
            sent[c] = time.monotonic()
            send(c)
            time.sleep(PACE)
        got = rx.recv() if rx.poll(max(0.0, deadline - time.monotonic()) + 2) else []
    finally:
        p.join(2)
        if p.is_alive():
            p.kill()
            p.join()
    lat = {c: (t - sent[c]) * 1e6 for c, t in got if c in sent}
    return lat, SAMPLES - len(lat)


def redis_latency(url):
    from flowsift.registry.redis import RedisRegistry
    reg = RedisRegistry(url, "lat")
    reg.start_run({"store": "/nonexistent", "source": "bench"})
    calls = []

    def send(c):
        t0 = time.monotonic()
        reg.sync([], [(c, 1, 1, 0)])
        calls.append((time.monotonic() - t0) * 1e6)
    try:
        lat, lost = _collect(mp.get_context("fork"), _listener, (url, "lat"), send)
    finally:
        reg.end_run()
    return list(lat.values()), lost, calls


def pipe_latency():
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe()

    def send(c):
        # ParallelChain.process's message: ("batch", seq, touched, closed, limits, forget), the
        # limits being the store's published (records, gaps, end0, end1, last_ts)
        a.send(("batch", c, [c], [], {c: (3, 0, 1200, 5400, 1_700_000_000_000_000_000)}, []))
    lat, lost = _collect(ctx, _pipe_worker, (b,), send)
    return list(lat.values()), lost


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def timed(*args):
    return best(lambda: run(flowsift(*args)), ARGS.repeat)[0]


def said(lat, lost):
    if not lat:
        return f"none of {SAMPLES} arrived"
    out = f"median {statistics.median(lat):6.0f}  p99 {pct(lat, 0.99):6.0f}"
    return out + (f"  ({lost} of {SAMPLES} lost)" if lost else "")


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
        (rl, rlost, calls), (pl, plost) = redis_latency(url), pipe_latency()
        print(f"3. wake-up latency (µs), gateway's call to the module process holding the id, {SAMPLES} samples:")
        print(f"   redis (sync -> keyspace notification -> wait)      {said(rl, rlost)}   "
              f"(the sync call alone: median {statistics.median(calls):.0f})")
        print(f"   embedded (a parallel chain's batch message, pipe)  {said(pl, plost)}")
        capture = capture_arg(ARGS.capture)
        t_emb = timed("chain", "counter", capture, "--events", "/dev/null", "--json")
        t_red = timed("chain", "counter", capture, "--events", "/dev/null", "--json", "--registry", url)
        print(f"4. flowsift chain counter on {capture.name} ({capture.stat().st_size / 2**20:,.0f} MiB), best of {ARGS.repeat}: "
              f"embedded {t_emb:.2f} s, --registry redis {t_red:.2f} s   ratio {x(t_emb / t_red)} "
              f"(embedded time / redis time, above 1x = redis faster)")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--repeat", type=int, default=2)
    ARGS = ap.parse_args()
    describe()
    try:
        main()
    except Failed as e:
        sys.exit(f"bench/registry.py: {e}")
