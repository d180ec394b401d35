# cython: language_level=3, wraparound=True, boundscheck=True
"""A Sink that writes each direction's delivered bytes to its own file, plus index.jsonl.

Bytes are buffered per direction in C (BUF bytes, allocated while the direction is live).
A full buffer is handed to a writer thread, which appends it with write(2) through descriptors
kept in a small LRU cache sized from the descriptor limit (a capture with any number of live
connections never runs out of them) and updates the direction's SHA-256 (OpenSSL, once per
buffer, never per packet): the system calls and the hashing, more than half the time of
writing streams to tmpfs, run beside reassembly. Confined to one CPU, the same lists of jobs
are run inline, without the thread.
Index lines are written when connections end, formatted in C into a buffer that goes out with
write(2) (as json.dumps would write them), never before the bytes they describe; the writer
fills in each line's digest when it has hashed the direction's last bytes, and stamps the file
with the time of the direction's last packet.

A gap is spliced out of its file (the bytes after it follow the bytes before it) and listed in
the index with its place in the file; with zero filling, a gap before bytes is written as zeros
(a sparse extension of the file), so that file offsets are stream offsets.

The output directory is checked when the sink is made and touched only at the first connection
(or at the end): a run that fails on its input leaves an earlier run's output as it was. A run
that fails to write removes the stream files its index does not list (see `close`).
"""
import json
import os
import re
import stat
from array import array as _array

from cpython.conversion cimport PyOS_double_to_string, Py_DTSF_ADD_DOT_0
from cpython.mem cimport PyMem_Free

from libc.errno cimport errno, EEXIST, ENOMEM
from libc.stdint cimport int32_t, int64_t, uint64_t, uint32_t, uint8_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy, memset, strerror, strlen
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport strdup
from posix.fcntl cimport open as c_open, O_WRONLY, O_CREAT, O_APPEND
from posix.time cimport timespec
from posix.unistd cimport write as c_write, close as c_close, lseek, ftruncate, SEEK_END

from flowsift.errors import FlowsiftError, UsageError
from flowsift.io._tables cimport reach_chunk
from flowsift.reassembly._engine cimport Sink, Engine, conn_t, conn_at, dir_t
from flowsift.reassembly._engine import GAP_NAMES
from flowsift.streams.format import vlan_ids, vlan_text


cdef extern from "<sys/stat.h>" nogil:
    int futimens(int fd, const timespec* times)
    int utimensat(int dirfd, const char* path, const timespec* times, int flags)

cdef extern from "<fcntl.h>" nogil:
    enum:
        AT_FDCWD
        AT_SYMLINK_NOFOLLOW
        O_EXCL
        O_NOFOLLOW
        O_NONBLOCK


cdef extern from "_writer.h" nogil:
    ctypedef struct fs_bg_t:
        pass
    int fs_bg_start(fs_bg_t* bg, void (*job)(void*) noexcept nogil, void* arg)
    void fs_bg_wait(fs_bg_t* bg)
    void fs_bg_kick(fs_bg_t* bg)
    void fs_bg_stop(fs_bg_t* bg)


cdef extern from "<openssl/evp.h>" nogil:
    ctypedef struct EVP_MD_CTX:
        pass
    ctypedef struct EVP_MD:
        pass
    ctypedef struct ENGINE:
        pass
    EVP_MD_CTX* EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX* ctx)
    const EVP_MD* EVP_sha256()
    int EVP_DigestInit_ex(EVP_MD_CTX* ctx, const EVP_MD* t, ENGINE* impl)
    int EVP_DigestUpdate(EVP_MD_CTX* ctx, const void* d, size_t cnt)
    int EVP_DigestFinal_ex(EVP_MD_CTX* ctx, unsigned char* md, unsigned int* s)


cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)
    enum:
        AF_INET
        AF_INET6

# Per-direction buffer: a few syscalls per 8 KiB; small enough that thousands of live
# connections cost tens of MB, not hundreds.
DEF BUF = 8192
# Descriptors kept open at once, at most (fewer where the descriptor limit leaves fewer: see
# _open_budget); a flush to a file not in the cache reopens it (O_APPEND).
DEF MAX_OPEN = 256
# ... and at least: a connection's two directions take turns, and with fewer nearly every
# buffer would close and reopen a file. A limit that leaves fewer is said before the first packet.
DEF MIN_OPEN = 4
# Buffers handed to the writer thread in one go (bytes, jobs): the next ones fill meanwhile
DEF HAND_BYTES = 4194304
DEF HAND_JOBS = 4096
# Written buffers kept for reuse: two lists' worth
DEF POOL = 1024
# index.jsonl is written in pieces of this size
DEF INDEX_BUF = 65536
# connections per chunk of direction state
DEF DIR_CHUNK = 64
# zeros hashed per call, for a gap written as zeros
DEF ZERO_STEP = 65536
# gap reasons kept per hole (a hole declared in adjacent pieces: a snaplen cut, then the end)
DEF MAX_REASONS = 8

# job kinds (fjob_t.kind)
DEF JOB_BYTES = 0
DEF JOB_INDEX = 1
DEF JOB_ZEROS = 2
DEF JOB_CLOSE = 3

cdef uint8_t ZEROS[ZERO_STEP]
# (fjob_t.mtime) no time to stamp
cdef int64_t NO_TIME = -0x7FFFFFFFFFFFFFFF - 1

