"""The worker threads' arena cache at several bounds, in one build and
process: per-thread CPU (and its kernel share) of one warm ``map`` of a
data workload, the bounds interleaved round by round.

Usage: .venv/3.13/bin/python tools/arena_ab.py [--workload data_ints]
       [--limits 0,4,16,64] [--rounds 5] [--workers 2]

Bound 0 caches nothing: the allocator CPython had.  A build without
the cache (main before it) runs one row, "-": run this from each
build's venv in turn to compare builds.  Per bound it prints
medians over the rounds: wall of the map, the workers' CPU (all of
them, and the part in the kernel), the main process's other threads'
(the collector, the caller), RSS after the map, and the cache's hits
per map (``_poolparty.arena_stats``).
"""

import argparse
import gc
import os
import statistics
import threading
import time

import poolparty
import poolparty._poolparty as core
from poolparty_bench import workloads

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_by_tid():
    """{native thread id: (user+sys ms, sys ms)} of this process."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        utime, stime = int(fields[11]), int(fields[12])
        out[int(tid)] = ((utime + stime) * TICK_MS, stime * TICK_MS)
    return out


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def native_id(_):
    time.sleep(0.2)  # so that each worker takes one
    return threading.get_native_id()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="data_ints")
    ap.add_argument("--limits", default="0,4,16,64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cached = hasattr(core, "arena_limit")
    limits = [int(x) for x in args.limits.split(",")] if cached else [None]
    w = workloads.WORKLOADS[args.workload]
    inputs = w.inputs(1.0)
    t = time.perf_counter()
    res = [w.task(x) for x in inputs]
    seq = time.perf_counter() - t
    del res
    rows = {n: [] for n in limits}
    with poolparty.SubinterpreterPool(args.workers) as pool:
        wids = set(pool.map(native_id, range(args.workers), chunksize=1))
        pool.map(w.task, inputs)
        for _ in range(args.rounds):
            for n in limits:
                if cached:
                    core.arena_limit(n)
                time.sleep(0.05)  # idle workers give their arenas back
                gc.collect()
                hits = core.arena_stats()["hits"] if cached else 0
                before = cpu_by_tid()
                t = time.perf_counter()
                res = pool.map(w.task, inputs)
                wall = time.perf_counter() - t
                after = cpu_by_tid()
                rss = rss_mb()
                del res
                if cached:
                    hits = core.arena_stats()["hits"] - hits
                work = sys_ = other = 0.0
                for tid, (cpu, kern) in after.items():
                    c0, k0 = before.get(tid, (0.0, 0.0))
                    if tid in wids:
                        work += cpu - c0
                        sys_ += kern - k0
                    else:
                        other += cpu - c0
                rows[n].append((wall * 1e3, work, sys_, other, rss, hits))
    med = statistics.median
    print(f"{args.workload}: sequential {seq * 1e3:.0f} ms, "
          f"{args.workers} workers, medians of {args.rounds} rounds")
    print("bound  wall ms  x seq  workers ms (sys)  others ms  RSS MB  hits")
    for n in limits:
        cols = list(zip(*rows[n]))
        wall = med(cols[0])
        print(f"{'-' if n is None else n:>5}  {wall:7.0f}  {seq * 1e3 / wall:5.2f}  "
              f"{med(cols[1]):10.0f} ({med(cols[2]):4.0f})  "
              f"{med(cols[3]):9.0f}  {med(cols[4]):6.0f}  {med(cols[5]):4.0f}")
    if cached:
        core.arena_limit(limits[0])


if __name__ == "__main__":
    main()
