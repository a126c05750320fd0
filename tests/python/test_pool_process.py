"""Whole-program behaviour, checked by running small scripts in a subprocess:
functions from __main__, interpreter exit with a live pool, and Ctrl-C."""

import signal
import subprocess
import sys
import time

import pytest

from conftest import SUBPROCESS_TIMEOUT, run_script, wait_until_exists


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def assert_clean_exit(proc):
    assert "Fatal Python error" not in proc.stderr, proc.stderr
    assert "Segmentation fault" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, "rc=%s\nstdout:\n%s\nstderr:\n%s" % (
        proc.returncode,
        proc.stdout,
        proc.stderr,
    )


MAIN_SCRIPT = """\
import sys

LOADED_AS = __name__


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def names(_):
    # globals of the main script module as seen inside a worker
    return (__name__, LOADED_AS)


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def make_point(i):
    return Point(i, -i)


if __name__ == "__main__":
    pool = make_pool(2)
    try:
        print("FIB", pool.map(fib, range(20)))
        print("APPLY", pool.apply(fib, (15,)))
        print("NAMES", sorted(set(pool.map(names, range(4), 1))))
        if len(sys.argv) > 1 and sys.argv[1] == "classes":
            points = pool.map(make_point, range(3))
            print("POINTS", [(type(p).__name__, p.x, p.y) for p in points])
    finally:
        pool.close()
        pool.join()
    print("DONE")
"""


def _lines(stdout, tag):
    return [line[len(tag) + 1:] for line in stdout.splitlines() if line.startswith(tag + " ")]


@pytest.mark.timeout(120)
def test_functions_from_main_script(write_script):
    proc = run_script(write_script(MAIN_SCRIPT))
    assert_clean_exit(proc)
    assert _lines(proc.stdout, "FIB") == [repr([fib(i) for i in range(20)])]
    assert _lines(proc.stdout, "APPLY") == [repr(fib(15))]
    assert proc.stdout.splitlines()[-1] == "DONE"


@pytest.mark.timeout(120)
def test_functions_from_a_main_script_whose_path_is_not_utf8(write_script):
    # b"\xff" in a file name decodes to a lone surrogate, which workers
    # must get back intact to run the script.
    proc = run_script(write_script(MAIN_SCRIPT, name="scr\udcffipt.py"))
    assert_clean_exit(proc)
    assert _lines(proc.stdout, "FIB") == [repr([fib(i) for i in range(20)])]


@pytest.mark.timeout(120)
def test_main_script_module_code_runs_in_workers_as_mp_main(write_script):
    proc = run_script(write_script(MAIN_SCRIPT))
    assert_clean_exit(proc)
    # module-level code outside the guard ran in the workers, under the name
    # "__mp_main__" (so the guarded block did not run there)
    assert _lines(proc.stdout, "NAMES") == [repr([("__mp_main__", "__mp_main__")])]
    assert len(_lines(proc.stdout, "FIB")) == 1


@pytest.mark.timeout(120)
def test_instances_of_main_script_classes_round_trip(write_script):
    proc = run_script(write_script(MAIN_SCRIPT), "classes")
    assert_clean_exit(proc)
    assert _lines(proc.stdout, "POINTS") == [
        repr([("Point", 0, 0), ("Point", 1, -1), ("Point", 2, -2)])
    ]


EXIT_SCRIPT = """\
import time


def work(x):
    return x * x


def nap(x):
    time.sleep(0.02)
    return x


if __name__ == "__main__":
    import sys

    pool = make_pool(2)
    print("RESULT", pool.apply(work, (12,)), flush=True)
    if sys.argv[1] == "busy":
        pending = pool.map_async(nap, range(200), 1)
        more = [pool.apply_async(work, (i,)) for i in range(100)]
    elif sys.argv[1] == "dropped":
        pool.map_async(work, range(1000))
        del pool
    print("EXITING", flush=True)
    # no close(), join() or terminate(): the interpreter just exits
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["idle", "busy", "dropped"])
def test_interpreter_exit_with_live_pool(write_script, mode):
    proc = run_script(write_script(EXIT_SCRIPT), mode, timeout=SUBPROCESS_TIMEOUT)
    assert_clean_exit(proc)
    assert proc.stdout.splitlines() == ["RESULT 144", "EXITING"]


CTRL_C_SCRIPT = """\
import os
import sys
import time


def slow(arg):
    marker, i = arg
    if i == 0:
        open(marker, "w").close()
    time.sleep(0.05)
    return i


if __name__ == "__main__":
    marker = sys.argv[1]
    with make_pool(2) as pool:
        try:
            pool.map(slow, [(marker, i) for i in range(4000)], 1)
            print("FINISHED", flush=True)
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
    print("DONE", flush=True)
"""


@pytest.mark.timeout(150)
def test_ctrl_c_interrupts_map(write_script, tmp_path):
    script = write_script(CTRL_C_SCRIPT)
    marker = str(tmp_path / "task-started")
    proc = subprocess.Popen(
        [sys.executable, str(script), marker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    try:
        # the map is running once a worker has started the first task
        wait_until_exists(marker, timeout=SUBPROCESS_TIMEOUT)
        time.sleep(0.2)  # let the main thread settle into waiting for results
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Fatal Python error" not in stderr, stderr
    assert stdout.splitlines() == ["INTERRUPTED", "DONE"], (stdout, stderr)
    assert proc.returncode == 0, stderr

