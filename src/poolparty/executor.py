"""SubinterpreterPoolExecutor: a concurrent.futures.Executor on own-GIL subinterpreters."""

import itertools
import threading
import time
import weakref
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError

from . import _engine
from . import _poolparty as _core
from ._base import PoolBase, SinkBase, chunk_count

__all__ = ["SubinterpreterPoolExecutor"]


# SubinterpreterPoolExecutor's futures: a concurrent.futures.Future
# subclass made in C (src/module/future_type.c), one object until
# someone waits on it.  cancel() succeeds exactly when the task was
# still queued (it is then removed and never runs, see
# _Sink.cancel_future); once a worker has it, cancel() returns False, as
# for the stdlib executors.  (running() stays False while it runs:
# workers do not report starts, which would cost every task.)
_Future = _core.future_type(Future, InvalidStateError)


def cancel_unrun(future):
    """Cancel a future whose task will never run, and tell its waiters.

    Future.cancel() alone leaves it CANCELLED, which wait() and
    as_completed() do not count as finished: the stdlib executors move it
    on to CANCELLED_AND_NOTIFIED (waking those waiters) when a worker
    dequeues it; no worker will see this one, so it is done here.
    """
    if Future.cancel(future):
        _notify_cancelled(future)


def _notify_cancelled(future):
    with future._condition:
        if future._state != "CANCELLED":
            return  # not cancelled, or its waiters were told already
    try:
        future.set_running_or_notify_cancel()
    except RuntimeError:
        pass  # another thread told them in between


class _MapFailure:
    """What a failed chunk of a map holds in _MapResults: its exception."""

    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error


class _MapResults:
    """The chunks of one Executor.map, as they complete, taken in order.

    Written by the collector thread, read by the thread iterating the
    map (a generator: one thread at a time).
    """

    __slots__ = ("_cond", "_done", "_waiting_for", "__weakref__")

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._done = {}
        self._waiting_for = None

    def put(self, index, ok, value):
        # Lock-free unless the reader waits for this very chunk: the
        # reader announces it under the lock and only then checks _done,
        # so either it sees this entry or we see its announcement.
        # A chunk's list as it is, not in an (ok, value) tuple: every
        # object held here until the reader takes it counts towards the
        # garbage collector's next young pass, which goes over every
        # large result still young.
        self._done[index] = value if ok else _MapFailure(value)
        if index == self._waiting_for:
            with self._cond:
                self._cond.notify()

    def take(self, index, timeout):
        """Chunk ``index``'s results, or a _MapFailure; TimeoutError after
        ``timeout`` s."""
        done = self._done.pop(index, None)
        if done is not None:
            return done
        with self._cond:
            if index not in self._done:
                self._waiting_for = index
                try:
                    if not self._cond.wait_for(lambda: index in self._done,
                                               timeout):
                        raise TimeoutError
                finally:
                    self._waiting_for = None
            return self._done.pop(index)


class _Sink(SinkBase):
    def __init__(self):
        super().__init__()
        # Both set once the runner made the engine.  futures: {job:
        # future} of submit()'s tasks still to finish, the engine's (see
        # Engine.bind_futures); its collect() finishes successful results of
        # these itself.
        self.futures = {}
        self.engine = None
        # The results of maps still being iterated.  Weak: a map's
        # iterator dropped unstarted never runs its finally, and its
        # results must not pile up here.
        self.maps = weakref.WeakValueDictionary()

    def deliver(self, job, index, ok, value):
        future = self.futures.pop(job, None)
        if future is None:
            results = self.maps.get(job)
            if results is not None:
                results.put(index, ok, value)
            return
        # The future is PENDING: our cancel() only succeeds by taking the
        # task off the queue, and then no result comes.  Only a direct
        # Future.cancel() call can have got in first.
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        except InvalidStateError:
            _notify_cancelled(future)

    def cancel_future(self, future, job):
        """A pending future's cancel(): take its task off the queue."""
        if not self.engine.cancel(job, 0):
            return False  # a worker has it (or its result is on the way)
        self.futures.pop(job, None)
        cancel_unrun(future)
        return True


