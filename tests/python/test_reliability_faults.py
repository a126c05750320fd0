"""Reliability: faults inside tasks, bad input, misbehaving callbacks.

Every fault a task can raise must reach the caller as *that task's*
error (or succeed, for a huge result), with bounded waits, and the pool
must keep serving afterwards.  See docs/reliability.md for what the
caller sees and why.
"""

import multiprocessing.pool
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import reliability_tasks as rt
from conftest import REFERENCE, SUBPROCESS_TIMEOUT

pytestmark = [
    pytest.mark.skipif(REFERENCE, reason="poolparty's own behaviour"),
    pytest.mark.timeout(120),
]

WAIT = 60  # seconds: an upper bound on any one result, never a measurement

# fault name -> exception type the caller must see
FAULTS = {
    "sys.exit": SystemExit,
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "RecursionError": RecursionError,
    "MemoryError (allocation)": MemoryError,
    "MemoryError (raised)": MemoryError,
}


def _build(dispatch, api):
    import poolparty

    if api.startswith("executor"):
        return poolparty.SubinterpreterPoolExecutor(2, dispatch=dispatch)
    return poolparty.SubinterpreterPool(2, dispatch=dispatch)


def _stop(runner):
    if hasattr(runner, "terminate"):
        runner.terminate()
        runner.join()
    else:
        runner.shutdown(wait=True, cancel_futures=True)


def _run_one(runner, api, *args):
    """Run rt.fault(*args) through ``api``; return its value or raise its error."""
    if api == "apply_async":
        return runner.apply_async(rt.fault, args).get(WAIT)
    if api == "map":
        # one failing item among good ones: the map fails with its error
        return runner.map_async(rt.fault_or_echo, [None, args, None], 1).get(WAIT)
    if api == "imap":
        it = runner.imap(rt.fault_or_echo, [None, args, None])
        return [it.next(WAIT) for _ in range(3)]
    if api == "executor.submit":
        return runner.submit(rt.fault, *args).result(WAIT)
    if api == "executor.map":
        return list(runner.map(rt.fault_or_echo, [None, args, None], timeout=WAIT))
    raise AssertionError(api)



def _still_serving(runner):
    """Both workers still run tasks (or were replaced): twenty results."""
    if hasattr(runner, "map_async"):
        got = runner.map_async(rt.increment, range(20), 1).get(WAIT)
    else:
        got = [f.result(WAIT) for f in [runner.submit(rt.increment, i)
                                         for i in range(20)]]
    assert got == list(range(1, 21))


