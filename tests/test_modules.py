"""Modules: loading and validation, the inline chain over record files, the CLI."""
import json
import re
import textwrap

import pytest

from conftest import ROOT, run_cli
from flowsift.modules import Module, ModuleError, Option, find, parse_chain
from flowsift.testing import run_module


def write_module(tmp_path, body, name="m.py"):
    p = tmp_path / name
    p.write_text("from flowsift.modules import Module, Option\n" + textwrap.dedent(body))
    return p


def test_builtin_and_file_modules_and_options(tmp_path):
    assert find("counter").name == "counter"
    p = write_module(tmp_path, '''
        class Greeter(Module):
            """Greets.

            Synopsis: greeter
            """
            name = "greeter"
            options = {"times": Option(int, 1, "how often"), "loud": Option(bool, False, "shout")}
            def on_open(self, flow):
                self.count("hi", self.config["times"])
    ''')
    chain = parse_chain(f"counter,{p}(times=3,loud=yes)") + parse_chain(f"{p}:Greeter")
    assert [(c.name, cfg) for c, cfg in chain] == [("counter", {}), ("greeter", {"times": 3, "loud": True}),
                                                  ("greeter", {"times": 1, "loud": False})]


@pytest.mark.parametrize("spec,needle", [
    ("nosuch", "unknown module 'nosuch' (known: counter, "),
    ("countr", "unknown module 'countr'; did you mean counter? (known: counter, "),
    ("counter(x=1)", "no option 'x'"),
    ("", "empty chain"),
    ("/no/such/file.py", "no such module file"),
])
def test_chain_errors_name_the_problem(spec, needle):
    import re
    with pytest.raises(ModuleError, match=re.escape(needle)):
        parse_chain(spec)


@pytest.mark.parametrize("body,needle", [
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         def on_dat(self, flow, stream): pass
     ''', "unknown hook on_dat()"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         def on_data(self, flow): pass
     ''', "on_data() takes (flow), expected (flow, stream)"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         @staticmethod
         def on_open(flow): pass
     ''', "on_open() must be a method: def on_open(self, flow)"),
    # (these loaded: an async or generator hook then did nothing, a keyword-only parameter failed
    # at every call, and a hook that is no function was an internal error)
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         async def on_open(self, flow): pass
     ''', "module bad: on_open() is async: hooks are called, not awaited (def on_open(self, flow))"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         def on_data(self, flow, stream):
             yield stream.read()
     ''', "module bad: on_data() yields: a generator's body runs only when iterated"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         def on_close(self, flow, *, reason): pass
     ''', "module bad: on_close() takes reason by keyword only: hooks are called with positional arguments"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         on_open = 5
     ''', "module bad: on_open is 5, not a method: def on_open(self, flow)"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         def on_request(self, flow): pass
     ''', "module bad: unknown hook on_request() (hooks: on_open, on_data, on_gap, on_close, on_packet; on_* names "
          "are for hooks"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         writes = {"ip.dst", "the moon"}
     ''', "`writes` names 'the moon': one of drop, ip.dst,"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         writes = ["payload"]
     ''', "`writes` must be a set (e.g. {'drop'}), not a list"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         options = {"x": 3}
     ''', "`options` must map names to Option"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         reads = {"records", "payloads"}
     ''', "`reads` names 'payloads': one of gaps, records, stream"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         reads = {"records", "gaps"}
         def on_data(self, flow, stream): pass
     ''', "module bad: on_data() reads the connection's stream: add 'stream' to `reads`"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         reads = {"stream"}
         def on_packet(self, flow, record): pass
     ''', "on_packet() reads the connection's records: add 'records' to `reads`"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         reads = {"stream", "records"}
         def on_gap(self, flow, direction, gap): pass
     ''', "on_gap() reads the connection's gaps: add 'gaps' to `reads`"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "bad"
         reads = {"records"}
         writes = {"payload"}
     ''', "writing the payload reads the stream: add 'stream' to `reads`"),
    ('''
     class Bad(Module):
         name = "bad"
     ''', "needs a docstring"),
    ('''
     class Bad(Module):
         """Doc."""
         name = "not an identifier"
     ''', "needs a `name`"),
])
def test_bad_modules_fail_when_they_load(tmp_path, body, needle):
    p = write_module(tmp_path, body)
    with pytest.raises(ModuleError, match=re.escape(needle)):
        parse_chain(str(p))


def test_a_hook_that_is_no_function_is_one_line_when_the_chain_loads(tmp_path, corpus):
    p = write_module(tmp_path, '''
        class Bad(Module):
            """Doc."""
            name = "bad"
            on_open = 5
    ''')
    res = run_cli("chain", p, corpus / "http__zeek__get.pcap")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "flowsift: module bad: on_open is 5, not a method: def on_open(self, flow)\n"


def test_stream_pointer_hooks_unread_bytes_stay_and_gaps_arrive_in_order(tmp_path, corpus):
    """A module that reads 3 bytes per call sees the whole client stream, gap included, in order."""
    p = write_module(tmp_path, '''
        class Slow(Module):
            """Reads three bytes per call.

            Synopsis: slow
            """
            name = "slow"
            def on_open(self, flow):
                flow.state["seen"] = [b"", b""]
                flow.state["order"] = []
            def on_data(self, flow, stream):
                chunk = bytes(stream.read(3))
                flow.state["seen"][stream.direction] += chunk
                flow.state["order"].append(("data", stream.direction, len(chunk)))
            def on_gap(self, flow, direction, gap):
                flow.state["order"].append(("gap", direction, gap.offset, gap.length))
            def on_close(self, flow, reason):
                self.emit("done", client_bytes=flow.state["seen"][0].hex(), order=flow.state["order"], reason=reason)
    ''')
    out = tmp_path / "events.jsonl"
    res = run_cli("chain", p, corpus / "gap__suri__tcp-simple-gap2.pcap", "--events", out, "--json")
    assert res.returncode == 0, res.stderr
    (ev,) = [json.loads(l) for l in out.read_text().splitlines()]
    from flowsift.reassembly import Reassembler
    r = Reassembler()
    r.feed_capture(corpus / "gap__suri__tcp-simple-gap2.pcap")
    assert bytes.fromhex(ev["client_bytes"]) == bytes(r.collector.dirs[(0, 0)].data)
    kinds = [tuple(x[:2]) for x in ev["order"] if x[1] == 0]
    gap_at = kinds.index(("gap", 0))
    assert kinds[:gap_at] and all(k == ("data", 0) for k in kinds[:gap_at])     # bytes before the gap first
    assert ev["reason"] in ("eof", "fin", "rst")


@pytest.mark.parametrize("mode", [[], ["--inline"]])
def test_bytes_left_unread_before_a_gap_go_with_it(tmp_path, corpus, mode):
    """The client sends VERY, loses 4 bytes, then DATA. A module that reads whole 5-byte records
    leaves VERY unread. Once the gap is known, VERY can never grow: the module is called again
    (stream.next_gap says so), then hears of the gap and gets DATA (it once waited for ever: no
    on_gap, nothing after the gap)."""
    p = write_module(tmp_path, '''
        class Five(Module):
            """Reads 5-byte records.

            Synopsis: five
            """
            name = "five"
            def on_data(self, flow, stream):
                self.emit("data", dir=stream.direction, at=stream.tell(), n=stream.available,
                          gap_follows=stream.next_gap is not None, ended=stream.closed)
                while stream.available >= 5:
                    stream.read_bytes(5)
            def on_gap(self, flow, direction, gap):
                self.emit("gap", dir=direction, at=gap.offset, n=gap.length)
    ''')
    out = tmp_path / "events.jsonl"
    res = run_cli("chain", p, corpus / "gap__suri__tcp-simple-gap2.pcap", "--events", out, *mode)
    assert res.returncode == 0, res.stderr
    client = [(e["kind"], e["at"], e["n"], e.get("gap_follows"), e.get("ended"))
              for e in map(json.loads, out.read_text().splitlines()) if e["dir"] == 0]
    # the gap is known only at the end of the capture, with the end: then the module is called
    # again, and DATA comes once, ended
    assert client == [("data", 0, 4, False, False), ("data", 0, 4, True, True), ("gap", 4, 4, None, None),
                      ("data", 8, 4, False, True)]


