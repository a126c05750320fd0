"""poolparty.dask: Dask workers whose executor is a pool of subinterpreters.

Real clusters on this machine (in-process workers, and one run with worker
processes on loopback), real tasks from dask_tasks.py.  Every task
function lives in dask_tasks.py: this file imports distributed, so a
function pickled by reference from here could not load in a subinterpreter.
Clusters start with poolparty.dask.DASK_CONFIG (distributed's profiler
off: with it on, the process crashes; see test_refused_while_the_profiler_runs).
"""

import contextlib
import os
import subprocess
import sys
import threading
import time

import pytest

distributed = pytest.importorskip(
    "distributed",
    reason="distributed is not installed (pip install 'poolparty[dask]')",
)

import dask  # noqa: E402
from dask._task_spec import (  # noqa: E402
    Alias, DataNode, Dict, List, Set, Task, TaskRef, Tuple,
)
from distributed import Client, LocalCluster  # noqa: E402

import dask_tasks  # noqa: E402
import poolparty.dask as ppd  # noqa: E402
from poolparty.dask import (  # noqa: E402
    DASK_CONFIG, DaskSubinterpreterExecutor, ProfilerRunningError,
    SubinterpreterWorkerPlugin,
)

try:
    import _interpreters as _interp
except ImportError:  # CPython 3.12
    import _xxsubinterpreters as _interp

pytestmark = pytest.mark.timeout(120)

POOLPARTY_THREADS = ("SubinterpreterPoolExecutor", "poolparty-dask")
# Every server a cluster starts (HTTP ones too) listens on loopback only.
LOOPBACK = {"dashboard_address": "127.0.0.1:0",
            "worker_dashboard_address": "127.0.0.1:0"}


def interpreters():
    return len(_interp.list_all())


def poolparty_threads():
    return [t.name for t in threading.enumerate()
            if t.name.startswith(POOLPARTY_THREADS)]


def our_executors(cluster):
    """Each in-process worker's DaskSubinterpreterExecutors, by name."""
    return {
        (worker.name, name): executor
        for worker in cluster.workers.values()
        for name, executor in worker.executors.items()
        if isinstance(executor, DaskSubinterpreterExecutor)
    }


@pytest.fixture
def local_cluster():
    """start(**kwargs) -> (cluster, client) with in-process workers.

    At teardown, after the cluster has closed: every executor it had was
    shut down, and no subinterpreter and no poolparty thread is left.
    """
    before = interpreters()
    stack = contextlib.ExitStack()
    clusters = []

    def start(**kwargs):
        kwargs.setdefault("n_workers", 1)
        kwargs.setdefault("threads_per_worker", 2)
        stack.enter_context(dask.config.set(DASK_CONFIG))
        cluster = stack.enter_context(LocalCluster(
            processes=False, **LOOPBACK, **kwargs))
        client = stack.enter_context(Client(cluster))
        clusters.append(cluster)
        return cluster, client

    yield start
    executors = [e for c in clusters for e in our_executors(c).values()]
    stack.close()
    for executor in executors:
        assert executor.shut_down, executor
    assert poolparty_threads() == []
    assert interpreters() == before


# --- task -> plan: the translation, on real dask task objects ----------------

DATA = {"x": 3, "y": [1, 2], ("k", 0): 10}

NODES = [
    Task("t", dask_tasks.add, 1, 2),
    Task("t", dask_tasks.describe, TaskRef("x"), ("k", 0), k=TaskRef(("k", 0))),
    Task("t", dask_tasks.describe, List(TaskRef("x"), 5),
         Tuple(TaskRef("x"), TaskRef("y")), Set(TaskRef("x"), 4),
         Dict({"a": TaskRef("x"), "b": List(TaskRef(("k", 0)))})),
    Task("t", dask_tasks.describe, Task(None, dask_tasks.add, TaskRef("x"), 1),
         DataNode(None, [7, 8]), Alias("x"), kw=Alias("t2", "y")),
    Task("t", dask_tasks.describe, [TaskRef("x")]),  # a plain list stays as is
    Alias("a", "y"),
    DataNode("d", {"v": 1}),
    Task.fuse(
        Task("a", dask_tasks.add, TaskRef("x"), 1),
        Task("b", dask_tasks.add, TaskRef("a"), TaskRef(("k", 0))),
        Task("c", dask_tasks.describe, TaskRef("b"), List(TaskRef("a"), TaskRef("y"))),
        key="c",
    ),
]


@pytest.mark.parametrize("node", NODES, ids=repr)
def test_a_plan_computes_what_the_task_computes(node):
    plan = ppd._plan(node, ppd._spec())
    values = {k: DATA[k] for k in node.dependencies}
    assert ppd._evaluate(plan, values) == node(values)


