"""Application-layer replay: captured connections played against a live server, turn by turn,
with each answer compared to the recorded one; and the replay of what a backend had not
acknowledged (SIFT).

A conversation is cut into turns from the order of its bytes (as the ACKs give it, else as the
records are stored): the client's bytes up to the point where the server answered, then the
server's answer. HTTP/1.x streams are cut at message
boundaries instead (a request, its response), so pipelining and keep-alive replay as messages,
not packets. A hole in the client's stream ends what can be replayed there.
"""
import asyncio
import difflib
import errno
import json
import os
import re
import shutil
import stat
import socket
import time

from flowsift import http1
from flowsift.bounds import written
from flowsift.errors import FlowsiftError, Terminated, UsageError, stop_waits, stops_held

VOLATILE_HEADERS = ("date", "server", "etag", "set-cookie")
HTTP_REQUEST = re.compile(rb"^[A-Z]{3,10} \S+ HTTP/1\.[01]\r?\n")
# the start of a request line a gap cut (--partial): HTTP, lest its fragment be sent as bytes
# (known methods only: SMTP's `EHLO host` or FTP's `USER name` stay byte streams)
HTTP_REQUEST_CUT = re.compile(rb"(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH|PROPFIND|PROPPATCH|MKCOL|"
                              rb"COPY|MOVE|LOCK|UNLOCK|REPORT|SEARCH) [^\r\n]*\r?\Z")
ANY_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"   # a whole message: answers are read whole


# --- HTTP/1.x framing ----------------------------------------------------------------------------

