"""The gateway: the only writer of the record store.

source -> decode -> defragment -> flow table -> reassembly -> record files, over batches, with
no Python per packet: the engine calls the store (a compiled sink) for every segment, byte
range, gap, open and close; the gateway publishes the store's headers once per batch.
"""
import json
import os
import shutil
import tempfile
import time

# bytes a store manifest takes at least (JSON padded with spaces)
MANIFEST_ROOM = 4096

from flowsift.errors import CaptureFormatError, FlowsiftError, UsageError
from flowsift.io import BpfError
from flowsift.io.reasons import checksum_summary
from flowsift.io._connset import ConnSet
from flowsift.reassembly import POLICIES, Reassembler
from flowsift.registry.base import RegistryError
from flowsift.stats import compile_filter, first_packets, not_in_connections
from flowsift.streams._store import RecordStore
from flowsift.streams.reader import MANIFEST_FORMAT, MANIFEST_VERSION

# Default home of a run's store: memory-backed, gone at reboot; --store DIR keeps it on disk.
DEFAULT_STORE_PARENT = "/dev/shm"


# a quiet live source lets idle timeouts run on the host's clock only when its packets' times
# are that clock's (software timestamps), not a NIC's own
IDLE_CLOCK_SPAN = 3600 * 10**9


def changed_connections(touched, closed):
    """The connections a publish changed or ended, each once (one that ended without a packet
    in the batch is in `closed` only)."""
    conns = list(touched)
    if closed:
        seen = set(conns)
        conns += [c for c in closed if c not in seen]
    return conns


PF_REASSEMBLED = 1024


def _flows_onto(frames, batch):
    """Copy what reassembly learnt of each packet (its flow, direction, stream offset, flags)
    from the batch onto the snapshot of its frames as captured (taken before defragmentation
    rewrote entries): forwarding needs both. Returns {position: (payload length, transport
    header length)} of the datagrams rebuilt in the batch, whose snapshot rows are the
    fragments that completed them."""
    import numpy as np
    snap, post = frames.array, batch.array
    if not len(snap) or not len(post):
        return {}
    order = np.argsort(post["rec_pos"], kind="stable")
    keys = post["rec_pos"][order]
    at = np.minimum(np.searchsorted(keys, snap["rec_pos"]), len(keys) - 1)
    hit = keys[at] == snap["rec_pos"]
    src = order[at[hit]]
    for f in ("flow_id", "dir", "stream_off", "rflags"):
        snap[f][hit] = post[f][src]
    rebuilt = np.flatnonzero((post["flags"] & PF_REASSEMBLED) != 0)
    return {int(post["rec_pos"][i]): (int(post["payload_len"][i]), int(post["payload_off"][i]) - int(post["l4_off"][i]))
            for i in rebuilt.tolist()}


def open_source(source):
    """`source` opened now when it is a capture file, so that one that cannot be read (missing,
    empty, not a capture, a directory, a device) is said before the store is made: a run that
    never started leaves no store to refuse the next one. A live source is returned as it is,
    for run_capture to open: its ring takes frames from the moment it opens (those that wait
    while module workers start are lost), and workers forked after it would hold it open too.
    An open Capture is returned as it is."""
    from flowsift.io import open_capture
    from flowsift.io.capture import is_live
    if not isinstance(source, (str, os.PathLike)) or is_live(source):
        return source
    return open_capture(source)


def new_store_dir(parent=DEFAULT_STORE_PARENT, prefix="flowsift-store-"):
    parent = parent if os.path.isdir(parent) else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


# the store's counters a chain's summary gives (what went, and what stays for unacknowledged bytes)
STORE_TOTALS = ("retired", "reclaimed_bytes", "unacked_kept", "unacked_retired")


