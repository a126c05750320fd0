"""SubinterpreterPool's result objects (src/module/result_type.c).

apply_async, map_async/starmap_async and imap/imap_unordered return
C subclasses of multiprocessing.pool's result classes, finished in C by
the collector thread.  These tests hold them to what multiprocessing's
own do: isinstance, ready/successful/wait/get, callbacks on the
collector thread before ready(), imap's ordering, lazy feeding of
iterators, and waiting from several threads at once.
"""

import itertools
import multiprocessing
import multiprocessing.pool
import threading

import pytest

import tasks
from conftest import REFERENCE, run_clients, wait_until_exists

pytestmark = pytest.mark.timeout(120)


def test_results_are_multiprocessings_classes(pool):
    mp = multiprocessing.pool
    result = pool.apply_async(tasks.square, (3,))
    assert isinstance(result, mp.AsyncResult)
    assert isinstance(result, mp.ApplyResult)
    assert result.get(timeout=60) == 9
    mapped = pool.starmap_async(tasks.mul, [(2, 3), (4, 5)])
    assert isinstance(mapped, mp.MapResult)
    assert mapped.get(timeout=60) == [6, 20]
    assert isinstance(pool.map_async(tasks.square, [1]), mp.MapResult)
    ordered = pool.imap(tasks.square, [1, 2])
    assert isinstance(ordered, mp.IMapIterator)
    assert list(ordered) == [1, 4]
    unordered = pool.imap_unordered(tasks.square, [1, 2])
    assert isinstance(unordered, mp.IMapUnorderedIterator)
    assert sorted(unordered) == [1, 4]


def _collector_name(pool):
    if REFERENCE:
        return None  # multiprocessing's result handler thread
    return f"SubinterpreterPool-{id(pool):x}-collector"


# A plain result, and one the codec leaves to pickle: the collector
# unpickles that one and hands it over the same way.
@pytest.mark.parametrize("task, expected", [(tasks.square, 16),
                                            (tasks.as_set, {4})])
def test_callbacks_run_on_the_collector_before_ready(pool, task, expected):
    seen = []

    def callback(value):
        # multiprocessing calls it before the result is ready
        seen.append((value, threading.current_thread().name,
                     result.ready()))

    result = pool.apply_async(task, (4,), callback=callback)
    assert result.get(timeout=60) == expected
    (value, thread, ready_inside), = seen
    assert value == expected and ready_inside is False
    assert thread != threading.current_thread().name
    if _collector_name(pool):
        assert thread == _collector_name(pool)


def test_pickled_results_reach_maps_and_iterators(pool):
    # Results the codec leaves to pickle are unpickled and handed over by
    # the collector like plain ones, each in its place.
    expected = [{x} for x in range(40)]
    assert pool.map(tasks.as_set, range(40), chunksize=3) == expected
    assert list(pool.imap(tasks.as_set, range(40))) == expected
    got = pool.imap_unordered(tasks.as_set, range(40), 2)
    assert sorted(got, key=min) == expected


def test_a_result_that_fails_to_unpickle_fails_its_task_once(pool):
    # The exception unpickling raised fails just that task, at its
    # place, and unpickling ran once (not again in the Python loop).
    tasks.UNPICKLED_HERE.clear()
    errors = []
    result = pool.apply_async(tasks.return_fails_when_unpickled, ("a",),
                              error_callback=errors.append)
    with pytest.raises(ValueError, match="a"):
        result.get(timeout=60)
    assert [str(e) for e in errors] == ["a"]
    it = pool.imap(tasks.return_fails_when_unpickled, ["b", "c"])
    for text in ("b", "c"):
        with pytest.raises(ValueError, match=text):
            next(it)
    with pytest.raises(ValueError, match="d"):
        pool.map(tasks.return_fails_when_unpickled, ["d"])
    assert sorted(tasks.UNPICKLED_HERE) == ["a", "b", "c", "d"]


def test_error_callback_gets_the_exception_and_get_raises_it(pool):
    errors = []
    result = pool.apply_async(tasks.raise_value_error, ("boom",),
                              callback=errors.append,
                              error_callback=errors.append)
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=60)
    assert result.ready() and not result.successful()
    (error,) = errors
    assert isinstance(error, ValueError)


def test_map_async_callback_gets_the_whole_list_once(pool):
    calls = []
    result = pool.map_async(tasks.square, range(10), chunksize=3,
                            callback=calls.append)
    assert result.get(timeout=60) == [x * x for x in range(10)]
    assert calls == [[x * x for x in range(10)]]


