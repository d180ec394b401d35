"""Live sources behind the Capture interface: `afpacket:IFACE[,option=value...]`.

    afpacket:eth0                           the whole interface
    afpacket:eth0,ring=64M,block=1M         ring size and block size (powers of two)
    afpacket:eth0,fanout=7                  fan-out group 7 (several shards, one interface, each
                                            connection whole in one; hash=hosts: each host pair)
    afpacket:eth0,timestamps=hw             hardware timestamps where the NIC gives them
    afpacket:eth0,outgoing=no               not the frames this host sends (yes/no, true/false, on/off, 1/0)
    afpacket:eth0,count=1000,duration=10    stop after 1000 packets or 10 s (--count, --duration)
    dpdk:0                                  DPDK port 0 (a NIC bound to a DPDK driver)
    dpdk:net_pcap0,rx_pcap=in.pcap          a DPDK virtual device and its arguments
    dpdk:net_ring0
    dpdk:net_pcap0,rx_pcap=f.pcap,mbufs=16383   more packet buffers (default 8191, 9.5 KiB each;
                                            larger frames are joined from several, and sent in several)

DPDK's EAL takes its arguments from `flowsift --dpdk-args "..."` (or FLOWSIFT_DPDK_ARGS); the
default runs without hugepages or PCI devices, for virtual devices.

A live source ends at its count or duration, or at Ctrl-C (SIGINT) or SIGTERM, cleanly: what
was read is reassembled and summarised as at the end of a file. An interface that is down is
waited for; one deleted ends the run as a file's defect does (summary, error, exit 2).
"""
import math
import os
import signal
import struct
import time

from flowsift.bounds import written
from flowsift.errors import (CaptureFormatError, FlowsiftError, UsageError, capture_ended, following, say,
                             stop_after_capture, take_stop)
from flowsift.io.capture import is_live  # noqa: F401  (its home is capture.py: a file run does without this module)

_SIZES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

# How a capture tells that it listens: None, it says so on stderr. A shard of `--shards` tells
# its parent instead (on_listening(capture, down)), which says one line once every shard listens.
on_listening = None


def _size(spec, key, text):
    t = text.strip().lower().rstrip("b")
    mult = _SIZES.get(t[-1:], 1)
    try:
        return int(t[:-1] if t[-1:] in _SIZES else t) * mult
    except ValueError:
        raise UsageError(f"{spec}: {key}={text!r} is not a size (e.g. 64M)") from None


# the spellings of a yes/no option (case-blind); anything else is refused, not taken as yes
_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


def _boolean(spec, key, text):
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise UsageError(f"{spec}: {key}= is yes or no (true/false, on/off, 1/0)") from None


# The kernel runs a socket filter on a frame whose 802.1Q tag it took off (put back only in user
# space): compiled for tagged frames, the filter would judge it untagged. Such frames pass this
# guard (ld vlan_tag_present; jeq #0 -> the filter; else accept) and are filtered once tagged again.
_VLAN_GUARD = struct.pack("=HBBI", 0x20, 0, 0, 0xFFFFF000 + 48) + struct.pack("=HBBI", 0x15, 1, 0, 0) + \
    struct.pack("=HBBI", 0x06, 0, 0, 262144)

OURS = ("count", "duration", "mbufs")          # options flowsift reads from a dpdk: spec; the rest are the device's


def parse_spec(spec):
    """'afpacket:eth0,ring=64M' -> ('afpacket', 'eth0', {'ring': '64M'}). For dpdk: the name is
    the device with its own arguments ('net_pcap0,rx_pcap=f.pcap'); flowsift's options are apart."""
    scheme, _, rest = spec.partition(":")
    parts = rest.split(",")
    name, options, device = parts[0], {}, [parts[0]]
    if not name:
        raise UsageError(f"{spec}: name the {'port' if scheme == 'dpdk' else 'interface'}, "
                         f"e.g. {scheme}:{'0' if scheme == 'dpdk' else 'eth0'}")
    for p in parts[1:]:
        k, eq, v = p.partition("=")
        if not eq or not k:
            raise UsageError(f"{spec}: option {p!r} needs name=value")
        if scheme == "dpdk" and k.strip() not in OURS:
            device.append(p)
            continue
        if k.strip() in options:
            # (the last would win without a word: ring=32M,ring=64k)
            raise UsageError(f"{spec}: option {k.strip()!r} is given twice")
        options[k.strip()] = v.strip()
    if scheme == "dpdk":
        name = ",".join(device)
    return scheme, name, options


