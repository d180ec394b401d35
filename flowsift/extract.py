"""`flowsift streams`: every direction of every connection, reassembled, to files (or counted)."""
import os

from flowsift.errors import CaptureFormatError, FlowsiftError, UsageError
from flowsift.io import BpfError
from flowsift.reassembly import POLICIES, CountSink, Reassembler
from flowsift.io.reasons import checksum_summary
from flowsift.stats import compile_filter, first_packets, not_in_connections


# what --gaps takes: a gap spliced out of its file (the default), or written as zeros
GAP_MODES = ("splice", "zeros")


def extract_streams(path, outdir=None, filter_expression=None, policy="first", on_progress=None, gaps="splice",
                    vlan_key=False, checksums="ignore", replace=False, **engine_options):
    """Reassemble `path`; write files and DIR/index.jsonl unless `outdir` is None (discard).
    `gaps`: "splice" (a gap takes no room in its file) or "zeros" (a gap before bytes is
    written as zeros: file offsets are stream offsets); the index lists every gap either way.
    `vlan_key`: connections are told apart by their VLAN ids too (the index says them).
    `checksums`: "verify" leaves packets with a wrong checksum out of connections (counted).
    `replace`: an earlier run's output in `outdir` (index.jsonl, stream files) is replaced;
    without it, such an `outdir` is refused before anything is read (UsageError).

    Returns the summary dict documented in docs/cli.md; a defect that stopped reading is in
    its "error" field (everything read before it was reassembled and closed as end of input).
    The input is checked (opened, its format read, the filter compiled for its link type)
    before anything in `outdir` is made or removed, and a run that fails on its input leaves
    it as it was.
    """
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r}: one of {', '.join(POLICIES)}")
    if gaps not in GAP_MODES:
        raise UsageError(f"--gaps {gaps!r}: one of {', '.join(GAP_MODES)}")
    if outdir is not None:
        from flowsift.reassembly._filesink import refuse_earlier_output, refuse_foreign_output
        refuse_foreign_output(str(outdir))
        if not replace:
            refuse_earlier_output(str(outdir))
    bpf = compile_filter(filter_expression)
    from flowsift.io import open_capture
    cap = open_capture(path, bpf)
    if bpf is not None and not getattr(cap, "live", False) and cap.format == "pcap":
        try:
            bpf.check(cap.interfaces()[0]["linktype"])     # (one link type: a filter it refuses fails now)
        except BpfError as e:
            raise UsageError(f"filter {filter_expression!r} cannot be applied to {path}: {e}") from None
    if outdir is None:
        sink = CountSink()
    else:
        from flowsift.reassembly._filesink import FileSink
        sink = FileSink(str(outdir), zeros=gaps == "zeros")
    r = Reassembler(sink=sink, policy=policy, vlan_key=vlan_key, checksums=checksums, **engine_options)
    error = None
    decoder = r.decoder()       # (ours: its counters are reported when reading stops at a defect too)
    ended = False               # read to the end, or to a defect: the output is the run's
    try:
        try:
            r.feed_capture(cap, bpf=bpf, decoder=decoder, on_progress=on_progress)
            ended = True
        except CaptureFormatError as e:
            error = str(e)          # feed_capture closed everything read so far
            ended = True
        except BpfError as e:
            raise UsageError(f"filter {filter_expression!r} cannot be applied to {path}: {e}") from None
        finally:
            if outdir is not None:
                sink.close(ended)
    except FlowsiftError as e:
        # writing failed once reading began (a full disk): the summary of what was read goes
        # with the error, for --json, as a capture cut short gives it
        if outdir is not None and sink.failure is not None:
            try:
                e.summary = _summary(path, outdir, filter_expression, policy, gaps, vlan_key, cap, r, sink,
                                     decoder, bpf, str(e))
            except Exception:
                pass            # (a summary that cannot be made must not hide the error)
        raise
    return _summary(path, outdir, filter_expression, policy, gaps, vlan_key, cap, r, sink, decoder, bpf, error)


def _summary(path, outdir, filter_expression, policy, gaps, vlan_key, cap, r, sink, decoder, bpf, error):
    t = r.engine.totals()
    written = outdir is not None
    out = {
        "file": str(path),
        **first_packets(cap),
        "output": str(outdir) if written else None,
        "index": os.path.join(str(outdir), "index.jsonl") if written else None,
        "policy": policy,
        "filter": filter_expression,
        **({"vlan_key": True} if vlan_key else {}),
        "connections": t["tcp"] + t["udp"],
        "tcp": t["tcp"],
        "udp": t["udp"],
        "packets": t["packets"],
        "bytes": t["bytes"],
        "gaps": t["gaps"],
        "gap_bytes": t["gap_bytes"],
        "conflicts": t["conflicts"],
        "retransmissions": t["retransmissions"],
        "unverified_bytes": t["unverified_bytes"],
        "midstream_directions": t["midstream_directions"],
        "close": t["close"],
        "files": sink.files if written else None,
        "replaced": sink.replaced if written else None,
        "gaps_in_files": gaps if written else None,
        "spliced_files": sink.spliced_files if written else None,
        "spliced_gap_bytes": sink.spliced_bytes if written else None,
        "fragments": r.defrag.counters(),
        "engine": r.engine.counters(),
        "error": error,
    }
    if getattr(cap, "live", False):
        out["kernel"] = cap.live_counters()
    out.update(not_in_connections(decoder, r.defrag, bpf))
    if decoder.verify:
        out["checksums"] = checksum_summary(decoder.checksums(), r.defrag.checksums())
    out["capture_packets"] = decoder.packets + out["filtered"]
    return out
