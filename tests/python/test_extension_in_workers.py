"""The extension module itself loads inside worker subinterpreters
(multi-phase init, per-module state, per-interpreter GIL support), and a
worker cannot start pools of its own."""

import pytest

import hazard_tasks
from poolparty import SubinterpreterPool


@pytest.mark.parametrize("dispatch", ["queue", "call"])
def test_extension_imports_inside_workers(dispatch):
    with SubinterpreterPool(2, dispatch=dispatch) as pool:
        names = pool.map(hazard_tasks.use_extension_inside_worker, range(4),
                         chunksize=1)
    assert names == [["Engine", "Interpreter", "GilSampler"]] * 4


def test_pools_cannot_be_created_inside_workers():
    with SubinterpreterPool(1) as pool:
        with pytest.raises(RuntimeError, match="inside a poolparty worker"):
            pool.apply(hazard_tasks.create_nested_pool)
        assert pool.apply(abs, (-1,)) == 1
