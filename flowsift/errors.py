"""flowsift's exceptions: a shallow hierarchy for the caller's mistakes and unreadable input.

Malformed *traffic* is not an exception: it is counted. These are for things the caller must fix.
"""
import sys


def say(line):
    """One line on stderr, as flowsift says what it does or waits for (not an error)."""
    sys.stderr.write(f"flowsift: {line}\n")
    sys.stderr.flush()


class Terminated(BaseException):
    """SIGTERM: the command ends as on Ctrl-C, cleaning up what it made for itself."""


def _stop_signals():
    import signal
    return (signal.SIGINT, signal.SIGTERM)


# Ctrl-C and SIGTERM in a command stop it: KeyboardInterrupt or Terminated, raised where it runs.
# Not while it cleans up after one (a group's signal that came twice, Ctrl-C pressed again would
# cut that short), nor in a block that must not be cut (`stops_held`) or before the command runs:
# there it waits, and is raised once the block is done. (Python takes a signal between two
# bytecodes: a flag set without a call is not cut short.)
class _Stops:
    held = 1            # > 0: a stop waits; held until the command runs (stops_raised)
    waiting = None      # the signal of a stop that waits
    raised = None       # the last stop raised
    taken = None        # the signal of a stop the command took itself (a live source's end)
    ended = False       # a live capture ended (count, duration): the run is finishing what it took
    follower = False    # a shard of a live interface other than the first: the first says what all see alike
    hook_left = True    # the unraisable hook that keeps a lost stop has returned


_stops = _Stops()


def _on_stop(signum, frame):
    if late_stop(signum):
        return
    # what is being handled where the signal came: the stop raised before (or what followed it)
    e = sys.exc_info()[1]
    while e is not None:
        if e is _stops.raised:
            return
        e = e.__context__
    if _stops.held:
        _stops.waiting = _stops.waiting or signum
        return
    raise_stop(signum)


def raise_stop(signum):
    """Raise the stop of signal `signum` (KeyboardInterrupt for SIGINT, else Terminated), as
    when it comes here."""
    import signal
    _stops.waiting = None
    _stops.raised = KeyboardInterrupt() if signum == signal.SIGINT else Terminated()
    raise _stops.raised


def raised_stop(exc):
    """Whether `exc`, a KeyboardInterrupt, is a stop of the user's (Ctrl-C: what `raise_stop`
    raised), not one some code raised itself (a module's `raise KeyboardInterrupt` is its own
    failure). Python's own Ctrl-C handler (flowsift's are not installed: a library's caller)
    raises one that cannot be told apart: it is taken for a stop."""
    if exc is _stops.raised or getattr(exc, "_flowsift_stop", False):
        return True
    import signal
    return isinstance(exc, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def signalled(stop):
    """`stop`, the KeyboardInterrupt or Terminated a signal handler of flowsift's own raises,
    marked as the user's for `raised_stop` and for nothing else (not as `raise_stop`'s: a shard
    does not take a lost one up again). Marked on itself: held here, its traceback would keep
    what the frames it went through held (pipes, files) from being closed as they are left."""
    stop._flowsift_stop = True
    return stop


def _unraisable(unraisable, previous=sys.unraisablehook):
    if unraisable.exc_value is not None and unraisable.exc_value is _stops.raised:
        # raised where Python ignores exceptions (a generator being closed, a __del__), the
        # stop was lost: it waits, and comes again in a moment, once that is over (from a
        # thread: here it would be lost again), or as the command's work ends
        import _thread
        import signal
        import threading
        import time
        _stops.raised = None
        _stops.waiting = _stops.waiting or (signal.SIGINT if isinstance(unraisable.exc_value, KeyboardInterrupt)
                                            else signal.SIGTERM)
        def again(signum=_stops.waiting):
            # not before this hook has returned: raised in it, the stop would be lost again
            for _ in range(5000):
                if _stops.hook_left:
                    break
                time.sleep(0.0002)
            time.sleep(STOP_AGAIN)
            _thread.interrupt_main(signum)
        _stops.hook_left = False
        threading.Thread(target=again, daemon=True).start()
        _stops.hook_left = True         # (the last statement: no signal is taken after it here)
        return
    previous(unraisable)


def take_stop(signum):
    """The command took the stop of signal `signum` itself, not raised (a live source ends its
    capture at it, and the run goes on to its summary): what follows is its cleaning up, which
    a later stop does not cut short, as after one raised. (A signal to the process group comes
    twice to a shard: from the sender and forwarded by its parent; `timeout` sends two too.)"""
    _stops.taken = signum


def capture_ended():
    """A live capture ended at its count or duration: what follows is the run finishing what it
    took (its modules catching up) and its summary, which a stop does not cut short either."""
    _stops.ended = True


def late_stop(signum):
    """Whether the stop of `signum` comes after the one the command took (it is ignored), or
    after its live capture ended (said once, and taken: the run ends once its modules have read
    what the capture took, with its summary, as at a stop during the capture)."""
    if _stops.taken is not None:
        return True
    if not _stops.ended:
        return False
    import signal
    _stops.taken = signum
    # (every shard that takes it says it: the first may have finished before the stop came)
    say(f"{signal.Signals(signum).name}: the capture has ended; the run ends with its summary once its modules "
        f"have read what it took")
    return True


def follow():
    """This process is a shard of a live interface other than the first: what every shard
    sees alike while they all capture (the interface going down) the first one says."""
    _stops.follower = True


def following():
    return _stops.follower


def stop_after_capture(signum, frame):
    """The handler, after a live capture, of a signal the process ignored before it (Ctrl-C in a
    shell's background job): the capture took it, so it is taken as late_stop takes a stop then
    (said once, the run ends with its summary), not ignored again until the process exits."""
    late_stop(signum)


STOP_AGAIN = 0.001              # seconds until a lost stop comes again (a finalizer's run is shorter)


def take_stops():
    """Install flowsift's Ctrl-C and SIGTERM handlers, held (`stops_raised` lets them stop the
    command). First thing: a signal before the command runs is not a traceback from an import.
    Ctrl-C ignored from the start (a background job) stays ignored, as Python leaves it."""
    import signal
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_stop)
    signal.signal(signal.SIGTERM, _on_stop)
    sys.unraisablehook = _unraisable


