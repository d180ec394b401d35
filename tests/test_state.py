"""State by kind: the declared tables (CrossFlow, Global) and config, and `flowsift analyze`
finding state kept outside them."""
import collections
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, require, run_cli
from flowsift.modules import CrossFlow, Global, Module
from flowsift.modules.base import Flow
from flowsift.modules.state import StateError, restore, snapshot

PLANTED = textwrap.dedent('''
    from flowsift.modules import Module, Global

    SEEN_BY_SOURCE = {}                      # module-level, keyed by source address


    def make_counter():
        n = 0

        def bump():
            nonlocal n                       # closure state
            n += 1
            return n
        return bump


    class Leaky(Module):
        """Keeps state every way but the declared one.

        Synopsis: leaky
        """
        name = "leaky"
        ok = Global()
        closes = []

        def __init__(self, config=None):
            super().__init__(config)
            self.flows = 0                   # set up in __init__: fine
            self.by_conn = {}
            self.bump = make_counter()

        def on_open(self, flow):
            self.flows += 1                                  # global, undeclared
            self.by_conn[flow.conn] = []                     # per-flow, kept on self
            SEEN_BY_SOURCE.setdefault(flow.client, 0)        # module-level
            SEEN_BY_SOURCE[flow.client] += 1
            self.ok["opened"] = self.ok.get("opened", 0) + 1     # declared: fine
            flow.state["n"] = 0                              # per-flow API: fine
            self.count("flows")                              # counters API: fine

        def on_close(self, flow, reason):
            self.remember(reason)
            self.bump()
            type(self).closes.append(reason)                 # a class attribute: shared
            Leaky.closes.append(reason)
            self.__class__.last = reason

        def remember(self, reason, cache=[]):
            cache.append(reason)                             # mutable default
''')


def test_analyze_finds_planted_state_with_locations(tmp_path):
    path = tmp_path / "leaky.py"
    path.write_text(PLANTED)
    res = run_cli("analyze", f"{path}:Leaky", "--json")
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert out["declared"] == {"ok": "Global"}
    found = {(f["line"], f["kind"]) for f in out["findings"]}
    lines = PLANTED.splitlines()

    def line_of(text):
        return next(i + 1 for i, l in enumerate(lines) if text in l)
    assert (line_of("self.flows += 1"), "global") in found
    assert (line_of("self.by_conn[flow.conn] = []"), "per-flow") in found
    assert (line_of("SEEN_BY_SOURCE[flow.client] += 1"), "cross-flow") in found
    assert (line_of("nonlocal n"), "global") in found
    assert (line_of("def remember"), "global") in found              # the mutable default
    for shared in ("type(self).closes.append", "Leaky.closes.append", "self.__class__.last"):
        assert (line_of(shared), "global") in found, shared
    # and nothing that is fine
    for ok in ("self.ok[", "flow.state[", "self.count(", "self.flows = 0", "self.by_conn = {}"):
        assert line_of(ok) not in {f["line"] for f in out["findings"]}, ok
    suggestion = next(f for f in out["findings"] if f["kind"] == "cross-flow")["suggestion"]
    assert "CrossFlow(key=('ip.src',))" in suggestion
    text = run_cli("analyze", f"{path}:Leaky")
    assert f"leaky.py:{line_of('self.flows += 1')}: self.flows updated in on_open()" in text.stdout


