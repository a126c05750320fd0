"""The C GIL sampler: idle GILs read near 0, busy ones high, per interpreter."""

import sysconfig
import time

import pytest

import hazard_tasks
import tasks
from poolparty import SubinterpreterPool
from poolparty.gil import GilSampler


FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
needs_gil = pytest.mark.skipif(FREE_THREADED, reason="free-threaded: no GIL")


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@needs_gil
def test_idle_main_gil_reads_low():
    with GilSampler() as sampler:
        time.sleep(0.3)
    assert sampler.result["workers"] is None
    assert sampler.result["main"] < 30


@needs_gil
def test_busy_main_gil_reads_high():
    with GilSampler() as sampler:
        spin(0.4)
    # The holder gives the GIL up only after the 5 ms switch interval,
    # so the sampler waits for most of the time.
    assert sampler.result["main"] > 40


@needs_gil
@pytest.mark.parametrize("dispatch", ["queue", "call"])
def test_worker_gils_are_sampled_separately(dispatch):
    with SubinterpreterPool(2, dispatch=dispatch) as pool:
        pool.map(tasks.square, [1, 2], chunksize=1)  # workers are up
        with GilSampler(pool) as idle:
            time.sleep(0.3)
        with GilSampler(pool) as busy:
            pool.map(hazard_tasks.spin, [0.4, 0.4], chunksize=1)
    assert len(idle.result["workers"]) == 2
    assert all(w is not None and w < 30 for w in idle.result["workers"])
    assert busy.result["worst"] > 40
    assert busy.result["worst"] == max(busy.result["workers"])
    # The workers' own GILs were busy, the main interpreter's was not.
    assert busy.result["main"] < busy.result["worst"]


def test_stop_twice_is_an_error():
    from poolparty import _poolparty

    sampler = _poolparty.GilSampler(None, 0.001)
    sampler.stop()
    with pytest.raises(ValueError):
        sampler.stop()
    with pytest.raises(ValueError):
        _poolparty.GilSampler(None, 0)
    with pytest.raises(TypeError):
        _poolparty.GilSampler(object(), 0.001)


@pytest.mark.skipif(not FREE_THREADED, reason="default build has a GIL")
def test_free_threaded_build_reports_none_not_zero():
    with SubinterpreterPool(2) as pool:
        with GilSampler(pool) as sampler:
            pool.map(hazard_tasks.spin, [0.1, 0.1], chunksize=1)
    assert sampler.result == {"main": None, "workers": None, "worst": None}
