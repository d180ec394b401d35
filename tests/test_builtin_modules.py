"""Built-in modules on corpus captures, checked against tshark's dissectors."""
import collections
import json
import subprocess

import pytest

from conftest import ROOT, require, run_cli


def events(capture, chain, tmp_path):
    out = tmp_path / "events.jsonl"
    store = tmp_path / f"store{len(list(tmp_path.glob('store*')))}"     # a new one each run
    res = run_cli("chain", chain, capture, "--events", out, "--json", "--store", store)
    assert res.returncode == 0, res.stderr
    return [json.loads(l) for l in out.read_text().splitlines()], json.loads(res.stdout)


def tshark_fields(capture, display_filter, *fields):
    tshark = require("tshark")
    args = [tshark, "-r", str(capture), "-Y", display_filter, "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("\t")) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["http__zeek__get.pcap", "http__pcpp__three_http_streams.pcap", "http__dpkt__http.pcap",
                                  "http__zeek__206_example_b.pcap", "ipv6__pcpp__four_ipv6_http_streams.pcap"])
def test_http_requests_and_responses_match_tshark(tmp_path, corpus, name):
    evs, summary = events(corpus / name, "http", tmp_path)
    ours = collections.Counter((e["method"], e["uri"]) for e in evs if e["kind"] == "request")
    theirs = collections.Counter(tshark_fields(corpus / name, "http.request", "http.request.method", "http.request.uri"))
    assert ours == theirs and sum(ours.values()) > 0
    # tshark dissects complete responses only; ours cut by the connection's end say complete=false
    codes = collections.Counter(e["status"] for e in evs if e["kind"] == "response" and e["complete"])
    want = collections.Counter(int(c) for (c,) in tshark_fields(corpus / name, "http.response", "http.response.code"))
    if name == "http__zeek__206_example_b.pcap":
        # tshark leaves out the first response of stream 0 (an 816,896-byte 206 body between two
        # pipelined requests); we find both, with their Content-Length bodies complete
        assert codes == want + collections.Counter({206: 1})
    else:
        assert codes == want
    assert all(e["method"] for e in evs if e["kind"] == "response")        # paired with their requests


def test_http_counts_directions_that_are_not_http_apart_from_the_chains_errors(tmp_path, corpus):
    """TLS connections beside HTTP ones: http switches their directions off and counts them
    under its own name; the chain's `errors` (exceptions in hooks) stays 0."""
    _, summary = events(corpus / "tls__suri__tls-subjectaltname.pcap", "http,tls", tmp_path)
    http, tls = summary["modules"]["http"], summary["modules"]["tls"]
    assert http["errors"] == 0 and http["requests"] > 0
    assert http["not_http"] >= tls["hellos"] > 0          # every ClientHello is a client direction http gave up


def test_http_on_the_demo_capture(tmp_path):
    evs, _ = events(ROOT / "examples" / "demo.pcap", "http", tmp_path)
    pairs = sorted((e["uri"], e["status"], e["response_body"]) for e in evs if e["kind"] == "response")
    assert pairs == [("/", 200, 49), ("/big.txt", 200, 20000), ("/index.html", 200, 49), ("/missing", 404, 335)]


def test_tls_server_names_match_tshark(tmp_path, corpus):
    name = corpus / "tls__suri__tls-subjectaltname.pcap"
    evs, _ = events(name, "tls", tmp_path)
    ours = collections.Counter(e["sni"] for e in evs if e["kind"] == "client_hello" and e["sni"])
    theirs = collections.Counter(s for (s,) in tshark_fields(name, "tls.handshake.type == 1",
                                                              "tls.handshake.extensions_server_name") if s)
    assert ours == theirs and len(ours) > 3


def test_tls_version_and_alpn_on_the_demo(tmp_path):
    evs, _ = events(ROOT / "examples" / "demo.pcap", "tls", tmp_path)
    (hello,) = [e for e in evs if e["kind"] == "client_hello"]
    assert hello["sni"] == "demo.flowsift.test" and hello["alpn"] == ["http/1.1"] and hello["version"] == "TLS 1.3"


def test_dns_over_udp_and_tcp(tmp_path):
    evs, _ = events(ROOT / "examples" / "demo.pcap", "dns", tmp_path)
    queries = sorted((e["proto"], e["qname"]) for e in evs if e["kind"] == "query")
    assert queries == [("tcp", "www.demo.flowsift.test."), ("udp", "example.org."), ("udp", "flowsift.test."),
                       ("udp", "www.demo.flowsift.test.")]
    assert all(e["answers"] == [f"{e['qname']} A 192.0.2.1"] for e in evs if e["kind"] == "answer")


def test_dns_queries_match_tshark(tmp_path, corpus):
    name = corpus / "vlan__pcpp__example2.pcap"
    evs, _ = events(name, "dns", tmp_path)
    ours = collections.Counter(e["qname"].rstrip(".") for e in evs if e["kind"] == "query")
    theirs = collections.Counter(q for (q,) in tshark_fields(name, "dns.flags.response == 0 && udp.port == 53",
                                                             "dns.qry.name"))
    assert ours == theirs and sum(ours.values()) > 5


@pytest.mark.parametrize("name", ["gap__zeek__gap-recovery.pcap", "gap__suri__tcp-simple-gap2.pcap",
                                  "gap__pcpp__unidirectional_tcp_stream_with_missing_packet.pcap",
                                  "retrans__zeek__retransmit-fast009.pcap", "trunc__zeek__truncated-header.pcap",
                                  "ipv6__pcpp__four_ipv6_http_streams.pcap"])
@pytest.mark.parametrize("mode", ["inline", "parallel"])
def test_counter_flows_match_the_streams_index(tmp_path, corpus, name, mode):
    """counter reads each connection once, at its end: its per-flow packets and gap bytes are
    those `flowsift streams` finds for each direction, and it sees a gap where streams does.
    Events name endpoints exactly as the index does (IPv6 too)."""
    out = tmp_path / "ev.jsonl"
    res = run_cli("chain", "counter", corpus / name, "--events", out, "--json", *(["--inline"] if mode == "inline" else []))
    assert res.returncode == 0, res.stderr
    flows = {(e["client"], e["server"]): e for e in map(json.loads, out.read_text().splitlines())}
    run_cli("streams", corpus / name, "-o", tmp_path / "s", check=True)
    index = [json.loads(l) for l in (tmp_path / "s" / "index.jsonl").read_text().splitlines()]
    want = {}
    for d in index:
        if d["proto"] != "tcp":
            continue
        key = (d["src"], d["dst"]) if (d["src"], d["dst"]) in flows else (d["dst"], d["src"])
        side = 0 if key == (d["src"], d["dst"]) else 1
        w = want.setdefault(key, {"packets": [0, 0], "gaps": [0, 0], "gap_bytes": [0, 0]})
        w["packets"][side] = d["packets"]
        w["gaps"][side] = len(d["gaps"])
        w["gap_bytes"][side] = sum(g["length"] for g in d["gaps"])
    got = {k: {f: flows[k][f] for f in ("packets", "gaps", "gap_bytes")} for k in want}
    assert len(got) == len(flows)
    assert sum(sum(w["gaps"]) for w in want.values()) > 0 or not name.startswith("gap__")
    # a hole the record file notes in several entries (one per cut record) is one gap in both
    assert got == want


def test_the_main_job(tmp_path):
    """The README's first command: http, tls, dns and counter over the bundled capture."""
    res = run_cli("chain", "http,tls,dns,counter", ROOT / "examples" / "demo.pcap")
    assert res.returncode == 0, res.stderr
    kinds = collections.Counter(json.loads(l)["kind"] for l in res.stdout.splitlines() if l.startswith("{"))
    assert kinds["request"] == 4 and kinds["response"] == 4 and kinds["client_hello"] == 1
    assert kinds["query"] == 4 and kinds["answer"] == 4 and kinds["flow"] == 9
    # stdout carries the events only: the tables go to stderr
    assert all(l.startswith("{") for l in res.stdout.splitlines())
    assert "modules" in res.stderr and "counter" in res.stderr


