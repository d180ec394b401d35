"""The command line as a user meets it."""
import json
import re
from pathlib import Path

from conftest import ROOT, run_cli


def test_help_teaches():
    res = run_cli("--help")
    assert res.returncode == 0 and "stats" in res.stdout
    res = run_cli("stats", "--help")
    assert res.returncode == 0
    for word in ("--filter", "--json", "Examples", "tcp port"):
        assert word in res.stdout


def test_version():
    res = run_cli("--version")
    assert res.returncode == 0 and re.match(r"flowsift \d+\.\d+", res.stdout)


def test_main_job_on_the_bundled_capture():
    res = run_cli("stats", ROOT / "examples" / "demo.pcap")
    assert res.returncode == 0, res.stderr
    for word in ("packets", "TCP connections", "tcp", "udp", "EN10MB"):
        assert word in res.stdout


def test_every_json_field_is_documented():
    out = json.loads(run_cli("stats", "--json", ROOT / "examples" / "demo.pcap", check=True).stdout)
    doc = (ROOT / "docs" / "cli.md").read_text()
    for key in out:
        assert f"`{key}`" in doc, key
    for key in out["anomalies"]:
        assert f"`{key}`" in doc, key
    from flowsift.io.reasons import REASONS
    for reason in REASONS.values():
        assert f"`{reason}`" in doc, reason


def test_demo_capture_has_what_the_demo_needs():
    out = json.loads(run_cli("stats", "--json", ROOT / "examples" / "demo.pcap", check=True).stdout)
    assert out["flows"]["tcp"] >= 5 and out["flows"]["udp"] >= 3 and out["ip"]["ipv6"] > 0
    assert out["undecoded"] == {} and out["error"] is None
