"""Read-only modules in worker processes, in parallel (FlowOS), restarted if they die (SIFT).

The gateway process sends each worker, after every batch, the connections that changed and
those that ended. A worker runs its module over the record files (read-only). Every few batches
it sends a checkpoint: the connections it finished since the last one (records covered, events
emitted, counter increments) together with its whole state -- declared cross-flow and global
state, counters, and for each open connection where its stream pointers stand, its flow.state
and the events held for it. The gateway records the finished connections (module bit set,
events written) and keeps the state, in one step. A worker that dies (even by SIGKILL) is
started again from its last checkpoint and sent the batches that came after it, in the same
order: it ends where it was, in the same state, so its output is that of an undisturbed run --
no record lost, none counted twice.
"""
import json
import multiprocessing as mp
import os
import sys
import time

from flowsift.gateway import changed_connections
from flowsift.limits import collect_less
from flowsift.errors import FlowsiftError, start_forked, take_stop_signals
from flowsift.modules.base import ModuleError
from flowsift.modules.loader import parse_chain, start
from flowsift.modules.runner import HOOK_NAMES, InlineChain, join_checkpoint, passive
from flowsift.modules.state import AppendOnly


CHECKPOINT_EVERY = 16           # batches between checkpoints (FLOWSIFT_CHECKPOINT_EVERY)
INFLIGHT = 64                   # batches sent to a worker and not yet acknowledged, at most
SMALL_MESSAGE = 4096 - 4        # a message a worker sends itself (see post), less the length header
_DROPPED = "dropped"            # a handed-over connection this module had given up (--max-backlog)
# one encoder for the rows of every append-only list (json.dumps with arguments makes one per call)
_row_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def checkpoint_every():
    from flowsift.errors import env_number
    return env_number("FLOWSIFT_CHECKPOINT_EVERY", CHECKPOINT_EVERY, 1, None, "batches between checkpoints")


