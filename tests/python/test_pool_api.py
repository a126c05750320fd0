"""The multiprocessing.pool.Pool surface of SubinterpreterPool.

Each test runs once per dispatch design ("queue" and "call"), or once against
multiprocessing's spawn Pool under POOLPARTY_TEST_REFERENCE=1.
"""

import multiprocessing
import multiprocessing.pool
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tasks
from conftest import wait_until_exists

SQUARES_100 = [i * i for i in range(100)]


# --- apply / apply_async ----------------------------------------------------------

def test_apply_returns_the_result(pool):
    assert pool.apply(tasks.square, (7,)) == 49


def test_apply_passes_kwds(pool):
    assert pool.apply(tasks.add, (1,), {"b": 41}) == 42


def test_apply_without_args(pool):
    assert pool.apply(tasks.get_init_value) is None


def test_apply_async_get(pool):
    result = pool.apply_async(tasks.mul, (6, 7))
    assert result.get(timeout=60) == 42
    assert result.ready()
    assert result.successful()
    # get() may be called again and returns the same value
    assert result.get() == 42


def test_apply_async_kwds(pool):
    result = pool.apply_async(tasks.add, (), {"a": 2, "b": 3})
    assert result.get(timeout=60) == 5


def test_apply_async_callback_receives_result(pool):
    results, errors = [], []
    result = pool.apply_async(
        tasks.square, (9,), callback=results.append, error_callback=errors.append
    )
    assert result.get(timeout=60) == 81
    # like Pool, the callback has run by the time get() returns
    assert results == [81]
    assert errors == []


def test_apply_async_error_callback_receives_exception(pool):
    results, errors = [], []
    result = pool.apply_async(
        tasks.raise_value_error,
        ("oops", 3),
        callback=results.append,
        error_callback=errors.append,
    )
    with pytest.raises(ValueError) as excinfo:
        result.get(timeout=60)
    assert excinfo.value.args == ("oops", 3)
    assert results == []
    assert len(errors) == 1
    assert isinstance(errors[0], ValueError)
    assert errors[0].args == ("oops", 3)
    assert result.ready()
    assert not result.successful()


# --- map / map_async / starmap ------------------------------------------------------

@pytest.mark.parametrize("chunksize", [None, 1, 3, 7, 1000])
def test_map_in_order(pool, chunksize):
    assert pool.map(tasks.square, range(100), chunksize) == SQUARES_100


def test_map_empty_iterable(pool):
    assert pool.map(tasks.square, []) == []


def test_map_accepts_a_generator(pool):
    assert pool.map(tasks.square, (i for i in range(25))) == SQUARES_100[:25]


def test_map_async_get_and_callback(pool):
    got = []
    result = pool.map_async(tasks.square, range(50), callback=got.append)
    assert result.get(timeout=60) == SQUARES_100[:50]
    assert got == [SQUARES_100[:50]]
    assert result.successful()


def test_map_async_with_chunksize(pool):
    result = pool.map_async(tasks.square, range(100), chunksize=9)
    assert result.get(timeout=60) == SQUARES_100


def test_map_async_error_callback(pool):
    got, errors = [], []
    result = pool.map_async(
        tasks.fail_on_item, range(30), callback=got.append, error_callback=errors.append
    )
    with pytest.raises(ValueError) as excinfo:
        result.get(timeout=60)
    assert excinfo.value.args == ("bad item", 13)
    assert got == []
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert not result.successful()


def test_map_reraises_task_exception(pool):
    with pytest.raises(ValueError) as excinfo:
        pool.map(tasks.fail_on_item, range(30))
    assert excinfo.value.args == ("bad item", 13)


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_starmap(pool, chunksize):
    pairs = [(i, i + 1) for i in range(40)]
    assert pool.starmap(tasks.mul, pairs, chunksize) == [a * b for a, b in pairs]


def test_starmap_empty(pool):
    assert pool.starmap(tasks.mul, []) == []


