"""Per-connection record files (written by the gateway) and stream pointers (read by modules).

    from flowsift.streams import RecordFile, StreamPointer
    sp = StreamPointer("/dev/shm/flowsift-store-x/c00000000.rec", 0)
    sp.find(b"\\r\\n\\r\\n"); sp.read_until(b"\\r\\n"); sp.at_gap

Format: docs/record-format.md (and format.py).
"""
from flowsift.streams._pointer import StreamPointer
from flowsift.streams.entry import Entry, EntryTable
from flowsift.streams.reader import RecordFile, StoreError, store_files

__all__ = ["StreamPointer", "RecordFile", "StoreError", "store_files", "Entry", "EntryTable"]
