"""The main interpreter's side of a native engine.

Shared by SubinterpreterPool and SubinterpreterPoolExecutor: what a
worker starts with, the thread that collects completions, and shutdown
(explicit, at garbage collection, or at interpreter exit).

Threads here: the caller's threads submit (pickling in the caller, then
one C call); one *collector* thread per pool waits in C with the GIL
released and hands completions to the pool's sink; with
``dispatch="call"`` one main-interpreter thread per worker runs the C
loop ``Engine.serve_calls``.  All are daemon threads, so a forgotten
pool never blocks interpreter exit; the finalizer below stops them
first.
"""

import atexit
import importlib
import os
import pickle
import sys
import threading
import time
import traceback
import types
import weakref

from . import _byvalue
from . import _poolparty as _core
from . import _worker

# Not imported here: multiprocessing, which a pool's start imports only
# once its workers are booting (after_start), so that the two overlap;
# nor ._errors (concurrent.futures and logging, 3 ms), which only a
# failure needs: the functions below import it where they use it.

DESIGNS = {"queue": _core.PP_DESIGN_QUEUE, "call": _core.PP_DESIGN_CALL}

DONE_OK = _core.PP_DONE_OK
DONE_DECODED = _core.PP_DONE_DECODED  # collect() decoded it: payload is the value
DONE_UNDECODABLE = _core.PP_DONE_UNDECODABLE  # decoding raised: payload is that
# a chunk in parts whose rest could not be sent: (the parts' results, payload)
DONE_UNPICKLABLE_PARTS = _core.PP_DONE_UNPICKLABLE_PARTS
INIT_FAILED = _core.PP_DONE_INIT_FAILED
MAIN_IMPORT = _core.PP_DONE_MAIN_IMPORT
TASK_CALL = _core.PP_TASK_CALL
TASK_MAP = _core.PP_TASK_MAP
TASK_STARMAP = _core.PP_TASK_STARMAP
REUSE_FUNC = _core.PP_TASK_REUSE_FUNC
FUNC_BY_NAME = _core.PP_TASK_FUNC_BY_NAME

# How often a waiting join() wakes to let Ctrl-C through; the C wait
# itself cannot see signals.
_JOIN_SLICE_S = 0.1
# How long the collector waits before it tries again after collect()
# failed once more (out of memory still): not a hot loop.
_COLLECT_RETRY_S = 0.05
# How long the collector waits for completions in one collect() call:
# for ever, but on free-threaded builds (3.13t) in slices.  There an
# object made on one thread and let go by another is freed only when its
# maker next runs Python code, which merges what other threads handed
# back (biased reference counting), or by a garbage collection: every
# result is made on the collector, so without the slices a result the
# caller dropped lived on for as long as its pool stayed idle (seen:
# all 12 of an Executor.map's results, 0.3 s after they were dropped).
_COLLECT_SLICE_S = 0.1 if _core.FREE_THREADED else None

# How long join() waits, after terminate(), for workers to end before it
# abandons those still running: a task blocked inside C (time.sleep, a
# lock, a socket read) cannot be interrupted there, and waiting for it
# would hold terminate() for as long as it blocks.  Tasks running Python
# code end within a switch interval of terminate().
ABANDON_AFTER_S = 0.5


def usable_cpus():
    """CPUs this process may run on (what multiprocessing.Pool defaults to)."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return count() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# How far pool worker threads lower their scheduling priority (nice)
# when the workers and the collector thread are more threads than the
# CPUs: the collector, the serial part, then runs whenever it has work
# (docs/design.md, "The collector first").  POOLPARTY_WORKER_NICE
# overrides it; 0 turns it off.
WORKER_NICE = 0
WORKER_NICE_ENV = "POOLPARTY_WORKER_NICE"


def worker_nice(nworkers):
    """The nice increment for the worker threads of a pool of nworkers."""
    value = os.environ.get(WORKER_NICE_ENV)
    nice = WORKER_NICE
    if value is not None:
        try:
            nice = int(value)
        except ValueError:
            nice = -1
        if not 0 <= nice <= 19:
            raise ValueError(
                f"{WORKER_NICE_ENV} must be a whole number from 0 (workers "
                f"keep the caller's priority) to 19, not {value!r}")
    return nice if nworkers + 1 > usable_cpus() else 0


# The collector first, by parking workers (docs/design.md, "The
# collector first"): on by default, where the workers and the collector
# thread are more threads than the CPUs.  POOLPARTY_GATE=0 turns it off.
GATE_ENV = "POOLPARTY_GATE"


def gate_cpus():
    """The cores a new pool's gate counts on; 0 turns the gate off."""
    value = os.environ.get(GATE_ENV)
    if value is None or value == "1":
        return usable_cpus()
    if value == "0":
        return 0
    raise ValueError(
        f"{GATE_ENV} must be 1 (workers park while the collector is behind "
        f"on their results: the default) or 0 (they never park), "
        f"not {value!r}")


