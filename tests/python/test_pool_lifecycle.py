"""Construction, close/join/terminate and the context manager."""

import os

import pytest

import tasks
from conftest import usable_cpus, wait_until_exists


# --- construction --------------------------------------------------------------------

@pytest.mark.parametrize("processes", [0, -1])
def test_processes_below_one_is_rejected(make_pool, processes):
    with pytest.raises(ValueError):
        make_pool(processes=processes)


def test_default_processes_is_the_usable_cpu_count(make_pool, tmp_path):
    n = usable_cpus()
    pool = make_pool(processes=None)
    # n tasks that each wait for all n to have started: only succeeds if the
    # pool runs at least n tasks at once.
    results = pool.starmap(
        tasks.rendezvous, [(str(tmp_path), i, n) for i in range(n)], chunksize=1
    )
    assert [arrived for _, arrived, _ in results] == [True] * n
    # ...and no more than n distinct workers ever run tasks.
    tokens = set(pool.map(tasks.worker_token, range(8 * n), 1))
    assert 1 <= len(tokens) <= n


def test_positional_arguments_follow_pool_signature(make_pool):
    # processes, initializer, initargs, maxtasksperchild
    pool = make_pool(2, tasks.set_init_value, ("positional",), None)
    assert pool.map(tasks.get_init_value, range(6), 1) == ["positional"] * 6


def test_initializer_runs_in_every_worker(make_pool, tmp_path):
    pool = make_pool(processes=2, initializer=tasks.set_init_value, initargs=(41,))
    # both workers busy at once, so both must have been initialised
    results = pool.starmap(
        tasks.rendezvous, [(str(tmp_path), i, 2) for i in range(2)], chunksize=1
    )
    assert all(arrived for _, arrived, _ in results)
    assert pool.map(tasks.get_init_value, range(20), 1) == [41] * 20


def test_initializer_runs_for_replacement_workers(make_pool):
    pool = make_pool(
        processes=2,
        initializer=tasks.set_init_value,
        initargs=("fresh",),
        maxtasksperchild=1,
    )
    assert pool.map(tasks.get_init_value, range(6), 1) == ["fresh"] * 6


def test_no_initializer_means_module_defaults(pool):
    assert pool.map(tasks.get_init_value, range(4), 1) == [None] * 4


# --- close / join / terminate -------------------------------------------------------------

USES = {
    "apply": lambda p: p.apply(tasks.square, (2,)),
    "apply_async": lambda p: p.apply_async(tasks.square, (2,)),
    "map": lambda p: p.map(tasks.square, [1, 2]),
    "map_async": lambda p: p.map_async(tasks.square, [1, 2]),
    "starmap": lambda p: p.starmap(tasks.mul, [(1, 2)]),
    "starmap_async": lambda p: p.starmap_async(tasks.mul, [(1, 2)]),
    "imap": lambda p: p.imap(tasks.square, [1, 2]),
    "imap_unordered": lambda p: p.imap_unordered(tasks.square, [1, 2]),
}


@pytest.mark.parametrize("use", sorted(USES))
def test_use_after_close_raises_value_error(pool, use):
    assert pool.apply(tasks.square, (3,)) == 9
    pool.close()
    with pytest.raises(ValueError):
        USES[use](pool)


@pytest.mark.parametrize("use", sorted(USES))
def test_use_after_terminate_raises_value_error(pool, use):
    assert pool.apply(tasks.square, (3,)) == 9
    pool.terminate()
    with pytest.raises(ValueError):
        USES[use](pool)


def test_close_and_join_twice_are_harmless(pool):
    assert pool.map(tasks.square, range(5)) == [0, 1, 4, 9, 16]
    pool.close()
    pool.close()
    pool.join()
    pool.join()


def test_terminate_twice_and_after_close_is_harmless(pool):
    pool.close()
    pool.terminate()
    pool.terminate()
    pool.join()


def test_join_before_close_raises_value_error(pool):
    with pytest.raises(ValueError):
        pool.join()
    # the pool is still usable
    assert pool.apply(tasks.square, (4,)) == 16


