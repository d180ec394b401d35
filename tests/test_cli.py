"""The command line as a user meets it."""
import json
import os
import re
from pathlib import Path

import pytest

from conftest import ROOT, run_cli


def test_help_teaches(monkeypatch):
    res = run_cli("--help")
    assert res.returncode == 0 and "stats" in res.stdout
    res = run_cli("stats", "--help")
    assert res.returncode == 0
    for word in ("--filter", "--json", "Examples", "tcp port"):
        assert word in res.stdout
    # -h as tcpdump and tshark take it; the arguments say what they are (the help showed their
    # names alone)
    assert run_cli("chain", "-h").stdout == run_cli("chain", "--help").stdout
    monkeypatch.setenv("COLUMNS", "200")
    text = " ".join(run_cli("chain", "-h").stdout.split())
    assert "parted by commas" in text and "afpacket:IFACE[,ring=32M" in text
    for command in ("stats", "streams", "gateway", "module", "inspect", "replay", "analyze", "modules"):
        arguments = run_cli(command, "-h").stdout.split("─ Arguments")[1].split("─ Options")[0]
        assert re.search(r"\w+:? \S+ \S+ \S+", arguments), (command, arguments)


@pytest.mark.parametrize("command", ["stats", "streams", "gateway", "module", "inspect", "chain", "replay"])
def test_help_prose_is_wrapped_to_the_terminal_and_examples_keep_their_lines(command):
    # rich keeps a docstring's line breaks and wraps each line again: at 80 columns a
    # paragraph then comes out as long and short lines, one after another
    import os
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "flowsift", command, "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80", "TERM": "dumb"}, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = [line.strip() for line in res.stdout.splitlines()]
    prose = lines[[i for i, x in enumerate(lines) if x.startswith("Usage:")][0] + 1:lines.index("Examples:")]
    for line, following in zip(prose, prose[1:]):
        if line and following:
            # a line of a paragraph followed by another: it was filled up to near the width
            assert len(line) + 1 + len(following.split()[0]) > 78 - 2, (line, following)
        assert line or following, "two blank lines in a row"
    examples = res.stdout.split("Examples:")[1].split("╭")[0].splitlines()
    assert any(x.startswith(f"   flowsift {command}") for x in examples), examples
    assert "\b" not in res.stdout


def test_usage_lines_name_the_program_flowsift():
    """Run as `python -m flowsift` (as the tests do), every usage line said `python -m flowsift
    chain ...`: a user who copied it got a different command than the one the docs give."""
    for args in (("--help",), ("chain", "--help"), ("gateway", "--help"), ()):
        res = run_cli(*args)
        usage = [line.strip() for line in (res.stdout + res.stderr).splitlines() if "Usage:" in line]
        assert usage and all(u.startswith(f"Usage: flowsift {' '.join(args[:-1])}".rstrip() + " ") for u in usage), usage


@pytest.mark.parametrize("typo,hint", [("stream", "Did you mean 'streams'?"), ("sta", "Did you mean 'stats', 'streams'?")])
def test_a_mistyped_command_is_hinted_once(typo, hint):
    """typer and click both add the hint: it was said twice (the second time in click's words)."""
    res = run_cli(typo, "x.pcap")
    assert res.returncode == 2
    assert res.stderr == f"flowsift: no such command '{typo}'. {hint} (see flowsift --help)\n"


def test_counts_of_one_are_singular(tmp_path):
    """Tables said "1 TCP connections", "1 packets to", "1 records, 1 events"."""
    from pcapgen import A, B, ether, ipv4, pcap, tcp
    cap = tmp_path / "one.pcap"
    cap.write_bytes(pcap([(1, 0, ether(ipv4(A, B, 6, tcp(40000, 80, seq=1, flags=0x18, payload=b"hello"))))]))
    words = " ".join(re.sub(r"[│┃]", " ", run_cli("stats", cap, check=True).stdout).split())
    assert "1 TCP connection, 0 UDP flows" in words, words
    res = run_cli("chain", "counter", cap, "-w", tmp_path / "w.pcap", "--inline", check=True)
    words = " ".join(re.sub(r"[│┃]", " ", res.stdout + res.stderr).split())
    assert "written 1 packet to" in words and "1 record, 1 event" in words, words


def test_version():
    res = run_cli("--version")
    assert res.returncode == 0 and re.match(r"flowsift \d+\.\d+", res.stdout)


def test_main_job_on_the_bundled_capture():
    res = run_cli("stats", ROOT / "examples" / "demo.pcap")
    assert res.returncode == 0, res.stderr
    for word in ("packets", "TCP connections", "tcp", "udp", "EN10MB"):
        assert word in res.stdout


def test_every_json_field_is_documented():
    out = json.loads(run_cli("stats", "--json", ROOT / "examples" / "demo.pcap", check=True).stdout)
    doc = (ROOT / "docs" / "cli.md").read_text()
    for key in out:
        assert f"`{key}`" in doc, key
    for key in out["anomalies"]:
        assert f"`{key}`" in doc, key
    from flowsift.io.reasons import REASONS
    for reason in REASONS.values():
        assert f"`{reason}`" in doc, reason


def test_demo_capture_has_what_the_demo_needs():
    out = json.loads(run_cli("stats", "--json", ROOT / "examples" / "demo.pcap", check=True).stdout)
    assert out["flows"]["tcp"] >= 5 and out["flows"]["udp"] >= 3 and out["ip"]["ipv6"] > 0
    assert out["undecoded"] == {} and out["error"] is None


