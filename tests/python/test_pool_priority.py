"""Workers yield to the collector (src/core/engine.c, yield_to_collector;
docs/design.md, "The collector first").

When a pool's workers and its collector thread are more threads than the
process has CPUs, each worker thread lowers its own scheduling priority
(nice) as it starts, by POOLPARTY_WORKER_NICE (0, the default: not at
all).  These tests read every worker thread's nice value from inside a
task, with both dispatch designs and the Executor, and hold the pool to
what must not change: the caller's threads keep their priority, every
result arrives, nothing hangs (a collector stuck in a callback that
waits for a later task, terminate() while the workers are busy).  The
process's CPU count is what each test needs (`cpus`).
"""

import os
import sys
import threading

import pytest

import tasks

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.poolparty_only,
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="only Linux gives a thread its own priority"),
]

WAIT_S = 30


@pytest.fixture
def cpus(monkeypatch):
    """cpus(n): pools made next take this process to have n CPUs."""
    from poolparty import _engine

    monkeypatch.delenv(_engine.WORKER_NICE_ENV, raising=False)

    def set_cpus(n):
        monkeypatch.setattr(_engine, "usable_cpus", lambda: n)

    return set_cpus


@pytest.fixture
def knob(monkeypatch):
    from poolparty import _engine

    return lambda value: monkeypatch.setenv(_engine.WORKER_NICE_ENV, value)


def own_nice():
    return os.getpriority(os.PRIO_PROCESS, 0)


def lowered(by):
    return min(19, own_nice() + by)


def worker_priorities(run, n, directory):
    """The nice values of a pool's n worker threads: `run(fn, items)`
    runs each item as its own task; the tasks meet, so each is a
    different worker."""
    os.mkdir(directory)
    got = run(tasks.thread_priority,
              [(str(directory), me, n) for me in range(n)])
    assert all(arrived for arrived, _, _ in got), got
    assert len({tid for _, tid, _ in got}) == n, got
    return sorted(nice for _, _, nice in got)


def pool_priorities(pool, n, directory):
    return worker_priorities(
        lambda fn, items: pool.starmap(fn, items, chunksize=1), n, directory)


def test_workers_yield_on_oversubscribed_cpus(make_pool, cpus, knob,
                                              tmp_path):
    cpus(2)
    knob("5")
    pool = make_pool(2)  # 2 workers + the collector > 2 CPUs
    assert pool_priorities(pool, 2, tmp_path / "a") == [lowered(5)] * 2
    cpus(1)
    pool = make_pool(1)
    assert pool_priorities(pool, 1, tmp_path / "b") == [lowered(5)]


def test_the_default(make_pool, cpus, tmp_path):
    """Off (WORKER_NICE 0): a competing process in the same session
    would take the workers' share (docs/design.md)."""
    from poolparty import _engine

    cpus(2)
    pool = make_pool(2)
    assert pool_priorities(pool, 2, tmp_path / "a") == [
        lowered(_engine.WORKER_NICE)] * 2


def test_workers_keep_their_priority_with_cpus_to_spare(make_pool, cpus,
                                                        knob, tmp_path):
    cpus(3)
    knob("5")
    before = own_nice()
    pool = make_pool(2)
    assert pool_priorities(pool, 2, tmp_path / "a") == [before] * 2
    assert own_nice() == before


def test_the_knob_sets_how_far_and_zero_turns_it_off(make_pool, cpus, knob,
                                                     tmp_path):
    cpus(2)
    knob("3")
    before = own_nice()
    lowered_pool = make_pool(2)
    knob("0")
    off_pool = make_pool(2)
    assert pool_priorities(lowered_pool, 2, tmp_path / "a") == [
        lowered(3)] * 2
    assert pool_priorities(off_pool, 2, tmp_path / "b") == [before] * 2
    # The caller's threads, the collectors included, are untouched.
    assert own_nice() == before
    collector = lowered_pool._runner._collector.native_id
    with open(f"/proc/self/task/{collector}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[16]) == before


def test_the_executor_workers_yield_too(make_executor, cpus, knob, tmp_path):
    cpus(2)
    knob("4")
    executor = make_executor(2)
    assert worker_priorities(
        lambda fn, items: list(executor.map(fn, *zip(*items))), 2,
        tmp_path / "a") == [lowered(4)] * 2


@pytest.mark.parametrize("value", ["-1", "20", "high", ""])
def test_a_bad_knob_is_refused_and_the_next_pool_works(make_pool, cpus,
                                                       knob, monkeypatch,
                                                       value):
    from poolparty import _engine

    cpus(2)
    knob(value)
    with pytest.raises(ValueError, match=_engine.WORKER_NICE_ENV):
        make_pool(2)
    monkeypatch.delenv(_engine.WORKER_NICE_ENV)
    assert make_pool(2).map(tasks.square, range(20)) == [
        x * x for x in range(20)]


def test_a_stuck_collector_does_not_hold_up_the_workers(make_pool, cpus,
                                                        knob, tmp_path):
    """The collector waits in a callback for a file that a task queued
    behind a waiting one creates: the workers must get to that task.
    First every worker runs the file helpers: on 3.12 a worker asks the
    collector to import each extension module it loads first."""
    cpus(2)
    knob("19")
    pool = make_pool(2)
    assert pool_priorities(pool, 2, tmp_path / "met") == [lowered(19)] * 2
    unblock, done = str(tmp_path / "unblock"), str(tmp_path / "done")
    inside = threading.Event()

    def callback(_):
        inside.set()
        tasks.wait_for_file(unblock, WAIT_S)

    blocked = pool.apply_async(tasks.identity, ("blocked",),
                               callback=callback)
    assert inside.wait(WAIT_S)
    waiting = pool.apply_async(tasks.step, (("wait", done),))
    toucher = pool.apply_async(tasks.touch_all, ([unblock, done],))
    assert blocked.get(WAIT_S) == "blocked"
    assert waiting.get(WAIT_S) == "waited"
    assert toucher.get(WAIT_S) == [unblock, done]
    assert pool.map(tasks.square, range(50)) == [x * x for x in range(50)]


def test_terminate_stops_busy_low_priority_workers(make_pool, cpus, knob,
                                                   tmp_path):
    cpus(2)
    knob("19")
    pool = make_pool(2)
    items = [(str(tmp_path / f"started-{i}"), str(tmp_path / f"ended-{i}"))
             for i in range(2)]
    running = pool.starmap_async(tasks.wait_then_touch, items, chunksize=1)
    for started, _ in items:
        tasks.wait_for_file(started, WAIT_S)
    stopper = threading.Thread(target=pool.terminate)
    stopper.start()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    pool.join()
    assert not any(os.path.exists(ended) for _, ended in items)
    del running


@pytest.mark.parametrize("nice", [-1, 40, 2**31 - 1])
def test_the_engine_refuses_a_step_outside_the_nice_range(nice):
    # 40 steps span every nice value; a larger one overflowed the sum in
    # yield_to_collector, and wrapped negative could raise the workers.
    from poolparty import _engine
    from poolparty import _poolparty as core

    with pytest.raises(ValueError, match="nice"):
        core.Engine(core.PP_DESIGN_QUEUE, 1, 0, _engine.sys_path_blob(),
                    _engine.boot_payload(None, ()), nice=nice)