def test_starmap_async_get_and_callback(pool):
    got = []
    pairs = [(i, 2) for i in range(20)]
    result = pool.starmap_async(tasks.mul, pairs, callback=got.append)
    assert result.get(timeout=60) == [2 * i for i in range(20)]
    assert got == [[2 * i for i in range(20)]]


def test_starmap_reraises_task_exception(pool):
    with pytest.raises(ValueError) as excinfo:
        pool.starmap(tasks.fail_on, [(1, 5), (5, 5), (2, 5)])
    assert excinfo.value.args == ("bad item", 5)


# --- imap / imap_unordered --------------------------------------------------------------

@pytest.mark.parametrize("chunksize", [1, 4, 1000])
def test_imap_in_order(pool, chunksize):
    assert list(pool.imap(tasks.square, range(100), chunksize)) == SQUARES_100


@pytest.mark.parametrize("chunksize", [1, 4, 1000])
def test_imap_unordered_yields_every_result(pool, chunksize):
    got = list(pool.imap_unordered(tasks.square, range(100), chunksize))
    assert sorted(got) == SQUARES_100


def test_imap_empty(pool):
    assert list(pool.imap(tasks.square, [])) == []
    assert list(pool.imap_unordered(tasks.square, [])) == []


def test_imap_accepts_a_generator(pool):
    assert list(pool.imap(tasks.square, (i for i in range(30)), 4)) == SQUARES_100[:30]


def test_imap_raises_at_the_failing_item(pool):
    it = pool.imap(tasks.fail_on_item, range(20))
    before = [next(it) for _ in range(13)]
    assert before == SQUARES_100[:13]
    with pytest.raises(ValueError) as excinfo:
        next(it)
    assert excinfo.value.args == ("bad item", 13)


def test_imap_unordered_raises_task_exception(pool):
    with pytest.raises(ValueError) as excinfo:
        list(pool.imap_unordered(tasks.fail_on_item, range(20)))
    assert excinfo.value.args == ("bad item", 13)


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_rejects_chunksize_below_one(pool, method):
    with pytest.raises(ValueError):
        getattr(pool, method)(tasks.square, range(3), 0)


def test_imap_next_timeout(pool, gate):
    it = pool.imap(tasks.wait_for_file, [gate])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.1)
    open(gate, "w").close()
    assert it.next(timeout=60) is True
    with pytest.raises(StopIteration):
        next(it)


# --- AsyncResult behaviour ---------------------------------------------------------------

def test_async_result_while_pending(pool, gate, tmp_path):
    started = str(tmp_path / "started")
    result = pool.apply_async(tasks.signal_and_wait, (started, gate, "done"))
    wait_until_exists(started)
    assert not result.ready()
    with pytest.raises(ValueError):
        result.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.1)
    result.wait(0.05)
    assert not result.ready()

    open(gate, "w").close()
    result.wait(60)
    assert result.ready()
    assert result.successful()
    assert result.get(timeout=0) == "done"


def test_map_async_result_while_pending(pool, gate, tmp_path):
    started = str(tmp_path / "started")
    result = pool.starmap_async(
        tasks.signal_and_wait, [(started, gate, 1), (started, gate, 2)], chunksize=1
    )
    wait_until_exists(started)
    assert not result.ready()
    with pytest.raises(ValueError):
        result.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.1)
    open(gate, "w").close()
    assert result.get(timeout=60) == [1, 2]
    assert result.ready() and result.successful()


def test_get_timeout_error_is_multiprocessing_timeout_error(pool, gate):
    result = pool.apply_async(tasks.wait_for_file, (gate,))
    with pytest.raises(multiprocessing.TimeoutError) as excinfo:
        result.get(timeout=0.05)
    assert isinstance(excinfo.value, multiprocessing.context.TimeoutError)
    open(gate, "w").close()
    assert result.get(timeout=60) is True


# --- payloads -------------------------------------------------------------------------------

def test_large_argument_and_result(pool):
    payload = bytes(range(256)) * (8 * 1024 * 4)  # 8 MiB
    assert pool.apply(tasks.identity, (payload,)) == payload