def test_builtins_and_examples_keep_state_the_declared_way():
    names = ["counter", "http", "tls", "dns", "strsearch", "nat", "redact", ROOT / "examples" / "http_requests.py",
             ROOT / "examples" / "minimal.py"]
    res = run_cli("analyze", *names, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(not r["findings"] for r in json.loads(res.stdout))


def flow(client="10.0.0.1:1234", server="10.0.0.2:80", ts=0):
    f = Flow(1, "tcp", client, server, ts)
    f.last_ts = ts
    return f


class Tally(Module):
    """Per-source tallies.

    Synopsis: tally
    """
    name = "tally"
    per_source = CrossFlow(key=("ip.src",), expire=60)
    per_server = CrossFlow(key=("ip.dst", "port.dst"), merge="union")
    total = Global(int)
    rows = Global(list)


def test_declared_tables_snapshot_restore_and_merge():
    a, b = Tally(), Tally()
    assert a.per_source is not b.per_source                  # each instance its own tables
    f1, f2 = flow(ts=10**9), flow("10.0.0.9:5", ts=2 * 10**9)
    a.per_source[f1]["n"] = 1
    a.per_source[f2]["n"] = 5
    a.per_server[f1]["clients"] = ["10.0.0.1"]
    a.total.value = 3
    a.rows.append({"x": 1})
    b.per_source[f1]["n"] = 2
    b.per_server[f1]["clients"] = ["10.0.0.1", "10.0.0.7"]
    b.total.value = 4
    b.rows.append({"x": 2})
    c = Tally()
    restore(c, snapshot(a))
    assert c.per_source[("10.0.0.1",)] == {"n": 1} and c.total.value == 3 and c.rows == [{"x": 1}]
    restore(c, snapshot(b), merge=True)                      # another shard's state folded in
    assert c.per_source[("10.0.0.1",)] == {"n": 3} and c.per_source[("10.0.0.9",)] == {"n": 5}
    assert c.per_server[("10.0.0.2", 80)] == {"clients": ["10.0.0.1", "10.0.0.7"]}
    assert c.total.value == 7 and c.rows == [{"x": 1}, {"x": 2}]
    # expiry by capture time: 60 s after its last use an entry is gone for a flow (a new one
    # starts), and it is let go once no flow can find it alive (an hour on)
    assert flow(ts=30 * 10**9) in c.per_source and c.per_source.get(flow(ts=62 * 10**9)) is None
    assert c.per_source.expire(62 * 10**9) == 0 and len(c.per_source) == 2
    assert c.per_source.expire(3662 * 10**9) == 1 and ("10.0.0.1",) not in c.per_source and len(c.per_source) == 1


def test_bad_declarations_and_config_are_refused():
    with pytest.raises(StateError, match="fields are"):
        CrossFlow(key=("mac.src",))
    with pytest.raises(StateError, match="merge"):
        CrossFlow(key="ip.src", merge="avg")
    m = Tally({"x": 1})
    with pytest.raises(TypeError):
        m.config["x"] = 2                                   # config is read-only at run time


TALLY = textwrap.dedent('''
    import os, signal
    from flowsift.modules import Module, CrossFlow, Global

    class SourceTally(Module):
        """Per-source and global tallies, emitted at each connection's end; kills its own worker
        once, at record FLOWSIFT_KILL_AT.

        Synopsis: source_tally
        """
        name = "source_tally"
        per_source = CrossFlow(key=("ip.src",))
        totals = Global()

        def on_packet(self, flow, record):
            flow.state["pkts"] = flow.state.get("pkts", 0) + 1
            self.totals["packets"] = self.totals.get("packets", 0) + 1
            self.count("packets")
            marker = os.environ.get("FLOWSIFT_KILL_MARKER")
            if marker and not os.path.exists(marker) and self.totals["packets"] == int(os.environ["FLOWSIFT_KILL_AT"]):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

        def on_close(self, flow, reason):
            e = self.per_source[flow]
            e["conns"] = e.get("conns", 0) + 1
            e["pkts"] = e.get("pkts", 0) + flow.state.get("pkts", 0)
            self.emit("tally", source_conns=e["conns"], source_pkts=e["pkts"], total=self.totals.get("packets", 0))
''')


@pytest.mark.parametrize("kill_at", [150, 1400, 2900])
def test_a_killed_worker_resumes_from_its_checkpoint_with_identical_output(tmp_path, corpus, monkeypatch, kill_at):
    import io
    from flowsift.chain import run_chain
    path = tmp_path / "tally.py"
    path.write_text(TALLY)
    spec = f"{path}:SourceTally"
    cap = str(corpus / "tls__suri__tls-subjectaltname.pcap")          # 3,080 records, 7 batches, 108 flows
    ref = io.StringIO()
    run_chain(spec, cap, events=ref, inline=True, strict=True)
    monkeypatch.setenv("FLOWSIFT_CHECKPOINT_EVERY", "2")
    monkeypatch.setenv("FLOWSIFT_KILL_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("FLOWSIFT_KILL_AT", str(kill_at))
    out = io.StringIO()
    summary = run_chain(spec, cap, events=out, strict=True, store=tmp_path / "store", keep=True)
    assert (tmp_path / "killed").exists() and summary["modules"]["source_tally"]["restarts"] == 1
    strip = lambda text: sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "ts"}, sort_keys=True)
                                for l in text.splitlines())
    got, want = strip(out.getvalue()), strip(ref.getvalue())
    assert len(want) == 108 and got == want           # the running tallies too: state came back whole
    assert summary["modules"]["source_tally"]["packets"] == 3086
    saved = (tmp_path / "store" / "state" / "source_tally.0.json").read_text().splitlines()
    assert json.loads(saved[0])["module"] == "source_tally" and json.loads(saved[1])["open"] == {}


