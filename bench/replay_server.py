"""The server bench/replay.py replays against: it answers each replayed connection with the
responses recorded for that connection, turn by turn.

    python bench/replay_server.py TABLE_DIR

TABLE_DIR (written by bench/replay.py) holds `responses.bin`, every recorded response one after
the other, and `index.pickle`: per connection replayed, its turns as (request length, request
digest, response offset, response length), and the connections by the digest of their first
request. A connection is recognised by its first request (the bytes up to the end of the first
HTTP message, or all it sent so far when it is not HTTP); among connections whose first
requests are the same bytes, the n-th to arrive gets the n-th recorded (one run replays each
once, so each run starts again at the first). After that, each turn's request is read by its
recorded length and answered with its recorded response, so any protocol is served, not only
HTTP, and two servers' answers to one path never mix. (A connection whose server spoke first
cannot be recognised: bench/replay.py leaves those out of the replay.)

Prints its port, then on SIGUSR1 one line of JSON with what it saw since the last (connections
recognised, unrecognised, requests that differed from the recording, bytes past the last turn):
anything but zeros there means differences the bench's server made, not the replay.
"""
import asyncio
import hashlib
import json
import mmap
import pickle
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (this tree's flowsift first)
from flowsift.replay import http_message  # noqa: E402


def digest(b):
    return hashlib.blake2b(b, digest_size=16).digest()


class Table:
    def __init__(self, directory):
        with open(Path(directory) / "index.pickle", "rb") as f:
            self.conns, self.first = pickle.load(f)
        with open(Path(directory) / "responses.bin", "rb") as f:
            size = f.seek(0, 2)
            self.data = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) if size else b""
        self.taken = {}                     # first-request digest -> connections given so far

    def recognise(self, buf):
        ends = []
        m = http_message(bytes(buf), 0, True)
        if m is not None:
            ends.append(m[0])
        ends.append(len(buf))
        for end in ends:
            key = digest(bytes(buf[:end]))
            same = self.first.get(key)
            if same:
                n = self.taken.get(key, 0)
                self.taken[key] = n + 1
                return self.conns[same[n % len(same)]]
        return None


STATS = dict(connections=0, recognised=0, unrecognised=0, turns=0, requests_differing=0, bytes_after_last_turn=0)


def report():
    print(json.dumps(STATS), flush=True)
    for k in STATS:
        STATS[k] = 0


async def handle(table, r, w):
    STATS["connections"] += 1
    buf = bytearray()
    turns, k = None, 0
    try:
        while True:
            if turns is None and buf:
                turns = table.recognise(buf)
                if turns is not None:
                    STATS["recognised"] += 1
            if turns is not None and k < len(turns):
                need, want, off, size = turns[k]
                if len(buf) >= need:
                    if digest(bytes(buf[:need])) != want:
                        STATS["requests_differing"] += 1
                    del buf[:need]
                    k += 1
                    STATS["turns"] += 1
                    if size:
                        w.write(table.data[off:off + size])
                        await w.drain()
                    if k == len(turns):
                        # the last answer: closed behind it, as the recorded server did with one
                        # that runs to the close (and the client closes anyway now)
                        w.write_eof()
                    continue
            chunk = await r.read(65536)
            if not chunk:
                break
            buf += chunk
        if turns is None and buf:
            STATS["unrecognised"] += 1
        elif turns is not None:
            STATS["bytes_after_last_turn"] += len(buf) if k >= len(turns) else 0
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()


async def main():
    table = Table(sys.argv[1])
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, report)
    s = await asyncio.start_server(lambda r, w: handle(table, r, w), "127.0.0.1", 0, backlog=1024)
    print(s.sockets[0].getsockname()[1], flush=True)
    await s.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
