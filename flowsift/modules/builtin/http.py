import re

import httptools

from flowsift.modules.base import Module

# After a gap, parsing starts again at the next line that looks like the start of a message.
REQUEST_START = re.compile(rb"(?:GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH|CONNECT|TRACE) [^\r\n]{1,8192} HTTP/1\.[01]\r\n")
RESPONSE_START = re.compile(rb"HTTP/1\.[01] \d{3}")
KEPT_HEADERS = frozenset({b"host", b"user-agent", b"content-type", b"content-length", b"transfer-encoding"})


class _Side:
    """httptools callbacks for one direction of one connection. Its parser lives in flow.cache
    and is not kept here: the parser holds these callbacks, so a reference back would make a
    cycle that only the garbage collector frees, for every connection (flow.cache is cleared
    at close, which frees both). Everything the module needs to go on lives in `st`
    (flow.state), as plain data: where the parser was last between messages (`from`), how many
    messages it completed since (`done`), and the message being parsed (`msg`). A checkpoint
    carries `st`; after a restore the parser is rebuilt by feeding it the bytes from `from`
    again, the first `done` messages unreported."""

    def __init__(self, module, flow, direction, st, replayed=0):
        self.module, self.flow, self.direction, self.st = module, flow, direction, st
        self.skip = replayed            # messages completed already (reported before a restore)

    def on_message_begin(self):
        self.st["msg"] = {"url": "", "headers": {}, "body": 0}

    def on_url(self, url):
        self.st["msg"]["url"] += url.decode("latin-1")

    def on_header(self, name, value):
        # only the headers the events and the end of a body need: the message is in flow.state,
        # which every checkpoint carries
        name = name.lower()
        if name in KEPT_HEADERS:
            self.st["msg"]["headers"][name.decode()] = value.decode("latin-1")

    def on_headers_complete(self):
        parser = self.flow.cache[self.direction]
        if _requests(self.st, self.direction):
            self.st["msg"]["method"] = parser.get_method().decode()
        else:
            self.st["msg"]["status"] = parser.get_status_code()

    def on_body(self, body):
        self.st["msg"]["body"] += len(body)

    def on_message_complete(self):
        msg, self.st["msg"] = self.st["msg"], None
        if self.skip:
            self.skip -= 1
            return
        self.st["done"] += 1
        self.module._message(self.flow, _requests(self.st, self.direction), msg)


def _requests(st, direction):
    """Does this direction carry requests? The client's does, unless the connection was seen
    midstream and its messages said otherwise (the side seen first is taken as the client)."""
    kind = st.get("kind")
    return direction == 0 if kind is None else kind == "request"


def _parser(module, flow, direction, st, replayed=0):
    """A parser for this direction, put in flow.cache (where its callbacks find it)."""
    side = _Side(module, flow, direction, st, replayed)
    kind = httptools.HttpRequestParser if _requests(st, direction) else httptools.HttpResponseParser
    parser = flow.cache[direction] = kind(side)
    return parser


