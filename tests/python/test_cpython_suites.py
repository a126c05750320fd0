"""CPython's own Pool and Executor test classes, run against poolparty's.

The classes come from the running CPython's ``test`` package:
``_TestPool``, ``_TestPoolWorkerErrors`` and ``_TestPoolWorkerLifetime``
(``test/_test_multiprocessing.py``) with ``SubinterpreterPool`` as their
Pool, and ``test_concurrent_futures``' ExecutorTest, AsCompletedTests,
WaitTests and ExecutorShutdownTest with ``SubinterpreterPoolExecutor`` as
their executor.  Nothing of the tests is changed; where one cannot apply
to workers that are threads of one process, or waits on work another
issue owns, it is marked here with the reason (docs/reliability.md,
"CPython's own test classes", lists them).

Some CPython builds ship ``test`` without ``test_concurrent_futures``
(pyenv's 3.12.1 here): the package is then taken from another CPython
3.13's ``Lib/test`` (``POOLPARTY_CPYTHON_TESTS``, pyenv, or the source
tree scripts/nogil-python.sh fetches), imported as the top-level package
``test_concurrent_futures`` so that workers can import it by name too.
"""

import functools
import glob
import os
import sys
import unittest
from unittest import mock

import pytest

import cpython_suite_shims
import poolparty

mp_tests = pytest.importorskip(
    "test._test_multiprocessing",
    reason="this CPython ships no test._test_multiprocessing",
)



def _mark(cls, name, mark):
    """Put a pytest mark on the test ``name`` that ``cls`` inherits."""
    base = getattr(cls, name)

    @mark
    @functools.wraps(base)
    def test(self):
        return base(self)

    setattr(cls, name, test)


def _not_applicable(cls, reasons):
    for name, reason in reasons.items():
        _mark(cls, name, pytest.mark.skip(reason=reason))


# --- multiprocessing.pool.Pool -----------------------------------------------


class _OursMixin(mp_tests.BaseMixin):
    TYPE = "processes"  # what the Pool tests check for a real pool
    Pool = staticmethod(poolparty.SubinterpreterPool)

    def setUp(self):
        # _TestPoolWorkerErrors and _TestPoolWorkerLifetime call
        # multiprocessing.Pool itself.
        patcher = mock.patch("multiprocessing.Pool", poolparty.SubinterpreterPool)
        patcher.start()
        self.addCleanup(patcher.stop)
        super().setUp()


class TestPool(mp_tests._TestPool, _OursMixin, unittest.TestCase):
    pass


_not_applicable(TestPool, {
    "test_make_pool": "reads len(pool._pool), multiprocessing's private list "
    "of worker processes (test_pool_lifecycle.py checks the ValueError for "
    "0 and -1)",
})


def _test_terminate_with_shorter_sleeps(self):
    # terminate() returns at once, abandoning workers whose tasks sleep in
    # C; they end when their sleep does, and the interpreter's exit waits
    # for that (CPython cannot finalize under a running subinterpreter).
    # The test's 300 s sleeps would hold the end of the suite for 5
    # minutes: 10 s make the same test.
    with mock.patch.object(mp_tests.support, "LONG_TIMEOUT", 10.0):
        mp_tests._TestPool.test_terminate(self)


TestPool.test_terminate = _test_terminate_with_shorter_sleeps


class TestPoolWorkerErrors(mp_tests._TestPoolWorkerErrors, _OursMixin,
                           unittest.TestCase):
    pass


_not_applicable(TestPoolWorkerErrors, {
    "test_unpickleable_result": "its 'unpicklable' result is a lambda, which "
    "poolparty pickles by value (cloudpickle, as for lambdas sent to "
    "workers), so it arrives and is no MaybeEncodingError "
    "(test_pool_errors.py checks results that cannot be pickled at all)",
})


class TestPoolWorkerLifetime(mp_tests._TestPoolWorkerLifetime, _OursMixin,
                             unittest.TestCase):
    pass


_not_applicable(TestPoolWorkerLifetime, {
    "test_pool_worker_lifetime": "compares the pids of pool._pool's worker "
    "processes before and after maxtasksperchild replaced them, and calls "
    "the private _repopulate_pool(); workers here are threads of this "
    "process (test_pool_workers.py checks that maxtasksperchild gives fresh "
    "interpreters)",
    "test_worker_finalization_via_atexit_handler_of_multiprocessing":
    "runs multiprocessing.Pool itself in a child process, which nothing "
    "here can swap for ours (test_reliability_shutdown.py checks exit with "
    "a live pool)",
})


