"""Reads the client's byte stream of each connection and emits one event per HTTP request line.

Shows stream pointers: `read_until` finds the end of a line across packet boundaries, bytes not
yet complete stay for the next call, and a gap is met as a value.

    flowsift chain examples/http_requests.py examples/demo.pcap
"""
from flowsift.modules import Module, Option

METHODS = (b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")


class HttpRequests(Module):
    """One event per HTTP/1.x request line in the client's stream.

    Synopsis: examples/http_requests.py(max_line=8192)
    Reads: the client-to-server stream
    Writes: nothing
    Options: max_line (int) longest request line looked for
    Counters: requests, gaps
    Example: flowsift chain examples/http_requests.py examples/demo.pcap
    """
    name = "http_requests"
    options = {"max_line": Option(int, 8192, "longest request line looked for")}

    def on_data(self, flow, stream):
        if stream.direction != 0:
            stream.skip()                      # only the client's requests matter here
            return
        longest = self.config["max_line"]
        while True:
            line = stream.read_until(b"\r\n", longest)
            if line is None:
                if stream.available < longest:
                    return                     # an incomplete line waits for more bytes
                # no line end within max_line (a body, not a request line): pass over it up to
                # the last byte, which may be the \r of a line end split by the packets
                stream.skip(longest - 1)
                continue
            first = bytes(line).split(b" ", 1)[0]
            if first in METHODS:
                method, _, rest = bytes(line).rstrip(b"\r\n").partition(b" ")
                uri = rest.rpartition(b" ")[0] or rest
                self.emit("request", method=method.decode(), uri=uri.decode("latin-1"), offset=stream.tell() - len(line))
                self.count("requests")

    def on_gap(self, flow, direction, gap):
        self.count("gaps")
