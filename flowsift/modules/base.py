"""The module API: a module is a plain class with hook methods, declared as data.

    class Hello(Module):
        \"\"\"Says hello to every flow.

        Synopsis: hello
        Reads: nothing
        Writes: nothing
        Options: greeting (str) the word to use
        Counters: flows
        Example: flowsift chain hello trace.pcap
        \"\"\"
        name = "hello"
        options = {"greeting": Option(str, "hello", "the word to use")}

        def on_open(self, flow):
            self.emit("greeting", text=self.config["greeting"])
            self.count("flows")

Hooks a module does not define are never called (they cost nothing). Unknown hook names,
wrong signatures and bad declarations are errors when the module loads, naming it.
"""
import inspect
import os
import traceback
from dataclasses import dataclass

from flowsift.errors import FlowsiftError

# hook name -> its parameters after self (the contract; docs/modules.md)
HOOKS = {
    "on_open": ("flow",),
    "on_data": ("flow", "stream"),
    "on_gap": ("flow", "direction", "gap"),
    "on_close": ("flow", "reason"),
    "on_packet": ("flow", "record"),
}

# fields a writing module may declare (the gateway verifies edits against them)
# ("drop": the verdict flow.drop(); like an edit it must reach egress, so the module is a stage of
# its own in the gateway, not a worker)
WRITABLE = frozenset({"ip.src", "ip.dst", "ip.ttl", "tcp.sport", "tcp.dport", "udp.sport", "udp.dport",
                      "tcp.flags", "payload", "drop"})

# what a module may read of a connection: its streams' bytes (on_data, stream pointers,
# flow.payload), its records (on_packet, flow.records, flow.totals), its gaps (on_gap, flow.gaps).
# When no module of a chain reads "stream", the gateway counts the bytes without storing them.
READABLE = frozenset({"stream", "records", "gaps"})
HOOK_READS = {"on_data": "stream", "on_gap": "gaps", "on_packet": "records"}

# counters the chain reports beside each module's own (hook exceptions, worker restarts,
# --max-backlog losses, connections a worker died in twice, edits refused): a module's counter
# of the same name would be overwritten or mixed in
RESERVED_COUNTERS = frozenset({"errors", "restarts", "dropped_batches", "dropped_connections", "edits_rejected",
                               "missed_connections", "crashed_connections"})

DOC_SECTIONS = ("Synopsis", "Reads", "Writes", "Options", "Counters", "Example")


class ModuleError(FlowsiftError):
    """A module that cannot be loaded or run (names the module and the problem)."""


class HookError(ModuleError):
    """An exception a hook raised, stopping a strict chain: names the module and the hook, shows
    the module's frames, and has the exception itself as its __cause__ (in the process that
    ran the hook)."""


@dataclass(frozen=True)
class Option:
    type: type
    default: object
    help: str

    def parse(self, module, name, text):
        try:
            if self.type is bool:
                low = text.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if self.type is list:
                # (commas part the options of a chain: a list's items are parted by semicolons)
                return [item.strip() for item in text.split(";") if item.strip()]
            return self.type(text)
        except ValueError as e:
            why = str(e)
            if self.type not in OPTION_TYPES and why and why != text:
                # a type of the module's own says what is wrong (int's own words are no help)
                raise ModuleError(f"module {module}: option {name}={text!r} is not {_kind(self.type)}: {why}") from None
            raise ModuleError(f"module {module}: option {name}={text!r} is not {_kind(self.type)}") from None


# options' usual types, as error messages say them (any other type is made from the text)
OPTION_TYPES = {str: "text", int: "an integer", float: "a number", bool: "true or false",
                list: "a list (items parted by ';')"}


def _kind(t):
    if t in OPTION_TYPES:
        return OPTION_TYPES[t]
    name = getattr(t, "__name__", str(t))
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


