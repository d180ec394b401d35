"""The `flowsift` command line: thin over the library."""
import contextlib
import gc
import inspect as _inspect     # (`inspect` is a command here)
import json
import os
import sys
from typing import List, Optional

import click
import typer

from flowsift import __version__
from flowsift.bounds import parse_settings, settings_help
from flowsift.limits import collect_less
from flowsift.errors import FlowsiftError, Terminated, UsageError, ignore_stops, say, stops_raised, take_stops

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},   # (-h, as tcpdump and tshark take it)
    pretty_exceptions_enable=False,
    help="flowsift: read captures as streams and run middlebox modules over them.",
)

# Files smaller than this finish before a progress bar is worth drawing.
PROGRESS_MIN_BYTES = 64 << 20          # smaller captures get no progress bar (FLOWSIFT_PROGRESS_MIN_BYTES)


def _fail(message):
    """A usage error of the command: said as `flowsift: COMMAND: message`."""
    raise UsageError(message)


def _progress(size, label):
    """A rich progress bar on stderr when it is a terminal and the work is long; else None."""
    from flowsift.errors import env_number
    from flowsift.bounds import byte_size
    least = env_number("FLOWSIFT_PROGRESS_MIN_BYTES", PROGRESS_MIN_BYTES, 0, None,
                       "bytes a capture needs for a progress bar (64MiB, 1G: a unit may be given)", kind=byte_size)
    if size < least or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
    from rich.console import Console
    return Progress(TextColumn(label, markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)


def _render(name, stderr=False):
    """A printer from flowsift.render, imported only when tables are printed (rich is slow to
    import); `stderr`: the tables go there (stdout carries JSON lines)."""
    def show(result):
        from flowsift import render
        if stderr:
            getattr(render, name)(result, render._console(stderr=True))
        else:
            getattr(render, name)(result)
    return show


def _run(path, label, work, as_json, render, after=None):
    """Run `work(on_progress)` with a progress bar when worth it, print the result (JSON or
    `render`), call `after(result)` (it may say a line), and exit 2 with its one-line error if
    reading stopped at a defect."""
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    bar = _progress(size, label)
    try:
        if bar is not None:
            with bar:
                task = bar.add_task(label, total=size)
                result = work(lambda pos, total: bar.update(task, completed=pos))
        else:
            result = work(None)
    except FlowsiftError as e:
        # a store that filled up (or could not be written) stopped the run: the summary of
        # what was read still goes out, its `error` saying why, and the line and exit 2 follow
        if as_json and getattr(e, "summary", None) is not None:
            typer.echo(json.dumps(e.summary))
        raise
    except (KeyboardInterrupt, Terminated) as e:
        # a stop that ended a wait once the source was read whole (the gateway's for its
        # modules) comes with the summary, which goes out before the line and exit 130 or 143
        if getattr(e, "summary", None) is not None:
            typer.echo(json.dumps(e.summary)) if as_json else render(e.summary)
        raise
    if as_json:
        typer.echo(json.dumps(result))
    else:
        render(result)
    code = after(result) if after is not None else 0
    if result["error"]:
        typer.echo(f"flowsift: {result['error']}", err=True)
        raise typer.Exit(2)
    if code:
        raise typer.Exit(code)


def _refuse_overwrite(inputs, outputs):
    """Every output path checked against every input (and the others) before anything is
    opened for writing (flowsift.paths)."""
    from flowsift.paths import refuse_overwrite
    refuse_overwrite(inputs, outputs)


@contextlib.contextmanager
def _output(path, what):
    """An output file of the command (stdout for '-'), written with its errors named
    (flowsift.paths.open_output) and closed after it: a failure to write what it still held is
    said as any write error (one line, exit 2), after an exit status too, but not over an
    error the command ended with (that one is said)."""
    if path == "-":
        yield sys.stdout
        return
    from flowsift.paths import open_output
    f = open_output(path, what)
    try:
        yield f
    except click.exceptions.Exit:
        f.close()
        raise
    except BaseException:
        try:
            f.close()
        except Exception:
            pass
        raise
    f.close()


def _named(value: Optional[str]):
    # `--events --json`, `-w -h`: an option typed after one that takes a file is taken for its
    # name, and a file "--json" made; a name that begins with '-' is a slip unless given as ./NAME
    if value and value != "-" and value.startswith("-"):
        raise typer.BadParameter(f"{value!r} is an option, not a file name (a name that begins with '-': ./{value})")
    return value


def _limits(source, count, duration):
    if count is None and duration is None:
        return source               # (a file run need not load the live sources)
    from flowsift.io.live import with_limits
    return with_limits(source, count, duration)


def _version(value: bool):
    if value:
        typer.echo(f"flowsift {__version__}")
        raise typer.Exit()


# options several commands share, declared once
CAPTURE = typer.Argument(..., metavar="SOURCE",
                         help="A pcap or pcapng file, or a live source: afpacket:IFACE[,ring=32M,fanout=N,timestamps=hw], "
                              "dpdk:PORT or dpdk:VDEV[,ARGS] (e.g. dpdk:net_pcap0,rx_pcap=in.pcap).")
COUNT = typer.Option(None, "--count", "-c", metavar="N",
                     help="Stop after N packets (a file: read its first N, counted before --filter, where tcpdump "
                          "-c counts those it keeps).")


class _Seconds(click.ParamType):
    """SECONDS: a number, or one with a unit as --reassembly takes them (500ms, 30s, 5m, 1h)."""
    name = "seconds"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        from flowsift.bounds import seconds
        try:
            return seconds(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


SECONDS = _Seconds()
DURATION = typer.Option(None, "--duration", metavar="SECONDS", click_type=SECONDS,
                        help="Live sources: stop after this long (30, 90s, 5m, 1h; Ctrl-C also ends cleanly).")
FILTER = typer.Option(None, "--filter", "-f", metavar="EXPR",
                      help="BPF expression (tcpdump syntax), e.g. 'tcp port 80', applied before anything else.")
POLICY = typer.Option("first", "--policy", metavar="NAME", callback=lambda name: name.lower(),
                      help="Overlap policy for differing copies: first, last, bsd, linux, windows, solaris. "
                           "Delivered bytes are final: a policy (last too) only chooses among copies of bytes held "
                           "out of order, before they are delivered.")
REASSEMBLY = typer.Option(None, "--reassembly", metavar="NAME=VALUE",
                          help="Set a reassembly timeout or bound, or the IPv4 fragment overlap policy (repeat it, "
                               "or comma-separate), defaults: "
                               f"{settings_help()}. What happens at each: docs/reassembly.md.")
JSON = typer.Option(False, "--json", help="Print one JSON object (fields in docs/cli.md).")
VLAN_KEY = typer.Option(False, "--vlan-key",
                        help="Tell connections apart by their VLAN ids too: the outer 802.1Q/802.1ad tag and, for "
                             "QinQ, the inner one. One 5-tuple on two VLANs is then two connections, each with its "
                             "own bytes (IP fragments are joined within one VLAN only), and outputs name each "
                             "connection's VLAN. Use it on trunk links whose VLANs carry overlapping addresses "
                             "(tenants with private address space). Default: off, connections are 5-tuples as in "
                             "tshark.")


def _checksum_mode(mode: str):
    from flowsift.io._decode import CHECKSUM_MODES
    mode = mode.lower()         # (as --policy, and outgoing= of a live source, take any case)
    if mode not in CHECKSUM_MODES:
        raise typer.BadParameter(f"{mode!r}: one of {', '.join(CHECKSUM_MODES)}")
    return mode


CHECKSUMS = typer.Option("ignore", "--checksums", metavar="MODE", callback=_checksum_mode,
                         help="ignore (default): decode packets whatever their IPv4, TCP and UDP checksums say, as "
                              "tshark and tcpflow do (a capture taken on a host with checksum offload has wrong ones on "
                              "every packet it sent). verify: a packet with a wrong one is not decoded (counted as "
                              "bad_checksum), as Suricata, Snort and Zeek drop it, since its receiver does: a copy "
                              "that receivers drop cannot then stand in a stream for the one they took.")


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
          dpdk_args: Optional[str] = typer.Option(None, "--dpdk-args", metavar="ARGS",
                                                  help="DPDK EAL arguments for dpdk: sources and --out "
                                                       "(default: '-l 0 --no-huge -m 256 --no-pci --no-shconf "
                                                       "--no-telemetry --log-level=*:error', for virtual devices).")):
    if dpdk_args is not None:
        os.environ["FLOWSIFT_DPDK_ARGS"] = dpdk_args


@app.command()
def stats(
    capture: str = CAPTURE,
    filter: Optional[str] = FILTER,
    count: Optional[int] = COUNT,
    duration: Optional[float] = DURATION,
    vlan_key: bool = VLAN_KEY,
    checksums: str = CHECKSUMS,
    as_json: bool = JSON,
):
    """Summarise a capture without reassembling it.

    Packets, bytes, time span, link types, protocols, flows, and every packet that could not
    be decoded, by reason.

    \b
    Examples:
      flowsift stats trace.pcap
      flowsift stats trace.pcapng --filter 'tcp port 443' --json
      flowsift stats afpacket:eth0 --filter 'tcp' --duration 10
    """
    from flowsift.stats import capture_stats
    capture = _limits(capture, count, duration)

    _run(capture, "reading", lambda progress: capture_stats(capture, filter, on_progress=progress, vlan_key=vlan_key,
                                                            checksums=checksums),
         as_json, _render('print_stats'))


@app.command()
def streams(
    capture: str = CAPTURE,
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="DIR", callback=_named,
                                         help="Write one file per direction and DIR/index.jsonl. A DIR that "
                                              "holds an earlier run's output (index.jsonl, stream files) is "
                                              "refused unless --replace is given; other files in DIR stay."),
    replace: bool = typer.Option(False, "--replace",
                                 help="Replace the output of an earlier run in -o DIR: its stream files are "
                                      "removed before the first one is written, once the capture was checked, "
                                      "and index.jsonl is rewritten."),
    gaps: str = typer.Option("splice", "--gaps", metavar="MODE",
                             help="splice: a gap takes no room in its file (the bytes after it follow those "
                                  "before it); zeros: a gap before bytes is written as zeros, so that file "
                                  "offsets are stream offsets (for carving tools). The index lists every gap "
                                  "either way."),
    discard: bool = typer.Option(False, "--discard", help="Reassemble everything, write nothing but the summary."),
    filter: Optional[str] = FILTER,
    policy: str = POLICY,
    reassembly: Optional[List[str]] = REASSEMBLY,
    vlan_key: bool = VLAN_KEY,
    checksums: str = CHECKSUMS,
    count: Optional[int] = COUNT,
    duration: Optional[float] = DURATION,
    as_json: bool = JSON,
):
    """Reassemble every TCP connection (and UDP flow) of a capture into its byte streams.

    Each direction's delivered bytes go to their own file, exactly as delivered: a hole the
    capture never filled is a gap listed in the index (with its place in the file and its
    reason), not filled with zeros unless --gaps zeros asks. Overlapping copies that differ
    are resolved by --policy and counted as conflicts.

    \b
    Examples:
      flowsift streams trace.pcap -o out/
      flowsift streams trace.pcap -o out/ --filter 'tcp port 80' --policy linux
      flowsift streams again.pcap -o out/ --replace
      flowsift streams big.pcap --discard --json
      flowsift streams day.pcap -o out/ --reassembly memcap=4GiB
    """
    from flowsift.extract import extract_streams

    if (output is None) == (not discard):
        _fail("give either -o DIR or --discard")
    if output == "":
        _fail("-o '': an empty path names no directory")
    if discard and gaps != "splice":
        _fail("--gaps says how files hold gaps: it goes with -o DIR, not --discard")
    if discard and replace:
        _fail("--replace says what becomes of an earlier run's output in -o DIR: it goes with -o DIR, not --discard")
    if output is not None and os.path.isdir(output):
        # (with --replace) index.jsonl is rewritten and an earlier run's stream files removed first
        from flowsift.reassembly._filesink import _STREAM_FILE
        try:
            names = [n for n in os.listdir(output) if n == "index.jsonl" or _STREAM_FILE.match(n)]
        except OSError:
            names = []              # (the sink says why it cannot write there)
        _refuse_overwrite([("input capture", capture)],
                          [(f"-o {output}: the output file", os.path.join(output, n)) for n in names])
    bounds = parse_settings(reassembly)
    capture = _limits(capture, count, duration)
    _run(capture, "reassembling", lambda progress: extract_streams(capture, output, filter, policy, on_progress=progress,
                                                                   gaps=gaps, vlan_key=vlan_key, checksums=checksums,
                                                                   replace=replace, **bounds),
         as_json, _render('print_streams'))


