"""The smallest useful module: count the connections of a capture.

    flowsift chain examples/minimal.py examples/demo.pcap
"""
from flowsift.modules import Module


class Minimal(Module):
    """Counts connections.

    Synopsis: examples/minimal.py
    Reads: nothing but the opening of each connection
    Writes: nothing
    Options: none
    Counters: connections
    Example: flowsift chain examples/minimal.py examples/demo.pcap
    """
    name = "minimal"
    reads = set()       # nothing of a connection's bytes, records or gaps (see docs/modules.md)

    def on_open(self, flow):
        self.count("connections")
