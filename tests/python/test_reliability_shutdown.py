"""Reliability: interpreter exit, garbage collection, Ctrl-C, fork().

Everything that could kill or hang a process runs in a subprocess with a
timeout, and is judged by its exit status, its output, and the absence
of "Fatal Python error" in its stderr.
"""

import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import reliability_tasks as rt
from conftest import (
    FREE_THREADED,
    REFERENCE,
    SUBPROCESS_TIMEOUT,
    UNDER_SANITIZER,
    recording_warnings,
    wait_until_exists,
)

pytestmark = [
    pytest.mark.skipif(REFERENCE, reason="poolparty's own shutdown"),
    pytest.mark.timeout(150),
]

HERE = os.path.dirname(os.path.abspath(__file__))
# Under ASan (scripts/sanitize.sh, UNDER_SANITIZER) the
# sys._current_frames() crash below is not certain: with
# PYTHONMALLOC=malloc the freed frames may survive.
HEADER = f"""\
import os, sys, time
sys.path[:0] = [{HERE!r}]
import poolparty
import reliability_tasks as rt
"""


def _script(tmp_path, body, name="script.py"):
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def _run(path, *args):
    return subprocess.run([sys.executable, str(path), *map(str, args)],
                          capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, cwd=str(path.parent))


def _assert_clean(proc):
    assert "Fatal Python error" not in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, (proc.returncode, proc.stderr)


# --- interpreter exit with live pools -------------------------------------------

EXIT_WITH_POOLS = """\
if __name__ == "__main__":
    keep = []
    for dispatch in ("queue", "call"):
        idle = poolparty.SubinterpreterPool(2, dispatch=dispatch)
        busy = poolparty.SubinterpreterPool(2, dispatch=dispatch)
        executor = poolparty.SubinterpreterPoolExecutor(2, dispatch=dispatch)
        assert idle.apply(rt.increment, (1,)) == 2
        # busy: a long Python-level task running, more queued
        busy.apply_async(rt.spin_until, (sys.argv[1] + dispatch, "/nonexistent/x", 60))
        busy.map_async(rt.increment, range(10_000), 1)
        # the executor's queued work is finished at exit, as
        # concurrent.futures does
        futures = [executor.submit(rt.increment, i) for i in range(200)]
        keep += [idle, busy, executor, futures]
    # one more that is only referenced by a cycle
    cycle = [poolparty.SubinterpreterPool(1)]
    cycle.append(cycle)
    del cycle
    for dispatch in ("queue", "call"):
        rt.wait_for(sys.argv[1] + dispatch)
    print("EXITING", flush=True)
"""


def test_interpreter_exit_with_several_live_pools(tmp_path):
    proc = _run(_script(tmp_path, EXIT_WITH_POOLS), tmp_path / "busy-")
    _assert_clean(proc)
    assert proc.stdout == "EXITING\n"


EXIT_WHILE_ANOTHER_THREAD_STOPS = """\
import threading
if __name__ == "__main__":
    pool = poolparty.SubinterpreterPool(2, dispatch=sys.argv[1])
    # tasks blocked in C, which terminate() cannot cut short
    pool.map_async(rt.sleep_then_star, [(0.5, i) for i in range(4)], 1)
    time.sleep(0.1)
    threading.Thread(target=getattr(pool, sys.argv[2]), daemon=True).start()
    time.sleep(0.05)
    print("EXITING", flush=True)
"""


@pytest.mark.parametrize("stop", ["terminate", "close"])
def test_interpreter_exit_while_another_thread_stops_the_pool(tmp_path, dispatch,
                                                              stop):
    # Once another thread has started the pool's finalizer, exit used to
    # find nothing left to stop and let CPython finalize while the workers
    # still held their subinterpreters: "Fatal Python error:
    # PyInterpreterState_Delete: remaining subinterpreters".
    proc = _run(_script(tmp_path, EXIT_WHILE_ANOTHER_THREAD_STOPS), dispatch,
                stop)
    _assert_clean(proc)
    assert proc.stdout == "EXITING\n"