REGISTRY = typer.Option(None, "--registry", metavar="URL",
                        help="Redis registry, redis://[user:password@]host:port/db: lets modules attach from other "
                             "processes (flowsift module). Default: embedded, no server.")
UNACKED_FILES = typer.Option(None, "--unacked-files", metavar="N",
                             help="Keep at most N record files of ended connections whose last bytes were never "
                                  "acknowledged (replay --unacked sends them); past N the oldest goes, counted as "
                                  "unacked_retired. Default 10000; 0 keeps none. Not with --keep (which keeps all).")


def _unacked_files(n, keeps_all):
    if n is None:
        return
    if n < 0:
        _fail(f"--unacked-files {n}: a number of files, 0 or more")
    if keeps_all:
        _fail("--unacked-files bounds the files a run gives back: with --keep (or -w) every file stays")


@app.command()
def gateway(
    source: Optional[str] = typer.Argument(None, metavar="SOURCE", help="A pcap or pcapng file, or a live source: afpacket:IFACE[,ring=32M,fanout=N,timestamps=hw], "
                                                           "dpdk:PORT or dpdk:VDEV[,ARGS] (docs/cli.md, Live sources)."),
    store: Optional[str] = typer.Option(None, "--store", metavar="DIR", callback=_named,
                                        help="Store directory (default: a fresh one under /dev/shm)."),
    keep: bool = typer.Option(False, "--keep", help="Never reclaim space: keep every record for later replay."),
    filter: Optional[str] = FILTER,
    policy: str = POLICY,
    reassembly: Optional[List[str]] = REASSEMBLY,
    registry: Optional[str] = REGISTRY,
    vlan_key: bool = VLAN_KEY,
    checksums: str = CHECKSUMS,
    unacked_files: Optional[int] = UNACKED_FILES,
    run: Optional[str] = typer.Option(None, "--run", metavar="RUN",
                                      help="Name of the run in the registry (default: a fresh random one)."),
    expect: Optional[str] = typer.Option(None, "--expect", metavar="NAMES",
                                         help="Modules that will attach (comma-separated): their bits are held from "
                                              "the start, so nothing is reclaimed before they read it, and the "
                                              "gateway waits for them at the end."),
    cleanup: Optional[str] = typer.Option(None, "--cleanup", metavar="RUN",
                                          help="Remove the registry keys of a dead run, then exit."),
    count: Optional[int] = COUNT,
    duration: Optional[float] = DURATION,
    as_json: bool = JSON,
):
    """Run the gateway alone: write one record file per connection into a store.

    Each file holds a record per packet and each direction's reassembled bytes, stored by
    stream offset (docs/record-format.md). Read them with `flowsift inspect`, or from Python
    with flowsift.streams.StreamPointer. With --registry, modules in other processes attach
    to the run (flowsift module); the gateway waits for the ones it knows before it exits,
    and removes the run's keys when it does.

    Record files are sparse: each looks 8 TiB long (ls -l) and takes only what it holds (du).
    Copy a store with cp --sparse=always, tar -S or rsync -S: another copy writes every byte.

    \b
    Examples:
      flowsift gateway trace.pcap --store /tmp/run1 --keep
      flowsift inspect /tmp/run1
      flowsift gateway trace.pcap --registry redis://localhost:6379/0 --run r1 --expect http
      flowsift module http --registry redis://localhost:6379/0 --run r1 --events http.jsonl
      flowsift gateway --registry redis://localhost:6379/0 --cleanup r1
    """
    if cleanup is not None:
        if source is not None:
            _fail("--cleanup removes a run's keys: give no SOURCE with it")
        from flowsift.remote import cleanup as remove
        n = remove(registry, cleanup)
        typer.echo(json.dumps({"run": cleanup, "keys_removed": n}) if as_json else f"run {cleanup}: {n} keys removed")
        return
    if source is None:
        _fail("missing SOURCE (a pcap or pcapng file)")
    bounds = parse_settings(reassembly)
    source = _limits(source, count, duration)
    _refuse_overwrite([], [("--store", store)])
    _unacked_files(unacked_files, keep)
    if registry is None:
        if run or expect:
            _fail("--run and --expect need --registry URL")
        if unacked_files is not None:
            _fail("--unacked-files bounds the files kept once modules finished them: the gateway alone "
                  "gives nothing back (modules attach with --registry URL)")
        from flowsift.gateway import Gateway, open_source
        cap = open_source(source)       # (one that cannot be read makes no store)
        g = Gateway(store, keep=keep, policy=policy, filter_expression=filter, readers_here=False, vlan_key=vlan_key,
                    checksums=checksums, **bounds)
        _run(source, "gateway", lambda progress: g.run_alone(cap, on_progress=progress), as_json,
             _render('print_gateway'))
        return
    from flowsift.remote import expected_names, serve
    names, unknown = expected_names(expect)
    started = (lambda r: typer.echo(f"flowsift: run {r} in the registry", err=True)) if not as_json else None
    _run(source, "gateway", lambda progress: serve(source, registry, run=run, store=store, keep=keep, expect=names,
                                                   filter_expression=filter, policy=policy, reassembly=bounds,
                                                   on_progress=progress, on_started=started, unknown=unknown,
                                                   vlan_key=vlan_key, unacked_files=unacked_files,
                                                   checksums=checksums),
         as_json, _render('print_gateway'))


