from flowsift.modules.base import Module
from flowsift.streams.format import RF_CONFLICT, RF_RETRANSMISSION


class Counter(Module):
    """Per-flow packets, bytes, retransmissions, gaps and conflicts.

    Synopsis: counter
    Reads: packets (records) and the gaps of both streams
    Writes: nothing (read-only)
    Options: none
    Counters: flows, packets, bytes, gaps, conflicting segments, retransmissions
    Example: flowsift chain counter trace.pcap
             emits one "flow" event per connection when it closes and prints a table at the end
    """
    name = "counter"

    def __init__(self, config=None):
        super().__init__(config)
        self.rows = []

    def on_open(self, flow):
        flow.state.update(packets=[0, 0], bytes=[0, 0], gaps=[0, 0], gap_bytes=[0, 0], conflicts=0, retrans=0)

    def on_packet(self, flow, record):
        s = flow.state
        s["packets"][record.dir] += 1
        s["bytes"][record.dir] += record.payload_len
        if record.rflags & RF_CONFLICT:
            s["conflicts"] += 1
        if record.rflags & RF_RETRANSMISSION:
            s["retrans"] += 1

    def on_gap(self, flow, direction, gap):
        flow.state["gaps"][direction] += 1
        flow.state["gap_bytes"][direction] += gap.length

    def on_close(self, flow, reason):
        s = flow.state
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
