"""A gateway and its modules as separate processes, meeting in a Redis registry.

`serve` runs the gateway alone: it writes the store, announces connections and their latest
records once per batch, records the progress modules report, and at the end of the source waits
for the modules it knows to finish. `attach` runs one read-only module as its own process: it
may start before or after the gateway, replays the registry's batch log (woken by keyspace
notifications) so that it sees the batches one by one as a worker does, and after a crash (kill -9)
resumes exactly: what it finished, counted and wrote is committed in one transaction, and its
event file is cut back to what was committed.
"""
import json
import os
import shutil
import stat
import sys
import time

from flowsift.bounds import written
from flowsift.errors import FlowsiftError, Terminated, UsageError, say, start_deaf, stops_held, stops_raised
from flowsift.registry import RegistryError, open_registry

EVENTS_KEY = "_events"          # committed with the counters: events written, across restarts
LOG_CHUNK = 64                  # batch log entries read at a time


def _redis(url, run=None, role="gateway"):
    if not url or url == "embedded":
        raise UsageError("--registry needs a Redis URL (redis://[user:password@]host:port/db): "
                         "processes find each other there")
    if run is not None and not run.strip():
        raise UsageError(f"run name {run!r}: a run is named by at least one character that is not a space")
    try:
        return open_registry(url, run, role=role)
    except RegistryError as e:
        raise FlowsiftError(str(e)) from None


def expected_names(text, on_status=say):
    """The module names of `--expect` (comma-separated), checked: a module attaches by its name,
    so a name no module can have, or one twice, would be waited for for ever. A name flowsift
    does not know (not built in, not installed) may be a module file's: said once, not refused,
    unless it looks like a known one mistyped. Returns (names, those not known)."""
    import difflib
    from flowsift.modules.loader import BUILTINS, plugins
    names = [n.strip() for n in text.split(",") if n.strip()] if text else []
    for n in names:
        if not n.isidentifier():
            raise UsageError(f"--expect {n!r}: modules are expected by name, as they register (http, or the `name` "
                             f"a module file's class declares), not by path or with options")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--expect names module {twice[0]} twice: one process of a module attaches to a run")
    known = set(BUILTINS) | set(plugins())
    unknown = [n for n in names if n not in known]
    for n in unknown:
        close = difflib.get_close_matches(n, sorted(known), n=1, cutoff=0.75)
        if close:
            raise UsageError(f"--expect {n}: no module is named {n}; did you mean {close[0]}? (flowsift modules "
                             f"lists them)")
        if on_status is not None:
            on_status(f"--expect {n}: not a module flowsift knows (flowsift modules): the gateway waits for a "
                      f"module that registers as {n}, such as a module file whose class is named so")
    return names, unknown