BOOM = '''
    class Boom(Module):
        """Fails on every packet.

        Synopsis: boom
        """
        name = "boom"
        def on_packet(self, flow, record):
            raise RuntimeError("kaboom")
'''


def test_failing_module_is_logged_once_and_the_chain_goes_on(tmp_path, corpus):
    p = write_module(tmp_path, BOOM)
    res = run_cli("chain", f"{p},counter", corpus / "http__zeek__get.pcap", "--json")
    assert res.returncode == 0
    assert res.stderr.count("RuntimeError: kaboom") == 1 and res.stderr.count("module boom failed in on_packet()") == 1
    assert "flowsift/modules" not in res.stderr            # flowsift's own frames are trimmed
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    # every one of the 14 packets, the last ACK (of the last FIN) included
    assert summary["modules"]["boom"]["errors"] == 14 and summary["modules"]["counter"]["flows"] == 1


@pytest.mark.parametrize("mode", [[], ["--inline"]])
def test_strict_stops_at_a_hook_exception_and_shows_the_modules_frames(tmp_path, corpus, mode):
    """In parallel mode the worker sent the gateway the message alone: the module's file and
    line were lost, where --inline (and a failure without --strict) showed them."""
    p = write_module(tmp_path, BOOM)
    strict = run_cli("chain", p, corpus / "http__zeek__get.pcap", "--strict", *mode)
    assert strict.returncode == 2
    lines = strict.stderr.strip().splitlines()
    assert lines[0] == "flowsift: module boom: on_packet() raised RuntimeError: kaboom"
    assert lines[1:] == [f'  File "{p}", line 10, in on_packet', '    raise RuntimeError("kaboom")']


@pytest.mark.parametrize("mode", [[], ["--inline"]])
def test_only_the_modules_frames_are_shown_not_flowsifts_compiled_ones(tmp_path, corpus, mode):
    """A failure inside a stream pointer's call showed three frames of flowsift's
    _pointer.pyx (Cython names its frames flowsift/streams/...: no leading slash); and a
    module whose file lies in a folder named flowsift (a checkout's examples) lost its own."""
    (tmp_path / "flowsift").mkdir()
    p = write_module(tmp_path / "flowsift", '''
        class Reader(Module):
            """Reads a float's worth.

            Synopsis: reader
            """
            name = "reader"
            def on_data(self, flow, stream):
                stream.read(1.0)
    ''')
    strict = run_cli("chain", p, corpus / "http__zeek__get.pcap", "--strict", "--store", tmp_path / "st", *mode)
    assert strict.returncode == 2
    lines = strict.stderr.strip().splitlines()
    assert lines == ["flowsift: module reader: on_data() raised TypeError: 'float' object cannot be interpreted as "
                     "an integer", f'  File "{p}", line 10, in on_data', "    stream.read(1.0)"]


@pytest.mark.parametrize("mode", [[], ["--inline"]])
@pytest.mark.parametrize("quits,said", [("sys.exit(3)", "SystemExit: 3"), ("sys.exit()", "SystemExit"),
                                        ("raise KeyboardInterrupt", "KeyboardInterrupt")])
def test_sys_exit_or_keyboard_interrupt_in_a_hook_is_its_failure(tmp_path, corpus, mode, quits, said):
    """They are no Exception: inline, sys.exit(3) ended flowsift (exit 3, not a word) and a
    KeyboardInterrupt was "interrupted", as if the user had pressed Ctrl-C; in a worker, either
    killed it at every restart (with pages of tracebacks), and the run was given up."""
    p = write_module(tmp_path, f'''
        import sys
        class Quits(Module):
            """Quits.

            Synopsis: quits
            """
            name = "quits"
            def on_open(self, flow):
                {quits}
    ''')
    cap = corpus / "http__zeek__get.pcap"
    res = run_cli("chain", f"{p},counter", cap, "--json", "--store", tmp_path / "st", *mode)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == ["flowsift: module quits failed in on_open() (later failures are counted):",
                                       f'  File "{p}", line 11, in on_open', f"    {quits}", said]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["modules"]["quits"]["errors"] == 1 and summary["modules"]["counter"]["flows"] == 1
    strict = run_cli("chain", p, cap, "--strict", "--store", tmp_path / "st2", *mode)
    assert strict.returncode == 2
    assert strict.stderr.strip().splitlines() == [f"flowsift: module quits: on_open() raised {said}",
                                                  f'  File "{p}", line 11, in on_open', f"    {quits}"]


