"""`flowsift chain ... --shards N`: N gateways on one machine, each with the flows of its shard
(a symmetric hash of the addresses, as RSS spreads flows over NIC queues), its own store and
its own module workers; at the end their outputs are put together.

A capture file is read by every shard, each keeping its flows. An AF_PACKET interface is read
once: the shards join one PACKET_FANOUT_HASH group and the kernel hands each its flows.

Per-flow state never leaves its shard (a flow lives in one). Declared cross-flow and global
state is merged by each declaration's merge rule (numbers add, lists extend, ... see
flowsift.modules.state); counters add; tables are joined; events are written shard after shard.
"""
import json
import multiprocessing as mp
import os
import signal
import tempfile

from flowsift.errors import FlowsiftError, UsageError


def _one(spec, source, index, count, split, events_path, kw, conn):
    try:
        from flowsift.chain import run_chain
        with open(events_path, "w") as ev:
            summary = run_chain(spec, source, events=ev, shard=(index, count, split), **kw)
        conn.send(("ok", summary))
    except FlowsiftError as e:
        conn.send(("error", str(e)))
    except Exception as e:                # reported by the parent, as one line
        conn.send(("error", f"shard {index}: {type(e).__name__}: {e}"))


def _add(a, b):
    for k, v in b.items():
        if isinstance(v, dict):
            _add(a.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            a[k] = a.get(k, 0) + v
        elif k not in a:
            a[k] = v
    return a


def merge_state(spec, snapshots):
    """One module state per module from the shards' snapshots, by the declared merge rules."""
    from flowsift.modules.loader import parse_chain
    from flowsift.modules.state import restore, snapshot
    classes = {cls.name: (cls, cfg) for cls, cfg in parse_chain(spec)}
    out = {}
    for name in sorted({n for s in snapshots for n in s}):
        cls, cfg = classes[name]
        m = cls(cfg)
        for s in snapshots:
            if name in s:
                restore(m, json.dumps(s[name]), merge=True)
        out[name] = json.loads(snapshot(m))
    return out


def shard_source(source):
    """(what each shard opens, how flows are split: "hash" by each shard, "kernel" by fan-out)."""
    from flowsift.io.live import is_live, parse_spec
    src = str(source)
    if not is_live(src):
        return src, "hash"
    scheme, _, options = parse_spec(src)
    if scheme == "dpdk":
        raise UsageError("--shards with a DPDK port: one process owns a port; use afpacket:IFACE (the kernel "
                         "splits flows between the shards) or a capture file")
    if "fanout" in options:
        raise UsageError(f"{src}: --shards puts the shards in a fan-out group of its own; leave fanout= out")
    # one group per run: other flowsift runs on the interface keep their own copies
    return f"{src},fanout={os.getpid() & 0xFFFF}", "kernel"


def run_sharded(spec, source, count, events=None, **kw):
    src, split = shard_source(source)
    ctx = mp.get_context("fork")
    tmp = tempfile.mkdtemp(prefix="flowsift-shards-")
    procs = []
    old = {}

    def forward(signum, frame):
        # Ctrl-C or SIGTERM ends every shard cleanly (a live source then summarises)
        for p, _ in procs:
            if p.is_alive():
                os.kill(p.pid, signum)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, forward)
        for k in range(count):
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_one, args=(spec, src, k, count, split, os.path.join(tmp, f"{k}.jsonl"), kw, child))
            p.start()
            child.close()
            procs.append((p, parent))
        results = []
        for k, (p, conn) in enumerate(procs):
            try:
                status, value = conn.recv()
            except EOFError:
                status, value = "error", f"shard {k}: its process died ({p.exitcode})"
            p.join()
            if status != "ok":
                raise FlowsiftError(value)
            results.append(value)
        if events is not None:
            for k in range(count):
                with open(os.path.join(tmp, f"{k}.jsonl")) as f:
                    for line in f:
                        events.write(line)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for p, _ in procs:
            if p.is_alive():
                p.kill()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"mode": "sharded", "shards": [dict(r["shard"], packets=r["packets"]) for r in results], "chain": results[0]["chain"], "source": str(source),
           "store": None, "error": next((r["error"] for r in results if r["error"]), None)}
    for key in ("files", "records", "bytes", "reopens", "late_packets", "reclaimed_bytes", "retired", "events"):
        out[key] = sum(r.get(key, 0) or 0 for r in results)
    out["connections"] = _add({}, {})
    for r in results:
        _add(out["connections"], r["connections"])
        _add(out.setdefault("engine", {}), r["engine"])
        _add(out.setdefault("modules", {}), r["modules"])
    # from a file every shard decoded the whole source: count it once; from the kernel's fan-out
    # each had its own packets
    out["packets"] = results[0]["packets"] if split == "hash" else sum(r["packets"] for r in results)
    if split == "kernel":
        out["kernel"] = _add({}, {})
        for r in results:
            _add(out["kernel"], {k: v for k, v in r.get("kernel", {}).items() if k != "stopped_by"})
        out["kernel"]["stopped_by"] = sorted({r.get("kernel", {}).get("stopped_by") for r in results} - {None})
    tables = {}
    for r in results:
        for name, rows in r.get("tables", {}).items():
            tables.setdefault(name, []).extend(rows)
    out["tables"] = tables
    state = merge_state(spec, [r.get("state", {}) for r in results])
    if state:
        out["state"] = state
    return out