class Http(Module):
    """HTTP/1.x requests and responses, paired in order (keep-alive and pipelining), chunked
    bodies measured after decoding; after a gap, parsing resumes at the next message start, as it
    starts in a side seen from the middle (which may be the server's, seen first).

    Synopsis: http
    Reads: both streams of every TCP connection, until neither is HTTP/1
    Writes: nothing (read-only)
    Options: none
    Counters: requests, responses, gaps (in the connections it reads), not_http (directions whose bytes
              are not HTTP/1)
    Events: "response" has complete=false when the connection ended inside its body
    Example: flowsift chain http trace.pcap   emits "request" and "response" events with method,
             host, uri, status, body lengths
    """
    name = "http"

    def on_open(self, flow):
        flow.state["pending"] = []            # requests waiting for their responses, in order
        # per direction: mode "http" (parsing), "resync" (after a gap: waiting for a message
        # start) or "off" (not HTTP); see _Side for the rest
        flow.state["sides"] = [None, None]

    def _parser_of(self, flow, stream, st):
        """The parser of this direction, rebuilt after a restore from what flow.state kept."""
        d = stream.direction
        parser = flow.cache.get(d)
        if parser is None:
            parser = _parser(self, flow, d, st, replayed=st["done"])
            here = stream.tell()
            if here > st["from"]:
                try:
                    stream.seek(st["from"])
                except ValueError:            # no longer retained: start again at a message start
                    st["mode"] = "resync"
                    return parser
                st["msg"] = None
                self._feed(parser, st, stream.read_bytes(here - st["from"]))
        return parser

    def _feed(self, parser, st, data):
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            st["mode"] = "off"                # upgraded (websocket, h2c): no longer HTTP/1
        except httptools.HttpParserError:
            self.count("not_http")
            st["mode"] = "off"

    def on_data(self, flow, stream):
        self._data(flow, stream)
        sides = flow.state["sides"]
        if sides[0] is not None and sides[1] is not None and sides[0]["mode"] == sides[1]["mode"] == "off":
            flow.skip()                       # neither direction is HTTP/1: nothing more to read

    def _data(self, flow, stream):
        d = stream.direction
        sides = flow.state["sides"]
        st = sides[d]
        if st is None:
            st = sides[d] = {"mode": "http", "from": stream.tell(), "done": 0, "msg": None}
            if stream.file.header[f"midstream{d}"]:
                # seen from the middle: what comes first may be the rest of a message (or a
                # keep-alive byte), and the side seen first may be the server
                st.update(mode="resync", kind=None)
        if st["mode"] == "off":
            stream.skip()
            return
        if st["mode"] == "resync":
            at = stream.tell()
            data = stream.read_bytes()
            if "kind" in st and st["kind"] is None:
                found = [(m.start(), k) for k, m in (("request", REQUEST_START.search(data)),
                                                     ("response", RESPONSE_START.search(data))) if m]
                if not found:
                    return
                start, st["kind"] = min(found)
                m = (REQUEST_START if st["kind"] == "request" else RESPONSE_START).search(data, start)
            else:
                m = (REQUEST_START if _requests(st, d) else RESPONSE_START).search(data)
            if m is None:
                return
            st.update(mode="http", **{"from": at + m.start()}, done=0, msg=None)
            parser = _parser(self, flow, d, st)
            self._feed(parser, st, data[m.start():])
            return
        parser = self._parser_of(flow, stream, st)
        if st["mode"] != "http":
            return
        if st["msg"] is None:
            st["from"], st["done"] = stream.tell(), 0     # between messages: a restore starts here
        self._feed(parser, st, stream.read_bytes())

    def on_gap(self, flow, direction, gap):
        self.count("gaps")
        st = flow.state["sides"][direction]
        if st and st["mode"] != "off":
            st["mode"] = "resync"
            flow.cache.pop(direction, None)
            if _requests(st, direction):
                self._pair(flow, final=True)
                flow.state["pending"].clear()     # responses can no longer be paired reliably

    def _message(self, flow, request, msg, complete=True):
        st = flow.state
        if request:
            req = {"method": msg["method"], "host": msg["headers"].get("host"),
                   "uri": msg["url"], "request_body": msg["body"],
                   "user_agent": msg["headers"].get("user-agent")}
            st["pending"].append(req)
            self.emit("request", **req)
            self.count("requests")
        else:
            # the n-th response answers the n-th request, whichever was parsed first: a response
            # read before its request (it came in an earlier chunk) waits for it
            st.setdefault("early", []).append({"status": msg["status"], "response_body": msg["body"],
                                               "content_type": msg["headers"].get("content-type"),
                                               "complete": complete})
        self._pair(flow)

    def _pair(self, flow, final=False):
        st = flow.state
        early = st.get("early", [])
        while early and (st["pending"] or final):
            req = st["pending"].pop(0) if st["pending"] else {}
            self.emit("response", **early.pop(0), method=req.get("method"), host=req.get("host"), uri=req.get("uri"))
            self.count("responses")

    def on_close(self, flow, reason):
        responses = [st for d, st in enumerate(flow.state["sides"]) if st and not _requests(st, d)]
        st = responses[0] if responses else None
        msg = st and st["mode"] != "off" and st["msg"]     # cut by the end, or by a gap
        if msg and "status" in msg:
            # the connection ended inside a response: complete only if its body is delimited by
            # the end of the connection (no length, not chunked)
            h = msg["headers"]
            length = h.get("content-length")
            cut = "chunked" in h.get("transfer-encoding", "") or (length is not None and length.isdigit()
                                                                    and msg["body"] < int(length))
            self._message(flow, False, msg, complete=not cut)
        self._pair(flow, final=True)           # responses no request was seen for