def check_dispatch(dispatch):
    if dispatch not in DESIGNS:
        raise ValueError(
            f"dispatch must be 'queue' (workers loop inside their "
            f"subinterpreters) or 'call' (a main-interpreter thread calls "
            f"into each subinterpreter per task), not {dispatch!r}"
        )
    return DESIGNS[dispatch]


def refuse_in_worker():
    """Called before every pool or Interpreter is made (main interpreter)."""
    if _worker.IN_WORKER:
        raise RuntimeError(_worker._REFUSAL)
    _ready_shared_static_types()
    _watch_forks()


def after_start():
    """Called once a pool's engine exists and its workers are booting.

    What a first pool in a process still has to import goes here, after
    its workers began creating their interpreters, not before: each worker
    spends milliseconds there (about 6.5 ms a creation, one after another,
    then its boot and its first task's imports) during which this thread
    would otherwise wait, and the imports -- multiprocessing's, and
    multiprocessing.pool's for SubinterpreterPool's results (pool.py) --
    are 10-20 ms of a first pool's start (docs/design.md, "Starting a
    worker").
    """
    global _forkserver_pending
    if _forkserver_pending:
        _forkserver_pending = False
        _default_to_forkserver()


# Open poolparty.Interpreter objects (pools are in _unjoined, below).
live_interpreters = weakref.WeakSet()
_forks_watched = False
# multiprocessing's default start method is still to be made 'forkserver'
# (by after_start).
_forkserver_pending = False


def _watch_forks():
    """Make forking safe to ask for: once, at the first pool or Interpreter.

    CPython 3.12-3.15 crash or hang the child of os.fork() while any
    subinterpreter is alive (src/module/fork_guard.c).  So process pools
    that the program makes with multiprocessing's defaults start their
    workers with 'forkserver' instead of 'fork' (3.14's default on
    Linux), and an os.fork() child exits at once with a message.
    docs/reliability.md ("fork") says why this design.
    """
    global _forks_watched, _forkserver_pending
    if _forks_watched or not hasattr(os, "register_at_fork"):
        return
    _forks_watched = True
    _forkserver_pending = True  # done by after_start
    os.register_at_fork(before=_before_fork, after_in_parent=_core.fork_guard_disarm)


def _default_to_forkserver():
    """multiprocessing's default start method 'fork' becomes 'forkserver'.

    Only the default changes, and only while the program has not chosen:
    the program can still call set_start_method() later, and an explicit
    'fork' (set_start_method or get_context) stays 'fork'.  The forkserver
    is started by fork+exec, so it never holds a subinterpreter.
    """
    import multiprocessing.context as mp_context

    default = mp_context._default_context
    inner = getattr(default, "_default_context", None)  # what None means
    if (
        default.get_start_method(allow_none=True) is None
        and getattr(inner, "_name", None) == "fork"
        and "forkserver" in default.get_all_start_methods()
    ):
        default._default_context = default.get_context("forkserver")