def serve(source, url, run=None, store=None, keep=False, expect=(), filter_expression=None, policy="first",
          on_progress=None, on_status=say, tick=None, on_started=None, reassembly=None, unknown=(), on_stopped=None,
          vlan_key=False, unacked_files=None, checksums="ignore"):
    """Run the gateway over `source` with the registry at `url`; returns its summary. `unknown`:
    expected names that are no module flowsift knows (said again while waiting for them).
    `on_stopped()` is called when the run is cut short (Ctrl-C, an error), before its keys go."""
    from flowsift.gateway import STORE_TOTALS, Gateway, open_source
    cap = open_source(source)       # a file that cannot be read: said before the registry and the store
    reg = _redis(url, run)
    with stops_held():              # the run's keys and a default store go however it ends
        try:
            reg.check_run()             # a live run is refused before the store is made
            g = Gateway(store, keep=keep, policy=policy, filter_expression=filter_expression, registry=reg,
                        readers_here=False, vlan_key=vlan_key, unacked_files=unacked_files, checksums=checksums,
                        **(reassembly or {}))
        except RegistryError as e:
            reg.close()
            raise FlowsiftError(str(e)) from None
        except BaseException:
            reg.close()
            raise
        started = False
        removed = store is None and not keep       # the default store goes with the run

        def complete(summary):
            # the modules finish after the source: what their reports gave back counts too
            summary.update({k: v for k, v in g.store.counters().items() if k in STORE_TOTALS})
            summary["run"] = reg.run
            summary["registry"] = reg.shown
            summary["module_progress"] = dict(g.released, **{g.module_bits.get(b, {}).get("name", str(b)): len(d)
                                                             for b, d in g.done_by.items()})
            summary["registry_outages"] = reg.outages
            summary["registry_rebuilt"] = reg.rebuilt
            if removed:
                summary["store"] = None
            return summary

        def waiting(lines):
            for x in lines:
                note = ", not a module flowsift knows" if x.split(" (bit")[0] in unknown else ""
                on_status("waiting for " + x + note)

        summary = None
        try:
            with stops_raised():
                try:
                    try:
                        reg.start_run({"store": g.store_dir, "source": str(source)})
                    except RegistryError:
                        raise           # refused (a live run of that name is another's) or unreachable
                    except BaseException:
                        started = True  # cut short while it wrote the run's keys
                        raise
                    started = True
                    g.expect(expect)
                    if on_started is not None:
                        on_started(reg.run)
                    summary = g.run_capture(cap, on_progress=on_progress)
                    reg.set_state("failed" if summary["error"] else "complete", connections=len(g.announced),
                                  batches=g.batches)
                    if g.module_bits and on_status is not None:
                        names = ", ".join(sorted({i.get("name", "?") for i in g.module_bits.values()}))
                        on_status(f"run {reg.run}: source done ({len(g.announced):,} connections); waiting for {names}")
                    try:
                        g.wait_for_modules(on_status=waiting if on_status else None, tick=tick)
                    except (KeyboardInterrupt, Terminated) as e:
                        # the source was read whole: a stop ends the wait for modules, and the
                        # summary of what was done still goes out (--json), saying for whom the
                        # wait was and what ended it
                        try:
                            e.summary = complete(dict(summary, wait_interrupted={
                                "by": "SIGINT" if isinstance(e, KeyboardInterrupt) else "SIGTERM",
                                "modules": g.waited_for()}))
                        except Exception:
                            pass        # (a summary that cannot be made must not hide the stop)
                        raise
                except (RegistryError, FlowsiftError) as e:
                    # the summary of what was done still goes out (--json), its `error` saying why
                    error = e if isinstance(e, FlowsiftError) else FlowsiftError(str(e))
                    if error is not e:
                        reg.retry_for = 0   # the keys' removal on the way out: one try, not another wait
                    partial = summary if summary is not None else getattr(e, "summary", None)
                    if partial is not None:
                        try:
                            error.summary = complete(dict(partial, error=str(e)))
                        except Exception:
                            pass        # (a summary that cannot be made must not hide the error)
                    if error is e:
                        raise
                    raise error from None
            if summary["error"] and not removed and g.discard_unused():
                summary["store"] = None     # (failed before its first packet: nothing was kept)
            return complete(summary)
        except BaseException:
            if on_stopped is not None:
                on_stopped()
            raise
        finally:
            try:
                if started:
                    reg.end_run()       # a clean exit leaves no key behind
            except RegistryError:
                pass
            reg.close()
            if removed:
                shutil.rmtree(g.store_dir, ignore_errors=True)
            elif summary is None:
                # cut short before the source was read whole: a store of nothing goes (a live
                # source that would not open, the registry lost as the run started)
                g.discard_unused()


def cleanup(url, run):
    """Remove the keys of a run whose gateway is gone. Returns how many keys went."""
    reg = _redis(url, run)
    try:
        if reg.gateway_alive(run):
            raise FlowsiftError(f"run {run} is live (its gateway is sending heartbeats): stop its gateway instead")
        if run not in reg.all_runs() and not reg.has_keys(run):
            raise FlowsiftError(f"no run {run} in {reg.shown}: no key of it is left to remove (a run that "
                                f"ended cleanly leaves none)")
        return reg.remove_run(run)
    except RegistryError as e:
        raise FlowsiftError(str(e)) from None
    finally:
        reg.close()


def _find_run(reg, run, wait, on_status):
    """The run to attach to: `run`, or the only live one; waits for it to start."""
    deadline = None if wait is None else time.monotonic() + wait
    said = False
    while True:
        live = reg.live_runs()
        if run is not None and run in live:
            return run, live[run]
        if run is None and len(live) == 1:
            return next(iter(live.items()))
        if run is None and len(live) > 1:
            listed = ", ".join(f"{r} ({m.get('source')})" for r, m in sorted(live.items()))
            raise UsageError(f"several runs are live in {reg.shown}: {listed}; choose one with --run")
        if deadline is not None and time.monotonic() > deadline:
            raise FlowsiftError(f"no live run{' ' + run if run else ''} in {reg.shown} after {wait:g} s")
        if not said and on_status is not None:
            on_status(f"waiting for {'run ' + run if run else 'a gateway'} in {reg.shown}")
            said = True
        time.sleep(0.2)