@pytest.mark.parametrize("mode", [[], ["--inline"]])
def test_ctrl_c_while_a_hook_runs_stops_the_run_and_is_not_the_modules_failure(tmp_path, corpus, mode):
    """The user's Ctrl-C comes as a KeyboardInterrupt where the hook runs (inline): it stops the
    run as ever, not counted as the module's failure."""
    import os
    import signal
    import subprocess
    import sys
    import time
    marker = tmp_path / "in-hook"
    p = write_module(tmp_path, f'''
        import time
        class Sleeps(Module):
            """Sleeps.

            Synopsis: sleeps
            """
            name = "sleeps"
            def on_open(self, flow):
                open({str(marker)!r}, "w").close()
                time.sleep(60)
    ''')
    proc = subprocess.Popen([sys.executable, "-m", "flowsift", "chain", str(p), str(corpus / "http__zeek__get.pcap"),
                             "--store", str(tmp_path / "st"), *mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for _ in range(400):
            if marker.exists():
                break
            time.sleep(0.05)
        assert marker.exists()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and err.strip() == "flowsift: interrupted", err


def test_a_counter_named_like_the_chains_own_is_refused(tmp_path, corpus):
    """`errors` is the chain's count of exceptions in a module's hooks: a module counting under
    that name would be overwritten in the summary, so the name is refused where it is used."""
    p = write_module(tmp_path, '''
        class Clash(Module):
            """Counts under a reserved name.

            Synopsis: clash
            """
            name = "clash"
            def on_close(self, flow, reason):
                self.count("errors")
    ''')
    strict = run_cli("chain", p, corpus / "http__zeek__get.pcap", "--strict")
    assert strict.returncode == 2 and len(strict.stderr.strip().splitlines()) == 1, strict.stderr
    assert "module clash: counter name 'errors' is the chain's own" in strict.stderr
    res = run_cli("chain", p, corpus / "http__zeek__get.pcap", "--json")
    assert res.returncode == 0 and json.loads(res.stdout.strip().splitlines()[-1])["modules"]["clash"]["errors"] == 1


def test_chain_sets_module_bits_in_kept_records(tmp_path, corpus):
    store = tmp_path / "s"
    res = run_cli("chain", f"counter,{ROOT / 'examples' / 'minimal.py'}", corpus / "http__zeek__get.pcap",
                  "--store", store, "--keep", "--events", tmp_path / "e.jsonl")
    assert res.returncode == 0, res.stderr
    from flowsift.streams import RecordFile, store_files
    with RecordFile(store_files(store)[0]) as rf:
        assert rf.header["modules_mask"] == 0b11
        assert all(r.modules == 0b11 for r in rf.records())


def test_examples_run(corpus):
    res = run_cli("chain", f"{ROOT / 'examples' / 'http_requests.py'},{ROOT / 'examples' / 'minimal.py'}",
                  ROOT / "examples" / "demo.pcap", "--json")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    events = [json.loads(l) for l in lines[:-1]]
    uris = sorted(e["uri"] for e in events if e["kind"] == "request")
    assert uris == ["/", "/big.txt", "/index.html", "/missing"]
    summary = json.loads(lines[-1])
    assert summary["modules"]["minimal"]["connections"] == 9 and summary["store"] is None
    res = run_cli("chain", ROOT / "examples" / "first_line.py", ROOT / "examples" / "demo.pcap", "--json", "--inline")
    assert res.returncode == 0, res.stderr
    events = [json.loads(l) for l in res.stdout.strip().splitlines()[:-1]]
    assert sorted(e["line"] for e in events if e["kind"] == "first_line") == \
        ["GET / HTTP/1.1", "GET /big.txt HTTP/1.1", "GET /index.html HTTP/1.1", "GET /missing HTTP/1.1"]
    binary = sorted(e["hex"][:6] for e in events if e["kind"] == "first_bytes")
    # a TLS handshake record; DNS over TCP and UDP, shorter than max_line and without a line end:
    # taken whole once their stream ends
    assert binary == ["002820", "100001", "100101", "100201", "160301"], binary


def test_http_requests_example_goes_on_after_a_long_line(tmp_path):
    """A line longer than max_line (an upload without line ends) once stopped the example for
    the rest of the connection."""
    from flowsift.testing import segments_capture
    cap = segments_capture(tmp_path, client=[b"POST /up HTTP/1.1\r\n\r\n", b"x" * 300 + b"\r\n",
                                             b"GET /b HTTP/1.1\r\n\r\n"])
    res = run_cli("chain", f"{ROOT / 'examples' / 'http_requests.py'}(max_line=100)", cap, "--json")
    assert res.returncode == 0, res.stderr
    events = [json.loads(l) for l in res.stdout.strip().splitlines()[:-1]]
    assert [e["uri"] for e in events] == ["/up", "/b"]


def test_modules_command(tmp_path):
    res = run_cli("modules")
    assert res.returncode == 0 and "counter" in res.stdout
    res = run_cli("modules", "counter")
    for section in ("Synopsis", "Reads", "Writes", "Options", "Counters", "Example", "Hooks"):
        assert section in res.stdout
    # the docstring's Reads, and what the class declares, under another name
    assert res.stdout.count("Reads:") == 1 and "Declared: reads gaps, records; read-only" in res.stdout
    bad = run_cli("modules", "nosuch")
    assert bad.returncode == 2 and "unknown module" in bad.stderr
    bad = run_cli("chain", "nosuch", ROOT / "examples" / "demo.pcap")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_an_installed_packages_entry_point_module_is_found_run_and_listed(tmp_path):
    """A package declaring `[flowsift.modules] hello = hellomod:Hello` (a real dist-info on
    the path, read by importlib.metadata) is found by name in a chain and listed by `flowsift
    modules`, with where it comes from; a broken one costs its line, not the listing."""
    import os
    import subprocess
    import sys
    site = tmp_path / "site"
    (site / "hellomod").mkdir(parents=True)
    (site / "hellomod" / "__init__.py").write_text(textwrap.dedent('''
        from flowsift.modules import Module

        class Hello(Module):
            """Says hello once per connection, at its end; a module from an installed
            package, found through its entry point.

            Synopsis: hello
            """
            name = "hello"

            def on_close(self, flow, reason):
                self.emit("hello", reason=reason)
                self.count("hellos")
        '''))
    info = site / "hellomod-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hellomod\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[flowsift.modules]\nhello = hellomod:Hello\nbroken = nosuchpkg:Nope\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "80"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "flowsift", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=120, cwd=tmp_path)

    res = cli("chain", "hello,counter", ROOT / "examples" / "demo.pcap", "--events", "-", "--json", "--inline")
    assert res.returncode == 0, res.stderr
    hellos = [json.loads(line) for line in res.stdout.splitlines() if '"kind": "hello"' in line]
    assert len(hellos) == 9 and {h["module"] for h in hellos} == {"hello"}
    listing = cli("modules")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    hello = " ".join(x.strip() for x in lines[[i for i, x in enumerate(lines) if x.startswith("hello ")][0]:][:3])
    assert "Says hello once per connection, at its end; a module from an installed package" in hello
    assert "[entry point hellomod:Hello]" in hello
    assert any(x.startswith("broken ") and "cannot load" in x for x in lines)
    assert all(len(x) <= 80 for x in lines) and any(x.startswith("counter ") for x in lines)
    assert "Synopsis: hello" in cli("modules", "hello").stdout
    bad = cli("chain", "broken", ROOT / "examples" / "demo.pcap")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "flowsift: entry point nosuchpkg:Nope: cannot load: ModuleNotFoundError: No module named 'nosuchpkg'"]


def test_chain_options_may_hold_regular_expressions():
    chain = parse_chain("redact(pattern=(?<=key=)[^,&]{1,8}),strsearch(patterns=inline:a|b,nocase=yes),counter")
    assert [c.name for c, _ in chain] == ["redact", "strsearch", "counter"]
    assert chain[0][1]["pattern"] == "(?<=key=)[^,&]{1,8}" and chain[1][1] == {"patterns": "inline:a|b", "nocase": True}
    with pytest.raises(ModuleError, match="unbalanced"):
        parse_chain("redact(pattern=[a)")


@pytest.mark.parametrize("inline", [True, False])
def test_a_chain_over_more_live_connections_than_it_may_keep_files_open(corpus, monkeypatch, inline):
    """Readers keep a bounded number of record files open (FLOWSIFT_READER_FILES): the
    connection read least recently is closed, its pointers' places kept, and opened again
    when it next has news. The events are those of a run with no bound."""
    import io
    import json
    from flowsift.chain import run_chain
    spec = "counter,http,strsearch(patterns=inline:HTTP/1.1|Content-Type,nocase=true)"
    cap = str(corpus / "tls__suri__tls-subjectaltname.pcap")        # up to 96 connections open at once
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")
    runs = {}
    for files in ("100000", "3"):
        monkeypatch.setenv("FLOWSIFT_READER_FILES", files)
        out = io.StringIO()
        runs[files] = run_chain(spec, cap, events=out, inline=inline, strict=True), out.getvalue()
    (wide, ev_wide), (narrow, ev_narrow) = runs["100000"], runs["3"]
    norm = lambda text: sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "ts"}, sort_keys=True)
                               for l in text.splitlines())
    assert norm(ev_narrow) == norm(ev_wide) and len(ev_wide.splitlines()) > 112
    assert narrow["modules"] == wide["modules"]
    if inline:
        assert wide["reader_reopens"] == 0 and narrow["reader_reopens"] > 100


def test_a_reader_ahead_of_a_batch_limit_does_not_read_records_again(tmp_path, corpus, monkeypatch):
    """An attached module that read the files as far as they went (its batch log had lost
    entries) and then replays later log entries, whose limits are behind it, must neither go
    back nor see a record twice."""
    import os
    from flowsift.gateway import Gateway
    from flowsift.modules.runner import InlineChain

    class Records(Module):
        """Counts records.

        Synopsis: records
        """
        name = "records"

        def on_packet(self, flow, record):
            self.count("records")
            self.count(f"r{flow.conn}.{record.index}")

    monkeypatch.setenv("FLOWSIFT_BATCH", "4")
    g = Gateway(tmp_path / "store", keep=True)
    batches = []
    g.run_capture(corpus / "http__zeek__get.pcap",
                  after_batch=lambda t, c: batches.append((list(t), list(c), dict(zip(t + c, g.store.published(t + c))))))
    conns = sorted({c for t, cl, _ in batches for c in t + cl})
    runner = InlineChain([(Records, {})], None, path_of=lambda c: os.path.join(g.store_dir, f"c{c:08d}.rec"),
                         on_done=lambda *a: None, hold_events=True)
    first = batches[0]
    runner.process(first[0], [], {c: (1, 0, 0, 0) for c in first[0]})     # one record each, then
    runner.process(conns, [], None)                                          # the files as far as they go
    for touched, closed, limits in batches:                                  # then the log again
        runner.process(touched, closed, limits)
    counts = runner.modules[0].counters
    total = sum(g.store.published([c])[0][0] for c in conns)
    assert len(batches) > 3
    assert counts["records"] == total and all(v == 1 for k, v in counts.items() if k != "records")


