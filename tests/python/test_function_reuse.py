"""A task's function is unpickled once per worker when that is safe.

Functions pickled by reference are kept by the worker between tasks;
callables pickled by value (instances, partials) arrive fresh in every
task, exactly as with multiprocessing.
"""

import functools

import pytest

import reuse_tasks
from poolparty import SubinterpreterPool, SubinterpreterPoolExecutor


@pytest.fixture(params=["queue", "call"])
def pool(request):
    with SubinterpreterPool(1, dispatch=request.param) as pool:
        yield pool


def test_callable_instances_are_fresh_per_task(pool):
    counter = reuse_tasks.CallCounter()
    assert pool.map(counter, range(20), chunksize=1) == [1] * 20
    # Within one chunk it is one copy, as in multiprocessing.
    assert pool.map(counter, range(5), chunksize=5) == [1, 2, 3, 4, 5]


def test_partials_with_mutable_state_are_fresh_per_task(pool):
    task = functools.partial(reuse_tasks.append_and_count, [])
    assert pool.map(task, range(10), chunksize=1) == [1] * 10


def test_module_level_functions_keep_module_state(pool):
    # Same worker, same module: the module-level counter advances.
    first = pool.map(reuse_tasks.count_calls, range(10), chunksize=1)
    assert first == list(range(first[0], first[0] + 10))


def test_executor_instances_are_fresh_per_task():
    counter = reuse_tasks.CallCounter()
    with SubinterpreterPoolExecutor(1) as executor:
        futures = [executor.submit(counter) for _ in range(10)]
        assert [f.result() for f in futures] == [1] * 10


def test_a_function_changing_between_tasks_is_not_confused(pool):
    # Alternate two functions on one worker: each task runs its own.
    results = [pool.apply(f, (-3,)) for f in (abs, str, abs, str)]
    assert results == [3, "-3", 3, "-3"]


def test_builtins_that_need_a_frame_work_as_in_multiprocessing(pool):
    # eval() and friends look at their caller's frame; a multiprocessing
    # worker has one, and so must ours.
    assert pool.map(eval, ["1 + 1", "2 * 3"]) == [2, 6]
    assert pool.apply(eval, ("40 + 2",)) == 42
    assert pool.starmap(eval, [("x * 2", {"x": 21})]) == [42]
    assert pool.apply(exec, ("y = 1",)) is None