@app.command()
def module(
    name: str = typer.Argument(..., metavar="MODULE", help="One module, e.g. 'http', 'strsearch(patterns=rules.txt)' or ./mine.py:Mine."),
    registry: str = typer.Option(..., "--registry", metavar="URL", help="The Redis registry the gateway uses."),
    run: Optional[str] = typer.Option(None, "--run", metavar="RUN", help="The run to attach to (default: the only live one)."),
    events: str = typer.Option("-", "--events", metavar="FILE", callback=_named,
                               help="Where the JSON event lines go ('-': stdout). A regular file is resumed exactly "
                                    "after a crash; stdout, a pipe or a device get each line once committed."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first exception in a module hook."),
    wait: Optional[float] = typer.Option(None, "--wait", metavar="SECONDS", click_type=SECONDS,
                                         help="How long to wait for the run to start (default: for ever)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object (on stderr when events go to stdout)."),
):
    """Attach one read-only module, as its own process, to a gateway's run in a Redis registry.

    It may start before or after the gateway. It catches up from the first connection it has
    not finished, then follows new records as the registry's keyspace notifications arrive,
    and exits when the run is complete and it has read every connection. Killed and started
    again, it takes its bit back and resumes: no record is lost or read twice, and an --events
    file is cut back to what was committed.

    \b
    Examples:
      flowsift module counter --registry redis://localhost:6379/0
      flowsift module http --registry redis://:secret@10.0.0.5:6379/0 --run r1 --events http.jsonl
    """
    from flowsift.remote import attach
    try:
        summary = attach(name, registry, run=run, events=None if events == "-" else events, strict=strict, wait=wait)
    except FlowsiftError as e:
        # stopped once attached (its gateway gone, the registry lost or full): what it did still
        # goes out, its `error` saying why; the line and exit 2 follow
        if as_json and getattr(e, "summary", None) is not None:
            typer.echo(json.dumps(e.summary), err=events == "-")
        raise
    if as_json:
        typer.echo(json.dumps(summary), err=events == "-")
    else:
        from flowsift import render
        render.print_module(summary)


def _record_count(n: Optional[int]):
    if n is not None and n < -1:
        raise typer.BadParameter(f"{n}: 0 or more, or -1 for all")
    return n


@app.command()
def inspect(
    path: str = typer.Argument(..., metavar="PATH", help="A record file (.rec) or a store directory."),
    records: Optional[int] = typer.Option(None, "--records", "-n", metavar="N", callback=_record_count,
                                          help="A record file's records to show (default 20; 0: none, -1: all)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of tables."),
):
    """Show a record file, or summarise a store directory.

    A file: its header, its records with their flags and bitmaps, its stream extents and
    gaps. A directory: one line per connection.

    \b
    Examples:
      flowsift inspect /dev/shm/flowsift-store-abc123
      flowsift inspect /dev/shm/flowsift-store-abc123/c00000007.rec -n -1 --json
    """
    from flowsift.inspect import describe_file, describe_store, file_description, write_json
    from flowsift.render import print_inspect_file, print_inspect_store

    if os.path.isdir(path):
        if records is not None:
            _fail(f"-n/--records is for a record file; {path} is a store (inspect one of its files)")
        result = describe_store(path)
        typer.echo(json.dumps(result)) if as_json else print_inspect_store(result)
    elif as_json:
        with file_description(path, 20 if records is None else records) as info:
            write_json(info, sys.stdout)
    else:
        print_inspect_file(describe_file(path, 20 if records is None else records))


@app.command()
def chain(
    modules: str = typer.Argument(..., metavar="MODULES", help="Modules in order, parted by commas: built-in names (flowsift modules), path.py or path.py:Class, "
                                                                   "each with options in brackets: 'counter', 'http,strsearch(patterns=inline:pass|user)', "
                                                                   "'./mine.py:Mine(limit=5),counter'."),
    source: str = typer.Argument(..., metavar="SOURCE", help="A pcap or pcapng file, or a live source: afpacket:IFACE[,ring=32M,fanout=N,timestamps=hw], "
                                                           "dpdk:PORT or dpdk:VDEV[,ARGS] (docs/cli.md, Live sources)."),
    events: str = typer.Option("-", "--events", metavar="FILE", callback=_named, help="Where the JSON event lines go ('-': stdout)."),
    store: Optional[str] = typer.Option(None, "--store", metavar="DIR", callback=_named,
                                        help="Put the record store here (default: a temporary one in /dev/shm); "
                                             "unless --keep, a connection's record file goes once every module "
                                             "finished it and the receiver acknowledged its bytes."),
    keep: bool = typer.Option(False, "--keep", help="Keep every record file (and the default store) after the run, "
                                                     "for inspect and replay --store."),
    filter: Optional[str] = FILTER,
    policy: str = POLICY,
    reassembly: Optional[List[str]] = REASSEMBLY,
    vlan_key: bool = VLAN_KEY,
    checksums: str = CHECKSUMS,
    unacked_files: Optional[int] = UNACKED_FILES,
    strict: bool = typer.Option(False, "--strict", help="Stop at the first exception in a module hook."),
    inline: bool = typer.Option(False, "--inline", help="Run the modules in the gateway's process (debugging)."),
    max_backlog: Optional[int] = typer.Option(None, "--max-backlog", metavar="N",
                                              help="A read-only module more than N batches behind loses connections "
                                                   "(counted) instead of holding the gateway back."),
    write: Optional[str] = typer.Option(None, "--write", "-w", metavar="OUT.pcap", callback=_named,
                                        help="Write the chain's output: edited packets, dropped ones left out."),
    forward_to: Optional[str] = typer.Option(None, "--out", metavar="afpacket:IFACE|dpdk:PORT",
                                      help="Inline mode: forward every packet out of this interface once the chain "
                                           "has seen it, edits applied, dropped ones not."),
    registry: Optional[str] = REGISTRY,
    shards: Optional[int] = typer.Option(None, "--shards", metavar="N",
                                         help="Run N gateways, each with the flows of its shard (a symmetric hash), "
                                              "and merge their outputs and declared module state."),
    reshard: Optional[List[str]] = typer.Option(None, "--reshard", metavar="PACKETS:N",
                                                help="With --shards and a capture file: at packet PACKETS go on with N "
                                                     "shards, moving the flows whose shard changes, with their "
                                                     "reassembly and module state (repeat for more steps)."),
    count: Optional[int] = COUNT,
    duration: Optional[float] = DURATION,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object (after the events, as their last line, when they go to stdout)."),
):
    """Run a chain of modules over a capture.

    The gateway writes each connection's records and streams, and the modules read them (byte
    streams, gaps, packets) and emit events. Read-only modules each run in a worker process,
    in parallel, restarted if they die; --inline runs them in order in the gateway's process.

    \b
    Examples:
      flowsift chain counter trace.pcap
      flowsift chain counter,./mymodule.py:Mine trace.pcap --events out.jsonl
      flowsift chain http,counter trace.pcap --registry redis://localhost:6379/0
      flowsift chain "nat(to=10.0.0.2:8080)" afpacket:eth1 --out afpacket:eth2
      flowsift chain http,counter trace.pcap --shards 2 --reshard 500000:4
      flowsift modules            (what modules there are)
    """
    from flowsift.chain import run_chain
    bounds = parse_settings(reassembly)
    source = _limits(source, count, duration)
    _unacked_files(unacked_files, keep or write is not None)
    if write is not None:
        from flowsift.paths import check_output_file
        check_output_file("-w", write)       # (before the events file is made)
    _refuse_overwrite([("input capture", source)], [("-w", write), ("--events", events), ("--store", store)])
    egress = None
    try:
        if write is not None:
            # opened (made) before the events file and before anything is read: one that
            # cannot be written is said now, with the reason its open gave
            from flowsift.egress import EgressFile
            write = egress = EgressFile(write)
        with _output(events, "events") as out:
            _run(source, "chain", lambda progress: run_chain(modules, source, events=out, store=store, keep=keep,
                                                             filter_expression=filter, policy=policy, reassembly=bounds,
                                                             strict=strict, on_progress=progress, inline=inline, write=write,
                                                             max_backlog=max_backlog, registry=registry, out=forward_to,
                                                             shards=shards, reshard=reshard, vlan_key=vlan_key,
                                                             unacked_files=unacked_files, checksums=checksums),
                 as_json, _render('print_chain', stderr=events == "-"), after=_unapplied_edits)
    finally:
        if egress is not None:
            egress.discard()                 # (nothing once written)


# exit code of a chain whose output left packets with accepted edits unedited (a redaction
# that did not reach every copy of its bytes must not pass for a clean run)
EXIT_NOT_APPLIED = 3


def _unapplied_edits(summary):
    """One line on stderr, and EXIT_NOT_APPLIED, when -w or --out left packets with accepted
    edits as they came (egress.not_editable), and when --out had sent packets before the edits
    of them came (rejected: "already forwarded")."""
    e = summary.get("egress") or {}
    where = f"-w {e['file']}" if "file" in e else f"--out {e.get('out')}"
    late = sum(n for reason, n in ((summary.get("edits") or {}).get("rejected") or {}).items()
               if reason.endswith(": already forwarded"))
    if e.get("not_editable"):
        why = "; ".join(f"{n} {reason}" for reason, n in e.get("not_editable_reasons", {}).items())
        typer.echo(f"flowsift: {where}: {e['not_editable']:,} packets with accepted edits left as they came"
                   + (f" ({why})" if why else ""), err=True)
    if late:
        # (a redaction that came after its bytes left did not mask them: no clean run either)
        typer.echo(f"flowsift: {where}: {late:,} edits came after their packets had been forwarded "
                   f"(rejected: those left as they came)", err=True)
    return EXIT_NOT_APPLIED if e.get("not_editable") or late else 0


@app.command()
def replay(
    ctx: typer.Context,
    source: Optional[str] = typer.Argument(None, metavar="CAPTURE", help="A pcap or pcapng file (or use --store)."),
    to: str = typer.Option(..., "--to", metavar="HOST:PORT", help="The server to replay against."),
    store: Optional[str] = typer.Option(None, "--store", metavar="DIR", callback=_named, help="Replay the connections of a kept store."),
    filter: Optional[str] = FILTER,
    policy: str = POLICY,
    reassembly: Optional[List[str]] = REASSEMBLY,
    vlan_key: bool = VLAN_KEY,
    checksums: str = CHECKSUMS,
    server_port: Optional[int] = typer.Option(None, "--server-port", metavar="N", help="Only connections to this server port."),
    speed: str = typer.Option("max", "--speed", metavar="X",
                              help="'max' (as fast as possible), or a multiple of the original pace between the turns "
                                   "of a connection: 1, 10... (connections start as --concurrency allows)."),
    concurrency: int = typer.Option(8, "--concurrency", "-j", metavar="N", help="Connections replayed at once."),
    limit: Optional[int] = typer.Option(None, "--limit", metavar="N", help="Replay at most N connections (0: no limit)."),
    partial: bool = typer.Option(False, "--partial", help="Replay connections up to a gap in the client's stream "
                                                           "(HTTP: its last whole request before it)."),
    match: str = typer.Option("exact", "--match", metavar="MODE",
                              help="exact: every byte of each answer; or http: status, headers (volatile ones "
                                   "ignored) and body, other streams as bytes. TLS and SSH answers always differ "
                                   "from a real server's (keys, randomness)."),
    ignore_header: list[str] = typer.Option([], "--ignore-header", metavar="NAME",
                                            help="With --match http: a header not compared (repeatable)."),
    ignore_body_regex: Optional[str] = typer.Option(None, "--ignore-body-regex", metavar="RE",
                                                    help="Bytes matching RE are removed before comparing: from "
                                                         "bodies (--match http), from whole answers compared as "
                                                         "bytes (--match exact, streams that are not HTTP)."),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS", click_type=SECONDS,
                                  help="How long to wait for an answer (10, 2.5, 500ms, 1m)."),
    idle: float = typer.Option(1.0, "--idle", metavar="SECONDS", click_type=SECONDS,
                               help="Non-HTTP: an answer shorter than the recorded one, or one that differs from "
                                    "it, is complete after this much silence (what comes later is the next turn's)."),
    report: Optional[str] = typer.Option(None, "--report", metavar="FILE.json", callback=_named, help="Every difference, in JSON."),
    unacked: bool = typer.Option(False, "--unacked", help="Send, per connection of --store, the client bytes the "
                                                           "server had not acknowledged, from a message boundary."),
    as_json: bool = JSON,
):
    """Replay captured connections against a live server and compare its answers.

    Each connection's client stream is sent over a new connection, turn by turn: the client's
    bytes up to where the server answered in the original (as the ACKs order them), then its
    answer is awaited and
    compared with the recorded one: as bytes (--match exact), or as HTTP messages (--match
    http). HTTP/1.x is cut at message boundaries. Encrypted protocols (TLS, SSH) always
    answer differently from what was recorded. An answer cut short by a close, a reset or
    --timeout fails its connection at that turn. A hole in the
    client's stream is never sent as anything: such connections are skipped (or replayed up
    to it with --partial). Ctrl-C ends with the summary so far (exit 130). Exit 0 when every
    connection replayed answered as recorded, 1 when one differed or failed or nothing at all
    was compared, 2 for bad input.

    \b
    Examples:
      flowsift replay trace.pcap --to 127.0.0.1:8080 --match http --report diff.json
      flowsift replay trace.pcap --to staging:80 --server-port 80 --speed 1 -j 32
      flowsift replay --unacked --store run1 --to 10.0.0.2:80
    """
    from flowsift.render import print_replay
    if unacked:
        from click.core import ParameterSource
        # they cut, pace or compare turns: --unacked sends one span per connection and compares nothing
        given = [f"--{name}" for name in ("match", "partial", "speed", "idle")
                 if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
        if given:
            _fail(f"{', '.join(given)}: not with --unacked (it sends what the server had not acknowledged, "
                  "and compares nothing)")
    if speed == "max":
        pace = None
    else:
        try:
            pace = float(speed)
            assert pace > 0
        except (ValueError, AssertionError):
            _fail(f"--speed {speed!r}: 'max' or a positive number")
    if concurrency < 1:
        _fail("--concurrency must be at least 1")
    if match != "http" and ignore_header:
        _fail("--ignore-header goes with --match http (--match exact compares answers as bytes)")
    bounds = parse_settings(reassembly)
    if store is not None and (filter is not None or policy != "first" or reassembly or vlan_key or checksums != "ignore"):
        # a kept store was reassembled when it was written: these would change nothing
        _fail("--filter, --policy, --reassembly, --vlan-key and --checksums read a capture: a --store was read "
              "already")
    _refuse_overwrite([("input capture", source), ("store", store)], [("--report", report)])
    if unacked:
        from flowsift.replay import replay_unacked
        if store is None or source is not None:
            _fail("--unacked replays a kept store: give --store DIR (and no capture)")
        result = replay_unacked(store, to, timeout=timeout, report=report, concurrency=concurrency,
                                server_port=server_port, limit=limit, on_notice=say)
        typer.echo(json.dumps(result)) if as_json else print_replay(result)
        _replay_exit(result)
        return
    from flowsift.replay import replay as run
    bar, task = None, None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        bar = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=True)

    def start(total):
        nonlocal task
        if bar is not None:
            bar.start()
            task = bar.add_task("replay", total=total)

    def done(r):
        if bar is not None and task is not None:
            bar.advance(task)
    try:
        result = run(source, to, store=store, filter_expression=filter, server_port=server_port, speed=pace,
                     concurrency=concurrency, limit=limit, partial=partial, match=match, ignore_headers=ignore_header,
                     ignore_body=ignore_body_regex, timeout=timeout, idle=idle, report=report, on_start=start,
                     on_conversation=done, policy=policy, reassembly=bounds, on_notice=say, vlan_key=vlan_key,
                     checksums=checksums)
    finally:
        if bar is not None:
            bar.stop()
    typer.echo(json.dumps(result)) if as_json else print_replay(result)
    _replay_exit(result)


