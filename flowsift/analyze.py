"""`flowsift analyze MODULE`: state a module keeps outside the state API, found by reading its
source (Python's ast; no hook is called, though loading the module runs its top-level code).

Like StateAlyzr's classification of a middlebox's variables, every place where a module
changes something that outlives one call is looked at:
- attributes of `self` assigned or mutated outside `__init__`, other than the declared state
  (CrossFlow, Global), `counters` and `config`;
- module-level names changed from inside a function (`global`, or a module-level dict/list/set
  mutated);
- closure variables (`nonlocal`) and mutable default arguments.
Each finding says whether the state looks per-flow (indexed by the flow or its id),
cross-flow (indexed by flow fields: which ones) or global, and the declaration that fits.
"""
import ast
import inspect
import os

from flowsift.errors import FlowsiftError

MUTATORS = {"append", "extend", "insert", "add", "update", "setdefault", "pop", "popitem", "remove", "discard",
            "clear", "sort", "reverse", "__setitem__", "appendleft", "popleft", "extendleft"}
API = {"counters", "config", "_emit", "_state", "name", "writes", "options"}
FLOW_FIELDS = {"client": "ip.src", "server": "ip.dst", "proto": "proto"}
# fields of flows, streams and records that are numbers (a key made of one is not a string)
NUMBER_FIELDS = {"conn", "direction", "dir", "sport", "dport", "seq", "ack", "index", "record_id", "ts_ns",
                 "payload_len", "stream_offset", "frame_pos"}


