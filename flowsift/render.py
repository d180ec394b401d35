"""Tables for people (rich). Machines get --json instead."""
import re

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flowsift.io.reasons import REASON_HELP, linktype_label
from flowsift.streams.format import vlan_text


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class _DataConsole(Console):
    """A console for text that comes from captures, file names and traffic: no rich markup
    ("[/]" in an interface name is text, not a tag) and no control characters (an escape
    sequence in a Host header must not reach the terminal): those are shown as \\xNN."""

    def __init__(self, **kw):
        super().__init__(markup=False, emoji=False, **kw)

    def render_str(self, text, **kw):
        return super().render_str(_clean(text), **kw)

    def on_broken_pipe(self):
        # the reader of our tables went away (`| head`): said as for any other output (cli.main),
        # not with rich's own exit 1
        self.quiet = True
        raise BrokenPipeError


def _clean(text):
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _console(stderr=False):
    """Tables go to a terminal folded to its width; piped or redirected (COLUMNS unset),
    they are not folded at all, so that grep and cut see whole addresses."""
    import os
    import sys
    stream = sys.stderr if stderr else sys.stdout
    if not stream.isatty() and "COLUMNS" not in os.environ:
        return _DataConsole(stderr=stderr, width=1000)
    return _DataConsole(stderr=stderr)


def _n(x):
    return f"{x:,}"


def _count(n, noun, plural=None):
    """`1 file`, `2 files`: a count with its noun agreeing."""
    return f"{_n(n)} {noun if n == 1 else plural or noun + 's'}"


def _bytes(x):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{x:,.0f} {unit}" if unit == "B" else f"{x:,.1f} {unit}"
        x /= 1024


def _not_decoded(s):
    """`14 not decoded: link type 147 (USER0) unsupported`: the packets no connection holds for
    want of decoding, naming the link types flowsift does not decode (None: there are none)."""
    n = s.get("not_decoded")
    if not n:
        return None
    lts = s.get("unsupported_link_types") or []
    said = ", ".join(f"{linktype_label(x['linktype'])} unsupported" for x in lts)
    if not lts:
        return f"{_n(n)} not decoded"
    if sum(x["packets"] for x in lts) == n:
        return f"{_n(n)} not decoded: {said}"
    return f"{_n(n)} not decoded ({_n(sum(x['packets'] for x in lts))} of them: {said})"


def _capture_line(s):
    """What a live source took and lost: `received 7,000 of 9,262 (2,262 dropped by the kernel:
    ring full; 0 left in the ring), stopped by SIGINT after 4.1 s` (for a file, only what -c
    read of it, else None)."""
    k = s.get("kernel")
    if not k:
        # (a file read as far as its first N packets: the summary is of those alone)
        return f"the file's first {_n(s['count'])} packets (-c)" if s.get("count") else None
    lost = []
    if "kernel_packets" in k:           # AF_PACKET
        head = f"received {_n(k['received'])} of {_n(k['kernel_packets'])}"
        lost.append(f"{_n(k['kernel_drops'])} dropped by the kernel (ring full)")
        lost.append(f"{_n(k['left_in_ring'])} left in the ring")
    else:                               # DPDK
        head = f"received {_n(k['received'])}"
        for key, what in (("port_imissed", "missed by the port"), ("port_ierrors", "receive errors"),
                          ("port_rx_nombuf", "lost for want of buffers"), ("truncated", "cut to a buffer")):
            if k.get(key):
                lost.append(f"{_n(k[key])} {what}")
    line = head + (f" ({'; '.join(lost)})" if lost else "")
    return line + f", stopped by {k['stopped_by'] or '-'} after {k['seconds']:,.1f} s"


