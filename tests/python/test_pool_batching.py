"""Completions in batches (issue 16): nothing held back, nothing reordered.

A worker with more tasks queued pushes its completions lazily, and the
collector, after taking some, lingers a little before it looks again
(src/core/engine.c, LINGER_NS), so that many small tasks wake it once per
batch.  These tests hold that to what callers rely on: a result is never
held back behind the next task of the same worker (each blocks that task
until the caller has the previous result, so holding it would deadlock
and fail on a timeout), imap's order, callbacks on the collector thread
before ready(), and errors at their own positions, with many results in
flight.  Each runs with both dispatch designs.
"""

import threading

import pytest

import tasks
from conftest import REFERENCE

pytestmark = pytest.mark.timeout(120)

# Quick tasks queued before the one under test: the collector has taken
# completions just before, so it lingers, and the worker has the next
# task queued when it finishes the one under test.
WARM = 200
# How long the caller waits for the result under test.  Far longer than
# any lingering; a result held until the next task ends never comes,
# since that task waits for it.
WAIT_S = 20


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_result_is_not_held_behind_the_next_task(make_pool, tmp_path,
                                                      method):
    release = str(tmp_path / "release")
    pool = make_pool(1)
    steps = [("value", i) for i in range(WARM)] + [("wait", release)]
    results = getattr(pool, method)(tasks.step, steps)
    got = [results.next(timeout=WAIT_S) for _ in range(WARM)]
    tasks.touch(release)
    assert results.next(timeout=WAIT_S) == "waited"
    assert got == list(range(WARM))  # one worker: in order either way


def test_apply_async_callback_is_not_held_behind_the_next_task(make_pool,
                                                               tmp_path):
    release = str(tmp_path / "release")
    pool = make_pool(1)
    warm = [pool.apply_async(tasks.identity, (i,)) for i in range(WARM)]
    ran_on = []

    def release_next(value):
        ran_on.append(threading.current_thread().name)
        tasks.touch(release)

    first = pool.apply_async(tasks.identity, ("first",),
                             callback=release_next)
    # Waits for the callback of `first`: if `first`'s result waited for
    # this task to end, neither would ever finish.
    second = pool.apply_async(tasks.step, (("wait", release),))
    assert second.get(timeout=WAIT_S + 15) == "waited"
    assert first.get(timeout=0) == "first"
    assert [r.get(timeout=WAIT_S) for r in warm] == list(range(WARM))
    assert len(ran_on) == 1 and ran_on[0] != threading.current_thread().name


def test_executor_future_is_not_held_behind_the_next_task(make_executor,
                                                          tmp_path):
    release = str(tmp_path / "release")
    done_release = str(tmp_path / "done-release")
    executor = make_executor(1)
    warm = [executor.submit(tasks.identity, i) for i in range(WARM)]
    first = executor.submit(tasks.identity, "first")
    second = executor.submit(tasks.step, ("wait", release))
    # A done-callback path too: it releases the third task.
    third = executor.submit(tasks.identity, "third")
    third.add_done_callback(lambda _: tasks.touch(done_release))
    fourth = executor.submit(tasks.step, ("wait", done_release))
    assert first.result(timeout=WAIT_S) == "first"
    tasks.touch(release)
    assert second.result(timeout=WAIT_S) == "waited"
    assert fourth.result(timeout=WAIT_S + 15) == "waited"
    assert [f.result(timeout=0) for f in warm] == list(range(WARM))


@pytest.mark.parametrize("workers", [1, 2, 5])
@pytest.mark.parametrize("chunksize", [1, 7])
def test_imap_keeps_order_with_many_results_in_flight(make_pool, workers,
                                                      chunksize):
    pool = make_pool(workers)
    items = list(range(3000))
    assert list(pool.imap(tasks.square, items, chunksize)) == [
        x * x for x in items]
    assert sorted(pool.imap_unordered(tasks.square, items, chunksize)) == [
        x * x for x in items]
    # A generator goes through the feeder thread: the same order.
    assert list(pool.imap(tasks.square, iter(items), chunksize)) == [
        x * x for x in items]


def test_batched_callbacks_run_on_the_collector_before_ready(make_pool):
    pool = make_pool(2)
    seen = {}
    results = {}

    def callback(value):
        # The result object, unless the callback came before
        # apply_async() returned it (then there is nothing to ask).
        result = results.get(value)
        seen[value] = (threading.current_thread().name,
                       result is not None and result.ready())

    for i in range(500):
        results[i] = pool.apply_async(tasks.identity, (i,),
                                      callback=callback)
    assert [results[i].get(timeout=60) for i in range(500)] == list(
        range(500))
    assert sorted(seen) == list(range(500))
    threads = {name for name, _ready in seen.values()}
    assert len(threads) == 1
    assert threading.current_thread().name not in threads
    if not REFERENCE:
        (name,) = threads
        assert name.endswith("-collector")
    assert not any(ready for _name, ready in seen.values())


def test_errors_keep_their_positions_among_batched_results(make_pool,
                                                           make_executor):
    pool = make_pool(2)
    items = list(range(400))
    it = pool.imap(tasks.fail_on_item, items)
    for x in items:
        if x == 13:
            with pytest.raises(ValueError):
                next(it)
        else:
            assert next(it) == x * x
    with pytest.raises(StopIteration):
        next(it)
    unordered = list(_drain(pool.imap_unordered(tasks.fail_on_item, items)))
    assert sum(isinstance(v, ValueError) for v in unordered) == 1
    assert sorted(v for v in unordered if not isinstance(v, ValueError)) \
        == sorted(x * x for x in items if x != 13)
    errors = []
    pending = [pool.apply_async(tasks.fail_on_item, (x,),
                                error_callback=errors.append)
               for x in items]
    for x, result in zip(items, pending):
        result.wait(60)
        assert result.successful() == (x != 13)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    executor = make_executor(2)
    mapped = executor.map(tasks.fail_on_item, items)
    assert [next(mapped) for _ in range(13)] == [x * x for x in range(13)]
    with pytest.raises(ValueError):
        next(mapped)


def _drain(iterator):
    """Every item of an imap iterator, its errors as values."""
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except ValueError as exc:
            yield exc