def _worker(spec, index, store_dir, conn, strict, every=CHECKPOINT_EVERY, inherited=(), where=None):
    # `index`: the module's place in the whole chain (spec). `inherited`: the gateway's ends of
    # this worker's pipe and of the other workers': held here, they would keep those pipes open
    # after the gateway died, and this worker (or another) would wait for it for ever. `where`:
    # its slot of memory shared with the gateway, which says where it died (InlineChain.where)
    # Ctrl-C and SIGTERM are the gateway's to handle: it ends the run and its workers in order
    # (`systemctl stop` and `timeout` signal the whole group: a worker ended so was restarted)
    import signal
    take_stop_signals(signal.SIG_IGN)
    for c in inherited:
        c.close()
    from flowsift.modules import runner as _runner
    if _runner.faults_ours:
        # (the gateway's, for its own hooks: the gateway says where a worker died, in one line)
        import faulthandler
        faulthandler.disable()
    # what the worker inherits from the gateway lives as long as it does: out of the
    # collector's full passes
    import gc
    gc.freeze()
    collect_less()
    cls, config = parse_chain(spec)[index]
    done = []                                        # finished connections, reported with the next checkpoint

    def path_of(c):
        return os.path.join(store_dir, f"c{c:08d}.rec")

    def on_done(c, records, events, counts):
        done.append((c, records, events, counts))

    runner = InlineChain([(cls, config)], None, events=None, strict=strict, path_of=path_of,
                         on_done=on_done, hold_events=True)
    runner.where = where
    module = runner.modules[0]

    # A message to the gateway goes out from a thread while this one reads what the gateway
    # sends meanwhile (kept for later): a message larger than the pipe holds blocks until the
    # other end reads, and the gateway may at that moment be blocked sending the next batch
    # here. post() returns once the message is wholly in the pipe, so the gateway has every
    # checkpoint sent before the worker went on, even if it dies right after.
    import collections
    import queue
    import select
    import threading
    outbox = queue.SimpleQueue()
    inbox = collections.deque()
    wake_r, wake_w = os.pipe()

    def sender():
        while True:
            m = outbox.get()
            if m is None:
                return
            try:
                conn.send_bytes(m)
            except (BrokenPipeError, OSError):
                pass                                  # the gateway went away: nothing to tell
            os.write(wake_w, b"s")
    mailer = threading.Thread(target=sender, name="flowsift-worker-send", daemon=True)
    mailer.start()

    waiting = select.poll()                          # (poll: a forked worker's descriptors may pass 1024)
    waiting.register(wake_r, select.POLLIN)
    waiting.register(conn.fileno(), select.POLLIN)

    writable = select.poll()
    writable.register(conn.fileno(), select.POLLOUT)
    from multiprocessing.reduction import ForkingPickler
    dumps = ForkingPickler.dumps

    def post(m):
        # A small message goes straight out when there is room: a socket pair that polls
        # writable has room for a few KiB (it polls so well below its buffer), so the send
        # does not block, and the sender thread is idle (post returns only once it is), so
        # order holds. Handing each batch's acknowledgement to the thread cost two switches.
        data = dumps(m)
        if len(data) <= SMALL_MESSAGE and writable.poll(0):
            try:
                conn.send_bytes(data)
            except (BrokenPipeError, OSError):
                pass                                  # the gateway went away: nothing to tell
            return
        outbox.put(data)
        while True:
            ready = {fd for fd, _ in waiting.poll()}
            if wake_r in ready:
                os.read(wake_r, 1)
                return
            inbox.append(conn.recv())

    def receive():
        return inbox.popleft() if inbox else conn.recv()

    sent = None                                      # {conn: entry text} the gateway holds

    def checkpoint(seq, send=True):
        # what it finished and the state it is in after batch `seq`, in one message: the
        # gateway records both or neither. Open connections' entries go only when they changed
        # (the first checkpoint of a worker process sends them all)
        nonlocal sent
        appended = {}
        head, parts = runner.checkpoint_parts(incremental=True, appended=appended)
        if sent is None:
            blob = (head, parts, None)
        else:
            blob = (head, {c: t for c, t in parts.items() if sent.get(c) is not t}, [c for c in sent if c not in parts])
        sent = parts
        msg = ("ckpt", seq, list(done), blob, appended)
        done.clear()
        if send:
            post(msg)
        return msg
    try:
        while True:
            msg = receive()
            if msg[0] == "batch":
                _, seq, touched, closed, limits, forget = msg
                runner.forget(forget)              # given up for this module (--max-backlog)
                runner.process(touched, closed, limits)
                if seq % every == 0:
                    checkpoint(seq)
                post(("ack",))
            elif msg[0] == "quiet":
                # the source is quiet: what it finished goes now, not with a later checkpoint
                if done:
                    checkpoint(msg[1])
            elif msg[0] == "restore":
                # a restarted worker: the last checkpoint, then the batches sent after it, in order
                _, blob, rows, batches = msg
                if blob is not None:
                    runner.restore_checkpoint(blob, rows)
                for seq, touched, closed, limits, forget in batches:
                    runner.forget(forget)
                    runner.process(touched, closed, limits)
            elif msg[0] == "export":
                # connections moving to another shard: their entries and the checkpoint
                # without them, in one message (a restart then neither loses nor keeps them)
                entries = runner.export(msg[2])
                post(("exported", entries, checkpoint(msg[1], send=False)))
            elif msg[0] == "adopt":
                runner.adopt(msg[2])
                post(("adopted", checkpoint(msg[1], send=False)))
            elif msg[0] == "finish":
                runner.forget(msg[2])
                runner.finish()
                checkpoint(msg[1])
                rows = _summary(runner, module)      # (first: a summary() that fails counts in errors)
                post(("bye", runner.errors.get(module.name, 0), runner.deltas.pop(None, {}), rows))
                return
    except FlowsiftError as e:
        # a module's failure under --strict, or a store that is gone (the gateway died and
        # its temporary store with it): one line for the gateway, if it is there to read it
        post(("fatal", str(e)))
    except (EOFError, OSError):
        pass                                  # the gateway went away (killed): nothing to tell
    finally:
        outbox.put(None)
        mailer.join()


def _summary(runner, module):
    """A worker's end-of-run table ([] when summary() failed: runner.call_summary). When it is
    one of the module's append-only lists (as the counter's is), the gateway already holds those
    rows from the checkpoints, plain data: it is named, not sent again (a row per connection:
    unpickling them all would be the last thing the run waits for)."""
    from flowsift.modules.runner import FAILED
    rows = runner.call_summary(module)
    if rows is FAILED:
        return []
    for name, value in getattr(module, "_state", {}).items():
        if rows is value and isinstance(value, AppendOnly):
            return _Rows(name)
    rows = runner.checked_summary(module, rows)
    return [] if rows is FAILED else rows


