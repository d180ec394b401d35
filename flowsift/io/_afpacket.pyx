# cython: language_level=3
"""AF_PACKET: a TPACKET_V3 receive ring walked block by block in C, and a sender.

The receive side fills the same Batch the file readers fill: frame pointers go straight into
the ring (no copy); a block goes back to the kernel when the batch that used its frames is
done, i.e. at the next fill. The kernel runs the BPF program (SO_ATTACH_FILTER), so frames a
filter rejects never reach user space. PACKET_FANOUT (by flowsift's own symmetric hash, a
classic BPF program: flowsift.io.fanout) lets several gateway shards share an interface; PACKET_STATISTICS gives the kernel's drop counts.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t, uint64_t
from libc.string cimport memset, strlen, memcpy
from libc.errno cimport errno, EINTR, EAGAIN, ENETDOWN
from libc.stdlib cimport malloc, free

from flowsift.io._batch cimport Batch, pkt_t

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    int socket(int domain, int type, int protocol)
    int setsockopt(int fd, int level, int name, const void* val, socklen_t len)
    int getsockopt(int fd, int level, int name, void* val, socklen_t* len)
    struct sockaddr:
        pass
    int bind(int fd, const sockaddr* addr, socklen_t len)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    struct iovec:
        void* iov_base
        size_t iov_len
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int sendmmsg(int fd, mmsghdr* vec, unsigned int n, int flags)
    int AF_PACKET, SOCK_RAW, SOL_SOCKET, SO_ATTACH_FILTER, SO_RCVBUF, SO_ERROR, MSG_DONTWAIT

cdef extern from "<sys/mman.h>" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int PROT_READ, PROT_WRITE, MAP_SHARED
    void* MAP_FAILED

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long n, int timeout)
    short POLLIN, POLLERR

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<net/if.h>" nogil:
    unsigned int if_nametoindex(const char* name)
    char* if_indextoname(unsigned int index, char* name)
    int IFF_UP
    struct ifreq:
        char ifr_name[16]
        short ifr_flags

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)
    unsigned long SIOCGIFFLAGS

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t)

cdef extern from "<linux/filter.h>" nogil:
    struct sock_filter:
        pass
    struct sock_fprog:
        unsigned short len
        sock_filter* filter

cdef extern from "<linux/if_ether.h>" nogil:
    int ETH_P_ALL

cdef extern from "<linux/net_tstamp.h>" nogil:
    int SOF_TIMESTAMPING_RAW_HARDWARE

cdef extern from "<linux/if_packet.h>" nogil:
    struct sockaddr_ll:
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]
    struct tpacket_req3:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
        unsigned int tp_retire_blk_tov
        unsigned int tp_sizeof_priv
        unsigned int tp_feature_req_word
    struct tpacket_hdr_variant1:
        uint32_t tp_rxhash
        uint32_t tp_vlan_tci
        uint16_t tp_vlan_tpid
    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint32_t tp_status
        uint16_t tp_mac
        uint16_t tp_net
        tpacket_hdr_variant1 hv1
    struct tpacket_hdr_v1:
        uint32_t block_status
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
        uint32_t blk_len
    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1
    struct tpacket_block_desc:
        uint32_t version
        uint32_t offset_to_priv
        tpacket_bd_header_u hdr
    struct tpacket_stats_v3:
        unsigned int tp_packets
        unsigned int tp_drops
        unsigned int tp_freeze_q_cnt
    int SOL_PACKET, PACKET_VERSION, PACKET_RX_RING, PACKET_STATISTICS, PACKET_FANOUT, PACKET_TIMESTAMP
    int PACKET_FANOUT_CBPF, PACKET_FANOUT_DATA, PACKET_FANOUT_FLAG_DEFRAG, TPACKET_V3, PACKET_IGNORE_OUTGOING
    int TP_STATUS_KERNEL, TP_STATUS_USER, TP_STATUS_VLAN_VALID, TP_STATUS_TS_RAW_HARDWARE
    int PACKET_OUTGOING, TP_STATUS_VLAN_TPID_VALID

import os

DEF LINKTYPE_ETHERNET = 1


class AfPacketError(Exception):
    """The interface cannot be opened as asked (one line: what, and why)."""


class InterfaceGone(AfPacketError):
    """The interface being captured was deleted: no frame will come again."""


cdef str _err(str what):
    return f"{what}: {os.strerror(errno)}"


cdef int _take_error(int fd) noexcept nogil:
    # the socket's pending error, read (and so cleared: until it is, poll says POLLERR at once)
    cdef int e = 0
    cdef socklen_t n = sizeof(e)
    if getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &n) < 0:
        return 0
    return e


cdef class AfPacketSource:
    """Receive frames of interface `ifname` through a TPACKET_V3 ring of `block_nr` blocks of
    `block_size` bytes. `bpf_program`: bytes of a compiled classic BPF program (the kernel
    runs it); `fanout`: a group id, the sockets of the group sharing frames by `fanout_program`
    (classic BPF whose result, modulo the group's size, picks the socket: flowsift.io.fanout)."""
    cdef int fd
    cdef uint8_t* ring
    cdef size_t ring_size
    cdef readonly unsigned int block_size
    cdef readonly unsigned int block_nr
    cdef unsigned int block       # the block being read
    cdef unsigned int in_block    # frames of it already handed out
    cdef tpacket3_hdr* next_frame
    cdef unsigned int held        # blocks whose frames the last batch used: released at the next fill
    cdef readonly str ifname
    cdef readonly int ifindex
    cdef readonly uint64_t received
    cdef readonly uint64_t kernel_packets
    cdef readonly uint64_t kernel_drops
    cdef readonly uint64_t freeze_count
    cdef readonly uint64_t vlan_stripped    # frames whose 802.1Q tag the kernel took off, and we put back
    cdef readonly uint64_t hw_timestamps
    cdef readonly uint64_t blocks_read
    cdef readonly int hw_ts_requested
    cdef readonly bint down             # the kernel said the interface is down: nothing comes until it is up
    cdef readonly uint64_t went_down    # times it went down while captured
    cdef int sock_error                 # what the kernel said at the last POLLERR
    cdef uint8_t* arena           # frames rebuilt with their VLAN tag, valid until the next fill
    cdef size_t arena_size
    cdef size_t arena_used

    def __cinit__(self):
        self.fd = -1
        self.ring = NULL
        self.arena_size = 4 << 20
        self.arena = <uint8_t*> malloc(self.arena_size)
        if self.arena == NULL:
            raise MemoryError()

    def __init__(self, str ifname, unsigned int block_size=1 << 20, unsigned int block_nr=32,
                 bytes bpf_program=None, int fanout=-1, bint hw_timestamps=False, unsigned int retire_ms=20,
                 bint outgoing=True, bytes fanout_program=None):
        cdef tpacket_req3 req
        cdef sockaddr_ll sll
        cdef int v = TPACKET_V3, fan, one = 1, tsflags
        cdef sock_fprog prog
        self.ifname = ifname
        self.ifindex = if_nametoindex(ifname.encode())
        if self.ifindex == 0:
            raise AfPacketError(f"afpacket:{ifname}: no such interface")
        if block_size < 4096 or block_size & (block_size - 1):
            raise AfPacketError(f"afpacket:{ifname}: block size {block_size} must be a power of two >= 4096")
        # protocol 0: the socket receives nothing until bound, so no frame slips in before the filter
        self.fd = socket(AF_PACKET, SOCK_RAW, 0)
        if self.fd < 0:
            raise AfPacketError(_err(f"afpacket:{ifname}: cannot open a packet socket (needs CAP_NET_RAW)"))
        try:
            if bpf_program is not None:
                prog.len = len(bpf_program) // 8
                prog.filter = <sock_filter*> <char*> bpf_program
                if setsockopt(self.fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0:
                    raise AfPacketError(_err(f"afpacket:{ifname}: the kernel refused the filter"))
            if setsockopt(self.fd, SOL_PACKET, PACKET_VERSION, &v, sizeof(v)) < 0:
                raise AfPacketError(_err(f"afpacket:{ifname}: TPACKET_V3 not available"))
            if not outgoing and setsockopt(self.fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0:
                # (Linux 4.20 or later) refused: the host's own frames would come in all the same
                raise AfPacketError(_err(f"afpacket:{ifname}: outgoing=no refused"))
            self.hw_ts_requested = hw_timestamps
            if hw_timestamps:
                tsflags = SOF_TIMESTAMPING_RAW_HARDWARE
                if setsockopt(self.fd, SOL_PACKET, PACKET_TIMESTAMP, &tsflags, sizeof(tsflags)) < 0:
                    raise AfPacketError(_err(f"afpacket:{ifname}: hardware timestamps refused"))
            memset(&req, 0, sizeof(req))
            req.tp_block_size = block_size
            req.tp_block_nr = block_nr
            req.tp_frame_size = 2048
            req.tp_frame_nr = (block_size // 2048) * block_nr
            req.tp_retire_blk_tov = retire_ms
            if setsockopt(self.fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0:
                raise AfPacketError(_err(f"afpacket:{ifname}: cannot set up a ring of {block_nr} x {block_size} bytes"))
            self.block_size = block_size
            self.block_nr = block_nr
            self.ring_size = <size_t> block_size * block_nr
            self.ring = <uint8_t*> mmap(NULL, self.ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, self.fd, 0)
            if <void*> self.ring == MAP_FAILED:
                self.ring = NULL
                raise AfPacketError(_err(f"afpacket:{ifname}: cannot map the ring"))
            memset(&sll, 0, sizeof(sll))
            sll.sll_family = AF_PACKET
            sll.sll_protocol = htons(ETH_P_ALL)
            sll.sll_ifindex = self.ifindex
            if bind(self.fd, <sockaddr*> &sll, sizeof(sll)) < 0:
                raise AfPacketError(_err(f"afpacket:{ifname}: cannot bind"))
            # bound to a down interface, the socket waits for it to come up (and said ENETDOWN)
            self.down = _take_error(self.fd) == ENETDOWN
            if fanout >= 0:
                # no PACKET_FANOUT_FLAG_DEFRAG: on veth it loses frames without counting them
                # (19 of 483 of a corpus capture); flowsift defragments in user space
                if fanout_program is None:
                    raise AfPacketError(f"afpacket:{ifname}: a fan-out group needs its program")
                fan = (fanout & 0xFFFF) | (PACKET_FANOUT_CBPF << 16)
                if setsockopt(self.fd, SOL_PACKET, PACKET_FANOUT, &fan, sizeof(fan)) < 0:
                    raise AfPacketError(_err(f"afpacket:{ifname}: cannot join fan-out group {fanout}"))
                # every member sets the same program: the group has it whoever joined first
                prog.len = len(fanout_program) // 8
                prog.filter = <sock_filter*> <char*> fanout_program
                if setsockopt(self.fd, SOL_PACKET, PACKET_FANOUT_DATA, &prog, sizeof(prog)) < 0:
                    raise AfPacketError(_err(f"afpacket:{ifname}: the kernel refused the fan-out program"))
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.ring != NULL:
            munmap(self.ring, self.ring_size)
            self.ring = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def __dealloc__(self):
        self.close()
        free(self.arena)

    @property
    def linktype(self):
        return LINKTYPE_ETHERNET

    cdef inline tpacket_block_desc* _desc(self, unsigned int i) noexcept nogil:
        return <tpacket_block_desc*> (self.ring + <size_t> i * self.block_size)

    cdef void _retag(self, pkt_t* p, tpacket3_hdr* h) noexcept nogil:
        cdef uint8_t* dst = self.arena + self.arena_used
        cdef const uint8_t* src = p.data
        cdef uint16_t tpid = h.hv1.tp_vlan_tpid if (h.tp_status & TP_STATUS_VLAN_TPID_VALID) and h.hv1.tp_vlan_tpid else 0x8100
        cdef uint16_t tci = <uint16_t> h.hv1.tp_vlan_tci
        memcpy(dst, src, 12)
        dst[12] = tpid >> 8
        dst[13] = tpid & 0xFF
        dst[14] = tci >> 8
        dst[15] = tci & 0xFF
        memcpy(dst + 16, src + 12, p.caplen - 12)
        p.data = dst
        p.caplen += 4
        p.wirelen += 4
        self.arena_used += (p.caplen + 15) & ~(<size_t> 15)

    cdef void _release(self) noexcept nogil:
        # give back the blocks the previous batch finished with (all but a partly read one)
        cdef unsigned int k
        for k in range(self.held):
            self._desc((self.block + self.block_nr - self.held + k) % self.block_nr).hdr.bh1.block_status = TP_STATUS_KERNEL
        self.held = 0

    def fill(self, Batch batch, int timeout_ms=100, Py_ssize_t limit=-1):
        """Fill `batch` with the frames ready now (waiting up to `timeout_ms` for the first), at
        most `limit` (-1: as many as it holds); returns how many (0: none arrived in time).
        Frames stay valid until the next fill; those not taken stay in the ring."""
        cdef tpacket_block_desc* d
        cdef tpacket3_hdr* h
        cdef pkt_t* p
        cdef Py_ssize_t n = 0, cap = batch.capacity
        cdef pollfd pfd
        cdef int rc
        cdef uint64_t vlan = 0, hw = 0
        if 0 <= limit < cap:
            cap = limit
        if self.fd < 0:
            raise AfPacketError(f"afpacket:{self.ifname}: closed")
        with nogil:
            self._release()
            self.arena_used = 0
            while n < cap and self.held < self.block_nr:
                # (a held block is not read again before the kernel has had it back)
                d = self._desc(self.block)
                if not (d.hdr.bh1.block_status & TP_STATUS_USER):
                    if n > 0:
                        break
                    pfd.fd = self.fd
                    pfd.events = POLLIN | POLLERR
                    pfd.revents = 0
                    rc = poll(&pfd, 1, timeout_ms)
                    if rc > 0 and pfd.revents & POLLERR:
                        self.sock_error = _take_error(self.fd)
                    if rc <= 0 or not (d.hdr.bh1.block_status & TP_STATUS_USER):
                        break           # nothing in time (or a signal): the caller decides
                    continue
                if self.in_block == 0:
                    self.next_frame = <tpacket3_hdr*> (<uint8_t*> d + d.hdr.bh1.offset_to_first_pkt)
                    self.blocks_read += 1
                while self.in_block < d.hdr.bh1.num_pkts and n < cap:
                    h = self.next_frame
                    p = &batch.pkts[n]
                    memset(p, 0, sizeof(pkt_t))
                    p.ts_ns = <int64_t> h.tp_sec * 1000000000 + h.tp_nsec
                    p.data = <const uint8_t*> h + h.tp_mac
                    p.caplen = h.tp_snaplen
                    p.wirelen = h.tp_len
                    p.linktype = LINKTYPE_ETHERNET
                    p.rec_pos = self.received + n
                    if (h.tp_status & TP_STATUS_VLAN_VALID) and h.tp_snaplen >= 12:
                        # the kernel moved the 802.1Q tag out of the frame: put it back, so that
                        # flows of different VLANs stay apart and the frame is what was sent
                        if self.arena_used + h.tp_snaplen + 4 > self.arena_size:
                            cap = n         # the arena is full: the rest waits for the next fill
                            break
                        self._retag(p, h)
                        vlan += 1
                    if h.tp_status & TP_STATUS_TS_RAW_HARDWARE:
                        hw += 1
                    n += 1
                    self.in_block += 1
                    self.next_frame = <tpacket3_hdr*> (<uint8_t*> h + h.tp_next_offset)
                if self.in_block == d.hdr.bh1.num_pkts:
                    # every frame of the block is in this batch: it goes back at the next fill
                    self.in_block = 0
                    self.block = (self.block + 1) % self.block_nr
                    self.held += 1
        batch.n = n
        if self.sock_error:
            self._said(self.sock_error)
        if n == 0 and self.down:
            self._check_up()
        self.received += n
        self.vlan_stripped += vlan
        self.hw_timestamps += hw
        return n

    cdef _said(self, int e):
        self.sock_error = 0
        if e != ENETDOWN:
            raise AfPacketError(f"afpacket:{self.ifname}: {os.strerror(e)}")
        # the interface went down (or is being deleted; the kernel says so at each fall, not
        # while it stays down): the socket is off it until it is up again, and the next poll
        # waits, as the error was read
        self.went_down += 1
        self.down = True

    cdef _check_up(self):
        # nothing comes while it is down: is it up again, or gone? (by index: a rename is no matter)
        cdef char name[16]
        cdef ifreq ifr
        if if_indextoname(self.ifindex, name) == NULL:
            raise InterfaceGone(f"afpacket:{self.ifname}: the interface was deleted")
        memset(&ifr, 0, sizeof(ifr))
        memcpy(ifr.ifr_name, name, 16)
        if ioctl(self.fd, SIOCGIFFLAGS, &ifr) == 0 and ifr.ifr_flags & IFF_UP:
            self.down = False

    def statistics(self):
        """The kernel's counts since the socket opened: packets that passed the filter, drops
        (ring full), times the queue froze; and the frames it put in the ring that were not read
        (the run stopped first): kernel_packets = received + kernel_drops + left_in_ring."""
        cdef tpacket_stats_v3 st
        cdef socklen_t len = sizeof(st)
        if self.fd >= 0 and getsockopt(self.fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0:
            # reading resets the kernel's counters: keep the running totals here
            self.kernel_packets += st.tp_packets
            self.kernel_drops += st.tp_drops
            self.freeze_count += st.tp_freeze_q_cnt
        return {"kernel_packets": self.kernel_packets, "kernel_drops": self.kernel_drops,
                "freeze_count": self.freeze_count, "received": self.received,
                "vlan_tags_restored": self.vlan_stripped, "hw_timestamps": self.hw_timestamps,
                "blocks": self.blocks_read,
                "left_in_ring": self.kernel_packets - self.received - self.kernel_drops}


from libc.errno cimport ENXIO


cdef class AfPacketSink:
    """Send frames out of interface `ifname`, a batch per sendmmsg call."""
    cdef int fd
    cdef readonly str ifname
    cdef readonly int ifindex
    cdef readonly uint64_t sent
    cdef readonly uint64_t failed
    cdef readonly uint64_t failed_down      # of failed: the interface was down (ENETDOWN)
    cdef readonly uint64_t failed_gone      # of failed: the interface bound was deleted (ENXIO)
    cdef readonly uint64_t bytes_sent
    cdef mmsghdr* msgs
    cdef iovec* iovs
    cdef int cap

    def __cinit__(self):
        self.fd = -1
        self.msgs = NULL
        self.iovs = NULL

    def __init__(self, str ifname, int capacity=1024):
        self.ifname = ifname
        self.ifindex = if_nametoindex(ifname.encode())
        if self.ifindex == 0:
            raise AfPacketError(f"afpacket:{ifname}: no such interface")
        self.fd = socket(AF_PACKET, SOCK_RAW, 0)
        if self.fd < 0:
            raise AfPacketError(_err(f"afpacket:{ifname}: cannot open a packet socket (needs CAP_NET_RAW)"))
        if self._bind(self.ifindex) < 0:
            e = _err(f"afpacket:{ifname}: cannot bind")
            self.close()
            raise AfPacketError(e)
        self.cap = capacity
        self.msgs = <mmsghdr*> malloc(capacity * sizeof(mmsghdr))
        self.iovs = <iovec*> malloc(capacity * sizeof(iovec))
        if self.msgs == NULL or self.iovs == NULL:
            raise MemoryError()

    cdef int _bind(self, int ifindex) noexcept:
        cdef sockaddr_ll sll
        memset(&sll, 0, sizeof(sll))
        sll.sll_family = AF_PACKET
        sll.sll_protocol = 0            # send only: receive nothing
        sll.sll_ifindex = ifindex
        return bind(self.fd, <sockaddr*> &sll, sizeof(sll))

    def rebind(self):
        """Bind again to the interface that has the name now (the one bound was deleted, and
        one of that name may have come since); returns its index, or 0 when there is none."""
        cdef int ifindex = if_nametoindex(self.ifname.encode())
        if ifindex == 0 or self.fd < 0 or self._bind(ifindex) < 0:
            return 0
        self.ifindex = ifindex
        return ifindex

    def close(self):
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def __dealloc__(self):
        self.close()
        free(self.msgs)
        free(self.iovs)

    cdef int send_frames(self, const uint8_t** frames, const uint32_t* lens, int n) except -1:
        """Send n frames; returns how many the kernel took (the rest are counted as failed)."""
        cdef int i, done = 0, rc, k, took = 0
        while done < n:
            k = n - done if n - done < self.cap else self.cap
            for i in range(k):
                self.iovs[i].iov_base = <void*> frames[done + i]
                self.iovs[i].iov_len = lens[done + i]
                memset(&self.msgs[i], 0, sizeof(mmsghdr))
                self.msgs[i].msg_hdr.msg_iov = &self.iovs[i]
                self.msgs[i].msg_hdr.msg_iovlen = 1
            with nogil:
                rc = sendmmsg(self.fd, self.msgs, k, 0)
            if rc < 0:
                if errno == EINTR:
                    continue
                # one frame the device will not take (too long, the interface down): count it and go on
                self.failed += 1
                if errno == ENETDOWN:
                    self.failed_down += 1
                elif errno == ENXIO:
                    self.failed_gone += 1
                done += 1
                continue
            for i in range(rc):
                self.bytes_sent += lens[done + i]
            self.sent += rc
            took += rc
            done += rc if rc > 0 else 1
        return took

    def send(self, frames):
        """Send a list of frames (bytes); returns how many the kernel took."""
        cdef int n = len(frames), i
        cdef const uint8_t** ptrs = <const uint8_t**> malloc(max(n, 1) * sizeof(void*))
        cdef uint32_t* lens = <uint32_t*> malloc(max(n, 1) * sizeof(uint32_t))
        keep = [bytes(f) for f in frames]
        try:
            for i in range(n):
                ptrs[i] = <const uint8_t*> <char*> keep[i]
                lens[i] = len(keep[i])
            return self.send_frames(ptrs, lens, n)
        finally:
            free(ptrs)
            free(lens)

    def send_batch(self, Batch batch, bytes skip=None, dict replace=None):
        """Send the frames of `batch` as captured, but not those whose byte `skip[i]` is set, and
        `replace[i]` (bytes) instead of frame i where given. Returns how many the kernel took (not
        those it refused: counted in `failed`)."""
        cdef int n = batch.n, i, k = 0
        cdef const uint8_t* sk = NULL
        if skip is not None:
            if len(skip) < n:
                raise ValueError("skip is shorter than the batch")
            sk = <const uint8_t*> <char*> skip
        cdef const uint8_t** ptrs = <const uint8_t**> malloc(max(n, 1) * sizeof(void*))
        cdef uint32_t* lens = <uint32_t*> malloc(max(n, 1) * sizeof(uint32_t))
        cdef bytes b
        try:
            for i in range(n):
                if sk != NULL and sk[i]:
                    continue
                if replace and i in replace:
                    b = replace[i]
                    ptrs[k] = <const uint8_t*> <char*> b
                    lens[k] = len(b)
                else:
                    ptrs[k] = batch.pkts[i].data
                    lens[k] = batch.pkts[i].caplen
                k += 1
            return self.send_frames(ptrs, lens, k)
        finally:
            free(ptrs)
            free(lens)

    def counters(self):
        return {"sent": self.sent, "failed": self.failed, "bytes": self.bytes_sent}
