"""Mutated real captures through the whole pipeline: events or a clean error, never a crash.

Byte flips, truncations and splices of corpus captures go through the reader, decoder,
defragmenter, flow table and reassembly engine in this process, so a memory error in compiled
code kills the test run. `HYPOTHESIS_PROFILE=deep` (or FLOWSIFT_FUZZ_ROUNDS) runs many more.
"""
import os
import random

import pytest

from flowsift.errors import FlowsiftError
from flowsift.reassembly import Reassembler

SEEDS = ["frag__peafowl__http_ip_fragmented_out_of_order.pcap", "overlap__zeek__reassembly.pcap",
         "pcapng__pcpp__many_interfaces-1.pcapng", "trunc__suri__tcp-rst-unacked-stream-10.pcap",
         "ipv6__zeek__ipv6.pcap", "vlan__zeek__http-qinq-0.pcap", "linktype__pcpp__sll2.pcap",
         "wrap__peafowl__http_seq_num_wrapping_out_of_order.pcap", "frag__zeek__ipv6-http-atomic-frag.pcap"]
ROUNDS = int(os.environ.get("FLOWSIFT_FUZZ_ROUNDS", 2000 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 60))


def mutate(blob, rnd):
    b = bytearray(blob)
    kind = rnd.random()
    if kind < 0.6:                      # flip bytes past the file header
        for _ in range(rnd.randint(1, 20)):
            i = rnd.randrange(24, len(b))
            b[i] = rnd.getrandbits(8)
    elif kind < 0.8:                    # cut the file anywhere
        del b[rnd.randrange(1, len(b)):]
    else:                               # splice a piece of the file elsewhere
        i, j = sorted(rnd.randrange(24, len(b)) for _ in range(2))
        k = rnd.randrange(24, len(b))
        b[k:k] = b[i:j]
    return bytes(b)


@pytest.mark.parametrize("seed_file", SEEDS)
def test_mutated_captures_never_crash(tmp_path, corpus, seed_file):
    blob = (corpus / seed_file).read_bytes()
    rnd = random.Random(seed_file)
    path = tmp_path / "m.pcap"
    for policy in ("first", "linux"):
        for _ in range(ROUNDS // 2):
            path.write_bytes(mutate(blob, rnd))
            r = Reassembler(policy=policy, max_held_per_dir=4096)
            try:
                r.feed_capture(path)
            except FlowsiftError:
                r.finish()           # a clean, one-line error; what was read still closes
            for (conn, d), D in r.collector.dirs.items():
                assert all(g[1] > 0 for g in D.gaps)
            assert r.engine.open_connections == 0


@pytest.mark.parametrize("seed_file", SEEDS[:4])
def test_mutated_captures_through_the_file_writers(tmp_path, corpus, seed_file):
    """The same mutations through the writers of files, in this process: `streams -o` (its
    writer thread, buffer pool and index) and the gateway's record store. A result or a clean
    error; the index agrees with the files it lists."""
    import hashlib
    import json
    import shutil
    from flowsift.extract import extract_streams
    from flowsift.gateway import Gateway
    blob = (corpus / seed_file).read_bytes()
    rnd = random.Random("files:" + seed_file)
    path = tmp_path / "m.pcap"
    for k in range(max(4, ROUNDS // 6)):
        path.write_bytes(mutate(blob, rnd))
        out = tmp_path / f"out{k}"
        try:
            res = extract_streams(path, out)
        except FlowsiftError:
            continue                 # (a file header cut short: nothing to read)
        assert res["error"] is None or isinstance(res["error"], str)
        for line in map(json.loads, (out / "index.jsonl").read_text().splitlines()):
            got = (out / line["file"]).read_bytes() if line["file"] else b""
            assert (len(got), hashlib.sha256(got).hexdigest()) == (line["bytes"], line["sha256"])
        shutil.rmtree(out)
        store = tmp_path / f"store{k}"
        try:
            Gateway(store, keep=True).run_capture(path)
        except FlowsiftError:
            pass
        shutil.rmtree(store, ignore_errors=True)
