"""Helpers for module authors' tests: run one module (or a chain) over a small capture, or over
hand-made segments, and look at what it emitted.

    from flowsift.testing import run_module, segments_capture

    def test_my_module(tmp_path):
        cap = segments_capture(tmp_path, client=[b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"],
                               server=[b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n"])
        result = run_module("http", cap)
        assert [e["kind"] for e in result.events] == ["request", "response"]
"""
import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from flowsift.chain import run_chain

_CLIENT = (bytes([192, 0, 2, 1]), 40000)
_SERVER = (bytes([192, 0, 2, 2]), 80)


@dataclass
class Result:
    events: list = field(default_factory=list)       # the JSON event lines, as dicts
    summary: dict = field(default_factory=dict)      # what `flowsift chain --json` prints

    def of_kind(self, kind):
        return [e for e in self.events if e["kind"] == kind]

    def counters(self, module):
        return self.summary["modules"][module]


def run_module(spec, capture, strict=True, **options):
    """Run `spec` (a module name, `file.py[:Class]`, or a chain `a,b(x=1)`) over a capture;
    exceptions in hooks propagate (strict) so a test sees them."""
    out = io.StringIO()
    summary = run_chain(spec if isinstance(spec, str) else _register(spec), str(capture), events=out,
                        strict=strict, **options)
    return Result([json.loads(l) for l in out.getvalue().splitlines()], summary)


def _register(cls):
    """A Module class given directly: findable under a name of its own (each class its own, a
    class defined in a function too), which no built-in, entry point or file can have."""
    from flowsift.modules import loader
    from flowsift.modules.base import validate
    validate(cls, "test")
    key = f"{cls.name}@{id(cls):x}"
    loader.GIVEN[key] = cls
    return key


def _checksum(data):
    # the Internet checksum (RFC 1071): the capture's packets are as a host would send them
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def segments_capture(directory, client=(), server=(), port=80, handshake=True, close=True, name="segments.pcap"):
    """A pcap of one TCP connection whose client sends `client` segments and whose server answers
    with `server` segments, alternating turn by turn (client first), with the handshake and FINs."""
    from flowsift.io import PcapWriter
    path = Path(directory) / name
    seq = {0: 1000, 1: 5000}
    frames = []
    t = [1_700_000_000 * 10**9]

    def seg(d, flags, payload=b""):
        src, dst = (_CLIENT, (_SERVER[0], port)) if d == 0 else ((_SERVER[0], port), _CLIENT)
        ack = seq[1 - d]
        tcp = struct.pack(">HHIIBBHHH", src[1], dst[1], seq[d] % 2**32, ack % 2**32, 5 << 4, flags, 65535, 0, 0) + payload
        tcp = tcp[:16] + struct.pack(">H", _checksum(src[0] + dst[0] + struct.pack(">HH", 6, len(tcp)) + tcp)) + tcp[18:]
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src[0], dst[0])
        ip = ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:] + tcp
        frames.append((t[0], b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + ip))
        t[0] += 1_000_000
        seq[d] += len(payload) + (1 if flags & 0x03 else 0)

    if handshake:
        seq[0] -= 1
        seq[1] -= 1
        seg(0, 0x02)
        seg(1, 0x12)
    turns = max(len(client), len(server))
    for k in range(turns):
        if k < len(client):
            seg(0, 0x18, client[k])
        if k < len(server):
            seg(1, 0x18, server[k])
    if close:
        seg(0, 0x11)
        seg(1, 0x11)
    with PcapWriter(path) as w:
        for ts, frame in frames:
            w.write(ts, frame)
    return path
