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


# --- functions that travel by name ------------------------------------------------------

def test_plain_tasks_never_import_the_pickler_in_the_worker(pool):
    # A module-level function and plain data travel without pickle: the
    # worker never pays for importing _pickle (and functools, collections).
    assert pool.map(reuse_tasks.loaded, [["_pickle"]]) == [[]]
    assert pool.map(abs, [-1, -2]) == [1, 2]
    assert pool.apply(reuse_tasks.loaded, (["_pickle"],)) == []
    # Data that needs pickle brings it in then.
    assert isinstance(pool.apply(reuse_tasks.count_calls,
                                 (reuse_tasks.CallCounter(),)), int)
    assert pool.apply(reuse_tasks.loaded, (["_pickle"],)) == ["_pickle"]


def test_functions_by_name_follow_their_qualified_name(pool):
    assert pool.map(reuse_tasks.Holder.double, [1, 2]) == [2, 4]
    assert pool.map(reuse_tasks.Holder.Inner.triple, [1, 2]) == [3, 6]
    # Its qualified name is "_renamed", where it is found: it runs.
    assert pool.map(reuse_tasks.renamed_alias, [1]) == [2]


def test_name_reference_is_what_pickle_would_resolve():
    from poolparty import _engine

    assert _engine.function_pickle(reuse_tasks.Holder.Inner.triple) == (
        b"reuse_tasks\0Holder.Inner.triple",
        _engine.REUSE_FUNC | _engine.FUNC_BY_NAME)
    assert _engine.function_pickle(len) == (
        b"builtins\0len", _engine.REUSE_FUNC | _engine.FUNC_BY_NAME)
    # Classes keep their pickle (a metaclass may pickle them otherwise);
    # bound methods and partials travel by value.
    data, flags = _engine.function_pickle(reuse_tasks.CallCounter)
    assert flags == _engine.REUSE_FUNC and data.startswith(b"\x80")
    data, flags = _engine.function_pickle(functools.partial(abs, -1))
    assert flags == 0


def test_a_function_shadowed_under_its_name_travels_by_value(pool):
    # pickle.dumps refuses a function whose name now leads to another
    # object, and so must the by-name path; it goes by value instead, and
    # the worker runs it, not what the name leads to.
    from poolparty import _engine

    def shadowed(x):
        return ("shadowed", x)

    shadowed.__qualname__ = "count_calls"
    shadowed.__module__ = "reuse_tasks"
    data, _ = _engine.function_pickle(shadowed)
    assert data.startswith(b"\0v")
    assert pool.map(shadowed, [1, 2]) == [("shadowed", 1), ("shadowed", 2)]
