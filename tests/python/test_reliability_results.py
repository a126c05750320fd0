"""What poolparty keeps of a result once the caller has it (issue 15).

CPython's test_release_task_refs and test_free_reference: after map(),
get() or result() returned and the caller dropped the value, nothing of
poolparty's still holds it (the collector thread kept the last one, and
Executor.map the rest of its chunk).  And a running pool that is
garbage collected warns, as multiprocessing.Pool does.
"""

import gc
import sys
import time
import weakref

import pytest

import reliability_tasks as rt
from conftest import recording_warnings

pytestmark = pytest.mark.poolparty_only


def released(ref, limit=10.0, collect=True):
    """True once ``ref`` is dead: the collector thread may still be on its
    way out of the batch that delivered it (bounded wait).  ``collect``:
    run the garbage collector meanwhile."""
    deadline = time.monotonic() + limit
    while ref() is not None:
        if time.monotonic() > deadline:
            return False
        if collect:
            gc.collect()
        time.sleep(0.01)
    return True


def only_the_caller_holds(obj, limit=10.0):
    """True once the caller's name is the only reference to ``obj`` (for
    results that cannot be weakly referenced; bounded wait)."""
    control = []
    # control: our name and getrefcount's argument; obj: those and the
    # caller's name.
    expected = sys.getrefcount(control) + 1
    deadline = time.monotonic() + limit
    while sys.getrefcount(obj) > expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_pool_keeps_no_result_it_returned(make_pool):
    pool = make_pool(2)
    results = pool.map(rt.box, range(10))
    refs = [weakref.ref(r) for r in results]
    del results
    assert all(released(ref) for ref in refs)
    result = pool.apply(rt.box, (1,))
    ref = weakref.ref(result)
    del result
    assert released(ref)
    result = pool.apply_async(rt.box, (2,)).get(60)
    ref = weakref.ref(result)
    del result
    assert released(ref)


def test_pool_keeps_no_plain_result_it_returned(make_pool):
    pool = make_pool(2)
    result = pool.apply(rt.fresh_list, (7,))
    assert only_the_caller_holds(result)


def test_executor_keeps_no_result_it_returned(make_executor):
    executor = make_executor(2)
    future = executor.submit(rt.box, 1)
    result = future.result(60)
    del future
    ref = weakref.ref(result)
    del result
    assert released(ref)
    future = executor.submit(rt.fresh_list, 1)
    result = future.result(60)
    del future
    assert only_the_caller_holds(result)


def test_executor_map_keeps_no_result_it_yielded(make_executor):
    executor = make_executor(2)
    # chunksize > 1: the rest of the chunk must not hold the ones handed out.
    # No garbage collection: on free-threaded builds a result made on the
    # collector thread and dropped here is freed when the collector next
    # runs Python code (biased reference counting), so an idle collector
    # must still do that (it stayed alive while the pool was idle).
    for obj in executor.map(rt.box, range(12), chunksize=4):
        ref = weakref.ref(obj)
        del obj
        assert released(ref, collect=False)


def test_running_pool_collected_without_close_warns(dispatch):
    import poolparty

    pool = poolparty.SubinterpreterPool(1, dispatch=dispatch)
    assert pool.apply(rt.increment, (1,)) == 2
    text = repr(pool)
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool") as caught:
        del pool
        gc.collect()
    assert text in str(caught[0].message)


@pytest.mark.parametrize("stop", ["close", "terminate"])
def test_stopped_pool_collected_does_not_warn(dispatch, stop):
    import poolparty

    pool = poolparty.SubinterpreterPool(1, dispatch=dispatch)
    getattr(pool, stop)()
    with recording_warnings() as (caught, unraisable):
        del pool
        gc.collect()
    assert unraisable == []
    assert [w for w in caught if w.category is ResourceWarning] == []


def test_pool_refused_at_construction_does_not_warn():
    import poolparty

    with recording_warnings() as (caught, unraisable):
        with pytest.raises(ValueError):
            poolparty.SubinterpreterPool(0)
        gc.collect()
    assert unraisable == []
    assert [w for w in caught if w.category is ResourceWarning] == []
