import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("FLOWSIFT_CORPUS", ROOT.parent / "shared" / "corpus"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# A suite started as a background job (`./dev test &`) inherits SIGINT ignored, and so would
# every flowsift it starts: the tests that press Ctrl-C need it delivered. A handler set here
# goes back to the default in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def require(tool):
    """Path of a system tool; skips locally when missing, fails in CI (a missing install is a bug there)."""
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} is not installed (./dev test installs it; .ci/run installs it with apt)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def corpus_reference():
    ref = CORPUS / "reference.json"
    if not ref.exists():
        if IN_CI:
            raise RuntimeError(f"corpus not found at {CORPUS}")
        return []
    return json.loads(ref.read_text())["files"]


@pytest.fixture(scope="session")
def corpus():
    if not (CORPUS / "reference.json").exists():
        if IN_CI:
            pytest.fail(f"corpus not found at {CORPUS}")
        pytest.skip(f"corpus not found at {CORPUS}")
    return CORPUS


@contextlib.contextmanager
def small_tmpfs(tmp_path, size):
    """A tmpfs of `size` (mount's syntax, e.g. "64k") mounted for the block: a file system that
    fills up. Needs root and mount(8): skipped locally without them, failed in CI (where the
    tests run as root, a mount refused is a broken setup)."""
    require("mount")
    if os.geteuid() != 0:
        msg = "mounting a small tmpfs needs root"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        msg = f"cannot mount a tmpfs: {res.stderr.strip()}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def run_cli(*args, check=False, input=None):
    """Run `python -m flowsift ARGS` the way a user would; returns CompletedProcess (text)."""
    res = subprocess.run([sys.executable, "-m", "flowsift", *map(str, args)], capture_output=True, text=True,
                         input=input, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"flowsift {' '.join(map(str, args))} failed ({res.returncode}): {res.stderr}")
    return res


def decode_bytes(tmp_path, blob, name="t.pcap"):
    """Write `blob` as a file, read and decode it; returns (numpy records, frames, capture)."""
    import numpy as np
    from flowsift.io import Batch, Decoder, FlowTable, open_capture

    path = tmp_path / name
    path.write_bytes(blob)
    cap = open_capture(path)
    dec, ft, batch = Decoder(), FlowTable(), Batch(64)
    rows, frames = [], []
    while cap.fill(batch):
        dec.decode(batch)
        ft.update(batch)
        rows.append(batch.array.copy())
        frames.extend(batch.frame(i) for i in range(len(batch)))
        payloads = [batch.payload(i) for i in range(len(batch))]
        rows[-1] = (rows[-1], payloads)
    cap.check()
    arr = np.concatenate([r for r, _ in rows]) if rows else np.zeros(0)
    pay = [p for _, ps in rows for p in ps]
    return arr, frames, pay, cap, dec


from hypothesis import settings as _hsettings

# `HYPOTHESIS_PROFILE=deep` for the long runs done before resolving reassembly/decoder issues.
_hsettings.register_profile("default", max_examples=100)
_hsettings.register_profile("deep", max_examples=5000, deadline=None)
_hsettings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


class RedisServer:
    """A real redis-server on a free loopback port, without persistence, for one test."""

    def __init__(self, tmp_path, *extra):
        import socket
        self.binary = require("redis-server")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tmp_path
        self.extra = list(extra)
        self.proc = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self):
        import redis
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir), *self.extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.AuthenticationError:
                return                      # up, and wants a password
            except redis.ResponseError as e:
                if "NOAUTH" in str(e):
                    return
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            import time
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 4 s")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self):
        """Stop and start again on the same port: without persistence every key is gone."""
        self.stop()
        self.start()

    def client(self, **kw):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, **kw)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def slow_module(tmp_path, name="slow", pause=0.05):
    """A module file that reads every byte slowly (`pause` seconds per call): a run that lasts
    long enough to be interrupted."""
    path = tmp_path / f"{name}.py"
    path.write_text(f'''
import time
from flowsift.modules import Module

class Slow(Module):
    """Reads slowly.

    Synopsis: {name}
    """
    name = "{name}"
    def on_data(self, flow, stream):
        stream.skip()
        time.sleep({pause})
''')
    return path
