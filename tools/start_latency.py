"""How long a task submitted to an idle pool waits before a worker starts it.

Usage: .venv/3.13/bin/python tools/start_latency.py [--rounds N] [--workers W]

For each executor, in one run: W workers, warmed up; then, N times, the
pool is left idle for 2 ms (its workers blocked waiting for work), a task
``time.monotonic_ns`` is submitted, and the latency is the worker's clock
reading minus the caller's just before submit().  CLOCK_MONOTONIC is one
clock for the whole process, whichever interpreter reads it.  The figure
to compare is ThreadPoolExecutor's: a thread woken from a lock, which is
the floor for any pool whose workers sleep while idle.
"""

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import poolparty


def latencies(submit, rounds):
    out = []
    for _ in range(rounds):
        time.sleep(0.002)
        t0 = time.monotonic_ns()
        started = submit(time.monotonic_ns)
        out.append((started - t0) / 1000)
    return out


def measure(name, make, rounds, workers):
    with make(workers) as pool:
        if isinstance(pool, poolparty.SubinterpreterPool):
            def submit(fn):
                return pool.apply_async(fn).get()
        else:
            def submit(fn):
                return pool.submit(fn).result()
        latencies(submit, 20)  # warm: workers started, function resolved
        lat = sorted(latencies(submit, rounds))
    return name, statistics.median(lat), lat[int(len(lat) * 0.9)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    makers = [
        ("ThreadPoolExecutor", ThreadPoolExecutor),
        ("SubinterpreterPoolExecutor (queue)",
         lambda n: poolparty.SubinterpreterPoolExecutor(n)),
        ("SubinterpreterPoolExecutor (call)",
         lambda n: poolparty.SubinterpreterPoolExecutor(n, dispatch="call")),
        ("SubinterpreterPool.apply_async (queue)",
         lambda n: poolparty.SubinterpreterPool(n)),
    ]
    rows = [measure(name, make, args.rounds, args.workers)
            for name, make in makers]
    base = rows[0][1]
    print(f"submit -> start on an idle pool, {args.workers} workers, "
          f"{args.rounds} rounds (us)")
    print(f"{'executor':42} {'median':>8} {'p90':>8} {'x TPE':>6}")
    for name, median, p90 in rows:
        print(f"{name:42} {median:8.1f} {p90:8.1f} {median / base:6.2f}")


if __name__ == "__main__":
    main()
