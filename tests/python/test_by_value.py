"""Lambdas, closures, nested functions and local classes travel by value.

pickle sends functions by name, so these fail in multiprocessing; poolparty
sends them with cloudpickle, pickled once in the caller and unpickled once
per worker.  Module-level functions keep the by-name path.
"""

import functools
import socket
import subprocess
import sys
import threading

import pytest

from poolparty import Interpreter, SubinterpreterPool, SubinterpreterPoolExecutor
from poolparty import _engine
from conftest import REFERENCE

# multiprocessing refuses all of this: nothing to compare against.
pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty-specific")


def make_adder(n):
    def add(x):
        return x + n

    return add


def make_counter():
    """A closure with state: counts the calls its copy has seen."""
    calls = []

    def count(_=None):
        calls.append(1)
        return len(calls)

    return count


def make_point_class():
    class Point:
        def __init__(self, x):
            self.x = x

        def __eq__(self, other):
            return type(other).__name__ == "Point" and other.x == self.x

    return Point


def call(func, *args):
    return func(*args)


class CountsPickles:
    """Counts, in the caller, how often it has been pickled."""

    pickled = 0

    def __reduce__(self):
        CountsPickles.pickled += 1
        return (CountsPickles, ())


def test_pool_runs_lambdas_closures_and_local_classes(make_pool):
    with make_pool(2) as pool:
        assert pool.map(lambda x: x * x, range(6)) == [0, 1, 4, 9, 16, 25]
        assert pool.map(make_adder(10), range(3), chunksize=1) == [10, 11, 12]
        assert pool.apply(make_adder(1), (41,)) == 42
        Point = make_point_class()
        assert pool.map(Point, [1, 2]) == [Point(1), Point(2)]
        assert pool.starmap(lambda a, b: a - b, [(5, 2), (9, 4)]) == [3, 5]
        got = pool.apply_async(lambda: "async").get(60)
        assert got == "async"
        assert list(pool.imap(lambda x: -x, range(3))) == [0, -1, -2]


def test_executor_runs_lambdas_and_closures(make_executor):
    with make_executor(2) as executor:
        assert executor.submit(lambda: 42).result() == 42
        assert executor.submit(make_adder(2), 40).result() == 42
        assert list(executor.map(lambda x: x + 1, range(4))) == [1, 2, 3, 4]
        assert list(executor.map(lambda a, b: a * b, [2, 3], [4, 5])) == [8, 15]
        assert executor.submit(sorted, [1, 3, 2], key=lambda v: -v).result() == [3, 2, 1]


def test_a_lambda_initializer(make_pool, make_executor):
    def init():
        import sys

        sys.poolparty_test_initialized = 42

    def read(_=None):
        import sys

        return sys.poolparty_test_initialized

    with make_pool(2, initializer=init) as pool:
        assert pool.map(read, range(4), chunksize=1) == [42] * 4
    with make_executor(1, initializer=lambda: init()) as executor:
        assert executor.submit(read).result() == 42


def test_interpreter_call_runs_lambdas_and_closures():
    with Interpreter() as interp:
        assert interp.call(lambda: 42) == 42
        assert interp.call(make_adder(5), 1) == 6
        assert interp.call(make_point_class(), 3).x == 3


def test_arguments_and_results_that_pickle_refuses_travel_by_value(make_pool):
    with make_pool(1) as pool:
        # A lambda as an argument, as a keyword argument and as an item.
        assert pool.apply(sorted, ([1, 3, 2],), {"key": lambda v: -v}) == [3, 2, 1]
        assert pool.map(call, [lambda: 1, lambda: 2], chunksize=1) == [1, 2]
        assert pool.starmap(call, [(lambda: 1,), (make_adder(1), 2)]) == [1, 3]
        # A lambda and an instance of a local class as results.
        assert pool.apply(lambda: (lambda: 7))() == 7
        assert pool.apply(make_point_class(), (4,)).x == 4


def test_a_by_value_function_is_unpickled_once_per_worker(make_pool):
    counter = make_counter()
    with make_pool(1) as pool:
        # One worker, one copy: its closure state carries on between
        # tasks (an unpickled-per-task copy would answer 1 every time).
        assert pool.map(counter, range(20), chunksize=1) == list(range(1, 21))
        # Another by-value function between two uses of the first.
        assert pool.apply(lambda: "other") == "other"
        assert pool.apply(counter) == 21


