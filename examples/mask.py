"""A writing module: masks the password of each FTP-style `PASS` command in the client's stream
with as many `*`, and its test (docs/modules.md, "Tests").

Shows stream.replace: the bytes are replaced before the module reads past them (it may not
replace bytes behind its position), with `old`, the bytes it means to replace, so the gateway
checks them.

    flowsift chain examples/mask.py capture.pcap -w masked.pcap
"""
from flowsift.modules import Module


class Mask(Module):
    """Masks the password of each `PASS` command (a line) in the client's stream.

    Synopsis: examples/mask.py
    Reads: the client-to-server stream
    Writes: payload
    Options: none
    Counters: masked, rejected
    Example: flowsift chain examples/mask.py capture.pcap -w masked.pcap
    """
    name = "mask"
    writes = {"payload"}

    def on_data(self, flow, stream):
        if stream.direction != 0:
            stream.skip()
            return
        while True:
            at = stream.tell()
            end = stream.find(b"\r\n")
            if end < 0:
                if stream.closed or stream.next_gap is not None:
                    stream.skip()              # a last line without its end: not a command
                return                         # else an incomplete line waits for more bytes
            line = stream.peek_bytes(end + 2 - at)
            secret = line[5:-2] if line.startswith(b"PASS ") else b""
            if secret:
                edit = stream.replace(at + 5, b"*" * len(secret), old=secret)
                self.count("masked" if edit else "rejected")
            stream.skip(len(line))
