"""SubinterpreterPoolExecutor: a concurrent.futures.Executor on own-GIL subinterpreters."""

import itertools
import threading
import time
from concurrent.futures import Executor, Future, InvalidStateError

from . import _engine

__all__ = ["SubinterpreterPoolExecutor"]


class _Future(Future):
    """A concurrent.futures.Future whose cancel() pulls its task off the queue.

    cancel() succeeds exactly when the task was still queued (it is then
    removed and never runs); once a worker has it, cancel() returns False,
    as for the stdlib executors.  (``running()`` stays False while it
    runs: workers do not report starts, which would cost every task.)
    """

    __slots__ = ()

    def cancel(self):
        engine, job, futures = self._pp_task
        with self._condition:
            if self._state != "PENDING":
                return super().cancel()
        if not engine.cancel(job, 0):
            return False  # a worker has it (or its result is on the way)
        futures.pop(job, None)
        cancel_unrun(self)
        return True


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


class _Sink:
    def __init__(self):
        self.futures = {}
        self.broken_error = None

    def deliver(self, job, index, ok, value):
        future = self.futures.pop(job, None)
        if future is None:
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

    def broken(self, error):
        if self.broken_error is None:
            self.broken_error = error


class SubinterpreterPoolExecutor(Executor):
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

    def __init__(self, max_workers=None, initializer=None, initargs=(), *,
                 dispatch="queue"):
        _engine.refuse_in_worker()
        _engine.check_dispatch(dispatch)
        if max_workers is None:
            max_workers = _engine.usable_cpus()
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers
        self._sink = _Sink()
        self._jobs = itertools.count(1)
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._runner = _engine.Runner(
            max_workers, dispatch, None, initializer, initargs, self._sink,
            name=f"SubinterpreterPoolExecutor-{id(self):x}",
        )
        self._finalizer = _engine.register_finalizer(self, self._runner, "drain")
        self._engine = self._runner.engine
        self._engine_submit = self._engine.submit
        self._futures = self._sink.futures

    def _submit(self, kind, func, args):
        future = _Future()
        try:
            func_pickle, flag = _engine.function_pickle(func)
            args_pickle = _engine.dumps(args)
        except Exception as exc:
            func_pickle, pickling_error = None, exc
        with self._shutdown_lock:
            if self._sink.broken_error is not None:
                raise _engine.broken_again(self._sink.broken_error)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if func_pickle is None:
                # As ProcessPoolExecutor: the future carries the error.
                future.set_exception(pickling_error)
                return future
            job = next(self._jobs)
            future._pp_task = (self._engine, job, self._futures)
            self._futures[job] = future
            self._engine_submit(job, 0, kind | flag, func_pickle, args_pickle)
        return future

    def submit(self, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)``; returns a Future."""
        return self._submit(_engine.TASK_CALL, fn, (args, kwargs or None))

    submit.__doc__ = Executor.submit.__doc__

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Like ``map(fn, *iterables)``, computed by the workers.

        Items are sent ``chunksize`` at a time (one task per chunk);
        results are yielded in order.  ``timeout`` (seconds, for the
        whole iteration, from this call) raises TimeoutError when
        exceeded; the remaining chunks are then cancelled.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        args = zip(*iterables)
        futures = []
        while chunk := list(itertools.islice(args, chunksize)):
            futures.append(self._submit(_engine.TASK_STARMAP, fn, chunk))

        def results():
            try:
                futures.reverse()
                while futures:
                    future = futures.pop()
                    if end_time is None:
                        yield from future.result()
                    else:
                        yield from future.result(end_time - time.monotonic())
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No more submissions; optionally cancel queued futures; optionally wait."""
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            # Only what never reached a worker, as ThreadPoolExecutor does.
            for job, _index in self._runner.discard_queued():
                future = self._sink.futures.pop(job, None)
                if future is not None:
                    cancel_unrun(future)  # already off the queue
        self._runner.close()
        if wait:
            self._runner.join()

    shutdown.__doc__ = Executor.shutdown.__doc__
