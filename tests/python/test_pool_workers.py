"""Workers are separate interpreters: per-worker state, concurrency,
maxtasksperchild and how work is chunked."""

import collections
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

import tasks


def expected_chunk_pattern(n, chunksize):
    """bump() results for map over n items when every chunk gets a fresh worker."""
    pattern = []
    while n > 0:
        size = min(chunksize, n)
        pattern.extend(range(1, size + 1))
        n -= size
    return pattern


# --- per-worker state ----------------------------------------------------------------------

def test_worker_state_does_not_leak_into_the_parent(pool):
    before = tasks.get_counter()
    assert pool.map(tasks.bump, range(20), 1)
    assert tasks.get_counter() == before


def test_each_worker_has_its_own_module_globals(pool):
    results = pool.map(tasks.bump_token, range(60), 1)
    by_worker = collections.defaultdict(list)
    for token, count in results:
        by_worker[token].append(count)
    assert 1 <= len(by_worker) <= 2
    for counts in by_worker.values():
        # each worker counts its own calls 1, 2, 3, ... independently
        assert sorted(counts) == list(range(1, len(counts) + 1))


def test_two_workers_run_tasks_at_the_same_time(pool, tmp_path):
    # Each task announces itself and waits for the other: both can only see
    # each other if they run concurrently (one worker would time out).
    results = pool.starmap(
        tasks.rendezvous, [(str(tmp_path), 0, 2), (str(tmp_path), 1, 2)], chunksize=1
    )
    assert [(me, arrived) for me, arrived, _ in results] == [(0, True), (1, True)]
    tokens = {token for _, _, token in results}
    assert len(tokens) == 2


def test_apply_async_tasks_run_concurrently(pool, tmp_path):
    pending = [
        pool.apply_async(tasks.rendezvous, (str(tmp_path), i, 2)) for i in range(2)
    ]
    assert [r.get(timeout=60)[1] for r in pending] == [True, True]


# --- maxtasksperchild ---------------------------------------------------------------------

def test_maxtasksperchild_one_gives_fresh_workers(make_pool):
    pool = make_pool(processes=2, maxtasksperchild=1)
    assert pool.map(tasks.bump, range(12), 1) == [1] * 12
    assert [pool.apply_async(tasks.bump).get(timeout=60) for _ in range(4)] == [1] * 4


def test_maxtasksperchild_one_results_are_correct(make_pool):
    pool = make_pool(processes=2, maxtasksperchild=1)
    assert pool.map(tasks.square, range(50)) == [i * i for i in range(50)]
    assert pool.starmap(tasks.mul, [(i, 3) for i in range(10)], 1) == [
        3 * i for i in range(10)
    ]
    assert sorted(pool.imap_unordered(tasks.increment, range(10))) == list(range(1, 11))


def test_maxtasksperchild_two_bounds_worker_reuse(make_pool):
    pool = make_pool(processes=2, maxtasksperchild=2)
    counts = pool.map(tasks.bump, range(20), 1)
    assert set(counts) <= {1, 2}
    assert 1 in counts


def test_maxtasksperchild_keeps_pool_alive_after_errors(make_pool):
    pool = make_pool(processes=2, maxtasksperchild=1)
    with pytest.raises(ValueError):
        pool.map(tasks.fail_on_item, range(20), 1)
    assert pool.map(tasks.square, range(10), 1) == [i * i for i in range(10)]


# --- chunking (observed through fresh workers per task) ----------------------------------

