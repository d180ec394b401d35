"""The reassembly engine's timeouts and bounds, and the IPv4 fragment overlap policy, as
`--reassembly NAME=VALUE` sets them.

    parse_settings(["memcap=2GiB", "established_timeout=5m,finished_linger=30"])
    -> {"memcap": 2147483648, "established_timeout": 300.0, "finished_linger": 30.0}

Names are the Reassembler's keyword arguments (the Engine's, and `fragment_policy`);
docs/reassembly.md says what happens at each bound.
(Outside the reassembly package: the command line reads this without loading the engine.)
"""
import re

from flowsift.errors import UsageError

# name: (kind, default as written, what it bounds)
SETTINGS = {
    "embryonic_timeout": ("duration", "30s", "a connection that has not finished its handshake"),
    "established_timeout": ("duration", "10m", "an established connection with no packet"),
    "closing_timeout": ("duration", "10s", "a connection after FIN or RST, for late retransmissions"),
    "udp_timeout": ("duration", "2m", "a UDP flow with no datagram"),
    "finished_linger": ("duration", "60s", "a flow kept after its connection ended (late packets stay late)"),
    "max_held_per_dir": ("size", "4MiB", "out-of-order bytes held for one direction"),
    "memcap": ("size", "1GiB", "out-of-order bytes held in all"),
    "max_connections": ("count", "1048576", "open connections (one is evicted: ended, half-open, UDP, then established)"),
    "fragment_policy": ("choice", "first", "which copy of overlapping IPv4 fragment bytes is kept, or discard "
                                           "the datagram (as IPv6's)"),
}
# the values of each "choice" setting
CHOICES = {"fragment_policy": ("first", "last", "discard")}

_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30,
          "t": 1 << 40, "tib": 1 << 40}
_SECONDS = {"": 1.0, "s": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0}
# a number as float() reads one (2, 2.5, .5, 1e3), then a unit (compiled when first used: not at start-up)
_NUMBER = r"\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$"
# beyond these the engine's integers would overflow (durations are kept in int64 nanoseconds)
_MOST = {"duration": (100 * 365 * 86400, "100 years"), "size": (1 << 62, "4 EiB"), "count": ((1 << 32) - 1, "4294967295")}
_EXAMPLES = {"duration": "seconds, or with a unit: 500ms, 30s, 5m, 1h",
             "size": "bytes, or with a unit: 512KiB, 64MiB, 2GiB",
             "count": "a whole number"}


class Seconds(float):
    """A SECONDS value that keeps how it was written, for the messages that refuse it (25h, not
    90000)."""

    def __new__(cls, value, written=None):
        self = super().__new__(cls, value)
        self.written = written
        return self


def written(value):
    """A SECONDS value as the command line gave it, else as a number."""
    return getattr(value, "written", None) or f"{value:g}"


def seconds(text):
    """A command line's SECONDS: a number (as float() reads it: what checks it says the rest),
    or one with a unit as --reassembly durations take them (500ms, 30s, 5m, 1h), either signed
    (the checks that refuse -5m say so). ValueError otherwise."""
    try:
        return Seconds(float(text), text.strip())
    except ValueError:
        body = text.strip()
        sign = -1.0 if body[:1] == "-" else 1.0
        m = re.match(_NUMBER, body[1:] if body[:1] in "+-" else body)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _SECONDS:
            raise ValueError(f"{text!r}: {_EXAMPLES['duration']}") from None
        return Seconds(sign * float(m.group(1)) * _SECONDS[unit], body)


def byte_size(text):
    """A size in bytes: a whole number, or one with a unit (512KiB, 64MiB, 2GiB; k, M, G alike).
    ValueError otherwise."""
    m = re.match(_NUMBER, text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or (not unit and "." in m.group(1)):
        raise ValueError(f"{text!r}: {_EXAMPLES['size']}")
    return int(float(m.group(1)) * _UNITS[unit])


def _value(name, kind, text):
    if kind == "choice":
        if text not in CHOICES[name]:
            raise UsageError(f"--reassembly {name}={text}: one of {', '.join(CHOICES[name])} expected")
        return text
    value = _parse(name, kind, text)
    if value > _MOST[kind][0]:
        raise UsageError(f"--reassembly {name}={text}: at most {_MOST[kind][1]}")
    return value


def _parse(name, kind, text):
    m = re.match(_NUMBER, text)
    unit = m.group(2).lower() if m else None
    if kind == "duration" and m and unit in _SECONDS and float(m.group(1)) > 0:
        return float(m.group(1)) * _SECONDS[unit]
    if kind == "size" and m and unit in _UNITS and (unit or "." not in m.group(1)):
        value = int(float(m.group(1)) * _UNITS[unit])
        if value > 0:
            return value
    if kind == "count" and m and not unit and "." not in m.group(1) and int(m.group(1)) > 0:
        return int(m.group(1))
    if m and float(m.group(1)) == 0 and ((kind == "size" and unit in _UNITS) or (kind == "count" and not unit)
                                         or (kind == "duration" and unit in _SECONDS)):
        raise UsageError(f"--reassembly {name}={text}: must be more than 0")
    raise UsageError(f"--reassembly {name}={text}: {kind} expected ({_EXAMPLES[kind]})")


def parse_settings(items):
    """`NAME=VALUE` strings (each may hold several, comma-separated) -> Engine keyword arguments."""
    out, given = {}, {}
    for item in items or ():
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, eq, text = part.partition("=")
            name = name.strip()
            if not eq or not text.strip():
                raise UsageError(f"--reassembly {part}: NAME=VALUE expected, e.g. memcap=2GiB")
            if name not in SETTINGS:
                raise UsageError(f"--reassembly {part}: no such setting; one of {', '.join(SETTINGS)}")
            if name in given:
                # (which one would count is no guess to leave to the reader of the command)
                raise UsageError(f"--reassembly {name}: given twice ({given[name]}, {part})")
            given[name] = part
            out[name] = _value(name, SETTINGS[name][0], text.strip())
    return out


def settings_help():
    """One line per setting, for --help."""
    return "; ".join(f"{name} ({default})" for name, (_, default, _) in SETTINGS.items())
