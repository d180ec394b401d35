"""Read-only modules in worker processes: same output as inline, and a worker killed with
SIGKILL at random points is restarted without losing or repeating a record."""
import collections
import io
import json
import textwrap

import pytest

from conftest import ROOT, run_cli
from flowsift.chain import run_chain

KILLER = '''
import os, signal, random
from flowsift.modules import Module

class PerRecord(Module):
    """One event per record; kills its own process, once per marker, at a random record.

    Synopsis: per_record
    """
    name = "per_record"
    options = {}

    def on_packet(self, flow, record):
        self.emit("record", index=record.index, id=record.record_id)
        self.count("records")
        self.seen = getattr(self, "seen", 0) + 1
        marker = os.environ.get("FLOWSIFT_KILL_MARKER")
        if marker and not os.path.exists(marker) and self.seen == int(os.environ["FLOWSIFT_KILL_AT"]):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_close(self, flow, reason):
        self.emit("closed", reason=reason)
'''


def run(spec, capture, inline, **kw):
    out = io.StringIO()
    summary = run_chain(spec, str(capture), events=out, inline=inline, strict=True, **kw)
    return [json.loads(l) for l in out.getvalue().splitlines()], summary


def every_record_has(store, bits):
    """The gateway recorded these module bits (and no other) in every record of the store."""
    from flowsift.streams import RecordFile, store_files
    for path in store_files(store):
        with RecordFile(path) as rf:
            assert all(r.modules == bits for r in rf.records())


def key(events):
    return collections.Counter((e["module"], e["kind"], e["conn"], e.get("index"), e.get("id") is not None)
                               for e in events)


def test_parallel_gives_the_inline_output(corpus, monkeypatch):
    """Workers run behind the gateway (many small batches in flight), yet see what inline
    sees: even an event's time is the flow's last packet as published with its batch, not
    one the gateway wrote since."""
    monkeypatch.setenv("FLOWSIFT_BATCH", "8")
    name = corpus / "http__tcpflow__jpegs.cap"
    a, sa = run("http,tls,counter", name, inline=True)
    b, sb = run("http,tls,counter", name, inline=False)
    assert sa["mode"] == "inline" and sb["mode"] == "parallel"
    strip = lambda evs: collections.Counter(json.dumps(e, sort_keys=True) for e in evs)
    assert strip(a) == strip(b) and len(a) > 30
    for m in ("http", "counter"):
        assert {k: v for k, v in sa["modules"][m].items() if k != "errors"} == \
               {k: v for k, v in sb["modules"][m].items() if k not in ("errors", "restarts")}


@pytest.mark.parametrize("seed", range(3))     # the worker kills itself at a different record each time
def test_killed_worker_is_restarted_nothing_lost_nothing_twice(tmp_path, corpus, monkeypatch, seed):
    module = tmp_path / "per_record.py"
    module.write_text(textwrap.dedent(KILLER))
    name = corpus / "http__zeek__bro.org.pcap"
    reference, ref_summary = run(f"{module},counter", name, inline=True)
    monkeypatch.setenv("FLOWSIFT_KILL_MARKER", str(tmp_path / f"killed-{seed}"))
    monkeypatch.setenv("FLOWSIFT_KILL_AT", str(40 + 230 * seed))      # different points of the run
    got, summary = run(f"{module},counter", name, inline=False, store=tmp_path / "store", keep=True)
    assert (tmp_path / f"killed-{seed}").exists(), "the worker was not killed: nothing was tested"
    assert summary["modules"]["per_record"]["restarts"] >= 1
    per_record = [e for e in got if e["module"] == "per_record" and e["kind"] == "record"]
    # every record exactly once, as in an undisturbed run
    assert key(got) == key(reference)
    assert len(per_record) == len({(e["conn"], e["index"]) for e in per_record}) == summary["records"]
    assert summary["modules"]["per_record"]["records"] == ref_summary["modules"]["per_record"]["records"]
    # and the gateway recorded both modules' bits in every record
    every_record_has(tmp_path / "store", 0b11)


PASSIVE_KILLER = '''
import os, signal
from flowsift.modules import Module
from flowsift.modules.state import Global

class AtEnds(Module):
    """Counts each connection's records at its end; kills its own process once, at the Nth end.

    Synopsis: at_ends
    """
    name = "at_ends"
    order = Global(list, append_only=True)     # opens and ends as the module saw them

    def on_open(self, flow):
        flow.state["opened"] = 1
        self.order.append(["open", flow.conn])

    def on_close(self, flow, reason):
        self.order.append(["end", flow.conn])
        self.emit("end", records=len(flow.records()), opened=flow.state.get("opened"))
        self.count("ends")
        self.seen = getattr(self, "seen", 0) + 1
        marker = os.environ.get("FLOWSIFT_KILL_MARKER")
        if marker and not os.path.exists(marker) and self.seen == int(os.environ["FLOWSIFT_KILL_AT"]):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    def summary(self):
        return [{"seen": seen, "conn": conn} for seen, conn in self.order]
'''