WORKERS_WITH_THREADING = """\
import concurrent.futures
import threading


def noop(x):
    return x


def leave_a_thread(seconds):
    threading.Thread(target=time.sleep, args=(seconds,)).start()
    return seconds


if __name__ == "__main__":
    with poolparty.SubinterpreterPool(2, dispatch=sys.argv[1]) as pool:
        print(pool.map(noop, range(4)), flush=True)
    executor = poolparty.SubinterpreterPoolExecutor(2, dispatch=sys.argv[1])
    print(executor.submit(noop, 5).result(), flush=True)
    executor.shutdown()
    pool = poolparty.SubinterpreterPool(1, dispatch=sys.argv[1])
    pool.apply(leave_a_thread, (0.3,))
    pool.close()
    started = time.monotonic()
    pool.join()  # ending the interpreter waits for the task's thread
    print("waited", time.monotonic() - started >= 0.2, flush=True)
"""


def test_workers_that_imported_threading_end_quietly(tmp_path, dispatch):
    # Ending a worker joins the threads its tasks left behind.  On 3.13 a
    # task that makes a Thread also makes a _DummyThread for the worker's
    # own thread (so did our join code once, through current_thread()),
    # whose clean-up failed at the interpreter's finalization: "Exception
    # ignored in: <function _DeleteDummyThreadOnDel.__del__ ...>".
    proc = _run(_script(tmp_path, WORKERS_WITH_THREADING), dispatch)
    _assert_clean(proc)
    assert proc.stdout.splitlines() == ["[0, 1, 2, 3]", "5", "waited True"]


# --- garbage collection of an unclosed pool ---------------------------------------

def _thread_counts():
    return threading.active_count(), len(os.listdir("/proc/self/task"))


def _settle(baseline, bound=30.0):
    """Poll (bounded) until the thread counts are back to ``baseline``."""
    deadline = time.monotonic() + bound
    while _thread_counts() != baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    return _thread_counts()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc")
@pytest.mark.parametrize("kind", ["pool", "executor"])
def test_garbage_collected_pool_stops_its_workers(dispatch, kind):
    gc.collect()
    baseline = _settle(_thread_counts())
    with recording_warnings() as (caught, unraisable):
        for _ in range(3):
            if kind == "executor":
                runner = poolparty_module().SubinterpreterPoolExecutor(
                    2, dispatch=dispatch)
                assert runner.submit(rt.increment, 1).result(60) == 2
            else:
                runner = poolparty_module().SubinterpreterPool(2, dispatch=dispatch)
                assert runner.apply(rt.increment, (1,)) == 2
            assert _thread_counts() != baseline  # it did start threads
            del runner
            gc.collect()
            # A recorded warning keeps its source (the pool) alive.
            for warning in caught:
                warning.source = None
            gc.collect()
            assert _settle(baseline) == baseline
    assert unraisable == []
    # As multiprocessing.Pool: a running pool collected unclosed warns;
    # executors do not (nor do the stdlib's).
    warned = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(warned) == (3 if kind == "pool" else 0)
    assert all("unclosed running multiprocessing pool" in str(w.message)
               for w in warned)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc")
def test_dropped_busy_pool_stops_once_its_work_is_done(tmp_path):
    gc.collect()
    baseline = _settle(_thread_counts())
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    pool = poolparty_module().SubinterpreterPool(2)
    pool.apply_async(rt.touch_then_wait, (started, release, 1, 60))
    pool.map_async(rt.increment, range(100), 1)
    wait_until_exists(started)
    del pool  # pending results keep it alive until they are delivered
    gc.collect()
    open(release, "w").close()
    deadline = time.monotonic() + 5
    while _thread_counts() != baseline and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
    leftover = [t.name for t in threading.enumerate() if "Subinterpreter" in t.name]
    assert _thread_counts() == baseline, leftover


def poolparty_module():
    import poolparty

    return poolparty


# --- Ctrl-C -----------------------------------------------------------------------

CTRL_C = """\
import threading

def main(dispatch, where, started):
    release = started + ".release"
    if where == "executor.result":
        with poolparty.SubinterpreterPoolExecutor(2, dispatch=dispatch) as ex:
            try:
                ex.submit(rt.touch_then_wait, started, release, 1, 60).result()
                print("FINISHED", flush=True)
            except KeyboardInterrupt:
                print("INTERRUPTED", flush=True)
                ex.shutdown(wait=False, cancel_futures=True)
                open(release, "w").close()  # let the running task end
        return
    pool = poolparty.SubinterpreterPool(2, dispatch=dispatch)
    try:
        if where == "map":
            pool.map(rt.touch_then_wait_args, [(started, release, i, 60) for i in range(4)], 1)
        elif where == "starmap":
            pool.starmap(rt.touch_then_wait, [(started, release, k, 60) for k in range(4)], 1)
        elif where == "get":
            pool.apply_async(rt.touch_then_wait, (started, release, 1, 60)).get()
        elif where == "imap":
            for _ in pool.imap(rt.touch_then_wait_args, [(started, release, 1, 60)]):
                pass
        elif where == "join":
            pool.apply_async(rt.touch_then_wait, (started, release, 1, 60))
            pool.close()
            pool.join()
        print("FINISHED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    finally:
        pool.terminate()  # interrupts the Python-level wait at once
        pool.join()

if __name__ == "__main__":
    main(*sys.argv[1:])
    print("DONE", flush=True)
"""


