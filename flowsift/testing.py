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
import itertools
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
    # the edit log's lines, as dicts: each edit, replacement and drop the gateway was asked
    # for by a writing module, in order (module, conn, record, field, old, new, accepted, reason;
    # `over`: the module whose value of the field it replaced)
    edits: list = field(default_factory=list)

    def of_kind(self, kind):
        return [e for e in self.events if e["kind"] == kind]

    def counters(self, module):
        """The counters of `module` (the summary's modules.NAME): its own and the chain's
        (`errors`, `edits_rejected`, ...), each once counted."""
        return self.summary["modules"][module]

    def accepted(self, module=None):
        """The edits accepted (of `module`, or of every module)."""
        return [e for e in self.edits if e["accepted"] and module in (None, e["module"])]

    def rejected(self, module=None):
        """The edits rejected (of `module`, or of every module), each with its `reason`."""
        return [e for e in self.edits if not e["accepted"] and module in (None, e["module"])]


def run_module(spec, capture, strict=True, *, inline=True, write=None, policy="first", filter_expression=None,
               reassembly=None, vlan_key=False, checksums="ignore", **options):
    """Run `spec` over a capture; returns a Result (its events and the run's summary).

    `spec`: a Module class, or what a chain names: a module (`http`, `file.py[:Class]`, options
    in brackets after it) or a chain (`a,b(x=1)`). Other keyword arguments are the module's
    options, for one module only (a class, or a module named without options in brackets):
    values of the option's type, or text read as a chain reads it (`run_module("m.py", cap,
    big=500)` or `big="500"`); an option not declared, or of another kind, is a ModuleError.
    An option named like a parameter below is given in brackets instead.

    The Result's `edits` are the edit log's lines (what writing modules asked for, accepted or
    rejected); `write` gives the edited capture (without it, nothing is said on stderr of a
    writing module's edits going nowhere, as `flowsift chain` says).

    `strict` (default): the first exception in a hook stops the run. With `inline` (default:
    every module runs in this process, in order) it is that exception itself that propagates,
    with the module's frames, so `pytest.raises(ValueError)` sees it. `inline=False` runs the
    chain as `flowsift chain` does (read-only modules in worker processes): the exception then
    reaches the test as a ModuleError naming the module and the hook, the module's frames in its
    message. Without `strict`, hook exceptions are logged once per module and counted (the
    module's `errors` counter) and the run goes on.

    `write` (-w OUT.pcap), `policy` (--policy), `filter_expression` (--filter), `reassembly`
    (--reassembly, a dict), `vlan_key` (--vlan-key) and `checksums` (--checksums: "ignore" or
    "verify") are as for `flowsift chain`."""
    from flowsift.modules import loader
    from flowsift.modules.base import HookError, validate
    key = None
    if not isinstance(spec, str):
        key = _register(validate(spec, "test"), _options(spec, options))
    elif options:
        chain = loader.parse_chain(spec)
        if len(chain) != 1 or "(" in spec:
            raise TypeError(f"run_module: keyword options ({', '.join(options)}) are for one module named without "
                            f"options in brackets; {spec!r} is not: give them in brackets, e.g. 'a,b(x=1)'")
        key = _register(chain[0][0], _options(chain[0][0], options))
    out, edits = io.StringIO(), io.StringIO()
    try:
        summary = run_chain(spec if key is None else key, str(capture), events=out, strict=strict, inline=inline,
                            write=write, policy=policy, filter_expression=filter_expression, reassembly=reassembly,
                            edits=edits, vlan_key=vlan_key, checksums=checksums, advise=False)
    except HookError as e:
        if not inline or e.__cause__ is None:
            raise
        failed = e.__cause__
    else:
        return Result([json.loads(l) for l in out.getvalue().splitlines()], summary,
                      [json.loads(l) for l in edits.getvalue().splitlines()])
    finally:
        loader.GIVEN.pop(key, None)
    # the hook's exception itself, out of the except clause: no "during handling" context
    raise failed