def test_dask_and_distributed_functions_are_not_sent():
    import dask.utils

    for node in (Task("t", dask.utils.format_bytes, 1),
                 Task("t", dask_tasks.add, Task(None, dask.utils.format_bytes, 1))):
        with pytest.raises(ppd._NotPortable):
            ppd._plan(node, ppd._spec())


def test_the_subinterpreter_side_refuses_dask_in_a_payload():
    import cloudpickle
    import dask.utils

    payload = cloudpickle.dumps((("v", dask.utils.format_bytes), {}))
    with pytest.raises(ppd.NeedsMainInterpreter, match="dask.utils"):
        ppd._run_in_subinterpreter(payload)


# --- as the default executor ----------------------------------------------------

def test_default_executor_runs_tasks_in_subinterpreters(local_cluster):
    cluster, client = local_cluster()
    assert client.register_plugin(SubinterpreterWorkerPlugin())
    ns = list(range(18, 26)) * 2
    results = client.gather(client.map(dask_tasks.fib_where, ns, pure=False))
    assert results == [(dask_tasks.fib(n), "subinterpreter") for n in ns]
    # dask and distributed never loaded in the subinterpreters.
    for _ in range(4):
        assert client.submit(dask_tasks.where, pure=False).result() == (
            "subinterpreter", [])
    (executor,) = set(our_executors(cluster).values())
    assert executor.pool._max_workers == 2  # the worker's nthreads
    assert executor.counts == {"subinterpreter": 20, "main": 0}


def test_arguments_containers_kwargs_and_dependencies(local_cluster):
    _, client = local_cluster()
    client.register_plugin(SubinterpreterWorkerPlugin())
    xs = client.map(dask_tasks.fib, range(5))
    got = client.submit(dask_tasks.describe, xs, {"a": xs[1]}, (xs[2], 3),
                        {xs[4]}, k=xs[3]).result()
    assert got == (
        [("list", [0, 1, 1, 2, 3]), ("dict", {"a": 1}), ("tuple", (1, 3)),
         ("set", {3})],
        {"k": 2},
        "subinterpreter",
    )
    total = dask.delayed(dask_tasks.add)(
        *[dask.delayed(dask_tasks.fib)(n) for n in range(10)], k=1)
    assert total.compute() == sum(map(dask_tasks.fib, range(10))) + 1
    # Functions made in a test (here a lambda) travel by value.
    assert client.submit(lambda x: x * 2, 21).result() == 42


def test_a_fused_subgraph_runs_in_a_subinterpreter(local_cluster):
    cluster, client = local_cluster()
    client.register_plugin(SubinterpreterWorkerPlugin())
    fused = Task.fuse(
        Task("a", dask_tasks.fib, TaskRef("n")),
        Task("b", dask_tasks.add, TaskRef("a"), 1),
        Task("c", dask_tasks.describe, TaskRef("b"), List(TaskRef("a"), 2)),
        key="c",
    )
    graph = {"n": Task("n", dask_tasks.add, 10), "c": fused}
    assert client.get(graph, "c") == (
        [("int", 56), ("list", [55, 2])], {}, "subinterpreter")
    (executor,) = set(our_executors(cluster).values())
    assert executor.counts == {"subinterpreter": 2, "main": 0}


def test_a_task_exception_reaches_the_client_with_its_type(local_cluster):
    _, client = local_cluster()
    client.register_plugin(SubinterpreterWorkerPlugin())
    future = client.submit(dask_tasks.fail, "boom")
    with pytest.raises(dask_tasks.TaskFailed, match="boom") as info:
        future.result()
    # The worker's traceback, from inside the subinterpreter, comes along.
    assert "dask_tasks.py" in str(info.value.__cause__)
    assert "in fail" in str(info.value.__cause__)
    assert client.submit(dask_tasks.fib_where, 15).result() == (610, "subinterpreter")


def test_what_cannot_run_in_a_subinterpreter_runs_in_the_main_one(local_cluster):
    import dask.utils

    cluster, client = local_cluster()
    client.register_plugin(SubinterpreterWorkerPlugin())
    # A dask function as the task: run in the main interpreter.
    assert client.submit(dask.utils.apply, dask_tasks.where, ()).result()[0] == "main"
    # A dask function inside the arguments: found in the subinterpreter
    # while unpickling, before dask loads there; rerun in the main one.
    got = client.submit(dask_tasks.call, dask.utils.format_bytes, 1024).result()
    assert got == "1.00 kiB"
    # A function made here that uses dask (cloudpickle imports its globals).
    got = client.submit(lambda: (dask.utils.format_bytes(1), dask_tasks.where()[0]))
    assert got.result() == ("1 B", "main")
    (executor,) = set(our_executors(cluster).values())
    assert executor.counts == {"subinterpreter": 0, "main": 3}
    for _ in range(4):
        assert client.submit(dask_tasks.where, pure=False).result() == (
            "subinterpreter", [])


