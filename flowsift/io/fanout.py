"""The program that places frames in an AF_PACKET fan-out group (PACKET_FANOUT_CBPF).

The kernel's own hash (PACKET_FANOUT_HASH) takes an IPv6 fragment by its addresses alone, atomic
ones too (Fragment header, offset 0, no more fragments: the whole TCP segment follows), while the
peer's unfragmented packets go by the 4-tuple: the two directions of such a connection would land
in different shards. This program hashes what every packet of a flow shares, the same way in both
directions:

- `flow` (default): the address pair and, when the transport header is there, the port pair, both
  XORed so the hash is symmetric. IPv6 extension headers (hop-by-hop, routing, destination options
  and atomic fragments, up to four) are walked to the TCP or UDP header. A real fragment (IPv4 MF
  or offset; IPv6 M or offset) goes by addresses alone, as nothing but its first piece has ports.
- `hosts`: the address pair only. Every packet of a flow lands with the others even when some
  are fragmented and some not (at the price of one shard per host pair).

Anything else (ARP, frames too short) goes to the group's first socket. The kernel takes the
program's result modulo the number of sockets. Offsets are relative to the network header
(SKF_NET_OFF): frames the host sends come with their link header, received ones without.
"""
import struct

NET = -0x100000                 # SKF_NET_OFF
PROTOCOL = -0x1000              # SKF_AD_OFF + SKF_AD_PROTOCOL: the ethertype, VLAN tags taken off

# classic BPF opcodes (linux/bpf_common.h)
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
LD_H_IND, LD_B_IND = 0x48, 0x50
LDX_IMM, LDX_B_MSH, LD_MEM, LDX_MEM, ST, TAX, TXA = 0x01, 0xB1, 0x60, 0x61, 0x02, 0x07, 0x87
ADD_K, ADD_X, MUL_K, RSH_K, LSH_K, XOR_X = 0x04, 0x0C, 0x24, 0x74, 0x64, 0xAC
JEQ_K, JSET_K, RET_A, RET_K = 0x15, 0x45, 0x16, 0x06

WALKED = 4                      # IPv6 extension headers followed before giving up on the ports
EXTENSIONS = (0, 43, 60)        # hop-by-hop, routing, destination options: length in 8-byte units
HASHES = ("flow", "hosts")


class _Asm:
    """A list of instructions with forward jumps to named labels (cBPF jumps only forward)."""

    def __init__(self):
        self.code, self.labels = [], {}

    def op(self, code, k=0, jt=None, jf=None):
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def label(self, name):
        self.labels[name] = len(self.code)

    def bytes(self):
        out = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            hop = lambda target: 0 if target is None else self.labels[target] - i - 1
            t, f = hop(jt), hop(jf)
            assert 0 <= t < 256 and 0 <= f < 256, "a jump of a fan-out program out of reach"
            out.append(struct.pack("=HBBI", code, t, f, k))
        return b"".join(out)


def _addresses(a, offsets):
    # M[1] (and A) = the address pair's words, all XORed together
    first, *rest = offsets
    a.op(LD_W_ABS, NET + first)
    a.op(ST, 1)
    for off in rest:
        a.op(LD_W_ABS, NET + off)
        a.op(LDX_MEM, 1)
        a.op(XOR_X)
        a.op(ST, 1)


def program(hash="flow"):
    """Classic BPF bytes for PACKET_FANOUT_DATA, hashing by `hash` (`flow` or `hosts`)."""
    if hash not in HASHES:
        raise ValueError(f"fan-out hash {hash!r} (one of {', '.join(HASHES)})")
    a = _Asm()
    a.op(LD_W_ABS, PROTOCOL)
    a.op(JEQ_K, 0x0800, "v4", None)
    a.op(JEQ_K, 0x86DD, "v6", None)
    a.op(RET_K, 0)

    a.label("v4")
    _addresses(a, (12, 16))
    if hash == "hosts":
        a.op(JEQ_K, 0, "mix", "mix")
    else:
        a.op(LD_H_ABS, NET + 6)
        a.op(JSET_K, 0x3FFF, "hosts", None)         # MF or an offset: a fragment
        a.op(LD_B_ABS, NET + 9)
        a.op(JEQ_K, 6, "v4ports", None)
        a.op(JEQ_K, 17, "v4ports", "hosts")
        a.label("v4ports")
        a.op(LDX_B_MSH, NET)                        # X = the IPv4 header's length
        a.op(JEQ_K, 0, "ports", "ports")

    a.label("v6")
    _addresses(a, range(8, 40, 4))
    if hash == "hosts":
        a.op(JEQ_K, 0, "mix", "mix")
    else:
        # X: where the next header starts; A: its type
        a.op(LD_B_ABS, NET + 6)
        a.op(LDX_IMM, 40)
        for step in range(WALKED + 1):
            here, nxt = f"h{step}", (f"h{step + 1}" if step < WALKED else "hosts")
            a.label(here)
            a.op(JEQ_K, 6, "ports", None)
            a.op(JEQ_K, 17, "ports", None)
            if step == WALKED:
                a.op(JEQ_K, 0, "hosts", "hosts")
                break
            a.op(JEQ_K, 44, f"frag{step}", None)
            for i, ext in enumerate(EXTENSIONS):
                a.op(JEQ_K, ext, f"ext{step}", "hosts" if i == len(EXTENSIONS) - 1 else None)
            # an extension header: next type at +0, length (8-byte units, less one) at +1
            a.label(f"ext{step}")
            a.op(LD_B_IND, NET)
            a.op(ST, 2)
            a.op(LD_B_IND, NET + 1)
            a.op(ADD_K, 1)
            a.op(LSH_K, 3)
            a.op(ADD_X)
            a.op(TAX)
            a.op(LD_MEM, 2)
            a.op(JEQ_K, 0, nxt, nxt)
            # a fragment header: atomic (offset 0, no more) is followed by the whole segment
            a.label(f"frag{step}")
            a.op(LD_H_IND, NET + 2)
            a.op(JSET_K, 0xFFF9, "hosts", None)
            a.op(LD_B_IND, NET)
            a.op(ST, 2)
            a.op(TXA)
            a.op(ADD_K, 8)
            a.op(TAX)
            a.op(LD_MEM, 2)
            a.op(JEQ_K, 0, nxt, nxt)

        # X: where the TCP or UDP header starts; the port pair, XORed, joins the addresses'
        # (multiplied first: a plain XOR of the two cancels what both vary by, e.g. client
        # addresses and ports counting up together)
        a.label("ports")
        a.op(LD_H_IND, NET)
        a.op(ST, 2)
        a.op(LD_H_IND, NET + 2)
        a.op(LDX_MEM, 2)
        a.op(XOR_X)
        a.op(TAX)
        a.op(LD_MEM, 1)
        a.op(MUL_K, 0x9E3779B1)
        a.op(ADD_X)
        a.op(JEQ_K, 0, "mix", "mix")

        a.label("hosts")
        a.op(LD_MEM, 1)

    # spread the bits, so that the kernel's modulo by the number of sockets sees all of them
    a.label("mix")
    for _ in range(2):
        a.op(TAX)
        a.op(RSH_K, 16)
        a.op(XOR_X)
        a.op(MUL_K, 0x45D9F3B)
    a.op(TAX)
    a.op(RSH_K, 16)
    a.op(XOR_X)
    a.op(RET_A)
    return a.bytes()
