"""TCP reassembly (sans-IO): decoded segments in, stream events out.

    from flowsift.reassembly import Reassembler
    r = Reassembler()                      # collects events; or Reassembler(sink=...)
    r.feed_capture("trace.pcap")
    for (conn, direction), d in r.collector.dirs.items():
        d.data, d.gaps

The engine is compiled (`_engine.pyx`); `reference.py` is a small pure-Python twin used to
check it. docs/reassembly.md describes the semantics.
"""
from flowsift.reassembly._engine import CountSink, Engine, PySink, Sink, POLICIES

_EVENTS = ("CLOSE_REASONS", "GAP_REASONS", "Datagram", "Direction", "EventCollector", "Gap", "Overlap", "StreamData")


def __getattr__(name):
    # the event classes load when first asked for: a compiled sink (streams, the gateway) never
    # needs them, and making them is a noticeable part of a short run's start
    if name in _EVENTS:
        from flowsift.reassembly import events
        return getattr(events, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Reassembler", "Engine", "Sink", "CountSink", "PySink", "POLICIES", "EventCollector", "StreamData",
           "Gap", "Overlap", "Datagram", "Direction", "GAP_REASONS", "CLOSE_REASONS"]


class Reassembler:
    """Flow table + engine over batches of decoded packets (capture order).

    `sink`: a compiled Sink (CountSink, the streams FileSink...), or None to collect events
    in Python (`self.collector`). `vlan_key`: connections are told apart by VLAN ids too (the
    flow table's and the defragmenter's key). `checksums`: "verify" checks rebuilt datagrams'
    TCP/UDP checksums; the decoder that feeds it must verify too (`decoder()` makes one).
    Options are the Engine's: policy, timeouts, memory bounds.
    """

    def __init__(self, sink=None, fragment_policy="first", vlan_key=False, checksums="ignore", **options):
        from flowsift.io import Defragmenter, FlowTable
        from flowsift.io._decode import CHECKSUM_MODES
        if checksums not in CHECKSUM_MODES:
            raise ValueError(f"checksums {checksums!r}: one of {', '.join(CHECKSUM_MODES)}")
        self.checksums = checksums
        self.flows = FlowTable(vlan_key)
        self.defrag = Defragmenter(fragment_policy, vlan_key)
        self.defrag.verify_checksums = checksums == "verify"
        self.collector = None
        if sink is None:
            from flowsift.reassembly.events import EventCollector
            self.collector = EventCollector()
            sink = PySink(self.collector)
        self.sink = sink
        self.engine = Engine(self.flows, sink, **options)

    def decoder(self):
        """A Decoder that checks checksums as this reassembler does."""
        from flowsift.io import Decoder
        return Decoder(self.checksums)

    def feed(self, batch):
        """A decoded batch: fragments are rebuilt, then each packet is placed in its flow and
        reassembled (the engine does both, packet after packet)."""
        self.defrag.process(batch)
        self.engine.feed(batch)

    def finish(self):
        self.defrag.finish()
        self.engine.close_all("eof")

    def feed_capture(self, path, bpf=None, decoder=None, on_progress=None):
        """Read, decode and reassemble a whole capture, then close everything (end of input)."""
        from flowsift.io import decoded_batches
        decoder = decoder or self.decoder()
        try:
            for batch in decoded_batches(path, decoder, bpf, on_progress):
                self.feed(batch)
        finally:
            self.finish()
        return decoder
