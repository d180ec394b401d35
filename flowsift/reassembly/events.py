"""Reassembly events as small immutable values, and a collector that gathers them.

The compiled engine calls a Sink at C level; `PySink(collector)` forwards to these Python
methods, which is what tests, tools and the pure-Python reference share.
"""
from dataclasses import dataclass, field

GAP_REASONS = {1: "acked", 2: "closed", 3: "memcap", 4: "snaplen", 5: "trailing"}
CLOSE_REASONS = {1: "fin", 2: "rst", 3: "timeout", 4: "evicted", 5: "eof", 6: "reused"}


@dataclass(frozen=True, slots=True)
class StreamData:
    conn: int
    direction: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    conn: int
    direction: int
    offset: int
    length: int
    reason: str

    def __post_init__(self):
        if self.length <= 0 or self.offset < 0:
            raise ValueError(f"gap needs offset >= 0 and length > 0, got {self.offset}, {self.length}")


@dataclass(frozen=True, slots=True)
class Overlap:
    conn: int
    direction: int
    offset: int
    length: int
    conflicts: int      # bytes whose copies differed


@dataclass(frozen=True, slots=True)
class Datagram:
    conn: int
    direction: int
    ts_ns: int
    data: bytes


@dataclass
class Direction:
    """What one direction of one connection delivered, rebuilt from events."""
    data: bytearray = field(default_factory=bytearray)
    gaps: list = field(default_factory=list)          # [offset, length] in sequence space
    conflicts: int = 0
    overlap_bytes: int = 0
    datagrams: int = 0

    @property
    def end(self):
        """Sequence-space offset after the last delivered byte or gap."""
        return len(self.data) + sum(g[1] for g in self.gaps)


class EventCollector:
    """Target for PySink: keeps every event (`events`) and each direction's bytes (`dirs`)."""

    def __init__(self, keep_events=True):
        self.keep_events = keep_events
        self.events = []
        self.dirs = {}            # (conn, direction) -> Direction
        self.closed = {}          # conn -> engine.connection(conn) summary at close
        self.opened = []

    def _dir(self, conn, d):
        key = (conn, d)
        if key not in self.dirs:
            self.dirs[key] = Direction()
        return self.dirs[key]

    def on_open(self, conn, engine):
        self.opened.append(conn)

    def on_data(self, conn, d, offset, data):
        D = self._dir(conn, d)
        if offset != D.end:
            raise AssertionError(f"conn {conn} dir {d}: data at {offset}, expected {D.end}")
        D.data += data
        if self.keep_events:
            self.events.append(StreamData(conn, d, offset, bytes(data)))

    def on_gap(self, conn, d, offset, length, reason):
        D = self._dir(conn, d)
        if offset != D.end:
            raise AssertionError(f"conn {conn} dir {d}: gap at {offset}, expected {D.end}")
        D.gaps.append([offset, length])
        if self.keep_events:
            self.events.append(Gap(conn, d, offset, length, GAP_REASONS.get(reason, str(reason))))

    def on_overlap(self, conn, d, offset, length, conflicts):
        D = self._dir(conn, d)
        D.conflicts += conflicts
        D.overlap_bytes += length
        if self.keep_events:
            self.events.append(Overlap(conn, d, offset, length, conflicts))

    def on_datagram(self, conn, d, ts, data):
        D = self._dir(conn, d)
        D.data += data
        D.datagrams += 1
        if self.keep_events:
            self.events.append(Datagram(conn, d, ts, bytes(data)))

    def on_close(self, conn, engine):
        self.closed[conn] = engine.connection(conn)
