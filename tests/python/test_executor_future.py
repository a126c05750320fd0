"""The Future that SubinterpreterPoolExecutor.submit() returns.

It is a concurrent.futures.Future subclass written in C
(src/module/future_type.c) that makes its Condition and lists only when
something waits.  The first half drives it and the stdlib's Future
through the same steps and compares everything observable; the second
half checks it inside the executor: the C submit and delivery paths,
waiting from other threads while results arrive, callbacks, asyncio,
garbage collection.
"""

import asyncio
import concurrent.futures as cf
import gc
import threading
import weakref

import pytest

import tasks
from conftest import REFERENCE, submit_blocked

pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty's own Future type")

OURS = None if REFERENCE else __import__("poolparty.executor").executor._Future


# --- the same steps on both Future types --------------------------------------

def outcome(call):
    """What call() returned, or the name of the exception it raised."""
    try:
        return ("returned", call())
    except BaseException as exc:  # noqa: BLE001 - compared, not swallowed
        return ("raised", type(exc).__name__, str(exc).split(":")[0])


def state(future):
    return (future.done(), future.cancelled(), future.running(), future._state)


ERROR = ValueError("boom")


def steps_result(future):
    seen = [state(future), outcome(lambda: future.result(timeout=0))]
    seen.append(outcome(lambda: future.set_result(42)))
    seen += [state(future), outcome(future.result), outcome(future.exception)]
    seen.append(outcome(lambda: future.set_result(43)))
    seen.append(outcome(lambda: future.set_exception(ERROR)))
    seen += [outcome(future.cancel), state(future), outcome(future.result)]
    return seen


def steps_exception(future):
    seen = [outcome(lambda: future.set_exception(ERROR))]
    seen += [state(future), outcome(future.result)]
    seen.append(future.exception() is ERROR)
    try:
        future.result()
    except ValueError as exc:
        seen.append(exc is ERROR)
    return seen


def steps_cancel(future):
    seen = [outcome(future.cancel), state(future)]
    seen += [outcome(future.result), outcome(lambda: future.exception(timeout=0))]
    seen.append(outcome(lambda: future.set_result(1)))
    seen.append(outcome(future.set_running_or_notify_cancel))
    seen += [state(future), outcome(future.cancel)]
    return seen


def steps_running(future):
    seen = [outcome(future.set_running_or_notify_cancel), state(future)]
    seen += [outcome(future.cancel), outcome(lambda: future.result(timeout=0))]
    seen.append(outcome(lambda: future.set_result("x")))
    seen += [state(future), outcome(future.result)]
    return seen


def steps_callbacks(future):
    calls = []
    future.add_done_callback(lambda f: calls.append(("before", f is future)))
    seen = [list(calls)]
    future.set_result(7)
    future.add_done_callback(lambda f: calls.append(("after", f.result())))
    seen.append(calls)
    return seen


def steps_none_result(future):
    future.set_result(None)
    return [state(future), outcome(future.result), outcome(future.exception)]


def steps_odd_calls(future):
    # An exception class (raise makes an instance), bad arguments on a
    # finished future, a timeout given by name.
    seen = [outcome(lambda: future.set_exception(KeyError))]
    seen += [outcome(future.result), outcome(lambda: future.result(timeout=1))]
    seen += [outcome(lambda: future.result(1, 2)),
             outcome(lambda: future.result(when=1)),
             outcome(lambda: type(future.exception(0)).__name__)]
    return seen


def steps_private_attributes(future):
    # What concurrent.futures.wait() and as_completed() use.
    with future._condition:
        seen = [future._state, list(future._waiters), list(future._done_callbacks)]
    future.set_result(5)
    seen += [future._state, future._result, future._exception]
    return seen


@pytest.mark.parametrize("steps", [steps_result, steps_exception, steps_cancel,
                                   steps_running, steps_callbacks,
                                   steps_none_result, steps_odd_calls,
                                   steps_private_attributes])
def test_behaves_like_the_stdlib_future(steps):
    assert steps(OURS()) == steps(cf.Future())


def test_is_a_stdlib_future_and_reprs_like_one():
    future = OURS()
    assert isinstance(future, cf.Future)
    assert "state=pending" in repr(future)
    future.set_result([1])
    assert "state=finished returned list" in repr(future)


def test_takes_no_arguments():
    with pytest.raises(TypeError):
        OURS(1)


def test_wait_and_as_completed_see_futures_finished_by_another_thread():
    # The waiters are installed first, so these finishes take the stdlib
    # path under the condition; the futures finished before wait() took
    # the fast path.
    early = [OURS() for _ in range(50)]
    for i, future in enumerate(early):
        future.set_result(i)
    late = [OURS() for _ in range(50)]
    waiting = threading.Event()

    def finish_late():
        waiting.wait(10)
        for i, future in enumerate(late):
            future.set_result(i)

    thread = threading.Thread(target=finish_late)
    thread.start()
    waiting.set()
    done, not_done = cf.wait(early + late, timeout=30)
    thread.join()
    assert done == set(early + late) and not not_done
    assert set(cf.as_completed(early + late, timeout=30)) == set(early + late)