def test_map_async_error_callback_gets_the_first_error_after_all_chunks(pool):
    calls = []
    result = pool.starmap_async(tasks.fail_on, [(x, 3) for x in range(8)],
                                chunksize=1, error_callback=calls.append)
    with pytest.raises(ValueError):
        result.get(timeout=60)
    assert len(calls) == 1 and isinstance(calls[0], ValueError)
    assert not result.successful()


@pytest.mark.poolparty_only
def test_a_raising_callback_is_reported_and_the_result_still_completes(
        pool, capfd):
    def bad(value):
        raise RuntimeError("callback exploded")

    result = pool.apply_async(tasks.square, (5,), callback=bad)
    assert result.get(timeout=60) == 25
    mapped = pool.map_async(tasks.square, [1, 2], error_callback=bad,
                            callback=bad)
    assert mapped.get(timeout=60) == [1, 4]
    assert pool.apply(tasks.square, (6,)) == 36  # the pool carries on
    err = capfd.readouterr().err
    assert err.count("RuntimeError: callback exploded") == 2
    assert "Exception in poolparty callback" in err


@pytest.mark.poolparty_only
def test_results_leave_the_cache_when_complete(pool):
    pool.apply_async(tasks.square, (2,)).get(timeout=60)
    pool.map_async(tasks.square, range(5)).get(timeout=60)
    list(pool.imap(tasks.square, range(5)))
    list(pool.imap_unordered(tasks.square, iter(range(5)), 2))
    assert pool.map_async(tasks.square, []).ready()
    assert pool._cache == {}


def test_get_from_several_threads_wakes_them_all(pool, gate):
    result = pool.apply_async(tasks.wait_for_file, (gate,))
    got = []

    def client(k):
        got.append(result.get(timeout=60))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    open(gate, "w").close()
    for thread in threads:
        thread.join(timeout=60)
    assert got == [True] * 4


def test_wait_returns_none_and_honours_its_timeout(pool, gate):
    result = pool.apply_async(tasks.wait_for_file, (gate,))
    assert result.wait(0.05) is None
    assert not result.ready()
    open(gate, "w").close()
    assert result.wait(timeout=60) is None
    assert result.ready() and result.get() is True


def test_imap_keeps_order_when_later_items_finish_first(pool, tmp_path):
    # With 2 workers, item 0 waits for a file that item 3 creates, so
    # items 1 and 2 finish first: imap still yields in input order, and
    # imap_unordered yields item 0 after them (and maybe before item 3,
    # whose file it may see before item 3's result is sent).
    for name, make in (("a", pool.imap), ("b", pool.imap_unordered)):
        marker = str(tmp_path / name)
        steps = [("wait", marker), ("value", 1), ("value", 2),
                 ("touch", marker)]
        got = list(make(tasks.step, steps))
        if make == pool.imap:
            assert got == ["waited", 1, 2, "touched"]
        else:
            assert got.index("waited") > max(got.index(1), got.index(2))
            assert sorted(map(str, got)) == ["1", "2", "touched", "waited"]


def test_imap_keeps_order_when_hundreds_of_items_come_early(pool, tmp_path):
    # Item 0 waits for the last item's file, so the other worker runs
    # every item in between first: far more early chunks than imap's
    # first ring of early chunks holds (64), one of them a failure.
    # They still come out in input order, the failure at its place.
    marker = str(tmp_path / "last")
    count = 300
    steps = ([("wait", marker)] + [("value", i) for i in range(1, 150)]
             + [("raise", "item 150")]
             + [("value", i) for i in range(151, count - 1)]
             + [("touch", marker)])
    it = pool.imap(tasks.step, steps)
    got = [next(it) for _ in range(150)]
    assert got == ["waited", *range(1, 150)]
    with pytest.raises(ValueError, match="item 150"):
        next(it)
    assert list(it) == [*range(151, count - 1), "touched"]


def test_imap_yields_exceptions_and_pairs_a_task_returns(pool):
    # A task's exception and a returned exception instance (or a pair
    # holding one) are told apart: only the first one raises.
    values = [ValueError("returned"), ("pair", KeyError("k")), (1, 2)]
    expected = list(map(repr, values))
    for chunksize in (1, 2):
        got = list(pool.imap(tasks.identity, values, chunksize))
        assert list(map(repr, got)) == expected
        got = pool.imap_unordered(tasks.identity, values, chunksize)
        assert sorted(map(repr, got)) == sorted(expected)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_of_a_list_flattens_chunks_in_order(pool, chunksize):
    items = list(range(20))
    assert list(pool.imap(tasks.square, items, chunksize)) == [
        x * x for x in items]
    assert list(pool.imap(tasks.square, tuple(items), chunksize)) == [
        x * x for x in items]
    assert sorted(pool.imap_unordered(tasks.square, range(20), chunksize)) \
        == [x * x for x in items]


