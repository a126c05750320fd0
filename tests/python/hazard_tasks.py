"""Tasks for test_cpython_hazards.py (kept apart from tasks.py on purpose:
they poke at what isolated subinterpreters refuse)."""

import os
import signal
import sys
import threading


def import_module(name):
    __import__(name)
    return name


def start_daemon_thread(_=None):
    thread = threading.Thread(target=lambda: None, daemon=True)
    thread.start()
    thread.join()
    return "started"


def start_thread(_=None):
    box = []
    thread = threading.Thread(target=box.append, args=(42,))
    thread.start()
    thread.join()
    return box


def fork(_=None):
    pid = os.fork()
    if pid == 0:  # pragma: no cover - must never happen in a worker
        os._exit(0)
    os.waitpid(pid, 0)
    return "forked"


def set_signal_handler(_=None):
    signal.signal(signal.SIGUSR1, lambda *a: None)
    return "set"


def version(_=None):
    return sys.version_info[:2]


def spin(seconds):
    """Hold this interpreter's GIL, busy, for `seconds`."""
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def use_extension_inside_worker(_=None):
    """Import poolparty's C extension inside the worker's interpreter."""
    from poolparty import _poolparty

    return [name for name in ("Engine", "Interpreter", "GilSampler")
            if hasattr(_poolparty, name)]


def create_nested_pool(_=None):
    from poolparty import SubinterpreterPool

    SubinterpreterPool(1)
    return "created"
