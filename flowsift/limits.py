"""What the kernel lets one process hold: descriptors and memory mappings (the record store and
the readers of a chain share them); and how often Python's collector runs in flowsift's own
processes."""
import gc
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


def max_map_count():
    """vm.max_map_count: how many mappings a process may have."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530
