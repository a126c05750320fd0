"""One repeat of one cell, in a process of its own.

    python -m poolparty_bench.cell --bench fib --mode thread --workers 2 \
        --scale 0.1
    python -m poolparty_bench.cell --probe interp

The driver starts this with the interpreter under test, which may be a
free-threaded build without psutil or matplotlib, so only the standard
library, the workloads and the suite's stdlib-only modules are imported.
It prints one line, MARKER followed by a JSON object:

    wall_s    construction + map + shutdown of the pool, in seconds
    map_s     the map alone, in seconds: the per-task time.  For the overhead
              bench and the workloads that set WARM_UP (the data_* ones) it
              follows a warm-up map of two tasks per worker (part of
              wall_s), so that it is the cost on a started pool, also for
              executors that start their workers at the first task.
    map_cpu_s the CPU time of this process (all threads) during the map
    cpu_s     user + system CPU time over that span, of this process (all its
              threads and interpreters) and of its children that exited
    sampler_s time spent starting and stopping the GIL sampler, taken out
              of wall_s and cpu_s
    tasks     how many tasks were mapped
    correct   what the workload's check() said
    gil       what gil.gil_sampler() measured during map()
    error     set when the run failed (with a traceback)

The memory figures come from the driver, which samples this process's tree.
"""

import argparse
import gc
import json
import os
import resource
import sys
import time
import traceback

from . import modes
from .gil import NullSampler, gil_sampler

MARKER = "POOLPARTY_BENCH_CELL "

# Not a workload: only starts and stops the pool.
STARTUP = "startup"


def _cpu_seconds():
    """User + system time of this process and of its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class _Stopwatch:
    """Adds up the wall and CPU time spent inside its with-blocks."""

    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self):
        self._cpu0 = _cpu_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._t0
        self.cpu += _cpu_seconds() - self._cpu0
        return False


def run_startup(mode, workers):
    """Open and close MODE's pool without mapping anything."""
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    runner = modes.open_runner(mode, workers)
    runner.close()
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    gil = {"main": None, "workers": None, "source": None,
           "note": "not measured for startup"}
    out = {"wall_s": wall, "cpu_s": cpu, "tasks": 0, "correct": True,
           "gil": gil}
    if mode in modes.LAZY_MODES:
        out["note"] = ("its workers start at the first task, so this is "
                       "construction and shutdown only")
    return out


def run_workload(bench, mode, workers, scale, sample_gil=True):
    """Map BENCH's tasks over MODE's pool and check the results."""
    from . import workloads

    workload = workloads.WORKLOADS[bench]
    inputs = workload.inputs(scale)

    # The sampler's own set-up and tear-down are timed and taken out of the
    # figures: gilknocker's stop() alone waits up to 0.1 s for its thread.
    aside = _Stopwatch()
    aside_cpu = 0.0
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    runner = modes.open_runner(mode, workers)
    try:
        with aside:
            if sample_gil:
                sampler = gil_sampler(runner.pool)
            else:
                sampler = NullSampler("not sampled (--no-gil)")
            sampler.start()
        try:
            if bench == "overhead" or getattr(workload, "WARM_UP", False):
                warm_up = inputs[:2 * max(1, workers)]
                if not workload.check(warm_up, runner.map(workload.task,
                                                          warm_up)):
                    raise RuntimeError("the warm-up map returned wrong results")
            with aside:
                # Every mode starts its map with an empty young generation.
                # Whether one young pass over the results lands inside the
                # map then depends on what the mode itself allocates, not
                # on how many objects imports and start-up left before it:
                # a pass over 1,024 data_pass results costs 0.14 s, half
                # the map, and 1,024 results alone sit just under the
                # 2,000 allocations that start one.
                gc.collect()
            map_cpu0 = _cpu_seconds()
            map_t0 = time.perf_counter()
            results = runner.map(workload.task, inputs)
            map_s = time.perf_counter() - map_t0
            map_cpu_s = _cpu_seconds() - map_cpu0
        finally:
            with aside:
                gil = sampler.stop()
    finally:
        runner.close()
    wall = time.perf_counter() - t0 - aside.wall
    cpu = _cpu_seconds() - cpu0 - aside.cpu

    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "sampler_s": aside.wall,
        "map_s": map_s,
        "map_cpu_s": map_cpu_s,
        "tasks": len(inputs),
        "correct": bool(workload.check(inputs, results)),
        "gil": gil,
    }


def describe_interpreter():
    """What the driver needs to know about the interpreter running this."""
    import platform

    try:
        gil_enabled = sys._is_gil_enabled()
    except AttributeError:  # before 3.13 the GIL is always there
        gil_enabled = True
    import sysconfig

    return {
        "executable": sys.executable,
        "config_args": sysconfig.get_config_var("CONFIG_ARGS"),
        "prefix": sys.prefix,
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "free_threaded": modes.is_free_threaded(),
        "gil_enabled": gil_enabled,
        "package_dir": os.path.dirname(os.path.abspath(__file__)),
    }


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m poolparty_bench.cell")
    parser.add_argument("--probe", metavar="MODE",
                        help="only say whether MODE can run here")
    parser.add_argument("--describe", action="store_true",
                        help="only describe this interpreter")
    parser.add_argument("--bench")
    parser.add_argument("--mode")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--no-gil", action="store_true",
                        help="do not sample GIL contention")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    if args.describe:
        out = describe_interpreter()
    elif args.probe:
        out = {"mode": args.probe,
               "unavailable": modes.unavailable_reason(args.probe)}
    else:
        try:
            if args.bench == STARTUP:
                out = run_startup(args.mode, args.workers)
            else:
                out = run_workload(args.bench, args.mode, args.workers,
                                   args.scale, sample_gil=not args.no_gil)
            # A free-threaded build turns the GIL back on when it imports
            # an extension that does not declare itself safe without it.
            if modes.is_free_threaded() and sys._is_gil_enabled():
                out["note"] = "the GIL was re-enabled at run time"
        except BaseException as exc:
            out = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8),
            }
    sys.stdout.write(MARKER + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 1 if "error" in out else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalization: every pool is closed by now, and
    # gilknocker's thread, if it outlives stop(), aborts a normal exit.
    os._exit(code)