def test_a_module_attached_to_a_store_ends_the_connections_it_skipped(tmp_path, corpus):
    """An attached module reads the files as far as they go (follow) and learns from them that
    a connection ended: one its module skipped (tls, once it has the ClientHello) must still
    be ended, with the chain's events."""
    import io
    import json
    import os
    from flowsift.chain import run_chain
    from flowsift.gateway import Gateway
    from flowsift.modules.loader import parse_chain
    from flowsift.modules.runner import InlineChain
    cap = corpus / "tls__suri__tls-subjectaltname.pcap"
    out = io.StringIO()
    run_chain("tls", str(cap), events=out, inline=True, strict=True)
    g = Gateway(tmp_path / "store", keep=True)
    done, events = [], []
    runner = InlineChain(parse_chain("tls"), None, path_of=lambda c: os.path.join(g.store_dir, f"c{c:08d}.rec"),
                         on_done=lambda c, records, evs, deltas: (done.append(c), events.extend(evs)),
                         hold_events=True, strict=True)
    # batch by batch while the gateway writes: skipped connections are followed on after the skip
    g.run_capture(cap, after_batch=lambda touched, closed: runner.follow(sorted(set(touched) | set(closed))))
    runner.follow(list(range(g.store.files)))
    assert sorted(done) == list(range(g.store.files)) and not runner.conns
    norm = lambda lines: sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "ts"}, sort_keys=True)
                                for l in lines)
    assert norm(events) == norm(out.getvalue().splitlines()) and len(events) > 30


def test_a_chain_that_reads_no_bytes_does_not_store_them_and_says_the_same(tmp_path, corpus):
    """counter reads records and gaps only: alone, in a store that goes at the end, the gateway
    counts the bytes without storing them, and the events are those of a run that stored them
    (--keep, or a chain with a module that reads the stream)."""
    cap = corpus / "speed__pcpp__example.pcap"          # TCP with gaps and UDP
    reader = write_module(tmp_path, '''
        class Reader(Module):
            """Reads every byte.

            Synopsis: reader
            """
            name = "reader"
            def on_data(self, flow, stream):
                stream.read()
    ''')
    runs = {}
    for label, args in (("alone", ["counter"]), ("inline", ["counter", "--inline"]),
                        ("keep", ["counter", "--keep", "--store", tmp_path / "kept"]),
                        ("with_reader", [f"counter,{reader}"])):
        out = tmp_path / f"{label}.jsonl"
        res = run_cli("chain", *args[:1], cap, *args[1:], "--events", out, "--json", "--strict")
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        events = sorted(l for l in out.read_text().splitlines() if '"module":"counter"' in l.replace(" ", ""))
        runs[label] = (summary["bytes_stored"], summary["bytes"], events)
    assert [runs[k][0] for k in ("alone", "inline", "keep", "with_reader")] == [False, False, True, True]
    assert runs["alone"][2] and len(runs["alone"][2]) == 136
    for label in ("inline", "keep", "with_reader"):
        assert runs[label][1:] == runs["alone"][1:], label


def test_a_module_reading_what_it_did_not_declare_is_told_so(tmp_path, corpus):
    p = write_module(tmp_path, '''
        class Peek(Module):
            """Looks at the bytes it said it would not read.

            Synopsis: peek
            """
            name = "peek"
            reads = {"records"}
            def on_packet(self, flow, record):
                flow.totals()
                flow.payload(record)
    ''')
    res = run_cli("chain", p, corpus / "http__zeek__get.pcap", "--strict")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "module peek: flow.payload() reads the connection's stream: add 'stream' to `reads`" in res.stderr


@pytest.mark.parametrize("mode", [[], ["--inline"]])
def test_a_module_is_called_once_more_when_its_unread_bytes_can_no_longer_grow(tmp_path, monkeypatch, mode):
    """The client's last bytes come in one batch and its FIN in a later one: a module that
    waits for a line end hears of the end (stream.closed) with the bytes still there."""
    from flowsift.testing import segments_capture
    cap = segments_capture(tmp_path, client=[b"HELLO\r\n", b"no line end"], server=[b"ok"])
    p = write_module(tmp_path, '''
        class Lines(Module):
            """Lines, and what is left at the end.

            Synopsis: lines
            """
            name = "lines"
            def on_data(self, flow, stream):
                while (line := stream.read_until(b"\\r\\n")) is not None:
                    self.emit("line", dir=stream.direction, text=bytes(line).decode())
                if stream.closed and stream.available:
                    self.emit("rest", dir=stream.direction, text=stream.read_bytes().decode())
    ''')
    monkeypatch.setenv("FLOWSIFT_BATCH", "1")
    out = tmp_path / "events.jsonl"
    res = run_cli("chain", p, cap, "--events", out, *mode)
    assert res.returncode == 0, res.stderr
    events = [(e["kind"], e["text"]) for e in map(json.loads, out.read_text().splitlines()) if e["dir"] == 0]
    assert events == [("line", "HELLO\r\n"), ("rest", "no line end")]


def test_event_times_do_not_depend_on_batches_or_mode(tmp_path, corpus, monkeypatch):
    """An event's ts is the time of the packet it is about (on_packet: the packet; on_data: the
    one that first carried the last byte read), not the latest packet of the batch that was
    being read: the same events, times included, for any batch size, parallel or inline."""
    cap = corpus / "tls__suri__tls-subjectaltname.pcap"
    p = write_module(tmp_path, '''
        class Pkt(Module):
            """The time of every client packet with payload.

            Synopsis: pkt
            """
            name = "pkt"
            reads = {"records"}
            def on_packet(self, flow, record):
                if record.dir == 0 and record.payload_len:
                    self.emit("pkt", rts=record.ts_ns)
    ''')
    runs = []
    for batch, mode in (("1", []), ("512", []), ("7", ["--inline"])):
        monkeypatch.setenv("FLOWSIFT_BATCH", batch)
        out = tmp_path / f"ev{batch}.jsonl"
        res = run_cli("chain", f"tls,dns,strsearch(patterns=inline:google|HTTP),{p}", cap, "--events", out, *mode)
        assert res.returncode == 0, res.stderr
        runs.append(sorted(out.read_text().splitlines()))
    assert runs[0] == runs[1] == runs[2]
    events = [json.loads(l) for l in runs[0]]
    pkts = [e for e in events if e["kind"] == "pkt"]
    assert pkts and all(e["rts"] / 1e9 == e["ts"] for e in pkts)
    assert {e["kind"] for e in events} >= {"client_hello", "query", "match"}


def test_event_fields_may_not_replace_the_envelope(tmp_path, corpus):
    p = write_module(tmp_path, '''
        class Spoof(Module):
            """Emits odd fields.

            Synopsis: spoof
            """
            name = "spoof"
            def on_open(self, flow):
                self.emit("odd", raw=b"\\x00ab\\xff", tags={"b", "a"})
                self.emit("bad", client="x")
    ''')
    out = tmp_path / "events.jsonl"
    res = run_cli("chain", p, corpus / "http__zeek__get.pcap", "--events", out, "--inline", "--strict")
    assert res.returncode == 2
    assert res.stderr.strip().endswith("module spoof: event field 'client' is one every event has "
                                       "(client, conn, kind, module, proto, server, ts; vlan with --vlan-key): "
                                       "choose another name")
    (odd,) = [json.loads(l) for l in out.read_text().splitlines()]
    assert odd["raw"] == "\x00ab\xff" and odd["tags"] == ["a", "b"] and odd["client"] != "x"


@pytest.mark.parametrize("init,needle", [
    ("""
            def __init__(self, config=None):
                super().__init__(config)
                raise FileNotFoundError("words.txt")
    """, "module broken: cannot start: FileNotFoundError: words.txt"),
    ("""
            def __init__(self):
                super().__init__()
    """, "module broken: cannot start: TypeError: "),
    ("""
            def __init__(self, config=None):
                self.n = 0
            def on_open(self, flow):
                self.count("opens")
    """, "module broken: its __init__ must call super().__init__(config)"),
])
@pytest.mark.parametrize("mode", [[], ["--inline"]])
def test_a_module_that_cannot_start_is_one_line_before_the_first_packet(tmp_path, corpus, init, needle, mode):
    """Its __init__ raising was an internal error (exit 1); without super().__init__() the
    workers died on flowsift's own attributes, 101 times, printing each traceback."""
    p = write_module(tmp_path, '''
        class Broken(Module):
            """Does not start.

            Synopsis: broken
            """
            name = "broken"
    ''' + init)
    res = run_cli("chain", p, corpus / "http__zeek__get.pcap", *mode)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr


