"""A first pool's start: its workers boot while the caller still imports.

multiprocessing.pool's import (with multiprocessing's) is most of a first
SubinterpreterPool's start; an executor needs none of it.  The pool
starts its engine first and imports them after, so that the workers'
interpreter creation overlaps them (docs/design.md, "Starting a worker").
Each test runs in a fresh process: the imports happen once per process.
"""

import textwrap

from conftest import run_script

# Records, when multiprocessing.pool is imported, whether a pool's
# collector thread (which the engine starts with its workers) runs yet.
_WATCH = """\
import sys, threading

seen = {}

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "multiprocessing.pool" and "at" not in seen:
            seen["at"] = sorted(t.name.rsplit("-", 1)[-1]
                                for t in threading.enumerate()
                                if t.name.startswith("SubinterpreterPool"))
        return None

assert "multiprocessing" not in sys.modules
sys.meta_path.insert(0, Watch())
"""


def _run(tmp_path, body):
    path = tmp_path / "start.py"
    path.write_text(_WATCH + textwrap.dedent(body))
    proc = run_script(path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_pool_workers_start_before_multiprocessing_pool_is_imported(tmp_path):
    out = _run(tmp_path, """
        import poolparty
        cls = poolparty.SubinterpreterPool
        print("after class:", "multiprocessing.pool" in sys.modules)
        with cls(2) as pool:
            print("during import:", seen.get("at"))
            print(pool.map(abs, [-1, -2, 3]))
            # The result classes are multiprocessing's, as before.
            from multiprocessing.pool import AsyncResult, MapResult
            print(isinstance(pool.map_async(abs, [1]), MapResult),
                  isinstance(pool.apply_async(abs, (1,)), AsyncResult))
        import multiprocessing
        print("default:", multiprocessing.get_start_method())
    """)
    assert "after class: False" in out
    assert "during import: ['collector']" in out
    assert "[1, 2, 3]" in out
    assert "True True" in out
    # Made 'forkserver' at the start, only later than before.
    assert "default: forkserver" in out


def test_executor_imports_multiprocessing_pool_only_for_an_error(tmp_path):
    out = _run(tmp_path, """
        import poolparty
        with poolparty.SubinterpreterPoolExecutor(2) as ex:
            print(list(ex.map(abs, [-1, -2])))
            print("imported:", "multiprocessing.pool" in sys.modules)
            try:
                ex.submit(int, "x").result()
            except ValueError as exc:
                print("raised:", type(exc.__cause__).__name__)
    """)
    assert "[1, 2]" in out
    assert "imported: False" in out
    # A task's error still has multiprocessing's RemoteTraceback as its
    # cause, imported where the error was rebuilt.
    assert "raised: RemoteTraceback" in out


def test_pool_module_still_has_its_result_classes(tmp_path):
    out = _run(tmp_path, """
        from multiprocessing.pool import ApplyResult
        from poolparty.pool import _ApplyResult, _IMapUnordered
        print(issubclass(_ApplyResult, ApplyResult), _IMapUnordered.__name__)
    """)
    assert "True" in out


def test_a_pool_start_does_not_load_sysconfig(tmp_path):
    # sysconfig's import and first get_config_var() cost 5-9 ms; the core
    # says whether the build is free-threaded instead.
    out = _run(tmp_path, """
        before = "sysconfig" in sys.modules  # a site hook may have
        import poolparty
        with poolparty.SubinterpreterPool(2) as pool:
            pool.map(abs, [1])
        with poolparty.SubinterpreterPoolExecutor(2) as ex:
            list(ex.map(abs, [1]))
        print("loaded:", "sysconfig" in sys.modules and not before)
        import sysconfig
        from poolparty import _poolparty
        print("agrees:", _poolparty.FREE_THREADED
              == bool(sysconfig.get_config_var("Py_GIL_DISABLED")))
    """)
    assert "loaded: False" in out
    assert "agrees: True" in out


def test_pool_imports_its_exceptions_only_for_a_failure(tmp_path):
    # poolparty._errors needs concurrent.futures (and logging): 3 ms of
    # a first pool's start that only a failure needs.
    out = _run(tmp_path, """
        import poolparty
        with poolparty.SubinterpreterPool(2) as pool:
            print(pool.map(abs, [-1, -2]))
            print("imported:", "concurrent.futures" in sys.modules)
            try:
                pool.apply(int, ("x",))
            except ValueError as exc:
                print("raised:", type(exc.__cause__).__name__)

        # (A stdlib initializer: this script cannot run in a worker.)
        with poolparty.SubinterpreterPool(1, initializer=int,
                                          initargs=("x",)) as pool:
            try:
                pool.apply(abs, (1,))
            except poolparty.BrokenInterpreterPool as exc:
                import concurrent.futures
                print("broken:", isinstance(exc, concurrent.futures.BrokenExecutor),
                      type(exc.__cause__).__name__)
    """)
    assert "[1, 2]" in out
    assert "imported: False" in out
    assert "raised: RemoteTraceback" in out
    assert "broken: True ValueError" in out
