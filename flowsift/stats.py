"""`flowsift stats`: what a capture holds, with every packet accounted for."""
import datetime as _dt

from flowsift.errors import CaptureFormatError, UsageError
from flowsift.io import BpfError, BpfFilter, Decoder, Defragmenter, FlowTable, decoded_batches, open_capture
from flowsift.io.reasons import REASONS, checksum_summary, ethertype_name, linktype_name, proto_name, unsupported_linktypes


def compile_filter(expression):
    """A BpfFilter for `expression`, or UsageError with libpcap's message."""
    if expression is None:
        return None
    try:
        return BpfFilter(expression)
    except BpfError as e:
        raise UsageError(f"bad filter {expression!r}: {e}") from None


def _iso(ns):
    return _dt.datetime.fromtimestamp(ns / 1e9, _dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def capture_stats(path, filter_expression=None, on_progress=None, vlan_key=False, checksums="ignore"):
    """Read the whole capture and return the stats dict documented in docs/cli.md.
    `vlan_key`: flows (and IP datagrams) are told apart by their VLAN ids too. `checksums`:
    "verify" leaves packets with a wrong IPv4, TCP or UDP checksum undecoded (bad_checksum).

    A defect that stops reading (a file cut short...) does not lose what was read: the dict
    carries it under "error", and the caller decides how to exit.
    """
    bpf = compile_filter(filter_expression)
    cap = open_capture(path, bpf)
    decoder, defrag, flows = Decoder(checksums), Defragmenter(vlan_key=vlan_key), FlowTable(vlan_key)
    defrag.verify_checksums = decoder.verify
    error = None
    try:
        for batch in decoded_batches(cap, decoder, bpf, on_progress):
            defrag.process(batch)
            flows.update(batch)
    except CaptureFormatError as e:
        error = str(e)
    except BpfError as e:
        raise UsageError(f"filter {filter_expression!r} cannot be applied to {path}: {e}") from None
    defrag.finish()
    return _summarise(cap, decoder, flows, bpf, error, defrag)


def first_packets(cap):
    """{"count": N} for a file read as far as its first N packets (--count), else {} (a live
    source says its count= in its `kernel`)."""
    n = getattr(cap, "first_packets", None)
    return {"count": n} if n else {}


def not_in_connections(decoder, defrag, bpf=None):
    """The packets read that no connection can hold, by why: rejected by the filter, not decoded
    (their reasons are in `flowsift stats`), or IP of another protocol than TCP and UDP (ICMP,
    ESP, ...). A datagram that came in fragments counts once, as rebuilt: its fragments are in
    `defrag`'s counters."""
    not_decoded = sum(decoder.counters()["reasons"].values()) + sum(defrag.undecoded().values())
    return {"filtered": bpf.rejected if bpf is not None else 0, "not_decoded": not_decoded,
            "unsupported_link_types": unsupported_linktypes(decoder),
            "other_protocols": decoder.other_protocols + defrag.other_protocols}


def _summarise(cap, decoder, flows, bpf, error, defrag):
    c = decoder.counters()
    rc = cap.counters()
    protocols = {}
    for table in (c["proto4"], c["proto6"]):
        for proto, n in table.items():
            name = proto_name(proto)
            protocols[name] = protocols.get(name, 0) + n
    if c["ipv4_later_fragments"]:
        protocols["ipv4-fragment"] = c["ipv4_later_fragments"]
    if c["ipv6_later_fragments"]:
        protocols["ipv6-fragment"] = c["ipv6_later_fragments"]
    protocols = dict(sorted(protocols.items(), key=lambda kv: (-kv[1], kv[0])))
    undecoded = {REASONS[k]: n for k, n in sorted(c["reasons"].items())}
    non_ip = {ethertype_name(k): n for k, n in sorted(c["non_ip_ethertypes"].items(), key=lambda kv: -kv[1])}
    ifaces = []
    for i in cap.interfaces():
        ifaces.append({"index": i["index"], "linktype": i["linktype"], "linktype_name": linktype_name(i["linktype"]),
                       "snaplen": i["snaplen"], "name": i["name"], "tsresol": i["tsresol"], "packets": i["packets"]})
    packets = c["packets"] + (bpf.rejected if bpf is not None else 0)
    out = {
        "file": cap.path,
        **first_packets(cap),
        "format": cap.format,
        "version": cap.version,
        "size": cap.size,
        "packets": packets,
        "bytes_captured": c["bytes_captured"],
        "bytes_wire": c["bytes_wire"],
        "time": None,
        "interfaces": ifaces,
        "decoded": sum(protocols.values()),
        "protocols": protocols,
        "ip": {"ipv4": c["ipv4"], "ipv6": c["ipv6"],
               "ipv4_fragments": c["ipv4_fragments"], "ipv6_fragments": c["ipv6_fragments"],
               "reassembled_datagrams": defrag.datagrams, "fragment_overlaps": defrag.overlaps,
               "incomplete_datagrams": defrag.counters()["incomplete"],
               "truncated_datagrams": defrag.counters()["truncated"],
               "late_duplicate_fragments": defrag.late_duplicates,
               "datagrams_in_too_many_pieces": defrag.too_many_pieces,
               "overlap_discarded_datagrams": defrag.overlap_discarded,
               "malformed_fragments": defrag.malformed,
               "undecoded_datagrams": {REASONS[k]: n for k, n in sorted(defrag.undecoded().items())}},
        "flows": {"tcp": flows.tcp_connections, "udp": flows.udp_flows, "tcp_reused_tuples": flows.reused_tuples},
        "undecoded": undecoded,
        "non_ip": non_ip,
        "unsupported_link_types": unsupported_linktypes(decoder),
        "filter": bpf.expression if bpf is not None else None,
        "filtered": bpf.rejected if bpf is not None else 0,
        "filter_not_applicable": ({linktype_name(lt): n for lt, n in bpf.not_applicable_counts().items()}
                                  if bpf is not None else {}),
        "anomalies": {
            "snaplen_cut": c["snaplen_cut"],
            "link_trailers": c["trailers"],
            "ip_length_from_frame": c["ip_len_from_frame"],
            "ip_length_exceeds_frame": c["ip_len_exceeds_frame"],
            "bad_tcp_options": c["bad_tcp_options"],
            "timestamps_backwards": c["ts_backwards"],
            "caplen_gt_snaplen": rc["caplen_gt_snaplen"],
            "caplen_gt_wirelen": rc["caplen_gt_wirelen"],
            "bad_timestamp_fraction": rc["bad_ts_fraction"],
            "timestamp_out_of_range": rc["bad_timestamp"],
        },
        "pcapng_blocks_skipped": rc["blocks_skipped"],
        "error": error,
    }
    if flows.vlan_key:
        from flowsift.streams.format import vlan_ids
        out["flows"]["vlan_key"] = True
        out["flows"]["by_vlan"] = [{"vlan": vlan_ids(*v), "tcp": n[0], "udp": n[1]}
                                   for v, n in sorted(flows.vlan_counts().items())]
    if decoder.verify:
        out["checksums"] = checksum_summary(decoder.checksums(), defrag.checksums())
    if getattr(cap, "live", False):
        out["kernel"] = cap.live_counters()
    if c["ts_packets"]:
        first, last = c["ts_min"], c["ts_max"]
        out["time"] = {"first": _iso(first), "last": _iso(last), "first_ns": first, "last_ns": last,
                       "duration_s": round((last - first) / 1e9, 9)}
    return out
