"""The collector-first gate on and off, in one build and one process.

Usage: .venv/3.13/bin/python tools/gate_ab.py [--bench data_ints,...]
           [--scale 1] [--workers 2] [--repeat 5]

For each bench (a poolparty_bench workload), rounds of: the tasks run
sequentially here, then a warm pool's map with the gate as this machine
has it (`_poolparty.assume_cpus(cores)`: the gate is opt-in) and with it
off (`assume_cpus(0)`, the default),
in alternating order.  Prints the median and best speedup over
sequential of each, the process's CPU per task, and the gate's parks.
The gate only acts when the workers and the collector are more threads
than the cores (docs/design.md, "The collector first"), so on a bigger
machine pass `--workers` at least the core count.  Wall times on a
shared machine say little: run it on a quiet one.
"""

import argparse
import gc
import os
import statistics
import time

import poolparty
from poolparty import _poolparty
from poolparty_bench import workloads


def run_map(gate, workload, inputs, workers):
    _poolparty.assume_cpus(len(os.sched_getaffinity(0)) if gate == "on"
                           else 0)
    try:
        with poolparty.SubinterpreterPool(workers) as pool:
            pool.map(workload.task, inputs[:2 * workers])
            gc.collect()
            cpu, start = time.process_time(), time.perf_counter()
            results = pool.map(workload.task, inputs)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu
            parks = pool._runner.engine.gate["parks"]
            del results
    finally:
        _poolparty.assume_cpus(0)
    return wall, cpu, parks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench",
                        default="data_pass,data_ints,data_floats,"
                                "data_records,data_text,data_blob")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    for name in args.bench.split(","):
        workload = workloads.WORKLOADS[name]
        inputs = workload.inputs(args.scale)
        walls = {"seq": [], "on": [], "off": []}
        cpus = {"on": [], "off": []}
        parks = {"on": 0, "off": 0}
        for round_ in range(args.repeat):
            gc.collect()
            start = time.perf_counter()
            results = [workload.task(x) for x in inputs]
            walls["seq"].append(time.perf_counter() - start)
            del results
            for gate in (("on", "off") if round_ % 2 else ("off", "on")):
                wall, cpu, parked = run_map(gate, workload, inputs,
                                            args.workers)
                walls[gate].append(wall)
                cpus[gate].append(cpu)
                parks[gate] += parked
        seq_median, seq_best = (statistics.median(walls["seq"]),
                                min(walls["seq"]))
        line = [f"{name} ({len(inputs)} tasks, {args.workers} workers):"]
        for gate in ("off", "on"):
            median = seq_median / statistics.median(walls[gate])
            best = seq_best / min(walls[gate])
            cpu = statistics.median(cpus[gate]) / len(inputs) * 1e3
            line.append(f"gate {gate} {median:.2f}x (best {best:.2f}x, "
                        f"CPU {cpu:.2f} ms/task, {parks[gate]} parks)")
        print(" ".join(line), flush=True)


if __name__ == "__main__":
    main()
