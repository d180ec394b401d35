"""pcap and pcapng reading, on files built byte by byte from the specifications."""
import subprocess

import pytest

from conftest import decode_bytes, require
from pcapgen import A, B, epb, ether, idb, ipv4, opb, pcap, shb, spb, block, tcp
from flowsift.io import open_capture

FRAME = ether(ipv4(A, B, 6, tcp(1000, 80, payload=b"hello")))


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nanosecond", [False, True], ids=["us", "ns"])
def test_pcap_byte_orders_and_resolutions(tmp_path, big_endian, nanosecond):
    frac = 123456789 if nanosecond else 123456
    blob = pcap([(1700000000, frac, FRAME), (1700000001, 0, FRAME[:40], len(FRAME))],
                nanosecond=nanosecond, big_endian=big_endian)
    arr, frames, pay, cap, _ = decode_bytes(tmp_path, blob)
    assert cap.format == "pcap" and len(arr) == 2
    want0 = 1700000000 * 10**9 + (frac if nanosecond else frac * 1000)
    assert arr["ts_ns"][0] == want0
    assert arr["ts_ns"][1] == 1700000001 * 10**9
    assert frames[0] == FRAME
    assert arr["caplen"][1] == 40 and arr["wirelen"][1] == len(FRAME)
    assert pay[0] == b"hello"


def test_kuznetzov_modified_pcap(tmp_path):
    arr, frames, _, _, _ = decode_bytes(tmp_path, pcap([(1, 5, FRAME), (2, 6, FRAME)], kuznetzov=True))
    assert len(arr) == 2 and frames == [FRAME, FRAME]


def test_pcap_snaplen_cut_payload_is_flagged(tmp_path):
    arr, _, pay, _, dec = decode_bytes(tmp_path, pcap([(1, 0, FRAME[:-2], len(FRAME))], snaplen=len(FRAME) - 2))
    assert arr["status"][0] == 0
    assert arr["payload_wirelen"][0] == 5 and arr["payload_len"][0] == 3 and pay[0] == b"hel"
    assert dec.counters()["snaplen_cut"] == 1


def _multi_section_pcapng():
    raw = ipv4(A, B, 17, b"\0\x35\0\x35\0\x08\0\0")
    return b"".join([
        shb("<"),
        idb(1, 0, "<", name="eth0", tsresol=9),                 # nanoseconds
        idb(101, 0, "<", name="tun0"),                          # default: microseconds
        block(0x00000BAD, b"unknown block type, skipped", "<"),
        epb(0, 1_700_000_000_123_456_789, FRAME, e="<"),
        epb(1, 1_700_000_000_123_456, raw, e="<"),
        opb(1, 1_700_000_001_000_000, raw, e="<"),
        shb(">"),                                               # a second section, big-endian
        idb(0, 0, ">", name="lo0", tsresol=0x80 | 20, tsoffset=100),   # 2^-20 s units, +100 s
        idb(1, 64, ">", name="eth1"),
        epb(0, 5 << 20, b"\x02\0\0\0" + raw, e=">"),             # NULL link type, AF_INET
        spb(b"\x02\0\0\0" + raw, e=">"),                         # SPB: interface 0 of the section
        epb(1, 3, FRAME, e=">"),                                 # snaplen 64 on eth1 (frame is shorter)
        epb(7, 0, FRAME, e=">"),                                 # no interface 7: counted, not fatal
    ])


def test_pcapng_sections_interfaces_and_blocks(tmp_path):
    arr, frames, _, cap, dec = decode_bytes(tmp_path, _multi_section_pcapng(), "t.pcapng")
    assert cap.format == "pcapng"
    assert list(arr["linktype"]) == [1, 101, 101, 0, 0, 1, 0xFFFF]
    assert list(arr["iface"]) == [0, 1, 1, 2, 2, 3, 0xFFFF]
    assert arr["ts_ns"][0] == 1_700_000_000_123_456_789
    assert arr["ts_ns"][1] == 1_700_000_000_123_456_000
    assert arr["ts_ns"][2] == 1_700_000_001_000_000_000
    assert arr["ts_ns"][3] == (5 + 100) * 10**9
    assert arr["ts_ns"][4] == arr["ts_ns"][3]            # SPB: no timestamp of its own
    assert arr["ts_ns"][5] == 3000                        # eth1: default microseconds, no offset
    names = [i["name"] for i in cap.interfaces()]
    assert names == ["eth0", "tun0", "lo0", "eth1"]
    assert [i["section"] for i in cap.interfaces()] == [0, 0, 1, 1]
    assert cap.counters()["blocks_skipped"] == 1 and cap.counters()["sections"] == 2
    c = dec.counters()
    assert c["reasons"] == {1: 1}                          # bad_interface_id
    assert c["proto4"] == {6: 2, 17: 4}


