"""Tests for the benchmark workloads (poolparty_bench.workloads).

Every workload is run sequentially at a small scale; its check() must accept
the real results and reject corrupted ones, so that a check can actually fail.
"""

import copy
import math
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
try:
    import poolparty_bench.workloads  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, SRC)

from poolparty_bench import workloads  # noqa: E402
from poolparty_bench.workloads import (  # noqa: E402
    data_pass,
    fib,
    nbody,
    nbody_no_share,
    raytrace,
)

EXPECTED_ORDER = [
    "fib",
    "fib2",
    "nbody",
    "nbody_no_share",
    "raytrace",
    "data_pass",
    "overhead",
    "data_floats",
    "data_ints",
    "data_records",
    "data_text",
    "data_blob",
]

SCALE = 0.01

# Number of tasks expected at SCALE.
EXPECTED_COUNT = {
    "fib": 64,
    "fib2": 64,
    "nbody": 64,
    "nbody_no_share": 64,
    "raytrace": 64,
    "data_pass": 10,  # round(1024 * 0.01)
    "overhead": 200,  # round(20000 * 0.01)
    **dict.fromkeys(("data_floats", "data_ints", "data_records", "data_text",
                     "data_blob"), 4),  # MIN_TASKS
}


def _set(results, i, value):
    results[i] = value
    return results


def _bump_int(results):
    return _set(results, 7, results[7] + 1)


def _nbody_zero(results):
    results[5][3] = 0.0
    return results


def _nbody_nan(results):
    results[5][3] = math.nan
    return results


def _nbody_truncate(results):
    results[2] = results[2][:-1]
    return results


def _nbody_tiny(results):
    results[9][4] += 1e-12
    return results


