"""The Redis registry, against a real redis-server started for each test on a free loopback port:
a gateway and a module in separate processes give `flowsift chain`'s output, through a module
kill -9 and a Redis restart; bits are atomic across processes; stale runs never break a new
one; and every failure to use the server is one line, exit 2."""
import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import RedisServer, run_cli
from flowsift.chain import run_chain

SLOW = textwrap.dedent('''
    import os, time
    from flowsift.modules import Module

    class Slow(Module):
        """An event per record and per connection end, taking its time at each end.

        Synopsis: slow
        """
        name = "slow"

        def on_packet(self, flow, record):
            self.emit("record", index=record.index, id=record.record_id)
            self.count("records")

        def on_close(self, flow, reason):
            time.sleep(float(os.environ.get("SLOW_CLOSE", "0.02")))
            self.emit("closed", reason=reason)
            self.count("connections")
''')

CAPTURE = "tls__suri__tls-subjectaltname.pcap"      # 108 connections, 3,086 records


def flowsift(*args, env=None, **kw):
    # batches of 64 packets: the capture is 49 batches (and a last publish at its end), so an
    # attached module commits many times before it is done, and can be killed in between
    return subprocess.Popen([sys.executable, "-m", "flowsift", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FLOWSIFT_BATCH": "64", **(env or {})}, **kw)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err


def strip(events):
    """Events without their timestamp (it says when the module read, which differs by design) and
    record ID (each run draws a random base per connection; checked to count up instead)."""
    bases = collections.defaultdict(set)
    for e in events:
        if "id" in e:
            bases[e["conn"]].add(e["id"] - e["index"])
    assert all(len(b) == 1 for b in bases.values())
    return collections.Counter(json.dumps({k: v for k, v in e.items() if k not in ("ts", "id")}, sort_keys=True)
                               for e in events)


def read_events(path):
    return [json.loads(line) for line in open(path)]


def closed_events(path):
    """Connection ends a module has written so far (committed or not: a batch's connections are
    committed together, after the batch)."""
    try:
        return sum('"closed"' in line for line in open(path))
    except FileNotFoundError:
        return 0


def wait_until(what, timeout=60, every=0.01, procs=()):
    """Poll `what` until it is true. `procs` must keep running meanwhile: one that ends, or the
    timeout, fails the test with what they printed (a bare timeout tells nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                _, err = p.communicate()
                raise AssertionError(f"{' '.join(map(str, p.args[2:5]))} ended ({p.returncode}) while waiting: {err}")
        time.sleep(every)
    for p in procs:
        p.kill()
    said = "".join(f"\n{' '.join(map(str, p.args[2:5]))}: {p.communicate()[1]}" for p in procs)
    raise AssertionError(f"timed out waiting{said}")


@pytest.fixture
def slow(tmp_path):
    path = tmp_path / "slow.py"
    path.write_text(SLOW)
    return f"{path}:Slow"


@pytest.fixture
def expected(corpus, slow):
    """What `flowsift chain` makes of the capture in one process."""
    import io
    out = io.StringIO()
    summary = run_chain(slow, str(corpus / CAPTURE), events=out, inline=True, strict=True)
    return [json.loads(l) for l in out.getvalue().splitlines()], summary["modules"]["slow"]


def test_module_attached_later_killed_and_restarted_gives_the_chain_output(tmp_path, corpus, redis_server, slow,
                                                                           expected):
    url, r = redis_server.url, redis_server.client()
    store = tmp_path / "store"
    gw = flowsift("gateway", corpus / CAPTURE, "--registry", url, "--run", "r1", "--expect", "slow",
                  "--store", store, "--keep", "--json")
    # the module attaches after the gateway has read the whole source
    wait_until(lambda: r.hget("flowsift:{r1}:meta", "state") == "complete")
    events = tmp_path / "slow.jsonl"
    m1 = flowsift("module", slow, "--registry", url, "--run", "r1", "--events", events, "--json")
    # killed with part of its work committed and part written but not committed
    wait_until(lambda: r.exists("flowsift:{r1}:ckpt:0") and closed_events(events) >= 30, procs=(m1,))
    assert m1.poll() is None, "the module finished before it could be killed: nothing was tested"
    os.kill(m1.pid, signal.SIGKILL)
    m1.wait()
    at_kill = r.hlen("flowsift:{r1}:done:0")
    assert at_kill < 108
    m2 = flowsift("module", slow, "--registry", url, "--run", "r1", "--events", events, "--json")
    out, err = finish(m2)
    summary = json.loads(out)
    assert summary["resumed"] and summary["bit"] == 0 and summary["connections"] == 108
    assert "resumes run r1" in err
    gsum = json.loads(finish(gw)[0])
    want_events, want_counters = expected
    got = read_events(events)
    # nothing lost, nothing twice: the same multiset of events as one process makes
    assert strip(got) == strip(want_events) and len(got) == 3086 + 108
    assert {k: v for k, v in summary["modules"]["slow"].items()} == want_counters
    assert gsum["module_progress"] == {"slow": 108} and gsum["run"] == "r1"
    # the gateway recorded the module's bit in every record of every file
    from flowsift.streams.reader import RecordFile, store_files
    files = list(store_files(store))
    assert len(files) == 108
    for path in files:
        with RecordFile(path) as rf:
            assert (rf.record_array()["modules"] & 1).all()
    # a clean exit leaves no key behind
    assert r.keys("flowsift:*") == []


def test_redis_restarted_mid_run_nothing_lost(tmp_path, corpus, redis_server, slow, expected):
    url, r = redis_server.url, redis_server.client()
    events = tmp_path / "slow.jsonl"
    gw = flowsift("gateway", corpus / CAPTURE, "--registry", url, "--run", "r2", "--expect", "slow", "--json")
    m = flowsift("module", slow, "--registry", url, "--run", "r2", "--events", events, "--json", "--wait", "30")
    wait_until(lambda: closed_events(events) >= 30, procs=(m, gw))
    assert m.poll() is None and gw.poll() is None
    redis_server.restart()                  # no persistence: every key is gone
    out, err = finish(m)
    gsum, gerr = finish(gw)
    summary, gsum = json.loads(out), json.loads(gsum)
    # one restart: the run's keys written again once on each side, and one outage at most (a
    # restart this quick may be over before a side finds the server gone)
    assert summary["registry_rebuilt"] == gsum["registry_rebuilt"] == 1
    assert summary["registry_outages"] <= 1 and gsum["registry_outages"] <= 1
    assert "registry restored from the store" in gerr
    want_events, want_counters = expected
    assert strip(read_events(events)) == strip(want_events)
    assert summary["modules"]["slow"] == want_counters
    assert gsum["module_progress"] == {"slow": 108}
    assert redis_server.client().keys("flowsift:*") == []


def test_an_attached_module_will_not_write_its_events_over_the_run_input(tmp_path, corpus, redis_server):
    import shutil
    url, r = redis_server.url, redis_server.client()
    cap = tmp_path / "victim.pcap"
    shutil.copy(corpus / CAPTURE, cap)
    before = cap.read_bytes()
    gw = flowsift("gateway", cap, "--registry", url, "--run", "rv", "--expect", "counter", "--store", tmp_path / "s")
    try:
        wait_until(lambda: r.hget("flowsift:{rv}:meta", "state"), procs=(gw,))
        m = flowsift("module", "counter", "--registry", url, "--run", "rv", "--events", cap)
        out, err = m.communicate(timeout=60)
        assert m.returncode == 2 and "--events" in err and "input capture" in err and err.count("\n") == 1
        assert cap.read_bytes() == before
    finally:
        gw.terminate()
        gw.wait(timeout=60)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_an_attached_modules_events_that_cannot_be_written_are_one_line(tmp_path, corpus, redis_server):
    """Events to a device that fails its writes were an internal error (exit 1): one line naming
    the file, exit 2, as for every output."""
    url, r = redis_server.url, redis_server.client()
    gw = flowsift("gateway", corpus / CAPTURE, "--registry", url, "--run", "rf", "--expect", "counter",
                  "--store", tmp_path / "s")
    try:
        wait_until(lambda: r.hget("flowsift:{rf}:meta", "state"), procs=(gw,))
        m = flowsift("module", "counter", "--registry", url, "--run", "rf", "--events", "/dev/full")
        out, err = m.communicate(timeout=60)
        assert (m.returncode, err) == (2, "flowsift: /dev/full: cannot write events: No space left on device\n")
    finally:
        gw.terminate()
        gw.wait(timeout=60)


def test_module_started_before_the_gateway(tmp_path, corpus, redis_server, slow, expected):
    url = redis_server.url
    events = tmp_path / "slow.jsonl"
    m = flowsift("module", slow, "--registry", url, "--run", "r3", "--events", events, "--wait", "60",
                 env={"SLOW_CLOSE": "0"})
    time.sleep(0.5)
    assert m.poll() is None                 # waiting for the run
    gw = flowsift("gateway", corpus / CAPTURE, "--registry", url, "--run", "r3", "--expect", "slow")
    _, err = finish(m)
    assert "waiting for run r3" in err
    finish(gw)
    assert strip(read_events(events)) == strip(expected[0])


def test_chain_with_registry_gives_the_embedded_output(tmp_path, corpus, redis_server):
    cap = corpus / "http__tcpflow__jpegs.cap"
    a = run_cli("chain", "http,tls,counter", cap, "--events", tmp_path / "a.jsonl", "--json", check=True)
    b = run_cli("chain", "http,tls,counter", cap, "--events", tmp_path / "b.jsonl", "--json",
                "--registry", redis_server.url, check=True)
    sa, sb = json.loads(a.stdout), json.loads(b.stdout)
    assert sb["mode"] == "registry" and sa["mode"] == "parallel"
    assert strip(read_events(tmp_path / "b.jsonl")) == strip(read_events(tmp_path / "a.jsonl"))
    assert sa["events"] == sb["events"] > 30
    for m in ("http", "tls", "counter"):
        assert {k: v for k, v in sa["modules"][m].items() if k != "restarts"} == \
               {k: v for k, v in sb["modules"][m].items() if k != "restarts"}
    assert redis_server.client().keys("flowsift:*") == []


def test_a_registry_run_counts_what_its_modules_gave_back(tmp_path, corpus, redis_server):
    # the summary was taken when the source ended, before the modules' reports: 0 retired
    stores, sums = {}, {}
    for mode, extra in (("embedded", ()), ("registry", ("--registry", redis_server.url))):
        stores[mode] = tmp_path / mode
        res = run_cli("chain", "tls", corpus / CAPTURE, "--store", stores[mode], "--events", "/dev/null", "--json",
                      *extra)
        assert res.returncode == 0, res.stderr
        sums[mode] = json.loads(res.stdout)
    left = {mode: sorted(p.name for p in store.glob("*.rec")) for mode, store in stores.items()}
    assert left["embedded"] == left["registry"] and len(left["registry"]) == 108 - sums["registry"]["retired"]
    for key in ("retired", "reclaimed_bytes"):
        assert sums["registry"][key] == sums["embedded"][key] > 0, key


def test_a_registry_run_keeps_at_most_unacked_files(tmp_path, corpus, redis_server):
    """The bound holds when the modules report through the registry: their late reports of
    files that went are no error, and the summary counts what went."""
    res = run_cli("chain", "counter", corpus / "midstream__pcpp__650HttpResponses.pcap", "--store", tmp_path / "s",
                  "--events", "/dev/null", "--json", "--registry", redis_server.url, "--unacked-files", "50")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["unacked_kept"], summary["unacked_retired"]) == (50, 234)
    assert len(list((tmp_path / "s").glob("*.rec"))) == 50


def test_a_registry_chain_over_no_connection_ends_at_once_as_the_others_do(tmp_path, corpus, redis_server):
    """The gateway, with nothing to wait for, removed the run before its modules attached: they
    never found it, and the chain ended after a minute, blaming a module (exit 2)."""
    cap = corpus / "http__zeek__get.pcap"
    start = time.monotonic()
    res = run_cli("chain", "http,counter", cap, "--filter", "tcp port 9999", "--registry", redis_server.url,
                  "--json", "--events", tmp_path / "ev.jsonl")
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - start < 30
    summary = json.loads(res.stdout)
    assert summary["connections"]["tcp"] == 0 and set(summary["modules"]) == {"http", "counter"}
    assert redis_server.client().keys("flowsift:*") == []


def _register(url, run, name, queue):
    from flowsift.registry.redis import RedisRegistry
    from flowsift.registry import RegistryError
    reg = RedisRegistry(url, run, role="module")
    try:
        queue.put((name, reg.register(name, wait=0.3)[0]))
        time.sleep(1)                       # alive while the others try
    except RegistryError as e:
        queue.put((name, str(e)))


def test_bits_are_assigned_atomically_across_processes(redis_server):
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    names = [f"m{i}" for i in range(12)] + ["twin", "twin"]
    procs = [ctx.Process(target=_register, args=(redis_server.url, "rb", n, q)) for n in names]
    for p in procs:
        p.start()
    got = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    bits = [b for n, b in got if isinstance(b, int)]
    assert len(bits) == len(set(bits)) == 13 and set(bits) == set(range(13))
    refused = [b for n, b in got if not isinstance(b, int)]
    assert len(refused) == 1 and "module twin is already attached to run rb" in refused[0]


def test_a_twin_on_this_host_is_refused_at_once(redis_server):
    """A second process of a module whose first is alive here is refused without waiting: a
    wait could outlast the first, and the second would start its run again over its output."""
    from flowsift.registry.redis import RedisRegistry
    from flowsift.registry import RegistryError
    code = ("from flowsift.registry.redis import RedisRegistry; import time; "
            f"r = RedisRegistry({redis_server.url!r}, 'rt', role='module'); print(r.register('solo')[0], flush=True); "
            "time.sleep(30)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "0"
        reg = RedisRegistry(redis_server.url, "rt", role="module")
        began = time.monotonic()
        with pytest.raises(RegistryError, match="already attached"):
            reg.register("solo", wait=20)
        assert time.monotonic() - began < 5
    finally:
        p.kill()
        p.wait()


def test_a_dead_module_is_noticed_by_its_heartbeat(redis_server):
    from flowsift.registry.redis import RedisRegistry
    env = dict(os.environ, FLOWSIFT_HEARTBEAT_TTL_MS="600")
    code = ("from flowsift.registry.redis import RedisRegistry; import time; "
            f"r = RedisRegistry({redis_server.url!r}, 'rh', role='module'); print(r.register('ghost')[0], flush=True); "
            "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    bit = int(p.stdout.readline())
    reg = RedisRegistry(redis_server.url, "rh")
    assert reg.alive_bits([bit]) == {bit: True}
    p.kill()
    p.wait()
    wait_until(lambda: reg.alive_bits([bit]) == {bit: False}, timeout=5)


def test_stale_keys_of_a_crashed_run_never_break_a_new_one(tmp_path, corpus, redis_server):
    url, r = redis_server.url, redis_server.client()
    cap = corpus / "http__tcpflow__jpegs.cap"
    # a gateway waiting for a module that never comes, killed: its keys stay behind
    for run in ("rs", "rc"):
        gw = flowsift("gateway", cap, "--registry", url, "--run", run, "--expect", "nobody",
                      "--store", tmp_path / run)           # a killed gateway's store stays: not in /dev/shm
        wait_until(lambda: r.hget(f"flowsift:{{{run}}}:meta", "state") == "complete")
        os.kill(gw.pid, signal.SIGKILL)
        gw.wait()
        assert r.exists(f"flowsift:{{{run}}}:conns")
    # the same run id again: the stale keys are cleared, the run works
    res = run_cli("chain", "counter", cap, "--registry", url, "--json")   # another run alongside
    assert res.returncode == 0, res.stderr
    gw = flowsift("gateway", cap, "--registry", url, "--run", "rs", "--json")
    out, err = finish(gw)
    assert "removed the stale keys of an earlier run rs" in err
    assert json.loads(out)["run"] == "rs"
    # --cleanup removes a dead run's keys; a run that does not exist is one line, exit 2
    res = run_cli("gateway", "--registry", url, "--cleanup", "rc", "--json", check=True)
    assert json.loads(res.stdout)["keys_removed"] > 5
    assert r.keys("flowsift:*") == []
    res = run_cli("gateway", "--registry", url, "--cleanup", "nosuch")
    assert res.returncode == 2 and res.stderr.strip() == (
        f"flowsift: no run nosuch in {url}: no key of it is left to remove (a run that ended cleanly leaves none)")
    for blank in ("", " "):
        res = run_cli("gateway", "--registry", url, "--cleanup", blank)
        assert res.returncode == 2 and res.stderr.strip() == (
            f"flowsift: gateway: run name {blank!r}: a run is named by at least one character that is not a space")
    res = run_cli("gateway", corpus / "http__zeek__get.pcap", "--registry", url, "--cleanup", "nosuch")
    assert res.returncode == 2 and res.stderr.strip() == "flowsift: gateway: --cleanup removes a run's keys: give no SOURCE with it"


def test_cleanup_refuses_a_live_run(tmp_path, corpus, redis_server):
    url, r = redis_server.url, redis_server.client()
    gw = flowsift("gateway", corpus / "http__tcpflow__jpegs.cap", "--registry", url, "--run", "rl", "--expect", "nobody")
    try:
        wait_until(lambda: r.hget("flowsift:{rl}:meta", "state") == "complete")
        res = run_cli("gateway", "--registry", url, "--cleanup", "rl")
        assert res.returncode == 2 and "run rl is live" in res.stderr
        before = sorted(r.keys("flowsift:*"))
        res = run_cli("gateway", corpus / "http__tcpflow__jpegs.cap", "--registry", url, "--run", "rl",
                      "--store", tmp_path / "dup")
        assert res.returncode == 2 and "run rl is live" in res.stderr
        # refused before it made its store: a retry with the same --store is not taken for a later run's
        assert not (tmp_path / "dup").exists()
        # refused, it once removed the live run's keys on its way out; and a run named r* ended
        # by deleting what r* matched as a pattern
        res = run_cli("gateway", corpus / "http__zeek__get.pcap", "--registry", url, "--run", "r*")
        assert res.returncode == 0, res.stderr
        assert sorted(r.keys("flowsift:*")) == before and r.hget("flowsift:{rl}:meta", "state") == "complete"
    finally:
        gw.send_signal(signal.SIGINT)
        gw.wait(timeout=30)
    assert r.keys("flowsift:*") == []          # interrupted is still a clean exit


def test_unreachable_registry_is_one_line_exit_2(corpus, redis_server):
    port = redis_server.port
    redis_server.stop()
    url = f"redis://127.0.0.1:{port}/0"
    for args in (("gateway", corpus / "http__tcpflow__jpegs.cap", "--registry", url),
                 ("module", "counter", "--registry", url),
                 ("chain", "counter", corpus / "http__tcpflow__jpegs.cap", "--registry", url)):
        res = run_cli(*args)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"flowsift: cannot reach Redis at {url}"), res.stderr
    res = run_cli("module", "counter", "--registry", "http://localhost/")
    assert res.returncode == 2 and "expected redis://" in res.stderr


@pytest.mark.parametrize("url,words", [("redis://[::1", "Invalid IPv6 URL"), ("redis://:secret@[::1", "Invalid IPv6"),
                                       ("redis://localhost:abc/0", "Port could not be cast"),
                                       ("redis://localhost:99999/0", "Port out of range"),
                                       # (redis-py took these for db 0)
                                       ("redis://:secret@localhost:6379/abc", "the path '/abc' names the database"),
                                       ("unix:///tmp/no.sock?db=x", "db='x' names the database")])
def test_a_registry_url_that_does_not_parse_is_a_usage_error(corpus, url, words):
    # urllib's ValueError came out as an internal error, exit 1
    for args in (("gateway", corpus / "http__tcpflow__jpegs.cap"), ("module", "counter")):
        res = run_cli(*args, "--registry", url)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "expected redis://" in lines[0], res.stderr
        assert "secret" not in res.stderr


def test_an_attached_module_checks_its_options_and_events_file_before_waiting(tmp_path, redis_server):
    # no gateway runs: each waited (for ever by default) before saying what was wrong
    url = redis_server.url
    for args, line in ((("strsearch(patterns=inline:)",), "module strsearch: no patterns"),
                       (("counter", "--events", tmp_path / "nodir" / "e.jsonl"), "cannot write events"),
                       (("counter", "--wait", "-1"), "--wait -1: seconds, 0 or more"),
                       (("counter", "--wait", "-2h"), "--wait -2h: seconds, 0 or more")):
        t0 = time.monotonic()
        res = run_cli("module", *args, "--registry", url, *([] if "--wait" in args else ["--wait", "5"]))
        assert res.returncode == 2 and line in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert time.monotonic() - t0 < 4


def test_passwords_and_acl_users(tmp_path, corpus):
    cap = corpus / "http__tcpflow__jpegs.cap"
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    try:
        admin = server.client(password="s3cret")
        admin.execute_command("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "bob", "on", ">bobpw", "~flowsift:*", "&*", "+@all", "-@admin")
        port = server.port
        # right password (default user), right ACL user: the chain runs
        for auth in ("s3cret", "alice:alicepw"):
            res = run_cli("chain", "counter", cap, "--registry", f"redis://{':' if ':' not in auth else ''}{auth}@127.0.0.1:{port}/0", "--json")
            assert res.returncode == 0, res.stderr
        # wrong passwords: one line naming the user, password not shown
        for auth, user in ((":nope", "default"), ("alice:nope", "alice")):
            res = run_cli("module", "counter", "--registry", f"redis://{auth}@127.0.0.1:{port}/0")
            assert res.returncode == 2
            line = res.stderr.strip()
            assert line == (f"flowsift: Redis at redis://{auth.split(':')[0]}:***@127.0.0.1:{port}/0 refused user "
                            f"'{user}': wrong password or no such user"), line
        res = run_cli("module", "counter", "--registry", f"redis://127.0.0.1:{port}/0")
        assert res.returncode == 2 and "needs a password" in res.stderr
        # notifications off and a user that may not turn them on: say exactly what to configure
        admin.config_set("notify-keyspace-events", "")
        res = run_cli("module", "counter", "--registry", f"redis://bob:bobpw@127.0.0.1:{port}/0")
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
        assert "'notify-keyspace-events Kh' in redis.conf" in res.stderr and "user 'bob'" in res.stderr
        assert "a hash written as a probe was not announced" in res.stderr
        # on, and a user who may not read the setting: it was refused as if they were off
        admin.config_set("notify-keyspace-events", "Kh")
        admin.execute_command("ACL", "SETUSER", "nonotify", "on", ">npw", "~*", "&*", "+@all", "-config")
        res = run_cli("chain", "http,counter", cap, "--registry", f"redis://nonotify:npw@127.0.0.1:{port}/0", "--json")
        assert res.returncode == 0, res.stderr
        assert admin.keys("flowsift:*") == []
        admin.config_set("notify-keyspace-events", "")
        # a user who may: flowsift turns them on
        res = run_cli("chain", "counter", cap, "--registry", f"redis://alice:alicepw@127.0.0.1:{port}/0", "--json")
        assert res.returncode == 0, res.stderr
        assert "K" in admin.config_get("notify-keyspace-events")["notify-keyspace-events"]
    finally:
        server.stop()


def test_redis_down_and_restarted_while_the_gateway_reads(tmp_path, corpus, redis_server, slow, expected):
    """The server goes away between two batches of the source and comes back empty half a second
    later: the gateway waits with back-off, rebuilds the run from the store and goes on."""
    import threading
    from flowsift.gateway import Gateway
    from flowsift.registry import open_registry
    events = tmp_path / "slow.jsonl"
    reg = open_registry(redis_server.url, "rd")
    g = Gateway(tmp_path / "store", registry=reg)
    reg.start_run({"store": g.store_dir, "source": str(corpus / CAPTURE)})
    g.expect(["slow"])
    m = flowsift("module", slow, "--registry", redis_server.url, "--run", "rd", "--events", events, "--json",
                 "--wait", "30", env={"SLOW_CLOSE": "0"})
    r = redis_server.client()
    wait_until(lambda: r.exists("flowsift:{rd}:alive:0"))      # attached before the outage
    batches = []

    def after_batch(touched, closed):
        batches.append(len(touched))
        if len(batches) == 3:
            redis_server.stop()
            threading.Timer(0.5, redis_server.start).start()

    g.run_capture(corpus / CAPTURE, after_batch=after_batch)
    reg.set_state("complete", connections=len(g.announced))
    g.wait_for_modules()
    reg.end_run()
    assert len(batches) > 4 and reg.rebuilt == 1 and reg.outages >= 1
    out, err = finish(m)
    assert strip(read_events(events)) == strip(expected[0])
    assert json.loads(out)["modules"]["slow"] == expected[1]
    assert redis_server.client().keys("flowsift:*") == []


STATEFUL = textwrap.dedent('''
    import time
    from flowsift.modules import CrossFlow, Global, Module

    class PerSource(Module):
        """Packets and connections per client address, slowly.

        Synopsis: per_source
        """
        name = "per_source"
        by_source = CrossFlow(key=("ip.src",))
        totals = Global()

        def on_packet(self, flow, record):
            flow.state["pkts"] = flow.state.get("pkts", 0) + 1

        def on_close(self, flow, reason):
            time.sleep(0.02)
            e = self.by_source[flow]
            e["conns"] = e.get("conns", 0) + 1
            e["pkts"] = e.get("pkts", 0) + flow.state.get("pkts", 0)
            self.totals["conns"] = self.totals.get("conns", 0) + 1
            self.count("closed")
            # running tallies: right only if connections end in the order they end for `chain`
            self.emit("tally", source_conns=e["conns"], source_pkts=e["pkts"], total=self.totals["conns"])
''')


def test_an_attached_module_keeps_its_declared_state_through_kill_9(tmp_path, corpus, redis_server):
    """Attached while the gateway runs, killed, restarted: the module replays the batch log from
    its checkpoint, so even events computed from cross-flow state as connections end (running
    tallies) are those of `flowsift chain`, whatever the timing."""
    import io
    path = tmp_path / "per_source.py"
    path.write_text(STATEFUL)
    spec = f"{path}:PerSource"
    ref_events = io.StringIO()
    ref = run_chain(spec, str(corpus / CAPTURE), events=ref_events, inline=True, strict=True)
    url, r = redis_server.url, redis_server.client()
    events = tmp_path / "e.jsonl"
    gw = flowsift("gateway", corpus / CAPTURE, "--registry", url, "--run", "rs9", "--expect", "per_source", "--json")
    m1 = flowsift("module", spec, "--registry", url, "--run", "rs9", "--events", events, "--json", "--wait", "30")
    wait_until(lambda: r.exists("flowsift:{rs9}:ckpt:0") and sum(1 for _ in open(events)) >= 40)
    assert m1.poll() is None
    os.kill(m1.pid, signal.SIGKILL)
    m1.wait()
    m2 = flowsift("module", spec, "--registry", url, "--run", "rs9", "--events", events, "--json")
    out, _ = finish(m2)
    finish(gw)
    got = json.loads(out)
    assert got["resumed"] and got["modules"]["per_source"]["closed"] == 108 and got["batch_log_gaps"] == 0
    entries = lambda st: (sorted((k, v) for k, v, _ in st["by_source"]["crossflow"]), st["totals"])
    # the state from before the kill came back from the checkpoint: the totals are whole
    assert entries(got["state"]["per_source"]) == entries(ref["state"]["per_source"])
    assert got["state"]["per_source"]["totals"] == {"value": {"conns": 108}}
    tallies = lambda lines: sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "ts"}, sort_keys=True)
                                   for l in lines)
    want = tallies(ref_events.getvalue().splitlines())
    assert len(want) == 108 and tallies(open(events)) == want


def test_the_batch_log_is_trimmed_below_what_every_module_committed(redis_server):
    """The gateway trims the log every 64 batches, below the lowest batch every registered
    module has committed; not while a module it waits for (--expect) has not registered; a
    module whose entries are gone is told so (it reads the files instead)."""
    from flowsift.registry.redis import RedisRegistry
    gw = RedisRegistry(redis_server.url, "rt")
    gw.start_run({"store": "/nowhere", "source": "x"})
    reserved = gw.reserve("late")                        # expected, not attached yet
    a = RedisRegistry(redis_server.url, "rt", role="module")
    bit_a = a.register("a")[0]
    key = "flowsift:{rt}:batches"

    def batches(first, last):
        for seq in range(first, last + 1):
            gw.sync([(seq, f"tcp 10.0.0.1:{seq} 10.0.0.2:80 c{seq:08d}.rec")], [],
                    (seq, [seq], [], [(seq, 1, 0, 10, 0)]))
    batches(1, 64)
    a.commit_many(bit_a, [], None, '{"seq": 50}', 50)
    batches(65, 128)                                     # at 128: "late" has not registered
    r = redis_server.client()
    assert r.xlen(key) == 128
    late = RedisRegistry(redis_server.url, "rt", role="module")
    assert late.register("late") == (reserved, True)
    late.commit_many(reserved, [], None, '{"seq": 100}', 100)
    entries, lost = late.batches_after(100, count=3)
    assert [e[0] for e in entries] == [101, 102, 103] and not lost
    assert entries[0][1:] == ([101], [], {101: (1, 0, 10, 0)})
    batches(129, 192)                                    # at 192: trimmed below batch 51 (a's)
    assert r.xlen(key) == 192 - 50
    assert a.batches_after(50, count=1) == ([(51, [51], [], {51: (1, 0, 10, 0)})], False)
    assert a.batches_after(10, count=1)[1] is True       # entries 11.. are gone: said, not skipped
    gw.end_run()
    assert r.keys("flowsift:*") == []


def test_a_run_cleaned_up_under_an_attached_module_stays_gone(tmp_path, corpus, redis_server, slow):
    """Gateway killed, run cleaned up while its module still worked: the module's next commit
    found its keys gone, took them for a restarted server's and wrote them again. '--cleanup'
    then said 'no run', and the next run of the name waited for ever on the old module's bit.
    The module now waits for the gateway to put the run back; none comes: it stops."""
    url, r = redis_server.url, redis_server.client()
    gw = flowsift("gateway", corpus / CAPTURE, "--registry", url, "--run", "rg", "--expect", "slow",
                  "--store", tmp_path / "store")             # (a killed gateway's store stays: not in /dev/shm)
    wait_until(lambda: r.hget("flowsift:{rg}:meta", "state") == "complete")
    events = tmp_path / "slow.jsonl"
    m = flowsift("module", slow, "--registry", url, "--run", "rg", "--events", events,
                 env={"FLOWSIFT_HEARTBEAT_TTL_MS": "1000"})
    wait_until(lambda: closed_events(events) >= 10, procs=(m,))
    os.kill(gw.pid, signal.SIGKILL)
    gw.wait()
    res = run_cli("gateway", "--registry", url, "--cleanup", "rg", "--json")
    assert res.returncode == 0, res.stderr
    out, err = m.communicate(timeout=60)
    assert m.returncode == 2 and "its keys are gone and its gateway did not put them back" in err
    assert r.keys("flowsift:{rg}:*") == []
    res = run_cli("gateway", "--registry", url, "--cleanup", "rg")
    assert res.returncode == 2 and "no run rg" in res.stderr


def test_an_attached_module_leaves_when_its_gateway_is_killed(tmp_path, corpus, redis_server, slow):
    """A gateway killed outright leaves its run "running" in the registry: the module waited
    for ever. Its heartbeat (here, its process) tells it is gone."""
    url, r = redis_server.url, redis_server.client()
    events = tmp_path / "slow.jsonl"
    # (--store under tmp_path: a killed gateway cannot remove its store)
    gw = flowsift("gateway", corpus / CAPTURE, "--registry", url, "--run", "rk", "--expect", "slow",
                  "--store", tmp_path / "store", env={"FLOWSIFT_BATCH": "1"})
    m = flowsift("module", slow, "--registry", url, "--run", "rk", "--events", events, "--json",
                 env={"SLOW_CLOSE": "0.1"})
    wait_until(lambda: closed_events(events) >= 2, procs=(gw, m))
    os.kill(gw.pid, signal.SIGKILL)
    gw.wait()
    killed = time.monotonic()
    assert r.hget("flowsift:{rk}:meta", "state") == "running"
    out, err = m.communicate(timeout=30)
    assert m.returncode == 2 and "run rk ended (its gateway is gone) before module slow finished" in err
    # on this host its process is checked at each wait: not the heartbeat's 5 s and 6 s of grace
    assert time.monotonic() - killed < 3
    # --json: what it did, its error saying why it stopped (it printed nothing)
    summary = json.loads(out)
    assert "its gateway is gone" in summary["error"] and summary["modules"]["slow"]["connections"] >= 2


RAISER = textwrap.dedent('''
    from flowsift.modules import Module

    class Raiser(Module):
        """Fails at the first connection end.

        Synopsis: raiser
        """
        name = "raiser"

        def on_close(self, flow, reason):
            raise ValueError("no")
''')


def test_a_strict_module_that_stops_with_registry_is_not_started_again(tmp_path, corpus, redis_server):
    # it stopped on purpose (exit 2): it was restarted 100 times, each time failing the same
    mod = tmp_path / "raiser.py"
    mod.write_text(RAISER)
    res = run_cli("chain", mod, corpus / CAPTURE, "--registry", redis_server.url, "--strict", "--events", "/dev/null")
    assert res.returncode == 2
    assert "restarting" not in res.stderr and res.stderr.count("module raiser: on_close() raised ValueError: no") == 1
    assert f'File "{mod}", line 12, in on_close' in res.stderr        # the module's frame, as without --registry


def test_a_registry_chain_stopped_by_ctrl_c_keeps_the_events_it_made(tmp_path, corpus, redis_server, slow):
    # the modules' events were copied only after a clean end, and their files removed
    events = tmp_path / "events.jsonl"
    proc = flowsift("chain", slow, corpus / CAPTURE, "--registry", redis_server.url, "--events", events,
                    env={"FLOWSIFT_BATCH": "1", "SLOW_CLOSE": "0.05"})
    r = redis_server.client()
    wait_until(lambda: any(int(v) >= 5 for k in r.keys("flowsift:*:done:*") for v in [r.hlen(k)]), procs=(proc,))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().endswith("flowsift: interrupted"), err
    got = read_events(events)
    assert sum(e["kind"] == "closed" for e in got) >= 5


def test_a_module_attached_late_beside_another_counts_what_it_missed(tmp_path, corpus, redis_server, slow, expected):
    """A second module attached while the first was at work: the files the first had finished
    were gone already, and the late module's report of them as missed crashed the gateway
    (KeyError in the store). Both now finish; the first's output is as without the late one."""
    url, r = redis_server.url, redis_server.client()
    store = tmp_path / "store"
    gw = flowsift("gateway", corpus / CAPTURE, "--registry", url, "--run", "rl2", "--expect", "slow",
                  "--store", store, "--json")
    events = tmp_path / "slow.jsonl"
    first = flowsift("module", slow, "--registry", url, "--run", "rl2", "--events", events, "--json", "--wait", "30",
                     env={"SLOW_CLOSE": "0.05"})
    # the gateway has retired files the first module finished (most connections end with the
    # capture: the first module is then at work for seconds)
    wait_until(lambda: r.hget("flowsift:{rl2}:meta", "state") == "complete" and len(list(store.glob("*.rec"))) < 108,
               procs=(gw, first))
    late = flowsift("module", "counter", "--registry", url, "--run", "rl2", "--events", tmp_path / "c.jsonl", "--json")
    lsum = json.loads(finish(late)[0])
    fsum = json.loads(finish(first)[0])
    gsum = json.loads(finish(gw)[0])
    assert lsum["connections"] == 108 and 1 <= lsum["modules"]["counter"]["missed_connections"] < 108
    assert lsum["modules"]["counter"]["flows"] == 108 - lsum["modules"]["counter"]["missed_connections"]
    want_events, want_counters = expected
    assert strip(read_events(events)) == strip(want_events) and fsum["modules"]["slow"] == want_counters
    assert gsum["module_progress"] == {"slow": 108, "counter": 108}
    assert r.keys("flowsift:*") == []


def test_a_registry_gateway_says_its_default_store_is_gone_and_gives_its_summary_when_redis_is_lost(
        tmp_path, corpus, redis_server):
    url, r = redis_server.url, redis_server.client()
    cap = corpus / "http__zeek__get.pcap"
    # the default store is removed at the end (unless --keep): the summary named a directory gone
    res = run_cli("gateway", cap, "--registry", url, "--json", check=True)
    assert json.loads(res.stdout)["store"] is None
    res = run_cli("gateway", cap, "--registry", url, "--json", "--keep", check=True)
    kept = json.loads(res.stdout)["store"]
    assert kept and os.path.isfile(os.path.join(kept, "store.json"))
    import shutil
    shutil.rmtree(kept)
    # the registry lost for good while the gateway waits for a module: --json printed nothing
    gw = flowsift("gateway", cap, "--registry", url, "--run", "lost", "--expect", "nobody", "--json",
                  env={"FLOWSIFT_REGISTRY_RETRY": "1"})
    wait_until(lambda: r.hget("flowsift:{lost}:meta", "state") == "complete", procs=(gw,))
    redis_server.stop()
    out, err = gw.communicate(timeout=60)
    assert gw.returncode == 2 and err.strip().splitlines()[-1].startswith("flowsift: lost Redis at"), err
    summary = json.loads(out)
    assert summary["error"].startswith("lost Redis at") and summary["run"] == "lost" and summary["packets"] > 0


def test_an_attached_module_writes_its_events_to_a_device(corpus, redis_server):
    # a file that cannot be cut back (to what was committed) gets its lines after each commit,
    # as standard output does: /dev/null was an internal error (ftruncate: invalid argument)
    url = redis_server.url
    gw = flowsift("gateway", corpus / "http__tcpflow__jpegs.cap", "--registry", url, "--run", "rn",
                  "--expect", "counter")
    res = None
    try:
        res = run_cli("module", "counter", "--registry", url, "--run", "rn", "--events", "/dev/null", "--json",
                      "--wait", "30")
        assert res.returncode == 0, res.stderr
    finally:
        if res is None or res.returncode:
            gw.terminate()          # (it would wait for ever for its module)
            gw.wait(timeout=60)
    finish(gw)
    assert json.loads(res.stdout)["events"] == 19


@pytest.mark.parametrize("let_go", ["while the other runs", "after the run"])
def test_a_module_held_up_and_taken_over_says_so_and_writes_nothing(tmp_path, corpus, redis_server, slow, expected,
                                                                     let_go):
    """Stopped (SIGSTOP) past its heartbeat, its bit taken over by a second process of it, then
    let go: it said its run's keys were gone (the run cleaned up, or its gateway dead) though
    the run was alive; it could also have written into the events file the other now writes."""
    url, r = redis_server.url, redis_server.client()
    fast = {"FLOWSIFT_HEARTBEAT_TTL_MS": "1000"}
    gw = flowsift("gateway", corpus / CAPTURE, "--registry", url, "--run", "rto", "--expect", "slow",
                  "--store", tmp_path / "store", env=fast)
    events = tmp_path / "slow.jsonl"
    first = flowsift("module", slow, "--registry", url, "--run", "rto", "--events", events, "--json", env=fast)
    try:
        wait_until(lambda: r.exists("flowsift:{rto}:ckpt:0"), procs=(gw, first))
        os.kill(first.pid, signal.SIGSTOP)
        wait_until(lambda: not r.exists("flowsift:{rto}:alive:0"), timeout=10)
        second = flowsift("module", slow, "--registry", url, "--run", "rto", "--events", events, "--json",
                          env=dict(fast, SLOW_CLOSE="0.03"))
        wait_until(lambda: str(second.pid) in (r.get("flowsift:{rto}:alive:0") or ""), procs=(second,))
        if let_go == "after the run":
            finish(second)
            finish(gw)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 2, err
    if let_go == "after the run":
        assert "another process of it may have taken its bit over and finished" in err, err
    else:
        assert f"module slow was taken over by another process of it (pid {second.pid}" in err, err
        finish(second)
        finish(gw)
    assert json.loads(out)["error"] in err
    # what the second wrote is whole: the first wrote nothing more into it
    assert strip(read_events(events)) == strip(expected[0])


def test_one_server_restart_is_one_outage_and_one_rebuild(redis_server):
    """A module's subscription that saw the server go counted the outage, its ping that found
    the server down counted it again, and the module wrote its keys again after each: 2 and 2
    for one restart (the gateway said 1 and 1)."""
    import redis
    from flowsift.registry.redis import RedisRegistry
    gw = RedisRegistry(redis_server.url, "r1o")
    gw.start_run({"store": "/nowhere", "source": "x"})
    reg = RedisRegistry(redis_server.url, "r1o", role="module")
    bit = reg.register("m")[0]
    reg.on_reconnect = lambda: reg.restore_module(bit, "m", {1: 3}, {}, None)
    reg.subscribe()
    redis_server.client().flushall()                    # what a restart without persistence leaves

    def fail_once(real):
        calls = []

        def call(*a, **kw):
            calls.append(1)
            if len(calls) == 1:
                raise redis.ConnectionError("Connection refused")
            return real(*a, **kw)
        return call
    # the subscription sees the server gone, and so does the first ping after it
    reg._pubsub.get_message = fail_once(reg._pubsub.get_message)
    reg.r.ping = fail_once(reg.r.ping)
    assert reg.wait(0.1) is None
    reg.restore_module(bit, "m", {1: 3}, {}, None)      # what the module does after an outage
    assert (reg.outages, reg.rebuilt) == (1, 1)
    assert redis_server.client().hgetall("flowsift:{r1o}:done:0") == {"1": "3"}


@pytest.mark.parametrize("stop,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("as_json", [True, False])
def test_a_stop_while_the_gateway_waits_for_an_expected_module_still_gives_its_summary(tmp_path, corpus, redis_server,
                                                                                      stop, code, as_json):
    """Ctrl-C ends the wait for a module that never attaches cleanly: every connection was read
    and the store is complete, so the summary goes out (saying what ended the wait, and for
    whom) before the line and exit 130 (it printed nothing)."""
    store = tmp_path / "store"
    proc = flowsift("gateway", corpus / CAPTURE, "--registry", redis_server.url, "--expect", "http", "--store", store,
                    *(["--json"] if as_json else []))

    def read_whole():
        try:
            return json.loads((store / "store.json").read_text())["complete"]
        except (OSError, ValueError):
            return False
    wait_until(read_whole, procs=(proc,))
    time.sleep(0.3)                     # (well into the wait)
    proc.send_signal(stop)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.strip().endswith("interrupted" if code == 130 else "terminated"), err
    if as_json:
        s = json.loads(out)
        assert s["wait_interrupted"] == {"by": signal.Signals(stop).name, "modules": ["http"]}
        assert s["error"] is None and s["store"] == str(store) and s["files"] == 108
        assert s["module_progress"] == {"http": 0}
    else:
        assert f"ended by {signal.Signals(stop).name}, for http" in out and str(store) in out
    assert redis_server.client().keys("flowsift:*") == []        # the run's keys went all the same


def test_expected_module_names_are_checked(corpus):
    """A mistyped or doubled --expect name was taken, and the gateway waited for ever for a
    module that could not come."""
    cap = corpus / "http__zeek__get.pcap"
    for names, words in (("htpp", "--expect htpp: no module is named htpp; did you mean http?"),
                         ("http,counter,http", "--expect names module http twice"),
                         ("./mine.py:Mine", "modules are expected by name")):
        # (refused before the registry is reached: this one does not exist)
        res = run_cli("gateway", cap, "--registry", "redis://127.0.0.1:1/0", "--expect", names)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and words in res.stderr, res.stderr
    # a name no module flowsift knows may be a module file's: said, not refused
    from flowsift.remote import expected_names
    said = []
    assert expected_names("http, mine", on_status=said.append) == (["http", "mine"], ["mine"])
    assert len(said) == 1 and "--expect mine: not a module flowsift knows" in said[0]


def _cmdlines():
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return out


def test_a_registry_password_stays_off_command_lines(tmp_path, corpus):
    """chain --registry started its module processes with the URL, password and all, on their
    command lines, for anyone's ps to show. The password now goes in their environment, where
    a user may put it too (FLOWSIFT_REGISTRY_PASSWORD)."""
    server = RedisServer(tmp_path, "--requirepass", "pw-in-ps")
    proc = None
    try:
        plain = f"redis://127.0.0.1:{server.port}/0"
        proc = flowsift("chain", "counter", corpus / CAPTURE, "--registry",
                        f"redis://:pw-in-ps@127.0.0.1:{server.port}/0", "--events", "/dev/null")
        started = wait_until(lambda: [c for c in _cmdlines() if " module counter " in c and str(server.port) in c],
                             procs=(proc,))
        # (the module process authenticates with the password from its environment)
        assert "pw-in-ps" not in started[0] and plain in started[0]
        finish(proc)
        res = run_cli("module", "counter", "--registry", plain)
        assert res.returncode == 2 and "FLOWSIFT_REGISTRY_PASSWORD" in res.stderr
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)         # (a clean exit: its store and keys go)
            proc.wait(timeout=60)
        server.stop()


@pytest.mark.parametrize("signame,code,said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_registry_chain_stopped_by_a_group_signal_keeps_its_events_and_leaves_nothing(tmp_path, corpus, redis_server,
                                                                                       slow, signame, code, said):
    """Ctrl-C in a terminal and `systemctl stop` signal the whole group: each module process said
    its own line (or died and was started again), and the chain's cleaning up, cut by a signal
    that came late or twice, left the run's keys, its directory of module events (the events
    lost with it) and tracebacks."""
    events, tmp = tmp_path / "events.jsonl", tmp_path / "tmp"
    tmp.mkdir()
    proc = flowsift("chain", f"{slow},counter", corpus / CAPTURE, "--registry", redis_server.url, "--events", events,
                    env={"FLOWSIFT_BATCH": "1", "SLOW_CLOSE": "0.05", "TMPDIR": str(tmp)}, start_new_session=True)

    def written():
        # the slow module's events so far, in the chain's directory for them
        return sum(closed_events(p) for p in tmp.glob("flowsift-chain-*/0.jsonl"))
    wait_until(lambda: written() >= 5, procs=(proc,))
    before = written()
    os.killpg(proc.pid, getattr(signal, signame))
    time.sleep(0.05)
    os.killpg(proc.pid, getattr(signal, signame))       # a second one while it cleans up changes nothing
    _, err = proc.communicate(timeout=60)
    said_else = [line for line in err.splitlines() if "; waiting for " not in line]     # (the source may be done)
    assert proc.returncode == code and said_else == [f"flowsift: {said}"], err
    assert sum(e["kind"] == "closed" for e in read_events(events)) >= before
    assert redis_server.client().keys("*") == []
    assert list(tmp.iterdir()) == []
    left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert left == []