# --- as a named executor, picked with dask.annotate -------------------------------

def test_named_executor_selected_by_annotation(local_cluster):
    cluster, client = local_cluster()
    client.register_plugin(SubinterpreterWorkerPlugin(default=False))
    with dask.annotate(executor="subinterpreters"):
        submitted = client.submit(dask_tasks.fib_where, 20)
        mapped = client.map(dask_tasks.fib_where, [5, 6])
        delayed = dask.delayed(dask_tasks.fib_where)(21)
    assert submitted.result() == (6765, "subinterpreter")
    assert client.gather(mapped) == [(5, "subinterpreter"), (8, "subinterpreter")]
    assert client.compute(delayed).result() == (10946, "subinterpreter")
    # Without the annotation: the worker's threads, in the main interpreter.
    assert client.submit(dask_tasks.fib_where, 22).result() == (17711, "main")
    assert dask.delayed(dask_tasks.fib_where)(23).compute() == (28657, "main")
    (worker,) = cluster.workers.values()
    assert "ThreadPoolExecutor" in type(worker.executors["default"]).__name__
    assert worker.executors["subinterpreters"].counts["subinterpreter"] == 4


def test_values_that_only_load_in_the_main_interpreter(local_cluster, caplog):
    pytest.importorskip("numpy")
    _, client = local_cluster()
    client.register_plugin(SubinterpreterWorkerPlugin(default=False))
    array = client.submit(dask_tasks.make_array, 5)  # threads: numpy is there
    with dask.annotate(executor="subinterpreters"):
        length = client.submit(dask_tasks.length_where, array)
        small = client.submit(dask_tasks.length_where, [1, 2])
    # numpy refuses to load in a subinterpreter: that task is rerun in the
    # main interpreter, with a warning; the other one is not.
    assert length.result() == (5, "main")
    assert small.result() == (2, "subinterpreter")
    assert "runs in the main interpreter" in caplog.text
    assert "numpy" in caplog.text


def test_worker_given_executors_directly(local_cluster):
    executor = DaskSubinterpreterExecutor(2, dispatch="call")
    cluster, client = local_cluster(executor={"default": executor,
                                              "subinterpreters": executor})
    assert client.gather(client.map(dask_tasks.fib_where, [19, 20])) == [
        (4181, "subinterpreter"), (6765, "subinterpreter")]
    with dask.annotate(executor="subinterpreters"):
        assert client.submit(dask_tasks.fib_where, 21).result() == (
            10946, "subinterpreter")


def test_preload_module_from_config(local_cluster):
    with dask.config.set({"poolparty.default": False, "poolparty.max-workers": 1}):
        cluster, client = local_cluster(n_workers=2, preload=["poolparty.dask"])
    executors = our_executors(cluster)
    assert sorted(name for _, name in executors) == ["subinterpreters"] * 2
    assert all(e.pool._max_workers == 1 for e in executors.values())
    with dask.annotate(executor="subinterpreters"):
        futures = client.map(dask_tasks.fib_where, range(10, 14))
    assert [r[1] for r in client.gather(futures)] == ["subinterpreter"] * 4


def test_unregistering_restores_the_threads(local_cluster):
    cluster, client = local_cluster()
    client.register_plugin(SubinterpreterWorkerPlugin())
    assert client.submit(dask_tasks.fib_where, 10).result()[1] == "subinterpreter"
    (executor,) = set(our_executors(cluster).values())
    client.unregister_worker_plugin("poolparty-subinterpreters")
    assert executor.shut_down and our_executors(cluster) == {}
    assert poolparty_threads() == []
    assert client.submit(dask_tasks.fib_where, 11).result() == (89, "main")


# --- distributed's profiler --------------------------------------------------------

