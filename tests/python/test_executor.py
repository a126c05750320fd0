"""SubinterpreterPoolExecutor as a concurrent.futures.Executor.

Runs once per dispatch design, or against a spawn ProcessPoolExecutor under
POOLPARTY_TEST_REFERENCE=1.
"""

import concurrent.futures
import os
import pickle
import threading

import pytest

import tasks
from conftest import (run_clients, submit_blocked, usable_cpus,
                      wait_until_exists)

PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError)


def assert_executor_still_works(ex):
    assert ex.submit(tasks.square, 12).result(timeout=60) == 144
    assert list(ex.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]


# --- construction ---------------------------------------------------------------------

@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_below_one_is_rejected(make_executor, max_workers):
    with pytest.raises(ValueError):
        make_executor(max_workers=max_workers)


def test_default_max_workers_runs_usable_cpus_at_once(make_executor, tmp_path):
    n = usable_cpus()
    ex = make_executor(max_workers=None)
    futures = [ex.submit(tasks.rendezvous, str(tmp_path), i, n) for i in range(n)]
    assert [f.result(timeout=60)[1] for f in futures] == [True] * n


def test_positional_max_workers(make_executor):
    ex = make_executor(1)
    assert ex.submit(tasks.square, 3).result(timeout=60) == 9


def test_initializer_and_initargs(make_executor):
    ex = make_executor(2, initializer=tasks.set_init_value, initargs=("exec-init",))
    futures = [ex.submit(tasks.get_init_value) for _ in range(10)]
    assert [f.result(timeout=60) for f in futures] == ["exec-init"] * 10


# --- submit ------------------------------------------------------------------------------

def test_submit_returns_a_real_future(executor):
    future = executor.submit(tasks.square, 7)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60) == 49
    assert future.done() and not future.cancelled()
    assert future.exception(timeout=0) is None


def test_submit_passes_args_and_kwargs(executor):
    assert executor.submit(tasks.add, 1, b=2).result(timeout=60) == 3
    assert executor.submit(tasks.add, a=5).result(timeout=60) == 5


def test_submit_exception_type_and_args(executor):
    future = executor.submit(tasks.raise_value_error, "bad", 1)
    exc = future.exception(timeout=60)
    assert type(exc) is ValueError
    assert exc.args == ("bad", 1)
    with pytest.raises(ValueError):
        future.result(timeout=0)
    assert_executor_still_works(executor)


def test_submit_user_defined_exception(executor):
    future = executor.submit(tasks.raise_custom, "mine", 2)
    with pytest.raises(tasks.CustomError) as excinfo:
        future.result(timeout=60)
    assert excinfo.value.args == ("mine", 2)


def test_done_callbacks_run(executor):
    seen = []
    done = threading.Event()

    def callback(future):
        seen.append(future.result())
        done.set()

    future = executor.submit(tasks.square, 11)
    future.add_done_callback(callback)
    assert future.result(timeout=60) == 121
    assert done.wait(60)
    assert seen == [121]


def test_large_payload(executor):
    payload = b"\x00\xff" * (4 * 1024 * 1024)
    assert executor.submit(tasks.identity, payload).result(timeout=60) == payload


_LOCK = threading.Lock()


def test_unpicklable_function(executor):
    # Uses a lock: neither pickle nor poolparty's cloudpickle can send it.
    with pytest.raises(PICKLING_ERRORS):
        executor.submit(lambda: _LOCK).result(timeout=60)
    assert_executor_still_works(executor)


def test_unpicklable_argument(executor):
    with pytest.raises(PICKLING_ERRORS):
        executor.submit(tasks.identity, threading.Lock()).result(timeout=60)
    assert_executor_still_works(executor)


def test_unpicklable_result(executor):
    with pytest.raises(Exception):
        executor.submit(tasks.return_unpicklable).result(timeout=60)
    assert_executor_still_works(executor)


# --- map -----------------------------------------------------------------------------------

@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_map_in_order(executor, chunksize):
    got = list(executor.map(tasks.square, range(100), chunksize=chunksize))
    assert got == [i * i for i in range(100)]


def test_map_multiple_iterables_stops_at_shortest(executor):
    assert list(executor.map(tasks.mul, range(10), range(5))) == [0, 1, 4, 9, 16]


def test_map_empty(executor):
    assert list(executor.map(tasks.square, [])) == []


