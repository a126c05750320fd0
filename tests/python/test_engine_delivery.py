"""The completion-delivery contract of module.h, seen from Python.

Engine.bind_futures(owner=) turns on the Future fast path once per
Engine and hands back the {job: Future} dict; submit_future() registers
its futures there and collect() finishes the plain ones and takes them
out; function references come from _poolparty.remember_function().
"""

import gc
import weakref

import pytest

from conftest import REFERENCE
from poolparty import SubinterpreterPoolExecutor, _engine
from poolparty import _poolparty as core

pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty's engine")


def _engine_for_test():
    return core.Engine(core.PP_DESIGN_QUEUE, 1, 0, _engine.sys_path_blob(),
                       _engine.boot_payload(None, ()))


class _Owner:
    def cancel_future(self, future, job):
        return False


def test_bind_futures_once_and_the_fast_path_fills_its_dict():
    engine = _engine_for_test()
    try:
        # Unbound: submit_future leaves everything to the Python path.
        _engine.function_pickle(abs)
        assert engine.submit_future(abs, (-3,), None) is None
        owner = _Owner()
        futures = engine.bind_futures(owner=owner)
        assert futures == {}
        with pytest.raises(RuntimeError, match="owner already"):
            engine.bind_futures(owner=owner)
        with pytest.raises(TypeError):
            engine.bind_futures(owner)  # keyword only
        future = engine.submit_future(abs, (-3,), None)
        assert list(futures.values()) == [future]
        engine.close()
        assert engine.join(60)
        # A plain result of a future nobody waits on: finished in C,
        # taken out of the dict, not in the batch.
        assert engine.collect(5) == []
        assert engine.collect(5) is None
        assert futures == {}
        assert future.result(0) == 3
    finally:
        engine.terminate()
        engine.join(60)


def test_function_refs_round_trip_and_check_identity():
    def local():
        pass

    assert core.function_ref(local) is None
    core.remember_function(local, b"mod\0local", core.PP_TASK_REUSE_FUNC)
    assert core.function_ref(local) == (b"mod\0local", core.PP_TASK_REUSE_FUNC)
    with pytest.raises(TypeError):
        core.remember_function(local, "not bytes", 0)


def test_an_executor_and_its_engine_are_collected_despite_the_binding():
    # The engine holds the executor's sink (bind_futures) and the sink
    # holds the engine: the garbage collector must break that cycle.
    with SubinterpreterPoolExecutor(1) as ex:
        assert ex.submit(abs, -2).result(60) == 2
        sink = weakref.ref(ex._sink)
    del ex
    for _ in range(3):
        gc.collect()
    assert sink() is None
