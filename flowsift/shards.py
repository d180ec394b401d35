"""`flowsift chain ... --shards N`: N gateways on one machine, each with the flows of its shard
(a symmetric hash of the addresses, as RSS spreads flows over NIC queues), its own store and
its own module workers; at the end their outputs are put together.

A capture file is read by every shard, each keeping its flows. An AF_PACKET interface is read
once: the shards join one fan-out group and the kernel hands each its flows (flowsift.io.fanout).

Per-flow state stays with its flow. Re-sharding (`--reshard PACKETS:N`, capture files) changes
the number of shards while the run goes on: at that packet every shard hands the flows whose
bucket changes owner to their new shard, each whole -- flow-table entry, reassembly state with
held bytes, record file, and every module's per-flow state -- and takes the ones it gets.
Declared cross-flow and global state is merged by each declaration's merge rule (numbers add,
lists extend, ... see flowsift.modules.state); counters add; tables are joined; events are
written shard after shard.
"""
import json
import multiprocessing as mp
import os
import pickle
import signal
import time

from flowsift.errors import (FlowsiftError, Terminated, UsageError, late_stop, raise_stop, say, signalled,
                             start_forked, stops_held, stops_raised, take_stop_signals)


HANDOVER_TIMEOUT = 600.0        # seconds a shard waits for another's handover before giving up
PROGRESS_EVERY = 0.2            # seconds between a shard's progress reports to the parent
SHARD_STOP_GRACE = 60.0         # seconds the other shards have to stop, keeping their events, after one failed


def parse_reshard(texts):
    """["PACKETS:N", ...] -> [(packets, n)], in order of packets."""
    steps = []
    for text in texts or ():
        at, sep, n = str(text).partition(":")
        try:
            step = (int(at.replace("_", "")), int(n))
        except ValueError:
            step = None
        if not sep or step is None or step[0] < 1 or not 1 <= step[1] <= 64:
            raise UsageError(f"--reshard {text}: PACKETS:N, the packet count (from 1) at which the run "
                             f"goes on with N shards (1..64), e.g. --reshard 100000:4")
        if steps and step[0] <= steps[-1][0]:
            raise UsageError(f"--reshard {text}: steps go in order of packets ({steps[-1][0]} came before)")
        steps.append(step)
    return steps


