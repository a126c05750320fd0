"""SubinterpreterPool: multiprocessing.pool.Pool's API on own-GIL subinterpreters."""

import itertools
import threading
import warnings

from . import _engine
from . import _poolparty as _core
from ._base import PoolBase, SinkBase, chunk_count

__all__ = ["SubinterpreterPool"]

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"


# The results SubinterpreterPool hands out: subclasses of
# multiprocessing.pool's ApplyResult, MapResult, IMapIterator and
# IMapUnorderedIterator made in C (src/module/result_type.c), finished
# in C by the collector thread, which also runs their callbacks there.
# A callback that raises (even SystemExit: it runs on the collector) is
# printed by report_callback_error and cannot hang its result.
# Constructors: _ApplyResult(cache, job, callback, error_callback),
# _MapResult(cache, job, chunksize, length, callback, error_callback),
# _IMap/_IMapUnordered(cache, job, chunks=None); each registers itself
# as cache[job] and leaves it when complete.
#
# They are made at the first pool's start, once its workers are booting,
# not when this module is imported: multiprocessing.pool's import is the
# largest part of a first pool's start, and the workers' creation of
# their interpreters overlaps it so (see _engine.after_start).
_RESULT_NAMES = ("_ApplyResult", "_MapResult", "_IMap", "_IMapUnordered")
_result_types = None
_result_types_lock = threading.Lock()


def _load_result_types():
    """The four result classes, made on the first call (any thread)."""
    global _result_types
    with _result_types_lock:
        if _result_types is None:
            from multiprocessing import TimeoutError
            from multiprocessing.pool import (
                ApplyResult,
                IMapIterator,
                IMapUnorderedIterator,
                MapResult,
            )

            _result_types = _core.result_types(
                ApplyResult, MapResult, IMapIterator, IMapUnorderedIterator,
                TimeoutError, _engine.report_callback_error,
            )
    return _result_types


def __getattr__(name):
    """``_ApplyResult`` and co. as module attributes (made when first asked)."""
    if name in _RESULT_NAMES:
        return _load_result_types()[_RESULT_NAMES.index(name)]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Sink(SinkBase):
    """Hands completions to the pool's result objects.

    Holds the job cache, not the pool: see _engine.Runner.  The cache is
    the engine's bound dict (Engine.bind_futures), so that its collect()
    finishes plain results of these objects itself.
    """

    def __init__(self):
        super().__init__()
        self.cache = None  # set once the runner made the engine

    def deliver(self, job, index, ok, value):
        result = self.cache.get(job)
        if result is not None:
            result._set(index, (ok, value))


