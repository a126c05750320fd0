"""A warm pool's map of suite workloads against the sequential run, in
one process, to compare two builds on a shared machine.

Usage: .venv/3.13/bin/python tools/warm_map.py [--bench data_ints,...]
           [--scale 1] [--workers 2] [--repeat 5]

For each bench (a poolparty_bench workload): `--repeat` rounds of the
tasks run sequentially here, then a warm pool's map of them.  Prints the
medians of both, the speedup (sequential over map) and the process's
CPU per map (every thread: caller, collector, workers).  Run it from
each build's venv in turn, several times (docs/design.md, "A chunk in
parts"); the CPU column says more than the wall times when others load
the machine.
"""

import argparse
import gc
import statistics
import time

import poolparty
from poolparty_bench import workloads


def measure(workload, scale, workers, repeat):
    inputs = workload.inputs(scale)
    seq, walls, cpus = [], [], []
    with poolparty.SubinterpreterPool(workers) as pool:
        pool.map(workload.task, inputs[:8])
        for _ in range(repeat):
            gc.collect()
            start = time.perf_counter()
            results = [workload.task(x) for x in inputs]
            seq.append(time.perf_counter() - start)
            del results
            gc.collect()
            cpu, start = time.process_time(), time.perf_counter()
            results = pool.map(workload.task, inputs)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
            del results
    return statistics.median(seq), statistics.median(walls), \
        statistics.median(cpus)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default="data_ints,data_records,data_floats")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name in args.bench.split(","):
        seq, wall, cpu = measure(workloads.WORKLOADS[name], args.scale,
                                 args.workers, args.repeat)
        print(f"{name:13} sequential {seq * 1e3:7.0f} ms  map {wall * 1e3:7.0f}"
              f" ms ({seq / wall:.2f}x)  cpu {cpu * 1e3:7.0f} ms")


if __name__ == "__main__":
    main()