def test_a_module_is_in_a_chain_once(tmp_path, corpus):
    """Counters, events and state go by module name: a second counter (or a file module named
    counter) mixed its counters into the first's."""
    p = write_module(tmp_path, '''
        class Mine(Module):
            """Also called counter.

            Synopsis: counter
            """
            name = "counter"
    ''')
    for chain in ("counter,counter", f"counter,{p}"):
        res = run_cli("chain", chain, corpus / "http__zeek__get.pcap")
        assert res.returncode == 2
        assert res.stderr.startswith("flowsift: module counter is in the chain twice")


def test_a_module_file_imports_the_files_next_to_it(tmp_path, corpus):
    (tmp_path / "helper_words.py").write_text("GREETING = 'hello'\n")
    p = write_module(tmp_path, '''
        from helper_words import GREETING

        class Greets(Module):
            """Greets with a word from its helper.

            Synopsis: greets
            """
            name = "greets"
            def on_open(self, flow):
                self.emit("greeting", word=GREETING)
    ''')
    for mode in ([], ["--inline"]):
        res = run_cli("chain", p, corpus / "http__zeek__get.pcap", *mode)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout.splitlines()[0])["word"] == "hello"


def test_a_file_with_no_module_class_or_several_says_so(tmp_path):
    none = tmp_path / "none.py"
    none.write_text("X = 1\n")
    with pytest.raises(ModuleError, match=r"none.py: no Module class in it"):
        find(str(none))
    two = write_module(tmp_path, '''
        class A(Module):
            """A.

            Synopsis: a
            """
            name = "a"

        class B(Module):
            """B.

            Synopsis: b
            """
            name = "b"
    ''')
    with pytest.raises(ModuleError, match=r"2 Module classes \(A, B\); say which with .*:ClassName"):
        find(str(two))


def test_options_are_checked_for_their_kind_and_given_once(tmp_path):
    p = write_module(tmp_path, '''
        class Opts(Module):
            """Options of each kind.

            Synopsis: opts
            """
            name = "opts"
            options = {"n": Option(int, 1, "a count"), "words": Option(list, [], "words"),
                       "ratio": Option(float, 1, "a ratio"), "on": Option(bool, False, "a switch")}
    ''')
    (_, cfg), = parse_chain(f"{p}(n=3,words=a;b; c,ratio=0.5,on=yes)")
    assert cfg == {"n": 3, "words": ["a", "b", "c"], "ratio": 0.5, "on": True}
    for spec, needle in ((f"{p}(n=x)", "option n='x' is not an integer"),
                         (f"{p}(on=maybe)", "option on='maybe' is not true or false"),
                         (f"{p}(n=1,n=2)", "option n is given twice")):
        with pytest.raises(ModuleError, match=re.escape(needle)):
            parse_chain(spec)
    bad = write_module(tmp_path, '''
        class BadDefault(Module):
            """A default of the wrong kind.

            Synopsis: bad
            """
            name = "bad"
            options = {"n": Option(int, "ten", "a count")}
    ''', name="bad.py")
    with pytest.raises(ModuleError, match=re.escape("module bad: option n's default 'ten' is not an integer")):
        find(str(bad))


def events_by_batch(tmp_path, monkeypatch, spec, cap, batches=("1", "4", "512"), modes=((),)):
    """{(batch, mode): the events of `spec` over `cap`}, without their time."""
    out = {}
    for batch in batches:
        for mode in modes:
            monkeypatch.setenv("FLOWSIFT_BATCH", batch)
            path = tmp_path / f"ev{batch}{''.join(mode)}.jsonl"
            res = run_cli("chain", spec, cap, "--events", path, *mode)
            assert res.returncode == 0, res.stderr
            out[(batch, mode)] = [{k: v for k, v in json.loads(l).items() if k != "ts"}
                                  for l in path.read_text().splitlines()]
    return out


def test_a_module_without_on_gap_sees_every_gap_at_it_however_bytes_were_batched(tmp_path, corpus, monkeypatch):
    """A module that reads everything, and passes a gap itself when stream.at_gap shows one:
    when the bytes before a gap all came before the loss was known (small batches, or a gap
    declared at the end), no call showed it the gap and flowsift passed it silently."""
    p = write_module(tmp_path, '''
        class Walk(Module):
            """Reads everything; says where it meets a gap.

            Synopsis: walk
            """
            name = "walk"
            def on_data(self, flow, stream):
                while True:
                    g = stream.at_gap
                    if g is not None:
                        self.emit("gap", dir=stream.direction, at=g.offset, n=g.length)
                        stream.skip_gap()
                    elif stream.available:
                        stream.read_bytes(stream.available)
                    else:
                        return
    ''')
    modes = ((), ("--inline",))
    for name, want in (("gap__zeek__gap-recovery.pcap", [(1, 19520, 5770)]),
                       ("gap__suri__tcp-simple-gap2.pcap", [(0, 4, 4)])):
        runs = events_by_batch(tmp_path, monkeypatch, p, corpus / name, modes=modes)
        got = {k: [(e["dir"], e["at"], e["n"]) for e in v] for k, v in runs.items()}
        assert all(g == want for g in got.values()), (name, got)


def test_skip_stops_at_a_gap_and_on_gap_hears_of_it(tmp_path, corpus, monkeypatch):
    """skip(n) past a gap went over it, without on_gap, or stopped short of it, by batch."""
    p = write_module(tmp_path, '''
        class Skipper(Module):
            """Skips a long body of the server's stream.

            Synopsis: skipper
            """
            name = "skipper"
            def on_data(self, flow, stream):
                if stream.direction == 1:
                    left = flow.state.setdefault("left", 30000)
                    before = stream.tell()
                    stream.skip(left)
                    flow.state["left"] = left - (stream.tell() - before)
                    if stream.tell() > before:
                        self.emit("skip", at=before, to=stream.tell())
                else:
                    stream.skip()
            def on_gap(self, flow, direction, gap):
                self.emit("gap", dir=direction, at=gap.offset, n=gap.length)
    ''')
    runs = events_by_batch(tmp_path, monkeypatch, p, corpus / "gap__zeek__gap-recovery.pcap")
    for got in runs.values():
        gaps = [(e["dir"], e["at"], e["n"]) for e in got if e["kind"] == "gap"]
        assert gaps == [(1, 19520, 5770)], got
        conn = next(e["conn"] for e in got if e["kind"] == "gap")
        skips = [(e["at"], e["to"]) for e in got if e["kind"] == "skip" and e["conn"] == conn]
        assert skips[-1][1] == 30000 + 5770 and any(a == 25290 for a, _ in skips), skips
        assert all(not (a < 19520 < t) for a, t in skips), skips


def test_records_so_far_in_on_packet_end_at_the_packet(tmp_path, corpus, monkeypatch):
    """flow.totals(), flow.records() and flow.gaps() in on_packet: the connection up to the
    packet handed over (they took in the rest of its batch: the whole connection, or one packet)."""
    p = write_module(tmp_path, '''
        class Sofar(Module):
            """Totals at every packet.

            Synopsis: sofar
            """
            name = "sofar"
            reads = {"records", "gaps"}
            def on_packet(self, flow, record):
                t = flow.totals()
                self.emit("pkt", i=record.index, packets=list(t.packets), rows=len(flow.records()),
                          gaps=len(flow.gaps()), last=flow.last_ts == record.ts_ns)
    ''')
    runs = events_by_batch(tmp_path, monkeypatch, p, corpus / "gap__zeek__gap-recovery.pcap")
    first = next(iter(runs.values()))
    assert all(r == first for r in runs.values())
    for e in first:
        assert sum(e["packets"]) == e["rows"] == e["i"] + 1 and e["last"], e
    assert any(e["gaps"] for e in first) and not all(e["gaps"] for e in first)      # noted at its packet


