"""`flowsift replay` against real servers on loopback: an HTTP server answering with the
recorded responses (and a variant that changes one header and one body), a small SMTP server
that checks it is spoken to turn by turn, and the replay of what a dead backend had not
acknowledged, recorded live in network namespaces."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from pathlib import Path

from conftest import CORPUS, require, run_cli

BRO = CORPUS / "http__zeek__bro.org.pcap"

RECORDED = (Path(__file__).parent / "servers" / "recorded_http.py").read_text()

# the end of every test server: serve on a free loopback port and say which
SERVE = textwrap.dedent('''
    async def main():
        s = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(s.sockets[0].getsockname()[1], flush=True)
        await s.serve_forever()
    asyncio.run(main())
''')

SMTP = textwrap.dedent('''
    """A small SMTP server: answers each command, logs them, and notes a command that came
    before the answer to the previous one (a client that does not wait its turn)."""
    import asyncio, json, sys
    log = open(sys.argv[1], "w")

    async def handle(r, w):
        w.write(b"220 test.example ESMTP ready\\r\\n")
        await w.drain()
        data = False
        while True:
            line = await r.readline()
            if not line:
                break
            early = len(r._buffer) > 0 and not data        # more was waiting before we answered
            if data:
                if line.rstrip(b"\\r\\n") == b".":
                    data = False
                    log.write(json.dumps({"cmd": "END-DATA", "early": False}) + "\\n")
                    w.write(b"250 2.0.0 queued\\r\\n")
                continue
            cmd = line.split(b" ")[0].strip().upper().decode()
            log.write(json.dumps({"cmd": cmd, "early": early}) + "\\n")
            log.flush()
            if cmd in ("EHLO", "HELO"):
                w.write(b"250-test.example\\r\\n250 AUTH LOGIN PLAIN\\r\\n")
            elif cmd == "AUTH":
                w.write(b"235 2.7.0 accepted\\r\\n")
            elif cmd == "DATA":
                data = True
                w.write(b"354 go ahead\\r\\n")
            elif cmd == "QUIT":
                w.write(b"221 bye\\r\\n")
                await w.drain()
                break
            else:
                w.write(b"250 ok\\r\\n")
            await w.drain()
        log.flush()
        w.close()

''') + SERVE


def recorded_table(capture):
    """Request line -> recorded responses, from the capture."""
    from flowsift.gateway import Gateway
    from flowsift.replay import conversation
    from flowsift.streams.reader import store_files
    import shutil
    g = Gateway(None, keep=True)
    g.run_capture(capture)
    table = {}
    try:
        for path in store_files(g.store_dir):
            for t in conversation(path).turns:
                line = t.request.split(b"\r\n", 1)[0].decode("latin-1")
                table.setdefault(line, []).append(t.response.hex())
    finally:
        shutil.rmtree(g.store_dir)
    return table


class Server:
    def __init__(self, tmp_path, script, *args):
        path = tmp_path / f"server{abs(hash(script)) % 1000}.py"
        path.write_text(script)
        self.proc = subprocess.Popen([sys.executable, str(path), *map(str, args)], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def replay(*args):
    res = run_cli("replay", *args, "--json")
    s = json.loads(res.stdout)
    # as diff(1): 1 when a connection differed or failed, or when nothing at all was compared
    assert res.returncode == (1 if s.get("differing") or s["failed"] or s.get("turns") == 0 else 0), res.stderr
    return s


@pytest.fixture
def http_table(tmp_path, corpus):
    table = recorded_table(BRO)
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    return path, table


def test_recorded_answers_replay_identical(tmp_path, http_table):
    tshark = require("tshark")
    path, table = http_table
    # the requests flowsift cut from the stream are the ones tshark sees
    lines = subprocess.run([tshark, "-r", BRO, "-Y", "http.request", "-T", "fields", "-e", "http.request.method",
                            "-e", "http.request.uri"], capture_output=True, text=True, check=True).stdout.split("\n")
    assert sum(len(v) for v in table.values()) == len([l for l in lines if l]) == 31
    srv = Server(tmp_path, RECORDED, path)
    try:
        for match in ("http", "exact"):
            # one at a time: a request line asked twice gets its recorded answers in order
            s = replay(BRO, "--to", f"127.0.0.1:{srv.port}", "--match", match, "-j", 1)
            assert s["connections"] == 8 and s["differing"] == s["failed"] == 0
            assert s["turns"] == 25 and s["turns_unanswered"] == 0 and s["skipped"] == {"no data": 5}
            # the capture lost the server's bytes from inside one answer on (a gap it acknowledged):
            # that answer and the five after it are not held against the server's whole ones, and
            # their connection, with nothing else, is not said to be identical
            assert s["turns_incomplete"] == 6 and (s["identical"], s["uncompared"]) == (7, 1)
    finally:
        srv.stop()


def test_report_pinpoints_a_changed_response(tmp_path, http_table):
    path, _ = http_table
    srv = Server(tmp_path, RECORDED, path, "/css/pygments.css")
    report = tmp_path / "report.json"
    try:
        s = replay(BRO, "--to", f"127.0.0.1:{srv.port}", "--match", "http", "--report", report, "-j", "3")
    finally:
        srv.stop()
    assert s["differing"] == 1 and s["identical"] == 6 and s["uncompared"] == 1 and s["turns_differing"] == 1
    r = json.loads(report.read_text())
    assert r["summary"]["turns_differing"] == 1
    # the connection that differs, and the one with nothing compared (and why)
    conn, other = sorted(r["connections"], key=lambda c: not c["differing"])
    assert other["uncompared"].startswith("the capture holds none of its answers whole"), other
    (turn,) = conn["differences"]
    assert turn["request"] == "GET /css/pygments.css HTTP/1.1"
    whats = {d["what"]: d for d in turn["differences"]}
    assert set(whats) == {"header content-type", "body"}
    assert whats["header content-type"]["replayed"] == ["text/x-changed"]
    assert whats["body"]["recorded"] == whats["body"]["replayed"] and whats["body"]["diff"]
    # the changed header ignored, and the body too: nothing differs
    srv = Server(tmp_path, RECORDED, path, "/css/pygments.css")
    try:
        s = replay(BRO, "--to", f"127.0.0.1:{srv.port}", "--match", "http", "--ignore-header", "Content-Type",
                   "--ignore-body-regex", "(?s).*")
    finally:
        srv.stop()
    assert s["differing"] == 0


def test_a_line_protocol_replays_turn_by_turn(tmp_path, corpus):
    log = tmp_path / "smtp.log"
    srv = Server(tmp_path, SMTP, log)
    try:
        s = replay(CORPUS / "smtp__zeek__smtp.pcap", "--to", f"127.0.0.1:{srv.port}", "--server-port", 25,
                   "--timeout", 5, "--idle", 0.2)
    finally:
        srv.stop()
    cmds = [json.loads(l) for l in log.read_text().splitlines()]
    # both recorded SMTP sessions (the second ends without QUIT), command by command, each sent
    # only after the previous answer; the AUTH LOGIN credentials are lines of their own
    names = [c["cmd"] for c in cmds]
    assert names.count("EHLO") == 2 and names.count("QUIT") == 1 and names.count("END-DATA") == 2
    assert names.count("RCPT") == 4 and names.count("MAIL") == 2 and len(names) == 16
    assert not any(c["early"] for c in cmds)
    assert s["connections"] == 2 and s["failed"] == 0 and s["turns"] == 18
    assert s["skipped"]["other server port"] >= 1


def test_a_gap_in_the_client_stream_is_never_sent(tmp_path, corpus):
    cap = CORPUS / "gap__suri__tcp-simple-gap2.pcap"
    got = []
    srv_sock = socket.socket()
    srv_sock.bind(("127.0.0.1", 0))
    srv_sock.listen(8)
    port = srv_sock.getsockname()[1]
    import threading

    def serve():
        srv_sock.settimeout(20)
        while True:
            try:
                c, _ = srv_sock.accept()
            except OSError:
                return
            c.settimeout(2)
            data = b""
            try:
                while True:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            got.append(data)
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        s = replay(cap, "--to", f"127.0.0.1:{port}", "--timeout", 1)
        assert s["connections"] == 0 and s["skipped"] == {"gap in the client's stream": 1}
        s = replay(cap, "--to", f"127.0.0.1:{port}", "--partial", "--timeout", 1)
        assert s["connections"] == 1 and s["partial"] == 1
    finally:
        srv_sock.close()
    # one connection in all: the partial replay's, with the 4 bytes before the gap
    assert [len(g) for g in got] == [4]


def test_bad_targets_are_one_line_exit_2(corpus):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                            # nothing listens there now
    s = socket.socket(socket.AF_INET6)
    s.bind(("::1", 0))
    port6 = s.getsockname()[1]
    s.close()
    for args, words in ((("--to", f"127.0.0.1:{port}"), f"cannot connect to 127.0.0.1:{port}"),
                        # an IPv6 address in brackets, as flowsift writes it elsewhere
                        (("--to", f"[::1]:{port6}"), f"cannot connect to [::1]:{port6}:"),
                        # and only there: 2001:db8::1:80 reads as an address with a port and without
                        (("--to", f"::1:{port6}"), "expected HOST:PORT"),
                        (("--to", "2001:db8::1:80"), "expected HOST:PORT"),
                        (("--to", f"[127.0.0.1]:{port}"), "expected HOST:PORT"),
                        (("--to", f"[localhost]:{port}"), "expected HOST:PORT"),
                        (("--to", f"[]:{port}"), "expected HOST:PORT"),
                        (("--to", "no-such-host.invalid:80"), "cannot resolve no-such-host.invalid"),
                        (("--to", "localhost"), "expected HOST:PORT"),
                        (("--to", f"127.0.0.1:{port}", "--speed", "fast"), "'max' or a positive number"),
                        (("--to", f"127.0.0.1:{port}", "--reassembly", "memcap=lots"), "memcap=lots: size expected"),
                        (("--to", f"127.0.0.1:{port}", "--limit", "-1"), "--limit -1: a number of connections"),
                        (("--to", "127.0.0.1:99999"), "port 99999 is not from 1 to 65535"),
                        (("--to", "[::1"), "expected HOST:PORT"), (("--to", "::1"), "expected HOST:PORT"),
                        (("--to", f"127.0.0.1:{port}", "--timeout", "0"), 
                         "--timeout 0: seconds, from 0.001 (1ms) to 86400 (a day)"),
                        (("--to", f"127.0.0.1:{port}", "--timeout", "inf"), "--timeout inf: seconds, from 0.001 (1ms) to"),
                        (("--to", f"127.0.0.1:{port}", "--idle", "1e308"), "--idle 1e308: seconds, from 0.001"),
                        (("--to", f"127.0.0.1:{port}", "--timeout", "-1"), "--timeout -1: seconds"),
                        (("--to", f"127.0.0.1:{port}", "--idle", "-1"), "--idle -1: seconds, from 0.001"),
                        # said as given (it was "--timeout 90000", "--idle -300")
                        (("--to", f"127.0.0.1:{port}", "--timeout", "25h"), "--timeout 25h: seconds, from 0.001"),
                        (("--to", f"127.0.0.1:{port}", "--idle", "-5m"), "--idle -5m: seconds, from 0.001"),
                        (("--to", f"127.0.0.1:{port}", "--server-port", "99999"), "--server-port 99999: a port"),
                        (("--to", f"127.0.0.1:{port}", "--server-port", "-1"), "--server-port -1: a port"),
                        (("--to", f"127.0.0.1:{port}", "--ignore-header", "Date"),
                         "--ignore-header goes with --match http")):
        res = run_cli("replay", BRO, *args)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr, res.stderr


BACKEND = textwrap.dedent('''
    """An HTTP backend that logs every request it completes (its path) and answers it."""
    import asyncio, sys
    from flowsift.replay import http_message
    log = open(sys.argv[2], "a")

    async def handle(r, w):
        buf = b""
        while True:
            m = http_message(buf, 0, True) if buf else None
            if m is None:
                chunk = await r.read(65536)
                if not chunk:
                    break
                buf += chunk
                continue
            req, buf = buf[:m[0]], buf[m[0]:]
            log.write(req.split(b" ")[1].decode() + "\\n")
            log.flush()
            w.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
            await w.drain()
        w.close()

    async def main():
        s = await asyncio.start_server(handle, sys.argv[1], 8000)
        print("up", flush=True)
        await s.serve_forever()
    asyncio.run(main())
''')

CLIENT = textwrap.dedent('''
    """Six requests on one connection; the last three only when told (the backend is gone by then)."""
    import socket, sys, time
    s = socket.create_connection(("10.77.0.2", 8000), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)    # each request on the wire at once
    for i in range(1, 7):
        if i == 4:
            print("waiting", flush=True)
            sys.stdin.readline()
        s.sendall(f"GET /req/{i} HTTP/1.1\\r\\nHost: backend\\r\\n\\r\\n".encode())
        time.sleep(0.15)
    print("sent", flush=True)
    time.sleep(30)
''')


def test_unacked_requests_of_a_dead_backend_complete_exactly_once(tmp_path, corpus):
    from test_afpacket import Netns, started
    client_ns, server_ns = Netns(), Netns()
    procs = []
    try:
        c, s = client_ns.name, server_ns.name
        subprocess.run(["ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "s0", "netns", s],
                       check=True)
        client_ns.exec("ip", "addr", "add", "10.77.0.1/24", "dev", "c0")
        client_ns.exec("ip", "link", "set", "c0", "up")
        server_ns.exec("ip", "addr", "add", "10.77.0.2/24", "dev", "s0")
        server_ns.exec("ip", "link", "set", "s0", "up")
        backend, log = tmp_path / "backend.py", tmp_path / "served.log"
        backend.write_text(BACKEND)
        (tmp_path / "client.py").write_text(CLIENT)
        srv = subprocess.Popen(["ip", "netns", "exec", s, sys.executable, backend, "10.77.0.2", log],
                               stdout=subprocess.PIPE, text=True)
        procs.append(srv)
        assert srv.stdout.readline().strip() == "up"
        store = tmp_path / "store"
        gw = client_ns.flowsift("gateway", "afpacket:c0", "--store", store, "--keep", "--duration", 60, "--json")
        procs.append(gw)
        started(gw)
        cl = subprocess.Popen(["ip", "netns", "exec", c, sys.executable, tmp_path / "client.py"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(cl)
        assert cl.stdout.readline().strip() == "waiting"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not log.exists() or len(log.read_text().split()) < 3):
            time.sleep(0.05)
        assert log.read_text().split() == ["/req/1", "/req/2", "/req/3"]
        # the backend's host dies: its address goes (nothing answers, nothing is acknowledged), then the process
        server_ns.exec("ip", "addr", "del", "10.77.0.2/24", "dev", "s0")
        srv.kill()
        cl.stdin.write("go\n")
        cl.stdin.flush()
        assert cl.stdout.readline().strip() == "sent"
        time.sleep(0.5)
        cl.kill()
        gw.send_signal(signal.SIGINT)
        out, err = gw.communicate(timeout=30)
        assert gw.returncode == 0, err
        # a new backend at the same address; replay what the old one never acknowledged
        server_ns.exec("ip", "addr", "add", "10.77.0.2/24", "dev", "s0")
        srv2 = subprocess.Popen(["ip", "netns", "exec", s, sys.executable, backend, "10.77.0.2", log],
                                stdout=subprocess.PIPE, text=True)
        procs.append(srv2)
        assert srv2.stdout.readline().strip() == "up"
        report = tmp_path / "unacked.json"
        res = client_ns.flowsift("replay", "--unacked", "--store", store, "--to", "10.77.0.2:8000", "--report", report,
                                 "--json")
        out, err = res.communicate(timeout=60)
        assert res.returncode == 0, err
        summary = json.loads(out)
        assert summary["connections"] == 1 and summary["messages"] == 3 and summary["answers"] == 3
        row = json.loads(report.read_text())["connections"][0]
        assert row["sent_from"] == row["unacked_from"] and row["note"] == "from a request boundary"
        # every request served exactly once, across the two backends
        assert sorted(log.read_text().split()) == [f"/req/{i}" for i in range(1, 7)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        client_ns.close()
        server_ns.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_end_with_the_summary_so_far(corpus, sig):
    # (SIGTERM ended it without one)
    silent = socket.socket()                     # a server that accepts and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        p = subprocess.Popen([sys.executable, "-m", "flowsift", "replay", BRO, "--to",
                              f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "60", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.5)
        t0 = time.monotonic()
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
        assert time.monotonic() - t0 < 10
        said, code = ("interrupted", 130) if sig == signal.SIGINT else ("terminated", 143)
        assert p.returncode == code and err.endswith(f"flowsift: {said}\n"), err
        s = json.loads(out)
        assert s["interrupted"] and s["signal"] == sig.name and s["connections"] < 8
    finally:
        silent.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_while_the_capture_is_read_ends_with_a_summary_of_nothing(tmp_path, corpus, sig):
    """A stop that came while the capture was still read (before any connection was replayed)
    ended the replay with no summary at all (--json printed nothing): once the replay has
    started, it ends with its summary, here of no connection, its temporary store removed."""
    from flowsift.errors import Terminated
    from flowsift.replay import replay as run

    def stop(position, size):       # (told after each batch read)
        raise KeyboardInterrupt() if sig == signal.SIGINT else Terminated()
    report = tmp_path / "r.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        summary = run(BRO, f"127.0.0.1:{s.getsockname()[1]}", on_progress=stop, report=report)
    assert (summary["interrupted"], summary["signal"], summary["connections"], summary["skipped"]) == (
        True, sig.name, 0, {})
    assert json.loads(report.read_text())["summary"] == summary
    assert _stores_of(BRO) == []


def test_pacing_follows_the_original_timing(tmp_path, http_table):
    path, _ = http_table
    srv = Server(tmp_path, RECORDED, path)
    try:
        fast = replay(BRO, "--to", f"127.0.0.1:{srv.port}", "--match", "http")
        paced = replay(BRO, "--to", f"127.0.0.1:{srv.port}", "--match", "http", "--speed", 2)
    finally:
        srv.stop()
    # the longest conversation spans 3.13 s between its first and last request
    assert paced["seconds"] >= 3.13 / 2 and fast["seconds"] < 3.13 / 2
    assert paced["identical"] == fast["identical"] == 7 and paced["uncompared"] == fast["uncompared"] == 1


def test_a_capture_is_reassembled_with_the_bounds_given(corpus):
    """--policy and --reassembly reach the gateway that reads the capture for a replay: two
    open connections at most evicts the idlest, so the espn capture's 39 become many more."""
    import shutil
    from flowsift.replay import _store_of
    from flowsift.streams import store_files
    counts = []
    for bounds in (None, {"max_connections": 2}):
        directory, temporary = _store_of(corpus / "http__csanders__http_espn.pcapng", None, None, None, "linux", bounds)
        counts.append(len(store_files(directory)))
        shutil.rmtree(temporary)
    assert counts[0] == 39 and counts[1] > 100


