"""flowsift: stream-oriented middlebox modules in Python.

Capture ingest, decoding and flow tracking live in flowsift.io; the command line in flowsift.cli.
"""
from flowsift.errors import CaptureFormatError, FlowsiftError, UsageError

__version__ = "0.1.0"
__all__ = ["FlowsiftError", "UsageError", "CaptureFormatError", "__version__"]
