"""Large buffers between interpreters: copied at most once (pinned: the
receiver copies straight from the sender's object, which the sender
releases later under its own GIL), and pickle protocol 5's out-of-band
buffers carried beside their pickle, both ways, in both dispatch designs,
through the Pool and the Executor; what a task does to a buffer after
returning it, and errors in the middle of a message."""

import array
import os
import pickle
import select
import time

import pytest

from conftest import FREE_THREADED, REFERENCE, engine_completions, skip_on_312
import data_tasks

pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty's codec")

if not REFERENCE:
    from poolparty import _poolparty as core

    PIN_MIN = core.PP_PIN_MIN

    def stats():
        return core.buffer_stats()
else:  # pragma: no cover
    PIN_MIN = 1 << 16


def warm(pool, *functions):
    """Run each function once: a function's first call takes the Python
    path, whose arguments the codec encodes into a bytes first (copied;
    see docs/design.md), later ones are one C call."""
    for function in functions:
        if hasattr(pool, "apply"):
            pool.apply(function, (b"",))
        else:
            pool.submit(function, b"").result()


def pins_released(pool, before, timeout=10):
    """Whether every pin made since `before` is released within
    `timeout`: a worker releases its results' pins at its next task, the
    caller its arguments' at the collector's next turn."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool.map(data_tasks.echo, range(8), chunksize=1)
        if stats()["pins_live"] <= before["pins_live"]:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("size", [PIN_MIN - 1, PIN_MIN, PIN_MIN + 1, 3 << 20])
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "array", "memoryview"])
def test_large_results_are_pinned_not_copied_twice(make_pool, kind, size):
    with make_pool(1) as pool:
        before = stats()
        got = pool.apply(data_tasks.make_buffer, (kind, size))
        made = stats()["pinned"] - before["pinned"]
        assert type(got) is type(data_tasks.make_buffer(kind, 1))
        assert len(got) == size and bytes(got) == b"\x01" * size
        pinnable = size >= PIN_MIN and (
            kind in ("bytes", "memoryview") or not FREE_THREADED)
        assert made == (1 if pinnable else 0)
        assert pins_released(pool, before)


def test_a_buffer_the_task_still_holds_is_copied_not_pinned(make_pool):
    with make_pool(1) as pool:
        before = stats()
        got = pool.apply(data_tasks.make_buffer, ("kept bytearray", 2 * PIN_MIN))
        assert got == bytearray(b"\x01") * (2 * PIN_MIN)
        assert stats()["pinned"] == before["pinned"]


@pytest.mark.parametrize("size", [PIN_MIN - 1, PIN_MIN, 5 << 20])
def test_large_arguments_are_pinned_and_released(make_pool, size):
    blob = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with make_pool(2) as pool:
        warm(pool, data_tasks.kind_and_length, data_tasks.echo)
        before = stats()
        assert pool.apply(data_tasks.kind_and_length, (blob,)) == ("bytes", size)
        assert pool.map(data_tasks.kind_and_length, [blob, blob, b"s"],
                        chunksize=1) == [("bytes", size)] * 2 + [("bytes", 1)]
        assert pool.apply(data_tasks.echo, (blob,)) == blob
        made = stats()["pinned"] - before["pinned"]
        # The argument 4 times; echo's result once more.
        assert made == (5 if size >= PIN_MIN else 0)
        assert pins_released(pool, before)


@pytest.mark.parametrize("how", ["weakref", "gc"])
def test_an_array_the_task_reaches_again_is_not_changed_under_the_caller(how):
    # The task keeps no reference to the array it returns, yet a thread of
    # its own reaches it again -- by a weak reference, or through
    # gc.get_objects() -- after it returned, and overwrites it; only then
    # does the caller read the result.  A pin left the array reachable and
    # the caller copied the 0xff; what it gets must be the zeros returned.
    from poolparty import _engine

    size = 4 * PIN_MIN
    engine = core.Engine(core.PP_DESIGN_QUEUE, 1, 0, _engine.sys_path_blob(),
                         _engine.boot_payload(None, ()))
    completions = engine_completions(engine)
    read, write = os.pipe()
    try:
        echo, flags = _engine.function_pickle(data_tasks.echo)
        engine.submit(1, 0, core.PP_TASK_CALL | flags, echo,
                      _engine.dumps(((0,), None)))
        assert next(completions) == (0, True, 0)  # imports done
        before = stats()
        func, flags = _engine.function_pickle(data_tasks.array_reached_later)
        engine.submit(1, 1, core.PP_TASK_CALL | flags, func,
                      _engine.dumps(((how, size, write), None)))
        assert select.select([read], [], [], 60)[0], "the thread never ended"
        index, ok, got = next(completions)
        assert (index, ok, type(got), len(got)) == (1, True, array.array, size)
        assert got.tobytes() == bytes(size)
        # Out of everyone's reach, an array is still pinned.
        pinned = stats()["pinned"] - before["pinned"]
        assert pinned == (1 if how == "gc" and not FREE_THREADED else 0)
    finally:
        engine.close()
        for _ in completions:  # answering imports until the workers exit
            pass
        engine.join(60)
        os.close(read)
        os.close(write)


def test_a_bytearray_argument_the_caller_changes_later_is_copied(make_pool):
    buffer = bytearray(2 * PIN_MIN)
    with make_pool(1) as pool:
        before = stats()
        result = pool.apply_async(data_tasks.echo, (buffer,))
        buffer[:] = b"\xff" * len(buffer)       # after submitting
        assert result.get(30) == bytearray(2 * PIN_MIN)
        # Nor is echo's result pinned: the worker's arguments hold it too.
        assert stats()["pinned"] == before["pinned"]


def test_the_executor_pins_both_ways(make_executor):
    blob = b"\x05" * (2 * PIN_MIN)
    with make_executor(1) as executor:
        warm(executor, data_tasks.echo)
        before = stats()
        assert executor.submit(data_tasks.echo, blob).result() == blob
        assert list(executor.map(data_tasks.kind_and_length, [blob, blob])) == [
            ("bytes", len(blob))] * 2
        assert stats()["pinned"] - before["pinned"] == 4


@pytest.mark.parametrize("writable", [False, True])
@pytest.mark.parametrize("size", [1, PIN_MIN - 1, PIN_MIN, 4 << 20])
def test_out_of_band_buffers_as_results(make_pool, writable, size):
    with make_pool(1) as pool:
        before = stats()
        got = pool.apply(data_tasks.make_blob, (size, writable, 7))
        after = stats()
        assert got == data_tasks.make_blob(size, writable, 7)
        assert type(got.data) is (bytearray if writable else bytes)
        assert after["out_of_band"] - before["out_of_band"] == 1
        # A read-only buffer over a bytes is pinned when large; a writable
        # one is copied beside the pickle (the task may still write it).
        pinned = after["pinned"] - before["pinned"]
        assert pinned == (1 if size >= PIN_MIN and not writable else 0)
        assert pins_released(pool, before)


def test_out_of_band_results_unpickle_without_an_import_each(make_pool,
                                                             monkeypatch):
    # The main interpreter keeps pickle.loads once (its interpreter dict):
    # no __import__ of _pickle per message once the first is decoded.
    import builtins

    imported = []
    real_import = builtins.__import__

    def counting(name, *args, **kwargs):
        if name == "_pickle":
            imported.append(name)
        return real_import(name, *args, **kwargs)

    with make_pool(1) as pool:
        assert pool.apply(data_tasks.make_blob, (10, False, 3)).data == b"\x03" * 10
        monkeypatch.setattr(builtins, "__import__", counting)
        for fill in range(5):
            got = pool.apply(data_tasks.make_blob, (PIN_MIN, fill % 2 == 0, fill))
            assert got == data_tasks.make_blob(PIN_MIN, fill % 2 == 0, fill)
        monkeypatch.undo()
    assert imported == []


@pytest.mark.parametrize("writable", [False, True])
def test_out_of_band_buffers_as_arguments(make_pool, writable):
    blob = data_tasks.make_blob(3 * PIN_MIN, writable, 9)
    small = data_tasks.make_blob(10, writable, 9)
    kind = "bytearray" if writable else "bytes"
    with make_pool(2) as pool:
        before = stats()
        assert pool.apply(data_tasks.blob_info, (blob,)) == (kind, 3 * PIN_MIN, b"\x09")
        assert pool.map(data_tasks.blob_info, [blob, small], chunksize=1) == [
            (kind, 3 * PIN_MIN, b"\x09"), (kind, 10, b"\x09")]
        assert pool.apply(data_tasks.echo, (blob,)) == blob
        after = stats()
        assert after["out_of_band"] - before["out_of_band"] == 5
        assert after["pinned"] - before["pinned"] == (0 if writable else 4)
        assert pins_released(pool, before)


def test_out_of_band_buffers_through_the_executor(make_executor):
    blob = data_tasks.make_blob(2 * PIN_MIN, False, 4)
    with make_executor(2) as executor:
        before = stats()
        assert executor.submit(data_tasks.echo, blob).result() == blob
        assert list(executor.map(data_tasks.blob_info, [blob] * 3)) == [
            ("bytes", 2 * PIN_MIN, b"\x04")] * 3
        after = stats()
        assert after["out_of_band"] - before["out_of_band"] == 5


def test_picklebuffers_in_a_container(make_pool):
    size = 2 * PIN_MIN
    expected = pickle.loads(pickle.dumps(data_tasks.picklebuffers(size), 5))
    with make_pool(1) as pool:
        before = stats()
        got = pool.apply(data_tasks.picklebuffers, (size,))
        assert [type(x) for x in got] == [type(x) for x in expected]
        assert got == expected
        assert stats()["out_of_band"] - before["out_of_band"] == 2
        argument = [pickle.PickleBuffer(b"\x06" * size)]
        assert pool.apply(data_tasks.kind_and_length, (argument,)) == ("list", 1)


@pytest.mark.skipif(FREE_THREADED, reason="there the task's thread writes "
                    "beside the encoding (see test_pool_data)")
def test_an_out_of_band_buffer_the_task_keeps_writing(make_pool):
    # The task's thread overwrites the whole buffer in one step (under the
    # worker's GIL), zeros with 0xff, while the worker pickles it (its
    # __reduce_ex__ is Python code: the thread may run first).  What the
    # caller gets is one state or the other, never torn, and its own.
    with make_pool(1) as pool:
        for _ in range(3):
            got = pool.apply(data_tasks.blob_still_written, (PIN_MIN * 4, 0.2))
            seen = bytes(got.data)
            assert type(got.data) is bytearray and len(set(seen)) == 1
            time.sleep(0.3)
            assert got.data == seen


def test_a_buffer_failing_to_unpickle_fails_its_task_only(make_pool):
    poisoned = data_tasks.make_blob(2 * PIN_MIN, False, data_tasks.POISON)
    with make_pool(1) as pool:
        before = stats()
        # As a result: the main interpreter's unpickling raises.
        with pytest.raises(ValueError, match="poisoned"):
            pool.apply(data_tasks.make_blob, (2 * PIN_MIN, False,
                                              data_tasks.POISON))
        # As an argument: the worker's does.
        with pytest.raises(ValueError, match="poisoned"):
            pool.apply(data_tasks.blob_info, (poisoned,))
        with pytest.raises(ValueError, match="poisoned"):
            pool.map(data_tasks.blob_info,
                     [data_tasks.make_blob(PIN_MIN, False, 1), poisoned],
                     chunksize=1)
        assert pool.apply(data_tasks.blob_info,
                          (data_tasks.make_blob(PIN_MIN, False, 1),)) == (
            "bytes", PIN_MIN, b"\x01")
        assert pins_released(pool, before)


@skip_on_312("CPython 3.12.1's gc segfaults freeing a cycle that holds a "
             "PickleBuffer and the memoryview it exports "
             "(python/cpython#77894, fixed in 3.12.7 and 3.13.0): the "
             "failed argument's traceback is such a cycle; see "
             "docs/reliability.md")
def test_a_non_contiguous_picklebuffer_is_pickles_error(make_pool):
    strided = pickle.PickleBuffer(memoryview(b"abcdefgh")[::2])
    with pytest.raises(pickle.PicklingError):
        pickle.dumps([strided], 5)
    with make_pool(1) as pool:
        with pytest.raises(Exception):
            pool.apply(data_tasks.echo, ([strided],))
        assert pool.apply(data_tasks.echo, (3,)) == 3


def test_pins_outlive_a_pool_that_ends_before_the_caller_reads(make_pool):
    # Results still queued when the workers end are copied out of their
    # interpreters first: close() and join() before the results are read.
    with make_pool(2) as pool:
        before = stats()
        results = [pool.apply_async(data_tasks.make_buffer, ("bytes", 2 * PIN_MIN))
                   for _ in range(6)]
        pool.close()
        pool.join()
        for result in results:
            assert result.get(30) == b"\x01" * (2 * PIN_MIN)
    deadline = time.monotonic() + 10
    while stats()["pins_live"] > before["pins_live"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats()["pins_live"] <= before["pins_live"]
