import re

from flowsift.modules.base import Module, ModuleError, Option

# Bytes left unconsumed at the end of each call, so a match that continues in the next
# segment is still found whole (matches longer than this are found only within one call).
LOOKBEHIND = 1024
# Bytes before a match kept with it when it may go on in the next call (for lookbehind)
CONTEXT = 64


class Redact(Module):
    """Masks every match of a regular expression in the streams with bytes of the same length
    (a same-length payload edit, verified by the gateway against the matched bytes), across
    packet boundaries; in UDP flows, within each
    datagram.

    Synopsis: redact(pattern=REGEX, mask=X, direction=both)
    Reads: the byte streams
    Writes: payload
    Options: pattern (str) a Python regular expression over bytes
             mask (str) the byte to write over each matched byte
             direction (str) c2s, s2c or both
    Counters: redacted (matches), bytes, rejected
    Example: flowsift chain "redact(pattern=password=[^&\\s]*)" in.pcap -w out.pcap
    """
    name = "redact"
    writes = frozenset({"payload"})
    options = {"pattern": Option(str, "", "regular expression (bytes)"), "mask": Option(str, "X", "mask byte"),
               "direction": Option(str, "both", "c2s, s2c or both")}

    def __init__(self, config=None):
        super().__init__(config)
        try:
            self.regex = re.compile(self.config["pattern"].encode("latin-1"))
        except re.error as e:
            raise ModuleError(f"module redact: bad pattern {self.config['pattern']!r}: {e}") from None
        if not self.config["pattern"]:
            raise ModuleError("module redact: option pattern=REGEX is required")
        if len(self.config["mask"].encode("latin-1")) != 1:
            raise ModuleError("module redact: mask must be one byte")
        if self.config["direction"] not in ("c2s", "s2c", "both"):
            raise ModuleError("module redact: direction is c2s, s2c or both")
        self.mask = self.config["mask"].encode("latin-1")
        self.dirs = {"c2s": (0,), "s2c": (1,), "both": (0, 1)}[self.config["direction"]]

    def on_data(self, flow, stream):
        d = stream.direction
        if d not in self.dirs:
            stream.skip()
            return
        if flow.proto == "udp":
            self._datagrams(flow, stream)
            return
        base = stream.tell()
        data = stream.peek_bytes()
        st = flow.state.setdefault("done", [None, None])           # masked up to, per direction
        done = base if st[d] is None else st[d]
        pend = flow.state.get("pend")
        if pend and pend[d] and data:
            # the last match ended where the bytes did (at offset `at`): it is masked, and goes
            # on here if the pattern matches further from its start (over its own bytes as they
            # were before masking, and a little before them for lookbehinds)
            ctx, orig, at = pend[d]
            pend[d] = None
            ctx, orig = ctx.encode("latin-1"), orig.encode("latin-1")
            m = self.regex.match(ctx + orig + data, len(ctx)) if at == base else None
            if m is not None and m.end() > len(ctx) + len(orig):
                n = m.end() - len(ctx) - len(orig)
                if self._mask(stream, base, data[:n], whole=False):
                    done = max(done, base + n)
                    if n == len(data) and not self._final(stream, base + n):
                        pend[d] = [ctx.decode("latin-1"), (orig + data).decode("latin-1"), base + n]
        for m in self.regex.finditer(data):
            start, end = base + m.start(), base + m.end()
            if start < done or end == start:
                continue
            if self._mask(stream, start, m.group()):
                done = end
                if m.end() == len(data) and not self._final(stream, end):
                    # more bytes may extend it (password=sec|ret): looked at with them
                    pend = flow.state.setdefault("pend", [None, None])
                    pend[d] = [data[max(0, m.start() - CONTEXT):m.start()].decode("latin-1"),
                               m.group().decode("latin-1"), end]
        st[d] = done
        stream.skip(max(0, len(data) - LOOKBEHIND, done - base))

    def _datagrams(self, flow, stream):
        # a UDP flow's datagrams are messages of their own: a match never runs from one into
        # the next (its stream is its datagrams end to end: their records say where each is).
        # Records are looked at from the first not wholly read last time: a call per datagram
        # (a gap between each, as the snaplen leaves) must not go over the flow's past again
        d = stream.direction
        base, data = stream.tell(), stream.peek_bytes()
        first = flow.state.setdefault("records_read", [0, 0])
        recs = stream.file.record_array(first[d])
        sel = ((recs["dir"] == d) & (recs["payload_len"] > 0)).nonzero()[0]
        starts = recs["seq_offset"][sel] - stream.file.header[f"origin{d}"]
        upto = len(recs)
        for i, at, n in zip(sel.tolist(), starts.tolist(), recs["payload_len"][sel].tolist()):
            if at < base:
                continue                      # (read already)
            if at + n > base + len(data):
                upto = i                      # (not all here yet)
                break
            for m in self.regex.finditer(data[at - base:at - base + n]):
                if m.end() > m.start():
                    self._mask(stream, at + m.start(), m.group())
        first[d] += upto
        stream.skip()

    def _mask(self, stream, start, old, whole=True):
        # `old`: the matched bytes, which the gateway checks are the stream's there;
        # `whole`: a match, not the rest of one masked already
        if stream.replace(start, self.mask * len(old), old=old):
            self.count("redacted", int(whole))
            self.count("bytes", len(old))
            return True
        self.count("rejected")
        return False

    @staticmethod
    def _final(stream, at):
        # nothing can follow stream offset `at`: the direction ended there, or lost bytes do
        g = stream.next_gap
        return (g is not None and g.offset == at) or (stream.closed and at == stream.end_offset)