cdef const char* HEX = b"0123456789abcdef"
# the SHA-256 of no bytes (a direction that carried none)
cdef const char* EMPTY_SHA256 = b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# CLOSE_* (engine) -> the index's "close" value, JSON-encoded
cdef const char* CLOSE_JSON[7]
CLOSE_JSON[:] = [b"null", b'"fin"', b'"rst"', b'"timeout"', b'"evicted"', b'"eof"', b'"reused"']

ctypedef struct fdir_t:
    uint8_t* buf
    char* path             # its file, once it has bytes (freed after its close job ran)
    EVP_MD_CTX* md         # its SHA-256, once it has bytes (the writer's from its close job)
    uint32_t len
    uint64_t written        # bytes handed to the writer (its file exists once this is not 0)
    uint64_t zeros          # zero bytes handed to the writer (gaps, with zero filling)
    uint64_t pending        # gap bytes not written yet: zeros once bytes come after them

# The writer thread's: a descriptor cache entry (a direction is known by its path pointer,
# unique while the direction is live), a job, a list of jobs, and its whole state.
ctypedef struct fdslot_t:
    int fd
    const char* path
    uint64_t stamp

ctypedef struct fjob_t:
    char* path             # the direction's file (freed by the main thread after its close)
    uint8_t* buf           # JOB_BYTES, JOB_INDEX: bytes to append (back to the main thread's pool once written)
    EVP_MD_CTX* md         # the direction's SHA-256: updated with buf; at the close, finished and freed
    char* hex              # (close) where its index line waits for the digest, 64 hex digits
    uint64_t zeros         # (JOB_ZEROS) zero bytes to append
    int64_t mtime          # (close) the file's time, ns since the epoch
    uint32_t len
    uint8_t create         # the first job of the file: create (truncate) it
    uint8_t kind           # JOB_*: bytes, index lines (to index.jsonl, path NULL), zeros, close
    uint8_t _pad[2]

ctypedef struct fjobs_t:
    fjob_t* jobs
    size_t n
    uint64_t nbytes

ctypedef struct fwriter_t:
    fjobs_t* run           # the list the thread runs next
    fdslot_t slots[MAX_OPEN]
    int max_open           # slots used: MIN_OPEN to MAX_OPEN, as the descriptor limit allows
    uint64_t clock
    int index_fd
    char* index_path
    int err                # the first failure (errno), and the file it failed on
    char* err_path


cdef int fw_slot(fwriter_t* w, const char* path) noexcept nogil:
    # the cache entry holding the descriptor of this direction's file, or -1
    cdef int k
    for k in range(w.max_open):
        if w.slots[k].path == path and w.slots[k].fd >= 0:
            return k
    return -1


cdef int fw_descriptor(fwriter_t* w, fjob_t* j) noexcept nogil:
    cdef int k, victim = 0, fd
    w.clock += 1
    k = fw_slot(w, j.path)
    if k >= 0:
        w.slots[k].stamp = w.clock
        return w.slots[k].fd
    for k in range(w.max_open):
        if w.slots[k].fd < 0:
            victim = k
            break
        if w.slots[k].stamp < w.slots[victim].stamp:
            victim = k
    if w.slots[victim].fd >= 0:
        c_close(w.slots[victim].fd)
        w.slots[victim].fd = -1
    # a stream file is made new (an earlier one was removed first): what is at its name then (a
    # symlink, a FIFO) is never written through; opened again, it must still be no symlink,
    # and a FIFO put there fails rather than waits for a reader
    fd = c_open(j.path, O_WRONLY | O_NOFOLLOW | (O_CREAT | O_EXCL if j.create else O_APPEND | O_NONBLOCK), 0o644)
    if fd >= 0:
        w.slots[victim].fd = fd
        w.slots[victim].path = j.path
        w.slots[victim].stamp = w.clock
    return fd


cdef void fw_fail(fwriter_t* w, const char* path) noexcept nogil:
    if w.err == 0:
        w.err = errno
        w.err_path = strdup(path)


cdef void fw_run(void* arg) noexcept nogil:
    # the writer thread: append each buffer to its file and hash it, finish the digests and
    # close the files of directions that ended. After a failure nothing more is written (the
    # main thread reports it). Buffers and paths go back to the main thread, which allocated
    # them (malloc'd in one thread and freed in another, the buffers kept the heap trimming
    # and faulting in fresh pages); only a finished digest's context is freed here.
    cdef fwriter_t* w = <fwriter_t*> arg
    cdef fjobs_t* L = w.run
    cdef fjob_t* j
    cdef size_t i
    cdef Py_ssize_t done, n
    cdef int fd, k
    for i in range(L.n):
        j = &L.jobs[i]
        if j.kind == JOB_BYTES or j.kind == JOB_INDEX:
            if w.err == 0:
                fd = w.index_fd if j.kind == JOB_INDEX else fw_descriptor(w, j)
                if fd < 0:
                    fw_fail(w, w.index_path if j.kind == JOB_INDEX else j.path)
                else:
                    done = 0
                    while done < j.len:
                        n = c_write(fd, j.buf + done, j.len - done)
                        if n < 0:
                            fw_fail(w, w.index_path if j.kind == JOB_INDEX else j.path)
                            break
                        done += n
            if j.kind == JOB_BYTES and EVP_DigestUpdate(j.md, j.buf, j.len) != 1 and w.err == 0:
                w.err = ENOMEM
                w.err_path = strdup(j.path)
        elif j.kind == JOB_ZEROS:
            fw_zeros(w, j)
        else:
            fw_digest(j)
            k = fw_slot(w, j.path)
            if w.err == 0:
                # (after a failure a path may be what stopped the run, not this run's file)
                fw_stamp(w.slots[k].fd if k >= 0 else -1, j)
            if k >= 0:
                c_close(w.slots[k].fd)
                w.slots[k].fd = -1
                w.slots[k].path = NULL