def _before_fork():
    """os.register_at_fork "before" hook: warn, and arm the fork guard.

    The warning points at the first caller outside multiprocessing and
    concurrent.futures, so a process pool that forks is blamed where the
    program made it.
    """
    pools, interpreters = len(_unjoined), len(live_interpreters)
    if pools or interpreters:
        import warnings

        code = _core.FORK_CHILD_EXIT
        callers = _fork_callers()
        forker = sys._getframe(1).f_code.co_filename
        if not forker.startswith(callers[0]):
            what = "the child process exits at once"
        else:
            what = (
                f"multiprocessing's 'fork' start method, chosen by this "
                f"program, starts workers that exit at once (Process "
                f"exitcode {code}; ProcessPoolExecutor raises "
                f"BrokenProcessPool; multiprocessing.Pool replaces them for "
                f"ever and its results never arrive)"
            )
        warnings.warn(
            f"os.fork() with {pools} poolparty pool(s) and {interpreters} "
            f"Interpreter(s) alive: {what}, with status {code} and a message "
            f"on stderr, since CPython crashes or hangs a child forked while "
            f"subinterpreters exist (python/cpython#101437).  Use "
            f"multiprocessing's default or 'forkserver' start method "
            f"(multiprocessing.get_context('forkserver')) or 'spawn', or "
            f"close and join pools before forking (subprocess is fine).",
            RuntimeWarning,
            skip_file_prefixes=callers,
        )
    _core.fork_guard_arm()


def _fork_callers():
    """Where multiprocessing and concurrent.futures live, in that order."""
    import concurrent.futures
    import multiprocessing

    return tuple(
        os.path.dirname(module.__file__) + os.sep
        for module in (multiprocessing, concurrent.futures)
    )


def _ready_shared_static_types():
    """Have this (the main) interpreter import ``_datetime`` first.

    On 3.13 ``_datetime`` is the one extension whose types are static,
    shared by every interpreter, and readied by whichever imports it first.
    When that is a subinterpreter, the types' shared tuples live in its
    allocator and are freed when it ends; subinterpreters importing it at
    the same time race on the same fields (python/cpython#136421, #136423).
    Both crash the process ("free(): invalid pointer", seen here on 3.13.0
    with four threads churning subinterpreters that import ``datetime``).
    Readied once by the main interpreter, they are never torn down early.
    3.12 refuses ``_datetime`` in subinterpreters, so nothing to do there.
    """
    if sys.version_info >= (3, 13) and "_datetime" not in sys.modules:
        try:
            import _datetime  # noqa: F401
        except ImportError:  # pragma: no cover - a build without it
            pass


def sys_path_blob():
    """sys.path as NUL-terminated file-system-encoded entries."""
    return b"".join(
        os.fsencode(entry) + b"\0" for entry in sys.path if isinstance(entry, str)
    )


