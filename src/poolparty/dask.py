"""Dask workers whose tasks run on poolparty's own-GIL subinterpreters.

``distributed.Worker`` runs each task in an executor: its default one, or
a named one a task picks with ``dask.annotate(executor=NAME)``.  This
module gives it one backed by a :class:`poolparty.SubinterpreterPoolExecutor`,
so one worker process runs pure-Python tasks on every core::

    import dask
    from distributed import Client, LocalCluster
    from poolparty.dask import DASK_CONFIG, SubinterpreterWorkerPlugin

    with dask.config.set(DASK_CONFIG), \\
            LocalCluster(processes=False, n_workers=1, threads_per_worker=2) as cluster, \\
            Client(cluster) as client:
        client.register_plugin(SubinterpreterWorkerPlugin())     # every worker
        print(client.gather(client.map(fib, [25] * 32)))

(DASK_CONFIG turns distributed's profiler off: it would crash the process,
see its docstring), or, from the command line,
``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False dask worker ADDRESS
--nthreads 2 --preload poolparty.dask`` (docs/dask.md has the whole recipe).

What crosses into a subinterpreter is the task's own function, its
arguments and its dependencies' values, nothing of Dask's:
``distributed`` does not load in a subinterpreter (psutil refuses to),
and a Worker given a bare SubinterpreterPoolExecutor would send it
``distributed.worker._run_task_simple`` and Dask's task objects.
:class:`DaskSubinterpreterExecutor` takes that call apart in the main
interpreter: it turns the task (``dask._task_spec`` nodes: Task,
containers, aliases, fused subgraphs) into a plan of plain tuples around
the user's callables, sends ``(plan, dependency values)`` pickled with
cloudpickle, and builds the message the Worker expects (timings, size,
error report) back in the main interpreter.  A task the subinterpreters
cannot run (a function from dask or distributed, a task node it does not
know, or a payload that would import either) runs in a thread of the
main interpreter instead, as it would on a threaded worker.

This module's top level imports only the standard library: the
subinterpreters import it to run plans.  ``distributed`` and ``dask``
are imported only in the main interpreter, on first use.
"""

import _thread
import concurrent.futures
import io
import logging
import pickle
import sys
import threading
import time

__all__ = [
    "DASK_CONFIG",
    "EXECUTOR_NAME",
    "DaskSubinterpreterExecutor",
    "NeedsMainInterpreter",
    "ProfilerRunningError",
    "SubinterpreterWorkerPlugin",
    "dask_setup",
]

EXECUTOR_NAME = "subinterpreters"
"""The name tasks select with ``dask.annotate(executor=EXECUTOR_NAME)``."""

DASK_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
}
"""Dask settings for clusters and workers that use subinterpreters.

Set them before the cluster or worker starts::

    with dask.config.set(poolparty.dask.DASK_CONFIG):
        cluster = LocalCluster(...)

(for ``dask worker``: ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``
and ``DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__GIL__ENABLED=False``).

- The profiler must be off.  It calls ``sys._current_frames()`` every
  10 ms, and CPython (3.12, 3.13) makes that function walk the threads
  of *every* interpreter and create frame objects for frames running
  under other GILs: with subinterpreters running Python code, the process
  soon dies ("double free or corruption", segmentation fault).
  poolparty.dask refuses to run tasks while the profiler runs.
- The GIL monitor had better be off.  When gilknocker is installed,
  distributed polls the main GIL from a gilknocker thread, which measures
  nothing of the subinterpreters' GILs and, when it outlives its stop(),
  aborts the process at exit ("FATAL: exception not rethrown").
"""

_MAIN_ONLY = frozenset({"dask", "distributed"})
"""Top-level packages that are never loaded inside a subinterpreter."""

logger = logging.getLogger(__name__)


# --- inside the subinterpreters (standard library only) ------------------------

class NeedsMainInterpreter(Exception):
    """Raised inside a subinterpreter when a task's payload cannot be
    loaded there: it would import dask or distributed, or something in it
    cannot load in a subinterpreter (numpy, for one).  The task then runs
    in the main interpreter instead; the Worker never sees this exception.
    """


class _GuardedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.partition(".")[0] in _MAIN_ONLY:
            raise NeedsMainInterpreter(f"it refers to {module}.{name}")
        if module.startswith("cloudpickle") and name == "subimport":
            return _guarded_subimport  # by-value functions import their globals
        return super().find_class(module, name)


