"""What the kernel lets one process hold: descriptors and memory mappings (the record store and
the readers of a chain share them); and how often Python's collector runs in flowsift's own
processes."""
import gc
import os
import resource

# Python collects its youngest generation every 700 container allocations. Reading a
# connection makes dozens of short-lived ones (records, events, per-flow state), so at 700 the
# collector walked the same live objects hundreds of times a run: 10% of the http module's
# time on a large capture. Cycles are rare on these paths, so their memory waiting longer for
# the collector costs little.
GC_YOUNG = 10_000


def collect_less():
    """The collector's thresholds for flowsift's processes (the command, its workers)."""
    gc.set_threshold(GC_YOUNG, 10, 10)


def descriptor_limit(want=65536, raise_it=True):
    """The soft RLIMIT_NOFILE; with `raise_it`, first raised towards `want` (within the hard
    limit) if lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if raise_it and soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return want if soft == resource.RLIM_INFINITY else soft


# Descriptors kept aside, beyond those a process holds when it sizes its record-file budgets,
# for what it opens later: the capture, the store's manifest, a worker's pipes, a registry's
# sockets. 256 where the limit allows; a quarter of a limit below 1024, so that a small limit
# (ulimit -n 64) still leaves record files most of it.
SPARE_DESCRIPTORS = 256


def open_descriptors():
    """How many descriptors this process holds now."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1         # (less the one listing them)
    except OSError:
        return 32


def spare_descriptors(soft):
    return min(SPARE_DESCRIPTORS, soft // 4)


def free_descriptors(raise_it=True):
    """(soft limit, descriptors record files may take): the descriptor limit (raised first, with
    `raise_it`; see descriptor_limit), less those held now and the spare."""
    soft = descriptor_limit(raise_it=raise_it)
    return soft, soft - open_descriptors() - spare_descriptors(soft)


def max_map_count():
    """vm.max_map_count: how many mappings a process may have."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530
