"""The registry interface both backends implement.

Who calls what:
- the gateway: `start_run`, `sync` (once per batch: new connections and the latest record of
  each changed one out; module progress, to record in the record files, and module bits in),
  `set_state`, `heartbeat`, `end_run`;
- a module: `register` (a bit of the global bitmap, the same one again after a restart),
  `module_state` (what it finished before), `commit` (a connection finished, with its counter
  increments and how far its output file is written, atomically), `connections`, `wait`
  (a wake-up), `release`.
"""
import os
import secrets
import socket

MAX_MODULES = 64             # bits of the global (and per-record) module bitmap


class RegistryError(Exception):
    """The registry cannot be used (unreachable, refused, misconfigured): one line for the user."""


def new_run_id():
    return secrets.token_hex(4)


def whoami():
    return {"host": socket.gethostname(), "pid": os.getpid()}


def identity_text(ident, path, vlan=None):
    """One connection's identity as the registry keeps it: 'tcp 10.0.0.1:1234 10.0.0.2:80 c00000001.rec';
    with connections keyed by VLAN (`vlan`: its ids, outer first), 'tcp 10.0.0.1:1234 10.0.0.2:80
    vlan=100.10 c00000001.rec' ('vlan=-' untagged)."""
    from flowsift.streams.format import endpoint, vlan_text
    proto, ipver, caddr, cport, saddr, sport = ident
    name = {6: "tcp", 17: "udp"}.get(proto, str(proto))
    tag = "" if vlan is None else f" vlan={vlan_text(vlan)}"
    return f"{name} {endpoint(caddr, cport, ipver)} {endpoint(saddr, sport, ipver)}{tag} {os.path.basename(path)}"


class Registry:
    run = None
    kind = "abstract"
    announces = False           # the gateway sends identities and latest records (a remote registry)

    # --- gateway side ---
    def start_run(self, meta):
        raise NotImplementedError

    def set_state(self, state, **extra):
        raise NotImplementedError

    def sync(self, new, updates, batch=None, taken=None):
        """The gateway's call once per batch. `new`: [(conn, identity text)]; `updates`: [(conn,
        records, latest record id, closed)]; `batch`: (seq, touched, closed, [(conn, records,
        gaps, end0, end1)]) for the batch log, or None (all empty where `announces` is False:
        the record headers are the registry); `taken`: the module bits the gateway counts.
        Returns ([(bit, conn, records done)] reported since the last call, {bit: {"name": ...,
        ...}} of the modules registered or reserved, whether the run's state is intact)."""
        raise NotImplementedError

    def flush(self):
        """Record commits held back (the embedded registry with `hold`); nothing elsewhere."""

    def reserve(self, name):
        """Hold a bit for a module expected to attach later (nothing is reclaimed before it has
        read it). Returns the bit."""
        raise NotImplementedError

    def heartbeat(self):
        pass

    def beat_due(self):
        """True when a process that has written nothing for a while should sync anyway, so
        that others still take it for alive (a registry with heartbeats)."""
        return False

    def end_run(self):
        pass

    # --- module side ---
    def register(self, name, bit=None):
        """A bit for module `name`: its own bit again if it had one (a restart), else the lowest
        free one. Returns (bit, resumed)."""
        raise NotImplementedError

    def release(self, bit):
        raise NotImplementedError

    def commit(self, bit, conn, records, counters=None, outpos=None):
        raise NotImplementedError

    def close(self):
        pass
