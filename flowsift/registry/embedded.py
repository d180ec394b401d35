"""The embedded registry: the default of `flowsift chain`, in the gateway's process, no server.

Modules of an embedded chain run inline or in worker processes the gateway started; they are
woken through their pipes, and their progress reaches the gateway's record store directly. The
store itself (in /dev/shm) is the memory the processes share: connection identities and latest
records are in the record files' headers, so nothing is copied per connection here.
"""
import time

from flowsift.registry.base import MAX_MODULES, Registry, RegistryError, new_run_id, whoami


class EmbeddedRegistry(Registry):
    kind = "embedded"

    def __init__(self, run=None, store=None):
        self.run = run or new_run_id()
        self.store = store            # progress is recorded in it at once (same process)
        self.meta = {}
        self.announced = 0            # connections announced (their identities are in the headers)
        self.bits = {}                # bit -> {"name", "alive", ...}
        self.counters = {}            # bit -> {name: n}
        self.progress = []
        self.held = []                # (conn, bit, records) commits waiting for flush()

    def bind(self, store):
        self.store = store

    def start_run(self, meta):
        self.meta = dict(meta, state="running", started=time.time(), **whoami())

    def set_state(self, state, **extra):
        self.meta.update(extra, state=state)

    def sync(self, new, updates):
        self.announced += len(new)
        progress, self.progress = self.progress, []
        return progress, {b: dict(v) for b, v in self.bits.items()}, True

    def _free_bit(self):
        for b in range(MAX_MODULES):
            if b not in self.bits:
                return b
        raise RegistryError(f"no free module bit: {MAX_MODULES} modules are registered already")

    def flush(self):
        """Record the commits held back since the last flush."""
        held, self.held = self.held, []
        for conn, bit, records in held:
            self.store.module_done(conn, bit, records)

    def reserve(self, name):
        bit = self._free_bit()
        self.bits[bit] = {"name": name, "alive": False}
        if self.store is not None:
            self.store.register_module(bit)
        return bit

    def register(self, name, bit=None):
        for b, info in self.bits.items():
            if info["name"] == name and not info["alive"] and (bit is None or b == bit):
                info["alive"] = True
                return b, True
        if bit is None or bit in self.bits:
            bit = self._free_bit()
        self.bits[bit] = {"name": name, "alive": True}
        if self.store is not None:
            self.store.register_module(bit)
        return bit, False

    def release(self, bit):
        self.bits.pop(bit, None)
        if self.store is not None:
            self.store.release_module(bit)

    hold = False                # commits wait for flush() (inline forwarding reads what they free)

    def commit(self, bit, conn, records, counters=None, outpos=None):
        if counters:
            c = self.counters.setdefault(bit, {})
            for k, v in counters.items():
                c[k] = c.get(k, 0) + v
        if self.store is not None and self.hold:
            self.held.append((conn, bit, records))
        elif self.store is not None:
            self.store.module_done(conn, bit, records)      # in process: recorded at once
        else:
            self.progress.append((bit, conn, records))
