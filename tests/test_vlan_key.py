"""--vlan-key: connections told apart by their VLAN ids (outer, and inner for QinQ).

Without it a connection is its 5-tuple, as in tshark: two connections of one 5-tuple on two
VLANs are one, the second one's bytes taken for retransmissions or conflicts. With it they are
two, each with its own bytes, and every output that names a connection says its VLAN.
"""
import hashlib
import json
import re
import shutil
import struct
import subprocess

import pytest

from conftest import require, run_cli
from pcapgen import A, B, ether, fragments, ipv4, pcap, tcp, udp

T0 = 1_700_000_000
TAGS = (((0x8100, 10),), ((0x8100, 20),))
QINQ = (((0x88A8, 100), (0x8100, 10)), ((0x88A8, 100), (0x8100, 20)))
CORPUS = ["vlan__pcpp__example2.pcap", "vlan__zeek__http-vlan-0.pcap", "vlan__zeek__http-qinq-0.pcap",
          "frag__suri__frag-eth-vlan-ipv6-tcp.pcap"]


def tenants(path, tags=TAGS):
    """One TCP connection per tag list in `tags`, all of one 5-tuple (A:40000 -> B:80) and one
    pair of ISNs, interleaved packet by packet (both open at once), each with bytes of its own.
    Returns [(client bytes, server bytes)] in the order of `tags`."""
    talks = [(b"GET /tenant%d HTTP/1.0\r\n\r\n" % k, b"HTTP/1.0 200 OK\r\n\r\nhello tenant %d" % k * (k + 1))
             for k in range(len(tags))]
    steps = []
    for phase in range(6):
        for vl, (c, s) in zip(tags, talks):
            steps += [[(vl, True, 1000, 0, 0x02, b"")],
                      [(vl, False, 5000, 1001, 0x12, b"")],
                      [(vl, True, 1001, 5001, 0x10, b"")],
                      [(vl, True, 1001, 5001, 0x18, c)],
                      [(vl, False, 5001, 1001 + len(c), 0x18, s)],
                      [(vl, True, 1001 + len(c), 5001 + len(s), 0x11, b""),
                       (vl, False, 5001 + len(s), 1002 + len(c), 0x11, b""),
                       (vl, True, 1002 + len(c), 5002 + len(s), 0x10, b"")]][phase]
    frames = []
    for t, (vl, client, seq, ack, flags, payload) in enumerate(steps):
        src, dst, sp, dp = (A, B, 40000, 80) if client else (B, A, 80, 40000)
        frames.append((T0, t, ether(ipv4(src, dst, 6, tcp(sp, dp, seq=seq, ack=ack, flags=flags, payload=payload)),
                                    vlans=vl)))
    path.write_bytes(pcap(frames))
    return talks


def streams(capture, out, *args):
    res = run_cli("streams", capture, "-o", out, "--json", *args, check=True)
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    return json.loads(res.stdout), index


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_one_five_tuple_on_two_vlans_is_one_connection_by_default_and_two_with_the_option(tmp_path):
    cap = tmp_path / "tenants.pcap"
    talks = tenants(cap)
    if shutil.which("tshark"):
        streams_seen = subprocess.run(["tshark", "-r", str(cap), "-T", "fields", "-e", "tcp.stream"],
                                      capture_output=True, text=True, check=True).stdout.split()
        assert set(streams_seen) == {"0"}             # tshark: one connection
    summary, index = streams(cap, tmp_path / "off")
    assert summary["tcp"] == 1 and "vlan_key" not in summary
    assert all("vlan" not in line for line in index)
    assert summary["conflicts"] > 0 or summary["retransmissions"] > 0   # the second tenant's bytes, misread
    summary, index = streams(cap, tmp_path / "on", "--vlan-key")
    assert summary["tcp"] == 2 and summary["vlan_key"] is True
    assert summary["conflicts"] == 0 and summary["retransmissions"] == 0 and summary["engine"]["late_packets"] == 0
    assert len({line["file"] for line in index}) == 4       # names do not collide
    for line in index:
        k = [[10], [20]].index(line["vlan"])
        want = talks[k][0 if line["dir"] == "c2s" else 1]
        data = (tmp_path / "on" / line["file"]).read_bytes()
        assert data == want and line["bytes"] == len(want) and line["sha256"] == sha(want)
        assert line["file"].endswith(f"-vlan{line['vlan'][0]}.{line['dir']}")
        assert (line["src"], line["dst"]) == (("10.0.0.1:40000", "10.0.0.2:80") if line["dir"] == "c2s"
                                              else ("10.0.0.2:80", "10.0.0.1:40000"))


