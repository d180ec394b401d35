import struct

from flowsift.modules.base import Module

TLS_VERSIONS = {0x0002: "SSL 2.0", 0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2",
                0x0304: "TLS 1.3"}
# A ClientHello larger than this is not looked for (real ones are a few hundred bytes to ~16 KiB;
# a post-quantum key share or much padding spreads one over several records).
MAX_HELLO = 65536
# A TLS record holds at most 2^14 bytes of plaintext (RFC 8446 5.1); a longer one is not TLS.
MAX_RECORD = 16384

# After a plaintext prefix (STARTTLS in SMTP, IMAP, POP3, FTP, XMPP; the SSLRequest of MySQL
# or PostgreSQL), a ClientHello is looked for at client stream offsets below this: those
# exchanges take a few hundred bytes, and a longer wait would keep every plaintext
# connection's first bytes read
WINDOW = 4096
# RFC 8446 4.1.2: a client offering TLS 1.3 says TLS 1.2 in the hello's legacy_version
TLS12 = 0x0303


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


def _server_name(data):
    """The first name of a server_name extension's data (5 bytes or more), None when it is
    longer than the extension."""
    nlen = struct.unpack_from(">H", data, 3)[0]
    return data[5:5 + nlen].decode("ascii", "replace") if 5 + nlen <= len(data) else None


