"""Re-sharding a running run: flows move between shards with their reassembly and module state."""
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import run_cli
from flowsift.io.shard import BUCKETS, bucket_of, initial_table, packet_buckets, reshard_table
from test_state import KILLING_BUILTINS, TALLY, same_output


def test_reshard_table_moves_only_what_it_must():
    two = initial_table(2)
    three = reshard_table(two, 3)
    assert np.bincount(three).tolist() == [BUCKETS // 3 + (k < BUCKETS % 3) for k in range(3)]   # even shares
    moved = np.flatnonzero(three != two)
    assert len(moved) == np.count_nonzero(three == 2)           # only what the new shard takes
    assert set(two[moved].tolist()) == {0, 1}                    # from both old shards
    back = reshard_table(three, 1)
    assert not back.any()
    again = reshard_table(three, 2)
    assert np.array_equal(again, reshard_table(three, 2))       # every shard works out the same
    assert np.count_nonzero(again != three) == np.count_nonzero(three == 2)


def _batches(path):
    from flowsift.io import Decoder, decoded_batches, open_capture
    return decoded_batches(open_capture(str(path), None), Decoder(), None, None)


def test_bucket_of_a_flow_is_the_bucket_of_its_packets(corpus):
    from flowsift.reassembly import Reassembler
    for name in ("ipv6__csanders__http_ip4and6.pcapng", "frag__suri__frag-eth-vlan-ipv6-tcp.pcap",
                 "tls__suri__tls-subjectaltname.pcap"):
        r = Reassembler()
        seen = {}
        for batch in _batches(corpus / name):
            a = batch.array
            buckets = packet_buckets(batch)
            for k in np.flatnonzero((a["status"] == 0) & (a["ipver"] != 0)):
                key = frozenset((bytes(a["src"][k]), bytes(a["dst"][k])))
                assert bucket_of(bytes(a["src"][k]), bytes(a["dst"][k])) == buckets[k]
                seen[key] = int(buckets[k])
            r.feed(batch)
        live = r.flows.live()
        assert live
        for _, x, y in live:
            assert bucket_of(x, y) == seen[frozenset((x, y))]


def _stream_hash(rf, d, end):
    # the delivered bytes only: gaps are holes in the file (a 5 GB one in the wrap capture)
    h, at = hashlib.sha256(), 0
    for g in rf.gaps(d):
        if g.offset > at:
            h.update(bytes(rf.data(d, at, g.offset - at)))
        at = max(at, g.offset + g.length)
    if end > at:
        h.update(bytes(rf.data(d, at, end - at)))
    return h.hexdigest()


def _files(store):
    from flowsift.streams import RecordFile
    out = {}
    for n in os.listdir(store):
        if not n.endswith(".rec"):
            continue
        with RecordFile(os.path.join(store, n)) as rf:
            h = rf.header
            ids = rf.record_array()["record_id"].tolist() if h["records"] else []
            out[(h["client_addr"], h["client_port"], h["server_addr"], h["server_port"], h["first_ts"])] = (
                h["records"], h["gaps"], [tuple(g) for g in rf.gaps()], h["close0"], h["close1"],
                [_stream_hash(rf, d, h[f"end{d}"]) for d in (0, 1)],
                [i - h["first_record_id"] for i in ids])
    return out


def _split_run(path, tmp, at, stats):
    """One gateway, or (at >= 0) two: every flow and half-rebuilt datagram of the first handed
    to the second before batch `at`."""
    from flowsift.gateway import Gateway
    gs = [Gateway(tmp / f"s{at}.{k}", keep=True) for k in range(2)]
    g = gs[0]
    for n, batch in enumerate(_batches(path)):
        if n == at:
            to = gs[1]
            for i, _, _ in g.reassembler.flows.live():
                rec = g.reassembler.engine.export_flow(i)
                st = g.store.export_conn(i) if rec.get("open") else None
                for chunks, ring in rec.get("dirs", ()):
                    stats["chunks"] += len(chunks)
                    stats["rings"] += ring is not None
                stats["open"] += bool(st)
                j = to.reassembler.engine.import_flow(rec)
                if st:
                    to.store.adopt_conn(j, *st)
            for i, _, _ in g.reassembler.defrag.pending_addresses():
                to.reassembler.defrag.import_datagram(g.reassembler.defrag.export_datagram(i))
                stats["datagrams"] += 1
            g = to
        g.reassembler.feed(batch)
        g.store.publish()
    totals, files = {}, {}
    for x in gs:
        x.reassembler.finish()
        x.store.publish()
        for k, v in x.reassembler.engine.totals().items():
            totals[k] = totals.get(k, 0) + v if not isinstance(v, dict) else \
                {c: totals.get(k, {}).get(c, 0) + v.get(c, 0) for c in set(v) | set(totals.get(k, {}))}
        files.update(_files(x.store_dir))
        shutil.rmtree(x.store_dir)
    return totals, files


def test_a_gateway_hands_its_flows_over_whole(corpus, tmp_path, monkeypatch):
    """Every corpus capture, cut at three places: what two gateways write, one before and one
    after the handover, is what one gateway writes alone -- connections, gaps, closes, stream
    bytes, records and their ids."""
    monkeypatch.setenv("FLOWSIFT_BATCH", "8")
    stats = dict(chunks=0, rings=0, open=0, datagrams=0)
    for path in sorted(corpus.glob("*.pcap*")):
        one = _split_run(path, tmp_path, -1, stats)
        for at in (1, 3, 9):
            assert _split_run(path, tmp_path, at, stats) == one, (path.name, at)
    # the handovers carried connections in the middle of things: held out-of-order bytes,
    # delivered bytes still compared with retransmissions, a datagram half rebuilt
    assert stats["open"] > 100 and stats["chunks"] > 0 and stats["rings"] > 100 and stats["datagrams"] > 0, stats


def _chain(spec, cap, ev, *extra):
    res = run_cli("chain", spec, cap, "--events", ev, "--json", *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), ev.read_text().splitlines()


@pytest.mark.parametrize("name,mode", [("http__csanders__http_espn.pcapng", "workers"),
                                       ("tls__suri__tls-subjectaltname.pcap", "workers"),
                                       ("http__csanders__http_espn.pcapng", "inline")])
def test_resharding_gives_the_output_of_one_shard(tmp_path, corpus, monkeypatch, name, mode):
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")
    tally = tmp_path / "tally.py"
    tally.write_text(TALLY)
    spec = f"counter,http,dns,{tally}:SourceTally"
    inline = ["--inline"] if mode == "inline" else []
    one, ev1 = _chain(spec, corpus / name, tmp_path / "1.jsonl", *inline)
    n = one["packets"]
    # two shards, three from a third of the way, back to one from two thirds
    two, ev2 = _chain(spec, corpus / name, tmp_path / "2.jsonl", "--shards", 2, "--reshard", f"{n // 3}:3",
                      "--reshard", f"{2 * n // 3}:1", *inline)
    assert two["reshard"] == [{"packets": n // 3, "shards": 3}, {"packets": 2 * n // 3, "shards": 1}]
    moved = [s["moved"] for s in two["shards"]]
    assert len(moved) == 3
    assert [s["of"] for s in two["shards"]] == [1, 1, 1]         # the shards as the run ended
    assert sum(m["connections_out"] for m in moved) == sum(m["connections_in"] for m in moved) > 5
    assert moved[2]["connections_in"] > 0 and moved[2]["connections_out"] > 0     # joined, then gave all back
    assert all(0 < m["seconds"] < 30 for m in moved)                          # the pause each step cost
    same_output(one, ev1, two, ev2)


@pytest.mark.parametrize("kill_at", [3, 40])
def test_a_worker_killed_around_a_handover_loses_nothing(tmp_path, corpus, monkeypatch, kill_at):
    """http is killed once, in whichever shard reaches its kill_at-th call first: restarted from
    a checkpoint taken with the connections it handed over or took, it gives the output of an
    undisturbed run."""
    path = tmp_path / "killing.py"
    path.write_text(KILLING_BUILTINS)
    cap = corpus / "http__csanders__http_espn.pcapng"
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")
    ref, ev1 = _chain("http", cap, tmp_path / "1.jsonl")
    n = ref["packets"]
    monkeypatch.setenv("FLOWSIFT_KILL_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("FLOWSIFT_KILL_AT", str(kill_at))
    got, ev2 = _chain(f"{path}:KillingHttp", cap, tmp_path / "2.jsonl", "--shards", 1, "--reshard", f"{n // 4}:2",
                      "--reshard", f"{n // 2}:3", "--reshard", f"{3 * n // 4}:1")
    assert (tmp_path / "killed.http").exists()
    assert sum(s["moved"]["connections_in"] for s in got["shards"]) > 5
    assert sum(m["restarts"] for m in [got["modules"]["http"]]) == 1
    strip = lambda lines: sorted(json.dumps({k: v for k, v in json.loads(l).items() if k not in ("ts", "conn", "shard")},
                                            sort_keys=True) for l in lines)
    assert strip(ev2) == strip(ev1)
    assert {k: v for k, v in got["modules"]["http"].items() if k != "restarts"} == \
           {k: v for k, v in ref["modules"]["http"].items() if k != "restarts"}


@pytest.mark.parametrize("args,says", [
    (["--reshard", "100:2"], "give --shards N too"),
    (["--shards", 0, "--reshard", "100:2"], "from 1 to 64"),
    (["--shards", 2, "--reshard", "100"], "PACKETS:N"),
    (["--shards", 2, "--reshard", "100:0"], "PACKETS:N"),
    (["--shards", 2, "--reshard", "x:2"], "PACKETS:N"),
    (["--shards", 2, "--reshard", "100:3", "--reshard", "50:2"], "in order of packets"),
])
def test_bad_reshard_plans_are_one_line(corpus, args, says):
    res = run_cli("chain", "counter", corpus / "http__dpkt__http.pcap", *args)
    assert res.returncode == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_resharding_refuses_what_it_cannot_move(corpus):
    res = run_cli("chain", "counter,redact(pattern=x)", corpus / "http__dpkt__http.pcap", "--shards", 2,
                  "--reshard", "10:3")
    assert res.returncode == 2 and "writing module" in res.stderr
    res = run_cli("chain", "counter", "afpacket:lo", "--shards", 2, "--reshard", "10:3")
    assert res.returncode == 2 and "fan-out" in res.stderr


def test_every_shard_keeps_the_capture_clock(tmp_path):
    """Timeouts count from the capture clock, which every packet moves, whichever shard owns it:
    A's packet stamped 100 s comes after B's stamped 105 s (another shard's), so A has been idle
    598 s, not 603, when it speaks again at 703 s -- one connection, as in one gateway (600 s
    established timeout)."""
    from pcapgen import ether, ipv4, pcap, tcp
    table = initial_table(2)
    srv = bytes([10, 9, 0, 1])
    shard = lambda cli: table[bucket_of(cli + bytes(12), srv + bytes(12))]
    a = bytes([10, 0, 0, 1])
    b = next(bytes([10, 0, 1, k]) for k in range(1, 255) if shard(bytes([10, 0, 1, k])) != shard(a))

    def seg(t, cli, sport, to_server, flags, seq, ack, data=b""):
        s, d = (cli, srv) if to_server else (srv, cli)
        p, q = (sport, 80) if to_server else (80, sport)
        return (t, 0, ether(ipv4(s, d, 6, tcp(p, q, seq=seq, ack=ack, flags=flags, payload=data))))

    def handshake(t, cli, sport):
        return [seg(t, cli, sport, True, 0x02, 1000, 0), seg(t, cli, sport, False, 0x12, 5000, 1001),
                seg(t, cli, sport, True, 0x18, 1001, 5001, b"hello")]
    frames = handshake(0, a, 1111) + handshake(50, b, 2222) + [
        seg(105, b, 2222, True, 0x18, 1006, 5001, b"more"),       # the clock is at 105 s
        seg(100, a, 1111, True, 0x18, 1006, 5001, b"late"),       # stamped behind it
        seg(703, a, 1111, True, 0x18, 1010, 5001, b"again")]      # 598 s after the clock
    cap = tmp_path / "clock.pcap"
    cap.write_bytes(pcap(frames))
    runs = {}
    for extra in ([], ["--shards", 2]):
        res = run_cli("chain", "counter", cap, "--json", "--events", tmp_path / "ev.jsonl", *extra)
        assert res.returncode == 0, res.stderr
        runs[len(extra)] = json.loads(res.stdout)
    one, two = runs[0], runs[2]
    assert one["connections"]["tcp"] == 2 and two["connections"] == one["connections"]
    assert sorted(s["other_shards_packets"] for s in two["shards"]) == [4, 5]   # each shard had one flow


def test_a_module_behind_loses_only_what_it_counts_across_handovers(tmp_path):
    """--max-backlog with re-sharding: a connection a slow module gave up stays given up in its
    new shard; every connection is seen by each module or counted as dropped for it."""
    import textwrap
    from test_parallel import SLOW
    from test_store_faults import many_connections
    capture = many_connections(tmp_path / "many.pcap", 1500, payload=b"q" * 20, block=100)
    module = tmp_path / "slow.py"
    module.write_text(textwrap.dedent(SLOW))
    summary, events = _chain(f"{module},counter", capture, tmp_path / "ev.jsonl", "--max-backlog", 3,
                             "--shards", 2, "--reshard", "2000:3", "--reshard", "5000:1")
    assert sum(s["moved"]["connections_in"] for s in summary["shards"]) > 50
    slow, counter = summary["modules"]["slow"], summary["modules"]["counter"]
    assert slow["dropped_connections"] > 0 and slow["restarts"] == 0 and counter["restarts"] == 0
    assert len([e for e in events if '"module": "slow"' in e]) + slow["dropped_connections"] == 1500
    assert counter["flows"] + counter.get("dropped_connections", 0) == 1500


def test_a_sharded_run_reports_its_progress(corpus):
    """The progress bar of a sharded run follows the slowest shard, up to the whole file."""
    from flowsift.chain import run_chain
    cap = corpus / "tls__suri__tls-subjectaltname.pcap"
    seen = []
    run_chain("counter", str(cap), shards=2, reshard=["1000:3"], on_progress=lambda pos, total: seen.append((pos, total)))
    assert seen and seen[-1] == (cap.stat().st_size, cap.stat().st_size)
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


def test_a_step_past_the_end_of_the_capture_is_not_said_to_have_happened(corpus):
    """`--reshard 999999999:3` on a smaller capture: the summary listed the step, and a third
    shard (`"index": 2, "of": 2`) that owned nothing at any time."""
    cap = corpus / "tls__suri__tls-subjectaltname.pcap"        # 3,086 packets
    for plan, steps, shards in ((["999999:3"], [], [0, 1]),
                                (["1000:3", "999999:4"], [{"packets": 1000, "shards": 3}], [0, 1, 2])):
        args = [a for at in plan for a in ("--reshard", at)]
        got = json.loads(run_cli("chain", "counter", cap, "--shards", 2, *args, "--events", "/dev/null", "--json",
                                 check=True).stdout)
        assert got["reshard"] == steps and [s["index"] for s in got["shards"]] == shards, plan
        assert got["modules"]["counter"]["flows"] == 108


def test_a_shard_killed_outright_ends_the_run_in_one_line(tmp_path, corpus):
    """Its module workers kept its result pipe open: the run waited for ever, saying nothing."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import slow_module
    slow = slow_module(tmp_path, "slow")
    env = dict(os.environ, FLOWSIFT_BATCH="8")
    p = subprocess.Popen([sys.executable, "-m", "flowsift", "chain", str(slow), str(corpus / "http__csanders__http_espn.pcapng"),
                          "--shards", "2", "--events", "/dev/null"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        shards = []
        while not shards and time.monotonic() < deadline:
            time.sleep(0.2)
            shards = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        assert shards, "no shard started"
        os.kill(int(shards[0]), signal.SIGKILL)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 2
    (line,) = err.strip().splitlines()
    assert re.fullmatch(r"flowsift: shard [01]: its process died \(-9\)", line)


def test_sharded_events_say_whose_conn_they_are(tmp_path, corpus):
    """Each shard numbers its connections from 0: conn 13 named two connections of
    speed__pcpp__example. With the shard, the pair names one."""
    out = tmp_path / "ev.jsonl"
    res = run_cli("chain", "http,counter", corpus / "speed__pcpp__example.pcap", "--shards", 2, "--events", out, "--json")
    assert res.returncode == 0, res.stderr
    events = [json.loads(l) for l in out.read_text().splitlines()]
    owners = {}
    for e in events:
        owners.setdefault((e["shard"], e["conn"]), set()).add((e["client"], e["server"]))
    assert {e["shard"] for e in events} == {0, 1} and all(len(v) == 1 for v in owners.values())
    assert len({c for _, c in owners}) < len(owners)              # conn alone is ambiguous
    rows = json.loads(res.stdout)["tables"]["counter"]
    assert len({(r["shard"], r["conn"]) for r in rows}) == len(rows)


def test_a_sharded_summary_has_every_field_of_one_gateways(corpus):
    """It lacked not_decoded, other_protocols (packets no shard's connections hold: each shard
    decodes the whole file, so they count once), edits, bytes_stored and checkpoints."""
    cap = corpus / "vlan__pcpp__example2.pcap"
    one, two = (json.loads(run_cli("chain", "redact(pattern=a),counter", cap, "--events", "/dev/null", "--json",
                                   *extra, check=True).stdout) for extra in ((), ("--shards", 2)))
    assert set(one) - set(two) == set()
    for key in ("packets", "not_decoded", "other_protocols", "edits", "bytes_stored"):
        assert two[key] == one[key], key
    assert one["not_decoded"] > 0 and one["other_protocols"] > 0 and one["edits"]["accepted"]["redact"] > 0
    assert two["checkpoints"]["counter"]["checkpoints"] >= one["checkpoints"]["counter"]["checkpoints"]


def test_a_sharded_run_counts_rebuilt_datagrams_of_other_protocols_once_each(tmp_path):
    """Each shard rebuilds the datagrams of its own flows: counting shard 0's alone lost the
    others' (fragmented ICMP of 8 address pairs: 0 of 8 when they all fell to shard 1)."""
    from pcapgen import ether, fragments, ipv4, pcap, udp
    frames = []
    for k in range(8):
        a, b = bytes([10, 0, k, 1]), bytes([10, 1, k, 2])
        frames += fragments(a, b, 1, b"\x08\0\0\0\0\0\0\0" + b"A" * 3000, [0, 1480], ident=100 + k)
        frames.append(ether(ipv4(a, b, 17, udp(1000 + k, 53, b"x" * 20))))
    cap = tmp_path / "fragicmp.pcap"
    cap.write_bytes(pcap([(1_700_000_000, i, f) for i, f in enumerate(frames)]))
    for shards in ((), ("--shards", 2), ("--shards", 3)):
        got = json.loads(run_cli("chain", "counter", cap, "--events", "/dev/null", "--json", *shards, check=True).stdout)
        assert (got["other_protocols"], got["packets"]) == (8, 24), shards
