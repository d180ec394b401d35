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


def test_a_link_type_the_filter_means_nothing_for_does_not_stop_the_run(tmp_path):
    """One interface libpcap cannot filter (USB beside Ethernet; loopback for `vlan`) is
    counted, and the filter still runs on the others."""
    from pcapgen import A, B, epb, ether, idb, ipv4, shb, tcp
    frame = ether(ipv4(A, B, 6, tcp(1000, 80, payload=b"hi")))
    vlan = ether(ipv4(A, B, 6, tcp(1000, 80, payload=b"hi")), vlans=[(0x8100, 7)])
    blob = b"".join([shb(), idb(220), idb(1), idb(0), epb(0, 1, b"\0" * 48), epb(1, 2, frame), epb(1, 3, vlan),
                     epb(2, 4, b"\x02\0\0\0" + ipv4(A, B, 6, tcp(1000, 80)))])
    f = tmp_path / "mixed.pcapng"
    f.write_bytes(blob)
    s = json.loads(run_cli("stats", "--json", "--filter", "tcp", f, check=True).stdout)
    # `tcp` does not look past a VLAN tag (as in tcpdump): the tagged frame is rejected
    assert s["filtered"] == 1 and s["filter_not_applicable"] == {"linktype 220": 1}
    assert s["undecoded"] == {"unsupported_link_type": 1} and s["protocols"] == {"tcp": 2}
    s = json.loads(run_cli("stats", "--json", "--filter", "vlan", f, check=True).stdout)
    assert s["filter_not_applicable"] == {"linktype 220": 1, "NULL": 1}
    assert s["filtered"] == 2 and s["decoded"] == 1 and s["undecoded"] == {"unsupported_link_type": 1}
    assert s["packets"] == s["filtered"] + s["decoded"] + sum(s["undecoded"].values())


def test_a_filter_that_applies_to_no_link_type_of_the_capture_is_an_error(tmp_path, corpus):
    for name in ("linktype__pcpp__null_loopback.pcap", "linktype__tcpflow__local2.pcap"):
        res = run_cli("stats", "--filter", "vlan", corpus / name)
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.count("\n") == 1 and "cannot be applied" in res.stderr and "VLAN" in res.stderr
