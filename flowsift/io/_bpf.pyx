# cython: language_level=3
"""BPF filters compiled by libpcap and run per packet in C (bpf_filter), one program per link type."""
from libc.stdint cimport uint8_t, uint16_t

from flowsift.io._batch cimport Batch, pkt_t, ST_OK
from flowsift.io._bytes cimport fs_ld32

from libc.stdio cimport FILE, fclose

cdef extern from "stdio.h" nogil:
    FILE* fmemopen(void* buf, size_t size, const char* mode)

cdef extern from "pcap/pcap.h" nogil:
    ctypedef struct pcap_t:
        pass
    pcap_t* pcap_fopen_offline(FILE* fp, char* errbuf)
    struct bpf_insn:
        pass
    struct bpf_program:
        unsigned int bf_len
        bpf_insn* bf_insns
    pcap_t* pcap_open_dead(int linktype, int snaplen)
    int pcap_compile(pcap_t* p, bpf_program* fp, const char* s, int optimize, unsigned int netmask)
    char* pcap_geterr(pcap_t* p)
    void pcap_freecode(bpf_program* fp)
    void pcap_close(pcap_t* p)
    unsigned int bpf_filter(const bpf_insn* pc, const unsigned char* pkt, unsigned int wirelen, unsigned int buflen)
    const char* pcap_datalink_val_to_name(int dlt)
    unsigned int PCAP_NETMASK_UNKNOWN

import struct

from flowsift.io.reasons import SUPPORTED_LINKTYPES

# libpcap's own snaplen ceiling; the compiler only uses it to bound loads.
DEF COMPILE_SNAPLEN = 262144
DEF MAX_PROGS = 32


class BpfError(Exception):
    """A filter expression libpcap would not compile (message is libpcap's)."""