DEFAULT_EAL = "-l 0 --no-huge -m 256 --no-pci --no-shconf --no-telemetry --log-level=*:error"
_FORBIDDEN_EAL = ("-h", "--help", "-v", "--version")     # EAL prints and exits the process on these
# the receive ring's 1,024 descriptors hold an mbuf each, a batch holds up to 512 more while it
# is read, and the pool keeps a cache of 256 per core: fewer and frames are lost for want of
# buffers (rx_nombuf) however slowly they come; the count is an unsigned int
MBUFS_MIN, MBUFS_MAX = 1024 + 512 + 256, (1 << 32) - 1
COUNT_MAX = (1 << 63) - 1           # a packet count the capture loop holds in a C integer


def eal_args():
    """The EAL's arguments, from --dpdk-args (FLOWSIFT_DPDK_ARGS) or the default, checked."""
    import os
    import shlex
    try:
        args = shlex.split(os.environ.get("FLOWSIFT_DPDK_ARGS") or DEFAULT_EAL)
    except ValueError as e:
        raise UsageError(f"--dpdk-args: {str(e)[:1].lower() + str(e)[1:]}") from None
    bad = [a for a in args if a in _FORBIDDEN_EAL or a.split("=")[0] in _FORBIDDEN_EAL]
    if bad:
        raise UsageError(f"--dpdk-args: {bad[0]} is not accepted (it makes DPDK exit)")
    # a word that follows no option, as "hello" in "hello world", ends the EAL's options: DPDK
    # started with its defaults (hugepages), and said only that those failed
    for i, a in enumerate(args):
        if not a.startswith("-") and (i == 0 or not args[i - 1].startswith("-") or "=" in args[i - 1]):
            raise UsageError(f"--dpdk-args: {a!r} is no EAL option nor an option's value (EAL options begin "
                             f"with '-', e.g. {DEFAULT_EAL!r})")
    return args


def mbufs_of(spec, opts):
    """The mbufs= option of a dpdk: spec, in the range a pool can have."""
    text = opts.get("mbufs", "8191")
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or not MBUFS_MIN <= n <= MBUFS_MAX:
        raise UsageError(f"{spec}: mbufs={text} is a number of packet buffers from {MBUFS_MIN} to {MBUFS_MAX}")
    return n


def vdevs(args):
    """The devices an EAL argument list adds (`--vdev X` and `--vdev=X`)."""
    out = []
    for i, a in enumerate(args):
        if a == "--vdev" and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith("--vdev="):
            out.append(a[len("--vdev="):])
    return out


def check_rx_pcaps(devargs, where=None):
    """Refuse a net_pcap rx_pcap= file that is not one of Ethernet frames: net_pcap hands every
    frame on as Ethernet (another link type would be misread), and libpcap stops without a word
    at a pcapng interface of a second link type. The file is read through once, here. `where`
    names the device in messages (default `dpdk:NAME`)."""
    from flowsift.io import Batch, open_capture
    from flowsift.io.reasons import LINKTYPES
    name = devargs.split(",", 1)[0]
    where = where or f"dpdk:{name}"
    for arg in devargs.split(",")[1:]:
        key, _, path = arg.partition("=")
        if key.strip() != "rx_pcap":
            continue
        try:
            cap = open_capture(path)
            if cap.format != "pcap":
                batch = Batch(512)
                while cap.fill(batch):
                    pass
                cap.check()
        except FlowsiftError as e:
            what = str(e)
            raise FlowsiftError(f"{where}: rx_pcap={path}: "
                                f"{what[len(path) + 2:] if what.startswith(path + ': ') else what}") from None
        types = sorted({i["linktype"] for i in cap.interfaces()})
        if types and types != [1]:
            kinds = ", ".join(f"{LINKTYPES[t]} ({t})" if t in LINKTYPES else str(t) for t in types)
            why = ("net_pcap reads one link type and hands every frame on as Ethernet" if len(types) > 1
                   else "net_pcap hands every frame on as Ethernet")
            raise UsageError(f"{where}: rx_pcap={path} has link type{'s' if len(types) > 1 else ''} {kinds}: "
                             f"{why}; give flowsift the file itself instead")