def _stores_of(source):
    """The stores under /dev/shm (shared with other runs) made for `source`."""
    found = []
    for d in Path("/dev/shm").glob("flowsift-store-*"):
        try:
            if json.loads((d / "store.json").read_text()).get("source") == str(source):
                found.append(d)
        except (OSError, ValueError):
            pass
    return found


def test_a_capture_that_cannot_be_read_leaves_no_store(tmp_path, corpus):
    # the temporary store of a replayed capture is removed on every way out, errors included
    cut = tmp_path / "t1000.pcap"
    cut.write_bytes((corpus / "http__dpkt__http.pcap").read_bytes()[:1000])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        for source, words in ((tmp_path / "nope.pcap", "no such file"), (cut, "cut short")):
            res = run_cli("replay", source, "--to", f"127.0.0.1:{s.getsockname()[1]}")
            assert res.returncode == 2 and words in res.stderr, res.stderr
            assert _stores_of(source) == []


# what replay --store says of the options that read a capture (they were ignored)
READ_ALREADY = "--filter, --policy, --reassembly, --vlan-key and --checksums read a capture: a --store was read already"


def test_a_capture_and_a_store_or_a_directory_that_is_not_a_store_are_usage_errors(tmp_path, corpus):
    # the capture was ignored for the store; a directory that is no store replayed nothing, exit 0
    store, adir = tmp_path / "st", tmp_path / "adir"
    run_cli("gateway", BRO, "--store", store, "--keep", check=True)
    adir.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        to = f"127.0.0.1:{s.getsockname()[1]}"
        for args, line in (((BRO, "--store", store), "give a capture or --store DIR, not both"),
                           (("--store", adir), f"{adir}: not a store (no record files, no store.json)"),
                           (("--store", adir, "--unacked"), f"{adir}: not a store (no record files, no store.json)"),
                           ((BRO, "--store", store, "--unacked"), "--unacked replays a kept store: give --store DIR "
                                                                  "(and no capture)"),
                           # (they were ignored)
                           (("--store", store, "--filter", "tcp"), READ_ALREADY),
                           (("--store", store, "--policy", "linux"), READ_ALREADY),
                           (("--store", store, "--vlan-key"), READ_ALREADY),
                           (("--store", store, "--checksums", "verify"), READ_ALREADY)):
            res = run_cli("replay", *args, "--to", to)
            assert res.returncode == 2 and res.stderr == f"flowsift: {'' if line.startswith(str(adir)) else 'replay: '}{line}\n", \
                res.stderr


