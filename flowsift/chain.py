"""`flowsift chain`: the gateway and a chain of modules over one source."""
import os
import shutil

from flowsift.errors import FlowsiftError, stops_held
from flowsift.gateway import STORE_TOTALS, Gateway, open_source
from flowsift.modules.loader import parse_chain, start_chain
from flowsift.modules.runner import InlineChain
from flowsift.modules.workers import ParallelChain


def run_chain(spec, source, events=None, store=None, keep=False, filter_expression=None, policy="first",
              strict=False, on_progress=None, inline=False, write=None, max_backlog=None, registry=None, out=None,
              shards=None, shard=None, reshard=None, handover=None, reassembly=None, edits=None, vlan_key=False,
              unacked_files=None, checksums="ignore", advise=True):
    """Validate the chain, run it over `source`; returns the summary dict. `events`: a writable
    text file for the JSON event lines, or None. A store given with `store` stays; a default one
    (under /dev/shm) is removed at the end unless `keep`. `reassembly`: the engine's timeouts
    and bounds (flowsift.bounds). `edits`: a writable text file that also gets the edit log's
    lines (edits.jsonl in the store), or None. `vlan_key`: connections are told apart by VLAN
    ids too. `unacked_files`: how many ended connections' files are kept at most for bytes their
    receiver never acknowledged (default: the store's, 10,000). `checksums`: "verify" leaves
    packets with a wrong IPv4, TCP or UDP checksum out of connections (counted). `advise`: say on
    stderr what the command line lacks (-w or --out for writing modules' edits), as `flowsift
    chain` does; not for a caller with other means (flowsift.testing, a shard of a run that said
    it once)."""
    chain = parse_chain(spec)                  # before the first packet: errors name the module
    from flowsift.io.live import is_live
    from flowsift.errors import UsageError
    if write is not None and is_live(source):
        raise UsageError("-w rewrites a capture file; a live source forwards with --out afpacket:IFACE or "
                         "--out dpdk:PORT")
    if write is not None and out is not None:
        raise UsageError("-w and --out: choose one")
    if out is not None and filter_expression is not None:
        # the frames a filter rejects never reach the chain (the kernel drops them from an
        # interface's ring): an inline box would black-hole them, where it forwards every frame
        raise UsageError("--filter with --out: the frames it rejects would never be forwarded (inline, every frame "
                         "goes out); leave connections to a module instead (flow.skip() in on_open)")
    if out is not None and is_live(source) and str(source).startswith("afpacket:") and out.startswith("afpacket:"):
        from flowsift.io.live import _boolean, parse_spec
        _, src_name, src_opts = parse_spec(str(source))
        if parse_spec(out)[1] == src_name and _boolean(str(source), "outgoing", src_opts.get("outgoing", "yes")):
            # the frames it sends out of that interface are captured as outgoing ones and sent again
            raise UsageError(f"--out {out} is the interface captured: its own frames would come back and be "
                             f"forwarded without end; capture it with afpacket:{src_name},outgoing=no")
    if write is not None:
        from flowsift.egress import EgressFile, egress_linktype
        from flowsift.paths import check_output_file, refuse_overwrite
        path = write.path if isinstance(write, EgressFile) else str(write)
        check_output_file("-w", path)
        refuse_overwrite([("input capture", source)], [("-w", path)])
        egress_linktype(source)                # (before the first packet, not after the run)
    if max_backlog is not None:
        from flowsift.modules.workers import INFLIGHT
        if not 1 <= max_backlog < INFLIGHT:
            # 0 would give up every connection at once (a chain that reads nothing); from
            # INFLIGHT on, back-pressure holds the gateway before the backlog is reached
            raise UsageError(f"--max-backlog {max_backlog}: a number of batches, 1 to {INFLIGHT - 1} (a module "
                             f"{INFLIGHT} batches behind holds the gateway back whatever the bound)")
        if inline or not all(cls.read_only() for cls, _ in chain):
            raise UsageError("--max-backlog lets a read-only module in its own worker fall behind: not with "
                             "--inline or a writing module (whose later stages must read what it wrote)")
    if unacked_files is not None and unacked_files < 0:
        raise UsageError(f"--unacked-files {unacked_files}: a number of files, 0 or more")
    if shards is not None and not 1 <= shards <= 64:
        raise UsageError(f"--shards {shards}: the number of gateways, from 1 to 64")
    if reshard and not shards:
        raise UsageError("--reshard changes the number of shards of a sharded run: give --shards N too")
    started = start_chain(chain)               # options an __init__ refuses: said before the store is made
    if shards is not None and (shards > 1 or reshard):
        if write is not None or out is not None or registry not in (None, "", "embedded") or store is not None:
            raise UsageError("--shards runs one gateway per shard, each with its own temporary store: "
                             "-w, --out, --registry and --store work without it")
        if reshard and not all(cls.read_only() for cls, _ in chain):
            raise UsageError("--reshard moves read-only modules' state; a chain with a writing module "
                             "runs with a fixed number of shards")
        from flowsift.shards import parse_reshard, run_sharded
        if advise:
            _say_unwritten(chain, write, out)
        return run_sharded(spec, source, shards, events=events, reshard=parse_reshard(reshard),
                           filter_expression=filter_expression, policy=policy, strict=strict, inline=inline,
                           max_backlog=max_backlog, on_progress=on_progress, reassembly=reassembly, vlan_key=vlan_key,
                           unacked_files=unacked_files, checksums=checksums)
    if registry not in (None, "", "embedded"):
        if inline or write is not None or max_backlog is not None or out is not None:
            from flowsift.errors import UsageError
            raise UsageError("--registry runs each module as its own process: --inline, --write and "
                             "--max-backlog work with the embedded registry only")
        from flowsift.remote import run_chain_remote
        return run_chain_remote(spec, source, registry, events=events, store=store, keep=keep,
                                filter_expression=filter_expression, policy=policy, strict=strict,
                                on_progress=on_progress, reassembly=reassembly, vlan_key=vlan_key,
                                unacked_files=unacked_files, checksums=checksums)
    # egress rereads stream bytes after the run: nothing may be given back before it is written.
    # A store that goes at the end, for modules that none read the bytes: the bytes are counted,
    # not stored (the records, gaps and counts do not change)
    bytes_read = any("stream" in cls.reads for cls, _ in chain)
    if advise:
        _say_unwritten(chain, write, out)
    # record files are read in this process by an inline chain, writing stages and egress; a
    # parallel read-only chain's readers are its workers, so the gateway may hold more files open
    readers_here = inline or write is not None or out is not None or not all(cls.read_only() for cls, _ in chain)
    # what cannot be read or written is said before the store is made: a run that never started
    # leaves none (one left would refuse the same run given again)
    cap = open_source(source)
    egress = None
    if write is not None:
        from flowsift.egress import EgressFile
        egress = write if isinstance(write, EgressFile) else EgressFile(write)
        write = egress.path
    try:
        g = Gateway(store, keep=keep or write is not None, policy=policy, filter_expression=filter_expression,
                    shard=shard, store_bytes=bytes_read or store is not None or keep or write is not None or out is not None,
                    readers_here=readers_here, vlan_key=vlan_key, unacked_files=unacked_files, checksums=checksums,
                    **(reassembly or {}))
    except BaseException:
        if egress is not None:
            egress.discard()
        raise
    try:
        editor = None
        if write is not None or out is not None or not all(cls.read_only() for cls, _ in chain):
            from flowsift.modules.edits import Editor
            editor = Editor(g.store, log=open(os.path.join(g.store_dir, "edits.jsonl"), "w"), also=edits)
            if write is not None:
                g.late = {}                     # late packets, for -w to give them their flow's edits
            if write is not None or out is not None:
                g.reassembler.defrag.members = {}     # fragments of each datagram, for its edits
        # the checkpoints' copy in the store is for reading after the run: not for a store that goes
        kept = store is not None or keep
        if inline:
            runner = InlineChain(chain, g.store, events=events, strict=strict, editor=editor, registry=g.registry,
                                 modules=started)
        elif all(cls.read_only() for cls, _ in chain):
            runner = ParallelChain(spec, chain, g.store, events=events, strict=strict, max_backlog=max_backlog,
                                   registry=g.registry, save_state=kept, modules=started)
        else:
            # read-only runs in parallel stages, each writing module a stage of its own in this process
            from flowsift.modules.stages import StagedChain
            runner = StagedChain(spec, chain, g.store, events=events, strict=strict, editor=editor, registry=g.registry,
                                 save_state=kept, modules=started)
    except BaseException:
        if egress is not None:
            egress.discard()
        if store is None and not keep:       # a chain that cannot start leaves no store behind
            shutil.rmtree(g.store_dir, ignore_errors=True)
        else:
            g.discard_unused()
        raise
    for st in _parallel(runner):
        st.source_lost = g.source_lost       # (a live source's losses while the gateway waits for a worker)
    if handover is not None:
        from flowsift.shards import Resharder
        g.resharder = Resharder(g, runner, shard[0], *handover)
    forwarder = None
    summary = None

    def idle():
        # a quiet live source: events of finished connections go out now, not with more traffic
        if isinstance(runner, ParallelChain):
            runner.idle()
        if events is not None:
            events.flush()
    try:
        if out is not None:
            from flowsift.egress import Forwarder
            forwarder = Forwarder(out, editor, g.store)
            forwarder.members = g.reassembler.defrag.members
            # a connection the chain finished in a batch is given back (its bytes punched out, its
            # file retired) only after the batch was forwarded: forwarding reads edited bytes
            g.registry.hold = True

            def forward(frames, rebuilt):
                forwarder.forward(frames, rebuilt)
                g.registry.flush()
        try:
            if forwarder is None and write is None and shard is None and max_backlog is None \
                    and isinstance(runner, ParallelChain) and not runner.following:
                # Workers that read connections only at their ends leave the gateway the busier
                # side: a thread writes the store while it reassembles on, and the workers hear of
                # batches once written; their commits wait for the writer to be idle. (Workers that
                # follow every batch are the busier side: a writer thread would take their core.
                # Not with --max-backlog: batches told in bursts would put a module that keeps up
                # behind for a moment.)
                g.registry.hold = True
                summary = g.run_capture(cap, on_progress=on_progress, after_written=runner, on_idle=idle)
            else:
                summary = g.run_capture(cap, on_progress=on_progress, after_batch=runner.process,
                                        on_batch=forward if forwarder is not None else None,
                                        on_open=forwarder.open if forwarder is not None else None, on_idle=idle)
        except FlowsiftError as e:
            # the store stopped the run (full, unwritable): --json still gives the chain's
            # summary of what was read, its `error` saying why (the workers are not asked to finish)
            if getattr(e, "summary", None) is not None:
                try:
                    if editor is not None:
                        e.summary["edits"] = editor.counters()
                    _complete(e.summary, runner, chain, store, keep)
                except Exception:
                    pass            # (a summary that cannot be made must not hide the error)
            raise
        runner.finish()
        g.registry.flush()
        g.store.settle_bits()               # module bits that waited for a last module that never came
        # what the modules' last reports gave back counts too
        summary.update({k: v for k, v in g.store.counters().items() if k in STORE_TOTALS})
        if forwarder is not None:
            summary["egress"] = forwarder.counters()
        if editor is not None:
            editor.log.close()
            summary["edits"] = editor.counters()
        if write is not None:
            from flowsift.egress import write_egress
            summary["egress"] = dict(write_egress(source, egress, editor, g.store, g.late,
                                                  g.reassembler.defrag.members), file=write)
    finally:
        with stops_held():              # (a stop that comes now is raised once the store is gone)
            if forwarder is not None:
                forwarder.close()
            if egress is not None:
                egress.discard()        # (nothing once written: a run cut short leaves no partial file)
            if store is None and not keep:
                shutil.rmtree(g.store_dir, ignore_errors=True)
            elif (summary is None or summary["error"]) and g.discard_unused() and summary is not None:
                summary["store"] = None     # failed before its first packet: nothing was kept
    return _complete(summary, runner, chain, store, keep)