def test_progress_bar_on_a_terminal_only(tmp_path):
    """A bar is drawn on stderr when it is a terminal (threshold lowered so a small file qualifies)."""
    import os
    import pty
    import subprocess
    import sys
    env = dict(os.environ, FLOWSIFT_PROGRESS_MIN_BYTES="0", COLUMNS="100")
    master, slave = pty.openpty()
    res = subprocess.run([sys.executable, "-m", "flowsift", "stats", "--json", str(ROOT / "examples" / "demo.pcap")],
                         stdout=subprocess.PIPE, stderr=slave, env=env, timeout=60)
    os.close(slave)
    seen = b""
    try:
        while chunk := os.read(master, 65536):
            seen += chunk
    except OSError:
        pass
    os.close(master)
    assert res.returncode == 0 and json.loads(res.stdout)["packets"] > 0
    assert b"reading" in seen
    piped = run_cli("stats", "--json", ROOT / "examples" / "demo.pcap")
    assert piped.stderr == ""


def test_build_says_in_one_line_what_is_missing(tmp_path):
    """setup.py's preflight: no compiler, or no libpcap headers, is one line and no compiler spew."""
    import os
    import subprocess
    import sys
    for cc, needle in (("no-such-cc", "no C compiler"), ("gcc -nostdinc", "libpcap development files")):
        env = dict(os.environ, CC=cc)
        res = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "b"),
                              "--build-lib", str(tmp_path / "l")], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 1
        ours = [l for l in res.stderr.splitlines() if l.startswith("flowsift build:")]
        assert len(ours) == 1 and needle in ours[0], res.stderr[-2000:]
        assert "gcc:" not in res.stderr and "error:" not in res.stderr.replace(ours[0], "")


