import ahocorasick

from flowsift.modules.base import Module, ModuleError, Option
from flowsift.modules.builtin import new_hole

# what a backslash may stand before, besides x: the character itself (ASCII punctuation and
# space), or one of these controls; a letter or a digit after it is refused (reserved)
_CONTROLS = {ord("t"): b"\t", ord("r"): b"\r", ord("n"): b"\n"}
_LITERAL = frozenset(b" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def read_patterns(text, sep=None):
    """The patterns in `text` (bytes): one, or several parted by `sep` where no backslash
    escapes it. \\xNN is a byte, \\t \\r \\n those controls, a backslash before punctuation or a
    space that character (\\\\ \\| \\, \\( \\)); other bytes stay as they are (UTF-8 text
    included). Empty patterns are left out. A ValueError names a bad escape."""
    out, cur, i = [], bytearray(), 0
    while i < len(text):
        b = text[i]
        if sep is not None and b == sep:
            out.append(bytes(cur))
            cur = bytearray()
            i += 1
            continue
        if b != 0x5C:
            cur.append(b)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else None
        if nxt == ord("x") and len(text) >= i + 4 and text[i + 2] in _HEX and text[i + 3] in _HEX:
            cur.append(int(text[i + 2:i + 4], 16))
            i += 4
        elif nxt in _CONTROLS:
            cur += _CONTROLS[nxt]
            i += 2
        elif nxt in _LITERAL:
            cur.append(nxt)
            i += 2
        else:
            shown = text[i:i + 4 if nxt == ord("x") else i + 2].decode("utf-8", "replace")
            raise ValueError(f"bad escape {shown!r} (\\xNN for a byte, \\t \\r \\n, \\\\ for a backslash, "
                             f"\\ before punctuation for itself)")
    out.append(bytes(cur))
    return [p for p in out if p]


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

    Patterns are text, searched for as their UTF-8 bytes, with the same escapes in a file and
    inline: \\xNN for a byte (any byte: \\x00, \\xff), \\t \\r \\n, and a backslash before
    punctuation or a space for that character (\\\\ a backslash, \\| a '|', \\, a comma); a
    backslash before another letter or digit is refused. An event names its pattern as given:
    its bytes read as UTF-8 (as latin-1 where they are not UTF-8).

    Synopsis: strsearch(patterns=FILE, nocase=false)
    Reads: both streams of every connection (and, in UDP flows, the records: where each
           datagram starts)
    Writes: nothing (read-only)
    Options: patterns (str) a file with one pattern per line: every line that is not empty is
             one, spaces included (a line of spaces is a pattern of spaces; the line ends, LF or
             CR LF, are not part of it); or patterns given inline after 'inline:', parted by
             '|': inline:GET|Host:\\x20 (a chain strips the spaces around an option's value:
             write a leading or trailing space as \\x20; a comma as \\, or \\x2c)
             nocase (bool) match without regard to ASCII case (A-Z and a-z only: é and É are
             different bytes, and match only as written)
    Counters: matches, gaps (holes a stream lost, counted as counter counts them: gap entries
              with no byte between them are one hole; a pattern cannot match across one)
    Events: "match": direction (c2s or s2c), pattern, offset (of its first byte in the stream)
    Example: flowsift chain "strsearch(patterns=rules.txt,nocase=true)",counter trace.pcap
             flowsift chain "strsearch(patterns=inline:USER|PASS\\x20)" trace.pcap
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
            try:
                raw = read_patterns(spec[len("inline:"):].encode("utf-8"), sep=ord("|"))
            except ValueError as e:
                raise ModuleError(f"module strsearch: inline patterns: {e}") from None
        else:
            try:
                with open(spec, "rb") as f:
                    lines = f.read().split(b"\n")
            except OSError as e:
                raise ModuleError(f"module strsearch: patterns file {spec!r}: {e.strerror}") from None
            raw = []
            for n, line in enumerate(lines, 1):
                try:
                    raw += read_patterns(line[:-1] if line.endswith(b"\r") else line)
                except ValueError as e:
                    raise ModuleError(f"module strsearch: patterns file {spec!r}: line {n}: {e}") from None
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
        if new_hole(flow, direction, gap):
            self.count("gaps")
