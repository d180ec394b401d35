import re

from flowsift import http1
from flowsift.modules.base import Module
from flowsift.modules.builtin import new_hole
from flowsift.streams.format import CLOSE_NAMES

# After a gap, parsing starts again at the next whole start line (up to its LF) that begins a
# line (after an LF) or a segment (a packet's payload: where tshark looks for messages too, and
# where a message after a body whose end was lost begins, as often as not): text quoting a
# start line inside a body ("... upstream said HTTP/1.1 503 ...") is neither.
REQUEST_START = re.compile(rb"(?:GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH|CONNECT|TRACE) [^\r\n]{1,8192} HTTP/1\.[01]\r?\n")
RESPONSE_START = re.compile(rb"HTTP/1\.[01] [1-9]\d\d(?:[ \t][^\r\n]*)?\r?\n")
# While looking for a message start, the last bytes are kept for the next call: a start line
# cut between two deliveries is still found (REQUEST_START spans up to 8 KiB).
RESYNC_TAIL = 8300
# Where a message was to start and none does (see Http._junk), the next one is looked for in
# this many bytes, text ones only (NUL bytes first, then no control byte but tab, CR and LF)
JUNK_LOOK = 8192
JUNK_TEXT = re.compile(rb"\x00*[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*")
# A message whose start line cannot be read: a line ending as a request line or a status line
# ends, that is not one, then header lines and a blank line
REQUEST_TAIL = re.compile(rb" HTTP/1\.[01][ \t]*\r?\Z")
RESPONSE_TAIL = re.compile(rb"[0-9] +[1-9]\d\d(?:[ \t][^\r\n]*)?\r?\Z")
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
UNREADABLE_HEAD = re.compile(rb"(?:" + _TOKEN + rb"[ \t]*:[^\r\n]*\r?\n)+\r?\n")
# ... and what may still become one
UNREADABLE_PART = re.compile(rb"(?:" + _TOKEN + rb"[ \t]*:[^\r\n]*\r?\n)*"
                             rb"(?:" + _TOKEN + rb"(?:[ \t]*(?::[^\r\n]*)?)?\r?|\r)?")
# The shortest message (a request: "A  HTTP/1.0\n\n"; a response takes 14 bytes)
MIN_MESSAGE = 13
# A chunk-size line (size, extensions) longer than this is not HTTP.
MAX_CHUNK_LINE = 4096
# A chunk size is hex digits only (RFC 9112 7.1: no sign, no 0x, no _, which int(x, 16) takes);
# 16 of them reach 2^64, more than any body
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# A start line cut by a loss (or the end) is read as far as it came: a request's method once
# the space after it came and its target began as one does ("/", "*", "scheme://", or any for
# CONNECT; "VERY" or "MAIL FROM:<a>" cut short are not requests), a status once its three digits
# came (whatever follows them in a status line leaves them as they are)
CUT_REQUEST = re.compile(rb"(" + http1.METHOD + rb") +([^\r\n]+)\Z")
CUT_TARGET = re.compile(rb"[/*]|[A-Za-z][A-Za-z0-9+.-]*://")
CUT_RESPONSE = re.compile(rb"HTTP/1\.[01] +([1-9]\d\d)(?:[ \t][^\r\n]*)?\r?\Z")
# Bytes looked at first for a header block (most are far smaller), and bytes read at once
# (see _peek).
HEAD_LOOK = 4096
WINDOW = 16384


def _requests(st, direction):
    """Does this direction carry requests? The client's does, unless the connection was seen
    midstream and its messages said otherwise (the side seen first is taken as the client)."""
    kind = st.get("kind")
    return direction == 0 if kind is None else kind == "request"


def _unreadable_kind(data, final, kind=None):
    """Do `data` (bytes where a message was to start) begin with a message whose start line
    cannot be read (a `kind` one: "request", "response", None for either)? Its kind when they
    do, "wait" when more bytes may tell (`final`: none will), else None."""
    nl = data.find(b"\n", 0, http1.MAX_START_LINE)
    if nl < 0:
        return None if final or len(data) >= http1.MAX_START_LINE else "wait"
    line = data[:nl]
    if http1.REQUEST_LINE.match(line) or http1.RESPONSE_LINE.match(line):
        return None                           # (one that can be read)
    if kind != "response" and REQUEST_TAIL.search(line):
        kind = "request"
    elif kind != "request" and RESPONSE_TAIL.search(line):
        kind = "response"
    else:
        kind = None
    if kind is None or UNREADABLE_HEAD.match(data, nl + 1):
        return kind
    return None if final or UNREADABLE_PART.match(data, nl + 1).end() < len(data) else "wait"


