"""C code that calls back into Python from a task runs in the task's interpreter.

ctypes and cffi callbacks, Cython's ``with gil`` and pybind11's
``gil_scoped_acquire`` all go through ``PyGILState_Ensure``, which attaches
the thread state CPython last bound to the calling OS thread.  A worker's
thread must have its own interpreter's thread state bound there, or the
callback would run this interpreter's objects under another GIL.  Checked
for every way a task runs: pools below and above the site-template
threshold (created differently), both dispatches, fresh interpreters
(maxtasksperchild), the Executor, and Interpreter.call from the thread that
made it and from another one.  ctypes shows it on 3.13; on 3.12, where
isolated subinterpreters refuse _ctypes, a test-only extension built here
(tests/python/gilstate_ext/ppgilstate.c) does.
"""

import os
import shlex
import subprocess
import sys
import sysconfig
import threading

import pytest

import gilstate_tasks
from conftest import REFERENCE
from poolparty import Interpreter, SubinterpreterPool, SubinterpreterPoolExecutor
from poolparty import _poolparty

pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty-specific")

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [2, _poolparty.PP_SITE_TEMPLATE_MIN_WORKERS]


@pytest.fixture(scope="module", autouse=True)
def ppgilstate(tmp_path_factory):
    """Build the test extension with this Python's compiler and headers."""
    out_dir = tmp_path_factory.mktemp("ppgilstate")
    target = out_dir / ("ppgilstate" + sysconfig.get_config_var("EXT_SUFFIX"))
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    command = [*compiler, "-shared", "-fPIC", "-O1",
               "-I", sysconfig.get_paths()["include"],
               os.path.join(HERE, "gilstate_ext", "ppgilstate.c"),
               "-o", str(target), "-lpthread"]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, f"{command}\n{built.stderr}"
    # Workers start with the sys.path of the pool's creation.
    sys.path.insert(0, str(out_dir))
    yield
    sys.path.remove(str(out_dir))


def check(results, items):
    for x, (own, released, held, value) in zip(items, results):
        assert own != 0, "ran in the main interpreter"
        assert (released, held) == (own, own), (own, released, held)
        assert value == x * 2


@pytest.mark.parametrize("dispatch", ["queue", "call"])
@pytest.mark.parametrize("workers", SIZES)
def test_pools(dispatch, workers):
    items = list(range(3 * workers))
    with SubinterpreterPool(workers, dispatch=dispatch) as pool:
        check(pool.map(gilstate_tasks.through_gilstate, items, chunksize=1), items)
        asyncs = [pool.apply_async(gilstate_tasks.through_gilstate, (x,))
                  for x in items]
        check([a.get(60) for a in asyncs], items)
    with SubinterpreterPoolExecutor(workers, dispatch=dispatch) as executor:
        futures = [executor.submit(gilstate_tasks.through_gilstate, x)
                   for x in items]
        check([f.result(60) for f in futures], items)
        check(list(executor.map(gilstate_tasks.through_gilstate, items)), items)


@pytest.mark.parametrize("dispatch", ["queue", "call"])
def test_fresh_interpreters_of_maxtasksperchild(dispatch):
    items = list(range(6))
    with SubinterpreterPool(2, maxtasksperchild=1, dispatch=dispatch) as pool:
        results = pool.map(gilstate_tasks.through_gilstate, items, chunksize=1)
    check(results, items)
    assert len({own for own, *_ in results}) > 2  # new interpreters


def test_interpreter_call_from_its_thread_and_another():
    with Interpreter() as interp:
        check([interp.call(gilstate_tasks.through_gilstate, 4)], [4])
        box = []
        thread = threading.Thread(target=lambda: box.append(
            interp.call(gilstate_tasks.through_gilstate, 5)))
        thread.start()
        thread.join()
        check(box, [5])
        # And the calling thread is back in the main interpreter.
        assert gilstate_tasks.through_gilstate(6) == (0, 0, 0, 12)


def test_a_c_thread_gets_the_main_interpreter():
    # What CPython does (and the README says): PyGILState_Ensure on a
    # thread Python has never seen makes a thread state of the main
    # interpreter.  A task must not call back into its own objects from
    # such a thread.
    with SubinterpreterPool(1) as pool:
        assert pool.apply(gilstate_tasks.from_c_thread) == 0


@pytest.mark.skipif(sys.version_info < (3, 13),
                    reason="3.12 refuses _ctypes in isolated subinterpreters")
@pytest.mark.parametrize("dispatch", ["queue", "call"])
@pytest.mark.parametrize("workers", SIZES)
def test_ctypes_callbacks(dispatch, workers):
    items = list(range(2 * workers))
    with SubinterpreterPool(workers, dispatch=dispatch) as pool:
        results = pool.map(gilstate_tasks.ctypes_qsort, items, chunksize=1)
    with SubinterpreterPoolExecutor(workers, dispatch=dispatch) as executor:
        results += [f.result(60) for f in
                    [executor.submit(gilstate_tasks.ctypes_qsort, x) for x in items]]
    with Interpreter() as interp:
        results.append(interp.call(gilstate_tasks.ctypes_qsort, 3))
    for own, seen, values in results:
        assert own != 0 and seen == [own], (own, seen)
        assert values == sorted(values)