def _head(data, start):
    """(end of the header block, start line, {lowercased name: [values]}) or None if incomplete."""
    end = data.find(b"\r\n\r\n", start)
    sep = 4
    if end < 0:
        end, sep = data.find(b"\n\n", start), 2
        if end < 0:
            return None
    lines = data[start:end].split(b"\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.rstrip(b"\r").partition(b":")
        headers.setdefault(name.strip().lower().decode("latin-1"), []).append(value.strip().decode("latin-1"))
    return end + sep, lines[0].rstrip(b"\r"), headers


def _chunked_end(data, pos):
    """End offset of a chunked body starting at `pos`, or None if incomplete."""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(data[pos:eol].split(b";")[0].strip() or b"x", 16)
        except ValueError:
            raise ValueError("bad chunk size")
        pos = eol + 2
        if size == 0:
            # trailers, then an empty line
            end = data.find(b"\r\n", pos)
            while end >= 0 and end != pos:
                pos = end + 2
                end = data.find(b"\r\n", pos)
            return None if end < 0 else end + 2
        pos += size + 2
        if pos > len(data):
            return None


def http_message(data, start, request, method=None, eof=False):
    """(end, start line, headers, body slice) of the HTTP message at `start`, or None while
    incomplete. A response without length ends at the end of the stream (`eof`)."""
    h = _head(data, start)
    if h is None:
        return None
    body_start, line, headers = h
    te = ",".join(headers.get("transfer-encoding", [])).lower()
    if not request:
        code = int(line.split()[1]) if len(line.split()) > 1 and line.split()[1].isdigit() else 0
        if http1.response_without_body(method, code):
            return body_start, line, headers, (body_start, body_start)
    if "chunked" in te:
        try:
            end = _chunked_end(data, body_start)
        except ValueError:
            end = len(data) if eof else None
        return None if end is None else (end, line, headers, (body_start, end))
    if "content-length" in headers:
        try:
            n = int(headers["content-length"][0])
        except ValueError:
            n = 0
        end = body_start + n
        return None if end > len(data) else (end, line, headers, (body_start, end))
    if request:
        return body_start, line, headers, (body_start, body_start)
    return (len(data), line, headers, (body_start, len(data))) if eof else None


def _interim(line):
    parts = line.split()
    return len(parts) > 1 and len(parts[1]) == 3 and parts[1].isdigit() and http1.interim(int(parts[1]))


def final_response(data, start, method=None, eof=False):
    """http_message() of the final response at `start`, past any interim (1xx) ones in front
    of it: they answer the same request."""
    while True:
        m = http_message(data, start, False, method, eof=eof)
        if m is None or not _interim(m[1]) or m[0] >= len(data):
            return m
        start = m[0]


def http_messages(data, request, methods=None):
    """Message spans [(start, end)] of a whole stream; methods: the requests' methods, for
    responses (a HEAD answer has no body). A response's span includes the interim (1xx)
    responses before it."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        method = methods[i] if methods and i < len(methods) else None
        m = http_message(data, pos, True, eof=True) if request else final_response(data, pos, method, eof=True)
        if m is None or m[0] <= pos:
            out.append((pos, len(data)))
            break
        out.append((pos, m[0]))
        pos, i = m[0], i + 1
    return out


def dechunk(body):
    """(data, trailers) of a chunked body: its chunks joined, and the trailer fields after the
    last one as {lowercased name: [values]}."""
    out, pos = bytearray(), 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), {}
        try:
            size = int(body[pos:eol].split(b";")[0].strip() or b"0", 16)
        except ValueError:
            return bytes(out), {}
        if size == 0:
            return bytes(out), _trailers(body, eol + 2)
        out += body[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


def _trailers(body, pos):
    fields = {}
    for line in body[pos:].split(b"\r\n"):
        if not line:
            break
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower().decode("latin-1"), []).append(value.strip().decode("latin-1"))
    return fields


# --- conversations and turns -------------------------------------------------------------------

class Turn:
    __slots__ = ("request", "response", "start", "offset", "method", "whole", "http", "switch")

    def __init__(self, request, response, start, offset, method=None, whole=True, http=False, switch=False):
        self.request = request          # bytes the client sent
        self.response = response        # bytes the server answered in the original
        self.start = start              # capture time of the turn's first byte, ns
        self.offset = offset            # stream offset of the request
        self.method = method
        self.whole = whole              # False: the recording lost part of the answer (not comparable)
        self.http = http                # an HTTP request and its response (else bytes, as they came)
        self.switch = switch            # its recorded answer switched protocols: HTTP ends with it


class Conversation:
    def __init__(self, conn, client, server, proto, vlan=None):
        self.conn, self.client, self.server, self.proto = conn, client, server, proto
        self.vlan = vlan                # its VLAN ids when its gateway keyed connections by them
        self.turns = []
        self.skip = None                # reason it is not replayed
        self.cut = None                 # offset where a gap cut the client's stream
        self.http = False
        self.note = None
        self.truncated = None           # what its record file, cut short, lacks (RecordFile.missing)
        self.misnamed = None            # its record file's name gives another connection than its header


def _conversation_of(rf, path):
    from flowsift.inspect import name_problem
    from flowsift.streams.format import endpoint, header_vlan
    h = rf.header
    conv = Conversation(h["conn"], endpoint(h["client_addr"], h["client_port"], h["ipver"]),
                        endpoint(h["server_addr"], h["server_port"], h["ipver"]), h["proto"], header_vlan(h))
    conv.truncated = rf.missing
    conv.misnamed = name_problem(rf, os.path.basename(str(path)))
    if conv.misnamed:
        # a copy or a rename: the connection it holds may be replayed from its own file too
        conv.skip = "record file named for another connection"
    elif h["proto"] != 6:
        conv.skip = "not TCP"
    return conv


def conversation(path, partial=False, match=None):
    """The turns of one record file."""
    from flowsift.streams.reader import RecordFile
    with RecordFile(path) as rf:
        h = rf.header
        conv = _conversation_of(rf, path)
        if conv.skip:
            return conv
        cend, send = h["end0"], h["end1"]
        gaps = rf.gaps(0)
        if gaps:
            conv.cut = gaps[0].offset
            if not partial:
                conv.skip = "gap in the client's stream"
                return conv
            cend = conv.cut
        sgap = rf.gaps(1)
        if cend <= 0:
            # (with --partial, a gap at the very start leaves nothing before it to replay); a
            # client that sent nothing (a capture of one direction) has nothing to replay: its
            # server's bytes would only be waited for as a banner
            conv.skip = ("gap in the client's stream" if gaps and conv.cut == 0
                         else "no data" if send <= 0 else "nothing from the client")
            return conv
        client = rf.data(0, 0, cend)
        server = rf.data(1, 0, send) if not sgap else rf.data(1, 0, sgap[0].offset)
        arr = rf.record_array()
        if (match == "http" or match is None) and (HTTP_REQUEST.match(client) or
                                                   conv.cut is not None and HTTP_REQUEST_CUT.match(client)):
            conv.http = True
            _http_turns(conv, client, server, arr, h, bool(sgap), conv.cut)
            if not conv.turns:
                conv.skip = "gap in the client's stream"        # (no whole request before it)
            return conv
        if match == "http":
            conv.skip = "not HTTP"
            return conv
        _timed_turns(conv, client, server, arr, h, bool(sgap), conv.cut)
        return conv


def _first_ts(arr, h, d, offset):
    """Capture time of the record that carried stream byte `offset` of direction d (else of
    the direction's last one with payload, or the connection's first record)."""
    import numpy as np
    from flowsift.streams._pointer import first_carrier
    ts = first_carrier(arr.view(np.uint8), len(arr), d, h[f"origin{d}"], offset) if len(arr) else None
    if ts is not None:
        return ts
    t = arr["ts_ns"][(arr["dir"] == d) & (arr["payload_len"] > 0)]
    return int(t[-1]) if len(t) else (int(arr["ts_ns"][0]) if len(arr) else 0)


def _switches(line, method):
    """Does a response with start line `line`, to `method`, end HTTP on its connection? A 101
    (Switching Protocols), or a CONNECT's 2xx (the tunnel follows)."""
    parts = line.split()
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return code == 101 or (method == b"CONNECT" and 200 <= code < 300)


def _http_turns(conv, client, server, arr, h, lost=False, cut=None):
    """`lost`: the server's stream was cut by a gap at its end (an answer reaching it, and those
    after it, were not recorded whole). `cut`: where a gap ends the client's stream (--partial).
    After an answer that switches protocols the rest is a byte stream, cut into turns as one."""
    reqs = http_messages(client, True)
    if cut is not None and reqs and http_message(client, reqs[-1][0], True) is None:
        # the request the gap cuts into is not sent: its answer needed the bytes missing
        reqs.pop()
    methods = [client[s:e].split(b" ", 1)[0] for s, e in reqs]
    resps = http_messages(server, False, methods)
    for i, (s, e) in enumerate(reqs):
        r = server[resps[i][0]:resps[i][1]] if i < len(resps) else b""
        # (eof: a response without length ends where the recorded stream does)
        m = final_response(r, 0, methods[i], eof=True) if r else None
        whole = (not r or m is not None) and not (lost and (i >= len(resps) or resps[i][1] >= len(server)))
        switch = m is not None and _switches(m[1], methods[i])
        conv.turns.append(Turn(client[s:e], r, _first_ts(arr, h, 0, s), s, methods[i], whole, True, switch))
        if switch:
            # (the requests parsed after it were never HTTP)
            _timed_turns(conv, client, server, arr, h, lost, cut, e, resps[i][1])
            return


def _acks(arr, h):
    """Per record, the stream offset of the peer's stream up to which it acknowledges (below it:
    bytes the sender had received), or None where the ACK says nothing: no ACK flag, a record
    reassembly ignored, a peer whose sequence numbers are unknown."""
    dirs, seqs, offs = arr["dir"].tolist(), arr["seq"].tolist(), arr["seq_offset"].tolist()
    lens, acks = arr["payload_len"].tolist(), arr["ack"].tolist()
    flags, rflags = arr["tcp_flags"].tolist(), arr["rflags"].tolist()
    origins, ends = (h["origin0"], h["origin1"]), (h["end0"], h["end1"])
    # the raw sequence number at seq_offset 0, per direction (not from a SYN: its offset is ISN + 1's)
    base = [None, None]
    for i in range(len(dirs)):
        if base[dirs[i]] is None and not flags[i] & 2 and not rflags[i] & 128:
            base[dirs[i]] = (seqs[i] - offs[i]) & 0xffffffff
    top, out = [0, 0], []
    for i in range(len(dirs)):
        d, p = dirs[i], 1 - dirs[i]
        top[d] = max(top[d], offs[i] + lens[i])
        if not flags[i] & 16 or rflags[i] & 128 or base[p] is None:
            out.append(None)
            continue
        # unwrapped against the peer's highest sequence number seen so far (within 2^31 of it)
        rel = (acks[i] - base[p] - top[p]) & 0xffffffff
        at = top[p] + (rel - (1 << 32) if rel >= 1 << 31 else rel) - origins[p]
        # (the FIN's sequence number, or bytes the capture lacks: past everything there is)
        out.append(min(at, ends[p]) if at > 0 else None)
    return out


def _in_order(arr, h):
    """The records that carry new bytes, both directions merged in the order the ACKs give:
    [(direction, record, start, end)] in stream offsets. A segment that acknowledges the peer's
    bytes up to X was sent after the peer's byte X - 1 arrived and, as it acknowledges no more,
    before byte X did. Where the ACKs say nothing (or contradict each other) the records' order
    decides: a capture can store an answer before the request it acknowledges (two capture
    points, a SPAN port)."""
    dirs, lens, offs = arr["dir"].tolist(), arr["payload_len"].tolist(), arr["seq_offset"].tolist()
    acks = _acks(arr, h)
    origins = (h["origin0"], h["origin1"])
    queues, mark = ([], []), [0, 0]
    for i in range(len(dirs)):
        d = dirs[i]
        end = offs[i] - origins[d] + lens[i]
        if not lens[i] or end <= mark[d]:
            continue                     # a retransmission: nothing new, no turn of its own
        queues[d].append((i, mark[d], end, acks[i]))
        mark[d] = end
    out, at, placed = [], [0, 0], [0, 0]
    while at[0] < len(queues[0]) or at[1] < len(queues[1]):
        heads = [q[k] if k < len(q) else None for q, k in zip(queues, at)]
        ready = [e is not None and (e[3] is None or e[3] <= placed[1 - d]) for d, e in enumerate(heads)]
        c, s = heads
        if ready[0] and ready[1]:
            # each could come next: one sent before the other's bytes had arrived goes first
            s_first = s[3] is not None and s[3] <= c[1]
            c_first = c[3] is not None and c[3] <= s[1]
            d = 1 if s_first and not c_first else 0 if c_first and not s_first else int(s[0] < c[0])
        elif ready[0] or ready[1]:
            d = 0 if ready[0] else 1
        else:
            d = 0 if s is None or (c is not None and c[0] < s[0]) else 1
        i, start, end, _ = heads[d]
        out.append((d, i, start, end))
        placed[d] = end
        at[d] += 1
    return out


def _timed_turns(conv, client, server, arr, h, lost=False, cut=None, c_from=0, s_from=0):
    """Turns in the order of the two streams' bytes (_in_order): client bytes until the server
    answers, and so on. `lost`: as for _http_turns. `cut`: where a gap cuts the client's stream
    (--partial): the client's bytes after it, and answers to them, are not replayed. `c_from`,
    `s_from`: where the turns start in each stream (after an HTTP upgrade)."""
    ts = arr["ts_ns"].tolist()
    c_start = c_mark = c_from
    s_start = s_mark = s_from
    answered = False
    t_start = None
    for d, i, start, end in _in_order(arr, h):
        if d == 0:
            if cut is not None and end > cut:
                break                    # sent after the hole: neither it nor what answers it can be replayed
            end = min(end, len(client))
            if end <= c_mark:
                continue
            if answered:
                conv.turns.append(Turn(client[c_start:c_mark], server[s_start:s_mark], t_start, c_start,
                                       whole=not (lost and s_mark >= len(server))))
                c_start, s_start, answered, t_start = c_mark, s_mark, False, None
            if t_start is None:
                t_start = ts[i]
            c_mark = end
        else:
            if end <= s_from:
                continue                 # (an answer before the upgrade, already a turn's)
            if t_start is None:
                t_start = ts[i]          # the server speaks first (a banner)
            s_mark = max(s_mark, min(end, len(server)))
            answered = True
    if c_mark > c_start or s_mark > s_start:
        conv.turns.append(Turn(client[c_start:c_mark], server[s_start:s_mark], t_start or 0, c_start,
                               whole=not (lost and s_mark >= len(server))))


# --- comparing answers -------------------------------------------------------------------------

# difflib is quadratic in lines: bodies are diffed over their first DIFF_BYTES only, and a diff
# line is cut at DIFF_LINE characters, so that a big differing body costs milliseconds, not minutes
DIFF_BYTES = 16384
DIFF_LINE = 200


# a body whose media type says what it is: text (a unified diff) or not (its first differing byte)
TEXT_TYPE = re.compile(r"text/|application/(?:[\w.-]+\+)?(?:json|xml|javascript|ecmascript|x-www-form-urlencoded)\b"
                       r"|image/svg\+xml\b", re.I)
BINARY_TYPE = re.compile(r"image/|audio/|video/|font/|application/(?:octet-stream|zip|gzip|x-gzip|pdf|wasm|"
                         r"x-protobuf|protobuf|grpc|ogg|vnd\.)", re.I)
# C0 controls that text does not hold (tab, line ends, form feed and escape it may)
CONTROLS = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")


def body_kind(headers):
    """"text", "binary" or None (the bytes decide) for a body with these HTTP headers: an
    encoded one (gzip, br...) is binary whatever its media type."""
    coding = ",".join(headers.get("content-encoding", [])).strip().lower()
    if coding and coding != "identity":
        return "binary"
    ctype = ",".join(headers.get("content-type", [])).strip()
    # (text first: application/vnd.api+json is text)
    return "text" if TEXT_TYPE.match(ctype) else "binary" if BINARY_TYPE.match(ctype) else None


def _as_text(x, kind):
    """The first DIFF_BYTES of `x` as text, or None when it is binary: by `kind` if known, else
    when it is not UTF-8 or holds control characters. Text that is not UTF-8 is read as
    latin-1, which keeps every byte (dropping undecodable ones could hide a difference)."""
    if kind == "binary":
        return None
    part = x[:DIFF_BYTES]
    try:
        text = part.decode("utf-8")
    except UnicodeDecodeError as e:
        # a character the cut at DIFF_BYTES split is text still; any other bad byte is not UTF-8
        if len(x) > DIFF_BYTES and e.start >= len(part) - 3 and e.reason == "unexpected end of data":
            text = part[:e.start].decode("utf-8")
        elif kind == "text":
            return part.decode("latin-1")
        else:
            return None
    if kind is None and CONTROLS.search(part):
        return None
    return text


def first_difference(a, b):
    """The offset of the first byte where `a` and `b` differ (the shorter one's length when
    one begins the other)."""
    n, lo = min(len(a), len(b)), 0
    # (compared a block at a time in C: a big body is not walked byte by byte in Python)
    step = 4096
    while lo + step <= n and a[lo:lo + step] == b[lo:lo + step]:
        lo += step
    return next((i for i in range(lo, n) if a[i] != b[i]), n)


def _text_diff(a, b, limit=12, kind=None):
    """What tells `a` from `b`: a short unified diff when both are text, else where the first
    differing byte is; `kind` ("text", "binary" or None) is what the answer's headers say."""
    ta, tb = _as_text(a, kind), _as_text(b, kind)
    k = first_difference(a, b)
    if ta is None or tb is None:
        return [f"binary: {len(a)} bytes recorded, {len(b)} now; first difference at byte {k}"]
    lines = [x if len(x) <= DIFF_LINE else x[:DIFF_LINE] + f"... ({len(x) - DIFF_LINE} more characters)"
             for x in difflib.unified_diff(ta.splitlines(), tb.splitlines(), "recorded", "replayed", n=1, lineterm="")]
    out = lines[:limit] + ([f"... {len(lines) - limit} more lines"] if len(lines) > limit else [])
    if not lines:
        # past the part compared as lines, or in line ends only
        out.append(f"first difference at byte {k}")
    if len(a) > DIFF_BYTES or len(b) > DIFF_BYTES:
        out.append(f"(the first {DIFF_BYTES} bytes of each compared: {len(a)} recorded, {len(b)} now)")
    return out


def compare(expected, got, match, method=None, ignore_headers=(), ignore_body=None):
    """[] when the answers agree, else a list of differences (dicts)."""
    if match != "http":
        if ignore_body is not None:
            # (the answer is its own body here: what varies is masked in it as a whole)
            expected, got = ignore_body.sub(b"", expected), ignore_body.sub(b"", got)
        if expected == got:
            return []
        return [{"what": "bytes", "recorded": len(expected), "replayed": len(got), "diff": _text_diff(expected, got)}]
    a = final_response(expected, 0, method, eof=True) if expected else None
    b = final_response(got, 0, method, eof=True) if got else None
    if a is None or b is None or not http1.RESPONSE_LINE.match(b[1]):
        if expected == got:
            return []

        def said(data, m):
            if m is not None:
                line = m[1].decode("latin-1")
                return line if http1.RESPONSE_LINE.match(m[1]) else f"not an HTTP response: {line[:60]!r}"
            if data.startswith(b"HTTP/"):
                return f"an incomplete response ({len(data)} bytes)"
            # (its first bytes: what the server speaks instead)
            return f"not an HTTP response: {data[:60].decode('latin-1')!r}" if data else "nothing"
        return [{"what": "message", "recorded": said(expected, a), "replayed": said(got, b)}]
    out = []
    sa, sb = a[1].split(b" ", 2), b[1].split(b" ", 2)
    if sa[1:2] != sb[1:2]:
        out.append({"what": "status", "recorded": a[1].decode("latin-1"), "replayed": b[1].decode("latin-1")})
    skip = set(VOLATILE_HEADERS) | {x.lower() for x in ignore_headers} | {"content-length", "transfer-encoding"}
    for name in sorted((set(a[2]) | set(b[2])) - skip):
        if a[2].get(name) != b[2].get(name):
            out.append({"what": f"header {name}", "recorded": a[2].get(name), "replayed": b[2].get(name)})
    ba, bb = expected[a[3][0]:a[3][1]], got[b[3][0]:b[3][1]]
    ta, tb = {}, {}
    if "chunked" in ",".join(a[2].get("transfer-encoding", [])).lower():
        ba, ta = dechunk(ba)
    if "chunked" in ",".join(b[2].get("transfer-encoding", [])).lower():
        bb, tb = dechunk(bb)
    # trailer fields (after a chunked body's last chunk) are header fields that come late
    for name in sorted((set(ta) | set(tb)) - skip):
        if ta.get(name) != tb.get(name):
            out.append({"what": f"trailer {name}", "recorded": ta.get(name), "replayed": tb.get(name)})
    if ignore_body is not None:
        ba, bb = ignore_body.sub(b"", ba), ignore_body.sub(b"", bb)
    if ba != bb:
        kinds = {body_kind(a[2]), body_kind(b[2])}
        kind = "binary" if "binary" in kinds else "text" if "text" in kinds else None
        out.append({"what": "body", "recorded": len(ba), "replayed": len(bb), "diff": _text_diff(ba, bb, kind=kind)})
    if len(got) - b[0] != len(expected) - a[0]:
        # bytes after a whole response answer nothing: the server said more than it was asked
        out.append({"what": "extra bytes after the response", "recorded": len(expected) - a[0],
                    "replayed": len(got) - b[0], "diff": _text_diff(expected[a[0]:], got[b[0]:])})
    return out


# --- playing -----------------------------------------------------------------------------------

class _Inbox:
    """What the server sent on one connection, read as it comes: its bytes are charged to a turn
    by framing or by where they lie in the server's stream, never by which turn happens to be
    waiting when they arrive."""

    def __init__(self, reader):
        self.buf = bytearray()
        self.closed = False
        self.error = None               # what ended the stream, when not a clean close
        self._news = asyncio.Event()
        self._task = asyncio.ensure_future(self._pump(reader))

    async def _pump(self, reader):
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                self.buf += chunk
                self._news.set()
        except (ConnectionError, OSError) as e:
            self.error = e
        finally:
            self.closed = True
            self._news.set()

    async def news(self, seconds):
        """Wait up to `seconds` for more bytes or the end; False when nothing came."""
        if self.closed or seconds <= 0:
            return False
        self._news.clear()
        try:
            await asyncio.wait_for(self._news.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def quiet(self, idle, deadline):
        """Read on until the server closes, is silent for `idle` seconds, or the deadline;
        True unless the deadline came first with the server still sending."""
        while not self.closed:
            left = deadline - time.monotonic()
            if not await self.news(min(idle, left)):
                return left > idle or self.closed
        return True

    @property
    def ended(self):
        """How the server's stream ended: "reset", "closed", or None while it is open."""
        return None if not self.closed else "reset" if self.error is not None else "closed"

    def take(self, n=None):
        n = len(self.buf) if n is None else n
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self):
        self._task.cancel()


class _Answer:
    """What the server sent back for one turn: `data`; `whole`, whether it is all of its
    answer (HTTP: a whole response; bytes: as long as recorded, or followed by silence);
    `ended`, what ended the wait otherwise: "closed", "reset" or "timeout" (and, for a whole
    response that ends at the close, "timeout": the close never came)."""
    __slots__ = ("data", "whole", "ended")

    def __init__(self, data, whole, ended=None):
        self.data, self.whole, self.ended = data, whole, ended


def _close_delimited(m):
    """Does the response of http_message() `m` end at the close (no length, not chunked)?"""
    return "chunked" not in ",".join(m[2].get("transfer-encoding", [])).lower() and "content-length" not in m[2]


async def _read_answer(inbox, turn, http, timeout, idle, last=None, following=None):
    """What the server sends back for one turn (an _Answer). HTTP: a whole response (one
    without length: up to the server's close) and whatever came after it, extra. Otherwise the
    bytes the server sent before the client's next turn was due: while they agree with the
    recorded answer, as many as it holds (those after them are the next turn's, as
    `following`, the next turn's recorded answer, begins); once they differ from it or say
    more, all that comes before the server goes quiet for `idle` seconds, so that a longer or
    different answer is this turn's and the next turn's answer starts where it should. The last
    turn reads on until the server closes or goes quiet, so that an answer longer than recorded
    shows (`last`: called first, when the recorded answer is in)."""
    want = len(turn.response)
    if not want:
        timeout = min(timeout, idle / 4)  # the original had no answer here: do not wait long for one
    # a recorded answer that is not a whole message (the capture lost or cut it) is awaited by
    # its length, as raw bytes are
    by_length = not http or not turn.whole
    deadline = time.monotonic() + timeout
    agreed = 0                            # bytes seen to agree with the recorded answer

    async def rest():
        # all the server sends until it closes or goes quiet (a reset before the recorded
        # length, or the deadline while bytes still come, cut it short)
        calm = await inbox.quiet(idle, deadline)
        got = inbox.take()
        ended = "reset" if inbox.ended == "reset" and len(got) < want else None if calm else "timeout"
        return _Answer(got, ended is None, ended)
    while True:
        have = len(inbox.buf)
        if http and have:
            m = final_response(bytes(inbox.buf), 0, turn.method, eof=inbox.closed)
            if m is not None and not _interim(m[1]):
                if turn.switch and not last:
                    # what follows the switch is the next turn's, however soon it came
                    return _Answer(inbox.take(m[0]), True)
                if last:
                    last()
                    await inbox.quiet(idle, deadline)
                return _Answer(inbox.take(), True)
        if by_length and have:
            n = min(have, want)
            if inbox.buf[agreed:n] != turn.response[agreed:n]:
                return await rest()       # it differs: all of it is this turn's answer
            agreed = n
            if want and have >= want:
                if last:
                    last()
                    return await rest()
                surplus = bytes(inbox.buf[want:want + len(following or b"")])
                if have == want or following and surplus == following[:len(surplus)]:
                    return _Answer(inbox.take(want), True)
                return await rest()       # more than recorded, and not the next answer's start
        if inbox.closed:
            got = inbox.take()
            # (bytes shorter than recorded that end with the close of the last turn: its answer)
            whole = bool(got) and by_length and last is not None and inbox.ended == "closed"
            return _Answer(got, whole, None if whole else inbox.ended)
        left = deadline - time.monotonic()
        if left <= 0:
            got = inbox.take()
            if http and got:
                m = final_response(got, 0, turn.method, eof=True)
                if m is not None and not _interim(m[1]) and _close_delimited(m):
                    return _Answer(got, True, "timeout")     # whole, but for the close that never came
            return _Answer(got, False, "timeout")
        if not await inbox.news(min(left, idle) if have and by_length else left) and have and by_length:
            return _Answer(inbox.take(), True)     # it went quiet: that is its answer


def _said(e):
    return getattr(e, "strerror", None) or type(e).__name__


class _FirstConnection:
    """The first connection of a run is made alone, the others after it: a target that does
    not accept it ends the run in one line (check()) before any other is tried. Nothing
    connects beforehand only to check the target: a server would log that empty connection
    as one of the replay's."""

    def __init__(self):
        self.taken = False
        self.error = None
        self._done = asyncio.Event()

    async def open(self, host, port, timeout):
        if self.taken:
            await self._done.wait()
            if self.error is not None:
                raise self.error
            return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        self.taken = True
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            self.error = e
            raise
        finally:
            self._done.set()

    def check(self, host, port):
        """Raise FlowsiftError when the first connection failed: the target is not there."""
        e = self.error
        if e is not None:
            why = "timed out" if isinstance(e, asyncio.TimeoutError) else (
                os.strerror(e.errno) if getattr(e, "errno", None) else str(e))
            raise FlowsiftError(f"cannot connect to {_where(host, port)}: {why}")


def _cut_short(ans, turn, timeout):
    """Why the answer `ans` to `turn` is not all of it, in words: the server closed or reset
    the connection, or --timeout ran out, before it or during it."""
    n = len(ans.data)
    if turn.http and turn.whole:
        what = (f"an incomplete response, {n} bytes" if b"HTTP/".startswith(ans.data[:5])
                else f"not an HTTP response: {ans.data[:60].decode('latin-1')!r}")
    else:
        what = f"{n} bytes came, {len(turn.response)} recorded"
    if ans.ended == "timeout":
        if not n:
            return f"no answer within {timeout:g} s"
        return f"--timeout ({timeout:g} s) ran out during its answer ({what})"
    how = "reset" if ans.ended == "reset" else "closed"
    if not n:
        return f"the server {how} the connection without answering"
    if turn.http and turn.whole:
        return f"the server {how} the connection during its answer ({what})"
    return f"the server {how} the connection after {n} of the {len(turn.response)} bytes recorded for its answer"


def _first_line(data, limit=80):
    """A request's first line as text, within its first `limit` bytes; one that is not text is
    shown in hex."""
    line = data[:limit].split(b"\n", 1)[0].rstrip(b"\r")
    if CONTROLS.search(line) or b"\r" in line:
        return "binary: " + data[:16].hex(" ") + (" ..." if len(data) > 16 else "")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


class Replayer:
    def __init__(self, host, port, speed=None, concurrency=8, match="exact", ignore_headers=(), ignore_body=None,
                 timeout=10.0, idle=1.0, on_done=None):
        self.host, self.port = host, port
        self.speed = speed              # None: as fast as possible; else a multiple of the original pace
        self.concurrency = concurrency
        self.match = match
        self.ignore_headers = ignore_headers
        self.ignore_body = re.compile(ignore_body.encode()) if ignore_body else None
        self.timeout, self.idle = timeout, idle
        self.on_done = on_done
        self.stop = False
        self.first = _FirstConnection()

    async def play(self, conv):
        """Replay one conversation; returns its result dict."""
        res = {"conn": conv.conn, "client": conv.client, "server": conv.server, **_vlan(conv), "turns": 0,
               "identical": 0, "differing": 0, "unanswered": 0, "incomplete": 0, "failed": None, "differences": [],
               "http": conv.http}
        if conv.cut is not None:
            res["partial_at"] = conv.cut
        try:
            reader, writer = await self.first.open(self.host, self.port, self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            res["failed"] = f"connect: {_said(e)}"
            return res
        inbox = _Inbox(reader)

        def finish():
            # the last answer is in: the client is done, as it was in the original; a server that
            # closes on that ends the wait for anything more at once
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass
        t0, first = time.monotonic(), conv.turns[0].start if conv.turns else 0
        i = 0
        try:
            for i, turn in enumerate(conv.turns):
                if self.stop:
                    break
                if i:
                    # (a close already received is seen before the next turn goes out: the read
                    # of its end is a turn of the event loop behind the bytes before it)
                    for _ in range(3):
                        await asyncio.sleep(0)
                if i and inbox.closed and (turn.request or turn.response):
                    if not any(t.response for t in conv.turns[i:]):
                        break                   # as in the original, whose server said nothing more
                    # it closed during or after the turn before: that turn is where, not this one
                    res["failed"] = (f"turn {i - 1}: the server {inbox.ended} the connection after its answer "
                                     f"(turn {i} and after not sent)")
                    break
                if self.speed and i:
                    wait = (turn.start - first) / 1e9 / self.speed - (time.monotonic() - t0)
                    if wait > 0:
                        await asyncio.sleep(wait)
                if turn.request:
                    writer.write(turn.request)
                    await writer.drain()
                if not turn.response and not turn.http and turn.whole:
                    res["unanswered"] += 1      # sent; the original had no answer to compare with
                    continue
                last = finish if i == len(conv.turns) - 1 and turn.response else None
                following = conv.turns[i + 1].response if i + 1 < len(conv.turns) else None
                ans = await _read_answer(inbox, turn, turn.http, self.timeout, self.idle, last, following)
                if not turn.whole:
                    res["incomplete"] += 1      # part of the recorded answer is missing: nothing to hold it to
                    continue
                if not turn.response:
                    res["unanswered"] += 1      # nothing recorded to compare with
                    continue
                if not ans.whole:
                    # closed, reset or out of time before the answer was all there: no verdict on it
                    res["failed"] = f"turn {i}: " + _cut_short(ans, turn, self.timeout)
                    break
                # (bytes after an upgrade are compared as bytes)
                match = "http" if self.match == "http" and turn.http else "exact"
                diff = compare(turn.response, ans.data, match, turn.method, self.ignore_headers, self.ignore_body)
                if ans.ended == "timeout" and ans.whole:
                    # a response that ends at the close: the close never came
                    diff.append({"what": "end", "recorded": "the server closed the connection",
                                 "replayed": f"still open when --timeout ({self.timeout:g} s) ran out"})
                if diff:
                    res["differing"] += 1
                    res["differences"].append({"turn": i, "offset": turn.offset, "request": _first_line(turn.request),
                                               "differences": diff})
                else:
                    res["identical"] += 1
        except (ConnectionError, OSError) as e:
            res["failed"] = f"turn {i}: connection: {_said(e)}"
        finally:
            inbox.close()
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1)
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass
        res["turns"] = res["identical"] + res["differing"]      # compared, as the summary's turns
        return res

    async def run(self, convs, limit=None):
        sem = asyncio.Semaphore(_descriptor_room(self.concurrency))
        results = self.results = []

        async def one(c):
            async with sem:
                if self.stop:
                    return
                r = await self.play(c)
                results.append(r)
                if self.on_done is not None:
                    self.on_done(r)
        todo = convs[:limit] if limit else convs
        await asyncio.gather(*(one(c) for c in todo))
        return results


def _ipv6(text):
    import ipaddress
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_target(text):
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") or host.endswith("]")
    expected = f"--to {text!r}: expected HOST:PORT (an IPv6 address in brackets: [::1]:8080)"
    if not sep or not port.isdigit() or not host or (bracketed and not (host[0] == "[" and host[-1] == "]")):
        raise UsageError(expected)
    if not 1 <= int(port) <= 65535:
        raise UsageError(f"--to {text!r}: port {port} is not from 1 to 65535")
    host = host[1:-1] if bracketed else host
    # an IPv6 address in brackets, and nothing else: unbracketed, 2001:db8::1:80 reads as an
    # address with a port and as one without
    if bracketed != (":" in host) or (bracketed and not _ipv6(host)):
        raise UsageError(expected)
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FlowsiftError(f"--to {text}: cannot resolve {host}: {e.strerror}") from None
    return host, int(port)


