"""The collector first (src/core/engine.c, "the gate"; docs/design.md).

When a pool's workers and its collector thread are more threads than
the process has cores, and the collector decodes results slower than
the workers make them (measured on map chunks sent in parts), a worker
that finishes a task or a part while the collector is behind parks
before going on, so that the collector keeps a core.  These tests hold
it to what must not change: every result arrives, nothing hangs -- not
when the collector is stuck in a callback that waits for a later task,
not when terminate() comes while a worker is parked -- the gate is only
there on oversubscribed cores, and nobody parks where the collector
keeps up.  Each runs with both dispatch designs; `_poolparty.assume_cpus`
makes the process's core count what the test needs.  No timing is
asserted: the waits below are deadlines for things that must happen.
"""

import os
import threading
import time

import pytest

import tasks
from conftest import FREE_THREADED
from poolparty import _engine

pytestmark = [pytest.mark.timeout(120), pytest.mark.poolparty_only]

WAIT_S = 30


@pytest.fixture
def cores():
    """cores(n): pools made next take this process to have n cores."""
    from poolparty import _poolparty

    yield _poolparty.assume_cpus
    _poolparty.assume_cpus(0)


def gate(pool):
    return pool._runner.engine.gate


def wait_until(predicate, what, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


def outpaced(stats):
    """The engine measured its collector decoding parts slower than its
    workers (2 here) make them, with a core each: the gate's condition."""
    return (stats["make_ns"] > 0 and
            stats["decode_cpu_ns"] * 2 > stats["make_ns"] and
            stats["untimed_run"] < 64)


def teach_outpaced(pool):
    """A map whose chunks go in parts (each chunk more than 2 ms of a
    worker's CPU) of results that take longer to rebuild as objects than
    to make: lists of distinct ints.  On a free-threaded build they do
    not (the worker encodes through a copy of each list, the collector
    decodes faster: about 8 ms to make a part against 2.5 to decode it,
    3.13.5t), so the collector keeps up there and nobody parks: the tests
    that need it outpaced are skipped, on what the engine measured."""
    items = [(i, 100_000) for i in range(16)]
    for _ in range(5):
        assert pool.starmap(tasks.ramp, items, chunksize=4) == [
            list(range(i, i + n)) for i, n in items]
        if outpaced(gate(pool)):
            return
    if FREE_THREADED:
        pytest.skip(f"the collector keeps up on this build: {gate(pool)}")
    raise AssertionError(f"the engine never measured it: {gate(pool)}")


def teach_slow_collector(pool, seconds, tmp_path):
    """Make the engine's average time per completion at least half of
    `seconds`: a pool result's callback runs inside the collector's
    batch, so a slow one is what the engine measures (its average
    weighs the batches before too: on 3.12, the workers' import
    requests); and make it know its collector outpaced (above).  First
    every worker runs the file helpers the tests use: on 3.12 a worker
    asks the collector to import each extension module it loads first,
    and a collector stuck in a callback would never answer."""
    assert all(arrived for _, arrived, _ in pool.starmap(
        tasks.rendezvous, [(str(tmp_path), me, 2) for me in range(2)],
        chunksize=1))
    teach_outpaced(pool)
    for _ in range(20):
        if gate(pool)["decode_ns"] >= seconds * 1e9 / 2:
            return
        pool.apply_async(tasks.identity, (0,),
                         callback=lambda _: time.sleep(seconds)).get(WAIT_S)
    raise AssertionError(f"the engine never measured it: {gate(pool)}")


def block_collector(pool, release):
    """Leave the collector inside a result's callback until `release()`
    is true; returns once it is there, with that result undelivered."""
    inside = threading.Event()

    def callback(_):
        inside.set()
        wait_until(release, "the collector was released")

    result = pool.apply_async(tasks.identity, ("blocked",), callback=callback)
    assert inside.wait(WAIT_S)
    return result


def test_gate_only_on_oversubscribed_cores(make_pool, cores, monkeypatch):
    cores(2)
    oversubscribed = make_pool(2)  # 2 workers + the collector > 2 cores
    cores(3)
    spare = make_pool(2)
    cores(1)
    single = make_pool(3)
    cores(0)
    usable = _engine.usable_cpus()
    default = make_pool(usable + 1)  # on by default: the process's cores
    monkeypatch.setenv(_engine.GATE_ENV, "0")
    off = make_pool(usable + 1)
    assert gate(oversubscribed)["run_limit"] == 1
    assert gate(spare)["run_limit"] == 2
    assert gate(single)["run_limit"] == 1
    assert gate(default)["run_limit"] == max(usable - 1, 1)
    assert gate(off)["run_limit"] == usable + 1
    for pool in (oversubscribed, spare, single, default, off):
        assert pool.map(tasks.square, range(100)) == [
            x * x for x in range(100)]


@pytest.mark.parametrize("value", ["2", "yes", "", " 1"])
def test_a_bad_gate_setting_is_refused_and_says_what_to_write(
        make_pool, monkeypatch, value):
    monkeypatch.setenv(_engine.GATE_ENV, value)
    with pytest.raises(ValueError, match=r"POOLPARTY_GATE must be 1 .* or 0"):
        make_pool(2)
    monkeypatch.delenv(_engine.GATE_ENV)
    assert make_pool(2).map(tasks.square, range(10)) == [
        x * x for x in range(10)]


def test_nobody_parks_where_the_collector_keeps_up(make_pool, cores):
    """Results that take the collector far less time to rebuild than the
    workers to make (a float a task of 50 ms) never park a worker, however
    far behind the collector's queue looks at times; nor do results that
    never went in parts (no measure: chunksize 1)."""
    cores(2)
    pool = make_pool(2)
    assert pool.map(tasks.spin, [200_000] * 32, chunksize=4) == [
        sum(range(200_000))] * 32
    # The chunks went in parts, and the engine measured them.
    stats = gate(pool)
    assert pool._runner.engine.parts > 0 and stats["make_ns"] > 0
    assert not outpaced(stats), stats
    assert gate(pool)["parks"] == 0, stats
    # Results under 64 KB a task, never in parts (4,096 floats, 32 KB):
    # nothing measured, no parks.
    fresh = make_pool(2)
    assert list(fresh.imap(tasks.floats_of, range(64), chunksize=1)) == [
        tasks.floats_of(i) for i in range(64)]
    assert gate(fresh)["parks"] == 0 and fresh._runner.engine.parts == 0
    # Nor is the collector's account kept (its progress and time per
    # completion): a pool of small results pays nothing for the gate.
    assert gate(fresh)["make_ns"] == 0 and gate(fresh)["decode_ns"] == 0, \
        gate(fresh)


def test_a_pool_whose_results_became_small_stops_parking(make_pool, cores):
    """Large results made the engine find its collector outpaced; 64
    small ones after them (32 KB, not timed) make that measure stale, and
    the workers stop parking for them."""
    cores(2)
    pool = make_pool(2)
    teach_outpaced(pool)
    expected = [tasks.floats_of(i) for i in range(64)]
    assert list(pool.imap(tasks.floats_of, range(64), chunksize=1)) == expected
    assert not outpaced(gate(pool)), gate(pool)
    parks = gate(pool)["parks"]
    for _ in range(3):
        assert list(pool.imap(tasks.floats_of, range(64),
                              chunksize=1)) == expected
    assert gate(pool)["parks"] == parks, gate(pool)


def test_workers_park_between_tasks_for_large_results(make_pool, cores):
    """Results of 64 KB or more a task (lists of 100,000 distinct ints,
    one a task: no parts) are timed too: the engine finds its collector
    outpaced, and workers park between tasks while it is behind; every
    result arrives, in order."""
    cores(2)
    pool = make_pool(2)
    items = [(i, 100_000) for i in range(32)]
    expected = [list(range(i, i + n)) for i, n in items]
    for _ in range(5):
        assert list(pool.imap(tasks.ramp_of, items, chunksize=1)) == expected
        if gate(pool)["parks"] >= 1:
            break
    stats = gate(pool)
    assert pool._runner.engine.parts == 0 and stats["make_ns"] > 0, stats
    if FREE_THREADED and not outpaced(stats):
        pytest.skip(f"the collector keeps up on this build: {stats}")
    assert outpaced(stats) and stats["parks"] >= 1, stats
    assert stats["part_parks"] == 0 and stats["undecoded"] == 0, stats
    assert stats["decode_ns"] > 0, stats  # the account is kept now


def test_workers_park_between_parts_where_the_collector_is_outpaced(
        make_pool, cores):
    """Lists of distinct ints take longer to rebuild than to make: with 2
    workers on (as the gate is told) 2 cores, the engine finds its
    collector outpaced, and workers park inside their chunks, at parts,
    while it is behind; every result arrives whole and in order."""
    cores(2)
    pool = make_pool(2)
    teach_outpaced(pool)
    items = [(i, 100_000) for i in range(64)]
    expected = [list(range(i, i + n)) for i, n in items]
    for _ in range(3):
        assert pool.starmap(tasks.ramp, items, chunksize=8) == expected
    stats = gate(pool)
    assert stats["part_parks"] >= 1 and stats["undecoded"] == 0, stats


def test_results_whole_and_in_order_through_the_gate(make_pool, cores):
    cores(2)
    pool = make_pool(4)
    items = [(i, 20_000) for i in range(64)]
    expected = [[i + j for j in range(n)] for i, n in items]
    for _ in range(3):
        assert pool.starmap(tasks.ramp, items, chunksize=1) == expected
        assert list(pool.imap(tasks.ramp_of, items)) == expected
        assert sorted(pool.imap_unordered(tasks.ramp_of, items)) == expected
    assert gate(pool)["undecoded"] == 0


def test_parked_worker_goes_on_when_the_collector_waits_for_it(
        make_pool, cores, tmp_path):
    """The collector is stuck in a callback until a task touches a file;
    one worker runs a task that waits for that task too, the other
    parks as it finishes a task, and the task that touches the files is
    queued behind them.  Waiting for the collector for ever would be a
    deadlock: the parked worker must give up on it and run that task."""
    cores(2)
    pool = make_pool(2)
    teach_slow_collector(pool, 0.01, tmp_path)
    unblock, done = str(tmp_path / "unblock"), str(tmp_path / "done")
    blocked = block_collector(pool, lambda: os.path.exists(unblock))
    waiting = pool.apply_async(tasks.step, (("wait", done),))
    parker = pool.apply_async(tasks.identity, ("parker",))
    toucher = pool.apply_async(tasks.touch_all, ([unblock, done],))
    assert waiting.get(WAIT_S) == "waited"
    assert toucher.get(WAIT_S) == [unblock, done]
    assert parker.get(WAIT_S) == "parker"
    assert blocked.get(WAIT_S) == "blocked"
    stats = gate(pool)
    assert stats["parks"] >= 1 and stats["stalls"] >= 1, stats
    # The collector moved again: later results come as before.
    assert pool.map(tasks.square, range(50)) == [x * x for x in range(50)]


def test_a_map_made_in_parts_goes_on_while_the_collector_is_stuck(
        make_pool, cores, tmp_path):
    """The collector is stuck in a callback while a map's chunks are made
    in parts, with the engine knowing its collector outpaced: a worker
    that parks (between tasks or at a part: the same wait) gives up on
    the collector after the stall time, and every chunk is made; once the
    collector is free, the map's results arrive whole."""
    cores(2)
    pool = make_pool(2)
    teach_slow_collector(pool, 0.01, tmp_path)
    released = threading.Event()
    try:
        blocked = block_collector(pool, released.is_set)
        items = [(i, 100_000) for i in range(16)]
        result = pool.starmap_async(tasks.ramp, items, chunksize=8)
        # Parts made after a park that ended in a stall (the workers went
        # on), nothing delivered: the collector is still in the callback.
        try:
            wait_until(lambda: gate(pool)["queued"] >= 4 and
                       gate(pool)["parked"] == 0 and
                       gate(pool)["stalls"] >= 1, "the chunks were made")
        except AssertionError as e:
            raise AssertionError(f"{e}: {gate(pool)}") from None
        assert not result.ready()
    finally:
        released.set()
    assert blocked.get(WAIT_S) == "blocked"
    assert result.get(WAIT_S) == [list(range(i, i + n)) for i, n in items]
    assert pool._runner.engine.parts > 0


def test_terminate_wakes_a_parked_worker(make_pool, cores, tmp_path):
    """A worker parked behind a collector stuck in a callback goes on at
    terminate(), long before it would give up on the collector (after
    four of the collector's 1 s batches)."""
    cores(2)
    pool = make_pool(2)
    teach_slow_collector(pool, 1.0, tmp_path)
    released = threading.Event()
    blocked = block_collector(pool, released.is_set)
    parked = pool.apply_async(tasks.identity, ("parked",))
    # A worker parked, and `parked` is done (its completion waits behind
    # the stuck collector): the worker that parks may be the one that
    # ran `blocked`, and terminate() must not find `parked` running.
    wait_until(lambda: gate(pool)["parked"] == 1 and gate(pool)["queued"],
               "a worker parked")
    # When it would give up on the collector by itself.
    stall_s = 4 * gate(pool)["decode_ns"] / 1e9
    stopper = threading.Thread(target=pool.terminate)
    stopper.start()
    try:
        # While the collector is still stuck (terminate() abandons a
        # worker that does not exit, so the pool's join says little).
        wait_until(lambda: gate(pool)["parked"] == 0,
                   "the parked worker went on", timeout=stall_s / 2)
    finally:
        released.set()
        stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert blocked.get(WAIT_S) == "blocked"
    assert parked.get(WAIT_S) == "parked"
