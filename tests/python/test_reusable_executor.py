"""poolparty.get_reusable_executor(): one warm executor for the process.

Reused while its settings match (same object, same worker interpreters);
a new size or initializer replaces it after the old one has finished
what was queued on it; shut down or broken, the next call makes another.
"""

import os

import pytest

import reliability_tasks as rt
from conftest import REFERENCE

pytestmark = [
    pytest.mark.skipif(REFERENCE, reason="poolparty's own API"),
    pytest.mark.timeout(120),
]


def _interp_ids(executor, n):
    return {executor.submit(rt.pid_and_interp).result(timeout=60)[1]
            for _ in range(n)}


@pytest.fixture
def reusable(dispatch):
    import poolparty

    made = []

    def get(*args, **kwargs):
        executor = poolparty.get_reusable_executor(*args, dispatch=dispatch, **kwargs)
        made.append(executor)
        return executor

    yield get
    for executor in made:
        executor.shutdown(wait=True)


def test_the_same_warm_executor_is_reused(reusable):
    first = reusable(2)
    seen = _interp_ids(first, 8)
    second = reusable(2)
    assert second is first
    assert _interp_ids(second, 8) <= seen | _interp_ids(first, 8)


def test_another_size_replaces_it_and_the_old_one_finishes_its_work(reusable, tmp_path):
    small = reusable(1)
    queued = [small.submit(rt.sleep_then, 0.05, i) for i in range(5)]
    bigger = reusable(2)
    assert bigger is not small and bigger._max_workers == 2
    assert [f.result(timeout=60) for f in queued] == list(range(5))
    with pytest.raises(RuntimeError):
        small.submit(rt.increment, 1)
    assert bigger.submit(rt.increment, 1).result(timeout=60) == 2
    assert reusable(2) is bigger


def test_a_new_one_after_shutdown_or_another_initializer(reusable):
    first = reusable(1)
    first.shutdown()
    second = reusable(1)
    assert second is not first
    assert second.submit(rt.increment, 2).result(timeout=60) == 3
    third = reusable(1, initializer=os.getpid)
    assert third is not second
    assert third.submit(rt.increment, 3).result(timeout=60) == 4


def test_a_broken_one_is_replaced(reusable):
    import poolparty

    broken = reusable(1, initializer=rt.raise_memory_error)
    with pytest.raises(poolparty.BrokenInterpreterPool):
        broken.submit(rt.increment, 1).result(timeout=60)
    again = reusable(1, initializer=rt.raise_memory_error)
    assert again is not broken


def test_bad_arguments():
    import poolparty

    with pytest.raises(ValueError):
        poolparty.get_reusable_executor(0)
    with pytest.raises(ValueError):
        poolparty.get_reusable_executor(1, dispatch="thread")
