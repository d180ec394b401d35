"""Tables for people (rich). Machines get --json instead."""
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flowsift.io.reasons import REASON_HELP


def _n(x):
    return f"{x:,}"


def _bytes(x):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{x:,.0f} {unit}" if unit == "B" else f"{x:,.1f} {unit}"
        x /= 1024


def print_stats(s, console=None):
    console = console or Console()
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("file", f"{s['file']} ({s['format']} {s['version']}, {_bytes(s['size'])})")
    head.add_row("packets", _n(s["packets"]) + (f"  ({_n(s['filtered'])} rejected by filter {s['filter']!r})" if s["filter"] else ""))
    head.add_row("bytes", f"{_bytes(s['bytes_captured'])} captured, {_bytes(s['bytes_wire'])} on the wire")
    if s["time"]:
        t = s["time"]
        head.add_row("time", f"{t['first']} .. {t['last']}  ({t['duration_s']:,.3f} s)")
    head.add_row("flows", f"{_n(s['flows']['tcp'])} TCP connections, {_n(s['flows']['udp'])} UDP flows")
    console.print(head)

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
    pt.add_row("[bold]total[/bold]", f"[bold]{_n(s['decoded'])}[/bold]")
    console.print(pt)

    if s["undecoded"]:
        ut = Table(title="not decoded", title_justify="left")
        ut.add_column("reason")
        ut.add_column("packets", justify="right")
        ut.add_column("meaning")
        for reason, n in s["undecoded"].items():
            extra = ""
            if reason == "non_ip" and s["non_ip"]:
                extra = " (" + ", ".join(f"{k} {_n(v)}" for k, v in s["non_ip"].items()) + ")"
            ut.add_row(reason, _n(n), REASON_HELP.get(reason, "") + extra)
        console.print(ut)

    notes = {k: v for k, v in s["anomalies"].items() if v}
    if notes:
        console.print("notes: " + ", ".join(f"{k.replace('_', ' ')} {_n(v)}" for k, v in notes.items()))


