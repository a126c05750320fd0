"""Behaviour SubinterpreterPool and SubinterpreterPoolExecutor share.

Both stand on poolparty._base.PoolBase, which owns argument checks,
pickling with its error captured, map submission and its failure
fan-out: the same inputs fail the same way through either API.
"""

import pytest

import tasks
from conftest import REFERENCE


class _RefusesPickling:
    """A callable whose pickling raises (whatever pickler is used)."""

    def __call__(self, x):
        return x

    def __reduce__(self):
        raise ValueError("refuses pickling")


def _pool_map(make_pool, func, items, chunksize):
    return make_pool(2).map(func, items, chunksize)


def _executor_map(make_executor, func, items, chunksize):
    return list(make_executor(2).map(func, items, chunksize=chunksize))


@pytest.fixture(params=["pool", "executor"])
def run_map(request, make_pool, make_executor):
    if request.param == "pool":
        return lambda *args: _pool_map(make_pool, *args)
    return lambda *args: _executor_map(make_executor, *args)


def test_a_function_that_cannot_be_pickled_fails_the_map(run_map):
    with pytest.raises(ValueError, match="refuses pickling"):
        run_map(_RefusesPickling(), range(10), 3)


def test_an_item_that_cannot_be_pickled_fails_the_map(run_map):
    items = [1, 2, 3, 4, 5, _RefusesPickling(), 7]
    with pytest.raises(ValueError, match="refuses pickling"):
        run_map(tasks.square, items, 2)


@pytest.mark.parametrize("which", ["pool", "executor"])
def test_a_non_callable_initializer_is_refused(which, make_pool, make_executor):
    make = make_pool if which == "pool" else make_executor
    with pytest.raises(TypeError):
        make(2, initializer=42)


@pytest.mark.skipif(REFERENCE, reason="poolparty's own base")
def test_chunk_count_covers_every_item():
    from poolparty._base import chunk_count

    for items in range(0, 40):
        for size in range(1, 9):
            chunks = chunk_count(items, size)
            assert (chunks - 1) * size < items <= chunks * size or items == chunks == 0
