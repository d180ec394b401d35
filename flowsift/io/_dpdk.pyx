# cython: language_level=3
"""DPDK ports: rte_eth_rx_burst into the usual batches, rte_eth_tx_burst for egress.

Built only where `pkg-config libdpdk` is found. The EAL is initialised once per process (DPDK
allows no second time); mbufs of a batch are freed at the next fill, after the gateway has
copied what it keeps. Multi-segment packets are copied into one buffer, which grows to hold
every one of a batch; frames larger than one mbuf leave as a chain of them.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memset
from libc.stdio cimport fflush

import os
import re
import sys
import tempfile

from flowsift.io._batch cimport Batch, pkt_t

cdef extern from "unistd.h" nogil:
    int _usleep "usleep"(unsigned int usec)

# empty polls of a port before it is polled with pauses, and the longest pause (µs)
DEF IDLE_POLLS = 256
DEF IDLE_MAX_US = 1000


cdef extern from "rte_dev.h" nogil:
    pass

cdef extern from "_dpdk_helpers.h" nogil:
    struct rte_mbuf:
        pass
    struct rte_mempool:
        pass
    int rte_eal_init(int argc, char** argv)
    int rte_eal_cleanup()
    int rte_errno
    const char* rte_strerror(int errnum)
    int rte_socket_id()
    int rte_eth_dev_get_port_by_name(const char* name, uint16_t* port_id)
    int rte_dev_probe(const char* devargs)
    int rte_eth_dev_count_avail()
    int rte_eth_dev_is_valid_port(uint16_t port_id)
    int rte_eth_dev_socket_id(uint16_t port_id)
    int rte_eth_rx_queue_setup(uint16_t port, uint16_t q, uint16_t nb_desc, unsigned int socket, void* conf, rte_mempool* pool)
    int rte_eth_tx_queue_setup(uint16_t port, uint16_t q, uint16_t nb_desc, unsigned int socket, void* conf)
    int rte_eth_dev_start(uint16_t port)
    int rte_eth_dev_stop(uint16_t port)
    int rte_eth_dev_close(uint16_t port)
    int rte_eth_promiscuous_enable(uint16_t port)
    uint16_t rte_eth_rx_burst(uint16_t port, uint16_t q, rte_mbuf** pkts, uint16_t n)
    uint16_t rte_eth_tx_burst(uint16_t port, uint16_t q, rte_mbuf** pkts, uint16_t n)
    rte_mempool* rte_pktmbuf_pool_create(const char* name, unsigned n, unsigned cache, uint16_t priv, uint16_t data_room, int socket)
    void rte_pktmbuf_free(rte_mbuf* m)
    uint16_t RTE_MBUF_DEFAULT_BUF_SIZE
    uint64_t RTE_ETH_RX_OFFLOAD_TIMESTAMP
    const uint8_t* fs_mbuf_data(rte_mbuf* m)
    uint32_t fs_mbuf_data_len(rte_mbuf* m)
    uint32_t fs_mbuf_pkt_len(rte_mbuf* m)
    uint16_t fs_mbuf_segs(rte_mbuf* m)
    int64_t fs_mbuf_ts(rte_mbuf* m)
    int fs_ts_register()
    int64_t fs_now_ns()
    uint32_t fs_mbuf_copy(rte_mbuf* m, uint8_t* dst, uint32_t cap)
    int fs_port_configure(uint16_t port, uint64_t rx_offloads, uint64_t tx_offloads)
    int fs_port_tx_segs(uint16_t port)
    uint32_t fs_mbuf_room(rte_mempool* pool)
    uint64_t RTE_ETH_TX_OFFLOAD_MULTI_SEGS
    uint64_t fs_port_rx_capa(uint16_t port)
    const char* fs_port_driver(uint16_t port)
    int fs_port_stats(uint16_t port, uint64_t* out)
    rte_mbuf* fs_mbuf_from(rte_mempool* pool, const uint8_t* data, uint32_t n)

DEF BURST = 64
DEF MBUF_ROOM = 9216 + 128    # a 9000-byte MTU frame plus DPDK's headroom
DEF BIG_ROOM = 65535          # the largest mbuf: a frame to send whole, for ports that take no chains
DEF BIG_MBUFS = 511


class DpdkError(Exception):
    """The EAL or a port would not do what was asked (one line: what, and DPDK's reason)."""


cdef bint _eal_ready = False
_eal_args = None
_ports = {}                   # port id -> DpdkPort (a port is configured once per process)
_made_with = {}               # a virtual device flowsift probed -> the arguments it was given


def _err(what):
    return f"{what}: {rte_strerror(rte_errno).decode()}"


# DPDK's messages that say nothing about what went wrong
_NOISE = re.compile(r"Detected |Multi-process socket|Selected IOVA|auxiliary bus|Invalid 'command line' arguments|"
                    r"Driver cannot attach the device|Failed to attach device|Initializing pmd|No legacy callbacks")
DEBUG_HINT = "FLOWSIFT_DEBUG=1 shows DPDK's own messages"


class _Captured:
    """What DPDK writes while the EAL starts or a device probes (its log, getopt's complaints, its
    usage text): kept off the terminal, for flowsift's one line; FLOWSIFT_DEBUG=1 shows it."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        fflush(NULL)
        self.file = tempfile.TemporaryFile()
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        fflush(NULL)
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.seek(0)
        self.text = self.file.read().decode(errors="replace")
        self.file.close()
        if self.text and os.environ.get("FLOWSIFT_DEBUG"):
            os.write(2, self.text.encode())
        return False

    def reason(self):
        """DPDK's first word on the failure, without its prefixes; or where to look."""
        for line in self.text.splitlines():
            line = line.strip()
            if line.startswith("Usage:"):
                break
            if not line or _NOISE.search(line):
                continue
            line = re.sub(r"^(EAL: |flowsift: |\w+\(\): )", "", line)
            line = re.sub(r"^(FATAL: |Error - )", "", line).rstrip(".")
            return f"{line}; {DEBUG_HINT}"
        return DEBUG_HINT


def eal_init(list args):
    """Initialise the EAL once per process with `args` (already checked by the caller)."""
    global _eal_ready, _eal_args
    if _eal_ready:
        if args != _eal_args:
            raise DpdkError("the DPDK EAL is initialised once per process; it already is, with other arguments")
        return
    cdef int argc = len(args) + 1, rc
    cdef char** argv = <char**> malloc((argc + 1) * sizeof(char*))
    encoded = [b"flowsift"] + [a.encode() for a in args]
    for i, a in enumerate(encoded):
        argv[i] = a
    argv[argc] = NULL
    try:
        with _Captured() as said:
            rc = rte_eal_init(argc, argv)
    finally:
        free(argv)
    if rc < 0:
        raise DpdkError(f"DPDK refused --dpdk-args {' '.join(args)!r}: {said.reason()}")
    if fs_ts_register() < 0:
        pass                  # no timestamp field: frames get the time they were read
    _eal_ready = True
    _eal_args = list(args)


def port_by_name(str name):
    cdef uint16_t port
    if rte_eth_dev_get_port_by_name(name.encode(), &port) != 0:
        return None
    return port


def ports_available():
    return rte_eth_dev_count_avail()


_PCAP_KEYS = {"rx_pcap", "tx_pcap", "rx_iface", "rx_iface_in", "tx_iface", "iface"}


def _probe_failed(str devargs, said):
    """Why a device did not probe, where flowsift can tell; else DPDK's own reason."""
    name = devargs.split(",", 1)[0]
    keys = {a.partition("=")[0].strip() for a in devargs.split(",")[1:]}
    if "failed to parse device" in said.text:
        # (a virtual device is its driver's name and a number)
        return (f"dpdk:{devargs}: unknown DPDK driver {re.sub(r'[0-9]+$', '', name)} "
                f"(a virtual device is its driver's name and a number: net_pcap0, net_ring0, net_null0, ...)")
    if name.startswith("net_pcap") and not keys & _PCAP_KEYS:
        return f"dpdk:{devargs}: {name} needs rx_pcap=FILE, rx_iface=IFACE or iface=IFACE (tx_pcap=FILE or tx_iface=IFACE to send)"
    return f"dpdk:{devargs}: the device did not probe: {said.reason()}"


def open_port(str devargs, unsigned int mbufs=8191):
    """The port named by `devargs`: a port id ("0"), or a virtual device ("net_pcap0,rx_pcap=F"),
    probed now if it is not there yet. One DpdkPort per port per process."""
    cdef uint16_t port
    name = devargs.split(",", 1)[0]
    given = "," in devargs
    if name in _ports:
        if given and _made_with.get(name) != devargs:
            # (the device's arguments are those it was made with: others would be ignored)
            raise DpdkError(f"dpdk:{devargs}: {name} is open already, made "
                            + (f"as dpdk:{_made_with[name]}" if name in _made_with else "by --dpdk-args --vdev")
                            + f": name it alone (dpdk:{name}), or give another device")
        return _ports[name]
    if name.isdigit():
        port = int(name)
        if not rte_eth_dev_is_valid_port(port):
            raise DpdkError(f"dpdk:{name}: no such port ({rte_eth_dev_count_avail()} available; is the NIC bound to a DPDK driver?)")
    else:
        if rte_eth_dev_get_port_by_name(name.encode(), &port) == 0:
            if given:
                raise DpdkError(f"dpdk:{devargs}: {name} was made by --dpdk-args --vdev, with its own arguments: "
                                f"name it alone (dpdk:{name}), or give another device")
        else:
            with _Captured() as said:
                rc = rte_dev_probe(devargs.encode())
            if rc < 0:
                raise DpdkError(_probe_failed(devargs, said))
            if rte_eth_dev_get_port_by_name(name.encode(), &port) != 0:
                raise DpdkError(f"dpdk:{devargs}: probed, but no port came of it")
    for p in _ports.values():
        if p.port == port:
            # the port open already under its other name (dpdk:0 for the source's net_pcap0):
            # one port, one DpdkPort (a second would fail to make its pool, "File exists")
            _ports[name] = p
            return p
    with _Captured():
        p = DpdkPort(port, name, mbufs)
    _ports[name] = p
    if given:
        _made_with[name] = devargs
    return p


cdef class DpdkPort:
    """One port, one Rx and one Tx queue."""
    cdef readonly int port
    cdef readonly str name
    cdef readonly unsigned int mbufs    # its pool's packet buffers
    cdef rte_mempool* pool
    cdef rte_mbuf* held[512]
    cdef int n_held
    cdef uint8_t* segbuf        # the multi-segment packets of the batch, joined end to end
    cdef size_t used_segbuf
    cdef size_t cap_segbuf
    cdef int seg_at[512]        # batch index of each joined packet, and its offset in segbuf
    cdef size_t seg_off[512]
    cdef readonly uint64_t received
    cdef readonly uint64_t copied_multiseg
    cdef readonly uint64_t truncated
    cdef readonly uint64_t hw_timestamps
    cdef readonly uint64_t sent
    cdef readonly uint64_t tx_failed
    cdef readonly uint64_t tx_too_large     # of tx_failed: larger than the largest mbuf, and the port sends no chains
    cdef readonly uint64_t tx_no_mbufs      # of tx_failed: the pool had none left
    cdef readonly bint tx_segs
    cdef uint32_t room
    cdef rte_mempool* big_pool  # made at the first frame that needs it
    cdef readonly bint timestamps
    cdef readonly bint started
    cdef rte_mbuf* _out[512]    # frames queued for the next tx burst
    cdef int _k
    cdef int _done
    cdef int ts_unit            # 0: not seen yet; 1000: µs since the epoch; 1: ns; -1: a device clock (unused)

    def __cinit__(self):
        self.segbuf = NULL
        self.big_pool = NULL
        self.n_held = 0

    def __init__(self, int port, str name, unsigned int mbufs=8191):
        cdef uint64_t offloads = 0
        cdef int sock, rc
        if not rte_eth_dev_is_valid_port(port):
            raise DpdkError(f"dpdk:{name}: no such port")
        self.port = port
        self.name = name
        self.mbufs = mbufs
        sock = rte_eth_dev_socket_id(port)
        if sock < 0:
            sock = 0
        # room for a jumbo frame in one mbuf: no segments to join in the common case
        self.pool = rte_pktmbuf_pool_create(f"fs_pool_{port}".encode(), mbufs, 256, 0, MBUF_ROOM, sock)
        if self.pool == NULL:
            raise DpdkError(_err(f"dpdk:{name}: cannot create a pool of {mbufs} packet buffers "
                                 f"(about {mbufs * 9.5 / 1024:.0f} MiB: raise -m in --dpdk-args, or set mbufs=N)"))
        if fs_port_rx_capa(port) & RTE_ETH_RX_OFFLOAD_TIMESTAMP:
            offloads |= RTE_ETH_RX_OFFLOAD_TIMESTAMP
            self.timestamps = True
        # frames larger than one mbuf leave as a chain, where the port takes them
        self.tx_segs = fs_port_tx_segs(port)
        self.room = fs_mbuf_room(self.pool)
        rc = fs_port_configure(port, offloads, RTE_ETH_TX_OFFLOAD_MULTI_SEGS if self.tx_segs else 0)
        if rc < 0:
            raise DpdkError(f"dpdk:{name}: cannot configure the port: {rte_strerror(-rc).decode()}")
        rc = rte_eth_rx_queue_setup(port, 0, 1024, sock, NULL, self.pool)
        if rc < 0:
            raise DpdkError(f"dpdk:{name}: cannot set up an Rx queue: {rte_strerror(-rc).decode()}")
        rc = rte_eth_tx_queue_setup(port, 0, 1024, sock, NULL)
        if rc < 0:
            raise DpdkError(f"dpdk:{name}: cannot set up a Tx queue: {rte_strerror(-rc).decode()}")
        rc = rte_eth_dev_start(port)
        if rc < 0:
            raise DpdkError(f"dpdk:{name}: cannot start the port: {rte_strerror(-rc).decode()}")
        self.started = True
        if self.driver == "net_pcap":
            # µs since the epoch, the capture's own: a capture of 1970 is not a device clock
            self.ts_unit = 1000
        rte_eth_promiscuous_enable(port)      # virtual devices may not support it: no matter
        self.cap_segbuf = 0

    @property
    def driver(self):
        return fs_port_driver(self.port).decode()

    cdef void _free_held(self) noexcept nogil:
        cdef int i
        for i in range(self.n_held):
            rte_pktmbuf_free(self.held[i])
        self.n_held = 0

    def fill(self, Batch batch, int timeout_ms=100, Py_ssize_t limit=-1):
        """Fill `batch` with the packets the port has (polling up to `timeout_ms` for the
        first: DPDK has no interrupts here), at most `limit` (-1: as many as it holds); 0 if
        none came. Those not taken stay in the port's queue."""
        cdef rte_mbuf* m
        cdef rte_mbuf* burst[BURST]
        cdef pkt_t* p
        cdef Py_ssize_t n = 0, cap = batch.capacity
        cdef uint16_t got, i, want
        cdef int64_t ts, deadline
        cdef uint32_t empty = 0
        cdef uint64_t hw = 0, multi = 0, trunc = 0
        cdef int n_seg = 0, j
        cdef size_t want_room
        cdef uint8_t* grown
        cdef int64_t e14 = 100000000000000, e17 = 100000000000000000     # µs and ns since the epoch, today
        if cap > 512:
            cap = 512
        if 0 <= limit < cap:
            cap = limit
        with nogil:
            self._free_held()
            self.used_segbuf = 0
            deadline = fs_now_ns() + <int64_t> timeout_ms * 1000000
            while n < cap:
                want = BURST if cap - n > BURST else <uint16_t> (cap - n)
                got = rte_eth_rx_burst(self.port, 0, burst, want)
                if got == 0:
                    if n > 0 or fs_now_ns() >= deadline:
                        break
                    # an idle port is polled less and less often (up to every IDLE_MAX_US) rather
                    # than spinning a core: a packet after a quiet spell waits that long at most
                    empty += 1
                    if empty > IDLE_POLLS:
                        _usleep(IDLE_MAX_US if empty > IDLE_POLLS + 64 else (empty - IDLE_POLLS) * (IDLE_MAX_US // 64))
                    continue
                empty = 0
                for i in range(got):
                    m = burst[i]
                    self.held[self.n_held] = m
                    self.n_held += 1
                    p = &batch.pkts[n]
                    memset(p, 0, sizeof(pkt_t))
                    ts = fs_mbuf_ts(m)
                    if ts >= 0 and self.ts_unit == 0:
                        # the field's unit is the driver's: NICs often give ns of their own clock,
                        # taken for epoch times only when they look like today's
                        if ts >= e17:
                            self.ts_unit = 1
                        elif ts > e14:
                            self.ts_unit = 1000
                        else:
                            self.ts_unit = -1
                    if ts >= 0 and self.ts_unit > 0:
                        ts *= self.ts_unit
                        hw += 1
                    else:
                        ts = fs_now_ns()
                    p.ts_ns = ts
                    p.linktype = 1
                    p.rec_pos = self.received + n
                    p.wirelen = fs_mbuf_pkt_len(m)
                    if fs_mbuf_segs(m) == 1:
                        p.data = fs_mbuf_data(m)
                        p.caplen = fs_mbuf_data_len(m)
                    else:
                        # segments of one packet are made one frame (decode reads it whole); the
                        # buffer may move as it grows, so the frame's address is set at the end
                        want_room = self.used_segbuf + fs_mbuf_pkt_len(m)
                        if want_room > self.cap_segbuf:
                            grown = <uint8_t*> realloc(self.segbuf, want_room * 2)
                            if grown != NULL:
                                self.segbuf = grown
                                self.cap_segbuf = want_room * 2
                        if want_room <= self.cap_segbuf:
                            p.caplen = fs_mbuf_copy(m, self.segbuf + self.used_segbuf, fs_mbuf_pkt_len(m))
                            self.seg_at[n_seg] = <int> n
                            self.seg_off[n_seg] = self.used_segbuf
                            n_seg += 1
                            self.used_segbuf += p.caplen
                            multi += 1
                            if p.caplen < p.wirelen:
                                trunc += 1
                        else:
                            # no memory: the first segment alone, counted
                            p.data = fs_mbuf_data(m)
                            p.caplen = fs_mbuf_data_len(m)
                            trunc += 1
                    n += 1
                if got < want:
                    break
            for j in range(n_seg):
                batch.pkts[self.seg_at[j]].data = self.segbuf + self.seg_off[j]
        batch.n = n
        self.received += n
        self.hw_timestamps += hw
        self.copied_multiseg += multi
        self.truncated += trunc
        return n

    def send_batch(self, Batch batch, bytes skip=None, dict replace=None):
        """Send the frames of `batch` (not those whose byte `skip[i]` is set; `replace[i]`
        instead of frame i where given). Returns how many the port took."""
        cdef int n = batch.n, i
        cdef const uint8_t* sk = NULL
        cdef bytes b
        self._k = self._done = 0
        if skip is not None:
            sk = <const uint8_t*> <char*> skip
        for i in range(n):
            if sk != NULL and sk[i]:
                continue
            if replace and i in replace:
                b = replace[i]
                self._queue(<const uint8_t*> <char*> b, len(b))
            else:
                self._queue(batch.pkts[i].data, batch.pkts[i].caplen)
        return self._flush()

    def send(self, frames):
        """Send a list of frames (bytes)."""
        cdef bytes b
        self._k = self._done = 0
        for f in frames:
            b = bytes(f)
            self._queue(<const uint8_t*> <char*> b, len(b))
        return self._flush()

    cdef void _queue(self, const uint8_t* data, uint32_t n):
        # a frame into mbufs of our pool (the caller's memory is not the pool's), sent 512 at a time
        cdef rte_mbuf* m
        cdef rte_mempool* pool = self.pool
        if n > self.room and not self.tx_segs:
            # the port takes no chains: a frame larger than one mbuf goes in one big one
            if n > BIG_ROOM - (MBUF_ROOM - self.room):
                self.tx_too_large += 1
                self.tx_failed += 1
                return
            if self.big_pool == NULL:
                self.big_pool = rte_pktmbuf_pool_create(f"fs_big_{self.port}".encode(), BIG_MBUFS, 0, 0,
                                                        BIG_ROOM, -1)   # (any socket)
            pool = self.big_pool
        m = fs_mbuf_from(pool, data, n) if pool != NULL else NULL
        if m == NULL:
            self.tx_no_mbufs += 1
            self.tx_failed += 1
            return
        self._out[self._k] = m
        self._k += 1
        if self._k == 512:
            self._done += self._tx(self._out, self._k)
            self._k = 0

    cdef int _flush(self):
        if self._k:
            self._done += self._tx(self._out, self._k)
            self._k = 0
        return self._done

    cdef int _tx(self, rte_mbuf** out, int k):
        cdef int sent = 0, tries = 0, j
        cdef uint16_t rc
        with nogil:
            while sent < k and tries < 1000:
                rc = rte_eth_tx_burst(self.port, 0, out + sent, <uint16_t> (k - sent))
                sent += rc
                tries = tries + 1 if rc == 0 else 0
            for j in range(sent, k):
                rte_pktmbuf_free(out[j])
        self.sent += sent
        self.tx_failed += k - sent
        return sent

    def statistics(self):
        cdef uint64_t st[8]
        out = {"received": self.received, "sent": self.sent, "tx_failed": self.tx_failed,
               "tx_too_large": self.tx_too_large, "tx_no_mbufs": self.tx_no_mbufs,
               "port_timestamps": self.hw_timestamps, "multi_segment_copied": self.copied_multiseg,
               "truncated": self.truncated, "driver": self.driver}
        if fs_port_stats(self.port, st) == 0:
            out.update(port_ipackets=st[0], port_opackets=st[1], port_imissed=st[2], port_ierrors=st[3],
                       port_oerrors=st[4], port_rx_nombuf=st[5])
        return out

    def close(self):
        with nogil:
            self._free_held()
        if self.started:
            rte_eth_dev_stop(self.port)
            self.started = False

    def __dealloc__(self):
        free(self.segbuf)