def _held_line(s):
    """The frames a live source lost while the chain held the capture back for its modules,
    naming them and the remedy (None: none were lost so)."""
    k = s.get("kernel") or {}
    if not k.get("lost_while_held"):
        return None
    if "kernel_drops" in k:
        lost, what = k["kernel_drops"], "kernel drops"
    else:
        lost, what = k.get("port_imissed", 0) + k.get("port_rx_nombuf", 0), "frames the port missed"
    held = sorted(((m, h) for m, h in k["held_back"].items() if h["lost"]), key=lambda x: -x[1]["lost"])
    who = ", ".join(f"{m} ({h['seconds']:,.1f} s in {_count(h['waits'], 'wait')})" for m, h in held)
    return (f"{_n(k['lost_while_held'])} of the {_n(lost)} {what} came while the capture waited for "
            f"module{'s' * (len(held) != 1)} {who}, too slow for the traffic: --max-backlog N lets a module "
            f"N batches behind lose connections (counted) instead of holding the capture back")


def print_stats(s, console=None):
    console = console or _console()
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column()
    # (a live source has no size)
    size = f", {_bytes(s['size'])}" if s['size'] or s['format'] not in ("afpacket", "dpdk") else ""
    head.add_row("file", f"{s['file']} ({s['format']} {s['version']}{size})")
    if _capture_line(s):
        head.add_row("capture", _capture_line(s))
    head.add_row("packets", _n(s["packets"]) + (f"  ({_n(s['filtered'])} rejected by filter {s['filter']!r})" if s["filter"] else ""))
    head.add_row("bytes", f"{_bytes(s['bytes_captured'])} captured, {_bytes(s['bytes_wire'])} on the wire")
    if s["time"]:
        t = s["time"]
        head.add_row("time", f"{t['first']} .. {t['last']}  ({t['duration_s']:,.3f} s)")
    by = " (5-tuple and VLAN ids)" if s["flows"].get("vlan_key") else ""
    head.add_row("flows", f"{_count(s['flows']['tcp'], 'TCP connection')}, {_count(s['flows']['udp'], 'UDP flow')}{by}")
    if s.get("error"):
        # (reading stopped there: the counts are of what came before)
        head.add_row("error", Text(s["error"], style="red"))
    console.print(head)

    if s["flows"].get("vlan_key"):
        vt = Table(title="flows by VLAN", title_justify="left")
        for col in ("vlan", "tcp", "udp"):
            vt.add_column(col, justify="left" if col == "vlan" else "right")
        for v in s["flows"]["by_vlan"]:
            vt.add_row(vlan_text(v["vlan"]), _n(v["tcp"]), _n(v["udp"]))
        console.print(vt)

    ifs = Table(title="interfaces", title_justify="left")
    for col in ("#", "link type", "snaplen", "name", "packets"):
        ifs.add_column(col, justify="right" if col in ("#", "snaplen", "packets") else "left")
    for i in s["interfaces"]:
        ifs.add_row(str(i["index"]), f"{i['linktype_name']} ({i['linktype']})", str(i["snaplen"]), i["name"] or "", _n(i["packets"]))
    console.print(ifs)

    pt = Table(title="decoded", title_justify="left")
    pt.add_column("protocol")
    pt.add_column("packets", justify="right")
    for name, n in s["protocols"].items():
        pt.add_row(name, _n(n))
    pt.add_row(Text("total", style="bold"), Text(_n(s["decoded"]), style="bold"))
    console.print(pt)

    rebuilt = s["ip"].get("undecoded_datagrams", {})
    if s["undecoded"] or rebuilt:
        ut = Table(title="not decoded", title_justify="left")
        ut.add_column("reason")
        ut.add_column("packets", justify="right")
        ut.add_column("meaning")
        for reason, n in s["undecoded"].items():
            extra = ""
            if reason == "non_ip" and s["non_ip"]:
                extra = " (" + ", ".join(f"{k} {_n(v)}" for k, v in s["non_ip"].items()) + ")"
            elif reason == "unsupported_link_type" and s.get("unsupported_link_types"):
                extra = " (" + ", ".join(f"{linktype_label(x['linktype'])}: {_n(x['packets'])}" for x in s["unsupported_link_types"]) + ")"
            ut.add_row(reason, _n(n), REASON_HELP.get(reason, "") + extra)
        for reason, n in rebuilt.items():
            # (not frames: their fragments decoded, and are counted as such above)
            ut.add_row(reason, _n(n), REASON_HELP.get(reason, "") + " (datagrams rebuilt from fragments)")
        console.print(ut)

    notes = {k: v for k, v in s["anomalies"].items() if v}
    if notes:
        console.print("notes: " + ", ".join(f"{k.replace('_', ' ')} {_n(v)}" for k, v in notes.items()))
    if "checksums" in s:
        c = s["checksums"]
        console.print("checksums verified: wrong " + ", ".join(f"{k} {_n(v)}" for k, v in c["bad"].items())
                      + "; not verifiable " + ", ".join(f"{k.replace('_', ' ')} {_n(v)}" for k, v in c["unverified"].items())
                      + f"; UDP without checksum {_n(c['udp_without_checksum'])}")


