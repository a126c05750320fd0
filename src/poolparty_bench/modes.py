"""The ways the suite runs a workload: one pool runner per mode.

This module runs inside the cell process, on whatever interpreter the cell
uses, including a free-threaded one.  So it imports only the standard
library at module level; each mode imports its pool library (poolparty,
loky, ...) when it opens a pool, and nowhere else.

A runner opens its pool in its constructor, maps with chunksize=1 so every
task travels on its own, and waits for all its workers in close().  The
cell times construction, map and close together, as the original study did.
"""

import sys

# The order here is the order of bars in the charts and rows in the table.
DEFAULT_BUILD_MODES = (
    "sequential",
    "interp",
    "interp2",
    "thread",
    "futures",
    "subprocess",
    "process-futures",
    "interp-executor",
    "interp-futures",
    "loky",
)
FREE_THREADED_MODES = ("nogil-sequential", "nogil-thread", "nogil-futures")
# What a run without --mode runs.
DEFAULT_RUN_MODES = DEFAULT_BUILD_MODES + FREE_THREADED_MODES
# Default-build modes that run only when named with --mode: measures of
# one API's cost rather than rows of the study.
# The API paths, each on our pool and on the stdlib's threads (ThreadPool,
# ThreadPoolExecutor): the overhead workload puts each pair side by side
# (results.format_api_table).  (label, our mode, the threads' mode).
API_PAIRS = (
    ("Pool.map", "interp", "thread"),
    ("Pool.apply_async", "interp-apply_async", "thread-apply_async"),
    ("Pool.apply_async, callbacks", "interp-apply_async-cb",
     "thread-apply_async-cb"),
    ("Pool.apply", "interp-apply", "thread-apply"),
    ("Pool.imap", "interp-imap", "thread-imap"),
    ("Pool.imap_unordered", "interp-imap_unordered", "thread-imap_unordered"),
    ("Pool.starmap_async", "interp-starmap_async", "thread-starmap_async"),
    ("Executor.submit", "interp-submit", "futures-submit"),
    ("Executor.map", "interp-executor", "futures"),
)
# `--mode api`: every mode of API_PAIRS.
API_MODES = tuple(mode for _label, ours, threads in API_PAIRS
                  for mode in (ours, threads))
# How the Pool-kind API modes call the pool (see PoolApiRunner).
_POOL_APIS = ("apply_async", "apply_async-cb", "apply", "imap",
              "imap_unordered", "starmap_async")
EXTRA_MODES = ("interp-submit",) + tuple(
    mode for mode in API_MODES
    if mode not in DEFAULT_RUN_MODES and mode != "interp-submit")
ALL_MODES = DEFAULT_RUN_MODES + EXTRA_MODES

# Modes that run poolparty (probed before a run: it may fail to import).
POOLPARTY_MODES = ("interp", "interp2", "interp-executor") + tuple(
    mode for mode in EXTRA_MODES if mode.startswith("interp-"))

# Modes that ignore --workers: they run once, with one worker.
SEQUENTIAL_MODES = ("sequential", "nogil-sequential")

# Executors that start their workers only when the first task comes.
LAZY_MODES = ("futures", "process-futures", "interp-futures", "loky",
              "nogil-futures", "futures-submit")

DESCRIPTIONS = {
    "sequential": "plain map() in the main thread",
    "interp": 'poolparty.SubinterpreterPool(dispatch="queue").map',
    "interp2": 'poolparty.SubinterpreterPool(dispatch="call").map',
    "thread": "multiprocessing.pool.ThreadPool.map",
    "futures": "concurrent.futures.ThreadPoolExecutor.map",
    "subprocess": 'multiprocessing.get_context("spawn").Pool.map',
    "process-futures": "concurrent.futures.ProcessPoolExecutor (spawn)",
    "interp-executor": "poolparty.SubinterpreterPoolExecutor.map",
    "interp-submit": ("poolparty.SubinterpreterPoolExecutor: submit() per task, "
                      "then result() of each"),
    "interp-futures": "concurrent.futures.InterpreterPoolExecutor (3.14+)",
    "loky": "loky.get_reusable_executor().map",
    "futures-submit": ("concurrent.futures.ThreadPoolExecutor: submit() per "
                       "task, then result() of each"),
    "nogil-sequential": "sequential, on a free-threaded build",
    "nogil-thread": "thread, on a free-threaded build",
    "nogil-futures": "futures, on a free-threaded build",
}


