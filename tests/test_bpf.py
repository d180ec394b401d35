"""BPF filters: compiled by libpcap, applied per packet and per link type, counted."""
import json
import subprocess

import pytest

from conftest import require, run_cli

CASES = [
    ("http__zeek__get.pcap", "tcp port 80"),
    ("vlan__pcpp__example2.pcap", "udp"),
    ("vlan__pcpp__example2.pcap", "vlan and tcp"),
    ("linktype__pcpp__sll.pcap", "tcp[tcpflags] & tcp-push != 0"),
    ("linktype__suri__decode-sll2-02.pcap", "src port 80"),
    ("linktype__tcpflow__local2.pcap", "ip6"),
    ("ipv6__pcpp__four_ipv6_http_streams.pcap", "ip6 and tcp dst port 80"),
    ("trunc__zeek__timestamp.pcap", "greater 100"),
]


@pytest.mark.parametrize("name,expr", CASES, ids=[f"{n}:{e}" for n, e in CASES])
def test_filter_counts_match_tcpdump(corpus, name, expr):
    tcpdump = require("tcpdump")
    out = subprocess.run([tcpdump, "-r", str(corpus / name), "-nn", "-q", expr], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    want = len(out.stdout.splitlines())
    s = json.loads(run_cli("stats", "--json", "--filter", expr, corpus / name, check=True).stdout)
    assert s["packets"] - s["filtered"] == want
    assert s["decoded"] + sum(s["undecoded"].values()) == want
    assert s["filter"] == expr


def test_filter_per_link_type_in_one_pcapng(corpus):
    """Interfaces with different link types each get their own program (tcpdump cannot read this)."""
    tshark = require("tshark")
    name = corpus / "pcapng__pcpp__many_interfaces-1.pcapng"
    out = subprocess.run([tshark, "-r", str(name), "-Y", "udp", "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True)
    want = len([l for l in out.stdout.splitlines() if l.strip()])
    s = json.loads(run_cli("stats", "--json", "--filter", "udp", name, check=True).stdout)
    assert want > 0 and s["packets"] - s["filtered"] == want
    assert {i["linktype_name"] for i in s["interfaces"] if i["packets"]} == {"EN10MB", "NULL"}


def test_filter_that_does_not_fit_the_link_type(tmp_path, corpus):
    res = run_cli("stats", "--filter", "ether host 00:11:22:33:44:55", corpus / "linktype__pcpp__raw_ip.pcap")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "cannot be applied" in res.stderr and "raw_ip.pcap" in res.stderr