def _replay_exit(result):
    """As diff(1): 0 when every connection replayed answered as recorded, 1 when one differed or
    failed, or when not one answer was compared (nothing shows the server answers as recorded);
    130 when Ctrl-C ended it, 143 when SIGTERM did (after the summary so far)."""
    if result.get("interrupted"):
        term = result.get("signal") == "SIGTERM"
        typer.echo(f"flowsift: {'terminated' if term else 'interrupted'}", err=True)
        raise typer.Exit(143 if term else 130)
    if result.get("differing") or result.get("failed"):
        raise typer.Exit(1)
    if "turns" in result and not result["turns"]:
        why = ("no connection was replayed" if not result["connections"]
               else "no turn had a whole recorded answer to compare with")
        typer.echo(f"flowsift: nothing compared: {why}", err=True)
        raise typer.Exit(1)


@app.command()
def analyze(
    modules: list[str] = typer.Argument(..., metavar="MODULE...", help="Modules: built-in names or path.py[:Class]."),
    as_json: bool = JSON,
):
    """Find state a module keeps outside the state API (a static check: no hook is called).

    Reports attributes of self and module-level names changed in hook methods, closure
    variables and mutable default arguments, each with file:line, whether it looks per-flow,
    cross-flow (keyed by which flow fields) or global, and the declaration that fits
    (flow.state, CrossFlow(key=...), Global(); docs/state.md). Exit 1 when something is found.

    \b
    Examples:
      flowsift analyze counter http tls dns
      flowsift analyze ./mymodule.py:Mine --json
    """
    from flowsift.analyze import analyze as run
    results = [run(m) for m in modules]
    if as_json:
        typer.echo(json.dumps(results if len(results) > 1 else results[0]))
    else:
        for r in results:
            declared = ", ".join(f"{k} = {v}" for k, v in r["declared"].items()) or "flow.state only"
            typer.echo(f"{r['module']} ({r['file']}): declared {declared}; "
                       f"{len(r['findings'])} undeclared state{'s' if len(r['findings']) != 1 else ''}")
            for f in r["findings"]:
                typer.echo(f"  {f['file']}:{f['line']}: {f['what']} [{f['kind']}] -> {f['suggestion']}")
    if any(r["findings"] for r in results):
        raise typer.Exit(1)