cdef void fw_zeros(fwriter_t* w, fjob_t* j) noexcept nogil:
    # a gap before more bytes, as zeros: the file grows by a hole (no blocks on most file
    # systems), and its digest takes the zeros in
    cdef int fd
    cdef int64_t end
    cdef uint64_t left = j.zeros, take
    if w.err:
        return
    fd = fw_descriptor(w, j)
    # (a descriptor that created the file is not O_APPEND: it is moved to the new end)
    if fd < 0:
        fw_fail(w, j.path)
        return
    end = lseek(fd, 0, SEEK_END)
    if end < 0 or ftruncate(fd, end + <int64_t>j.zeros) != 0 or lseek(fd, 0, SEEK_END) < 0:
        fw_fail(w, j.path)
        return
    while left:
        take = ZERO_STEP if left > ZERO_STEP else left
        if EVP_DigestUpdate(j.md, ZEROS, take) != 1:
            w.err = ENOMEM
            w.err_path = strdup(j.path)
            return
        left -= take


cdef void fw_stamp(int fd, fjob_t* j) noexcept nogil:
    # the file's times: its direction's last packet (as tcpflow stamps its files); a failure
    # here changes no byte and is not one of the run's
    cdef timespec t[2]
    if j.mtime == NO_TIME:
        return
    t[0].tv_sec = j.mtime // 1000000000
    t[0].tv_nsec = j.mtime % 1000000000
    t[1] = t[0]
    if fd >= 0:
        futimens(fd, t)
    else:
        utimensat(AT_FDCWD, j.path, t, AT_SYMLINK_NOFOLLOW)


cdef void fw_digest(fjob_t* j) noexcept nogil:
    # a direction's last bytes were hashed: its digest, in hex, into its index line
    cdef unsigned char md[32]
    cdef unsigned int n = 0
    cdef int k
    if j.md == NULL:
        return
    if EVP_DigestFinal_ex(j.md, md, &n) == 1 and n == 32 and j.hex != NULL:
        for k in range(32):
            j.hex[2 * k] = HEX[md[k] >> 4]
            j.hex[2 * k + 1] = HEX[md[k] & 15]
    EVP_MD_CTX_free(j.md)
    j.md = NULL


cdef void fw_discard(fjobs_t* L) noexcept nogil:
    # jobs that will not run (the sink goes away after a failure): free what they own
    cdef size_t i
    for i in range(L.n):
        if L.jobs[i].kind == JOB_BYTES or L.jobs[i].kind == JOB_INDEX:
            free(L.jobs[i].buf)
        elif L.jobs[i].kind == JOB_CLOSE:
            free(L.jobs[i].path)
            EVP_MD_CTX_free(L.jobs[i].md)
    L.n = 0
    L.nbytes = 0


# the names FileSink gives stream files (see on_open and _path)
_STREAM_FILE = re.compile(r"c[0-9]{6,}-.+\.(c2s|s2c)\Z", re.S)

# gap reason codes -> their names in the index, JSON-encoded
_REASON_JSON = {code: name.encode() for code, name in GAP_NAMES.items()}


def earlier_output(outdir):
    """What an earlier run left in `outdir`: (its index.jsonl is there, how many stream files);
    (False, 0) for a directory that does not exist or cannot be listed (the sink says why)."""
    n = 0
    try:
        index = os.path.lexists(os.path.join(outdir, "index.jsonl"))
        with os.scandir(outdir) as it:
            for e in it:
                if _STREAM_FILE.match(e.name) and e.is_file(follow_symlinks=False):
                    n += 1
    except OSError:
        return False, 0
    return index, n