def _guarded_subimport(name):
    if name.partition(".")[0] in _MAIN_ONLY:
        raise NeedsMainInterpreter(f"it imports {name}")
    __import__(name)
    return sys.modules[name]


def _evaluate(plan, env):
    """Compute a plan (see :func:`_plan`); ``env`` maps keys to values."""
    tag = plan[0]
    if tag == "v":
        return plan[1]
    if tag == "r":
        return env[plan[1]]
    if tag == "c":
        _, func, args, kwargs = plan
        args = [_evaluate(a, env) for a in args]
        if kwargs:
            return func(*args, **{k: _evaluate(v, env) for k, v in kwargs.items()})
        return func(*args)
    if tag == "g":
        _, nodes, outkey, inkeys, deps = plan
        local = dict(zip(inkeys, [_evaluate(d, env) for d in deps]))
        for key, node in nodes:
            local[key] = _evaluate(node, local)
        return local[outkey]
    items = [_evaluate(a, env) for a in plan[1]]
    if tag == "l":
        return items
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "d":
        return dict(zip(items[::2], items[1::2]))
    raise ValueError(f"unknown plan tag {tag!r}")


def _run_in_subinterpreter(payload):
    """What a poolparty worker runs for one Dask task.

    Returns ``(result, start, stop, thread_ident)``; a task's exception
    propagates (poolparty carries it back with its traceback).
    """
    try:
        plan, env = _GuardedUnpickler(io.BytesIO(payload)).load()
    except NeedsMainInterpreter:
        raise
    except Exception as exc:
        # It was pickled in the main interpreter, so it loads there.
        raise NeedsMainInterpreter(
            f"it cannot be loaded in a subinterpreter: {exc!r}") from None
    start = time.time()
    result = _evaluate(plan, env)
    stop = time.time()
    return result, start, stop, _thread.get_ident()


# --- in the main interpreter: task -> plan ----------------------------------------

class _NotPortable(Exception):
    """This task must run in the main interpreter."""


_SPEC = None


def _spec():
    """dask._task_spec's node types, imported on first use (main interpreter)."""
    global _SPEC
    if _SPEC is None:
        from dask import _task_spec as ts

        _SPEC = {
            "TaskRef": ts.TaskRef,
            "GraphNode": ts.GraphNode,
            "Task": ts.Task,
            "Alias": ts.Alias,
            "DataNode": ts.DataNode,
            "containers": {ts.List: "l", ts.Tuple: "t", ts.Set: "s", ts.Dict: "d"},
            "subgraph": getattr(ts, "_execute_subgraph", None),
        }
    return _SPEC


def _home_package(func):
    while hasattr(func, "func") and hasattr(func, "args"):  # functools.partial
        func = func.func
    module = getattr(func, "__module__", None) or type(func).__module__ or ""
    return module.partition(".")[0]


def _plan(node, spec):
    """A dask task node as nested tuples that :func:`_evaluate` computes.

    ``("v", value)`` a value; ``("r", key)`` a key's value; ``("c", func,
    args, kwargs)`` a call; ``("l"|"t"|"s"|"d", items)`` a container
    (dict items flattened: k1, v1, k2, v2, ...); ``("g", ((key, plan),
    ...), outkey, inkeys, deps)`` a fused subgraph in topological order.
    Mirrors ``Task.__call__``: only the top-level arguments that are task
    nodes or references are evaluated.  Raises _NotPortable for what must
    stay in the main interpreter.
    """
    if isinstance(node, spec["TaskRef"]):  # distributed.Future is one too
        return ("r", node.key)
    kind = type(node)
    if kind is spec["Alias"]:
        return ("r", node.target)
    if kind is spec["DataNode"]:
        return ("v", node.value)
    tag = spec["containers"].get(kind)
    if tag is not None:
        if set(node.kwargs) - {"constructor"}:
            raise _NotPortable(f"a {kind.__name__} node with options")
        return (tag, tuple(_plan_arg(a, spec) for a in node.args))
    if kind is not spec["Task"]:
        raise _NotPortable(f"{kind.__module__}.{kind.__qualname__} nodes")
    if node.func is spec["subgraph"] and spec["subgraph"] is not None:
        return _subgraph_plan(node, spec)
    if _home_package(node.func) in _MAIN_ONLY:
        raise _NotPortable(f"a function from {_home_package(node.func)}")
    kwargs = {k: _plan_arg(v, spec) for k, v in node.kwargs.items()}
    return ("c", node.func, tuple(_plan_arg(a, spec) for a in node.args),
            kwargs or None)