class Resharder:
    """Moves flows between running shards of a capture file, at the packet counts of a plan.

    At a step each shard works out the new bucket table (flowsift.io.shard.reshard_table; every
    shard gets the same), hands each other shard the flows (and half-rebuilt datagrams) of the
    buckets it loses, in one file per pair under `directory`, then takes what the others hand
    it. A flow moves whole: its flow-table entry, its reassembly state (held bytes, the ring of
    delivered bytes), its record file (renamed into the new shard's store; record ids go on)
    and each module's per-flow state (the checkpoint entry of the connection: where its stream
    pointers stand, flow.state, held events). A connection that already ended moves only its
    flow-table entry (late packets and reuse of its 5-tuple are judged as in one gateway); its
    modules finish it where it was."""

    def __init__(self, gateway, runner, index, steps, directory, processes):
        self.g = gateway
        self.runner = runner
        self.index = index
        self.steps = steps
        self.directory = directory
        self.processes = processes
        self.step = 0
        self.moved = {"connections_out": 0, "connections_in": 0, "flows_out": 0, "flows_in": 0,
                      "datagrams_out": 0, "datagrams_in": 0, "seconds": 0.0}

    def counters(self):
        return dict(self.moved)

    def at(self, frames):
        from flowsift.io.shard import reshard_table
        while self.step < len(self.steps) and frames >= self.steps[self.step][0]:
            table = reshard_table(self.g.table, self.steps[self.step][1])
            t0 = time.monotonic()
            self._exchange(self.step, table)
            # the pause a step costs this shard (waiting for the others included)
            self.moved["seconds"] = round(self.moved["seconds"] + time.monotonic() - t0, 6)
            self.g.table = table
            self.step += 1

    def _path(self, step, frm, to):
        return os.path.join(self.directory, f"{step}.{frm}.{to}.pickle")

    def _exchange(self, step, table):
        me, g = self.index, self.g
        engine, store, defrag = g.reassembler.engine, g.store, g.reassembler.defrag
        going = _leaving(g.reassembler.flows.live(), table, me)
        frags = _leaving(defrag.pending_addresses(), table, me)
        moving = sorted(i for ids in going.values() for i in ids if engine.is_open(i))
        # the modules first: their workers let go of the files before the files move
        entries = self.runner.hand_over(moving) if moving else {}
        for to in range(self.processes):
            if to == me:
                continue
            flows = []
            for i in going.get(to, ()):
                rec = engine.export_flow(i)
                if rec.get("open"):
                    state, path = store.export_conn(i)
                    # into the handover directory (the same file system as the stores): the
                    # file is the new shard's now, whatever becomes of this shard's store
                    moved = os.path.join(self.directory, f"{step}.{me}.{to}.{i}.rec")
                    os.rename(path, moved)
                    rec["store"] = (state, moved)
                    rec["entries"] = {slot: e[i] for slot, e in entries.items() if i in e}
                    self.moved["connections_out"] += 1
                flows.append(rec)
                self.moved["flows_out"] += 1
            datagrams = [defrag.export_datagram(i) for i in frags.get(to, ())]
            self.moved["datagrams_out"] += len(datagrams)
            tmp = self._path(step, me, to) + ".tmp"
            with open(tmp, "wb") as f:
                pickle.dump({"flows": flows, "datagrams": datagrams}, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self._path(step, me, to))
        adopted, conns = {}, []
        for frm in range(self.processes):
            if frm == me:
                continue
            got = self._wait(self._path(step, frm, me), frm)
            for rec in got["flows"]:
                j = engine.import_flow(rec)
                self.moved["flows_in"] += 1
                if rec.get("store"):
                    store.adopt_conn(j, *rec["store"])
                    conns.append(j)
                    self.moved["connections_in"] += 1
                    for slot, text in rec["entries"].items():
                        adopted.setdefault(slot, {})[j] = text
            for rec in got["datagrams"]:
                defrag.import_datagram(rec)
            self.moved["datagrams_in"] += len(got["datagrams"])
        if conns:
            self.runner.take_over(adopted, conns)

    def _wait(self, path, frm):
        deadline = time.monotonic() + HANDOVER_TIMEOUT
        while not os.path.exists(path):
            if os.path.exists(os.path.join(self.directory, "abort")):
                raise FlowsiftError(f"shard {self.index}: stopped, another shard failed")
            if time.monotonic() > deadline:
                raise FlowsiftError(f"shard {self.index}: shard {frm} handed nothing over in "
                                    f"{HANDOVER_TIMEOUT:.0f} s; giving up")
            time.sleep(0.002)
        with open(path, "rb") as f:
            got = pickle.load(f)
        os.unlink(path)
        return got


def _leaving(rows, table, me):
    """{new shard: [ids]} of the (id, address a, address b) rows whose bucket `table` gives to
    another shard than `me`."""
    from flowsift.io.shard import address_buckets
    out = {}
    for (i, _, _), to in zip(rows, table[address_buckets(rows)].tolist()):
        if to != me:
            out.setdefault(to, []).append(i)
    return out


