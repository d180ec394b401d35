import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("FLOWSIFT_CORPUS", ROOT.parent / "shared" / "corpus"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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