class SubinterpreterPoolExecutor(PoolBase, Executor):
    """An Executor whose workers are subinterpreters with their own GIL.

    A drop-in for ThreadPoolExecutor / ProcessPoolExecutor code: submit()
    returns real :class:`concurrent.futures.Future` objects, so
    ``as_completed`` and ``wait`` work unchanged.  Functions, arguments
    and results travel pickled, as with ProcessPoolExecutor.

    ``max_workers`` defaults to the CPUs this process may use.
    ``dispatch`` is ``"queue"`` (default) or ``"call"``; see
    :class:`poolparty.SubinterpreterPool`.  If the initializer raises,
    the executor breaks: pending futures fail with
    :class:`poolparty.BrokenInterpreterPool` (a
    ``concurrent.futures.BrokenExecutor``) whose ``__cause__`` is the
    initializer's exception, and later submit() calls raise it.

    At interpreter exit, as with the stdlib executors, queued work is
    finished before the process ends.
    """

    _name = "SubinterpreterPoolExecutor"

    def __init__(self, max_workers=None, initializer=None, initargs=(), *,
                 dispatch="queue"):
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._max_workers = self._start(
            max_workers, initializer, initargs, None, dispatch, _Sink(),
            "drain", "max_workers must be greater than 0",
        )
        self._sink.engine = self._engine
        self._sink.futures = self._engine.bind_futures(owner=self._sink)
        self._engine_submit = self._engine.submit
        self._submit_future = self._engine.submit_future
        self._futures = self._sink.futures

    def _check_accepting(self):
        """Raise unless new work may come in.  Needs: _shutdown_lock."""
        self._raise_if_broken()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _engine.exiting():
            # Our exit hook has closed the engine (as concurrent.futures'
            # own exit hook stops its executors).
            raise RuntimeError(
                "cannot schedule new futures after interpreter shutdown")

    def _stopped_error(self):
        return RuntimeError(
            "the executor was shut down before this chunk was queued")

    def _submit(self, kind, func, args):
        """submit()'s Python path: pickling, and every error."""
        future = _Future()
        func_pickle, flags, args_pickle, error = self._pickle_task(func, args)
        with self._shutdown_lock:
            self._check_accepting()
            if error is not None:
                # As ProcessPoolExecutor: the future carries the error.
                future.set_exception(error)
                return future
            job = self._engine.new_job()
            future._pp_bind(self._sink, job)
            self._futures[job] = future
            self._engine_submit(job, 0, kind | flags, func_pickle, args_pickle)
        return future

    def submit(self, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)``; returns a Future."""
        # One C call when fn's reference is known and the arguments are
        # plain data; else (and for every error) the Python path.
        future = self._submit_future(fn, args, kwargs)
        if future is None:
            future = self._submit(_engine.TASK_CALL, fn, (args, kwargs or None))
        return future

    submit.__doc__ = Executor.submit.__doc__

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
        """Like ``map(fn, *iterables)``, computed by the workers.

        Items are sent ``chunksize`` at a time (one task per chunk), all
        queued by one call into the core; results are yielded in order.
        ``timeout`` (seconds, for the whole iteration, from this call)
        raises TimeoutError when exceeded.  When the iteration ends early
        (an exception, a timeout, or the iterator closed) the chunks not
        yet started are cancelled.

        ``buffersize`` (Python 3.14's, on every Python): at most that many
        chunks queued whose results were not yet yielded.  The first
        ``buffersize`` are queued by this call; each later one when a
        result is asked for, so the input is read lazily and may be
        endless.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        if buffersize is not None:
            return self._map_buffered(fn, iterables, chunksize, buffersize,
                                      end_time)
        if len(iterables) == 1:
            # fn(item), as Pool.map: no 1-tuple per item, which the garbage
            # collector would count (and then go over the large results).
            items, kind = list(iterables[0]), _engine.TASK_MAP
        else:
            items, kind = list(zip(*iterables)), _engine.TASK_STARMAP
        results = _MapResults()
        with self._shutdown_lock:
            self._check_accepting()
            job = self._engine.new_job()
            self._sink.maps[job] = results
        # Outside the lock: pickling the items runs their Python code.
        # Failed chunks (pickling; shutdown() or a broken pool getting in
        # since the check above) come out of the iteration as errors.
        self._submit_map(job, kind, fn, items, chunksize)
        chunks = chunk_count(len(items), chunksize)
        return self._map_results(job, results, chunks, end_time)

    def _map_buffered(self, fn, iterables, chunksize, buffersize, end_time):
        """map() with a buffersize: chunks queued one at a time, as read."""
        if len(iterables) == 1:
            args, kind = iter(iterables[0]), _engine.TASK_MAP
        else:
            args, kind = zip(*iterables), _engine.TASK_STARMAP
        results = _MapResults()
        with self._shutdown_lock:
            self._check_accepting()
            job = self._engine.new_job()
            self._sink.maps[job] = results
        feed = _ChunkFeed(job, kind, fn, args, chunksize)
        try:
            for _ in range(buffersize):
                if not feed.queue_next(self):
                    break
        except BaseException:
            self._engine.cancel_job(job)
            raise
        # As in 3.14, the iteration holds the executor only weakly: once
        # it is gone, what was queued is still yielded, and no more.
        return _buffered_results(weakref.ref(self), self._engine, self._sink,
                                 feed, results, end_time)

    def _queue_chunk(self, job, index, kind, fn, chunk):
        """Queue one chunk of a buffered map; a chunk that cannot be
        pickled fails its place in the results.  RuntimeError (or the
        pool's BrokenInterpreterPool) once the executor stopped, as
        submit() raises."""
        func_pickle, flags, args_pickle, error = self._pickle_task(fn, chunk)
        if error is not None:
            self._fail(job, index, error)
            return
        with self._shutdown_lock:
            self._check_accepting()
            self._engine_submit(job, index, kind | flags, func_pickle,
                                args_pickle)

    def _map_results(self, job, results, chunks, end_time):
        try:
            for index in range(chunks):
                if end_time is None:
                    chunk = results.take(index, None)
                else:
                    chunk = results.take(index, end_time - time.monotonic())
                if type(chunk) is _MapFailure:
                    raise chunk.error
                # Hand each result over without keeping it: once the
                # caller drops it, nothing here holds it any more.
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
        finally:
            self._engine.cancel_job(job)
            self._sink.maps.pop(job, None)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No more submissions; optionally cancel queued futures; optionally wait."""
        with self._shutdown_lock:
            self._shutdown = True
            # submit()'s C path checks only the engine: close it here, so
            # that nothing is queued once shutdown() has begun.
            self._runner.close()
        if cancel_futures:
            # Only what never reached a worker, as ThreadPoolExecutor does;
            # when waiting anyway, workers still starting take one each
            # first, as its threads do (CPython's test_cancel_futures).
            for job, index in self._runner.discard_queued(wait):
                future = self._sink.futures.pop(job, None)
                if future is not None:
                    cancel_unrun(future)  # already off the queue
                    continue
                results = self._sink.maps.get(job)
                if results is not None:  # a chunk of a map
                    results.put(index, False, CancelledError())
        self._runner.close()
        if wait:
            self._runner.join()

    shutdown.__doc__ = Executor.shutdown.__doc__


class _ChunkFeed:
    """The input of a buffered map, read one chunk at a time."""

    def __init__(self, job, kind, fn, args, chunksize):
        self.job, self.kind, self.fn = job, kind, fn
        self.args, self.chunksize = args, chunksize
        self.queued = 0  # chunks queued so far (their indices: 0..queued-1)
        self.ended = False

    def queue_next(self, executor):
        """Read and queue the next chunk; False once the input ended."""
        chunk = list(itertools.islice(self.args, self.chunksize))
        if not chunk:
            self.ended = True
            return False
        executor._queue_chunk(self.job, self.queued, self.kind, self.fn,
                              chunk)
        self.queued += 1
        return True


def _buffered_results(executor_ref, engine, sink, feed, results, end_time):
    """The iterator of a buffered map: before waiting for each chunk's
    results, queue the next chunk of input (3.14's order)."""
    index = 0
    try:
        while index < feed.queued:
            if not feed.ended:
                executor = executor_ref()
                if executor is not None:
                    feed.queue_next(executor)
                del executor
            if end_time is None:
                chunk = results.take(index, None)
            else:
                chunk = results.take(index, end_time - time.monotonic())
            index += 1
            if type(chunk) is _MapFailure:
                raise chunk.error
            yield from chunk
    finally:
        engine.cancel_job(feed.job)
        sink.maps.pop(feed.job, None)