def _check_choice(server_port, limit):
    if limit is not None and limit < 0:
        raise UsageError(f"--limit {limit}: a number of connections (0: no limit)")
    if server_port is not None and not 1 <= server_port <= 65535:
        raise UsageError(f"--server-port {server_port}: a port, from 1 to 65535")


def _other_port(conv, server_port):
    return server_port is not None and int(conv.server.rpartition(":")[2]) != server_port


# the waits a turn may be given: from a millisecond (less, and the connect itself times out,
# said as the server's failure) to a day (inf, or 1e308, would wait for ever)
MIN_WAIT, MAX_WAIT = 0.001, 86400.0


def _check_waits(timeout, idle=None):
    # 0 would fail every turn at once; no wait is negative
    for name, wait in (("--timeout", timeout), ("--idle", idle)):
        if wait is not None and not MIN_WAIT <= wait <= MAX_WAIT:
            raise UsageError(f"{name} {written(wait)}: seconds, from {MIN_WAIT:g} (1ms) to {MAX_WAIT:g} (a day)")


def _where(host, port):
    # an IPv6 address in brackets, as flowsift writes endpoints, however --to gave it
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def store_problems(store):
    """What `inspect` lists as a kept store's problems beyond its record files' own, one line
    per kind (a kind met more than once counted after its first): store.json missing,
    unreadable, of another format or saying the store is incomplete, record files it made that
    are not there, entries named as record files that are not (never read), files not in place.
    A replay goes on with the record files there are, and says these first."""
    from flowsift.inspect import entry_problems, manifest_problems
    _, _, lines = manifest_problems(store)
    kinds = {}
    for kind, line in entry_problems(store):
        kinds.setdefault(kind, []).append(line)
    return lines + [_one_of(found, "entries like it") for found in kinds.values()]


