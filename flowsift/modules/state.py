"""The kinds of state a module keeps, declared so that the runtime can see, save and move them.

- per-flow: `flow.state`, a dict made when the connection opens and dropped when it closes;
- cross-flow: a table keyed by named flow fields, declared on the class
  (`per_source = CrossFlow(key=("ip.src",), expire=300)`), one entry (a dict) per key;
- global: one value for the whole run, declared on the class (`totals = Global()`,
  `rows = Global(list)`; `Global(list, append_only=True)` for rows that are only ever
  appended, which checkpoints carry incrementally);
- config: the module's options, `self.config`, read-only while it runs.

Values are plain data that JSON can carry (dict, list, str, int, float, bool, None): JSON
because it needs nothing installed, is read by people and every language, and state is small
next to traffic; tuples come back as lists.
"""
import json

from flowsift.errors import FlowsiftError
from flowsift.streams.format import vlan_text

# key fields of a cross-flow table: names a module may use, and what they read from a flow
KEY_FIELDS = {
    "ip.src": lambda f: f.client.rpartition(":")[0].strip("[]"),      # the connection's initiator
    "ip.dst": lambda f: f.server.rpartition(":")[0].strip("[]"),
    "port.src": lambda f: int(f.client.rpartition(":")[2]),
    "port.dst": lambda f: int(f.server.rpartition(":")[2]),
    "tcp.sport": lambda f: int(f.client.rpartition(":")[2]),
    "tcp.dport": lambda f: int(f.server.rpartition(":")[2]),
    "udp.sport": lambda f: int(f.client.rpartition(":")[2]),
    "udp.dport": lambda f: int(f.server.rpartition(":")[2]),
    "proto": lambda f: f.proto,
    # with --vlan-key, one address on two VLANs is two tenants ("-" untagged, "100.10" QinQ;
    # "" in a run not keyed by VLAN)
    "vlan": lambda f: vlan_text(f.vlan),
}
MERGES = ("add", "union", "last", "max", "min")


class StateError(FlowsiftError):
    """Declared state that cannot be saved or restored: one line, exit 2 (never retried)."""


class CrossFlow:
    """Declares a cross-flow table: entries keyed by `key` (flow fields, see KEY_FIELDS), dropped
    `expire` seconds (capture time) after they were last touched, and merged across shards
    by `merge` ('add': numbers add, lists extend, dicts merge per key; 'union': lists become
    sorted sets; 'last'; 'max'; 'min'; or a function (a, b) -> merged)."""

    def __init__(self, key, expire=None, merge="add"):
        key = (key,) if isinstance(key, str) else tuple(key)
        unknown = [k for k in key if k not in KEY_FIELDS]
        if not key or unknown:
            raise StateError(f"CrossFlow key {unknown or key!r}: fields are {', '.join(KEY_FIELDS)}")
        if not (callable(merge) or merge in MERGES):
            raise StateError(f"CrossFlow merge {merge!r}: one of {', '.join(MERGES)} or a function")
        self.key, self.expire, self.merge = key, expire, merge

    def bind(self):
        return CrossFlowTable(self)


class Global:
    """Declares a global value: `Global()` a dict, `Global(list)` a list, `Global(int)` a number
    (read and written through `.value`). `Global(list, append_only=True)`: rows that are only
    appended, never changed once in (a table built as connections end): a checkpoint then
    carries the rows appended since the last one, not all of them again."""

    def __init__(self, kind=dict, merge="add", append_only=False):
        if kind not in (dict, list, int, float):
            raise StateError("Global(kind): dict, list, int or float")
        if append_only and kind is not list:
            raise StateError("Global(..., append_only=True) is for lists")
        self.kind, self.merge, self.append_only = kind, merge, append_only

    def bind(self):
        if self.append_only:
            return AppendOnly()
        return self.kind() if self.kind in (dict, list) else Number(self.kind())


class AppendOnly(list):
    """A list whose first `saved` items are in a checkpoint already."""
    saved = 0


class Number:
    """A global number: `self.total.value += 1`."""
    __slots__ = ("value",)

    def __init__(self, value=0):
        self.value = value

    def __repr__(self):
        return f"Number({self.value!r})"


