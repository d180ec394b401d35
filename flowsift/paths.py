"""Output paths checked against input paths before anything is opened for writing, and output
files whose write errors name them.

Opening an output with O_TRUNC that is the input (the same name, a symlink to it, a hard link)
empties the capture before it is read: a mapped capture then dies of SIGBUS. Names are not
enough to tell; the file's identity (st_dev, st_ino) after symlinks is.

A result that cannot be written (a full disk, a device that fails) is the user's to fix, as an
input that cannot be read is: one line naming the output (`stdout: cannot write: No space left
on device`), exit 2, never an internal error. The outputs the command line writes through
Python files (standard output, --events) are `_Named` files, whose writes say so wherever they
fail: at a write, at a flush, or at the close that writes what a buffer still held.
"""
import io
import os
import stat
import sys

from flowsift.errors import FlowsiftError, UsageError


def identity(path):
    """(st_dev, st_ino) of what `path` names after symlinks, or None if nothing is there."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _inputs(inputs):
    """{identity: what it is} of the input files; a directory stands for the files in it
    (a store: its record files are read)."""
    out = {}
    for what, path in inputs:
        if path is None:
            continue
        ident = identity(path)
        if ident is None:
            continue
        out[ident] = f"the {what}"
        if os.path.isdir(path):
            try:
                with os.scandir(path) as it:
                    for e in it:
                        if e.is_file():
                            out.setdefault(identity(e.path), f"a file of the {what} {path}")
            except OSError:
                pass
    return out


def refuse_overwrite(inputs, outputs):
    """Raise UsageError if an output path is an input or another output. `inputs`: (what, path)
    pairs (e.g. ("input capture", "in.pcap"); path None or a live source's name is skipped, as
    is one that does not exist); `outputs`: (option, path) pairs, path None skipped."""
    for option, path in outputs:
        if path == "":
            raise UsageError(f"{option} '': an empty path names nothing")
    seen = _inputs(inputs)
    taken = {}
    for option, path in outputs:
        if path is None or path == "-":
            continue
        ident = identity(path)
        if ident is not None and ident in seen:
            raise UsageError(f"{option} {path} is {seen[ident]}")
        if ident is not None and _char_device(path):
            continue                # (/dev/null takes any number of writers: no clash)
        key = ident or os.path.realpath(path)
        if key in taken:
            raise UsageError(f"{taken[key]} and {option} {path} are the same file")
        taken[key] = f"{option} {path}"


def _char_device(path):
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_output_file(option, path):
    """Raise UsageError unless `path` can name an output file (a pcap: -w): not empty, not
    named for another format (check_pcap_name), not a directory, in a directory that exists and
    can be written (a file, a device or a pipe that is there is opened as it is). Checked before
    anything is read: a run must not end by failing to write."""
    if path == "":
        raise UsageError(f"{option} '': an empty file name")
    check_pcap_name(option, path)
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a directory")
    if os.path.exists(path) and not os.path.isfile(path):
        return                      # (a device or a pipe: written as it is)
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: the directory {parent} cannot be written")


# names a -w file may not have: -w writes a classic pcap, and a name that says otherwise would
# be taken at its word (tools that go by the name, a reader that expects pcapng blocks)
NOT_PCAP_NAMES = (".pcapng", ".ntar", ".gz", ".tgz", ".zst", ".zstd", ".xz", ".bz2", ".lz4", ".z", ".7z",
                  ".zip")     # (-w writes a classic pcap, and compresses nothing)


def check_pcap_name(option, path):
    """Raise UsageError when `path`, a pcap output, is named for another format (out.pcapng),
    before anything is read; a device or a pipe is not named for a format."""
    suffix = next((s for s in NOT_PCAP_NAMES if path.lower().endswith(s)), None)
    if suffix is None or (os.path.exists(path) and not os.path.isfile(path)):
        return
    if suffix not in (".pcapng", ".ntar"):
        raise UsageError(f"{option} {path}: {option} writes an uncompressed pcap, not {suffix[1:]}: "
                         f"name it .pcap (and compress it afterwards)")
    raise UsageError(f"{option} {path}: {option} writes a pcap (classic format), not {suffix[1:]}: name it .pcap")


class _Named(io.FileIO):
    """A raw output file whose write errors name it (`SHOWN: cannot write WHAT: reason`, a
    FlowsiftError). A reader that went away (EPIPE) stays a BrokenPipeError: the command ends
    quietly then (cli.main)."""

    def __init__(self, file, shown, what="", closefd=True):
        super().__init__(file, "w", closefd=closefd)
        self.shown = shown
        self.what = what
        self.failed = None          # the error a write met: the output takes nothing after it
        # where this output began in a regular file (a shell's `>> log` too), else None
        try:
            self.began = os.lseek(self.fileno(), 0, os.SEEK_CUR) if stat.S_ISREG(os.fstat(self.fileno()).st_mode) \
                else None
        except OSError:
            self.began = None

    def write(self, data):
        if self.failed is not None:
            # the error was said: what a buffer still holds, flushed as the output closes (or
            # Python exits), begins mid-line and would land after the cut, in the room it made
            return len(data)
        try:
            return super().write(data)
        except BrokenPipeError:
            raise
        except OSError as e:
            self.failed = f"{self.shown}: cannot write{self.what}: {e.strerror}"
            self._cut_to_line()
            raise FlowsiftError(self.failed) from None

    def _cut_to_line(self):
        # a full disk took part of a line (the buffer goes out in blocks): the file is cut back
        # to its last whole line, never below where this output began, so that a reader of the
        # lines (JSON lines) meets no half of one
        if self.began is None:
            return
        fd = self.fileno()
        try:
            end = os.lseek(fd, 0, os.SEEK_CUR)
            # (opened for writing only: read through a descriptor of its own)
            rd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
            try:
                at = end
                while at > self.began:
                    start = max(self.began, at - 65536)
                    nl = os.pread(rd, at - start, start).rfind(b"\n")
                    if nl >= 0:
                        at = start + nl + 1
                        break
                    at = start
            finally:
                os.close(rd)
            if at < end:
                os.ftruncate(fd, at)
                os.lseek(fd, at, os.SEEK_SET)
        except OSError:
            pass                    # (the error said is the write's)


def open_output(path, what=""):
    """`path` opened for writing text (created, or emptied), its write errors named; one that
    cannot be opened is a FlowsiftError (`PATH: cannot write WHAT: reason`). A FIFO is opened as
    it is, as tee opens one: the open waits for a reader."""
    try:
        raw = _Named(path, path, f" {what}" if what else "")
    except OSError as e:
        raise FlowsiftError(f"{path}: cannot write{' ' + what if what else ''}: {e.strerror}") from None
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")


def name_stdout():
    """Make sys.stdout a stream whose write errors say `stdout: cannot write: reason` (the same
    descriptor, encoding and buffering). A stdout that is closed, or not a file (a test's
    capture), is left as it is."""
    s = sys.stdout
    try:
        fd = s.fileno()
    except (AttributeError, OSError, ValueError):
        return
    s.flush()
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_Named(fd, "stdout", closefd=False)), encoding=s.encoding,
                                  errors=s.errors, line_buffering=s.line_buffering, write_through=s.write_through)
