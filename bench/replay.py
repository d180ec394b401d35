"""Replay throughput: connections/s and turns/s against a fast local server, and what diffing costs.

    .venv/bin/python bench/replay.py [CAPTURE] [--concurrency 32] [--repeat 2] [--keep-table DIR]

A local asyncio server (bench/replay_server.py) answers every connection `flowsift replay`
plays with that connection's own recorded responses, turn by turn: it recognises a connection by
its first request and then reads each request by its recorded length, so HTTP and other streams
are served alike, and the same path on two servers gets each its own answer. Its table is made
here first, from the connections replay will play (TCP to --server-port, cut into turns as
replay cuts them): the responses in one binary file and an index, in a flowsift-bench-* directory
under /tmp removed at the end (kept in DIR with --keep-table). Connections whose server spoke
first give the server nothing to recognise them by: they are left out of the replay with a
--filter (said in the header), so that every connection replayed has its own answers.

`flowsift replay --speed max` then plays the capture against it with --match exact and --match
http (headers parsed, bodies de-chunked and compared), each best of --repeat runs. The rate is
printed with the failed and differing connections beside it, and not at all when the bench's
server could not answer some connection (it says how many): a rate over timeouts measures the
timeout. GoReplay, the usual peer, has no Debian or PyPI package, so it is not run here.
"""
import argparse
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWSIFT, HERE, Failed, capture_arg, describe, fail, last_line, scratch, x  # noqa: E402

SERVER = HERE / "replay_server.py"


def digest(b):
    return hashlib.blake2b(b, digest_size=16).digest()


def table_of(capture, server_port, out):
    """Writes the server's table into directory `out` for the connections replay will play;
    returns how many there are, and [(client, server)] of those left out: their server spoke
    first, and nothing from the client tells the bench's server which one it is."""
    from flowsift.gateway import Gateway
    from flowsift.replay import conversation
    from flowsift.streams.reader import store_files
    conns, first, mute = [], {}, []
    with scratch("replay-store") as d, open(out / "responses.bin", "wb") as data:
        g = Gateway(d / "s", keep=True)
        summary = g.run_capture(capture)
        if summary["error"]:
            raise Failed(f"{capture}: {summary['error']}")
        for path in store_files(d / "s"):
            # the connections replay plays, cut as it cuts them (replay.replay())
            c = conversation(path)
            if c.skip is not None or not c.turns or int(c.server.rpartition(":")[2]) != server_port:
                continue
            if not c.turns[0].request:
                mute.append((c.client, c.server))
                continue
            turns = []
            for t in c.turns:
                turns.append((len(t.request), digest(t.request), data.tell(), len(t.response)))
                data.write(t.response)
            first.setdefault(digest(c.turns[0].request), []).append(len(conns))
            conns.append(tuple(turns))
    with open(out / "index.pickle", "wb") as f:
        pickle.dump((conns, first), f, protocol=pickle.HIGHEST_PROTOCOL)
    return len(conns), mute


def left_out(mute):
    """A BPF expression that leaves out the connections between these endpoints."""
    def host_port(ep):
        host, _, port = ep.rpartition(":")
        return host.strip("[]"), port
    each = []
    for client, server in mute:
        (ch, cp), (sh, sp) = host_port(client), host_port(server)
        each.append(f"(host {ch} and host {sh} and tcp port {cp} and tcp port {sp})")
    return f"not ({' or '.join(each)})"


def server_stats(srv):
    srv.send_signal(signal.SIGUSR1)
    line = srv.stdout.readline()
    if not line:
        raise Failed("the bench's server died")
    return json.loads(line)


def replay_once(capture, port, match, args, bpf):
    t0 = time.perf_counter()
    res = subprocess.run([*FLOWSIFT, "replay", str(capture), "--to", f"127.0.0.1:{port}", "--match", match,
                          "--server-port", str(args.server_port), "-j", str(args.concurrency), "--idle", "0.2",
                          "--timeout", "1", "--json", *(["--filter", bpf] if bpf else [])],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    # exit 1: some connection differed or failed; the summary says which
    try:
        s = json.loads(res.stdout) if res.returncode in (0, 1) else None
    except ValueError:
        s = None
    if s is None:
        raise Failed(f"replay exited {res.returncode}: {last_line(res.stderr)}")
    return s, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--server-port", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep-table", metavar="DIR", help="write the server's table into DIR and keep it")
    args = ap.parse_args()
    describe()
    capture = capture_arg(args.capture)
    with scratch("replay-table", shm=False) as tmp:
        table = Path(args.keep_table) if args.keep_table else tmp
        table.mkdir(parents=True, exist_ok=True)
        n, mute = table_of(capture, args.server_port, table)
        if not n:
            fail(f"{capture} has no TCP connection to port {args.server_port} to replay (--server-port)")
        size = os.path.getsize(table / "responses.bin") + os.path.getsize(table / "index.pickle")
        srv = subprocess.Popen([sys.executable, str(SERVER), str(table)], stdout=subprocess.PIPE, text=True)
        try:
            port = int(srv.stdout.readline())
            print(f"capture {capture.name}: {n:,} connections to port {args.server_port} to replay; server on "
                  f"127.0.0.1:{port} (its table {size / 2**20:,.1f} MiB); -j {args.concurrency}; best of {args.repeat}")
            if mute:
                print(f"  left out with --filter: {len(mute):,} more whose server spoke first (nothing from their "
                      f"client tells the bench's server which they are)")
            runs = {}
            for match in ("exact", "http"):
                best = None
                for _ in range(args.repeat):
                    s, wall = replay_once(capture, port, match, args, left_out(mute) if mute else None)
                    s["server"] = server_stats(srv)
                    if best is None or s["seconds"] < best[0]["seconds"]:
                        best = (s, wall)
                s, wall = best
                runs[match] = s
                ours = s["server"]["unrecognised"] + s["server"]["requests_differing"]
                counts = (f"{s['connections']:,} connections, {s['turns']:,} turns compared; identical {s['identical']:,}, "
                          f"differing {s['differing']:,}, failed {s['failed']:,}, uncompared {s['uncompared']:,}")
                if s["connections"] != n:
                    counts += f" (replay played {s['connections']:,}, the table holds {n:,})"
                if ours:
                    print(f"  --match {match:5}  {counts}: no rate: the bench's server could not answer "
                          f"{s['server']['unrecognised']:,} connections and saw {s['server']['requests_differing']:,} "
                          f"requests other than recorded")
                    continue
                print(f"  --match {match:5}  {s['seconds']:6.2f} s (+{wall - s['seconds']:.2f} s reading the capture): "
                      f"{s['connections_per_second']:8,.1f} conn/s {s['turns_per_second']:9,.1f} turns/s; {counts}")
                for f in s.get("failures", [])[:3]:
                    print(f"      failed: conn {f['conn']} {f['client']}: {f['reason']}")
            if all(not (r["server"]["unrecognised"] + r["server"]["requests_differing"]) for r in runs.values()):
                e, h = runs["exact"]["seconds"], runs["http"]["seconds"]
                print(f"  diffing as HTTP costs {100 * (h - e) / e:+.0f}% over exact comparison "
                      f"(http time / exact time {x(h / e)})")
            print("  GoReplay: no Debian or PyPI package in the registries this machine reaches; not compared")
        finally:
            srv.kill()
            srv.wait()
    if args.keep_table:
        print(f"  the server's table is kept in {args.keep_table}")


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        sys.exit(f"bench/replay.py: {e}")