class _Output:
    """Where an attached module's event lines go. A regular file is written before its
    connections are committed, with its length in the same commit, and cut back to that length
    after a crash; standard output, a pipe or a device (/dev/null) gets the lines after the
    commit (it cannot be cut back)."""

    def __init__(self, path):
        # opened before the module waits for its run: a path it cannot write is said at once
        self.fd = None              # None: standard output
        self.regular = False
        self.held = []
        self.path = path
        self.pos = None
        if path is None or path == "-":
            return
        if path == "":
            raise UsageError("--events '': an empty path names nothing")
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        except OSError as e:
            raise UsageError(f"{path}: cannot write events: {e.strerror}") from None

    def start(self, committed):
        """Cut the file back to what this module's last commit says it held."""
        if not self.regular:
            return
        path = self.path
        size = os.fstat(self.fd).st_size
        if committed and size < committed:
            raise FlowsiftError(f"{path} holds {size} bytes but {committed} bytes of this module's events were "
                                f"committed: restart it with the --events file it wrote before")
        os.ftruncate(self.fd, committed or 0)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.pos = committed or 0

    def write(self, data):
        if not data:
            return
        if not self.regular:
            self.held.append(data)
            return
        self._put(data)
        self.pos += len(data)

    def _put(self, data):
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except BrokenPipeError:
            raise                   # (a reader that went away: not an error, cli.main)
        except OSError as e:        # a full disk: said in one line, as for any output
            raise FlowsiftError(f"{self.path}: cannot write events: {e.strerror}") from None

    def committed(self):
        if self.held:
            data, self.held = b"".join(self.held), []
            if self.fd is None:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            else:
                self._put(data)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def attach(spec, url, run=None, events=None, strict=False, wait=None, on_status=say, name=None, poll=0.5):
    """Run one read-only module against run `run` (default: the only live one) of the registry
    at `url` until the run is complete and the module has finished every connection. Returns
    a summary like `flowsift chain`'s."""
    from flowsift.modules.loader import parse_chain
    from flowsift.io._connset import ConnSet
    from flowsift.modules.runner import InlineChain
    from flowsift.streams.reader import RecordFile, StoreError

    chain = parse_chain(spec)
    if len(chain) != 1:
        raise UsageError("flowsift module runs one module; for several, start one process each "
                         "(or use flowsift chain ... --registry URL)")
    cls, config = chain[0]
    if not cls.read_only():
        raise UsageError(f"module {cls.name} writes ({', '.join(sorted(cls.writes))}): writing modules run in the "
                         f"gateway's process (flowsift chain); attached modules are read-only")
    if wait is not None and not wait >= 0:
        raise UsageError(f"--wait {written(wait)}: seconds, 0 or more")
    # its options (checked when it is made) and its --events file, before any waiting for a run
    cls(config)
    out = _Output(events)
    name = name or cls.name
    reg = _redis(url, role="module")
    summarize = None
    try:
        reg.ensure_notifications()          # what wakes this module: checked before any waiting
        run, info = _find_run(reg, run, wait, on_status)
        from flowsift.paths import refuse_overwrite
        refuse_overwrite([(f"run {run}'s input capture", info.get("source"))], [("--events", events)])
        from flowsift.registry.redis import run_prefix
        reg.run, reg.P = run, run_prefix(run)
        store_dir = info.get("store")
        if not store_dir or not os.path.isdir(store_dir):
            raise FlowsiftError(f"run {run}: its store {store_dir} is not on this machine")
        bit, resumed = reg.register(name)
        # The gateway gives back the files every module it counts has finished: nothing is read
        # before it counts this one too (at its next batch; every 0.1 s once the source is done).
        give_up = None
        while not reg.taken(bit):
            if _gone_here(info):
                raise FlowsiftError(f"run {run} ended (its gateway is gone) before module {name} could attach")
            if reg.gateway_alive():
                give_up = None
            elif not reg.run_meta():
                # the run ended while this module waited for its bit: its --events file is not touched
                reg.release(bit)
                raise FlowsiftError(f"run {run} ended before module {name} could attach")
            elif give_up is None:
                give_up = time.monotonic() + HEARTBEAT_GRACE
            elif time.monotonic() > give_up:
                raise FlowsiftError(f"run {run} ended (its gateway is gone) before module {name} could attach")
            time.sleep(0.05)
        done, counters, outpos, ckpt = reg.module_state(bit) if resumed else ({}, {}, None, None)
        resumed = bool(done or outpos or ckpt)       # a bit the gateway held for it is a fresh start
        out.start(outpos)
        state = _Attached(reg, bit, name, done, counters, out)
        if resumed and (done or outpos):
            on_status(f"module {name} resumes run {run} (bit {bit}): {len(done):,} connections were finished")

        def path_of(c):
            return os.path.join(store_dir, f"c{c:08d}.rec")

        runner = InlineChain([(cls, config)], None, strict=strict, path_of=path_of, on_done=state.on_done,
                             hold_events=True)
        module = runner.modules[0]

        def summarize(error=None):
            tables = runner.summary_tables()     # (first: a summary() that fails counts in errors)
            summary = {"run": run, "module": name, "bit": bit, "resumed": resumed, "connections": len(runner.finished),
                       "events": state.events,
                       "modules": {name: dict(module.counters, errors=runner.errors.get(module.name, 0))},
                       "tables": tables, "registry_outages": reg.outages,
                       "batch_log_gaps": state.log_gaps, "registry_rebuilt": reg.rebuilt, "error": error}
            if runner.state_snapshots():
                summary["state"] = runner.state_snapshots()
            return summary
        if ckpt:
            # its declared state, counters and open connections as of its last commit
            runner.restore_checkpoint(ckpt)
        else:
            module.counters.update({k: v for k, v in counters.items() if k != EVENTS_KEY})
        runner.finished = ConnSet(done)
        state.runner, state.ckpt, state.seq = runner, ckpt, (runner.seq if ckpt else None)
        reg.on_reconnect = state.restore
        reg.subscribe()

        def fresh(conn):
            # reclaimed before this module registered: it cannot be read whole; say so, not glue
            try:
                with RecordFile(path_of(conn)) as rf:
                    h = rf.header
                    return h["reclaimed0"] <= 0 and h["reclaimed1"] <= 0, h["records"]
            except FlowsiftError:
                return None, 0

        def whole_or_missed(conns):
            # a connection first met here was reclaimed or retired before this module registered
            # if its file is not whole: it cannot be read whole; say so, not glue
            for conn in conns:
                if conn in runner.finished or conn in runner.conns:
                    continue
                whole, records = fresh(conn)
                if not whole:
                    runner.finished.add(conn)
                    state.missed(conn, records)

        def follow(conns):
            # entries of the batch log are missing: read these connections as far as the files go
            last = time.monotonic()
            for conn in conns:
                if conn in runner.finished:
                    continue
                if time.monotonic() - last > 0.5:
                    # a long catch-up still commits and beats: a crash loses little, and nobody
                    # takes this module for dead
                    state.commit_and_beat()
                    last = time.monotonic()
                whole_or_missed([conn])
                if conn not in runner.finished:
                    runner.follow([conn])

        def replay_log():
            # the batch log, entry after entry, each connection read only as far as it was
            # published with its batch: what the module sees does not depend on when it runs
            while True:
                entries, lost = reg.batches_after(runner.seq, LOG_CHUNK)
                if lost:
                    state.log_gaps += 1
                    follow(sorted(reg.connections()))
                    if not entries:
                        meta = reg.run_meta()
                        runner.seq = max(runner.seq, int(meta.get("batches") or 0))
                        return
                for seq, touched, closed, limits in entries:
                    whole_or_missed(touched)
                    whole_or_missed(closed)
                    runner.process(touched, closed, limits)
                    runner.seq = seq
                    state.commit_and_beat()
                if len(entries) < LOG_CHUNK:
                    return

        last_check = 0.0
        while True:
            replay_log()
            if not state.commit_and_beat():
                continue                        # the server had lost our keys: look again
            now = time.monotonic()
            meta = reg.run_meta()
            if meta.get("state") in ("complete", "failed"):
                if runner.seq >= int(meta.get("batches") or 0):
                    follow(sorted(reg.connections()))   # none left, unless the log lost some
                    runner.finish()
                    state.commit()
                    break
                continue
            if _gone_here(info):
                # killed on this host (kill -9, before it could mark the run ended): known at once
                raise FlowsiftError(f"run {run} ended (its gateway is gone) before module {name} finished: "
                                    f"{len(runner.finished):,} connections done")
            if now - last_check > 1:
                last_check = now
                # a gateway killed outright leaves its run "running": its heartbeat tells
                give_up = time.monotonic() + HEARTBEAT_GRACE
                while not reg.gateway_alive() and not _ended(reg.run_meta()):
                    if time.monotonic() >= give_up:
                        raise FlowsiftError(f"run {run} ended (its gateway is gone) before module {name} finished: "
                                            f"{len(runner.finished):,} connections done")
                    time.sleep(0.1)
            if reg.wait(poll) is None:          # an outage: our keys may be gone with the server
                state.restore()
        summary = summarize()
        reg.release(bit)
        out.close()
        return summary
    except (RegistryError, FlowsiftError) as failed:
        caught = failed
        # once attached, the summary of what was done goes out with the error (--json)
        from flowsift.registry.redis import TakenOver
        if summarize is not None and isinstance(caught, StoreError):
            # held up past its heartbeat (stopped, swapped out) in the middle of reading: a
            # record file retired meanwhile is the run having gone on without it
            caught = state.moved_on() or caught
        if isinstance(caught, TakenOver):
            h = caught.holder
            error = FlowsiftError(f"run {run}: module {name} was taken over by another process of it (pid "
                                  f"{h.get('pid')} on {h.get('host')}) while this one was silent "
                                  f"{caught.silent:.0f} s, past its heartbeat: this one stops (the other writes "
                                  f"its events now)")
        else:
            error = caught if isinstance(caught, FlowsiftError) else FlowsiftError(str(caught))
        if summarize is not None:
            try:
                error.summary = summarize(str(error))
            except Exception:
                pass            # (a summary that cannot be made must not hide the error)
        if error is failed:
            raise
        raise error from None
    finally:
        out.close()
        reg.close()


