"""Emits the first line a client sends on each connection, then skips the connection.

Shows flow.skip(): a module that has what it wants of a connection says so, and the rest of
the connection costs it nothing -- no more on_data or on_packet calls, not even a read of the
record file's header until the connection ends.

    flowsift chain examples/first_line.py examples/demo.pcap
"""
from flowsift.modules import Module, Option


class FirstLine(Module):
    """The first line of each client stream (a request line, a greeting, a command).

    Synopsis: examples/first_line.py(max_line=256)
    Reads: the first bytes of the client-to-server stream
    Writes: nothing
    Options: max_line (int) longest line looked for; longer first lines are cut there
    Counters: lines
    Example: flowsift chain examples/first_line.py examples/demo.pcap
    """
    name = "first_line"
    options = {"max_line": Option(int, 256, "longest line looked for; longer first lines are cut there")}

    def on_data(self, flow, stream):
        if stream.direction != 0:
            return                             # (left unread: the client's line is all it wants)
        line = stream.read_until(b"\n", self.config["max_line"])
        if line is None:
            final = stream.closed or stream.next_gap is not None     # no more bytes will come
            if stream.available < self.config["max_line"] and not final:
                return                         # an incomplete line waits for more bytes
            if not stream.available:
                return                         # (a stream that ended with nothing)
            line = stream.read(min(stream.available, self.config["max_line"]))
        text = bytes(line).rstrip(b"\r\n").decode("latin-1")
        if text.isprintable():
            self.emit("first_line", line=text)
        else:
            self.emit("first_bytes", hex=bytes(line[:16]).hex())     # a binary protocol (TLS, ...)
        self.count("lines")
        flow.skip()

    def on_gap(self, flow, direction, gap):
        if direction == 0:
            flow.skip()                        # the start of the client's stream was never captured
