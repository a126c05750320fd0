"""One CPU-bound Dask graph on three kinds of local cluster, in one run.

    .venv/3.13/bin/python examples/dask_bench.py [--n 25] [--tasks 32] [--repeat 3]

The graph: ``--tasks`` independent fib(n) tasks (client.map), gathered.
The clusters, each with 2 task slots on this machine:

  threads     LocalCluster(processes=False, n_workers=1, threads_per_worker=2)
  processes   LocalCluster(processes=True,  n_workers=2, threads_per_worker=1)
  poolparty   LocalCluster(processes=False, n_workers=1, threads_per_worker=2)
              + SubinterpreterWorkerPlugin: the worker's executor is a
              DaskSubinterpreterExecutor over SubinterpreterPoolExecutor(2)

Each cluster is started once (its start-up time is shown apart), warmed up
with one run of the graph, then timed ``--repeat`` times; the table shows
the best time and its ratio to the first row (threads, unless
``--clusters`` picks others).  Exits 1 if any result is wrong.
Workers and scheduler talk over loopback (or in-process); every server
listens on 127.0.0.1 only.
"""

import argparse
import os
import time

import dask
from distributed import Client, LocalCluster

from poolparty.dask import DASK_CONFIG, SubinterpreterWorkerPlugin


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def executor_counts(dask_worker):
    counts = getattr(dask_worker.executors["default"], "counts", None)
    return dict(counts) if counts else None


def run_graph(client, n, tasks):
    futures = client.map(fib, [n] * tasks, pure=False)
    return client.gather(futures)


def measure(label, cluster_kwargs, args, expected, plugin=None):
    start = time.perf_counter()
    # DASK_CONFIG turns distributed's profiler off (it would crash a process
    # running subinterpreters); the same for every row, to compare alike.
    with dask.config.set(DASK_CONFIG), \
            LocalCluster(dashboard_address="127.0.0.1:0",
                         worker_dashboard_address="127.0.0.1:0",
                         **cluster_kwargs) as cluster, \
            Client(cluster) as client:
        if plugin is not None:
            client.register_plugin(plugin)
        startup = time.perf_counter() - start
        correct = run_graph(client, args.n, args.tasks) == expected  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            got = run_graph(client, args.n, args.tasks)
            times.append(time.perf_counter() - t0)
            correct = correct and got == expected
        counts = [c for c in client.run(executor_counts).values() if c]
    return {"label": label, "best": min(times), "times": times,
            "startup": startup, "correct": correct, "counts": counts}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dispatch", default="queue", choices=["queue", "call"])
    parser.add_argument("--clusters", default="threads,processes,poolparty",
                        help="which rows to run, comma-separated")
    args = parser.parse_args()
    chosen = args.clusters.split(",")

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    expected = [fib(args.n) for _ in range(args.tasks)]
    sequential = time.perf_counter() - t0

    clusters = {
        "threads": lambda: measure(
            "threads", dict(processes=False, n_workers=1, threads_per_worker=2),
            args, expected),
        "processes": lambda: measure(
            "processes", dict(processes=True, n_workers=2, threads_per_worker=1,
                              host="127.0.0.1"),
            args, expected),
        "poolparty": lambda: measure(
            "poolparty", dict(processes=False, n_workers=1, threads_per_worker=2),
            args, expected,
            plugin=SubinterpreterWorkerPlugin(2, dispatch=args.dispatch)),
    }
    if not chosen or set(chosen) - set(clusters):
        parser.error(f"--clusters: choose among {', '.join(clusters)}")
    rows = [clusters[name]() for name in chosen]
    load_after = os.getloadavg()

    base = rows[0]["best"]
    print(f"{args.tasks} x fib({args.n}) on a LocalCluster with 2 task slots; "
          f"best of {args.repeat} after a warm-up; {os.cpu_count()} CPUs")
    print(f"sequential in this process (no Dask): {sequential:.3f} s")
    print(f"{'cluster':<10} {'best s':>8} {'vs ' + rows[0]['label']:>11} {'start-up s':>11}  "
          f"{'all runs s':<24} correct")
    for row in rows:
        runs = " ".join(f"{t:.3f}" for t in row["times"])
        print(f"{row['label']:<10} {row['best']:>8.3f} {base / row['best']:>10.2f}x "
              f"{row['startup']:>11.2f}  {runs:<24} {row['correct']}")
    for row in rows:
        if row["counts"]:
            print(f"{row['label']} executor counts: {row['counts']} "
                  f"(dispatch={args.dispatch})")
    print("load average (1, 5, 15 min) before: "
          + " ".join(f"{x:.2f}" for x in load_before)
          + "; after: " + " ".join(f"{x:.2f}" for x in load_after))
    return 0 if all(row["correct"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
