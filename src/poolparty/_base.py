"""What SubinterpreterPool and SubinterpreterPoolExecutor share.

Both are thin adapters over one engine: they differ in their result
types (multiprocessing's ApplyResult/MapResult/IMapIterator; Futures and
an ordered map holder) and in their public method names and error
messages.  Everything else is here, once:

- construction: refusing to run inside a worker, argument validation,
  the Runner (engine, collector thread) and the finalizer;
- the sink base: how a broken pool (a worker that failed to start) is
  recorded, and re-raised to later callers;
- pickling a task with its error captured, so that the caller's result
  fails instead of the call raising (as multiprocessing and
  ProcessPoolExecutor do);
- a whole map queued by one C call (Engine.submit_map), with the
  failure fan-out: chunks that could not be pickled, and chunks the
  engine refused because it stopped meanwhile;
- the chunk-count formula.

Adding a behaviour both classes should have (result objects made in C,
pickling fallbacks, terminate and ResourceWarning rules) belongs here,
in the hook it concerns, not in the two adapters.
"""

from . import _engine

__all__ = ["PoolBase", "SinkBase", "chunk_count"]


def chunk_count(items, chunksize):
    """How many chunks of at most ``chunksize`` cover ``items`` items."""
    return -(-items // chunksize)


class SinkBase:
    """Where a pool's collector delivers completions (see _engine.Runner).

    Subclasses define ``deliver(job, index, ok, value)``, which must
    fail or finish the result of task (job, index), and must hold no
    reference to the pool object.
    """

    def __init__(self):
        self.broken_error = None

    def deliver(self, job, index, ok, value):  # pragma: no cover - abstract
        raise NotImplementedError

    def broken(self, error):
        """A worker failed to start: remember the first such error."""
        if self.broken_error is None:
            self.broken_error = error


class PoolBase:
    """The engine side of a pool: construction, pickling, map submission.

    Subclasses set ``_name`` (their thread names' prefix), make their
    sink, call ``_start`` from ``__init__``, and define
    ``_stopped_error()``: the exception for a task the engine refused
    because the pool was closed or terminated under it.
    """

    _name = "poolparty"

    def _start(self, workers, initializer, initargs, maxtasks, dispatch,
               sink, on_exit, workers_error):
        """Validate the arguments, start the engine; returns ``workers``.

        ``on_exit`` is what happens when the pool is garbage collected or
        the interpreter exits ("terminate" or "drain", see
        _engine.register_finalizer); ``workers_error`` the message for a
        worker count below one.
        """
        _engine.refuse_in_worker()
        _engine.check_dispatch(dispatch)
        if workers is None:
            workers = _engine.usable_cpus()
        if workers < 1:
            raise ValueError(workers_error)
        if maxtasks is not None:
            if not isinstance(maxtasks, int) or maxtasks <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._sink = sink
        self._runner = _engine.Runner(
            workers, dispatch, maxtasks, initializer, initargs, sink,
            name=f"{self._name}-{id(self):x}",
        )
        self._finalizer = _engine.register_finalizer(self, self._runner, on_exit)
        self._engine = self._runner.engine
        _engine.after_start()
        return workers

    # -- errors --------------------------------------------------------

    def _raise_if_broken(self):
        """Raise the pool's BrokenInterpreterPool (a fresh copy) if it broke."""
        if self._sink.broken_error is not None:
            raise _engine.broken_again(self._sink.broken_error)

    def _refused_error(self):
        """The error for a task the engine refused: broken, else stopped."""
        if self._sink.broken_error is not None:
            return self._sink.broken_error
        return self._stopped_error()

    def _stopped_error(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _fail(self, job, index, error):
        """Fail task (job, index) with ``error``, as the collector would."""
        with self._runner.lock:
            self._sink.deliver(job, index, False, error)

    # -- pickling and queueing -----------------------------------------

    @staticmethod
    def _pickle_task(func, args):
        """``(func_pickle, flags, args_pickle, None)``, or ``(None, 0, None,
        error)`` when pickling raised an Exception: the caller fails the
        task's result with it, as multiprocessing does."""
        try:
            func_pickle, flags = _engine.function_pickle(func)
            return func_pickle, flags, _engine.dumps(args), None
        except Exception as exc:
            return None, 0, None, exc

    def _submit_map(self, job, kind, func, items, chunksize):
        """Queue ``items`` (a sequence) as chunks of job ``job``, in one C call.

        Chunks are cut, encoded and queued in C.  A chunk that cannot be
        pickled fails its part of the result (every chunk, when the
        function cannot be); chunks the engine refused because the pool
        stopped meanwhile fail with _refused_error().  Call it outside
        locks of the subclass: pickling the items runs their Python code.
        """
        chunks = chunk_count(len(items), chunksize)
        try:
            func_pickle, flags = _engine.function_pickle(func)
        except Exception as exc:
            failures, refused_from = [(index, exc) for index in range(chunks)], None
        else:
            failures, refused_from = self._engine.submit_map(
                job, kind | flags, func_pickle, items, chunksize,
                _engine.pickle_dumps,
            )
        if not failures and refused_from is None:
            return
        with self._runner.lock:
            failed = set()
            for index, exc in failures:
                failed.add(index)
                self._sink.deliver(job, index, False, exc)
            if refused_from is not None:
                error = self._refused_error()
                for index in range(refused_from, chunks):
                    if index not in failed:
                        self._sink.deliver(job, index, False, error)
