"""Process pools beside a live poolparty pool (issue 18).

CPython 3.12-3.15 crash or hang the child of os.fork() while any
subinterpreter is alive.  poolparty makes multiprocessing's default start
method 'forkserver' when the program has not chosen one, and makes a child
of os.fork() exit at once with a message (src/module/fork_guard.c).  Each
case runs in its own process, with a fresh multiprocessing, and is judged
by its results, its stderr, and the processes it leaves behind.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import REFERENCE, SUBPROCESS_TIMEOUT

pytestmark = [
    pytest.mark.skipif(REFERENCE, reason="poolparty's own fork handling"),
    pytest.mark.timeout(120),
]

FORK_CHILD_EXIT = 70

HEADER = """\
import json, multiprocessing, os, sys, time
import poolparty


def square(x):
    return x * x


def put_square(queue, x):
    queue.put(x * x)


def children():
    import psutil  # here: the workers import this script, and psutil
                   # does not load in subinterpreters
    return [p.pid for p in psutil.Process().children(recursive=True)]

"""

# What each client does with multiprocessing's defaults: print its
# results as JSON, within seconds (every wait is bounded).
CLIENTS = {
    "mp_pool": """\
        with multiprocessing.Pool(2) as procs:
            result = procs.map_async(square, range(8)).get(timeout=30)
    """,
    "executor": """\
        import concurrent.futures
        with concurrent.futures.ProcessPoolExecutor(2) as procs:
            result = list(procs.map(square, range(8), timeout=30))
    """,
    "process": """\
        queue = multiprocessing.Queue()
        workers = [multiprocessing.Process(target=put_square, args=(queue, x))
                   for x in range(8)]
        for w in workers:
            w.start()
        result = sorted(queue.get(timeout=30) for _ in workers)
        for w in workers:
            w.join(30)
        assert [w.exitcode for w in workers] == [0] * 8, [w.exitcode for w in workers]
    """,
    "joblib": """\
        import joblib
        result = joblib.Parallel(n_jobs=2, timeout=30)(
            joblib.delayed(square)(x) for x in range(8))
    """,
}

LIVE_POOL = """\
if __name__ == "__main__":
    with poolparty.SubinterpreterPool(2) as pool:
        assert pool.map(square, range(4)) == [0, 1, 4, 9]
        busy = pool.map_async(square, range(1000), 1)
        start = time.monotonic()
{client}
        took = time.monotonic() - start
        assert busy.get(30) == [x * x for x in range(1000)]
        print(json.dumps({{"result": result, "took": took,
                          "method": multiprocessing.get_start_method(),
                          "children": children()}}), flush=True)
"""


def _run(tmp_path, source):
    path = tmp_path / "script.py"
    path.write_text(HEADER + source)
    return subprocess.run([sys.executable, str(path)], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT, cwd=str(tmp_path))


def _gone(pids, bound=10.0):
    """Pids (of a process that exited) still alive after `bound` seconds."""
    deadline = time.monotonic() + bound
    while True:
        alive = [pid for pid in pids if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_default_process_pools_work_beside_a_live_pool(tmp_path, client):
    body = textwrap.indent(textwrap.dedent(CLIENTS[client]), " " * 8)
    proc = _run(tmp_path, LIVE_POOL.format(client=body))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["result"] == [x * x for x in range(8)]
    # 3.12/3.13 default to 'fork' on Linux; a program that did not
    # choose gets forkserver's children instead (loky uses its own).
    assert report["method"] == "forkserver"
    assert "RuntimeWarning" not in proc.stderr, proc.stderr
    assert "Fatal Python error" not in proc.stderr, proc.stderr
    assert "poolparty: this process was forked" not in proc.stderr, proc.stderr
    # No process left behind: every descendant the script had (workers,
    # the forkserver, resource trackers) ended with it.
    assert _gone(report["children"]) == []


CHOSEN_LATER = """\
if __name__ == "__main__":
    with poolparty.SubinterpreterPool(1) as pool:
        assert multiprocessing.get_start_method(allow_none=True) is None
        multiprocessing.set_start_method("spawn")  # still the program's to choose
        with multiprocessing.Pool(1) as procs:
            print(multiprocessing.get_start_method(), procs.apply(square, (7,)), flush=True)
"""


def test_the_program_can_still_choose_a_start_method(tmp_path):
    proc = _run(tmp_path, CHOSEN_LATER)
    assert (proc.returncode, proc.stdout) == (0, "spawn 49\n"), proc.stderr


CHOSE_FORK = """\
import concurrent.futures
from concurrent.futures.process import BrokenProcessPool

if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    with poolparty.SubinterpreterPool(2) as pool:
        assert pool.apply(square, (3,)) == 9
        out = {"method": multiprocessing.get_start_method()}
        start = time.monotonic()
        worker = multiprocessing.Process(target=square, args=(2,))
        worker.start()
        worker.join(30)
        out["process_exitcode"] = worker.exitcode
        try:
            with concurrent.futures.ProcessPoolExecutor(2) as procs:
                out["executor"] = list(procs.map(square, range(4), timeout=30))
        except BrokenProcessPool:
            out["executor"] = "BrokenProcessPool"
        out["took"] = time.monotonic() - start
        assert pool.apply(square, (4,)) == 16  # the parent's pool is unharmed
        out["children"] = children()
        print(json.dumps(out), flush=True)
"""


def test_a_program_that_chose_fork_keeps_it_and_is_told(tmp_path):
    proc = _run(tmp_path, CHOSE_FORK)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["method"] == "fork"
    # Children exit at once instead of crashing or hanging.
    assert out["process_exitcode"] == FORK_CHILD_EXIT
    assert out["executor"] == "BrokenProcessPool"
    assert "Fatal Python error" not in proc.stderr, proc.stderr
    assert "poolparty: this process was forked (os.fork)" in proc.stderr
    # The warning says what happens and what to do, at the program's line.
    assert "'fork' start method, chosen by this program" in proc.stderr
    assert "get_context('forkserver')" in proc.stderr
    assert "worker.start()" in proc.stderr, proc.stderr
    assert _gone(out["children"]) == []