def test_close_then_join_finishes_outstanding_work(pool):
    singles = [pool.apply_async(tasks.square, (i,)) for i in range(20)]
    mapped = pool.map_async(tasks.square, range(200), 7)
    starred = pool.starmap_async(tasks.mul, [(i, 3) for i in range(30)])
    pool.close()
    pool.join()
    assert all(r.ready() for r in singles + [mapped, starred])
    assert [r.get(timeout=0) for r in singles] == [i * i for i in range(20)]
    assert mapped.get(timeout=0) == [i * i for i in range(200)]
    assert starred.get(timeout=0) == [3 * i for i in range(30)]


def test_imap_results_can_be_consumed_after_close(pool):
    it = pool.imap(tasks.square, range(30), 4)
    pool.close()
    assert list(it) == [i * i for i in range(30)]
    pool.join()


def test_terminate_with_queued_work_returns(pool):
    pending = pool.map_async(tasks.sleep_then_return, [(0.01, i) for i in range(40)])
    more = [pool.apply_async(tasks.square, (i,)) for i in range(40)]
    pool.terminate()
    pool.join()
    with pytest.raises(ValueError):
        pool.apply(tasks.square, (1,))
    del pending, more


def test_terminate_stops_running_tasks(pool, tmp_path):
    # Pool.terminate() stops the workers without completing outstanding
    # work: a task that is still running when terminate() is called never
    # reaches its end (its marker file is never created).
    started = [str(tmp_path / ("started-%d" % i)) for i in range(2)]
    markers = [str(tmp_path / ("finished-%d" % i)) for i in range(2)]
    pending = [
        pool.apply_async(tasks.wait_then_touch, (started[i], markers[i], 20.0))
        for i in range(2)
    ]
    for path in started:
        wait_until_exists(path)
    pool.terminate()
    pool.join()
    assert [os.path.exists(m) for m in markers] == [False, False]
    del pending


@pytest.mark.poolparty_only
def test_terminate_fails_pending_results_instead_of_hanging(pool, tmp_path):
    # multiprocessing leaves such results pending forever; poolparty makes
    # every one of them ready with an ordinary exception (queued tasks with
    # poolparty.TerminatedError).  A BaseException such as SystemExit must not
    # escape into the caller: it would end the caller's program.
    started = [str(tmp_path / ("started-%d" % i)) for i in range(2)]
    running = [
        pool.apply_async(
            tasks.wait_then_touch, (started[i], str(tmp_path / ("m%d" % i)), 20.0)
        )
        for i in range(2)
    ]
    for path in started:
        wait_until_exists(path)
    queued = [pool.apply_async(tasks.square, (i,)) for i in range(10)]
    mapped = pool.map_async(tasks.square, range(100), 5)
    pool.terminate()
    pool.join()
    for result in running + queued + [mapped]:
        assert result.ready()
        assert not result.successful()
        try:
            result.get(timeout=0)
        except Exception:
            pass
        except BaseException as exc:
            pytest.fail("get() raised %r, a BaseException, into the caller" % (exc,))
        else:
            pytest.fail("get() returned after terminate()")
    import poolparty

    for result in queued:
        with pytest.raises(poolparty.TerminatedError):
            result.get(timeout=0)


def test_terminate_idle_pool(pool):
    assert pool.apply(tasks.square, (5,)) == 25
    pool.terminate()
    pool.join()


# --- context manager ---------------------------------------------------------------------

def test_context_manager_returns_pool_and_terminates_on_exit(pool):
    with pool as entered:
        assert entered is pool
        assert entered.map(tasks.square, range(10)) == [i * i for i in range(10)]
    # __exit__ calls terminate(), like multiprocessing.Pool
    with pytest.raises(ValueError):
        pool.apply(tasks.square, (2,))
    pool.join()


def test_context_manager_exit_on_exception(pool):
    with pytest.raises(KeyError):
        with pool:
            assert pool.apply(tasks.square, (3,)) == 9
            raise KeyError("leaving the block")
    with pytest.raises(ValueError):
        pool.map(tasks.square, [1])


def test_pool_cannot_be_pickled(pool):
    import pickle

    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)
    # nor passed to a task
    with pytest.raises(NotImplementedError):
        pool.apply(tasks.identity, (pool,))
    assert pool.apply(tasks.square, (6,)) == 36
