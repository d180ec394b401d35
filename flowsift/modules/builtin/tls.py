import struct

from flowsift.modules.base import Module

TLS_VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
# A ClientHello larger than this is not looked for (real ones are a few hundred bytes to ~16 KiB).
MAX_HELLO = 65536


def parse_client_hello(buf):
    """(version, sni, alpn list) from a TLS record holding a ClientHello, or None if it is not one.
    Raises ValueError when the bytes are not complete yet (the caller waits for more)."""
    if len(buf) < 5:
        raise ValueError("short")
    ctype, rec_ver, rec_len = struct.unpack_from(">BHH", buf)
    if ctype != 22 or rec_ver >> 8 != 3:
        return None
    if len(buf) < 5 + 4:
        raise ValueError("short")
    htype = buf[5]
    hlen = int.from_bytes(buf[6:9], "big")
    if htype != 1:
        return None
    body = buf[9:9 + hlen]
    if len(body) < hlen:
        raise ValueError("short")          # a hello split over several records is read once whole
    pos = 0
    version = struct.unpack_from(">H", body, pos)[0]
    pos += 2 + 32
    sid = body[pos]
    pos += 1 + sid
    (cs_len,) = struct.unpack_from(">H", body, pos)
    pos += 2 + cs_len
    comp = body[pos]
    pos += 1 + comp
    sni, alpn = None, []
    if pos + 2 <= len(body):
        (ext_len,) = struct.unpack_from(">H", body, pos)
        pos += 2
        end = min(len(body), pos + ext_len)
        while pos + 4 <= end:
            etype, elen = struct.unpack_from(">HH", body, pos)
            data = body[pos + 4:pos + 4 + elen]
            pos += 4 + elen
            if etype == 0 and len(data) >= 5:                  # server_name
                nlen = struct.unpack_from(">H", data, 3)[0]
                sni = data[5:5 + nlen].decode("ascii", "replace")
            elif etype == 16 and len(data) >= 2:               # ALPN
                p = 2
                while p < len(data):
                    n = data[p]
                    alpn.append(data[p + 1:p + 1 + n].decode("ascii", "replace"))
                    p += 1 + n
            elif etype == 43 and len(data) >= 1:               # supported_versions: the highest offered
                vs = [struct.unpack_from(">H", data, 1 + 2 * i)[0] for i in range(data[0] // 2)]
                vs = [v for v in vs if v in TLS_VERSIONS]
                if vs:
                    version = max(vs)
    return TLS_VERSIONS.get(version, hex(version)), sni, alpn


class Tls(Module):
    """The ClientHello of each TLS connection: server name (SNI), ALPN protocols, version.

    Synopsis: tls
    Reads: the first bytes of the client-to-server stream
    Writes: nothing (read-only)
    Options: none
    Counters: hellos, not_tls
    Example: flowsift chain tls trace.pcap   emits {"kind": "client_hello", "sni": ..., "alpn": [...], "version": ...}
    """
    name = "tls"

    def on_data(self, flow, stream):
        if stream.direction != 0 or flow.state.get("done"):
            stream.skip()
            return
        try:
            found = parse_client_hello(stream.peek_bytes(MAX_HELLO))
        except ValueError:
            if stream.available >= MAX_HELLO:
                flow.state["done"] = True
                flow.skip()
            return                                   # incomplete: wait for more bytes
        except (struct.error, IndexError):
            found = None
        flow.state["done"] = True
        flow.skip()                                  # the hello is all it wants of a connection
        if found is None:
            self.count("not_tls")
            return
        version, sni, alpn = found
        self.emit("client_hello", version=version, sni=sni, alpn=alpn)
        self.count("hellos")

    def on_gap(self, flow, direction, gap):
        if direction == 0:
            flow.state["done"] = True                # a hello with a hole in it is not guessed at
            flow.skip()