class _Rows(str):
    """The name of the append-only list that is a worker's summary (see _summary)."""


def _kill_left(procs, pid):
    # workers ignore SIGTERM, which multiprocessing's clean-up at exit ends daemonic children
    # with: one still running then (an error ended the run) is killed just before
    if os.getpid() != pid:
        return                                       # (a forked copy: not its children)
    for p in procs:
        if p.is_alive():
            p.kill()


class _Worker:
    def __init__(self, owner, index):
        self.owner = owner
        self.index = index
        self.name = owner.names[index]
        self.done = set()                # connections this worker finished
        self.pending = 0                 # batches sent and not yet acknowledged (its backlog)
        self.quiet_at = 0                # the batch after which it was last asked for what it finished
        self.dropped = set()             # connections given up for this module (--max-backlog; _crashed)
        # A dropped connection's file may be given back only once the worker cannot read it any
        # more: it was told to forget it (with the next batch sent) and checkpointed after that
        # (a restart then never replays a batch naming it), and the gateway ended it.
        self.forget = []                 # dropped, not yet told
        self.forgotten = []              # (batch that told it, conn), until a checkpoint covers it
        self.drop_safe = set()
        self.drop_closed = set()
        self.dropped_batches = 0
        # back-pressure waits for it while a live source was read: [waits, seconds, frames the
        # source lost meanwhile] (what it cost the capture)
        self.held = [0, 0.0, 0]
        self.restarts = 0
        self.fruitless = 0               # restarts in a row that got it no further (see _restart)
        self.seq_restarted = -1          # its checkpoint's batch at the last restart
        self.died_in = set()             # connections its worker died in a hook of (once)
        self.bye = None
        self.head = None                 # the last checkpoint after batch checkpoint_seq, without
        self.entries = {}                # ... its open connections' entries
        self.rows = {}                   # every row of its append-only lists, sent in parts
        self.checkpoint_seq = 0
        self.log = []                    # (seq, touched, closed) sent after it: replayed after a restart
        self.checkpoints = 0
        self.checkpoint_bytes = 0
        # a module with no on_data, on_gap or on_packet reads a connection when it opens and when
        # it ends (see InlineChain.passive): it is sent new connections (only if it has on_open)
        # and ended ones, not every connection each batch touched
        cls = type(owner.modules[index])
        self.passive = passive(cls)
        self.opens = callable(getattr(cls, "on_open", None))
        self.start()

    def start(self):
        ends = self.owner.gateway_ends
        old = getattr(self, "conn", None)
        if old is not None:                                           # (a restart: the dead worker's pipe)
            ends.remove(old)
            old.close()
        parent, child = self.owner.ctx.Pipe()
        self.conn = parent
        ends.append(parent)
        self.pending = 0
        self.acked = False          # a worker still starting is not behind (--max-backlog)
        where = self.owner.where[self.index:self.index + 1]
        where[0] = 0
        self.proc = self.owner.ctx.Process(target=_worker, args=(self.owner.spec, self.owner.first + self.index,
                                                                  self.owner.store_dir, child, self.owner.strict,
                                                                  self.owner.every, list(ends), where), daemon=True)
        start_forked(self.proc)
        self.owner.procs.append(self.proc)
        child.close()

    def checkpoint(self):
        """The last checkpoint (JSON text), or None before the first."""
        return None if self.head is None else join_checkpoint(self.head, self.entries)

    def send(self, msg):
        try:
            self.conn.send(msg)
            return True
        except (BrokenPipeError, OSError):
            return False


# deaths in a row, with no checkpoint and no connection given up between them, before a
# module's worker is given up (and the run with it)
MAX_FRUITLESS = 100

# the shard this process's gateway is of (--shards; its events' `shard`), else None
SHARD = None