def test_every_package_is_listed_for_installation():
    """A package missing from pyproject's list works from the source tree but not once installed."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "flowsift").rglob("__init__.py")}
    assert found == listed


def test_inspect_writes_ipv6_endpoints_as_events_do(tmp_path, corpus):
    store = tmp_path / "store"
    res = run_cli("gateway", corpus / "ipv6__pcpp__one_ipv6_http_stream.pcap", "--store", store, "--keep")
    assert res.returncode == 0, res.stderr
    got = json.loads(run_cli("inspect", store, "--json", check=True).stdout)["connections"]
    assert len(got) == 1 and re.fullmatch(r"\[[0-9a-f:]+\]:\d+", got[0]["client"]) and got[0]["server"].startswith("[")
    one = json.loads(run_cli("inspect", store / got[0]["file"], "--json", check=True).stdout)
    assert one["client"] == got[0]["client"] and one["server"] == got[0]["server"]


ESPN = "http__csanders__http_espn.pcapng"        # 39 connections, many open at once


def test_reassembly_bounds_are_set_from_the_command_line(corpus, tmp_path):
    """--reassembly NAME=VALUE reaches the engine of streams, gateway and chain: two open
    connections at most evicts the idlest, and a 1 s idle timeout ends connections by timeout."""
    cap = corpus / ESPN

    def closes(*args):
        return json.loads(run_cli(*args, "--json", check=True).stdout)

    assert closes("streams", cap, "--discard")["close"] == {"eof": 39}
    evicted = closes("streams", cap, "--discard", "--reassembly", "max_connections=2")["close"]
    assert evicted["evicted"] > 100
    timed_out = closes("streams", cap, "--discard", "--reassembly", "established_timeout=1s,embryonic_timeout=1s")
    assert timed_out["close"].get("timeout", 0) > 0
    assert closes("gateway", cap, "--store", tmp_path / "s", "--reassembly", "max_connections=2")["connections"]["close"] == evicted
    assert closes("chain", "counter", cap, "--events", tmp_path / "e.jsonl",
                  "--reassembly", "max_connections=2")["connections"]["close"] == evicted


def test_reassembly_settings_read_units_and_refuse_nonsense():
    from flowsift.bounds import parse_settings
    from flowsift.errors import UsageError
    assert parse_settings(["memcap=2GiB", "max_held_per_dir=64k,established_timeout=5m", "closing_timeout=500ms",
                           "finished_linger=30", "max_connections=1000", "udp_timeout=1.5h"]) == {
        "memcap": 2 << 30, "max_held_per_dir": 64 << 10, "established_timeout": 300.0, "closing_timeout": 0.5,
        "finished_linger": 30.0, "max_connections": 1000, "udp_timeout": 5400.0}
    for bad, said in [("memcap=lots", "size expected"), ("memcap=1.5", "size expected"), ("memcap=0", "must be more than 0"),
                      ("max_connections=0", "must be more than 0"),
                      ("established_timeout=0", "must be more than 0"), ("finished_linger=0ms", "must be more than 0"),
                      ("max_connections=1k", "whole number"), ("established_timeout=5 parsecs", "duration expected"),
                      ("memcap", "NAME=VALUE"), ("memcpa=1G", "no such setting; one of embryonic_timeout"),
                      ("max_connections=99999999999999999999", "at most 4294967295"),
                      ("memcap=99999999TiB", "at most 4 EiB"), ("udp_timeout=99999999999", "at most 100 years")]:
        with pytest.raises(UsageError, match=said):
            parse_settings([bad])


def test_a_bad_reassembly_setting_is_one_line(corpus):
    for args in (["streams", corpus / ESPN, "--discard"], ["gateway", corpus / ESPN], ["chain", "counter", corpus / ESPN]):
        res = run_cli(*args, "--reassembly", "memcap=lots")
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [
            f"flowsift: {args[0]}: --reassembly memcap=lots: size expected (bytes, or with a unit: 512KiB, 64MiB, 2GiB)"], res.stderr


@pytest.mark.parametrize("width", [80, 160])
def test_inspect_tables_show_every_value_whole_at_any_width(tmp_path, width):
    """At 80 columns a value may be folded onto another line, or a column left out with a
    caption saying so, but never cut to "2363…"; what --json says is what the table shows."""
    import os
    import subprocess
    import sys
    store = tmp_path / "store"
    run_cli("gateway", ROOT / "examples" / "demo.pcap", "--store", store, "--keep", check=True)

    def shown(*args):
        res = subprocess.run([sys.executable, "-m", "flowsift", "inspect", *map(str, args)], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "COLUMNS": str(width), "TERM": "dumb"})
        assert res.returncode == 0, res.stderr
        assert all(len(line) <= width for line in res.stdout.splitlines())
        return res.stdout

    def data_lines(text, title):
        lines = text.splitlines()
        lines = lines[[i for i, line in enumerate(lines) if line.strip() == title][0]:]
        rule = [i for i, line in enumerate(lines) if "───" in line][0]
        body = [line for line in lines[rule + 1:] if line.strip()]
        assert "…" not in "".join(body)
        return body

    listing = json.loads(run_cli("inspect", store, "--json", check=True).stdout)["connections"]
    body = " ".join(data_lines(shown(store), f"store {store}"))
    for c in listing:
        assert c["file"] in body.split() and c["client"] in body.split() and c["server"] in body.split()
    one = json.loads(run_cli("inspect", store / listing[1]["file"], "--json", check=True).stdout)
    text = shown(store / listing[1]["file"])
    body = data_lines(text, "records")
    body = [line for line in body if not line.strip().startswith("id: first id")]
    assert len([line for line in body if line.split()[0].isdigit()]) == len(one["record_list"])
    words = " ".join(body).split()
    for r in one["record_list"]:
        assert str(r["seq"]) in words and str(r["ack"]) in words
    assert (f"{one['record_list'][0]['id']:#018x}" in words) == (width == 160)
    assert ("id: first id + #" in text) == (width == 80)


def test_late_packets_of_the_summary_are_the_engines(corpus, tmp_path):
    # packets after their connection ended were counted by the engine only: the top-level
    # field, the store's count, said 0 (5: the last ACKs of FIN-closed connections, 68 more
    # once, are theirs now)
    cap = corpus / "vlan__pcpp__example2.pcap"
    out = json.loads(run_cli("gateway", cap, "--store", tmp_path / "st", "--json", check=True).stdout)
    assert out["late_packets"] == out["engine"]["late_packets"] == 5
    out = json.loads(run_cli("chain", "counter", cap, "--events", "/dev/null", "--json", check=True).stdout)
    assert out["late_packets"] == out["engine"]["late_packets"] == 5


def test_streams_summary_has_every_field_when_reading_stops_at_a_defect(corpus, tmp_path):
    whole = corpus / "http__dpkt__http.pcap"
    cut = tmp_path / "t1000.pcap"
    cut.write_bytes(whole.read_bytes()[:1000])
    good = json.loads(run_cli("streams", whole, "--discard", "--json", check=True).stdout)
    res = run_cli("streams", cut, "--discard", "--json")
    assert res.returncode == 2
    out = json.loads(res.stdout)
    assert out["error"] and set(out) == set(good)
    assert out["capture_packets"] == 5 and out["not_decoded"] == 0


def test_frames_the_filter_rejects_are_counted_by_streams_gateway_and_chain(corpus, tmp_path):
    """A port filter rejects the later IP fragments (no TCP header, as in tcpdump): every frame
    it rejects is counted, so the summaries still add up to the frames in the file."""
    path = corpus / "frag__peafowl__http_ip_fragmented_out_of_order.pcap"
    s = json.loads(run_cli("streams", path, "--discard", "--filter", "tcp port 80", "--json", check=True).stdout)
    f = s["fragments"]
    assert s["filtered"] == 433 and s["capture_packets"] == 444 == (
        s["packets"] + s["filtered"] + s["engine"]["late_packets"] + s["not_decoded"] + s["other_protocols"]
        + f["fragments"] - f["datagrams"])
    table = run_cli("streams", path, "--discard", "--filter", "tcp port 80", check=True).stdout
    assert "of 444 read: 433 rejected by the filter" in " ".join(table.split())
    for cmd, store in ((["gateway"], ["--store", tmp_path / "s"]), (["chain", "counter"], [])):
        out = json.loads(run_cli(*cmd, path, "--filter", "tcp port 80", "--json", *store, check=True).stdout)
        assert (out["packets"], out["filtered"]) == (444, 433), cmd


def test_inspect_says_a_record_file_is_truncated(corpus, tmp_path, monkeypatch):
    # a closed file cut short read as "closed by the gateway" and "the gateway did not close
    # this file" at once, its streams 0 bytes long, exit 0; a store listed it as closed
    store = tmp_path / "st"
    run_cli("gateway", corpus / "http__dpkt__http.pcap", "--store", store, "--keep", check=True)
    rec = store / "c00000000.rec"
    os.truncate(rec, 5000)
    said = "truncated: the file ends at byte 5,000, its header says 479 c2s bytes (0 in the file), " \
           "18,364 s2c bytes (0 in the file)"
    monkeypatch.setenv("COLUMNS", "300")
    res = run_cli("inspect", rec, check=True)
    assert said in res.stdout
    assert "closed by the gateway" not in res.stdout and "did not close" not in res.stdout
    out = json.loads(run_cli("inspect", rec, "--json", check=True).stdout)
    assert out["truncated"] == said and "cut" not in out
    out = json.loads(run_cli("inspect", store, "--json", check=True).stdout)
    assert [c["truncated"] for c in out["connections"]] == [True, False, False]
    assert out["problems"] == [f"c00000000.rec: {said}"]


def test_inspect_tells_a_store_that_is_not_whole_or_not_a_store(corpus, tmp_path):
    store = tmp_path / "st"
    run_cli("gateway", corpus / "http__dpkt__http.pcap", "--store", store, "--keep", check=True)
    assert json.loads(run_cli("inspect", store, "--json", check=True).stdout)["problems"] == []
    manifest = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps({**manifest, "complete": False, "error": "disk full"}))
    out = json.loads(run_cli("inspect", store, "--json", check=True).stdout)
    assert out["problems"] == ["store.json: incomplete (being written, or its gateway stopped before the end: "
                               "disk full)"]
    (store / "store.json").write_text("{garbage")
    out = json.loads(run_cli("inspect", store, "--json", check=True).stdout)
    assert len(out["problems"]) == 1 and out["problems"][0].startswith("store.json: cannot be read: ")
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("inspect", empty)
    assert res.returncode == 2 and res.stderr == f"flowsift: {empty}: not a store (no record files, no store.json)\n"


def test_chain_modes_and_the_dpdk_default_are_as_documented(corpus, tmp_path):
    doc = (ROOT / "docs" / "cli.md").read_text()
    cap = corpus / "http__dpkt__http.pcap"
    out = json.loads(run_cli("chain", "redact(pattern=GET),counter", cap, "-w", tmp_path / "o.pcap", "--json",
                             "--events", "/dev/null", check=True).stdout)
    assert out["mode"] == "staged" and "staged (a writing module" in doc
    # --inline with --shards runs each shard's modules inline: the summary says so
    out = json.loads(run_cli("chain", "counter", cap, "--inline", "--shards", "2", "--json", "--events", "/dev/null",
                             check=True).stdout)
    assert [s["mode"] for s in out["shards"]] == ["inline", "inline"]
    from flowsift.io.live import DEFAULT_EAL
    assert f"(default `{DEFAULT_EAL}`" in " ".join(doc.split())
    import os
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "flowsift", "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "400", "TERM": "dumb"})
    assert DEFAULT_EAL in " ".join(res.stdout.replace("│", " ").split()), res.stdout


def test_the_streams_table_accounts_for_every_packet_read(corpus, tmp_path):
    """The table said 'packets 43' for a capture of 44: the late one was only in the JSON."""
    from test_write_back import with_late_copy
    res = run_cli("streams", with_late_copy(corpus / "http__dpkt__http.pcap", tmp_path / "h.pcap"), "--discard")
    assert res.returncode == 0, res.stderr
    assert "43 (of 44 read: 1 late, after their connection ended)" in res.stdout
    res = run_cli("streams", corpus / "frag__pcpp__frag_http_req.pcap", "--discard")
    assert "1 (of 11 read: 11 fragments made 1 datagram)" in res.stdout


def test_inspect_says_bytes_delivered_apart_from_the_end(tmp_path, corpus):
    """A direction that is one trailing gap delivered nothing; inspect said 'bytes 2,902' (its end)."""
    store = tmp_path / "s"
    assert run_cli("gateway", corpus / "gap__zeek__miss_end_data.pcap", "--store", store, "--keep").returncode == 0
    s = json.loads(run_cli("inspect", store, "--json").stdout)
    (c,) = s["connections"]
    assert c["delivered"] == [538, 0] and c["end"] == [538, 2902]
    f = json.loads(run_cli("inspect", store / c["file"], "--json").stdout)
    assert [(x["delivered"], x["end"]) for x in f["streams"]] == [(538, 538), (0, 2902)]


def test_piped_tables_are_not_folded(tmp_path, corpus):
    """Without a terminal (and COLUMNS unset) a table is printed whole, so that grep finds an
    IPv6 address on one line."""
    import os
    import subprocess
    import sys
    store = tmp_path / "store"
    run_cli("gateway", corpus / "ipv6__zeek__ipv6.pcap", "--store", store, "--keep", check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    res = subprocess.run([sys.executable, "-m", "flowsift", "inspect", str(store)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if ".rec" in line]
    assert len(rows) == 6
    assert all("[2001:470:1f11:81f:c999:d94:aa7c:2e3e]:" in r and "[2001:470:4867:99::21]:" in r for r in rows)


def test_tables_show_names_from_captures_as_text(tmp_path):
    """An interface name (or file name) with rich markup or terminal escapes is text: shown
    as it is, escapes as \\xNN, never a crash or colours sent to the terminal."""
    from pcapgen import A, B, epb, ether, idb, ipv4, shb, tcp
    frame = ether(ipv4(A, B, 6, tcp(1000, 80)))
    d = tmp_path / "d[" / "b]"                  # the path reads "d[/b]": a closing tag
    d.mkdir(parents=True)
    f = d / "[bold]x.pcapng"
    f.write_bytes(shb() + idb(1, name="[/]") + idb(1, name="\x1b[31mRED\x1b[0m") + epb(0, 1, frame) + epb(1, 2, frame))
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}   # piped: whole lines
    res = subprocess.run([sys.executable, "-m", "flowsift", "stats", str(f), "--filter", "tcp[tcpflags] & tcp-syn == 0"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert "[bold]x.pcapng" in res.stdout and "d[/b]" in res.stdout
    assert "tcp[tcpflags] & tcp-syn == 0" in res.stdout
    assert "[/]" in res.stdout and "\\x1b[31mRED\\x1b[0m" in res.stdout and "\x1b" not in res.stdout


def test_a_reader_that_goes_away_is_not_an_error(corpus):
    """`flowsift stats F | head -1`: the tables stop, quietly, with exit 0 (as for --json)."""
    import subprocess
    import sys
    for extra in ((), ("--json",)):
        p = subprocess.Popen([sys.executable, "-m", "flowsift", "stats", str(corpus / "http__zeek__bro.org.pcap"), *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.close()                    # gone before the first line: every write fails
        assert p.wait(timeout=60) == 0 and p.stderr.read() == b"", extra


def test_a_store_whose_run_kept_no_files_says_so(tmp_path):
    """`chain --store DIR` without --keep lets record files go as connections finish: inspect
    and replay say why the store is empty instead of showing or replaying nothing."""
    import json
    store = tmp_path / "s"
    run_cli("chain", "counter", ROOT / "examples" / "demo.pcap", "--store", store, "--events", "/dev/null", check=True)
    out = json.loads(run_cli("inspect", store, "--json", check=True).stdout)
    assert out["connections"] == [] and any("--keep" in p for p in out["problems"])
    for extra in ((), ("--unacked",)):
        res = run_cli("replay", "--store", store, "--to", "127.0.0.1:9", *extra)
        assert res.returncode == 2 and "record files go as connections finished" in res.stderr


def test_chain_with_events_on_stdout_keeps_stdout_to_json_lines(tmp_path):
    """`flowsift chain http,counter X | jq -c .kind` failed on the tables printed after the
    events: with the events on stdout the tables go to stderr, and a --json summary is the
    last line (the one object without a kind)."""
    demo = ROOT / "examples" / "demo.pcap"
    res = run_cli("chain", "http,counter", demo)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(l) for l in res.stdout.splitlines()]
    assert lines and all("kind" in e for e in lines) and {"request", "response", "flow"} <= {e["kind"] for e in lines}
    assert "counter" in res.stderr and "events" in res.stderr
    res = run_cli("chain", "http,counter", demo, "--json")
    *events, summary = [json.loads(l) for l in res.stdout.splitlines()]
    assert all("kind" in e for e in events) and "kind" not in summary and summary["events"] == len(events)
    # events to a file: stdout is the tables (or the summary), as before
    res = run_cli("chain", "http,counter", demo, "--events", tmp_path / "ev.jsonl")
    assert "counter" in res.stdout and not res.stdout.lstrip().startswith("{")


def test_a_file_cut_where_only_holes_lie_lacks_nothing_and_never_shows_negative_bytes(tmp_path, corpus):
    """Bytes delivered are the end less the gaps (merged), counted only as far as the file
    goes: a file cut inside a trailing gap's hole (or one whose every byte is a gap) lacks
    nothing and is not called truncated; one cut inside its bytes shows those it holds, the
    rest a "truncated" gap. Inspect said "s2c -128" and `"delivered": [-374, -23783]`."""
    import subprocess
    store = tmp_path / "s"
    run_cli("gateway", corpus / "pcapng__pcpp__pcapng-example.pcapng", "--store", store, "--keep", check=True)
    cut = tmp_path / "c00000010.rec"
    subprocess.run(["cp", "--sparse=always", store / "c00000010.rec", cut], check=True)
    os.truncate(cut, 2**42 + 92)                         # s2c: 92 bytes, then a snaplen hole to 100
    out = json.loads(run_cli("inspect", cut, "-n", "0", "--json", check=True).stdout)
    assert out["truncated"] is None and out["closed"]
    assert [(s["delivered"], s["end"], s["gaps"]) for s in out["streams"]] == [
        (28, 28, []), (92, 100, [[92, 8, "snaplen"]])]
    res = run_cli("inspect", cut, "-n", "0", check=True)
    assert "truncated" not in res.stdout and "-128" not in res.stdout
    os.truncate(cut, 2**42 + 50)                         # inside its bytes: 42 of them lacking
    out = json.loads(run_cli("inspect", cut, "-n", "0", "--json", check=True).stdout)
    assert out["truncated"] == ("truncated: the file ends at byte 4,398,046,511,154, its header says "
                                "92 s2c bytes (50 in the file)")
    assert [(s["delivered"], s["gaps"]) for s in out["streams"]] == [
        (28, []), (50, [[50, 42, "truncated"], [92, 8, "snaplen"]])]

    store = tmp_path / "r"
    run_cli("gateway", corpus / "retrans__zeek__retransmit-fast009.pcap", "--store", store, "--keep", check=True)
    os.truncate(store / "c00000000.rec", 2**40 + 100)    # every byte of it is a snaplen gap
    out = json.loads(run_cli("inspect", store, "--json", check=True).stdout)
    (c,) = out["connections"]
    assert c["delivered"] == [0, 0] and c["end"] == [474, 23783] and not c["truncated"] and c["closed"]
    assert out["problems"] == []
    f = json.loads(run_cli("inspect", store / "c00000000.rec", "-n", "0", "--json", check=True).stdout)
    assert f["truncated"] is None and [s["delivered"] for s in f["streams"]] == [0, 0]
    # -n counts a file's records: given with a store it is said, not ignored
    res = run_cli("inspect", store, "-n", "5")
    assert res.returncode == 2 and res.stdout == "" and res.stderr == (
        f"flowsift: inspect: -n/--records is for a record file; {store} is a store (inspect one of its files)\n")


# Runs flowsift as `python -m flowsift` does, sending the process SIGNAL (argv[1]) as the command
# line imports typer (what takes the time at start), or as it exits.
SIGNALLED = '''
import atexit, builtins, os, runpy, signal, sys
when, sig = sys.argv.pop(1), getattr(signal, sys.argv.pop(1))
real = builtins.__import__
def imported(name, *args, **kw):
    if name == "typer" and when == "start":
        builtins.__import__ = real
        os.kill(os.getpid(), sig)
    return real(name, *args, **kw)
builtins.__import__ = imported
if when == "exit":
    atexit.register(os.kill, os.getpid(), sig)
runpy.run_module("flowsift", run_name="__main__", alter_sys=True)
'''


@pytest.mark.parametrize("signame,code,said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_stop_signal_as_the_command_starts_or_exits_is_no_traceback(signame, code, said):
    """Ctrl-C to a process group (a terminal's) comes when it comes: while Python still imported
    the command line it was a KeyboardInterrupt traceback from typer's import (SIGTERM killed it
    without a word); after the command had said its last line, one from threading._shutdown or
    an exit handler (or a process killed by the signal as Python put its default handler back)."""
    import subprocess
    import sys
    demo = ROOT / "examples" / "demo.pcap"
    res = subprocess.run([sys.executable, "-c", SIGNALLED, "start", signame, "stats", demo], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert (res.returncode, res.stderr, res.stdout) == (code, f"flowsift: {said}\n", "")
    res = subprocess.run([sys.executable, "-c", SIGNALLED, "exit", signame, "stats", demo], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert (res.returncode, res.stderr) == (0, "") and "packets" in res.stdout


STOPPING = '''
import os, signal
from flowsift.modules import Module

sent = []


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(3):          # (Python takes the signal at a loop's turn)
        pass


def closed_later():
    try:
        yield
    finally:
        ctrl_c()


class Stopping(Module):
    """Presses Ctrl-C once, at its first packet, where $STOP_IN says.

    Synopsis: stopping
    """
    name = "stopping"

    def on_packet(self, flow, record):
        if sent:
            return
        sent.append(1)
        if os.environ["STOP_IN"] == "exec":
            exec("ctrl_c()")
        else:
            g = closed_later()
            next(g)
            del g               # closed now, in its finalizer
        for _ in range(1000):
            pass
'''


@pytest.mark.parametrize("where", ["exec", "finalizer"])
def test_a_stop_that_lands_where_python_ignores_or_remembers_it_still_stops_in_one_line(tmp_path, corpus, where):
    """Ctrl-C as Python ran code from a string (exec, eval: a dataclass or namedtuple being
    made) was caught and said, but Python took it for unhandled and killed itself with SIGINT
    as it exited (status -2, not 130); one that landed in a finalizer (a generator being closed,
    a __del__) was printed as "Exception ignored" and lost: the run went on to its end, exit 0."""
    import subprocess
    import sys
    mod = tmp_path / "stopping.py"
    mod.write_text(STOPPING)
    res = subprocess.run([sys.executable, "-m", "flowsift", "chain", "--inline", mod, corpus / "http__zeek__bro.org.pcap",
                          "--events", "/dev/null"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "STOP_IN": where})
    assert (res.returncode, res.stderr) == (130, "flowsift: interrupted\n")


@pytest.mark.parametrize("width", [300, 60])
def test_a_long_table_reads_as_a_short_one(monkeypatch, width):
    """Past PLAIN_ROWS rows a table that fits unfolded is laid out without rich's per-cell
    measuring (20 s for a store of 17,840 connections): the text is the same to the byte; one
    that does not fit is still folded by rich."""
    import io
    from flowsift import render
    columns = [("file", False), ("proto", False), ("client → server", False), ("records", True), ("c2s bytes", True)]
    rows = [[f"c{i:08d}.rec", "tcp" if i % 3 else "udp", f"10.0.{i % 7}.1:{40000 + i} → [2001:db8::{i:x}]:443",
             f"{i * 7:,}", f"{i ** 2:,}"] for i in range(1, 60)]
    rows[5][2] = "naïve\x1b[31m 表 → x"          # wide and control characters
    out = {}
    for plain in (True, False):
        monkeypatch.setattr(render, "PLAIN_ROWS", 10 if plain else 10**9)
        buf = io.StringIO()
        console = render._DataConsole(file=buf, width=width)
        table = render.fitted_table(console, "store /tmp/x", columns, rows)
        assert isinstance(table, render._PlainTable) == (plain and width == 300)
        console.print(table)
        out[plain] = buf.getvalue()
    assert out[True] == out[False]
    assert "\\x1b[31m" in out[True] and "\x1b" not in out[True]


def _to_dev_full(*args, cwd=None):
    """`flowsift ARGS > /dev/full`: (exit status, stderr)."""
    import subprocess
    import sys
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "flowsift", *map(str, args)], stdout=full, stderr=subprocess.PIPE,
                             text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return res.returncode, res.stderr


def _many_flows(path, n=300):
    """A pcap of `n` UDP flows of one datagram each (a counter event apiece: more than a buffer)."""
    from pcapgen import A, B, ether, ipv4, pcap, udp
    path.write_bytes(pcap([(1_700_000_000, k, ether(ipv4(A, B, 17, udp(20000 + k, 53, b"q" * 20))))
                           for k in range(n)]))
    return path


FULL = "No space left on device"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_results_that_cannot_be_written_are_one_line_and_exit_2(tmp_path):
    """`flowsift stats F > /dev/full` said `internal error: OSError: [Errno 28] ...`, exit 1, as
    for a flowsift bug: a full disk under the results is said as one under -w is."""
    demo = ROOT / "examples" / "demo.pcap"
    run_cli("chain", "counter", demo, "--store", tmp_path / "kept", "--keep", "--events", "/dev/null", check=True)
    rec = next((tmp_path / "kept").glob("*.rec"))
    for args in (("stats", demo), ("stats", demo, "--json"), ("streams", demo, "--discard", "--json"),
                 ("modules",), ("modules", "counter"), ("inspect", tmp_path / "kept", "--json"),
                 ("inspect", rec), ("inspect", rec, "--json", "-n", "-1"), ("analyze", "counter"),
                 ("chain", "counter", demo, "--store", tmp_path / "s1"),
                 ("chain", "counter", demo, "--store", tmp_path / "s2", "--events", "/dev/null", "--json"),
                 # more events than a buffer holds: the write fails while the chain runs
                 ("chain", "counter", _many_flows(tmp_path / "many.pcap"), "--store", tmp_path / "s3"),
                 ("chain", "counter", tmp_path / "many.pcap", "--store", tmp_path / "s4", "--inline")):
        code, err = _to_dev_full(*args)
        # (with the events on stdout, the tables go to stderr before the line)
        assert code == 2 and err.endswith(f"flowsift: stdout: cannot write: {FULL}\n"), (args, err)
        assert err.count("flowsift:") == 1, (args, err)
        assert err.startswith("flowsift:") or (args[0] == "chain" and "--events" not in args), (args, err)


def test_an_events_file_that_cannot_be_written_is_one_line_and_exit_2(tmp_path):
    """`chain counter F --events /dev/full` was an internal error (exit 1) from closing the file;
    a file whose device fails (EIO) too."""
    demo = ROOT / "examples" / "demo.pcap"
    bad = ["/dev/full"] if os.path.exists("/dev/full") else []
    # (a file that opens for writing but fails every write: /proc/version, for root)
    bad += ["/proc/version"] if os.access("/proc/version", os.W_OK) else []
    if not bad:
        pytest.skip("no output that fails its writes here")
    many = _many_flows(tmp_path / "many.pcap")
    for k, (path, capture, extra) in enumerate((p, c, e) for p in bad for c in (demo, many)
                                               for e in ((), ("--inline",), ("--json",))):
        res = run_cli("chain", "counter", capture, "--events", path, "--store", tmp_path / f"s{k}", *extra)
        why = FULL if path == "/dev/full" else os.strerror(5)
        assert res.returncode == 2, (path, capture, extra, res.stderr)
        assert res.stderr.endswith(f"flowsift: {path}: cannot write events: {why}\n"), (path, extra, res.stderr)
        assert res.stderr.count("flowsift:") == 1 and "internal error" not in res.stderr
    # shards: their events are copied out as the run ends
    res = run_cli("chain", "counter", many, "--events", bad[0], "--shards", "2")
    assert res.returncode == 2 and res.stderr.startswith(f"flowsift: {bad[0]}: cannot write events: "), res.stderr


@pytest.mark.parametrize("mode", [[], ["--inline"], ["--shards", "2"]])
def test_events_cut_by_a_full_disk_end_on_a_whole_line(tmp_path, corpus, mode):
    """A full file system took the events file's last block part-way: it ended in half a JSON
    line, and the close then flushed the rest of the buffer, mid-line, into the room the
    error left. The file now ends at its last whole line, a prefix of the run's events."""
    import subprocess
    import sys
    from conftest import small_tmpfs
    cap = corpus / "http__csanders__http_espn.pcapng"
    whole = tmp_path / "whole.jsonl"
    run_cli("chain", "http,counter", cap, "--events", whole, *mode, *(["--store", tmp_path / "s0"] * (not mode[1:])),
            check=True)
    with small_tmpfs(tmp_path, "32k") as mnt:
        res = run_cli("chain", "http,counter", cap, "--events", mnt / "ev.jsonl", *mode,
                      *(["--store", tmp_path / "s1"] * (not mode[1:])))
        got = (mnt / "ev.jsonl").read_bytes()
        # a shell's `>> log` on it: what the log held stays, and flowsift's lines after it are whole
        (mnt / "ev.jsonl").unlink()
        (mnt / "log").write_bytes(b'{"old": true}\n' + b"x" * 100)
        with open(mnt / "log", "ab") as log:
            res2 = subprocess.run([sys.executable, "-m", "flowsift", "chain", "http,counter", str(cap),
                                   *(["--store", str(tmp_path / "s2")] * (not mode[1:])), *mode], stdout=log,
                                  stderr=subprocess.PIPE, text=True, timeout=300)
        log = (mnt / "log").read_bytes()
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"flowsift: {mnt / 'ev.jsonl'}: cannot write events: No space left on device"], res.stderr
    assert 0 < len(got) < len(whole.read_bytes()) and got.endswith(b"\n") and whole.read_bytes().startswith(got)
    assert res2.returncode == 2 and "stdout: cannot write: No space left on device" in res2.stderr, res2.stderr
    assert log.startswith(b'{"old": true}\n' + b"x" * 100) and len(log) > 200
    assert whole.read_bytes().startswith(log[114:]) and log.endswith(b"\n")


