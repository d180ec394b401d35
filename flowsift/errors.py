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


def raise_terminated(signum, frame):
    """A SIGTERM handler: the command stops where it is, as a KeyboardInterrupt would stop it."""
    raise Terminated()


def _stop_signals():
    import signal
    return (signal.SIGINT, signal.SIGTERM)


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
