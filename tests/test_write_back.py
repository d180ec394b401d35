"""Verified write-back: NAT and redact through the gateway, written out with -w and read again."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, require, run_cli
from flowsift.io import open_capture
from flowsift.modules import Module, ModuleError
from flowsift.testing import run_module, segments_capture


def packet_module(tmp_path, name, body, writes=None):
    """A module NAME whose on_packet(self, flow, record) is `body` (indented by 8): read-only,
    or writing the fields in `writes`."""
    path = tmp_path / f"{name}.py"
    path.write_text(f'''
from flowsift.modules import Module

class M(Module):
    """A module of a test.

    Synopsis: {name}
    """
    name = "{name}"
    reads = {{"records"}}
    writes = {writes or set()!r}

    def on_packet(self, flow, record):{body}
''')
    return path


def frames(path):
    out = []
    for b in open_capture(path).batches():
        out.extend(b.frame(i) for i in range(len(b)))
    return out


def with_late_copy(src, dst):
    """`src` (a pcap) and a copy of its last packet a second later: a packet after its
    connection ended (its last ACK, which now ends it, sent again)."""
    import struct
    blob = src.read_bytes()
    pos, last = 24, None
    while pos < len(blob):
        incl = struct.unpack_from("<I", blob, pos + 8)[0]
        last, pos = blob[pos:pos + 16 + incl], pos + 16 + incl
    sec = struct.unpack_from("<I", last)[0]
    dst.write_bytes(blob + struct.pack("<I", sec + 1) + last[4:])
    return dst


def test_nat_and_redact_round_trip(tmp_path, corpus):
    src = with_late_copy(corpus / "http__zeek__get.pcap", tmp_path / "get.pcap")
    out = tmp_path / "out.pcap"
    res = run_cli("chain", "nat(to=10.0.0.2:8080),redact(pattern=Wget/[0-9.]+)", src, "-w", out, "--json",
                  "--events", tmp_path / "ev.jsonl")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["edits"]["rejected"] == {} and summary["egress"]["edited"] > 0
    tshark = require("tshark")
    rows = subprocess.run([tshark, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-r", str(out),
                           "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.srcport", "-e", "tcp.dstport",
                           "-e", "ip.checksum.status", "-e", "tcp.checksum.status"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    before, after = frames(src), frames(out)
    assert len(before) == len(after) == len(rows)
    edited = 0
    for row, old, new in zip(rows, before, after):
        ip_src, ip_dst, sport, dport, ipsum, tcpsum = row.split("\t")
        if old == new:
            continue                                   # untouched frames are byte-identical
        edited += 1
        assert "10.0.0.2" in (ip_src, ip_dst) and "8080" in (sport, dport)
        assert ipsum == "1" and tcpsum == "1"          # checksums valid per tshark
        assert len(old) == len(new)
    assert edited == summary["egress"]["edited"]
    assert summary["egress"]["late_edited"] == summary["engine"]["late_packets"] > 0
    ua = subprocess.run([tshark, "-r", str(out), "-Y", "http.request", "-T", "fields", "-e", "http.user_agent"],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert ua == "XXXXXXXXX (darwin12.2.0)"            # "Wget/1.14" masked, same length


def test_undeclared_and_invalid_edits_are_rejected_with_a_reason(tmp_path):
    cap = segments_capture(tmp_path, client=[b"abc"], server=[b"def"])
    mod = tmp_path / "m.py"
    mod.write_text('''
from flowsift.modules import Module

class Sneaky(Module):
    """Tries edits it may and may not make.

    Synopsis: sneaky
    """
    name = "sneaky"
    writes = {"ip.dst", "payload"}

    def on_packet(self, flow, record):
        for fields in ({"tcp_dport": 1}, {"ip_dst": "2001:db8::1"}, {"ip_dst": "300.1.1.1"}, {"ip_dst": 167772162},
                       {"ip_dst": "10.9.9.9"}):
            r = flow.edit(record, **fields)
            self.emit("edit", fields=str(fields), accepted=r.accepted, reason=r.reason)

    def on_data(self, flow, stream):
        r = stream.replace(stream.tell() + 10**6, b"x")
        self.emit("replace", accepted=r.accepted, reason=r.reason)
        stream.read()
''')
    res = run_module(str(mod), cap)
    edits = res.of_kind("edit")
    reasons = {e["fields"]: (e["accepted"], e["reason"]) for e in edits}
    assert reasons["{'tcp_dport': 1}"] == (False, "tcp.dport is not declared in writes")
    assert reasons["{'ip_dst': '2001:db8::1'}"][1] == "ip.dst=2001:db8::1 is IPv6 on an IPv4 packet"
    assert "not an IP address" in reasons["{'ip_dst': '300.1.1.1'}"][1]
    assert "not an IP address" in reasons["{'ip_dst': 167772162}"][1]          # text, not a number
    assert reasons["{'ip_dst': '10.9.9.9'}"] == (True, None)
    assert all(not e["accepted"] and "outside the stream" in e["reason"] for e in res.of_kind("replace"))
    rejected = res.summary["edits"]["rejected"]
    assert sum(rejected.values()) == 4 * len([e for e in edits if e["fields"] == "{'tcp_dport': 1}"]) + len(res.of_kind("replace"))


def test_downstream_modules_see_merged_bytes(tmp_path):
    cap = segments_capture(tmp_path, client=[b"user=alice&password=hunter2&x=1"], server=[b"ok"])
    res = run_module("redact(pattern=password=[^&]*),strsearch(patterns=inline:hunter2|XXXX)", cap)
    patterns = {e["pattern"] for e in res.of_kind("match")}
    assert patterns == {"XXXX"}                       # strsearch, after redact, never sees the secret


@pytest.mark.parametrize("spec,needle", [("nat", "to=IP[:PORT] is required"), ("redact", "pattern=REGEX is required"),
                                         ("redact(pattern=a{2,1})", "bad pattern"),
                                         ("nat(to=10.0.0.2:99999)", "port 99999 is not a number from 1 to 65535"),
                                         ("nat(to=[::1]:-1)", "port -1 is not"),
                                         ("nat(to=10.0.0.2,match=10.0.0.1:0)", "match='10.0.0.1:0': port 0"),
                                         ("nat(to=[2001:db8::77]8080)", "is not ip, ip:port, [ipv6]"),
                                         ("nat(to=[10.0.0.2]:80)", "is not ip, ip:port, [ipv6]"),
                                         ("nat(to=10.0.0.2,match=[2001:db8::2]:80)", "a flow's address family cannot change"),
                                         ("strsearch", "option patterns=FILE is required"),
                                         ("strsearch(patterns=)", "option patterns=FILE is required")])
def test_writing_modules_check_their_options(spec, needle):
    from flowsift.modules import parse_chain
    chain = parse_chain(spec)
    with pytest.raises(ModuleError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        chain[0][0](chain[0][1])


def test_nat_rewrites_every_fragment_of_a_fragmented_request(tmp_path, corpus):
    """A datagram's header edits go into each of its fragments: addresses (and the IPv4 header
    checksum) in all, ports in the first, whose TCP checksum is updated for the change without
    the other fragments' bytes. tshark reassembles the output and finds the checksum right."""
    tshark = require("tshark")
    src = corpus / "frag__pcpp__frag_http_req.pcap"           # one HTTP request in 11 fragments
    out = tmp_path / "out.pcap"
    res = run_cli("chain", "nat(to=10.9.9.9:8080)", src, "-w", out, "--json", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr
    egress = json.loads(res.stdout)["egress"]
    assert egress["edited"] == 11 and egress["not_editable"] == 0
    rows = subprocess.run([tshark, "-r", str(out), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
                           "-T", "fields", "-e", "ip.flags.mf", "-e", "ip.frag_offset", "-e", "ip.dst",
                           "-e", "ip.src", "-e", "ip.checksum.status", "-e", "tcp.checksum.status",
                           "-e", "tcp.dstport", "-e", "tcp.srcport", "-e", "http.request.method"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [r.split("\t") for r in rows]
    frags = [r for r in rows if r[0] == "1" or r[1] not in ("", "0")]
    assert len(frags) == 11 and all("10.9.9.9" in (r[2], r[3]) and r[4] == "1" for r in frags)
    whole = [r for r in rows if r[8] == "GET"]
    # the reassembled request: rewritten port, a TCP checksum that verifies
    assert len(whole) == 1 and whole[0][5] == "1" and "8080" in (whole[0][6], whole[0][7])


def tshark_tcp(tshark, path):
    """(ip.src, ip.dst, ttl, ports, IP and TCP checksum verdicts, Authorization) of each TCP
    packet of `path`, its fragments reassembled by tshark."""
    return [r.split("\t") for r in subprocess.run(
        [tshark, "-r", str(path), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-Y", "tcp",
         "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.ttl", "-e", "tcp.srcport", "-e", "tcp.dstport",
         "-e", "ip.checksum.status", "-e", "tcp.checksum.status", "-e", "http.authorization"],
        capture_output=True, text=True, check=True).stdout.splitlines()]


@pytest.mark.parametrize("spec", ["nat(to=10.9.9.9:8080),redact(pattern=Digest)", "hdr"])
def test_edits_of_tiny_fragments_go_into_the_fragments_that_hold_their_bytes(tmp_path, corpus, spec):
    """8-byte fragments, out of order: the ports, the flags and the checksum of a datagram's
    TCP header are in three fragments, the TTL and addresses in every one. Each edit goes into
    the fragment that holds its bytes, and the checksum is right once tshark reassembles them."""
    tshark = require("tshark")
    src, out = corpus / "frag__peafowl__http_ip_fragmented_out_of_order.pcap", tmp_path / "out.pcap"
    if spec == "hdr":
        spec = str(packet_module(tmp_path, "hdr", "\n        flow.edit(record, ip_ttl=3, ip_dst='10.1.1.1', tcp_flags=0x18)",
                                 writes={"ip.ttl", "ip.dst", "tcp.flags"}))
    res = run_cli("chain", spec, src, "-w", out, "--json", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr
    egress = json.loads(res.stdout)["egress"]
    assert egress["not_editable"] == 0 and egress["packets"] == 444 and egress["edited"] > 0
    before, after = tshark_tcp(tshark, src), tshark_tcp(tshark, out)
    assert len(before) == len(after) == 11
    assert [r[5:7] for r in after] == [r[5:7] for r in before] == [["1", "1"]] * 11
    if "nat" in spec:
        assert all("10.9.9.9" in r[:2] and "8080" in r[3:5] for r in after)
        assert any(r[7].startswith("Digest ") for r in before) and any(r[7].startswith("XXXXXX ") for r in after)
        assert not any("Digest" in r[7] for r in after)
    else:
        assert all(r[1] == "10.1.1.1" and r[2] == "3" for r in after)
        assert "0x0018" in subprocess.run([tshark, "-r", str(out), "-Y", "tcp", "-T", "fields", "-e", "tcp.flags"],
                                          capture_output=True, text=True, check=True).stdout


def nat_leaves_every_fragment_whole(src, out, spec, packets):
    """The flows of `src` are edited by `spec` (a nat), but no datagram is half rewritten:
    every one of its `packets` fragments leaves as it came, and is counted so, with why; the
    text summary shows it, one line on stderr says it, and the exit code is 3."""
    res = run_cli("chain", spec, src, "-w", out, "--json", "--events", "/dev/null")
    assert res.returncode == 3, res.stderr
    summary = json.loads(res.stdout)
    assert summary["edits"]["accepted"]["nat"] > 0
    assert summary["egress"]["not_editable"] == summary["egress"]["packets"] == packets
    why = "a fragmented datagram with IPv6 extension headers before its transport header"
    assert summary["egress"]["not_editable_reasons"] == {why: packets}
    assert res.stderr == (f"flowsift: -w {out}: {packets} packets with accepted edits left as they came "
                          f"({packets} {why})\n")
    assert frames(out) == frames(src)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}       # (piped: rows whole)
    text = subprocess.run([sys.executable, "-m", "flowsift", "chain", spec, str(src), "-w", str(out), "--events",
                           "/dev/null"], capture_output=True, text=True, timeout=120, env=env)
    assert text.returncode == 3 and text.stderr == res.stderr
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.stdout.splitlines() if line.count("│") == 3]
    accepted = summary["edits"]["accepted"]["nat"]
    for row in [["written", f"{packets} packets to {out}"], ["not editable", f"{packets} (left as they came)"],
                ["", f"{packets}: {why}"], ["edits accepted", f"nat {accepted}"], ["edits rejected", "0"]]:
        assert row in rows, (row, text.stdout)


def test_a_datagram_whose_fragments_begin_with_ipv6_extension_headers_leaves_whole_and_counted(tmp_path):
    """IPv6 fragments whose fragmentable part starts with Destination Options: the datagram is
    rebuilt and its flow edited, but its first fragment does not start with the UDP header the
    edits would change, so every fragment leaves as it came, and is counted so."""
    from pcapgen import A6, B6, fragments, pcap, udp
    opts = bytes([17, 0]) + b"\x01\x04\0\0\0\0"
    body = udp(2002, 9999, bytes(range(256)) * 2)
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(pcap([(1, k, fr) for k, fr in enumerate(
        fragments(A6, B6, 60, body, [0, 200, 400], ident=22, v6=True, inner=opts))]))
    nat_leaves_every_fragment_whole(src, out, "nat(to=[2001:db8::9]:53)", 3)


def test_redact_masks_udp_datagrams_in_the_output(tmp_path):
    """DNS names over UDP: their edits were accepted and counted, and the datagrams left
    masked. (Recorded on loopback, their checksums were never filled in: they stay so.)"""
    from conftest import ROOT
    src, out = ROOT / "examples" / "demo.pcap", tmp_path / "out.pcap"
    res = run_cli("chain", "redact(pattern=flowsift)", src, "-w", out, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)

    def udp_rows(path):
        return [r.split("\t") for r in subprocess.run(
            [require("tshark"), "-o", "udp.check_checksum:TRUE", "-r", str(path), "-Y", "udp", "-T", "fields",
             "-e", "udp.payload", "-e", "udp.checksum.status"], capture_output=True, text=True, check=True).stdout.splitlines()]
    rows = udp_rows(out)
    payloads = [bytes.fromhex(r[0]) for r in rows]
    assert summary["egress"]["edited"] >= 4 and len(payloads) == 6
    assert not any(b"flowsift" in p for p in payloads)
    assert sum(b"XXXXXXXX" in p for p in payloads) == 4
    assert [r[1] for r in rows] == [r[1] for r in udp_rows(src)]


def test_redact_masks_a_retransmission_that_comes_after_the_close(tmp_path, corpus):
    """Frame 116 repeats stream bytes after both FINs (once after the connection ended, left with
    the unmasked copy of what frame 110 carried masked): now within its connection, which waits
    for the last ACK, it is masked as any retransmission."""
    out = tmp_path / "out.pcap"
    res = run_cli("chain", "redact(pattern=displayname)", corpus / "overlap__zeek__reassembly.pcap", "-w", out, "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    after = frames(out)
    assert summary["egress"]["edited"] >= 2 and summary["engine"]["late_packets"] == 0
    assert b"displayname" in frames(corpus / "overlap__zeek__reassembly.pcap")[115]
    assert not any(b"displayname" in f for f in after)


@pytest.mark.parametrize("inline", [False, True])
@pytest.mark.parametrize("pattern", ["password=[^&]*", "password=secret"])
def test_a_match_split_across_batches_is_masked_whole_and_read_masked_after(tmp_path, monkeypatch, inline, pattern):
    """password=sec | ret&x=1, one packet per batch. With password=[^&]*, the match at the end of
    the first batch is all redact can see then: it was masked and its end (ret) left in clear.
    With password=secret there is no match yet: redact leaves those bytes unread, and a module
    after it reads only what it read, merged (inline, it once read the secret in clear)."""
    monkeypatch.setenv("FLOWSIFT_BATCH", "1")
    cap = segments_capture(tmp_path, client=[b"GET /?password=sec", b"ret&x=1 HTTP/1.1\r\n\r\n"], server=[b"ok"])
    seen = tmp_path / "seen.py"
    seen.write_text('''from flowsift.modules import Module
class Seen(Module):
    """Emits the client bytes it reads.

    Synopsis: seen
    """
    name = "seen"
    reads = {"stream"}
    def on_data(self, flow, stream):
        if stream.direction == 0:
            self.emit("chunk", data=stream.read_bytes().decode())
        else:
            stream.skip()
''')
    out = tmp_path / "out.pcap"
    res = run_module(f"redact(pattern={pattern}),{seen}", cap, inline=inline, write=str(out))
    client = b"".join(f[54:] for f in frames(out) if f[34:36] == (40000).to_bytes(2, "big"))
    assert client == b"GET /?" + b"X" * 15 + b"&x=1 HTTP/1.1\r\n\r\n"
    assert "".join(e["data"] for e in res.of_kind("chunk")) == client.decode()
    assert res.counters("redact")["redacted"] == 1 and res.counters("redact")["bytes"] == 15


FLAGS_AND_DROP = '''
from flowsift.modules import Module

class Flags(Module):
    """Clears PSH on client packets, drops the server's, and tries a port given as a bool.

    Synopsis: flags
    """
    name = "flags"
    writes = {"tcp.flags", "tcp.dport", "drop"}
    reads = {"records"}

    def on_packet(self, flow, record):
        if record.dir == 0 and record.tcp_flags & 0x08:
            r = flow.edit(record, tcp_flags=record.tcp_flags & ~0x08)
            self.emit("flags", accepted=r.accepted)
            r = flow.edit(record, tcp_dport=True)
            self.emit("bool", accepted=r.accepted, reason=r.reason)
        elif record.dir == 1 and record.payload_len:
            flow.drop(record)
'''


@pytest.mark.parametrize("inline", [False, True])
def test_tcp_flags_edits_and_drops_reach_the_output(tmp_path, inline):
    cap = segments_capture(tmp_path, client=[b"GET / HTTP/1.1\r\n\r\n"], server=[b"HTTP/1.1 200 OK\r\n\r\n"])
    mod = tmp_path / "flags.py"
    mod.write_text(FLAGS_AND_DROP)
    out = tmp_path / "out.pcap"
    res = run_module(str(mod), cap, inline=inline, write=str(out))
    assert [e["accepted"] for e in res.of_kind("flags")] == [True]
    assert [(e["accepted"], e["reason"]) for e in res.of_kind("bool")] == [(False, "tcp.dport=True is not an integer in 0..65535")]
    rows = subprocess.run([require("tshark"), "-o", "tcp.check_checksum:TRUE", "-r", str(out), "-T", "fields",
                           "-e", "tcp.srcport", "-e", "tcp.flags", "-e", "tcp.len", "-e", "tcp.checksum.status"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [r.split("\t") for r in rows]
    assert len(rows) == len(frames(cap)) - 1                       # the server's data segment dropped
    assert not any(r[0] == "80" and r[2] != "0" for r in rows)
    (data,) = [r for r in rows if r[0] == "40000" and r[2] != "0"]
    assert int(data[1], 16) == 0x10 and data[3] == "1"           # ACK without PSH, checksum good


@pytest.mark.parametrize("inline", [False, True])
def test_a_module_that_drops_without_declaring_it_is_told(tmp_path, inline):
    """flow.drop() from a module that does not declare "drop" is refused as an undeclared edit
    is: a rejected Edit with the reason, counted under the module, in a worker as inline (it
    was a ModuleError there, and None when accepted)."""
    cap = segments_capture(tmp_path, client=[b"abc"], server=[b"def"])
    mod = packet_module(tmp_path, "dropper", """
        r = flow.drop(record)
        self.emit("drop", accepted=r.accepted, reason=r.reason)""")
    res = run_module(str(mod), cap, inline=inline)
    got = {(e["accepted"], e["reason"]) for e in res.of_kind("drop")}
    assert got == {(False, "read-only module: drop is not declared in writes")}
    assert res.counters("dropper")["edits_rejected"] == len(res.of_kind("drop")) > 0


def test_a_drop_returns_an_edit_and_its_rejections_are_counted_under_the_module(tmp_path):
    cap = segments_capture(tmp_path, client=[b"abc"], server=[b"def"])

    class Dropper(Module):
        """Drops the server's data, and the first packet after the connection ended.

        Synopsis: dropper
        """
        name = "dropper"
        reads = {"records"}
        writes = {"drop"}

        def on_packet(self, flow, record):
            if record.dir == 1 and record.payload_len:
                self.emit("drop", edit=repr(flow.drop(record)))
            if record.index == 0:
                flow.cache["first"] = record

        def on_close(self, flow, reason):
            # a record of another connection's numbering
            r = flow.drop(flow.cache["first"]._replace(index=99))
            self.emit("bad", accepted=r.accepted, reason=r.reason)

    out = tmp_path / "out.pcap"
    res = run_module(Dropper, cap, write=str(out))
    assert [e["edit"] for e in res.of_kind("drop")] == ["Edit(accepted=True, reason=None)"]
    (bad,) = res.of_kind("bad")
    assert not bad["accepted"] and "is not one of connection 0's" in bad["reason"]
    assert res.summary["edits"]["rejected"] == {"dropper: not this connection's record": 1}
    assert res.counters("dropper")["edits_rejected"] == 1
    assert [e["field"] for e in res.accepted("dropper")] == ["drop"]
    assert len(frames(out)) == len(frames(cap)) - 1


def test_a_nat_port_out_of_range_stops_the_chain_before_the_first_packet(tmp_path, corpus):
    # the gateway refused every edit of it: the run went through, rewriting nothing, exit 0
    out = tmp_path / "out.pcap"
    res = run_cli("chain", "nat(to=10.0.0.2:99999)", corpus / "http__dpkt__http.pcap", "-w", out, "--json")
    assert res.returncode == 2 and res.stdout == "" and not out.exists()
    assert res.stderr.strip() == "flowsift: module nat: to='10.0.0.2:99999': port 99999 is not a number from 1 to 65535"


def test_w_writes_a_pcapng_with_one_link_type_and_refuses_several_before_the_run(tmp_path, corpus):
    """A pcapng declares its interfaces as it goes: -w looked before reading any, found none,
    and refused every pcapng, after the run."""
    src = corpus / "http__csanders__http_espn.pcapng"
    out, events = tmp_path / "out.pcap", tmp_path / "ev.jsonl"
    res = run_cli("chain", "counter", src, "-w", out, "--events", events)
    assert res.returncode == 0, res.stderr
    assert frames(out) == frames(src) and len(frames(out)) == 956
    many = corpus / "pcapng__pcpp__many_interfaces-1.pcapng"
    res = run_cli("chain", "counter", many, "-w", tmp_path / "many.pcap", "--events", tmp_path / "ev2.jsonl")
    assert res.returncode == 2
    assert res.stderr.strip() == f"flowsift: chain: {many}: -w writes a pcap, with one link type; this capture's packets have 2 (0, 1)"
    ev2 = tmp_path / "ev2.jsonl"
    assert not ev2.exists() or ev2.read_text() == ""          # refused before the first packet
    # interfaces of other link types that no packet uses do not count: they were refused
    unused = corpus / "pcapng__zeek__gap-data-missing.pcapng"
    res = run_cli("chain", "counter", unused, "-w", tmp_path / "one.pcap", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr
    assert frames(tmp_path / "one.pcap") == frames(unused) and len(frames(unused)) == 18


@pytest.mark.parametrize("chain", ["redact(pattern=Host:.[a-z.]*)", "nat(to=10.1.1.1:81),redact(pattern=Host:.[a-z.]*)"])
def test_stream_edits_go_into_the_fragments_of_a_datagram(tmp_path, corpus, chain):
    """The request's Host line masked in the fragments that carry it, the TCP checksum (in the
    first fragment) updated from the edits' old and new bytes. The fragment carrying the record
    was once left as it came (not_editable), the others NATed: one datagram, two destinations."""
    tshark = require("tshark")
    src = corpus / "frag__pcpp__frag_http_req.pcap"
    out = tmp_path / "out.pcap"
    res = run_cli("chain", chain, src, "-w", out, "--json", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr
    egress = json.loads(res.stdout)["egress"]
    assert egress["not_editable"] == 0 and egress["edited"] == (11 if "nat" in chain else egress["edited"])
    rows = subprocess.run([tshark, "-r", str(out), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
                           "-T", "fields", "-e", "ip.dst", "-e", "ip.checksum.status", "-e", "tcp.checksum.status",
                           "-e", "tcp.payload"], capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [r.split("\t") for r in rows]
    assert all(r[1] == "1" for r in rows)
    assert len({r[0] for r in rows}) == 1                                 # every fragment to one place
    (request,) = [bytes.fromhex(r[3]) for r in rows if r[3]]
    assert [r[2] for r in rows if r[3]] == ["1"]                          # the TCP checksum verifies
    assert b"js.bizographics" not in request and b"\r\nXXXXXXXXXXXXXXXXXXXXXXXXX\r\nUser-Agent" in request


def test_a_capture_no_module_changed_comes_out_as_it_came(tmp_path, corpus):
    """-w wrote nanosecond pcaps with the largest snaplen whatever the source: a capture no
    module touched came out with another file header."""
    for src in (corpus / "http__zeek__get.pcap", corpus / "http__dpkt__http.pcap"):
        out = tmp_path / "out.pcap"
        res = run_cli("chain", "counter", src, "-w", out, "--events", "/dev/null")
        assert res.returncode == 0, res.stderr
        assert out.read_bytes() == src.read_bytes()


def test_an_edit_from_a_read_only_module_is_refused_for_the_same_reason_in_both_modes(tmp_path):
    cap = segments_capture(tmp_path, client=[b"abc"], server=[b"def"])
    mod = packet_module(tmp_path, "ro", """
        self.emit("edit", reason=flow.edit(record, ip_dst="10.0.0.9").reason)""")
    reasons = set()
    for inline in (False, True):
        reasons |= {e["reason"] for e in run_module(str(mod), cap, inline=inline).events}
    assert reasons == {"read-only module: ip.dst is not declared in writes"}


@pytest.mark.parametrize("mode", [["--inline"], [], ["--shards", "2"]])
def test_the_edits_refused_to_a_read_only_module_are_in_the_summary_in_every_mode(tmp_path, corpus, mode):
    """In a worker no editor sees a read-only module's edits: they were counted in its
    edits_rejected only, and missing from the summary's edits.rejected (inline had them there,
    under other kinds)."""
    mod = packet_module(tmp_path, "ro", """
        flow.edit(record, ip_dst="10.0.0.9")
        if record.index == 0:
            flow.drop(record)
            flow.edit(record)""")
    res = run_cli("chain", f"{mod},nat(to=10.0.0.2:8080)", corpus / "http__zeek__get.pcap", "--events", "/dev/null",
                  "--json", *mode)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    n = summary["modules"]["ro"]["edits_rejected"]
    assert n > 0 and summary["edits"]["rejected"] == {"ro: read-only module": n}
    assert summary["edits"]["accepted"]["nat"] > 0


READ_ONLY_REPLACE = """
from flowsift.modules import Module

class Ro(Module):
    \"\"\"Asks to replace bytes without declaring it.

    Synopsis: ro
    \"\"\"
    name = "ro"

    def on_data(self, flow, stream):
        for bad in ((1.5, b"x"), (stream.tell(), "x"), (stream.tell(), b"x", 7)):
            try:
                stream.replace(*bad)
            except TypeError as e:
                assert str(e).startswith("stream.replace: "), e
            else:
                raise AssertionError(f"stream.replace{bad!r} took it")
        r = stream.replace(stream.tell(), b"X")
        self.emit("replace", accepted=r.accepted, reason=r.reason)
        stream.skip()
"""


@pytest.mark.parametrize("mode", [["--inline"], [], ["--shards", "2"]])
def test_a_read_only_modules_replace_is_refused_and_counted_in_every_mode(tmp_path, corpus, mode):
    """A read-only module's stream pointer had no replace(): an AttributeError, counted as a
    hook error, where flow.edit is refused and counted. Without a writing module (no editor, no
    -w) the summary had no `edits` object: the refusals were in the module's edits_rejected
    alone."""
    mod = tmp_path / "ro.py"
    mod.write_text(READ_ONLY_REPLACE)
    events = tmp_path / "ev.jsonl"
    store = [] if "--shards" in mode else ["--store", tmp_path / "store"]     # (shards: temporary ones)
    res = run_cli("chain", mod, corpus / "http__zeek__get.pcap", "--events", events, "--json", "--strict", *mode,
                  *store)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    got = [json.loads(l) for l in events.read_text().splitlines()]
    assert got and {(e["accepted"], e["reason"]) for e in got} == {
        (False, "read-only module: payload is not declared in writes")}
    assert summary["modules"]["ro"]["edits_rejected"] == len(got)
    assert not summary["modules"]["ro"]["errors"]
    assert summary["edits"]["rejected"] == {"ro: read-only module": len(got)}


def _checksummed_udp6(src, dst, sport, dport, payload, final=None, zero=False):
    """An IPv6 UDP datagram with its checksum over `final` (a Routing header's last address, with
    one segment left) or the destination; 0 if `zero`."""
    import struct
    from pcapgen import ipv6, udp
    body = udp(sport, dport, payload)
    pseudo = src + (final or dst) + struct.pack(">IxxxB", len(body), 17) + body
    pseudo += b"\0" * (len(pseudo) % 2)
    c = sum(struct.unpack(f">{len(pseudo) // 2}H", pseudo))
    while c >> 16:
        c = (c & 0xFFFF) + (c >> 16)
    body = body[:6] + struct.pack(">H", 0 if zero else (~c & 0xFFFF) or 0xFFFF) + body[8:]
    if final is None:
        return ipv6(src, dst, 17, body)
    routing = struct.pack(">BBBB4x", 17, 2, 0, 1) + final               # type 0, one segment left
    return ipv6(src, dst, 43, routing + body)


def test_nat_keeps_ipv6_udp_checksums_right_with_a_routing_header_and_zero_without_one(tmp_path):
    """The destination of a packet with a Routing header (segments left) is its next hop, not in
    the checksum: nat made that checksum wrong. An IPv6 UDP checksum of 0 (a tunnel's, RFC 6935)
    came out non-zero and wrong."""
    from pcapgen import A6, B6, ether, pcap
    final = bytes.fromhex("20010db8000000000000000000000009")
    pkts = [_checksummed_udp6(A6, B6, 40000, 53, b"routed query", final=final),
            _checksummed_udp6(B6, A6, 53, 40000, b"routed answer"),
            _checksummed_udp6(A6, B6, 40001, 53, b"tunnelled", zero=True)]
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(pcap([(1_700_000_000, i, ether(p, ethertype=0x86DD)) for i, p in enumerate(pkts)]))
    res = run_cli("chain", "nat(to=[2001:db8::77]:5353)", src, "-w", out, "--json", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr

    def rows(path):
        return [r.split("\t") for r in subprocess.run(
            [require("tshark"), "-o", "udp.check_checksum:TRUE", "-r", str(path), "-T", "fields", "-e", "ipv6.dst",
             "-e", "ipv6.src", "-e", "udp.checksum", "-e", "udp.checksum.status"],
            capture_output=True, text=True, check=True).stdout.splitlines()]
    before, after = rows(src), rows(out)
    assert [r[3] for r in before] == ["1", "1", "4"]           # good, good, zero (illegal to tshark)
    assert [r[3] for r in after] == ["1", "1", "4"] and after[2][2] == "0x0000"
    assert after[0][0] == after[1][1] == after[2][0] == "2001:db8::77"


def _checksummed_udp4(src, dst, sport, dport, payload, route=None, pointer=4):
    """An IPv4 UDP datagram with a loose source route option (`route`, its last address the
    final destination; `pointer` 4: every hop left, past its end: the route done) after a
    no-op, checksums right: the UDP one over the final destination while hops are left."""
    import struct
    from pcapgen import ipv4, udp

    def csum(b):
        b += b"\0" * (len(b) % 2)
        c = sum(struct.unpack(f">{len(b) // 2}H", b))
        while c >> 16:
            c = (c & 0xFFFF) + (c >> 16)
        return ~c & 0xFFFF
    body = udp(sport, dport, payload)
    final = route[-4:] if route and pointer <= 3 + len(route) else dst
    c = csum(src + final + struct.pack(">xBH", 17, len(body)) + body) or 0xFFFF
    body = body[:6] + struct.pack(">H", c) + body[8:]
    opts = b"" if route is None else b"\x01" + struct.pack(">BBB", 131, 3 + len(route), pointer) + route
    packet = ipv4(src, dst, 17, body, options=opts + b"\0" * (-len(opts) % 4))
    hlen = len(packet) - len(body)
    return packet[:10] + struct.pack(">H", csum(packet[:hlen])) + packet[12:]


def test_nat_keeps_ipv4_udp_checksums_right_with_a_source_route(tmp_path):
    """An IPv4 loose source route with hops left: the destination field is the next hop, and
    the UDP checksum covers the route's last address (RFC 9293 3.1): nat made it wrong. A route
    already done: the destination field is the final one, covered as without a route."""
    from pcapgen import A, B, ether, pcap
    hops = bytes([10, 8, 8, 8]) + bytes([10, 9, 9, 9])
    pkts = [_checksummed_udp4(A, B, 40000, 53, b"routed query", route=hops),
            _checksummed_udp4(B, A, 53, 40000, b"answer"),
            _checksummed_udp4(A, B, 40001, 53, b"route done", route=hops, pointer=12)]
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(pcap([(1_700_000_000, i, ether(p)) for i, p in enumerate(pkts)]))
    res = run_cli("chain", "nat(to=10.0.0.77:5353)", src, "-w", out, "--json", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr

    def rows(path):
        return [r.split("\t") for r in subprocess.run(
            [require("tshark"), "-o", "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-r", str(path),
             "-T", "fields", "-e", "udp.checksum.status", "-e", "ip.checksum.status", "-e", "udp.dstport"],
            capture_output=True, text=True, check=True).stdout.splitlines()]
    assert rows(src) == [["1", "1", "53"], ["1", "1", "40000"], ["1", "1", "53"]]
    assert rows(out) == [["1", "1", "5353"], ["1", "1", "40000"], ["1", "1", "5353"]]
    sent = frames(out)
    assert bytes(sent[0][30:34]) == bytes(sent[2][30:34]) == bytes([10, 0, 0, 77])


def test_nat_counts_the_flows_of_the_other_address_family_it_leaves(tmp_path):
    from pcapgen import A6, B6, ether, pcap
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap([(1_700_000_000, 0, ether(_checksummed_udp6(A6, B6, 40000, 53, b"q"), ethertype=0x86DD))]))
    res = run_cli("chain", "nat(to=10.0.0.9)", src, "-w", tmp_path / "out.pcap", "--json", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["modules"]["nat"]["other_family"] == 1


def test_a_fragment_sent_again_after_its_datagram_was_rebuilt_leaves_with_the_datagrams_edits(tmp_path):
    """It left with its old destination address: the address a NAT hides, out of the NAT."""
    import struct
    from pcapgen import A6, B6, ether, ipv6, pcap
    dgram = _checksummed_udp6(A6, B6, 41000, 9000, b"A" * 500)[40:]          # the UDP datagram
    frags = []
    for start, end in ((0, 200), (200, 400), (400, len(dgram))):
        more = end < len(dgram)
        header = struct.pack(">BBHI", 17, 0, start | more, 501)
        frags.append(ether(ipv6(A6, B6, 44, header + dgram[start:end]), ethertype=0x86DD))
    frags.append(frags[1])
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(pcap([(1_700_000_000, i * 10_000, f) for i, f in enumerate(frags)]))
    res = run_cli("chain", "nat(to=[2001:db8::77])", src, "-w", out, "--json", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["egress"]["edited"] == 4
    new = bytes.fromhex("20010db8000000000000000000000077")
    assert [f[14 + 24:14 + 40] for f in frames(out)] == [new] * 4



@pytest.mark.parametrize("writes", [{"ip.dst"}, set()])
def test_an_edit_that_names_no_field_is_rejected(tmp_path, writes):
    """flow.edit(record) changed nothing and said it was accepted."""
    from flowsift.modules import Module
    no_field = "no field to change: edit(record, ip_dst=..., tcp_dport=...)"
    cap = segments_capture(tmp_path, client=[b"abc"], server=[b"def"])

    class Empty(Module):
        """Edits nothing.

        Synopsis: empty
        """
        name = "empty"

        def on_packet(self, flow, record):
            r = flow.edit(record)
            self.emit("edit", accepted=r.accepted, reason=r.reason)
    Empty.writes = frozenset(writes)
    res = run_module(Empty, cap)
    got = {(e["accepted"], e["reason"]) for e in res.of_kind("edit")}
    # (a read-only module's reasons say so: it is the kind the summary counts them under)
    assert got == {(False, no_field if writes else f"read-only module: {no_field}")}
    assert res.counters("empty")["edits_rejected"] == len(res.of_kind("edit")) > 0
    if writes:
        assert res.summary["edits"]["rejected"] == {"empty: no field": len(res.of_kind("edit"))}


@pytest.mark.parametrize("write,why", [("", "-w '': an empty file name"), ("{tmp}", "is a directory"),
                                       ("{tmp}/no/such/out.pcap", "no such directory")])
def test_a_w_path_that_cannot_be_written_is_refused_before_the_run(tmp_path, corpus, write, why):
    """A path -w cannot write is a usage error before anything is read, not a failure at the end."""
    write = write.format(tmp=tmp_path)
    res = subprocess.run([sys.executable, "-m", "flowsift", "chain", "counter", str(corpus / "http__zeek__get.pcap"),
                          "-w", write, "--events", "/dev/null"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and why in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("write,why", [("/proc/x.pcap", "-w /proc/x.pcap: cannot write: No such file or directory"),
                                       ("/sys/x.pcap", "-w /sys/x.pcap: cannot write: Permission denied"),
                                       ("/proc/version", "-w /proc/version: cannot make /proc/.version.partial "
                                                         "(written first, then put in its place): No such file")])
@pytest.mark.parametrize("mode", [[], ["--inline"]])
def test_a_w_path_whose_open_fails_is_refused_before_anything_is_read(tmp_path, corpus, write, why, mode):
    """-w is opened (made) before the first packet is read: a path whose directory is there but
    takes no file (/proc, /sys) was found out only after the whole run, and with the reason
    of another open (that of the file written first, for /proc/version)."""
    store = tmp_path / "store"
    res = run_cli("chain", "counter", corpus / "http__zeek__get.pcap", *mode, "-w", write, "--store", store,
                  "--events", tmp_path / "events.jsonl", "--json")
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1, res.stderr
    if os.geteuid() == 0:       # (others are refused by the directory's permissions first)
        assert res.stderr.startswith(f"flowsift: chain: {why}"), res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing is made before -w is open"


@pytest.mark.parametrize("there", [False, True])
def test_a_w_file_opened_as_the_run_starts_is_put_in_place_once_whole(tmp_path, corpus, there):
    """The file made before the run (under a temporary name beside the output) replaces the
    output once written, and nothing else is left."""
    out = tmp_path / "o.pcap"
    if there:
        out.write_bytes(b"an earlier output")
    res = run_cli("chain", "counter", corpus / "http__zeek__get.pcap", "-w", out, "--events", "/dev/null", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["egress"]["file"] == str(out) and open_capture(out).format == "pcap"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.pcap"]


def test_dev_null_is_no_clash_between_two_outputs(corpus):
    res = run_cli("chain", "counter", corpus / "http__zeek__get.pcap", "-w", "/dev/null", "--events", "/dev/null",
                  "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["egress"]["file"] == "/dev/null"


def test_a_writing_module_without_an_output_is_said_once(tmp_path, corpus):
    """Edits accepted and counted with nothing to write them to: one line says so."""
    src = corpus / "http__zeek__get.pcap"
    res = run_cli("chain", "redact(pattern=Host)", src, "--events", "/dev/null", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["edits"]["accepted"]["redact"] > 0
    assert res.stderr == ("flowsift: module redact asks for edits but nothing is written: "
                          "add -w OUT.pcap or --out afpacket:IFACE|dpdk:PORT\n")
    for args in (["counter"], ["redact(pattern=Host)", "-w", tmp_path / "out.pcap"]):
        res = run_cli("chain", args[0], src, *args[1:], "--events", "/dev/null", "--json")
        assert res.returncode == 0 and "nothing is written" not in res.stderr, res.stderr


def test_w_on_a_capture_cut_short_writes_what_was_read_and_says_where_it_stopped(tmp_path, corpus):
    """As without -w: the summary of what was read, its `error` saying where, exit 2; the
    output holds every packet read before the defect, edited."""
    src, out = tmp_path / "cut.pcap", tmp_path / "out.pcap"
    src.write_bytes((corpus / "http__zeek__bro.org.pcap").read_bytes()[:20000])
    res = run_cli("chain", "redact(pattern=Host)", src, "-w", out, "--events", "/dev/null", "--json")
    assert res.returncode == 2
    summary = json.loads(res.stdout)
    assert "cut short" in summary["error"] and res.stderr == f"flowsift: {summary['error']}\n"
    assert summary["egress"]["packets"] == summary["packets"] == len(frames(out)) > 0
    assert summary["egress"]["edited"] > 0 and b"Host:" not in out.read_bytes()
    text = run_cli("chain", "redact(pattern=Host)", src, "-w", out, "--events", "/dev/null")
    assert text.returncode == 2 and "redacted" in text.stdout


def conn_dropper(tmp_path, conn=0):
    """A module that drops every packet of connection `conn`."""
    path = tmp_path / "dropconn.py"
    path.write_text(f'''
from flowsift.modules import Module

class DropConn(Module):
    """Drops every packet of connection {conn}.

    Synopsis: dropconn
    """
    name = "dropconn"
    reads = {{"records"}}
    writes = {{"drop"}}

    def on_packet(self, flow, record):
        if flow.conn == {conn}:
            flow.drop(record)
''')
    return path


def test_the_late_packets_of_a_connection_dropped_whole_are_dropped_too(tmp_path, corpus):
    """ACKs after the end of a connection every packet of which was dropped: they leave with it
    (late_dropped), not alone."""
    src, out = corpus / "retrans__zeek__ssh-dups.pcap", tmp_path / "out.pcap"
    res = run_cli("chain", conn_dropper(tmp_path), src, "-w", out, "--events", "/dev/null", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    late = summary["engine"]["late_packets"]
    assert late > 0 and summary["connections"]["tcp"] == 1
    assert summary["egress"]["late_dropped"] == late and summary["egress"]["packets"] == 0
    assert frames(out) == []


@pytest.mark.parametrize("name", ["out.pcapng", "OUT.PCAPNG"])
def test_w_named_for_pcapng_is_refused_before_the_run(tmp_path, name):
    """`-w out.pcapng` wrote a classic pcap under a pcapng name: -w writes pcap, as tcpdump -w
    does, so a name that says pcapng is one line, exit 2, before anything is read."""
    out, events = tmp_path / name, tmp_path / "ev.jsonl"
    res = run_cli("chain", "counter", ROOT / "examples" / "demo.pcap", "-w", out, "--events", events,
                  "--store", tmp_path / "store")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"flowsift: chain: -w {out}: -w writes a pcap (classic format), not pcapng: name it .pcap\n"
    assert not out.exists() and not events.exists()
    res = run_cli("chain", "counter", ROOT / "examples" / "demo.pcap", "-w", tmp_path / "out.pcap.gz", "--events",
                  events, "--store", tmp_path / "store")
    assert res.returncode == 2 and res.stderr == (f"flowsift: chain: -w {tmp_path / 'out.pcap.gz'}: -w writes an uncompressed "
                                                  f"pcap, not gz: name it .pcap (and compress it afterwards)\n")
    # a device or a pipe has no format in its name; .pcap is what -w writes
    res = run_cli("chain", "counter", ROOT / "examples" / "demo.pcap", "-w", tmp_path / "out.pcap", "--events",
                  "/dev/null", "--store", tmp_path / "store2")
    assert res.returncode == 0, res.stderr
    assert open_capture(tmp_path / "out.pcap").format == "pcap"