def test_pcapng_agrees_with_tshark(tmp_path):
    """Our hand-built file is what tshark reads too (so the expectations above are the format's)."""
    tshark = require("tshark")
    path = tmp_path / "t.pcapng"
    path.write_bytes(_multi_section_pcapng())
    out = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len"],
                         capture_output=True, text=True)
    # tshark lists the unknown block and the SPB without a time, and stops at interface 7
    epochs = [l.split("\t")[0] for l in out.stdout.splitlines() if l.split("\t")[0]]
    cap = open_capture(path)
    from flowsift.io import Batch
    b = Batch(64)
    cap.fill(b)
    ts = [t for i, t in enumerate(b.array["ts_ns"]) if i != 4][:5]
    assert len(epochs) == 5
    for epoch, t in zip(epochs, ts):
        sec, _, frac = epoch.partition(".")
        assert int(sec) == t // 10**9
        assert abs(int((frac + "000000000")[:9]) - t % 10**9) <= 1


def test_batches_refill_until_end(tmp_path):
    blob = pcap([(i, 0, FRAME) for i in range(1000)])
    path = tmp_path / "many.pcap"
    path.write_bytes(blob)
    seen = sum(len(b) for b in open_capture(path).batches(capacity=64))
    assert seen == 1000


def test_packets_without_a_time_stay_out_of_the_time_span(tmp_path):
    """SPBs (no timestamp), corrupt blocks and times past int64 nanoseconds say nothing of when
    the capture was made: they are counted, not taken for 1970 or 1969."""
    import json
    from conftest import run_cli
    ts = 1_700_000_000_000_000
    blob = b"".join([shb(), idb(1), spb(FRAME), spb(FRAME), epb(0, ts, FRAME), epb(0, ts + 5, FRAME),
                     epb(0, 2**64 - 1000, FRAME)])
    f = tmp_path / "t.pcapng"
    f.write_bytes(blob)
    s = json.loads(run_cli("stats", "--json", f, check=True).stdout)
    assert s["packets"] == 5 and s["decoded"] == 5
    assert (s["time"]["first_ns"], s["time"]["last_ns"]) == (ts * 1000, (ts + 5) * 1000)
    assert s["anomalies"]["timestamp_out_of_range"] == 1 and s["anomalies"]["timestamps_backwards"] == 0


def test_a_malformed_interface_block_keeps_the_next_ids(tmp_path):
    """An IDB too short to read still defines interface 0, so interface 1 is the next one."""
    raw = ipv4(A, B, 17, b"\0\x35\0\x35\0\x08\0\0")
    blob = b"".join([shb(), block(1, b"\x01\0"), idb(101), epb(0, 1, FRAME), epb(1, 2, raw)])
    arr, _, _, cap, dec = decode_bytes(tmp_path, blob, "t.pcapng")
    assert [i["linktype"] for i in cap.interfaces()] == [0xFFFF, 101]
    assert list(arr["iface"]) == [0, 1]
    assert dec.counters()["reasons"] == {3: 1}           # unsupported_link_type, not bad_interface_id
    assert dec.counters()["proto4"] == {17: 1}


def test_a_file_cut_while_it_is_read_stops_with_an_error_not_a_crash(tmp_path):
    """Log rotation or `tcpdump -w` over the file cuts it under the mapping: the pages past its
    new end fault (SIGBUS). The reader keeps what the file still holds and stops with an error."""
    import os
    from flowsift.errors import CaptureFormatError
    from flowsift.io import Batch
    frame = ether(ipv4(A, B, 6, tcp(1000, 80, payload=b"x" * 958)))       # 1,016-byte records
    f = tmp_path / "t.pcap"
    f.write_bytes(pcap([(1, i, frame) for i in range(4000)]))
    cap = open_capture(str(f))
    batch = Batch(256)
    got = cap.fill(batch)
    os.truncate(f, 1_000_000)
    while n := cap.fill(batch):
        got += n
    assert got == (1_000_000 - 24) // (16 + len(frame))      # every whole record left, no more
    with pytest.raises(CaptureFormatError, match="shrank to 1000000 bytes"):
        cap.check()


@pytest.mark.parametrize("name", ["http__zeek__bro.org.pcap", "http__csanders__http_espn.pcapng"])
def test_a_file_read_with_a_count_ends_after_that_many_packets(corpus, name):
    """open_capture(count=N) reads a file as far as its first N packets, whatever the batch
    size, as if it ended there: the same packets, in order, as read whole."""
    from flowsift.io import open_capture
    whole = [(int(b.array["ts_ns"][i]), int(b.array["caplen"][i]))
             for b in open_capture(corpus / name).batches(64) for i in range(b.n)]
    for count, capacity in ((1, 64), (5, 3), (100, 16), (len(whole), 7), (len(whole) + 10, 64)):
        cap = open_capture(corpus / name, count=count)
        got = [(int(b.array["ts_ns"][i]), int(b.array["caplen"][i])) for b in cap.batches(capacity)
               for i in range(b.n)]
        assert got == whole[:count] and cap.counters()["records"] == min(count, len(whole)), (count, capacity)
