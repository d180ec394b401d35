"""Sources and sinks: capture files (pcap, pcapng), BPF filters, decoding, the flow table."""
from flowsift.io._batch import Batch, DEFAULT_BATCH
from flowsift.io._bpf import BpfFilter, BpfError
from flowsift.io._decode import Decoder
from flowsift.io._defrag import Defragmenter
from flowsift.io._flowtable import FlowTable, NO_FLOW
from flowsift.io.capture import Capture, decoded_batches, open_capture
from flowsift.io.pcapwriter import PcapWriter

__all__ = ["Batch", "DEFAULT_BATCH", "BpfFilter", "BpfError", "Decoder", "Defragmenter", "FlowTable", "NO_FLOW",
           "Capture", "decoded_batches", "open_capture", "PcapWriter"]
