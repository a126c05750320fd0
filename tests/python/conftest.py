"""Shared fixtures for the poolparty pool/executor tests.

Set ``POOLPARTY_TEST_REFERENCE=1`` to run the same tests against the standard
library (``multiprocessing`` spawn Pool and ``ProcessPoolExecutor``): this
checks that the tests encode real multiprocessing / concurrent.futures
semantics.  Tests marked ``poolparty_only`` are skipped in that mode, and so
are tests marked ``reference_hangs`` (where the stdlib itself hangs).
"""

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import textwrap
import warnings

import pytest

# Tests send Ctrl-C (SIGINT) to child Pythons and expect KeyboardInterrupt
# there.  A test run started as a background job (`cmd &` in a script,
# nohup) ignores SIGINT, its children inherit the ignoring, and CPython
# then installs no handler of its own: every such test waited out its
# task instead (seen: 14 failures in a background sanitizer run).  Give
# the run, and so its children, the disposition a terminal gives them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REFERENCE = os.environ.get("POOLPARTY_TEST_REFERENCE") == "1"
# A free-threaded CPython (3.13t): the main interpreter has no GIL.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
DISPATCHES = ("reference",) if REFERENCE else ("queue", "call")
# scripts/sanitize.sh runs the suite with a sanitizer preloaded.
UNDER_SANITIZER = any(lib in os.environ.get("LD_PRELOAD", "")
                      for lib in ("libasan", "libtsan"))

# Default per-test timeout for tests that don't set one explicitly, so that a
# hanging pool fails one test instead of stalling the suite.
DEFAULT_TEST_TIMEOUT = 90
# Upper bound when waiting for a subprocess in tests.
SUBPROCESS_TIMEOUT = 60


def skip_on_312(reason):
    """Skip a test on CPython 3.12, for one of 3.12.1's hazards: `reason`."""
    return pytest.mark.skipif(sys.version_info[:2] == (3, 12), reason=reason)


def usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long stress runs; opt in with POOLPARTY_SLOW=1 (scripts/stress.sh)")
    config.addinivalue_line(
        "markers",
        "poolparty_only: behaviour specific to poolparty (skipped under "
        "POOLPARTY_TEST_REFERENCE=1)",
    )
    config.addinivalue_line(
        "markers",
        "reference_hangs(reason): the stdlib reference hangs here (skipped "
        "under POOLPARTY_TEST_REFERENCE=1)",
    )


def _is_ours(item):
    name = os.path.basename(str(item.fspath))
    return name.startswith(("test_pool", "test_executor"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not _is_ours(item):
            continue
        if REFERENCE and item.get_closest_marker("poolparty_only"):
            item.add_marker(pytest.mark.skip(reason="poolparty-specific"))
        if REFERENCE and item.get_closest_marker("reference_hangs"):
            item.add_marker(
                pytest.mark.skip(reason="multiprocessing hangs in this case")
            )
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))


# --- factories ---------------------------------------------------------------

def _poolparty():
    import poolparty

    return poolparty


def build_pool(dispatch, *args, **kwargs):
    """Construct a pool for ``dispatch`` with Pool's positional signature."""
    if REFERENCE:
        return multiprocessing.get_context("spawn").Pool(*args, **kwargs)
    return _poolparty().SubinterpreterPool(*args, dispatch=dispatch, **kwargs)


def build_executor(dispatch, *args, **kwargs):
    if REFERENCE:
        kwargs.setdefault("mp_context", multiprocessing.get_context("spawn"))
        return concurrent.futures.ProcessPoolExecutor(*args, **kwargs)
    return _poolparty().SubinterpreterPoolExecutor(
        *args, dispatch=dispatch, **kwargs
    )


@pytest.fixture(params=DISPATCHES)
def dispatch(request):
    return request.param


@pytest.fixture
def make_pool(dispatch):
    """Factory: make_pool(*args, **kwargs); processes defaults to 2.

    Every pool built here is terminated and joined at teardown.
    """
    pools = []

    def factory(*args, **kwargs):
        if not args and "processes" not in kwargs:
            kwargs["processes"] = 2
        pool = build_pool(dispatch, *args, **kwargs)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        pool.terminate()
        pool.join()