def dpdk_port(spec_name, mbufs=8191):
    """The DPDK port for device text `spec_name` ('0', 'net_pcap0,rx_pcap=F'), the EAL set up
    first (once per process)."""
    try:
        from flowsift.io import _dpdk
    except ImportError:
        raise FlowsiftError("dpdk: sources need flowsift built with DPDK: apt-get install libdpdk-dev "
                            "(pkg-config libdpdk), then ./dev build") from None
    args = eal_args()
    for dev in vdevs(args):
        # (the EAL probes these itself, and says no more than that the probe failed)
        check_rx_pcaps(dev, f"--dpdk-args --vdev {dev.split(',', 1)[0]}")
    check_rx_pcaps(spec_name)
    try:
        _dpdk.eal_init(args)
        return _dpdk.open_port(spec_name, mbufs)
    except _dpdk.DpdkError as e:
        raise FlowsiftError(str(e)) from None


def _check_limits(count_name, count, duration_name, duration):
    # a count or a duration that ends the capture before it starts is a mistake, not a run
    if count is not None and count < 1:
        raise UsageError(f"{count_name}{count}: a number of packets, 1 or more")
    if count is not None and count > COUNT_MAX:
        raise UsageError(f"{count_name}{count}: a number of packets, at most 2^63 - 1")
    if duration is not None and not 0 < duration < math.inf:
        # (inf would run for ever and write "duration": Infinity, which is not JSON)
        raise UsageError(f"{duration_name}{written(duration)}: seconds, more than 0 and finite")


def with_limits(spec, count=None, duration=None):
    """The source spec with --count/--duration folded in; a file with --count is read as far as
    its first N packets (FirstPackets); --duration is for live sources."""
    if count is None and duration is None:
        return spec
    if not is_live(spec):
        if duration is not None:
            raise UsageError("--duration is for live sources (afpacket:IFACE, dpdk:PORT): a file's first N packets "
                             "are --count N")
        _check_limits("--count ", count, "--duration ", None)
        from flowsift.io.capture import FirstPackets
        return FirstPackets(spec, int(count))
    _check_limits("--count ", count, "--duration ", duration)
    opts = parse_spec(spec)[2]
    for option, value, key in (("--count", count, "count"), ("--duration", duration, "duration")):
        if value is not None and key in opts:
            # (folded into the spec, they were "option 'count' is given twice", of a spec never typed)
            raise UsageError(f"{option} {written(value) if key == 'duration' else value} and {key}={opts[key]} in "
                             f"{spec}: give one")
    if count is not None:
        spec += f",count={int(count)}"
    if duration is not None:
        spec += f",duration={float(duration):g}"
    return spec