SCRIPTED = textwrap.dedent('''
    """Answers by mode (argv[1]); logs what it saw (argv[2]).
    timed: ten As -> resp1resp2 in one write, B -> ok
    continue: a request with Expect: 100-continue -> 100 unless its body came with it, then its answer
    closer: reads a request, closes without answering
    unanswered: hello -> hi, nothing to bye
    slow: each request -> its header, 0.3 s later its body; logs bytes already waiting then"""
    import asyncio, json, sys
    mode, log = sys.argv[1], open(sys.argv[2], "w")

    async def request(r):
        head = await r.readuntil(b"\\r\\n\\r\\n")
        n = 0
        for line in head.split(b"\\r\\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        return head, n

    async def handle(r, w):
        try:
            if mode == "timed":
                await r.readexactly(10)
                w.write(b"resp1resp2")
                await w.drain()
                if await r.readline() == b"B\\n":
                    w.write(b"ok\\n")
            elif mode == "continue":
                while True:
                    head, n = await request(r)
                    if b"100-continue" in head.lower() and len(r._buffer) < n:
                        w.write(b"HTTP/1.1 100 Continue\\r\\n\\r\\n")    # (only if the body waits for it)
                    body = await r.readexactly(n)
                    answer = b"one" if head.startswith(b"POST") else b"two"
                    w.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\n" + answer)
                    await w.drain()
            elif mode == "closer":
                await request(r)
            elif mode == "unanswered":
                if await r.readline() == b"hello\\n":
                    w.write(b"hi\\n")
                    await w.drain()
                log.write(json.dumps({"then": (await r.readline()).decode()}) + "\\n")
            elif mode == "slow":
                while True:
                    await request(r)
                    w.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\n")
                    await w.drain()
                    await asyncio.sleep(0.3)
                    log.write(json.dumps({"waiting": len(r._buffer)}) + "\\n")
                    log.flush()
                    w.write(b"hello")
                    await w.drain()
            await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        log.flush()
        w.close()

''') + SERVE


def _exchange(tmp_path, name, turns, fin=True, swap=()):
    """A capture of one connection to port 80: turns of (client sends?, payload, retransmit?);
    swap: pairs of turns whose packets change places in the file (their timestamps stay)."""
    from pcapgen import timed_capture
    seq = {True: 100, False: 500}
    pkts, t = [(0, True, 99, 0, 0x02, b""), (0.001, False, 499, 100, 0x12, b""), (0.002, True, 100, 500, 0x10, b"")], 0.01
    sent = {True: [], False: []}
    for from_client, payload, again in turns:
        at = sent[from_client][-1] if again else seq[from_client]
        pkts.append((t, from_client, at, seq[not from_client], 0x18, payload))
        if not again:
            sent[from_client].append(at)
            seq[from_client] += len(payload)
        t += 0.01
    if fin:
        pkts += [(t, True, seq[True], seq[False], 0x11, b""), (t + 0.001, False, seq[False], seq[True] + 1, 0x11, b""),
                 (t + 0.002, True, seq[True] + 1, seq[False] + 1, 0x10, b"")]
    for a, b in swap:
        pkts[3 + a], pkts[3 + b] = pkts[3 + b], pkts[3 + a]
    return timed_capture(tmp_path / name, pkts)


def _scripted(tmp_path, mode, capture, *args):
    log = tmp_path / f"{mode}.log"
    srv = Server(tmp_path, SCRIPTED, mode, log)
    try:
        s = replay(capture, "--to", f"127.0.0.1:{srv.port}", *args)
    finally:
        srv.stop()
    return s, [json.loads(l) for l in log.read_text().splitlines()]


def test_a_retransmission_is_not_a_turn_of_its_own(tmp_path):
    """AAAAAAAAAA, resp1, the As again, resp2, B, ok: the repeated As once made a turn with
    nothing to send, the server's right answer (resp1resp2) was reported as differing, and B was
    never sent."""
    cap = _exchange(tmp_path, "retrans.pcap", [(True, b"A" * 10, False), (False, b"resp1", False),
                                               (True, b"A" * 10, True), (False, b"resp2", False),
                                               (True, b"B\n", False), (False, b"ok\n", False)])
    s, _ = _scripted(tmp_path, "timed", cap, "--timeout", 3, "--idle", 0.3)
    assert (s["connections"], s["identical"], s["failed"], s["turns"], s["turns_identical"]) == (1, 1, 0, 2, 2)


def test_turns_follow_the_acks_not_the_order_of_the_records(tmp_path, corpus):
    """An answer stored before the request it acknowledges (two capture points, a SPAN port)
    made a turn of its own with nothing to send, waited for as a banner: the connection failed
    with no answer within --timeout."""
    cap = _exchange(tmp_path, "reorder.pcap", [(True, b"hello\n", False), (False, b"hello\n", False),
                                               (True, b"bye\n", False), (False, b"bye\n", False)], swap=[(0, 1)])
    s = _answers(tmp_path, "echo", cap, "--idle", 0.3)
    assert (s["turns"], s["turns_identical"], s["identical"], s["failed"]) == (2, 2, 1, 0), s
    # frame 7, the answer acknowledging the 15-byte request, is stored before frame 8, the request
    from flowsift.replay import conversation
    from flowsift.streams.reader import store_files
    store = tmp_path / "st"
    run_cli("gateway", corpus / "frag__zeek__ipv6-http-atomic-frag.pcap", "--store", store, "--keep", check=True)
    for path in store_files(store):
        turns = conversation(path).turns
        assert [(t.request, t.response[:6]) for t in turns] == [(b"GET /bad.html\r\n", b"<html>")]


