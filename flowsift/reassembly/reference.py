"""A small, obviously correct reassembler for one direction of one connection.

It exists to check the compiled engine: property tests feed both the same segments and demand
the same bytes, gaps and conflict counts. It models bytes one at a time (a sorted map from
offset to the byte and the segment that supplied it), so there is nothing clever to get wrong.
It covers what the engine does for a settled direction (its start known): in-order delivery,
held out-of-order bytes, overlap policies, bytes cut by the capture (a gap when no full copy
came by the next event), holes given up when the receiver acknowledges past them, zero-window
probes (left out), and gaps at the end. Connection state (SYN/FIN/RST,
timeouts, midstream settling) stays in the engine and its corpus tests; of the receiver it
models only its ACK numbers and whether its window is 0, and it sends no bytes of its own.
"""
from sortedcontainers import SortedDict

# Must match RETAIN_MAX in _engine.pyx: how far back delivered bytes are compared.
RETAIN_MAX = 32768
# Must match MAX_ANCHOR_STEP in _engine.pyx: how far beyond what is delivered or held one
# segment may move the sequence anchor.
MAX_ANCHOR_STEP = 1 << 30
MOD = 1 << 32


def new_wins(policy, ns, ne, os_, oe):
    """Does a new segment [ns, ne) replace bytes held from an older one [os_, oe)?"""
    if policy == "first":
        return False
    if policy == "last":
        return True
    if policy in ("bsd", "windows"):
        return ns < os_
    if policy == "linux":
        return ns < os_ or (ns == os_ and ne > oe)
    if policy == "solaris":
        return ne > oe or (ne == oe and ns <= os_)
    raise ValueError(policy)


class ReferenceDirection:
    """One direction whose stream starts at sequence number `isn + 1` (offset 0)."""

    CUT = None  # marks a byte the capture cut: known to exist, never seen

    def __init__(self, isn, policy="first"):
        self.base = (isn + 1) % MOD
        self.policy = policy
        self.next = 0                 # offset of the next byte to deliver
        self.held = SortedDict()      # offset -> (byte or CUT, seg_start, seg_end)
        self.data = bytearray()       # everything delivered
        self.gaps = []                # [offset, length], in sequence space
        self.conflicts = 0
        self.delivered_at = {}        # offset -> byte, for the last RETAIN_MAX delivered bytes
        self.acked = None             # highest offset the receiver acknowledged
        self.pending = False          # a hole was acknowledged; it is given up at the next event
        self.zero_window = False      # the receiver's latest ACK advertised a zero window
        self.event = 0                # events so far: bytes cut at an earlier one are given up
        self.cut_at = {}              # offset of a byte the capture cut -> the event that cut it
        self._last_seq = self.base    # highest segment start seen, for unwrapping
        self._last_off = 0

    def offset(self, seq):
        """Unwrap a 32-bit sequence number against the highest segment start seen (as the engine),
        among segments no further than MAX_ANCHOR_STEP beyond what was delivered or held."""
        diff = (seq - self._last_seq) % MOD
        if diff >= 1 << 31:
            diff -= MOD
        return self._last_off + diff

    def _note(self, off):
        # as the engine: the anchor follows a segment at most MAX_ANCHOR_STEP beyond the
        # furthest byte delivered or held
        hi = max(self.next, self.held.peekitem(-1)[0] + 1 if self.held else 0)
        if off > self._last_off and off - hi <= MAX_ANCHOR_STEP:
            self._last_seq = (self._last_seq + off - self._last_off) % MOD
            self._last_off = off

    def segment(self, seq, payload, wirelen=None):
        """A segment's captured bytes; `wirelen` > len(payload) means the capture cut the rest."""
        s = self.offset(seq)
        wire = len(payload) if wirelen is None else wirelen
        if self.zero_window and wire == 1 and not self.held and s == self.next == self.acked:
            return                    # a zero-window probe: the receiver drops it
        self.event += 1
        self._note(s)
        e = s + len(payload)
        for k, b in enumerate(payload):
            self._byte(s + k, b, s, e)
        for off in range(e, s + wire):
            self._byte(off, self.CUT, s, s + wire)
        self._flush()
        self._cuts_due()
        if self.pending:
            self._give_up_acked()

    def _byte(self, off, b, s, e):
        if off < self.next:
            old = self.delivered_at.get(off)
            if old is not None and b is not self.CUT and old != b:
                self.conflicts += 1
            return
        if off not in self.held:
            self.held[off] = (b, s, e)
            if b is self.CUT:
                self.cut_at[off] = self.event
            return
        ob, os_, oe = self.held[off]
        if ob is self.CUT:
            if b is not self.CUT:
                self.held[off] = (b, s, e)
            return
        if b is self.CUT:
            return
        if ob != b:
            self.conflicts += 1
        if new_wins(self.policy, s, e, os_, oe):
            self.held[off] = (b, s, e)

    def _flush(self):
        while self.held and self.held.peekitem(0)[0] <= self.next:
            off, (b, _, _) = self.held.peekitem(0)
            if b is self.CUT and off == self.next:
                break                 # waits for a full copy (_cuts_due)
            self.held.popitem(0)
            if off < self.next:
                continue
            self.data.append(b)
            self.delivered_at[off] = b
            self.delivered_at.pop(off - RETAIN_MAX, None)
            self.next += 1

        if self.pending and (not self.held or self.acked <= self.next):
            self.pending = False

    def _cut_first(self):
        return self.held and self.held.peekitem(0)[0] == self.next and self.held.peekitem(0)[1][0] is self.CUT

    def _cuts_due(self):
        # bytes cut at an earlier event that no full copy replaced become a gap
        while self._cut_first() and self.cut_at[self.next] < self.event:
            self.held.popitem(0)
            self._gap(self.next + 1)
            self._flush()

    def _give_up_acked(self):
        self.pending = False
        if self.held and self.acked > self.next:
            self._gap(min(self.acked, self.held.peekitem(0)[0]))
            self._flush()

    def _gap(self, upto):
        if upto <= self.next:
            return
        if self.gaps and self.gaps[-1][0] + self.gaps[-1][1] == self.next:
            self.gaps[-1][1] += upto - self.next
        else:
            self.gaps.append([self.next, upto - self.next])
        self.delivered_at.clear()
        self.next = upto

    def ack(self, ack_seq, window=8192):
        """The receiver acknowledged up to `ack_seq`, advertising `window`. A hole below it with
        data waiting beyond is given up at the next event (the engine waits ACK_GRACE of capture
        time, and the tests space events further apart), so a retransmission right after the ACK
        still counts."""
        self.event += 1
        self.zero_window = window == 0
        a = self.offset(ack_seq)
        if self.acked is None or a > self.acked:
            self.acked = a
        self._cuts_due()
        if self.pending:
            self._give_up_acked()
        elif self.held and self.acked > self.next:
            self.pending = True

    def finish(self):
        """End of the connection: every remaining hole becomes a gap."""
        while self.held:
            if self._cut_first():
                self.held.popitem(0)
                self._gap(self.next + 1)
            else:
                self._gap(self.held.peekitem(0)[0])
            self._flush()
        if self.acked is not None and 0 < self.acked - self.next < 1 << 30:
            self._gap(self.acked)     # acknowledged but never captured: a trailing gap
        return bytes(self.data), [list(g) for g in self.gaps], self.conflicts