@pytest.fixture
def pool(make_pool):
    return make_pool(2)


@pytest.fixture
def make_executor(dispatch):
    """Factory: make_executor(*args, **kwargs); max_workers defaults to 2."""
    executors = []

    def factory(*args, **kwargs):
        if not args and "max_workers" not in kwargs:
            kwargs["max_workers"] = 2
        ex = build_executor(dispatch, *args, **kwargs)
        executors.append(ex)
        return ex

    yield factory
    for ex in executors:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def executor(make_executor):
    return make_executor(2)


# --- subprocess scripts --------------------------------------------------------

def pool_factory_source(dispatch):
    """Source defining ``make_pool(n)`` for a standalone script."""
    if REFERENCE:
        return textwrap.dedent(
            """\
            import multiprocessing

            def make_pool(n):
                return multiprocessing.get_context("spawn").Pool(n)
            """
        )
    return textwrap.dedent(
        f"""\
        import poolparty

        def make_pool(n):
            return poolparty.SubinterpreterPool(n, dispatch={dispatch!r})
        """
    )


@pytest.fixture
def write_script(tmp_path, dispatch):
    """Write a script whose header defines make_pool(n); return its path."""

    def writer(body, name="script.py"):
        path = tmp_path / name
        path.write_text(pool_factory_source(dispatch) + "\n" + textwrap.dedent(body))
        return path

    return writer


def run_script(path, *args, timeout=SUBPROCESS_TIMEOUT, cwd=None):
    """Run a script with this interpreter; return CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(path), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or os.path.dirname(str(path)),
    )


# --- helpers for blocking tasks -------------------------------------------------

def wait_until_exists(path, timeout=30.0):
    """Poll (bounded) for a file created by a worker; fail the test if absent."""
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            pytest.fail("worker never created %s" % path)
        time.sleep(0.005)


def engine_completions(engine, timeout=60.0):
    """Yield a raw Engine's completions as (index, ok, value), each within
    `timeout`, answering CPython 3.12's main-first import requests (every
    one a batch brings, or the worker that asked waits for ever)."""
    import time

    from poolparty import _engine
    from poolparty import _poolparty as core

    ready = []
    while True:
        deadline = time.monotonic() + timeout
        while not ready:
            if time.monotonic() > deadline:
                pytest.fail("no completion within %s s" % timeout)
            batch = engine.collect(0.1)
            if batch is None:
                return
            for _job, index, kind, worker, payload in batch:
                if kind == core.PP_DONE_MAIN_IMPORT:
                    engine.answer_import(worker)
                else:
                    ready.append((index, *_engine.decode(kind, payload)))
        yield ready.pop(0)


def submit_blocked(executor, gate, tmp_path, value):
    """Submit a task that blocks on GATE and return its future once it runs.

    The task returns VALUE when the gate opens; until then it holds one
    worker, so what is submitted next queues behind it.
    """
    import tasks

    started = str(tmp_path / "started")
    future = executor.submit(tasks.signal_and_wait, started, gate, value)
    wait_until_exists(started)
    return future


@pytest.fixture
def gate(tmp_path, make_pool, make_executor):
    """A 'release' file path that is always created at teardown.

    Tasks blocked in tasks.wait_for_file/signal_and_wait on it are therefore
    released even when the test fails.  Depending on the factories makes this
    teardown run before the pools/executors are terminated, so their teardown
    never waits on a blocked task.
    """
    release = tmp_path / "release"
    yield str(release)
    release.touch()


@contextlib.contextmanager
def recording_warnings():
    """Record every warning, and every unraisable exception (a ``__del__``
    that raised), inside the block: yields the two lists."""
    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught, unraisable
    finally:
        sys.unraisablehook = old_hook


def run_clients(client, n_threads, timeout=100):
    """Run client(k) for k in range(n_threads) on as many threads at once,
    and wait (bounded) for all of them to finish."""
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