@pytest.mark.parametrize("n", [44, 40, 7, 1])
def test_map_default_chunksize_matches_pool(make_pool, n):
    # multiprocessing.Pool: chunksize = ceil(len / (4 * processes)); with
    # maxtasksperchild=1 every chunk runs in a fresh worker, so the counter
    # restarts at every chunk boundary.
    pool = make_pool(processes=2, maxtasksperchild=1)
    chunksize = -(-n // 8)
    assert pool.map(tasks.bump, range(n)) == expected_chunk_pattern(n, chunksize)


def test_map_async_and_starmap_default_chunksize_match_pool(make_pool):
    pool = make_pool(processes=2, maxtasksperchild=1)
    expected = expected_chunk_pattern(20, 3)
    assert pool.map_async(tasks.bump, range(20)).get(timeout=60) == expected
    assert pool.starmap(tasks.bump, [(i,) for i in range(20)]) == expected


def test_explicit_chunksize_is_honoured(make_pool):
    pool = make_pool(processes=2, maxtasksperchild=1)
    assert pool.map(tasks.bump, range(22), 4) == expected_chunk_pattern(22, 4)


def test_imap_chunksize_is_honoured(make_pool):
    pool = make_pool(processes=2, maxtasksperchild=1)
    assert list(pool.imap(tasks.bump, range(10))) == [1] * 10
    assert list(pool.imap(tasks.bump, range(10), 3)) == expected_chunk_pattern(10, 3)


# --- subinterpreter facts (poolparty only) -------------------------------------------------

@pytest.mark.poolparty_only
def test_workers_are_interpreters_of_this_process(pool, tmp_path):
    assert set(pool.map(tasks.getpid, range(8), 1)) == {os.getpid()}
    results = pool.starmap(
        tasks.rendezvous, [(str(tmp_path), i, 2) for i in range(2)], chunksize=1
    )
    assert all(arrived for _, arrived, _ in results)
    modules_ids = {token[1] for _, _, token in results}
    # two live workers, two module tables, neither of them the parent's
    assert len(modules_ids) == 2
    assert id(sys.modules) not in modules_ids


@pytest.mark.poolparty_only
@pytest.mark.parametrize("bad", ["bogus", "", "QUEUE", None, 1])
def test_dispatch_must_be_queue_or_call(bad):
    import poolparty

    with pytest.raises(ValueError):
        poolparty.SubinterpreterPool(2, dispatch=bad)
    with pytest.raises(ValueError):
        poolparty.SubinterpreterPoolExecutor(2, dispatch=bad)


@pytest.mark.poolparty_only
def test_default_dispatch_is_accepted():
    import poolparty

    with poolparty.SubinterpreterPool(2) as pool:
        assert pool.map(tasks.square, range(5)) == [0, 1, 4, 9, 16]
    with poolparty.SubinterpreterPoolExecutor(2) as ex:
        assert ex.submit(tasks.square, 6).result(timeout=60) == 36


@pytest.mark.poolparty_only
def test_broken_interpreter_pool_is_a_broken_executor():
    import concurrent.futures

    import poolparty

    assert issubclass(poolparty.BrokenInterpreterPool, concurrent.futures.BrokenExecutor)


_SUBINTERPRETER_PROBE = textwrap.dedent(
    """\
    import importlib, sys
    try:
        import _interpreters as interpreters
    except ImportError:
        import _xxsubinterpreters as interpreters
    name = sys.argv[1]
    importlib.import_module(name)  # must load in the main interpreter
    if hasattr(interpreters, "new_config"):
        iid = interpreters.create(interpreters.new_config("isolated"))
    else:
        iid = interpreters.create(isolated=True)
    try:
        failure = interpreters.run_string(iid, "import " + name)
    except Exception as exc:
        failure = exc
    interpreters.destroy(iid)
    print("FAILS" if failure is not None else "LOADS")
    """
)

_SINGLE_PHASE_CANDIDATES = [
    "_testsinglephase",
    "_testimportmultiple",
    "xxlimited_35",
    "_testbuffer",
]


@pytest.fixture(scope="module")
def single_phase_module():
    """An extension module that imports in the main interpreter but not in an
    isolated subinterpreter (checked in a child process)."""
    for name in _SINGLE_PHASE_CANDIDATES:
        if importlib.util.find_spec(name) is None:
            continue
        probe = subprocess.run(
            [sys.executable, "-c", _SUBINTERPRETER_PROBE, name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "FAILS":
            return name
    pytest.skip("no extension module that fails in isolated subinterpreters")


@pytest.mark.poolparty_only
def test_incompatible_extension_raises_import_error(pool, single_phase_module):
    with pytest.raises(ImportError) as excinfo:
        pool.apply(tasks.import_module, (single_phase_module,))
    assert single_phase_module in str(excinfo.value)
    # the worker survives the failed import
    assert pool.apply(tasks.import_module, ("json",)) == "json"
    assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]


@pytest.mark.poolparty_only
def test_incompatible_extension_import_error_via_map(pool, single_phase_module):
    with pytest.raises(ImportError) as excinfo:
        pool.map(tasks.import_module, ["json", single_phase_module, "os"], 1)
    assert single_phase_module in str(excinfo.value)