def test_an_events_fifo_is_written_for_its_reader(tmp_path):
    """--events may name a FIFO: opened as tee opens one (it waits for the reader), every line
    reaches the reader."""
    import threading
    fifo = tmp_path / "ev"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    res = run_cli("chain", "counter", ROOT / "examples" / "demo.pcap", "--events", fifo, "--store", tmp_path / "s",
                  "--json")
    reader.join(30)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(l) for l in got[0].splitlines()]
    assert len(lines) == json.loads(res.stdout)["events"] > 0 and all(e["kind"] == "flow" for e in lines)


def test_count_on_a_file_reads_its_first_packets(tmp_path, corpus):
    """`-c N` on a file reads its first N packets, as `tcpdump -c N -r F` does, in every command
    and for every reader of the run: the chain's -w output is those N frames (it was refused:
    "--count and --duration are for live sources")."""
    from flowsift.io import open_capture
    src = corpus / "http__zeek__bro.org.pcap"
    first = [b.frame(i) for b in open_capture(src).batches(64) for i in range(b.n)][:100]
    s = json.loads(run_cli("stats", src, "-c", "100", "--json", check=True).stdout)
    assert s["packets"] == 100 and s["count"] == 100
    s = json.loads(run_cli("streams", src, "--discard", "-c", "100", "--json", check=True).stdout)
    assert s["capture_packets"] == s["packets"] == 100 and s["count"] == 100
    g = json.loads(run_cli("gateway", src, "--count", "100", "--store", tmp_path / "g", "--json", check=True).stdout)
    assert g["connections"]["packets"] == 100 and g["count"] == 100
    # the summaries say they are of the file's first packets (they said nothing of -c), and
    # a whole file's say nothing
    for args in (["stats"], ["streams", "--discard"], ["gateway", "--store", tmp_path / "g2"],
                 ["chain", "counter", "--events", os.devnull, "--store", tmp_path / "c2"],
                 ["chain", "counter", "--events", os.devnull, "--shards", "2"]):
        text = run_cli(*args[:2 if args[0] == "chain" else 1], src, "-c", "100", *args[2 if args[0] == "chain" else 1:],
                       check=True).stdout
        assert "the file's first 100 packets (-c)" in text, (args, text)
    assert "count" not in json.loads(run_cli("stats", src, "--json", check=True).stdout)
    for extra in ([], ["--inline"]):
        out = tmp_path / f"out{len(extra)}.pcap"
        c = json.loads(run_cli("chain", "counter", src, "-c", "100", "-w", out, "--events", os.devnull, "--json",
                               "--store", tmp_path / f"c{len(extra)}", *extra, check=True).stdout)
        assert c["packets"] == c["egress"]["packets"] == 100 and c["count"] == 100
        assert [b.frame(i) for b in open_capture(out).batches(64) for i in range(b.n)] == first
    c = json.loads(run_cli("chain", "counter", src, "-c", "100", "--shards", "2", "--events", os.devnull, "--json",
                           check=True).stdout)
    assert c["connections"]["packets"] == 100 and [x["packets"] for x in c["shards"]] == [100, 100]
    assert c["count"] == 100
    res = run_cli("stats", src, "--duration", "5")
    assert res.returncode == 2 and res.stderr == (
        "flowsift: stats: --duration is for live sources (afpacket:IFACE, dpdk:PORT): a file's first N packets are --count N\n")