def _one_of(lines, what):
    return lines[0] + (f" (and {len(lines) - 1:,} more {what})" if len(lines) > 1 else "")


def _said_problems(store, truncated, on_notice, misnamed=()):
    """A kept store's problems (store_problems), its record files cut short (`truncated`:
    their names and what they lack) and those named for another connection than their
    header's (`misnamed`, not replayed), each said to `on_notice`: the summary's
    `store_problems`."""
    if store is None:
        return []
    lines = store_problems(store)
    if truncated:
        lines.append(_one_of([f"{os.path.basename(p)}: {why}" for p, why in truncated], "record files cut short"))
    if misnamed:
        lines.append(_one_of([f"{os.path.basename(p)}: {why} (not replayed)" for p, why in misnamed],
                             "record files named for another connection"))
    if on_notice is not None:
        for line in lines:
            on_notice(f"{store}: {line}")
    return lines


def _vlan(c):
    """{"vlan": ids} of a connection (a Conversation or a result row) whose gateway keyed
    connections by VLAN; else nothing."""
    from flowsift.streams.format import vlan_field
    return vlan_field(c.get("vlan") if isinstance(c, dict) else c.vlan)


def _store_of(source, store, filter_expression, on_progress, policy="first", reassembly=None, vlan_key=False,
              checksums="ignore"):
    """A kept store for `source` (a capture, read now into a temporary store) or `store`."""
    if store is not None:
        from flowsift.streams.reader import check_store
        check_store(store)
        return store, None
    if source is None:
        raise UsageError("give a capture, or --store DIR")
    from flowsift.gateway import Gateway
    g = Gateway(None, keep=True, filter_expression=filter_expression, policy=policy, vlan_key=vlan_key,
                checksums=checksums, **(reassembly or {}))
    try:
        summary = g.run_capture(source, on_progress=on_progress)
        if summary["error"]:
            raise FlowsiftError(summary["error"])
    except BaseException:
        # the store is ours: a capture that cannot be read (or Ctrl-C while reading it) leaves none
        shutil.rmtree(g.store_dir, ignore_errors=True)
        raise
    return g.store_dir, g.store_dir