def test_map_of_large_items(pool):
    items = [bytes([i]) * (1024 * 1024) for i in range(8)]
    assert pool.map(tasks.identity, items, 1) == items


def test_builtin_function_as_task(pool):
    assert pool.map(abs, [-3, 4, -5]) == [3, 4, 5]
    assert pool.apply(divmod, (17, 5)) == (3, 2)


_picklable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5), children, max_size=5)
    | st.frozensets(st.integers(), max_size=5),
    max_leaves=20,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=_picklable)
def test_values_round_trip(pool, value):
    assert pool.apply(tasks.identity, (value,)) == value


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    items=st.lists(st.integers(min_value=-10**6, max_value=10**6), max_size=200),
    chunksize=st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
)
def test_map_matches_builtin_map(pool, items, chunksize):
    expected = list(map(tasks.square, items))
    assert pool.map(tasks.square, items, chunksize) == expected
    assert list(pool.imap(tasks.square, items, chunksize or 1)) == expected


# --- working directory and sys.path ------------------------------------------------------

def test_workers_start_with_parent_sys_path(pool):
    import sys

    worker_path = pool.apply(tasks.sys_path)
    it = iter(worker_path)
    missing = [entry for entry in sys.path if entry not in it]
    assert missing == [], (
        "parent sys.path entries absent from the worker's sys.path, or out of "
        "order: %r\nworker sys.path: %r" % (missing, worker_path)
    )


def test_workers_start_in_parent_cwd(make_pool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pool = make_pool(2)
    cwds = pool.map(tasks.getcwd, range(4), 1)
    assert cwds == [os.getcwd()] * 4


# --- subclasses ------------------------------------------------------------------------------

class _Refused(Exception):
    pass


def _refusing_pool(dispatch):
    """A pool whose class overrides _check_running, the hook that
    multiprocessing's Pool calls at the start of apply_async, map_async,
    starmap_async, imap, imap_unordered and __enter__ (and so of apply,
    map and starmap): it refuses every call while ``refuse`` is set."""
    from conftest import REFERENCE

    if REFERENCE:
        base = multiprocessing.pool.Pool
        kwargs = {"context": multiprocessing.get_context("spawn")}
    else:
        import poolparty

        base, kwargs = poolparty.SubinterpreterPool, {"dispatch": dispatch}

    class Refusing(base):
        refuse = False

        def _check_running(self):
            if self.refuse:
                raise _Refused("the subclass refused this call")
            super()._check_running()

    return Refusing(2, **kwargs)


_HOOKED_CALLS = {
    "apply": lambda pool: pool.apply(tasks.square, (3,)),
    "apply_async": lambda pool: pool.apply_async(tasks.square, (3,)).get(60),
    "apply_async_kwds": lambda pool: pool.apply_async(
        tasks.add, (1,), {"b": 2}).get(60),
    "map": lambda pool: pool.map(tasks.square, range(4)),
    "map_async": lambda pool: pool.map_async(tasks.square, range(4)).get(60),
    "starmap": lambda pool: pool.starmap(tasks.add, [(1, 2)]),
    "starmap_async": lambda pool: pool.starmap_async(
        tasks.add, [(1, 2)]).get(60),
    "imap": lambda pool: list(pool.imap(tasks.square, range(4))),
    "imap_iterator": lambda pool: list(
        pool.imap(tasks.square, iter(range(4)))),
    "imap_unordered": lambda pool: sorted(
        pool.imap_unordered(tasks.square, range(4))),
    "with": lambda pool: pool.__enter__() is pool,
}


@pytest.mark.parametrize("call", sorted(_HOOKED_CALLS))
def test_a_subclass_check_running_is_called_by_every_api(dispatch, call):
    pool = _refusing_pool(dispatch)
    try:
        expected = _HOOKED_CALLS[call](pool)  # also warms any fast path
        pool.refuse = True
        with pytest.raises(_Refused):
            _HOOKED_CALLS[call](pool)
        # Refused before anything was queued: the pool carries on.
        pool.refuse = False
        assert _HOOKED_CALLS[call](pool) == expected
    finally:
        pool.terminate()
        pool.join()