def _window(flow, stream, d, n):
    """(data, at): bytes holding the next `n` bytes at hand (fewer if fewer are) from data[at]
    on, without moving. One read of up to WINDOW bytes serves the small reads that follow it
    (header blocks, chunk lines of the messages after it): a stream's bytes never change, and
    flow.cache keeps them meanwhile."""
    pos = stream.tell()
    win = flow.cache.get("window")
    if win is not None and win[0] == d and win[1] <= pos and pos + n <= win[1] + len(win[2]):
        return win[2], pos - win[1]
    data = stream.peek_bytes(max(n, WINDOW))
    flow.cache["window"] = (d, pos, data)
    return data, 0


def _peek(flow, stream, d, n):
    """The next `n` bytes at hand (fewer if fewer are), without moving (see _window)."""
    data, at = _window(flow, stream, d, n)
    return data[at:at + n]


def _cannot_grow(stream):
    """Are the bytes at hand all this direction will have before a loss or its end?"""
    end = stream.tell() + stream.available
    g = stream.next_gap
    return (g is not None and g.offset == end) or (stream.closed and end == stream.end_offset)


class Http(Module):
    """HTTP/1.x requests and responses, paired in order (keep-alive, pipelining, interim 1xx
    responses), chunked bodies measured after decoding. A response to HEAD, a 1xx, 204 or 304,
    and a CONNECT's 2xx have no body, whatever their headers say. Headers are read leniently,
    as servers and tshark read them (`Name : value`, folded lines, bare LF), and counted.

    A request asking to switch protocols (CONNECT, or Upgrade with Connection: upgrade) holds
    its direction until its response: a 101, or a 2xx to CONNECT, ends HTTP in both directions
    (what follows is another protocol); any other answer (a 407, a 200 ignoring an offered h2c)
    and both go on as HTTP.

    Where a message was to start, bytes that are not a start line: a line ending as a request
    line or a status line ends (" HTTP/1.1"; a digit, spaces and a status) without being one,
    then header lines and a blank line, is a message whose start line could not be read
    (malformed, and lost: a response whose status line is corrupt still answers its request);
    other bytes up to the next message start within 8 KiB of text (NUL bytes, a PROXY
    protocol line, a keep-alive byte) are passed over (skipped_bytes). A direction whose first
    message is not found so (bytes that are not text, as TLS's; 8 KiB of text without a start;
    its end) is not HTTP; a later one looks on for the next message start.

    After a gap: a message whose body the gap falls in keeps its framing (the gap's length is
    known) and is reported with complete=false. A message whose start line or header block a
    gap (or the connection's end) cuts is reported incomplete with what came before it: a
    request once its method, the space after it and the start of a target came ("/", "*",
    "scheme://", any for CONNECT), its uri as far as it came (uri_cut), request_body null; a
    response once its status's three digits came, response_body null; host, user_agent and
    content_type when their header lines came whole, else null. A gap where a message was to
    start (the direction's first bytes too) lost that message: a lost response still answers
    its request (reported with status null), a lost request still waits for its response
    (which is reported with method, host and uri null), so the pairing of what follows does
    not shift when a gap loses one message start. One gap taking the end of a message and the
    starts of the next ones is counted as one lost message (how many it held cannot be told):
    when it can hold a whole message (over 13 bytes, or over 13 past the body it ends), the
    responses paired after it (or with the requests read after it) say after_loss, as each
    may answer a later request than the one it names, and the requests left without a
    response at the end count as unanswered_after_loss, not unanswered. Parsing resumes at the
    next message start, as it starts in a side seen from the middle (which may be the
    server's, seen first). A message start is then a whole start line at the start of a line
    or of a segment (a packet's payload, where tshark looks too): a body quoting "HTTP/1.1
    503" in its text is not taken for a response, but a message glued in one segment to a
    body whose end was lost is passed over too. A response captured before the request it
    answers (a capture merged from two taps) waits for that request, or for the client's side
    to end: how it is framed depends on the method.

    Losses count only in a connection where a start line that is HTTP was read (whole, or cut
    as above), in either direction; those met before it count then. A connection whose bytes
    were all lost, or that shows no HTTP start line (`VERY`, a gap, `DATA`), gets no event and
    no count but not_http.

    Synopsis: http
    Reads: both streams of every TCP connection, until neither is HTTP/1 (UDP flows, such as
           SSDP's HTTP-like datagrams, are passed over and not counted)
    Writes: nothing (read-only)
    Options: none
    Counters: requests (request events), responses (final responses whose status line was
              read), interim (1xx before a final response), gaps (holes in the connections it
              reads that show HTTP, counted as counter counts them), lost_requests, lost_responses (messages whose start line was
              lost, apart from requests and responses: a lost response answering a request
              has its event, status null), unanswered (requests without a response when the connection ended),
              unanswered_after_loss (the same, after a loss in the responses that may have held
              theirs), lenient (messages with header lines a strict parser refuses), malformed
              (a message that could not be framed after a start line that is HTTP -- a
              Content-Length that cannot be trusted, a header block over 64 KiB, a bad chunk
              size --, reported incomplete; a message whose start line could not be read; bytes
              where a message was to start without a message start in the next 8 KiB of text:
              parsing resumes at the next start), skipped_bytes (bytes passed over before a
              message start), not_http (directions whose first message is not HTTP/1)
    Events: "request": method, host, uri, uri_cut (true: a loss cut the request line, and uri
            is what came before it), request_body (body bytes seen: a chunked body's after
            decoding, lost bytes not counted), user_agent, complete (false: bytes of the
            message were lost, or the connection ended inside it);
            "response": status (an integer, 100 to 999, from the status line's three digits:
            "099" is not a status line; null when its status line was lost), response_body
            (bytes seen, as request_body; null when the header block was lost), content_type,
            complete (false: the connection ended inside its body, or bytes of it were lost; a
            body without a length, read to the end of the connection, is whole only if the
            server's FIN ended it, not a reset or the capture's end), interim (a 1xx before
            the final response: it does not answer the request), the method, host, uri and
            uri_cut of the request it answers (null when that request was lost or never seen),
            after_loss (true: a loss before it may have held more message starts than the one
            counted, so it may answer a later request than the one named).
            An event's ts is that of the packet carrying the last byte read of its message; a
            lost response's, that of the packet after the loss, or the connection's last packet
            when the loss is at its end.
    Example: flowsift chain http trace.pcap   emits "request" and "response" events with method,
             host, uri, status, body lengths
    """
    name = "http"

    def on_open(self, flow):
        if flow.proto != "tcp":
            flow.skip()                       # HTTP/1 over UDP (SSDP) is not read, nor counted
            return
        flow.state["pending"] = []            # requests waiting for their responses, in order
        flow.state["early"] = []              # responses waiting for their requests, in order
        # per direction: mode "http" (parsing), "resync" (after a gap: waiting for a message
        # start), "wait" (a request asked to switch protocols: its response tells whether what
        # follows is HTTP) or "off" (not HTTP); phase (where in a message), left (body or chunk bytes to
        # go), msg (the message being read, from its header block on). All plain data: a
        # checkpoint carries it, and a restored worker goes on from its stream position.
        flow.state["sides"] = [None, None]
        flow.state["held"] = {"gaps": 0, "malformed": 0, "lost": []}     # until HTTP is seen (see _evident)
        flow.state["after_loss"] = [False, False]   # requests', responses' (see _unsure)

    def on_data(self, flow, stream):
        d = stream.direction
        cache = flow.cache
        cache[("http", d)] = stream           # (a direction held by a switch request is read on by the other's call)
        self._data(flow, stream)
        resume = cache.pop("http.resume", None)
        if resume is not None and resume != d and cache.get(("http", resume)) is not None:
            # the response refused the switch: its request's direction goes on now, not at its
            # next call (which may never come: it may have ended already)
            self._data(flow, cache[("http", resume)])
        sides = flow.state["sides"]
        if sides[0] is not None and sides[1] is not None and sides[0]["mode"] == sides[1]["mode"] == "off":
            flow.skip()                       # neither direction is HTTP/1: nothing more to read

    def _data(self, flow, stream):
        d = stream.direction
        sides = flow.state["sides"]
        st = sides[d]
        if st is None:
            st = sides[d] = {"mode": "http", "phase": "head", "left": 0, "msg": None, "seen": 0}
            if stream.file.header[f"midstream{d}"]:
                # seen from the middle: what comes first may be the rest of a message (or a
                # keep-alive byte), and the side seen first may be the server
                st.update(mode="junk", kind=None)
        while True:
            if st["mode"] == "junk":
                self._junk(flow, stream, st, d)
                if st["mode"] == "junk":
                    return                    # not told yet
            if st["mode"] == "resync":
                self._resync(flow, stream, st, d)
                if st["mode"] == "resync":
                    return                    # no message start yet
            if st["mode"] == "off":
                stream.skip()
                return
            if st["mode"] == "wait":
                return                        # what follows the switch request waits for its answer
            self._parse(flow, stream, st, d)
            if st["mode"] == "http":
                return                        # waiting for more bytes

    def _first_start(self, flow, stream, st, d, data, lo=0, hi=None):
        """Where in data[lo:hi] (data: the bytes from the position on) the first message start
        is, at a line start or a segment start (see REQUEST_START), or None. A side whose
        kind is not known yet takes either kind, the first found deciding it."""
        segments = []                         # where the packets' payloads begin, once asked

        def first(pattern):
            m = pattern.search(data, lo, len(data) if hi is None else hi)
            while m is not None:
                i = m.start()
                if (data[i - 1] == 0x0A if i else st.get("lf", False)):
                    return i
                if not segments:
                    segments.append(self._segment_starts(flow, stream, d, len(data)))
                if stream.tell() + i in segments[0]:
                    return i
                m = pattern.search(data, i + 1, len(data) if hi is None else hi)
            return None

        if "kind" in st and st["kind"] is None:
            found = [(i, k) for k, i in (("request", first(REQUEST_START)), ("response", first(RESPONSE_START)))
                     if i is not None]
            if not found:
                return None
            start, st["kind"] = min(found)
            for _ in range(st.pop("unread", 0)):
                self._unreadable(flow, st["kind"] == "request")   # (see _junk)
            return start
        return first(REQUEST_START if _requests(st, d) else RESPONSE_START)

    def _resync(self, flow, stream, st, d):
        data = stream.peek_bytes()
        start = self._first_start(flow, stream, st, d, data)
        if start is None:
            n = max(0, len(data) - RESYNC_TAIL)
            if n:
                stream.skip(n)
                st["lf"] = data[n - 1] == 0x0A
            return
        stream.skip(start)
        st.pop("lf", None)
        st.update(mode="http", phase="head", left=0, msg=None)

    def _junk(self, flow, stream, st, d):
        """Bytes where a message was to start that are not a start line (or a side seen from
        the middle, where one may start). A line ending as a start line ends, followed by
        header lines and a blank line, is a message whose start line could not be read
        (UNREADABLE): counted malformed, and lost so that its partner still pairs with it; its
        body is passed over up to the next message start. Other bytes before a message start
        within JUNK_LOOK (NUL bytes, a PROXY protocol line) are passed over and counted
        (skipped_bytes). A direction with no message read yet and no start within reach (or
        before bytes that are no text) is not HTTP; another looks on for the next start."""
        data = _peek(flow, stream, d, JUNK_LOOK)
        final = _cannot_grow(stream) or len(data) >= JUNK_LOOK
        text = JUNK_TEXT.match(data).end()    # (nothing else than text is looked in)
        nl = data.find(b"\n", 0, text)
        # a message start in the first line (a segment's, after a keep-alive NUL byte): what
        # is before it is no message
        midstream = "kind" in st and st["kind"] is None
        start = self._first_start(flow, stream, st, d, data, 0 if midstream else 1, text if nl < 0 else nl + 1)
        if start is not None:
            self._skip_to(stream, st, start)
            return
        kind = _unreadable_kind(data[:text], final or text < len(data),
                                None if midstream else "request" if _requests(st, d) else "response")
        if kind == "wait":
            return                            # more bytes may tell
        if kind is not None:
            n = UNREADABLE_HEAD.match(data, nl + 1, text).end()
            stream.skip(n)
            if midstream:
                st["unread"] = st.get("unread", 0) + 1    # counted once the side's kind is known
            else:
                self._unreadable(flow, _requests(st, d))
            st.update(mode="resync")
            return
        if midstream:
            st.update(mode="resync")          # (a side seen from the middle looks on, as it did)
            return
        start = self._first_start(flow, stream, st, d, data, 1, text)
        if start is not None:
            self._skip_to(stream, st, start)
        elif final or text < len(data):
            if not st["seen"]:
                self.count("not_http")
                st["mode"] = "off"
            else:
                self.count("malformed")
                st.update(mode="resync")

    def _skip_to(self, stream, st, start):
        if start:
            stream.skip(start)
            self.count("skipped_bytes", start)
        st["mode"] = "http"

    def _unreadable(self, flow, request):
        """A message whose start line could not be read (see _junk)."""
        if "held" in flow.state:
            flow.state["held"]["malformed"] += 1
        else:
            self.count("malformed")
        self._lost(flow, request)

    @staticmethod
    def _segment_starts(flow, stream, d, n):
        """The stream offsets in [tell, tell + n) where a packet's payload of direction `d`
        begins (a set)."""
        records = flow.records()
        pos = stream.tell()
        offsets = records["seq_offset"][(records["dir"] == d) & (records["payload_len"] > 0)] \
            - stream.file.header[f"origin{d}"]
        return set(offsets[(offsets >= pos) & (offsets < pos + n)].tolist())

    # --- framing --------------------------------------------------------------------------

    def _parse(self, flow, stream, st, d):
        request = _requests(st, d)
        while st["mode"] == "http":
            phase = st["phase"]
            if phase == "head":
                if stream.available <= 0 or not self._head(flow, stream, st, d, request):
                    return
            elif phase in ("body", "chunk_data"):
                n = min(st["left"], stream.available)
                if n <= 0:
                    return
                stream.skip(n)
                st["left"] -= n
                st["msg"]["body"] += n
                if st["left"] == 0:
                    if phase == "body":
                        self._done(flow, st, d, request)
                    else:
                        st["phase"] = "chunk_end"
            elif phase == "eof":              # a response read to the end of the connection
                n = stream.available
                if n > 0:
                    stream.skip(n)
                    st["msg"]["body"] += n
                if stream.closed:
                    # only a FIN says the body is whole: a reset or the capture's end may cut it
                    st["msg"]["fin"] = CLOSE_NAMES.get(stream.file.header[f"close{d}"]) == "fin"
                return
            elif phase == "chunk_end":        # the CRLF after a chunk's data
                b = _peek(flow, stream, d, 2)
                if b[:1] == b"\n" or b == b"\r\n":
                    stream.skip(len(b) if b == b"\r\n" else 1)
                    st["phase"] = "chunk"
                    if b[:1] == b"\n":
                        st["msg"]["lenient"] = True
                elif b in (b"", b"\r"):
                    return
                else:
                    self._malformed(flow, stream, st, d, request)
            else:                             # "chunk": a chunk-size line, or "trailer": a trailer line
                line = self._line(flow, stream, d)
                if line is None:
                    if stream.available >= MAX_CHUNK_LINE:
                        self._malformed(flow, stream, st, d, request)
                        continue
                    return
                if phase == "trailer":
                    if not line.strip():
                        self._done(flow, st, d, request)
                    continue
                size = line.split(b";", 1)[0].strip(b" \t")
                if CHUNK_SIZE.fullmatch(size) is None:
                    self._malformed(flow, stream, st, d, request)
                    continue
                size = int(size, 16)
                if size:
                    st.update(phase="chunk_data", left=size)
                else:
                    st["phase"] = "trailer"

    @staticmethod
    def _line(flow, stream, d):
        buf = _peek(flow, stream, d, MAX_CHUNK_LINE)
        i = buf.find(b"\n")
        if i < 0:
            return None
        stream.skip(i + 1)
        return buf[:i].rstrip(b"\r")

    def _head(self, flow, stream, st, d, request):
        """Read a header block; False when there is not one whole yet (or the direction ended)."""
        avail = stream.available
        if avail <= 0:
            return False
        # one read of up to WINDOW bytes serves the header blocks of the small messages that
        # follow it (a stream's bytes never change: flow.cache keeps them while they serve);
        # a larger block is looked for again, up to MAX_HEAD
        want = min(avail, HEAD_LOOK)
        data, at = _window(flow, stream, d, want)
        if data[at:at + 1] in (b"\r", b"\n"):
            # empty lines before a message are passed over
            blank = want - len(data[at:at + want].lstrip(b"\r\n"))
            stream.skip(blank)
            return avail > blank and self._head(flow, stream, st, d, request)
        end = http1.head_end(data, at, at + want)
        if end >= 0:
            buf, end = data[at:end], end - at
            nl = buf.find(b"\n")
        else:
            buf = data[at:at + want]
            nl = buf.find(b"\n")
            # (a whole header block's start line is checked by parse_head below)
            if not http1.plausible_start(buf if nl < 0 else buf[:nl], request, nl >= 0):
                st["mode"] = "junk"
                return False
        while end < 0 and want < min(avail, http1.MAX_HEAD):
            want = min(avail, http1.MAX_HEAD, want * 4)
            buf = stream.peek_bytes(want)
            end = http1.head_end(buf)
        if end < 0:
            if len(buf) >= http1.MAX_HEAD:
                # too long a header block after a start line that is HTTP: that message is
                # malformed (reported with what its start line says), not the direction
                nl = buf.find(b"\n")
                parsed = http1.parse_head(buf[:nl], request) if nl >= 0 else None
                if parsed is not None:
                    self._begin(flow, st, request, self._fields(request, parsed[0], {}), 0)
                self._malformed(flow, stream, st, d, request)
            elif _cannot_grow(stream):
                # the header block is cut by a loss or by the end: what it said is kept for the
                # message, reported when the loss or the end is reached (on_gap, on_close)
                cut = self._cut_head(buf, request)
                if cut is not None:
                    self._evident(flow)
                    st["cut"] = cut
            return False
        parsed = http1.parse_head(buf[:end], request)
        if parsed is None:
            st["mode"] = "junk"
            return False
        start, headers, lenient = parsed
        self._evident(flow)
        pending, early = flow.state["pending"], flow.state["early"]
        if request:
            method = start[0]
            status = None
        else:
            status = start[1]
            if not pending and not early and self._request_may_come(flow, stream, d):
                # a response before any request it could answer (captured out of order): its
                # framing depends on the request's method (HEAD, CONNECT), so it waits for it
                # (or for the client's side to end)
                st["awaits"] = True
                return False
            st.pop("awaits", None)
            # the request this response answers: the first one waiting, unless responses wait
            # for their requests already (then it is not known yet: taken as a GET)
            method = pending[0]["method"] if pending and not early else None
        msg = self._fields(request, start, headers)
        try:
            kind, n = http1.framing(request, headers, method, status)
        except ValueError:
            # a length that cannot be trusted after a start line that is HTTP: the message is
            # malformed (reported as far as its header block), not the direction
            self._begin(flow, st, request, msg, lenient)
            self._malformed(flow, stream, st, d, request)
            return False
        stream.skip(end)
        self._begin(flow, st, request, msg, lenient)
        if request and (method == "CONNECT" or self._upgrade(headers)):
            # what follows may be another protocol: only the response can tell
            msg["switch"] = True
            flow.state["pending"][-1]["switch"] = d
        if kind == http1.NONE:
            self._done(flow, st, d, request)
            if not request and (status == 101 or (method == "CONNECT" and 200 <= status < 300)):
                st["mode"] = "off"
        elif kind == http1.LENGTH:
            st.update(phase="body", left=n)
        elif kind == http1.CHUNKED:
            st.update(phase="chunk", left=0)
        else:
            st.update(phase="eof", left=0)
        return True

    def _begin(self, flow, st, request, msg, lenient):
        """A message whose header block was read: the one being read from now on."""
        self._evident(flow)
        st["seen"] += 1
        msg.update(body=0, lenient=bool(lenient))
        st["msg"] = msg
        if not request:
            msg["after_loss"] = flow.state["after_loss"][1]
            return
        flow.state["pending"].append({"method": msg["method"], "host": msg["host"], "uri": msg["uri"],
                                      "uri_cut": msg["uri_cut"], "after_loss": flow.state["after_loss"][0]})
        sides = flow.state["sides"]
        for other in (0, 1):
            if sides[other] is not None and sides[other] is not st and sides[other].get("awaits"):
                flow.cache["http.resume"] = other       # the response that waited for it goes on now

    @staticmethod
    def _request_may_come(flow, stream, d):
        """Can the other side of this connection still send a request? It is not known to be
        something else than HTTP, and it has not ended."""
        other = flow.state["sides"][1 - d]
        if other is not None and other["mode"] == "off":
            return False
        h = stream.file.header
        return not h[f"close{1 - d}"] and not h[f"close{d}"]

    @staticmethod
    def _upgrade(headers):
        connection = ",".join(headers.get("connection", ())).lower()
        return "upgrade" in connection and "upgrade" in headers

    @staticmethod
    def _fields(request, start, headers):
        if request:
            return {"method": start[0], "uri": start[1], "host": (headers.get("host") or [None])[0],
                    "user_agent": (headers.get("user-agent") or [None])[0], "uri_cut": False}
        return {"status": start[1], "content_type": (headers.get("content-type") or [None])[0]}

    def _cut_head(self, buf, request):
        """What the start of a header block cut by a loss or the end says (the fields of
        _fields, and "switch"), or None when it is not seen far enough to be HTTP (see
        CUT_REQUEST): the header lines whole before the cut are read, the others are not
        known."""
        nl = buf.find(b"\n")
        line = buf if nl < 0 else buf[:nl]
        parsed = http1.parse_head(line, request)     # (one whose CR came, or all but its CRLF, is whole)
        if parsed is not None:
            if nl >= 0:
                # a blank line ends the lines that came, or the parser waits for a folded one
                parsed = http1.parse_head(buf[:buf.rfind(b"\n") + 1] + b"\r\n", request) or parsed
            fields = self._fields(request, parsed[0], parsed[1])
            fields["switch"] = request and (fields["method"] == "CONNECT" or self._upgrade(parsed[1]))
            return fields
        if nl >= 0:
            return None
        if not request:
            m = CUT_RESPONSE.match(line)
            return None if m is None else {"status": int(m.group(1)), "content_type": None, "switch": False}
        m = CUT_REQUEST.match(line)
        if m is None or (m.group(1) != b"CONNECT" and CUT_TARGET.match(m.group(2)) is None):
            return None
        return {"method": m.group(1).decode(), "uri": m.group(2).rstrip(b" \t\r").decode("latin-1"), "host": None,
                "user_agent": None, "uri_cut": True, "switch": m.group(1) == b"CONNECT"}

    def _cut(self, flow, st, d, request, cut):
        """Report a message whose header block was cut (`cut`: what _cut_head read of it):
        incomplete, its body not known."""
        switch = cut.pop("switch")
        self._begin(flow, st, request, cut, 0)
        st["msg"]["body"] = None
        if switch:
            flow.state["pending"][-1]["switch"] = d    # (its 2xx or 101 ends HTTP: see _switch)
        self._done(flow, st, d, request, complete=False)

    def _malformed(self, flow, stream, st, d, request):
        """A message whose framing fails after a start line that is HTTP: reported as far as
        it was read, and parsing resumes at the next message start after it. (A header block
        over MAX_HEAD whose start line has no end is none: a direction's first is not HTTP, a
        later one is counted lost. Bytes that are no start line are _junk's.)"""
        if not st["seen"]:
            self.count("not_http")
            st["mode"] = "off"
            return
        self.count("malformed")
        if st["msg"] is not None:
            self._done(flow, st, d, request, complete=False)
        else:
            self._lost(flow, request)
        stream.skip(1)                        # the next start found is after this one
        st.update(mode="resync", phase="head", left=0, msg=None)

    def _done(self, flow, st, d, request, complete=True):
        msg, st["msg"] = st["msg"], None
        st.update(phase="head", left=0)
        if msg.pop("switch", False) and st["mode"] == "http":
            st["mode"] = "wait"               # until the response says (see _switch)
        if msg.pop("lenient", False):
            self.count("lenient")
        self._message(flow, request, msg, complete and not msg.pop("gap", False))

    # --- pairing --------------------------------------------------------------------------

    def _message(self, flow, request, msg, complete=True):
        s = flow.state
        if request:
            self.emit("request", method=msg["method"], host=msg["host"], uri=msg["uri"], uri_cut=msg["uri_cut"],
                      request_body=msg["body"], user_agent=msg["user_agent"], complete=complete)
            self.count("requests")
            if s["early"]:
                self._pair(flow)              # responses read before it
            return
        resp = {"status": msg["status"], "response_body": msg["body"], "content_type": msg["content_type"],
                "complete": complete, "after_loss": msg["after_loss"]}
        if msg["status"] is not None and http1.interim(msg["status"]):
            # it precedes the final response to the first request waiting, and answers nothing
            req = s["pending"][0] if s["pending"] and not s["early"] else {}
            resp["after_loss"] = resp["after_loss"] or req.get("after_loss", False)
            self.emit("response", **resp, interim=True, method=req.get("method"), host=req.get("host"),
                      uri=req.get("uri"), uri_cut=req.get("uri_cut", False))
            self.count("interim")
            return
        # the n-th response answers the n-th request, whichever was read first: a response read
        # before its request (it came in an earlier chunk) waits for it
        s["early"].append(resp)
        self._pair(flow)

    def _pair(self, flow, final=False):
        s = flow.state
        early = s["early"]
        while early and (s["pending"] or final):
            req = s["pending"].pop(0) if s["pending"] else {}
            if not req and early[0]["status"] is None:
                early.pop(0)                  # lost, and answering no request seen: nothing to say
                continue
            resp = early.pop(0)
            resp["after_loss"] = resp["after_loss"] or req.get("after_loss", False)
            self.emit("response", **resp, interim=False, method=req.get("method"), host=req.get("host"),
                      uri=req.get("uri"), uri_cut=req.get("uri_cut", False))
            if resp["status"] is not None:
                self.count("responses")       # (a lost one is counted where it was lost)
            if "switch" in req:
                self._switch(flow, req, resp["status"])

    def _switch(self, flow, req, status):
        """The response to a request asking to switch protocols (Upgrade, CONNECT): a 101, or
        a 2xx to CONNECT, ends HTTP in both directions; another status lets the request's
        direction go on; a lost one leaves it looking for the next message start."""
        sides = flow.state["sides"]
        st = sides[req["switch"]]
        if status == 101 or (req["method"] == "CONNECT" and status is not None and 200 <= status < 300):
            for side in sides:
                if side is not None:
                    side["mode"] = "off"
            return
        if st["mode"] != "wait":
            return
        lost = st.pop("waitgap", False)
        if lost:
            self._lost(flow, True)      # the gap was where the next request was to start
        st["mode"] = "resync" if lost or status is None else "http"
        flow.cache["http.resume"] = req["switch"]

    def on_gap(self, flow, direction, gap):
        if not new_hole(flow, direction, gap):
            pass
        elif "held" in flow.state:
            flow.state["held"]["gaps"] += 1
        else:
            self.count("gaps")
        st = flow.state["sides"][direction]
        if st is None:
            # bytes lost before the direction's first: a message was to start there (its first
            # bytes are not a message start: parsing resumes at the next one)
            flow.state["sides"][direction] = {"mode": "resync", "phase": "head", "left": 0, "msg": None, "seen": 0}
            self._lost(flow, direction == 0)
            self._unsure(flow, direction == 0, gap.length)
            return
        if st["mode"] == "off":
            return
        request = _requests(st, direction)
        if st["mode"] == "wait":
            st["waitgap"] = True              # (see _switch)
            self._unsure(flow, request, gap.length)
            return
        if st["mode"] != "http":
            st.pop("lf", None)                # (what came before the loss says nothing of what follows)
            self._unsure(flow, request, gap.length)
            return                            # looking for a message start already
        phase, msg = st["phase"], st["msg"]
        if phase in ("body", "chunk_data") and gap.length <= st["left"]:
            # inside a body (or a chunk) whose length is known: the framing holds, the message
            # goes on; what follows the loss is read as it would have been
            st["left"] -= gap.length
            msg["gap"] = True
            if st["left"] == 0:
                if phase == "body":
                    self._done(flow, st, direction, request)
                else:
                    st["phase"] = "chunk_end"
            return
        if phase == "eof":
            msg["gap"] = True                 # read to the end of the connection anyway
            return
        span = gap.length                     # (lost bytes where messages may start)
        if msg is not None:
            # the message ends in the loss (or where in it cannot be told): it is reported as
            # far as it was read; past the end of a body of known length, the loss holds the
            # start of the next message
            self._done(flow, st, direction, request, complete=False)
            if phase == "body":
                self._lost(flow, request)
                span -= st["left"]
        elif "cut" in st:
            self._cut(flow, st, direction, request, st.pop("cut"))
        else:
            # a message was to start where the bytes were lost: at least one is gone
            self._lost(flow, request)
        st.update(mode="resync", phase="head", left=0, msg=None)
        self._unsure(flow, request, span)

    @staticmethod
    def _unsure(flow, request, span):
        """A loss of `span` bytes where messages may start may hold more than one start if a
        whole message fits in it: counted as one lost message, the pairing of the messages
        read after it may be shifted by the others (see after_loss)."""
        if span > MIN_MESSAGE:
            flow.state["after_loss"][0 if request else 1] = True

    def _lost(self, flow, request):
        """A message whose start line was lost."""
        s = flow.state
        if "held" in s:
            s["held"]["lost"].append(request)   # (see _evident)
            return
        if request:
            # its response will come: it answers this request, not the next one
            s["pending"].append({"method": None, "host": None, "uri": None, "after_loss": s["after_loss"][0]})
            self.count("lost_requests")
        else:
            s["early"].append({"status": None, "response_body": None, "content_type": None, "complete": False,
                               "after_loss": s["after_loss"][1]})
            self.count("lost_responses")
            self._pair(flow)

    def _evident(self, flow):
        """A start line that is HTTP was read in this connection: the losses met before it are
        HTTP's too. Until then they are held, and dropped if none ever comes (a connection whose
        bytes were all lost, or that is not HTTP, gets no event and no count of its losses)."""
        held = flow.state.pop("held", None)
        if held is None:
            return
        if held["gaps"]:
            self.count("gaps", held["gaps"])
        if held["malformed"]:
            self.count("malformed", held["malformed"])
        for request in held["lost"]:
            self._lost(flow, request)

    def on_close(self, flow, reason):
        if "sides" not in flow.state:
            return                            # (not TCP)
        for d, st in enumerate(flow.state["sides"]):
            if st is None or st["mode"] != "http":
                continue
            request = _requests(st, d)
            if st["msg"] is not None:
                # the connection ended inside a message: a response read to the end is whole if
                # the server's FIN ended it
                whole = not request and st["phase"] == "eof" and st["msg"].pop("fin", False)
                self._done(flow, st, d, request, complete=whole)
            elif "cut" in st:
                self._cut(flow, st, d, request, st.pop("cut"))
        self._pair(flow, final=True)           # responses no request was seen for
        if flow.state["pending"]:
            # after a loss of the responses' that may hold several, theirs may be in it
            self.count("unanswered_after_loss" if flow.state["after_loss"][1] else "unanswered",
                       len(flow.state["pending"]))