def same_output(one, ev1, two, ev2):
    """A sharded run (two, its event lines ev2) gave what one gateway gave (one, ev1), for the
    chain counter,http,dns,SourceTally: per-flow events, module counters, counter's table and
    SourceTally's merged declared state, and the connections reassembly found."""
    assert two["connections"] == one["connections"]
    # events that depend on one flow only are the same (flow ids are per shard: left out)
    per_flow = lambda lines: sorted(json.dumps({k: v for k, v in json.loads(l).items() if k not in ("ts", "conn", "shard")},
                                               sort_keys=True) for l in lines if '"source_tally"' not in l)
    assert per_flow(ev2) == per_flow(ev1) and len(ev2) == len(ev1)
    for m in ("counter", "http", "dns", "source_tally"):
        assert {k: v for k, v in two["modules"][m].items() if k != "restarts"} == \
               {k: v for k, v in one["modules"][m].items() if k != "restarts"}, m
    # declared cross-flow and global state, merged by its rules, is the state of one shard: the
    # entries, and when each was last used (the latest time of a flow that used it)
    entries = lambda st: (sorted((k, v, t) for k, v, t in st["per_source"]["crossflow"]), st["totals"])
    assert entries(two["state"]["source_tally"]) == entries(one["state"]["source_tally"])
    rows = lambda s: sorted(json.dumps({k: v for k, v in r.items() if k not in ("conn", "shard")}, sort_keys=True)
                            for r in s["tables"]["counter"])
    assert rows(two) == rows(one)


@pytest.mark.parametrize("name", ["http__csanders__http_espn.pcapng", "tls__suri__tls-subjectaltname.pcap"])
def test_two_shards_give_the_output_of_one(tmp_path, corpus, name):
    tally = tmp_path / "tally.py"
    tally.write_text(TALLY)
    spec = f"counter,http,dns,{tally}:SourceTally"
    runs = {}
    for shards in (1, 2):
        ev = tmp_path / f"{shards}.jsonl"
        res = run_cli("chain", spec, corpus / name, "--events", ev, "--json", *(["--shards", 2] if shards == 2 else []))
        assert res.returncode == 0, res.stderr
        runs[shards] = json.loads(res.stdout), ev.read_text().splitlines()
    (one, ev1), (two, ev2) = runs[1], runs[2]
    assert two["mode"] == "sharded" and len(two["shards"]) == 2
    assert sum(s["other_shards_packets"] for s in two["shards"]) == one["packets"]   # each packet in one shard
    same_output(one, ev1, two, ev2)


KILLING_BUILTINS = textwrap.dedent('''
    import os, signal
    from flowsift.modules.builtin.http import Http
    from flowsift.modules.builtin.strsearch import StrSearch

    def maybe_kill(name, calls={}):
        # once per run and module: SIGKILL this worker at its FLOWSIFT_KILL_AT-th on_data call
        calls[name] = calls.get(name, 0) + 1
        marker = os.environ["FLOWSIFT_KILL_MARKER"] + "." + name
        if calls[name] == int(os.environ["FLOWSIFT_KILL_AT"]) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    class KillingHttp(Http):
        """http, killed once.

        Synopsis: http
        """
        name = "http"

        def on_data(self, flow, stream):
            maybe_kill(self.name)
            st = flow.state["sides"][stream.direction]
            if st and stream.direction not in flow.cache:
                # only after a restore: the direction's state came back with the checkpoint
                # (flow.cache did not); "True" when it was inside a message
                with open(os.environ["FLOWSIFT_KILL_MARKER"] + ".resumed", "a") as f:
                    f.write(f"{flow.conn} {st['msg'] is not None}\\n")
            flow.cache[stream.direction] = True
            super().on_data(flow, stream)

    class KillingStrSearch(StrSearch):
        """strsearch, killed once.

        Synopsis: strsearch
        """
        name = "strsearch"

        def on_data(self, flow, stream):
            maybe_kill(self.name)
            super().on_data(flow, stream)
''')


