"""What a module's event fields and summary rows may hold, and how they become JSON: one
conversion for both (emit and summary() take the same values).

JSON's own values (text, numbers, bools, None, lists and tuples, dicts keyed by text or
numbers) go as they are; bytes as latin-1 text (one character per byte), sets as lists, numpy
scalars and arrays as numbers and lists. Anything else is refused, and so are a NaN or an
infinity (JSON has no number for them) and a value that contains itself: never written as its
repr, whose memory address would change from run to run unseen.
"""
import json
import math

import numpy as np


class Unconvertible(TypeError):
    """A value of a type there is no conversion for (its type's name)."""


def _plain(value):
    # (only the values JSON has no type for pay for these checks)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if isinstance(value, (np.generic, np.ndarray)):
        out = value.tolist()
        if isinstance(out, np.generic):
            # a long double has no Python type of its own: tolist() gives it back as it is (the
            # encoder would ask again, without end); a number all the same
            if isinstance(out, np.floating):
                return float(out)
            t = type(out)
            raise Unconvertible(f"numpy.{t.__name__}")
        return out
    t = type(value)
    raise Unconvertible(t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}")


# one encoder for every event (json.dumps with an argument makes a new one at each call);
# events are trees of plain values: no cycle check, which costs a dict per event (a value that
# contains itself ends in a RecursionError, said by why_not_json)
to_json = json.JSONEncoder(default=_plain, check_circular=False, allow_nan=False).encode
_checking = json.JSONEncoder(default=_plain, check_circular=True, allow_nan=False).encode

# what to_json refuses
NOT_JSON = (ValueError, TypeError, RecursionError)


def _simple(value):
    t = type(value)
    return t is str or t is int or t is bool or value is None or (t is float and math.isfinite(value))


def check_fields(fields):
    """Raise what to_json would for these fields (NOT_JSON), without making their line: plain
    scalars (most fields) are not encoded for it."""
    for value in fields.values():
        if not _simple(value):
            to_json(value)


def plain_fields(fields):
    """`fields` with every value as JSON gives it back (the conversions above made; tuples as
    lists, dict keys as text): the same dict when all are plain scalars. Raises NOT_JSON."""
    out = None
    for name, value in fields.items():
        if not _simple(value):
            if out is None:
                out = dict(fields)
            out[name] = json.loads(to_json(value))
    return fields if out is None else out


def why_not_json(fields, what="field"):
    """Which of `fields` to_json refused, and why (maybe deep in a list or a dict)."""
    for name, value in fields.items():
        try:
            _checking(value)
        except ValueError as e:
            if "ircular" in str(e):
                return f"{what} {name!r} holds a value that contains itself, which JSON cannot write"
            return f"{what} {name!r} holds NaN or an infinity, which JSON has no number for"
        except Unconvertible as e:
            return (f"{what} {name!r} holds a value of type {e}, which JSON cannot carry (bytes, sets and numpy "
                    f"values are converted, nothing else): convert it first, e.g. str(value)")
        except TypeError as e:
            return f"{what} {name!r} holds a dict JSON cannot carry: {e}"
        except RecursionError:
            return f"{what} {name!r} holds a value nested deeper than JSON can write"
    return "a value JSON cannot hold"
