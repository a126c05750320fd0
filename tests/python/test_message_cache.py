"""The threads' message caches (src/core/msg.c): a small task or result
lives in a block that goes back to the thread that made it, whichever
thread frees it.  Messages of every size round-trip through many pools,
both designs, Pool and Executor, and what the caches hold stays bounded:
a pool's threads take their caches with them when they exit, and the
threads that stay keep at most `spare_max` free blocks each."""

import gc
import threading
import time

import pytest

from conftest import REFERENCE, build_executor, build_pool
import data_tasks
import tasks

pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty's core")

if not REFERENCE:
    from poolparty import _poolparty as core

# Around the cache's block (512 bytes with its header) and far past it,
# and past the size pinned instead of copied (64 KB).
SIZES = [0, 1, 100, 380, 400, 420, 440, 450, 460, 500, 600, 4000, 70_000]


def payloads():
    return [bytes([size % 251]) * size for size in SIZES] * 5


def one_round(dispatch):
    """Every path once, with arguments and results of every size."""
    items = payloads()
    with build_pool(dispatch, 2) as pool:
        assert pool.map(data_tasks.echo, items, chunksize=1) == items
        assert list(pool.imap(data_tasks.echo, items)) == items
        assert sorted(pool.imap_unordered(data_tasks.echo, items)) == sorted(
            items)
        pending = [pool.apply_async(data_tasks.echo, (item,))
                   for item in items]
        assert [result.get(30) for result in pending] == items
        # Chunks: several items per message, some past the block.
        assert pool.map(data_tasks.echo, items, chunksize=7) == items
        pool.close()
        pool.join()
    with build_executor(dispatch, 2) as executor:
        futures = [executor.submit(data_tasks.echo, item) for item in items]
        assert [f.result(30) for f in futures] == items
        assert list(executor.map(data_tasks.echo, items)) == items


def settled(before, timeout=20):
    """The caches once the pools' threads have gone (a thread's cache
    goes with its last block after it exits): no more of them than
    `before`, or what there is after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = core.message_cache_stats()
        if now["caches"] <= before["caches"] or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_messages_of_every_size_round_trip_and_the_caches_stay_bounded(
        dispatch):
    one_round(dispatch)  # this thread's cache and the imports, once
    before = settled(core.message_cache_stats())
    for _ in range(6):
        one_round(dispatch)
        after = settled(before)
        assert after["caches"] <= before["caches"], (before, after)
        # The caches that stay (this thread's, and the other tests'
        # threads still alive) keep at most spare_max free blocks each.
        assert after["blocks"] <= after["caches"] * after["spare_max"], after


def test_a_cache_outlives_its_thread_until_its_last_block_is_back(make_pool):
    """Tasks made on a thread that exits before they run: the workers
    give their blocks back after the thread's exit closed its cache (they
    are freed then), and the cache goes with the last of them."""
    pool = make_pool(2)
    # Both workers make a completion, and so have their caches, before
    # the count is taken: one task each, handed to each waiting worker.
    warm = [pool.apply_async(tasks.sleep_then_return, (0.2, i))
            for i in range(2)]
    assert [w.get(60) for w in warm] == [0, 1]
    before = settled(core.message_cache_stats())
    results = []

    def submit():
        # Queued behind a slow task each, so that they run after this
        # thread has exited.
        results.append(pool.map_async(data_tasks.echo, range(3000),
                                      chunksize=1))

    blockers = [pool.apply_async(tasks.sleep_then_return, (0.5, i))
                for i in range(2)]
    thread = threading.Thread(target=submit)
    thread.start()
    thread.join()
    during = core.message_cache_stats()
    assert during["caches"] >= before["caches"] + 1  # its blocks are out
    assert results[0].get(60) == list(range(3000))
    assert [b.get(60) for b in blockers] == [0, 1]
    after = settled(before)
    assert after["caches"] <= before["caches"], (before, during, after)