def print_streams(s, console=None):
    console = console or Console()
    t = Table(title="streams", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("connections", f"{_n(s['tcp'])} TCP, {_n(s['udp'])} UDP")
    t.add_row("packets", _n(s["packets"]))
    t.add_row("bytes delivered", _bytes(s["bytes"]))
    t.add_row("gaps", f"{_n(s['gaps'])} ({_bytes(s['gap_bytes'])} never captured)")
    t.add_row("conflicting bytes", f"{_n(s['conflicts'])} (policy {s['policy']})")
    t.add_row("retransmissions", _n(s["retransmissions"]))
    t.add_row("midstream directions", _n(s["midstream_directions"]))
    t.add_row("closed by", ", ".join(f"{k} {_n(v)}" for k, v in s["close"].items()) or "-")
    frag = s["fragments"]
    if frag["fragments"]:
        t.add_row("IP fragments", f"{_n(frag['fragments'])} -> {_n(frag['datagrams'])} datagrams")
    if s["output"]:
        t.add_row("written", f"{_n(s['files'])} files in {s['output']} (index: {s['index']})")
    console.print(t)


def print_gateway(s, console=None):
    console = console or Console()
    c = s["connections"]
    t = Table(title="gateway", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("store", s["store"])
    t.add_row("record files", _n(s["files"]))
    t.add_row("records", _n(s["records"]))
    t.add_row("stream bytes", _bytes(s["bytes"]))
    t.add_row("connections", f"{_n(c['tcp'])} TCP, {_n(c['udp'])} UDP")
    t.add_row("gaps", f"{_n(c['gaps'])} ({_bytes(c['gap_bytes'])})")
    t.add_row("late packets", _n(s["engine"]["late_packets"]))
    if s.get("run"):
        t.add_row("run", f"{s['run']} in {s['registry']}")
        for name, n in s.get("module_progress", {}).items():
            t.add_row(f"module {name}", f"{_n(n)} connections")
    console.print(t)


def print_module(s, console=None):
    console = console or Console(stderr=True)
    print_chain_tables(s, console)
    console.print(f"module {s['module']} (bit {s['bit']}) of run {s['run']}: {_n(s['connections'])} connections, "
                  f"{_n(s['events'])} events" + (" (resumed)" if s["resumed"] else ""))


def print_inspect_store(s, console=None):
    console = console or Console()
    t = Table(title=f"store {s['store']}", title_justify="left")
    for col in ("file", "proto", "client", "server", "records", "c2s end", "s2c end", "gaps", "closed"):
        t.add_column(col, justify="right" if col in ("records", "c2s end", "s2c end", "gaps") else "left")
    for c in s["connections"]:
        t.add_row(c["file"], c["proto"], c["client"], c["server"], _n(c["records"]), _n(c["bytes"][0]),
                  _n(c["bytes"][1]), _n(c["gaps"]), "yes" if c["closed"] else "no")
    console.print(t)
    for p in s["problems"]:
        console.print(f"[red]{p}[/red]")


def print_inspect_file(s, console=None):
    console = console or Console()
    head = Table(show_header=False, box=None)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("file", f"{s['file']} (format {s['version']})")
    head.add_row("connection", f"{s['conn']}: {s['proto']} {s['client']} -> {s['server']}")
    head.add_row("records", f"{_n(s['records'])} (first id {s['first_record_id']})")
    head.add_row("state", "closed by the gateway" if s["closed"] else "[yellow]open or cut[/yellow]")
    if "cut" in s:
        head.add_row("cut", f"{s['cut']['note']} ({s['cut']['unpublished_complete_records']} complete unpublished)")
    console.print(head)
    st = Table(title="streams", title_justify="left")
    for col in ("dir", "bytes", "acked", "reclaimed", "midstream", "close", "gaps"):
        st.add_column(col)
    for x in s["streams"]:
        st.add_row(x["dir"], _n(x["end"]), str(x["acked"]), _n(x["reclaimed"]), str(x["midstream"]), str(x["close"]),
                   ", ".join(f"{o}+{l} ({r})" for o, l, r in x["gaps"]) or "-")
    console.print(st)
    if s["record_list"]:
        rt = Table(title="records", title_justify="left")
        for col in ("#", "id", "dir", "flags", "seq", "ack", "offset", "len", "reassembly", "modules"):
            rt.add_column(col, justify="right" if col in ("#", "seq", "ack", "offset", "len") else "left")
        for r in s["record_list"]:
            rt.add_row(str(r["index"]), f"{r['id']:#018x}", "c2s" if r["dir"] == 0 else "s2c", r["flags"], str(r["seq"]),
                       str(r["ack"]), str(r["offset"]), str(r["len"]), ",".join(r["rflags"]) or "-", f"{r['modules']:#x}")
        console.print(rt)


def print_chain(s, console=None):
    console = console or Console(stderr=False)
    print_chain_tables(s, console)
    c = s["connections"]
    console.print(f"{_n(c['tcp'])} TCP and {_n(c['udp'])} UDP connections, {_n(s['records'])} records, "
                  f"{_n(s['events'])} events")


def _module_table(name, rows, narrow):
    """A module's end-of-run rows as a table. `narrow` (the terminal is narrower than the
    table): numbers keep their width and their headers are cut ("retra…"; the JSON output
    and the events carry the full names), and other values are folded onto more lines,
    never cut short (an address cut to "127.…" says nothing)."""
    t = Table(title=name, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    cols = [c for c in rows[0] if c != "conn"]
    if "client" in cols and "server" in cols:
        # one column, folded at the arrow when narrow
        cols[cols.index("client")] = "client → server"
        cols.remove("server")
        rows = [dict(r, **{"client → server": f"{r.get('client')} → {r.get('server')}"}) for r in rows]
    for c in cols:
        header = c.replace("_", " ")
        if all(_numeric(r.get(c)) for r in rows):
            wide = max(len(_cell(r.get(c))) for r in rows)
            t.add_column(Text(header, overflow="ellipsis"), justify="right", no_wrap=True, min_width=wide,
                         max_width=max(wide, 6) if narrow else None)
        else:
            t.add_column(header, overflow="fold")
    for r in rows:
        t.add_row(*[_cell(r.get(c)) for c in cols])
    return t


def _cell(v):
    return "/".join(map(str, v)) if isinstance(v, list) else "" if v is None else str(v)


def _numeric(v):
    return isinstance(v, (int, float)) or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))


def print_chain_tables(s, console):
    for name, rows in s.get("tables", {}).items():
        if not rows:
            continue
        rows = rows[:50]
        t = _module_table(name, rows, narrow=False)
        if console.measure(t, options=console.options.update(max_width=1 << 16)).maximum > console.width:
            t = _module_table(name, rows, narrow=True)
        if len(s["tables"][name]) > 50:
            t.caption = f"{len(s['tables'][name]) - 50:,} more rows (use --json or --events)"
        console.print(t)
    m = Table(title="modules", title_justify="left")
    m.add_column("module")
    m.add_column("counters")
    for name, counters in s["modules"].items():
        m.add_row(name, ", ".join(f"{k} {_n(v)}" for k, v in counters.items()))
    console.print(m)


def print_replay(s, console=None):
    console = console or Console()
    t = Table(title=f"replay against {s['target']} ({s.get('match', 'exact')})", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for key in ("connections", "identical", "differing", "sent", "failed", "turns", "turns_identical",
                "turns_differing", "turns_unanswered", "partial", "messages", "answers", "bytes"):
        if key in s:
            t.add_row(key.replace("_", " "), _n(s[key]))
    for reason, n in s.get("skipped", {}).items():
        t.add_row(f"skipped: {reason}", _n(n))
    if s.get("seconds") is not None:
        t.add_row("seconds", f"{s['seconds']:.2f}")
    console.print(t)
    for f in s.get("failures", []):
        console.print(f"  failed: connection {f['conn']} ({f['client']}): {f['reason']}")
    for d in s.get("first_differences", []):
        console.print(f"  differs: connection {d['conn']} ({d['client']} -> {d['server']}) turn {d['turn']} "
                      f"{d['request']!r}: {', '.join(d['what'])}", markup=False)
    if s.get("report"):
        console.print(f"every difference: {s['report']}")
    if s.get("interrupted"):
        console.print("interrupted: the summary covers the connections that finished")