HEARTBEAT_GRACE = 6.0           # seconds a gateway may be silent (a registry restart) before it is taken for gone


def _ended(meta):
    return meta.get("state") in ("complete", "failed")


def _gone_here(info):
    """Is the run's gateway (`info`: its host and pid, as the registry has them) a process of
    this host that no longer exists? Checked at each wait: it costs no round trip."""
    from flowsift.registry.base import whoami
    from flowsift.registry.redis import _pid_alive
    return info.get("host") == whoami()["host"] and info.get("pid") is not None and not _pid_alive(info["pid"])


class _Attached:
    """An attached module's progress: finished connections wait here until committed."""

    def __init__(self, reg, bit, name, done, counters, out):
        self.reg, self.bit, self.name, self.out = reg, bit, name, out
        self.done = dict(done)              # committed
        self.counters = dict(counters)      # committed
        self.events = counters.get(EVENTS_KEY, 0)
        self.pending = []
        self.committed_pos = out.pos
        self.runner = None
        self.ckpt = None                    # the last checkpoint committed
        self.seq = None                     # the batch it was taken after
        from flowsift.modules.workers import checkpoint_every
        self.every = checkpoint_every()     # batches of the log between commits, as workers
        self.committed_at = 0.0
        self.log_gaps = 0                   # times entries of the batch log were missing

    def on_done(self, conn, records, events, counts):
        data = "".join(events).encode()
        if data and self.out.regular and not self.reg.still_held(self.bit):
            self.restore()              # (it stops if the run is over: the file may be another's now)
        self.out.write(data)
        if events:
            counts = dict(counts)
            counts[EVENTS_KEY] = counts.get(EVENTS_KEY, 0) + len(events)
        self.pending.append((conn, records, counts))

    def missed(self, conn, records):
        # in the module's counters too: its summary and checkpoint are taken from them
        self.runner.modules[0]._tally("missed_connections")
        self.pending.append((conn, records, {"missed_connections": 1}))

    def commit(self, soon=False):
        """Commit what it finished and its checkpoint. With `soon`, only when it is due: as many
        batches of the log since the last commit as workers checkpoint after, or half a second with something to commit
        (a checkpoint per batch would cost more than the batch)."""
        seq = self.runner.seq if self.runner is not None else None
        advanced = seq is not None and seq != self.seq
        if not self.pending and not advanced:
            return
        if soon and not (self.seq is None or seq - self.seq >= self.every
                         or time.monotonic() - self.committed_at > 0.5):
            return
        ckpt = self.runner.checkpoint() if self.runner is not None else None
        while not self.reg.commit_many(self.bit, self.pending, self.out.pos, ckpt, seq):
            self.restore()                      # the server lost our state: put it back, then commit
        self.ckpt, self.seq, self.committed_at = ckpt, seq, time.monotonic()
        for conn, records, counts in self.pending:
            self.done[conn] = records
            for k, v in counts.items():
                self.counters[k] = self.counters.get(k, 0) + v
        self.events = self.counters.get(EVENTS_KEY, 0)
        self.pending = []
        self.committed_pos = self.out.pos
        self.out.committed()

    def commit_and_beat(self):
        """Commit (when due), then beat; False when the beat found our keys gone (they are
        written again)."""
        self.commit(soon=True)
        if self.reg.heartbeat(self.bit):
            return True
        self.restore()
        return False

    def restore(self):
        """The server came back, maybe empty: this module's bit and committed progress again,
        once the gateway has put the run's own keys back. Keys removed by --cleanup (its gateway
        gone) do not come back: then the run is over, and writing ours again would leave keys
        of a run that no longer exists, for the next run of that name to trip on."""
        from flowsift.registry.redis import HEARTBEAT_TTL, TakenOver
        # held up (stopped, swapped out) past its heartbeat: another process of the module may
        # have taken its bit over meanwhile, and finished
        silent = time.monotonic() - self.reg.beat_ok
        self.reg.ensure_notifications()
        deadline = time.monotonic() + 3 * HEARTBEAT_TTL / 1000
        while not self.reg.run_meta():
            if time.monotonic() > deadline:
                if silent > HEARTBEAT_TTL / 1000:
                    raise self._gone_while_silent(silent)
                raise FlowsiftError(f"run {self.reg.run}: its keys are gone and its gateway did not put them back "
                                    f"(the run was cleaned up, or its gateway died): module {self.name} stops")
            time.sleep(0.1)
        holder = self._other_holder()
        if holder is not None:
            raise TakenOver(self.bit, holder, silent)
        self.reg.restore_module(self.bit, self.name, self.done, self.counters, self.committed_pos, self.ckpt)

    def _gone_while_silent(self, silent):
        from flowsift.registry.redis import HEARTBEAT_TTL
        return FlowsiftError(
            f"run {self.reg.run}: its keys are gone (the run ended or was cleaned up) and module "
            f"{self.name} had been silent {silent:.0f} s (held up, or cut off from the server), past its "
            f"{HEARTBEAT_TTL / 1000:g} s heartbeat: another process of it may have taken its bit over "
            f"and finished; this one stops")

    def _other_holder(self):
        # the process of this module that holds its bit, when it is not this one
        from flowsift.registry.base import whoami
        holder = self.reg.holder(self.bit)
        me = whoami()
        if holder is not None and not holder.get("reserved") and (holder.get("host"), holder.get("pid")) != \
                (me["host"], me["pid"]):
            return holder
        return None

    def moved_on(self):
        """After a failure: when this module had been silent past its heartbeat, the reason the
        run went on without it (its keys gone, its bit taken over) as the error to give, else None."""
        from flowsift.registry.redis import HEARTBEAT_TTL, TakenOver
        silent = time.monotonic() - self.reg.beat_ok
        if silent <= HEARTBEAT_TTL / 1000:
            return None
        try:
            if not self.reg.run_meta():
                return self._gone_while_silent(silent)
            holder = self._other_holder()
            return TakenOver(self.bit, holder, silent) if holder is not None else None
        except RegistryError:
            return None


