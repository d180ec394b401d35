"""A classic BPF interpreter for the instructions flowsift's fan-out program uses, so tests can run
it on every corpus frame. Loads are relative to the network header (SKF_NET_OFF) or the
ancillary protocol word, as the kernel gives a fan-out program; a load past the frame ends the
program with 0, as the kernel's does."""
import struct

NET = -0x100000
PROTOCOL = -0x1000
U32 = 0xFFFFFFFF


class _Past(Exception):
    pass


def run(prog, frame, proto):
    """The program's result for `frame` (bytes from the network header on) of ethertype `proto`."""
    code = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]

    def load(k, size):
        k = k - (1 << 32) if k & 0x80000000 else k
        if k == PROTOCOL:
            return proto
        off = k - NET
        if off < 0 or off + size > len(frame):
            raise _Past()
        return int.from_bytes(frame[off:off + size], "big")

    try:
        return _run(code, load)
    except _Past:
        return 0


def _run(code, load):
    a = x = pc = 0
    mem = [0] * 16
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op in (0x20, 0x28, 0x30):                  # ld [k] (word, half, byte)
            a = load(k, {0x20: 4, 0x28: 2, 0x30: 1}[op])
        elif op in (0x48, 0x50):                      # ld [x + k]
            a = load((k + x) & U32, 2 if op == 0x48 else 1)
        elif op == 0xB1:                              # ldx 4 * ([k] & 0xf)
            x = 4 * (load(k, 1) & 0xF)
        elif op == 0x01:
            x = k
        elif op == 0x60:
            a = mem[k]
        elif op == 0x61:
            x = mem[k]
        elif op == 0x02:
            mem[k] = a
        elif op == 0x07:
            x = a
        elif op == 0x87:
            a = x
        elif op == 0x04:
            a = (a + k) & U32
        elif op == 0x0C:
            a = (a + x) & U32
        elif op == 0x24:
            a = (a * k) & U32
        elif op == 0x74:
            a >>= k
        elif op == 0x64:
            a = (a << k) & U32
        elif op == 0xAC:
            a ^= x
        elif op == 0x15:
            pc += jt if a == k else jf
        elif op == 0x45:
            pc += jt if a & k else jf
        elif op == 0x16:
            return a
        elif op == 0x06:
            return k
        else:
            raise ValueError(f"opcode {op:#x} not interpreted")