def test_qinq_same_outer_different_inner_are_two_connections(tmp_path):
    cap = tmp_path / "qinq.pcap"
    talks = tenants(cap, QINQ)
    summary, index = streams(cap, tmp_path / "off")
    assert summary["tcp"] == 1
    summary, index = streams(cap, tmp_path / "on", "--vlan-key")
    assert summary["tcp"] == 2
    for line in index:
        k = [[100, 10], [100, 20]].index(line["vlan"])
        assert (tmp_path / "on" / line["file"]).read_bytes() == talks[k][0 if line["dir"] == "c2s" else 1]
        assert line["file"].endswith(f"-vlan100.{line['vlan'][1]}.{line['dir']}")


def test_stats_counts_flows_per_vlan(tmp_path):
    cap = tmp_path / "qinq.pcap"
    tenants(cap, QINQ + (((0x8100, 7),), ()))
    off = json.loads(run_cli("stats", cap, "--json", check=True).stdout)["flows"]
    assert off == {"tcp": 1, "udp": 0, "tcp_reused_tuples": 0}
    on = json.loads(run_cli("stats", cap, "--json", "--vlan-key", check=True).stdout)["flows"]
    assert on["tcp"] == 4 and on["vlan_key"] is True
    assert on["by_vlan"] == [{"vlan": [], "tcp": 1, "udp": 0}, {"vlan": [7], "tcp": 1, "udp": 0},
                             {"vlan": [100, 10], "tcp": 1, "udp": 0}, {"vlan": [100, 20], "tcp": 1, "udp": 0}]
    table = run_cli("stats", cap, "--vlan-key", check=True).stdout
    assert "flows by VLAN" in table and "100.20" in table


def test_fragments_of_two_vlans_are_not_joined(tmp_path):
    """Two UDP datagrams of one 5-tuple and one IP id, on VLAN 10 and 20, their fragments
    interleaved: by default they make one datagram (the second one's pieces overlap and are late
    copies); with the option each VLAN rebuilds its own, with its own bytes."""
    bodies = [udp(5000, 53, bytes([0x41 + k]) * 64) for k in range(2)]
    pieces = [fragments(A, B, 17, body, [0, 24], ident=77, vlans=TAGS[k]) for k, body in enumerate(bodies)]
    order = [pieces[0][0], pieces[1][0], pieces[0][1], pieces[1][1]]
    cap = tmp_path / "frag.pcap"
    cap.write_bytes(pcap([(T0, t, f) for t, f in enumerate(order)]))
    summary, index = streams(cap, tmp_path / "off")
    assert summary["fragments"]["datagrams"] == 1 and summary["udp"] == 1
    summary, index = streams(cap, tmp_path / "on", "--vlan-key")
    assert summary["fragments"]["datagrams"] == 2 and summary["fragments"]["overlaps"] == 0
    assert summary["fragments"]["late_duplicates"] == 0 and summary["udp"] == 2
    got = {tuple(line["vlan"]): (tmp_path / "on" / line["file"]).read_bytes() for line in index if line["file"]}
    assert got == {(10,): bytes([0x41]) * 64, (20,): bytes([0x42]) * 64}
    stats = json.loads(run_cli("stats", cap, "--json", "--vlan-key", check=True).stdout)
    assert stats["ip"]["reassembled_datagrams"] == 2 and stats["ip"]["fragment_overlaps"] == 0


