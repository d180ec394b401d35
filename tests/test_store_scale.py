"""Many connections through the gateway: descriptors and mappings stay bounded.

The suite runs 20,000 connections (1,000 open at once); FLOWSIFT_SCALE=100000 (or
HYPOTHESIS_PROFILE=deep) runs the 100,000 of the issue. bench/store.py measures the cost.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from flowsift.gateway import Gateway
from flowsift.streams.reader import RecordFile, store_files
from test_store_faults import many_connections

N = int(os.environ.get("FLOWSIFT_SCALE", 100_000 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 20_000))


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def mappings():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("where", ["shm", "disk"])
def test_many_connections_bounded_descriptors_and_mappings(tmp_path, where):
    capture = many_connections(tmp_path / "many.pcap", N, payload=b"y" * 10)
    base = Path(tempfile.mkdtemp(dir="/dev/shm")) if where == "shm" else tmp_path
    try:
        fds0, maps0 = open_fds(), mappings()
        peak = {"fds": 0, "maps": 0}

        def watch(pos, size):
            peak["fds"] = max(peak["fds"], open_fds() - fds0)
            peak["maps"] = max(peak["maps"], mappings() - maps0)

        g = Gateway(base / "store", keep=True, max_open_files=256)   # fewer than the 1,000 open connections
        summary = g.run_capture(capture, on_progress=watch)
        assert summary["files"] == N and summary["connections"]["tcp"] == N
        assert summary["records"] == 5 * N
        # at most MAX_HANDLES (256) files open, each with its header mapped
        assert peak["fds"] <= 256 + 8
        assert peak["maps"] <= 256 + 64
        assert open_fds() - fds0 <= 2
        assert g.store.counters()["reopens"] > 0          # handles were closed and reopened
        # Files closed and reopened with writes waiting for them got every record and byte, in
        # their own file: each record carries its connection's ports.
        files = store_files(base / "store")
        assert len(files) == N
        for path in files[::7]:
            with RecordFile(path) as rf:
                h = rf.header
                recs = list(rf.records())
                assert rf.closed_by_gateway and len(recs) == 5
                assert [r.record_id for r in recs] == [(h["first_record_id"] + i) % 2**64 for i in range(5)]
                assert {(r.sport, r.dport) for r in recs} == {(h["client_port"], h["server_port"]),
                                                            (h["server_port"], h["client_port"])}
                assert rf.data(0) == b"y" * 10 and h["end1"] == 0
    finally:
        if where == "shm":
            shutil.rmtree(base)
