"""Task functions for the reliability tests (test_reliability_*.py).

Like tasks.py, this module runs inside worker subinterpreters, so it
imports only light standard-library modules at module level, and every
function is importable by its qualified name (it pickles by reference).
Anything that blocks is bounded: a failing test never leaves a worker
blocked for ever.
"""

import os
import sys
import time

_POLL = 0.005


def touch(path):
    with open(path, "w"):
        pass
    return path


# --- faults raised inside a task --------------------------------------------

def call_sys_exit(code=3):
    sys.exit(code)


def raise_system_exit(message="bye"):
    raise SystemExit(message)


def raise_keyboard_interrupt(message="from a task"):
    raise KeyboardInterrupt(message)


def recurse_forever(_=None):
    def down(n):
        return down(n + 1) + 1

    return down(0)


def allocate_impossible(_=None):
    """A bytearray larger than any address space: MemoryError at once,
    without touching any memory."""
    return bytearray(1 << 60)


def raise_memory_error(message="asked for too much"):
    raise MemoryError(message)


def huge_bytes(megabytes):
    return b"\x5a" * (megabytes << 20)


def nested_list(depth):
    """A list nested ``depth`` deep: too deep to pickle for large depths."""
    value = []
    for _ in range(depth):
        value = [value]
    return value


def length(data):
    return len(data)


def fault(name, *args):
    """Run one fault by name (so one picklable function covers them all)."""
    return FAULTS[name](*args)


def fault_or_echo(args):
    """None -> None; a tuple -> fault(*tuple) (for maps mixing good items)."""
    if args is None:
        return None
    return fault(*args)


FAULTS = {
    "sys.exit": call_sys_exit,
    "SystemExit": raise_system_exit,
    "KeyboardInterrupt": raise_keyboard_interrupt,
    "RecursionError": recurse_forever,
    "MemoryError (allocation)": allocate_impossible,
    "MemoryError (raised)": raise_memory_error,
}


# --- plain work ---------------------------------------------------------------

def increment(x):
    return x + 1


def echo(x):
    return x


def pid_and_interp(_=None):
    return (os.getpid(), id(sys.modules))


# --- blocking, bounded ----------------------------------------------------------

def spin_until(started, marker, limit=30.0):
    """Create ``started``, then loop in Python (bytecode only, no sleeping)
    until ``limit`` seconds pass; then create ``marker``.  ``marker``
    exists only if the task was *not* interrupted."""
    touch(started)
    deadline = time.monotonic() + limit
    n = 0
    while time.monotonic() < deadline:
        n += 1
    touch(marker)
    return n


def sleep_in_c(started, seconds, marker):
    """Create ``started``, block in C (time.sleep) for ``seconds``, then
    create ``marker`` (which exists only if nothing interrupted the task
    once the sleep returned)."""
    touch(started)
    time.sleep(seconds)
    touch(marker)
    return seconds


def wait_for(path, limit=30.0):
    """Poll (in Python, interruptible) until ``path`` exists; True if it did."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True


def touch_then_wait(started, release, value, limit=30.0):
    touch(started)
    wait_for(release, limit)
    return value


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def maybe_fail(x):
    """Deterministic mix for the stress tests: every 7th item raises."""
    if x % 7 == 3:
        raise ValueError(x)
    return x * 2


# --- results that fight back in the main interpreter -----------------------------

def _in_worker():
    worker = sys.modules.get("poolparty._worker")
    return bool(worker is not None and worker.IN_WORKER)


def _rebuild_exit_in_main(text):
    if not _in_worker():
        raise SystemExit(text)
    return ExitsWhenUnpickledInMain()


class ExitsWhenUnpickledInMain:
    """Pickles in the worker; unpickling it in the main interpreter raises
    SystemExit (a BaseException that is not an Exception)."""

    def __reduce__(self):
        return (_rebuild_exit_in_main, ("raised while unpickling a result",))


def return_exits_when_unpickled(_=None):
    return ExitsWhenUnpickledInMain()


def read_fd_then_touch(started, fd, marker):
    """Create ``started``, block in C reading one byte from ``fd`` (a pipe
    the test controls), then create ``marker``."""
    touch(started)
    data = os.read(fd, 1)
    touch(marker)
    return data


def touch_then_wait_args(args):
    """touch_then_wait(*args), for imap's single argument."""
    return touch_then_wait(*args)


def log_run(fd, task_id):
    """Append ``task_id`` to the O_APPEND file ``fd`` (one atomic write),
    then return task_id * 2, or raise ValueError for every 5th id: the
    stress tests count from the file how often each task really ran."""
    os.write(fd, b"%d\n" % task_id)
    if task_id % 5 == 4:
        raise ValueError(task_id)
    return task_id * 2


def _rebuild_refusing():
    if _in_worker():
        raise LookupError("refused to be unpickled in a worker")
    return RefusesUnpicklingInWorker()


class RefusesUnpicklingInWorker:
    """Pickles anywhere, unpickles in the main interpreter, but raises
    LookupError when a worker unpickles it (like a function whose module
    cannot be imported in a subinterpreter).  Callable: returns its
    argument."""

    def __reduce__(self):
        return (_rebuild_refusing, ())

    def __call__(self, x):
        return x


def sleep_then_star(pair):
    return sleep_then(*pair)


# --- tasks blocked inside C (terminate() abandons their workers) ------------

def block_in_c(started, how, arg):
    """Touch ``started``, then block inside one C call until released:
    ``pipe`` reads fd ``arg`` (released by a byte written to it),
    ``socket`` receives on a duplicate of socket fd ``arg`` (released by
    data sent), ``flock`` takes an exclusive flock on path ``arg`` (released
    when its holder unlocks).  Returns what the call returned."""
    touch(started)
    if how == "pipe":
        return os.read(arg, 1)
    if how == "socket":
        import socket

        sock = socket.socket(fileno=os.dup(arg))
        try:
            return sock.recv(1)
        finally:
            sock.close()
    if how == "flock":
        import fcntl

        with open(arg, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            fcntl.flock(f, fcntl.LOCK_UN)
            return b"locked"
    raise ValueError(how)


def block_at_worker_exit(fd):
    """Make the worker's interpreter, when it ends, block reading fd
    ``fd`` in an atexit callback (code CPython runs while ending it)."""
    import atexit

    atexit.register(os.read, fd, 1)
    return fd


class Box:
    """A result that can be weakly referenced (and so watched for release)."""

    def __init__(self, value):
        self.value = value


def box(value):
    return Box(value)


def fresh_list(n):
    """A plain-data result (the codec's, finished in C for futures)."""
    return [n] * 3
