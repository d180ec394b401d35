"""The pcap writer: what it writes reads back identically, here and in tshark."""
import subprocess

import pytest

from conftest import require
from flowsift.io import Batch, PcapWriter, open_capture


def frames_of(path):
    out = []
    for b in open_capture(path).batches():
        a = b.array
        out.extend((int(a["ts_ns"][i]), int(a["wirelen"][i]), b.frame(i)) for i in range(len(b)))
    return out


@pytest.mark.parametrize("name", ["http__zeek__get.pcap", "linktype__pcpp__sll2.pcap", "trunc__zeek__timestamp.pcap",
                                  "ipv6__pcpp__one_ipv6_http_stream.pcap"])
@pytest.mark.parametrize("nanosecond", [True, False], ids=["ns", "us"])
def test_round_trip(tmp_path, corpus, name, nanosecond):
    src = corpus / name
    cap = open_capture(src)
    linktype = cap.interfaces()[0]["linktype"]
    dst = tmp_path / "out.pcap"
    with PcapWriter(dst, linktype=linktype, nanosecond=nanosecond) as w:
        for b in cap.batches():
            w.write_batch(b)
    before, after = frames_of(src), frames_of(dst)
    assert len(after) == len(before) > 0
    for (t0, w0, f0), (t1, w1, f1) in zip(before, after):
        assert f0 == f1 and w0 == w1
        assert t1 == (t0 if nanosecond else t0 // 1000 * 1000)
    assert open_capture(dst).interfaces()[0]["linktype"] == linktype
    tshark = require("tshark")
    res = subprocess.run([tshark, "-r", str(dst), "-T", "fields", "-e", "frame.len"], capture_output=True, text=True)
    assert res.returncode == 0 and [int(x) for x in res.stdout.split()] == [w for _, w, _ in before]


def test_snaplen_cuts_and_keeps_wire_length(tmp_path):
    dst = tmp_path / "s.pcap"
    with PcapWriter(dst, snaplen=10) as w:
        w.write(5_000_000_123, b"0123456789abcdef")
    (ts, wire, frame), = frames_of(dst)
    assert (ts, wire, frame) == (5_000_000_123, 16, b"0123456789")
