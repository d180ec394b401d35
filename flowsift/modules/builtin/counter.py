from flowsift.modules.base import Module
from flowsift.modules.state import Global
from flowsift.streams.format import vlan_field


class Counter(Module):
    """Per-flow packets, bytes, retransmissions, gaps and conflicts.

    Synopsis: counter
    Reads: the records and gaps of each connection at its end (in bulk)
    Writes: nothing (read-only)
    Options: none
    Counters: flows, packets, bytes, gaps (holes: gap entries with no byte between them count
              once, as in `flowsift streams`), rows_not_kept (flows past the table's 10,000
              rows: their events still carry them)
    Events: "flow", per connection: packets and bytes per direction (bytes: payload captured,
            retransmitted copies included, as on the wire; `flowsift streams` counts the bytes
            delivered), gaps and gap_bytes, conflicting_segments, retransmissions, close (the
            connection's reason, as on_close gets it: rst if either side reset it, fin if both
            sides closed with FIN, else what ended the side a FIN did not: reused, evicted,
            timeout or eof); with --vlan-key, rows and events name the connection's VLAN ids too
    Example: flowsift chain counter trace.pcap
             emits one "flow" event per connection when it closes and prints a table at the end
    """
    name = "counter"
    reads = {"records", "gaps"}               # not the bytes: a chain of such modules does not store them
    rows = Global(list, append_only=True)     # one row per finished flow, for the end-of-run table
    # the table (and the summary's copy of it) stops there: its memory must not grow with every
    # connection a long run or a flood sees; each flow's event has its row anyway
    MAX_ROWS = 10_000

    def on_close(self, flow, reason):
        # everything is read once, at the end, in bulk: the packet totals in one pass over the
        # records, the gaps from the gap table
        s = flow.state
        t = flow.totals()
        s["packets"] = list(t.packets)
        s["bytes"] = list(t.bytes)
        s["conflicts"] = t.conflicts
        s["retrans"] = t.retransmissions
        s["gaps"], s["gap_bytes"] = [0, 0], [0, 0]
        ends = [None, None]
        for g in flow.gaps():
            # entries that follow each other with no byte between (one per cut record, then the
            # loss at the end...) are one hole, as the streams index and summaries count them
            if g.offset != ends[g.dir]:
                s["gaps"][g.dir] += 1
            ends[g.dir] = g.offset + g.length
            s["gap_bytes"][g.dir] += g.length
        row = {"conn": flow.conn, "proto": flow.proto, "client": flow.client, "server": flow.server,
               **vlan_field(flow.vlan), "packets": s["packets"], "bytes": s["bytes"], "gaps": s["gaps"], "gap_bytes": s["gap_bytes"],
               "conflicting_segments": s["conflicts"], "retransmissions": s["retrans"], "close": reason}
        if len(self.rows) < self.MAX_ROWS:
            self.rows.append(row)
        else:
            self.count("rows_not_kept")
        self.emit("flow", **{k: v for k, v in row.items() if k not in ("conn", "proto", "client", "server", "vlan")})
        self.count("flows")
        self.count("packets", sum(s["packets"]))
        self.count("bytes", sum(s["bytes"]))
        self.count("gaps", sum(s["gaps"]))

    def summary(self):
        return self.rows