def ignore_stops():
    """Ctrl-C and SIGTERM ignored from now on: the process is ending, and Python puts its default
    handlers back as it exits (one that came then would kill it, through any thread)."""
    import signal
    for s in _stop_signals():
        signal.signal(s, signal.SIG_IGN)


class stops_raised:
    """In this block a stop is raised where the code runs (the command's work); one that waits
    is raised as it starts, or as it ends."""

    def __enter__(self):
        self.held, _stops.held = _stops.held, 0
        if _stops.waiting is not None:
            raise_stop(_stops.waiting)

    def __exit__(self, kind, value, tb):
        _stops.held = self.held
        if kind is None and _stops.waiting is not None:
            raise_stop(_stops.waiting)


def stop_waits():
    """Whether a stop came in a `stops_held` block and waits for its end."""
    return _stops.waiting is not None


class stops_held:
    """In this block a stop waits until it is done (cleaning up is not cut short), and is raised
    then unless the block raised. Enter it before making what it cleans up: the stop may be
    raised as it is entered."""

    def __enter__(self):
        _stops.held += 1

    def __exit__(self, kind, value, tb):
        _stops.held -= 1
        if not _stops.held and kind is None and _stops.waiting is not None:
            raise_stop(_stops.waiting)


def start_deaf(argv, **kw):
    """subprocess.Popen(argv, **kw) with Ctrl-C and SIGTERM blocked in the new process from its
    first instruction (a blocked mask is kept through exec): a signal to the process group is
    this process's to act on, and it ends the child. Call it in `stops_held`: a signal that
    comes meanwhile reaches this process once the child is started."""
    import signal
    import subprocess
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signals())
    try:
        return subprocess.Popen(argv, **kw)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_forked(proc):
    """Start the forked multiprocessing.Process `proc` with Ctrl-C and SIGTERM held back in it
    until its target calls `take_stop_signals`: in between it would run its parent's handlers
    (a KeyboardInterrupt there is a traceback on the terminal, from a process that was to ignore
    the signal). A signal that comes meanwhile reaches the parent as usual."""
    import signal
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signals())
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def take_stop_signals(handler):
    """In a process started by `start_forked`: Ctrl-C and SIGTERM go to `handler` (or
    signal.SIG_IGN) from now on; one held back since the fork is handled (or dropped) now."""
    import signal
    for s in _stop_signals():
        signal.signal(s, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _stop_signals())


class FlowsiftError(Exception):
    """Base of every error flowsift raises on purpose. The CLI prints it as one line, exit 2."""


class UsageError(FlowsiftError):
    """A bad argument, option or expression."""


class CaptureFormatError(FlowsiftError):
    """A capture that cannot be read (further): names the file, the position and the problem."""

    def __init__(self, path, message, position=None, record=None):
        self.path = str(path)
        self.position = position
        self.record = record
        self.detail = message
        where = []
        if record is not None:
            where.append(f"record {record}")
        if position is not None:
            where.append(f"at byte {position}")
        prefix = f"{self.path}: " + (" ".join(where) + ": " if where else "")
        super().__init__(prefix + message)


def env_number(name, default, low, high, what, kind=int):
    """A number from the environment variable `name` (`default` when unset), checked to lie in
    [low, high] (high None: no bound); anything else is a one-line UsageError saying what the
    number is for."""
    import os
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise UsageError(f"{name}={text!r}: {what} is a number {span}")
    return value