def _one(spec, source, index, count, split, events_path, kw, conn, handover=None, progress=False):
    # the parent's handlers forward signals to the shards, and a group's signal reaches them
    # too: a shard stops at the first, as a gateway alone does, and says so; the second would
    # break into its cleaning up. A live source takes the first itself (and summarises): the
    # second comes after its capture ended, as does one after its count or duration (late_stop)
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not late_stop(signum):
            # (marked as the stop: a module's own KeyboardInterrupt is not)
            raise signalled(KeyboardInterrupt() if signum == signal.SIGINT else Terminated())
    take_stop_signals(stop)
    # the module workers this shard forks must not hold its result pipe: if the shard dies,
    # the parent sees the pipe end (and no half message waits for ever to be finished)
    fd = conn.fileno()
    os.register_at_fork(after_in_child=lambda: os.dup2(os.open(os.devnull, os.O_RDWR), fd))
    last = [0.0]

    def report(pos, total):
        # how far this shard has read, now and then (the parent's bar follows the slowest)
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY or pos >= total:
            last[0] = now
            conn.send(("progress", pos, total))
    if split == "kernel":
        # one line for the run, said by the parent once every shard is in the fan-out group
        from flowsift.io import live
        live.on_listening = lambda cap, down: conn.send(("listening", cap.name, cap.scheme, down))
        if index:
            from flowsift.errors import follow
            follow()        # (what every shard sees alike while capturing, shard 0 says)
    outcome = None
    from flowsift.modules import workers
    workers.SHARD = index                 # (its connection numbers are this shard's own)
    try:
        try:
            from flowsift.chain import run_chain
            with open(events_path, "w") as ev:
                summary = run_chain(spec, source, events=ev, shard=(index, count, split), handover=handover,
                                    store=os.path.join(os.path.dirname(events_path), f"store-{index}"),
                                    on_progress=report if progress else None, advise=False, **kw)
            summary["store"] = None             # removed with the run's directory
            outcome = ("ok", summary)
        except FlowsiftError as e:
            outcome = ("error", str(e))
        except KeyboardInterrupt:
            outcome = ("stopped", "interrupt")
        except Terminated:
            outcome = ("stopped", "terminate")
        except Exception as e:                # reported by the parent, as one line
            outcome = ("error", f"shard {index}: {type(e).__name__}: {e}")
        # done: a stop from here on (the parent stops every shard when one fails, and all fail
        # alike on a capture nothing in which decodes) would break into the process's exit
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (KeyboardInterrupt, Terminated) as e:
        # the one stop (`stop` ignores those after it) came as the outcome was being settled
        outcome = outcome or ("stopped", "interrupt" if isinstance(e, KeyboardInterrupt) else "terminate")
    conn.send(outcome)


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
        return source, "hash"           # (a file, or its first N packets: FirstPackets)
    scheme, _, options = parse_spec(src)
    if scheme == "dpdk":
        raise UsageError("--shards with a DPDK port: one process owns a port; use afpacket:IFACE (the kernel "
                         "splits flows between the shards) or a capture file")
    if "fanout" in options:
        raise UsageError(f"{src}: --shards puts the shards in a fan-out group of its own; leave fanout= out")
    # one group per run: other flowsift runs on the interface keep their own copies
    return f"{src},fanout={os.getpid() & 0xFFFF}", "kernel"


# a shard's summary fields that the merged summary uses, not shows
_OWN = ("rebuilt_not_decoded", "rebuilt_other_protocols", "rebuilt_checksums", "steps_reached")


def _checksums(results, split):
    """The shards' `checksums` (--checksums verify) as one: from a file every shard checked
    every frame (counted once) and the datagrams it rebuilt (its own)."""
    from flowsift.io.reasons import checksum_summary
    if split != "hash":
        return {"mode": "verify", **{part: {k: sum(r["checksums"][part][k] for r in results)
                                            for k in results[0]["checksums"][part]}
                                     for part in ("bad", "unverified")},
                "udp_without_checksum": sum(r["checksums"]["udp_without_checksum"] for r in results)}
    first = results[0]["checksums"]
    own0 = checksum_summary(results[0]["shard"].get("rebuilt_checksums", {}))
    datagrams = checksum_summary(*(r["shard"].get("rebuilt_checksums", {}) for r in results))
    return {"mode": "verify", **{part: {k: first[part][k] - own0[part][k] + datagrams[part][k] for k in first[part]}
                                 for part in ("bad", "unverified")},
            "udp_without_checksum": first["udp_without_checksum"] - own0["udp_without_checksum"]
            + datagrams["udp_without_checksum"]}


