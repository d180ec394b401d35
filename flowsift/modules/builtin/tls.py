import struct

from flowsift.modules.base import Module

TLS_VERSIONS = {0x0002: "SSL 2.0", 0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2",
                0x0304: "TLS 1.3"}
# A ClientHello larger than this is not looked for (real ones are a few hundred bytes to ~16 KiB;
# a post-quantum key share or much padding spreads one over several records).
MAX_HELLO = 65536
# A TLS record holds at most 2^14 bytes of plaintext (RFC 8446 5.1); a longer one is not TLS.
MAX_RECORD = 16384


def handshake_message(buf):
    """The first handshake message of a TLS stream, gathered from the fragments of consecutive
    handshake records (a message may be split over records, and a record boundary may fall
    anywhere in it, even in its 4-byte header): (type, body), or None if the stream does not
    start with handshake records. Raises ValueError while it is not complete."""
    frag = bytearray()
    pos = 0
    while True:
        if len(buf) < pos + 5:
            raise ValueError("short")
        ctype, rec_ver, rec_len = struct.unpack_from(">BHH", buf, pos)
        if ctype != 22 or rec_ver >> 8 != 3 or rec_len == 0 or rec_len > MAX_RECORD:
            return None                    # not a handshake record (or, after one, not the rest)
        if len(buf) < pos + 5 + rec_len:
            raise ValueError("short")
        frag += buf[pos + 5:pos + 5 + rec_len]
        pos += 5 + rec_len
        if len(frag) >= 4:
            hlen = int.from_bytes(frag[1:4], "big")
            if len(frag) >= 4 + hlen:
                return frag[0], bytes(frag[4:4 + hlen])


def parse_sslv2_hello(buf):
    """(version, None, []) from an SSLv2-format ClientHello (a 2-byte record header with the
    high bit set, message type 1: what old clients send to reach SSL 3.0 or TLS servers too),
    None if the bytes are not one. Raises ValueError when they are not complete yet."""
    if len(buf) < 11:
        raise ValueError("short")
    if not buf[0] & 0x80 or buf[2] != 1:
        return None
    length = ((buf[0] & 0x7F) << 8) | buf[1]
    version, cs_len, sid_len, ch_len = struct.unpack_from(">HHHH", buf, 3)
    if (version != 0x0002 and version >> 8 != 3) or cs_len == 0 or cs_len % 3 or sid_len not in (0, 16) \
            or not 16 <= ch_len <= 32 or length != 9 + cs_len + sid_len + ch_len:
        return None
    if len(buf) < 2 + length:
        raise ValueError("short")
    return TLS_VERSIONS.get(version, hex(version)), None, []


def parse_client_hello(buf):
    """(version, sni, alpn list) from the start of a client's stream holding a ClientHello, or
    None if it is not one. Raises ValueError when the bytes are not complete yet (the caller
    waits for more)."""
    if len(buf) < 5:
        raise ValueError("short")
    if buf[0] & 0x80:
        return parse_sslv2_hello(buf)
    found = handshake_message(buf)
    if found is None or found[0] != 1:
        return None
    body = found[1]
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
                if 5 + nlen > len(data):
                    raise struct.error("server_name longer than its extension")
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
    """The ClientHello of each TLS connection: server name (SNI), ALPN protocols, version. A
    hello split over several TLS records is put together first (up to 64 KiB); an SSLv2-format
    ClientHello (old clients reaching SSL 3.0 and TLS servers with it) is reported with its
    version, sslv2=true, and no SNI or ALPN (the format has no extensions).

    Synopsis: tls
    Reads: the first bytes of the client-to-server stream of TCP connections (UDP flows are
           passed over and not counted)
    Writes: nothing (read-only)
    Options: none
    Counters: hellos, sslv2 (hellos in the SSLv2 format), not_tls, malformed (a ClientHello
              whose lengths overrun what holds them, e.g. a server name longer than its
              extension), incomplete (a hello larger than 64 KiB, or cut by a loss or by the
              end of the connection)
    Events: "client_hello": version (the highest offered in supported_versions, else the
            hello's), sni, alpn, sslv2
    Example: flowsift chain tls trace.pcap   emits {"kind": "client_hello", "sni": ..., "alpn": [...], "version": ...}
    """
    name = "tls"

    def on_open(self, flow):
        if flow.proto != "tcp":
            flow.skip()                              # (DTLS and QUIC are not read, nor counted)

    def on_data(self, flow, stream):
        if stream.direction != 0 or flow.state.get("done"):
            stream.skip()
            return
        stream_start = stream.peek_bytes(MAX_HELLO)
        try:
            found = parse_client_hello(stream_start)
        except ValueError:
            end = stream.tell() + stream.available
            if stream.available >= MAX_HELLO or (stream.closed and end == stream.end_offset):
                # larger than MAX_HELLO, or cut by the end of the connection (a loss: on_gap)
                self.count("incomplete")
                flow.state["done"] = True
                flow.skip()
            return                                   # incomplete: wait for more bytes
        except (struct.error, IndexError):
            found = False
        flow.state["done"] = True
        flow.skip()                                  # the hello is all it wants of a connection
        if found is None:
            self.count("not_tls")
            return
        if found is False:
            self.count("malformed")                  # a handshake record whose hello's lengths do not add up
            return
        version, sni, alpn = found
        self.emit("client_hello", version=version, sni=sni, alpn=alpn, sslv2=stream_start[0] >= 0x80)
        if stream_start[0] >= 0x80:
            self.count("sslv2")
        self.count("hellos")

    def on_gap(self, flow, direction, gap):
        if direction == 0 and not flow.state.get("done"):
            self.count("incomplete")
            flow.state["done"] = True                # a hello with a hole in it is not guessed at
            flow.skip()