def _main_info():
    """Where workers find the parent's ``__main__`` (like spawn does)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    modname = getattr(spec, "name", None)
    if modname is not None:
        # `python -m pkg` runs pkg.__main__, which has no business
        # running again in a worker (pytest, pip, ...): spawn skips it too.
        if modname == "__main__" or modname.endswith(".__main__"):
            return None, None
        return None, modname
    path = getattr(main, "__file__", None)
    if path is None or not os.path.exists(path):
        return None, None  # interactive or -c: nothing to run
    if os.path.basename(os.path.dirname(path)) == "_pyrepl":
        # 3.13.5's REPL leaves its own _pyrepl/__main__.py as
        # __main__.__file__ (3.13.0's sets none): still interactive.
        return None, None
    return os.path.abspath(path), None


def boot_payload(initializer, initargs):
    """What poolparty._worker.bootstrap gets in each worker, as codec data.

    The codec, not pickle: a worker then starts without importing the
    pickler.  Raises (in the caller, before any worker starts) if the
    initializer or its arguments cannot be pickled.
    """
    init = None
    if initializer is not None:
        if not callable(initializer):
            raise TypeError("initializer must be a callable")
        init = _byvalue.dumps((initializer, tuple(initargs)))
    path, modname = _main_info()
    # The path as bytes: the file name's own bytes, whatever the
    # worker's file-system encoding makes of them.
    path = None if path is None else os.fsencode(path)
    return _core.encode((path, modname, init))


# Functions pickled by reference (module-level functions, module-level
# builtins, classes) always pickle to the same bytes: the core keeps them
# (_core.remember_function), since pickling a function by name costs more
# than a small task's arguments, and the executor's C submit path reads
# them there.


def _by_reference(func):
    if isinstance(func, (types.FunctionType, type)):
        return True
    return _module_builtin(func)


def _module_builtin(func):
    # A builtin bound to an object ([].append) pickles that object by value.
    return isinstance(func, types.BuiltinFunctionType) and isinstance(
        getattr(func, "__self__", None), types.ModuleType)


def _name_reference(func):
    """``b"module\\0qualname"`` for a function that pickles by reference, or None.

    The worker resolves it as unpickling would (import, then attributes),
    without importing the pickler.  Only plain functions and module
    builtins, whose pickle is exactly that name; only when the name leads
    back to ``func`` here, which pickle.dumps has just checked too.
    (Classes keep their pickle: a metaclass may change how they pickle.)
    """
    if not (isinstance(func, types.FunctionType) or _module_builtin(func)):
        return None
    qualname = getattr(func, "__qualname__", None) or func.__name__
    module_name = pickle.whichmodule(func, qualname)
    found = sys.modules.get(module_name)
    try:
        for part in qualname.split("."):
            found = getattr(found, part)
    except AttributeError:
        return None
    if found is not func:
        return None
    return (module_name + "\0" + qualname).encode("utf-8", "surrogatepass")


def function_pickle(func):
    """``(data, flags)`` for a task's function; may raise what pickling raises.

    For a function pickled by reference the flags include REUSE_FUNC,
    telling the worker that it may keep the object for the next task with
    the same data, and, for plain functions and builtins, FUNC_BY_NAME:
    the data is then just the name (see _name_reference).  Functions and
    classes that pickle cannot send by name (lambdas, closures, a
    notebook's) travel by value, pickled once (see _byvalue).  Other
    callables pickled by value (partials, callables with state) are
    unpickled afresh for every task, as multiprocessing does.
    """
    known = _core.function_ref(func)
    if known is not None:
        return known
    try:
        data = pickle.dumps(func, 5)
    except _byvalue.REFUSED:
        data = None
    if data is None or _byvalue.needs_value(data):
        # A lambda, a closure, a notebook's function: by value, once.
        data, flags = _byvalue.function_data(func)
        if not flags:
            return data, 0
    elif not _by_reference(func):
        return data, 0
    else:
        flags = REUSE_FUNC
        name = _name_reference(func)
        if name is not None:
            data, flags = name, REUSE_FUNC | FUNC_BY_NAME
    _core.remember_function(func, data, flags)
    return data, flags


_CODEC_MAGIC = b"\xb5pp2"

if sys.version_info < (3, 13):
    # CPython 3.12 builds a C function's keyword parser on the function's
    # first call with keywords, in whichever interpreter makes it, and
    # frees it with the main interpreter: built in a worker (whose memory
    # is its own), that aborts the process at exit ("free(): invalid
    # pointer").  The workers pass pickle's buffer_callback= and buffers=
    # by keyword (out-of-band buffers): have the main interpreter build
    # those parsers first.
    pickle.loads(pickle.dumps(None, 5, buffer_callback=None), buffers=())


# The pickle fallback of the codec (the C core calls it for chunks):
# pickle, or cloudpickle for what pickle cannot send by name.
pickle_dumps = _byvalue.dumps


def dumps(obj):
    """Bytes for ``obj``: the core's codec for plain data, else pickle;
    or, when pickle gave out-of-band buffers (protocol 5's PickleBuffers),
    a ``(pickle, buffers)`` pair that the core carries side by side."""
    data = _core.encode(obj)
    if data is not None:
        return data
    buffers = []
    data = _byvalue.dumps(obj, buffers)
    return (data, buffers) if buffers else data


def decode(kind, payload):
    """``(ok, value)`` for a completion's kind and payload.

    Whatever unpickling raises -- even SystemExit from a hostile
    ``__reduce__`` -- fails this one task instead of the collector.
    """
    if kind == DONE_DECODED:
        return True, payload
    if kind == DONE_UNDECODABLE:
        return False, payload
    if kind == DONE_OK:
        try:
            if payload[:4] == _CODEC_MAGIC:
                return True, _core.decode(payload)
            return True, pickle.loads(payload)
        except BaseException as exc:
            return False, exc
    from ._errors import decode_error

    if kind == DONE_UNPICKLABLE_PARTS:
        sent, payload = payload
        error = decode_error(payload)
        # The repr of the whole chunk's results, as one message gave it.
        # A worker that could not even encode the MaybeEncodingError (out
        # of memory) sent the C core's plain text, a RemoteError here with
        # no `value`: it goes as it is (joining would raise, and kill the
        # collector thread with every later result waiting for it).
        if isinstance(getattr(error, "value", None), str):
            error.value = _worker.joined_repr(sent, error.value)
            error.args = (error.exc, error.value)
        return False, error
    return False, decode_error(payload)


def report_callback_error(what, exc=None):
    """Print an exception raised by a user callback, and carry on.

    A callback that raises must not kill the collector thread (every
    later result would hang) nor leave its own result unfinished.
    ``exc`` is the exception, when it is not the one being handled (the
    pool's C results pass it).
    """
    print(f"Exception in poolparty {what}:", file=sys.stderr)
    if exc is None:
        traceback.print_exc()
    else:
        traceback.print_exception(exc)


class Runner:
    """One engine, its collector thread and (call design) worker threads.

    ``sink`` receives results: ``sink.deliver(job, index, ok, value)``
    for every completion and ``sink.broken(exc)`` once if a worker fails
    to start.  It must not hold a reference to the pool object, so that
    an unreferenced pool can be collected and stopped.
    """

    def __init__(self, nworkers, dispatch, maxtasks, initializer, initargs,
                 sink, name):
        design = check_dispatch(dispatch)
        payload = boot_payload(initializer, initargs)
        self.sink = sink
        # Serialises delivery: the collector and terminate() both finish
        # results, and result objects are not thread-safe on their own.
        # Re-entrant: a callback run by the collector (or a pool's
        # finalizer, when the collector drops the last reference) may call
        # terminate(), which takes it again on the same thread.
        self.lock = threading.RLock()
        self.engine = _core.Engine(
            design, nworkers, maxtasks or 0, sys_path_blob(), payload,
            nice=worker_nice(nworkers), cpus=gate_cpus(),
        )
        _unjoined.add(self)
        # Set by terminate(): from then on a task that ends in SystemExit
        # was (most likely) interrupted by us, and must not exit the caller.
        self.terminating = False
        self._terminated_at = None
        self._abandoned = ()  # ids of the workers join() stopped waiting for
        self._threads = []
        if design == _core.PP_DESIGN_CALL:
            for worker in range(nworkers):
                thread = threading.Thread(
                    target=self.engine.serve_calls,
                    args=(worker,),
                    name=f"{name}-worker-{worker}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        self._collector = threading.Thread(
            target=_collect,
            args=(self,),
            name=f"{name}-collector",
            daemon=True,
        )
        self._collector.start()

    def submit(self, job, index, kind, func_pickle, args_pickle):
        self.engine.submit(job, index, kind, func_pickle, args_pickle)

    def close(self):
        self.engine.close()

    def terminate(self, reason):
        """Drop queued tasks (each fails with ``reason()``), interrupt running ones.

        Interrupted tasks fail with ``reason()`` too, their SystemExit as
        its ``__cause__``.
        """
        self.reason = reason
        self.terminating = True
        if self._terminated_at is None:
            self._terminated_at = time.monotonic()
        dropped = self.engine.terminate()
        with self.lock:
            for job, index in dropped:
                self.sink.deliver(job, index, False, reason())

    def discard_queued(self, after_start=False):
        """Drop queued tasks, keeping running ones and the workers.

        Returns the dropped ``(job, index)`` pairs; their results will
        never arrive, so the caller must finish them.  ``after_start``
        first lets each worker still starting take a task, as a stdlib
        executor's thread takes one when it starts.
        """
        return self.engine.discard_queued(after_start)

    def join(self):
        """Wait for every worker and the collector; Ctrl-C gets through.

        The caller has seen the pool closed or terminated; another thread
        may still be on its way to telling the engine, which refuses to
        be joined while running, so wait for that first.  After
        terminate(), workers still running ABANDON_AFTER_S later are
        abandoned (see _abandon).
        """
        while True:
            try:
                if self.engine.join(_JOIN_SLICE_S):
                    break
            except ValueError:
                if self.engine.state != _core.PP_ENGINE_RUNNING:
                    raise
                time.sleep(0.005)
                continue
            started = self._terminated_at
            if started is not None and time.monotonic() - started >= ABANDON_AFTER_S:
                self._abandon()
        _unjoined.discard(self)
        for worker, thread in enumerate(self._threads):
            if worker not in self._abandoned:
                thread.join()
        if self._collector is not threading.current_thread():
            # It ends once it has delivered every completion the workers
            # pushed (abandoned workers' later ones are dropped).
            self._collector.join()

    def _abandon(self):
        """Stop waiting for workers whose tasks are blocked in C.

        We cannot kill a thread, as multiprocessing kills a process; but
        the pool can stop counting on it.  Each such worker ends on its
        own when its call returns (the SystemExit terminate() set fires
        there), ending its interpreter as usual; meanwhile its task's
        result fails now with the terminate reason, and interpreter exit
        waits for it (see _wait_for_abandoned).
        """
        tasks, workers = self.engine.abandon()
        self._abandoned = frozenset(workers) | set(self._abandoned)
        with self.lock:
            for job, index in tasks:
                error = self.reason()
                error.add_note(
                    f"its worker was still running it {ABANDON_AFTER_S} s "
                    f"after terminate() (blocked in C code?) and was abandoned")
                self.sink.deliver(job, index, False, error)


def _collect(runner):
    """The collector thread: completions from C to the sink."""
    engine, sink, lock = runner.engine, runner.sink, runner.lock
    broken = False
    collect_failed = False
    while True:
        # Futures and pool results bound to the engine
        # (Engine.bind_futures) with successful results are finished inside
        # collect() and not in the batch.
        try:
            batch = engine.collect(_COLLECT_SLICE_S)
        except BaseException as exc:  # MemoryError, say
            # Ending this thread would leave every pending result waiting
            # for ever.  The batch stays in the Engine for the next call.
            if not collect_failed:
                collect_failed = True
                _break(runner, "taking the workers' results failed", exc,
                       "create a new pool")
            else:
                time.sleep(_COLLECT_RETRY_S)
            continue
        if batch is None:
            return  # every worker exited and everything was delivered
        with lock:
            for job, index, kind, worker_id, payload in batch:
                if kind == MAIN_IMPORT:
                    _import_for_worker(engine, worker_id, payload)
                    continue
                if kind == INIT_FAILED:
                    if not broken:
                        from ._errors import decode_error

                        broken = True
                        _break(runner, "a worker failed to start",
                               decode_error(payload),
                               "fix the initializer and create a new pool")
                    continue
                try:
                    ok, value = decode(kind, payload)
                except BaseException as exc:
                    # decode() promises not to raise; should a bug of
                    # ours break that, this one task fails, instead of
                    # the collector thread and every result after it.
                    ok, value = False, exc
                if not ok and runner.terminating and isinstance(value, SystemExit):
                    interrupted = runner.reason()
                    if interrupted.__cause__ is None:  # else it names why
                        interrupted.__cause__ = value
                    ok, value = False, interrupted
                try:
                    sink.deliver(job, index, ok, value)
                except BaseException:
                    # A callback (Future done-callbacks let BaseException
                    # through) must not kill the collector: every later
                    # result would hang.
                    report_callback_error("result delivery")
        # Keep nothing of this batch while waiting for the next: the last
        # result would otherwise stay alive after its caller dropped it
        # (a large one is memory the caller cannot get back).
        batch = payload = value = None


def _import_for_worker(engine, worker_id, payload):
    """Import a module in the main interpreter before a worker does.

    See _MainImportsFirst in _worker.py: on CPython 3.12 this keeps the
    process from crashing at exit.  Whether the import works here does
    not matter; the worker then imports (or is refused) on its own.  A
    module already in sys.modules is not imported again -- it may be one
    the main thread is importing right now, whose lock we must not wait
    for while that thread waits for this pool.
    """
    name = payload.decode("utf-8")
    try:
        if name not in sys.modules:
            importlib.import_module(name)
    except BaseException:
        pass
    finally:
        engine.answer_import(worker_id)


def _break(runner, what, cause, fix):
    """Stop the pool rather than hang it, because of ``what`` (``cause``).

    Every queued and running task fails with BrokenInterpreterPool (its
    ``__cause__`` the cause), and so does every later call; results that
    were already done are still delivered, as the collector carries on.
    (multiprocessing restarts a worker that fails to start forever, and
    its callers hang.)
    """
    from ._errors import BrokenInterpreterPool

    error = BrokenInterpreterPool(
        f"{what}, so the pool stopped: {type(cause).__name__}: {cause} "
        f"(that exception is the __cause__; {fix})"
    )
    error.__cause__ = cause
    with runner.lock:
        runner.sink.broken(error)
    runner.terminate(lambda: broken_again(error))


def broken_again(error):
    """A fresh copy of a pool's BrokenInterpreterPool, to raise once more."""
    again = type(error)(*error.args)
    again.__cause__ = error.__cause__
    return again


def register_finalizer(owner, runner, on_exit):
    """Stop ``runner`` when ``owner`` is garbage collected or at exit.

    ``on_exit`` is ``"terminate"`` (multiprocessing.Pool's behaviour) or
    ``"drain"`` (concurrent.futures': let queued work finish).
    """
    finalizer = weakref.finalize(owner, _stop, runner, on_exit)
    # At exit our own hook runs these (see _stop_all_at_exit), so that it
    # knows it is exit time; weakref's would not say.
    finalizer.atexit = False
    _finalizers[:] = [f for f in _finalizers if f.alive]
    _finalizers.append(finalizer)
    return finalizer


_finalizers = []
_exiting = False


def exiting():
    """True once the interpreter's exit has begun stopping pools."""
    return _exiting
# Runners whose workers may still hold subinterpreters.  A finalizer that
# another thread is running right now (a pool collected by the collector
# thread's garbage collection, say) is already dead for detach(), yet its
# workers are still ending their interpreters: exit must wait for those
# too, or CPython finalizes with subinterpreters alive and aborts
# ("PyInterpreterState_Delete: remaining subinterpreters", seen here about
# once in a hundred exits of a script that dropped a busy pool).
_unjoined = set()


@atexit.register
def _stop_all_at_exit():
    global _exiting
    _exiting = True
    for finalizer in reversed(_finalizers):
        # Not finalizer(): weakref's own exit hook, which runs first, has
        # switched calling finalizers off by now.  detach() still hands
        # back the callback of a pool that is alive.
        detached = finalizer.detach()
        if detached is not None:
            _owner, func, args, _kwargs = detached
            func(*args)
    for runner in list(_unjoined):
        # Being stopped by another thread, or closed and not yet joined:
        # wait for its workers (join also waits out a terminate() that is
        # on its way).
        _stop(runner, None)
    _wait_for_abandoned()


def _wait_for_abandoned():
    """At exit: wait for the workers terminate() abandoned, saying so.

    Each still runs a task blocked in C inside its subinterpreter, and
    CPython cannot finalize under a running subinterpreter (3.12 aborts,
    3.13 ends the thread mid-task).  So exit waits for their calls to
    return; Ctrl-C ends the process at once instead, as an unhandled
    KeyboardInterrupt does (SIGINT), without finalizing.
    """
    try:
        left = _core.abandoned_workers()
        if not left:
            return
        print(
            f"poolparty: waiting for {left} worker(s) that terminate() "
            f"abandoned while their tasks were blocked in C code (CPython "
            f"cannot exit while a subinterpreter runs); press Ctrl-C to exit "
            f"without waiting",
            file=sys.stderr, flush=True,
        )
        while _core.abandoned_workers(_JOIN_SLICE_S):
            pass
    except KeyboardInterrupt:
        import signal

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def _stop(runner, on_exit):
    from ._errors import TerminatedError

    def reason():
        return TerminatedError("the pool was terminated before this task finished")

    if on_exit == "terminate":
        runner.terminate(reason)
    elif on_exit == "drain":
        runner.close()
    while True:
        try:
            runner.join()
            return
        except KeyboardInterrupt:
            if not _exiting:
                raise
            # Ctrl-C while the interpreter waits at exit: leaving now would
            # let CPython finalize under a running subinterpreter, which
            # crashes it.  Interrupt the tasks instead, and keep waiting.
            runner.terminate(reason)
