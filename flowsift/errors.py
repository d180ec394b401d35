"""flowsift's exceptions: a shallow hierarchy for the caller's mistakes and unreadable input.

Malformed *traffic* is not an exception: it is counted. These are for things the caller must fix.
"""


class Terminated(BaseException):
    """SIGTERM: the command ends as on Ctrl-C, cleaning up what it made for itself."""


def raise_terminated(signum, frame):
    """A SIGTERM handler: the command stops where it is, as a KeyboardInterrupt would stop it."""
    raise Terminated()


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
