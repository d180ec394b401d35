"""A no-op read-only module for bench/chain.py: reads every stream byte and does nothing else."""
from flowsift.modules import Module


class Reader(Module):
    """Reads every byte of both streams.

    Synopsis: bench/modules/reader.py
    Reads: both streams
    Writes: nothing
    Options: none
    Counters: bytes
    Example: flowsift chain bench/modules/reader.py trace.pcap
    """
    name = "reader"

    def on_data(self, flow, stream):
        self.count("bytes", len(stream.read()))
