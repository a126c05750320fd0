"""A by-value function's bytes go to the engine once, not with each task.

Tasks carry only the function's by-value header; the engine keeps the
cloudpickle bytes (Engine.function_store counts them) while tasks that
name them are queued or running, plus idle ones up to a byte limit, and a
worker that has not unpickled the function yet reads them from there.
"""

import os
import time

import pytest

from conftest import REFERENCE, engine_completions
from poolparty import _engine

if not REFERENCE:
    from poolparty import _poolparty as core

pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty-specific")

BIG = 1 << 20  # bytes each closure below captures


def closure_over(size, salt=0):
    """A function closing over `size` bytes of data (distinct per salt)."""
    data = bytes([salt % 256]) * size

    def task(x):
        return x + len(data) + data[0]

    return task


def store_of(pool):
    return pool._engine.function_store


def test_a_large_closure_is_copied_once_for_many_tasks(make_pool):
    task = closure_over(BIG, salt=3)
    with make_pool(2) as pool:
        assert pool.map(task, range(300), chunksize=1) == [
            x + BIG + 3 for x in range(300)
        ]
        assert [pool.apply(task, (i,)) for i in range(5)] == [
            i + BIG + 3 for i in range(5)
        ]
        assert sorted(pool.imap_unordered(task, range(20))) == [
            x + BIG + 3 for x in range(20)
        ]
        store = store_of(pool)
    # One copy in the engine, for 325 tasks; at most one read per worker.
    assert store["copies"] == 1
    assert BIG <= store["copied_bytes"] < 2 * BIG
    assert 1 <= store["fetches"] <= 2


def test_executor_submit_and_map_copy_it_once(make_executor):
    task = closure_over(BIG, salt=5)
    with make_executor(2) as executor:
        futures = [executor.submit(task, i) for i in range(100)]
        assert [f.result() for f in futures] == [i + BIG + 5 for i in range(100)]
        assert list(executor.map(task, range(50))) == [
            i + BIG + 5 for i in range(50)
        ]
        store = store_of(executor)
    assert store["copies"] == 1
    assert 1 <= store["fetches"] <= 2


def test_many_distinct_closures_do_not_grow_the_store(make_executor):
    count = 48  # 48 MB of closures, more than the store keeps idle
    with make_executor(2) as executor:
        limit = store_of(executor)["idle_limit"]
        assert count * BIG > limit
        futures = [
            executor.submit(closure_over(BIG, salt=i), 1) for i in range(count)
        ]
        assert [f.result() for f in futures] == [
            1 + BIG + i % 256 for i in range(count)
        ]
        store = store_of(executor)
    assert store["copies"] == count
    # Every task is done: nothing is held, and what stays is bounded.
    assert store["bytes"] == store["idle_bytes"] <= limit
    assert store["entries"] < count


def test_a_worker_replaced_by_maxtasksperchild_reads_it_again(make_pool):
    task = closure_over(BIG, salt=7)
    with make_pool(1, maxtasksperchild=2) as pool:
        assert pool.map(task, range(10), chunksize=1) == [
            x + BIG + 7 for x in range(10)
        ]
        store = store_of(pool)
    # Five interpreters in turn, each reading the one copy once.
    assert store["copies"] == 1
    assert store["fetches"] == 5


def slow_closure(size):
    data = b"s" * size

    def task(x):
        time.sleep(0.05)
        return x + len(data)

    return task


def test_dropped_tasks_let_go_of_it(make_pool, make_executor):
    task = slow_closure(BIG)
    with make_executor(1) as executor:
        futures = [executor.submit(task, i) for i in range(30)]
        executor.shutdown(wait=True, cancel_futures=True)
        assert any(f.cancelled() for f in futures)
        store = store_of(executor)
    assert store["bytes"] == store["idle_bytes"] == store["copied_bytes"]
    pool = make_pool(1)
    pool.map_async(task, range(30), chunksize=1)
    time.sleep(0.2)
    pool.terminate()
    pool.join()
    store = store_of(pool)
    assert store["copies"] == 1
    assert store["bytes"] == store["idle_bytes"]


