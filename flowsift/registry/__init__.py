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
        try:
            urllib.parse.urlsplit(url).port      # (the port too: redis-py would say less)
        except ValueError as e:
            shown = re.sub(r":[^:@/]*@", ":***@", url)       # a password is never printed
            raise RegistryError(f"registry {shown!r}: {e}; expected redis://[user:password@]host:port/db "
                                f"(an IPv6 host in brackets: redis://[::1]:6379/0)") from None
        from flowsift.registry.redis import RedisRegistry
        return RedisRegistry(url, run, role=role)
    raise RegistryError(f"registry {url!r}: expected redis://[user:password@]host:port/db "
                        f"(or rediss://, unix:///path.sock?db=N), or 'embedded'")


__all__ = ["Registry", "RegistryError", "EmbeddedRegistry", "open_registry", "new_run_id"]