@pytest.mark.parametrize("width", [80, 200])
def test_the_main_jobs_table_shows_every_value_whole_on_a_narrow_terminal(width):
    """Ten columns do not fit 80: a value may be folded onto another line but never cut (an
    address shown as "127.…" says nothing); only headers are shortened, and only when narrow."""
    import os
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "flowsift", "chain", "counter", str(ROOT / "examples" / "demo.pcap"),
                          "--events", os.devnull], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": str(width), "TERM": "dumb"})
    assert res.returncode == 0, res.stderr
    table = res.stdout.split("modules")[0]
    lines = table.splitlines()
    rule = [i for i, line in enumerate(lines) if "───" in line][0]
    body = lines[rule + 1:]
    assert all(len(line) <= width for line in lines)
    assert "…" not in "".join(body)
    assert ("…" in "".join(lines[:rule])) == (width == 80)
    from flowsift.chain import run_chain
    rows = run_chain("counter", str(ROOT / "examples" / "demo.pcap"), inline=True)["tables"]["counter"]
    # each row starts a line with its protocol; its cells (and folded pieces) follow on its lines
    starts = [i for i, line in enumerate(body) if line.split()[:1] in (["tcp"], ["udp"])]
    assert len(starts) == len(rows) == 9
    for row, i, j in zip(rows, starts, starts[1:] + [len(body)]):
        text = " ".join(body[i:j])
        for v in (row["packets"], row["bytes"]):
            assert f"{v[0]}/{v[1]}" in text.split()
        assert row["client"] in text.split() and row["server"] in text.split()

def test_strsearch_finds_patterns_across_packet_boundaries(tmp_path, corpus):
    from flowsift.reassembly import Reassembler
    from flowsift.testing import run_module, segments_capture
    cap = segments_capture(tmp_path, client=[b"xxxNEED", b"LExxx needle", b"NEEDLE"], server=[b"Needle here"])
    res = run_module("strsearch(patterns=inline:NEEDLE|needle)", cap)
    got = sorted((e["direction"], e["offset"], e["pattern"]) for e in res.of_kind("match"))
    assert got == [("c2s", 3, "NEEDLE"), ("c2s", 13, "needle"), ("c2s", 19, "NEEDLE")]
    res = run_module("strsearch(patterns=inline:needle,nocase=true)", cap)
    assert len(res.of_kind("match")) == 4
    # on a real capture: every match offset points at the pattern in the reassembled stream
    rules = tmp_path / "rules.txt"
    rules.write_text("Content-Type\nHTTP/1.1 206\n\\x0d\\x0a\\x0d\\x0a\n")
    name = corpus / "http__zeek__206_example_b.pcap"
    res = run_module(f"strsearch(patterns={rules})", name)
    r = Reassembler()
    r.feed_capture(name)
    for e in res.of_kind("match"):
        d = 0 if e["direction"] == "c2s" else 1
        data = bytes(r.collector.dirs[(e["conn"], d)].data)
        assert data[e["offset"]:e["offset"] + len(e["pattern"])] == e["pattern"].encode("latin-1")
    assert res.counters("strsearch")["matches"] >= 6


def test_http_reads_connections_seen_from_the_middle(tmp_path, corpus):
    """650HttpResponses has only the servers' sides, SYN-less and lossy: the side seen first (the
    'client') carries responses. http parsed them as requests and gave up: no event at all.
    It now finds each midstream side's first message start, requests or responses."""
    evs, summary = events(corpus / "midstream__pcpp__650HttpResponses.pcap", "http", tmp_path)
    assert {e["kind"] for e in evs} == {"response"}
    codes = collections.Counter(e["status"] for e in evs if e["complete"])
    want = collections.Counter(int(c) for (c,) in tshark_fields(corpus / "midstream__pcpp__650HttpResponses.pcap",
                                                                "http.response", "http.response.code"))
    # tshark leaves out responses whose headers it cannot reassemble across the losses
    assert sum(want.values()) == 365 and all(codes[c] >= n for c, n in want.items())
    # a keep-alive byte before a midstream request (\x00GET /ping...) hid two requests
    evs, _ = events(corpus / "vlan__pcpp__example2.pcap", "http", tmp_path)
    ours = collections.Counter((e["method"], e["uri"]) for e in evs if e["kind"] == "request")
    # (tshark's http.request counts SSDP's M-SEARCH datagrams too: http reads TCP only)
    theirs = collections.Counter(tshark_fields(corpus / "vlan__pcpp__example2.pcap", "http.request && tcp",
                                               "http.request.method", "http.request.uri"))
    assert ours == theirs and sum(ours.values()) == 153


def conversation(path, turns, port=80, end="fin"):
    """A pcap of one TCP connection (handshake, `turns`, FINs) between pcapgen's A:40000 and
    B:`port`; turns: (client sends?, payload[, lost]) -- a lost segment is left out of the
    capture, its bytes counted in the sequence numbers (and acknowledged by what follows).
    `end`: "fin" (both sides), "rst" (the server resets) or "none" (the capture just stops)."""
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    frames, seq = [], {True: 100, False: 500}

    def add(c2s, flags, payload=b"", lost=False):
        src, dst, sp, dp = (A, B, 40000, port) if c2s else (B, A, port, 40000)
        if not lost:
            us = len(frames) * 1000
            frames.append((1_700_000_000, us, ether(ipv4(src, dst, 6, tcp(sp, dp, seq=seq[c2s], ack=seq[not c2s],
                                                                            flags=flags, payload=payload)))))
        seq[c2s] += len(payload) + (1 if flags & 0x03 else 0)

    add(True, 0x02)
    add(False, 0x12)
    add(True, 0x10)
    for c2s, payload, *lost in turns:
        add(c2s, 0x18, payload, bool(lost and lost[0]))
    if end == "fin":
        add(True, 0x11)
        add(False, 0x11)
        add(True, 0x10)
    elif end == "rst":
        add(False, 0x14)
    path.write_bytes(pcap(frames))
    return path


def http_pairs(capture, **kw):
    from flowsift.testing import run_module
    res = run_module("http", capture, **kw)
    return [(e["status"], e["method"], e["uri"], e["complete"]) for e in res.of_kind("response")], res