def test_refused_while_the_profiler_runs():
    # The profiler thread calls sys._current_frames(), which makes frame
    # objects for frames running in subinterpreters, under other GILs: the
    # process crashes (see DASK_CONFIG).  So nothing is sent to them.  (The
    # executor below starts, and ends, while no profiler runs: starting and
    # ending a subinterpreter runs Python code in it.)
    executor = DaskSubinterpreterExecutor(1)
    try:
        assert executor.pool.submit(abs, -1).result() == 1  # started; now idle
        with dask.config.set({**DASK_CONFIG, "distributed.worker.profile.enabled": True}), \
                LocalCluster(processes=False, n_workers=1, threads_per_worker=1,
                             **LOOPBACK) as cluster, \
                Client(cluster) as client:
            assert "Profile" in [t.name for t in threading.enumerate()]
            with pytest.raises(ProfilerRunningError, match="DASK_CONFIG"):
                client.register_plugin(SubinterpreterWorkerPlugin())
            # An executor given to the worker directly fails each task instead.
            (worker,) = cluster.workers.values()
            worker.executors["subinterpreters"] = executor
            with dask.annotate(executor="subinterpreters"):
                future = client.submit(dask_tasks.fib_where, 5)
            with pytest.raises(ProfilerRunningError):
                future.result()
            del worker.executors["subinterpreters"]
        # The profiler thread ends with its event loop.
        for thread in threading.enumerate():
            if thread.name == "Profile":
                thread.join(10)
        assert "Profile" not in [t.name for t in threading.enumerate()]
        assert executor.counts == {"subinterpreter": 0, "main": 0}
    finally:
        executor.shutdown()


# --- worker processes --------------------------------------------------------------

def probe_worker(dask_worker):
    executor = dask_worker.executors["default"]
    return type(executor).__name__, executor.counts, sorted(dask_worker.executors)


@pytest.mark.timeout(180)
def test_worker_processes_on_loopback():
    with dask.config.set(DASK_CONFIG), \
            LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                         host="127.0.0.1", **LOOPBACK) as cluster, \
            Client(cluster) as client:
        client.register_plugin(SubinterpreterWorkerPlugin())
        results = client.gather(client.map(dask_tasks.fib_where, [20] * 8, pure=False))
        assert results == [(6765, "subinterpreter")] * 8
        with pytest.raises(dask_tasks.TaskFailed):
            client.submit(dask_tasks.fail, "in a process").result()
        probes = client.run(probe_worker)
        assert len(probes) == 2
        for name, counts, executors in probes.values():
            assert name == "DaskSubinterpreterExecutor"
            assert "subinterpreters" in executors
        assert sum(c["subinterpreter"] for _, c, _ in probes.values()) == 9
        # Each worker process ends its executor (and subinterpreters) on close.
        leftovers = client.run(_poolparty_leftovers_after_teardown)
        assert all(v == ([], 1) for v in leftovers.values()), leftovers


async def _poolparty_leftovers_after_teardown(dask_worker):
    await dask_worker.plugin_remove("poolparty-subinterpreters")
    return poolparty_threads(), interpreters()


@pytest.mark.timeout(180)
def test_dask_worker_command_line_with_preload(tmp_path):
    """The docs' recipe: `dask scheduler`, `dask worker --preload poolparty.dask`."""
    dask_cli = os.path.join(os.path.dirname(sys.executable), "dask")
    if not os.path.exists(dask_cli):
        pytest.skip("no `dask` command next to this Python")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(
        os.environ,
        DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED="False",
        DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__GIL__ENABLED="False",
        PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
    )
    scheduler_file = tmp_path / "scheduler.json"
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    logs, procs = [], []

    def start(*args, name):
        log = open(tmp_path / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [dask_cli, *args, *loopback, "--scheduler-file", str(scheduler_file)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))

    try:
        start("scheduler", name="scheduler")
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        start("worker", "--nthreads", "2", "--nworkers", "1",
              "--preload", "poolparty.dask", name="worker")
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            results = client.gather(
                client.map(dask_tasks.fib_where, [18] * 4, pure=False))
            assert results == [(2584, "subinterpreter")] * 4
            (probe,) = client.run(probe_worker).values()
            assert probe[0] == "DaskSubinterpreterExecutor"
            assert probe[1] == {"subinterpreter": 4, "main": 0}
    finally:
        for proc in reversed(procs):  # the worker first: it closes gracefully
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    worker_log = (tmp_path / "worker.log").read_text()
    assert "Removing Worker plugin poolparty-subinterpreters" in worker_log


@pytest.mark.timeout(180)
def test_benchmark_example_runs(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "dask_bench.py"),
         "--n", "15", "--tasks", "8", "--repeat", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = [line.split() for line in proc.stdout.splitlines()
             if line.split()[-1:] in (["True"], ["False"])]
    assert {row[0]: row[-1] for row in table} == {   # the results were right
        "threads": "True", "processes": "True", "poolparty": "True"}
    assert "'subinterpreter': 16, 'main': 0" in proc.stdout