def test_the_chain_names_each_connection_s_vlan(tmp_path):
    cap = tmp_path / "tenants.pcap"
    talks = tenants(cap)
    ev = tmp_path / "off.jsonl"
    summary = json.loads(run_cli("chain", "counter", cap, "--events", ev, "--json", check=True).stdout)
    (row,) = summary["tables"]["counter"]
    assert "vlan" not in row and all("vlan" not in json.loads(l) for l in ev.read_text().splitlines())
    for extra in ((), ("--inline",), ("--shards", "2")):
        ev = tmp_path / "on.jsonl"
        summary = json.loads(run_cli("chain", "counter", cap, "--events", ev, "--json", "--vlan-key", *extra,
                                     check=True).stdout)
        assert summary["vlan_key"] is True
        rows = sorted(summary["tables"]["counter"], key=lambda r: r["vlan"])
        assert [r["vlan"] for r in rows] == [[10], [20]]
        assert [r["bytes"] for r in rows] == [[len(c), len(s)] for c, s in talks]
        assert all(r["conflicting_segments"] == 0 and r["retransmissions"] == 0 for r in rows)
        events = sorted((json.loads(l) for l in ev.read_text().splitlines()), key=lambda e: e["vlan"])
        assert [(e["kind"], e["vlan"], e["client"], e["server"], e["bytes"]) for e in events] == \
            [("flow", [10], "10.0.0.1:40000", "10.0.0.2:80", [len(talks[0][0]), len(talks[0][1])]),
             ("flow", [20], "10.0.0.1:40000", "10.0.0.2:80", [len(talks[1][0]), len(talks[1][1])])]
    table = run_cli("chain", "counter", cap, "--vlan-key", "--events", tmp_path / "x.jsonl", check=True).stdout
    header, rows = table.split("─", 1)
    assert "vlan" in header and re.search(r" 10 +5/3 ", rows) and re.search(r" 20 +5/3 ", rows), table


def test_a_module_sees_flow_vlan(tmp_path):
    from flowsift.modules import Module
    from flowsift.testing import run_module

    class Tenant(Module):
        """Says which VLAN each connection was on.

        Synopsis: tenant
        Reads: nothing
        Writes: nothing
        Options: none
        Counters: none
        Example: run_module(Tenant, capture, vlan_key=True)
        """
        name = "tenant"
        reads = set()

        def on_close(self, flow, reason):
            self.emit("seen", what=repr(flow), tenant=flow.vlan)

    cap = tmp_path / "qinq.pcap"
    tenants(cap, QINQ)
    res = run_module(Tenant, cap, vlan_key=True)
    assert sorted((e["tenant"], e["vlan"]) for e in res.events) == [([100, 10], [100, 10]), ([100, 20], [100, 20])]
    assert all(e["what"].endswith(f"vlan 100.{e['vlan'][1]}>") for e in res.events)
    res = run_module(Tenant, cap)
    assert [(e["tenant"], "vlan" in e) for e in res.events] == [(None, False)]


@pytest.mark.parametrize("key,vlan_key,seen", [(("vlan", "ip.src"), True, [1, 1]), (("ip.src",), True, [1, 2]),
                                                 (("vlan", "ip.src"), False, [1])])
def test_cross_flow_state_keyed_by_vlan_keeps_tenants_apart(tmp_path, key, vlan_key, seen):
    """Two tenants, one client address on two VLANs: an entry keyed by ("vlan", "ip.src") is
    each tenant's own; keyed by the address alone, the second tenant finds the first's."""
    from flowsift.modules import CrossFlow, Module
    from flowsift.testing import run_module

    class PerClient(Module):
        """Counts connections per client.

        Synopsis: perclient
        Reads: nothing
        Writes: nothing
        Options: none
        Counters: none
        Example: run_module(PerClient, capture, vlan_key=True)
        """
        name = "perclient"
        reads = set()
        clients = CrossFlow(key=key)

        def on_open(self, flow):
            entry = self.clients[flow]
            entry["n"] = entry.get("n", 0) + 1
            self.emit("client", n=entry["n"], key=list(self.clients.key_of(flow)))

    cap = tmp_path / "tenants.pcap"
    tenants(cap)
    res = run_module(PerClient, cap, vlan_key=vlan_key)
    assert [e["n"] for e in res.events] == seen
    if key[0] == "vlan":
        assert sorted(e["key"][0] for e in res.events) == (["10", "20"] if vlan_key else [""])


