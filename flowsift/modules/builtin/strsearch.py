import ahocorasick

from flowsift.modules.base import Module, ModuleError, Option


def _shown(pattern):
    """A pattern's bytes as events name it: UTF-8 text, or latin-1 where it is not UTF-8."""
    try:
        return pattern.decode("utf-8")
    except UnicodeDecodeError:
        return pattern.decode("latin-1")


class StrSearch(Module):
    """Many patterns searched in both byte streams at once (Aho-Corasick); one event per match
    with its stream offset. In a TCP connection matches are found across packet boundaries; a
    UDP flow is searched datagram by datagram (its records say where each starts), as a
    receiver reads it: no match spans two datagrams. No match spans a gap.

    Patterns are text, searched for as their UTF-8 bytes (a file's lines are taken as bytes,
    with \\xNN escapes for any byte); an event names its pattern as given: the bytes read as
    UTF-8 (as latin-1 where they are not UTF-8).

    Synopsis: strsearch(patterns=FILE, nocase=false)
    Reads: both streams of every connection (and, in UDP flows, the records: where each
           datagram starts)
    Writes: nothing (read-only)
    Options: patterns (str) a file with one pattern per line (\\xNN escapes allowed), or
             patterns given inline separated by '|' when prefixed with 'inline:'
             nocase (bool) match without regard to ASCII case (A-Z and a-z only: é and É are
             different bytes, and match only as written)
    Counters: matches, gaps (a pattern cannot match across a gap)
    Events: "match": direction (c2s or s2c), pattern, offset (of its first byte in the stream)
    Example: flowsift chain "strsearch(patterns=rules.txt,nocase=true)",counter trace.pcap
    """
    name = "strsearch"
    options = {"patterns": Option(str, "", "pattern file, or 'inline:a|b|c'"),
               "nocase": Option(bool, False, "ignore ASCII case")}

    def __init__(self, config=None):
        super().__init__(config)
        spec = self.config.get("patterns", "")
        if not spec:
            raise ModuleError("module strsearch: option patterns=FILE is required (or patterns=inline:a|b)")
        if spec.startswith("inline:"):
            raw = [p.encode("utf-8") for p in spec[len("inline:"):].split("|") if p]
        else:
            try:
                with open(spec, "rb") as f:
                    lines = [line.rstrip(b"\r\n") for line in f if line.strip()]
            except OSError as e:
                raise ModuleError(f"module strsearch: patterns file {spec!r}: {e.strerror}") from None
            raw = []
            for n, line in enumerate(lines, 1):
                try:
                    # escapes to bytes: other bytes stay as they are (UTF-8 text included)
                    raw.append(line.decode("unicode_escape").encode("latin-1"))
                except (UnicodeDecodeError, UnicodeEncodeError):
                    raise ModuleError(f"module strsearch: patterns file {spec!r}: pattern {n}: bad escape "
                                      "(\\xNN for a byte)") from None
        if not raw:
            raise ModuleError("module strsearch: no patterns (patterns=FILE or patterns=inline:a|b)")
        self.nocase = self.config.get("nocase", False)
        self.auto = ahocorasick.Automaton()
        for p in raw:
            # keys as latin-1 text: one character per byte, as the stream bytes are searched
            key = (p.lower() if self.nocase else p).decode("latin-1")
            self.auto.add_word(key, (_shown(p), len(key)))
        self.auto.make_automaton()
        self.longest = max(len(p) for p in raw)

    def _hay(self, data):
        # bytes as latin-1 text: one character per byte, so offsets stay byte offsets; ASCII
        # case only (str.lower would fold latin-1 letters, i.e. bytes of UTF-8 text)
        return (data.lower() if self.nocase else data).decode("latin-1")

    def on_data(self, flow, stream):
        if flow.proto == "udp":
            self._datagrams(flow, stream)
            return
        d = stream.direction
        tails = flow.state.setdefault("tails", [None, None])      # per direction: [offset, text]
        tail_off, tail = tails[d] or (stream.tell(), "")
        # bytes as latin-1 text: one character per byte, so offsets stay byte offsets
        here = stream.tell()
        text = tail + stream.peek_bytes().decode("latin-1")
        # ASCII case only (str.lower would fold latin-1 letters, i.e. bytes of UTF-8 text)
        hay = text.encode("latin-1").lower().decode("latin-1") if self.nocase else text
        for end, (pattern, n) in self.auto.iter(hay):
            if end >= len(tail):                   # a match not already reported from the tail
                # read to its last byte first: the event's time is that byte's packet's
                stream.skip(tail_off + end + 1 - stream.tell())
                self.emit("match", direction="c2s" if d == 0 else "s2c", pattern=pattern,
                          offset=tail_off + end - n + 1)
                self.count("matches")
        stream.skip(here + len(text) - len(tail) - stream.tell())
        keep = text[-(self.longest - 1):] if self.longest > 1 else ""
        tails[d] = [tail_off + len(text) - len(keep), keep]

    def _datagrams(self, flow, stream):
        # a UDP flow's stream is its datagrams end to end, and a receiver reads each apart: each
        # is searched alone. Its records say where each starts (a record's seq_offset is its
        # datagram's stream offset); they are looked at from the first not wholly read yet, so
        # a long flow is not gone over again at every call
        d = stream.direction
        base = stream.tell()
        data = stream.peek_bytes()
        end = base + len(data)
        first = flow.state.setdefault("datagrams", [0, 0])          # per direction: a record index
        recs = flow.records()[first[d]:]
        sel = ((recs["dir"] == d) & (recs["payload_len"] > 0)).nonzero()[0]
        g = stream.next_gap
        final = (g is not None and g.offset == end) or (stream.closed and end == stream.end_offset)
        upto, stop = len(recs), end
        for i, at, n in zip(sel.tolist(), recs["seq_offset"][sel].tolist(), recs["payload_len"][sel].tolist()):
            if at + n <= base:
                continue                           # (read already, or lost)
            if at >= end or (at + n > end and not final):
                # not here yet, or not all of it (a stage before this one read part of it):
                # searched whole later; what the capture cut of one (a gap follows) is not coming
                upto, stop = i, min(max(at, base), end)
                break
            lo = max(at, base)
            for last, (pattern, k) in self.auto.iter(self._hay(data[lo - base:min(at + n, end) - base])):
                stream.skip(lo + last + 1 - stream.tell())
                self.emit("match", direction="c2s" if d == 0 else "s2c", pattern=pattern, offset=lo + last - k + 1)
                self.count("matches")
        first[d] += upto
        stream.skip(stop - stream.tell())

    def on_gap(self, flow, direction, gap):
        flow.state.setdefault("tails", [None, None])[direction] = None    # nothing matches across a gap
        self.count("gaps")