def test_imap_goes_on_after_a_failed_item(pool):
    it = pool.imap(tasks.fail_on_item, [1, 13, 2])
    assert next(it) == 1
    with pytest.raises(ValueError):
        next(it)
    assert next(it) == 4
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.poolparty_only
def test_imap_of_a_list_starts_no_feeder_thread(pool):
    def feeders():
        return [t for t in threading.enumerate() if "feeder" in t.name]

    before = feeders()
    it = pool.imap(tasks.square, list(range(50)))
    assert feeders() == before
    assert list(it) == [x * x for x in range(50)]


@pytest.mark.reference_hangs("multiprocessing's task handler takes the "
                             "whole endless input, and terminate() waits "
                             "for it")
def test_imap_consumes_an_endless_iterator_lazily(pool):
    it = pool.imap(tasks.square, itertools.count())
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    unordered = pool.imap_unordered(tasks.square, itertools.count(), 2)
    assert len([next(unordered) for _ in range(6)]) == 6


def test_imap_next_from_several_threads_shares_the_items(pool):
    it = pool.imap(tasks.square, list(range(200)))
    got = []
    lock = threading.Lock()

    def client(k):
        for value in it:
            with lock:
                got.append(value)

    run_clients(client, 4)
    assert sorted(got) == sorted(x * x for x in range(200))


@pytest.mark.reference_hangs("multiprocessing's imap reader waits forever "
                             "for chunks terminate() dropped")
def test_imap_reader_waiting_when_the_pool_terminates(make_pool, gate,
                                                      tmp_path):
    # A reader blocked in next() must not hang when terminate() drops
    # the chunks it waits for: they fail, and it sees the error.
    pool = make_pool(1)
    started = str(tmp_path / "started")
    blocker = pool.apply_async(tasks.signal_and_wait, (started, gate, 1))
    queued = pool.imap(tasks.square, [1, 2, 3])
    wait_until_exists(started)
    outcome = []

    def reader():
        try:
            outcome.append(list(queued))
        except BaseException as exc:  # what the reader sees
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    pool.terminate()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the imap reader hung"
    assert len(outcome) == 1
    del blocker


def test_apply_async_whatever_path_its_arguments_take(pool):
    # Plain tuple/dict arguments of a known function take one C call;
    # a set needs pickle, a list of args and a new function the Python
    # path: the same results either way.
    assert pool.apply_async(tasks.add, (1,), {"b": 2}).get(60) == 3
    assert pool.apply_async(tasks.identity, ({1, 2},)).get(60) == {1, 2}
    assert pool.apply_async(tasks.identity, [5]).get(60) == 5
    assert pool.apply_async(tasks.increment, (1,)).get(60) == 2
    assert pool.apply(tasks.add, (2, 3)) == 5


@pytest.mark.poolparty_only
def test_pending_results_are_in_the_cache_until_complete(pool, gate):
    result = pool.apply_async(tasks.wait_for_file, (gate,))
    assert result in pool._cache.values()
    open(gate, "w").close()
    assert result.get(timeout=60) is True
    assert result not in pool._cache.values()



@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_keeps_no_slot_for_items_already_read(pool, method):
    """A consumer that never reads the iterator empty (it stays behind the
    workers) must not leave a slot per item read: the list of ready
    results holds the unread ones (as multiprocessing's deque does), not
    every item since the iterator last ran dry."""
    import gc
    import time

    n = 20_000
    iterator = getattr(pool, method)(tasks.identity, range(n), chunksize=500)
    deadline = time.monotonic() + 60
    while True:  # every result in and none read: a ready list of n
        ready = next((r for r in gc.get_referents(iterator)
                      if type(r) is list and len(r) == n), None)
        if ready is not None:
            break
        assert time.monotonic() < deadline, "the results never all came"
        time.sleep(0.01)
    got = [next(iterator) for _ in range(n - 100)]
    assert len(ready) <= 2 * 100 + 1024, \
        f"{len(ready)} slots kept for the 100 results not read yet"
    got += list(iterator)
    assert sorted(got) == list(range(n))
    assert method == "imap_unordered" or got == list(range(n))