def run_chain_remote(spec, source, url, events=None, store=None, keep=False, filter_expression=None, policy="first",
                     strict=False, on_progress=None, reassembly=None, vlan_key=False, unacked_files=None,
                     checksums="ignore"):
    """`flowsift chain ... --registry URL`: the gateway here, each module in its own
    `flowsift module` process attached through the registry (restarted if it dies)."""
    import subprocess
    import tempfile
    from flowsift.modules.loader import _split, parse_chain
    from flowsift.modules.runner import copy_events
    from flowsift.registry.base import new_run_id

    chain = parse_chain(spec)
    names = [cls.name for cls, _ in chain]
    for cls, _ in chain:
        if not cls.read_only():
            raise UsageError(f"module {cls.name} writes: with --registry every module runs as its own read-only "
                             f"process; run writing modules without --registry")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"module {twice[0]} appears twice: with --registry modules attach by name")
    parts = [p.strip() for p in _split(spec, ",")]
    run = new_run_id()
    procs, restarts = {}, {n: 0 for n in names}

    # the password goes to the module processes in their environment: a command line is
    # anyone's to read (ps)
    from flowsift.registry.redis import PASSWORD_ENV, split_password
    child_url, password = split_password(url)
    child_env = dict(os.environ, **{PASSWORD_ENV: password}) if password else None

    def launch(i):
        cmd = [sys.executable, "-m", "flowsift", "module", parts[i], "--registry", child_url, "--run", run,
               "--events", os.path.join(work, f"{i}.jsonl"), "--json", "--wait", "60"] + (["--strict"] if strict else [])
        # Ctrl-C or SIGTERM to the group is this process's: it ends the modules, and so keeps
        # what they wrote (one stopped on its own would be started again, and say so)
        with stops_held():
            procs[i] = start_deaf(cmd, stdout=open(os.path.join(work, f"{i}.json"), "w"), env=child_env)

    def tick():
        for i, p in list(procs.items()):
            rc = p.poll()
            if rc == 2:
                # the module stopped on purpose (--strict, bad state) and said why: the same
                # again at every restart
                raise FlowsiftError(f"module {names[i]}: its process stopped with an error (above)")
            if rc not in (None, 0):
                restarts[names[i]] += 1
                if restarts[names[i]] > 100:
                    raise FlowsiftError(f"module {names[i]}: its process died {restarts[names[i]]} times; giving up")
                say(f"module {names[i]}: its process died ({rc}); restarting it")
                launch(i)

    def stop_modules():
        # before the run's keys go: a module still starting would write its bit after
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    with stops_held():          # the modules end, their events are kept and the directory goes, however it ends
        work = tempfile.mkdtemp(prefix="flowsift-chain-")
        try:
            with stops_raised():
                summary = serve(source, url, run=run, store=store, keep=keep, expect=names,
                                filter_expression=filter_expression, policy=policy, on_progress=on_progress,
                                tick=tick, reassembly=reassembly, on_stopped=stop_modules, vlan_key=vlan_key,
                                unacked_files=unacked_files, checksums=checksums,
                                on_started=lambda r: [launch(i) for i in range(len(parts))])
                results = []
                for i, p in procs.items():
                    try:
                        rc = p.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                        raise FlowsiftError(f"module {names[i]}: its process had not ended 60 s after the run did; "
                                            f"stopped") from None
                    if rc != 0:
                        raise FlowsiftError(f"module {names[i]} ended with exit status {rc}")
                    with open(os.path.join(work, f"{i}.json")) as f:
                        results.append(json.load(f))
        except (KeyboardInterrupt, Terminated) as e:
            # (the gateway's summary of a wait cut short is not the chain's, which needs its modules')
            e.summary = None
            raise
        finally:
            stop_modules()
            # the events of the connections the modules finished, even of a run stopped (Ctrl-C)
            if events is not None:
                for i in sorted(procs):
                    copy_events(os.path.join(work, f"{i}.jsonl"), events)
            shutil.rmtree(work, ignore_errors=True)
    summary["modules"] = {}
    summary["tables"] = {}
    for r in results:
        m = dict(r["modules"][r["module"]], restarts=restarts[r["module"]])
        summary["modules"][r["module"]] = m
        summary["tables"].update(r["tables"])
    summary["events"] = sum(r["events"] for r in results)
    state = {k: v for r in results for k, v in r.get("state", {}).items()}
    if state:
        summary["state"] = state
    summary["chain"] = names
    from flowsift.modules.edits import take_up_read_only
    take_up_read_only(summary, chain)          # (no module writes here: only read-only ones run so)
    summary["mode"] = "registry"
    if store is None and not keep:
        summary["store"] = None
    return summary