def test_seconds_and_sizes_take_the_units_reassembly_takes(corpus, monkeypatch):
    """--duration, --timeout, --idle and --wait take 500ms, 30s, 5m, 1h as --reassembly does
    (they were floats alone: '--timeout 5s' was "not a valid float"), and
    FLOWSIFT_PROGRESS_MIN_BYTES takes 64MiB as its documented default is written; a setting
    given twice in --reassembly is refused rather than one of them taken."""
    from flowsift.bounds import byte_size, seconds
    assert [seconds(t) for t in ("2.5", "500ms", "30s", "5m", "2min", "1h", "inf", "1e3ms", ".5s")] == [
        2.5, 0.5, 30.0, 300.0, 120.0, 3600.0, float("inf"), 1.0, 0.5]
    # and --reassembly reads its numbers as these do (it refused 1e3 and .5GiB)
    from flowsift.bounds import parse_settings
    assert parse_settings(["established_timeout=1e3,memcap=.5GiB"]) == {"established_timeout": 1000.0,
                                                                         "memcap": 1 << 29}
    assert [byte_size(t) for t in ("0", "4096", "64MiB", "1.5G", "512k")] == [0, 4096, 64 << 20, 3 << 29, 512 << 10]
    for bad in ("5x", "2d", "", "ms", "5e", "1.2.3s"):
        with pytest.raises(ValueError):
            seconds(bad)
    src = corpus / "http__zeek__bro.org.pcap"
    # parsed, then refused for what it is: 5 minutes is no mistake, the interface is
    res = run_cli("stats", "afpacket:nosuch0", "--duration", "5m")
    assert res.returncode == 2 and res.stderr == "flowsift: afpacket:nosuch0: no such interface\n"
    res = run_cli("replay", src, "--to", "127.0.0.1:9", "--timeout", "5x")
    assert res.returncode == 2 and res.stderr == (
        "flowsift: replay: invalid value for '--timeout': '5x': seconds, or with a unit: 500ms, 30s, 5m, 1h "
        "(see flowsift replay --help)\n")
    res = run_cli("replay", src, "--to", "127.0.0.1:9", "--idle", "2d")
    assert res.returncode == 2 and "'2d': seconds, or with a unit" in res.stderr
    res = run_cli("streams", src, "--discard", "--reassembly", "memcap=1GiB", "--reassembly", "memcap=2GiB")
    assert res.returncode == 2 and res.stderr == "flowsift: streams: --reassembly memcap: given twice (memcap=1GiB, memcap=2GiB)\n"
    # names of modes in any case, as a live source's outgoing= takes them
    s = json.loads(run_cli("streams", src, "--discard", "--policy", "Linux", "--checksums", "VERIFY", "--json",
                           check=True).stdout)
    assert s["policy"] == "linux" and "checksums" in s
    monkeypatch.setenv("FLOWSIFT_PROGRESS_MIN_BYTES", "64MiB")
    assert run_cli("stats", src).returncode == 0