def _plan_arg(value, spec):
    if isinstance(value, (spec["GraphNode"], spec["TaskRef"])):
        return _plan(value, spec)
    return ("v", value)


def _subgraph_plan(node, spec):
    # Task.fuse builds Task(key, _execute_subgraph, {key: node}, outkey,
    # inkeys, *TaskRef(inkey)).
    if node.kwargs or len(node.args) < 3 or not isinstance(node.args[0], dict):
        raise _NotPortable("an unfamiliar fused subgraph")
    inner, outkey, inkeys, *deps = node.args
    order = _topological(inner)
    return ("g", tuple((key, _plan(inner[key], spec)) for key in order),
            outkey, tuple(inkeys), tuple(_plan_arg(d, spec) for d in deps))


def _topological(graph):
    """Keys of ``graph`` ({key: node}), each after the ones it depends on."""
    order, done, active = [], set(), set()
    for root in graph:
        if root in done:
            continue
        stack = [(root, iter(graph[root].dependencies))]
        active.add(root)
        while stack:
            key, deps = stack[-1]
            for dep in deps:
                if dep in graph and dep not in done:
                    if dep in active:
                        raise _NotPortable("a cycle in a fused subgraph")
                    active.add(dep)
                    stack.append((dep, iter(graph[dep].dependencies)))
                    break
            else:
                stack.pop()
                active.discard(key)
                done.add(key)
                order.append(key)
    return order


# --- in the main interpreter: the executor -----------------------------------------

class ProfilerRunningError(RuntimeError):
    """distributed's profiler runs in this process; see :data:`DASK_CONFIG`."""


def _refuse_if_profiling():
    """Raise ProfilerRunningError while distributed's profiler thread runs."""
    for thread in threading.enumerate():
        if thread.name == "Profile" and thread.is_alive():
            raise ProfilerRunningError(
                "distributed's profiler is running in this process: it calls "
                "sys._current_frames(), which crashes the process while "
                "subinterpreters run Python code (a CPython bug).  Start the "
                "cluster or worker with dask.config.set(poolparty.dask."
                "DASK_CONFIG), i.e. distributed.worker.profile.enabled=False "
                "(environment: DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False)."
            )


_RUN_TASK_SIMPLE = None


def _run_task_simple():
    """distributed.worker._run_task_simple: what a Worker submits for a task
    to any executor that is not a ThreadPoolExecutor."""
    global _RUN_TASK_SIMPLE
    if _RUN_TASK_SIMPLE is None:
        from distributed.worker import _run_task_simple as run

        _RUN_TASK_SIMPLE = run
    return _RUN_TASK_SIMPLE


