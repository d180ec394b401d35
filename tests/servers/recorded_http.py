# A test server: answers HTTP requests with recorded responses (used by tests/test_replay.py).
"""Answers each HTTP request with the response recorded for its request line (in turn);
with --alter PATH, the response for PATH has another Content-Type and one body byte changed."""
import asyncio, json, sys
from flowsift.replay import http_message
table = {k: [bytes.fromhex(x) for x in v] for k, v in json.load(open(sys.argv[1])).items()}
alter = sys.argv[2] if len(sys.argv) > 2 else None
seen = {}

def changed(resp):
    head, sep, body = resp.partition(b"\r\n\r\n")
    head = b"\r\n".join(b"Content-Type: text/x-changed" if l.lower().startswith(b"content-type:") else l
                         for l in head.split(b"\r\n"))
    body = bytes([body[0] ^ 0x20]) + body[1:] if body else body
    return head + sep + body

async def handle(r, w):
    buf = b""
    while True:
        m = http_message(buf, 0, True) if buf else None
        if m is None:
            chunk = await r.read(65536)
            if not chunk:
                break
            buf += chunk
            continue
        req, buf = buf[:m[0]], buf[m[0]:]
        line = req.split(b"\r\n", 1)[0].decode("latin-1")
        i = seen.get(line, 0)
        seen[line] = i + 1
        resps = table.get(line) or [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]
        resp = resps[i % len(resps)]
        if alter and line.split()[1] == alter:
            resp = changed(resp)
        w.write(resp)
        await w.drain()
    w.close()

async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(s.sockets[0].getsockname()[1], flush=True)
    await s.serve_forever()
asyncio.run(main())
