"""What the kernel lets one process hold: descriptors and memory mappings (the record store and
the readers of a chain share them)."""
import resource


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
