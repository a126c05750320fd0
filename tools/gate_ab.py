"""Ways to put the collector first, A/B in one build and one process.

Usage: .venv/3.13/bin/python tools/gate_ab.py [--bench data_ints,...]
           [--ways off,gate,nice4] [--scale 1] [--workers 2] [--repeat 5]
           [--competitor same|other]

The ways (docs/design.md, "The collector first"):
  off     workers run at the caller's priority and nobody parks
          (POOLPARTY_GATE=0);
  gate    a worker parks while the collector is behind (the default);
  niceN   each worker thread lowers its priority by N
          (POOLPARTY_WORKER_NICE=N).
Both act only when the workers and the collector are more threads than
the cores, so on a bigger machine pass `--workers` at least the core
count.

Benches: a poolparty_bench workload's name (the tasks run sequentially
here, then a warm pool's map), or one of the shapes below (a warm pool,
no sequential run):
  imap_floats  an imap of 500 tasks returning 4,096 floats each,
               chunksize 1, the items dropped as they come;
  imap_slow    the same with a consumer that spends 1 ms on each item;
  imap_ints, imap_records
               an imap of data_ints' or data_records' 128 tasks,
               chunksize 1: large results, one a task, no parts.
Each round runs every way once, the order rotating from round to round.
Printed per bench and way: the median (and best) speedup over
sequential, or the median wall time for a shape; the median over the
rounds of its wall time over the first way's in the same round (a
ratio of neighbours: the machine's load drifts less between them than
over the run); the process's CPU per
task; the collector thread's median runqueue wait (time it was ready to
run and was not running: what putting it first is meant to cut); the
gate's parks.  With --competitor, a CPU-bound process runs beside the
pool all along (what a user on a shared machine sees), in this session
or another (with Linux's autogroup on, nice weighs only within a
session), and what it got is printed too: its CPU time over the wall
time of the maps (1.0: a whole core).

Wall times on a shared machine say little: compare the CPU and runqueue
columns there, and walls on a quiet machine.
"""

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time

import poolparty
from poolparty import _engine
from poolparty_bench import workloads
from poolparty_bench.shapes import floats

SLOW_CONSUMER_S = 1e-3


def imap_floats(pool, consume_s=0.0):
    for _ in pool.imap(floats, range(500), chunksize=1):
        if consume_s:
            end = time.perf_counter() + consume_s
            while time.perf_counter() < end:
                pass
    return 500


def imap_of(workload):
    """An imap of a data workload's 128 tasks, one a chunk (no parts):
    the results timed one task at a time, if large enough."""
    def run(pool):
        return sum(1 for _ in pool.imap(workload.task, range(128),
                                        chunksize=1))
    return run


SHAPES = {
    "imap_floats": lambda pool: imap_floats(pool),
    "imap_slow": lambda pool: imap_floats(pool, SLOW_CONSUMER_S),
    "imap_ints": imap_of(workloads.WORKLOADS["data_ints"]),
    "imap_records": imap_of(workloads.WORKLOADS["data_records"]),
}


def runqueue_ns(tid):
    """ns the thread has waited on a runqueue so far (Linux schedstat)."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[1])


def cpu_ns_of(pid):
    """ns of CPU process `pid` has used (utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e9 / os.sysconf(
        "SC_CLK_TCK")


def set_way(way):
    """Make pools made next use `way`; returns how to undo it."""
    os.environ[_engine.GATE_ENV] = "1" if way == "gate" else "0"
    os.environ[_engine.WORKER_NICE_ENV] = (
        way[len("nice"):] if way.startswith("nice") else "0")


def run_once(way, name, workload, inputs, workers):
    """One warm pool's run: (wall s, CPU s, collector runqueue s, parks,
    tasks)."""
    set_way(way)
    try:
        with poolparty.SubinterpreterPool(workers) as pool:
            if workload is not None:
                pool.map(workload.task, inputs[:2 * workers])
            else:
                list(pool.imap(floats, range(4 * workers), chunksize=1))
            gc.collect()
            collector = pool._runner._collector.native_id
            rq = runqueue_ns(collector)
            cpu, start = time.process_time(), time.perf_counter()
            if workload is not None:
                results = pool.map(workload.task, inputs)
                tasks = len(results)
            else:
                results, tasks = None, SHAPES[name](pool)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu
            rq = (runqueue_ns(collector) - rq) / 1e9
            parks = pool._runner.engine.gate["parks"]
            del results
    finally:
        os.environ.pop(_engine.GATE_ENV, None)
        os.environ.pop(_engine.WORKER_NICE_ENV, None)
    return wall, cpu, rq, parks, tasks


def start_competitor(where):
    """A CPU-bound process, in this one's session ("same": on Linux with
    autogroup on, nice weighs only within a session) or in a new one
    ("other": as from another terminal)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            start_new_session=where == "other")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench",
                        default="data_pass,data_ints,data_floats,"
                                "data_records,data_text,data_blob,"
                                "imap_floats,imap_slow")
    parser.add_argument("--ways", default="off,gate,nice4")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--competitor", choices=("same", "other"),
                        help="a CPU-bound process beside the pool, in this "
                             "session or another")
    args = parser.parse_args(argv)
    ways = args.ways.split(",")
    competitor = (start_competitor(args.competitor) if args.competitor
                  else None)
    try:
        for name in args.bench.split(","):
            run_bench(name, ways, args, competitor)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def run_bench(name, ways, args, competitor):
    workload = None if name in SHAPES else workloads.WORKLOADS[name]
    inputs = workload.inputs(args.scale) if workload else None
    seq = []
    runs = {way: [] for way in ways}
    given = {way: [] for way in ways}  # the competitor's CPU share
    for round_ in range(args.repeat):
        if workload is not None:
            gc.collect()
            start = time.perf_counter()
            results = [workload.task(x) for x in inputs]
            seq.append(time.perf_counter() - start)
            del results
        shift = round_ % len(ways)
        for way in ways[shift:] + ways[:shift]:
            before = cpu_ns_of(competitor.pid) if competitor else 0
            run = run_once(way, name, workload, inputs, args.workers)
            runs[way].append(run)
            if competitor:
                given[way].append(
                    (cpu_ns_of(competitor.pid) - before) / 1e9 / run[0])
    tasks = runs[ways[0]][0][4]
    line = [f"{name} ({tasks} tasks, {args.workers} workers"
            f"{', a competitor' if competitor else ''}"
            f"{' in ' + args.competitor + ' session' if competitor else ''}):"]
    for way in ways:
        walls = [r[0] for r in runs[way]]
        if seq:
            speed = (f"{statistics.median(seq) / statistics.median(walls):.2f}x"
                     f" (best {min(seq) / min(walls):.2f}x)")
        else:
            speed = f"{statistics.median(walls) * 1e3:.0f} ms"
        cpu = statistics.median(r[1] for r in runs[way]) / tasks * 1e3
        rq = statistics.median(r[2] for r in runs[way]) * 1e3
        parks = sum(r[3] for r in runs[way])
        paired = statistics.median(
            r[0] / base[0] for r, base in zip(runs[way], runs[ways[0]]))
        part = (f"{way} {speed}, wall/{ways[0]}'s {paired:.2f}, CPU "
                f"{cpu:.2f} ms/task, collector waited {rq:.0f} ms, "
                f"{parks} parks")
        if competitor:
            part += f", competitor got {statistics.median(given[way]):.2f}"
        line.append(part + ";")
    print(" ".join(line), flush=True)


if __name__ == "__main__":
    main()