@pytest.mark.parametrize("kill_at", [25, 70, 140])
def test_builtin_parsers_resume_mid_message_after_a_kill(tmp_path, corpus, monkeypatch, kill_at):
    """http keeps where it is in each message (header block awaited, body or chunk bytes to
    go, what the message said so far) in flow.state; strsearch keeps the tail a match may span
    in flow.state: killed workers resume with the events of an undisturbed run, and no
    connection has to be read again from its start."""
    import io
    from flowsift.chain import run_chain
    path = tmp_path / "killing.py"
    path.write_text(KILLING_BUILTINS)
    spec = f"{path}:KillingHttp,{path}:KillingStrSearch(patterns=inline:HTTP/1.1 200|Content-Type: image|\\r\\n\\r\\n|</a>|espn|<script,nocase=true)"
    cap = str(corpus / "http__csanders__http_espn.pcapng")             # 956 packets, 60 batches of 16
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")
    monkeypatch.setenv("FLOWSIFT_KILL_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("FLOWSIFT_KILL_AT", "0")
    ref = io.StringIO()
    run_chain(spec, cap, events=ref, inline=True, strict=True)
    monkeypatch.setenv("FLOWSIFT_CHECKPOINT_EVERY", "1")
    monkeypatch.setenv("FLOWSIFT_KILL_AT", str(kill_at))
    out = io.StringIO()
    summary = run_chain(spec, cap, events=out, strict=True, store=tmp_path / "store", keep=True)
    for name in ("http", "strsearch"):
        assert (tmp_path / f"killed.{name}").exists() and summary["modules"][name]["restarts"] == 1
    strip = lambda text: sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "ts"}, sort_keys=True)
                                for l in text.splitlines())
    got, want = strip(out.getvalue()), strip(ref.getvalue())
    assert len(want) > 200 and got == want
    assert summary["modules"]["http"]["requests"] > 50 and summary["modules"]["strsearch"]["matches"] > 50
    # the restored http went on from the checkpoint (not reading connections again from their
    # start), at 25 inside a message it was in the middle of (a body to go)
    resumed = (tmp_path / "killed.resumed").read_text()
    assert resumed and (" True" in resumed or kill_at != 25)