def print_streams(s, console=None):
    console = console or _console()
    t = Table(title="streams", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    if _capture_line(s):
        t.add_row("capture", _capture_line(s))
    t.add_row("connections", f"{_n(s['tcp'])} TCP, {_n(s['udp'])} UDP{_by_vlan(s)}")
    # every packet read: in a connection, or why not
    why = []
    if s.get("filtered"):
        why.append(f"{_n(s['filtered'])} rejected by the filter")
    late = s.get("engine", {}).get("late_packets", 0)
    if late:
        why.append(f"{_n(late)} late, after their connection ended")
    if s.get("not_decoded"):
        why.append(_not_decoded(s))
    if s.get("other_protocols"):
        why.append(f"{_n(s['other_protocols'])} of other protocols than TCP and UDP")
    frag = s.get("fragments", {})
    if frag.get("fragments"):
        why.append(f"{_count(frag['fragments'], 'fragment')} made {_count(frag['datagrams'], 'datagram')}")
    read = s.get("capture_packets")
    t.add_row("packets", _n(s["packets"]) + (f" (of {_n(read)} read: {'; '.join(why)})"
                                             if read is not None and read != s["packets"] and why else ""))
    t.add_row("bytes delivered", _bytes(s["bytes"]))
    t.add_row("gaps", f"{_n(s['gaps'])} ({_bytes(s['gap_bytes'])} never captured)")
    t.add_row("conflicting bytes", f"{_n(s['conflicts'])} (policy {s['policy']})")
    t.add_row("retransmissions", _n(s["retransmissions"]))
    t.add_row("midstream directions", _n(s["midstream_directions"]))
    t.add_row("closed by", ", ".join(f"{k} {_n(v)}" for k, v in s["close"].items()) or "-")
    frag = s["fragments"]
    if frag["fragments"]:
        t.add_row("IP fragments", f"{_n(frag['fragments'])} -> {_count(frag['datagrams'], 'datagram')}")
    if s["output"]:
        t.add_row("written", f"{_count(s['files'], 'file')} in {s['output']} (index: {s['index']})")
        if s.get("replaced"):
            t.add_row("replaced", f"{_count(s['replaced'], 'stream file')} of an earlier run, removed first")
        if s.get("spliced_files") and s.get("gaps_in_files") == "splice":
            # only the index shows where a file's bytes jump over a hole: say it here
            t.add_row("gaps spliced out", f"{_bytes(s['spliced_gap_bytes'])} from {_count(s['spliced_files'], 'file')} "
                                          "(--gaps zeros keeps stream offsets)")
    if s.get("error"):
        # (reading stopped there: the counts above are of what came before)
        t.add_row("error", Text(s["error"], style="red"))
    console.print(t)


def _by_vlan(s):
    # what a connection is, when it is not the 5-tuple alone
    return " (told apart by VLAN too)" if s.get("vlan_key") else ""


def print_gateway(s, console=None):
    console = console or _console()
    c = s["connections"]
    t = Table(title="gateway", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("store", s["store"] or "(removed at the end)")
    if _capture_line(s):
        t.add_row("capture", _capture_line(s))
    t.add_row("record files", _n(s["files"]))
    t.add_row("records", _n(s["records"]))
    t.add_row("stream bytes", _bytes(s["bytes"]))
    t.add_row("connections", f"{_n(c['tcp'])} TCP, {_n(c['udp'])} UDP{_by_vlan(s)}")
    t.add_row("gaps", f"{_n(c['gaps'])} ({_bytes(c['gap_bytes'])})")
    t.add_row("late packets", _n(s["engine"]["late_packets"]))
    if s.get("unsupported_link_types"):
        t.add_row("packets", f"{_n(s['packets'])} read, {_not_decoded(s)}")
    if s.get("run"):
        t.add_row("run", f"{s['run']} in {s['registry']}")
        for name, n in s.get("module_progress", {}).items():
            t.add_row(f"module {name}", _count(n, 'connection'))
    w = s.get("wait_interrupted")
    if w:
        t.add_row("wait", f"ended by {w['by']}" + (f", for {', '.join(w['modules'])}" if w["modules"] else ""))
    console.print(t)


def print_module(s, console=None):
    console = console or _console(stderr=True)
    print_chain_tables(s, console)
    console.print(f"module {s['module']} (bit {s['bit']}) of run {s['run']}: {_count(s['connections'], 'connection')}, "
                  f"{_count(s['events'], 'event')}" + (" (resumed)" if s["resumed"] else ""))


def print_inspect_store(s, console=None):
    console = console or _console()
    # bytes delivered per direction (a direction's end less its gaps)
    columns = [("file", False), ("proto", False), ("client → server", False), ("records", True), ("c2s bytes", True),
               ("s2c bytes", True), ("gaps", True), ("closed", False)]
    rows = [[c["file"], str(c["proto"]), f"{c['client']} → {c['server']}", _n(c["records"]), _n(c["delivered"][0]),
             _n(c["delivered"][1]), _n(c["gaps"]), "truncated" if c.get("truncated") else "yes" if c["closed"] else "no"]
            for c in s["connections"]]
    if any("vlan" in c for c in s["connections"]):
        # (a store whose gateway keyed connections by VLAN)
        columns.insert(3, ("vlan", False))
        for row, c in zip(rows, s["connections"]):
            row.insert(3, vlan_text(c.get("vlan")))
    console.print(fitted_table(console, f"store {s['store']}", columns, rows))
    for p in s["problems"]:
        console.print(Text(_clean(p), style="red"))
    for w in s.get("warnings", ()):
        console.print(Text(_clean(w), style="yellow"))


def print_inspect_file(s, console=None):
    console = console or _console()
    head = Table(show_header=False, box=None)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("file", f"{s['file']} (format {s['version']})")
    vlan = f" vlan {vlan_text(s['vlan'])}" if "vlan" in s else ""
    head.add_row("connection", f"{s['conn']}: {s['proto']} {s['client']} -> {s['server']}{vlan}")
    head.add_row("records", f"{_n(s['records'])} (first id {s['first_record_id']})")
    if s.get("truncated"):
        head.add_row("state", Text(_clean(s["truncated"]), style="red"))
    else:
        head.add_row("state", "closed by the gateway" if s["closed"] else Text("open or cut", style="yellow"))
    if not s.get("bytes_stored", True):
        head.add_row("bytes", "counted, not stored (the run's modules read none)")
    if "cut" in s:
        head.add_row("cut", f"{s['cut']['note']} ({s['cut']['unpublished_complete_records']} complete unpublished"
                            + (", listed with their index marked *" if s['cut']['unpublished_complete_records'] else "")
                            + ")")
    console.print(head)
    columns = [("dir", False), ("bytes", True), ("readable", True), ("end", True), ("acked", True),
               ("reclaimed", True), ("midstream", False), ("close", False), ("gaps", False)]
    rows = [[x["dir"], _n(x["delivered"]), _n(x["readable"]), _n(x["end"]), _n(x["acked"]), _n(x["reclaimed"]),
             str(x["midstream"]).lower(),
             str(x["close"]),
             ", ".join(f"{o}+{l} ({r})" for o, l, r in x["gaps"]) or "-"] for x in s["streams"]]
    console.print(fitted_table(console, "streams", columns, rows))
    if s["record_list"]:
        columns = [("#", True), ("id", True), ("dir", False), ("flags", False), ("seq", True), ("ack", True),
                   ("offset", True), ("len", True), ("reassembly", False), ("modules", True)]
        rows = [[str(r["index"]) + ("" if r.get("published", True) else "*"), f"{r['id']:#018x}",
                 {0: "c2s", 1: "s2c"}.get(r["dir"], str(r["dir"])), r["flags"], str(r["seq"]), str(r["ack"]),
                 "-" if r["offset"] is None else str(r["offset"]), str(r["len"]), ", ".join(r["rflags"]) or "-",
                 f"{r['modules']:#x}"]
                for r in s["record_list"]]
        console.print(fitted_table(console, "records", columns, rows, spare=(1,),
                                   spared="id: first id + # (--json, or a wider terminal, shows them)"))
    for p in s.get("problems", ()):
        console.print(Text(_clean(p), style="red"))
    for w in s.get("warnings", ()):
        console.print(Text(_clean(w), style="yellow"))


def print_chain(s, console=None):
    console = console or _console()
    print_chain_tables(s, console)
    print_output(s, console)
    c = s["connections"]
    console.print(f"{_n(c['tcp'])} TCP and {_n(c['udp'])} UDP connections{_by_vlan(s)}, {_count(s['records'], 'record')}, "
                  f"{_count(s['events'], 'event')}")
    if _capture_line(s):
        console.print(f"capture: {_capture_line(s)}")
    if _held_line(s):
        console.print(Text(f"held back: {_held_line(s)}", style="red"))
    if s.get("unsupported_link_types"):
        console.print(f"of {_count(s['packets'], 'packet')} read, {_not_decoded(s)}")


def print_output(s, console):
    """What left with -w or --out: packets written (forwarded), edited, dropped, not editable
    and why; then the edits: accepted per module, rejected per reason."""
    e, ed = s.get("egress"), s.get("edits")
    if not e and not ed:
        return
    t = Table(title="output", title_justify="left", show_header=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")           # (folded, never cut: a file name, a reason)
    if e:
        if "file" in e:
            t.add_row("written", f"{_count(e['packets'], 'packet')} to {e['file']}")
        else:
            why = ", ".join(f"{_n(n)} {k.replace('_', ' ')}" for k, n in e.get("failed_reasons", {}).items() if n)
            t.add_row("forwarded", f"{_count(e['forwarded'], 'frame')} out of {e['out']}"
                      + (f", {_n(e['failed'])} refused" + (f" ({why})" if why else "") if e.get("failed") else ""))
        late = f" ({_n(e['late_edited'])} after their connection ended)" if e.get("late_edited") else ""
        t.add_row("edited", _n(e["edited"]) + late)
        late = f" ({_n(e['late_dropped'])} after their connection ended)" if e.get("late_dropped") else ""
        t.add_row("dropped", _n(e["dropped"] + e.get("late_dropped", 0)) + late)
        t.add_row("not editable", Text(_n(e["not_editable"]) + " (left as they came)" * bool(e["not_editable"]),
                                       style="red" if e["not_editable"] else ""))
        for reason, n in e.get("not_editable_reasons", {}).items():
            t.add_row("", Text(f"{_n(n)}: {_clean(reason)}", style="red"))
    if ed:
        accepted = ed.get("accepted", {})
        t.add_row("edits accepted", ", ".join(f"{m} {_n(n)}" for m, n in accepted.items()) or "0")
        rejected = ed.get("rejected", {})
        t.add_row("edits rejected", _n(sum(rejected.values())))
        for reason, n in rejected.items():
            t.add_row("", f"{_n(n)}: {_clean(reason)}")
    console.print(t)


# above this many rows, a table that fits unfolded is laid out here: rich measures every cell of
# every column, some 1 ms a row (20 s for the 17,840 connections of a large store)
PLAIN_ROWS = 1000


class _PlainTable:
    """A table of one-line text cells laid out as rich lays out fitted_table's when nothing
    folds (box.SIMPLE_HEAD, no outer padding), written as it goes."""

    def __init__(self, title, columns, rows, widths):
        self.title, self.columns, self.rows, self.widths = title, columns, rows, widths

    def _line(self, cells):
        return " " + "  ".join(_pad(_clean(c), w, numeric) for c, w, (_, numeric) in
                               zip(cells, self.widths, self.columns)) + " "

    def __rich_console__(self, console, options):
        from rich.segment import Segment
        total = sum(self.widths) + 2 * len(self.widths)
        yield Segment(_pad(_clean(self.title), total, False) + "\n")
        yield Segment(" " * total + "\n")
        yield Segment(self._line([h for h, _ in self.columns]) + "\n")
        yield Segment(" " + "─" * (total - 2) + " \n")
        for r in self.rows:
            yield Segment(self._line(r) + "\n")
        yield Segment(" " * total + "\n")


def _pad(text, width, right):
    from rich.cells import cell_len
    fill = " " * (width - cell_len(text))
    return fill + text if right else text + fill


def fitted_table(console, title, columns, rows, spare=(), spared=""):
    """A table of text cells made to fit the terminal. `columns`: [(header, numeric)].
    When the whole table does not fit: numbers keep their width and their headers are cut
    ("retra…"; --json carries the full names), and other values are folded onto more lines,
    never cut short (an address cut to "127.…" says nothing). If that is still too wide, the
    columns in `spare` are left out and `spared` says how to get them back."""
    from rich.cells import cell_len
    if len(rows) > PLAIN_ROWS:
        widths = [max(cell_len(_clean(h)), max(cell_len(_clean(r[i])) for r in rows))
                  for i, (h, _) in enumerate(columns)]
        total = sum(widths) + 2 * len(widths)
        if cell_len(_clean(title)) <= total <= console.width and all("\n" not in c for r in rows for c in r):
            return _PlainTable(title, columns, rows, widths)
    def build(narrow, keep):
        # (not narrower than its title, as wide as the terminal allows: a narrow table's title
        # was folded into pieces)
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  min_width=min(cell_len(_clean(title)), console.width))
        for i, (header, numeric) in enumerate(columns):
            if i not in keep:
                continue
            if numeric:
                wide = max((len(r[i]) for r in rows), default=1)
                t.add_column(Text(header, overflow="ellipsis"), justify="right", no_wrap=True, min_width=wide,
                             max_width=max(wide, 6) if narrow else None)
            else:
                # folded, but not narrower than its longest word (up to 16: an address)
                word = max((len(w) for r in rows for w in r[i].split()), default=1)
                t.add_column(Text(header, overflow="ellipsis"), overflow="fold",
                             min_width=max(min(word, 16), min(len(header), 5)))
        for r in rows:
            t.add_row(*[r[i] for i in keep])
        return t

    def size(t):
        return console.measure(t, options=console.options.update(max_width=1 << 16))

    keep = list(range(len(columns)))
    t = build(False, keep)
    if size(t).maximum > console.width:
        t = build(True, keep)
        if size(t).minimum > console.width and spare:
            t = build(True, [i for i in keep if i not in spare])
            t.caption = spared
    return t


def _module_table(console, name, rows):
    """A module's end-of-run rows (dicts) as a fitted table: its columns are every row's keys,
    in the order first seen (a row without one has an empty cell); client and server are one
    column, folded at the arrow when narrow."""
    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "conn"]
    if "vlan" in cols:
        rows = [dict(r, vlan=vlan_text(r.get("vlan"))) for r in rows]
    if "client" in cols and "server" in cols:
        cols[cols.index("client")] = "client → server"
        cols.remove("server")
        rows = [dict(r, **{"client → server": f"{r.get('client')} → {r.get('server')}"}) for r in rows]
    columns = [(c.replace("_", " "), all(_numeric(r[c]) for r in rows if r.get(c) is not None)) for c in cols]
    return fitted_table(console, name, columns, [[_cell(r.get(c)) for c in cols] for r in rows])


def _on_vlan(c):
    # ", vlan 10" for a connection of a run keyed by VLAN
    return f", vlan {vlan_text(c['vlan'])}" if "vlan" in c else ""


def _cell(v):
    # a list of numbers or text as a/b (counter's bytes: to server/to client); what nests, as
    # compact JSON (a dict's repr is Python's, not what --json gives)
    if v is None:
        return ""
    if isinstance(v, list) and not any(isinstance(x, (list, dict)) for x in v):
        return "/".join(map(str, v))
    if isinstance(v, (list, dict)):
        import json
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    return str(v)


def _numeric(v):
    return isinstance(v, (int, float)) or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))