class _Report:
    """--report FILE, opened before anything is read or sent: a file that cannot be written is
    said at once, not after the whole replay with its results lost. A file made here is removed
    again when no report comes (an error, Ctrl-C while reading)."""

    def __init__(self, path):
        self.path = path
        self.made = not os.path.exists(path)
        try:
            self.f = open(path, "a")        # (not "w": an old report stays until the new one is written)
        except OSError as e:
            raise FlowsiftError(f"{path}: cannot write the report: {e.strerror}") from None

    def write(self, obj):
        """Write the report; one that cannot be written whole (a full disk) is an error, and a
        file made for it is removed: no empty or cut report is left to be read as one."""
        text = json.dumps(obj, indent=1)
        try:
            with self.f:
                # (a device or a FIFO, /dev/null or a reader's pipe, is written as it is: it
                # holds no old report, and cannot be truncated)
                if stat.S_ISREG(os.fstat(self.f.fileno()).st_mode):
                    # the room first: a disk too full for the report refuses it here, while an
                    # old report is still whole (file systems without fallocate are written as
                    # they are)
                    size = len(text.encode())
                    try:
                        os.posix_fallocate(self.f.fileno(), 0, max(size, 1))
                    except OSError as e:
                        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                            raise
                    self.f.truncate(0)
                self.f.write(text)
        except OSError as e:
            self.abandon()
            raise FlowsiftError(f"{self.path}: cannot write the report: {e.strerror}") from None

    def abandon(self):
        self.f.close()
        if self.made:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def replay(source, to, store=None, filter_expression=None, server_port=None, speed=None, concurrency=8, limit=None,
           partial=False, match="exact", ignore_headers=(), ignore_body=None, timeout=10.0, idle=1.0, report=None,
           on_progress=None, on_conversation=None, on_start=None, policy="first", reassembly=None, on_notice=None,
           vlan_key=False, checksums="ignore"):
    """Replay the connections of `source` (or of the kept `store`) against `to`; returns the summary.
    `policy`, `reassembly` (flowsift.bounds), `vlan_key` and `checksums` are how a capture is reassembled;
    `on_notice` is told, in one line, of a -j the descriptor limit lowers."""
    from flowsift.streams.reader import store_files
    if source is not None and store is not None:
        raise UsageError("give a capture or --store DIR, not both")
    host, port = parse_target(to)
    _check_choice(server_port, limit)
    _check_waits(timeout, idle)
    if store is not None:
        from flowsift.streams.reader import check_kept_store
        check_kept_store(store)
    if match not in ("exact", "http"):
        raise UsageError(f"--match {match!r}: exact or http")
    if ignore_body:
        try:
            re.compile(ignore_body)
        except re.error as e:
            raise UsageError(f"--ignore-body-regex: {e}") from None
    out = _Report(report) if report else None
    skipped, convs, temporary = {}, [], None
    # the replay has started: a stop from now on ends it with the summary of what finished (of
    # no connection while the capture, or the store, is still read)
    t0, looping, early = time.monotonic(), False, None
    try:
        directory, temporary = _store_of(source, store, filter_expression, on_progress, policy, reassembly, vlan_key,
                                             checksums)
        truncated, misnamed = [], []
        for path in store_files(directory):
            c = conversation(path, partial=partial)
            if c.truncated:
                truncated.append((path, c.truncated))
            if c.misnamed:
                misnamed.append((path, c.misnamed))
            if c.skip is None and _other_port(c, server_port):
                c.skip = "other server port"
            if c.skip is None and not c.turns:
                c.skip = "no data"
            if c.skip is not None:
                skipped[c.skip] = skipped.get(c.skip, 0) + 1
                continue
            convs.append(c)
        if limit and len(convs) > limit:
            skipped["limit"] = len(convs) - limit       # every connection is accounted for
        problems = _said_problems(store, truncated, on_notice, misnamed)
        if match == "http" and ignore_headers and on_notice is not None and not any(c.http for c in convs):
            on_notice("--ignore-header: no connection replayed is HTTP, it applies to none")
        ports = _server_ports(convs[:limit] if limit else convs)
        if server_port is None:
            _say_ports(ports, _where(host, port), on_notice)
        rp = Replayer(host, port, speed=speed, concurrency=concurrency, match=match, ignore_headers=ignore_headers,
                      ignore_body=ignore_body, timeout=timeout, idle=idle, on_done=on_conversation)
        _say_room(concurrency, on_notice)
        if on_start is not None:
            on_start(min(len(convs), limit) if limit else len(convs))
        t0 = time.monotonic()
        interrupted = False
        loop = asyncio.new_event_loop()
        looping = True
        try:
            try:
                with stops_held():
                    results = loop.run_until_complete(_stoppable(rp.run(convs, limit)))
            except (KeyboardInterrupt, Terminated) as stop:
                # Ctrl-C, SIGTERM: what is under way was abandoned; the summary covers what finished
                rp.stop, interrupted = True, "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
                results = list(getattr(rp, "results", []))
        finally:
            loop.close()
        rp.first.check(host, port)
        secs = time.monotonic() - t0
    except (KeyboardInterrupt, Terminated) as stop:
        if looping:
            if out is not None:
                out.abandon()
            raise
        early = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
    except BaseException:
        if out is not None:
            out.abandon()
        raise
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    if early is not None:
        # stopped before any connection was replayed: nothing was sent
        return _summary([], {}, time.monotonic() - t0, _where(host, port), match, early, out, [], {})
    return _summary(results, skipped, secs, _where(host, port), match, interrupted, out, problems, ports)