class Flow:
    """What a module sees of a connection: its endpoints, per-flow state, and verdicts."""
    __slots__ = ("conn", "proto", "client", "server", "vlan", "_state", "_cache", "first_ts", "last_ts", "_file",
                 "_editor", "_hook", "_skipped", "_own", "_upto", "_handed", "_times")

    def __init__(self, conn, proto, client, server, first_ts, vlan=None):
        self.conn = conn
        self.proto = proto
        self.client = client          # "ip:port"
        self.server = server
        # its VLAN ids, outer first ([] untagged), when the gateway keys connections by VLAN
        # (--vlan-key); else None: then the VLAN is no part of what a connection is
        self.vlan = vlan
        self._state = {}
        self._cache = {}
        self.first_ts = first_ts
        self.last_ts = first_ts
        self._file = None
        self._editor = None           # the gateway's Editor, for writing modules
        self._hook = None             # [the module whose hook is running], shared by a chain's flows
        self._skipped = set()         # modules that called skip()
        self._own = None              # module -> (state, cache), when several modules share the flow
        self._handed = None           # writing module -> (records, end0, end1) the stages after it may read
        # in on_packet: the records up to the one handed over (those after it in its batch are
        # not "so far" yet: what a module sees must not depend on how packets were batched)
        self._upto = None
        self._times = None            # the records' copy time_at() searches (made at its first call)

    @property
    def _module(self):
        # the module whose hook is running, whichever connection the hook is for: what a module
        # does through a flow it kept from another connection is its own doing (None outside hooks)
        hook = self._hook
        return hook[0] if hook is not None else None

    @property
    def state(self):
        """Per-flow state: a dict made when the connection opens and dropped when it closes,
        carried by checkpoints (plain data JSON carries; docs/state.md)."""
        return self._state if self._own is None else self._mine()[0]

    @state.setter
    def state(self, value):
        if self._own is None:
            self._state = value
        else:
            self._own[self._module] = (value, self._mine()[1])

    @property
    def cache(self):
        """Per-flow objects JSON cannot carry (parsers, decoders): not checkpointed, so empty
        again after a restore; a module rebuilds them from flow.state."""
        return self._cache if self._own is None else self._mine()[1]

    @cache.setter
    def cache(self, value):
        if self._own is None:
            self._cache = value
        else:
            self._own[self._module] = (self._mine()[0], value)

    def _mine(self):
        # several modules share this flow (inline): each has its own state and cache, as in its
        # own worker -- the module whose hook is running, whichever connection the hook is for
        # (one reading a flow it kept reads its own state of it); outside hooks, the first's
        own, m = self._own, self._module
        mine = own.get(m)
        if mine is None:
            mine = (self._state, self._cache) if not own or m is None else ({}, {})
            if m is not None:
                own[m] = mine
        return mine

    def skip(self):
        """The module calling this needs nothing more of this connection: its on_data, on_gap
        and on_packet are not called for it again, and its bytes and records count as read
        (on_close still comes, at the end). For a module that can tell early -- from a port,
        from the first bytes -- that a connection is not for it: the rest costs it nothing."""
        if self._module is not None:  # (outside a hook there is nobody to skip for)
            self._skipped.add(self._module)

    def drop(self, record):
        """Verdict: do not forward this packet (record) on egress (-w, --out). The module
        declares "drop" in `writes`. Returns an Edit: accepted, or rejected with its reason (as
        flow.edit)."""
        if self._editor is None or self._module is None or not self._module.writes:
            return self._refused(record, "flow.drop", {"drop": True})
        return self._editor.drop(self._module, self, record)

    def edit(self, record, **fields):
        """Ask the gateway to change header fields of a packet (record), e.g.
        edit(record, ip_dst="10.0.0.2", tcp_dport=8080). Each field must be declared in the
        module's `writes`. Returns an Edit: accepted, or rejected with its reason (one that
        names no field is rejected, and so is one of a record the modules after this one have
        read already: edit a record before your hooks for its batch return). A `record` that is
        not one is a TypeError."""
        if self._editor is None or self._module is None or not self._module.writes:
            return self._refused(record, "flow.edit", fields)
        return self._editor.edit(self._module, self, record, fields)

    def _refused(self, record, call, fields):
        # a read-only module (inline as in a worker, where no gateway takes edits: counted alike,
        # by its edits_rejected, which the summary's edits.rejected takes up as "read-only
        # module", the kind its reasons begin with), or a call outside a hook: the reason the
        # gateway would give, or that one
        from flowsift.modules.edits import READ_ONLY, Edit
        if call != "stream.replace":
            from flowsift.modules.edits import check_record
            check_record(record, call)
        m = self._module
        why = self._why_refused(m, call, fields)
        if m is not None:
            m._tally("edits_rejected")
            if m.read_only():
                why = f"{READ_ONLY}: {why}"
        return Edit(False, why)

    def _why_refused(self, m, call, fields):
        from flowsift.modules.edits import DROP_UNDECLARED, FIELDS, NO_FIELD
        if not fields:
            return NO_FIELD
        for key in fields:
            if key == "drop" and call == "flow.drop":
                if m is not None and "drop" not in m.writes:
                    return DROP_UNDECLARED
                continue
            if key == "payload" and call == "stream.replace":
                if m is not None and "payload" not in m.writes:
                    return "payload is not declared in writes"
                continue
            if key not in FIELDS:
                return f"unknown field {key!r} (one of {', '.join(FIELDS)})"
            if m is not None and FIELDS[key] not in m.writes:
                return f"{FIELDS[key]} is not declared in writes"
        if m is None and self._hook is not None:
            return f"{call} outside a hook: a module edits from its hooks"
        return "edits need a chain run by the gateway"

    def key(self):
        from flowsift.streams.format import vlan_field
        return {"conn": self.conn, "proto": self.proto, "client": self.client, "server": self.server,
                **vlan_field(self.vlan)}

    def _reading(self, what, call):
        m = self._module
        if m is not None and what not in m.reads:
            raise ModuleError(f"module {m.name}: flow.{call}() reads the connection's {what}: add {what!r} to `reads`")

    def records(self):
        """Every record of the connection so far, as a numpy structured array (columns: dir,
        payload_len, rflags, ts_ns, ...): for modules that want totals without a call per packet."""
        self._reading("records", "records")
        if self._file is None:
            raise ModuleError("records need a flow backed by a record file")
        return self._file.record_array(0, self._upto)

    def totals(self):
        """Totals over every record of the connection so far, in one pass: `packets` and
        `bytes` (payload captured, retransmitted copies included) as (client to server, server
        to client), and the records flagged `retransmissions` and `conflicts`."""
        self._reading("records", "totals")
        if self._file is None:
            raise ModuleError("totals need a flow backed by a record file")
        return self._file.totals(0, self._upto)

    def gaps(self):
        """Every gap of the connection so far, both directions, in the order they were found:
        entries with dir, reason, record_index, offset (in the stream) and length."""
        self._reading("gaps", "gaps")
        if self._file is None:
            raise ModuleError("gaps need a flow backed by a record file")
        if self._upto is not None:
            # (an entry declared while handling record i has record_index i)
            return [g for g in self._file.gaps() if g.record_index < self._upto]
        return self._file.gaps()

    def time_at(self, direction, offset):
        """The capture time (integer ns, as a record's ts_ns) of the packet that first carried
        byte `offset` of stream `direction` (0: client to server, 1: server to client), among
        the records so far; None when none did (a byte in a gap, or not arrived yet). For
        latencies: the time of a request's last byte, and of its answer's first."""
        self._reading("records", "time_at")
        if self._file is None:
            raise ModuleError("time_at needs a flow backed by a record file")
        for what, value in (("direction", direction), ("offset", offset)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"time_at: {what} {value!r} is a {type(value).__name__}: a whole number")
        if direction not in (0, 1):
            raise ValueError(f"time_at: direction {direction!r}: 0 (client to server) or 1 (server to client)")
        if offset < 0:
            raise ValueError(f"time_at: offset {offset!r}: a byte's offset in the stream, 0 or more")
        if self._times is None:
            from flowsift.modules.runner import _PacketTimes
            self._times = _PacketTimes()
        n = self._upto if self._upto is not None else self._file.header["records"]
        return self._times.at(self._file, direction, offset, n)

    def payload(self, record):
        """The bytes a record's packet carried, as the stream holds them: a UDP datagram as
        captured; for TCP the delivered bytes at the record's offset (for a copy that differed
        from the one delivered, flagged conflict, those of the copy delivered). b"" for a
        record with no payload. None when the stream does not hold them all (never fewer bytes
        than the record carried): held out of order and not delivered yet (they are once the
        hole before them fills: ask again later, by on_close at the latest), lost in a gap,
        given back, or of a packet reassembly ignored. `record`: one a hook was handed, or a row
        of flow.records() (a TypeError for anything else)."""
        self._reading("stream", "payload")
        rf = self._file
        if rf is None:
            raise ModuleError("payload needs a flow backed by a record file")
        d, offset, length = _carried(record, rf, self.conn)
        if not length:
            return b""
        if offset is None:
            return None
        return rf.stream_bytes(d, offset, length)

    def __repr__(self):
        from flowsift.streams.format import vlan_text
        vlan = "" if self.vlan is None else f" vlan {vlan_text(self.vlan)}"      # ('-' untagged, as tables say)
        return f"<Flow {self.conn} {self.proto} {self.client} -> {self.server}{vlan}>"