def test_record_headers_hold_the_vlan_ids(tmp_path):
    """The gateway's record files: flag bit 3 and the ids at 232 and 234 (docs/record-format.md),
    read with struct alone; inspect says them."""
    cap = tmp_path / "qinq.pcap"
    tenants(cap, QINQ)
    store = tmp_path / "store"
    summary = json.loads(run_cli("gateway", cap, "--store", store, "--vlan-key", "--json", check=True).stdout)
    assert summary["vlan_key"] is True and summary["connections"]["tcp"] == 2
    seen = []
    for f in sorted(store.glob("c*.rec")):
        with open(f, "rb") as rf:
            head = rf.read(256)
        flags, = struct.unpack_from("<I", head, 20)
        outer, inner = struct.unpack_from("<HH", head, 232)
        assert flags & 8 and outer == 100
        seen.append(inner)
        info = json.loads(run_cli("inspect", f, "-n", "0", "--json", check=True).stdout)
        assert info["vlan"] == [100, inner]
    assert sorted(seen) == [10, 20]
    listing = json.loads(run_cli("inspect", store, "--json", check=True).stdout)
    assert sorted(c["vlan"] for c in listing["connections"]) == [[100, 10], [100, 20]]
    assert listing["problems"] == []
    # without the option the bytes stay zero and inspect names no VLAN
    plain = tmp_path / "plain"
    run_cli("gateway", cap, "--store", plain, check=True)
    (f,) = plain.glob("c*.rec")
    with open(f, "rb") as rf:
        head = rf.read(256)
    assert not struct.unpack_from("<I", head, 20)[0] & 8 and head[232:256] == bytes(24)
    assert "vlan" not in json.loads(run_cli("inspect", f, "-n", "0", "--json", check=True).stdout)


def _vlan_of_tshark(text):
    # tshark's vlan.id ("118,10", "0,0", "") as flowsift's key lists it: the two outer ids, an
    # id 0 (untagged, or a priority tag) at the end left out
    ids = [int(x) for x in text.split(",") if x][:2]
    while ids and ids[-1] == 0:
        ids.pop()
    return ids


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_bytes_are_the_same_with_the_option_and_the_vlan_is_tshark_s(tmp_path, corpus, name):
    _, off = streams(corpus / name, tmp_path / "off")
    _, on = streams(corpus / name, tmp_path / "on", "--vlan-key")

    def key(line):
        return line["src"], line["dst"], line["proto"], line["bytes"], line["sha256"], line["gaps"]
    assert sorted(map(key, on)) == sorted(map(key, off)) and on
    tshark = require("tshark")
    out = subprocess.run([tshark, "-r", str(corpus / name), "-Y", "tcp or udp", "-T", "fields", "-e", "vlan.id",
                          "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport", "-e", "udp.srcport",
                          "-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.dstport", "-e", "udp.dstport"],
                         capture_output=True, text=True, check=True).stdout
    theirs = {}
    for row in out.splitlines():
        vlan, s4, s6, st, su, d4, d6, dt, du = row.split("\t")
        src = f"{s4}:{st or su}" if s4 else f"[{s6}]:{st or su}"
        dst = f"{d4}:{dt or du}" if d4 else f"[{d6}]:{dt or du}"
        theirs.setdefault((src, dst), set()).add(tuple(_vlan_of_tshark(vlan)))
    for line in on:
        if line["packets"]:
            assert theirs[(line["src"], line["dst"])] == {tuple(line["vlan"])}, line


def test_the_commands_that_find_connections_take_the_option():
    for command in ("stats", "streams", "gateway", "chain", "replay"):
        res = run_cli(command, "--help")
        assert "--vlan-key" in res.stdout and "Default: off" in " ".join(res.stdout.split()), command
    for command in ("module", "inspect", "analyze", "modules"):
        assert "--vlan-key" not in run_cli(command, "--help").stdout, command


def test_replay_replays_each_tenant_s_connection(tmp_path):
    """A server that answers as tenant 0 did: with the option, tenant 0's connection replays
    identical and tenant 1's differs, each result naming its VLAN; without it the two are one
    connection."""
    import socket
    import threading
    cap = tmp_path / "tenants.pcap"
    talks = tenants(cap)
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                got = b""
                while b"\r\n\r\n" not in got:
                    more = conn.recv(4096)
                    if not more:
                        break
                    got += more
                conn.sendall(talks[0][1])
    threading.Thread(target=serve, daemon=True).start()
    try:
        to = f"127.0.0.1:{srv.getsockname()[1]}"
        res = run_cli("replay", cap, "--to", to, "--json", "--vlan-key", "--timeout", "2", "--idle", "0.2")
        s = json.loads(res.stdout)
        assert res.returncode == 1 and s["connections"] == 2 and s["identical"] == 1 and s["differing"] == 1
        assert [d["vlan"] for d in s["first_differences"]] == [[20]]
        res = run_cli("replay", cap, "--to", to, "--json", "--timeout", "2", "--idle", "0.2")
        s = json.loads(res.stdout)
        assert s["connections"] == 1 and all("vlan" not in d for d in s["first_differences"])
    finally:
        srv.close()