class DaskSubinterpreterExecutor(concurrent.futures.Executor):
    """The executor of a ``distributed.Worker``, on own-GIL subinterpreters.

    Give it to a Worker (``Worker(executor=...)``, or in a dict of named
    executors), or let :class:`SubinterpreterWorkerPlugin` install one per
    worker.  Each task the Worker submits runs its function in one of
    ``max_workers`` subinterpreters (a
    :class:`poolparty.SubinterpreterPoolExecutor`, available as
    ``.pool``; ``initializer``, ``initargs`` and ``dispatch`` go to it).
    What cannot run there runs in a thread of the main interpreter
    (``max_workers`` threads at most, started when first needed): Dask's
    and distributed's own functions and tasks that would load them.
    ``.counts`` tells how many tasks went each way.

    Other callables given to ``submit()`` run in the subinterpreters as
    with SubinterpreterPoolExecutor, unless they come from dask or
    distributed (a Worker's own chores), which run in the main interpreter.
    """

    def __init__(self, max_workers=None, initializer=None, initargs=(), *,
                 dispatch="queue"):
        from . import SubinterpreterPoolExecutor

        self.pool = SubinterpreterPoolExecutor(
            max_workers, initializer, initargs, dispatch=dispatch)
        self._max_workers = self.pool._max_workers
        self._lock = threading.Lock()
        self._main = None
        self._shutdown = False
        self._warned = False
        self.counts = {"subinterpreter": 0, "main": 0}

    def __repr__(self):
        state = "shut down" if self._shutdown else "running"
        return (f"<{type(self).__name__} {self._max_workers} subinterpreters, "
                f"{state}, {self.counts}>")

    @property
    def shut_down(self):
        """True once shutdown() was called."""
        return self._shutdown

    def _main_threads(self):
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._main is None:
                self._main = concurrent.futures.ThreadPoolExecutor(
                    self._max_workers, thread_name_prefix="poolparty-dask-main")
            return self._main

    def _count(self, where):
        with self._lock:
            self.counts[where] += 1

    def submit(self, fn, /, *args, **kwargs):
        if fn is _run_task_simple() and not kwargs and len(args) == 3:
            return self._submit_task(*args)
        if _home_package(fn) in _MAIN_ONLY:
            return self._main_threads().submit(fn, *args, **kwargs)
        _refuse_if_profiling()
        return self.pool.submit(fn, *args, **kwargs)

    submit.__doc__ = concurrent.futures.Executor.submit.__doc__

    def _submit_task(self, task, data, time_delay):
        _refuse_if_profiling()
        try:
            plan = _plan(task, _spec())
        except _NotPortable as why:
            self._note_fallback(task, f"it uses {why}")
            return self._run_in_main(task, data, time_delay)
        import cloudpickle  # a dependency of distributed

        try:
            payload = cloudpickle.dumps((plan, data), 5)
        except Exception as exc:
            self._note_fallback(task, f"it cannot be pickled: {exc!r}")
            return self._run_in_main(task, data, time_delay)
        outer = concurrent.futures.Future()
        submitted = time.time()
        inner = self.pool.submit(_run_in_subinterpreter, payload)
        self._count("subinterpreter")

        def cancel_inner(future):
            if future.cancelled():
                inner.cancel()

        def finish(inner):
            self._finish(inner, outer, task, data, time_delay, submitted)

        outer.add_done_callback(cancel_inner)
        inner.add_done_callback(finish)
        return outer

    def _note_fallback(self, task, why):
        with self._lock:
            first = not self._warned
            self._warned = True
        log = logger.warning if first else logger.debug
        log("Dask task %r runs in the main interpreter, not in a subinterpreter: "
            "%s.%s", getattr(task, "key", task), why,
            " (Later such tasks are logged at DEBUG level.)" if first else "")

    def _run_in_main(self, task, data, time_delay, outer=None):
        self._count("main")
        future = self._main_threads().submit(
            _run_task_simple(), task, data, time_delay)
        if outer is not None:
            future.add_done_callback(lambda f: _copy_outcome(f, outer))
        return future

    def _finish(self, inner, outer, task, data, time_delay, submitted):
        """Build the message the Worker expects from a subinterpreter's answer."""
        if inner.cancelled():
            outer.cancel()
            return
        exc = inner.exception()
        if isinstance(exc, NeedsMainInterpreter):
            with self._lock:
                self.counts["subinterpreter"] -= 1
            self._note_fallback(task, str(exc))
            try:
                self._run_in_main(task, data, time_delay, outer)
            except RuntimeError as error:  # shut down meanwhile
                _set(outer, exception=error)
            return
        try:
            msg = _task_message(inner, exc, time_delay, submitted)
        except BaseException as error:  # noqa: BLE001 - must reach the Worker
            _set(outer, exception=error)
        else:
            _set(outer, result=msg)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutdown = True
            main = self._main
        self.pool.shutdown(wait, cancel_futures=cancel_futures)
        if main is not None:
            main.shutdown(wait, cancel_futures=cancel_futures)

    shutdown.__doc__ = concurrent.futures.Executor.shutdown.__doc__


def _task_message(inner, exc, time_delay, submitted):
    """What distributed.worker._run_task_simple returns, for this outcome."""
    from dask.sizeof import sizeof

    if exc is None:
        value, start, stop, ident = inner.result()
        msg = {
            "op": "task-finished",
            "status": "OK",
            "result": value,
            "nbytes": sizeof(value),
            "type": type(value) if value is not None else None,
        }
    else:
        from distributed.core import error_message

        msg = error_message(exc)
        remote = exc.__cause__
        if remote is not None and type(remote).__name__ == "RemoteTraceback":
            msg["traceback_text"] = str(remote)  # where the task failed
        msg["op"] = "task-erred"
        msg["actual_exception"] = exc
        start, stop, ident = submitted, time.time(), threading.get_ident()
    msg["start"] = start + time_delay
    msg["stop"] = stop + time_delay
    msg["thread"] = ident
    return msg


