"""A second CPU-bound module for bench/chain.py (the same work as burn.py, under another name),
so two modules of the chain can run in parallel."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location("flowsift_bench_burn", os.path.join(os.path.dirname(__file__), "burn.py"))
_burn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_burn)


class Burn2(_burn.Burn):
    """Scans both streams for credentials and long base64 runs (a second copy).

    Synopsis: bench/modules/burn2.py
    Reads: both streams
    Writes: nothing
    Options: none
    Counters: hits, bytes
    Example: flowsift chain bench/modules/burn.py,bench/modules/burn2.py trace.pcap
    """
    name = "burn2"
