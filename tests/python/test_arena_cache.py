"""The pool workers' cache of obmalloc arenas (src/core/arena.c): a
worker keeps the arenas its tasks free, up to a bound, and takes them
again instead of mapping fresh ones; it gives them back when it waits
for work and when it exits; no other thread caches."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import FREE_THREADED, REFERENCE, SUBPROCESS_TIMEOUT, build_pool
import arena_tasks

pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty's core")

if not REFERENCE:
    from poolparty import _poolparty as core

needs_obmalloc = pytest.mark.skipif(
    FREE_THREADED or os.environ.get("PYTHONMALLOC", "").startswith("malloc"),
    reason="objects are not in obmalloc's arenas (free-threaded builds use "
    "mimalloc; PYTHONMALLOC=malloc, as scripts/sanitize.sh runs)")

# Per task: 8 MiB of ints, so 7 or more arenas freed by the worker.
MIB = 8


def settled(timeout=10.0):
    """The stats once every cache is empty (idle workers of other tests'
    pools give theirs back within PP_ARENA_IDLE_NS)."""
    deadline = time.monotonic() + timeout
    while True:
        now = core.arena_stats()
        if now["held"] == 0 or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


@pytest.fixture
def limit():
    """Set the bound for one test; restore it after."""
    old = core.arena_stats()["limit"]
    yield core.arena_limit
    core.arena_limit(old)


@needs_obmalloc
def test_workers_take_the_arenas_they_freed_again(dispatch):
    before = settled()
    assert before["installed"] and before["arena_bytes"] in (2**20, 2**18)
    with build_pool(dispatch, 2) as pool:
        assert pool.map(arena_tasks.churn, [MIB] * 8, chunksize=1) == [
            MIB * 32768] * 8
    after = core.arena_stats()
    # Each task after a worker's first finds the arenas of the one before.
    assert after["kept"] - before["kept"] >= 8
    assert after["hits"] - before["hits"] >= 8


@needs_obmalloc
def test_the_cache_is_bounded_and_emptied_when_the_workers_exit(
        dispatch, limit):
    limit(2)
    before = settled()
    pool = build_pool(dispatch, 2)
    try:
        churned = [pool.apply_async(arena_tasks.churn, (MIB,))
                   for _ in range(6)]
        # Queued behind the churning, so that no worker waits for work
        # (and gives its arenas back) before close().
        sleepers = [pool.apply_async(arena_tasks.sleep_then_pid, (0.5,))
                    for _ in range(2)]
        assert [r.get(60) for r in churned] == [MIB * 32768] * 6
        during = core.arena_stats()
        assert 1 <= during["held"] <= 2 * 2, during
        # A full cache lets the rest go.
        assert during["passed"] - before["passed"] >= 6 * (MIB - 1 - 2)
        pool.close()
        pool.join()
        after = core.arena_stats()
        assert [r.get(1) for r in sleepers]
    finally:
        pool.terminate()
    assert after["held"] == 0, after
    assert after["returned"] - during["returned"] >= during["held"]
    # Every arena kept was handed out again or given back: none lost.
    assert after["kept"] - after["hits"] - after["returned"] == 0, after


@needs_obmalloc
def test_an_idle_worker_gives_its_arenas_back(dispatch):
    settled()
    with build_pool(dispatch, 2) as pool:
        pool.map(arena_tasks.churn, [MIB] * 4, chunksize=1)
        # The pool is open and its workers alive, waiting for work.
        assert settled(5.0)["held"] == 0
        assert pool.apply(arena_tasks.churn, (1,)) == 32768


@needs_obmalloc
def test_no_other_thread_caches():
    settled()
    before = core.arena_stats()
    arena_tasks.churn(MIB)
    thread = threading.Thread(target=arena_tasks.churn, args=(MIB,))
    thread.start()
    thread.join()
    after = core.arena_stats()
    for key in ("hits", "kept", "passed", "held"):
        assert after[key] == before[key], (key, before, after)


@needs_obmalloc
def test_the_bound_is_checked(limit):
    with pytest.raises(ValueError, match="at most"):
        limit(10**6)
    old = limit(0)
    assert limit(old) == 0


@pytest.mark.skipif(not FREE_THREADED, reason="free-threaded builds only")
def test_free_threaded_builds_cache_nothing():
    stats = core.arena_stats()
    assert not stats["installed"]
    assert stats["hits"] == stats["kept"] == stats["held"] == 0


MANY_POOLS = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import poolparty, poolparty._poolparty as core
    import arena_tasks
    core.arena_limit({limit})
    def rss():
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    sizes, held = [], []
    for _ in range(16):
        with poolparty.SubinterpreterPool(2, dispatch={dispatch!r}) as pool:
            pool.map(arena_tasks.churn, [{mib}] * 4, chunksize=1)
            pool.close()
            pool.join()
        held.append(core.arena_stats()['held'])
        sizes.append(rss())
    print(json.dumps({{'held': held, 'rss': sizes}}))
""")


def many_pools(dispatch, limit):
    script = MANY_POOLS.format(tests=os.path.dirname(__file__), limit=limit,
                               dispatch=dispatch, mib=MIB)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                         text=True, timeout=SUBPROCESS_TIMEOUT, check=True)
    return json.loads(out.stdout)


@needs_obmalloc
def test_pools_made_and_closed_many_times_hold_no_growing_memory(dispatch):
    cached = many_pools(dispatch, 32)
    plain = many_pools(dispatch, 0)
    assert cached["held"] == [0] * 16
    # What the process keeps over the last 12 pools, with the cache and
    # without: a worker's cache (up to 32 MiB) left behind per pool
    # would grow it by far more than 8 MiB.
    grew = [run["rss"][-1] - run["rss"][3] for run in (cached, plain)]
    assert grew[0] - grew[1] < 8 * 2**20, grew


@needs_obmalloc
def test_workers_that_replace_their_interpreter_reuse_its_arenas(dispatch):
    """maxtasksperchild: a worker thread ends its interpreter (which frees
    the interpreter's arenas, on 3.13 its unused arena slots as NULL too)
    and makes the next one from the same cache."""
    before = settled()
    with build_pool(dispatch, 2, maxtasksperchild=1) as pool:
        assert pool.map(arena_tasks.churn, [MIB] * 6, chunksize=1) == [
            MIB * 32768] * 6
        pool.close()
        pool.join()
    after = core.arena_stats()
    assert after["hits"] > before["hits"]
    assert after["held"] == 0