def print_chain_tables(s, console):
    for name, rows in s.get("tables", {}).items():
        if not rows:
            continue
        t = _module_table(console, name, rows[:50])
        if len(rows) > 50:
            t.caption = f"{len(rows) - 50:,} more rows (use --json or --events)"
        console.print(t)
    m = Table(title="modules", title_justify="left")
    m.add_column("module")
    m.add_column("counters")
    for name, counters in s["modules"].items():
        m.add_row(name, ", ".join(f"{k} {_n(v)}" for k, v in counters.items()))
    console.print(m)


def _more(console, total, shown, every):
    if total > shown:
        console.print(f"  ... and {_n(total - shown)} more; {every}")


def print_replay(s, console=None):
    console = console or _console()
    what = "unacknowledged bytes" if s.get("mode") == "unacked" else s.get("match", "exact")
    t = Table(title=f"replay against {s['target']} ({what})", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for key in ("connections", "identical", "uncompared", "differing", "sent", "failed", "turns", "turns_identical",
                "turns_differing", "turns_unanswered", "turns_incomplete", "partial", "messages", "answers", "bytes"):
        if key in s:
            t.add_row(key.replace("_", " "), _n(s[key]))
    for reason, n in s.get("skipped", {}).items():
        t.add_row(f"skipped: {reason}", _n(n))
    if s.get("seconds") is not None:
        t.add_row("seconds", f"{s['seconds']:.2f}")
    console.print(t)
    if s.get("uncompared"):
        console.print(f"uncompared: {_n(s['uncompared'])} with nothing to compare (the original's answers "
                      "missing or not whole)")
    if s.get("partial"):
        console.print(f"partial: {_n(s['partial'])} replayed up to a gap in the client's stream, and no further")
    every = "--report has all" if s.get("report") else "--report FILE.json lists all"
    for u in s.get("uncompared_connections", []):
        console.print(f"  uncompared: connection {u['conn']} ({u['client']} -> {u['server']}{_on_vlan(u)}): {u['why']}")
    _more(console, s.get("uncompared", 0), len(s.get("uncompared_connections", [])), every)
    for f in s.get("failures", []):
        console.print(f"  failed: connection {f['conn']} ({f['client']}{_on_vlan(f)}): {f['reason']}")
    _more(console, s.get("failed", 0), len(s.get("failures", [])), every)
    for d in s.get("first_differences", []):
        # (a turn with nothing sent is a server's greeting: SMTP, FTP)
        what = repr(d["request"]) if d["request"] else "(the server's greeting)"
        console.print(f"  differs: connection {d['conn']} ({d['client']} -> {d['server']}{_on_vlan(d)}) turn {d['turn']} "
                      f"{what}: {', '.join(d['what'])}")
    _more(console, s.get("turns_differing", 0), len(s.get("first_differences", [])), every)
    if s.get("report"):
        console.print(f"every difference: {s['report']}")
    if s.get("interrupted"):
        console.print("interrupted: the summary covers the connections that finished")