def _interrupt(script, started, *args, settle=0.2):
    proc = subprocess.Popen([sys.executable, str(script), *args, started],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(script.parent))
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while not os.path.exists(started):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                pytest.fail(f"the task never started: {out!r} {err!r}")
            time.sleep(0.005)
        time.sleep(settle)  # let the main thread settle into its wait
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


@pytest.mark.parametrize("where", ["map", "starmap", "get", "imap", "join",
                                   "executor.result"])
def test_ctrl_c_while_waiting(tmp_path, dispatch, where):
    script = _script(tmp_path, CTRL_C)
    code, out, err = _interrupt(script, str(tmp_path / "started"), dispatch, where)
    assert "Fatal Python error" not in err, err
    assert out == "INTERRUPTED\nDONE\n", (out, err)
    assert code == 0, err


CTRL_C_AT_EXIT = """\
if __name__ == "__main__":
    dispatch, kind, started = sys.argv[1:]
    if kind == "executor-draining":
        # at exit the interpreter waits for the running task (drain)
        ex = poolparty.SubinterpreterPoolExecutor(1, dispatch=dispatch)
        ex.submit(rt.spin_until, started, started + ".end", 30)
    else:
        # at exit terminate() waits for the task blocked in C
        pool = poolparty.SubinterpreterPool(1, dispatch=dispatch)
        pool.apply_async(rt.sleep_in_c, (started, 10, started + ".end"))
    rt.wait_for(started)
    print("EXITING", flush=True)
"""


@pytest.mark.parametrize("kind", ["executor-draining", "pool-blocked-in-c"])
def test_ctrl_c_while_exiting_with_a_running_task(tmp_path, dispatch, kind):
    script = _script(tmp_path, CTRL_C_AT_EXIT)
    code, out, err = _interrupt(script, str(tmp_path / "started"), dispatch, kind,
                                settle=0.5)
    assert out == "EXITING\n"
    assert "Fatal Python error" not in err, err
    assert code in (0, 1, -signal.SIGINT, 128 + signal.SIGINT), (code, err)


# --- fork() ---------------------------------------------------------------------------

FORK = """\
import signal

def reap(pid, bound=5.0):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"

if __name__ == "__main__":
    dispatch, state = sys.argv[1:3]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    pool = poolparty.SubinterpreterPool(workers, dispatch=dispatch)
    assert pool.apply(rt.increment, (1,)) == 2
    if state == "busy":
        pending = pool.starmap_async(rt.sleep_then, [(0.01, i) for i in range(200)], 1)
    elif state == "joined":
        pool.close()
        pool.join()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            print("child", 40 + 2, flush=True)
        finally:
            os._exit(0)
    print("child exit", reap(pid), flush=True)
    if state != "joined":
        assert pool.apply(rt.increment, (2,)) == 3  # the parent is unharmed
        pool.terminate()
        pool.join()
    print("parent done", flush=True)
"""


def _fork(tmp_path, *args):
    proc = _run(_script(tmp_path, FORK), *args)
    assert "parent done" in proc.stdout, (proc.stdout, proc.stderr)
    return proc


# CPython 3.12-3.15 crash or hang the child in PyOS_AfterFork_Child while
# any subinterpreter is alive (python/cpython#101437, #139759: 3.13
# "Fatal Python error: PyThreadState_Get", 3.12 a deadlock or SIGSEGV),
# before any Python code runs there.  poolparty's fork guard ends such a
# child first (src/module/fork_guard.c).
FORK_CHILD_EXIT = 70
FORK_CHILD_MESSAGE = "poolparty: this process was forked (os.fork) while subinterpreters"


