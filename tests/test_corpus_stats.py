"""`flowsift stats` on the 75 real corpus captures against tshark's reference counts."""
import json

import pytest

from conftest import CORPUS, corpus_reference, run_cli

REFERENCE = corpus_reference()

# Where flowsift and tshark count TCP connections differently, and why (docs/cli.md).
TCP_COUNT_DIFFERENCES = {
    # The capture was shuffled: the client's SYN comes last, after both FINs. tshark opens a
    # second stream for it; flowsift sees that ISN + 1 is the first byte the client already
    # sent, so the SYN belongs to the same connection.
    "ooo__tcpflow__test5-lines-randomized.pcap": 1,
}


@pytest.mark.parametrize("entry", REFERENCE, ids=[e["file"] for e in REFERENCE])
def test_stats_agree_with_tshark(corpus, entry):
    res = run_cli("stats", "--json", corpus / entry["file"])
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["packets"] == entry["packets"]
    # every packet accounted for: decoded under a protocol, or undecoded under a reason
    assert s["decoded"] + sum(s["undecoded"].values()) + s["filtered"] == s["packets"]
    assert sum(i["packets"] for i in s["interfaces"]) + s["undecoded"].get("bad_interface_id", 0) == s["packets"]
    want = TCP_COUNT_DIFFERENCES.get(entry["file"], entry["tcp_streams"])
    assert s["flows"]["tcp"] == want


def test_differences_are_still_differences(corpus):
    """If tshark's count changes or ours does, the list above must be revisited."""
    ref = {e["file"]: e["tcp_streams"] for e in REFERENCE}
    for name, ours in TCP_COUNT_DIFFERENCES.items():
        assert ref[name] != ours


def test_whole_corpus_every_packet_decoded_except_known_non_ip(corpus):
    """Across the corpus nothing is left undecoded for a reason other than the expected ones."""
    reasons = {}
    for entry in REFERENCE:
        s = json.loads(run_cli("stats", "--json", corpus / entry["file"], check=True).stdout)
        for k, v in s["undecoded"].items():
            reasons.setdefault(k, []).append(entry["file"])
    # ARP/LLC frames (non_ip) and the header-only truncated captures are the only undecoded ones
    assert set(reasons) <= {"non_ip", "truncated_tcp_header", "truncated_ip_header"}, reasons