# --- concurrent.futures.Executor ---------------------------------------------


def _futures_tests_dir():
    """Where to import ``test_concurrent_futures`` from, or None for ``test``."""
    try:
        import test.test_concurrent_futures  # noqa: F401
        return None
    except ImportError:
        pass
    candidates = [os.environ.get("POOLPARTY_CPYTHON_TESTS", "")]
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{pyenv}/versions/3.13*/lib/python3.13/test"))
    here = os.path.dirname(os.path.abspath(__file__))
    candidates += sorted(glob.glob(
        os.path.join(here, "..", "..", ".cache", "nogil", "src", "*", "Lib", "test")))
    for candidate in candidates:
        if candidate and os.path.isdir(
                os.path.join(candidate, "test_concurrent_futures")):
            return os.path.abspath(candidate)
    pytest.skip(
        "no test_concurrent_futures: this CPython does not ship it; set "
        "POOLPARTY_CPYTHON_TESTS to a CPython 3.13's Lib/test",
        allow_module_level=True,
    )


_FUTURES_DIR = _futures_tests_dir()
if _FUTURES_DIR is None:
    _FUTURES_PACKAGE = "test.test_concurrent_futures"
    _EXECUTOR_KWARGS = {}
else:
    # Appended, so nothing of this CPython's own is shadowed; set before
    # any executor starts, so its workers get it too.
    sys.path.append(_FUTURES_DIR)
    _FUTURES_PACKAGE = "test_concurrent_futures"
    cpython_suite_shims.backport_test_support()
    _EXECUTOR_KWARGS = {"initializer": cpython_suite_shims.backport_test_support}


def _futures_module(name):
    return pytest.importorskip(f"{_FUTURES_PACKAGE}.{name}")


cf_util = _futures_module("util")
cf_executor = _futures_module("executor")
cf_as_completed = _futures_module("test_as_completed")
cf_wait = _futures_module("test_wait")
cf_shutdown = _futures_module("test_shutdown")

# The shutdown tests run a script in a child that imports the executor by
# name from concurrent.futures (and their helpers from
# test.test_concurrent_futures): give the child ours under that name.
# Imported only when the script asks for it, as the stdlib's executors
# are, so that poolparty's exit hook is registered where it would be.
_CHILD_PRELUDE = (
    "import concurrent.futures, sys\n"
    "def _ours(name, _theirs=concurrent.futures.__getattr__):\n"
    "    if name != 'SubinterpreterPoolExecutor':\n"
    "        return _theirs(name)\n"
    "    import poolparty\n"
    "    return poolparty.SubinterpreterPoolExecutor\n"
    "concurrent.futures.__getattr__ = _ours\n"
)
if _FUTURES_DIR is not None:
    _CHILD_PRELUDE += (
        f"sys.path.append({_FUTURES_DIR!r})\n"
        "import test, test_concurrent_futures.test_shutdown as _m\n"
        "sys.modules['test.test_concurrent_futures'] = "
        "sys.modules['test_concurrent_futures']\n"
        "sys.modules['test.test_concurrent_futures.test_shutdown'] = _m\n"
    )


def _assert_python_ok_with_ours(*args, **env):
    if args[:1] == ("-c",):
        args = ("-c", _CHILD_PRELUDE + args[1]) + args[2:]
    return _real_assert_python_ok(*args, **env)


_real_assert_python_ok = cf_shutdown.assert_python_ok


class _ExecutorMixin(cf_util.ExecutorMixin):
    executor_type = poolparty.SubinterpreterPoolExecutor
    executor_kwargs = _EXECUTOR_KWARGS

    def setUp(self):
        patcher = mock.patch.object(
            cf_shutdown, "assert_python_ok", _assert_python_ok_with_ours)
        patcher.start()
        self.addCleanup(patcher.stop)
        super().setUp()


class TestExecutor(_ExecutorMixin, cf_executor.ExecutorTest,
                   cf_util.BaseTestCase):
    pass


class TestAsCompleted(_ExecutorMixin, cf_as_completed.AsCompletedTests,
                      cf_util.BaseTestCase):
    pass


class TestWait(_ExecutorMixin, cf_wait.WaitTests, cf_util.BaseTestCase):
    pass


class TestShutdown(_ExecutorMixin, cf_shutdown.ExecutorShutdownTest,
                   cf_util.BaseTestCase):
    pass

