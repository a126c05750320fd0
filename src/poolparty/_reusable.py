"""One process-wide executor, reused instead of made again (as loky's).

Every subinterpreter CPython 3.12/3.13 creates and ends keeps about
1.6 MB of the process for good (python/cpython gh-110411, gh-113055;
docs/reliability.md, "Memory"), so a service that makes a pool per
request grows without bound.  get_reusable_executor() hands out the same
warm SubinterpreterPoolExecutor until it is shut down, broken, or asked
for with other settings.

Imports nothing heavy at module level: a worker running the user's main
script may import this name (see poolparty.__getattr__).
"""

import threading

__all__ = ["get_reusable_executor"]

_lock = threading.Lock()
_current = None   # the executor handed out last
_settings = None  # (initializer, initargs, dispatch) it was made with


def _usable(executor):
    return not executor._shutdown and executor._sink.broken_error is None


def get_reusable_executor(max_workers=None, initializer=None, initargs=(), *,
                          dispatch="queue"):
    """The process-wide reusable SubinterpreterPoolExecutor.

    The same executor, its workers' interpreters already made and warm,
    is returned by every call while it is running and the arguments
    match; ``max_workers=None`` means the CPUs this process may use.  A
    call with another ``max_workers`` *resizes* it: the executor of the
    new size takes every later submission, and the previous one finishes
    what was queued on it (its futures complete as usual), then ends its
    workers.  Another initializer, initargs or dispatch replaces it the
    same way; so does calling this after it was shut down (``with``,
    ``shutdown()``) or broken by a failing initializer.

    The trade-off is isolation.  Tasks of every caller in the process run
    in the same few interpreters, one after another: whatever a task
    leaves behind -- module globals it changed, modules it imported,
    caches, monkeypatches, threads, memory its modules keep -- is there
    for every later task, from any caller; the initializer runs once per
    worker, not once per use.  A fresh SubinterpreterPoolExecutor starts
    clean but costs its interpreters' creation (about 5 ms each) and the
    ~1.6 MB each of them leaves in the process when it ends.
    """
    global _current, _settings
    from . import _engine
    from .executor import SubinterpreterPoolExecutor

    _engine.check_dispatch(dispatch)
    if max_workers is None:
        max_workers = _engine.usable_cpus()
    if max_workers < 1:
        raise ValueError("max_workers must be greater than 0")
    settings = (initializer, tuple(initargs), dispatch)
    with _lock:
        current = _current
        if (current is not None and _usable(current)
                and current._max_workers == max_workers
                and _settings == settings):
            return current
        made = SubinterpreterPoolExecutor(max_workers, initializer, initargs,
                                          dispatch=dispatch)
        _current, _settings = made, settings
    if current is not None:
        # Not waiting: its queued futures still complete, then it ends.
        current.shutdown(wait=False)
    return made