class Gateway:
    """Writes one record file per connection of a source into `store` (a directory)."""

    def __init__(self, store=None, keep=False, policy="first", filter_expression=None, max_open_files=None,
                 registry=None, shard=None, store_bytes=True, readers_here=True, vlan_key=False, unacked_files=None,
                 checksums="ignore", **engine_options):
        if policy not in POLICIES:
            raise UsageError(f"unknown policy {policy!r}: one of {', '.join(POLICIES)}")
        self.bpf = compile_filter(filter_expression)        # a bad filter leaves no store behind
        self.store_dir = str(store) if store is not None else new_store_dir()
        # what was there before this run: discard_unused removes only what the run made (the
        # whole directory when it made that; nothing of one it cannot list)
        self._made_dir = store is None or not os.path.lexists(self.store_dir)
        try:
            self._found = set() if self._made_dir else set(os.listdir(self.store_dir))
        except OSError:
            self._found = None          # (RecordStore says why)
        try:
            self.store = RecordStore(self.store_dir, keep, max_open_files, store_bytes, readers_here)
            if unacked_files is not None:
                self.store.unacked_files = unacked_files
            # vlan_key: connections told apart by VLAN ids too (record headers say them); checksums
            # "verify": packets with a wrong one stay out of connections (counted)
            self.reassembler = Reassembler(sink=self.store, policy=policy, vlan_key=vlan_key, checksums=checksums,
                                           **engine_options)
            self.store.attach(self.reassembler.engine)
        except BaseException:
            if self._made_dir:
                # (a setting the engine refuses, a stop as it starts: the store made for this
                # run holds nothing yet)
                shutil.rmtree(self.store_dir, ignore_errors=True)
            raise
        self.source = None
        if registry is None:
            from flowsift.registry import EmbeddedRegistry
            registry = EmbeddedRegistry()
        if registry.kind == "embedded":
            registry.bind(self.store)
        # a registry that announces may lose its keys and be rebuilt from the store, which then
        # tells of retired connections too (_restore)
        self.store.forget_retired = not registry.announces
        self.registry = registry
        # (index, count, split): only the flows of this shard; split "hash": this gateway keeps
        # them (flowsift.io.shard), "kernel": the source gives it only those (fan-out)
        self.shard = shard
        self.other_shards = 0         # packets left to the other shards
        self.table = None             # bucket -> shard (split "hash"; flowsift.io.shard)
        if shard is not None and shard[2] == "hash":
            from flowsift.io.shard import initial_table
            self.table = initial_table(shard[1])
        self.resharder = None         # moves flows between running shards (flowsift.shards.Resharder)
        self.announced = ConnSet()    # connections the registry knows
        self.batches = 0              # publishes so far: the batch log's sequence numbers
        self.late = None              # frame position -> (conn, dir) of late packets, when egress wants them
        self.module_bits = {}         # bit -> info of the modules registered through the registry
        self.done_by = {}             # bit -> connections that module finished (remote modules)
        self.released = {}            # name -> connections finished, of modules that left
        self.retired = ConnSet()      # connections whose file went (remote modules' reports)
        self.capture = None           # the live source while it is read (see source_lost)
        self.read_any = False         # a batch came from the source
        self.decoder = None           # the run's decoder (what it read)
        self._write_manifest(complete=False)

    def _write_manifest(self, complete, **extra):
        info = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "source": self.source,
                "keep": self.store.keep, "complete": complete, "written": time.time(), **extra}
        # padded to a page: a store that fills up can still have its manifest rewritten in place
        text = json.dumps(info).ljust(MANIFEST_ROOM)
        path = os.path.join(self.store_dir, "store.json")
        tmp = os.path.join(self.store_dir, ".store.json.tmp")
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if complete or len(text) > MANIFEST_ROOM or not os.path.exists(path):
                raise FlowsiftError(f"{self.store_dir}: cannot write the store manifest: {e.strerror}") from None
            try:
                with open(path, "r+") as f:     # the page it has: no new space needed
                    f.write(text)
            except OSError as e2:
                raise FlowsiftError(f"{self.store_dir}: cannot write the store manifest: {e2.strerror}") from None

    def _fail(self, error):
        self.store.abort()
        # files never put in place (no header yet: no reader sees them) go first, so that a
        # full store has room for the manifest that says what happened
        try:
            for name in os.listdir(self.store_dir):
                if name.endswith(".rec.new"):
                    os.unlink(os.path.join(self.store_dir, name))
        except OSError:
            pass
        try:
            self._write_manifest(complete=False, error=error)
        except FlowsiftError:
            pass                    # a full disk may refuse even the manifest

    def discard_unused(self):
        """Remove what this run made of the store when the run failed before a packet decoded
        (a live source that would not open, a filter its link type refuses, a registry that
        refused the run; a capture none of whose packets is of a link type flowsift decodes) and
        no record file is in it: left there, a store of nothing would refuse the run given again
        (a store is one run's). (A store that failed itself, full or unwritable, once packets
        decoded keeps its manifest saying why.) A directory that was there before keeps what it
        held and stays. Returns whether the store went."""
        from flowsift.streams.reader import record_name
        if self._found is None or (self.read_any and not self._nothing_decoded()):
            return False
        try:
            names = os.listdir(self.store_dir)
        except OSError:
            return False
        if any(record_name(n) is not None or (n.endswith(".new") and record_name(n[:-4]) is not None)
               for n in names):
            return False
        if self._made_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)
            return True
        for name in set(names) - self._found:
            path = os.path.join(self.store_dir, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                pass
        return True

    def _nothing_decoded(self):
        # every packet read was of a link type flowsift does not decode (check_decodable)
        if self.decoder is None or not self.decoder.packets:
            return False
        return sum(self.decoder.counters()["unsupported_linktypes"].values()) == self.decoder.packets

    def run_alone(self, source, on_progress=None):
        """run_capture for a caller that does nothing more with the store (the gateway alone):
        a run that fails before its first packet leaves no store (discard_unused), and its
        summary's `store` is null then."""
        try:
            summary = self.run_capture(source, on_progress=on_progress)
        except BaseException:
            self.discard_unused()
            raise
        if summary["error"] and self.discard_unused():
            summary["store"] = None
        return summary

    # --- the registry (announcing connections, taking module progress) ---
    def sync(self, touched=(), closed=(), batch=False):
        """Once per batch: tell a remote registry the new connections and the latest record of
        each changed one, and record the progress its modules reported. With `batch` (after a
        publish) the batch goes into the registry's batch log too: which connections changed
        and ended, and how far each was published, so that attached modules see the batches
        one by one, as workers do. Nothing to do for the embedded registry (its modules
        report straight into the store)."""
        reg = self.registry
        if not reg.announces:
            return
        conns = changed_connections(touched, closed)
        entry = None
        if batch:
            self.batches += 1
            entry = (self.batches, list(touched), list(closed),
                     [(c, *lim) for c, lim in zip(conns, self.store.published(conns))])
        new = []
        if conns:
            from flowsift.registry.base import identity_text
            for c in conns:
                if c not in self.announced:
                    self.announced.add(c)
                    new.append((c, identity_text(self.store.identity(c), self.store.path(c), self.store.vlan(c))))
        updates = [(c, *latest) for c, latest in zip(conns, self.store.latest(conns))] if conns else []
        progress, modules, intact = reg.sync(new, updates, entry, taken=list(self.module_bits))
        if not intact:
            self._restore()
        for bit, info in modules.items():
            if bit in self.module_bits and self.module_bits[bit].get("reserved") and not info.get("reserved"):
                self.module_bits[bit] = info                # an expected module attached
            if bit not in self.module_bits:
                self.module_bits[bit] = info
                self.done_by.setdefault(bit, ConnSet())
                self.store.register_module(bit)
        for bit, conn, records in progress:
            if bit in self.module_bits and conn in self.announced and conn not in self.done_by[bit]:
                # a report sent again (after a registry restart) is not recorded twice: the file
                # may be retired already
                self.done_by[bit].add(conn)
                if conn in self.retired:
                    # a module that registered after every module known then had finished it
                    # (it counts the connection as missed): no file is left to mark
                    continue
                if self.store.module_done(conn, bit, records)["retired"]:
                    self.retired.add(conn)
        for bit in [b for b in self.module_bits if b not in modules]:
            # released (a clean exit): it holds nothing back any more
            if intact:
                info = self.module_bits.pop(bit)
                self.released[info.get("name", str(bit))] = len(self.done_by.pop(bit, ()))
                self.store.release_module(bit)

    def _restore(self):
        """The registry lost this run's keys (a restarted server): rebuild them from the record
        files, which are the truth (a retired file, finished by every module, from the store's
        own state)."""
        from flowsift.registry.base import identity_text
        from flowsift.streams.format import header_vlan
        from flowsift.streams.reader import RecordFile
        rows = []
        for c in sorted(self.announced):
            path = self.store.path(c)
            try:
                rf = RecordFile(path)
            except FlowsiftError:
                records, latest, closed = self.store.latest([c])[0]
                rows.append((c, identity_text(self.store.identity(c), path, self.store.vlan(c)), records, latest, closed))
                continue
            with rf:
                h = rf.header
                ident = (h["proto"], h["ipver"], h["client_addr"], h["client_port"], h["server_addr"], h["server_port"])
                latest = h["first_record_id"] + h["records"] - 1 if h["records"] else 0
                rows.append((c, identity_text(ident, path, header_vlan(h)), h["records"], latest, rf.closed_by_gateway))
        self.registry.restore(rows, self.module_bits)
        import sys
        sys.stderr.write(f"flowsift: registry restored from the store: {len(rows)} connections, "
                         f"{len(self.module_bits)} modules\n")

    def expect(self, names):
        """Hold bits for modules that will attach later: nothing is reclaimed before they read it,
        and the gateway waits for them at the end."""
        for name in names:
            bit = self.registry.reserve(name)
            self.module_bits[bit] = {"name": name, "reserved": True}
            self.done_by.setdefault(bit, ConnSet())
            self.store.register_module(bit)

    def _waiting(self, total):
        # the modules not through yet: {bit: info}. (An expected module not attached yet is
        # waited for even when there is nothing to read: it comes, finds the run complete and
        # leaves.)
        return {b: info for b, info in self.module_bits.items()
                if len(self.done_by.get(b, ())) < total or info.get("reserved")}

    def waited_for(self):
        """The names of the modules wait_for_modules would still wait for, sorted."""
        return sorted({info.get("name", str(b)) for b, info in self._waiting(len(self.announced)).items()})

    def wait_for_modules(self, on_status=None, poll=0.1, tick=None, linger=5.0):
        """After the source: wait until every registered module finished every connection (or
        released its bit), then up to `linger` seconds for the finished ones to leave. `on_status(lines)`
        is told now and then who is still at work; `tick()` is called each round."""
        import time
        last = time.monotonic()
        finished_at = None
        while True:
            self.sync()
            total = len(self.announced)
            waiting = self._waiting(total)
            if not waiting:
                # every module is through: let them commit their last words and release their bits
                if not self.module_bits:
                    self.store.settle_bits()
                    return
                finished_at = finished_at or time.monotonic()
                alive = self.registry.alive_bits(list(self.module_bits))
                if not any(alive.values()) or time.monotonic() - finished_at > linger:
                    self.store.settle_bits()        # module bits still waiting for a last module
                    return
            if tick is not None:
                tick()
            if waiting and on_status is not None and time.monotonic() - last > 10:
                last = time.monotonic()
                alive = self.registry.alive_bits(list(waiting))
                on_status([f"{info.get('name')} (bit {b}): {len(self.done_by.get(b, ())):,} of {total:,} connections"
                           + ("" if alive.get(b) else ", not attached") for b, info in sorted(waiting.items())])
            time.sleep(poll)

    def source_lost(self):
        """Frames the live source has lost so far for want of reading (kernel drops), while it is
        read; else None. A chain that makes the gateway wait counts those lost meanwhile."""
        return None if self.capture is None else self.capture.lost()

    def _note_late(self, batch):
        # packets after their connection ended have no record: egress gives them the header
        # edits their connection's last packet got (a NAT must not let them out unrewritten)
        from flowsift.streams.format import RF_LATE
        arr = batch.array
        late = (arr["rflags"] & RF_LATE) != 0
        self.late.update(zip(arr["rec_pos"][late].tolist(),
                             zip(arr["flow_id"][late].tolist(), arr["dir"][late].tolist())))

    def run_capture(self, path, on_progress=None, after_batch=None, on_batch=None, after_written=None, on_open=None,
                    on_idle=None):
        """Read a whole capture (`path`: a file, a live source, or a capture open_source opened)
        into the store; returns a summary dict. `after_batch(touched, closed)` is called with
        the connections each publish changed and ended (an inline chain);
        `on_batch(frames)` then with the batch's frames as captured (inline forwarding);
        `on_open()` once the source is open, before its first packet (to open an egress port);
        `on_idle()` while a live source brings nothing (to hand on what the readers wait for).

        `after_written` (readers in other processes: a ParallelChain) is told of each batch, in
        order, once it is in the files: a thread writes the batches while the next ones are
        reassembled, gathering those published while it was busy. Its `snapshot(touched,
        closed)` is taken at each publish and `process(touched, closed, published=snapshot)`
        called later. The registry must hold the modules' commits: they are recorded while the
        writer is idle."""
        from flowsift.io import decoded_batches, open_capture
        opened = hasattr(path, "fill")          # a capture opened already (open_source)
        self.source = str(path.path if opened else path)
        # the manifest names its source from the start: a gateway killed (kill -9) leaves it so
        self._write_manifest(complete=False)
        decoder, batch, error = self.reassembler.decoder(), None, None
        self.decoder = decoder
        try:
            cap = path if opened else open_capture(path, self.bpf)
            if on_open is not None:
                on_open()
        except FlowsiftError as e:
            self._fail(str(e))
            raise
        # A thread writes each batch while the next one is reassembled when nobody in this
        # process reads the store during the run and no registry announces its batches, or when
        # the readers hear only of written batches (after_written).
        lagged = after_written is not None
        if lagged and (after_batch is not None or on_batch is not None or self.registry.announces
                       or self.table is not None or not getattr(self.registry, "hold", False)):
            raise ValueError("after_written: one chain, unsharded, with an embedded registry that holds commits")
        self.store.set_background(lagged or (after_batch is None and on_batch is None and not self.registry.announces))
        staged, handed = [], []            # (touched, closed, snapshot) published, and handed to the writer

        def written():
            # the writer is idle: what it had is in the files. The commits held since are
            # recorded now (they work on the files), the batches published since go to it, and
            # readers hear of those it wrote.
            nonlocal staged, handed
            self.store.wait()
            self.registry.flush()
            self.store.hand_over()
            done, handed, staged = handed, staged, []
            for touched, closed, snapshot in done:
                after_written.process(touched, closed, published=snapshot)

        def hand_on(changed):
            # what a publish changed and ended: to the registry, then to the readers
            self.sync(*changed, batch=True)
            if lagged:
                staged.append((*changed, after_written.snapshot(*changed)))
                if self.store.due():
                    written()
            if after_batch is not None:
                after_batch(*changed)

        def idle():
            # a live source's packets carry the host's time: while it is quiet that time
            # goes on, so idle timeouts fire (a connection whose FINs left a hole ends then,
            # not at the next packet); a second behind the clock, for one stamped just now
            engine = self.reassembler.engine
            wall = time.time_ns() - 10**9
            if 0 < wall - engine.now < IDLE_CLOCK_SPAN:
                engine.advance(wall)
                changed = self.store.publish(hand_over=not lagged)
                if changed[0] or changed[1]:
                    hand_on(changed)
            # a quiet live source still syncs: its heartbeat keeps attached modules from
            # taking the run for dead, and their progress is taken in
            if self.registry.announces and self.registry.beat_due():
                self.sync()
            # batches published but not yet told of are told now, not at the next packet
            if lagged and (staged or handed):
                written()
            if on_idle is not None:
                on_idle()

        self.capture = cap if getattr(cap, "live", False) else None
        try:
            read = 0                        # packets read so far (before sharding)
            for batch in decoded_batches(cap, decoder, self.bpf, on_progress, on_idle=idle):
                self.read_any = True
                if self.table is not None:
                    from flowsift.io.shard import shard_mask
                    if self.resharder is not None:
                        # every shard reads the same batches: all agree on where this happens
                        self.resharder.at(read)
                    read += batch.n
                    self.other_shards += batch.mark_other(shard_mask(batch, self.shard[0], self.table))
                self.store.check_space(batch)
                frames = batch.snapshot() if on_batch is not None else None
                self.reassembler.feed(batch)
                hand_on(self.store.publish(hand_over=not lagged))
                if self.late is not None:
                    self._note_late(batch)
                if on_batch is not None:
                    # the batch's frames as captured, after the chain saw them
                    on_batch(frames, _flows_onto(frames, batch))
        except CaptureFormatError as e:
            error = str(e)          # what was read is still recorded and closed below
        except BpfError as e:
            self._fail(str(e))
            raise UsageError(f"filter cannot be applied to {self.source}: {e}") from None
        except (FlowsiftError, RegistryError) as e:
            # the store cannot be written (full, unwritable), or the registry is lost: leave
            # files as they are, unclosed, and the manifest saying the store is incomplete
            self._fail(str(e))
            self._attach_summary(e, cap, decoder)
            raise
        except BaseException:
            self.store.halt()               # cut short (Ctrl-C, SIGTERM, a module's error): nothing writes on
            raise
        finally:
            self.capture = None             # not read any more: what it loses now is not the chain's doing
        try:
            if batch is not None:
                self.store.check_space(batch)
            self.reassembler.finish()
            changed = self.store.publish(hand_over=not lagged)
            if lagged:
                staged.append((*changed, after_written.snapshot(*changed)))
                written()
                written()                           # the last batches are in the files
            self.store.set_background(False)        # everything written before the summary
            self.sync(*changed, batch=True)
            if after_batch is not None:
                after_batch(*changed)
        except (FlowsiftError, RegistryError) as e:
            self._fail(str(e))
            self._attach_summary(e, cap, decoder)
            raise
        except BaseException:
            self.store.halt()
            raise
        summary = self._summary(cap, decoder, error)
        self._write_manifest(complete=error is None, files=self.store.files, records=self.store.records_written)
        return summary

    def _attach_summary(self, e, cap, decoder):
        # (a summary that cannot be made must not hide the error that stopped the run)
        try:
            e.summary = self._summary(cap, decoder, str(e))
        except Exception:
            pass

    def _summary(self, cap, decoder, error):
        """The run's summary: what was read and written, and `error` (None, or what stopped it:
        a run stopped by the store carries it as the exception's `summary`, for --json)."""
        engine = self.reassembler.engine.counters()
        summary = {"store": self.store_dir, "source": self.source, **first_packets(cap), **self.store.counters(),
                   "connections": self.reassembler.engine.totals(), "engine": engine,
                   **not_in_connections(decoder, self.reassembler.defrag, self.bpf), "error": error}
        if self.reassembler.flows.vlan_key:
            summary["vlan_key"] = True
        if decoder.verify:
            summary["checksums"] = checksum_summary(decoder.checksums(), self.reassembler.defrag.checksums())
        summary["packets"] = decoder.packets + summary["filtered"]
        # packets after their connection ended have no record: the engine tells them apart and
        # never hands them to the store, whose own count is of those that reach a closed file
        summary["late_packets"] = engine["late_packets"] + summary["late_packets"]
        if getattr(cap, "live", False):
            summary["kernel"] = cap.live_counters()
        if self.shard is not None:
            # (the datagrams this shard rebuilt are its own: the rest of not_decoded and
            # other_protocols every shard of a file counts alike)
            d = self.reassembler.defrag
            r = self.resharder
            shards = r.steps[r.step - 1][1] if r is not None and r.step else self.shard[1]   # (as the run ended)
            summary["shard"] = {"index": self.shard[0], "of": shards, "split": self.shard[2],
                                "other_shards_packets": self.other_shards,
                                "rebuilt_not_decoded": sum(d.undecoded().values()),
                                "rebuilt_other_protocols": d.other_protocols}
            if decoder.verify:
                summary["shard"]["rebuilt_checksums"] = d.checksums()
            if self.resharder is not None:
                summary["shard"]["moved"] = self.resharder.counters()
                summary["shard"]["steps_reached"] = self.resharder.step
        return summary