def _summary(results, skipped, secs, to, match, interrupted, report, problems=(), server_ports=None):
    results.sort(key=lambda r: r["conn"])
    turns = sum(r["identical"] + r["differing"] for r in results)
    out = {"target": to, "match": match, "seconds": round(secs, 3),
           "connections": len(results),
           "identical": sum(1 for r in results if not r["failed"] and not r["differing"] and r["identical"]),
           # every turn unanswered or incomplete in the original: nothing shows it answers as recorded
           "uncompared": sum(1 for r in results if not r["failed"] and not r["differing"] and not r["identical"]),
           "differing": sum(1 for r in results if not r["failed"] and r["differing"]),
           "failed": sum(1 for r in results if r["failed"]),
           "turns": turns, "turns_identical": sum(r["identical"] for r in results),
           "turns_differing": sum(r["differing"] for r in results),
           "turns_unanswered": sum(r["unanswered"] for r in results),
           "turns_incomplete": sum(r["incomplete"] for r in results),
           "skipped": dict(sorted(skipped.items())), "partial": sum(1 for r in results if "partial_at" in r),
           "store_problems": list(problems), "interrupted": bool(interrupted),
           "signal": interrupted or None,         # which stop ended it: SIGINT (Ctrl-C) or SIGTERM
           "report": str(report.path) if report else None}
    out["connections_per_second"] = round(len(results) / secs, 1) if secs else None
    out["turns_per_second"] = round(turns / secs, 1) if secs else None
    out["failures"] = [{"conn": r["conn"], "client": r["client"], **_vlan(r), "reason": r["failed"]}
                       for r in results if r["failed"]][:20]
    out["first_differences"] = [
        {"conn": r["conn"], "client": r["client"], "server": r["server"], **_vlan(r), "turn": d["turn"], "request": d["request"],
         "what": [x["what"] for x in d["differences"]]}
        for r in results for d in r["differences"]][:10]
    for r in results:
        if not r["failed"] and not r["differing"] and not r["identical"]:
            r["uncompared"] = _why_uncompared(r)
    out["uncompared_connections"] = [{"conn": r["conn"], "client": r["client"], "server": r["server"], **_vlan(r),
                                      "why": r["uncompared"]} for r in results if r.get("uncompared")][:20]
    out["server_ports"] = server_ports
    if report:
        report.write({"summary": out, "connections": [r for r in results if r["failed"] or r["differing"]
                                                      or "partial_at" in r or r.get("uncompared")]})
    return out