def _carried(record, rf, conn):
    """(direction, stream offset, payload length) of a record of `rf` for flow.payload: one a hook
    was handed or a row of flow.records(); the offset None for bytes no stream holds (a packet
    reassembly ignored). A TypeError for what is neither, a ValueError for another connection's."""
    from flowsift.streams import format as F
    from flowsift.streams.reader import Record
    h = rf.header
    if isinstance(record, Record):
        d, offset, rflags, rid = record.dir, record.stream_offset, record.rflags, record.record_id
    else:
        import numpy as np
        if not (isinstance(record, np.void) and record.dtype == F.record_dtype()):
            kind = "None" if record is None else f"a {type(record).__name__}" \
                if type(record).__module__ == "builtins" else f"a {type(record).__module__}.{type(record).__name__}"
            raise TypeError(f"flow.payload: record is {kind}, not a record: pass the record on_packet was "
                            f"handed, or a row of flow.records()")
        d, rflags, rid = int(record["dir"]), int(record["rflags"]), int(record["record_id"])
        offset = int(record["seq_offset"])
        if record["proto"] == 6:
            offset = offset - h[f"origin{d}"] if d < 2 else None
    index = (rid - h["first_record_id"]) % 2**64
    if index >= h["records"] or (isinstance(record, Record) and index != record.index):
        raise ValueError(f"flow.payload: the record of id {rid} is not one of connection {conn}'s")
    if d > 1 or rflags & F.RF_IGNORED:
        offset = None
    length = record.payload_len if isinstance(record, Record) else int(record["payload_len"])
    return d, offset, length