class ParallelChain:
    """Each module of a chain in its own process; same interface as InlineChain for the gateway."""

    def __init__(self, spec, chain, store, events=None, strict=False, first=0, max_backlog=None, registry=None,
                 save_state=True, modules=None):
        """`chain`: this stage's modules, which are modules first.. of the whole chain `spec`
        (their bits in the global bitmap too). `save_state`: copy each checkpoint into the
        store (see _save); pointless for a store removed at the end of the run. `modules`:
        instances of them started already (loader.start_chain), else started here."""
        self.spec = spec
        self.save_state = save_state
        self.first = first
        self.max_backlog = max_backlog   # None: back-pressure (the gateway waits for a slow module)
        # a live source's count of frames lost for want of reading, while it is read (else None):
        # those lost while the gateway waited for a worker are put down to its module
        self.source_lost = None
        self.finished_now = []
        self.seq = 0                     # batches sent so far
        from flowsift.modules.runner import reader_budget
        self.every = checkpoint_every()
        reader_budget()                  # a bad FLOWSIFT_READER_FILES is said here, not by every worker
        self.store = store
        self.store_dir = store.directory
        self.events = events
        self.strict = strict
        self.names = [cls.name for cls, _ in chain]
        # for summaries and tables
        self.modules = modules if modules is not None else [start(cls, config) for cls, config in chain]
        if registry is None:
            from flowsift.registry import EmbeddedRegistry
            registry = EmbeddedRegistry(store=store)
        self.registry = registry
        for i, name in enumerate(self.names):
            registry.register(name, first + i)
        self.ctx = mp.get_context("fork")
        self.open_conns = set()          # connections seen and not yet finished by every worker
        self.closed_conns = set()        # ... of which the gateway has ended these
        self.tables = {}
        self.event_count = 0
        self.errors = {}
        self.counters = [dict() for _ in chain]
        self.gateway_ends = []           # this process's ends of every worker's pipe (see _worker)
        # per worker, where it runs a hook now (InlineChain.where), in memory the forked workers
        # share: read when one dies
        import mmap
        self.where = memoryview(mmap.mmap(-1, 8 * len(chain))).cast("q")
        self.procs = []                  # every worker process started
        from multiprocessing import util
        util.Finalize(self, _kill_left, args=(self.procs, os.getpid()), exitpriority=1)
        self.workers = [_Worker(self, i) for i in range(len(chain))]
        self.following = not all(w.passive for w in self.workers)    # some worker reads every batch
        self.opening = any(w.passive and w.opens for w in self.workers)

    def _apply(self, w, msg):
        kind = msg[0]
        if kind == "ack":
            w.pending -= 1
            w.acked = True
            return
        if kind == "ckpt":
            _, seq, done, (head, changed, removed), appended = msg
            for conn, records, events, delta in done:
                self._done(w, conn, records, events, delta)
            for name, rows in appended.items():
                w.rows.setdefault(name, []).extend(rows)
            if removed is None:                # all of them (a new worker process)
                w.entries = dict(changed)
            else:
                for c in removed:
                    del w.entries[c]
                w.entries.update(changed)
            w.head, w.checkpoint_seq = head, seq
            w.log = [b for b in w.log if b[0] > seq]
            if w.forgotten:
                for s, c in w.forgotten:
                    if s <= seq:
                        w.drop_safe.add(c)
                        self._release_dropped(w, c)
                w.forgotten = [(s, c) for s, c in w.forgotten if s > seq]
            w.checkpoints += 1
            w.checkpoint_bytes += len(head) + sum(len(t) for t in changed.values())
            self._save(w, appended)
        elif kind == "bye":
            w.bye = msg
            self.errors[w.name] = msg[1]
            table = w.rows.get(msg[3], []) if isinstance(msg[3], _Rows) else msg[3]
            if table:
                self.tables[w.name] = table
            for k, v in msg[2].items():
                self.counters[w.index][k] = self.counters[w.index].get(k, 0) + v
        elif kind in ("exported", "adopted"):
            self._apply(w, msg[-1])            # the checkpoint that came with it
        elif kind == "fatal":
            raise ModuleError(msg[1])

    def _save(self, w, appended=None):
        """The checkpoint in the store too (state/NAME.BIT.json; the rows of append-only lists
        added to state/NAME.BIT.LIST.jsonl): what a module was doing is there to read after
        the run, and for a worker on another host."""
        if not self.save_state:
            return                      # (a restart uses the copy in memory)
        d = os.path.join(self.store_dir, "state")
        try:
            os.makedirs(d, exist_ok=True)
            for name, items in (appended or {}).items():
                with open(os.path.join(d, f"{w.name}.{self.first + w.index}.{name}.jsonl"), "a") as f:
                    f.writelines(_row_json(x) + "\n" for x in items)
            tmp = os.path.join(d, f".{w.name}.{self.first + w.index}.tmp")
            with open(tmp, "w") as f:
                f.write(json.dumps({"module": w.name, "bit": self.first + w.index, "batch": w.checkpoint_seq}) + "\n")
                f.write(w.checkpoint())
            os.replace(tmp, os.path.join(d, f"{w.name}.{self.first + w.index}.json"))
        except OSError:
            pass                        # the copy in memory is what a restart uses

    def _done(self, w, conn, records, events, delta):
        if conn in w.done or conn in w.dropped:
            return
        self.registry.commit(self.first + w.index, conn, records)
        self._finished_by(w, conn)
        for line in events:
            if self.events is not None:
                self.events.write(line)
            self.event_count += 1
        for k, v in delta.items():
            self.counters[w.index][k] = self.counters[w.index].get(k, 0) + v

    def _finished_by(self, w, conn):
        w.done.add(conn)
        if all(conn in x.done for x in self.workers):
            self.finished_now.append(conn)
            # finished by every module: forget it (memory stays bounded by open connections)
            self.open_conns.discard(conn)
            self.closed_conns.discard(conn)
            for x in self.workers:
                x.done.discard(conn)

    def _drain(self, w, block=False):
        while True:
            try:
                if not block and not w.conn.poll():
                    return True
                msg = w.conn.recv()
            except (EOFError, OSError):
                return False
            self._apply(w, msg)
            if block and msg[0] in ("bye", "fatal"):
                return True

    def _drain_one(self, w):
        """Wait for one message of the worker and apply it; False if it died."""
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            return False
        self._apply(w, msg)
        return True

    def _restart(self, w):
        # what it sent before it died counts: a checkpoint still in the pipe is the one to
        # restart from (noticed at a send, the pipe may not have been read yet)
        self._drain(w)
        w.proc.join(timeout=1)
        w.restarts += 1
        at = self.where[w.index]            # (0: in no hook)
        conn, hook = at >> 3, HOOK_NAMES[at & 7]
        crashed = at and conn in w.died_in
        # the bound is on deaths in a row that got it nowhere: a long run whose module dies now
        # and then (in a connection it then gives up, or after checkpoints) goes on
        if crashed or w.checkpoint_seq != w.seq_restarted:
            w.fruitless = 0
        w.fruitless += 1
        w.seq_restarted = w.checkpoint_seq
        if w.fruitless > MAX_FRUITLESS:
            raise ModuleError(f"module {w.name}: worker died {w.fruitless} times in a row without getting further; "
                              "giving up")
        shard = "" if SHARD is None else f" of shard {SHARD}"
        place = f" in {hook}() of connection {conn}{shard}{self._key(conn)}" if at else ""
        if crashed:
            # it died at the same place after a restart had taken it up there again: a crash on
            # this connection (a C extension's), not one a restart gets past
            self._crashed(w, conn)
            n = self.counters[w.index]["crashed_connections"]
            if n <= 10:
                later = " (later ones are counted)" if n == 10 else ""
                sys.stderr.write(f"flowsift: module {w.name}: worker died ({w.proc.exitcode}) again{place}: the "
                                 f"module gives up on that connection (crashed_connections{later}); restarting it\n")
        elif w.restarts in (1, 10, 100) or w.fruitless in (10, 100):
            # (one line, then at 10: a worker that dies at every start would fill the terminal)
            again = "" if w.restarts == 1 else f" ({w.restarts} times)"
            sys.stderr.write(f"flowsift: module {w.name}: worker died ({w.proc.exitcode}){again}{place}; "
                             "restarting it\n")
        if at:
            w.died_in.add(conn)
        w.start()
        # its last checkpoint, then every batch it was sent after it, in the same order: it
        # ends where it was, with the same state, and reports what it had not reported
        w.send(("restore", w.checkpoint(), w.rows, w.log))

    def _key(self, conn):
        # " (client -> server)" of a connection, as its record file says, or "" if it cannot
        from flowsift.streams import RecordFile
        from flowsift.streams.format import endpoint
        try:
            with RecordFile(self.store.path(conn)) as rf:
                h = rf.header
                return (f" ({endpoint(h['client_addr'], h['client_port'], h['ipver'])} -> "
                        f"{endpoint(h['server_addr'], h['server_port'], h['ipver'])})")
        except (OSError, FlowsiftError):
            return ""

    def _crashed(self, w, conn):
        """The module gives up on `conn`, which its worker died in twice: it is never shown the
        connection again (the restart takes up the last checkpoint without it, and the batches
        after it without it), which counts as done for it, as one given up for a backlog is."""
        w.dropped.add(conn)
        w.drop_safe.add(conn)            # (its worker, dead, holds it no more)
        w.entries.pop(conn, None)
        w.log = [(seq, [c for c in t if c != conn], [c for c in k if c != conn], lim, forget)
                 for seq, t, k, lim, forget in w.log]
        self.counters[w.index]["crashed_connections"] = self.counters[w.index].get("crashed_connections", 0) + 1
        if conn in self.closed_conns:
            w.drop_closed.add(conn)
            self._release_dropped(w, conn)
            self._finished_by(w, conn)
        else:
            w.done.add(conn)             # (finished by all only once it ended: process)

    def snapshot(self, touched, closed):
        """How far each connection the workers will read was published with this batch (taken
        at the publish): they read no further."""
        if self.following:
            conns = changed_connections(touched, closed)
        elif self.opening:
            # (connections opening now too: on_open reads them as far as this batch goes)
            conns = [c for c in touched if c not in self.open_conns] + list(closed)
        else:
            conns = closed
        return dict(zip(conns, self.store.published(conns)))

    def process(self, touched, closed, limits=None, published=None):
        """`limits`: how far an earlier stage handed over some of `touched` (default: as far as
        published). `published`: the batch's snapshot(), when the gateway tells of it after it
        went on (default: taken now)."""
        self.seq += 1
        new = [c for c in touched if c not in self.open_conns] if self.opening else ()
        self.open_conns.update(touched)
        self.open_conns.update(closed)
        self.closed_conns.update(closed)
        if published is None:
            published = self.snapshot(touched, closed)
        if limits:
            published.update({c: v for c, v in limits.items() if c not in self.closed_conns})
        limits = published
        ended = None
        for w in self.workers:
            while not self._drain(w):
                self._restart(w)
            if self.max_backlog is not None and w.acked and w.pending > self.max_backlog:
                self._drop(w, touched, closed)
                continue
            # back-pressure: no more than INFLIGHT batches in the pipe, or both ends could block
            # sending to each other (batches one way, acknowledgements the other)
            if w.pending >= INFLIGHT:
                self._hold(w)
            t = touched if not w.passive else new if w.opens else ()
            if w.dropped:
                t = [c for c in t if c not in w.dropped]
            k = [c for c in closed if c not in w.dropped] if w.dropped else closed
            if w.passive and self.following:
                # it reads ended connections only, as far as they were published, and opens new
                # ones (on_open) where this batch leaves them
                ended = ended or {c: limits[c] for c in closed}
                lim = {**ended, **{c: limits[c] for c in t if c in limits}} if t else ended
            else:
                lim = limits
            for conn in closed:
                if conn in w.dropped:
                    w.drop_closed.add(conn)
                    self._release_dropped(w, conn)
                    if conn in w.done:
                        # (no report of this worker will say it finished it: the others may have)
                        self._finished_by(w, conn)
            forget, w.forget = w.forget, []
            w.forgotten.extend((self.seq, c) for c in forget)
            w.log.append((self.seq, t, k, lim, forget))
            # (sent again after a restart as it left it: without a connection given up then)
            while not w.send(("batch", *w.log[-1])):
                self._restart(w)
            w.pending += 1

    def _hold(self, w):
        """Wait until the worker is less than INFLIGHT batches behind; while a live source is
        read, count the wait, its time and the frames the source lost meanwhile."""
        lost = self.source_lost() if self.source_lost is not None else None
        began = time.monotonic()
        while w.pending >= INFLIGHT:
            if not self._drain_one(w):
                self._restart(w)
        if lost is not None:
            w.held[0] += 1
            w.held[1] += time.monotonic() - began
            w.held[2] += (self.source_lost() or lost) - lost

    def held_back(self):
        """{module: {"waits", "seconds", "lost"}} of the modules the gateway waited for while a
        live source was read."""
        return {w.name: {"waits": w.held[0], "seconds": round(w.held[1], 3), "lost": w.held[2]}
                for w in self.workers if w.held[0]}

    def idle(self):
        """The source is quiet: ask each worker, once, for what it finished (it is sent with
        checkpoints, every few batches) and take in what they sent: their events go out now,
        not with more traffic."""
        for w in self.workers:
            while not self._drain(w):
                self._restart(w)
            if w.pending == 0 and w.quiet_at != self.seq:
                w.quiet_at = self.seq
                while not w.send(("quiet", self.seq)):
                    self._restart(w)
        if self.events is not None:
            self.events.flush()

    def wait_all(self):
        """Block until every worker has processed every batch sent (a writing stage after this
        one may then read those batches: this stage is done with them)."""
        for w in self.workers:
            while w.pending > 0:
                if not self._drain_one(w):
                    self._restart(w)

    def _ask(self, w, msg, reply):
        """Send `msg` and wait for its `reply` (applying what comes before it); a worker that
        dies on the way is restarted from its checkpoint and asked again."""
        while True:
            if w.send(msg):
                while True:
                    try:
                        got = w.conn.recv()
                    except (EOFError, OSError):
                        break
                    self._apply(w, got)
                    if got[0] == reply:
                        return got
            self._restart(w)

    def hand_over(self, conns):
        """Open connections moving to another shard: {worker: {conn: its entry}}; the workers
        forget them (no on_close) and checkpoint without them."""
        self.wait_all()
        out = {}
        moving = set(conns)
        for w in self.workers:
            out[w.index] = self._ask(w, ("export", self.seq, list(conns)), "exported")[1]
            for c in w.dropped & moving:
                # given up for this module (--max-backlog): it stays given up in its new shard
                out[w.index][c] = _DROPPED
            w.dropped -= moving
            w.done -= moving
            w.drop_safe -= moving
            w.drop_closed -= moving
            w.forget = [c for c in w.forget if c not in moving]
            w.forgotten = [(s, c) for s, c in w.forgotten if c not in moving]
        self.open_conns.difference_update(conns)
        self.closed_conns.difference_update(conns)
        return out

    def take_over(self, entries, conns):
        """Connections another shard handed over, under their ids here: each worker takes its
        module's entries and checkpoints with them."""
        for w in self.workers:
            mine = dict(entries.get(w.index, {}))
            for c in [c for c, e in mine.items() if e == _DROPPED]:
                del mine[c]
                w.dropped.add(c)
                w.done.add(c)
                w.drop_safe.add(c)           # this worker never had it
            self._ask(w, ("adopt", self.seq, mine), "adopted")
        self.open_conns.update(conns)

    def _drop(self, w, touched, closed):
        """The module is more than max_backlog batches behind: it loses these connections (they
        count as done for it, so the store is not held back), and the loss is counted."""
        w.dropped_batches += 1
        for conn in set(touched) | set(closed):
            if conn in w.dropped or conn in w.done:
                continue
            w.dropped.add(conn)
            w.done.add(conn)
            w.forget.append(conn)
            self.counters[w.index]["dropped_connections"] = self.counters[w.index].get("dropped_connections", 0) + 1
        for conn in closed:
            if conn in w.dropped:
                w.drop_closed.add(conn)
                self._release_dropped(w, conn)

    def _release_dropped(self, w, conn):
        # a dropped connection that ended and that the worker no longer holds: record it as
        # done by this module, so that its space can be given back
        if conn in w.drop_closed and conn in w.drop_safe:
            w.drop_closed.discard(conn)
            w.drop_safe.discard(conn)
            self.registry.commit(self.first + w.index, conn, 1 << 62)

    def finish(self):
        for w in self.workers:
            while True:
                if w.send(("finish", self.seq, w.forget)) and self._drain(w, block=True) and w.bye is not None:
                    break
                self._restart(w)
            w.proc.join(timeout=5)
            for c in w.forget:               # forgotten with the finish: the worker is gone now
                w.drop_safe.add(c)
                self._release_dropped(w, c)
            w.forget = []

    def counters_summary(self):
        return {name: dict(self.counters[i], errors=self.errors.get(name, 0), restarts=self.workers[i].restarts,
                           **({"dropped_batches": self.workers[i].dropped_batches} if self.workers[i].dropped_batches else {}))
                for i, name in enumerate(self.names)}

    def state_snapshots(self):
        """{module name: its declared state} as of each worker's last checkpoint (the final one
        after finish)."""
        from flowsift.modules.state import declared
        out = {}
        for m, w in zip(self.modules, self.workers):
            if declared(type(m)) and w.head is not None:
                st = json.loads(json.loads(w.head)["state"])
                for name, v in st.items():
                    if "rows" in v:
                        st[name] = {"value": w.rows.get(name, [])}
                out[w.name] = st
        return out

    def checkpoint_stats(self):
        return {w.name: {"checkpoints": w.checkpoints, "bytes": w.checkpoint_bytes} for w in self.workers}