def test_map_raises_at_the_failing_item(executor):
    it = executor.map(tasks.fail_on_item, range(20))
    assert [next(it) for _ in range(13)] == [i * i for i in range(13)]
    with pytest.raises(ValueError) as excinfo:
        next(it)
    assert excinfo.value.args == ("bad item", 13)


def test_map_yields_in_order_when_later_items_finish_first(executor, gate):
    it = executor.map(tasks.signal_and_wait, [gate + ".s0", gate + ".s1"],
                      [gate, gate + ".s0"], ["first", "second"])
    # item 1 only needs item 0 to have started; item 0 needs the gate
    wait_until_exists(gate + ".s1")
    open(gate, "w").close()
    assert list(it) == ["first", "second"]


def test_map_timeout(executor, gate):
    it = executor.map(tasks.wait_for_file, [gate], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(it)
    open(gate, "w").close()


def test_map_timeout_is_concurrent_futures_timeout(executor, gate):
    it = executor.map(tasks.wait_for_file, [gate], timeout=0.1)
    with pytest.raises(concurrent.futures.TimeoutError):
        list(it)
    open(gate, "w").close()


def _blocked_with_queued_map(make_executor, gate, tmp_path, items=50):
    """One worker busy until the gate opens, and a map queued behind it."""
    ex = make_executor(1)
    blocker = submit_blocked(ex, gate, tmp_path, "blocker")
    it = ex.map(tasks.record_and_return, [str(tmp_path)] * items, range(items))
    assert ex._runner.engine.pending == items
    return ex, blocker, it


def _ran(tmp_path):
    """The values record_and_return was called with."""
    return sorted(int(p.name[4:]) for p in tmp_path.iterdir()
                  if p.name.startswith("ran-"))


def test_map_closed_early_cancels_its_queued_chunks(make_executor, gate, tmp_path):
    ex = make_executor(1)
    open_gate = str(tmp_path / "open")
    open(open_gate, "w").close()
    started = [str(tmp_path / f"started-{i}") for i in range(30)]
    # Item 0 returns at once, item 1 holds the only worker until the gate
    # opens, items 2.. wait in the queue.
    releases = [open_gate, gate] + [open_gate] * 28
    it = ex.map(tasks.signal_and_wait, started, releases, range(30))
    assert next(it) == 0
    wait_until_exists(started[1])
    assert ex._runner.engine.pending == 28
    it.close()
    assert ex._runner.engine.pending == 0
    open(gate, "w").close()
    assert_executor_still_works(ex)
    assert [i for i, path in enumerate(started) if os.path.exists(path)] == [0, 1]


def test_map_never_iterated_still_runs(make_executor, gate, tmp_path):
    # As with ThreadPoolExecutor: what map() queued runs, even if nobody
    # iterates (closing an unstarted generator does not run its cleanup).
    ex, blocker, it = _blocked_with_queued_map(make_executor, gate, tmp_path)
    it.close()
    open(gate, "w").close()
    assert blocker.result(timeout=60) == "blocker"
    ex.shutdown(wait=True)
    assert _ran(tmp_path) == list(range(50))


def test_map_timeout_cancels_the_chunks_not_started(make_executor, gate, tmp_path):
    ex = make_executor(1)
    blocker = submit_blocked(ex, gate, tmp_path, "blocker")
    it = ex.map(tasks.record_and_return, [str(tmp_path)] * 30, range(30),
                timeout=0.2)
    with pytest.raises(TimeoutError):
        next(it)
    # The generator's cleanup ran with the exception: the queue is empty.
    assert ex._runner.engine.pending == 0
    open(gate, "w").close()
    assert blocker.result(timeout=60) == "blocker"
    assert_executor_still_works(ex)
    assert _ran(tmp_path) == []


def test_map_chunks_cancelled_by_shutdown_raise_cancelled_error(
        make_executor, gate, tmp_path):
    ex, blocker, it = _blocked_with_queued_map(make_executor, gate, tmp_path)
    ex.shutdown(wait=False, cancel_futures=True)
    open(gate, "w").close()
    with pytest.raises(concurrent.futures.CancelledError):
        next(it)
    assert blocker.result(timeout=60) == "blocker"


def test_map_after_shutdown_raises(make_executor):
    ex = make_executor(1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(tasks.square, range(3))


def test_map_unpicklable_function_or_item_raises_when_iterated(executor):
    it = executor.map(lambda x: (_LOCK, x), range(3))
    with pytest.raises(PICKLING_ERRORS):
        next(it)
    it = executor.map(tasks.identity, [1, threading.Lock(), 3])
    assert next(it) == 1
    with pytest.raises(PICKLING_ERRORS):
        next(it)
    assert_executor_still_works(executor)


def test_map_results_do_not_pile_up_when_the_iterator_is_dropped(executor):
    import gc

    for _ in range(5):
        executor.map(tasks.square, range(100))  # never iterated
    gc.collect()
    assert list(executor.map(tasks.square, range(3))) == [0, 1, 4]
    assert len(executor._sink.maps) == 0


# --- as_completed / wait ----------------------------------------------------------------

def test_as_completed_yields_every_future(executor):
    futures = [executor.submit(tasks.square, i) for i in range(30)]
    completed = list(concurrent.futures.as_completed(futures, timeout=60))
    assert set(completed) == set(futures) and len(completed) == 30
    assert sorted(f.result() for f in completed) == sorted(i * i for i in range(30))


def test_wait_all_completed(executor):
    futures = [executor.submit(tasks.increment, i) for i in range(20)]
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert done == set(futures) and not not_done
    assert [f.result() for f in futures] == list(range(1, 21))


def test_wait_first_completed(executor, gate):
    blocked = executor.submit(tasks.wait_for_file, gate)
    fast = executor.submit(tasks.square, 5)
    done, not_done = concurrent.futures.wait(
        [blocked, fast], timeout=60, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert fast in done
    assert blocked in not_done
    open(gate, "w").close()
    assert blocked.result(timeout=60) is True


def test_wait_first_exception(executor, gate):
    blocked = executor.submit(tasks.wait_for_file, gate)
    failing = executor.submit(tasks.raise_value_error, "first")
    done, not_done = concurrent.futures.wait(
        [blocked, failing], timeout=60, return_when=concurrent.futures.FIRST_EXCEPTION
    )
    assert failing in done and blocked in not_done
    open(gate, "w").close()


# --- shutdown -------------------------------------------------------------------------------

def test_shutdown_waits_for_pending_work(make_executor):
    ex = make_executor(2)
    futures = [ex.submit(tasks.square, i) for i in range(50)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == [i * i for i in range(50)]


def test_submit_after_shutdown_raises_runtime_error(make_executor):
    ex = make_executor(2)
    assert ex.submit(tasks.square, 2).result(timeout=60) == 4
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 3)


def test_shutdown_twice_is_harmless(make_executor):
    ex = make_executor(2)
    ex.shutdown()
    ex.shutdown(wait=True)
    ex.shutdown(wait=False)


def test_context_manager(make_executor):
    ex = make_executor(2)
    with ex as entered:
        assert entered is ex
        futures = [ex.submit(tasks.increment, i) for i in range(10)]
    # __exit__ waited for everything
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == list(range(1, 11))
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)


def test_shutdown_cancel_futures(make_executor, gate, tmp_path):
    ex = make_executor(1)
    blocker = submit_blocked(ex, gate, tmp_path, "blocker")
    queued = [ex.submit(tasks.square, i) for i in range(10)]
    ex.shutdown(wait=False, cancel_futures=True)
    open(gate, "w").close()
    assert blocker.result(timeout=60) == "blocker"
    # at most the first one or two may already have been handed to the worker
    assert all(f.cancelled() for f in queued[2:])
    for i, f in enumerate(queued):
        if f.cancelled():
            assert f.done()
            with pytest.raises(concurrent.futures.CancelledError):
                f.result(timeout=0)
        else:
            assert f.result(timeout=60) == i * i


def test_cancel_queued_future(make_executor, gate, tmp_path):
    ex = make_executor(1)
    blocker = submit_blocked(ex, gate, tmp_path, "blocker")
    queued = [ex.submit(tasks.record_and_return, str(tmp_path), i) for i in range(6)]
    victim = queued[-1]
    assert victim.cancel() is True
    assert victim.cancelled() and victim.done()
    open(gate, "w").close()
    assert blocker.result(timeout=60) == "blocker"
    assert [f.result(timeout=60) for f in queued[:-1]] == list(range(5))
    # the cancelled task's result never arrives
    assert victim.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        victim.result(timeout=0)
    assert_executor_still_works(ex)


def test_cancel_running_future_returns_false(make_executor, gate, tmp_path):
    ex = make_executor(1)
    running = submit_blocked(ex, gate, tmp_path, "ran")
    assert running.cancel() is False
    open(gate, "w").close()
    assert running.result(timeout=60) == "ran"


@pytest.mark.parametrize("how", ["cancel()", "shutdown(cancel_futures=True)"])
def test_cancelled_futures_finish_for_wait_and_as_completed(
        make_executor, gate, tmp_path, how):
    # wait() and as_completed() count a future as finished only once its
    # waiters were told (CANCELLED_AND_NOTIFIED); a cancelled future whose
    # task never reaches a worker must still get there, or they block.
    ex = make_executor(1)
    blocker = submit_blocked(ex, gate, tmp_path, "blocker")
    queued = [ex.submit(tasks.square, i) for i in range(5)]
    if how == "cancel()":
        assert all(f.cancel() for f in queued)
    else:
        ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    done, not_done = concurrent.futures.wait(queued, timeout=10)
    assert done == set(queued) and not not_done
    assert set(concurrent.futures.as_completed(queued, timeout=10)) == set(queued)
    # The running one still blocks wait(FIRST_COMPLETED) over all of them
    # only until a cancelled one counts: that is at once.
    done, _ = concurrent.futures.wait([blocker] + queued, timeout=10,
                                      return_when=concurrent.futures.FIRST_COMPLETED)
    assert done and blocker not in done
    open(gate, "w").close()
    assert blocker.result(timeout=60) == "blocker"


# --- failing initializer ----------------------------------------------------------------

@pytest.mark.timeout(120)
def test_failing_initializer_breaks_the_executor(make_executor):
    ex = make_executor(
        2, initializer=tasks.failing_initializer, initargs=("executor init failed 99",)
    )
    try:
        future = ex.submit(tasks.square, 3)
    except concurrent.futures.BrokenExecutor:
        future = None  # already known to be broken: also acceptable
    if future is not None:
        with pytest.raises(concurrent.futures.BrokenExecutor):
            future.result(timeout=60)
    with pytest.raises(concurrent.futures.BrokenExecutor):
        ex.submit(tasks.square, 4)


@pytest.mark.poolparty_only
@pytest.mark.timeout(120)
def test_failing_initializer_reports_broken_interpreter_pool(make_executor):
    import poolparty

    ex = make_executor(
        2, initializer=tasks.failing_initializer, initargs=("executor init failed 77",)
    )
    # The workers start with the executor: one may have failed, and the
    # collector said so, before the last submit (the caller preempted
    # for a few ms under load).  Then that submit and every later one
    # raise the same error (as the test above allows), and the futures
    # made before fail with it.
    outcomes = []
    for i in range(4):
        try:
            outcomes.append(ex.submit(tasks.square, i))
        except poolparty.BrokenInterpreterPool as exc:
            outcomes.append(exc)
    refused = [isinstance(outcome, Exception) for outcome in outcomes]
    assert refused == sorted(refused)  # once refused, always refused
    for outcome in outcomes:
        exc = (outcome if isinstance(outcome, Exception)
               else outcome.exception(timeout=60))
        assert isinstance(exc, poolparty.BrokenInterpreterPool)
        assert isinstance(exc, concurrent.futures.BrokenExecutor)
        cause = exc.__cause__
        assert cause is not None
        assert "executor init failed 77" in str(cause) + repr(cause)
    with pytest.raises(poolparty.BrokenInterpreterPool):
        ex.submit(tasks.square, 5)


# --- concurrency ------------------------------------------------------------------------------

def test_tasks_run_concurrently(executor, tmp_path):
    futures = [executor.submit(tasks.rendezvous, str(tmp_path), i, 2) for i in range(2)]
    assert [f.result(timeout=60)[1] for f in futures] == [True, True]


@pytest.mark.timeout(120)
def test_threads_submitting_to_one_executor(executor):
    n_threads = 8
    errors, outcomes = [], {}
    start = threading.Barrier(n_threads)

    def client(k):
        try:
            start.wait(timeout=60)
            base = k * 1000
            futures = [executor.submit(tasks.add, base, i) for i in range(100)]
            mapped = list(executor.map(tasks.square, range(base, base + 100), chunksize=5))
            outcomes[k] = (
                [f.result(timeout=60) for f in futures] == [base + i for i in range(100)]
                and mapped == [x * x for x in range(base, base + 100)]
            )
        except BaseException as exc:
            errors.append(exc)

    run_clients(client, n_threads)
    assert errors == []
    assert outcomes == {k: True for k in range(n_threads)}