class SubinterpreterPool(PoolBase):
    """A pool of workers that are subinterpreters with their own GIL.

    A drop-in for :class:`multiprocessing.pool.Pool`: the same methods,
    arguments, results and errors, with workers that live in this
    process.  Functions, arguments and results travel pickled, as with
    multiprocessing; functions defined in your ``__main__`` script work
    as with the spawn start method (the worker runs the script as
    ``__mp_main__`` when it first needs it).

    ``processes`` defaults to the CPUs this process may use.
    ``maxtasksperchild`` replaces a worker's interpreter after that many
    tasks (chunks).  ``dispatch`` selects the design: ``"queue"`` (native
    worker threads loop inside their subinterpreters; the default) or
    ``"call"`` (a main-interpreter thread per worker calls into its
    subinterpreter once per task).

    If the initializer raises, the pool breaks instead of hanging: every
    pending and later call raises :class:`BrokenInterpreterPool` with the
    initializer's exception as ``__cause__``.  Leaving the ``with`` block
    calls :meth:`terminate`, like multiprocessing.
    """

    _name = "SubinterpreterPool"

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, *, dispatch="queue"):
        self._dispatch = dispatch
        self._state = _RUN
        self._state_lock = threading.Lock()
        self._feeders = 0  # imap feeder threads still submitting
        sink = _Sink()
        self._processes = self._start(
            processes, initializer, initargs, maxtasksperchild, dispatch,
            sink, "terminate", "Number of processes must be at least 1",
        )
        # {job: result}, as multiprocessing's Pool._cache
        (self._ApplyResult, self._MapResult, self._IMap,
         self._IMapUnordered) = _load_result_types()
        sink.cache = self._cache = self._engine.bind_futures(owner=sink)
        # Job ids from the engine, which also numbers submit_apply's.
        self._next_job = self._engine.new_job
        self._submit_apply = self._engine.submit_apply

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # apply_async makes _check_running's tests inline; a subclass may
        # override it, as multiprocessing's Pool allows (its apply_async,
        # map_async, starmap_async, imap, imap_unordered and __enter__
        # call it), and then gets it called.  Decided once per class.
        cls._check_inline = (
            cls._check_running is SubinterpreterPool._check_running)

    # -- submitting ----------------------------------------------------

    _check_inline = True

    def _check_running(self):
        self._raise_if_broken()
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _submit(self, result, index, kind, func, args):
        """Pickle one task in the caller's thread and queue it.

        ``args`` is ``(args, kwargs)`` for a call, the list of items for a
        map chunk.  A pickling error fails that task's result, as
        multiprocessing does, so map() and get() raise it in the caller.
        """
        func_pickle, flags, args_pickle, error = self._pickle_task(func, args)
        if error is not None:
            self._fail(result._job, index, error)
            return
        try:
            self._engine.submit(result._job, index, kind | flags, func_pickle,
                                args_pickle)
        except ValueError:
            self._fail(result._job, index, self._refused_error())

    def _stopped_error(self):
        from ._errors import TerminatedError

        return TerminatedError("the pool stopped before this task was queued")

    def apply(self, func, args=(), kwds={}):
        """Call ``func(*args, **kwds)`` in a worker and wait for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None,
                    error_callback=None):
        """Asynchronous :meth:`apply`; returns an AsyncResult."""
        # _check_running's tests, inline: two Python calls less per task
        # on the path of many small ones (unless a subclass overrode it).
        if (self._state != _RUN or self._sink.broken_error is not None
                or not self._check_inline):
            self._check_running()
        if type(args) is tuple and type(kwds) is dict:
            # One C call when func's reference is known and the arguments
            # are plain data; else (and for every error) the Python path.
            result = self._submit_apply(func, args, kwds, callback,
                                        error_callback)
            if result is not None:
                return result
        result = self._ApplyResult(self._cache, self._next_job(), callback,
                              error_callback)
        self._submit(result, 0, _engine.TASK_CALL, func,
                     (tuple(args), dict(kwds) or None))
        return result

    def map(self, func, iterable, chunksize=None):
        """``list(map(func, iterable))``, computed by the workers in chunks."""
        return self._map_async(func, iterable, _engine.TASK_MAP, chunksize).get()

    def starmap(self, func, iterable, chunksize=None):
        """Like :meth:`map`, but each item is unpacked: ``func(*item)``."""
        return self._map_async(
            func, iterable, _engine.TASK_STARMAP, chunksize
        ).get()

    def map_async(self, func, iterable, chunksize=None, callback=None,
                  error_callback=None):
        """Asynchronous :meth:`map`; returns a MapResult."""
        return self._map_async(func, iterable, _engine.TASK_MAP, chunksize,
                               callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None):
        """Asynchronous :meth:`starmap`; returns a MapResult."""
        return self._map_async(func, iterable, _engine.TASK_STARMAP,
                               chunksize, callback, error_callback)

    def _map_async(self, func, iterable, kind, chunksize=None, callback=None,
                   error_callback=None):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            chunksize = chunk_count(len(iterable), self._processes * 4)
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        if len(iterable) == 0:
            chunksize = 0
        result = self._MapResult(self._cache, self._next_job(), chunksize,
                            len(iterable), callback, error_callback)
        if chunksize:
            self._submit_map(result._job, kind, func, iterable, chunksize)
        return result

    def imap(self, func, iterable, chunksize=1):
        """Like :meth:`map`, but lazily: returns an iterator of results in order.

        A list, tuple or range is queued at once, as map() does; any
        other iterable is consumed by a background thread, as in
        multiprocessing, so a slow or endless iterable does not block.
        """
        return self._imap(self._IMap, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        """Like :meth:`imap`, but results come in completion order."""
        return self._imap(self._IMapUnordered, func, iterable, chunksize)

    def _imap(self, iterator_class, func, iterable, chunksize):
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        if type(iterable) in _SEQUENCES:
            # Already in memory: no feeder thread, and one call into the
            # core for every chunk (a range is made a list there).
            chunks = chunk_count(len(iterable), chunksize)
            result = iterator_class(self._cache, self._next_job(), chunks)
            if chunks:
                self._submit_map(result._job, _engine.TASK_MAP, func,
                                 iterable, chunksize)
            return result
        result = iterator_class(self._cache, self._next_job())
        with self._state_lock:
            self._feeders += 1
        thread = threading.Thread(
            target=self._feed, args=(result, func, iterable, chunksize),
            name=f"SubinterpreterPool-{id(self):x}-feeder", daemon=True,
        )
        thread.start()
        return result

    def _feed(self, result, func, iterable, chunksize):
        """Feeder thread: submit an imap's items as they come."""
        index = 0
        try:
            items = iter(iterable)
            while True:
                if self._state == _TERMINATE:
                    # Say where the results stop, rather than end the
                    # iteration short as if the input had ended there.
                    self._fail(result._job, index, self._refused_error())
                    index += 1
                    break
                try:
                    # Always a chunk (a list), also of one: the iterator
                    # yields the items of each chunk's list of results.
                    chunk = list(itertools.islice(items, chunksize))
                    if not chunk:
                        break
                except Exception as exc:
                    # The iterable itself raised: that position fails,
                    # and the iteration ends there (as multiprocessing).
                    self._fail(result._job, index, exc)
                    index += 1
                    break
                self._submit(result, index, _engine.TASK_MAP, func, chunk)
                index += 1
        finally:
            with self._runner.lock:
                result._set_length(index)
            self._feeder_done()

    def _feeder_done(self):
        with self._state_lock:
            self._feeders -= 1
            close_now = self._feeders == 0 and self._state == _CLOSE
        if close_now:
            self._runner.close()

    # -- lifecycle -----------------------------------------------------

    def close(self):
        """No more tasks; workers exit once the queued ones are done."""
        with self._state_lock:
            if self._state != _RUN:
                return
            self._state = _CLOSE
            close_now = self._feeders == 0
        if close_now:
            self._runner.close()

    def terminate(self):
        """Stop now: queued tasks fail with TerminatedError, running ones
        are interrupted (SystemExit at their next bytecode boundary), and
        the workers are joined."""
        with self._state_lock:
            self._state = _TERMINATE
        self._finalizer()

    def join(self):
        """Wait for the workers to exit; call close() or terminate() first."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        self._runner.join()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.terminate()

    def __del__(self, _warn=warnings.warn, RUN=_RUN):
        # As multiprocessing.Pool since 3.8: a running pool dropped without
        # close()/terminate() is a resource leak the user should hear of
        # (the finalizer still stops it).  The defaults keep working while
        # the interpreter tears modules down.
        # (A pool whose arguments were refused never started: no warning.)
        if (getattr(self, "_state", None) == RUN
                and getattr(self, "_runner", None) is not None):
            _warn(f"unclosed running multiprocessing pool {self!r}",
                  ResourceWarning, source=self)

    def __repr__(self):
        return (f"<{type(self).__qualname__} state={self._state} "
                f"pool_size={self._processes} dispatch={self._dispatch!r}>")

    def __reduce__(self):
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled"
        )


# imap() inputs queued at once: already in memory (or, for range, cheap to
# make so), and with a length.
_SEQUENCES = (list, tuple, range)
