"""pcap writer (classic format, micro- or nanosecond timestamps)."""
import struct

from flowsift.errors import FlowsiftError

_FILE_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
# libpcap's largest snaplen; readers reject records above it.
MAX_SNAPLEN = 262144


class PcapWriter:
    """Writes frames to a pcap file: `write(ts_ns, frame, wirelen=None)` or `write_batch(batch)`.

    Use as a context manager or call close(). Frames longer than `snaplen` are cut to it,
    and their on-wire length is kept, as a capture tool would.
    """

    def __init__(self, path, linktype=1, snaplen=MAX_SNAPLEN, nanosecond=True, shown=None):
        # `path`: a file name, or a binary file open for writing (closed by close() too);
        # `shown`: the name errors give (a file written under a temporary name)
        if not 0 < snaplen <= MAX_SNAPLEN:
            raise FlowsiftError(f"snaplen {snaplen} out of range 1..{MAX_SNAPLEN}")
        opened = hasattr(path, "write")
        self.path = str(path.name if opened else path)
        self.shown = self.path if shown is None else str(shown)
        self.linktype = linktype
        self.snaplen = snaplen
        self.nanosecond = nanosecond
        self.packets = 0
        try:
            self._f = path if opened else open(path, "wb")
        except OSError as e:
            raise FlowsiftError(f"{self.shown}: cannot write: {e.strerror}") from None
        self._put(_FILE_HEADER.pack(MAGIC_NS if nanosecond else MAGIC_US, 2, 4, 0, 0, snaplen, linktype))

    def _put(self, data):
        try:
            self._f.write(data)
        except OSError as e:
            raise FlowsiftError(f"{self.shown}: cannot write: {e.strerror}") from None

    def write(self, ts_ns, frame, wirelen=None):
        data = bytes(frame[:self.snaplen])
        sec, frac = divmod(int(ts_ns), 1_000_000_000)
        if not self.nanosecond:
            frac //= 1000
        wire = len(frame) if wirelen is None else max(wirelen, len(data))
        self._put(_RECORD_HEADER.pack(sec, frac, len(data), wire) + data)
        self.packets += 1

    def write_batch(self, batch):
        """Write every packet of a Batch (not per-packet fast yet: for tools and -w)."""
        arr = batch.array
        for i in range(len(batch)):
            self.write(int(arr["ts_ns"][i]), batch.frame(i), int(arr["wirelen"][i]))

    def close(self):
        if not self._f.closed:
            try:
                self._f.close()
            except OSError as e:          # (what the buffer held could not be written)
                raise FlowsiftError(f"{self.shown}: cannot write: {e.strerror}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