def _flip_pixel(results):
    image = bytearray(results[3])
    image[len(image) // 2] ^= 0x01
    return _set(results, 3, bytes(image))


def _data_one_element(results):
    results[2][100] = 0.0
    return results


def _data_swap(results):
    results[0], results[1] = results[1], results[0]
    return results


def _data_short(results):
    results[4] = results[4][:-1]
    return results


def _drop_last(results):
    return results[:-1]


def _last_one_short(results):
    results[-1] = results[-1][:-1]
    return results


# Each corruption changes the results in one small place; check() must notice.
CORRUPTIONS = {
    "fib": [_bump_int, _drop_last],
    "fib2": [_bump_int, _drop_last],
    "nbody": [_nbody_zero, _nbody_nan, _nbody_truncate, _drop_last],
    "nbody_no_share": [_nbody_tiny, _nbody_truncate, _drop_last],
    "raytrace": [_flip_pixel, _drop_last],
    "data_pass": [_data_one_element, _data_swap, _data_short, _drop_last],
    "overhead": [_bump_int, _drop_last],
    **dict.fromkeys(("data_floats", "data_ints", "data_records", "data_text",
                     "data_blob"), [_data_swap, _last_one_short, _drop_last]),
}


@pytest.fixture(scope="module")
def runs():
    """Inputs and sequential results for every workload at SCALE (run once)."""
    nbody.reset()
    out = {}
    for name, module in workloads.WORKLOADS.items():
        inputs = module.inputs(SCALE)
        out[name] = (inputs, [module.task(arg) for arg in inputs])
    return out


def test_registry_order_and_names():
    # The seed's seven first, then the distinct-value data workloads
    # (their runs and checks are tested in test_pool_data.py).
    assert [m.NAME for m in workloads.REAL_DATA] == EXPECTED_ORDER[-5:]
    assert list(workloads.WORKLOADS) == EXPECTED_ORDER
    for name, module in workloads.WORKLOADS.items():
        assert module.NAME == name
        assert workloads.get(name) is module


def test_get_unknown_lists_valid_names():
    with pytest.raises(ValueError) as info:
        workloads.get("nope")
    message = str(info.value)
    assert "nope" in message
    for name in EXPECTED_ORDER:
        assert name in message


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_interface(name):
    module = workloads.get(name)
    assert isinstance(module.DESCRIPTION, str) and module.DESCRIPTION
    assert "\n" not in module.DESCRIPTION
    for attr in ("inputs", "task", "check"):
        assert callable(getattr(module, attr))
    # task is pickled by reference by the pools.
    assert pickle.loads(pickle.dumps(module.task)) is module.task
    with pytest.raises(ValueError):
        module.inputs(0.0)


@pytest.mark.parametrize("name", EXPECTED_ORDER)
def test_sequential_run_checks(name, runs):
    module = workloads.get(name)
    inputs, results = runs[name]
    assert len(inputs) == EXPECTED_COUNT[name]
    assert pickle.loads(pickle.dumps(inputs)) == inputs
    assert module.check(inputs, pickle.loads(pickle.dumps(results)))


@pytest.mark.parametrize(
    "name, corrupt",
    [(name, c) for name in EXPECTED_ORDER for c in CORRUPTIONS[name]],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_check_rejects_corruption(name, corrupt, runs):
    module = workloads.get(name)
    inputs, results = runs[name]
    bad = corrupt(copy.deepcopy(results))
    assert not module.check(inputs, bad)


def test_fib_sizes():
    assert fib.depth_for_scale(1.0) == 28
    assert fib.depth_for_scale(1 / fib._PHI) == 27
    assert fib.depth_for_scale(fib._PHI**2) == 30
    assert fib.depth_for_scale(1e-9) == fib.MIN_N
    assert [fib.fib(n) for n in range(8)] == [1, 1, 2, 3, 5, 8, 13, 21]
    assert fib.fib_iterative(28) == 514229


def test_nbody_initial_energy():
    bodies = nbody.make_system()
    e = nbody.energy(bodies, nbody.pairs_of(bodies))
    assert e == pytest.approx(nbody.EXPECTED_ENERGY, abs=1e-9)
    # Total momentum is zero after offsetting the Sun.
    for k in range(3):
        assert abs(sum(b[1][k] * b[2] for b in bodies)) < 1e-15


def test_nbody_sizes():
    assert nbody.inputs(1.0) == [20_000] * 64
    assert nbody.steps_for_scale(1e-9) == 1
    assert nbody_no_share.inputs(0.5) == [10_000] * 64


def test_nbody_sequential_is_race_free(runs):
    inputs, results = runs["nbody"]
    assert nbody.max_energy_error(results) < nbody.TOLERANCE
    # Consecutive tasks continue from where the previous one left the state.
    for prev, nxt in zip(results, results[1:]):
        assert nxt[0] == prev[-1]


def test_nbody_check_catches_small_energy_error(runs):
    inputs, results = runs["nbody"]
    bad = copy.deepcopy(results)
    bad[10][7] = nbody.EXPECTED_ENERGY + 3 * nbody.TOLERANCE
    assert not nbody.check(inputs, bad)


def test_nbody_shared_state_is_mutated_in_place():
    before = [list(b[0]) for b in nbody.BODIES]
    lists = [b[0] for b in nbody.BODIES]
    nbody.task(5)
    assert [b[0] for b in nbody.BODIES] == lists  # same list objects
    assert [list(b[0]) for b in nbody.BODIES] != before
    assert all(a is b for a, b in zip((b[0] for b in nbody.BODIES), lists))


def test_nbody_no_share_leaves_module_state_alone(runs):
    inputs, results = runs["nbody_no_share"]
    assert nbody_no_share.BODIES == nbody.make_system()
    assert all(r == results[0] for r in results)


def test_raytrace_sizes_and_image():
    assert raytrace.size_for_scale(1.0) == 100
    assert raytrace.size_for_scale(0.25) == 50
    assert raytrace.size_for_scale(1e-6) == raytrace.MIN_SIZE
    image = raytrace.task(12)
    assert type(image) is bytes and len(image) == 3 * 12 * 12
    assert raytrace.distinct_colours(image) >= 8
    smallest = raytrace.task(raytrace.MIN_SIZE)
    assert raytrace.distinct_colours(smallest) >= raytrace.MIN_COLOURS
    # A blank image of the right size is rejected.
    blank = bytes(3 * 12 * 12)
    assert not raytrace.check([12], [blank])


def test_data_pass_result_size():
    result = data_pass.task(3)
    assert len(result) == data_pass.LENGTH == 65_536
    # About half a megabyte once pickled.
    assert 0.4e6 < len(pickle.dumps(result)) < 0.7e6
    assert len(data_pass.inputs(1.0)) == 1024
    assert len(data_pass.inputs(1e-6)) == data_pass.MIN_TASKS


def test_overhead_sizes():
    overhead = workloads.get("overhead")
    assert overhead.inputs(1.0) == list(range(20_000))
    assert len(overhead.inputs(1e-6)) == overhead.MIN_TASKS


def _subinterpreter_module():
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            return __import__(name).__name__
        except ImportError:
            pass
    return None


@pytest.mark.skipif(
    _subinterpreter_module() is None, reason="no low-level subinterpreter module"
)
def test_workloads_run_in_isolated_subinterpreter():
    # In a fresh process (so a crash at exit would show), import and run every
    # workload inside isolated subinterpreters with their own GIL.
    script = textwrap.dedent(
        f"""
        import {_subinterpreter_module()} as interpreters
        names = {EXPECTED_ORDER!r}
        for name in names:
            interp = interpreters.create()
            code = (
                "import sys\\n"
                "sys.path.insert(0, {SRC!r})\\n"
                "from poolparty_bench.workloads import " + name + " as m\\n"
                "inputs = m.inputs(0.005)\\n"
                "assert m.check(inputs, [m.task(a) for a in inputs])\\n"
            )
            failure = interpreters.run_string(interp, code)
            assert failure is None, (name, failure)
            interpreters.destroy(interp)
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_importing_the_workloads_loads_no_pickle():
    # A worker resolving any workload's task imports the whole package:
    # `pickle` there (9 ms in a fresh interpreter) would land on every
    # worker's first task, a cost the seed's one-module workloads lack.
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {SRC!r})
        before = set(sys.modules)  # what site's .pth hooks loaded
        import poolparty_bench.workloads
        print(sorted(m for m in ("pickle", "re", "enum")
                     if m in sys.modules and m not in before))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_frame_still_pickles_out_of_band():
    from poolparty_bench.workloads import _realdata

    frame = _realdata.frame(1 << 16)
    buffers = []
    data = pickle.dumps(frame, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1
    back = pickle.loads(data, buffers=buffers)
    assert type(back) is _realdata.Frame
    assert bytes(back.data) == frame.data