class Module:
    """Base class. Subclasses set `name`, optionally `reads`, `writes` and `options`, and define hooks."""
    name = None
    reads = READABLE
    writes = frozenset()
    options = {}

    def __init__(self, config=None):
        import types
        from flowsift.modules.state import bind_state
        # config state: the options, read-only while the module runs
        self.config = types.MappingProxyType(dict(config or {}))
        self.counters = {}
        self._emit = None
        bind_state(self)            # the cross-flow tables and global values the class declares

    # --- what a module calls ---
    def emit(self, kind, **fields):
        """A structured event (a JSON line with the flow key and time, EVE style). `kind` is
        text; field values are what JSON carries, or bytes, sets and numpy values (converted):
        anything else, and a NaN or an infinity, is a ModuleError naming the field."""
        if self._emit is not None:
            self._emit(self, kind, fields)

    def count(self, name, n=1):
        c = self.counters
        if name in c:
            c[name] += n
        elif name in RESERVED_COUNTERS:
            raise ModuleError(f"module {self.name}: counter name {name!r} is the chain's own "
                              f"({', '.join(sorted(RESERVED_COUNTERS))} are reported for every module): choose another")
        else:
            c[name] = n

    def _tally(self, name, n=1):
        # a counter of the chain's own (RESERVED_COUNTERS), counted as `count` counts
        self.counters[name] = self.counters.get(name, 0) + n

    def summary(self):
        """Rows for the module's end-of-run table, called once at the end of the run: a list
        of dicts, one per row (column name: value), shown under the module's name and in the
        summary's `tables` (joined across --shards); none by default. Values are what emit
        takes, converted as emit converts them; anything else, or another type than a list of
        dicts, is a ModuleError naming the module. An exception raised here is the module's
        failure, as one raised in a hook is."""
        return []

    # --- declared shape ---
    @classmethod
    def hooks(cls):
        return [h for h in HOOKS if callable(getattr(cls, h, None))]

    @classmethod
    def read_only(cls):
        return not cls.writes


