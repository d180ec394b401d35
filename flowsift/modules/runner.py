"""Running a chain of modules over the record store, in the gateway's process (inline).

After each batch the gateway publishes; the runner advances every connection that changed:
new records go to `on_packet`, new stream bytes to `on_data` (each module has its own stream
pointer per direction: what it leaves unread is there at its next call), gaps to `on_gap`,
and a connection's end to `on_close`. A connection is read stage by stage (a writing module is a
stage of its own), as StagedChain's stages read it: a stage reads what the stage before it is
done with, so a writing module's edits reach the modules after it, and an edit of what they
read already is refused. Then each module's bit is set in the records it is done
with (the gateway records it), so complete and acknowledged space can be reclaimed.
"""
import json
import sys

from flowsift.errors import FlowsiftError, raised_stop
from flowsift.io._connset import ConnSet
from flowsift.modules.base import HOOKS, ModuleError, checked_rows, hook_error, trimmed_traceback
from flowsift.modules.edits import EVERYTHING, Handed
from flowsift.modules.loader import start
from flowsift.modules.values import NOT_JSON, check_fields, to_json, why_not_json
from flowsift.streams import RecordFile, StreamPointer
from flowsift.streams._pointer import first_carrier
from flowsift.streams.format import CLOSE_NAMES, RECORD_SIZE, endpoint, header_vlan

# what InlineChain.call_summary gives for a summary() that raised
FAILED = object()

# what every event carries: a module's fields of these names would replace them
ENVELOPE = frozenset({"ts", "module", "kind", "conn", "proto", "client", "server", "vlan"})
PROTO_NAMES = {6: "tcp", 17: "udp"}


def copy_events(path, out, add=""):
    """The whole event lines of the file at `path` onto `out` (a process killed while it wrote
    may have left part of one), with `add` (text such as ', "shard": 1') put in each before its
    closing brace. A file that is not there holds none."""
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("}\n"):
                    out.write(line[:-2] + add + "}\n" if add else line)
    except OSError:
        pass


