"""Reliability: shutdown(cancel_futures=True) cancels only what no worker took.

CPython's own ``test_cancel_futures`` (test_concurrent_futures.test_shutdown):
50 submits of ``time.sleep(0.1)`` to 5 workers of a *fresh* executor, then
``shutdown(cancel_futures=True)``: more than 20 are cancelled, and at least
one ran and finished.  The stdlib executors get there because a worker
takes a task the moment it is submitted (3.13's SimpleQueue hands it to a
waiting thread; a ThreadPoolExecutor's thread starts inside submit();
ProcessPoolExecutor marks the first max_workers + 1 as running).  Ours:
an idle worker is handed a task at submit(), and shutdown(wait=True,
cancel_futures=True) first lets workers that are still starting take one.
"""

import time

import pytest

from conftest import REFERENCE

pytestmark = pytest.mark.timeout(120)


def _check_cancel_futures(executor, wait=True):
    fs = [executor.submit(time.sleep, 0.1) for _ in range(50)]
    executor.shutdown(wait=wait, cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    others = [f for f in fs if not f.cancelled()]
    assert len(cancelled) > 20
    assert others, "every task was cancelled: no worker took one"
    for f in others:
        assert f.result(timeout=60) is None
    return len(others)


def test_cancel_futures_of_a_fresh_executor(make_executor):
    """CPython's test_cancel_futures, as it is written."""
    _check_cancel_futures(make_executor(5))


def test_cancel_futures_of_an_idle_executor(make_executor):
    """Workers waiting for work are handed a task at submit(): no wake-up
    race decides whether the task counts as started."""
    executor = make_executor(5)
    for f in [executor.submit(time.sleep, 0.05) for _ in range(5)]:
        f.result(timeout=60)
    time.sleep(0.1)  # every worker is back waiting for work
    ran = _check_cancel_futures(executor)
    if not REFERENCE:
        # at least one per idle worker (more when the submits are slow
        # enough, under a sanitizer, for workers to finish theirs)
        assert ran >= 5


def test_cancel_futures_without_waiting_does_not_wait_for_starting_workers(
        make_executor):
    """wait=False returns at once: what the workers did not take yet is
    cancelled (possibly all of it, as with ProcessPoolExecutor's spawn)."""
    executor = make_executor(5)
    fs = [executor.submit(time.sleep, 0.1) for _ in range(50)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert sum(f.cancelled() for f in fs) > 20
    for f in fs:
        if not f.cancelled():
            assert f.result(timeout=60) is None