# --- inside the executor ------------------------------------------------------------------

def test_submit_returns_ours_on_both_paths(executor):
    fast = executor.submit(tasks.square, 3)        # plain data: the C path
    slow = executor.submit(tasks.identity, object)  # needs pickle: Python path
    assert type(fast) is OURS and type(slow) is OURS
    assert fast.result(timeout=60) == 9 and slow.result(timeout=60) is object
    kwargs = executor.submit(tasks.fail_on, 4, bad=5)
    assert kwargs.result(timeout=60) == 16


def test_every_outcome_travels_the_fast_path_correctly(executor):
    futures = [executor.submit(tasks.fail_on, i, 13) for i in range(40)]
    for i, future in enumerate(futures):
        if i == 13:
            with pytest.raises(ValueError, match="bad item"):
                future.result(timeout=60)
            assert isinstance(future.exception(), ValueError)
        else:
            assert future.result(timeout=60) == i * i
    assert executor._futures == {}  # nothing left registered


def test_pickled_results_and_their_failures_finish_their_futures(executor):
    # A result the codec leaves to pickle is unpickled by the collector
    # and finishes its future like a plain one; one whose unpickling
    # raises fails just its future, unpickled once.
    tasks.UNPICKLED_HERE.clear()
    futures = [executor.submit(tasks.as_set, i) for i in range(40)]
    failing = [executor.submit(tasks.return_fails_when_unpickled, text)
               for text in "ab"]
    assert [f.result(timeout=60) for f in futures] == [{i} for i in range(40)]
    for future, text in zip(failing, "ab"):
        with pytest.raises(ValueError, match=text):
            future.result(timeout=60)
    assert sorted(tasks.UNPICKLED_HERE) == ["a", "b"]
    assert executor._futures == {}  # nothing left registered


def test_results_waited_on_from_many_threads_while_they_arrive(executor):
    # Waiters make conditions on futures that the collector may be
    # finishing at that moment: every result must still reach them.
    futures = [executor.submit(tasks.square, i) for i in range(3000)]
    seen = [None] * 4

    def client(k):
        if k == 0:
            seen[k] = [f.result(timeout=60) for f in futures]
        elif k == 1:
            done, not_done = cf.wait(futures, timeout=60)
            seen[k] = sorted(f.result() for f in done) if not not_done else None
        elif k == 2:
            seen[k] = sorted(f.result() for f in cf.as_completed(futures, timeout=60))
        else:
            calls = []
            lock = threading.Lock()
            all_in = threading.Event()

            def record(future):
                with lock:
                    calls.append(future.result())
                    if len(calls) == len(futures):
                        all_in.set()

            for future in futures:
                future.add_done_callback(record)
            all_in.wait(60)
            seen[k] = sorted(calls)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    squares = [i * i for i in range(3000)]
    assert seen == [squares] * 4


def test_a_waiter_blocked_before_the_result_is_woken(executor, gate, tmp_path):
    future = submit_blocked(executor, gate, tmp_path, "late")
    got = []
    waiter = threading.Thread(target=lambda: got.append(future.result(timeout=60)))
    waiter.start()
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.05)
    open(gate, "w").close()
    waiter.join(60)
    assert got == ["late"]


def test_asyncio_run_in_executor_and_wrap_future(executor):
    async def main():
        loop = asyncio.get_running_loop()
        direct = await loop.run_in_executor(executor, tasks.square, 6)
        wrapped = await asyncio.wrap_future(executor.submit(tasks.square, 7))
        return direct, wrapped

    assert asyncio.run(main()) == (36, 49)


def test_futures_are_freed(executor):
    def count():
        gc.collect()
        return sum(type(o) is OURS for o in gc.get_objects())

    before = count()
    futures = [executor.submit(tasks.square, i) for i in range(500)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(500)]
    cycle = futures[0]
    cycle.me = cycle  # a reference cycle through the instance dict
    ref = weakref.ref(cycle)
    del futures, cycle
    assert count() == before
    assert ref() is None


def test_cancel_through_the_fast_path(make_executor, gate, tmp_path):
    ex = make_executor(1)
    blocker = submit_blocked(ex, gate, tmp_path, "blocker")
    queued = [ex.submit(tasks.square, i) for i in range(4)]
    assert queued[1].cancel() and queued[1].cancelled()
    assert queued[1]._state == "CANCELLED_AND_NOTIFIED"
    open(gate, "w").close()
    assert blocker.result(timeout=60) == "blocker"
    assert [queued[i].result(timeout=60) for i in (0, 2, 3)] == [0, 4, 9]
    assert queued[0].cancel() is False
