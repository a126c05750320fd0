"""CPython's own limits and hazards for subinterpreter workers, per version.

The README's "CPython versions" section is written from these tests.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import hazard_tasks
from poolparty import SubinterpreterPool

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = sys.version_info[:2]

# Extension modules that refuse to load in an isolated subinterpreter
# (single-phase init), measured on 3.12.1 and 3.13.0.
REFUSED = {
    (3, 12): ["_decimal", "_ctypes", "pyexpat", "_curses", "readline",
              "faulthandler", "_tracemalloc", "_lsprof"],
    (3, 13): ["_curses", "readline", "faulthandler", "_tracemalloc"],
}
# ...and a few that load fine on both.
LOADS = ["_json", "_pickle", "_socket", "math", "array", "zlib", "_struct",
         "select", "_ssl", "_hashlib", "_asyncio", "_multiprocessing"]


@pytest.fixture(scope="module")
def pool():
    with SubinterpreterPool(1) as pool:
        yield pool


@pytest.mark.parametrize("name", REFUSED.get(VERSION, REFUSED[(3, 13)]))
def test_refused_extension_modules(pool, name):
    with pytest.raises(ImportError) as info:
        pool.apply(hazard_tasks.import_module, (name,))
    assert name in str(info.value)
    assert any("isolated subinterpreter" in note
               for note in getattr(info.value, "__notes__", []))
    assert pool.apply(hazard_tasks.version) == VERSION  # the worker carries on


@pytest.mark.parametrize("name", LOADS)
def test_loadable_extension_modules(pool, name):
    assert pool.apply(hazard_tasks.import_module, (name,)) == name


def test_daemon_threads_refused_plain_threads_allowed(pool):
    with pytest.raises(RuntimeError, match="daemon"):
        pool.apply(hazard_tasks.start_daemon_thread)
    assert pool.apply(hazard_tasks.start_thread) == [42]


def test_fork_refused(pool):
    with pytest.raises(RuntimeError, match="fork"):
        pool.apply(hazard_tasks.fork)


def test_signal_handlers_refused(pool):
    with pytest.raises(ValueError, match="main thread of the main interpreter"):
        pool.apply(hazard_tasks.set_signal_handler)


# On 3.12.1 each of these, imported first by an isolated subinterpreter,
# crashed the process at exit ("free(): invalid pointer", "double free or
# corruption", or a segfault).  The pool has the main interpreter import
# modules first; the process must now exit cleanly.
CRASHED_312 = ["hashlib", "ssl", "asyncio", "decimal", "_decimal", "datetime",
               "random", "tempfile", "_testsinglephase"]

SCRIPT = textwrap.dedent("""\
    import sys
    sys.path.insert(0, {here!r})
    import hazard_tasks
    from poolparty import SubinterpreterPool
    if __name__ == "__main__":
        with SubinterpreterPool(2, dispatch={dispatch!r}) as pool:
            try:
                print(pool.apply(hazard_tasks.import_module, ({name!r},)))
            except ImportError as exc:
                print("refused", exc)
            pool.close()
            pool.join()
        print("clean exit")
""")


@pytest.mark.parametrize("dispatch", ["queue", "call"])
@pytest.mark.parametrize("name", CRASHED_312)
def test_no_crash_at_exit_after_worker_imports(tmp_path, name, dispatch):
    if name == "_testsinglephase":
        pytest.importorskip("_testsinglephase")
    script = tmp_path / "hazard.py"
    script.write_text(SCRIPT.format(here=HERE, name=name, dispatch=dispatch))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "clean exit" in proc.stdout
    for sign in ("free()", "double free", "Fatal Python error", "Segmentation"):
        assert sign not in proc.stderr


INTERPRETER_SCRIPT = textwrap.dedent("""\
    import poolparty
    with poolparty.Interpreter() as interp:
        try:
            interp.exec("import {name}")
        except ImportError as exc:
            print("refused", exc)
    print("clean exit")
""")


@pytest.mark.parametrize("name", CRASHED_312)
def test_no_crash_at_exit_after_interpreter_imports(tmp_path, name):
    if name == "_testsinglephase":
        pytest.importorskip("_testsinglephase")
    script = tmp_path / "hazard.py"
    script.write_text(INTERPRETER_SCRIPT.format(name=name))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "clean exit" in proc.stdout


# On 3.13.0, subinterpreters that import datetime while others start and
# end crashed the process within seconds ("free(): invalid pointer",
# "double free or corruption", segfaults in Py_EndInterpreter) unless the
# main interpreter had imported _datetime first (python/cpython#136421).
CHURN_SCRIPT = textwrap.dedent("""\
    import sys, threading
    import poolparty
    assert "_datetime" not in sys.modules or sys.version_info < (3, 13)

    def churn():
        for _ in range({rounds}):
            with poolparty.Interpreter() as interp:
                interp.exec("import datetime, calendar")
        with poolparty.SubinterpreterPool(2, maxtasksperchild=1) as pool:
            assert pool.map(len, ["ab"] * 8, 1) == [2] * 8

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("clean exit")
""")


def test_concurrent_subinterpreters_importing_datetime_do_not_crash(tmp_path):
    script = tmp_path / "churn.py"
    script.write_text(CHURN_SCRIPT.format(rounds=25))
    proc = subprocess.run([sys.executable, "-X", "faulthandler", str(script)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "clean exit" in proc.stdout