def _options(cls, given):
    """The module's option values given by keyword, checked as a chain checks its text."""
    from flowsift.modules.base import OPTION_TYPES, ModuleError, _kind
    out = {}
    for key, value in given.items():
        o = cls.options.get(key)
        if o is None:
            raise ModuleError(f"module {cls.name}: no option {key!r} (options: {', '.join(cls.options) or 'none'})")
        if isinstance(value, str):
            value = o.parse(cls.name, key, value)
        elif o.type is list:
            if not isinstance(value, (list, tuple)):
                raise ModuleError(f"module {cls.name}: option {key}={value!r} is not {_kind(list)}")
            value = list(value)
        elif o.type in OPTION_TYPES:
            # (a bool is an int to Python, not to an option; an int is a float's value)
            kind = (int, float) if o.type is float else o.type
            if isinstance(value, bool) is not (o.type is bool) or not isinstance(value, kind):
                raise ModuleError(f"module {cls.name}: option {key}={value!r} is not {_kind(o.type)}")
        out[key] = value          # (an option of a type of the module's own: its value as given)
    return out


def _register(cls, options=None):
    """A Module class findable under a name of its own for one run (each class its own, a class
    defined in a function too), which no built-in, entry point or file can have, with option
    values that replace its defaults."""
    from flowsift.modules import loader
    key = f"{cls.name}@{next(_given)}"
    loader.GIVEN[key] = (cls, options or {})
    return key


_given = itertools.count(1)


def inet_checksum(data):
    """The Internet checksum (RFC 1071) of `data`: the packets this module writes are as a host
    would send them."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# the most payload a segment here carries: an IPv4 packet's 16-bit total length, less the IP and
# TCP headers (20 bytes each: no options)
MAX_SEGMENT = 65535 - 20 - 20


def _segments(side, given):
    """`given` as a list of bytes, or a TypeError/ValueError saying what a segment may be."""
    if isinstance(given, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"segments_capture: {side} is a list of segments, not one {type(given).__name__}: "
                        f"{side}=[b'...', ...]")
    try:
        items = list(given)
    except TypeError:
        raise TypeError(f"segments_capture: {side} is a list of segments (bytes), not a "
                        f"{type(given).__name__}") from None
    for i, seg in enumerate(items):
        if not isinstance(seg, (bytes, bytearray, memoryview)):
            raise TypeError(f"segments_capture: {side}[{i}] is a {type(seg).__name__}: a segment is bytes "
                            f"(or a bytearray or memoryview)")
        if len(seg) > MAX_SEGMENT:
            raise ValueError(f"segments_capture: {side}[{i}] has {len(seg):,} bytes: a segment carries at most "
                             f"{MAX_SEGMENT:,} (an IPv4 packet's 65,535 less its IP and TCP headers)")
        items[i] = bytes(seg)
    return items


def segments_capture(directory, client=(), server=(), port=80, handshake=True, close=True, name="segments.pcap"):
    """A pcap of one TCP connection whose client sends `client` segments and whose server answers
    with `server` segments, alternating turn by turn (client first), with the handshake and FINs.
    A segment is bytes, of at most MAX_SEGMENT (65,495); `port` is the server's."""
    from flowsift.io import PcapWriter
    client, server = _segments("client", client), _segments("server", server)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"segments_capture: port={port!r}: the server's port, from 1 to 65535")
    path = Path(directory) / name
    seq = {0: 1000, 1: 5000}
    frames = []
    t = [1_700_000_000 * 10**9]

    def seg(d, flags, payload=b""):
        src, dst = (_CLIENT, (_SERVER[0], port)) if d == 0 else ((_SERVER[0], port), _CLIENT)
        ack = seq[1 - d]
        tcp = struct.pack(">HHIIBBHHH", src[1], dst[1], seq[d] % 2**32, ack % 2**32, 5 << 4, flags, 65535, 0, 0) + payload
        tcp = tcp[:16] + struct.pack(">H", inet_checksum(src[0] + dst[0] + struct.pack(">HH", 6, len(tcp)) + tcp)) + tcp[18:]
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src[0], dst[0])
        ip = ip[:10] + struct.pack(">H", inet_checksum(ip)) + ip[12:] + tcp
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