def _set(future, result=None, exception=None):
    """Complete a future unless it was cancelled."""
    if not future.set_running_or_notify_cancel():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


def _copy_outcome(source, target):
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        _set(target, exception=source.exception())
    else:
        _set(target, result=source.result())


# --- in the main interpreter: installing it on workers ------------------------------

class _PluginMethods:
    """A WorkerPlugin that gives each worker a DaskSubinterpreterExecutor.

    ``SubinterpreterWorkerPlugin(max_workers=None, *, name="subinterpreters",
    default=True, dispatch="queue", initializer=None, initargs=())``

    On every worker (those running now and those that join later, once
    registered with ``client.register_plugin(plugin)``) it starts a
    :class:`DaskSubinterpreterExecutor` of ``max_workers`` subinterpreters
    (default: the worker's ``nthreads``, the number of tasks it runs at
    once) and installs it as the worker's executor ``name``, which tasks
    select with ``dask.annotate(executor=name)``; with ``default=True``
    also as the default executor, so every task uses it.  Removing the
    plugin, or closing the worker, restores the executors it replaced and
    shuts its own down (waiting for running tasks).
    """

    idempotent = False

    def __init__(self, max_workers=None, *, name=EXECUTOR_NAME, default=True,
                 dispatch="queue", initializer=None, initargs=()):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self.max_workers = max_workers
        self.executor_name = name
        self.default = default
        self.dispatch = dispatch
        self.initializer = initializer
        self.initargs = initargs
        self.name = f"poolparty-{name}"  # the plugin's name on the workers
        self._installed = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_installed"] = {}  # per-worker, never sent
        return state

    def setup(self, worker):
        _refuse_if_profiling()
        executor = DaskSubinterpreterExecutor(
            self.max_workers or worker.state.nthreads,
            self.initializer, self.initargs, dispatch=self.dispatch)
        names = [self.executor_name] + (["default"] if self.default else [])
        replaced = {name: worker.executors.get(name) for name in names}
        for name in names:
            worker.executors[name] = executor
        self._installed[id(worker)] = (executor, replaced)

    async def teardown(self, worker):
        executor, replaced = self._installed.pop(id(worker), (None, {}))
        if executor is None:
            return
        for name, previous in replaced.items():
            if worker.executors.get(name) is executor:
                if previous is None:
                    del worker.executors[name]
                else:
                    worker.executors[name] = previous
        import asyncio

        from distributed.core import Status

        # A closing worker has no use for queued tasks; otherwise let them run.
        closing = worker.status in (Status.closing, Status.closed, Status.failed)
        await asyncio.to_thread(executor.shutdown, True, cancel_futures=closing)


def _plugin_class():
    """SubinterpreterWorkerPlugin, made once, on first use.

    It subclasses distributed's WorkerPlugin (``client.register_plugin``
    requires that), and the subinterpreters, which import this module,
    cannot load distributed.
    """
    cls = globals().get("SubinterpreterWorkerPlugin")
    if cls is None:
        from distributed.diagnostics.plugin import WorkerPlugin

        cls = type("SubinterpreterWorkerPlugin", (_PluginMethods, WorkerPlugin), {
            "__module__": __name__,
            "__qualname__": "SubinterpreterWorkerPlugin",
            "__doc__": _PluginMethods.__doc__,
        })
        globals()["SubinterpreterWorkerPlugin"] = cls
    return cls


def __getattr__(name):
    if name == "SubinterpreterWorkerPlugin":
        return _plugin_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


async def dask_setup(worker):
    """Preload hook: ``dask worker ADDRESS --preload poolparty.dask``.

    Installs a :class:`SubinterpreterWorkerPlugin` on this worker, set from
    Dask's configuration: ``poolparty.max-workers`` (default: the worker's
    nthreads), ``poolparty.default`` (default True; False keeps threads as
    the default executor and adds only the named one) and
    ``poolparty.dispatch`` ("queue").  From the environment, e.g.
    ``DASK_POOLPARTY__DEFAULT=False``.
    """
    import dask

    plugin = _plugin_class()(
        dask.config.get("poolparty.max-workers", None),
        default=dask.config.get("poolparty.default", True),
        dispatch=dask.config.get("poolparty.dispatch", "queue"),
    )
    await worker.plugin_add(plugin, catch_errors=False)