for _api in _POOL_APIS:
    _call = _api.replace("-cb", "(callback=, error_callback=)")
    DESCRIPTIONS[f"interp-{_api}"] = (
        f"poolparty.SubinterpreterPool.{_call} per task (overhead's API "
        "table)")
    DESCRIPTIONS[f"thread-{_api}"] = (
        f"multiprocessing.pool.ThreadPool.{_call} per task (overhead's API "
        "table)")


def is_free_threaded():
    """Return True when this interpreter was built with --disable-gil."""
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


class SequentialRunner:
    """No pool at all: map() in the calling thread."""

    def __init__(self, workers):
        self.pool = None

    def map(self, fn, items):
        return list(map(fn, items))

    def close(self):
        pass


class PoolRunner:
    """Any multiprocessing.pool.Pool look-alike: Pool, ThreadPool, ours."""

    def __init__(self, pool):
        self.pool = pool

    def map(self, fn, items):
        return self.pool.map(fn, items, chunksize=1)

    def close(self):
        # close() + join() rather than terminate(): the time to let every
        # worker finish and exit belongs to the pool's cost.
        self.pool.close()
        self.pool.join()


class ExecutorRunner:
    """Any concurrent.futures.Executor."""

    def __init__(self, executor, chunked=False):
        self.pool = executor
        self._chunked = chunked

    def map(self, fn, items):
        if self._chunked:
            return list(self.pool.map(fn, items, chunksize=1))
        return list(self.pool.map(fn, items))

    def close(self):
        self.pool.shutdown(wait=True)


class PoolApiRunner(PoolRunner):
    """One Pool API other than map, called as a user with many small tasks
    would: per task for apply/apply_async, over the whole input for the
    others (chunksize=1, as every mode here)."""

    def __init__(self, pool, api):
        super().__init__(pool)
        self._api = api

    def map(self, fn, items):
        pool, api = self.pool, self._api
        if api == "apply_async":
            pending = [pool.apply_async(fn, (item,)) for item in items]
            return [result.get() for result in pending]
        if api == "apply_async-cb":
            seen, errors = [], []
            pending = [pool.apply_async(fn, (item,), callback=seen.append,
                                        error_callback=errors.append)
                       for item in items]
            out = [result.get() for result in pending]
            # A result is ready only after its callback ran.
            if len(seen) != len(items) or errors:
                raise RuntimeError(f"{len(seen)} callbacks and "
                                   f"{len(errors)} error callbacks ran for "
                                   f"{len(items)} tasks")
            return out
        if api == "apply":
            return [pool.apply(fn, (item,)) for item in items]
        if api == "imap":
            return list(pool.imap(fn, items, chunksize=1))
        if api == "imap_unordered":
            return sorted(pool.imap_unordered(fn, items, chunksize=1))
        if api == "starmap_async":
            return pool.starmap_async(fn, [(item,) for item in items],
                                      chunksize=1).get()
        raise ValueError(f"unknown Pool API {api!r}")


def _open_interp_api(workers, api):
    import poolparty

    return PoolApiRunner(poolparty.SubinterpreterPool(workers), api)


def _open_thread_api(workers, api):
    from multiprocessing.pool import ThreadPool

    return PoolApiRunner(ThreadPool(workers), api)


def _open_futures_submit(workers):
    from concurrent.futures import ThreadPoolExecutor

    return SubmitRunner(ThreadPoolExecutor(max_workers=workers))


def _open_interp(workers, dispatch):
    import poolparty

    return PoolRunner(poolparty.SubinterpreterPool(workers, dispatch=dispatch))


class SubmitRunner(ExecutorRunner):
    """One submit() per task, then each future's result(), in order."""

    def map(self, fn, items):
        futures = [self.pool.submit(fn, item) for item in items]
        return [future.result() for future in futures]


def _open_interp_executor(workers):
    import poolparty

    return ExecutorRunner(poolparty.SubinterpreterPoolExecutor(workers))


def _open_interp_submit(workers):
    import poolparty

    return SubmitRunner(poolparty.SubinterpreterPoolExecutor(workers))


def _open_thread(workers):
    from multiprocessing.pool import ThreadPool

    return PoolRunner(ThreadPool(workers))


def _open_futures(workers):
    from concurrent.futures import ThreadPoolExecutor

    return ExecutorRunner(ThreadPoolExecutor(max_workers=workers))