def test_http_a_lost_response_does_not_shift_the_pairing_of_the_next_ones(tmp_path, corpus):
    """The header block of the 2nd response is lost: it still answers /two (status unknown,
    incomplete); the next ones answer /three and /four, not the request before theirs."""
    cap = conversation(tmp_path / "respgap.pcap", [
        (True, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"),
        (True, b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\n", True),
        (False, b"two"),
        (True, b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthree"),
        (True, b"GET /four HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 302 Found\r\nContent-Length: 4\r\n\r\nfour"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/one", True), (None, "GET", "/two", False), (200, "GET", "/three", True),
                     (302, "GET", "/four", True)]
    assert res.counters("http")["lost_responses"] == 1
    # tshark pairs each 21999-byte text/css response with /5fc521982b, the one after the gap too
    evs, _ = events(corpus / "gap__zeek__gap-recovery.pcap", "http", tmp_path)
    css = [e for e in evs if e["kind"] == "response" and e["content_type"] == "text/css"]
    assert len(css) == 5 and all(e["uri"] == "/5fc521982b" for e in css)
    assert [e["complete"] for e in css] == [False, True, True, True, True]      # the first has the gap
    html = [e for e in evs if e["kind"] == "response" and e["content_type"].startswith("text/html")]
    assert len(html) == 5 and all(e["uri"] == "/" for e in html)


def test_http_a_request_whose_body_was_lost_is_reported_and_answered(tmp_path):
    """POST's body is lost, its header block arrived: it is reported (complete=false) and
    answered by the 201; GET /three by the 200."""
    cap = conversation(tmp_path / "reqgap.pcap", [
        (True, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"),
        (True, b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"),
        (True, b"0123456789", True),
        (True, b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\ntwo"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthree"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/one", True), (201, "POST", "/two", True), (200, "GET", "/three", True)]
    reqs = [(e["method"], e["uri"], e["request_body"], e["complete"]) for e in res.of_kind("request")]
    assert reqs == [("GET", "/one", 0, True), ("POST", "/two", 0, False), ("GET", "/three", 0, True)]
    # a request lost whole (header block and all) is still answered by its response
    cap = conversation(tmp_path / "reqlost.pcap", [
        (True, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"),
        (True, b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (True, b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 204 No Content\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/one", True), (204, None, None, True), (200, "GET", "/three", True)]
    assert res.counters("http")["lost_requests"] == 1


def test_http_head_1xx_204_and_304_responses_have_no_body(tmp_path):
    """A HEAD's 200 says Content-Length: 1234 and has no body: the 404 after it is the next
    response. A 100 Continue is interim: the 201 answers the POST, the 200 the GET."""
    cap = conversation(tmp_path / "head.pcap", [
        (True, b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        (True, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!"),
        (True, b"GET /c HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"e\"\r\n\r\n"),
        (False, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n"),
        (True, b"DELETE /d HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"),
        (True, b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "HEAD", "/a", True), (404, "GET", "/b", True), (304, "GET", "/c", True),
                     (204, "DELETE", "/d", True), (200, "GET", "/e", True)]
    assert [e["response_body"] for e in res.of_kind("response")] == [0, 5, 0, 0, 2]
    cap = conversation(tmp_path / "continue.pcap", [
        (True, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"),
        (False, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (True, b"abcd"),
        (False, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        (True, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(100, "POST", "/up", True), (201, "POST", "/up", True), (200, "GET", "/next", True)]
    assert [e["interim"] for e in res.of_kind("response")] == [True, False, False]
    assert res.counters("http")["responses"] == 2 and res.counters("http")["interim"] == 1


def test_http_reads_a_header_written_with_a_space_before_its_colon(tmp_path, corpus):
    """`Name : value` (Express servers send it) is refused by strict parsers; servers and tshark
    read it, and so does http, counting it as lenient: the rest of the connection is read."""
    cap = conversation(tmp_path / "spacecolon.pcap", [
        (True, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Credentials : true\r\nContent-Length: 2\r\n\r\nok"),
        (True, b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/1", True), (200, "GET", "/2", True)]
    assert res.counters("http")["lenient"] == 1
    name = corpus / "vlan__pcpp__example2.pcap"
    evs, _ = events(name, "http", tmp_path)
    ours = collections.Counter(e["status"] for e in evs if e["kind"] == "response" and e["server"] == "137.116.210.57:80")
    theirs = collections.Counter(int(c) for (c,) in tshark_fields(name, "http.response && ip.src == 137.116.210.57",
                                                                  "http.response.code"))
    assert ours == theirs and sum(ours.values()) == 14


def client_hello(sni=b"example.com", alpn=(b"h2", b"http/1.1")):
    """A TLS 1.3 ClientHello handshake message (type, length, body) with SNI, ALPN and
    supported_versions."""
    import struct

    def ext(t, data):
        return struct.pack(">HH", t, len(data)) + data
    name = struct.pack(">BH", 0, len(sni)) + sni
    protocols = b"".join(bytes([len(a)]) + a for a in alpn)
    exts = (ext(0x0A0A, b"") + ext(0, struct.pack(">H", len(name)) + name)
            + ext(16, struct.pack(">H", len(protocols)) + protocols) + ext(43, b"\x04\x03\x04\x03\x03"))
    body = (b"\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32) + b"\x00\x04\x13\x01\x13\x02\x01\x00"
            + struct.pack(">H", len(exts)) + exts)
    return b"\x01" + len(body).to_bytes(3, "big") + body


@pytest.mark.parametrize("cut", [None, 2, 40, 95])
def test_tls_puts_together_a_client_hello_split_over_records(tmp_path, cut):
    """The hello in two handshake records, the boundary anywhere (in the handshake header, after
    40 bytes, inside the server name): the same SNI, ALPN and version as from one record."""
    import struct
    from flowsift.testing import run_module
    hello = client_hello()
    parts = [hello] if cut is None else [hello[:cut], hello[cut:]]
    if cut == 95:
        assert hello.find(b"example.com") < cut < hello.find(b"example.com") + len(b"example.com")
    records = b"".join(struct.pack(">BHH", 22, 0x0301, len(p)) + p for p in parts)
    cap = conversation(tmp_path / "hello.pcap", [(True, records), (False, b"\x16\x03\x03\x00\x04\x02\x00\x00\x00")],
                       port=443)
    res = run_module("tls", cap)
    (e,) = res.of_kind("client_hello")
    assert (e["sni"], e["alpn"], e["version"], e["sslv2"]) == ("example.com", ["h2", "http/1.1"], "TLS 1.3", False)
    assert res.counters("tls").get("not_tls", 0) == 0


def test_tls_reports_an_sslv2_format_client_hello(tmp_path, corpus):
    """ssl.v3.pcap's first connection opens with an SSLv2-format ClientHello offering TLS 1.0
    (tshark: "SSLv2 Record Layer: Client Hello, Version TLS 1.0"); the other two with TLS
    records."""
    evs, summary = events(corpus / "tls__zeek__ssl.v3.pcap", "tls", tmp_path)
    got = sorted((e["client"], e["version"], e["sslv2"], e["sni"]) for e in evs if e["kind"] == "client_hello")
    assert got == [("192.150.187.164:58868", "TLS 1.0", True, None), ("192.150.187.164:58869", "TLS 1.0", False, None),
                   ("192.150.187.164:58870", "TLS 1.0", False, None)]
    assert summary["modules"]["tls"]["sslv2"] == 1 and summary["modules"]["tls"].get("not_tls", 0) == 0


def test_counter_close_is_the_connections_reason_from_both_directions(tmp_path):
    """The client closes with FIN, the server resets: the connection was reset (counter said
    fin, the client's reason). Both FIN: fin. A FIN from one side and the capture's end: eof."""
    from flowsift.modules.runner import connection_close
    from flowsift.testing import run_module
    from pcapgen import A, B, ether, ipv4, pcap, tcp

    def capture(name, last):
        pkts = [(A, B, 40000, 80, 100, 0, 0x02, b""), (B, A, 80, 40000, 500, 101, 0x12, b""),
                (A, B, 40000, 80, 101, 501, 0x10, b""), (A, B, 40000, 80, 101, 501, 0x18, b"hello"),
                (B, A, 80, 40000, 501, 106, 0x10, b""), (A, B, 40000, 80, 106, 501, 0x11, b"")] + last
        frames = [(1_700_000_000, i * 1000, ether(ipv4(s, d, 6, tcp(sp, dp, seq=q, ack=a, flags=f, payload=p))))
                  for i, (s, d, sp, dp, q, a, f, p) in enumerate(pkts)]
        (tmp_path / name).write_bytes(pcap(frames))
        (flow,) = run_module("counter", tmp_path / name).of_kind("flow")
        return flow["close"]

    assert capture("rst.pcap", [(B, A, 80, 40000, 501, 107, 0x14, b"")]) == "rst"
    assert capture("fin.pcap", [(B, A, 80, 40000, 501, 107, 0x11, b""), (A, B, 40000, 80, 107, 502, 0x10, b"")]) == "fin"
    assert capture("eof.pcap", [(B, A, 80, 40000, 501, 107, 0x10, b"")]) == "eof"
    assert connection_close(1, 2) == connection_close(2, 1) == connection_close(5, 2) == "rst"
    assert connection_close(1, 1) == "fin" and connection_close(1, 0) == "fin" and connection_close(0, 0) is None
    assert connection_close(1, 3) == "timeout" and connection_close(5, 1) == "eof" and connection_close(4, 5) == "evicted"


def test_dns_reports_mdns_answers_dnspython_refuses_in_part(tmp_path, corpus):
    """mDNS answers compress the names in their NSEC records, which dnspython refuses
    (DecompressionForbidden): the 4 answers were counted malformed. tshark decodes all 8
    messages; so does dns now, the answers marked partial."""
    name = corpus / "linktype__tcpflow__local2.pcap"
    evs, summary = events(name, "dns", tmp_path)
    theirs = tshark_fields(name, "mdns", "dns.flags.response")
    ours = [e for e in evs if e["kind"] in ("query", "answer")]
    assert len(ours) == len(theirs) == 8
    assert sorted(e["kind"] for e in ours) == sorted("answer" if r in ("1", "True") else "query" for (r,) in theirs)
    counters = summary["modules"]["dns"]
    assert counters["partial"] == 4 and counters.get("malformed", 0) == 0
    assert all(e["partial"] for e in ours if e["kind"] == "answer") and all(e["answers"] for e in ours if e["kind"] == "answer")


def test_dns_events_carry_the_header_flags_and_ports_restrict_the_flows(tmp_path):
    """A UDP answer with TC set (the answer goes on over TCP): tc=true, and aa, rd, ra as set;
    dns(ports=5300) reads a resolver on port 5300, which the default ports leave out."""
    import dns.flags
    import dns.message
    from flowsift.testing import run_module
    from pcapgen import A, B, ether, ipv4, pcap, udp
    q = dns.message.make_query("a.example.com", "A")
    r = dns.message.make_response(q)
    r.flags |= dns.flags.TC | dns.flags.AA | dns.flags.RA
    for port in (53, 5300):
        frames = [(1_700_000_000, i, ether(ipv4(s, d, 17, udp(sp, dp, m.to_wire()))))
                  for i, (s, d, sp, dp, m) in enumerate([(A, B, 40000, port, q), (B, A, port, 40000, r)])]
        (tmp_path / f"tc{port}.pcap").write_bytes(pcap(frames))
    res = run_module("dns", tmp_path / "tc53.pcap")
    flags = lambda e: {k: e[k] for k in ("aa", "tc", "rd", "ra", "partial")}
    (query,), (answer,) = res.of_kind("query"), res.of_kind("answer")
    assert flags(query) == {"aa": False, "tc": False, "rd": True, "ra": False, "partial": False}
    assert flags(answer) == {"aa": True, "tc": True, "rd": True, "ra": True, "partial": False}
    assert run_module("dns", tmp_path / "tc5300.pcap").events == []
    assert len(run_module("dns(ports=5300;53)", tmp_path / "tc5300.pcap").events) == 2


def test_dns_events_say_who_sent_the_message(tmp_path, corpus):
    """An mDNS responder that sent first is the flow's client: its answers to 224.0.0.251
    (local2's 192.168.1.12:5353 flow) read as if the group had answered. Events carry the
    direction of the message, over UDP and TCP."""
    import struct

    import dns.message
    from flowsift.testing import run_module
    from pcapgen import A, B, ether, ipv4, pcap, udp
    q = dns.message.make_query("a.example.com", "A")
    r = dns.message.make_response(q)
    frames = [(1_700_000_000, i, ether(ipv4(s, d, 17, udp(sp, dp, m.to_wire()))))
              for i, (s, d, sp, dp, m) in enumerate([(A, B, 40000, 53, q), (B, A, 53, 40000, r)])]
    (tmp_path / "udp.pcap").write_bytes(pcap(frames))
    got = lambda cap: [(e["kind"], e["direction"]) for e in run_module("dns", cap).events]
    assert got(tmp_path / "udp.pcap") == [("query", "c2s"), ("answer", "s2c")]
    wire = lambda m: struct.pack(">H", len(m.to_wire())) + m.to_wire()
    cap = conversation(tmp_path / "tcp.pcap", [(True, wire(q)), (False, wire(r))], port=53)
    assert got(cap) == [("query", "c2s"), ("answer", "s2c")]
    evs = run_module("dns", corpus / "linktype__tcpflow__local2.pcap").events
    sent = collections.Counter((e["client"], e["kind"], e["direction"]) for e in evs if e["proto"] == "udp")
    assert sent[("192.168.1.12:5353", "answer", "c2s")] == 2 and not [k for k in sent if k[2] == "s2c"]


def test_strsearch_matches_non_ascii_patterns_as_their_utf8_bytes(tmp_path):
    """A pattern is text searched for as its UTF-8 bytes (inline: café never matched; from a
    file it did, reported as 'cafÃ©'); events name it as given. nocase folds ASCII only."""
    from flowsift.testing import run_module, segments_capture
    text = "GET /café?q=naïve HTTP/1.1\r\nX: ÉCOLE école\r\n\r\n".encode("utf-8")
    cap = segments_capture(tmp_path, client=[text[:4], text[4:6], text[6:]])
    where = lambda p: text.find(p.encode("utf-8"))
    got = lambda spec: sorted((e["pattern"], e["offset"]) for e in run_module(spec, cap).of_kind("match"))
    assert got("strsearch(patterns=inline:café|naïve)") == [("café", where("café")), ("naïve", where("naïve"))]
    # C folds to c; É (c3 89) is not é (c3 a9): école is not found for ÉCOLE
    assert got("strsearch(patterns=inline:Café|ÉCOLE,nocase=true)") == [("Café", where("café")), ("ÉCOLE", where("ÉCOLE"))]
    rules = tmp_path / "rules.txt"
    rules.write_bytes("naïve\n".encode("utf-8") + b"\\xc3\\xa9cole\n")
    assert got(f"strsearch(patterns={rules})") == [("naïve", where("naïve")), ("école", where("école"))]


def test_strsearch_searches_udp_datagram_by_datagram(tmp_path, corpus):
    """A UDP flow's stream is its datagrams end to end: a pattern made of one datagram's end and
    the next one's start matched (mDNS in local2: 8 bytes at offset 86 of 192.168.1.12's
    flow), though no receiver sees those bytes together. Each datagram is searched alone now,
    the part a snaplen kept of a cut one included; TCP still matches across segments."""
    from flowsift.testing import run_module, segments_capture
    from pcapgen import A, B, ether, ipv4, pcap, udp
    grams = [b"..xxAB", b"CDyy..", b"zzABCDzz", b"ABCDAB" + b"." * 100, b"CD"]
    frames = [(1_700_000_000, i, ether(ipv4(A, B, 17, udp(40000, 5353, g)))) for i, g in enumerate(grams)]
    cut = frames[3][2]
    frames[3] = (frames[3][0], frames[3][1], cut[:len(cut) - 100], len(cut))      # the snaplen kept "ABCDAB"
    frames.append((1_700_000_000, 9, ether(ipv4(B, A, 17, udp(5353, 40000, b"ABCD")))))
    (tmp_path / "udp.pcap").write_bytes(pcap(frames))
    res = run_module("strsearch(patterns=inline:ABCD|xxAB|DAB)", tmp_path / "udp.pcap")
    starts = [0, 6, 12, 20, 126]
    assert sorted((e["direction"], e["offset"], e["pattern"]) for e in res.of_kind("match")) == [
        ("c2s", starts[0] + 2, "xxAB"), ("c2s", starts[2] + 2, "ABCD"), ("c2s", starts[3], "ABCD"),
        ("c2s", starts[3] + 3, "DAB"), ("s2c", 0, "ABCD")]
    cap = segments_capture(tmp_path, client=grams[:2])
    assert [e["offset"] for e in run_module("strsearch(patterns=inline:ABCD)", cap).of_kind("match")] == [4]
    rules = tmp_path / "rules.txt"
    rules.write_text("\\x00\\x0c\\x00\\x01\\x00\\x00\\x84\\x00\n")
    res = run_module(f"strsearch(patterns={rules})", corpus / "linktype__tcpflow__local2.pcap")
    assert res.of_kind("match") == []


def test_strsearch_pattern_escapes_inline_and_in_a_file(tmp_path):
    """A line of spaces was dropped (a file of them: "no patterns"); inline patterns took no
    escapes (inline:\\x48ost: found nothing) and could not hold a '|'. Both forms now take the
    same escapes: \\xNN, \\t \\r \\n, a backslash before punctuation for itself; a bad one is
    refused naming it. chain --help's strsearch example works."""
    import re

    from flowsift.modules.base import ModuleError
    from flowsift.modules.loader import parse_chain
    from flowsift.testing import run_module, segments_capture
    text = b"GET /a|b HTTP/1.1\r\nHost: x,y   z\\w\r\n\r\n"
    cap = segments_capture(tmp_path, client=[text])
    got = lambda spec: sorted((e["pattern"], e["offset"]) for e in run_module(spec, cap).of_kind("match"))
    assert got(r"strsearch(patterns=inline:\x48ost:\x20|a\|b|x\,y|\\w\x0d\n)") == [
        ("Host: ", text.find(b"Host")), ("\\w\r\n", text.find(b"\\w")), ("a|b", 5), ("x,y", text.find(b"x,y"))]
    spaces = tmp_path / "spaces.txt"
    spaces.write_bytes(b"   \r\n\n")
    assert got(f"strsearch(patterns={spaces})") == [("   ", text.find(b"   "))]
    rules = tmp_path / "rules.txt"
    rules.write_bytes(b"a\\|b\n\\\\w\nHTTP\\x2f1\n")
    assert got(f"strsearch(patterns={rules})") == [("HTTP/1", text.find(b"HTTP")), ("\\w", text.find(b"\\w")),
                                                   ("a|b", 5)]
    rules.write_bytes(b"ok\nC:\\Users\n")
    with pytest.raises(ModuleError, match=r"line 2: bad escape '\\\\U'"):
        run_module(f"strsearch(patterns={rules})", cap)
    with pytest.raises(ModuleError, match=r"inline patterns: bad escape '\\\\x4'"):
        run_module(r"strsearch(patterns=inline:\x4)", cap)
    example = re.search(r"'(http,strsearch\([^']*\))'", (ROOT / "flowsift" / "cli.py").read_text())   # (chain --help)
    for cls, config in parse_chain(example.group(1)):
        cls(config)                                      # (the patterns it names can be read)


def test_strsearch_counts_holes_as_counter_does(tmp_path, corpus):
    """A segment the snaplen cut and the lost one after it are two gap entries and one hole:
    strsearch counted 2 (10 on overlap__zeek__reassembly, where counter counts 9)."""
    from flowsift.testing import run_module
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    pkts = [(A, B, 40000, 80, 100, 0, 0x02, b""), (B, A, 80, 40000, 500, 101, 0x12, b""),
            (A, B, 40000, 80, 101, 501, 0x10, b""), (A, B, 40000, 80, 101, 501, 0x18, b"a" * 100),
            (A, B, 40000, 80, 301, 501, 0x18, b"tail"), (B, A, 80, 40000, 501, 305, 0x10, b"")]
    frames = [(1_700_000_000, i * 1000, ether(ipv4(s, d, 6, tcp(sp, dp, seq=q, ack=a, flags=f, payload=p))))
              for i, (s, d, sp, dp, q, a, f, p) in enumerate(pkts)]
    cut = frames[3][2]
    frames[3] = (frames[3][0], frames[3][1], cut[:len(cut) - 90], len(cut))      # 10 bytes kept; 101..300 lost
    (tmp_path / "hole.pcap").write_bytes(pcap(frames))
    for cap in (tmp_path / "hole.pcap", corpus / "overlap__zeek__reassembly.pcap"):
        res = run_module("strsearch(patterns=inline:tail),counter", cap)
        assert res.counters("strsearch")["gaps"] == res.counters("counter")["gaps"] > 0
    assert run_module("strsearch(patterns=inline:tail),counter", tmp_path / "hole.pcap").counters("counter")["gaps"] == 1
    # http too, in connections that show HTTP (it counted 10 and 3 where counter counts 9 and 2)
    for name in ("overlap__zeek__reassembly.pcap", "trunc__suri__tcp-rst-unacked-stream-10.pcap"):
        res = run_module("http,counter", corpus / name)
        assert res.counters("http")["gaps"] == res.counters("counter")["gaps"] > 0, name


@pytest.mark.parametrize("lost", [False, True])
def test_http_a_start_line_cut_between_its_cr_and_its_lf_is_still_http(tmp_path, monkeypatch, lost):
    """`GET /a HTTP/1.1\\r` in one segment (read alone: one packet per batch), its LF in the
    next: the direction was switched off as not_http. With the LF lost, the request is reported
    incomplete with what its start line said, and its response still answers it."""
    monkeypatch.setenv("FLOWSIFT_BATCH", "1")
    cap = conversation(tmp_path / "cr.pcap", [
        (True, b"GET /a HTTP/1.1\r"), (True, b"\n", lost), (True, b"Host: x\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r"), (False, b"\nContent-Length: 2\r\n\r\nok"),
        (True, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"), (False, b"HTTP/1.1 404 NF\r\nContent-Length: 0\r\n\r\n"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/a", True), (404, "GET", "/b", True)]
    counters = res.counters("http")
    assert counters.get("not_http", 0) == 0
    assert "lost_requests" not in counters and counters["requests"] == 2
    assert [(e["uri"], e["complete"]) for e in res.of_kind("request")] == [("/a", not lost), ("/b", True)]


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b"5_0", b"\xb2"])
def test_http_a_chunk_size_that_is_not_hex_digits_is_malformed(tmp_path, size):
    """int(x, 16) takes a sign, 0x and _: a chunk size of -5 left the parser waiting for -5
    bytes, and every later response of the connection was lost. Only hex digits are a size;
    anything else is malformed, the response reported incomplete, and parsing resumes."""
    cap = conversation(tmp_path / "chunk.pcap", [
        (True, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabcde\r\n0\r\n\r\n"
                b"HTTP/1.1 404 NF\r\nContent-Length: 2\r\n\r\nno"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/1", False), (404, "GET", "/2", True)]
    assert res.counters("http")["malformed"] == 1


@pytest.mark.parametrize("side", ["client", "server"])
def test_http_bytes_lost_before_a_directions_first_are_a_lost_message(tmp_path, side):
    """The first 10 bytes of a direction are lost: on_gap came before the direction had a
    state and was passed over, so what followed was parsed as a message start ("T /1 ..." or
    "0 OK ..." refused as not HTTP, or a 1-byte loss read as method "ET"). The lost message is
    counted, its partner still paired with it, and parsing resumes at the next start."""
    q1, q2 = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n", b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    r1, r2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"HTTP/1.1 404 NF\r\nContent-Length: 2\r\n\r\nno"
    for n in (1, 10):
        if side == "client":
            turns = [(True, q1[:n], True), (True, q1[n:] + q2), (False, r1 + r2)]
            want = [(200, None, None, True), (404, "GET", "/2", True)]
        else:
            turns = [(True, q1 + q2), (False, r1[:n], True), (False, r1[n:]), (False, r2)]
            want = [(None, "GET", "/1", False), (404, "GET", "/2", True)]
        pairs, res = http_pairs(conversation(tmp_path / f"lead{n}.pcap", turns))
        assert pairs == want
        counters = res.counters("http")
        assert counters[f"lost_{'requests' if side == 'client' else 'responses'}"] == 1
        assert counters.get("not_http", 0) == 0 and counters.get("malformed", 0) == 0
        if side == "client":
            assert [e["uri"] for e in res.of_kind("request")] == ["/2"]


def test_http_a_framing_error_in_a_directions_first_message_is_malformed_not_not_http(tmp_path):
    """Two different Content-Length values, `Content-Length: +2`, or a 70 KB header block in
    the first message after a start line that is HTTP: the whole direction was switched off as
    not_http. not_http is for a first start line that is not HTTP/1; these are malformed: the
    message is reported incomplete with what its header block said, and the next one is read."""
    for cl in (b"Content-Length: 2\r\nContent-Length: 3\r\n", b"Content-Length: +2\r\n"):
        cap = conversation(tmp_path / "cl.pcap", [
            (True, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
            (False, b"HTTP/1.1 200 OK\r\n" + cl + b"\r\nok"), (False, b"HTTP/1.1 404 NF\r\nContent-Length: 2\r\n\r\nno"),
        ])
        pairs, res = http_pairs(cap)
        assert pairs == [(200, "GET", "/1", False), (404, "GET", "/2", True)]
        assert res.counters("http")["malformed"] == 1 and "not_http" not in res.counters("http")
    big = b"GET /big HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n"
    cap = conversation(tmp_path / "big.pcap", [(True, big[i:i + 1400]) for i in range(0, len(big), 1400)] + [
        (False, b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(431, "GET", "/big", True), (200, "GET", "/after", True)]
    assert [(e["uri"], e["complete"]) for e in res.of_kind("request")] == [("/big", False), ("/after", True)]
    assert res.counters("http")["malformed"] == 1 and "not_http" not in res.counters("http")


def test_http_only_the_response_switches_protocols(tmp_path):
    """A CONNECT or an Upgrade request switched the client direction off at once: a CONNECT
    refused with 407 and sent again, or an `Upgrade: h2c` the server ignores, lost every later
    request. The request's direction now waits for its response: a 101, or a 2xx to CONNECT,
    ends HTTP in both directions; any other answer and both go on."""
    cap = conversation(tmp_path / "connect.pcap", [
        (True, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
        (False, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"),
        (True, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic eDp5\r\n\r\n"),
        (False, b"HTTP/1.1 200 Connection established\r\n\r\n"),
        (True, b"\x16\x03\x01\x00\x05hello"), (False, b"\x16\x03\x03\x00\x05hello"),
    ], port=3128)
    pairs, res = http_pairs(cap)
    assert pairs == [(407, "CONNECT", "example.com:443", True), (200, "CONNECT", "example.com:443", True)]
    counters = res.counters("http")
    assert counters["requests"] == 2 and not {"malformed", "not_http", "unanswered"} & set(counters)
    upgrade = b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAM\r\n\r\n"
    cap = conversation(tmp_path / "h2c.pcap", [
        (True, upgrade), (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        (True, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    assert http_pairs(cap)[0] == [(200, "GET", "/a", True), (200, "GET", "/b", True)]
    cap = conversation(tmp_path / "ws.pcap", [
        (True, b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        (False, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        (True, b"\x81\x85abcd\x00\x00\x00\x00\x00"), (False, b"\x81\x02hi"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(101, "GET", "/ws", True)]
    assert not {"malformed", "not_http", "unanswered"} & set(res.counters("http"))


def test_http_and_tls_pass_over_udp_flows(tmp_path):
    """An SSDP M-SEARCH datagram was reported as an HTTP request, and a DNS datagram counted
    not_http and not_tls: both modules read TCP only, and pass over UDP flows uncounted."""
    from flowsift.testing import run_module
    from pcapgen import A, B, ether, ipv4, pcap, udp
    ssdp = b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n"
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    frames = [(1_700_000_000, 0, ether(ipv4(A, B, 17, udp(40001, 1900, ssdp)))),
              (1_700_000_000, 1000, ether(ipv4(A, B, 17, udp(40002, 53, query))))]
    (tmp_path / "udp.pcap").write_bytes(pcap(frames))
    res = run_module("http,tls", tmp_path / "udp.pcap")
    assert res.events == []
    chain_own = {"errors", "restarts"}
    assert set(res.counters("http")) <= chain_own and set(res.counters("tls")) <= chain_own


def test_dns_over_tcp_resumes_after_a_gap(tmp_path):
    """Four length-prefixed queries, 10 bytes of the second lost: every message after the gap
    was lost, uncounted (the bytes after it were read as a length prefix). The second is now
    counted lost and the next message start found; a gap followed by 5 KiB that hold none
    gives the direction up, counted."""
    import struct

    import dns.message
    from flowsift.testing import run_module
    msgs = []
    for i in range(4):
        q = dns.message.make_query(f"n{i}.example.", "A")
        q.id = 0x100 + i
        w = q.to_wire()
        msgs.append(struct.pack(">H", len(w)) + w)
    data, first = b"".join(msgs), len(msgs[0])
    cap = conversation(tmp_path / "dnsgap.pcap", [(True, data[:first + 10]), (True, data[first + 10:first + 20], True),
                                                  (True, data[first + 20:])], port=53)
    res = run_module("dns", cap)
    assert [e["qname"] for e in res.of_kind("query")] == ["n0.example.", "n2.example.", "n3.example."]
    assert res.counters("dns")["lost"] == 1 and "gave_up" not in res.counters("dns")
    cap = conversation(tmp_path / "dnsjunk.pcap", [(True, msgs[0]), (True, b"x" * 10, True), (True, b"\xff" * 5000),
                                                   (True, msgs[1])], port=53)
    res = run_module("dns", cap)
    assert [e["qname"] for e in res.of_kind("query")] == ["n0.example."]
    assert res.counters("dns")["lost"] == 1 and res.counters("dns")["gave_up"] == 1


def test_dns_reads_mdns_records_with_the_cache_flush_bit(tmp_path, corpus):
    """mDNS sets the top bit of a record's class (cache flush): class IN read as 32769, and
    the A and AAAA records came out as opaque hex (local2's AAAA answers too). tshark reads
    the addresses; so does dns."""
    import struct
    from flowsift.testing import run_module
    from pcapgen import A, ether, ipv4, pcap, udp
    name = b"\x05mucha\x05local\x00"
    answer = (struct.pack(">HHHHHH", 0, 0x8400, 0, 2, 0, 0) + name + struct.pack(">HHIH", 1, 0x8001, 120, 4)
              + bytes([192, 168, 1, 12]) + b"\xc0\x0c" + struct.pack(">HHIH", 28, 0x8001, 120, 16)
              + bytes.fromhex("fe80000000000000e6ce8ffffe05ebda"))
    (tmp_path / "mdns.pcap").write_bytes(pcap([(1_700_000_000, 0, ether(ipv4(A, bytes([224, 0, 0, 251]), 17,
                                                                             udp(5353, 5353, answer))))]))
    (e,) = run_module("dns", tmp_path / "mdns.pcap").of_kind("answer")
    assert e["answers"] == ["mucha.local. A 192.168.1.12", "mucha.local. AAAA fe80::e6ce:8fff:fe05:ebda"]
    evs, _ = events(corpus / "linktype__tcpflow__local2.pcap", "dns", tmp_path)
    theirs = {a for row in tshark_fields(corpus / "linktype__tcpflow__local2.pcap", "mdns", "dns.a", "dns.aaaa")
              for field in row for a in field.split(",") if a}
    ours = {a.split()[-1] for e in evs if e["kind"] == "answer" for a in e["answers"] if " A " in a or " AAAA " in a}
    # (events carry the answer section: the A record is an additional one there)
    assert ours == {"fe80::e6ce:8fff:fe05:ebda"} and ours <= theirs


def test_http_resync_takes_a_message_start_only_at_a_line_or_a_segment_start(tmp_path):
    """After a gap, parsing resumed at the first `HTTP/1.1 ddd` anywhere: a body quoting
    "upstream said HTTP/1.1 503 ..." gave a response that was never sent (and shifted the
    pairing), and a connection picked up inside a body holding "GET /fake HTTP/1.1" a request.
    A start is now a whole start line at the start of a line or of a segment."""
    body = b"log line: upstream said HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n and more text\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    cap = conversation(tmp_path / "quoted.pcap", [
        (True, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
        (False, chunked[:45]), (False, chunked[45:55], True),
        (False, chunked[55:] + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    ])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/1", False), (404, "GET", "/2", True)]
    from flowsift.testing import run_module, segments_capture
    cap = segments_capture(tmp_path, handshake=False, client=[b"partial body GET /fake HTTP/1.1\r\n\r\n",
                                                              b"GET /real HTTP/1.1\r\nHost: h\r\n\r\n"],
                           server=[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    res = run_module("http", cap)
    assert [e["uri"] for e in res.of_kind("request")] == ["/real"]


def test_tls_counts_hellos_it_cannot_read(tmp_path):
    """A ClientHello cut by the end of the connection, or larger than 64 KiB, gave no event
    and no count: both are `incomplete` now. A server_name whose inner length overruns its
    extension was reported as a truncated name: it is `malformed`."""
    import struct
    from flowsift.testing import run_module
    hello = client_hello()
    record = struct.pack(">BHH", 22, 0x0301, len(hello)) + hello
    cap = conversation(tmp_path / "cut.pcap", [(True, record[:60])], port=443)
    res = run_module("tls", cap)
    assert res.of_kind("client_hello") == [] and res.counters("tls")["incomplete"] == 1
    big = b"".join(struct.pack(">BHH", 22, 0x0303, 16000) + bytes([1]) + (70000).to_bytes(3, "big") + bytes(15996)
                   for _ in range(1)) + b"".join(struct.pack(">BHH", 22, 0x0303, 16000) + bytes(16000) for _ in range(4))
    cap = conversation(tmp_path / "big.pcap", [(True, big[i:i + 1400]) for i in range(0, len(big), 1400)], port=443)
    res = run_module("tls", cap)
    assert res.of_kind("client_hello") == [] and res.counters("tls")["incomplete"] == 1
    i = hello.find(b"example.com") - 2                    # the name's length
    bad = hello[:i] + struct.pack(">H", 200) + hello[i + 2:]
    cap = conversation(tmp_path / "sni.pcap", [(True, struct.pack(">BHH", 22, 0x0301, len(bad)) + bad)], port=443)
    res = run_module("tls", cap)
    assert res.of_kind("client_hello") == [] and res.counters("tls")["malformed"] == 1


def test_tls_finds_a_client_hello_after_a_plaintext_prefix(tmp_path, corpus):
    """STARTTLS (SMTP) and MySQL's SSLRequest put plaintext before the hello: it was counted
    not_tls (tshark reads it). A hello that starts in the client stream's first 4 KiB is found
    now, its offset said and counted after_plaintext; bytes that look like a record header
    but whose lengths do not add up are passed over, as is a hello past 4 KiB."""
    import struct
    from flowsift.testing import run_module
    record = struct.pack(">BHH", 22, 0x0301, len(client_hello())) + client_hello()
    cap = conversation(tmp_path / "smtp.pcap", [(False, b"220 mx ESMTP\r\n"), (True, b"EHLO me\r\n"),
                                                (False, b"250-mx\r\n250 STARTTLS\r\n"), (True, b"STARTTLS\r\n"),
                                                (False, b"220 Go ahead\r\n"), (True, record[:70]), (True, record[70:])],
                       port=25)
    res = run_module("tls", cap)
    (e,) = res.of_kind("client_hello")
    assert (e["sni"], e["alpn"], e["version"], e["offset"], e["complete"]) == \
        ("example.com", ["h2", "http/1.1"], "TLS 1.3", 19, True)
    assert res.counters("tls")["after_plaintext"] == 1 and res.counters("tls")["hellos"] == 1
    # a near miss first (a record header, handshake type 1, lengths that do not add up), then the hello
    bogus = struct.pack(">BHHB", 22, 0x0301, 60, 1) + (56).to_bytes(3, "big") + b"\x03\x03" + bytes(54)
    ssl_request = struct.pack("<I", 32)[:3] + b"\x01" + bytes(32)
    cap = conversation(tmp_path / "mysql.pcap", [(False, b"\x4a\x00\x00\x00\x0a8.0.0\x00" + bytes(60)),
                                                 (True, ssl_request + bogus + record)], port=3306)
    (e,) = run_module("tls", cap).of_kind("client_hello")
    assert (e["sni"], e["offset"]) == ("example.com", len(ssl_request) + len(bogus))
    res = run_module("tls", corpus / "pcapng__pcpp__pcapng-example.pcapng")
    assert [(e["server"], e["offset"], e["version"]) for e in res.of_kind("client_hello")] == \
        [("127.0.0.1:3306", 36, "TLS 1.2")]
    far = conversation(tmp_path / "far.pcap", [(True, b"x" * 4096 + record)], port=25)
    res = run_module("tls", far)
    assert res.of_kind("client_hello") == [] and res.counters("tls")["not_tls"] == 1


def test_tls_counts_incomplete_only_a_cut_hello_start(tmp_path):
    """Client streams of 4 bytes (GOOD, EVIL; VERY then a gap) were counted incomplete: their
    first byte rules a hello out, they are not_tls; one the capture holds no byte of is not
    counted (650HttpResponses: 116 port-80 connections without their clients' sides)."""
    from flowsift.testing import run_module
    counts = lambda cap: {k: v for k, v in run_module("tls", cap).counters("tls").items() if k not in ("errors",)}
    assert counts(conversation(tmp_path / "good.pcap", [(True, b"GOOD"), (False, b"OK")])) == {"not_tls": 1}
    assert counts(conversation(tmp_path / "very.pcap", [(True, b"VERY"), (True, b"lost", True)])) == {"not_tls": 1}
    assert counts(conversation(tmp_path / "none.pcap", [(True, b"GET / HTTP/1.1\r\n\r\n", True),
                                                        (False, b"HTTP/1.1 200 OK\r\n\r\n")])) == {}
    assert counts(conversation(tmp_path / "cut.pcap", [(True, b"\x16\x03\x01")], port=443)) == {"incomplete": 1}


def test_tls_reports_a_hello_cut_by_a_loss_with_what_was_read(tmp_path):
    """A hello whose padding was lost after its SNI and ALPN gave no event, only incomplete:
    it is reported with them and complete=false; its version is not known (the hello says TLS
    1.2, which a TLS 1.3 client says too, and supported_versions was not read)."""
    import struct
    from flowsift.testing import run_module
    hello = client_hello()
    i = hello.find(b"\x00\x2b")                           # supported_versions, after SNI and ALPN
    record = struct.pack(">BHH", 22, 0x0301, len(hello)) + hello
    cap = conversation(tmp_path / "gap.pcap", [(True, record[:i + 5]), (True, record[i + 5:i + 8], True),
                                               (True, record[i + 8:])], port=443)
    res = run_module("tls", cap)
    (e,) = res.of_kind("client_hello")
    assert (e["sni"], e["alpn"], e["version"], e["complete"], e["offset"]) == \
        ("example.com", ["h2", "http/1.1"], None, False, 0)
    assert res.counters("tls")["incomplete"] == 1 and res.counters("tls")["partial"] == 1
    assert "hellos" not in res.counters("tls")


def test_http_a_status_is_three_digits_from_100(tmp_path):
    """`HTTP/1.1 099 Odd` was read as status 99: it is not a status line."""
    cap = conversation(tmp_path / "099.pcap", [
        (True, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"), (False, b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n")])
    pairs, res = http_pairs(cap)
    assert pairs == [] and res.counters("http")["not_http"] == 1 and res.counters("http")["unanswered"] == 1


def test_counter_keeps_a_bounded_table(tmp_path):
    """The table stops at 10,000 rows (its memory and the summary's must not grow with every
    connection a run sees); every flow still has its event, and the rest is counted."""
    import io
    from flowsift.chain import run_chain
    from test_store_faults import many_connections
    cap = many_connections(tmp_path / "many.pcap", 10_500)
    events = io.StringIO()
    s = run_chain("counter", str(cap), events=events)
    c = s["modules"]["counter"]
    assert c["flows"] == 10_500 and c["rows_not_kept"] == 500
    assert len(s["tables"]["counter"]) == 10_000
    assert sum(1 for line in events.getvalue().splitlines() if '"kind": "flow"' in line) == 10_500


def test_http_frames_a_response_captured_before_its_request_by_that_request(tmp_path, monkeypatch):
    """The answer to a HEAD stored before the HEAD (a capture from two taps): read before its
    request, it was framed as a GET's, took 5 bytes of the next response for its body, and the
    next response was lost. It now waits for its request (or the client's side to end)."""
    from test_egress_faithful import pcap, tcp
    head, get = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    r1, r2 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    c, s = 101, 501
    cap = pcap(tmp_path / "reordered.pcap", [
        tcp(True, 100, 0, 0x02), tcp(False, 500, 101, 0x12), tcp(True, 101, 501, 0x10),
        tcp(False, s, c + len(head), 0x18, r1), tcp(True, c, s, 0x18, head),
        tcp(True, c + len(head), s + len(r1), 0x18, get), tcp(False, s + len(r1), c + len(head) + len(get), 0x18, r2),
        tcp(True, c + len(head) + len(get), s + len(r1) + len(r2), 0x11),
        tcp(False, s + len(r1) + len(r2), c + len(head) + len(get) + 1, 0x11)])
    for batch in ("1", "512"):
        monkeypatch.setenv("FLOWSIFT_BATCH", batch)    # 1: the answer is read before its request comes
        got, _ = events(cap, "http", tmp_path)
        answers = [(e["method"], e["status"], e["response_body"], e["complete"]) for e in got if e["kind"] == "response"]
        assert answers == [("HEAD", 200, 0, True), ("GET", 404, 0, True)], batch


def test_http_a_body_read_to_the_end_is_whole_only_when_the_servers_fin_ended_it(tmp_path, corpus):
    """A response without a length (Connection: close) ends where the server's side ends: it
    was complete=true when a reset or the end of the capture cut it too. Only the server's FIN
    says the body is whole."""
    req = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart-of-a-long-body"
    for end, whole in (("fin", True), ("rst", False), ("none", False)):
        cap = conversation(tmp_path / f"{end}.pcap", [(True, req), (False, resp)], end=end)
        pairs, _ = http_pairs(cap)
        assert pairs == [(200, "GET", "/a", whole)], end
    # 650HttpResponses' connection 5: a 4-byte body (Connection: close), the capture ends with no FIN
    evs, _ = events(corpus / "midstream__pcpp__650HttpResponses.pcap", "http", tmp_path)
    (e,) = [e for e in evs if e["conn"] == 5]
    assert (e["status"], e["response_body"], e["complete"]) == (200, 4, False)


def test_http_responses_counts_the_responses_read_and_lost_responses_the_others(tmp_path, corpus):
    """`responses` counted the lost ones too (miss_end_data: responses 1 and lost_responses 1,
    for one response whose bytes were all lost): it counts responses whose status line was
    read; each lost one is in lost_responses only (its event says status null)."""
    cap = conversation(tmp_path / "lost.pcap", [
        (True, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        (True, b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"), (False, b"HTTP/1.1 404 NF\r\nContent-Length: 2\r\n\r\n", True),
        (False, b"no"), (True, b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"),
        (False, b"HTTP/1.1 204 No Content\r\n\r\n")])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/1", True), (None, "GET", "/2", False), (204, "GET", "/3", True)]
    counters = res.counters("http")
    assert (counters["responses"], counters["lost_responses"]) == (2, 1)
    evs, summary = events(corpus / "gap__zeek__miss_end_data.pcap", "http", tmp_path)
    assert [e["status"] for e in evs if e["kind"] == "response"] == [None]
    counters = summary["modules"]["http"]
    assert counters["lost_responses"] == 1 and "responses" not in counters


def test_http_a_message_cut_in_its_start_line_or_header_block_is_reported_as_far_as_seen(tmp_path, corpus):
    """A gap in a request's start line or header block left no request event (only
    lost_requests), and a status line followed by a gap no status: the request is reported
    with its method, its uri as far as it came (uri_cut) and the headers whole before the gap,
    incomplete; the response with its status."""
    cap = conversation(tmp_path / "cut.pcap", [
        (True, b"SEARCH /AAAA"), (True, b"AAAA", True), (True, b"AAAA HTTP/1.1\r\nHost: a\r\n\r\n"),
        (False, b"HTTP/1.1 414 URI Too Long\r\nContent-Length: 0\r\n\r\n"),
        (True, b"GET /b HTTP/1.1\r\nHost: b\r\n"), (True, b"X-Pad: yyyy\r\n", True), (True, b"User-Agent: z\r\n\r\n"),
        (False, b"HTTP/1.0 302 MOVED"), (False, b" TEMPORARILY\r\nContent-Length: 0\r\n\r\n", True),
        (True, b"GET /c HTTP/1.1\r\nHost: c\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ])
    pairs, res = http_pairs(cap)
    reqs = [(e["method"], e["uri"], e["uri_cut"], e["host"], e["user_agent"], e["request_body"], e["complete"])
            for e in res.of_kind("request")]
    assert reqs == [("SEARCH", "/AAAA", True, None, None, None, False), ("GET", "/b", False, "b", None, None, False),
                    ("GET", "/c", False, "c", None, 0, True)]
    assert pairs == [(414, "SEARCH", "/AAAA", True), (302, "GET", "/b", False), (200, "GET", "/c", True)]
    assert [e["uri_cut"] for e in res.of_kind("response")] == [True, False, False]
    counters = res.counters("http")
    assert (counters["requests"], counters["responses"]) == (3, 3)
    assert not {"lost_requests", "lost_responses", "unanswered"} & set(counters)
    # a 28 KB WebDAV SEARCH overflow whose request line has an 8-byte snaplen gap at offset 1714
    evs, summary = events(corpus / "overlap__zeek__reassembly.pcap", "http", tmp_path)
    (e,) = [e for e in evs if e["conn"] == 0]
    assert (e["kind"], e["method"], e["uri_cut"], e["complete"]) == ("request", "SEARCH", True, False)
    assert e["uri"].startswith("/AAAA") and len(e["uri"]) == 1714 - len("SEARCH ")
    assert "lost_requests" not in summary["modules"]["http"]
    # status lines cut by a gap: `HTTP/1.0 302 MOVED` or `HTTP/1.0 200 OK`, then 1460 bytes lost
    evs, _ = events(corpus / "http__tcpflow__jpegs.cap", "http", tmp_path)
    cut = {e["conn"]: e["status"] for e in evs if e["kind"] == "response" and e["response_body"] is None}
    assert cut == {1: None, 2: 302, 3: 302, 4: 302, 5: 302, 9: 200, 10: 200, 11: 200, 12: 200}


def test_http_reports_no_loss_in_a_connection_that_never_shows_http(tmp_path, corpus):
    """A connection whose payload was all lost (a snaplen cutting every byte) gave a response
    event with status, method, host and uri all null, and counted lost messages and gaps;
    `VERY`, a gap, `DATA` a lost and an unanswered request. Losses count once a start line
    that is HTTP is read in the connection (and the ones before it then), never without one."""
    chain_own = {"errors", "restarts"}
    cap = conversation(tmp_path / "blind.pcap", [
        (True, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n", True), (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True)])
    pairs, res = http_pairs(cap)
    assert res.events == [] and set(res.counters("http")) <= chain_own
    cap = conversation(tmp_path / "very.pcap", [(True, b"VERY"), (True, b"LOST", True), (True, b"DATA")])
    pairs, res = http_pairs(cap)
    assert res.events == [] and set(res.counters("http")) <= chain_own
    # the same loss, then HTTP: the lost request is counted and its response answers it
    cap = conversation(tmp_path / "later.pcap", [
        (True, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n", True), (True, b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (False, b"HTTP/1.1 404 NF\r\nContent-Length: 0\r\n\r\n")])
    pairs, res = http_pairs(cap)
    assert pairs == [(None, None, None, False), (404, "GET", "/2", True)]
    counters = res.counters("http")
    assert (counters["gaps"], counters["lost_requests"], counters["lost_responses"]) == (2, 1, 1)
    for name, want in (("trunc__zeek__truncated-header.pcap", set()), ("retrans__zeek__retransmit-fast009.pcap", set()),
                       ("midstream__zeek__smtp-one-side-only.pcap", {"not_http"}), ("gap__suri__tcp-simple-gap2.pcap", set())):
        evs, summary = events(corpus / name, "http", tmp_path)
        assert evs == [] and set(summary["modules"]["http"]) - chain_own == want, name


def test_http_resumes_after_bytes_that_are_no_message_where_one_was_to_start(tmp_path, corpus, monkeypatch):
    """A server's first response starting with NUL bytes made its direction not_http (the
    200 for /second was never reported); a PROXY protocol line before the requests hid them
    all; a keep-alive NUL byte between two requests was a lost request, which took the next
    response. Bytes before the next message start (within 8 KiB) are passed over and counted;
    a line that ends as a status line, then header lines and a blank line, is a response that
    could not be read: malformed, and lost for the request it answers."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    cap = conversation(tmp_path / "nul401.pcap", [
        (True, b"GET /first HTTP/1.1\r\nHost: p\r\n\r\n"),
        (False, b"\x00\x00\x00\x00\x00\x00.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nxxxxx"),
        (True, b"GET /second HTTP/1.1\r\nHost: p\r\n\r\n"), (False, ok)])
    pairs, res = http_pairs(cap)
    assert pairs == [(None, "GET", "/first", False), (200, "GET", "/second", True)]
    counters = res.counters("http")
    assert (counters["malformed"], counters["lost_responses"], counters["responses"]) == (1, 1, 1)
    assert not {"not_http", "unanswered"} & set(counters)
    proxy = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n"
    for batch in ("1", "512"):                # (1: the line is read alone first)
        monkeypatch.setenv("FLOWSIFT_BATCH", batch)
        cap = conversation(tmp_path / "proxy.pcap", [
            (True, proxy), (True, b"GET /behind-proxy HTTP/1.1\r\nHost: x\r\n\r\n"), (False, ok),
            (True, b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"), (False, ok)])
        pairs, res = http_pairs(cap)
        assert pairs == [(200, "GET", "/behind-proxy", True), (200, "GET", "/second", True)]
        assert res.counters("http")["skipped_bytes"] == len(proxy) and "not_http" not in res.counters("http")
    monkeypatch.delenv("FLOWSIFT_BATCH")
    cap = conversation(tmp_path / "keepalive.pcap", [
        (True, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"), (False, ok), (True, b"\x00"),
        (True, b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"), (False, b"HTTP/1.1 404 NF\r\nContent-Length: 0\r\n\r\n")])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/1", True), (404, "GET", "/2", True)]
    counters = res.counters("http")
    assert counters["skipped_bytes"] == 1 and not {"malformed", "lost_requests", "unanswered"} & set(counters)
    # the search is bounded: a message start after 8 KiB of text is not looked for
    cap = conversation(tmp_path / "far.pcap", [(True, b"x" * 9000 + b"\r\nGET /far HTTP/1.1\r\nHost: x\r\n\r\n"),
                                               (False, ok)])
    pairs, res = http_pairs(cap)
    assert res.of_kind("request") == [] and res.counters("http")["not_http"] == 1
    # seen from the middle: the NUL-corrupted 401 answers the first request, the 200 the second
    name = "midstream__peafowl__http_no_syn_synack_ack.pcap"
    evs, summary = events(corpus / name, "http", tmp_path)
    assert [(e["status"], e["complete"]) for e in evs if e["kind"] == "response"] == [(None, False), (200, True)]
    assert sum(e["kind"] == "request" for e in evs) == 2 and "unanswered" not in summary["modules"]["http"]
    requests = [int(f) for (f,) in tshark_fields(corpus / name, "http.request", "frame.number")]
    assert tshark_fields(corpus / name, "http.response", "http.response.code", "http.request_in") == \
        [("200", str(requests[1]))]


def test_http_says_which_pairings_a_loss_may_have_shifted(tmp_path):
    """One gap takes the end of the 1st response and the start of the 2nd: counted as one
    loss, the 200 for /h3 answers /h2 as far as can be told, and /h3 was counted unanswered.
    A loss long enough to hold a whole message may hold several starts: the responses paired
    after it say after_loss, and the requests left at the end are unanswered_after_loss. A loss
    too short to hold a message (an 8-byte snaplen cut) shifts nothing."""
    reqs = b"".join(b"GET /h%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in (1, 2, 3))
    r1, r2, r3 = (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + c * 20 for c in (b"H", b"I", b"J"))
    cap = conversation(tmp_path / "h.pcap", [(True, reqs), (False, r1[:30]), (False, r1[30:] + r2[:10], True),
                                             (False, r2[10:]), (False, r3)])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/h1", False), (200, "GET", "/h2", True)]
    assert [e["after_loss"] for e in res.of_kind("response")] == [False, True]
    counters = res.counters("http")
    assert counters["unanswered_after_loss"] == 1 and "unanswered" not in counters
    # 8 bytes lost across the end of the 1st body and the start of the 2nd response: one start
    cap = conversation(tmp_path / "short.pcap", [(True, reqs), (False, r1[:-4]), (False, r1[-4:] + r2[:4], True),
                                                 (False, r2[4:]), (False, r3)])
    pairs, res = http_pairs(cap)
    assert pairs == [(200, "GET", "/h1", False), (None, "GET", "/h2", False), (200, "GET", "/h3", True)]
    assert not any(e["after_loss"] for e in res.of_kind("response"))
    assert not {"unanswered", "unanswered_after_loss"} & set(res.counters("http"))
    # two requests lost in one segment: the response read after them may answer a later one
    q = [b"GET /q%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(1, 5)]
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    cap = conversation(tmp_path / "reqs.pcap", [(True, q[0]), (True, q[1] + q[2], True), (True, q[3]),
                                                (False, ok), (False, ok), (False, ok), (False, ok)])
    pairs, res = http_pairs(cap)
    assert [(p[2], e["after_loss"]) for p, e in zip(pairs, res.of_kind("response"))][:3] == \
        [("/q1", False), (None, False), ("/q4", True)]
