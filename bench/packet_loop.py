"""flowsift's packet loop (fill a batch, decode it, update the flow table, as `flowsift stats`
does) over COUNT packets of SOURCE, timed in this process with its start-up kept apart; for
bench/live.py, which runs one process per source (DPDK's EAL starts once per process).

    python bench/packet_loop.py SOURCE COUNT

SOURCE is a capture file, read again from its start until COUNT packets, or a live source
(`dpdk:...`), read until COUNT (FLOWSIFT_DPDK_ARGS sets the EAL's arguments). Prints one line
of JSON: start (seconds to open the source: EAL, device probe and rx_pcap loading for DPDK),
loop (seconds in the loop, reopening a file excluded), packets, passes (of a file).
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (this tree's flowsift first)
from flowsift.io import Batch, Decoder, FlowTable, open_capture  # noqa: E402
from flowsift.io.capture import is_live  # noqa: E402

QUIET = 5.0             # seconds without a packet from a live source: it has no more to give


def main(source, count):
    live = is_live(source)
    t0 = time.perf_counter()
    cap = open_capture(source)
    start = time.perf_counter() - t0
    dec, ft, b = Decoder(), FlowTable(), Batch()
    n, passes, loop, idle_since = 0, 1, 0.0, None
    while n < count:
        t = time.perf_counter()
        got = cap.fill(b, 100) if live else cap.fill(b)
        if got:
            dec.decode(b)
            ft.update(b)
            n += got
            loop += time.perf_counter() - t
            idle_since = None
            continue
        if not live:
            if n == 0:
                break                       # (an empty file)
            cap, passes = open_capture(source), passes + 1      # (not timed)
            continue
        loop += time.perf_counter() - t
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since > QUIET:
            break
    print(json.dumps({"start": start, "loop": loop, "packets": n, "passes": passes}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