def _open_subprocess(workers):
    import multiprocessing

    return PoolRunner(multiprocessing.get_context("spawn").Pool(workers))


def _open_process_futures(workers):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")
    return ExecutorRunner(
        ProcessPoolExecutor(max_workers=workers, mp_context=spawn),
        chunked=True,
    )


def _open_interp_futures(workers):
    executor_type = _interpreter_pool_executor()
    if executor_type is None:
        raise RuntimeError(interp_futures_unavailable())
    return ExecutorRunner(executor_type(max_workers=workers))


def _open_loky(workers):
    import loky

    return ExecutorRunner(
        loky.get_reusable_executor(max_workers=workers), chunked=True
    )


_OPENERS = {
    "sequential": SequentialRunner,
    "interp": lambda workers: _open_interp(workers, "queue"),
    "interp2": lambda workers: _open_interp(workers, "call"),
    "thread": _open_thread,
    "futures": _open_futures,
    "subprocess": _open_subprocess,
    "process-futures": _open_process_futures,
    "interp-executor": _open_interp_executor,
    "interp-submit": _open_interp_submit,
    "interp-futures": _open_interp_futures,
    "loky": _open_loky,
    "futures-submit": _open_futures_submit,
    "nogil-sequential": SequentialRunner,
    "nogil-thread": _open_thread,
    "nogil-futures": _open_futures,
}


for _api in _POOL_APIS:
    _OPENERS[f"interp-{_api}"] = (
        lambda workers, api=_api: _open_interp_api(workers, api))
    _OPENERS[f"thread-{_api}"] = (
        lambda workers, api=_api: _open_thread_api(workers, api))


def open_runner(mode, workers):
    """Open the pool of MODE with WORKERS workers; the caller closes it."""
    if mode not in _OPENERS:
        raise ValueError(f"unknown mode {mode!r}")
    if mode.startswith("nogil-") and not is_free_threaded():
        raise RuntimeError(f"{mode} needs a free-threaded (nogil) Python")
    return _OPENERS[mode](workers)


def _interpreter_pool_executor():
    """Return an InterpreterPoolExecutor class, or None when none exists.

    CPython >= 3.14 has it in concurrent.futures.  On 3.13 the PyPI package
    interpreters-pep-734 (the PEP 734 author's backport) provides the same
    executor; it needs the _interpreters module, which 3.12 lacks.
    (backports-interpreters 0.3.0 ships only concurrent.interpreters.)
    """
    import concurrent.futures

    found = getattr(concurrent.futures, "InterpreterPoolExecutor", None)
    if found is not None:
        return found
    try:
        from interpreters_backport.concurrent.futures.interpreter import (
            InterpreterPoolExecutor,
        )
    except ImportError:
        return None
    return InterpreterPoolExecutor


def interp_futures_unavailable():
    """Say why interp-futures cannot run on this Python."""
    version = ".".join(map(str, sys.version_info[:2]))
    if sys.version_info < (3, 13):
        backport = (
            "its backport (PyPI interpreters-pep-734) needs the _interpreters "
            "module, which CPython 3.12 does not have, and "
            "backports-interpreters (0.3.0) provides only "
            "concurrent.interpreters, not the executor"
        )
    else:
        backport = ("install its backport from PyPI: "
                    "pip install interpreters-pep-734")
    return (
        "concurrent.futures.InterpreterPoolExecutor is new in Python 3.14 "
        f"and this is {version}; {backport}"
    )


def unavailable_reason(mode):
    """Return why MODE cannot run on this interpreter, or None if it can.

    Imports the mode's library, which is why the driver calls this in a
    throw-away process: an extension that crashes on import takes only the
    probe down.
    """
    free_threaded = is_free_threaded()
    if mode.startswith("nogil-"):
        if not free_threaded:
            return "needs a free-threaded (nogil) Python"
        return None
    if free_threaded:
        return "runs only on a default (GIL) build"
    try:
        if mode in POOLPARTY_MODES:
            import poolparty

            if not hasattr(poolparty, "SubinterpreterPool"):
                return "poolparty has no SubinterpreterPool"
        elif mode == "loky":
            import loky  # noqa: F401
        elif mode == "interp-futures":
            if _interpreter_pool_executor() is None:
                return interp_futures_unavailable()
    except Exception as exc:  # any import failure means "cannot run here"
        return f"import failed: {type(exc).__name__}: {exc}"
    return None
