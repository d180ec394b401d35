"""Reading record files (pure Python: struct over read-only mappings). For tools and tests;
modules read streams through StreamPointer."""
import mmap
import json
import os
import re
import stat
from collections import namedtuple

from flowsift.errors import FlowsiftError
from flowsift.streams import format as F

Record = namedtuple("Record", [name for name, _, _ in F.RECORD_FIELDS] + ["index", "stream_offset"])
GapEntry = namedtuple("GapEntry", "dir reason record_index offset length")
# per direction (client to server, server to client): packets and payload bytes captured,
# retransmitted copies included; records flagged retransmission or conflict, both directions
Totals = namedtuple("Totals", "packets bytes retransmissions conflicts")


# regions up to this size are read with pread rather than mapped (see RecordFile._region)
SMALL_REGION = 65536

# records whose ids are compared in one step (RecordFile.first_unwritten): 1 MiB of them
SCAN_RECORDS = 8192

# The reason of the gap that stands for stream bytes a file shorter than its layout lacks
# (RecordFile.gaps): no gap entry of a file has it.
TRUNCATED = "truncated"

# The reason of the ranges below a direction's `reclaimed` that no gap entry covers: delivered,
# then given back (RecordFile.given_back), as a StreamPointer names them too.
RECLAIMED = "reclaimed"


def merged(ranges):
    """(start, stop) ranges sorted and merged where they overlap or touch."""
    out = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1][1] = b
        else:
            out.append([a, b])
    return out


class StoreError(FlowsiftError):
    """A record file or store that cannot be read."""


