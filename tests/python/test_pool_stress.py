"""Stress: many tasks, many pools, many submitting threads."""

import threading

import pytest

import tasks
from conftest import REFERENCE, build_pool, run_clients

# Spawning processes is far slower than creating subinterpreters; the
# reference run only checks semantics, so it builds fewer pools.
POOL_CYCLES = 10 if REFERENCE else 100


@pytest.mark.timeout(120)
def test_hundred_thousand_tasks(pool):
    n = 100_000
    assert pool.map(tasks.increment, range(n)) == list(range(1, n + 1))


@pytest.mark.timeout(120)
def test_hundred_thousand_tasks_imap_unordered(pool):
    n = 100_000
    got = pool.imap_unordered(tasks.increment, range(n), 500)
    assert sorted(got) == list(range(1, n + 1))


@pytest.mark.timeout(180)
def test_many_pools_created_and_destroyed(dispatch):
    for i in range(POOL_CYCLES):
        pool = build_pool(dispatch, 2)
        try:
            if i % 2:
                with pool:
                    assert pool.map(tasks.square, range(i, i + 10)) == [
                        x * x for x in range(i, i + 10)
                    ]
            else:
                assert pool.apply(tasks.add, (i, 1)) == i + 1
                pool.close()
                pool.join()
        finally:
            pool.terminate()
            pool.join()


@pytest.mark.timeout(120)
def test_threads_submitting_to_one_pool(pool):
    n_threads = 8
    errors = []
    outcomes = {}
    start = threading.Barrier(n_threads)

    def client(k):
        try:
            start.wait(timeout=60)
            base = k * 10_000
            asyncs = [pool.apply_async(tasks.add, (base, i)) for i in range(50)]
            mapped = pool.map(tasks.square, range(base, base + 300))
            starred = pool.starmap_async(tasks.mul, [(k, i) for i in range(100)], 7)
            imapped = list(pool.imap(tasks.increment, range(base, base + 200), 3))
            outcomes[k] = (
                [r.get(timeout=60) for r in asyncs] == [base + i for i in range(50)]
                and mapped == [x * x for x in range(base, base + 300)]
                and starred.get(timeout=60) == [k * i for i in range(100)]
                and imapped == list(range(base + 1, base + 201))
            )
        except BaseException as exc:  # report in the main thread
            errors.append(exc)

    run_clients(client, n_threads)
    assert errors == []
    assert outcomes == {k: True for k in range(n_threads)}


@pytest.mark.timeout(120)
def test_threads_mixing_failures_and_successes(pool):
    n_threads = 8
    errors = []
    good = []

    def client(k):
        try:
            for i in range(20):
                if (i + k) % 3 == 0:
                    try:
                        pool.apply(tasks.raise_value_error, ("t", k, i))
                    except ValueError as exc:
                        if exc.args != ("t", k, i):
                            errors.append(exc)
                    else:
                        errors.append(AssertionError("no exception"))
                else:
                    if pool.apply(tasks.mul, (k, i)) == k * i:
                        good.append((k, i))
        except BaseException as exc:
            errors.append(exc)

    run_clients(client, n_threads)
    assert errors == []
    expected = {(k, i) for k in range(n_threads) for i in range(20) if (i + k) % 3}
    assert set(good) == expected and len(good) == len(expected)
