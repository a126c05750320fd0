"""What a closure over a large object costs per task.

Usage: .venv/3.13/bin/python tools/closure_bench.py [--mb 5] [--items 1000]
                                                    [--workers 2] [--rounds 5]

In one run, on warm pools of each dispatch design: map(chunksize=1) over
N items of

  closure   a lambda closing over an M MB bytes object (sent by value,
            with cloudpickle);
  init      a module-level function reading the same object from a
            global that the pool's initializer set once per worker (the
            baseline: the data crosses once per worker, by design).

Prints the median wall time of each and the ratio closure/init; with
Engine.function_store (the engine keeps a by-value function's bytes once)
also the bytes the engine copied in.  Before the store, every task
carried a copy of the closure's bytes.
"""

import argparse
import statistics
import time

import poolparty

_data = None


def _set_data(data):
    global _data
    _data = data


def read_global(x):
    return x + len(_data)


def closure_over(data):
    return lambda x: x + len(data)


def timed(pool, func, items, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        pool.map(func, items, chunksize=1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=5)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = b"x" * int(args.mb * (1 << 20))
    items = range(args.items)
    for dispatch in ("queue", "call"):
        with poolparty.SubinterpreterPool(
            args.workers, dispatch=dispatch, initializer=_set_data,
            initargs=(data,),
        ) as pool:
            func = closure_over(data)
            pool.map(func, range(args.workers * 4), chunksize=1)  # warm
            pool.map(read_global, range(args.workers * 4), chunksize=1)
            closure = timed(pool, func, items, args.rounds)
            init = timed(pool, read_global, items, args.rounds)
            store = getattr(pool._engine, "function_store", None)
        copied = ("" if store is None else
                  f"  engine copied {store['copied_bytes'] / 1e6:.1f} MB "
                  f"in {store['copies']} copy")
        print(f"{dispatch:5}  {args.items} items, {args.mb:g} MB closure: "
              f"closure {closure * 1e3:8.1f} ms  init {init * 1e3:7.1f} ms  "
              f"closure/init {closure / init:6.2f}{copied}")


if __name__ == "__main__":
    main()