def test_killed_worker_of_a_module_that_reads_only_ends_is_restarted_nothing_lost_nothing_twice(
        tmp_path, monkeypatch):
    """The same for a worker that is told only of new and ended connections (no stream hooks)."""
    from test_store_faults import many_connections
    module = tmp_path / "at_ends.py"
    module.write_text(PASSIVE_KILLER)
    # connections open across batches and checkpoints: a restart takes their on_open state from
    # a checkpoint, and is told again of those that opened after it
    name = many_connections(tmp_path / "many.pcap", 400, payload=b"q" * 20, block=50)
    monkeypatch.setenv("FLOWSIFT_BATCH", "64")
    monkeypatch.setenv("FLOWSIFT_CHECKPOINT_EVERY", "3")
    reference, ref_summary = run(f"{module}", name, inline=True)
    # opened when first seen, batches before their end (not only when they end)
    order = [[r["seen"], r["conn"]] for r in ref_summary["tables"]["at_ends"]]
    assert sum(1 for a, b in zip(order, order[1:]) if a[0] == "open" and b == ["end", a[1]]) < 40
    monkeypatch.setenv("FLOWSIFT_KILL_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("FLOWSIFT_KILL_AT", "170")
    got, summary = run(f"{module}", name, inline=False, store=tmp_path / "store", keep=True)
    assert (tmp_path / "killed").exists(), "the worker was not killed: nothing was tested"
    assert summary["modules"]["at_ends"]["restarts"] == 1
    ends = sorted((e["conn"], e["records"], e["opened"]) for e in got)
    assert ends == sorted((e["conn"], e["records"], e["opened"]) for e in reference)
    assert len(ends) == len({c for c, *_ in ends}) == summary["modules"]["at_ends"]["ends"] == 400
    assert all(opened == 1 for *_, opened in ends)
    assert summary["tables"]["at_ends"] == ref_summary["tables"]["at_ends"]
    every_record_has(tmp_path / "store", 0b1)


def test_mixed_chain_runs_in_stages_and_later_stages_read_merged_bytes(tmp_path, corpus):
    """counter (read-only: a worker) | redact (writes: its own stage, in the gateway) | http
    (read-only: a worker that sees each connection after redact is done with it)."""
    spec = "counter,redact(pattern=(?<=User-Agent: )[^\\r]*),http"
    name = corpus / "http__pcpp__three_http_streams.pcap"
    staged, s1 = run(spec, name, inline=False)
    inline, s2 = run(spec, name, inline=True)
    assert s1["mode"] == "staged" and s2["mode"] == "inline"
    strip = lambda evs: collections.Counter(json.dumps({k: v for k, v in e.items() if k != "ts"}, sort_keys=True) for e in evs)
    assert strip(staged) == strip(inline)
    agents = [e["user_agent"] for e in staged if e["kind"] == "request"]
    assert len(agents) == 3 and all(a and set(a) == {"X"} for a in agents)   # http saw the masked values
    assert s1["edits"]["accepted"]["redact"] == 3
    from flowsift.modules.stages import split
    from flowsift.modules import parse_chain
    assert [(ro, [c.name for c, _ in mods]) for ro, mods, _ in split(parse_chain(spec))] == \
        [(True, ["counter"]), (False, ["redact"]), (True, ["http"])]


ENDS = '''
from flowsift.modules import Module

class Ends(Module):
    """Notes when each connection opened and what it ended with.

    Synopsis: ends
    """
    name = "ends"

    def on_open(self, flow):
        flow.state["opened"] = flow.last_ts
        self.count("opened")

    def on_close(self, flow, reason):
        self.emit("end", opened=flow.state["opened"], records=len(flow.records()), gaps=len(flow.gaps()),
                  reason=reason)


class EndsFollowing(Ends):
    """The same, but reading every packet as it comes (so the runner follows every batch).

    Synopsis: ends_following
    """
    name = "ends_following"

    def on_packet(self, flow, record):
        pass
'''


@pytest.mark.parametrize("inline", [True, False])
def test_a_module_without_stream_hooks_sees_each_connection_open_and_end_as_one_that_follows_it(
        tmp_path, corpus, inline):
    """A module with only on_open and on_close is not read at every batch: it must still be
    opened once per connection and see, at the end, the time, records and gaps of the whole
    connection, as a module that follows every packet does."""
    p = tmp_path / "ends.py"
    p.write_text(ENDS)
    capture = corpus / "gap__zeek__gap-recovery.pcap"
    got = {}
    for cls in ("Ends", "EndsFollowing"):
        events, summary = run(f"{p}:{cls}", capture, inline)
        got[cls] = sorted((e["conn"], e["ts"], e["opened"], e["records"], e["gaps"], e["reason"]) for e in events)
        assert summary["modules"][f"ends{'_following' if cls != 'Ends' else ''}"]["opened"] == len(events)
    assert got["Ends"] == got["EndsFollowing"]
    assert len(got["Ends"]) > 1 and any(g for *_, g, _ in got["Ends"])
    assert any(ts * 1e9 > opened + 1e6 for _, ts, opened, *_ in got["Ends"])     # ts: the end's (seconds)


SLOW = '''
import time
from flowsift.modules import Module

class Slow(Module):
    """Takes its time with every connection.

    Synopsis: slow
    """
    name = "slow"

    def on_open(self, flow):
        time.sleep(0.004)
        self.count("opened")

    def on_close(self, flow, reason):
        self.emit("seen")
'''


def test_max_backlog_drops_a_slow_modules_connections_and_counts_them(tmp_path, monkeypatch):
    from test_store_faults import many_connections
    monkeypatch.setenv("FLOWSIFT_BATCH", "64")      # many batches: the slow module falls behind
    capture = many_connections(tmp_path / "many.pcap", 1500, payload=b"q" * 20, block=100)
    module = tmp_path / "slow.py"
    module.write_text(textwrap.dedent(SLOW))
    events, summary = run(f"{module},counter", capture, inline=False, max_backlog=3, store=tmp_path / "s", keep=True)
    slow, counter = summary["modules"]["slow"], summary["modules"]["counter"]
    assert slow["dropped_connections"] > 0 and slow["dropped_batches"] > 0
    # nothing lost silently: every connection was seen by each module or counted as dropped for it
    assert len([e for e in events if e["module"] == "slow"]) + slow["dropped_connections"] == 1500
    assert counter["flows"] + counter.get("dropped_connections", 0) == 1500
    # (whether the fast counter drops too, and how many, is the machine's load: on two busy
    # cores it dropped more than the slow module once; each module's drops are its own)
    assert slow["dropped_connections"] >= 100
    from flowsift.streams import RecordFile, store_files
    for path in store_files(tmp_path / "s")[::97]:
        with RecordFile(path) as rf:
            assert all(r.modules == 0b11 for r in rf.records())      # dropped or done: the store moves on
    # files given back as the run goes (no --keep): a dropped connection's file outlives every
    # batch still on its way to the module that gave it up (before, the worker met a missing file
    # and died at each restart)
    events, summary = run(f"{module},counter", capture, inline=False, max_backlog=3)
    slow = summary["modules"]["slow"]
    assert slow["dropped_connections"] > 0 and slow["restarts"] == 0 and summary["modules"]["counter"]["restarts"] == 0
    assert len([e for e in events if e["module"] == "slow"]) + slow["dropped_connections"] == 1500
    # without --max-backlog the gateway waits: nothing is dropped
    events, summary = run(f"{module},counter", capture, inline=False)
    assert "dropped_connections" not in summary["modules"]["slow"] and len(events) == 2 * 1500


def test_max_backlog_does_not_count_a_worker_still_starting(tmp_path):
    """The batches sent while a worker process starts are not a backlog: a fast module
    loses nothing, and N batches behind is allowed (more than N is not)."""
    demo = ROOT / "examples" / "demo.pcap"
    events, summary = run("counter", demo, inline=False, max_backlog=1)
    assert "dropped_connections" not in summary["modules"]["counter"] and len(events) == 9


FIRST_SEEN = '''
from flowsift.modules import Module

class FirstSeen(Module):
    """When it was first shown bytes of a connection, and when the connection ended.

    Synopsis: first_seen
    """
    name = "first_seen"

    def on_data(self, flow, stream):
        flow.state.setdefault("first", flow.last_ts)
        self.count("bytes", len(stream.read()))

    def on_close(self, flow, reason):
        self.emit("seen", first=flow.state.get("first"), last=flow.last_ts)
'''


def test_a_stage_after_a_writing_stage_reads_each_batch_not_each_end(tmp_path, corpus, monkeypatch):
    """redact (a writing stage, in the gateway) | http, first_seen (workers): after every batch
    the workers may read as far as redact has read (what it read past is final; it may not
    replace bytes behind its position), so long connections reach them while they last -- with
    the masked bytes and the events of --inline."""
    module = tmp_path / "first_seen.py"
    module.write_text(FIRST_SEEN)
    spec = f"redact(pattern=Mozilla/[0-9.]+),http,{module}:FirstSeen"
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")
    name = corpus / "http__csanders__http_espn.pcapng"
    staged, s1 = run(spec, name, inline=False)
    inline, s2 = run(spec, name, inline=True)
    assert s1["mode"] == "staged"
    # the same http events (when first_seen was first shown bytes depends on the stage by design)
    strip = lambda evs: collections.Counter(json.dumps({k: v for k, v in e.items() if k != "ts"}, sort_keys=True)
                                            for e in evs if e["module"] == "http")
    assert strip(staged) == strip(inline) and len(strip(staged)) > 100
    agents = [e["user_agent"] for e in staged if e["kind"] == "request" and e["user_agent"]]
    assert agents and all(not a.startswith("Mozilla/5") for a in agents) and s1["edits"]["accepted"]["redact"] > 10
    seen = [e for e in staged if e["kind"] == "seen" and e["first"] is not None]
    # connections shown to the workers before their end (they used to get them only then)
    assert sum(e["first"] < e["last"] for e in seen) > 5
    assert s1["modules"]["first_seen"]["bytes"] == s2["modules"]["first_seen"]["bytes"]


def test_a_writing_module_may_not_replace_bytes_behind_its_position(tmp_path):
    from flowsift.testing import run_module, segments_capture
    cap = segments_capture(tmp_path, client=[b"secret-one", b"secret-two"])
    mod = tmp_path / "late.py"
    mod.write_text('''
from flowsift.modules import Module

class Late(Module):
    """Masks what it already read.

    Synopsis: late
    """
    name = "late"
    writes = {"payload"}

    def on_data(self, flow, stream):
        start = stream.tell()
        data = bytes(stream.read())
        r = stream.replace(start, b"x" * len(data))
        self.emit("replace", accepted=r.accepted, reason=r.reason)
''')
    res = run_module(f"{mod}:Late", cap)
    reasons = [(e["accepted"], e["reason"]) for e in res.of_kind("replace")]
    assert reasons and all(not ok and "behind the module's position" in why for ok, why in reasons)


def test_many_short_connections_neither_end_blocks_the_other(tmp_path):
    """20,000 short connections: the gateway sends batches naming hundreds of connections
    while the worker sends checkpoints listing as many, each larger than a pipe holds. A
    worker that stopped reading while it sent used to leave both ends blocked for ever."""
    import subprocess
    import sys
    from test_store_faults import many_connections
    cap = many_connections(tmp_path / "many.pcap", 20_000)
    res = subprocess.run([sys.executable, "-m", "flowsift", "chain", "counter", str(cap), "--events", "/dev/null",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["mode"] == "parallel" and summary["modules"]["counter"]["flows"] == 20_000


@pytest.mark.parametrize("signame,code,said", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_sigterm_ends_a_chain_like_ctrl_c_and_its_store_goes(tmp_path, signame, code, said):
    """SIGTERM (a service manager, `timeout`) and Ctrl-C end a chain cleanly: their exit code,
    one line, the default store under /dev/shm removed, no worker left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from test_store_faults import many_connections
    cap = many_connections(tmp_path / "many.pcap", 30_000)
    before = {n for n in os.listdir("/dev/shm") if n.startswith("flowsift-store-")}
    proc = subprocess.Popen([sys.executable, "-m", "flowsift", "chain", "counter", str(cap), "--events", "/dev/null"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FLOWSIFT_BATCH": "64"})
    store = None
    for _ in range(200):                      # the run has made its store and is under way
        made = {n for n in os.listdir("/dev/shm") if n.startswith("flowsift-store-")} - before
        if made and len(os.listdir(os.path.join("/dev/shm", next(iter(made))))) > 100:
            store = os.path.join("/dev/shm", next(iter(made)))
            break
        time.sleep(0.05)
    assert store is not None and proc.poll() is None
    proc.send_signal(getattr(signal, signame))
    ended_as_said(proc, code, said, store, cap)


def ended_as_said(proc, code, said, made, cap):
    """The chain `proc` over `cap` ended with exit `code` and the one line `said`, what it made
    under /dev/shm is gone, and none of its processes is left."""
    import os
    import subprocess
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.strip() == f"flowsift: {said}"
    assert not os.path.exists(made)
    left = subprocess.run(["pgrep", "-f", f"flowsift chain counter {cap}"], capture_output=True, text=True).stdout
    assert left.strip() == ""


@pytest.mark.parametrize("signame,group,code,said", [("SIGTERM", False, 143, "terminated"),
                                                     ("SIGTERM", True, 143, "terminated"),
                                                     ("SIGINT", True, 130, "interrupted")])
def test_a_sharded_chain_stops_as_one_gateway_does(tmp_path, signame, group, code, said):
    """Each shard of a capture file took SIGTERM's default (it died, and its workers printed
    tracebacks) or let Ctrl-C's KeyboardInterrupt out: "shard 1: its process died", exit 2. A
    signal to the process group (systemctl stop, Ctrl-C in a terminal) reaches every shard
    twice: the second one broke into its cleaning up."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from test_store_faults import many_connections
    cap = many_connections(tmp_path / "many.pcap", 30_000)
    before = {n for n in os.listdir("/dev/shm") if n.startswith("flowsift-shards-")}
    proc = subprocess.Popen([sys.executable, "-m", "flowsift", "chain", "counter", str(cap), "--shards", "2",
                             "--events", "/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FLOWSIFT_BATCH": "16"}, start_new_session=True)
    run = None
    for _ in range(200):                      # both shards have made their stores and are under way
        made = {n for n in os.listdir("/dev/shm") if n.startswith("flowsift-shards-")} - before
        if made:
            run = os.path.join("/dev/shm", next(iter(made)))
            stores = [os.path.join(run, d) for d in os.listdir(run) if d.startswith("store-")]
            if len(stores) == 2 and all(os.listdir(d) for d in stores):
                break
        time.sleep(0.05)
    assert run is not None and proc.poll() is None
    if group:
        os.killpg(proc.pid, getattr(signal, signame))
    else:
        proc.send_signal(getattr(signal, signame))
    ended_as_said(proc, code, said, run, cap)


CLOSES = '''
from flowsift.modules import Module

class Closes(Module):
    """An event per connection end.

    Synopsis: closes
    """
    name = "closes"
    reads = set()

    def on_close(self, flow, reason):
        self.emit("closed", reason=reason)
'''


def spread_connections(path, n, block=1000):
    """n short TCP connections, each from a client address of its own (the shards split flows by
    address), interleaved by blocks of `block` so that many are open at once."""
    from pcapgen import ether, ipv4, pcap, tcp
    server, frames = (bytes([10, 2, 0, 1]), 80), []
    for b0 in range(0, n, block):
        ends = [(bytes([10, 3, (i >> 8) & 255, i & 255]), 1024 + i % 60000) for i in range(b0, min(n, b0 + block))]
        t = 1_700_000_000 + b0 // block
        for step, (fwd, seq, ack, flags, payload) in enumerate([(1, 100, 0, 0x02, b""), (0, 500, 101, 0x12, b""),
                                                                 (1, 101, 501, 0x18, b"x" * 200),
                                                                 (1, 301, 501, 0x11, b""), (0, 501, 302, 0x11, b"")]):
            for k, c in enumerate(ends):
                src, dst = (c, server) if fwd else (server, c)
                frames.append((t, step * 2000 + k, ether(ipv4(src[0], dst[0], 6, tcp(src[1], dst[1], seq=seq, ack=ack,
                                                                                      flags=flags, payload=payload)))))
    path.write_bytes(pcap(frames))
    return path


def shards_directory(pid):
    """The directory of the sharded run of process `pid`: where its shards write their events
    (other runs may be going on)."""
    import os
    import subprocess
    for shard in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        try:
            fds = os.listdir(f"/proc/{shard}/fd")
        except OSError:
            continue
        for n in fds:
            try:
                where = os.path.dirname(os.readlink(f"/proc/{shard}/fd/{n}"))
            except OSError:
                continue
            if os.path.basename(where).startswith("flowsift-shards-"):
                return where
    return None


def sharded_run_under_way(tmp_path, *args):
    """A `chain closes CAPTURE --shards 2 ARGS --events FILE` in a session of its own, once both
    shards have written events: (process, its run directory, capture, events file, {shard: whole
    event lines it had written})."""
    import os
    import subprocess
    import sys
    import time
    cap = spread_connections(tmp_path / "many.pcap", 30_000)
    mod = tmp_path / "closes.py"
    mod.write_text(CLOSES)
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "flowsift", "chain", str(mod), str(cap), "--shards", "2", *args,
                             "--events", str(events)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FLOWSIFT_BATCH": "16"}, start_new_session=True)

    def written():
        run = shards_directory(proc.pid)
        if run is None:
            return None, {}
        seen = {}
        for k in range(2):
            try:
                with open(os.path.join(run, f"{k}.jsonl")) as f:
                    seen[k] = sum(line.endswith("\n") for line in f)
            except OSError:
                pass
        return run, seen
    deadline = time.monotonic() + 60
    run, seen = written()
    while not (len(seen) == 2 and min(seen.values()) > 0) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        run, seen = written()
    assert proc.poll() is None and len(seen) == 2 and min(seen.values()) > 0, seen
    return proc, run, cap, events, seen


def events_by_shard(path):
    return collections.Counter(json.loads(line)["shard"] for line in open(path))


@pytest.mark.parametrize("signame,code,said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_sharded_chain_stopped_keeps_the_events_its_shards_wrote(tmp_path, signame, code, said):
    """Stopped by Ctrl-C or SIGTERM to its group, a sharded run wrote no event at all: the
    shards' files went with the run's directory (one gateway stopped keeps the events of the
    connections its modules finished)."""
    import os
    import signal
    import subprocess
    proc, run, cap, events, seen = sharded_run_under_way(tmp_path, "--reshard", "200000:3")
    os.killpg(proc.pid, getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.strip() == f"flowsift: {said}", err
    assert not os.path.exists(run)
    assert subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).stdout == b""
    got = events_by_shard(events)
    assert all(got[k] >= n for k, n in seen.items()), (got, seen)


def test_a_shard_that_dies_ends_the_run_with_the_events_of_every_shard(tmp_path):
    """A shard killed (kill -9) ended the run, one line and exit 2, as it should, but the
    events of the others went too: they were killed, and nothing was written."""
    import os
    import re
    import signal
    import subprocess
    proc, run, cap, events, seen = sharded_run_under_way(tmp_path)
    shards = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(shards) == 2, shards
    os.kill(int(shards[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and re.fullmatch(r"flowsift: shard [01]: its process died \(-9\)", err.strip()), err
    got = events_by_shard(events)          # (whole lines: the dead one's last may have been cut)
    assert all(got[k] >= n for k, n in seen.items()), (got, seen)
    assert not os.path.exists(run)


SKIPPER = '''
import os, signal
from flowsift.modules import Module

class Skipper(Module):
    """Reads the first bytes of each connection, then skips it; kills its own process once,
    at the Nth record it is shown.

    Synopsis: skipper
    """
    name = "skipper"

    def on_packet(self, flow, record):
        self.emit("record", index=record.index)
        self.seen = getattr(self, "seen", 0) + 1
        marker = os.environ.get("FLOWSIFT_KILL_MARKER")
        if marker and not os.path.exists(marker) and self.seen == int(os.environ["FLOWSIFT_KILL_AT"]):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_data(self, flow, stream):
        self.emit("data", direction=stream.direction, n=len(stream.read(100)))
        flow.skip()

    def on_close(self, flow, reason):
        self.emit("closed", reason=reason)
'''


@pytest.mark.parametrize("seed", range(2))
def test_a_skipped_connection_costs_the_module_nothing_more_even_across_a_restart(tmp_path, corpus, monkeypatch,
                                                                                  seed):
    """flow.skip(): no on_packet or on_data for the connection after it (later records are not
    shown, the other direction and later bytes not read), on_close still comes, every record still gets
    the module's bit; a worker killed and restarted from a checkpoint keeps skipping what it
    skipped, so its output is the undisturbed run's."""
    module = tmp_path / "skipper.py"
    module.write_text(SKIPPER)
    name = corpus / "http__zeek__bro.org.pcap"
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")
    monkeypatch.setenv("FLOWSIFT_CHECKPOINT_EVERY", "2")
    reference, ref_summary = run(f"{module},counter", name, inline=True)
    mine = [e for e in reference if e["module"] == "skipper"]
    conns = {e["conn"] for e in reference if e["module"] == "counter"}
    assert {e["conn"] for e in mine if e["kind"] == "closed"} == conns and len(conns) > 3
    data = collections.Counter(e["conn"] for e in mine if e["kind"] == "data")
    assert set(data) <= conns and len(data) > 3 and set(data.values()) == {1}    # one look each, one direction
    assert sum(e["n"] for e in mine if e["kind"] == "data") <= 100 * len(conns)
    shown = sum(1 for e in mine if e["kind"] == "record")
    assert 0 < shown < ref_summary["records"] / 2                      # most records were never shown
    monkeypatch.setenv("FLOWSIFT_KILL_MARKER", str(tmp_path / f"killed-{seed}"))
    monkeypatch.setenv("FLOWSIFT_KILL_AT", str(5 + 20 * seed))
    got, summary = run(f"{module},counter", name, inline=False, store=tmp_path / "store", keep=True)
    assert (tmp_path / f"killed-{seed}").exists(), "the worker was not killed: nothing was tested"
    assert summary["modules"]["skipper"]["restarts"] == 1
    strip = lambda evs: collections.Counter(json.dumps({k: v for k, v in e.items() if k != "ts"}, sort_keys=True)
                                            for e in evs)
    assert strip(got) == strip(reference)
    every_record_has(tmp_path / "store", 0b11)


STEPS = '''
from flowsift.modules import Module

class Steps(Module):
    """Where each read of a connection's bytes ended.

    Synopsis: steps
    """
    name = "steps"

    def on_data(self, flow, stream):
        self.emit("step", direction=stream.direction, to=stream.tell() + len(stream.read()))
'''


def test_a_writing_module_that_skipped_a_connection_holds_no_later_stage_back(tmp_path, corpus, monkeypatch):
    """A writing stage hands the next one only what it has read (what it may still replace is
    not final); a connection it skipped is final at once, so the worker after it reads its
    bytes batch by batch exactly as it does with no writer before it, not all at the end."""
    writer = tmp_path / "glance.py"
    writer.write_text('''
from flowsift.modules import Module

class Glance(Module):
    """Reads a connection's first bytes, then skips it.

    Synopsis: glance
    """
    name = "glance"
    writes = {"payload"}

    def on_data(self, flow, stream):
        stream.read(10)
        flow.skip()
''')
    reader = tmp_path / "steps.py"
    reader.write_text(STEPS)
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")
    name = corpus / "http__csanders__http_espn.pcapng"
    got, summary = run(f"{writer},{reader}", name, inline=False)
    alone, _ = run(f"{reader}", name, inline=False)
    assert summary["mode"] == "staged"
    steps = lambda evs: [(e["conn"], e["direction"], e["to"]) for e in evs if e["kind"] == "step"]
    assert steps(got) == steps(alone)
    per_conn = collections.Counter((c, d) for c, d, _ in steps(alone))
    assert sum(n > 2 for n in per_conn.values()) > 5           # read in several steps while they last


def test_a_worker_that_dies_at_every_start_says_so_in_a_few_lines(tmp_path, corpus):
    """It was restarted 100 times, each time with a line, then given up (it dies outside any
    hook: no connection to give up instead)."""
    mod = tmp_path / "exiter.py"
    mod.write_text('''
import multiprocessing
import os
from flowsift.modules import Module

class Exiter(Module):
    """Dies in its worker as it starts.

    Synopsis: exiter
    """
    name = "exiter"
    def __init__(self, config):
        super().__init__(config)
        if multiprocessing.parent_process() is not None:
            os._exit(3)
    def on_open(self, flow):
        pass
''')
    res = run_cli("chain", mod, corpus / "http__zeek__get.pcap", "--store", tmp_path / "st")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines == ["flowsift: module exiter: worker died (3); restarting it",
                     "flowsift: module exiter: worker died (3) (10 times); restarting it",
                     "flowsift: module exiter: worker died (3) (100 times); restarting it",
                     "flowsift: module exiter: worker died 101 times in a row without getting further; giving up"]


def test_a_module_that_crashes_on_many_connections_goes_on_past_a_hundred_restarts(tmp_path):
    """Each connection a module crashes in costs two restarts (the second gives it up): the
    bound of 100 restarts in all ended a run whose module crashed on 51 connections of many,
    "giving up", exit 2, though each crash was got past. Deaths in a row that get nowhere are
    bounded now; a crash that gives up a connection is a step on."""
    from pcapgen import A, B, ether, ipv4, pcap, udp
    cap = tmp_path / "many.pcap"
    cap.write_bytes(pcap([(1_700_000_000, k, ether(ipv4(A, B, 17, udp(20000 + k, 53, b"q" * 20)))) for k in range(60)]))
    mod = tmp_path / "opener.py"
    mod.write_text('''
import multiprocessing
import os
from flowsift.modules import Module

class Opener(Module):
    """Dies in on_open of every connection but the first three (as of a C extension's crash).

    Synopsis: opener
    """
    name = "opener"
    def on_open(self, flow):
        if flow.conn >= 3 and multiprocessing.parent_process() is not None:
            os._exit(1)
        self.count("opened")
''')
    res = run_cli("chain", mod, cap, "--json", "--store", tmp_path / "st", "--events", tmp_path / "ev.jsonl")
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads(res.stdout)["modules"]["opener"]
    assert (s["opened"], s["crashed_connections"], s["restarts"]) == (3, 57, 114), s
    gave_up = [l for l in res.stderr.splitlines() if "gives up on that connection" in l]
    # (one line each for the first ten, the tenth saying that later ones are counted)
    assert len(gave_up) == 10 and "(crashed_connections (later ones are counted))" in gave_up[-1], res.stderr


CRASHER = '''
import os
from flowsift.modules import Module

class Crasher(Module):
    """Counts its on_data calls per connection; its process dies (as of a C extension's crash)
    in on_data of the connection FLOWSIFT_CRASH_CONN names.

    Synopsis: crasher
    """
    name = "crasher"

    def on_data(self, flow, stream):
        if str(flow.conn) == os.environ.get("FLOWSIFT_CRASH_CONN"):
            os._exit(1)
        stream.skip()
        flow.state["calls"] = flow.state.get("calls", 0) + 1
        self.count("calls")

    def on_close(self, flow, reason):
        self.emit("closed", calls=flow.state.get("calls", 0))
'''


@pytest.mark.parametrize("batch", [None, "4"])
def test_a_worker_that_dies_twice_in_one_connection_gives_that_connection_up_and_goes_on(tmp_path, corpus,
                                                                                         monkeypatch, batch):
    """A module whose process died on one connection lost the whole run: restarted at the
    last checkpoint, it died there again, 101 times, then "giving up", exit 2, with no event
    and no summary even of the connections that were fine, and no word of where it died. (With
    small batches and a checkpoint after each, the connection is in the checkpoint the restart
    takes up.)"""
    import os
    mod = tmp_path / "crasher.py"
    mod.write_text(CRASHER)
    cap = corpus / "http__pcpp__three_http_streams.pcap"
    if batch:
        monkeypatch.setenv("FLOWSIFT_BATCH", batch)
        monkeypatch.setenv("FLOWSIFT_CHECKPOINT_EVERY", "1")
    fine = run_cli("chain", mod, cap, "--json", "--inline", "--events", tmp_path / "fine.jsonl",
                   "--store", tmp_path / "st0", check=True)
    monkeypatch.setenv("FLOWSIFT_CRASH_CONN", "1")
    res = run_cli("chain", mod, cap, "--json", "--events", tmp_path / "ev.jsonl", "--store", tmp_path / "st")
    assert res.returncode == 0, res.stderr
    where = "in on_data() of connection 1 (172.16.133.132:44305 -> 98.138.19.88:80)"
    assert res.stderr.splitlines() == [
        f"flowsift: module crasher: worker died (1) {where}; restarting it",
        f"flowsift: module crasher: worker died (1) again {where}: the module gives up on that connection "
        "(crashed_connections); restarting it"]
    events = lambda name: [{k: v for k, v in json.loads(l).items() if k != "ts"}
                           for l in (tmp_path / name).read_text().splitlines()]
    assert events("ev.jsonl") == [e for e in events("fine.jsonl") if e["conn"] != 1] and len(events("ev.jsonl")) == 2
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    calls = sum(e["calls"] for e in events("ev.jsonl"))
    assert summary["modules"]["crasher"] == {"calls": calls, "crashed_connections": 1, "errors": 0, "restarts": 2}
    # the module's bit is set in every record, the given-up connection's too (its space can go)
    every_record_has(tmp_path / "st", 0b1)


def test_a_crash_under_shards_names_the_shard_of_the_connection(tmp_path, corpus, monkeypatch):
    """Each shard numbers its own connections from 0: "connection 1" alone did not say which of
    the shards' connections 1 it was (the events say it with their `shard`)."""
    mod = tmp_path / "crasher.py"
    mod.write_text(CRASHER)
    monkeypatch.setenv("FLOWSIFT_CRASH_CONN", "1")
    res = run_cli("chain", mod, corpus / "http__pcpp__three_http_streams.pcap", "--json", "--shards", "2",
                  "--events", tmp_path / "ev.jsonl")
    assert res.returncode == 0, res.stderr
    crashes = [l for l in res.stderr.splitlines() if "worker died" in l]
    assert crashes and all(" in on_data() of connection 1 of shard " in l for l in crashes), res.stderr
    shard = int(crashes[0].split(" of shard ")[1].split()[0])
    # the shard named is the one whose connection 1 was given up: it has no event of its own
    events = [json.loads(l) for l in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert not any(e["shard"] == shard and e["conn"] == 1 for e in events)
    assert any(e["shard"] == shard and e["conn"] == 0 for e in events), events


def test_a_hard_crash_inline_says_which_module_and_hook(tmp_path, corpus, monkeypatch):
    """A segmentation fault in a hook cannot be survived inline (the process is the gateway's),
    but it said nothing at all of where it was."""
    mod = tmp_path / "crasher.py"
    mod.write_text(CRASHER.replace("os._exit(1)", "import ctypes; ctypes.string_at(0)"))
    monkeypatch.setenv("FLOWSIFT_CRASH_CONN", "1")
    res = run_cli("chain", mod, corpus / "http__pcpp__three_http_streams.pcap", "--inline", "--store", tmp_path / "st")
    assert res.returncode < 0 or res.returncode == 139
    assert f'File "{mod}", line 15 in on_data' in res.stderr, res.stderr


def test_workers_of_a_gateway_killed_outright_go_too(tmp_path, corpus):
    """Each worker held the gateway's end of its own pipe (and of the workers before it): killed
    -9, the gateway left them waiting on those pipes for ever, holding its output open."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from conftest import slow_module
    slow = slow_module(tmp_path, "slowpoke")
    env = dict(os.environ, FLOWSIFT_BATCH="8")
    # (its store where a gateway killed outright leaves it: not in /dev/shm)
    p = subprocess.Popen([sys.executable, "-m", "flowsift", "chain", f"{slow},counter,http",
                          str(corpus / "http__csanders__http_espn.pcapng"), "--events", "/dev/null",
                          "--store", str(tmp_path / "store")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 30
    workers = []
    while len(workers) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        workers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 3, workers
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    left = workers
    while left and time.monotonic() < deadline + 15:
        time.sleep(0.2)
        left = [w for w in workers if os.path.exists(f"/proc/{w}") and "Z" not in open(f"/proc/{w}/stat").read().split()[2]]
    for w in left:
        os.kill(int(w), signal.SIGKILL)
    assert left == []


def _signalled_before_it_says(took):
    # a forked process that is signalled (as a group's Ctrl-C would) before it has said what it
    # does with the signal, and then ignores it
    import os
    import signal
    from flowsift.errors import take_stop_signals
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    take_stop_signals(signal.SIG_IGN)
    took.value = 1


def test_a_forked_worker_never_runs_its_parents_signal_handlers():
    """A group's Ctrl-C that came between a worker's fork and its ignoring the signal raised
    KeyboardInterrupt in it: multiprocessing printed "Process ForkProcess-2:1:" and a traceback
    under a chain that otherwise stopped as it should."""
    import multiprocessing as mp
    from flowsift.errors import start_forked
    ctx = mp.get_context("fork")
    took = ctx.Value("i", 0)
    p = ctx.Process(target=_signalled_before_it_says, args=(took,))
    start_forked(p)
    p.join(timeout=30)
    assert p.exitcode == 0 and took.value == 1


OPEN_PROBE = '''
import time
from flowsift.modules import Module


class OpenProbe(Module):
    """What on_open sees of its connection; slow on the first, so the gateway runs ahead.

    Synopsis: open_probe
    """
    name = "open_probe"

    def on_open(self, flow):
        if flow.conn == 0:
            time.sleep(0.5)
        self.emit("open", records=len(flow.records()), packets=list(flow.totals()[0]), first=flow.time_at(0, 0))
'''


@pytest.mark.parametrize("others", ["", ",counter"], ids=["alone", "beside_a_reader"])
def test_on_open_in_a_worker_behind_the_gateway_sees_what_inline_sees(tmp_path, corpus, monkeypatch, others):
    """on_open reads its connection (flow.records(), totals, time_at) as far as the batch that
    opened it goes, in a worker as inline: a worker behind the gateway saw the packets written
    since (a connection's request time before its first byte was handed over)."""
    import json
    from conftest import run_cli
    monkeypatch.setenv("FLOWSIFT_BATCH", "1")
    probe = tmp_path / "probe.py"
    probe.write_text(OPEN_PROBE)
    cap = corpus / "http__csanders__http_espn.pcapng"
    got = {}
    for mode in ("inline", "workers"):
        ev = tmp_path / f"{mode}.jsonl"
        res = run_cli("chain", f"{probe}{others}", cap, "--events", ev, "--store", tmp_path / mode,
                      *(["--inline"] if mode == "inline" else []))
        assert res.returncode == 0, res.stderr
        got[mode] = sorted(l for l in ev.read_text().splitlines() if json.loads(l)["kind"] == "open")
    assert got["inline"] == got["workers"]
    opened = [json.loads(l) for l in got["inline"]]
    assert len(opened) > 20 and all(e["records"] == 1 for e in opened)
