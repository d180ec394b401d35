import re

import httptools

from flowsift.modules.base import Module

# After a gap, parsing starts again at the next line that looks like the start of a message.
REQUEST_START = re.compile(rb"(?:GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH|CONNECT|TRACE) [^\r\n]{1,8192} HTTP/1\.[01]\r\n")
RESPONSE_START = re.compile(rb"HTTP/1\.[01] \d{3}")


class _Side:
    """httptools callbacks for one direction of one connection."""

    def __init__(self, module, flow, direction):
        self.module, self.flow, self.direction = module, flow, direction
        self.parser = (httptools.HttpRequestParser if direction == 0 else httptools.HttpResponseParser)(self)
        self.msg = None
        self.resync = False

    def on_message_begin(self):
        self.msg = {"url": b"", "headers": {}, "body": 0}

    def on_url(self, url):
        self.msg["url"] += url

    def on_header(self, name, value):
        self.msg["headers"][name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self):
        if self.direction == 0:
            self.msg["method"] = self.parser.get_method().decode()
        else:
            self.msg["status"] = self.parser.get_status_code()

    def on_body(self, body):
        self.msg["body"] += len(body)

    def on_message_complete(self):
        self.module._message(self.flow, self.direction, self.msg)
        self.msg = None


class Http(Module):
    """HTTP/1.x requests and responses, paired in order (keep-alive and pipelining), chunked
    bodies measured after decoding; after a gap, parsing resumes at the next message start.

    Synopsis: http
    Reads: both streams of every TCP connection
    Writes: nothing (read-only)
    Options: none
    Counters: requests, responses, gaps, errors (bytes that are not HTTP)
    Events: "response" has complete=false when the connection ended inside its body
    Example: flowsift chain http trace.pcap   emits "request" and "response" events with method,
             host, uri, status, body lengths
    """
    name = "http"

    def on_open(self, flow):
        flow.state["pending"] = []            # requests waiting for their responses, in order
        flow.state["sides"] = {}

    def on_data(self, flow, stream):
        d = stream.direction
        data = bytes(stream.read())
        sides = flow.state.setdefault("sides", {})
        side = sides.get(d)
        if side is None:
            side = sides[d] = _Side(self, flow, d)
        if side is False:
            return                            # this direction is not HTTP
        if side.resync:
            m = (REQUEST_START if d == 0 else RESPONSE_START).search(data)
            if m is None:
                return
            data = data[m.start():]
            side = sides[d] = _Side(self, flow, d)
        try:
            side.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            sides[d] = False                  # upgraded (websocket, h2c): no longer HTTP/1
        except httptools.HttpParserError:
            self.count("errors")
            sides[d] = False

    def on_gap(self, flow, direction, gap):
        self.count("gaps")
        side = flow.state.get("sides", {}).get(direction)
        if side:
            side.resync = True
            if direction == 0:
                self._pair(flow, final=True)
                flow.state["pending"].clear()     # responses can no longer be paired reliably

    def _message(self, flow, direction, msg, complete=True):
        st = flow.state
        if direction == 0:
            req = {"method": msg["method"], "host": msg["headers"].get("host"),
                   "uri": msg["url"].decode("latin-1"), "request_body": msg["body"],
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
        side = flow.state.get("sides", {}).get(1)
        if side and side.msg is not None and "status" in side.msg:
            # the connection ended inside a response: complete only if its body is delimited by
            # the end of the connection (no length, not chunked)
            h = side.msg["headers"]
            length = h.get("content-length")
            cut = "chunked" in h.get("transfer-encoding", "") or (length is not None and length.isdigit()
                                                                    and side.msg["body"] < int(length))
            self._message(flow, 1, side.msg, complete=not cut)
        self._pair(flow, final=True)           # responses no request was seen for