def reader_budget():
    """How many record files a chain keeps open at once (FLOWSIFT_READER_FILES, else within the
    descriptor limit and vm.max_map_count, next to the store's share): past it, the connection
    read least recently is closed and opened again when it next has news."""
    from flowsift.errors import env_number
    from flowsift.limits import free_descriptors, max_map_count
    given = env_number("FLOWSIFT_READER_FILES", None, 2, None, "record files readers keep open")
    if given is not None:
        return given
    _, free = free_descriptors(raise_it=False)
    # (at least 8: fewer would close and open again the files of one batch's connections)
    return max(8, min(free // 4, (max_map_count() - 8192) // 16, 4096))


def join_checkpoint(head, parts):
    """A checkpoint's text from checkpoint_parts()."""
    return head.replace(f'"{_OPEN}"', "{" + ",".join(f'"{conn}":{text}' for conn, text in parts.items()) + "}", 1)


def passive(cls):
    """A module that reads no packets, bytes or gaps as they come: a chain of such modules reads
    a connection only when it opens (if one has on_open) and when it ends, not at every batch
    that touched it. (A writing module is never passive: the next stage reads as far as it got.)"""
    return not cls.writes and not any(callable(getattr(cls, h, None)) for h in ("on_packet", "on_data", "on_gap"))


# What ended a connection when neither direction was reset nor both closed by FIN, in order
CLOSE_ORDER = ("reused", "evicted", "timeout", "eof")


def connection_close(close0, close1):
    """The reason a connection ended, given to on_close: `rst` if either direction was reset;
    `fin` if both ended with a FIN; otherwise what ended the one(s) a FIN did not close
    (`reused`, then `evicted`, `timeout`, `eof` if they differ): the FIN of one side alone did
    not end the connection. The engine counts connections by the same rule. None if neither
    direction has ended."""
    names = {CLOSE_NAMES[c] for c in (close0, close1) if c}
    if not names:
        return None
    if "rst" in names:
        return "rst"
    if names == {"fin"}:
        return "fin"
    names.discard("fin")
    return next((n for n in CLOSE_ORDER if n in names), None) or sorted(names)[0]


class _Conn:
    __slots__ = ("flow", "file", "next_record", "pointers", "seen", "events", "gaps_seen", "ends_seen",
                 "times", "closed")

    def __init__(self, flow, file):
        self.flow = flow
        # (released while it is past the reader budget: the same object opens again when read, so
        # pointers and flows a module kept go on)
        self.file = file
        self.next_record = 0
        self.pointers = {}       # (module index, direction) -> StreamPointer
        self.seen = {}           # (module index, direction) -> (position, available, final) at the last on_data
        self.events = []         # event lines held until the connection is done (worker mode)
        self.gaps_seen = {}      # module index -> gap entries already handed to its on_gap (gap-only modules)
        self.ends_seen = None    # (end0, end1, gaps, close0, close1, closing) at the last advance: nothing new, nothing to do
        self.closed = 0          # stages whose on_close was called (a closing advance calls them stage by stage)


# where a chain's hooks run, as a worker tells it (InlineChain.where): connection << 3 | the hook's
# number (0: in no hook)
HOOK_NUMBERS = {hook: i + 1 for i, hook in enumerate(HOOKS)}
HOOK_NAMES = (None, *HOOKS)


def faults_said():
    """A hard crash (a segfault in a module's C extension) of the process that runs the hooks
    cannot be survived: Python's faulthandler says at least where it was (the frames name the
    module's file and the hook), unless something enabled it already (pytest, -X faulthandler)."""
    global faults_ours
    import faulthandler
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, OSError):
        return                          # (a stderr that is no file: nowhere to say it)
    faults_ours = True


faults_ours = False     # faults_said enabled the faulthandler (a worker forked from here turns it off)


ORIGINS = ("origin0", "origin1")
GAP_FOLLOWS, ENDED = 1, 2     # why bytes a module left unread can no longer grow (_stream)
AT_GAP = 3                    # an on_data call at a gap (stream.at_gap), for a module with no on_gap
_AGAIN = "again"               # a checkpoint entry: read this connection again from its first record
_OPEN = "@@flowsift-open@@"      # where a checkpoint's open connections are put in


def _told(seen, gap):
    # the module's last on_data call showed it this gap already: as next_gap, right after the
    # bytes it was handed (GAP_FOLLOWS), or at it (AT_GAP)
    if seen is None:
        return False
    pos, avail, final = seen
    return (final == GAP_FOLLOWS and pos + avail == gap.offset) or (final == AT_GAP and pos == gap.offset)


class _PacketTimes:
    """Which packet first carried a stream byte, for the time of an event a module emits while
    reading: from the connection's records, copied as they come (only for connections with
    such events), so the time does not depend on how packets were batched."""

    def __init__(self):
        self.records = bytearray()           # the records read so far, as in the file
        self.count = 0

    def at(self, rf, d, offset, records):
        h = rf.header
        if records > self.count:
            self.records += rf._region(h["records_off"] + self.count * RECORD_SIZE, (records - self.count) * RECORD_SIZE)
            self.count = records
        # (the records so far may be fewer than those copied: on_packet's end at its record)
        return first_carrier(self.records, min(records, self.count), d, h[ORIGINS[d]] if h["proto"] == 6 else 0,
                             offset)


class InlineChain:
    """Modules of a chain, called in order for each connection, in one process."""

    def __init__(self, chain, store, events=None, strict=False, path_of=None, on_done=None, hold_events=False,
                 editor=None, bit_base=0, registry=None, modules=None):
        """`store`: the gateway's RecordStore (inline), or None with `path_of(conn)` giving record
        file paths and `on_done(conn, records, events, counts)` told when a connection is finished
        (a worker or an attached module process; with `hold_events`, a connection's events are
        handed to on_done, not written, and so are the counter increments made while it was the
        current connection). `registry` assigns the modules' bits and records their progress
        (default: an embedded one over `store`). `modules`: instances of the chain's modules
        started already (loader.start_chain), else started here."""
        from flowsift.modules.base import Flow
        self._Flow = Flow
        self.modules = modules if modules is not None else [start(cls, config) for cls, config in chain]
        self.store = store
        self.path_of = path_of or store.path
        self.on_done = on_done
        self.hold_events = hold_events
        self.editor = editor
        self.bit_base = bit_base          # this chain's modules hold bits bit_base.. of the global bitmap
        self.finished_now = []            # connections finished since the caller last looked (stages)
        self.events = events
        self.output_error = None    # the events output's error, once writing it failed
        self.strict = strict
        self.errors = {}
        self.event_count = 0
        self.conns = {}
        self.finished = ConnSet()  # connections already closed here (a resumed worker may hear of them again)
        import collections
        self.open_files = collections.OrderedDict()     # connections whose file is open, least recent first
        self.file_budget = reader_budget()
        self.reopens = 0
        self.seq = 0              # the last batch of a batch log processed (attached modules)
        self._entries = {}        # conn -> its checkpoint entry text as of the last checkpoint
        self._dirty = set()       # connections read since the last checkpoint
        if registry is None and store is not None:
            from flowsift.registry import EmbeddedRegistry
            registry = EmbeddedRegistry(store=store)
        self.registry = registry
        self.deltas = {}          # conn -> counter increments not yet handed to on_done (None: outside a connection)
        for i, m in enumerate(self.modules):
            m._emit = self._on_emit
            if registry is not None:
                registry.register(m.name, bit_base + i)
            if on_done is not None:
                m.count = self._counting(m.count)
                m._tally = self._counting(m._tally)
        self.by_hook = {h: [(i, m) for i, m in enumerate(self.modules) if callable(getattr(m, h, None))]
                        for h in ("on_open", "on_data", "on_gap", "on_close", "on_packet")}
        self.streaming = [(i, m) for i, m in enumerate(self.modules)
                          if callable(getattr(m, "on_data", None)) or callable(getattr(m, "on_gap", None))]
        # Stages: consecutive read-only modules form one, a writing module is one of its own. A
        # connection is read stage by stage, each reading as far as the stage before it handed
        # on, as stages run apart (StagedChain) do: an edit is accepted or refused alike
        self.stages = []
        for i, m in enumerate(self.modules):
            if self.stages and not m.writes and not self.modules[self.stages[-1][-1]].writes:
                self.stages[-1].append(i)
            else:
                self.stages.append([i])
        self.stage_hooks = []             # per stage: (on_packet, streaming, on_close) modules, and its writer
        for st in self.stages:
            self.stage_hooks.append(tuple([(i, m) for i, m in hooks if i in st] for hooks in
                                          (self.by_hook["on_packet"], self.streaming, self.by_hook["on_close"]))
                                    + (self.modules[st[0]] if self.modules[st[0]].writes else None,))
        self.followed = False             # a stage after this chain reads what it hands on (StagedChain)
        self.passive = all(passive(type(m)) for m in self.modules)
        # modules that read as connections go (what flow.skip() can spare)
        self.readers = [m for m in self.modules if not passive(type(m)) or m.writes]
        self._current = None
        self._running = [None]    # the module whose hook runs now (flow._module, for every flow)
        self._closing = None
        self._limits = None
        self.shared_flows = len(self.modules) > 1     # several modules are handed one Flow
        self._when = None         # what gives the time of an event now (see _event_time)
        # a worker's one-item shared memoryview ("q"): the connection and hook running now, for the
        # gateway to read if the process dies in it (see HOOK_NUMBERS). None: not told
        self.where = None
        if on_done is None:
            faults_said()         # the hooks run in this process (the gateway's)

    # --- events and failures ---
    def _on_emit(self, module, kind, fields):
        if type(kind) is not str or not kind:
            raise ModuleError(f"module {module.name}: emit({kind!r}, ...): an event's kind is text, e.g. "
                              f"emit(\"request\", ...), not {'empty text' if kind == '' else type(kind).__name__}")
        if not ENVELOPE.isdisjoint(fields):
            raise ModuleError(f"module {module.name}: event field {sorted(ENVELOPE.intersection(fields))[0]!r} "
                              f"is one every event has ({', '.join(sorted(ENVELOPE - {'vlan'}))}; vlan with "
                              "--vlan-key): choose another name")
        if self.events is None and not self.hold_events:
            try:
                check_fields(fields)
            except NOT_JSON:
                raise ModuleError(f"module {module.name}: event {kind!r}: {why_not_json(fields)}") from None
            self.event_count += 1
            return
        flow = self._current
        line = {"ts": self._event_time(flow) / 1e9 if flow else None, "module": module.name, "kind": kind}
        if flow is not None:
            line.update(flow.key())
        line.update(fields)
        try:
            text = to_json(line) + "\n"
        except NOT_JSON:
            raise ModuleError(f"module {module.name}: event {kind!r}: {why_not_json(fields)}") from None
        self.event_count += 1
        holder = (self.conns.get(flow.conn) or self._closing) if (self.hold_events and flow is not None) else None
        if holder is not None:
            holder.events.append(text)
        elif self.events is not None:
            try:
                self.events.write(text)
            except FlowsiftError as e:
                # the events output cannot be written (a full disk): the run stops on it, said as
                # the output's error, not taken for the module's failure (_call)
                self.output_error = e
                raise

    def _event_time(self, flow):
        """When an event happened: the packet a module was handed (on_packet), the one that
        first carried the last byte it read (on_data) or the first byte after a gap (on_gap);
        else (on_open, on_close) the connection's latest packet."""
        when = self._when
        if when is None:
            return flow.last_ts
        if isinstance(when, int):
            return when
        c, d, at = when                # at: a stream offset, or the pointer being read (its last byte read)
        offset = at if isinstance(at, int) else max(at.tell() - 1, 0)
        if c.flow._times is None:
            c.flow._times = _PacketTimes()      # (the copy flow.time_at searches too)
        ts = c.flow._times.at(c.file, d, offset, c.file.header["records"])
        return flow.last_ts if ts is None else ts

    def _counting(self, count):
        # counters travel with their connection's "done", so a restart cannot count them twice
        def counted(name, n=1):
            count(name, n)            # (first: a name it refuses is not carried either)
            cur = self._current.conn if self._current is not None else None
            d = self.deltas.setdefault(cur, {})
            d[name] = d.get(name, 0) + n
        return counted

    def _call(self, m, hook, *args):
        flow = self._current
        running = self._running
        running[0] = m
        if flow is not None and self.shared_flows and flow._own is None:
            flow._own = {}      # each module has its own flow.state and flow.cache (Flow._mine)
        where = self.where
        if where is not None:
            where[0] = args[0].conn << 3 | HOOK_NUMBERS[hook]
        try:
            getattr(m, hook)(*args)
        except (Exception, SystemExit, KeyboardInterrupt) as e:
            self._failed(m, hook, e)
        finally:
            running[0] = None
            if where is not None:
                where[0] = 0
        if self.output_error is not None:
            raise self.output_error         # (a module that caught it does not keep the run going)

    def _failed(self, m, hook, e):
        # the module's own sys.exit() or KeyboardInterrupt fails its hook as any exception does;
        # the user's Ctrl-C (SIGTERM: Terminated, never caught) that came while it ran stops the run
        if not isinstance(e, Exception) and raised_stop(e):
            raise e
        if self.output_error is not None:
            raise self.output_error from None
        if self.strict:
            if isinstance(e, ModuleError):
                raise e             # the module API's own complaint names the module already
            # (the message carries the module's frames: a worker sends the gateway text)
            raise hook_error(m, hook, e) from e
        n = self.errors.get(m.name, 0)
        self.errors[m.name] = n + 1
        if n == 0:
            sys.stderr.write(f"flowsift: module {m.name} failed in {hook}() (later failures are counted):\n"
                             f"{trimmed_traceback(e)}\n")

    # --- the end-of-run tables ---
    def call_summary(self, m):
        """What m.summary() returned; FAILED when it raised, a failure of the module's as a hook's
        is (counted and said, or the stop under --strict): its table is left out."""
        try:
            return m.summary()
        except (Exception, SystemExit, KeyboardInterrupt) as e:
            self._failed(m, "summary", e)
        return FAILED

    def checked_summary(self, m, rows):
        """checked_rows(m, rows); FAILED when they are no table, a failure of summary()'s as a
        raise in it is (a bad emit in a hook is counted too: only --strict stops on it)."""
        try:
            return checked_rows(m, rows)
        except ModuleError as e:
            self._failed(m, "summary", e)
        return FAILED

    def summary_tables(self):
        """{name: rows} of the modules whose summary() has rows (checked: checked_summary).
        Before counters(): a summary() that failed counts in its module's errors."""
        out = {}
        for m in self.modules:
            rows = self.call_summary(m)
            if rows is not FAILED:
                rows = self.checked_summary(m, rows)
                if rows is not FAILED and rows:
                    out[m.name] = rows
        return out

    # --- per batch ---
    def process(self, touched, closed, limits=None):
        """`limits`: {conn: (records, gaps, end0, end1, last_ts)} as published with this batch, for a
        reader that runs behind the gateway (a worker): it reads no further, so that what it
        sees, batch after batch, does not depend on how far behind it is."""
        self._limits = limits
        if self.passive:
            if self.by_hook["on_open"]:
                for conn in touched:
                    if conn not in self.conns and conn not in self.finished:
                        self._open(conn)
            for conn in closed:
                if conn not in self.finished:
                    fresh = conn not in self.conns
                    if fresh:
                        self._open(conn)
                    self._close(conn, fresh)
            return
        # a connection that ended is read once, to its end, stage by stage: a stage after a writing
        # one is handed its last batch after the writing module's on_close, as a stage run apart is
        ended = set(closed) if touched and closed and (len(self.stages) > 1 or self.followed) else ()
        for conn in touched:
            if conn not in self.finished and conn not in ended:
                self._advance(conn)
        for conn in closed:
            if conn not in self.finished:
                self._close(conn, self._advance(conn, closing=True))      # (fresh: its header just read)

    def _open(self, conn, call_hooks=True):
        rf = RecordFile(self.path_of(conn))
        h = rf.header
        flow = self._Flow(conn, PROTO_NAMES.get(h["proto"]) or str(h["proto"]),
                          endpoint(h["client_addr"], h["client_port"], h["ipver"]),
                          endpoint(h["server_addr"], h["server_port"], h["ipver"]), h["first_ts"], header_vlan(h))
        flow._file = rf
        flow._editor = self.editor
        flow._hook = self._running
        c = self.conns[conn] = _Conn(flow, rf)
        rf.on_reopen = lambda: self._reopened(conn)
        self._opened(conn)
        self._current = flow
        if call_hooks:
            # what on_open reads (flow.records(), totals, time_at) ends where this batch does, as
            # for every hook: not where a worker that runs behind the gateway finds the file
            self._header(c, conn, fresh=True)
            for _, m in self.by_hook["on_open"]:
                self._call(m, "on_open", flow)
        return c

    def _opened(self, conn):
        self.open_files[conn] = None
        while len(self.open_files) > self.file_budget:
            old = next(iter(self.open_files))
            if old == conn:
                break
            self._evict(old)

    def _evict(self, conn):
        # close the file and unmap; pointers and flow keep the file object, which opens again
        # when read: by this chain, or through a pointer or flow a module kept and reads from
        # another connection's hook (the same positions, never another file's bytes)
        c = self.conns[conn]
        for sp in c.pointers.values():
            sp.detach()
        c.file.release()
        del self.open_files[conn]

    def _reopened(self, conn):
        # a released file was opened again (to be read here or by a module): it counts again
        self.reopens += 1
        self._opened(conn)

    def _touch(self, conn, c):
        if conn in self.open_files:
            self.open_files.move_to_end(conn)
        else:
            c.file.reopen()

    def _skipping(self, flow):
        # has every module that reads as the connection goes skipped it?
        sk = flow._skipped
        return bool(sk) and all(m in sk for m in self.readers)

    def _advance(self, conn, closing=False):
        """Hand the modules what is new of `conn`, stage by stage. True if its header was read for
        it. `closing`: it ended (the writing modules read all they will): each stage's on_close
        is called once it has read it, before the next stage reads the rest."""
        c = self.conns.get(conn)
        if c is None:
            c = self._open(conn)
            self._dirty.add(conn)
        flow = c.flow
        if self._skipping(flow):
            for k in range(len(self.stages)):
                self._hand_on(c, k, None)
            return False           # nothing to read it for (flow.skip()): not even its header
        self._touch(conn, c)
        self._dirty.add(conn)
        self._current = flow
        h = self._header(c, conn)
        flow.last_ts = h["last_ts"]
        first, last = c.next_record, h["records"]
        ends = (h["end0"], h["end1"], h["gaps"], h["close0"], h["close1"], closing)
        moved = ends != c.ends_seen    # else no new bytes, gap or end since the last advance
        c.ends_seen = ends
        held = None                # per direction: how far the writing modules before read
        for k, (packets, streams, _, writer) in enumerate(self.stage_hooks):
            if packets and last > first:
                self._packets(c, h, packets, first, last)
            for i, m in streams if moved else ():
                if m in flow._skipped:
                    self._let_go(c, i)
                    continue
                if not callable(getattr(m, "on_data", None)):
                    self._gaps_only(c, i, m, h)
                    continue
                for d in (0, 1):
                    if m in flow._skipped:
                        break
                    self._stream(c, i, m, d, h, held[d] if held and not closing else None)
                if m.writes and m not in flow._skipped:
                    # what a module after it reads is what it merged: as far as it read (it may not
                    # replace bytes behind its position), as in a chain of stages
                    held = held or [None, None]
                    for d in (0, 1):
                        at = self._reached(c, i, d)
                        held[d] = at if held[d] is None else min(held[d], at)
            if closing:
                self._close_stage(c, h, k)
            elif writer is not None:
                self._hand_on(c, k, h)
        c.next_record = max(c.next_record, last)    # a reader ahead of a limit stays ahead
        return True

    def _packets(self, c, h, packets, first, last):
        # records [first, last) to the on_packet hooks of one stage
        flow = c.flow
        hooks = [m for _, m in packets if m not in flow._skipped]
        if not hooks:
            return
        try:
            headers = self.editor.headers if self.editor is not None else None
            for rec in c.file.records(first, last):
                self._when = rec.ts_ns
                flow._upto, flow.last_ts = rec.index + 1, rec.ts_ns     # the connection so far
                for m in hooks:
                    if headers and rec.frame_pos in headers:
                        # a module before it edited the record after it was read: as merged
                        rec = self.editor.merged(rec)
                    self._call(m, "on_packet", flow, rec)
                if flow._skipped:
                    hooks = [m for m in hooks if m not in flow._skipped]
                    if not hooks:
                        break      # (the records are not even decoded for it any more)
        finally:
            self._when = None
            flow._upto, flow.last_ts = None, h["last_ts"]

    def _hand_on(self, c, k, h, ended=False):
        """Record what the stages after writing stage k may read of c now (h: the header as read
        for this batch; None: all of it): its editor refuses edits of that, which they read as
        it was. What the module skipped counts as read. `ended`: its on_close returned (a last
        stage hands nothing on, but edits of the connection are refused then too)."""
        m = self.stage_hooks[k][3]
        last = k + 1 == len(self.stages) and not self.followed
        if m is None or (last and not ended):
            return
        if last:
            handed = Handed(0, 0, 0, True)
        elif h is None or m in c.flow._skipped:
            handed = EVERYTHING._replace(ended=ended)
        else:
            ends = [h["end0"], h["end1"]]
            if callable(getattr(m, "on_data", None)):
                # (the bytes it has not read wait for it: handover())
                i = self.stages[k][0]
                ends = [min(ends[d], self._reached(c, i, d)) for d in (0, 1)]
            handed = Handed(h["records"], ends[0], ends[1], False)
        if c.flow._handed is None:
            c.flow._handed = {}
        c.flow._handed[m] = handed

    def _close_stage(self, c, h, k):
        # stage k's on_close; after it, the stages after it read the connection to its end
        closers = self.stage_hooks[k][2]
        if closers:
            reason = connection_close(h["close0"], h["close1"])
            c.flow.last_ts = h["last_ts"]
            self._current = c.flow
            self._closing = c
            for _, m in closers:
                self._call(m, "on_close", c.flow, reason)
        self._hand_on(c, k, None, ended=True)
        c.closed = k + 1

    def _reached(self, c, i, d):
        # how far module i has read direction d of c: for a writing module, the furthest it
        # went (going back makes nothing it read past editable again, so it is final)
        sp = c.pointers.get((i, d))
        pos = sp.tell() if sp is not None else 0
        m = self.modules[i]
        if m.writes and self.editor is not None:
            pos = self.editor.reached(m, c.flow.conn, d, pos)
        return pos

    def _let_go(self, c, i):
        # a module that skipped the connection keeps no pointer into it
        for d in (0, 1):
            c.pointers.pop((i, d), None)
            c.seen.pop((i, d), None)
        c.gaps_seen.pop(i, None)

    def _header(self, c, conn, fresh=False):
        h = c.file.header if fresh else c.file.refresh()
        lim = self._limits.get(conn) if self._limits else None
        if lim is not None:
            # in place: the file's header is what pointers, flow.records() and gaps() read
            h["records"] = min(h["records"], lim[0])
            h["gaps"] = min(h["gaps"], lim[1])
            for d in (0, 1):
                if h[f"end{d}"] > lim[2 + d]:
                    h[f"end{d}"] = lim[2 + d]
                    h[f"close{d}"] = 0      # not ended as far as this batch goes
            if len(lim) > 4:
                h["last_ts"] = lim[4]           # not the time of packets written since
        return h

    def _gaps_only(self, c, i, m, h):
        # a module with on_gap but no on_data: hand it new gap entries, no stream pointer needed
        seen = c.gaps_seen.get(i, 0)
        if h["gaps"] > seen:
            from flowsift.reassembly.events import Gap
            for g in c.file.gaps()[seen:]:
                self._when = (c, g.dir, g.offset + g.length)
                self._call(m, "on_gap", c.flow, g.dir, Gap(c.flow.conn, g.dir, g.offset, g.length, g.reason))
                self._when = None
                if m in c.flow._skipped:
                    break
            c.gaps_seen[i] = h["gaps"]

    def _pointer(self, c, i, d, m, h=None):
        if h is not None:
            # a new pointer holds to what this batch published, not to the file's live header
            c.file.header = h
        if self.editor is not None and m.writes:
            from flowsift.modules.edits import EditableStream
            sp = EditableStream(c.file, d, self.editor, c.flow, m, h)
        else:
            sp = StreamPointer(c.file, d, h)
            sp._flow = c.flow             # (its replace() is refused as the module's flow.edit is)
        c.pointers[(i, d)] = sp
        return sp

    def _stream(self, c, i, m, d, h, held=None):
        # `held`: the stream offset the writing modules before this one read to
        sp = c.pointers.get((i, d))
        if sp is None:
            sp = self._pointer(c, i, d, m, h)
        if held is not None and held < h[f"end{d}"]:
            sp.refresh({**h, f"end{d}": held, f"close{d}": 0})
        else:
            sp.refresh(h)
        has_data = callable(getattr(m, "on_data", None))
        has_gap = callable(getattr(m, "on_gap", None))
        while True:
            gap = sp.at_gap
            if gap is not None:
                if has_gap:
                    self._when = (c, d, gap.offset + gap.length)
                    self._call(m, "on_gap", c.flow, d, gap)
                    self._when = None
                    if m in c.flow._skipped:
                        break
                elif has_data and not _told(c.seen.get((i, d)), gap):
                    # a module that reads bytes and not gaps is shown the gap once, at it
                    # (stream.at_gap), however the bytes before it were batched: when they all
                    # came before the loss was known, it had read them and no call showed it
                    c.seen[(i, d)] = (gap.offset, 0, AT_GAP)
                    if not self._on_data(c, d, m, sp):
                        break
                    if sp.tell() != gap.offset:
                        continue               # it moved (past the gap, or back): where it stands now
                sp.skip_gap()
                continue
            pos, avail = sp.tell(), sp.available
            if avail <= 0:
                break
            if not has_data:
                sp.skip()                      # the module only wants gaps: pass over the bytes
                continue
            # Can these bytes still grow? Not when lost bytes follow them (GAP_FOLLOWS) or the
            # direction ended (ENDED): the module is called once more knowing it
            # (stream.next_gap, stream.closed), e.g. to finish a message cut short. What it
            # leaves before a gap goes with it, or it would never reach the gap nor the bytes
            # after it
            g = sp.next_gap
            if g is not None and g.offset == pos + avail:
                final = GAP_FOLLOWS
            else:
                final = ENDED if pos + avail == sp.end_offset and sp.closed else 0
            state = (pos, avail, final)
            if c.seen.get((i, d)) == state:
                if final == GAP_FOLLOWS:
                    sp.skip()
                    continue
                break                          # nothing new since its last call: unread bytes wait
            c.seen[(i, d)] = state
            if not self._on_data(c, d, m, sp):
                break

    def _on_data(self, c, d, m, sp):
        # m.on_data over direction d of c; False once the module skipped the connection
        self._when = (c, d, sp)
        self._call(m, "on_data", c.flow, sp)
        self._when = None
        return m not in c.flow._skipped

    def _close(self, conn, fresh=False):
        # `fresh`: its header was read just now (by _open or _advance)
        c = self.conns.pop(conn, None)
        if c is None:
            return
        self.finished.add(conn)
        self._entries.pop(conn, None)
        self._touch(conn, c)
        h = self._header(c, conn, fresh)
        c.flow.last_ts = h["last_ts"]
        self._current = c.flow
        self._closing = c
        for k in range(c.closed, len(self.stages)):      # (those a closing advance did not close)
            self._close_stage(c, h, k)
        for state, cache in (c.flow._own or {None: (c.flow._state, c.flow._cache)}).values():
            state.clear()
            cache.clear()
        records = h["records"]
        for sp in c.pointers.values():
            sp.detach()         # (a pointer kept past the end reads nothing: a StoreError says so)
        c.file.close()
        self.open_files.pop(conn, None)
        self._closing = None
        self._current = None
        if self.on_done is not None:
            self.on_done(conn, records, c.events, self.deltas.pop(conn, {}))
        else:
            for i in range(len(self.modules)):
                self.registry.commit(self.bit_base + i, conn, records)
        self.finished_now.append(conn)

    def handover(self, conns):
        """How far the next stage may read each of `conns` that this chain has open, after this
        batch: {conn: (records, gaps, end0, end1, last_ts)}. Records: all it was shown (header edits
        are not in the file). Bytes: up to where every module that reads them stands -- what
        a writing module has read past is final (it may not replace bytes behind its position).
        Gaps: the leading entries wholly before those ends."""
        out = {}
        readers = [i for i, m in self.streaming if callable(getattr(m, "on_data", None))]
        for conn in conns:
            c = self.conns.get(conn)
            if c is None or conn not in self.open_files or self._skipping(c.flow):
                continue                        # (skipped by all: as far as published)
            h = c.file.header                   # as this batch read it
            ends = [h["end0"], h["end1"]]
            for i in readers:
                if self.modules[i] in c.flow._skipped:
                    continue               # it reads no further: nothing waits for it
                for d in (0, 1):
                    ends[d] = min(ends[d], self._reached(c, i, d))
            n = 0
            for g in c.file.gaps()[:h["gaps"]] if h["gaps"] else ():
                if g.offset + g.length > ends[g.dir]:
                    break
                n += 1
            out[conn] = (h["records"], n, ends[0], ends[1], h["last_ts"])
        return out

    def follow(self, conns):
        """Advance `conns`, and close those whose record file the gateway has closed (a process
        attached to the store: the record files, not a message, say a connection ended)."""
        self._limits = None                # as far as the files go
        for conn in conns:
            if conn in self.finished:
                continue
            read = self._advance(conn)
            c = self.conns[conn]
            if not read:
                # skipped by every module: _advance read nothing, but the file still says when
                # the connection ended
                self._touch(conn, c)
                c.file.refresh()
            if c.file.closed_by_gateway:
                self._close(conn)

    def finish(self):
        # what is open still is read to its end, stage by stage, before each stage's on_close, as
        # a connection that ended is (process) and as the stages of a staged chain read it
        for conn in list(self.conns):
            if self.passive:
                self._close(conn)
            else:
                self._close(conn, self._advance(conn, closing=True))

    def state_snapshots(self):
        """{module name: its declared state} for the modules that declare some."""
        from flowsift.modules.state import declared, snapshot
        return {m.name: json.loads(snapshot(m)) for m in self.modules if declared(type(m))}

    # --- checkpoints (one module per chain: a worker) ---
    def checkpoint(self, incremental=False, appended=None):
        """The module's whole state after the last batch, as JSON text: its declared state
        (with `incremental`, append-only lists only counted, the rows appended since the last
        checkpoint put in the dict `appended`),
        counters, and for each open connection where every stream pointer stands, what it has
        seen, its flow.state and the events held for it. A connection whose flow.state JSON
        does not carry back unchanged (objects, tuples, non-string keys) is marked to be read
        again from its first record after a restore (its counter increments are left out of
        the saved counters)."""
        return join_checkpoint(*self.checkpoint_parts(incremental, appended))

    def checkpoint_parts(self, incremental=False, appended=None):
        """checkpoint() in two parts: the text without the open connections, and {conn: entry
        text} of each (the same text object as at the last checkpoint for a connection not read
        since: a worker sends only the entries that changed)."""
        from flowsift.modules.state import snapshot
        m = self.modules[0]
        counters = dict(m.counters)
        parts, again = {}, []
        cache = self._entries
        for conn, c in self.conns.items():
            # a connection not read since the last checkpoint has the same entry: keep its text
            text = cache.get(conn) if conn not in self._dirty else None
            if text is None:
                text = cache[conn] = self._entry(conn, c)
            if text is _AGAIN:
                again.append(conn)
                for k, v in self.deltas.get(conn, {}).items():
                    counters[k] = counters.get(k, 0) - v
                continue
            parts[conn] = text
        self._dirty.clear()
        head = json.dumps({"state": snapshot(m, incremental, appended), "counters": counters, "errors": self.errors,
                           "events": self.event_count, "open": _OPEN, "again": again, "seq": self.seq,
                           "global_deltas": self.deltas.get(None, {})}, separators=(",", ":"))
        return head, parts

    def _states(self, flow):
        """A flow's per-flow state as a checkpoint keeps it: its module's dict or, when several
        modules share the flow (inline), {module index: dict}."""
        if not self.shared_flows:
            return flow.state
        own = flow._own or {}
        return {str(i): own[m][0] for i, m in enumerate(self.modules) if m in own and own[m][0]}

    def _entry(self, conn, c):
        """One open connection's part of a checkpoint, as JSON text (or _AGAIN)."""
        states = self._states(c.flow)
        if not states:
            state, whole = "{}", True
        else:
            try:
                state = json.dumps(states)
                whole = json.loads(state) == states
            except (TypeError, ValueError):
                whole = False
        if not whole:
            return _AGAIN
        skip = [i for i, m in enumerate(self.modules) if m in c.flow._skipped]
        pos = {f"{i}.{d}": sp.tell() for (i, d), sp in c.pointers.items() if i not in skip}
        return json.dumps({"next": c.next_record, "pos": pos, **({"skip": skip} if skip else {}),
                           "seen": {f"{i}.{d}": list(v) for (i, d), v in c.seen.items()},
                           "gaps": c.gaps_seen, "ends": c.ends_seen, "state": state, "events": c.events,
                           "deltas": self.deltas.get(conn, {}), "last_ts": c.flow.last_ts}, separators=(",", ":"))

    def restore_checkpoint(self, text, rows=None):
        """Take up from a checkpoint: declared state, counters and open connections where
        they stood (those marked `again` are read from their first record). `rows`: every
        item of the append-only lists an incremental checkpoint gave in parts."""
        from flowsift.modules.state import restore
        data = json.loads(text)
        m = self.modules[0]
        restore(m, data["state"], rows=rows)
        m.counters.clear()
        m.counters.update(data["counters"])
        self.errors.update(data["errors"])
        self.event_count = data["events"]
        self.seq = data.get("seq", 0)
        if data["global_deltas"]:
            self.deltas[None] = dict(data["global_deltas"])
        for key, saved in data["open"].items():
            self._take_entry(int(key), saved)

    def _take_entry(self, conn, saved):
        # an open connection where a checkpoint entry says it stood (restore, adoption)
        c = self._open(conn, call_hooks=False)
        states = json.loads(saved["state"])
        if self.shared_flows:
            c.flow._own = {m: (states.get(str(i), {}), {}) for i, m in enumerate(self.modules)}
            c.flow._state, c.flow._cache = c.flow._own[self.modules[0]]
        else:
            c.flow.state.update(states)
        if saved.get("skip"):
            c.flow._skipped = {self.modules[i] for i in saved["skip"]}
        c.flow.last_ts = saved["last_ts"]
        c.next_record = saved["next"]
        c.gaps_seen = {int(k): v for k, v in saved["gaps"].items()}
        c.ends_seen = tuple(saved["ends"]) if saved["ends"] else None
        c.events = list(saved["events"])
        if saved["deltas"]:
            self.deltas[conn] = dict(saved["deltas"])
        for k, v in saved["seen"].items():
            i, d = map(int, k.split("."))
            c.seen[(i, d)] = tuple(v)
        for k, pos in saved["pos"].items():
            i, d = map(int, k.split("."))
            sp = self._pointer(c, i, d, self.modules[i])
            sp.resume(pos)

    # --- re-sharding: open connections handed to another gateway's chain ---
    def export(self, conns):
        """Hand over these open connections: {conn: checkpoint entry text} (or "again": read it
        from its first record), and forget them here without closing them (no on_close: they
        go on in another shard)."""
        out = {conn: self._entry(conn, self.conns[conn]) for conn in conns if conn in self.conns}
        self.forget(out)
        return out

    def forget(self, conns):
        """Drop these open connections without closing them (no on_close, nothing reported)."""
        for conn in conns:
            c = self.conns.pop(conn, None)
            if c is None:
                continue
            self._entries.pop(conn, None)
            self._dirty.discard(conn)
            self.deltas.pop(conn, None)
            c.file.close()
            self.open_files.pop(conn, None)

    def hand_over(self, conns):
        """export() in the form every chain gives: {module slot: {conn: entry}}."""
        return {0: self.export(conns)}

    def take_over(self, entries, conns):
        self.adopt(entries.get(0, {}))

    def adopt(self, entries):
        """Take up connections another chain exported ({conn: entry}, under their ids here): each
        goes on where it stood; one marked "again" is read from its first record."""
        for conn, text in entries.items():
            if text != _AGAIN:
                self._take_entry(conn, json.loads(text))

    def counters(self):
        return {m.name: dict(m.counters, errors=self.errors.get(m.name, 0)) for m in self.modules}