def test_a_by_value_function_is_pickled_once_in_the_caller(make_pool, make_executor):
    marker = CountsPickles()

    def task(x):
        return (x, type(marker).__name__)

    before = CountsPickles.pickled
    with make_pool(2) as pool:
        assert pool.map(task, range(10), chunksize=1)[3] == (3, "CountsPickles")
        assert [pool.apply(task, (i,))[0] for i in range(5)] == list(range(5))
    with make_executor(2) as executor:
        futures = [executor.submit(task, i) for i in range(10)]
        assert [f.result()[0] for f in futures] == list(range(10))
    assert CountsPickles.pickled - before == 1


def test_module_level_functions_keep_the_by_name_path():
    data, flags = _engine.function_pickle(make_adder)
    assert data == b"test_by_value\0make_adder"
    assert flags == _engine.REUSE_FUNC | _engine.FUNC_BY_NAME
    data, flags = _engine.function_pickle(lambda: 1)
    assert data.startswith(b"\0v")
    assert flags == _engine.REUSE_FUNC | _engine.FUNC_BY_NAME


def test_partials_of_lambdas_are_fresh_per_task_as_other_callables(make_pool):
    task = functools.partial(lambda bucket, x: bucket.append(x) or len(bucket), [])
    with make_pool(1) as pool:
        assert pool.map(task, range(5), chunksize=1) == [1] * 5


def _with_lock():
    lock = threading.Lock()
    return lambda: lock


def _with_generator():
    numbers = (i for i in range(3))
    return lambda: next(numbers)


def _with_socket():
    sock = socket.socket()
    sock.close()
    return lambda: sock.fileno()


@pytest.mark.parametrize("make, kind", [
    (_with_lock, "_thread.lock"),
    (_with_generator, "generator"),
    (_with_socket, "socket.socket"),
])
def test_what_cloudpickle_cannot_send_fails_that_task(make_pool, make_executor,
                                                      make, kind):
    func = make()
    with make_pool(2) as pool:
        with pytest.raises(TypeError, match="cannot pickle") as caught:
            pool.apply(func)
        notes = "".join(getattr(caught.value, "__notes__", []))
        assert "closure variable" in notes and kind in notes, notes
        with pytest.raises(TypeError, match="cannot pickle"):
            pool.map(func, [1])
        assert pool.map(make_adder(1), [1, 2]) == [2, 3]  # still working
    with make_executor(1) as executor:
        with pytest.raises(TypeError, match="cannot pickle"):
            executor.submit(func).result()
        with pytest.raises(TypeError, match="cannot pickle"):
            list(executor.map(func, [1]))
        assert executor.submit(lambda: "ok").result() == "ok"
    with Interpreter() as interp:
        with pytest.raises(TypeError, match="cannot pickle"):
            interp.call(func)
        assert interp.call(lambda: "ok") == "ok"


def test_a_module_workers_cannot_import_is_named(tmp_path, make_pool, monkeypatch):
    with make_pool(1) as pool:
        # Made after the pool: its workers have the older sys.path.
        (tmp_path / "only_in_caller.py").write_text(
            "def helper(x):\n"
            "    return x * 2\n"
            "def make():\n"
            "    return lambda x: helper(x)\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        import only_in_caller

        with pytest.raises(ImportError) as caught:
            pool.apply(only_in_caller.make(), (1,))
        message = str(caught.value)
        assert "'only_in_caller'" in message, message
        assert "cannot be imported in this worker" in message
        assert "No module named" in message  # and why
        assert pool.apply(lambda: 1) == 1


def test_a_refused_result_of_a_by_name_function_does_not_crash_the_exit(tmp_path):
    # 3.12.1: a worker that imported cloudpickle only to retry a result
    # pickle refused (a lock) aborted the whole process at exit.
    script = tmp_path / "refused_result.py"
    script.write_text(
        "import threading\n"
        "from poolparty import SubinterpreterPool\n"
        "def make_lock(x):\n"
        "    return threading.Lock()\n"
        "if __name__ == '__main__':\n"
        "    with SubinterpreterPool(1) as pool:\n"
        "        try:\n"
        "            pool.map(make_lock, [1])\n"
        "        except Exception as exc:\n"
        "            print(type(exc).__name__)\n"
        "        print(pool.map(abs, [-1]))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["MaybeEncodingError", "[1]"], done.stdout