def test_an_interim_response_belongs_to_the_request_before_it(tmp_path):
    """POST with Expect: 100-continue, 100, the body, 200 one; GET, 200 two. The 100 was paired
    with the POST and 200 one with the GET: against a server that sends no 100 when the body
    comes with the request (as replay sends it), both turns differed."""
    post = b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
    cap = _exchange(tmp_path, "continue.pcap", [(True, post, False), (False, b"HTTP/1.1 100 Continue\r\n\r\n", False),
                                                (True, b"hello", False), (False, ok + b"one", False),
                                                (True, b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n", False),
                                                (False, ok + b"two", False)])
    s, _ = _scripted(tmp_path, "continue", cap, "--match", "http", "--timeout", 3)
    assert (s["identical"], s["differing"], s["failed"], s["turns"]) == (1, 0, 0, 2), s


def test_a_server_that_closes_at_once_is_said_to_have_closed(tmp_path, corpus):
    s, _ = _scripted(tmp_path, "closer", BRO, "--match", "http", "--timeout", 5, "--limit", 2)
    assert s["failed"] == 2 and s["seconds"] < 4
    assert {f["reason"] for f in s["failures"]} == {"turn 0: the server closed the connection without answering"}


def test_turns_the_original_never_answered_are_counted(tmp_path):
    cap = _exchange(tmp_path, "unanswered.pcap", [(True, b"hello\n", False), (False, b"hi\n", False),
                                                  (True, b"bye\n", False)])
    s, seen = _scripted(tmp_path, "unanswered", cap, "--timeout", 3, "--idle", 0.3)
    assert (s["turns"], s["turns_identical"], s["turns_unanswered"], s["failed"]) == (1, 1, 1, 0)
    # sent all the same
    assert seen == [{"then": "bye\n"}]


def test_unacked_requests_wait_for_each_whole_answer(tmp_path):
    """--unacked took a response's header for the whole answer (its stand-in had no length) and
    sent the next request while the body was still to come."""
    reqs = [(True, f"GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), False) for i in range(3)]
    cap = _exchange(tmp_path, "unacked.pcap", reqs, fin=False)
    store = tmp_path / "st"
    run_cli("gateway", cap, "--store", store, "--keep", check=True)
    log = tmp_path / "slow.log"
    srv = Server(tmp_path, SCRIPTED, "slow", log)
    try:
        s = replay("--unacked", "--store", store, "--to", f"127.0.0.1:{srv.port}", "--timeout", 5)
    finally:
        srv.stop()
    assert (s["messages"], s["answers"], s["failed"]) == (3, 3, 0)
    assert [json.loads(l)["waiting"] for l in log.read_text().splitlines()] == [0, 0, 0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_unacked_ends_a_stop_with_the_summary_so_far(tmp_path, sig):
    """--unacked stopped by Ctrl-C or SIGTERM said one line and no summary (nor report) of what
    it had sent, where replay gives them."""
    reqs = [(True, f"GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), False) for i in range(2)]
    cap = _exchange(tmp_path, "unacked.pcap", reqs, fin=False)
    store, report = tmp_path / "st", tmp_path / "r.json"
    run_cli("gateway", cap, "--store", store, "--keep", check=True)
    with socket.socket() as silent:                 # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(30)
        p = subprocess.Popen([sys.executable, "-m", "flowsift", "replay", "--unacked", "--store", str(store), "--to",
                              f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "60", "--json", "--report",
                              str(report)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = silent.accept()               # its request is on its way: then the stop
            conn.settimeout(30)
            assert conn.recv(100).startswith(b"GET /r0")
            p.send_signal(sig)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
        conn.close()
    said, code = ("interrupted", 130) if sig == signal.SIGINT else ("terminated", 143)
    assert p.returncode == code and err.endswith(f"flowsift: {said}\n"), err
    s = json.loads(out)
    assert s["interrupted"] and s["signal"] == sig.name and s["mode"] == "unacked" and s["connections"] == 0, s
    assert json.loads(report.read_text())["summary"] == s


def test_unacked_counts_what_was_sent(tmp_path):
    """Against a server that never answered the first of three requests, the summary and the
    report said all three (their bytes and messages) were sent."""
    reqs = [f"GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3)]
    cap = _exchange(tmp_path, "unacked.pcap", [(True, r, False) for r in reqs], fin=False)
    store, report = tmp_path / "st", tmp_path / "r.json"
    run_cli("gateway", cap, "--store", store, "--keep", check=True)
    with socket.socket() as silent:                 # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        s = replay("--unacked", "--store", store, "--to", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", 0.5,
                   "--report", report)
    assert (s["failed"], s["messages"], s["bytes"], s["answers"]) == (1, 1, len(reqs[0]), 0), s
    (row,) = json.loads(report.read_text())["connections"]
    assert (row["messages"], row["bytes"], row["messages_planned"], row["bytes_planned"]) == (
        1, len(reqs[0]), 3, len(b"".join(reqs))), row


def test_a_gap_at_the_start_is_the_reason_even_with_partial(tmp_path, corpus):
    from flowsift.replay import conversation
    from flowsift.streams.reader import store_files
    store = tmp_path / "st"
    run_cli("gateway", corpus / "gap__suri__tcp-leading-gap.pcap", "--store", store, "--keep", check=True)
    reasons = {conversation(p, partial=True).skip for p in store_files(store)}
    assert reasons == {"gap in the client's stream"}          # it said "no data"


ANSWERS = textwrap.dedent('''
    """Answers by mode (argv[1]), each request as it comes.
    http10: an HTTP/1.0 answer without length, its body in two writes 50 ms apart, then the close
    more: +PONG, and 50 ms later a reply nobody asked for
    extra: a whole response with bytes after it
    late: a whole response, and 0.2 s later bytes after it
    ok: a whole response
    echo: every byte back
    upgrade, upgrade-upper: 101 Switching Protocols, then each line back (upper-cased)"""
    import asyncio, sys
    mode = sys.argv[1]
    OK = b"HTTP/1.1 200 OK\\r\\nContent-Length: 10\\r\\n\\r\\n0123456789"

    async def handle(r, w):
        try:
            while True:
                if mode == "echo":
                    chunk = await r.read(65536)
                    if not chunk:
                        break
                    w.write(chunk)
                    await w.drain()
                    continue
                if mode.startswith("upgrade"):
                    await r.readuntil(b"\\r\\n\\r\\n")
                    w.write(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\nConnection: Upgrade\\r\\n\\r\\n")
                    while line := await r.readline():
                        w.write(line.upper() if mode == "upgrade-upper" else line)
                        await w.drain()
                    break
                if mode == "more":
                    await r.readline()
                    w.write(b"+PONG\\r\\n")
                    await w.drain()
                    await asyncio.sleep(0.05)
                    w.write(b"-ERR nobody asked\\r\\n")
                    await w.drain()
                    await r.read()
                    break
                await r.readuntil(b"\\r\\n\\r\\n")
                if mode == "http10":
                    w.write(b"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello")
                    await w.drain()
                    await asyncio.sleep(0.05)
                    w.write(b", and more than before")
                    break
                w.write(OK + (b"GARBAGE" if mode == "extra" else b""))
                await w.drain()
                if mode == "late":
                    await asyncio.sleep(0.2)
                    w.write(b"GARBAGE")
                    await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        w.close()

''') + SERVE

OK10 = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


def _answers(tmp_path, mode, capture, *args):
    srv = Server(tmp_path, ANSWERS, mode)
    try:
        return replay(capture, "--to", f"127.0.0.1:{srv.port}", "--timeout", 3, "--idle", 0.5, *args)
    finally:
        srv.stop()


def test_an_answer_longer_than_recorded_differs(tmp_path):
    """An answer read only as far as the recorded one was reported identical: an HTTP/1.0 body
    without length (it ends at the close), and a reply the server sent after the recorded one."""
    cap = _exchange(tmp_path, "http10.pcap", [(True, GET, False),
                                              (False, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello", False)])
    s = _answers(tmp_path, "http10", cap, "--match", "http")
    assert (s["turns"], s["turns_differing"], s["failed"]) == (1, 1, 0), s
    assert s["first_differences"][0]["what"] == ["body"]
    cap = _exchange(tmp_path, "ping.pcap", [(True, b"PING\r\n", False), (False, b"+PONG\r\n", False)])
    s = _answers(tmp_path, "more", cap)
    assert (s["turns"], s["turns_differing"], s["failed"]) == (1, 1, 0), s


def test_bytes_after_an_http_response_differ(tmp_path):
    """Bytes after a whole response were not looked at, and bytes sent later made the next
    answer's start line `GARBAGEHTTP/1.1 200 OK`, whose status still compared equal."""
    cap = _exchange(tmp_path, "two.pcap", [(True, GET, False), (False, OK10, False),
                                           (True, GET, False), (False, OK10, False)])
    s = _answers(tmp_path, "extra", cap, "--match", "http")
    assert s["turns_differing"] == 2 and s["turns_identical"] == 0, s
    assert set(s["first_differences"][0]["what"]) == {"extra bytes after the response"}
    s = _answers(tmp_path, "late", cap, "--match", "http")
    assert s["turns_differing"] >= 1 and s["differing"] == 1, s


def test_turns_are_the_turns_compared_in_the_summary_and_per_connection(tmp_path):
    """The summary's turns left out a turn the original never answered; the report's turns of
    its connection counted it."""
    cap = _exchange(tmp_path, "three.pcap", [(True, GET, False), (False, OK10, False),
                                             (True, GET, False), (False, OK10, False), (True, GET, False)])
    report = tmp_path / "r.json"
    s = _answers(tmp_path, "extra", cap, "--match", "http", "--report", report)
    assert (s["turns"], s["turns_differing"], s["turns_unanswered"]) == (2, 2, 1), s
    (conn,) = json.loads(report.read_text())["connections"]
    assert (conn["turns"], conn["differing"], conn["unanswered"]) == (2, 2, 1), conn


def test_the_report_holds_the_summary_json_gives(tmp_path):
    """The report's summary lacked the failures and the first differences."""
    cap = _exchange(tmp_path, "two.pcap", [(True, GET, False), (False, OK10, False), (True, GET, False),
                                           (False, OK10, False)])
    report = tmp_path / "r.json"
    s = _answers(tmp_path, "extra", cap, "--report", report)
    assert len(s["first_differences"]) == 2 and json.loads(report.read_text())["summary"] == s


def test_an_answer_still_arriving_is_not_charged_to_the_next_turn(tmp_path):
    """100,000 bytes echoed while the client sends its next line (the recording has the echo's
    first segment before it): the echo's later bytes were charged to the turn that was reading,
    so an echo server answering exactly as recorded differed on both turns."""
    big = b"A" * 100000
    turns = [(True, big[i:i + 1400], False) for i in range(0, len(big), 1400)]
    turns += [(False, big[:1400], False), (True, b"PING\r\n", False)]
    turns += [(False, big[i:i + 1400], False) for i in range(1400, len(big), 1400)] + [(False, b"PING\r\n", False)]
    cap = _exchange(tmp_path, "echo.pcap", turns)
    s = _answers(tmp_path, "echo", cap)
    assert (s["turns"], s["turns_identical"], s["identical"], s["failed"]) == (2, 2, 1, 0), s


def test_after_a_switch_of_protocols_the_stream_replays_turn_by_turn(tmp_path):
    """After a 101 the rest of the connection was sent in one burst as an HTTP request, its
    answer incomplete, never compared: a server answering differently after the upgrade was
    reported identical."""
    up = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    cap = _exchange(tmp_path, "upgrade.pcap", [(True, up, False), (False, switched, False),
                                               (True, b"hello\n", False), (False, b"hello\n", False),
                                               (True, b"bye\n", False), (False, b"bye\n", False)])
    for match in ("exact", "http"):
        s = _answers(tmp_path, "upgrade", cap, "--match", match, "--idle", 0.3)
        assert (s["identical"], s["turns"], s["turns_identical"], s["turns_incomplete"]) == (1, 3, 3, 0), s
        s = _answers(tmp_path, "upgrade-upper", cap, "--match", match, "--idle", 0.3)
        assert (s["differing"], s["turns_identical"], s["turns_differing"]) == (1, 1, 2), s
        assert [(d["turn"], d["request"], d["what"]) for d in s["first_differences"]] == [
            (1, "hello", ["bytes"]), (2, "bye", ["bytes"])]


def test_a_connection_with_nothing_compared_is_not_identical(tmp_path, corpus):
    """A request whose answer the capture never held was counted identical, and a run that
    compared nothing at all exited 0."""
    cap = corpus / "frag__pcpp__frag_http_req.pcap"
    srv = Server(tmp_path, ANSWERS, "ok")
    try:
        res = run_cli("replay", cap, "--to", f"127.0.0.1:{srv.port}", "--timeout", 2, "--json")
        cmp = _exchange(tmp_path, "one.pcap", [(True, GET, False), (False, OK10, False), (True, GET, False)])
        mixed = run_cli("replay", cmp, "--to", f"127.0.0.1:{srv.port}", "--timeout", 2, "--json")
    finally:
        srv.stop()
    s = json.loads(res.stdout)
    assert (s["connections"], s["identical"], s["uncompared"], s["turns"], s["turns_unanswered"]) == (1, 0, 1, 0, 1), s
    assert res.returncode == 1 and res.stderr == (
        "flowsift: nothing compared: no turn had a whole recorded answer to compare with\n")
    # one turn compared and identical, one unanswered: identical, exit 0
    s = json.loads(mixed.stdout)
    assert (s["identical"], s["uncompared"], s["turns"], s["turns_unanswered"]) == (1, 0, 1, 1), s
    assert mixed.returncode == 0, mixed.stderr


def test_an_ipv6_target_is_written_in_brackets(tmp_path):
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        cap = _exchange(tmp_path, "ping.pcap", [(True, b"PING\r\n", False)])
        assert replay(cap, "--to", f"[::1]:{port}", "--timeout", 1)["target"] == f"[::1]:{port}"


def test_partial_stops_at_the_last_whole_request_before_a_gap(tmp_path):
    """--partial sent the request the gap cuts into, waited --timeout for an answer and said the
    connection failed."""
    from pcapgen import timed_capture
    one, two = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"
    c, sv = 100 + len(one), 500 + len(OK10)
    cap = timed_capture(tmp_path / "gap.pcap", [
        (0, True, 99, 0, 0x02, b""), (0.001, False, 499, 100, 0x12, b""), (0.002, True, 100, 500, 0x10, b""),
        (0.01, True, 100, 500, 0x18, one), (0.02, False, 500, c, 0x18, OK10),
        (0.03, True, c, sv, 0x18, two[:10]), (0.04, True, c + 20, sv, 0x18, two[20:]),      # two[10:20] lost
        (0.05, False, sv, c + len(two), 0x18, OK10), (0.06, True, c + len(two), sv + len(OK10), 0x11, b"")])
    s = _answers(tmp_path, "ok", cap, "--match", "http", "--partial")
    assert (s["connections"], s["identical"], s["failed"], s["turns"], s["partial"]) == (1, 1, 0, 1, 1), s
    assert s["seconds"] < 2
    s = _answers(tmp_path, "ok", cap, "--match", "http")
    assert s["connections"] == 0 and s["skipped"] == {"gap in the client's stream": 1}, s
    # a byte stream: sent up to the gap; the answer that came after the missing bytes is not awaited
    cap = timed_capture(tmp_path / "gap2.pcap", [
        (0, True, 99, 0, 0x02, b""), (0.001, False, 499, 100, 0x12, b""), (0.002, True, 100, 500, 0x10, b""),
        (0.01, True, 100, 500, 0x18, b"hello\n"), (0.02, False, 500, 106, 0x18, b"hello\n"),
        (0.03, True, 106, 506, 0x18, b"by"), (0.04, True, 109, 506, 0x18, b"\n"),                # "e" lost
        (0.05, False, 506, 110, 0x18, b"bye\n"), (0.06, True, 110, 510, 0x11, b"")])
    s = _answers(tmp_path, "echo", cap, "--partial", "--idle", 0.3)
    assert (s["identical"], s["failed"], s["turns"], s["turns_unanswered"], s["partial"]) == (1, 0, 1, 1, 1), s


def _first_line_cut(tmp_path, name, client, answer):
    """A capture of one connection whose client stream lost bytes 10..20 of `client`, replayed
    with --partial against a listener that answers nothing: (summary, what the listener got
    or None)."""
    from pcapgen import timed_capture
    cap = timed_capture(tmp_path / name, [
        (0, True, 99, 0, 0x02, b""), (0.001, False, 499, 100, 0x12, b""), (0.002, True, 100, 500, 0x10, b""),
        (0.01, True, 100, 500, 0x18, client[:10]), (0.02, True, 120, 500, 0x18, client[20:]),
        (0.03, False, 500, 100 + len(client), 0x18, answer),
        (0.04, True, 100 + len(client), 500 + len(answer), 0x11, b"")])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        res = run_cli("replay", cap, "--to", f"127.0.0.1:{listener.getsockname()[1]}", "--partial", "--timeout", 1,
                      "--json")
        listener.setblocking(False)
        try:
            conn = listener.accept()[0]
        except BlockingIOError:
            return json.loads(res.stdout), None
        with conn:
            conn.settimeout(0.5)
            return json.loads(res.stdout), conn.recv(100)


def test_partial_never_sends_a_request_line_a_gap_cut(tmp_path):
    """A gap inside the first request line made the stream not HTTP, and its first 10 bytes,
    `GET /one H`, were sent as a byte stream."""
    s, got = _first_line_cut(tmp_path, "gap.pcap", b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n", OK10)
    assert got is None
    assert s["connections"] == 0 and s["skipped"] == {"gap in the client's stream": 1}, s
    # a line of another protocol the gap cut is a byte stream: sent up to the gap
    ehlo = b"EHLO mail.example.com\r\nMAIL FROM:<a@b>\r\n"
    s, got = _first_line_cut(tmp_path, "smtp.pcap", ehlo, b"250 ok\r\n")
    assert got == ehlo[:10] and s["connections"] == 1


def test_exit_code_says_whether_every_connection_answered_as_recorded(tmp_path):
    """It was 0 whatever happened: identical, differing, or every connection failed."""
    cap = _exchange(tmp_path, "one.pcap", [(True, GET, False), (False, OK10, False)])
    srv = Server(tmp_path, ANSWERS, "extra")
    to = f"127.0.0.1:{srv.port}"
    try:
        same = run_cli("replay", cap, "--to", to, "--timeout", 2)                         # exact: the garbage differs
        like = run_cli("replay", cap, "--to", to, "--timeout", 2, "--match", "http",
                       "--ignore-body-regex", "x")                                          # still the extra bytes
        plain = _exchange(tmp_path, "ping.pcap", [(True, b"PING\r\n", False), (False, b"+PONG\r\n", False)])
    finally:
        srv.stop()
    assert same.returncode == 1 and like.returncode == 1, (same.stderr, like.stderr)
    srv = Server(tmp_path, ANSWERS, "echo")
    try:
        echoed = run_cli("replay", plain, "--to", f"127.0.0.1:{srv.port}", "--timeout", 2, "--idle", 0.3)
        again = run_cli("replay", _exchange(tmp_path, "echo.pcap", [(True, b"hi\n", False), (False, b"hi\n", False)]),
                        "--to", f"127.0.0.1:{srv.port}", "--timeout", 2, "--idle", 0.3)
    finally:
        srv.stop()
    assert echoed.returncode == 1 and again.returncode == 0, (echoed.stderr, again.stderr)


def test_an_unwritable_report_is_refused_before_the_replay(tmp_path, corpus):
    """--report in a missing directory was found only after every connection was replayed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        t0 = time.monotonic()
        res = run_cli("replay", BRO, "--to", f"127.0.0.1:{s.getsockname()[1]}", "--timeout", 5,
                      "--report", tmp_path / "no" / "such" / "r.json")
        assert time.monotonic() - t0 < 4
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [
            f"flowsift: {tmp_path / 'no' / 'such' / 'r.json'}: cannot write the report: No such file or directory"]
        # one made for a replay that ends in an error is not left behind
        made = tmp_path / "r.json"
        res = run_cli("replay", tmp_path / "nope.pcap", "--to", f"127.0.0.1:{s.getsockname()[1]}", "--report", made)
        assert res.returncode == 2 and not made.exists()


def test_a_report_the_disk_has_no_room_for_is_not_left_behind(tmp_path):
    """A report whose write failed (a full disk; here the file size limit, EFBIG) was said, exit
    2, but left an empty file: one made for the replay goes, and an old one stays whole."""
    import resource
    cap = _exchange(tmp_path, "echo.pcap", [(True, b"hi\n", False), (False, b"hi\n", False)])
    store = tmp_path / "st"
    run_cli("gateway", cap, "--store", store, "--keep", check=True)     # (replayed from, nothing written)
    old = tmp_path / "old.json"
    old.write_text("an old report\n")
    srv = Server(tmp_path, ANSWERS, "echo")
    try:
        for report, left in ((tmp_path / "r.json", None), (old, "an old report\n")):
            res = subprocess.run([sys.executable, "-m", "flowsift", "replay", "--store", store, "--to",
                                  f"127.0.0.1:{srv.port}", "--timeout", "3", "--idle", "0.3", "--report", str(report)],
                                 capture_output=True, text=True, timeout=60,
                                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64)))
            assert res.returncode == 2, (res.returncode, res.stderr)
            assert res.stderr.strip().splitlines()[-1] == f"flowsift: {report}: cannot write the report: File too large"
            assert (report.read_text() if report.exists() else None) == left
    finally:
        srv.stop()


def test_a_capture_of_the_server_side_only_is_skipped(tmp_path):
    """A connection whose client sent nothing was waited on as a banner for the whole --timeout,
    then failed; --limit left the connections past it uncounted."""
    cap = _exchange(tmp_path, "onesided.pcap", [(False, OK10, False)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        t0 = time.monotonic()
        r = replay(cap, "--to", f"127.0.0.1:{s.getsockname()[1]}", "--timeout", 5)
        assert time.monotonic() - t0 < 4
    assert r["connections"] == r["failed"] == 0 and r["skipped"] == {"nothing from the client": 1}, r


def test_connections_past_the_limit_are_counted_as_skipped(tmp_path, http_table):
    path, _ = http_table
    srv = Server(tmp_path, RECORDED, path)
    try:
        s = replay(BRO, "--to", f"127.0.0.1:{srv.port}", "--limit", 3)
    finally:
        srv.stop()
    assert s["connections"] == 3 and s["skipped"] == {"no data": 5, "limit": 5}, s


def test_a_big_differing_body_is_diffed_in_bounded_time():
    """20,000 differing lines took 24 s of CPU in difflib, on the event loop, and the report
    kept every long line whole."""
    from flowsift.replay import DIFF_LINE, _text_diff
    a = b"".join(b"line %d %s\n" % (i, b"x" * 300) for i in range(20000))
    b = b"".join(b"LINE %d %s\n" % (i, b"y" * 300) for i in range(20000))
    t0 = time.process_time()
    d = _text_diff(a, b)
    assert time.process_time() - t0 < 2
    assert d[-1].startswith("(the first ") and all(len(x) < DIFF_LINE + 40 for x in d)
    assert any(x.startswith("-line 0 xxx") for x in d)


COUNTING = textwrap.dedent('''
    """Answers each HTTP request after 0.1 s; logs how many requests it held at once (counted
    from a request to its answer: a connection the client closed may still look open here)."""
    import asyncio, sys
    log, open_now = open(sys.argv[1], "w"), [0]

    async def handle(r, w):
        try:
            while True:
                await r.readuntil(b"\\r\\n\\r\\n")
                open_now[0] += 1
                log.write(f"{open_now[0]}\\n")
                log.flush()
                await asyncio.sleep(0.1)
                w.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
                open_now[0] -= 1
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        w.close()

''') + SERVE


def _unacked_store(tmp_path, server_ports):
    """A kept store of one connection per server port, each a GET its server never acknowledged."""
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    frames, us = [], 1_700_000_000 * 10**6
    for k, server in enumerate(server_ports):
        port = 41000 + k
        for from_client, seq, ack, flags, payload in ((True, 99, 0, 0x02, b""), (False, 499, 100, 0x12, b""),
                                                      (True, 100, 500, 0x10, b""), (True, 100, 500, 0x18, GET)):
            src, dst, sp, dp = (A, B, port, server) if from_client else (B, A, server, port)
            us += 1000
            frames.append((us // 10**6, us % 10**6, ether(ipv4(src, dst, 6, tcp(sp, dp, seq=seq, ack=ack, flags=flags,
                                                                                payload=payload)))))
    cap = tmp_path / "unacked.pcap"
    cap.write_bytes(pcap(frames))
    store = tmp_path / "st"
    run_cli("gateway", cap, "--store", store, "--keep", check=True)
    return store


def test_unacked_keeps_to_the_concurrency_and_lists_twenty_failures(tmp_path):
    """--unacked opened every connection at once whatever -j said, and listed every failure."""
    store = _unacked_store(tmp_path, [80] * 30)
    log = tmp_path / "open.log"
    srv = Server(tmp_path, COUNTING, log)
    try:
        s = replay("--unacked", "--store", store, "--to", f"127.0.0.1:{srv.port}", "-j", 3, "--timeout", 5)
    finally:
        srv.stop()
    assert (s["connections"], s["answers"], s["failed"]) == (30, 30, 0), s
    assert max(int(x) for x in log.read_text().split()) <= 3
    with socket.socket() as closer:                 # accepts, never answers: every connection fails
        closer.bind(("127.0.0.1", 0))
        closer.listen(64)
        s = replay("--unacked", "--store", store, "--to", f"127.0.0.1:{closer.getsockname()[1]}", "-j", 30,
                   "--timeout", 0.5)
    assert s["failed"] == 30 and len(s["failures"]) == 20


def test_unacked_keeps_to_the_server_port_and_the_limit(tmp_path):
    """--unacked sent every connection of the store whatever --server-port and --limit said, and
    took --match, --partial, --speed and --idle without a word."""
    store = _unacked_store(tmp_path, [80, 8080, 80])
    srv = Server(tmp_path, COUNTING, tmp_path / "open.log")
    to = f"127.0.0.1:{srv.port}"
    try:
        s = replay("--unacked", "--store", store, "--to", to, "--timeout", 5, "--server-port", 8080)
        assert (s["connections"], s["answers"], s["skipped"]) == (1, 1, {"other server port": 2}), s
        s = replay("--unacked", "--store", store, "--to", to, "--timeout", 5, "--server-port", 80, "--limit", 1)
        assert (s["connections"], s["answers"], s["skipped"]) == (1, 1, {"limit": 1, "other server port": 1}), s
    finally:
        srv.stop()
    assert len((tmp_path / "open.log").read_text().split()) == 2
    with socket.socket() as listener:               # refused before anything is sent: nothing connects
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        to = f"127.0.0.1:{listener.getsockname()[1]}"
        for args, said in ((("--match", "http"), "--match"), (("--partial",), "--partial"),
                           (("--speed", "1", "--idle", "0.5"), "--speed, --idle")):
            res = run_cli("replay", "--unacked", "--store", store, "--to", to, *args)
            assert res.returncode == 2 and res.stderr == (
                f"flowsift: replay: {said}: not with --unacked (it sends what the server had not acknowledged, "
                "and compares nothing)\n"), res.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_an_answer_that_is_not_http_is_shown_by_its_first_bytes():
    """An answer without an HTTP header block was said to be "no HTTP response", whatever it was."""
    from flowsift.replay import compare
    (d,) = compare(OK10, b"SSH-2.0-OpenSSH_9.6\r\n", "http", b"GET")
    assert d == {"what": "message", "recorded": "HTTP/1.1 200 OK",
                 "replayed": "not an HTTP response: 'SSH-2.0-OpenSSH_9.6\\r\\n'"}
    (d,) = compare(OK10, b"HTTP/1.1 200 OK\r\n", "http", b"GET")
    assert d["replayed"] == "an incomplete response (17 bytes)"


def test_a_concurrency_the_descriptor_limit_lowers_is_said(tmp_path):
    """-j above the descriptor limit less 64 was lowered without a word."""
    import resource
    cap = _exchange(tmp_path, "ping.pcap", [(True, b"PING\r\n", False), (False, b"PING\r\n", False)])
    srv = Server(tmp_path, ANSWERS, "echo")

    def run(j):
        # (the hard limit too: reading a capture raises the soft one as far as it may)
        return subprocess.run([sys.executable, "-m", "flowsift", "replay", str(cap), "--to", f"127.0.0.1:{srv.port}",
                               "--idle", "0.3", "--json", "-j", str(j)], capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (80, 80)))
    try:
        lowered, kept = run(50), run(16)
    finally:
        srv.stop()
    assert lowered.returncode == 0 and lowered.stderr == (
        "flowsift: -j 50 lowered to 16: the descriptor limit (80, ulimit -n) less 64 kept for the process\n")
    assert kept.returncode == 0 and kept.stderr == ""


def test_replay_of_a_store_says_what_inspect_lists_as_its_problems(tmp_path, corpus):
    """A killed store (store.json saying incomplete), one without store.json, one holding a
    directory named as a record file, one with a record file cut short: replay --store said
    nothing of them. Each kind is one line on stderr, and in the summary's `store_problems`;
    the record files there are are replayed."""
    store = tmp_path / "st"
    run_cli("gateway", BRO, "--store", store, "--keep", check=True)
    manifest = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps({**manifest, "complete": False}))
    (store / "c00000090.rec").mkdir()
    (store / "c00000091.rec").mkdir()
    os.truncate(store / "c00000001.rec", 2**40 + 10)
    with socket.socket() as silent:                 # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        to = f"127.0.0.1:{silent.getsockname()[1]}"
        for extra in ((), ("--unacked",)):
            res = run_cli("replay", "--store", store, "--to", to, "--timeout", 0.2, "--limit", 1, "--json", *extra)
            said = [line for line in res.stderr.splitlines() if line.startswith(f"flowsift: {store}: ")]
            assert res.returncode in (0, 1) and "internal error" not in res.stderr, res.stderr
            problems = json.loads(res.stdout)["store_problems"]
            assert said == [f"flowsift: {store}: {p}" for p in problems]
            assert problems[0] == "store.json: incomplete (being written, or its gateway stopped before the end)"
            assert problems[1] == ("c00000090.rec: not a record file: a directory, not a regular file "
                                   "(and 1 more entries like it)")
            assert problems[2].startswith("c00000001.rec: truncated: the file ends at byte 1,099,511,627,786")
            assert len(problems) == 3
        (store / "store.json").unlink()
        res = run_cli("replay", "--store", store, "--to", to, "--timeout", 0.2, "--limit", 1, "--json")
        assert json.loads(res.stdout)["store_problems"][0] == ("store.json: missing (the gateway writes it first: "
                                                               "these files come from elsewhere)")


def _response(ctype, body):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def test_a_binary_body_that_differs_says_where():
    """A PNG body past 16 KiB was diffed as text with its bytes that are not UTF-8 dropped: the
    diff was empty but for the note on what was compared."""
    from flowsift.replay import compare
    png = bytes(range(256)) * 180
    flipped = png[:305] + bytes([png[305] ^ 0x55]) + png[306:]
    for ctype in (b"image/png", b"application/x-unknown"):
        (d,) = compare(_response(ctype, png), _response(ctype, flipped), "http", b"GET")
        assert d["what"] == "body" and d["diff"] == [f"binary: {len(png)} bytes recorded, {len(png)} now; "
                                                     "first difference at byte 305"], d
    # text in latin-1 is still text, every byte kept; one past what is diffed says where
    page = b"caf\xe9 " * 5000
    (d,) = compare(_response(b"text/html", page), _response(b"text/html", page.replace(b"\xe9", b"e", 1)),
                   "http", b"GET")
    assert "-caf\xe9 caf\xe9" in d["diff"][3] and "+cafe caf\xe9" in d["diff"][4], d["diff"]
    late = b"a\n" * 10000
    (d,) = compare(_response(b"text/plain", late), _response(b"text/plain", late[:-2] + b"b\n"), "http", b"GET")
    assert d["diff"][0] == "first difference at byte 19998", d["diff"]
    from flowsift.replay import body_kind
    assert body_kind({"content-type": ["application/vnd.api+json"]}) == "text"
    assert body_kind({"content-type": ["application/vnd.ms-excel"]}) == "binary"
    # a gzip-encoded body is binary whatever its media type
    gz = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n")
    (d,) = compare(gz + b"abcd", gz + b"abce", "http", b"GET")
    assert d["diff"] == ["binary: 4 bytes recorded, 4 now; first difference at byte 3"], d


def test_a_missing_record_file_is_found_by_its_number_and_a_copy_is_not_replayed(tmp_path, corpus):
    """With c00000003.rec gone and c00000004.rec copied to c00000044.rec, the count of record
    files matched what store.json says: nothing was said missing, and connection 4 was replayed
    twice."""
    store = tmp_path / "st"
    run_cli("gateway", BRO, "--store", store, "--keep", check=True)
    (store / "c00000003.rec").unlink()
    # (sparse: a record file's size is mostly holes)
    subprocess.run(["cp", "--sparse=always", str(store / "c00000004.rec"), str(store / "c00000044.rec")], check=True)
    said = ["store.json: its run kept the 13 record files it made, 12 are here: c00000003.rec missing",
            "store.json: its run made 13 record files, numbered from 0: c00000044.rec is not one of them"]
    res = run_cli("inspect", store, "--json")
    assert json.loads(res.stdout)["problems"] == said + ["c00000044.rec: named for connection 44, its header says "
                                                         "connection 4"], res.stdout
    with socket.socket() as silent:                 # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        for extra in ((), ("--unacked",)):
            res = run_cli("replay", "--store", store, "--to", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", 0.2,
                          "-j", 16, "--json", *extra)
            s = json.loads(res.stdout)
            assert s["store_problems"] == said + ["c00000044.rec: named for connection 44, its header says "
                                                  "connection 4 (not replayed)"], s
            assert s["skipped"]["record file named for another connection"] == 1, s
    # conn 3 carried data (it is the one left out): 7 of the 8 replayed before
    assert s["connections"] + sum(s["skipped"].values()) == 13, s


def test_unacked_never_sends_a_request_a_gap_cuts_into(tmp_path, corpus):
    """--unacked sent a POST's head and the 977 bytes of its body before a gap, then failed the
    server for not answering; --partial leaves such a request out."""
    store = tmp_path / "st"
    run_cli("gateway", corpus / "gap__pcpp__unidirectional_tcp_stream_with_missing_packet.pcap", "--store", store,
            "--keep", check=True)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        s = replay("--unacked", "--store", store, "--to", f"127.0.0.1:{listener.getsockname()[1]}", "--timeout", 1)
        assert (s["connections"], s["failed"], s["skipped"]) == (0, 0, {"gap in the client's stream": 1}), s
        while True:                                 # nothing was sent on any connection
            try:
                conn = listener.accept()[0]
            except BlockingIOError:
                break
            with conn:
                conn.settimeout(1)
                assert conn.recv(100) == b""
    # a whole request before the one the gap cuts: that one is sent, and answered
    from pcapgen import timed_capture
    one, post = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /two HTTP/1.1\r\nContent-Length: 30\r\n\r\n" + b"x" * 30
    c = 100 + len(one)
    cap = timed_capture(tmp_path / "gap.pcap", [
        (0, True, 99, 0, 0x02, b""), (0.001, False, 499, 100, 0x12, b""), (0.002, True, 100, 500, 0x10, b""),
        (0.01, True, 100, 500, 0x18, one), (0.02, True, c, 500, 0x18, post[:50]),
        (0.03, True, c + 60, 500, 0x18, post[60:])])                                        # post[50:60] lost
    store, report = tmp_path / "st2", tmp_path / "r.json"
    run_cli("gateway", cap, "--store", store, "--keep", check=True)
    srv = Server(tmp_path, ANSWERS, "ok")
    try:
        s = replay("--unacked", "--store", store, "--to", f"127.0.0.1:{srv.port}", "--timeout", 3, "--report", report)
    finally:
        srv.stop()
    assert (s["connections"], s["messages"], s["answers"], s["bytes"], s["failed"]) == (1, 1, 1, len(one), 0), s
    (row,) = json.loads(report.read_text())["connections"]
    assert row["partial_at"] == c - 100 + 50 and row["note"].endswith("up to the request the gap cuts into, not sent")


CUTS = textwrap.dedent('''
    """Answers by mode (argv[1]), cutting its answers short or saying more than recorded.
    http-reset, http-close: half of a 100-byte response, then a reset (or a close)
    http-trickle: a response's head, then its body a byte every 0.4 s
    http-open: a response without length (it ends at the close), never closed
    smtp-half: a greeting, then half the answer to the first command and the close
    smtp-after: a greeting, the whole answer to the first command, then the close
    smtp-long: a greeting longer than recorded, then 250 ok to each command (221 bye to QUIT)
    redis: +PONG to PING, $1 x to ECHO x, and a TIME one digit longer than recorded"""
    import asyncio, socket, struct, sys
    mode = sys.argv[1]
    BODY = b"HTTP/1.1 200 OK\\r\\nContent-Length: 100\\r\\n\\r\\n" + b"x" * 100

    async def handle(r, w):
        try:
            if mode.startswith("http"):
                await r.readuntil(b"\\r\\n\\r\\n")
                if mode == "http-trickle":
                    w.write(BODY[:40])
                    for k in range(40, len(BODY)):
                        await w.drain()
                        await asyncio.sleep(0.4)
                        w.write(BODY[k:k + 1])
                elif mode == "http-open":
                    w.write(b"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello")
                    await w.drain()
                    await asyncio.sleep(60)
                else:
                    w.write(BODY[:70])
                    await w.drain()
                    await asyncio.sleep(0.2)
                    if mode == "http-reset":
                        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                              struct.pack("ii", 1, 0))
                        w.transport.abort()
                        return
                w.close()
                return
            if mode.startswith("smtp"):
                w.write(b"220 ready, and the date: Mon 1 Jan 2024\\r\\n" if mode == "smtp-long" else b"220 ready\\r\\n")
                first = True
                while line := await r.readline():
                    if mode == "smtp-after":
                        # the answer and the close in one segment (corked): the close is there with it
                        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                    if first and mode == "smtp-half":
                        w.write(b"250-mail.exa")
                        await w.drain()
                        break
                    w.write(b"221 bye\\r\\n" if line.startswith(b"QUIT") else
                            b"250-mail.example\\r\\n250 OK\\r\\n" if line.startswith(b"EHLO") else b"250 ok\\r\\n")
                    await w.drain()
                    first = False
                    if mode == "smtp-after":
                        w.write_eof()
                        await asyncio.sleep(0)
                        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                        await asyncio.sleep(1)
                        break
            else:
                while line := await r.readline():
                    w.write({b"PING\\r\\n": b"+PONG\\r\\n", b"ECHO x\\r\\n": b"$1\\r\\nx\\r\\n"}.get(
                        line, b"*2\\r\\n$10\\r\\n1800000000\\r\\n$7\\r\\n1234567\\r\\n"))
                    await w.drain()
            await asyncio.sleep(0.2)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        w.close()

''') + SERVE

SMTP_TURNS = [(False, b"220 ready\r\n", False), (True, b"EHLO x\r\n", False),
              (False, b"250-mail.example\r\n250 OK\r\n", False), (True, b"MAIL FROM:<a@b>\r\n", False),
              (False, b"250 ok\r\n", False), (True, b"QUIT\r\n", False), (False, b"221 bye\r\n", False)]


def _cut(tmp_path, mode, capture, *args):
    srv = Server(tmp_path, CUTS, mode)
    try:
        return replay(capture, "--to", f"127.0.0.1:{srv.port}", "--idle", 0.3, *args)
    finally:
        srv.stop()


def test_an_answer_cut_short_says_how_and_at_which_turn(tmp_path):
    """A response cut by a reset or a close was "an incomplete response (70 bytes)"; one still
    coming when --timeout ran out, the same; an SMTP server that closed during its answer to
    turn 1 had turn 2 blamed ("turn 2: the server closed the connection without answering")."""
    cap = _exchange(tmp_path, "one.pcap", [(True, GET, False),
                                           (False, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
                                            False)])
    for mode, how in (("http-reset", "reset"), ("http-close", "closed")):
        s = _cut(tmp_path, mode, cap, "--match", "http", "--timeout", 5)
        assert s["failures"][0]["reason"] == (f"turn 0: the server {how} the connection during its answer "
                                              "(an incomplete response, 70 bytes)"), s
    s = _cut(tmp_path, "http-trickle", cap, "--match", "http", "--timeout", 1)
    assert s["failures"][0]["reason"].startswith("turn 0: --timeout (1 s) ran out during its answer ("), s
    smtp = _exchange(tmp_path, "smtp.pcap", SMTP_TURNS)
    s = _cut(tmp_path, "smtp-half", smtp, "--timeout", 5)
    assert s["failures"][0]["reason"] == ("turn 1: the server closed the connection after 12 of the 26 bytes "
                                          "recorded for its answer"), s
    s = _cut(tmp_path, "smtp-after", smtp, "--timeout", 5)
    assert s["failures"][0]["reason"] == ("turn 1: the server closed the connection after its answer (turn 2 and "
                                          "after not sent)"), s
    assert s["turns_identical"] == 2, s
    # a close where the original's server said nothing more either is no failure
    cap = _exchange(tmp_path, "closes.pcap", [
        (True, GET, False), (False, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, and more than before",
                             False), (True, GET, False)])
    s = _answers(tmp_path, "http10", cap, "--match", "http")
    assert (s["identical"], s["failed"]) == (1, 0), s


def test_an_answer_longer_than_recorded_is_its_own_turns_difference(tmp_path):
    """Compared as bytes, an answer longer than recorded was cut at the recorded length: a
    greeting with a longer date showed as 11 bytes recorded, 11 replayed, and every later turn
    differed, each answer starting with the surplus of the one before."""
    report = tmp_path / "r.json"
    s = _cut(tmp_path, "smtp-long", _exchange(tmp_path, "smtp.pcap", SMTP_TURNS), "--timeout", 5, "--report", report)
    assert (s["turns"], s["turns_differing"], s["turns_identical"]) == (4, 1, 3), s
    (d,) = json.loads(report.read_text())["connections"][0]["differences"]
    assert (d["turn"], d["request"]) == (0, "") and (d["differences"][0]["recorded"],
                                                     d["differences"][0]["replayed"]) == (11, 41), d
    # a reply one digit longer in the middle of a conversation: that turn alone differs
    redis = _exchange(tmp_path, "redis.pcap", [
        (True, b"PING\r\n", False), (False, b"+PONG\r\n", False), (True, b"TIME\r\n", False),
        (False, b"*2\r\n$10\r\n1700000000\r\n$6\r\n123456\r\n", False), (True, b"PING\r\n", False),
        (False, b"+PONG\r\n", False), (True, b"ECHO x\r\n", False), (False, b"$1\r\nx\r\n", False)])
    s = _cut(tmp_path, "redis", redis, "--timeout", 5)
    assert (s["turns_differing"], s["turns_identical"]) == (1, 3), s
    assert [d["turn"] for d in s["first_differences"]] == [1], s
    # and what varies can be masked, as bytes too (with --match http as well: not HTTP, compared as bytes)
    s = _cut(tmp_path, "redis", redis, "--timeout", 5, "--ignore-body-regex", "[0-9]+")
    assert (s["turns_differing"], s["turns_identical"]) == (0, 4), s
    srv = Server(tmp_path, CUTS, "redis")
    try:
        res = run_cli("replay", redis, "--to", f"127.0.0.1:{srv.port}", "--idle", 0.3, "--match", "http",
                      "--ignore-body-regex", "[0-9]+", "--ignore-header", "Date", "--json")
    finally:
        srv.stop()
    assert json.loads(res.stdout)["turns_identical"] == 4 and res.returncode == 0
    # an option that applies to nothing is said
    assert res.stderr == "flowsift: --ignore-header: no connection replayed is HTTP, it applies to none\n", res.stderr


def test_a_response_that_ends_at_a_close_that_never_comes_differs(tmp_path):
    """A response without length whose server never closed was compared as it stood after
    --timeout, and called identical."""
    cap = _exchange(tmp_path, "open.pcap", [(True, GET, False),
                                            (False, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello", False)])
    report = tmp_path / "r.json"
    s = _cut(tmp_path, "http-open", cap, "--match", "http", "--timeout", 1, "--report", report)
    assert (s["differing"], s["failed"], s["first_differences"][0]["what"]) == (1, 0, ["end"]), s
    (d,) = json.loads(report.read_text())["connections"][0]["differences"][0]["differences"]
    assert d == {"what": "end", "recorded": "the server closed the connection",
                 "replayed": "still open when --timeout (1 s) ran out"}


def test_trailer_fields_are_compared_as_headers_are():
    """A chunked response's trailer fields were not compared: one that changed went unseen."""
    from flowsift.replay import compare
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
    recorded = head + b"X-Checksum: v1\r\nDate: Mon\r\n\r\n"
    (d,) = compare(recorded, head + b"X-Checksum: changed\r\nDate: Tue\r\n\r\n", "http", b"GET")
    assert d == {"what": "trailer x-checksum", "recorded": ["v1"], "replayed": ["changed"]}
    assert compare(recorded, head + b"\r\n", "http", b"GET") == [
        {"what": "trailer x-checksum", "recorded": ["v1"], "replayed": None}]
    # as volatile and --ignore-header headers are not
    assert compare(recorded, head + b"X-Checksum: changed\r\n\r\n", "http", b"GET", ignore_headers=["X-Checksum"]) == []


def test_uncompared_connections_and_other_server_ports_are_named(tmp_path):
    """Connections with nothing to compare were counted and named nowhere, and a capture's
    connections to several server ports all went to --to without a word (FTP data connections
    sent to the control server)."""
    from pcapgen import timed_capture

    def conn(name, port, at, answer):
        return timed_capture(tmp_path / name, [
            (at, True, 99, 0, 0x02, b""), (at + 0.001, False, 499, 100, 0x12, b""),
            (at + 0.002, True, 100, 500, 0x10, b""), (at + 0.01, True, 100, 500, 0x18, b"hello\n")]
            + ([(at + 0.02, False, 500, 106, 0x18, answer)] if answer else []), port=port).read_bytes()
    cap = tmp_path / "two.pcap"
    cap.write_bytes(conn("a.pcap", 80, 0, b"hello\n") + conn("b.pcap", 8080, 1, None)[24:])
    srv = Server(tmp_path, ANSWERS, "echo")
    report = tmp_path / "r.json"
    try:
        res = run_cli("replay", cap, "--to", f"127.0.0.1:{srv.port}", "--idle", 0.3, "--report", report)
        s = replay(cap, "--to", f"127.0.0.1:{srv.port}", "--idle", 0.3)
        one = run_cli("replay", cap, "--to", f"127.0.0.1:{srv.port}", "--idle", 0.3, "--server-port", 80)
    finally:
        srv.stop()
    assert res.returncode == 0 and res.stderr == (
        f"flowsift: connections to 2 server ports, all replayed against 127.0.0.1:{srv.port}: 80 (1), 8080 (1); "
        "--server-port N replays those to one\n"), res.stderr
    # (folded to the terminal's width where COLUMNS says one)
    assert ("uncompared: connection 1 (10.0.0.1:40000 -> 10.0.0.2:8080): the original never answered (1 turn "
            "sent)") in " ".join(res.stdout.split()), res.stdout
    (row,) = json.loads(report.read_text())["connections"]
    assert (row["conn"], row["uncompared"]) == (1, "the original never answered (1 turn sent)"), row
    assert s["uncompared_connections"] == [{"conn": 1, "client": "10.0.0.1:40000", "server": "10.0.0.2:8080",
                                            "why": "the original never answered (1 turn sent)"}], s
    assert s["server_ports"] == {"80": 1, "8080": 1}, s
    assert one.returncode == 0 and one.stderr == "", one.stderr


def test_the_text_output_says_what_it_leaves_out_and_shows_turns_plainly(tmp_path):
    """The text output listed the first 10 differing turns without a word of the others, showed
    a greeting turn as `turn 0 ''`, and a binary request's "first line" ran past its newline."""
    turns = [t for k in range(12) for t in ((True, b"line %d\n" % k, False), (False, b"LINE %d\n" % k, False))]
    srv = Server(tmp_path, ANSWERS, "echo")
    try:
        res = run_cli("replay", _exchange(tmp_path, "twelve.pcap", turns), "--to", f"127.0.0.1:{srv.port}",
                      "--idle", 0.1)
        tls = _exchange(tmp_path, "tls.pcap", [(True, b"\x16\x03\x01\x00\x05hello\nworld", False),
                                               (False, b"\x16\x03\x03\x00\x02hi", False)])
        s = replay(tls, "--to", f"127.0.0.1:{srv.port}", "--idle", 0.1)
    finally:
        srv.stop()
    out = " ".join(res.stdout.split())
    assert res.returncode == 1 and out.count("differs: connection 0") == 10, res.stdout
    assert "... and 2 more; --report FILE.json lists all" in out, res.stdout
    assert s["first_differences"][0]["request"] == "binary: 16 03 01 00 05 68 65 6c 6c 6f 0a 77 6f 72 6c 64", s
    srv = Server(tmp_path, CUTS, "smtp-long")
    try:
        res = run_cli("replay", _exchange(tmp_path, "smtp.pcap", SMTP_TURNS), "--to", f"127.0.0.1:{srv.port}",
                      "--idle", 0.3)
    finally:
        srv.stop()
    assert "turn 0 (the server's greeting): bytes" in " ".join(res.stdout.split()), res.stdout


def test_a_report_to_a_device_or_a_fifo_is_written_as_it_is(tmp_path):
    """`--report /dev/null` (or a FIFO a reader reads) failed after the whole replay: the report
    was truncated before it was written, which only a regular file can be."""
    import threading
    cap = _exchange(tmp_path, "two.pcap", [(True, GET, False), (False, OK10, False)])
    s = _answers(tmp_path, "extra", cap, "--report", "/dev/null")
    assert s["connections"] == 1
    fifo = tmp_path / "r.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    s = _answers(tmp_path, "extra", cap, "--report", fifo)
    reader.join(30)
    assert json.loads(got[0])["summary"] == s
