from flowsift.modules import CrossFlow, Global, Module


class Tally(Module):
    """Per-source and global tallies, per packet (declared state, for bench/state.py).

    Synopsis: tally
    """
    name = "tally"
    per_source = CrossFlow(key=("ip.src",))
    totals = Global()

    def on_packet(self, flow, record):
        flow.state["pkts"] = flow.state.get("pkts", 0) + 1

    def on_close(self, flow, reason):
        e = self.per_source[flow]
        e["conns"] = e.get("conns", 0) + 1
        e["pkts"] = e.get("pkts", 0) + flow.state.get("pkts", 0)
        self.totals["conns"] = self.totals.get("conns", 0) + 1
