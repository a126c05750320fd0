"""Executor.map(..., buffersize=): CPython 3.14's semantics on every Python.

At most ``buffersize`` chunks queued whose results were not yet yielded:
map() queues the first ``buffersize``, and each later one is read from
the input and queued when a result is asked for, so an endless input
works.  The argument checks and their messages are 3.14's.
"""

import itertools
import sys

import pytest

import tasks
from conftest import REFERENCE

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(REFERENCE and sys.version_info < (3, 14),
                       reason="the stdlib's Executor.map has buffersize "
                              "from 3.14 on"),
]


class Counting:
    """An iterator over range(n) (or endless) that counts what was read."""

    def __init__(self, n=None):
        self._items = itertools.count() if n is None else iter(range(n))
        self.read = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._items)
        self.read += 1
        return item


@pytest.mark.parametrize("buffersize", ["foo", 2.0])
def test_buffersize_must_be_an_int(executor, buffersize):
    with pytest.raises(TypeError, match="buffersize must be an integer or "
                                        "None"):
        executor.map(str, range(4), buffersize=buffersize)


@pytest.mark.parametrize("buffersize", [0, -1])
def test_buffersize_must_be_positive(executor, buffersize):
    with pytest.raises(ValueError, match=r"buffersize must be None or > 0"):
        executor.map(str, range(4), buffersize=buffersize)


@pytest.mark.parametrize("buffersize", [1, 2, 4, 8])
def test_results_in_order(executor, buffersize):
    assert list(executor.map(str, range(4), buffersize=buffersize)) == [
        "0", "1", "2", "3"]


def test_several_iterables_stop_at_the_shortest(executor):
    res = executor.map(tasks.mul, range(5), Counting(3), buffersize=2)
    assert list(res) == [0, 1, 4]


def test_an_endless_input(executor):
    res = executor.map(str, itertools.count(), buffersize=2)
    assert [next(res) for _ in range(5)] == ["0", "1", "2", "3", "4"]
    res.close()


def test_several_endless_inputs(executor):
    res = executor.map(tasks.mul, itertools.count(), itertools.count(1),
                       buffersize=3)
    assert [next(res) for _ in range(4)] == [0, 2, 6, 12]
    res.close()


def test_empty_input_and_no_input(executor):
    assert list(executor.map(str, [], buffersize=2)) == []
    assert next(executor.map(str, buffersize=2), None) is None


def test_map_reads_only_buffersize_items_before_the_first_result(executor):
    items = Counting(100)
    executor.map(str, items, buffersize=3)
    executor.shutdown(wait=True)
    assert items.read == 3


def test_each_result_asked_for_reads_one_more(executor):
    items = Counting()
    res = executor.map(tasks.square, items, buffersize=2)
    assert items.read == 2
    for k in range(5):
        assert next(res) == k * k
        assert items.read == 2 + k + 1
    res.close()


def test_chunksize_counts_buffersize_in_chunks(executor):
    items = Counting()
    res = executor.map(tasks.square, items, chunksize=3, buffersize=2)
    assert items.read == 6  # two chunks of three
    assert [next(res) for _ in range(4)] == [0, 1, 4, 9]
    assert items.read == 12  # one more chunk per chunk started
    res.close()


def test_a_failing_item_raises_in_its_place(executor):
    res = executor.map(tasks.fail_on_item, [1, 13, 2], buffersize=1)
    assert next(res) == 1
    with pytest.raises(ValueError):
        next(res)


def test_after_shutdown_asking_for_more_raises(executor):
    res = executor.map(str, itertools.count(), buffersize=2)
    assert next(res) == "0"
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        # The next result would need the next chunk queued.
        next(res)


def test_timeout_covers_the_whole_iteration(executor, gate):
    res = executor.map(tasks.wait_for_file, [gate], timeout=0.1,
                       buffersize=1)
    with pytest.raises(TimeoutError):
        next(res)
