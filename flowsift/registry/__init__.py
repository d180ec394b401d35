"""The registry: connection identities, latest record IDs, module bits, progress, liveness and
wake-ups, behind one interface with two backends.

- embedded (the default): in the gateway's process; workers are woken through their pipes.
- Redis (`redis://[user:password@]host:port/db`): a real server, so that a module may run as
  its own process, attach to a running gateway, crash and come back (`flowsift module`).
"""
from flowsift.registry.base import Registry, RegistryError, new_run_id
from flowsift.registry.embedded import EmbeddedRegistry


def open_registry(url=None, run=None, role="gateway"):
    """The registry at `url` (None or "embedded": in this process)."""
    if url in (None, "", "embedded"):
        return EmbeddedRegistry(run)
    if url.startswith(("redis://", "rediss://", "unix://")):
        import re
        import urllib.parse
        shown = re.sub(r":[^:@/]*@", ":***@", url)           # a password is never printed
        expected = "expected redis://[user:password@]host:port/db"
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port                          # (the port too: redis-py would say less)
        except ValueError as e:
            raise RegistryError(f"registry {shown!r}: {e}; {expected} "
                                f"(an IPv6 host in brackets: redis://[::1]:6379/0)") from None
        # redis-py takes a database it cannot read as a number for db 0, without a word
        db = parts.path.lstrip("/") if not url.startswith("unix://") else ""
        if db and not re.fullmatch("[0-9]+", db):
            raise RegistryError(f"registry {shown!r}: the path {'/' + db!r} names the database: a number, 0 or more; "
                                f"{expected}")
        for value in urllib.parse.parse_qs(parts.query).get("db", []):
            if not re.fullmatch("[0-9]+", value):
                raise RegistryError(f"registry {shown!r}: db={value!r} names the database: a number, 0 or more; "
                                    f"{expected} (or unix:///path.sock?db=N)")
        from flowsift.registry.redis import RedisRegistry
        return RedisRegistry(url, run, role=role)
    raise RegistryError(f"registry {url!r}: expected redis://[user:password@]host:port/db "
                        f"(or rediss://, unix:///path.sock?db=N), or 'embedded'")


__all__ = ["Registry", "RegistryError", "EmbeddedRegistry", "open_registry", "new_run_id"]
