"""Finding modules by name (built-ins, the `flowsift.modules` entry-point group, or a file) and
parsing a chain such as `strsearch(patterns=rules.txt,nocase=true),counter`."""
import importlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points

from flowsift.modules.base import Module, ModuleError, validate

BUILTINS = {
    "counter": "flowsift.modules.builtin.counter:Counter",
    "tls": "flowsift.modules.builtin.tls:Tls",
    "http": "flowsift.modules.builtin.http:Http",
    "dns": "flowsift.modules.builtin.dns:Dns",
    "strsearch": "flowsift.modules.builtin.strsearch:StrSearch",
    "nat": "flowsift.modules.builtin.nat:Nat",
    "redact": "flowsift.modules.builtin.redact:Redact",
}


def _import(target, where):
    mod_name, _, attrs = target.split()[0].partition(":")      # (an entry point's "[extras]" aside)
    try:
        cls = importlib.import_module(mod_name)
        for attr in attrs.split("."):
            cls = getattr(cls, attr)
    except Exception as e:      # (a missing dependency, a broken plug-in): one line naming it
        raise ModuleError(f"{where}: cannot load: {type(e).__name__}: {e}") from None
    return validate(cls, where)


def _from_file(spec):
    path, _, cls_name = spec.partition(":") if spec.count(":") == 1 and not spec.startswith(":") else (spec, "", "")
    if not os.path.isfile(path):
        raise ModuleError(f"{path}: no such module file")
    # the files next to it are importable from it (helpers of its own), after everything else
    here = os.path.dirname(os.path.abspath(path))
    if here not in sys.path:
        sys.path.append(here)
    modspec = importlib.util.spec_from_file_location(f"flowsift_user_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(modspec)
    try:
        modspec.loader.exec_module(mod)
    except Exception as e:
        raise ModuleError(f"{path}: cannot load: {type(e).__name__}: {e}") from None
    if cls_name:
        if not hasattr(mod, cls_name):
            raise ModuleError(f"{path}: no class {cls_name}")
        return validate(getattr(mod, cls_name), path)
    found = [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, Module) and v is not Module
             and v.__module__ == mod.__name__]
    if not found:
        raise ModuleError(f"{path}: no Module class in it (a module derives from flowsift.modules.Module)")
    if len(found) > 1:
        names = ", ".join(sorted(c.__name__ for c in found))
        raise ModuleError(f"{path}: {len(found)} Module classes ({names}); say which with {path}:ClassName")
    return validate(found[0], path)


def start(cls, config):
    """An instance of module `cls` with its options: what goes wrong in its __init__ is one line
    naming it, as a bad declaration is."""
    try:
        m = cls(config)
    except ModuleError:
        raise
    except Exception as e:
        raise ModuleError(f"module {cls.name}: cannot start: {type(e).__name__}: {e}") from None
    if not all(hasattr(m, a) for a in ("config", "counters", "_emit")):
        raise ModuleError(f"module {cls.name}: its __init__ must call super().__init__(config)")
    return m


def start_chain(chain):
    """Every module of `chain` ([(class, config)]) started: what an __init__ refuses (a required
    option missing, a value it cannot use) is said before a store is made or a packet read."""
    return [start(cls, config) for cls, config in chain]


# Module classes given as objects (flowsift.testing.run_module), under names no file, built-in
# or entry point can have: name -> (class, option values that replace its defaults)
GIVEN = {}


def plugins():
    """{name: "entry point VALUE"} of the modules installed packages declare in the
    `flowsift.modules` entry-point group."""
    return {ep.name: f"entry point {ep.value}" for ep in entry_points(group="flowsift.modules")}


def find(name):
    """The module class for a name, an entry point or `path/to/file.py[:Class]`."""
    if name.endswith(".py") or ".py:" in name:
        return _from_file(name)
    if name in GIVEN:
        return GIVEN[name][0]
    if name in BUILTINS:
        return _import(BUILTINS[name], f"built-in {name}")
    for ep in entry_points(group="flowsift.modules"):
        if ep.name == name:
            return _import(ep.value, f"entry point {ep.value}")
    known = sorted(set(BUILTINS) | set(plugins()))
    import difflib
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    mean = f"; did you mean {close[0]}?" if close else ""
    raise ModuleError(f"unknown module {name!r}{mean} (known: {', '.join(known)}; or give path/to/file.py)")


def _split(text, sep):
    """Split at `sep` outside (), [] and {} (option values may be regular expressions)."""
    parts, depth, cur, esc = [], 0, [], False
    for ch in text:
        if esc:
            cur.append(ch)
            esc = False
            continue
        if ch == "\\":
            esc = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ModuleError(f"unbalanced {ch!r} in {text!r}")
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if depth:
        raise ModuleError(f"unbalanced brackets in {text!r}")
    parts.append("".join(cur))
    return parts


def parse_chain(text):
    """`a,b(x=1,y=two),c` -> [(module class, config dict)], options typed and checked. Option
    values may hold brackets and commas inside brackets (regular expressions)."""
    if not text or not text.strip():
        raise ModuleError("empty chain: name at least one module")
    chain = []
    for item in _split(text, ","):
        item = item.strip()
        if not item:
            raise ModuleError(f"empty module name in the chain {text!r}")
        name, paren, rest = item.partition("(")
        if paren and not rest.endswith(")"):
            raise ModuleError(f"cannot read the chain at {item!r}: options end with ')'")
        cls = find(name.strip())
        config = {k: o.default for k, o in cls.options.items()}
        config.update(GIVEN[name.strip()][1] if name.strip() in GIVEN else ())
        given = set()
        for part in filter(None, (p.strip() for p in _split(rest[:-1], ","))) if paren else ():
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq:
                raise ModuleError(f"module {cls.name}: option {part!r} needs name=value")
            if key in given:
                raise ModuleError(f"module {cls.name}: option {key} is given twice")
            given.add(key)
            if key not in cls.options:
                raise ModuleError(f"module {cls.name}: no option {key!r} (options: {', '.join(cls.options) or 'none'})")
            config[key] = cls.options[key].parse(cls.name, key, value.strip())
        chain.append((cls, config))
    names = [cls.name for cls, _ in chain]
    for name in names:
        if names.count(name) > 1:
            raise ModuleError(f"module {name} is in the chain twice: its counters, events and state go by its "
                              f"name (give one module all it needs, or name a copy differently)")
    return chain