def checked_rows(module, rows):
    """What `module.summary()` returned, checked and made plain: a list of dicts keyed by text,
    their values converted as event fields are (flowsift.modules.values). Anything else is a
    ModuleError naming the module (and the row and column), the same in every mode (a dict was
    merged across shards into a list of its keys)."""
    from flowsift.modules.values import NOT_JSON, plain_fields, why_not_json
    if isinstance(rows, tuple):
        rows = list(rows)
    if not isinstance(rows, list):
        raise ModuleError(f"module {module.name}: summary() returned a {type(rows).__name__}, not a list of rows "
                          f"(dicts, column name: value; [] for none)")
    out = rows
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ModuleError(f"module {module.name}: summary() row {i} is a {type(row).__name__}, not a dict "
                              f"(column name: value)")
        for key in row:
            if type(key) is not str:
                raise ModuleError(f"module {module.name}: summary() row {i} has a column named {key!r}, "
                                  f"{_kind(type(key))}: column names are text")
        try:
            plain = plain_fields(row)
        except NOT_JSON:
            raise ModuleError(f"module {module.name}: summary() row {i}: {why_not_json(row, 'column')}") from None
        if plain is not row:
            if out is rows:
                out = list(rows)        # (the module's own list stays as it is)
            out[i] = plain
    return out