def _self_attr(node):
    """The attribute name if node is self.X (or self.X[...] / self.X.y ...)."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return node.attr
        node = node.value
    return None


def _class_attr(node, class_names):
    """The attribute name if node is type(self).X, self.__class__.X or CLASS.X (for one of the
    file's classes), or an item or attribute of one: state every instance shares."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        if isinstance(node, ast.Attribute):
            base = node.value
            if (isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "type"
                    and len(base.args) == 1 and isinstance(base.args[0], ast.Name) and base.args[0].id == "self") \
                    or (isinstance(base, ast.Attribute) and base.attr == "__class__"
                        and isinstance(base.value, ast.Name) and base.value.id == "self") \
                    or (isinstance(base, ast.Name) and base.id in class_names):
                return node.attr
        node = node.value
    return None


def _root_name(node):
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _subscript_keys(node):
    out = []
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        if isinstance(node, ast.Subscript):
            out.append(node.slice)
        node = node.value
    return out


def _not_data(value):
    """Why a value written into flow.state is not plain data JSON carries back, or None."""
    if isinstance(value, (ast.Set, ast.SetComp)):
        return "a set"
    if isinstance(value, ast.Tuple):
        return "a tuple (it comes back a list)"
    if isinstance(value, ast.Lambda):
        return "a function"
    if isinstance(value, ast.Constant) and isinstance(value.value, bytes):
        return "bytes"
    if isinstance(value, ast.Call):
        f = value.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name in ("set", "frozenset", "tuple", "bytes", "bytearray", "memoryview"):
            return f"a {name}"
        if name and name[:1].isupper():
            return f"an object ({ast.unparse(f)}(...))"
    return None


def _flow_state(node, flow_names):
    """True if node is FLOW.state[...]... for a flow parameter."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return (isinstance(node, ast.Attribute) and node.attr == "state" and isinstance(node.value, ast.Name)
            and node.value.id in flow_names)


def _classify(keys, flow_names, derived=None):
    """('per-flow'|'cross-flow'|'global', suggestion) from the index expressions used; `derived`:
    local names assigned from an expression (`src = flow.client.rpartition(":")[0]`), followed."""
    fields = []
    derived = derived or {}
    keys, seen = list(keys), set()
    while keys:
        k = keys.pop()
        for n in ast.walk(k):
            if isinstance(n, ast.Name) and n.id in derived and n.id not in flow_names and n.id not in seen:
                seen.add(n.id)
                keys.append(derived[n.id])
                continue
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in flow_names:
                if n.attr == "conn":
                    return "per-flow", "keep it in flow.state"
                if n.attr in FLOW_FIELDS:
                    fields.append(FLOW_FIELDS[n.attr])
            elif isinstance(n, ast.Name) and n.id in flow_names and k is n:
                return "per-flow", "keep it in flow.state"
    if fields:
        key = ", ".join(repr(f) for f in dict.fromkeys(fields))
        return "cross-flow", f"declare it: NAME = CrossFlow(key=({key},))"
    return "global", "declare it: NAME = Global() (or Global(list), Global(int))"


class _Finder(ast.NodeVisitor):
    def __init__(self, path, module_globals, declared, classes=None, class_names=()):
        self.path = path
        self.class_names = set(class_names)     # every class the file defines
        self.classes = classes          # the module classes to look into (None: every class)
        self.globals = module_globals
        self.declared = declared
        self.findings = []
        self.cls = None
        self.method = None
        self.flow_names = set()
        self.derived = {}
        self.aliases = {}               # local name -> the self.X expression it names (d = self.last)
        self.init_only = set()          # (class, method): helpers only __init__ calls

    def add(self, node, what, kind, suggestion):
        self.findings.append({"file": self.path, "line": node.lineno, "class": self.cls, "method": self.method,
                              "what": what, "kind": kind, "suggestion": suggestion})

    def visit_ClassDef(self, node):
        outer = self.cls
        self.cls = node.name
        self.generic_visit(node)
        self.cls = outer

    def visit_FunctionDef(self, node):
        outer, outer_flows = self.method, self.flow_names
        self.method = node.name
        outer_derived = getattr(self, "derived", {})
        # locals assigned once from an expression: a key made from flow fields keeps its kind
        self.derived = {t.id: n.value for n in ast.walk(node) if isinstance(n, ast.Assign)
                        for t in n.targets if isinstance(t, ast.Name)}
        outer_aliases = self.aliases
        # a local that names an attribute of self (no call: `d = self.last`, not a copy): what
        # is done to it is done to the attribute
        self.aliases = {k: v for k, v in self.derived.items()
                        if isinstance(v, (ast.Attribute, ast.Subscript)) and _self_attr(v) is not None}
        args = [a.arg for a in node.args.args]
        self.flow_names = {a for a in args if a == "flow"} | ({args[1]} if len(args) > 1 and self.cls and
                                                             node.name.startswith("on_") else set())
        for d in node.args.defaults + node.args.kw_defaults:
            if isinstance(d, (ast.List, ast.Dict, ast.Set)) or (isinstance(d, ast.Call) and
                                                                 getattr(d.func, "id", None) in ("list", "dict", "set")):
                self.add(d, f"mutable default argument in {node.name}()", "global",
                         "declare it: NAME = Global() instead of a default argument that keeps values between calls")
        self.generic_visit(node)
        self.method, self.flow_names, self.derived, self.aliases = outer, outer_flows, outer_derived, outer_aliases

    visit_AsyncFunctionDef = visit_FunctionDef

    def _in_hook(self):
        # helper classes keep their own attributes: their instances live in declared state;
        # a helper only __init__ calls sets up, as __init__ does
        return (self.cls is not None and self.method not in (None, "__init__")
                and (self.cls, self.method) not in self.init_only
                and (self.classes is None or self.cls in self.classes))

    def _unalias(self, t):
        # `d[k]` where d = self.last: self.last[k]
        path, node = [], t
        while isinstance(node, (ast.Subscript, ast.Attribute)):
            path.append(node)
            node = node.value
        if not (isinstance(node, ast.Name) and node.id in self.aliases) or not path:
            return t
        rebuilt = self.aliases[node.id]
        for n in reversed(path):
            rebuilt = ast.Subscript(value=rebuilt, slice=n.slice) if isinstance(n, ast.Subscript) \
                else ast.Attribute(value=rebuilt, attr=n.attr)
        return rebuilt

    def _flow_state_value(self, target, value, node):
        # per-flow state that a checkpoint cannot carry: the connection would be read again from
        # its first record after a restart
        if not isinstance(target, ast.Subscript) or not _flow_state(target, self.flow_names):
            return
        key = target.slice
        if isinstance(key, ast.Tuple) or (isinstance(key, ast.Constant) and not isinstance(key.value, str)) \
                or (isinstance(key, ast.Attribute) and key.attr in NUMBER_FIELDS):
            self.add(node, f"flow.state key {ast.unparse(key)} in {self.method}() is not a string (JSON keys are)",
                     "per-flow", "use a string key, or a list indexed by direction")
        why = _not_data(value) if value is not None else None
        if why:
            self.add(node, f"flow.state holds {why} in {self.method}(): a checkpoint cannot carry it", "per-flow",
                     "keep objects in flow.cache and, in flow.state, the plain data that rebuilds them")

    def _target(self, t, node, how):
        t = self._unalias(t)
        shared = _class_attr(t, self.class_names)
        if shared is not None and self._in_hook() and shared not in API:
            self.add(node, f"class attribute {shared} {how} in {self.method}() (every instance shares it)", "global",
                     "declare it: NAME = Global() (or CrossFlow if it is keyed by flow fields)")
            return
        attr = _self_attr(t)
        if attr is not None and self._in_hook() and attr not in API and attr not in self.declared:
            kind, sug = _classify(_subscript_keys(t), self.flow_names, self.derived)
            self.add(node, f"self.{attr} {how} in {self.method}()", kind, sug)
            return
        root = _root_name(t)
        if root in self.globals and self.method is not None and not isinstance(t, ast.Name):
            kind, sug = _classify(_subscript_keys(t), self.flow_names, self.derived)
            self.add(node, f"module-level {root} {how} in {self.method}()", kind, sug)

    def visit_Assign(self, node):
        for t in node.targets:
            for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                self._target(el, node, "assigned")
                self._flow_state_value(el, node.value if el is t else None, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._target(node.target, node, "updated")
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self._target(node.target, node, "assigned")
        self.generic_visit(node)

    def visit_Delete(self, node):
        for t in node.targets:
            self._target(t, node, "deleted from")
        self.generic_visit(node)

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "setdefault" and len(node.args) == 2 \
                and _flow_state(f.value, self.flow_names) and isinstance(f.value, ast.Attribute):
            self._flow_state_value(ast.Subscript(value=f.value, slice=node.args[0]), node.args[1], node)
        if isinstance(f, ast.Attribute) and f.attr in MUTATORS:
            # d.setdefault(KEY, ...) / d.pop(KEY): keyed like d[KEY]
            keyed = ast.Subscript(value=f.value, slice=node.args[0]) if f.attr in ("setdefault", "pop") and node.args \
                else f.value
            if not isinstance(f.value, ast.Name):
                self._target(keyed, node, f"mutated ({f.attr})")
            elif f.value.id in self.aliases:        # d.append(x) where d = self.items
                self._target(self.aliases[f.value.id] if keyed is f.value else keyed, node, f"mutated ({f.attr})")
            if isinstance(f.value, ast.Name) and f.value.id in self.globals and self.method is not None:
                kind, sug = _classify(_subscript_keys(keyed), self.flow_names, self.derived) \
                    if keyed is not f.value else ("global", "declare it: NAME = Global() (or CrossFlow if it is keyed by flow fields)")
                self.add(node, f"module-level {f.value.id} mutated ({f.attr}) in {self.method}()", kind, sug)
        if isinstance(f, ast.Name) and f.id == "setattr" and node.args and isinstance(node.args[0], ast.Name) \
                and node.args[0].id == "self" and self._in_hook():
            self.add(node, f"setattr(self, ...) in {self.method}()", "global", "declare the state it keeps")
        self.generic_visit(node)

    def visit_Global(self, node):
        if self.method is not None:
            self.add(node, f"global {', '.join(node.names)} in {self.method}()", "global",
                     "declare it: NAME = Global() on the module class")

    def visit_Nonlocal(self, node):
        self.add(node, f"closure state: nonlocal {', '.join(node.names)} in {self.method}()", "global",
                 "keep it in declared state (flow.state, CrossFlow or Global): a closure is not saved or moved")


def _init_only(tree):
    """(class, method) of the helpers that only __init__ calls (self.NAME(...)), directly or
    through other such helpers: what they set is set up, not state."""
    out = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        methods = {m.name: m for m in cls.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
        callers = {name: set() for name in methods}
        for name, m in methods.items():
            for n in ast.walk(m):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name) \
                        and n.func.value.id == "self" and n.func.attr in callers:
                    callers[n.func.attr].add(name)
        init = {"__init__"}
        while True:
            more = {name for name, by in callers.items() if name not in init and by and by <= init
                    and not name.startswith("on_")}
            if not more:
                break
            init |= more
        # a method named other than in a call (a callback handed out) may run any time
        called = {id(n.func) for m in methods.values() for n in ast.walk(m) if isinstance(n, ast.Call)}
        handed = {n.attr for m in methods.values() for n in ast.walk(m)
                  if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
                  and id(n) not in called}
        out |= {(cls.name, name) for name in init - {"__init__"} - handed}
    return out


def analyze_source(source, path, declared=(), classes=None):
    """Findings (dicts) for the Python source of a module file; `classes`: the names of the
    module classes in it (default: every class)."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise FlowsiftError(f"{path}:{e.lineno}: cannot parse: {e.msg}") from None
    module_globals = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                if isinstance(t, ast.Name):
                    module_globals.add(t.id)
    class_names = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    f = _Finder(path, module_globals, set(declared), classes, class_names)
    f.init_only = _init_only(tree)
    f.visit(tree)
    return sorted(f.findings, key=lambda x: x["line"])


def analyze(spec):
    """Analyze the module named by `spec` (a built-in name, an entry point or path.py[:Class])."""
    from flowsift.modules.loader import find
    from flowsift.modules.state import declared
    cls = find(spec)
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        # loaded from a file path: the class's module is not importable by name
        import sys
        path = getattr(sys.modules.get(cls.__module__), "__file__", None) or spec.split(":")[0]
    if path is None or not os.path.exists(path):
        raise FlowsiftError(f"module {cls.name}: its source is not available to read")
    with open(path) as fh:
        source = fh.read()
    classes = {k.__name__ for k in cls.__mro__ if k.__module__ == cls.__module__}
    shown = os.path.relpath(path)
    if shown.startswith(os.pardir):
        shown = os.path.abspath(path)           # (not under the working directory)
    findings = analyze_source(source, shown, declared(cls), classes)
    state = {name: type(d).__name__ + (f"(key={d.key})" if hasattr(d, "key") else "")
             for name, d in declared(cls).items()}
    return {"module": cls.name, "file": shown, "declared": state, "findings": findings}
