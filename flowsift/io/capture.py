"""Opening capture files: the Python face over the compiled reader."""
import os
import stat

from flowsift.errors import CaptureFormatError, FlowsiftError
from flowsift.io._batch import Batch, DEFAULT_BATCH
from flowsift.io._reader import CaptureReader

_MESSAGES = {
    1: "file cut short inside a record header ({a} bytes left)",
    2: "caplen {a} is absurd (libpcap's limit is 262144): corrupt record header",
    3: "caplen {a} exceeds the end of the file ({b} bytes left): the file is cut short",
    4: "file cut short inside a block header ({a} bytes left)",
    5: "block length {a} is below the 12-byte minimum: corrupt block header",
    6: "block length {a} is not a multiple of 4: corrupt block header",
    7: "block length {a} exceeds the 16 MiB limit: corrupt block header",
    8: "block length {a} exceeds the end of the file ({b} bytes left): the file is cut short",
    9: "block length {a} does not match its trailing copy {b}: corrupt block",
    10: "section header has an unknown byte-order magic 0x{a:08x}",
    11: "unsupported pcapng major version {a} (flowsift reads version 1)",
    12: "more than 65535 interfaces",
    13: "the file shrank to {a} bytes while being read (cut or rotated by another program): stopped there",
}


# sources that are interfaces, not files (flowsift.io.live)
LIVE_SCHEMES = ("afpacket:", "dpdk:")


def is_live(spec):
    return isinstance(spec, str) and spec.startswith(LIVE_SCHEMES)


class FirstPackets(os.PathLike):
    """A capture file read as far as its first `count` packets (`--count N` on a file, as
    `tcpdump -c N -r F`): given where its path would be, every reader of the run (the gateway,
    `-w`'s output, each shard) stops there, as if the file ended."""
    __slots__ = ("path", "count")

    def __init__(self, path, count):
        self.path = os.fspath(path)
        self.count = count

    def __fspath__(self):
        return self.path

    def __str__(self):
        return self.path

    def __repr__(self):
        return f"FirstPackets({self.path!r}, {self.count})"


class Capture:
    """An open pcap or pcapng file.

    >>> cap = open_capture("trace.pcap")
    >>> for batch in cap.batches():
    ...     batch.array["caplen"].sum()
    """

    def __init__(self, path, reader, size):
        self.path = str(path)
        self.size = size
        self._reader = reader

    @property
    def format(self):
        return "pcap" if self._reader.fmt == 1 else "pcapng"

    @property
    def first_packets(self):
        """N when the file is read as far as its first N packets (--count), else None."""
        return self._reader.max_records or None

    @property
    def version(self):
        return f"{self._reader.version_major}.{self._reader.version_minor}"

    @property
    def position(self):
        """Bytes of the file consumed so far (for progress)."""
        return self._reader.pos

    @property
    def reader(self):
        return self._reader

    def interfaces(self):
        return self._reader.interfaces()

    def fill(self, batch):
        """Refill `batch` with the next packets; 0 at the end (call check() then)."""
        return self._reader.fill(batch)

    def check(self):
        """Raise CaptureFormatError if reading stopped at a defect rather than the end."""
        r = self._reader
        if r.err:
            msg = _MESSAGES.get(r.err, "unreadable").format(a=r.err_a, b=r.err_b)
            if self.format == "pcap":
                raise CaptureFormatError(self.path, msg, position=r.err_pos, record=r.err_record)
            raise CaptureFormatError(self.path, msg, position=r.err_pos)

    def batches(self, capacity=DEFAULT_BATCH):
        """Yield one Batch, refilled in place, until the end; then raise any defect met."""
        batch = Batch(capacity)
        while self._reader.fill(batch):
            yield batch
        self.check()

    def counters(self):
        r = self._reader
        return {"records": r.records, "blocks_skipped": r.blocks_skipped, "sections": r.sections,
                "caplen_gt_snaplen": r.caplen_gt_snaplen, "caplen_gt_wirelen": r.caplen_gt_wirelen,
                "bad_ts_fraction": r.bad_ts_fraction, "bad_timestamp": r.bad_timestamp}

    def __repr__(self):
        return f"<Capture {self.path!r} {self.format} {self.size} bytes>"


def open_capture(path, bpf=None, count=None):
    """Open a pcap or pcapng file, or a live source (`afpacket:IFACE`, see flowsift.io.live;
    its filter `bpf` runs in the kernel); raises FlowsiftError with one line on anything
    unreadable. `count`: a file is read as far as its first `count` packets (--count)."""
    if is_live(path):
        from flowsift.io.live import LiveCapture       # (only then: a file run does without it)
        return LiveCapture(path, bpf)
    if isinstance(path, FirstPackets):
        count = path.count if count is None else min(count, path.count)
    path = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (we refuse FIFOs below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if path == "-":
            # (standard input is a pipe or a terminal: what /dev/stdin would be told)
            raise FlowsiftError("-: captures are not read from standard input (nor from pipes or devices): "
                                "save the capture to a file and give its path") from None
        raise FlowsiftError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FlowsiftError(f"{path}: is a directory, not a capture file") from None
    except PermissionError:
        raise FlowsiftError(f"{path}: permission denied") from None
    except OSError as e:
        raise FlowsiftError(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FlowsiftError(f"{path}: is a directory, not a capture file")
        if not stat.S_ISREG(st.st_mode):
            raise FlowsiftError(f"{path}: not a regular file (pipes and devices are not read; save the capture to a file first)")
        if st.st_size == 0 and os.pread(fd, 1, 0):
            # procfs/sysfs files report size 0 and are made up as they are read
            raise FlowsiftError(f"{path}: not a capture file (its size is unknown to the file system, as for /proc and /sys files)")
        reader = CaptureReader()
        problem = reader.open(path, fd, st.st_size)
        if problem:
            raise CaptureFormatError(path, problem, position=0)
        reader.max_records = count or 0
        return Capture(path, reader, st.st_size)
    finally:
        os.close(fd)   # the mapping stays valid after close


def batch_size():
    """Packets per batch: DEFAULT_BATCH, or FLOWSIFT_BATCH (smaller batches hand data to
    modules sooner and checkpoint more often; larger ones cost less per packet)."""
    from flowsift.errors import env_number
    return env_number("FLOWSIFT_BATCH", DEFAULT_BATCH, 1, 65536, "packets per batch")


def decoded_batches(source, decoder, bpf=None, on_progress=None, capacity=None, on_idle=None):
    """Yield each batch of `source` (a path or an open Capture) filtered (bpf) and decoded,
    reporting progress; at the end, raise the defect that stopped reading, if any. The one
    loop every command shares. `on_idle()` is called while a live source has nothing to read."""
    cap = source if hasattr(source, "fill") else open_capture(source, bpf)
    batch = Batch(capacity or batch_size())
    if getattr(cap, "live", False):
        # the kernel ran the filter
        yield from cap.batches(batch, decoder, on_progress, on_idle)
        return
    if bpf is not None and cap.format == "pcap":
        bpf.check(cap.interfaces()[0]["linktype"])     # one link type: a filter it refuses fails now
    while cap.fill(batch):
        if bpf is not None:
            bpf.apply(batch)
        decoder.decode(batch)
        yield batch
        if on_progress is not None:
            on_progress(cap.position, cap.size)
    cap.check()
    from flowsift.io.reasons import check_decodable
    check_decodable(cap.path, decoder)
    if bpf is not None:
        bpf.finish()