def _alpn(data):
    """The protocols an ALPN extension's data (2 bytes or more) lists."""
    alpn, p = [], 2
    while p < len(data):
        alpn.append(data[p + 1:p + 1 + data[p]].decode("ascii", "replace"))
        p += 1 + data[p]
    return alpn


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
                sni = _server_name(data)
                if sni is None:
                    raise struct.error("server_name longer than its extension")
            elif etype == 16 and len(data) >= 2:               # ALPN
                alpn = _alpn(data)
            elif etype == 43 and len(data) >= 1:               # supported_versions: the highest offered
                vs = [struct.unpack_from(">H", data, 1 + 2 * i)[0] for i in range(data[0] // 2)]
                vs = [v for v in vs if v in TLS_VERSIONS]
                if vs:
                    version = max(vs)
    return TLS_VERSIONS.get(version, hex(version)), sni, alpn

def plausible_start(buf):
    """False once the first bytes of `buf` rule out a ClientHello starting there (a TLS
    handshake record holding one, or the SSLv2 format); True while they may be one."""
    if not buf:
        return True
    if buf[0] == 22:
        return (len(buf) < 2 or buf[1] == 3) and (len(buf) < 3 or buf[2] <= 4) and (len(buf) < 6 or buf[5] == 1)
    if buf[0] & 0x80:
        return (len(buf) < 3 or buf[2] == 1) and (len(buf) < 4 or buf[3] in (0, 3))
    return False


def candidate(buf):
    """True if `buf` may start a ClientHello in handshake records (looked for after a plaintext
    prefix): a record header 0x16 0x03 0x00-0x04 with a length of 1 to 2^14, a handshake type
    1 whose length can hold a hello, a legacy version 3.x. None: too few bytes to tell."""
    if len(buf) < 10:
        return None if buf[:1] == b"\x16" and plausible_start(buf) else False
    rec_len = (buf[3] << 8) | buf[4]
    hlen = int.from_bytes(buf[6:9], "big")
    return (buf[0] == 22 and buf[1] == 3 and buf[2] <= 4 and 0 < rec_len <= MAX_RECORD and buf[5] == 1
            and 41 <= hlen <= MAX_HELLO and buf[9] == 3)


def _extensions_at(body):
    """Where a ClientHello body's extensions start, past its version, random, session id (at
    most 32 bytes), cipher suites (2 bytes each, at least one) and compression methods (at
    least one); None when those fields are cut or do not add up."""
    try:
        pos = 34
        sid = body[pos]
        pos += 1 + sid
        (cs_len,) = struct.unpack_from(">H", body, pos)
        pos += 2 + cs_len
        comp = body[pos]
        pos += 1 + comp
    except (struct.error, IndexError):
        return None
    return None if sid > 32 or cs_len == 0 or cs_len % 2 or comp == 0 else pos


def well_formed(body):
    """True if a ClientHello body's lengths add up exactly: its fixed fields (_extensions_at),
    then extensions that fill the rest, each within it."""
    pos = _extensions_at(body)
    if pos is None or pos > len(body):
        return False
    try:
        if pos == len(body):
            return True                              # no extensions
        (ext_len,) = struct.unpack_from(">H", body, pos)
        pos += 2
        if pos + ext_len != len(body):
            return False
        while pos < len(body):
            (elen,) = struct.unpack_from(">H", body, pos + 2)
            pos += 4 + elen
        return pos == len(body)
    except (struct.error, IndexError):
        return False


def gathered(buf):
    """(handshake type, the bytes of the message's body gathered) from handshake records at the
    start of `buf` cut short (by a loss, the connection's end or MAX_HELLO): what was read of
    the first message, or None when there is no handshake header to read."""
    frag = bytearray()
    pos = 0
    while len(buf) >= pos + 5:
        ctype, rec_ver, rec_len = struct.unpack_from(">BHH", buf, pos)
        if ctype != 22 or rec_ver >> 8 != 3 or rec_len == 0 or rec_len > MAX_RECORD:
            break
        frag += buf[pos + 5:pos + 5 + rec_len]
        pos += 5 + rec_len
    if len(frag) < 4:
        return None
    return frag[0], bytes(frag[4:4 + int.from_bytes(frag[1:4], "big")])


def read_in_part(body):
    """What the part of a ClientHello body before a cut says, or None if it says nothing sure:
    {"version", "sni", "alpn"}, each None when it was not read (an extension cut or after the
    cut). The version is the highest in supported_versions when that was read, else the
    legacy version when it is below TLS 1.2 (a client offering TLS 1.3 says TLS 1.2 there);
    only whole extensions are read, and the fixed fields must add up."""
    pos = _extensions_at(body)
    if pos is None:
        return None
    legacy = struct.unpack_from(">H", body, 0)[0]
    if legacy >> 8 != 3:
        return None
    fields = {"version": TLS_VERSIONS.get(legacy, hex(legacy)) if legacy < TLS12 else None,
              "sni": None, "alpn": None}
    pos += 2                                         # (the extensions' length: they go past the cut)
    while pos + 4 <= len(body):
        etype, elen = struct.unpack_from(">HH", body, pos)
        data = body[pos + 4:pos + 4 + elen]
        pos += 4 + elen
        if len(data) < elen:
            break                                    # cut inside this extension
        if etype == 0 and len(data) >= 5:
            name = _server_name(data)
            if name is not None:
                fields["sni"] = name
        elif etype == 16 and len(data) >= 2:
            fields["alpn"] = _alpn(data)
        elif etype == 43 and len(data) >= 1:
            n = min(data[0], len(data) - 1) // 2
            vs = [v for v in struct.unpack_from(f">{n}H", data, 1) if v in TLS_VERSIONS]
            if vs:
                fields["version"] = TLS_VERSIONS[max(vs)]
    return fields if any(v is not None for v in fields.values()) else None


class Tls(Module):
    """The ClientHello of each TLS connection: server name (SNI), ALPN protocols, version. A
    hello split over several TLS records is put together first (up to 64 KiB); an SSLv2-format
    ClientHello (old clients reaching SSL 3.0 and TLS servers with it) is reported with its
    version, sslv2=true, and no SNI or ALPN (the format has no extensions).

    A client stream that does not start with a hello is looked through for one that starts in
    its first 4 KiB, after a plaintext prefix (STARTTLS in SMTP, IMAP, POP3, FTP, XMPP; the
    SSLRequest of MySQL or PostgreSQL), in TLS records only: a record header 0x16 0x03
    0x00-0x04 holding a handshake of type 1, whose lengths (records, handshake, session id,
    cipher suites, compression methods, extensions) must add up exactly; bytes that look like
    one but do not are passed over. A hello cut short (by a loss, the connection's end, or 64
    KiB) is reported with what was read before the cut (complete=false) when that says
    something sure.

    Synopsis: tls
    Reads: the first bytes of the client-to-server stream of TCP connections (UDP flows are
           passed over and not counted): the hello at its start, or up to 4 KiB of plaintext
           before one
    Writes: nothing (read-only)
    Options: none
    Counters: hellos (whole ones reported), after_plaintext (hellos, whole or not, found after
              a plaintext prefix), sslv2 (hellos in the SSLv2 format), not_tls (client streams
              with no hello at their start nor one starting in their first 4 KiB; one the
              capture holds no byte of is not counted), malformed (a ClientHello at the start
              whose lengths overrun what holds them, e.g. a server name longer than its
              extension), incomplete (hellos larger than 64 KiB, or cut by a loss or by the end
              of the connection: their first bytes were a hello's), partial (incomplete hellos
              reported in part)
    Events: "client_hello": version (the highest offered in supported_versions, else the
            hello's), sni, alpn, sslv2, offset (of the hello in the client stream: 0 at its
            start, more after a plaintext prefix), complete (false: the hello was cut; its
            fields are what was read before the cut, null for what was not: sni and alpn of
            extensions not read, version unless supported_versions was read or the hello
            says less than TLS 1.2)
    Example: flowsift chain tls trace.pcap   emits {"kind": "client_hello", "sni": ..., "alpn": [...], "version": ...}
    """
    name = "tls"

    def on_open(self, flow):
        if flow.proto != "tcp":
            flow.skip()                              # (DTLS and QUIC are not read, nor counted)

    def on_data(self, flow, stream):
        st = flow.state
        if stream.direction != 0 or st.get("done"):
            stream.skip()
            return
        while stream.available:
            st["seen"] = True
            pos, avail = stream.tell(), stream.available
            g = stream.next_gap
            final = (g is not None and g.offset == pos + avail) or (stream.closed and pos + avail == stream.end_offset)
            if pos == 0:
                if self._at_start(flow, stream, final):
                    return
                continue
            if pos >= WINDOW:
                self._end(flow, "not_tls")
                return
            buf = stream.peek_bytes(min(avail, WINDOW - pos))
            i = buf.find(b"\x16")
            if i < 0:
                stream.skip(len(buf))
                continue
            stream.skip(i)
            is_one = candidate(stream.peek_bytes(10))
            if is_one is None and not final:
                st["cand"] = pos + i
                return                               # wait for the bytes that tell
            if not is_one or not self._hello(flow, stream, pos + i, final):
                st.pop("cand", None)
                stream.skip(1)
            if st.get("done") or "cand" in st:
                return

    def _at_start(self, flow, stream, final):
        """The hello at the stream's start, read leniently (as it always was); False when the
        stream does not start with one (a plaintext prefix: the caller looks on)."""
        if not plausible_start(stream.peek_bytes(6)):
            stream.skip(1)
            return False
        buf = stream.peek_bytes(MAX_HELLO)
        try:
            found = parse_client_hello(buf)
        except ValueError:
            if len(buf) >= MAX_HELLO or final:
                self._cut(flow, buf, 0)
            else:
                flow.state["cand"] = 0               # incomplete: wait for more bytes
            return True
        except (struct.error, IndexError):
            self._end(flow, "malformed")             # a handshake record whose hello's lengths do not add up
            return True
        if found is None:
            stream.skip(1)
            return False
        self._report(flow, found, 0, sslv2=buf[0] >= 0x80)
        return True

    def _hello(self, flow, stream, offset, final):
        """A hello looked for at `offset` after a plaintext prefix, strictly: True once it is
        reported (or cut, or awaited), False if the bytes there are no hello."""
        buf = stream.peek_bytes(MAX_HELLO)
        try:
            found = handshake_message(buf)
        except ValueError:
            if len(buf) >= MAX_HELLO or final:
                stream.skip(1)                       # (the event's time: the hello's first byte's, as at the start)
                self._cut(flow, buf, offset)
            else:
                flow.state["cand"] = offset          # wait for the rest of it
            return True
        if found is None or found[0] != 1 or not well_formed(found[1]):
            return False
        try:
            hello = parse_client_hello(buf)
        except (ValueError, struct.error, IndexError):
            return False
        if hello is None:
            return False
        stream.skip(1)
        self._report(flow, hello, offset)
        return True

    def _report(self, flow, found, offset, sslv2=False, complete=True):
        version, sni, alpn = found
        self.emit("client_hello", version=version, sni=sni, alpn=alpn, sslv2=sslv2, offset=offset, complete=complete)
        if sslv2:
            self.count("sslv2")
        if offset:
            self.count("after_plaintext")
        self._end(flow, "hellos" if complete else "partial")

    def _cut(self, flow, buf, offset):
        # a hello cut short: what was read before the cut, when it says something sure
        self.count("incomplete")
        got = gathered(buf) if buf[0] == 22 else None
        fields = read_in_part(got[1]) if got is not None and got[0] == 1 else None
        if fields is None:
            self._end(flow, None)
        else:
            self._report(flow, (fields["version"], fields["sni"], fields["alpn"]), offset, complete=False)

    def _end(self, flow, counter):
        # the hello is all it wants of a connection: once it is known, the rest is not read
        if counter:
            self.count(counter)
        flow.state["done"] = True
        flow.state.pop("cand", None)
        flow.skip()

    def on_close(self, flow, reason):
        st = flow.state
        if st.get("done"):
            return
        if "cand" in st:
            self.count("incomplete")                 # (what looked like a hello start, cut)
        elif st.get("seen"):
            self.count("not_tls")                    # no hello in the client bytes there were
