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


def test_progress_bar_on_a_terminal_only(tmp_path):
    """A bar is drawn on stderr when it is a terminal (threshold lowered so a small file qualifies)."""
    import os
    import pty
    import subprocess
    import sys
    env = dict(os.environ, FLOWSIFT_PROGRESS_MIN_BYTES="0", COLUMNS="100")
    master, slave = pty.openpty()
    res = subprocess.run([sys.executable, "-m", "flowsift", "stats", "--json", str(ROOT / "examples" / "demo.pcap")],
                         stdout=subprocess.PIPE, stderr=slave, env=env, timeout=60)
    os.close(slave)
    seen = b""
    try:
        while chunk := os.read(master, 65536):
            seen += chunk
    except OSError:
        pass
    os.close(master)
    assert res.returncode == 0 and json.loads(res.stdout)["packets"] > 0
    assert b"reading" in seen
    piped = run_cli("stats", "--json", ROOT / "examples" / "demo.pcap")
    assert piped.stderr == ""


def test_build_says_in_one_line_what_is_missing(tmp_path):
    """setup.py's preflight: no compiler, or no libpcap headers, is one line and no compiler spew."""
    import os
    import subprocess
    import sys
    for cc, needle in (("no-such-cc", "no C compiler"), ("gcc -nostdinc", "libpcap development files")):
        env = dict(os.environ, CC=cc)
        res = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "b"),
                              "--build-lib", str(tmp_path / "l")], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 1
        ours = [l for l in res.stderr.splitlines() if l.startswith("flowsift build:")]
        assert len(ours) == 1 and needle in ours[0], res.stderr[-2000:]
        assert "gcc:" not in res.stderr and "error:" not in res.stderr.replace(ours[0], "")


def test_every_package_is_listed_for_installation():
    """A package missing from pyproject's list works from the source tree but not once installed."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "flowsift").rglob("__init__.py")}
    assert found == listed


def test_inspect_writes_ipv6_endpoints_as_events_do(tmp_path, corpus):
    store = tmp_path / "store"
    res = run_cli("gateway", corpus / "ipv6__pcpp__one_ipv6_http_stream.pcap", "--store", store, "--keep")
    assert res.returncode == 0, res.stderr
    got = json.loads(run_cli("inspect", store, "--json", check=True).stdout)["connections"]
    assert len(got) == 1 and re.fullmatch(r"\[[0-9a-f:]+\]:\d+", got[0]["client"]) and got[0]["server"].startswith("[")
    one = json.loads(run_cli("inspect", store / got[0]["file"], "--json", check=True).stdout)
    assert one["client"] == got[0]["client"] and one["server"] == got[0]["server"]