@app.command("modules")
def modules_cmd(name: Optional[str] = typer.Argument(None, metavar="NAME", help="A module: print its documentation.")):
    """List the modules flowsift can find, or print one module's documentation."""
    from flowsift.modules.loader import BUILTINS, find

    if name:
        cls = find(name)
        typer.echo(f"{cls.name}: " + _inspect.cleandoc(cls.__doc__))
        hooks = ", ".join(cls.hooks()) or "none"
        # (what the class declares, below the docstring's own words)
        writes = "read-only" if cls.read_only() else "writes " + ", ".join(sorted(cls.writes))
        typer.echo(f"\nHooks: {hooks}\nDeclared: reads {', '.join(sorted(cls.reads)) or 'nothing'}; {writes}")
        return
    import shutil
    import textwrap
    from flowsift.modules.loader import plugins
    width = max(40, shutil.get_terminal_size().columns - 1)
    listed = [(n, None) for n in sorted(BUILTINS)] + [(n, where) for n, where in sorted(plugins().items())
                                                     if n not in BUILTINS]
    for n, where in listed:
        try:
            cls = find(n)
            summary = " ".join(_inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split()) or "(no description)"
        except Exception as e:           # one broken plug-in costs its line, not the listing
            summary = f"cannot load: {e}"
        if where:
            summary += f" [{where}]"
        typer.echo(textwrap.fill(summary, width, initial_indent=f"{n:12} ", subsequent_indent=" " * 13,
                                 break_on_hyphens=False))