def run_sharded(spec, source, count, events=None, reshard=None, on_progress=None, **kw):
    src, split = shard_source(source)
    steps = list(reshard or ())
    if steps and split != "hash":
        raise UsageError("--reshard moves flows between the shards of a capture file; on an interface the "
                         "kernel's fan-out places them")
    # a shard that joins later runs from the start, owning no flow until its step
    processes = max([count] + [n for _, n in steps])
    ctx = mp.get_context("fork")
    # the run's directory holds every shard's store (removed with it, even a shard's that was
    # stopped), their events and the handovers, through which record files are renamed
    from flowsift.gateway import new_store_dir
    procs = []
    old = {}

    def forward(signum, frame):
        # Ctrl-C or SIGTERM ends every shard cleanly (a live source then summarises)
        for p, _ in procs:
            if p.is_alive():
                os.kill(p.pid, signum)
    results = [None] * processes
    stopped = failed = None
    with stops_held():              # the shards' events are kept and the run's directory goes, however it ends
        tmp = new_store_dir(prefix="flowsift-shards-")
        try:
            handover = None
            if steps:
                os.mkdir(os.path.join(tmp, "handover"))
                handover = (steps, os.path.join(tmp, "handover"), processes)
            with stops_raised():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    old[sig] = signal.signal(sig, forward)
                for k in range(processes):
                    parent, child = ctx.Pipe(duplex=False)
                    p = ctx.Process(target=_one, args=(spec, src, k, count, split, os.path.join(tmp, f"{k}.jsonl"), kw,
                                                       child, handover, on_progress is not None))
                    start_forked(p)
                    child.close()
                    procs.append((p, parent))
            read = [0] * processes
            listening = {}              # shard -> its interface was down, of the shards whose capture listens
            waiting = {conn: k for k, (p, conn) in enumerate(procs)}
            give_up = None              # when the shards still running after one failed are killed
            from multiprocessing.connection import wait
            while waiting:
                ready = wait(list(waiting), timeout=0.5)
                # a shard killed outright says nothing, and its pipe (and its end's sentinel) stay
                # open in its module workers, which outlive it a while: its exit code tells
                ready += [conn for conn, k in waiting.items() if conn not in ready and procs[k][0].exitcode is not None
                          and not conn.poll()]
                if give_up is not None and time.monotonic() > give_up:
                    for conn, k in waiting.items():
                        procs[k][0].kill()
                for conn in ready:
                    k = waiting[conn]
                    p = procs[k][0]
                    try:
                        msg = conn.recv() if conn.poll() else None
                    except EOFError:
                        msg = None
                    if msg is None:
                        p.join(timeout=5)
                        msg = ("error", f"shard {k}: its process died ({p.exitcode})")
                    if msg[0] == "progress":
                        read[k] = msg[1]
                        on_progress(min(read), msg[2])
                        continue
                    if msg[0] == "listening":
                        _, name, scheme, listening[k] = msg
                        if len(listening) == processes:
                            # every shard is in the group: from now on no frame misses the run
                            say(f"capturing on {name} ({scheme}), {processes} shards sharing it; Ctrl-C ends")
                            if any(listening.values()):
                                say(f"{scheme}:{name} is down; waiting for it to come up")
                        continue
                    del waiting[conn]
                    status, value = msg
                    p.join()
                    if status == "stopped":
                        # a file's run stopped by Ctrl-C or SIGTERM: the others stop as well (they
                        # were sent the same signal); the run ends as one gateway's would
                        stopped = stopped or value
                        continue
                    if status != "ok":
                        if failed is None:
                            failed = value
                            if handover is not None:
                                # shards waiting for this one's handover stop at once
                                open(os.path.join(handover[1], "abort"), "w").close()
                            # the others stop as on SIGTERM, keeping the events they wrote
                            for q, _ in procs:
                                if q.is_alive():
                                    os.kill(q.pid, signal.SIGTERM)
                            give_up = time.monotonic() + SHARD_STOP_GRACE
                        continue
                    results[k] = value
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for p, _ in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
            import shutil
            try:
                if events is not None:
                    # what each shard wrote, shard after shard: all of it after a whole run; the
                    # events of the connections it finished when the run stopped or a shard failed
                    # (a shard killed outright may have left part of a line). Each shard numbers its
                    # connections from 0: an event says whose its conn is
                    from flowsift.modules.runner import copy_events
                    for k in range(len(procs)):
                        copy_events(os.path.join(tmp, f"{k}.jsonl"), events, f', "shard": {k}')
            finally:
                shutil.rmtree(tmp, ignore_errors=True)      # (events that cannot be written too)
        if failed is not None:
            raise FlowsiftError(failed)
        if stopped is not None:
            raise_stop(signal.SIGINT if stopped == "interrupt" else signal.SIGTERM)
    asked = bool(steps)
    if asked:
        # a step past the end of the capture never came: it is not listed, and a shard only it
        # would have used (it read the capture, owning nothing) is left out
        steps = steps[:max(r["shard"]["steps_reached"] for r in results)]
        results = results[:max([count] + [n for _, n in steps])]
    out = {"mode": "sharded", "shards": [dict({k: v for k, v in r["shard"].items() if k not in _OWN},
                                              packets=r["packets"], mode=r["mode"]) for r in results],
           "chain": results[0]["chain"], "source": str(source),
           **({"count": results[0]["count"]} if "count" in results[0] else {}),
           "store": None, "error": next((r["error"] for r in results if r["error"]), None)}
    if asked:
        out["reshard"] = [{"packets": at, "shards": n} for at, n in steps]
    for key in ("files", "records", "bytes", "reopens", "writes", "late_packets", "reclaimed_bytes", "retired",
                "unacked_kept", "unacked_retired", "events"):
        out[key] = sum(r.get(key, 0) or 0 for r in results)
    out["connections"] = _add({}, {})
    for r in results:
        _add(out["connections"], r["connections"])
        _add(out.setdefault("engine", {}), r["engine"])
        _add(out.setdefault("modules", {}), r["modules"])
    # from a file every shard decoded the whole source: count it once; from the kernel's fan-out
    # each had its own packets
    for key in ("packets", "filtered", "not_decoded", "other_protocols"):
        out[key] = sum(r.get(key, 0) for r in results)
        if split == "hash":
            # every shard read the whole file; each rebuilt its own flows' datagrams only
            own = [r["shard"].get(f"rebuilt_{key}", 0) for r in results]
            out[key] = results[0].get(key, 0) - own[0] + sum(own)
    if "checksums" in results[0]:
        out["checksums"] = _checksums(results, split)
    # (frames, not rebuilt datagrams: from a file, every shard read them all)
    lts = {}
    for r in results[:1] if split == "hash" else results:
        for x in r.get("unsupported_link_types", []):
            lts.setdefault(x["linktype"], dict(x, packets=0))["packets"] += x["packets"]
    out["unsupported_link_types"] = [lts[lt] for lt in sorted(lts)]
    if "bytes_stored" in results[0]:
        out["bytes_stored"] = all(r["bytes_stored"] for r in results)
    if results[0].get("vlan_key"):
        out["vlan_key"] = True
    for key in ("edits", "checkpoints"):
        if any(key in r for r in results):        # (a read-only module's refused edits: in some shards)
            out[key] = {}
            for r in results:
                _add(out[key], r.get(key, {}))
    if split == "kernel":
        out["kernel"] = _add({}, {})
        # each shard had the same limits and ran at the same time: those are not added up
        same = ("stopped_by", "count", "duration", "seconds")
        for r in results:
            _add(out["kernel"], {k: v for k, v in r.get("kernel", {}).items() if k not in same})
        for k in ("count", "duration"):
            out["kernel"][k] = results[0].get("kernel", {}).get(k)
        # the source as given, not each shard's (with the fan-out group the run made)
        out["kernel"]["source"] = str(source)
        out["kernel"]["seconds"] = max(r.get("kernel", {}).get("seconds", 0) for r in results)
        # one reason, as for one gateway: the run ended when its last shard stopped (a shard may
        # reach its own --count before the others stop), unless a shard failed
        kernels = [r.get("kernel", {}) for r in results]
        out["kernel"]["stopped_by"] = "error" if out["error"] else \
            max(kernels, key=lambda k: k.get("seconds", 0)).get("stopped_by")
    out["tables"] = join_tables([r.get("tables", {}) for r in results])
    state = merge_state(spec, [r.get("state", {}) for r in results])
    if state:
        out["state"] = state
    return out


# the column a joined table's rows with a `conn` get their shard in, unless the module's rows
# have a column of that name: theirs is kept, and the shard goes in SHARD_COLUMN_TAKEN
SHARD_COLUMN = "shard"
SHARD_COLUMN_TAKEN = "flowsift_shard"


def join_tables(tables):
    """The shards' end-of-run tables ({module: rows} each, in shard order) joined: a module's
    rows one shard after the other, a row with a `conn` column marked with its shard."""
    out = {}
    for k, shard_tables in enumerate(tables):
        for name, rows in shard_tables.items():
            out.setdefault(name, []).extend((k, row) for row in rows)
    for name, rows in out.items():
        column = SHARD_COLUMN_TAKEN if any(SHARD_COLUMN in row for _, row in rows) else SHARD_COLUMN
        out[name] = [dict(row, **{column: k}) if "conn" in row else row for k, row in rows]
    return out