# capture time past an entry's expiry before it is let go (see CrossFlowTable._lookup)
COLLECT_AFTER_NS = 3600 * 10**9


class CrossFlowTable:
    """The entries of a declared cross-flow table: `table[flow]` is the entry (a dict) for the
    flow's key, made on first use; `table.key_of(flow)`; iteration over (key, entry)."""

    def __init__(self, decl):
        self.decl = decl
        self.entries = {}
        self.touched = {}          # key -> capture time (ns) of the last use, for expiry
        self.now = 0

    def key_of(self, flow):
        return tuple(KEY_FIELDS[k](flow) for k in self.decl.key)

    # An entry has expired for a flow that last showed a packet more than `expire` seconds
    # after the entry's last use. Expired entries are let go (collected) only once no flow can
    # still find them alive: older than the latest flow seen by `expire` plus an hour (flows
    # end within their idle timeout, minutes): so when a checkpoint collects them changes
    # nothing a lookup, len() or items() gives, and a run gives the same answers whatever its
    # batches and checkpoints, a restarted worker the same as an undisturbed one.
    def _lookup(self, flow):
        # (the key, its entry or None if there is none or it expired for this flow)
        if isinstance(flow, tuple):
            return flow, self.entries.get(flow)
        k = self.key_of(flow)
        t = flow.last_ts or 0
        e = self.entries.get(k)
        if e is not None and self.decl.expire is not None and self.touched.get(k, 0) < t - self.decl.expire * 1e9:
            e = None
        return k, e

    def __getitem__(self, flow):
        k, e = self._lookup(flow)
        if e is None:
            e = self.entries[k] = {}        # (an expired entry: a new one starts)
            self.touched[k] = 0
        if not isinstance(flow, tuple):
            # the key's last use: the latest time of a flow that used it, whatever their order;
            # the table's clock only moves here, so it is the latest use a checkpoint keeps
            self.touched[k] = max(self.touched.get(k, 0), flow.last_ts or 0)
            self.now = max(self.now, self.touched[k])
        return e

    def get(self, flow, default=None):
        _, e = self._lookup(flow)
        return default if e is None else e

    def __contains__(self, flow):
        return self._lookup(flow)[1] is not None

    def __len__(self):
        self.expire(self.now)
        return len(self.entries)

    def items(self):
        self.expire(self.now)
        return self.entries.items()

    def expire(self, now_ns):
        """Let go the entries no flow can find alive any more (see _lookup)."""
        if self.decl.expire is None:
            return 0
        limit = now_ns - int(self.decl.expire * 1e9) - COLLECT_AFTER_NS
        old = [k for k, t in self.touched.items() if t < limit]
        for k in old:
            self.entries.pop(k, None)
            self.touched.pop(k, None)
        return len(old)

    # --- saving and merging ---
    def dump(self):
        self.expire(self.now)           # (what no later use can find alive is not kept)
        return [[list(k), v, self.touched.get(k, 0)] for k, v in self.entries.items()]

    def load(self, rows):
        self.entries = {tuple(k): v for k, v, _ in rows}
        self.touched = {tuple(k): t for k, _, t in rows}
        self.now = max(self.touched.values(), default=0)

    def merge_from(self, rows):
        for k, v, t in rows:
            k = tuple(k)
            if k in self.entries:
                self.entries[k] = merge_values(self.entries[k], v, self.decl.merge)
            else:
                self.entries[k] = v
            self.touched[k] = max(self.touched.get(k, 0), t)
            self.now = max(self.now, t)
        self.expire(self.now)           # by the latest use in any of the merged tables


def merge_values(a, b, how):
    if callable(how):
        return how(a, b)
    if how == "last":
        return b
    if how in ("max", "min"):
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: merge_values(a.get(k), b[k], how) if k in a else b[k] for k in b} | \
                   {k: v for k, v in a.items() if k not in b}
        return (max if how == "max" else min)(a, b)
    if how == "union":
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge_values(a[k], v, how) if k in a else v for k, v in b.items()}}
        if isinstance(a, list) and isinstance(b, list):
            return sorted(set(map(_hashable, a)) | set(map(_hashable, b)), key=repr)
        return b
    # add
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge_values(a[k], v, how) if k in a else v
        return out
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a + b
    return b


