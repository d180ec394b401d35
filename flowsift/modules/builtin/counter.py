from flowsift.modules.base import Module
from flowsift.modules.state import Global
from flowsift.streams.format import RF_CONFLICT, RF_RETRANSMISSION


class Counter(Module):
    """Per-flow packets, bytes, retransmissions, gaps and conflicts.

    Synopsis: counter
    Reads: the records of each connection at its end (in bulk) and the gaps of both streams
    Writes: nothing (read-only)
    Options: none
    Counters: flows, packets, bytes, gaps, conflicting segments, retransmissions
    Example: flowsift chain counter trace.pcap
             emits one "flow" event per connection when it closes and prints a table at the end
    """
    name = "counter"
    rows = Global(list, append_only=True)     # one row per finished flow, for the end-of-run table

    def on_open(self, flow):
        flow.state.update(gaps=[0, 0], gap_bytes=[0, 0])

    def on_gap(self, flow, direction, gap):
        flow.state["gaps"][direction] += 1
        flow.state["gap_bytes"][direction] += gap.length

    def on_close(self, flow, reason):
        s = flow.state
        # the packet totals come from the records in one pass over their columns (no call per packet)
        r = flow.records()
        c2s = r["dir"] == 0
        s["packets"] = [int(c2s.sum()), int((~c2s).sum())]
        s["bytes"] = [int(r["payload_len"][c2s].sum()), int(r["payload_len"][~c2s].sum())]
        s["conflicts"] = int(((r["rflags"] & RF_CONFLICT) != 0).sum())
        s["retrans"] = int(((r["rflags"] & RF_RETRANSMISSION) != 0).sum())
        row = {"conn": flow.conn, "proto": flow.proto, "client": flow.client, "server": flow.server,
               "packets": s["packets"], "bytes": s["bytes"], "gaps": s["gaps"], "gap_bytes": s["gap_bytes"],
               "conflicting_segments": s["conflicts"], "retransmissions": s["retrans"], "close": reason}
        self.rows.append(row)
        self.emit("flow", **{k: v for k, v in row.items() if k not in ("conn", "proto", "client", "server")})
        self.count("flows")
        self.count("packets", sum(s["packets"]))
        self.count("bytes", sum(s["bytes"]))
        self.count("gaps", sum(s["gaps"]))

    def summary(self):
        return self.rows