@pytest.mark.parametrize("state", ["busy", "idle"])
def test_fork_with_a_live_pool_child_exits_at_once_with_a_message(tmp_path, dispatch,
                                                                  state):
    proc = _fork(tmp_path, dispatch, state)
    assert f"child exit {FORK_CHILD_EXIT}\n" in proc.stdout, (proc.stdout, proc.stderr)
    assert "child 42" not in proc.stdout
    assert proc.stderr.count(FORK_CHILD_MESSAGE) == 1, proc.stderr
    assert "Fatal Python error" not in proc.stderr, proc.stderr


def test_fork_with_a_live_pool_warns_in_the_parent(tmp_path, dispatch):
    # The parent is told, at the os.fork() call, what will happen and
    # what to do instead.
    proc = _fork(tmp_path, dispatch, "idle")
    assert "RuntimeWarning: os.fork() with 1 poolparty pool(s)" in proc.stderr
    assert "the child process exits at once" in proc.stderr
    assert "close and join pools before forking" in proc.stderr
    assert "pid = os.fork()" in proc.stderr  # points at the caller's line


@pytest.mark.parametrize("workers", [2, 8])
def test_fork_after_the_pool_is_joined_is_fine(tmp_path, dispatch, workers):
    # 8: a pool big enough to start from a template interpreter, which
    # must be gone too (src/core/interp.c, "the site template").
    proc = _fork(tmp_path, dispatch, "joined", workers)
    assert proc.stdout.splitlines() == ["child 42", "child exit 0", "parent done"]
    assert "Fatal Python error" not in proc.stderr
    assert "RuntimeWarning" not in proc.stderr


def test_subprocess_with_a_live_pool_is_fine(pool):
    # fork+exec runs no Python in the child: unaffected by the fork bug.
    busy = pool.starmap_async(rt.sleep_then, [(0.01, i) for i in range(50)], 1)
    out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True,
                         text=True, timeout=SUBPROCESS_TIMEOUT)
    assert out.stdout == "42\n" and out.returncode == 0
    assert busy.get(60) == list(range(50))


# --- CPython's hazard: sys._current_frames() ------------------------------------------

CURRENT_FRAMES = """\
def spin(n):
    x = 0
    for i in range(n):
        x += i
    return x

if __name__ == "__main__":
    with poolparty.SubinterpreterPool(2) as pool:
        # Let both workers finish starting: the hazard documented here is
        # about tasks running.  (While a worker is still being created it
        # crashes too, elsewhere: in Py_NewInterpreterFromConfig, seen
        # under ASan now that workers start one at a time.)
        time.sleep(2)
        result = pool.map_async(spin, [3_000_000] * 8, 1)
        calls = 0
        while not result.ready():
            sys._current_frames()
            calls += 1
    print("survived", calls, flush=True)
"""


# Measured to crash on these (3.13.5: 5 of 5 runs); the free-threaded
# 3.13.5t may not.
CURRENT_FRAMES_CRASHES = (sys.version_info[:3] in {(3, 12, 1), (3, 13, 0), (3, 13, 5)}
                          and not FREE_THREADED)


@pytest.mark.xfail(strict=CURRENT_FRAMES_CRASHES and not UNDER_SANITIZER, reason=(
    "CPython 3.12.1/3.13.0/3.13.5 BUG, documented in docs/reliability.md: "
    "sys._current_frames() while subinterpreters run Python builds frame "
    "objects for frames running under other GILs and the process dies "
    "('free(): invalid pointer' SIGABRT, or SIGSEGV; 10 of 10 runs on 2 "
    "cores).  pytest-timeout's and faulthandler's stack dumps do the same"))
def test_sys_current_frames_while_tasks_run_does_not_crash(tmp_path):
    # In a subprocess, so that only the subprocess dies.
    script = tmp_path / "current_frames.py"
    script.write_text(textwrap.dedent(f"""\
        import sys, time
        sys.path[:0] = [{HERE!r}]
        import poolparty
    """) + CURRENT_FRAMES)
    env = None
    if "log_path=" in os.environ.get("ASAN_OPTIONS", ""):
        # Under scripts/sanitize.sh: this crash is on purpose, and where it
        # strikes varies (a frame, a dict, an interned string freed by the
        # wrong interpreter), so its report goes to a file that
        # tools/sanitizer_report.py counts as the expected hazard.
        env = dict(os.environ, ASAN_OPTIONS=re.sub(
            r"log_path=([^:]*)/asan", r"log_path=\1/asan-expected-current-frames",
            os.environ["ASAN_OPTIONS"]))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT,
                          cwd=str(script.parent), env=env)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert proc.stdout.startswith("survived")