class LiveCapture:
    """A live source with the face of a Capture: fill(batch), position, counters()."""
    live = True
    size = 0

    def __init__(self, spec, bpf=None):
        self.path = spec
        scheme, name, opts = parse_spec(spec)
        self.scheme, self.name, self.format = scheme, name, scheme
        self.bpf = bpf
        self.kernel_filtered = False    # the last batch is all the kernel's filter let through
        self.position = 0
        self.started = None
        self.stopped_by = None
        try:
            self.count = int(opts["count"]) if "count" in opts else None
        except ValueError:
            raise UsageError(f"{spec}: count={opts['count']!r} is not a number of packets") from None
        try:
            self.duration = float(opts["duration"]) if "duration" in opts else None
        except ValueError:
            raise UsageError(f"{spec}: duration={opts['duration']!r} is not a number of seconds") from None
        _check_limits(f"{spec}: count=", self.count, f"{spec}: duration=", self.duration)
        if scheme == "dpdk":
            self.version = "DPDK"
            self._src = dpdk_port(name, mbufs_of(spec, opts))
        elif scheme == "afpacket":
            self.version = "TPACKET_V3"
            self._src = self._afpacket(spec, name, opts, bpf)
            from flowsift.io._afpacket import AfPacketError
            self._failed = AfPacketError
        else:
            raise UsageError(f"{spec}: unknown live source (afpacket:IFACE or dpdk:PORT)")

    @staticmethod
    def _afpacket(spec, name, opts, bpf):
        known = {"ring", "block", "fanout", "hash", "timestamps", "count", "duration", "outgoing"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise UsageError(f"{spec}: unknown option {unknown[0]!r} (options: {', '.join(sorted(known))})")
        fanout = opts.get("fanout", "-1")
        if fanout != "-1" and not (fanout.isdigit() and int(fanout) <= 0xFFFF):
            # the kernel's fan-out group id is 16 bits
            raise UsageError(f"{spec}: fanout={fanout!r} is a group number from 0 to 65535")
        fanout = int(fanout)
        from flowsift.io import fanout as fan
        spread = opts.get("hash", "flow")
        if spread not in fan.HASHES:
            raise UsageError(f"{spec}: hash={spread!r} is flow (addresses and ports) or hosts (addresses only)")
        if "hash" in opts and fanout < 0:
            raise UsageError(f"{spec}: hash= says how a fan-out group shares the frames; give fanout=ID or --shards")
        block = _size(spec, "block", opts.get("block", "1M"))
        if block < 4096:
            raise UsageError(f"{spec}: block={opts.get('block')} is less than 4k, the smallest block the kernel takes")
        ring = _size(spec, "ring", opts.get("ring", "32M"))
        for key, size in (("block", block), ("ring", ring)):
            # the kernel takes a ring of whole blocks of a power-of-two size; a ring that is not
            # one would be cut down to fewer blocks without a word
            if size < 1 or size & (size - 1):
                raise UsageError(f"{spec}: {key}={opts.get(key)} is not a power of two (e.g. 1M, 32M)")
        if ring < block:
            raise UsageError(f"{spec}: ring={opts.get('ring')} is smaller than one block ({block} bytes)")
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if ring > memory // 4:
            # the kernel pins the whole ring: one past the machine's means is a typo (64G for 64M),
            # and asking for it sets the OOM killer on other processes
            raise UsageError(f"{spec}: ring={opts.get('ring')} is more than a quarter of this machine's memory "
                             f"({memory / 2**30:.1f} GiB): the kernel pins the whole ring (e.g. ring=256M)")
        ts = opts.get("timestamps", "sw")
        if ts not in ("sw", "hw"):
            raise UsageError(f"{spec}: timestamps= is sw or hw")
        outgoing = _boolean(spec, "outgoing", opts.get("outgoing", "yes"))
        from flowsift.io._afpacket import AfPacketError, AfPacketSource
        try:
            return AfPacketSource(name, block_size=block, block_nr=ring // block,
                                  bpf_program=_VLAN_GUARD + bpf.program(1) if bpf is not None else None, fanout=fanout,
                                  hw_timestamps=ts == "hw", outgoing=outgoing,
                                  fanout_program=fan.program(spread) if fanout >= 0 else None)
        except AfPacketError as e:
            raise FlowsiftError(str(e)) from None

    def fill(self, batch, timeout_ms=100):
        # with a count, no more than it: the frames past it stay where they are (inline, they
        # would otherwise be taken off the wire and neither processed nor forwarded)
        limit = -1 if self.count is None else max(0, self.count - self.position)
        if self.scheme == "afpacket":
            tagged, downs = self._src.vlan_stripped, self._src.went_down
            try:
                n = self._src.fill(batch, timeout_ms, limit)
            except self._failed as e:
                # the interface was deleted (or the socket failed): no frame will come again, and
                # the run ends as at a file's defect (what was read summarised, the error said, exit 2)
                self.stopped_by = "error"
                raise CaptureFormatError(f"afpacket:{self.name}", str(e).partition(": ")[2]) from None
            self.kernel_filtered = self._src.vlan_stripped == tagged
            if self._src.went_down != downs and not following():
                say(f"afpacket:{self.name} went down; waiting for it to come up")
        else:
            n = self._src.fill(batch, timeout_ms, limit)
        self.position += n
        return n

    def check(self):
        pass

    def interfaces(self):
        snaplen = 262144
        if self.scheme == "afpacket":
            # a frame fits in one block less its headers (130 bytes), plus the 802.1Q tag put back
            snaplen = min(snaplen, self._src.block_size - 130 + 4)
        return [{"index": 0, "linktype": 1, "snaplen": snaplen, "name": self.name, "tsresol": "1e-9",
                 "packets": self._src.received}]

    def counters(self):
        return {"records": self._src.received, "blocks_skipped": 0, "sections": 0, "caplen_gt_snaplen": 0,
                "caplen_gt_wirelen": 0, "bad_ts_fraction": 0, "bad_timestamp": 0}

    def live_counters(self):
        s = self._src.statistics()
        return {"source": self.path, "interface": self.name, "count": self.count,
                "duration": self.duration, "stopped_by": self.stopped_by,
                "seconds": round(time.monotonic() - self.started, 3) if self.started else 0, **s}

    def lost(self):
        """Frames lost so far for want of reading them in time: dropped by the kernel (ring
        full); for DPDK missed by the port or for want of buffers."""
        s = self._src.statistics()
        if "kernel_drops" in s:
            return s["kernel_drops"]
        return s.get("port_imissed", 0) + s.get("port_rx_nombuf", 0)

    def close(self):
        self._src.close()

    def batches(self, batch, decoder=None, on_progress=None, on_idle=None):
        """Fill `batch` again and again until the count, the duration, SIGINT or SIGTERM;
        `on_idle()` after each wait that brought nothing."""
        stop = []
        handler = lambda signum, frame: stop.append(signal.Signals(signum).name)
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        self.started = time.monotonic()
        down = getattr(self._src, "down", False)
        if on_listening is not None:
            on_listening(self, down)
        else:
            say(f"capturing on {self.name} ({self.scheme}); Ctrl-C ends")
            if down:
                # not an error: it may come up (frames come from then on)
                say(f"afpacket:{self.name} is down; waiting for it to come up")
        deadline = None if self.duration is None else self.started + self.duration
        try:
            while True:
                if stop:
                    self.stopped_by = stop[0]
                    # (before the handlers are put back: one that came twice is not a second stop)
                    take_stop(getattr(signal, stop[0]))
                    return
                if self.count is not None and self.position >= self.count:
                    self.stopped_by = "count"
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    self.stopped_by = "duration"
                    return
                n = self.fill(batch)
                if n == 0:
                    if on_idle is not None:
                        on_idle()
                    continue
                if self.bpf is not None and not self.kernel_filtered:
                    # DPDK has no kernel; AF_PACKET frames whose tag the kernel took off passed it
                    # (a batch of them is filtered whole: the others pass the same filter again)
                    self.bpf.apply(batch)
                if self.count is not None and self.position > self.count:
                    # a count is exact: the frames past it are left out of this batch
                    batch.n -= self.position - self.count
                    self.position = self.count
                if decoder is not None:
                    decoder.decode(batch)
                yield batch
                if on_progress is not None:
                    on_progress(self.position, 0)
        finally:
            if not stop:
                capture_ended()
            for s, h in old.items():
                signal.signal(s, stop_after_capture if h is signal.SIG_IGN else h)