def _reflow(doc):
    """A docstring as rich help shows it well: each prose paragraph on one line (rich wraps it
    to the terminal; it would keep the source's line breaks and wrap each line again), and
    the lines of a \\b paragraph (examples) kept as they are, without the \\b mark (rich keeps
    line breaks; click's plain help needs the mark)."""
    out = []
    for para in _inspect.cleandoc(doc).split("\n\n"):
        out.append(para[1:].lstrip("\n") if para.startswith("\b") else " ".join(para.split("\n")))
    return "\n\n".join(out)


def _rich_help():
    # typer formats help with rich when it is installed; without it, click wraps paragraphs
    # itself and needs the \b marks, so docstrings are left as they are
    import importlib.util
    if importlib.util.find_spec("rich") is None:
        return
    for info in app.registered_commands:
        if info.help is None and info.callback.__doc__:
            info.help = _reflow(info.callback.__doc__)


_rich_help()


def _command():
    """The click command of the app, its arguments' help filled in: click 8.5's Parameter sets
    `help` itself, over the one typer's argument was given (the help showed no argument's)."""
    import inspect
    from typer.models import ArgumentInfo
    command = typer.main.get_command(app)
    by_name = {info.name or info.callback.__name__.replace("_", "-"): info.callback for info in app.registered_commands}
    for name, sub in command.commands.items():
        defaults = {p.name: p.default for p in inspect.signature(by_name[name]).parameters.values()}
        for param in sub.params:
            given = defaults.get(param.name)
            if isinstance(given, ArgumentInfo) and given.help and not getattr(param, "help", None):
                param.help = given.help
    return command


