"""Values as computations make them, through the pool both ways: each
type the codec handles, the pickle fallback for the rest, large and deep
values, and results a task keeps changing after it returned them."""

import array
import fractions
import sys
import time

import pytest

from conftest import FREE_THREADED, REFERENCE, skip_on_312
import data_tasks
from poolparty_bench import workloads

VALUES = [
    list(range(10_000, 20_000)),                       # distinct ints
    [i * 0.37 for i in range(10_000)],                 # distinct floats
    [2**70 + i for i in range(100)], -(3**500),        # beyond 64 bits
    [f"row {i}" for i in range(1_000)], "caf\u00e9 \u20ac \U0001f600",
    "lone \udc80 surrogate",
    [{"id": i, "name": str(i), "tags": ["a"], "ok": True} for i in range(200)],
    (1, 2.5, "x", b"y", None, (), []),
    bytes(range(256)) * 1000, bytearray(b"abc" * 1000),
    array.array("d", range(10_000)), array.array("b", [1, -1]),
]
FALLBACK = [                                           # pickle's job
    {1, 2, 3}, frozenset("ab"), 1 + 2j, fractions.Fraction(1, 3),
    [{"set": {1}}], {(1, 2): [3]},
]


@pytest.mark.parametrize("value", VALUES + FALLBACK)
def test_values_round_trip_as_arguments_and_results(make_pool, value):
    with make_pool(1) as pool:
        assert pool.apply(data_tasks.echo, (value,)) == value
        back = pool.map(data_tasks.echo, [value, value], chunksize=2)
    assert back == [value, value]
    assert all(type(b) is type(value) for b in back)


def test_the_executor_round_trips_them_too(make_executor):
    with make_executor(1) as executor:
        for value in VALUES + FALLBACK:
            assert executor.submit(data_tasks.echo, value).result() == value
        assert list(executor.map(data_tasks.echo, VALUES)) == VALUES


@pytest.mark.skipif(REFERENCE, reason="pickle refuses memoryviews")
def test_memoryviews_travel_too(make_pool):
    values = [memoryview(b"x" * 100_000), memoryview(array.array("i", [1, 2])),
              memoryview(bytearray(b"rw"))]
    with make_pool(1) as pool:
        for value in values:
            back = pool.apply(data_tasks.echo, (value,))
            assert type(back) is memoryview and back == value
            assert (back.format, back.readonly) == (value.format, value.readonly)


@pytest.mark.skipif(REFERENCE, reason="poolparty's codec")
def test_a_returned_bytearray_is_what_it_was_when_returned(make_pool):
    # A thread of the task keeps writing 0xff over the buffer after the
    # task returned it: the caller must get the zeros it returned.
    with make_pool(1) as pool:
        for _ in range(5):
            got = pool.apply(data_tasks.bytearray_still_written, (1 << 20, 0.2))
            assert type(got) is bytearray and len(got) == 1 << 20
            if FREE_THREADED:
                # There the task's thread writes beside the encoding, so
                # which bytes were copied is a race of the task's own
                # making; what the caller got is still its own copy: it
                # does not change while that thread goes on writing.
                seen = bytes(got)
                time.sleep(0.3)
                assert got == seen
            else:
                assert got == bytes(1 << 20)


@pytest.mark.reference_hangs  # a spawn Pool waits for that result forever
@skip_on_312("3.12.1 aborts at exit after it: pickle's RecursionError makes "
             "the worker retry with cloudpickle (interp.c dumps_by_value), "
             "whose import in a subinterpreter is one of 3.12.1's exit "
             "hazards")
def test_deep_results_are_an_error_not_a_crash(make_pool):
    with make_pool(1) as pool:
        assert pool.apply(data_tasks.nested, (50,)) == data_tasks.nested(50)
        # Too deep for the codec, then for pickle: multiprocessing's
        # MaybeEncodingError, naming the RecursionError.
        with pytest.raises(Exception, match="[Rr]ecursion"):
            pool.apply(data_tasks.nested, (200_000,))
        assert pool.apply(data_tasks.echo, (7,)) == 7   # still usable


def test_large_values_both_ways(make_pool):
    blob = bytes(range(256)) * (32 << 12)               # 32 MB
    rows = [(i, float(i), str(i)) for i in range(200_000)]
    with make_pool(2) as pool:
        assert pool.apply(data_tasks.kind_and_length, (blob,)) == ("bytes", len(blob))
        assert pool.apply(data_tasks.echo, (blob,)) == blob
        assert pool.map(data_tasks.kind_and_length, [rows, blob]) == [
            ("list", len(rows)), ("bytes", len(blob))]


@pytest.mark.parametrize("workload", workloads.REAL_DATA,
                         ids=lambda w: w.NAME)
def test_the_real_data_workloads_check_their_results(workload):
    inputs = workload.inputs(0.03)
    results = [workload.task(arg) for arg in inputs]
    assert workload.check(inputs, results)
    assert not workload.check(inputs, results[::-1])   # wrong task's result
    assert not workload.check(inputs, results[:-1])
    assert sys.getsizeof(results[0]) > 8_000           # not trivially small
