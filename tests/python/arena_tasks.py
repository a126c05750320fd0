"""Task functions for test_arena_cache.py (importable in every worker)."""

import os
import time


def churn(mib):
    """Build about `mib` MiB of int objects (obmalloc arenas) and free
    them; return how many there were."""
    values = list(range(1000, 1000 + mib * 32768))
    count = len(values)
    del values
    return count


def sleep_then_pid(seconds):
    time.sleep(seconds)
    return os.getpid()