cdef class BpfFilter:
    """`apply(batch)` keeps the frames the expression accepts and counts the rest."""
    cdef readonly str expression
    cdef bpf_program progs[MAX_PROGS]
    cdef int linktypes[MAX_PROGS]
    cdef int keep_unfiltered[MAX_PROGS]     # no program: frames flowsift cannot decode anyway pass
    cdef unsigned long long not_applicable_frames[MAX_PROGS]
    cdef int n_progs
    cdef int n_compiled
    cdef readonly unsigned long long rejected
    cdef readonly unsigned long long accepted
    cdef readonly dict not_applicable        # link type -> libpcap's reason

    def __cinit__(self, str expression):
        self.expression = expression
        self.n_progs = 0
        self.n_compiled = 0
        self.not_applicable = {}
        self.check()

    def __dealloc__(self):
        cdef int i
        for i in range(self.n_progs):
            if self.progs[i].bf_insns != NULL:
                pcap_freecode(&self.progs[i])

    def check(self, int linktype=1):
        """Compile for `linktype` without keeping the program; raises BpfError."""
        cdef bpf_program prog
        self._compile(linktype, &prog)
        pcap_freecode(&prog)

    cdef int _compile(self, int linktype, bpf_program* prog) except -1:
        # Compile as tcpdump does for a *file* of this link type: libpcap's code generator
        # treats offline captures differently (DLT_NULL accepts every BSD AF_INET6 value, in
        # the file's byte order), so it is given an in-memory pcap header rather than
        # pcap_open_dead. A "linktype" above 0xFFFF asks for the byte-swapped variant.
        cdef char errbuf[256]
        cdef bytes header = struct.pack(">IHHiIII" if linktype >> 16 else "<IHHiIII",
                                        0xA1B2C3D4, 2, 4, 0, 0, COMPILE_SNAPLEN, linktype & 0xFFFF)
        cdef FILE* fp = fmemopen(<char*> header, len(header), "rb")
        if fp == NULL:
            raise MemoryError()
        cdef pcap_t* pd = pcap_fopen_offline(fp, errbuf)
        if pd == NULL:
            fclose(fp)
            raise BpfError(errbuf.decode("utf-8", "replace"))
        expr = self.expression.encode()
        try:
            if pcap_compile(pd, prog, expr, 1, PCAP_NETMASK_UNKNOWN) != 0:
                raise BpfError(pcap_geterr(pd).decode("utf-8", "replace"))
        finally:
            pcap_close(pd)
        return 0

    cdef int _index(self, int linktype) except -2:
        cdef int i, j
        for i in range(self.n_progs):
            if self.linktypes[i] == linktype:
                return i
        if self.n_progs == MAX_PROGS:
            raise BpfError(f"more than {MAX_PROGS} link types in one capture")
        j = self.n_progs
        try:
            self._compile(linktype, &self.progs[j])
            self.n_compiled += 1
        except BpfError as e:
            # one interface of a capture (a USB or loopback one beside Ethernet) must not make
            # the filter unusable for the others: its frames are counted, not filtered
            self.progs[j].bf_insns = NULL
            self.progs[j].bf_len = 0
            self.not_applicable[linktype & 0xFFFF] = str(e)
            self.keep_unfiltered[j] = (linktype & 0xFFFF) not in SUPPORTED_LINKTYPES
        self.not_applicable_frames[j] = 0
        self.linktypes[j] = linktype
        self.n_progs += 1
        return j

    def not_applicable_counts(self):
        """{link type: frames} of link types the expression means nothing for, rejected (the
        ones flowsift decodes) or passed on to be counted as unsupported (the others)."""
        cdef int j
        out = {}
        for j in range(self.n_progs):
            if self.progs[j].bf_insns == NULL:
                lt = self.linktypes[j] & 0xFFFF
                out[lt] = out.get(lt, 0) + self.not_applicable_frames[j]
        return out

    def finish(self):
        """At the end of a source: raise BpfError when the expression could be applied to
        none of its link types (what one bad link type alone would have been)."""
        if self.n_compiled == 0 and self.not_applicable:
            lt, why = next(iter(self.not_applicable.items()))
            raise BpfError(why)

    # DLT_NULL's family field is in the byte order of the machine that captured, which
    # pcapng does not record per interface: a family that reads as > 0xFFFF here was written
    # big-endian, and gets the program compiled for a byte-swapped file.
    @staticmethod
    cdef inline int _effective_linktype(const pkt_t* p) noexcept nogil:
        if p.linktype == 0 and p.caplen >= 4 and fs_ld32(p.data) > 0xFFFF:
            return 0x10000
        return p.linktype

    def apply(self, Batch batch):
        """Compact `batch` to the accepted frames; returns how many were rejected."""
        cdef Py_ssize_t i, k = 0, n = batch.n
        cdef pkt_t* p
        cdef int j, lt, last_lt = -1, last_j = -1
        cdef unsigned long long rej = 0
        # compile for link types not met before (needs the GIL); the loop below does not
        for i in range(n):
            p = &batch.pkts[i]
            lt = BpfFilter._effective_linktype(p)
            if p.status == ST_OK and lt != last_lt:
                last_lt = lt
                self._index(lt)
        last_lt = -1
        with nogil:
            for i in range(n):
                p = &batch.pkts[i]
                if p.status == ST_OK:
                    # frames a reader already rejected stay: they are reported under their reason
                    lt = BpfFilter._effective_linktype(p)
                    if lt != last_lt:
                        last_lt = lt
                        for j in range(self.n_progs):
                            if self.linktypes[j] == last_lt:
                                last_j = j
                                break
                    if self.progs[last_j].bf_insns == NULL:
                        self.not_applicable_frames[last_j] += 1
                        if not self.keep_unfiltered[last_j]:
                            rej += 1
                            continue
                    elif bpf_filter(self.progs[last_j].bf_insns, p.data, p.wirelen, p.caplen) == 0:
                        rej += 1
                        continue
                if k != i:
                    batch.pkts[k] = batch.pkts[i]
                k += 1
        batch.n = k
        self.rejected += rej
        self.accepted += k
        return rej

    def program(self, int linktype=1):
        """The compiled program for `linktype` as bytes: struct bpf_insn[] (code u16, jt u8,
        jf u8, k u32, host order), ready for SO_ATTACH_FILTER: the kernel filters a live source."""
        cdef int j = self._index(linktype)
        if self.progs[j].bf_insns == NULL:
            raise BpfError(self.not_applicable[linktype & 0xFFFF])
        return (<char*> self.progs[j].bf_insns)[:self.progs[j].bf_len * 8]