def _say_unwritten(chain, write, out):
    """One line when the chain's writing modules have no output: their edits are checked and
    counted, and would otherwise go nowhere without a word (payload edits reach only the
    modules after them)."""
    writers = [cls.name for cls, _ in chain if not cls.read_only()]
    if writers and write is None and out is None:
        from flowsift.errors import say
        say(f"{'module' if len(writers) == 1 else 'modules'} {', '.join(writers)} "
            f"{'asks' if len(writers) == 1 else 'ask'} for edits but nothing is written: "
            "add -w OUT.pcap or --out afpacket:IFACE|dpdk:PORT")


def _parallel(runner):
    """The chain's stages whose modules run in worker processes."""
    return [st for st in getattr(runner, "stages", [runner]) if isinstance(st, ParallelChain)]


def _complete(summary, runner, chain, store, keep):
    """The gateway's `summary` with the chain's part: modules, their counters, tables and state."""
    if "kernel" in summary:
        # the modules the capture waited for, and the frames it lost meanwhile
        held = {}
        for st in _parallel(runner):
            held.update(st.held_back())
        summary["kernel"]["held_back"] = held
        summary["kernel"]["lost_while_held"] = sum(h["lost"] for h in held.values())
    if isinstance(runner, InlineChain):
        summary["tables"] = runner.summary_tables()     # (first: a summary() that fails counts in errors)
        summary["modules"] = runner.counters()
        summary["mode"] = "inline"
        summary["reader_reopens"] = runner.reopens
    else:
        summary["tables"] = runner.tables
        summary["modules"] = runner.counters_summary()
        summary["mode"] = "parallel" if runner.__class__.__name__ == "ParallelChain" else "staged"
    summary["events"] = runner.event_count
    if hasattr(runner, "checkpoint_stats") and runner.checkpoint_stats():
        summary["checkpoints"] = runner.checkpoint_stats()
    state = runner.state_snapshots()
    if state:
        summary["state"] = state
    summary["chain"] = [cls.name for cls, _ in chain]
    from flowsift.modules.edits import take_up_read_only
    take_up_read_only(summary, chain)
    if store is None and not keep:
        summary["store"] = None
    return summary
