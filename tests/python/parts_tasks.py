"""Tasks for test_pool_parts.py: each spends a given CPU time before it
returns, so that a worker sends its chunk's results ahead in parts (it
does after 2 ms of CPU, interp.c's PART_NS)."""

import os
import threading
import time

SHARED = ["one object", "in every result"]


def _spin(ms):
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


def spin(i, ms=3):
    _spin(ms)
    return [i, f"item {i}", i * 0.5, list(range(i, i + 50))]


def spin_star(i, ms):
    return spin(i, ms)


def spin_unless(i, bad, how, ms=3):
    """spin(i, ms), but item `bad` raises, or returns what cannot be
    sent (`how`)."""
    if i != bad:
        if how == "unpicklable, small":
            _spin(ms)
            return i
        return spin(i, ms)
    if how == "raise":
        raise ValueError(f"item {i} failed")
    if how in ("unpicklable", "unpicklable, small"):
        return threading.Lock()
    if how == "pickled":
        return {i, "a set: pickle's"}
    raise AssertionError(how)


def spin_unless_star(args):
    return spin_unless(*args)


def spin_shared(i, ms=3):
    _spin(ms)
    return [SHARED, SHARED, i]


def spin_or_wait(i, last, release, ms=3):
    """spin(i, ms); item `last` first waits for the file `release`."""
    if i == last:
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)
    return spin(i, ms)


def noop(x):
    return x