def test_a_module_that_skipped_a_connection_gets_none_of_its_packets_inline(tmp_path, corpus, monkeypatch):
    """With another module still reading the connection, --inline handed the skipped module the
    first packet of every later batch."""
    monkeypatch.setenv("FLOWSIFT_BATCH", "4")
    sk = write_module(tmp_path, '''
        class Sk(Module):
            """Skips the connection at its first packet.

            Synopsis: sk
            """
            name = "sk"
            reads = {"records"}
            def on_packet(self, flow, record):
                if flow.state.get("skipped"):
                    self.count("after_skip")
                flow.state["skipped"] = True
                flow.skip()
    ''')
    pk = write_module(tmp_path, '''
        class Pk(Module):
            """Counts packets.

            Synopsis: pk
            """
            name = "pk"
            reads = {"records"}
            def on_packet(self, flow, record):
                self.count("packets")
    ''', name="pk.py")
    res = run_cli("chain", f"{sk},{pk}", corpus / "http__zeek__get.pcap", "--inline", "--events", "/dev/null", "--json")
    assert res.returncode == 0, res.stderr
    modules = json.loads(res.stdout)["modules"]
    assert modules["pk"]["packets"] > 4 and "after_skip" not in modules["sk"]


class KeptPointer(Module):
    """Keeps connection 0's client stream and reads it, 5 bytes a call, from connection 4's hooks.

    Synopsis: kept_pointer
    """
    name = "kept_pointer"
    kept = None

    def on_data(self, flow, stream):
        if flow.conn == 0 and stream.direction == 0:
            if self.kept is None:
                self.kept = stream            # read later, from another connection's hooks
            self.emit("own", same=stream is self.kept, at=stream.tell())
            return
        if self.kept is not None and flow.conn == 4 and stream.direction == 0:
            self.emit("kept", data=self.kept.read_bytes(5), view=bytes(self.kept.peek(3)))
        stream.skip()

    def on_close(self, flow, reason):
        if flow.conn == 5:
            self.kept.peek_bytes(1)           # connection 0 ended: its file may be given back


def test_a_kept_stream_pointer_reads_on_after_its_file_was_closed_for_the_budget(tmp_path, monkeypatch):
    """A pointer a module kept and reads from another connection's hooks while its own file was
    closed to stay within FLOWSIFT_READER_FILES: the file opens again, and the pointer is the one
    its own on_data is handed, where it stood. It used to be a TypeError in the module's hook
    (the descriptor was gone), and its connection's on_data was handed a new pointer that knew
    nothing of what was read through the kept one. Kept past its connection's end, it is a
    StoreError that says so, not the bytes of a mapping whose file may be another's by then."""
    from pcapgen import interleaved_capture
    from flowsift.streams import StoreError
    from flowsift.testing import run_module
    monkeypatch.setenv("FLOWSIFT_READER_FILES", "2")
    monkeypatch.setenv("FLOWSIFT_BATCH", "4")
    cap = interleaved_capture(tmp_path / "six.pcap", 6, [b"conn %d part one|", b"conn %d part two|"])
    with pytest.raises(StoreError, match=r"c00000000\.rec: the record file was closed: its connection ended"):
        run_module(KeptPointer, cap)
    monkeypatch.setattr(KeptPointer, "on_close", lambda self, flow, reason: None)
    res = run_module(KeptPointer, cap)
    assert res.summary["reader_reopens"] > 10          # files were closed and opened again
    kept, own = res.of_kind("kept"), res.of_kind("own")
    stream = b"conn 0 part one|conn 0 part two|"
    read = "".join(e["data"] for e in kept).encode()
    assert len(kept) >= 2 and read == stream[:len(read)]
    assert all(e["view"].encode() == stream[5 * (k + 1):5 * (k + 1) + 3] for k, e in enumerate(kept))
    # one pointer, so its own calls start where the kept one's reads left it
    assert all(e["same"] for e in own) and [e["at"] for e in own] == sorted(e["at"] for e in own)
    assert own[-1]["at"] == len(read) > 0


class WholeLines(Module):
    """Writes: reads whole lines only, leaving a line's start for the next call; says what is
    left when the direction ended.

    Synopsis: whole_lines
    """
    name = "whole_lines"
    writes = {"payload"}

    def on_data(self, flow, stream):
        while stream.read_until(b"\n") is not None:
            pass
        if stream.closed and stream.available and stream.direction not in flow.state:
            flow.state[stream.direction] = True
            self.emit("rest", dir=stream.direction, data=stream.peek_bytes())


class Handed(Module):
    """Read-only: the bytes it was handed, per direction, at the end.

    Synopsis: handed
    """
    name = "handed"

    def on_data(self, flow, stream):
        flow.state[stream.direction] = flow.state.get(stream.direction, b"") + stream.read_bytes()

    def on_close(self, flow, reason):
        self.emit("handed", reason=reason, **{f"d{d}": flow.state.get(d, b"") for d in (0, 1)})


def test_inline_finish_reads_what_is_held_before_on_close(tmp_path, monkeypatch):
    """A connection still open when an inline chain finishes (an attached module's run that
    ended without closing it) is read to its end, stage by stage, before on_close, as one that
    ended and as a staged chain's later stages read it: the writing module is shown the end
    (stream.closed) with the line start it left, and the module after it the bytes that waited
    for the writing module. finish() called on_close with none of them read."""
    import io
    from flowsift.gateway import Gateway
    from flowsift.modules.runner import InlineChain
    from flowsift.testing import run_module, segments_capture
    cap = segments_capture(tmp_path, client=[b"one\ntw", b"o\nthr"], server=[b"ok\npart"], close=False)
    want = {"d0": "one\ntwo\nthr", "d1": "ok\npart"}
    rests = [{"dir": 0, "data": "thr"}, {"dir": 1, "data": "part"}]
    for inline in (True, False):            # a whole run: the end of input closes it
        res = run_module(f"{_given(WholeLines)},{_given(Handed)}", cap, inline=inline)
        assert [{k: e[k] for k in want} for e in res.of_kind("handed")] == [want]
        assert sorted(({k: e[k] for k in ("dir", "data")} for e in res.of_kind("rest")), key=str) == rests
    monkeypatch.setenv("FLOWSIFT_BATCH", "1")
    g = Gateway(tmp_path / "store", keep=True)
    batches = []
    g.run_capture(cap, after_batch=lambda t, c: batches.append((list(t), list(c))))
    assert batches[-1][1] == [0] and not any(c for _, c in batches[:-1])
    out = io.StringIO()
    chain = InlineChain([(WholeLines, {}), (Handed, {})], g.store, events=out, strict=True)
    for touched, closed in batches[:-1]:     # all but the end of input
        chain.process(touched, closed)
    chain.finish()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [{k: e[k] for k in want} for e in events if e["kind"] == "handed"] == [want]
    assert sorted(({k: e[k] for k in ("dir", "data")} for e in events if e["kind"] == "rest"), key=str) == rests


def _given(cls):
    from flowsift.testing import _register
    return _register(cls)


def test_inline_and_staged_give_the_same_events_over_connections_open_at_the_end(corpus, monkeypatch):
    """A writing module that leaves line starts unread, then a read-only one, over a capture
    whose connections are open at its end (closed by it, `eof`): --inline and the staged chain agree."""
    from flowsift.testing import run_module
    monkeypatch.setenv("FLOWSIFT_BATCH", "8")
    cap = corpus / "smtp__zeek__smtp.pcap"
    runs = []
    for inline in (True, False):
        res = run_module(f"{_given(WholeLines)},{_given(Handed)}", cap, inline=inline)
        runs.append(sorted(json.dumps({k: v for k, v in e.items() if k != "ts"}, sort_keys=True) for e in res.events))
        assert res.summary["mode"] == ("inline" if inline else "staged")
    handed = [json.loads(e) for e in runs[0] if '"kind": "handed"' in e]
    assert runs[0] == runs[1]
    assert sum(e["reason"] == "eof" for e in handed) == 5 and any(e.get("kind") == "rest" for e in map(json.loads, runs[0]))