def _command_named():
    """The command the command line names: its first word that names one (None if none)."""
    names = typer.main.get_command(app).commands
    return next((a for a in sys.argv[1:] if a in names), None)


def _usage_error(e):
    """click's usage error (unknown option or command, missing or bad argument) as one line,
    `flowsift: COMMAND: what (see flowsift COMMAND --help)`, instead of its usage block."""
    import click
    ctx = e.ctx
    command = ctx.info_name if ctx is not None and ctx.parent is not None else None
    if ctx is None:
        # (an option missing its value is raised without a context)
        command = _command_named()
    what = " ".join(e.format_message().split())
    # typer and click (8.4 on) each add a hint to a mistyped command: it is said once
    import re
    for hint in list(re.finditer(r"\s*\(?Did you mean [^?]*\?\)?", what))[1:][::-1]:
        what = what[:hint.start()] + what[hint.end():]
    what = what[:1].lower() + what[1:]
    what = what[:-1] if what.endswith(".") and not what.endswith("..") else what
    see = f"flowsift {command} --help" if command else "flowsift --help"
    typer.echo(f"flowsift: {command + ': ' if command else ''}{what} (see {see})", err=True)
    sys.exit(e.exit_code if isinstance(e, click.UsageError) else 2)


def main():
    import click
    take_stops()                # (already taken when started as flowsift.__main__)
    collect_less()
    # results that cannot be written (a full disk) are said as `stdout: cannot write: ...`
    from flowsift.paths import name_stdout
    name_stdout()
    try:
        # click's (and typer's) main would turn Ctrl-C and a closed pipe into bare exit codes:
        # the command runs here so that every outcome is said in one line below. A stop is
        # raised only while it runs: one while that line is said, or at exit, is dropped
        try:
            with stops_raised():
                command = _command()
                # the program's name, however it was started (`python -m flowsift` is the same program)
                with command.make_context("flowsift", sys.argv[1:]) as ctx:
                    command.invoke(ctx)
        except click.exceptions.Exit as e:      # --help, --version, ctx.exit(), an exit status
            code = e.exit_code
        else:
            code = 0
        # what stdout still holds goes out here, not as Python exits: a failure to write it is
        # said below, as one while the command ran is
        if sys.stdout is not None:
            sys.stdout.flush()
        sys.exit(code)
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()                    # no arguments at all: the help, as before
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _usage_error(e)
    except click.Abort:
        typer.echo("flowsift: aborted", err=True)
        sys.exit(1)
    except FlowsiftError as e:
        if os.environ.get("FLOWSIFT_DEBUG"):
            import traceback
            traceback.print_exc()
        said = f"flowsift: {e}"
        if isinstance(e, UsageError):
            # the command named as in click's own usage errors (_usage_error; not their pointer
            # to --help: these say what to give)
            command = _command_named()
            if command:
                said = f"flowsift: {command}: {e}"
        # a file name that is not UTF-8 shows its bytes as \xNN, as ls -b would
        typer.echo(said.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("flowsift: interrupted", err=True)
        sys.exit(130)
    except Terminated:
        typer.echo("flowsift: terminated", err=True)
        sys.exit(143)
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as e:
        if os.environ.get("FLOWSIFT_DEBUG"):
            raise
        typer.echo(f"flowsift: internal error: {type(e).__name__}: {e} (FLOWSIFT_DEBUG=1 shows where)", err=True)
        sys.exit(1)
    finally:
        # the command has ended (and said so)
        ignore_stops()
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except BaseException:
            # stdout cannot be written (said above, or an error was said already): what it
            # holds goes nowhere, not into a second message as Python exits
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        # Python takes a KeyboardInterrupt that went through exec() or eval() of a string (a
        # dataclass or namedtuple being made) for unhandled, even once caught, and then kills
        # itself with SIGINT as it exits, for an exit status of -2, not 130: an exec of nothing
        # forgets it
        exec("")
        # Python's collections at shutdown would walk every object of the imported modules
        # (20-60 ms) to find nothing: the exit frees them all
        gc.freeze()