def _hashable(x):
    return json.dumps(x, sort_keys=True) if isinstance(x, (dict, list)) else x


def declared(cls):
    """{attribute: declaration} of the CrossFlow and Global state a module class declares."""
    out = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, (CrossFlow, Global)):
                out[name] = value
    return out


def bind_state(module):
    """Give a module instance its own tables for the state its class declares."""
    module._state = {}
    for name, decl in declared(type(module)).items():
        module._state[name] = decl.bind()
        setattr(module, name, module._state[name])


def snapshot(module, incremental=False, appended=None):
    """The module's declared cross-flow and global state as JSON text. With `incremental`,
    an append-only list is only counted (`{"rows": n}`) and the rows appended since the last
    incremental snapshot go into the dict `appended` ({name: [rows]}): whoever keeps the
    checkpoints keeps the rows."""
    out = {}
    for name, v in getattr(module, "_state", {}).items():
        # what goes into this checkpoint is looked at: an append-only list's new rows only; a
        # cross-flow table's entries (its own keys are tuples, saved as lists)
        bad = _text_keys(v[v.saved:] if incremental and isinstance(v, AppendOnly) else
                         list(v.entries.values()) if isinstance(v, CrossFlowTable) else v)
        if bad is not None:
            # JSON keys are text: 80 would come back as "80", beside a new 80, after a restart
            raise StateError(f"module {module.name}: {name}: a dict key {bad!r} ({type(bad).__name__}): "
                             f"state is saved as JSON, whose keys are text; use str keys (e.g. str(port))")
        if incremental and isinstance(v, AppendOnly):
            out[name] = {"rows": len(v)}
            appended[name] = v[v.saved:]
            v.saved = len(v)
        elif isinstance(v, CrossFlowTable):
            out[name] = {"crossflow": v.dump()}
        elif isinstance(v, Number):
            out[name] = {"number": v.value}
        else:
            out[name] = {"value": v}
    try:
        return json.dumps(out, separators=(",", ":"))
    except TypeError as e:
        # which table: each is tried alone, now that one failed
        for name, blob in out.items():
            try:
                json.dumps(blob)
            except TypeError as e:
                raise StateError(f"module {module.name}: {name}: state that JSON cannot carry: {e}") from None
        raise StateError(f"module {module.name}: state that JSON cannot carry: {e}") from None


def _text_keys(x):
    """The first dict key in `x` (nested) that is not a str, or None."""
    if isinstance(x, dict):
        for k, v in x.items():
            if type(k) is not str:
                return k
            if isinstance(v, (dict, list, tuple)):
                bad = _text_keys(v)
                if bad is not None:
                    return bad
    elif isinstance(x, (list, tuple)):
        for v in x:
            if isinstance(v, (dict, list, tuple)):
                bad = _text_keys(v)
                if bad is not None:
                    return bad
    return None


def restore(module, text, merge=False, rows=None):
    """Load (or, with merge, fold in another shard's) snapshot of the module's declared state.
    `rows`: {name: every item} of append-only lists an incremental snapshot gave in parts."""
    data = json.loads(text)
    for name, blob in data.items():
        cur = module._state.get(name)
        if cur is None:
            continue
        decl = declared(type(module))[name]
        if "rows" in blob:
            items = (rows or {}).get(name, [])
            if len(items) != blob["rows"]:
                raise StateError(f"module {module.name}: {name}: the rows before this checkpoint are missing")
            cur[:] = items
            cur.saved = len(items)
        elif "crossflow" in blob:
            cur.merge_from(blob["crossflow"]) if merge else cur.load(blob["crossflow"])
        elif "number" in blob:
            cur.value = merge_values(cur.value, blob["number"], decl.merge) if merge else blob["number"]
        else:
            v = blob["value"]
            if merge:
                v = merge_values(cur, v, decl.merge)
            if isinstance(cur, list):
                cur[:] = v
            else:
                cur.clear()
                cur.update(v)