class Latency(Module):
    """Read-only: the capture times of stream bytes, as each direction is read and at the end.

    Synopsis: latency
    """
    name = "latency"

    def times(self, flow):
        # first and last bytes of each segment, and a byte never sent
        return [flow.time_at(0, 0), flow.time_at(0, 8), flow.time_at(1, 0), flow.time_at(1, 10), flow.time_at(0, 100)]

    def on_data(self, flow, stream):
        stream.skip()
        self.emit("read", dir=stream.direction, at=self.times(flow))

    def on_close(self, flow, reason):
        self.emit("end", at=self.times(flow))


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "workers"])
def test_time_at_gives_the_capture_time_of_the_packet_that_carried_a_byte(tmp_path, monkeypatch, inline):
    """flow.time_at(direction, offset): the time of the packet that first carried a stream
    byte, among the records so far (None for a byte no packet carried yet): a request's and its
    answer's, for latencies, whatever the batch size."""
    from flowsift.testing import run_module, segments_capture
    cap = segments_capture(tmp_path, client=[b"GET /a\r\n", b"GET /b\r\n"], server=[b"A" * 10, b"B" * 10])
    t0 = 1_700_000_000 * 10**9
    ms = lambda ts: [None if t is None else (t - t0) // 10**6 for t in ts]
    # the segments go 1 ms apart after the SYN and SYN-ACK: client, server, client, server
    whole = [2, 4, 3, 5, None]
    res = run_module(Latency, cap, inline=inline)
    assert [ms(e["at"]) for e in res.of_kind("end")] == [whole]
    monkeypatch.setenv("FLOWSIFT_BATCH", "1")
    res = run_module(Latency, cap, inline=inline)
    read = [(e["dir"], ms(e["at"])) for e in res.of_kind("read")]
    # as each segment is read, the bytes after it have no time yet
    assert read == [(0, [2, None, None, None, None]), (1, [2, None, 3, None, None]), (0, [2, 4, 3, None, None]),
                    (1, whole)]
    assert [ms(e["at"]) for e in res.of_kind("end")] == [whole]
    for call, error, words in ((lambda flow: flow.time_at(2, 0), ValueError, "direction 2: 0 .client to server. or 1"),
                               (lambda flow: flow.time_at(0, 1.0), TypeError, "offset 1.0 is a float: a whole number"),
                               (lambda flow: flow.time_at(0, -1), ValueError, "offset -1: a byte's offset")):
        with pytest.raises(error, match=words):
            run_module(type("Bad", (Latency,), {"on_close": (lambda c: lambda self, flow, reason: c(flow))(call),
                                                "__doc__": Latency.__doc__}), cap)


class Payloads(Module):
    """Each packet's payload, when handed over and again at the end (from flow.records()).

    Synopsis: payloads
    """
    name = "payloads"

    def on_packet(self, flow, record):
        if record.payload_len:
            p = flow.payload(record)
            self.emit("pkt", i=record.index, ooo=bool(record.rflags & 8), got=None if p is None else p.decode())

    def on_close(self, flow, reason):
        rows = flow.records()
        for i, row in enumerate(rows):
            if row["payload_len"]:
                self.emit("end", i=i, got=flow.payload(row).decode())
        for bad, kind in ((None, "None"), (5, "a int"), (rows[:1], "a numpy.ndarray"), ({"dir": 0}, "a dict")):
            try:
                flow.payload(bad)
            except TypeError as e:
                assert str(e).startswith(f"flow.payload: record is {kind}, not a record: pass the record "
                                         "on_packet was handed, or a row of flow.records()"), e
            else:
                raise AssertionError(f"flow.payload({bad!r}) took it")
        self.emit("checked")


@pytest.mark.parametrize("inline", [True, False])
def test_payload_of_a_record_held_out_of_order_is_none_until_delivered(tmp_path, monkeypatch, inline):
    """A segment that came before the one it follows is held, its bytes not in the stream yet:
    flow.payload(record) in its on_packet said b"" (no payload). It says None, and the bytes once
    the hole filled; a row of flow.records() is a record to it as well (an AttributeError)."""
    from pcapgen import timed_capture
    cap = timed_capture(tmp_path / "ooo.pcap", [
        (0.0, True, 0, 0, 0x02, b""), (0.01, False, 100, 1, 0x12, b""), (0.02, True, 1, 101, 0x10, b""),
        (0.03, True, 5, 101, 0x18, b"BBBB"), (0.04, True, 1, 101, 0x18, b"AAAA"),
        (0.05, False, 101, 9, 0x18, b"ok"), (0.06, True, 9, 103, 0x11, b""), (0.07, False, 103, 10, 0x11, b"")])
    monkeypatch.setenv("FLOWSIFT_BATCH", "1")           # the hole fills in a later batch
    res = run_module(Payloads, cap, inline=inline)
    assert [(e["i"], e["ooo"], e["got"]) for e in res.of_kind("pkt")] == \
        [(3, True, None), (4, True, "AAAA"), (5, False, "ok")]
    assert [(e["i"], e["got"]) for e in res.of_kind("end")] == [(3, "BBBB"), (4, "AAAA"), (5, "ok")]
    assert len(res.of_kind("checked")) == 1


def test_payload_of_another_connections_record_is_refused(tmp_path):
    """A record kept from one connection handed to another's flow.payload read the other's bytes
    at its offset."""
    from pcapgen import interleaved_capture
    cap = interleaved_capture(tmp_path / "two.pcap", 2, [b"one %d,", b"two %d"])

    class Other(Module):
        """Asks one connection's flow for another's record.

        Synopsis: other
        """
        name = "other"

        def on_packet(self, flow, record):
            kept = self.__dict__.setdefault("kept", {})
            if record.payload_len:
                for conn, rec in kept.items():
                    if conn != flow.conn:
                        with pytest.raises(ValueError, match=rf"flow.payload: the record of id {rec.record_id} "
                                                             rf"is not one of connection {flow.conn}'s"):
                            flow.payload(rec)
                        self.emit("refused")
                kept[flow.conn] = record

    assert run_module(Other, cap).of_kind("refused")


@pytest.mark.parametrize("mode", [["--inline"], [], ["--shards", "2"]])
def test_a_summary_that_is_not_a_list_of_rows_is_refused_in_every_mode(tmp_path, corpus, mode):
    """summary() returning a dict was taken as the table inline and merged under --shards into a
    list of its keys."""
    p = write_module(tmp_path, '''
        class Tally(Module):
            """Counts connections in a table.

            Synopsis: tally
            """
            name = "tally"
            reads = {"records"}
            def on_close(self, flow, reason):
                self.seen = getattr(self, "seen", 0) + 1
            def summary(self):
                return {"connections": getattr(self, "seen", 0)} if self.config["bad"] == "dict" else \\
                    [{"connections": getattr(self, "seen", 0)}, "total"]
            options = {"bad": Option(str, "dict", "what summary() returns")}
    ''')
    store = [] if "--shards" in mode else ["--store", tmp_path / "store"]
    for bad, needle in (("dict", "module tally: summary() returned a dict, not a list of rows (dicts, column "
                                 "name: value; [] for none)"),
                        ("row", "module tally: summary() row 1 is a str, not a dict (column name: value)")):
        res = run_cli("chain", f"{p}(bad={bad})", corpus / "http__zeek__get.pcap", "--json", "--strict", *mode,
                      *(store and [store[0], f"{store[1]}{bad}"]))
        assert res.returncode == 2 and needle in res.stderr, res.stderr


def test_a_sharded_run_says_once_that_a_writing_modules_edits_go_nowhere(tmp_path):
    """Each shard's gateway said it too: three lines for two shards."""
    from flowsift.testing import segments_capture
    cap = segments_capture(tmp_path, client=[b"PASS x\r\n"])
    res = run_cli("chain", ROOT / "examples" / "mask.py", cap, "--shards", "2", "--events", "/dev/null")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("module mask asks for edits but nothing is written: add -w OUT.pcap") == 1, res.stderr


SUMM = '''
    import sys
    import numpy as np

    class Summ(Module):
        """A summary() that misbehaves as told.

        Synopsis: summ
        """
        name = "summ"
        reads = {"records"}
        options = {"bad": Option(str, "", "how summary() misbehaves")}

        def on_close(self, flow, reason):
            self.count("closed")

        def summary(self):
            bad = self.config["bad"]
            if bad == "raise":
                raise ValueError("no table today")
            if bad == "exit":
                sys.exit(3)
            if bad == "object":
                return [{"n": 1}, {"n": 2, "v": object()}]
            if bad == "nan":
                return [{"n": float("nan")}]
            if bad == "key":
                return [{1: "one"}]
            return [{"n": np.int64(3), "b": b"hi", "f": np.float32(0.5), "nested": {"k": (1, 2)}, "s": {2, 1},
                     "l": np.longdouble(1.5)}]
'''


@pytest.mark.parametrize("mode", [["--inline"], [], ["--shards", "2"]])
def test_a_summary_that_raises_is_the_modules_failure(tmp_path, mode):
    """An exception or sys.exit() in summary() ended the run as an internal error (or exit 3,
    unsaid) inline, and in a worker restarted it 100 times, each saying its traceback."""
    from flowsift.testing import segments_capture
    p = write_module(tmp_path, SUMM)
    cap = segments_capture(tmp_path, client=[b"hello"], server=[b"hi"])
    for bad, said in (("raise", "ValueError: no table today"), ("exit", "SystemExit: 3")):
        store = [] if "--shards" in mode else ["--store", tmp_path / f"s{bad}"]
        res = run_cli("chain", f"{p}(bad={bad})", cap, "--json", *mode, *store)
        assert res.returncode == 0, res.stderr
        assert res.stderr.count("flowsift: module summ failed in summary() (later failures are counted):\n") == \
            (2 if "--shards" in mode else 1), res.stderr
        assert said in res.stderr and f'{p}", line' in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and "restart" not in res.stderr and "workers.py" not in res.stderr
        summary = json.loads(res.stdout)
        assert summary["tables"] == {} and summary["modules"]["summ"]["closed"] == 1
        assert summary["modules"]["summ"]["errors"] == (2 if "--shards" in mode else 1)
        res = run_cli("chain", f"{p}(bad={bad})", cap, "--json", "--strict", *mode,
                      *(store and [store[0], f"{store[1]}strict"]))
        assert res.returncode == 2 and f"flowsift: module summ: summary() raised {said}\n" in res.stderr, res.stderr
        assert "restart" not in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("mode", [["--inline"], [], ["--shards", "2"]])
def test_summary_rows_take_what_emit_takes(tmp_path, mode):
    """numpy values and bytes in a row were an internal error (exit 1, no summary), an object
    too, and a NaN was written as a bare NaN, which is no JSON."""
    from flowsift.testing import segments_capture
    p = write_module(tmp_path, SUMM)
    cap = segments_capture(tmp_path, client=[b"hello"], server=[b"hi"])
    store = [] if "--shards" in mode else ["--store", tmp_path / "s"]
    res = run_cli("chain", p, cap, "--json", *mode, *store)
    assert res.returncode == 0, res.stderr
    row = {"n": 3, "b": "hi", "f": 0.5, "nested": {"k": [1, 2]}, "s": [1, 2], "l": 1.5}
    assert json.loads(res.stdout)["tables"]["summ"] == [row] * (2 if "--shards" in mode else 1)
    for bad, needle in (("object", "module summ: summary() row 1: column 'v' holds a value of type object, which "
                                   "JSON cannot carry (bytes, sets and numpy values are converted, nothing else)"),
                        ("nan", "module summ: summary() row 0: column 'n' holds NaN or an infinity, which JSON has "
                                "no number for"),
                        ("key", "module summ: summary() row 0 has a column named 1, an integer: column names are text")):
        res = run_cli("chain", f"{p}(bad={bad})", cap, "--json", "--strict", *mode,
                      *(store and [store[0], f"{store[1]}{bad}"]))
        assert res.returncode == 2 and f"flowsift: {needle}" in res.stderr, res.stderr
        assert "internal error" not in res.stderr and "NaN" not in res.stdout
        # without --strict, the module's failure as a raise in summary() is: counted, the run goes on
        res = run_cli("chain", f"{p}(bad={bad})", cap, "--json", *mode,
                      *(store and [store[0], f"{store[1]}{bad}lax"]))
        assert res.returncode == 0, res.stderr
        shards = 2 if "--shards" in mode else 1
        assert res.stderr.count("flowsift: module summ failed in summary() (later failures are counted):\n"
                                f"ModuleError: {needle}") == shards, res.stderr
        summary = json.loads(res.stdout)
        assert summary["tables"] == {} and summary["modules"]["summ"]["errors"] == shards
        assert summary["modules"]["summ"]["closed"] == 1


@pytest.mark.parametrize("width", [80, 1000])
def test_a_summary_table_shows_every_rows_columns(width):
    """The text table took its columns from the first row alone (b was lost), showed a dict as
    Python's repr, and folded a narrow table's title into pieces ("sum" / "m")."""
    import io
    from flowsift import render
    buf = io.StringIO()
    console = render._DataConsole(file=buf, width=width)
    rows = [{"a": "x"}, {"b": "y"}, {"a": "z", "b": "w", "d": {"k": [1, "é"]}, "l": [1, 2], "n": 5}]
    render.print_chain_tables({"tables": {"summ": rows, "m": [{"a": "x"}]}, "modules": {}}, console)
    lines = buf.getvalue().splitlines()
    assert lines[0].strip() == "summ" and "m" in [l.strip() for l in lines], lines
    header = next(l for l in lines if l.split() == ["a", "b", "d", "l", "n"])
    at = {c: header.index(f" {c} ") + 1 for c in "abd"}
    x, y, z = (next(l for l in lines if l.strip().startswith(v)) for v in "xyz")
    assert x[at["a"]] == "x" and x[at["b"]:].strip() == ""
    assert y[at["a"]] == " " and y[at["b"]] == "y" and y[at["b"] + 1:].strip() == ""
    assert z.split() == ["z", "w", '{"k":[1,"é"]}', "1/2", "5"], z


def test_a_modules_own_shard_column_is_kept_under_shards(tmp_path):
    """flowsift's shard number overwrote the module's own `shard` in every row with a `conn`."""
    from flowsift.testing import segments_capture
    p = write_module(tmp_path, '''
        class Where(Module):
            """Rows with a shard of its own.

            Synopsis: where
            """
            name = "where"
            reads = {"records"}
            def on_close(self, flow, reason):
                self.seen = flow.conn
            def summary(self):
                return [{"conn": self.seen, "shard": "mine"}] if hasattr(self, "seen") else [{"shard": "none"}]
    ''')
    cap = segments_capture(tmp_path, client=[b"hello"], server=[b"hi"])
    res = run_cli("chain", p, cap, "--json", "--shards", "2")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["tables"]["where"]
    (mine,) = [r for r in rows if r["shard"] == "mine"]       # (one connection: one shard's)
    assert mine["flowsift_shard"] in (0, 1) and set(mine) == {"conn", "shard", "flowsift_shard"}, rows
    assert [r for r in rows if r is not mine] == [{"shard": "none"}], rows
    from flowsift.shards import join_tables
    assert join_tables([{"a": [{"conn": 1, "n": 2}, {"n": 3}]}, {"a": [{"conn": 4}], "b": [{"conn": 5, "shard": "x"}]}]) \
        == {"a": [{"conn": 1, "n": 2, "shard": 0}, {"n": 3}, {"conn": 4, "shard": 1}],
            "b": [{"conn": 5, "shard": "x", "flowsift_shard": 1}]}