def _kind(path):
    """What a path that is not a regular file is, in a few words ("a FIFO"), or None for a
    regular file or nothing."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"a symbolic link (to {os.readlink(path)!r})"
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(st.st_mode):
            return name
    return "not a regular file"


def foreign_output(outdir):
    """The one-line error for what stands in `outdir` under a name this sink writes (index.jsonl,
    a stream file's) and is not a regular file: a symlink, a FIFO, a device, a directory. No run
    wrote it, and none writes through it (a symlink would have its target overwritten, a FIFO
    would wait for a reader), nor removes it (it is not an earlier run's output). Which names a
    run will write is known only as it reads, so every such name is refused before it starts
    (a directory at a stream file's name stopped the run half-way): None when there is none."""
    found = []
    try:
        with os.scandir(outdir) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    continue
                if e.name == "index.jsonl" or _STREAM_FILE.match(e.name):
                    found.append(e.name)
    except OSError:
        return None             # (the sink says why it cannot write there)
    for name in sorted(found):
        what = _kind(os.path.join(outdir, name))
        if what is not None:
            more = f" (and {len(found) - 1:,} more such)" if len(found) > 1 else ""
            return (f"{os.path.join(outdir, name)} is {what}, where streams writes a regular file{more}: remove it, "
                    f"or give another -o")
    return None


def refuse_foreign_output(outdir):
    """Raise UsageError (one line) when `outdir` holds something other than a regular file under
    a name this sink writes (foreign_output), with or without --replace. Nothing is read or
    changed."""
    why = foreign_output(outdir)
    if why is not None:
        raise UsageError(why)


def refuse_earlier_output(outdir):
    """Raise UsageError (one line) when `outdir` holds an earlier run's output: this run would
    replace it (mixed, the two would read as one output, and connection numbers restart at 0),
    which only `--replace` may ask for. Nothing is read or changed."""
    index, n = earlier_output(outdir)
    if index or n:
        files = f"{n:,} stream file{'s' if n != 1 else ''}" if n else "no stream file"
        what = f"index.jsonl and {files}" if index else files
        raise UsageError(f"{outdir}: holds the output of an earlier run ({what}): give --replace to replace "
                         f"it, or another -o")


def _clear_earlier(outdir):
    """Remove what an earlier run left in `outdir` (its stream files, and its index.jsonl, which
    is made again): mixed with this run's files they would read as one output. Only regular
    files go; nothing else is touched. Returns how many stream files went."""
    n = 0
    with os.scandir(outdir) as it:
        for e in it:
            if (e.name == "index.jsonl" or _STREAM_FILE.match(e.name)) and e.is_file(follow_symlinks=False):
                os.unlink(e.path)
                n += e.name != "index.jsonl"
    return n


def _what_is(path):
    """What a path that is not a directory is, in a few words ("a regular file")."""
    import stat
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        try:
            os.stat(path)
        except OSError:
            return f"a symbolic link to {target!r}, which does not exist"
        return f"a symbolic link to {target!r}, which is not a directory"
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(st.st_mode):
            return name
    return "not a directory"


def _open_budget():
    """How many stream files may be open at once: MAX_OPEN, or what the descriptor limit
    (raised to its hard limit if need be) leaves after the descriptors the process holds and a
    spare for what it opens later (index.jsonl, listing DIR, imports; flowsift.limits), as the
    gateway sizes its record files. A limit that leaves fewer than MIN_OPEN is a FlowsiftError
    saying so (and the limit that would do)."""
    from flowsift.limits import free_descriptors, open_descriptors, spare_descriptors
    soft, free = free_descriptors()
    if free < MIN_OPEN:
        held, need = open_descriptors(), soft
        while need - held - spare_descriptors(need) < MIN_OPEN:
            need += 1
        raise FlowsiftError(f"the descriptor limit ({soft}, ulimit -n) is too small for streams -o: {held} "
                            f"descriptors are in use and {spare_descriptors(soft)} kept for the run, leaving "
                            f"{max(0, free)} stream files open at once where it needs {MIN_OPEN}; "
                            f"raise it to {need} at least")
    return min(MAX_OPEN, free)


def check_output_dir(outdir):
    """Raise FlowsiftError (one line) when streams cannot go to `outdir`, without creating or
    changing anything: it, or the nearest of its parents that exists, must be a directory this
    process may write in."""
    path = os.path.abspath(outdir)
    while True:
        if os.path.isdir(path):
            if not os.access(path, os.W_OK | os.X_OK):
                where = "" if path == os.path.abspath(outdir) else f" (in {path})"
                raise FlowsiftError(f"{outdir}: cannot write there: permission denied{where}")
            return
        if os.path.lexists(path):
            what = _what_is(path)
            if path == os.path.abspath(outdir):
                raise FlowsiftError(f"{outdir}: cannot write there: it is {what}, not a directory")
            raise FlowsiftError(f"{outdir}: cannot write there: {path} is {what}, not a directory")
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


cdef class FileSink(Sink):
    """`FileSink(outdir, zeros=False)`: the files and index of `flowsift streams -o`. `zeros`:
    write each gap before bytes as zeros (file offsets are then stream offsets)."""
    cdef fdir_t** chunks         # DIR_CHUNK connections' directions each (2 per connection);
    cdef uint8_t* closed         # per chunk: connections closed; a chunk all closed is freed
    cdef uint32_t cap_chunks
    cdef fwriter_t w             # the writer thread's state
    cdef fs_bg_t bg
    cdef fjobs_t lists[2]        # jobs being gathered, jobs the thread runs (or ran)
    cdef int gather              # index of the list being gathered
    cdef bint busy               # the thread was given a list and not yet waited for
    cdef bint threaded           # more than one CPU to run on: else the lists are written inline
    cdef fjobs_t* ran            # the list it was given (its memory to take back)
    cdef uint8_t** pool          # written buffers, for the next bytes (at most POOL)
    cdef int pooled
    cdef readonly str outdir
    cdef bytes outdir_b          # outdir + "/", for file paths
    cdef str index_path
    cdef int index_fd
    cdef char* ibuf              # index lines not yet written (INDEX_BUF bytes)
    cdef Py_ssize_t ilen
    cdef dict names              # conn -> (file name stem, client "ip:port", server "ip:port", index
                                 # text after "proto": its VLAN ids, when flows are keyed by them), UTF-8
    cdef dict gaps               # (conn, d) -> array('q'): offset, length, file offset, reasons...
                                 # (32 bytes a gap: a connection with a million holes stays small)
    cdef readonly bint zeros     # gaps before bytes are written as zeros
    cdef readonly bint prepared  # the directory was made ready (earlier streams removed)
    cdef readonly object failure # the one-line error that stopped writing, once one did
    cdef readonly uint64_t files         # (after a failure to write, those index.jsonl lists)
    cdef readonly uint64_t bytes_written
    cdef readonly uint64_t replaced      # stream files of an earlier output, removed first
    cdef readonly uint64_t removed       # stream files not written whole, removed after a failure
    cdef readonly uint64_t spliced_files # (splicing) files with a gap before some of their bytes,
    cdef readonly uint64_t spliced_bytes # and those gaps' bytes: where file offsets leave stream offsets

    def __init__(self, str outdir, bint zeros=False):
        cdef int k
        check_output_dir(outdir)
        self.outdir = outdir
        self.zeros = zeros
        self.outdir_b = os.fsencode(os.path.join(outdir, ""))
        self.index_fd = -1
        self.w.index_fd = -1
        self.index_path = os.path.join(outdir, "index.jsonl")
        self.ibuf = <char*> malloc(INDEX_BUF)
        if self.ibuf == NULL:
            raise MemoryError()
        self.w.index_path = strdup(os.fsencode(self.index_path))
        if self.w.index_path == NULL:
            raise MemoryError()
        self.names = {}
        self.gaps = {}
        for k in range(MAX_OPEN):
            self.w.slots[k].fd = -1
        self.w.max_open = _open_budget()
        for k in range(2):
            self.lists[k].jobs = <fjob_t*> malloc(HAND_JOBS * sizeof(fjob_t))
            if self.lists[k].jobs == NULL:
                raise MemoryError()
        self.threaded = len(os.sched_getaffinity(0)) > 1
        self.pool = <uint8_t**> malloc(POOL * sizeof(uint8_t*))
        if self.pool == NULL:
            raise MemoryError()

    cdef int _prepare(self) except -1:
        # the directory made, an earlier run's streams removed, index.jsonl begun: at the first
        # connection, so that a run that fails on its input leaves the directory as it was
        # (index.jsonl is made new, as the stream files are: never written through a symlink
        # or into a FIFO put in its place; what stands there refuses the directory as it is)
        self.failure = foreign_output(self.outdir)
        if self.failure is not None:
            raise FlowsiftError(self.failure)
        self.prepared = True
        try:
            os.makedirs(self.outdir, exist_ok=True)
            self.replaced = _clear_earlier(self.outdir)
            self.index_fd = os.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            self.failure = f"{self.outdir}: cannot write there: {e.strerror}"
            raise FlowsiftError(self.failure) from None
        self.w.index_fd = self.index_fd
        return 0

    def __dealloc__(self):
        cdef uint32_t k
        cdef int j
        fs_bg_stop(&self.bg)
        for j in range(2):
            if self.lists[j].jobs != NULL:
                fw_discard(&self.lists[j])
                free(self.lists[j].jobs)
        for j in range(MAX_OPEN):
            if self.w.slots[j].fd >= 0:
                c_close(self.w.slots[j].fd)
        free(self.w.err_path)
        free(self.w.index_path)
        if self.pool != NULL:
            for j in range(self.pooled):
                free(self.pool[j])
            free(self.pool)
        if self.index_fd >= 0:
            c_close(self.index_fd)
        free(self.ibuf)
        if self.chunks != NULL:
            for k in range(self.cap_chunks):
                if self.chunks[k] != NULL:
                    for j in range(2 * DIR_CHUNK):
                        free(self.chunks[k][j].buf)
                        free(self.chunks[k][j].path)
                        EVP_MD_CTX_free(self.chunks[k][j].md)
                    free(self.chunks[k])
        free(self.chunks)
        free(self.closed)

    cdef fdir_t* _fd(self, uint32_t conn, int d) except NULL:
        # a live connection's direction (its chunk is made when the first one opens)
        cdef uint32_t k = conn // DIR_CHUNK, j
        if reach_chunk(<void**>&self.chunks, &self.closed, &self.cap_chunks, k):
            raise MemoryError()
        if self.chunks[k] == NULL:
            self.chunks[k] = <fdir_t*> calloc(2 * DIR_CHUNK, sizeof(fdir_t))
            if self.chunks[k] == NULL:
                raise MemoryError()
        return &self.chunks[k][2 * (conn % DIR_CHUNK) + d]

    cdef void _closed(self, uint32_t conn) noexcept nogil:
        cdef uint32_t k = conn // DIR_CHUNK
        self.closed[k] += 1
        if self.closed[k] == DIR_CHUNK:
            free(self.chunks[k])          # (each direction's buffer went at its close)
            self.chunks[k] = NULL

    cdef int on_open(self, uint32_t conn, object engine) except -1:
        cdef Engine e = <Engine?> engine
        cdef conn_t* c = conn_at(e, conn)
        cdef char ca[64]
        cdef char sa[64]
        cdef char out[256]
        cdef int fam = AF_INET if c.ipver == 4 else AF_INET6
        if self.failure is not None:
            return 0                       # (said once: nothing more is written)
        if not self.prepared:
            self._prepare()
        if inet_ntop(fam, c.client, ca, sizeof(ca)) == NULL or inet_ntop(fam, c.server, sa, sizeof(sa)) == NULL:
            raise FlowsiftError(f"connection {conn}: address of an unknown family (IP version {c.ipver})")
        stem = out[:snprintf(out, sizeof(out), b"c%06u-%s.%u-%s.%u", conn, ca, c.cport, sa, c.sport)]
        fmt = b"%s:%u" if c.ipver == 4 else b"[%s]:%u"
        client = out[:snprintf(out, sizeof(out), fmt, ca, c.cport)]
        server = out[:snprintf(out, sizeof(out), fmt, sa, c.sport)]
        vlan = b""
        if e.flows.vlan_key:
            # a tagged connection's files say its VLAN (-vlan10, QinQ -vlan100.10), as ls shows them
            ids = vlan_ids(c.vlan[0], c.vlan[1])
            if ids:
                stem += b"-vlan" + vlan_text(ids).encode()
            vlan = b', "vlan": ' + json.dumps(ids).encode()
        self.names[conn] = (stem, client, server, vlan)
        self._fd(conn, 1)
        return 0

    cdef bytes _path(self, uint32_t conn, int d):
        return self.outdir_b + self.names[conn][0] + (b".c2s" if d == 0 else b".s2c")

    cdef bint _file(self, uint32_t conn, int d, fdir_t* f) except -1:
        # the direction's file and digest, made at its first job; True for that first job
        if f.path == NULL:
            f.path = strdup(self._path(conn, d))
            if f.path == NULL:
                raise MemoryError()
            f.md = EVP_MD_CTX_new()
            if f.md == NULL or EVP_DigestInit_ex(f.md, EVP_sha256(), NULL) != 1:
                raise MemoryError()
        if f.written == 0 and f.zeros == 0:
            self.files += 1
            return True
        return False

    cdef int _flush(self, uint32_t conn, int d) except -1:
        # a direction's buffered bytes, for the writer thread to append to its file and hash
        cdef fdir_t* f = self._fd(conn, d)
        cdef bint create
        if f.len == 0:
            return 0
        create = self._file(conn, d, f)
        self._push(JOB_BYTES, f.path, f.md, NULL, f.buf, f.len, create, 0, NO_TIME)
        f.buf = NULL                       # the thread's now; the next bytes get a new buffer
        f.written += f.len
        self.bytes_written += f.len
        f.len = 0
        return 0

    cdef int _fill(self, uint32_t conn, int d) except -1:
        # (zero filling) the gaps before the bytes that come now, as zeros, after what the
        # direction buffered before them
        cdef fdir_t* f = self._fd(conn, d)
        cdef bint create
        self._flush(conn, d)
        create = self._file(conn, d, f)
        self._push(JOB_ZEROS, f.path, f.md, NULL, NULL, 0, create, f.pending, NO_TIME)
        f.zeros += f.pending
        f.pending = 0
        return 0

    cdef int _end(self, fdir_t* f, char* hex, int64_t mtime) except -1:
        # the direction ended: after its last bytes, its digest goes to `hex` (in its index
        # line), its file gets its time and is closed (and its path freed)
        if f.path == NULL:
            return 0
        self._push(JOB_CLOSE, f.path, f.md, hex, NULL, 0, 0, 0, mtime)
        f.path = NULL
        f.md = NULL
        return 0

    cdef int _push(self, uint8_t kind, char* path, EVP_MD_CTX* md, char* hex, uint8_t* buf, uint32_t n,
                   bint create, uint64_t zeros, int64_t mtime) except -1:
        # one job at the end of the list being gathered (see fjob_t)
        cdef fjobs_t* L = self._room()
        cdef fjob_t* j = &L.jobs[L.n]
        j.kind = kind
        j.path = path
        j.md = md
        j.hex = hex
        j.buf = buf
        j.len = n
        j.create = create
        j.zeros = zeros
        j.mtime = mtime
        L.n += 1
        L.nbytes += n
        return 0

    cdef fjobs_t* _room(self) except NULL:
        # the list being gathered, with room for one more job
        cdef fjobs_t* L = &self.lists[self.gather]
        if L.n >= HAND_JOBS or L.nbytes >= HAND_BYTES:
            self._hand()
            L = &self.lists[self.gather]
        return L

    cdef int _wait(self) except -1:
        # the list the thread was given is done (its buffers back in the pool, the paths of
        # ended directions freed); a failure there is this one-line error
        cdef int err
        cdef size_t i
        cdef fjobs_t* L
        if self.busy:
            if self.threaded:
                with nogil:
                    fs_bg_wait(&self.bg)
            self.busy = False
            L = self.ran
            for i in range(L.n):
                if L.jobs[i].kind == JOB_CLOSE:
                    free(L.jobs[i].path)
                elif L.jobs[i].kind == JOB_ZEROS:
                    pass                   # (its path is the direction's)
                elif L.jobs[i].kind == JOB_INDEX or self.pooled >= POOL:
                    free(L.jobs[i].buf)
                else:
                    self.pool[self.pooled] = L.jobs[i].buf
                    self.pooled += 1
            L.n = 0
            L.nbytes = 0
        if self.w.err:
            err = self.w.err
            path = os.fsdecode(<bytes> self.w.err_path)
            if err == EEXIST:
                # a stream file is made new, and its name was free when the run started: what
                # stands there came during the run ("File exists" would not say so)
                self.failure = (f"{path}: cannot write: {_kind(path) or 'a file'} was put at its name "
                                f"while streams wrote")
            else:
                self.failure = f"{path}: cannot write: {strerror(err).decode()}"
            raise FlowsiftError(self.failure)
        return 0

    cdef int _hand(self) except -1:
        # give the thread what was gathered (once it is done with the last), gather anew
        cdef int err
        self._wait()
        if self.lists[self.gather].n == 0:
            return 0
        self.w.run = self.ran = &self.lists[self.gather]
        self.gather ^= 1
        if not self.threaded:
            # one CPU: a thread would only add switches; the same jobs run here
            fw_run(&self.w)
            self.busy = True               # (for _wait to take the buffers back)
            return 0
        err = fs_bg_start(&self.bg, fw_run, &self.w)
        if err:
            self.failure = f"{self.outdir}: cannot start the writer thread: {strerror(err).decode()}"
            raise FlowsiftError(self.failure)
        fs_bg_kick(&self.bg)
        self.busy = True
        return 0

    cdef int _sync(self) except -1:
        # everything handed over so far is written
        self._hand()
        self._wait()
        return 0

    cdef int _append(self, uint32_t conn, int d, const uint8_t* data, uint32_t n) except -1:
        cdef fdir_t* f = self._fd(conn, d)
        cdef uint32_t take
        if self.failure is not None:
            return 0
        if f.pending:
            self._fill(conn, d)
        while n:
            if f.buf == NULL:
                if self.pooled:
                    self.pooled -= 1
                    f.buf = self.pool[self.pooled]
                else:
                    f.buf = <uint8_t*> malloc(BUF)
                    if f.buf == NULL:
                        raise MemoryError()
            take = BUF - f.len if BUF - f.len < n else n
            memcpy(f.buf + f.len, data, take)
            f.len += take
            data += take
            n -= take
            if f.len == BUF:
                self._flush(conn, d)
                f = self._fd(conn, d)
        return 0

    cdef int on_data(self, uint32_t conn, int d, int64_t offset, const uint8_t* data, uint32_t n) except -1:
        return self._append(conn, d, data, n)

    cdef int on_datagram(self, uint32_t conn, int d, int64_t ts, const uint8_t* data, uint32_t n) except -1:
        return self._append(conn, d, data, n)

    cdef int on_gap(self, uint32_t conn, int d, int64_t offset, int64_t length, int reason) except -1:
        # listed with where it is in the file: spliced out, where the bytes after it start;
        # zero filled, where its zeros start (its stream offset)
        cdef fdir_t* f
        cdef int64_t at, reasons
        cdef int k, code
        if self.failure is not None:
            return 0
        f = self._fd(conn, d)
        at = f.written + f.len + f.zeros + f.pending
        if self.zeros:
            f.pending += length
        arr = self.gaps.get((conn, d))
        if arr is None:
            arr = self.gaps[(conn, d)] = _array("q")
        n = len(arr)
        code = reason & 0xFF
        if n and arr[n - 4] + arr[n - 3] == offset:
            # adjacent gaps (e.g. cut, then lost) read as one hole, with each reason once
            arr[n - 3] += length
            reasons = arr[n - 1]
            for k in range(MAX_REASONS):
                if (reasons >> (8 * k)) & 0xFF == code:
                    break
                if (reasons >> (8 * k)) & 0xFF == 0:
                    arr[n - 1] = reasons | (<int64_t>code << (8 * k))
                    break
        else:
            arr.extend((offset, length, at, code))
        return 0

    # --- index.jsonl ---
    cdef int _iflush(self) except -1:
        # index lines go out through the writer thread too, after the bytes they describe
        cdef char* fresh
        if self.ilen == 0:
            return 0
        fresh = <char*> malloc(INDEX_BUF)
        if fresh == NULL:
            raise MemoryError()
        self._push(JOB_INDEX, NULL, NULL, NULL, <uint8_t*> self.ibuf, self.ilen, 0, 0, NO_TIME)
        self.ibuf = fresh
        self.ilen = 0
        return 0

    cdef int _put(self, const char* s, Py_ssize_t n) except -1:
        cdef Py_ssize_t take
        while n > 0:
            if self.ilen == INDEX_BUF:
                self._iflush()
            take = min(n, INDEX_BUF - self.ilen)
            memcpy(self.ibuf + self.ilen, s, take)
            self.ilen += take
            s += take
            n -= take
        return 0

    cdef int _puts(self, const char* s) except -1:
        return self._put(s, strlen(s))

    cdef int _put_ts(self, uint64_t packets, int64_t ns) except -1:
        # seconds as Python writes a float (repr), or null for a direction that saw nothing
        cdef char* text
        if not packets:
            return self._put(b"null", 4)
        text = PyOS_double_to_string(ns / 1e9, b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            self._puts(text)
        finally:
            PyMem_Free(text)
        return 0

    cdef char* _reserve(self, Py_ssize_t n) except NULL:
        # n bytes of index, contiguous in one buffer, for the writer to fill in
        cdef char* p
        if self.ilen + n > INDEX_BUF:
            self._iflush()
        p = self.ibuf + self.ilen
        memset(p, ord("0"), n)
        self.ilen += n
        return p

    cdef int _put_reasons(self, int64_t reasons) except -1:
        # a hole's reasons, in the order they were declared, joined by "+"
        cdef int k, code
        for k in range(MAX_REASONS):
            code = (reasons >> (8 * k)) & 0xFF
            if code == 0:
                break
            if k:
                self._put(b"+", 1)
            name = _REASON_JSON.get(code) or str(code).encode()
            self._put(name, len(name))
        return 0

    cdef int _index_line(self, uint32_t conn, int d, dir_t* D, const char* proto, bytes stem, bytes src,
                         bytes dst, bytes vlan, fdir_t* f, object gaps) except -1:
        # one line per direction; keys and spacing as json.dumps writes them
        cdef char tmp[512]
        cdef const char* name = b"c2s" if d == 0 else b"s2c"
        cdef int k
        cdef int64_t spliced
        self._put(tmp, snprintf(tmp, sizeof(tmp), b'{"conn": %u, "dir": "%s", "src": "', conn, name))
        self._put(src, len(src))
        self._put(b'", "dst": "', 11)
        self._put(dst, len(dst))
        self._put(tmp, snprintf(tmp, sizeof(tmp), b'", "proto": "%s"', proto))
        self._put(vlan, len(vlan))
        self._put(b', "file": ', 10)
        if f.written:
            self._put(b'"', 1)
            self._put(stem, len(stem))
            self._put(tmp, snprintf(tmp, sizeof(tmp), b'.%s"', name))
        else:
            self._put(b"null", 4)
        self._put(tmp, snprintf(tmp, sizeof(tmp), b', "bytes": %llu, "sha256": "', f.written))
        if f.md != NULL:
            # the close goes right after its place is reserved: an index buffer handed over
            # later in this line is written after the digest is in it
            self._end(f, self._reserve(64), D.last_ts if D.packets else NO_TIME)
        else:
            self._put(EMPTY_SHA256, 64)
        self._put(b'", "gaps": [', 12)
        for k in range(0, len(gaps), 4):
            self._put(tmp, snprintf(tmp, sizeof(tmp), b'%s{"offset": %lld, "length": %lld, "file_offset": %lld, '
                                    b'"reason": "', b", " if k else b"", <long long>gaps[k], <long long>gaps[k + 1],
                                    <long long>gaps[k + 2]))
            self._put_reasons(gaps[k + 3])
            self._put(b'"}', 2)
        if not self.zeros:
            # a gap with bytes after it shifts them in the file (one after the last byte does not)
            spliced = 0
            for k in range(0, len(gaps), 4):
                if gaps[k + 2] < <int64_t> f.written:
                    spliced += gaps[k + 1]
            if spliced:
                self.spliced_files += 1
                self.spliced_bytes += spliced
        self._put(tmp, snprintf(tmp, sizeof(tmp),
                                b'], "gap_bytes": %llu, "conflicts": %llu, "retransmissions": %llu, '
                                b'"midstream": %s, "close": %s, "packets": %llu, "first_ts": ',
                                D.gap_bytes, D.conflict_bytes, D.retransmissions,
                                b"true" if D.midstream else b"false",
                                CLOSE_JSON[D.close_reason if D.close_reason < 7 else 0], D.packets))
        self._put_ts(D.packets, D.first_ts)
        self._put(b', "last_ts": ', 13)
        self._put_ts(D.packets, D.last_ts)
        self._put(b"}\n", 2)
        return 0

    cdef int on_close(self, uint32_t conn, object engine) except -1:
        cdef int d
        cdef fdir_t* f
        cdef Engine e = <Engine?> engine
        if self.failure is not None:
            return 0
        stem, client, server, vlan = self.names[conn]
        ends = (client, server)
        proto = b"tcp" if conn_at(e, conn).proto == 6 else b"udp"
        for d in range(2):
            self._flush(conn, d)            # (hands its buffer over: none is left)
            f = self._fd(conn, d)
            f.pending = 0                   # (a gap after the last bytes takes no room)
            self._index_line(conn, d, &conn_at(e, conn).d[d], proto, stem, ends[d], ends[1 - d], vlan, f,
                             self.gaps.pop((conn, d), ()))
        del self.names[conn]
        self._closed(conn)
        return 0

    def close(self, bint ended=True):
        """Write out what index.jsonl still holds and close it. `ended`: the run read its input
        to the end (or to a defect); else (stopped, or failed on its input) a directory never
        made ready is left as it was.

        After a failure to write (a full disk), the stream files index.jsonl does not list
        (cut short, or written whole but not yet listed) are removed, so that the directory
        holds only files the index describes, as after a stop, and the error is raised again,
        saying so."""
        if not self.prepared and self.failure is None:
            if not ended:
                return
            self._prepare()
        if self.index_fd >= 0:
            try:
                self._iflush()
                self._sync()
            except FlowsiftError:
                if self.failure is None:
                    raise
            finally:
                with nogil:
                    fs_bg_stop(&self.bg)      # (after the job it runs, if any)
                self.busy = False
                c_close(self.index_fd)
                self.index_fd = self.w.index_fd = -1
        if self.failure is not None:
            if self.prepared and not self.removed:
                self._remove_unlisted()
            raise FlowsiftError(self.failure + (f"; {self.removed} stream file{'s' if self.removed != 1 else ''} "
                                                "not listed in index.jsonl removed" if self.removed else ""))

    cdef int _remove_unlisted(self) except -1:
        # the index keeps its whole lines (each written after its file's last byte); every
        # stream file none of them lists goes
        cdef int k
        for k in range(MAX_OPEN):
            if self.w.slots[k].fd >= 0:
                c_close(self.w.slots[k].fd)
                self.w.slots[k].fd = -1
        listed = set()
        # the counts the summary gives become those of what stays: the lines kept
        self.files = self.spliced_files = self.spliced_bytes = 0
        try:
            # (the index this run made: read as it is, never through a symlink or from a FIFO)
            with open(os.open(self.index_path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK), "r+b") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise OSError()
                text = f.read()
                whole = text.rfind(b"\n") + 1
                f.truncate(whole)
            for line in text[:whole].splitlines():
                try:
                    entry = json.loads(line)
                    listed.add(entry["file"])
                    if entry["file"] is not None:
                        self.files += 1
                    spliced = sum(g["length"] for g in entry["gaps"] if g["file_offset"] < entry["bytes"])
                    if spliced and not self.zeros:
                        self.spliced_files += 1
                        self.spliced_bytes += spliced
                except (ValueError, KeyError, TypeError):
                    pass
        except OSError:
            pass                            # (no index: nothing is listed)
        try:
            with os.scandir(self.outdir) as it:
                for e in it:
                    if _STREAM_FILE.match(e.name) and e.name not in listed and e.is_file(follow_symlinks=False):
                        os.unlink(e.path)
                        self.removed += 1
        except OSError:
            pass
        return 0