def _why_uncompared(r):
    """Why no turn of a connection replayed was compared, in words."""
    if r["unanswered"] and r["incomplete"]:
        return (f"the original answered none of its turns whole ({r['unanswered']} unanswered, "
                f"{r['incomplete']} recorded in part)")
    if r["unanswered"]:
        return f"the original never answered ({r['unanswered']} turn{'s' * (r['unanswered'] > 1)} sent)"
    if r["incomplete"]:
        return (f"the capture holds none of its answers whole ({r['incomplete']} "
                f"turn{'s' * (r['incomplete'] > 1)} sent)")
    return "no turn was sent"


def _server_ports(convs):
    """{server port: connections} of the connections to replay, the most used first."""
    ports = {}
    for c in convs:
        p = int(c.server.rpartition(":")[2])
        ports[p] = ports.get(p, 0) + 1
    return dict(sorted(ports.items(), key=lambda kv: (-kv[1], kv[0])))


def _say_ports(ports, to, on_notice):
    """One line when connections to several server ports all go to `to`: a capture's FTP data
    connections, say, sent to its control server."""
    if len(ports) > 1 and on_notice is not None:
        named = ", ".join(f"{p} ({n:,})" for p, n in list(ports.items())[:5]) + (
            f" and {len(ports) - 5:,} more" if len(ports) > 5 else "")
        on_notice(f"connections to {len(ports):,} server ports, all replayed against {to}: {named}; "
                  "--server-port N replays those to one")


# --- what a backend had not acknowledged -------------------------------------------------------

def unacked_plan(path):
    """What to send again for one connection of a kept store: (conversation, acked, start, end,
    note): [start, end) of the client's stream, `acked` the first byte the server had not
    acknowledged; or a skip reason in conversation.skip."""
    from flowsift.streams.reader import RecordFile
    with RecordFile(path) as rf:
        h = rf.header
        conv = _conversation_of(rf, path)
        if conv.skip:
            return conv, 0, 0, 0, None
        acked, end = h["acked0"], h["end0"]
        acked = max(acked, 0)
        gaps = rf.gaps(0)
        if gaps and gaps[0].offset < end:
            end = gaps[0].offset
            conv.cut = end
        if acked >= end:
            # (what is unacknowledged lies past the gap: it cannot be sent)
            conv.skip = "gap in the client's stream" if acked < h["end0"] else "everything acknowledged"
            return conv, acked, acked, end, None
        client = rf.data(0, 0, end)
    start, note = acked, "from the first unacknowledged byte (no message boundaries known)"
    if HTTP_REQUEST.match(client) or conv.cut is not None and HTTP_REQUEST_CUT.match(client):
        conv.http = True
        msgs = http_messages(client, True)
        for s, e in msgs:
            if s <= acked < e:
                start = s
                note = ("from the start of the request that holds the first unacknowledged byte "
                        f"({acked - s} bytes of it had been acknowledged)") if s < acked else "from a request boundary"
                break
        if conv.cut is not None and msgs and http_message(client, msgs[-1][0], True) is None:
            # the request the gap cuts into is not sent (as with --partial): a server would wait
            # for the bytes missing, or take what follows them for its body
            end = msgs[-1][0]
            if end <= start:
                conv.skip = "gap in the client's stream"
                return conv, acked, start, end, None
            note += "; up to the request the gap cuts into, not sent"
    elif conv.cut is not None:
        note += "; up to the gap"
    conv.turns = [Turn(client[start:end], b"", 0, start)]
    return conv, acked, start, end, note