@pytest.mark.parametrize("source,out", [("afpacket:nosuch0", "afpacket:nosuch1"), ("examples/demo.pcap", "dpdk:net_null0")])
def test_a_filter_on_an_inline_chain_is_refused(source, out):
    """An inline chain forwards every frame; the frames --filter rejects never reach it (the
    kernel drops them from the ring), so they were black-holed, the run ending well (exit 0)."""
    res = run_cli("chain", "counter", ROOT / source if "/" in source else source, "--out", out, "--filter", "tcp")
    assert res.returncode == 2 and res.stdout == "" and res.stderr == (
        "flowsift: chain: --filter with --out: the frames it rejects would never be forwarded (inline, every frame goes "
        "out); leave connections to a module instead (flow.skip() in on_open)\n")


def test_every_inspect_json_key_is_documented(tmp_path, corpus):
    """inspect --json's keys and encodings were documented nowhere."""
    store = tmp_path / "s"
    run_cli("gateway", corpus / "trunc__suri__tcp-rst-unacked-stream-10.pcap", "--store", store, "--keep",
            "--vlan-key", check=True)
    doc = (ROOT / "docs" / "cli.md").read_text()
    section = doc[doc.index("### `inspect --json`"):doc.index("## `flowsift chain")]
    one = json.loads(run_cli("inspect", store / "c00000000.rec", "--json", check=True).stdout)
    listing = json.loads(run_cli("inspect", store, "--json", check=True).stdout)
    keys = set(one) | set(one["streams"][1]) | set(one["streams"][1]["gap_entries"][0]) | set(one["record_list"][0])
    keys |= set(listing) | set(listing["connections"][0])
    assert {"vlan", "gap_entries", "frame_pos", "readable"} <= keys
    for key in keys:
        assert f"`{key}`" in section, key
    for encoded in ("`\"S.\"`", "`-`", "`gap-before`", "`snaplen-cut`", "`keep-alive`", "`ignored`", "`null` while open",
                    "`\"reclaimed\"`", "`\"truncated\"`"):
        assert encoded in section, encoded
