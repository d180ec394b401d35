"""A CPU-bound read-only module for bench/chain.py: scans every stream byte with a regular
expression (pure Python + re, holding the GIL), as an IDS rule engine would."""
import re

from flowsift.modules import Module

PATTERN = re.compile(rb"(?:password|passwd|secret|token)=[^&\s]{0,64}|[A-Za-z0-9+/]{40,}={0,2}")


class Burn(Module):
    """Scans both streams for credentials and long base64 runs.

    Synopsis: bench/modules/burn.py
    Reads: both streams
    Writes: nothing
    Options: none
    Counters: hits, bytes
    Example: flowsift chain bench/modules/burn.py trace.pcap
    """
    name = "burn"

    def on_data(self, flow, stream):
        data = bytes(stream.read())
        self.count("bytes", len(data))
        for _ in range(3):                      # heavy enough that the modules, not the gateway, dominate
            hits = len(PATTERN.findall(data))
        self.count("hits", hits)