# Descriptors kept for the process beside the connections' sockets: Python's own, the event
# loop's, a report, the store's files being read.
KEPT_DESCRIPTORS = 64


def _descriptor_room(concurrency):
    """Connections at once, within the descriptor limit (one socket each, some kept for the
    process): running out would fail connections for a reason that is ours, not the target's."""
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return concurrency if soft == resource.RLIM_INFINITY else max(1, min(concurrency, soft - KEPT_DESCRIPTORS))


def _say_room(concurrency, on_notice):
    """Tell `on_notice` when the descriptor limit lowers -j: fewer at once than asked is slower,
    and should not pass unsaid."""
    room = _descriptor_room(concurrency)
    if room < concurrency and on_notice is not None:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        on_notice(f"-j {concurrency} lowered to {room}: the descriptor limit ({soft}, ulimit -n) less "
                  f"{KEPT_DESCRIPTORS} kept for the process")


async def _stoppable(coro):
    """`coro`'s result, or None once cancelled for a stop. The stop is held meanwhile (run it in
    `stops_held`: raised at its end): raised where it came, in a transport's write it would be
    taken for that connection's failure (asyncio lets only KeyboardInterrupt through there)."""
    task = asyncio.ensure_future(coro)
    while not task.done():
        if stop_waits():
            task.cancel()
            break
        await asyncio.wait({task}, timeout=0.05)
    try:
        return await task
    except asyncio.CancelledError:
        return None


def replay_unacked(store, to, timeout=10.0, report=None, concurrency=8, server_port=None, limit=None, on_notice=None):
    """Send, per connection of the kept `store` (to `server_port` only; at most `limit` of
    them), the client bytes its server had not acknowledged, aligned to message boundaries;
    returns the summary. `on_notice`: as for replay()."""
    from flowsift.streams.reader import check_kept_store, store_files
    host, port = parse_target(to)
    _check_choice(server_port, limit)
    _check_waits(timeout)
    check_kept_store(store)
    out_file = _Report(report) if report else None
    skipped, plans, truncated, misnamed = {}, [], [], []
    for path in store_files(store):
        conv, acked, start, end, note = unacked_plan(path)
        if conv.truncated:
            truncated.append((path, conv.truncated))
        if conv.misnamed:
            misnamed.append((path, conv.misnamed))
        if conv.skip is None and _other_port(conv, server_port):
            conv.skip = "other server port"
        if conv.skip:
            skipped[conv.skip] = skipped.get(conv.skip, 0) + 1
            continue
        plans.append((conv, acked, start, end, note))
    if limit and len(plans) > limit:
        skipped["limit"] = len(plans) - limit           # every connection is accounted for, as in replay()
        del plans[limit:]
    problems = _said_problems(store, truncated, on_notice, misnamed)
    ports = _server_ports([p[0] for p in plans])
    if server_port is None:
        _say_ports(ports, _where(host, port), on_notice)

    async def send(conv, acked, start, end, note):
        data = conv.turns[0].request
        msgs = [(s, e) for s, e in http_messages(data, True)] if conv.http else [(0, len(data))]
        # bytes and messages: those sent (a failure leaves the rest unsent); planned: all there were
        row = {"conn": conv.conn, "client": conv.client, "server": conv.server, **_vlan(conv), "unacked_from": acked,
               "sent_from": start, "bytes": 0, "messages": 0, "bytes_planned": end - start,
               "messages_planned": len(msgs), "note": note, "answers": 0, "failed": None, "partial_at": conv.cut}
        try:
            reader, writer = await first.open(host, port, timeout)
        except (OSError, asyncio.TimeoutError) as e:
            row["failed"] = f"connect: {_said(e)}"
            return row
        inbox = _Inbox(reader)
        try:
            for s, e in msgs:
                writer.write(data[s:e])
                await writer.drain()
                row["bytes"] += e - s
                row["messages"] += 1
                if conv.http:
                    method = data[s:e].split(b" ", 1)[0]
                    # nothing recorded to compare with: any whole HTTP response will do
                    ans = await _read_answer(inbox, Turn(data[s:e], ANY_RESPONSE, 0, s, method), True, timeout, 1.0)
                    if not ans.whole:
                        k = msgs.index((s, e))
                        row["failed"] = (f"no answer to message {k} within {timeout:g} s" if ans.ended == "timeout"
                                         and not ans.data else f"message {k}: " + _cut_short(ans, Turn(
                                             data[s:e], ANY_RESPONSE, 0, s, method, http=True), timeout))
                        break
                    row["answers"] += 1
        except (ConnectionError, OSError) as e:
            row["failed"] = f"connection: {_said(e)}"
        finally:
            inbox.close()
            writer.close()
        return row

    first = None
    done = {}                   # plan index -> its row, as each finishes (a stop keeps these)

    async def main():
        nonlocal first
        first = _FirstConnection()
        sem = asyncio.Semaphore(_descriptor_room(concurrency))

        async def one(k, p):
            async with sem:
                done[k] = await send(*p)
        await asyncio.gather(*(one(k, p) for k, p in enumerate(plans)))
    if plans:
        _say_room(concurrency, on_notice)
    t0 = time.monotonic()
    interrupted = None
    try:
        try:
            if plans:
                with stops_held():
                    asyncio.run(_stoppable(main()))
        except (KeyboardInterrupt, Terminated) as stop:
            # Ctrl-C, SIGTERM: what was under way is abandoned; the summary covers the
            # connections that finished, as replay()'s does
            interrupted = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
        if first is not None and interrupted is None:
            first.check(host, port)
    except BaseException:
        if out_file is not None:
            out_file.abandon()
        raise
    rows = [done[k] for k in sorted(done)]
    out = {"target": _where(host, port), "mode": "unacked", "seconds": round(time.monotonic() - t0, 3), "connections": len(rows),
           "sent": sum(1 for r in rows if not r["failed"]), "failed": sum(1 for r in rows if r["failed"]),
           "bytes": sum(r["bytes"] for r in rows), "messages": sum(r["messages"] for r in rows),
           "answers": sum(r["answers"] for r in rows), "skipped": dict(sorted(skipped.items())),
           "store_problems": problems, "server_ports": ports, "report": str(report) if report else None,
           "failures": [{"conn": r["conn"], "client": r["client"], **_vlan(r), "reason": r["failed"]}
                        for r in rows if r["failed"]][:20],
           "interrupted": interrupted is not None, "signal": interrupted}
    if out_file:
        out_file.write({"summary": out, "connections": rows})
    return out