def test_module_level_functions_and_interpreter_calls_use_no_store(make_pool):
    from poolparty import Interpreter

    with make_pool(2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
        assert store_of(pool)["copies"] == 0
    # Interpreter has no engine: each call carries the bytes itself.
    with Interpreter() as interp:
        assert interp.call(closure_over(BIG, salt=1), 1) == 1 + BIG + 1


def closure_waiting(size):
    """A by-value function that returns once the file `path` exists."""
    data = b"w" * size

    def task(path):
        while not os.path.exists(path):
            time.sleep(0.01)
        return len(data)

    return task


def by_value_header(func_data):
    """The "\\0v<token>\\0module\\0qualname\\0" header of a by-value
    function's data (what its tasks carry; the engine keeps the rest)."""
    _empty, token, module, qualname, _bytes = func_data.split(b"\0", 4)
    return b"\0".join([b"", token, module, qualname, b""])


HEADER_ONLY = "only the header of a function sent by value"


@pytest.mark.parametrize("carrier", [bytes, bytearray])
def test_a_header_only_task_is_refused_and_drops_no_hold(tmp_path, carrier):
    # Task 0 sends a by-value function the usual way and holds its entry
    # while it runs.  Task 1 names the same function by its header alone
    # (bytes: nothing after the header to store; bytearray: not stored at
    # all): it could never read the store, so Engine.submit refuses it
    # with what to pass instead -- before it holds or drops anything, so
    # task 0's entry stays held under it and the engine carries on.
    engine = core.Engine(core.PP_DESIGN_QUEUE, 2, 0, _engine.sys_path_blob(),
                         _engine.boot_payload(None, ()))
    completions = engine_completions(engine)
    func, flags = _engine.function_pickle(closure_waiting(BIG))
    header = by_value_header(func)
    gate = tmp_path / "gate"
    try:
        engine.submit(1, 0, core.PP_TASK_CALL | flags, func,
                      _engine.dumps(((str(gate),), None)))
        deadline = time.monotonic() + 60
        while engine.function_store["fetches"] == 0:
            assert time.monotonic() < deadline, "task 0 never started"
            time.sleep(0.01)
        with pytest.raises(ValueError, match=HEADER_ONLY) as refused:
            engine.submit(1, 1, core.PP_TASK_CALL | flags, carrier(header),
                          _engine.dumps(((str(tmp_path),), None)))
        assert "function_pickle" in str(refused.value)
        assert engine.pending == 0
        store = engine.function_store
        assert store["entries"] == 1 and store["idle_bytes"] == 0
        # Sent whole, as the message says, the same function runs.
        engine.submit(1, 1, core.PP_TASK_CALL | flags, carrier(func),
                      _engine.dumps(((str(tmp_path),), None)))
        assert next(completions) == (1, True, BIG)
        gate.touch()
        assert next(completions) == (0, True, BIG)
        store = engine.function_store
        assert store["bytes"] == store["idle_bytes"] > 0
    finally:
        gate.touch()
        engine.close()
        for _ in completions:  # answering imports until the workers exit
            pass
        engine.join(60)


def test_a_header_only_map_is_refused(make_pool):
    # Engine.submit_map's function the same way: refused before a chunk
    # is queued, and the pool's engine carries on.
    pool = make_pool(2)
    func, flags = _engine.function_pickle(closure_over(10))
    job = pool._engine.new_job()
    with pytest.raises(ValueError, match=HEADER_ONLY):
        pool._engine.submit_map(job, _engine.TASK_MAP | flags,
                                by_value_header(func), [1, 2, 3], 1,
                                _engine.pickle_dumps)
    assert pool._engine.pending == 0
    assert pool.map(closure_over(10), [1, 2, 3]) == [11, 12, 13]


def test_an_interpreter_refuses_a_header_only_call():
    # An Interpreter has no function store at all.
    import poolparty

    func, flags = _engine.function_pickle(closure_over(10))
    with poolparty.Interpreter() as interp:
        with pytest.raises(ValueError, match=HEADER_ONLY):
            interp._core.call(core.PP_TASK_CALL | flags,
                              by_value_header(func), _engine.dumps(((1,), None)))
        assert interp.call(closure_over(10), 1) == 11
