"""Task functions executed by pool workers in the poolparty test suite.

Workers are isolated subinterpreters (or, under POOLPARTY_TEST_REFERENCE=1,
spawned processes), so this module imports only light, subinterpreter-safe
standard-library modules at module level.  Every function here is importable
by its qualified name so that it pickles by reference.

Blocking helpers (``wait_for_file``, ``signal_and_wait``, ``rendezvous``) wait
for a file system event with a bounded deadline, so a failing test never
leaves a worker blocked forever.
"""

import os
import sys
import time

# Per-interpreter state: every worker has its own copy of this module.
_counter = 0
_init_value = None

DEFAULT_WAIT = 30.0
_POLL = 0.005


# --- plain computations -----------------------------------------------------

def square(x):
    return x * x


def ramp(start, n):
    """A list of n distinct ints from start: a large result."""
    return list(range(start, start + n))


def spin(n):
    """n turns of a Python loop: CPU time, and a small result."""
    total = 0
    for i in range(n):
        total += i
    return total


def floats_of(seed):
    """4,096 distinct floats (32 KB encoded): a mid-sized result."""
    return [seed + i / 4096 for i in range(4096)]


def ramp_of(pair):
    return ramp(*pair)


def add(a, b=0):
    return a + b


def mul(a, b):
    return a * b


def identity(x):
    return x


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def increment(x):
    return x + 1


# --- per-worker state -------------------------------------------------------

def worker_token(_=None):
    """Identify the worker: its process and its interpreter's module table."""
    return (os.getpid(), id(sys.modules))


def bump(_=None):
    """Increment this interpreter's module-global counter and return it."""
    global _counter
    _counter += 1
    return _counter


def bump_token(_=None):
    return (worker_token(), bump())


def get_counter(_=None):
    return _counter


def getpid(_=None):
    return os.getpid()


def modules_id(_=None):
    return id(sys.modules)


def sys_path(_=None):
    return list(sys.path)


def getcwd(_=None):
    return os.getcwd()


def import_module(name):
    __import__(name)
    return name


# --- initializers -----------------------------------------------------------

def set_init_value(value):
    global _init_value
    _init_value = value


def get_init_value(_=None):
    return _init_value


def failing_initializer(message):
    raise RuntimeError(message)


# --- exceptions -------------------------------------------------------------

class CustomError(Exception):
    """A picklable user-defined exception."""


class UnpicklableAttrError(Exception):
    """An exception carrying an attribute that cannot be pickled."""

    def __init__(self, message):
        super().__init__(message)
        self.payload = (i for i in range(3))  # generators cannot be pickled


def raise_value_error(*args):
    raise ValueError(*args)


def raise_custom(message, code):
    raise CustomError(message, code)


def raise_local_class(message):
    class LocalOnlyError(Exception):
        pass

    raise LocalOnlyError(message)


def raise_unpicklable_attr(message):
    raise UnpicklableAttrError(message)


def fail_on(x, bad):
    if x == bad:
        raise ValueError("bad item", x)
    return x * x


def fail_on_item(x):
    """Square x, but raise ValueError for 13."""
    return fail_on(x, 13)


def return_unpicklable(_=None):
    return (i for i in range(3))


def return_unpicklable_if(x, bad):
    if x == bad:
        return (i for i in range(3))
    return x


# --- blocking helpers (bounded, timing-free) --------------------------------

def touch(path):
    with open(path, "w"):
        pass
    return path


def touch_all(paths):
    return [touch(path) for path in paths]


def _wait_exists(paths, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if all(os.path.exists(p) for p in paths):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)


def wait_for_file(path, timeout=DEFAULT_WAIT):
    """Block until ``path`` exists (or the deadline passes); report which."""
    return _wait_exists([path], timeout)


def signal_and_wait(started, release, value, timeout=DEFAULT_WAIT):
    """Create ``started``, then block until ``release`` exists; return value."""
    touch(started)
    if not _wait_exists([release], timeout):
        raise TimeoutError("release file never appeared: %s" % release)
    return value


def step(spec):
    """One of four steps, for ordering tests: ``("wait", path)`` blocks
    until path exists and returns "waited", ``("touch", path)`` creates it
    and returns "touched", ``("raise", message)`` raises ValueError,
    ``("value", v)`` returns v."""
    what, arg = spec
    if what == "raise":
        raise ValueError(arg)
    if what == "wait":
        if not wait_for_file(arg):
            raise TimeoutError("file never appeared: %s" % arg)
        return "waited"
    if what == "touch":
        touch(arg)
        return "touched"
    return arg


def rendezvous(directory, me, count, timeout=DEFAULT_WAIT):
    """Announce arrival ``me`` and wait until all ``count`` parties arrived.

    Returns (me, everyone_arrived, worker_token()).  ``everyone_arrived`` can
    only be True if ``count`` tasks were running at the same time.
    """
    touch(os.path.join(directory, "arrived-%d" % me))
    others = [os.path.join(directory, "arrived-%d" % i) for i in range(count)]
    return (me, _wait_exists(others, timeout), worker_token())


def thread_priority(directory, me, count):
    """After rendezvous(): whether everyone arrived, this thread's native
    id and its nice value (on Linux, os.getpriority(PRIO_PROCESS, 0) is
    the calling thread's own)."""
    import threading

    arrived = rendezvous(directory, me, count)[1]
    return arrived, threading.get_native_id(), os.getpriority(
        os.PRIO_PROCESS, 0)


def record_and_return(directory, value):
    """Leave evidence that this task ran, then return value."""
    touch(os.path.join(directory, "ran-%r" % (value,)))
    return value


def sleep_then_return(seconds, value):
    time.sleep(seconds)
    return value


def wait_then_touch(started, marker, timeout=20.0):
    """Create ``started``, wait ``timeout`` seconds for a file that never
    appears (polling, so the task stays interruptible between bytecodes),
    then create ``marker``.  ``marker`` only exists if the task ran to its
    end."""
    touch(started)
    _wait_exists([marker + ".never"], timeout)
    touch(marker)
    return True


# --- what `site` gave a worker (test_worker_site.py) -------------------------

SITE_BUILTINS = ("exit", "quit", "help", "copyright", "credits", "license")


def site_summary():
    """What site.main() leaves behind, in this interpreter."""
    import builtins

    return {
        "builtins": [name for name in SITE_BUILTINS if hasattr(builtins, name)],
        "site imported": "site" in sys.modules,
        "no_site flag": sys.flags.no_site,
        "sys.path": list(sys.path),
        "pth ran": getattr(sys, "pp_test_pth_ran", False),
        "sitecustomize ran": getattr(sys, "pp_test_sitecustomize_ran", False),
    }


def check_site_summary(expected):
    """Initializer: refuse to start unless site left what ``expected`` says."""
    found = site_summary()
    if found != expected:
        raise AssertionError(f"site in this worker: {found!r}, expected {expected!r}")


def as_set(x):
    """{x}: a result the codec leaves to pickle."""
    return {x}


# The texts of the FailsWhenUnpickled results this process tried to
# unpickle: a worker only pickles them.
UNPICKLED_HERE = []


def _rebuild_failing(text):
    UNPICKLED_HERE.append(text)
    raise ValueError(text)


class FailsWhenUnpickled:
    """Unpickling it records its text in UNPICKLED_HERE and raises
    ValueError."""

    def __init__(self, text):
        self.text = text

    def __reduce__(self):
        return (_rebuild_failing, (self.text,))


def return_fails_when_unpickled(text):
    return FailsWhenUnpickled(text)
