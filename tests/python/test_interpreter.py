"""poolparty.Interpreter: one own-GIL subinterpreter, called into directly."""

import pickle
import sys
import threading

import pytest

import hazard_tasks
import tasks
from poolparty import Interpreter, RemoteError


@pytest.fixture
def interp():
    with Interpreter() as interp:
        yield interp


def test_call_returns_the_result(interp):
    assert interp.call(divmod, 17, 5) == (3, 2)
    assert interp.call(tasks.square, 12) == 144
    assert interp.call(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]


def test_it_is_a_separate_interpreter(interp):
    # sys.modules is per interpreter: the subinterpreter has its own.
    assert interp.call(hazard_tasks.version) == sys.version_info[:2]
    assert interp.id is not None and interp.id > 0
    main_id = id(sys.modules)
    assert interp.call(tasks.modules_id) != main_id


def test_exec_runs_in_its_main_namespace(interp):
    interp.exec("x = 6 * 7")
    interp.exec("assert x == 42")
    with pytest.raises(AssertionError):
        interp.exec("assert x == 0, 'x is %d' % x")


def test_exceptions_come_back_with_the_remote_traceback(interp):
    with pytest.raises(ZeroDivisionError) as info:
        interp.exec("1 / 0")
    assert "ZeroDivisionError" in str(info.value.__cause__)
    with pytest.raises(ValueError) as info:
        interp.call(int, "not a number")
    assert "invalid literal" in str(info.value)
    # The interpreter is still usable afterwards.
    assert interp.call(abs, -3) == 3


def test_unpicklable_exception_becomes_remote_error(interp):
    with pytest.raises(RemoteError) as info:
        interp.call(tasks.raise_local_class, "no way back")
    assert "LocalOnlyError" in str(info.value)
    assert "no way back" in str(info.value)


def test_unpicklable_arguments_fail_in_the_caller(interp):
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        interp.call(tasks.identity, threading.Lock())
    assert interp.call(abs, -1) == 1


def test_starts_with_the_parents_sys_path(interp):
    assert interp.call(tasks.sys_path)[: len(sys.path)] == sys.path


def test_calls_from_several_threads(interp):
    results, errors = [], []

    def worker(n):
        try:
            results.append(interp.call(tasks.square, n))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [n * n for n in range(8)]


def test_two_interpreters_run_in_parallel(tmp_path):
    # Each call waits (bounded) for the other's file: this only succeeds
    # if both calls are inside their interpreters at the same time.
    where = str(tmp_path)
    out = {}
    with Interpreter() as first, Interpreter() as second:
        thread = threading.Thread(
            target=lambda: out.setdefault(0, first.call(tasks.rendezvous, where, 0, 2)))
        thread.start()
        out[1] = second.call(tasks.rendezvous, where, 1, 2)
        thread.join()
    assert out[0][1] is True and out[1][1] is True
    assert out[0][2] != out[1][2]  # two different interpreters


def test_close_is_idempotent_and_final():
    interp = Interpreter()
    assert not interp.closed
    interp.close()
    interp.close()
    assert interp.closed and interp.id is None
    with pytest.raises(ValueError, match="closed"):
        interp.call(abs, 1)
    with pytest.raises(ValueError, match="closed"):
        interp.exec("pass")


def test_many_interpreters_created_and_closed():
    for _ in range(50):
        with Interpreter() as interp:
            assert interp.call(abs, -2) == 2