class RecordFile:
    """One connection's record file, opened read-only and mapped PROT_READ.

    `records()` yields only published records (complete by construction). If the gateway
    stopped without closing the file, `cut` is True and `unpublished` counts the complete
    records found after the published ones. Only a regular file whose header places its regions
    where this version does, and counts no further than they go, is opened (StoreError).
    """

    def __init__(self, path):
        self.path = str(path)
        self._desc = None              # the descriptor (None: closed)
        self._released = False         # closed by release(): opened again when next read
        self.on_reopen = None          # called when release()d and opened again (a reader's budget)
        try:
            # (O_NONBLOCK: a FIFO by that name would block the open until a writer came)
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise StoreError(f"{self.path}: no such record file") from None
        except OSError as e:
            raise StoreError(f"{self.path}: cannot open: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{self.path}: not a record file: {_kind(st.st_mode)}, not a regular file")
            head = os.pread(fd, F.HEADER_SIZE, 0)
            # what the bytes there say comes first: a short file of another kind or version is
            # named as such, not as a cut record file
            magic = head[:len(F.MAGIC)]
            if magic != F.MAGIC[:len(magic)]:
                raise StoreError(f"{self.path}: not a flowsift record file (magic {magic!r})")
            if len(head) >= 12 and (version := int.from_bytes(head[8:12], "little")) != F.VERSION:
                raise StoreError(f"{self.path}: record file format version {version}; "
                                 f"this flowsift reads version {F.VERSION}")
            if len(head) < F.HEADER_SIZE:
                raise StoreError(f"{self.path}: cut short: {len(head)} bytes, the header alone is {F.HEADER_SIZE}")
            first = F.parse_header(head)
            problem = F.fixed_field_problem(first)
            if problem:
                raise StoreError(f"{self.path}: {problem}")
        except BaseException:
            os.close(fd)
            raise
        self._desc = fd
        self._ident = (st.st_dev, st.st_ino)   # a file opened again must be this one
        from flowsift.streams._pointer import Mapping, file_size
        self._Mapping, self._file_size = Mapping, file_size
        # the header is read with pread; a file whose header is polled a third time gets a
        # mapping of it then (most files are read once or twice: mapping, faulting and
        # unmapping a page costs more than two reads)
        self._hdr = None
        self._reads = 0
        self._maps = {}
        self._size = st.st_size
        self._first = first                # the first whole parse: what never changes comes from it
        try:
            self.refresh()
        except BaseException:
            self.close()
            raise

    def refresh(self):
        """Re-read the header: what the gateway has published since. A file shorter than its
        layout (cut by hand, by a full disk, or while it was open) is read only as far as it
        goes: records and gap entries past its end are not counted, and the stream bytes it
        lacks are gaps of reason "truncated" (gaps()). A header counting past its regions is a
        StoreError."""
        # measured at every header read, never per read: what follows reads nothing past this end
        # (a file another process cuts between two header reads can still fault a mapped reader)
        size = self._size = self._file_size(self._fd)
        if size < F.HEADER_SIZE:
            raise StoreError(f"{self.path}: cut short: {size} bytes, the header alone is {F.HEADER_SIZE}")
        if self._reads == 0:
            h = dict(self._first)
        else:
            if self._hdr is None and self._reads >= 2:
                self._hdr = self._Mapping(self._fd, F.HEADER_SIZE, 0)
            buf = self._hdr if self._hdr is not None else os.pread(self._fd, F.HEADER_SIZE, 0)
            h = F.parse_header_again(buf, self._first)
        self._reads += 1
        problem = F.counter_problem(h)
        if problem:
            raise StoreError(f"{self.path}: {problem}")
        self.truncated = size < F.FILE_SIZE
        if self.truncated:
            # records and gap entries past the end are not there to read: counted no further
            # (`header_says` keeps the header's counts, for `missing`); the streams keep their
            # ends, and what of them the file lacks is a gap of reason "truncated" (gaps())
            self.header_says = {k: h[k] for k in ("records", "gaps")}
            fit = lambda off, unit: max(0, (size - off) // unit)
            h["records"] = min(h["records"], fit(h["records_off"], F.RECORD_SIZE))
            h["gaps"] = min(h["gaps"], fit(h["gaps_off"], F.GAP_SIZE))
        self.header = h
        return h

    @property
    def cut_at(self):
        """Where a file shorter than its layout ends (its size), else None."""
        return self._size if self.truncated else None

    def in_file(self, direction):
        """The stream offset where direction `direction`'s bytes in the file end: its `end`,
        or less in a file cut inside (or before) its data region."""
        end = self.header[f"end{direction}"]
        if self.truncated:
            end = min(end, max(0, self._size - self.header[f"data_off{direction}"]))
        return end

    @property
    def has_bytes(self):
        """False when the gateway counted the streams' bytes but did not store them (a chain
        whose modules all declared that they do not read them)."""
        return not self.header["flags"] & F.HF_NO_BYTES

    def require_bytes(self):
        if not self.has_bytes:
            raise StoreError(f"{self.path}: the streams' bytes were not stored (none of the run's modules reads them)")

    @property
    def closed_by_gateway(self):
        return bool(self.header["flags"] & F.HF_CLOSED)

    def _region(self, offset, length):
        """Bytes [offset, offset+length) of the file: a copy read with pread when small (cheaper
        than mapping and unmapping a few pages, which a connection's records usually are), else
        through a read-only mapping."""
        if length <= 0:
            return memoryview(b"")
        if length <= SMALL_REGION:
            data = os.pread(self._fd, length, offset)
            if len(data) < length:
                raise StoreError(f"{self.path}: cut short at {offset + len(data)} bytes")
            return memoryview(data)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        key = (start, offset + length - start)
        m = self._maps.get(key)
        if m is None:
            m = self._Mapping(self._fd, key[1], start)
            self._maps = {key: m}          # keep one mapping: tools walk forward
        return memoryview(m)[offset - start:offset - start + length]

    def records(self, start=0, stop=None, unpublished=False):
        """Published records [start, stop) (with `unpublished`, the complete ones after them
        too: `unpublished`). A record of a direction other than 0 and 1 has no stream offset
        (None)."""
        h = self.header
        last = h["records"] + (self.unpublished if unpublished else 0)
        stop = last if stop is None else min(stop, last)
        origin = (h["origin0"], h["origin1"])
        for i in range(start, stop):
            raw = self._region(h["records_off"] + i * F.RECORD_SIZE, F.RECORD_SIZE)
            fields = F.RECORD_STRUCT.unpack(raw)
            rec = dict(zip([n for n, _, _ in F.RECORD_FIELDS], fields))
            yield Record(**rec, index=i, stream_offset=rec["seq_offset"] if rec["proto"] != 6 else
                         rec["seq_offset"] - origin[rec["dir"]] if rec["dir"] < 2 else None)

    def record_array(self, start=0, stop=None, unpublished=False):
        """Published records [start, stop) (with `unpublished`, the complete ones after them
        too) as a read-only numpy structured array (a view of the mapping, or of a copy for a
        few records)."""
        import numpy as np
        h = self.header
        last = h["records"] + (self.unpublished if unpublished else 0)
        stop = last if stop is None else min(stop, last)
        n = max(0, stop - start)
        view = self._region(h["records_off"] + start * F.RECORD_SIZE, n * F.RECORD_SIZE)
        return np.frombuffer(view, dtype=F.record_dtype(), count=n)

    def totals(self, start=0, stop=None):
        """Totals over the published records [start, stop), counted in one pass (see Totals)."""
        from flowsift.streams._pointer import record_totals
        h = self.header
        stop = h["records"] if stop is None else min(stop, h["records"])
        n = max(0, stop - start)
        p0, p1, b0, b1, retrans, conflicts = record_totals(
            self._region(h["records_off"] + start * F.RECORD_SIZE, n * F.RECORD_SIZE), n)
        return Totals((p0, p1), (b0, b1), retrans, conflicts)

    def gaps(self, direction=None):
        """The published gap entries, in the file's order; for a file shorter than its layout,
        then the ranges of its streams that the header counts and the file lacks (no gap entry
        covers them), of reason "truncated". Those of one direction (`direction`) come by
        offset. An entry that is no gap (a direction other than 0 and 1, an offset or length out
        of range: a count past what was written) is a StoreError."""
        h = self.header
        out = []
        table = self._region(h["gaps_off"], h["gaps"] * F.GAP_SIZE)
        for j, (d, reason, rec, off, ln) in enumerate(F.GAP_STRUCT.iter_unpack(table)):
            if d > 1 or off < 0 or ln <= 0 or off > F.MAX_END[d] - ln:
                raise StoreError(f"{self.path}: gap entry {j} (of {h['gaps']:,} the header counts) is no gap: "
                                 f"direction {d}, offset {off:,}, length {ln:,}")
            out.append(GapEntry(d, F.GAP_REASONS.get(reason, reason), rec, off, ln))
        if self.truncated:
            out += self._lost(out)
        if direction is None:
            return out
        return sorted((g for g in out if g.dir == direction), key=lambda g: g.offset)

    def _lost(self, entries):
        # the ranges of each direction in [where the file ends, end) that no gap entry covers
        # (nor what was given back: not lost, punched out), as "truncated" gap entries
        h, out = self.header, []
        if not self.has_bytes:
            return out                  # (nothing was stored: the file lacks nothing)
        for d in (0, 1):
            end = h[f"end{d}"]
            pos = max(self.in_file(d), min(h[f"reclaimed{d}"], end))
            for off, stop in merged((g.offset, g.offset + g.length) for g in entries if g.dir == d):
                if stop <= pos:
                    continue
                if off >= end:
                    break
                if off > pos:
                    out.append(GapEntry(d, TRUNCATED, h["records"], pos, off - pos))
                pos = stop
            if pos < end:
                out.append(GapEntry(d, TRUNCATED, h["records"], pos, end - pos))
        return out

    def delivered(self, direction):
        """Bytes of the direction below its `end` that no gap covers (adjacent, overlapping or
        repeated entries counted once; a file's "truncated" ranges are gaps too): what the file
        holds of the stream, what was given back since included."""
        end, covered = self.header[f"end{direction}"], 0
        for off, stop in merged((g.offset, g.offset + g.length) for g in self.gaps(direction)):
            covered += max(0, min(stop, end) - max(off, 0))
        return end - covered

    def given_back(self, direction):
        """The ranges of a direction below its `reclaimed` (and its `end`) that no gap covers:
        bytes delivered, then punched out of the file (they read as zeros), as gaps of reason
        "reclaimed", by offset. No gap entry has that reason."""
        h, out = self.header, []
        upto = min(max(0, h[f"reclaimed{direction}"]), h[f"end{direction}"])
        pos = 0
        for off, stop in merged((g.offset, g.offset + g.length) for g in self.gaps(direction)):
            if off >= upto:
                break
            if off > pos:
                out.append(GapEntry(direction, RECLAIMED, h["records"], pos, off - pos))
            pos = max(pos, stop)
        if pos < upto:
            out.append(GapEntry(direction, RECLAIMED, h["records"], pos, upto - pos))
        return out

    def readable(self, direction):
        """Bytes of the direction a reader can read now: those delivered (delivered()) less those
        given back since (given_back()); 0 when the streams' bytes were not stored."""
        if not self.has_bytes:
            return 0
        return self.delivered(direction) - sum(g.length for g in self.given_back(direction))

    def first_unwritten(self, start, stop):
        """The index of the first record of [start, stop) that was never written: its id is not
        `first_record_id` + its index (mod 2^64), or its `caplen` is 0 (every written record has
        one; a slot never written is zeros, and its id 0 passes when that sum wraps to 0): where
        the records written end, whatever a header says. `stop` if none (or where the file or the
        records region ends). Ids are compared SCAN_RECORDS at a time: a header counting
        billions of records never written costs one step."""
        import numpy as np
        h = self.header
        room = (min(self._size, h["gaps_off"]) - h["records_off"]) // F.RECORD_SIZE
        stop = max(start, min(stop, room))
        i = start
        while i < stop:
            n = min(SCAN_RECORDS, stop - i)
            arr = np.frombuffer(self._region(h["records_off"] + i * F.RECORD_SIZE, n * F.RECORD_SIZE),
                                dtype=F.record_dtype(), count=n)
            bad = np.flatnonzero((arr["record_id"] != np.arange(i, i + n, dtype=np.uint64)
                                  + np.uint64(h["first_record_id"])) | (arr["caplen"] == 0))
            if len(bad):
                return i + int(bad[0])
            i += n
        return stop

    @property
    def unpublished(self):
        """Complete records written after the published count (a gateway stopped mid-batch)."""
        n = self.header["records"]
        return self.first_unwritten(n, F.MAX_RECORDS) - n

    @property
    def missing(self):
        """None, or for a file shorter than its layout (cut by hand, a full disk) that lacks
        something its header counts: one line on where it ends and what its header says lies
        beyond. (A file cut where only holes lie, a trailing gap's say, lacks nothing.)"""
        if not self.truncated:
            return None
        says, h = self.header_says, self.header
        parts = []
        if says["records"] != h["records"]:
            parts.append(f"{says['records']:,} records ({h['records']:,} in the file)")
        if says["gaps"] != h["gaps"]:
            parts.append(f"{says['gaps']:,} gaps ({h['gaps']:,} in the file)")
        gaps = self.gaps()
        for d, name in ((0, "c2s"), (1, "s2c")):
            lost = sum(g.length for g in gaps if g.dir == d and g.reason == TRUNCATED)
            if lost:
                held = self.delivered(d)
                parts.append(f"{held + lost:,} {name} bytes ({held:,} in the file)")
        if not parts:
            return None
        return f"truncated: the file ends at byte {self._size:,}, its header says " + ", ".join(parts)

    @property
    def cut(self):
        return not self.closed_by_gateway or self.missing is not None

    def data(self, direction, offset=0, length=None):
        """Delivered bytes of a direction (a copy), cut at its delivered end: a range that goes
        past it comes back shorter, or empty. Gap ranges are holes: callers skip them (or ask
        stream_bytes, which says None for a range the file does not hold whole)."""
        self.require_bytes()
        end = self.in_file(direction)          # (what a cut file lacks is a "truncated" gap)
        length = end - offset if length is None else min(length, end - offset)
        return bytes(self._region(self.header[f"data_off{direction}"] + offset, length))

    def stream_bytes(self, direction, offset, length):
        """Stream bytes [offset, offset + length) of a direction (a copy) when the file holds
        every one of them as delivered: at or past what was given back, below the direction's
        delivered end, in no gap. Otherwise None (never fewer bytes than asked for): bytes
        held out of order (not delivered yet: they are once the hole before them fills), lost
        in a gap, given back, or missing from a file cut short."""
        self.require_bytes()
        h = self.header
        if length <= 0:
            return b""
        end = offset + length
        if offset < max(0, h[f"reclaimed{direction}"]) or end > self.in_file(direction):
            return None
        if h["gaps"] or self.truncated:
            for g in self.gaps(direction):
                if g.offset >= end:
                    break                       # (by offset)
                if offset < g.offset + g.length:
                    return None
        return bytes(self._region(h[f"data_off{direction}"] + offset, length))

    @property
    def _fd(self):
        fd = self._desc
        return fd if fd is not None else self._reopen()

    def _reopen(self):
        if not self._released:
            # (a stream pointer or flow a module kept past its connection's end: the file may be
            # given back, emptied and used for another connection by now)
            raise StoreError(f"{self.path}: the record file was closed: its connection ended for this reader")
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot open it again: {e.strerror}") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._ident:
            os.close(fd)
            raise StoreError(f"{self.path}: not the file opened before (replaced since): not read")
        self._desc, self._released = fd, False
        if self.on_reopen is not None:
            self.on_reopen()
        return fd

    def release(self):
        """Close the descriptor and mappings, to stay within a reader's budget of open files;
        the file opens again when next read, as the same object (stream pointers and flows that
        hold it go on: detach() a pointer's mapping first), and `on_reopen()` is called then."""
        if self._desc is not None:
            self._maps = {}
            self._hdr = None
            os.close(self._desc)
            self._desc, self._released = None, True

    def reopen(self):
        """Open a release()d file again now (nothing if it is open)."""
        if self._desc is None:
            self._reopen()

    def close(self):
        self._maps = {}                    # mappings go when the last view of them does
        self._hdr = None
        self._released = False             # (for good: reading it now is a StoreError)
        if getattr(self, "_desc", None) is not None:
            os.close(self._desc)
            self._desc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# A record file's name: c, the connection number in 8 digits or more (as the gateway writes it,
# "c%08u.rec"), .rec
RECORD_NAME = re.compile(r"c(\d{8,10})\.rec")


def record_name(name):
    """The connection number a record file's name gives, or None for any other name."""
    m = RECORD_NAME.fullmatch(name)
    if m is None or f"{int(m.group(1)):08d}" != m.group(1):
        return None
    return int(m.group(1))


def _kind(mode):
    return {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
            stat.S_IFBLK: "a device", stat.S_IFLNK: "a symbolic link"}.get(stat.S_IFMT(mode), "a special file")


def store_files(directory):
    """The record files of a store directory, in connection order: regular files named as the
    gateway names them (`c00000007.rec`); other entries are not record files."""
    try:
        with os.scandir(directory) as it:
            # (not following a symbolic link: a record file is the store's own, never another's)
            found = [(conn, e.path) for e in it
                     if (conn := record_name(e.name)) is not None and e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        raise StoreError(f"{directory}: no such store directory") from None
    return [path for _, path in sorted(found)]


def not_record_files(directory):
    """Entries of a store directory named as record files that are not regular files (a
    directory, a FIFO, a symbolic link...), each with what it is: store_files() leaves them
    out."""
    out = []
    with os.scandir(directory) as it:
        for e in it:
            if record_name(e.name) is not None and not e.is_file(follow_symlinks=False):
                try:
                    out.append((e.name, _kind(e.stat(follow_symlinks=False).st_mode)))
                except OSError as err:
                    out.append((e.name, f"cannot be read: {err.strerror}"))
    return sorted(out)


# What store.json says it is (flowsift.gateway writes it): a manifest of another format or
# version is not read as this one.
MANIFEST_FORMAT = "flowsift record store"
MANIFEST_VERSION = 1
# its fields a reader goes by, and what each must be
_MANIFEST_FIELDS = (("complete", (bool,), "true or false"), ("keep", (bool,), "true or false"),
                    ("files", (int, type(None)), "a number"), ("records", (int, type(None)), "a number"),
                    ("error", (str, type(None)), "text or null"), ("source", (str, type(None)), "text or null"))

# The gateway writes store.json padded to a page (flowsift.gateway.MANIFEST_ROOM): one much
# larger is not a manifest, and is not read whole (a link to /dev/zero would fill the memory).
MANIFEST_MAX = 1 << 20


def read_manifest(directory):
    """(the store's store.json as a dict, or None; None, or what is wrong with it, one line
    starting "store.json: "). Only a regular file is opened (a FIFO would block for ever, a
    device such as /dev/zero never end), and only MANIFEST_MAX bytes of it are read."""
    path = os.path.join(directory, "store.json")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            return None, "store.json: cannot be read: a dangling symbolic link"
        return None, "store.json: missing (the gateway writes it first: these files come from elsewhere)"
    except OSError as e:
        return None, f"store.json: cannot be read: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return None, f"store.json: cannot be read: {_kind(st.st_mode)}, not a regular file"
    try:
        # (O_NONBLOCK, and fstat again: it may have been swapped for something else since)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        return None, f"store.json: cannot be read: {e.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"store.json: cannot be read: {_kind(st.st_mode)}, not a regular file"
        chunks, got = [], 0
        while got <= MANIFEST_MAX:
            chunk = os.read(fd, MANIFEST_MAX + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        return None, f"store.json: cannot be read: {e.strerror}"
    finally:
        os.close(fd)
    if got > MANIFEST_MAX:
        return None, f"store.json: too large (over {MANIFEST_MAX:,} bytes): not a store manifest"
    try:
        manifest = json.loads(b"".join(chunks))
    except RecursionError:
        return None, "store.json: cannot be read: JSON nested too deeply"
    except ValueError as e:
        return None, f"store.json: cannot be read: {e}"
    if not isinstance(manifest, dict):
        return None, f"store.json: cannot be read: a JSON {type(manifest).__name__}, not an object"
    return manifest, manifest_problem(manifest)


def manifest_problem(manifest):
    """None, or why a store.json (a JSON object) is not a manifest this flowsift reads: another
    format or version, or a field it goes by that is not what it must be."""
    if manifest.get("format") != MANIFEST_FORMAT:
        return f"store.json: not a flowsift store manifest (format {manifest.get('format')!r})"
    if manifest.get("version") != MANIFEST_VERSION:
        return (f"store.json: store manifest version {manifest.get('version')!r}; "
                f"this flowsift reads version {MANIFEST_VERSION}")
    for name, kinds, what in _MANIFEST_FIELDS:
        value = manifest.get(name)
        if name in ("complete", "keep") and name not in manifest:
            return f"store.json: field {name} is missing; {what}"
        # (True is an int to Python: not a count here)
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)) or (
                int in kinds and isinstance(value, int) and value < 0):
            return f"store.json: field {name} is {json.dumps(value)}; {what}"
    return None


def check_store(directory):
    """Raise StoreError unless `directory` is a store: it holds record files or a store.json
    (an empty directory, or any other, would read as a store without connections)."""
    if not os.path.isdir(directory):
        raise StoreError(f"{directory}: no such store directory")
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise StoreError(f"{directory}: cannot read the store: {e.strerror}") from None
    if "store.json" not in names and not any(record_name(n[:-4] if n.endswith(".new") else n) is not None
                                             for n in names):
        raise StoreError(f"{directory}: not a store (no record files, no store.json)")


def check_kept_store(directory):
    """check_store(), and refuse a store whose run let its record files go (no --keep): there
    is nothing in it to replay."""
    check_store(directory)
    note = retired_note(directory)
    if note:
        raise StoreError(note)


def retired_note(directory):
    """Why a store holds no record files when its run let them go as it went (no --keep), or
    None."""
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    if any(record_name(n) is not None for n in names):
        return None
    manifest, problem = read_manifest(directory)
    if problem:
        return None
    if isinstance(manifest, dict) and manifest.get("keep") is False and manifest.get("files"):
        return (f"{directory}: its run let its {manifest['files']:,} record files go as connections finished "
                f"(run it with --keep to keep them)")
    return None
