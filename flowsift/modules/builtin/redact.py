import re

from flowsift.modules.base import Module, ModuleError, Option

# Bytes left unconsumed at the end of each call, so a match that continues in the next
# segment is still found whole (matches longer than this are found only within one call).
LOOKBEHIND = 1024


class Redact(Module):
    """Masks every match of a regular expression in the streams with bytes of the same length
    (a verified same-length payload edit), across packet boundaries.

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
        base = stream.tell()
        data = stream.peek_bytes()
        done = flow.state.setdefault("done", [None, None])[d]      # masked up to, per direction
        done = base if done is None else done
        for m in self.regex.finditer(data):
            start, end = base + m.start(), base + m.end()
            if start < done or end == start:
                continue
            result = stream.replace(start, self.mask * (end - start))
            if result:
                self.count("redacted")
                self.count("bytes", end - start)
                done = end
            else:
                self.count("rejected")
        flow.state["done"][d] = done
        stream.skip(max(0, len(data) - LOOKBEHIND, done - base))
