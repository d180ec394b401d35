"""HTTP/1.x framing shared by the `http` module and `flowsift replay`: what a start line and a
header block say, and how a message's body is delimited (RFC 9112 section 6.3).

Lenient the way servers and tshark are: a header written `Name : value`, a header line folded
onto the next (obs-fold), a line without a colon or lines ending in a bare LF are accepted, and
said so (`lenient` counts what a strict parser such as llhttp refuses), not turned into an error
that loses the rest of the connection.
"""
import re

import httptools

# A header block longer than this is not looked for: servers refuse far less (Apache 8 KiB a
# line and 100 lines, nginx 4 x 8 KiB, h11 16 KiB in all); 64 KiB leaves room for big cookies.
MAX_HEAD = 65536
# A start line longer than this is not HTTP (Apache's LimitRequestLine is 8190).
MAX_START_LINE = 16384

METHOD = rb"[A-Z][A-Z0-9_-]{0,23}"
REQUEST_LINE = re.compile(rb"(" + METHOD + rb") +([^\r\n]*?) +HTTP/(1\.[01])[ \t]*\r?\Z")
# a status is three digits, 100 to 999 (RFC 9110 15: 1xx to 5xx defined; LinkedIn answers 999);
# "099" is not one
RESPONSE_LINE = re.compile(rb"HTTP/(1\.[01]) +([1-9]\d\d)(?:[ \t][^\r\n]*)?\r?\Z")
# prefixes of a start line not complete yet: enough to tell at its first bytes that a direction
# is not HTTP (a TLS record, an SSH banner, an SMTP greeting); a line cut between its CR and its
# LF is one too
REQUEST_PREFIX = re.compile(rb"(?:" + METHOD + rb"(?: [^\r\n]*\r?)?)?\Z")
RESPONSE_PREFIX = re.compile(rb"(?:H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01](?: [^\r\n]*\r?)?)?)?)?)?)?)?)?)?\Z")

NONE, LENGTH, CHUNKED, EOF = "none", "length", "chunked", "eof"


def response_without_body(method, status):
    """Does a response to `method` with `status` end with its header block? HEAD answers, 1xx,
    204, 304 and a CONNECT's 2xx (the tunnel follows) do, whatever their headers say."""
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    return (method == "HEAD" or 100 <= status < 200 or status in (204, 304)
            or (method == "CONNECT" and 200 <= status < 300))


def interim(status):
    """A 1xx response other than 101 (Switching Protocols) comes before the final one and does
    not answer the request by itself."""
    return 100 <= status < 200 and status != 101


def plausible_start(line, request, whole):
    """Can `line` (the bytes before the first LF; `whole`: the LF was seen) start an HTTP/1
    message? Tells a direction that is not HTTP at its first bytes."""
    if whole:
        return (REQUEST_LINE if request else RESPONSE_LINE).match(line) is not None
    return len(line) < MAX_START_LINE and (REQUEST_PREFIX if request else RESPONSE_PREFIX).match(line) is not None


def head_end(buf, start=0, stop=None):
    """Offset just after the blank line ending the header block in `buf[start:stop]` (an offset
    in `buf`), or -1. The block's lines may end in CRLF or a bare LF."""
    stop = len(buf) if stop is None else stop
    i = buf.find(b"\n\r\n", start, stop)
    if i >= 0:
        # a bare-LF blank line can only come first if it lies before this one
        j = buf.find(b"\n\n", start, i + 1)
        return i + 3 if j < 0 else j + 2
    j = buf.find(b"\n\n", start, stop)
    return -1 if j < 0 else j + 2


USED = ("host", "user-agent", "content-type", "content-length", "transfer-encoding", "connection", "upgrade")
_USED = frozenset(n.encode() for n in USED)
_FIRST = frozenset(c for n in _USED for c in (n[0], n[:1].upper()[0]))


class _Headers:
    """llhttp's callbacks for one header block: the headers flowsift reads, kept."""
    __slots__ = ("headers",)

    def __init__(self):
        self.headers = {}

    def on_header(self, name, value):
        # most headers are none of these: told at their first byte, before any lowercasing
        if name and name[0] in _FIRST:
            name = name.lower()
            if name in _USED:
                self.headers.setdefault(name.decode(), []).append(value.decode("latin-1"))


def parse_head(block, request):
    """(start, headers, lenient) of a header block (start line included, blank line optional):
    start is (method, target, version) or (version, status); headers {lowercased name: [values]}
    as latin-1 text, of the headers flowsift reads (USED); lenient the number of lines a strict
    parser refuses. None when the start line is not HTTP/1."""
    nl = block.find(b"\n")
    m = (REQUEST_LINE if request else RESPONSE_LINE).match(block if nl < 0 else block[:nl])
    if m is None:
        return None
    if request:
        start = (m.group(1).decode(), m.group(2).decode("latin-1"), m.group(3).decode())
    else:
        start = (m.group(1).decode(), int(m.group(2)))
    if nl < 0:
        return start, {}, 0
    # llhttp (strict) takes what RFC 9112 writes, in C; what it refuses is read line by line
    got = _Headers()
    parser = (httptools.HttpRequestParser if request else httptools.HttpResponseParser)(got)
    try:
        parser.feed_data(block)
    except httptools.HttpParserUpgrade:
        pass                                  # CONNECT, Upgrade: the header block was read
    except httptools.HttpParserError:
        return _parse_lenient(block.split(b"\n"), start)
    return start, got.headers, 0


def _parse_lenient(lines, start):
    # line by line: folded lines, `Name : value`, lines without a colon, bare LFs
    # lines ending in a bare LF count once (the line after the last LF is not one)
    lenient = int(any(not raw.endswith(b"\r") for raw in lines[:-1]))
    headers = {}
    last = None
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            lenient += 1                      # obs-fold: the value goes on
            if last is not None:
                last[-1] += " " + line.strip(b" \t").decode("latin-1")
            continue
        name, colon, value = line.partition(b":")
        key = name.strip(b" \t")
        if not colon or not key:
            lenient += 1                      # not a header line: passed over
            continue
        if key != name:
            lenient += 1                      # `Name : value`
        key = key.lower().decode("latin-1")
        if key not in USED:
            last = None
            continue
        last = headers.setdefault(key, [])
        last.append(value.strip(b" \t").decode("latin-1"))
    return start, headers, lenient


def framing(request, headers, method=None, status=None):
    """How the body of a message with these headers is delimited: (NONE, 0), (LENGTH, n),
    (CHUNKED, None) or (EOF, None) (a response read to the end of the connection); `method` is
    the request's, for a response. Raises ValueError for a length that cannot be trusted."""
    if not request and response_without_body(method, status):
        return NONE, 0
    te = ",".join(headers.get("transfer-encoding", ())).lower()
    if te:
        codings = [c.strip() for c in te.split(",") if c.strip()]
        if codings and codings[-1] == "chunked":
            return CHUNKED, None
        if request:
            raise ValueError(f"transfer-encoding {te!r} without chunked last")
        return EOF, None
    lengths = headers.get("content-length")
    if lengths:
        values = {v.strip() for v in ",".join(lengths).split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise ValueError(f"content-length {', '.join(lengths)!r}")
        n = int(values.pop())
        return (LENGTH, n) if n else (NONE, 0)
    return (NONE, 0) if request else (EOF, None)
