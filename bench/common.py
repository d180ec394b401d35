"""What the benchmark scripts share: which flowsift they measure, how they run it, the workload,
best-of timing, ratios, and scratch directories that are removed however a script ends.

Importing this module puts this tree's flowsift first, in this process and (through PYTHONPATH)
in every child: `python -m flowsift`, worker processes, helper programs. An editable install of
another checkout in the same venv would otherwise be what gets measured.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
PREFIX = "flowsift-bench-"          # every scratch file and directory the scripts make
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None
WORKLOAD_ENV = "FLOWSIFT_WORKLOAD_SCRIPT"
WORKLOAD_SCRIPT = ROOT.parent / "shared" / "bench" / "make_workload.sh"

sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
FLOWSIFT = [sys.executable, "-m", "flowsift"]

# SIGTERM (timeout, a closed session) unwinds like Ctrl-C, so the finally blocks that remove
# scratch directories run
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def prog():
    return f"bench/{Path(sys.argv[0]).name}"


def fail(text):
    """Ends the script with one line."""
    sys.exit(f"{prog()}: {text}")


def flowsift(*args):
    return [*FLOWSIFT, *map(str, args)]


def describe():
    """Prints which flowsift is measured (package path, version, commit) and checks that a child
    process imports the same one."""
    try:
        import flowsift
    except ImportError as e:
        fail(f"cannot import flowsift from {ROOT} ({e}): build it there first, "
             f"`python setup.py build_ext --inplace`")
    pkg = Path(flowsift.__file__).resolve().parent
    child = subprocess.run([sys.executable, "-c", "import flowsift; print(flowsift.__file__)"], cwd="/",
                           capture_output=True, text=True)
    if child.returncode or Path(child.stdout.strip()).resolve().parent != pkg:
        fail(f"a child process imports flowsift from {child.stdout.strip() or child.stderr.strip().splitlines()[-1:]}, "
             f"not {pkg}")
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        commit = "not a git checkout"
    else:
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "flowsift"],
                                 capture_output=True, text=True).stdout.strip()
        commit = f"commit {head.stdout.strip()}" + (", with uncommitted changes in flowsift/" if changed else "")
    print(f"measuring flowsift {flowsift.__version__} from {pkg} ({commit}); python {sys.executable}")


def workload():
    """The shared workload capture, built into bench/out/ the first time."""
    path = OUT / "web.pcap"
    if path.exists():
        return path
    script = Path(os.environ.get(WORKLOAD_ENV) or WORKLOAD_SCRIPT)
    if not script.is_file():
        fail(f"no CAPTURE given and no workload script at {script}: pass a capture, "
             f"or set {WORKLOAD_ENV} to the path of make_workload.sh")
    OUT.mkdir(exist_ok=True)
    print(f"building the workload with {script} (a few minutes)...", file=sys.stderr)
    r = subprocess.run(["bash", str(script), str(OUT)])
    if r.returncode or not path.exists():
        path.unlink(missing_ok=True)
        fail(f"{script} failed (exit {r.returncode}); pass a capture instead")
    return path


def capture_arg(text):
    if text is None:
        return workload()
    path = Path(text)
    if not path.is_file():
        fail(f"{text}: no such capture file")
    return path


class Failed(Exception):
    """A command the benchmark ran failed; the message is one line."""


def last_line(stderr):
    # the text of the last line, not the frame a rich error box draws around it
    lines = [s for s in (line.strip("│╭╮╰╯─ ") for line in (stderr or "").splitlines()) if s]
    return lines[-1] if lines else ""


def run(cmd, env=None, ok=(0,)):
    """stdout of cmd; Failed (with its last line of stderr) on another exit code."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if p.returncode not in ok:
        raise Failed(f"`{' '.join(map(str, cmd[:4]))} ...` exited {p.returncode}: {last_line(p.stderr)}")
    return p.stdout


def timings(fn, repeat, before=None):
    """[seconds of each of `repeat` calls of fn], fn's last result."""
    times, result = [], None
    for _ in range(max(1, repeat)):
        if before is not None:
            before()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def best(fn, repeat, before=None):
    """(the shortest of `repeat` calls of fn, fn's last result)."""
    times, result = timings(fn, repeat, before)
    return min(times), result


def x(v):
    """A ratio with enough digits to read a small one: 0.00139x, 0.26x, 1.22x, 12.3x, 1,234x."""
    if v is None:
        return "-"
    return f"{v:,.0f}x" if abs(v) >= 100 else f"{v:.3g}x"


def scratch(tag, shm=True):
    """A fresh directory (under /dev/shm unless shm is False) named flowsift-bench-TAG-*, removed
    when the with block ends, however it ends."""
    @contextlib.contextmanager
    def cm():
        d = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{tag}-", dir=SHM if shm else None))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return cm()


def free_bytes(path):
    return shutil.disk_usage(path or tempfile.gettempdir()).free


def need_space(path, nbytes, what):
    """Fails in one line when `path`'s file system has less than nbytes free."""
    free = free_bytes(path)
    if free < nbytes:
        fail(f"{what} needs about {nbytes / 2**30:.1f} GiB free in {path or tempfile.gettempdir()}, "
             f"which has {free / 2**30:.1f} GiB")