@pytest.mark.parametrize("api", ["apply_async", "map", "imap",
                                 "executor.submit", "executor.map"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_the_tasks_error_and_the_pool_keeps_serving(dispatch, api, fault):
    runner = _build(dispatch, api)
    try:
        with pytest.raises(FAULTS[fault]) as info:
            _run_one(runner, api, fault)
        # exactly that type, not a subclass standing in for it
        assert type(info.value) is FAULTS[fault]
        # the worker's traceback travels as the cause, as multiprocessing's
        cause = info.value.__cause__
        assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
        assert "reliability_tasks.py" in str(cause)
        _still_serving(runner)
        # and the same fault again: nothing was left half-broken
        with pytest.raises(FAULTS[fault]):
            _run_one(runner, api, fault)
        _still_serving(runner)
    finally:
        _stop(runner)


@pytest.mark.parametrize("fault", ["sys.exit", "KeyboardInterrupt", "RecursionError"])
def test_fault_with_maxtasksperchild_replaces_workers_and_keeps_serving(dispatch, fault):
    import poolparty

    pool = poolparty.SubinterpreterPool(2, maxtasksperchild=1, dispatch=dispatch)
    try:
        for _ in range(3):
            with pytest.raises(FAULTS[fault]):
                pool.apply_async(rt.fault, (fault,)).get(WAIT)
            _still_serving(pool)
    finally:
        pool.terminate()
        pool.join()


def test_sys_exit_in_a_task_exits_a_caller_that_does_not_catch_it(tmp_path, dispatch):
    """Documented behaviour: SystemExit is re-raised in the caller (as by
    concurrent.futures.ProcessPoolExecutor), so an uncaught one ends the
    calling program with the task's exit code -- cleanly, pools stopped."""
    script = tmp_path / "exits.py"
    script.write_text(textwrap.dedent(f"""\
        import sys
        sys.path[:0] = {[os.path.dirname(__file__)]!r}
        import poolparty, reliability_tasks as rt
        pool = poolparty.SubinterpreterPool(2, dispatch={dispatch!r})
        print("before", pool.apply(rt.increment, (1,)), flush=True)
        pool.apply(rt.call_sys_exit, (7,))
        print("never printed")
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.stdout == "before 2\n"
    assert proc.returncode == 7
    assert "Fatal Python error" not in proc.stderr
    assert "Traceback" not in proc.stderr  # SystemExit exits quietly


# --- big and deep data ----------------------------------------------------------

def _enough_memory(gigabytes):
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return True
    return psutil.virtual_memory().available > gigabytes << 30


HUGE_MB = 300


@pytest.mark.skipif(not _enough_memory(4), reason="needs ~4 GB of free memory")
@pytest.mark.parametrize("api", ["pool", "executor"])
def test_huge_result_arrives_whole(dispatch, api):
    runner = _build(dispatch, "executor" if api == "executor" else "pool")
    try:
        if api == "pool":
            data = runner.apply_async(rt.huge_bytes, (HUGE_MB,)).get(WAIT * 2)
        else:
            data = runner.submit(rt.huge_bytes, HUGE_MB).result(WAIT * 2)
        assert len(data) == HUGE_MB << 20
        assert data[:4] == data[-4:] == b"ZZZZ"
        del data
        _still_serving(runner)
    finally:
        _stop(runner)


@pytest.mark.skipif(not _enough_memory(4), reason="needs ~4 GB of free memory")
def test_huge_argument_arrives_whole(pool):
    data = b"\x01" * (HUGE_MB << 20)
    assert pool.apply_async(rt.length, (data,)).get(WAIT * 2) == len(data)
    _still_serving(pool)


def test_result_too_deep_to_pickle_is_maybe_encoding_error(pool):
    with pytest.raises(multiprocessing.pool.MaybeEncodingError) as info:
        pool.apply_async(rt.nested_list, (100_000,)).get(WAIT)
    assert "RecursionError" in str(info.value)
    _still_serving(pool)


def test_argument_too_deep_to_pickle_fails_in_the_caller(pool):
    deep = rt.nested_list(100_000)
    with pytest.raises(RecursionError):  # at the call or at get(), as pickling goes
        pool.apply_async(rt.echo, (deep,)).get(WAIT)
    _still_serving(pool)


# --- tasks that cannot be unpickled in the worker -----------------------------

@pytest.mark.parametrize("what", ["function", "argument"])
@pytest.mark.parametrize("api", ["pool", "executor"])
def test_unpickling_failure_in_the_worker_reports_the_real_error(dispatch, api, what):
    runner = _build(dispatch, "executor" if api == "executor" else "pool")
    refuses = rt.RefusesUnpicklingInWorker()
    func, args = (refuses, (1,)) if what == "function" else (rt.echo, (refuses,))
    try:
        with pytest.raises(LookupError, match="refused to be unpickled"):
            if api == "pool":
                runner.apply_async(func, args).get(WAIT)
            else:
                runner.submit(func, *args).result(WAIT)
        _still_serving(runner)
    finally:
        _stop(runner)


# --- callbacks and results that fight back in the main interpreter -------------
#
# The collector thread delivers every result; if anything kills it, every
# pending and later result hangs for ever.  It survives callbacks raising
# Exception; these check the BaseExceptions that are not Exceptions.  The
# collector is shared by both designs (poolparty/_engine.py), so these run
# with the default design only.  While the bugs stand, each costs its
# bounded wait (SHORT) once.

SHORT = 5  # seconds; a trivial task's result takes milliseconds


# Each runs in a subprocess: a pool whose collector died can no longer be
# joined (on CPython 3.12 a worker may be left waiting for the collector
# to answer a main-first import, and terminate() cannot interrupt that
# wait), so it must not stay in the test process.
COLLECTOR = """\
import os, sys, threading
sys.path[:0] = {path!r}
import poolparty, reliability_tasks as rt
SHORT = {short}

def alive(runner):
    # True if results are still delivered (bounded wait)
    if hasattr(runner, "apply_async"):
        result = runner.apply_async(rt.increment, (41,))
        result.wait(SHORT)
        return result.ready() and result.get(0) == 42
    try:
        return runner.submit(rt.increment, 41).result(SHORT) == 42
    except TimeoutError:
        return False

def verdict(ok, what):
    print("ok" if ok else what, flush=True)
    os._exit(0)  # never wait for a pool that may be wedged

case = sys.argv[1]
if case.startswith("callback-"):
    pool = poolparty.SubinterpreterPool(2)
    ran = threading.Event()
    exc = SystemExit if case == "callback-SystemExit" else KeyboardInterrupt

    def callback(value):
        ran.set()
        raise exc("from a callback")

    first = pool.apply_async(rt.increment, (1,), callback=callback)
    if not ran.wait(60):
        verdict(False, "the callback never ran")
    # multiprocessing's ApplyResult runs the callback before it marks
    # itself ready: the result itself must still be delivered
    first.wait(SHORT)
    if not first.ready():
        verdict(False, "the result whose callback raised never became ready")
    verdict(alive(pool), "later results hang: the collector died")
elif case == "done-callback":
    executor = poolparty.SubinterpreterPoolExecutor(2)
    future = executor.submit(rt.increment, 1)
    future.add_done_callback(lambda f: sys.exit("from a done-callback"))
    if future.result(60) != 2:
        verdict(False, "wrong result")
    verdict(alive(executor), "later futures hang: the collector died")
elif case == "unpickle":
    pool = poolparty.SubinterpreterPool(2)
    result = pool.apply_async(rt.return_exits_when_unpickled)
    result.wait(SHORT)
    if not result.ready():
        verdict(False, "the result never arrived: the collector died")
    try:
        result.get(0)
        verdict(False, "no error")
    except BaseException:
        pass
    verdict(alive(pool), "later results hang: the collector died")
"""


def _collector_case(tmp_path, case):
    script = tmp_path / "collector.py"
    script.write_text(COLLECTOR.format(path=[os.path.dirname(__file__)], short=SHORT))
    proc = subprocess.run([sys.executable, str(script), case], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT)
    assert "Fatal Python error" not in proc.stderr, proc.stderr
    assert proc.stdout == "ok\n", (proc.stdout, proc.stderr[-2000:])


@pytest.mark.parametrize("exc", ["SystemExit", "KeyboardInterrupt"])
def test_callback_raising_base_exception_does_not_kill_the_pool(tmp_path, exc):
    _collector_case(tmp_path, "callback-" + exc)


def test_done_callback_raising_system_exit_does_not_kill_the_executor(tmp_path):
    _collector_case(tmp_path, "done-callback")


def test_result_whose_unpickling_raises_system_exit_fails_that_task_only(tmp_path):
    _collector_case(tmp_path, "unpickle")


TERMINATE_FROM_CALLBACK = """\
import os, sys, threading
sys.path[:0] = {path!r}
import poolparty, reliability_tasks as rt
pool = poolparty.SubinterpreterPool(2)
returned = threading.Event()

def stop(_):
    pool.terminate()
    returned.set()

pool.apply_async(rt.{func}, {callback}=stop)
if not returned.wait({short}):
    print("terminate() inside the {callback} never returned", flush=True)
    os._exit(1)  # the pool is wedged: do not wait for it at exit
joiner = threading.Thread(target=pool.join, daemon=True)
joiner.start()
joiner.join({short})
print("joined" if not joiner.is_alive() else "join() hangs", flush=True)
os._exit(0 if not joiner.is_alive() else 1)
"""


@pytest.mark.parametrize("callback", ["error_callback"])
def test_terminate_from_a_callback_does_not_deadlock(tmp_path, callback):
    # In a subprocess: the wedged pool must not stay in the test process.
    script = tmp_path / "terminate_in_callback.py"
    script.write_text(TERMINATE_FROM_CALLBACK.format(
        path=[os.path.dirname(__file__)], short=SHORT, callback=callback,
        func="raise_memory_error" if callback == "error_callback" else "increment"))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.stdout == "joined\n", (proc.stdout, proc.stderr)
    assert proc.returncode == 0


def test_close_from_an_error_callback_is_fine(pool):
    called = threading.Event()

    def close(_):
        pool.close()
        called.set()

    result = pool.apply_async(rt.raise_memory_error, error_callback=close)
    assert called.wait(WAIT)
    with pytest.raises(MemoryError):
        result.get(WAIT)
    pool.join()
