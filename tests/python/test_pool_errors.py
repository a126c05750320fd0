"""Exceptions raised by tasks, pickling failures and failing initializers."""

import multiprocessing.pool
import pickle
import threading

import pytest

import tasks

# What multiprocessing raises when a callable/argument cannot be pickled
# varies by object and Python version (PicklingError for lambdas, TypeError
# for locks, AttributeError for local objects on 3.12/3.13).
PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError)


def assert_pool_still_works(pool):
    assert pool.map(tasks.square, range(10)) == [i * i for i in range(10)]
    assert pool.apply(tasks.add, (2, 3)) == 5


def make_local_function():
    lock = threading.Lock()

    def local_function(x):
        with lock:
            return x

    return local_function


_LOCK = threading.Lock()

# Functions that neither pickle (by name) nor poolparty's cloudpickle (by
# value) can send: each uses a lock.
UNPICKLABLE_FUNCTIONS = {
    "lambda": lambda x: (_LOCK, x),
    "local function": make_local_function(),
}


# --- exceptions raised by tasks ------------------------------------------------------------

def test_exception_type_and_args_are_preserved(pool):
    with pytest.raises(ValueError) as excinfo:
        pool.apply(tasks.raise_value_error, ("boom", 42))
    assert type(excinfo.value) is ValueError
    assert excinfo.value.args == ("boom", 42)
    assert_pool_still_works(pool)


def test_user_defined_exception_class_is_preserved(pool):
    with pytest.raises(tasks.CustomError) as excinfo:
        pool.apply(tasks.raise_custom, ("custom", 7))
    assert type(excinfo.value) is tasks.CustomError
    assert excinfo.value.args == ("custom", 7)


def test_exception_cause_carries_the_worker_traceback(pool):
    with pytest.raises(ValueError) as excinfo:
        pool.apply(tasks.raise_value_error, ("traced",))
    cause = excinfo.value.__cause__
    assert cause is not None
    text = str(cause)
    assert "Traceback" in text
    assert "raise_value_error" in text
    assert "ValueError" in text
    assert "traced" in text


def test_map_exception_cause_carries_the_worker_traceback(pool):
    with pytest.raises(ValueError) as excinfo:
        pool.map(tasks.fail_on_item, range(20), 3)
    text = str(excinfo.value.__cause__)
    assert "fail_on" in text
    assert "bad item" in text


def test_async_exception_cause_carries_the_worker_traceback(pool):
    result = pool.apply_async(tasks.raise_custom, ("async", 1))
    with pytest.raises(tasks.CustomError) as excinfo:
        result.get(timeout=60)
    assert "raise_custom" in str(excinfo.value.__cause__)


def test_many_failures_do_not_break_the_pool(pool):
    results = [pool.apply_async(tasks.fail_on, (i, i if i % 2 else -1)) for i in range(40)]
    for i, result in enumerate(results):
        if i % 2 == 1:
            with pytest.raises(ValueError):
                result.get(timeout=60)
        else:
            assert result.get(timeout=60) == i * i
    assert_pool_still_works(pool)


# --- unpicklable functions and arguments ---------------------------------------------------

@pytest.mark.parametrize("kind", sorted(UNPICKLABLE_FUNCTIONS))
def test_unpicklable_function_in_map(pool, kind):
    with pytest.raises(PICKLING_ERRORS):
        pool.map(UNPICKLABLE_FUNCTIONS[kind], range(5))
    assert_pool_still_works(pool)


@pytest.mark.parametrize("kind", sorted(UNPICKLABLE_FUNCTIONS))
def test_unpicklable_function_in_apply(pool, kind):
    with pytest.raises(PICKLING_ERRORS):
        pool.apply(UNPICKLABLE_FUNCTIONS[kind], (1,))
    assert_pool_still_works(pool)


def test_unpicklable_function_in_apply_async_raises_at_get(pool):
    with pytest.raises(PICKLING_ERRORS):
        pool.apply_async(UNPICKLABLE_FUNCTIONS["lambda"], (1,)).get(timeout=60)
    assert_pool_still_works(pool)


def test_unpicklable_function_in_imap(pool):
    with pytest.raises(PICKLING_ERRORS):
        list(pool.imap(UNPICKLABLE_FUNCTIONS["lambda"], range(3)))
    assert_pool_still_works(pool)