def validate(cls, where):
    """Check a module class when it loads; raises ModuleError naming it and the problem."""
    label = getattr(cls, "name", None) or getattr(cls, "__name__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise ModuleError(f"{where}: {label} is not a flowsift Module subclass")
    if not isinstance(cls.name, str) or not cls.name.isidentifier():
        raise ModuleError(f"{where}: module class {cls.__name__} needs a `name` that is an identifier")
    for attr in dir(cls):
        if attr.startswith("on_") and attr not in HOOKS and callable(getattr(cls, attr)):
            raise ModuleError(f"module {cls.name}: unknown hook {attr}() (hooks: {', '.join(HOOKS)}; on_* names "
                              f"are for hooks: name a helper method otherwise)")
    for hook, params in HOOKS.items():
        fn = getattr(cls, hook, None)
        if fn is None:
            continue
        want = f"def {hook}(self, {', '.join(params)})"
        if not callable(fn):
            raise ModuleError(f"module {cls.name}: {hook} is {fn!r}, not a method: {want}")
        if isinstance(inspect.getattr_static(cls, hook), (staticmethod, classmethod)):
            raise ModuleError(f"module {cls.name}: {hook}() must be a method: {want}")
        # hooks are called and their result dropped: the body of an async or generator hook
        # would never run
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise ModuleError(f"module {cls.name}: {hook}() is async: hooks are called, not awaited ({want})")
        if inspect.isgeneratorfunction(fn):
            raise ModuleError(f"module {cls.name}: {hook}() yields: a generator's body runs only when iterated, "
                              f"and nothing iterates a hook ({want})")
        try:
            sig = list(inspect.signature(fn).parameters.values())[1:]
        except (TypeError, ValueError):
            raise ModuleError(f"module {cls.name}: {hook} has no signature to check: {want}") from None
        got = [p.name for p in sig]
        if len(got) != len(params):
            raise ModuleError(f"module {cls.name}: {hook}() takes ({', '.join(got)}), expected "
                              f"({', '.join(params)})")
        by_name = [str(p) for p in sig if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
        if by_name:
            raise ModuleError(f"module {cls.name}: {hook}() takes {by_name[0]} by keyword only: hooks are called "
                              f"with positional arguments ({want})")
    for what, allowed in (("writes", WRITABLE), ("reads", READABLE)):
        given = getattr(cls, what)
        if not isinstance(given, (set, frozenset)):
            raise ModuleError(f"module {cls.name}: `{what}` must be a set (e.g. {{{sorted(allowed)[0]!r}}}), "
                              f"not a {type(given).__name__}")
        if not set(given) <= allowed:
            raise ModuleError(f"module {cls.name}: `{what}` names {sorted(map(repr, set(given) - allowed))[0]}: "
                              f"one of {', '.join(sorted(allowed))}")
    writes, reads = cls.writes, cls.reads
    for hook, what in HOOK_READS.items():
        if callable(getattr(cls, hook, None)) and what not in reads:
            raise ModuleError(f"module {cls.name}: {hook}() reads the connection's {what}: add {what!r} to `reads`")
    if "payload" in writes and "stream" not in reads:
        raise ModuleError(f"module {cls.name}: writing the payload reads the stream: add 'stream' to `reads`")
    if not isinstance(cls.options, dict) or not all(isinstance(o, Option) for o in cls.options.values()):
        raise ModuleError(f"module {cls.name}: `options` must map names to Option(type, default, help)")
    for key, o in cls.options.items():
        if not callable(o.type):
            raise ModuleError(f"module {cls.name}: option {key}: its type {o.type!r} is not a type")
        if o.type in OPTION_TYPES and o.default is not None and not (
                type(o.default) is o.type or (o.type is float and type(o.default) is int)):
            raise ModuleError(f"module {cls.name}: option {key}'s default {o.default!r} is not {_kind(o.type)}")
    if not cls.__doc__ or not cls.__doc__.strip():
        raise ModuleError(f"module {cls.name}: needs a docstring (Synopsis, Reads, Writes, Options, Counters, Example)")
    return cls


# where flowsift's own code is (the built-in modules' frames are shown: they are modules)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).replace("\\", "/") + "/"
_PACKAGE = _ROOT + "flowsift/"
_BUILTIN = _PACKAGE + "modules/builtin/"


def _own_frame(filename):
    name = filename.replace("\\", "/")
    if not os.path.isabs(name):
        # Cython names its frames from the source root: flowsift/streams/_pointer.pyx
        name = _ROOT + name
    return name.startswith(_PACKAGE) and not name.startswith(_BUILTIN)


def module_frames(exc):
    """The frames of an exception raised in a hook, formatted, without flowsift's own (those of
    its compiled parts included). A module's file is never taken for flowsift's, wherever it is
    (a checkout's examples/ sits in a folder named flowsift)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _own_frame(f.filename)]
    return "".join(traceback.format_list(frames))


def trimmed_traceback(exc):
    """The traceback of an exception raised in a hook, without flowsift's own frames."""
    return module_frames(exc) + _said(exc)


def _said(exc):
    # (sys.exit() and a bare `raise KeyboardInterrupt` have no message: the name alone)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def hook_error(module, hook, exc):
    """The HookError for `exc` raised in `hook` of `module` (raise it `from exc`): one line
    naming them, then the module's frames (as a failure is logged without --strict)."""
    frames = module_frames(exc).rstrip("\n")
    return HookError(f"module {module.name}: {hook}() raised {_said(exc)}"
                     + (f"\n{frames}" if frames else ""))
