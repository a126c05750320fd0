"""The CPU each API call of a warm pool costs per task, and the main
interpreter's share of it.

Usage: .venv/3.13/bin/python tools/api_cpu.py [--apis map,imap,...]
           [--tasks 50000] [--workers 2] [--chunksize 1]
           [--task noop|spin100us|mb|pickled] [--repeat 5] [--threads]

For each call (map, imap, imap_unordered, starmap_async, apply_async,
apply_async with callback and error_callback, Executor.submit,
Executor.map), on a pool warmed by a first small call: the best of
`--repeat` runs of wall time, CPU of the whole process (every thread,
workers included) and CPU of the main interpreter's threads (the
caller and the pool's collector, read with pthread_getcpuclockid), in
microseconds per task.  The caller and the collector take turns on the
main GIL, so the last column bounds how fast the pool can go.
`--threads` runs the same calls on ThreadPool/ThreadPoolExecutor.

On a shared machine, compare two builds by running this from each
build's venv in turn, several times, and read the CPU columns.
"""

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from poolparty_bench.codec import _main_interpreter_cpu as _main_cpu
from poolparty_bench.shapes import noop

_MB = b"x" * (1 << 20)


def spin100us(x):
    end = time.perf_counter() + 100e-6
    while time.perf_counter() < end:
        pass
    return x


def mb(_x):
    return _MB


def pickled(x):
    """A result the codec leaves to pickle (a set)."""
    return {x}


def _run(pool, api, fn, items, chunksize):
    if api in ("map", "executor_map"):
        return list(pool.map(fn, items, chunksize=chunksize))
    if api == "imap":
        return list(pool.imap(fn, items, chunksize=chunksize))
    if api == "imap_unordered":
        return list(pool.imap_unordered(fn, items, chunksize=chunksize))
    if api == "starmap_async":
        return pool.starmap_async(fn, [(i,) for i in items],
                                  chunksize=chunksize).get()
    if api == "apply_async":
        pending = [pool.apply_async(fn, (i,)) for i in items]
        return [result.get() for result in pending]
    if api == "apply_async_cb":
        seen = []
        pending = [pool.apply_async(fn, (i,), callback=seen.append,
                                    error_callback=seen.append)
                   for i in items]
        out = [result.get() for result in pending]
        if len(seen) != len(items):
            raise RuntimeError(f"{len(seen)} callbacks for {len(items)}")
        return out
    if api == "submit":
        futures = [pool.submit(fn, i) for i in items]
        return [future.result() for future in futures]
    raise ValueError(f"unknown call {api!r}")


def _open(api, workers, threads):
    import poolparty

    if api in ("submit", "executor_map"):
        return (ThreadPoolExecutor(workers) if threads
                else poolparty.SubinterpreterPoolExecutor(workers))
    if threads:
        from multiprocessing.pool import ThreadPool

        return ThreadPool(workers)
    return poolparty.SubinterpreterPool(workers)


def _close(pool):
    if hasattr(pool, "shutdown"):
        pool.shutdown()
    else:
        pool.terminate()
        pool.join()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apis", default="map,imap,imap_unordered,"
                        "starmap_async,apply_async,apply_async_cb,submit,"
                        "executor_map")
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=1)
    parser.add_argument("--task", default="noop",
                        choices=("noop", "spin100us", "mb", "pickled"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", action="store_true")
    args = parser.parse_args()
    fn = globals()[args.task]
    items = list(range(args.tasks))
    for api in args.apis.split(","):
        pool = _open(api, args.workers, args.threads)
        try:
            _run(pool, api, fn, items[:200], args.chunksize)
            walls, cpus, mains = [], [], []
            for _ in range(args.repeat):
                wall, cpu, main_cpu = (time.perf_counter(),
                                       time.process_time(), _main_cpu())
                out = _run(pool, api, fn, items, args.chunksize)
                main_cpu = _main_cpu() - main_cpu
                cpu = time.process_time() - cpu
                wall = time.perf_counter() - wall
                if len(out) != len(items):
                    raise RuntimeError(f"{api}: {len(out)} results")
                del out
                walls.append(wall)
                cpus.append(cpu)
                mains.append(main_cpu)
        finally:
            _close(pool)
        per = 1e6 / len(items)
        print(f"{api:15s} wall {min(walls) * per:7.2f}  cpu "
              f"{min(cpus) * per:7.2f}  main {min(mains) * per:7.2f} "
              f"us/task", flush=True)


if __name__ == "__main__":
    main()