def test_unpicklable_argument_in_apply(pool):
    with pytest.raises(PICKLING_ERRORS):
        pool.apply(tasks.identity, (threading.Lock(),))
    assert_pool_still_works(pool)


def test_unpicklable_argument_in_map(pool):
    with pytest.raises(PICKLING_ERRORS):
        pool.map(tasks.identity, [1, threading.Lock(), 3])
    assert_pool_still_works(pool)


def test_unpicklable_keyword_argument(pool):
    with pytest.raises(PICKLING_ERRORS):
        pool.apply(tasks.add, (1,), {"b": threading.Lock()})
    assert_pool_still_works(pool)


# --- unpicklable results ---------------------------------------------------------------------

def test_unpicklable_result_in_apply(pool):
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.apply(tasks.return_unpicklable)
    assert_pool_still_works(pool)


def test_unpicklable_result_in_apply_async(pool):
    result = pool.apply_async(tasks.return_unpicklable)
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        result.get(timeout=60)
    assert not result.successful()
    assert_pool_still_works(pool)


def test_unpicklable_result_in_map(pool):
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.starmap(tasks.return_unpicklable_if, [(i, 5) for i in range(10)])
    assert_pool_still_works(pool)


# --- exceptions that cannot be pickled (poolparty-specific reporting) ------------------

@pytest.mark.poolparty_only
def test_exception_of_local_class_reaches_caller(pool):
    with pytest.raises(Exception) as excinfo:
        pool.apply(tasks.raise_local_class, ("local trouble",))
    message = str(excinfo.value)
    assert "LocalOnlyError" in message
    assert "local trouble" in message
    assert_pool_still_works(pool)


@pytest.mark.poolparty_only
def test_exception_with_unpicklable_attribute_reaches_caller(pool):
    with pytest.raises(Exception) as excinfo:
        pool.map(tasks.raise_unpicklable_attr, ["attr trouble"])
    message = str(excinfo.value)
    assert "UnpicklableAttrError" in message
    assert "attr trouble" in message
    assert_pool_still_works(pool)


# --- failing initializer -------------------------------------------------------------------

def _chain_text(exc):
    """Text of an exception and everything it was caused by."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append("%s: %s %r" % (type(exc).__name__, exc, getattr(exc, "args", ())))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


@pytest.mark.reference_hangs
@pytest.mark.timeout(120)
@pytest.mark.parametrize("call", ["map", "apply"])
def test_failing_initializer_raises_in_caller(make_pool, call):
    with pytest.raises(Exception) as excinfo:
        pool = make_pool(
            processes=2,
            initializer=tasks.failing_initializer,
            initargs=("initializer exploded 5150",),
        )
        if call == "map":
            pool.map(tasks.square, range(10))
        else:
            pool.apply(tasks.square, (3,))
    assert "initializer exploded 5150" in _chain_text(excinfo.value)


# --- a whole map queued at once (Engine.submit_map) -----------------------------------------

class _InterruptsPickling:
    """Pickling it raises KeyboardInterrupt, as a Ctrl-C in the middle of map()."""

    def __reduce__(self):
        raise KeyboardInterrupt


def test_pickling_error_in_one_chunk_of_many_fails_the_map(pool):
    # More chunks than one lock round takes (64), an unpicklable item in
    # the middle: map raises its error, and nothing is lost or hung.
    items = list(range(300))
    items[150] = threading.Lock()
    with pytest.raises(PICKLING_ERRORS):
        pool.map(tasks.identity, items, chunksize=1)
    assert pool.map(tasks.identity, range(300), chunksize=1) == list(range(300))


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_keyboard_interrupt_while_pickling_propagates_and_pool_stays_usable(
        pool, chunksize):
    items = [1] * 100 + [_InterruptsPickling()] + [2] * 100
    with pytest.raises(KeyboardInterrupt):
        pool.map(tasks.identity, items, chunksize=chunksize)
    assert_pool_still_works(pool)


def test_map_after_the_engine_stopped_fails_every_chunk(pool):
    # The race where terminate() (from another thread) stops the engine
    # between map()'s state check and its queueing: the map must fail with
    # a clear error, not hang waiting for chunks that were refused.
    pool._runner.engine.close()
    with pytest.raises(Exception, match="stopped before this task was queued"):
        pool.map(tasks.identity, range(200), chunksize=1)