def test_a_match_and_a_request_split_across_a_restore_are_whole(tmp_path, monkeypatch):
    """One connection, a packet per batch, a checkpoint after each: the workers die right after
    the first half of a request (and of a pattern) was checkpointed; what the restored ones
    report is the whole request and the whole match."""
    import io
    from flowsift.chain import run_chain
    from flowsift.testing import segments_capture
    path = tmp_path / "killing.py"
    path.write_text(KILLING_BUILTINS)
    cap = segments_capture(tmp_path, client=[b"GET /a HTTP/1.1\r\nHost: example\r\nX-Key: SECRET-", b"TOKEN\r\n\r\n"],
                           server=[b"", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"])
    spec = f"{path}:KillingHttp,{path}:KillingStrSearch(patterns=inline:SECRET-TOKEN)"
    monkeypatch.setenv("FLOWSIFT_BATCH", "1")
    monkeypatch.setenv("FLOWSIFT_CHECKPOINT_EVERY", "1")
    monkeypatch.setenv("FLOWSIFT_KILL_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("FLOWSIFT_KILL_AT", "2")                     # at the second half
    out = io.StringIO()
    summary = run_chain(spec, str(cap), events=out, strict=True)
    assert summary["modules"]["http"]["restarts"] == 1 and summary["modules"]["strsearch"]["restarts"] == 1
    assert (tmp_path / "killed.resumed").exists()
    events = [json.loads(l) for l in out.getvalue().splitlines()]
    match = [e for e in events if e["kind"] == "match"]
    assert [(e["pattern"], e["offset"]) for e in match] == [("SECRET-TOKEN", 39)]
    req = [e for e in events if e["kind"] == "request"]
    assert [(e["method"], e["uri"], e["host"]) for e in req] == [("GET", "/a", "example")]
    assert [(e["status"], e["response_body"], e["uri"]) for e in events if e["kind"] == "response"] == [(200, 5, "/a")]


def test_analyze_finds_per_flow_state_a_checkpoint_cannot_carry(tmp_path):
    path = tmp_path / "objects.py"
    path.write_text(textwrap.dedent('''
        import threading
        from flowsift.modules import Module

        class Objects(Module):
            """Keeps objects and odd keys in flow.state.

            Synopsis: objects
            """
            name = "objects"

            def on_data(self, flow, stream):
                d = stream.direction
                flow.state["parser"] = threading.Lock()                      # an object
                flow.state[("done", d)] = 0                                  # a tuple key
                flow.state.setdefault("seen", set())                         # a set
                flow.state[d] = (stream.tell(), "")                          # a tuple value
                flow.state["ok"] = [stream.tell(), ""]                       # plain data: fine
                flow.cache["parser"] = threading.Lock()                      # the place for it: fine
    '''))
    res = run_cli("analyze", f"{path}:Objects", "--json")
    assert res.returncode == 1, res.stderr
    found = {(f["line"], f["what"].split(" in ")[0]) for f in json.loads(res.stdout)["findings"]}
    assert found == {(14, "flow.state holds an object (threading.Lock(...))"),
                     (15, "flow.state key ('done', d)"),
                     (16, "flow.state holds a set"),
                     (17, "flow.state holds a tuple (it comes back a list)")}, found


def test_analyze_follows_aliases_and_number_keys_and_leaves_set_up_alone(tmp_path):
    """State changed through a local naming it (`d = self.last; d[k] = v`) was missed, as was a
    flow.state key that is a number (`flow.state[flow.conn]`: read again from the first record
    after a restart); an attribute set in a helper only __init__ calls was taken for state."""
    path = tmp_path / "aliases.py"
    path.write_text(textwrap.dedent('''
        import re
        from flowsift.modules import Module

        class Aliases(Module):
            """Keeps state through names for it."""
            name = "aliases"

            def __init__(self, config=None):
                super().__init__(config)
                self._setup()

            def _setup(self):
                self.rx = re.compile("x")
                self.last = {}
                self.items = []

            def on_open(self, flow):
                d = self.last
                d[flow.client] = flow.first_ts
                items = self.items
                items.append(flow.conn)
                flow.state[flow.conn] = 1
                copy = dict(self.last)
                copy["x"] = 1
    '''))
    res = run_cli("analyze", path, "--json")
    assert res.returncode == 1, res.stderr
    found = {(f["line"], f["kind"]) for f in json.loads(res.stdout)["findings"]}
    assert found == {(20, "cross-flow"), (22, "global"), (23, "per-flow")}, found


def test_analyze_follows_a_key_made_from_flow_fields(tmp_path):
    """A key put in a local first (`src = flow.client...`) or given to setdefault is still
    a flow field: cross-flow, not global; the connection itself is per-flow."""
    path = tmp_path / "talkers.py"
    path.write_text(textwrap.dedent('''
        from flowsift.modules import Module

        TABLE = {}

        class Talkers(Module):
            """Connections per client address."""
            name = "talkers"

            def __init__(self, config=None):
                super().__init__(config)
                self.by_source = {}

            def on_close(self, flow, reason):
                src = flow.client.rpartition(":")[0]
                self.by_source[src] = self.by_source.get(src, 0) + 1
                TABLE.setdefault(flow.server, []).append(1)
                self.by_source.setdefault(flow.conn, 0)
                total = len(TABLE)
                self.by_source[total] = 1
    '''))
    res = run_cli("analyze", path, "--json")
    assert res.returncode == 1, res.stderr
    found = {(f["line"], f["kind"]) for f in json.loads(res.stdout)["findings"]}
    assert found == {(16, "cross-flow"), (17, "cross-flow"), (18, "per-flow"), (20, "global")}, found


KILLING_COUNTER = textwrap.dedent('''
    import os, signal
    from flowsift.modules.builtin.counter import Counter

    class KillingCounter(Counter):
        """counter, killed once at its FLOWSIFT_KILL_AT-th connection end.

        Synopsis: counter
        """
        name = "counter"

        def on_close(self, flow, reason):
            marker = os.environ["FLOWSIFT_KILL_MARKER"]
            if len(self.rows) == int(os.environ["FLOWSIFT_KILL_AT"]) and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            super().on_close(flow, reason)
''')


def test_append_only_rows_are_checkpointed_in_parts_and_come_back_whole(tmp_path, corpus, monkeypatch):
    """counter's table rows (Global(list, append_only=True)) travel in each checkpoint as the rows
    added since the last; a worker killed after many checkpoints gets them all back."""
    import io
    from flowsift.chain import run_chain
    path = tmp_path / "killing_counter.py"
    path.write_text(KILLING_COUNTER)
    spec = f"{path}:KillingCounter"
    cap = str(corpus / "tls__suri__tls-subjectaltname.pcap")
    monkeypatch.setenv("FLOWSIFT_BATCH", "64")
    monkeypatch.setenv("FLOWSIFT_KILL_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("FLOWSIFT_KILL_AT", "-1")
    want = run_chain(spec, cap, events=io.StringIO(), inline=True, strict=True)
    monkeypatch.setenv("FLOWSIFT_CHECKPOINT_EVERY", "1")
    monkeypatch.setenv("FLOWSIFT_KILL_AT", "20")
    got = run_chain(spec, cap, events=io.StringIO(), strict=True, store=tmp_path / "store", keep=True)
    assert (tmp_path / "killed").exists() and got["modules"]["counter"]["restarts"] == 1
    rows = lambda t: sorted(json.dumps(r, sort_keys=True) for r in t)
    assert len(want["tables"]["counter"]) == 108
    assert rows(got["tables"]["counter"]) == rows(want["tables"]["counter"])
    assert rows(got["state"]["counter"]["rows"]["value"]) == rows(want["tables"]["counter"])
    # each checkpoint carried only the new rows: together they are the table, once each
    saved = (tmp_path / "store" / "state" / "counter.0.rows.jsonl").read_text().splitlines()
    assert rows(map(json.loads, saved)) == rows(want["tables"]["counter"])
    last = json.loads(json.loads((tmp_path / "store" / "state" / "counter.0.json").read_text().splitlines()[1])["state"])
    assert last["rows"] == {"rows": 108}                  # counted only: the rows are apart


def test_cross_flow_entries_expire_after_their_last_use(tmp_path, corpus):
    """expire= was declared and never applied (the table's expire() had no caller), and an
    entry's last use was stamped with the latest time any flow had shown, not its own."""
    mod = tmp_path / "exp.py"
    mod.write_text('''
from flowsift.modules import CrossFlow, Module

class Exp(Module):
    """Counts closes per source, forgetting a source idle for a millisecond.

    Synopsis: exp
    """
    name = "exp"
    per_src = CrossFlow(key=("ip.src",), expire=0.001)

    def on_close(self, flow, reason):
        e = self.per_src[flow]
        e["c"] = e.get("c", 0) + 1
        self.emit("seen", c=e["c"], last=flow.last_ts)
''')
    runs = {}
    for mode in ([], ["--inline"], ["--shards", "2"]):
        out = tmp_path / "ev.jsonl"
        res = run_cli("chain", mod, corpus / "http__zeek__bro.org.pcap", "--events", out, *mode)
        assert res.returncode == 0, res.stderr
        runs[" ".join(mode)] = sorted((e["client"], e["last"], e["c"]) for e in map(json.loads, out.read_text().splitlines()))
    assert runs[""] == runs["--inline"] == runs["--shards 2"]
    # a source's count starts again after it was idle for more than a millisecond (without
    # expiry it ran up to 13, one entry per source)
    seen = runs[""]
    assert sum(c == 1 for _, _, c in seen) > len({client.rsplit(":", 1)[0] for client, _, _ in seen})


EXPIRY = '''
from flowsift.modules import CrossFlow, Module

class Expiry(Module):
    """Looks a destination up every way a table allows, forgetting it after two idle seconds.

    Synopsis: expiry
    """
    name = "expiry"
    reads = set()
    by_dst = CrossFlow(key=("ip.dst",), expire=2)

    def on_close(self, flow, reason):
        known, prev, size = flow in self.by_dst, self.by_dst.get(flow), len(self.by_dst)
        e = self.by_dst[flow]
        e["n"] = e.get("n", 0) + 1
        self.emit("c", known=known, prev=prev, size=size, n=e["n"])
'''


def test_expiry_answers_do_not_depend_on_batches_or_checkpoints(tmp_path, corpus):
    """A checkpoint let go entries by the latest time seen, while a lookup judged by its own
    flow's time; `in`, get() and len() did not look at expiry at all: a parallel run, whose
    worker checkpoints, answered otherwise than --inline (96 counts of 1,083 here)."""
    mod = tmp_path / "expiry.py"
    mod.write_text(EXPIRY)
    src = corpus / "speed__pcpp__example.pcap"
    big = tmp_path / "big.pcap"                # the capture four times, an hour apart
    parts = []
    for k in range(4):
        part = tmp_path / f"p{k}.pcap"
        subprocess.run([require("editcap"), "-t", str(k * 3600), str(src), str(part)], check=True, capture_output=True)
        parts.append(str(part))
    subprocess.run([require("mergecap"), "-a", "-F", "pcap", "-w", str(big), *parts], check=True, capture_output=True)
    runs = []
    for mode, env in (([ "--inline"], {}), ([], {"FLOWSIFT_BATCH": "8", "FLOWSIFT_CHECKPOINT_EVERY": "1"}),
                      ([], {"FLOWSIFT_BATCH": "64"})):
        out = tmp_path / "ev.jsonl"
        res = subprocess.run([sys.executable, "-m", "flowsift", "chain", str(mod), str(big), "--events", str(out),
                              *mode], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
        assert res.returncode == 0, res.stderr
        runs.append(sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "ts"}, sort_keys=True)
                           for l in out.read_text().splitlines()))
    assert runs[0] == runs[1] == runs[2]
    events = [json.loads(l) for l in runs[0]]
    # an entry that expired started again: a destination counted from 1 more than once
    starts = collections.Counter(e["server"].rsplit(":", 1)[0] for e in events if e["n"] == 1)
    assert max(starts.values()) > 1 and max(e["size"] for e in events) > 0


@pytest.mark.parametrize("value,said", [("{80: 1}", "ports: a dict key 80 (int): state is saved as JSON, whose keys are text"),
                                         ("{'a': {1, 2}}", "module ports: ports: state that JSON cannot carry: Object of type set")])
def test_state_json_cannot_carry_is_one_line_and_not_retried(tmp_path, corpus, value, said):
    """A Global dict keyed by port numbers came back keyed by text after a restart (beside new
    int keys: counts lost); a set made its worker die and be started again a hundred times,
    with a traceback each time, and then its line did not name the table."""
    mod = tmp_path / "ports.py"
    mod.write_text(f'''
from flowsift.modules import Global, Module

class Ports(Module):
    """Keeps what JSON cannot carry.

    Synopsis: ports
    """
    name = "ports"
    reads = set()
    ports = Global()

    def on_close(self, flow, reason):
        self.ports.update({value})
''')
    for mode in ([], ["--inline"]):
        res = run_cli("chain", mod, corpus / "http__zeek__bro.org.pcap", "--events", "/dev/null", *mode)
        assert res.returncode == 2 and said in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_inline_modules_each_have_their_own_flow_state(tmp_path):
    """--inline handed every module of a chain one flow.state (and flow.cache): two modules
    using the same key counted each packet twice, where their workers counted it once."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.py").write_text(f'''
from flowsift.modules import Module

class M(Module):
    """Counts a connection's packets in flow.state.

    Synopsis: {name}
    """
    name = "{name}"

    def on_packet(self, flow, record):
        flow.state["packets"] = flow.state.get("packets", 0) + 1
        flow.cache["seen"] = flow.cache.get("seen", 0) + 1

    def on_close(self, flow, reason):
        self.emit("c", packets=flow.state["packets"], seen=flow.cache["seen"])
''')
    spec = f"{tmp_path / 'a.py'},{tmp_path / 'b.py'}"
    got = []
    for mode in ([], ["--inline"]):
        res = run_cli("chain", spec, ROOT / "examples" / "demo.pcap", *mode)
        assert res.returncode == 0, res.stderr
        got.append(sorted((e["module"], e["conn"], e["packets"], e["seen"]) for e in map(json.loads, res.stdout.splitlines())
                          if e.get("kind") == "c"))
    assert got[0] == got[1] and all(p == s for _, _, p, s in got[0])
