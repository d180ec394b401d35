"""The gateway: the only writer of the record store.

source -> decode -> defragment -> flow table -> reassembly -> record files, over batches, with
no Python per packet: the engine calls the store (a compiled sink) for every segment, byte
range, gap, open and close; the gateway publishes the store's headers once per batch.
"""
import json
import os
import tempfile
import time

from flowsift.errors import CaptureFormatError, FlowsiftError, UsageError
from flowsift.io import BpfError
from flowsift.reassembly import POLICIES, Reassembler
from flowsift.stats import compile_filter
from flowsift.streams._store import RecordStore

# Default home of a run's store: memory-backed, gone at reboot; --store DIR keeps it on disk.
DEFAULT_STORE_PARENT = "/dev/shm"


def new_store_dir(parent=DEFAULT_STORE_PARENT):
    parent = parent if os.path.isdir(parent) else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="flowsift-store-", dir=parent)


class Gateway:
    """Writes one record file per connection of a source into `store` (a directory)."""

    def __init__(self, store=None, keep=False, policy="first", filter_expression=None, max_open_files=None,
                 **engine_options):
        if policy not in POLICIES:
            raise UsageError(f"unknown policy {policy!r}: one of {', '.join(POLICIES)}")
        self.store_dir = str(store) if store is not None else new_store_dir()
        self.bpf = compile_filter(filter_expression)
        self.store = RecordStore(self.store_dir, keep, max_open_files)
        self.reassembler = Reassembler(sink=self.store, policy=policy, **engine_options)
        self.store.attach(self.reassembler.engine)
        self.source = None
        self._write_manifest(complete=False)

    def _write_manifest(self, complete, **extra):
        info = {"format": "flowsift record store", "version": 1, "source": self.source,
                "keep": self.store.keep, "complete": complete, "written": time.time(), **extra}
        tmp = os.path.join(self.store_dir, ".store.json.tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(info, f)
            os.replace(tmp, os.path.join(self.store_dir, "store.json"))
        except OSError as e:
            raise FlowsiftError(f"{self.store_dir}: cannot write the store manifest: {e.strerror}") from None

    def _fail(self, error):
        self.store.abort()
        try:
            self._write_manifest(complete=False, error=error)
        except FlowsiftError:
            pass                    # a full disk may refuse even the manifest

    def run_capture(self, path, on_progress=None, after_batch=None):
        """Read a whole capture into the store; returns a summary dict. `after_batch(touched,
        closed)` is called with the connections each publish changed and ended (an inline chain)."""
        from flowsift.io import Decoder, decoded_batches
        self.source = str(path)
        decoder, batch, error = Decoder(), None, None
        try:
            for batch in decoded_batches(path, decoder, self.bpf, on_progress):
                self.store.check_space(batch)
                self.reassembler.feed(batch)
                changed = self.store.publish()
                if after_batch is not None:
                    after_batch(*changed)
        except CaptureFormatError as e:
            error = str(e)          # what was read is still recorded and closed below
        except BpfError as e:
            self._fail(str(e))
            raise UsageError(f"filter cannot be applied to {path}: {e}") from None
        except FlowsiftError as e:
            # the store cannot be written (full, unwritable): leave files as they are, unclosed,
            # and the manifest saying the store is incomplete
            self._fail(str(e))
            raise
        try:
            if batch is not None:
                self.store.check_space(batch)
            self.reassembler.finish()
            changed = self.store.publish()
            if after_batch is not None:
                after_batch(*changed)
        except FlowsiftError as e:
            self._fail(str(e))
            raise
        summary = {"store": self.store_dir, "source": self.source, **self.store.counters(),
                   "connections": self.reassembler.engine.totals(), "engine": self.reassembler.engine.counters(),
                   "packets": decoder.packets, "error": error}
        self._write_manifest(complete=error is None, files=self.store.files, records=self.store.records_written)
        return summary
