"""What CPython 3.13's test_concurrent_futures needs of ``test.support``
when it runs on a CPython whose ``test`` package predates it (3.12).

Run in the main interpreter before that package is imported, and in
every worker as the executor's initializer (workers import the tests'
helper functions, and with them the package).  Kept apart from
test_cpython_suites.py so that workers do not import pytest.
"""


def backport_test_support():
    import test.support

    if not hasattr(test.support, "Py_GIL_DISABLED"):
        # 3.13's name for "this is a free-threaded build"; 3.12 has none.
        test.support.Py_GIL_DISABLED = False
