"""Where a cold cell's wall time goes: start, first result, map, stop.

Usage: .venv/3.13/bin/python tools/cold_phases.py [--bench data_pass]
           [--scale 1] [--workers 2] [--repeat 5]
           [--modes sequential,interp,interp-executor,thread]

Each run is a fresh process, timed as poolparty_bench.cell times a cell
(construction + map + close, the untimed gc.collect() before the map
left out), alternating the modes.  For each mode, the medians in ms of:

    open     the pool's construction, imports of a first pool included
    first    from the map's call until the collector thread has taken
             its first completion (poolparty modes; a profile hook on
             that thread sees Engine.collect() return)
    map      the whole map
    stop     close() + join() (shutdown(wait=True) for executors)
    total    open + map + stop, the cell's wall time

and the total's ratio to the sequential run's.  The collector decodes
every result alone, so `map - first` is about its share of the work;
what a cold pool adds over a warm one is open, first and stop.  Wall
times on a shared machine say little: run it on a quiet one.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def one_run(bench, mode, workers, scale):
    """In the child: one cold cell, its phases as a dict of seconds."""
    import gc
    import threading
    import time

    from poolparty_bench import modes, workloads

    workload = workloads.WORKLOADS[bench]
    inputs = workload.inputs(scale)
    first = []

    def hook(frame, event, arg):
        # Engine.collect returning on the collector thread: completions.
        if (event == "c_return" and not first
                and getattr(arg, "__name__", "") == "collect"):
            first.append(time.perf_counter())

    # Threads started from here on (the pool's collector) run the hook.
    threading.setprofile(hook)
    t0 = time.perf_counter()
    runner = modes.open_runner(mode, workers)
    t1 = time.perf_counter()
    threading.setprofile(None)
    gc.collect()
    t2 = time.perf_counter()
    results = runner.map(workload.task, inputs)
    t3 = time.perf_counter()
    runner.close()
    t4 = time.perf_counter()
    if not workload.check(inputs, results):
        raise SystemExit(f"{mode}: wrong results")
    return {"open": t1 - t0, "first": (first[0] - t2) if first else None,
            "map": t3 - t2, "stop": t4 - t3,
            "total": (t1 - t0) + (t4 - t2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default="data_pass")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--modes",
                        default="sequential,interp,interp-executor,thread")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = one_run(args.bench, args.child, args.workers, args.scale)
        print(json.dumps(out), flush=True)
        os._exit(0)  # as the cell: every pool is closed by now
    mode_list = args.modes.split(",")
    runs = {mode: [] for mode in mode_list}
    for _ in range(args.repeat):
        for mode in mode_list:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--bench",
                 args.bench, "--scale", str(args.scale), "--workers",
                 str(args.workers)],
                capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(proc.stdout.splitlines()[-1]))
    seq = None
    if "sequential" in runs:
        seq = statistics.median(r["total"] for r in runs["sequential"])
    print(f"{args.bench} --scale {args.scale}, {args.workers} workers, "
          f"medians of {args.repeat} (ms)")
    for mode, rows in runs.items():
        cols = []
        for key in ("open", "first", "map", "stop", "total"):
            values = [r[key] for r in rows if r[key] is not None]
            cols.append(f"{key} {statistics.median(values) * 1000:7.1f}"
                        if values else f"{key} {'-':>7}")
        ratio = (f"  x{seq / statistics.median(r['total'] for r in rows):.3f}"
                 if seq else "")
        print(f"{mode:16s} " + "  ".join(cols) + ratio)


if __name__ == "__main__":
    main()
